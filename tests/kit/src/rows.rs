//! The tracer's output as data: its table rows (default and `-w`) and its
//! `--report kv` counters line. The one parser the tests and the
//! benchmark share.

use std::collections::HashMap;

/// One row of the table, split into columns. Parsed from the right: the
/// task name, the only column that may hold spaces, is what is left.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    /// SKADDR, as printed (hex).
    pub skaddr: String,
    /// C-PID.
    pub pid: String,
    /// C-COMM.
    pub comm: String,
    /// LADDR.
    pub laddr: String,
    /// LPORT.
    pub lport: u16,
    /// RADDR.
    pub raddr: String,
    /// RPORT.
    pub rport: u16,
    /// OLDSTATE.
    pub old: String,
    /// NEWSTATE.
    pub new: String,
    /// MS, as printed ('-' when unknown).
    pub ms: String,
}

impl Row {
    /// A row of the default table, or of `-w`'s (one more column, IP), or
    /// None for a line that is not a row (the header, say).
    pub fn parse(line: &str, wide: bool) -> Option<Row> {
        let t: Vec<&str> = line.split_whitespace().collect();
        let n = t.len();
        let columns = 11 + usize::from(wide);
        if n < columns || t[n - 3] != "->" {
            return None;
        }
        Some(Row {
            skaddr: t[0].into(),
            pid: t[1].into(),
            comm: t[2..n - 8 - usize::from(wide)].join(" "),
            laddr: t[n - 8].into(),
            lport: t[n - 7].parse().ok()?,
            raddr: t[n - 6].into(),
            rport: t[n - 5].parse().ok()?,
            old: t[n - 4].into(),
            new: t[n - 2].into(),
            ms: t[n - 1].into(),
        })
    }

    /// Whether either end of the socket is `port`.
    pub fn involves(&self, port: u16) -> bool {
        self.lport == port || self.rport == port
    }
}

/// The local and remote ports of a table row of any layout (default, `-w`,
/// `-x`, with time columns), found from the `->` column: LPORT RADDR RPORT
/// OLDSTATE stand right before it. None for a line that is not a row.
pub fn table_ports(line: &str) -> Option<(u16, u16)> {
    let t: Vec<&str> = line.split_whitespace().collect();
    let arrow = t.iter().position(|&c| c == "->")?;
    if arrow < 4 {
        return None;
    }
    Some((t[arrow - 4].parse().ok()?, t[arrow - 2].parse().ok()?))
}

/// The local and remote ports of a JSON line (`-j`), or None for another
/// line. Reads the two numbers where they stand, without a JSON parser (the
/// benchmark counts millions of lines; the tests parse them whole).
pub fn json_ports(line: &str) -> Option<(u16, u16)> {
    let number = |key: &str| -> Option<u16> {
        let at = line.find(key)? + key.len();
        let digits = line[at..].split(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse().ok()
    };
    if !line.starts_with('{') {
        return None;
    }
    Some((number("\"lport\":")?, number("\"rport\":")?))
}

/// The local and remote ports of a CSV line (`-s`, with or without `-x`),
/// found from the two state columns: LPORT RADDR RPORT stand right before
/// them. None for a line that is not a row (the header).
pub fn csv_ports(line: &str) -> Option<(u16, u16)> {
    let is_state = |f: &str| {
        !f.is_empty()
            && f.bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
    };
    let t: Vec<&str> = line.split(',').collect();
    let old = (3..t.len().saturating_sub(1)).find(|&i| {
        is_state(t[i]) && is_state(t[i + 1]) && t[i].bytes().any(|b| b.is_ascii_uppercase())
    })?;
    Some((t[old - 3].parse().ok()?, t[old - 1].parse().ok()?))
}

/// The local and remote ports of a row in any event output (the table in
/// any layout, CSV, JSON), or None for a line that is not a row.
pub fn any_ports(line: &str) -> Option<(u16, u16)> {
    json_ports(line)
        .or_else(|| table_ports(line))
        .or_else(|| csv_ports(line))
}

/// What identifies a row's transition in any event output: the socket's
/// address and the two states, as printed. None for a line that is not a
/// row.
pub fn transition_key(line: &str) -> Option<(String, String, String)> {
    let is_skaddr = |t: &str| t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit());
    if line.starts_with('{') {
        let text = |key: &str| -> Option<String> {
            let at = line.find(key)? + key.len();
            let rest = &line[at..];
            let end = rest.find([',', '}'])?;
            Some(rest[..end].trim_matches('"').to_owned())
        };
        return Some((
            text("\"skaddr\":")?,
            text("\"oldstate\":")?,
            text("\"newstate\":")?,
        ));
    }
    if line.contains("->") {
        let t: Vec<&str> = line.split_whitespace().collect();
        let arrow = t.iter().position(|&c| c == "->")?;
        let skaddr = t.iter().find(|c| is_skaddr(c))?;
        return Some((
            (*skaddr).to_owned(),
            t.get(arrow.checked_sub(1)?)?.to_string(),
            t.get(arrow + 1)?.to_string(),
        ));
    }
    let t: Vec<&str> = line.split(',').collect();
    let skaddr = t.iter().find(|c| is_skaddr(c))?;
    let is_state = |f: &str| {
        !f.is_empty()
            && f.bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
            && f.bytes().any(|b| b.is_ascii_uppercase())
    };
    let old = (0..t.len().saturating_sub(1)).find(|&i| is_state(t[i]) && is_state(t[i + 1]))?;
    Some((
        (*skaddr).to_owned(),
        t[old].to_owned(),
        t[old + 1].to_owned(),
    ))
}

