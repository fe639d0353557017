//! kombu's Redis transport against the real Redis at 127.0.0.1:6379 (database 5, flushed at
//! the start of every test; tests take turns through a lock). Python interop runs kombu 5.7
//! from the project's .venv. Fails loudly when Redis is unreachable.

mod conformance;

use base64::Engine as _;
use celeriac::broker::redis::decode_envelope;
use celeriac::broker::url::BrokerUrl;
use celeriac::broker::{AnyBroker, BrokerOptions, Consumer, RedisBroker};
use celeriac::protocol::kombu::to_python_json;
use conformance::{Harness, Kind, recv, sample};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const URL: &str = "redis://127.0.0.1:6379/5";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/redis");
/// The project's Python (kombu 5.7), made by `scripts/test.sh`; `CELERIAC_PYTHON` overrides it.
fn python_bin() -> String {
    std::env::var("CELERIAC_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn raw_conn() -> MultiplexedConnection {
    let client = redis::Client::open(URL).expect("redis URL");
    client.get_multiplexed_async_connection().await.unwrap_or_else(|e| {
        panic!("these tests need Redis at 127.0.0.1:6379 (start it: redis-server --daemonize yes --port 6379): {e}")
    })
}

async fn broker(opts: BrokerOptions) -> RedisBroker {
    let Ok(BrokerUrl::Redis(url)) = BrokerUrl::parse(URL) else {
        panic!("bad test URL")
    };
    RedisBroker::connect(url, opts)
        .await
        .unwrap_or_else(|e| panic!("Redis is required for these tests: {e}"))
}

fn short_visibility() -> BrokerOptions {
    BrokerOptions {
        visibility_timeout: Duration::from_secs(1),
        restore_interval: Duration::from_millis(300),
        ..BrokerOptions::default()
    }
}

async fn setup_with(opts: BrokerOptions) -> Harness {
    let guard = LOCK.lock().await;
    let mut conn = raw_conn().await;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut conn)
        .await
        .expect("FLUSHDB");
    Harness {
        kind: Kind::Redis {
            broker: broker(opts).await,
            conn,
        },
        _guard: Some(guard),
    }
}

async fn setup() -> Harness {
    setup_with(BrokerOptions::default()).await
}

conformance_suite!(setup);

fn conn_of(h: &Harness) -> MultiplexedConnection {
    match &h.kind {
        Kind::Redis { conn, .. } => conn.clone(),
        Kind::Memory(_) => unreachable!(),
    }
}

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn lrange(conn: &mut MultiplexedConnection, key: &str) -> Vec<Vec<u8>> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn tag_of(envelope: &[u8]) -> String {
    let v: Value = serde_json::from_slice(envelope).unwrap();
    v["properties"]["delivery_tag"]
        .as_str()
        .unwrap()
        .to_string()
}

