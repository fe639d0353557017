//! Celery's RPC result backend (`rpc://`): results are not stored anywhere, they are sent as
//! messages to the caller's own reply queue.
//!
//! Each state change is published as `celery/backends/rpc.py` publishes it:
//!
//! ```text
//! exchange ""  routing key <the task message's reply_to>
//! properties   content_type application/json, content_encoding utf-8, headers {},
//!              correlation_id <the task message's correlation_id, else the task id>,
//!              delivery_mode 1 (result_persistent is off), priority 0
//! body         {"status", "result", "traceback", "children", "date_done", "task_id"}
//! ```
//!
//! A Python client with `backend='rpc://'` consumes its reply queue and matches replies by
//! correlation id, so `AsyncResult.get()` is pushed, never polled. The messages go through
//! the worker's broker (on RabbitMQ with publisher confirms). A task sent without a
//! `reply_to` has nowhere to report to; like Celery, its outcome is not sent.

use super::{BackendError, BackendOptions};
use crate::broker::AnyBroker;
use crate::protocol::{RawMessage, ResultMeta, Serializer};
use serde_json::{Map, Value};

/// Where the RPC backend sends a task's result: from the task message's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The caller's reply queue (the message's `reply_to` property).
    pub queue: String,
    /// The id the caller matches replies by (the message's `correlation_id`, else the task id).
    pub correlation_id: String,
}

impl ReplyTo {
    /// The destination a task message's properties ask for: `None` without a `reply_to`.
    pub fn from_properties(properties: &Map<String, Value>, task_id: &str) -> Option<ReplyTo> {
        let text = |k: &str| {
            properties
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Some(ReplyTo {
            queue: text("reply_to")?,
            correlation_id: text("correlation_id").unwrap_or_else(|| task_id.to_owned()),
        })
    }
}

/// The `rpc://` backend: publishes results through a broker.
#[derive(Clone)]
pub struct RpcBackend {
    broker: AnyBroker,
    opts: BackendOptions,
}

impl std::fmt::Debug for RpcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcBackend")
            .field("broker", &self.broker.describe())
            .finish_non_exhaustive()
    }
}

impl RpcBackend {
    /// Results go out through `broker` (Celery uses the app's broker connection too).
    pub fn new(broker: AnyBroker, opts: BackendOptions) -> RpcBackend {
        RpcBackend { broker, opts }
    }

    /// The message Celery's RPC backend publishes for `meta`.
    pub fn reply_message(
        &self,
        meta: &ResultMeta,
        to: &ReplyTo,
    ) -> Result<RawMessage, BackendError> {
        let (content_type, content_encoding) = match self.opts.serializer {
            Serializer::Json => ("application/json", "utf-8"),
            Serializer::Msgpack => ("application/x-msgpack", "binary"),
        };
        let mut msg = RawMessage {
            body: meta.encode(self.opts.serializer)?,
            content_type: content_type.into(),
            content_encoding: content_encoding.into(),
            ..RawMessage::default()
        };
        let p = &mut msg.properties;
        p.insert("correlation_id".into(), to.correlation_id.clone().into());
        p.insert("delivery_mode".into(), 1.into());
        p.insert("priority".into(), 0.into());
        Ok(msg)
    }

    /// Send a state change to the caller's reply queue.
    pub async fn store(&self, meta: &ResultMeta, to: &ReplyTo) -> Result<(), BackendError> {
        let msg = self.reply_message(meta, to)?;
        self.broker
            .publish(&msg, "", &to.queue)
            .await
            .map_err(|source| BackendError::Reply {
                task_id: meta.task_id.clone(),
                queue: to.queue.clone(),
                source: Box::new(source),
            })
    }

    /// `rpc://`.
    pub fn describe(&self) -> String {
        "rpc://".into()
    }
}
