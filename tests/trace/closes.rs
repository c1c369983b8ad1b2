//! Close records (`-C`): each cause made for real on loopback, IPv4 and
//! IPv6, and asserted exactly: the role, the cause, the error, the states
//! (against what event mode reports for the same socket), the data bytes,
//! the owner.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use tcpstates::cause::{Cause, Detail, Role};
use tcpstates::close::Close as Record;
use tcpstates_testkit::net::{client_socket, full_listener, start_connect};

use super::*;

fn close_config(filter: Filter) -> Config {
    Config {
        mode: Mode::Closes,
        ..opts(test_attach(), filter)
    }
}

/// The records of sockets with `port` as their local or remote port.
fn of_port(records: &[Record], port: u16) -> Vec<Record> {
    records
        .iter()
        .filter(|r| r.lport == port || r.rport == port)
        .cloned()
        .collect()
}

/// The one record of that role.
fn one(records: &[Record], role: Role) -> Record {
    let found: Vec<_> = records.iter().filter(|r| r.role == role).collect();
    assert_eq!(found.len(), 1, "one {role} record expected: {records:#?}");
    found[0].clone()
}

fn states(r: &Record) -> Vec<TcpState> {
    r.states().collect()
}

/// The record says what event mode says of the same socket: the same
/// states in the same order, each known time within 10 ms of event mode's,
/// unknown where it is unknown. The two tracers' programs read the clock one
/// after the other for each transition; an interrupt between them (slow
/// under the kernel matrix's emulated CPU) moves one time and the next by
/// its length. 10 ms still tells each state's time from the next one's: the
/// connection is held 30 ms, every other state takes well under 1 ms.
fn same_as_events(r: &Record, events: &[Event]) {
    let mine: Vec<&Event> = events.iter().filter(|e| e.skaddr == r.skaddr).collect();
    let from_events: Vec<TcpState> = mine
        .iter()
        .map(|e| e.old)
        .chain(std::iter::once(TcpState::Close))
        .collect();
    assert_eq!(states(r), from_events, "{r:#?}\nevents:\n{}", dump(events));
    for (step, event) in r.steps().iter().zip(&mine) {
        match (step.spent_ns, event.duration_ns) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(a.abs_diff(b) < 10_000_000, "{step:?} vs {event:?}"),
            other => panic!("known in one and not the other: {other:?} {r:#?}"),
        }
    }
}

/// The owner is this test process, the lifetime known.
fn mine(r: &Record) {
    let owner = r.owner.unwrap_or_else(|| panic!("owner expected: {r:#?}"));
    assert_eq!(owner.pid, std::process::id(), "{r:#?}");
    assert!(r.lifetime_ns.is_some(), "{r:#?}");
    assert!(r.netns != 0);
}

