//! Close records (`-C`) as text: one line per socket, in aligned columns
//! or CSV, from one list of columns (as the transitions' table). Pure: the
//! wall clock is passed in.

use super::LineFormat;
use super::number::{push_hex, push_ip, push_micros, push_u64};
use super::table::{Column, UNKNOWN, col, push_clock, push_csv_text, push_name, write_line};
use crate::clock::{EventClock, WallClock};
use crate::close::{Close, Detail};
use crate::config::TimeColumns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Time,
    Timestamp,
    Skaddr,
    Pid,
    Comm,
    Uid,
    Ip,
    Laddr,
    Lport,
    Raddr,
    Rport,
    Role,
    Cause,
    Ms,
    Tx,
    Rx,
    SegsOut,
    SegsIn,
    Retrans,
    Srtt,
    MinRtt,
    CurrentPid,
    CurrentComm,
    Netns,
    Identity,
    Cgroup,
    States,
}

/// Formats close records, one line each.
#[derive(Debug, Clone)]
pub struct CloseFormatter {
    csv: bool,
    local_time: bool,
    columns: Vec<Column<Field>>,
    first_ts_ns: Option<u64>,
}

impl CloseFormatter {
    /// Aligned columns (`-w`: room for IPv6; `-x`: the owner's uid, the
    /// task on the CPU, the netns, unit and cgroup), or CSV.
    pub fn new(times: TimeColumns, wide: bool, extended: bool, csv: bool) -> Self {
        let mut columns = Vec::new();
        if times.clock {
            columns.push(col(Field::Time, "TIME", 8));
        }
        if times.elapsed {
            columns.push(col(Field::Timestamp, "TIME(s)", 9));
        }
        let addr = if wide { 39 } else { 15 };
        columns.extend([
            col(Field::Skaddr, "SKADDR", 16),
            col(Field::Pid, "PID", 7),
            Column {
                truncate: true,
                ..col(Field::Comm, "COMM", if wide { 16 } else { 10 })
            },
        ]);
        if extended {
            columns.push(col(Field::Uid, "UID", 5));
        }
        if wide || csv {
            columns.push(col(Field::Ip, "IP", 2));
        }
        columns.extend([
            col(Field::Laddr, "LADDR", addr),
            col(Field::Lport, "LPORT", 5),
            col(Field::Raddr, "RADDR", addr),
            col(Field::Rport, "RPORT", 5),
            col(Field::Role, "ROLE", 8),
            col(Field::Cause, "CAUSE", 22),
            col(Field::Ms, "MS", 10),
            col(Field::Tx, "TX_B", 8),
            col(Field::Rx, "RX_B", 8),
            col(Field::SegsOut, "SEGS_OUT", 8),
            col(Field::SegsIn, "SEGS_IN", 7),
            col(Field::Retrans, "RETRANS", 7),
            col(Field::Srtt, "SRTT_US", 7),
            col(Field::MinRtt, "MINRTT_US", 9),
        ]);
        if extended {
            columns.extend([
                col(Field::CurrentPid, "C-PID", 7),
                Column {
                    truncate: true,
                    ..col(Field::CurrentComm, "C-COMM", if wide { 16 } else { 10 })
                },
                col(Field::Netns, "NETNS", 10),
                col(Field::Identity, "UNIT/CONTAINER", 20),
                col(Field::Cgroup, "CGROUP", 24),
            ]);
        }
        columns.push(col(Field::States, "STATES", 0));
        Self {
            csv,
            local_time: times.clock,
            columns,
            first_ts_ns: None,
        }
    }

