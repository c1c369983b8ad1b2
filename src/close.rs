//! One connection's end (`-C`): the kernel's close record, decoded. The
//! kernel keeps each socket's timeline and judges why it ended at its
//! CLOSE (`src/bpf/close.bpf.h`); this side only reads the record.

use std::mem::offset_of;
use std::net::IpAddr;
use std::sync::Arc;

use crate::bpf::types;
pub use crate::cause::{Cause, Detail, Role};
use crate::event::{DecodeError, Fields, Owner, addresses};
use crate::identity::Identity;
use crate::state::TcpState;

/// `struct close_record` as the skeleton generated it.
type RawClose = types::close_record;

/// Size of a close record in bytes.
pub const RECORD_BYTES: usize = std::mem::size_of::<RawClose>();

/// The most states a record lists (`TIMELINE_STEPS`); a socket that left
/// more keeps the first ones and its latest.
pub const STEPS: usize = types::timeline_dims::TIMELINE_STEPS.0 as usize;

const FLAG_OWNER_KNOWN: u32 = types::event_flags::EVENT_F_OWNER_KNOWN.0;
const FLAG_OWNER_UNDECIDED: u32 = types::event_flags::EVENT_F_OWNER_UNDECIDED.0;
const FLAG_LIFETIME_UNKNOWN: u32 = types::event_flags::EVENT_F_LIFETIME_UNKNOWN.0;
const FLAG_FIN_ACKED: u32 = types::event_flags::EVENT_F_FIN_ACKED.0;
const FLAG_FIN_RECEIVED: u32 = types::event_flags::EVENT_F_FIN_RECEIVED.0;
const TIME_UNKNOWN: u64 = u64::MAX;
/// A step held since before the trace: this bit and the time it ended.
const TIME_AT_LEAST: u64 = 1 << 63;

/// One state a socket was in, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The state.
    pub state: TcpState,
    /// The time spent in it; None when not known (a new socket's CLOSE
    /// before connect or listen, or a state entered before the trace).
    pub spent_ns: Option<u64>,
    /// When not known because the state was entered before the trace: a
    /// lower bound, the trace's age when the socket left it (set by the
    /// decoder, which knows when the trace began; see [`Close::bound`]).
    pub at_least_ns: Option<u64>,
    /// ... from the kernel's time the socket left the state.
    left_at_ns: Option<u64>,
}

/// tcp_sock's counters at CLOSE; each None where the kernel lacks the
/// field (never a made-up zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Data bytes the peer acknowledged: what this side sent
    /// (`bytes_acked`, less the sequence numbers its SYN and FIN take).
    pub bytes_acked: Option<u64>,
    /// Data bytes received in order (`bytes_received`, less the peer's
    /// FIN).
    pub bytes_received: Option<u64>,
    /// Segments received, and sent.
    pub segs_in: Option<u32>,
    /// Segments sent.
    pub segs_out: Option<u32>,
    /// Segments retransmitted.
    pub retransmits: Option<u32>,
    /// The smoothed round-trip time, in microseconds (None without a
    /// sample, as for a refused connect).
    pub srtt_us: Option<u32>,
    /// The smallest round-trip time seen, in microseconds (likewise).
    pub rtt_min_us: Option<u32>,
}

