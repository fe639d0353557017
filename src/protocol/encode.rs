//! [`TaskMessage`] -> raw message, always protocol v2, as Python's `apply_async` writes it.

use std::io::Write;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::{Map, Value};

use super::body::v2_body;
use super::decode::ZLIB_MIME;
use super::kombu::{MarkerError, args_repr, kwargs_repr};
use super::{RawMessage, TaskMessage};

/// Why a value could not be serialized.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A kombu `__type__` marker object that kombu could not read back.
    #[error(transparent)]
    Marker(#[from] MarkerError),
    /// The msgpack writer failed.
    #[error("msgpack encoding failed: {0}")]
    Msgpack(String),
    /// The `compression` header names an algorithm we do not implement.
    #[error("unsupported compression {0:?} (only {ZLIB_MIME} is supported)")]
    Compression(String),
}

/// Properties the encoder writes itself, and transport bookkeeping a decoded message may
/// still carry (a republished copy gets fresh ones from its broker); any other property
/// is copied through.
const OWN_PROPERTIES: [&str; 10] = [
    "correlation_id",
    "reply_to",
    "delivery_mode",
    "priority",
    "expiration",
    "content_type",
    "content_encoding",
    "body_encoding",
    "delivery_tag",
    "delivery_info",
];

/// Encode a task message as protocol v2.
///
/// Headers come in Celery's order (see [`super::TaskHeaders::to_map`]) with
/// `argsrepr`/`kwargsrepr` computed as Celery's `saferepr` when unset. Properties are
/// `correlation_id` (= the task id), `reply_to` (when set), any other property of the
/// message, `delivery_mode` (2 unless set), `expiration` (when set) and `priority`
/// (0 unless set). A `compression: application/x-gzip` header compresses the body with
/// zlib, as kombu does.
pub fn encode(msg: &TaskMessage) -> Result<RawMessage, EncodeError> {
    let mut headers = msg.headers.clone();
    if headers.argsrepr.is_none() {
        headers.argsrepr = Some(args_repr(&msg.args));
    }
    if headers.kwargsrepr.is_none() {
        headers.kwargsrepr = Some(kwargs_repr(&msg.kwargs));
    }
    let headers = headers.to_map();

    let mut body = msg
        .serializer
        .serialize(&v2_body(&msg.args, &msg.kwargs, &msg.embed))?;
    match headers.get("compression") {
        None | Some(Value::Null) => {}
        Some(Value::String(mime)) if mime == ZLIB_MIME => body = zlib(&body)?,
        Some(other) => {
            return Err(EncodeError::Compression(
                other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
            ));
        }
    }

    let props = &msg.properties;
    let mut properties = Map::new();
    properties.insert(
        "correlation_id".into(),
        Value::String(msg.headers.id.clone()),
    );
    if let Some(reply_to) = props.get("reply_to") {
        properties.insert("reply_to".into(), reply_to.clone());
    }
    for (k, v) in props {
        if !OWN_PROPERTIES.contains(&k.as_str()) {
            properties.insert(k.clone(), v.clone());
        }
    }
    properties.insert(
        "delivery_mode".into(),
        props
            .get("delivery_mode")
            .cloned()
            .unwrap_or(Value::from(2)),
    );
    if let Some(expiration) = props.get("expiration") {
        properties.insert("expiration".into(), expiration.clone());
    }
    properties.insert(
        "priority".into(),
        props.get("priority").cloned().unwrap_or(Value::from(0)),
    );

    Ok(RawMessage {
        body,
        content_type: msg.serializer.content_type().to_string(),
        content_encoding: msg.serializer.content_encoding().to_string(),
        headers: headers.into(),
        properties,
        delivery_info: msg.delivery_info.clone(),
    })
}

/// kombu's `gzip`/`zlib` compression: a zlib stream at zlib's default level.
fn zlib(bytes: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes)
        .and_then(|()| enc.finish())
        .map_err(|e| EncodeError::Compression(format!("{ZLIB_MIME}: {e}")))
}

/// Python's `datetime.isoformat()` of an aware UTC datetime:
/// `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`, microseconds omitted when zero (sub-microsecond
/// precision is dropped, as Python has none).
///
/// ```
/// use celeriac::protocol::encode::python_isoformat;
/// use chrono::{TimeZone, Utc};
/// let t = Utc.with_ymd_and_hms(2030, 1, 2, 0, 0, 0).unwrap();
/// assert_eq!(python_isoformat(&t), "2030-01-02T00:00:00+00:00");
/// ```
pub fn python_isoformat(t: &DateTime<Utc>) -> String {
    let micro = t.nanosecond() % 1_000_000_000 / 1000;
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if micro != 0 {
        s.push_str(&format!(".{micro:06}"));
    }
    s.push_str("+00:00");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn isoformat_omits_zero_microseconds() {
        let t = Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap();
        assert_eq!(python_isoformat(&t), "2030-01-01T12:00:00+00:00");
        let t = t + chrono::Duration::microseconds(123_456) + chrono::Duration::nanoseconds(789);
        assert_eq!(python_isoformat(&t), "2030-01-01T12:00:00.123456+00:00");
        let t = Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(500);
        assert_eq!(python_isoformat(&t), "2030-01-01T12:00:00+00:00");
    }

    #[test]
    fn isoformat_reads_back() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 10, 51, 26).unwrap()
            + chrono::Duration::microseconds(374_251);
        assert_eq!(
            super::super::decode::parse_iso8601(&python_isoformat(&t)).unwrap(),
            t
        );
    }
}
