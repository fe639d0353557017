//! Celeriac's remote control (`Client::control`, `AsyncResult::revoke`, and the command
//! line's `status`, `inspect ping`, `revoke`, `call`) against real Python Celery 5.7 workers
//! (`celery -A pytasks worker`), over Redis and over RabbitMQ.
//!
//! Redis database 7 is the broker of the Redis run and the result backend of both runs
//! (nothing is flushed: every queue and task id is new, so other users of the database do
//! not matter). RabbitMQ is the server of `CELERIAC_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/celeriac-test`) on a vhost of this file's own,
//! `<its vhost>-control`, created with `rabbitmqctl` when missing (`INTEROP_RABBITMQCTL`
//! overrides the command, as for the pytest suite): a broadcast reaches every worker of a
//! vhost, and the "no worker" checks need that no other suite's worker is there. For the
//! same reason no other test may run a Celery worker with Redis database 7 as its broker.
//! Redis, RabbitMQ, `rabbitmqctl` or the venv missing is a failure, never a skip.
//!
//! The command line's output is compared with what `celery status`, `celery inspect ping`
//! and `celery control revoke` printed in `interop-tests/vectors/control/cli.json`.

mod common;

use common::{PythonWorker, celeriac_bin};
use std::time::{Duration, Instant};

use celeriac::broker::BrokerUrl;
use celeriac::client::{BroadcastOptions, Client, ClientConfig, Control, ResultError, SendOptions};
use celeriac::protocol::TaskState;
use serde_json::{Map, Value, json};

/// The result backend of both runs and the broker of the Redis run.
const REDIS: &str = "redis://127.0.0.1:6379/7";
/// The id `celery control revoke` was captured with, so its output compares byte for byte.
const CAPTURED_REVOKE_ID: &str = "00000000-0000-4000-8000-00000000c001";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const RESULT_TIMEOUT: Duration = Duration::from_secs(60);
const PING: Duration = Duration::from_secs(1);

fn amqp_url() -> String {
    std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/celeriac-test".into())
}

/// `rabbitmqctl ARGS` (tried 3 times, 3 s apart: the shared node may be busy); its stdout.
fn rabbitmqctl(args: &[&str]) -> String {
    let command = std::env::var("INTEROP_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = command.split_whitespace();
    let program = words.next().expect("INTEROP_RABBITMQCTL is empty");
    let mut last = String::new();
    for attempt in 1..=3 {
        match std::process::Command::new(program)
            .args(words.clone())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            Ok(out) => last = String::from_utf8_lossy(&out.stderr).into_owned(),
            Err(e) => last = e.to_string(),
        }
        if attempt < 3 {
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    panic!("RabbitMQ is required: {command} {args:?} failed: {last}");
}

/// Percent-encode a URL component (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The URL of this file's own vhost (see the module documentation), created if missing.
fn control_amqp_url() -> String {
    let base = amqp_url();
    let Ok(BrokerUrl::Amqp(u)) = BrokerUrl::parse(&base) else {
        panic!("CELERIAC_TEST_AMQP_URL is not an AMQP URL: {base}");
    };
    let vhost = if u.vhost == "/" {
        "celeriac-control".to_owned()
    } else {
        format!("{}-control", u.vhost)
    };
    let known = rabbitmqctl(&["-q", "list_vhosts", "name"]);
    if !known.lines().any(|l| l.trim() == vhost) {
        rabbitmqctl(&["add_vhost", &vhost]);
    }
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        &vhost,
        &u.username,
        ".*",
        ".*",
        ".*",
    ]);
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    format!(
        "{}://{}:{}@{host}:{}/{}",
        if u.tls { "amqps" } else { "amqp" },
        encode(&u.username),
        encode(&u.password),
        u.port,
        encode(&vhost)
    )
}

/// What Celery's command line printed (`cli.json`), with `node` for its worker's name.
fn celery_printed(key: &str, node: &str) -> (String, String, i32) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/control/cli.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let entry = &all[key];
    assert!(entry.is_object(), "no capture {key:?} in {path}");
    let text = |k: &str| entry[k].as_str().unwrap().replace("<NODE>", node);
    (
        text("stdout"),
        text("stderr"),
        entry["exit_code"].as_i64().unwrap() as i32,
    )
}

