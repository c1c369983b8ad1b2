//! Where transitions go. Every output is a [`Sink`]; [`build`] is the one
//! place that picks them from the configuration. Line outputs to standard
//! output (the table and CSV today) are a pure [`LineFormat`] behind a
//! [`LineSink`], which writes on a thread of its own.

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
use crate::config::{Config, Format};
use crate::event::Event;

/// One output of a stream run.
pub trait Sink {
    /// Before the first event: a header, say.
    fn start(&mut self) {}

    /// One transition, in the order the kernel sent them.
    fn event(&mut self, event: &Event);

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

/// A pure formatter of one line per event.
pub trait LineFormat {
    /// Appends the header line, if the format has one.
    fn header(&mut self, out: &mut Vec<u8>);

    /// Appends one event as one line.
    fn event(&mut self, out: &mut Vec<u8>, event: &Event, clock: &mut EventClock);
}

/// The outputs `config` asks for, writing to `stdout`. Fails, before any
/// tracing, when an output cannot be reached (no journal listening).
pub fn build(config: &Config, stdout: io::Stdout, batching: Batching) -> Result<Box<dyn Sink>> {
    // A second descriptor of stdout, to watch for a reader that left.
    let watch = stdout.as_fd().try_clone_to_owned().ok();
    let mut sinks: Vec<Box<dyn Sink>> = match config.format {
        Format::Table {
            times,
            wide,
            extended,
        } => vec![Box::new(LineSink::new(
            table::Formatter::table(times, wide, extended),
            stdout,
            batching,
            watch,
        )?)],
        Format::Csv { times, extended } => vec![Box::new(LineSink::new(
            table::Formatter::csv(times, extended),
            stdout,
            batching,
            watch,
        )?)],
        Format::Json => vec![Box::new(LineSink::new(
            json::JsonFormat,
            stdout,
            batching,
            watch,
        )?)],
    };
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

/// Several outputs as one: each gets every event, in the order listed.
pub struct Fanout {
    sinks: Vec<Box<dyn Sink>>,
}

impl Fanout {
    /// The one sink when there is one (no indirection per event), else
    /// all of them behind a fan-out.
    pub fn of(mut sinks: Vec<Box<dyn Sink>>) -> Box<dyn Sink> {
        if sinks.len() == 1 {
            if let Some(one) = sinks.pop() {
                return one;
            }
        }
        Box::new(Fanout { sinks })
    }
}

impl Sink for Fanout {
    fn start(&mut self) {
        self.sinks.iter_mut().for_each(|s| s.start());
    }

    fn event(&mut self, event: &Event) {
        for sink in &mut self.sinks {
            sink.event(event);
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
        fn event(&mut self, event: &Event) {
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
        sink.event(&event);
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
