//! Messages the worker holds (waiting for their eta, their rate-limit turn or a slot): many
//! at once all run, in eta order, none twice and none lost; expiry and revocation are
//! checked again when their time comes; rate limits and etas mix. On `memory://` and on
//! Redis (database 13, queues of their own).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use celeriac::backend::AnyBackend;
use celeriac::broker::AnyBroker;
use celeriac::client::{Client, ClientConfig, SendOptions};
use celeriac::protocol::TaskState;
use celeriac::worker::{RevokedIds, Worker, WorkerConfig};
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, json};
use tokio::sync::oneshot;

const REDIS: &str = "redis://127.0.0.1:6379/13";

/// How long any single wait may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

/// One start of a task: `(index, group, started at)`.
type Run = (u64, u64, DateTime<Utc>);

/// What ran, by test key, in the order the tasks started.
static RAN: LazyLock<Mutex<HashMap<String, Vec<Run>>>> = LazyLock::new(Default::default);

fn ran(key: &str) -> Vec<Run> {
    RAN.lock().unwrap().get(key).cloned().unwrap_or_default()
}

fn note_run(key: String, i: u64, group: u64) {
    RAN.lock()
        .unwrap()
        .entry(key)
        .or_default()
        .push((i, group, Utc::now()));
}

/// Notes that it ran.
#[celeriac::task(name = "hold.note", ignore_result = true)]
fn note(key: String, i: u64, group: u64) {
    note_run(key, i, group);
}

/// Notes that it ran; at most 10 starts a second.
#[celeriac::task(name = "hold.rated", rate_limit = "10/s", ignore_result = true)]
fn rated(key: String, i: u64, group: u64) {
    note_run(key, i, group);
}

/// Notes that it ran and stores a result.
#[celeriac::task(name = "hold.stored")]
fn stored(key: String) -> String {
    note_run(key.clone(), 0, 0);
    key
}

/// A worker running in the background until `stop` is sent.
struct Running {
    broker: AnyBroker,
    backend: AnyBackend,
    revoked: RevokedIds,
    stop: oneshot::Sender<()>,
    running: tokio::task::JoinHandle<Result<(), celeriac::Error>>,
}

async fn start_worker(config: WorkerConfig) -> Running {
    let worker = Worker::connect(config)
        .await
        .unwrap_or_else(|e| panic!("the broker must be up: {e}"));
    let (broker, backend) = (worker.broker().clone(), worker.backend().clone());
    let revoked = worker.revoked().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    Running {
        broker,
        backend,
        revoked,
        stop,
        running,
    }
}

impl Running {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.running)
            .await
            .expect("the worker stops in time")
            .expect("the worker did not panic")
            .expect("the worker stopped cleanly");
    }
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const HELD: u64 = 10_000;
const GROUPS: u64 = 50;

/// Whether the worker has taken every message of `queue` (held messages do not count
/// against its prefetch of one: at most one more is on its way to be held).
async fn all_taken(broker: &AnyBroker, queue: &str) -> bool {
    match broker {
        AnyBroker::Memory(mem) => mem.queue_len(queue) == 0,
        AnyBroker::Redis(_) => {
            let mut conn = redis::Client::open(REDIS)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let waiting: u64 = redis::cmd("LLEN")
                .arg(queue)
                .query_async(&mut conn)
                .await
                .unwrap();
            waiting == 0
        }
        AnyBroker::Amqp(_) => unreachable!("not used here"),
    }
}

