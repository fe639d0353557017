//! kombu's JSON dialect: Python `json.dumps` formatting and the `__type__` markers.

use serde_json::Value;

/// Serialize a value exactly as Python's `json.dumps` (kombu's defaults) would:
/// separators `", "` and `": "`, `ensure_ascii`, insertion order.
pub fn to_python_json(value: &Value) -> String {
    todo!("{value}")
}
