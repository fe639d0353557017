//! The value Celery stores for a task result (PROTOCOL.md section 6).

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A task state as Celery names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Unknown (never stored).
    Pending,
    /// Execution started (`track_started`).
    Started,
    /// Will be retried.
    Retry,
    /// Raised.
    Failure,
    /// Returned.
    Success,
    /// Revoked or expired.
    Revoked,
}

/// One stored result: `celery-task-meta-<id>` on Redis, a reply message on `rpc://`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMeta {
    /// The state.
    pub status: TaskState,
    /// The return value, or the serialized exception for failures.
    pub result: Value,
    /// A formatted traceback, for failures.
    pub traceback: Option<String>,
    /// Result tuples of tasks this one sent (`None` writes `null`).
    pub children: Option<Vec<Value>>,
    /// When the state was reached (`None` for STARTED and RETRY).
    pub date_done: Option<DateTime<Utc>>,
    /// The group id, written only when set.
    pub group_id: Option<String>,
    /// The parent id, written only when set.
    pub parent_id: Option<String>,
    /// `result_extended` fields, in Celery's order.
    pub extended: Option<Extended>,
    /// The task id.
    pub task_id: String,
}

/// Fields written with `result_extended=True`.
#[derive(Debug, Clone, PartialEq)]
pub struct Extended {
    /// Task name.
    pub name: String,
    /// Positional arguments.
    pub args: Value,
    /// Keyword arguments.
    pub kwargs: Value,
    /// Worker node name.
    pub worker: String,
    /// Retry count.
    pub retries: u32,
    /// Delivery routing key.
    pub queue: String,
}
