//! [`TaskMessage`] -> raw message, always protocol v2, as Python's `apply_async` writes it.

use super::{RawMessage, TaskMessage};

/// Why a value could not be serialized.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Placeholder until the protocol module is written.
    #[error("{0}")]
    Invalid(String),
}

/// Encode a task message as protocol v2.
pub fn encode(msg: &TaskMessage) -> Result<RawMessage, EncodeError> {
    todo!("{msg:?}")
}
