//! RabbitMQ (AMQP 0-9-1) through lapin, declared and settled the way Celery 5.7's worker
//! does it.
//!
//! * **Topology.** For each queue `Q` consumed: a durable direct exchange `Q`, a durable
//!   queue `Q` bound to it with routing key `Q` (Celery's default for `celery` and for
//!   every queue it creates from `-Q`), or the exchanges and keys of its
//!   [`QueueBinding`](super::QueueBinding)s (Celery's `task_queues`). Queue arguments come from [`BrokerOptions`]:
//!   `x-max-priority` and `x-queue-type: quorum`. They must match what the queue already
//!   has; RabbitMQ refuses a mismatch and the error says so.
//! * **Consuming.** One connection and one channel per consumer, explicit acks. The
//!   prefetch limit is `basic.qos(prefetch, global=true)`, shared by the consumer's queues,
//!   as Celery 5.7 sets it on RabbitMQ (`qos_global`); for quorum queues, which refuse
//!   global QoS, it is per queue and static, as in Celery. A message held for its eta
//!   widens the window by one ([`Delivery::release_prefetch`](super::Delivery::release_prefetch)).
//!   Early or late ack is the worker's choice; `requeue` and `restore` are
//!   `basic.reject(requeue=true)`. Settlements go through the channel's ack tracker
//!   (`acks.rs`): a run of acks from the lowest outstanding tag is one
//!   `basic.ack(multiple=true)`, and one in flight holds the others back by at most a few
//!   milliseconds.
//! * **Publishing** (retries, results, dead letters) goes through one confirm-mode channel
//!   on its own connection, `mandatory` set: a message is published only once RabbitMQ
//!   confirms it; a nack or an unroutable return is an error, never a silent loss.
//! * **Connection loss.** The consumer reports the loss once, then reconnects with backoff,
//!   re-declares and consumes again; RabbitMQ redelivers what was unacknowledged.
//!   Publishing reopens its channel on the next attempt after a loss; how often a publish
//!   is retried is a [`RetryPolicy`] ([`AmqpBroker::publish`]: [`RetryPolicy::RESULTS`]).
//! * **Dead letters.** An undecodable message is republished unchanged to the durable queue
//!   [`DEAD_LETTER_KEY`] with its reason in the headers, confirmed, and only then acked.

mod acks;
mod fields;
mod prefetch;

pub use acks::AckStats;
use acks::{AckTracker, Counters, Settle};

pub(crate) use prefetch::PrefetchLoan;
use prefetch::PrefetchWindow;
pub mod reply;

use super::url::AmqpUrl;
use super::{
    Acker, BrokerError, BrokerOptions, DEAD_LETTER_KEY, Delivery, ExchangeType, QueueType,
    RetryPolicy,
};
use crate::protocol::RawMessage;
use fields::short;
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

/// The largest frame asked for (RabbitMQ's default is 128 KiB).
const FRAME_MAX: u32 = 16 * 1024;

/// The longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn amqp_err(op: &'static str) -> impl FnOnce(lapin::Error) -> BrokerError {
    move |source| BrokerError::Amqp { op, source }
}

/// A RabbitMQ broker: cheap to clone, safe to share.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    url: AmqpUrl,
    opts: BrokerOptions,
    tls: OwnedTLSConfig,
    /// The confirm-mode publishing channel, opened on first use and after a loss, and its
    /// epoch (a number of its own: how many were opened before it).
    publisher: Mutex<Option<(Channel, u64)>>,
    /// Publishing channels opened so far.
    publisher_epochs: AtomicU64,
    /// `rpc://` reply queues declared on the publishing connection: queue → its epoch.
    reply_queues: std::sync::Mutex<HashMap<String, u64>>,
}

