//! Round trips of Celeriac's own client: `send_task("interop.add", [2, 3])` then `get`,
//! one call after the other, as the Python client's `add.delay(2, 3).get()` loop does.
//!
//! Given several queues (one worker on each), the calls go to them in turn, one call at a
//! time, so every worker is measured under the same conditions of a shared machine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use celeriac::client::{Client, ClientConfig, SendOptions};
use serde_json::{Map, Value, json};

/// `rtt` options.
#[derive(clap::Args)]
pub struct Args {
    /// Broker URL.
    #[arg(long)]
    broker: String,
    /// Result backend URL (Redis).
    #[arg(long = "result-backend")]
    result_backend: String,
    /// Queues to call, comma separated (a worker on each).
    #[arg(long, default_value = "celeriac.bench", value_delimiter = ',')]
    queues: Vec<String>,
    /// The result each queue's worker returns, JSON, comma separated (default 5 for all).
    #[arg(long, value_delimiter = ',')]
    expects: Vec<String>,
    /// Timed calls per queue.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Untimed calls per queue first (connections, subscriptions, caches).
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Give up on one call after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// The first call to each queue waits this long (for its worker to start).
    #[arg(long = "first-timeout", default_value_t = 60.0)]
    first_timeout: f64,
}

/// Call, then print `{"latencies_us": {queue: [...]}, "ids": [...]}` (the ids of every
/// call, for the harness to delete their results).
pub async fn run(args: Args) -> Result<()> {
    let expects = if args.expects.is_empty() {
        vec![json!(5); args.queues.len()]
    } else {
        ensure!(
            args.expects.len() == args.queues.len(),
            "--expects needs one value per queue"
        );
        args.expects
            .iter()
            .map(|e| serde_json::from_str(e).with_context(|| format!("--expects {e}")))
            .collect::<Result<Vec<Value>>>()?
    };
    let client = Client::connect(ClientConfig {
        broker_url: args.broker.clone(),
        result_backend: Some(args.result_backend.clone()),
        ..ClientConfig::default()
    })
    .await
    .context("connect the client")?;
    let opts: Vec<SendOptions> = args
        .queues
        .iter()
        .map(|q| SendOptions::new().queue(q.clone()))
        .collect();
    let call = |q: usize, timeout: Duration| {
        let (client, opts, expect) = (&client, &opts[q], &expects[q]);
        async move {
            let started = Instant::now();
            let result = client
                .send_task("interop.add", vec![json!(2), json!(3)], Map::new(), opts)
                .await
                .context("send_task")?;
            let value = result.get(timeout).await.context("get")?;
            let elapsed = started.elapsed();
            ensure!(
                &value == expect,
                "interop.add(2, 3) returned {value}, expected {expect}"
            );
            anyhow::Ok((elapsed, result.id().to_owned()))
        }
    };

    let mut ids = Vec::new();
    for q in 0..args.queues.len() {
        let (_, id) = call(q, Duration::from_secs_f64(args.first_timeout))
            .await
            .with_context(|| format!("first call to {}", args.queues[q]))?;
        ids.push(id);
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut latencies: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..args.warmup + args.calls {
        // A different worker goes first each round.
        for k in 0..args.queues.len() {
            let q = (round + k) % args.queues.len();
            let (elapsed, id) = call(q, timeout)
                .await
                .with_context(|| format!("call {round} to {}", args.queues[q]))?;
            ids.push(id);
            if round >= args.warmup {
                latencies
                    .entry(&args.queues[q])
                    .or_default()
                    .push(elapsed.as_secs_f64() * 1e6);
            }
        }
    }
    println!("{}", json!({"latencies_us": latencies, "ids": ids}));
    Ok(())
}
