//! The request context a task can ask for.

/// What the worker knows about the running task.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The task id.
    pub id: String,
}
