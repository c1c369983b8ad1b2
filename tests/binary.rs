//! The `tcpstates` binary end to end: arguments, exit codes, signals, a
//! closed stdout, real output, and a differential run against libbpf-tools'
//! tcpstates on the same traffic.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdout, Command, Output, Stdio};

use std::thread::sleep;
use std::time::{Duration, Instant};

use tcpstates_testkit::host::{Tracefs, root};
use tcpstates_testkit::net::{connect, listen, read_to_eof};
use tcpstates_testkit::process;
use tcpstates_testkit::rows::{Row, last_counters};
use tcpstates_testkit::tracer::{Stopped, TracerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");
const LIBBPF_TOOLS: &str = "/usr/sbin/tcpstates";
const HEADER: &str = "SKADDR           C-PID   C-COMM     LADDR           LPORT RADDR           RPORT OLDSTATE    -> NEWSTATE    MS";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running tcpstates")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_names_every_option() {
    for flag in ["-h", "--help"] {
        let out = run(&[flag]);
        assert!(out.status.success());
        let help = text(&out.stdout);
        for option in [
            "-T, --time",
            "-t, --timestamp",
            "-w, --wide",
            "-s, --csv",
            "-j, --json",
            "-Y, --journal",
            "-L, --localport",
            "-D, --remoteport",
            "-4, --ipv4",
            "-6, --ipv6",
            "-v, --verbose",
            "--btf <FILE>",
            "--attach <ATTACH>",
            "--max-sockets",
            "-V, --version",
            "EXAMPLES:",
            "C-PID",
        ] {
            assert!(help.contains(option), "{flag}: no {option:?} in\n{help}");
        }
    }
}