/// Publish `HELD` messages with etas `margin` from now and on (`GROUPS` distinct etas 20 ms
/// apart), not in eta order; then start a worker of one slot and prefetch one, which holds
/// them all (held messages do not count against the prefetch). Every one runs once, none
/// before its eta, the etas in order, and the broker is left with nothing.
///
/// The order is only kept among messages held at the same time: one taken after its eta
/// runs when it is taken. So when the worker took longer than `margin` to take them all (a
/// slow, busy machine), the order is not checked and the test runs again with more time.
async fn many_held_messages_run_in_eta_order(broker_url: &str, mut margin: Duration) -> AnyBroker {
    let client = Client::connect(ClientConfig {
        broker_url: broker_url.into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the broker must be up at {broker_url}: {e}"));
    for attempt in 1..=3 {
        let queue = format!("hold-{}", uuid::Uuid::new_v4().simple());
        let key = queue.clone();
        let published_at = Utc::now();
        let base = (published_at + margin).trunc_subsecs(6);
        for n in 0..HELD {
            // 7919 is prime to 10,000: every index once, in a scrambled order.
            let i = n * 7919 % HELD;
            let group = i % GROUPS;
            let eta = base + chrono::Duration::milliseconds(20 * group as i64);
            client
                .send_task(
                    "hold.note",
                    vec![json!(key), json!(i), json!(group)],
                    Map::new(),
                    &SendOptions::new().eta(eta).queue(&queue),
                )
                .await
                .expect("publish");
        }
        let worker = start_worker(WorkerConfig {
            broker_url: broker_url.into(),
            result_backend: None,
            queues: vec![queue.clone()],
            concurrency: 1,
            prefetch_multiplier: 1,
            ..WorkerConfig::default()
        })
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !all_taken(&worker.broker, &queue).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker took them all"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let taken_at = Utc::now();
        let held_in_time = taken_at + chrono::Duration::milliseconds(200) < base;
        eventually("every held message ran", || ran(&key).len() as u64 >= HELD).await;
        let done = Utc::now();
        // None twice: a moment more for any duplicate to show up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let runs = ran(&key);
        assert_eq!(runs.len() as u64, HELD, "none ran twice");
        let mut seen = vec![false; HELD as usize];
        for (i, group, started) in &runs {
            assert!(!seen[*i as usize], "{i} ran twice");
            seen[*i as usize] = true;
            let eta = base + chrono::Duration::milliseconds(20 * *group as i64);
            assert!(
                *started >= eta,
                "{i} started at {started}, before its eta {eta}"
            );
        }
        let broker = worker.broker.clone();
        worker.shutdown().await;
        assert_eq!(
            broker.purge(&queue).await.unwrap(),
            0,
            "none left in the queue"
        );
        if !held_in_time {
            let took = (taken_at - published_at).to_std().unwrap_or_default();
            println!(
                "attempt {attempt}: publishing and taking {HELD} messages took {took:?}, longer \
                 than {margin:?}; the order is checked again with more time"
            );
            margin = took * 2;
            continue;
        }
        let groups: Vec<u64> = runs.iter().map(|r| r.1).collect();
        let out_of_order = groups.windows(2).position(|w| w[1] < w[0]);
        assert_eq!(
            out_of_order,
            None,
            "started out of eta order (groups {:?})",
            out_of_order.map(|p| &groups[p.saturating_sub(3)..(p + 4).min(groups.len())])
        );
        println!(
            "{HELD} held messages published and taken in {:.2} s, all run {:.2} s after the \
             first eta",
            (taken_at - published_at).num_milliseconds() as f64 / 1000.0,
            (done - base).num_milliseconds() as f64 / 1000.0
        );
        return broker;
    }
    panic!("the worker never took {HELD} messages before their etas (a very slow machine?)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_held_messages_on_memory_all_run_in_eta_order_once() {
    let broker =
        many_held_messages_run_in_eta_order("memory://hold-many", Duration::from_secs(8)).await;
    let AnyBroker::Memory(mem) = broker else {
        panic!("memory:// broker expected")
    };
    assert_eq!(mem.unacked_len(), 0, "every message acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_held_messages_on_redis_all_run_in_eta_order_once() {
    let client = redis::Client::open(REDIS).expect("redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("this test needs Redis at {REDIS}: {e}"));
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    many_held_messages_run_in_eta_order(REDIS, Duration::from_secs(20)).await;
    let unacked: usize = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut conn)
        .await
        .unwrap();
    let index: usize = redis::cmd("ZCARD")
        .arg("unacked_index")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((unacked, index), (0, 0), "every message acknowledged");
}

/// A message revoked, or one whose `expires` passes, while it is held for its eta is not
/// run: REVOKED is stored when its eta comes (the pipeline runs again from the top then),
/// and the message is acknowledged. A held message beside them runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_or_expired_while_held_is_discarded_at_its_time() {
    let url = "memory://hold-discard";
    let worker = start_worker(WorkerConfig {
        broker_url: url.into(),
        result_backend: Some(url.into()),
        concurrency: 1,
        ..WorkerConfig::default()
    })
    .await;
    let AnyBackend::Memory(results) = worker.backend.clone() else {
        panic!("memory:// backend expected")
    };
    let AnyBroker::Memory(mem) = worker.broker.clone() else {
        panic!("memory:// broker expected")
    };
    let client = Client::connect(ClientConfig {
        broker_url: url.into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let eta = (Utc::now() + chrono::Duration::milliseconds(1500)).trunc_subsecs(6);
    let send = |key: &str, opts: SendOptions| {
        let client = &client;
        let key = key.to_owned();
        async move {
            client
                .send_task("hold.stored", vec![json!(key)], Map::new(), &opts)
                .await
                .expect("publish")
                .id()
                .to_owned()
        }
    };
    let expiring = send(
        "discard-expired",
        SendOptions::new()
            .eta(eta)
            .expires(Utc::now() + chrono::Duration::milliseconds(500)),
    )
    .await;
    let revoked = send("discard-revoked", SendOptions::new().eta(eta)).await;
    let kept = send("discard-kept", SendOptions::new().eta(eta)).await;
    // All three held (taken, not settled), then one revoked.
    eventually("the worker holds all three", || {
        mem.unacked_len() == 3 && mem.queue_len("celery") == 0
    })
    .await;
    worker.revoked.revoke([revoked.as_str()]).unwrap();

    for (id, reason) in [(&expiring, "expired"), (&revoked, "revoked")] {
        let meta = results
            .wait(id, WAIT)
            .await
            .unwrap_or_else(|| panic!("no result for the {reason} message"));
        assert_eq!(meta.status, TaskState::Revoked, "{reason}");
        let exc = meta.exception().expect("REVOKED carries an exception");
        assert_eq!(
            (exc.exc_type.as_str(), exc.exc_message),
            ("TaskRevokedError", json!([reason]))
        );
        let at = meta.date_done.expect("REVOKED has date_done");
        assert!(
            at >= eta,
            "{reason}: discarded at {at}, before its eta {eta}"
        );
    }
    let meta = results.wait(&kept, WAIT).await.expect("the kept one ran");
    assert_eq!(meta.status, TaskState::Success);
    assert!(meta.date_done.unwrap() >= eta);
    assert!(
        ran("discard-expired").is_empty(),
        "the expired one did not run"
    );
    assert!(
        ran("discard-revoked").is_empty(),
        "the revoked one did not run"
    );
    assert_eq!(ran("discard-kept").len(), 1);
    eventually("all three are acknowledged", || mem.unacked_len() == 0).await;
    assert_eq!(mem.queue_len("celery"), 0);
    worker.shutdown().await;
}

/// Rate-limited messages with and without etas, and plain held ones, all on one worker:
/// every one runs once, none before its eta, and the rate-limited starts stay spaced by the
/// rate (10/s), the held ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_held_messages_mix() {
    let url = "memory://hold-rated";
    let worker = start_worker(WorkerConfig {
        broker_url: url.into(),
        result_backend: None,
        concurrency: 2,
        ..WorkerConfig::default()
    })
    .await;
    let client = Client::connect(ClientConfig {
        broker_url: url.into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let key = "mix-rated";
    let plain = "mix-plain";
    let eta = (Utc::now() + chrono::Duration::milliseconds(400)).trunc_subsecs(6);
    let sent = Utc::now();
    for i in 0..12u64 {
        // Every other one rate-limited; of each kind, every other one held for the eta.
        let (task, k) = if i % 2 == 0 {
            ("hold.rated", key)
        } else {
            ("hold.note", plain)
        };
        let opts = if i % 4 < 2 {
            SendOptions::new().eta(eta)
        } else {
            SendOptions::new()
        };
        let group = u64::from(i % 4 < 2);
        client
            .send_task(
                task,
                vec![json!(k), json!(i), json!(group)],
                Map::new(),
                &opts,
            )
            .await
            .expect("publish");
    }
    eventually("every message ran", || {
        ran(key).len() == 6 && ran(plain).len() == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in [key, plain] {
        let runs = ran(k);
        assert_eq!(runs.len(), 6, "{k}: none dropped, none twice");
        let mut ids: Vec<u64> = runs.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 6, "{k}: every one once");
        for (i, group, started) in &runs {
            if *group == 1 {
                assert!(
                    *started >= eta,
                    "{k} {i} started at {started}, before {eta}"
                );
            }
        }
    }
    let mut starts: Vec<f64> = ran(key)
        .iter()
        .map(|r| r.2.timestamp_micros() as f64 / 1e6)
        .collect();
    starts.sort_by(f64::total_cmp);
    // 10/s: starts at least 100 ms apart (a little slack for clock rounding), the first no
    // earlier than the send.
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] >= 0.095, "starts too close: {starts:?}");
    }
    let first = sent.timestamp_micros() as f64 / 1e6;
    assert!(starts[5] - first >= 0.49, "{starts:?}");
    worker.shutdown().await;
}

/// On a warm shutdown every held message (eta far off, or waiting for the one busy slot) goes
/// back to the queue, none is run and none is left unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_every_held_message() {
    let url = "memory://hold-shutdown";
    let worker = start_worker(WorkerConfig {
        broker_url: url.into(),
        result_backend: None,
        concurrency: 1,
        prefetch_multiplier: 1,
        ..WorkerConfig::default()
    })
    .await;
    let AnyBroker::Memory(mem) = worker.broker.clone() else {
        panic!("memory:// broker expected")
    };
    let client = Client::connect(ClientConfig {
        broker_url: url.into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let far = SendOptions::new().countdown(Duration::from_secs(3600));
    for i in 0..500u64 {
        client
            .send_task(
                "hold.note",
                vec![json!("shutdown"), json!(i), json!(0)],
                Map::new(),
                &far,
            )
            .await
            .expect("publish");
    }
    eventually("the worker holds all 500", || {
        mem.unacked_len() == 500 && mem.queue_len("celery") == 0
    })
    .await;
    worker.shutdown().await;
    assert!(ran("shutdown").is_empty(), "none ran");
    assert_eq!(mem.unacked_len(), 0, "none left unacknowledged");
    assert_eq!(mem.queue_len("celery"), 500, "every one back in the queue");
}