/// Run `celeriac ARGS` against `broker` (results in [`REDIS`]): stdout, stderr, exit code.
async fn celeriac(broker: &str, args: &[&str]) -> (String, String, i32) {
    let bin = tokio::task::spawn_blocking(celeriac_bin).await.unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&bin)
            .args(args)
            .env("CELERY_BROKER_URL", broker)
            .env("CELERY_RESULT_BACKEND", REDIS)
            .env_remove("RUST_LOG")
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("celeriac {args:?} did not finish"))
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// Wait until `worker` answers a ping addressed to it.
async fn wait_ready(control: &Control, worker: &mut PythonWorker) {
    let node = worker.node().to_owned();
    let start = Instant::now();
    loop {
        let replies = control
            .ping_nodes(std::slice::from_ref(&node), PING)
            .await
            .unwrap();
        if replies.iter().any(|(n, _)| *n == node) {
            return;
        }
        assert!(
            worker.exited().is_none(),
            "the worker exited\n{}",
            worker.log_tail()
        );
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "worker {node} never answered a ping\n{}",
            worker.log_tail()
        );
    }
}

fn sorted(mut replies: Vec<(String, Value)>) -> Vec<(String, Value)> {
    replies.sort_by(|a, b| a.0.cmp(&b.0));
    replies
}

fn pong(node: &str) -> (String, Value) {
    (node.to_owned(), json!({"ok": "pong"}))
}

