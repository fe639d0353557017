//! What a task is at run time: its arguments, its request context, its errors, and the
//! call itself (async on the runtime, plain functions on the blocking pool).

pub mod args;
pub mod call;
pub mod error;
pub mod request;

pub use args::{ArgBinder, Param};
pub use call::call;
pub use error::{ExcType, IntoTaskError, RetryRequest, TaskError, TaskErrorKind};
pub use request::{Request, RequestHeaders};

use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a task returns to the worker: the serialized return value, or the error.
pub type TaskResult = Result<Value, TaskError>;

/// A boxed task future, as the macro's runner returns it.
pub type TaskFuture = Pin<Box<dyn Future<Output = TaskResult> + Send + 'static>>;

/// One call of a task: its arguments and its request context.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// The request context.
    pub request: Arc<Request>,
}

impl Invocation {
    /// An invocation with the given arguments and request context.
    pub fn new(args: Vec<Value>, kwargs: Map<String, Value>, request: Request) -> Self {
        Invocation {
            args,
            kwargs,
            request: Arc::new(request),
        }
    }
}