    /// Appends one record as one line to `out`.
    pub fn write_close(&mut self, out: &mut Vec<u8>, c: &Close, clock: WallClock) {
        let first = *self.first_ts_ns.get_or_insert(c.ts_ns);
        let csv = self.csv;
        let unknown = |out: &mut Vec<u8>| out.extend_from_slice(UNKNOWN.as_bytes());
        let number = |out: &mut Vec<u8>, n: Option<u64>| match n {
            Some(n) => push_u64(out, n),
            None => unknown(out),
        };
        write_line(&self.columns, csv, out, |column, out| match column.field {
            Field::Time => push_clock(out, clock),
            Field::Timestamp => push_micros(out, c.ts_ns.saturating_sub(first), 6),
            Field::Skaddr => push_hex(out, c.skaddr),
            Field::Pid => number(out, c.owner.map(|o| o.pid.into())),
            Field::Comm => match &c.owner {
                Some(owner) if csv => push_csv_text(out, &owner.comm()),
                Some(owner) => push_name(out, owner.comm_bytes()),
                None => unknown(out),
            },
            Field::Uid => number(out, c.owner.map(|o| o.uid.into())),
            Field::Ip => out.push(if c.laddr.is_ipv4() { b'4' } else { b'6' }),
            Field::Laddr => push_ip(out, c.laddr),
            Field::Lport => push_u64(out, c.lport.into()),
            Field::Raddr => push_ip(out, c.raddr),
            Field::Rport => push_u64(out, c.rport.into()),
            Field::Role => out.extend_from_slice(c.role.name().as_bytes()),
            Field::Cause => push_cause(out, c),
            Field::Ms => match c.lifetime_ns {
                Some(ns) => push_micros(out, ns, 3),
                None => unknown(out),
            },
            Field::Tx => number(out, c.counters.bytes_acked),
            Field::Rx => number(out, c.counters.bytes_received),
            Field::SegsOut => number(out, c.counters.segs_out.map(u64::from)),
            Field::SegsIn => number(out, c.counters.segs_in.map(u64::from)),
            Field::Retrans => number(out, c.counters.retransmits.map(u64::from)),
            Field::Srtt => number(out, c.counters.srtt_us.map(u64::from)),
            Field::MinRtt => number(out, c.counters.rtt_min_us.map(u64::from)),
            Field::CurrentPid => push_u64(out, c.pid.into()),
            Field::CurrentComm if csv => {
                push_csv_text(out, &String::from_utf8_lossy(c.comm_bytes()))
            }
            Field::CurrentComm => push_name(out, c.comm_bytes()),
            Field::Netns => push_u64(out, c.netns.into()),
            Field::Identity => match &c.identity {
                Some(id) if csv => push_csv_text(out, &id.to_string()),
                Some(id) => id.push_compact(out),
                None => unknown(out),
            },
            Field::Cgroup => match &c.cgroup {
                Some(path) if csv => push_csv_text(out, path),
                Some(path) => out.extend_from_slice(path.as_bytes()),
                None => unknown(out),
            },
            Field::States => push_states(out, c),
        })
    }
}

/// `cause`, `cause:detail`, and for an error its errno:
/// `normal:local-first`, `timeout:handshake`, `error:EHOSTUNREACH`.
pub fn push_cause(out: &mut Vec<u8>, c: &Close) {
    out.extend_from_slice(c.cause.name().as_bytes());
    if c.detail != Detail::None {
        out.push(b':');
        out.extend_from_slice(c.detail.name().as_bytes());
    }
    if c.cause == crate::close::Cause::Error {
        if let Some(name) = c.error_name() {
            out.push(b':');
            out.extend_from_slice(name.as_bytes());
        }
    }
}

/// The states left, each with its milliseconds (`-` when not known), then
/// CLOSE: `CLOSE:- SYN_SENT:0.051 ESTABLISHED:12.203 ... CLOSE`; steps left
/// out of a long timeline as `...(+N)` before the latest.
pub fn push_states(out: &mut Vec<u8>, c: &Close) {
    let last = c.steps().len().saturating_sub(1);
    for (i, step) in c.steps().iter().enumerate() {
        if i == last && c.steps_left_out > 0 {
            out.extend_from_slice(b"...(+");
            push_u64(out, c.steps_left_out.into());
            out.extend_from_slice(b") ");
        }
        step.state.text().write(out);
        out.push(b':');
        match (step.spent_ns, step.at_least_ns) {
            (Some(ns), _) => push_micros(out, ns, 3),
            // Held since before the trace: at least this long.
            (None, Some(ns)) => {
                out.push(b'>');
                push_micros(out, ns, 3);
            }
            (None, None) => out.extend_from_slice(UNKNOWN.as_bytes()),
        }
        out.push(b' ');
    }
    out.extend_from_slice(b"CLOSE");
}

