//! The snapshot at start: sockets older than the trace get their holder as
//! owner from their first transition, and summary mode's census equals the
//! kernel's own listing of the sockets, namespace by namespace. Each from
//! the socket iterators (this kernel's default) and from the netlink socket
//! diagnostics (the path of kernels without iterators, asked for here).

use std::collections::BTreeMap;
use std::net::{Shutdown, TcpListener};

use tcpstates::census::Census;
use tcpstates::config::{Format, SnapshotFrom, TimeColumns};
use tcpstates::stuck::StuckSocket;
use tcpstates_testkit::netns::{Namespace, ss_states, tcp_states_here};

use super::*;

/// A listener with one connection and a second one left in CLOSE_WAIT
/// (the client shut its side down: it waits in FIN_WAIT2, the server has
/// not closed).
struct Older {
    listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
    waiting_client: TcpStream,
    waiting_server: TcpStream,
    port: u16,
}

impl Older {
    fn open(v6: bool) -> Older {
        let (listener, port) = listen(v6);
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let waiting_client = TcpStream::connect(addr).unwrap();
        let (waiting_server, _) = listener.accept().unwrap();
        waiting_client.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&waiting_server);
        Older {
            listener,
            client,
            server,
            waiting_client,
            waiting_server,
            port,
        }
    }

    /// Closes everything, a new connection to the listener first.
    fn close(self) {
        let Older {
            listener,
            client,
            server,
            waiting_client,
            waiting_server,
            ..
        } = self;
        let late = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (late_server, _) = listener.accept().unwrap();
        drop(late);
        read_to_eof(&late_server);
        drop(late_server);
        drop(waiting_server);
        read_to_eof(&waiting_client);
        drop(waiting_client);
        drop(client);
        read_to_eof(&server);
        drop(server);
        drop(listener);
    }
}

/// This process's name, as the kernel has it (the test runner's thread
/// names are not the process's).
fn my_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_owned()
}

/// Sockets made before the tracer, closed while it runs: every transition
/// of every one, and of the older listener's new child, names this process
/// as the owner, also those made in softirq; the first transition of each
/// older socket has a lower bound.
fn older_sockets_have_their_holders(v6: bool, kernel_keeps: bool, from: SnapshotFrom) {
    let Some(_root) = root() else { return };
    let older = Older::open(v6);
    older_sockets_named(older, kernel_keeps, from, None);
}

/// The same in a second network namespace, which the snapshot enters.
fn in_a_second_namespace(v6: bool, kernel_keeps: bool, from: SnapshotFrom) {
    let Some(_root) = root() else { return };
    let second = Namespace::new().expect("a second network namespace");
    let older = second.run(move || Older::open(v6));
    older_sockets_named(older, kernel_keeps, from, Some(&second));
}

fn older_sockets_named(
    older: Older,
    kernel_keeps: bool,
    from: SnapshotFrom,
    second: Option<&Namespace>,
) {
    let port = older.port;
    // A filter on every state makes the kernel keep times and owners.
    let all_states = (1..=13).fold(0, |mask, n| mask | 1 << n);
    let config = Config {
        attach: test_attach(),
        format: Format::Table {
            times: TimeColumns::default(),
            wide: false,
            extended: true,
        },
        filter: Filter {
            states: if kernel_keeps { all_states } else { 0 },
            ..Filter::default()
        },
        snapshot_from: Some(from),
        ..Config::default()
    };
    let mut capture = Capture::start(&config);
    let taken = capture
        .tracer
        .snapshot()
        .expect("a snapshot was taken")
        .clone();
    assert!(taken.sockets >= 5 && taken.held >= 5, "{taken:?}");
    assert_eq!(taken.source, from);
    sleep(Duration::from_millis(50));
    match second {
        Some(ns) => ns.run(move || older.close()),
        None => older.close(),
    }
    // Three older connections' sides, the late one's two, the listener.
    let events = capture.wait_until("every socket to close", |ev| all_closed(ev, port, 7));
    if let Some(ns) = second {
        let mine = events.iter().filter(|e| e.lport == port || e.rport == port);
        for e in mine {
            assert_eq!(e.netns, ns.inode, "{e:?}");
        }
    }
    let mut bounds = 0;
    for e in events.iter().filter(|e| e.lport == port || e.rport == port) {
        let owner = e
            .owner
            .unwrap_or_else(|| panic!("no owner: {e:?}\n{}", dump(&events)));
        assert_eq!(owner.pid, std::process::id(), "{e:?}\n{}", dump(&events));
        // Before any system call of this process changed the socket's
        // state, the owner is the holder the snapshot found: the process,
        // by its name (a system call names the thread that made it).
        if e.at_least_ns.is_some() && !tcpstates::track::is_owner_moment(e.old, e.new) {
            assert_eq!(owner.comm(), my_comm(), "{e:?}\n{}", dump(&events));
        }
        bounds += usize::from(e.at_least_ns.is_some());
    }
    // The first transition of each of the five older sockets.
    assert_eq!(bounds, 5, "{}", dump(&events));
    let lives = lives(&events, port);
    let child = life_starting(&lives, (Listen, SynRecv));
    assert_eq!(child.events[0].at_least_ns, None, "{}", dump(&events));
}

