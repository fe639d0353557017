//! The life of one message inside the worker, top to bottom:
//!
//! 1. `protocol::decode`: a message that cannot be read is dead-lettered, never dropped;
//! 2. registry lookup: an unknown name stores FAILURE `NotRegistered` and acks;
//! 3. expired (`expires` in the past) or revoked (its id in the revoked set): REVOKED is
//!    stored, the errbacks sent (`errbacks`) and the message acked;
//! 4. eta, then the task's rate limit: a message whose time has not come is held (`hold`:
//!    packed, its delivery parked, on one timer heap), not a concurrency slot;
//! 5. a concurrency slot: a message that finds none free waits in line for one (`hold`'s
//!    ready queue). A held message whose turn has come runs through this pipeline again
//!    from the top, with its slot, so 3 is checked again at run time (it may have expired
//!    or been revoked while it waited). Then the early ack (Celery's default) unless
//!    acks-late: handed to the broker connection once the task has started (after its first
//!    poll; for a task done in that poll, once its result's store is written, as can happen
//!    with Celery's prefork pool), its reply awaited only after the outcome is
//!    stored, so the ack's round trip does not delay the result (a failed early ack leaves
//!    the message to the broker, which delivers it again, as with Celery's prefork pool);
//! 6. `task::call` under the hard time limit (argument binding happens in the task's
//!    runner; panics are caught);
//! 7. outcome: a retry (asked for, or automatic for the task's `autoretry_for` errors)
//!    republishes a copy, a rejection requeues or drops the message, success/failure is
//!    stored (`rpc://`: sent to the message's `reply_to` queue), a failure's errbacks sent;
//! 8. late ack (or, as Celery's `acks_on_failure_or_timeout` and `reject_on_worker_lost`
//!    say, a requeue).

use super::hold::{Held, Hold};
use super::rate::RateLimits;
use super::revoked::RevokedIds;
use crate::backend::{AnyBackend, ReplyTo};
use crate::broker::{AnyBroker, Delivery};
use crate::protocol::kombu::py_repr;
use crate::protocol::result_meta::Extended;
use crate::protocol::{self, ExceptionInfo, ResultMeta, TaskMessage, TaskState};
use crate::registry::{Registry, TaskEntry};
use crate::task::{self, Invocation, Request, TaskError, TaskErrorKind};
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// What every pipeline run shares.
pub(crate) struct Shared {
    pub broker: AnyBroker,
    pub backend: AnyBackend,
    pub registry: Arc<Registry>,
    pub hostname: String,
    pub acks_late: bool,
    pub track_started: bool,
    /// The worker's `(hard, soft)` time limits, for tasks that set none.
    pub time_limits: (Option<Duration>, Option<Duration>),
    pub result_extended: bool,
    pub revoked: RevokedIds,
    pub rate_limits: RateLimits,
    /// Messages waiting for their eta, their rate-limit turn or a slot.
    pub hold: Hold,
}

/// A message the hold would not take (the worker is stopping) goes back to the broker.
async fn hold_or_restore(held: Result<(), Held>) {
    if let Err(held) = held {
        settle(held.into_delivery().restore().await);
    }
}

/// How far a delivery got before: a held message runs through the pipeline again from the
/// top when its turn comes, with a concurrency slot, and its rate-limit turn already taken.
#[derive(Default)]
pub(crate) struct Turn {
    /// The slot it runs in (it waited for one).
    pub slot: Option<OwnedSemaphorePermit>,
    /// Its rate-limit turn has come, or its task has no limit.
    pub rated: bool,
}

/// Run a held message whose turn has come through the pipeline again, in `slot`.
pub(crate) async fn resume(shared: Arc<Shared>, held: Held, slot: OwnedSemaphorePermit) {
    let rated = held.rated();
    let delivery = held.into_delivery();
    let turn = Turn {
        slot: Some(slot),
        rated,
    };
    process(shared, delivery, turn).await;
}

