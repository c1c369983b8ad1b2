//! Owners: the processes, not the task on the CPU.

use super::*;

/// Set for the copies of this binary that play a peer in the owner test.
const PEER: &str = "TCPSTATES_TEST_PEER";

/// Not a test: a peer process of `owners_are_the_processes_not_the_cpu`
/// (this binary again, asked for this one function). As `acceptor` it
/// accepts one connection on descriptor 3 (a listener it inherited) and
/// closes it after the client; as `client` it connects to the port in
/// TCPSTATES_TEST_PORT and closes first.
#[test]
#[ignore = "a helper process of the owner test, started by it"]
fn peer() {
    use std::os::fd::FromRawFd;
    let role = std::env::var(PEER).expect("started by the owner test");
    let name = format!("tcps-{role}\0");
    // SAFETY: PR_SET_NAME reads the NUL-terminated name we own.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
    match role.as_str() {
        "acceptor" => {
            // SAFETY: the parent put a listening socket at descriptor 3.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
            let (server, _) = listener.accept().expect("accept");
            read_to_eof(&server);
            drop(server);
            std::mem::forget(listener);
        }
        "client" => {
            let port: u16 = std::env::var("TCPSTATES_TEST_PORT")
                .unwrap()
                .parse()
                .unwrap();
            let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            // Long enough for the acceptor to have accepted, even emulated.
            sleep(Duration::from_millis(200));
            drop(client);
        }
        other => panic!("no peer {other}"),
    }
}

/// Owners: a listener made by this test's thread (named tcps-listener), its
/// connection accepted and closed by one child process (tcps-acceptor), the
/// other end made by another running as uid 65534 (tcps-client). Every
/// transition of every side names its socket's owner, also those that run
/// in softirq; the accepted socket names the listener's owner until it is
/// accepted (kprobe mode, where the accept is seen) or until the acceptor's
/// own close (the other modes), and the acceptor from then on.
#[test]
fn owners_are_the_processes_not_the_cpu() {
    let Some(_root) = root() else { return };
    use tcpstates::config::{Format, TimeColumns};
    let shown = |filter: Filter| Config {
        attach: test_attach(),
        format: Format::Table {
            times: TimeColumns::default(),
            wide: false,
            extended: true,
        },
        filter,
        ..Config::default()
    };
    // Owners kept by the reader (no filter), and by the kernel (a filter
    // that keeps every state, and the owner filters).
    let mut capture = Capture::start(&shown(Filter::default()));
    let all_states = (1..=13).fold(0, |mask, n| mask | 1 << n);
    let mut in_kernel = Capture::start(&shown(Filter {
        states: all_states,
        ..Filter::default()
    }));
    let mut by_uid = Capture::start(&shown(Filter {
        uid: Some(65534),
        ..Filter::default()
    }));
    let mut by_comm = Capture::start(&shown(Filter {
        comm: Some("tcps-acceptor".into()),
        ..Filter::default()
    }));
    let mut by_pid = Capture::start(&shown(Filter {
        pids: vec![std::process::id()],
        ..Filter::default()
    }));
    let Traffic {
        port,
        closer,
        acceptor_pid,
        client_pid,
    } = three_processes();
    let events = capture.wait_until("three sockets to close", |ev| all_closed(ev, port, 3));

    let lives = lives(&events, port);
    let me = std::process::id();
    let owner = |e: &Event| {
        let o = e
            .owner
            .unwrap_or_else(|| panic!("no owner: {e:?}\n{}", dump(&events)));
        (
            o.pid,
            String::from_utf8_lossy(o.comm_bytes()).into_owned(),
            o.uid,
        )
    };
    let who = |pid: u32, name: &str, uid: u32| (pid, name.to_owned(), uid);
    let listener_owner = who(me, "tcps-listener", 0);
    let listener_life = life_starting(&lives, (Close, Listen));
    assert_eq!(owner(&listener_life.events[0]), listener_owner);
    assert_eq!(
        owner(&listener_life.events[1]),
        who(me, closer.trim_end(), 0)
    );
    let client_life = life_starting(&lives, (Close, SynSent));
    assert_eq!(client_life.transitions().len(), 5, "{}", dump(&events));
    for e in &client_life.events {
        assert_eq!(owner(e), who(client_pid, "tcps-client", 65534), "{e:?}");
    }
    let server = life_starting(&lives, (Listen, SynRecv));
    assert_eq!(
        server.transitions(),
        [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close)
        ]
    );
    // The accept is seen in kprobe mode: it comes after the handshake (two
    // transitions), before the client's FIN.
    let accepted_at = if capture.tracer.mode() == AttachMode::Kprobe {
        2
    } else {
        3
    };
    for (i, e) in server.events.iter().enumerate() {
        let expected = if i < accepted_at {
            listener_owner.clone()
        } else {
            who(acceptor_pid, "tcps-acceptor", 0)
        };
        assert_eq!(owner(e), expected, "{i}: {e:?}");
    }
    // Softirq ran some of these on other tasks: the C-PID is not the owner.
    assert!(
        events
            .iter()
            .any(|e| e.owner.is_some_and(|o| o.pid != e.pid)),
        "no transition ran on another task: the test shows nothing"
    );
    // The cgroup path of each owner (cgroup v2 hosts).
    if tcpstates::cgroup::cgroup2_mount().is_some() {
        let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = mine.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        assert_eq!(listener_life.events[0].cgroup.as_deref(), Some(path));
    }

    // The kernel's owners are the same.
    let kernel = in_kernel.wait_until("the kernel's three sockets", |ev| all_closed(ev, port, 3));
    let kernel_lives = common::lives(&kernel, port);
    for (role, expected) in [
        ((Close, Listen), &listener_life),
        ((Close, SynSent), &client_life),
        ((Listen, SynRecv), &server),
    ] {
        let got = life_starting(&kernel_lives, role);
        assert_eq!(got.transitions(), expected.transitions(), "{role:?}");
        for (k, u) in got.events.iter().zip(&expected.events) {
            assert_eq!(owner(k), owner(u), "{role:?}: kernel {k:?} reader {u:?}");
        }
    }
    // Each owner filter keeps exactly the transitions whose owner matches.
    let client_events: Vec<&Event> = client_life.events.iter().collect();
    only(&mut by_uid, port, "uid 65534: the client's", client_events);
    only(
        &mut by_comm,
        port,
        "tcps-acceptor: from its accept or close",
        server.events[accepted_at..].iter().collect(),
    );
    let mut mine: Vec<&Event> = listener_life
        .events
        .iter()
        .chain(&server.events[..accepted_at])
        .collect();
    mine.sort_by_key(|e| e.ts_ns);
    only(
        &mut by_pid,
        port,
        "this process: the listener and the child until accepted",
        mine,
    );
}

