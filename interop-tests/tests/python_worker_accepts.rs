//! What Celeriac encodes, a real Python Celery 5.7 worker accepts and runs.
//!
//! The worker is the stand-in app `python-fixtures/pyinterop.py` (the same `interop.*`
//! tasks as the Rust interop worker), started as `celery -A pyinterop worker` from the
//! repository's `.venv` on the real Redis at 127.0.0.1:6379, database 3 (flushed first).
//! Messages are built with [`TaskMessage`], encoded with [`protocol::encode`], published
//! with [`AnyBroker`] and their results read with [`AnyBackend`]: no Python client is
//! involved, so every byte the worker sees was written by Celeriac.
//!
//! Redis or the venv missing is a failure, never a skip. The Python interpreter's
//! directory is `CELERIAC_PYTHON_BIN_DIR`, else `<repo>/.venv/bin`.
//!
//! One worker serves every scenario: starting a Celery worker costs seconds of CPU on a
//! shared 2-core machine, so the scenarios run in one test, each reported by name, and
//! every failure is collected before the test fails (one broken scenario does not hide
//! the others).

mod common;

use common::PythonWorker;
use std::time::{Duration, Instant};

use celeriac::backend::{AnyBackend, BackendOptions};
use celeriac::broker::{AnyBroker, BrokerOptions};
use celeriac::protocol::{self, ExceptionInfo, ResultMeta, Serializer, TaskMessage, TaskState};
use chrono::{TimeDelta, Utc};
use serde_json::{Map, Value, json};

/// Database 3 is this file's own; it is flushed before the worker starts.
const REDIS_URL: &str = "redis://127.0.0.1:6379/3";
/// The worker consumes only this queue, so nothing else on the database reaches it.
const QUEUE: &str = "celeriac-accept";
/// Generous: the machine may be building Rust on both cores while the worker starts.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Generous for the same reason; a healthy worker answers in milliseconds.
const RESULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait looks whether the worker died, so a crash fails fast with its log.
const LIVENESS_SLICE: Duration = Duration::from_secs(3);

/// Empty database 3 so no queue or result of an earlier run is seen.
async fn flush_db() {
    let client = redis::Client::open(REDIS_URL).expect("valid Redis URL");
    let mut conn = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| {
        panic!(
            "Redis must run at 127.0.0.1:6379 for this test (start it: redis-server --daemonize yes --port 6379): {e}"
        )
    });
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut conn)
        .await
        .expect("FLUSHDB database 3");
}

/// The worker plus Celeriac's broker and backend on its database.
struct Harness {
    worker: PythonWorker,
    broker: AnyBroker,
    backend: AnyBackend,
}

impl Harness {
    async fn start() -> Harness {
        flush_db().await;
        let broker = AnyBroker::connect(REDIS_URL, BrokerOptions::default())
            .await
            .expect("connect Celeriac's Redis broker");
        let backend = AnyBackend::connect(Some(REDIS_URL), BackendOptions::default())
            .await
            .expect("connect Celeriac's Redis result backend");
        let worker = PythonWorker::start("pyinterop", QUEUE, REDIS_URL, REDIS_URL, 2);
        Harness {
            worker,
            broker,
            backend,
        }
    }

    /// Encode and publish `msg` to the worker's queue through the default exchange.
    async fn send(&self, msg: &TaskMessage) -> Result<(), String> {
        let raw = protocol::encode(msg).map_err(|e| format!("encode: {e}"))?;
        self.broker
            .publish(&raw, "", QUEUE)
            .await
            .map_err(|e| format!("publish: {e}"))
    }

