//! The typed event between the kernel's raw bytes and the output.

use std::borrow::Cow;
use std::fmt;
use std::mem::offset_of;
use std::net::{IpAddr, Ipv4Addr};

use crate::bpf::types;
pub use crate::state::TcpState;

/// `struct event` as the skeleton generated it from `src/bpf/tcpstates.h`.
pub(crate) type RawEvent = types::event;

// SAFETY: `RawEvent` is a `#[repr(C)]` struct of integers and integer arrays
// (generated from a header that only has fixed-width fields and explicit
// padding): every bit pattern is a valid value. Only the tests view one as
// bytes; records are decoded field by field ([`Event::decode`]).
#[cfg(test)]
unsafe impl plain::Plain for RawEvent {}

/// The record's sizes, as in `src/bpf/tcpstates.h` (EVENT_SIZE_*): the
/// kernel leaves out the fields a run does not need, so that the ring
/// buffer holds more events.
pub mod record {
    use super::RawEvent;
    use std::mem::offset_of;

    /// A transition alone.
    pub const BASE: usize = offset_of!(RawEvent, uid);
    /// With the current task's uid and cgroup (the reader keeps owners).
    pub const TASK: usize = offset_of!(RawEvent, owner_cgroup);
    /// With the owner the kernel keeps (what follows is never sent).
    pub const OWNER: usize = offset_of!(RawEvent, lifetime_ns);

    /// The largest record a run sends, given whether the program sends the
    /// current task's uid and cgroup, and whether it sends owners it keeps.
    pub fn largest(task: bool, owner: bool) -> usize {
        if owner {
            OWNER
        } else if task {
            TASK
        } else {
            BASE
        }
    }

    /// A record's size in the ring buffer: its 8-byte header, and the
    /// record rounded up to 8 bytes.
    pub fn in_ring(size: usize) -> usize {
        8 + size.next_multiple_of(8)
    }
}

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;
// The event flags of tcpstates.h, through the skeleton.
const FLAG_DURATION_UNKNOWN: u32 = types::event_flags::EVENT_F_DURATION_UNKNOWN.0;
const FLAG_MAP_FULL: u32 = types::event_flags::EVENT_F_MAP_FULL.0;
const FLAG_BEFORE_TRACE: u32 = types::event_flags::EVENT_F_BEFORE_TRACE.0;
const FLAG_OWNER_KNOWN: u32 = types::event_flags::EVENT_F_OWNER_KNOWN.0;
const FLAG_ACCEPTED: u32 = types::event_flags::EVENT_F_ACCEPTED.0;
const FLAG_OWNER_UNDECIDED: u32 = types::event_flags::EVENT_F_OWNER_UNDECIDED.0;

/// One TCP state transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Kernel address of the socket: identifies it while it lives.
    pub skaddr: u64,
    /// Kernel monotonic time of the transition, in nanoseconds.
    pub ts_ns: u64,
    /// Time spent in `old`, or `None` when it is not known (the socket
    /// predates the trace, or the per-socket map was full).
    pub duration_ns: Option<u64>,
    /// When `duration_ns` is not known because the socket has been in
    /// `old` since before the trace began: a lower bound of the time, the
    /// trace's age (set by the decoder, which knows when it began).
    pub at_least_ns: Option<u64>,
    /// The kernel saw the socket in `old` since before the trace began
    /// (see [`Event::at_least_ns`]).
    pub before_trace: bool,
    /// Thread group id of the task on the CPU at the transition.
    pub pid: u32,
    /// Name of that task, NUL padded.
    pub comm: [u8; 16],
    /// Network namespace inode number of the socket.
    pub netns: u32,
    /// Local address (for IPv4 sockets, an IPv4 address).
    pub laddr: IpAddr,
    /// Local port; 0 at CLOSE -> SYN_SENT, before the kernel picks it.
    pub lport: u16,
    /// Remote address.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
    /// The state left.
    pub old: TcpState,
    /// The state entered.
    pub new: TcpState,
    /// The per-socket map had no room for this socket.
    pub map_full: bool,
    /// Uid of the task on the CPU (0 unless owners are collected).
    pub uid: u32,
    /// cgroup v2 id of the task on the CPU (0 unless owners are collected).
    pub cgroup_id: u64,
    /// The socket's owner, when known (see [`Owner`]).
    pub owner: Option<Owner>,
    /// The owner's cgroup v2 path under the cgroup mount, when known.
    pub cgroup: Option<std::sync::Arc<str>>,
    /// Who the owner's cgroup belongs to (unit, container, pod), when its
    /// path is known.
    pub identity: Option<std::sync::Arc<crate::identity::Identity>>,
    /// Not a transition: the task on the CPU accepted the socket (kprobe
    /// mode), which makes it the owner. Never shown.
    pub accepted: bool,
    /// The kernel could not judge the owner's cgroup by the group filters
    /// (it was made since the table was filled): the reader does.
    pub owner_undecided: bool,
    /// Not a transition: the socket has been in `old` (= `new`) longer
    /// than `--stuck` allows; its time there is the duration (or the lower
    /// bound), as of `ts_ns` (see [`crate::stuck`]).
    pub stuck: bool,
}

