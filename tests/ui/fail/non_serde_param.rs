use celeriac::task;

struct Opaque;

#[task]
async fn takes_opaque(x: i64, value: Opaque) -> i64 {
    let _ = value;
    x
}

fn main() {}
