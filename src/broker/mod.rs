//! Moving messages: the transports. Brokers know kombu's storage layouts, not Celery's
//! message format (that is [`crate::protocol`]).
//!
//! * [`AnyBroker`] publishes [`RawMessage`]s and opens [`Consumer`]s.
//! * A [`Consumer`] yields [`Delivery`]s; each delivery owns its acknowledgement
//!   ([`Delivery::ack`], [`Delivery::requeue`], [`Delivery::restore`], [`Delivery::dead_letter`])
//!   and one prefetch slot, freed when it is settled or dropped.
//! * Priorities follow kombu's Redis transport on every broker: steps `[0, 3, 6, 9]`, and a
//!   lower number is served first (PROTOCOL.md section 5.3).

pub mod amqp;
pub mod memory;
pub mod redis;
pub mod retry;
pub mod url;

use crate::protocol::RawMessage;
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

pub use amqp::{AmqpBroker, AmqpConsumer, AmqpReplyQueue};
pub use memory::{MemoryBroker, MemoryConsumer};
pub use redis::{RedisBroker, RedisConsumer, RedisReplyQueue};
pub use retry::RetryPolicy;
pub use url::{AmqpUrl, BrokerUrl, UrlError};

/// Where undecodable messages are kept: a Redis list, a durable RabbitMQ queue, or the
/// memory broker's store.
pub const DEAD_LETTER_KEY: &str = "celeriac.dead_letter";

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker URL could not be used.
    #[error("invalid broker URL: {0}")]
    Url(#[from] UrlError),
    /// `rediss://` needs TLS support, which this build of the redis client lacks.
    #[error("TLS (rediss://) is not available: the redis client was built without a TLS feature")]
    TlsUnavailable,
    /// Connecting to the broker failed.
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect {
        /// The broker URL, password masked.
        url: String,
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// A Redis command failed.
    #[error("redis {command} failed: {source}")]
    Redis {
        /// What was being done.
        command: &'static str,
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis answered something kombu's layout does not allow.
    #[error("unexpected reply to {command}: {detail}")]
    UnexpectedReply {
        /// What was being done.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Publishing to a named exchange found no bound queue (kombu drops such messages
    /// with an UndeliverableWarning; Celeriac reports it instead).
    #[error("no queue is bound to exchange {exchange:?} with routing key {routing_key:?}")]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key published with.
        routing_key: String,
    },
    /// Connecting to RabbitMQ failed.
    #[error("cannot connect to the broker at {url}: {source}")]
    AmqpConnect {
        /// The broker URL, password masked.
        url: String,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation failed.
    #[error("AMQP {op} failed: {source}")]
    Amqp {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// Declaring a queue failed, typically because it exists with other arguments (a
    /// different `x-max-priority` or queue type).
    #[error("cannot declare queue {queue:?}: {source}")]
    Declare {
        /// The queue.
        queue: String,
        /// RabbitMQ's refusal.
        #[source]
        source: lapin::Error,
    },
    /// RabbitMQ did not confirm a publish (a `basic.nack`): the message may not be stored.
    #[error(
        "the broker did not confirm the message published to exchange {exchange:?} with routing key {routing_key:?}"
    )]
    NotConfirmed {
        /// The exchange published to.
        exchange: String,
        /// The routing key published with.
        routing_key: String,
    },
    /// RabbitMQ cancelled the consumer (e.g. its queue was deleted).
    #[error("the broker cancelled the consumer (was the queue deleted?)")]
    ConsumerCancelled,
    /// A name or property is longer than AMQP's 255-byte short strings allow.
    #[error("{what} is {len} bytes long; AMQP allows at most 255")]
    TooLong {
        /// Which value.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The CA certificate file for `amqps://` could not be read.
    #[error("cannot read the CA certificate file {path:?}: {source}")]
    TlsCaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `consume` was given no queue.
    #[error("consume needs at least one queue")]
    NoQueues,
    /// The consumer has stopped fetching.
    #[error("the consumer is closed")]
    Closed,
    /// A publish kept failing on the broker connection until its [`RetryPolicy`] gave up.
    #[error(
        "the broker stayed unreachable: gave up after {retries} retries in {elapsed:.1?}: {source}"
    )]
    RetriesExhausted {
        /// Retries made after the first attempt.
        retries: u32,
        /// Time from the first attempt to giving up.
        elapsed: Duration,
        /// The last attempt's error.
        #[source]
        source: Box<BrokerError>,
    },
}

impl BrokerError {
    /// True when the error comes from the connection (refused, dropped, timed out): the
    /// operation may succeed after reconnecting, unlike a malformed request.
    pub fn is_connection_error(&self) -> bool {
        match self {
            BrokerError::Connect { .. } | BrokerError::AmqpConnect { .. } => true,
            BrokerError::ConsumerCancelled => true,
            BrokerError::Amqp { source, .. } | BrokerError::Declare { source, .. } => {
                amqp_connection_error(source)
            }
            BrokerError::RetriesExhausted { source, .. } => source.is_connection_error(),
            BrokerError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
            }
            _ => false,
        }
    }
}