/// The process that owns a socket: the one that last changed its state in
/// process context (connect, listen, close, shutdown); for a passive child
/// until then, its listener's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Thread group id.
    pub pid: u32,
    /// Real uid.
    pub uid: u32,
    /// cgroup v2 id (the inode of its folder under the cgroup mount).
    pub cgroup_id: u64,
    /// Task name, NUL padded.
    pub comm: [u8; 16],
}

impl Owner {
    /// The name, up to its first NUL, with invalid UTF-8 replaced.
    pub fn comm(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.comm_bytes())
    }

    /// The name's bytes, up to its first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let len = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        &self.comm[..len]
    }
}

/// Why a record from the kernel could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than the shortest one the kernel sends.
    Short(usize),
    /// The family is neither AF_INET nor AF_INET6.
    Family(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short(n) => write!(f, "record of {n} bytes, too short"),
            DecodeError::Family(n) => write!(f, "unknown address family {n}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Event {
    /// Decodes one ring buffer record, reading each field where `struct
    /// event` has it (the skeleton's layout): in place, whatever the
    /// record's alignment, with no copy of the whole record. A field past
    /// the end of a shorter record (one without the owner fields) reads as
    /// zero.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < record::BASE {
            return Err(DecodeError::Short(bytes.len()));
        }
        let r = Fields(bytes);
        let family = r.u16(offset_of!(RawEvent, family));
        let saddr: [u8; 16] = r.array(offset_of!(RawEvent, saddr));
        let daddr: [u8; 16] = r.array(offset_of!(RawEvent, daddr));
        let (laddr, raddr) = addresses(family, saddr, daddr)?;
        let flags = r.u32(offset_of!(RawEvent, flags));
        Ok(Event {
            skaddr: r.u64(offset_of!(RawEvent, skaddr)),
            ts_ns: r.u64(offset_of!(RawEvent, ts_ns)),
            duration_ns: (flags & FLAG_DURATION_UNKNOWN == 0)
                .then(|| r.u64(offset_of!(RawEvent, delta_ns))),
            at_least_ns: None,
            before_trace: flags & FLAG_BEFORE_TRACE != 0,
            pid: r.u32(offset_of!(RawEvent, pid)),
            comm: r.array(offset_of!(RawEvent, comm)),
            netns: r.u32(offset_of!(RawEvent, netns)),
            laddr,
            lport: r.u16(offset_of!(RawEvent, sport)),
            raddr,
            rport: r.u16(offset_of!(RawEvent, dport)),
            old: TcpState::from_raw(r.u32(offset_of!(RawEvent, oldstate)) as i32),
            new: TcpState::from_raw(r.u32(offset_of!(RawEvent, newstate)) as i32),
            map_full: flags & FLAG_MAP_FULL != 0,
            uid: r.u32(offset_of!(RawEvent, uid)),
            cgroup_id: r.u64(offset_of!(RawEvent, cgroup_id)),
            owner: (flags & FLAG_OWNER_KNOWN != 0).then(|| Owner {
                pid: r.u32(offset_of!(RawEvent, owner_pid)),
                uid: r.u32(offset_of!(RawEvent, owner_uid)),
                cgroup_id: r.u64(offset_of!(RawEvent, owner_cgroup)),
                comm: r.array(offset_of!(RawEvent, owner_comm)),
            }),
            cgroup: None,
            identity: None,
            accepted: flags & FLAG_ACCEPTED != 0,
            stuck: false,
            owner_undecided: flags & FLAG_OWNER_UNDECIDED != 0,
        })
    }

    /// The event of a whole `struct event` (tests).
    #[cfg(test)]
    pub(crate) fn from_raw(raw: &RawEvent) -> Result<Self, DecodeError> {
        // SAFETY: RawEvent is Plain (see above): reading its bytes is sound.
        Self::decode(unsafe { plain::as_bytes(raw) })
    }

    /// The task on the CPU as an owner: what a process-context transition
    /// says of the socket's.
    pub fn current_as_owner(&self) -> Owner {
        Owner {
            pid: self.pid,
            uid: self.uid,
            cgroup_id: self.cgroup_id,
            comm: self.comm,
        }
    }

    /// The task name, up to its first NUL, with invalid UTF-8 replaced.
    pub fn comm(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.comm_bytes())
    }

    /// The task name's bytes, up to its first NUL (the kernel does not
    /// always clear what follows it).
    pub fn comm_bytes(&self) -> &[u8] {
        let len = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        &self.comm[..len]
    }

    /// 4 or 6.
    pub fn ip_version(&self) -> u8 {
        if self.laddr.is_ipv4() { 4 } else { 6 }
    }
}

