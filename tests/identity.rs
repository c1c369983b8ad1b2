//! Who owns a socket, as users name it: the systemd unit, the container and
//! the Kubernetes pod, in -x, JSON and the summary's labels, and the
//! `--unit` and `--container` filters keeping exactly their transitions.
//!
//! Groups named as systemd, containerd and CRI-O name them (systemd and
//! cgroupfs drivers) are made here
//! under the host's cgroup2 mount, with a helper process moved into each,
//! and a kubelet's `/var/log/pods` tree in a temporary `--host-root`; a real
//! Podman container (runc, an image imported from busybox-static) makes a
//! connection from `/libpod_parent/libpod-<id>`. On the host only: the
//! kernel matrix's guests have no cgroup2 mount and no Podman.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, sleep};
use std::time::Duration;

use serde_json::Value;
use tcpstates_testkit::host::{cgroup2_mount, root};
use tcpstates_testkit::net::{http_server, promtool_lint};
use tcpstates_testkit::tracer::TracerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");
const PORT: &str = "TCPSTATES_TEST_IDENTITY_PORT";

/// The transitions of a client that closes first.
const CLIENT: [(&str, &str); 5] = [
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];

/// Not a test: the process the tests move into a group (this binary
/// again). For each line on stdin ("4" or "6") connects to the port in
/// TCPSTATES_TEST_IDENTITY_PORT on that family's loopback, closes first,
/// and answers with the local port.
#[test]
#[ignore = "a helper process of the identity tests, started by them"]
fn identity_peer() {
    let port: u16 = std::env::var(PORT)
        .expect("started by a test")
        .parse()
        .unwrap();
    // SAFETY: PR_SET_NAME reads the NUL-terminated name we own.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_NAME, c"tcps-peer".as_ptr()) },
        0
    );
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let addr = match line.unwrap().trim() {
            "6" => "::1",
            _ => "127.0.0.1",
        };
        let client = TcpStream::connect((addr, port)).unwrap();
        let local = client.local_addr().unwrap().port();
        sleep(Duration::from_millis(20));
        drop(client);
        println!("{local}");
    }
}

/// A helper process in a group, told when to connect.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts a peer that connects to `port`, moved into the group `dir`.
    fn in_group(dir: &Path, port: u16) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "identity_peer", "--ignored", "-q", "--nocapture"])
            .env(PORT, port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        Peer {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    /// Connects once over IPv4 or IPv6 and closes first; returns the
    /// client's port.
    fn connect(&mut self, v6: bool) -> u16 {
        writeln!(self.stdin, "{}", if v6 { 6 } else { 4 }).unwrap();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the peer ended"
            );
            if let Ok(port) = line.trim().parse() {
                return port;
            }
        }
    }

    fn pid(&self) -> u64 {
        self.child.id().into()
    }

    fn end(mut self) {
        drop(self.stdin);
        assert!(self.child.wait().unwrap().success());
    }
}

/// Accepts on both loopbacks and reads each connection to its end, then
/// closes: the clients close first. Its port, and how many it closed.
fn serve() -> (u16, Arc<AtomicUsize>) {
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = v4.local_addr().unwrap().port();
    let v6 = TcpListener::bind(("::1", port)).unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    for listener in [v4, v6] {
        let closed = Arc::clone(&closed);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let closed = Arc::clone(&closed);
                thread::spawn(move || {
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink);
                    drop(stream);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
    }
    (port, closed)
}

/// Waits until the server closed `n` connections: a process forked before
/// would hold a copy of one, and close it last (becoming its owner).
fn wait_closed(closed: &AtomicUsize, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closed.load(Ordering::SeqCst) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the server closed {closed:?} of {n}"
        );
        sleep(Duration::from_millis(5));
    }
}

/// Groups made by a test, removed (deepest first) when it ends.
struct Groups(Vec<PathBuf>);

