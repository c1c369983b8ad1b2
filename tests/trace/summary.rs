//! Summary mode: exact counts of one connection's transitions, and its times in the right slots.

use tcpstates::cause::{Cause, Role};

use super::*;

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
/// time in the state left known except for those marked unknown (or in
/// the state since before the trace).
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
    // Not timed: unknown, or in the state since before the trace (the
    // callers say which of those).
    let mut untimed = summary.unknown;
    for (n, before) in untimed.iter_mut().zip(summary.before_trace) {
        *n += before;
    }
    assert_eq!(untimed, unknown, "{side}: unknown times");
    for state in 0..STATES {
        assert_eq!(
            summary.timed(state),
            summary.left(state) - summary.unknown[state] - summary.before_trace[state],
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
            // The listener predates the tracer: its time is at least the
            // trace's age.
            (Listen, Close, false),
            (Listen, SynRecv, false),
            (SynRecv, Established, true),
            (Established, CloseWait, true),
            (CloseWait, LastAck, true),
            (LastAck, Close, true),
        ],
        "server",
    );
    let mut before_trace = [0; STATES];
    before_trace[Listen.number() as usize] = 1;
    assert_eq!(server_side.before_trace, before_trace, "server");
    assert_eq!(client_side.before_trace, [0; STATES], "client");
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

    // Each side's closes by cause and role, and their lifetimes: the
    // listener's start came before the tracer.
    let closed = |s: &Summary| -> Vec<(Cause, Role, u64)> { s.closes_by_cause().collect() };
    assert_eq!(closed(&client_side), [(Cause::Normal, Role::Client, 1)]);
    assert_eq!(
        closed(&server_side),
        [
            (Cause::Normal, Role::Server, 1),
            (Cause::Listener, Role::Listener, 1)
        ]
    );
    assert_eq!(client_side.lifetime_slots.iter().sum::<u64>(), 1);
    assert!(client_side.lifetime_sum_ns >= HOLD.as_nanos() as u64);
    assert_eq!(client_side.lifetime_unknown, 0);
    assert_eq!(server_side.lifetime_slots.iter().sum::<u64>(), 1);
    assert_eq!(server_side.lifetime_unknown, 1, "the listener's");
}