/// Whether a lapin error means the connection (or its channel) is gone, so that the same
/// operation may succeed after reconnecting. A refusal by RabbitMQ (a soft error such as
/// `NOT_FOUND` or `PRECONDITION_FAILED`) is not.
fn amqp_connection_error(err: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match err.kind() {
        K::IOError(_) | K::MissingHeartbeatError | K::InvalidConnectionState(_) => true,
        K::InvalidChannelState(..) | K::InvalidChannel(_) => true,
        K::ProtocolError(_) => err.is_amqp_hard_error(),
        _ => false,
    }
}

/// The RabbitMQ queue type to declare (Celery's `task_default_queue_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// A classic queue (RabbitMQ's default).
    #[default]
    Classic,
    /// A quorum queue (`x-queue-type: quorum`): replicated across a cluster's nodes.
    Quorum,
}

/// How an exchange routes (kombu's exchange types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routing key equals the binding key.
    #[default]
    Direct,
    /// Routing key matches the binding pattern (`*` one word, `#` any words).
    Topic,
    /// Every bound queue gets every message.
    Fanout,
}

impl ExchangeType {
    /// kombu's name for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
        }
    }
}

impl std::str::FromStr for ExchangeType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(ExchangeType::Direct),
            "topic" => Ok(ExchangeType::Topic),
            "fanout" => Ok(ExchangeType::Fanout),
            other => Err(format!(
                "unknown exchange type {other:?} (expected direct, topic or fanout)"
            )),
        }
    }
}

/// A consumed queue bound to an exchange of the application's choosing, as Celery's
/// `task_queues = [Queue(name, Exchange(exchange, type=...), routing_key=...)]` declares it.
/// Queues without a binding get Celery's default: the direct exchange of the same name,
/// routing key = queue name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBinding {
    /// The queue.
    pub queue: String,
    /// The exchange it is bound to (declared durable).
    pub exchange: String,
    /// How the exchange routes.
    pub exchange_type: ExchangeType,
    /// The binding key (a pattern for topic exchanges).
    pub routing_key: String,
}

impl std::str::FromStr for QueueBinding {
    type Err = String;
    /// `queue=exchange:type:routing_key`, e.g. `images=media:topic:media.#`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("invalid binding {s:?} (expected queue=exchange:type:routing_key)");
        let (queue, rest) = s.split_once('=').ok_or_else(usage)?;
        let mut parts = rest.splitn(3, ':');
        let (Some(exchange), Some(kind), Some(routing_key)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(usage());
        };
        if queue.is_empty() || exchange.is_empty() {
            return Err(usage());
        }
        Ok(QueueBinding {
            queue: queue.to_owned(),
            exchange: exchange.to_owned(),
            exchange_type: kind.parse()?,
            routing_key: routing_key.to_owned(),
        })
    }
}

/// Options for connecting a broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Redis: messages unacked for longer are restored to their queue.
    pub visibility_timeout: Duration,
    /// Redis: how often to look for messages to restore.
    pub restore_interval: Duration,
    /// RabbitMQ: the type of the queues declared for consuming.
    pub queue_type: QueueType,
    /// RabbitMQ: declare queues with `x-max-priority` (Celery's `task_queue_max_priority`).
    pub max_priority: Option<u8>,
    /// `amqps://`: a PEM file of CA certificates to trust besides the system's.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Consumed queues bound to exchanges of their own (RabbitMQ declares and routes them;
    /// Redis records them in kombu's binding sets, routing as direct).
    pub bindings: Vec<QueueBinding>,
}

