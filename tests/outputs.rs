//! The JSON lines (`-j`) and systemd journal (`-Y`) outputs of the binary,
//! on real loopback traffic made by a thread whose name is chosen to break
//! them, every field of every record checked against what the test did.

use std::collections::HashMap;

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use std::thread::{self, sleep};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tcpstates_testkit::host::root;
use tcpstates_testkit::journal::{Journald, tcpstates_entries, text};
use tcpstates_testkit::net::read_to_eof;
use tcpstates_testkit::tracer::TracerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");
/// A task name with a quote, a newline, a backslash and a byte that is not
/// UTF-8: what JSON and the journal must carry as one valid value.
const HOSTILE: &[u8] = b"q\"n\nb\\x\xff";

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The traffic: in a thread named [`HOSTILE`], a listener, a connection to
/// it closed by the client first, then the listener closed. Returns the
/// listener's port and the client's.
fn hostile_connection() -> (u16, u16) {
    thread::spawn(|| {
        let mut name = HOSTILE.to_vec();
        name.push(0);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes from the buffer we own.
        let rc = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        assert_eq!(rc, 0);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_port = client.local_addr().unwrap().port();
        let (server, _) = listener.accept().unwrap();
        sleep(Duration::from_millis(20));
        drop(client);
        read_to_eof(&server, Some(Duration::from_secs(5)));
        drop((server, listener));
        (port, client_port)
    })
    .join()
    .unwrap()
}

/// Ours with `args`, attached.
fn tracer(args: &[&str]) -> TracerProcess {
    TracerProcess::start(Command::new(BIN).args(args))
}

/// Stops it as Ctrl-C would, which must end it with 0: its stdout lines.
fn stop(tracer: TracerProcess) -> Vec<String> {
    let stopped = tracer.stop(libc::SIGINT);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    stopped.lines
}

/// This process's cgroup v2 path, where cgroup2 is mounted.
fn own_cgroup() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("cgroup2"))
        .then(|| {
            let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            mine.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap()
                .to_owned()
        })
}

/// The network namespace inode of this process.
fn netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").unwrap().ino()
}

