//! Formatting events as text: BCC tcpstates.py's columns, or CSV.
//!
//! Pure: appends to a byte buffer, with the wall clock passed in, so every
//! form is tested without root. The header and the rows come from one list
//! of columns.

use super::LineFormat;
use super::number::{push_hex, push_ip, push_micros, push_spaces, push_two_digits, push_u64};
use crate::clock::{EventClock, WallClock};
use crate::config::TimeColumns;
use crate::event::Event;

/// Printed in a column whose value is not known (MS, the owner's).
pub const UNKNOWN: &str = "-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Time,
    Timestamp,
    Skaddr,
    Pid,
    Comm,
    Ip,
    Laddr,
    Lport,
    Raddr,
    Rport,
    Old,
    Arrow,
    New,
    Ms,
    OwnerPid,
    OwnerComm,
    Uid,
    Netns,
    Identity,
    Cgroup,
}

/// A column of a table of records whose fields are `F`s.
#[derive(Debug, Clone, Copy)]
pub(super) struct Column<F> {
    pub(super) field: F,
    pub(super) header: &'static str,
    /// Left-aligned to this width in text mode (0: not padded).
    pub(super) width: usize,
    /// Cut to `width` characters (the task name).
    pub(super) truncate: bool,
}

pub(super) const fn col<F>(field: F, header: &'static str, width: usize) -> Column<F> {
    Column {
        field,
        header,
        width,
        truncate: false,
    }
}

/// Formats events, one line each. Remembers the first event's time for `-t`.
#[derive(Debug, Clone)]
pub struct Formatter {
    csv: bool,
    /// Whether the HH:MM:SS column is shown (the clock is read only then).
    local_time: bool,
    columns: Vec<Column<Field>>,
    first_ts_ns: Option<u64>,
}

impl Formatter {
    /// BCC's aligned columns (`-w`: wide; `-x`: extended).
    pub fn table(times: TimeColumns, wide: bool, extended: bool) -> Self {
        Self::new(times, wide, extended, false)
    }

    /// Comma-separated values (`-x`: extended).
    pub fn csv(times: TimeColumns, extended: bool) -> Self {
        Self::new(times, false, extended, true)
    }

