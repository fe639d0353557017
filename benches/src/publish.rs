//! Pre-fill a queue with `count` task messages, as fast as the broker takes them.
//!
//! Each message is what Celery 5.7's `send_task` writes (Celeriac's client builds it:
//! `Client::build_message`, golden-compared with Celery's captures), with a fresh kombu
//! delivery tag per message on Redis. Only the sending is batched: Redis gets one
//! `LPUSH` of `batch` envelopes per round trip (the list ends up as `batch` single
//! `LPUSH`es would leave it), RabbitMQ gets `batch` publishes and then their confirms.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use celeriac::broker::redis::{envelope, queue_key};
use celeriac::client::{Client, ClientConfig, SendOptions};
use celeriac::protocol::{RawMessage, encode, kombu::to_python_json};
use futures_util::future::try_join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Confirmation, Connection, ConnectionProperties};
use serde_json::{Map, Value, json};

use crate::{amqp_fields, task_id};

/// `publish` options.
#[derive(clap::Args)]
pub struct Args {
    /// Broker URL (`redis://…` or `amqp://…`).
    #[arg(long)]
    broker: String,
    /// Queue to fill.
    #[arg(long, default_value = "celeriac.bench")]
    queue: String,
    /// How many messages.
    #[arg(long)]
    count: usize,
    /// First group of every task id (8 hex digits); task `i` gets `<prefix>-0000-4000-8000-<i>`.
    #[arg(long = "id-prefix")]
    id_prefix: String,
    /// Task name.
    #[arg(long, default_value = "interop.noop")]
    task: String,
    /// Positional arguments, a JSON array.
    #[arg(long, default_value = "[]")]
    args: String,
    /// Send `ignore_result: true` (as `apply_async(ignore_result=True)` does).
    #[arg(long = "ignore-result")]
    ignore_result: bool,
    /// Give each message an eta this many seconds from now (the worker then holds it).
    #[arg(long = "eta-secs")]
    eta_secs: Option<u64>,
    /// Messages per round trip (Redis) or per confirm wait (RabbitMQ).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

/// Publish, then print `{"published": n, "seconds": s}`.
pub async fn run(args: Args) -> Result<()> {
    ensure!(args.batch > 0, "--batch must be positive");
    let task_args: Vec<Value> =
        serde_json::from_str(&args.args).context("--args must be a JSON array")?;
    // The client only builds and encodes here; sending is done below, batched. Connecting
    // it also declares nothing yet.
    let client = Client::connect(ClientConfig {
        broker_url: args.broker.clone(),
        result_backend: None,
        default_queue: args.queue.clone(),
        ..ClientConfig::default()
    })
    .await
    .with_context(|| format!("connect to {}", args.broker))?;
    // What a worker consuming the queue declares (the publisher must not race its start).
    client
        .broker()
        .declare_queue(&args.queue)
        .await
        .context("declare the queue")?;
    let mut opts = SendOptions::new()
        .queue(args.queue.clone())
        .ignore_result(args.ignore_result);
    if let Some(secs) = args.eta_secs {
        opts = opts.eta(chrono::Utc::now() + Duration::from_secs(secs));
    }
    let message = |i: usize| -> Result<(RawMessage, String, String)> {
        let (msg, exchange, routing_key) = client.build_message(
            &args.task,
            task_args.clone(),
            Map::new(),
            &opts.clone().task_id(task_id(&args.id_prefix, i)),
        );
        Ok((encode(&msg)?, exchange, routing_key))
    };

    let started = Instant::now();
    if args.broker.starts_with("redis://") || args.broker.starts_with("rediss://") {
        publish_redis(&args, message).await?;
    } else if args.broker.starts_with("amqp://") || args.broker.starts_with("amqps://") {
        publish_amqp(&args, message).await?;
    } else {
        bail!("unsupported broker URL {}", args.broker);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", json!({"published": args.count, "seconds": seconds}));
    Ok(())
}

async fn publish_redis(
    args: &Args,
    message: impl Fn(usize) -> Result<(RawMessage, String, String)>,
) -> Result<()> {
    let client = redis::Client::open(args.broker.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = queue_key(&args.queue, 0);
    let mut i = 0;
    while i < args.count {
        let end = (i + args.batch).min(args.count);
        let mut lpush = redis::cmd("LPUSH");
        lpush.arg(&key);
        for n in i..end {
            let (raw, exchange, routing_key) = message(n)?;
            // kombu's delivery tag: a fresh uuid4 per message.
            let tag = uuid::Uuid::new_v4().to_string();
            lpush.arg(to_python_json(&envelope(
                &raw,
                &exchange,
                &routing_key,
                &tag,
            )));
        }
        let _: i64 = lpush.query_async(&mut conn).await.context("LPUSH")?;
        i = end;
    }
    Ok(())
}

async fn publish_amqp(
    args: &Args,
    message: impl Fn(usize) -> Result<(RawMessage, String, String)>,
) -> Result<()> {
    let conn = Connection::connect(&args.broker, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect to {}", args.broker))?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut i = 0;
    while i < args.count {
        let end = (i + args.batch).min(args.count);
        let messages = (i..end).map(&message).collect::<Result<Vec<_>>>()?;
        // Every publish of the batch handed to lapin before waiting for any, then every
        // confirm awaited.
        let confirms = try_join_all(messages.iter().map(|(raw, exchange, routing_key)| {
            ch.basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &raw.body,
                amqp_fields::properties(raw),
            )
        }))
        .await
        .context("basic.publish")?;
        for confirm in confirms {
            match confirm.await.context("publisher confirm")? {
                Confirmation::Ack(_) => {}
                other => bail!("RabbitMQ did not confirm a message: {other:?}"),
            }
        }
        i = end;
    }
    let _ = conn.close(200, "published".into()).await;
    Ok(())
}
