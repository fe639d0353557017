//! Celery's Redis result backend (PROTOCOL.md section 6.2).
//!
//! Each state change is written as `celery/backends/redis.py` writes it: the key, the value
//! bytes, the expiry and the pub/sub message are Celery's. Celery sends
//!
//! ```text
//! GET celery-task-meta-<id>                 # a stored SUCCESS is final: stop here
//! MULTI
//! SETEX celery-task-meta-<id> <expires> <value>   (SET when results never expire)
//! PUBLISH celery-task-meta-<id> <value>           # pushes the value to waiting clients
//! EXEC
//! ```
//!
//! in two round trips; here the same commands run in one script (`redis/store.lua`, by
//! `EVALSHA`), one round trip, the check and the write in one atomic step. A server that
//! refuses scripts (an ACL without `EVALSHA`, a proxy without scripting) gets Celery's
//! sequence instead.
//!
//! Python clients `SUBSCRIBE` to the key's channel while they wait, so the PUBLISH is what
//! makes `AsyncResult.get()` return promptly. Waiting here works the same way, with one
//! subscriber connection per backend however many results are awaited (see [`RedisBackend::wait`]):
//!
//! ```text
//! SUBSCRIBE celery-task-meta-<id> ...       # when an id is first awaited; once confirmed:
//! MGET celery-task-meta-<id> ...            # a result stored before the SUBSCRIBE is seen
//! UNSUBSCRIBE celery-task-meta-<id> ...     # when the last waiter of an id leaves
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::io::tcp::TcpSettings;
use tokio::sync::mpsc;

use super::waiters::{Waiter, Waiters};
use super::{BackendError, BackendOptions, mask_password};
use crate::protocol::{ResultMeta, TaskState};

/// The key (and pub/sub channel) prefix of task results.
pub const TASK_KEY_PREFIX: &str = "celery-task-meta-";

/// The largest value Celery's Redis backend will store (`_MAX_STR_VALUE_SIZE`, 512 MiB).
const MAX_VALUE_SIZE: usize = 512 * 1024 * 1024;

/// How long one command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the first connection may take before `connect` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Celery's store (duplicate guard, SET/SETEX, PUBLISH) as one script.
static STORE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("redis/store.lua")));

/// The Redis key (and channel) holding a task's result.
pub fn task_key(task_id: &str) -> String {
    format!("{TASK_KEY_PREFIX}{task_id}")
}

