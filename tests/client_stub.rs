//! The call stubs `#[task]` writes, end to end: a Rust client sends `task::new(..)` through a
//! real Redis (database 0, a queue of its own) to a worker running the tasks below in this
//! process, and reads the typed result.

use celeriac::client::{Client, ClientConfig, ClientError, ResultError, SendOptions};
use celeriac::task::TaskError;
use celeriac::worker::{Worker, WorkerConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const REDIS: &str = "redis://127.0.0.1:6379/0";
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

#[celeriac::task(name = "stub.scale")]
async fn scale(p: Point, by: Option<f64>) -> Point {
    let by = by.unwrap_or(1.0);
    Point {
        x: p.x * by,
        y: p.y * by,
    }
}

/// No `name = ..`: the stub must send the default name the worker registered.
#[celeriac::task]
fn words(text: String, request: &celeriac::Request) -> Result<Vec<String>, TaskError> {
    if text.is_empty() {
        return Err(TaskError::value_error(format!(
            "nothing to split in {}",
            request.id
        )));
    }
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// A value whose `Serialize` fails: the client must refuse to send it.
#[derive(Debug, Deserialize)]
struct Unsendable;

impl Serialize for Unsendable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Unsendable cannot be serialized"))
    }
}

#[celeriac::task(name = "stub.take")]
async fn take(value: Unsendable) -> bool {
    let _ = value;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stubs_send_typed_calls_and_read_typed_results() {
    let queue = format!("stub-{}", uuid::Uuid::new_v4().simple());
    let worker = Worker::connect(WorkerConfig {
        broker_url: REDIS.into(),
        result_backend: Some(REDIS.into()),
        queues: vec![queue.clone()],
        concurrency: 4,
        ..WorkerConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("Redis must run at 127.0.0.1:6379: {e}"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));
    let client = Client::connect(ClientConfig {
        broker_url: REDIS.into(),
        result_backend: Some(REDIS.into()),
        default_queue: queue.clone(),
        ..ClientConfig::default()
    })
    .await
    .unwrap();

    // A struct in, a struct out; an Option left as None.
    let p = Point { x: 1.5, y: -2.0 };
    let scaled: Point = client
        .send(&scale::new(p.clone(), Some(2.0)))
        .await
        .unwrap()
        .get(WAIT)
        .await
        .unwrap();
    assert_eq!(scaled, Point { x: 3.0, y: -4.0 });
    let same = client.send(&scale::new(p.clone(), None)).await.unwrap();
    assert_eq!(same.get(WAIT).await.unwrap(), p);

    // The default name, a `&Request` parameter left out of the stub, and a typed failure.
    assert_eq!(words::name(), "client_stub.words");
    let split = client
        .send(&words::new("a typed call".into()))
        .await
        .unwrap();
    assert_eq!(split.get(WAIT).await.unwrap(), ["a", "typed", "call"]);
    let empty = client.send(&words::new(String::new())).await.unwrap();
    match empty.get(WAIT).await {
        Err(ResultError::Failed { failure, .. }) => {
            assert_eq!(failure.exc_type, "ValueError");
            assert_eq!(
                failure.message(),
                format!("nothing to split in {}", empty.id())
            );
        }
        other => panic!("expected ValueError, got {other:?}"),
    }

    // Options travel with the signature: this one goes to a queue nobody consumes.
    let idle = format!("stub-idle-{}", uuid::Uuid::new_v4().simple());
    let parked = client
        .send(&scale::new(p.clone(), None).with_options(SendOptions::new().queue(&idle)))
        .await
        .unwrap();
    assert!(matches!(
        parked.get(Duration::from_millis(300)).await,
        Err(ResultError::Timeout { .. })
    ));
    assert_eq!(
        client.broker().purge(&idle).await.unwrap(),
        1,
        "the signature's queue option was not used"
    );

    // An argument that cannot be serialized is refused before anything is sent.
    match client.send(&take::new(Unsendable)).await {
        Err(ClientError::Arguments { task, source }) => {
            assert_eq!(task, "stub.take");
            assert!(
                source
                    .to_string()
                    .contains("Unsendable cannot be serialized")
            );
        }
        other => panic!("expected ClientError::Arguments, got {other:?}"),
    }

    // Many typed calls at once from clones of the client.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        calls.spawn(async move {
            let p = Point {
                x: f64::from(i),
                y: 1.0,
            };
            let r = client.send(&scale::new(p, Some(3.0))).await.unwrap();
            (i, r.get(WAIT).await.unwrap())
        });
    }
    let mut done = 0;
    while let Some(joined) = calls.join_next().await {
        let (i, got) = joined.unwrap();
        assert_eq!(
            got,
            Point {
                x: 3.0 * f64::from(i),
                y: 3.0
            }
        );
        done += 1;
    }
    assert_eq!(done, 200);

    let _ = stop_tx.send(());
    running.await.unwrap().unwrap();
}
