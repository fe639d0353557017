//! The `interop.semantics.*` tasks: one per Celery execution option the interop suite
//! checks (retries, autoretry, time limits, rate limits, results, acks, revocation), each
//! set with the same option as its twin in `python-fixtures/pyinterop.py`.
//!
//! Every task notes its runs in a log kept by this process (task id → one entry per run:
//! retries, start time, eta, redelivered), which `interop.semantics.runs` returns: how the
//! tests see that a task ran, how often, and when, even when no result is stored.

use celeriac::task;
use celeriac::task::{Request, TaskError};
use celeriac::worker::RevokedIds;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The worker's revoked-ids set, for `interop.semantics.revoke` (set once the worker is
/// connected).
pub static REVOKED: OnceLock<RevokedIds> = OnceLock::new();

/// task id → its runs in this process.
static RUNS: Mutex<Option<HashMap<String, Vec<Value>>>> = Mutex::new(None);

/// Seconds since the Unix epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Notes this run of the request's task; returns every run of that task id so far.
fn record(request: &Request) -> Vec<Value> {
    let run = json!({
        "retries": request.retries,
        "started": now(),
        "eta": request.eta.map(|eta| eta.timestamp_micros() as f64 / 1e6),
        "redelivered": request.delivery_info.redelivered,
        "hostname": request.hostname,
    });
    let mut runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let list = runs
        .get_or_insert_with(HashMap::new)
        .entry(request.id.clone())
        .or_default();
    list.push(run);
    list.clone()
}

fn duration(what: &str, seconds: f64) -> Result<Duration, TaskError> {
    Duration::try_from_secs_f64(seconds).map_err(|e| TaskError::value_error(format!("{what}: {e}")))
}

fn secs(limit: Option<Duration>) -> Value {
    limit.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

/// The runs of `task_id` in this worker process so far (empty: it never ran here).
#[task(name = "interop.semantics.runs")]
async fn runs(task_id: String) -> Vec<Value> {
    RUNS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|runs| runs.get(&task_id).cloned())
        .unwrap_or_default()
}

/// Notes the run and returns `value`.
#[task(name = "interop.semantics.record")]
async fn record_task(value: Option<Value>, request: &Request) -> Option<Value> {
    record(request);
    value
}

/// The whole request context. With `retry_times`, retries (0.1 s countdown) until
/// `request.retries` reaches it first.
#[task(name = "interop.semantics.context")]
async fn context(
    value: Option<Value>,
    retry_times: Option<u32>,
    request: &Request,
) -> Result<Value, TaskError> {
    let _ = value;
    record(request);
    if request.retries < retry_times.unwrap_or(0) {
        return Err(TaskError::retry().countdown(Duration::from_millis(100)));
    }
    let headers = request.headers.to_map();
    let header = |key: &str| headers.get(key).cloned().unwrap_or(Value::Null);
    Ok(json!({
        "id": request.id,
        "name": request.name,
        "args": request.args,
        "kwargs": request.kwargs,
        "retries": request.retries,
        "eta": header("eta"),
        "expires": header("expires"),
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "group": request.group,
        "group_index": request.group_index,
        "correlation_id": request.correlation_id,
        "reply_to": request.reply_to,
        "hostname": request.hostname,
        "delivery_info": request.delivery_info,
        "headers": request.headers,
        "timelimit": [secs(request.timelimit.0), secs(request.timelimit.1)],
        "ignore_result": request.ignore_result,
    }))
}

/// Explicit retries: while `request.retries < failures`, asks for a retry with these
/// options (`exc`: caused by `ValueError("<exc> <retries>")`; `eta_in`: an eta that many
/// seconds from now). Then returns its runs.
#[task(name = "interop.semantics.retry")]
async fn retry(
    failures: u32,
    countdown: Option<f64>,
    eta_in: Option<f64>,
    max_retries: Option<u32>,
    exc: Option<String>,
    request: &Request,
) -> Result<Vec<Value>, TaskError> {
    let runs = record(request);
    if request.retries >= failures {
        return Ok(runs);
    }
    let mut err = TaskError::retry();
    if let Some(text) = exc {
        err = err.caused_by(TaskError::value_error(format!(
            "{text} {}",
            request.retries
        )));
    }
    if let Some(countdown) = countdown {
        err = err.countdown(duration("countdown", countdown)?);
    }
    if let Some(eta_in) = eta_in {
        err = err.eta((SystemTime::now() + duration("eta_in", eta_in)?).into());
    }
    if let Some(max_retries) = max_retries {
        err = err.max_retries(max_retries);
    }
    Err(err)
}

