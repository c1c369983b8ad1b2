//! Sockets older than the trace: the time in the state they leave first is
//! a lower bound, the trace's age, whether the reader keeps the times or
//! the kernel does.

use std::time::Instant;

use super::*;

/// A connection made before the tracer starts, closed by the client
/// `hold` after it started: the first transition of each side shows at
/// least `hold` and at most the time since the tracer was asked to start;
/// the next ones exact times.
fn older_than_the_trace(v6: bool, kernel_keeps: bool) {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(v6);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    sleep(Duration::from_millis(20));
    // A port filter makes the kernel keep the times (both sides here).
    let filter = match kernel_keeps {
        true => Filter {
            local_ports: vec![port, client_port],
            ..Filter::default()
        },
        false => Filter::default(),
    };
    let asked = Instant::now();
    let mut capture = Capture::start(&opts(test_attach(), filter));
    let hold = Duration::from_millis(100);
    sleep(hold);
    drop(client);
    read_to_eof(&server);
    drop(server);
    let mine = |e: &Event| e.lport == client_port || (e.lport == port && e.rport == client_port);
    let events: Vec<Event> = capture
        .wait_until("both sides closed", |events| {
            events.iter().filter(|e| mine(e) && e.new == Close).count() == 2
        })
        .into_iter()
        .filter(mine)
        .collect();
    let age = asked.elapsed();
    let side = |lport: u16| -> Vec<&Event> { events.iter().filter(|e| e.lport == lport).collect() };
    for (name, side, first) in [
        ("client", side(client_port), (Established, FinWait1)),
        ("server", side(port), (Established, CloseWait)),
    ] {
        let describe = || format!("{name}: {}", dump(&events));
        assert_eq!((side[0].old, side[0].new), first, "{}", describe());
        assert_eq!(side[0].duration_ns, None, "{}", describe());
        let at_least = side[0]
            .at_least_ns
            .unwrap_or_else(|| panic!("no bound: {}", describe()));
        assert!(
            at_least >= hold.as_nanos() as u64 && at_least <= age.as_nanos() as u64,
            "{name}: at least {at_least} ns, held {hold:?}, traced under {age:?}"
        );
        for later in &side[1..] {
            assert!(later.duration_ns.is_some(), "{}", describe());
            assert_eq!(later.at_least_ns, None, "{}", describe());
        }
    }
}

#[test]
fn ipv4_lower_bound_kept_by_the_reader() {
    older_than_the_trace(false, false);
}

#[test]
fn ipv6_lower_bound_kept_by_the_reader() {
    older_than_the_trace(true, false);
}

#[test]
fn ipv4_lower_bound_kept_by_the_kernel() {
    older_than_the_trace(false, true);
}

#[test]
fn ipv6_lower_bound_kept_by_the_kernel() {
    older_than_the_trace(true, true);
}

/// A socket that starts during the trace never gets a bound: its first
/// transition's time is unknown (it came from CLOSE).
#[test]
fn new_sockets_get_no_bound() {
    let Some(_root) = root() else { return };
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    let (listener, port) = listen(false);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    read_to_eof(&server);
    drop(server);
    let events = capture.wait_until("the server side closed", |events| {
        events
            .iter()
            .any(|e| e.lport == port && e.new == Close && e.old != Listen)
    });
    for e in events.iter().filter(|e| e.lport == port || e.rport == port) {
        assert_eq!(e.at_least_ns, None, "{}", dump(&events));
    }
}
