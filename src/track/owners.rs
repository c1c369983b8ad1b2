//! Each socket's owner, kept by the reader from the events' current task
//! (the kernel's rules in `src/bpf/track.bpf.h`).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::net::IpAddr;

use super::times::{AddressHasher, remove_and_shrink};
use crate::event::{Event, Owner, TcpState};
use crate::snapshot::Found;

/// Whether the kernel changes a socket from `old` to `new` only in a system
/// call of the process that holds it (connect, listen, close, shutdown),
/// never in softirq: then the task on the CPU is the socket's owner.
pub fn is_owner_moment(old: TcpState, new: TcpState) -> bool {
    use TcpState::*;
    matches!(
        (old, new),
        (Close, SynSent)
            | (Close, Listen)
            | (Listen, Close)
            | (Established, FinWait1)
            | (SynRecv, FinWait1)
            | (CloseWait, LastAck)
    )
}

/// Each socket's owner (see [`Owner`]), kept apart from the times so that
/// runs that do not show owners pay nothing for them. The same rules as
/// [`SocketTimes`]: a new socket (leaving CLOSE, or a passive child leaving
/// LISTEN) starts from what it is given, a socket entering CLOSE is
/// forgotten.

#[derive(Debug)]
pub struct Owners {
    by_socket: HashMap<u64, Owner, BuildHasherDefault<AddressHasher>>,
    /// The snapshot's holders, for the sockets' first transitions after it.
    seeds: Seeds,
    /// Listening sockets' owners by (netns, port), for their children:
    /// (the listener's address, its owner).
    listeners: HashMap<(u32, u16), (u64, Owner)>,
    limit: usize,
}

impl Owners {
    /// Remembers at most `limit` sockets' owners (None: as many as there are).
    pub fn new(limit: Option<u32>) -> Self {
        Self {
            by_socket: HashMap::default(),
            seeds: Seeds::default(),
            listeners: HashMap::new(),
            limit: limit.map_or(usize::MAX, |n| n as usize),
        }
    }

    /// Takes the snapshot's holders: each socket's is its owner from its
    /// first transition after the walk read it; a listener's is its
    /// children's until a process listens on its port again.
    pub fn seed(&mut self, seeds: Seeds) {
        for (&port, &(skaddr, index)) in &seeds.listeners {
            self.listeners
                .entry(port)
                .or_insert((skaddr, seeds.owners[index as usize]));
        }
        self.seeds = seeds;
    }

    /// Records `ev` and returns its socket's owner after it, when known.
    pub fn observe(&mut self, ev: &Event) -> Option<Owner> {
        let is_new = ev.old == TcpState::Close
            || (ev.old == TcpState::Listen && ev.new == TcpState::SynRecv);
        if let Some(holder) = self.seeds.take(ev, is_new, &self.by_socket) {
            let room = self.by_socket.len() < self.limit;
            if !is_new && room {
                self.by_socket.entry(ev.skaddr).or_insert(holder);
            }
        }
        let update = self.update(ev);
        if ev.new == TcpState::Close {
            let before = remove_and_shrink(&mut self.by_socket, ev.skaddr).filter(|_| !is_new);
            return update.or(before);
        }
        match update {
            Some(owner)
                if self.by_socket.len() < self.limit || self.by_socket.contains_key(&ev.skaddr) =>
            {
                self.by_socket.insert(ev.skaddr, owner);
                Some(owner)
            }
            Some(owner) => Some(owner),
            None if is_new => {
                remove_and_shrink(&mut self.by_socket, ev.skaddr);
                None
            }
            None => self.by_socket.get(&ev.skaddr).copied(),
        }
    }

    /// The owner `ev` gives its socket, if any: the task on the CPU at an
    /// owner moment; for a passive child leaving LISTEN, its listener's.
    /// Keeps the listeners up to date.
    fn update(&mut self, ev: &Event) -> Option<Owner> {
        let key = (ev.netns, ev.lport);
        match (ev.old, ev.new) {
            (TcpState::Listen, TcpState::SynRecv) => {
                self.listeners.get(&key).map(|&(_, owner)| owner)
            }
            (old, new) if is_owner_moment(old, new) => {
                let owner = ev.current_as_owner();
                if new == TcpState::Listen {
                    // With SO_REUSEPORT the last listener of a port wins.
                    self.listeners.insert(key, (ev.skaddr, owner));
                } else if old == TcpState::Listen
                    && self
                        .listeners
                        .get(&key)
                        .is_some_and(|&(sk, _)| sk == ev.skaddr)
                {
                    self.listeners.remove(&key);
                }
                Some(owner)
            }
            _ => None,
        }
    }

