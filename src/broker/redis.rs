//! kombu's Redis transport, byte compatible, so Python and Rust workers share queues.
//!
//! # Layout (PROTOCOL.md section 5)
//!
//! * A queue is a Redis list per priority step: `<queue>` for step 0, `<queue>\x06\x16<step>`
//!   for steps 3, 6, 9. Publishing is `LPUSH` of kombu's JSON envelope; consumers take from
//!   the right, so each list is FIFO. Keys are served by priority step first, then by queue,
//!   and the queue order rotates round-robin after each delivery (kombu's `_queue_cycle`).
//! * Ack emulation is kombu's: while a message is held, `unacked` (HASH) maps its delivery
//!   tag to `[envelope, exchange, routing_key]` and `unacked_index` (ZSET) to the time it was
//!   taken. Ack removes both; requeue and restore move the envelope back (with redelivered
//!   flags) in one atomic step; the visibility restore (`unacked_mutex`, then every tag older
//!   than the visibility timeout) puts lost messages back at the front. A Python worker's
//!   `QoS.restore_visible` restores what a Rust worker holds, and the other way round.
//!
//! # Closing kombu's loss window
//!
//! kombu BRPOPs a message and only afterwards, in a second round trip, records it in
//! `unacked`: a worker killed in between loses the message. Here the take is one Lua script
//! (`redis/take.lua`, run with EVALSHA) that `RPOP`s the keys in order and, in the same
//! atomic step, `ZADD`s/`HSET`s the bookkeeping with the envelope bytes exactly as popped and
//! the delivery tag found inside them. At every instant a message is either in its list or in
//! `unacked`, so a worker SIGKILLed at any point loses nothing: the visibility restore (Python
//! or Rust) brings it back. An envelope that cannot be recorded (not JSON, no delivery tag)
//! is moved to `celeriac.dead_letter` by the same script, never dropped.
//!
//! # Batches
//!
//! One run of the take script takes up to one message per free prefetch slot (at most
//! 100), in exactly the order kombu's consumer would take them one `BRPOP` at a
//! time: the first non-empty key in priority-then-cycle order each time, the queue just
//! served rotated to the end of the cycle after every message. Each message is recorded as
//! above before the script returns, so the batch is as safe as a single take. While a full
//! batch is handed out the next take is already on its way; while the prefetch window is
//! nearly full (the worker has plenty in hand) the fetcher waits a moment for a quarter of it
//! to free up rather than taking a message or two per round trip.
//!
//! Acks are group-committed: one background task per broker keeps at most one
//! `MULTI; ZREM unacked_index <tags>; HDEL unacked <tags>; EXEC` in flight, carrying every
//! tag acked while the previous one ran. An ack still returns only once its own tag is gone.
//!
//! # Blocking without polling
//!
//! A script cannot block, so when the take script finds every list empty the consumer waits
//! for a list to become non-empty *without popping*: one waiter task per list key, each on its
//! own connection, runs `BLMOVE key key RIGHT RIGHT <timeout>`. With the same source and
//! destination this atomically pops and pushes back the same element, leaving the list
//! unchanged, but it blocks like BRPOP until an element is there. The first waiter to return
//! wakes the fetcher, which runs the take script again. A waiter only blocks again after the
//! fetcher has looked and found nothing (a generation counter), so a message that sits in a
//! list while the consumer is full does not spin the waiters. A take that took fewer
//! messages than it asked for has found every list empty, so the waiters are armed right
//! after it: no second, empty take per delivery (a lone message costs one take). Other
//! clients blocked on the same list (a Python worker's BRPOP) are still served: the element
//! is still there after the BLMOVE.
//!
//! The waiter of the first queue's step-0 list (where messages without a priority go) is
//! the *leader*: the take script travels pipelined behind its BLMOVE, with the free prefetch
//! slots it may fill leased to it, so Redis runs the take the moment the BLMOVE unblocks and
//! both replies come back together; a lone message is in hand one round trip after its
//! LPUSH, as with kombu's BRPOP. The pipelined take reads the time from the server (it runs
//! later than it is written). When another list's waiter wakes, or the consumer stops, the
//! fetcher cuts the leader's BLMOVE short with `CLIENT UNBLOCK`: the take behind it runs at
//! once, in kombu's order over every list, and its reply is always awaited and handed out
//! (on close, restored), never dropped.
//!
//! # Prefetch
//!
//! The fetcher takes a message only while it holds a free prefetch slot (a semaphore permit
//! that travels inside the [`Delivery`]), so no more than `prefetch` messages are ever in
//! `unacked` for one consumer, like kombu's `can_consume()`. Fetched deliveries wait in a
//! channel, which makes [`RedisConsumer::next`] cancel-safe.

use super::url::RedisUrl;
use super::{
    Acker, BrokerError, BrokerOptions, DEAD_LETTER_KEY, Delivery, ExchangeType, PRIORITY_STEPS,
    RetryPolicy, lossless_text, mark_redelivered, message_priority, rotate,
};
use crate::protocol::kombu::to_python_json;
use crate::protocol::raw_headers::{HeaderSource, HeaderValue, visit_json_object};
use crate::protocol::{DeliveryInfo, Headers, RawMessage};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{
    AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script,
};
use base64::Engine as _;
use serde_json::{Map, Value};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// kombu's separator between a queue name and its priority step.
pub const SEP: &str = "\x06\x16";
const UNACKED: &str = "unacked";
const UNACKED_INDEX: &str = "unacked_index";
const UNACKED_MUTEX: &str = "unacked_mutex";
/// kombu's `unacked_mutex_expire` (300 s), in milliseconds.
const MUTEX_EXPIRE_MS: u64 = 300_000;
const BINDING_PREFIX: &str = "_kombu.binding.";
const BINDING_PERMANENT_PREFIX: &str = "_kombu.binding_permanent.";
/// kombu restores at most this many tags per ZRANGE (`restore_visible(num=10)`); we loop.
const RESTORE_BATCH: usize = 10;
/// Upper bound on batches per restore round, so a tag that cannot be settled cannot loop us.
const RESTORE_MAX_BATCHES: usize = 1000;
/// How often a changed unacked entry is re-read before giving up for this round.
const SETTLE_ATTEMPTS: usize = 5;
/// Seconds a waiter blocks in BLMOVE before blocking again (a bound, so a dead
/// connection is noticed; it is not a poll: nothing is taken on return).
const BLOCK_SECS: u64 = 10;
/// How soon the fetcher asks again to cut the leader's BLMOVE short when it was not (yet)
/// blocked (its pipeline still on the way).
const UNBLOCK_RETRY: Duration = Duration::from_millis(1);
/// Most messages one take script takes (one round trip).
const TAKE_MAX: usize = 100;
/// How long the fetcher waits for more free prefetch slots while the window is nearly full.
const FILL_WAIT: Duration = Duration::from_millis(1);
/// Most acknowledgements one `MULTI ZREM HDEL EXEC` carries.
const ACK_MAX: usize = 1000;
/// Pause after a failed Redis call before trying again.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/take.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/settle.lua")));
static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/unlock.lua")));

const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn redis_err(command: &'static str) -> impl FnOnce(::redis::RedisError) -> BrokerError {
    move |source| BrokerError::Redis { command, source }
}

/// AMQP topic matching, as kombu's topic exchange does it: words are separated by `.`,
/// `*` in the pattern stands for exactly one word and `#` for zero or more.
pub(crate) fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&word, rest)) => match k.split_first() {
                Some((&key, krest)) => (word == "*" || word == key) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    go(&p, &k)
}

