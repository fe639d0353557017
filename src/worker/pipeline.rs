//! The life of one message inside the worker, top to bottom, once:
//!
//! 1. `protocol::decode`: a message that cannot be read is dead-lettered, never dropped;
//! 2. registry lookup: an unknown name stores FAILURE `NotRegistered` and acks;
//! 3. expired (`expires` in the past): REVOKED is stored and the message acked;
//! 4. eta: wait for it (holding the delivery, not a concurrency slot);
//! 5. take a concurrency slot; early ack (Celery's default) unless acks-late (a failed
//!    early ack leaves the message to the broker, which delivers it again: it is not run);
//! 6. `task::call` (argument binding happens in the task's runner; panics are caught);
//! 7. outcome: retry republishes a copy, success/failure is stored (`rpc://`: sent to the
//!    message's `reply_to` queue);
//! 8. late ack.

use crate::backend::{AnyBackend, ReplyTo};
use crate::broker::{AnyBroker, Delivery};
use crate::protocol::{self, ExceptionInfo, ResultMeta, TaskMessage};
use crate::registry::{Registry, TaskEntry};
use crate::task::{self, Invocation, Request, TaskError};
use chrono::Utc;
use std::sync::Arc;
use tokio::sync::{Semaphore, watch};

/// What every pipeline run shares.
pub(crate) struct Shared {
    pub broker: AnyBroker,
    pub backend: AnyBackend,
    pub registry: Arc<Registry>,
    /// One permit per concurrency slot.
    pub slots: Arc<Semaphore>,
    pub hostname: String,
    pub acks_late: bool,
    pub track_started: bool,
    /// Flips to `true` when the worker stops taking new work.
    pub stop: watch::Sender<bool>,
}

impl Shared {
    /// Tell waiting pipelines (eta, no free slot) to hand their messages back.
    pub fn stopping(&self) {
        self.stop.send_replace(true);
    }
}

/// Run one delivery through the pipeline. Never fails: every outcome is stored or logged.
pub(crate) async fn process(shared: Arc<Shared>, delivery: Delivery) {
    // 1. decode
    let msg = match protocol::decode(&delivery.message) {
        Ok(msg) => msg,
        Err(err) => {
            tracing::error!(error = %err, tag = delivery.delivery_tag(), "undecodable message: moving it to the dead-letter list");
            if let Err(e) = delivery.dead_letter(&err.to_string()).await {
                tracing::error!(error = %e, "could not dead-letter the message; it stays unacknowledged");
            }
            return;
        }
    };
    let id = msg.headers.id.clone();
    let name = msg.headers.task.clone();

    // 2. registry
    let Some(entry) = shared.registry.get(&name) else {
        tracing::error!(task = %name, id = %id, "received unregistered task");
        let meta = failure_meta(&msg, ExceptionInfo::not_registered(&name), None);
        store(&shared.backend, &meta, &msg).await;
        settle(delivery.ack().await);
        return;
    };

    // 3. expired
    if msg.headers.expires.is_some_and(|at| at <= Utc::now()) {
        tracing::info!(task = %name, id = %id, "discarding expired task");
        let meta = with_context(ResultMeta::revoked(&id, "expired"), &msg);
        store(&shared.backend, &meta, &msg).await;
        settle(delivery.ack().await);
        return;
    }

    // 4. eta, and 5. a concurrency slot: wait for both without losing the message on shutdown.
    let mut stop = shared.stop.subscribe();
    if let Some(wait) = msg
        .headers
        .eta
        .and_then(|eta| (eta - Utc::now()).to_std().ok())
    {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut stop) => { settle(delivery.restore().await); return; }
        }
    }
    let slot = tokio::select! {
        slot = shared.slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
        () = stopped(&mut stop) => { settle(delivery.restore().await); return; }
    };

    let acks_late = entry.options.acks_late.unwrap_or(shared.acks_late);
    let late = if acks_late {
        Some(delivery)
    } else {
        // Celery's default: ack before running. If the ack fails (the connection is gone)
        // the broker still owns the message and will deliver it again, so it must not run
        // here too (Celery drops such reserved messages on connection loss as well).
        if let Err(err) = delivery.ack().await {
            tracing::warn!(error = %err, task = %name, id = %id, "could not acknowledge the message; leaving it to the broker to deliver again");
            return;
        }
        None
    };

    let request = Arc::new(Request::from_message(&msg, &shared.hostname));
    if shared.track_started && !ignores_result(&msg) {
        let started = with_context(
            ResultMeta::started(&id, &shared.hostname, std::process::id()),
            &msg,
        );
        store(&shared.backend, &started, &msg).await;
    }

    // 6. call
    tracing::debug!(task = %name, id = %id, "task started");
    let started_at = std::time::Instant::now();
    let outcome = task::call::call(
        entry,
        Invocation {
            args: msg.args.clone(),
            kwargs: msg.kwargs.clone(),
            request,
        },
    )
    .await;
    drop(slot);

    // 7. outcome
    match outcome {
        Ok(value) => {
            tracing::info!(task = %name, id = %id, runtime = ?started_at.elapsed(), "task succeeded");
            if !ignores_result(&msg) {
                let meta = with_context(ResultMeta::success(&id, value), &msg);
                store(&shared.backend, &meta, &msg).await;
            }
        }
        Err(err) if err.is_retry() => retry(&shared, entry, &msg, err).await,
        Err(err) => {
            tracing::warn!(task = %name, id = %id, exc_type = err.exc_type(), "task failed");
            fail(&shared, &msg, &err).await;
        }
    }

    // 8. late ack
    if let Some(delivery) = late {
        settle(delivery.ack().await);
    }
}

