//! Finding the task for a name: every `#[task]` is submitted through `inventory`, and the
//! registry built from them at start-up rejects two tasks with one name.

use crate::task::{Invocation, TaskFuture, TaskResult};
use std::collections::BTreeMap;

/// How a task body runs.
#[derive(Debug, Clone, Copy)]
pub enum Runner {
    /// An async fn: spawned on the runtime.
    Async(fn(Invocation) -> TaskFuture),
    /// A plain fn: run on the blocking pool.
    Blocking(fn(Invocation) -> TaskResult),
}

/// Per-task options given in `#[task(...)]`; `None` means "the worker's setting".
///
/// Build it from [`TaskOptions::DEFAULT`] with struct update syntax so new options can be
/// added without breaking existing code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskOptions {
    /// Acknowledge the message after the task ends instead of before it starts
    /// (Celery's `acks_late`).
    pub acks_late: Option<bool>,
    /// How many retries a task may ask for before it fails (Celery's `max_retries`,
    /// 3 when not set).
    pub max_retries: Option<u32>,
}

impl TaskOptions {
    /// No option set.
    pub const DEFAULT: TaskOptions = TaskOptions {
        acks_late: None,
        max_retries: None,
    };
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
