//! `celeriac`: call tasks, read results, purge queues and remote-control workers from the
//! command line.
//!
//! Thin on purpose: it parses arguments and calls [`celeriac::client`]. The broker and
//! backend come from `--broker` / `--result-backend` or `CELERY_BROKER_URL` /
//! `CELERY_RESULT_BACKEND`, as Celery's own command line takes them. `status`, `inspect`
//! and `revoke` print what `celery status`, `celery inspect` and `celery control revoke`
//! print.
//!
//! Exit codes: 0 done; 1 the task failed or was revoked; 2 bad command line; 3 no result
//! within the timeout (or not ready, without `--wait`); 4 the broker or backend failed;
//! 69 no worker replied (Celery's `EX_UNAVAILABLE`).

use celeriac::client::{
    BroadcastOptions, Client, ClientConfig, NodeReply, ResultError, SendOptions,
};
use celeriac::protocol::Serializer;
use celeriac::protocol::kombu::{py_repr, to_python_json};
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
    /// Show the workers that are online (they answer a ping), like `celery status`.
    Status {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Ask the workers, like `celery inspect COMMAND`: ping, active, reserved, scheduled,
    /// revoked, registered, stats, clock, report, active_queues, query_task ID..., ...
    Inspect {
        /// The inspect command.
        command: String,
        /// Its arguments (e.g. task ids for query_task).
        args: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Revoke tasks on every worker, like `celery control revoke`: they will not run them.
    Revoke {
        /// The task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Also kill the process running a task that has started.
        #[arg(long)]
        terminate: bool,
        /// The signal for --terminate (e.g. SIGKILL; the worker's default is SIGTERM).
        #[arg(long)]
        signal: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
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

/// Celery's remote-control options.
#[derive(clap::Args)]
struct RemoteArgs {
    /// Timeout in seconds waiting for a reply.
    #[arg(short = 't', long, default_value_t = 1.0)]
    timeout: f64,
    /// Comma-separated node names to send to (default: every worker).
    #[arg(short = 'd', long, value_delimiter = ',')]
    destination: Vec<String>,
    /// Print the replies as JSON.
    #[arg(short = 'j', long)]
    json: bool,
}

impl RemoteArgs {
    fn options(&self) -> anyhow::Result<BroadcastOptions> {
        let mut opts = BroadcastOptions::new()
            .reply(true)
            .timeout(seconds(self.timeout, "--timeout")?);
        if !self.destination.is_empty() {
            opts = opts.destination(self.destination.iter().cloned());
        }
        Ok(opts)
    }
}

const FAILED: u8 = 1;
const USAGE: u8 = 2;
const TIMED_OUT: u8 = 3;
const BROKEN: u8 = 4;
/// Celery's `EX_UNAVAILABLE`: no worker replied.
const UNAVAILABLE: u8 = 69;

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
            Ok(report(result.get(seconds(timeout, "--timeout")?).await))
        }
        Command::Result { id, wait, timeout } => {
            let result = client.result(&id);
            if wait {
                return Ok(report(result.get(seconds(timeout, "--timeout")?).await));
            }
            match result.poll().await? {
                Some(outcome) => Ok(report(outcome)),
                None => {
                    eprintln!("{}", result.state().await?.as_str());
                    Ok(TIMED_OUT)
                }
            }
        }
        Command::Status { remote } => {
            let replies = client
                .control()
                .broadcast("ping", Map::new(), &remote.options()?)
                .await?;
            if replies.is_empty() {
                return Ok(no_nodes());
            }
            if remote.json {
                println!("{}", to_python_json(&Value::Object(by_node(&replies))));
            } else {
                say_replies(&replies, false);
            }
            let n = by_node(&replies).len();
            println!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" });
            Ok(0)
        }
        Command::Inspect {
            command,
            args,
            remote,
        } => {
            let arguments = match inspect_arguments(&command, &args) {
                Ok(a) => a,
                Err(message) => return Ok(usage(message)),
            };
            let replies = client
                .control()
                .broadcast(&command, arguments, &remote.options()?)
                .await?;
            if replies.is_empty() {
                return Ok(no_nodes());
            }
            if remote.json {
                println!("{}", to_python_json(&Value::Object(by_node(&replies))));
                return Ok(0);
            }
            say_replies(&replies, true);
            let n = by_node(&replies).len();
            println!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" });
            Ok(0)
        }
        Command::Revoke {
            ids,
            terminate,
            signal,
            remote,
        } => {
            // What `celery control revoke ID...` sends, plus the options of
            // `app.control.revoke` when given.
            let mut arguments = Map::new();
            arguments.insert("task_id".into(), Value::from(ids));
            if terminate {
                arguments.insert("terminate".into(), Value::Bool(true));
            }
            if let Some(sig) = signal {
                arguments.insert("signal".into(), Value::from(sig));
            }
            let replies = client
                .control()
                .broadcast("revoke", arguments, &remote.options()?)
                .await?;
            if replies.is_empty() {
                return Ok(no_nodes());
            }
            if remote.json {
                let list = replies
                    .iter()
                    .map(|(node, reply)| {
                        let mut one = Map::new();
                        one.insert(node.clone(), reply.clone());
                        Value::Object(one)
                    })
                    .collect();
                println!("{}", to_python_json(&Value::Array(list)));
            } else {
                say_replies(&replies, true);
            }
            Ok(0)
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

/// Celery's error when nobody answered.
fn no_nodes() -> u8 {
    eprintln!("Error: No nodes replied within time constraint");
    UNAVAILABLE
}

/// The replies by node, later ones winning (Celery's `flatten_reply`).
fn by_node(replies: &[NodeReply]) -> Map<String, Value> {
    replies.iter().cloned().collect()
}

/// One `->  node: OK` line per reply, and with `show_reply` the reply indented below it
/// (Celery's `_say_remote_command_reply`).
fn say_replies(replies: &[NodeReply], show_reply: bool) {
    for (node, reply) in replies {
        let (status, body) = pretty(reply);
        println!("->  {node}: {status}");
        if show_reply {
            println!("{}", indent(&body, 4));
        }
    }
}

/// Celery's `text.indent`: every line (split on `\n`) prefixed with `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.split('\n')
        .map(|line| format!("{pad}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Celery's `CLIContext.pretty`: a status word and the reply as text.
fn pretty(value: &Value) -> (&'static str, String) {
    match value {
        Value::Array(items) if items.is_empty() => ("OK", "- empty -".into()),
        Value::Array(items) => (
            "OK",
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => format!("* {s}"),
                    other => format!("* {}", py_repr(other)),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::Object(map) if map.contains_key("ok") => ("OK", indent(&pretty(&map["ok"]).1, 4)),
        Value::Object(map) if map.contains_key("error") => {
            ("ERROR", indent(&pretty(&map["error"]).1, 4))
        }
        Value::Object(_) => ("OK", json_indented(value, 0)),
        Value::String(s) => ("OK", s.clone()),
        other => ("OK", py_repr(other)),
    }
}

/// Python's `json.dumps(value, sort_keys=True, indent=4)`.
fn json_indented(value: &Value, level: usize) -> String {
    let pad = |l: usize| " ".repeat(4 * l);
    match value {
        Value::Array(items) if !items.is_empty() => {
            let inner: Vec<String> = items
                .iter()
                .map(|v| format!("{}{}", pad(level + 1), json_indented(v, level + 1)))
                .collect();
            format!("[\n{}\n{}]", inner.join(",\n"), pad(level))
        }
        Value::Object(map) if !map.is_empty() => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}{}: {}",
                        pad(level + 1),
                        to_python_json(&Value::from(k.as_str())),
                        json_indented(&map[k], level + 1)
                    )
                })
                .collect();
            format!("{{\n{}\n{}}}", inner.join(",\n"), pad(level))
        }
        other => to_python_json(other),
    }
}

/// How an inspect command's positional arguments are read (Celery's `Panel.meta` for
/// the inspect commands of Celery 5.7).
enum ArgKind {
    Str,
    Int,
    Bool,
}

/// An inspect command: its name, positional arguments and variadic argument.
struct InspectCommand {
    name: &'static str,
    args: &'static [(&'static str, ArgKind)],
    variadic: Option<&'static str>,
}