/// A retry request: republish the same task (same id) with `retries + 1` and an eta, then
/// store RETRY; past `max_retries` the task fails instead, as `Task.retry` does.
async fn retry(shared: &Shared, entry: &TaskEntry, msg: &TaskMessage, err: TaskError) {
    let retries = msg.headers.retries + 1;
    let request = err
        .retry_request()
        .expect("only retry errors are passed here");
    // Celery's default `max_retries` is 3; a retry may override it.
    let max_retries = request
        .max_retries
        .or(entry.options.max_retries)
        .unwrap_or(3);
    if retries > max_retries {
        let exc = request.cause.clone().unwrap_or_else(|| {
            TaskError::new(
                "MaxRetriesExceededError",
                format!(
                    "Can't retry {}[{}] args:{:?} kwargs:{:?}",
                    msg.headers.task, msg.headers.id, msg.args, msg.kwargs
                ),
            )
            .with_module("celery.exceptions")
        });
        fail(shared, msg, &exc).await;
        return;
    }
    let mut next = msg.clone();
    next.headers.retries = retries;
    // Celery's `default_retry_delay` is 180 s when neither countdown nor eta is given.
    let countdown = request
        .countdown
        .unwrap_or(std::time::Duration::from_secs(180));
    next.headers.eta = Some(request.eta.unwrap_or_else(|| Utc::now() + countdown));
    next.headers.parent_id = Some(msg.headers.id.clone());
    next.headers.argsrepr = None;
    next.headers.kwargsrepr = None;
    let published = match protocol::encode(&next) {
        // Where Celery's `signature_from_request` sends a retry: a message that came through
        // the default exchange goes to the queue named by its routing key, any other back to
        // the same exchange and routing key.
        Ok(raw) => shared
            .broker
            .publish(
                &raw,
                &msg.delivery_info.exchange,
                &msg.delivery_info.routing_key,
            )
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
        Ok(()) => {
            tracing::info!(task = %msg.headers.task, id = %msg.headers.id, retries, "task retry scheduled");
            if !ignores_result(msg) {
                let exc = request.cause.as_ref().unwrap_or(&err).to_exception_info();
                let mut meta = with_context(ResultMeta::retry(&msg.headers.id, exc, None), msg);
                meta.children = Some(vec![serde_json::json!([[msg.headers.id, null], null])]);
                store(&shared.backend, &meta, msg).await;
            }
        }
        Err(e) => {
            // Celery rejects the task when the retry cannot be sent; we store why.
            tracing::error!(error = %e, id = %msg.headers.id, "could not publish the retry");
            let exc = TaskError::new("RuntimeError", format!("retry could not be published: {e}"));
            fail(shared, msg, &exc).await;
        }
    }
}

async fn fail(shared: &Shared, msg: &TaskMessage, err: &TaskError) {
    if ignores_result(msg) {
        return;
    }
    let meta = failure_meta(
        msg,
        err.to_exception_info(),
        err.traceback().map(str::to_owned),
    );
    store(&shared.backend, &meta, msg).await;
}

fn failure_meta(msg: &TaskMessage, exc: ExceptionInfo, traceback: Option<String>) -> ResultMeta {
    with_context(ResultMeta::failure(&msg.headers.id, exc, traceback), msg)
}

/// Fill what Celery copies from the request into every stored result.
fn with_context(mut meta: ResultMeta, msg: &TaskMessage) -> ResultMeta {
    meta.group_id = msg.headers.group.clone();
    meta.parent_id = msg.headers.parent_id.clone();
    meta
}

fn ignores_result(msg: &TaskMessage) -> bool {
    msg.headers.ignore_result == Some(true)
}

/// Completes once the worker stops taking new work.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // `wait_for` only fails when the sender is gone, which also means stop.
    let _ = stop.wait_for(|s| *s).await;
}

/// Store a state change; the RPC backend sends it to the reply queue the message names.
async fn store(backend: &AnyBackend, meta: &ResultMeta, msg: &TaskMessage) {
    // Only the RPC backend sends anywhere but the task id's key; spare the others the copies.
    let reply = match backend {
        AnyBackend::Rpc(_) => ReplyTo::from_properties(&msg.properties, &msg.headers.id),
        _ => None,
    };
    if let Err(err) = backend.store_for(meta, reply.as_ref()).await {
        tracing::error!(error = %err, id = %meta.task_id, "could not store the result");
    }
}

fn settle(result: Result<(), crate::broker::BrokerError>) {
    if let Err(err) = result {
        tracing::error!(error = %err, "could not settle the message with the broker");
    }
}
