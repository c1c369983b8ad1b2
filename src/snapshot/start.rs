//! The snapshot at start with the loaded program (src/tracer.rs calls it
//! once the transition programs are attached, before the first event is
//! decoded): the iterators' walk, or the netlink dump and what the kernel
//! needs of it (`diag`, its window, the listeners' owners), and what the
//! reader needs (its seeds) and the census (its base).

use std::os::fd::AsFd;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use super::{Found, Taken, Walkers};
use crate::bpf::TcpstatesSkel;
use crate::bpf::types;
use crate::config::SnapshotFrom;
use crate::event::TcpState;
use crate::plan::{OwnerKeeper, Plan};
use crate::summary::STATES;
use crate::track::Seeds;

/// What user space counted of the netlink snapshot's sockets, by state (the
/// kernel takes each back as it seeds it), and whether every socket found
/// went into the kernel's map: the census adds it to its own.
pub type CensusBase = ([i64; STATES], bool);

/// What a snapshot gives the tracer.
pub struct Started {
    /// What it found.
    pub taken: Taken,
    /// The holders, when the reader keeps the owners.
    pub seeds: Option<Seeds>,
    /// The netlink snapshot's count, where the kernel keeps the census.
    pub census_base: Option<CensusBase>,
}

/// Takes the snapshot the plan asks for, of every namespace (only `only`,
/// when given).
pub fn take(skel: &TcpstatesSkel<'_>, plan: &Plan, only: Option<u32>) -> Result<Started> {
    match plan.snapshot_from {
        SnapshotFrom::Iterators => {
            let (taken, seeds) = take_walk(skel, plan, only)?;
            Ok(Started {
                taken,
                seeds,
                census_base: None,
            })
        }
        SnapshotFrom::Netlink => take_dump(skel, plan, only),
    }
}

/// Walks the sockets that exist now (the transition programs are
/// attached): the kernel seeds its store with them; the reader gets their
/// holders when it keeps the owners. The iterators detach after it, and
/// the holders they left (sockets of namespaces not walked) go.
fn take_walk(
    skel: &TcpstatesSkel<'_>,
    plan: &Plan,
    only: Option<u32>,
) -> Result<(Taken, Option<Seeds>)> {
    let holders = plan
        .snapshot_holders
        .then(|| skel.progs.snap_holders.attach())
        .transpose()
        .context("attaching the snapshot's file walk")?;
    let sockets = skel
        .progs
        .snap_sockets
        .attach()
        .context("attaching the snapshot's socket walk")?;
    let mut seeds = (plan.owners == OwnerKeeper::Reader).then(Seeds::default);
    let walkers = Walkers {
        holders: holders.as_ref().map(|link| link.as_fd()),
        sockets: sockets.as_fd(),
    };
    let mut taken = super::take(walkers, only, |found| {
        if let Some(seeds) = &mut seeds {
            seeds.add(&found);
        }
    })?;
    // Without records, the walk counted what it found.
    if let Some(bss) = skel.maps.bss_data.as_deref() {
        taken.sockets += bss.snap_walked;
        taken.held += bss.snap_held;
        taken.holders_lost = bss.snap_holders_lost;
    }
    let left: Vec<Vec<u8>> = skel.maps.holders.keys().collect();
    for key in left {
        // Gone already is as good.
        let _ = skel.maps.holders.delete(&key);
    }
    Ok((taken, seeds))
}

/// The netlink snapshot (src/snapshot/netlink.rs): the sockets that exist
/// now, dumped; where the kernel keeps the sockets' state, each one found
/// into `diag`, counted in the census unless a transition of it left its
/// mark there first (it then counted it); the reader gets their holders
/// when it keeps the owners.
fn take_dump(skel: &TcpstatesSkel<'_>, plan: &Plan, only: Option<u32>) -> Result<Started> {
    let mut seeds = (plan.owners == OwnerKeeper::Reader).then(Seeds::default);
    let store = plan.seeds_from_netlink();
    let mut counted = [0i64; STATES];
    // Sockets the map had no room for: the census is not exact then.
    let mut lost = 0u64;
    let mut raced = 0u64;
    let mut taken = super::take_netlink(only, plan.snapshot_holders, |found| {
        if let Some(seeds) = &mut seeds {
            seeds.add(&found);
        }
        if store {
            if found.state == TcpState::Listen && plan.owners == OwnerKeeper::Kernel {
                put_listener_owner(skel, plan, &found);
            }
            match put_diag_seed(skel, &found) {
                Ok(true) => {
                    // A number out of range counts as 0, as in the kernel.
                    let state = usize::try_from(found.state.number())
                        .ok()
                        .filter(|&n| n < STATES)
                        .unwrap_or(0);
                    counted[state] += 1;
                }
                Ok(false) => raced += 1,
                Err(_) => lost += 1,
            }
        }
    })?;
    if let Some(seeds) = &mut seeds {
        seeds.sort();
    }
    if store {
        set_diag_window(skel, false)?;
        // Marks left by transitions of sockets the dump did not find (gone
        // before it came to them) stay: the map is preallocated, its room
        // is needed no more, and a mark is no copy to take.
        taken.raced = raced;
    }
    Ok(Started {
        taken,
        seeds,
        census_base: store.then_some((counted, lost == 0)),
    })
}

