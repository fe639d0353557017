//! A call stub checks the arguments at compile time: their types, their number, and that
//! they can be serialized into the message.

use celeriac::task;
use serde::Deserialize;

#[task]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[derive(Deserialize)]
struct Incoming {
    n: i32,
}

#[task]
fn incoming(value: Incoming) -> i32 {
    value.n
}

fn main() {
    let _ = add::new("two", 3);
    let _ = add::new(2);
    let _ = incoming::new(Incoming { n: 1 });
    let _: celeriac::canvas::Signature<String> = add::new(2, 3);
}
