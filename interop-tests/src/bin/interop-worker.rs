//! The interop worker of `shared/INTEROP.md`: an ordinary user of the library that defines
//! the contract's tasks with `#[task]` and runs a worker with Celery's flag names.

use celeriac::task;
use celeriac::task::{Request, TaskError};
use celeriac::worker::{Worker, WorkerConfig};
use clap::Parser;
use serde_json::{Value, json};
use std::time::Duration;

// jemalloc, with the options the benchmarks were measured with.
#[path = "interop-worker/allocator.rs"]
mod allocator;

#[path = "interop-worker/semantics.rs"]
mod semantics;

/// A Celeriac worker with the interop tasks.
#[derive(Parser, Debug)]
#[command(name = "interop-worker", version)]
struct Args {
    /// Broker URL.
    #[arg(
        long,
        env = "CELERY_BROKER_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    broker: String,
    /// Result backend URL (none: results are not stored).
    #[arg(long = "result-backend", env = "CELERY_RESULT_BACKEND")]
    result_backend: Option<String>,
    /// Queues to consume, comma separated.
    #[arg(
        short = 'Q',
        long = "queues",
        default_value = "celery",
        value_delimiter = ','
    )]
    queues: Vec<String>,
    /// Tasks in flight (default: number of CPUs).
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// Messages reserved per concurrency slot.
    #[arg(long = "prefetch-multiplier", default_value_t = 4)]
    prefetch_multiplier: usize,
    /// Node name (default celeriac@<host name>).
    #[arg(short = 'n', long)]
    hostname: Option<String>,
    /// Send task events.
    #[arg(short = 'E', long)]
    events: bool,
    /// Acknowledge after the task ends.
    #[arg(long = "acks-late")]
    acks_late: bool,
    /// Redis visibility timeout in seconds.
    #[arg(long = "visibility-timeout", default_value_t = 3600.0)]
    visibility_timeout: f64,
    /// RabbitMQ: declare the consumed queues as `classic` or `quorum` queues.
    #[arg(long = "queue-type", default_value = "classic", value_parser = ["classic", "quorum"])]
    queue_type: String,
    /// RabbitMQ: declare the consumed queues with this `x-max-priority`.
    #[arg(long = "max-priority")]
    max_priority: Option<u8>,
    /// amqps://: a PEM file of CA certificates to trust besides the system's.
    #[arg(long = "broker-ca-file")]
    broker_ca_file: Option<std::path::PathBuf>,
    /// Bind a consumed queue to an exchange of its own, `queue=exchange:type:routing_key`
    /// (type direct, topic or fanout), as Celery's `task_queues` does; repeatable.
    #[arg(long = "queue-binding")]
    queue_bindings: Vec<celeriac::broker::QueueBinding>,
    /// Hard time limit in seconds of tasks that set none (Celery's `--time-limit`).
    #[arg(long = "time-limit")]
    time_limit: Option<f64>,
    /// Soft time limit in seconds of tasks that set none (Celery's `--soft-time-limit`).
    #[arg(long = "soft-time-limit")]
    soft_time_limit: Option<f64>,
    /// Store the task's name, args, kwargs, worker, retries and queue with its result
    /// (Celery's `result_extended`).
    #[arg(long = "result-extended")]
    result_extended: bool,
    /// Keep revoked task ids in this file across restarts (Celery's `--statedb`).
    #[arg(long = "statedb")]
    statedb: Option<std::path::PathBuf>,
    /// Store STARTED when a task begins (Celery's `task_track_started`).
    #[arg(long = "track-started")]
    track_started: bool,
    /// Threads of the async runtime, which runs the consume loop, the message pipelines
    /// and the async tasks (default: number of CPUs, tokio's own default). Plain (non-async)
    /// tasks run on the runtime's blocking pool whatever this is. One thread saves the
    /// hand-offs between threads per message; on a small machine that also runs the broker
    /// it leaves the broker the other cores.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

#[task(name = "interop.noop")]
async fn noop() {}

#[task(name = "interop.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    x.checked_add(y).ok_or_else(|| overflow("add", x, y))
}

#[task(name = "interop.mul")]
async fn mul(x: i64, y: i64) -> Result<i64, TaskError> {
    x.checked_mul(y).ok_or_else(|| overflow("mul", x, y))
}

