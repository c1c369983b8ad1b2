//! Writes the output on a thread of its own, so that a write the kernel
//! holds up (a filesystem stall, a slow pipe) does not stop the reader from
//! emptying the ring buffer: while the writer waits, formatted chunks queue
//! up here, in memory, up to a bound; past it the reader waits too, the ring
//! buffer fills, and the kernel counts what it drops. A stopped output (a
//! paused pager) stops the reader as a blocking write did before.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};

/// Chunks that may wait for the writer. With 64 KiB chunks, 256 hold about
/// 150,000 lines: half a second of a loopback storm on a small machine.
const QUEUE_CHUNKS: usize = 256;
/// Written chunks kept for reuse; the rest are freed.
const SPARE_CHUNKS: usize = 4;

/// The writing end of the output.
pub struct Writer {
    chunks: Option<SyncSender<Vec<u8>>>,
    spares: Receiver<Vec<u8>>,
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
    chunk_bytes: usize,
}

impl Writer {
    /// Starts the writer thread over `out`. Each chunk is written whole and
    /// then flushed, so a chunk per line reaches a terminal at once.
    pub fn new(out: impl Write + Send + 'static, chunk_bytes: usize) -> io::Result<Self> {
        let (chunks, queue) = mpsc::sync_channel::<Vec<u8>>(QUEUE_CHUNKS);
        let (spare, spares) = mpsc::sync_channel(SPARE_CHUNKS);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let thread = thread::Builder::new()
            .name("tcpstates-out".into())
            .spawn(move || write_all_chunks(out, &queue, &spare, &flag))?;
        Ok(Writer {
            chunks: Some(chunks),
            spares,
            failed,
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

    /// Queues `chunk` (if not empty), waiting while the queue is full. After
    /// a failed write, drops it.
    pub fn send(&self, chunk: Vec<u8>) {
        if let Some(chunks) = &self.chunks {
            if !chunk.is_empty() && !self.failed() {
                // Fails only if the thread is gone, which `finish` reports.
                let _ = chunks.send(chunk);
            }
        }
    }

    /// Whether a write failed (the writer then drops everything after it).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
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
    failed: &AtomicBool,
) -> io::Result<()> {
    let mut first_error = None;
    for mut chunk in queue {
        if first_error.is_none() {
            if let Err(err) = out.write_all(&chunk).and_then(|()| out.flush()) {
                failed.store(true, Ordering::Release);
                first_error = Some(err);
            }
        }
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

    #[test]
    fn a_stalled_write_does_not_hold_the_reader_up() {
        /// A writer whose first write waits until released.
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
        let (entered, release) = (Arc::default(), Arc::<AtomicBool>::default());
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
        // The write is stuck; a whole queue of chunks still goes in.
        for _ in 0..QUEUE_CHUNKS {
            writer.send(b"x".to_vec());
        }
        assert_eq!(*written.lock().unwrap(), 0);
        release.store(true, Ordering::Release);
        writer.finish().unwrap();
        assert_eq!(*written.lock().unwrap(), 5 + QUEUE_CHUNKS);
    }
}