/// The traffic of the owner test, as it ended.
struct Traffic {
    /// The listener's port.
    port: u16,
    /// This thread's name when it closed the listener.
    closer: String,
    acceptor_pid: u32,
    client_pid: u32,
}

/// A listener made by a thread named tcps-listener, one connection accepted
/// and closed by a child process (tcps-acceptor), made by another running as
/// uid 65534 (tcps-client); then the listener closed by this thread.
fn three_processes() -> Traffic {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    // A copy of this binary that uid 65534 may run (the checkout may sit
    // under /root).
    let dir = std::env::temp_dir().join(format!("tcpstates-owner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let me = dir.join("trace");
    std::fs::copy(std::env::current_exe().unwrap(), &me).unwrap();
    for path in [&dir, &me] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let peer = |role: &str| {
        let mut command = Command::new(&me);
        command
            .args([
                "--exact",
                "owners::peer",
                "--ignored",
                "--test-threads=1",
                "-q",
            ])
            .env(PEER, role)
            .stdout(std::process::Stdio::null());
        command
    };

    // The listener, from a thread named for it.
    let (listener_tx, listener_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: PR_SET_NAME reads the NUL-terminated name we own.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_NAME, c"tcps-listener".as_ptr()) },
            0
        );
        listener_tx.send(listen(false)).unwrap();
    })
    .join()
    .unwrap();
    let (listener, port) = listener_rx.recv().unwrap();
    let fd = listener.as_raw_fd();
    let mut acceptor = peer("acceptor");
    // SAFETY: between fork and exec, only dup2 (async-signal-safe) on a
    // descriptor that stays open in the parent meanwhile.
    unsafe {
        acceptor.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut acceptor = acceptor.spawn().unwrap();
    let mut client = peer("client");
    client
        .uid(65534)
        .gid(65534)
        .env("TCPSTATES_TEST_PORT", port.to_string());
    let mut client = client.spawn().unwrap();
    assert!(client.wait().unwrap().success(), "the client failed");
    assert!(acceptor.wait().unwrap().success(), "the acceptor failed");
    // The listener closes in this thread: its owner is the one that made it,
    // as far as a process-context transition says (this thread's name now).
    let closer = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
    Traffic {
        port,
        closer,
        acceptor_pid: acceptor.id(),
        client_pid: client.id(),
    }
}

/// Asserts that `capture` (an owner filter) got exactly `want`'s
/// transitions of the sockets on `port`.
fn only(capture: &mut Capture, port: u16, what: &str, want: Vec<&Event>) {
    let expected: Vec<_> = want.iter().map(|e| (e.skaddr, e.old, e.new)).collect();
    let events = capture.wait_until(what, |ev| {
        ev.iter()
            .filter(|e| e.lport == port || e.rport == port)
            .count()
            >= expected.len()
    });
    sleep(Duration::from_millis(100));
    let got: Vec<_> = events
        .iter()
        .filter(|e| e.lport == port || e.rport == port)
        .map(|e| (e.skaddr, e.old, e.new))
        .collect();
    assert_eq!(got, expected, "{what}: {}", dump(&events));
}