    /// The owner of the socket at `skaddr` now, when known (from a
    /// transition, or the snapshot's holder).
    pub fn of(&self, skaddr: u64) -> Option<Owner> {
        self.by_socket.get(&skaddr).copied().or_else(|| {
            let &(_, index) = self.seeds.by_socket.get(&skaddr)?;
            self.seeds.owners.get(index as usize).copied()
        })
    }

    /// The task on the CPU of `ev` accepted its socket: it is the owner now.
    pub fn accepted(&mut self, ev: &Event) {
        if self.by_socket.len() < self.limit || self.by_socket.contains_key(&ev.skaddr) {
            self.by_socket.insert(ev.skaddr, ev.current_as_owner());
        }
    }

    /// Sockets whose owner is remembered now.
    pub fn len(&self) -> usize {
        self.by_socket.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_socket.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    const SK: u64 = 0xffff_8881_0000_1000;

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            uid: 1000 + pid,
            cgroup_id: 7,
            comm: *b"proc\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn owner_moments_are_system_calls() {
        assert!(is_owner_moment(Close, SynSent));
        assert!(is_owner_moment(Close, Listen));
        assert!(is_owner_moment(Listen, Close));
        assert!(is_owner_moment(Established, FinWait1));
        assert!(is_owner_moment(CloseWait, LastAck));
        // Softirq's: a peer's packet or a timer.
        assert!(!is_owner_moment(SynSent, Established));
        assert!(!is_owner_moment(Established, CloseWait));
        assert!(!is_owner_moment(FinWait2, Close));
        assert!(!is_owner_moment(Listen, SynRecv));
        // Either: a refused connect, an RST, or close() of such a socket.
        assert!(!is_owner_moment(SynSent, Close));
        assert!(!is_owner_moment(Established, Close));
    }

    fn event(skaddr: u64, old: TcpState, new: TcpState, pid: u32, lport: u16) -> Event {
        let mut ev = Event::from_raw(&crate::event::tests::raw_v4()).unwrap();
        (ev.skaddr, ev.old, ev.new, ev.pid, ev.lport) = (skaddr, old, new, pid, lport);
        (ev.uid, ev.cgroup_id) = (1000 + pid, 7);
        ev.comm = owner(pid).comm;
        ev
    }