fn python(script: &str, args: &[&str]) -> String {
    let python = python_bin();
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (the kombu venv is required): {e}"));
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn publish_writes_kombus_envelope_bytes() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let b = h.any();
    for (file, key) in [
        ("v2_basic.json", "celery"),
        ("v2_countdown_expires_priority.json", "celery\x06\x163"),
    ] {
        let expected = vector(&format!("broker/{file}"));
        let msg = decode_envelope(&expected).unwrap();
        b.publish(&msg, "", "celery").await.unwrap();
        let items = lrange(&mut conn, key).await;
        assert_eq!(items.len(), 1, "{file} goes to {key:?}");
        let ours = &items[0];
        let fresh = tag_of(ours);
        assert_ne!(
            fresh,
            tag_of(&expected),
            "a fresh uuid4 delivery tag per publish"
        );
        assert!(uuid::Uuid::parse_str(&fresh).is_ok_and(|u| u.get_version_num() == 4));
        let expected = String::from_utf8(expected.clone())
            .unwrap()
            .replace(&tag_of(&expected), &fresh);
        assert_eq!(String::from_utf8_lossy(ours), expected, "{file}");
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn python_client_messages_are_consumed_with_all_fields() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let list_keys: Value = serde_json::from_slice(&vector("broker/list_keys.json")).unwrap();
    let files = [
        "v2_basic",
        "v2_msgpack",
        "v2_priority_9",
        "v2_countdown_expires_priority",
        "v1_send_task",
        "v2_gzip",
    ];
    for file in files {
        let raw = vector(&format!("broker/{file}.json"));
        // list_keys.json names the key of every captured v2 message; v1 went to `celery` too.
        let key = list_keys[file]
            .as_str()
            .unwrap_or("celery")
            .replace("\\x06\\x16", "\x06\x16");
        let _: () = redis::cmd("LPUSH")
            .arg(&key)
            .arg(&raw)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut c = h.any().consume(&["celery".to_string()], 10).await.unwrap();
    let mut got = Vec::new();
    for _ in files {
        let d = recv(&mut c).await;
        got.push(d);
    }
    // Priority order: the step-0 key first (FIFO), then steps 3 and 9.
    let ids: Vec<&str> = got
        .iter()
        .map(|d| d.message.properties["correlation_id"].as_str().unwrap())
        .collect();
    let order = [
        "v2_basic",
        "v2_msgpack",
        "v1_send_task",
        "v2_gzip",
        "v2_countdown_expires_priority",
        "v2_priority_9",
    ];
    for (d, file) in got.iter().zip(order) {
        let env: Value = serde_json::from_slice(&vector(&format!("broker/{file}.json"))).unwrap();
        let body = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(d.message.body, body, "{file}");
        assert_eq!(
            Value::Object(d.message.headers.as_map().clone()),
            env["headers"],
            "{file}"
        );
        assert_eq!(
            d.message.content_type,
            env["content-type"].as_str().unwrap()
        );
        assert_eq!(
            d.message.content_encoding,
            env["content-encoding"].as_str().unwrap()
        );
        assert_eq!(
            d.delivery_tag(),
            env["properties"]["delivery_tag"].as_str().unwrap()
        );
        let mut props = env["properties"].as_object().unwrap().clone();
        for k in ["delivery_info", "body_encoding", "delivery_tag"] {
            props.remove(k);
        }
        assert_eq!(d.message.properties, props, "{file}");
        assert_eq!(d.message.delivery_info.exchange, "");
        assert_eq!(d.message.delivery_info.routing_key, "celery");
        assert_eq!(
            d.message.delivery_info.priority,
            props["priority"].as_u64().map(|p| p as u8)
        );
        assert!(!d.message.delivery_info.redelivered);
    }
    assert_eq!(ids.len(), 6);
    for d in got {
        d.ack().await.unwrap();
    }
    c.close().await.unwrap();
}

#[tokio::test]
async fn held_messages_are_in_kombus_unacked_tables() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    // The captured HGET value is [envelope, "", "celery"]; push that exact envelope.
    let expected = vector("ack-emulation/unacked_hash_value.json");
    let value: Value = serde_json::from_slice(&expected).unwrap();
    let envelope = to_python_json(&value[0]);
    assert_eq!(
        format!("[{envelope}, \"\", \"celery\"]").as_bytes(),
        expected.as_slice()
    );
    let _: () = redis::cmd("LPUSH")
        .arg("celery")
        .arg(&envelope)
        .query_async(&mut conn)
        .await
        .unwrap();

    let before = now();
    let mut c = h.any().consume(&["celery".to_string()], 1).await.unwrap();
    let d = recv(&mut c).await;
    let after = now();
    let tag = "7d5ffe1c-94cd-40ea-a970-00a88045a7b0";
    assert_eq!(d.delivery_tag(), tag);
    let held: Vec<u8> = redis::cmd("HGET")
        .arg("unacked")
        .arg(tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&held),
        String::from_utf8_lossy(&expected),
        "byte-identical to kombu's"
    );
    let score: f64 = redis::cmd("ZSCORE")
        .arg("unacked_index")
        .arg(tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        score >= before - 0.01 && score <= after + 0.01,
        "{before} <= {score} <= {after}"
    );

    d.ack().await.unwrap();
    let exists: (i64, i64) = redis::pipe()
        .hexists("unacked", tag)
        .zscore("unacked_index", tag)
        .query_async(&mut conn)
        .await
        .map(|(e, s): (i64, Option<f64>)| (e, s.map_or(0, |_| 1)))
        .unwrap();
    assert_eq!(exists, (0, 0), "ack removes both entries");
    c.close().await.unwrap();
}