impl Groups {
    fn make(&mut self, dir: PathBuf) -> PathBuf {
        let mut missing = Vec::new();
        let mut at = dir.as_path();
        while !at.exists() {
            missing.push(at.to_path_buf());
            at = at.parent().unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        self.0.extend(missing.into_iter().rev());
        dir
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn objects(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Each object's (old state, new state), in order.
fn pairs(objects: &[Value]) -> Vec<(String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o["oldstate"].as_str().unwrap().into(),
                o["newstate"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn sorted_pairs(objects: &[Value]) -> Vec<(String, String)> {
    sorted(pairs(objects))
}

fn sorted(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs.sort();
    pairs
}

fn client_transitions(connections: usize) -> Vec<(String, String)> {
    (0..connections)
        .flat_map(|_| CLIENT.iter().map(|(a, b)| (a.to_string(), b.to_string())))
        .collect()
}

/// The rows of the sockets `pid` owns (the clients' sides: the servers'
/// are this process's).
fn rows_of(objects: &[Value], pid: u64) -> Vec<&Value> {
    objects.iter().filter(|o| o["owner_pid"] == pid).collect()
}

fn stop(tracer: TracerProcess) -> Vec<String> {
    let out = tracer.stop(libc::SIGINT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("unjudged"), "{}", out.stderr);
    out.lines
}

#[test]
fn units_pods_and_containers_from_groups_made_here() {
    let Some(_root) = root() else { return };
    let mount = cgroup2_mount();
    let n = std::process::id();
    let uid = format!("{n:08x}-5f60-4a7b-8c9d-{n:012x}");
    let id = format!("{n:08x}{}", "a".repeat(56));
    let mut groups = Groups(Vec::new());
    let unit = groups.make(mount.join(format!("tstest-{n}.slice/tsunit-{n}.service")));
    let pod = groups.make(mount.join(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    )));
    // CRI-O with the cgroupfs driver: another pod, another layout.
    let crio_uid = format!("{n:08x}-0000-4000-8000-{n:012x}");
    let crio_id = format!("{n:08x}{}", "b".repeat(56));
    let crio = groups.make(mount.join(format!("kubepods/besteffort/pod{crio_uid}/crio-{crio_id}")));
    // The kubelet's logs, in a root of their own.
    let host = std::env::temp_dir().join(format!("tcpstates-identity-{n}"));
    let _ = std::fs::remove_dir_all(&host);
    std::fs::create_dir_all(host.join(format!("var/log/pods/shop_cart-{n}_{uid}/app"))).unwrap();
    std::fs::create_dir_all(host.join("var/log/containers")).unwrap();
    std::fs::write(
        host.join(format!("var/log/pods/shop_cart-{n}_{uid}/app/0.log")),
        "",
    )
    .unwrap();
    std::fs::write(
        host.join(format!("var/log/containers/cart-{n}_shop_app-{id}.log")),
        "",
    )
    .unwrap();
    std::fs::create_dir_all(host.join(format!("var/log/pods/web_front-{n}_{crio_uid}/nginx")))
        .unwrap();
    std::fs::write(
        host.join(format!(
            "var/log/containers/front-{n}_web_nginx-{crio_id}.log"
        )),
        "",
    )
    .unwrap();
    let root_arg = host.to_string_lossy().to_string();

    let (port, closed) = serve();
    let mut unit_peer = Peer::in_group(&unit, port);
    let mut pod_peer = Peer::in_group(&pod, port);
    let mut crio_peer = Peer::in_group(&crio, port);
    let tracer = |args: &[&str]| {
        TracerProcess::start(
            Command::new(BIN)
                .args(args)
                .args(["--host-root", &root_arg]),
        )
    };
    let all = tracer(&["-j"]);
    let table = tracer(&["-x", "-w"]);
    let by_unit = tracer(&["-j", "--unit", &format!("tsunit-{n}")]);
    let by_id = tracer(&["-j", "--container", &id[..12]]);
    let by_name = tracer(&["-j", "--container", &format!("cart-{n}/app")]);
    let by_late = tracer(&["-j", "--unit", &format!("tslate-{n}.service")]);
    let by_crio = tracer(&["-j", "--container", &crio_id[..20]]);

    for v6 in [false, true] {
        unit_peer.connect(v6);
        pod_peer.connect(v6);
        crio_peer.connect(v6);
    }
    // A unit started while tracing, connecting at once; its process is
    // forked once the server holds no socket.
    wait_closed(&closed, 6);
    let late = groups.make(mount.join(format!("tstest-{n}.slice/tslate-{n}.service")));
    let mut late_peer = Peer::in_group(&late, port);
    late_peer.connect(false);
    sleep(Duration::from_millis(300));
    let (unit_pid, pod_pid, late_pid) = (unit_peer.pid(), pod_peer.pid(), late_peer.pid());
    let crio_pid = crio_peer.pid();
    unit_peer.end();
    pod_peer.end();
    crio_peer.end();
    late_peer.end();

    let all = objects(&stop(all));
    let table = stop(table);
    let by_unit = objects(&stop(by_unit));
    let by_id = objects(&stop(by_id));
    let by_name = objects(&stop(by_name));
    let by_late = objects(&stop(by_late));
    let by_crio = objects(&stop(by_crio));
    let _ = std::fs::remove_dir_all(&host);

    // Every field, exact, on each of the peers' rows.
    let unit_rows = rows_of(&all, unit_pid);
    assert_eq!(unit_rows.len(), 10, "{unit_rows:#?}");
    for o in unit_rows {
        assert_eq!(o["owner_pid"], unit_pid, "{o}");
        assert_eq!(o["unit"], format!("tsunit-{n}.service"), "{o}");
        assert_eq!(
            (&o["user_unit"], &o["container"], &o["pod"]),
            (&Value::Null, &Value::Null, &Value::Null),
            "{o}"
        );
    }
    let pod_rows = rows_of(&all, pod_pid);
    assert_eq!(pod_rows.len(), 10, "{pod_rows:#?}");
    for o in pod_rows {
        assert_eq!(o["owner_pid"], pod_pid, "{o}");
        assert_eq!(o["unit"], Value::Null, "{o}");
        assert_eq!(
            o["container"],
            serde_json::json!({"runtime": "containerd", "id": id, "name": null}),
            "{o}"
        );
        assert_eq!(
            o["pod"],
            serde_json::json!({"uid": uid, "namespace": "shop", "name": format!("cart-{n}"), "container": "app"}),
            "{o}"
        );
    }
    let crio_rows = rows_of(&all, crio_pid);
    assert_eq!(crio_rows.len(), 10, "{crio_rows:#?}");
    for o in crio_rows {
        assert_eq!(o["unit"], Value::Null, "{o}");
        assert_eq!(
            o["container"],
            serde_json::json!({"runtime": "crio", "id": crio_id, "name": null}),
            "{o}"
        );
        assert_eq!(
            o["pod"],
            serde_json::json!({"uid": crio_uid, "namespace": "web", "name": format!("front-{n}"), "container": "nginx"}),
            "{o}"
        );
    }
    let late_rows = rows_of(&all, late_pid);
    assert_eq!(late_rows.len(), 5, "{late_rows:#?}");
    for o in late_rows {
        assert_eq!(
            (&o["owner_pid"], &o["unit"]),
            (&late_pid.into(), &format!("tslate-{n}.service").into()),
            "{o}"
        );
    }
    // The table's column says it as a user reads it.
    for (pid, shown) in [
        (unit_pid, format!("tsunit-{n}.service")),
        (pod_pid, format!("shop/cart-{n}/app")),
        (crio_pid, format!("web/front-{n}/nginx")),
    ] {
        let rows: Vec<&String> = table
            .iter()
            .filter(|l| l.split_whitespace().nth(3) == Some(&pid.to_string()))
            .collect();
        assert_eq!(rows.len(), 10, "{table:#?}");
        for row in rows {
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cells[cells.len() - 2], shown, "{row}");
        }
    }

    // Each filter keeps exactly its group's transitions, both families.
    for (kept, pid, connections, what) in [
        (&by_unit, unit_pid, 2, "--unit"),
        (&by_id, pod_pid, 2, "--container ID"),
        (&by_name, pod_pid, 2, "--container POD/CONTAINER"),
        (&by_crio, crio_pid, 2, "--container ID, CRI-O"),
        (
            &by_late,
            late_pid,
            1,
            "--unit, a unit started while tracing",
        ),
    ] {
        assert!(
            kept.iter().all(|o| o["owner_pid"] == pid),
            "{what}: {kept:#?}"
        );
        assert_eq!(
            sorted_pairs(kept),
            sorted(client_transitions(connections)),
            "{what}"
        );
    }
    drop(groups);
}

#[test]
fn summary_counts_by_unit() {
    let Some(_root) = root() else { return };
    let mount = cgroup2_mount();
    let n = std::process::id();
    let mut groups = Groups(Vec::new());
    let a = groups.make(mount.join(format!("tstest-{n}.slice/tsa-{n}.service")));
    let b = groups.make(mount.join(format!("tstest-{n}.slice/tsb-{n}.service")));
    let (port, _) = serve();
    let mut a_peer = Peer::in_group(&a, port);
    let mut b_peer = Peer::in_group(&b, port);
    let summary = TracerProcess::start(Command::new(BIN).args(["-S", "-j", "--label-by", "unit"]));
    let metrics = TracerProcess::start(Command::new(BIN).args([
        "--metrics",
        "127.0.0.1:0",
        "--label-by",
        "unit",
        "--max-labels",
        "500",
    ]));
    a_peer.connect(false);
    a_peer.connect(true);
    b_peer.connect(false);
    sleep(Duration::from_millis(300));
    a_peer.end();
    b_peer.end();
    let exposition = scrape(metrics.metrics.unwrap());
    let lines = stop(summary);
    stop(metrics);
    drop(groups);

    let printed: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(printed["by"], "unit");
    let counts = |label: &str| -> Vec<(String, String, u64)> {
        let mut t: Vec<(String, String, u64)> = printed["labels"][label]["transitions"]
            .as_array()
            .unwrap_or_else(|| panic!("no label {label}: {printed}"))
            .iter()
            .map(|t| {
                (
                    t["old"].as_str().unwrap().into(),
                    t["new"].as_str().unwrap().into(),
                    t["count"].as_u64().unwrap(),
                )
            })
            .collect();
        t.sort();
        t
    };
    let expect = |times: u64| {
        let mut t: Vec<(String, String, u64)> = CLIENT
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string(), times))
            .collect();
        t.sort();
        t
    };
    assert_eq!(counts(&format!("tsa-{n}.service")), expect(2));
    assert_eq!(counts(&format!("tsb-{n}.service")), expect(1));

    // The same counts as metrics, each unit its own series.
    let series = |label: &str| {
        format!(
            "tcpstates_transitions_total{{unit=\"{label}\",old_state=\"CLOSE\",new_state=\"SYN_SENT\"}}"
        )
    };
    let value = |label: &str| {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(&series(label)).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {} in\n{exposition}", series(label)))
    };
    assert_eq!(value(&format!("tsa-{n}.service")), "2");
    assert_eq!(value(&format!("tsb-{n}.service")), "1");
    // A valid exposition, labels and all.
    let body = exposition
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body);
    promtool_lint(body);
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The test image: busybox-static's binary as a root file system.
fn podman_image() -> &'static str {
    const IMAGE: &str = "localhost/tcpstates-busybox:test";
    let exists = Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status();
    if exists
        .expect("podman is needed: scripts/setup --test installs it")
        .success()
    {
        return IMAGE;
    }
    let dir = std::env::temp_dir().join(format!("tcpstates-image-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is needed");
    for applet in ["sh", "wget", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    let tar = dir.with_extension("tar");
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    let imported = Command::new("podman")
        .args(["import", "-q"])
        .arg(&tar)
        .arg(IMAGE)
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&tar);
    IMAGE
}

#[test]
fn a_podman_container_by_name() {
    let Some(_root) = root() else { return };
    let image = podman_image();
    let n = std::process::id();
    let name = format!("tcpstates-web-{n}");
    let cidfile = std::env::temp_dir().join(format!("tcpstates-cid-{n}"));
    let _ = std::fs::remove_file(&cidfile);
    let port = http_server();
    let filtered = TracerProcess::start(Command::new(BIN).args(["-j", "--container", &name]));
    let table = TracerProcess::start(Command::new(BIN).args(["-x"]));
    let metrics = TracerProcess::start(Command::new(BIN).args([
        "--metrics",
        "127.0.0.1:0",
        "--label-by",
        "container",
    ]));
    let run = Command::new("podman")
        .args([
            "run",
            // Gone, with its state, as soon as wget is done: its name must
            // be found while it runs.
            "--rm",
            "--runtime",
            "runc",
            "--network=host",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg("--cidfile")
        .arg(&cidfile)
        .args(["--name", &name, image, "/bin/wget", "-q", "-O", "/dev/null"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let id = std::fs::read_to_string(&cidfile)
        .unwrap_or_default()
        .trim()
        .to_string();
    // This process's own connection: not the container's.
    let mut mine = TcpStream::connect(("127.0.0.1", port)).unwrap();
    mine.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    mine.read_to_string(&mut reply).unwrap();
    drop(mine);
    sleep(Duration::from_millis(300));
    let exposition = scrape(metrics.metrics.unwrap());
    let filtered = objects(&stop(filtered));
    let table = stop(table);
    stop(metrics);
    let _ = Command::new("podman").args(["rm", "-f", &name]).output();
    let _ = std::fs::remove_file(&cidfile);
    assert!(
        run.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(id.len(), 64, "the container's id: {id:?}");

    let pairs = pairs(&filtered);
    assert_eq!(
        pairs,
        [
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "the container's client, nothing else: {filtered:#?}"
    );
    for o in &filtered {
        assert_eq!(o["owner_comm"], "wget", "{o}");
        assert_eq!(
            o["container"],
            serde_json::json!({"runtime": "podman", "id": id, "name": name}),
            "{o}"
        );
        assert_eq!(o["cgroup"], format!("/libpod_parent/libpod-{id}"), "{o}");
    }
    let rows: Vec<&String> = table
        .iter()
        .filter(|l| l.contains(&format!("podman:{name}")))
        .collect();
    assert_eq!(rows.len(), 5, "{table:#?}");
    eprintln!("a -x row from the container:\n{}\n{}", table[0], rows[0]);
    let series = format!(
        "tcpstates_transitions_total{{container=\"podman:{name}\",old_state=\"CLOSE\",new_state=\"SYN_SENT\"}} 1"
    );
    assert!(
        exposition.lines().any(|l| l == series),
        "no {series} in\n{exposition}"
    );
}