async fn scenarios(broker: &str) {
    let queue = format!("control-{}", uuid::Uuid::new_v4().simple());
    let client = Client::connect(ClientConfig {
        broker_url: broker.into(),
        result_backend: Some(REDIS.into()),
        default_queue: queue.clone(),
        ..ClientConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the client cannot connect to {broker} / {REDIS}: {e}"));
    let control = client.control();

    // No worker: nothing after the timeout; the command line says so as Celery does.
    let started = Instant::now();
    let nobody = control.ping(PING).await.unwrap();
    assert!(nobody.is_empty(), "no worker should answer: {nobody:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "returned after {:?}, before the timeout",
        started.elapsed()
    );
    for (args, captured) in [
        (&["status"][..], "no worker: celery -A pytasks status"),
        (
            &["inspect", "ping"][..],
            "no worker: celery -A pytasks inspect ping",
        ),
        (
            &["revoke", CAPTURED_REVOKE_ID][..],
            "no worker: celery -A pytasks control revoke 00000000-0000-4000-8000-00000000c001",
        ),
    ] {
        assert_eq!(
            celeriac(broker, args).await,
            celery_printed(captured, ""),
            "celeriac {args:?} without a worker"
        );
    }

    // One worker answers ping with its name.
    let mut a = PythonWorker::start("pytasks", &queue, broker, REDIS, 4);
    wait_ready(&control, &mut a).await;
    assert_eq!(control.ping(PING).await.unwrap(), vec![pong(a.node())]);

    // Revoke: a task with a countdown is revoked before it is due; its sibling runs.
    let later = SendOptions::new().countdown(Duration::from_secs(3));
    let doomed = client
        .send_task("pytasks.add", vec![json!(1), json!(2)], Map::new(), &later)
        .await
        .unwrap();
    let sibling = client
        .send_task("pytasks.add", vec![json!(2), json!(2)], Map::new(), &later)
        .await
        .unwrap();
    doomed.revoke(false, None).await.unwrap();
    match doomed.typed::<i64>().get(RESULT_TIMEOUT).await {
        Err(ResultError::Revoked { failure, .. }) => {
            assert_eq!(failure.exc_type, "TaskRevokedError", "{failure:?}");
        }
        other => panic!("a revoked task must not run: {other:?}\n{}", a.log_tail()),
    }
    assert_eq!(doomed.state().await.unwrap(), TaskState::Revoked);
    assert_eq!(sibling.typed::<i64>().get(RESULT_TIMEOUT).await.unwrap(), 4);
    // Several at once through Control::revoke (a list of ids, terminate, a signal).
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(
            client
                .send_task("pytasks.add", vec![json!(i), json!(10)], Map::new(), &later)
                .await
                .unwrap(),
        );
    }
    control
        .revoke(&[sent[0].id(), sent[1].id()], true, Some("SIGKILL"))
        .await
        .unwrap();
    for r in &sent[..2] {
        assert!(
            matches!(
                r.typed::<i64>().get(RESULT_TIMEOUT).await,
                Err(ResultError::Revoked { .. })
            ),
            "task {} was revoked",
            r.id()
        );
        assert_eq!(r.state().await.unwrap(), TaskState::Revoked);
    }
    assert_eq!(
        sent[2].typed::<i64>().get(RESULT_TIMEOUT).await.unwrap(),
        12
    );

    // The command line with one worker prints what Celery's prints.
    for (args, captured) in [
        (&["status"][..], "one worker: celery -A pytasks status"),
        (
            &["inspect", "ping"][..],
            "one worker: celery -A pytasks inspect ping",
        ),
        (
            &["revoke", CAPTURED_REVOKE_ID][..],
            "one worker: celery -A pytasks control revoke 00000000-0000-4000-8000-00000000c001",
        ),
    ] {
        assert_eq!(
            celeriac(broker, args).await,
            celery_printed(captured, a.node()),
            "celeriac {args:?} with one worker"
        );
    }
    let (out, err, code) = celeriac(
        broker,
        &[
            "call",
            "pytasks.add",
            "--args",
            "[2,3]",
            "-Q",
            &queue,
            "--wait",
        ],
    )
    .await;
    assert_eq!((out.as_str(), err.as_str(), code), ("5\n", "", 0));
    let (out, err, code) = celeriac(
        broker,
        &[
            "call",
            "pytasks.fail",
            "--args",
            r#"["boom"]"#,
            "-Q",
            &queue,
            "--wait",
        ],
    )
    .await;
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("", "ValueError: boom\n", 1)
    );
    // `celeriac revoke` really revokes.
    let pending = client
        .send_task("pytasks.add", vec![json!(5), json!(5)], Map::new(), &later)
        .await
        .unwrap();
    let (out, _, code) = celeriac(broker, &["revoke", pending.id()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("flagged as revoked"), "{out}");
    assert!(matches!(
        pending.typed::<i64>().get(RESULT_TIMEOUT).await,
        Err(ResultError::Revoked { .. })
    ));

    // Two workers: both answer; a destination limits it to one, which ends the wait early.
    let mut b = PythonWorker::start("pytasks", &queue, broker, REDIS, 2);
    wait_ready(&control, &mut b).await;
    assert_eq!(
        sorted(control.ping(PING).await.unwrap()),
        sorted(vec![pong(a.node()), pong(b.node())])
    );
    let started = Instant::now();
    let only_b = control
        .ping_nodes(&[b.node().to_owned()], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(only_b, vec![pong(b.node())]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the one awaited reply should end the wait ({:?})",
        started.elapsed()
    );
    // Without the limit, the destination alone still decides who answers.
    let only_a = control
        .broadcast(
            "ping",
            Map::new(),
            &BroadcastOptions::new()
                .reply(true)
                .timeout(PING)
                .destination([a.node()])
                .limit(5),
        )
        .await
        .unwrap();
    assert_eq!(only_a, vec![pong(a.node())]);
    let (out, err, code) = celeriac(broker, &["status"]).await;
    assert_eq!((err.as_str(), code), ("", 0));
    let mut lines: Vec<&str> = out.lines().collect();
    lines[..2].sort_unstable();
    let mut want = [
        format!("->  {}: OK", a.node()),
        format!("->  {}: OK", b.node()),
    ];
    want.sort();
    assert_eq!(lines, [&want[0], &want[1], "", "2 nodes online."]);
    let (out, _, code) = celeriac(broker, &["inspect", "ping", "-d", b.node()]).await;
    assert_eq!(
        (out, code),
        (
            format!("->  {}: OK\n        pong\n\n1 node online.\n", b.node()),
            0
        )
    );
    drop(b);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_control_of_python_workers_over_redis() {
    scenarios(REDIS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_control_of_python_workers_over_rabbitmq() {
    let url = tokio::task::spawn_blocking(control_amqp_url).await.unwrap();
    scenarios(&url).await;
}
