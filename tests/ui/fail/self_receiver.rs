use celeriac::task;

struct Service;

impl Service {
    #[task]
    fn run(&self, x: i64) -> i64 {
        x
    }
}

fn main() {}
