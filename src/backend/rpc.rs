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
//!
//! The calling side: every [`RpcBackend`] has its own reply queue ([`RpcBackend::reply_queue`],
//! a uuid4, to be put in the `reply_to` of each task message sent). One consumer, started
//! by [`RpcBackend::listen`] (or the first wait), takes every reply arriving there (no_ack,
//! like Celery) and hands it to the waiters of its correlation id. A reply nobody awaits
//! yet is kept (Celery's `_out_of_band`), so waiting after the result arrived still finds
//! it. Only AMQP brokers carry replies here.

use super::waiters::Waiters;
use super::{BackendError, BackendOptions};
use crate::broker::amqp::reply::ReplyConsumer;
use crate::broker::{AnyBroker, BrokerError};
use crate::protocol::{RawMessage, ResultMeta, Serializer};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The `rpc://` backend: publishes results through a broker, and receives the replies
/// to the tasks sent with its [`RpcBackend::reply_queue`]. Clones share the reply queue.
#[derive(Clone)]
pub struct RpcBackend {
    broker: AnyBroker,
    opts: BackendOptions,
    replies: Arc<Replies>,
}

impl std::fmt::Debug for RpcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcBackend")
            .field("broker", &self.broker.describe())
            .field("reply_queue", &self.replies.queue)
            .finish_non_exhaustive()
    }
}

/// How many results already handed to a waiter are still kept for [`RpcBackend::get`].
const TAKEN_KEPT: usize = 4096;

/// The reply queue and what arrived on it.
struct Replies {
    queue: String,
    state: Arc<ReplyState>,
    /// The consumer, once started; dropping it (with the last clone) stops it.
    consumer: tokio::sync::OnceCell<ReplyConsumer>,
}

#[derive(Default)]
struct ReplyState {
    kept: Mutex<Kept>,
    waiters: Arc<Waiters>,
}

/// The latest state per task id. A ready state stays until a waiter took it, and then
/// while it is among the last [`TAKEN_KEPT`] taken.
#[derive(Default)]
struct Kept {
    latest: HashMap<String, ResultMeta>,
    taken: VecDeque<String>,
    taken_set: HashSet<String>,
}

impl Kept {
    fn mark_taken(&mut self, task_id: &str) {
        if self.taken_set.insert(task_id.to_owned()) {
            self.taken.push_back(task_id.to_owned());
        }
        while self.taken.len() > TAKEN_KEPT {
            if let Some(old) = self.taken.pop_front() {
                self.taken_set.remove(&old);
                self.latest.remove(&old);
            }
        }
    }
}

impl ReplyState {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reply arrived: keep it, and wake the waiters of its task if it is ready.
    fn on_reply(&self, msg: &RawMessage) {
        let meta = match ResultMeta::from_slice(&msg.body) {
            Ok(meta) => meta,
            Err(error) => {
                tracing::warn!(%error, "cannot read a reply on the rpc:// reply queue; dropped");
                return;
            }
        };
        // Celery matches replies by correlation id, falling back to the body's task id.
        let task_id = msg
            .properties
            .get("correlation_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(&meta.task_id)
            .to_owned();
        let mut kept = self.kept();
        // A ready state is final: a late STARTED or RETRY does not hide it.
        if kept.latest.get(&task_id).is_some_and(ResultMeta::is_ready) && !meta.is_ready() {
            return;
        }
        if meta.is_ready() {
            // Under the lock, so a waiter either finds it kept or is woken.
            self.waiters.wake(&task_id, &meta);
        }
        kept.latest.insert(task_id, meta);
    }
}

impl RpcBackend {
    /// Results go out through `broker` (Celery uses the app's broker connection too); replies
    /// to the tasks this side sends come back on a new reply queue.
    pub fn new(broker: AnyBroker, opts: BackendOptions) -> RpcBackend {
        RpcBackend {
            broker,
            opts,
            replies: Arc::new(Replies {
                queue: uuid::Uuid::new_v4().to_string(),
                state: Arc::default(),
                consumer: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The queue replies come back on: the `reply_to` of every task message sent by this
    /// side (Celery's `app.thread_oid`).
    pub fn reply_queue(&self) -> &str {
        &self.replies.queue
    }

    /// Declare the reply queue and start consuming it, once; later calls return at once.
    /// Call it before sending the first task, as Celery declares the queue before each
    /// publish: a reply sent to a queue that does not exist yet is lost.
    pub async fn listen(&self) -> Result<(), BackendError> {
        let AnyBroker::Amqp(broker) = &self.broker else {
            return Err(BackendError::Unsupported {
                url: "rpc://".into(),
                reason: format!(
                    "rpc:// replies can be awaited only through an AMQP broker (amqp://, \
                     amqps://), not {}; use a redis:// result backend instead",
                    self.broker.describe()
                ),
            });
        };
        let replies = &self.replies;
        replies
            .consumer
            .get_or_try_init(|| async {
                let state = replies.state.clone();
                broker
                    .consume_replies(&replies.queue, self.opts.result_expires, move |msg| {
                        state.on_reply(&msg)
                    })
                    .await
                    .map_err(|source| BackendError::Listen {
                        queue: replies.queue.clone(),
                        source: Box::new(source),
                    })
            })
            .await
            .map(drop)
    }

    /// Make sure the reply queue exists before a task whose reply goes there is sent:
    /// declared on the broker's publishing connection, once per connection (Celery's
    /// `RPCBackend.on_task_call`). The queue is `auto_delete`: while the reply consumer is
    /// disconnected RabbitMQ deletes it, and a reply sent before the consumer is back
    /// would be dropped. A connection error is returned as it is, for the caller's retry
    /// policy. Nothing to do on brokers other than AMQP.
    pub async fn declare_reply_queue(&self) -> Result<(), BrokerError> {
        match &self.broker {
            AnyBroker::Amqp(broker) => {
                broker
                    .declare_rpc_reply_queue(&self.replies.queue, self.opts.result_expires)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Wait until a ready state of the task arrives on the reply queue, or was kept from
    /// before; `Ok(None)` when `timeout` passes first.
    pub async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultMeta>, BackendError> {
        self.listen().await?;
        let state = &self.replies.state;
        let mut waiter = {
            let mut kept = state.kept();
            if let Some(meta) = kept.latest.get(task_id).filter(|m| m.is_ready()) {
                let meta = meta.clone();
                kept.mark_taken(task_id);
                return Ok(Some(meta));
            }
            state.waiters.join(task_id, None)
        };
        let Ok(meta) = tokio::time::timeout(timeout, waiter.ready()).await else {
            return Ok(None);
        };
        state.kept().mark_taken(task_id);
        Ok(Some(meta))
    }

    /// The latest state of the task that arrived on the reply queue, `None` when none did
    /// (PENDING to Celery).
    pub fn get(&self, task_id: &str) -> Option<ResultMeta> {
        self.replies.state.kept().latest.get(task_id).cloned()
    }

    /// Drop what is kept of a task's replies (Celery's `forget` of the RPC backend).
    pub fn forget(&self, task_id: &str) {
        let mut kept = self.replies.state.kept();
        kept.latest.remove(task_id);
        if kept.taken_set.remove(task_id) {
            kept.taken.retain(|t| t != task_id);
        }
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
