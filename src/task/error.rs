//! `TaskError`: a task's failure as Celery stores it.

/// A task failure carrying Celery's exception shape.
#[derive(Debug, Clone)]
pub struct TaskError {
    /// Python class name, e.g. `ValueError`.
    pub exc_type: String,
}

/// Lets an error type choose the Python exception class it is stored as.
pub trait ExcType {
    /// The Python class name, e.g. `"ValueError"`.
    fn exc_type(&self) -> &str;
}
