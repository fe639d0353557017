//! One broker conformance suite, run against every broker (memory, Redis).
//! Each test gets a fresh [`Harness`]; the brokers must behave identically here.
#![allow(dead_code)]

use celeriac::broker::{AnyBroker, BrokerError, Consumer, Delivery, MemoryBroker, RedisBroker};
use celeriac::protocol::RawMessage;
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// A broker under test plus ways to look inside it.
pub struct Harness {
    pub kind: Kind,
    /// Serialises tests that share a Redis database.
    pub _guard: Option<tokio::sync::MutexGuard<'static, ()>>,
}

pub enum Kind {
    Memory(MemoryBroker),
    Redis {
        broker: RedisBroker,
        conn: redis::aio::MultiplexedConnection,
    },
}

impl Harness {
    pub fn any(&self) -> AnyBroker {
        match &self.kind {
            Kind::Memory(b) => AnyBroker::Memory(b.clone()),
            Kind::Redis { broker, .. } => AnyBroker::Redis(broker.clone()),
        }
    }

    pub async fn queue_len(&self, q: &str) -> usize {
        match &self.kind {
            Kind::Memory(b) => b.queue_len(q),
            Kind::Redis { broker, .. } => broker.queue_len(q).await.expect("queue_len"),
        }
    }

    pub async fn unacked_len(&self) -> usize {
        match &self.kind {
            Kind::Memory(b) => b.unacked_len(),
            Kind::Redis { conn, .. } => redis::cmd("HLEN")
                .arg("unacked")
                .query_async(&mut conn.clone())
                .await
                .expect("HLEN"),
        }
    }

    pub async fn dead_reasons(&self) -> Vec<String> {
        match &self.kind {
            Kind::Memory(b) => b.dead_letters().into_iter().map(|(r, _)| r).collect(),
            Kind::Redis { conn, .. } => {
                let items: Vec<String> = redis::cmd("LRANGE")
                    .arg("celeriac.dead_letter")
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn.clone())
                    .await
                    .expect("LRANGE");
                items
                    .iter()
                    .map(|s| {
                        let v: Value = serde_json::from_str(s).expect("dead letter is JSON");
                        v["reason"].as_str().expect("reason").to_string()
                    })
                    .collect()
            }
        }
    }
}

