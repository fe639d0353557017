use celeriac::task;

#[task(queue = "fast")]
fn a() {}

#[task(name = 5)]
fn b() {}

#[task(acks_late = "yes")]
fn c() {}


#[task(rate_limit = "10/d")]
fn d() {}

#[task(time_limit = 0)]
fn e() {}

#[task(autoretry_for = [ValueError])]
fn f() {}

#[task(soft_time_limit = "5")]
fn g() {}

#[task(max_retries = 3, max_retries = 4)]
fn h() {}

fn main() {}