fn overflow(op: &str, x: i64, y: i64) -> TaskError {
    TaskError::new(
        "OverflowError",
        format!("{op}({x}, {y}) does not fit in 64 bits"),
    )
}

#[task(name = "interop.echo")]
async fn echo(value: Value) -> Value {
    value
}

#[task(name = "interop.concat")]
async fn concat(parts: Vec<String>, sep: Option<String>) -> String {
    parts.join(sep.as_deref().unwrap_or(""))
}

#[task(name = "interop.xsum")]
async fn xsum(values: Vec<i64>) -> Result<i64, TaskError> {
    values
        .iter()
        .try_fold(0i64, |acc, v| acc.checked_add(*v))
        .ok_or_else(|| TaskError::new("OverflowError", "xsum does not fit in 64 bits"))
}

#[task(name = "interop.fail")]
async fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::value_error(message))
}

#[task(name = "interop.panic")]
async fn panic() {
    panic!("interop.panic was called");
}

#[task(name = "interop.sleep")]
async fn sleep(seconds: f64) -> Result<f64, TaskError> {
    tokio::time::sleep(seconds_to_duration(seconds)?).await;
    Ok(seconds)
}

#[task(name = "interop.blocking_sleep")]
fn blocking_sleep(seconds: f64) -> Result<f64, TaskError> {
    std::thread::sleep(seconds_to_duration(seconds)?);
    Ok(seconds)
}

fn seconds_to_duration(seconds: f64) -> Result<Duration, TaskError> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|e| TaskError::value_error(format!("seconds: {e}")))
}

#[task(name = "interop.flaky")]
async fn flaky(failures: u32, request: &Request) -> Result<u32, TaskError> {
    if request.retries < failures {
        return Err(TaskError::retry().countdown(Duration::from_millis(100)));
    }
    Ok(request.retries)
}

#[task(name = "interop.whoami")]
async fn whoami(request: &Request) -> Value {
    json!({
        "hostname": request.hostname,
        "task_id": request.id,
        "retries": request.retries,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "delivery_info": request.delivery_info,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.into());
    }
    let runtime = builder.enable_all().build()?;
    let outcome = runtime.block_on(run(args));
    // A blocking task stopped by its hard time limit was abandoned, not ended: its thread
    // may still be sleeping in the blocking pool. Dropping the runtime would wait for it;
    // the worker has stopped, so leave it behind (Celery kills such a pool process).
    runtime.shutdown_background();
    outcome
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tracing::info!(
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "async runtime"
    );
    if args.events {
        tracing::warn!("--events: task events are not implemented yet; none will be sent");
    }
    let defaults = WorkerConfig::default();
    let config = WorkerConfig {
        broker_url: args.broker,
        result_backend: args.result_backend,
        queues: args.queues,
        concurrency: args.concurrency.unwrap_or(defaults.concurrency),
        prefetch_multiplier: args.prefetch_multiplier,
        hostname: args.hostname.unwrap_or(defaults.hostname.clone()),
        acks_late: args.acks_late,
        visibility_timeout: Duration::try_from_secs_f64(args.visibility_timeout)?,
        queue_type: if args.queue_type == "quorum" {
            celeriac::broker::QueueType::Quorum
        } else {
            celeriac::broker::QueueType::Classic
        },
        max_priority: args.max_priority,
        broker_ca_file: args.broker_ca_file,
        queue_bindings: args.queue_bindings,
        time_limit: limit("--time-limit", args.time_limit)?,
        soft_time_limit: limit("--soft-time-limit", args.soft_time_limit)?,
        result_extended: args.result_extended,
        state_db: args.statedb,
        track_started: args.track_started,
        // jemalloc returns freed pages itself (interop-worker/allocator.rs); glibc's trim
        // has nothing to give back.
        memory_trim_interval: None,
        ..defaults
    };
    let worker = Worker::connect(config).await?;
    semantics::REVOKED
        .set(worker.revoked().clone())
        .expect("the worker is connected once");
    println!("{}", worker.banner());
    worker.run(shutdown_signal()).await?;
    Ok(())
}

/// A time limit flag: seconds, more than 0 (0 means none, as in Celery).
fn limit(flag: &str, seconds: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match seconds {
        None | Some(0.0) => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{flag} {s}: {e}")),
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: warm shutdown"),
        _ = int.recv() => tracing::info!("SIGINT: warm shutdown"),
    }
}