/// A Celery-like task message with the given id and optional priority.
pub fn sample(id: &str, priority: Option<u8>) -> RawMessage {
    let mut headers = Map::new();
    headers.insert("lang".into(), json!("py"));
    headers.insert("task".into(), json!("tasks.add"));
    headers.insert("id".into(), json!(id));
    headers.insert("retries".into(), json!(0));
    let mut properties = Map::new();
    properties.insert("correlation_id".into(), json!(id));
    properties.insert(
        "reply_to".into(),
        json!("66381240-4081-3615-a8ad-96f052e1eb1a"),
    );
    properties.insert("delivery_mode".into(), json!(2));
    if let Some(p) = priority {
        properties.insert("priority".into(), json!(p));
    }
    RawMessage {
        body: format!(r#"[["{id}"], {{}}, {{"callbacks": null, "errbacks": null, "chain": null, "chord": null}}]"#)
            .into_bytes(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers: headers.into(),
        properties,
        ..Default::default()
    }
}

pub fn id_of(d: &Delivery) -> String {
    d.message.headers["id"]
        .as_str()
        .expect("id header")
        .to_string()
}

pub async fn recv(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("no delivery within 10 s")
        .expect("next() failed")
}

/// Asserts that no delivery arrives within `wait`.
pub async fn assert_nothing(c: &mut Consumer, wait: Duration) {
    if let Ok(r) = tokio::time::timeout(wait, c.next()).await {
        panic!("unexpected delivery: {:?}", r.map(|d| id_of(&d)));
    }
}

fn queue(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

pub async fn publish_consume_ack(h: &Harness) {
    let b = h.any();
    let msg = sample("id-1", None);
    b.publish(&msg, "", "q1").await.unwrap();
    assert_eq!(h.queue_len("q1").await, 1);
    let mut c = b.consume(&queue("q1"), 4).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(d.message.body, msg.body);
    assert_eq!(d.message.headers, msg.headers);
    assert_eq!(d.message.content_type, "application/json");
    assert_eq!(d.message.content_encoding, "utf-8");
    assert_eq!(d.message.properties["correlation_id"], json!("id-1"));
    assert_eq!(d.message.properties["delivery_mode"], json!(2));
    assert_eq!(d.message.properties["priority"], json!(0));
    assert!(d.message.properties.get("delivery_tag").is_none());
    assert!(d.message.properties.get("delivery_info").is_none());
    assert_eq!(d.message.delivery_info.exchange, "");
    assert_eq!(d.message.delivery_info.routing_key, "q1");
    assert!(!d.message.delivery_info.redelivered);
    assert_eq!(d.delivery_tag().len(), 36, "uuid4 delivery tag");
    assert_eq!(h.queue_len("q1").await, 0);
    assert_eq!(h.unacked_len().await, 1);
    d.ack().await.unwrap();
    assert_eq!(h.unacked_len().await, 0);
    c.close().await.unwrap();
    assert_eq!(h.queue_len("q1").await, 0);
}

pub async fn requeue_goes_to_the_back_with_redelivered(h: &Harness) {
    let b = h.any();
    b.publish(&sample("a", None), "", "q1").await.unwrap();
    let mut c = b.consume(&queue("q1"), 1).await.unwrap();
    let a = recv(&mut c).await;
    let tag = a.delivery_tag().to_string();
    b.publish(&sample("b", None), "", "q1").await.unwrap();
    a.requeue().await.unwrap();
    let first = recv(&mut c).await;
    assert_eq!(id_of(&first), "b");
    first.ack().await.unwrap();
    let again = recv(&mut c).await;
    assert_eq!(id_of(&again), "a");
    assert_eq!(again.delivery_tag(), tag, "requeue keeps the delivery tag");
    assert!(again.message.delivery_info.redelivered);
    assert_eq!(again.message.headers["redelivered"], json!(true));
    again.ack().await.unwrap();
    c.close().await.unwrap();
    assert_eq!(h.unacked_len().await, 0);
}

pub async fn restore_goes_to_the_front_with_redelivered(h: &Harness) {
    let b = h.any();
    b.publish(&sample("a", None), "", "q1").await.unwrap();
    b.publish(&sample("b", None), "", "q1").await.unwrap();
    let mut c = b.consume(&queue("q1"), 1).await.unwrap();
    let a = recv(&mut c).await;
    assert_eq!(id_of(&a), "a");
    let tag = a.delivery_tag().to_string();
    a.restore().await.unwrap();
    let again = recv(&mut c).await;
    assert_eq!(id_of(&again), "a", "restore puts the message at the front");
    assert_eq!(again.delivery_tag(), tag);
    assert!(again.message.delivery_info.redelivered);
    assert_eq!(again.message.headers["redelivered"], json!(true));
    again.ack().await.unwrap();
    let b2 = recv(&mut c).await;
    assert_eq!(id_of(&b2), "b");
    assert!(!b2.message.delivery_info.redelivered);
    b2.ack().await.unwrap();
    c.close().await.unwrap();
}

pub async fn priorities_lower_first_fifo_within_a_step(h: &Harness) {
    let b = h.any();
    for (id, p) in [
        ("p9", 9),
        ("p0", 0),
        ("p5", 5),
        ("p3", 3),
        ("p1", 1),
        ("p7", 7),
    ] {
        b.publish(&sample(id, Some(p)), "", "q1").await.unwrap();
    }
    let mut c = b.consume(&queue("q1"), 1).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..6 {
        let d = recv(&mut c).await;
        order.push(id_of(&d));
        d.ack().await.unwrap();
    }
    // Steps: 0 (p0, p1), 3 (p5, p3), 6 (p7), 9 (p9); FIFO inside a step.
    assert_eq!(order, ["p0", "p1", "p5", "p3", "p7", "p9"]);
    c.close().await.unwrap();
}

pub async fn round_robin_across_queues(h: &Harness) {
    let b = h.any();
    for i in 0..3 {
        b.publish(&sample(&format!("x{i}"), None), "", "qx")
            .await
            .unwrap();
        b.publish(&sample(&format!("y{i}"), None), "", "qy")
            .await
            .unwrap();
    }
    let mut c = b
        .consume(&["qx".to_string(), "qy".to_string()], 1)
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..6 {
        let d = recv(&mut c).await;
        order.push(id_of(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(order, ["x0", "y0", "x1", "y1", "x2", "y2"]);
    c.close().await.unwrap();
}

pub async fn prefetch_bound_is_respected(h: &Harness) {
    let b = h.any();
    for i in 0..5 {
        b.publish(&sample(&format!("m{i}"), None), "", "q1")
            .await
            .unwrap();
    }
    let mut c = b.consume(&queue("q1"), 2).await.unwrap();
    let d0 = recv(&mut c).await;
    let d1 = recv(&mut c).await;
    assert_nothing(&mut c, Duration::from_millis(400)).await;
    assert_eq!(h.unacked_len().await, 2, "never more than prefetch taken");
    assert_eq!(h.queue_len("q1").await, 3);
    d0.ack().await.unwrap();
    let d2 = recv(&mut c).await;
    assert_eq!(id_of(&d2), "m2");
    assert_nothing(&mut c, Duration::from_millis(300)).await;
    // Dropping a delivery frees its slot too (and it is not lost).
    drop(d1);
    let d3 = recv(&mut c).await;
    d2.ack().await.unwrap();
    d3.ack().await.unwrap();
    c.close().await.unwrap();
    // m1 (dropped) is either back in the queue (memory) or still in unacked (Redis);
    // m4 is back in the queue or was never taken.
    assert_eq!(h.queue_len("q1").await + h.unacked_len().await, 2);
}

pub async fn next_is_cancel_safe(h: &Harness) {
    let b = h.any();
    let mut c = b.consume(&queue("q1"), 3).await.unwrap();
    let publisher = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                b.publish(&sample(&format!("c{i}"), None), "", "q1")
                    .await
                    .unwrap();
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(7)).await;
                }
            }
        })
    };
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut cancelled = 0;
    while seen.len() < 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 40 received",
            seen.len()
        );
        tokio::select! {
            d = c.next() => {
                let d = d.unwrap();
                assert!(seen.insert(id_of(&d)), "duplicate delivery");
                d.ack().await.unwrap();
            }
            _ = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
        }
    }
    publisher.await.unwrap();
    assert!(
        cancelled > 0,
        "the timer never won; the test proved nothing"
    );
    assert_eq!(h.queue_len("q1").await, 0);
    assert_eq!(h.unacked_len().await, 0);
    c.close().await.unwrap();
}

