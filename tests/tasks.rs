//! `#[task]` end to end: tasks defined with the macro, found through the registry and run
//! with `task::call`, the way the worker pipeline runs them.

use celeriac::registry::{Registry, RegistryError, Runner, TaskEntry, TaskOptions};
use celeriac::task::{ExcType, Invocation, TaskError, TaskResult};
use celeriac::{Request, task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

// ---- the tasks ------------------------------------------------------------------------

#[task(name = "t.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// A plain fn with an optional parameter and the default name.
#[task]
fn concat(parts: Vec<String>, sep: Option<String>) -> String {
    parts.join(&sep.unwrap_or_default())
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Point {
    x: f64,
    y: f64,
}

#[task(name = "t.norm")]
async fn norm(p: Point, scale: Option<f64>) -> Point {
    let s = scale.unwrap_or(1.0);
    Point {
        x: p.x * s,
        y: p.y * s,
    }
}

#[task(name = "t.whoami")]
async fn whoami(request: &Request, r#type: String) -> Value {
    json!({
        "id": request.id,
        "hostname": request.hostname,
        "retries": request.retries,
        "type": r#type,
    })
}

#[task(name = "t.fail")]
async fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::value_error(message))
}

#[derive(Debug)]
struct NotFound(String);
impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no such key: {}", self.0)
    }
}
impl ExcType for NotFound {
    fn exc_type(&self) -> &str {
        "KeyError"
    }
}

#[task(name = "t.lookup")]
fn lookup(key: String) -> Result<i64, NotFound> {
    if key == "one" {
        Ok(1)
    } else {
        Err(NotFound(key))
    }
}

#[task(name = "t.parse")]
async fn parse(text: String) -> Result<i64, TaskError> {
    Ok(text.trim().parse::<i64>()?)
}

#[task(name = "t.boxed")]
fn boxed(fail: bool) -> Result<u8, Box<dyn std::error::Error + Send + Sync>> {
    if fail {
        Err("boxed failure".into())
    } else {
        Ok(7)
    }
}

#[task(name = "t.panic_async")]
async fn panic_async() -> i64 {
    panic!("async boom {}", 42)
}

#[task(name = "t.panic_blocking")]
fn panic_blocking() {
    panic!("blocking boom")
}

#[task(name = "t.bad_result")]
fn bad_result() -> BTreeMap<Vec<u8>, i32> {
    BTreeMap::from([(vec![1], 1)])
}

#[task(name = "t.blocking_sleep")]
fn blocking_sleep(seconds: f64) -> f64 {
    std::thread::sleep(Duration::from_secs_f64(seconds));
    seconds
}

/// Succeeds only off the runtime's worker threads: `block_on` panics on a worker thread.
#[task(name = "t.on_blocking_pool")]
fn on_blocking_pool() -> i64 {
    tokio::runtime::Handle::current().block_on(async { 42 })
}

#[task(name = "t.flaky", acks_late = true)]
async fn flaky(failures: u32, request: &Request) -> Result<u32, TaskError> {
    if request.retries < failures {
        return Err(TaskError::retry().countdown(Duration::from_millis(100)));
    }
    Ok(request.retries)
}

static SLOW_FLAG_REACHED: AtomicBool = AtomicBool::new(false);

#[task(name = "t.slow_flag")]
async fn slow_flag() {
    tokio::time::sleep(Duration::from_millis(200)).await;
    SLOW_FLAG_REACHED.store(true, Ordering::SeqCst);
}

#[task(name = "t.noop")]
async fn noop() {}

mod inner {
    use celeriac::task;

    #[task]
    pub fn ping() -> &'static str {
        "pong"
    }
}

// ---- helpers --------------------------------------------------------------------------

fn registry() -> Registry {
    Registry::from_inventory().expect("no duplicate task names in this test binary")
}

fn request(name: &str) -> Request {
    Request {
        id: "task-id-1".into(),
        name: name.into(),
        hostname: "celeriac@test".into(),
        ..Default::default()
    }
}

async fn run(name: &str, args: Value, kwargs: Value) -> TaskResult {
    run_with(request(name), args, kwargs).await
}

