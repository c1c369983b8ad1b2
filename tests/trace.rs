//! Root tests: load the real program, make real loopback connections, and
//! assert the exact transitions of every socket.

mod common;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::Duration;

use common::*;
use tcpstates::config::{
    AttachMode, Config, DEFAULT_MAP_SOCKETS, Family, Filter, Mode, SummaryOutput,
};
use tcpstates::event::{Event, TcpState, TcpState::*};
use tcpstates::host;
use tcpstates::plan::{KernelStore, Plan, Wake};
use tcpstates::summary::{STATES, Summary, slot_range_us};
use tcpstates::tracer::{self, Tracer};
use tcpstates_testkit::host::{Tracefs, kernel_has_kprobes, root};
use tcpstates_testkit::net::{connect, listen, loopback};

/// Time the connection is held open before the first close.
const HOLD: Duration = Duration::from_millis(30);

/// The attach modes the scenario tests use: auto (all, best first), or the
/// one named by TCPSTATES_TEST_ATTACH (the kernel matrix runs them once per
/// mode).
fn test_attach() -> Vec<AttachMode> {
    match std::env::var("TCPSTATES_TEST_ATTACH").as_deref() {
        Err(_) | Ok("auto") => AttachMode::ALL.to_vec(),
        Ok(name) => vec![
            AttachMode::ALL
                .into_iter()
                .find(|m| m.name() == name)
                .unwrap_or_else(|| panic!("TCPSTATES_TEST_ATTACH={name} is no attach mode")),
        ],
    }
}

fn opts(attach: Vec<AttachMode>, filter: Filter) -> Config {
    Config {
        attach,
        filter,
        ..Config::default()
    }
}

/// Reads until the peer's FIN.
fn read_to_eof(stream: &TcpStream) {
    tcpstates_testkit::net::read_to_eof(stream, Some(Duration::from_secs(5)));
}

/// Makes close() send an RST instead of a FIN.
fn set_linger_zero(stream: &TcpStream) {
    tcpstates_testkit::net::set_linger_zero(stream).expect("SO_LINGER");
}

/// Which side sends the first FIN, or an RST.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Close {
    ClientFirst,
    ServerFirst,
    ClientReset,
}

struct Observed {
    listener: SocketLife,
    client: SocketLife,
    server: SocketLife,
    port: u16,
    client_port: u16,
    lo: IpAddr,
}

/// A listener, one connection closed as `close` says, then the listener closed.
fn connection(capture: &mut Capture, v6: bool, close: Close) -> Observed {
    // Every earlier connection's sockets closed before it returned: what
    // the capture holds is theirs, and one may have had this one's port.
    capture.forget();
    let conn = connect(v6);
    let (port, client_port) = (conn.port, conn.client_port);
    sleep(HOLD);
    match close {
        Close::ClientFirst => {
            drop(conn.client);
            read_to_eof(&conn.server);
            drop(conn.server);
        }
        Close::ServerFirst => {
            drop(conn.server);
            read_to_eof(&conn.client);
            drop(conn.client);
        }
        Close::ClientReset => {
            set_linger_zero(&conn.client);
            drop(conn.client);
            sleep(Duration::from_millis(20));
            drop(conn.server);
        }
    }
    drop(conn.listener);
    let events = capture.wait_until("three sockets to close", |ev| all_closed(ev, port, 3));
    let lives = lives(&events, port);
    assert_eq!(
        lives.len(),
        3,
        "expected listener, client, server: {}",
        dump(&events)
    );
    Observed {
        listener: life_starting(&lives, (Close, Listen)),
        client: life_starting(&lives, (Close, SynSent)),
        server: life_starting(&lives, (Listen, SynRecv)),
        port,
        client_port,
        lo: loopback(v6),
    }
}

