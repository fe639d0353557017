//! Binding Celery's `args` and `kwargs` to typed parameters, and turning the return value
//! into the stored result.
//!
//! The code `#[task]` generates only lists the parameters and calls [`ArgBinder`]; the
//! rules live here. They follow Python's own call rules, so a Python caller that passes
//! the wrong arguments gets the `TypeError` text it would get from a Python task:
//! unexpected or duplicated keywords first, then too many positional arguments, then
//! missing ones.

use super::TaskResult;
use super::error::{IntoTaskError, TaskError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One parameter of a task function, as `#[task]` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// The parameter name, which is also its keyword.
    pub name: &'static str,
    /// The type as written in the source, for error messages.
    pub ty: &'static str,
    /// Whether it may be left out (an `Option<T>` parameter).
    pub optional: bool,
}

/// A type a task parameter can have: anything serde can deserialize into an owned value.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task parameter: it does not implement `serde::Deserialize`",
    label = "not deserializable",
    note = "task arguments arrive as JSON or msgpack values: derive `serde::Deserialize` for `{Self}` or use a serde type; the only reference parameter allowed is `&celeriac::Request`"
)]
pub trait TaskParam: DeserializeOwned {}
impl<T: DeserializeOwned> TaskParam for T {}

/// A type a task can return: anything serde can serialize.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned by a task: it does not implement `serde::Serialize`",
    label = "not serializable",
    note = "a task returns a `serde::Serialize` type, or `Result<T, E>` with `T: Serialize` and `E` either `TaskError` or an `ExcType`"
)]
pub trait TaskReturn: Serialize {}
impl<T: Serialize + ?Sized> TaskReturn for T {}

/// A type a call stub can send as an argument: anything serde can serialize. Task
/// parameters only need `Deserialize`; this bound is checked where a stub is called.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent as a task argument: it does not implement `serde::Serialize`",
    label = "not serializable",
    note = "the call stub `task::new(..)` serializes its arguments into the message: derive `serde::Serialize` for `{Self}` (running the task only needs `Deserialize`)"
)]
pub trait StubArg: Serialize {}
impl<T: Serialize> StubArg for T {}

/// `T` of a `Result<T, E>` written without its arguments (an alias): what a call stub's
/// signature is typed by.
pub trait ResultOk {
    /// The success type.
    type Ok;
}
impl<T, E> ResultOk for Result<T, E> {
    type Ok = T;
}

/// Assigns the received `args` and `kwargs` to a task's parameters.
///
/// ```
/// use celeriac::task::args::{ArgBinder, Param};
/// static PARAMS: [Param; 2] = [
///     Param { name: "x", ty: "i64", optional: false },
///     Param { name: "y", ty: "Option<i64>", optional: true },
/// ];
/// let kwargs = serde_json::json!({"y": 5}).as_object().unwrap().clone();
/// let mut b = ArgBinder::new("add", &PARAMS, vec![2.into()], kwargs).unwrap();
/// assert_eq!(b.take::<i64>(0).unwrap(), 2);
/// assert_eq!(b.take_optional::<Option<i64>>(1).unwrap(), Some(5));
///
/// let err = ArgBinder::new("add", &PARAMS, vec![], Default::default()).unwrap_err();
/// assert_eq!(err.exc_message()[0], "add() missing 1 required positional argument: 'x'");
/// ```
#[derive(Debug)]
pub struct ArgBinder {
    fn_name: &'static str,
    params: &'static [Param],
    /// The value received for each parameter, by index; taken out once bound.
    values: Vec<Option<Value>>,
}

