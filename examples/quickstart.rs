//! The README's first command: a worker with two example tasks on the in-process
//! `memory://` broker and backend, called and answered in one process.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use celeriac::client::{Client, ClientConfig, ResultError, SendOptions};
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
    let worker = Worker::connect(WorkerConfig {
        broker_url: "memory://quickstart".into(),
        result_backend: Some("memory://quickstart".into()),
        concurrency: 2,
        ..WorkerConfig::default()
    })
    .await?;
    println!("{}", worker.banner());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    // A client on the same in-process broker and backend (it would be a Redis or RabbitMQ
    // URL in another process, or a Python client calling `add.delay(2, 3)`).
    let client = Client::connect(ClientConfig {
        broker_url: "memory://quickstart".into(),
        result_backend: Some("memory://quickstart".into()),
        ..ClientConfig::default()
    })
    .await?;
    let wait = Duration::from_secs(10);

    // Typed calls through the stubs `#[task]` wrote: `add::new` takes the task's parameters.
    let sum = client.send(&add::new(2, 3)).await?.get(wait).await?;
    println!("tasks.add(2, 3) -> SUCCESS {sum}");
    let hello = client
        .send(&greet::new("celery".into(), Some(true)))
        .await?;
    println!(
        "tasks.greet('celery', shout=True) -> SUCCESS {}",
        hello.get(wait).await?
    );
    let refused = client.send(&greet::new(String::new(), None)).await?;
    report("tasks.greet('')", refused.get(wait).await);

    // Untyped calls, as any client may send them: wrong arguments, an unknown task.
    let bad = client
        .send_task(
            "tasks.add",
            vec![json!("two"), json!(3)],
            Map::new(),
            &SendOptions::new(),
        )
        .await?;
    report("tasks.add('two', 3)", bad.get(wait).await);
    let missing = client
        .send_task("tasks.missing", vec![], Map::new(), &SendOptions::new())
        .await?;
    report("tasks.missing()", missing.get(wait).await);

    let _ = stop.send(());
    running.await??;
    Ok(())
}

/// Prints a call's outcome: its value, or the exception as Python would show it.
fn report<T: std::fmt::Debug>(call: &str, outcome: Result<T, ResultError>) {
    match outcome {
        Ok(value) => println!("{call} -> SUCCESS {value:?}"),
        Err(ResultError::Failed { failure, .. }) => println!("{call} -> FAILURE {failure}"),
        Err(other) => println!("{call} -> {other}"),
    }
}
