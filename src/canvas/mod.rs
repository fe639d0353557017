//! Signatures: one task call described as data (name, arguments, options), typed by what the
//! task returns. Celery's `signature` / `add.s(2, 3)`.
//!
//! Build one by hand for any task, Python or Rust:
//!
//! ```
//! use celeriac::canvas::Signature;
//!
//! let sig = Signature::new("pytasks.add").arg(2).arg(3).returns::<i64>();
//! assert_eq!(sig.name(), "pytasks.add");
//! assert_eq!(sig.args(), &[serde_json::json!(2), serde_json::json!(3)]);
//! ```
//!
//! or let `#[task]` write one: for `#[task] async fn add(x: i64, y: i64) -> i64` the macro
//! adds the call stub `add::new(x: i64, y: i64) -> Signature<i64>` beside the function, so
//! arguments are checked by the compiler. Send it with
//! [`Client::send`](crate::client::Client::send), which gives an
//! [`AsyncResult<R>`](crate::client::AsyncResult) whose `get` returns the typed value.
//!
//! A signature that arrives inside a message (a `link_error` errback, as Celery writes it:
//! `{"task": .., "args": .., "kwargs": .., "options": .., "immutable": ..}`) is read with
//! [`Signature::from_dict`].
//!
//! Chains, groups and chords will build on this type.

mod dict;

pub use dict::SignatureError;

use crate::client::SendOptions;
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// A task call: name, positional and keyword arguments, and `apply_async` options. `R` is
/// the type its result is read as ([`serde_json::Value`] unless said otherwise).
///
/// Arguments are serialized when they are added; a value that cannot be represented (a
/// map with non-string keys, a failing `Serialize` impl) is kept as an error and reported
/// when the signature is sent ([`ClientError::Arguments`](crate::client::ClientError::Arguments)),
/// as kombu reports an `EncodeError` at publish time.
pub struct Signature<R = Value> {
    name: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    options: SendOptions,
    immutable: bool,
    invalid: Option<Arc<serde_json::Error>>,
    // `fn() -> R`: the signature neither owns nor borrows an `R`, so it is `Send`, `Sync`
    // and `Clone` whatever `R` is.
    result: PhantomData<fn() -> R>,
}

impl Signature<Value> {
    /// A call of task `name` with no arguments yet, read as a JSON value (see
    /// [`Signature::returns`]).
    pub fn new(name: impl Into<String>) -> Signature<Value> {
        Signature {
            name: name.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            options: SendOptions::default(),
            immutable: false,
            invalid: None,
            result: PhantomData,
        }
    }
}

impl<R> Signature<R> {
    /// Add a positional argument.
    pub fn arg(mut self, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => self.args.push(v),
            Err(e) => self.keep_error(e),
        }
        self
    }

    /// Add a keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => {
                self.kwargs.insert(name.into(), v);
            }
            Err(e) => self.keep_error(e),
        }
        self
    }

    fn keep_error(&mut self, e: serde_json::Error) {
        // The first problem is the one worth reporting.
        self.invalid.get_or_insert_with(|| Arc::new(e));
    }

    /// Read the result as `T` instead.
    pub fn returns<T>(self) -> Signature<T> {
        Signature {
            name: self.name,
            args: self.args,
            kwargs: self.kwargs,
            options: self.options,
            immutable: self.immutable,
            invalid: self.invalid,
            result: PhantomData,
        }
    }

    /// Make it immutable (Celery's `.si()` / `immutable=True`): when it is called back
    /// (as a link or errback) it gets only its own arguments, not the parent's id or result.
    pub fn immutable(mut self, yes: bool) -> Self {
        self.immutable = yes;
        self
    }

    /// Whether it is immutable.
    pub fn is_immutable(&self) -> bool {
        self.immutable
    }

    /// Send with these `apply_async` options (queue, countdown, ...), replacing any set
    /// before.
    ///
    /// ```
    /// use celeriac::canvas::Signature;
    /// use celeriac::client::SendOptions;
    ///
    /// let sig = Signature::new("pytasks.add").with_options(SendOptions::new().queue("py"));
    /// assert_eq!(sig.options().queue.as_deref(), Some("py"));
    /// ```
    pub fn with_options(mut self, options: SendOptions) -> Self {
        self.options = options;
        self
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The positional arguments.
    pub fn args(&self) -> &[Value] {
        &self.args
    }

    /// The keyword arguments.
    pub fn kwargs(&self) -> &Map<String, Value> {
        &self.kwargs
    }

    /// The options it is sent with.
    pub fn options(&self) -> &SendOptions {
        &self.options
    }

    /// The options, to change one in place.
    pub fn options_mut(&mut self) -> &mut SendOptions {
        &mut self.options
    }

    /// Why an argument could not be serialized, if one could not.
    pub fn invalid_argument(&self) -> Option<&Arc<serde_json::Error>> {
        self.invalid.as_ref()
    }
}

impl<R> Clone for Signature<R> {
    fn clone(&self) -> Self {
        Signature {
            name: self.name.clone(),
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            options: self.options.clone(),
            immutable: self.immutable,
            invalid: self.invalid.clone(),
            result: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Signature<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("kwargs", &self.kwargs)
            .field("options", &self.options)
            .field("result", &std::any::type_name::<R>())
            .finish_non_exhaustive()
    }
}

/// The Python-style call text, as Celery prints a signature: `pytasks.add(2, 3, z=4)`.
impl<R> fmt::Display for Signature<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::protocol::kombu::saferepr;
        write!(f, "{}(", self.name)?;
        let mut first = true;
        for a in &self.args {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            f.write_str(&saferepr(a, None))?;
        }
        for (k, v) in &self.kwargs {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{k}={}", saferepr(v, None))?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn builds_args_kwargs_and_displays_like_celery() {
        let sig = Signature::new("pytasks.add")
            .arg(2)
            .arg("x")
            .kwarg("z", vec![1, 2])
            .returns::<i64>();
        assert_eq!(sig.args(), &[json!(2), json!("x")]);
        assert_eq!(sig.kwargs().get("z"), Some(&json!([1, 2])));
        assert_eq!(sig.to_string(), "pytasks.add(2, 'x', z=[1, 2])");
        assert!(sig.invalid_argument().is_none());
    }

    #[test]
    fn keeps_the_first_unserializable_argument_as_an_error() {
        let mut bad = BTreeMap::new();
        bad.insert(vec![1u8], 1);
        let sig = Signature::new("t").arg(1).arg(&bad).kwarg("k", &bad);
        assert_eq!(sig.args(), &[json!(1)]);
        let err = sig.invalid_argument().expect("kept");
        assert!(err.to_string().contains("key must be a string"), "{err}");
    }
}