/// Addresses, ports, C-PID and durations that hold in every scenario.
fn check_common(o: &Observed) {
    let me = std::process::id();
    let any = if o.lo.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    for e in &o.listener.events {
        assert_eq!(
            (e.laddr, e.lport, e.raddr, e.rport),
            (o.lo, o.port, any, 0),
            "listener {e:?}"
        );
    }
    for e in &o.client.events {
        // The local port is chosen after CLOSE -> SYN_SENT.
        let lport = if e.old == Close { 0 } else { o.client_port };
        assert_eq!(
            (e.laddr, e.lport, e.raddr, e.rport),
            (o.lo, lport, o.lo, o.port),
            "client {e:?}"
        );
    }
    for e in &o.server.events {
        assert_eq!((e.laddr, e.lport), (o.lo, o.port), "server {e:?}");
        if e.old == Listen {
            // Older kernels report the child before its peer is copied in
            // (the kprobe on inet_csk_clone_lock sees the port but not yet
            // the address).
            assert!(
                (e.raddr == o.lo || e.raddr == any) && (e.rport == o.client_port || e.rport == 0),
                "server {e:?}"
            );
        } else {
            assert_eq!((e.raddr, e.rport), (o.lo, o.client_port), "server {e:?}");
        }
    }
    // The process context is reliable at listen() and connect().
    assert_eq!(o.listener.events[0].pid, me);
    assert_eq!(o.client.events[0].pid, me);
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    assert_eq!(o.client.events[0].comm(), comm.trim_end());

    for life in [&o.listener, &o.client, &o.server] {
        let (first, rest) = life.events.split_first().unwrap();
        assert_eq!(
            first.duration_ns, None,
            "a new socket's time in its first state is unknown: {first:?}"
        );
        for e in rest {
            let d = e
                .duration_ns
                .unwrap_or_else(|| panic!("known duration expected: {e:?}"));
            assert!(d < 10_000_000_000, "implausible duration {e:?}");
        }
        assert!(life.events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
        assert!(
            life.events
                .iter()
                .all(|e| e.skaddr == first.skaddr && e.netns != 0)
        );
    }
    // The listener lived at least as long as the connection was held.
    assert!(o.listener.events[1].duration_ns.unwrap() >= HOLD.as_nanos() as u64);
}

fn at_least_hold(e: &Event) {
    let d = e.duration_ns.unwrap();
    assert!(
        d >= HOLD.as_nanos() as u64,
        "held {HOLD:?}, got {d} ns: {e:?}"
    );
}

fn client_closes_first(v6: bool) {
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    let o = connection(&mut capture, v6, Close::ClientFirst);
    check_common(&o);
    assert_eq!(o.listener.transitions(), [(Close, Listen), (Listen, Close)]);
    assert_eq!(
        o.client.transitions(),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close)
        ]
    );
    assert_eq!(
        o.server.transitions(),
        [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close)
        ]
    );
    at_least_hold(&o.client.events[2]);
    // close() runs in this process.
    assert_eq!(o.client.events[2].pid, std::process::id());
    assert_eq!(o.server.events[3].pid, std::process::id());
}

#[test]
fn ipv4_client_closes_first() {
    let Some(_root) = root() else { return };
    client_closes_first(false);
}

#[test]
fn ipv6_client_closes_first() {
    let Some(_root) = root() else { return };
    client_closes_first(true);
}

fn server_closes_first(v6: bool) {
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    let o = connection(&mut capture, v6, Close::ServerFirst);
    check_common(&o);
    assert_eq!(
        o.client.transitions(),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close)
        ]
    );
    assert_eq!(
        o.server.transitions(),
        [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close)
        ]
    );
    at_least_hold(&o.server.events[2]);
}

#[test]
fn ipv4_server_closes_first() {
    let Some(_root) = root() else { return };
    server_closes_first(false);
}

#[test]
fn ipv6_server_closes_first() {
    let Some(_root) = root() else { return };
    server_closes_first(true);
}

fn reset(v6: bool) {
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    let o = connection(&mut capture, v6, Close::ClientReset);
    check_common(&o);
    assert_eq!(
        o.client.transitions(),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, Close)
        ]
    );
    assert_eq!(
        o.server.transitions(),
        [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, Close)
        ]
    );
    at_least_hold(&o.client.events[2]);
}

#[test]
fn ipv4_rst_close() {
    let Some(_root) = root() else { return };
    reset(false);
}

#[test]
fn ipv6_rst_close() {
    let Some(_root) = root() else { return };
    reset(true);
}

