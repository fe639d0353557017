//! `TaskError`: a task's failure as Celery stores it.
//!
//! Celery stores a failed task's exception as `{"exc_type", "exc_message", "exc_module"}`
//! and the Python caller rebuilds and raises it (`celery/backends/base.py`,
//! `exception_to_python`): the class is looked up as `exc_type` inside the already imported
//! module `exc_module`; when the module is not imported or has no such attribute, Celery
//! synthesizes a class of that name deriving from `Exception`. So a Python builtin such as
//! `ValueError` is raised as itself, and any other name still raises cleanly.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// The Python class used for an error converted with `?` from a plain
/// [`std::error::Error`]: a real builtin, so Python code can `except RuntimeError`.
pub const STD_ERROR_EXC_TYPE: &str = "RuntimeError";

/// The Python class a caught panic is stored as. `celeriac` is not a Python module a
/// client imports, so Celery synthesizes `RustPanic(Exception)` and raises it with the
/// panic message (checked against Celery 5.7's `exception_to_python`).
pub const PANIC_EXC_TYPE: &str = "RustPanic";

/// The `exc_module` stored with [`PANIC_EXC_TYPE`].
pub const PANIC_EXC_MODULE: &str = "celeriac";

/// A task failure carrying Celery's exception shape, or a request to retry the task.
///
/// `TaskError` deliberately does not implement [`std::error::Error`]: that keeps
/// `impl<E: std::error::Error> From<E> for TaskError` coherent, so `?` converts any
/// error inside a task returning `Result<T, TaskError>` (the same trick as `anyhow`).
/// Such errors are stored as Python's `RuntimeError` with the error's `Display` text.
/// An error type that implements [`ExcType`] chooses its own class: return it directly
/// (`Result<T, MyError>`) or convert it with [`TaskError::from_exception`], because `?`
/// always goes through the `std::error::Error` conversion when the type implements both.
///
/// ```
/// use celeriac::task::TaskError;
/// let err = TaskError::value_error("x must be positive");
/// assert_eq!(
///     err.to_exception_value().to_string(),
///     r#"{"exc_type":"ValueError","exc_message":["x must be positive"],"exc_module":"builtins"}"#
/// );
/// ```
#[derive(Clone, PartialEq)]
pub struct TaskError(Box<Inner>);

/// Boxed so that `Result<_, TaskError>` stays small on the success path.
#[derive(Debug, Clone, PartialEq)]
struct Inner {
    exc_type: String,
    exc_module: String,
    exc_message: Vec<Value>,
    traceback: Option<String>,
    kind: TaskErrorKind,
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("exc_type", &self.0.exc_type)
            .field("exc_module", &self.0.exc_module)
            .field("exc_message", &self.0.exc_message)
            .field("traceback", &self.0.traceback)
            .field("kind", &self.0.kind)
            .finish()
    }
}

/// What the worker should do with a [`TaskError`].
#[derive(Debug, Clone, PartialEq)]
pub enum TaskErrorKind {
    /// Store a FAILURE with this exception.
    Failure,
    /// Publish the task again (Celery's `Task.retry`).
    Retry(RetryRequest),
    /// Reject the message (Celery's `Reject`), requeueing it or not.
    Reject {
        /// Give it back to the queue (else drop it and store FAILURE).
        requeue: bool,
    },
}

/// The options of a retry request, as `Task.retry(exc=, countdown=, eta=, max_retries=)`
/// takes them. Unset options fall back to the task's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryRequest {
    /// Run again after this delay.
    pub countdown: Option<Duration>,
    /// Run again at this time (wins over `countdown`, as in Celery).
    pub eta: Option<DateTime<Utc>>,
    /// Overrides the task's `max_retries` for this decision.
    pub max_retries: Option<u32>,
    /// The failure that caused the retry: stored with the RETRY state, and stored as the
    /// FAILURE when no retries are left.
    pub cause: Option<TaskError>,
}

/// Lets an error type choose the Python exception class it is stored as.
///
/// ```
/// use celeriac::task::{ExcType, TaskError};
/// #[derive(Debug)]
/// struct NotFound(String);
/// impl std::fmt::Display for NotFound {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "no such key: {}", self.0)
///     }
/// }
/// impl ExcType for NotFound {
///     fn exc_type(&self) -> &str { "KeyError" }
/// }
/// let err = TaskError::from_exception(&NotFound("a".into()));
/// assert_eq!(err.exc_type(), "KeyError");
/// assert_eq!(err.exc_module(), "builtins");
/// ```
pub trait ExcType: fmt::Display {
    /// The Python class name (its `__qualname__`), e.g. `"ValueError"`.
    fn exc_type(&self) -> &str;
    /// The Python module of the class; `builtins` for Python's own exceptions.
    fn exc_module(&self) -> &str {
        "builtins"
    }
    /// The exception's `args`: by default the `Display` text as the only argument.
    fn exc_message(&self) -> Vec<Value> {
        vec![Value::String(self.to_string())]
    }
}

