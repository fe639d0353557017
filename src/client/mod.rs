//! Calling tasks: send a task message (to a Python or a Rust worker) and await its result.
//!
//! The client uses the same codec ([`crate::protocol::encode()`]) and the same brokers and
//! backends as the worker, and writes what Celery 5.7's `send_task` / `apply_async` writes:
//! the same headers, properties and routing (checked against captures of real Celery).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use celeriac::canvas::Signature;
//! use celeriac::client::{Client, ClientConfig, SendOptions};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let client = Client::connect(ClientConfig {
//!     broker_url: "redis://127.0.0.1:6379/0".into(),
//!     result_backend: Some("redis://127.0.0.1:6379/0".into()),
//!     ..ClientConfig::default()
//! })
//! .await?;
//! // Typed: the signature says what the result is read as.
//! let add = Signature::new("pytasks.add").arg(2).arg(3).returns::<i64>();
//! let sum = client.send(&add.with_options(SendOptions::new().queue("py"))).await?;
//! assert_eq!(sum.get(Duration::from_secs(10)).await?, 5);
//!
//! // Untyped: JSON values in, a JSON value out.
//! let result = client
//!     .send_task("pytasks.echo", vec![json!({"a": [1]})], Default::default(), &SendOptions::new().queue("py"))
//!     .await?;
//! assert_eq!(result.get(Duration::from_secs(10)).await?, json!({"a": [1]}));
//! # Ok(()) }
//! ```
//!
//! Results are pushed: the Redis backend shares one subscription among every awaited
//! result; with `rpc://` one consumer on the client's reply queue serves them all. As
//! Celery's client does, a send subscribes to the result's channel as the message goes out
//! (unless the result is ignored), so `get` then waits without a round trip of its own: one
//! call is the publish, a SUBSCRIBE alongside it and one read of the key once subscribed
//! (for a result stored before the subscription took hold); unsubscribing is batched.
//!
//! For a Rust task, the call stub `#[task]` writes beside the function checks the arguments
//! at compile time and types the result: `client.send(&add::new(2, 3))` (see
//! [`Client::send`] and [`crate::canvas::Signature`]).
//!
//! Workers are remote-controlled (ping, revoke, any command) through [`Client::control`];
//! [`AsyncResult::revoke`] revokes one task.
//!
//! # Lost connections
//!
//! A send that fails on the broker connection is retried as Celery's `apply_async(retry=...,
//! retry_policy=...)` retries it ([`RetryPolicy`]; per call [`SendOptions::retry`] and
//! [`SendOptions::retry_policy`], client-wide [`ClientConfig::publish_retry`] and
//! [`ClientConfig::publish_retry_policy`], Celery's defaults: 3 retries within about
//! 0.6 s). Each retry reconnects first; a broker that stays unreachable ends in
//! [`BrokerError::RetriesExhausted`]. An error that is not about the connection (nothing
//! bound to route the message, a refused declaration) fails at once, as does any error with
//! `retry(false)`. Awaited results survive a lost connection too: the Redis backend's
//! subscriber and the `rpc://` reply consumer reconnect and catch up, and a send after a
//! reconnection declares the `rpc://` reply queue again first (RabbitMQ deletes that
//! `auto_delete` queue while its consumer is away), as Celery's `on_task_call` does.
//!
//! # Sharing one client
//!
//! [`Client`] is cheap to clone and every clone shares one publishing connection: on
//! RabbitMQ one confirm-mode channel (many publishes await their confirms at once), on Redis
//! one multiplexed connection (commands are pipelined). There is no pool of publishing
//! connections (Celery's `broker_pool_limit`), because one measured faster than several:
//! 2,000 concurrent `send_task`s from clones of one client (debug build, a busy 2-core
//! machine, local servers) took 0.48–0.57 s on RabbitMQ with one channel against
//! 0.70–0.82 s with a round-robin pool of 2, 4 or 10 channels on as many connections, and
//! 1.0–1.15 s on Redis with one connection against 1.0–1.44 s with 4 or 10. One connection
//! is not what limits sending (the test `client_reconnect` prints its own numbers), so a
//! pool would only add connections.