fn refused(v6: bool) {
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    // A port that was just free: bind, note it, close.
    let (listener, port) = listen(v6);
    drop(listener);
    let err = TcpStream::connect(SocketAddr::new(loopback(v6), port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let events = capture.wait_until("refused connect", |ev| all_closed(ev, port, 2));
    let lives = lives(&events, port);
    assert_eq!(lives.len(), 2, "{}", dump(&events));
    assert_eq!(
        life_starting(&lives, (Close, Listen)).transitions(),
        [(Close, Listen), (Listen, Close)]
    );
    let client = life_starting(&lives, (Close, SynSent));
    assert_eq!(client.transitions(), [(Close, SynSent), (SynSent, Close)]);
    assert_eq!(client.events[0].pid, std::process::id());
    assert!(client.events[1].duration_ns.is_some());
    assert_eq!(client.events[1].rport, port);
    assert_ne!(
        client.events[1].lport, 0,
        "the local port is known at SYN_SENT -> CLOSE"
    );
}

#[test]
fn ipv4_refused_connect() {
    let Some(_root) = root() else { return };
    refused(false);
}

#[test]
fn ipv6_refused_connect() {
    let Some(_root) = root() else { return };
    refused(true);
}

#[test]
fn listener_opened_and_closed() {
    let Some(_root) = root() else { return };
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    for v6 in [false, true] {
        let (listener, port) = listen(v6);
        sleep(HOLD);
        drop(listener);
        let events = capture.wait_until("listener close", |ev| all_closed(ev, port, 1));
        let lives = lives(&events, port);
        assert_eq!(lives.len(), 1, "{}", dump(&events));
        assert_eq!(lives[0].transitions(), [(Close, Listen), (Listen, Close)]);
        assert_eq!(lives[0].events[0].laddr, loopback(v6));
        assert_eq!(lives[0].events[0].duration_ns, None);
        at_least_hold(&lives[0].events[1]);
    }
}

/// A socket address is reused as soon as the socket is freed: the entry
/// must go at CLOSE, or the next socket there inherits a bogus duration.
#[test]
fn reused_socket_addresses_start_with_unknown_duration() {
    let Some(_root) = root() else { return };
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    let (listener, port) = listen(false);
    for _ in 0..200 {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        read_to_eof(&server);
        drop(server);
    }
    drop(listener);
    let events = capture.wait_until("200 connections", |ev| all_closed(ev, port, 401));
    let lives = lives(&events, port);
    assert_eq!(lives.len(), 401);
    let mut addresses: Vec<u64> = lives.iter().map(|l| l.events[0].skaddr).collect();
    addresses.sort_unstable();
    addresses.dedup();
    assert!(
        addresses.len() < 401,
        "no address was reused: the test proves nothing"
    );
    for life in &lives {
        assert_eq!(life.events[0].duration_ns, None, "{:?}", life.events[0]);
        assert!(life.events[1..].iter().all(|e| e.duration_ns.is_some()));
    }
}

fn family_only(family: Family) {
    let mut capture = Capture::start(&opts(
        test_attach(),
        Filter {
            family: Some(family),
            ..Filter::default()
        },
    ));
    let kept = connect(family == Family::Ipv6);
    let dropped = connect(family == Family::Ipv4);
    drop((dropped.client, dropped.server, dropped.listener));
    drop((kept.client, kept.server, kept.listener));
    let events = capture.wait_until("the kept family's sockets", |ev| {
        all_closed(ev, kept.port, 3)
    });
    // Everything received, not only this test's sockets, is of the family.
    assert!(
        events
            .iter()
            .all(|e| e.laddr.is_ipv6() == (family == Family::Ipv6)),
        "{}",
        dump(&events)
    );
    assert!(lives(&events, dropped.port).is_empty());
}

#[test]
fn ipv4_filter() {
    let Some(_root) = root() else { return };
    family_only(Family::Ipv4);
}

#[test]
fn ipv6_filter() {
    let Some(_root) = root() else { return };
    family_only(Family::Ipv6);
}

#[test]
fn local_port_filter_keeps_the_server_side() {
    let Some(_root) = root() else { return };
    // The listener's port must be known before the tracer starts.
    let (listener, port) = listen(false);
    let mut capture = Capture::start(&opts(
        test_attach(),
        Filter {
            local_ports: vec![port],
            ..Filter::default()
        },
    ));
    let other = connect(false);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop((client, other));
    read_to_eof(&server);
    drop((server, listener));
    let events = capture.wait_until("the server side", |ev| all_closed(ev, port, 2));
    assert!(events.iter().all(|e| e.lport == port), "{}", dump(&events));
    let lives = lives(&events, port);
    assert_eq!(
        lives.len(),
        2,
        "listener and server only: {}",
        dump(&events)
    );
    // The listener existed before the trace: its first duration is unknown.
    let server = life_starting(&lives, (Listen, SynRecv));
    assert_eq!(server.transitions().len(), 5);
}

#[test]
fn remote_port_filter_keeps_the_client_side() {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(true);
    let mut capture = Capture::start(&opts(
        test_attach(),
        Filter {
            remote_ports: vec![port, 9],
            ..Filter::default()
        },
    ));
    let other = connect(true);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop((server, other));
    read_to_eof(&client);
    drop((client, listener));
    let events = capture.wait_until("the client side", |ev| all_closed(ev, port, 1));
    assert!(
        events.iter().all(|e| e.rport == port || e.rport == 9),
        "{}",
        dump(&events)
    );
    let lives = lives(&events, port);
    assert_eq!(lives.len(), 1, "client only: {}", dump(&events));
    assert_eq!(
        lives[0].transitions(),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close)
        ]
    );
}

