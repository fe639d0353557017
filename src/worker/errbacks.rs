//! Errbacks: the signatures a caller attached with `link_error`, sent when the task fails
//! or is not run.
//!
//! Celery's `backend._call_task_errbacks`: each errback is sent as a task whose first
//! argument is the failed task's id (an immutable one gets only its own arguments), all of
//! them as one group (a fresh group id, `group_index` 0, 1, ..), with `parent_id` the failed
//! task and `root_id` its root. Celery calls an errback inline instead when it is a task of
//! the same worker taking `(request, exc, traceback)`; a Rust worker cannot hand a Python
//! request over, so it always sends the message, as Celery does for errbacks it does not
//! know.
//!
//! When: on FAILURE (an error, a hard time limit, max retries exceeded, a rejection
//! without requeue), as Celery does, and also when an expired or revoked message is
//! discarded. Celery 5.7 stores REVOKED without calling errbacks there; Celeriac calls them
//! so a caller learns that the task will never run.

use super::pipeline::Shared;
use crate::canvas::Signature;
use crate::client::{Defaults, compose_message};
use crate::protocol::{self, Serializer, TaskMessage};
use serde_json::Value;

/// Send every errback of `msg` (none when it has none). Failures are logged: the task's own
/// outcome is already stored.
pub(crate) async fn call(shared: &Shared, msg: &TaskMessage) {
    let Some(errbacks) = msg.embed.errbacks.as_deref() else {
        return;
    };
    if errbacks.is_empty() {
        return;
    }
    let (id, name) = (&msg.headers.id, &msg.headers.task);
    let root_id = msg.headers.root_id.clone().unwrap_or_else(|| id.clone());
    let group_id = uuid::Uuid::new_v4().to_string();
    let host = shared.hostname.rsplit('@').next().unwrap_or_default();
    let origin = format!("gen{}@{}", std::process::id(), host);
    for (index, errback) in errbacks.iter().enumerate() {
        let sig = match Signature::from_dict(errback) {
            Ok(sig) => sig,
            Err(err) => {
                tracing::error!(task = %name, id = %id, error = %err, "cannot call an errback");
                continue;
            }
        };
        let mut args = Vec::with_capacity(sig.args().len() + 1);
        if !sig.is_immutable() {
            args.push(Value::String(id.clone()));
        }
        args.extend_from_slice(sig.args());
        let defaults = Defaults {
            origin: &origin,
            // The worker has no reply queue of its own: with the rpc:// backend nobody
            // would read an errback's result anyway.
            reply_to: None,
            queue: DEFAULT_QUEUE,
            serializer: Serializer::Json,
        };
        let (mut next, exchange, routing_key) = compose_message(
            sig.name(),
            args,
            sig.kwargs().clone(),
            sig.options(),
            &defaults,
        );
        let h = &mut next.headers;
        h.parent_id = Some(id.clone());
        h.root_id = Some(root_id.clone());
        h.group = Some(group_id.clone());
        h.group_index = Some(index as i64);
        match send(shared, &next, &exchange, &routing_key).await {
            Ok(()) => tracing::info!(
                task = %name, id = %id, errback = %sig.name(), errback_id = %next.headers.id,
                "errback sent"
            ),
            Err(err) => tracing::error!(
                task = %name, id = %id, errback = %sig.name(), error = %err,
                "could not send an errback"
            ),
        }
    }
}

/// Where an errback goes when its options name no queue (Celery's `task_default_queue`).
const DEFAULT_QUEUE: &str = "celery";

async fn send(
    shared: &Shared,
    msg: &TaskMessage,
    exchange: &str,
    routing_key: &str,
) -> Result<(), String> {
    let raw = protocol::encode(msg).map_err(|e| e.to_string())?;
    if exchange.is_empty() {
        // As the client does: the queue exists before the first message is sent to it
        // (RabbitMQ drops a message sent to a queue that does not exist).
        shared
            .broker
            .declare_queue(routing_key)
            .await
            .map_err(|e| e.to_string())?;
    }
    shared
        .broker
        .publish(&raw, exchange, routing_key)
        .await
        .map_err(|e| e.to_string())
}
