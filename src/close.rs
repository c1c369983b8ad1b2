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

/// One state a socket was in, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The state.
    pub state: TcpState,
    /// The time spent in it; None when not known (a new socket's CLOSE
    /// before connect or listen, or a state entered before the trace).
    pub spent_ns: Option<u64>,
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
    /// The states it left, in order, each with its time.
    pub steps: Vec<Step>,
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
        let timeline = offset_of!(RawClose, t);
        let steps_kept = usize::from(bytes[timeline + offset_of!(types::timeline, steps)]).min(STEPS);
        let steps: Vec<Step> = (0..steps_kept)
            .map(|i| {
                let spent = r.u64(timeline + offset_of!(types::timeline, spent_ns) + 8 * i);
                Step {
                    state: TcpState::from_raw(
                        bytes[timeline + offset_of!(types::timeline, left) + i].into(),
                    ),
                    spent_ns: (spent != TIME_UNKNOWN).then_some(spent),
                }
            })
            .collect();
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
            steps,
            steps_left_out: bytes[timeline + offset_of!(types::timeline, more)],
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
                srtt_us: u32_if(types::close_counters::HAS_SRTT, offset_of!(RawClose, srtt_us))
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

    /// The states the socket was in, in order, ending with CLOSE.
    pub fn states(&self) -> impl Iterator<Item = TcpState> + '_ {
        self.steps
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