    #[test]
    fn an_owner_is_kept_through_softirq_transitions_and_replaced_by_another() {
        let mut o = Owners::new(None);
        assert_eq!(o.observe(&event(SK, Close, SynSent, 1, 0)), Some(owner(1)));
        // Softirq, on whatever task: the owner stays.
        assert_eq!(
            o.observe(&event(SK, SynSent, Established, 0, 5)),
            Some(owner(1))
        );
        assert_eq!(
            o.observe(&event(SK, Established, FinWait1, 2, 5)),
            Some(owner(2))
        );
        assert_eq!(o.observe(&event(SK, FinWait2, Close, 0, 5)), Some(owner(2)));
        assert!(o.is_empty(), "a closed socket is forgotten");
        // A socket first seen mid-life has none until an owner moment.
        assert_eq!(o.observe(&event(SK, Established, CloseWait, 0, 5)), None);
        assert_eq!(
            o.observe(&event(SK, CloseWait, LastAck, 3, 5)),
            Some(owner(3))
        );
        // A new socket at a reused address starts with its own.
        o.observe(&event(SK + 64, Close, SynSent, 4, 0));
        assert_eq!(
            o.observe(&event(SK + 64, Close, SynSent, 0, 0)),
            Some(owner(0))
        );
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn a_passive_child_takes_its_listeners_owner_then_its_closers() {
        let mut o = Owners::new(None);
        assert_eq!(
            o.observe(&event(SK, Close, Listen, 10, 80)),
            Some(owner(10))
        );
        // The child's SYN_RECV runs in softirq, on whatever task: pid 0.
        let child = event(SK + 64, Listen, SynRecv, 0, 80);
        assert_eq!(o.observe(&child), Some(owner(10)));
        assert_eq!(o.observe(&event(SK + 128, Listen, SynRecv, 0, 81)), None);
        assert_eq!(
            o.observe(&event(SK + 64, SynRecv, Established, 0, 80)),
            Some(owner(10))
        );
        // The process that accepted it closes it.
        assert_eq!(
            o.observe(&event(SK + 64, Established, FinWait1, 20, 80)),
            Some(owner(20))
        );
        // The listener closes: later children's owner is not known.
        assert_eq!(
            o.observe(&event(SK, Listen, Close, 10, 80)),
            Some(owner(10))
        );
        assert_eq!(o.observe(&event(SK + 192, Listen, SynRecv, 0, 80)), None);
    }

    #[test]
    fn an_accept_makes_the_acceptor_the_owner() {
        let mut o = Owners::new(None);
        o.observe(&event(SK, Close, Listen, 10, 80));
        assert_eq!(
            o.observe(&event(SK + 64, Listen, SynRecv, 0, 80)),
            Some(owner(10))
        );
        let mut accept = event(SK + 64, Established, Established, 20, 80);
        accept.accepted = true;
        o.accepted(&accept);
        assert_eq!(
            o.observe(&event(SK + 64, Established, CloseWait, 0, 80)),
            Some(owner(20))
        );
    }

    /// What the netlink dump found: no address, no time.
    fn dumped(lport: u16, rport: u16, state: TcpState, holder: Option<Owner>) -> Found {
        let ev = event(0, state, state, 0, lport);
        Found {
            skaddr: 0,
            ts_ns: 0,
            state,
            netns: ev.netns,
            lport,
            rport,
            laddr: ev.laddr,
            raddr: ev.raddr,
            holder,
            seeded: false,
            since_ns: None,
            before_trace: false,
            inode: 7,
        }
    }

    #[test]
    fn the_dumps_holders_go_to_the_first_transitions_by_addresses() {
        let mut seeds = Seeds::default();
        seeds.add(&dumped(80, 40000, CloseWait, Some(owner(10))));
        seeds.add(&dumped(80, 40001, Established, Some(owner(11))));
        // Listeners sharing a port: the same holder stays, two give none.
        seeds.add(&dumped(81, 0, Listen, Some(owner(12))));
        seeds.add(&dumped(81, 0, Listen, Some(owner(12))));
        seeds.add(&dumped(82, 0, Listen, Some(owner(13))));
        seeds.add(&dumped(82, 0, Listen, Some(owner(14))));
        seeds.add(&dumped(83, 40002, Established, None));
        seeds.sort();
        assert_eq!(seeds.len(), 3, "one entry per addresses with a holder");
        let mut o = Owners::new(None);
        o.seed(seeds);
        let at = |skaddr, old, new, lport, rport| {
            let mut ev = event(skaddr, old, new, 0, lport);
            ev.rport = rport;
            ev
        };
        // Softirq, first seen: the holder, kept after.
        assert_eq!(
            o.observe(&at(SK, CloseWait, CloseWait, 80, 40000)),
            Some(owner(10))
        );
        assert_eq!(
            o.observe(&at(SK, CloseWait, LastAck, 80, 40000))
                .map(|o| o.pid),
            Some(0)
        );
        // A new socket with a dumped one's addresses takes nothing (the
        // dumped one has not moved): its own owner moment names it.
        assert_eq!(
            o.observe(&at(SK + 64, Close, SynSent, 80, 40001)),
            Some(owner(0))
        );
        assert_eq!(
            o.observe(&at(SK + 128, Established, CloseWait, 80, 40001)),
            Some(owner(11))
        );
        // Once only.
        assert_eq!(
            o.observe(&at(SK + 192, Established, CloseWait, 80, 40001)),
            None
        );
        // A listener's holder goes to its children; two listeners of
        // different holders on a port give theirs to none.
        assert_eq!(
            o.observe(&at(SK + 256, Listen, SynRecv, 81, 50000)),
            Some(owner(12))
        );
        assert_eq!(
            o.observe(&at(SK + 320, Established, FinWait1, 82, 0))
                .map(|o| o.pid),
            Some(0)
        );
        assert_eq!(o.seeds.len(), 1, "the port 81 listener's copy waits");
    }

    #[test]
    fn owners_memory_shrinks_when_sockets_close() {
        let mut o = Owners::new(None);
        for i in 0..100_000u64 {
            o.observe(&event(SK + i * 64, Close, SynSent, 1, 0));
        }
        let grown = o.by_socket.capacity();
        for i in 0..100_000u64 {
            o.observe(&event(SK + i * 64, SynSent, Close, 0, 5));
        }
        assert!(o.is_empty());
        assert!(
            o.by_socket.capacity() * 10 < grown,
            "{} of {grown}",
            o.by_socket.capacity()
        );
    }
}

/// A holder's index that stands for none: sockets found whose addresses
/// hash the same give none unless their holder is the same.
const AMBIGUOUS: u32 = u32::MAX;

/// The snapshot's sockets with a holder, for the reader: by socket, when
/// the walk read it and its holder (one copy of each holder); or, from the
/// netlink dump, by a hash of their addresses (keyed at random per run),
/// sorted: 16 bytes a socket.
#[derive(Debug, Default)]
pub struct Seeds {
    by_socket: HashMap<u64, (u64, u32), BuildHasherDefault<AddressHasher>>,
    by_addresses: Vec<(u64, u32)>,
    /// How many of those are still to be taken.
    addresses_left: usize,
    hashing: std::hash::RandomState,
    owners: Vec<Owner>,
    index: HashMap<Owner, u32>,
    /// Listeners found, by (netns, port): (address, holder).
    listeners: HashMap<(u32, u16), (u64, u32)>,
}

impl Seeds {
    /// One socket the walk found.
    pub fn add(&mut self, found: &Found) {
        let Some(holder) = found.holder else {
            return;
        };
        let owners = &mut self.owners;
        let index = *self.index.entry(holder).or_insert_with(|| {
            owners.push(holder);
            u32::try_from(owners.len() - 1).unwrap_or(u32::MAX)
        });
        if found.skaddr != 0 {
            self.by_socket.insert(found.skaddr, (found.ts_ns, index));
        } else {
            let hash = self.addresses_hash(
                found.netns,
                (found.laddr, found.lport),
                (found.raddr, found.rport),
            );
            self.by_addresses.push((hash, index));
        }
        if found.state == TcpState::Listen {
            self.listeners
                .entry((found.netns, found.lport))
                .or_insert((found.skaddr, index));
        }
    }