#[test]
fn each_attachable_mode_traces() {
    let Some(_root) = root() else { return };
    let _tracefs = Tracefs::set(true);
    let mut modes = vec![AttachMode::TpBtf, AttachMode::Tracepoint];
    if kernel_has_kprobes() {
        modes.push(AttachMode::Kprobe);
    }
    for mode in modes {
        let mut capture = Capture::start(&opts(vec![mode], Filter::default()));
        assert_eq!(capture.tracer.mode(), mode);
        for v6 in [false, true] {
            let o = connection(&mut capture, v6, Close::ClientFirst);
            check_common(&o);
            assert_eq!(o.client.transitions().len(), 5, "{mode}");
        }
    }
}

/// The kprobe program must pass the verifier even where it cannot attach.
#[test]
fn kprobe_program_loads() {
    let Some(_root) = root() else { return };
    let filtered = opts(
        vec![AttachMode::Kprobe],
        Filter {
            local_ports: vec![80],
            ..Filter::default()
        },
    );
    let facts = host::facts().expect("the host's facts");
    for (config, store) in [
        (Config::default(), KernelStore::None),
        (filtered, KernelStore::Map(DEFAULT_MAP_SOCKETS)),
    ] {
        let plan = Plan::new(&config, &facts, AttachMode::Kprobe, Wake::EachEvent);
        assert_eq!(plan.store, store);
        tracer::load(&config, &plan).expect("the kprobe program loads");
    }
    let result = Tracer::start(
        &opts(vec![AttachMode::Kprobe], Filter::default()),
        Wake::EachEvent,
    );
    if kernel_has_kprobes() {
        assert!(result.is_ok(), "{:#}", result.err().unwrap());
    } else {
        let err = format!(
            "{:#}",
            result
                .err()
                .expect("no kprobes on this kernel, yet it attached")
        );
        assert!(err.contains("kprobe"), "{err}");
    }
}

#[test]
fn works_without_tracefs() {
    let Some(_root) = root() else { return };
    let tracefs = Tracefs::set(false);
    let forced = Tracer::start(
        &opts(vec![AttachMode::Tracepoint], Filter::default()),
        Wake::EachEvent,
    );
    let mut capture = Capture::start(&opts(AttachMode::ALL.to_vec(), Filter::default()));
    assert_eq!(capture.tracer.mode(), AttachMode::TpBtf);
    let o = connection(&mut capture, false, Close::ClientFirst);
    check_common(&o);
    drop(tracefs);
    assert!(
        forced.is_err(),
        "the classic tracepoint attached without tracefs"
    );
}

#[test]
fn custom_btf_path() {
    let Some(_root) = root() else { return };
    let mut capture = Capture::start(&Config {
        btf: Some("/sys/kernel/btf/vmlinux".into()),
        attach: test_attach(),
        ..Config::default()
    });
    let o = connection(&mut capture, true, Close::ServerFirst);
    check_common(&o);
}

