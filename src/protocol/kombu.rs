//! kombu's JSON dialect: Python `json.dumps` formatting and the `__type__` markers
//! (PROTOCOL.md sections 3.1 and 3.2).

use serde_json::ser::Formatter;
use serde_json::{Map, Value};
use std::io;

/// Serialize a value exactly as Python's `json.dumps` (kombu's defaults) would:
/// separators `", "` and `": "`, `ensure_ascii` (every non-ASCII character written as
/// `\uXXXX`, surrogate pairs above the BMP), keys in insertion order.
///
/// ```
/// use celeriac::protocol::kombu::to_python_json;
/// let v = serde_json::json!({"a": [1, 2], "é": null});
/// assert_eq!(to_python_json(&v), r#"{"a": [1, 2], "\u00e9": null}"#);
/// ```
pub fn to_python_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    serde::Serialize::serialize(value, &mut ser)
        .expect("serializing a Value into memory cannot fail");
    // The formatter only ever writes ASCII.
    String::from_utf8(out).expect("python-style JSON is ASCII")
}

/// Python `json.dumps` separators and `ensure_ascii` escaping.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Python escapes everything outside ' '..='~' (json.encoder's ESCAPE_ASCII), so DEL
        // (0x7f) too, which serde_json leaves as it is.
        if fragment.bytes().all(|b| b < 0x7f) {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for ch in fragment.chars() {
            if ch < '\x7f' {
                w.write_all(&[ch as u8])?;
            } else {
                for unit in ch.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        // Python's repr(float): NaN/inf are written as bare words by json.dumps.
        if value.is_nan() {
            return w.write_all(b"NaN");
        }
        if value.is_infinite() {
            return w.write_all(if value > 0.0 {
                b"Infinity"
            } else {
                b"-Infinity"
            });
        }
        let s = format!("{value:?}");
        // Rust's Debug gives `1e16` / `1e-5` where Python gives `1e+16` / `1e-05`.
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
                write!(w, "{m}e{sign}{digits:0>2}")
            }
            None => w.write_all(s.as_bytes()),
        }
    }
}

// ---------------------------------------------------------------------------
// Type markers (`{"__type__": T, "__value__": V}`), PROTOCOL.md section 3.2.
// ---------------------------------------------------------------------------

/// The key naming a marker's type.
pub const TYPE_KEY: &str = "__type__";
/// The key holding a marker's value.
pub const VALUE_KEY: &str = "__value__";

/// Why a kombu type marker was refused (kombu's `object_hook` would raise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid kombu type marker {type_name:?}: {reason}")]
pub struct MarkerError {
    /// The marker's `__type__` as written (JSON text when it is not a string).
    pub type_name: String,
    /// What was wrong with it.
    pub reason: String,
}

/// The types kombu wraps in a marker object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// `datetime.datetime`, value from `isoformat()`.
    Datetime,
    /// `datetime.date`, value `YYYY-MM-DD`.
    Date,
    /// `datetime.time`, value `HH:MM:SS[.ffffff]`.
    Time,
    /// `decimal.Decimal`, value `str(d)`.
    Decimal,
    /// `uuid.UUID`, value `{"hex": "<32 hex digits>"}`.
    Uuid,
    /// `bytes` that are valid UTF-8, value the text.
    Bytes,
    /// `bytes` that are not UTF-8, value standard base64.
    Base64,
}

impl MarkerKind {
    /// The kind for a `__type__` name, `None` when kombu has no decoder for it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "datetime" => MarkerKind::Datetime,
            "date" => MarkerKind::Date,
            "time" => MarkerKind::Time,
            "decimal" => MarkerKind::Decimal,
            "uuid" => MarkerKind::Uuid,
            "bytes" => MarkerKind::Bytes,
            "base64" => MarkerKind::Base64,
            _ => return None,
        })
    }

    /// The `__type__` name kombu writes.
    pub fn name(self) -> &'static str {
        match self {
            MarkerKind::Datetime => "datetime",
            MarkerKind::Date => "date",
            MarkerKind::Time => "time",
            MarkerKind::Decimal => "decimal",
            MarkerKind::Uuid => "uuid",
            MarkerKind::Bytes => "bytes",
            MarkerKind::Base64 => "base64",
        }
    }
}

/// The `(__type__, __value__)` pair of an object whose key set is exactly
/// `{"__type__", "__value__"}` (kombu's test: any other key makes it a plain dict).
pub fn marker_parts(v: &Value) -> Option<(&Value, &Value)> {
    let obj = v.as_object()?;
    if obj.len() != 2 {
        return None;
    }
    Some((obj.get(TYPE_KEY)?, obj.get(VALUE_KEY)?))
}

