//! A line output to standard output: a [`LineFormat`] fills a buffer, which
//! goes to the writer thread line by line (a terminal) or in chunks (a pipe
//! or file, and whatever is left after each poll).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::writer::Writer;
use super::{LineFormat, Sink};
use crate::batching::{Batching, WRITE_BYTES};
use crate::clock::EventClock;

/// How often an idle output is checked for a reader that went away.
const HANGUP_CHECK_EVERY: Duration = Duration::from_millis(50);

/// A [`Sink`] that writes one line per record.
pub struct LineSink<F> {
    format: F,
    clock: EventClock,
    /// Formatted lines not handed to the writer yet.
    pending: Vec<u8>,
    writer: Writer,
    each_line: bool,
    /// The output's descriptor, watched for a reader that went away.
    watch: Option<OwnedFd>,
    last_check: Instant,
    hung_up: bool,
}

impl<F> LineSink<F> {
    /// Starts the writer thread over `out`. `watch`, a descriptor of the same
    /// output, is checked for a hang-up after each poll, so that a pipe
    /// whose reader left (`tcpstates | head -1`) ends the run even when
    /// nothing is written to it.
    pub fn new(
        format: F,
        out: impl io::Write + Send + 'static,
        batching: Batching,
        watch: Option<OwnedFd>,
    ) -> io::Result<Self> {
        let writer = Writer::new(out, batching.chunk_bytes)?;
        Ok(Self {
            format,
            clock: EventClock::now(),
            pending: writer.buffer(),
            writer,
            each_line: batching.each_line,
            watch,
            last_check: Instant::now(),
            hung_up: false,
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

impl<T, F: LineFormat<T>> Sink<T> for LineSink<F> {
    fn start(&mut self) {
        self.format.header(&mut self.pending);
        self.flush();
    }

    fn record(&mut self, record: &T) {
        self.format
            .record(&mut self.pending, record, &mut self.clock);
        if self.each_line || self.pending.len() >= WRITE_BYTES {
            self.flush();
        }
    }

    fn tick(&mut self) {
        self.flush();
        if let Some(fd) = &self.watch {
            if self.last_check.elapsed() >= HANGUP_CHECK_EVERY {
                self.last_check = Instant::now();
                self.hung_up = hung_up(fd);
            }
        }
    }

    fn closed(&self) -> bool {
        self.hung_up || self.writer.failed()
    }

    /// A reader that went away is a broken pipe, as a failed write is.
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.flush();
        let result = self.writer.finish();
        if self.hung_up && result.is_ok() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        result
    }
}

/// Whether the other end of `fd` is gone: a pipe whose reader closed it
/// (POLLERR), a terminal or socket that hung up (POLLHUP). A regular file
/// never is.
pub fn hung_up(fd: &OwnedFd) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        // Errors and hang-ups are reported whatever is asked for.
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for a descriptor we own; no wait.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready > 0 && pollfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::FromRawFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array we own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both were just created and are owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_pipe_whose_reader_left_is_hung_up() {
        let (read, write) = pipe();
        assert!(!hung_up(&write));
        drop(read);
        assert!(hung_up(&write));
    }

    #[test]
    fn a_file_never_is() {
        let file = File::open("/proc/self/status").unwrap();
        assert!(!hung_up(&OwnedFd::from(file)));
    }
}
