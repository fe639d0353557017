//! Storing outcomes: the result backends.
//!
//! A backend keeps each task's latest [`ResultMeta`] where a caller can find it: Redis
//! (`celery-task-meta-<id>`, pushed to subscribers as it is written), an in-process map,
//! or (`rpc://`) a message to the caller's own reply queue.
//! [`AnyBackend`] is the closed set the worker and the client hold; it is cheap to clone.

pub mod memory;
pub mod redis;
pub mod rpc;
mod waiters;

use std::time::Duration;

pub use self::redis::RedisBackend;
pub use memory::MemoryBackend;
pub use rpc::{ReplyTo, RpcBackend};

use crate::broker::{AnyBroker, BrokerError};

use crate::protocol::result_meta::{ResultDecodeError, ResultEncodeError};
use crate::protocol::{ResultMeta, Serializer, TaskState};

/// Celery's default `result_expires`: one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);

/// How results are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOptions {
    /// How long a stored result lives (`result_expires`). `None` or zero: forever.
    pub result_expires: Option<Duration>,
    /// How long a FAILURE lives (`result_failure_expires`, Celery 5.7); `None` uses
    /// `result_expires`.
    pub failure_expires: Option<Duration>,
    /// The result serializer (`result_serializer`).
    pub serializer: Serializer,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            result_expires: Some(DEFAULT_RESULT_EXPIRES),
            failure_expires: None,
            serializer: Serializer::Json,
        }
    }
}

impl BackendOptions {
    /// How long a result in `state` lives; `None` means no expiry (Celery writes a plain
    /// `SET` when the expiry is 0 or unset).
    pub fn expires_for(&self, state: TaskState) -> Option<Duration> {
        let expires = match (state, self.failure_expires) {
            (TaskState::Failure, Some(failure)) => Some(failure),
            _ => self.result_expires,
        };
        expires.filter(|d| !d.is_zero())
    }
}

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend URL could not be parsed.
    #[error("invalid result backend URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL names a backend (or a feature of one) this build does not provide.
    #[error("unsupported result backend `{url}`: {reason}")]
    Unsupported {
        /// The URL, password masked.
        url: String,
        /// Why it is not supported.
        reason: String,
    },
    /// The operation needs a backend, but results are disabled.
    #[error("no result backend is configured, so results cannot be {op}")]
    Disabled {
        /// What was attempted (`awaited`, ...).
        op: &'static str,
    },
    /// The first connection to the backend failed.
    #[error("cannot connect to the result backend `{url}`: {source}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// The Redis client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// A Redis command failed.
    #[error("result backend Redis command {op} failed: {source}")]
    Redis {
        /// The command or step that failed.
        op: &'static str,
        /// The Redis client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// The result could not be serialized.
    #[error(transparent)]
    Encode(#[from] ResultEncodeError),
    /// A stored result could not be read.
    #[error("cannot read the stored result of task {task_id}: {source}")]
    Decode {
        /// The task whose result was read.
        task_id: String,
        /// What was wrong with it.
        #[source]
        source: ResultDecodeError,
    },
    /// The RPC backend could not send a result to the caller's reply queue.
    #[error("cannot send the result of task {task_id} to reply queue {queue:?}: {source}")]
    Reply {
        /// The task whose result was sent.
        task_id: String,
        /// The caller's reply queue.
        queue: String,
        /// The broker's error (boxed: it is large and rare).
        #[source]
        source: Box<BrokerError>,
    },
    /// The RPC backend could not consume its reply queue.
    #[error("cannot consume the rpc:// reply queue {queue:?}: {source}")]
    Listen {
        /// The reply queue.
        queue: String,
        /// The broker's error (boxed: it is large and rare).
        #[source]
        source: Box<BrokerError>,
    },
    /// The RPC backend was asked to store a result without a reply queue to send it to.
    #[error(
        "the rpc:// backend sends results to the caller's reply queue; task {task_id} has none"
    )]
    NoReplyTo {
        /// The task.
        task_id: String,
    },
    /// The serialized result is larger than Redis accepts (Celery's BackendStoreError).
    #[error("result of task {task_id} is too large for the backend ({len} bytes)")]
    TooLarge {
        /// The task whose result was stored.
        task_id: String,
        /// Its serialized size.
        len: usize,
    },
}

impl BackendError {
    /// Whether the error comes from the connection (refused, dropped, timed out) rather than
    /// from the request: retrying later may succeed.
    pub fn is_connection_error(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Reply { source, .. } | Self::Listen { source, .. } => {
                source.is_connection_error()
            }
            Self::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
            }
            _ => false,
        }
    }
}

