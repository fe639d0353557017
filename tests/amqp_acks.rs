//! How the AMQP consumer settles deliveries (`src/broker/amqp/acks.rs`), against a real
//! RabbitMQ: runs of acks become `basic.ack(multiple=true)` frames, rejects keep their
//! place, a message in flight does not hold back the others, and a lost connection loses
//! nothing and never settles a tag on the wrong channel.
//!
//! The tests use vhosts of their own (`celeriac-test-acks`, and `celeriac-test-acks-cut` for
//! the test that closes connections), created with `rabbitmqctl`, which they also use to
//! read the unacknowledged counts and to close a connection: RabbitMQ must run on this
//! machine. `CELERIAC_TEST_AMQP_URL` gives the server (its vhost is replaced).

use celeriac::broker::{AmqpConsumer, AnyBroker, BrokerOptions, DEAD_LETTER_KEY, Delivery};
use celeriac::protocol::RawMessage;
use serde_json::{Map, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

const VHOST: &str = "celeriac-test-acks";
const CUT_VHOST: &str = "celeriac-test-acks-cut";

fn rabbitmqctl(args: &[&str]) -> std::process::Output {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("these tests run rabbitmqctl (RabbitMQ on this machine)")
}

/// `amqp://…/<vhost>`, the vhost created when missing.
fn url(vhost: &str) -> String {
    static CREATED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    if created.insert(vhost.to_owned()) {
        // Fails harmlessly when it exists.
        let _ = rabbitmqctl(&["-q", "add_vhost", vhost]);
        let out = rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            vhost,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        assert!(out.status.success(), "set_permissions: {out:?}");
    }
    let base = std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/celeriac-test".into());
    let (server, _) = base.rsplit_once('/').expect("amqp://host/vhost");
    format!("{server}/{vhost}")
}

async fn broker(vhost: &str) -> AnyBroker {
    AnyBroker::connect(&url(vhost), BrokerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need RabbitMQ at {}: {e}", url(vhost)))
}

async fn consume(b: &AnyBroker, queue: &str, prefetch: usize) -> AmqpConsumer {
    match b {
        AnyBroker::Amqp(a) => a.consume(&[queue.to_owned()], prefetch).await.unwrap(),
        _ => unreachable!(),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn message(id: &str) -> RawMessage {
    let mut headers = Map::new();
    headers.insert("task".into(), json!("tasks.noop"));
    headers.insert("id".into(), json!(id));
    RawMessage {
        body: b"[[], {}, {}]".to_vec(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers: headers.into(),
        ..Default::default()
    }
}

fn id_of(d: &Delivery) -> String {
    d.message.headers["id"].as_str().unwrap().to_owned()
}

/// Publish `ids` (confirmed) to `queue`, declaring it first.
async fn publish(b: &AnyBroker, queue: &str, ids: &[String]) {
    b.declare_queue(queue).await.unwrap();
    for chunk in ids.chunks(100) {
        let messages: Vec<RawMessage> = chunk.iter().map(|id| message(id)).collect();
        let sends = messages.iter().map(|m| b.publish(m, "", queue));
        for r in futures_util::future::join_all(sends).await {
            r.unwrap();
        }
    }
}

async fn recv(c: &mut AmqpConsumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), c.next())
        .await
        .expect("no delivery within 20 s")
        .expect("next() failed")
}

/// `(ready, unacknowledged)` of `queue`, as RabbitMQ counts them.
fn counts(vhost: &str, queue: &str) -> (u64, u64) {
    let out = rabbitmqctl(&[
        "-q",
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "--no-table-headers",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 3 && f[0] == queue {
            return (f[1].parse().unwrap(), f[2].parse().unwrap());
        }
    }
    panic!("queue {queue} not listed: {text}");
}

/// Poll until `queue` holds `want` = (ready, unacknowledged): the counts settle
/// asynchronously after a frame.
async fn wait_counts(vhost: &str, queue: &str, want: (u64, u64)) {
    let mut last = (u64::MAX, u64::MAX);
    for _ in 0..100 {
        last = counts(vhost, queue);
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("queue {queue}: (ready, unacked) = {last:?}, expected {want:?}");
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

#[tokio::test]
async fn a_thousand_acks_take_far_fewer_frames() {
    let b = broker(VHOST).await;
    let q = unique("acks-many");
    let all = ids("m", 1000);
    publish(&b, &q, &all).await;
    let mut c = consume(&b, &q, 200).await;
    // Settle concurrently, as a worker does: each ack is awaited by its own task.
    let mut acks = tokio::task::JoinSet::new();
    let mut seen = BTreeSet::new();
    for _ in 0..all.len() {
        let d = recv(&mut c).await;
        assert!(seen.insert(id_of(&d)), "delivered twice: {}", id_of(&d));
        acks.spawn(d.ack());
    }
    while let Some(r) = acks.join_next().await {
        r.unwrap().unwrap();
    }
    let stats = c.ack_stats();
    eprintln!("1,000 acks: {stats:?}");
    assert_eq!(stats.settled, 1000);
    assert_eq!(stats.reject_frames + stats.nack_frames, 0);
    assert!(
        stats.ack_frames * 4 < 1000,
        "1,000 acks took {} frames ({} multiple)",
        stats.ack_frames,
        stats.multiple_ack_frames
    );
    wait_counts(VHOST, &q, (0, 0)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.next())
            .await
            .is_err(),
        "nothing comes back"
    );
    c.close().await.unwrap();
    wait_counts(VHOST, &q, (0, 0)).await;
}

#[tokio::test]
async fn a_requeued_message_amid_acks_comes_back_alone() {
    let b = broker(VHOST).await;
    let q = unique("acks-requeue");
    let all = ids("m", 50);
    publish(&b, &q, &all).await;
    let mut c = consume(&b, &q, 100).await;
    let mut settling = tokio::task::JoinSet::new();
    for _ in 0..all.len() {
        let d = recv(&mut c).await;
        if id_of(&d) == "m-0025" {
            settling.spawn(d.requeue());
        } else {
            settling.spawn(d.ack());
        }
    }
    while let Some(r) = settling.join_next().await {
        r.unwrap().unwrap();
    }
    let again = recv(&mut c).await;
    assert_eq!(id_of(&again), "m-0025");
    assert!(again.message.delivery_info.redelivered);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.next())
            .await
            .is_err(),
        "only the requeued one comes back"
    );
    wait_counts(VHOST, &q, (0, 1)).await;
    let stats = c.ack_stats();
    assert_eq!(stats.reject_frames + stats.nack_frames, 1);
    again.ack().await.unwrap();
    wait_counts(VHOST, &q, (0, 0)).await;
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_dead_lettered_message_amid_acks_is_kept_not_acked_away() {
    let b = broker(VHOST).await;
    let q = unique("acks-dead");
    let all = ids(&q, 30);
    let bad = all[12].clone();
    publish(&b, &q, &all).await;
    let mut c = consume(&b, &q, 100).await;
    let mut settling = tokio::task::JoinSet::new();
    for _ in 0..all.len() {
        let d = recv(&mut c).await;
        if id_of(&d) == bad {
            settling.spawn(d.dead_letter("undecodable"));
        } else {
            settling.spawn(d.ack());
        }
    }
    while let Some(r) = settling.join_next().await {
        r.unwrap().unwrap();
    }
    wait_counts(VHOST, &q, (0, 0)).await;
    c.close().await.unwrap();
    // The copy is in the dead-letter queue (shared by this vhost's tests: look for ours).
    let mut dead = consume(&b, DEAD_LETTER_KEY, 50).await;
    let mut found = 0;
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(2), dead.next()).await {
        if id_of(&d) == bad {
            found += 1;
            assert_eq!(d.message.headers["x-celeriac-reason"], json!("undecodable"));
            assert_eq!(d.message.headers["x-celeriac-queue"], json!(q));
            d.ack().await.unwrap();
        } else {
            d.restore().await.unwrap();
        }
        if found == 1 {
            break;
        }
    }
    assert_eq!(found, 1, "the dead-lettered copy is kept");
    dead.close().await.unwrap();
}

#[tokio::test]
async fn a_message_in_flight_does_not_hold_back_later_acks() {
    let b = broker(VHOST).await;
    let q = unique("acks-slow");
    let all = ids("m", 40);
    publish(&b, &q, &all).await;
    let mut c = consume(&b, &q, 100).await;
    let slow = recv(&mut c).await;
    assert_eq!(id_of(&slow), "m-0000");
    // The lowest tag stays in flight while every later one is acked: each ack resolves
    // (its frame was written) with the slow one still unsettled.
    for _ in 1..all.len() {
        let d = recv(&mut c).await;
        d.ack().await.unwrap();
    }
    wait_counts(VHOST, &q, (0, 1)).await;
    let stats = c.ack_stats();
    assert_eq!(stats.settled, 39);
    assert_eq!(
        stats.multiple_ack_frames, 0,
        "a multiple ack would have covered the slow one"
    );
    slow.ack().await.unwrap();
    wait_counts(VHOST, &q, (0, 0)).await;
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_parked_message_does_not_hold_back_later_acks() {
    let b = broker(VHOST).await;
    let q = unique("acks-parked");
    let all = ids("m", 20);
    publish(&b, &q, &all).await;
    let mut c = consume(&b, &q, 100).await;
    let mut parked = recv(&mut c).await;
    parked.release_prefetch(); // held for its eta
    let mut settling = tokio::task::JoinSet::new();
    for _ in 1..all.len() {
        settling.spawn(recv(&mut c).await.ack());
    }
    while let Some(r) = settling.join_next().await {
        r.unwrap().unwrap();
    }
    wait_counts(VHOST, &q, (0, 1)).await;
    parked.restore().await.unwrap();
    let again = recv(&mut c).await;
    assert_eq!(id_of(&again), "m-0000");
    again.ack().await.unwrap();
    wait_counts(VHOST, &q, (0, 0)).await;
    c.close().await.unwrap();
}

/// The pid of this vhost's consuming connection, as `rabbitmqctl close_connection` wants it.
fn consumer_connection(vhost: &str) -> Option<String> {
    let out = rabbitmqctl(&[
        "-q",
        "list_connections",
        "pid",
        "vhost",
        "client_properties",
        "--no-table-headers",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("celeriac consumer"))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f.len() >= 2 && f[1] == vhost)
        .map(|f| f[0].to_owned())
}

#[tokio::test]
async fn a_cut_connection_loses_nothing_and_never_acks_on_the_new_channel() {
    let b = broker(CUT_VHOST).await;
    let q = unique("acks-cut");
    let all = ids("m", 600);
    publish(&b, &q, &all).await;
    let mut c = consume(&b, &q, 50).await;
    let mut acked: BTreeMap<String, u32> = BTreeMap::new();
    // A first part acked as it comes.
    for _ in 0..200 {
        let d = recv(&mut c).await;
        let id = id_of(&d);
        d.ack().await.unwrap();
        *acked.entry(id).or_default() += 1;
    }
    // Hold some in flight, cut the connection under them.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(recv(&mut c).await);
    }
    let pid = consumer_connection(CUT_VHOST).expect("the consumer's connection is listed");
    let out = rabbitmqctl(&["-q", "close_connection", &pid, "test: cut"]);
    assert!(out.status.success(), "close_connection: {out:?}");
    // Take what was buffered up to the loss, which is reported once.
    loop {
        match tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .expect("the loss is reported")
        {
            Ok(d) => held.push(d),
            Err(e) => {
                assert!(e.is_connection_error(), "{e}");
                break;
            }
        }
    }
    // Their channel is gone: settling them fails, and must not reach the new channel.
    for d in held {
        assert!(
            d.ack().await.is_err(),
            "an ack of a dead channel's tag succeeded"
        );
    }
    // The rest, including everything requeued by the cut, arrives on the new channel.
    let mut settling = tokio::task::JoinSet::new();
    while acked.len() < all.len() {
        let d = recv(&mut c).await;
        let id = id_of(&d);
        *acked.entry(id.clone()).or_default() += 1;
        settling.spawn(async move { d.ack().await.map(|()| id) });
        // Keep the ack futures from piling up.
        while settling.len() > 100 {
            settling.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = settling.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(
        acked.keys().cloned().collect::<Vec<_>>(),
        all,
        "every message acked"
    );
    wait_counts(CUT_VHOST, &q, (0, 0)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.next())
            .await
            .is_err(),
        "nothing left to deliver"
    );
    c.close().await.unwrap();
}