/// kombu's `_q_for_pri`: the list key of `queue` for a priority step.
pub fn queue_key(queue: &str, step: u8) -> String {
    if step == 0 {
        queue.to_string()
    } else {
        format!("{queue}{SEP}{step}")
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A float as Python's `repr` writes it (what kombu sends as ZADD scores).
fn py_float(f: f64) -> String {
    to_python_json(&Value::from(f))
}

/// Redis broker. Cheap to clone: clones share one auto-reconnecting connection, and one
/// more for publishing.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: ::redis::Client,
    conn: ConnectionManager,
    /// Publishing and declaring: a multiplexed connection that makes a single connection
    /// attempt when it is lost, so the publish's [`RetryPolicy`] alone decides how long an
    /// unreachable server is retried (the shared one retries by itself for seconds).
    publisher: ConnectionManager,
    opts: BrokerOptions,
    url: RedisUrl,
    /// The group-commit acknowledger ([`ack_loop`]), started on the first ack. It ends when
    /// this sender is dropped with the last clone of the broker.
    acks: OnceLock<mpsc::UnboundedSender<AckRequest>>,
}

impl RedisBroker {
    /// Connect (and check the connection) to the Redis server named by `url`.
    pub async fn connect(url: RedisUrl, opts: BrokerOptions) -> Result<RedisBroker, BrokerError> {
        if url.tls {
            return Err(BrokerError::TlsUnavailable);
        }
        let connect_err = |source| BrokerError::Connect {
            url: url.masked(),
            source,
        };
        let mut settings = RedisConnectionInfo::default().set_db(url.db);
        if let Some(u) = &url.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &url.password {
            settings = settings.set_password(p);
        }
        let info = ConnectionAddr::Tcp(url.host.clone(), url.port)
            .into_connection_info()
            .map_err(connect_err)?
            .set_redis_settings(settings)
            // TCP_NODELAY, as redis-py sets it: with Nagle's algorithm an early ack written
            // while the fetcher's take is unanswered waited for that reply (milliseconds).
            .set_tcp_settings(::redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = ::redis::Client::open(info).map_err(connect_err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone())
            .await
            .map_err(connect_err)?;
        let publisher =
            ConnectionManager::new_with_config(client.clone(), config.set_number_of_retries(0))
                .await
                .map_err(connect_err)?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                client,
                conn,
                publisher,
                opts,
                url,
                acks: OnceLock::new(),
            }),
        })
    }

    /// `redis://[:**@]host:port/db`.
    pub fn describe(&self) -> String {
        self.inner.url.masked()
    }

    /// kombu's `visibility_timeout`: unacknowledged messages older than this are restored.
    pub fn visibility_timeout(&self) -> Duration {
        self.inner.opts.visibility_timeout
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Publish as kombu's `Channel.basic_publish` + `_put` do: `LPUSH` of the envelope to the
    /// priority key of every target queue (see [`AnyBroker::publish`](super::AnyBroker::publish)).
    /// A lost connection is retried as [`RetryPolicy::RESULTS`] says.
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

    /// One publish attempt (reconnecting first if the publishing connection was lost); a
    /// connection error is returned, not retried.
    pub async fn publish_once(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let queues = self.lookup(exchange, routing_key).await?;
        if queues.is_empty() {
            return Err(BrokerError::Unroutable {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            });
        }
        let tag = uuid::Uuid::new_v4().to_string();
        let envelope = envelope(msg, exchange, routing_key, &tag);
        let step = PRIORITY_STEPS[super::priority_index(message_priority(&msg_props(&envelope)))];
        let text = to_python_json(&envelope);
        let mut pipe = ::redis::pipe();
        for q in &queues {
            pipe.lpush(queue_key(q, step), &text).ignore();
        }
        pipe.query_async::<()>(&mut self.inner.publisher.clone())
            .await
            .map_err(redis_err("LPUSH"))
    }

    /// The type of `exchange`: what the options' bindings declare for it, else direct (kombu
    /// keeps exchange types in the declaring process, not in Redis, and treats unknown ones
    /// as direct).
    fn exchange_type(&self, exchange: &str) -> ExchangeType {
        self.inner
            .opts
            .bindings
            .iter()
            .find(|b| b.exchange == exchange)
            .map_or(ExchangeType::Direct, |b| b.exchange_type)
    }

    /// kombu's `_lookup`: exchange `""` routes to the queue named by the routing key; a
    /// named exchange to the queues bound in `_kombu.binding.<exchange>` whose binding key
    /// matches the routing key (equal for direct exchanges, the pattern for topic ones,
    /// every queue for fanout ones).
    async fn lookup(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_string()]);
        }
        let members: Vec<Vec<u8>> = ::redis::cmd("SMEMBERS")
            .arg(format!("{BINDING_PREFIX}{exchange}"))
            .query_async(&mut self.inner.publisher.clone())
            .await
            .map_err(redis_err("SMEMBERS _kombu.binding"))?;
        let mut queues: Vec<String> = Vec::new();
        for m in members {
            let m = String::from_utf8_lossy(&m);
            let mut parts = m.split(SEP);
            let (Some(rk), Some(_pattern), Some(queue)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let routes = match self.exchange_type(exchange) {
                ExchangeType::Direct => rk == routing_key,
                ExchangeType::Topic => topic_matches(rk, routing_key),
                ExchangeType::Fanout => true,
            };
            if routes && !queues.iter().any(|q| q == queue) {
                queues.push(queue.to_string());
            }
        }
        queues.sort();
        Ok(queues)
    }

    /// Bind `queue` to the direct exchange of the same name with the queue name as routing
    /// key, as a Celery worker declares its queues (`_kombu.binding.<q>` and, kombu 5.7,
    /// `_kombu.binding_permanent.<q>`).
    ///
    /// A queue with [`QueueBinding`](super::QueueBinding)s in the options is bound to those
    /// exchanges with those keys instead (kombu's `routing_key, pattern, queue` member; the
    /// pattern field stays empty, and [`RedisBroker::publish`] matches topic patterns itself).
    pub async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let mut pipe = ::redis::pipe();
        for b in self.inner.opts.bindings_for(queue) {
            let member = format!("{}{SEP}{SEP}{queue}", b.routing_key);
            pipe.sadd(format!("{BINDING_PREFIX}{}", b.exchange), &member)
                .ignore()
                .sadd(format!("{BINDING_PERMANENT_PREFIX}{}", b.exchange), &member)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.inner.publisher.clone())
            .await
            .map_err(redis_err("SADD _kombu.binding"))
    }

    /// Remove every message waiting in `queue` (all priority keys, kombu's `_purge`);
    /// returns how many there were. Unacknowledged messages are not touched.
    pub async fn purge(&self, queue: &str) -> Result<usize, BrokerError> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for step in PRIORITY_STEPS {
            pipe.llen(queue_key(queue, step));
        }
        for step in PRIORITY_STEPS {
            pipe.del(queue_key(queue, step)).ignore();
        }
        let sizes: Vec<usize> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err("purge"))?;
        Ok(sizes.into_iter().sum())
    }

    /// Messages waiting in `queue`, all priority keys together (kombu's `_size`).
    pub async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        let mut pipe = ::redis::pipe();
        for step in PRIORITY_STEPS {
            pipe.llen(queue_key(queue, step));
        }
        let sizes: Vec<usize> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err("LLEN"))?;
        Ok(sizes.into_iter().sum())
    }

    /// Start consuming: declares the queues, restores visible messages now and every
    /// `restore_interval`, and fetches in the background within `prefetch` (0 = no limit).
    pub async fn consume(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> Result<RedisConsumer, BrokerError> {
        if queues.is_empty() {
            return Err(BrokerError::NoQueues);
        }
        let mut cycle: Vec<String> = Vec::new();
        for q in queues {
            if !cycle.contains(q) {
                self.declare_queue(q).await?;
                cycle.push(q.clone());
            }
        }
        let permits = if prefetch == 0 {
            Semaphore::MAX_PERMITS
        } else {
            prefetch.min(Semaphore::MAX_PERMITS)
        };
        // One extra slot for an error report: deliveries alone never exceed the permits, so
        // the fetcher's sends never wait.
        let (tx, rx) = mpsc::channel(permits.saturating_add(1).min(Semaphore::MAX_PERMITS));
        let (stop_tx, stop_rx) = watch::channel(false);
        // Restore first, as kombu does when a consumer starts, then keep doing it.
        let restorer = tokio::spawn(restore_loop(self.clone(), stop_rx.clone()));
        let fetcher = tokio::spawn(fetch_loop(
            self.clone(),
            cycle,
            Arc::new(Semaphore::new(permits)),
            permits,
            tx,
            stop_rx,
        ));
        Ok(RedisConsumer {
            rx,
            stop: stop_tx,
            fetcher: Some(fetcher),
            restorer: Some(restorer),
        })
    }

    /// Run the take script once: up to `max` messages from the keys of `cycle` in kombu's
    /// BRPOP order, rotating the cycle after each as kombu does (the caller replays the
    /// rotation from the queues of what was taken). Also returns the time they were taken.
    async fn take(&self, cycle: &[String], max: usize) -> Result<(Vec<Taken>, f64), BrokerError> {
        let now = now_secs();
        let mut inv = TAKE.prepare_invoke();
        take_args(&mut inv, cycle, max, &py_float(now));
        let reply: ::redis::Value = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err("EVALSHA take"))?;
        parse_take(reply, cycle).map(|taken| (taken, now))
    }
}

/// The keys and arguments of the take script (see `redis/take.lua`); `now` empty: the
/// server's clock.
fn take_args(inv: &mut ::redis::ScriptInvocation<'_>, cycle: &[String], max: usize, now: &str) {
    inv.key(UNACKED).key(UNACKED_INDEX).key(DEAD_LETTER_KEY);
    for step in PRIORITY_STEPS {
        for q in cycle {
            inv.key(queue_key(q, step));
        }
    }
    inv.arg(now).arg(max);
    for q in cycle {
        inv.arg(q.as_str());
    }
}

/// The take script as a plain `EVALSHA` command (to pipeline it), the server's clock for
/// its time.
fn take_command(cycle: &[String], max: usize) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(TAKE.get_hash())
        .arg(3 + PRIORITY_STEPS.len() * cycle.len());
    cmd.arg(UNACKED).arg(UNACKED_INDEX).arg(DEAD_LETTER_KEY);
    for step in PRIORITY_STEPS {
        for q in cycle {
            cmd.arg(queue_key(q, step));
        }
    }
    cmd.arg("").arg(max);
    for q in cycle {
        cmd.arg(q.as_str());
    }
    cmd
}