impl AmqpBroker {
    /// Connect (the publishing connection is opened here, so a wrong address, password or
    /// vhost fails at once).
    pub async fn connect(url: AmqpUrl, opts: BrokerOptions) -> Result<AmqpBroker, BrokerError> {
        let tls = match &opts.tls_ca_file {
            None => OwnedTLSConfig::default(),
            Some(path) => OwnedTLSConfig {
                identity: None,
                cert_chain: Some(std::fs::read_to_string(path).map_err(|source| {
                    BrokerError::TlsCaFile {
                        path: path.clone(),
                        source,
                    }
                })?),
            },
        };
        let broker = AmqpBroker {
            inner: Arc::new(Inner {
                url,
                opts,
                tls,
                publisher: Mutex::new(None),
                publisher_epochs: AtomicU64::new(0),
                reply_queues: std::sync::Mutex::default(),
            }),
        };
        broker.publisher().await?;
        Ok(broker)
    }

    /// `amqp://user:**@host:port/vhost`.
    pub fn describe(&self) -> String {
        self.inner.url.masked()
    }

    async fn open(&self, role: &str) -> Result<Connection, BrokerError> {
        let u = &self.inner.url;
        let uri = AMQPUri {
            scheme: if u.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: u.username.clone(),
                    password: u.password.clone(),
                },
                host: u.host.clone(),
                port: u.port,
            },
            vhost: u.vhost.clone(),
            query: AMQPQueryString {
                // kombu's default heartbeat is off for the worker's connection; a heartbeat
                // lets a dead TCP peer be noticed without waiting for the kernel.
                heartbeat: Some(60),
                connection_timeout: Some(10_000),
                // lapin sizes each connection's two I/O buffers as 32 frames of frame_max:
                // RabbitMQ's 128 KiB would make that 8 MiB per connection; larger messages
                // are simply split into more frames.
                frame_max: Some(FRAME_MAX),
                ..AMQPQueryString::default()
            },
        };
        let props = ConnectionProperties::default().with_connection_name(
            format!("celeriac {role} ({})", crate::worker::host_name()).into(),
        );
        lapin::ConnectionBuilder::new()
            .map_err(amqp_err("start the AMQP runtime"))?
            .with_uri(uri)
            .with_properties(props)
            .with_tls_config(self.inner.tls.clone())
            .connect()
            .await
            .map_err(|source| BrokerError::AmqpConnect {
                url: self.describe(),
                source,
            })
    }

    /// A new connection and a channel on it; every AMQP task of the broker (publishing,
    /// consuming, replies, inspection) has its own.
    async fn open_channel(&self, role: &str) -> Result<(Connection, Channel), BrokerError> {
        let conn = self.open(role).await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(amqp_err("channel.open"))?;
        Ok((conn, ch))
    }

    /// The publishing channel, (re)opened when there is none or it was lost.
    async fn publisher(&self) -> Result<Channel, BrokerError> {
        self.publisher_and_epoch().await.map(|(ch, _)| ch)
    }

    /// The publishing channel and its epoch, which changes whenever it is reopened.
    async fn publisher_and_epoch(&self) -> Result<(Channel, u64), BrokerError> {
        let mut slot = self.inner.publisher.lock().await;
        if let Some((ch, epoch)) = slot.as_ref().filter(|(c, _)| c.status().connected()) {
            return Ok((ch.clone(), *epoch));
        }
        *slot = None;
        let epoch = self.inner.publisher_epochs.fetch_add(1, Ordering::Relaxed);
        let (_conn, ch) = self.open_channel("publisher").await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_err("confirm.select"))?;
        // The channel keeps its connection open; the connection handle itself may go.
        *slot = Some((ch.clone(), epoch));
        Ok((ch, epoch))
    }

    /// Declare the `rpc://` reply queue `queue` (as [`AmqpBroker::consume_replies`] does) on
    /// the publishing connection, once per connection: kombu's `maybe_declare`, which
    /// Celery's `RPCBackend.on_task_call` runs before every task it sends. The reply queue is
    /// `auto_delete`, so RabbitMQ deletes it while the reply consumer is disconnected; a task
    /// sent after a reconnection, before the consumer is back, would have its reply dropped.
    pub async fn declare_rpc_reply_queue(
        &self,
        queue: &str,
        expires: Option<Duration>,
    ) -> Result<(), BrokerError> {
        let (ch, epoch) = self.publisher_and_epoch().await?;
        let known = |q: &HashMap<String, u64>| q.get(queue) == Some(&epoch);
        if known(
            &self
                .inner
                .reply_queues
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        ) {
            return Ok(());
        }
        reply::declare(&ch, queue, expires).await?;
        self.inner
            .reply_queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_owned(), epoch);
        Ok(())
    }

    /// Publish and wait for RabbitMQ's confirm. The default exchange `""` routes to the
    /// queue named by the routing key; a named exchange routes through its bindings.
    /// Nothing bound to take the message is [`BrokerError::Unroutable`]; a lost connection
    /// is retried (reconnecting) as [`RetryPolicy::RESULTS`] says.
    pub async fn publish(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        RetryPolicy::RESULTS
            .run(|| self.publish_once(msg, exchange, routing_key))
            .await
    }

    /// One publish attempt on the publishing channel (reopened first when it was lost),
    /// waiting for RabbitMQ's confirm. A connection error is returned, not retried.
    pub async fn publish_once(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let props = fields::properties(msg)?;
        let exchange_name = short(exchange, "exchange name")?;
        let key = short(routing_key, "routing key")?;
        let ch = self.publisher().await?;
        let confirm = ch
            .basic_publish(
                exchange_name,
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &msg.body,
                props,
            )
            .await
            .map_err(amqp_err("basic.publish"))?;
        match confirm.await.map_err(amqp_err("publisher confirm"))? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(BrokerError::Unroutable {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => {
                Err(BrokerError::NotConfirmed {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                })
            }
        }
    }

    /// Declare queue `name` as Celery's worker does: the durable queue with the configured
    /// arguments, bound to the exchanges of its [`QueueBinding`](super::QueueBinding)s, or by default to a durable
    /// direct exchange of the same name with routing key `name`.
    async fn declare(&self, ch: &Channel, name: &str) -> Result<(), BrokerError> {
        self.declare_queue_with(ch, name, self.queue_arguments())
            .await?;
        for b in self.inner.opts.bindings_for(name) {
            let kind = match b.exchange_type {
                ExchangeType::Direct => ExchangeKind::Direct,
                ExchangeType::Topic => ExchangeKind::Topic,
                ExchangeType::Fanout => ExchangeKind::Fanout,
            };
            ch.exchange_declare(
                short(&b.exchange, "exchange name")?,
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err("exchange.declare"))?;
            ch.queue_bind(
                short(name, "queue name")?,
                short(&b.exchange, "exchange name")?,
                short(&b.routing_key, "routing key")?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err("queue.bind"))?;
        }
        Ok(())
    }

    async fn declare_queue_with(
        &self,
        ch: &Channel,
        name: &str,
        arguments: FieldTable,
    ) -> Result<(), BrokerError> {
        ch.queue_declare(
            short(name, "queue name")?,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(drop)
        .map_err(|source| BrokerError::Declare {
            queue: name.to_owned(),
            source,
        })
    }

    /// Declare `queue` (and its exchange and binding) as consuming it would, on the
    /// publishing channel: what a client does before its first publish to a queue.
    pub async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let ch = self.publisher().await?;
        self.declare(&ch, queue).await
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(p) = self.inner.opts.max_priority {
            args.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(p)));
        }
        if self.inner.opts.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
        }
        args
    }

    /// Remove every ready message from `queue` (`queue.purge`); returns how many there
    /// were. A queue that does not exist is an error.
    pub async fn purge(&self, queue: &str) -> Result<usize, BrokerError> {
        let (conn, ch) = self.open_channel("purge").await?;
        let n = ch
            .queue_purge(
                short(queue, "queue name")?,
                lapin::options::QueuePurgeOptions::default(),
            )
            .await
            .map_err(amqp_err("queue.purge"))?;
        let _ = conn.close(200, "done".into()).await;
        Ok(n as usize)
    }

    /// Declare the `rpc://` reply queue `queue` as Celery does and pass every message that
    /// arrives there to `on_reply`, until the returned consumer is dropped ([`reply`]).
    pub async fn consume_replies(
        &self,
        queue: &str,
        expires: Option<Duration>,
        on_reply: impl Fn(RawMessage) + Send + Sync + 'static,
    ) -> Result<reply::ReplyConsumer, BrokerError> {
        reply::consume(self, queue, expires, on_reply).await
    }

    /// Messages ready in `queue` (a passive declare; not counting unacknowledged ones).
    pub async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        let (conn, ch) = self.open_channel("inspect").await?;
        let q = ch
            .queue_declare(
                short(queue, "queue name")?,
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| BrokerError::Declare {
                queue: queue.to_owned(),
                source,
            })?;
        let _ = conn.close(200, "done".into()).await;
        Ok(q.message_count())
    }

    /// Start consuming `queues` with at most `prefetch` unacknowledged deliveries in all
    /// (quorum queues: per queue; `0`: no limit). The first connection and the declarations happen here, so their
    /// errors are returned at once; later losses are reported by [`AmqpConsumer::next`].
    pub async fn consume(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> Result<AmqpConsumer, BrokerError> {
        if queues.is_empty() {
            return Err(BrokerError::NoQueues);
        }
        // Celery's `qos_global`: global on classic queues, per consumer (and static) on quorum
        // queues, which do not support global QoS.
        let global = self.inner.opts.queue_type != QueueType::Quorum;
        let window = PrefetchWindow::new(u16::try_from(prefetch).unwrap_or(u16::MAX), global);
        let counters = Arc::new(Counters::default());
        let session = Session::open(self, queues, &window, &counters).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let fetcher = tokio::spawn(fetch(
            self.clone(),
            queues.to_vec(),
            window,
            session,
            tx,
            counters.clone(),
        ));
        Ok(AmqpConsumer {
            rx,
            fetcher,
            counters,
        })
    }
}