impl Counters {
    /// Each counter with its name in every output (JSON's, upper-cased
    /// after `TCPSTATES_` in the journal), in the order they print.
    pub fn named(&self) -> [(&'static str, Option<u64>); 7] {
        [
            ("bytes_acked", self.bytes_acked),
            ("bytes_received", self.bytes_received),
            ("segs_out", self.segs_out.map(u64::from)),
            ("segs_in", self.segs_in.map(u64::from)),
            ("retransmits", self.retransmits.map(u64::from)),
            ("srtt_us", self.srtt_us.map(u64::from)),
            ("rtt_min_us", self.rtt_min_us.map(u64::from)),
        ]
    }
}

/// One socket's life, recorded when it reached CLOSE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Kernel address of the socket.
    pub skaddr: u64,
    /// Kernel monotonic time of the CLOSE, in nanoseconds.
    pub ts_ns: u64,
    /// From connect, listen or the listener's clone to CLOSE; None when
    /// the socket started before the trace.
    pub lifetime_ns: Option<u64>,
    /// The task on the CPU at CLOSE (often not the owner: softirq).
    pub pid: u32,
    /// Its name, NUL padded.
    pub comm: [u8; 16],
    /// The socket's owner, when known.
    pub owner: Option<Owner>,
    /// The owner's cgroup v2 path, when owners are shown and it is known.
    pub cgroup: Option<Arc<str>>,
    /// Who the owner's cgroup belongs to, likewise.
    pub identity: Option<Arc<Identity>>,
    /// The socket's network namespace inode.
    pub netns: u32,
    /// Local address and port.
    pub laddr: IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote address.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
    /// Client, server or listener.
    pub role: Role,
    /// Why it ended.
    pub cause: Cause,
    /// What else the cause says.
    pub detail: Detail,
    /// The socket's error at CLOSE (an errno), 0 for none.
    pub error: i32,
    /// The states it left, in order, each with its time: the first
    /// `steps_kept` (no allocation per record).
    timeline: [Step; STEPS],
    steps_kept: u8,
    /// Steps left out between the first ones and the latest.
    pub steps_left_out: u8,
    /// Its counters.
    pub counters: Counters,
    /// The kernel could not judge the owner's cgroup by the group filters.
    pub owner_undecided: bool,
}