/// The take script's reply: four items per message (see `redis/take.lua`).
fn parse_take(reply: ::redis::Value, cycle: &[String]) -> Result<Vec<Taken>, BrokerError> {
    {
        let unexpected = |detail: String| BrokerError::UnexpectedReply {
            command: "EVALSHA take",
            detail,
        };
        let items = match reply {
            ::redis::Value::Array(items) => items,
            ::redis::Value::Nil => Vec::new(),
            other => return Err(unexpected(format!("{other:?}"))),
        };
        if items.len() % 4 != 0 {
            return Err(unexpected(format!(
                "{} items, not 4 per message",
                items.len()
            )));
        }
        let mut taken = Vec::with_capacity(items.len() / 4);
        let mut items = items.into_iter();
        while let (Some(kind), Some(index), Some(payload), Some(tag)) =
            (items.next(), items.next(), items.next(), items.next())
        {
            let (
                ::redis::Value::Int(kind),
                ::redis::Value::Int(index),
                ::redis::Value::BulkString(payload),
                ::redis::Value::BulkString(tag),
            ) = (kind, index, payload, tag)
            else {
                return Err(unexpected(
                    "an item is not kind, queue, payload, tag".into(),
                ));
            };
            let queue = usize::try_from(index)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| cycle.get(i))
                .cloned()
                .ok_or_else(|| unexpected(format!("queue index {index}")))?;
            taken.push(match kind {
                1 => Taken::Message {
                    queue,
                    envelope: payload,
                    tag: String::from_utf8(tag).ok(),
                },
                2 => Taken::DeadLettered {
                    queue,
                    reason: String::from_utf8_lossy(&payload).into_owned(),
                },
                other => return Err(unexpected(format!("kind {other}"))),
            });
        }
        Ok(taken)
    }
}

impl RedisBroker {
    /// kombu's `QoS.restore_visible`: under `unacked_mutex`, put every message taken more
    /// than `visibility_timeout` ago back at the front of its queue, redelivered flags set.
    /// Returns how many were restored (0 when another consumer holds the mutex).
    pub async fn restore_visible(&self) -> Result<usize, BrokerError> {
        let mut conn = self.conn();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let acquired: Option<String> = ::redis::cmd("SET")
            .arg(UNACKED_MUTEX)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(MUTEX_EXPIRE_MS)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("SET unacked_mutex"))?;
        if acquired.is_none() {
            return Ok(0);
        }
        let result = self.restore_visible_locked().await;
        let released: Result<i64, _> = UNLOCK
            .key(UNACKED_MUTEX)
            .arg(&token)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release unacked_mutex; it expires by itself");
        }
        result
    }

    async fn restore_visible_locked(&self) -> Result<usize, BrokerError> {
        let mut restored = 0;
        for _ in 0..RESTORE_MAX_BATCHES {
            let ceil = now_secs() - self.inner.opts.visibility_timeout.as_secs_f64();
            let batch: Vec<(String, f64)> = ::redis::cmd("ZRANGE")
                .arg(UNACKED_INDEX)
                .arg(py_float(ceil))
                .arg(0)
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(RESTORE_BATCH)
                .arg("WITHSCORES")
                .query_async(&mut self.conn())
                .await
                .map_err(redis_err("ZRANGE unacked_index"))?;
            for (tag, _) in &batch {
                if self.restore_by_tag(tag, false).await? {
                    restored += 1;
                }
            }
            if batch.len() < RESTORE_BATCH {
                break;
            }
        }
        if restored > 0 {
            tracing::info!(
                restored,
                "restored unacknowledged messages past the visibility timeout"
            );
        }
        Ok(restored)
    }

    /// kombu's `QoS.restore_by_tag`: remove `tag` from the unacked tables and push its
    /// envelope (redelivered flags set) back: `LPUSH` when `leftmost` (requeue: back of the
    /// queue), else `RPUSH` (front). kombu's WATCH transaction becomes a compare-and-set
    /// script so it runs on the shared connection. Returns whether a message was moved.
    async fn restore_by_tag(&self, tag: &str, leftmost: bool) -> Result<bool, BrokerError> {
        let mut conn = self.conn();
        for _ in 0..SETTLE_ATTEMPTS {
            let raw: Option<Vec<u8>> = ::redis::cmd("HGET")
                .arg(UNACKED)
                .arg(tag)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("HGET unacked"))?;
            let Some(raw) = raw else {
                // As kombu: the indices are cleaned even when the hash entry is gone.
                ::redis::pipe()
                    .atomic()
                    .zrem(UNACKED_INDEX, tag)
                    .hdel(UNACKED, tag)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_err("ZREM/HDEL unacked"))?;
                return Ok(false);
            };
            let (keys, command, payload) = match self.plan_restore(&raw).await? {
                RestorePlan::Push { keys, payload } => {
                    (keys, if leftmost { "LPUSH" } else { "RPUSH" }, payload)
                }
                RestorePlan::DeadLetter {
                    reason,
                    queue,
                    envelope,
                } => {
                    tracing::error!(delivery_tag = %tag, %reason, "unacked message cannot be restored; dead-lettered");
                    let entry = dead_letter_entry(&reason, &queue, now_secs(), &envelope);
                    (vec![DEAD_LETTER_KEY.to_string()], "LPUSH", entry)
                }
            };
            let mut inv = SETTLE.prepare_invoke();
            inv.key(UNACKED).key(UNACKED_INDEX);
            for k in &keys {
                inv.key(k);
            }
            inv.arg(tag).arg(&raw).arg(command).arg(payload);
            let done: i64 = inv
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err("EVALSHA settle"))?;
            if done == 1 {
                return Ok(true);
            }
        }
        tracing::warn!(delivery_tag = %tag, "unacked entry kept changing; not restored this time");
        Ok(false)
    }

    /// What restoring an `unacked` value `[envelope, exchange, routing_key]` pushes where.
    async fn plan_restore(&self, raw: &[u8]) -> Result<RestorePlan, BrokerError> {
        let parsed: Option<(Value, String, String)> = serde_json::from_slice::<Value>(raw)
            .ok()
            .and_then(|v| match v {
                Value::Array(mut a) if a.len() == 3 => {
                    let rk = a.pop()?;
                    let ex = a.pop()?;
                    let m = a.pop()?;
                    match (m, ex, rk) {
                        (m @ Value::Object(_), Value::String(ex), Value::String(rk)) => {
                            Some((m, ex, rk))
                        }
                        _ => None,
                    }
                }
                _ => None,
            });
        let Some((mut message, exchange, routing_key)) = parsed else {
            return Ok(RestorePlan::DeadLetter {
                reason: "unacked entry is not [envelope, exchange, routing_key]".into(),
                queue: String::new(),
                envelope: raw.to_vec(),
            });
        };
        let queues = self.lookup(&exchange, &routing_key).await?;
        if queues.is_empty() {
            // kombu would drop it (no queue matched); keep it instead.
            return Ok(RestorePlan::DeadLetter {
                reason: format!(
                    "no queue bound to exchange {exchange:?} with routing key {routing_key:?}"
                ),
                queue: routing_key,
                envelope: to_python_json(&message).into_bytes(),
            });
        }
        mark_redelivered(&mut message);
        let step = PRIORITY_STEPS[super::priority_index(message_priority(&msg_props(&message)))];
        Ok(RestorePlan::Push {
            keys: queues.iter().map(|q| queue_key(q, step)).collect(),
            payload: to_python_json(&message),
        })
    }
}

enum RestorePlan {
    Push {
        keys: Vec<String>,
        payload: String,
    },
    DeadLetter {
        reason: String,
        queue: String,
        envelope: Vec<u8>,
    },
}

/// One message the take script popped.
enum Taken {
    /// Recorded in `unacked` under `tag` (`None`: a tag that is not UTF-8); the envelope
    /// exactly as popped.
    Message {
        queue: String,
        envelope: Vec<u8>,
        tag: Option<String>,
    },
    /// Not recordable; moved to the dead-letter list by the script.
    DeadLettered { queue: String, reason: String },
}

