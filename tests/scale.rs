//! A busy host: more than 65,536 TCP sockets open at once, from several
//! processes (one may hold only 20,000 descriptors here), traced with
//! default options: every transition after a socket's first has its
//! duration, in user space and in the kernel (a port filter), and no store
//! runs out of room.

use std::collections::HashSet;
use std::fs::{self, File};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use tcpstates_testkit::hold::{Holders, holder_test_main, test_holder};
use tcpstates_testkit::host::root;
use tcpstates_testkit::rows::{Row, last_counters};
use tcpstates_testkit::tracer::{Stopped, TracerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");
/// Over 65,536 (the old default bound), in whole connections.
const SOCKETS: usize = 70_000;

/// Not a test: what the holder processes of the tests below run (this
/// binary again, asked for this one function).
#[test]
#[ignore = "a helper process of the scale tests, started by them"]
fn holder() {
    holder_test_main();
}

fn holders() -> Holders {
    Holders::start(SOCKETS, test_holder).expect("starting the holders")
}

/// Traces while the holders open and then close their connections.
fn every_duration_known(filter_on_ports: bool) {
    let mut holders = holders();
    let ports = holders.ports();
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let dir = std::env::temp_dir().join(format!(
        "tcpstates-scale-{}-{filter_on_ports}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("out");
    let mut args = vec!["-4".to_owned(), "-v".into(), "--report".into(), "kv".into()];
    if filter_on_ports {
        args.extend(["-L".into(), list.join(",")]);
    }
    let tracer = TracerProcess::start_keeping_stdout(
        Command::new(BIN)
            .args(&args)
            .stdout(File::create(&out_path).unwrap()),
    );

    holders.open().expect("opening the connections");
    // All open at once: the stores hold every one of them now.
    sleep(Duration::from_millis(300));
    holders.close().expect("closing the connections");
    sleep(Duration::from_millis(500));
    let Stopped { code, stderr, .. } = tracer.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "{stderr}");

    let counters = last_counters(&stderr).unwrap_or_else(|| panic!("no counters: {stderr}"));
    assert_eq!(counters["no_room"], 0, "{stderr}");
    assert_eq!(counters["ring_drops"], 0, "{stderr}");
    assert!(!stderr.contains("durations unknown"), "{stderr}");

    let text = fs::read_to_string(&out_path).unwrap();
    let mine: HashSet<u16> = ports.iter().copied().collect();
    let rows: Vec<Row> = text
        .lines()
        .skip(1)
        .map(|l| Row::parse(l, false).unwrap_or_else(|| panic!("not a row: {l}")))
        .filter(|r| mine.contains(&r.lport) || mine.contains(&r.rport))
        .collect();
    // With -L only the server side (the listener, its children) is printed;
    // without, the clients too.
    let sides = if filter_on_ports { 1 } else { 2 };
    let sockets: HashSet<&str> = rows.iter().map(|r| r.skaddr.as_str()).collect();
    assert!(
        sockets.len() * 2 >= SOCKETS * sides / 2,
        "{} sockets seen for {SOCKETS} held",
        sockets.len()
    );
    let mut unknown = Vec::new();
    for row in &rows {
        // A socket's first transition: leaving CLOSE, a child leaving the
        // listener's LISTEN, or the listener (older than the trace) closing.
        let first = row.old == "CLOSE"
            || (row.old == "LISTEN" && row.new == "SYN_RECV")
            || (row.old == "LISTEN" && row.new == "CLOSE");
        if !first && row.ms == "-" {
            unknown.push(row);
        }
    }
    assert!(
        unknown.is_empty(),
        "{} of {} transitions without a duration, e.g. {:?}",
        unknown.len(),
        rows.len(),
        &unknown[..unknown.len().min(3)]
    );
    eprintln!(
        "{} transitions of {} sockets, all known; {stderr}",
        rows.len(),
        sockets.len()
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn over_65536_sockets_every_duration_known_in_user_space() {
    let Some(_root) = root() else { return };
    every_duration_known(false);
}

#[test]
fn over_65536_sockets_every_duration_known_with_a_port_filter() {
    let Some(_root) = root() else { return };
    every_duration_known(true);
}
