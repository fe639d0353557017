//! The interop worker runs on jemalloc with the options its benchmarks were measured with
//! (`MALLOC_CONF` in `src/bin/interop-worker/allocator.rs`; benches/README.md, "Allocator").
//!
//! jemalloc prints its statistics, options included, when the process exits if
//! `_RJEM_MALLOC_CONF=stats_print:true` is set (the prefixed `MALLOC_CONF` of
//! tikv-jemalloc-sys, read after the compiled-in options, which it does not change here).
//! No broker is needed: `--help` allocates and exits.

use std::process::Command;

#[test]
fn the_interop_worker_runs_on_jemalloc_with_its_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_interop-worker"))
        .arg("--help")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("the interop worker starts");
    assert!(out.status.success(), "--help failed: {out:?}");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("jemalloc statistics"),
        "no jemalloc statistics printed: the worker does not run on jemalloc\n{printed}"
    );
    for option in [
        "opt.narenas: 1\n",
        // The second value is the running state: the purging thread is on.
        "opt.background_thread: true (background_thread: true)\n",
        "opt.dirty_decay_ms: 1000 ",
        "opt.muzzy_decay_ms: 0 ",
    ] {
        assert!(
            printed.contains(option),
            "jemalloc runs without {option:?}\n{printed}"
        );
    }
}