/// Normal closes, each side first, with data each way: the bytes, the
/// states (as event mode reports them), which side sent the first FIN.
#[test]
fn normal_closes_either_side_first() {
    let Some(_root) = root() else { return };
    let mut closes = Capture::closes(&close_config(Filter::default()));
    let mut events = Capture::start(&opts(test_attach(), Filter::default()));
    for v6 in [false, true] {
        for client_first in [true, false] {
            closes.forget();
            events.forget();
            let mut conn = connect(v6);
            let port = conn.port;
            conn.client.write_all(&[1u8; 3000]).unwrap();
            let mut got = vec![0u8; 3000];
            conn.server.read_exact(&mut got).unwrap();
            conn.server.write_all(&[2u8; 1200]).unwrap();
            let mut got = vec![0u8; 1200];
            conn.client.read_exact(&mut got).unwrap();
            sleep(HOLD);
            let (first, second) = if client_first {
                (conn.client, conn.server)
            } else {
                (conn.server, conn.client)
            };
            drop(first);
            read_to_eof(&second);
            drop(second);
            drop(conn.listener);
            let records = closes.wait_until("three records", |r| of_port(r, port).len() >= 3);
            let records = of_port(&records, port);
            let seen = events.wait_until("three sockets to close", |e| all_closed(e, port, 3));
            let (client, server) = (one(&records, Role::Client), one(&records, Role::Server));
            let listener = one(&records, Role::Listener);
            for r in [&client, &server, &listener] {
                mine(r);
                same_as_events(r, &seen);
            }
            let lo = loopback(v6);
            assert_eq!((client.laddr, client.raddr, client.rport), (lo, lo, port));
            assert_eq!((server.laddr, server.lport, server.raddr), (lo, port, lo));
            assert_eq!(server.rport, client.lport);
            assert_eq!(client.counters.bytes_acked, Some(3000), "{client:#?}");
            assert_eq!(client.counters.bytes_received, Some(1200), "{client:#?}");
            assert_eq!(server.counters.bytes_acked, Some(1200), "{server:#?}");
            assert_eq!(server.counters.bytes_received, Some(3000), "{server:#?}");
            assert_eq!(client.counters.retransmits, Some(0));
            assert!(client.counters.srtt_us.is_some() && client.counters.rtt_min_us.is_some());
            let (active, passive) = if client_first {
                (&client, &server)
            } else {
                (&server, &client)
            };
            assert_eq!(
                (active.cause, active.detail),
                (Cause::Normal, Detail::LocalFirst)
            );
            assert_eq!(
                (passive.cause, passive.detail),
                (Cause::Normal, Detail::PeerFirst)
            );
            assert_eq!(
                states(active)[states(active).len() - 3..],
                [FinWait1, FinWait2, TcpState::Close],
                "{active:#?}"
            );
            assert_eq!(
                states(passive)[states(passive).len() - 3..],
                [CloseWait, LastAck, TcpState::Close],
                "{passive:#?}"
            );
            assert_eq!(
                states(&listener),
                [TcpState::Close, Listen, TcpState::Close]
            );
            assert_eq!(listener.cause, Cause::Listener);
            assert!(client.lifetime_ns.unwrap() >= HOLD.as_nanos() as u64);
            assert_eq!(client.error, 0);
        }
    }
}

/// A closed port answers the SYN with a reset: refused, ECONNREFUSED.
#[test]
fn refused() {
    let Some(_root) = root() else { return };
    let mut closes = Capture::closes(&close_config(Filter::default()));
    for v6 in [false, true] {
        closes.forget();
        let (listener, port) = listen(v6);
        drop(listener);
        let err = TcpStream::connect(SocketAddr::new(loopback(v6), port)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
        let records = closes.wait_until("the refused client", |r| !of_port(r, port).is_empty());
        let r = one(&of_port(&records, port), Role::Client);
        mine(&r);
        assert_eq!(
            (r.cause, r.detail),
            (Cause::Refused, Detail::None),
            "{r:#?}"
        );
        assert_eq!(r.error_name().as_deref(), Some("ECONNREFUSED"));
        assert_eq!(states(&r), [TcpState::Close, SynSent, TcpState::Close]);
        assert_eq!(r.counters.bytes_acked, Some(0));
        assert_eq!(r.counters.bytes_received, Some(0));
    }
}

/// A listener whose accept queue is full drops the SYN; a client that
/// sends it twice at most (TCP_SYNCNT 1) gives up after about 3 s:
/// timeout in the handshake, ETIMEDOUT. Both families at once.
#[test]
fn handshake_timeout() {
    let Some(_root) = root() else { return };
    let mut closes = Capture::closes(&close_config(Filter::default()));
    let full = [full_listener(false), full_listener(true)];
    let clients: Vec<_> = full
        .iter()
        .map(|(_, _, addr)| {
            let fd = client_socket(*addr, 1, true).expect("client socket");
            let err = start_connect(&fd, *addr).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS));
            (fd, addr.port())
        })
        .collect();
    // The connects give up within 3-4 s; wait_until allows 5 s.
    sleep(Duration::from_secs(2));
    let records = closes.wait_until("both handshakes to time out", |r| {
        clients
            .iter()
            .all(|(_, port)| of_port(r, *port).iter().any(|r| r.role == Role::Client))
    });
    for (_, port) in &clients {
        let r = one(&of_port(&records, *port), Role::Client);
        mine(&r);
        assert_eq!(
            (r.cause, r.detail),
            (Cause::Timeout, Detail::Handshake),
            "{r:#?}"
        );
        assert_eq!(r.error_name().as_deref(), Some("ETIMEDOUT"));
        assert_eq!(states(&r), [TcpState::Close, SynSent, TcpState::Close]);
        let in_syn_sent = r.steps()[1].spent_ns.unwrap();
        assert!(
            (2_500_000_000..6_000_000_000).contains(&in_syn_sent),
            "two SYNs, 1 s then 2 s: {r:#?}"
        );
    }
    drop(full);
}

