//! Storing outcomes: the result backends.

pub mod memory;
pub mod redis;

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Placeholder until the backend module is written.
    #[error("{0}")]
    Other(String),
}
