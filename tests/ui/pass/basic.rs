use celeriac::task::TaskError;
use celeriac::{Request, task};

#[task]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "custom.name", acks_late = true)]
fn blocking(parts: Vec<String>, sep: Option<String>) -> String {
    parts.join(&sep.unwrap_or_default())
}

#[task]
async fn with_request(request: &Request, mut n: u32) -> Result<String, TaskError> {
    n += 1;
    Ok(format!("{} {n}", request.id))
}

#[task]
fn nothing() {}

fn main() {
    // The functions stay callable as written.
    let _ = add(1, 2);
    assert_eq!(blocking(vec!["a".into()], None), "a");
    let _ = with_request(&Request::default(), 1);
    nothing();
}

// `#[task]` inside a `macro_rules!` expansion: the generated locals must still resolve.
macro_rules! define_task {
    ($name:ident) => {
        #[task]
        fn $name(request: &Request, value: Option<i64>) -> Option<i64> {
            let _ = request;
            value
        }
    };
}
define_task!(from_macro);
