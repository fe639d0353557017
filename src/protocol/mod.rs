//! Celery's bytes: decoding and encoding task messages (protocol v2, reading v1),
//! kombu's serializers and the result-backend value format.
//!
//! Everything here is a pure function over bytes and values: no I/O. The transports in
//! [`crate::broker`] move [`RawMessage`]s; only this module knows what is inside them.

pub mod body;
pub mod content_type;
pub mod decode;
pub mod encode;
pub mod exception;
pub mod headers;
pub mod kombu;
pub(crate) mod raw_headers;
pub mod result_meta;

use serde_json::{Map, Value};

pub use content_type::Serializer;
pub use decode::{DecodeError, decode};
pub use encode::{EncodeError, encode};
pub use exception::ExceptionInfo;
pub use headers::TaskHeaders;
pub use raw_headers::Headers;
pub use result_meta::{ResultMeta, TaskState};

/// The transport-neutral form of one kombu message (PROTOCOL.md section 0).
///
/// A broker fills it from the wire (the Redis envelope, or an AMQP delivery) and the
/// protocol layer reads the task out of it. `body` is the serialized (and possibly
/// compressed) body, already freed of any transport encoding such as the Redis
/// envelope's base64.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawMessage {
    /// The serialized body bytes.
    pub body: Vec<u8>,
    /// The serializer's mime type, e.g. `application/json`.
    pub content_type: String,
    /// `utf-8` for JSON, `binary` for msgpack.
    pub content_encoding: String,
    /// Application headers (Celery's task headers for protocol v2, empty for v1): a JSON
    /// map to read and change, which a transport may fill lazily from its own form.
    pub headers: Headers,
    /// Message properties: `correlation_id`, `reply_to`, `delivery_mode`, `priority`,
    /// `expiration`, and anything else the sender put there. Transport bookkeeping
    /// (`delivery_info`, `delivery_tag`, `body_encoding`) is not kept here.
    pub properties: Map<String, Value>,
    /// Where the message was routed.
    pub delivery_info: DeliveryInfo,
}

/// Where a message was published to and how it arrived.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryInfo {
    /// The exchange it was published to (`""` is the default exchange).
    pub exchange: String,
    /// The routing key (the queue name for the default exchange).
    pub routing_key: String,
    /// The priority it was published with, if any.
    #[serde(default)]
    pub priority: Option<u8>,
    /// Whether the broker delivered it before (restored or requeued).
    #[serde(default)]
    pub redelivered: bool,
}

/// Which protocol a message was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// Task fields in the body (a dict), empty headers.
    V1,
    /// Task fields in the headers, body `[args, kwargs, embed]`.
    V2,
}

/// Canvas fields carried in a v2 body's third element.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    /// `link=` signatures, applied with the result after success.
    pub callbacks: Option<Vec<Value>>,
    /// `link_error=` signatures, applied after failure.
    pub errbacks: Option<Vec<Value>>,
    /// Remaining chain steps, last step first. `Some(vec![])` is kept apart from `None`.
    pub chain: Option<Vec<Value>>,
    /// The chord body signature, on chord header messages.
    pub chord: Option<Value>,
    /// Any other keys found in the embed map (Celery merges them into the request).
    pub extra: Map<String, Value>,
}

/// A decoded task message: what the worker runs and what the client sends.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Which protocol the message came in (encoding always writes v2).
    pub protocol: ProtocolVersion,
    /// The task headers (known ones typed, unknown ones kept in `extra`).
    pub headers: TaskHeaders,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Canvas fields.
    pub embed: Embed,
    /// Message properties (`correlation_id`, `reply_to`, `priority`, ... and unknown ones).
    pub properties: Map<String, Value>,
    /// The serializer of the body.
    pub serializer: Serializer,
    /// Where the message came from (empty for a message built to be sent).
    pub delivery_info: DeliveryInfo,
}

impl TaskMessage {
    /// A protocol v2 message for `task_name` with the given id and arguments, every
    /// other field defaulted the way Celery's `apply_async` defaults it (see
    /// [`TaskHeaders::new`]): JSON, no canvas, no properties, no delivery info yet.
    pub fn new(
        task_name: impl Into<String>,
        id: impl Into<String>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Self {
        TaskMessage {
            protocol: ProtocolVersion::V2,
            headers: TaskHeaders::new(task_name, id),
            args,
            kwargs,
            embed: Embed::default(),
            properties: Map::new(),
            serializer: Serializer::Json,
            delivery_info: DeliveryInfo::default(),
        }
    }

    /// Take `properties` and `delivery_info` from the raw message this was decoded from
    /// (by [`decode::decode_task`], which leaves them empty), leaving them empty there.
    pub(crate) fn adopt_routing(&mut self, raw: &mut RawMessage) {
        self.properties = std::mem::take(&mut raw.properties);
        self.delivery_info = std::mem::take(&mut raw.delivery_info);
    }
}