/// Run one delivery through the pipeline. Never fails: every outcome is stored or logged.
///
/// The worker keeps one of these futures per prefetched message, so its size counts: the
/// rare paths (dead letter, discard, hold, STARTED, retry, failure, requeue) are boxed where they are
/// awaited, and the future is only as large as the common path needs (see the test
/// `the_pipeline_future_stays_small`).
pub(crate) async fn process(shared: Arc<Shared>, mut delivery: Delivery, turn: Turn) {
    // 1. decode
    // Its `properties` and `delivery_info` are moved over from the raw message, not copied,
    // once the delivery no longer needs its message (the message of a held delivery is
    // packed whole): see `adopt_routing` below.
    let mut msg = match protocol::decode::decode_task(&delivery.message) {
        Ok(msg) => msg,
        Err(err) => {
            tracing::error!(error = %err, tag = delivery.delivery_tag(), "undecodable message: moving it to the dead-letter list");
            if let Err(e) = Box::pin(delivery.dead_letter(&err.to_string())).await {
                tracing::error!(error = %e, "could not dead-letter the message; it stays unacknowledged");
            }
            return;
        }
    };

    // 2. registry
    let Some(entry) = shared.registry.get(&msg.headers.task) else {
        tracing::error!(task = %msg.headers.task, id = %msg.headers.id, "received unregistered task");
        msg.adopt_routing(&mut delivery.message);
        let meta =
            shared.failure_meta(&msg, ExceptionInfo::not_registered(&msg.headers.task), None);
        Box::pin(store(&shared.backend, &meta, &msg)).await;
        settle(Box::pin(delivery.ack()).await);
        return;
    };

    // 3. expired or revoked
    if let Some(reason) = discarded(&shared, &msg) {
        msg.adopt_routing(&mut delivery.message);
        Box::pin(discard(&shared, &msg, reason)).await;
        settle(Box::pin(delivery.ack()).await);
        return;
    }

    // 4. eta, then the task's rate limit: a message whose time has not come is held (see
    // `hold`), and runs through this pipeline again from the top when it has.
    if let Some((eta, wait)) = msg.headers.eta.and_then(|eta| {
        let wait = (eta - Utc::now()).to_std().ok()?;
        (!wait.is_zero()).then_some((eta, wait))
    }) {
        // Held for its eta: it must not count against the prefetch limit meanwhile, or
        // enough far-off etas would stop the worker from taking any other message.
        delivery.release_prefetch();
        if let Some(visibility) = shared.broker.visibility_timeout()
            && wait > visibility
        {
            tracing::warn!(
                task = %msg.headers.task, id = %msg.headers.id, eta_in = ?wait, visibility_timeout = ?visibility,
                "the eta lies beyond the Redis visibility timeout: the message will be restored to its queue and may run twice (raise visibility_timeout above the longest eta)"
            );
        }
        // Back from the hold a little early (the wall clock was set back): wait the rest.
        let due = match turn.slot {
            Some(_) => Instant::now() + wait,
            None => shared.hold.due(eta),
        };
        Box::pin(hold_or_restore(
            shared.hold.until(due, Held::new(delivery, false)),
        ))
        .await;
        return;
    }
    if !turn.rated
        && let Some(limit) = entry.options.rate_limit
        && let Some(at) = shared.rate_limits.reserve(&msg.headers.task, limit)
        && at > Instant::now()
    {
        if let Err(held) = shared.hold.until(at, Held::new(delivery, true)) {
            shared.rate_limits.release(&msg.headers.task, limit, at);
            settle(Box::pin(held.into_delivery().restore()).await);
        }
        return;
    }

    // 5. a concurrency slot: the one it was handed, a free one, or a wait in line for one.
    let Some(slot) = turn.slot.or_else(|| shared.hold.try_slot()) else {
        Box::pin(hold_or_restore(
            shared.hold.ready(Held::new(delivery, true)),
        ))
        .await;
        return;
    };

    msg.adopt_routing(&mut delivery.message);
    let acks_late = entry.options.acks_late.unwrap_or(shared.acks_late);
    // Celery's default is to ack before running (see `EarlyAck`); a late ack waits for the
    // outcome.
    let (late, early) = if acks_late {
        (Some(delivery), None)
    } else {
        // Boxed: it is held across the task's call, in every pipeline future.
        (None, Some(Box::new(delivery)))
    };

    // The message's limits win over the task's, which win over the worker's.
    let (hard, soft) = time_limits(&msg, entry, shared.time_limits);
    let track_started = entry.options.track_started.unwrap_or(shared.track_started);
    if track_started && !ignores_result(&msg, Some(entry)) {
        let started = shared.meta(
            ResultMeta::started(&msg.headers.id, &shared.hostname, std::process::id()),
            &msg,
        );
        Box::pin(store(&shared.backend, &started, &msg)).await;
    }
    // The message's arguments, headers and delivery info move into the request for the
    // call, and come back after it (`give_back`): `msg` is not to be read in between.
    let mut request = Request::lend(&mut msg, &shared.hostname);
    let now = tokio::time::Instant::now();
    request.deadline = hard.map(|d| now + d);
    request.soft_deadline = soft.map(|d| now + d);
    let request = Arc::new(request);

    // 6. call, under the hard time limit: an async task is cancelled at it; a blocking
    // one cannot be, its thread runs on and its outcome is dropped (the slot is freed).
    tracing::debug!(task = %request.name, id = %request.id, "task started");
    let started_at = std::time::Instant::now();
    let call = task::call::call(
        entry,
        Invocation {
            args: request.args.clone(),
            kwargs: request.kwargs.clone(),
            request: request.clone(),
        },
    );
    let limited = async {
        match hard {
            Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| limit),
            None => Ok(call.await),
        }
    };
    let (outcome, mut early_ack) = EarlyAck::around(early, limited).await;
    drop(slot);
    Request::give_back(request, &mut msg);
    let outcome = outcome.unwrap_or_else(|limit| Err(time_limit_exceeded(limit, &msg, entry)));

    // 7. outcome, and 8. what becomes of a late-acked message.
    let settle_late = match outcome {
        Ok(value) => {
            tracing::info!(task = %msg.headers.task, id = %msg.headers.id, runtime = ?started_at.elapsed(), "task succeeded");
            if !ignores_result(&msg, Some(entry)) {
                let meta = shared.meta(ResultMeta::success(&msg.headers.id, value), &msg);
                match early_ack {
                    // The ack goes out while the result's round trip runs, not after it (the
                    // message's prefetch slot is held until its ack's reply), but only once
                    // this thread has run the store's write (`after_this_thread`).
                    Some(EarlyAck::AfterOutcome(delivery)) => {
                        let ack = EarlyAck::after_this_thread(*delivery);
                        let ((), acked) = tokio::join!(store(&shared.backend, &meta, &msg), ack);
                        early_ack = Some(EarlyAck::Done(acked));
                    }
                    _ => store(&shared.backend, &meta, &msg).await,
                }
            }
            Late::Ack
        }
        Err(err) if err.is_retry() => {
            Box::pin(retry(&shared, entry, &msg, err)).await;
            Late::Ack
        }
        Err(err) if autoretries(entry, &err) => {
            let retry_err = automatic_retry(entry, &msg, err);
            Box::pin(retry(&shared, entry, &msg, retry_err)).await;
            Late::Ack
        }
        Err(err) => Box::pin(finish_failed(&shared, entry, &msg, err, late.is_some())).await,
    };
    if let Some(delivery) = late {
        settle(match settle_late {
            Late::Ack => delivery.ack().await,
            Late::Requeue => Box::pin(delivery.requeue()).await,
        });
    }
    if let Some(ack) = early_ack
        && let Err(err) = ack.settled_after_outcome().await
    {
        tracing::warn!(error = %err, task = %msg.headers.task, id = %msg.headers.id, "could not acknowledge the message before running it; the broker will deliver it again");
    }
}

type AckFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), crate::broker::BrokerError>> + Send>,
>;

/// An early ack (Celery's default, `acks_late` off): sent when the task starts, and its
/// reply awaited only once the outcome is stored; no task spawned per message.
///
/// Sent means handed over: the ack future's first poll gives the command to the broker's
/// acknowledger (Redis's group-commit loop, RabbitMQ's channel ack tracker, or settles at
/// once in memory). It is handed over after the task's first poll, as soon as the task is
/// seen to run on (a sleeping or blocking task is acknowledged while it runs, as before).
/// A task that is already done in that first poll (most tasks: their body does not wait)
/// has its result's store sent first, and the ack handed over once the worker thread has
/// written it, while the store's round trip runs (`after_this_thread`; without a result to
/// store, or on the rare paths, right after the outcome): the ack then does not wake the
/// acknowledger, nor reach the broker, ahead of the result the caller waits for, and the
/// message's prefetch slot is not held for the two round trips one after the other.
/// Celery's prefork pool acks alike: its parent process sends the ack when it hears that
/// the child accepted the task, so a short task's result can be stored before its ack.
/// Either way the message is acknowledged once its task has started; a worker killed in
/// between is what decides: before the ack the broker delivers the message again (here
/// that window includes the result's write for a task done in its first poll), after it
/// the message is gone.
enum EarlyAck {
    Done(Result<(), crate::broker::BrokerError>),
    Handed(AckFuture),
    /// Not sent yet: the task was done in its first poll, so it is sent with or after the
    /// outcome.
    AfterOutcome(Box<Delivery>),
}

