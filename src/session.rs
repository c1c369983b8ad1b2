//! One tracing session: start the tracer, run the mode the configuration
//! asks for, report what was lost. With the privileged core, the only code
//! that touches the tracer.

use std::io::{self, IsTerminal};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::batching::Batching;
use crate::config::{Config, Mode, ReportFormat, SummaryOutput};
use crate::event::DecodeError;
use crate::host;
use crate::metrics::Endpoint;
use crate::output::summary::{Now, SummaryPrinter};
use crate::output::{self, Sink};
use crate::plan::Wake;
use crate::ring::RingReader;
use crate::signals;
use crate::stats::{ReaderCounts, RingPeak, Stats};
use crate::stuck::{Crossings, StuckSocket};
use crate::summary::{ByLabel, Summary};
use crate::tracer::{KernelView, Tracer};
use crate::track::Decoder;

/// How long one poll waits: also the longest a line written into a pipe or
/// file waits in the buffer, and how quickly a signal is noticed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// With -v, how often the counters are shown.
const VERBOSE_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Traces as `config` says until SIGINT, SIGTERM, a closed output, or the
/// end `--count` or `--duration` sets.
pub fn run(config: &Config) -> Result<()> {
    signals::install().context("installing signal handlers")?;
    match config.mode {
        Mode::Stream => stream(
            config,
            output::build,
            Decoder::decode,
            Some(Decoder::stuck_event),
        ),
        Mode::Closes => stream(config, output::build_closes, Decoder::decode_close, None),
        Mode::Summary(output) => summary(config, output),
    }
}

/// No records: the kernel aggregates; printed as `output` says, served
/// at `--metrics`.
fn summary(config: &Config, output: SummaryOutput) -> Result<()> {
    // Bound first: a bad address or a port in use fails before tracing.
    let endpoint = config.metrics.map(Endpoint::bind).transpose()?;
    let tracer = Tracer::start(config, Wake::EachEvent)?;
    if config.verbose {
        say_attached(&tracer);
    }
    let view = tracer.view();
    match endpoint {
        Some(endpoint) => {
            let addr = endpoint.addr()?;
            let scheme = match config.web.as_ref().and_then(|web| web.tls.as_ref()) {
                Some(_) => "https",
                None => "http",
            };
            endpoint.serve(tracer.view(), tracer.mode(), config.web.clone())?;
            eprintln!("Tracing tcpstates ... metrics at {scheme}://{addr}/metrics; Ctrl-C to end");
        }
        None => eprintln!("Tracing tcpstates ... Hit Ctrl-C to end"),
    }

    let mut printer = SummaryPrinter::new(output, io::stdout());
    let started = Instant::now();
    let deadline = config.duration.map(|d| started + d);
    let mut next_print = output.interval.map(|every| started + every);
    while !signals::stop_requested() {
        let now = Instant::now();
        if deadline.is_some_and(|end| now >= end) {
            break;
        }
        view.rank_ports()?;
        if let Some(at) = next_print.filter(|at| now >= *at) {
            let (total, labelled) = view.summaries()?;
            if print_summary(&mut printer, &view, &total, labelled.as_ref())?.is_err() {
                // `tcpstates -S 1 | head`: the reader is gone.
                return Ok(());
            }
            next_print = output.interval.map(|every| at + every);
        }
        let wake = [deadline, next_print, Some(now + POLL_INTERVAL)];
        let until = wake.into_iter().flatten().min().unwrap_or(now);
        std::thread::sleep(until.saturating_duration_since(now));
    }
    tracer.detach();
    if output.print {
        let (total, labelled) = view.summaries()?;
        if print_summary(&mut printer, &view, &total, labelled.as_ref())?.is_err() {
            return Ok(());
        }
    }
    let stats = Stats {
        kernel: view.counters()?,
        reader: ReaderCounts::default(),
    };
    report_at_exit(config, &stats);
    Ok(())
}

