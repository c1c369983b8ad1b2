//! One tracing session: attach, print until stopped, report what was lost.

use std::io::{self, IsTerminal};
use std::mem;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::Config;
use crate::durations::{Decoder, SocketTimes};
use crate::output::{Formatter, WallClock};
use crate::signals;
use crate::tracer::{Counters, Tracer};
use crate::writer::Writer;

/// How long one poll waits: also the longest a line written into a pipe or
/// file waits in the buffer, and how quickly a signal is noticed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Output is written in chunks of about this size when it is not a terminal.
const WRITE_BYTES: usize = 1 << 16;

/// With -v, how often the counters are shown.
const VERBOSE_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Traces until SIGINT, SIGTERM or a closed stdout.
pub fn run(config: &Config) -> Result<()> {
    signals::install().context("installing signal handlers")?;
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    let mut tracer_opts = config.tracer.clone();
    if !terminal {
        tracer_opts.wakeup_bytes = batch_bytes(tracer_opts.ringbuf_bytes);
    }
    let tracer = Tracer::start(&tracer_opts)?;
    let verbose = config.tracer.verbose;
    if verbose {
        let times = if tracer.tracks_sockets() {
            "in the kernel (a port filter is on)"
        } else {
            "here"
        };
        eprintln!(
            "tcpstates: attached with {}; per-socket times kept {times}",
            tracer.mode()
        );
    }

    // A terminal sees each line as it comes: a wakeup and a write per event.
    // A pipe or file gets batches: the kernel wakes us once enough is
    // waiting (or the poll times out), and we write large chunks, and what
    // is left after every poll.
    let chunk_bytes = if terminal { 1024 } else { WRITE_BYTES };
    let writer = Writer::new(stdout, chunk_bytes).context("starting the output thread")?;
    let mut sink = Sink {
        formatter: Formatter::new(config.output),
        clock: EventClock::new(config.output.time),
        pending: writer.buffer(),
        writer,
        write_each_line: terminal,
        decoder: tracer.decoder(),
        printed: 0,
        undecodable: 0,
    };
    eprintln!("Tracing tcpstates ... Hit Ctrl-C to end");
    sink.header();

    let mut ring = tracer.ring_reader()?;
    let mut last_report = Instant::now();
    while !signals::stop_requested() && !sink.stopped() {
        // A wait ends when the kernel wakes us or the interval ends; either
        // way, read everything waiting: with batched wakeups, events below
        // the batch size are read only here.
        ring.wait(POLL_INTERVAL)
            .context("waiting on the ring buffer")?;
        ring.consume(|data| sink.accept(data));
        sink.flush();
        if verbose && last_report.elapsed() >= VERBOSE_REPORT_EVERY {
            last_report = Instant::now();
            eprintln!(
                "tcpstates: {}",
                describe(&tracer.counters()?, &sink.counts(&tracer))
            );
        }
    }
    // Detach first, so that the drain below prints everything the kernel
    // sent and the counters read after it are final.
    tracer.detach();
    if !sink.stopped() {
        ring.consume(|data| sink.accept(data));
        sink.flush();
    }
    drop(ring);
    let counts = sink.counts(&tracer);
    match sink.writer.finish() {
        // `tcpstates | head`: the reader is gone; end quietly.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(err) => return Err(err).context("writing the output"),
        Ok(()) => {}
    }

    let counters = tracer.counters()?;
    if verbose {
        eprintln!("tcpstates: {}", describe(&counters, &counts));
    }
    if let Some(losses) = losses(&counters, &counts) {
        eprintln!("tcpstates: {losses}");
    }
    Ok(())
}

/// How much waits in the ring buffer before the reader is woken, when the
/// output is not a terminal: a sixteenth of the buffer, at most 256 KiB, so a
/// wakeup carries thousands of events in a storm and the buffer is far from
/// full when it comes.
fn batch_bytes(ringbuf_bytes: u32) -> u32 {
    (ringbuf_bytes / 16).min(256 << 10)
}

/// What the reader counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderCounts {
    /// Lines printed.
    pub printed: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Transitions whose socket had no room among the remembered ones
    /// (user space's map; the kernel's is in [`Counters`]).
    pub no_room: u64,
    /// Sockets whose last-transition time is kept now, wherever it is kept.
    pub sockets_tracked: u64,
}

/// Every counter, for -v.
fn describe(counters: &Counters, counts: &ReaderCounts) -> String {
    format!(
        "{} transitions matched, {} printed, {} lost (ring buffer full), \
         {} missed (recursion), {} sockets without room in the map, {} undecodable records, \
         {} sockets tracked",
        counters.events,
        counts.printed,
        counters.ringbuf_drops,
        counters.recursion_misses,
        no_room(counters, counts),
        counts.undecodable,
        counts.sockets_tracked
    )
}

