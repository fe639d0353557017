//! Running a task: async bodies are spawned on the runtime, plain functions on the
//! blocking pool (so a blocking body never stalls the runtime's worker threads); a panic
//! in either becomes a FAILURE instead of taking the worker down.

use super::error::TaskError;
use super::{Invocation, TaskResult};
use crate::registry::{Runner, TaskEntry};
use std::any::Any;
use tokio::task::{JoinError, JoinHandle};

/// Runs one invocation of `entry` and returns its outcome.
///
/// Must be called inside a Tokio runtime. Async tasks run as their own Tokio task:
/// dropping the returned future (a time limit, a shutdown) aborts them at their next
/// `.await`. Plain functions cannot be interrupted; dropping the future only stops
/// waiting for them.
pub async fn call(entry: &'static TaskEntry, inv: Invocation) -> TaskResult {
    let joined = match entry.runner {
        Runner::Async(run) => AbortOnDrop(tokio::spawn(run(inv))).join().await,
        Runner::Blocking(run) => tokio::task::spawn_blocking(move || run(inv)).await,
    };
    joined.unwrap_or_else(|e| Err(join_error(e)))
}

/// Aborts a spawned task when the caller stops waiting for it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        // Aborting a finished task is a no-op, so this is safe after a normal join.
        self.0.abort();
    }
}

fn join_error(err: JoinError) -> TaskError {
    if err.is_panic() {
        TaskError::panic(panic_message(err.into_panic()))
    } else {
        // Only when the runtime shuts down under a running task: Celery's name for a task
        // whose executor went away.
        TaskError::new(
            "WorkerLostError",
            "the task was cancelled: the runtime is shutting down",
        )
        .with_module("billiard.exceptions")
    }
}

/// The text of a panic payload: `panic!` gives a `&str` or a `String`.
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "the task panicked with a non-string payload".to_owned(),
        },
    }
}