/// A duration as kombu writes a queue argument in milliseconds (`int(seconds * 1000)`),
/// typed as py-amqp types a Python int.
fn millis_argument(d: Duration) -> AMQPValue {
    let ms = d.as_millis();
    match i32::try_from(ms) {
        Ok(v) => AMQPValue::LongInt(v),
        Err(_) => AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
    }
}

/// The arguments of a pidbox reply queue: `x-expires`, `x-message-ttl`.
fn reply_queue_arguments(spec: &super::ReplyQueueSpec) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(e) = spec.expires {
        args.insert("x-expires".into(), millis_argument(e));
    }
    if let Some(t) = spec.message_ttl {
        args.insert("x-message-ttl".into(), millis_argument(t));
    }
    args
}

impl AmqpBroker {
    /// Declare `exchange` as kombu's pidbox does (fanout, not durable, not auto-deleted) and
    /// publish `msg` to it without `mandatory`, on a connection of its own, waiting for the
    /// confirm (see [`AnyBroker::publish_fanout`](super::AnyBroker::publish_fanout)).
    pub async fn publish_fanout(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let props = fields::properties(msg)?;
        let exchange_name = short(exchange, "exchange name")?;
        let key = short(routing_key, "routing key")?;
        let (conn, ch) = self.open_channel("control").await?;
        let published = async {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(amqp_err("confirm.select"))?;
            ch.exchange_declare(
                exchange_name.clone(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err("exchange.declare"))?;
            let confirm = ch
                .basic_publish(
                    exchange_name,
                    key,
                    BasicPublishOptions::default(),
                    &msg.body,
                    props,
                )
                .await
                .map_err(amqp_err("basic.publish"))?
                .await
                .map_err(amqp_err("publisher confirm"))?;
            match confirm {
                Confirmation::Nack(_) => Err(BrokerError::NotConfirmed {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                }),
                _ => Ok(()),
            }
        }
        .await;
        let _ = conn.close(200, "done".into()).await;
        published
    }

    /// Declare a reply queue as Celery 5.7's remote control client does, on a connection of
    /// its own, and consume it (`no_ack`): the direct exchange (not durable), the queue
    /// (exclusive, auto-deleted, not durable, `x-expires` and `x-message-ttl`), the binding.
    pub async fn declare_reply_queue(
        &self,
        spec: &super::ReplyQueueSpec,
    ) -> Result<AmqpReplyQueue, BrokerError> {
        let exchange = short(&spec.exchange, "exchange name")?;
        let queue = short(&spec.queue, "queue name")?;
        let key = short(&spec.routing_key, "routing key")?;
        let (conn, ch) = self.open_channel("control replies").await?;
        let declared = async {
            ch.exchange_declare(
                exchange.clone(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err("exchange.declare"))?;
            ch.queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                reply_queue_arguments(spec),
            )
            .await
            .map_err(|source| BrokerError::Declare {
                queue: spec.queue.clone(),
                source,
            })?;
            ch.queue_bind(
                queue.clone(),
                exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err("queue.bind"))?;
            ch.basic_consume(
                queue,
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err("basic.consume"))
        }
        .await;
        match declared {
            Ok(consumer) => Ok(AmqpReplyQueue {
                conn,
                channel: ch,
                consumer,
            }),
            Err(e) => {
                let _ = conn.close(200, "done".into()).await;
                Err(e)
            }
        }
    }
}

/// A consumed pidbox reply queue on RabbitMQ, with its own connection (an exclusive queue
/// lives as long as the connection that declared it).
pub struct AmqpReplyQueue {
    conn: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl AmqpReplyQueue {
    /// The next message, or `None` after `timeout` without one.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<RawMessage>, BrokerError> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(BrokerError::ConsumerCancelled),
            Ok(Some(Err(source))) => Err(BrokerError::Amqp {
                op: "basic.deliver",
                source,
            }),
            Ok(Some(Ok(d))) => Ok(Some(fields::raw_message(
                d.data,
                d.properties,
                d.exchange.as_str(),
                d.routing_key.as_str(),
                d.redelivered,
            ))),
        }
    }