/// Transitions whose socket had no room for its time, in the kernel's map or
/// the reader's (only one of them is in use).
fn no_room(counters: &Counters, counts: &ReaderCounts) -> u64 {
    counters.map_full + counts.no_room
}

/// The one line printed at exit when anything was lost or unknown.
pub fn losses(counters: &Counters, counts: &ReaderCounts) -> Option<String> {
    let mut parts = Vec::new();
    if counters.ringbuf_drops > 0 {
        parts.push(format!(
            "{} events lost (ring buffer full)",
            counters.ringbuf_drops
        ));
    }
    if counters.recursion_misses > 0 {
        parts.push(format!(
            "{} transitions missed (the kernel skipped the program: it was already running on that CPU)",
            counters.recursion_misses
        ));
    }
    let no_room = no_room(counters, counts);
    if no_room > 0 {
        parts.push(format!(
            "{no_room} durations unknown (socket map full: raise --max-sockets)"
        ));
    }
    if counts.undecodable > 0 {
        parts.push(format!(
            "{} records could not be decoded",
            counts.undecodable
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Where decoded events go.
struct Sink {
    formatter: Formatter,
    clock: EventClock,
    /// Formatted lines not handed to the writer yet.
    pending: Vec<u8>,
    writer: Writer,
    write_each_line: bool,
    decoder: Decoder,
    printed: u64,
    undecodable: u64,
}

impl Sink {
    fn header(&mut self) {
        self.formatter.write_header(&mut self.pending);
        self.flush();
    }

    /// Takes one ring buffer record; breaks once the output is gone.
    fn accept(&mut self, data: &[u8]) -> ControlFlow<()> {
        if self.stopped() {
            return ControlFlow::Break(());
        }
        let Ok(event) = self.decoder.decode(data) else {
            self.undecodable += 1;
            return ControlFlow::Continue(());
        };
        let wall = self.clock.wall(event.ts_ns);
        self.formatter.write_event(&mut self.pending, &event, wall);
        self.printed += 1;
        if self.write_each_line || self.pending.len() >= WRITE_BYTES {
            self.flush();
        }
        if self.stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn counts(&self, tracer: &Tracer) -> ReaderCounts {
        ReaderCounts {
            printed: self.printed,
            undecodable: self.undecodable,
            no_room: self.decoder.times().map_or(0, SocketTimes::no_room),
            sockets_tracked: match self.decoder.times() {
                Some(times) => times.len() as u64,
                None => tracer.sockets_tracked(),
            },
        }
    }

    /// Hands the lines formatted so far to the output thread.
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let next = self.writer.buffer();
            self.writer.send(mem::replace(&mut self.pending, next));
        }
    }

    /// Whether the output is gone (a write failed).
    fn stopped(&self) -> bool {
        self.writer.failed()
    }
}

/// Turns the kernel's monotonic event times into local wall-clock times, so
/// `-T` shows when the transition happened, not when it was printed.
struct EventClock {
    enabled: bool,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
    /// The last second converted, and its time of day.
    cached: Option<(i64, WallClock)>,
}

impl EventClock {
    fn new(enabled: bool) -> Self {
        let offset_ns = if enabled {
            clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
        } else {
            0
        };
        Self {
            enabled,
            offset_ns,
            cached: None,
        }
    }

    fn wall(&mut self, monotonic_ns: u64) -> WallClock {
        if !self.enabled {
            return WallClock::default();
        }
        let secs = ((monotonic_ns as i128 + self.offset_ns) / 1_000_000_000) as i64;
        match self.cached {
            Some((cached, wall)) if cached == secs => wall,
            _ => {
                let wall = WallClock::at_unix(secs);
                self.cached = Some((secs, wall));
                wall
            }
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we own; both
    // clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_a_fraction_of_the_buffer() {
        assert_eq!(batch_bytes(4096), 256);
        assert_eq!(batch_bytes(1 << 20), 64 << 10);
        assert_eq!(batch_bytes(8 << 20), 256 << 10);
        assert_eq!(batch_bytes(1 << 30), 256 << 10);
    }

    #[test]
    fn losses_line() {
        assert_eq!(losses(&Counters::default(), &ReaderCounts::default()), None);
        let counters = Counters {
            events: 10,
            ringbuf_drops: 3,
            map_full: 2,
            recursion_misses: 4,
        };
        let counts = ReaderCounts {
            printed: 7,
            undecodable: 1,
            no_room: 3,
            sockets_tracked: 9,
        };
        assert_eq!(
            losses(&counters, &counts).unwrap(),
            "3 events lost (ring buffer full); 4 transitions missed (the kernel skipped the \
             program: it was already running on that CPU); 5 durations unknown (socket map \
             full: raise --max-sockets); 1 records could not be decoded"
        );
        assert_eq!(
            describe(&counters, &counts),
            "10 transitions matched, 7 printed, 3 lost (ring buffer full), 4 missed \
             (recursion), 5 sockets without room in the map, 1 undecodable records, 9 \
             sockets tracked"
        );
    }
}