#[tokio::test]
async fn visibility_restore_is_byte_identical_to_kombus() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let value: Value =
        serde_json::from_slice(&vector("ack-emulation/unacked_hash_value.json")).unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg("celery")
        .arg(to_python_json(&value[0]))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut c = h.any().consume(&["celery".to_string()], 1).await.unwrap();
    let held = recv(&mut c).await;

    // Another process with a 1 s visibility timeout restores it once it is old enough.
    let other = broker(short_visibility()).await;
    assert_eq!(other.restore_visible().await.unwrap(), 0, "not visible yet");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(other.restore_visible().await.unwrap(), 1);
    let items = lrange(&mut conn, "celery").await;
    assert_eq!(items.len(), 1);
    let expected = vector("ack-emulation/restored_after_visibility_timeout.json");
    assert_eq!(
        String::from_utf8_lossy(&items[0]),
        String::from_utf8_lossy(&expected)
    );
    let hlen: usize = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(hlen, 0);
    let mutex: Option<String> = redis::cmd("GET")
        .arg("unacked_mutex")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(mutex, None, "the mutex is released");
    // Acking the stale delivery afterwards is harmless.
    held.ack().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn consumer_restores_its_own_held_message_after_the_visibility_timeout() {
    let h = setup_with(short_visibility()).await;
    let b = h.any();
    b.publish(&sample("slow", None), "", "celery")
        .await
        .unwrap();
    let mut c = b.consume(&["celery".to_string()], 2).await.unwrap();
    let first = recv(&mut c).await;
    let again = recv(&mut c).await; // brought back by the background restore
    assert_eq!(again.delivery_tag(), first.delivery_tag());
    assert!(again.message.delivery_info.redelivered);
    assert_eq!(again.message.headers["redelivered"], json!(true));
    again.ack().await.unwrap();
    first.ack().await.unwrap();
    c.close().await.unwrap();
}

/// Helper process for `sigkill_at_any_point_loses_nothing`: takes messages, then waits to be killed.
#[tokio::test]
#[ignore = "run by sigkill_at_any_point_loses_nothing as a separate process"]
async fn crash_child() {
    if std::env::var("CELERIAC_CRASH_CHILD").is_err() {
        return;
    }
    let b = AnyBroker::Redis(broker(BrokerOptions::default()).await);
    let mut c = b.consume(&["crashq".to_string()], 3).await.unwrap();
    let d = recv(&mut c).await;
    // Let the fetcher prefetch the rest into its channel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // libtest has already written "test crash_child ... " on this line.
    println!("HELD {}", d.delivery_tag());
    std::future::pending::<()>().await;
}

/// Kills the child process however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sigkill_at_any_point_loses_nothing() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let b = h.any();
    for i in 0..3 {
        b.publish(&sample(&format!("k{i}"), None), "", "crashq")
            .await
            .unwrap();
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CELERIAC_CRASH_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    // A plain thread: a blocked reader must not keep the test runtime from shutting down.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let held = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("HELD ").map(|(_, tag)| tag.trim().to_string()));
        let _ = tx.send(held);
    });
    let held = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("child timed out")
        .expect("child printed no HELD line");
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();

    assert_eq!(h.queue_len("crashq").await, 0);
    let hlen: usize = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        hlen, 3,
        "the held and the prefetched messages are all in unacked"
    );

    let survivor = AnyBroker::Redis(broker(short_visibility()).await);
    let mut c = survivor.consume(&["crashq".to_string()], 3).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = recv(&mut c).await;
        assert!(d.message.delivery_info.redelivered);
        if d.delivery_tag() == held {
            assert_eq!(conformance::id_of(&d), "k0");
        }
        ids.push(conformance::id_of(&d));
        d.ack().await.unwrap();
    }
    ids.sort();
    assert_eq!(ids, ["k0", "k1", "k2"]);
    c.close().await.unwrap();
    let hlen: usize = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(hlen, 0);
}