pub async fn dead_letter_keeps_the_message_and_settles(h: &Harness) {
    let b = h.any();
    b.publish(&sample("bad", None), "", "q1").await.unwrap();
    let mut c = b.consume(&queue("q1"), 1).await.unwrap();
    let d = recv(&mut c).await;
    d.dead_letter("cannot decode: test").await.unwrap();
    assert_eq!(h.dead_reasons().await, ["cannot decode: test"]);
    assert_eq!(h.unacked_len().await, 0);
    assert_eq!(h.queue_len("q1").await, 0);
    c.close().await.unwrap();
}

pub async fn close_hands_back_unsettled_and_keeps_given_out_valid(h: &Harness) {
    let b = h.any();
    for i in 0..3 {
        b.publish(&sample(&format!("m{i}"), None), "", "q1")
            .await
            .unwrap();
    }
    let mut c = b.consume(&queue("q1"), 3).await.unwrap();
    let d = recv(&mut c).await;
    // Give the Redis fetcher time to prefetch the other two.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.close().await.unwrap();
    assert_eq!(
        h.queue_len("q1").await,
        2,
        "prefetched messages are handed back"
    );
    assert_eq!(
        h.unacked_len().await,
        1,
        "only the given-out delivery is held"
    );
    d.ack().await.unwrap();
    assert_eq!(h.unacked_len().await, 0);
    let mut c = b.consume(&queue("q1"), 3).await.unwrap();
    let next = recv(&mut c).await;
    assert_eq!(id_of(&next), "m1", "handed-back messages keep their order");
    next.ack().await.unwrap();
    let last = recv(&mut c).await;
    assert_eq!(id_of(&last), "m2");
    last.ack().await.unwrap();
    c.close().await.unwrap();
}

pub async fn named_exchange_routes_through_bindings(h: &Harness) {
    let b = h.any();
    match b.publish(&sample("lost", None), "qe", "qe").await {
        Err(BrokerError::Unroutable {
            exchange,
            routing_key,
        }) => assert_eq!((exchange, routing_key), ("qe".into(), "qe".into())),
        other => panic!("expected Unroutable, got {other:?}"),
    }
    // Consuming declares the queue's binding (exchange = routing key = queue name).
    let mut c = b.consume(&queue("qe"), 1).await.unwrap();
    b.publish(&sample("routed", None), "qe", "qe")
        .await
        .unwrap();
    let d = recv(&mut c).await;
    assert_eq!(id_of(&d), "routed");
    assert_eq!(d.message.delivery_info.exchange, "qe");
    assert_eq!(d.message.delivery_info.routing_key, "qe");
    d.ack().await.unwrap();
    c.close().await.unwrap();
}

pub async fn blocked_consumer_wakes_on_publish(h: &Harness) {
    let b = h.any();
    let mut c = b
        .consume(&["qa".to_string(), "qb".to_string()], 1)
        .await
        .unwrap();
    assert_nothing(&mut c, Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    b.publish(&sample("late", Some(6)), "", "qb").await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(id_of(&d), "late");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woke after {:?}",
        started.elapsed()
    );
    d.ack().await.unwrap();
    c.close().await.unwrap();
}

/// Generates one `#[tokio::test]` per conformance check, each with a fresh harness from `$setup`.
#[macro_export]
macro_rules! conformance_suite {
    ($setup:ident) => {
        $crate::conformance_suite!(@tests $setup;
            publish_consume_ack,
            requeue_goes_to_the_back_with_redelivered,
            restore_goes_to_the_front_with_redelivered,
            priorities_lower_first_fifo_within_a_step,
            round_robin_across_queues,
            prefetch_bound_is_respected,
            next_is_cancel_safe,
            dead_letter_keeps_the_message_and_settles,
            close_hands_back_unsettled_and_keeps_given_out_valid,
            named_exchange_routes_through_bindings,
            blocked_consumer_wakes_on_publish,
        );
    };
    (@tests $setup:ident; $($name:ident),* $(,)?) => {
        mod conformance_tests {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::$setup().await;
                    super::conformance::$name(&h).await;
                }
            )*
        }
    };
}
