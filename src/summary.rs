//! Summary mode's aggregates: what the kernel counts per CPU instead of
//! sending events (the `summary` map of tcpstates.bpf.c), summed, and the
//! two ways `-S` prints them: the classic log2 histograms with a transition
//! matrix, or one JSON object per print.

use std::fmt::Write;

use crate::bpf::types;
use crate::cause::{Cause, Role};
use crate::census::Census;
use crate::clock::Utc;
use crate::config::LabelBy;
use crate::event::TcpState;
use crate::output::json;
use crate::stuck::StuckSocket;

type RawSummary = types::summary;

// SAFETY: the generated struct is plain old data: u64 arrays only, every
// bit pattern valid.
unsafe impl plain::Plain for RawSummary {}

/// States by number: 0 stands for a number out of range (SUMMARY_STATES
/// in tcpstates.h, through the skeleton).
pub const STATES: usize = types::summary_dims::SUMMARY_STATES.0 as usize;
/// Slots of the time in a state: under 1 us, then [2^(i-1), 2^i) us for
/// slot i, the last 2^32 us (71.6 minutes) and more (SUMMARY_SLOTS).
pub const SLOTS: usize = types::summary_dims::SUMMARY_SLOTS.0 as usize;

/// Causes a close is counted by (CLOSE_CAUSES), and roles (CLOSE_ROLES).
pub const CAUSES: usize = types::close_cause::CLOSE_CAUSES.0 as usize;
/// See [`CAUSES`].
pub const ROLES: usize = types::close_role::CLOSE_ROLES.0 as usize;

/// The aggregates, summed over CPUs (or the difference of two readings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Transitions, by old state and new state.
    pub transitions: [[u64; STATES]; STATES],
    /// Transitions with a known time in the state left, by that state and
    /// the time's slot.
    pub slots: [[u64; SLOTS]; STATES],
    /// The sum of those times, by state left, in nanoseconds.
    pub sum_ns: [u64; STATES],
    /// Transitions whose time in the state left is not known, by state.
    pub unknown: [u64; STATES],
    /// Transitions out of a state the socket had been in since before the
    /// trace began (at least the trace's age), by state; not in `unknown`.
    pub before_trace: [u64; STATES],
    /// Connections closed, by cause and role (see [`crate::cause`]).
    pub closed: [[u64; ROLES]; CAUSES],
    /// Their lifetimes when known, by slot; their sum in nanoseconds; how
    /// many started before the trace.
    pub lifetime_slots: [u64; SLOTS],
    /// See `lifetime_slots`.
    pub lifetime_sum_ns: u64,
    /// See `lifetime_slots`.
    pub lifetime_unknown: u64,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            transitions: [[0; STATES]; STATES],
            slots: [[0; SLOTS]; STATES],
            sum_ns: [0; STATES],
            unknown: [0; STATES],
            before_trace: [0; STATES],
            closed: [[0; ROLES]; CAUSES],
            lifetime_slots: [0; SLOTS],
            lifetime_sum_ns: 0,
            lifetime_unknown: 0,
        }
    }
}

/// A state's name, or its number when the kernel's is out of our list.
pub fn state_name(state: usize) -> String {
    TcpState::from_raw(state as i32).to_string()
}

/// The times slot `slot` holds, in whole microseconds: from, and to
/// (inclusive; None for the last, which has no end).
pub fn slot_range_us(slot: usize) -> (u64, Option<u64>) {
    let from = if slot == 0 { 0 } else { 1 << (slot - 1) };
    let to = (slot + 1 < SLOTS).then(|| (1u64 << slot) - 1);
    (from, to)
}

