//! Least privilege: the binary, run as nobody holding only CAP_BPF and
//! CAP_PERFMON (what this 6.18 kernel needs), traces in event mode and in
//! summary mode; with either capability dropped it stops with a one-line
//! message that names the one missing.

use std::time::{Duration, Instant};

use tcpstates_testkit::host::root;
use tcpstates_testkit::net::{connect, read_to_eof};
use tcpstates_testkit::process::{PublicCopy, as_nobody_with};
use tcpstates_testkit::tracer::TracerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The tracer as nobody with CAP_BPF and CAP_PERFMON, attached.
fn unprivileged(copy: &PublicCopy, args: &[&str]) -> TracerProcess {
    let child = TracerProcess::start(as_nobody_with(&["bpf", "perfmon"], &copy.bin).args(args));
    // It runs as nobody, with those two capabilities and no others.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .unwrap()
    };
    assert_eq!(field("Uid:"), "65534");
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    assert_eq!(eff, (1 << CAP_BPF) | (1 << CAP_PERFMON), "{status}");
    child
}

/// One connection the client closes first; its listener's port.
fn one_connection(v6: bool) -> u16 {
    let conn = connect(v6);
    drop(conn.client);
    read_to_eof(&conn.server, Some(Duration::from_secs(5)));
    conn.port
}

#[test]
fn event_mode_as_nobody_with_two_capabilities() {
    let Some(_root) = root() else { return };
    let copy = PublicCopy::of(BIN, "tcpstates").unwrap();
    let mut tracer = unprivileged(&copy, &["-w"]);
    let port = one_connection(true).to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = tracer.next_line(left) else {
            break;
        };
        // Client and server, five transitions each.
        if line.split_whitespace().any(|col| col == port) {
            seen.push(line);
        }
    }
    let stopped = tracer.stop(libc::SIGINT);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    assert_eq!(seen.len(), 10, "{seen:#?}");
}

#[test]
fn summary_mode_as_nobody_with_two_capabilities() {
    let Some(_root) = root() else { return };
    let copy = PublicCopy::of(BIN, "tcpstates").unwrap();
    // The port is known only once the listener is up, after the tracer
    // started: it keeps every IPv4 socket, and the connection's
    // transitions must all be among them.
    let tracer = unprivileged(&copy, &["-S", "-j", "-4"]);
    one_connection(false);
    std::thread::sleep(Duration::from_millis(100));
    let out = tracer.interrupt_and_read();
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let count = |old: &str, new: &str| {
        summary["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["old"] == old && t["new"] == new)
            .map_or(0, |t| t["count"].as_u64().unwrap())
    };
    for (old, new) in [
        ("CLOSE", "LISTEN"),
        ("CLOSE", "SYN_SENT"),
        ("SYN_SENT", "ESTABLISHED"),
        ("LISTEN", "SYN_RECV"),
        ("SYN_RECV", "ESTABLISHED"),
        ("ESTABLISHED", "FIN_WAIT1"),
        ("ESTABLISHED", "CLOSE_WAIT"),
        ("LAST_ACK", "CLOSE"),
    ] {
        assert!(count(old, new) >= 1, "no {old} -> {new}: {out}");
    }
}

#[test]
fn either_capability_missing_is_named() {
    let Some(_root) = root() else { return };
    let copy = PublicCopy::of(BIN, "tcpstates").unwrap();
    for (caps, missing) in [
        (&["bpf"][..], "CAP_PERFMON"),
        (&["perfmon"][..], "CAP_BPF"),
        (&[][..], "CAP_BPF and CAP_PERFMON"),
    ] {
        for args in [&[][..], &["-S"][..]] {
            let out = as_nobody_with(caps, &copy.bin).args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{caps:?} {args:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                format!(
                    "tcpstates: missing {missing}: needs root, or CAP_BPF and CAP_PERFMON \
                     (Linux 5.8+), or CAP_SYS_ADMIN\n"
                ),
                "{caps:?} {args:?}"
            );
            assert!(out.stdout.is_empty());
        }
    }
}
