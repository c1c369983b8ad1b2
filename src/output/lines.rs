//! A line output to standard output: a [`LineFormat`] fills a buffer, which
//! goes to the writer thread line by line (a terminal) or in chunks (a pipe
//! or file, and whatever is left after each poll).

use std::io;
use std::mem;

use super::writer::Writer;
use super::{LineFormat, Sink};
use crate::batching::{Batching, WRITE_BYTES};
use crate::clock::EventClock;
use crate::event::Event;

/// A [`Sink`] that writes one line per event.
pub struct LineSink<F> {
    format: F,
    clock: EventClock,
    /// Formatted lines not handed to the writer yet.
    pending: Vec<u8>,
    writer: Writer,
    each_line: bool,
}

impl<F: LineFormat> LineSink<F> {
    /// Starts the writer thread over `out`.
    pub fn new(
        format: F,
        out: impl io::Write + Send + 'static,
        batching: Batching,
    ) -> io::Result<Self> {
        let writer = Writer::new(out, batching.chunk_bytes)?;
        Ok(Self {
            format,
            clock: EventClock::now(),
            pending: writer.buffer(),
            writer,
            each_line: batching.each_line,
        })
    }

    /// Hands the lines formatted so far to the writer thread.
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let next = self.writer.buffer();
            self.writer.send(mem::replace(&mut self.pending, next));
        }
    }
}

impl<F: LineFormat> Sink for LineSink<F> {
    fn start(&mut self) {
        self.format.header(&mut self.pending);
        self.flush();
    }

    fn event(&mut self, event: &Event) {
        self.format.event(&mut self.pending, event, &mut self.clock);
        if self.each_line || self.pending.len() >= WRITE_BYTES {
            self.flush();
        }
    }

    fn tick(&mut self) {
        self.flush();
    }

    fn closed(&self) -> bool {
        self.writer.failed()
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.flush();
        self.writer.finish()
    }
}
