//! `apply_async`'s options, as a builder.

use crate::broker::RetryPolicy;
use crate::protocol::Serializer;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::time::Duration;

/// Options for one call, named as in Celery's `apply_async` / `send_task`. Everything left
/// unset takes Celery's default.
///
/// ```
/// use celeriac::client::SendOptions;
/// use std::time::Duration;
/// let opts = SendOptions::new().queue("py").countdown(Duration::from_secs(5)).priority(3);
/// assert_eq!(opts.queue.as_deref(), Some("py"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendOptions {
    /// The task id (a new uuid4 when unset).
    pub task_id: Option<String>,
    /// Run no earlier than this long from now (written as `eta`).
    pub countdown: Option<Duration>,
    /// Run no earlier than this time (wins over `countdown`).
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after this time: the worker stores REVOKED instead.
    pub expires: Option<DateTime<Utc>>,
    /// Message priority, 0–9 (`properties.priority`).
    pub priority: Option<u8>,
    /// The queue (through the default exchange, routing key = queue name).
    pub queue: Option<String>,
    /// The exchange to publish to; used only together with `routing_key` (otherwise the
    /// queue is reached through the default exchange `""`, as Celery routes).
    pub exchange: Option<String>,
    /// The routing key; used only together with `exchange`.
    pub routing_key: Option<String>,
    /// Extra message headers, kept beside Celery's.
    pub headers: Map<String, Value>,
    /// The body serializer (default: the client's).
    pub serializer: Option<Serializer>,
    /// Ask the worker not to store the result (`ignore_result`).
    pub ignore_result: Option<bool>,
    /// The name shown in logs instead of the task's (`shadow`).
    pub shadow: Option<String>,
    /// Hard time limit in seconds (`timelimit[0]`).
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds (`timelimit[1]`).
    pub soft_time_limit: Option<f64>,
    /// Retry the publish when the broker connection fails (`retry`; default: the client's
    /// [`ClientConfig::publish_retry`](super::ClientConfig::publish_retry), Celery's
    /// `task_publish_retry`). `false`: the first error fails the send.
    pub retry: Option<bool>,
    /// How to retry (`retry_policy`; default: the client's
    /// [`ClientConfig::publish_retry_policy`](super::ClientConfig::publish_retry_policy)).
    /// Unlike Celery, which merges the keys given into the default policy, this replaces the
    /// client's policy whole: start from it (or [`RetryPolicy::default`]) and change fields.
    pub retry_policy: Option<RetryPolicy>,
}

impl SendOptions {
    /// Celery's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the task id.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }
    /// Run no earlier than `d` from now.
    pub fn countdown(mut self, d: Duration) -> Self {
        self.countdown = Some(d);
        self
    }
    /// Run no earlier than `at`.
    pub fn eta(mut self, at: DateTime<Utc>) -> Self {
        self.eta = Some(at);
        self
    }
    /// Do not run after `at`.
    pub fn expires(mut self, at: DateTime<Utc>) -> Self {
        self.expires = Some(at);
        self
    }
    /// Message priority, 0–9.
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = Some(p);
        self
    }
    /// The queue to send to.
    pub fn queue(mut self, q: impl Into<String>) -> Self {
        self.queue = Some(q.into());
        self
    }
    /// The exchange to publish to.
    pub fn exchange(mut self, e: impl Into<String>) -> Self {
        self.exchange = Some(e.into());
        self
    }
    /// The routing key.
    pub fn routing_key(mut self, k: impl Into<String>) -> Self {
        self.routing_key = Some(k.into());
        self
    }
    /// Add a message header.
    pub fn header(mut self, name: impl Into<String>, value: Value) -> Self {
        self.headers.insert(name.into(), value);
        self
    }
    /// The body serializer.
    pub fn serializer(mut self, s: Serializer) -> Self {
        self.serializer = Some(s);
        self
    }
    /// Ask the worker not to store the result.
    pub fn ignore_result(mut self, yes: bool) -> Self {
        self.ignore_result = Some(yes);
        self
    }
    /// The name shown in logs instead of the task's.
    pub fn shadow(mut self, name: impl Into<String>) -> Self {
        self.shadow = Some(name.into());
        self
    }
    /// Retry the publish on connection errors, or not.
    pub fn retry(mut self, yes: bool) -> Self {
        self.retry = Some(yes);
        self
    }
    /// How to retry the publish.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = Some(policy);
        self
    }
    /// Hard and soft time limits in seconds.
    pub fn time_limits(mut self, hard: Option<f64>, soft: Option<f64>) -> Self {
        self.time_limit = hard;
        self.soft_time_limit = soft;
        self
    }
}
