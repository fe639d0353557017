//! `celeriac`: call tasks, read results and purge queues from the command line.
//!
//! Thin on purpose: it parses arguments and calls [`celeriac::client`]. The broker and
//! backend come from `--broker` / `--result-backend` or `CELERY_BROKER_URL` /
//! `CELERY_RESULT_BACKEND`, as Celery's own command line takes them.
//!
//! Exit codes: 0 done; 1 the task failed or was revoked; 2 bad command line; 3 no result
//! within the timeout (or not ready, without `--wait`); 4 the broker or backend failed.

use celeriac::client::{Client, ClientConfig, ResultError, SendOptions};
use celeriac::protocol::Serializer;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "celeriac",
    version,
    about = "Call Celery tasks, read their results, purge queues"
)]
struct Cli {
    /// Broker URL (redis://, amqp://, amqps://).
    #[arg(
        long,
        global = true,
        env = "CELERY_BROKER_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    broker: String,
    /// Result backend URL (redis://, rpc://).
    #[arg(long = "result-backend", global = true, env = "CELERY_RESULT_BACKEND")]
    result_backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum SerializerArg {
    Json,
    Msgpack,
}

#[derive(Subcommand)]
enum Command {
    /// Send a task; print its id, or with --wait its result as JSON.
    Call {
        /// The task name, e.g. `pytasks.add`.
        name: String,
        /// Positional arguments: a JSON list.
        #[arg(long, default_value = "[]")]
        args: String,
        /// Keyword arguments: a JSON object.
        #[arg(long, default_value = "{}")]
        kwargs: String,
        /// The queue to send to (default `celery`).
        #[arg(long, short = 'Q')]
        queue: Option<String>,
        /// Run no earlier than this many seconds from now.
        #[arg(long)]
        countdown: Option<f64>,
        /// The body serializer.
        #[arg(long, value_enum, default_value = "json")]
        serializer: SerializerArg,
        /// Wait for the result and print it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Print a task's result (JSON on stdout, or its exception on stderr).
    Result {
        /// The task id.
        id: String,
        /// Wait until the task is finished.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Remove every waiting message from queues (asks first unless -f).
    Purge {
        /// The queues (comma list; default `celery`).
        #[arg(
            short = 'Q',
            long = "queues",
            value_delimiter = ',',
            default_value = "celery"
        )]
        queues: Vec<String>,
        /// Do not ask for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

const FAILED: u8 = 1;
const USAGE: u8 = 2;
const TIMED_OUT: u8 = 3;
const BROKEN: u8 = 4;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(BROKEN)
        }
    }
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("{what} must be a non-negative number of seconds, not {s}"))
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let client = Client::connect(ClientConfig {
        broker_url: cli.broker.clone(),
        result_backend: cli.result_backend.clone(),
        ..ClientConfig::default()
    })
    .await?;
    match cli.command {
        Command::Call {
            name,
            args,
            kwargs,
            queue,
            countdown,
            serializer,
            wait,
            timeout,
        } => {
            let args: Vec<Value> = match serde_json::from_str(&args) {
                Ok(a) => a,
                Err(e) => return Ok(usage(format!("--args must be a JSON list: {e}"))),
            };
            let kwargs: Map<String, Value> = match serde_json::from_str(&kwargs) {
                Ok(k) => k,
                Err(e) => return Ok(usage(format!("--kwargs must be a JSON object: {e}"))),
            };
            let mut opts = SendOptions::new().serializer(match serializer {
                SerializerArg::Json => Serializer::Json,
                SerializerArg::Msgpack => Serializer::Msgpack,
            });
            if let Some(q) = queue {
                opts = opts.queue(q);
            }
            if let Some(c) = countdown {
                opts = opts.countdown(seconds(c, "--countdown")?);
            }
            let result = client.send_task(&name, args, kwargs, &opts).await?;
            if !wait {
                println!("{}", result.id());
                return Ok(0);
            }
            Ok(report(
                result.get(seconds(timeout, "--timeout")?).await,
            ))
        }
        Command::Result { id, wait, timeout } => {
            let result = client.result(&id);
            if wait {
                return Ok(report(
                    result.get(seconds(timeout, "--timeout")?).await,
                ));
            }
            match result.poll().await? {
                Some(outcome) => Ok(report(outcome)),
                None => {
                    eprintln!("{}", result.state().await?.as_str());
                    Ok(TIMED_OUT)
                }
            }
        }
        Command::Purge { queues, force } => {
            if !force {
                eprint!(
                    "You are about to delete every waiting message in {} ({}). Are you sure? [y/N] ",
                    if queues.len() == 1 { "queue" } else { "queues" },
                    queues.join(", ")
                );
                std::io::stderr().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("Nothing purged.");
                    return Ok(0);
                }
            }
            let mut total = 0;
            for q in &queues {
                total += client.broker().purge(q).await?;
            }
            println!(
                "Purged {total} {} from {} known task {}.",
                if total == 1 { "message" } else { "messages" },
                queues.len(),
                if queues.len() == 1 { "queue" } else { "queues" }
            );
            Ok(0)
        }
    }
}

fn usage(message: String) -> u8 {
    eprintln!("error: {message}");
    USAGE
}

/// Print a result: the value as JSON on stdout, or the exception as `ExcType: message` on
/// stderr; the exit code says which.
fn report(outcome: Result<Value, ResultError>) -> u8 {
    match outcome {
        Ok(value) => {
            println!("{value}");
            0
        }
        Err(ResultError::Failed { failure, .. }) | Err(ResultError::Revoked { failure, .. }) => {
            eprintln!("{failure}");
            FAILED
        }
        Err(ResultError::Timeout { id, after }) => {
            eprintln!(
                "TimeoutError: task {id} did not finish within {} s",
                after.as_secs_f64()
            );
            TIMED_OUT
        }
        Err(other) => {
            eprintln!("error: {other}");
            BROKEN
        }
    }
}