mod control;
mod options;
mod result;

pub use control::{
    BroadcastOptions, Control, ControlError, ControlSettings, DEFAULT_NAMESPACE, NodeReply,
    TERM_SIGNAME,
};
pub use options::SendOptions;
pub use result::{AsyncResult, ResultError, TaskFailure};

use crate::backend::{AnyBackend, BackendError, BackendOptions};
use crate::broker::{AnyBroker, BrokerError, BrokerOptions, RetryPolicy};
use crate::canvas::Signature;
use crate::protocol::{self, EncodeError, Serializer, TaskMessage, kombu};
use chrono::Utc;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// How a client connects. The defaults are Celery's.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker URL: `redis://…`, `amqp://…`, `memory://…` (see [`crate::broker`]).
    pub broker_url: String,
    /// Result backend URL, or `None` for no results ([`AsyncResult::get`] then fails).
    pub result_backend: Option<String>,
    /// The queue tasks go to when the options name none (`task_default_queue`).
    pub default_queue: String,
    /// The body serializer unless the options choose one (`task_serializer`).
    pub serializer: Serializer,
    /// Broker options (RabbitMQ queue type and priorities, TLS CA file, ...).
    pub broker_options: BrokerOptions,
    /// Retry a publish that fails on the broker connection (`task_publish_retry`, default
    /// `true`); [`SendOptions::retry`] overrides it per call.
    pub publish_retry: bool,
    /// How (`task_publish_retry_policy`, default [`RetryPolicy::default`]: 3 retries within
    /// about 0.6 s); [`SendOptions::retry_policy`] overrides it per call.
    pub publish_retry_policy: RetryPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            broker_url: "redis://127.0.0.1:6379/0".into(),
            result_backend: None,
            default_queue: "celery".into(),
            serializer: Serializer::Json,
            broker_options: BrokerOptions::default(),
            publish_retry: true,
            publish_retry_policy: RetryPolicy::default(),
        }
    }
}

/// Why a task could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or publishing failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The result backend could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// An argument of a [`Signature`] could not be serialized.
    #[error("an argument of task {task} cannot be serialized: {source}")]
    Arguments {
        /// The task's name.
        task: String,
        /// What serde reported.
        #[source]
        source: Arc<serde_json::Error>,
    },
}

/// A connected client: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    broker: AnyBroker,
    backend: AnyBackend,
    config: ClientConfig,
    /// Celery's `app.thread_oid`: the `reply_to` of every message this client sends.
    oid: String,
    /// Celery's `origin` header: `gen<pid>@<host>`.
    origin: String,
    /// Queues declared on the broker by this client (Celery's `maybe_declare` cache).
    declared: Mutex<HashSet<String>>,
}

