//! Celeriac's client calls tasks on a real Python Celery 5.7 worker
//! (`celery -A pytasks worker -Q py`): over Redis and over RabbitMQ with results in the
//! Redis backend (database 1, flushed first), and over RabbitMQ with `rpc://`. Redis, RabbitMQ or the venv missing is a
//! failure, never a skip. The three run in one test, one after the other, so they never
//! share the database at the same time.

mod common;

use common::PythonWorker;
use std::time::{Duration, Instant};

use celeriac::client::{Client, ClientConfig, ResultError, SendOptions};
use celeriac::protocol::{Serializer, TaskState};
use chrono::Utc;
use serde_json::{Map, Value, json};

const BACKEND: &str = "redis://127.0.0.1:6379/1";
const QUEUE: &str = "py";
const RESULT_TIMEOUT: Duration = Duration::from_secs(60);
fn amqp_url() -> String {
    std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/celeriac-test".into())
}

fn args(values: &[Value]) -> Vec<Value> {
    values.to_vec()
}

async fn scenarios(broker: &str, backend: &str) {
    let worker = PythonWorker::start("pytasks", QUEUE, broker, backend, 8);
    let client = Client::connect(ClientConfig {
        broker_url: broker.into(),
        result_backend: Some(backend.into()),
        default_queue: QUEUE.into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the client cannot connect to {broker}: {e}"));
    let none = SendOptions::new();

    // The worker is ready when it answers (generous: it may start on a busy machine).
    let ready = client
        .send_task(
            "pytasks.add",
            args(&[json!(0), json!(0)]),
            Map::new(),
            &none,
        )
        .await
        .unwrap();
    let started: Result<i64, _> = ready.typed().get(Duration::from_secs(90)).await;
    assert_eq!(
        started.ok(),
        Some(0),
        "the Python worker did not answer\n{}",
        worker.log_tail()
    );

    // Values of every JSON type, by position and keyword, unicode, 1 MB.
    let sum: i64 = client
        .send_task(
            "pytasks.add",
            args(&[json!(2), json!(3)]),
            Map::new(),
            &none,
        )
        .await
        .unwrap()
        .typed()
        .get(RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sum, 5);
    let mut kwargs = Map::new();
    kwargs.insert("x".into(), json!(6));
    kwargs.insert("y".into(), json!(7));
    let product: i64 = client
        .send_task("pytasks.mul", vec![], kwargs, &none)
        .await
        .unwrap()
        .typed()
        .get(RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(product, 42);
    let value =
        json!({"text": "héllo wörld 🦀", "n": [1, 2.5, null, true], "nested": {"a": {"b": []}}});
    let echoed: Value = client
        .send_task("pytasks.echo", vec![value.clone()], Map::new(), &none)
        .await
        .unwrap()
        .typed()
        .get(RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echoed, value);
    let big = "x".repeat(1 << 20);
    let back: String = client
        .send_task("pytasks.echo", vec![json!(big)], Map::new(), &none)
        .await
        .unwrap()
        .typed()
        .get(RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(back.len(), 1 << 20);
    let packed: i64 = client
        .send_task(
            "pytasks.add",
            args(&[json!(20), json!(22)]),
            Map::new(),
            &SendOptions::new().serializer(Serializer::Msgpack),
        )
        .await
        .unwrap()
        .typed()
        .get(RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(packed, 42);

    // Exceptions come back typed.
    let failed = client
        .send_task("pytasks.fail", vec![json!("boom")], Map::new(), &none)
        .await
        .unwrap();
    match failed.get(RESULT_TIMEOUT).await {
        Err(ResultError::Failed { failure, .. }) => {
            assert_eq!(
                (failure.exc_type.as_str(), failure.exc_module.as_str()),
                ("ValueError", "builtins")
            );
            assert_eq!(failure.to_string(), "ValueError: boom");
            assert!(
                failure
                    .traceback
                    .as_deref()
                    .unwrap_or("")
                    .contains("ValueError: boom")
            );
        }
        other => panic!("expected ValueError, got {other:?}"),
    }
    assert_eq!(failed.state().await.unwrap(), TaskState::Failure);
    match client
        .send_task("pytasks.nope", vec![], Map::new(), &none)
        .await
        .unwrap()
        .get(RESULT_TIMEOUT)
        .await
    {
        Err(ResultError::Failed { failure, .. }) => assert_eq!(failure.exc_type, "NotRegistered"),
        other => panic!("expected NotRegistered, got {other:?}"),
    }

    // A timeout is its own error; nobody consumes this queue.
    let orphan = client
        .send_task(
            "pytasks.add",
            args(&[json!(1), json!(1)]),
            Map::new(),
            &SendOptions::new().queue("nobody-listens"),
        )
        .await
        .unwrap();
    assert!(matches!(
        orphan.typed::<i64>().get(Duration::from_millis(500)).await,
        Err(ResultError::Timeout { .. })
    ));
    assert_eq!(orphan.state().await.unwrap(), TaskState::Pending);

    // The Python worker honours countdown (not run before) and expires (REVOKED).
    let sent = Instant::now();
    let later = client
        .send_task(
            "pytasks.add",
            args(&[json!(1), json!(2)]),
            Map::new(),
            &SendOptions::new().countdown(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(later.typed::<i64>().get(RESULT_TIMEOUT).await.unwrap(), 3);
    assert!(
        sent.elapsed() >= Duration::from_millis(1900),
        "ran {:?} after sending with a 2 s countdown",
        sent.elapsed()
    );
    let expired = client
        .send_task(
            "pytasks.add",
            args(&[json!(1), json!(2)]),
            Map::new(),
            &SendOptions::new().expires(Utc::now() - chrono::Duration::seconds(5)),
        )
        .await
        .unwrap();
    // On RabbitMQ the message TTL (0) may drop it instead: then nothing is ever stored.
    match expired.typed::<i64>().get(Duration::from_secs(10)).await {
        Err(ResultError::Revoked { .. }) => {}
        Err(ResultError::Timeout { .. }) if broker.starts_with("amqp") => {}
        other => panic!("an expired task must not run: {other:?}"),
    }

    // Forget removes the stored result.
    let forgotten = client
        .send_task(
            "pytasks.add",
            args(&[json!(5), json!(5)]),
            Map::new(),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(
        forgotten.typed::<i64>().get(RESULT_TIMEOUT).await.unwrap(),
        10
    );
    forgotten.forget().await.unwrap();
    assert_eq!(forgotten.state().await.unwrap(), TaskState::Pending);

    // 1,000 calls awaited at once from one (cloned) client.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000i64 {
        let client = client.clone();
        calls.spawn(async move {
            let r = client
                .send_task(
                    "pytasks.add",
                    args(&[json!(i), json!(i)]),
                    Map::new(),
                    &SendOptions::new(),
                )
                .await
                .unwrap();
            (i, r.typed::<i64>().get(Duration::from_secs(120)).await)
        });
    }
    let mut ok = 0;
    while let Some(done) = calls.join_next().await {
        let (i, got) = done.unwrap();
        assert_eq!(got.unwrap_or_else(|e| panic!("call {i}: {e}")), 2 * i);
        ok += 1;
    }
    assert_eq!(ok, 1000);
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_calls_a_python_worker_over_redis_and_rabbitmq_with_redis_and_rpc_results() {
    let redis_client = redis::Client::open(BACKEND).unwrap();
    let mut conn = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis must run at 127.0.0.1:6379: {e}"));
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    scenarios(BACKEND, BACKEND).await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    scenarios(&amqp_url(), BACKEND).await;
    // Results pushed to this client's reply queue by the Python worker's RPC backend.
    scenarios(&amqp_url(), "rpc://").await;
}
