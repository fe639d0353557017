//! Finding the task for a name: every `#[task]` is submitted through `inventory`, and the
//! registry built from them at start-up rejects two tasks with one name.

use crate::task::{Invocation, TaskFuture, TaskResult};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a task body runs.
#[derive(Debug, Clone, Copy)]
pub enum Runner {
    /// An async fn: spawned on the runtime.
    Async(fn(Invocation) -> TaskFuture),
    /// A plain fn: run on the blocking pool.
    Blocking(fn(Invocation) -> TaskResult),
}

/// Per-task options given in `#[task(...)]`; `None` means "the worker's setting" (or
/// Celery's default where the worker has none). Named as Celery's task attributes.
///
/// Build it from [`TaskOptions::DEFAULT`] with struct update syntax so new options can be
/// added without breaking existing code.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TaskOptions {
    /// Acknowledge the message after the task ends instead of before it starts
    /// (Celery's `acks_late`).
    pub acks_late: Option<bool>,
    /// How many retries a task may ask for before it fails (Celery's `max_retries`,
    /// 3 when not set).
    pub max_retries: Option<u32>,
    /// The delay of a retry that names neither countdown nor eta (180 s when not set).
    pub default_retry_delay: Option<Duration>,
    /// Python class names (`exc_type`) of errors that retry the task by themselves
    /// (Celery's `autoretry_for`); empty for none.
    pub autoretry_for: &'static [&'static str],
    /// Exponential backoff between automatic retries: the factor (Celery's
    /// `retry_backoff`; `true` there is one second). `None`: no backoff.
    pub retry_backoff: Option<Duration>,
    /// The longest backoff delay (600 s when not set).
    pub retry_backoff_max: Option<Duration>,
    /// Randomize backoff delays between 0 and the computed delay (`true` when not set).
    pub retry_jitter: Option<bool>,
    /// Hard time limit: the task is stopped and fails with `TimeLimitExceeded`.
    pub time_limit: Option<Duration>,
    /// Soft time limit: visible to the task through its [`Request`](crate::Request).
    pub soft_time_limit: Option<Duration>,
    /// At most this many starts of the task per second on this worker (Celery's
    /// `rate_limit`); messages over the rate wait, they are never dropped.
    pub rate_limit: Option<RateLimit>,
    /// Do not store results of this task.
    pub ignore_result: Option<bool>,
    /// Store STARTED when the task starts.
    pub track_started: Option<bool>,
    /// With `acks_late`: requeue the message when the task's executor is lost, instead of
    /// acknowledging it.
    pub reject_on_worker_lost: Option<bool>,
    /// With `acks_late`: acknowledge failed and timed-out tasks (`true` when not set);
    /// `false` requeues a timed-out task's message and drops a failed one's (Celery rejects
    /// it without requeue).
    pub acks_on_failure_or_timeout: Option<bool>,
}

impl TaskOptions {
    /// No option set.
    pub const DEFAULT: TaskOptions = TaskOptions {
        acks_late: None,
        max_retries: None,
        default_retry_delay: None,
        autoretry_for: &[],
        retry_backoff: None,
        retry_backoff_max: None,
        retry_jitter: None,
        time_limit: None,
        soft_time_limit: None,
        rate_limit: None,
        ignore_result: None,
        track_started: None,
        reject_on_worker_lost: None,
        acks_on_failure_or_timeout: None,
    };
}

/// A rate limit: at most `per_second` task starts per second (`"10/s"` is 10.0, `"100/m"`
/// 1.67). Zero means no limit, as in Celery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Task starts per second.
    pub per_second: f64,
}

impl RateLimit {
    /// Celery's rate syntax: `"10/s"`, `"100/m"`, `"1000/h"`, or a bare number per second.
    ///
    /// ```
    /// use celeriac::registry::RateLimit;
    /// assert_eq!(RateLimit::parse("120/m").unwrap().per_second, 2.0);
    /// assert!(RateLimit::parse("10/d").is_none());
    /// ```
    pub fn parse(text: &str) -> Option<RateLimit> {
        let text = text.trim();
        let (ops, per) = match text.split_once('/') {
            Some((ops, unit)) => {
                let per = match unit.trim() {
                    "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    _ => return None,
                };
                (ops.trim(), per)
            }
            None => (text, 1.0),
        };
        let ops: f64 = ops.parse().ok()?;
        (ops.is_finite() && ops >= 0.0).then_some(RateLimit {
            per_second: ops / per,
        })
    }
}

/// A task as `#[task]` registers it.
#[derive(Debug)]
pub struct TaskEntry {
    /// The name given with `#[task(name = "...")]`.
    pub name: Option<&'static str>,
    /// `module_path!()` where the task was defined.
    pub module_path: &'static str,
    /// The function's name.
    pub fn_name: &'static str,
    /// How to run it.
    pub runner: Runner,
    /// Options from the attribute.
    pub options: TaskOptions,
}

/// The default Celery name of `fn_name` defined in `module_path` (a `module_path!()`):
/// `a::b` and `add` give `a.b.add`. The registry and the `#[task]` call stubs both use it,
/// so a stub always sends the name the worker registered.
pub fn task_name(module_path: &str, fn_name: &str) -> String {
    format!("{}.{}", module_path.replace("::", "."), fn_name)
}

impl TaskEntry {
    /// The Celery name: the `name = "..."` given to `#[task]`, or by default the module
    /// path with `::` replaced by `.`, a `.`, and the function name (`fn add` at the root
    /// of the binary crate `interop_worker` is `interop_worker.add`; in its module `math`,
    /// `interop_worker.math.add`), which mirrors Celery's `module.function` default.
    pub fn name(&self) -> String {
        match self.name {
            Some(name) => name.to_owned(),
            None => task_name(self.module_path, self.fn_name),
        }
    }

    /// Where the task is defined, `module::path::fn_name`, for messages.
    pub fn location(&self) -> String {
        format!("{}::{}", self.module_path, self.fn_name)
    }
}

inventory::collect!(TaskEntry);

/// Why the registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two tasks were registered under one name.
    #[error(
        "two tasks are registered under the name `{name}`; give one of them another `#[task(name = \"...\")]`"
    )]
    Duplicate {
        /// The shared name.
        name: String,
    },
}

/// The tasks a worker can run, by Celery name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, &'static TaskEntry>,
}

impl Registry {
    /// Every task of the program, as `#[task]` submitted them.
    pub fn from_inventory() -> Result<Registry, RegistryError> {
        Self::from_entries(inventory::iter::<TaskEntry>)
    }

    /// A registry of the given tasks; an error if two share a name.
    pub fn from_entries(
        entries: impl IntoIterator<Item = &'static TaskEntry>,
    ) -> Result<Registry, RegistryError> {
        let mut tasks = BTreeMap::new();
        for entry in entries {
            let name = entry.name();
            if tasks.contains_key(&name) {
                return Err(RegistryError::Duplicate { name });
            }
            tasks.insert(name, entry);
        }
        Ok(Registry { tasks })
    }

    /// The task registered under `name`.
    pub fn get(&self, name: &str) -> Option<&'static TaskEntry> {
        self.tasks.get(name).copied()
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tasks.keys().map(String::as_str).collect()
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is registered.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The tasks with their names, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'static TaskEntry)> {
        self.tasks.iter().map(|(k, v)| (k.as_str(), *v))
    }
}
