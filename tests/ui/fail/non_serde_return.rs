use celeriac::task;

struct Opaque;

#[task]
fn returns_opaque() -> Opaque {
    Opaque
}

fn main() {}
