//! Close records (`-C`) from the binary, on real loopback traffic: its JSON
//! lines against libbpf-tools' `tcplife` (Debian's /usr/sbin/tcplife) on
//! the same connections, its table, and its journal entries read back from
//! a real journald. The causes themselves are the
//! kernel matrix's tests (tests/trace/closes.rs).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use serde_json::Value;
use tcpstates_testkit::host::root;
use tcpstates_testkit::journal::{Journald, tcpstates_entries, text};
use tcpstates_testkit::net::{loopback, read_to_eof};
use tcpstates_testkit::tracer::TracerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");
const TCPLIFE: &str = "/usr/sbin/tcplife";

/// What each side sends (tcplife prints KiB with two decimals, and counts
/// the SYN and FIN as bytes).
const CLIENT_SENDS: usize = 10 * 1024 + 500;
const SERVER_SENDS: usize = 3 * 1024 + 500;

/// One connection: data each way, then `client_first` closes first.
/// Returns the client's and the server's local ports.
fn exchange(listener: &TcpListener, client_first: bool) -> (u16, u16) {
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(&vec![1; CLIENT_SENDS]).unwrap();
    server.read_exact(&mut vec![0; CLIENT_SENDS]).unwrap();
    server.write_all(&vec![2; SERVER_SENDS]).unwrap();
    client.read_exact(&mut vec![0; SERVER_SENDS]).unwrap();
    let ports = (
        client.local_addr().unwrap().port(),
        server.local_addr().unwrap().port(),
    );
    let (first, second) = if client_first {
        (client, server)
    } else {
        (server, client)
    };
    drop(first);
    read_to_eof(&second, Some(Duration::from_secs(5)));
    drop(second);
    ports
}

/// A tcplife row: PID, local and remote address, TX_KB, RX_KB (KiB, two
/// decimals).
type Row = (u32, IpAddr, IpAddr, f64, f64);

/// tcplife's rows, by (local port, remote port).
fn tcplife_rows(lines: &[String]) -> HashMap<(u16, u16), Row> {
    lines
        .iter()
        .skip_while(|l| !l.starts_with("PID"))
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS
            let n = f.len();
            (n >= 9).then(|| {
                let port = |s: &str| s.parse::<u16>().unwrap();
                (
                    (port(f[n - 6]), port(f[n - 4])),
                    (
                        f[0].parse().unwrap(),
                        f[n - 7].parse().unwrap(),
                        f[n - 5].parse().unwrap(),
                        f[n - 3].parse().unwrap(),
                        f[n - 2].parse().unwrap(),
                    ),
                )
            })
        })
        .collect()
}

/// On the same connections, where tcplife reports one (it leaves out
/// listeners, whose start it does not count), its PID, addresses and bytes
/// agree with ours; ours are exact bytes, its KiB (with the SYN and FIN).
/// Both name the owner when the client closes first; when the server
/// closes first, tcplife names the task on the CPU at CLOSE (softirq),
/// ours the process that holds the socket.
#[test]
fn agrees_with_tcplife_where_it_reports() {
    let Some(_root) = root() else { return };
    assert!(
        std::path::Path::new(TCPLIFE).exists(),
        "{TCPLIFE} missing: scripts/setup --test installs libbpf-tools"
    );
    let ours = TracerProcess::start(Command::new(BIN).args(["-C", "-j"]));
    let theirs = TracerProcess::start_with_header(
        Command::new("stdbuf").args(["-oL", TCPLIFE, "-w"]),
        "PID",
    );
    let me = std::process::id();
    let mut made = Vec::new();
    for v6 in [false, true] {
        let listener = TcpListener::bind(SocketAddr::new(loopback(v6), 0)).unwrap();
        for client_first in [true, true, false] {
            made.push((v6, client_first, exchange(&listener, client_first)));
        }
    }
    sleep(Duration::from_millis(300));
    let ours = ours.interrupt_and_read();
    let theirs = theirs.stop(libc::SIGINT).lines;
    let records: Vec<Value> = ours
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let rows = tcplife_rows(&theirs);
    for (v6, client_first, (client_port, server_port)) in made {
        let lo = loopback(v6).to_string();
        for (lport, rport, sent, received) in [
            (client_port, server_port, CLIENT_SENDS, SERVER_SENDS),
            (server_port, client_port, SERVER_SENDS, CLIENT_SENDS),
        ] {
            let found: Vec<&Value> = records
                .iter()
                .filter(|r| r["lport"] == lport && r["rport"] == rport)
                .collect();
            assert_eq!(found.len(), 1, "one record of {lport}->{rport}:\n{ours}");
            let r = found[0];
            assert_eq!(
                (r["laddr"].as_str(), r["raddr"].as_str()),
                (Some(&*lo), Some(&*lo))
            );
            assert_eq!(r["owner_pid"], me, "{r}");
            assert_eq!(
                (r["bytes_acked"].as_u64(), r["bytes_received"].as_u64()),
                (Some(sent as u64), Some(received as u64)),
                "{r}"
            );
            assert_eq!(r["cause"], "normal", "{r}");
            let row = rows.get(&(lport, rport)).unwrap_or_else(|| {
                panic!("tcplife has no {lport}->{rport}:\n{}", theirs.join("\n"))
            });
            assert_eq!(
                (row.1.to_string(), row.2.to_string()),
                (lo.clone(), lo.clone())
            );
            // Theirs count the SYN and FINs too, and print two decimals.
            let kib = |bytes: usize| bytes as f64 / 1024.0;
            assert!(
                (row.3 - kib(sent)).abs() < 0.01 && (row.4 - kib(received)).abs() < 0.01,
                "tcplife {row:?}, ours {sent} and {received} bytes"
            );
            let closed_second = (lport == server_port) == client_first;
            if lport == client_port || closed_second {
                assert_eq!(row.0, me, "tcplife's PID for {lport}->{rport}: {row:?}");
            }
        }
    }
}