impl Close {
    /// Decodes one ring buffer record, field by field.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < RECORD_BYTES {
            return Err(DecodeError::Short(bytes.len()));
        }
        let r = Fields(bytes);
        let (laddr, raddr) = addresses(
            r.u16(offset_of!(RawClose, family)),
            r.array(offset_of!(RawClose, saddr)),
            r.array(offset_of!(RawClose, daddr)),
        )?;
        let flags = r.u32(offset_of!(RawClose, flags));
        let present = r.u32(offset_of!(RawClose, present));
        let has = |bit: types::close_counters| present & bit.0 != 0;
        let u32_if = |bit, at| has(bit).then(|| r.u32(at));
        let at = offset_of!(RawClose, t);
        let steps_kept = usize::from(bytes[at + offset_of!(types::timeline, steps)]).min(STEPS);
        let mut timeline = [Step {
            state: TcpState::Close,
            spent_ns: None,
            at_least_ns: None,
            left_at_ns: None,
        }; STEPS];
        for (i, slot) in timeline.iter_mut().enumerate().take(steps_kept) {
            let spent = r.u64(at + offset_of!(types::timeline, spent_ns) + 8 * i);
            *slot = Step {
                state: TcpState::from_raw(bytes[at + offset_of!(types::timeline, left) + i].into()),
                spent_ns: (spent & TIME_AT_LEAST == 0).then_some(spent),
                at_least_ns: None,
                left_at_ns: (spent != TIME_UNKNOWN && spent & TIME_AT_LEAST != 0)
                    .then_some(spent & !TIME_AT_LEAST),
            };
        }
        let steps = &timeline[..steps_kept];
        let role = Role::from_raw(bytes[offset_of!(RawClose, role)]).unwrap_or(Role::Unknown);
        // The kernel counts sequence numbers: the SYN a client's peer
        // acknowledged (one that got past SYN_SENT), this side's FIN once
        // acknowledged, the peer's FIN once taken in. (A socket older than
        // the trace whose role is not known may count its SYN.)
        let syn = role == Role::Client
            && steps
                .iter()
                .any(|s: &Step| !matches!(s.state, TcpState::Close | TcpState::SynSent));
        let sent_less = u64::from(syn) + u64::from(flags & FLAG_FIN_ACKED != 0);
        let received_less = u64::from(flags & FLAG_FIN_RECEIVED != 0);
        Ok(Close {
            skaddr: r.u64(offset_of!(RawClose, skaddr)),
            ts_ns: r.u64(offset_of!(RawClose, ts_ns)),
            lifetime_ns: (flags & FLAG_LIFETIME_UNKNOWN == 0)
                .then(|| r.u64(offset_of!(RawClose, lifetime_ns))),
            pid: r.u32(offset_of!(RawClose, pid)),
            comm: r.array(offset_of!(RawClose, comm)),
            owner: (flags & FLAG_OWNER_KNOWN != 0).then(|| Owner {
                pid: r.u32(offset_of!(RawClose, owner_pid)),
                uid: r.u32(offset_of!(RawClose, owner_uid)),
                cgroup_id: r.u64(offset_of!(RawClose, owner_cgroup)),
                comm: r.array(offset_of!(RawClose, owner_comm)),
            }),
            cgroup: None,
            identity: None,
            netns: r.u32(offset_of!(RawClose, netns)),
            laddr,
            lport: r.u16(offset_of!(RawClose, sport)),
            raddr,
            rport: r.u16(offset_of!(RawClose, dport)),
            role,
            cause: Cause::from_raw(bytes[offset_of!(RawClose, cause)]).unwrap_or(Cause::Unknown),
            detail: Detail::from_raw(bytes[offset_of!(RawClose, detail)]).unwrap_or(Detail::None),
            error: r.u32(offset_of!(RawClose, error)) as i32,
            timeline,
            steps_kept: steps_kept as u8,
            steps_left_out: bytes[at + offset_of!(types::timeline, more)],
            counters: Counters {
                bytes_acked: has(types::close_counters::HAS_BYTES_ACKED).then(|| {
                    r.u64(offset_of!(RawClose, bytes_acked))
                        .saturating_sub(sent_less)
                }),
                bytes_received: has(types::close_counters::HAS_BYTES_RECEIVED).then(|| {
                    r.u64(offset_of!(RawClose, bytes_received))
                        .saturating_sub(received_less)
                }),
                segs_in: u32_if(
                    types::close_counters::HAS_SEGS_IN,
                    offset_of!(RawClose, segs_in),
                ),
                segs_out: u32_if(
                    types::close_counters::HAS_SEGS_OUT,
                    offset_of!(RawClose, segs_out),
                ),
                retransmits: u32_if(
                    types::close_counters::HAS_TOTAL_RETRANS,
                    offset_of!(RawClose, total_retrans),
                ),
                // No RTT sample: 0 smoothed, the minimum's initial ~0.
                srtt_us: u32_if(
                    types::close_counters::HAS_SRTT,
                    offset_of!(RawClose, srtt_us),
                )
                .filter(|&us| us != 0),
                rtt_min_us: u32_if(
                    types::close_counters::HAS_RTT_MIN,
                    offset_of!(RawClose, rtt_min_us),
                )
                .filter(|&us| us != u32::MAX),
            },
            owner_undecided: flags & FLAG_OWNER_UNDECIDED != 0,
        })
    }

    /// Gives each step held since before the trace its lower bound, the
    /// time from `began_ns` to when the socket left it, where `sure` says
    /// that no transition before that time went unseen.
    pub fn bound(&mut self, began_ns: u64, mut sure: impl FnMut(u64) -> bool) {
        let kept = usize::from(self.steps_kept);
        for step in &mut self.timeline[..kept] {
            if let Some(left) = step.left_at_ns {
                step.at_least_ns = sure(left).then(|| left.saturating_sub(began_ns));
            }
        }
    }

    /// The states it left, in order, each with its time.
    pub fn steps(&self) -> &[Step] {
        &self.timeline[..usize::from(self.steps_kept)]
    }

    /// The states the socket was in, in order, ending with CLOSE.
    pub fn states(&self) -> impl Iterator<Item = TcpState> + '_ {
        self.steps()
            .iter()
            .map(|s| s.state)
            .chain(std::iter::once(TcpState::Close))
    }

    /// The name of the task on the CPU at CLOSE, up to its first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let len = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        &self.comm[..len]
    }

    /// The errno's name (`ECONNREFUSED`), or its number if this tool does
    /// not name it; None for no error.
    pub fn error_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        errno_name(self.error)
    }
}

