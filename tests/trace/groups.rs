//! The kernel's table of groups, on every kernel and attach mode: `--unit`
//! keeps exactly a unit started while tracing (the cgroup_mkdir program, or
//! the reader's judgement), and summary mode counts by unit. The groups are
//! made here under the cgroup2 mount (the kernel matrix's guests mount one);
//! `busybox wget` fetches from inside them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use tcpstates::config::{Format, LabelBy, Labels};
use tcpstates_testkit::host::cgroup2_mount;
use tcpstates_testkit::net::http_server;

/// The transitions of a client whose server closes first.
const FETCH: [(TcpState, TcpState); 5] = [
    (Close, SynSent),
    (SynSent, Established),
    (Established, CloseWait),
    (CloseWait, LastAck),
    (LastAck, Close),
];

/// One fetch by `busybox wget` from inside `group`; its pid.
fn fetch_from(group: &Path, port: u16) -> u32 {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec busybox wget -q -O /dev/null http://127.0.0.1:{port}/",
        group.display()
    );
    let mut child = Command::new("busybox")
        .args(["sh", "-c", &script])
        .spawn()
        .expect("busybox is needed (busybox-static)");
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "the fetch from {group:?}");
    pid
}

#[test]
fn unit_filter_keeps_a_unit_started_while_tracing() {
    let Some(_root) = root() else { return };
    let name = format!("tstrace-{}.service", std::process::id());
    let port = http_server();
    let config = Config {
        format: Format::Json,
        filter: Filter {
            family: Some(Family::Ipv4),
            unit: Some(name.clone()),
            ..Filter::default()
        },
        ..opts(test_attach(), Filter::default())
    };
    let mut capture = Capture::start(&config);
    let group = cgroup2_mount().join(&name);
    std::fs::create_dir(&group).unwrap();
    let pid = fetch_from(&group, port);
    capture.wait_until("the fetch's transitions", |ev| ev.len() >= FETCH.len());
    sleep(Duration::from_millis(200));
    let events = capture.wait_until("nothing more", |_| true);
    let _ = std::fs::remove_dir(&group);
    let transitions: Vec<(TcpState, TcpState)> = events.iter().map(|e| (e.old, e.new)).collect();
    assert_eq!(
        transitions,
        FETCH,
        "only the unit's fetch: {}",
        dump(&events)
    );
    for e in &events {
        assert_eq!(e.owner.map(|o| o.pid), Some(pid), "{}", dump(&events));
        let identity = e.identity.as_ref().expect("the owner's identity");
        assert_eq!(identity.unit.as_deref(), Some(name.as_str()));
    }
}

#[test]
fn summary_counts_by_unit() {
    let Some(_root) = root() else { return };
    let n = std::process::id();
    let units = [
        format!("tstrace-a-{n}.service"),
        format!("tstrace-b-{n}.service"),
    ];
    let groups: Vec<PathBuf> = units.iter().map(|u| cgroup2_mount().join(u)).collect();
    for group in &groups {
        std::fs::create_dir(group).unwrap();
    }
    let port = http_server();
    let config = Config {
        mode: Mode::Summary(SummaryOutput::default()),
        labels: Some(Labels {
            by: LabelBy::Unit,
            max: 500,
        }),
        ..opts(test_attach(), Filter::default())
    };
    let tracer = Tracer::start(&config, Wake::EachEvent).expect("starting the tracer");
    fetch_from(&groups[0], port);
    fetch_from(&groups[0], port);
    fetch_from(&groups[1], port);
    sleep(Duration::from_millis(300));
    let by_label = tracer.view().by_label().unwrap().expect("labels");
    drop(tracer);
    for group in &groups {
        let _ = std::fs::remove_dir(group);
    }
    for (unit, fetches) in units.iter().zip([2, 1]) {
        let summary = &by_label
            .values
            .iter()
            .find(|(label, _)| label == unit)
            .unwrap_or_else(|| panic!("no label {unit}: {by_label:?}"))
            .1;
        for old in 0..STATES {
            for new in 0..STATES {
                let want = FETCH
                    .iter()
                    .filter(|(o, n)| o.number() as usize == old && n.number() as usize == new)
                    .count() as u64
                    * fetches;
                assert_eq!(
                    summary.transitions[old][new], want,
                    "{unit}: {old} -> {new}"
                );
            }
        }
    }
}
