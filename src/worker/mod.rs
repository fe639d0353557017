//! The worker: consume from the broker, run each message through the
//! pipeline (`worker/pipeline.rs`), and shut down gracefully.
//!
//! The library installs no signal handlers: [`Worker::run`] takes the shutdown signal as a
//! future, and binaries decide what triggers it (the interop worker uses SIGTERM/SIGINT).
//!
//! ```no_run
//! # async fn demo() -> Result<(), celeriac::Error> {
//! use celeriac::worker::{Worker, WorkerConfig};
//! let config = WorkerConfig { broker_url: "memory://".into(), ..WorkerConfig::default() };
//! let worker = Worker::connect(config).await?;
//! println!("{}", worker.banner());
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod errbacks;
mod hold;
mod pipeline;
mod rate;
mod revoked;
mod trim;

pub use revoked::{REVOKE_EXPIRES, REVOKES_MAX, RevokedIds, StateError};

use crate::backend::{AnyBackend, BackendOptions};
use crate::broker::{AnyBroker, BrokerOptions, QueueBinding, QueueType};
use crate::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How a worker is set up. The defaults are Celery's.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Broker URL: `redis://…`, `rediss://…`, `amqp://…`, `amqps://…`, `memory://`.
    pub broker_url: String,
    /// Result backend URL (`redis://…`, `rpc://`, `memory://`), or `None` to store no results.
    pub result_backend: Option<String>,
    /// Queues to consume from.
    pub queues: Vec<String>,
    /// How many tasks run at once.
    pub concurrency: usize,
    /// Messages reserved per concurrency slot (Celery's `worker_prefetch_multiplier`).
    pub prefetch_multiplier: usize,
    /// The node name, `name@host`.
    pub hostname: String,
    /// Acknowledge after the task ends instead of before it starts (`task_acks_late`),
    /// for tasks that do not choose for themselves.
    pub acks_late: bool,
    /// Store STARTED when a task begins (`task_track_started`).
    pub track_started: bool,
    /// How long stored results live (`result_expires`); `None` keeps them forever.
    pub result_expires: Option<Duration>,
    /// Redis: unacknowledged messages older than this go back to their queue.
    pub visibility_timeout: Duration,
    /// Redis: how often to look for such messages.
    pub restore_interval: Duration,
    /// RabbitMQ: the type of the queues the worker declares (`task_default_queue_type`).
    pub queue_type: QueueType,
    /// RabbitMQ: declare the queues with `x-max-priority` (`task_queue_max_priority`).
    pub max_priority: Option<u8>,
    /// `amqps://`: a PEM file of CA certificates to trust besides the system's.
    pub broker_ca_file: Option<std::path::PathBuf>,
    /// Queues bound to exchanges of their own (Celery's `task_queues`); the others are bound
    /// to the direct exchange of their own name.
    pub queue_bindings: Vec<QueueBinding>,
    /// Hard time limit of tasks that set none (`task_time_limit`).
    pub time_limit: Option<Duration>,
    /// Soft time limit of tasks that set none (`task_soft_time_limit`).
    pub soft_time_limit: Option<Duration>,
    /// Store the task's name, args, kwargs, worker, retries and queue with its result
    /// (`result_extended`).
    pub result_extended: bool,
    /// A file that keeps revoked task ids across restarts (Celery's `--statedb`).
    pub state_db: Option<std::path::PathBuf>,
    /// How often to hand the heap's free pages back to the system (glibc's `malloc_trim`)
    /// while messages come in, and once after they stop; `None` never does. glibc keeps
    /// the memory a burst of messages freed otherwise, so the resident size stays near the
    /// burst's peak. Ignored where the allocator is not glibc's. Default: every second.
    pub memory_trim_interval: Option<Duration>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            broker_url: "redis://127.0.0.1:6379/0".into(),
            result_backend: None,
            queues: vec!["celery".into()],
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch_multiplier: 4,
            hostname: format!("celeriac@{}", host_name()),
            acks_late: false,
            track_started: false,
            result_expires: Some(Duration::from_secs(86_400)),
            visibility_timeout: Duration::from_secs(3600),
            restore_interval: Duration::from_secs(10),
            queue_type: QueueType::Classic,
            max_priority: None,
            broker_ca_file: None,
            queue_bindings: Vec::new(),
            time_limit: None,
            soft_time_limit: None,
            result_extended: false,
            state_db: None,
            memory_trim_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// This machine's host name (Linux), `localhost` when it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A connected worker, ready to [`run`](Worker::run).
