//! Celery's serialized exception shape (PROTOCOL.md section 6.3).
//!
//! A failed, retried or revoked task stores its exception as
//! `{"exc_type": ..., "exc_message": [...], "exc_module": ...}`. A Python client rebuilds it
//! by importing `exc_module` and calling `exc_type(*exc_message)`, so the three fields must
//! name a real Python class for the caller to get the exception it expects.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

/// `{"exc_type": ..., "exc_message": [...], "exc_module": ...}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExceptionInfo {
    /// The Python class name, e.g. `ValueError`.
    pub exc_type: String,
    /// The exception's `args`, usually a list.
    pub exc_message: Value,
    /// The Python module of the class, e.g. `builtins`.
    pub exc_module: String,
}

/// Why a value could not be read as an [`ExceptionInfo`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExceptionDecodeError {
    /// The value is not a JSON object.
    #[error("a serialized exception must be an object, found {found}")]
    NotAnObject {
        /// The JSON type that was found instead.
        found: &'static str,
    },
    /// `exc_type` is missing or not a string.
    #[error("a serialized exception needs a string `exc_type`")]
    MissingType,
}

impl ExceptionInfo {
    /// An exception of class `exc_module.exc_type` raised with positional `args`.
    pub fn new(
        exc_type: impl Into<String>,
        exc_module: impl Into<String>,
        args: Vec<Value>,
    ) -> Self {
        Self {
            exc_type: exc_type.into(),
            exc_message: Value::Array(args),
            exc_module: exc_module.into(),
        }
    }

    /// A Python builtin exception (`ValueError`, `TypeError`, ...) raised with one message.
    pub fn builtin(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(exc_type, "builtins", vec![Value::String(message.into())])
    }

    /// `celery.exceptions.NotRegistered(name)`: what the worker stores for an unknown task.
    pub fn not_registered(task_name: impl Into<String>) -> Self {
        Self::new(
            "NotRegistered",
            "celery.exceptions",
            vec![Value::String(task_name.into())],
        )
    }

    /// `celery.exceptions.TaskRevokedError(reason)`; Celery's reasons are `"revoked"`,
    /// `"expired"` and `"terminated"`.
    pub fn task_revoked(reason: impl Into<String>) -> Self {
        Self::new(
            "TaskRevokedError",
            "celery.exceptions",
            vec![Value::String(reason.into())],
        )
    }

    /// `billiard.exceptions.TimeLimitExceeded(limit)`: the hard time limit killed the task.
    ///
    /// Python passes the limit as given by the user, so a whole number of seconds is written
    /// as an integer (`[1]`, as in `backend/redis/hard_time_limit.json`) and anything else as
    /// a float.
    pub fn time_limit_exceeded(limit: Duration) -> Self {
        let secs = if limit.subsec_nanos() == 0 {
            Value::from(limit.as_secs())
        } else {
            serde_json::Number::from_f64(limit.as_secs_f64()).map_or(Value::Null, Value::Number)
        };
        Self::new("TimeLimitExceeded", "billiard.exceptions", vec![secs])
    }

    /// `billiard.exceptions.SoftTimeLimitExceeded()`, raised with no arguments.
    pub fn soft_time_limit_exceeded() -> Self {
        Self::new("SoftTimeLimitExceeded", "billiard.exceptions", Vec::new())
    }

    /// `billiard.exceptions.WorkerLostError(message)`: the process running the task died.
    pub fn worker_lost(message: impl Into<String>) -> Self {
        Self::new(
            "WorkerLostError",
            "billiard.exceptions",
            vec![Value::String(message.into())],
        )
    }

    /// `celery.exceptions.ChordError(message)`: a chord header member failed.
    pub fn chord_error(message: impl Into<String>) -> Self {
        Self::new(
            "ChordError",
            "celery.exceptions",
            vec![Value::String(message.into())],
        )
    }

    /// `kombu.exceptions.EncodeError(message)`: the result could not be serialized.
    pub fn encode_error(message: impl Into<String>) -> Self {
        Self::new(
            "EncodeError",
            "kombu.exceptions",
            vec![Value::String(message.into())],
        )
    }

    /// The JSON form, keys in Celery's order (`exc_type`, `exc_message`, `exc_module`).
    pub fn to_value(&self) -> Value {
        let mut map = Map::with_capacity(3);
        map.insert("exc_type".into(), Value::String(self.exc_type.clone()));
        map.insert("exc_message".into(), self.exc_message.clone());
        map.insert("exc_module".into(), Value::String(self.exc_module.clone()));
        Value::Object(map)
    }