#[tokio::test]
async fn dropped_consumer_loses_nothing() {
    let h = setup().await;
    let b = h.any();
    b.publish(&sample("dropped", None), "", "celery")
        .await
        .unwrap();
    let mut c = b.consume(&["celery".to_string()], 1).await.unwrap();
    let d = recv(&mut c).await;
    let tag = d.delivery_tag().to_string();
    drop(d);
    drop(c);
    assert_eq!(h.unacked_len().await, 1);
    let survivor = AnyBroker::Redis(broker(short_visibility()).await);
    let mut c = survivor.consume(&["celery".to_string()], 1).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(d.delivery_tag(), tag);
    d.ack().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn undecodable_envelopes_go_to_the_dead_letter_list() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let not_json = b"not json {\xff".to_vec();
    let no_tag = br#"{"body": "e30=", "properties": {"delivery_info": {"exchange": "", "routing_key": "celery"}}}"#.to_vec();
    let bad_b64 = br#"{"body": "@@@", "content-type": "application/json", "headers": {}, "properties": {"delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "bad-b64-tag"}}"#.to_vec();
    for raw in [&not_json, &no_tag, &bad_b64] {
        let _: () = redis::cmd("LPUSH")
            .arg("celery")
            .arg(raw)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    h.any()
        .publish(&sample("good", None), "", "celery")
        .await
        .unwrap();
    let mut c = h.any().consume(&["celery".to_string()], 1).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(conformance::id_of(&d), "good");
    d.ack().await.unwrap();

    let dead = lrange(&mut conn, "celeriac.dead_letter").await;
    assert_eq!(dead.len(), 3);
    let entries: Vec<Value> = dead
        .iter()
        .rev()
        .map(|e| serde_json::from_slice(e).unwrap())
        .collect();
    let reasons: Vec<&str> = entries
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons[0].starts_with("envelope is not valid JSON"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("delivery_tag"), "{reasons:?}");
    assert!(reasons[2].contains("base64"), "{reasons:?}");
    for (e, raw) in entries.iter().zip([&not_json, &no_tag, &bad_b64]) {
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["reason", "queue", "received_at", "envelope"]);
        assert_eq!(e["queue"], json!("celery"));
        assert!(e["received_at"].as_f64().unwrap() > 1.7e9);
        let text: String = raw
            .utf8_chunks()
            .flat_map(|c| {
                c.valid()
                    .chars()
                    .chain(c.invalid().iter().map(|b| char::from(*b)))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            e["envelope"].as_str().unwrap(),
            text,
            "the original text is kept"
        );
    }
    assert_eq!(
        h.unacked_len().await,
        0,
        "dead-lettered messages are settled"
    );
    assert_eq!(h.queue_len("celery").await, 0);
    c.close().await.unwrap();
}

#[tokio::test]
async fn consume_declares_bindings_like_a_celery_worker() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let c = h.any().consume(&["celery".to_string()], 1).await.unwrap();
    let expected: Value = serde_json::from_slice(&vector("broker/db0_after_publish.json")).unwrap();
    for key in ["_kombu.binding.celery", "_kombu.binding_permanent.celery"] {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let want = expected[key]["value"][0]
            .as_str()
            .unwrap()
            .replace("\\x06\\x16", "\x06\x16");
        assert_eq!(members, [want]);
    }
    assert_eq!(h.any().describe(), "redis://127.0.0.1:6379/5");
    c.close().await.unwrap();
}

const PY_GET_AND_RESTORE: &str = r#"
import base64, json, sys
from kombu import Connection
with Connection(sys.argv[1]) as conn:
    ch = conn.default_channel
    m = ch.basic_get(sys.argv[2], no_ack=False)
    print(json.dumps({
        "body": base64.b64encode(m.body).decode(),
        "headers": m.headers,
        "content_type": m.content_type,
        "content_encoding": m.content_encoding,
        "delivery_tag": m.delivery_tag,
        "delivery_info": m.delivery_info,
        "properties": {k: v for k, v in m.properties.items() if k not in ("delivery_info", "body_encoding", "delivery_tag")},
        "unacked": conn.default_channel.client.hlen("unacked"),
    }))
    ch.qos.restore_unacked()
"#;

const PY_RESTORE_VISIBLE: &str = r#"
import sys
from kombu import Connection
with Connection(sys.argv[1], transport_options={"visibility_timeout": 1}) as conn:
    conn.default_channel.qos.restore_visible(num=100)
    print("restored")
"#;

