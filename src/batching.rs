//! How events are batched on their way out, from the ring buffer's size:
//! when the kernel wakes the reader, how often it looks whether to, and how
//! large the chunks handed to the writer are. Both limits keep what is in
//! flight to a sixteenth of the ring, so a wakeup comes long before the
//! ring is full.

/// The share of the ring buffer a batch may take.
const RING_FRACTION: u32 = 16;

/// The largest batch before a wakeup, whatever the ring's size.
const MAX_BATCH_BYTES: u32 = 256 << 10;

/// Output to a pipe or file is written in chunks of about this size.
pub const WRITE_BYTES: usize = 1 << 16;

/// Output to a terminal is handed over a line at a time; the chunk
/// buffers are this large.
const TERMINAL_CHUNK_BYTES: usize = 1024;

/// How one run hands its lines to the writer (the kernel's wakeups are
/// in the plan: [`wakeup_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Hand each line to the writer at once (a terminal sees it as it
    /// comes), instead of chunks of [`WRITE_BYTES`].
    pub each_line: bool,
    /// The size of the writer's chunk buffers.
    pub chunk_bytes: usize,
}

impl Batching {
    /// A terminal sees each line as it comes: a write per event. A pipe or
    /// file gets large chunks, and what is left after every poll.
    pub fn for_output(terminal: bool) -> Self {
        if terminal {
            Self {
                each_line: true,
                chunk_bytes: TERMINAL_CHUNK_BYTES,
            }
        } else {
            Self {
                each_line: false,
                chunk_bytes: WRITE_BYTES,
            }
        }
    }
}

/// With batched wakeups (a pipe or file), the kernel wakes the reader once
/// this many bytes wait in a ring of `ring_bytes`; the reader also drains on
/// its poll timer.
pub fn wakeup_bytes(ring_bytes: u32) -> u32 {
    (ring_bytes / RING_FRACTION).min(MAX_BATCH_BYTES)
}

/// With batched wakeups, each CPU looks at how much waits in the ring every
/// mask+1 events (the query reads positions other CPUs keep writing): at
/// most 32, and few enough that the events between two looks, on every CPU
/// at once, take at most a sixteenth of the ring. `record_bytes` is one
/// event's size in the ring, header included.
pub fn wakeup_mask(ring_bytes: u32, cpus: usize, record_bytes: usize) -> u32 {
    let fits = u64::from(ring_bytes / RING_FRACTION) / (record_bytes * cpus.max(1)) as u64;
    let every = if fits == 0 { 1 } else { 1 << fits.ilog2() };
    every.min(32) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_a_fraction_of_the_buffer() {
        assert_eq!(wakeup_bytes(4096), 256);
        assert_eq!(wakeup_bytes(1 << 20), 64 << 10);
        assert_eq!(wakeup_bytes(8 << 20), 256 << 10);
        assert_eq!(wakeup_bytes(1 << 30), 256 << 10);
        assert!(Batching::for_output(true).each_line);
        assert!(!Batching::for_output(false).each_line);
    }

    #[test]
    fn wakeup_looks() {
        // An event of 104 bytes and its 8-byte header.
        let look = |ring, cpus| wakeup_mask(ring, cpus, 112);
        assert_eq!(look(4 << 20, 2), 31);
        assert_eq!(look(4 << 20, 512), 3);
        assert_eq!(look(64 << 10, 2), 15);
        assert_eq!(look(4096, 2), 0);
        assert_eq!(look(4096, 1), 1);
    }
}
