//! The worker end to end on the in-process `memory://` broker and backend: each test runs
//! its own worker on its own `memory://<name>`, publishes encoded task messages, and reads
//! what the worker stored and how it settled the messages.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use celeriac::Request;
use celeriac::backend::AnyBackend;
use celeriac::backend::memory::MemoryBackend;
use celeriac::broker::AnyBroker;
use celeriac::broker::memory::MemoryBroker;
use celeriac::protocol::{self, RawMessage, ResultMeta, TaskMessage, TaskState};
use celeriac::task::TaskError;
use celeriac::worker::{Worker, WorkerConfig};
use chrono::{SubsecRound, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// How long any single wait may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Tasks. They are registered for every worker of this binary, so each test keys its
// observations by a name of its own.
// ---------------------------------------------------------------------------

/// A pair of signals for one running task: it says when it has entered, and it ends only
/// when released. `Notify::notify_one` keeps a permit, so neither side can miss the other.
#[derive(Default)]
struct Gate {
    entered: Notify,
    release: Notify,
}

static GATES: LazyLock<Mutex<HashMap<String, Arc<Gate>>>> = LazyLock::new(Default::default);

fn gate(key: &str) -> Arc<Gate> {
    GATES
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default()
        .clone()
}

/// Keys of every `wm.record` call that ran.
static RAN: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

fn ran(key: &str) -> bool {
    RAN.lock().unwrap().contains(key)
}

/// Blocks until the test releases it (early ack: the worker's default).
#[celeriac::task(name = "wm.gated")]
async fn gated(key: String) -> String {
    let g = gate(&key);
    g.entered.notify_one();
    g.release.notified().await;
    key
}

/// The same, acknowledged only after it ends.
#[celeriac::task(name = "wm.gated_late", acks_late = true)]
async fn gated_late(key: String) -> String {
    let g = gate(&key);
    g.entered.notify_one();
    g.release.notified().await;
    key
}

/// Records that it ran.
#[celeriac::task(name = "wm.record")]
fn record(key: String) -> String {
    RAN.lock().unwrap().insert(key.clone());
    key
}

/// Asks to be retried (50 ms later) until it runs as its second retry.
#[celeriac::task(name = "wm.flaky")]
fn flaky(request: &Request) -> Result<u32, TaskError> {
    if request.retries < 2 {
        return Err(TaskError::retry().countdown(Duration::from_millis(50)));
    }
    Ok(request.retries)
}

static FOREVER_CALLS: AtomicU32 = AtomicU32::new(0);

/// Asks to be retried every time, with no cause.
#[celeriac::task(name = "wm.retry_forever")]
fn retry_forever() -> Result<(), TaskError> {
    FOREVER_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(TaskError::retry().countdown(Duration::from_millis(10)))
}

/// Fails with a ValueError and asks to be retried for it, every time.
#[celeriac::task(name = "wm.retry_with_cause")]
fn retry_with_cause() -> Result<(), TaskError> {
    Err(TaskError::value_error("still broken").countdown(Duration::from_millis(10)))
}

/// Panics.
#[celeriac::task(name = "wm.explode")]
fn explode(key: String) -> i64 {
    panic!("kaboom {key}")
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

struct Harness {
    broker: AnyBroker,
    mem: MemoryBroker,
    results: MemoryBackend,
    hostname: String,
    stop: Option<oneshot::Sender<()>>,
    running: JoinHandle<Result<(), celeriac::Error>>,
}

/// A worker on `memory://wm-<name>` (broker and backend), concurrency 1 unless `tune` says
/// otherwise, running in the background.
async fn start(name: &str, tune: impl FnOnce(&mut WorkerConfig)) -> Harness {
    let url = format!("memory://wm-{name}");
    let hostname = format!("wm-{name}@test");
    let mut config = WorkerConfig {
        broker_url: url.clone(),
        result_backend: Some(url),
        concurrency: 1,
        hostname: hostname.clone(),
        ..WorkerConfig::default()
    };
    tune(&mut config);
    let worker = Worker::connect(config)
        .await
        .expect("worker connects to memory://");
    let broker = worker.broker().clone();
    let AnyBroker::Memory(mem) = broker.clone() else {
        panic!("memory:// broker expected")
    };
    let AnyBackend::Memory(results) = worker.backend().clone() else {
        panic!("memory:// backend expected")
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    Harness {
        broker,
        mem,
        results,
        hostname,
        stop: Some(stop),
        running,
    }
}

impl Harness {
    async fn publish(&self, msg: &TaskMessage) {
        let raw = protocol::encode(msg).expect("encode");
        self.broker
            .publish(&raw, "", "celery")
            .await
            .expect("publish");
    }

    /// Publish `name(args)` with a fresh id; returns the id.
    async fn send(&self, name: &str, args: Value) -> String {
        let msg = message(name, args);
        self.publish(&msg).await;
        msg.headers.id
    }

    async fn wait(&self, id: &str) -> ResultMeta {
        self.results
            .wait(id, WAIT)
            .await
            .unwrap_or_else(|| panic!("no ready result for {id} within {WAIT:?}"))
    }

    /// Signal shutdown (if not done yet) and wait for `run` to return.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.running)
            .await
            .expect("worker stops in time")
            .expect("worker task did not panic")
            .expect("worker run returned Ok");
    }
}

fn message(name: &str, args: Value) -> TaskMessage {
    let id = uuid::Uuid::new_v4().to_string();
    TaskMessage::new(
        name,
        id,
        args.as_array().cloned().expect("args list"),
        Map::new(),
    )
}

async fn wait_entered(key: &str) {
    tokio::time::timeout(WAIT, gate(key).entered.notified())
        .await
        .unwrap_or_else(|_| panic!("task {key} did not start within {WAIT:?}"));
}

/// Poll `cond` until it holds or `WAIT` passes.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_started_stores_started_with_hostname_before_success() {
    let h = start("track-started", |c| c.track_started = true).await;
    let key = "track-started";
    let id = h.send("wm.gated", json!([key])).await;

    let started = h
        .results
        .wait_for(&id, WAIT, |m| m.status == TaskState::Started)
        .await
        .expect("STARTED stored while the task runs");
    assert_eq!(started.result["hostname"], json!(h.hostname));
    assert_eq!(started.result["pid"], json!(std::process::id()));
    wait_entered(key).await;
    // Still running: the stored state must still be STARTED, not ready.
    assert_eq!(
        h.results.get(&id).map(|m| m.status),
        Some(TaskState::Started)
    );

    gate(key).release.notify_one();
    let done = h.wait(&id).await;
    assert_eq!(done.status, TaskState::Success);
    assert_eq!(done.result, json!(key));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_result_stores_nothing() {
    // One slot and one prefetched message: the second starts only after the first ended.
    let h = start("ignore-result", |c| c.prefetch_multiplier = 1).await;
    let mut ignored = message("wm.record", json!(["ignore-result-1"]));
    ignored.headers.ignore_result = Some(true);
    h.publish(&ignored).await;
    let later = h.send("wm.record", json!(["ignore-result-2"])).await;

    let done = h.wait(&later).await;
    assert_eq!(done.status, TaskState::Success);
    assert!(ran("ignore-result-1"), "the ignored task ran");
    assert_eq!(
        h.results.get(&ignored.headers.id),
        None,
        "ignore_result=True stores no state"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_revoked_and_not_run() {
    let h = start("expired", |_| {}).await;
    let mut msg = message("wm.record", json!(["expired"]));
    msg.headers.expires = Some(Utc::now() - chrono::Duration::seconds(10));
    h.publish(&msg).await;

    let meta = h.wait(&msg.headers.id).await;
    assert_eq!(meta.status, TaskState::Revoked);
    let exc = meta.exception().expect("REVOKED carries an exception");
    assert_eq!(exc.exc_type, "TaskRevokedError");
    assert_eq!(exc.exc_message, json!(["expired"]));
    assert!(!ran("expired"), "an expired task must not run");
    // REVOKED is stored before the ack, so the ack may land just after the result.
    eventually("the expired message is acknowledged", || {
        h.mem.unacked_len() == 0
    })
    .await;
    assert_eq!(h.mem.queue_len("celery"), 0, "acknowledged, not requeued");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_delays_the_task_until_its_time() {
    let h = start("eta", |_| {}).await;
    let mut msg = message("wm.record", json!(["eta"]));
    // Whole microseconds: the wire format carries no more, so this is the eta the worker sees.
    let eta = (Utc::now() + chrono::Duration::milliseconds(300)).trunc_subsecs(6);
    msg.headers.eta = Some(eta);
    h.publish(&msg).await;

    let meta = h.wait(&msg.headers.id).await;
    assert_eq!(meta.status, TaskState::Success);
    let done_at = meta.date_done.expect("SUCCESS has date_done");
    assert!(done_at >= eta, "done at {done_at}, before its eta {eta}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_twice_then_succeed_counts_retries() {
    let h = start("retry-twice", |_| {}).await;
    let id = h.send("wm.flaky", json!([])).await;
    let meta = h.wait(&id).await;
    assert_eq!(meta.status, TaskState::Success, "{meta:?}");
    assert_eq!(
        meta.result,
        json!(2),
        "the request of the final run shows two retries"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_forever_fails_after_three_retries() {
    let h = start("retry-forever", |_| {}).await;
    let id = h.send("wm.retry_forever", json!([])).await;
    let meta = h.wait(&id).await;
    assert_eq!(meta.status, TaskState::Failure, "{meta:?}");
    let exc = meta.exception().expect("FAILURE carries an exception");
    assert_eq!(exc.exc_type, "MaxRetriesExceededError");
    // The first run and Celery's default max_retries = 3 retries.
    assert_eq!(FOREVER_CALLS.load(Ordering::SeqCst), 4);

    // With a cause, the cause is what is stored in the end.
    let id = h.send("wm.retry_with_cause", json!([])).await;
    let meta = h.wait(&id).await;
    assert_eq!(meta.status, TaskState::Failure, "{meta:?}");
    let exc = meta.exception().expect("FAILURE carries an exception");
    assert_eq!(exc.exc_type, "ValueError");
    assert_eq!(exc.exc_message, json!(["still broken"]));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_late_task_stays_unsettled_while_it_runs() {
    let h = start("acks-late", |c| c.acks_late = false).await;
    let key = "acks-late";
    let id = h.send("wm.gated_late", json!([key])).await;
    wait_entered(key).await;
    assert_eq!(
        h.mem.unacked_len(),
        1,
        "acks_late: not settled while running"
    );
    assert_eq!(h.mem.queue_len("celery"), 0);

    gate(key).release.notify_one();
    assert_eq!(h.wait(&id).await.status, TaskState::Success);
    // The late ack follows the stored result.
    eventually("the late ack lands", || h.mem.unacked_len() == 0).await;
    assert_eq!(h.mem.queue_len("celery"), 0, "acknowledged, not requeued");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_ack_settles_before_the_task_runs() {
    let h = start("early-ack", |_| {}).await;
    let key = "early-ack";
    let id = h.send("wm.gated", json!([key])).await;
    wait_entered(key).await;
    assert_eq!(h.mem.unacked_len(), 0, "early ack: settled while running");
    assert_eq!(h.mem.queue_len("celery"), 0);
    gate(key).release.notify_one();
    assert_eq!(h.wait(&id).await.status, TaskState::Success);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_is_dead_lettered_and_the_worker_goes_on() {
    let h = start("dead-letter", |_| {}).await;
    let bad_id = uuid::Uuid::new_v4().to_string();
    let mut headers = Map::new();
    headers.insert("task".into(), json!("wm.record"));
    headers.insert("id".into(), json!(bad_id));
    let bad = RawMessage {
        body: b"not json".to_vec(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers,
        ..RawMessage::default()
    };
    h.broker.publish(&bad, "", "celery").await.expect("publish");
    let good = h.send("wm.record", json!(["dead-letter-after"])).await;

    assert_eq!(
        h.wait(&good).await.status,
        TaskState::Success,
        "the worker goes on"
    );
    eventually("the bad message is dead-lettered", || {
        !h.mem.dead_letters().is_empty()
    })
    .await;
    let dead = h.mem.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (reason, msg) = &dead[0];
    assert!(!reason.trim().is_empty(), "a dead letter has a reason");
    assert_eq!(msg.body, b"not json");
    assert_eq!(msg.headers.get("id"), Some(&json!(bad_id)));
    assert_eq!(
        h.results.get(&bad_id),
        None,
        "nothing stored for an unreadable message"
    );
    assert_eq!(h.mem.unacked_len(), 0);
    assert_eq!(h.mem.queue_len("celery"), 0, "dead-lettered, not requeued");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_running_task_and_hands_back_the_rest() {
    let mut h = start("shutdown", |_| {}).await;
    let key = "shutdown-slow";
    let slow = h.send("wm.gated", json!([key])).await;
    wait_entered(key).await;

    const QUEUED: usize = 6;
    let mut queued = Vec::new();
    for i in 0..QUEUED {
        let k = format!("shutdown-queued-{i}");
        queued.push((h.send("wm.record", json!([k])).await, k));
    }
    // Let the worker reserve some of them (prefetch 4 with one slot busy), so hand-back of
    // reserved messages is exercised as well as leaving the rest in the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let _ = h.stop.take().expect("not stopped yet").send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !h.running.is_finished(),
        "the worker waits for its running task"
    );
    assert_eq!(
        h.results.get(&slow).map(|m| m.status),
        None,
        "still running"
    );

    gate(key).release.notify_one();
    let (mem, results) = (h.mem.clone(), h.results.clone());
    h.shutdown().await;

    let meta = results
        .get(&slow)
        .expect("the running task finished and stored its result");
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(
        mem.queue_len("celery"),
        QUEUED,
        "every queued message is back in the queue"
    );
    assert_eq!(mem.unacked_len(), 0, "nothing left unsettled");
    for (id, k) in &queued {
        assert!(!ran(k), "{k} must not run after shutdown");
        assert_eq!(results.get(id), None, "{k} stored nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_task_fails_and_the_next_one_runs() {
    let h = start("panic", |_| {}).await;
    let id = h.send("wm.explode", json!(["panic"])).await;
    let meta = h.wait(&id).await;
    assert_eq!(meta.status, TaskState::Failure, "{meta:?}");
    let exc = meta.exception().expect("FAILURE carries an exception");
    assert!(
        exc.exc_message.to_string().contains("kaboom panic"),
        "{exc:?}"
    );

    let next = h.send("wm.record", json!(["panic-next"])).await;
    let meta = h.wait(&next).await;
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(meta.result, json!("panic-next"));
    h.shutdown().await;
}
