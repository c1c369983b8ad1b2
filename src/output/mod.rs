//! Where transitions go. Every output is a [`Sink`]; [`build`] is the one
//! place that picks them from the configuration. Line outputs to standard
//! output (the table and CSV today) are a pure [`LineFormat`] behind a
//! [`LineSink`], which writes on a thread of its own.

pub mod closes;
pub mod journal;
pub mod json;
mod lines;
pub mod number;
pub mod summary;
pub mod table;
pub mod writer;

use std::io;
use std::os::fd::AsFd;

use anyhow::{Context, Result};

pub use lines::LineSink;

use crate::batching::Batching;
use crate::clock::EventClock;
use crate::close::Close;
use crate::config::{Config, Format};
use crate::event::Event;

/// One output of a stream run, of transitions ([`Event`]) or close
/// records ([`Close`]).
pub trait Sink<T = Event> {
    /// Before the first record: a header, say.
    fn start(&mut self) {}

    /// One record, in the order the kernel sent them.
    fn record(&mut self, record: &T);

    /// After each poll of the ring buffer (at least every poll interval):
    /// hand on what is buffered, so a reader sees it without delay.
    fn tick(&mut self) {}

    /// Whether this output is gone (a closed pipe): the run ends.
    fn closed(&self) -> bool {
        false
    }

    /// The run is over: write what is left and report the first error.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// A pure formatter of one line per record.
pub trait LineFormat<T = Event> {
    /// Appends the header line, if the format has one.
    fn header(&mut self, out: &mut Vec<u8>);

    /// Appends one record as one line.
    fn record(&mut self, out: &mut Vec<u8>, record: &T, clock: &mut EventClock);
}

/// The outputs `config` asks for, writing to `stdout`. Fails, before any
/// tracing, when an output cannot be reached (no journal listening).
pub fn build(config: &Config, stdout: io::Stdout, batching: Batching) -> Result<Box<dyn Sink>> {
    match config.format {
        Format::Table {
            times,
            wide,
            extended,
        } => with_journal(
            config,
            table::Formatter::table(times, wide, extended),
            stdout,
            batching,
        ),
        Format::Csv { times, extended } => with_journal(
            config,
            table::Formatter::csv(times, extended),
            stdout,
            batching,
        ),
        Format::Json => with_journal(config, json::JsonFormat, stdout, batching),
    }
}

/// The outputs of close records (`-C`) `config` asks for, as [`build`].
pub fn build_closes(
    config: &Config,
    stdout: io::Stdout,
    batching: Batching,
) -> Result<Box<dyn Sink<Close>>> {
    let format = match config.format {
        Format::Table {
            times,
            wide,
            extended,
        } => closes::CloseFormatter::new(times, wide, extended, false),
        Format::Csv { times, extended } => {
            closes::CloseFormatter::new(times, false, extended, true)
        }
        Format::Json => return with_journal(config, json::JsonFormat, stdout, batching),
    };
    with_journal(config, format, stdout, batching)
}

/// The line output `format` on `stdout`, and the journal's when `-Y`.
fn with_journal<T: 'static, F: LineFormat<T> + 'static>(
    config: &Config,
    format: F,
    stdout: io::Stdout,
    batching: Batching,
) -> Result<Box<dyn Sink<T>>>
where
    journal::JournalFormat: LineFormat<T>,
{
    // A second descriptor of stdout, to watch for a reader that left.
    let watch = stdout.as_fd().try_clone_to_owned().ok();
    let mut sinks: Vec<Box<dyn Sink<T>>> =
        vec![Box::new(LineSink::new(format, stdout, batching, watch)?)];
    if config.journal {
        let path = journal::socket_path();
        let out = journal::JournalOut::connect(&path)
            .with_context(|| format!("-Y: no systemd journal listens at {}", path.display()))?;
        // Entries go in batches, as to a pipe: none waits more than a poll.
        let batching = Batching::for_output(false);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        sinks.push(Box::new(LineSink::new(
            journal::JournalFormat::new(euid),
            out,
            batching,
            None,
        )?));
    }
    Ok(Fanout::of(sinks))
}

/// Several outputs as one: each gets every record, in the order listed.
pub struct Fanout<T> {
    sinks: Vec<Box<dyn Sink<T>>>,
}

impl<T: 'static> Fanout<T> {
    /// The one sink when there is one (no indirection per record), else
    /// all of them behind a fan-out.
    pub fn of(mut sinks: Vec<Box<dyn Sink<T>>>) -> Box<dyn Sink<T>> {
        if sinks.len() == 1 {
            if let Some(one) = sinks.pop() {
                return one;
            }
        }
        Box::new(Fanout { sinks })
    }
}

