//! Formatting events as text: BCC tcpstates.py's columns, or CSV.
//!
//! Pure: writes to any `io::Write`, with the wall clock passed in, so every
//! mode is tested without root. The header and the rows come from one list
//! of columns.

use std::io::{self, Write};
use std::net::IpAddr;

use crate::event::{Event, TcpState};

/// What the output looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputOptions {
    /// `-T`: an HH:MM:SS column first.
    pub time: bool,
    /// `-t`: seconds since the first event.
    pub timestamp: bool,
    /// `-w`: an IP version column and room for IPv6 addresses.
    pub wide: bool,
    /// `-s`: comma-separated values.
    pub csv: bool,
}

/// Local wall-clock time of day, for the `-T` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WallClock {
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-60 (a leap second).
    pub second: u8,
}

impl WallClock {
    /// The local time of day at `secs` seconds since the Unix epoch.
    pub fn at_unix(secs: i64) -> Self {
        let t = secs as libc::time_t;
        // SAFETY: localtime_r writes only into the `tm` we own and is
        // thread-safe (unlike localtime); a zeroed `tm` is a valid value.
        unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&t, &mut tm).is_null() {
                return Self::default();
            }
            Self {
                hour: tm.tm_hour as u8,
                minute: tm.tm_min as u8,
                second: tm.tm_sec as u8,
            }
        }
    }
}

/// Printed in the MS column when the time in the old state is not known.
pub const UNKNOWN_DURATION: &str = "-";

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
}

#[derive(Debug, Clone, Copy)]
struct Column {
    field: Field,
    header: &'static str,
    /// Left-aligned to this width in text mode (0: not padded).
    width: usize,
    /// Cut to `width` characters (the task name).
    truncate: bool,
}

const fn col(field: Field, header: &'static str, width: usize) -> Column {
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
    opts: OutputOptions,
    columns: Vec<Column>,
    first_ts_ns: Option<u64>,
    /// The line being built, reused.
    line: Vec<u8>,
}

impl Formatter {
    /// A formatter for the columns `opts` asks for.
    pub fn new(opts: OutputOptions) -> Self {
        let wide = opts.wide;
        let mut columns = Vec::new();
        if opts.time {
            columns.push(col(Field::Time, "TIME", 8));
        }
        if opts.timestamp {
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
        if wide || opts.csv {
            columns.push(col(Field::Ip, "IP", 2));
        }
        columns.extend([
            col(Field::Laddr, "LADDR", addr),
            col(Field::Lport, "LPORT", 5),
            col(Field::Raddr, "RADDR", addr),
            col(Field::Rport, "RPORT", 5),
            col(Field::Old, "OLDSTATE", 11),
        ]);
        if !opts.csv {
            columns.push(col(Field::Arrow, "->", 2));
        }
        columns.extend([col(Field::New, "NEWSTATE", 11), col(Field::Ms, "MS", 0)]);
        Self {
            opts,
            columns,
            first_ts_ns: None,
            line: Vec::with_capacity(256),
        }
    }

    /// Writes the header line.
    pub fn write_header<W: Write + ?Sized>(&mut self, w: &mut W) -> io::Result<()> {
        self.write_line(w, |column, out| {
            out.extend_from_slice(column.header.as_bytes())
        })
    }

    /// Writes one event as one line.
    pub fn write_event<W: Write + ?Sized>(
        &mut self,
        w: &mut W,
        ev: &Event,
        clock: WallClock,
    ) -> io::Result<()> {
        let first = *self.first_ts_ns.get_or_insert(ev.ts_ns);
        let csv = self.opts.csv;
        self.write_line(w, |column, out| match column.field {
            Field::Time => {
                for (i, n) in [clock.hour, clock.minute, clock.second]
                    .into_iter()
                    .enumerate()
                {
                    if i > 0 {
                        out.push(b':');
                    }
                    out.extend_from_slice(&[b'0' + n / 10, b'0' + n % 10]);
                }
            }
            Field::Timestamp => push_micros(out, ev.ts_ns.saturating_sub(first), 6),
            Field::Skaddr => push_hex(out, ev.skaddr),
            Field::Pid => push_u64(out, ev.pid.into()),
            Field::Comm if csv => push_csv_text(out, &ev.comm()),
            Field::Comm => out.extend_from_slice(ev.comm().as_bytes()),
            Field::Ip => out.push(b'0' + ev.ip_version()),
            Field::Laddr => push_ip(out, ev.laddr),
            Field::Lport => push_u64(out, ev.lport.into()),
            Field::Raddr => push_ip(out, ev.raddr),
            Field::Rport => push_u64(out, ev.rport.into()),
            Field::Old => push_state(out, ev.old),
            Field::Arrow => out.extend_from_slice(b"->"),
            Field::New => push_state(out, ev.new),
            Field::Ms => match ev.duration_ns {
                Some(ns) => push_micros(out, ns, 3),
                None => out.extend_from_slice(UNKNOWN_DURATION.as_bytes()),
            },
        })
    }

    /// Lays out one line: each column's text (appended by `cell`) padded or
    /// cut to its width, separated by a space (or a comma in CSV). Built in
    /// one reused buffer: no allocation per event, one write.
    fn write_line<W, F>(&mut self, w: &mut W, mut cell: F) -> io::Result<()>
    where
        W: Write + ?Sized,
        F: FnMut(&Column, &mut Vec<u8>),
    {
        let Self {
            opts,
            columns,
            line,
            ..
        } = self;
        line.clear();
        let last = columns.len() - 1;
        for (i, column) in columns.iter().enumerate() {
            let start = line.len();
            cell(column, line);
            if opts.csv {
                line.push(if i == last { b'\n' } else { b',' });
                continue;
            }
            // Every cell is ASCII but the task name, which may not be.
            let mut chars = line.len() - start;
            if !line[start..].is_ascii() {
                let text = String::from_utf8_lossy(&line[start..]).into_owned();
                chars = text.chars().count();
                if column.truncate && chars > column.width {
                    let cut: String = text.chars().take(column.width).collect();
                    line.truncate(start);
                    line.extend_from_slice(cut.as_bytes());
                    chars = column.width;
                }
            } else if column.truncate && chars > column.width {
                line.truncate(start + column.width);
                chars = column.width;
            }
            if i == last {
                line.push(b'\n');
            } else {
                let pad = column.width.saturating_sub(chars) + 1;
                line.resize(line.len() + pad, b' ');
            }
        }
        w.write_all(line)
    }
}

/// Decimal digits of `n`.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Lower-case hex digits of `n`, without leading zeros.
fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let nibbles = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..nibbles).rev() {
        out.push(HEX[(n >> (i * 4)) as usize & 0xf]);
    }
}