    /// Wait for a ready state of `task_id`, failing early (with the log) if the worker died.
    async fn wait(&mut self, task_id: &str, timeout: Duration) -> Result<ResultMeta, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.worker.exited() {
                return Err(format!(
                    "the Celery worker exited ({status})\n{}",
                    self.worker.log_tail()
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no result for {task_id} within {} s\n{}",
                    timeout.as_secs(),
                    self.worker.log_tail()
                ));
            }
            // Each slice subscribes, then reads the key, so a result stored between
            // slices is not missed.
            match self.backend.wait(task_id, left.min(LIVENESS_SLICE)).await {
                Ok(Some(meta)) => return Ok(meta),
                Ok(None) => continue,
                Err(e) => return Err(format!("result backend: {e}")),
            }
        }
    }

    async fn call(&mut self, msg: &TaskMessage) -> Result<ResultMeta, String> {
        self.send(msg).await?;
        self.wait(&msg.headers.id, RESULT_TIMEOUT).await
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn message(task: &str, args: Value, kwargs: Value, serializer: Serializer) -> TaskMessage {
    let args = args.as_array().cloned().unwrap_or_default();
    let kwargs: Map<String, Value> = kwargs.as_object().cloned().unwrap_or_default();
    let mut msg = TaskMessage::new(task, new_id(), args, kwargs);
    msg.serializer = serializer;
    msg
}

fn expect_success(meta: &ResultMeta, expected: &Value) -> Result<(), String> {
    if meta.status != TaskState::Success {
        return Err(format!(
            "expected SUCCESS {expected}, got {} {}",
            meta.status.as_str(),
            meta.result
        ));
    }
    if &meta.result != expected {
        return Err(format!("expected result {expected}, got {}", meta.result));
    }
    Ok(())
}

fn expect_failure(
    meta: &ResultMeta,
    exc_type: &str,
    exc_module: &str,
) -> Result<ExceptionInfo, String> {
    if meta.status != TaskState::Failure {
        return Err(format!(
            "expected FAILURE {exc_type}, got {} {}",
            meta.status.as_str(),
            meta.result
        ));
    }
    let exc = ExceptionInfo::from_value(&meta.result)
        .map_err(|e| format!("failure value {}: {e}", meta.result))?;
    if exc.exc_type != exc_type || exc.exc_module != exc_module {
        return Err(format!(
            "expected {exc_module}.{exc_type}, got {}.{}",
            exc.exc_module, exc.exc_type
        ));
    }
    Ok(exc)
}

async fn add_by_position(h: &mut Harness, serializer: Serializer) -> Result<(), String> {
    let msg = message("interop.add", json!([2, 3]), json!({}), serializer);
    expect_success(&h.call(&msg).await?, &json!(5))
}

async fn add_by_kwargs(h: &mut Harness, serializer: Serializer) -> Result<(), String> {
    let msg = message(
        "interop.add",
        json!([]),
        json!({"x": 2, "y": 3}),
        serializer,
    );
    expect_success(&h.call(&msg).await?, &json!(5))
}

/// Nested unicode and kombu's JSON type markers: the worker decodes the markers into
/// Decimal, UUID and datetime, and its result JSON writes them back as the same markers.
async fn echo_nested_json(h: &mut Harness) -> Result<(), String> {
    let value = json!({
        "naïve": ["日本語", "emoji 🦀", "quote \" and \\ backslash", {"deep": [1, -2.5, null, true, {}]}],
        "price": {"__type__": "decimal", "__value__": "3.14"},
        "id": {"__type__": "uuid", "__value__": {"hex": "0123456789abcdef0123456789abcdef"}},
        "when": {"__type__": "datetime", "__value__": "2026-01-02T03:04:05.123456+00:00"},
        "empty": [],
    });
    let msg = message(
        "interop.echo",
        json!([value.clone()]),
        json!({}),
        Serializer::Json,
    );
    expect_success(&h.call(&msg).await?, &value)
}

/// The same through msgpack (no markers there: kombu's msgpack has none).
async fn echo_nested_msgpack(h: &mut Harness) -> Result<(), String> {
    let value = json!({"ключ": ["значение", "ü", 1, 2.5, null, false, {"nested": ["🦀"]}], "big": i64::MAX});
    let msg = message(
        "interop.echo",
        json!([]),
        json!({"value": value.clone()}),
        Serializer::Msgpack,
    );
    expect_success(&h.call(&msg).await?, &value)
}

/// An eta about a second ahead is accepted and honoured: the task runs, and not before
/// its eta (a second of tolerance, never a tight bound on a loaded machine).
async fn eta_honoured(h: &mut Harness) -> Result<(), String> {
    let mut msg = message("interop.add", json!([20, 22]), json!({}), Serializer::Json);
    let eta = Utc::now() + TimeDelta::seconds(1);
    msg.headers.eta = Some(eta);
    let meta = h.call(&msg).await?;
    expect_success(&meta, &json!(42))?;
    let done = meta.date_done.ok_or("SUCCESS without date_done")?;
    if done < eta - TimeDelta::seconds(1) {
        return Err(format!("ran at {done}, before its eta {eta}"));
    }
    Ok(())
}

async fn fail_value_error(h: &mut Harness) -> Result<(), String> {
    let text = "boom: ünïcode ✗";
    let msg = message("interop.fail", json!([text]), json!({}), Serializer::Json);
    let exc = expect_failure(&h.call(&msg).await?, "ValueError", "builtins")?;
    if exc.exc_message != json!([text]) {
        return Err(format!(
            "expected exc_message [{text:?}], got {}",
            exc.exc_message
        ));
    }
    Ok(())
}

async fn unknown_task_not_registered(h: &mut Harness) -> Result<(), String> {
    let name = "interop.no_such_task";
    let msg = message(name, json!([1]), json!({}), Serializer::Json);
    let exc = expect_failure(&h.call(&msg).await?, "NotRegistered", "celery.exceptions")?;
    if !exc.exc_message.to_string().contains(name) {
        return Err(format!(
            "NotRegistered does not name {name}: {}",
            exc.exc_message
        ));
    }
    Ok(())
}

/// A retry as the Rust worker republishes it (worker/pipeline.rs `retry`): the decoded
/// message cloned with `retries + 1`, an eta, `parent_id` = its own id and fresh reprs,
/// re-encoded. `interop.whoami` reports what the Python worker read from it.
async fn retried_message_accepted(h: &mut Harness, serializer: Serializer) -> Result<(), String> {
    let original = message("interop.whoami", json!([]), json!({}), serializer);
    let id = original.headers.id.clone();
    // Through the wire once, as the worker holds a decoded message when it retries.
    let raw = protocol::encode(&original).map_err(|e| format!("encode: {e}"))?;
    let mut next = protocol::decode(&raw).map_err(|e| format!("decode our own message: {e}"))?;
    next.headers.retries = original.headers.retries + 1;
    next.headers.eta = Some(Utc::now() + TimeDelta::milliseconds(500));
    next.headers.parent_id = Some(id.clone());
    next.headers.argsrepr = None;
    next.headers.kwargsrepr = None;
    let meta = h.call(&next).await?;
    if meta.status != TaskState::Success {
        return Err(format!(
            "expected SUCCESS, got {} {}",
            meta.status.as_str(),
            meta.result
        ));
    }
    let seen = &meta.result;
    let expected = [
        ("task_id", json!(id)),
        ("retries", json!(1)),
        ("parent_id", json!(id)),
        ("root_id", json!(id)),
    ];
    for (field, want) in expected {
        if seen.get(field) != Some(&want) {
            return Err(format!(
                "whoami.{field}: expected {want}, got {:?} (whole: {seen})",
                seen.get(field)
            ));
        }
    }
    if seen.pointer("/delivery_info/routing_key") != Some(&json!(QUEUE)) {
        return Err(format!(
            "whoami.delivery_info.routing_key: expected {QUEUE:?}, got {seen}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_celery_worker_accepts_and_runs_celeriac_messages() {
    let mut h = Harness::start().await;

    // Readiness: the first message waits in the queue until the worker consumes it.
    let noop = message("interop.noop", json!([]), json!({}), Serializer::Json);
    h.send(&noop).await.expect("publish the readiness probe");
    let ready = h
        .wait(&noop.headers.id, READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("worker not ready: {e}"));
    expect_success(&ready, &Value::Null).unwrap_or_else(|e| panic!("interop.noop: {e}"));

    let mut failures = Vec::new();
    macro_rules! scenario {
        ($name:expr, $run:expr) => {{
            let started = Instant::now();
            match $run.await {
                Ok(()) => eprintln!("ok    {} ({:.1} s)", $name, started.elapsed().as_secs_f64()),
                Err(e) => {
                    eprintln!("FAIL  {}: {e}", $name);
                    failures.push(format!("{}: {e}", $name));
                }
            }
        }};
    }
    scenario!(
        "add by position, json",
        add_by_position(&mut h, Serializer::Json)
    );
    scenario!(
        "add by kwargs, json",
        add_by_kwargs(&mut h, Serializer::Json)
    );
    scenario!(
        "add by position, msgpack",
        add_by_position(&mut h, Serializer::Msgpack)
    );
    scenario!(
        "add by kwargs, msgpack",
        add_by_kwargs(&mut h, Serializer::Msgpack)
    );
    scenario!(
        "echo nested unicode with kombu markers, json",
        echo_nested_json(&mut h)
    );
    scenario!("echo nested unicode, msgpack", echo_nested_msgpack(&mut h));
    scenario!("eta honoured", eta_honoured(&mut h));
    scenario!("fail -> ValueError", fail_value_error(&mut h));
    scenario!(
        "unknown task -> NotRegistered",
        unknown_task_not_registered(&mut h)
    );
    scenario!(
        "retried message, json",
        retried_message_accepted(&mut h, Serializer::Json)
    );
    scenario!(
        "retried message, msgpack",
        retried_message_accepted(&mut h, Serializer::Msgpack)
    );

    if let Some(status) = h.worker.exited() {
        failures.push(format!(
            "the Celery worker exited during the test ({status})"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        h.worker.log_tail()
    );
}