#[tokio::test]
async fn python_kombu_consumes_and_restores_what_rust_published() {
    let h = setup().await;
    let b = h.any();
    let msg = sample("py-1", Some(4));
    b.publish(&msg, "", "celery").await.unwrap();
    let out = python(PY_GET_AND_RESTORE, &[URL, "celery"]);
    let seen: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(seen["body"].as_str().unwrap())
            .unwrap(),
        msg.body
    );
    assert_eq!(seen["headers"], Value::Object(msg.headers.as_map().clone()));
    assert_eq!(seen["content_type"], json!("application/json"));
    assert_eq!(seen["content_encoding"], json!("utf-8"));
    assert_eq!(
        seen["delivery_info"],
        json!({"exchange": "", "routing_key": "celery"})
    );
    let mut props = msg.properties.clone();
    props.insert("priority".into(), json!(4));
    assert_eq!(seen["properties"], Value::Object(props));
    assert_eq!(seen["unacked"], json!(1), "kombu recorded it in unacked");

    // kombu restored it (RPUSH with redelivered flags); Rust takes it back.
    let mut c = b.consume(&["celery".to_string()], 1).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(d.delivery_tag(), seen["delivery_tag"].as_str().unwrap());
    assert!(d.message.delivery_info.redelivered);
    assert_eq!(d.message.headers["redelivered"], json!(true));
    assert_eq!(d.message.body, msg.body);
    d.ack().await.unwrap();
    c.close().await.unwrap();
    assert_eq!(h.unacked_len().await, 0);
}

#[tokio::test]
async fn python_restore_visible_restores_what_rust_holds() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let b = h.any();
    b.publish(&sample("held-by-rust", None), "", "celery")
        .await
        .unwrap();
    let mut c: Consumer = b.consume(&["celery".to_string()], 1).await.unwrap();
    let d = recv(&mut c).await;
    let tag = d.delivery_tag().to_string();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let out = python(PY_RESTORE_VISIBLE, &[URL]);
    assert_eq!(out.trim(), "restored");
    let items = lrange(&mut conn, "celery").await;
    assert_eq!(items.len(), 1, "kombu put it back");
    let env: Value = serde_json::from_slice(&items[0]).unwrap();
    assert_eq!(env["properties"]["delivery_tag"], json!(tag));
    assert_eq!(env["headers"]["redelivered"], json!(true));
    assert_eq!(
        env["properties"]["delivery_info"]["redelivered"],
        json!(true)
    );
    assert_eq!(h.unacked_len().await, 0);
    // The stale delivery can still be acked; the restored copy comes back to Rust.
    d.ack().await.unwrap();
    let again = recv(&mut c).await;
    assert_eq!(again.delivery_tag(), tag);
    assert!(again.message.delivery_info.redelivered);
    again.ack().await.unwrap();
    c.close().await.unwrap();
}

// ---- batched takes and group-committed acks ----

/// Pushes `n` copies of the captured envelope (fresh tags `tag-<i>`, tricky exchange and
/// routing keys) with kombu's own JSON, and prints, per tag, what kombu's `QoS.append` would
/// write to `unacked`: `dumps([message, exchange, routing_key])`.
const PY_PUSH_AND_EXPECT: &str = r#"
import json, sys
import redis
from kombu.utils.json import dumps, loads
r = redis.Redis.from_url(sys.argv[1])
raw = loads(open(sys.argv[2]).read())[0]
n = int(sys.argv[3])
odd = ["", "celery", "ex\x7f\"q\\\u00e9\U0001F600\n\t\x01", "caf\u00e9 \u2028 x"]
expected = {}
for i in range(n):
    m = json.loads(json.dumps(raw))
    m["properties"]["delivery_tag"] = "tag-%d" % i
    m["properties"]["delivery_info"] = {"exchange": odd[i % 4], "routing_key": odd[(i + 1) % 4]}
    env = dumps(m)
    r.lpush("celery", env)
    expected[m["properties"]["delivery_tag"]] = dumps([loads(env), odd[i % 4], odd[(i + 1) % 4]])
print(json.dumps(expected))
"#;

