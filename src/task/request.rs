//! The request context a task can ask for.
//!
//! A `#[task]` function receives it by declaring a parameter of type `&Request`
//! (Celery's `self.request`).

use crate::protocol::{DeliveryInfo, TaskHeaders, TaskMessage};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// What the worker knows about the running task (Celery's `Task.request`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// The task id.
    pub id: String,
    /// The registered task name (the `task` header).
    pub name: String,
    /// Positional arguments as received.
    pub args: Vec<Value>,
    /// Keyword arguments as received.
    pub kwargs: Map<String, Value>,
    /// How many times the task was retried so far.
    pub retries: u32,
    /// Not before this time, when the task was sent with an eta or countdown.
    pub eta: Option<DateTime<Utc>>,
    /// The task expires at this time.
    pub expires: Option<DateTime<Utc>>,
    /// Id of the first task of the workflow.
    pub root_id: Option<String>,
    /// Id of the task that sent this one.
    pub parent_id: Option<String>,
    /// Group id, when part of a group or chord header.
    pub group: Option<String>,
    /// Position inside the group.
    pub group_index: Option<i64>,
    /// The message's `correlation_id` property (the task id for Celery clients).
    pub correlation_id: Option<String>,
    /// The message's `reply_to` property: the RPC result queue of the caller.
    pub reply_to: Option<String>,
    /// The worker's node name, e.g. `celeriac@host`.
    pub hostname: String,
    /// Where the message was routed.
    pub delivery_info: DeliveryInfo,
    /// Every header of the message by its wire name (see [`RequestHeaders`]).
    pub headers: RequestHeaders,
    /// `(hard, soft)` time limits. Limits that are not positive finite numbers are `None`.
    pub timelimit: (Option<Duration>, Option<Duration>),
    /// The `ignore_result` header: `None` when the client left it to the task
    /// (`send_task` sends `null`).
    pub ignore_result: Option<bool>,
    /// When the soft time limit in force passes (the message's, else the task's, else the
    /// worker's); `None` without one. See [`Request::soft_time_limit`].
    pub soft_deadline: Option<tokio::time::Instant>,
    /// When the hard time limit in force stops the task; `None` without one.
    pub deadline: Option<tokio::time::Instant>,
}

/// The message's headers, as a task sees them in [`Request::headers`]: every header by its
/// wire name, the typed ones rebuilt in Celery's order followed by the extra ones in arrival
/// order, times as UTC ISO-8601 strings the way Python's `isoformat()` writes them.
///
/// The map is built when asked for ([`RequestHeaders::to_map`], [`RequestHeaders::get`], or
/// serializing it): most tasks never look, and building it costs a few dozen allocations,
/// which the worker would otherwise spend on every task.
///
/// ```
/// use celeriac::Request;
///
/// fn sent_from(request: &Request) -> Option<String> {
///     request.headers.get("origin")?.as_str().map(str::to_owned)
/// }
/// assert_eq!(sent_from(&Request::default()), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestHeaders(Option<Arc<TaskHeaders>>);

impl RequestHeaders {
    /// The headers of a message.
    pub fn new(headers: TaskHeaders) -> RequestHeaders {
        RequestHeaders(Some(Arc::new(headers)))
    }

    /// Every header, in order (empty for a request made by hand).
    pub fn to_map(&self) -> Map<String, Value> {
        self.0.as_ref().map(|h| h.to_map()).unwrap_or_default()
    }

    /// One header by its wire name; `None` when the message has no such header.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.to_map().remove(name)
    }
}

impl serde::Serialize for RequestHeaders {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(serializer)
    }
}

impl Request {
    /// The request context of a decoded message, run on the worker node `hostname`.
    pub fn from_message(msg: &TaskMessage, hostname: &str) -> Request {
        Request::build(
            msg.headers.clone(),
            msg.args.clone(),
            msg.kwargs.clone(),
            msg.delivery_info.clone(),
            &msg.properties,
            hostname,
        )
    }