impl Summary {
    /// The sum of each CPU's value of the map (`per_cpu`, as the kernel
    /// hands them); an error if one is not a summary's size.
    pub fn sum_of(per_cpu: &[Vec<u8>]) -> Result<Self, String> {
        let mut total = Self::default();
        for bytes in per_cpu {
            let mut raw = RawSummary::default();
            plain::copy_from_bytes(&mut raw, bytes).map_err(|_| {
                format!(
                    "a per-CPU value of {} bytes, not a summary's {}",
                    bytes.len(),
                    std::mem::size_of::<RawSummary>()
                )
            })?;
            total.add(&raw);
        }
        Ok(total)
    }

    fn add(&mut self, raw: &RawSummary) {
        for old in 0..STATES {
            for new in 0..STATES {
                self.transitions[old][new] += raw.transitions[old][new];
            }
            for (slot, n) in raw.slots[old].as_flattened().iter().enumerate() {
                self.slots[old][slot] += n;
            }
            self.sum_ns[old] += raw.sum_ns[old];
            self.unknown[old] += raw.unknown[old];
            self.before_trace[old] += raw.before_trace[old];
        }
        for (counts, raw) in self.closed.iter_mut().zip(&raw.closed) {
            for (n, r) in counts.iter_mut().zip(raw) {
                *n += r;
            }
        }
        for (n, r) in self
            .lifetime_slots
            .iter_mut()
            .zip(raw.lifetime_slots.as_flattened())
        {
            *n += r;
        }
        self.lifetime_sum_ns += raw.lifetime_sum_ns;
        self.lifetime_unknown += raw.lifetime_unknown;
    }

    /// What was counted since `earlier`, a previous reading.
    pub fn since(&self, earlier: &Summary) -> Summary {
        let mut d = self.clone();
        for state in 0..STATES {
            for (n, e) in d.transitions[state]
                .iter_mut()
                .zip(earlier.transitions[state])
            {
                *n = n.saturating_sub(e);
            }
            for (n, e) in d.slots[state].iter_mut().zip(earlier.slots[state]) {
                *n = n.saturating_sub(e);
            }
            d.sum_ns[state] = d.sum_ns[state].saturating_sub(earlier.sum_ns[state]);
            d.unknown[state] = d.unknown[state].saturating_sub(earlier.unknown[state]);
            d.before_trace[state] =
                d.before_trace[state].saturating_sub(earlier.before_trace[state]);
        }
        for (counts, e) in d.closed.iter_mut().zip(&earlier.closed) {
            for (n, e) in counts.iter_mut().zip(e) {
                *n = n.saturating_sub(*e);
            }
        }
        for (n, e) in d.lifetime_slots.iter_mut().zip(earlier.lifetime_slots) {
            *n = n.saturating_sub(e);
        }
        d.lifetime_sum_ns = d.lifetime_sum_ns.saturating_sub(earlier.lifetime_sum_ns);
        d.lifetime_unknown = d.lifetime_unknown.saturating_sub(earlier.lifetime_unknown);
        d
    }

    /// Connections closed, every cause and role.
    pub fn closes(&self) -> u64 {
        self.closed.iter().flatten().sum()
    }

