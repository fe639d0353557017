//! The broker's limit: a consumer that only takes and acknowledges messages the way the
//! transport requires, and optionally stores a SUCCESS for each (the raw responder).
//!
//! Redis, kombu's ack emulation (what any worker sharing queues with Celery must keep):
//! - `kombu`: one message at a time, kombu's own commands: `BRPOP`, then
//!   `MULTI; ZADD unacked_index <now> <tag>; HSET unacked <tag> [envelope, exchange,
//!   routing_key]; EXEC`, then the ack `MULTI; ZREM unacked_index <tag>; HDEL unacked <tag>;
//!   EXEC`;
//! - `batch`: the same bookkeeping for up to `--batch` messages per round trip: `RPOP <key>
//!   <n>`, one `MULTI` recording them all, one `MULTI` acking them all (and storing their
//!   results).
//!
//! RabbitMQ, explicit acks within `basic.qos(--prefetch)`:
//! - `each`: every delivery acknowledged on its own (`basic.ack`, `multiple=false`);
//! - `multi`: the deliveries at hand (up to `--batch`) acknowledged at once by the last one's
//!   tag with `multiple=true`.
//!
//! With `--result-backend`, each task's `celery-task-meta-<id>` gets Celery's SUCCESS value
//! (`result: null`) by `SETEX` and `PUBLISH` on a connection of its own (as Celery's backend
//! has), pipelined per batch, before the ack.
//!
//! It runs until SIGTERM or SIGINT, then prints `{"consumed": n}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use celeriac::broker::redis::queue_key;
use futures_util::future::try_join_all;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};
use serde::Deserialize;
use serde_json::json;

use crate::amqp_fields::header_text;

const UNACKED: &str = "unacked";
const UNACKED_INDEX: &str = "unacked_index";
/// Celery's `result_expires` default: one day.
const RESULT_EXPIRES_SECS: u64 = 86_400;
/// How long a blocking pop waits before the loop looks at the stop flag again.
const BLOCK_SECS: u64 = 1;

/// How to take and acknowledge.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Redis, one message per round trip, kombu's commands.
    Kombu,
    /// Redis, up to `--batch` messages per round trip.
    Batch,
    /// RabbitMQ, one ack per delivery.
    Each,
    /// RabbitMQ, one `multiple=true` ack per batch of deliveries at hand.
    Multi,
}

/// `raw` options.
#[derive(clap::Args)]
pub struct Args {
    /// Broker URL (`redis://…` for kombu and batch, `amqp://…` for each and multi).
    #[arg(long)]
    broker: String,
    /// Queue to consume.
    #[arg(long, default_value = "celeriac.bench")]
    queue: String,
    /// How messages are taken and acknowledged.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Store a SUCCESS for each task in this Redis result backend.
    #[arg(long = "result-backend")]
    result_backend: Option<String>,
    /// Messages per round trip (batch, and multi/results pipelining).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// RabbitMQ prefetch window.
    #[arg(long, default_value_t = 200)]
    prefetch: u16,
}

/// The envelope fields kombu's bookkeeping and the result need.
#[derive(Deserialize)]
struct Envelope {
    headers: Headers,
    properties: Properties,
}

#[derive(Deserialize)]
struct Headers {
    id: String,
}

#[derive(Deserialize)]
struct Properties {
    delivery_tag: String,
    delivery_info: DeliveryInfo,
}

#[derive(Deserialize)]
struct DeliveryInfo {
    exchange: String,
    routing_key: String,
}

/// Consume until stopped.
pub async fn run(args: Args) -> Result<()> {
    ensure!(args.batch > 0, "--batch must be positive");
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let stop = stop.clone();
        async move {
            crate::stop_signal().await;
            stop.store(true, Ordering::SeqCst);
        }
    });
    let results = match &args.result_backend {
        Some(url) => Some(connect_redis(url).await?),
        None => None,
    };
    let consumed = match args.mode {
        Mode::Kombu | Mode::Batch => redis_loop(&args, results, &stop).await?,
        Mode::Each | Mode::Multi => amqp_loop(&args, results, &stop).await?,
    };
    println!("{}", json!({"consumed": consumed}));
    Ok(())
}

async fn connect_redis(url: &str) -> Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        // Longer than the blocking pop, so only a dead connection times out.
        .set_response_timeout(Some(Duration::from_secs(BLOCK_SECS + 10)));
    // TCP_NODELAY, as redis-py (and so Celery) sets it; redis-rs leaves Nagle on by default.
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connect to {url}"))
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Celery's SUCCESS value for a task returning `None`.
fn success_meta(task_id: &str) -> String {
    let date_done = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string();
    format!(
        r#"{{"status": "SUCCESS", "result": null, "traceback": null, "children": [], "date_done": "{date_done}", "task_id": "{task_id}"}}"#
    )
}

/// Queue the result commands of one task onto `pipe` (Celery's `RedisBackend._set`).
fn store(pipe: &mut redis::Pipeline, task_id: &str) {
    let key = format!("celery-task-meta-{task_id}");
    let meta = success_meta(task_id);
    pipe.cmd("SETEX")
        .arg(&key)
        .arg(RESULT_EXPIRES_SECS)
        .arg(&meta)
        .ignore()
        .cmd("PUBLISH")
        .arg(&key)
        .arg(&meta)
        .ignore();
}