fn push_ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, octet.into());
            }
        }
        // Canonical text form (RFC 5952) from the standard library.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_state(out: &mut Vec<u8>, state: TcpState) {
    match (state.name(), state) {
        (Some(name), _) => out.extend_from_slice(name.as_bytes()),
        (None, TcpState::Unknown(n)) => {
            let _ = write!(out, "{n}");
        }
        (None, _) => unreachable!("every known state has a name"),
    }
}

/// A duration in nanoseconds with `digits` decimals: 3 for milliseconds, 6
/// for seconds. Rounded to the microsecond, in integers.
fn push_micros(out: &mut Vec<u8>, ns: u64, digits: u32) {
    let micros = ns.saturating_add(500) / 1000;
    let per_unit = 10u64.pow(digits);
    push_u64(out, micros / per_unit);
    out.push(b'.');
    let frac = micros % per_unit;
    let mut div = per_unit / 10;
    while div > 0 {
        out.push(b'0' + (frac / div % 10) as u8);
        div /= 10;
    }
}

/// A CSV field: quoted (RFC 4180) when it holds a comma, quote or newline.
fn push_csv_text(out: &mut Vec<u8>, text: &str) {
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

    fn render(opts: OutputOptions, events: &[Event]) -> Vec<String> {
        let mut f = Formatter::new(opts);
        let mut out = Vec::new();
        f.write_header(&mut out).unwrap();
        for ev in events {
            f.write_event(&mut out, ev, CLOCK).unwrap();
        }
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn default_columns() {
        let lines = render(OutputOptions::default(), &[v4()]);
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
        let lines = render(OutputOptions::default(), &[ev]);
        assert_eq!(
            lines[1],
            "ffff8881043b9280 4194304 kworker/u4 127.0.0.1       48792 10.1.2.3        80    SYN_SENT    -> ESTABLISHED 0.271"
        );
        assert_eq!(lines[0].find("LADDR"), lines[1].find("127.0.0.1"));
    }

    #[test]
    fn wide_ipv6() {
        let lines = render(
            OutputOptions {
                wide: true,
                ..Default::default()
            },
            &[v6()],
        );
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
        let lines = render(OutputOptions::default(), &[v6()]);
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
        let lines = render(
            OutputOptions {
                csv: true,
                time: true,
                timestamp: true,
                ..Default::default()
            },
            &[v4(), second],
        );
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
        let lines = render(
            OutputOptions {
                time: true,
                ..Default::default()
            },
            &[v4()],
        );
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
        let lines = render(
            OutputOptions {
                timestamp: true,
                ..Default::default()
            },
            &[v4(), later],
        );
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
        let lines = render(
            OutputOptions {
                time: true,
                timestamp: true,
                ..Default::default()
            },
            &[v4()],
        );
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
        let lines = render(OutputOptions::default(), &[ev]);
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
        let lines = render(OutputOptions::default(), &[ev.clone()]);
        assert!(
            lines[1].ends_with("SYN_SENT    -> ESTABLISHED -"),
            "{}",
            lines[1]
        );
        let csv = render(
            OutputOptions {
                csv: true,
                ..Default::default()
            },
            &[ev],
        );
        assert!(csv[1].ends_with(",SYN_SENT,ESTABLISHED,-"), "{}", csv[1]);
    }

    #[test]
    fn non_ascii_task_names_are_cut_by_character() {
        let mut ev = v4();
        ev.comm = [0; 16];
        let name = "ñandú-srv-x".as_bytes();
        ev.comm[..name.len()].copy_from_slice(name);
        let lines = render(OutputOptions::default(), &[ev]);
        assert!(
            lines[1].contains(" 9376    ñandú-srv- 127.0.0.1 "),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn integer_helpers() {
        let text = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(&|o| push_hex(o, 0)), "0");
        assert_eq!(text(&|o| push_hex(o, 0xf)), "f");
        assert_eq!(text(&|o| push_hex(o, u64::MAX)), "ffffffffffffffff");
        assert_eq!(text(&|o| push_u64(o, 0)), "0");
        assert_eq!(text(&|o| push_u64(o, u64::MAX)), u64::MAX.to_string());
        assert_eq!(text(&|o| push_micros(o, 1_000_000_000, 6)), "1.000000");
        assert_eq!(text(&|o| push_micros(o, 1_234_567, 3)), "1.235");
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
            let lines = render(OutputOptions::default(), std::slice::from_ref(&ev));
            assert!(
                lines[1].ends_with(&format!(" {text}")),
                "{ns}: {}",
                lines[1]
            );
        }
    }
}