/// A refused connect counts as refused, for a client, in summary mode.
#[test]
fn summary_counts_a_refused_connect() {
    let Some(_root) = root() else { return };
    let (gone, port) = listen(false);
    drop(gone);
    let clients = summary_tracer(Filter {
        remote_ports: vec![port],
        ..Filter::default()
    });
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    let summary = summary_of(&clients, 2);
    let closed: Vec<_> = summary.closes_by_cause().collect();
    assert_eq!(closed, [(Cause::Refused, Role::Client, 1)]);
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

/// `n` connections to `listener`, each closed by the client first, then by
/// the server once it has read the client's FIN: five transitions a side.
fn connections_to(listener: &std::net::TcpListener, n: usize) {
    let addr = listener.local_addr().unwrap();
    for _ in 0..n {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        read_to_eof(&server);
    }
}

/// A server's socket when the client closes first.
const SERVER_CLOSING_SECOND: [(TcpState, TcpState, bool); 5] = [
    (Listen, SynRecv, false),
    (SynRecv, Established, true),
    (Established, CloseWait, true),
    (CloseWait, LastAck, true),
    (LastAck, Close, true),
];

/// A port-labelled summary tracer (this process's sockets only).
fn port_tracer(ports: PortLabels, max: u16) -> Tracer {
    let config = Config {
        mode: Mode::Summary(SummaryOutput::default()),
        labels: Some(Labels {
            by: LabelBy::Port,
            max,
        }),
        label_ports: ports,
        ..opts(
            test_attach(),
            Filter {
                pids: vec![std::process::id()],
                ..Filter::default()
            },
        )
    };
    Tracer::start(&config, Wake::EachEvent).expect("starting a port-labelled tracer")
}

/// Each label's summary, once `total` transitions are counted.
fn by_port(tracer: &Tracer, total: u64) -> std::collections::BTreeMap<String, Summary> {
    summary_of(tracer, total);
    let labelled = tracer.view().by_label().unwrap().expect("labels");
    assert_eq!(labelled.by, LabelBy::Port);
    labelled.values.into_iter().collect()
}

/// `expected`, `times` times over.
fn times(expected: &[(TcpState, TcpState, bool)], times: usize) -> Vec<(TcpState, TcpState, bool)> {
    expected
        .iter()
        .copied()
        .cycle()
        .take(expected.len() * times)
        .collect()
}

/// A listener's start, then `n` connections' server sides.
fn listener_with(n: usize) -> Vec<(TcpState, TcpState, bool)> {
    let mut expected = vec![(Close, Listen, false)];
    expected.extend(times(&SERVER_CLOSING_SECOND, n));
    expected
}

/// A port number a listener of the test's gets (the tracer knows its
/// owner only if it starts listening while traced, as the pid filter
/// needs); the port chosen first, then the listener.
fn ports_for(
    tracer_first: impl FnOnce(&[u16]) -> Tracer,
    v6: &[bool],
) -> (Tracer, Vec<std::net::TcpListener>) {
    let ports: Vec<u16> = v6.iter().map(|&v6| listen(v6).1).collect();
    let tracer = tracer_first(&ports);
    let listeners = ports
        .iter()
        .zip(v6)
        .map(|(&port, &v6)| {
            std::net::TcpListener::bind(SocketAddr::new(loopback(v6), port)).unwrap()
        })
        .collect();
    (tracer, listeners)
}

/// --label-by port --label-ports A,B: A's and B's listeners' connections
/// under their ports, exactly; C's under `other`; the clients' under
/// `client`.
#[test]
fn summary_counts_by_named_service_port() {
    let Some(_root) = root() else { return };
    let (tracer, listeners) = ports_for(
        |ports| port_tracer(PortLabels::Named(ports[..2].to_vec()), 2),
        &[false, true, false],
    );
    let (a, b, c) = (&listeners[0], &listeners[1], &listeners[2]);
    let port_a = a.local_addr().unwrap().port();
    let port_b = b.local_addr().unwrap().port();
    connections_to(a, 3);
    connections_to(b, 2);
    connections_to(c, 1);
    let labels = by_port(&tracer, 63);
    let names: Vec<&String> = labels.keys().collect();
    let (a_name, b_name) = (port_a.to_string(), port_b.to_string());
    let mut expected = vec!["client", "other", a_name.as_str(), b_name.as_str()];
    expected.sort();
    assert_eq!(names, expected, "{labels:?}");
    assert_counts(&labels[&a_name], &listener_with(3), "port A");
    assert_counts(&labels[&b_name], &listener_with(2), "port B (IPv6)");
    assert_counts(&labels["other"], &listener_with(1), "other");
    assert_counts(
        &labels["client"],
        &times(&CLIENT_CLOSING_FIRST, 6),
        "client",
    );
}

/// --label-by port --max-labels 1: the busiest service port gets the
/// label when the ports are ranked (at a read of the summary here), and
/// counts under it from then on; before, and the other ports, under
/// `other`.
#[test]
fn summary_labels_the_busiest_service_port() {
    let Some(_root) = root() else { return };
    let (tracer, listeners) = ports_for(|_| port_tracer(PortLabels::Busiest, 1), &[false, false]);
    let (a, b) = (&listeners[0], &listeners[1]);
    let port_a = a.local_addr().unwrap().port();
    connections_to(a, 2);
    connections_to(b, 1);
    // Ranked at this read: A, the busier, takes the one label.
    let before = by_port(&tracer, 32);
    assert_eq!(before.keys().collect::<Vec<_>>(), ["client", "other"]);
    connections_to(a, 1);
    connections_to(b, 2);
    let labels = by_port(&tracer, 62);
    let a_name = port_a.to_string();
    assert_counts(
        &labels[&a_name],
        &SERVER_CLOSING_SECOND,
        "port A, once labelled",
    );
    let mut other = listener_with(2);
    other.extend(listener_with(3));
    assert_counts(&labels["other"], &other, "other");
    assert_counts(
        &labels["client"],
        &times(&CLIENT_CLOSING_FIRST, 6),
        "client",
    );
    assert_eq!(labels.len(), 3, "{labels:?}");
}

/// A connection made before the tracer started, then closed: the two
/// ESTABLISHED it leaves count as since before the trace, not unknown; the
/// states entered during the trace are timed.
#[test]
fn summary_counts_states_entered_before_the_trace_apart() {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(false);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    let tracer = summary_tracer(Filter {
        local_ports: vec![port, client_port],
        ..Filter::default()
    });
    drop(client);
    read_to_eof(&server);
    drop(server);
    let summary = summary_of(&tracer, 6);
    let established = Established.number() as usize;
    let mut before_trace = [0u64; STATES];
    before_trace[established] = 2;
    assert_eq!(
        summary.before_trace, before_trace,
        "{:?}",
        summary.transitions
    );
    assert_eq!(summary.unknown, [0; STATES]);
    assert_eq!(summary.timed(established), 0);
    for state in [FinWait1, FinWait2, CloseWait, LastAck] {
        assert_eq!(summary.timed(state.number() as usize), 1, "{state}");
    }
    drop(listener);
}
