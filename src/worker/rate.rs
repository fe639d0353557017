//! Per-task rate limits (Celery's `rate_limit = "10/s"`): a task over its rate waits for
//! its turn, it is never dropped.
//!
//! Celery gives each rate-limited task a token bucket of capacity one filled at the rate,
//! so starts are spaced `1 / rate` apart with no burst; this does the same by handing out
//! start times.

use crate::registry::RateLimit;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The start schedule of every rate-limited task of a worker, by task name.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    next_start: Mutex<HashMap<String, Instant>>,
}

impl RateLimits {
    /// When the next start of `task` at `limit` may happen, reserving that slot: the caller
    /// waits until the returned instant. `None` for no limit (a rate of 0, as in Celery).
    pub fn reserve(&self, task: &str, limit: RateLimit) -> Option<Instant> {
        if !(limit.per_second > 0.0 && limit.per_second.is_finite()) {
            return None;
        }
        let spacing = Duration::from_secs_f64(1.0 / limit.per_second);
        let now = Instant::now();
        let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
        let slot = next.get(task).copied().map_or(now, |at| at.max(now));
        next.insert(task.to_owned(), slot + spacing);
        Some(slot)
    }

    /// Give back a reserved start that was not used (the message went back to the broker),
    /// so the tasks queued behind it do not wait for it.
    pub fn release(&self, task: &str, limit: RateLimit, slot: Instant) {
        if !(limit.per_second > 0.0 && limit.per_second.is_finite()) {
            return;
        }
        let spacing = Duration::from_secs_f64(1.0 / limit.per_second);
        let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = next.get_mut(task)
            && *at == slot + spacing
        {
            *at = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_the_rate_without_bursts() {
        let limits = RateLimits::default();
        let ten = RateLimit { per_second: 10.0 };
        let t0 = Instant::now();
        let slots: Vec<Duration> = (0..5)
            .map(|_| limits.reserve("t", ten).unwrap() - t0)
            .collect();
        let ms: Vec<u128> = slots.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 100, 200, 300, 400]);
        // Another task has its own schedule.
        assert_eq!(limits.reserve("other", ten).unwrap(), t0);
        // After a quiet spell the next start is now, not in the past.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limits.reserve("t", ten).unwrap(), Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_no_limit_and_released_slots_are_reused() {
        let limits = RateLimits::default();
        assert!(limits.reserve("t", RateLimit { per_second: 0.0 }).is_none());
        let one = RateLimit { per_second: 1.0 };
        let first = limits.reserve("t", one).unwrap();
        let second = limits.reserve("t", one).unwrap();
        limits.release("t", one, second);
        assert_eq!(limits.reserve("t", one).unwrap(), second);
        assert_eq!(second - first, Duration::from_secs(1));
    }
}