/// `struct diag_key` and `struct diag_seed` of tcpstates.h.
type DiagKey = types::diag_key;
type DiagSeed = types::diag_seed;

// SAFETY: `#[repr(C)]` structs of integers and integer arrays with
// explicit padding: every bit pattern is a valid value.
unsafe impl plain::Plain for DiagKey {}
unsafe impl plain::Plain for DiagSeed {}
unsafe impl plain::Plain for types::listener_key {}
unsafe impl plain::Plain for types::sock_state {}

const DIAG_SEED: u8 = types::diag_kinds::DIAG_SEED.0 as u8;

/// The key the kernel makes for `found` at its first transition (diag_key_of
/// in snapshot.bpf.h).
fn diag_key(found: &Found) -> DiagKey {
    let mut key = DiagKey {
        netns: found.netns,
        inode: if found.state == TcpState::Listen {
            found.inode
        } else {
            0
        },
        sport: found.lport,
        dport: found.rport,
        ..DiagKey::default()
    };
    let octets = |addr: std::net::IpAddr| match addr {
        std::net::IpAddr::V4(v4) => {
            let mut all = [0u8; 16];
            all[..4].copy_from_slice(&v4.octets());
            all
        }
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    key.family = if found.laddr.is_ipv4() {
        libc::AF_INET as u16
    } else {
        libc::AF_INET6 as u16
    };
    key.saddr = octets(found.laddr);
    key.daddr = octets(found.raddr);
    key
}

/// `found` into `diag`: true when it went in, false when a transition's
/// mark was there (the mark goes; the transition counted the socket).
fn put_diag_seed(skel: &TcpstatesSkel<'_>, found: &Found) -> libbpf_rs::Result<bool> {
    let key = diag_key(found);
    let mut seed = DiagSeed {
        kind: DIAG_SEED,
        state: u8::try_from(found.state.number()).unwrap_or(0),
        ..DiagSeed::default()
    };
    if let Some(h) = found.holder {
        seed.holder_known = 1;
        seed.owner_pid = h.pid;
        seed.owner_uid = h.uid;
        seed.owner_cgroup = h.cgroup_id;
        seed.owner_comm = h.comm.map(|c| c as _);
    }
    let key = bytes_of(&key);
    match skel
        .maps
        .diag
        .update(key, bytes_of(&seed), MapFlags::NO_EXIST)
    {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == libbpf_rs::ErrorKind::AlreadyExists => {
            let _ = skel.maps.diag.delete(key);
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// The bytes of a struct shared with the kernel.
pub fn bytes_of<T: plain::Plain>(value: &T) -> &[u8] {
    // SAFETY: the structs of tcpstates.h are `#[repr(C)]` integers and
    // integer arrays with their padding declared as fields: every byte is
    // initialized.
    unsafe { plain::as_bytes(value) }
}

/// The holder of the listener `found` as its new children's owner (the
/// iterators' walk puts it there as it seeds the listener; this one is
/// seeded at its own first transition), unless a listen() since put one.
fn put_listener_owner(skel: &TcpstatesSkel<'_>, plan: &Plan, found: &Found) {
    let Some(h) = found.holder else {
        return;
    };
    let key = types::listener_key {
        netns: found.netns,
        port: u32::from(found.lport),
    };
    let owner = types::sock_state {
        owner_pid: h.pid,
        owner_uid: h.uid,
        owner_cgroup: h.cgroup_id,
        owner_comm: h.comm.map(|c| c as _),
        owner_known: 1,
        // The kernel judges its group when a child takes it.
        owner_undecided: u8::from(plan.group_table),
        ..types::sock_state::default()
    };
    // Full (4,096 listeners) or there already: the children go without.
    let _ = skel
        .maps
        .listener_owners
        .update(bytes_of(&key), bytes_of(&owner), MapFlags::NO_EXIST);
}

/// Opens or closes the netlink snapshot's window (see `diag_window`: open,
/// or when it closed).
pub fn set_diag_window(skel: &TcpstatesSkel<'_>, open: bool) -> Result<()> {
    let value = if open {
        u64::MAX
    } else {
        crate::clock::monotonic_ns()
    };
    skel.maps
        .diag_window
        .update(&0u32.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY)
        .context(if open {
            "opening the snapshot's window"
        } else {
            "closing the snapshot's window"
        })
}
