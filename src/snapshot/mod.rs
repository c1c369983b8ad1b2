//! The snapshot at start: every TCP socket that exists when the trace
//! begins, with the process that holds it, taken once the transition
//! programs are attached and before the first event is decoded
//! (`src/bpf/snapshot.bpf.h`).
//!
//! The kernel walks every process's open files (a task_file iterator: each
//! TCP socket's first holder), then the TCP sockets of each network
//! namespace (a socket iterator, which walks the namespace of the process
//! that opens it: a thread enters each one in turn). Where the kernel keeps
//! the sockets' state it seeds each socket found there itself (its first
//! transition then has an owner and a lower bound, the census counts it);
//! where the reader keeps them, the walk hands each socket to it here,
//! with the time it was read: a transition before that time is already in
//! what the walk found, one after it is not.
//!
//! Where the kernel has no socket iterator, [`netlink`] takes the same
//! snapshot from the socket diagnostics.

pub mod netlink;
pub mod start;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::bpf::types;
use crate::config::SnapshotFrom;
use crate::event::{Owner, TcpState, addresses};

/// `struct snap_sock` of tcpstates.h, as the skeleton generated it.
type RawSnap = types::snap_sock;

// SAFETY: a `#[repr(C)]` struct of integers and integer arrays, generated
// from a header with fixed-width fields and explicit padding: every bit
// pattern is a valid value.
unsafe impl plain::Plain for RawSnap {}

const SNAP_F_HOLDER: u8 = types::snap_flags::SNAP_F_HOLDER.0 as u8;
const SNAP_F_SEEDED: u8 = types::snap_flags::SNAP_F_SEEDED.0 as u8;
const SNAP_F_SINCE: u8 = types::snap_flags::SNAP_F_SINCE.0 as u8;
const SNAP_F_BEFORE_TRACE: u8 = types::snap_flags::SNAP_F_BEFORE_TRACE.0 as u8;
const SNAP_F_OWNER: u8 = types::snap_flags::SNAP_F_OWNER.0 as u8;

/// One socket as the walk found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The socket's address (what events call it by).
    pub skaddr: u64,
    /// Monotonic time the walk read it.
    pub ts_ns: u64,
    /// Its state then.
    pub state: TcpState,
    /// Its network namespace's inode.
    pub netns: u32,
    /// Local port.
    pub lport: u16,
    /// Remote port.
    pub rport: u16,
    /// Local address.
    pub laddr: std::net::IpAddr,
    /// Remote address.
    pub raddr: std::net::IpAddr,
    /// The snapshot: a process that has it open (the first the walk
    /// met); the stuck walk: its owner, as the kernel keeps it.
    pub holder: Option<Owner>,
    /// The kernel's store took it from the walk.
    pub seeded: bool,
    /// The stuck walk, where the kernel keeps the times: when it entered
    /// its state ...
    pub since_ns: Option<u64>,
    /// ... or that it has been in it since before the trace.
    pub before_trace: bool,
    /// The netlink snapshot: its inode (0: none, or not known).
    pub inode: u32,
}

impl Found {
    fn decode(raw: &RawSnap) -> Option<Found> {
        let (laddr, raddr) = addresses(raw.family, raw.saddr, raw.daddr).ok()?;
        Some(Found {
            skaddr: raw.skaddr,
            ts_ns: raw.ts_ns,
            state: TcpState::from_raw(i32::from(raw.state)),
            netns: raw.netns,
            lport: raw.sport,
            rport: raw.dport,
            laddr,
            raddr,
            holder: (raw.flags & (SNAP_F_HOLDER | SNAP_F_OWNER) != 0).then(|| Owner {
                pid: raw.owner_pid,
                uid: raw.owner_uid,
                cgroup_id: raw.owner_cgroup,
                comm: raw.owner_comm.map(|c| c as u8),
            }),
            seeded: raw.flags & SNAP_F_SEEDED != 0,
            since_ns: (raw.flags & SNAP_F_SINCE != 0).then_some(raw.since_ns),
            before_trace: raw.flags & SNAP_F_BEFORE_TRACE != 0,
            inode: 0,
        })
    }
}

