//! Compile-time behaviour of `#[task]`: accepted forms compile, misuse gives a clear error
//! at the offending token (the `.stderr` files are the checked-in expectations).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