/// A task's result listened for from before its message was sent ([`AnyBackend::expect`]).
pub(crate) struct Expectation {
    _waiter: waiters::Waiter,
}

/// The result backend in use: one of a closed set, dispatched with a `match`.
#[derive(Debug, Clone, Default)]
pub enum AnyBackend {
    /// No backend: results are not stored (Celery's `DisabledBackend`).
    #[default]
    Disabled,
    /// The in-process backend (`memory://`).
    Memory(MemoryBackend),
    /// Redis (`redis://`, `rediss://`).
    Redis(RedisBackend),
    /// Celery's RPC backend (`rpc://`): results go to the caller's reply queue.
    Rpc(RpcBackend),
}

impl AnyBackend {
    /// Open the backend named by `url`: `None` disables results; `redis://`, `rediss://`
    /// and `memory://` are supported here. `rpc://` sends results through the broker, so it
    /// needs [`AnyBackend::connect_with_broker`].
    pub async fn connect(
        url: Option<&str>,
        opts: BackendOptions,
    ) -> Result<AnyBackend, BackendError> {
        Self::open(url, opts, None).await
    }

    /// Like [`AnyBackend::connect`], and `rpc://` publishes results through `broker`.
    pub async fn connect_with_broker(
        url: Option<&str>,
        opts: BackendOptions,
        broker: &AnyBroker,
    ) -> Result<AnyBackend, BackendError> {
        Self::open(url, opts, Some(broker)).await
    }

    async fn open(
        url: Option<&str>,
        opts: BackendOptions,
        broker: Option<&AnyBroker>,
    ) -> Result<AnyBackend, BackendError> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Self::Disabled);
        };
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .ok_or_else(|| BackendError::InvalidUrl {
                url: mask_password(url),
                reason: "expected `scheme://...`".into(),
            })?;
        match scheme.as_str() {
            "memory" | "cache+memory" => Ok(Self::Memory(MemoryBackend::open(url, opts))),
            "redis" | "rediss" => Ok(Self::Redis(RedisBackend::connect(url, opts).await?)),
            "rpc" => match broker {
                Some(b) => Ok(Self::Rpc(RpcBackend::new(b.clone(), opts))),
                None => Err(BackendError::Unsupported {
                    url: mask_password(url),
                    reason: "the rpc:// backend sends results through the broker: open it with \
                             AnyBackend::connect_with_broker"
                        .into(),
                }),
            },
            other => Err(BackendError::Unsupported {
                url: mask_password(url),
                reason: format!(
                    "unknown scheme `{other}` (expected redis://, rediss://, rpc:// or memory://)"
                ),
            }),
        }
    }

    /// Store a state change. SUCCESS is final: a later store for the same task is dropped,
    /// as Celery does. With results disabled this does nothing. The RPC backend needs to
    /// know where to send it ([`AnyBackend::store_for`]); here it is [`BackendError::NoReplyTo`].
    pub async fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        match self {
            Self::Disabled => Ok(()),
            Self::Memory(b) => b.store(meta),
            Self::Redis(b) => b.store(meta).await,
            Self::Rpc(_) => Err(BackendError::NoReplyTo {
                task_id: meta.task_id.clone(),
            }),
        }
    }

    /// Store a state change of a task whose message asked for replies at `reply`, as the
    /// worker does: the RPC backend sends it there (nothing is sent without a reply queue,
    /// as in Celery); the other backends store it by task id like [`AnyBackend::store`].
    pub async fn store_for(
        &self,
        meta: &ResultMeta,
        reply: Option<&ReplyTo>,
    ) -> Result<(), BackendError> {
        match (self, reply) {
            // Boxed: publishing on AMQP is a large future, and this one is awaited inside
            // every worker pipeline, whose size (held once per prefetched message) it would
            // otherwise set for every backend.
            (Self::Rpc(b), Some(to)) => Box::pin(b.store(meta, to)).await,
            (Self::Rpc(_), None) => Ok(()),
            _ => self.store(meta).await,
        }
    }

    /// The latest stored state of a task; `None` when nothing is stored (Celery reads that
    /// as PENDING) or results are disabled. For `rpc://`: the latest reply that arrived on
    /// this side's reply queue (see [`RpcBackend`]).
    pub async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        match self {
            Self::Disabled => Ok(None),
            Self::Memory(b) => Ok(b.get(task_id)),
            Self::Redis(b) => b.get(task_id).await,
            Self::Rpc(b) => Ok(b.get(task_id)),
        }
    }

    /// Wait until the task reaches a ready state (SUCCESS, FAILURE, REVOKED), pushed rather
    /// than polled; `Ok(None)` when `timeout` passes first. For `rpc://` the task must have
    /// been sent with [`RpcBackend::reply_queue`] as its `reply_to`, through an AMQP broker.
    pub async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultMeta>, BackendError> {
        match self {
            Self::Disabled => Err(BackendError::Disabled { op: "awaited" }),
            Self::Memory(b) => Ok(b.wait(task_id, timeout).await),
            Self::Redis(b) => b.wait(task_id, timeout).await,
            Self::Rpc(b) => b.wait(task_id, timeout).await,
        }
    }

    /// Start listening for a task's result before its message is sent, as Celery's
    /// `on_task_call` subscribes first: the Redis backend subscribes while the message
    /// travels, and a later [`AnyBackend::wait`] for the id then costs no round trip of its
    /// own. `None` where there is nothing to prepare. Listening lasts while the returned
    /// value lives.
    pub(crate) fn expect(&self, task_id: &str) -> Option<Expectation> {
        match self {
            Self::Redis(b) => Some(Expectation {
                _waiter: b.expect(task_id),
            }),
            _ => None,
        }
    }

    /// Remove a stored result (Celery's `forget`; `rpc://`: what this process kept of the
    /// task's replies).
    pub async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        match self {
            Self::Disabled => Ok(()),
            Self::Rpc(b) => {
                b.forget(task_id);
                Ok(())
            }
            Self::Memory(b) => {
                b.forget(task_id);
                Ok(())
            }
            Self::Redis(b) => b.forget(task_id).await,
        }
    }

    /// A one-line description for the start-up banner, password masked.
    pub fn describe(&self) -> String {
        match self {
            Self::Disabled => "disabled://".to_owned(),
            Self::Memory(b) => b.url().to_owned(),
            Self::Redis(b) => b.describe(),
            Self::Rpc(b) => b.describe(),
        }
    }

    /// Whether results are disabled.
    pub fn is_disabled(&self) -> bool {
        matches!(self, Self::Disabled)
    }
}

