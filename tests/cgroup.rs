//! `--cgroup`: a process moved into a fresh cgroup v2 group made here (one
//! level below the group filtered on), its sockets kept and this process's
//! dropped. On the host only: the kernel matrix's guests mount no cgroup2,
//! and 5.10 lets no tracing program ask for a cgroup's ancestors.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use serde_json::Value;
use tcpstates_testkit::host::{cgroup2_mount, root};
use tcpstates_testkit::net::read_to_eof;
use tcpstates_testkit::tracer::TracerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");
const PORT: &str = "TCPSTATES_TEST_CGROUP_PORT";

/// Not a test: the process the test moves into its group (this binary
/// again). Connects to the port in TCPSTATES_TEST_CGROUP_PORT once told on
/// stdin, and closes.
#[test]
#[ignore = "a helper process of the cgroup test, started by it"]
fn cgroup_peer() {
    let port: u16 = std::env::var(PORT)
        .expect("started by the cgroup test")
        .parse()
        .unwrap();
    // SAFETY: PR_SET_NAME reads the NUL-terminated name we own.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_NAME, c"tcps-grouped".as_ptr()) },
        0
    );
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sleep(Duration::from_millis(20));
    drop(client);
}

#[test]
fn cgroup_filter_keeps_the_group_and_below() {
    let Some(_root) = root() else { return };
    let mount = cgroup2_mount();
    let outer = format!("tcpstates-test-{}", std::process::id());
    let inner = mount.join(&outer).join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    let mut peer = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cgroup_peer", "--ignored", "-q"])
        .env(PORT, port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(inner.join("cgroup.procs"), peer.id().to_string()).unwrap();

    let tracer = TracerProcess::start(Command::new(BIN).args([
        "-j",
        "-4",
        "--cgroup",
        &format!("/{outer}"),
    ]));

    writeln!(peer.stdin.take().unwrap(), "go").unwrap();
    let (server, _) = listener.accept().unwrap();
    read_to_eof(&server, Some(Duration::from_secs(5)));
    drop((server, listener));
    assert!(peer.wait().unwrap().success());
    sleep(Duration::from_millis(300));
    let out = tracer.stop(libc::SIGINT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let _ = std::fs::remove_dir(&inner);
    let _ = std::fs::remove_dir(mount.join(&outer));

    let objects: Vec<Value> = out
        .lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Everything kept is owned from inside the group.
    for o in &objects {
        let cgroup = o["cgroup"].as_str().unwrap_or_else(|| panic!("{o}"));
        assert!(cgroup.starts_with(&format!("/{outer}")), "{o}");
    }
    let mine: Vec<&Value> = objects
        .iter()
        .filter(|o| o["lport"] == port || o["rport"] == port)
        .collect();
    let transitions: Vec<(&str, &str)> = mine
        .iter()
        .map(|o| {
            (
                o["oldstate"].as_str().unwrap(),
                o["newstate"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        transitions,
        [
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE")
        ],
        "only the grouped client's side: {mine:#?}"
    );
    for o in mine {
        assert_eq!(o["owner_pid"].as_u64(), Some(u64::from(peer.id())), "{o}");
        assert_eq!(o["owner_comm"], "tcps-grouped", "{o}");
        assert_eq!(o["cgroup"], format!("/{outer}/inner"), "{o}");
    }
}
