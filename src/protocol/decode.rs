//! Raw message -> [`TaskMessage`], for both protocol versions.

use super::{RawMessage, TaskMessage};

/// Why a message could not be read as a Celery task.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Placeholder until the protocol module is written.
    #[error("{0}")]
    Invalid(String),
}

/// Decode a raw message into a task message (v2, or v1 detected as Celery does).
pub fn decode(raw: &RawMessage) -> Result<TaskMessage, DecodeError> {
    todo!("{raw:?}")
}