pub struct Worker {
    config: WorkerConfig,
    broker: AnyBroker,
    backend: AnyBackend,
    registry: Arc<Registry>,
    revoked: RevokedIds,
}

impl Worker {
    /// Connects the broker and the result backend and collects every `#[task]` of the
    /// program. Two tasks with one name are an error here, before anything is consumed.
    pub async fn connect(config: WorkerConfig) -> Result<Worker, crate::Error> {
        let registry = Arc::new(Registry::from_inventory()?);
        let broker = AnyBroker::connect(
            &config.broker_url,
            BrokerOptions {
                visibility_timeout: config.visibility_timeout,
                restore_interval: config.restore_interval,
                queue_type: config.queue_type,
                max_priority: config.max_priority,
                tls_ca_file: config.broker_ca_file.clone(),
                bindings: config.queue_bindings.clone(),
            },
        )
        .await?;
        let backend = AnyBackend::connect_with_broker(
            config.result_backend.as_deref(),
            BackendOptions {
                result_expires: config.result_expires,
                ..BackendOptions::default()
            },
            &broker,
        )
        .await?;
        let revoked = match &config.state_db {
            Some(path) => RevokedIds::with_state_file(path)?,
            None => RevokedIds::new(),
        };
        Ok(Worker {
            config,
            broker,
            backend,
            registry,
            revoked,
        })
    }

    /// The ids of revoked tasks: a message with one of these ids is not run, REVOKED is
    /// stored instead. Remote control fills it; so can the program itself.
    pub fn revoked(&self) -> &RevokedIds {
        &self.revoked
    }

    /// The broker this worker consumes from (to publish to it from the same process).
    pub fn broker(&self) -> &AnyBroker {
        &self.broker
    }

    /// The result backend this worker stores outcomes in.
    pub fn backend(&self) -> &AnyBackend {
        &self.backend
    }

