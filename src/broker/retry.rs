//! How a publish is retried when the broker connection fails: Celery's
//! `task_publish_retry_policy`, applied the way kombu's `Connection.ensure` applies it.
//!
//! One attempt is made; when it fails with a connection-class error
//! ([`BrokerError::is_connection_error`]) and retries are left, the loop sleeps the next
//! interval and tries again. The next attempt reconnects first (RabbitMQ: a new publishing
//! channel; Redis: a new connection), as kombu's `ensure` revives the producer. Any other
//! error (unroutable, refused declaration, a too long name) is returned at once.
//!
//! The intervals are kombu's `retry_over_time`: `interval_start`, then `interval_step` more
//! for each retry, never more than `interval_max`. With Celery's default policy
//! (`max_retries=3, interval_start=0, interval_step=0.2, interval_max=1`) a broker that
//! stays unreachable fails the publish after four attempts and about 0.6 s of sleeping.
//!
//! [`RetryPolicy::run`] is the only retry loop for publishing: the client runs its sends
//! through it with the policy of each call, the brokers' own `publish` with
//! [`RetryPolicy::RESULTS`] (the worker's task retries, dead letters and `rpc://` replies).

use super::BrokerError;
use std::future::Future;
use std::time::Duration;

/// When and how often a publish is retried after a connection error (Celery's
/// `retry_policy` dict: `max_retries`, `interval_start`, `interval_step`, `interval_max`).
///
/// ```
/// use celeriac::broker::RetryPolicy;
/// use std::time::Duration;
///
/// // Celery's `task_publish_retry_policy`.
/// let p = RetryPolicy::default();
/// assert_eq!(p.max_retries, Some(3));
/// let waits: Vec<Duration> = (0..4).map(|n| p.interval(n)).collect();
/// assert_eq!(waits, [0, 200, 400, 600].map(Duration::from_millis));
///
/// // Retry for longer, a second apart at most.
/// let patient = RetryPolicy::default().max_retries(Some(30)).interval_max(Duration::from_secs(1));
/// assert_eq!(patient.interval(29), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; `None` retries for as long as it takes (kombu's
    /// `max_retries=None`). `Some(0)` is a single attempt.
    pub max_retries: Option<u32>,
    /// The wait before the first retry.
    pub interval_start: Duration,
    /// How much longer each further wait is.
    pub interval_step: Duration,
    /// The longest wait between two attempts.
    pub interval_max: Duration,
}