#[test]
fn version_names_attach_modes() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        format!(
            "tcpstates {}\nattach modes: tp-btf tracepoint kprobe (auto tries them in that order)\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn bad_arguments_get_one_line_and_exit_2() {
    for args in [
        &["-L", "0"][..],
        &["-L", "70000"],
        &["-D", "80,,443"],
        &["-D", "http"],
        &["-4", "-6"],
        &["--attach", "fentry"],
        &["--btf", "/nonexistent"],
        &["--max-sockets", "0"],
        &["--max-sockets", "abc"],
        &["-D", "-1"],
        &["--report", "json"],
        &["-j", "-s"],
        &["-j", "-T"],
        &["--frobnicate"],
        &["unexpected"],
    ] {
        let out = run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("tcpstates: "), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn without_privileges_says_so_and_exits_1() {
    // SAFETY: geteuid has no preconditions.
    let out = if unsafe { libc::geteuid() } == 0 {
        // As nobody, from a copy anyone may run.
        let copy = process::PublicCopy::of(BIN, "tcpstates").unwrap();
        Command::new(&copy.bin).uid(65534).gid(65534).output()
    } else {
        Command::new(BIN).output()
    }
    .expect("running tcpstates without privileges");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "tcpstates: missing CAP_BPF and CAP_PERFMON: needs root, or CAP_BPF and CAP_PERFMON \
         (Linux 5.8+), or CAP_SYS_ADMIN\n"
    );
    assert!(out.stdout.is_empty());
}

/// Ours with `args`, attached, its header (starting with `header`) read.
fn tracing(args: &[&str], header: &str) -> TracerProcess {
    let mut tracer = TracerProcess::start(Command::new(BIN).args(args));
    let first = tracer.next_line(Duration::from_secs(15));
    assert!(
        first.as_deref().is_some_and(|l| l.starts_with(header)),
        "no header {header:?}: {first:?}"
    );
    tracer
}

/// A row of the table; every line after the header must be one.
fn parse_row(line: &str, wide: bool) -> Row {
    Row::parse(line, wide).unwrap_or_else(|| panic!("not a row: {line}"))
}

fn rows_for_port(lines: &[String], port: u16, wide: bool) -> Vec<Row> {
    lines
        .iter()
        .map(|l| parse_row(l, wide))
        .filter(|r| r.involves(port))
        .collect()
}

#[test]
fn traces_a_connection_end_to_end() {
    let Some(_root) = root() else { return };
    let mut tracer = tracing(&["-4"], HEADER);
    let conn = connect(false);
    let (port, client_port) = (conn.port, conn.client_port);
    drop(conn.client);
    read_to_eof(&conn.server, Some(Duration::from_secs(5)));
    drop((conn.server, conn.listener));
    // Into a pipe, lines arrive within a poll interval, not at exit.
    tracer.wait_for("for the listener's close", Duration::from_secs(2), |l| {
        l.contains(&format!(" {port} ")) && l.contains("LISTEN      -> CLOSE")
    });
    let Stopped {
        code,
        lines,
        stderr,
        ..
    } = tracer.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "Tracing tcpstates ... Hit Ctrl-C to end\n");
    assert_eq!(lines[0], HEADER);
    let rows = rows_for_port(&lines[1..], port, false);
    let me = std::process::id().to_string();
    let connect = rows
        .iter()
        .find(|r| r.old == "CLOSE" && r.new == "SYN_SENT")
        .expect("connect row");
    assert_eq!(
        (
            connect.pid.as_str(),
            connect.laddr.as_str(),
            connect.lport,
            connect.raddr.as_str(),
            connect.rport,
            connect.ms.as_str()
        ),
        (me.as_str(), "127.0.0.1", 0, "127.0.0.1", port, "-")
    );
    let established = rows
        .iter()
        .find(|r| r.old == "SYN_SENT" && r.new == "ESTABLISHED")
        .expect("established row");
    assert_eq!((established.lport, established.rport), (client_port, port));
    assert!(
        established.ms.parse::<f64>().unwrap() < 1000.0,
        "{established:?}"
    );
    assert_eq!(rows.len(), 12, "{rows:#?}");
    // Every line, not only this connection's, has the header's columns.
    for line in &lines[1..] {
        let row = parse_row(line, false);
        let ms = row.ms.strip_prefix('>').unwrap_or(&row.ms);
        assert!(ms == "-" || ms.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn time_columns_and_csv() {
    let Some(_root) = root() else { return };
    let mut tracer = tracing(
        &["-T", "-t", "-s", "-6"],
        "TIME,TIME(s),SKADDR,C-PID,C-COMM,IP,",
    );
    let (listener, port) = listen(true);
    drop(listener);
    tracer.wait_for("for the listener", Duration::from_secs(2), |l| {
        l.contains(",LISTEN,CLOSE,")
    });
    let Stopped { code, lines, .. } = tracer.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "SIGTERM ends the run cleanly");
    let row = lines
        .iter()
        .find(|l| l.contains(&format!(",::1,{port},")) && l.contains(",LISTEN,CLOSE,"))
        .expect("listener row");
    let fields: Vec<&str> = row.split(',').collect();
    assert_eq!(fields.len(), 13, "{row}");
    assert_eq!(fields[0].len(), 8, "HH:MM:SS: {row}");
    assert!(
        fields[1].split_once('.').is_some_and(|(_, f)| f.len() == 6),
        "{row}"
    );
    assert_eq!(fields[5], "6");
    assert_eq!(&fields[10..12], ["LISTEN", "CLOSE"]);
}

/// The binary with default options into a pipe, once its header is out.
fn start_into_a_pipe() -> (TracerProcess, BufReader<ChildStdout>) {
    let mut tracer = TracerProcess::start_keeping_stdout(Command::new(BIN).stdout(Stdio::piped()));
    let mut stdout = BufReader::new(tracer.take_stdout().expect("a pipe"));
    let mut header = String::new();
    stdout.read_line(&mut header).unwrap();
    assert_eq!(header.trim_end(), HEADER);
    (tracer, stdout)
}

#[test]
fn closed_stdout_ends_quietly() {
    let Some(_root) = root() else { return };
    let (mut tracer, stdout) = start_into_a_pipe();
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tracer.exited() {
        // Traffic makes it write, and the write finds the pipe closed.
        drop(listen(false));
        assert!(
            Instant::now() < deadline,
            "still running after its stdout closed"
        );
        sleep(Duration::from_millis(50));
    }
    let Stopped { code, stderr, .. } = tracer.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "Tracing tcpstates ... Hit Ctrl-C to end\n");
}

/// Runs both tools on the same traffic: every transition libbpf-tools
/// reports for it, we report too.
#[test]
fn reports_everything_libbpf_tools_reports() {
    let Some(_root) = root() else { return };
    assert!(
        std::path::Path::new(LIBBPF_TOOLS).exists(),
        "{LIBBPF_TOOLS} is missing: apt-get install libbpf-tools"
    );
    // libbpf-tools attaches the classic tracepoint, which needs tracefs.
    let tracefs = Tracefs::set(true);
    // Line-buffered, so its header shows when it is attached.
    let theirs = TracerProcess::start_with_header(
        Command::new("stdbuf").args(["-oL", LIBBPF_TOOLS, "-w"]),
        "SKADDR",
    );
    let ours = tracing(&["-w"], "SKADDR");

    let mut ports = Vec::new();
    for (v6, server_first) in [(false, false), (true, true), (false, true), (true, false)] {
        let conn = connect(v6);
        ports.push(conn.port);
        let (first, second) = if server_first {
            (conn.server, conn.client)
        } else {
            (conn.client, conn.server)
        };
        drop(first);
        read_to_eof(&second, Some(Duration::from_secs(5)));
        drop((second, conn.listener));
    }
    let (listener, refused_port) = listen(false);
    drop(listener);
    let _ = std::net::TcpStream::connect(("127.0.0.1", refused_port)).unwrap_err();
    ports.push(refused_port);
    sleep(Duration::from_millis(300));

    let Stopped {
        code: their_code,
        lines: their_lines,
        stderr: their_err,
        ..
    } = theirs.stop(libc::SIGINT);
    let Stopped {
        code: our_code,
        lines: our_lines,
        stderr: our_err,
        ..
    } = ours.stop(libc::SIGINT);
    drop(tracefs);
    assert_eq!(their_code, Some(0), "{their_err}");
    assert_eq!(our_code, Some(0), "{our_err}");

    let key = |r: &Row| {
        (
            r.skaddr.clone(),
            r.laddr.clone(),
            r.lport,
            r.raddr.clone(),
            r.rport,
            r.old.clone(),
            r.new.clone(),
        )
    };
    for port in ports {
        let their: BTreeSet<_> = rows_for_port(&their_lines[1..], port, true)
            .iter()
            .map(key)
            .collect();
        let our: BTreeSet<_> = rows_for_port(&our_lines[1..], port, true)
            .iter()
            .map(key)
            .collect();
        assert!(
            !their.is_empty(),
            "libbpf-tools saw nothing for port {port}"
        );
        let missing: Vec<_> = their.difference(&our).collect();
        assert!(missing.is_empty(), "port {port}: we missed {missing:#?}");
        assert_eq!(
            our.len(),
            their.len(),
            "port {port}: {our:#?} vs {their:#?}"
        );
    }
}

/// Runs `args` with -v (counters as key=value pairs) around `traffic` and
/// returns (printed lines, stderr).
fn run_verbose(args: &[&str], traffic: impl FnOnce(&TracerProcess)) -> (Vec<String>, String) {
    let mut all = vec!["-v", "--report", "kv"];
    all.extend_from_slice(args);
    let tracer = tracing(&all, "SKADDR");
    traffic(&tracer);
    sleep(Duration::from_millis(300));
    let Stopped {
        code,
        lines,
        stderr,
        ..
    } = tracer.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "{stderr}");
    (lines, stderr)
}

