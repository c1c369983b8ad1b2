//! The kernel's filters: family, ports, state, duration, namespace.

use super::*;

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