/// "2026-11-29T23:59:58.123456Z" as microseconds since the epoch.
fn iso_micros(text: &str) -> u64 {
    let b = text.as_bytes();
    assert_eq!(text.len(), 27, "{text}");
    assert!(
        b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[19] == b'.' && b[26] == b'Z',
        "{text}"
    );
    let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (the inverse of the tool's conversion, written apart).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    secs as u64 * 1_000_000 + n(20..26) as u64
}

/// The transitions each side of the connection makes, in order.
fn expected_lives() -> [(&'static str, Vec<(&'static str, &'static str)>); 3] {
    [
        ("listener", vec![("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")]),
        (
            "client",
            vec![
                ("CLOSE", "SYN_SENT"),
                ("SYN_SENT", "ESTABLISHED"),
                ("ESTABLISHED", "FIN_WAIT1"),
                ("FIN_WAIT1", "FIN_WAIT2"),
                ("FIN_WAIT2", "CLOSE"),
            ],
        ),
        (
            "server",
            vec![
                ("LISTEN", "SYN_RECV"),
                ("SYN_RECV", "ESTABLISHED"),
                ("ESTABLISHED", "CLOSE_WAIT"),
                ("CLOSE_WAIT", "LAST_ACK"),
                ("LAST_ACK", "CLOSE"),
            ],
        ),
    ]
}

/// Which side a record is: by its first transition's shape and ports.
fn side(old: &str, new: &str, lport: u64, port: u16) -> &'static str {
    match (old, new) {
        ("CLOSE", "LISTEN") => "listener",
        ("LISTEN", "CLOSE") if lport == u64::from(port) => "listener",
        _ if lport == u64::from(port) => "server",
        _ => "client",
    }
}

#[test]
fn json_lines_carry_every_field_of_real_traffic() {
    let Some(_root) = root() else { return };
    let start = micros_now();
    let tracer = tracer(&["-j", "-4"]);
    let (port, client_port) = hostile_connection();
    sleep(Duration::from_millis(300));
    let lines = stop(tracer);
    let end = micros_now();

    let me = u64::from(std::process::id());
    let mut lives: HashMap<&str, Vec<Value>> = HashMap::new();
    let mut sockets: HashMap<String, &'static str> = HashMap::new();
    let objects: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for (line, object) in lines.iter().zip(&objects) {
        let o = object
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let keys: Vec<&str> = o.keys().map(String::as_str).collect();
        let mut sorted = vec![
            "time",
            "skaddr",
            "pid",
            "comm",
            "owner_pid",
            "owner_comm",
            "owner_uid",
            "family",
            "laddr",
            "lport",
            "raddr",
            "rport",
            "oldstate",
            "newstate",
            "ms",
            "netns",
            "cgroup",
            "unit",
            "user_unit",
            "container",
            "pod",
        ];
        assert_eq!(line.matches('\n').count(), 0);
        // A socket older than the trace (another test's, say) marks its
        // lower bound, and only then.
        if o.get("ms_at_least").is_some() {
            assert_eq!(o["ms_at_least"], true, "{line}");
            assert!(o["ms"].as_f64().is_some(), "{line}");
            sorted.push("ms_at_least");
        }
        let mut got = keys.clone();
        got.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(got, sorted, "{line}");
        let (lport, rport) = (o["lport"].as_u64().unwrap(), o["rport"].as_u64().unwrap());
        if lport != u64::from(port) && rport != u64::from(port) {
            continue;
        }
        let (old, new) = (
            o["oldstate"].as_str().unwrap(),
            o["newstate"].as_str().unwrap(),
        );
        let skaddr = o["skaddr"].as_str().unwrap();
        let who: &'static str = sockets
            .entry(skaddr.to_owned())
            .or_insert_with(|| side(old, new, lport, port));
        lives.entry(who).or_default().push(object.clone());
    }
    let hostile = String::from_utf8_lossy(HOSTILE);
    for (who, transitions) in expected_lives() {
        let records = &lives[who];
        let got: Vec<(&str, &str)> = records
            .iter()
            .map(|o| {
                (
                    o["oldstate"].as_str().unwrap(),
                    o["newstate"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, transitions, "{who}");
        for (i, o) in records.iter().enumerate() {
            let time = iso_micros(o["time"].as_str().unwrap());
            assert!((start..=end).contains(&time), "{who}: {o}");
            assert!(u64::from_str_radix(o["skaddr"].as_str().unwrap(), 16).unwrap() > 0);
            assert!(o["pid"].is_u64() && o["comm"].is_string(), "{o}");
            // The hostile thread made, accepted and closed every socket:
            // it owns them all, softirq's transitions included.
            assert_eq!(o["owner_pid"].as_u64(), Some(me), "{o}");
            assert_eq!(o["owner_comm"].as_str(), Some(hostile.as_ref()), "{o}");
            assert_eq!(o["owner_uid"].as_u64(), Some(0), "{o}");
            match own_cgroup() {
                Some(path) => assert_eq!(o["cgroup"].as_str(), Some(path.as_str()), "{o}"),
                None => assert!(o["cgroup"].is_null(), "{o}"),
            }
            assert_eq!(o["family"], 4);
            assert_eq!(o["netns"].as_u64(), Some(netns()), "{o}");
            let (lport, rport) = match (who, i) {
                ("listener", _) => (port, 0),
                ("client", 0) => (0, port),
                ("client", _) => (client_port, port),
                ("server", 0) => (port, o["rport"].as_u64().unwrap() as u16),
                _ => (port, client_port),
            };
            assert_eq!(
                (o["lport"].as_u64(), o["rport"].as_u64()),
                (Some(lport.into()), Some(rport.into())),
                "{who}: {o}"
            );
            assert_eq!(o["laddr"], "127.0.0.1", "{o}");
            let raddr = if who == "listener" {
                "0.0.0.0"
            } else {
                "127.0.0.1"
            };
            if !(who == "server" && i == 0) {
                assert_eq!(o["raddr"], raddr, "{o}");
            }
            if i == 0 {
                assert!(
                    o["ms"].is_null(),
                    "a first transition's time is unknown: {o}"
                );
            } else {
                let ms = o["ms"].as_f64().unwrap_or_else(|| panic!("{o}"));
                assert!((0.0..10_000.0).contains(&ms), "{o}");
            }
        }
        // listen() and connect() run in the hostile thread of this process.
        if who != "server" {
            assert_eq!(records[0]["pid"].as_u64(), Some(me), "{who}");
            assert_eq!(records[0]["comm"].as_str(), Some(hostile.as_ref()), "{who}");
        }
    }
    // The client's FIN_WAIT1 came after the 20 ms hold.
    assert!(lives["client"][2]["ms"].as_f64().unwrap() >= 20.0);
}

#[test]
fn journal_entries_carry_bcc_fields_and_ours() {
    let Some(_root) = root() else { return };
    let _journald = Journald::get();
    let start = micros_now();
    let tracer = tracer(&["-Y", "-4"]);
    let (port, client_port) = hostile_connection();
    sleep(Duration::from_millis(300));
    let lines = stop(tracer);
    let end = micros_now();
    // The table still goes to stdout, as BCC's -Y does.
    assert!(lines[0].starts_with("SKADDR "), "{}", lines[0]);

    let read = || -> Vec<Value> {
        tcpstates_entries(start / 1_000_000)
            .into_iter()
            .filter(|e| {
                [
                    &e["OBJECT_TCP_SOURCE_PORT"],
                    &e["OBJECT_TCP_DESTINATION_PORT"],
                ]
                .iter()
                .any(|p| text(p).as_deref() == Some(&port.to_string()))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut entries = read();
    while entries.len() < 12 && Instant::now() < deadline {
        sleep(Duration::from_millis(100));
        entries = read();
    }
    assert_eq!(entries.len(), 12, "{entries:#?}");

    let me = std::process::id().to_string();
    let hostile = String::from_utf8_lossy(HOSTILE).into_owned();
    let mut by_socket: HashMap<String, Vec<&Value>> = HashMap::new();
    for e in &entries {
        by_socket
            .entry(text(&e["TCPSTATES_SKADDR"]).unwrap())
            .or_default()
            .push(e);
    }
    let mut seen = Vec::new();
    for records in by_socket.values() {
        let f = |e: &Value, k: &str| text(&e[k]);
        let first = records[0];
        let (old, new) = (
            f(first, "OBJECT_TCP_OLD_STATE").unwrap(),
            f(first, "OBJECT_TCP_NEW_STATE").unwrap(),
        );
        let lport: u64 = f(first, "OBJECT_TCP_SOURCE_PORT").unwrap().parse().unwrap();
        let who = side(&old, &new, lport, port);
        let expected = expected_lives()
            .into_iter()
            .find(|(w, _)| *w == who)
            .unwrap()
            .1;
        let got: Vec<(String, String)> = records
            .iter()
            .map(|e| {
                (
                    f(e, "OBJECT_TCP_OLD_STATE").unwrap(),
                    f(e, "OBJECT_TCP_NEW_STATE").unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want, "{who}");
        seen.push(who);
        for (i, e) in records.iter().enumerate() {
            let get = |k: &str| f(e, k).unwrap_or_else(|| panic!("no {k}: {e}"));
            assert_eq!(get("PRIORITY"), "5");
            assert_eq!(get("SYSLOG_IDENTIFIER"), "tcpstates");
            let (sport, dport) = match (who, i) {
                ("listener", _) => (port, 0),
                ("client", 0) => (0, port),
                ("client", _) => (client_port, port),
                ("server", 0) => (port, get("OBJECT_TCP_DESTINATION_PORT").parse().unwrap()),
                _ => (port, client_port),
            };
            assert_eq!(get("OBJECT_TCP_SOURCE_PORT"), sport.to_string(), "{e}");
            assert_eq!(get("OBJECT_TCP_DESTINATION_PORT"), dport.to_string(), "{e}");
            assert_eq!(get("OBJECT_IPV4_SOURCE_ADDRESS"), "127.0.0.1");
            let daddr = get("OBJECT_IPV4_DESTINATION_ADDRESS");
            assert!(e["OBJECT_IPV6_SOURCE_ADDRESS"].is_null(), "{e}");
            let comm = get("TCPSTATES_COMM");
            assert_eq!(
                get("MESSAGE"),
                format!(
                    "{comm} 127.0.0.1 {sport} → {daddr} {dport} {} → {}",
                    get("OBJECT_TCP_OLD_STATE"),
                    get("OBJECT_TCP_NEW_STATE")
                )
            );
            let pid = get("OBJECT_PID");
            assert!(pid.parse::<u32>().is_ok(), "{e}");
            // Run as root: OBJECT_COMM is journald's to add (BCC's rule).
            if let Some(comm) = f(e, "OBJECT_COMM") {
                let proc_comm =
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                assert_eq!(comm, proc_comm.trim_end(), "journald's own: {e}");
            }
            let usec: u64 = get("TCPSTATES_REALTIME_USEC").parse().unwrap();
            assert!((start..=end).contains(&usec), "{e}");
            assert_eq!(get("TCPSTATES_NETNS"), netns().to_string());
            assert_eq!(get("TCPSTATES_OWNER_PID"), me);
            assert_eq!(get("TCPSTATES_OWNER_COMM"), hostile);
            assert_eq!(get("TCPSTATES_OWNER_UID"), "0");
            assert_eq!(f(e, "TCPSTATES_CGROUP"), own_cgroup(), "{e}");
            if i == 0 {
                assert!(e["OBJECT_TCP_SPAN_TIME"].is_null(), "{e}");
                assert_eq!(get("TCPSTATES_SPAN_NS"), "unknown");
            } else {
                let us: u64 = get("OBJECT_TCP_SPAN_TIME").parse().unwrap();
                let ns: u64 = get("TCPSTATES_SPAN_NS").parse().unwrap();
                assert_eq!(us, ns / 1000, "{e}");
            }
        }
        if who != "server" {
            assert_eq!(f(first, "OBJECT_PID").unwrap(), me, "{who}");
            assert_eq!(f(first, "TCPSTATES_COMM").unwrap(), hostile, "{who}");
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, ["client", "listener", "server"]);
}

#[test]
fn without_a_journal_it_says_which_socket_and_exits_1() {
    let out = Command::new(BIN)
        .arg("-Y")
        .env("TCPSTATES_JOURNAL_SOCKET", "/nonexistent/journal/socket")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "tcpstates: -Y: no systemd journal listens at /nonexistent/journal/socket: "
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing traced");
}

/// --stuck in every output: a CLOSE_WAIT made before the tracers (its
/// client shut its side down), left there. Each output reports it once,
/// with this process as owner, its addresses and a lower bound of at least
/// the threshold: the table and CSV as `CLOSE_WAIT -> STUCK >ms`, JSON with
/// `"stuck": true`, the journal with TCPSTATES_STUCK=1, the summary's text
/// and JSON lists with each print. The live connection beside it is not
/// stuck (ESTABLISHED is not watched).
#[test]
fn stuck_sockets_in_every_output() {
    let Some(_root) = root() else { return };
    let _journald = Journald::get();
    let start = micros_now();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_eof(&server, Some(Duration::from_secs(5)));
    let live = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (live_server, _) = listener.accept().unwrap();
    let peer = client.local_addr().unwrap().port();
    let stuck = ["--stuck", "1", "-4", "-L", &port.to_string()];
    let runs: Vec<(&str, TracerProcess)> = [
        ("table", vec!["-x"]),
        ("csv", vec!["--csv"]),
        ("json", vec!["-j"]),
        ("journal", vec!["-Y"]),
        ("summary", vec!["-S", "1"]),
        ("summary-json", vec!["-S", "1", "-j"]),
    ]
    .into_iter()
    .map(|(name, args)| {
        let args: Vec<&str> = args.iter().chain(stuck.iter()).copied().collect();
        (name, tracer(&args))
    })
    .collect();
    sleep(Duration::from_millis(3500));
    let me = std::process::id().to_string();
    for (name, run) in runs {
        let lines = stop(run);
        let text = lines.join("\n");
        let reported: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(&peer.to_string()))
            .collect();
        match name {
            "table" | "csv" | "journal" => {
                assert_eq!(reported.len(), 1, "{name}: {text}");
                let row: Vec<&str> = if name == "csv" {
                    reported[0].split(',').collect()
                } else {
                    reported[0].split_whitespace().collect()
                };
                // CSV has no arrow column.
                let state: Vec<&str> = match name {
                    "csv" => vec!["CLOSE_WAIT", "STUCK"],
                    _ => vec!["CLOSE_WAIT", "->", "STUCK"],
                };
                let at = row.iter().position(|f| *f == "CLOSE_WAIT").expect(name);
                assert_eq!(&row[at..at + state.len()], state, "{name}: {text}");
                let ms: f64 = row[at + state.len()]
                    .strip_prefix('>')
                    .unwrap_or_else(|| panic!("{name}: {text}"))
                    .parse()
                    .unwrap();
                assert!(ms >= 1000.0, "{name}: {text}");
                assert!(row.contains(&me.as_str()), "{name}: no owner: {text}");
            }
            "json" => {
                assert_eq!(reported.len(), 1, "{text}");
                let v: Value = serde_json::from_str(reported[0]).unwrap();
                assert_eq!(v["stuck"], true, "{v}");
                assert_eq!(
                    (v["oldstate"].as_str(), v["newstate"].as_str()),
                    (Some("CLOSE_WAIT"), Some("CLOSE_WAIT"))
                );
                assert_eq!(
                    (v["lport"].as_u64(), v["rport"].as_u64()),
                    (Some(port.into()), Some(peer.into()))
                );
                assert_eq!(v["ms_at_least"], true, "{v}");
                assert!(v["ms"].as_f64().unwrap() >= 1000.0, "{v}");
                assert_eq!(
                    v["owner_pid"].as_u64(),
                    Some(std::process::id().into()),
                    "{v}"
                );
            }
            "summary" => {
                // Each print lists it, from the first at 1 s (its bound
                // then just over the threshold) to the last.
                let headings = lines
                    .iter()
                    .filter(|l| l.starts_with("Stuck sockets (over 1 s in one state): 1"))
                    .count();
                assert!(headings >= 2 && reported.len() == headings, "{text}");
                for line in reported {
                    assert!(line.trim_start().starts_with("CLOSE_WAIT"), "{line}");
                    assert!(
                        line.contains(&format!("127.0.0.1:{port} -> 127.0.0.1:{peer}")),
                        "{line}"
                    );
                    assert!(
                        line.contains(&format!(" {me} ")) && line.contains(" >"),
                        "{line}"
                    );
                }
            }
            "summary-json" => {
                assert!(lines.len() >= 2, "{text}");
                for line in &lines {
                    let v: Value = serde_json::from_str(line).unwrap();
                    let stuck = v["stuck"].as_array().unwrap_or_else(|| panic!("{v}"));
                    assert_eq!(stuck.len(), 1, "{v}");
                    assert_eq!(stuck[0]["state"], "CLOSE_WAIT");
                    assert_eq!(stuck[0]["rport"].as_u64(), Some(peer.into()));
                    assert_eq!(stuck[0]["pid"].as_u64(), Some(std::process::id().into()));
                    assert_eq!(stuck[0]["seconds_at_least"], true);
                    assert!(v["sockets"]["CLOSE_WAIT"].as_u64().unwrap() >= 1, "{v}");
                }
            }
            _ => unreachable!(),
        }
    }
    // The journal has the entry, marked.
    let entries: Vec<Value> = tcpstates_entries(start / 1_000_000)
        .into_iter()
        .filter(|e| text(&e["TCPSTATES_STUCK"]).as_deref() == Some("1"))
        .filter(|e| text(&e["OBJECT_TCP_DESTINATION_PORT"]) == Some(peer.to_string()))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let message = text(&entries[0]["MESSAGE"]).unwrap();
    assert!(message.contains("CLOSE_WAIT stuck for >"), "{message}");
    drop((client, server, live, live_server, listener));
}