impl Client {
    /// Connect the broker and the result backend.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let broker = AnyBroker::connect(&config.broker_url, config.broker_options.clone()).await?;
        let backend = AnyBackend::connect_with_broker(
            config.result_backend.as_deref(),
            BackendOptions::default(),
            &broker,
        )
        .await?;
        // Celery's `reply_to` is the app's oid, which the RPC backend's reply queue is named
        // after; with rpc:// the queue is declared and consumed before anything is sent, so
        // no reply can reach a queue that does not exist yet.
        let oid = match &backend {
            AnyBackend::Rpc(rpc) => {
                rpc.listen().await?;
                rpc.reply_queue().to_owned()
            }
            _ => uuid::Uuid::new_v4().to_string(),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                broker,
                backend,
                config,
                oid,
                origin: format!("gen{}@{}", std::process::id(), crate::worker::host_name()),
                declared: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The broker this client publishes to.
    pub fn broker(&self) -> &AnyBroker {
        &self.inner.broker
    }

    /// The result backend this client reads.
    pub fn backend(&self) -> &AnyBackend {
        &self.inner.backend
    }

    /// The task message `send_task` would publish (Celery's `amqp.as_task_v2`), and the
    /// exchange and routing key it goes to.
    pub fn build_message(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        opts: &SendOptions,
    ) -> (TaskMessage, String, String) {
        let defaults = Defaults {
            origin: &self.inner.origin,
            reply_to: Some(&self.inner.oid),
            queue: &self.inner.config.default_queue,
            serializer: self.inner.config.serializer,
        };
        compose_message(name, args, kwargs, opts, &defaults)
    }

    /// Send task `name` with positional `args` and keyword `kwargs`, as Celery's
    /// `app.send_task(name, args, kwargs, **options)` does. Returns at once with the
    /// task's [`AsyncResult`]; on RabbitMQ, once the broker has confirmed the message.
    ///
    /// A send that fails on the broker connection is retried, reconnecting, as the call's
    /// retry policy says (see [`SendOptions::retry`]); giving up is
    /// [`BrokerError::RetriesExhausted`]. Other errors fail at once.
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        opts: &SendOptions,
    ) -> Result<AsyncResult, ClientError> {
        let (msg, exchange, routing_key) = self.build_message(name, args, kwargs, opts);
        let raw = protocol::encode(&msg)?;
        // Like Celery's `on_task_call`, listen for the result before the message goes out
        // (unless it is ignored): the subscription travels alongside the message.
        let expected = if opts.ignore_result == Some(true) {
            None
        } else {
            self.inner.backend.expect(&msg.headers.id)
        };
        let queue = self.queue_of(opts);
        let (raw, exchange, routing_key, queue) = (&raw, &exchange, &routing_key, &queue);
        self.publish_policy(opts)
            .run(move || async move {
                // Like Celery, declare the queue before the first publish to it, so a
                // message is never sent to a queue that does not exist yet (RabbitMQ would
                // drop it).
                self.declare_once(queue).await?;
                if let AnyBackend::Rpc(rpc) = &self.inner.backend {
                    // Celery's `on_task_call`: the reply queue exists before the task is
                    // sent, also after a reconnection deleted it.
                    rpc.declare_reply_queue().await?;
                }
                self.inner
                    .broker
                    .publish_once(raw, exchange, routing_key)
                    .await
            })
            .await?;
        Ok(self.result(&msg.headers.id).expected(expected))
    }

    /// The retry policy of one send: the call's, else the client's (Celery's
    /// `retry` / `retry_policy` over `task_publish_retry` / `task_publish_retry_policy`).
    fn publish_policy(&self, opts: &SendOptions) -> RetryPolicy {
        let config = &self.inner.config;
        if opts.retry.unwrap_or(config.publish_retry) {
            opts.retry_policy.unwrap_or(config.publish_retry_policy)
        } else {
            RetryPolicy::NEVER
        }
    }

    fn queue_of(&self, opts: &SendOptions) -> String {
        opts.queue
            .clone()
            .unwrap_or_else(|| self.inner.config.default_queue.clone())
    }

    async fn declare_once(&self, queue: &str) -> Result<(), BrokerError> {
        let known = self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(queue);
        if !known {
            self.inner.broker.declare_queue(queue).await?;
            self.inner
                .declared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(queue.to_owned());
        }
        Ok(())
    }

    /// The result of the task with this id (sent by anyone), read as a JSON value; see
    /// [`AsyncResult::typed`] to read it as another type.
    pub fn result(&self, id: &str) -> AsyncResult {
        AsyncResult::new(id.to_owned(), self.inner.backend.clone(), self.control())
    }

    /// Remote control of the workers on this client's broker (Celery's `app.control`).
    pub fn control(&self) -> Control {
        Control::new(self.inner.broker.clone())
    }