/// Conversion of a task's error type into a [`TaskError`]; what makes
/// `Result<T, E>` a valid task return type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned as a task error",
    label = "a task's error type must be `TaskError` or implement `celeriac::task::ExcType`",
    note = "implement `celeriac::task::ExcType` for `{Self}` to choose its Python class, or return `Result<T, celeriac::task::TaskError>` and convert with `?`"
)]
pub trait IntoTaskError {
    /// Convert into the stored error.
    fn into_task_error(self) -> TaskError;
}

impl IntoTaskError for TaskError {
    fn into_task_error(self) -> TaskError {
        self
    }
}

impl<E: ExcType> IntoTaskError for E {
    fn into_task_error(self) -> TaskError {
        TaskError::from_exception(&self)
    }
}

impl IntoTaskError for Box<dyn std::error::Error + Send + Sync + 'static> {
    fn into_task_error(self) -> TaskError {
        TaskError::from_dyn_error(&*self, None)
    }
}

impl TaskError {
    /// A failure of Python class `exc_type` (in `builtins`) with one message argument.
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError(Box::new(Inner {
            exc_type: exc_type.into(),
            exc_module: "builtins".to_owned(),
            exc_message: vec![Value::String(message.into())],
            traceback: None,
            kind: TaskErrorKind::Failure,
        }))
    }

    /// `ValueError(message)`.
    pub fn value_error(message: impl Into<String>) -> Self {
        Self::new("ValueError", message)
    }

    /// `TypeError(message)`: what a wrong argument gives.
    pub fn type_error(message: impl Into<String>) -> Self {
        Self::new("TypeError", message)
    }

    /// The error an [`ExcType`] describes, with its class, module and arguments.
    pub fn from_exception<E: ExcType + ?Sized>(err: &E) -> Self {
        TaskError(Box::new(Inner {
            exc_type: err.exc_type().to_owned(),
            exc_module: err.exc_module().to_owned(),
            exc_message: err.exc_message(),
            traceback: None,
            kind: TaskErrorKind::Failure,
        }))
    }

    /// Celery's `SoftTimeLimitExceeded()` (`billiard.exceptions`), for a task that stops at
    /// its soft time limit ([`Request::soft_time_limit`](crate::Request::soft_time_limit)).
    pub fn soft_time_limit_exceeded() -> Self {
        Self::new("SoftTimeLimitExceeded", "")
            .with_module("billiard.exceptions")
            .with_args(Vec::new())
    }

    /// Celery's `TimeLimitExceeded(seconds)` (`billiard.exceptions`): what the worker stores
    /// when the hard time limit stops a task. Whole seconds are written as a Python int.
    pub fn time_limit_exceeded(limit: Duration) -> Self {
        let secs = limit.as_secs_f64();
        let arg = if secs.fract() == 0.0 && secs <= u64::MAX as f64 {
            Value::from(limit.as_secs())
        } else {
            Value::from(secs)
        };
        Self::new("TimeLimitExceeded", "")
            .with_module("billiard.exceptions")
            .with_args(vec![arg])
    }

    /// Celery's `Reject(reason, requeue)`: the task refuses its message. With `requeue`
    /// the message goes back to the queue and nothing is stored; without, FAILURE
    /// `Reject` is stored and the message is dropped.
    pub fn reject(reason: impl Into<String>, requeue: bool) -> Self {
        let reason = reason.into();
        TaskError(Box::new(Inner {
            exc_type: "Reject".to_owned(),
            exc_module: "celery.exceptions".to_owned(),
            exc_message: vec![Value::String(reason), Value::Bool(requeue)],
            traceback: None,
            kind: TaskErrorKind::Reject { requeue },
        }))
    }

    /// A caught panic, with the panic's message.
    pub fn panic(message: impl Into<String>) -> Self {
        Self::new(PANIC_EXC_TYPE, message).with_module(PANIC_EXC_MODULE)
    }

    /// A request to retry the task with the task's default delay. Chain
    /// [`countdown`](Self::countdown), [`eta`](Self::eta),
    /// [`max_retries`](Self::max_retries) and [`caused_by`](Self::caused_by) to
    /// set its options.
    ///
    /// Its own exception shape is Celery's `celery.exceptions.Retry`, used only when the
    /// request has no cause.
    pub fn retry() -> Self {
        TaskError(Box::new(Inner {
            exc_type: "Retry".to_owned(),
            exc_module: "celery.exceptions".to_owned(),
            exc_message: vec![Value::String("Retry requested".to_owned())],
            traceback: None,
            kind: TaskErrorKind::Retry(RetryRequest::default()),
        }))
    }

    /// Sets the Python module of the class (default `builtins`).
    pub fn with_module(mut self, exc_module: impl Into<String>) -> Self {
        self.0.exc_module = exc_module.into();
        self
    }

    /// Replaces the exception's arguments (Celery's `exc_message` list).
    pub fn with_args(mut self, args: Vec<Value>) -> Self {
        self.0.exc_message = args;
        self
    }

    /// Attaches a traceback text, stored in the result's `traceback` field.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.0.traceback = Some(traceback.into());
        self
    }

    /// Retry after `countdown`. On a failure this turns it into a retry request caused
    /// by that failure, like Python's `raise self.retry(exc=exc, countdown=...)`.
    pub fn countdown(self, countdown: Duration) -> Self {
        self.map_retry(|r| r.countdown = Some(countdown))
    }

    /// Retry at `eta`. On a failure this turns it into a retry request caused by it.
    pub fn eta(self, eta: DateTime<Utc>) -> Self {
        self.map_retry(|r| r.eta = Some(eta))
    }

    /// Override the task's `max_retries` for this retry. On a failure this turns it into
    /// a retry request caused by it.
    pub fn max_retries(self, max_retries: u32) -> Self {
        self.map_retry(|r| r.max_retries = Some(max_retries))
    }

    /// Sets the failure that caused this retry. On a failure this turns it into a retry
    /// request whose cause is `cause` (the original failure is dropped).
    pub fn caused_by(self, mut cause: TaskError) -> Self {
        // A retry is not a cause Celery can store: use its own cause, or its failure shape.
        if let TaskErrorKind::Retry(r) = &mut cause.0.kind {
            match r.cause.take() {
                Some(inner) => cause = inner,
                None => cause.0.kind = TaskErrorKind::Failure,
            }
        }
        let mut retry = if self.is_retry() {
            self
        } else {
            TaskError::retry()
        };
        if let TaskErrorKind::Retry(r) = &mut retry.0.kind {
            r.cause = Some(cause);
        }
        retry
    }

    fn map_retry(self, set: impl FnOnce(&mut RetryRequest)) -> Self {
        let mut retry = if self.is_retry() {
            self
        } else {
            TaskError::retry().caused_by(self)
        };
        if let TaskErrorKind::Retry(r) = &mut retry.0.kind {
            set(r);
        }
        retry
    }

    /// A [`std::error::Error`] as `RuntimeError(<Display text>)`; the Rust type and the
    /// error's `source()` chain go into the traceback text.
    fn from_dyn_error(err: &(dyn std::error::Error + 'static), type_name: Option<&str>) -> Self {
        let mut traceback = match type_name {
            Some(t) => format!("Rust error {t}: {err}"),
            None => format!("Rust error: {err}"),
        };
        let mut source = err.source();
        while let Some(cause) = source {
            traceback.push_str(&format!("\nCaused by: {cause}"));
            source = cause.source();
        }
        Self::new(STD_ERROR_EXC_TYPE, err.to_string()).with_traceback(traceback)
    }

    /// The Python class name, e.g. `ValueError`.
    pub fn exc_type(&self) -> &str {
        &self.0.exc_type
    }

    /// The Python module of the class, e.g. `builtins`.
    pub fn exc_module(&self) -> &str {
        &self.0.exc_module
    }

    /// The exception's arguments (Celery's `exc_message`, Python's `args`).
    pub fn exc_message(&self) -> &[Value] {
        &self.0.exc_message
    }

    /// The traceback text, if any.
    pub fn traceback(&self) -> Option<&str> {
        self.0.traceback.as_deref()
    }

    /// Whether this is a failure or a retry request.
    pub fn kind(&self) -> &TaskErrorKind {
        &self.0.kind
    }

    /// Whether this asks for a retry.
    pub fn is_retry(&self) -> bool {
        matches!(self.0.kind, TaskErrorKind::Retry(_))
    }

    /// The retry options, when this is a retry request.
    pub fn retry_request(&self) -> Option<&RetryRequest> {
        match &self.0.kind {
            TaskErrorKind::Retry(r) => Some(r),
            TaskErrorKind::Failure | TaskErrorKind::Reject { .. } => None,
        }
    }

    /// `{"exc_type": .., "exc_message": [..], "exc_module": ..}` in Celery's key order,
    /// as the result backend stores it.
    pub fn to_exception_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("exc_type".into(), Value::String(self.0.exc_type.clone()));
        map.insert(
            "exc_message".into(),
            Value::Array(self.0.exc_message.clone()),
        );
        map.insert(
            "exc_module".into(),
            Value::String(self.0.exc_module.clone()),
        );
        Value::Object(map)
    }

    /// The same shape as the protocol layer's [`ExceptionInfo`](crate::protocol::ExceptionInfo).
    pub fn to_exception_info(&self) -> crate::protocol::ExceptionInfo {
        crate::protocol::ExceptionInfo {
            exc_type: self.0.exc_type.clone(),
            exc_message: Value::Array(self.0.exc_message.clone()),
            exc_module: self.0.exc_module.clone(),
        }
    }
}

