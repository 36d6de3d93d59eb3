//! Wall-clock time in the two forms tether writes it: RFC 3339 text for records people read
//! (link status, enrollment, log files, bundle manifests) and milliseconds since the Unix epoch
//! for telemetry timestamps and ages.
//!
//! One place for both, so every part of the agent and the relay writes the same form and a
//! clock that reads before 1970 (a board without a real-time clock, before NTP) gives the same
//! answer everywhere.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time as RFC 3339 UTC with whole seconds, e.g. `2026-01-31T12:00:00Z`.
pub fn now_rfc3339() -> String {
    rfc3339_seconds(SystemTime::now())
}

/// `time` as RFC 3339 UTC with whole seconds (fractions are dropped, not rounded).
pub fn rfc3339_seconds(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The current time in milliseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// `time` in milliseconds since the Unix epoch; 0 for a time before 1970.
pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn both_forms_match_what_was_written_before() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_225_600_500);
        assert_eq!(rfc3339_seconds(t), "2026-01-01T00:00:00Z");
        assert_eq!(unix_ms(t), 1_767_225_600_500);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(now_ms() > 1_700_000_000_000);
        assert!(now_rfc3339().ends_with('Z'));
    }
}
