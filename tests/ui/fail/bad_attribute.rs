use celeriac::task;

#[task(queue = "fast")]
fn a() {}

#[task(name = 5)]
fn b() {}

#[task(acks_late = "yes")]
fn c() {}

fn main() {}