    /// The causes and roles closes were counted by, with their counts.
    pub fn closes_by_cause(&self) -> impl Iterator<Item = (Cause, Role, u64)> + '_ {
        self.closed.iter().enumerate().flat_map(|(cause, roles)| {
            roles
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(move |(role, n)| {
                    (
                        Cause::from_raw(cause as u8).unwrap_or(Cause::Unknown),
                        Role::from_raw(role as u8).unwrap_or(Role::Unknown),
                        *n,
                    )
                })
        })
    }

    /// Every transition counted.
    pub fn total(&self) -> u64 {
        self.transitions.iter().flatten().sum()
    }

    /// Transitions out of `state`.
    pub fn left(&self, state: usize) -> u64 {
        self.transitions[state].iter().sum()
    }

    /// Transitions out of `state` whose time in it is known.
    pub fn timed(&self, state: usize) -> u64 {
        self.slots[state].iter().sum()
    }

    /// The states left at least once, in number order.
    pub fn states_left(&self) -> impl Iterator<Item = usize> + '_ {
        (0..STATES).filter(|&s| self.left(s) > 0)
    }

    /// The histograms of the states left with a known time, then the
    /// transition matrix, as `-S` prints them.
    pub fn write_text(&self, out: &mut String) {
        if self.total() == 0 {
            out.push_str("No transitions.\n");
            return;
        }
        for state in self.states_left() {
            let timed = self.timed(state);
            let _ = write!(
                out,
                "Time in {} before leaving it: {} timed, {} unknown",
                state_name(state),
                timed,
                self.unknown[state]
            );
            match self.before_trace[state] {
                0 => out.push('\n'),
                n => {
                    let _ = writeln!(out, ", {n} in it since before the trace");
                }
            }
            if timed > 0 {
                write_log2(out, &self.slots[state]);
            }
            out.push('\n');
        }
        self.write_matrix(out);
        self.write_closes(out);
    }

    /// Connections closed by cause and role, and their lifetimes.
    fn write_closes(&self, out: &mut String) {
        if self.closes() == 0 {
            return;
        }
        out.push_str("\nConnections closed (cause, role, count):\n");
        for (cause, role, n) in self.closes_by_cause() {
            let _ = writeln!(out, "  {:<10} {:<9} {n}", cause.name(), role.name());
        }
        let timed: u64 = self.lifetime_slots.iter().sum();
        let _ = writeln!(
            out,
            "\nLifetimes of the connections closed: {timed} timed, {} unknown",
            self.lifetime_unknown
        );
        if timed > 0 {
            write_log2(out, &self.lifetime_slots);
        }
    }

    /// The transitions by old state (rows) and new state (columns), for
    /// the states seen.
    fn write_matrix(&self, out: &mut String) {
        let rows: Vec<usize> = self.states_left().collect();
        let columns: Vec<usize> = (0..STATES)
            .filter(|&new| (0..STATES).any(|old| self.transitions[old][new] > 0))
            .collect();
        let row_width = rows.iter().map(|&s| state_name(s).len()).max().unwrap_or(0);
        let widths: Vec<usize> = columns
            .iter()
            .map(|&new| {
                let widest = rows
                    .iter()
                    .map(|&old| self.transitions[old][new].to_string().len())
                    .max()
                    .unwrap_or(1);
                widest.max(state_name(new).len())
            })
            .collect();
        out.push_str("Transitions (rows: old state, columns: new state):\n");
        let _ = write!(out, "{:row_width$}", "");
        for (&new, width) in columns.iter().zip(&widths) {
            let _ = write!(out, "  {:>width$}", state_name(new));
        }
        out.push('\n');
        for &old in &rows {
            let _ = write!(out, "{:<row_width$}", state_name(old));
            for (&new, width) in columns.iter().zip(&widths) {
                let _ = write!(out, "  {:>width$}", self.transitions[old][new]);
            }
            out.push('\n');
        }
    }

    /// One JSON object on one line: `time` (UTC, the print's), `seconds`
    /// (what the print covers), `transitions` (non-zero ones), `states` (each
    /// state left: how many transitions had a known time, how many an
    /// unknown one, their sum in microseconds, and the non-zero slots).
    pub fn write_json(&self, out: &mut String, at: Utc, seconds: f64) {
        self.write_json_labelled(out, at, seconds, None, None, None);
    }

    /// [`Summary::write_json`], with, when labelled, `by` (`unit` or
    /// `container`) and `labels`: each label's own `transitions` and
    /// `states`; with a census, `sockets` (see [`Census::write_json`]);
    /// with --stuck, `stuck` (see [`crate::stuck::write_json`]).
    pub fn write_json_labelled(
        &self,
        out: &mut String,
        at: Utc,
        seconds: f64,
        labelled: Option<&ByLabel>,
        census: Option<&Census>,
        stuck: Option<&[StuckSocket]>,
    ) {
        let mut time = Vec::new();
        json::push_iso8601(&mut time, at);
        out.push_str("{\"time\":\"");
        out.push_str(&String::from_utf8_lossy(&time));
        let _ = write!(out, "\",\"seconds\":{seconds:.3},");
        self.write_json_counts(out);
        if let Some(labelled) = labelled {
            let _ = write!(out, ",\"by\":\"{}\",\"labels\":{{", labelled.by.name());
            for (i, (label, summary)) in labelled.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json::push_json_str(out, label);
                out.push_str(":{");
                summary.write_json_counts(out);
                out.push('}');
            }
            out.push('}');
        }
        if let Some(census) = census {
            out.push(',');
            census.write_json(out);
        }
        if let Some(stuck) = stuck {
            out.push(',');
            crate::stuck::write_json(stuck, out);
        }
        out.push_str("}\n");
    }

    /// `"transitions":[...],"states":[...]`.
    fn write_json_counts(&self, out: &mut String) {
        out.push_str("\"transitions\":[");
        let mut first = true;
        for old in 0..STATES {
            for new in 0..STATES {
                let count = self.transitions[old][new];
                if count == 0 {
                    continue;
                }
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"old\":{},\"new\":{},\"count\":{count}}}",
                    json_state(old),
                    json_state(new)
                );
            }
        }
        out.push_str("],\"states\":[");
        for (i, state) in self.states_left().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"state\":{},\"timed\":{},\"unknown\":{},\"before_trace\":{},\"sum_us\":{},\
                 \"slots\":[",
                json_state(state),
                self.timed(state),
                self.unknown[state],
                self.before_trace[state],
                self.sum_ns[state] / 1000
            );
            write_json_slots(out, &self.slots[state]);
            out.push_str("]}");
        }
        out.push_str("],\"closed\":[");
        for (i, (cause, role, n)) in self.closes_by_cause().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"cause\":\"{}\",\"role\":\"{}\",\"count\":{n}}}",
                cause.name(),
                role.name()
            );
        }
        let timed: u64 = self.lifetime_slots.iter().sum();
        let _ = write!(
            out,
            "],\"lifetimes\":{{\"timed\":{timed},\"unknown\":{},\"sum_us\":{},\"slots\":[",
            self.lifetime_unknown,
            self.lifetime_sum_ns / 1000
        );
        write_json_slots(out, &self.lifetime_slots);
        out.push_str("]}");
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Summary) {
        for state in 0..STATES {
            for new in 0..STATES {
                self.transitions[state][new] += other.transitions[state][new];
            }
            for slot in 0..SLOTS {
                self.slots[state][slot] += other.slots[state][slot];
            }
            self.sum_ns[state] += other.sum_ns[state];
            self.unknown[state] += other.unknown[state];
            self.before_trace[state] += other.before_trace[state];
        }
        for (counts, o) in self.closed.iter_mut().zip(&other.closed) {
            for (n, o) in counts.iter_mut().zip(o) {
                *n += o;
            }
        }
        for (n, o) in self.lifetime_slots.iter_mut().zip(other.lifetime_slots) {
            *n += o;
        }
        self.lifetime_sum_ns += other.lifetime_sum_ns;
        self.lifetime_unknown += other.lifetime_unknown;
    }
}