fn msg_props(envelope: &Value) -> Map<String, Value> {
    envelope
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The dead-letter list element: `{"reason", "queue", "received_at", "envelope"}`.
fn dead_letter_entry(reason: &str, queue: &str, received_at: f64, envelope: &[u8]) -> String {
    let mut m = Map::new();
    m.insert("reason".into(), Value::from(reason));
    m.insert("queue".into(), Value::from(queue));
    m.insert("received_at".into(), Value::from(received_at));
    m.insert("envelope".into(), Value::from(lossless_text(envelope)));
    to_python_json(&Value::Object(m))
}

/// kombu's envelope for `msg` (PROTOCOL.md 5.1): `body` (base64), `content-encoding`,
/// `content-type`, `headers`, `properties` = the message's properties, then `delivery_info`,
/// `priority` (always), `body_encoding`, `delivery_tag`, in kombu's order.
pub fn envelope(msg: &RawMessage, exchange: &str, routing_key: &str, delivery_tag: &str) -> Value {
    let mut props = Map::new();
    for (k, v) in &msg.properties {
        if !matches!(
            k.as_str(),
            "delivery_info" | "priority" | "body_encoding" | "delivery_tag"
        ) {
            props.insert(k.clone(), v.clone());
        }
    }
    let mut di = Map::new();
    di.insert("exchange".into(), Value::from(exchange));
    di.insert("routing_key".into(), Value::from(routing_key));
    props.insert("delivery_info".into(), Value::Object(di));
    // kombu: `properties.setdefault('priority', priority or 0)`.
    let priority = match msg.properties.get("priority") {
        Some(v @ Value::Number(_)) => v.clone(),
        _ => Value::from(msg.delivery_info.priority.unwrap_or(0)),
    };
    props.insert("priority".into(), priority);
    props.insert("body_encoding".into(), Value::from("base64"));
    props.insert("delivery_tag".into(), Value::from(delivery_tag));
    let text_or_null = |s: &str| {
        if s.is_empty() {
            Value::Null
        } else {
            Value::from(s)
        }
    };
    let mut env = Map::new();
    env.insert("body".into(), Value::from(BASE64.encode(&msg.body)));
    env.insert(
        "content-encoding".into(),
        text_or_null(&msg.content_encoding),
    );
    env.insert("content-type".into(), text_or_null(&msg.content_type));
    env.insert(
        "headers".into(),
        Value::Object(msg.headers.as_map().clone()),
    );
    env.insert("properties".into(), Value::Object(props));
    Value::Object(env)
}

/// Read a kombu envelope into a [`RawMessage`] (kombu's `virtual.Message`): the body
/// base64-decoded when `body_encoding` is `base64`, transport keys taken out of the
/// properties. The error is a reason for the dead-letter list.
pub fn decode_envelope(bytes: &[u8]) -> Result<RawMessage, String> {
    decode_parts(bytes).map(|(message, _)| message)
}

/// A string field that borrows from the envelope when it has no escapes (a base64 body).
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// kombu's envelope as it is on the wire, read in one pass (no `Value` tree for the
/// envelope itself). Anything this does not accept goes through [`decode_slow`], which
/// accepts the same documents as before and says what is wrong.
#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    body: Option<Text<'a>>,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(borrow, default)]
    headers: Option<&'a serde_json::value::RawValue>,
    #[serde(deserialize_with = "sized_map")]
    properties: Map<String, Value>,
}

/// A JSON object read into a [`Map`] made with room for this many entries at once
/// (serde_json's own starts empty and grows several times per message). Room that is not
/// used is held as long as the message is, so the sizes fit Celery's messages: about 20
/// headers, 5 properties besides the 3 transport keys taken out.
struct SizedMap(usize);

/// Room for kombu's properties.
const PROPERTIES_ROOM: usize = 8;

impl<'de> serde::de::Visitor<'de> for SizedMap {
    type Value = Option<Map<String, Value>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object or null")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut access: A,
    ) -> Result<Self::Value, A::Error> {
        let mut map = Map::with_capacity(access.size_hint().unwrap_or(self.0));
        while let Some((k, v)) = access.next_entry::<String, Value>()? {
            // As serde_json's own: a repeated key keeps its place and takes the last value.
            map.insert(k, v);
        }
        Ok(Some(map))
    }
}

fn sized_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    match d.deserialize_map(SizedMap(PROPERTIES_ROOM))? {
        Some(map) => Ok(map),
        None => Err(serde::de::Error::custom("properties is null")),
    }
}

/// The envelope's parts before the transport keys are taken out.
struct Parts<'a> {
    body: Option<std::borrow::Cow<'a, str>>,
    content_type: String,
    content_encoding: String,
    headers: Headers,
    props: Map<String, Value>,
}

/// An envelope's `headers` object as it came (JSON text), read straight into the task
/// headers; the JSON map is built only when someone reads it.
#[derive(Debug)]
struct JsonHeaders(Box<serde_json::value::RawValue>);

impl HeaderSource for JsonHeaders {
    fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }

    fn visit(&self, each: &mut dyn FnMut(&str, HeaderValue<'_>)) {
        visit_json_object(self.0.get(), each);
    }
}

/// [`decode_envelope`], also returning `properties.delivery_tag` when it is a string.
pub(crate) fn decode_parts(bytes: &[u8]) -> Result<(RawMessage, Option<String>), String> {
    match decode_fast(bytes) {
        Some(parts) => assemble(parts),
        None => assemble(decode_slow(bytes)?),
    }
}

/// The envelope's parts in one pass, or `None` when [`Wire`] does not accept it.
fn decode_fast(bytes: &[u8]) -> Option<Parts<'_>> {
    let w = serde_json::from_slice::<Wire<'_>>(bytes).ok()?;
    Some(Parts {
        body: w.body.map(|t| t.0),
        content_type: w.content_type.unwrap_or_default(),
        content_encoding: w.content_encoding.unwrap_or_default(),
        headers: match w.headers {
            None => Headers::default(),
            // Anything but an object goes the slow way, which says what is wrong.
            Some(raw) if !raw.get().starts_with('{') => return None,
            Some(raw) => Headers::from_source(Box::new(JsonHeaders(raw.to_owned()))),
        },
        props: w.properties,
    })
}

/// A [`RawMessage`] and the delivery tag from an envelope's parts.
fn assemble(parts: Parts<'_>) -> Result<(RawMessage, Option<String>), String> {
    let Parts {
        body,
        content_type,
        content_encoding,
        headers,
        mut props,
    } = parts;
    let body_encoding = props.remove("body_encoding");
    let tag = match props.remove("delivery_tag") {
        Some(Value::String(t)) => Some(t),
        _ => None,
    };
    let di = props.remove("delivery_info");
    let body = match body {
        None => Vec::new(),
        Some(s) => match body_encoding {
            Some(Value::String(e)) if e == "base64" => BASE64
                .decode(s.as_bytes())
                .map_err(|e| format!("body is not valid base64: {e}"))?,
            None | Some(Value::Null) => s.into_owned().into_bytes(),
            Some(other) => return Err(format!("unsupported body_encoding {other}")),
        },
    };
    let mut delivery_info = DeliveryInfo::default();
    if let Some(Value::Object(mut di)) = di {
        let mut text = |k: &str| match di.remove(k) {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        delivery_info.exchange = text("exchange");
        delivery_info.routing_key = text("routing_key");
        delivery_info.redelivered = di
            .get("redelivered")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    }
    delivery_info.priority = props
        .get("priority")
        .and_then(Value::as_u64)
        .and_then(|p| u8::try_from(p).ok());
    Ok((
        RawMessage {
            body,
            content_type,
            content_encoding,
            headers,
            properties: props,
            delivery_info,
        },
        tag,
    ))
}

/// The envelope through a `Value` tree: accepts what [`Wire`] does not (duplicate keys) and
/// names what is wrong with the rest.
fn decode_slow(bytes: &[u8]) -> Result<Parts<'static>, String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("envelope is not valid JSON: {e}"))?;
    let Value::Object(mut env) = v else {
        return Err("envelope is not a JSON object".into());
    };
    let Some(Value::Object(props)) = env.remove("properties") else {
        return Err("envelope has no properties object".into());
    };
    let body = match env.remove("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(std::borrow::Cow::Owned(s)),
        Some(_) => return Err("envelope body is not a string".into()),
    };
    let text = |v: Option<Value>, what: &str| -> Result<String, String> {
        match v {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(format!("envelope {what} is not a string")),
        }
    };
    let content_type = text(env.remove("content-type"), "content-type")?;
    let content_encoding = text(env.remove("content-encoding"), "content-encoding")?;
    let headers = match env.remove("headers") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(h)) => h,
        Some(_) => return Err("envelope headers is not an object".into()),
    };
    Ok(Parts {
        body,
        content_type,
        content_encoding,
        headers: headers.into(),
        props,
    })
}

/// Redis consumer: a background fetcher (take script + BLMOVE waiters) feeding a channel,
/// and a background visibility restore. Dropping it stops both; deliveries it had fetched
/// but not handed out then stay in `unacked` until the visibility timeout (use
/// [`RedisConsumer::close`] to hand them back at once).
pub struct RedisConsumer {
    rx: mpsc::Receiver<Result<Delivery, BrokerError>>,
    stop: watch::Sender<bool>,
    fetcher: Option<JoinHandle<()>>,
    restorer: Option<JoinHandle<()>>,
}