/// The table: one row per socket, the header's columns, a refused
/// connect's cause and error-free row.
#[test]
fn the_table_has_a_row_per_socket() {
    let Some(_root) = root() else { return };
    let tracer = TracerProcess::start(Command::new(BIN).args(["-C", "-w"]));
    let closed_port = {
        let gone = TcpListener::bind("[::1]:0").unwrap();
        gone.local_addr().unwrap().port()
    };
    TcpStream::connect(("::1", closed_port)).unwrap_err();
    sleep(Duration::from_millis(200));
    let out = tracer.interrupt_and_read();
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "SKADDR",
            "PID",
            "COMM",
            "IP",
            "LADDR",
            "LPORT",
            "RADDR",
            "RPORT",
            "ROLE",
            "CAUSE",
            "MS",
            "TX_B",
            "RX_B",
            "SEGS_OUT",
            "SEGS_IN",
            "RETRANS",
            "SRTT_US",
            "MINRTT_US",
            "STATES"
        ]
    );
    let row: Vec<&str> = lines
        .find(|l| l.split_whitespace().nth(7) == Some(&*closed_port.to_string()))
        .unwrap_or_else(|| panic!("no row for port {closed_port}:\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], std::process::id().to_string());
    assert_eq!(&row[3..5], ["6", "::1"]);
    assert_eq!(&row[8..10], ["client", "refused"]);
    assert_eq!(&row[11..13], ["0", "0"], "no data");
    assert_eq!(
        &row[16..],
        ["-", "-", "CLOSE:-", row[19], "CLOSE"],
        "no RTT sample"
    );
    assert!(row[19].starts_with("SYN_SENT:"), "{row:?}");
}

/// `-C -Y`: one journal entry per socket, read back from a real journald,
/// with the cause, the role and the data bytes; a failure at warning.
#[test]
fn journal_entries_per_socket() {
    let Some(_root) = root() else { return };
    let _journald = Journald::get();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let tracer = TracerProcess::start(Command::new(BIN).args(["-C", "-Y", "-4"]));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (client_port, _) = exchange(&listener, true);
    drop(listener);
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = gone.local_addr().unwrap().port();
    drop(gone);
    TcpStream::connect(("127.0.0.1", refused_port)).unwrap_err();
    sleep(Duration::from_millis(300));
    tracer.interrupt_and_read();
    let field = |e: &Value, k: &str| text(&e[k]).unwrap_or_default();
    let ours = |entries: &[Value]| -> Vec<Value> {
        entries
            .iter()
            .filter(|e| {
                let ports = [
                    field(e, "OBJECT_TCP_SOURCE_PORT"),
                    field(e, "OBJECT_TCP_DESTINATION_PORT"),
                ];
                ports.contains(&port.to_string()) || ports.contains(&refused_port.to_string())
            })
            .cloned()
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut entries = ours(&tcpstates_entries(since));
    while entries.len() < 5 && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(100));
        entries = ours(&tcpstates_entries(since));
    }
    // The client, the server, the two listeners, the refused client.
    assert_eq!(entries.len(), 5, "{entries:#?}");
    let by_role_and_cause: HashMap<(String, String), &Value> = entries
        .iter()
        .map(|e| ((field(e, "TCPSTATES_ROLE"), field(e, "TCPSTATES_CAUSE")), e))
        .collect();
    let client = by_role_and_cause[&("client".into(), "normal".into())];
    assert_eq!(
        field(client, "OBJECT_TCP_SOURCE_PORT"),
        client_port.to_string()
    );
    assert_eq!(field(client, "TCPSTATES_CAUSE_DETAIL"), "local-first");
    assert_eq!(
        field(client, "TCPSTATES_BYTES_ACKED"),
        CLIENT_SENDS.to_string()
    );
    assert_eq!(
        field(client, "TCPSTATES_BYTES_RECEIVED"),
        SERVER_SENDS.to_string()
    );
    assert_eq!(
        field(client, "TCPSTATES_OWNER_PID"),
        std::process::id().to_string()
    );
    assert_eq!(field(client, "PRIORITY"), "5");
    assert!(
        field(client, "TCPSTATES_STATES").starts_with("CLOSE:- SYN_SENT:"),
        "{client:#?}"
    );
    let server = by_role_and_cause[&("server".into(), "normal".into())];
    assert_eq!(field(server, "TCPSTATES_CAUSE_DETAIL"), "peer-first");
    assert_eq!(
        field(server, "TCPSTATES_BYTES_RECEIVED"),
        CLIENT_SENDS.to_string()
    );
    assert!(by_role_and_cause.contains_key(&("listener".into(), "listener".into())));
    let refused = by_role_and_cause[&("client".into(), "refused".into())];
    assert_eq!(field(refused, "TCPSTATES_ERROR"), "ECONNREFUSED");
    assert_eq!(field(refused, "PRIORITY"), "4", "a failure is a warning");
    assert!(
        field(refused, "MESSAGE").contains(" client refused "),
        "{refused:#?}"
    );
}
