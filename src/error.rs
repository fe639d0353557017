//! The crate's error type over the per-layer errors.

/// Any error from Celeriac.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A message could not be decoded.
    #[error(transparent)]
    Decode(#[from] crate::protocol::DecodeError),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] crate::protocol::encode::EncodeError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// The task registry is inconsistent (e.g. two tasks with one name).
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// The result backend failed.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// The worker's state file (revoked ids) could not be used.
    #[error(transparent)]
    State(#[from] crate::worker::StateError),
}
