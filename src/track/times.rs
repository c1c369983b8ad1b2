//! Each socket's time of its last transition, kept by the reader.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::event::TcpState;

/// What one transition learned from the socket's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// Time in the state left; `None` when the socket's previous transition
    /// was not seen (it predates the trace, or there was no room for it).
    pub duration_ns: Option<u64>,
    /// There was no room to remember this socket.
    pub no_room: bool,
    /// No transition of the socket was seen, and every socket seen was
    /// remembered: it has been in the state left since before the trace
    /// (if no event was lost: the caller knows).
    pub before_trace: bool,
}

/// Removes `key` from `map`, and hands memory back once three quarters of
/// its slots are empty: to twice what is in use, so that shrinking again
/// takes as many removals as there are entries left (amortised, like the
/// growth).
pub(super) fn remove_and_shrink<V>(
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
        // Unseen, while every socket seen is remembered.
        let unseen = |this: &Self| !is_new && this.no_room == 0;
        if new == TcpState::Close {
            let since = self.forget(skaddr);
            return Tracked {
                duration_ns: since
                    .filter(|_| !is_new)
                    .map(|since| ts_ns.saturating_sub(since)),
                no_room: false,
                before_trace: since.is_none() && unseen(self),
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
                    before_trace: false,
                }
            }
            None if room => {
                self.since.insert(skaddr, ts_ns);
                Tracked {
                    duration_ns: None,
                    no_room: false,
                    before_trace: unseen(self),
                }
            }
            None => {
                let before_trace = unseen(self);
                self.no_room += 1;
                Tracked {
                    duration_ns: None,
                    no_room: true,
                    before_trace,
                }
            }
        }
    }

    /// When the socket at `skaddr` entered its state, if remembered ...
    pub fn since(&self, skaddr: u64) -> Option<u64> {
        self.since.get(&skaddr).copied()
    }

    /// ... and whether every socket seen is (then one not remembered has
    /// not been seen).
    pub fn complete(&self) -> bool {
        self.no_room == 0
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
    fn an_unseen_socket_is_older_than_the_trace_while_every_one_is_kept() {
        let mut t = SocketTimes::new(Some(3));
        let first = t.observe(SK, Established, FinWait1, ms(1));
        assert_eq!((first.duration_ns, first.before_trace), (None, true));
        // Seen now: exact.
        let next = t.observe(SK, FinWait1, FinWait2, ms(3));
        assert_eq!((next.duration_ns, next.before_trace), (Some(ms(2)), false));
        // Closing unseen: older too; starting anew: not.
        assert!(t.observe(SK + 64, CloseWait, Close, ms(4)).before_trace);
        assert!(!t.observe(SK + 128, Close, SynSent, ms(4)).before_trace);
        assert!(!t.observe(SK + 192, Listen, SynRecv, ms(4)).before_trace);
        // The table is full (SK, SK + 128, SK + 192): the next unseen one is
        // (nothing was forgotten before it), none after it.
        assert!(
            t.observe(SK + 256, Established, CloseWait, ms(5))
                .before_trace
        );
        assert!(
            !t.observe(SK + 320, Established, CloseWait, ms(6))
                .before_trace
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
                no_room: true,
                before_trace: false,
            }
        );
        // Unseen, but the table was full: no claim on its age.
        let unseen = t.observe(SK + 64, SynSent, Established, ms(2));
        assert_eq!((unseen.duration_ns, unseen.before_trace), (None, false));
        assert_eq!(t.no_room(), 2);
        t.observe(SK, SynSent, Close, ms(3));
        t.observe(SK + 64, Established, FinWait1, ms(4));
        assert_eq!(
            t.observe(SK + 64, FinWait1, FinWait2, ms(6)).duration_ns,
            Some(ms(2))
        );
        assert_eq!(t.no_room(), 2);
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