    fn new(times: TimeColumns, wide: bool, extended: bool, csv: bool) -> Self {
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
            // pid_max is at most 4194304: 7 digits keep the columns aligned.
            col(Field::Pid, "C-PID", 7),
            Column {
                truncate: true,
                ..col(Field::Comm, "C-COMM", if wide { 16 } else { 10 })
            },
        ]);
        if extended {
            columns.extend([
                col(Field::OwnerPid, "O-PID", 7),
                Column {
                    truncate: true,
                    ..col(Field::OwnerComm, "O-COMM", if wide { 16 } else { 10 })
                },
                col(Field::Uid, "UID", 5),
            ]);
        }
        if wide || csv {
            columns.push(col(Field::Ip, "IP", 2));
        }
        columns.extend([
            col(Field::Laddr, "LADDR", addr),
            col(Field::Lport, "LPORT", 5),
            col(Field::Raddr, "RADDR", addr),
            col(Field::Rport, "RPORT", 5),
            col(Field::Old, "OLDSTATE", 11),
        ]);
        if !csv {
            columns.push(col(Field::Arrow, "->", 2));
        }
        columns.push(col(Field::New, "NEWSTATE", 11));
        if extended {
            columns.extend([
                col(Field::Ms, "MS", 9),
                col(Field::Netns, "NETNS", 10),
                col(Field::Identity, "UNIT/CONTAINER", 20),
                col(Field::Cgroup, "CGROUP", 0),
            ]);
        } else {
            columns.push(col(Field::Ms, "MS", 0));
        }
        Self {
            csv,
            local_time: times.clock,
            columns,
            first_ts_ns: None,
        }
    }

    /// Appends the header line to `out`.
    pub fn write_header(&mut self, out: &mut Vec<u8>) {
        self.write_line(out, |column, out| {
            out.extend_from_slice(column.header.as_bytes())
        })
    }

    /// Appends one event as one line to `out`.
    pub fn write_event(&mut self, out: &mut Vec<u8>, ev: &Event, clock: WallClock) {
        let first = *self.first_ts_ns.get_or_insert(ev.ts_ns);
        let csv = self.csv;
        self.write_line(out, |column, out| match column.field {
            Field::Time => push_clock(out, clock),
            Field::Timestamp => push_micros(out, ev.ts_ns.saturating_sub(first), 6),
            Field::Skaddr => push_hex(out, ev.skaddr),
            Field::Pid => push_u64(out, ev.pid.into()),
            Field::Comm if csv => push_csv_text(out, &ev.comm()),
            Field::Comm => push_name(out, ev.comm_bytes()),
            Field::Ip => out.push(b'0' + ev.ip_version()),
            Field::Laddr => push_ip(out, ev.laddr),
            Field::Lport => push_u64(out, ev.lport.into()),
            Field::Raddr => push_ip(out, ev.raddr),
            Field::Rport => push_u64(out, ev.rport.into()),
            Field::Old => ev.old.text().write(out),
            Field::Arrow => out.extend_from_slice(b"->"),
            // A stuck socket's row: its state, "-> STUCK", its time there.
            Field::New if ev.stuck => out.extend_from_slice(b"STUCK"),
            Field::New => ev.new.text().write(out),
            Field::Ms => match (ev.duration_ns, ev.at_least_ns) {
                (Some(ns), _) => push_micros(out, ns, 3),
                // In the state since before the trace: at least this long.
                (None, Some(ns)) => {
                    out.push(b'>');
                    push_micros(out, ns, 3);
                }
                (None, None) => out.extend_from_slice(UNKNOWN.as_bytes()),
            },
            Field::OwnerPid => match &ev.owner {
                Some(owner) => push_u64(out, owner.pid.into()),
                None => out.extend_from_slice(UNKNOWN.as_bytes()),
            },
            Field::OwnerComm => match &ev.owner {
                Some(owner) if csv => push_csv_text(out, &owner.comm()),
                Some(owner) => push_name(out, owner.comm_bytes()),
                None => out.extend_from_slice(UNKNOWN.as_bytes()),
            },
            Field::Uid => match &ev.owner {
                Some(owner) => push_u64(out, owner.uid.into()),
                None => out.extend_from_slice(UNKNOWN.as_bytes()),
            },
            Field::Netns => push_u64(out, ev.netns.into()),
            Field::Identity => match &ev.identity {
                Some(id) if csv => push_csv_text(out, &id.to_string()),
                Some(id) => id.push_compact(out),
                None => out.extend_from_slice(UNKNOWN.as_bytes()),
            },
            Field::Cgroup => match &ev.cgroup {
                Some(path) if csv => push_csv_text(out, path),
                Some(path) => out.extend_from_slice(path.as_bytes()),
                None => out.extend_from_slice(UNKNOWN.as_bytes()),
            },
        })
    }

    fn write_line<F>(&self, out: &mut Vec<u8>, cell: F)
    where
        F: FnMut(&Column<Field>, &mut Vec<u8>),
    {
        write_line(&self.columns, self.csv, out, cell)
    }
}

/// Lays out one line at the end of `out`: each column's text (appended by
/// `cell`) padded or cut to its width, separated by a space (or a comma in
/// CSV). No allocation once `out` has grown to a batch.
pub(super) fn write_line<F, C>(columns: &[Column<F>], csv: bool, out: &mut Vec<u8>, mut cell: C)
where
    C: FnMut(&Column<F>, &mut Vec<u8>),
{
    let last = columns.len() - 1;
    for (i, column) in columns.iter().enumerate() {
        let start = out.len();
        cell(column, out);
        if csv {
            out.push(if i == last { b'\n' } else { b',' });
            continue;
        }
        // Every cell is ASCII but the task name, the one column cut.
        let chars = if column.truncate {
            cut(out, start, column.width)
        } else {
            out.len() - start
        };
        if i == last {
            out.push(b'\n');
        } else {
            push_spaces(out, column.width.saturating_sub(chars) + 1);
        }
    }
}

impl LineFormat for Formatter {
    fn header(&mut self, out: &mut Vec<u8>) {
        self.write_header(out);
    }

    fn record(&mut self, out: &mut Vec<u8>, ev: &Event, clock: &mut EventClock) {
        let wall = if self.local_time {
            clock.local(ev.ts_ns)
        } else {
            WallClock::default()
        };
        self.write_event(out, ev, wall);
    }
}

/// The TIME cell: HH:MM:SS.
pub(super) fn push_clock(out: &mut Vec<u8>, clock: WallClock) {
    push_two_digits(out, clock.hour);
    out.push(b':');
    push_two_digits(out, clock.minute);
    out.push(b':');
    push_two_digits(out, clock.second);
}