#[test]
fn ipv4_older_sockets_have_their_holders_kept_by_the_reader() {
    older_sockets_have_their_holders(false, false, SnapshotFrom::Iterators);
}

#[test]
fn ipv6_older_sockets_have_their_holders_kept_by_the_reader() {
    older_sockets_have_their_holders(true, false, SnapshotFrom::Iterators);
}

#[test]
fn ipv4_older_sockets_have_their_holders_kept_by_the_kernel() {
    older_sockets_have_their_holders(false, true, SnapshotFrom::Iterators);
}

#[test]
fn ipv6_older_sockets_have_their_holders_kept_by_the_kernel() {
    older_sockets_have_their_holders(true, true, SnapshotFrom::Iterators);
}

#[test]
fn older_sockets_in_a_second_namespace_have_their_holders_kept_by_the_reader() {
    in_a_second_namespace(false, false, SnapshotFrom::Iterators);
}

#[test]
fn older_sockets_in_a_second_namespace_have_their_holders_kept_by_the_kernel() {
    in_a_second_namespace(true, true, SnapshotFrom::Iterators);
}

#[test]
fn netlink_ipv4_older_sockets_have_their_holders_kept_by_the_reader() {
    older_sockets_have_their_holders(false, false, SnapshotFrom::Netlink);
}

#[test]
fn netlink_ipv6_older_sockets_have_their_holders_kept_by_the_reader() {
    older_sockets_have_their_holders(true, false, SnapshotFrom::Netlink);
}

#[test]
fn netlink_ipv4_older_sockets_have_their_holders_kept_by_the_kernel() {
    older_sockets_have_their_holders(false, true, SnapshotFrom::Netlink);
}

#[test]
fn netlink_ipv6_older_sockets_have_their_holders_kept_by_the_kernel() {
    older_sockets_have_their_holders(true, true, SnapshotFrom::Netlink);
}

#[test]
fn netlink_older_sockets_in_a_second_namespace_have_their_holders_kept_by_the_reader() {
    in_a_second_namespace(true, false, SnapshotFrom::Netlink);
}

#[test]
fn netlink_older_sockets_in_a_second_namespace_have_their_holders_kept_by_the_kernel() {
    in_a_second_namespace(false, true, SnapshotFrom::Netlink);
}

/// A walk larger than the iterator's buffer (a record that does not fit is
/// made again, by a second run for its socket): in a namespace of its own,
/// a listener and 500 connections, all held by this process: every socket
/// found has its holder.
fn every_socket_of_a_big_walk_has_its_holder(from: SnapshotFrom) {
    let Some(_root) = root() else { return };
    const CONNECTIONS: usize = 500;
    assert!(
        tcpstates_testkit::host::raise_file_limit() > 2 * CONNECTIONS as u64 + 100,
        "too few open files allowed"
    );
    let second = Namespace::new().expect("a second network namespace");
    let held = second.run(|| {
        let (listener, _) = listen(false);
        let addr = listener.local_addr().unwrap();
        let pairs: Vec<(TcpStream, TcpStream)> = (0..CONNECTIONS)
            .map(|_| {
                let client = TcpStream::connect(addr).unwrap();
                (client, listener.accept().unwrap().0)
            })
            .collect();
        (listener, pairs)
    });
    let config = Config {
        // -x: the reader keeps the holders, the walk sends a record each.
        format: Format::Table {
            times: TimeColumns::default(),
            wide: false,
            extended: true,
        },
        snapshot_from: Some(from),
        ..opts(
            test_attach(),
            Filter {
                netns: Some(second.inode),
                ..Filter::default()
            },
        )
    };
    let tracer = Tracer::start(&config, Wake::EachEvent).expect("starting the tracer");
    let taken = tracer.snapshot().expect("a snapshot").clone();
    assert_eq!(taken.source, from);
    assert_eq!(
        (taken.sockets, taken.held),
        (2 * CONNECTIONS as u64 + 1, 2 * CONNECTIONS as u64 + 1),
        "{taken:?}"
    );
    drop((tracer, held));
}