/// kombu's `unacked` value: `[envelope, exchange, routing_key]` as JSON.
fn unacked_value(raw: &[u8], env: &Envelope) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(raw.len() + 64);
    v.push(b'[');
    v.extend_from_slice(raw);
    v.extend_from_slice(b", ");
    serde_json::to_writer(&mut v, &env.properties.delivery_info.exchange)?;
    v.extend_from_slice(b", ");
    serde_json::to_writer(&mut v, &env.properties.delivery_info.routing_key)?;
    v.push(b']');
    Ok(v)
}

async fn redis_loop(
    args: &Args,
    mut results: Option<MultiplexedConnection>,
    stop: &AtomicBool,
) -> Result<u64> {
    if !args.broker.starts_with("redis") {
        bail!("modes kombu and batch need a redis:// broker");
    }
    let mut conn = connect_redis(&args.broker).await?;
    let key = queue_key(&args.queue, 0);
    let max = if args.mode == Mode::Kombu {
        1
    } else {
        args.batch
    };
    let mut consumed = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut taken: Vec<Vec<u8>> = if max > 1 {
            let many: Option<Vec<Vec<u8>>> = redis::cmd("RPOP")
                .arg(&key)
                .arg(max)
                .query_async(&mut conn)
                .await
                .context("RPOP")?;
            many.unwrap_or_default()
        } else {
            Vec::new()
        };
        if taken.is_empty() {
            // kombu's blocking pop (also how the batch mode waits on an empty queue).
            let one: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
                .arg(&key)
                .arg(BLOCK_SECS)
                .query_async(&mut conn)
                .await
                .context("BRPOP")?;
            match one {
                Some((_, env)) => taken.push(env),
                None => continue,
            }
        }
        let envs = taken
            .iter()
            .map(|raw| serde_json::from_slice::<Envelope>(raw))
            .collect::<Result<Vec<_>, _>>()
            .context("an envelope without the fields kombu needs")?;

        // kombu's QoS.append: the messages are unacknowledged from here on.
        let now = now_secs();
        let mut record = redis::pipe();
        record.atomic();
        for (raw, env) in taken.iter().zip(&envs) {
            record
                .zadd(UNACKED_INDEX, &env.properties.delivery_tag, now)
                .ignore()
                .hset(
                    UNACKED,
                    &env.properties.delivery_tag,
                    unacked_value(raw, env)?,
                )
                .ignore();
        }
        record
            .query_async::<()>(&mut conn)
            .await
            .context("record unacked")?;

        // The results (on the backend's own connection), then kombu's ack.
        if let Some(backend) = results.as_mut() {
            let mut pipe = redis::pipe();
            for env in &envs {
                store(&mut pipe, &env.headers.id);
            }
            pipe.query_async::<()>(backend)
                .await
                .context("store results")?;
        }
        let mut ack = redis::pipe();
        ack.atomic();
        for env in &envs {
            ack.zrem(UNACKED_INDEX, &env.properties.delivery_tag)
                .ignore()
                .hdel(UNACKED, &env.properties.delivery_tag)
                .ignore();
        }
        ack.query_async::<()>(&mut conn).await.context("ack")?;
        consumed += envs.len() as u64;
    }
    Ok(consumed)
}

async fn amqp_loop(
    args: &Args,
    mut results: Option<MultiplexedConnection>,
    stop: &AtomicBool,
) -> Result<u64> {
    if !args.broker.starts_with("amqp") {
        bail!("modes each and multi need an amqp:// broker");
    }
    // The queue, its exchange and binding as Celery's worker declares them (Celeriac's own
    // declaration, checked against Celery's), so it may start before anything was sent.
    celeriac::broker::AnyBroker::connect(&args.broker, Default::default())
        .await
        .with_context(|| format!("connect to {}", args.broker))?
        .declare_queue(&args.queue)
        .await
        .context("declare the queue")?;
    let conn = Connection::connect(&args.broker, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect to {}", args.broker))?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            args.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    let mut consumed = 0u64;
    let mut batch = Vec::with_capacity(args.batch);
    while !stop.load(Ordering::SeqCst) {
        // Wait for one delivery (looking at the stop flag now and then), then take what
        // else is already at hand.
        let first = match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            Err(_) => continue,
            Ok(None) => bail!("the consumer was cancelled"),
            Ok(Some(d)) => d.context("basic.deliver")?,
        };
        batch.push(first);
        while batch.len() < args.batch {
            match consumer.next().now_or_never() {
                Some(Some(d)) => batch.push(d.context("basic.deliver")?),
                _ => break,
            }
        }
        if let Some(backend) = results.as_mut() {
            let mut pipe = redis::pipe();
            for d in &batch {
                let id = header_text(d.properties.headers().as_ref(), "id")
                    .context("a delivery without an id header")?;
                store(&mut pipe, std::str::from_utf8(id)?);
            }
            pipe.query_async::<()>(backend)
                .await
                .context("store results")?;
        }
        match args.mode {
            Mode::Multi => {
                let last = batch.last().map_or(0, |d| d.delivery_tag);
                ch.basic_ack(last, BasicAckOptions { multiple: true })
                    .await
                    .context("basic.ack")?;
            }
            _ => {
                // One basic.ack per delivery, all handed to lapin's I/O loop before waiting
                // (basic.ack has no reply; awaiting each would only wait on lapin's thread).
                try_join_all(
                    batch
                        .iter()
                        .map(|d| ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: false })),
                )
                .await
                .context("basic.ack")?;
            }
        }
        consumed += batch.len() as u64;
        batch.clear();
    }
    // Closing the channel hands anything still prefetched back to the queue.
    let _ = conn.close(200, "stopped".into()).await;
    Ok(consumed)
}
