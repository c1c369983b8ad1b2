//! Nothing lost: the binary, writing to a file, against an in-kernel count
//! of the same transitions during a loopback connection storm. Exact
//! equality, not a rate: a timed check belongs to the benchmark.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use tcpstates_testkit::burst::BusyCpus;
use tcpstates_testkit::groundtruth::TransitionCounter;
use tcpstates_testkit::host::root;
use tcpstates_testkit::net::loopback;
use tcpstates_testkit::rows::Row;
use tcpstates_testkit::storm::{self, Ending, Storm};
use tcpstates_testkit::tracer::{Stopped, TracerProcess, read_all};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");

/// Where the tracer's output goes.
#[derive(Clone, Copy, PartialEq)]
enum Output {
    File,
    /// A pipe nobody reads until the storm is over.
    StalledPipe,
}

fn storm_is_captured_whole(v6: bool, ending: Ending, extra: &[&str], output: Output) {
    let wide = extra.contains(&"-w");
    let listener = TcpListener::bind(SocketAddr::new(loopback(v6), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("tcpstates-loss-{}-{port}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("out");
    let stdout = match output {
        Output::File => Stdio::from(File::create(&out_path).unwrap()),
        Output::StalledPipe => Stdio::piped(),
    };
    let mut tracer =
        TracerProcess::start_keeping_stdout(Command::new(BIN).args(extra).stdout(stdout));
    // What comes through a pipe is read (and kept in the file) only after
    // the storm.
    let pipe = tracer.take_stdout();

    let truth = TransitionCounter::start(port).expect("ground-truth counter");
    let storm = Storm {
        connections: 2000,
        concurrency: 4,
        ending,
    };
    storm::run(&listener, &storm).expect("storm");
    // The last server-side closes may still be in flight.
    sleep(Duration::from_millis(300));
    let expected = truth.count().unwrap();
    tracer.signal(libc::SIGINT);
    // The pipe is read only now: the tracer writes what it kept meanwhile.
    if let Some(pipe) = pipe {
        fs::write(&out_path, read_all(pipe)).unwrap();
    }
    let Stopped { code, stderr, .. } = tracer.wait();
    assert_eq!(code, Some(0), "{stderr}");

    let text = fs::read_to_string(&out_path).unwrap();
    let captured = text
        .lines()
        .skip(1)
        .filter(|line| {
            Row::parse(line, wide)
                .unwrap_or_else(|| panic!("not a row: {line}"))
                .involves(port)
        })
        .count() as u64;
    // Nearly every connection makes the nominal transitions (a few take
    // another path, such as a simultaneous close).
    let nominal = storm.connections as u64 * ending.transitions();
    assert!(
        expected * 100 >= nominal * 99,
        "{expected} of {nominal}: the storm did not run"
    );
    assert_eq!(
        captured,
        expected,
        "captured {captured} of {expected} (output kept in {}); stderr: {stderr}",
        dir.display()
    );
    assert!(
        !stderr.contains("lost") && !stderr.contains("missed"),
        "{stderr}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn ipv4_graceful_storm_is_captured_whole() {
    let Some(_root) = root() else { return };
    storm_is_captured_whole(false, Ending::Graceful, &["-4"], Output::File);
}

#[test]
fn ipv6_reset_storm_is_captured_whole() {
    let Some(_root) = root() else { return };
    storm_is_captured_whole(true, Ending::Reset, &["-6", "-w"], Output::File);
}

#[test]
fn small_ring_buffer_storm_is_captured_whole() {
    let Some(_root) = root() else { return };
    // 1 MiB holds ~9,000 events, under half the storm: the reader must keep
    // up while it runs, not only drain at the end.
    storm_is_captured_whole(
        false,
        Ending::Graceful,
        &["--ring-buffer", "1M"],
        Output::File,
    );
}

#[test]
fn stalled_output_loses_nothing() {
    let Some(_root) = root() else { return };
    // Nobody reads the pipe during the storm: it fills after some 600
    // lines, and a 256 KiB ring holds some 2,300 events, together far fewer
    // than the storm's 20,000. The reader must keep emptying the ring while
    // the write waits.
    storm_is_captured_whole(
        false,
        Ending::Graceful,
        &["--ring-buffer", "256K"],
        Output::StalledPipe,
    );
}

#[test]
fn stalled_output_loses_nothing_with_every_cpu_busy() {
    let Some(_root) = root() else { return };
    // The promise with default options on a busy host: a CPU-bound process
    // per CPU competes with the reader and the storm.
    let _busy = BusyCpus::start().expect("busy processes");
    storm_is_captured_whole(false, Ending::Graceful, &[], Output::StalledPipe);
}

#[test]
fn storm_is_captured_whole_with_every_cpu_busy() {
    let Some(_root) = root() else { return };
    let _busy = BusyCpus::start().expect("busy processes");
    storm_is_captured_whole(true, Ending::Reset, &["-6", "-w"], Output::File);
}

/// A summary-mode tracer (`-S -j`, with `args`), attached.
fn summary_tracer(args: &[&str]) -> TracerProcess {
    TracerProcess::start(Command::new(BIN).args(["-S", "-j"]).args(args))
}

/// Stops a summary tracer and returns its one JSON summary.
fn final_summary(child: TracerProcess) -> serde_json::Value {
    let out = child.interrupt_and_read();
    assert_eq!(out.lines().count(), 1, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Transitions in a JSON summary, and a check that every transition out of
/// each state has a time in its histogram or counts as unknown.
fn summary_total(summary: &serde_json::Value) -> u64 {
    let mut left = std::collections::HashMap::<String, u64>::new();
    for t in summary["transitions"].as_array().unwrap() {
        *left.entry(t["old"].to_string()).or_default() += t["count"].as_u64().unwrap();
    }
    let states = summary["states"].as_array().unwrap();
    assert_eq!(states.len(), left.len(), "{summary}");
    for s in states {
        let slots: u64 = s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|slot| slot["count"].as_u64().unwrap())
            .sum();
        let timed = s["timed"].as_u64().unwrap();
        assert_eq!(slots, timed, "{s}");
        let unknown = s["unknown"].as_u64().unwrap();
        let before_trace = s["before_trace"].as_u64().unwrap();
        assert_eq!(
            timed + unknown + before_trace,
            left[&s["state"].to_string()],
            "{s}"
        );
    }
    left.values().sum()
}

/// Summary mode loses nothing: during a storm, two summary tracers, one for
/// the server's sockets (local port) and one for the client's (remote
/// port), together count every transition the ground truth counts.
fn summary_storm_is_counted_whole(v6: bool, ending: Ending) {
    let listener = TcpListener::bind(SocketAddr::new(loopback(v6), 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let servers = summary_tracer(&["-L", &port]);
    let clients = summary_tracer(&["-D", &port]);
    let truth = TransitionCounter::start(port.parse().unwrap()).expect("ground-truth counter");
    let storm = Storm {
        connections: 2000,
        concurrency: 4,
        ending,
    };
    storm::run(&listener, &storm).expect("storm");
    drop(listener);
    sleep(Duration::from_millis(300));
    let expected = truth.count().unwrap();
    let nominal = storm.connections as u64 * ending.transitions();
    assert!(
        expected * 100 >= nominal * 99,
        "{expected} of {nominal}: the storm did not run"
    );
    let (servers, clients) = (final_summary(servers), final_summary(clients));
    let counted = summary_total(&servers) + summary_total(&clients);
    assert_eq!(counted, expected, "servers {servers}\nclients {clients}");
}

#[test]
fn ipv4_graceful_storm_is_summarized_whole() {
    let Some(_root) = root() else { return };
    summary_storm_is_counted_whole(false, Ending::Graceful);
}

#[test]
fn ipv6_reset_storm_is_summarized_whole() {
    let Some(_root) = root() else { return };
    summary_storm_is_counted_whole(true, Ending::Reset);
}