/// The names of the errnos a TCP socket ends with.
fn errno_name(errno: i32) -> Option<std::borrow::Cow<'static, str>> {
    let name = match errno {
        0 => return None,
        libc::EPIPE => "EPIPE",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        n => return Some(n.to_string().into()),
    };
    Some(name.into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // SAFETY: the generated struct is integers and integer arrays only.
    unsafe impl plain::Plain for RawClose {}

    /// A client's record: connect, 1000 bytes each way, its FIN first and
    /// acknowledged, the peer's FIN taken in.
    pub(crate) fn raw_client() -> RawClose {
        let mut raw = RawClose {
            skaddr: 0xffff_8881_043b_9280,
            ts_ns: 9_000_000_000,
            lifetime_ns: 12_345_000,
            owner_cgroup: 1,
            bytes_acked: 1002,
            bytes_received: 1001,
            segs_in: 6,
            segs_out: 7,
            total_retrans: 1,
            srtt_us: 35,
            rtt_min_us: 12,
            present: 0x7f,
            netns: 4026531840,
            pid: 0,
            owner_pid: 4711,
            owner_uid: 1000,
            flags: FLAG_OWNER_KNOWN | FLAG_FIN_ACKED | FLAG_FIN_RECEIVED,
            error: 0,
            family: libc::AF_INET as u16,
            sport: 41234,
            dport: 8080,
            cause: Cause::Normal as u8,
            detail: Detail::LocalFirst as u8,
            role: Role::Client as u8,
            ..Default::default()
        };
        raw.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        for (dst, src) in raw.owner_comm.iter_mut().zip(b"curl") {
            *dst = *src as i8;
        }
        for (dst, src) in raw.comm.iter_mut().zip(b"swapper/1") {
            *dst = *src as i8;
        }
        let steps = [
            (7, None),
            (2, Some(51_000)),
            (1, Some(12_203_000)),
            (4, Some(10_000)),
            (5, Some(20_000)),
        ];
        for (i, (state, spent)) in steps.into_iter().enumerate() {
            raw.t.left[i] = state;
            raw.t.spent_ns[i] = spent.unwrap_or(TIME_UNKNOWN);
        }
        raw.t.steps = steps.len() as u8;
        raw
    }

    /// The record of `raw`.
    pub(crate) fn close_of(raw: &RawClose) -> Close {
        // SAFETY: RawClose is Plain (above): reading its bytes is sound.
        Close::decode(unsafe { plain::as_bytes(raw) }).unwrap()
    }

    /// A state held since before the trace: a lower bound once the
    /// decoder says when the trace began and that nothing was lost.
    #[test]
    fn a_state_entered_before_the_trace_gets_its_bound() {
        let mut raw = raw_client();
        raw.t.spent_ns[2] = TIME_AT_LEAST | 9_000_000_000;
        let mut c = close_of(&raw);
        assert_eq!(
            (c.steps()[2].spent_ns, c.steps()[2].at_least_ns),
            (None, None)
        );
        c.bound(5_000_000_000, |left| left == 9_000_000_000);
        assert_eq!(c.steps()[2].at_least_ns, Some(4_000_000_000));
        assert_eq!(c.steps()[0].at_least_ns, None, "unknown stays unknown");
        c.bound(5_000_000_000, |_| false);
        assert_eq!(c.steps()[2].at_least_ns, None, "not after a loss");
    }

    #[test]
    fn decodes_a_client_and_counts_data_bytes_only() {
        let c = close_of(&raw_client());
        assert_eq!(
            (c.role, c.cause, c.detail),
            (Role::Client, Cause::Normal, Detail::LocalFirst)
        );
        assert_eq!(c.lifetime_ns, Some(12_345_000));
        assert_eq!(c.owner.map(|o| (o.pid, o.uid)), Some((4711, 1000)));
        assert_eq!(c.owner.unwrap().comm(), "curl");
        assert_eq!(c.comm_bytes(), b"swapper/1");
        assert_eq!((c.laddr.to_string(), c.lport), ("127.0.0.1".into(), 41234));
        let states: Vec<_> = c.states().map(|s| s.to_string()).collect();
        assert_eq!(
            states,
            [
                "CLOSE",
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "CLOSE"
            ]
        );
        assert_eq!(c.steps()[0].spent_ns, None);
        assert_eq!(c.steps()[2].spent_ns, Some(12_203_000));
        // The SYN and this side's FIN off what was acked, the peer's FIN
        // off what was received.
        assert_eq!(
            (c.counters.bytes_acked, c.counters.bytes_received),
            (Some(1000), Some(1000))
        );
        assert_eq!(c.counters.retransmits, Some(1));
        assert_eq!(
            (c.counters.srtt_us, c.counters.rtt_min_us),
            (Some(35), Some(12))
        );
        assert_eq!(c.error_name(), None);
    }

    #[test]
    fn what_is_not_known_stays_unknown() {
        let mut raw = raw_client();
        raw.flags = FLAG_LIFETIME_UNKNOWN;
        raw.present =
            (types::close_counters::HAS_BYTES_ACKED.0) | types::close_counters::HAS_SRTT.0;
        raw.srtt_us = 0;
        raw.role = Role::Unknown as u8;
        let c = close_of(&raw);
        assert_eq!((c.lifetime_ns, c.owner), (None, None));
        // Not a client as far as is known: the SYN is not taken off.
        assert_eq!(c.counters.bytes_acked, Some(1002));
        assert_eq!(c.counters.bytes_received, None, "a field the kernel lacks");
        assert_eq!(c.counters.srtt_us, None, "no RTT sample");
        raw.cause = 200;
        raw.role = 9;
        let c = close_of(&raw);
        assert_eq!((c.cause, c.role), (Cause::Unknown, Role::Unknown));
    }

    #[test]
    fn a_refused_client_sent_no_syn_data() {
        let mut raw = raw_client();
        raw.bytes_acked = 0;
        raw.bytes_received = 0;
        raw.flags = FLAG_OWNER_KNOWN;
        raw.cause = Cause::Refused as u8;
        raw.error = libc::ECONNREFUSED;
        raw.t.steps = 2;
        let c = close_of(&raw);
        assert_eq!(c.counters.bytes_acked, Some(0));
        assert_eq!(c.error_name().as_deref(), Some("ECONNREFUSED"));
        raw.error = 4242;
        assert_eq!(close_of(&raw).error_name().as_deref(), Some("4242"));
    }

    #[test]
    fn rejects_short_records() {
        let raw = raw_client();
        // SAFETY: as above.
        let bytes = unsafe { plain::as_bytes(&raw) };
        assert_eq!(
            Close::decode(&bytes[..RECORD_BYTES - 1]),
            Err(DecodeError::Short(RECORD_BYTES - 1))
        );
    }

    #[test]
    fn the_names_are_the_kernels() {
        assert_eq!(
            Cause::ALL.len(),
            types::close_cause::CLOSE_CAUSES.0 as usize
        );
        assert_eq!(Role::ALL.len(), types::close_role::CLOSE_ROLES.0 as usize);
        assert_eq!(Cause::Error as u32, types::close_cause::CAUSE_ERROR.0);
        assert_eq!(Cause::Listener as u32, types::close_cause::CAUSE_LISTENER.0);
        assert_eq!(
            Detail::LingerZero as u32,
            types::close_detail::DETAIL_LINGER_ZERO.0
        );
        assert_eq!(
            Detail::Keepalive as u32,
            types::close_detail::DETAIL_KEEPALIVE.0
        );
        assert_eq!(Role::Listener as u32, types::close_role::ROLE_LISTENER.0);
    }
}