const fn plain(name: &'static str) -> InspectCommand {
    InspectCommand {
        name,
        args: &[],
        variadic: None,
    }
}

/// Celery 5.7's visible inspect commands.
const INSPECT_COMMANDS: &[InspectCommand] = &[
    plain("active"),
    plain("active_queues"),
    plain("clock"),
    InspectCommand {
        name: "conf",
        args: &[("with_defaults", ArgKind::Bool)],
        variadic: None,
    },
    InspectCommand {
        name: "memdump",
        args: &[("samples", ArgKind::Int)],
        variadic: None,
    },
    plain("memsample"),
    InspectCommand {
        name: "objgraph",
        args: &[
            ("type", ArgKind::Str),
            ("num", ArgKind::Int),
            ("max_depth", ArgKind::Int),
        ],
        variadic: None,
    },
    plain("ping"),
    InspectCommand {
        name: "query_task",
        args: &[],
        variadic: Some("ids"),
    },
    InspectCommand {
        name: "registered",
        args: &[],
        variadic: Some("taskinfoitems"),
    },
    plain("report"),
    plain("reserved"),
    plain("revoked"),
    plain("scheduled"),
    plain("stats"),
];

/// Celery's `_compile_arguments` for an inspect command.
fn inspect_arguments(command: &str, args: &[String]) -> Result<Map<String, Value>, String> {
    let Some(spec) = INSPECT_COMMANDS.iter().find(|c| c.name == command) else {
        let names: Vec<&str> = INSPECT_COMMANDS.iter().map(|c| c.name).collect();
        return Err(format!(
            "Command {command} not recognized. Available inspect commands: {}",
            names.join(", ")
        ));
    };
    let mut arguments = Map::new();
    let mut rest = args.iter();
    for (name, kind) in spec.args {
        let Some(arg) = rest.next() else { break };
        let value = match kind {
            ArgKind::Str => Value::from(arg.as_str()),
            ArgKind::Int => Value::from(
                arg.parse::<i64>()
                    .map_err(|_| format!("{name} must be an integer, not {arg:?}"))?,
            ),
            ArgKind::Bool => Value::Bool(match arg.to_ascii_lowercase().as_str() {
                "y" | "yes" | "t" | "true" | "on" | "1" => true,
                "n" | "no" | "f" | "false" | "off" | "0" => false,
                _ => return Err(format!("{name} must be a boolean, not {arg:?}")),
            }),
        };
        arguments.insert((*name).into(), value);
    }
    let rest: Vec<Value> = rest.map(|a| Value::from(a.as_str())).collect();
    match spec.variadic {
        Some(name) => {
            arguments.insert((*name).into(), Value::Array(rest));
        }
        None if !rest.is_empty() => {
            return Err(format!("Command {command:?} takes no more arguments"));
        }
        None => {}
    }
    Ok(arguments)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Expected values printed by Celery 5.7's `CLIContext.pretty` and `json.dumps`.
    #[test]
    fn replies_are_pretty_printed_as_celery_does() {
        assert_eq!(pretty(&json!({"ok": "pong"})), ("OK", "    pong".into()));
        assert_eq!(
            pretty(&json!({"error": "KeyError('x')"})),
            ("ERROR", "    KeyError('x')".into())
        );
        assert_eq!(
            pretty(&json!(["a", {"k": 1}])),
            ("OK", "* a\n* {'k': 1}".into())
        );
        assert_eq!(pretty(&json!([])), ("OK", "- empty -".into()));
        assert_eq!(
            pretty(&json!({"ok": ["x", "y"]})),
            ("OK", "    * x\n    * y".into())
        );
        assert_eq!(pretty(&json!(5)), ("OK", "5".into()));
        assert_eq!(
            pretty(&json!({"clock": 3})),
            ("OK", "{\n    \"clock\": 3\n}".into())
        );
        assert_eq!(
            json_indented(
                &json!({"b": [1, {"z": null, "a": "é", "f": 1.5}], "a": {}, "c": []}),
                0
            ),
            "{\n    \"a\": {},\n    \"b\": [\n        1,\n        {\n            \"a\": \"\\u00e9\",\n            \"f\": 1.5,\n            \"z\": null\n        }\n    ],\n    \"c\": []\n}"
        );
        assert_eq!(indent("a\n\nb", 2), "  a\n  \n  b");
    }

    #[test]
    fn inspect_arguments_follow_celerys_panel() {
        assert_eq!(inspect_arguments("ping", &[]).unwrap(), Map::new());
        assert_eq!(
            Value::Object(inspect_arguments("query_task", &["a".into(), "b".into()]).unwrap()),
            json!({"ids": ["a", "b"]})
        );
        assert_eq!(
            Value::Object(inspect_arguments("objgraph", &["Request".into(), "5".into()]).unwrap()),
            json!({"type": "Request", "num": 5})
        );
        assert_eq!(
            Value::Object(inspect_arguments("conf", &["yes".into()]).unwrap()),
            json!({"with_defaults": true})
        );
        assert!(
            inspect_arguments("nope", &[])
                .unwrap_err()
                .starts_with("Command nope not recognized. Available inspect commands: active, ")
        );
        assert!(inspect_arguments("ping", &["x".into()]).is_err());
        assert!(inspect_arguments("memdump", &["many".into()]).is_err());
    }
}