impl EarlyAck {
    /// Run `task` (the task's call), handing the early ack of `delivery` (if any) over once
    /// the task's first poll did not finish it; returns the outcome and the ack to settle.
    async fn around<T>(
        delivery: Option<Box<Delivery>>,
        task: impl std::future::Future<Output = T>,
    ) -> (T, Option<Self>) {
        let Some(delivery) = delivery else {
            return (task.await, None);
        };
        let mut task = std::pin::pin!(task);
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(task.as_mut().poll(cx)));
        if let std::task::Poll::Ready(outcome) = first.await {
            return (outcome, Some(Self::AfterOutcome(delivery)));
        }
        let ack = Self::send(*delivery).await;
        (task.await, Some(ack))
    }

    async fn send(delivery: Delivery) -> Self {
        let mut ack: AckFuture = Box::pin(delivery.ack());
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(ack.as_mut().poll(cx)));
        match first.await {
            std::task::Poll::Ready(done) => Self::Done(done),
            std::task::Poll::Pending => Self::Handed(ack),
        }
    }

    /// The ack of `delivery`, handed over once this worker thread has nothing else to run
    /// (`yield_now` defers the task until then): the result's store, polled first, has
    /// been written by then, and the ack's wake-up of the acknowledger does not displace
    /// the store's wake-up of the backend connection as this thread's next task.
    async fn after_this_thread(delivery: Delivery) -> Result<(), crate::broker::BrokerError> {
        tokio::task::yield_now().await;
        Box::pin(delivery.ack()).await
    }

    /// Send the ack now if it was kept for after the outcome, and wait for its reply.
    async fn settled_after_outcome(self) -> Result<(), crate::broker::BrokerError> {
        match self {
            Self::Done(done) => done,
            Self::Handed(ack) => ack.await,
            Self::AfterOutcome(delivery) => Box::pin(delivery.ack()).await,
        }
    }
}

/// Why a message is not to run: `"expired"` (its `expires` has passed) or `"revoked"` (its
/// id is in the revoked set); `None` when it is to run.
fn discarded(shared: &Shared, msg: &TaskMessage) -> Option<&'static str> {
    if msg.headers.expires.is_some_and(|at| at <= Utc::now()) {
        Some("expired")
    } else if shared.revoked.contains(&msg.headers.id) {
        Some("revoked")
    } else {
        None
    }
}

/// Store REVOKED for a message that is not run (the caller acks it).
async fn discard(shared: &Shared, msg: &TaskMessage, reason: &str) {
    let (name, id) = (&msg.headers.task, &msg.headers.id);
    tracing::info!(task = %name, id = %id, reason, "discarding revoked task");
    let meta = shared.meta(ResultMeta::revoked(id, reason), msg);
    store(&shared.backend, &meta, msg).await;
    super::errbacks::call(shared, msg).await;
}

/// What to do with a late-acked message once its task is over.
#[derive(Debug, PartialEq, Eq)]
enum Late {
    Ack,
    Requeue,
}

