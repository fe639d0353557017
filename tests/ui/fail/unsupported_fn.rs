use celeriac::task;

#[task]
unsafe fn risky(x: i64) -> i64 {
    x
}

#[task]
fn opaque(x: impl serde::de::DeserializeOwned) -> impl serde::Serialize {
    let _ = x;
}

fn main() {}