#[tokio::test]
async fn batch_take_writes_kombus_bookkeeping_for_every_message() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let n = 250; // more than one batch
    let out = python(
        PY_PUSH_AND_EXPECT,
        &[
            URL,
            &format!("{VECTORS}/ack-emulation/unacked_hash_value.json"),
            &n.to_string(),
        ],
    );
    let expected: Value = serde_json::from_str(out.trim()).unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(expected.len(), n);
    let before = now();
    let mut c = h.any().consume(&["celery".to_string()], n).await.unwrap();
    let mut got = Vec::new();
    for i in 0..n {
        let d = recv(&mut c).await;
        // FIFO: the first pushed comes first.
        assert_eq!(d.delivery_tag(), format!("tag-{i}"));
        got.push(d);
    }
    let after = now();
    let held: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("unacked")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held.len(), n);
    for (tag, value) in &held {
        assert_eq!(
            String::from_utf8_lossy(value),
            expected[tag].as_str().unwrap(),
            "unacked[{tag}] is byte for byte what kombu writes"
        );
    }
    let index: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg("unacked_index")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(index.len(), n);
    for (tag, score) in &index {
        assert!(expected.contains_key(tag), "{tag}");
        assert!(*score >= before - 0.01 && *score <= after + 0.01);
    }
    for d in got {
        d.ack().await.unwrap();
    }
    assert_eq!(h.unacked_len().await, 0);
    c.close().await.unwrap();
}

/// Ids in the order a consumer of `queues` with prefetch `prefetch` receives them, acking
/// each right away.
async fn receive_order(h: &Harness, queues: &[&str], prefetch: usize, n: usize) -> Vec<String> {
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    let mut c = h.any().consume(&queues, prefetch).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let d = recv(&mut c).await;
        ids.push(conformance::id_of(&d));
        d.ack().await.unwrap();
    }
    conformance::assert_nothing(&mut c, Duration::from_millis(200)).await;
    c.close().await.unwrap();
    ids
}

#[tokio::test]
async fn batches_keep_kombus_priority_and_queue_rotation_order() {
    let h = setup().await;
    let b = h.any();
    // kombu's BRPOP order: priority step first, then the queue cycle, which rotates the
    // queue just served to the end after every message.
    let messages = [
        ("a", "a0-1", None),
        ("a", "a0-2", None),
        ("a", "a9-1", Some(9)),
        ("b", "b0-1", None),
        ("b", "b3-1", Some(3)),
        ("b", "b3-2", Some(4)),
        ("c", "c6-1", Some(6)),
        ("c", "c0-1", Some(1)),
        ("c", "c0-2", None),
        ("c", "c0-3", None),
    ];
    let want = [
        "a0-1", "b0-1", "c0-1", "a0-2", "c0-2", "c0-3", "b3-1", "b3-2", "c6-1", "a9-1",
    ];
    // Prefetch 1 is one message per take (kombu's own pace); 3 and 100 split the same
    // sequence into batches, and the rotation must carry over from batch to batch.
    for prefetch in [1, 3, 100] {
        for (q, id, priority) in messages {
            b.publish(&sample(id, priority), "", q).await.unwrap();
        }
        let got = receive_order(&h, &["a", "b", "c"], prefetch, want.len()).await;
        assert_eq!(got, want, "prefetch {prefetch}");
        assert_eq!(h.unacked_len().await, 0);
    }
}

#[tokio::test]
async fn acks_are_committed_together_and_each_resolves_after_its_tag_is_gone() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let b = h.any();
    let n = 120;
    for i in 0..n {
        b.publish(&sample(&format!("m{i}"), None), "", "celery")
            .await
            .unwrap();
    }
    let mut c = b.consume(&["celery".to_string()], n).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(recv(&mut c).await);
    }
    assert_eq!(h.unacked_len().await, n);
    let tags: Vec<String> = held.iter().map(|d| d.delivery_tag().to_string()).collect();

    // Watch which HDELs reach the server.
    let client = redis::Client::open(URL).unwrap();
    let monitor = client.get_async_monitor().await.unwrap();
    let mut lines = monitor.into_on_message::<String>();

    // Every ack checks, once it has resolved, that its own tag is gone from both tables.
    let acks = held.into_iter().map(|d| {
        let mut conn = conn.clone();
        async move {
            let tag = d.delivery_tag().to_string();
            d.ack().await.unwrap();
            let (in_hash, score): (bool, Option<f64>) = redis::pipe()
                .hexists("unacked", &tag)
                .zscore("unacked_index", &tag)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(!in_hash && score.is_none(), "{tag} still held after ack()");
        }
    });
    futures_util::future::join_all(acks).await;
    assert_eq!(h.unacked_len().await, 0);

    // Every tag was removed, by fewer HDELs than acks (here, on one thread, all in one).
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let mut removed = std::collections::HashSet::new();
    let mut hdels = 0;
    while removed.len() < n {
        let line = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut lines),
        )
        .await
        .expect("MONITOR shows every HDEL")
        .expect("monitor stream");
        if !line.contains("\"HDEL\" \"unacked\"") {
            continue;
        }
        let mine: Vec<&String> = tags
            .iter()
            .filter(|t| line.contains(&format!("\"{t}\"")))
            .collect();
        if !mine.is_empty() {
            hdels += 1;
            removed.extend(mine.into_iter().cloned());
        }
    }
    assert!(hdels < n, "{hdels} HDELs for {n} acks: not coalesced");
    c.close().await.unwrap();
}