/// A connection to a Redis result backend; clones share the connection.
///
/// Commands go over one multiplexed connection that reconnects by itself after a failure
/// (the failing command still reports its error, so the caller can decide to retry).
#[derive(Clone)]
pub struct RedisBackend {
    client: redis::Client,
    conn: ConnectionManager,
    url: String,
    opts: BackendOptions,
    hub: Arc<Hub>,
    /// Set once the server refused the store script: Celery's command sequence from then on.
    no_scripts: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client and URL may hold a password: show only the masked URL.
        f.debug_struct("RedisBackend")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connect to `redis://[[user]:password@]host[:port][/db]` (or `rediss://`); fails at
    /// once if the server cannot be reached.
    pub async fn connect(url: &str, opts: BackendOptions) -> Result<Self, BackendError> {
        let masked = mask_password(url);
        let invalid = |e: redis::RedisError| BackendError::InvalidUrl {
            url: masked.clone(),
            reason: e.to_string(),
        };
        // TCP_NODELAY (redis-py sets it; redis-rs does not by default): with Nagle's
        // algorithm a command written while another is unanswered on the same connection
        // (two tasks storing at once, a SUBSCRIBE after an UNSUBSCRIBE) waits for that reply.
        let info = url
            .into_connection_info()
            .map_err(invalid)?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(invalid)?;
        // redis-rs answers a command that takes longer than 500 ms with an error by default;
        // on a loaded machine that would lose a result, so allow as long as the broker does.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|source| BackendError::Connect {
                url: masked.clone(),
                source,
            })?;
        Ok(Self {
            client,
            conn,
            url: masked,
            opts,
            hub: Arc::default(),
            no_scripts: Arc::default(),
        })
    }

    /// The backend URL, password masked.
    pub fn describe(&self) -> String {
        self.url.clone()
    }

    /// The options results are written with.
    pub fn options(&self) -> &BackendOptions {
        &self.opts
    }

    /// Store a state change as Celery does (key, bytes, expiry, PUBLISH), in one round trip;
    /// a stored SUCCESS is never overwritten.
    pub async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        let key = task_key(&meta.task_id);
        let value = meta.encode(self.opts.serializer)?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(BackendError::TooLarge {
                task_id: meta.task_id.clone(),
                len: value.len(),
            });
        }
        // SETEX takes whole seconds; round a sub-second expiry up so it is not 0 (which
        // Redis rejects).
        let expires = self
            .opts
            .expires_for(meta.status)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        let mut conn = self.conn.clone();
        if !self.no_scripts.load(Ordering::Relaxed) {
            let mut store = STORE.key(&key);
            store.arg(&value);
            match expires {
                Some(secs) => store.arg(secs),
                None => store.arg(""),
            };
            match store.invoke_async::<i64>(&mut conn).await {
                Ok(_) => return Ok(()),
                Err(e) if is_connection_error(&e) => {
                    return Err(BackendError::Redis {
                        op: "EVALSHA store",
                        source: e,
                    });
                }
                Err(e) => {
                    if refuses_scripts(&e) {
                        tracing::warn!(error = %e, "the result backend refuses scripts: storing with GET, then MULTI/EXEC (two round trips)");
                        self.no_scripts.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        self.store_in_two_round_trips(&key, &value, expires).await
    }

    /// Celery's own sequence: `GET` (a stored SUCCESS is final), then `MULTI; SETEX` (or
    /// `SET`) `; PUBLISH; EXEC`.
    async fn store_in_two_round_trips(
        &self,
        key: &str,
        value: &[u8],
        expires: Option<u64>,
    ) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        // Celery's duplicate guard: a lost or redelivered task must not replace a result
        // the caller may already have read. Like Celery, this GET is outside the MULTI.
        let current: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|source| BackendError::Redis { op: "GET", source })?;
        if let Some(bytes) = current
            && ResultMeta::from_slice(&bytes).is_ok_and(|m| m.status == TaskState::Success)
        {
            return Ok(());
        }

        let mut pipe = redis::pipe();
        pipe.atomic();
        match expires {
            Some(secs) => {
                pipe.cmd("SETEX").arg(key).arg(secs).arg(value).ignore();
            }
            None => {
                pipe.cmd("SET").arg(key).arg(value).ignore();
            }
        }
        pipe.cmd("PUBLISH").arg(key).arg(value).ignore();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|source| BackendError::Redis {
                op: "MULTI/EXEC",
                source,
            })
    }

    /// The stored state of a task, `None` when there is none (PENDING to Celery).
    pub async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(task_key(task_id));
        // After a lost connection the manager reconnects, but the command that found the
        // connection gone fails; a read is safe to send once more.
        let bytes: Option<Vec<u8>> = match get.query_async(&mut conn).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                get.query_async(&mut conn).await
            }
            other => other,
        }
        .map_err(|source| BackendError::Redis { op: "GET", source })?;
        bytes
            .map(|b| ResultMeta::from_slice(&b))
            .transpose()
            .map_err(|source| BackendError::Decode {
                task_id: task_id.to_owned(),
                source,
            })
    }

    /// Wait until the task reaches a ready state, pushed over pub/sub as Celery's own client
    /// does; `Ok(None)` when `timeout` passes first.
    ///
    /// All waits of a backend (and its clones) share one subscriber connection: see
    /// the subscriber task in this module.
    pub async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultMeta>, BackendError> {
        let mut waiter = self.hub.join(self, task_id);
        Ok(tokio::time::timeout(timeout, waiter.ready()).await.ok())
    }

    /// Start listening for the task's result now, before its message is sent (Celery's
    /// `on_task_call`): the subscription is made while the message travels, so a later
    /// [`RedisBackend::wait`] costs no round trip of its own. Listening lasts as long as the
    /// returned waiter (or any other waiter of the task) lives.
    pub(crate) fn expect(&self, task_id: &str) -> Waiter {
        self.hub.join(self, task_id)
    }

    /// Delete a task's result (Celery's `AsyncResult.forget`).
    pub async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(task_key(task_id))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|source| BackendError::Redis { op: "DEL", source })
    }
}