/// The final counters' numbers: (matched, printed, lost, no room); the
/// transitions missed must be none.
fn summary(stderr: &str) -> (u64, u64, u64, u64) {
    let c = last_counters(stderr).unwrap_or_else(|| panic!("no counters in {stderr}"));
    assert_eq!(c["recursion_misses"], 0, "missed transitions: {stderr}");
    (c["matched"], c["printed"], c["ring_drops"], c["no_room"])
}

/// --max-sockets 1, with the times kept here (no port filter) and in the
/// kernel (a port filter), in both attach modes this host has.
#[test]
fn full_socket_map_is_reported_not_hidden() {
    let Some(_root) = root() else { return };
    let _tracefs = Tracefs::set(true);
    for mode in ["tp-btf", "tracepoint"] {
        for kernel_tracks in [false, true] {
            let (listener, port) = listen(false);
            let port_arg = port.to_string();
            let mut args = vec!["-4", "--attach", mode, "--max-sockets", "1"];
            if kernel_tracks {
                args.extend(["-D", &port_arg]);
            }
            // Three sockets open at once, for one slot.
            let (lines, stderr) = run_verbose(&args, |_| {
                let pairs: Vec<_> = (0..3)
                    .map(|_| {
                        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                        (client, listener.accept().unwrap().0)
                    })
                    .collect();
                drop(pairs);
            });
            let (_, _, lost, map_full) = summary(&stderr);
            let kept = if kernel_tracks {
                "in the kernel's map"
            } else {
                "here"
            };
            assert!(
                stderr.contains(&format!(
                    "\ntcpstates: attached with {mode}; per-socket times kept {kept}\n"
                )),
                "{stderr}"
            );
            assert_eq!(lost, 0);
            assert!(map_full >= 2, "{mode}, {kept}: {stderr}");
            assert!(
                stderr.contains(&format!(
                    "tcpstates: {map_full} durations unknown (socket map full: raise --max-sockets)"
                )),
                "{stderr}"
            );
            // With one slot, some known-state transitions must show '-'.
            let rows = rows_for_port(&lines[1..], port, false);
            assert!(
                rows.iter()
                    .any(|r| r.old != "CLOSE" && r.old != "LISTEN" && r.ms == "-"),
                "{mode}, {kept}: {rows:#?}"
            );
        }
    }
}