impl BrokerOptions {
    /// How `queue` is bound: its [`QueueBinding`]s, or Celery's default (the direct exchange
    /// of the queue's name, routing key = queue name).
    pub fn bindings_for(&self, queue: &str) -> Vec<QueueBinding> {
        let custom: Vec<QueueBinding> = self
            .bindings
            .iter()
            .filter(|b| b.queue == queue)
            .cloned()
            .collect();
        if !custom.is_empty() {
            return custom;
        }
        vec![QueueBinding {
            queue: queue.to_owned(),
            exchange: queue.to_owned(),
            exchange_type: ExchangeType::Direct,
            routing_key: queue.to_owned(),
        }]
    }
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            visibility_timeout: Duration::from_secs(3600),
            restore_interval: Duration::from_secs(10),
            queue_type: QueueType::Classic,
            max_priority: None,
            tls_ca_file: None,
            bindings: Vec::new(),
        }
    }
}

/// One of the brokers Celeriac speaks.
#[derive(Clone)]
pub enum AnyBroker {
    /// In-process.
    Memory(memory::MemoryBroker),
    /// kombu's Redis transport.
    Redis(redis::RedisBroker),
    /// RabbitMQ.
    Amqp(amqp::AmqpBroker),
}

impl AnyBroker {
    /// Connect to the broker named by `url` (`redis://`, `rediss://`, `amqp://`,
    /// `amqps://`, `memory://`).
    pub async fn connect(url: &str, opts: BrokerOptions) -> Result<AnyBroker, BrokerError> {
        match BrokerUrl::parse(url)? {
            BrokerUrl::Memory { name } => Ok(AnyBroker::Memory(MemoryBroker::named(&name))),
            BrokerUrl::Redis(r) => Ok(AnyBroker::Redis(RedisBroker::connect(r, opts).await?)),
            BrokerUrl::Amqp(a) => Ok(AnyBroker::Amqp(AmqpBroker::connect(a, opts).await?)),
        }
    }

    /// Publish exactly as kombu does. Exchange `""` (the default exchange): the routing key
    /// is the queue. A named exchange: the queues bound with an equal routing key (Redis:
    /// `_kombu.binding.<exchange>`); none bound is [`BrokerError::Unroutable`].
    ///
    /// A lost connection is retried as [`RetryPolicy::RESULTS`] says (what the worker
    /// publishes: task retries, dead letters, `rpc://` replies); see
    /// [`AnyBroker::publish_with`] for another policy.
    pub async fn publish(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        self.publish_with(msg, exchange, routing_key, &RetryPolicy::RESULTS)
            .await
    }

    /// [`AnyBroker::publish`], retrying connection errors as `policy` says
    /// ([`RetryPolicy::NEVER`]: one attempt).
    pub async fn publish_with(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
        policy: &RetryPolicy,
    ) -> Result<(), BrokerError> {
        policy
            .run(|| self.publish_once(msg, exchange, routing_key))
            .await
    }

