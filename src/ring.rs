//! Reads the BPF ring buffer straight from its memory mapping.
//!
//! The kernel reads the reader's position on every reservation, to see
//! whether the record fits. libbpf's reader writes that position after every
//! record, so in a storm each event moved a cache line between the reader's
//! CPU and the CPUs making events. This reader writes it once per 64 KiB it
//! reads and at the end of each pass, hands each record to the caller as a
//! slice of the mapping (no copy, no call through C), and waits with poll(2).
//!
//! The layout is the kernel's (kernel/bpf/ringbuf.c): page 0 holds the
//! consumer position, writable by user space; from page 1, read-only, the
//! producer position's page and then the data, mapped twice in a row so a
//! record that wraps around the end reads as one slice. Each record starts
//! with an 8-byte header whose first u32 is its length, with a busy bit
//! while the producer fills it and a discard bit if it was given up.

use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_BYTES: u64 = 8;
/// How much the reader reads before it hands the space back to the kernel.
const RELEASE_BYTES: u64 = 64 << 10;

/// A mapped ring buffer. Unmapped when dropped; borrows the map's fd.
pub struct RingReader<'fd> {
    fd: BorrowedFd<'fd>,
    /// The consumer position's page.
    consumer: Mapping,
    /// The producer position's page, then the data twice.
    producer: Mapping,
    page: usize,
    mask: u64,
    peak: Fill,
}

/// How full the ring buffer was: bytes waiting, and the records in them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fill {
    /// Bytes the kernel had written and the reader not yet read.
    pub bytes: u64,
    /// Records in those bytes.
    pub records: u64,
}

struct Mapping {
    at: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a fresh shared mapping of the fd, placed by the kernel; it
        // aliases no Rust object.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let at = NonNull::new(at).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { at, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap returned; nothing refers to it after
        // the reader is gone (records are lent only during `consume`).
        unsafe { libc::munmap(self.at.as_ptr(), self.len) };
    }
}

