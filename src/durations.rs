//! Each socket's time in the state it leaves, and its owner, kept in user
//! space.
//!
//! Without a filter that needs them in the kernel, the kernel sends every
//! transition of the traced family, so the reader can remember when each
//! socket last changed state, and which process owns it.
//! That keeps the kernel side to reading and sending: a per-socket store in
//! the kernel (a hash map, or socket-local storage) costs the traced host
//! more than everything else the program does (see BENCHMARKS.md). With a
//! port, state, duration or owner filter the kernel drops transitions this
//! side would need, so it keeps the times and owners itself, by the same
//! rules (`track()` and `track_owner()` in `src/bpf/tcpstates.bpf.c`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::cgroup::{CgroupPaths, cgroup2_mount};
use crate::event::{DecodeError, Event, Owner, TcpState};
use crate::plan::{OwnerKeeper, Plan};

/// Turns ring buffer records into events, with the time in the old state
/// from the kernel or from [`SocketTimes`], whichever keeps it, and, when
/// an output shows them, the socket's owner from [`Owners`].
#[derive(Debug)]
pub struct Decoder {
    /// `None` when the kernel keeps the times.
    times: Option<SocketTimes>,
    /// `None` when owners are not shown, or the reader does not see every
    /// transition (the kernel keeps the times, and the owners).
    owners: Option<Owners>,
    /// The owners' cgroup paths, when owners are shown.
    cgroups: Option<CgroupPaths>,
}

impl Decoder {
    /// For the program `plan` loads.
    pub fn for_plan(plan: &Plan) -> Self {
        Self {
            times: plan
                .reader_keeps_times()
                .then(|| SocketTimes::new(plan.reader_sockets)),
            owners: (plan.owners == OwnerKeeper::Reader).then(|| Owners::new(plan.reader_sockets)),
            cgroups: plan.owners_shown.then(|| CgroupPaths::at(cgroup2_mount())),
        }
    }

    /// Decodes one record; the caller must pass every record, in order.
    /// None for a record that is not a transition (the program says a
    /// process accepted a socket), which it takes in.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Event>, DecodeError> {
        let mut event = Event::decode(data)?;
        if event.accepted {
            if let Some(owners) = &mut self.owners {
                owners.accepted(&event);
            }
            return Ok(None);
        }
        if let Some(times) = &mut self.times {
            let tracked = times.observe(event.skaddr, event.old, event.new, event.ts_ns);
            event.duration_ns = tracked.duration_ns;
            event.map_full = tracked.no_room;
        }
        if let Some(owners) = &mut self.owners {
            event.owner = owners.observe(&event);
        }
        if let (Some(cgroups), Some(owner)) = (&mut self.cgroups, event.owner) {
            event.cgroup = cgroups.path(owner.cgroup_id);
        }
        Ok(Some(event))
    }

    /// The user-space times, unless the kernel keeps them.
    pub fn times(&self) -> Option<&SocketTimes> {
        self.times.as_ref()
    }
}

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
            listeners: HashMap::new(),
            limit: limit.map_or(usize::MAX, |n| n as usize),
        }
    }

    /// Records `ev` and returns its socket's owner after it, when known.
    pub fn observe(&mut self, ev: &Event) -> Option<Owner> {
        let is_new = ev.old == TcpState::Close
            || (ev.old == TcpState::Listen && ev.new == TcpState::SynRecv);
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

/// What one transition learned from the socket's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// Time in the state left; `None` when the socket's previous transition
    /// was not seen (it predates the trace, or there was no room for it).
    pub duration_ns: Option<u64>,
    /// There was no room to remember this socket.
    pub no_room: bool,
}

/// Removes `key` from `map`, and hands memory back once three quarters of
/// its slots are empty: to twice what is in use, so that shrinking again
/// takes as many removals as there are entries left (amortised, like the
/// growth).
fn remove_and_shrink<V>(
    map: &mut HashMap<u64, V, BuildHasherDefault<AddressHasher>>,
    key: u64,
) -> Option<V> {
    let value = map.remove(&key);
    let slots = map.capacity();
    if slots > SHRINK_ABOVE && map.len() < slots / 4 {
        map.shrink_to(map.len() * 2);
    }
    value
}