/// Cuts the text from `start` to the end of `out` to `width` characters and
/// returns how many characters it has.
fn cut(out: &mut Vec<u8>, start: usize, width: usize) -> usize {
    if out[start..].is_ascii() {
        out.truncate(start + width.min(out.len() - start));
        return out.len() - start;
    }
    let text = String::from_utf8_lossy(&out[start..]).into_owned();
    let chars = text.chars().count();
    if chars <= width {
        return chars;
    }
    let cut: String = text.chars().take(width).collect();
    out.truncate(start);
    out.extend_from_slice(cut.as_bytes());
    width
}

/// A task name's bytes (up to its NUL), invalid UTF-8 replaced, checked
/// with the cheaper ASCII test first (nearly every name is ASCII).
pub(super) fn push_name(out: &mut Vec<u8>, name: &[u8]) {
    if name.is_ascii() {
        out.extend_from_slice(name);
    } else {
        out.extend_from_slice(String::from_utf8_lossy(name).as_bytes());
    }
}

/// A CSV field: quoted (RFC 4180) when it holds a comma, quote or newline.
pub(super) fn push_csv_text(out: &mut Vec<u8>, text: &str) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(text.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::event::tests::raw_v4;
    use crate::event::{Event, TcpState};

    const CLOCK: WallClock = WallClock {
        hour: 9,
        minute: 5,
        second: 7,
    };

    fn v4() -> Event {
        Event::from_raw(&raw_v4()).unwrap()
    }

    fn v6() -> Event {
        let mut ev = v4();
        ev.laddr = "2001:db8:85a3::8a2e:370:7334".parse().unwrap();
        ev.raddr = "::ffff:10.1.2.3".parse().unwrap();
        ev
    }

    fn table(clock: bool, elapsed: bool, wide: bool) -> Format {
        Format::Table {
            times: TimeColumns { clock, elapsed },
            wide,
            extended: false,
        }
    }

    fn render(format: Format, events: &[Event]) -> Vec<String> {
        let mut f = match format {
            Format::Table {
                times,
                wide,
                extended,
            } => Formatter::table(times, wide, extended),
            Format::Csv { times, extended } => Formatter::csv(times, extended),
            Format::Json => unreachable!("the table's tests"),
        };
        let mut out = Vec::new();
        f.write_header(&mut out);
        for ev in events {
            f.write_event(&mut out, ev, CLOCK);
        }
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn default_columns() {
        let lines = render(Format::default(), &[v4()]);
        assert_eq!(
            lines,
            [
                "SKADDR           C-PID   C-COMM     LADDR           LPORT RADDR           RPORT OLDSTATE    -> NEWSTATE    MS",
                "ffff8881043b9280 9376    python3    127.0.0.1       48792 10.1.2.3        80    SYN_SENT    -> ESTABLISHED 0.271",
            ]
        );
    }

    #[test]
    fn long_comm_is_cut_and_long_pid_stays_aligned() {
        let mut ev = v4();
        ev.pid = 4_194_304;
        ev.comm = *b"kworker/u4:12345";
        let lines = render(Format::default(), &[ev]);
        assert_eq!(
            lines[1],
            "ffff8881043b9280 4194304 kworker/u4 127.0.0.1       48792 10.1.2.3        80    SYN_SENT    -> ESTABLISHED 0.271"
        );
        assert_eq!(lines[0].find("LADDR"), lines[1].find("127.0.0.1"));
    }

    #[test]
    fn wide_ipv6() {
        let lines = render(table(false, false, true), &[v6()]);
        assert_eq!(
            lines,
            [
                "SKADDR           C-PID   C-COMM           IP LADDR                                   LPORT RADDR                                   RPORT OLDSTATE    -> NEWSTATE    MS",
                "ffff8881043b9280 9376    python3          6  2001:db8:85a3::8a2e:370:7334            48792 ::ffff:10.1.2.3                         80    SYN_SENT    -> ESTABLISHED 0.271",
            ]
        );
    }

    #[test]
    fn default_ipv6_overflows_like_bcc() {
        let lines = render(Format::default(), &[v6()]);
        assert_eq!(
            lines[1],
            "ffff8881043b9280 9376    python3    2001:db8:85a3::8a2e:370:7334 48792 ::ffff:10.1.2.3 80    SYN_SENT    -> ESTABLISHED 0.271"
        );
    }

    #[test]
    fn csv_with_both_time_columns() {
        let mut second = v4();
        second.ts_ns += 1_234_567_890;
        second.comm = *b"a,\"b\"\0\0\0\0\0\0\0\0\0\0\0";
        let csv = Format::Csv {
            times: TimeColumns {
                clock: true,
                elapsed: true,
            },
            extended: false,
        };
        let lines = render(csv, &[v4(), second]);
        assert_eq!(
            lines,
            [
                "TIME,TIME(s),SKADDR,C-PID,C-COMM,IP,LADDR,LPORT,RADDR,RPORT,OLDSTATE,NEWSTATE,MS",
                "09:05:07,0.000000,ffff8881043b9280,9376,python3,4,127.0.0.1,48792,10.1.2.3,80,SYN_SENT,ESTABLISHED,0.271",
                "09:05:07,1.234568,ffff8881043b9280,9376,\"a,\"\"b\"\"\",4,127.0.0.1,48792,10.1.2.3,80,SYN_SENT,ESTABLISHED,0.271",
            ]
        );
    }

    #[test]
    fn time_column() {
        let lines = render(table(true, false, false), &[v4()]);
        assert!(
            lines[0].starts_with("TIME     SKADDR           C-PID"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("09:05:07 ffff8881043b9280 9376"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn timestamp_column_counts_from_first_event() {
        let mut later = v4();
        later.ts_ns += 2_500_000;
        let lines = render(table(false, true, false), &[v4(), later]);
        assert!(lines[0].starts_with("TIME(s)   SKADDR"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("0.000000  ffff8881043b9280 "),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("0.002500  ffff8881043b9280 "),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn time_comes_before_timestamp() {
        let lines = render(table(true, true, false), &[v4()]);
        assert!(
            lines[0].starts_with("TIME     TIME(s)   SKADDR"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("09:05:07 0.000000  ffff"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn unknown_state_prints_its_number() {
        let mut ev = v4();
        ev.old = TcpState::Unknown(42);
        ev.new = TcpState::Unknown(-1);
        let lines = render(Format::default(), &[ev]);
        assert!(
            lines[1].ends_with(" 42          -> -1          0.271"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn unknown_duration_is_marked_not_zero() {
        let mut ev = v4();
        ev.duration_ns = None;
        let (row, csv) = row_and_csv(ev);
        assert!(row.ends_with("SYN_SENT    -> ESTABLISHED -"), "{row}");
        assert!(csv.ends_with(",SYN_SENT,ESTABLISHED,-"), "{csv}");
    }

    /// One event's row in the default table and in CSV.
    fn row_and_csv(ev: Event) -> (String, String) {
        let mut rows = render(Format::default(), std::slice::from_ref(&ev));
        let csv = Format::Csv {
            times: TimeColumns::default(),
            extended: false,
        };
        (rows.swap_remove(1), render(csv, &[ev]).swap_remove(1))
    }

    #[test]
    fn a_lower_bound_is_marked() {
        let mut ev = v4();
        ev.duration_ns = None;
        ev.at_least_ns = Some(12_034_521_400);
        let (row, csv) = row_and_csv(ev);
        assert!(row.ends_with("-> ESTABLISHED >12034.521"), "{row}");
        assert!(csv.ends_with(",ESTABLISHED,>12034.521"), "{csv}");
    }

    #[test]
    fn non_ascii_task_names_are_cut_by_character() {
        let mut ev = v4();
        ev.comm = [0; 16];
        let name = "ñandú-srv-x".as_bytes();
        ev.comm[..name.len()].copy_from_slice(name);
        let lines = render(Format::default(), &[ev]);
        assert!(
            lines[1].contains(" 9376    ñandú-srv- 127.0.0.1 "),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn durations_round_to_the_microsecond() {
        let mut ev = v4();
        for (ns, text) in [
            (0, "0.000"),
            (499, "0.000"),
            (500, "0.001"),
            (1_999_500, "2.000"),
            (65_476_000_000, "65476.000"),
        ] {
            ev.duration_ns = Some(ns);
            let lines = render(Format::default(), std::slice::from_ref(&ev));
            assert!(
                lines[1].ends_with(&format!(" {text}")),
                "{ns}: {}",
                lines[1]
            );
        }
    }
}