    /// The request context of a decoded message, with the message's arguments, headers and
    /// delivery info moved in instead of copied: the worker's way (see
    /// [`Request::give_back`]). Until then `msg` holds empty arguments, empty headers
    /// and an empty delivery info; its `properties`, `embed` and the rest stay in place.
    pub(crate) fn lend(msg: &mut TaskMessage, hostname: &str) -> Request {
        Request::build(
            std::mem::take(&mut msg.headers),
            std::mem::take(&mut msg.args),
            std::mem::take(&mut msg.kwargs),
            std::mem::take(&mut msg.delivery_info),
            &msg.properties,
            hostname,
        )
    }

    /// The request of a message's parts.
    fn build(
        h: TaskHeaders,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        delivery_info: DeliveryInfo,
        properties: &Map<String, Value>,
        hostname: &str,
    ) -> Request {
        let prop = |key: &str| {
            properties
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Request {
            id: h.id.clone(),
            name: h.task.clone(),
            args,
            kwargs,
            retries: h.retries,
            eta: h.eta,
            expires: h.expires,
            root_id: h.root_id.clone(),
            parent_id: h.parent_id.clone(),
            group: h.group.clone(),
            group_index: h.group_index,
            correlation_id: prop("correlation_id"),
            reply_to: prop("reply_to"),
            hostname: hostname.to_owned(),
            delivery_info,
            timelimit: (seconds(h.timelimit.0), seconds(h.timelimit.1)),
            ignore_result: h.ignore_result,
            headers: RequestHeaders::new(h),
            soft_deadline: None,
            deadline: None,
        }
    }

    /// Put back into `msg` what [`Request::lend`] moved out of it. A request (or its
    /// headers) still shared, e.g. by a blocking task that outlived its time limit, is
    /// copied instead.
    pub(crate) fn give_back(request: Arc<Request>, msg: &mut TaskMessage) {
        let request = Arc::try_unwrap(request).unwrap_or_else(|shared| (*shared).clone());
        msg.args = request.args;
        msg.kwargs = request.kwargs;
        msg.delivery_info = request.delivery_info;
        if let Some(headers) = request.headers.0 {
            msg.headers = Arc::try_unwrap(headers).unwrap_or_else(|shared| (*shared).clone());
        }
    }

    /// Completes when the soft time limit passes (never, without one): Celery raises
    /// `SoftTimeLimitExceeded` inside the task at that moment; an async Rust task awaits
    /// this instead, to clean up and return. The hard limit still stops it later.
    ///
    /// ```
    /// use celeriac::Request;
    /// use celeriac::task::TaskError;
    ///
    /// async fn crunch(request: &Request) -> Result<u64, TaskError> {
    ///     tokio::select! {
    ///         n = async { 42 } => Ok(n),
    ///         () = request.soft_time_limit() => Err(TaskError::soft_time_limit_exceeded()),
    ///     }
    /// }
    /// ```
    pub async fn soft_time_limit(&self) {
        match self.soft_deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Whether the soft time limit has passed.
    pub fn soft_time_limit_exceeded(&self) -> bool {
        self.soft_deadline
            .is_some_and(|at| tokio::time::Instant::now() >= at)
    }
}

/// Seconds from the wire as a `Duration`; Celery treats a missing or zero limit as none.
fn seconds(secs: Option<f64>) -> Option<Duration> {
    secs.filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Embed, ProtocolVersion, Serializer, TaskHeaders};
    use serde_json::json;

    fn message() -> TaskMessage {
        let mut headers = TaskHeaders::new("tasks.add", "id-1");
        headers.retries = 2;
        headers.parent_id = Some("parent".into());
        headers.group = Some("g".into());
        headers.group_index = Some(3);
        headers.timelimit = (Some(10.0), Some(2.5));
        headers.eta = DateTime::from_timestamp(1_900_000_000, 123_456_000);
        headers.expires = DateTime::from_timestamp(1_900_000_100, 0);
        headers.extra.insert("x-custom".into(), json!("v"));
        let mut properties = Map::new();
        properties.insert("correlation_id".into(), json!("id-1"));
        properties.insert("reply_to".into(), json!("reply-q"));
        TaskMessage {
            protocol: ProtocolVersion::V2,
            headers,
            args: vec![json!(2), json!(3)],
            kwargs: Map::new(),
            embed: Embed::default(),
            properties,
            serializer: Serializer::Json,
            delivery_info: DeliveryInfo {
                exchange: "".into(),
                routing_key: "celery".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn from_message_fills_every_field() {
        let r = Request::from_message(&message(), "celeriac@host");
        assert_eq!(r.id, "id-1");
        assert_eq!(r.name, "tasks.add");
        assert_eq!(r.args, vec![json!(2), json!(3)]);
        assert_eq!(r.retries, 2);
        assert_eq!(r.root_id.as_deref(), Some("id-1"));
        assert_eq!(r.parent_id.as_deref(), Some("parent"));
        assert_eq!(r.group.as_deref(), Some("g"));
        assert_eq!(r.group_index, Some(3));
        assert_eq!(r.correlation_id.as_deref(), Some("id-1"));
        assert_eq!(r.reply_to.as_deref(), Some("reply-q"));
        assert_eq!(r.hostname, "celeriac@host");
        assert_eq!(r.delivery_info.routing_key, "celery");
        assert_eq!(
            r.timelimit,
            (
                Some(Duration::from_secs(10)),
                Some(Duration::from_millis(2500))
            )
        );
        assert_eq!(r.ignore_result, Some(false));
        assert!(r.eta.is_some() && r.expires.is_some());
    }

    #[test]
    fn headers_map_is_in_wire_order_with_python_times() {
        let r = Request::from_message(&message(), "h");
        let headers = r.headers.to_map();
        let keys: Vec<&str> = headers.keys().map(String::as_str).collect();
        let mut expected = crate::protocol::headers::KNOWN_HEADERS.to_vec();
        expected.push("x-custom");
        assert_eq!(keys, expected);
        assert_eq!(headers["eta"], json!("2030-03-17T17:46:40.123456+00:00"));
        assert_eq!(r.headers.get("eta"), Some(headers["eta"].clone()));
        assert_eq!(r.headers.get("no-such-header"), None);
        assert_eq!(headers["expires"], json!("2030-03-17T17:48:20+00:00"));
        assert_eq!(
            headers["timelimit"],
            json!([10, 2.5]),
            "whole seconds are written as Python ints"
        );
        assert_eq!(headers["x-custom"], json!("v"));
        assert_eq!(
            serde_json::to_value(&r.headers).unwrap(),
            Value::Object(headers)
        );
    }

    #[test]
    fn a_lent_message_comes_back_whole() {
        let original = message();
        let mut msg = original.clone();
        let request = Request::lend(&mut msg, "celeriac@host");
        assert_eq!(request, Request::from_message(&original, "celeriac@host"));
        assert!(msg.args.is_empty() && msg.headers.id.is_empty());
        assert_eq!(msg.properties, original.properties, "properties stay");
        Request::give_back(Arc::new(request), &mut msg);
        assert_eq!(msg, original);

        // Still shared (a blocking task outlived its limit): copied back.
        let mut msg = original.clone();
        let request = Arc::new(Request::lend(&mut msg, "h"));
        let kept = request.clone();
        Request::give_back(request, &mut msg);
        assert_eq!(msg, original);
        let headers = kept.headers.clone();
        drop(kept);
        let mut msg = original.clone();
        let request = Request::lend(&mut msg, "h");
        let headers_kept = request.headers.clone();
        Request::give_back(Arc::new(request), &mut msg);
        assert_eq!(msg, original);
        assert_eq!(headers_kept, headers);
    }

    #[test]
    fn odd_time_limits_are_none() {
        assert_eq!(seconds(Some(0.0)), None);
        assert_eq!(seconds(Some(-1.0)), None);
        assert_eq!(seconds(Some(f64::NAN)), None);
        assert_eq!(seconds(Some(f64::INFINITY)), None);
        assert_eq!(seconds(None), None);
    }
}