/// What a snapshot found, in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken {
    /// Where from.
    pub source: SnapshotFrom,
    /// Full sockets found.
    pub sockets: u64,
    /// ... of which a process had open.
    pub held: u64,
    /// The netlink snapshot: sockets a transition marked first while the
    /// dump ran (the kernel's store counts them).
    pub raced: u64,
    /// Namespaces walked.
    pub namespaces: usize,
    /// Namespaces that could not be entered, with why (one line each).
    pub missed: Vec<String>,
    /// From the first walk's start to the last one's end.
    pub took: Duration,
    /// The netlink snapshot: of which the holders from /proc/*/fd.
    pub holders_took: Option<Duration>,
    /// Holders the kernel's map could not take (no memory).
    pub holders_lost: u64,
}

impl Taken {
    /// One line for -v.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "snapshot ({}): {} sockets ({} with a holder) in {} network namespaces, {} ms",
            self.source.name(),
            self.sockets,
            self.held,
            self.namespaces,
            self.took.as_millis()
        );
        if let Some(holders) = self.holders_took {
            line.push_str(&format!(
                " ({} ms of it for the holders)",
                holders.as_millis()
            ));
        }
        if self.holders_lost > 0 {
            line.push_str(&format!(
                "; {} holders not kept (no memory)",
                self.holders_lost
            ));
        }
        if self.raced > 0 {
            line.push_str(&format!("; {} changed while dumped", self.raced));
        }
        if !self.missed.is_empty() {
            line.push_str(&format!("; not entered: {}", self.missed.join("; ")));
        }
        line
    }
}

/// The iterator programs, attached: `holders` walks the processes' files,
/// `sockets` a namespace's TCP sockets (link descriptors).
pub struct Walkers<'a> {
    /// The task_file iterator's link, when holders are wanted.
    pub holders: Option<std::os::fd::BorrowedFd<'a>>,
    /// The TCP socket iterator's link.
    pub sockets: std::os::fd::BorrowedFd<'a>,
}

/// Takes the snapshot: holders first, then the sockets of every network
/// namespace (only `only` when given), each handed to `each` as found.
pub fn take(walkers: Walkers<'_>, only: Option<u32>, mut each: impl FnMut(Found)) -> Result<Taken> {
    let started = Instant::now();
    if let Some(holders) = walkers.holders {
        drain(open_iterator(holders)?, |_| {}).context("walking the processes' files")?;
    }
    let mut taken = walk(walkers.sockets, only, &mut each)?;
    taken.took = started.elapsed();
    Ok(taken)
}

/// Runs the socket iterator `sockets` in every network namespace (only
/// `only`, when given), handing each socket to `each`.
pub fn walk(
    sockets: std::os::fd::BorrowedFd<'_>,
    only: Option<u32>,
    mut each: impl FnMut(Found),
) -> Result<Taken> {
    let started = Instant::now();
    let (opened, missed) = open_in_each(only, || open_iterator(sockets))?;
    let mut taken = Taken {
        namespaces: opened.len(),
        missed,
        ..Taken::default()
    };
    for (inode, fd) in opened {
        drain(fd, |raw| {
            if let Some(found) = Found::decode(raw) {
                taken.sockets += 1;
                taken.held += u64::from(found.holder.is_some());
                each(found);
            }
        })
        .with_context(|| format!("walking the TCP sockets of namespace {inode}"))?;
    }
    taken.took = started.elapsed();
    Ok(taken)
}

/// The netlink snapshot: every network namespace's TCP sockets (only
/// `only`, when given) from the socket diagnostics, each handed to `each`,
/// with its first holder when `holders`.
pub fn take_netlink(
    only: Option<u32>,
    holders: bool,
    mut each: impl FnMut(Found),
) -> Result<Taken> {
    let started = Instant::now();
    let (opened, missed) = open_in_each(only, netlink::open)?;
    let mut found = Vec::new();
    for (inode, fd) in &opened {
        let netns = u32::try_from(*inode).unwrap_or(0);
        netlink::dump(fd, netns, |f| found.push(f))
            .with_context(|| format!("dumping the TCP sockets of namespace {inode}"))?;
    }
    let (holders, holders_took) = if holders {
        let started = Instant::now();
        let wanted = found.iter().map(|f| f.inode).filter(|&i| i != 0).collect();
        (netlink::holders(&wanted), Some(started.elapsed()))
    } else {
        (Default::default(), None)
    };
    let mut taken = Taken {
        source: SnapshotFrom::Netlink,
        holders_took,
        namespaces: opened.len(),
        missed,
        ..Taken::default()
    };
    for mut f in found {
        f.holder = holders.get(&f.inode).copied();
        taken.sockets += 1;
        taken.held += u64::from(f.holder.is_some());
        each(f);
    }
    taken.took = started.elapsed();
    Ok(taken)
}

