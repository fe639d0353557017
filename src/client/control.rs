//! Remote control of workers: the client side of kombu's pidbox, as Celery 5.7's
//! `app.control` speaks it (`ping`, `revoke`, or any command through
//! [`Control::broadcast`]). Python Celery workers answer it; the Rust worker does not yet.
//!
//! # On the wire (checked against captures of Celery 5.7, `interop-tests/vectors/control/`)
//!
//! A request is a JSON message to the fanout exchange `celery.pidbox` (Celery's
//! `control_exchange` + `.pidbox`), routing key `""`:
//!
//! ```text
//! body     {"method": "ping", "arguments": {}, "destination": null, "pattern": null,
//!           "matcher": null, "ticket": "<uuid4>",
//!           "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "<oid>"}}
//! headers  {"clock": <Lamport clock>, "expires": <unix time + timeout, or 0>}
//! props    delivery_mode 2, priority 0, application/json, utf-8
//! ```
//!
//! `ticket` and `reply_to` are there only when replies are wanted. Before publishing such a
//! request the client declares its reply queue `<oid>.reply.celery.pidbox`, bound to the
//! direct exchange `reply.celery.pidbox` with routing key `<oid>`, with Celery's
//! `control_queue_expires` (10 s, `x-expires`) and `control_queue_ttl` (300 s,
//! `x-message-ttl`). A worker answers `{"<hostname>": <reply>}` with header `ticket`; replies
//! are collected until none arrives within the timeout (as Celery, the timeout runs afresh
//! after each reply) or `limit` have arrived, then the reply queue is deleted. Each request
//! has a reply queue of its own (Celery's oid differs per mailbox object, so its successive
//! calls do the same).
//!
//! On Redis the request is a `PUBLISH` on `/<db>.celery.pidbox` and the reply queue a list
//! bound in `_kombu.binding.reply.celery.pidbox`; on RabbitMQ an exclusive queue on a
//! connection of its own (see [`AnyBroker::publish_fanout`] and
//! [`AnyBroker::declare_reply_queue`]).

use crate::broker::{AnyBroker, BrokerError, ReplyQueueSpec};
use crate::protocol::RawMessage;
use crate::protocol::kombu::to_python_json;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Celery's default `control_exchange`: requests go to `celery.pidbox`.
pub const DEFAULT_NAMESPACE: &str = "celery";

/// Celery's `TERM_SIGNAME`: what `app.control.revoke` sends as `signal` by default.
pub const TERM_SIGNAME: &str = "SIGTERM";

/// The process's Lamport clock (Celery's `app.clock`): forwarded for every request sent,
/// adjusted by the `clock` header of every reply.
static CLOCK: AtomicU64 = AtomicU64::new(0);

fn clock_forward() -> u64 {
    CLOCK.fetch_add(1, Ordering::SeqCst) + 1
}

fn clock_adjust(other: u64) {
    let _ = CLOCK.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
        Some(v.max(other) + 1)
    });
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why a remote-control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Declaring, publishing or consuming failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Celery's remote-control settings (the `control_*` options). The defaults are Celery 5.7's.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSettings {
    /// `control_exchange`: requests go to `<namespace>.pidbox`, replies through
    /// `reply.<namespace>.pidbox`.
    pub namespace: String,
    /// `control_queue_ttl`: replies older than this are dropped (`x-message-ttl`).
    pub queue_ttl: Option<Duration>,
    /// `control_queue_expires`: an unused reply queue is deleted after this (`x-expires`).
    pub queue_expires: Option<Duration>,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            namespace: DEFAULT_NAMESPACE.into(),
            queue_ttl: Some(Duration::from_secs(300)),
            queue_expires: Some(Duration::from_secs(10)),
        }
    }
}

impl ControlSettings {
    /// The fanout exchange requests are published to (`celery.pidbox`).
    pub fn exchange(&self) -> String {
        format!("{}.pidbox", self.namespace)
    }

    /// The direct exchange replies come through (`reply.celery.pidbox`).
    pub fn reply_exchange(&self) -> String {
        format!("reply.{}.pidbox", self.namespace)
    }

    /// The reply queue of `oid`, as kombu's `Mailbox.get_reply_queue` names and binds it.
    pub fn reply_queue(&self, oid: &str) -> ReplyQueueSpec {
        let exchange = self.reply_exchange();
        ReplyQueueSpec {
            queue: format!("{oid}.{exchange}"),
            exchange,
            routing_key: oid.to_owned(),
            expires: self.queue_expires,
            message_ttl: self.queue_ttl,
        }
    }
}

