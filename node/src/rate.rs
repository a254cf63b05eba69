//! Per-connection rate limiting with a token bucket.
//!
//! Each connection may send `rate` frames per second on average and `burst` at once. The
//! bucket is refilled lazily from the elapsed time, so an idle connection costs nothing.

use std::time::{Duration, Instant};

/// A token bucket; one per connection, owned by its reader task (no locking).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `rate_per_sec` on average and `burst` at once.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate_per_sec: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            refilled_at: now,
        }
    }

    /// Take one token if there is one; `false` means the frame is over the rate.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate_per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next token, for the error message.
    pub fn retry_after(&self) -> Duration {
        if self.rate_per_sec <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) / self.rate_per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_then_refilled_over_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, start);
        assert!((0..5).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert!(bucket.retry_after() <= Duration::from_millis(100));
        assert!(bucket.try_take(start + Duration::from_millis(100)));
        assert!(!bucket.try_take(start + Duration::from_millis(100)));
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, 3, start);
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.try_take(later)).count(), 3);
    }
}