impl LineFormat<Close> for CloseFormatter {
    fn header(&mut self, out: &mut Vec<u8>) {
        write_line(&self.columns, self.csv, out, |column, out| {
            out.extend_from_slice(column.header.as_bytes())
        })
    }

    fn record(&mut self, out: &mut Vec<u8>, c: &Close, clock: &mut EventClock) {
        let wall = if self.local_time {
            clock.local(c.ts_ns)
        } else {
            WallClock::default()
        };
        self.write_close(out, c, wall);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::tests::{close_of, raw_client};

    fn render(mut f: CloseFormatter, records: &[Close]) -> Vec<String> {
        let mut out = Vec::new();
        f.header(&mut out);
        for c in records {
            f.write_close(&mut out, c, WallClock::default());
        }
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn one_aligned_line_per_socket() {
        let lines = render(
            CloseFormatter::new(TimeColumns::default(), false, false, false),
            &[close_of(&raw_client())],
        );
        assert_eq!(
            lines,
            [
                "SKADDR           PID     COMM       LADDR           LPORT RADDR           RPORT \
                 ROLE     CAUSE                  MS         TX_B     RX_B     SEGS_OUT SEGS_IN \
                 RETRANS SRTT_US MINRTT_US STATES",
                "ffff8881043b9280 4711    curl       127.0.0.1       41234 127.0.0.2       8080  \
                 client   normal:local-first     12.345     1000     1000     7        6       \
                 1       35      12        CLOSE:- SYN_SENT:0.051 ESTABLISHED:12.203 \
                 FIN_WAIT1:0.010 FIN_WAIT2:0.020 CLOSE",
            ]
        );
    }

    #[test]
    fn csv_and_extended_columns_and_what_is_unknown() {
        let mut raw = raw_client();
        raw.flags = 0x40; // lifetime unknown, owner unknown
        raw.cause = crate::close::Cause::Error as u8;
        raw.detail = crate::close::Detail::Handshake as u8;
        raw.error = libc::EHOSTUNREACH;
        raw.present = 0;
        let lines = render(
            CloseFormatter::new(TimeColumns::default(), false, true, true),
            &[close_of(&raw)],
        );
        assert_eq!(
            lines[0],
            "SKADDR,PID,COMM,UID,IP,LADDR,LPORT,RADDR,RPORT,ROLE,CAUSE,MS,TX_B,RX_B,SEGS_OUT,\
             SEGS_IN,RETRANS,SRTT_US,MINRTT_US,C-PID,C-COMM,NETNS,UNIT/CONTAINER,CGROUP,STATES"
        );
        assert_eq!(
            lines[1],
            "ffff8881043b9280,-,-,-,4,127.0.0.1,41234,127.0.0.2,8080,client,\
             error:handshake:EHOSTUNREACH,-,-,-,-,-,-,-,-,0,swapper/1,4026531840,-,-,\
             CLOSE:- SYN_SENT:0.051 ESTABLISHED:12.203 FIN_WAIT1:0.010 FIN_WAIT2:0.020 CLOSE"
        );
    }

    #[test]
    fn a_long_timeline_says_what_it_left_out() {
        let mut c = close_of(&raw_client());
        c.steps_left_out = 3;
        let mut out = Vec::new();
        push_states(&mut out, &c);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CLOSE:- SYN_SENT:0.051 ESTABLISHED:12.203 FIN_WAIT1:0.010 ...(+3) FIN_WAIT2:0.020 CLOSE"
        );
    }
}