#[tokio::test]
async fn prefetch_limit_holds_with_batched_takes() {
    let h = setup().await;
    let b = h.any();
    for i in 0..40 {
        b.publish(&sample(&format!("p{i}"), None), "", "celery")
            .await
            .unwrap();
    }
    let prefetch = 7;
    let mut c = b.consume(&["celery".to_string()], prefetch).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..prefetch {
        held.push(recv(&mut c).await);
    }
    conformance::assert_nothing(&mut c, Duration::from_millis(300)).await;
    assert_eq!(
        h.unacked_len().await,
        prefetch,
        "never more than prefetch taken"
    );
    assert_eq!(h.queue_len("celery").await, 40 - prefetch);
    // Three slots free: exactly three more come.
    for d in held.drain(..3) {
        d.ack().await.unwrap();
    }
    for _ in 0..3 {
        held.push(recv(&mut c).await);
    }
    conformance::assert_nothing(&mut c, Duration::from_millis(300)).await;
    assert_eq!(h.unacked_len().await, prefetch);
    for d in held {
        d.ack().await.unwrap();
    }
    c.close().await.unwrap();
    assert_eq!(h.queue_len("celery").await, 40 - prefetch - 3);
}

#[tokio::test]
async fn dropped_consumer_with_a_taken_batch_loses_nothing() {
    let h = setup().await;
    let b = h.any();
    let n = 30;
    for i in 0..n {
        b.publish(&sample(&format!("d{i}"), None), "", "celery")
            .await
            .unwrap();
    }
    let mut c = b.consume(&["celery".to_string()], 10).await.unwrap();
    let first = recv(&mut c).await;
    // Wait until the whole window is taken (the rest of the batch is in the channel).
    for _ in 0..100 {
        if h.unacked_len().await == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.unacked_len().await, 10);
    drop(first);
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.unacked_len().await + h.queue_len("celery").await,
        n,
        "every message is either queued or in unacked"
    );
    let survivor = AnyBroker::Redis(broker(short_visibility()).await);
    let mut c = survivor.consume(&["celery".to_string()], 5).await.unwrap();
    let mut ids = std::collections::BTreeSet::new();
    while ids.len() < n {
        let d = recv(&mut c).await;
        ids.insert(conformance::id_of(&d));
        d.ack().await.unwrap();
    }
    let want: std::collections::BTreeSet<String> = (0..n).map(|i| format!("d{i}")).collect();
    assert_eq!(ids, want);
    c.close().await.unwrap();
    assert_eq!(h.unacked_len().await, 0);
}