/// `scheme://user:secret@host` -> `scheme://user:**@host`, as Celery's banner shows it.
pub(crate) fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first `/`; the last `@` in it ends the user info (a
    // password may itself contain `@` when not percent-encoded).
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:**@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("redis://:secret@localhost:6379/1"),
            "redis://:**@localhost:6379/1"
        );
        assert_eq!(mask_password("redis://u:p@ss@h/0"), "redis://u:**@h/0");
        assert_eq!(
            mask_password("redis://localhost:6379/1"),
            "redis://localhost:6379/1"
        );
        assert_eq!(mask_password("redis://user@h"), "redis://user@h");
        assert_eq!(mask_password("memory://"), "memory://");
    }

    #[test]
    fn expiry_rules_follow_celery() {
        let opts = BackendOptions::default();
        assert_eq!(
            opts.expires_for(TaskState::Success),
            Some(DEFAULT_RESULT_EXPIRES)
        );
        let opts = BackendOptions {
            failure_expires: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        assert_eq!(
            opts.expires_for(TaskState::Failure),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            opts.expires_for(TaskState::Revoked),
            Some(DEFAULT_RESULT_EXPIRES)
        );
        let opts = BackendOptions {
            result_expires: Some(Duration::ZERO),
            ..Default::default()
        };
        assert_eq!(opts.expires_for(TaskState::Success), None);
    }

    #[tokio::test]
    async fn urls_choose_the_backend() {
        let b = AnyBackend::connect(None, BackendOptions::default())
            .await
            .unwrap();
        assert!(b.is_disabled());
        assert_eq!(b.describe(), "disabled://");
        b.store(&ResultMeta::success("t", serde_json::json!(1)))
            .await
            .unwrap();
        assert_eq!(b.get("t").await.unwrap(), None);
        assert!(matches!(
            b.wait("t", Duration::ZERO).await,
            Err(BackendError::Disabled { .. })
        ));

        let b = AnyBackend::connect(Some("memory://urls_choose"), BackendOptions::default())
            .await
            .unwrap();
        assert_eq!(b.describe(), "memory://urls_choose");

        let err = AnyBackend::connect(Some("rpc://"), BackendOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Unsupported { .. }), "{err}");
        let err = AnyBackend::connect(Some("mongodb://:pw@h/"), BackendOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::Unsupported { .. }) && !err.to_string().contains("pw"),
            "{err}"
        );
        let err = AnyBackend::connect(Some("localhost:6379"), BackendOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::InvalidUrl { .. }), "{err}");
        assert!(!err.is_connection_error());
    }
}