/// Check one marker object the way kombu's decoder for its type would, returning its
/// kind. `Ok(None)` means `v` is not a marker object at all.
pub fn check_marker(v: &Value) -> Result<Option<MarkerKind>, MarkerError> {
    let Some((type_value, value)) = marker_parts(v) else {
        return Ok(None);
    };
    let fail = |reason: String| MarkerError {
        type_name: match type_value {
            Value::String(s) => s.clone(),
            other => to_python_json(other),
        },
        reason,
    };
    let Value::String(name) = type_value else {
        return Err(fail("__type__ is not a string".into()));
    };
    let Some(kind) = MarkerKind::from_name(name) else {
        return Err(fail("unsupported type".into()));
    };
    check_marker_value(kind, value).map_err(fail)?;
    Ok(Some(kind))
}

/// Whether `value` is something kombu's decoder for `kind` accepts.
fn check_marker_value(kind: MarkerKind, value: &Value) -> Result<(), String> {
    let text = || {
        value
            .as_str()
            .ok_or_else(|| format!("__value__ must be a string, got {}", to_python_json(value)))
    };
    match kind {
        // `datetime.fromisoformat`, also used (then `.date()`) for dates.
        MarkerKind::Datetime | MarkerKind::Date => {
            crate::protocol::decode::parse_iso_datetime(text()?).map(|_| ())
        }
        MarkerKind::Time => crate::protocol::decode::parse_iso_time(text()?).map(|_| ()),
        MarkerKind::Decimal => match value {
            Value::Number(_) => Ok(()),
            Value::String(s) if is_decimal_literal(s) => Ok(()),
            _ => Err(format!("{} is not a decimal", to_python_json(value))),
        },
        MarkerKind::Uuid => uuid_from_marker_value(value).map(|_| ()),
        MarkerKind::Bytes => text().map(|_| ()),
        MarkerKind::Base64 => python_b64decode(text()?).map(|_| ()),
    }
}

/// `Decimal(str)` accepts surrounding whitespace, a sign, digits with one optional point
/// (and `_` between digits), an exponent, and the special values.
fn is_decimal_literal(s: &str) -> bool {
    let s = s.trim();
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan" | "snan")
        || lower
            .strip_prefix("nan")
            .or(lower.strip_prefix("snan"))
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
    {
        return true;
    }
    let (mantissa, exponent) = match lower.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (lower.as_str(), None),
    };
    let digits_ok = |d: &str| {
        !d.is_empty()
            && d.bytes().all(|b| b.is_ascii_digit() || b == b'_')
            && !d.starts_with('_')
            && !d.ends_with('_')
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (int.is_empty() || digits_ok(int))
                && (frac.is_empty() || digits_ok(frac))
                && !(int.is_empty() && frac.is_empty())
        }
        None => digits_ok(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits_ok(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// `uuid.UUID(**value)` for the forms JSON can carry: `{"hex": ...}` (what kombu writes)
/// or `{"int": ...}`.
fn uuid_from_marker_value(value: &Value) -> Result<u128, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| "uuid __value__ must be an object".to_string())?;
    if let Some(key) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "hex" | "int" | "version"))
    {
        return Err(format!("unexpected uuid field {key:?}"));
    }
    match (obj.get("hex"), obj.get("int")) {
        (Some(Value::String(hex)), None) => {
            // UUID(hex=...) strips "urn:" / "uuid:", braces and hyphens first.
            let cleaned: String = hex
                .replace("urn:", "")
                .replace("uuid:", "")
                .trim_matches(|c| c == '{' || c == '}')
                .chars()
                .filter(|c| *c != '-')
                .collect();
            if cleaned.len() != 32 || !cleaned.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("badly formed hexadecimal UUID string {hex:?}"));
            }
            u128::from_str_radix(&cleaned, 16).map_err(|e| e.to_string())
        }
        (None, Some(Value::Number(n))) => n
            .as_u64()
            .map(u128::from)
            .ok_or_else(|| "uuid int out of range".to_string()),
        _ => Err("uuid __value__ needs exactly one of hex (a string) or int".into()),
    }
}