#[tokio::test]
async fn take_records_the_envelopes_own_tag_whatever_its_layout() {
    let h = setup().await;
    let mut conn = conn_of(&h);
    let props = |tag: &str| {
        format!(
            r#"{{"delivery_info": {{"exchange": "", "routing_key": "celery"}}, "priority": 0, "body_encoding": "base64", "delivery_tag": "{tag}"}}"#
        )
    };
    let headers = r#"{"lang": "py", "task": "tasks.add", "id": "ID", "retries": 0}"#;
    let envelopes = [
        // kombu's layout, with a decoy `properties` object nested in the headers.
        format!(
            r#"{{"body": "W10=", "content-type": "application/json", "headers": {}, "properties": {}}}"#,
            headers.replace("ID", "decoy").replace(
                "\"retries\": 0",
                &format!(
                    "\"retries\": 0, \"x\": {{\"a\": 1, \"properties\": {}}}",
                    props("fake-1")
                )
            ),
            props("real-1")
        ),
        // properties first: another client's key order.
        format!(
            r#"{{"properties": {}, "body": "W10=", "content-type": "application/json", "headers": {}}}"#,
            props("real-2"),
            headers.replace("ID", "first")
        ),
        // A string that looks like the properties key, then the real one.
        format!(
            r#"{{"body": "W10=", "content-type": "application/json", "headers": {}, "properties": {}}}"#,
            headers.replace("ID", "quoted").replace(
                "\"retries\": 0",
                &format!(
                    "\"retries\": 0, \"s\": \"x, \\\"properties\\\": {}\"",
                    props("fake-3").replace('"', "\\\"")
                )
            ),
            props("real-3")
        ),
        // Not JSON before a well-formed tail: recorded, then dead-lettered by the consumer.
        format!(r#"{{"body": nope, "properties": {}}}"#, props("broken-4")),
    ];
    for e in &envelopes {
        assert!(
            !e.contains("real") || serde_json::from_str::<Value>(e).is_ok(),
            "{e}"
        );
        let _: () = redis::cmd("LPUSH")
            .arg("celery")
            .arg(e)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut c = h.any().consume(&["celery".to_string()], 10).await.unwrap();
    for (want_tag, want_id) in [
        ("real-1", "decoy"),
        ("real-2", "first"),
        ("real-3", "quoted"),
    ] {
        let d = recv(&mut c).await;
        assert_eq!(d.delivery_tag(), want_tag);
        assert_eq!(conformance::id_of(&d), want_id);
        let held: Option<Vec<u8>> = redis::cmd("HGET")
            .arg("unacked")
            .arg(want_tag)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(held.is_some(), "{want_tag} recorded under its own tag");
        d.ack().await.unwrap();
    }
    conformance::assert_nothing(&mut c, Duration::from_millis(300)).await;
    let dead = lrange(&mut conn, "celeriac.dead_letter").await;
    assert_eq!(dead.len(), 1);
    let entry: Value = serde_json::from_slice(&dead[0]).unwrap();
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .starts_with("envelope is not valid JSON"),
        "{entry}"
    );
    assert_eq!(entry["envelope"], json!(envelopes[3]));
    assert_eq!(h.unacked_len().await, 0, "nothing left behind");
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_parked_delivery_dead_lettered_later_still_carries_its_envelope() {
    // Parking drops the envelope the acker keeps for a dead-letter entry (held messages
    // are many); dead-lettering afterwards reads it back from kombu's `unacked` hash.
    let h = setup().await;
    let mut conn = conn_of(&h);
    h.any()
        .publish(&sample("parked", None), "", "celery")
        .await
        .unwrap();
    let mut c = h.any().consume(&["celery".to_string()], 1).await.unwrap();
    let d = recv(&mut c).await;
    let tag = d.delivery_tag().to_string();
    let recorded: Vec<u8> = redis::cmd("HGET")
        .arg("unacked")
        .arg(&tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    let recorded: Value = serde_json::from_slice(&recorded).unwrap();
    let (message, parked) = d.park();
    parked
        .unpark(message)
        .dead_letter("a reason given after parking")
        .await
        .unwrap();

    let dead = lrange(&mut conn, "celeriac.dead_letter").await;
    assert_eq!(dead.len(), 1);
    let entry: Value = serde_json::from_slice(&dead[0]).unwrap();
    assert_eq!(entry["reason"], "a reason given after parking");
    assert_eq!(entry["queue"], "celery");
    let envelope: Value = serde_json::from_str(entry["envelope"].as_str().unwrap()).unwrap();
    assert_eq!(
        envelope, recorded[0],
        "the envelope kombu recorded for the tag"
    );
    assert_eq!(tag_of(entry["envelope"].as_str().unwrap().as_bytes()), tag);
    let left: Option<Vec<u8>> = redis::cmd("HGET")
        .arg("unacked")
        .arg(&tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_none(), "settled: no longer in unacked");
    c.close().await.unwrap();
}