#[test]
fn full_ring_buffer_is_counted_and_reported() {
    let Some(_root) = root() else { return };
    let (lines, stderr) = run_verbose(&["-4", "--ring-buffer", "4K"], |tracer| {
        // A stopped reader cannot drain: the kernel must drop and count.
        tracer.signal(libc::SIGSTOP);
        let (listener, _) = listen(false);
        for _ in 0..50 {
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            drop((client, server));
        }
        tracer.signal(libc::SIGCONT);
    });
    let (matched, printed, lost, _) = summary(&stderr);
    assert!(
        stderr.contains("\ntcpstates: attached with tp-btf; per-socket times kept here\n"),
        "{stderr}"
    );
    assert!(lost > 0, "{stderr}");
    assert_eq!(matched, printed + lost, "{stderr}");
    assert_eq!(printed as usize, lines.len() - 1, "{stderr}");
    assert!(
        stderr.contains(&format!("tcpstates: {lost} events lost (ring buffer full)")),
        "{stderr}"
    );
    // The reader found the ring full when it woke: the high-water mark
    // says so, to within one record. The listener closes after SIGCONT:
    // its record may come after the reader's first pass, and is printed
    // beside those the full ring held.
    let c = last_counters(&stderr).unwrap();
    assert_eq!(c["ring_bytes"], 4096, "{stderr}");
    assert!(c["ring_peak_pct"] >= 97, "{stderr}");
    let peak = c["ring_peak_events"];
    assert!(peak == printed || peak + 1 == printed, "{stderr}");
}

/// Without `--report kv`, -v's counters stay a sentence for people, and the
/// same numbers as the key=value form.
#[test]
fn verbose_counters_are_a_sentence_by_default() {
    let Some(_root) = root() else { return };
    let tracer = tracing(&["-v", "-4"], "SKADDR");
    drop(listen(false));
    sleep(Duration::from_millis(300));
    let Stopped {
        code,
        lines,
        stderr,
        ..
    } = tracer.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "{stderr}");
    let printed = lines.len() - 1;
    let sentence = stderr
        .lines()
        .rfind(|l| l.contains(" transitions matched, "))
        .unwrap_or_else(|| panic!("no counters sentence in {stderr}"));
    assert!(
        sentence.contains(&format!(" {printed} printed, 0 lost (ring buffer full), ")),
        "{sentence}"
    );
    assert!(
        sentence.contains(" sockets tracked, ring buffer at most "),
        "{sentence}"
    );
    assert!(sentence.ends_with(" events)"), "{sentence}");
    assert!(last_counters(&stderr).is_none(), "{stderr}");
}