/// The failure the autoretry tasks raise while `retries < failures`.
fn attempt_failure(exc_type: Option<String>, request: &Request) -> TaskError {
    TaskError::new(
        exc_type.as_deref().unwrap_or("ConnectionError"),
        format!("attempt {}", request.retries),
    )
}

/// Retried by itself on `ConnectionError` (not on other errors), backoff 1 s doubling up
/// to 2 s, no jitter, at most 3 retries. Returns its runs.
#[task(
    name = "interop.semantics.autoretry",
    autoretry_for = ["ConnectionError"],
    max_retries = 3,
    retry_backoff = 1,
    retry_backoff_max = 2,
    retry_jitter = false
)]
async fn autoretry(
    failures: u32,
    exc_type: Option<String>,
    request: &Request,
) -> Result<Vec<Value>, TaskError> {
    let runs = record(request);
    if request.retries < failures {
        return Err(attempt_failure(exc_type, request));
    }
    Ok(runs)
}

/// Retried by itself on any error, backoff factor 2 s capped at 2 s, with full jitter
/// (each delay 0, 1 or 2 s), at most 5 retries. Returns its runs.
#[task(
    name = "interop.semantics.autoretry_jitter",
    autoretry_for = ["Exception"],
    max_retries = 5,
    retry_backoff = 2,
    retry_backoff_max = 2,
    retry_jitter = true
)]
async fn autoretry_jitter(
    failures: u32,
    exc_type: Option<String>,
    request: &Request,
) -> Result<Vec<Value>, TaskError> {
    let runs = record(request);
    if request.retries < failures {
        return Err(attempt_failure(exc_type, request));
    }
    Ok(runs)
}

/// Retried by itself on `ConnectionError` without backoff: after `default_retry_delay`
/// (1 s), at most once. Returns its runs.
#[task(
    name = "interop.semantics.autoretry_plain",
    autoretry_for = ["ConnectionError"],
    max_retries = 1,
    default_retry_delay = 1
)]
async fn autoretry_plain(failures: u32, request: &Request) -> Result<Vec<Value>, TaskError> {
    let runs = record(request);
    if request.retries < failures {
        return Err(attempt_failure(None, request));
    }
    Ok(runs)
}

/// `interop.sleep` with a 1 s hard time limit of its own.
#[task(name = "interop.semantics.limited_sleep", time_limit = 1)]
async fn limited_sleep(seconds: f64) -> Result<f64, TaskError> {
    tokio::time::sleep(duration("seconds", seconds)?).await;
    Ok(seconds)
}

/// `interop.blocking_sleep` with a 1 s hard time limit of its own.
#[task(name = "interop.semantics.limited_blocking_sleep", time_limit = 1)]
fn limited_blocking_sleep(seconds: f64) -> Result<f64, TaskError> {
    std::thread::sleep(duration("seconds", seconds)?);
    Ok(seconds)
}

/// Sleeps `seconds` unless the soft time limit comes first: then returns
/// `{"soft_limit": true, "elapsed"}` with `catch`, else fails with
/// `SoftTimeLimitExceeded` (Celery raises it inside the task; uncaught, it is the failure).
async fn sleep_to_soft_limit(
    seconds: f64,
    catch: bool,
    request: &Request,
) -> Result<Value, TaskError> {
    let start = Instant::now();
    let nap = duration("seconds", seconds)?;
    tokio::select! {
        () = tokio::time::sleep(nap) => {
            Ok(json!({"soft_limit": false, "elapsed": start.elapsed().as_secs_f64()}))
        }
        () = request.soft_time_limit() => {
            if catch {
                Ok(json!({"soft_limit": true, "elapsed": start.elapsed().as_secs_f64()}))
            } else {
                Err(TaskError::soft_time_limit_exceeded())
            }
        }
    }
}