/// The counters of a `tcpstates: key=value ...` line (`--report kv`), or
/// None for another line.
pub fn counters(line: &str) -> Option<HashMap<String, u64>> {
    let pairs = line.strip_prefix("tcpstates: matched=")?;
    format!("matched={pairs}")
        .split(' ')
        .map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The counters of the last `--report kv` line in `stderr`.
pub fn last_counters(stderr: &str) -> Option<HashMap<String, u64>> {
    stderr.lines().rev().find_map(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_keyed_alike_in_every_output() {
        let key = Some((
            "ffff8881043b9280".to_owned(),
            "SYN_SENT".to_owned(),
            "ESTABLISHED".to_owned(),
        ));
        let table = "ffff8881043b9280 9376    python3    127.0.0.1       48792 10.1.2.3        80    SYN_SENT    -> ESTABLISHED 0.271";
        let timed = "12:00:01 ffff8881043b9280 9376 python3 127.0.0.1 48792 10.1.2.3 80 SYN_SENT -> ESTABLISHED 0.271";
        let csv = "ffff8881043b9280,9376,python3,4,127.0.0.1,48792,10.1.2.3,80,SYN_SENT,ESTABLISHED,0.271";
        let json = r#"{"time":"2026-01-01T00:00:00Z","skaddr":"ffff8881043b9280","pid":1,"comm":"x","oldstate":"SYN_SENT","newstate":"ESTABLISHED","ms":0.271}"#;
        for line in [table, timed, csv, json] {
            assert_eq!(transition_key(line), key, "{line}");
        }
        assert_eq!(
            transition_key("SKADDR C-PID C-COMM LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS"),
            None
        );
    }

    #[test]
    fn csv_rows_give_their_ports() {
        let plain = "ffff8881043b9280,9376,python3,4,127.0.0.1,48792,10.1.2.3,80,SYN_SENT,ESTABLISHED,0.271";
        assert_eq!(csv_ports(plain), Some((48792, 80)));
        let extended = "ffff8881043b9280,9376,\"a,b\",9376,\"a,b\",0,4,::1,443,::1,50000,FIN_WAIT1,FIN_WAIT2,-,4026531840,/user.slice";
        assert_eq!(csv_ports(extended), Some((443, 50000)));
        assert_eq!(
            csv_ports("SKADDR,C-PID,C-COMM,IP,LADDR,LPORT,RADDR,RPORT,OLDSTATE,NEWSTATE,MS"),
            None
        );
        assert_eq!(any_ports(plain), Some((48792, 80)));
    }

    #[test]
    fn rows_parse_from_the_right() {
        let line = "ffff8881043b9280 9376    my prog    127.0.0.1       48792 10.1.2.3        80    SYN_SENT    -> ESTABLISHED 0.271";
        let row = Row::parse(line, false).unwrap();
        assert_eq!(row.comm, "my prog");
        assert_eq!((row.lport, row.rport), (48792, 80));
        assert_eq!(
            (row.old.as_str(), row.new.as_str(), row.ms.as_str()),
            ("SYN_SENT", "ESTABLISHED", "0.271")
        );
        assert!(row.involves(80) && !row.involves(81));
        let wide = "ffff8881043b9280 1 python3 6 ::1 48792 ::1 80 LISTEN -> CLOSE -";
        let row = Row::parse(wide, true).unwrap();
        assert_eq!((row.comm.as_str(), row.laddr.as_str()), ("python3", "::1"));
        assert_eq!(
            Row::parse(
                "SKADDR C-PID C-COMM LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS",
                false
            ),
            None
        );
    }

    #[test]
    fn json_lines_ports() {
        let line = r#"{"time":"x","comm":"a","lport":48792,"raddr":"::1","rport":80,"ms":null}"#;
        assert_eq!(json_ports(line), Some((48792, 80)));
        assert_eq!(json_ports("SKADDR C-PID"), None);
        let extended = "ffff8881234abcd0 1234    curl       1234    curl       0     \
            127.0.0.1       41234 127.0.0.1       8080  SYN_SENT    -> ESTABLISHED 0.061     \
            4026531840 /user.slice";
        assert_eq!(table_ports(extended), Some((41234, 8080)));
        assert_eq!(
            table_ports("SKADDR C-PID C-COMM LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS"),
            None
        );
    }

    #[test]
    fn counters_line() {
        let c = counters("tcpstates: matched=10 printed=7 ring_drops=0 sockets_tracked=9").unwrap();
        assert_eq!(
            (c["matched"], c["printed"], c["sockets_tracked"]),
            (10, 7, 9)
        );
        assert_eq!(
            counters("tcpstates: 10 transitions matched, 7 printed"),
            None
        );
        let stderr = "Tracing\ntcpstates: matched=1 printed=1\ntcpstates: matched=2 printed=2\n";
        assert_eq!(last_counters(stderr).unwrap()["matched"], 2);
    }
}