fn uuid_hyphenated(n: u128) -> String {
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Python's `base64.b64decode` without `validate`: characters outside the alphabet are
/// dropped, padding is required.
fn python_b64decode(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect();
    LENIENT
        .decode(kept.as_bytes())
        .map_err(|e| format!("invalid base64: {e}"))
}

/// Check every marker object inside `v`, as kombu's `json.loads(object_hook=...)` does
/// while it reads a JSON body.
pub fn check_markers(v: &Value) -> Result<(), MarkerError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(check_markers),
        Value::Object(map) => {
            if check_marker(v)?.is_some() {
                // The hook replaces the whole object; its value is not hooked again
                // (`uuid`'s `{"hex": ..}` was already checked as a plain dict).
                return Ok(());
            }
            map.values().try_for_each(check_markers)
        }
        _ => Ok(()),
    }
}

/// The marker kombu writes for `bytes`: `bytes` with the text when it is valid UTF-8,
/// else `base64`.
pub fn bytes_marker(bytes: &[u8]) -> Value {
    let mut obj = Map::new();
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            obj.insert(TYPE_KEY.into(), Value::String("bytes".into()));
            obj.insert(VALUE_KEY.into(), Value::String(text.into()));
        }
        Err(_) => {
            use base64::Engine;
            obj.insert(TYPE_KEY.into(), Value::String("base64".into()));
            obj.insert(
                VALUE_KEY.into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        }
    }
    Value::Object(obj)
}

/// The bytes a `bytes` or `base64` marker stands for; `None` for anything else
/// (including a `base64` marker whose text does not decode).
pub fn marker_bytes(v: &Value) -> Option<Vec<u8>> {
    let (Value::String(name), Value::String(text)) = marker_parts(v)? else {
        return None;
    };
    match name.as_str() {
        "bytes" => Some(text.as_bytes().to_vec()),
        "base64" => python_b64decode(text).ok(),
        _ => None,
    }
}

/// The plain JSON equivalent of a valid marker object, `None` when `v` is not one:
/// datetime/date/time/decimal give their text, uuid the hyphenated string, bytes the
/// text, base64 the decoded bytes as an array of numbers.
///
/// ```
/// use celeriac::protocol::kombu::unwrap_marker;
/// use serde_json::json;
/// let uuid = json!({"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}});
/// assert_eq!(unwrap_marker(&uuid), Some(json!("12345678-1234-5678-1234-567812345678")));
/// assert_eq!(unwrap_marker(&json!({"__type__": "base64", "__value__": "/wAB"})), Some(json!([255, 0, 1])));
/// ```
pub fn unwrap_marker(v: &Value) -> Option<Value> {
    let kind = check_marker(v).ok()??;
    let (_, value) = marker_parts(v)?;
    Some(match kind {
        MarkerKind::Datetime | MarkerKind::Date | MarkerKind::Time | MarkerKind::Bytes => {
            value.clone()
        }
        MarkerKind::Decimal => match value {
            Value::Number(n) => Value::String(n.to_string()),
            other => other.clone(),
        },
        MarkerKind::Uuid => Value::String(uuid_hyphenated(uuid_from_marker_value(value).ok()?)),
        MarkerKind::Base64 => Value::Array(marker_bytes(v)?.into_iter().map(Value::from).collect()),
    })
}

/// `v` with every marker object replaced by [`unwrap_marker`]'s plain equivalent, at any
/// depth: what a task that knows nothing of Python types should see.
pub fn plain(v: &Value) -> Value {
    if let Some(unwrapped) = unwrap_marker(v) {
        return unwrapped;
    }
    match v {
        Value::Array(items) => Value::Array(items.iter().map(plain).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), plain(v))).collect())
        }
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------
// Python repr, and Celery's saferepr (argsrepr / kwargsrepr / event results).
// ---------------------------------------------------------------------------

/// Python's `repr(float)` (also `str(float)`).
pub(crate) fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // `to_python_json` already writes floats as Python's repr; reuse it.
    to_python_json(&Value::from(f))
}

fn py_number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if !(n.is_i64() || n.is_u64()) => py_float(f),
        _ => n.to_string(),
    }
}

/// Whether Python's `str.isprintable()` holds for `c`. Python consults the full Unicode
/// tables; this covers the categories that matter in practice (controls, separators
/// other than the space, format characters, surrogates, private use, noncharacters).
fn py_printable(c: char) -> bool {
    let u = c as u32;
    !(u < 0x20
        || (0x7f..=0xa0).contains(&u)
        || u == 0xad
        || (0x600..=0x605).contains(&u)
        || u == 0x61c
        || u == 0x6dd
        || u == 0x70f
        || u == 0x1680
        || u == 0x180e
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x2064).contains(&u)
        || (0x2066..=0x206f).contains(&u)
        || u == 0x3000
        || (0xd800..=0xf8ff).contains(&u)
        || u == 0xfeff
        || (0xfff9..=0xfffb).contains(&u)
        || (u & 0xfffe) == 0xfffe
        || (0xf0000..).contains(&u)
        || (0xe0000..=0xe0fff).contains(&u))
}

