//! Finding the task for a name: every `#[task]` is submitted through `inventory`.

use crate::task::{Invocation, TaskFuture, TaskResult};

/// How a task body runs.
#[derive(Clone, Copy)]
pub enum Runner {
    /// An async fn: polled on the runtime.
    Async(fn(Invocation) -> TaskFuture),
    /// A plain fn: run on the blocking pool.
    Blocking(fn(Invocation) -> TaskResult),
}

/// A task as `#[task]` registers it.
pub struct TaskEntry {
    /// The name given with `#[task(name = "...")]`.
    pub name: Option<&'static str>,
    /// `module_path!()` where the task was defined.
    pub module_path: &'static str,
    /// The function's name.
    pub fn_name: &'static str,
    /// How to run it.
    pub runner: Runner,
}

inventory::collect!(TaskEntry);
