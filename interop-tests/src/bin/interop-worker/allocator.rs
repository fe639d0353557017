//! The worker's allocator: jemalloc, with its options compiled in. The interop worker
//! includes this module, and so does the benchmarks' raw consumer (`celeriac-bench`, by
//! path), so that the raw limit it measures runs on the same allocator.

/// jemalloc as the global allocator. A worker allocates each message on lapin's I/O thread
/// and frees it on a runtime thread; glibc's malloc spends about a fifth of the worker's
/// CPU on that pattern (benches/README.md, "Allocator"), jemalloc much less.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (its `malloc_conf`; `_RJEM_MALLOC_CONF` in
/// the environment still overrides them):
/// - `narenas:1`: one arena for the few threads a worker has (the default, four per CPU,
///   spreads the messages a worker holds over several arenas' pages);
/// - `background_thread:true`: freed pages go back to the system on a thread of jemalloc's
///   own, also while the worker sits idle holding prefetched messages (without it jemalloc
///   purges only as a side effect of allocating);
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: a page left free for a second is handed back
///   for good (`MADV_DONTNEED`), instead of after jemalloc's default ten seconds (its
///   default `muzzy_decay_ms` is already 0: spelled out because the purge relies on it).
///
/// Together they keep the resident size of a worker holding 10,000 messages at or below
/// glibc's; the interop worker turns the library's glibc `malloc_trim` off
/// (`memory_trim_interval: None`), which has nothing to give back under jemalloc.
// A C string for jemalloc's `const char *malloc_conf`: a thin pointer to its first byte.
// `unsafe_code` is allowed for this one exported symbol (no unsafe block).
#[allow(unsafe_code)]
// SAFETY: `_rjem_malloc_conf` is the (prefixed) `malloc_conf` global that tikv-jemalloc-sys
// declares as a weak `const char *`; this definition has the same layout (a non-null thin
// pointer, `Some`) and points to a NUL-terminated string that lives as long as the program.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&u8> =
    Some(&b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);