impl RedisConsumer {
    /// The next delivery. Cancel-safe (a channel receive).
    pub async fn next(&mut self) -> Result<Delivery, BrokerError> {
        self.rx.recv().await.unwrap_or(Err(BrokerError::Closed))
    }

    /// Stop fetching and restore (RPUSH, redelivered flags) every delivery fetched but not
    /// handed out, as kombu's `restore_unacked` does at warm shutdown.
    pub async fn close(mut self) -> Result<(), BrokerError> {
        self.stop.send_replace(true);
        // Wait for the fetcher so nothing is taken after we drain.
        if let Some(f) = self.fetcher.take() {
            let _ = f.await;
        }
        if let Some(r) = self.restorer.take() {
            let _ = r.await;
        }
        self.rx.close();
        let mut fetched = Vec::new();
        while let Some(item) = self.rx.recv().await {
            if let Ok(delivery) = item {
                fetched.push(delivery);
            }
        }
        // Each restore RPUSHes to the front, so restoring the last-fetched first leaves the
        // queue in its original order (kombu restores in fetch order and so reverses them).
        let mut first_err = None;
        for delivery in fetched.into_iter().rev() {
            if let Err(e) = delivery.restore().await {
                tracing::error!(error = %e, "could not restore a prefetched message on close");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        // The background tasks watch this flag (and the sender's drop) and end.
        self.stop.send_replace(true);
    }
}

/// Settles Redis deliveries.
pub(crate) struct RedisAcker {
    broker: RedisBroker,
    queue: String,
    envelope: Vec<u8>,
    received_at: f64,
}

impl RedisAcker {
    /// kombu's ack: `MULTI; ZREM unacked_index <tag>; HDEL unacked <tag>; EXEC`, committed in
    /// a group with the acks of other deliveries made meanwhile (see [`ack_loop`]). Returns
    /// once this tag's transaction has run.
    pub(crate) async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        let inner = &self.broker.inner;
        let acks = inner.acks.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(ack_loop(inner.conn.clone(), rx));
            tx
        });
        let (done, result) = oneshot::channel();
        let request = AckRequest {
            tag: tag.to_string(),
            done,
        };
        if acks.send(request).is_ok()
            && let Ok(result) = result.await
        {
            return result.map_err(redis_err("ZREM/HDEL unacked"));
        }
        // The acknowledger is gone (its runtime ended): ack on our own.
        ::redis::pipe()
            .atomic()
            .zrem(UNACKED_INDEX, tag)
            .hdel(UNACKED, tag)
            .query_async::<()>(&mut self.broker.conn())
            .await
            .map_err(redis_err("ZREM/HDEL unacked"))
    }

    pub(crate) async fn restore(&self, tag: &str, leftmost: bool) -> Result<(), BrokerError> {
        self.broker.restore_by_tag(tag, leftmost).await.map(|_| ())
    }

    /// Forget the envelope kept for a dead-letter entry once the envelope has been read:
    /// ~1 KB per message adds up over a prefetch window or thousands of held messages.
    /// Should the message be dead-lettered after all, the envelope is read back from
    /// `unacked`.
    pub(crate) fn park(&mut self) {
        self.envelope = Vec::new();
    }

    /// The envelope kombu recorded under `tag` in `unacked` (`[envelope, exchange,
    /// routing_key]`), as Python's json writes it; empty when it is not there.
    async fn recorded_envelope(&self, tag: &str) -> Vec<u8> {
        let raw: Option<Vec<u8>> = ::redis::cmd("HGET")
            .arg(UNACKED)
            .arg(tag)
            .query_async(&mut self.broker.conn())
            .await
            .unwrap_or(None);
        raw.and_then(|r| serde_json::from_slice::<Value>(&r).ok())
            .and_then(|v| v.get(0).cloned())
            .map(|m| to_python_json(&m).into_bytes())
            .unwrap_or_default()
    }

    pub(crate) async fn dead_letter(&self, tag: &str, reason: &str) -> Result<(), BrokerError> {
        tracing::error!(queue = %self.queue, delivery_tag = %tag, %reason, "message moved to {DEAD_LETTER_KEY}");
        let recorded;
        let envelope = if self.envelope.is_empty() {
            recorded = self.recorded_envelope(tag).await;
            &recorded
        } else {
            &self.envelope
        };
        let entry = dead_letter_entry(reason, &self.queue, self.received_at, envelope);
        ::redis::pipe()
            .atomic()
            .lpush(DEAD_LETTER_KEY, entry)
            .zrem(UNACKED_INDEX, tag)
            .hdel(UNACKED, tag)
            .query_async::<()>(&mut self.broker.conn())
            .await
            .map_err(redis_err("LPUSH celeriac.dead_letter"))
    }
}

/// Resolves when the consumer asks to stop (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One acknowledgement waiting for its group commit.
struct AckRequest {
    tag: String,
    done: oneshot::Sender<Result<(), ::redis::RedisError>>,
}

/// Group commit of acks: at most one `MULTI; ZREM unacked_index <tags>; HDEL unacked <tags>;
/// EXEC` in flight, carrying every ack requested while the previous one ran. The same
/// entries are removed as by one kombu ack per tag, in a fraction of the round trips, and
/// every requester learns the outcome of the transaction that carried its tag.
async fn ack_loop(mut conn: ConnectionManager, mut rx: mpsc::UnboundedReceiver<AckRequest>) {
    let mut batch = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    while rx.recv_many(&mut batch, ACK_MAX).await > 0 {
        tags.clear();
        tags.extend(batch.iter_mut().map(|r| std::mem::take(&mut r.tag)));
        let result = ::redis::pipe()
            .atomic()
            .zrem(UNACKED_INDEX, &tags)
            .hdel(UNACKED, &tags)
            .query_async::<()>(&mut conn)
            .await;
        for request in batch.drain(..) {
            let _ = request.done.send(result.clone());
        }
    }
}

/// Aborts the waiter tasks when the fetcher ends, which drops their connections.
struct Waiters(Vec<JoinHandle<()>>);

impl Drop for Waiters {
    fn drop(&mut self) {
        for w in &self.0 {
            w.abort();
        }
    }
}

/// Free prefetch slots, one permit per message to take: at least one (waiting for it), and
/// whatever else is free, up to [`TAKE_MAX`]. When fewer than `low` are free the window is
/// nearly full, so the worker has plenty in hand: wait up to [`FILL_WAIT`] for `low`, so
/// that a deep queue is taken in batches rather than a message or two per round trip.
async fn acquire_slots(
    slots: &Arc<Semaphore>,
    low: usize,
) -> Result<Vec<OwnedSemaphorePermit>, tokio::sync::AcquireError> {
    let first = slots.clone().acquire_owned().await?;
    let mut permits = Vec::with_capacity(TAKE_MAX);
    permits.push(first);
    if low > 1 && slots.available_permits() < low - 1 {
        let more = slots.clone().acquire_many_owned((low - 1) as u32);
        if let Ok(Ok(more)) = tokio::time::timeout(FILL_WAIT, more).await {
            split_permits(more, &mut permits);
        }
    }
    more_slots(slots, &mut permits);
    Ok(permits)
}

/// Add the slots free right now to `permits`, up to [`TAKE_MAX`] in all.
fn more_slots(slots: &Arc<Semaphore>, permits: &mut Vec<OwnedSemaphorePermit>) {
    let want = TAKE_MAX.saturating_sub(permits.len());
    let free = slots.available_permits().min(want);
    if free > 0
        && let Ok(more) = slots.clone().try_acquire_many_owned(free as u32)
    {
        split_permits(more, permits);
    }
}

fn split_permits(mut permit: OwnedSemaphorePermit, out: &mut Vec<OwnedSemaphorePermit>) {
    while permit.num_permits() > 1 {
        if let Some(one) = permit.split(1) {
            out.push(one);
        }
    }
    out.push(permit);
}