/// A list of modes (auto is one) falls back to the next when one cannot
/// attach on this kernel.
#[test]
fn falls_back_when_the_preferred_mode_is_missing() {
    let Some(_root) = root() else { return };
    // Without tracefs the classic tracepoint cannot attach.
    let unmounted = Tracefs::set(false);
    let order = vec![AttachMode::Tracepoint, AttachMode::TpBtf];
    let mut capture = Capture::start(&opts(order, Filter::default()));
    assert_eq!(capture.tracer.mode(), AttachMode::TpBtf);
    check_common(&connection(&mut capture, false, Close::ServerFirst));
    drop((capture, unmounted));
    let _mounted = Tracefs::set(true);
    // Where the kernel has no kprobes (this project's CI host), the kprobe
    // mode cannot attach either.
    if !kernel_has_kprobes() {
        let order = vec![AttachMode::Kprobe, AttachMode::Tracepoint];
        let mut capture = Capture::start(&opts(order, Filter::default()));
        assert_eq!(capture.tracer.mode(), AttachMode::Tracepoint);
        check_common(&connection(&mut capture, true, Close::ServerFirst));
    }
}

/// The kprobe mode reports what the tracepoint reports, on the same traffic
/// at the same time: the same transitions per socket, the same addresses and
/// ports, and durations within 5 ms (the probes fire some instructions apart:
/// a listener's kprobe fires before listen() binds, the tracepoint after; a
/// millisecond apart under qemu's emulation). Where the kernel has no kprobes
/// (this project's CI host) it must say so instead; the kernel matrix runs
/// the comparison on kernels that have them.
#[test]
fn kprobe_matches_tracepoint_on_the_same_traffic() {
    let Some(_root) = root() else { return };
    let kprobe_opts = opts(vec![AttachMode::Kprobe], Filter::default());
    if !kernel_has_kprobes() {
        let err = Tracer::start(&kprobe_opts, Wake::EachEvent)
            .err()
            .expect("kprobes attached on a kernel without them");
        assert!(format!("{err:#}").contains("no kprobes"), "{err:#}");
        return;
    }
    let _tracefs = Tracefs::set(true);
    let mut kprobe = Capture::start(&kprobe_opts);
    let mut tracepoint = Capture::start(&opts(vec![AttachMode::Tracepoint], Filter::default()));
    for v6 in [false, true] {
        for close in [Close::ClientFirst, Close::ServerFirst, Close::ClientReset] {
            // The transitions and addresses must match every time. The
            // durations must agree within 5 ms; a task preempted between
            // the two probes (seen under emulation, one connection in
            // several dozen) puts more between them, so a connection whose
            // durations disagree is made again, up to three times.
            let mut tries = 0;
            while let Err(mismatch) = same_on_both(&mut kprobe, &mut tracepoint, v6, close) {
                tries += 1;
                assert!(
                    tries < 3,
                    "durations disagree three times running: {mismatch}"
                );
            }
        }
    }
}

/// One connection seen by both captures: asserts the same transitions and
/// addresses; returns the durations that differ by 5 ms or more, if any.
fn same_on_both(
    kprobe: &mut Capture,
    tracepoint: &mut Capture,
    v6: bool,
    close: Close,
) -> Result<(), String> {
    // The second capture too waited for the previous connection's sockets
    // to close: what it holds is theirs (`connection` forgets the first's).
    tracepoint.forget();
    // `connection` waits on the first capture; the second then has them
    // too, or soon.
    let k = connection(kprobe, v6, close);
    let events = tracepoint.wait_until("the tracepoint's events", |ev| all_closed(ev, k.port, 3));
    let t = lives(&events, k.port);
    let mut mismatch = Ok(());
    for (kl, role) in [
        (&k.listener, (Close, Listen)),
        (&k.client, (Close, SynSent)),
        (&k.server, (Listen, SynRecv)),
    ] {
        let tl = life_starting(&t, role);
        assert_eq!(kl.transitions(), tl.transitions(), "{role:?}");
        for (ke, te) in kl.events.iter().zip(&tl.events) {
            assert_eq!(ke.skaddr, te.skaddr);
            if ke.old != Listen || ke.new != SynRecv {
                assert_eq!(
                    (ke.laddr, ke.lport, ke.raddr, ke.rport),
                    (te.laddr, te.lport, te.raddr, te.rport),
                    "{ke:?} vs {te:?}"
                );
            }
            match (ke.duration_ns, te.duration_ns) {
                (Some(a), Some(b)) if a.abs_diff(b) >= 5_000_000 => {
                    mismatch = Err(format!("{ke:?} vs {te:?}"));
                }
                (Some(_), Some(_)) => {}
                (a, b) => assert_eq!(a.is_some(), b.is_some(), "{ke:?} vs {te:?}"),
            }
        }
    }
    mismatch
}

