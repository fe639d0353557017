//! A task message's AMQP properties and headers, typed as py-amqp types Celery's (the
//! library's own conversion is private to its broker; the publisher needs one of its own).

use celeriac::protocol::RawMessage;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Value};

/// A JSON value as py-amqp writes the same Python value: `None` void, `int` a 32- or 64-bit
/// integer, `float` a double, `str` a long string, `list` an array, `dict` a table.
fn value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i32::try_from(i).map_or(AMQPValue::LongLongInt(i), AMQPValue::LongInt),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(value(item));
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(map) => AMQPValue::FieldTable(table(map)),
    }
}

fn table(map: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in map {
        t.insert(ShortString::from(k.as_str()), value(v));
    }
    t
}

/// The properties kombu sends with a Celery task: content type and encoding, the task
/// headers, `delivery_mode` 2, `priority`, `correlation_id` and `reply_to`.
pub fn properties(msg: &RawMessage) -> BasicProperties {
    let p = &msg.properties;
    let text = |key: &str| p.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let mut props = BasicProperties::default()
        .with_content_type(ShortString::from(msg.content_type.as_str()))
        .with_content_encoding(ShortString::from(msg.content_encoding.as_str()))
        .with_headers(table(&msg.headers))
        .with_delivery_mode(2)
        .with_priority(
            p.get("priority")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(255) as u8,
        );
    if let Some(id) = text("correlation_id") {
        props = props.with_correlation_id(ShortString::from(id));
    }
    if let Some(reply_to) = text("reply_to") {
        props = props.with_reply_to(ShortString::from(reply_to));
    }
    props
}

/// The text of an AMQP header (Celery's `id`), whichever string type carried it.
pub fn header_text<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a [u8]> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}