impl ArgBinder {
    /// Matches `args` by position and `kwargs` by name to `params`, checking counts and
    /// names the way Python does. `fn_name` is used in the messages (`add() takes ...`).
    pub fn new(
        fn_name: &'static str,
        params: &'static [Param],
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<Self, TaskError> {
        let given = args.len();
        let mut values: Vec<Option<Value>> =
            args.into_iter().map(Some).take(params.len()).collect();
        values.resize(params.len(), None);

        for (key, value) in kwargs {
            let Some(index) = params.iter().position(|p| p.name == key) else {
                return Err(TaskError::type_error(format!(
                    "{fn_name}() got an unexpected keyword argument '{key}'"
                )));
            };
            if index < given {
                return Err(TaskError::type_error(format!(
                    "{fn_name}() got multiple values for argument '{key}'"
                )));
            }
            values[index] = Some(value);
        }

        if given > params.len() {
            let required = params.iter().filter(|p| !p.optional).count();
            let takes = if required == params.len() {
                format!(
                    "{} positional argument{}",
                    params.len(),
                    plural(params.len())
                )
            } else {
                format!("from {required} to {} positional arguments", params.len())
            };
            let were = if given == 1 { "was" } else { "were" };
            return Err(TaskError::type_error(format!(
                "{fn_name}() takes {takes} but {given} {were} given"
            )));
        }

        let missing: Vec<String> = params
            .iter()
            .zip(&values)
            .filter(|(p, v)| !p.optional && v.is_none())
            .map(|(p, _)| format!("'{}'", p.name))
            .collect();
        if !missing.is_empty() {
            return Err(TaskError::type_error(format!(
                "{fn_name}() missing {} required positional argument{}: {}",
                missing.len(),
                plural(missing.len()),
                python_list(&missing)
            )));
        }

        Ok(ArgBinder {
            fn_name,
            params,
            values,
        })
    }

    /// The value of the required parameter at `index`, deserialized.
    pub fn take<T: TaskParam>(&mut self, index: usize) -> Result<T, TaskError> {
        match self.values.get_mut(index).and_then(Option::take) {
            Some(value) => self.convert(index, value),
            // `new` already checked that every required parameter has a value.
            None => Err(TaskError::type_error(format!(
                "{}() missing 1 required positional argument: '{}'",
                self.fn_name,
                self.param(index).name
            ))),
        }
    }

    /// The value of the parameter at `index`, or what `null` deserializes to (`None` for
    /// an `Option<T>`) when the caller left it out.
    pub fn take_optional<T: TaskParam>(&mut self, index: usize) -> Result<T, TaskError> {
        let value = self
            .values
            .get_mut(index)
            .and_then(Option::take)
            .unwrap_or(Value::Null);
        self.convert(index, value)
    }

    fn param(&self, index: usize) -> Param {
        self.params.get(index).copied().unwrap_or(Param {
            name: "?",
            ty: "?",
            optional: false,
        })
    }

    fn convert<T: DeserializeOwned>(&self, index: usize, value: Value) -> Result<T, TaskError> {
        let first = match T::deserialize(&value) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        // kombu's JSON type markers (`{"__type__": "datetime", ...}`) stand for plain
        // values a Rust type may accept once unwrapped.
        let plain = crate::protocol::kombu::plain(&value);
        if plain != value
            && let Ok(v) = T::deserialize(&plain)
        {
            return Ok(v);
        }
        let p = self.param(index);
        Err(TaskError::type_error(format!(
            "{}() argument '{}' could not be read as {}: {first}",
            self.fn_name, p.name, p.ty
        )))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Python's way of listing missing names: `'x'`, `'x' and 'y'`, `'x', 'y', and 'z'`.
fn python_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    }
}

/// A task's return value as the stored result. A value JSON cannot hold (a map with
/// non-string keys, say) fails like kombu does: `kombu.exceptions.EncodeError`.
pub fn to_result_value<T: TaskReturn + ?Sized>(value: &T) -> TaskResult {
    serde_json::to_value(value)
        .map_err(|e| TaskError::new("EncodeError", e.to_string()).with_module("kombu.exceptions"))
}

/// A task's `Result<T, E>` as the stored result.
pub fn from_task_result<T: TaskReturn, E: IntoTaskError>(result: Result<T, E>) -> TaskResult {
    match result {
        Ok(value) => to_result_value(&value),
        Err(err) => Err(err.into_task_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static ADD: [Param; 2] = [
        Param {
            name: "x",
            ty: "i64",
            optional: false,
        },
        Param {
            name: "y",
            ty: "i64",
            optional: false,
        },
    ];
    static CONCAT: [Param; 2] = [
        Param {
            name: "parts",
            ty: "Vec<String>",
            optional: false,
        },
        Param {
            name: "sep",
            ty: "Option<String>",
            optional: true,
        },
    ];
    static THREE: [Param; 3] = [
        Param {
            name: "a",
            ty: "i64",
            optional: false,
        },
        Param {
            name: "b",
            ty: "i64",
            optional: false,
        },
        Param {
            name: "c",
            ty: "i64",
            optional: false,
        },
    ];

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn message(r: Result<ArgBinder, TaskError>) -> String {
        let err = r.unwrap_err();
        assert_eq!(err.exc_type(), "TypeError");
        err.exc_message()[0].as_str().unwrap().to_owned()
    }

    // The expected texts are what CPython 3.11 prints for the same call.
    #[test]
    fn python_messages() {
        assert_eq!(
            message(ArgBinder::new(
                "add",
                &ADD,
                vec![json!(1), json!(2), json!(3)],
                Map::new()
            )),
            "add() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            message(ArgBinder::new("add", &ADD, vec![json!(1)], Map::new())),
            "add() missing 1 required positional argument: 'y'"
        );
        assert_eq!(
            message(ArgBinder::new("add", &ADD, vec![], Map::new())),
            "add() missing 2 required positional arguments: 'x' and 'y'"
        );
        assert_eq!(
            message(ArgBinder::new("three", &THREE, vec![], Map::new())),
            "three() missing 3 required positional arguments: 'a', 'b', and 'c'"
        );
        assert_eq!(
            message(ArgBinder::new(
                "add",
                &ADD,
                vec![json!(1), json!(2)],
                kw(json!({"z": 3}))
            )),
            "add() got an unexpected keyword argument 'z'"
        );
        assert_eq!(
            message(ArgBinder::new(
                "add",
                &ADD,
                vec![json!(1)],
                kw(json!({"x": 2}))
            )),
            "add() got multiple values for argument 'x'"
        );
        assert_eq!(
            message(ArgBinder::new(
                "concat",
                &CONCAT,
                vec![json!(1), json!(2), json!(3)],
                Map::new()
            )),
            "concat() takes from 1 to 2 positional arguments but 3 were given"
        );
        assert_eq!(
            message(ArgBinder::new("noop", &[], vec![json!(1)], Map::new())),
            "noop() takes 0 positional arguments but 1 was given"
        );
        assert_eq!(
            message(ArgBinder::new(
                "f1",
                &ADD[..1],
                vec![json!(1), json!(2)],
                Map::new()
            )),
            "f1() takes 1 positional argument but 2 were given"
        );
        // Python reports the keyword problem before the count.
        assert_eq!(
            message(ArgBinder::new(
                "add",
                &ADD,
                vec![json!(1), json!(2), json!(3)],
                kw(json!({"z": 1}))
            )),
            "add() got an unexpected keyword argument 'z'"
        );
    }

    #[test]
    fn binds_positions_and_keywords() {
        let mut b = ArgBinder::new("add", &ADD, vec![], kw(json!({"y": 4, "x": 3}))).unwrap();
        assert_eq!(b.take::<i64>(0).unwrap(), 3);
        assert_eq!(b.take::<i64>(1).unwrap(), 4);
        let mut b = ArgBinder::new("concat", &CONCAT, vec![json!(["a", "b"])], Map::new()).unwrap();
        assert_eq!(b.take::<Vec<String>>(0).unwrap(), ["a", "b"]);
        assert_eq!(b.take_optional::<Option<String>>(1).unwrap(), None);
        let mut b =
            ArgBinder::new("concat", &CONCAT, vec![json!([]), json!(null)], Map::new()).unwrap();
        assert_eq!(b.take_optional::<Option<String>>(1).unwrap(), None);
    }

    #[test]
    fn wrong_type_names_parameter_type_and_serde_message() {
        let mut b = ArgBinder::new("add", &ADD, vec![json!("a"), json!(1)], Map::new()).unwrap();
        let err = b.take::<i64>(0).unwrap_err();
        assert_eq!(err.exc_type(), "TypeError");
        assert_eq!(
            err.exc_message()[0],
            "add() argument 'x' could not be read as i64: invalid type: string \"a\", expected i64"
        );
        // Out of range for the Rust type is a TypeError as well, never a panic.
        let mut b =
            ArgBinder::new("add", &ADD, vec![json!(1), json!(1u64 << 63)], Map::new()).unwrap();
        let err = b.take::<i64>(1).unwrap_err();
        assert!(
            err.exc_message()[0]
                .as_str()
                .unwrap()
                .starts_with("add() argument 'y' could not be read as i64")
        );
    }

    #[test]
    fn python_list_forms() {
        let s = |v: &[&str]| python_list(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["'a'"]), "'a'");
        assert_eq!(s(&["'a'", "'b'", "'c'", "'d'"]), "'a', 'b', 'c', and 'd'");
    }

    #[test]
    fn results_serialize_or_fail_with_encode_error() {
        assert_eq!(to_result_value(&vec![1, 2]).unwrap(), json!([1, 2]));
        assert_eq!(to_result_value(&()).unwrap(), Value::Null);
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(vec![1u8], 1);
        let err = to_result_value(&bad).unwrap_err();
        assert_eq!(err.exc_type(), "EncodeError");
        assert_eq!(err.exc_module(), "kombu.exceptions");
        let ok: Result<i32, TaskError> = Ok(1);
        assert_eq!(from_task_result(ok).unwrap(), json!(1));
        let failed: Result<i32, TaskError> = Err(TaskError::value_error("no"));
        assert_eq!(
            from_task_result(failed).unwrap_err().exc_type(),
            "ValueError"
        );
    }
}
