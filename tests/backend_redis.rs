//! The Redis result backend against a real Redis (127.0.0.1:6379, databases 6-9) and real
//! Python Celery 5.7 (the project's `.venv`). Each test owns one database and flushes it first;
//! task ids are unique per test because pub/sub channels are shared by all databases.
//!
//! Redis or Python missing is a failure, never a skip.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use celeriac::backend::{AnyBackend, BackendError, BackendOptions};
use celeriac::protocol::result_meta::Extended;
use celeriac::protocol::{ExceptionInfo, ResultMeta, Serializer, TaskState};
use futures_util::StreamExt;
use serde_json::{Value, json};

const REDIS: &str = "redis://127.0.0.1:6379";
/// The project's Python (Celery 5.7), made by `scripts/test.sh`; `CELERIAC_PYTHON` overrides it.
fn python_bin() -> String {
    std::env::var("CELERIAC_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/backend");

/// A raw connection to `db`, flushed. Panics with instructions when Redis is not running.
async fn raw(db: u8) -> redis::aio::MultiplexedConnection {
    assert!(
        (6..=9).contains(&db),
        "these tests may only use databases 6-9"
    );
    let client = redis::Client::open(format!("{REDIS}/{db}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| {
        panic!("Redis must run at 127.0.0.1:6379 for these tests (start it: redis-server --daemonize yes --port 6379): {e}")
    });
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    conn
}

async fn backend(db: u8, opts: BackendOptions) -> AnyBackend {
    AnyBackend::connect(Some(&format!("{REDIS}/{db}")), opts)
        .await
        .expect("connect to the Redis result backend")
}

async fn raw_get(conn: &mut redis::aio::MultiplexedConnection, task_id: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(format!("celery-task-meta-{task_id}"))
        .query_async(conn)
        .await
        .unwrap()
}

async fn ttl(conn: &mut redis::aio::MultiplexedConnection, task_id: &str) -> i64 {
    redis::cmd("TTL")
        .arg(format!("celery-task-meta-{task_id}"))
        .query_async(conn)
        .await
        .unwrap()
}

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("vector {path}: {e}"))
}

/// A meta with the `date_done` of a captured value, so the bytes can be compared.
fn dated(meta: ResultMeta, captured: &[u8]) -> ResultMeta {
    let date = ResultMeta::from_slice(captured).unwrap().date_done;
    meta.with_date_done(date)
}

const FAIL_TB: &str = "Traceback (most recent call last):\n  File \"site-packages/celery/app/trace.py\", line 564, in trace_task\n    R = retval = fun(*args, **kwargs)\n                 ^^^^^^^^^^^^^^^^^^^^\n  File \"site-packages/celery/app/trace.py\", line 883, in __protected_call__\n    return self.run(*args, **kwargs)\n           ^^^^^^^^^^^^^^^^^^^^^^^^^\n  File \"capture.py\", line 96, in fail\n    raise ValueError(msg, 42)\nValueError: ('boom', 42)\n";

