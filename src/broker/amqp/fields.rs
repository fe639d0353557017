//! AMQP field tables and properties <-> the neutral JSON maps of [`RawMessage`].
//!
//! Celery's headers are JSON-shaped values; py-amqp writes Python `None` as void, `int` as
//! a 32- or 64-bit integer, `float` as a double, `str` as a long string, `dict` and `list`
//! as tables and arrays. Reading takes every AMQP type back to the nearest JSON value, so
//! a header written by any client decodes in one place, [`crate::protocol`].

use super::super::{BrokerError, lossless_text};
use crate::protocol::raw_headers::{HeaderSource, HeaderValue};
use crate::protocol::{DeliveryInfo, Headers, RawMessage};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;

/// A JSON value as py-amqp would write the same Python value.
pub(crate) fn to_amqp(value: &Value) -> Result<AMQPValue, BrokerError> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) => AMQPValue::LongInt(small),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else if n.as_u64().is_some() {
                // Above i64::MAX: AMQP has no unsigned 64-bit field type; a double keeps
                // the magnitude (py-amqp refuses such ints outright).
                AMQPValue::Double(n.as_f64().unwrap_or(f64::MAX))
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(to_amqp(item)?);
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(map) => AMQPValue::FieldTable(to_table(map)?),
    })
}

/// A JSON object as an AMQP field table. Keys longer than 255 bytes cannot be sent.
pub(crate) fn to_table(map: &Map<String, Value>) -> Result<FieldTable, BrokerError> {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(short(key, "header name")?, to_amqp(value)?);
    }
    Ok(table)
}

/// An AMQP value as JSON: integers stay integers, byte strings become text (invalid UTF-8
/// bytes as their Latin-1 characters), timestamps become their number of seconds.
pub(crate) fn from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Void => Value::Null,
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(lossless_text(s.as_bytes())),
        AMQPValue::ByteArray(b) => Value::String(lossless_text(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(from_amqp).collect()),
        AMQPValue::FieldTable(t) => Value::Object(from_table(t)),
    }
}

/// An AMQP field table as a JSON object.
pub(crate) fn from_table(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), from_amqp(v)))
        .collect()
}

/// An AMQP value as a header value, text borrowed when it is valid UTF-8.
fn header_value(value: &AMQPValue) -> HeaderValue<'_> {
    fn text(bytes: &[u8]) -> Cow<'_, str> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(lossless_text(bytes)),
        }
    }
    match value {
        AMQPValue::Void => HeaderValue::Null,
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortString(s) => HeaderValue::Str(Cow::Borrowed(s.as_str())),
        AMQPValue::LongString(s) => HeaderValue::Str(text(s.as_bytes())),
        AMQPValue::ByteArray(b) => HeaderValue::Str(text(b.as_slice())),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => {
            HeaderValue::Json(Cow::Owned(from_amqp(value)))
        }
        other => match from_amqp(other) {
            Value::Number(n) => HeaderValue::Num(n),
            _ => HeaderValue::Null,
        },
    }
}

/// A delivery's properties, kept whole so that its headers are read from lapin's field
/// table straight into the task headers, not copied into a JSON map first.
#[derive(Debug)]
struct AmqpHeaders(BasicProperties);

impl HeaderSource for AmqpHeaders {
    fn to_map(&self) -> Map<String, Value> {
        self.0
            .headers()
            .as_ref()
            .map(from_table)
            .unwrap_or_default()
    }

