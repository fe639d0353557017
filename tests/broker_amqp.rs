//! The AMQP transport against a real RabbitMQ (`CELERIAC_TEST_AMQP_URL`, by default the
//! test vhost `celeriac-test` that `scripts/test.sh` creates on 127.0.0.1:5672). Every test
//! uses queues of its own, so tests run in parallel. Fails loudly when RabbitMQ is down.

mod conformance;

use celeriac::backend::{AnyBackend, BackendOptions, ReplyTo};
use celeriac::broker::url::BrokerUrl;
use celeriac::broker::{
    AmqpBroker, AnyBroker, BrokerError, BrokerOptions, Consumer, Delivery, QueueType,
};
use celeriac::protocol::{ExceptionInfo, RawMessage, ResultMeta};
use serde_json::{Map, Value, json};
use std::time::Duration;

fn amqp_url() -> String {
    std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/celeriac-test".into())
}

async fn broker_with(opts: BrokerOptions) -> AnyBroker {
    AnyBroker::connect(&amqp_url(), opts).await.unwrap_or_else(|e| {
        panic!(
            "these tests need RabbitMQ at {} (scripts/test.sh starts it and creates the vhost): {e}",
            amqp_url()
        )
    })
}

async fn broker() -> AnyBroker {
    broker_with(BrokerOptions::default()).await
}

fn amqp(b: &AnyBroker) -> &AmqpBroker {
    match b {
        AnyBroker::Amqp(a) => a,
        _ => panic!("not an AMQP broker"),
    }
}

/// A queue name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The conformance suite's Celery-like message, with headers of every JSON type that a
/// field table must carry (null, float, nested list and table).
fn sample(id: &str, priority: Option<u8>) -> RawMessage {
    let mut msg = conformance::sample(id, priority);
    msg.headers.insert("eta".into(), Value::Null);
    msg.headers.insert("timelimit".into(), json!([null, 2.5]));
    msg.headers
        .insert("stamps".into(), json!({"k": [1, "two"]}));
    msg
}

fn id_of(d: &Delivery) -> String {
    d.message.headers["id"]
        .as_str()
        .expect("id header")
        .to_string()
}

async fn recv(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), c.next())
        .await
        .expect("no delivery within 20 s")
        .expect("next() failed")
}

async fn assert_nothing(c: &mut Consumer, wait: Duration) {
    if let Ok(r) = tokio::time::timeout(wait, c.next()).await {
        panic!("unexpected delivery: {:?}", r.map(|d| id_of(&d)));
    }
}