#[tokio::test]
async fn stored_bytes_are_celerys_and_expire() {
    let mut conn = raw(6).await;
    let json_backend = backend(6, BackendOptions::default()).await;
    let boom = ExceptionInfo::new("ValueError", "builtins", vec![json!("boom"), json!(42)]);

    // The ids of the captures; this test owns db 6 and these channels are not subscribed.
    let cases: Vec<(ResultMeta, &str)> = vec![
        (
            ResultMeta::success("00000000-0000-4000-8000-000000000101", json!(5)),
            "redis/success.json",
        ),
        (
            ResultMeta::failure(
                "00000000-0000-4000-8000-000000000102",
                boom.clone(),
                Some(FAIL_TB.into()),
            ),
            "redis/failure_valueerror.json",
        ),
        (
            ResultMeta::failure(
                "00000000-0000-4000-8000-000000000105",
                ExceptionInfo::not_registered("tasks.does_not_exist"),
                None,
            ),
            "redis/unknown_task.json",
        ),
        (
            ResultMeta::revoked("00000000-0000-4000-8000-000000000107", "expired"),
            "redis/expired.json",
        ),
        (
            ResultMeta::success("00000000-0000-4000-8000-000000000112", json!(2)).with_children(
                Some(vec![ResultMeta::child_tuple(
                    "00000000-0000-4000-8000-000000000113",
                )]),
            ),
            "redis/with_link_parent.json",
        ),
        (
            ResultMeta::success("4c8bb9a0-fc13-4298-aaed-2d36cd06b64f", json!(0))
                .with_group_id("a4360a98-3bad-4328-8d4f-a0b2314c5578"),
            "redis/group_member_0.json",
        ),
    ];
    for (meta, path) in cases {
        let golden = vector(path);
        let meta = dated(meta, &golden);
        json_backend.store(&meta).await.unwrap();
        let stored = raw_get(&mut conn, &meta.task_id)
            .await
            .expect("value stored");
        assert_eq!(
            String::from_utf8_lossy(&stored),
            String::from_utf8_lossy(&golden),
            "{path}"
        );
        let left = ttl(&mut conn, &meta.task_id).await;
        assert!((86_390..=86_400).contains(&left), "{path}: TTL {left}");
        assert_eq!(
            json_backend.get(&meta.task_id).await.unwrap(),
            Some(meta),
            "{path} read back"
        );
    }

    // result_extended.
    let golden = vector("redis-extended/success.json");
    let meta = dated(
        ResultMeta::success("ext-00000000-0000-4000-8000-000000000101", json!(5)).with_extended(
            Extended {
                name: "tasks.add".into(),
                args: json!([2, 3]),
                kwargs: json!({}),
                worker: "w1@capture".into(),
                retries: 0,
                queue: "celery".into(),
            },
        ),
        &golden,
    );
    json_backend.store(&meta).await.unwrap();
    let stored = raw_get(&mut conn, &meta.task_id).await.unwrap();
    let expected = String::from_utf8(golden)
        .unwrap()
        .replace("\"00000000-", "\"ext-00000000-");
    assert_eq!(String::from_utf8(stored).unwrap(), expected);

    // result_serializer = msgpack: the raw map, byte for byte.
    let msgpack_backend = backend(
        6,
        BackendOptions {
            serializer: Serializer::Msgpack,
            ..Default::default()
        },
    )
    .await;
    let golden = vector("redis-msgpack/success.msgpack");
    let meta = dated(
        ResultMeta::success("00000000-0000-4000-8000-000000000101", json!(5)),
        &golden,
    );
    redis::cmd("DEL")
        .arg("celery-task-meta-00000000-0000-4000-8000-000000000101")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    msgpack_backend.store(&meta).await.unwrap();
    assert_eq!(raw_get(&mut conn, &meta.task_id).await.unwrap(), golden);
    assert_eq!(json_backend.get(&meta.task_id).await.unwrap(), Some(meta));

    // Other expiries: a custom one, FAILURE's own, and none at all (plain SET).
    let short = backend(
        6,
        BackendOptions {
            result_expires: Some(Duration::from_secs(120)),
            failure_expires: Some(Duration::from_secs(30)),
            ..Default::default()
        },
    )
    .await;
    short
        .store(&ResultMeta::success("ttl-120", json!(1)))
        .await
        .unwrap();
    assert!((115..=120).contains(&ttl(&mut conn, "ttl-120").await));
    short
        .store(&ResultMeta::failure("ttl-30", boom.clone(), None))
        .await
        .unwrap();
    assert!((25..=30).contains(&ttl(&mut conn, "ttl-30").await));
    let forever = backend(
        6,
        BackendOptions {
            result_expires: None,
            ..Default::default()
        },
    )
    .await;
    forever
        .store(&ResultMeta::success("ttl-none", json!(1)))
        .await
        .unwrap();
    assert_eq!(ttl(&mut conn, "ttl-none").await, -1);

    // Missing keys read as nothing (PENDING to Celery).
    assert_eq!(json_backend.get("no-such-task").await.unwrap(), None);
}