/// A record's bytes, read a field at a time; what lies past the end reads
/// as zeroes.
pub(crate) struct Fields<'a>(pub(crate) &'a [u8]);

impl Fields<'_> {
    pub(crate) fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        self.0
            .get(at..at + N)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; N])
    }

    pub(crate) fn u64(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.array(at))
    }

    pub(crate) fn u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.array(at))
    }

    pub(crate) fn u16(&self, at: usize) -> u16 {
        u16::from_ne_bytes(self.array(at))
    }
}

/// A record's local and remote addresses, as its family says.
pub(crate) fn addresses(
    family: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
) -> Result<(IpAddr, IpAddr), DecodeError> {
    match family {
        AF_INET => Ok((ipv4(&saddr), ipv4(&daddr))),
        AF_INET6 => Ok((IpAddr::V6(saddr.into()), IpAddr::V6(daddr.into()))),
        other => Err(DecodeError::Family(other)),
    }
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    /// A raw IPv4 event for tests.
    pub(crate) fn raw_v4() -> RawEvent {
        let mut raw = RawEvent {
            skaddr: 0xffff_8881_043b_9280,
            ts_ns: 5_000_000_000,
            delta_ns: 271_456,
            pid: 9376,
            family: AF_INET,
            sport: 48792,
            dport: 80,
            oldstate: 2,
            newstate: 1,
            ..Default::default()
        };
        raw.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        for (dst, src) in raw.comm.iter_mut().zip(b"python3") {
            *dst = *src as i8;
        }
        raw
    }

    fn bytes_of(raw: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is Plain (see above): reading its bytes is sound.
        unsafe { plain::as_bytes(raw) }.to_vec()
    }

    #[test]
    fn decodes_ipv4() {
        let ev = Event::decode(&bytes_of(&raw_v4())).unwrap();
        assert_eq!(ev.laddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.raddr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!((ev.lport, ev.rport), (48792, 80));
        assert_eq!((ev.old, ev.new), (TcpState::SynSent, TcpState::Established));
        assert_eq!(ev.duration_ns, Some(271_456));
        assert_eq!(ev.comm(), "python3");
        assert_eq!(ev.ip_version(), 4);
        assert!(!ev.map_full);
    }

    #[test]
    fn decodes_ipv6_and_flags() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.saddr = "::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.flags = FLAG_DURATION_UNKNOWN | FLAG_MAP_FULL;
        let ev = Event::decode(&bytes_of(&raw)).unwrap();
        assert_eq!(ev.laddr.to_string(), "::1");
        assert_eq!(ev.raddr.to_string(), "2001:db8::1");
        assert_eq!(ev.duration_ns, None);
        assert!(ev.map_full);
        assert_eq!(ev.ip_version(), 6);
    }

    #[test]
    fn rejects_short_records_and_unknown_families() {
        let bytes = bytes_of(&raw_v4());
        assert_eq!(
            Event::decode(&bytes[..record::BASE - 1]),
            Err(DecodeError::Short(record::BASE - 1))
        );
        let mut raw = raw_v4();
        raw.family = 1;
        assert_eq!(Event::decode(&bytes_of(&raw)), Err(DecodeError::Family(1)));
    }

    #[test]
    fn short_records_leave_out_what_they_do_not_carry() {
        let mut raw = raw_v4();
        raw.uid = 1000;
        raw.cgroup_id = 77;
        raw.owner_pid = 5;
        raw.flags = FLAG_OWNER_KNOWN;
        let bytes = bytes_of(&raw);
        let base = Event::decode(&bytes[..record::BASE]).unwrap();
        assert_eq!((base.lport, base.uid, base.cgroup_id), (48792, 0, 0));
        let task = Event::decode(&bytes[..record::TASK]).unwrap();
        assert_eq!((task.uid, task.cgroup_id), (1000, 77));
        assert_eq!(task.owner.map(|o| o.pid), Some(0));
        let whole = Event::decode(&bytes).unwrap();
        assert_eq!(whole.owner.map(|o| o.pid), Some(5));
        // In the ring: an 8-byte header, each record rounded to 8 bytes.
        assert_eq!(
            [record::BASE, record::TASK, record::OWNER].map(record::in_ring),
            [112, 120, 152]
        );
    }

    #[test]
    fn decodes_unaligned_records() {
        let mut bytes = vec![0u8];
        bytes.extend(bytes_of(&raw_v4()));
        assert_eq!(Event::decode(&bytes[1..]).unwrap().lport, 48792);
    }

    #[test]
    fn comm_stops_at_nul_and_survives_bad_utf8() {
        let mut raw = raw_v4();
        raw.comm = [0; 16];
        for (dst, src) in raw.comm.iter_mut().zip([b'a', 0xff_u8, b'b']) {
            *dst = src as i8;
        }
        let ev = Event::decode(&bytes_of(&raw)).unwrap();
        assert_eq!(ev.comm(), "a\u{fffd}b");
    }
}