/// The non-zero slots of a histogram as JSON objects, comma-separated:
/// `{"from_us":..,"to_us":..,"count":..}` (`to_us` null for the last).
fn write_json_slots(out: &mut String, slots: &[u64; SLOTS]) {
    let used = slots.iter().enumerate().filter(|(_, n)| **n > 0);
    for (j, (slot, count)) in used.enumerate() {
        if j > 0 {
            out.push(',');
        }
        let (from, to) = slot_range_us(slot);
        let to = to.map_or("null".to_owned(), |to| to.to_string());
        let _ = write!(
            out,
            "{{\"from_us\":{from},\"to_us\":{to},\"count\":{count}}}"
        );
    }
}

/// Summary mode's counts by the owner's unit or container (`--label-by`):
/// each label with its own summary; besides the labels named, `unknown`
/// (the owner is not known, or its group was too new to judge), `none` (in
/// no unit, or no container) and `other` (beyond `--max-labels`); by port,
/// `unknown`, `client` and `other` (src/ports.rs). Labels with nothing
/// counted are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByLabel {
    /// What the labels are.
    pub by: LabelBy,
    /// Each label and its counts.
    pub values: Vec<(String, Summary)>,
}

impl ByLabel {
    /// The labels of the kernel's slots: the reserved ones, then `named`.
    pub fn slot_names(by: Option<LabelBy>, named: &[String]) -> Vec<String> {
        let reserved = match by {
            // enum port_label_slots.
            Some(LabelBy::Port) => ["unknown", "client", "other"],
            _ => ["unknown", "none", "other"],
        };
        reserved
            .iter()
            .map(|s| s.to_string())
            .chain(named.iter().cloned())
            .collect()
    }

