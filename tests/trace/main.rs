//! Root tests: load the real program, make real loopback connections, and
//! assert the exact transitions of every socket. One test binary (the
//! kernel matrix runs it in each attach mode), one file per topic:
//! `lifecycle` (connections from open to close), `filters`, `attach`
//! (modes, fallbacks, BTF), `json`, `owners`, `summary`, `groups` (the
//! kernel's table of cgroups: units, labels), `closes` (close records).

#[path = "../common/mod.rs"]
mod common;

mod attach;
mod closes;
mod filters;
mod groups;
mod json;
mod lifecycle;
mod older;
mod owners;
mod snapshot;
mod summary;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::Duration;

use common::*;
use tcpstates::config::{
    AttachMode, Config, DEFAULT_MAP_SOCKETS, Family, Filter, LabelBy, Labels, Mode, PortLabels,
    SummaryOutput,
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