#[test]
fn every_socket_of_a_big_walk_has_its_holder_from_iterators() {
    every_socket_of_a_big_walk_has_its_holder(SnapshotFrom::Iterators);
}

#[test]
fn every_socket_of_a_big_walk_has_its_holder_from_netlink() {
    every_socket_of_a_big_walk_has_its_holder(SnapshotFrom::Netlink);
}

/// The census as the kernel listing's names go, states with none left out.
fn named(census: &Census) -> BTreeMap<String, u64> {
    census
        .states()
        .filter(|&(_, n)| n > 0)
        .map(|(state, n)| (TcpState::from_raw(state as i32).to_string(), n))
        .collect()
}

/// Reads the census and `listing` until both hold still and agree (other
/// traffic may come and go); fails with both after 5 s.
fn census_agrees(tracer: &Tracer, what: &str, listing: impl Fn() -> BTreeMap<String, u64>) {
    let exact = tracer.view().census().unwrap().expect("a census").exact;
    if !exact {
        // Only for a reason the counters show: the classic tracepoint
        // has no backup for the transitions the kernel skipped.
        let counters = tracer.counters().unwrap();
        assert!(
            counters.recursion_misses > 0 || counters.map_full > 0,
            "{what}: the census says it is not exact, with no reason: {counters:?}"
        );
        eprintln!("{what}: the census is not exact, as it says: {counters:?}");
        return;
    }
    let census = || named(&tracer.view().census().unwrap().expect("a census"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let before = census();
        let listed = listing();
        let after = census();
        if before == after && after == listed {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: census {after:?}, the kernel lists {listed:?}; {:?}",
            tracer.counters()
        );
        sleep(Duration::from_millis(50));
    }
}

/// Every network namespace's listing, summed (the namespaces' paths, as
/// the snapshot finds them).
fn every_namespace() -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let threads = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .flat_map(|p| {
            std::fs::read_dir(p.path().join("task"))
                .into_iter()
                .flatten()
                .flatten()
        });
    for thread in threads {
        let path = thread.path().join("ns/net");
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !seen.insert(std::os::unix::fs::MetadataExt::ino(&meta)) {
            continue;
        }
        for (state, n) in listing_at(&path) {
            *total.entry(state).or_insert(0) += n;
        }
    }
    total
}

/// The kernel's listing of the namespace at `path`, read from a thread that
/// enters it.
fn listing_at(path: &std::path::Path) -> BTreeMap<String, u64> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on an open namespace descriptor; this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "entering {}", path.display());
        tcp_states_here()
    })
    .join()
    .unwrap()
}