async fn fetch_loop(
    broker: RedisBroker,
    mut cycle: Vec<String>,
    slots: Arc<Semaphore>,
    window: usize,
    tx: mpsc::Sender<Result<Delivery, BrokerError>>,
    mut stop: watch::Receiver<bool>,
) {
    let wake = Arc::new(Notify::new());
    let (arm, _) = watch::channel(0u64);
    let mut waiters = Waiters(Vec::new());
    // The first queue's step-0 list (where messages without a priority go) is watched by the
    // leader, which sends the take pipelined behind its BLMOVE; every other list by a plain
    // waiter, whose wake-up cuts the leader's BLMOVE short so that its take runs at once.
    let lead_key = queue_key(&cycle[0], 0);
    let mut leader = Leader::new(&broker, lead_key.clone());
    for step in PRIORITY_STEPS {
        for q in &cycle {
            let key = queue_key(q, step);
            if key == lead_key {
                continue;
            }
            let task = wait_loop(
                broker.inner.client.clone(),
                key,
                arm.subscribe(),
                wake.clone(),
            );
            waiters.0.push(tokio::spawn(task));
        }
    }
    // While the prefetch window is full the worker has plenty to do: wait until a quarter of
    // it is free again and take that in one round trip, rather than one message per slot.
    let low = (window / 4).clamp(1, TAKE_MAX);
    let mut generation = 0u64;
    let mut error_reported = false;
    // The last take found every list empty (it took fewer messages than it could): block
    // in the waiters before taking again, rather than spend a take to learn it once more.
    let mut drained = false;
    // A batch taken while the previous one was being handed out.
    let mut ahead: Option<Leased> = None;
    loop {
        if drained && ahead.is_none() {
            drained = false;
            // Let what was just handed out run first: the consume loop, then the message's
            // pipeline, which writes the result a caller may be waiting for. Arming the
            // leader wakes its connection's task; on a multi-threaded runtime a
            // second task woken in the same poll would take the consume loop's place as the
            // next task of this thread and wake another thread for it. Deferred, the
            // leader is armed once this thread has nothing else to run (microseconds: the
            // next message takes its round trip anyway).
            tokio::task::yield_now().await;
            // Wake the waiters; a message pushed since the take makes BLMOVE return at once.
            generation += 1;
            arm.send_replace(generation);
            // The leader's take needs the slots it may fill before it is sent.
            let permits = tokio::select! {
                biased;
                _ = stopped(&mut stop) => return,
                p = acquire_slots(&slots, low) => match p { Ok(p) => p, Err(_) => return },
            };
            let lease = Lease {
                permits,
                cycle: cycle.clone(),
            };
            // Handed out below as any take is (also when stopping: `close` then restores
            // it from the channel).
            ahead = Some(leader.take(&broker, lease, &wake, &mut stop).await);
        }
        let (mut permits, taken) = match ahead.take() {
            Some(batch) => batch,
            None => {
                let permits = tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => return,
                    p = acquire_slots(&slots, low) => match p { Ok(p) => p, Err(_) => return },
                };
                // The take itself is never cancelled: once the script has run, its messages
                // must reach the channel (or be restored), not vanish into `unacked`.
                let taken = broker.take(&cycle, permits.len()).await;
                (permits, taken)
            }
        };
        match taken {
            Ok((batch, _)) if batch.is_empty() => {
                drop(permits);
                drained = true;
            }
            Ok((batch, received_at)) => {
                error_reported = false;
                let full = batch.len() == permits.len();
                // The script stops early only when every list is empty.
                drained = !full;
                for item in &batch {
                    match item {
                        Taken::Message { queue, .. } | Taken::DeadLettered { queue, .. } => {
                            rotate(&mut cycle, queue);
                        }
                    }
                }
                // Each message keeps one slot; the rest go back now.
                let messages = batch
                    .iter()
                    .filter(|t| matches!(t, Taken::Message { .. }))
                    .count();
                permits.truncate(messages);
                let deliveries = deliver_batch(&broker, &tx, batch, received_at, permits);
                // A full batch says the queues are deep: take the next one while this one is
                // handed out (decoding it overlaps the round trip), if enough slots are free
                // for it to be worth a round trip (else `acquire_slots` waits for them).
                let mut next = Vec::new();
                if full && slots.available_permits() >= low && !*stop.borrow() && !tx.is_closed() {
                    more_slots(&slots, &mut next);
                }
                if next.is_empty() {
                    deliveries.await;
                } else {
                    let (taken, ()) = tokio::join!(broker.take(&cycle, next.len()), deliveries);
                    ahead = Some((next, taken));
                }
                if tx.is_closed() && ahead.is_none() {
                    return;
                }
            }
            Err(e) => {
                drop(permits);
                tracing::warn!(error = %e, "taking messages from redis failed; retrying");
                if !error_reported {
                    error_reported = true;
                    let _ = tx.try_send(Err(e));
                }
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(RETRY_BACKOFF) => {}
                }
            }
        }
    }
}

/// What the fetcher hands the leader: the prefetch slots its take may fill (one message
/// each) and the queue cycle to take in.
struct Lease {
    permits: Vec<OwnedSemaphorePermit>,
    cycle: Vec<String>,
}

/// A take's slots and outcome (the messages and when they were taken).
type Leased = (
    Vec<OwnedSemaphorePermit>,
    Result<(Vec<Taken>, f64), BrokerError>,
);

/// The waiter whose `BLMOVE` carries the take: it sends `BLMOVE key key RIGHT RIGHT <t>`
/// and the take script together, so Redis runs the take the moment the BLMOVE unblocks,
/// and both replies come back at once. A message pushed to an idle worker's queue is then
/// in hand one round trip after the push (a plain waiter wakes the fetcher, which only
/// then sends the take). The BLMOVE is a wait that leaves the list as it is; the take is
/// the same atomic script as the fetcher's, recording each message in `unacked` as it pops
/// it, so at every instant a message is in its list or in `unacked`. Its reply is never
/// dropped while the consumer runs: the fetcher waits for it, also when stopping (it cuts
/// the BLMOVE short with `CLIENT UNBLOCK`, the take runs, and what it took is handed out
/// for `close` to restore).
///
/// The fetcher drives the leader itself (no task of its own): the reply is handed out by
/// the task that awaited it, one wake-up fewer between the take's reply and the consumer.
struct Leader {
    client: ::redis::Client,
    key: String,
    config: AsyncConnectionConfig,
    /// The leader's own connection (a blocked command holds its connection).
    conn: Option<MultiplexedConnection>,
    /// `CLIENT ID` of the leader's connection (0 while it has none), for `CLIENT UNBLOCK`.
    id: std::sync::atomic::AtomicI64,
}

impl Leader {
    fn new(broker: &RedisBroker, key: String) -> Leader {
        Leader {
            client: broker.inner.client.clone(),
            key,
            // The response timeout is longer than the block so only a dead connection
            // times out.
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(BLOCK_SECS + 10))),
            conn: None,
            id: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// `BLMOVE` + take with the slots of `lease`, and wait for both replies: until a
    /// message reaches the leader's list, the BLMOVE times out, or a plain waiter (another
    /// list) or a stop asks to cut it short.
    async fn take(
        &mut self,
        broker: &RedisBroker,
        lease: Lease,
        wake: &Notify,
        stop: &mut watch::Receiver<bool>,
    ) -> Leased {
        let Leader {
            client,
            key,
            config,
            conn,
            id,
        } = self;
        let taken = {
            let once = lead_once(client, config, conn, key, &lease, id);
            tokio::pin!(once);
            let mut cut = false;
            let mut unblocked = false;
            loop {
                tokio::select! {
                    biased;
                    taken = &mut once => break taken,
                    _ = stopped(stop), if !cut => cut = true,
                    _ = wake.notified(), if !cut => cut = true,
                    _ = tokio::time::sleep(UNBLOCK_RETRY), if cut && !unblocked => {}
                }
                if cut && !unblocked {
                    unblocked = unblock(broker, id).await;
                }
            }
        };
        if taken.is_err() {
            *conn = None;
            id.store(0, std::sync::atomic::Ordering::Release);
        }
        (lease.permits, taken.map(|batch| (batch, now_secs())))
    }
}

/// `CLIENT UNBLOCK` the leader's BLMOVE (it returns as on a timeout, and the take behind
/// it runs). False when it was not blocked (yet): ask again. True as well when the
/// server refuses the command: the BLMOVE then ends on its timeout.
async fn unblock(broker: &RedisBroker, id: &std::sync::atomic::AtomicI64) -> bool {
    let id = id.load(std::sync::atomic::Ordering::Acquire);
    if id == 0 {
        return false;
    }
    let unblocked: Result<i64, _> = ::redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(id)
        .query_async(&mut broker.conn())
        .await;
    match unblocked {
        Ok(n) => n == 1,
        Err(e) => {
            tracing::debug!(error = %e, "CLIENT UNBLOCK failed; the leader's BLMOVE ends on its timeout");
            true
        }
    }
}

async fn lead_once(
    client: &::redis::Client,
    config: &AsyncConnectionConfig,
    conn: &mut Option<MultiplexedConnection>,
    key: &str,
    lease: &Lease,
    id: &std::sync::atomic::AtomicI64,
) -> Result<Vec<Taken>, BrokerError> {
    let c = match conn {
        Some(c) => c,
        None => {
            let mut c = client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map_err(redis_err("connect (leader)"))?;
            let client_id: i64 = ::redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut c)
                .await
                .map_err(redis_err("CLIENT ID"))?;
            // Loaded first: a pipelined EVALSHA cannot load its script on NOSCRIPT.
            TAKE.prepare_invoke()
                .load_async(&mut c)
                .await
                .map_err(redis_err("SCRIPT LOAD take"))?;
            id.store(client_id, std::sync::atomic::Ordering::Release);
            conn.insert(c)
        }
    };
    let mut pipe = ::redis::pipe();
    pipe.cmd("BLMOVE")
        .arg(key)
        .arg(key)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(BLOCK_SECS)
        .add_command(take_command(&lease.cycle, lease.permits.len()))
        .ignore_errors();
    let replies: Vec<::redis::Value> = pipe
        .query_async(c)
        .await
        .map_err(redis_err("BLMOVE + EVALSHA take"))?;
    match replies.into_iter().nth(1) {
        Some(::redis::Value::ServerError(e))
            if e.kind() == Some(::redis::ServerErrorKind::NoScript) =>
        {
            // The scripts were flushed: nothing was taken. Load it again; the next lease's
            // BLMOVE returns at once if a message is there.
            TAKE.prepare_invoke()
                .load_async(c)
                .await
                .map_err(redis_err("SCRIPT LOAD take"))?;
            Ok(Vec::new())
        }
        Some(::redis::Value::ServerError(e)) => Err(BrokerError::Redis {
            command: "EVALSHA take",
            source: e.into(),
        }),
        Some(reply) => parse_take(reply, &lease.cycle),
        None => Err(BrokerError::UnexpectedReply {
            command: "BLMOVE + EVALSHA take",
            detail: "fewer than two replies".into(),
        }),
    }
}

