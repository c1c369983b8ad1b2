//! Shared by the root integration tests: the root requirement, a lock that
//! serialises tests touching global state, loopback traffic and grouping of
//! events per socket.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tcpstates::durations::Decoder;
use tcpstates::event::{Event, TcpState};
use tcpstates::tracer::{Tracer, TracerOptions};

/// Set to 1 to skip the root tests on purpose (they fail without root otherwise).
pub const OPT_OUT: &str = "TCPSTATES_SKIP_ROOT_TESTS";

/// Returns the serialising guard when the test can run as root; `None` only
/// when the run opted out explicitly. Fails loudly otherwise.
pub fn root() -> Option<MutexGuard<'static, ()>> {
    static LOCK: Mutex<()> = Mutex::new(());
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var(OPT_OUT).as_deref() == Ok("1") {
            eprintln!("root test skipped: {OPT_OUT}=1");
            return None;
        }
        panic!(
            "this test loads BPF programs and needs root; run it as root, or set {OPT_OUT}=1 to skip the root tests explicitly"
        );
    }
    Some(LOCK.lock().unwrap_or_else(|e| e.into_inner()))
}

pub const TRACEFS: &str = "/sys/kernel/tracing";

pub fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Mounts tracefs, or unmounts it (with debugfs's tracing view), as a test needs.
pub fn set_tracefs(mounted: bool) {
    if mounted == tracefs_mounted() {
        return;
    }
    let status = if mounted {
        Command::new("mount")
            .args(["-t", "tracefs", "nodev", TRACEFS])
            .status()
    } else {
        let _ = Command::new("umount")
            .arg("/sys/kernel/debug/tracing")
            .status();
        Command::new("umount").arg(TRACEFS).status()
    }
    .expect("running mount/umount");
    assert!(status.success(), "could not (un)mount tracefs");
    assert_eq!(tracefs_mounted(), mounted, "tracefs state did not change");
}

/// Whether this kernel can create kprobes (the perf PMU exists).
pub fn kernel_has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

pub fn loopback(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// An in-process tracer and everything it received.
pub struct Capture {
    pub tracer: Tracer,
    decoder: Decoder,
    events: Vec<Event>,
}

impl Capture {
    pub fn start(opts: &TracerOptions) -> Self {
        let tracer = Tracer::start(opts).expect("starting the tracer");
        Capture {
            decoder: tracer.decoder(),
            tracer,
            events: Vec::new(),
        }
    }

    /// Polls until `done` holds for what was received, or fails after 5 s.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let Capture {
            tracer,
            decoder,
            events,
        } = self;
        let mut ring = tracer.ring_reader().expect("ring buffer");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            ring.wait(Duration::from_millis(50)).expect("polling");
            ring.consume(|data| {
                events.push(decoder.decode(data).expect("decoding an event"));
                ControlFlow::Continue(())
            });
            if done(events) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got:\n{}",
                dump(events)
            );
        }
        events.clone()
    }
}

pub fn dump(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{:x} {} {} {}:{} {}:{} {} -> {} {:?}\n",
                e.skaddr,
                e.pid,
                e.comm(),
                e.laddr,
                e.lport,
                e.raddr,
                e.rport,
                e.old,
                e.new,
                e.duration_ns
            )
        })
        .collect()
}

/// One socket's life as seen in the events: its transitions in order.
#[derive(Debug, Clone)]
pub struct SocketLife {
    pub events: Vec<Event>,
}

impl SocketLife {
    pub fn transitions(&self) -> Vec<(TcpState, TcpState)> {
        self.events.iter().map(|e| (e.old, e.new)).collect()
    }
    pub fn first(&self) -> (TcpState, TcpState) {
        self.transitions()[0]
    }
    /// Whether the last transition is to CLOSE.
    pub fn closed(&self) -> bool {
        self.events.last().is_some_and(|e| e.new == TcpState::Close)
    }
}

/// The events that involve `port` (local or remote), split per socket: by
/// socket address, with a new life wherever a socket leaves CLOSE or the
/// address shows up again after a CLOSE (it is reused by the next socket
/// allocated there). CLOSE -> CLOSE stays with the socket that closed.
pub fn lives(events: &[Event], port: u16) -> Vec<SocketLife> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut lives: Vec<SocketLife> = Vec::new();
    for e in events.iter().filter(|e| e.lport == port || e.rport == port) {
        let reopens = e.old != TcpState::Close || e.new != TcpState::Close;
        match open.get(&e.skaddr) {
            Some(&i) if !(reopens && (e.old == TcpState::Close || lives[i].closed())) => {
                lives[i].events.push(e.clone())
            }
            _ => {
                open.insert(e.skaddr, lives.len());
                lives.push(SocketLife {
                    events: vec![e.clone()],
                });
            }
        }
    }
    lives
}

/// The one life whose first transition is `first`.
pub fn life_starting(lives: &[SocketLife], first: (TcpState, TcpState)) -> SocketLife {
    let found: Vec<_> = lives.iter().filter(|l| l.first() == first).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one socket starting with {first:?}, got {lives:#?}"
    );
    found[0].clone()
}

/// Whether every listed life has ended (its last transition is to CLOSE).
pub fn all_closed(events: &[Event], port: u16, sockets: usize) -> bool {
    let lives = lives(events, port);
    lives.len() >= sockets && lives.iter().all(SocketLife::closed)
}

/// A connected pair on loopback and its listener.
pub struct Connection {
    pub listener: TcpListener,
    pub client: TcpStream,
    pub server: TcpStream,
    pub port: u16,
    pub client_port: u16,
}

pub fn listen(v6: bool) -> (TcpListener, u16) {
    let listener = TcpListener::bind(SocketAddr::new(loopback(v6), 0)).expect("bind");
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

pub fn connect(v6: bool) -> Connection {
    let (listener, port) = listen(v6);
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let client_port = client.local_addr().unwrap().port();
    Connection {
        listener,
        client,
        server,
        port,
        client_port,
    }
}

/// Reads until the peer's FIN.
pub fn read_to_eof(mut stream: &TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    while stream.read(&mut buf).expect("read") != 0 {}
}

/// Makes close() send an RST instead of a FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    tcpstates::storm::set_linger_zero(stream).expect("SO_LINGER");
}
