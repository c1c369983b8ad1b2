//! Summary mode's census: how many sockets are in each state now, kept by
//! the kernel from the snapshot at start and every transition since
//! (`census_add` in `src/bpf/maps.bpf.h`, called where the per-socket store
//! takes, moves or drops a socket).
//!
//! It counts full sockets, the ones whose states the tracepoint reports.
//! `ss -tan` also lists TIME-WAIT sockets and, as SYN-RECV, request
//! sockets (a SYN answered, its ACK awaited): the kernel makes and frees
//! those without a traced transition, so they are not in the census.

use std::fmt::Write as _;

use anyhow::{Result, anyhow};

use crate::bpf::types;
use crate::output::json;
use crate::summary::{STATES, state_name};

/// `struct census` as the skeleton generated it.
type RawCensus = types::census;

// SAFETY: a `#[repr(C)]` struct of one integer array: every bit pattern is
// a valid value.
unsafe impl plain::Plain for RawCensus {}

/// The states a full socket can be counted in, in the order printed.
const COUNTED: [usize; 9] = [1, 2, 3, 4, 5, 8, 9, 11, 10];

/// Sockets in each state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Census {
    /// By state number.
    pub sockets: [u64; STATES],
    /// False once the kernel's store had no room for a socket, or a
    /// transition went unhandled: a socket may then be missing from the
    /// count, or counted in a state it left.
    pub exact: bool,
}

impl Census {
    /// The per-CPU changes, summed; `exact` as the caller knows it.
    pub fn sum_of(per_cpu: &[Vec<u8>], exact: bool) -> Result<Self> {
        let mut total = [0i64; STATES];
        for bytes in per_cpu {
            let mut raw = RawCensus::default();
            plain::copy_from_bytes(&mut raw, bytes)
                .map_err(|_| anyhow!("the census map's value is short"))?;
            for (sum, n) in total.iter_mut().zip(raw.sockets) {
                *sum = sum.wrapping_add(n);
            }
        }
        let mut sockets = [0u64; STATES];
        for (count, sum) in sockets.iter_mut().zip(total) {
            // Below zero only if the store lost track: not exact then.
            *count = u64::try_from(sum).unwrap_or(0);
        }
        Ok(Self { sockets, exact })
    }

    /// The states shown: every state a full socket is counted in, and any
    /// other with a count.
    pub fn states(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let others = (0..STATES).filter(|s| !COUNTED.contains(s) && self.sockets[*s] > 0);
        COUNTED
            .into_iter()
            .chain(others)
            .map(|state| (state, self.sockets[state]))
    }

    /// Sockets counted, in all.
    pub fn total(&self) -> u64 {
        self.sockets.iter().sum()
    }

    /// `Sockets now: ...`, one line, states with none left out.
    pub fn write_text(&self, out: &mut String) {
        if !self.exact {
            out.push_str(
                "Sockets now: not known exactly (the kernel's socket map was full, or a \
                 transition went unhandled: see -v)\n",
            );
            return;
        }
        let _ = write!(out, "Sockets now: {}", self.total());
        let shown: Vec<String> = self
            .states()
            .filter(|&(_, n)| n > 0)
            .map(|(state, n)| format!("{} {n}", state_name(state)))
            .collect();
        if !shown.is_empty() {
            let _ = write!(out, " ({})", shown.join(", "));
        }
        out.push_str(" (not counted: TIME_WAIT sockets, request sockets)\n");
    }

    /// `"sockets":{"ESTABLISHED":3,...}` (every counted state), or
    /// `"sockets":null` when not exact.
    pub fn write_json(&self, out: &mut String) {
        if !self.exact {
            out.push_str("\"sockets\":null");
            return;
        }
        out.push_str("\"sockets\":{");
        for (i, (state, n)) in self.states().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json::push_json_str(out, &state_name(state));
            let _ = write!(out, ":{n}");
        }
        out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_cpu(changes: &[(usize, i64)]) -> Vec<u8> {
        let mut raw = RawCensus::default();
        for &(state, n) in changes {
            raw.sockets[state] += n;
        }
        // SAFETY: RawCensus is Plain.
        unsafe { plain::as_bytes(&raw) }.to_vec()
    }

    #[test]
    fn sums_changes_that_are_negative_on_one_cpu() {
        // A socket counted on CPU 0 left ESTABLISHED on CPU 1.
        let cpus = [per_cpu(&[(1, 2), (10, 1)]), per_cpu(&[(1, -1), (8, 1)])];
        let census = Census::sum_of(&cpus, true).unwrap();
        assert_eq!((census.sockets[1], census.sockets[8]), (1, 1));
        assert_eq!(census.total(), 3);
        let mut text = String::new();
        census.write_text(&mut text);
        assert_eq!(
            text,
            "Sockets now: 3 (ESTABLISHED 1, CLOSE_WAIT 1, LISTEN 1) \
             (not counted: TIME_WAIT sockets, request sockets)\n"
        );
        let mut json = String::new();
        census.write_json(&mut json);
        assert_eq!(
            json,
            "\"sockets\":{\"ESTABLISHED\":1,\"SYN_SENT\":0,\"SYN_RECV\":0,\"FIN_WAIT1\":0,\
             \"FIN_WAIT2\":0,\"CLOSE_WAIT\":1,\"LAST_ACK\":0,\"CLOSING\":0,\"LISTEN\":1}"
        );
    }

    #[test]
    fn says_when_not_exact() {
        let census = Census::sum_of(&[per_cpu(&[(1, 1)])], false).unwrap();
        let mut text = String::new();
        census.write_text(&mut text);
        assert!(text.contains("not known exactly"), "{text}");
        let mut json = String::new();
        census.write_json(&mut json);
        assert_eq!(json, "\"sockets\":null");
    }
}