/// The application closes during the handshake (a non-blocking connect to
/// a full listener, closed in SYN_SENT): cancelled, no error.
#[test]
fn cancelled() {
    let Some(_root) = root() else { return };
    let mut closes = Capture::closes(&close_config(Filter::default()));
    for v6 in [false, true] {
        closes.forget();
        let (_listener, _queued, addr) = full_listener(v6);
        let fd = client_socket(addr, 3, true).expect("client socket");
        assert_eq!(
            start_connect(&fd, addr).unwrap_err().raw_os_error(),
            Some(libc::EINPROGRESS)
        );
        sleep(Duration::from_millis(50));
        drop(fd);
        let records = closes.wait_until("the cancelled client", |r| {
            of_port(r, addr.port())
                .iter()
                .any(|r| r.role == Role::Client)
        });
        let r = one(&of_port(&records, addr.port()), Role::Client);
        mine(&r);
        assert_eq!((r.cause, r.error), (Cause::Cancelled, 0), "{r:#?}");
        assert_eq!(states(&r), [TcpState::Close, SynSent, TcpState::Close]);
        assert!(r.steps()[1].spent_ns.unwrap() >= 50_000_000);
    }
}

/// Resets: the server closes with SO_LINGER 0 (aborted by it, reset for
/// the client); the server closes with data it has not read (aborted:
/// unread data; reset for the client).
#[test]
fn resets_and_aborts() {
    let Some(_root) = root() else { return };
    let mut closes = Capture::closes(&close_config(Filter::default()));
    for v6 in [false, true] {
        for unread in [false, true] {
            closes.forget();
            let mut conn = connect(v6);
            let port = conn.port;
            if unread {
                conn.client.write_all(&[3u8; 700]).unwrap();
                sleep(Duration::from_millis(20));
            } else {
                set_linger_zero(&conn.server);
            }
            drop(conn.server);
            sleep(Duration::from_millis(20));
            let mut buf = [0u8; 16];
            let err = conn.client.read(&mut buf).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET));
            drop(conn.client);
            drop(conn.listener);
            let records = closes.wait_until("three records", |r| of_port(r, port).len() >= 3);
            let records = of_port(&records, port);
            let (client, server) = (one(&records, Role::Client), one(&records, Role::Server));
            mine(&client);
            mine(&server);
            let why = if unread {
                Detail::UnreadData
            } else {
                Detail::LingerZero
            };
            assert_eq!(
                (server.cause, server.detail),
                (Cause::Aborted, why),
                "{server:#?}"
            );
            assert_eq!(
                states(&server),
                [Listen, SynRecv, Established, TcpState::Close]
            );
            assert_eq!(
                (client.cause, client.error),
                (Cause::Reset, libc::ECONNRESET),
                "{client:#?}"
            );
            assert_eq!(
                states(&client),
                [TcpState::Close, SynSent, Established, TcpState::Close]
            );
            let sent = if unread { 700 } else { 0 };
            assert_eq!(client.counters.bytes_acked, Some(sent), "{client:#?}");
            assert_eq!(server.counters.bytes_received, Some(sent), "{server:#?}");
        }
    }
}

