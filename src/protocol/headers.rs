//! The protocol v2 task headers (PROTOCOL.md section 1.2).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Celery's task headers. Known headers are typed; anything else (custom `headers=`
/// from `apply_async`, `compression`, `redelivered`, broker additions) is kept in
/// [`TaskHeaders::extra`] in arrival order and written back on encode.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHeaders {
    /// Always `"py"` from Python clients.
    pub lang: Option<String>,
    /// The registered task name (required).
    pub task: String,
    /// The task id (required).
    pub id: String,
    /// Display-name override.
    pub shadow: Option<String>,
    /// Not before this time (naive times on the wire are read as UTC).
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after this time.
    pub expires: Option<DateTime<Utc>>,
    /// Group id when part of a group or chord header.
    pub group: Option<String>,
    /// Position inside the group.
    pub group_index: Option<i64>,
    /// How many times the task was retried.
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds (hard first!).
    pub timelimit: (Option<f64>, Option<f64>),
    /// Id of the first task of the workflow.
    pub root_id: Option<String>,
    /// Id of the task that sent this one.
    pub parent_id: Option<String>,
    /// Python `repr` of the args (display only).
    pub argsrepr: Option<String>,
    /// Python `repr` of the kwargs (display only).
    pub kwargsrepr: Option<String>,
    /// Publisher node name.
    pub origin: Option<String>,
    /// `Some(true)` / `Some(false)` from `apply_async`, `None` from `send_task`.
    pub ignore_result: Option<bool>,
    /// Incremented by `Task.replace`.
    pub replaced_task_nesting: i64,
    /// Names of stamp headers.
    pub stamped_headers: Option<Vec<String>>,
    /// Stamps, `{}` when none.
    pub stamps: Map<String, Value>,
    /// Every other header, kept in arrival order.
    pub extra: Map<String, Value>,
}

impl TaskHeaders {
    /// Headers for a new task with the given name and id, everything else defaulted
    /// the way Celery's `apply_async` defaults it.
    pub fn new(task: impl Into<String>, id: impl Into<String>) -> Self {
        let id = id.into();
        TaskHeaders {
            lang: Some("py".into()),
            task: task.into(),
            root_id: Some(id.clone()),
            id,
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: (None, None),
            parent_id: None,
            argsrepr: None,
            kwargsrepr: None,
            origin: None,
            ignore_result: Some(false),
            replaced_task_nesting: 0,
            stamped_headers: None,
            stamps: Map::new(),
            extra: Map::new(),
        }
    }
}
