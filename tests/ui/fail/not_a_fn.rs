use celeriac::task;

#[task]
struct NotAFunction;

fn main() {}