/// Whether `e` comes from the connection (dropped, refused, timed out) rather than from
/// the server's answer.
fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Whether the server refuses scripts for good: an ACL without `EVALSHA`/`EVAL`/`SCRIPT`
/// (`NOPERM`), or a server or proxy without the commands.
fn refuses_scripts(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM")
        || e.to_string()
            .to_ascii_lowercase()
            .contains("unknown command")
}

/// The waits of one backend and its clones: the awaited ids and the one subscriber task.
#[derive(Default)]
struct Hub {
    waiters: Arc<Waiters>,
    /// Tells the subscriber which ids to look at again; `None` until the first wait. The
    /// subscriber ends once every sender is gone (the backend's last clone and its waiters).
    subscriber: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl Hub {
    fn join(&self, backend: &RedisBackend, task_id: &str) -> Waiter {
        let tx = self.subscriber(backend);
        let (waiter, first) = self.waiters.join_first(task_id, Some(tx.clone()));
        // After joining, so the subscriber finds the id awaited. A later waiter of an id
        // already awaited shares what the first one's subscription and read bring.
        if first {
            let _ = tx.send(task_id.to_owned());
        }
        waiter
    }

    /// The running subscriber, started now if there is none (or its runtime has gone).
    fn subscriber(&self, backend: &RedisBackend) -> mpsc::UnboundedSender<String> {
        let mut slot = self.subscriber.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(subscribe(
            backend.client.clone(),
            backend.conn.clone(),
            self.waiters.clone(),
            rx,
        ));
        *slot = Some(tx.clone());
        tx
    }
}

/// The longest pause between two reconnection attempts of the subscriber.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Channels per SUBSCRIBE / UNSUBSCRIBE / MGET command.
const BATCH: usize = 512;

/// How long the channel of an id nobody awaits any more stays subscribed before an
/// UNSUBSCRIBE (sooner once `BATCH` are due): unsubscribing in batches keeps that command
/// off the path of the next call's SUBSCRIBE.
const UNSUBSCRIBE_AFTER: Duration = Duration::from_millis(200);

/// Values read by MGET: `(task id, stored bytes)` for each key read.
type Read = Result<Vec<(String, Option<Vec<u8>>)>, redis::RedisError>;

/// The subscriber: one pub/sub connection for every awaited id of a backend.
///
/// `touched` names ids whose waiters came or went. For an id still awaited, the subscriber
/// subscribes to its channel (if it is not already) and, once the subscription is
/// confirmed, reads the key, so a result stored before is found; the read runs while
/// pushed messages go on being delivered. The channel of an id no longer awaited is
/// unsubscribed a little later, in a batch. After a lost connection it reconnects with
/// backoff and does the same for every awaited id.
async fn subscribe(
    client: redis::Client,
    conn: ConnectionManager,
    waiters: Arc<Waiters>,
    mut touched: mpsc::UnboundedReceiver<String>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "result subscriber cannot connect");
                if !pause(&mut touched, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        let mut subscribed = HashSet::new();
        let mut todo: HashSet<String> = waiters.ids().into_iter().collect();
        // Awaited ids whose keys are to be read, and the read under way.
        let mut to_read: Vec<String> = Vec::new();
        let mut reading: Option<std::pin::Pin<Box<dyn Future<Output = Read> + Send>>> = None;
        // Subscribed ids no longer awaited, and when to unsubscribe them.
        let mut gone: HashSet<String> = HashSet::new();
        let mut unsubscribe_at: Option<tokio::time::Instant> = None;
        let lost: redis::RedisError = loop {
            while let Ok(id) = touched.try_recv() {
                todo.insert(id);
            }
            if !todo.is_empty() {
                let ids = std::mem::take(&mut todo);
                match sync(&mut sink, &waiters, &mut subscribed, &mut gone, ids).await {
                    Ok(awaited) => to_read.extend(awaited),
                    Err(error) => break error,
                }
                backoff = Duration::from_millis(100);
            }
            if reading.is_none() && !to_read.is_empty() {
                reading = Some(Box::pin(read(conn.clone(), std::mem::take(&mut to_read))));
            }
            if gone.is_empty() {
                unsubscribe_at = None;
            } else if gone.len() >= BATCH {
                unsubscribe_at = Some(tokio::time::Instant::now());
            } else {
                unsubscribe_at
                    .get_or_insert_with(|| tokio::time::Instant::now() + UNSUBSCRIBE_AFTER);
            }
            tokio::select! {
                biased;
                msg = messages.next() => match msg {
                    Some(msg) => deliver(&waiters, &msg),
                    None => break std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the subscriber connection closed",
                    ).into(),
                },
                id = touched.recv() => match id {
                    Some(id) => { todo.insert(id); }
                    None => return,
                },
                read = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                    reading = None;
                    match read {
                        Ok(values) => for (id, value) in values {
                            if let Some(bytes) = value {
                                wake(&waiters, &id, &bytes);
                            }
                        },
                        Err(error) => break error,
                    }
                },
                () = sleep_until(unsubscribe_at) => {
                    if let Err(error) = unsubscribe(&mut sink, &waiters, &mut subscribed, &mut gone).await {
                        break error;
                    }
                },
            }
        };
        tracing::warn!(error = %lost, retry_in = ?backoff, "result subscriber lost its connection; reconnecting");
        if !pause(&mut touched, &mut backoff).await {
            return;
        }
    }
}

