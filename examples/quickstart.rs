//! The README's first command: a worker with two example tasks on the in-process
//! `memory://` broker and backend, called and answered in one process.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use celeriac::backend::AnyBackend;
use celeriac::protocol::{self, TaskMessage};
use celeriac::task;
use celeriac::task::TaskError;
use celeriac::worker::{Worker, WorkerConfig};
use serde_json::{Map, json};
use std::time::Duration;

/// Adds two numbers.
#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// Says hello, or refuses to.
#[task(name = "tasks.greet")]
fn greet(name: String, shout: Option<bool>) -> Result<String, TaskError> {
    if name.is_empty() {
        return Err(TaskError::value_error("name must not be empty"));
    }
    let text = format!("hello, {name}");
    Ok(if shout == Some(true) {
        text.to_uppercase()
    } else {
        text
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig {
        broker_url: "memory://quickstart".into(),
        result_backend: Some("memory://quickstart".into()),
        concurrency: 2,
        ..WorkerConfig::default()
    };
    let worker = Worker::connect(config).await?;
    println!("{}", worker.banner());
    let broker = worker.broker().clone();
    let AnyBackend::Memory(results) = worker.backend().clone() else {
        unreachable!("memory:// backend")
    };

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    // What a Python client's `.delay()` would send, built by hand (the client API comes later).
    let calls = [
        ("tasks.add", json!([2, 3]), json!({})),
        ("tasks.greet", json!(["celery"]), json!({"shout": true})),
        ("tasks.greet", json!([""]), json!({})),
        ("tasks.add", json!(["two", 3]), json!({})),
        ("tasks.missing", json!([]), json!({})),
    ];
    for (i, (name, args, kwargs)) in calls.iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        let args = args.as_array().cloned().unwrap_or_default();
        let kwargs: Map<_, _> = kwargs.as_object().cloned().unwrap_or_default();
        let msg = TaskMessage::new(*name, &id, args, kwargs);
        broker
            .publish(&protocol::encode(&msg)?, "", "celery")
            .await?;
        let meta = results
            .wait(&id, Duration::from_secs(10))
            .await
            .ok_or_else(|| anyhow::anyhow!("no result for {id}"))?;
        println!(
            "{name}{} -> {} {}",
            msg_args(&msg),
            meta.status.as_str(),
            meta.result
        );
    }

    let _ = stop.send(());
    running.await??;
    Ok(())
}

fn msg_args(msg: &TaskMessage) -> String {
    format!(
        "({}, {})",
        serde_json::Value::from(msg.args.clone()),
        serde_json::Value::from(msg.kwargs.clone())
    )
}