#[tokio::test]
async fn success_is_final_and_every_store_is_published() {
    let mut conn = raw(7).await;
    let b = backend(7, BackendOptions::default()).await;
    let id = format!("publish-{}", uuid::Uuid::new_v4());
    let channel = format!("celery-task-meta-{id}");

    let client = redis::Client::open(format!("{REDIS}/7")).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();
    let mut messages = pubsub.into_on_message();

    let started = ResultMeta::started(&id, "celeriac@test", 4242);
    let success = ResultMeta::success(&id, json!({"answer": [4, 2]}));
    let late_failure = ResultMeta::failure(&id, ExceptionInfo::builtin("ValueError", "late"), None);
    b.store(&started).await.unwrap();
    b.store(&success).await.unwrap();
    b.store(&late_failure).await.unwrap();
    b.store(&ResultMeta::started(&id, "celeriac@test", 4243))
        .await
        .unwrap();

    // Exactly two messages, the same bytes as stored, on the key's channel.
    for expected in [&started, &success] {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.get_channel_name(), channel);
        assert_eq!(msg.get_payload_bytes(), expected.to_json().as_bytes());
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), messages.next())
            .await
            .is_err(),
        "nothing after SUCCESS"
    );
    assert_eq!(
        raw_get(&mut conn, &id).await.unwrap(),
        success.to_json().into_bytes()
    );
    assert_eq!(
        b.get(&id).await.unwrap().unwrap().status,
        TaskState::Success
    );

    // A RETRY / STARTED sequence does overwrite, until a ready state.
    let id2 = format!("retry-{}", uuid::Uuid::new_v4());
    b.store(&ResultMeta::retry(
        &id2,
        ExceptionInfo::builtin("KeyError", "transient"),
        None,
    ))
    .await
    .unwrap();
    b.store(&ResultMeta::failure(
        &id2,
        ExceptionInfo::builtin("KeyError", "gave up"),
        None,
    ))
    .await
    .unwrap();
    let failure = b.get(&id2).await.unwrap().unwrap();
    assert_eq!(failure.status, TaskState::Failure);
    assert_eq!(failure.exception().unwrap().args(), vec![json!("gave up")]);

    // wait() is pushed: it returns as soon as a later store lands, skipping non-ready states.
    let id3 = format!("wait-{}", uuid::Uuid::new_v4());
    let writer = b.clone();
    let id3w = id3.clone();
    let store_at = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer
            .store(&ResultMeta::started(&id3w, "w@h", 1))
            .await
            .unwrap();
        writer
            .store(&ResultMeta::success(&id3w, json!("pushed")))
            .await
            .unwrap();
        Instant::now()
    });
    let got = b
        .wait(&id3, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("pushed result");
    let arrived = Instant::now();
    let stored = store_at.await.unwrap();
    assert_eq!(got.result, json!("pushed"));
    assert!(arrived.duration_since(stored) < Duration::from_millis(500));
    // Already stored: returned at once. Never stored: None after the timeout.
    assert_eq!(
        b.wait(&id3, Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap()
            .result,
        json!("pushed")
    );
    assert_eq!(
        b.wait("never-stored", Duration::from_millis(200))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn connection_errors_are_classified_and_passwords_masked() {
    let err = AnyBackend::connect(
        Some("redis://:hunter2@127.0.0.1:1/6"),
        BackendOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BackendError::Connect { .. }), "{err}");
    assert!(err.is_connection_error());
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let _ = raw(8).await; // fail loudly here too if Redis is down
    let b = AnyBackend::connect(Some("redis://127.0.0.1:6379/8"), BackendOptions::default())
        .await
        .unwrap();
    assert_eq!(b.describe(), "redis://127.0.0.1:6379/8");
}

/// Run Python with `script`, passing `args`; returns stdout, failing on a non-zero exit.
fn python(script: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(python_bin())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "{} must exist (the Celery 5.7 venv; run scripts/test.sh)",
                python_bin()
            )
        })?;
    if !out.status.success() {
        bail!(
            "python failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Reads each task id with `AsyncResult`, printing one JSON record per id.
const PY_READ: &str = r#"
import json, sys
from celery import Celery
app = Celery("reader", broker="memory://", backend=sys.argv[1])
out = []
for tid in sys.argv[2:]:
    r = app.AsyncResult(tid)
    rec = {"id": tid, "state": r.state}
    try:
        rec["value"] = r.get(timeout=10)
    except Exception as e:
        rec["exc_class"] = type(e).__name__
        rec["exc_module"] = type(e).__module__
        rec["exc_args"] = list(e.args)
    out.append(rec)
print(json.dumps(out))
"#;

#[tokio::test]
async fn python_celery_reads_what_rust_stored() -> Result<()> {
    let mut conn = raw(8).await;
    let b = backend(8, BackendOptions::default()).await;
    let ids: Vec<String> = ["ok", "fail", "unknown", "revoked"]
        .iter()
        .map(|k| format!("py-{k}-{}", uuid::Uuid::new_v4()))
        .collect();
    b.store(&ResultMeta::success(
        &ids[0],
        json!({"sum": 5, "text": "h\u{e9}llo \u{1f600}", "list": [1.5, null, true]}),
    ))
    .await?;
    b.store(&ResultMeta::failure(
        &ids[1],
        ExceptionInfo::builtin("ValueError", "boom"),
        Some("Traceback ...\n".into()),
    ))
    .await?;
    b.store(&ResultMeta::failure(
        &ids[2],
        ExceptionInfo::not_registered("tasks.nope"),
        None,
    ))
    .await?;
    b.store(&ResultMeta::revoked(&ids[3], "revoked")).await?;

    let mut args = vec!["redis://127.0.0.1:6379/8"];
    args.extend(ids.iter().map(String::as_str));
    let out: Value = serde_json::from_str(python(PY_READ, &args)?.trim())?;
    let recs = out.as_array().context("a list")?;
    ensure!(recs.len() == 4, "{out}");

    assert_eq!(recs[0]["state"], "SUCCESS");
    assert_eq!(
        recs[0]["value"],
        json!({"sum": 5, "text": "h\u{e9}llo \u{1f600}", "list": [1.5, null, true]})
    );
    assert_eq!(recs[1]["state"], "FAILURE");
    assert_eq!(
        (
            &recs[1]["exc_class"],
            &recs[1]["exc_module"],
            &recs[1]["exc_args"]
        ),
        (&json!("ValueError"), &json!("builtins"), &json!(["boom"]))
    );
    assert_eq!(recs[2]["state"], "FAILURE");
    assert_eq!(
        (
            &recs[2]["exc_class"],
            &recs[2]["exc_module"],
            &recs[2]["exc_args"]
        ),
        (
            &json!("NotRegistered"),
            &json!("celery.exceptions"),
            &json!(["tasks.nope"])
        )
    );
    assert_eq!(recs[3]["state"], "REVOKED");
    assert_eq!(
        (
            &recs[3]["exc_class"],
            &recs[3]["exc_module"],
            &recs[3]["exc_args"]
        ),
        (
            &json!("TaskRevokedError"),
            &json!("celery.exceptions"),
            &json!(["revoked"])
        )
    );

    // And the other way: what Python's backend stores, Rust reads and re-encodes to the same
    // bytes (date_done included).
    let py_ok = format!("from-py-{}", uuid::Uuid::new_v4());
    let py_fail = format!("from-py-fail-{}", uuid::Uuid::new_v4());
    python(
        r#"
import sys
from celery import Celery
app = Celery("writer", broker="memory://", backend=sys.argv[1])
app.backend.store_result(sys.argv[2], {"a": [1, 2.5, "\u00e9"]}, "SUCCESS")
app.backend.mark_as_failure(sys.argv[3], ValueError("boom", 42), traceback="tb\n")
"#,
        &["redis://127.0.0.1:6379/8", &py_ok, &py_fail],
    )?;
    for id in [&py_ok, &py_fail] {
        let raw_bytes = raw_get(&mut conn, id)
            .await
            .context("python stored a value")?;
        let meta = b.get(id).await?.context("rust reads it")?;
        assert_eq!(
            meta.to_json().into_bytes(),
            raw_bytes,
            "{}",
            String::from_utf8_lossy(&raw_bytes)
        );
    }
    let failure = b.get(&py_fail).await?.unwrap();
    assert_eq!(
        failure.exception().unwrap().python_repr(),
        "ValueError('boom', 42)"
    );
    Ok(())
}

#[tokio::test]
async fn python_get_waiting_before_the_store_is_pushed() -> Result<()> {
    let mut conn = raw(9).await;
    let b = backend(9, BackendOptions::default()).await;
    let id = format!("py-wait-{}", uuid::Uuid::new_v4());
    let channel = format!("celery-task-meta-{id}");

    let child = tokio::process::Command::new(python_bin())
        .arg("-c")
        .arg(
            r#"
import json, sys, time
from celery import Celery
app = Celery("waiter", broker="memory://", backend=sys.argv[1])
r = app.AsyncResult(sys.argv[2])
value = r.get(timeout=30)
print(json.dumps({"value": value, "at": time.time()}))
"#,
        )
        .args(["redis://127.0.0.1:6379/9", id.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "{} must exist (the Celery 5.7 venv; run scripts/test.sh)",
                python_bin()
            )
        })?;

    // Store only once Python is subscribed (and so already inside get()).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await?;
        if subscribers > 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "python never subscribed to {channel}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored_at = std::time::SystemTime::now();
    b.store(&ResultMeta::success(&id, json!([1, "two"])))
        .await?;

    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await??;
    ensure!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(got["value"], json!([1, "two"]));
    let stored = stored_at
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let lag = got["at"].as_f64().context("time")? - stored;
    // Celery's client polls nothing here: the PUBLISH wakes it within milliseconds.
    assert!(lag < 1.0, "python returned {lag:.3}s after the store");
    Ok(())
}
