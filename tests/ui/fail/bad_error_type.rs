use celeriac::task;

#[task]
fn parse(s: String) -> Result<i64, std::num::ParseIntError> {
    s.parse()
}

fn main() {}
