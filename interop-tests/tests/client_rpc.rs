//! `rpc://` results awaited through the reply queue, against the Rust interop worker on a
//! real RabbitMQ (`CELERIAC_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/celeriac-test`).
//!
//! The worker is `target/release/interop-worker` (build it with
//! `cargo build --release -p interop-tests --bin interop-worker`; `CELERIAC_INTEROP_WORKER`
//! names another binary), started with `--result-backend rpc://` on a queue of its own.
//! Messages are built with [`TaskMessage`], encoded with [`protocol::encode`] and
//! published with [`AnyBroker`], carrying `reply_to` = [`RpcBackend::reply_queue`] and
//! `correlation_id` = the task id, as Celery's `send_task` sets them.
//!
//! RabbitMQ or the binary missing is a failure, never a skip. The scenarios share one
//! worker (starting it is the slow part) and run in one test.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use celeriac::backend::{AnyBackend, BackendOptions, RpcBackend};
use celeriac::broker::{AnyBroker, BrokerOptions};
use celeriac::protocol::{self, ExceptionInfo, TaskMessage, TaskState};
use serde_json::{Map, Value, json};

const RESULT_TIMEOUT: Duration = Duration::from_secs(60);

fn amqp_url() -> String {
    std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/celeriac-test".into())
}

fn worker_bin() -> PathBuf {
    std::env::var_os("CELERIAC_INTEROP_WORKER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/release/interop-worker"
            ))
        })
}

/// The Rust interop worker subprocess, killed (and reaped) when dropped.
struct Worker {
    child: Child,
    log_path: PathBuf,
}

impl Worker {
    fn start(queue: &str) -> Worker {
        let bin = worker_bin();
        assert!(
            bin.exists(),
            "{} is missing: build it with `cargo build --release -p interop-tests --bin interop-worker`",
            bin.display()
        );
        let log_path = std::env::temp_dir().join(format!("celeriac-client-rpc-{queue}.log"));
        let log = File::create(&log_path).expect("create the worker log");
        let child = Command::new(&bin)
            .args(["--broker", &amqp_url(), "--result-backend", "rpc://"])
            .args(["-Q", queue, "-c", "8"])
            .env("RUST_LOG", "info")
            .env_remove("CELERY_BROKER_URL")
            .env_remove("CELERY_RESULT_BACKEND")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Worker { child, log_path }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish a task message whose replies go to `rpc`'s reply queue; returns the task id.
async fn send(
    broker: &AnyBroker,
    rpc: &RpcBackend,
    queue: &str,
    name: &str,
    args: Vec<Value>,
) -> Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let mut msg = TaskMessage::new(name, id.clone(), args, Map::new());
    let p = &mut msg.properties;
    p.insert("correlation_id".into(), id.clone().into());
    p.insert("reply_to".into(), rpc.reply_queue().into());
    p.insert("delivery_mode".into(), 2.into());
    p.insert("priority".into(), 0.into());
    broker.publish(&protocol::encode(&msg)?, "", queue).await?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_results_come_back_on_the_reply_queue() -> Result<()> {
    let url = amqp_url();
    let broker = AnyBroker::connect(&url, BrokerOptions::default())
        .await
        .unwrap_or_else(|e| {
            panic!("RabbitMQ must run with vhost celeriac-test (or set CELERIAC_TEST_AMQP_URL): {url}: {e}")
        });
    let backend =
        AnyBackend::connect_with_broker(Some("rpc://"), BackendOptions::default(), &broker).await?;
    let AnyBackend::Rpc(rpc) = &backend else {
        bail!("rpc:// opens the RPC backend: {backend:?}");
    };
    ensure!(uuid::Uuid::parse_str(rpc.reply_queue()).is_ok());
    // Declared and consumed before the first task is sent, as Celery does.
    rpc.listen().await?;
    rpc.listen().await?;

    let queue = format!("celeriac-rpc-{}", uuid::Uuid::new_v4().simple());
    broker.declare_queue(&queue).await?;
    let worker = Worker::start(&queue);
    let outcome = scenarios(&broker, &backend, rpc, &queue).await;
    outcome.with_context(|| format!("worker log:\n{}", worker.log_tail()))
}

async fn scenarios(
    broker: &AnyBroker,
    backend: &AnyBackend,
    rpc: &RpcBackend,
    queue: &str,
) -> Result<()> {
    // SUCCESS.
    let id = send(broker, rpc, queue, "interop.add", vec![json!(2), json!(3)]).await?;
    let meta = backend
        .wait(&id, RESULT_TIMEOUT)
        .await?
        .context("interop.add timed out")?;
    ensure!(meta.status == TaskState::Success, "{meta:?}");
    ensure!(meta.result == json!(5), "{meta:?}");
    ensure!(meta.task_id == id);
    // Still there for `get` and another wait.
    ensure!(backend.get(&id).await? == Some(meta.clone()));
    ensure!(backend.wait(&id, Duration::ZERO).await? == Some(meta));

    // FAILURE.
    let id = send(broker, rpc, queue, "interop.fail", vec![json!("boom")]).await?;
    let meta = backend
        .wait(&id, RESULT_TIMEOUT)
        .await?
        .context("interop.fail timed out")?;
    ensure!(meta.status == TaskState::Failure, "{meta:?}");
    let exc = ExceptionInfo::from_value(&meta.result)?;
    ensure!(exc.exc_type == "ValueError", "{exc:?}");
    ensure!(exc.exc_message == json!(["boom"]), "{exc:?}");

    // A reply that arrives before anybody waits is kept until taken.
    let id = send(broker, rpc, queue, "interop.mul", vec![json!(6), json!(7)]).await?;
    let deadline = tokio::time::Instant::now() + RESULT_TIMEOUT;
    while !backend.get(&id).await?.is_some_and(|m| m.is_ready()) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no reply for interop.mul"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let meta = backend.wait(&id, Duration::from_secs(1)).await?;
    ensure!(meta.is_some_and(|m| m.result == json!(42)));

    // Unknown ids are PENDING (None) and time out.
    ensure!(backend.get("no-such-task").await?.is_none());
    ensure!(
        backend
            .wait("no-such-task", Duration::from_millis(100))
            .await?
            .is_none()
    );

    // 200 concurrent waits, all returned.
    let mut waits = Vec::new();
    for i in 0..200i64 {
        let id = send(broker, rpc, queue, "interop.add", vec![json!(i), json!(1)]).await?;
        let b = backend.clone();
        waits.push((
            i,
            tokio::spawn(async move { b.wait(&id, RESULT_TIMEOUT).await }),
        ));
    }
    for (i, wait) in waits {
        let meta = wait
            .await??
            .with_context(|| format!("wait {i} timed out"))?;
        ensure!(
            meta.status == TaskState::Success && meta.result == json!(i + 1),
            "{i}: {meta:?}"
        );
    }
    Ok(())
}
