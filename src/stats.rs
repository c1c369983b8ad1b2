//! The run's counters, the kernel's and the reader's, as one structured
//! value: what `-v` reports, what the exit line says was lost, and a stable
//! key=value form for scripts (`--report kv`).

use std::fmt::Write;

/// The in-kernel counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Transitions that passed the filters (sent or dropped).
    pub events: u64,
    /// Events lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Sockets the kernel's per-socket map had no room for.
    pub map_full: u64,
    /// Transitions the kernel did not run the program for, because it was
    /// already running on that CPU (a softirq interrupted it, and changed
    /// another socket's state). Counted by the kernel (Linux 5.12+).
    pub recursion_misses: u64,
    /// Summary mode: transitions the group filters could not judge (their
    /// owner's cgroup was made since the table was filled), left out.
    pub unjudged: u64,
}

/// What the reader counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderCounts {
    /// Events handed to the outputs.
    pub printed: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Transitions whose socket had no room among the remembered ones
    /// (user space's map; the kernel's is in [`KernelCounters`]).
    pub no_room: u64,
    /// Sockets whose last-transition time is kept now, wherever it is kept.
    pub sockets_tracked: u64,
    /// The ring buffer, when the run reads one.
    pub ring: Option<RingPeak>,
    /// Events the group filters could not judge (their owner's cgroup was
    /// gone before the reader could), left out.
    pub unjudged: u64,
}

/// How close a run came to losing events: the fullest the reader found the
/// ring buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingPeak {
    /// The ring buffer's size in bytes.
    pub size: u64,
    /// Bytes waiting at the fullest.
    pub bytes: u64,
    /// Events waiting at the fullest.
    pub events: u64,
}

impl RingPeak {
    /// The fullest, in whole percent of the size, rounded up (a ring that
    /// held anything shows at least 1).
    pub fn percent(&self) -> u64 {
        (self.bytes * 100).div_ceil(self.size.max(1))
    }
}

/// Every counter of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// The kernel's.
    pub kernel: KernelCounters,
    /// The reader's.
    pub reader: ReaderCounts,
}

impl Stats {
    /// Transitions whose socket had no room for its time, in the kernel's
    /// map or the reader's (only one of them is in use).
    pub fn no_room(&self) -> u64 {
        self.kernel.map_full + self.reader.no_room
    }

    /// Transitions the group filters could not judge, left out.
    pub fn unjudged(&self) -> u64 {
        self.kernel.unjudged + self.reader.unjudged
    }

    /// Every counter as a sentence, for `-v`.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{} transitions matched, {} printed, {} lost (ring buffer full), \
             {} missed (recursion), {} sockets without room in the map, {} undecodable records, \
             {} sockets tracked",
            self.kernel.events,
            self.reader.printed,
            self.kernel.ringbuf_drops,
            self.kernel.recursion_misses,
            self.no_room(),
            self.reader.undecodable,
            self.reader.sockets_tracked,
        );
        if self.unjudged() > 0 {
            let _ = write!(
                line,
                ", {} left out unjudged (owner's cgroup too new)",
                self.unjudged()
            );
        }
        if let Some(ring) = self.reader.ring {
            let _ = write!(
                line,
                ", ring buffer at most {}% full ({} events)",
                ring.percent(),
                ring.events
            );
        }
        line
    }

    /// The counters as `key=value` pairs, keys in this fixed order (the
    /// names and their meaning are documented in docs/outputs.md and stay);
    /// the ring buffer's when the run reads one; `unjudged` last.
    pub fn key_values(&self) -> String {
        let mut line = String::new();
        for (key, value) in self.pairs() {
            if !line.is_empty() {
                line.push(' ');
            }
            let _ = write!(line, "{key}={value}");
        }
        if let Some(ring) = self.reader.ring {
            let _ = write!(
                line,
                " ring_bytes={} ring_peak_pct={} ring_peak_events={}",
                ring.size,
                ring.percent(),
                ring.events
            );
        }
        let _ = write!(line, " unjudged={}", self.unjudged());
        line
    }

    fn pairs(&self) -> [(&'static str, u64); 7] {
        [
            ("matched", self.kernel.events),
            ("printed", self.reader.printed),
            ("ring_drops", self.kernel.ringbuf_drops),
            ("recursion_misses", self.kernel.recursion_misses),
            ("no_room", self.no_room()),
            ("undecodable", self.reader.undecodable),
            ("sockets_tracked", self.reader.sockets_tracked),
        ]
    }

    /// The one line printed at exit when anything was lost or unknown.
    pub fn losses(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.kernel.ringbuf_drops > 0 {
            parts.push(format!(
                "{} events lost (ring buffer full)",
                self.kernel.ringbuf_drops
            ));
        }
        if self.kernel.recursion_misses > 0 {
            parts.push(format!(
                "{} transitions missed (the kernel skipped the program: it was already running on that CPU)",
                self.kernel.recursion_misses
            ));
        }
        let no_room = self.no_room();
        if no_room > 0 {
            parts.push(format!(
                "{no_room} durations unknown (socket map full: raise --max-sockets)"
            ));
        }
        if self.unjudged() > 0 {
            parts.push(format!(
                "{} transitions left out unjudged (their owner's cgroup was too new for the \
                 group filters)",
                self.unjudged()
            ));
        }
        if self.reader.undecodable > 0 {
            parts.push(format!(
                "{} records could not be decoded",
                self.reader.undecodable
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        Stats {
            kernel: KernelCounters {
                events: 10,
                ringbuf_drops: 3,
                map_full: 2,
                recursion_misses: 4,
                unjudged: 2,
            },
            reader: ReaderCounts {
                printed: 7,
                undecodable: 1,
                no_room: 3,
                sockets_tracked: 9,
                ring: Some(RingPeak {
                    size: 4 << 20,
                    bytes: 1 << 20,
                    events: 9362,
                }),
                unjudged: 1,
            },
        }
    }

    #[test]
    fn losses_line() {
        assert_eq!(Stats::default().losses(), None);
        assert_eq!(
            sample().losses().unwrap(),
            "3 events lost (ring buffer full); 4 transitions missed (the kernel skipped the \
             program: it was already running on that CPU); 5 durations unknown (socket map \
             full: raise --max-sockets); 3 transitions left out unjudged (their owner's \
             cgroup was too new for the group filters); 1 records could not be decoded"
        );
    }

    #[test]
    fn sentence_for_people() {
        assert_eq!(
            sample().describe(),
            "10 transitions matched, 7 printed, 3 lost (ring buffer full), 4 missed \
             (recursion), 5 sockets without room in the map, 1 undecodable records, 9 \
             sockets tracked, 3 left out unjudged (owner's cgroup too new), ring buffer at \
             most 25% full (9362 events)"
        );
    }

    #[test]
    fn key_values_for_scripts() {
        assert_eq!(
            sample().key_values(),
            "matched=10 printed=7 ring_drops=3 recursion_misses=4 no_room=5 undecodable=1 \
             sockets_tracked=9 ring_bytes=4194304 ring_peak_pct=25 ring_peak_events=9362 unjudged=3"
        );
        let summary = Stats {
            reader: ReaderCounts::default(),
            ..sample()
        };
        assert!(!summary.key_values().contains("ring_peak"));
    }

    #[test]
    fn any_fill_shows_as_at_least_one_percent() {
        let peak = |bytes| RingPeak {
            size: 4 << 20,
            bytes,
            events: 1,
        };
        assert_eq!(peak(0).percent(), 0);
        assert_eq!(peak(112).percent(), 1);
        assert_eq!(peak(4 << 20).percent(), 100);
    }
}