    /// One publish attempt, reconnecting first if the connection is known to be lost; a
    /// connection error is returned, not retried (for callers that run their own
    /// [`RetryPolicy::run`] around more than the publish).
    pub async fn publish_once(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.publish(msg, exchange, routing_key),
            AnyBroker::Redis(b) => b.publish_once(msg, exchange, routing_key).await,
            AnyBroker::Amqp(b) => b.publish_once(msg, exchange, routing_key).await,
        }
    }

    /// Start consuming `queues`; at most `prefetch` deliveries are held un-settled at once
    /// (`0` means no limit, as kombu's `prefetch_count=0`; on RabbitMQ the limit is per
    /// queue, as `basic.qos` with `global=false` sets it). Like a Celery worker, this
    /// declares each queue and binds it to the direct exchange of the same name.
    pub async fn consume(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> Result<Consumer, BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.consume(queues, prefetch).map(Consumer::Memory),
            AnyBroker::Redis(b) => b.consume(queues, prefetch).await.map(Consumer::Redis),
            AnyBroker::Amqp(b) => b.consume(queues, prefetch).await.map(Consumer::Amqp),
        }
    }

    /// Declare `queue` as a Celery worker or client does before using it (RabbitMQ: the
    /// durable queue and its direct exchange or configured bindings; Redis and memory: the
    /// binding of the exchange of the same name). Idempotent.
    pub async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        match self {
            AnyBroker::Memory(b) => {
                b.bind(queue, queue, queue);
                Ok(())
            }
            AnyBroker::Redis(b) => b.declare_queue(queue).await,
            AnyBroker::Amqp(b) => b.declare_queue(queue).await,
        }
    }

    /// Remove every message waiting in `queue` (Celery's `purge`); returns how many.
    pub async fn purge(&self, queue: &str) -> Result<usize, BrokerError> {
        match self {
            AnyBroker::Memory(b) => Ok(b.purge(queue)),
            AnyBroker::Redis(b) => b.purge(queue).await,
            AnyBroker::Amqp(b) => b.purge(queue).await,
        }
    }

    /// Redis: how long an unacknowledged message stays reserved before it is restored to
    /// its queue (kombu's `visibility_timeout`). `None` for brokers without one.
    pub fn visibility_timeout(&self) -> Option<Duration> {
        match self {
            AnyBroker::Redis(b) => Some(b.visibility_timeout()),
            AnyBroker::Memory(_) | AnyBroker::Amqp(_) => None,
        }
    }

    /// Banner text for the broker, password masked.
    pub fn describe(&self) -> String {
        match self {
            AnyBroker::Memory(b) => b.describe(),
            AnyBroker::Redis(b) => b.describe(),
            AnyBroker::Amqp(b) => b.describe(),
        }
    }
}

/// A stream of deliveries from some queues.
pub enum Consumer {
    /// In-process.
    Memory(memory::MemoryConsumer),
    /// Redis.
    Redis(redis::RedisConsumer),
    /// RabbitMQ.
    Amqp(amqp::AmqpConsumer),
}

impl Consumer {
    /// The next delivery. Cancel-safe: dropping the future (e.g. in `tokio::select!`) loses
    /// no message. An error is reported once per outage; calling `next` again keeps going
    /// (the fetcher retries), except [`BrokerError::Closed`].
    pub async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match self {
            Consumer::Memory(c) => c.next().await,
            Consumer::Redis(c) => c.next().await,
            Consumer::Amqp(c) => c.next().await,
        }
    }

    /// Stop fetching and hand back every message fetched but not yet given out (Redis:
    /// restored to the front of its queue, as kombu's `restore_unacked` does). Deliveries
    /// already given out stay valid and can be settled later.
    pub async fn close(self) -> Result<(), BrokerError> {
        match self {
            Consumer::Memory(c) => c.close().await,
            Consumer::Redis(c) => c.close().await,
            Consumer::Amqp(c) => c.close().await,
        }
    }
}

/// How a delivery is settled: one per transport.
pub(crate) enum Acker {
    Memory(memory::MemoryAcker),
    Redis(redis::RedisAcker),
    Amqp(amqp::AmqpAcker),
}

/// One message taken from a queue. It owns its acknowledgement and one prefetch slot.
///
/// Dropping a delivery without settling it loses nothing: on Redis it stays in kombu's
/// `unacked` hash and the visibility-timeout restore brings it back; the memory broker puts
/// it back at the front of its queue at once. Either way a warning is logged.
pub struct Delivery {
    /// The message.
    pub message: RawMessage,
    tag: String,
    acker: Option<Acker>,
    /// What makes it count against the prefetch limit: a permit of the consumer's window
    /// (memory, Redis), or RabbitMQ's own count (`None` here).
    _permit: Option<OwnedSemaphorePermit>,
    /// RabbitMQ: the window was widened by one for this delivery; narrowed again on drop.
    _widened: Option<amqp::PrefetchLoan>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("tag", &self.tag)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(
        message: RawMessage,
        tag: String,
        acker: Acker,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Delivery {
            message,
            tag,
            acker: Some(acker),
            _permit: permit,
            _widened: None,
        }
    }

    /// Stop counting this delivery against the consumer's prefetch limit until it is
    /// settled, so a message the worker holds (waiting for its eta) does not hold back
    /// others. Celery raises the channel's prefetch by one per such message
    /// (`qos.increment_eventually`); on RabbitMQ this does the same (`basic.qos` with the
    /// count raised by one, lowered again when the delivery is dropped), on Redis and
    /// memory the delivery's prefetch slot is freed. Calling it again does nothing.
    pub fn release_prefetch(&mut self) {
        if self._permit.take().is_some() {
            return;
        }
        if self._widened.is_none()
            && let Some(Acker::Amqp(a)) = &self.acker
        {
            self._widened = a.widen_prefetch();
        }
    }