    /// Read the JSON form back.
    ///
    /// Lenient like Celery's `exception_to_python`: `exc_message` may be a plain string (older
    /// producers) and is kept as found; a missing `exc_message` reads as no arguments, and a
    /// missing `exc_module` as `builtins` (where Python looks up bare class names).
    pub fn from_value(value: &Value) -> Result<Self, ExceptionDecodeError> {
        let map = value.as_object().ok_or(ExceptionDecodeError::NotAnObject {
            found: json_type(value),
        })?;
        let exc_type = map
            .get("exc_type")
            .and_then(Value::as_str)
            .ok_or(ExceptionDecodeError::MissingType)?;
        let exc_message = map
            .get("exc_message")
            .cloned()
            .unwrap_or_else(|| Value::Array(Vec::new()));
        let exc_module = map
            .get("exc_module")
            .and_then(Value::as_str)
            .unwrap_or("builtins");
        Ok(Self {
            exc_type: exc_type.to_owned(),
            exc_message,
            exc_module: exc_module.to_owned(),
        })
    }

    /// The positional arguments the Python class is called with (`exc_message` as a list, or
    /// a one-element list when an older producer stored a plain value).
    pub fn args(&self) -> Vec<Value> {
        match &self.exc_message {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        }
    }

    /// Python's `repr()` of the exception, e.g. `ValueError('boom', 42)`.
    ///
    /// Celery writes it into messages such as ChordError's
    /// `"Dependency <id> raised ValueError('boom', 42)"`.
    pub fn python_repr(&self) -> String {
        let args: Vec<String> = self.args().iter().map(python_value_repr).collect();
        format!("{}({})", self.exc_type, args.join(", "))
    }
}

impl fmt::Display for ExceptionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.python_repr())
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Python's `repr()` of a value decoded from JSON.
fn python_value_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            // Reuse the json.dumps float formatting, which is Python's float repr.
            (_, _, Some(_)) => crate::protocol::kombu::to_python_json(value),
            _ => n.to_string(),
        },
        Value::String(s) => python_str_repr(s),
        Value::Array(items) => {
            format!(
                "[{}]",
                items
                    .iter()
                    .map(python_value_repr)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", python_str_repr(k), python_value_repr(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text holds `'` and no `"`.
fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::kombu::to_python_json;
    use serde_json::json;

    #[test]
    fn celery_exceptions_serialize_like_the_vectors() {
        // backend/redis/unknown_task.json, expired.json, hard_time_limit.json, soft_time_limit.json
        assert_eq!(
            to_python_json(&ExceptionInfo::not_registered("tasks.does_not_exist").to_value()),
            r#"{"exc_type": "NotRegistered", "exc_message": ["tasks.does_not_exist"], "exc_module": "celery.exceptions"}"#
        );
        assert_eq!(
            to_python_json(&ExceptionInfo::task_revoked("expired").to_value()),
            r#"{"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"}"#
        );
        assert_eq!(
            to_python_json(&ExceptionInfo::time_limit_exceeded(Duration::from_secs(1)).to_value()),
            r#"{"exc_type": "TimeLimitExceeded", "exc_message": [1], "exc_module": "billiard.exceptions"}"#
        );
        assert_eq!(
            ExceptionInfo::time_limit_exceeded(Duration::from_millis(1500)).exc_message,
            json!([1.5])
        );
        assert_eq!(
            to_python_json(&ExceptionInfo::soft_time_limit_exceeded().to_value()),
            r#"{"exc_type": "SoftTimeLimitExceeded", "exc_message": [], "exc_module": "billiard.exceptions"}"#
        );
        assert_eq!(
            ExceptionInfo::worker_lost("gone").exc_module,
            "billiard.exceptions"
        );
    }

    #[test]
    fn from_value_round_trips_and_is_lenient() {
        let exc = ExceptionInfo::new("ValueError", "builtins", vec![json!("boom"), json!(42)]);
        assert_eq!(ExceptionInfo::from_value(&exc.to_value()).unwrap(), exc);

        let old = ExceptionInfo::from_value(&json!({"exc_type": "KeyError", "exc_message": "x"}))
            .unwrap();
        assert_eq!(old.exc_module, "builtins");
        assert_eq!(old.args(), vec![json!("x")]);

        assert_eq!(
            ExceptionInfo::from_value(&json!([1])),
            Err(ExceptionDecodeError::NotAnObject { found: "an array" })
        );
        assert_eq!(
            ExceptionInfo::from_value(&json!({"exc_message": []})),
            Err(ExceptionDecodeError::MissingType)
        );
    }

    #[test]
    fn repr_matches_python() {
        let exc = ExceptionInfo::new("ValueError", "builtins", vec![json!("boom"), json!(42)]);
        assert_eq!(exc.to_string(), "ValueError('boom', 42)");
        assert_eq!(
            ExceptionInfo::soft_time_limit_exceeded().python_repr(),
            "SoftTimeLimitExceeded()"
        );
        let odd = ExceptionInfo::new(
            "E",
            "m",
            vec![
                json!("it's\n"),
                json!(null),
                json!(true),
                json!(1.5),
                json!({"a": [1]}),
            ],
        );
        assert_eq!(
            odd.python_repr(),
            r#"E("it's\n", None, True, 1.5, {'a': [1]})"#
        );
    }
}