/// How a request is sent and answered (the keyword arguments of Celery's
/// `app.control.broadcast`). The defaults are Celery's: to every worker, no reply, 1 s.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastOptions {
    /// Only these workers (node names such as `celery@host`) act on it; `None` or empty:
    /// every worker. With replies and no `limit`, collection stops after this many.
    pub destination: Option<Vec<String>>,
    /// With `matcher`: only workers whose name matches the pattern act on it.
    pub pattern: Option<String>,
    /// How `pattern` matches (kombu's matchers: `glob`, `pcre`).
    pub matcher: Option<String>,
    /// Ask for replies (sends a ticket and `reply_to`).
    pub reply: bool,
    /// How long to wait for each next reply; also the request's `expires` header.
    pub timeout: Duration,
    /// Stop collecting after this many replies.
    pub limit: Option<usize>,
}

impl Default for BroadcastOptions {
    fn default() -> Self {
        BroadcastOptions {
            destination: None,
            pattern: None,
            matcher: None,
            reply: false,
            timeout: Duration::from_secs(1),
            limit: None,
        }
    }
}

impl BroadcastOptions {
    /// Celery's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Only these workers.
    pub fn destination<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.destination = Some(nodes.into_iter().map(Into::into).collect());
        self
    }
    /// Only workers whose name matches `pattern` by `matcher` (`glob` or `pcre`).
    pub fn pattern(mut self, pattern: impl Into<String>, matcher: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self.matcher = Some(matcher.into());
        self
    }
    /// Ask for replies.
    pub fn reply(mut self, yes: bool) -> Self {
        self.reply = yes;
        self
    }
    /// How long to wait for each next reply.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Stop after this many replies.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// How many replies end the collection early: `limit`, else the number of destinations.
    fn reply_limit(&self) -> Option<usize> {
        self.limit.or_else(|| {
            self.destination
                .as_ref()
                .filter(|d| !d.is_empty())
                .map(Vec::len)
        })
    }
}

/// One worker's answer: its node name and what it replied (e.g. `{"ok": "pong"}`).
pub type NodeReply = (String, Value);

/// The body of a request, in kombu's key order (`Mailbox._publish`).
fn request_body(
    command: &str,
    arguments: Map<String, Value>,
    opts: &BroadcastOptions,
    reply_to: Option<(&str, &str, &str)>,
) -> Map<String, Value> {
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    let mut body = Map::new();
    body.insert("method".into(), Value::from(command));
    body.insert("arguments".into(), Value::Object(arguments));
    body.insert(
        "destination".into(),
        match &opts.destination {
            Some(d) if !d.is_empty() => Value::from(d.clone()),
            _ => Value::Null,
        },
    );
    body.insert("pattern".into(), text(&opts.pattern));
    body.insert("matcher".into(), text(&opts.matcher));
    if let Some((ticket, exchange, oid)) = reply_to {
        body.insert("ticket".into(), Value::from(ticket));
        let mut to = Map::new();
        to.insert("exchange".into(), Value::from(exchange));
        to.insert("routing_key".into(), Value::from(oid));
        body.insert("reply_to".into(), Value::Object(to));
    }
    body
}

