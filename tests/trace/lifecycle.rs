//! Connections from open to close, both families: who closes first, resets, refusals, listeners, reused addresses.

use super::*;

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
