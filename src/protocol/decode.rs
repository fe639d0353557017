//! Raw message -> [`TaskMessage`], for both protocol versions.
//!
//! Detection follows Celery's consumer (`Consumer.create_task_handler` and
//! `worker/strategy.py`, PROTOCOL.md section 2): a `task` header means protocol v2; a
//! body dict holding `args` turns it into the "hybrid" form; without the header, a body
//! dict holding `task` is protocol v1. Everything else is not a task. Nothing here
//! panics on input: every malformed part becomes a [`DecodeError`] naming it.

use std::borrow::Cow;
use std::io::Read;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use serde_json::{Map, Value};

use super::body::{BodyParts, embed_from_fields, parse_v2_body, parse_v2_json};
use super::headers::HeadersReader;
use super::kombu::{MarkerError, check_markers, saferepr};
use super::{
    DeliveryInfo, Embed, ProtocolVersion, RawMessage, Serializer, TaskHeaders, TaskMessage,
};

/// kombu's mime type for its `gzip`/`zlib` compression (a zlib stream).
pub const ZLIB_MIME: &str = "application/x-gzip";

/// Why a message could not be read as a Celery task.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The content type names no serializer we read (kombu: `ContentDisallowed`).
    #[error("unsupported content type {0:?} (expected application/json or application/x-msgpack)")]
    UnsupportedContentType(String),
    /// The body is compressed with an algorithm we do not implement, or does not
    /// decompress.
    #[error("unsupported or corrupt compression {0}")]
    Compression(String),
    /// The body bytes are not valid for their serializer.
    #[error("invalid {serializer} body: {reason}")]
    Body {
        /// The serializer named by the content type.
        serializer: Serializer,
        /// The parser's complaint.
        reason: String,
    },
    /// No `task` header, and the body is not a protocol v1 task dict.
    #[error(
        "not a Celery task message: no \"task\" header and the body is not a protocol v1 task dict"
    )]
    NotATask,
    /// A required header (or v1 body field) is absent.
    #[error("missing required header {0:?}")]
    MissingHeader(&'static str),
    /// A header (or v1 body field) has a value Celery would refuse.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: String,
        /// What was wrong with its value.
        reason: String,
    },
    /// The decoded body does not have the shape of a task body
    /// (`[args, kwargs, embed]` for v2, a dict for v1).
    #[error("invalid task body: {0}")]
    BodyShape(String),
    /// A kombu `__type__` marker was refused, as kombu's `object_hook` would.
    #[error(transparent)]
    Marker(#[from] MarkerError),
}