/// A task that failed, timed out or rejected its message: store what Celery stores and say
/// what becomes of a late-acked message (`acks_late` is whether there is one).
async fn finish_failed(
    shared: &Shared,
    entry: &TaskEntry,
    msg: &TaskMessage,
    err: TaskError,
    acks_late: bool,
) -> Late {
    let (name, id) = (&msg.headers.task, &msg.headers.id);
    if let TaskErrorKind::Reject { requeue } = *err.kind() {
        tracing::warn!(task = %name, id = %id, requeue, "task rejected its message");
        if requeue {
            // Nothing is stored: the task will run again. With an early ack the message
            // is already gone, as in Celery.
            return Late::Requeue;
        }
        fail(shared, entry, msg, &err).await;
        return Late::Ack;
    }
    if err.exc_type() == "TimeLimitExceeded" {
        tracing::error!(task = %name, id = %id, limit = ?err.exc_message(), "hard time limit exceeded");
    } else {
        tracing::warn!(task = %name, id = %id, exc_type = err.exc_type(), "task failed");
    }
    if acks_late && after_failure(&entry.options, err.exc_type()) == Late::Requeue {
        // Back to the queue, and nothing is stored: the task will run again.
        return Late::Requeue;
    }
    fail(shared, entry, msg, &err).await;
    Late::Ack
}

/// What becomes of a late-acked message whose task failed with `exc_type`, as Celery's
/// `Request.on_failure` decides: a lost executor (`WorkerLostError`) under
/// `reject_on_worker_lost`, and a timeout (`TimeLimitExceeded`) when
/// `acks_on_failure_or_timeout` is false, are requeued; anything else is acked. (For a failure
/// with `acks_on_failure_or_timeout = false` Celery rejects without requeue, which drops the
/// message as an ack does.)
fn after_failure(options: &crate::registry::TaskOptions, exc_type: &str) -> Late {
    let ack_flag = options.acks_on_failure_or_timeout.unwrap_or(true);
    let worker_lost = exc_type == "WorkerLostError";
    let timed_out = exc_type == "TimeLimitExceeded";
    if (worker_lost && options.reject_on_worker_lost == Some(true)) || (timed_out && !ack_flag) {
        Late::Requeue
    } else {
        Late::Ack
    }
}

/// `TimeLimitExceeded(limit)` with the limit written as Celery's worker writes it: as given
/// in the message or the task's options (`3` or `2.5`), but always a float for the worker's
/// own limit (`celery worker --time-limit` parses a float: `3.0`).
fn time_limit_exceeded(limit: Duration, msg: &TaskMessage, entry: &TaskEntry) -> TaskError {
    let from_message = msg.headers.timelimit.0.is_some_and(|s| s > 0.0);
    let err = TaskError::time_limit_exceeded(limit);
    if from_message || entry.options.time_limit.is_some() {
        err
    } else {
        err.with_args(vec![serde_json::Value::from(limit.as_secs_f64())])
    }
}