/// Summary mode's census: sockets made before the tracer, in this
/// namespace and in a second one, and changes while it runs. A tracer of
/// the whole host counts what the kernel lists in every namespace; one of
/// the second namespace (--netns) what it lists there; `ss -tan` agrees
/// (on hosts that have it).
fn census_equals_the_kernels_listing_in_each_namespace(from: SnapshotFrom) {
    let Some(_root) = root() else { return };
    let here = Older::open(false);
    let second = Namespace::new().expect("a second network namespace");
    let there = second.run(|| (Older::open(false), Older::open(true)));
    let summary = |netns: Option<u32>| {
        let config = Config {
            mode: Mode::Summary(SummaryOutput::default()),
            snapshot_from: Some(from),
            ..opts(
                test_attach(),
                Filter {
                    netns,
                    ..Filter::default()
                },
            )
        };
        let tracer = Tracer::start(&config, Wake::EachEvent).expect("starting a summary tracer");
        assert_eq!(tracer.snapshot().map(|t| t.source), Some(from));
        tracer
    };
    let host = summary(None);
    let only_second = summary(Some(second.inode));
    let second_listing = || second.run(tcp_states_here);
    let check = |when: &str| {
        census_agrees(
            &only_second,
            &format!("{when}, second namespace"),
            second_listing,
        );
        census_agrees(&host, &format!("{when}, every namespace"), every_namespace);
    };
    check("at start");
    let mut expected = BTreeMap::new();
    expected.insert("LISTEN".to_owned(), 2);
    expected.insert("ESTABLISHED".to_owned(), 4);
    expected.insert("FIN_WAIT2".to_owned(), 2);
    expected.insert("CLOSE_WAIT".to_owned(), 2);
    assert_eq!(second_listing(), expected, "the second namespace as made");
    if let Some(ss) = ss_states(&second.path) {
        assert_eq!(ss, expected, "ss -tan in the second namespace");
    }

    // Changes: the CLOSE_WAIT here ends, one there too, a new connection.
    let Older {
        listener,
        client,
        server,
        waiting_client,
        waiting_server,
        ..
    } = here;
    drop(waiting_server);
    read_to_eof(&waiting_client);
    drop(waiting_client);
    let (_v4, v6) = there;
    let extra = second.run(move || {
        let late = TcpStream::connect(v6.listener.local_addr().unwrap()).unwrap();
        let (late_server, _) = v6.listener.accept().unwrap();
        drop(v6.waiting_server);
        (
            v6.listener,
            v6.client,
            v6.server,
            v6.waiting_client,
            late,
            late_server,
        )
    });
    check("after changes");
    drop((listener, client, server, extra));
    check("after closes");
}

#[test]
fn census_equals_the_kernels_listing_in_each_namespace_from_iterators() {
    census_equals_the_kernels_listing_in_each_namespace(SnapshotFrom::Iterators);
}

#[test]
fn census_equals_the_kernels_listing_in_each_namespace_from_netlink() {
    census_equals_the_kernels_listing_in_each_namespace(SnapshotFrom::Netlink);
}

/// A storm of connections while the tracer starts: no transition is lost
/// between the snapshot and the trace, none counted twice: once the storm
/// is over, the census equals the kernel's listing again.
fn census_stays_exact_across_a_storm_at_start(from: SnapshotFrom) {
    let Some(_root) = root() else { return };
    use std::sync::atomic::{AtomicBool, Ordering};
    use tcpstates_testkit::storm::{self, Ending, Storm};
    let (listener, _) = listen(false);
    let stop = AtomicBool::new(false);
    // Rounds of connections until the tracer has started and watched for
    // a while: the storm spans the start however long it takes (the
    // matrix's emulated guests are slow).
    let tracer = std::thread::scope(|scope| {
        let storm = scope.spawn(|| {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let round = Storm {
                    connections: 1_000,
                    concurrency: 2,
                    ending: Ending::Graceful,
                };
                storm::run(&listener, &round).expect("the storm");
                rounds += 1;
            }
            rounds
        });
        sleep(Duration::from_millis(100));
        let config = Config {
            mode: Mode::Summary(SummaryOutput::default()),
            snapshot_from: Some(from),
            ..opts(test_attach(), Filter::default())
        };
        let tracer = Tracer::start(&config, Wake::EachEvent);
        if tracer.is_err() {
            // The storm ends before the failure is told (the scope waits
            // for it).
            stop.store(true, Ordering::Relaxed);
        }
        let tracer = tracer.expect("starting a summary tracer");
        assert!(!storm.is_finished(), "the storm stopped on its own");
        sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let rounds = storm.join().unwrap();
        assert!(rounds >= 1, "no round of the storm ended");
        tracer
    });
    let summary = tracer.view().summary().unwrap();
    assert!(summary.total() > 0, "the tracer saw none of the storm");
    eprintln!("{}", tracer.snapshot().expect("a snapshot").describe());
    census_agrees(&tracer, "after the storm", every_namespace);
}

#[test]
fn census_stays_exact_across_a_storm_at_start_from_iterators() {
    census_stays_exact_across_a_storm_at_start(SnapshotFrom::Iterators);
}

#[test]
fn census_stays_exact_across_a_storm_at_start_from_netlink() {
    census_stays_exact_across_a_storm_at_start(SnapshotFrom::Netlink);
}

