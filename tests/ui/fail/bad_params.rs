use celeriac::task;

#[task]
fn borrowed(name: &str) -> usize {
    name.len()
}

#[task]
fn destructured((a, b): (i64, i64)) -> i64 {
    a + b
}

#[task]
fn mut_request(request: &mut celeriac::Request) {
    let _ = request;
}

fn main() {}