    /// What was counted since `earlier`, label by label.
    pub fn since(&self, earlier: Option<&ByLabel>) -> ByLabel {
        let values = self
            .values
            .iter()
            .filter_map(|(label, now)| {
                let before = earlier.and_then(|e| e.values.iter().find(|(l, _)| l == label));
                let delta = match before {
                    Some((_, before)) => now.since(before),
                    None => now.clone(),
                };
                (delta.total() > 0).then(|| (label.clone(), delta))
            })
            .collect();
        ByLabel {
            by: self.by,
            values,
        }
    }

    /// A table: each label, its transitions, the connections its sockets
    /// opened (CLOSE -> SYN_SENT), accepted (LISTEN -> SYN_RECV) and the
    /// sockets that reached CLOSE; busiest first.
    pub fn write_text(&self, out: &mut String) {
        let mut rows: Vec<&(String, Summary)> = self.values.iter().collect();
        rows.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(&b.0)));
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0).max(9);
        let by = self.by.name().to_uppercase();
        let _ = writeln!(
            out,
            "{by:<width$} {:>11} {:>8} {:>8} {:>8}",
            "TRANSITIONS", "CONNECTS", "ACCEPTS", "CLOSES"
        );
        for (label, s) in rows {
            let into_close: u64 = (0..STATES).map(|old| s.transitions[old][CLOSE]).sum();
            let _ = writeln!(
                out,
                "{label:<width$} {:>11} {:>8} {:>8} {:>8}",
                s.total(),
                s.transitions[CLOSE][SYN_SENT],
                s.transitions[LISTEN][SYN_RECV],
                into_close
            );
        }
    }
}

const SYN_SENT: usize = TcpState::SynSent.number() as usize;
const SYN_RECV: usize = TcpState::SynRecv.number() as usize;
const CLOSE: usize = TcpState::Close.number() as usize;
const LISTEN: usize = TcpState::Listen.number() as usize;

/// A state for JSON: its name as a string, or its number.
fn json_state(state: usize) -> String {
    TcpState::from_raw(state as i32).text().json()
}

