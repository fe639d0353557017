//! Criterion micro-benchmarks of Celeriac's codec on a typical task message, as Celery 5.7
//! wrote it (the captures in `interop-tests/vectors/redis/broker/`):
//!
//! - `decode/{json,msgpack}`: `protocol::decode` of the raw message (headers already a map,
//!   body bytes as the broker hands them over);
//! - `encode/{json,msgpack}`: `protocol::encode` of the decoded message;
//! - `redis_envelope/take`: what the worker does with each Redis list element: parse kombu's
//!   envelope (`broker::redis::decode_envelope`, base64 body) and decode the task;
//! - `redis_envelope/send`: what the client does for each Redis publish: encode, wrap in
//!   kombu's envelope, write it as Python's `json.dumps` would.
//!
//! Run: `cargo bench -p celeriac-benches --bench codec`.

// criterion's macros define public items without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;

use celeriac::broker::redis::{decode_envelope, envelope};
use celeriac::protocol::{RawMessage, decode, encode, kombu::to_python_json};
use criterion::{Criterion, criterion_group, criterion_main};

/// A captured Redis list element (exact bytes), by file name.
fn capture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../interop-tests/vectors/redis/broker")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn raw(name: &str) -> RawMessage {
    decode_envelope(&capture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn codec(c: &mut Criterion) {
    // `send_task('interop.add', [2, 3])` as JSON, and `add.apply_async((2, 3),
    // serializer='msgpack')`: the two serializers of a typical two-argument call.
    let cases = [
        ("json", "v2_send_task.json"),
        ("msgpack", "v2_msgpack.json"),
    ];
    let mut group = c.benchmark_group("decode");
    for (label, file) in cases {
        let message = raw(file);
        decode(&message).unwrap_or_else(|e| panic!("{file}: {e}"));
        group.bench_function(label, |b| b.iter(|| decode(black_box(&message)).unwrap()));
    }
    group.finish();

    let mut group = c.benchmark_group("encode");
    for (label, file) in cases {
        let message = decode(&raw(file)).unwrap();
        group.bench_function(label, |b| b.iter(|| encode(black_box(&message)).unwrap()));
    }
    group.finish();

    let mut group = c.benchmark_group("redis_envelope");
    let element = capture("v2_send_task.json");
    group.bench_function("take", |b| {
        b.iter(|| decode(&decode_envelope(black_box(&element)).unwrap()).unwrap())
    });
    let message = decode(&raw("v2_send_task.json")).unwrap();
    let tag = "00000000-0000-4000-9000-000000000003";
    group.bench_function("send", |b| {
        b.iter(|| {
            let raw = encode(black_box(&message)).unwrap();
            to_python_json(&envelope(&raw, "", "celery", tag))
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