/// JSON lines of real events, in whatever attach mode runs (the kernel
/// matrix runs this in each): one valid object per event, every field what
/// the kernel reported and the traffic was.
#[test]
fn json_lines_of_real_events() {
    let Some(_root) = root() else { return };
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    let clock = tcpstates::clock::EventClock::now();
    for v6 in [false, true] {
        let o = connection(&mut capture, v6, Close::ServerFirst);
        check_common(&o);
        for life in [&o.listener, &o.client, &o.server] {
            for (i, e) in life.events.iter().enumerate() {
                let mut line = Vec::new();
                let utc = tcpstates::clock::Utc::at_unix_ns(clock.unix_ns(e.ts_ns));
                tcpstates::output::json::write_event(&mut line, e, utc);
                let text = String::from_utf8(line).expect("UTF-8");
                assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
                let j: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
                assert_eq!(j["skaddr"], format!("{:x}", e.skaddr));
                assert_eq!(j["pid"], e.pid);
                assert_eq!(j["comm"], e.comm().as_ref());
                assert_eq!(j["family"], if v6 { 6 } else { 4 });
                assert_eq!(j["laddr"], e.laddr.to_string());
                assert_eq!(j["raddr"], e.raddr.to_string());
                assert_eq!(
                    (j["lport"].as_u64(), j["rport"].as_u64()),
                    (Some(e.lport.into()), Some(e.rport.into()))
                );
                assert_eq!(j["oldstate"], e.old.to_string());
                assert_eq!(j["newstate"], e.new.to_string());
                assert_eq!(j["netns"], e.netns);
                match e.duration_ns {
                    None => assert!(j["ms"].is_null() && i == 0, "{text}"),
                    Some(ns) => {
                        let ms = j["ms"].as_f64().expect("a number");
                        assert!((ms - ns as f64 / 1e6).abs() < 0.001, "{text}");
                    }
                }
                assert!(
                    j["time"]
                        .as_str()
                        .is_some_and(|t| t.len() == 27 && t.ends_with('Z'))
                );
            }
        }
    }
}

/// A listener and one connection to it, held `hold`, closed by the client
/// first, then by the server, then the listener: the listener's port.
fn connection_closed_by_client(v6: bool, hold: Duration) -> u16 {
    let (listener, port) = listen(v6);
    client_closes_first_to(listener, hold);
    port
}

/// One connection to `listener`, held `hold`, closed by the client first;
/// then the listener closed.
fn client_closes_first_to(listener: std::net::TcpListener, hold: Duration) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    sleep(hold);
    drop(client);
    read_to_eof(&server);
    drop((server, listener));
}

/// `--state CLOSE_WAIT`: only transitions into or out of it, with the time
/// in the state left known although the transition before was dropped.
#[test]
fn state_filter_keeps_transitions_into_or_out_of_its_states() {
    let Some(_root) = root() else { return };
    let close_wait = 1 << 8;
    assert_eq!(CloseWait.to_string(), "CLOSE_WAIT");
    let mut capture = Capture::start(&opts(
        test_attach(),
        Filter {
            states: close_wait,
            ..Filter::default()
        },
    ));
    let port = connection_closed_by_client(false, HOLD);
    let events = capture.wait_until("CLOSE_WAIT -> LAST_ACK", |ev| {
        lives(ev, port)
            .iter()
            .any(|l| l.transitions().contains(&(CloseWait, LastAck)))
    });
    assert!(
        events
            .iter()
            .all(|e| e.old == CloseWait || e.new == CloseWait),
        "{}",
        dump(&events)
    );
    let mine = lives(&events, port);
    assert_eq!(mine.len(), 1, "{}", dump(&events));
    assert_eq!(
        mine[0].transitions(),
        [(Established, CloseWait), (CloseWait, LastAck)]
    );
    // The time in ESTABLISHED starts at SYN_RECV -> ESTABLISHED, dropped here.
    at_least_hold(&mine[0].events[0]);
    assert!(mine[0].events[1].duration_ns.is_some());
}