/// A server side left in CLOSE_WAIT (its client shut its side down), on
/// the listener given.
fn close_wait(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&server);
    (client, server)
}

/// --stuck 2 --stuck-states CLOSE_WAIT: two CLOSE_WAIT sockets made before
/// the tracer, one 1.5 s after it started. At 2.5 s exactly the two older
/// ones are stuck, with this process as holder and the trace's age as a
/// lower bound; at 4 s the third too, with its exact time; a CLOSE_WAIT
/// that ended is not. The reader keeping the times (a stream run) and the
/// kernel (summary mode) say the same.
fn stuck_close_waits(v6: bool) {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(v6);
    let older = [close_wait(&listener), close_wait(&listener)];
    let ended = close_wait(&listener);
    let stuck = Some(tcpstates::config::Stuck {
        after: Duration::from_secs(2),
        states: 1 << CloseWait.number(),
        owners: 0,
    });
    let extended = Format::Table {
        times: TimeColumns::default(),
        wide: false,
        extended: true,
    };
    let asked = std::time::Instant::now();
    let mut stream = Capture::start(&Config {
        stuck,
        format: extended,
        ..opts(test_attach(), Filter::default())
    });
    let summary = Tracer::start(
        &Config {
            stuck,
            mode: Mode::Summary(SummaryOutput::default()),
            ..opts(test_attach(), Filter::default())
        },
        Wake::EachEvent,
    )
    .expect("starting a summary tracer");
    let started = std::time::Instant::now();
    let (ended_client, ended_server) = ended;
    drop(ended_server);
    read_to_eof(&ended_client);
    drop(ended_client);
    sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
    let young_made = std::time::Instant::now();
    let young = close_wait(&listener);
    let young_port = young.1.peer_addr().unwrap().port();
    let older_ports: Vec<u16> = older
        .iter()
        .map(|(c, _)| c.local_addr().unwrap().port())
        .collect();
    let mine = |all: Vec<StuckSocket>| -> Vec<StuckSocket> {
        let mut mine: Vec<StuckSocket> =
            all.into_iter().filter(|s| s.found.lport == port).collect();
        mine.sort_by_key(|s| s.found.rport);
        mine
    };
    sleep(Duration::from_millis(2500).saturating_sub(started.elapsed()));
    let from_kernel = || mine(summary.view().stuck_now().unwrap().expect("--stuck"));
    for (who, stuck) in [("reader", mine(stream.stuck())), ("kernel", from_kernel())] {
        let ports: Vec<u16> = stuck.iter().map(|s| s.found.rport).collect();
        assert_eq!(ports, older_ports, "{who}: {stuck:#?}");
        for s in &stuck {
            assert_eq!(s.found.state, CloseWait, "{who}");
            assert!(s.at_least, "{who}: {s:?}");
            let age = s.age_ns;
            assert!(
                age >= 2_000_000_000 && age <= asked.elapsed().as_nanos() as u64,
                "{who}: {s:?}"
            );
            let owner = s.owner.unwrap_or_else(|| panic!("{who}: no holder: {s:?}"));
            assert_eq!(
                (owner.pid, owner.comm().into_owned()),
                (std::process::id(), my_comm())
            );
        }
    }
    sleep(Duration::from_millis(4000).saturating_sub(started.elapsed()));
    for (who, stuck) in [("reader", mine(stream.stuck())), ("kernel", from_kernel())] {
        let ports: Vec<u16> = stuck.iter().map(|s| s.found.rport).collect();
        let mut expected = older_ports.clone();
        expected.push(young_port);
        expected.sort_unstable();
        assert_eq!(ports, expected, "{who}: {stuck:#?}");
        let young = stuck.iter().find(|s| s.found.rport == young_port).unwrap();
        assert!(!young.at_least, "{who}: {young:?}");
        assert!(
            young.age_ns >= 2_000_000_000 && young.age_ns <= young_made.elapsed().as_nanos() as u64,
            "{who}: {young:?}"
        );
        assert_eq!(
            young.owner.map(|o| o.pid),
            Some(std::process::id()),
            "{who}"
        );
    }
    drop((older, young, listener));
}

#[test]
fn ipv4_stuck_close_waits() {
    stuck_close_waits(false);
}

#[test]
fn ipv6_stuck_close_waits() {
    stuck_close_waits(true);
}