async fn run_with(request: Request, args: Value, kwargs: Value) -> TaskResult {
    let entry = registry()
        .get(&request.name)
        .unwrap_or_else(|| panic!("{} is not registered", request.name));
    let args = match args {
        Value::Array(a) => a,
        other => panic!("args must be a list, got {other}"),
    };
    let kwargs: Map<String, Value> = kwargs.as_object().cloned().unwrap_or_default();
    task::call(entry, Invocation::new(args, kwargs, request)).await
}

/// The `TypeError` text of a failed run.
fn type_error(result: TaskResult) -> String {
    let err = result.expect_err("the call should fail");
    assert_eq!(err.exc_type(), "TypeError", "{err}");
    assert_eq!(err.exc_module(), "builtins");
    err.exc_message()[0]
        .as_str()
        .expect("a string message")
        .to_owned()
}

// ---- registry -------------------------------------------------------------------------

#[test]
fn every_task_is_registered_under_its_name() {
    let reg = registry();
    let names = reg.names();
    for name in [
        "t.add",
        "tasks.concat",
        "t.norm",
        "t.whoami",
        "t.fail",
        "t.lookup",
        "t.parse",
        "t.boxed",
        "t.panic_async",
        "t.panic_blocking",
        "t.bad_result",
        "t.blocking_sleep",
        "t.on_blocking_pool",
        "t.flaky",
        "t.noop",
        "tasks.inner.ping",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn entries_record_runner_kind_and_options() {
    let reg = registry();
    assert!(matches!(reg.get("t.add").unwrap().runner, Runner::Async(_)));
    assert!(matches!(
        reg.get("tasks.concat").unwrap().runner,
        Runner::Blocking(_)
    ));
    let flaky = reg.get("t.flaky").unwrap();
    assert_eq!(flaky.options.acks_late, Some(true));
    assert_eq!(flaky.fn_name, "flaky");
    assert_eq!(reg.get("t.add").unwrap().options, TaskOptions::DEFAULT);
    let concat = reg.get("tasks.concat").unwrap();
    assert_eq!(concat.name, None);
    assert_eq!(concat.module_path, "tasks");
    assert!(reg.get("t.unknown").is_none());
}

fn dummy(_: Invocation) -> TaskResult {
    Ok(Value::Null)
}

static FIRST: TaskEntry = TaskEntry {
    name: Some("dup.task"),
    module_path: "a",
    fn_name: "one",
    runner: Runner::Blocking(dummy),
    options: TaskOptions::DEFAULT,
};
static SECOND: TaskEntry = TaskEntry {
    name: None,
    module_path: "dup",
    fn_name: "task",
    runner: Runner::Blocking(dummy),
    options: TaskOptions::DEFAULT,
};
static OTHER: TaskEntry = TaskEntry {
    name: None,
    module_path: "x::y",
    fn_name: "z",
    runner: Runner::Blocking(dummy),
    options: TaskOptions::DEFAULT,
};

#[test]
fn two_tasks_with_one_name_are_a_startup_error() {
    // An explicit name and a default name that collide.
    let err = Registry::from_entries([&FIRST, &OTHER, &SECOND]).unwrap_err();
    assert_eq!(
        err,
        RegistryError::Duplicate {
            name: "dup.task".into()
        }
    );
    assert!(err.to_string().contains("`dup.task`"), "{err}");
    let ok = Registry::from_entries([&FIRST, &OTHER]).unwrap();
    assert_eq!(ok.names(), ["dup.task", "x.y.z"]);
}

// ---- binding --------------------------------------------------------------------------

#[tokio::test]
async fn binds_by_position_and_by_keyword() {
    assert_eq!(
        run("t.add", json!([2, 3]), json!({})).await.unwrap(),
        json!(5)
    );
    assert_eq!(
        run("t.add", json!([]), json!({"y": 3, "x": 2}))
            .await
            .unwrap(),
        json!(5)
    );
    assert_eq!(
        run("t.add", json!([2]), json!({"y": 40})).await.unwrap(),
        json!(42)
    );
}

#[tokio::test]
async fn option_parameters_may_be_left_out() {
    assert_eq!(
        run("tasks.concat", json!([["a", "b"]]), json!({}))
            .await
            .unwrap(),
        json!("ab")
    );
    assert_eq!(
        run("tasks.concat", json!([["a", "b"], "-"]), json!({}))
            .await
            .unwrap(),
        json!("a-b")
    );
    assert_eq!(
        run("tasks.concat", json!([["a", "b"]]), json!({"sep": "+"}))
            .await
            .unwrap(),
        json!("a+b")
    );
    assert_eq!(
        run("tasks.concat", json!([["a", "b"], null]), json!({}))
            .await
            .unwrap(),
        json!("ab")
    );
}

#[tokio::test]
async fn struct_parameters_and_results() {
    let out = run(
        "t.norm",
        json!([{"x": 1.5, "y": -2.0}]),
        json!({"scale": 2}),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"x": 3.0, "y": -4.0}));
}

