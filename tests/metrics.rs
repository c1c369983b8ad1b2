//! The metrics endpoint under real scrapers: Prometheus itself (Debian's
//! prometheus, started here on loopback with its own configuration and
//! data, stopped by its pid), promtool's lint, and a hostile client, while
//! real traffic runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use tcpstates_testkit::groundtruth::TransitionCounter;
use tcpstates_testkit::host::root;
use tcpstates_testkit::net::{listen, loopback, promtool_lint, read_to_eof};
use tcpstates_testkit::process;
use tcpstates_testkit::storm::{self, Ending, Storm};
use tcpstates_testkit::tracer::TracerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstates");

/// A tracer started with `args`, attached.
fn tracer(args: &[&str]) -> TracerProcess {
    TracerProcess::start(Command::new(BIN).args(args))
}

/// One HTTP/1.1 GET of `path` at `addr`, the connection closed after it;
/// the status code and the body.
fn get(addr: SocketAddr, path: &str, accept: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end: {response:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    // hyper sends a whole body of known length: no chunks to undo.
    Ok((status, body.to_owned()))
}

/// A free loopback port (free when asked; nothing else here takes ports).
fn free_port() -> u16 {
    listen(false).1
}

/// A Prometheus server scraping one target every second.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        Self::start_jobs(&format!(
            "  - job_name: tcpstates\n    static_configs:\n      - targets: ['{target}']\n"
        ))
    }

    /// Scraping as the scrape configurations `jobs` (YAML list items) say.
    fn start_jobs(jobs: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tcpstates-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n{jobs}"
            ),
        )
        .unwrap();
        let addr = SocketAddr::new(loopback(false), free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus: scripts/setup --test installs it)");
        let prometheus = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(get(addr, "/-/ready", "*/*"), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "prometheus never got ready: {}",
                prometheus.log()
            );
            sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The value of a PromQL expression whose answer is one sample.
    fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={encoded}"), "*/*")
            .expect("asking prometheus");
        assert_eq!(status, 200, "{promql}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("prometheus's JSON");
        let result = answer["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql}: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits up to 20 s for `promql` to answer `want`.
    fn wait_for(&self, promql: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.query(promql);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: {got:?}, not {want}; prometheus said: {}",
                self.log()
            );
            sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        process::signal(&self.child, libc::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection to `listener` that the server closes first; how long the
/// client's connect() took (its time in SYN_SENT is within it).
fn server_closes_first(listener: &TcpListener) -> Duration {
    let started = Instant::now();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let connect = started.elapsed();
    let (server, _) = listener.accept().unwrap();
    drop(server);
    read_to_eof(&client, Some(Duration::from_secs(5)));
    connect
}

#[test]
fn prometheus_scrapes_real_traffic_and_answers_promql() {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(false);
    // The clients' sockets only: remote port `port`.
    let tracer = tracer(&["--metrics", "127.0.0.1:0", "-D", &port.to_string()]);
    let addr = tracer
        .metrics
        .expect("the tracer names its metrics address");

    // promtool lints the classic text format; OpenMetrics when asked for.
    let (status, text) = get(addr, "/metrics", "text/plain").unwrap();
    assert_eq!(status, 200, "{text}");
    promtool_lint(&text);
    let (_, open) = get(
        addr,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
    )
    .unwrap();
    assert!(open.ends_with("# EOF\n"), "{open}");

    let prometheus = Prometheus::start(addr);
    prometheus.wait_for("up{job=\"tcpstates\"}", 1.0);
    let attach = prometheus.query("count(tcpstates_build_info{attach_mode=\"tp-btf\"})");
    assert_eq!(attach, Some(1.0));
    // One connection makes the series exist; two scrapes later, 40 more
    // over four seconds.
    let close_wait =
        "tcpstates_transitions_total{old_state=\"ESTABLISHED\",new_state=\"CLOSE_WAIT\"}";
    server_closes_first(&listener);
    prometheus.wait_for(close_wait, 1.0);
    sleep(Duration::from_secs(2));
    let mut connects: Vec<Duration> = (0..40)
        .map(|_| {
            sleep(Duration::from_millis(100));
            server_closes_first(&listener)
        })
        .collect();
    prometheus.wait_for(close_wait, 41.0);
    prometheus.wait_for(
        "tcpstates_state_duration_seconds_count{state=\"SYN_SENT\"}",
        41.0,
    );
    prometheus.wait_for("tcpstates_unknown_durations_total{state=\"CLOSE\"}", 41.0);

    // The rate over the last minute: the 40 (Prometheus extrapolates a
    // little past the first and last scrape, never below).
    let rate = prometheus
        .query(&format!("rate({close_wait}[1m])"))
        .expect("a rate");
    assert!(
        (40.0 / 60.0..=60.0 / 60.0).contains(&rate),
        "{rate} per second"
    );
    // The median time in SYN_SENT, interpolated inside its log2 bucket: at
    // most twice the true median, which is at most the median connect().
    let median = prometheus
        .query(
            "histogram_quantile(0.5, sum by (le) \
             (rate(tcpstates_state_duration_seconds_bucket{state=\"SYN_SENT\"}[1m])))",
        )
        .expect("a quantile");
    connects.sort();
    let connect_median = connects[connects.len() / 2].as_secs_f64();
    assert!(
        median > 0.0 && median <= 2.0 * connect_median,
        "median {median} s in SYN_SENT; connect() took {connect_median} s"
    );
    drop(prometheus);

    let stopped = tracer.stop(libc::SIGINT);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
}

/// Opens `n` connections to `addr` and writes `send` on each, never reading.
fn hostile(addr: SocketAddr, n: usize, send: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("a hostile connection");
            let _ = stream.write_all(send);
            stream
        })
        .collect()
}

/// Peak resident memory of a process, from /proc, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Stops a `-S -j` tracer; its one JSON summary's transition count.
fn summary_total(child: TracerProcess) -> u64 {
    let out = child.interrupt_and_read();
    let summary: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    summary["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_hostile_scraper_cannot_hurt_the_tracer() {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(false);
    let port = port.to_string();
    let servers = tracer(&["-S", "-j", "--metrics", "127.0.0.1:0", "-L", &port]);
    let addr = servers.metrics;
    let addr = addr.expect("the tracer names its metrics address");
    let clients = tracer(&["-S", "-j", "-D", &port]);
    let truth = TransitionCounter::start(port.parse().unwrap()).expect("ground-truth counter");
    let before = peak_rss_kib(servers.pid());

    // Hundreds of idle connections, garbage, requests cut in half, and
    // clients that ask for many scrapes and never read them.
    let mut held = hostile(addr, 300, b"");
    held.extend(hostile(
        addr,
        50,
        b"\x16\x03\x01\x00\xa5\x01\x00\xff garbage\r\n\r\n",
    ));
    held.extend(hostile(
        addr,
        50,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAcc",
    ));
    held.extend(hostile(
        addr,
        50,
        &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(50),
    ));

    let storm = Storm {
        connections: 2000,
        concurrency: 4,
        ending: Ending::Graceful,
    };
    let scrapes = std::thread::scope(|scope| {
        let storming = scope.spawn(|| storm::run(&listener, &storm).expect("storm"));
        let mut scrapes = 0;
        while !storming.is_finished() || scrapes < 10 {
            let (status, body) = get(addr, "/metrics", "text/plain")
                .unwrap_or_else(|e| panic!("a well-behaved scrape failed: {e}"));
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("tcpstates_transitions_total{"), "{body}");
            scrapes += 1;
            sleep(Duration::from_millis(50));
        }
        storming.join().unwrap();
        scrapes
    });
    drop(listener);
    sleep(Duration::from_millis(300));
    let expected = truth.count().unwrap();
    assert!(
        expected >= 2000 * 10 * 99 / 100,
        "{expected}: the storm did not run"
    );
    let peak = peak_rss_kib(servers.pid());
    drop(held);
    let counted = summary_total(servers) + summary_total(clients);
    assert_eq!(counted, expected);
    eprintln!(
        "metrics endpoint under 450 hostile connections: {scrapes} scrapes answered; \
         peak RSS {before} KiB before, {peak} KiB after"
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

/// curl's answer to `args`: its exit code, the HTTP status (0 when there
/// was none) and the body.
fn curl(args: &[&str]) -> (i32, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (Debian package curl: scripts/setup --test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
    )
}

/// What a plain HTTP request to `addr` gets back (bytes, lossy), within 3 s.
fn plain_http_answer(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn prometheus_scrapes_over_tls_with_client_certificates_and_basic_auth() {
    let Some(_root) = root() else { return };
    let pki = tcpstates_testkit::tls::Pki::make("scrape");
    let hash = bcrypt::hash("s3cret", 6).unwrap();
    // Relative paths: from the file's directory, as in the toolkit.
    let web = pki.dir().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
             client_ca_file: ca.pem\n\
             http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )
    .unwrap();
    let mutual = tracer(&[
        "--metrics",
        "127.0.0.1:0",
        "--web.config.file",
        &web.display().to_string(),
    ]);
    let addr = mutual.metrics.expect("the tracer names its https address");
    let url = format!("https://{addr}/metrics");
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let tls = ["--cacert", &ca, "--cert", &cert, "--key", &key];

    // The right certificate and password: the metrics.
    let (_, status, body) = curl(&[&tls[..], &["-u", "prometheus:s3cret", "-i", &url]].concat());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tcpstates_build_info{"), "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{body}"
    );
    // A wrong password, or none: 401, asking for basic auth.
    let (_, status, body) = curl(&[&tls[..], &["-u", "prometheus:wrong", "-i", &url]].concat());
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("WWW-Authenticate: Basic") || body.contains("www-authenticate: Basic"));
    let (_, status, body) = curl(&[&tls[..], &["-u", "intruder:s3cret", &url]].concat());
    assert_eq!(status, 401, "{body}");
    let (_, status, body) = curl(&[&tls[..], &[url.as_str()]].concat());
    assert_eq!(status, 401, "{body}");
    // No client certificate, or one another CA signed: no HTTP at all.
    let (code, status, body) = curl(&["--cacert", &ca, "-u", "prometheus:s3cret", &url]);
    assert!(
        code != 0 && status == 0,
        "no client certificate: {code} {status} {body}"
    );
    let rogue = [pki.path("rogue.pem"), pki.path("rogue.key")];
    let (code, status, body) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &rogue[0],
        "--key",
        &rogue[1],
        "-u",
        "prometheus:s3cret",
        &url,
    ]);
    assert!(
        code != 0 && status == 0,
        "a rogue certificate: {code} {status} {body}"
    );
    // Plain HTTP to the TLS port: no HTTP answer, no metrics.
    let answer = plain_http_answer(addr);
    assert!(
        !answer.starts_with("HTTP/") && !answer.contains("tcpstates_"),
        "{answer:?}"
    );

    // A real Prometheus, as a fleet's would scrape it; and two that get
    // nothing: a wrong password, no client certificate.
    let job = |name: &str, tls: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n{tls}\
             \n    basic_auth:\n      username: prometheus\n      password: {password}\n\
             \x20   static_configs:\n      - targets: ['{addr}']\n"
        )
    };
    let with_cert = format!("      cert_file: {cert}\n      key_file: {key}");
    let prometheus = Prometheus::start_jobs(
        &[
            job("tcpstates", &with_cert, "s3cret"),
            job("wrong-password", &with_cert, "guess"),
            job("no-certificate", "", "s3cret"),
        ]
        .concat(),
    );
    prometheus.wait_for("up{job=\"tcpstates\"}", 1.0);
    prometheus.wait_for("up{job=\"wrong-password\"}", 0.0);
    prometheus.wait_for("up{job=\"no-certificate\"}", 0.0);
    assert_eq!(
        prometheus.query("count(tcpstates_build_info{job=\"tcpstates\"})"),
        Some(1.0)
    );
    assert_eq!(
        prometheus.query("count(tcpstates_build_info{job!=\"tcpstates\"})"),
        None
    );
    drop(prometheus);
    let stopped = mutual.stop(libc::SIGINT);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);

    // TLS without a client CA: any client with the server's CA.
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: TLS13\n",
    )
    .unwrap();
    let tls_only = tracer(&[
        "--metrics",
        "127.0.0.1:0",
        "--web.config.file",
        &web.display().to_string(),
    ]);
    let addr = tls_only
        .metrics
        .expect("the tracer names its https address");
    let (_, status, body) = curl(&["--cacert", &ca, &format!("https://{addr}/metrics")]);
    assert_eq!(status, 200, "{body}");
    let (code, status, _) = curl(&[
        "--cacert",
        &ca,
        "--tls-max",
        "1.2",
        &format!("https://{addr}/"),
    ]);
    assert!(
        code != 0 && status == 0,
        "TLS 1.2 below min_version: {code} {status}"
    );
    let stopped = tls_only.stop(libc::SIGINT);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
}

/// Connections that never finish a request, `n` held open at all times:
/// each one the server closes is opened again at once, on a thread of its
/// own until `stop`. How many were reopened.
fn hold_idle(addr: SocketAddr, n: usize, stop: &std::sync::atomic::AtomicBool) -> usize {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    let open = |i: usize| loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut stream) => {
                // Nothing, half a request's headers, or one byte.
                let _ = match i % 3 {
                    0 => Ok(()),
                    1 => stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
                    _ => stream.write_all(b"G"),
                };
                stream.set_nonblocking(true).unwrap();
                return stream;
            }
            Err(_) if stop.load(Ordering::Relaxed) => {
                return TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
            }
            Err(_) => continue,
        }
    };
    let mut held: Vec<TcpStream> = (0..n).map(open).collect();
    let mut reopened = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<libc::pollfd> = held
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if ready <= 0 {
            continue;
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let mut buf = [0u8; 512];
            match (&held[i]).read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Closed (or reset) by the server, or answered: reopen.
                _ => {
                    held[i] = open(i);
                    reopened += 1;
                }
            }
        }
    }
    reopened
}

/// One scrape of `url` through curl (`tls`: its TLS arguments), checked.
fn scrape_with_curl(url: &str, tls: &[&str]) -> Result<(), String> {
    let (code, status, body) = curl(&[tls, &[url]].concat());
    match status == 200 && body.contains("tcpstates_build_info{") {
        true => Ok(()),
        false => Err(format!("curl {code}, HTTP {status}: {body}")),
    }
}

/// Scrapes for 10 s, every 100 ms, while 2,500 connections that never
/// finish a request are held open and reopened as the server closes them:
/// every scrape must succeed, the tracer's memory stay bounded.
fn no_lockout(args: &[&str], scrape: impl Fn(SocketAddr) -> Result<(), String>) {
    const HOSTILE: usize = 2500;
    assert!(
        tcpstates_testkit::host::raise_file_limit() > HOSTILE as u64 + 100,
        "too few descriptors"
    );
    let tracer = tracer(&[&["--metrics", "127.0.0.1:0"], args].concat());
    let addr = tracer
        .metrics
        .expect("the tracer names its metrics address");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (scrapes, slowest, reopened) = std::thread::scope(|scope| {
        let holding = scope.spawn(|| hold_idle(addr, HOSTILE, &stop));
        // Until every hostile connection was opened once, and the server
        // has had to close some to make room.
        sleep(Duration::from_secs(3));
        let mut scrapes = 0;
        let mut slowest = Duration::ZERO;
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let start = Instant::now();
            scrape(addr).unwrap_or_else(|e| panic!("scrape {scrapes} locked out: {e}"));
            slowest = slowest.max(start.elapsed());
            scrapes += 1;
            sleep(Duration::from_millis(100));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (scrapes, slowest, holding.join().unwrap())
    });
    let peak = peak_rss_kib(tracer.pid());
    eprintln!(
        "{HOSTILE} idle connections held and reopened ({reopened} reopened), {args:?}: \
         {scrapes} scrapes answered, the slowest in {slowest:?}; the tracer's peak RSS {peak} KiB"
    );
    assert!(scrapes >= 50, "{scrapes} scrapes");
    // The server had to make room, over and over: the hostile connections
    // outnumber its slots.
    assert!(reopened >= HOSTILE - 512, "{reopened} reopened");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    let stopped = tracer.stop(libc::SIGINT);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
}

#[test]
fn thousands_of_idle_connections_reopened_never_lock_out_a_scrape() {
    let Some(_root) = root() else { return };
    no_lockout(&[], |addr| {
        let (status, body) = get(addr, "/metrics", "text/plain").map_err(|e| e.to_string())?;
        match status == 200 && body.contains("tcpstates_build_info{") {
            true => Ok(()),
            false => Err(format!("HTTP {status}: {body}")),
        }
    });
}

#[test]
fn thousands_of_idle_connections_never_lock_out_a_scrape_over_tls() {
    let Some(_root) = root() else { return };
    let pki = tcpstates_testkit::tls::Pki::make("lockout");
    let web = pki.dir().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n",
    )
    .unwrap();
    let ca = pki.path("ca.pem");
    no_lockout(&["--web.config.file", &web.display().to_string()], |addr| {
        scrape_with_curl(&format!("https://{addr}/metrics"), &["--cacert", &ca])
    });
}

/// The value of the one series `name{labels}` in an exposition, 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn port_label_counts_each_service_and_the_rest_as_other() {
    let Some(_root) = root() else { return };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let named = format!("{},{}", ports[0], ports[1]);
    let pid = std::process::id().to_string();
    let tracer = tracer(&[
        "--metrics",
        "127.0.0.1:0",
        "--label-by",
        "port",
        "--label-ports",
        &named,
        "-p",
        &pid,
    ]);
    let addr = tracer
        .metrics
        .expect("the tracer names its metrics address");
    // Listening while traced: the pid filter knows the listeners' owner.
    let listeners: Vec<TcpListener> = ports
        .iter()
        .map(|&p| TcpListener::bind(SocketAddr::new(loopback(false), p)).unwrap())
        .collect();
    for (listener, n) in listeners.iter().zip([3, 2, 1]) {
        for _ in 0..n {
            server_closes_first(listener);
        }
    }
    let accepts = |port: &str| {
        format!(
            "tcpstates_transitions_total{{port=\"{port}\",old_state=\"LISTEN\",new_state=\"SYN_RECV\"}}"
        )
    };
    let connects =
        "tcpstates_transitions_total{port=\"client\",old_state=\"CLOSE\",new_state=\"SYN_SENT\"}";
    // This process's connections: the test's six, and its scrapes (each
    // counted in its own answer).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut scrapes = 0;
    let (a, b) = (ports[0].to_string(), ports[1].to_string());
    let text = loop {
        let (status, text) = get(addr, "/metrics", "text/plain").unwrap();
        assert_eq!(status, 200, "{text}");
        scrapes += 1;
        if sample(&text, &accepts(&a)) == 3.0 || Instant::now() > deadline {
            break text;
        }
        sleep(Duration::from_millis(100));
    };
    assert_eq!(sample(&text, &accepts(&a)), 3.0, "{text}");
    assert_eq!(sample(&text, &accepts(&b)), 2.0, "{text}");
    assert_eq!(sample(&text, &accepts("other")), 1.0, "{text}");
    assert_eq!(sample(&text, connects), 6.0 + scrapes as f64, "{text}");
    assert!(!text.contains(&format!("port=\"{}\"", ports[2])), "{text}");
    // Every labelled series, and the time in SYN_RECV of port A's.
    assert_eq!(
        sample(
            &text,
            &format!("tcpstates_state_duration_seconds_count{{port=\"{a}\",state=\"SYN_RECV\"}}")
        ),
        3.0
    );
    // Every count labelled; the census (sockets now, host-wide) is not.
    let unlabelled: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("{state=") && !l.starts_with("tcpstates_sockets{"))
        .collect();
    assert!(
        unlabelled.is_empty(),
        "every series labelled: {unlabelled:?}"
    );
    promtool_lint(&text);
    let series = |value: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("port=\"{value}\"")))
            .count()
    };
    eprintln!(
        "series: port {a} (3 connections, the server closing first) {}, client {}, other {}, \
         all {}",
        series(&a),
        series("client"),
        series("other"),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    let stopped = tracer.stop(libc::SIGINT);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
}

/// The alerting rules and Grafana dashboard shipped in docs/monitoring/.
const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/monitoring");

/// Runs promtool with `args` in `dir`; fails with its output unless it
/// succeeds.
fn promtool(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rules load, and every alert's unit tests (synthetic series, the
/// time it fires, its labels and text) pass.
#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = std::path::Path::new(MONITORING);
    promtool(dir, &["check", "rules", "tcpstates-alerts.yml"]);
    promtool(dir, &["test", "rules", "tcpstates-alerts.test.yml"]);
}

/// The dashboard's queries, with its variables given values.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{MONITORING}/tcpstates-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard's JSON");
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
        })
        .collect();
    assert!(queries.len() >= 9, "{queries:?}");
    queries
}

/// Every dashboard query is PromQL Prometheus takes (checked as recording
/// rules by promtool).
#[test]
fn dashboard_queries_are_promql() {
    let dir = std::env::temp_dir().join(format!("tcpstates-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in dashboard_queries().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(query).unwrap()
        ));
    }
    std::fs::write(dir.join("dashboard.yml"), rules).unwrap();
    promtool(&dir, &["check", "rules", "dashboard.yml"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `tcpstates_*` series names in `text`.
fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    text.match_indices("tcpstates_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect()
        })
        .collect()
}

/// Every series the rules and the dashboard query is one the endpoint
/// really exports (a real endpoint, after one connection).
#[test]
fn dashboard_and_rules_use_only_exported_metrics() {
    let Some(_root) = root() else { return };
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // --stuck: the stuck sockets' gauge is exported only with it.
    let tracer = tracer(&["--metrics", &addr.to_string(), "--stuck", "600"]);
    let (listener, _) = listen(false);
    server_closes_first(&listener);
    sleep(Duration::from_millis(200));
    let (status, exposition) = get(addr, "/metrics", "text/plain").unwrap();
    tracer.interrupt_and_read();
    assert_eq!(status, 200);
    let exported: std::collections::BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let rules = std::fs::read_to_string(format!("{MONITORING}/tcpstates-alerts.yml")).unwrap();
    let rules: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.contains("description:"))
        .collect::<Vec<_>>()
        .join("\n");
    let used: std::collections::BTreeSet<String> = series_names(&rules)
        .into_iter()
        .chain(dashboard_queries().iter().flat_map(|q| series_names(q)))
        .collect();
    assert!(used.len() >= 8, "{used:?}");
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}\n{exposition}"
    );
}

/// The endpoint's gauges of now: `tcpstates_stuck_sockets` counts the one
/// CLOSE_WAIT made before the tracer (a port filter keeps the rest of the
/// host out), under this process's name with --stuck-owners, once it has
/// sat past the threshold; `tcpstates_sockets` has every counted state, and
/// at least this test's sockets; promtool lints the whole exposition.
#[test]
fn stuck_and_census_gauges_at_the_endpoint() {
    let Some(_root) = root() else { return };
    let (listener, port) = listen(false);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_eof(&server, Some(Duration::from_secs(5)));
    let port = port.to_string();
    let tracer = tracer(&[
        "--metrics",
        "127.0.0.1:0",
        "--stuck",
        "1",
        "--stuck-owners",
        "2",
        "-L",
        &port,
    ]);
    let addr = tracer
        .metrics
        .expect("the tracer names its metrics address");
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let stuck = format!(
        "tcpstates_stuck_sockets{{state=\"CLOSE_WAIT\",owner=\"{}\"}}",
        comm.trim_end()
    );
    let (_, before) = get(addr, "/metrics", "text/plain").unwrap();
    assert_eq!(sample(&before, &stuck), 0.0, "{before}");
    sleep(Duration::from_millis(1500));
    let (status, text) = get(addr, "/metrics", "text/plain").unwrap();
    assert_eq!(status, 200);
    assert_eq!(sample(&text, &stuck), 1.0, "{text}");
    let stuck_series = text
        .lines()
        .filter(|l| l.starts_with("tcpstates_stuck_sockets{"))
        .count();
    assert_eq!(stuck_series, 1, "{text}");
    let gauge = |state: &str| sample(&text, &format!("tcpstates_sockets{{state=\"{state}\"}}"));
    assert!(
        gauge("CLOSE_WAIT") >= 1.0 && gauge("FIN_WAIT2") >= 1.0,
        "{text}"
    );
    assert!(gauge("LISTEN") >= 1.0, "{text}");
    let states = text
        .lines()
        .filter(|l| l.starts_with("tcpstates_sockets{"))
        .count();
    assert_eq!(states, 9, "{text}");
    promtool_lint(&text);
    drop(tracer);
    drop((client, server, listener));
}