impl fmt::Display for TaskError {
    /// `ValueError: message`, like the last line of a Python traceback.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.exc_module != "builtins" {
            write!(f, "{}.", self.0.exc_module)?;
        }
        write!(f, "{}", self.0.exc_type)?;
        let mut sep = ": ";
        for arg in &self.0.exc_message {
            match arg {
                Value::String(s) => write!(f, "{sep}{s}")?,
                other => write!(f, "{sep}{other}")?,
            }
            sep = ", ";
        }
        Ok(())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(err: E) -> Self {
        TaskError::from_dyn_error(&err, Some(std::any::type_name::<E>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Bad;
    impl fmt::Display for Bad {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bad thing")
        }
    }
    impl ExcType for Bad {
        fn exc_type(&self) -> &str {
            "LookupError"
        }
    }

    fn parse(s: &str) -> Result<i64, TaskError> {
        Ok(s.parse::<i64>()?)
    }

    #[test]
    fn question_mark_converts_std_errors_to_runtime_error() {
        let err = parse("x").unwrap_err();
        assert_eq!(err.exc_type(), "RuntimeError");
        assert_eq!(err.exc_module(), "builtins");
        assert_eq!(
            err.exc_message(),
            &[Value::from("invalid digit found in string")]
        );
        let tb = err.traceback().unwrap();
        assert!(tb.contains("ParseIntError"), "{tb}");
        assert!(!err.is_retry());
    }

    #[test]
    fn exception_value_keeps_celery_key_order() {
        let err = TaskError::from_exception(&Bad);
        assert_eq!(
            serde_json::to_string(&err.to_exception_value()).unwrap(),
            r#"{"exc_type":"LookupError","exc_message":["bad thing"],"exc_module":"builtins"}"#
        );
        assert_eq!(err.to_string(), "LookupError: bad thing");
        let info = err.to_exception_info();
        assert_eq!(info.exc_message, serde_json::json!(["bad thing"]));
    }

    #[test]
    fn into_task_error_for_exc_types_and_boxed_errors() {
        assert_eq!(Bad.into_task_error().exc_type(), "LookupError");
        let boxed: Box<dyn std::error::Error + Send + Sync> = "plain".into();
        let err = boxed.into_task_error();
        assert_eq!(err.exc_type(), "RuntimeError");
        assert_eq!(err.exc_message(), &[Value::from("plain")]);
    }

    #[test]
    fn retry_builder_sets_options_and_cause() {
        let at = DateTime::<Utc>::from_timestamp(2_000_000_000, 0).unwrap();
        let err = TaskError::retry()
            .countdown(Duration::from_millis(100))
            .eta(at)
            .max_retries(5)
            .caused_by(TaskError::value_error("flaky"));
        let r = err.retry_request().unwrap();
        assert_eq!(r.countdown, Some(Duration::from_millis(100)));
        assert_eq!(r.eta, Some(at));
        assert_eq!(r.max_retries, Some(5));
        assert_eq!(r.cause.as_ref(), Some(&TaskError::value_error("flaky")));
        assert_eq!(err.exc_type(), "Retry");
        assert_eq!(err.exc_module(), "celery.exceptions");
    }

    #[test]
    fn countdown_on_a_failure_makes_a_retry_caused_by_it() {
        let err = TaskError::type_error("later").countdown(Duration::from_secs(3));
        let r = err.retry_request().unwrap();
        assert_eq!(r.countdown, Some(Duration::from_secs(3)));
        assert_eq!(r.cause.as_ref().unwrap().exc_type(), "TypeError");
        // A retry used as a cause contributes only its own cause.
        let nested = TaskError::retry().caused_by(err);
        let cause = nested.retry_request().unwrap().cause.as_ref().unwrap();
        assert_eq!(cause, &TaskError::type_error("later"));
    }

    #[test]
    fn panic_shape() {
        let err = TaskError::panic("boom");
        assert_eq!(
            err.to_exception_value(),
            serde_json::json!({
                "exc_type": "RustPanic", "exc_message": ["boom"], "exc_module": "celeriac"
            })
        );
        assert_eq!(err.to_string(), "celeriac.RustPanic: boom");
    }
}