    /// Send a [`Signature`] (Celery's `sig.apply_async()`), for example the one a `#[task]`
    /// call stub builds; the result is read as the signature's type.
    ///
    /// ```no_run
    /// # async fn demo(client: celeriac::client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use celeriac::client::SendOptions;
    /// use std::time::Duration;
    ///
    /// #[celeriac::task(name = "math.add")]
    /// async fn add(x: i64, y: i64) -> i64 {
    ///     x + y
    /// }
    ///
    /// // `add::new` is the stub `#[task]` wrote: its parameters are the task's.
    /// let sig = add::new(2, 3).with_options(SendOptions::new().queue("rust"));
    /// let sum: i64 = client.send(&sig).await?.get(Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send<R>(&self, sig: &Signature<R>) -> Result<AsyncResult<R>, ClientError> {
        if let Some(source) = sig.invalid_argument() {
            return Err(ClientError::Arguments {
                task: sig.name().to_owned(),
                source: source.clone(),
            });
        }
        let sent = self
            .send_task(
                sig.name(),
                sig.args().to_vec(),
                sig.kwargs().clone(),
                sig.options(),
            )
            .await?;
        Ok(sent.typed())
    }
}

/// What a message takes from its sender when the call's options do not say.
pub(crate) struct Defaults<'a> {
    /// The `origin` header (`gen<pid>@<host>`).
    pub origin: &'a str,
    /// The `reply_to` property (Celery's `app.thread_oid`), if the sender has one.
    pub reply_to: Option<&'a str>,
    /// The queue when the options name none (`task_default_queue`).
    pub queue: &'a str,
    /// The body serializer when the options choose none.
    pub serializer: crate::protocol::Serializer,
}

/// The task message Celery's `amqp.as_task_v2` builds for `send_task(name, args, kwargs,
/// **opts)`, and the exchange and routing key it goes to.
pub(crate) fn compose_message(
    name: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    opts: &SendOptions,
    defaults: &Defaults<'_>,
) -> (TaskMessage, String, String) {
    let id = opts
        .task_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut msg = TaskMessage::new(name, id.clone(), args, kwargs);
    // send_task is given a list: Celery's saferepr of a list, `[2, 3]`.
    let argsrepr = kombu::saferepr(&Value::Array(msg.args.clone()), Some(kombu::REPR_MAXSIZE));
    let h = &mut msg.headers;
    h.argsrepr = Some(argsrepr);
    h.shadow = opts.shadow.clone();
    h.eta = opts.eta.or_else(|| opts.countdown.map(|c| Utc::now() + c));
    h.expires = opts.expires;
    h.timelimit = (opts.time_limit, opts.soft_time_limit);
    h.origin = Some(defaults.origin.to_owned());
    // send_task passes ignore_result through as given (None by default).
    h.ignore_result = opts.ignore_result;
    for (k, v) in &opts.headers {
        h.extra.insert(k.clone(), v.clone());
    }
    msg.serializer = opts.serializer.unwrap_or(defaults.serializer);
    let p = &mut msg.properties;
    p.insert("correlation_id".into(), Value::String(id));
    if let Some(reply_to) = defaults.reply_to {
        p.insert("reply_to".into(), Value::String(reply_to.to_owned()));
    }
    p.insert("delivery_mode".into(), Value::from(2));
    p.insert("priority".into(), Value::from(opts.priority.unwrap_or(0)));
    if let Some(expires) = opts.expires {
        // Celery also gives the message a broker TTL: milliseconds left, 0 when past.
        let ms = (expires - Utc::now()).num_milliseconds().max(0);
        p.insert("expiration".into(), Value::String(ms.to_string()));
    }
    let (exchange, routing_key) = route(opts, defaults.queue);
    (msg, exchange, routing_key)
}

/// Celery's routing (`send_task_message`): without both an exchange and a routing key, the
/// queue is reached through the default exchange by its name.
pub(crate) fn route(opts: &SendOptions, default_queue: &str) -> (String, String) {
    match (&opts.exchange, &opts.routing_key) {
        (Some(e), Some(k)) if !e.is_empty() && !k.is_empty() => (e.clone(), k.clone()),
        _ => (
            String::new(),
            opts.queue
                .clone()
                .unwrap_or_else(|| default_queue.to_owned()),
        ),
    }
}