    /// The broker's delivery tag (Redis: the uuid4 `properties.delivery_tag` of the envelope).
    pub fn delivery_tag(&self) -> &str {
        &self.tag
    }

    /// Acknowledge: the message is done (Redis: `MULTI; ZREM unacked_index; HDEL unacked; EXEC`).
    pub async fn ack(mut self) -> Result<(), BrokerError> {
        match self.acker.take() {
            Some(Acker::Memory(a)) => {
                a.ack(&self.tag);
                Ok(())
            }
            Some(Acker::Redis(a)) => a.ack(&self.tag).await,
            Some(Acker::Amqp(a)) => a.ack().await,
            None => Ok(()),
        }
    }

    /// Reject with requeue (kombu's `reject(requeue=True)`): put the message at the back of
    /// its queue (Redis: `LPUSH`) with `headers.redelivered` and
    /// `properties.delivery_info.redelivered` set, the same delivery tag. RabbitMQ:
    /// `basic.reject(requeue=true)`, which puts it back near its old place.
    pub async fn requeue(mut self) -> Result<(), BrokerError> {
        match self.acker.take() {
            Some(Acker::Memory(a)) => {
                a.restore(&self.tag, true);
                Ok(())
            }
            Some(Acker::Redis(a)) => a.restore(&self.tag, true).await,
            Some(Acker::Amqp(a)) => a.requeue().await,
            None => Ok(()),
        }
    }

    /// Put the message back at the front of its queue (Redis: `RPUSH`), as a warm shutdown
    /// does with messages it will not run; redelivered flags set, same delivery tag.
    /// RabbitMQ: `basic.reject(requeue=true)`.
    pub async fn restore(mut self) -> Result<(), BrokerError> {
        match self.acker.take() {
            Some(Acker::Memory(a)) => {
                a.restore(&self.tag, false);
                Ok(())
            }
            Some(Acker::Redis(a)) => a.restore(&self.tag, false).await,
            Some(Acker::Amqp(a)) => a.requeue().await,
            None => Ok(()),
        }
    }

    /// Keep a message that cannot be processed (e.g. undecodable) instead of dropping it,
    /// then settle it.
    ///
    /// Redis: in one transaction, `LPUSH celeriac.dead_letter` a JSON object
    /// `{"reason": <reason>, "queue": <queue name>, "received_at": <unix seconds, float>,
    /// "envelope": <the envelope exactly as it was popped, as a JSON string>}`, and remove the
    /// message from `unacked`/`unacked_index`. Memory: appended to
    /// [`MemoryBroker::dead_letters`] with the reason.
    pub async fn dead_letter(mut self, reason: &str) -> Result<(), BrokerError> {
        match self.acker.take() {
            Some(Acker::Memory(a)) => {
                a.dead_letter(&self.tag, reason);
                Ok(())
            }
            Some(Acker::Redis(a)) => a.dead_letter(&self.tag, reason).await,
            Some(Acker::Amqp(a)) => a.dead_letter(&self.message, reason).await,
            None => Ok(()),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        dropped_unsettled(&self.tag, self.acker.take());
    }
}

/// What dropping an unsettled delivery does: a warning, and the memory broker's restore.
fn dropped_unsettled(tag: &str, acker: Option<Acker>) {
    match acker {
        None => {}
        Some(Acker::Amqp(_)) => tracing::warn!(
            delivery_tag = %tag,
            "delivery dropped without ack: RabbitMQ redelivers it when the channel closes"
        ),
        Some(Acker::Redis(_)) => tracing::warn!(
            delivery_tag = %tag,
            "delivery dropped without ack: it stays in `unacked` until the visibility timeout restores it"
        ),
        Some(Acker::Memory(a)) => {
            tracing::warn!(delivery_tag = %tag, "delivery dropped without ack: restored to its queue");
            a.restore(tag, false);
        }
    }
}

impl Delivery {
    /// Set the delivery aside while its message waits (for an eta, a rate limit or a free
    /// concurrency slot): the message is handed to the caller, to be kept in whatever form
    /// it likes, and the [`ParkedDelivery`] keeps only what settles it (its acker, delivery
    /// tag and prefetch accounting). [`ParkedDelivery::unpark`] puts the two back together.
    pub fn park(mut self) -> (RawMessage, ParkedDelivery) {
        let message = std::mem::take(&mut self.message);
        let mut acker = self.acker.take();
        if let Some(Acker::Redis(redis)) = &mut acker {
            redis.park();
        }
        let parked = ParkedDelivery {
            tag: ParkedTag::new(std::mem::take(&mut self.tag)),
            acker,
            _permit: self._permit.take(),
            _widened: self._widened.take(),
        };
        (message, parked)
    }
}

/// A [`Delivery`] without its message: what a worker keeps for each message it holds, so
/// that holding many costs little. Dropped without being unparked and settled, it behaves
/// as a dropped [`Delivery`] does (nothing is lost; a warning is logged).
pub struct ParkedDelivery {
    tag: ParkedTag,
    acker: Option<Acker>,
    _permit: Option<OwnedSemaphorePermit>,
    _widened: Option<amqp::PrefetchLoan>,
}

impl ParkedDelivery {
    /// The delivery again, with `message` (the one [`Delivery::park`] handed out).
    pub fn unpark(mut self, message: RawMessage) -> Delivery {
        Delivery {
            message,
            tag: std::mem::replace(&mut self.tag, ParkedTag::Other(Box::default())).into_string(),
            acker: self.acker.take(),
            _permit: self._permit.take(),
            _widened: self._widened.take(),
        }
    }