/// The log2 histogram of `slots` in the classic layout of BCC's and
/// libbpf-tools' histograms (microseconds), up to the last slot used, with
/// bars scaled to the fullest.
fn write_log2(out: &mut String, slots: &[u64; SLOTS]) {
    const BAR: usize = 40;
    let last = slots.iter().rposition(|&n| n > 0).unwrap_or(0);
    let max = slots.iter().copied().max().unwrap_or(0).max(1);
    let (pad, label, width) = if last <= 32 {
        (5, 19, 10)
    } else {
        (15, 29, 20)
    };
    let _ = writeln!(
        out,
        "{:pad$}{:<label$} : count    distribution",
        "", "usecs"
    );
    for (slot, &count) in slots.iter().enumerate().take(last + 1) {
        let (from, to) = slot_range_us(slot);
        let stars = (count as u128 * BAR as u128 / max as u128) as usize;
        let to = to.map_or("...".to_owned(), |to| to.to_string());
        let _ = writeln!(
            out,
            "{from:>width$} -> {to:<width$} : {count:<8} |{:<BAR$}|",
            "*".repeat(stars)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_as_a_table_and_since_the_last_print() {
        let mut a = Summary::default();
        a.transitions[7][2] = 2; // CLOSE -> SYN_SENT
        a.transitions[2][1] = 2;
        a.transitions[1][7] = 1; // ESTABLISHED -> CLOSE
        let mut b = Summary::default();
        b.transitions[10][3] = 3; // LISTEN -> SYN_RECV
        let now = ByLabel {
            by: LabelBy::Unit,
            values: vec![("a.service".into(), a.clone()), ("b.service".into(), b)],
        };
        let mut text = String::new();
        now.write_text(&mut text);
        assert_eq!(
            text,
            "UNIT      TRANSITIONS CONNECTS  ACCEPTS   CLOSES\n\
             a.service           5        2        0        1\n\
             b.service           3        0        3        0\n"
        );
        // Since a print that showed a's: only b's, and a's new ones.
        let earlier = ByLabel {
            by: LabelBy::Unit,
            values: vec![("a.service".into(), a)],
        };
        let delta = now.since(Some(&earlier));
        assert_eq!(delta.values.len(), 1);
        assert_eq!(delta.values[0].0, "b.service");
        assert_eq!(
            ByLabel::slot_names(None, &["x".into()]),
            ["unknown", "none", "other", "x"]
        );
    }

    fn sample() -> Summary {
        let mut s = Summary::default();
        // CLOSE -> SYN_SENT x3 (unknown), SYN_SENT -> ESTABLISHED x3 at
        // 0.5 us, 3 us and 100 us.
        s.transitions[7][2] = 3;
        s.unknown[7] = 3;
        s.transitions[2][1] = 3;
        s.slots[2][0] = 1;
        s.slots[2][2] = 1;
        s.slots[2][7] = 1;
        s.sum_ns[2] = 103_500;
        s
    }

    #[test]
    fn closes_print_by_cause_and_role_with_lifetimes() {
        let mut s = sample();
        s.closed[1][1] = 5;
        s.closed[3][1] = 1;
        s.lifetime_slots[3] = 6;
        let earlier = s.clone();
        s.closed[1][1] += 2;
        let mut out = String::new();
        s.write_text(&mut out);
        assert!(
            out.contains(concat!(
                "Connections closed (cause, role, count):\n",
                "  normal     client    7\n",
                "  timeout    client    1\n",
                "\nLifetimes of the connections closed: 6 timed, 0 unknown\n"
            )),
            "{out}"
        );
        let since = s.since(&earlier);
        assert_eq!(since.closes(), 2);
        assert_eq!(since.lifetime_slots.iter().sum::<u64>(), 0);
        let mut none = String::new();
        sample().write_text(&mut none);
        assert!(
            !none.contains("Connections closed"),
            "nothing closed, no table"
        );
    }

    #[test]
    fn slots_cover_every_time() {
        assert_eq!(slot_range_us(0), (0, Some(0)));
        assert_eq!(slot_range_us(1), (1, Some(1)));
        assert_eq!(slot_range_us(2), (2, Some(3)));
        assert_eq!(slot_range_us(33), (1 << 32, None));
        for slot in 1..SLOTS - 1 {
            assert_eq!(
                slot_range_us(slot).1.unwrap() + 1,
                slot_range_us(slot + 1).0
            );
        }
    }

    #[test]
    fn sums_cpus_and_takes_differences() {
        let mut raw = RawSummary::default();
        raw.transitions[1][4] = 2;
        raw.slots[1][16][1] = 5;
        raw.unknown[1] = 1;
        // SAFETY: plain old data.
        let bytes = unsafe { plain::as_bytes(&raw) }.to_vec();
        let both = Summary::sum_of(&[bytes.clone(), bytes]).unwrap();
        assert_eq!(both.transitions[1][4], 4);
        assert_eq!(both.slots[1][33], 10);
        assert_eq!(both.unknown[1], 2);
        assert_eq!(both.total(), 4);
        let once = Summary::sum_of(&[unsafe { plain::as_bytes(&raw) }.to_vec()]).unwrap();
        assert_eq!(both.since(&once), once);
        assert!(Summary::sum_of(&[vec![0; 8]]).is_err());
    }

    #[test]
    fn text_histograms_and_matrix() {
        let mut out = String::new();
        sample().write_text(&mut out);
        let expected = "\
Time in SYN_SENT before leaving it: 3 timed, 0 unknown
     usecs               : count    distribution
         0 -> 0          : 1        |****************************************|
         1 -> 1          : 0        |                                        |
         2 -> 3          : 1        |****************************************|
         4 -> 7          : 0        |                                        |
         8 -> 15         : 0        |                                        |
        16 -> 31         : 0        |                                        |
        32 -> 63         : 0        |                                        |
        64 -> 127        : 1        |****************************************|

Time in CLOSE before leaving it: 0 timed, 3 unknown

Transitions (rows: old state, columns: new state):
          ESTABLISHED  SYN_SENT
SYN_SENT            3         0
CLOSE               0         3
";
        assert_eq!(out, expected);
        let mut none = String::new();
        Summary::default().write_text(&mut none);
        assert_eq!(none, "No transitions.\n");
    }

    #[test]
    fn states_entered_before_the_trace_count_apart() {
        let mut s = Summary::default();
        s.transitions[1][8] = 3; // ESTABLISHED -> CLOSE_WAIT
        s.before_trace[1] = 2;
        s.slots[1][4] = 1;
        let mut text = String::new();
        s.write_text(&mut text);
        assert!(
            text.contains(
                "Time in ESTABLISHED before leaving it: 1 timed, 0 unknown, 2 in it since before \
                 the trace\n"
            ),
            "{text}"
        );
        let mut json = String::new();
        s.write_json(&mut json, Utc::at_unix_ns(0), 1.0);
        assert!(json.contains("\"unknown\":0,\"before_trace\":2,"), "{json}");
        let mut later = s.clone();
        later.before_trace[1] = 5;
        assert_eq!(later.since(&s).before_trace[1], 3);
        later.merge(&s);
        assert_eq!(later.before_trace[1], 7);
    }

    #[test]
    fn json_object_on_one_line() {
        let mut out = String::new();
        let at = Utc::at_unix_ns(1_700_000_000_123_456_789);
        let mut s = sample();
        // Two refused connects, one of them timed at 5 us.
        s.closed[2][1] = 2;
        s.lifetime_slots[3] = 1;
        s.lifetime_sum_ns = 5_000;
        s.lifetime_unknown = 1;
        s.write_json(&mut out, at, 2.5);
        let expected = concat!(
            r#"{"time":"2023-11-14T22:13:20.123456Z","seconds":2.500,"transitions":["#,
            r#"{"old":"SYN_SENT","new":"ESTABLISHED","count":3},"#,
            r#"{"old":"CLOSE","new":"SYN_SENT","count":3}],"states":["#,
            r#"{"state":"SYN_SENT","timed":3,"unknown":0,"before_trace":0,"sum_us":103,"slots":["#,
            r#"{"from_us":0,"to_us":0,"count":1},{"from_us":2,"to_us":3,"count":1},"#,
            r#"{"from_us":64,"to_us":127,"count":1}]},"#,
            r#"{"state":"CLOSE","timed":0,"unknown":3,"before_trace":0,"sum_us":0,"slots":[]}],"#,
            r#""closed":[{"cause":"refused","role":"client","count":2}],"#,
            r#""lifetimes":{"timed":1,"unknown":1,"sum_us":5,"slots":[{"from_us":4,"to_us":7,"count":1}]}}"#,
            "\n"
        );
        assert_eq!(out, expected);
    }
}