/// Hand out one taken batch in order, one prefetch slot per message.
async fn deliver_batch(
    broker: &RedisBroker,
    tx: &mpsc::Sender<Result<Delivery, BrokerError>>,
    batch: Vec<Taken>,
    received_at: f64,
    permits: Vec<OwnedSemaphorePermit>,
) {
    let mut permits = permits.into_iter();
    for item in batch {
        match item {
            Taken::Message {
                queue,
                envelope,
                tag,
            } => {
                let Some(permit) = permits.next() else {
                    // Cannot happen: one permit was kept per message.
                    tracing::error!(%queue, "taken message without a prefetch slot; left for the visibility restore");
                    continue;
                };
                deliver(broker, tx, queue, envelope, tag, received_at, permit).await;
            }
            Taken::DeadLettered { queue, reason } => {
                tracing::error!(%queue, %reason, "undecodable envelope moved to {DEAD_LETTER_KEY}");
            }
        }
    }
}

/// Turn a taken envelope, recorded in `unacked` under `tag`, into a delivery on the
/// channel, or dead-letter it.
async fn deliver(
    broker: &RedisBroker,
    tx: &mpsc::Sender<Result<Delivery, BrokerError>>,
    queue: String,
    envelope: Vec<u8>,
    tag: Option<String>,
    received_at: f64,
    permit: OwnedSemaphorePermit,
) {
    let decoded = decode_parts(&envelope);
    let mut acker = RedisAcker {
        broker: broker.clone(),
        queue,
        envelope,
        received_at,
    };
    let Some(tag) = tag else {
        // The entry is in `unacked` under a tag we cannot name, so the visibility restore
        // will bring it back.
        tracing::error!(queue = %acker.queue, "envelope taken under a tag that is not UTF-8; left for the visibility restore");
        return;
    };
    match decoded {
        Ok((message, parsed)) => {
            if parsed.as_deref() != Some(tag.as_str()) {
                // Only for JSON the two parsers read differently (e.g. duplicate keys): the
                // bookkeeping is under the script's tag, so that one settles it.
                tracing::warn!(delivery_tag = %tag, parsed = ?parsed, "envelope's delivery tag read differently here; using the recorded one");
            }
            // Read: the copy kept for a dead-letter entry (~1 KB) need not live as long as
            // the delivery; should the pipeline dead-letter the message after all (its body
            // does not decode), the envelope is read back from `unacked`.
            acker.park();
            let delivery = Delivery::new(message, tag, Acker::Redis(acker), Some(permit));
            if let Err(mpsc::error::SendError(Ok(d))) = tx.send(Ok(delivery)).await {
                // The consumer is gone: hand the message straight back.
                let _ = d.restore().await;
            }
        }
        Err(reason) => {
            if let Err(e) = acker.dead_letter(&tag, &reason).await {
                tracing::error!(error = %e, delivery_tag = %tag, "dead-lettering failed; left in unacked");
            }
        }
    }
}

/// Wait for `key` to hold an element, without taking it, each time the fetcher arms us.
async fn wait_loop(
    client: ::redis::Client,
    key: String,
    mut arm: watch::Receiver<u64>,
    wake: Arc<Notify>,
) {
    // Own connection: a blocked command holds its connection. The response timeout is
    // longer than the block so only a dead connection times out.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(BLOCK_SECS + 10)));
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        if arm.changed().await.is_err() {
            return;
        }
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::debug!(%key, error = %e, "waiter cannot connect; retrying");
                        wake.notify_one();
                        tokio::time::sleep(RETRY_BACKOFF).await;
                        continue;
                    }
                },
            };
            let moved: Result<Option<Vec<u8>>, _> = ::redis::cmd("BLMOVE")
                .arg(&key)
                .arg(&key)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(BLOCK_SECS)
                .query_async(c)
                .await;
            match moved {
                Ok(Some(_)) => {
                    wake.notify_one();
                    break;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(%key, error = %e, "waiter BLMOVE failed; reconnecting");
                    conn = None;
                    wake.notify_one();
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
    }
}

async fn restore_loop(broker: RedisBroker, mut stop: watch::Receiver<bool>) {
    let interval = broker.inner.opts.restore_interval;
    loop {
        if let Err(e) = broker.restore_visible().await {
            tracing::warn!(error = %e, "visibility restore failed");
        }
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// kombu 5.7's binding refresh for a queue declared with `x-expires`: add the binding
/// member and push the exchange's deadline in `_kombu.binding_deadlines` to at least
/// `ttl` ms from now by the server's clock (`ZADD GT`), so kombu's sweep keeps the table.
/// KEYS: binding set, deadline set; ARGV: member, exchange, ttl in ms.
static BIND_EXPIRING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('SADD', KEYS[1], ARGV[1])\n\
         local t = redis.call('TIME')\n\
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n\
         redis.call('ZADD', KEYS[2], 'GT', now + tonumber(ARGV[3]), ARGV[2])\n",
    )
});
const BINDING_DEADLINES: &str = "_kombu.binding_deadlines";
/// kombu's `MIN_BINDING_TTL` (one hour) and `BINDING_EXPIRES_FACTOR` (2), in ms.
const MIN_BINDING_TTL_MS: u128 = 3_600_000;
const BINDING_EXPIRES_FACTOR: u128 = 2;

/// kombu's fanout channel name (`_get_publish_topic`): `keyprefix_fanout` (`/<db>.`), the
/// exchange, and `/<routing_key>` when the routing key is not empty (`fanout_patterns`).
pub fn fanout_channel(db: i64, exchange: &str, routing_key: &str) -> String {
    if routing_key.is_empty() {
        format!("/{db}.{exchange}")
    } else {
        format!("/{db}.{exchange}/{routing_key}")
    }
}

/// kombu's binding member: `routing_key, pattern, queue` joined by [`SEP`].
fn binding_member(routing_key: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{SEP}{queue}")
}

/// kombu's binding table lifetime for a queue with `x-expires` (`_binding_ttl`), in ms.
fn binding_ttl_ms(expires: Option<Duration>) -> u128 {
    expires
        .map_or(0, |e| e.as_millis() * BINDING_EXPIRES_FACTOR)
        .max(MIN_BINDING_TTL_MS)
}

impl RedisBroker {
    /// `PUBLISH` kombu's envelope of `msg` on the fanout channel of `exchange` (see
    /// [`AnyBroker::publish_fanout`](super::AnyBroker::publish_fanout)).
    pub async fn publish_fanout(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let tag = uuid::Uuid::new_v4().to_string();
        let text = to_python_json(&envelope(msg, exchange, routing_key, &tag));
        ::redis::cmd("PUBLISH")
            .arg(fanout_channel(self.inner.url.db, exchange, routing_key))
            .arg(text)
            .query_async::<i64>(&mut self.conn())
            .await
            .map(drop)
            .map_err(redis_err("PUBLISH"))
    }

    /// Declare a reply queue as kombu 5.7 declares a queue with `x-expires` (the binding
    /// member in `_kombu.binding.<exchange>` and the exchange's deadline in
    /// `_kombu.binding_deadlines`, one script), and open the connection its `BRPOP`s block.
    pub async fn declare_reply_queue(
        &self,
        spec: &super::ReplyQueueSpec,
    ) -> Result<RedisReplyQueue, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(None);
        let conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| BrokerError::Connect {
                url: self.describe(),
                source,
            })?;
        let member = binding_member(&spec.routing_key, &spec.queue);
        let ttl = binding_ttl_ms(spec.expires);
        BIND_EXPIRING
            .key(format!("{BINDING_PREFIX}{}", spec.exchange))
            .key(BINDING_DEADLINES)
            .arg(&member)
            .arg(&spec.exchange)
            .arg(ttl.to_string())
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(redis_err("EVALSHA bind reply queue"))?;
        Ok(RedisReplyQueue {
            broker: self.clone(),
            conn,
            exchange: spec.exchange.clone(),
            queue: spec.queue.clone(),
            member,
        })
    }
}