/// `--min-ms`: only states held at least that long; unknown times never.
#[test]
fn min_duration_filter_keeps_only_long_states() {
    let Some(_root) = root() else { return };
    // Long beside what the other transitions take, even under emulation.
    let hold = Duration::from_millis(300);
    let min = hold.as_nanos() as u64 * 2 / 3;
    let mut capture = Capture::start(&opts(
        test_attach(),
        Filter {
            min_duration_ns: Some(min),
            ..Filter::default()
        },
    ));
    let port = connection_closed_by_client(true, hold);
    let events = capture.wait_until("the listener's close", |ev| {
        lives(ev, port)
            .iter()
            .any(|l| l.transitions().contains(&(Listen, Close)))
    });
    for e in &events {
        assert!(e.duration_ns.is_some_and(|d| d >= min), "{}", dump(&events));
    }
    let mut kept: Vec<_> = lives(&events, port)
        .iter()
        .flat_map(|l| l.transitions())
        .collect();
    kept.sort_by_key(|(old, new)| (old.number(), new.number()));
    assert_eq!(
        kept,
        [
            (Established, FinWait1),
            (Established, CloseWait),
            (Listen, Close)
        ],
        "{}",
        dump(&events)
    );
}

/// Brings up loopback in this thread's network namespace.
fn loopback_up() {
    // SAFETY: a datagram socket and an ifreq we own, zeroed (valid), named
    // "lo"; the ioctls read and write only that ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req), 0);
        libc::close(fd);
    }
}

/// `--netns`: a connection in a network namespace made here is kept, one
/// in this process's namespace is not.
#[test]
fn netns_filter_keeps_one_namespace() {
    let Some(_root) = root() else { return };
    use std::os::unix::fs::MetadataExt;
    use std::sync::mpsc;
    // A thread in a namespace of its own: it reports the inode, waits for
    // the tracer, then makes a connection there.
    let (inode_tx, inode_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let inside = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        loopback_up();
        let inode = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        inode_tx.send(inode as u32).unwrap();
        go_rx.recv().unwrap();
        connection_closed_by_client(false, Duration::ZERO)
    });
    let inode = inode_rx.recv().unwrap();
    let mut capture = Capture::start(&opts(
        test_attach(),
        Filter {
            netns: Some(inode),
            ..Filter::default()
        },
    ));
    go_tx.send(()).unwrap();
    let outside = connect(false);
    let port = inside.join().unwrap();
    drop((outside.client, outside.server, outside.listener));
    let events = capture.wait_until("the namespace's sockets", |ev| all_closed(ev, port, 3));
    assert!(events.iter().all(|e| e.netns == inode), "{}", dump(&events));
    // (Two namespaces may hand out the same port: then there is nothing
    // more to tell apart.)
    if outside.port != port {
        assert!(lives(&events, outside.port).is_empty(), "{}", dump(&events));
    }
    assert_eq!(lives(&events, port).len(), 3, "{}", dump(&events));
}

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
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::Command;
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
            .args(["--exact", "peer", "--ignored", "--test-threads=1", "-q"])
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
    let (acceptor_pid, client_pid) = (acceptor.id(), client.id());
    let events = capture.wait_until("three sockets to close", |ev| all_closed(ev, port, 3));
    let _ = std::fs::remove_dir_all(&dir);

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
    let only = |capture: &mut Capture, what: &str, want: Vec<&Event>| {
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
    };
    let client_events: Vec<&Event> = client_life.events.iter().collect();
    only(&mut by_uid, "uid 65534: the client's", client_events);
    only(
        &mut by_comm,
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
        "this process: the listener and the child until accepted",
        mine,
    );
}

/// A summary-mode tracer (nothing printed) that keeps only `filter`.
fn summary_tracer(filter: Filter) -> Tracer {
    let config = Config {
        mode: Mode::Summary(SummaryOutput::default()),
        ..opts(test_attach(), filter)
    };
    Tracer::start(&config, Wake::EachEvent).expect("starting a summary tracer")
}