    /// The start-up banner: broker, backend, queues, concurrency and every registered task.
    pub fn banner(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            " -------------- {} v{}\n\
             --- ***** -----\n\
             - transport:   {}\n\
             - results:     {}\n\
             - queues:      {}\n\
             - concurrency: {} (prefetch {} per slot){}\n\
             \n[tasks]\n",
            c.hostname,
            env!("CARGO_PKG_VERSION"),
            self.broker.describe(),
            self.backend.describe(),
            c.queues.join(", "),
            c.concurrency,
            c.prefetch_multiplier,
            if c.acks_late { ", acks late" } else { "" },
        );
        for name in self.registry.names() {
            out.push_str("  . ");
            out.push_str(name);
            out.push('\n');
        }
        out
    }

    /// Consumes until `shutdown` completes, then stops taking messages, hands back the ones
    /// it reserved, and waits for the running tasks to finish (Celery's warm shutdown).
    ///
    /// The consume loop runs as a task of its own on the runtime, not in the caller's
    /// future: a binary's `block_on(worker.run(..))` polls that future on the main thread,
    /// outside the runtime's worker threads, and every delivery would then cross threads
    /// twice (fetcher -> main thread -> the spawned pipeline), a futex wake-up each. Dropping
    /// the returned future stops the loop as before (its task is aborted).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), crate::Error> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut consuming = AbortOnDrop(tokio::spawn(self.consume(async move {
            // A dropped sender (the caller's future dropped) also stops the loop.
            let _ = stopped.await;
        })));
        tokio::pin!(shutdown);
        let joined = tokio::select! {
            biased;
            () = &mut shutdown => {
                let _ = stop.send(());
                (&mut consuming.0).await
            }
            joined = &mut consuming.0 => joined,
        };
        match joined {
            Ok(outcome) => outcome,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // Cancelled: the runtime is shutting down under the worker.
            Err(_) => Ok(()),
        }
    }

    /// The consume loop of [`Worker::run`], until `shutdown` completes.
    async fn consume(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), crate::Error> {
        let c = &self.config;
        let prefetch = c.concurrency.max(1) * c.prefetch_multiplier.max(1);
        let mut consumer = self.broker.consume(&c.queues, prefetch).await?;
        let shared = Arc::new(pipeline::Shared {
            broker: self.broker.clone(),
            backend: self.backend.clone(),
            registry: self.registry.clone(),
            hostname: c.hostname.clone(),
            acks_late: c.acks_late,
            track_started: c.track_started,
            time_limits: (c.time_limit, c.soft_time_limit),
            result_extended: c.result_extended,
            revoked: self.revoked.clone(),
            rate_limits: rate::RateLimits::default(),
            hold: hold::Hold::new(Arc::new(Semaphore::new(c.concurrency.max(1)))),
        });
        tracing::info!(hostname = %c.hostname, queues = ?c.queues, "worker ready");

        let trimmer = c.memory_trim_interval.and_then(trim::Trimmer::start);
        let mut running = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        tokio::pin!(shutdown);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut shutdown => break,
                // Held messages whose turn has come go first: they were taken earlier.
                (held, slot) = shared.hold.next() => {
                    running.spawn(pipeline::resume(shared.clone(), held, slot));
                    continue;
                }
                next = consumer.next() => next,
                // Reap finished pipelines while no message comes: each holds its task's
                // memory (the size of its future) until it is joined.
                Some(done) = running.join_next() => {
                    report(done);
                    continue;
                }
            };
            match next {
                Ok(delivery) => {
                    backoff = Duration::from_millis(100);
                    if let Some(trimmer) = &trimmer {
                        trimmer.taken();
                    }
                    // Boxed: the task then holds a pointer, and the pipeline's future (about
                    // 5 KB) is not copied again into the task, nor over by its output.
                    running.spawn(Box::pin(pipeline::process(
                        shared.clone(),
                        delivery,
                        pipeline::Turn::default(),
                    )));
                }
                Err(err) if err.is_connection_error() => {
                    tracing::warn!(error = %err, retry_in = ?backoff, "broker connection lost");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(err) => {
                    tracing::error!(error = %err, "consumer failed");
                    restore(shared.hold.close()).await;
                    drain(&mut running).await;
                    return Err(err.into());
                }
            }
            while let Some(done) = running.try_join_next() {
                report(done);
            }
        }

        tracing::info!(
            running = running.len(),
            "shutting down: no new messages; finishing running tasks"
        );
        // Hand back what was fetched but not given to a task, then what waits for its eta,
        // its rate-limit turn or a slot (a pipeline that would hold a message from now on
        // hands it back itself). Restored last, the held ones end up first in the queue.
        let held = shared.hold.close();
        if let Err(err) = consumer.close().await {
            tracing::error!(error = %err, "could not hand back reserved messages");
        }
        restore(held).await;
        drain(&mut running).await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Aborts the consume loop's task when [`Worker::run`]'s future is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), crate::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        // A no-op once the loop has ended.
        self.0.abort();
    }
}

/// Hand held messages back to the broker, the last first (a restore puts a message at the
/// front of its queue), a few at a time.
async fn restore(held: Vec<hold::Held>) {
    const AT_ONCE: usize = 64;
    let count = held.len();
    let mut restoring = JoinSet::new();
    for held in held.into_iter().rev() {
        if restoring.len() >= AT_ONCE {
            drain_one(&mut restoring).await;
        }
        restoring.spawn(async move {
            if let Err(err) = held.into_delivery().restore().await {
                tracing::error!(error = %err, "could not hand back a held message");
            }
        });
    }
    drain(&mut restoring).await;
    if count > 0 {
        tracing::info!(count, "held messages handed back");
    }
}

async fn drain_one(running: &mut JoinSet<()>) {
    if let Some(done) = running.join_next().await {
        report(done);
    }
}

async fn drain(running: &mut JoinSet<()>) {
    while let Some(done) = running.join_next().await {
        report(done);
    }
}

fn report(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done {
        // The pipeline itself catches task panics; reaching this is a bug in the pipeline.
        tracing::error!(error = %err, "message pipeline aborted");
    }
}