    /// Cancel the consumer and close the connection: RabbitMQ deletes the queue.
    pub async fn delete(self) -> Result<(), BrokerError> {
        let cancelled = self
            .channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await
            .map_err(amqp_err("basic.cancel"));
        let _ = self.conn.close(200, "done".into()).await;
        cancelled
    }
}

/// One consuming connection: its channel and one lapin consumer per queue.
struct Session {
    channel: Arc<Channel>,
    consumers: Vec<lapin::Consumer>,
    /// Settles the deliveries of this channel, and only of this one.
    acks: Arc<AckTracker>,
}

impl Session {
    async fn open(
        broker: &AmqpBroker,
        queues: &[String],
        window: &PrefetchWindow,
        counters: &Arc<Counters>,
    ) -> Result<Session, BrokerError> {
        let (_conn, ch) = broker.open_channel("consumer").await?;
        ch.basic_qos(window.count(), window.options())
            .await
            .map_err(amqp_err("basic.qos"))?;
        broker
            .declare_queue_with(&ch, DEAD_LETTER_KEY, FieldTable::default())
            .await?;
        let mut consumers = Vec::with_capacity(queues.len());
        for q in queues {
            broker.declare(&ch, q).await?;
            let consumer = ch
                .basic_consume(
                    short(q, "queue name")?,
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(amqp_err("basic.consume"))?;
            consumers.push(consumer);
        }
        let channel = Arc::new(ch);
        window.set_channel(channel.clone());
        let acks = Arc::new(AckTracker::new(channel.clone(), counters.clone()));
        Ok(Session {
            channel,
            consumers,
            acks,
        })
    }
}

/// The background fetcher: moves deliveries from RabbitMQ to the consumer's buffer, and
/// reconnects when the connection is lost. Ends when the consumer is closed or dropped.
async fn fetch(
    broker: AmqpBroker,
    queues: Vec<String>,
    window: Arc<PrefetchWindow>,
    mut session: Session,
    tx: mpsc::UnboundedSender<Result<Delivery, BrokerError>>,
    counters: Arc<Counters>,
) {
    loop {
        let lost = run_session(&broker, &session, &window, &tx).await;
        let Some(err) = lost else {
            return; // the consumer is gone
        };
        tracing::warn!(error = %err, "AMQP consumer lost its connection; reconnecting");
        if tx.send(Err(err)).is_err() {
            return;
        }
        let mut backoff = Duration::from_millis(200);
        session = loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match Session::open(&broker, &queues, &window, &counters).await {
                Ok(s) => {
                    tracing::info!("AMQP consumer reconnected");
                    break s;
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?backoff, "AMQP reconnect failed");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
    }
}

/// Forward deliveries until the connection is lost (`Some(error)`) or the consumer is
/// closed (`None`; the consumers are then cancelled and whatever still arrives is handed
/// back to RabbitMQ).
async fn run_session(
    broker: &AmqpBroker,
    session: &Session,
    window: &Arc<PrefetchWindow>,
    tx: &mpsc::UnboundedSender<Result<Delivery, BrokerError>>,
) -> Option<BrokerError> {
    // Each delivery keeps the name of the queue it came from (for dead letters).
    let mut streams = futures_util::stream::select_all(session.consumers.iter().map(|c| {
        let queue: Arc<str> = c.queue().as_str().into();
        c.clone().map(move |d| (queue.clone(), d))
    }));
    loop {
        let item = tokio::select! {
            () = tx.closed() => break,
            item = streams.next() => item,
        };
        match item {
            Some((queue, Ok(d))) => {
                let message = fields::raw_message(
                    d.data,
                    d.properties,
                    d.exchange.as_str(),
                    d.routing_key.as_str(),
                    d.redelivered,
                );
                session.acks.delivered(d.delivery_tag);
                let acker = AmqpAcker {
                    broker: broker.clone(),
                    acks: session.acks.clone(),
                    tag: d.delivery_tag,
                    queue,
                    window: window.clone(),
                    settled: AtomicBool::new(false),
                };
                let delivery = Delivery::new(
                    message,
                    d.delivery_tag.to_string(),
                    Acker::Amqp(acker),
                    None,
                );
                if let Err(unsent) = tx.send(Ok(delivery)) {
                    // Closed between the check and the send: hand it back.
                    if let Ok(d) = unsent.0 {
                        let _ = d.restore().await;
                    }
                    break;
                }
            }
            Some((_, Err(source))) => {
                return Some(BrokerError::Amqp {
                    op: "basic.deliver",
                    source,
                });
            }
            None => {
                return Some(BrokerError::ConsumerCancelled);
            }
        }
    }
    // Closed: stop deliveries, then give back what arrives after the cancel was sent.
    for c in &session.consumers {
        let _ = session
            .channel
            .basic_cancel(c.tag(), BasicCancelOptions::default())
            .await;
    }
    while let Ok(Some((_, Ok(d)))) =
        tokio::time::timeout(Duration::from_millis(50), streams.next()).await
    {
        session.acks.delivered(d.delivery_tag);
        let _ = session
            .acks
            .settle(d.delivery_tag, Settle::Reject { requeue: true })
            .await;
    }
    None
}

/// A stream of deliveries from RabbitMQ.
pub struct AmqpConsumer {
    rx: mpsc::UnboundedReceiver<Result<Delivery, BrokerError>>,
    fetcher: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl AmqpConsumer {
    /// The next delivery (cancel-safe). A lost connection is reported once as an error;
    /// calling `next` again waits for the reconnected consumer.
    pub async fn next(&mut self) -> Result<Delivery, BrokerError> {
        self.rx.recv().await.unwrap_or(Err(BrokerError::Closed))
    }

    /// How the deliveries of this consumer were settled so far: settlements and the
    /// frames that carried them, over every connection it used.
    pub fn ack_stats(&self) -> AckStats {
        self.counters.snapshot()
    }

    /// Stop consuming and hand every buffered, not yet given out delivery back to
    /// RabbitMQ (`basic.reject(requeue=true)`). Deliveries given out stay valid.
    ///
    /// If the connection is gone, handing back fails, which loses nothing: RabbitMQ requeues
    /// every unacknowledged message of a closed channel. The first such error is returned
    /// after every delivery has been tried.
    pub async fn close(mut self) -> Result<(), BrokerError> {
        self.rx.close();
        let mut first_error = None;
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(d) = item
                && let Err(err) = d.restore().await
            {
                first_error.get_or_insert(err);
            }
        }
        // The fetcher cancels the consumers and requeues stragglers; wait for it.
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.fetcher).await;
        first_error.map_or(Ok(()), Err)
    }
}

/// How an AMQP delivery is settled: through the tracker of the channel it arrived on.
pub(crate) struct AmqpAcker {
    broker: AmqpBroker,
    acks: Arc<AckTracker>,
    tag: u64,
    /// The queue it was consumed from.
    queue: Arc<str>,
    /// The consumer's prefetch window.
    window: Arc<PrefetchWindow>,
    /// A settlement was handed to the tracker.
    settled: AtomicBool,
}

impl AmqpAcker {
    /// Widen the consumer's prefetch window by one until the loan is dropped. The delivery
    /// is held (for its eta): the tracker does not keep later acks waiting for it.
    pub(crate) fn widen_prefetch(&self) -> Option<PrefetchLoan> {
        self.acks.park(self.tag);
        self.window.widen()
    }