/// Python's `repr(str)`: single quotes unless the text holds `'` and no `"`, backslash
/// escapes for `\\`, the quote, `\t` `\n` `\r`, and `\xNN` / `\uNNNN` / `\UNNNNNNNN` for
/// characters that are not printable.
pub fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if py_printable(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(bytes)`.
pub fn py_bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut out = String::from("b");
    out.push(quote as char);
    for &byte in b {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            q if q == quote => {
                out.push('\\');
                out.push(q as char);
            }
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push(quote as char);
    out
}

/// `repr()` of a `datetime.timezone` with this UTC offset in seconds.
fn py_timezone_repr(offset: i32) -> String {
    if offset == 0 {
        return "datetime.timezone.utc".into();
    }
    // timedelta normalises to days + non-negative seconds.
    let days = offset.div_euclid(86_400);
    let seconds = offset.rem_euclid(86_400);
    let delta = match (days, seconds) {
        (0, s) => format!("seconds={s}"),
        (d, 0) => format!("days={d}"),
        (d, s) => format!("days={d}, seconds={s}"),
    };
    format!("datetime.timezone(datetime.timedelta({delta}))")
}

/// `repr()` of the Python object a valid marker stands for, e.g.
/// `Decimal('3.14')`, `UUID('...')`, `datetime.date(2024, 1, 2)`, `b'hello'`.
fn marker_repr(v: &Value) -> Option<String> {
    use chrono::{Datelike, Timelike};
    let kind = check_marker(v).ok()??;
    let (_, value) = marker_parts(v)?;
    let time_fields = |t: &chrono::NaiveTime| {
        let micro = t.nanosecond() / 1000;
        if micro != 0 {
            format!("{}, {}, {}, {}", t.hour(), t.minute(), t.second(), micro)
        } else if t.second() != 0 {
            format!("{}, {}, {}", t.hour(), t.minute(), t.second())
        } else {
            format!("{}, {}", t.hour(), t.minute())
        }
    };
    let tz = |offset: Option<i32>| {
        offset
            .map(|o| format!(", tzinfo={}", py_timezone_repr(o)))
            .unwrap_or_default()
    };
    Some(match kind {
        MarkerKind::Datetime => {
            let p = crate::protocol::decode::parse_iso_datetime(value.as_str()?).ok()?;
            let d = p.date;
            format!(
                "datetime.datetime({}, {}, {}, {}{})",
                d.year(),
                d.month(),
                d.day(),
                time_fields(&p.time),
                tz(p.offset)
            )
        }
        MarkerKind::Date => {
            let d = crate::protocol::decode::parse_iso_datetime(value.as_str()?)
                .ok()?
                .date;
            format!("datetime.date({}, {}, {})", d.year(), d.month(), d.day())
        }
        MarkerKind::Time => {
            let (t, offset) = crate::protocol::decode::parse_iso_time(value.as_str()?).ok()?;
            format!("datetime.time({}{})", time_fields(&t), tz(offset))
        }
        MarkerKind::Decimal => match value {
            Value::String(s) => format!("Decimal({})", py_str_repr(s.trim())),
            other => format!("Decimal('{}')", to_python_json(other)),
        },
        MarkerKind::Uuid => format!(
            "UUID('{}')",
            uuid_hyphenated(uuid_from_marker_value(value).ok()?)
        ),
        MarkerKind::Bytes | MarkerKind::Base64 => py_bytes_repr(&marker_bytes(v)?),
    })
}

/// Python's `repr()` of the value a JSON value decodes to: `None`, `True`, `False`,
/// numbers, `'quoted'` strings with Python's escaping, lists, dicts, and marker objects
/// as the objects they stand for (`Decimal('3.14')`, `b'hi'`, ...).
///
/// ```
/// use celeriac::protocol::kombu::py_repr;
/// use serde_json::json;
/// assert_eq!(py_repr(&json!({"a": [1, null, true, "it's"]})), r#"{'a': [1, None, True, "it's"]}"#);
/// ```
pub fn py_repr(v: &Value) -> String {
    if let Some(r) = marker_repr(v) {
        return r;
    }
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => py_number(n),
        Value::String(s) => py_str_repr(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", py_str_repr(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Celery's `argsrepr_maxsize` / `kwargsrepr_maxsize`.
pub const REPR_MAXSIZE: usize = 1024;
/// Celery's `task_repr_maxlevels` default.
pub const REPR_MAXLEVELS: usize = 3;

/// The args as Celery writes `argsrepr` for a tuple of arguments:
/// `saferepr(args, 1024, maxlevels=3)`, e.g. `(2, 3)`, `(1,)`, `()`.
pub fn args_repr(args: &[Value]) -> String {
    saferepr_items(Item::Tuple(args), Some(REPR_MAXSIZE), REPR_MAXLEVELS)
}

/// The kwargs as Celery writes `kwargsrepr`: `saferepr(kwargs, 1024, maxlevels=3)`,
/// e.g. `{'z': 1}`.
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    saferepr_items(Item::Dict(kwargs), Some(REPR_MAXSIZE), REPR_MAXLEVELS)
}

/// `celery.utils.saferepr.saferepr(v, maxlen, maxlevels=3)`, byte for byte.
///
/// It differs from [`py_repr`]: strings are only wrapped in `'...'` with `'` escaped as
/// `\'` (no other escaping, non-ASCII and newlines kept), bytes print as `b'<text>'` or
/// hex, containers nested 3 deep print as `[...]`, and output is cut near `maxlen`
/// characters with `...`.
pub fn saferepr(v: &Value, maxlen: Option<usize>) -> String {
    saferepr_items(Item::Value(v), maxlen, REPR_MAXLEVELS)
}

/// One element of saferepr's work list, mirroring the Python token stream.
#[derive(Clone, Copy)]
enum Item<'a> {
    /// A value not yet expanded.
    Value(&'a Value),
    /// The top-level args tuple.
    Tuple(&'a [Value]),
    /// The top-level kwargs dict.
    Dict(&'a Map<String, Value>),
    /// Literal text; `truncate: false` marks brackets that are always closed.
    Lit {
        text: &'static str,
        truncate: bool,
        direction: i32,
    },
    /// A dict key.
    Key(&'a str),
}

const LIST_SEP: Item<'static> = Item::Lit {
    text: ", ",
    truncate: true,
    direction: 0,
};
const KV_SEP: Item<'static> = Item::Lit {
    text: ": ",
    truncate: true,
    direction: 0,
};

/// Python's `len()` of a string: code points.
fn py_len(s: &str) -> i64 {
    s.chars().count() as i64
}

/// `celery.utils.text.truncate`.
fn truncate(s: &str, maxlen: Option<i64>) -> String {
    match maxlen {
        Some(m) if m != 0 && py_len(s) >= m => {
            let head: String = s.chars().take(m.max(0) as usize).collect();
            let head = head
                .rsplit_once(' ')
                .map_or(head.as_str(), |(h, _)| h)
                .to_string();
            head + "..."
        }
        _ => s.to_string(),
    }
}

/// `_format_chars` for text.
fn format_str(s: &str, maxlen: Option<i64>) -> String {
    format!("'{}'", truncate(s, maxlen).replace('\'', "\\'"))
}

/// `_format_binary_bytes`: the bytes as text when UTF-8, else hex, cut at `maxlen`.
fn format_bytes(b: &[u8], maxlen: Option<i64>) -> String {
    let show = |b: &[u8]| {
        std::str::from_utf8(b).map_or_else(
            |_| b.iter().map(|x| format!("{x:02x}")).collect(),
            str::to_string,
        )
    };
    match maxlen {
        Some(m) if m > 0 && b.len() as i64 > m => format!("b'{}...'", show(&b[..m as usize])),
        _ => format!("b'{}'", show(b)),
    }
}

/// Push the tokens of a container onto the work stack (top = next).
fn push_container<'a>(
    stack: &mut Vec<Item<'a>>,
    open: &'static str,
    close: &'static str,
    items: Vec<Item<'a>>,
) {
    stack.push(Item::Lit {
        text: close,
        truncate: false,
        direction: -1,
    });
    stack.extend(items.into_iter().rev());
    stack.push(Item::Lit {
        text: open,
        truncate: false,
        direction: 1,
    });
}

fn list_items(values: &[Value]) -> Vec<Item<'_>> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(LIST_SEP);
        }
        out.push(Item::Value(v));
    }
    out
}