/// Prints the counts with what is now: the census, the stuck sockets.
/// An error when standard output is gone; a failure to read the kernel
/// ends the run.
fn print_summary(
    printer: &mut SummaryPrinter<io::Stdout>,
    view: &KernelView,
    total: &Summary,
    labelled: Option<&ByLabel>,
) -> Result<Result<(), io::Error>> {
    let census = view.census()?;
    let stuck = view.stuck_now()?;
    let after_s = view.stuck_options().map_or(0, |s| s.after.as_secs());
    let now = Now {
        census: census.as_ref(),
        stuck: stuck.as_deref().map(|s| (s, after_s)),
    };
    Ok(printer.print(total, labelled, &now))
}

/// How a stream run builds its outputs, and decodes its records.
type BuildSinks<T> = fn(&Config, io::Stdout, Batching) -> Result<Box<dyn Sink<T>>>;
type Decode<T> = fn(&mut Decoder, &[u8]) -> Result<Option<T>, DecodeError>;
/// How it makes a record of a stuck socket (None: it makes none).
type StuckRecord<T> = Option<fn(&mut Decoder, &StuckSocket) -> Option<T>>;

/// Every record (transitions, or close records), through the ring buffer,
/// to the outputs `build` makes, each decoded by `decode`.
fn stream<T: 'static>(
    config: &Config,
    build: BuildSinks<T>,
    decode: Decode<T>,
    stuck_record: StuckRecord<T>,
) -> Result<()> {
    // First, so that every thread the run starts inherits it.
    let priority = host::raise_priority();
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    // Outputs first: one that cannot be reached fails before any tracing.
    let mut sink = build(config, stdout, Batching::for_output(terminal))?;
    let wake = if terminal {
        Wake::EachEvent
    } else {
        Wake::Batched
    };
    let tracer = Tracer::start(config, wake)?;
    let ring_bytes = tracer.plan().ring_bytes;
    if config.verbose {
        say_attached(&tracer);
        match priority {
            Ok(()) => eprintln!(
                "tcpstates: ring buffer {} KiB, reader at nice {}",
                ring_bytes >> 10,
                host::READER_NICE
            ),
            Err(err) => eprintln!(
                "tcpstates: ring buffer {} KiB, reader at the default priority \
                 (nice {} refused: {err}; needs CAP_SYS_NICE)",
                ring_bytes >> 10,
                host::READER_NICE
            ),
        }
    }
    let mut reader = Reader::new(Decoder::for_tracer(&tracer, config)?, decode, config.count);
    eprintln!("Tracing tcpstates ... Hit Ctrl-C to end");
    sink.start();

    let mut ring = tracer.ring_reader()?;
    let started = Instant::now();
    let mut last_report = started;
    let view = tracer.view();
    let mut stuck = view
        .stuck_options()
        .zip(stuck_record)
        .map(|(options, record)| StuckWatch {
            options,
            record,
            crossings: Crossings::default(),
            next: started + options.walk_every(),
        });
    let deadline = config.duration.map(|d| started + d);
    while !signals::stop_requested() && !sink.closed() && !reader.done() {
        let now = Instant::now();
        if deadline.is_some_and(|end| now >= end) {
            break;
        }
        // A wait ends when the kernel wakes us or the interval ends; either
        // way, read everything waiting: with batched wakeups, events below
        // the batch size are read only here.
        let wait = deadline.map_or(POLL_INTERVAL, |end| (end - now).min(POLL_INTERVAL));
        ring.wait(wait).context("waiting on the ring buffer")?;
        ring.consume(|data| reader.accept(data, sink.as_mut()));
        if let Some(watch) = stuck.as_mut().filter(|w| Instant::now() >= w.next) {
            watch.walk(&view, &mut ring, &mut reader, sink.as_mut())?;
        }
        sink.tick();
        if config.verbose && last_report.elapsed() >= VERBOSE_REPORT_EVERY {
            last_report = Instant::now();
            report(config.report, &reader.stats(&tracer, &ring)?);
        }
    }
    // Detach first, so that the drain below hands on everything the kernel
    // sent and the counters read after it are final.
    tracer.detach();
    if !sink.closed() && !reader.done() {
        ring.consume(|data| reader.accept(data, sink.as_mut()));
    }
    let stats = reader.stats(&tracer, &ring)?;
    drop(ring);
    match sink.finish() {
        // `tcpstates | head`: the reader is gone; end quietly.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(err) => return Err(err).context("writing the output"),
        Ok(()) => {}
    }
    report_at_exit(config, &stats);
    Ok(())
}

