//! Celery's Redis result backend (PROTOCOL.md section 6.2).
//!
//! Each state change is written exactly as `celery/backends/redis.py` writes it:
//!
//! ```text
//! GET celery-task-meta-<id>                 # a stored SUCCESS is final: stop here
//! MULTI
//! SETEX celery-task-meta-<id> <expires> <value>   (SET when results never expire)
//! PUBLISH celery-task-meta-<id> <value>           # pushes the value to waiting clients
//! EXEC
//! ```
//!
//! Python clients `SUBSCRIBE` to the key's channel while they wait, so the PUBLISH is what
//! makes `AsyncResult.get()` return promptly.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::{Instant, timeout_at};

use super::{BackendError, BackendOptions, mask_password};
use crate::protocol::{ResultMeta, TaskState};

/// The key (and pub/sub channel) prefix of task results.
pub const TASK_KEY_PREFIX: &str = "celery-task-meta-";

/// The largest value Celery's Redis backend will store (`_MAX_STR_VALUE_SIZE`, 512 MiB).
const MAX_VALUE_SIZE: usize = 512 * 1024 * 1024;

/// How long the first connection may take before `connect` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
        let client = redis::Client::open(url).map_err(|e| BackendError::InvalidUrl {
            url: masked.clone(),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new().set_connection_timeout(Some(CONNECT_TIMEOUT));
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

    /// Store a state change with Celery's command sequence; a stored SUCCESS is never
    /// overwritten.
    pub async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        let key = task_key(&meta.task_id);
        let value = meta.encode(self.opts.serializer)?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(BackendError::TooLarge {
                task_id: meta.task_id.clone(),
                len: value.len(),
            });
        }
        let mut conn = self.conn.clone();

        // Celery's duplicate guard: a lost or redelivered task must not replace a result
        // the caller may already have read. Like Celery, this GET is outside the MULTI.
        let current: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
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
        match self.opts.expires_for(meta.status) {
            // SETEX takes whole seconds; round a sub-second expiry up so it is not 0 (which
            // Redis rejects).
            Some(expires) => {
                let secs = expires.as_secs() + u64::from(expires.subsec_nanos() > 0);
                pipe.cmd("SETEX").arg(&key).arg(secs).arg(&value).ignore();
            }
            None => {
                pipe.cmd("SET").arg(&key).arg(&value).ignore();
            }
        }
        pipe.cmd("PUBLISH").arg(&key).arg(&value).ignore();
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
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(task_key(task_id))
            .query_async(&mut conn)
            .await
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
    /// Opens a subscriber connection per call.
    pub async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultMeta>, BackendError> {
        let deadline = Instant::now() + timeout;
        let key = task_key(task_id);
        let Ok(pubsub) = timeout_at(deadline, self.client.get_async_pubsub()).await else {
            return Ok(None);
        };
        let mut pubsub = pubsub.map_err(|source| BackendError::Redis {
            op: "SUBSCRIBE",
            source,
        })?;
        pubsub
            .subscribe(&key)
            .await
            .map_err(|source| BackendError::Redis {
                op: "SUBSCRIBE",
                source,
            })?;
        // Look only once subscribed, so a result stored in between is seen one way or the
        // other.
        if let Some(meta) = self.get(task_id).await?
            && meta.is_ready()
        {
            return Ok(Some(meta));
        }
        let mut messages = pubsub.into_on_message();
        loop {
            let msg = match timeout_at(deadline, messages.next()).await {
                Err(_elapsed) => return Ok(None),
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    let closed = std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the subscriber connection closed",
                    );
                    return Err(BackendError::Redis {
                        op: "SUBSCRIBE",
                        source: closed.into(),
                    });
                }
            };
            let meta = ResultMeta::from_slice(msg.get_payload_bytes()).map_err(|source| {
                BackendError::Decode {
                    task_id: task_id.to_owned(),
                    source,
                }
            })?;
            if meta.is_ready() {
                return Ok(Some(meta));
            }
        }
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