/// Ready messages in `queue`, polled until it equals `want` (RabbitMQ's counts settle
/// asynchronously after an ack or a reject).
async fn wait_queue_len(b: &AnyBroker, queue: &str, want: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = amqp(b).queue_len(queue).await.expect("queue_len");
        if n == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue} holds {n}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn publish_consume_ack_keeps_the_message_intact() {
    let b = broker().await;
    let q = unique("t-basic");
    let mut c = b.consume(std::slice::from_ref(&q), 4).await.unwrap();
    let msg = sample("id-1", Some(3));
    // The worker declared the Celery topology: exchange q (direct) bound with key q.
    b.publish(&msg, &q, &q).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(d.message.body, msg.body);
    assert_eq!(
        d.message.headers, msg.headers,
        "headers survive the field-table round trip"
    );
    assert_eq!(d.message.content_type, "application/json");
    assert_eq!(d.message.content_encoding, "utf-8");
    assert_eq!(d.message.properties["correlation_id"], json!("id-1"));
    assert_eq!(
        d.message.properties["reply_to"],
        json!("66381240-4081-3615-a8ad-96f052e1eb1a")
    );
    assert_eq!(d.message.properties["delivery_mode"], json!(2));
    assert_eq!(d.message.properties["priority"], json!(3));
    assert_eq!(d.message.delivery_info.exchange, q);
    assert_eq!(d.message.delivery_info.routing_key, q);
    assert_eq!(d.message.delivery_info.priority, Some(3));
    assert!(!d.message.delivery_info.redelivered);
    d.ack().await.unwrap();
    c.close().await.unwrap();
    wait_queue_len(&b, &q, 0).await;
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name_and_unroutable_is_an_error() {
    let b = broker().await;
    let q = unique("t-route");
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    b.publish(&sample("direct", None), "", &q).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(id_of(&d), "direct");
    assert_eq!(d.message.delivery_info.exchange, "");
    d.ack().await.unwrap();

    let nowhere = unique("t-nowhere");
    match b.publish(&sample("lost", None), "", &nowhere).await {
        Err(BrokerError::Unroutable {
            exchange,
            routing_key,
        }) => {
            assert_eq!(
                (exchange.as_str(), routing_key.as_str()),
                ("", nowhere.as_str())
            )
        }
        other => panic!("expected Unroutable, got {other:?}"),
    }
    // A named exchange that exists but has no binding for the key.
    match b.publish(&sample("lost", None), &q, "other-key").await {
        Err(BrokerError::Unroutable { .. }) => {}
        other => panic!("expected Unroutable, got {other:?}"),
    }
    c.close().await.unwrap();
}

#[tokio::test]
async fn prefetch_is_enforced_by_basic_qos() {
    let b = broker().await;
    let q = unique("t-qos");
    let mut c = b.consume(std::slice::from_ref(&q), 2).await.unwrap();
    for i in 0..5 {
        b.publish(&sample(&format!("m{i}"), None), "", &q)
            .await
            .unwrap();
    }
    let d0 = recv(&mut c).await;
    let d1 = recv(&mut c).await;
    assert_eq!((id_of(&d0), id_of(&d1)), ("m0".into(), "m1".into()));
    assert_nothing(&mut c, Duration::from_millis(500)).await;
    wait_queue_len(&b, &q, 3).await;
    d0.ack().await.unwrap();
    let d2 = recv(&mut c).await;
    assert_eq!(id_of(&d2), "m2");
    assert_nothing(&mut c, Duration::from_millis(300)).await;
    for d in [d1, d2] {
        d.ack().await.unwrap();
    }
    c.close().await.unwrap();
    wait_queue_len(&b, &q, 2).await;
}

#[tokio::test]
async fn requeue_and_restore_redeliver_with_the_flag_set() {
    let b = broker().await;
    let q = unique("t-requeue");
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    b.publish(&sample("a", None), "", &q).await.unwrap();
    let a = recv(&mut c).await;
    assert!(!a.message.delivery_info.redelivered);
    a.requeue().await.unwrap();
    let again = recv(&mut c).await;
    assert_eq!(id_of(&again), "a");
    assert!(again.message.delivery_info.redelivered);
    again.restore().await.unwrap();
    let third = recv(&mut c).await;
    assert_eq!(id_of(&third), "a");
    assert!(third.message.delivery_info.redelivered);
    third.ack().await.unwrap();
    c.close().await.unwrap();
    wait_queue_len(&b, &q, 0).await;
}

#[tokio::test]
async fn close_hands_back_what_was_not_given_out() {
    let b = broker().await;
    let q = unique("t-close");
    let mut c = b.consume(std::slice::from_ref(&q), 3).await.unwrap();
    for i in 0..3 {
        b.publish(&sample(&format!("m{i}"), None), "", &q)
            .await
            .unwrap();
    }
    let d = recv(&mut c).await;
    assert_eq!(id_of(&d), "m0");
    // Let RabbitMQ push the other two into the consumer's buffer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.close().await.unwrap();
    wait_queue_len(&b, &q, 2).await;
    // The delivery given out stays valid after close.
    d.ack().await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), 3).await.unwrap();
    let mut ids = vec![id_of(&recv(&mut c).await), id_of(&recv(&mut c).await)];
    ids.sort();
    assert_eq!(ids, ["m1", "m2"]);
    c.close().await.unwrap();
}

#[tokio::test]
async fn dead_letters_are_kept_with_their_reason_and_the_original_is_settled() {
    let b = broker().await;
    let q = unique("t-dead");
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    let id = unique("bad");
    let mut bad = sample(&id, None);
    bad.body = b"\x00\xff not json".to_vec();
    // A transient message with a TTL: the kept copy must outlive both.
    bad.properties.insert("delivery_mode".into(), json!(1));
    bad.properties.insert("expiration".into(), json!("60000"));
    b.publish(&bad, "", &q).await.unwrap();
    let d = recv(&mut c).await;
    d.dead_letter("cannot decode: test").await.unwrap();
    c.close().await.unwrap();
    wait_queue_len(&b, &q, 0).await;

    // The dead-letter queue is shared: find ours by id and hand the others back.
    let mut dl = b
        .consume(&["celeriac.dead_letter".to_string()], 50)
        .await
        .unwrap();
    let kept = loop {
        let d = recv(&mut dl).await;
        if id_of(&d) == id {
            break d;
        }
        d.requeue().await.unwrap();
    };
    assert_eq!(
        kept.message.body, bad.body,
        "the body is kept byte for byte"
    );
    let h = &kept.message.headers;
    assert_eq!(h["x-celeriac-reason"], json!("cannot decode: test"));
    assert_eq!(h["x-celeriac-queue"], json!(q));
    assert_eq!(h["x-original-exchange"], json!(""));
    assert_eq!(h["x-original-routing-key"], json!(q));
    assert_eq!(
        h["task"],
        json!("tasks.add"),
        "the original headers are kept"
    );
    assert_eq!(kept.message.properties["correlation_id"], json!(id));
    assert_eq!(kept.message.properties["delivery_mode"], json!(2));
    assert!(kept.message.properties.get("expiration").is_none());
    assert_eq!(h["x-original-expiration"], json!("60000"));
    kept.ack().await.unwrap();
    dl.close().await.unwrap();
}