/// A reply queue on Redis: a list (one per priority step) that repliers `LPUSH` to through
/// the binding, popped with `BRPOP` on a connection of its own.
pub struct RedisReplyQueue {
    broker: RedisBroker,
    conn: MultiplexedConnection,
    exchange: String,
    queue: String,
    member: String,
}

impl RedisReplyQueue {
    fn keys(&self) -> Vec<String> {
        PRIORITY_STEPS
            .iter()
            .map(|s| queue_key(&self.queue, *s))
            .collect()
    }

    /// The next envelope, decoded; `None` after `timeout` without one (kombu's `BRPOP` of
    /// the priority keys in order).
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<RawMessage>, BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let popped: Option<(String, Vec<u8>)> = if left < Duration::from_millis(1) {
                // BRPOP 0 would block for ever: one look without blocking instead.
                let mut found = None;
                for key in self.keys() {
                    let item: Option<Vec<u8>> = ::redis::cmd("RPOP")
                        .arg(&key)
                        .query_async(&mut self.conn)
                        .await
                        .map_err(redis_err("RPOP"))?;
                    if let Some(item) = item {
                        found = Some((key, item));
                        break;
                    }
                }
                found
            } else {
                let mut cmd = ::redis::cmd("BRPOP");
                for key in self.keys() {
                    cmd.arg(key);
                }
                cmd.arg(format!("{:.3}", left.as_secs_f64()));
                // The connection has no response timeout (the block is the wait); this one
                // notices a dead connection.
                let guard = left + Duration::from_secs(10);
                match tokio::time::timeout(guard, cmd.query_async(&mut self.conn)).await {
                    Ok(popped) => popped.map_err(redis_err("BRPOP"))?,
                    Err(_) => {
                        return Err(BrokerError::Redis {
                            command: "BRPOP",
                            source: std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "no answer from Redis",
                            )
                            .into(),
                        });
                    }
                }
            };
            let Some((_, envelope)) = popped else {
                return Ok(None);
            };
            match decode_envelope(&envelope) {
                Ok(message) => return Ok(Some(message)),
                Err(reason) => {
                    tracing::warn!(queue = %self.queue, %reason, "undecodable reply skipped");
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// kombu's `queue_delete`: remove the binding (`_kombu.binding.<exchange>` and
    /// `_kombu.binding_permanent.<exchange>`) and the lists.
    pub async fn delete(self) -> Result<(), BrokerError> {
        let mut pipe = ::redis::pipe();
        pipe.srem(format!("{BINDING_PREFIX}{}", self.exchange), &self.member)
            .ignore()
            .srem(
                format!("{BINDING_PERMANENT_PREFIX}{}", self.exchange),
                &self.member,
            )
            .ignore();
        for key in self.keys() {
            pipe.del(key).ignore();
        }
        pipe.query_async::<()>(&mut self.broker.conn())
            .await
            .map_err(redis_err("delete reply queue"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_channels_and_binding_lifetimes_follow_kombu() {
        assert_eq!(fanout_channel(7, "celery.pidbox", ""), "/7.celery.pidbox");
        assert_eq!(fanout_channel(0, "ex", "a.b"), "/0.ex/a.b");
        assert_eq!(binding_member("oid", "oid.q"), "oid\x06\x16\x06\x16oid.q");
        assert_eq!(binding_ttl_ms(Some(Duration::from_secs(10))), 3_600_000);
        assert_eq!(binding_ttl_ms(Some(Duration::from_secs(7200))), 14_400_000);
        assert_eq!(binding_ttl_ms(None), 3_600_000);
    }

    #[test]
    fn priority_keys_match_kombu() {
        assert_eq!(queue_key("celery", 0), "celery");
        assert_eq!(queue_key("celery", 3), "celery\x06\x163");
        assert_eq!(queue_key("celery", 9), "celery\x06\x169");
    }

    #[test]
    fn topic_patterns_match_like_amqp() {
        for (p, k, want) in [
            ("media.#", "media.images", true),
            ("media.#", "media", true),
            ("media.#", "media.a.b", true),
            ("media.*", "media.images", true),
            ("media.*", "media.a.b", false),
            ("media.*", "media", false),
            ("#", "anything.at.all", true),
            ("*.images", "media.images", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("exact", "exact", true),
            ("exact", "other", false),
        ] {
            assert_eq!(topic_matches(p, k), want, "{p} vs {k}");
        }
    }

    #[test]
    fn envelope_round_trips_a_captured_message_byte_for_byte() {
        let vector = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/vectors/redis/broker/v2_countdown_expires_priority.json"
        ))
        .unwrap();
        let raw = decode_envelope(&vector).unwrap();
        assert_eq!(raw.delivery_info.priority, Some(5));
        assert_eq!(raw.delivery_info.routing_key, "celery");
        let original: Value = serde_json::from_slice(&vector).unwrap();
        let tag = original
            .pointer("/properties/delivery_tag")
            .unwrap()
            .as_str()
            .unwrap();
        let again = to_python_json(&envelope(&raw, "", "celery", tag));
        assert_eq!(again.as_bytes(), vector.as_slice());
    }

    #[test]
    fn the_one_pass_decode_reads_every_captured_envelope_as_the_value_path_does() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/redis");
        let (mut seen, mut typed_seen) = (0, 0);
        for sub in ["broker", "ack-emulation", "worker-default"] {
            for entry in std::fs::read_dir(format!("{dir}/{sub}")).unwrap() {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                if !v.contains_key("properties") || !v.contains_key("body") {
                    continue;
                }
                let fast = decode_fast(&bytes).map(assemble);
                let slow = decode_slow(&bytes).map(assemble);
                assert!(fast.is_some(), "{path:?}");
                let (fast, slow) = (fast.unwrap().unwrap().0, slow.unwrap().unwrap().0);
                // The task headers read straight from the envelope's JSON are the ones
                // its header map gives (before anything asks for that map).
                if slow.headers.contains_key("task") {
                    let typed = crate::protocol::TaskHeaders::from_headers(&fast.headers);
                    assert_eq!(
                        typed.unwrap(),
                        crate::protocol::TaskHeaders::from_map(&slow.headers).unwrap(),
                        "{path:?}"
                    );
                    typed_seen += 1;
                }
                assert_eq!(fast, slow, "{path:?}");
                seen += 1;
            }
        }
        assert!(seen >= 10, "only {seen} envelopes found");
        assert!(typed_seen >= 5, "only {typed_seen} task envelopes found");
        // What the struct rejects goes the Value way: duplicate keys, null properties,
        // headers that are not an object.
        let odd = br#"{"headers": [1], "properties": {}}"#;
        assert!(decode_fast(odd).is_none());
        assert!(
            decode_parts(odd)
                .unwrap_err()
                .contains("headers is not an object")
        );
        // Escaped keys and text in the headers read as the map reads them.
        let esc = br#"{"headers": {"t\u0061sk": "a\"b", "id": "i\n", "x-\u00e9": [1]}, "properties": {}}"#;
        let (m, _) = decode_parts(esc).unwrap();
        let typed = crate::protocol::TaskHeaders::from_headers(&m.headers).unwrap();
        assert_eq!((typed.task.as_str(), typed.id.as_str()), ("a\"b", "i\n"));
        assert_eq!(typed.extra["x-\u{e9}"], serde_json::json!([1]));
        assert_eq!(m.headers.get("task"), Some(&serde_json::json!("a\"b")));
        let dup = br#"{"body": "e30=", "body": "W10=", "properties": {"body_encoding": "base64", "delivery_tag": "t"}}"#;
        assert!(decode_fast(dup).is_none());
        let (m, tag) = decode_parts(dup).unwrap();
        assert_eq!((m.body.as_slice(), tag.as_deref()), (&b"[]"[..], Some("t")));
        assert!(decode_parts(br#"{"body": "", "properties": null}"#).is_err());
        let (m, _) = decode_parts(br#"{"headers": null, "properties": {}}"#).unwrap();
        assert!(m.headers.is_empty() && m.body.is_empty());
    }

    #[test]
    fn bad_envelopes_give_reasons() {
        assert!(
            decode_envelope(b"{nope")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(
            decode_envelope(br#"{"body": "@@@", "properties": {"body_encoding": "base64"}}"#)
                .unwrap_err()
                .contains("base64")
        );
        assert!(
            decode_envelope(br#"{"body": "x"}"#)
                .unwrap_err()
                .contains("properties")
        );
        let raw = decode_envelope(br#"{"body": "plain", "properties": {}}"#).unwrap();
        assert_eq!(raw.body, b"plain");
    }

    #[test]
    fn dead_letter_entries_are_python_json() {
        let e = dead_letter_entry("bad \"x\"", "celery", 1.5, b"{\xff");
        assert_eq!(
            e,
            r#"{"reason": "bad \"x\"", "queue": "celery", "received_at": 1.5, "envelope": "{\u00ff"}"#
        );
    }
}