impl<T> Sink<T> for Fanout<T> {
    fn start(&mut self) {
        self.sinks.iter_mut().for_each(|s| s.start());
    }

    fn record(&mut self, record: &T) {
        for sink in &mut self.sinks {
            sink.record(record);
        }
    }

    fn tick(&mut self) {
        self.sinks.iter_mut().for_each(|s| s.tick());
    }

    /// Any output gone ends the run: `tcpstates ... | head` must end.
    fn closed(&self) -> bool {
        self.sinks.iter().any(|s| s.closed())
    }

    /// Finishes every output, and reports the first error.
    fn finish(self: Box<Self>) -> io::Result<()> {
        let mut first = Ok(());
        for sink in self.sinks {
            let result = sink.finish();
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Records the calls it gets, by name.
    struct Recorder {
        name: &'static str,
        log: Rc<RefCell<Vec<String>>>,
        closed: bool,
        fails: bool,
    }

    impl Sink for Recorder {
        fn start(&mut self) {
            self.log.borrow_mut().push(format!("{} start", self.name));
        }
        fn record(&mut self, event: &Event) {
            let line = format!("{} event {}", self.name, event.lport);
            self.log.borrow_mut().push(line);
        }
        fn tick(&mut self) {
            self.log.borrow_mut().push(format!("{} tick", self.name));
        }
        fn closed(&self) -> bool {
            self.closed
        }
        fn finish(self: Box<Self>) -> io::Result<()> {
            self.log.borrow_mut().push(format!("{} finish", self.name));
            if self.fails {
                Err(io::Error::other(self.name))
            } else {
                Ok(())
            }
        }
    }

    fn recorder(
        name: &'static str,
        log: &Rc<RefCell<Vec<String>>>,
        closed: bool,
        fails: bool,
    ) -> Box<dyn Sink> {
        Box::new(Recorder {
            name,
            log: Rc::clone(log),
            closed,
            fails,
        })
    }

    #[test]
    fn fanout_hands_everything_to_every_sink_in_order() {
        let log = Rc::default();
        let mut sink = Fanout::of(vec![
            recorder("a", &log, false, false),
            recorder("b", &log, false, true),
            recorder("c", &log, false, true),
        ]);
        let event = Event::from_raw(&crate::event::tests::raw_v4()).unwrap();
        sink.start();
        sink.record(&event);
        sink.tick();
        assert!(!sink.closed());
        let err = sink.finish().unwrap_err();
        assert_eq!(err.to_string(), "b", "the first error is reported");
        assert_eq!(
            *log.borrow(),
            [
                "a start",
                "b start",
                "c start",
                "a event 48792",
                "b event 48792",
                "c event 48792",
                "a tick",
                "b tick",
                "c tick",
                "a finish",
                "b finish",
                "c finish"
            ]
        );
    }

    #[test]
    fn any_closed_output_ends_the_run() {
        let log = Rc::default();
        let sinks = vec![
            recorder("a", &log, false, false),
            recorder("b", &log, true, false),
        ];
        assert!(Fanout::of(sinks).closed());
    }
}