#[tokio::test]
async fn max_priority_queues_serve_higher_priorities_first() {
    let b = broker_with(BrokerOptions {
        max_priority: Some(9),
        ..BrokerOptions::default()
    })
    .await;
    let q = unique("t-prio");
    // Declare with x-max-priority, then stop consuming while messages are published.
    b.consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    for (id, p) in [("p1", 1), ("p9", 9), ("p5", 5), ("p0", 0)] {
        b.publish(&sample(id, Some(p)), "", &q).await.unwrap();
    }
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let d = recv(&mut c).await;
        order.push(id_of(&d));
        d.ack().await.unwrap();
    }
    // RabbitMQ's priorities: a higher number first (the opposite of kombu's Redis steps).
    assert_eq!(order, ["p9", "p5", "p1", "p0"]);
    c.close().await.unwrap();

    // The same queue declared without the argument is refused, with a clear error.
    let plain = broker().await;
    let err = plain
        .consume(std::slice::from_ref(&q), 1)
        .await
        .err()
        .expect("mismatched declare must fail");
    assert!(matches!(err, BrokerError::Declare { .. }), "{err}");
    assert!(
        !err.is_connection_error(),
        "a refusal is not a connection error: {err}"
    );
    assert!(err.to_string().contains(&q), "{err}");
}

#[tokio::test]
async fn quorum_queues_are_declared_when_asked() {
    let b = broker_with(BrokerOptions {
        queue_type: QueueType::Quorum,
        ..BrokerOptions::default()
    })
    .await;
    let q = unique("t-quorum");
    let mut c = b.consume(std::slice::from_ref(&q), 2).await.unwrap();
    b.publish(&sample("qq", None), "", &q).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(id_of(&d), "qq");
    d.ack().await.unwrap();
    c.close().await.unwrap();
    // It really is a quorum queue: declaring it as a classic one is refused.
    let err = broker()
        .await
        .consume(std::slice::from_ref(&q), 1)
        .await
        .err()
        .expect("classic redeclare must fail");
    assert!(matches!(err, BrokerError::Declare { .. }), "{err}");
}

#[tokio::test]
async fn bad_credentials_fail_at_connect_without_showing_the_password() {
    let url = amqp_url();
    let Ok(BrokerUrl::Amqp(mut u)) = BrokerUrl::parse(&url) else {
        panic!("CELERIAC_TEST_AMQP_URL is not an amqp:// URL: {url}")
    };
    u.password = "not-the-password".into();
    let err = AmqpBroker::connect(u, BrokerOptions::default())
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, BrokerError::AmqpConnect { .. }), "{err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
}