impl DecodeError {
    pub(crate) fn header(name: &str, reason: impl Into<String>) -> Self {
        DecodeError::InvalidHeader {
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}

/// Decode a raw message into a task message (v2, or v1 detected as Celery does).
pub fn decode(raw: &RawMessage) -> Result<TaskMessage, DecodeError> {
    let mut msg = decode_task(raw)?;
    msg.properties = raw.properties.clone();
    msg.delivery_info = raw.delivery_info.clone();
    Ok(msg)
}

/// [`decode`] without the message's `properties` and `delivery_info` (left empty): the
/// worker moves those out of the raw message once it no longer needs it, instead of
/// copying them (see [`TaskMessage::adopt_routing`]).
pub(crate) fn decode_task(raw: &RawMessage) -> Result<TaskMessage, DecodeError> {
    let serializer = Serializer::from_content_type(&raw.content_type)
        .ok_or_else(|| DecodeError::UnsupportedContentType(raw.content_type.clone()))?;
    // One pass over the headers: the typed v2 headers (or why they are wrong, reported
    // only if the body makes this a v2 message), whether there is a `task` header at all,
    // and the `compression` header.
    let mut reader = HeadersReader::new();
    raw.headers.visit(&mut |k, v| reader.put(k, v));
    let bytes = decompress(raw, reader.extra("compression"))?;
    let fast = match serializer {
        Serializer::Json if reader.has_task() => parse_v2_json(&bytes),
        _ => None,
    };
    let (protocol, headers, (args, kwargs, embed)) = if let Some(parts) = fast {
        // The common case, read in one pass; the same marker check as the value path's.
        let (args, kwargs, embed) = &parts;
        args.iter()
            .chain(kwargs.values())
            .chain(embed_values(embed))
            .try_for_each(check_markers)?;
        (ProtocolVersion::V2, reader.finish()?, parts)
    } else {
        let body = serializer.deserialize(&bytes)?;
        if reader.has_task() {
            match body {
                // `'args' in message.payload`: a v1-style body under v2 headers.
                Value::Object(fields) if fields.contains_key("args") => {
                    let (headers, parts) = hybrid(&raw.headers, fields)?;
                    (ProtocolVersion::V1, headers, parts)
                }
                body => (ProtocolVersion::V2, reader.finish()?, parse_v2_body(body)?),
            }
        } else {
            match body {
                Value::Object(fields) if fields.contains_key("task") => {
                    let (headers, parts) = proto1(fields)?;
                    (ProtocolVersion::V1, headers, parts)
                }
                _ => return Err(DecodeError::NotATask),
            }
        }
    };

    Ok(TaskMessage {
        protocol,
        headers,
        args,
        kwargs,
        embed,
        properties: Map::new(),
        serializer,
        delivery_info: DeliveryInfo::default(),
    })
}

/// Every value of an embed, for the marker check.
fn embed_values(embed: &Embed) -> impl Iterator<Item = &Value> {
    let lists = [&embed.callbacks, &embed.errbacks, &embed.chain];
    lists
        .into_iter()
        .flatten()
        .flatten()
        .chain(embed.chord.iter())
        .chain(embed.extra.values())
}

/// The body with any kombu compression undone (`compression` header).
fn decompress<'a>(
    raw: &'a RawMessage,
    compression: Option<&Value>,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    match compression {
        None | Some(Value::Null) => Ok(Cow::Borrowed(&raw.body)),
        Some(Value::String(mime)) if mime == ZLIB_MIME => {
            let mut out = Vec::with_capacity(raw.body.len() * 4);
            flate2::read::ZlibDecoder::new(raw.body.as_slice())
                .read_to_end(&mut out)
                .map_err(|e| DecodeError::Compression(format!("{mime}: {e}")))?;
            Ok(Cow::Owned(out))
        }
        Some(Value::String(mime)) => Err(DecodeError::Compression(format!(
            "{mime} (only {ZLIB_MIME} is supported)"
        ))),
        Some(other) => Err(DecodeError::header(
            "compression",
            format!("expected a mime type string, got {other}"),
        )),
    }
}

/// `args` and `kwargs` of a v1 / hybrid body: `body.get('args', ())`, `body.get('kwargs', {})`,
/// kwargs must be a mapping.
fn v1_args(
    fields: &mut Map<String, Value>,
) -> Result<(Vec<Value>, Map<String, Value>), DecodeError> {
    let args = match fields.remove("args") {
        None => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(DecodeError::BodyShape(format!(
                "task args must be a list, got {other}"
            )));
        }
    };
    let kwargs = match fields.remove("kwargs") {
        None => Map::new(),
        Some(Value::Object(k)) => k,
        Some(_) => {
            return Err(DecodeError::BodyShape(
                "Task keyword arguments must be a mapping".into(),
            ));
        }
    };
    Ok((args, kwargs))
}

/// `proto1_to_proto2`: the body dict is the request; `taskset` becomes `group`,
/// argsrepr/kwargsrepr are computed here, `chain` is always `None`.
fn proto1(mut fields: Map<String, Value>) -> Result<(TaskHeaders, BodyParts), DecodeError> {
    let (args, kwargs) = v1_args(&mut fields)?;
    let embed = embed_from_fields(&mut fields)?;
    fields.remove("chain");
    if let Some(taskset) = fields.remove("taskset") {
        fields.insert("group".into(), taskset);
    }
    fields.insert(
        "argsrepr".into(),
        Value::String(saferepr(&Value::Array(args.clone()), None)),
    );
    fields.insert(
        "kwargsrepr".into(),
        Value::String(saferepr(&Value::Object(kwargs.clone()), None)),
    );
    let headers = TaskHeaders::from_map(&fields)?;
    Ok((headers, (args, kwargs, embed)))
}

/// `hybrid_to_proto2`: v2 headers rebuilt from the body's fields, then the message's
/// own headers laid over them.
fn hybrid(
    message_headers: &Map<String, Value>,
    mut fields: Map<String, Value>,
) -> Result<(TaskHeaders, BodyParts), DecodeError> {
    let (args, kwargs) = v1_args(&mut fields)?;
    let embed = embed_from_fields(&mut fields)?;
    let mut headers = Map::new();
    for name in [
        "lang",
        "task",
        "id",
        "root_id",
        "parent_id",
        "group",
        "meth",
        "shadow",
        "eta",
        "expires",
    ] {
        // `meth` only matters to Celery's old RPC tasks; keep it only when sent.
        if name == "meth" && !fields.contains_key(name) {
            continue;
        }
        headers.insert(
            name.into(),
            fields.get(name).cloned().unwrap_or(Value::Null),
        );
    }
    headers.insert(
        "retries".into(),
        fields.get("retries").cloned().unwrap_or(Value::from(0)),
    );
    headers.insert(
        "timelimit".into(),
        fields
            .get("timelimit")
            .cloned()
            .unwrap_or(Value::Array(vec![Value::Null, Value::Null])),
    );
    for name in ["argsrepr", "kwargsrepr", "origin"] {
        headers.insert(
            name.into(),
            fields.get(name).cloned().unwrap_or(Value::Null),
        );
    }
    for (k, v) in message_headers {
        headers.insert(k.clone(), v.clone());
    }
    let headers = TaskHeaders::from_map(&headers)?;
    Ok((headers, (args, kwargs, embed)))
}

