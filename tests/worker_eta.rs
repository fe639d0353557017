//! Messages waiting for their eta do not hold back other messages: with a prefetch of one,
//! far-off etas must not stop the worker from taking the next message, on RabbitMQ (the
//! channel's `basic.qos` is raised by one per held message, as Celery does) and on Redis
//! (the held message's prefetch slot is freed; it stays in kombu's `unacked` bookkeeping).
//! Real servers: Redis database 5 and `CELERIAC_TEST_AMQP_URL`, queues of their own.

use celeriac::backend::AnyBackend;
use celeriac::client::{Client, ClientConfig, SendOptions};
use celeriac::protocol::TaskState;
use celeriac::worker::{Worker, WorkerConfig};
use serde_json::{Map, json};
use std::time::{Duration, Instant};

const REDIS: &str = "redis://127.0.0.1:6379/5";

#[celeriac::task(name = "eta.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

fn amqp_url() -> String {
    std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/celeriac-test".into())
}

/// With prefetch 1 (one slot, multiplier 1): three messages with etas a minute away, then
/// one to run now, which must finish long before those etas; then the held ones are handed
/// back on shutdown and nothing is lost.
async fn etas_do_not_block(broker: &str) {
    let queue = format!("eta-{}", uuid::Uuid::new_v4().simple());
    let results = format!("memory://eta-{queue}");
    let worker = Worker::connect(WorkerConfig {
        broker_url: broker.into(),
        result_backend: Some(results.clone()),
        queues: vec![queue.clone()],
        concurrency: 1,
        prefetch_multiplier: 1,
        ..WorkerConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the broker must run at {broker}: {e}"));
    let AnyBackend::Memory(store) = worker.backend().clone() else {
        panic!("memory:// backend expected")
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));
    let client = Client::connect(ClientConfig {
        broker_url: broker.into(),
        default_queue: queue.clone(),
        ..ClientConfig::default()
    })
    .await
    .unwrap();

    let later = SendOptions::new().countdown(Duration::from_secs(60));
    let mut held = Vec::new();
    for i in 0..3 {
        let r = client
            .send_task("eta.add", vec![json!(i), json!(i)], Map::new(), &later)
            .await
            .unwrap();
        held.push(r.id().to_owned());
    }
    // Give the worker time to take the held ones first (they are ahead in the queue).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let now = client
        .send_task(
            "eta.add",
            vec![json!(2), json!(3)],
            Map::new(),
            &SendOptions::new(),
        )
        .await
        .unwrap();
    let meta = store
        .wait(now.id(), Duration::from_secs(30))
        .await
        .expect("the message without an eta ran while three etas were held");
    assert_eq!((meta.status, meta.result), (TaskState::Success, json!(5)));
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "it waited {:?}",
        sent.elapsed()
    );
    for id in &held {
        assert_eq!(store.get(id), None, "{id} ran before its eta");
    }

    // Shutdown hands the held messages back to the queue.
    let _ = stop_tx.send(());
    running.await.unwrap().unwrap();
    let back = client.broker().purge(&queue).await.unwrap();
    assert_eq!(back, 3, "the held messages went back to {queue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etas_do_not_hold_back_other_messages_on_rabbitmq() {
    etas_do_not_block(&amqp_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etas_do_not_hold_back_other_messages_on_redis() {
    etas_do_not_block(REDIS).await;
}