/// The request message: the body as kombu's JSON, headers `clock` and `expires` (a unix
/// time, or `0` for none), persistent, priority 0.
fn request_message(body: &Map<String, Value>, clock: u64, expires: Option<f64>) -> RawMessage {
    let mut headers = Map::new();
    headers.insert("clock".into(), Value::from(clock));
    headers.insert(
        "expires".into(),
        expires.map_or(Value::from(0), Value::from),
    );
    let mut properties = Map::new();
    properties.insert("delivery_mode".into(), Value::from(2));
    properties.insert("priority".into(), Value::from(0));
    RawMessage {
        body: to_python_json(&Value::Object(body.clone())).into_bytes(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers: headers.into(),
        properties,
        delivery_info: Default::default(),
    }
}

/// What a message on the reply queue is to a request with `ticket`.
#[derive(Debug, PartialEq)]
enum Reply {
    /// Its replies (`{"<node>": <reply>, ...}`), in order.
    Ours(Vec<NodeReply>),
    /// An answer to another request.
    Other,
    /// Its `expires` header has passed.
    Expired,
    /// Not a reply Celery could read.
    Invalid(String),
}

/// Match a reply as kombu's `Mailbox._collect` does: drop it when its `expires` header has
/// passed, take it when its `ticket` header is ours (or missing), else leave it.
fn read_reply(msg: &RawMessage, ticket: &str, now: f64) -> Reply {
    if let Some(expires) = msg.headers.get("expires").and_then(Value::as_f64)
        && expires != 0.0
        && now > expires
    {
        return Reply::Expired;
    }
    match msg.headers.get("ticket") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == ticket => {}
        Some(_) => return Reply::Other,
    }
    let body: Result<Value, String> = match msg.content_type.as_str() {
        "application/json" => serde_json::from_slice(&msg.body).map_err(|e| e.to_string()),
        "application/x-msgpack" => rmp_serde::from_slice(&msg.body).map_err(|e| e.to_string()),
        other => Err(format!("unsupported content type {other:?}")),
    };
    match body {
        Ok(Value::Object(nodes)) => Reply::Ours(nodes.into_iter().collect()),
        Ok(other) => Reply::Invalid(format!("reply body is not an object: {other}")),
        Err(e) => Reply::Invalid(format!("undecodable reply: {e}")),
    }
}

