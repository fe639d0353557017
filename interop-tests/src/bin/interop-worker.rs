//! The interop worker of ../shared/INTEROP.md.
fn main() {}