impl<'fd> RingReader<'fd> {
    /// Maps the ring buffer map `fd`, whose data area is `size` bytes (its
    /// max_entries: a power of two, a multiple of the page size).
    pub fn new(fd: BorrowedFd<'fd>, size: u32) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring buffer size {size} is not a power of two"
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("no page size"))?;
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size as usize, libc::PROT_READ, page)?;
        Ok(RingReader {
            fd,
            consumer,
            producer,
            page,
            mask: u64::from(size) - 1,
            peak: Fill::default(),
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the page starts with the kernel's u64 consumer position,
        // 8-aligned (page-aligned), mapped for as long as `self`.
        unsafe { self.consumer.at.cast::<AtomicU64>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, for the producer position.
        unsafe { self.producer.at.cast::<AtomicU64>().as_ref() }
    }

    /// Waits until the kernel wakes the reader or `timeout` passes. A signal
    /// ends the wait early, without an error.
    pub fn wait(&self, timeout: Duration) -> io::Result<()> {
        let mut fd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut fd, 1, millis) } < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// The data area's size in bytes.
    pub fn size(&self) -> u64 {
        self.mask + 1
    }

    /// The fullest the reader found the ring buffer, at the start of a
    /// pass: a lower bound of its true high-water mark, which it reaches
    /// just before the reader wakes.
    pub fn peak(&self) -> Fill {
        self.peak
    }

    /// Hands every record the kernel has finished, oldest first, to `each`,
    /// until none is left or `each` breaks (its record counts as read).
    /// Returns how many records it handed over.
    pub fn consume(&mut self, mut each: impl FnMut(&[u8]) -> ControlFlow<()>) -> u64 {
        let mut pos = self.consumer_pos().load(Ordering::Acquire);
        let mut released = pos;
        let mut handed = 0;
        'passes: loop {
            let end = self.producer_pos().load(Ordering::Acquire);
            if pos >= end {
                break;
            }
            // Everything up to `end` is waiting: count its records as they
            // are read.
            let peak = end - pos > self.peak.bytes;
            if peak {
                self.peak = Fill {
                    bytes: end - pos,
                    records: 0,
                };
            }
            while pos < end {
                self.peak.records += u64::from(peak);
                // SAFETY: pos & mask is inside the first copy of the data,
                // which starts one page into the mapping; the header is
                // 8-aligned (records are rounded up to 8 bytes).
                let record = unsafe {
                    self.producer
                        .at
                        .cast::<u8>()
                        .add(self.page + (pos & self.mask) as usize)
                };
                // SAFETY: as above; the kernel writes the length last, with
                // release ordering, once the record is complete.
                let header = unsafe { record.cast::<AtomicU32>().as_ref() }.load(Ordering::Acquire);
                if header & BUSY_BIT != 0 {
                    // Still being written: the rest waits for the next pass.
                    break 'passes;
                }
                let len = header & !(BUSY_BIT | DISCARD_BIT);
                pos += (u64::from(len) + HEADER_BYTES + 7) & !7;
                if header & DISCARD_BIT == 0 {
                    handed += 1;
                    // SAFETY: `len` bytes follow the header; the second copy
                    // of the data covers a record that wraps. The kernel does
                    // not reuse them until the position passes them, which
                    // happens after `each` returns.
                    let data = unsafe {
                        std::slice::from_raw_parts(
                            record.add(HEADER_BYTES as usize).as_ptr(),
                            len as usize,
                        )
                    };
                    if each(data).is_break() {
                        break 'passes;
                    }
                }
                if pos - released >= RELEASE_BYTES {
                    self.consumer_pos().store(pos, Ordering::Release);
                    released = pos;
                }
            }
            // Hand the space back before looking for more: a producer that
            // finishes a record after this store and finds the reader
            // caught up wakes it.
            self.consumer_pos().store(pos, Ordering::Release);
            released = pos;
        }
        if pos != released {
            self.consumer_pos().store(pos, Ordering::Release);
        }
        handed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::{AsFd, FromRawFd};
    use std::os::unix::fs::FileExt;

    const SIZE: u32 = 4096;

    /// A file laid out like the kernel's mapping of a ring buffer: consumer
    /// page, producer page, data (the second copy of the data is not the
    /// same memory here, so no record may wrap).
    struct FakeRing {
        file: File,
        page: u64,
    }

    impl FakeRing {
        fn new() -> Self {
            // SAFETY: memfd_create with a valid C string; the fd is ours.
            let fd = unsafe { libc::memfd_create(c"ring".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
            // SAFETY: a fresh fd owned by nothing else.
            let file = unsafe { File::from_raw_fd(fd) };
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
            file.set_len(2 * page + 2 * u64::from(SIZE)).unwrap();
            FakeRing { file, page }
        }

        /// Writes a record at data offset `pos` with header `len_word`;
        /// returns the position after it.
        fn record(&self, pos: u64, len_word: u32, body: &[u8]) -> u64 {
            let at = 2 * self.page + pos;
            self.file.write_all_at(&len_word.to_ne_bytes(), at).unwrap();
            self.file.write_all_at(body, at + HEADER_BYTES).unwrap();
            pos + ((body.len() as u64 + HEADER_BYTES + 7) & !7)
        }

        fn set_producer(&self, pos: u64) {
            self.file
                .write_all_at(&pos.to_ne_bytes(), self.page)
                .unwrap();
        }

        fn consumer(&self) -> u64 {
            let mut bytes = [0u8; 8];
            self.file.read_exact_at(&mut bytes, 0).unwrap();
            u64::from_ne_bytes(bytes)
        }
    }

    fn drain(reader: &mut RingReader<'_>) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        reader.consume(|data| {
            seen.push(data.to_vec());
            ControlFlow::Continue(())
        });
        seen
    }

    #[test]
    fn reads_finished_records_and_skips_discarded_ones() {
        let ring = FakeRing::new();
        let mut reader = RingReader::new(ring.file.as_fd(), SIZE).unwrap();
        assert!(drain(&mut reader).is_empty());

        let mut end = ring.record(0, 3, b"one");
        end = ring.record(end, 5 | DISCARD_BIT, b"gone!");
        end = ring.record(end, 8, b"three333");
        ring.set_producer(end);
        assert_eq!(drain(&mut reader), [b"one".to_vec(), b"three333".to_vec()]);
        assert_eq!(ring.consumer(), end);
        assert!(drain(&mut reader).is_empty());
    }

    #[test]
    fn stops_at_a_record_still_being_written() {
        let ring = FakeRing::new();
        let mut reader = RingReader::new(ring.file.as_fd(), SIZE).unwrap();
        let first_end = ring.record(0, 4, b"done");
        let end = ring.record(first_end, 4 | BUSY_BIT, b"busy");
        ring.set_producer(end);
        assert_eq!(drain(&mut reader), [b"done".to_vec()]);
        assert_eq!(ring.consumer(), first_end);

        // Finished: read on the next pass.
        ring.record(first_end, 4, b"busy");
        assert_eq!(drain(&mut reader), [b"busy".to_vec()]);
        assert_eq!(ring.consumer(), end);
    }

    #[test]
    fn a_break_keeps_the_rest_for_later() {
        let ring = FakeRing::new();
        let mut reader = RingReader::new(ring.file.as_fd(), SIZE).unwrap();
        let first_end = ring.record(0, 1, b"a");
        let end = ring.record(first_end, 1, b"b");
        ring.set_producer(end);
        let handed = reader.consume(|_| ControlFlow::Break(()));
        assert_eq!(handed, 1);
        assert_eq!(ring.consumer(), first_end);
        assert_eq!(drain(&mut reader), [b"b".to_vec()]);
    }

    #[test]
    fn positions_wrap_around_the_data() {
        let ring = FakeRing::new();
        // The reader resumes where the consumer position says, past one
        // whole turn of the ring.
        let start = u64::from(SIZE) + 64;
        ring.file.write_all_at(&start.to_ne_bytes(), 0).unwrap();
        let mut reader = RingReader::new(ring.file.as_fd(), SIZE).unwrap();
        let end = ring.record(64, 2, b"hi") - 64 + start;
        ring.set_producer(end);
        assert_eq!(drain(&mut reader), [b"hi".to_vec()]);
        assert_eq!(ring.consumer(), end);
    }

    #[test]
    fn the_peak_is_the_fullest_pass() {
        let ring = FakeRing::new();
        let mut reader = RingReader::new(ring.file.as_fd(), SIZE).unwrap();
        assert_eq!(reader.peak(), Fill::default());
        let mut end = ring.record(0, 8, b"12345678");
        end = ring.record(end, 8, b"12345678");
        ring.set_producer(end);
        drain(&mut reader);
        assert_eq!(
            reader.peak(),
            Fill {
                bytes: 32,
                records: 2
            }
        );
        // A smaller pass leaves the peak as it was.
        let later = ring.record(end, 1, b"x");
        ring.set_producer(later);
        drain(&mut reader);
        assert_eq!(
            reader.peak(),
            Fill {
                bytes: 32,
                records: 2
            }
        );
        assert_eq!(reader.size(), u64::from(SIZE));
    }

    #[test]
    fn sizes_must_be_powers_of_two() {
        let ring = FakeRing::new();
        assert!(RingReader::new(ring.file.as_fd(), 3000).is_err());
    }
}
