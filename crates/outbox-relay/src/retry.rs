//! Retrying: the [`RetryPolicy`] of events (exponential backoff with jitter, and when to give
//! up), and the [`Backoff`] of connections and bookkeeping writes (a pause that doubles while
//! failures come in a row).

use std::time::Duration;

/// How failed deliveries are retried.
///
/// The n-th failure of an event (n = 1, 2, …) schedules its next attempt
/// `min(base · 2^(n-1), max) · jitter` later, with `jitter` drawn uniformly from
/// `[1 - jitter, 1 + jitter]` (then capped at `max`). After `max_attempts` failures the event
/// moves to the dead-letter table. Nothing sleeps: the event is simply not claimed again before
/// its `next_attempt_at`, and other aggregates keep flowing.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// Failures after which an event is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Relative jitter in `[0, 1]`; 0.5 spreads delays over ±50%.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_attempts: 10,
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "retry.jitter must be within 0..=1, got {}",
                self.jitter
            ));
        }
        if self.base > self.max {
            return Err("retry.base must not exceed retry.max".into());
        }
        Ok(())
    }

    /// True when an event that has now failed `failures` times must go to the dead-letter table.
    pub fn exhausted(&self, failures: u32) -> bool {
        failures >= self.max_attempts
    }

    /// Delay before the next attempt of an event that has now failed `failures` times (≥ 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(63);
        let raw = self.base.as_secs_f64() * 2f64.powi(exp as i32);
        let capped = raw.min(self.max.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0);
        Duration::from_secs_f64((capped * factor).min(self.max.as_secs_f64()).max(0.0))
    }
}

/// A pause that doubles with each failure in a row, from `first` up to `max`, and starts over
/// after a success. For reconnecting and for retrying the relay's own database writes; events
/// are retried by [`RetryPolicy`], which never sleeps.
///
/// ```
/// use std::time::Duration;
/// use outbox_relay::retry::Backoff;
///
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
/// assert_eq!(b.fail(), Duration::from_millis(100));
/// assert_eq!(b.fail(), Duration::from_millis(200));
/// assert_eq!(b.fail(), Duration::from_millis(300));
/// b.reset();
/// assert_eq!(b.fail(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff whose first pause is `first`, doubling up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// Counts a failure; returns the pause before the next try.
    pub fn fail(&mut self) -> Duration {
        let pause = self
            .first
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    /// A success: the next failure pauses `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_and_cap() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: 8,
            jitter: 0.5,
        };
        for _ in 0..200 {
            let d1 = p.delay(1).as_secs_f64();
            assert!((0.05..=0.15).contains(&d1), "{d1}");
            let d3 = p.delay(3).as_secs_f64();
            assert!((0.2..=0.6).contains(&d3), "{d3}");
            assert!(p.delay(30) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn no_jitter_is_exact() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(4), Duration::from_secs(8));
        assert_eq!(p.delay(100), Duration::from_secs(300));
    }

    #[test]
    fn exhausted_after_max_attempts() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(!p.exhausted(2));
        assert!(p.exhausted(3));
    }

    #[test]
    fn validate_rejects_nonsense() {
        let mut p = RetryPolicy::default();
        assert!(p.validate().is_ok());
        p.max_attempts = 0;
        assert!(p.validate().is_err());
        p = RetryPolicy {
            jitter: 2.0,
            ..RetryPolicy::default()
        };
        assert!(p.validate().is_err());
    }
}
