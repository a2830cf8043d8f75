//! The retry policy for phase two: exponential backoff with full jitter and a cap, and the
//! thresholds past which a transaction is flagged `needs_attention`.
//!
//! The policy only computes delays; the schedule it produces is persisted by the store
//! (`attempts`, `next_attempt_at`), so retries survive restarts of any process.

use std::time::Duration;

use rand::Rng;

/// How phase-two retries are spaced and when they escalate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// Growth of the upper bound per attempt.
    pub multiplier: f64,
    /// No delay exceeds this.
    pub cap: Duration,
    /// Flag `needs_attention` after this many unfinished rounds...
    pub attention_after_attempts: u32,
    /// ...or once this long has passed since the decision.
    pub attention_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(500),
            multiplier: 2.0,
            cap: Duration::from_secs(60),
            attention_after_attempts: 10,
            attention_after: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The largest delay after `attempts` failed rounds: `initial * multiplier^attempts`,
    /// capped.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempts.min(64) as i32);
        let ceiling = self.initial.as_secs_f64() * factor;
        if ceiling.is_finite() && ceiling < self.cap.as_secs_f64() {
            Duration::from_secs_f64(ceiling)
        } else {
            self.cap
        }
    }

    /// A delay drawn uniformly from `[0, ceiling(attempts)]` ("full jitter"), so that many
    /// transactions failing together do not retry together.
    pub fn delay(&self, attempts: u32) -> Duration {
        let ceiling = self.ceiling(attempts).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_then_caps() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            cap: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let ceilings: Vec<u128> = (0..8).map(|a| policy.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delays_stay_within_the_ceiling() {
        let policy = RetryPolicy::default();
        for attempts in 0..20 {
            for _ in 0..50 {
                assert!(policy.delay(attempts) <= policy.ceiling(attempts));
            }
        }
    }
}