/// Remote control of workers (Celery's `app.control`), from [`Client::control`](super::Client::control).
/// Cheap to clone.
#[derive(Clone)]
pub struct Control {
    broker: AnyBroker,
    settings: Arc<ControlSettings>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("broker", &self.broker.describe())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Control {
    /// Remote control through `broker` with Celery's default settings.
    pub fn new(broker: AnyBroker) -> Control {
        Control {
            broker,
            settings: Arc::new(ControlSettings::default()),
        }
    }

    /// The same, with other settings (e.g. another `control_exchange`).
    pub fn with_settings(mut self, settings: ControlSettings) -> Control {
        self.settings = Arc::new(settings);
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &ControlSettings {
        &self.settings
    }

    /// Send `command` with keyword `arguments` to the workers (Celery's
    /// `app.control.broadcast`). With [`BroadcastOptions::reply`], returns the replies
    /// received, in arrival order; otherwise an empty list once the request is published.
    pub async fn broadcast(
        &self,
        command: &str,
        arguments: Map<String, Value>,
        opts: &BroadcastOptions,
    ) -> Result<Vec<NodeReply>, ControlError> {
        self.send(command, arguments, opts, true).await
    }

    /// `send` with `expires_header = false` writes `expires: 0`, as Celery does for a
    /// request sent without a timeout (`AsyncResult.revoke`).
    async fn send(
        &self,
        command: &str,
        arguments: Map<String, Value>,
        opts: &BroadcastOptions,
        expires_header: bool,
    ) -> Result<Vec<NodeReply>, ControlError> {
        let exchange = self.settings.exchange();
        let expires = (expires_header && !opts.timeout.is_zero())
            .then(|| unix_now() + opts.timeout.as_secs_f64());
        if !opts.reply {
            let body = request_body(command, arguments, opts, None);
            let msg = request_message(&body, clock_forward(), expires);
            self.broker.publish_fanout(&msg, &exchange, "").await?;
            return Ok(Vec::new());
        }
        let oid = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        let spec = self.settings.reply_queue(&oid);
        let body = request_body(
            command,
            arguments,
            opts,
            Some((&ticket, &spec.exchange, &oid)),
        );
        let msg = request_message(&body, clock_forward(), expires);
        // The reply queue exists before anyone can answer.
        let mut queue = self.broker.declare_reply_queue(&spec).await?;
        let collected = async {
            self.broker.publish_fanout(&msg, &exchange, "").await?;
            let limit = opts.reply_limit();
            let mut replies = Vec::new();
            while limit.is_none_or(|l| replies.len() < l) {
                let Some(reply) = queue.next(opts.timeout).await? else {
                    break;
                };
                if let Some(c) = reply.headers.get("clock").and_then(Value::as_u64) {
                    clock_adjust(c);
                }
                match read_reply(&reply, &ticket, unix_now()) {
                    Reply::Ours(nodes) => replies.extend(nodes),
                    Reply::Other | Reply::Expired => {}
                    Reply::Invalid(reason) => {
                        tracing::warn!(%reason, command, "remote-control reply skipped");
                    }
                }
            }
            Ok::<_, ControlError>(replies)
        }
        .await;
        if let Err(e) = queue.delete().await {
            tracing::warn!(error = %e, queue = %spec.queue, "could not delete the reply queue");
        }
        collected
    }

    /// Ping every worker (Celery's `app.control.ping`): the node name and reply
    /// (`{"ok": "pong"}`) of each that answered.
    pub async fn ping(&self, timeout: Duration) -> Result<Vec<NodeReply>, ControlError> {
        self.broadcast(
            "ping",
            Map::new(),
            &BroadcastOptions::new().reply(true).timeout(timeout),
        )
        .await
    }

    /// Ping only the workers named in `nodes`; stops as soon as they have all answered.
    pub async fn ping_nodes(
        &self,
        nodes: &[String],
        timeout: Duration,
    ) -> Result<Vec<NodeReply>, ControlError> {
        self.broadcast(
            "ping",
            Map::new(),
            &BroadcastOptions::new()
                .reply(true)
                .timeout(timeout)
                .destination(nodes.iter().cloned()),
        )
        .await
    }

    /// Tell every worker to revoke these tasks (Celery's `app.control.revoke`): they will
    /// not run them, and store REVOKED when they meet them. With `terminate`, a task
    /// already running is killed with `signal` (default `SIGTERM`; the Rust worker and
    /// thread pools cannot do that). Does not wait for replies.
    pub async fn revoke<S: AsRef<str>>(
        &self,
        task_ids: &[S],
        terminate: bool,
        signal: Option<&str>,
    ) -> Result<(), ControlError> {
        let arguments = revoke_arguments(
            task_ids,
            terminate,
            Value::from(signal.unwrap_or(TERM_SIGNAME)),
        );
        self.send("revoke", arguments, &BroadcastOptions::new(), true)
            .await
            .map(drop)
    }

    /// What `AsyncResult.revoke` sends: the id as a string, `signal` as given (`null` when
    /// `None`), no `expires`.
    pub(crate) async fn revoke_one(
        &self,
        task_id: &str,
        terminate: bool,
        signal: Option<&str>,
    ) -> Result<(), ControlError> {
        let arguments = revoke_arguments(&[task_id], terminate, Value::from(signal));
        self.send("revoke", arguments, &BroadcastOptions::new(), false)
            .await
            .map(drop)
    }
}

/// `{"task_id": <id, or a list of several>, "terminate": .., "signal": ..}`.
fn revoke_arguments<S: AsRef<str>>(
    task_ids: &[S],
    terminate: bool,
    signal: Value,
) -> Map<String, Value> {
    let ids: Vec<Value> = task_ids.iter().map(|s| Value::from(s.as_ref())).collect();
    let task_id = match <[Value; 1]>::try_from(ids) {
        Ok([one]) => one,
        Err(many) => Value::Array(many),
    };
    let mut arguments = Map::new();
    arguments.insert("task_id".into(), task_id);
    arguments.insert("terminate".into(), Value::Bool(terminate));
    arguments.insert("signal".into(), signal);
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::redis::{decode_envelope, envelope, fanout_channel};
    use serde_json::json;

    fn vectors(name: &str) -> Value {
        let path = format!(
            "{}/interop-tests/vectors/control/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// The PUBLISH commands Celery sent, in order: (channel, envelope).
    fn celery_publishes(capture: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for call in capture["calls"].as_array().unwrap() {
            for op in call["operations"].as_array().unwrap() {
                if let Some(cmd) = op["command"].as_array()
                    && cmd[0] == "PUBLISH"
                {
                    out.push((
                        cmd[1].as_str().unwrap().to_owned(),
                        cmd[2].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
        out
    }

    /// Rebuild Celery's envelope from its own volatile values (ticket, oid, clock, expires,
    /// delivery tag) and compare byte for byte.
    #[test]
    fn requests_match_celerys_redis_envelopes_byte_for_byte() {
        let capture = vectors("redis.json");
        let published = celery_publishes(&capture);
        assert_eq!(
            published.len(),
            4,
            "ping, revoke, AsyncResult.revoke, inspect ping"
        );
        let settings = ControlSettings::default();
        for (i, (channel, data)) in published.iter().enumerate() {
            assert_eq!(channel, &fanout_channel(7, &settings.exchange(), ""));
            let celery: Value = serde_json::from_str(data).unwrap();
            let raw = decode_envelope(data.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_slice(&raw.body).unwrap();
            let clock = celery["headers"]["clock"].as_u64().unwrap();
            let expires = celery["headers"]["expires"].as_f64().filter(|e| *e != 0.0);
            let tag = celery["properties"]["delivery_tag"].as_str().unwrap();
            let body = match i {
                0 | 3 => {
                    let oid = theirs["reply_to"]["routing_key"].as_str().unwrap();
                    let ticket = theirs["ticket"].as_str().unwrap();
                    request_body(
                        "ping",
                        Map::new(),
                        &BroadcastOptions::new().reply(true),
                        Some((ticket, &settings.reply_exchange(), oid)),
                    )
                }
                1 => request_body(
                    "revoke",
                    revoke_arguments(
                        &["00000000-0000-4000-8000-00000000c001"],
                        false,
                        json!(TERM_SIGNAME),
                    ),
                    &BroadcastOptions::new(),
                    None,
                ),
                _ => request_body(
                    "revoke",
                    revoke_arguments(
                        &["00000000-0000-4000-8000-00000000c002"],
                        false,
                        json!(null),
                    ),
                    &BroadcastOptions::new(),
                    None,
                ),
            };
            let ours = request_message(&body, clock, expires);
            assert_eq!(
                String::from_utf8(ours.body.clone()).unwrap(),
                String::from_utf8(raw.body.clone()).unwrap(),
                "body of request {i}"
            );
            let env = to_python_json(&envelope(&ours, &settings.exchange(), "", tag));
            assert_eq!(&env, data, "envelope of request {i}");
        }
    }

    #[test]
    fn requests_match_celerys_amqp_publishes() {
        let capture = vectors("amqp.json");
        let publishes: Vec<&Value> = capture["calls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["operations"].as_array().unwrap())
            .filter(|op| op["method"] == "basic_publish")
            .collect();
        assert_eq!(publishes.len(), 4);
        let ping = publishes[0];
        assert_eq!(ping["kwargs"]["exchange"], "celery.pidbox");
        assert_eq!(ping["kwargs"]["routing_key"], "");
        assert_eq!(ping["kwargs"]["mandatory"], false);
        let theirs: Value = serde_json::from_str(ping["body"].as_str().unwrap()).unwrap();
        let props = &ping["properties"];
        let body = request_body(
            "ping",
            Map::new(),
            &BroadcastOptions::new().reply(true),
            Some((
                theirs["ticket"].as_str().unwrap(),
                "reply.celery.pidbox",
                theirs["reply_to"]["routing_key"].as_str().unwrap(),
            )),
        );
        let ours = request_message(
            &body,
            props["application_headers"]["clock"].as_u64().unwrap(),
            props["application_headers"]["expires"].as_f64(),
        );
        assert_eq!(String::from_utf8(ours.body).unwrap(), ping["body"]);
        assert_eq!(ours.content_type, props["content_type"]);
        assert_eq!(ours.content_encoding, props["content_encoding"]);
        assert_eq!(
            Value::Object(ours.headers.into_map()),
            props["application_headers"]
        );
        assert_eq!(ours.properties["delivery_mode"], props["delivery_mode"]);
        assert_eq!(ours.properties["priority"], props["priority"]);
        // AsyncResult.revoke(): no timeout, so `expires` is the integer 0.
        let revoke = publishes[2];
        let ours = request_message(
            &request_body(
                "revoke",
                revoke_arguments(
                    &["00000000-0000-4000-8000-00000000c002"],
                    false,
                    json!(null),
                ),
                &BroadcastOptions::new(),
                None,
            ),
            revoke["properties"]["application_headers"]["clock"]
                .as_u64()
                .unwrap(),
            None,
        );
        assert_eq!(String::from_utf8(ours.body).unwrap(), revoke["body"]);
        assert_eq!(
            Value::Object(ours.headers.into_map()),
            revoke["properties"]["application_headers"]
        );
    }

    #[test]
    fn the_reply_queue_is_named_and_bound_as_celerys() {
        let capture = vectors("amqp.json");
        let ops = capture["calls"][0]["operations"].as_array().unwrap();
        let declare = ops
            .iter()
            .find(|op| op["method"] == "queue_declare")
            .unwrap();
        let bind = ops.iter().find(|op| op["method"] == "queue_bind").unwrap();
        let oid = bind["kwargs"]["routing_key"].as_str().unwrap();
        let spec = ControlSettings::default().reply_queue(oid);
        assert_eq!(spec.queue, declare["kwargs"]["queue"]);
        assert_eq!(spec.exchange, bind["kwargs"]["exchange"]);
        assert_eq!(
            declare["kwargs"]["arguments"],
            "{'x-expires': 10000, 'x-message-ttl': 300000}"
        );
        assert_eq!(spec.expires, Some(Duration::from_millis(10_000)));
        assert_eq!(spec.message_ttl, Some(Duration::from_millis(300_000)));
        // Redis: kombu's binding member for the same queue.
        let capture = vectors("redis.json");
        let ops = capture["calls"][0]["operations"].as_array().unwrap();
        let bind = ops
            .iter()
            .filter_map(|op| op["command"].as_array())
            .find(|c| c[0] == "EVALSHA")
            .unwrap();
        let oid = bind[5].as_str().unwrap().split('\x06').next().unwrap();
        let spec = ControlSettings::default().reply_queue(oid);
        assert_eq!(bind[3], format!("_kombu.binding.{}", spec.exchange));
        assert_eq!(
            bind[5],
            format!("{}\x06\x16\x06\x16{}", spec.routing_key, spec.queue)
        );
    }

    #[test]
    fn replies_are_matched_by_ticket() {
        let capture = vectors("redis.json");
        let envelope = capture["calls"][0]["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|op| op["decoded_envelope"].as_str())
            .unwrap();
        let msg = decode_envelope(envelope.as_bytes()).unwrap();
        let ticket = msg.headers["ticket"].as_str().unwrap().to_owned();
        let node = capture["node"].as_str().unwrap();
        assert_eq!(
            read_reply(&msg, &ticket, unix_now()),
            Reply::Ours(vec![(node.to_owned(), json!({"ok": "pong"}))])
        );
        assert_eq!(read_reply(&msg, "another", unix_now()), Reply::Other);
        let mut expired = msg.clone();
        expired.headers.insert("expires".into(), json!(1000.5));
        assert_eq!(read_reply(&expired, &ticket, 2000.0), Reply::Expired);
        expired.headers.insert("expires".into(), json!(0));
        assert!(matches!(
            read_reply(&expired, &ticket, 2000.0),
            Reply::Ours(_)
        ));
        let mut untagged = msg.clone();
        untagged.headers.remove("ticket");
        assert!(matches!(
            read_reply(&untagged, &ticket, 0.0),
            Reply::Ours(_)
        ));
        let mut bad = msg;
        bad.body = b"[1]".to_vec();
        assert!(matches!(read_reply(&bad, &ticket, 0.0), Reply::Invalid(_)));
        let mut packed = bad.clone();
        packed.content_type = "application/x-msgpack".into();
        packed.body = rmp_serde::to_vec(&json!({"n@h": {"ok": "pong"}})).unwrap();
        assert_eq!(
            read_reply(&packed, &ticket, 0.0),
            Reply::Ours(vec![("n@h".into(), json!({"ok": "pong"}))])
        );
    }

    #[test]
    fn destination_limits_collection_and_revoke_takes_one_or_many_ids() {
        let opts = BroadcastOptions::new().destination(["a@h", "b@h"]);
        assert_eq!(opts.reply_limit(), Some(2));
        assert_eq!(opts.clone().limit(1).reply_limit(), Some(1));
        assert_eq!(BroadcastOptions::new().reply_limit(), None);
        let body = request_body("ping", Map::new(), &opts, None);
        assert_eq!(body["destination"], json!(["a@h", "b@h"]));
        let none = request_body(
            "ping",
            Map::new(),
            &BroadcastOptions::new().destination(Vec::<String>::new()),
            None,
        );
        assert_eq!(none["destination"], Value::Null);
        assert_eq!(
            Value::Object(revoke_arguments(&["x", "y"], true, json!("SIGKILL"))),
            json!({"task_id": ["x", "y"], "terminate": true, "signal": "SIGKILL"})
        );
    }

    #[test]
    fn the_clock_moves_forward_past_what_replies_carry() {
        let a = clock_forward();
        clock_adjust(a + 100);
        assert!(clock_forward() >= a + 102);
    }
}
