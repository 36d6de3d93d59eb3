//! Capped exponential backoff with full jitter, for everything that retries against the relay
//! (the link, a telemetry channel the relay closed).

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with full jitter, so a relay restart is not met by every
/// device of a fleet at the same instant.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The next delay: uniform in [current/2, current], then doubles `current` up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.current.min(self.max);
        self.current = (self.current * 2).min(self.max);
        let low = cap / 2;
        let span = cap.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(rand::thread_rng().gen_range(0..=span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(8)));
        assert!(delays[7] >= Duration::from_secs(4));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