#[tokio::test]
async fn request_context_and_raw_identifier_keyword() {
    let mut req = request("t.whoami");
    req.retries = 3;
    let out = run_with(req, json!([]), json!({"type": "kw"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"id": "task-id-1", "hostname": "celeriac@test", "retries": 3, "type": "kw"})
    );
    // `&Request` is not an argument: one positional fills `type`.
    assert_eq!(
        run("t.whoami", json!(["pos"]), json!({})).await.unwrap()["type"],
        json!("pos")
    );
}

#[tokio::test]
async fn wrong_arguments_are_type_errors_with_python_messages() {
    assert_eq!(
        type_error(run("t.add", json!([1]), json!({})).await),
        "add() missing 1 required positional argument: 'y'"
    );
    assert_eq!(
        type_error(run("t.add", json!([1, 2, 3]), json!({})).await),
        "add() takes 2 positional arguments but 3 were given"
    );
    assert_eq!(
        type_error(run("t.add", json!([1, 2]), json!({"z": 1})).await),
        "add() got an unexpected keyword argument 'z'"
    );
    assert_eq!(
        type_error(run("t.add", json!([1]), json!({"x": 1})).await),
        "add() got multiple values for argument 'x'"
    );
    assert_eq!(
        type_error(run("tasks.concat", json!([[], "", 1]), json!({})).await),
        "concat() takes from 1 to 2 positional arguments but 3 were given"
    );
    assert_eq!(
        type_error(run("t.noop", json!([1]), json!({})).await),
        "noop() takes 0 positional arguments but 1 was given"
    );
    assert_eq!(
        type_error(run("t.add", json!(["two", 3]), json!({})).await),
        "add() argument 'x' could not be read as i64: invalid type: string \"two\", expected i64"
    );
    assert_eq!(
        type_error(run("tasks.concat", json!([["a", 1]]), json!({})).await),
        "concat() argument 'parts' could not be read as Vec<String>: invalid type: integer `1`, expected a string"
    );
    let msg = type_error(run("t.norm", json!([{"x": 1}]), json!({})).await);
    assert_eq!(
        msg,
        "norm() argument 'p' could not be read as Point: missing field `y`"
    );
    // Also on the blocking path.
    assert_eq!(
        type_error(run("t.lookup", json!([]), json!({})).await),
        "lookup() missing 1 required positional argument: 'key'"
    );
}

// ---- outcomes -------------------------------------------------------------------------

#[tokio::test]
async fn errors_keep_their_python_class() {
    let err = run("t.fail", json!(["boom"]), json!({})).await.unwrap_err();
    assert_eq!(
        err.to_exception_value(),
        json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"})
    );
    assert!(!err.is_retry());

    let err = run("t.lookup", json!(["two"]), json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_exception_value(),
        json!({"exc_type": "KeyError", "exc_message": ["no such key: two"], "exc_module": "builtins"})
    );
    assert_eq!(
        run("t.lookup", json!(["one"]), json!({})).await.unwrap(),
        json!(1)
    );

    // `?` on a std error: RuntimeError with the error's text, the Rust type in the traceback.
    let err = run("t.parse", json!(["x1"]), json!({})).await.unwrap_err();
    assert_eq!(err.exc_type(), "RuntimeError");
    assert_eq!(err.exc_message(), &[json!("invalid digit found in string")]);
    assert!(err.traceback().unwrap().contains("ParseIntError"));
    assert_eq!(
        run("t.parse", json!([" 12 "]), json!({})).await.unwrap(),
        json!(12)
    );

    let err = run("t.boxed", json!([true]), json!({})).await.unwrap_err();
    assert_eq!(err.exc_type(), "RuntimeError");
    assert_eq!(err.exc_message(), &[json!("boxed failure")]);
    assert_eq!(
        run("t.boxed", json!([false]), json!({})).await.unwrap(),
        json!(7)
    );
}

