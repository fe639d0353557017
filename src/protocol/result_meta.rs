//! The value Celery stores for a task result (PROTOCOL.md section 6).
//!
//! One [`ResultMeta`] is what a Python client reads back with `AsyncResult`: the Redis value
//! under `celery-task-meta-<id>`, the body of an `rpc://` reply. Its bytes must match
//! Celery's exactly (field order, `json.dumps` spacing, `isoformat` dates), because Python
//! peers and tools compare and parse them.

use crate::protocol::encode::python_isoformat;
use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde_json::{Map, Value};

use super::content_type::Serializer;
use super::exception::{ExceptionDecodeError, ExceptionInfo};

/// The prefix Celery 5.7 puts in front of a compressed result (`result_compression`,
/// PROTOCOL.md section 3.5). Uncompressed values never start with `\0`.
pub const COMPRESSED_PAYLOAD_MAGIC: &[u8] = b"\x00celery-compressed\x00";

/// A task state as Celery names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Unknown (never stored).
    Pending,
    /// Received by a worker (an event only, never stored).
    Received,
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
    /// The task raised `Reject` (never stored).
    Rejected,
    /// The task raised `Ignore` (never stored).
    Ignored,
}

impl TaskState {
    /// Celery's name for the state, e.g. `"SUCCESS"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Received => "RECEIVED",
            Self::Started => "STARTED",
            Self::Retry => "RETRY",
            Self::Failure => "FAILURE",
            Self::Success => "SUCCESS",
            Self::Revoked => "REVOKED",
            Self::Rejected => "REJECTED",
            Self::Ignored => "IGNORED",
        }
    }

    /// The state named `name` (exact, upper case as Celery writes it); `None` for custom
    /// states such as a user's `PROGRESS`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "PENDING" => Self::Pending,
            "RECEIVED" => Self::Received,
            "STARTED" => Self::Started,
            "RETRY" => Self::Retry,
            "FAILURE" => Self::Failure,
            "SUCCESS" => Self::Success,
            "REVOKED" => Self::Revoked,
            "REJECTED" => Self::Rejected,
            "IGNORED" => Self::Ignored,
            _ => return None,
        })
    }

    /// Celery's `READY_STATES`: the task will not change state again (SUCCESS, FAILURE,
    /// REVOKED). Only these states carry a `date_done`.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Revoked)
    }

    /// Celery's `EXCEPTION_STATES`: `result` holds a serialized exception (RETRY, FAILURE,
    /// REVOKED).
    pub fn is_exception(self) -> bool {
        matches!(self, Self::Retry | Self::Failure | Self::Revoked)
    }

    /// Celery's `PROPAGATE_STATES`: `AsyncResult.get()` raises (FAILURE, REVOKED).
    pub fn propagates(self) -> bool {
        matches!(self, Self::Failure | Self::Revoked)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// Why stored result bytes could not be read as a [`ResultMeta`].
#[derive(Debug, thiserror::Error)]
pub enum ResultDecodeError {
    /// The value is empty.
    #[error("the stored result is empty")]
    Empty,
    /// The value was written with Celery 5.7's `result_compression`, which is not supported.
    #[error(
        "the stored result is compressed with `{content_type}` (Celery's result_compression), which is not supported"
    )]
    Compressed {
        /// The compression's mime type from the payload header.
        content_type: String,
    },
    /// The bytes looked like JSON but did not parse.
    #[error("the stored result is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The bytes looked like msgpack but did not parse.
    #[error("the stored result is not valid msgpack: {0}")]
    Msgpack(#[from] rmp_serde::decode::Error),
    /// The top level is not a map.
    #[error("the stored result must be a map, found {found}")]
    NotAMap {
        /// What was found instead.
        found: String,
    },
    /// `status` is missing or not a string.
    #[error("the stored result has no string `status`")]
    MissingStatus,
    /// `status` names a state this library does not know (for example a custom state).
    #[error("the stored result has the unknown state `{0}`")]
    UnknownState(String),
    /// A field has the wrong type.
    #[error("field `{field}` of the stored result is invalid: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The result of an exception state is not a serialized exception.
    #[error("the stored exception is invalid: {0}")]
    Exception(#[from] ExceptionDecodeError),
}

/// Why a [`ResultMeta`] could not be serialized.
#[derive(Debug, thiserror::Error)]
pub enum ResultEncodeError {
    /// msgpack serialization failed.
    #[error("cannot serialize the result as msgpack: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
}

impl ResultMeta {
    /// A result in `status` with `result`, as the worker stores it from inside a task:
    /// `children` is an empty list, `date_done` is now for ready states and `None` otherwise.
    pub fn new(task_id: impl Into<String>, status: TaskState, result: Value) -> Self {
        Self {
            status,
            result,
            traceback: None,
            children: Some(Vec::new()),
            date_done: status.is_ready().then(now),
            group_id: None,
            parent_id: None,
            extended: None,
            task_id: task_id.into(),
        }
    }

    /// SUCCESS with the task's return value.
    pub fn success(task_id: impl Into<String>, value: Value) -> Self {
        Self::new(task_id, TaskState::Success, value)
    }

    /// FAILURE with the raised exception and its formatted traceback, if any.
    pub fn failure(
        task_id: impl Into<String>,
        exc: ExceptionInfo,
        traceback: Option<String>,
    ) -> Self {
        Self {
            traceback,
            ..Self::new(task_id, TaskState::Failure, exc.to_value())
        }
    }

    /// RETRY with the exception that caused the retry (no `date_done`: not a ready state).
    pub fn retry(
        task_id: impl Into<String>,
        exc: ExceptionInfo,
        traceback: Option<String>,
    ) -> Self {
        Self {
            traceback,
            ..Self::new(task_id, TaskState::Retry, exc.to_value())
        }
    }

    /// STARTED, with Celery's `{"pid": ..., "hostname": ...}` result (`task_track_started`).
    pub fn started(task_id: impl Into<String>, hostname: impl Into<String>, pid: u32) -> Self {
        let mut info = Map::with_capacity(2);
        info.insert("pid".into(), Value::from(pid));
        info.insert("hostname".into(), Value::String(hostname.into()));
        Self::new(task_id, TaskState::Started, Value::Object(info))
    }

    /// REVOKED with `TaskRevokedError(reason)`; Celery's reasons are `"revoked"`,
    /// `"expired"` and `"terminated"`.
    pub fn revoked(task_id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(
            task_id,
            TaskState::Revoked,
            ExceptionInfo::task_revoked(reason).to_value(),
        )
    }

    /// What a missing result reads as: PENDING with a `null` result.
    pub fn pending(task_id: impl Into<String>) -> Self {
        Self {
            children: None,
            ..Self::new(task_id, TaskState::Pending, Value::Null)
        }
    }

    /// Set the group id (the task ran as a group or chord member).
    pub fn with_group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// Set the parent id (the task was sent by another task).
    pub fn with_parent_id(mut self, parent_id: impl Into<String>) -> Self {
        self.parent_id = Some(parent_id.into());
        self
    }

    /// Set the children; `None` writes `null`, as Celery does for stores made outside a task
    /// (a revoke by control command).
    pub fn with_children(mut self, children: Option<Vec<Value>>) -> Self {
        self.children = children;
        self
    }

    /// Add the `result_extended` fields.
    pub fn with_extended(mut self, extended: Extended) -> Self {
        self.extended = Some(extended);
        self
    }

    /// Set the traceback.
    pub fn with_traceback(mut self, traceback: Option<String>) -> Self {
        self.traceback = traceback;
        self
    }

    /// Set `date_done`. Python writes microseconds, so finer precision is dropped.
    pub fn with_date_done(mut self, date_done: Option<DateTime<Utc>>) -> Self {
        self.date_done = date_done.map(|d| d.trunc_subsecs(6));
        self
    }

    /// A result tuple for `children`: `[[task_id, null], null]`, Celery's
    /// `AsyncResult.as_tuple()` of a task without a parent in the tuple.
    pub fn child_tuple(task_id: &str) -> Value {
        Value::Array(vec![
            Value::Array(vec![Value::String(task_id.to_owned()), Value::Null]),
            Value::Null,
        ])
    }

    /// Whether the state is final (SUCCESS, FAILURE, REVOKED).
    pub fn is_ready(&self) -> bool {
        self.status.is_ready()
    }

    /// The stored exception, for RETRY, FAILURE and REVOKED.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        if self.status.is_exception() {
            ExceptionInfo::from_value(&self.result).ok()
        } else {
            None
        }
    }

    /// The value in Celery's exact field order: `status, result, traceback, children,
    /// date_done, [group_id], [parent_id], [name, args, kwargs, worker, retries, queue],
    /// task_id`.
    pub fn to_value(&self) -> Value {
        let mut map = Map::with_capacity(15);
        map.insert(
            "status".into(),
            Value::String(self.status.as_str().to_owned()),
        );
        map.insert("result".into(), self.result.clone());
        map.insert(
            "traceback".into(),
            self.traceback.clone().map_or(Value::Null, Value::String),
        );
        map.insert(
            "children".into(),
            self.children.clone().map_or(Value::Null, Value::Array),
        );
        map.insert(
            "date_done".into(),
            self.date_done
                .as_ref()
                .map_or(Value::Null, |d| Value::String(python_isoformat(d))),
        );
        if let Some(group_id) = &self.group_id {
            map.insert("group_id".into(), Value::String(group_id.clone()));
        }
        if let Some(parent_id) = &self.parent_id {
            map.insert("parent_id".into(), Value::String(parent_id.clone()));
        }
        if let Some(ext) = &self.extended {
            map.insert("name".into(), Value::String(ext.name.clone()));
            map.insert("args".into(), ext.args.clone());
            map.insert("kwargs".into(), ext.kwargs.clone());
            map.insert("worker".into(), Value::String(ext.worker.clone()));
            map.insert("retries".into(), Value::from(ext.retries));
            map.insert("queue".into(), Value::String(ext.queue.clone()));
        }
        map.insert("task_id".into(), Value::String(self.task_id.clone()));
        Value::Object(map)
    }

    /// The JSON bytes Celery's default `result_serializer` writes.
    pub fn to_json(&self) -> String {
        crate::protocol::kombu::to_python_json(&self.to_value())
    }

    /// The bytes `result_serializer='msgpack'` writes: a raw msgpack map, same field order.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, ResultEncodeError> {
        Ok(rmp_serde::to_vec(&self.to_value())?)
    }

    /// The bytes for a result serializer.
    pub fn encode(&self, serializer: Serializer) -> Result<Vec<u8>, ResultEncodeError> {
        match serializer {
            Serializer::Json => Ok(self.to_json().into_bytes()),
            Serializer::Msgpack => self.to_msgpack(),
        }
    }

    /// Read stored bytes, JSON or msgpack (told apart by the first byte, as a JSON result is
    /// always an object and a msgpack one always a map).
    ///
    /// Compressed values (Celery 5.7 `result_compression`) are recognised and refused with
    /// [`ResultDecodeError::Compressed`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ResultDecodeError> {
        if let Some(rest) = bytes.strip_prefix(COMPRESSED_PAYLOAD_MAGIC) {
            let mime = rest.split(|b| *b == 0).next().unwrap_or_default();
            return Err(ResultDecodeError::Compressed {
                content_type: String::from_utf8_lossy(mime).into_owned(),
            });
        }
        let first = bytes
            .iter()
            .copied()
            .find(|b| !b.is_ascii_whitespace())
            .ok_or(ResultDecodeError::Empty)?;
        let value: Value = if first == b'{' {
            serde_json::from_slice(bytes)?
        } else {
            rmp_serde::from_slice(bytes)?
        };
        Self::from_value(&value)
    }

    /// Read the decoded value.
    ///
    /// Lenient where Celery's readers are: missing `result`, `traceback`, `children` and
    /// `date_done` read as null, a missing `task_id` as the empty string, and a `date_done`
    /// without an offset (older Celery wrote naive UTC) as UTC.
    pub fn from_value(value: &Value) -> Result<Self, ResultDecodeError> {
        let map = value
            .as_object()
            .ok_or_else(|| ResultDecodeError::NotAMap {
                found: short(value),
            })?;
        let status_name = map
            .get("status")
            .and_then(Value::as_str)
            .ok_or(ResultDecodeError::MissingStatus)?;
        let status = TaskState::parse(status_name)
            .ok_or_else(|| ResultDecodeError::UnknownState(status_name.to_owned()))?;
        let result = map.get("result").cloned().unwrap_or(Value::Null);
        let traceback = opt_string(map, "traceback")?;
        let children = match map.get("children") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(items.clone()),
            Some(other) => {
                return Err(invalid(
                    "children",
                    format!("expected a list, found {}", short(other)),
                ));
            }
        };
        let date_done = match opt_string(map, "date_done")? {
            None => None,
            Some(text) => Some(
                parse_isoformat(&text)
                    .ok_or_else(|| invalid("date_done", format!("not an ISO date: {text:?}")))?,
            ),
        };
        let extended = if map.contains_key("name") || map.contains_key("worker") {
            Some(Extended {
                name: opt_string(map, "name")?.unwrap_or_default(),
                args: map.get("args").cloned().unwrap_or(Value::Null),
                kwargs: map.get("kwargs").cloned().unwrap_or(Value::Null),
                worker: opt_string(map, "worker")?.unwrap_or_default(),
                retries: match map.get("retries") {
                    None | Some(Value::Null) => 0,
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            invalid("retries", format!("expected a count, found {}", short(v)))
                        })?,
                },
                queue: opt_string(map, "queue")?.unwrap_or_default(),
            })
        } else {
            None
        };
        Ok(Self {
            status,
            result,
            traceback,
            children,
            date_done,
            group_id: opt_string(map, "group_id")?,
            parent_id: opt_string(map, "parent_id")?,
            extended,
            task_id: opt_string(map, "task_id")?.unwrap_or_default(),
        })
    }
}

