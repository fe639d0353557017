//! Running a task: async bodies are polled in the caller's own task (no hand-over to
//! another task, and maybe another thread, before the body starts and after it ends), plain
//! functions on the blocking pool (so a blocking body never stalls the runtime's worker
//! threads); a panic in either becomes a FAILURE instead of taking the worker down.

use super::error::TaskError;
use super::{Invocation, TaskResult};
use crate::registry::{Runner, TaskEntry};
use std::any::Any;
use tokio::task::JoinError;

/// Runs one invocation of `entry` and returns its outcome.
///
/// Must be called inside a Tokio runtime. Async tasks are polled by the returned future
/// itself: dropping it (a time limit, a shutdown) cancels them at their next `.await`.
/// Plain functions cannot be interrupted; dropping the future only stops waiting for them.
pub async fn call(entry: &'static TaskEntry, inv: Invocation) -> TaskResult {
    match entry.runner {
        Runner::Async(run) => {
            let mut body = run(inv);
            std::future::poll_fn(move |cx| {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    body.as_mut().poll(cx)
                })) {
                    Ok(poll) => poll,
                    // Ready at once: a panicked body is never polled again.
                    Err(payload) => {
                        std::task::Poll::Ready(Err(TaskError::panic(panic_message(payload))))
                    }
                }
            })
            .await
        }
        Runner::Blocking(run) => tokio::task::spawn_blocking(move || run(inv))
            .await
            .unwrap_or_else(|e| Err(join_error(e))),
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
