//! The `celeriac` command line against a real Redis (database 0, queues of its own) and a
//! worker running the tasks below in this process: what it prints and its exit codes.

use celeriac::task::TaskError;
use celeriac::worker::{Worker, WorkerConfig};
use std::process::Output;
use std::time::Duration;

const REDIS: &str = "redis://127.0.0.1:6379/0";

#[celeriac::task(name = "cli.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[celeriac::task(name = "cli.fail")]
async fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::value_error(message))
}

/// Run `celeriac ARGS` with the test's broker and backend; `stdin` is its input.
async fn celeriac(args: &[&str], stdin: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .args(args)
        .env("CELERY_BROKER_URL", REDIS)
        .env("CELERY_RESULT_BACKEND", REDIS)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run celeriac");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("celeriac did not finish")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_result_and_purge_print_what_they_should() {
    let queue = format!("cli-{}", uuid::Uuid::new_v4().simple());
    let worker = Worker::connect(WorkerConfig {
        broker_url: REDIS.into(),
        result_backend: Some(REDIS.into()),
        queues: vec![queue.clone()],
        concurrency: 2,
        ..WorkerConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("Redis must run at 127.0.0.1:6379: {e}"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));

    // call --wait: the value as JSON on stdout, exit 0.
    let out = celeriac(
        &[
            "call", "cli.add", "--args", "[2, 3]", "-Q", &queue, "--wait",
        ],
        "",
    )
    .await;
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "5"),
        "{}",
        text(&out.stderr)
    );
    let out = celeriac(
        &[
            "call",
            "cli.add",
            "--kwargs",
            r#"{"x": 40, "y": 2}"#,
            "-Q",
            &queue,
            "--serializer",
            "msgpack",
            "--wait",
        ],
        "",
    )
    .await;
    assert_eq!(text(&out.stdout), "42", "{}", text(&out.stderr));

    // A failure: `ExcType: message` on stderr, exit 1, nothing on stdout.
    let out = celeriac(
        &[
            "call",
            "cli.fail",
            "--args",
            r#"["boom"]"#,
            "-Q",
            &queue,
            "--wait",
        ],
        "",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "ValueError: boom");
    assert_eq!(text(&out.stdout), "");

    // call without --wait prints the id; result reads it (waiting for it if asked).
    let out = celeriac(&["call", "cli.add", "--args", "[1, 1]", "-Q", &queue], "").await;
    let id = text(&out.stdout);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "an id, not {id:?}");
    let out = celeriac(&["result", &id, "--wait", "--timeout", "60"], "").await;
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "2")
    );
    let out = celeriac(&["result", &id], "").await;
    assert_eq!(text(&out.stdout), "2");

    // Nobody consumes this queue: a timeout is exit 3, a pending result too.
    let idle = format!("cli-idle-{}", uuid::Uuid::new_v4().simple());
    let out = celeriac(
        &[
            "call",
            "cli.add",
            "--args",
            "[1, 2]",
            "-Q",
            &idle,
            "--wait",
            "--timeout",
            "0.5",
        ],
        "",
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("TimeoutError: "),
        "{}",
        text(&out.stderr)
    );
    let out = celeriac(&["call", "cli.add", "--args", "[1, 2]", "-Q", &idle], "").await;
    let pending = text(&out.stdout);
    let out = celeriac(&["result", &pending], "").await;
    assert_eq!(
        (out.status.code(), text(&out.stderr).as_str()),
        (Some(3), "PENDING")
    );

    // purge asks first: "n" keeps the messages, -f removes them and says how many.
    let out = celeriac(&["purge", "-Q", &idle], "n\n").await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("Are you sure?"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).ends_with("Nothing purged."));
    let out = celeriac(&["purge", "-Q", &idle, "-f"], "").await;
    assert_eq!(
        text(&out.stdout),
        "Purged 2 messages from 1 known task queue."
    );
    let out = celeriac(&["purge", "-Q", &idle], "y\n").await;
    assert_eq!(
        text(&out.stdout),
        "Purged 0 messages from 1 known task queue."
    );

    // Bad input is a command-line error (2) with a clear message.
    let out = celeriac(&["call", "cli.add", "--args", "not json"], "").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--args must be a JSON list"),
        "{}",
        text(&out.stderr)
    );
    let out = celeriac(&["call"], "").await;
    assert_eq!(out.status.code(), Some(2));

    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
}
