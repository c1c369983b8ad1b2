//! Writes the output on a thread of its own, so that a write the kernel
//! holds up (a filesystem stall, a slow pipe) does not stop the reader from
//! emptying the ring buffer: while the writer waits, formatted chunks queue
//! up here, in memory, up to a bound; past it the reader waits too, the ring
//! buffer fills, and the kernel counts what it drops. A stopped output (a
//! paused pager) stops the reader as a blocking write did before, once the
//! bound is reached.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Output that may wait for the writer: about 150,000 lines, half a second
/// of a loopback storm on a small machine. A bound in bytes, not chunks: a
/// poll that finds a few lines hands them over at once (a pipe sees them
/// within one poll interval), so chunks can be small.
const QUEUE_BYTES: usize = 16 << 20;
/// Written chunks kept for reuse; the rest are freed.
const SPARE_CHUNKS: usize = 4;

/// What the reader and the writer thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes handed to the writer and not written yet.
    queued: AtomicUsize,
    /// A write failed.
    failed: AtomicBool,
}

/// The writing end of the output.
pub struct Writer {
    chunks: Option<Sender<Vec<u8>>>,
    spares: Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
    chunk_bytes: usize,
}

impl Writer {
    /// Starts the writer thread over `out`. Each chunk is written whole and
    /// then flushed, so a chunk per line reaches a terminal at once.
    pub fn new(out: impl Write + Send + 'static, chunk_bytes: usize) -> io::Result<Self> {
        let (chunks, queue) = mpsc::channel::<Vec<u8>>();
        let (spare, spares) = mpsc::sync_channel(SPARE_CHUNKS);
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("tcpstates-out".into())
            .spawn(move || write_all_chunks(out, &queue, &spare, &theirs))?;
        Ok(Writer {
            chunks: Some(chunks),
            spares,
            shared,
            thread: Some(thread),
            chunk_bytes,
        })
    }

    /// An empty buffer to fill: a written one when there is one.
    pub fn buffer(&self) -> Vec<u8> {
        self.spares
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.chunk_bytes + 4096))
    }

    /// Queues `chunk` (if not empty), first waiting while the bound is
    /// reached. After a failed write, drops it.
    pub fn send(&self, chunk: Vec<u8>) {
        let Some(chunks) = &self.chunks else { return };
        if chunk.is_empty() {
            return;
        }
        let len = chunk.len();
        loop {
            if self.failed() || self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                return;
            }
            let queued = self.shared.queued.load(Ordering::Acquire);
            if queued == 0 || queued + len <= QUEUE_BYTES {
                break;
            }
            // The output is stuck: wait as a blocking write would.
            thread::sleep(Duration::from_millis(1));
        }
        self.shared.queued.fetch_add(len, Ordering::AcqRel);
        // Fails only if the thread is gone, which `finish` reports.
        let _ = chunks.send(chunk);
    }

    /// Whether a write failed (the writer then drops everything after it).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Writes what is queued and returns the first write error.
    pub fn finish(mut self) -> io::Result<()> {
        self.close()
    }

    fn close(&mut self) -> io::Result<()> {
        drop(self.chunks.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the output thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The writer thread: writes chunks in order until the reader hangs up.
/// After a failed write it keeps taking chunks (so the reader never waits
/// on it) but writes nothing more.
fn write_all_chunks(
    mut out: impl Write,
    queue: &Receiver<Vec<u8>>,
    spare: &SyncSender<Vec<u8>>,
    shared: &Shared,
) -> io::Result<()> {
    let mut first_error = None;
    for mut chunk in queue {
        if first_error.is_none() {
            if let Err(err) = out.write_all(&chunk).and_then(|()| out.flush()) {
                shared.failed.store(true, Ordering::Release);
                first_error = Some(err);
            }
        }
        shared.queued.fetch_sub(chunk.len(), Ordering::AcqRel);
        chunk.clear();
        // A full spare queue frees the chunk.
        let _ = spare.try_send(chunk);
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Collects what is written; fails every write after `fail_after`
    /// successful ones.
    #[derive(Clone)]
    struct Collect {
        written: Arc<Mutex<Vec<u8>>>,
        fail_after: usize,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut writes = self.writes.lock().unwrap();
            if *writes >= self.fail_after {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            *writes += 1;
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn collect(fail_after: usize) -> Collect {
        Collect {
            written: Arc::default(),
            fail_after,
            writes: Arc::default(),
        }
    }

    #[test]
    fn writes_every_chunk_in_order() {
        let out = collect(usize::MAX);
        let writer = Writer::new(out.clone(), 16).unwrap();
        for i in 0..1000 {
            let mut chunk = writer.buffer();
            chunk.extend_from_slice(format!("{i}\n").as_bytes());
            writer.send(chunk);
        }
        writer.send(Vec::new());
        writer.finish().unwrap();
        let text = String::from_utf8(out.written.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|i| format!("{i}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_failed_write_is_reported_and_stops_writing() {
        let out = collect(2);
        let writer = Writer::new(out.clone(), 16).unwrap();
        for chunk in [b"a\n", b"b\n", b"c\n"] {
            writer.send(chunk.to_vec());
        }
        while !writer.failed() {
            thread::sleep(Duration::from_millis(1));
        }
        writer.send(b"d\n".to_vec());
        let err = writer.finish().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(out.written.lock().unwrap().as_slice(), b"a\nb\n");
    }

    /// A writer whose writes wait until released.
    struct Stalled {
        entered: Arc<AtomicBool>,
        release: Arc<AtomicBool>,
        written: Arc<Mutex<usize>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.entered.store(true, Ordering::Release);
            while !self.release.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(1));
            }
            *self.written.lock().unwrap() += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer stuck in its first write, and the flags to watch it by.
    fn stalled() -> (Writer, Arc<AtomicBool>, Arc<Mutex<usize>>) {
        let (entered, release) = (Arc::<AtomicBool>::default(), Arc::default());
        let written = Arc::<Mutex<usize>>::default();
        let writer = Writer::new(
            Stalled {
                entered: Arc::clone(&entered),
                release: Arc::clone(&release),
                written: Arc::clone(&written),
            },
            16,
        )
        .unwrap();
        writer.send(b"first".to_vec());
        while !entered.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(1));
        }
        (writer, release, written)
    }

    #[test]
    fn a_stalled_write_does_not_hold_the_reader_up() {
        let (writer, release, written) = stalled();
        // The write is stuck; thousands of small chunks still go in.
        for _ in 0..10_000 {
            writer.send(b"x\n".to_vec());
        }
        assert_eq!(*written.lock().unwrap(), 0);
        release.store(true, Ordering::Release);
        writer.finish().unwrap();
        assert_eq!(*written.lock().unwrap(), 5 + 2 * 10_000);
    }

    #[test]
    fn past_the_bound_the_reader_waits_for_the_writer() {
        let (writer, release, written) = stalled();
        let chunk = vec![b'x'; 1 << 20];
        // With the first write's 5 bytes, one more chunk would pass the
        // bound.
        for _ in 0..(QUEUE_BYTES >> 20) - 1 {
            writer.send(chunk.clone());
        }
        // Full: this send returns only once the writer has written.
        let releaser = {
            let release = Arc::clone(&release);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                release.store(true, Ordering::Release);
            })
        };
        writer.send(chunk.clone());
        assert!(release.load(Ordering::Acquire));
        assert!(*written.lock().unwrap() > 0);
        releaser.join().unwrap();
        writer.finish().unwrap();
        assert_eq!(*written.lock().unwrap(), 5 + QUEUE_BYTES);
    }
}
