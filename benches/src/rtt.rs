//! Round trips of Celeriac's own client: `send_task("interop.add", [2, 3])` then `get`,
//! one call after the other, as the Python client's `add.delay(2, 3).get()` loop does.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use celeriac::client::{Client, ClientConfig, SendOptions};
use serde_json::{Map, json};

/// `rtt` options.
#[derive(clap::Args)]
pub struct Args {
    /// Broker URL.
    #[arg(long)]
    broker: String,
    /// Result backend URL (Redis).
    #[arg(long = "result-backend")]
    result_backend: String,
    /// Queue the worker consumes.
    #[arg(long, default_value = "celeriac.bench")]
    queue: String,
    /// Timed calls.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Untimed calls first (connections, subscriptions, caches).
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Give up on one call after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// Call, then print `{"latencies_us": [...], "ids": [...]}` (the ids of every call, for the
/// harness to delete their results).
pub async fn run(args: Args) -> Result<()> {
    let client = Client::connect(ClientConfig {
        broker_url: args.broker.clone(),
        result_backend: Some(args.result_backend.clone()),
        default_queue: args.queue.clone(),
        ..ClientConfig::default()
    })
    .await
    .context("connect the client")?;
    let opts = SendOptions::new().queue(args.queue.clone());
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut latencies = Vec::with_capacity(args.calls);
    let mut ids = Vec::with_capacity(args.warmup + args.calls);
    for i in 0..args.warmup + args.calls {
        let started = Instant::now();
        let result = client
            .send_task("interop.add", vec![json!(2), json!(3)], Map::new(), &opts)
            .await
            .context("send_task")?;
        let value = result
            .get(timeout)
            .await
            .with_context(|| format!("result of call {i}"))?;
        let elapsed = started.elapsed();
        ensure!(value == json!(5), "interop.add(2, 3) returned {value}");
        ids.push(result.id().to_owned());
        if i >= args.warmup {
            latencies.push(elapsed.as_secs_f64() * 1e6);
        }
    }
    println!("{}", json!({"latencies_us": latencies, "ids": ids}));
    Ok(())
}
