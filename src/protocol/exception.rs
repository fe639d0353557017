//! Celery's serialized exception shape (PROTOCOL.md section 6.3).

use serde_json::Value;

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