/// Reads `tracer`'s summary until it has counted `total` transitions (or
/// fails after 5 s), then once more a little later: nothing else may come.
fn summary_of(tracer: &Tracer, total: u64) -> Summary {
    let read = || tracer.view().summary().expect("reading the summary");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while read().total() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "waited for {total} transitions: {:?}",
            read().transitions
        );
        sleep(Duration::from_millis(20));
    }
    sleep(Duration::from_millis(100));
    read()
}

/// A client socket's transitions when it closes first, and whether the
/// time in the state left is known.
const CLIENT_CLOSING_FIRST: [(TcpState, TcpState, bool); 5] = [
    (Close, SynSent, false),
    (SynSent, Established, true),
    (Established, FinWait1, true),
    (FinWait1, FinWait2, true),
    (FinWait2, Close, true),
];

/// The counts a summary must hold: one of each transition listed, the
/// time in the state left known except for those marked unknown.
fn assert_counts(summary: &Summary, expected: &[(TcpState, TcpState, bool)], side: &str) {
    let mut transitions = [[0u64; STATES]; STATES];
    let mut unknown = [0u64; STATES];
    for &(old, new, known) in expected {
        transitions[old.number() as usize][new.number() as usize] += 1;
        if !known {
            unknown[old.number() as usize] += 1;
        }
    }
    assert_eq!(summary.transitions, transitions, "{side}: transitions");
    assert_eq!(summary.unknown, unknown, "{side}: unknown times");
    for state in 0..STATES {
        assert_eq!(
            summary.timed(state),
            summary.left(state) - summary.unknown[state],
            "{side}: every transition out of {state} has a time or is unknown"
        );
    }
}

/// Summary mode, in the attach mode under test: two tracers, one keeping
/// the listener's port as local port (the server's sockets), the other as
/// remote port (the client's), count exactly one connection's transitions,
/// and its time in ESTABLISHED lands in the slot that holds it.
fn summary_counts_one_connection(v6: bool) {
    let (listener, port) = listen(v6);
    let servers = summary_tracer(Filter {
        local_ports: vec![port],
        ..Filter::default()
    });
    let clients = summary_tracer(Filter {
        remote_ports: vec![port],
        ..Filter::default()
    });
    client_closes_first_to(listener, HOLD);

    let client_side = summary_of(&clients, 5);
    assert_counts(&client_side, &CLIENT_CLOSING_FIRST, "client");
    let server_side = summary_of(&servers, 6);
    assert_counts(
        &server_side,
        &[
            // The listener predates the tracer: its time is not known.
            (Listen, Close, false),
            (Listen, SynRecv, false),
            (SynRecv, Established, true),
            (Established, CloseWait, true),
            (CloseWait, LastAck, true),
            (LastAck, Close, true),
        ],
        "server",
    );
    // The client held the connection HOLD before closing it.
    let established = Established.number() as usize;
    let slot = client_side.slots[established]
        .iter()
        .position(|&n| n == 1)
        .expect("one time in ESTABLISHED");
    let (from, to) = slot_range_us(slot);
    let held_us = client_side.sum_ns[established] / 1000;
    assert!(
        held_us >= HOLD.as_micros() as u64 && held_us < 10_000_000,
        "{held_us} us in ESTABLISHED"
    );
    assert!(from <= held_us && to.is_none_or(|to| held_us <= to));
}

#[test]
fn ipv4_summary_counts_one_connection() {
    let Some(_root) = root() else { return };
    summary_counts_one_connection(false);
}

#[test]
fn ipv6_summary_counts_one_connection() {
    let Some(_root) = root() else { return };
    summary_counts_one_connection(true);
}

/// Summary mode with an owner filter, in the attach mode under test: this
/// process owns the connection's client socket (it called connect() and
/// close()), so a filter on its pid counts the client's five transitions,
/// and a filter on another pid none.
#[test]
fn summary_owner_filter_keeps_the_owners_sockets() {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(false);
    let owner_filter = |pid: u32| Filter {
        remote_ports: vec![port],
        pids: vec![pid],
        ..Filter::default()
    };
    let mine = summary_tracer(owner_filter(std::process::id()));
    let init = summary_tracer(owner_filter(1));
    client_closes_first_to(listener, Duration::ZERO);
    assert_counts(
        &summary_of(&mine, 5),
        &CLIENT_CLOSING_FIRST,
        "owned by this process",
    );
    assert_eq!(summary_of(&init, 0).total(), 0, "owned by init");
}