    /// The broker's delivery tag.
    pub fn delivery_tag(&self) -> String {
        self.tag.to_string()
    }
}

/// A parked delivery's tag, kept small: Redis tags are UUIDs (16 bytes, not a 36-byte
/// string on the heap).
enum ParkedTag {
    Uuid(uuid::Uuid),
    Other(Box<str>),
}

impl ParkedTag {
    fn new(tag: String) -> ParkedTag {
        match canonical_uuid(&tag) {
            Some(uuid) => ParkedTag::Uuid(uuid),
            None => ParkedTag::Other(tag.into_boxed_str()),
        }
    }

    fn into_string(self) -> String {
        match self {
            ParkedTag::Uuid(uuid) => uuid.hyphenated().to_string(),
            ParkedTag::Other(tag) => tag.into_string(),
        }
    }
}

impl std::fmt::Display for ParkedTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParkedTag::Uuid(uuid) => uuid.hyphenated().fmt(f),
            ParkedTag::Other(tag) => f.write_str(tag),
        }
    }
}

/// `s` as a UUID when it is written exactly as [`uuid::Uuid`] writes one back (lowercase,
/// hyphenated), so that nothing changes on the way back to a string.
pub(crate) fn canonical_uuid(s: &str) -> Option<uuid::Uuid> {
    if s.len() != uuid::fmt::Hyphenated::LENGTH {
        return None;
    }
    let uuid = uuid::Uuid::try_parse(s).ok()?;
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    (uuid.hyphenated().encode_lower(&mut buf) == s).then_some(uuid)
}

impl std::fmt::Debug for ParkedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedDelivery")
            .field("tag", &self.tag.to_string())
            .finish_non_exhaustive()
    }
}

impl Drop for ParkedDelivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            dropped_unsettled(&self.tag.to_string(), Some(acker));
        }
    }
}

/// kombu's priority steps (`priority_steps`).
pub(crate) const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// kombu's `_get_message_priority`: `int(properties['priority'])` clamped to 0..=9, 0 when
/// missing or not a number.
pub(crate) fn message_priority(properties: &Map<String, Value>) -> u8 {
    let p = match properties.get("priority") {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64)),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(Value::Bool(b)) => Some(i64::from(*b)),
        _ => None,
    };
    p.map_or(0, |p| p.clamp(0, 9) as u8)
}

/// Index into [`PRIORITY_STEPS`] for a priority (kombu's `priority(n)`: the greatest step <= n).
pub(crate) fn priority_index(priority: u8) -> usize {
    PRIORITY_STEPS
        .iter()
        .rposition(|s| *s <= priority)
        .unwrap_or(0)
}