/// The filters apply to records: a local port and a cause.
#[test]
fn filters_by_port_and_cause() {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(false);
    let refused_port = {
        let (gone, port) = listen(false);
        drop(gone);
        port
    };
    let filter = Filter {
        causes: 1 << Cause::Refused as u32 | 1 << Cause::Listener as u32,
        remote_ports: vec![port, refused_port],
        ..Filter::default()
    };
    let mut closes = Capture::closes(&close_config(filter));
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    read_to_eof(&server);
    drop(server);
    TcpStream::connect(("127.0.0.1", refused_port)).unwrap_err();
    drop(listener);
    closes.wait_until("the refused client", |r| {
        r.iter().any(|r| r.rport == refused_port)
    });
    sleep(Duration::from_millis(200));
    let records = closes.wait_until("nothing more", |_| true);
    // The normal client and server fail the cause filter, the listener
    // the remote port filter (its remote port is 0).
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(
        (records[0].cause, records[0].rport),
        (Cause::Refused, refused_port)
    );
}

/// A listener closed with a connection it never handed to accept(): the
/// child is aborted (unaccepted), the client reset.
#[test]
fn unaccepted() {
    let Some(_root) = root() else { return };
    let mut closes = Capture::closes(&close_config(Filter::default()));
    for v6 in [false, true] {
        closes.forget();
        let (listener, queued, addr) = full_listener(v6);
        sleep(Duration::from_millis(20));
        drop(listener);
        closes.wait_until("the listener's records", |r| {
            of_port(r, addr.port()).len() >= 2
        });
        drop(queued);
        let records = closes.wait_until("the client's record", |r| {
            of_port(r, addr.port()).len() >= 3
        });
        let records = of_port(&records, addr.port());
        let server = one(&records, Role::Server);
        assert_eq!(
            (server.cause, server.detail),
            (Cause::Aborted, Detail::Unaccepted),
            "{server:#?}"
        );
        assert_eq!(
            states(&server),
            [Listen, SynRecv, Established, TcpState::Close]
        );
        let client = one(&records, Role::Client);
        assert_eq!(
            (client.cause, client.error),
            (Cause::Reset, libc::ECONNRESET),
            "{client:#?}"
        );
        assert_eq!(one(&records, Role::Listener).cause, Cause::Listener);
    }
}

/// A connection made before the tracer, closed by its client while it
/// runs: each side's record shows its ESTABLISHED as a lower bound, at
/// least the time held and at most the time since the tracer was asked to
/// start, the states after it exactly; its lifetime and role stay unknown,
/// its owner is this process (the snapshot's holder).
#[test]
fn older_sockets_records_bound_their_first_state() {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(false);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let asked = std::time::Instant::now();
    let mut capture = Capture::closes(&close_config(Filter {
        local_ports: vec![port, client.local_addr().unwrap().port()],
        ..Filter::default()
    }));
    let hold = Duration::from_millis(100);
    sleep(hold);
    drop(client);
    read_to_eof(&server);
    drop(server);
    let records = capture.wait_until("both sides' records", |r| of_port(r, port).len() == 2);
    let age = asked.elapsed();
    for r in of_port(&records, port) {
        let first = r.steps()[0];
        assert_eq!((first.state, first.spent_ns), (Established, None), "{r:#?}");
        let bound = first
            .at_least_ns
            .unwrap_or_else(|| panic!("no bound: {r:#?}"));
        assert!(
            bound >= hold.as_nanos() as u64 && bound <= age.as_nanos() as u64,
            "{r:#?}"
        );
        for later in &r.steps()[1..] {
            assert!(
                later.spent_ns.is_some() && later.at_least_ns.is_none(),
                "{r:#?}"
            );
        }
        assert_eq!(r.lifetime_ns, None, "{r:#?}");
        assert_eq!(r.owner.map(|o| o.pid), Some(std::process::id()), "{r:#?}");
    }
    drop(listener);
}