/// Now, at the microsecond precision Python stores.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Read what `isoformat()` wrote, with or without an offset.
fn parse_isoformat(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

fn opt_string(
    map: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ResultDecodeError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(
            field,
            format!("expected a string, found {}", short(other)),
        )),
    }
}

fn invalid(field: &'static str, reason: String) -> ResultDecodeError {
    ResultDecodeError::InvalidField { field, reason }
}

/// A value shortened for an error message.
fn short(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 60 {
        let cut = (0..=60)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;
    use serde_json::json;

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/backend");

    /// The captured bytes (`shared/` sits beside the checkout).
    fn vector(path: &str) -> Vec<u8> {
        let candidates = [format!("{VECTORS}/{path}")];
        for c in &candidates {
            if let Ok(bytes) = std::fs::read(c) {
                return bytes;
            }
        }
        panic!("vector {path} not found in {candidates:?}");
    }

    fn vector_str(path: &str) -> String {
        String::from_utf8(vector(path)).unwrap()
    }

    /// `date_done` of a captured value, so a rebuilt meta can match the bytes.
    fn date_of(path: &str) -> DateTime<Utc> {
        let v: Value = serde_json::from_slice(&vector(path)).unwrap();
        parse_isoformat(v["date_done"].as_str().unwrap()).unwrap()
    }

    fn assert_golden(meta: ResultMeta, path: &str) {
        let meta = meta.with_date_done(Some(date_of(path)));
        assert_eq!(meta.to_json(), vector_str(path), "{path}");
        assert_eq!(
            ResultMeta::from_slice(&vector(path)).unwrap(),
            meta,
            "decode {path}"
        );
    }

    const FAIL_TB: &str = "Traceback (most recent call last):\n  File \"site-packages/celery/app/trace.py\", line 564, in trace_task\n    R = retval = fun(*args, **kwargs)\n                 ^^^^^^^^^^^^^^^^^^^^\n  File \"site-packages/celery/app/trace.py\", line 883, in __protected_call__\n    return self.run(*args, **kwargs)\n           ^^^^^^^^^^^^^^^^^^^^^^^^^\n  File \"capture.py\", line 96, in fail\n    raise ValueError(msg, 42)\nValueError: ('boom', 42)\n";

    fn boom() -> ExceptionInfo {
        ExceptionInfo::new("ValueError", "builtins", vec![json!("boom"), json!(42)])
    }

    #[test]
    fn golden_success() {
        assert_golden(
            ResultMeta::success("00000000-0000-4000-8000-000000000101", json!(5)),
            "redis/success.json",
        );
    }

    #[test]
    fn golden_failure() {
        let meta = ResultMeta::failure(
            "00000000-0000-4000-8000-000000000102",
            boom(),
            Some(FAIL_TB.into()),
        );
        assert_golden(meta, "redis/failure_valueerror.json");
    }

    #[test]
    fn golden_unknown_task() {
        let meta = ResultMeta::failure(
            "00000000-0000-4000-8000-000000000105",
            ExceptionInfo::not_registered("tasks.does_not_exist"),
            None,
        );
        assert_golden(meta, "redis/unknown_task.json");
    }

    #[test]
    fn golden_children_and_group() {
        let meta = ResultMeta::success("00000000-0000-4000-8000-000000000112", json!(2))
            .with_children(Some(vec![ResultMeta::child_tuple(
                "00000000-0000-4000-8000-000000000113",
            )]));
        assert_golden(meta, "redis/with_link_parent.json");
        let meta = ResultMeta::success("4c8bb9a0-fc13-4298-aaed-2d36cd06b64f", json!(0))
            .with_group_id("a4360a98-3bad-4328-8d4f-a0b2314c5578");
        assert_golden(meta, "redis/group_member_0.json");
    }

    #[test]
    fn golden_revoked() {
        assert_golden(
            ResultMeta::revoked("00000000-0000-4000-8000-000000000107", "expired"),
            "redis/expired.json",
        );
        assert_golden(
            ResultMeta::revoked("00000000-0000-4000-8000-000000000120", "terminated"),
            "redis/revoked_terminated.json",
        );
        // Revoked by a control command, outside any task: children is null.
        assert_golden(
            ResultMeta::revoked("00000000-0000-4000-8000-000000000124", "revoked")
                .with_children(None),
            "redis/revoked_never_sent.json",
        );
    }

    #[test]
    fn golden_time_limits() {
        let meta = ResultMeta::failure(
            "00000000-0000-4000-8000-000000000133",
            ExceptionInfo::time_limit_exceeded(std::time::Duration::from_secs(1)),
            None,
        );
        assert_golden(meta, "redis/hard_time_limit.json");
    }

    fn extended(name: &str, args: Value) -> Extended {
        Extended {
            name: name.into(),
            args,
            kwargs: json!({}),
            worker: "w1@capture".into(),
            retries: 0,
            queue: "celery".into(),
        }
    }

    #[test]
    fn golden_extended() {
        let meta = ResultMeta::success("00000000-0000-4000-8000-000000000101", json!(5))
            .with_extended(extended("tasks.add", json!([2, 3])));
        assert_golden(meta, "redis-extended/success.json");
        let meta = ResultMeta::failure(
            "00000000-0000-4000-8000-000000000102",
            boom(),
            Some(FAIL_TB.into()),
        )
        .with_extended(extended("tasks.fail", json!([])));
        assert_golden(meta, "redis-extended/failure_valueerror.json");
    }

    #[test]
    fn started_matches_state_transitions() {
        let transitions: Value =
            serde_json::from_slice(&vector("redis-extended/state_transitions.json")).unwrap();
        let captured = &transitions["celery-task-meta-00000000-0000-4000-8000-000000000101"][0];
        let meta = ResultMeta::started("00000000-0000-4000-8000-000000000101", "w1@capture", 30586)
            .with_extended(extended("tasks.add", json!([2, 3])));
        assert_eq!(&meta.to_value(), captured);
        assert_eq!(meta.date_done, None);
    }

    #[test]
    fn golden_msgpack() {
        let date = parse_isoformat("2026-11-22T10:52:14.649964+00:00").unwrap();
        let meta = ResultMeta::success("00000000-0000-4000-8000-000000000101", json!(5))
            .with_date_done(Some(date));
        assert_eq!(
            meta.to_msgpack().unwrap(),
            vector("redis-msgpack/success.msgpack")
        );
        assert_eq!(
            ResultMeta::from_slice(&vector("redis-msgpack/success.msgpack")).unwrap(),
            meta
        );

        let bytes = vector("redis-msgpack/failure_valueerror.msgpack");
        let decoded = ResultMeta::from_slice(&bytes).unwrap();
        assert_eq!(decoded.exception(), Some(boom()));
        assert_eq!(decoded.traceback.as_deref(), Some(FAIL_TB));
        let rebuilt = ResultMeta::failure(
            "00000000-0000-4000-8000-000000000102",
            boom(),
            Some(FAIL_TB.into()),
        )
        .with_date_done(decoded.date_done);
        assert_eq!(rebuilt.to_msgpack().unwrap(), bytes);
        assert_eq!(rebuilt.encode(Serializer::Msgpack).unwrap(), bytes);
    }

    #[test]
    fn isoformat_omits_zero_microseconds() {
        let dt = parse_isoformat("2026-11-22T10:51:25+00:00").unwrap();
        assert_eq!(python_isoformat(&dt), "2026-11-22T10:51:25+00:00");
        let dt = parse_isoformat("2026-11-22T10:51:25.000010+00:00").unwrap();
        assert_eq!(python_isoformat(&dt), "2026-11-22T10:51:25.000010+00:00");
        // A naive date (older producers) reads as UTC; other offsets are converted.
        assert_eq!(
            parse_isoformat("2026-11-22T10:51:25.5").unwrap(),
            parse_isoformat("2026-11-22T10:51:25.500000+00:00").unwrap()
        );
        assert_eq!(
            python_isoformat(&parse_isoformat("2026-11-22T12:00:00+02:00").unwrap()),
            "2026-11-22T10:00:00+00:00"
        );
        // New metas never carry more precision than Python can store.
        let meta = ResultMeta::success("x", json!(1));
        assert_eq!(meta.date_done.unwrap().nanosecond() % 1000, 0);
    }

    #[test]
    fn states() {
        for s in [
            TaskState::Pending,
            TaskState::Received,
            TaskState::Started,
            TaskState::Retry,
            TaskState::Failure,
            TaskState::Success,
            TaskState::Revoked,
            TaskState::Rejected,
            TaskState::Ignored,
        ] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TaskState::parse("PROGRESS"), None);
        assert!(TaskState::Revoked.is_ready() && !TaskState::Retry.is_ready());
        assert!(TaskState::Retry.is_exception() && !TaskState::Retry.propagates());
        assert_eq!(ResultMeta::retry("t", boom(), None).date_done, None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            ResultMeta::from_slice(b""),
            Err(ResultDecodeError::Empty)
        ));
        assert!(matches!(
            ResultMeta::from_slice(b"{"),
            Err(ResultDecodeError::Json(_))
        ));
        assert!(matches!(
            ResultMeta::from_slice(b"\xc1"),
            Err(ResultDecodeError::Msgpack(_))
        ));
        assert!(matches!(
            ResultMeta::from_slice(b"{}"),
            Err(ResultDecodeError::MissingStatus)
        ));
        assert!(matches!(
            ResultMeta::from_slice(br#"{"status": "PROGRESS"}"#),
            Err(ResultDecodeError::UnknownState(s)) if s == "PROGRESS"
        ));
        assert!(matches!(
            ResultMeta::from_slice(br#"{"status": "SUCCESS", "date_done": "yesterday"}"#),
            Err(ResultDecodeError::InvalidField {
                field: "date_done",
                ..
            })
        ));
        assert!(matches!(
            ResultMeta::from_slice(br#"{"status": "SUCCESS", "children": 3}"#),
            Err(ResultDecodeError::InvalidField {
                field: "children",
                ..
            })
        ));
        let err = ResultMeta::from_slice(b"\x00celery-compressed\x00application/x-gzip\x00x\x9c")
            .unwrap_err();
        assert!(
            matches!(&err, ResultDecodeError::Compressed { content_type } if content_type == "application/x-gzip")
        );
        assert!(err.to_string().contains("result_compression"));
        // The PENDING shape Celery returns for a missing key decodes too.
        let pending = ResultMeta::from_slice(br#"{"status": "PENDING", "result": null}"#).unwrap();
        assert_eq!(
            pending,
            ResultMeta {
                task_id: String::new(),
                ..ResultMeta::pending("")
            }
        );
    }
}
