//! The in-process broker: the conformance suite plus memory-specific behaviour.

mod conformance;

use celeriac::broker::{AnyBroker, BrokerOptions, MemoryBroker};
use conformance::{Harness, Kind, recv, sample};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh, uniquely named memory broker per test.
async fn setup() -> Harness {
    let name = format!(
        "conformance-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    Harness {
        kind: Kind::Memory(MemoryBroker::named(&name)),
        _guard: None,
    }
}

conformance_suite!(setup);

#[tokio::test]
async fn brokers_with_the_same_url_share_queues() {
    let client = AnyBroker::connect("memory://shared-url-test", BrokerOptions::default())
        .await
        .unwrap();
    let worker = AnyBroker::connect("memory://shared-url-test", BrokerOptions::default())
        .await
        .unwrap();
    let other = AnyBroker::connect("memory://another-name", BrokerOptions::default())
        .await
        .unwrap();
    assert_eq!(worker.describe(), "memory://shared-url-test");
    client
        .publish(&sample("shared", None), "", "celery")
        .await
        .unwrap();
    let mut c = worker.consume(&["celery".to_string()], 1).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(conformance::id_of(&d), "shared");
    d.ack().await.unwrap();
    let AnyBroker::Memory(o) = other else {
        panic!("memory broker expected")
    };
    assert_eq!(o.queue_len("celery"), 0);
}

#[tokio::test]
async fn dead_letters_keep_the_raw_message() {
    let b = MemoryBroker::named("dead-letter-raw");
    let msg = sample("dl", Some(3));
    b.publish(&msg, "", "celery").unwrap();
    let mut c = AnyBroker::Memory(b.clone())
        .consume(&["celery".to_string()], 1)
        .await
        .unwrap();
    recv(&mut c).await.dead_letter("why").await.unwrap();
    let dead = b.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "why");
    assert_eq!(dead[0].1.body, msg.body);
    assert_eq!(dead[0].1.delivery_info.priority, Some(3));
}

#[tokio::test]
async fn dropping_an_unsettled_delivery_restores_it() {
    let b = MemoryBroker::named("drop-restores");
    b.publish(&sample("d", None), "", "celery").unwrap();
    let mut c = AnyBroker::Memory(b.clone())
        .consume(&["celery".to_string()], 1)
        .await
        .unwrap();
    let d = recv(&mut c).await;
    let tag = d.delivery_tag().to_string();
    drop(d);
    assert_eq!(b.queue_len("celery"), 1);
    assert_eq!(b.unacked_len(), 0);
    let again = recv(&mut c).await;
    assert_eq!(again.delivery_tag(), tag);
    assert!(again.message.delivery_info.redelivered);
    again.ack().await.unwrap();
}

#[tokio::test]
async fn urls_that_are_not_brokers_are_typed_errors() {
    use celeriac::broker::{BrokerError, UrlError};
    let err = AnyBroker::connect("amqp://h:0//", BrokerOptions::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, BrokerError::Url(UrlError::InvalidPort(_))),
        "{err}"
    );
    let err = AnyBroker::connect("nope", BrokerOptions::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, BrokerError::Url(UrlError::MissingScheme(_))),
        "{err}"
    );
    assert!(!err.is_connection_error());
}
