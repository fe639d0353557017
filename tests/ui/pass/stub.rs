//! The call stubs `#[task]` writes: `name::new(..)` takes the task's parameters (not
//! `&Request`) and gives a `Signature` typed by the task's result.

use celeriac::canvas::Signature;
use celeriac::task::TaskError;
use celeriac::{Request, task};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[task]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[derive(Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

#[task(name = "geo.norm")]
fn norm(request: &Request, p: Point, scale: Option<f64>) -> Result<Point, TaskError> {
    let _ = request;
    let s = scale.unwrap_or(1.0);
    Ok(Point { x: p.x * s, y: p.y * s })
}

/// An alias named `Result` without arguments: the stub reads `T` through the alias.
mod aliased {
    type Result = std::result::Result<u8, celeriac::task::TaskError>;

    #[celeriac::task]
    pub fn answer() -> Result {
        Ok(42)
    }
}

#[task]
fn nothing(mut r#type: String) {
    r#type.push('!');
}

/// Only `Deserialize`: the task compiles; only calling its stub would not.
#[derive(Deserialize)]
struct Incoming {
    #[allow(dead_code)]
    n: i32,
}

#[task]
fn incoming(value: Incoming) -> i32 {
    value.n
}

mod nested {
    #[celeriac::task]
    pub async fn shout(text: String) -> String {
        text.to_uppercase()
    }
}

fn main() {
    // The functions stay callable as written.
    let _ = incoming(Incoming { n: 1 });
    nothing("x".into());

    // The default name is the worker's: the crate (trybuild names it) and module path.
    let krate = module_path!();
    let sig: Signature<i64> = add::new(2, 3);
    assert_eq!(add::name(), format!("{krate}.add"));
    assert_eq!(sig.name(), add::name());
    assert_eq!(sig.args(), &[json!(2), json!(3)]);
    assert!(sig.kwargs().is_empty());

    let sig: Signature<Point> = norm::new(Point { x: 1.0, y: 2.0 }, None);
    assert_eq!(sig.name(), "geo.norm");
    assert_eq!(sig.args(), &[json!({"x": 1.0, "y": 2.0}), json!(null)]);

    let _: Signature<u8> = aliased::answer::new();
    let sig: Signature<()> = nothing::new("t".into());
    assert_eq!(nothing::name(), format!("{krate}.nothing"));
    assert_eq!(sig.args(), &[json!("t")]);

    let sig: Signature<String> = nested::shout::new("hi".into());
    assert_eq!(sig.name(), format!("{krate}.nested.shout"));
    assert_eq!(sig.to_string(), format!("{krate}.nested.shout('hi')"));
}
