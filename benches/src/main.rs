//! `celeriac-bench`: the Rust tools of the benchmark harness (`benches/run.py`).
//!
//! - `publish`: pre-fills a queue with Celery-identical task messages as fast as the broker
//!   takes them (Redis: pipelined `LPUSH`es of kombu envelopes; RabbitMQ: publisher confirms
//!   awaited per batch), the same publisher for every worker measured.
//! - `raw`: the broker's limit, a consumer that only takes and acknowledges messages the way
//!   the transport requires (Redis: kombu's `unacked` / `unacked_index` bookkeeping; RabbitMQ:
//!   explicit acks within a prefetch window), optionally answering each task with a SUCCESS
//!   in the Redis result backend (the "raw responder", the floor of a round trip).
//! - `rtt`: Celeriac's own client calling `interop.add(2, 3)` and waiting for the result,
//!   one call after the other, printing every latency.
//!
//! Every command prints one JSON object on stdout for the harness to read.

// The interop worker's allocator and options: the raw limit runs on what Celeriac runs on.
#[path = "../../interop-tests/src/bin/interop-worker/allocator.rs"]
mod allocator;

mod amqp_fields;
mod publish;
mod raw;
mod rtt;

use clap::{Parser, Subcommand};

/// The benchmark harness's tools.
#[derive(Parser)]
#[command(name = "celeriac-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pre-fill a queue with task messages.
    Publish(publish::Args),
    /// Consume (and acknowledge) as fast as the transport allows, until SIGTERM or SIGINT.
    Raw(raw::Args),
    /// Round trips of Celeriac's client: send `interop.add(2, 3)`, wait for 5, repeat.
    Rtt(rtt::Args),
}

/// The id of the `i`-th task of a run: a UUID whose first group is the run's prefix, so the
/// harness knows every id (to check and delete the results) without being told them.
pub fn task_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-0000-4000-8000-{i:012x}")
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Each tool is one sequential loop: a current-thread runtime keeps them lean and leaves
    // the machine's cores to the broker (lapin runs its own I/O thread).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::Publish(args) => publish::run(args).await,
            Command::Raw(args) => raw::run(args).await,
            Command::Rtt(args) => rtt::run(args).await,
        }
    })
}
