//! Formatting events as text: BCC tcpstates.py's columns, or CSV.
//!
//! Pure: writes to any `io::Write`, with the wall clock passed in, so every
//! mode is tested without root. The header and the rows come from one list
//! of columns.

use std::io::Write;
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
        let csv = self.opts.csv;
        self.write_line(out, |column, out| match column.field {
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
            Field::Comm => push_comm(out, ev),
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

    /// Lays out one line at the end of `out`: each column's text (appended
    /// by `cell`) padded or cut to its width, separated by a space (or a
    /// comma in CSV). No allocation once `out` has grown to a batch.
    fn write_line<F>(&self, out: &mut Vec<u8>, mut cell: F)
    where
        F: FnMut(&Column, &mut Vec<u8>),
    {
        let last = self.columns.len() - 1;
        for (i, column) in self.columns.iter().enumerate() {
            let start = out.len();
            cell(column, out);
            if self.opts.csv {
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

fn push_spaces(out: &mut Vec<u8>, n: usize) {
    const SPACES: [u8; 64] = [b' '; 64];
    let mut left = n;
    while left > 0 {
        let chunk = left.min(SPACES.len());
        out.extend_from_slice(&SPACES[..chunk]);
        left -= chunk;
    }
}

/// The task name, as `Event::comm` gives it, checked with the cheaper
/// ASCII test first (nearly every name is ASCII).
fn push_comm(out: &mut Vec<u8>, ev: &Event) {
    let name = ev.comm_bytes();
    if name.is_ascii() {
        out.extend_from_slice(name);
    } else {
        out.extend_from_slice(ev.comm().as_bytes());
    }
}

/// "00" to "99".
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Decimal digits of `n`, two at a time.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        at -= 2;
        let pair = n as usize * 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// Lower-case hex digits of `n`, without leading zeros.
fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[(n >> ((15 - i) * 4)) as usize & 0xf];
    }
    let nibbles = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    out.extend_from_slice(&digits[16 - nibbles..]);
}

fn push_ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            push_u64(out, a.into());
            for octet in [b, c, d] {
                out.push(b'.');
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