fn dict_items(map: &Map<String, Value>) -> Vec<Item<'_>> {
    let mut out = Vec::with_capacity(map.len() * 4);
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(LIST_SEP);
        }
        out.extend([Item::Key(k), KV_SEP, Item::Value(v)]);
    }
    out
}

/// The port of `_saferepr` + `reprstream`: a work stack of pending items, the current
/// nesting level, and the remaining length budget.
fn saferepr_items(root: Item<'_>, maxlen: Option<usize>, maxlevels: usize) -> String {
    let mut maxlen = maxlen.map(|m| m.min(i64::MAX as usize) as i64);
    let mut stack = vec![root];
    let mut level: usize = 0;
    let mut out = String::new();
    while let Some(item) = stack.pop() {
        // Expand containers (or cut them at maxlevels) before emitting anything.
        let container = match item {
            Item::Tuple(args) => Some((
                "(",
                if args.len() == 1 { ",)" } else { ")" },
                list_items(args),
            )),
            Item::Dict(map) => Some(("{", "}", dict_items(map))),
            Item::Value(v @ (Value::Array(_) | Value::Object(_))) if marker_repr(v).is_none() => {
                match v {
                    Value::Array(a) => Some(("[", "]", list_items(a))),
                    Value::Object(m) => Some(("{", "}", dict_items(m))),
                    _ => None,
                }
            }
            _ => None,
        };
        let token = match container {
            Some((open, close, items)) => {
                if maxlevels > 0 && level >= maxlevels {
                    let text: &'static str = match open {
                        "[" => "[...]",
                        "{" => "{...}",
                        _ => {
                            if close == ",)" {
                                "(...,)"
                            } else {
                                "(...)"
                            }
                        }
                    };
                    Item::Lit {
                        text,
                        truncate: false,
                        direction: 0,
                    }
                } else {
                    push_container(&mut stack, open, close, items);
                    continue;
                }
            }
            None => item,
        };
        if let Item::Lit { direction, .. } = token {
            level = (level as i64 + direction as i64).max(0) as usize;
        }
        if maxlen.is_some_and(|m| m <= 0) {
            if let Item::Lit {
                text, direction, ..
            } = token
                && direction < 0
            {
                out.push_str(text);
                continue;
            }
            out.push_str(", ...");
            // Close the containers still open; one opened after the cut is skipped whole.
            let mut depth: i64 = 0;
            for rest in std::iter::once(token).chain(stack.iter().rev().copied()) {
                if let Item::Lit {
                    text,
                    truncate: false,
                    direction,
                } = rest
                {
                    depth += direction as i64;
                    if depth < 0 {
                        depth = 0;
                        out.push_str(text);
                    }
                }
            }
            break;
        }
        let text = match token {
            Item::Lit { text, .. } => text.to_string(),
            Item::Key(k) => format_str(k, maxlen),
            Item::Value(Value::String(s)) => format_str(s, maxlen),
            Item::Value(v) => match (marker_bytes(v), check_marker(v)) {
                (Some(bytes), Ok(Some(_))) => format_bytes(&bytes, maxlen),
                _ => {
                    let repr = match v {
                        Value::Number(n) => py_number(n),
                        other => py_repr(other),
                    };
                    truncate(&repr, maxlen)
                }
            },
            Item::Tuple(_) | Item::Dict(_) => String::new(),
        };
        if let Some(m) = maxlen.as_mut() {
            *m -= py_len(&text);
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_json_escapes_del_like_python() {
        // json.dumps('a\x7fb\xe9') == '"a\\u007fb\\u00e9"'
        assert_eq!(
            to_python_json(&Value::from("a\u{7f}b\u{e9}")),
            r#""a\u007fb\u00e9""#
        );
        assert_eq!(to_python_json(&Value::from("\u{7f}")), r#""\u007f""#);
    }

    #[test]
    fn separators_and_order_match_python() {
        let v = json!([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
        assert_eq!(
            to_python_json(&v),
            r#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
        );
    }

    #[test]
    fn non_ascii_is_escaped_like_ensure_ascii() {
        // json.dumps("héllo 😀\n") == '"h\\u00e9llo \\ud83d\\ude00\\n"'
        assert_eq!(
            to_python_json(&json!("héllo 😀\n")),
            r#""h\u00e9llo \ud83d\ude00\n""#
        );
    }

    #[test]
    fn floats_are_written_as_python_repr() {
        assert_eq!(to_python_json(&json!(1.0)), "1.0");
        assert_eq!(to_python_json(&json!(0.1)), "0.1");
        assert_eq!(to_python_json(&json!(1e16)), "1e+16");
        assert_eq!(to_python_json(&json!(1.5e-7)), "1.5e-07");
        assert_eq!(to_python_json(&json!(1e100)), "1e+100");
        assert_eq!(to_python_json(&json!(1e15)), "1000000000000000.0");
    }

    /// (JSON of the value, rendered as a tuple?, maxlen, what Celery 5.7's saferepr gives).
    const SAFEREPR_CASES: &[(&str, bool, usize, &str)] = &[
        ("[2, 3]", true, 1024, "(2, 3)"),
        ("[1]", true, 1024, "(1,)"),
        ("[]", true, 1024, "()"),
        ("[2, 3]", false, 1024, "[2, 3]"),
        (r#"{"z": 1}"#, false, 1024, "{'z': 1}"),
        (
            "[1, [2, [3, [4, [5]]]]]",
            true,
            1024,
            "(1, [2, [3, [...]]])",
        ),
        (
            r#"["it's", "a\nb", "\u00e9", null, true, 1.5, 1e+16, -0.0, 18446744073709551615]"#,
            true,
            1024,
            "('it\\'s', 'a\nb', 'é', None, True, 1.5, 1e+16, -0.0, 18446744073709551615)",
        ),
        (
            r#"[{"a": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "b": [1, 2, 3]}]"#,
            true,
            20,
            "({'a': 'xxxxxxxxxxxxx...', ...},)",
        ),
        (
            r#"{"k": {"x": {"y": {"z": 1}}}}"#,
            false,
            1024,
            "{'k': {'x': {'y': {...}}}}",
        ),
        (r#"["a b c d e f g h", 2]"#, true, 10, "('a b c d...', ...)"),
        (
            r#"[{"kkkkkkkkkk": "v"}, [1, [2, [3]]], "tail"]"#,
            true,
            15,
            "({'kkkkkkkkkk': , ...})",
        ),
        (
            r#"[{"__type__": "bytes", "__value__": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]"#,
            true,
            20,
            "(b'xxxxxxxxxxxxxxxxxxx...',)",
        ),
        (
            r#"[{"__type__": "base64", "__value__": "/wAB"}, {"__type__": "bytes", "__value__": "hi"}, {"__type__": "datetime", "__value__": "2024-01-02T03:04:00-05:00"}, {"__type__": "time", "__value__": "03:04:00"}, {"__type__": "decimal", "__value__": "1.50"}, {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}, {"__type__": "date", "__value__": "2024-01-02"}, {"__type__": "datetime", "__value__": "2024-01-02T03:04:05.678901+00:00"}, {"__type__": "datetime", "__value__": "2024-01-02T03:04:05"}]"#,
            true,
            1024,
            "(b'ff0001', b'hi', datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.timezone(datetime.timedelta(days=-1, seconds=68400))), datetime.time(3, 4), Decimal('1.50'), UUID('12345678-1234-5678-1234-567812345678'), datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc), datetime.datetime(2024, 1, 2, 3, 4, 5))",
        ),
    ];

    #[test]
    fn saferepr_matches_celery_byte_for_byte() {
        for (input, as_tuple, maxlen, expected) in SAFEREPR_CASES {
            let v: Value = serde_json::from_str(input).unwrap();
            let got = if *as_tuple {
                saferepr_items(
                    Item::Tuple(v.as_array().unwrap()),
                    Some(*maxlen),
                    REPR_MAXLEVELS,
                )
            } else {
                saferepr(&v, Some(*maxlen))
            };
            assert_eq!(&got, expected, "saferepr of {input}");
        }
        // A list of 100 numbers cut at 30 characters keeps Celery's dangling separator.
        let hundred = Value::Array((0..100).map(Value::from).collect());
        assert_eq!(
            saferepr(&hundred, Some(30)),
            "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, , ...]"
        );
        // A 2000-character string inside the args is cut to the 1024 budget.
        let long = args_repr(&[json!(["x".repeat(2000)])]);
        assert_eq!(long, format!("(['{}...'],)", "x".repeat(1022)));
    }

    #[test]
    fn args_and_kwargs_repr_as_celery_writes_them() {
        assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(args_repr(&[json!(1)]), "(1,)");
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(
            kwargs_repr(json!({"z": 1}).as_object().unwrap()),
            "{'z': 1}"
        );
        assert_eq!(kwargs_repr(&Map::new()), "{}");
    }

    #[test]
    fn py_repr_escapes_like_python() {
        // repr('it\'s "q" \\ \t \x00 \x7f \xa0 é \u2028 😀')
        assert_eq!(
            py_repr(&json!("it's \"q\" \\ \t \u{0} \u{7f} \u{a0} é \u{2028} 😀")),
            r#"'it\'s "q" \\ \t \x00 \x7f \xa0 é \u2028 😀'"#
        );
        assert_eq!(py_repr(&json!("it's")), r#""it's""#);
        assert_eq!(
            py_repr(&json!([null, true, false, 1.0, 1e16, -3])),
            "[None, True, False, 1.0, 1e+16, -3]"
        );
        assert_eq!(py_repr(&json!({"a": {"b": []}})), "{'a': {'b': []}}");
        // repr(b"it's \\ \x00 \xff")
        assert_eq!(
            py_repr(&bytes_marker(b"it's \\ \x00 \xff")),
            r#"b"it's \\ \x00 \xff""#
        );
        assert_eq!(
            py_repr(&json!({"__type__": "decimal", "__value__": "3.14"})),
            "Decimal('3.14')"
        );
    }

    #[test]
    fn markers_are_checked_like_kombus_object_hook() {
        let ok = [
            json!({"__type__": "datetime", "__value__": "2024-01-02T03:04:05.678901+00:00"}),
            json!({"__type__": "date", "__value__": "2024-01-02"}),
            json!({"__type__": "time", "__value__": "03:04:05"}),
            json!({"__type__": "decimal", "__value__": "-3.14e5"}),
            json!({"__type__": "decimal", "__value__": "NaN"}),
            json!({"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}),
            json!({"__type__": "bytes", "__value__": "hello"}),
            json!({"__type__": "base64", "__value__": "/wAB"}),
        ];
        for v in &ok {
            assert!(check_marker(v).unwrap().is_some(), "{v}");
        }
        let bad = [
            json!({"__type__": "set", "__value__": [1]}),
            json!({"__type__": 1, "__value__": 1}),
            json!({"__type__": "datetime", "__value__": "yesterday"}),
            json!({"__type__": "datetime", "__value__": 5}),
            json!({"__type__": "decimal", "__value__": "1.2.3"}),
            json!({"__type__": "uuid", "__value__": "12345678123456781234567812345678"}),
            json!({"__type__": "uuid", "__value__": {"hex": "zz"}}),
            json!({"__type__": "base64", "__value__": "QQ"}),
            json!({"__type__": "bytes", "__value__": 1}),
        ];
        for v in &bad {
            assert!(check_marker(v).is_err(), "{v}");
            // Nested anywhere, the whole document is refused.
            assert!(check_markers(&json!([1, {"k": [v]}])).is_err(), "{v}");
        }
        // Not a marker: other keys present, or a key missing.
        assert_eq!(
            check_marker(&json!({"__type__": "set", "__value__": 1, "x": 2})),
            Ok(None)
        );
        assert_eq!(check_marker(&json!({"__type__": "set"})), Ok(None));
    }

    #[test]
    fn plain_unwraps_every_marker_recursively() {
        let v = json!({
            "d": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05"},
            "n": [{"__type__": "decimal", "__value__": "3.14"}, {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}],
            "b": {"__type__": "bytes", "__value__": "hello"},
            "r": {"__type__": "base64", "__value__": "/wAB"},
            "keep": {"__type__": "x", "__value__": 1, "more": true},
        });
        assert_eq!(
            plain(&v),
            json!({
                "d": "2024-01-02T03:04:05",
                "n": ["3.14", "12345678-1234-5678-1234-567812345678"],
                "b": "hello",
                "r": [255, 0, 1],
                "keep": {"__type__": "x", "__value__": 1, "more": true},
            })
        );
        assert_eq!(unwrap_marker(&json!({"a": 1})), None);
    }

    #[test]
    fn bytes_markers_choose_text_or_base64() {
        assert_eq!(
            bytes_marker(b"hello"),
            json!({"__type__": "bytes", "__value__": "hello"})
        );
        assert_eq!(
            bytes_marker(b"\xff\x00\x01"),
            json!({"__type__": "base64", "__value__": "/wAB"})
        );
        assert_eq!(
            marker_bytes(&bytes_marker(b"\xff\x00\x01")),
            Some(vec![0xff, 0, 1])
        );
        assert_eq!(
            marker_bytes(&json!({"__type__": "date", "__value__": "2024-01-02"})),
            None
        );
    }
}