/// Below this many slots, a map that emptied is not worth shrinking.
const SHRINK_ABOVE: usize = 4096;

/// Socket address -> time of its last transition, for live sockets. Grows
/// as sockets appear and shrinks as they close: its memory follows the
/// sockets the host has now, not the most it ever had.
#[derive(Debug, Clone)]
pub struct SocketTimes {
    since: HashMap<u64, u64, BuildHasherDefault<AddressHasher>>,
    limit: usize,
    no_room: u64,
}

impl SocketTimes {
    /// Remembers at most `limit` sockets at once (`--max-sockets`; None: as
    /// many as there are).
    pub fn new(limit: Option<u32>) -> Self {
        Self {
            since: HashMap::default(),
            limit: limit.map_or(usize::MAX, |n| n as usize),
            no_room: 0,
        }
    }

    /// Forgets a socket (see [`remove_and_shrink`]).
    fn forget(&mut self, skaddr: u64) -> Option<u64> {
        remove_and_shrink(&mut self.since, skaddr)
    }

    /// Records a transition of the socket at `skaddr` at `ts_ns` (kernel
    /// monotonic time) and returns the time it spent in `old`.
    ///
    /// A socket leaving CLOSE, or a passive child leaving the LISTEN it
    /// inherited from its listener, is new: whatever is remembered at its
    /// address belonged to an earlier socket there. A socket entering CLOSE
    /// is forgotten, as its address is free for the next one.
    pub fn observe(&mut self, skaddr: u64, old: TcpState, new: TcpState, ts_ns: u64) -> Tracked {
        let is_new =
            old == TcpState::Close || (old == TcpState::Listen && new == TcpState::SynRecv);
        if new == TcpState::Close {
            let since = self.forget(skaddr).filter(|_| !is_new);
            return Tracked {
                duration_ns: since.map(|since| ts_ns.saturating_sub(since)),
                no_room: false,
            };
        }
        let room = self.since.len() < self.limit;
        match self.since.get_mut(&skaddr) {
            Some(since) => {
                let duration_ns = (!is_new).then(|| ts_ns.saturating_sub(*since));
                *since = ts_ns;
                Tracked {
                    duration_ns,
                    no_room: false,
                }
            }
            None if room => {
                self.since.insert(skaddr, ts_ns);
                Tracked {
                    duration_ns: None,
                    no_room: false,
                }
            }
            None => {
                self.no_room += 1;
                Tracked {
                    duration_ns: None,
                    no_room: true,
                }
            }
        }
    }

    /// Sockets remembered now.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Whether no socket is remembered.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }

    /// Slots allocated now (memory in use is about 17 bytes a slot).
    pub fn slots(&self) -> usize {
        self.since.capacity()
    }

    /// Transitions whose socket could not be remembered for lack of room.
    pub fn no_room(&self) -> u64 {
        self.no_room
    }
}