/// What `open` made in each network namespace (only `only`, when given),
/// by namespace inode, and the namespaces not entered (with why). An
/// iterator walks, and a netlink socket dumps, the namespace of the thread
/// that opens it: a thread of its own enters each one and opens there, and
/// ends with that (entering changes the calling thread's namespace).
fn open_in_each(
    only: Option<u32>,
    open: impl Fn() -> Result<OwnedFd> + Send + Sync,
) -> Result<Opened> {
    let namespaces = network_namespaces(only);
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Opened> {
                let mut opened = Vec::new();
                let mut missed = Vec::new();
                // The namespace the thread is in needs no entering (which
                // takes CAP_SYS_ADMIN, even into one's own).
                let mut current = std::fs::metadata("/proc/thread-self/ns/net")
                    .map(|meta| meta.ino())
                    .ok();
                for (&inode, path) in &namespaces {
                    if current != Some(inode) {
                        if let Err(err) = enter(path) {
                            missed.push(format!("{inode} ({}): {err}", path.display()));
                            continue;
                        }
                        current = Some(inode);
                    }
                    let fd = open().with_context(|| format!("in network namespace {inode}"))?;
                    opened.push((inode, fd));
                }
                Ok((opened, missed))
            })
            .join()
            .map_err(|_| anyhow!("the snapshot's thread panicked"))?
    })
}

/// What was opened, by namespace inode, and the namespaces not entered
/// (with why).
type Opened = (Vec<(u64, OwnedFd)>, Vec<String>);

/// A new walk of the iterator `link`, in this thread's namespace.
fn open_iterator(link: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd> {
    // SAFETY: bpf_iter_create takes a link descriptor, open while `link`
    // is borrowed, and returns a new descriptor or a negative error.
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_iter_create(link.as_raw_fd()) };
    if fd < 0 {
        bail!(
            "opening the iterator: {}",
            std::io::Error::from_raw_os_error(-fd)
        );
    }
    // SAFETY: a new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the walk `fd` to its end, handing each record to `each`.
fn drain(fd: OwnedFd, mut each: impl FnMut(&RawSnap)) -> Result<()> {
    let mut file = File::from(fd);
    let size = std::mem::size_of::<RawSnap>();
    let mut buf = vec![0u8; 64 << 10];
    let mut held = 0;
    loop {
        let n = match file.read(&mut buf[held..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("reading the iterator"),
        };
        held += n;
        let whole = held - held % size;
        for chunk in buf[..whole].chunks_exact(size) {
            let mut raw = RawSnap::default();
            plain::copy_from_bytes(&mut raw, chunk)
                .map_err(|_| anyhow!("a short snapshot record"))?;
            each(&raw);
        }
        buf.copy_within(whole..held, 0);
        held -= whole;
    }
    Ok(())
}

/// Every network namespace a thread is in or /run/netns names, once each,
/// by inode (only `only`, when given).
fn network_namespaces(only: Option<u32>) -> BTreeMap<u64, PathBuf> {
    let mut found = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            if only.is_none_or(|inode| u64::from(inode) == meta.ino()) {
                found.entry(meta.ino()).or_insert(path);
            }
        }
    };
    add(PathBuf::from("/proc/self/ns/net"));
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            add(entry.path());
        }
    }
    // Every thread's: a thread may have entered a namespace of its own.
    let numbered = |dir: PathBuf| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
    };
    for process in numbered(PathBuf::from("/proc")) {
        for thread in numbered(process.path().join("task")) {
            add(thread.path().join("ns/net"));
        }
    }
    found
}

/// Moves this thread into the network namespace at `path`.
fn enter(path: &std::path::Path) -> std::io::Result<()> {
    let ns = File::open(path)?;
    // SAFETY: setns takes an open namespace descriptor; it changes only
    // this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
