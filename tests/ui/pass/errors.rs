use celeriac::task;
use celeriac::task::ExcType;
use std::fmt;

#[derive(Debug)]
struct Overflow;
impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("integer overflow")
    }
}
impl ExcType for Overflow {
    fn exc_type(&self) -> &str {
        "OverflowError"
    }
}

#[task]
fn checked(x: i64, y: i64) -> Result<i64, Overflow> {
    x.checked_add(y).ok_or(Overflow)
}

#[task]
async fn question_mark(s: String) -> Result<u8, celeriac::task::TaskError> {
    Ok(s.parse::<u8>()?)
}

#[task]
fn boxed() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

mod nested {
    #[celeriac::task]
    pub async fn in_module(v: serde_json::Value) -> serde_json::Value {
        v
    }
}

fn main() {
    let _ = checked(1, 2);
    let _ = nested::in_module(serde_json::Value::Null);
}