/// The `(hard, soft)` limits in force: the message's `timelimit` header, else the task's
/// options, else the worker's (Celery's `time_limit or task.time_limit`).
fn time_limits(
    msg: &TaskMessage,
    entry: &TaskEntry,
    worker: (Option<Duration>, Option<Duration>),
) -> (Option<Duration>, Option<Duration>) {
    let secs = |s: Option<f64>| {
        s.filter(|s| *s > 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
    };
    let (h, s) = msg.headers.timelimit;
    (
        secs(h).or(entry.options.time_limit).or(worker.0),
        secs(s).or(entry.options.soft_time_limit).or(worker.1),
    )
}

/// Whether `err` is one the task retries by itself (`autoretry_for`; `Exception` stands
/// for every error, as in Python).
fn autoretries(entry: &TaskEntry, err: &TaskError) -> bool {
    matches!(err.kind(), TaskErrorKind::Failure)
        && entry
            .options
            .autoretry_for
            .iter()
            .any(|t| *t == err.exc_type() || *t == "Exception")
}

/// The retry Celery's autoretry wrapper asks for: caused by `err`, after the exponential
/// backoff when the task has one (`get_exponential_backoff_interval`), else after the
/// default delay.
fn automatic_retry(entry: &TaskEntry, msg: &TaskMessage, err: TaskError) -> TaskError {
    let o = &entry.options;
    let retry = TaskError::retry().caused_by(err);
    match o.retry_backoff {
        Some(factor) => {
            let factor = factor.as_secs().max(1);
            let maximum = o.retry_backoff_max.map_or(600, |d| d.as_secs());
            let countdown = backoff(
                factor,
                msg.headers.retries,
                maximum,
                o.retry_jitter.unwrap_or(true),
            );
            retry.countdown(Duration::from_secs(countdown))
        }
        None => retry,
    }
}

/// `min(maximum, factor * 2 ** retries)`, or with full jitter a random whole number of
/// seconds from 0 up to that.
fn backoff(factor: u64, retries: u32, maximum: u64, jitter: bool) -> u64 {
    let countdown = factor
        .saturating_mul(2u64.saturating_pow(retries))
        .min(maximum);
    if jitter {
        rand::random_range(0..=countdown)
    } else {
        countdown
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
            // Celery formats the retry signature's args (a tuple) and kwargs with `str()`.
            TaskError::new(
                "MaxRetriesExceededError",
                format!(
                    "Can't retry {}[{}] args:{} kwargs:{}",
                    msg.headers.task,
                    msg.headers.id,
                    py_tuple_repr(&msg.args),
                    py_repr(&serde_json::Value::Object(msg.kwargs.clone())),
                ),
            )
            .with_module("celery.exceptions")
        });
        fail(shared, entry, msg, &exc).await;
        return;
    }
    let mut next = msg.clone();
    next.headers.retries = retries;
    // Celery's `default_retry_delay` is 180 s when neither countdown nor eta is given.
    let countdown = request.countdown.unwrap_or(
        entry
            .options
            .default_retry_delay
            .unwrap_or(Duration::from_secs(180)),
    );
    // A countdown of 0 sends no eta (Celery's `if countdown: eta = now + countdown`).
    next.headers.eta = request
        .eta
        .or_else(|| (!countdown.is_zero()).then(|| Utc::now() + countdown));
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
            if !ignores_result(msg, Some(entry)) {
                // Celery stores the `exc` given to `retry()`, and `None` when there was none.
                let id = &msg.headers.id;
                let mut meta = match &request.cause {
                    Some(cause) => ResultMeta::retry(id, cause.to_exception_info(), None),
                    None => ResultMeta::new(id, TaskState::Retry, serde_json::Value::Null),
                };
                meta = shared.meta(meta, msg);
                meta.children = Some(vec![serde_json::json!([[msg.headers.id, null], null])]);
                store(&shared.backend, &meta, msg).await;
            }
        }
        Err(e) => {
            // Celery rejects the task when the retry cannot be sent; we store why.
            tracing::error!(error = %e, id = %msg.headers.id, "could not publish the retry");
            let exc = TaskError::new("RuntimeError", format!("retry could not be published: {e}"));
            fail(shared, entry, msg, &exc).await;
        }
    }
}

/// Store FAILURE (unless results are ignored) and send the errbacks (even then, as Celery's
/// `mark_as_failure` does).
async fn fail(shared: &Shared, entry: &TaskEntry, msg: &TaskMessage, err: &TaskError) {
    if !ignores_result(msg, Some(entry)) {
        let meta = shared.failure_meta(
            msg,
            err.to_exception_info(),
            err.traceback().map(str::to_owned),
        );
        store(&shared.backend, &meta, msg).await;
    }
    super::errbacks::call(shared, msg).await;
}

impl Shared {
    fn failure_meta(
        &self,
        msg: &TaskMessage,
        exc: ExceptionInfo,
        traceback: Option<String>,
    ) -> ResultMeta {
        self.meta(ResultMeta::failure(&msg.headers.id, exc, traceback), msg)
    }

    /// Fill what Celery copies from the request into every stored result, and with
    /// `result_extended` the request's name, arguments, worker, retries and queue.
    fn meta(&self, mut meta: ResultMeta, msg: &TaskMessage) -> ResultMeta {
        meta.group_id = msg.headers.group.clone();
        meta.parent_id = msg.headers.parent_id.clone();
        if self.result_extended {
            meta.extended = Some(Extended {
                name: msg.headers.task.clone(),
                args: serde_json::Value::Array(msg.args.clone()),
                kwargs: serde_json::Value::Object(msg.kwargs.clone()),
                worker: self.hostname.clone(),
                retries: msg.headers.retries,
                queue: msg.delivery_info.routing_key.clone(),
            });
        }
        meta
    }
}