#[tokio::test]
async fn unserializable_results_are_encode_errors() {
    let err = run("t.bad_result", json!([]), json!({})).await.unwrap_err();
    assert_eq!(err.exc_type(), "EncodeError");
    assert_eq!(err.exc_module(), "kombu.exceptions");
}

#[tokio::test]
async fn unit_results_are_null() {
    assert_eq!(
        run("t.noop", json!([]), json!({})).await.unwrap(),
        Value::Null
    );
}

#[tokio::test]
async fn panics_become_failures() {
    let err = run("t.panic_async", json!([]), json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_exception_value(),
        json!({"exc_type": "RustPanic", "exc_message": ["async boom 42"], "exc_module": "celeriac"})
    );
    let err = run("t.panic_blocking", json!([]), json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_exception_value(),
        json!({"exc_type": "RustPanic", "exc_message": ["blocking boom"], "exc_module": "celeriac"})
    );
    // The runtime is still fine afterwards.
    assert_eq!(
        run("t.add", json!([1, 1]), json!({})).await.unwrap(),
        json!(2)
    );
}

#[tokio::test]
async fn retry_requests_come_back_as_errors_of_kind_retry() {
    let err = run("t.flaky", json!([2]), json!({})).await.unwrap_err();
    let retry = err.retry_request().expect("a retry request");
    assert_eq!(retry.countdown, Some(Duration::from_millis(100)));
    let mut req = request("t.flaky");
    req.retries = 2;
    assert_eq!(
        run_with(req, json!([2]), json!({})).await.unwrap(),
        json!(2)
    );
}

// ---- where code runs ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_functions_run_on_the_blocking_pool() {
    assert_eq!(
        run("t.on_blocking_pool", json!([]), json!({}))
            .await
            .unwrap(),
        json!(42)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocking_task_does_not_stall_the_runtime() {
    // One runtime thread: if the plain fn ran on it, the ticker could not tick meanwhile.
    let started = Instant::now();
    let sleeper = tokio::spawn(run("t.blocking_sleep", json!([0.4]), json!({})));
    let mut ticks = 0;
    while !sleeper.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ticks += 1;
    }
    assert_eq!(sleeper.await.unwrap().unwrap(), json!(0.4));
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        ticks >= 10,
        "the runtime stalled: only {ticks} ticks during a 400 ms blocking task"
    );
}

#[tokio::test]
async fn dropping_the_call_aborts_an_async_task() {
    let entry = registry().get("t.slow_flag").unwrap();
    let inv = Invocation::new(vec![], Map::new(), request("t.slow_flag"));
    // A time limit drops the call future: the spawned task must stop with it.
    let limited = tokio::time::timeout(Duration::from_millis(20), task::call(entry, inv)).await;
    assert!(limited.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !SLOW_FLAG_REACHED.load(Ordering::SeqCst),
        "the task kept running after the call was dropped"
    );
}

// ---- the user's functions stay callable ---------------------------------------------------

#[tokio::test]
async fn user_functions_are_still_callable_directly() {
    assert_eq!(add(2, 3).await, 5);
    assert_eq!(
        concat(vec!["a".into(), "b".into()], Some(",".into())),
        "a,b"
    );
    assert_eq!(lookup("one".into()).unwrap(), 1);
    assert_eq!(
        norm(Point { x: 1.0, y: 1.0 }, None).await,
        Point { x: 1.0, y: 1.0 }
    );
    assert_eq!(
        whoami(&request("x"), "t".into()).await["id"],
        json!("task-id-1")
    );
    assert_eq!(inner::ping(), "pong");
    assert!(parse("nope".into()).await.is_err());
}