/// --stuck in a stream run: when to walk next, and what was reported.
struct StuckWatch<T> {
    options: crate::config::Stuck,
    record: fn(&mut Decoder, &StuckSocket) -> Option<T>,
    crossings: Crossings,
    next: Instant,
}

impl<T> StuckWatch<T> {
    /// Walks the sockets, and hands a record of each that crossed the line
    /// since the last walk to the outputs.
    fn walk(
        &mut self,
        view: &KernelView,
        ring: &mut RingReader<'_>,
        reader: &mut Reader<T>,
        sink: &mut dyn Sink<T>,
    ) -> Result<()> {
        self.next += self.options.walk_every();
        let found = view.walk_stuck()?.unwrap_or_default();
        // Every transition before the walk decoded first: the reader's
        // times are then the ones the walk's states were entered at.
        ring.consume(|data| reader.accept(data, sink));
        let threshold = self.options.after_ns();
        let now: Vec<StuckSocket> = found
            .into_iter()
            .filter_map(|f| reader.decoder.stuck(f, threshold))
            .collect();
        for crossed in self.crossings.crossed(now) {
            if let Some(record) = (self.record)(&mut reader.decoder, &crossed) {
                sink.record(&record);
            }
        }
        Ok(())
    }
}

/// With -v: which attach mode attached, and where the socket times are.
fn say_attached(tracer: &Tracer) {
    eprintln!(
        "tcpstates: attached with {}; per-socket times kept {}",
        tracer.mode(),
        tracer.plan().store.describe()
    );
    if let Some(taken) = tracer.snapshot() {
        eprintln!("tcpstates: {}", taken.describe());
    }
}

/// The end of a run: the counters with -v, and any loss always.
fn report_at_exit(config: &Config, stats: &Stats) {
    if config.verbose {
        report(config.report, stats);
    }
    if let Some(losses) = stats.losses() {
        eprintln!("tcpstates: {losses}");
    }
}

/// The counters, on stderr, in the form asked for.
fn report(format: ReportFormat, stats: &Stats) {
    let line = match format {
        ReportFormat::Text => stats.describe(),
        ReportFormat::Kv => stats.key_values(),
    };
    eprintln!("tcpstates: {line}");
}

/// Decodes ring buffer records and hands them to the outputs.
struct Reader<T> {
    decoder: Decoder,
    decode: Decode<T>,
    counts: ReaderCounts,
    /// `--count`: hand over at most this many records.
    limit: Option<u64>,
}

impl<T> Reader<T> {
    fn new(decoder: Decoder, decode: Decode<T>, limit: Option<u64>) -> Self {
        Self {
            decoder,
            decode,
            counts: ReaderCounts::default(),
            limit,
        }
    }

    /// Whether `--count` events were handed over.
    fn done(&self) -> bool {
        self.limit.is_some_and(|limit| self.counts.printed >= limit)
    }

    /// Takes one ring buffer record; breaks once an output is gone or the
    /// count is reached.
    fn accept(&mut self, data: &[u8], sink: &mut dyn Sink<T>) -> ControlFlow<()> {
        if sink.closed() || self.done() {
            return ControlFlow::Break(());
        }
        match (self.decode)(&mut self.decoder, data) {
            Ok(Some(record)) => {
                sink.record(&record);
                self.counts.printed += 1;
            }
            Ok(None) => {}
            Err(_) => self.counts.undecodable += 1,
        }
        ControlFlow::Continue(())
    }

    /// Every counter now: the kernel's, this reader's and the ring's.
    fn stats(&self, tracer: &Tracer, ring: &RingReader<'_>) -> Result<Stats> {
        let times = self.decoder.times();
        let peak = ring.peak();
        Ok(Stats {
            kernel: tracer.counters()?,
            reader: ReaderCounts {
                no_room: times.map_or(0, |t| t.no_room()),
                sockets_tracked: match times {
                    Some(times) => times.len() as u64,
                    None => tracer.sockets_tracked()?,
                },
                ring: Some(RingPeak {
                    size: ring.size(),
                    bytes: peak.bytes,
                    events: peak.records,
                }),
                unjudged: self.decoder.unjudged(),
                ..self.counts
            },
        })
    }
}