impl Default for RetryPolicy {
    /// Celery's `task_publish_retry_policy`: 3 retries, waits of 0, 0.2, 0.4 s (at most 1 s).
    fn default() -> Self {
        RetryPolicy {
            max_retries: Some(3),
            interval_start: Duration::ZERO,
            interval_step: Duration::from_millis(200),
            interval_max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// A single attempt: what `retry=False` means.
    pub const NEVER: RetryPolicy = RetryPolicy {
        max_retries: Some(0),
        interval_start: Duration::ZERO,
        interval_step: Duration::ZERO,
        interval_max: Duration::ZERO,
    };

    /// The policy of Celery's result backends (`BaseBackend.retry_policy`, also the `rpc://`
    /// backend's): 20 retries a second apart. The brokers' own `publish` uses it, so the
    /// worker's task retries, dead letters and `rpc://` replies ride out a broker restart of
    /// about 20 s.
    pub const RESULTS: RetryPolicy = RetryPolicy {
        max_retries: Some(20),
        interval_start: Duration::ZERO,
        interval_step: Duration::from_secs(1),
        interval_max: Duration::from_secs(1),
    };

    /// Set `max_retries` (`None`: retry for as long as it takes).
    pub fn max_retries(mut self, n: Option<u32>) -> Self {
        self.max_retries = n;
        self
    }

    /// Set the wait before the first retry.
    pub fn interval_start(mut self, d: Duration) -> Self {
        self.interval_start = d;
        self
    }

    /// Set how much longer each further wait is.
    pub fn interval_step(mut self, d: Duration) -> Self {
        self.interval_step = d;
        self
    }

    /// Set the longest wait.
    pub fn interval_max(mut self, d: Duration) -> Self {
        self.interval_max = d;
        self
    }

    /// The wait before retry number `retry + 1` (`0`: before the first retry):
    /// `min(interval_start + retry * interval_step, interval_max)`, as kombu's
    /// `retry_over_time` computes it.
    pub fn interval(&self, retry: u32) -> Duration {
        self.interval_step
            .checked_mul(retry)
            .and_then(|d| d.checked_add(self.interval_start))
            .map_or(self.interval_max, |d| d.min(self.interval_max))
    }

    /// The sum of every wait when retries are bounded: roughly how long an unreachable
    /// broker takes to fail a publish, besides the attempts themselves.
    pub fn total_wait(&self) -> Option<Duration> {
        self.max_retries
            .map(|n| (0..n).map(|r| self.interval(r)).sum())
    }

    /// Run `attempt` until it succeeds, fails with an error that is not a connection error,
    /// or the retries are used up.
    ///
    /// Giving up after at least one retry is [`BrokerError::RetriesExhausted`] around the
    /// last error; with no retry allowed ([`RetryPolicy::NEVER`]) the first error is
    /// returned as it is.
    pub async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, BrokerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        let started = tokio::time::Instant::now();
        let mut retries: u32 = 0;
        loop {
            let err = match attempt().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if !err.is_connection_error() {
                return Err(err);
            }
            if self.max_retries.is_some_and(|max| retries >= max) {
                if retries == 0 {
                    return Err(err);
                }
                return Err(BrokerError::RetriesExhausted {
                    retries,
                    elapsed: started.elapsed(),
                    source: Box::new(err),
                });
            }
            let wait = self.interval(retries);
            retries += 1;
            tracing::warn!(
                error = %err,
                retry = retries,
                max_retries = ?self.max_retries,
                retry_in = ?wait,
                "publish failed on the broker connection; reconnecting and retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn dropped() -> BrokerError {
        BrokerError::Redis {
            command: "LPUSH",
            source: ::redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )),
        }
    }

    #[test]
    fn intervals_follow_kombus_retry_over_time() {
        let p = RetryPolicy {
            max_retries: Some(10),
            interval_start: Duration::from_secs(2),
            interval_step: Duration::from_secs(2),
            interval_max: Duration::from_secs(7),
        };
        let waits: Vec<u64> = (0..5).map(|r| p.interval(r).as_secs()).collect();
        assert_eq!(waits, [2, 4, 6, 7, 7]);
        assert_eq!(
            RetryPolicy::default().total_wait(),
            Some(Duration::from_millis(600))
        );
        assert_eq!(
            RetryPolicy::RESULTS.total_wait(),
            Some(Duration::from_secs(19))
        );
        assert_eq!(RetryPolicy::NEVER.total_wait(), Some(Duration::ZERO));
        assert_eq!(RetryPolicy::default().max_retries(None).total_wait(), None);
        // No overflow for absurd retry numbers.
        assert_eq!(
            RetryPolicy::RESULTS.interval(u32::MAX),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn connection_errors_are_retried_until_the_policy_gives_up() {
        // Celery's default policy at a twentieth of the time: waits of 0, 10 and 20 ms.
        let quick = RetryPolicy::default()
            .interval_step(Duration::from_millis(10))
            .interval_max(Duration::from_millis(50));
        let calls = AtomicU32::new(0);
        let err = quick
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(dropped())
            })
            .await
            .unwrap_err();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one attempt and three retries"
        );
        match err {
            BrokerError::RetriesExhausted {
                retries, elapsed, ..
            } => {
                assert_eq!(retries, 3);
                assert!(elapsed >= Duration::from_millis(30), "{elapsed:?}");
            }
            other => panic!("{other}"),
        }

        // Success on the third attempt.
        let calls = AtomicU32::new(0);
        let got = quick
            .run(|| async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(dropped()),
                    _ => Ok(7),
                }
            })
            .await
            .unwrap();
        assert_eq!(got, 7);
    }

    #[tokio::test]
    async fn other_errors_and_no_retries_fail_at_once() {
        let calls = AtomicU32::new(0);
        let err = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(BrokerError::Unroutable {
                    exchange: "x".into(),
                    routing_key: "k".into(),
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::Unroutable { .. }), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let err = RetryPolicy::NEVER
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(dropped())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::Redis { .. }), "unwrapped: {err}");
        assert!(err.is_connection_error());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