/// Whether no result is to be stored: the message's `ignore_result` header, else the
/// task's option (Celery's `Request.ignore_result`).
fn ignores_result(msg: &TaskMessage, entry: Option<&TaskEntry>) -> bool {
    msg.headers
        .ignore_result
        .or_else(|| entry.and_then(|e| e.options.ignore_result))
        .unwrap_or(false)
}

/// Python's `str()` of a tuple of these values: `()`, `(1,)`, `(1, 'a')`.
fn py_tuple_repr(items: &[serde_json::Value]) -> String {
    match items {
        [one] => format!("({},)", py_repr(one)),
        _ => {
            let reprs: Vec<String> = items.iter().map(py_repr).collect();
            format!("({})", reprs.join(", "))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{Late, after_failure, backoff, py_tuple_repr};
    use serde_json::json;

    /// The size of the future an async fn of three arguments returns.
    fn future_size<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_pipeline_future_stays_small() {
        // One pipeline future lives in a task per prefetched message (1,024 with `-c 64
        // --prefetch-multiplier 16`), so each kilobyte here is a megabyte of worker memory.
        // Unboxed, the rare paths made it 8 KB (retry alone 5 KB); boxed, about 4 KB.
        let process = future_size(super::process);
        let resume = future_size(super::resume);
        eprintln!("process: {process} bytes, resume: {resume} bytes");
        assert!(process <= 5120, "process() future is {process} bytes");
        assert!(resume <= 5120, "resume() future is {resume} bytes");
    }

    #[test]
    fn late_acked_failures_requeue_only_as_celery_says() {
        use crate::registry::TaskOptions;
        let plain = TaskOptions::DEFAULT;
        let reject_lost = TaskOptions {
            reject_on_worker_lost: Some(true),
            ..TaskOptions::DEFAULT
        };
        let keep_failed = TaskOptions {
            acks_on_failure_or_timeout: Some(false),
            ..TaskOptions::DEFAULT
        };
        // By default every failure is acked, a lost executor's and a timeout's too.
        for exc in ["ValueError", "WorkerLostError", "TimeLimitExceeded"] {
            assert_eq!(after_failure(&plain, exc), Late::Ack, "{exc}");
        }
        // reject_on_worker_lost requeues only a lost executor's message.
        assert_eq!(
            after_failure(&reject_lost, "WorkerLostError"),
            Late::Requeue
        );
        assert_eq!(after_failure(&reject_lost, "ValueError"), Late::Ack);
        assert_eq!(after_failure(&reject_lost, "TimeLimitExceeded"), Late::Ack);
        // acks_on_failure_or_timeout = false requeues a timeout, and drops a failure.
        assert_eq!(
            after_failure(&keep_failed, "TimeLimitExceeded"),
            Late::Requeue
        );
        assert_eq!(after_failure(&keep_failed, "ValueError"), Late::Ack);
        assert_eq!(after_failure(&keep_failed, "WorkerLostError"), Late::Ack);
    }

    #[test]
    fn tuples_are_written_as_python_does() {
        assert_eq!(py_tuple_repr(&[]), "()");
        assert_eq!(py_tuple_repr(&[json!(10)]), "(10,)");
        assert_eq!(
            py_tuple_repr(&[json!("a"), json!(null), json!([1.5])]),
            "('a', None, [1.5])"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_jitter_stays_below_it() {
        let plain: Vec<u64> = (0..6).map(|r| backoff(1, r, 600, false)).collect();
        assert_eq!(plain, [1, 2, 4, 8, 16, 32]);
        assert_eq!(backoff(3, 10, 600, false), 600);
        assert_eq!(backoff(1, 200, 600, false), 600, "no overflow");
        for _ in 0..200 {
            assert!(backoff(2, 3, 600, true) <= 16);
        }
        assert_eq!(backoff(5, 0, 0, true), 0);
    }
}