/// kombu's `_queue_cycle.rotate(last_used)`: the queue that delivered moves to the end.
pub(crate) fn rotate(cycle: &mut Vec<String>, used: &str) {
    if let Some(i) = cycle.iter().position(|q| q == used) {
        let q = cycle.remove(i);
        cycle.push(q);
    }
}

/// Set the redelivered flags kombu's `_do_restore_message` sets. As in kombu, a message
/// without headers gets neither flag (its KeyError skips both).
pub(crate) fn mark_redelivered(envelope: &mut Value) {
    let Some(obj) = envelope.as_object_mut() else {
        return;
    };
    match obj.get_mut("headers").and_then(Value::as_object_mut) {
        Some(h) => {
            h.insert("redelivered".into(), Value::Bool(true));
        }
        None => return,
    }
    if let Some(di) = obj
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .and_then(|p| p.get_mut("delivery_info"))
        .and_then(Value::as_object_mut)
    {
        di.insert("redelivered".into(), Value::Bool(true));
    }
}

/// Bytes as a string for a JSON document: valid UTF-8 kept, every byte of an invalid
/// sequence taken as its Latin-1 character (the Lua take script does the same).
pub(crate) fn lossless_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        out.extend(chunk.invalid().iter().map(|b| char::from(*b)));
    }
    out
}

/// A temporary queue that collects replies: kombu's pidbox reply queue
/// (`<oid>.reply.celery.pidbox`, bound to the direct exchange `reply.celery.pidbox` with
/// routing key `<oid>`), declared as Celery 5.7's remote control client declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyQueueSpec {
    /// The direct exchange replies are published to (declared non-durable).
    pub exchange: String,
    /// The queue.
    pub queue: String,
    /// Its binding key: what repliers use as routing key.
    pub routing_key: String,
    /// Delete the queue after this long unused (`x-expires`; Celery's `control_queue_expires`).
    pub expires: Option<Duration>,
    /// Drop replies older than this (`x-message-ttl`; Celery's `control_queue_ttl`).
    pub message_ttl: Option<Duration>,
}

/// A declared, consumed [`ReplyQueueSpec`]. [`ReplyQueue::delete`] removes it (kombu's
/// `after_reply_message_received`).
pub enum ReplyQueue {
    /// The memory broker has no remote-control peers: nothing ever arrives.
    Memory,
    /// A Redis list, bound in `_kombu.binding.<exchange>`.
    Redis(redis::RedisReplyQueue),
    /// An exclusive, auto-deleted RabbitMQ queue on a connection of its own.
    Amqp(Box<amqp::AmqpReplyQueue>),
}

impl ReplyQueue {
    /// The next message, or `None` when none arrives within `timeout`. A malformed message
    /// is logged and skipped.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<RawMessage>, BrokerError> {
        match self {
            ReplyQueue::Memory => {
                tokio::time::sleep(timeout).await;
                Ok(None)
            }
            ReplyQueue::Redis(q) => q.next(timeout).await,
            ReplyQueue::Amqp(q) => q.next(timeout).await,
        }
    }

    /// Stop consuming and delete the queue (Redis: its binding and lists; RabbitMQ: cancel
    /// and close, which deletes the exclusive, auto-delete queue).
    pub async fn delete(self) -> Result<(), BrokerError> {
        match self {
            ReplyQueue::Memory => Ok(()),
            ReplyQueue::Redis(q) => q.delete().await,
            ReplyQueue::Amqp(q) => q.delete().await,
        }
    }
}

impl AnyBroker {
    /// Publish `msg` to the fanout exchange `exchange`, as kombu does for a broadcast
    /// (Celery's remote control, exchange `celery.pidbox`): every consumer bound or
    /// subscribed gets it, and none at all is not an error (the message is just dropped).
    ///
    /// Redis: `PUBLISH` of kombu's envelope on the channel `/<db>.<exchange>` (kombu's
    /// `keyprefix_fanout`; `/<routing_key>` appended when the routing key is not empty, as
    /// `fanout_patterns` does). RabbitMQ: the exchange declared as kombu's pidbox declares it
    /// (fanout, not durable, not auto-deleted), then a publish without `mandatory`, confirmed.
    /// Memory: dropped (no remote-control consumers exist there).
    pub async fn publish_fanout(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        match self {
            AnyBroker::Memory(_) => Ok(()),
            AnyBroker::Redis(b) => b.publish_fanout(msg, exchange, routing_key).await,
            AnyBroker::Amqp(b) => b.publish_fanout(msg, exchange, routing_key).await,
        }
    }

