//! A sent task's result, awaited through the backend (pushed, not polled).

use super::control::{Control, ControlError};
use crate::backend::{AnyBackend, BackendError, Expectation};
use crate::protocol::{ExceptionInfo, ResultMeta, TaskState};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// How a task failed, as the worker stored it (Celery's exception fields).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    /// The exception class name (`ValueError`, `NotRegistered`, ...).
    pub exc_type: String,
    /// Its module (`builtins`, `celery.exceptions`, ...).
    pub exc_module: String,
    /// Its arguments (Celery's `exc_message`, a list).
    pub exc_message: Value,
    /// The formatted traceback, when the worker sent one.
    pub traceback: Option<String>,
}

impl TaskFailure {
    /// The message as Python prints `str(exc)`: the single argument, or the arguments.
    pub fn message(&self) -> String {
        match &self.exc_message {
            Value::Array(items) if items.len() == 1 => match &items[0] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message())
    }
}

/// Why a result could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The task did not finish within the timeout.
    #[error("task {id} did not finish within {after:?}")]
    Timeout {
        /// The task id.
        id: String,
        /// How long was waited.
        after: Duration,
    },
    /// The task raised an exception (FAILURE).
    #[error("task {id} failed: {failure}")]
    Failed {
        /// The task id.
        id: String,
        /// What it raised.
        failure: Box<TaskFailure>,
    },
    /// The task was revoked or expired (REVOKED; Python raises TaskRevokedError).
    #[error("task {id} was revoked: {failure}")]
    Revoked {
        /// The task id.
        id: String,
        /// The stored TaskRevokedError.
        failure: Box<TaskFailure>,
    },
    /// The result is not of the requested type.
    #[error("the result of task {id} is not the expected type: {source}")]
    Type {
        /// The task id.
        id: String,
        /// The mismatch.
        #[source]
        source: serde_json::Error,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A sent task's result, read as `R` ([`serde_json::Value`] unless the call was typed: see
/// [`Client::send`](super::Client::send) and [`AsyncResult::typed`]). Cheap to clone.
pub struct AsyncResult<R = Value> {
    id: String,
    backend: AnyBackend,
    control: Control,
    /// Set when the backend listened for the result from before the task was sent: then
    /// [`AsyncResult::get`] needs no read of its own first.
    expected: Option<Arc<Expectation>>,
    // The result is not owned here: `fn() -> R` keeps the handle `Send + Sync + Clone`.
    result: PhantomData<fn() -> R>,
}

impl AsyncResult<Value> {
    pub(crate) fn new(id: String, backend: AnyBackend, control: Control) -> AsyncResult<Value> {
        AsyncResult {
            id,
            backend,
            control,
            expected: None,
            result: PhantomData,
        }
    }

    /// The result of a task whose result the backend listens for since before it was sent.
    pub(crate) fn expected(mut self, expected: Option<Expectation>) -> AsyncResult<Value> {
        self.expected = expected.map(Arc::new);
        self
    }
}

impl<R> Clone for AsyncResult<R> {
    fn clone(&self) -> Self {
        AsyncResult {
            id: self.id.clone(),
            backend: self.backend.clone(),
            control: self.control.clone(),
            expected: self.expected.clone(),
            result: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("id", &self.id)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl<R> AsyncResult<R> {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The same result, read as `T`: for a task sent untyped, e.g.
    /// `client.result(id).typed::<i64>()`. A cheap clone.
    pub fn typed<T>(&self) -> AsyncResult<T> {
        AsyncResult {
            id: self.id.clone(),
            backend: self.backend.clone(),
            control: self.control.clone(),
            expected: self.expected.clone(),
            result: PhantomData,
        }
    }

    /// The latest state (PENDING when nothing is stored yet).
    pub async fn state(&self) -> Result<TaskState, ResultError> {
        Ok(self
            .backend
            .get(&self.id)
            .await?
            .map_or(TaskState::Pending, |m| m.status))
    }

    /// Whether the task has finished (SUCCESS, FAILURE or REVOKED).
    pub async fn ready(&self) -> Result<bool, ResultError> {
        Ok(self.state().await?.is_ready())
    }

    /// Wait (pushed by the backend, not polled) until the task finishes, then return its
    /// value as `R`, or its exception as [`ResultError::Failed`] / [`ResultError::Revoked`].
    ///
    /// A result that is already stored is returned at once, whatever the timeout (even zero).
    pub async fn get(&self, timeout: Duration) -> Result<R, ResultError>
    where
        R: DeserializeOwned,
    {
        // Listened for since before it was sent: what is stored arrives by itself (pushed, or
        // read once the subscription was confirmed), so no read is sent first.
        if self.expected.is_none()
            && let Some(done) = self.poll().await?
        {
            return done;
        }
        match self.backend.wait(&self.id, timeout).await? {
            Some(meta) => self.outcome(meta),
            None => {
                // A zero (or short) timeout may pass before the read of an expected result
                // came back: what is already stored is still returned.
                if self.expected.is_some()
                    && let Some(done) = self.poll().await?
                {
                    return done;
                }
                Err(ResultError::Timeout {
                    id: self.id.clone(),
                    after: timeout,
                })
            }
        }
    }

    /// The outcome if the task has finished (`None` while it has not), without waiting.
    pub async fn poll(&self) -> Result<Option<Result<R, ResultError>>, ResultError>
    where
        R: DeserializeOwned,
    {
        Ok(self
            .backend
            .get(&self.id)
            .await?
            .filter(|m| m.status.is_ready())
            .map(|m| self.outcome(m)))
    }

    fn outcome(&self, meta: ResultMeta) -> Result<R, ResultError>
    where
        R: DeserializeOwned,
    {
        let failure = |meta: &ResultMeta| {
            let exc = ExceptionInfo::from_value(&meta.result).ok();
            Box::new(TaskFailure {
                exc_type: exc
                    .as_ref()
                    .map_or_else(|| "Exception".into(), |e| e.exc_type.clone()),
                exc_module: exc
                    .as_ref()
                    .map_or_else(|| "builtins".into(), |e| e.exc_module.clone()),
                exc_message: exc.map_or_else(|| meta.result.clone(), |e| e.exc_message),
                traceback: meta.traceback.clone(),
            })
        };
        match meta.status {
            TaskState::Failure => Err(ResultError::Failed {
                id: self.id.clone(),
                failure: failure(&meta),
            }),
            TaskState::Revoked => Err(ResultError::Revoked {
                id: self.id.clone(),
                failure: failure(&meta),
            }),
            _ => serde_json::from_value(meta.result).map_err(|source| ResultError::Type {
                id: self.id.clone(),
                source,
            }),
        }
    }

    /// Revoke the task (Celery's `AsyncResult.revoke`): every worker is told not to run it,
    /// and a worker that meets it stores REVOKED, so [`get`](Self::get) then gives
    /// [`ResultError::Revoked`]. With `terminate`, a worker already running it kills it with
    /// `signal` (the worker's default, `SIGTERM`, when `None`). Returns once the request is
    /// published; it does not wait for the workers.
    pub async fn revoke(&self, terminate: bool, signal: Option<&str>) -> Result<(), ControlError> {
        self.control.revoke_one(&self.id, terminate, signal).await
    }

    /// Remove the stored result (Celery's `forget`).
    pub async fn forget(&self) -> Result<(), ResultError> {
        Ok(self.backend.forget(&self.id).await?)
    }
}