// ---------------------------------------------------------------------------
// ISO-8601 (dateutil's `isoparse`, Python's `fromisoformat`).
// ---------------------------------------------------------------------------

/// A parsed ISO-8601 date-time, its UTC offset kept apart (`None` = naive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoDateTime {
    /// The calendar date.
    pub date: NaiveDate,
    /// The wall-clock time.
    pub time: NaiveTime,
    /// Offset east of UTC in seconds, `None` for a naive value.
    pub offset: Option<i32>,
}

impl IsoDateTime {
    /// The instant, reading a naive value as UTC (Celery's `naive_as_utc`).
    pub fn to_utc(&self) -> Option<DateTime<Utc>> {
        let local = self.date.and_time(self.time);
        let utc =
            local.checked_sub_signed(Duration::seconds(i64::from(self.offset.unwrap_or(0))))?;
        Some(DateTime::from_naive_utc_and_offset(utc, Utc))
    }
}

/// Read `n` ASCII digits at `pos`.
fn digits(b: &[u8], pos: usize, n: usize) -> Option<u32> {
    let part = b.get(pos..pos.checked_add(n)?)?;
    part.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Parse `YYYY-MM-DD[Thh[:mm[:ss[.ffffff]]][tz]]` (also the basic forms `YYYYMMDD`,
/// `hhmmss`, and `YYYY-MM` / `YYYY`), as `dateutil.parser.isoparse` reads `eta`.
/// `24:00` is the next midnight.
pub fn parse_iso_datetime(s: &str) -> Result<IsoDateTime, String> {
    let bad = || format!("invalid ISO-8601 date-time {s:?}");
    let b = s.as_bytes();
    let (year, month, day, pos) = if b.get(4) == Some(&b'-') {
        let year = digits(b, 0, 4).ok_or_else(bad)?;
        let month = digits(b, 5, 2).ok_or_else(bad)?;
        if b.len() == 7 {
            (year, month, 1, 7)
        } else {
            if b.get(7) != Some(&b'-') {
                return Err(bad());
            }
            (year, month, digits(b, 8, 2).ok_or_else(bad)?, 10)
        }
    } else if b.len() == 4 {
        (digits(b, 0, 4).ok_or_else(bad)?, 1, 1, 4)
    } else {
        let ymd = (digits(b, 0, 4), digits(b, 4, 2), digits(b, 6, 2));
        match ymd {
            (Some(y), Some(m), Some(d)) => (y, m, d, 8),
            _ => return Err(bad()),
        }
    };
    let year = i32::try_from(year).map_err(|_| bad())?;
    let date = NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| format!("{s:?}: day is out of range for month"))?;
    if pos == b.len() {
        return Ok(IsoDateTime {
            date,
            time: NaiveTime::MIN,
            offset: None,
        });
    }
    if !matches!(b.get(pos), Some(b'T' | b't' | b' ')) {
        return Err(bad());
    }
    let rest = s.get(pos + 1..).ok_or_else(bad)?;
    let (clock, offset) = parse_clock(rest, true).map_err(|e| format!("{s:?}: {e}"))?;
    let (time, date) = if clock.0 == 24 {
        (NaiveTime::MIN, date.succ_opt().ok_or_else(bad)?)
    } else {
        (
            NaiveTime::from_hms_micro_opt(clock.0, clock.1, clock.2, clock.3).ok_or_else(bad)?,
            date,
        )
    };
    Ok(IsoDateTime { date, time, offset })
}

/// Parse a time of day `hh[:mm[:ss[.ffffff]]][tz]` as `datetime.time.fromisoformat`.
pub fn parse_iso_time(s: &str) -> Result<(NaiveTime, Option<i32>), String> {
    let ((h, m, sec, micro), offset) = parse_clock(s, false).map_err(|e| format!("{s:?}: {e}"))?;
    let time = NaiveTime::from_hms_micro_opt(h, m, sec, micro)
        .ok_or_else(|| format!("invalid time {s:?}"))?;
    Ok((time, offset))
}

/// `eta`/`expires` header value -> instant, naive read as UTC.
pub fn parse_iso8601(s: &str) -> Result<DateTime<Utc>, String> {
    parse_iso_datetime(s)?
        .to_utc()
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// Hours, minutes, seconds, microseconds.
type Clock = (u32, u32, u32, u32);

/// A clock time and an optional UTC offset in seconds.
fn parse_clock(s: &str, allow_24: bool) -> Result<(Clock, Option<i32>), String> {
    let b = s.as_bytes();
    let bad = || "invalid time".to_string();
    let hour = digits(b, 0, 2).ok_or_else(bad)?;
    let mut pos = 2;
    let extended = b.get(pos) == Some(&b':');
    let mut minute = 0;
    let mut second = 0;
    let mut micro = 0;
    let mut have_seconds = false;
    let sep = usize::from(extended);
    if let Some(m) = digits(b, pos + sep, 2) {
        minute = m;
        pos += sep + 2;
        let sep_ok = !extended || b.get(pos) == Some(&b':');
        if sep_ok && let Some(sec) = digits(b, pos + sep, 2) {
            second = sec;
            pos += sep + 2;
            have_seconds = true;
        }
    } else if extended {
        return Err(bad());
    }
    if have_seconds && matches!(b.get(pos), Some(b'.' | b',')) {
        pos += 1;
        let start = pos;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        let frac = s.get(start..pos).ok_or_else(bad)?;
        if frac.is_empty() {
            return Err(bad());
        }
        let six: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
        micro = six.parse().map_err(|_| bad())?;
    }
    let offset = parse_offset(s.get(pos..).ok_or_else(bad)?)?;
    if hour == 24 {
        if !(allow_24 && minute == 0 && second == 0 && micro == 0) {
            return Err("hour must be in 0..23".into());
        }
    } else if hour > 23 || minute > 59 || second > 59 {
        return Err("time field out of range".into());
    }
    Ok(((hour, minute, second, micro), offset))
}

/// `Z`, `±hh`, `±hhmm`, `±hh:mm` (and seconds) -> offset east of UTC in seconds.
fn parse_offset(s: &str) -> Result<Option<i32>, String> {
    let b = s.as_bytes();
    let bad = || format!("invalid UTC offset {s:?}");
    let sign = match b.first() {
        None => return Ok(None),
        Some(b'Z' | b'z') if b.len() == 1 => return Ok(Some(0)),
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(bad()),
    };
    let hours = digits(b, 1, 2).ok_or_else(bad)?;
    let mut pos = 3;
    let mut parts = [hours, 0, 0];
    for part in parts.iter_mut().skip(1) {
        if pos == b.len() {
            break;
        }
        if b.get(pos) == Some(&b':') {
            pos += 1;
        }
        *part = digits(b, pos, 2).ok_or_else(bad)?;
        pos += 2;
    }
    if pos != b.len() || parts[0] > 23 || parts[1] > 59 || parts[2] > 59 {
        return Err(bad());
    }
    let secs = i32::try_from(parts[0] * 3600 + parts[1] * 60 + parts[2]).map_err(|_| bad())?;
    Ok(Some(sign * secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> String {
        parse_iso8601(s)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn iso_aware_naive_and_offsets() {
        assert_eq!(
            utc("2030-01-01T12:00:00.123456+00:00"),
            "2030-01-01T12:00:00.123456Z"
        );
        assert_eq!(utc("2030-01-01T12:00:00"), "2030-01-01T12:00:00.000000Z");
        assert_eq!(
            utc("2030-01-01T12:00:00+02:00"),
            "2030-01-01T10:00:00.000000Z"
        );
        assert_eq!(
            utc("2030-01-01T12:00:00-0530"),
            "2030-01-01T17:30:00.000000Z"
        );
        assert_eq!(utc("2030-01-01T12:00Z"), "2030-01-01T12:00:00.000000Z");
        assert_eq!(utc("2030-01-01 12:00:00.5"), "2030-01-01T12:00:00.500000Z");
        assert_eq!(utc("20300101T120000"), "2030-01-01T12:00:00.000000Z");
        assert_eq!(utc("2030-01-01"), "2030-01-01T00:00:00.000000Z");
        assert_eq!(utc("2030-01-01T24:00:00"), "2030-01-02T00:00:00.000000Z");
        assert_eq!(
            utc("2030-01-01T12:00:00.1234567"),
            "2030-01-01T12:00:00.123456Z"
        );
    }

    #[test]
    fn iso_rejects_garbage() {
        for bad in [
            "",
            "soon",
            "2030-13-01T00:00:00",
            "2030-02-30",
            "2030-01-01T25:00",
            "2030-01-01T12:00:00+99:00",
            "2030-01-01X12:00",
            "2030-01-01T12:00:00.",
            "2030-01-01T12:00:00+",
            "2030-01-01T1",
            "２０３０-01-01",
        ] {
            assert!(parse_iso8601(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn iso_time_of_day() {
        assert_eq!(
            parse_iso_time("03:04:05").unwrap(),
            (NaiveTime::from_hms_opt(3, 4, 5).unwrap(), None)
        );
        assert_eq!(parse_iso_time("03:04:05.5+01:00").unwrap().1, Some(3600));
        assert!(parse_iso_time("24:00").is_err());
    }
}
