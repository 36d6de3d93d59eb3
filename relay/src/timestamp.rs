//! Times given to the relay in query parameters and command-line options.
//!
//! They are parsed rather than compared as text: the store writes UTC times in one form
//! (`2026-11-24T00:00:00Z`, see [`crate::store::now`]), and a string comparison against any
//! other form (an offset, a lower-case `t` or `z`, fractional seconds, or no time at all) gives
//! wrong answers instead of an error. Every RFC 3339 form is accepted and turned into a
//! [`SystemTime`], which each query then writes in the form its column holds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Why a time was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimeError {
    /// Not of the form `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
    #[error(
        "not an RFC 3339 time (expected e.g. 2026-11-24T00:00:00Z or 2026-11-24T02:00:00+02:00)"
    )]
    Malformed,
    /// A part of the date, time or offset is out of its range (month 13, hour 24, …).
    #[error("{part} {value} is out of range")]
    OutOfRange {
        /// Which part: `month`, `day`, `hour`, `minute`, `second` or `offset`.
        part: &'static str,
        /// The value given.
        value: u32,
    },
    /// Before 1970-01-01T00:00:00Z, when nothing the relay stores can have happened.
    #[error("is before 1970")]
    BeforeEpoch,
}

/// `len` ASCII digits of `b` from `at` as a number.
fn digits(b: &[u8], at: usize, len: usize) -> Result<u32, TimeError> {
    let part = b.get(at..at + len).ok_or(TimeError::Malformed)?;
    part.iter().try_fold(0u32, |n, d| {
        if d.is_ascii_digit() {
            Ok(n * 10 + u32::from(d - b'0'))
        } else {
            Err(TimeError::Malformed)
        }
    })
}

/// Whether `b[at]` is `c`.
fn expect(b: &[u8], at: usize, c: &[u8]) -> Result<(), TimeError> {
    match b.get(at) {
        Some(x) if c.contains(x) => Ok(()),
        _ => Err(TimeError::Malformed),
    }
}

/// Checks `value` is within `range`, naming `part` if not.
fn within(
    part: &'static str,
    value: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<i64, TimeError> {
    if range.contains(&value) {
        Ok(i64::from(value))
    } else {
        Err(TimeError::OutOfRange { part, value })
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Howard Hinnant's algorithm: years start in March, so the leap day is last.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 time: `T`, `t` or a blank between date and time, optional fractional
/// seconds (kept to the nanosecond), and `Z`, `z` or a `±HH:MM` offset, which is required (a
/// time without one could be any of 24 hours). A leap second `:60` counts as the next second.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, TimeError> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)?;
    expect(b, 4, b"-")?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b"-")?;
    let day = digits(b, 8, 2)?;
    expect(b, 10, b"Tt ")?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b":")?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b":")?;
    let second = digits(b, 17, 2)?;
    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 9 {
                nanos = nanos * 10 + u32::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(TimeError::Malformed);
        }
        for _ in (at - start)..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            let hours = within("offset", digits(b, at + 1, 2)?, 0..=23)?;
            expect(b, at + 3, b":")?;
            let minutes = within("offset", digits(b, at + 4, 2)?, 0..=59)?;
            let secs = hours * 3600 + minutes * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return Err(TimeError::Malformed),
    };
    let month_i = within("month", month, 1..=12)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let day_i = within("day", day, 1..=month_days)?;
    let hour = within("hour", hour, 0..=23)?;
    let minute = within("minute", minute, 0..=59)?;
    let second = within("second", second, 0..=60)?;
    let days = days_from_civil(i64::from(year), month_i, day_i);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).map_err(|_| TimeError::BeforeEpoch)?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `time` in the form the store writes its times in (UTC, whole seconds, `Z`), so it compares
/// as text like the stored times do; fractions of a second are dropped, which for an
/// inclusive lower bound keeps every entry of that second.
pub fn store_form(time: SystemTime) -> String {
    tether_protocol::clock::rfc3339_seconds(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(text: &str) -> Result<String, TimeError> {
        parse_rfc3339(text).map(store_form)
    }

    #[test]
    fn every_rfc3339_form_becomes_the_stored_utc_form() {
        let cases = [
            ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
            ("2026-01-01t00:00:00z", "2026-01-01T00:00:00Z"),
            ("2026-01-01 00:00:00Z", "2026-01-01T00:00:00Z"),
            ("2026-01-01T00:00:00+02:00", "2025-12-31T22:00:00Z"),
            ("2025-12-31T19:30:00-04:30", "2026-01-01T00:00:00Z"),
            ("2026-01-01T00:00:00.999999999999Z", "2026-01-01T00:00:00Z"),
            ("2024-02-29T23:59:60Z", "2024-03-01T00:00:00Z"),
            ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
        ];
        for (text, want) in cases {
            assert_eq!(form(text).as_deref(), Ok(want), "{text}");
        }
        let precise = parse_rfc3339("2026-01-01T00:00:00.25Z")
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        assert_eq!(precise.map(|d| d.subsec_millis()), Some(250));
    }

    #[test]
    fn garbage_and_impossible_times_are_refused() {
        for text in [
            "garbage",
            "",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00Z ",
            " 2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00+0200",
            "2026-01-01T00:00:00+02:00:00",
            "2026-01-01X00:00:00Z",
            "２026-01-01T00:00:00Z",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(text), Err(TimeError::Malformed), "{text:?}");
        }
        let out_of_range = [
            ("2026-13-01T00:00:00Z", "month", 13),
            ("2026-02-29T00:00:00Z", "day", 29),
            ("2026-04-31T00:00:00Z", "day", 31),
            ("2026-01-01T24:00:00Z", "hour", 24),
            ("2026-01-01T00:60:00Z", "minute", 60),
            ("2026-01-01T00:00:61Z", "second", 61),
            ("2026-01-01T00:00:00+24:00", "offset", 24),
        ];
        for (text, part, value) in out_of_range {
            assert_eq!(
                parse_rfc3339(text),
                Err(TimeError::OutOfRange { part, value }),
                "{text}"
            );
        }
        assert_eq!(
            parse_rfc3339("1969-12-31T23:59:59Z"),
            Err(TimeError::BeforeEpoch)
        );
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00+00:01"),
            Err(TimeError::BeforeEpoch)
        );
    }
}
