use celeriac::task;

/// Not celeriac's request context.
pub struct Request;

#[task]
fn whoami(request: &Request) {
    let _ = request;
}

fn main() {}