    /// The keyed hash a socket is found by in `by_addresses`: the same for
    /// the dump's copy (`add`) and the socket's transition (`take`).
    fn addresses_hash(&self, netns: u32, local: (IpAddr, u16), remote: (IpAddr, u16)) -> u64 {
        self.hashing.hash_one((netns, local, remote))
    }

    /// Sorts what the dump found for finding (once all is added). The same
    /// addresses twice are listeners sharing a port (SO_REUSEPORT): they
    /// keep their holder if it is the same, else give none (their own
    /// transitions name their owner: listen and close are system calls),
    /// as do two addresses whose hashes are alike (one in 2^64 a pair).
    pub fn sort(&mut self) {
        // Stable: the first one found stays first.
        self.by_addresses.sort_by_key(|&(hash, _)| hash);
        self.by_addresses.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            if later.1 != kept.1 {
                kept.1 = AMBIGUOUS;
            }
            true
        });
        self.by_addresses.shrink_to_fit();
        self.addresses_left = self
            .by_addresses
            .iter()
            .filter(|&&(_, index)| index != AMBIGUOUS)
            .count();
    }

    /// The holder of the socket of `ev`, once: from the walk, only for a
    /// transition after the walk read it (one before it may be an earlier
    /// socket's at the same address); from the dump, for the first
    /// transition of a socket with its addresses that is not new (two
    /// sockets never have the same four at once), whose owner is not in
    /// `known` (looked at only while the dump's holders wait).
    fn take(
        &mut self,
        ev: &Event,
        is_new: bool,
        known: &HashMap<u64, Owner, BuildHasherDefault<AddressHasher>>,
    ) -> Option<Owner> {
        let index = match self.by_socket.get(&ev.skaddr) {
            Some(&(read_ns, index)) if ev.ts_ns > read_ns => {
                remove_and_shrink(&mut self.by_socket, ev.skaddr);
                index
            }
            Some(_) => return None,
            None if is_new || self.addresses_left == 0 || known.contains_key(&ev.skaddr) => {
                return None;
            }
            None => {
                let hash =
                    self.addresses_hash(ev.netns, (ev.laddr, ev.lport), (ev.raddr, ev.rport));
                let at = self
                    .by_addresses
                    .binary_search_by_key(&hash, |&(h, _)| h)
                    .ok()?;
                let index = std::mem::replace(&mut self.by_addresses[at].1, AMBIGUOUS);
                if index == AMBIGUOUS {
                    return None;
                }
                self.addresses_left -= 1;
                if self.addresses_left == 0 {
                    self.by_addresses = Vec::new();
                }
                index
            }
        };
        self.owners.get(index as usize).copied()
    }

    /// Sockets whose holder waits for their first transition.
    pub fn len(&self) -> usize {
        self.by_socket.len() + self.addresses_left
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