    fn settle(&self, how: Settle) -> impl Future<Output = Result<(), BrokerError>> + Send + use<> {
        self.settled.store(true, Ordering::Relaxed);
        self.acks.settle(self.tag, how)
    }

    pub(crate) async fn ack(&self) -> Result<(), BrokerError> {
        self.settle(Settle::Ack).await
    }

    /// `basic.reject(requeue=true)`: RabbitMQ puts it back (near its old place) marked
    /// redelivered.
    pub(crate) async fn requeue(&self) -> Result<(), BrokerError> {
        self.settle(Settle::Reject { requeue: true }).await
    }

    /// Republish the message to [`DEAD_LETTER_KEY`] (body and properties unchanged, except
    /// that the copy is persistent and loses any per-message TTL) with why and where from in
    /// its headers; ack the original only once the copy is confirmed.
    pub(crate) async fn dead_letter(
        &self,
        message: &RawMessage,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let mut kept = message.clone();
        let di = &message.delivery_info;
        for (k, v) in [
            ("x-celeriac-reason", reason),
            ("x-celeriac-queue", &*self.queue),
            ("x-original-exchange", di.exchange.as_str()),
            ("x-original-routing-key", di.routing_key.as_str()),
        ] {
            kept.headers.insert(k.into(), v.into());
        }
        // Kept means kept: persistent, and no per-message TTL that would expire the copy.
        kept.properties.insert("delivery_mode".into(), 2.into());
        if let Some(ttl) = kept.properties.remove("expiration") {
            kept.headers.insert("x-original-expiration".into(), ttl);
        }
        self.broker.publish(&kept, "", DEAD_LETTER_KEY).await?;
        self.ack().await
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Relaxed) {
            // Dropped unsettled: RabbitMQ keeps it until the channel closes; nobody waits for it.
            self.acks.park(self.tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_queue_arguments_are_kombus_milliseconds() {
        let spec = super::super::ReplyQueueSpec {
            exchange: "reply.celery.pidbox".into(),
            queue: "oid.reply.celery.pidbox".into(),
            routing_key: "oid".into(),
            expires: Some(Duration::from_secs(10)),
            message_ttl: Some(Duration::from_secs(300)),
        };
        let args = reply_queue_arguments(&spec);
        assert_eq!(args.inner()["x-expires"], AMQPValue::LongInt(10_000));
        assert_eq!(args.inner()["x-message-ttl"], AMQPValue::LongInt(300_000));
        let none = super::super::ReplyQueueSpec {
            expires: None,
            message_ttl: None,
            ..spec
        };
        assert!(reply_queue_arguments(&none).inner().is_empty());
    }
}