    /// Declare a reply queue (its exchange and binding too) and start consuming it. Declare
    /// it before publishing the request, so no reply can come before the queue exists.
    pub async fn declare_reply_queue(
        &self,
        spec: &ReplyQueueSpec,
    ) -> Result<ReplyQueue, BrokerError> {
        match self {
            AnyBroker::Memory(_) => Ok(ReplyQueue::Memory),
            AnyBroker::Redis(b) => b.declare_reply_queue(spec).await.map(ReplyQueue::Redis),
            AnyBroker::Amqp(b) => b
                .declare_reply_queue(spec)
                .await
                .map(|q| ReplyQueue::Amqp(Box::new(q))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bindings_parse_from_the_command_line_form() {
        let b: QueueBinding = "images=media:topic:media.#".parse().unwrap();
        assert_eq!(
            b,
            QueueBinding {
                queue: "images".into(),
                exchange: "media".into(),
                exchange_type: ExchangeType::Topic,
                routing_key: "media.#".into(),
            }
        );
        let b: QueueBinding = "q=ex:direct:a:b".parse().unwrap();
        assert_eq!(b.routing_key, "a:b", "the routing key may hold colons");
        assert!(
            "q=ex:weird:k"
                .parse::<QueueBinding>()
                .unwrap_err()
                .contains("weird")
        );
        assert!("q=ex".parse::<QueueBinding>().is_err());
        assert!("=ex:direct:k".parse::<QueueBinding>().is_err());
    }

    #[test]
    fn priorities_follow_kombu() {
        let p = |v: Value| message_priority(json!({ "priority": v }).as_object().unwrap());
        assert_eq!(p(json!(5)), 5);
        assert_eq!(p(json!(12)), 9);
        assert_eq!(p(json!(-3)), 0);
        assert_eq!(p(json!("7")), 7);
        assert_eq!(p(json!(null)), 0);
        assert_eq!(message_priority(&Map::new()), 0);
        let steps: Vec<usize> = (0..=9).map(priority_index).collect();
        assert_eq!(steps, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
    }

    #[test]
    fn rotation_moves_the_used_queue_last() {
        let mut c = vec!["a".to_string(), "b".into(), "c".into()];
        rotate(&mut c, "a");
        assert_eq!(c, ["b", "c", "a"]);
        rotate(&mut c, "zzz");
        assert_eq!(c, ["b", "c", "a"]);
    }

    #[test]
    fn redelivered_flags_are_appended() {
        let mut v =
            json!({"headers": {"a": 1}, "properties": {"delivery_info": {"exchange": ""}, "x": 1}});
        mark_redelivered(&mut v);
        assert_eq!(
            crate::protocol::kombu::to_python_json(&v),
            r#"{"headers": {"a": 1, "redelivered": true}, "properties": {"delivery_info": {"exchange": "", "redelivered": true}, "x": 1}}"#
        );
        let mut v = json!({"properties": {"delivery_info": {}}});
        mark_redelivered(&mut v);
        assert_eq!(v, json!({"properties": {"delivery_info": {}}}));
    }

    #[test]
    fn only_canonical_uuids_are_kept_as_uuids() {
        let id = "0e4f0b8c-0000-4000-8000-00000000000a";
        assert!(canonical_uuid(id).is_some());
        for other in [
            "0E4F0B8C-0000-4000-8000-00000000000A",
            "0e4f0b8c000040008000000000000000",
            "{0e4f0b8c-0000-4000-8000-00000000000a}",
            "1",
            "",
        ] {
            assert!(canonical_uuid(other).is_none(), "{other}");
        }
        for tag in [id, "0E4F0B8C-0000-4000-8000-00000000000A", "42"] {
            assert_eq!(ParkedTag::new(tag.to_string()).into_string(), tag);
            assert_eq!(ParkedTag::new(tag.to_string()).to_string(), tag);
        }
    }

    #[test]
    fn lossless_text_maps_invalid_bytes_to_latin1() {
        assert_eq!(lossless_text("é".as_bytes()), "é");
        assert_eq!(
            lossless_text(&[b'a', 0xff, 0xe2, 0x82, b'b']),
            "a\u{ff}\u{e2}\u{82}b"
        );
    }
}