/// Stops at the soft time limit in force (the message's, else the worker's): it has none
/// of its own.
#[task(name = "interop.semantics.soft_sleep")]
async fn soft_sleep(
    seconds: f64,
    catch: Option<bool>,
    request: &Request,
) -> Result<Value, TaskError> {
    sleep_to_soft_limit(seconds, catch.unwrap_or(false), request).await
}

/// Stops at its own 1 s soft time limit (hard limit 10 s).
#[task(
    name = "interop.semantics.soft_limited",
    soft_time_limit = 1,
    time_limit = 10
)]
async fn soft_limited(
    seconds: f64,
    catch: Option<bool>,
    request: &Request,
) -> Result<Value, TaskError> {
    sleep_to_soft_limit(seconds, catch.unwrap_or(false), request).await
}

/// A blocking task that polls `soft_time_limit_exceeded()` while it works; its own 1 s
/// soft time limit (hard limit 10 s), same results as `soft_limited`.
#[task(
    name = "interop.semantics.soft_limited_blocking",
    soft_time_limit = 1,
    time_limit = 10
)]
fn soft_limited_blocking(
    seconds: f64,
    catch: Option<bool>,
    request: &Request,
) -> Result<Value, TaskError> {
    let start = Instant::now();
    let nap = duration("seconds", seconds)?;
    while start.elapsed() < nap {
        if request.soft_time_limit_exceeded() {
            return if catch.unwrap_or(false) {
                Ok(json!({"soft_limit": true, "elapsed": start.elapsed().as_secs_f64()}))
            } else {
                Err(TaskError::soft_time_limit_exceeded())
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(json!({"soft_limit": false, "elapsed": start.elapsed().as_secs_f64()}))
}

/// At most 5 starts a second; returns when it started (epoch seconds).
#[task(name = "interop.semantics.rated", rate_limit = "5/s")]
async fn rated(request: &Request) -> f64 {
    record(request);
    now()
}

/// Notes its run and returns `value`; its result is never stored (`ignore_result`).
#[task(name = "interop.semantics.ignored", ignore_result = true)]
async fn ignored(value: Option<Value>, request: &Request) -> Option<Value> {
    record(request);
    value
}

/// Sleeps `seconds`; STARTED is stored when it begins (`track_started`).
#[task(name = "interop.semantics.tracked", track_started = true)]
async fn tracked(seconds: f64) -> Result<f64, TaskError> {
    tokio::time::sleep(duration("seconds", seconds)?).await;
    Ok(seconds)
}

/// Sleeps `seconds`; its message is acknowledged only when it ends (`acks_late`).
#[task(name = "interop.semantics.late_sleep", acks_late = true)]
async fn late_sleep(seconds: f64) -> Result<f64, TaskError> {
    tokio::time::sleep(duration("seconds", seconds)?).await;
    Ok(seconds)
}

/// Rejects its message on its first run (`Reject(reason, requeue)`, acks_late); a
/// requeued message runs again and returns `{"runs", "redelivered"}`.
#[task(name = "interop.semantics.reject", acks_late = true)]
async fn reject(requeue: bool, request: &Request) -> Result<Value, TaskError> {
    let runs = record(request);
    if runs.len() == 1 {
        // Python's `str(bool)`, as the stand-in's f-string writes it.
        let python_bool = if requeue { "True" } else { "False" };
        return Err(TaskError::reject(
            format!("rejected on run 1 (requeue={python_bool})"),
            requeue,
        ));
    }
    Ok(json!({
        "runs": runs.len(),
        "redelivered": request.delivery_info.redelivered,
    }))
}

/// Adds `task_ids` to the worker's revoked set (what remote control's `revoke` will do;
/// the worker has no remote control yet). Returns how many ids the set holds.
#[task(name = "interop.semantics.revoke")]
async fn revoke(task_ids: Vec<String>) -> Result<usize, TaskError> {
    let revoked = REVOKED
        .get()
        .ok_or_else(|| TaskError::new("RuntimeError", "the revoked set is not set up yet"))?;
    revoked.revoke(task_ids)?;
    Ok(revoked.len())
}