/// What Celery 5.7's RPC backend put on the wire (captured from a real Python worker with
/// `backend='rpc://'`, read back with py-amqp): exchange "", routing key = reply_to, and
/// these properties.
#[tokio::test]
async fn rpc_results_reach_the_reply_queue_as_celery_sends_them() {
    let b = broker().await;
    let reply_queue = unique("t-reply");
    // The caller's reply queue (Celery's client declares it; the worker never does).
    b.consume(std::slice::from_ref(&reply_queue), 1)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let backend = AnyBackend::connect_with_broker(Some("rpc://"), BackendOptions::default(), &b)
        .await
        .unwrap();
    assert_eq!(backend.describe(), "rpc://");
    let to = ReplyTo {
        queue: reply_queue.clone(),
        correlation_id: "tid-1".into(),
    };
    let failure = ResultMeta::failure("tid-1", ExceptionInfo::builtin("ValueError", "boom"), None);
    backend.store_for(&failure, Some(&to)).await.unwrap();
    // Without a reply_to there is nowhere to send it: nothing is sent, as in Celery.
    backend
        .store_for(&ResultMeta::success("tid-2", json!(1)), None)
        .await
        .unwrap();
    assert!(
        backend
            .store(&ResultMeta::success("tid-3", json!(1)))
            .await
            .is_err()
    );

    let mut c = b
        .consume(std::slice::from_ref(&reply_queue), 1)
        .await
        .unwrap();
    let d = recv(&mut c).await;
    assert_eq!(d.message.content_type, "application/json");
    assert_eq!(d.message.content_encoding, "utf-8");
    assert_eq!(*d.message.headers, Map::new());
    assert_eq!(d.message.properties["correlation_id"], json!("tid-1"));
    assert_eq!(d.message.properties["delivery_mode"], json!(1));
    assert_eq!(d.message.properties["priority"], json!(0));
    assert_eq!(d.message.delivery_info.exchange, "");
    assert_eq!(d.message.delivery_info.routing_key, reply_queue);
    assert_eq!(d.message.body, failure.to_json().into_bytes());
    let body: Value = serde_json::from_slice(&d.message.body).unwrap();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "status",
            "result",
            "traceback",
            "children",
            "date_done",
            "task_id"
        ]
    );
    assert_eq!(body["result"]["exc_type"], json!("ValueError"));
    d.ack().await.unwrap();
    assert_nothing(&mut c, Duration::from_millis(300)).await;
    c.close().await.unwrap();
}

fn amqps_url() -> String {
    std::env::var("CELERIAC_TEST_AMQPS_URL")
        .unwrap_or_else(|_| "amqps://guest:guest@localhost:5671/celeriac-test".into())
}

/// The throw-away CA `scripts/test.sh` makes for RabbitMQ's TLS listener.
fn test_ca() -> std::path::PathBuf {
    std::env::var_os("CELERIAC_TEST_AMQP_CA")
        .map_or_else(|| "/etc/rabbitmq/celeriac-tls/ca.pem".into(), Into::into)
}

#[tokio::test]
async fn amqps_with_the_test_ca_carries_messages() {
    let ca = test_ca();
    assert!(
        ca.exists(),
        "{ca:?} is missing: scripts/test.sh makes it and RabbitMQ's TLS listener"
    );
    let b = AnyBroker::connect(
        &amqps_url(),
        BrokerOptions {
            tls_ca_file: Some(ca),
            ..BrokerOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "amqps:// to {} failed (scripts/test.sh sets up the TLS listener): {e}",
            amqps_url()
        )
    });
    assert!(
        b.describe().starts_with("amqps://guest:**@localhost:5671/"),
        "{}",
        b.describe()
    );
    let q = unique("t-tls");
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    b.publish(&sample("over-tls", None), "", &q).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(id_of(&d), "over-tls");
    d.ack().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn amqps_refuses_a_server_it_cannot_verify() {
    // Without the test CA the server's certificate is not trusted: connecting must fail.
    let err = AnyBroker::connect(&amqps_url(), BrokerOptions::default())
        .await
        .err()
        .expect("an untrusted certificate must be refused");
    assert!(matches!(err, BrokerError::AmqpConnect { .. }), "{err}");
    let err = AnyBroker::connect(
        &amqps_url(),
        BrokerOptions {
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..BrokerOptions::default()
        },
    )
    .await
    .err()
    .expect("a missing CA file is an error");
    assert!(matches!(err, BrokerError::TlsCaFile { .. }), "{err}");
}

#[tokio::test]
async fn queues_bound_to_a_topic_exchange_of_their_own() {
    let q = unique("t-images");
    let exchange = unique("t-media");
    let b = broker_with(BrokerOptions {
        bindings: vec![celeriac::broker::QueueBinding {
            queue: q.clone(),
            exchange: exchange.clone(),
            exchange_type: celeriac::broker::ExchangeType::Topic,
            routing_key: "media.#".into(),
        }],
        ..BrokerOptions::default()
    })
    .await;
    let mut c = b.consume(std::slice::from_ref(&q), 2).await.unwrap();
    b.publish(&sample("topic", None), &exchange, "media.images.png")
        .await
        .unwrap();
    let d = recv(&mut c).await;
    assert_eq!(id_of(&d), "topic");
    assert_eq!(d.message.delivery_info.exchange, exchange);
    assert_eq!(d.message.delivery_info.routing_key, "media.images.png");
    d.ack().await.unwrap();
    // A key outside the pattern reaches no queue.
    assert!(matches!(
        b.publish(&sample("x", None), &exchange, "other.key").await,
        Err(BrokerError::Unroutable { .. })
    ));
    c.close().await.unwrap();
}
