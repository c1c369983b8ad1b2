//! The in-process tracer of the root tests, and the grouping of what it
//! receives per socket. (Helpers that need none of the product's types are
//! in the test kit, tests/kit.)

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tcpstates::close::Close;
use tcpstates::config::Config;
use tcpstates::event::{DecodeError, Event, TcpState};
use tcpstates::plan::Wake;
use tcpstates::stuck::StuckSocket;
use tcpstates::tracer::Tracer;
use tcpstates::track::Decoder;

/// An in-process tracer and everything it received: transitions, or close
/// records (`-C`).
pub struct Capture<T = Event> {
    pub tracer: Tracer,
    decoder: Decoder,
    decode: fn(&mut Decoder, &[u8]) -> Result<Option<T>, DecodeError>,
    describe: fn(&[T]) -> String,
    events: Vec<T>,
}

impl Capture {
    /// Loads and attaches as `config` says; the kernel wakes the reader
    /// for every event.
    pub fn start(config: &Config) -> Self {
        Capture::with(config, Decoder::decode, dump)
    }
}

impl Capture {
    /// What a stream run with --stuck finds at a walk: the sockets
    /// walked, judged once every record before the walk is decoded (as
    /// the session does).
    pub fn stuck(&mut self) -> Vec<StuckSocket> {
        let view = self.tracer.view();
        let options = view.stuck_options().expect("a tracer with --stuck");
        let found = view.walk_stuck().expect("walking").unwrap_or_default();
        self.wait_until("the records before the walk", |_| true);
        let threshold = options.after_ns();
        found
            .into_iter()
            .filter_map(|f| self.decoder.stuck(f, threshold))
            .collect()
    }
}

impl Capture<Close> {
    /// Close records, as `config` (with `mode: Mode::Closes`) says.
    pub fn closes(config: &Config) -> Self {
        Capture::with(config, Decoder::decode_close, |records| {
            format!("{records:#?}")
        })
    }
}

impl<T: Clone> Capture<T> {
    fn with(
        config: &Config,
        decode: fn(&mut Decoder, &[u8]) -> Result<Option<T>, DecodeError>,
        describe: fn(&[T]) -> String,
    ) -> Self {
        let tracer = Tracer::start(config, Wake::EachEvent).expect("starting the tracer");
        Capture {
            decoder: Decoder::for_tracer(&tracer, config).expect("the tracer's group paths"),
            tracer,
            decode,
            describe,
            events: Vec::new(),
        }
    }

    /// Forgets what was received so far: a test that makes several
    /// connections under one capture looks at each alone (a later
    /// connection may get an earlier one's port, in the other family).
    pub fn forget(&mut self) {
        self.events.clear();
    }

    /// Polls until `done` holds for what was received, or fails after 5 s.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&[T]) -> bool) -> Vec<T> {
        let Capture {
            tracer,
            decoder,
            decode,
            describe,
            events,
        } = self;
        let mut ring = tracer.ring_reader().expect("ring buffer");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            ring.wait(Duration::from_millis(50)).expect("polling");
            ring.consume(|data| {
                if let Some(event) = decode(decoder, data).expect("decoding a record") {
                    events.push(event);
                }
                ControlFlow::Continue(())
            });
            if done(events) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got:\n{}",
                describe(events)
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
