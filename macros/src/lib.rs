//! `#[task]`: turns a function into a Celery task registered with celeriac.
//!
//! The macro is split the usual way: `parse` reads the attribute and the function,
//! `validate` checks the function against the rules and builds a model, `expand` writes
//! the code. The logic of binding arguments and calling lives in `celeriac::task`.

mod expand;
mod parse;
mod validate;

use proc_macro::TokenStream;

/// Registers a function as a Celery task.
///
/// ```ignore
/// use celeriac::{task, Request};
/// use celeriac::task::TaskError;
///
/// #[task(name = "interop.add")]
/// async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
///     x.checked_add(y).ok_or_else(|| TaskError::new("OverflowError", "integer overflow"))
/// }
///
/// #[task]
/// fn concat(parts: Vec<String>, sep: Option<String>, request: &Request) -> String {
///     parts.join(&sep.unwrap_or_default())
/// }
/// ```
///
/// The function stays as written and callable; the macro adds a hidden runner beside it
/// and registers both with the worker at start-up (through `inventory`).
///
/// # Name
///
/// `#[task(name = "...")]` sets the Celery name Python callers use. Without it the name is
/// the module path with `::` replaced by `.`, then `.` and the function name:
/// `fn add` at the root of the crate `interop_worker` is `interop_worker.add`, in its module
/// `math` it is `interop_worker.math.add`. Two tasks with one name make the worker refuse
/// to start (`RegistryError::Duplicate`).
///
/// # Other arguments
///
/// `acks_late = true|false` overrides the worker's `acks_late` setting for this task.
///
/// # Parameters
///
/// Any type implementing `serde::Deserialize` (owned). They are filled from the message's
/// positional `args` and keyword `kwargs` by parameter name, with Python's rules; a
/// parameter of type `Option<T>` may be left out. A parameter of type `&Request` receives
/// the request context and is not an argument. Wrong arguments fail the task with
/// `TypeError` and a message like Python's (`add() missing 1 required positional argument: 'y'`).
///
/// # Return type
///
/// Any `serde::Serialize` type (none means Python's `None`), or a `Result<T, E>` whose
/// `E` is `celeriac::task::TaskError` or implements `celeriac::task::ExcType` (which picks
/// the Python exception class). A return type is treated as a `Result` when its last path
/// segment is `Result`.
///
/// # Call stub
///
/// Beside the function the macro writes one more item of the same name and visibility:
/// a struct (it lives in the type namespace, so the function stays callable) whose
/// `new` takes the task's parameters, `&Request` left out, and returns a
/// `celeriac::canvas::Signature` typed by what the task returns:
///
/// ```ignore
/// let sig: Signature<i64> = add::new(2, 3);      // checked like a call of `add`
/// let sum = client.send(&sig).await?.get(timeout).await?;   // an i64
/// assert_eq!(add::name(), "interop.add");
/// ```
///
/// The arguments are sent positionally, as Python's `add.delay(2, 3)` sends them. The stub
/// needs every argument type to implement `serde::Serialize`; that bound is checked where
/// `new` is called, so a task whose parameter types are only `Deserialize` still compiles.
///
/// # Async and blocking
///
/// An `async fn` runs on the Tokio runtime; a plain `fn` runs on the blocking thread pool
/// (`spawn_blocking`), so it may block without stalling other tasks. A panic in either is
/// caught and stored as a FAILURE.
///
/// # Not accepted
///
/// Generic functions, `self` receivers, parameters that are not plain names, reference
/// parameters other than `&Request`, `impl Trait`, `unsafe` or `extern` functions, and
/// unknown attribute arguments are compile errors pointing at the offending token.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let args = match parse::task_args(attr.into()) {
        Ok(args) => args,
        Err(e) => return expand::fallback(item, e).into(),
    };
    let func = match parse::task_fn(item.clone()) {
        Ok(func) => func,
        Err(e) => return expand::fallback(item, e).into(),
    };
    match validate::task_fn(&func, args) {
        Ok(task) => expand::task(&func, &task).into(),
        Err(e) => expand::fallback(item, e).into(),
    }
}