/// Hashes kernel addresses: one multiply, folded so that the low bits (which
/// pick the bucket) depend on every bit of the address. Slab objects are
/// aligned, so an address's own low bits are all zero. SipHash, the
/// default, would cost more than the rest of the lookup.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let x = (n ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    const SK: u64 = 0xffff_8881_0000_1000;

    fn ms(n: u64) -> u64 {
        n * 1_000_000
    }

    #[test]
    fn a_connection_from_first_to_last_transition() {
        let mut t = SocketTimes::new(None);
        assert_eq!(t.observe(SK, Close, SynSent, ms(1)).duration_ns, None);
        assert_eq!(
            t.observe(SK, SynSent, Established, ms(3)).duration_ns,
            Some(ms(2))
        );
        assert_eq!(
            t.observe(SK, Established, FinWait1, ms(10)).duration_ns,
            Some(ms(7))
        );
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.observe(SK, FinWait1, Close, ms(11)).duration_ns,
            Some(ms(1))
        );
        assert!(t.is_empty(), "a closed socket is forgotten");
    }

    #[test]
    fn a_socket_first_seen_mid_life_has_no_known_duration() {
        let mut t = SocketTimes::new(None);
        assert_eq!(
            t.observe(SK, Established, CloseWait, ms(5)).duration_ns,
            None
        );
        assert_eq!(
            t.observe(SK, CloseWait, LastAck, ms(6)).duration_ns,
            Some(ms(1))
        );
    }

    #[test]
    fn a_new_socket_at_a_reused_address_starts_unknown() {
        let mut t = SocketTimes::new(None);
        // An earlier socket whose CLOSE was never seen.
        t.observe(SK, Close, SynSent, ms(1));
        assert_eq!(t.observe(SK, Close, SynSent, ms(9)).duration_ns, None);
        assert_eq!(
            t.observe(SK, SynSent, Established, ms(10)).duration_ns,
            Some(ms(1))
        );
        // A passive child allocated where a listener lived.
        let child = SK + 0x800;
        t.observe(child, Close, Listen, ms(1));
        assert_eq!(t.observe(child, Listen, SynRecv, ms(20)).duration_ns, None);
        assert_eq!(
            t.observe(child, SynRecv, Established, ms(21)).duration_ns,
            Some(ms(1))
        );
        // Entering CLOSE as a new socket (listen() failing at once).
        t.observe(SK + 0x1000, Established, FinWait1, ms(1));
        assert_eq!(
            t.observe(SK + 0x1000, Close, Close, ms(2)).duration_ns,
            None
        );
    }

    #[test]
    fn no_room_is_counted_and_a_closed_socket_frees_its_place() {
        let mut t = SocketTimes::new(Some(1));
        t.observe(SK, Close, SynSent, ms(1));
        let other = t.observe(SK + 64, Close, SynSent, ms(1));
        assert_eq!(
            other,
            Tracked {
                duration_ns: None,
                no_room: true
            }
        );
        assert_eq!(
            t.observe(SK + 64, SynSent, Established, ms(2)).duration_ns,
            None
        );
        assert_eq!(t.no_room(), 2);
        t.observe(SK, SynSent, Close, ms(3));
        t.observe(SK + 64, Established, FinWait1, ms(4));
        assert_eq!(
            t.observe(SK + 64, FinWait1, FinWait2, ms(6)).duration_ns,
            Some(ms(2))
        );
        assert_eq!(t.no_room(), 2);
    }

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

    #[test]
    fn memory_grows_with_sockets_and_shrinks_when_they_close() {
        let mut t = SocketTimes::new(None);
        let sockets = 200_000u64;
        for i in 0..sockets {
            t.observe(SK + i * 64, Close, SynSent, ms(1));
        }
        assert_eq!(t.len(), sockets as usize);
        assert_eq!(t.no_room(), 0, "no bound by default");
        let grown = t.slots();
        assert!(grown >= sockets as usize, "{grown}");
        for i in 0..sockets - 10 {
            assert_eq!(
                t.observe(SK + i * 64, SynSent, Close, ms(2)).duration_ns,
                Some(ms(1))
            );
        }
        assert_eq!(t.len(), 10);
        assert!(t.slots() <= SHRINK_ABOVE * 2, "{} slots left", t.slots());
        // What is left keeps its times.
        let last = SK + (sockets - 1) * 64;
        assert_eq!(
            t.observe(last, SynSent, Established, ms(5)).duration_ns,
            Some(ms(4))
        );
    }

    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        let low_bits = |addr: u64| {
            let mut h = AddressHasher::default();
            h.write_u64(addr);
            h.finish() & 0xff
        };
        let buckets: std::collections::HashSet<u64> =
            (0..256).map(|i| low_bits(SK + i * 2048)).collect();
        assert!(buckets.len() > 128, "{} buckets", buckets.len());
    }
}