    fn visit(&self, each: &mut dyn FnMut(&str, HeaderValue<'_>)) {
        if let Some(table) = self.0.headers() {
            for (k, v) in table.inner() {
                each(k.as_str(), header_value(v));
            }
        }
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A short string (at most 255 bytes: queue names, routing keys, correlation ids, ...).
pub(crate) fn short(s: &str, what: &'static str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(s).map_err(|_| BrokerError::TooLong { what, len: s.len() })
}

/// The AMQP properties for a message: content type and encoding, the headers, and every
/// property kombu knows (`correlation_id`, `reply_to`, `delivery_mode`, `priority`,
/// `expiration`, `message_id`, `timestamp`, `type`, `user_id`, `app_id`). Persistent
/// (`delivery_mode` 2) unless the message says otherwise, as kombu publishes.
pub(crate) fn properties(msg: &RawMessage) -> Result<BasicProperties, BrokerError> {
    let p = &msg.properties;
    let text = |key: &str| p.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let number = |key: &str| p.get(key).and_then(Value::as_u64);
    let mut props = BasicProperties::default()
        .with_headers(to_table(&msg.headers)?)
        .with_delivery_mode(number("delivery_mode").map_or(2, |m| m.clamp(1, 2) as u8));
    if !msg.content_type.is_empty() {
        props = props.with_content_type(short(&msg.content_type, "content type")?);
    }
    if !msg.content_encoding.is_empty() {
        props = props.with_content_encoding(short(&msg.content_encoding, "content encoding")?);
    }
    if let Some(priority) = number("priority") {
        props = props.with_priority(priority.min(255) as u8);
    }
    if let Some(v) = text("correlation_id") {
        props = props.with_correlation_id(short(v, "correlation id")?);
    }
    if let Some(v) = text("reply_to") {
        props = props.with_reply_to(short(v, "reply_to")?);
    }
    if let Some(v) = p.get("expiration") {
        // kombu sends the per-message TTL as milliseconds in a string.
        let ms = match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        if let Some(ms) = ms {
            props = props.with_expiration(short(&ms, "expiration")?);
        }
    }
    if let Some(v) = text("message_id") {
        props = props.with_message_id(short(v, "message id")?);
    }
    if let Some(t) = number("timestamp") {
        props = props.with_timestamp(t);
    }
    if let Some(v) = text("type") {
        props = props.with_type(short(v, "type")?);
    }
    if let Some(v) = text("user_id") {
        props = props.with_user_id(short(v, "user id")?);
    }
    if let Some(v) = text("app_id") {
        props = props.with_app_id(short(v, "app id")?);
    }
    Ok(props)
}

/// A received AMQP message as a [`RawMessage`]: the body untouched, properties as kombu's
/// `Message.properties` shows them, headers as JSON (read from the field table only when
/// asked for), routing in `delivery_info`.
pub(crate) fn raw_message(
    body: Vec<u8>,
    props: BasicProperties,
    exchange: &str,
    routing_key: &str,
    redelivered: bool,
) -> RawMessage {
    let mut properties = Map::new();
    let mut put_text = |key: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            properties.insert(key.into(), Value::String(v.as_str().to_owned()));
        }
    };
    put_text("correlation_id", props.correlation_id());
    put_text("reply_to", props.reply_to());
    put_text("expiration", props.expiration());
    put_text("message_id", props.message_id());
    put_text("type", props.kind());
    put_text("user_id", props.user_id());
    put_text("app_id", props.app_id());
    if let Some(m) = props.delivery_mode() {
        properties.insert("delivery_mode".into(), Value::from(*m));
    }
    if let Some(p) = props.priority() {
        properties.insert("priority".into(), Value::from(*p));
    }
    if let Some(t) = props.timestamp() {
        properties.insert("timestamp".into(), Value::from(*t));
    }
    let name = |v: &Option<ShortString>| {
        v.as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default()
    };
    let delivery_priority = *props.priority();
    RawMessage {
        body,
        content_type: name(props.content_type()),
        content_encoding: name(props.content_encoding()),
        properties,
        delivery_info: DeliveryInfo {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            priority: delivery_priority,
            redelivered,
        },
        headers: match props.headers() {
            Some(_) => Headers::from_source(Box::new(AmqpHeaders(props))),
            None => Headers::default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn celery_headers_round_trip() {
        let headers = json!({
            "lang": "py", "task": "tasks.add", "id": "0b0e", "shadow": null, "eta": null,
            "retries": 0, "timelimit": [null, 30.5], "root_id": "0b0e", "ignore_result": false,
            "stamps": {}, "big": 5_000_000_000_i64, "neg": -7, "unicode": "héllo ✓",
            "nested": {"a": [1, "b", {"c": true}]}
        });
        let map = headers.as_object().unwrap();
        let table = to_table(map).unwrap();
        assert_eq!(table.inner()["retries"], AMQPValue::LongInt(0));
        assert_eq!(table.inner()["big"], AMQPValue::LongLongInt(5_000_000_000));
        assert_eq!(table.inner()["eta"], AMQPValue::Void);
        assert_eq!(&from_table(&table), map);
    }

    /// A delivery's headers read straight from the field table give the same task headers
    /// as the JSON map they make, and that map is the one a reader of `headers` sees.
    #[test]
    fn headers_read_from_the_table_match_the_json_map() {
        use crate::protocol::TaskHeaders;
        let headers = json!({
            "lang": "py", "task": "tasks.add", "id": "0b0e", "shadow": null,
            "eta": "2026-12-04T10:00:00.5+01:00", "expires": null, "group": "g",
            "group_index": 3, "retries": 2, "timelimit": [10, 2.5], "root_id": "r",
            "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen@x",
            "ignore_result": true, "replaced_task_nesting": 1, "stamped_headers": ["s"],
            "stamps": {"s": [1, "x"]}, "x-custom": {"deep": [null, 5_000_000_000_i64]},
            "compression": "application/x-gzip"
        });
        let mut table = to_table(headers.as_object().unwrap()).unwrap();
        // Text a Java or Go client may send: a short string, raw bytes, not UTF-8.
        table.insert("origin".into(), AMQPValue::ShortString("gen@y".into()));
        table.insert(
            "shadow".into(),
            AMQPValue::LongString(LongString::from(&b"a\xffb"[..])),
        );
        table.insert("retries".into(), AMQPValue::ShortShortUInt(4));
        let props = BasicProperties::default().with_headers(table.clone());
        let raw = raw_message(b"[]".to_vec(), props, "", "celery", false);
        let fast = TaskHeaders::from_headers(&raw.headers).unwrap();
        let map = from_table(&table);
        assert_eq!(fast, TaskHeaders::from_map(&map).unwrap());
        assert_eq!(fast.shadow.as_deref(), Some("a\u{ff}b"));
        assert_eq!((fast.origin.as_deref(), fast.retries), (Some("gen@y"), 4));
        assert_eq!(fast.timelimit, (Some(10.0), Some(2.5)));
        assert_eq!(
            fast.extra["x-custom"],
            json!({"deep": [null, 5_000_000_000_i64]})
        );
        assert_eq!(raw.headers, map);

        // Wrong headers are reported the same way from either form.
        let mut bad = table.clone();
        bad.insert("retries".into(), AMQPValue::LongString("many".into()));
        bad.insert("eta".into(), AMQPValue::Boolean(true));
        let raw = raw_message(
            Vec::new(),
            BasicProperties::default().with_headers(bad.clone()),
            "",
            "celery",
            false,
        );
        let fast = TaskHeaders::from_headers(&raw.headers).unwrap_err();
        assert_eq!(
            fast.to_string(),
            TaskHeaders::from_map(&from_table(&bad))
                .unwrap_err()
                .to_string()
        );
        assert!(fast.to_string().contains("retries"), "{fast}");
    }

    #[test]
    fn foreign_types_read_as_json() {
        let mut t = FieldTable::default();
        t.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
        t.insert(
            "bytes".into(),
            AMQPValue::LongString(LongString::from(&b"a\xffb"[..])),
        );
        t.insert("short".into(), AMQPValue::ShortShortUInt(7));
        t.insert("f".into(), AMQPValue::Float(1.5));
        let m = from_table(&t);
        assert_eq!(m["ts"], json!(1_700_000_000));
        assert_eq!(m["bytes"], json!("a\u{ff}b"));
        assert_eq!(m["short"], json!(7));
        assert_eq!(m["f"], json!(1.5));
    }

    #[test]
    fn properties_follow_kombu() {
        let mut msg = RawMessage {
            body: b"[]".to_vec(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            ..RawMessage::default()
        };
        msg.properties
            .insert("correlation_id".into(), json!("id-1"));
        msg.properties.insert("reply_to".into(), json!("r-1"));
        msg.properties.insert("priority".into(), json!(3));
        let props = properties(&msg).unwrap();
        assert_eq!(*props.delivery_mode(), Some(2), "persistent by default");
        let back = raw_message(msg.body.clone(), props, "celery", "celery", true);
        assert_eq!(back.content_type, "application/json");
        assert_eq!(back.properties["correlation_id"], json!("id-1"));
        assert_eq!(back.properties["reply_to"], json!("r-1"));
        assert_eq!(back.properties["priority"], json!(3));
        assert_eq!(back.properties["delivery_mode"], json!(2));
        assert_eq!(back.delivery_info.exchange, "celery");
        assert_eq!(back.delivery_info.priority, Some(3));
        assert!(back.delivery_info.redelivered);

        msg.properties
            .insert("reply_to".into(), json!("x".repeat(300)));
        assert!(matches!(properties(&msg), Err(BrokerError::TooLong { .. })));
    }
}
