//! Every time conversion in one place: the kernel stamps events with its
//! monotonic clock; the outputs show wall-clock time (local time of day for
//! `-T`).

/// Local wall-clock time of day, for the `-T` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WallClock {
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-60 (a leap second).
    pub second: u8,
}

impl WallClock {
    /// The local time of day at `secs` seconds since the Unix epoch.
    pub fn at_unix(secs: i64) -> Self {
        let t = secs as libc::time_t;
        // SAFETY: localtime_r writes only into the `tm` we own and is
        // thread-safe (unlike localtime); a zeroed `tm` is a valid value.
        unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&t, &mut tm).is_null() {
                return Self::default();
            }
            Self {
                hour: tm.tm_hour as u8,
                minute: tm.tm_min as u8,
                second: tm.tm_sec as u8,
            }
        }
    }
}

/// A UTC calendar date and time of day, to the microsecond.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utc {
    /// The year (proleptic Gregorian).
    pub year: i64,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-59 (Unix time has no leap seconds).
    pub second: u8,
    /// 0-999999.
    pub micros: u32,
}

impl Utc {
    /// The UTC time `unix_ns` nanoseconds after the Unix epoch, rounded
    /// down to the microsecond.
    pub fn at_unix_ns(unix_ns: i128) -> Self {
        let secs = unix_ns.div_euclid(1_000_000_000) as i64;
        let micros = (unix_ns.rem_euclid(1_000_000_000) / 1000) as u32;
        let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (of_day / 3600) as u8,
            minute: (of_day / 60 % 60) as u8,
            second: (of_day % 60) as u8,
            micros,
        }
    }
}

/// The Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm: exact for every day, no table, no time zone).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Turns the kernel's monotonic event times into wall-clock times, so an
/// output shows when the transition happened, not when it was printed.
#[derive(Debug, Clone)]
pub struct EventClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
    /// The last second converted to local time, and its time of day.
    cached: Option<(i64, WallClock)>,
}

impl EventClock {
    /// A clock for events from now on (the offset is read once: a wall
    /// clock that is set later does not move the events' times).
    pub fn now() -> Self {
        Self::with_offset(clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC))
    }

    /// A clock whose wall time is `offset_ns` ahead of the monotonic clock.
    pub fn with_offset(offset_ns: i128) -> Self {
        Self {
            offset_ns,
            cached: None,
        }
    }

    /// Nanoseconds since the Unix epoch at monotonic time `monotonic_ns`.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.offset_ns
    }

    /// The local time of day at monotonic time `monotonic_ns`, converted
    /// once per second.
    pub fn local(&mut self, monotonic_ns: u64) -> WallClock {
        let secs = self.unix_ns(monotonic_ns).div_euclid(1_000_000_000) as i64;
        match self.cached {
            Some((cached, wall)) if cached == secs => wall,
            _ => {
                let wall = WallClock::at_unix(secs);
                self.cached = Some((secs, wall));
                wall
            }
        }
    }
}

/// The kernel's monotonic clock now, as bpf_ktime_get_ns() reads it.
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we own; both
    // clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_to_unix() {
        let clock = EventClock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(clock.unix_ns(5), 1_700_000_000_000_000_005);
    }

    #[test]
    fn local_time_is_cached_per_second() {
        let mut clock = EventClock::with_offset(0);
        let first = clock.local(3_000_000_000);
        assert_eq!(clock.cached.map(|(s, _)| s), Some(3));
        assert_eq!(clock.local(3_999_999_999), first);
        clock.local(4_000_000_000);
        assert_eq!(clock.cached.map(|(s, _)| s), Some(4));
    }

    #[test]
    fn utc_calendar() {
        let at = |ns: i128| Utc::at_unix_ns(ns);
        assert_eq!(
            at(0),
            Utc {
                year: 1970,
                month: 1,
                day: 1,
                ..Utc::default()
            }
        );
        // 2026-11-29T23:59:58.123456Z, and a leap day.
        let t = at(1_795_996_798_123_456_789);
        assert_eq!((t.year, t.month, t.day), (2026, 11, 29));
        assert_eq!(
            (t.hour, t.minute, t.second, t.micros),
            (23, 59, 58, 123_456)
        );
        let leap = at(951_782_400 * 1_000_000_000);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        let before = at(-1_000);
        assert_eq!((before.year, before.month, before.day), (1969, 12, 31));
        assert_eq!(
            (before.hour, before.second, before.micros),
            (23, 59, 999_999)
        );
        // Every day of four centuries round-trips through the date.
        let mut previous = at(-86_400 * 1_000_000_000);
        for day in 0..146_097i64 {
            let t = at(i128::from(day) * 86_400 * 1_000_000_000);
            assert!(
                (t.year, t.month, t.day) > (previous.year, previous.month, previous.day),
                "{t:?} after {previous:?}"
            );
            assert!((1..=12).contains(&t.month) && (1..=31).contains(&t.day));
            previous = t;
        }
        assert_eq!(
            (previous.year, previous.month, previous.day),
            (2369, 12, 31)
        );
    }

    #[test]
    fn now_is_close_to_the_system_clock() {
        let clock = EventClock::now();
        let mono = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        let real = clock_ns(libc::CLOCK_REALTIME);
        assert!((clock.unix_ns(mono) - real).abs() < 1_000_000_000);
    }
}