/// `tcpstates | head -1` on a quiet host: the reader leaves after the
/// header, nothing is ever written again, and the tracer still ends,
/// within a poll interval, with exit 0 and nothing more on stderr.
#[test]
fn a_pipe_whose_reader_left_ends_the_run_without_traffic() {
    let Some(_root) = root() else { return };
    let (mut tracer, stdout) = start_into_a_pipe();
    let left = Instant::now();
    drop(stdout);
    while !tracer.exited() {
        assert!(
            left.elapsed() < Duration::from_secs(1),
            "still running 1 s after its reader left"
        );
        sleep(Duration::from_millis(10));
    }
    let took = left.elapsed();
    let Stopped { code, stderr, .. } = tracer.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "Tracing tcpstates ... Hit Ctrl-C to end\n");
    eprintln!("ended {took:?} after the reader left");
}

/// `--count N` prints N transitions and ends; `--duration` ends the run on
/// a quiet host; both exit 0 and report as Ctrl-C does.
#[test]
fn run_limits_end_the_run() {
    let Some(_root) = root() else { return };
    let mut tracer = tracing(&["--count", "3", "-4", "-v", "--report", "kv"], HEADER);
    let conn = connect(false);
    drop((conn.client, conn.server, conn.listener));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tracer.exited() {
        assert!(Instant::now() < deadline, "--count 3 did not end the run");
        sleep(Duration::from_millis(20));
    }
    let Stopped {
        code,
        lines,
        stderr,
        ..
    } = tracer.wait();
    assert_eq!(code, Some(0));
    assert_eq!(lines.len(), 1 + 3, "{lines:?}");
    assert_eq!(
        last_counters(&stderr).expect("counters at exit")["printed"],
        3,
        "{stderr}"
    );

    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--duration", "0.5", "-6", "-L", "9"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(text(&out.stdout).lines().next(), Some(HEADER));
}

#[test]
fn metrics_address_in_use_or_malformed_is_one_line() {
    // Bound before anything is traced: no privileges needed to see it.
    let (_taken, port) = listen(false);
    let out = Command::new(BIN)
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "tcpstates: cannot serve metrics on 127.0.0.1:{port}: Address already in use \
             (os error 98)\n"
        )
    );
    let out = Command::new(BIN)
        .args(["--metrics", "localhost:http"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("'localhost:http' is not ADDR:PORT or PORT"),
        "{stderr}"
    );
}

#[test]
fn summary_prints_every_interval_stamped_and_at_exit() {
    let Some(_root) = root() else { return };
    // Every 0.3 s for 1.1 s: three prints on time, and the rest at exit.
    let out = Command::new(BIN)
        .args(["-S", "0.3", "-T", "--duration", "1.1", "-4"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stamps: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.len() == 8
                && l.bytes().enumerate().all(|(i, b)| {
                    if i % 3 == 2 {
                        b == b':'
                    } else {
                        b.is_ascii_digit()
                    }
                })
        })
        .collect();
    assert_eq!(stamps.len(), 4, "{stdout}");
    // Each print is a summary: the histograms and matrix, or that nothing
    // happened since the last.
    assert!(
        !stdout
            .split_terminator("\n\n")
            .any(|block| block.len() == 8),
        "a stamp with nothing under it: {stdout}"
    );
    assert!(
        stdout.matches("No transitions.").count() + stdout.matches("Transitions (rows").count()
            >= 4,
        "{stdout}"
    );
    // -j: one JSON object, at exit.
    let out = Command::new(BIN)
        .args(["-S", "-j", "--duration", "0.3"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(summary["transitions"].is_array() && summary["states"].is_array());
}