/// Sleep until `at`; never when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sleep `backoff` (then double it); `false` when nobody can wait any more.
async fn pause(touched: &mut mpsc::UnboundedReceiver<String>, backoff: &mut Duration) -> bool {
    let sleep = tokio::time::sleep(*backoff);
    tokio::pin!(sleep);
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            // Every awaited id is looked at after reconnecting anyway.
            id = touched.recv() => if id.is_none() { return false },
        }
    }
}

/// Subscribe to the touched ids still awaited (returned, for their keys to be read) and
/// mark the others for a later UNSUBSCRIBE.
async fn sync(
    sink: &mut PubSubSink,
    waiters: &Waiters,
    subscribed: &mut HashSet<String>,
    gone: &mut HashSet<String>,
    ids: HashSet<String>,
) -> Result<Vec<String>, redis::RedisError> {
    let (awaited, left): (Vec<String>, Vec<String>) =
        ids.into_iter().partition(|id| waiters.contains(id));
    for id in &awaited {
        gone.remove(id);
    }
    gone.extend(left.into_iter().filter(|id| subscribed.contains(id)));
    let to_subscribe: Vec<&String> = awaited
        .iter()
        .filter(|id| !subscribed.contains(*id))
        .collect();
    for chunk in to_subscribe.chunks(BATCH) {
        let keys: Vec<String> = chunk.iter().map(|id| task_key(id)).collect();
        // Returns once Redis has confirmed every channel.
        sink.subscribe(&keys).await?;
        subscribed.extend(chunk.iter().map(|id| (*id).clone()));
    }
    Ok(awaited)
}

/// UNSUBSCRIBE the channels of `gone` that nobody awaits again by now.
async fn unsubscribe(
    sink: &mut PubSubSink,
    waiters: &Waiters,
    subscribed: &mut HashSet<String>,
    gone: &mut HashSet<String>,
) -> Result<(), redis::RedisError> {
    let ids: Vec<String> = gone.drain().filter(|id| !waiters.contains(id)).collect();
    for chunk in ids.chunks(BATCH) {
        let keys: Vec<String> = chunk.iter().map(|id| task_key(id)).collect();
        sink.unsubscribe(&keys).await?;
        for id in chunk {
            subscribed.remove(id);
        }
    }
    Ok(())
}

/// MGET the keys of `ids` (in batches).
async fn read(mut conn: ConnectionManager, ids: Vec<String>) -> Read {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH) {
        let keys: Vec<String> = chunk.iter().map(|id| task_key(id)).collect();
        let values: Vec<Option<Vec<u8>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        out.extend(chunk.iter().cloned().zip(values));
    }
    Ok(out)
}

fn deliver(waiters: &Waiters, msg: &redis::Msg) {
    if let Some(id) = msg.get_channel_name().strip_prefix(TASK_KEY_PREFIX) {
        wake(waiters, id, msg.get_payload_bytes());
    }
}

/// Wake the waiters of `task_id` if `bytes` is a ready state (STARTED, RETRY: keep waiting).
fn wake(waiters: &Waiters, task_id: &str, bytes: &[u8]) {
    match ResultMeta::from_slice(bytes) {
        Ok(meta) if meta.is_ready() => {
            waiters.wake(task_id, &meta);
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(task_id, %error, "cannot read a pushed result; still waiting");
        }
    }
}
