//! The protocol v2 task headers (PROTOCOL.md section 1.2).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::decode::{DecodeError, parse_iso8601};
use super::raw_headers::{HeaderValue, Headers};

/// Celery's task headers. Known headers are typed; anything else (custom `headers=`
/// from `apply_async`, `compression`, `redelivered`, broker additions) is kept in
/// [`TaskHeaders::extra`] in arrival order and written back on encode.
///
/// `Default` is empty (no task name, no id, no `lang`); [`TaskHeaders::new`] gives the
/// headers `apply_async` would send.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskHeaders {
    /// Always `"py"` from Python clients.
    pub lang: Option<String>,
    /// The registered task name (required).
    pub task: String,
    /// The task id (required).
    pub id: String,
    /// Display-name override.
    pub shadow: Option<String>,
    /// Not before this time (naive times on the wire are read as UTC).
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after this time.
    pub expires: Option<DateTime<Utc>>,
    /// Group id when part of a group or chord header.
    pub group: Option<String>,
    /// Position inside the group.
    pub group_index: Option<i64>,
    /// How many times the task was retried.
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds (hard first!).
    pub timelimit: (Option<f64>, Option<f64>),
    /// Id of the first task of the workflow.
    pub root_id: Option<String>,
    /// Id of the task that sent this one.
    pub parent_id: Option<String>,
    /// Python `repr` of the args (display only).
    pub argsrepr: Option<String>,
    /// Python `repr` of the kwargs (display only).
    pub kwargsrepr: Option<String>,
    /// Publisher node name.
    pub origin: Option<String>,
    /// `Some(true)` / `Some(false)` from `apply_async`, `None` from `send_task`.
    pub ignore_result: Option<bool>,
    /// Incremented by `Task.replace`.
    pub replaced_task_nesting: i64,
    /// Names of stamp headers.
    pub stamped_headers: Option<Vec<String>>,
    /// Stamps, `{}` when none.
    pub stamps: Map<String, Value>,
    /// Every other header, kept in arrival order.
    pub extra: Map<String, Value>,
}

impl TaskHeaders {
    /// Headers for a new task with the given name and id, everything else defaulted
    /// the way Celery's `apply_async` defaults it.
    pub fn new(task: impl Into<String>, id: impl Into<String>) -> Self {
        let id = id.into();
        TaskHeaders {
            lang: Some("py".into()),
            task: task.into(),
            root_id: Some(id.clone()),
            id,
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: (None, None),
            parent_id: None,
            argsrepr: None,
            kwargsrepr: None,
            origin: None,
            ignore_result: Some(false),
            replaced_task_nesting: 0,
            stamped_headers: None,
            stamps: Map::new(),
            extra: Map::new(),
        }
    }
}

/// The header names [`TaskHeaders`] types, in the order Celery's `as_task_v2` writes them.
pub const KNOWN_HEADERS: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

/// The rank of each header's check: when several headers are wrong, the error reported is
/// the one of the lowest rank (missing `task`, then missing `id`, then the typed headers).
const RANKS: [(&str, u8); 19] = [
    ("task", 0),
    ("id", 1),
    ("retries", 2),
    ("timelimit", 3),
    ("group_index", 4),
    ("ignore_result", 5),
    ("stamped_headers", 6),
    ("stamps", 7),
    ("lang", 8),
    ("shadow", 9),
    ("eta", 10),
    ("expires", 11),
    ("group", 12),
    ("root_id", 13),
    ("parent_id", 14),
    ("argsrepr", 15),
    ("kwargsrepr", 16),
    ("origin", 17),
    ("replaced_task_nesting", 18),
];

/// A string header that may be absent or null.
fn opt_string(name: &str, v: HeaderValue<'_>) -> Result<Option<String>, DecodeError> {
    match v {
        HeaderValue::Null => Ok(None),
        HeaderValue::Str(s) => Ok(Some(s.into_owned())),
        other => Err(DecodeError::header(
            name,
            format!("expected a string or null, got {other}"),
        )),
    }
}

fn required_string(name: &str, v: HeaderValue<'_>) -> Result<String, DecodeError> {
    match v {
        HeaderValue::Str(s) => Ok(s.into_owned()),
        other => Err(DecodeError::header(
            name,
            format!("expected a string, got {other}"),
        )),
    }
}

/// `eta` / `expires`: `maybe_iso8601` treats a missing, null or empty value as unset.
fn opt_time(name: &str, v: HeaderValue<'_>) -> Result<Option<DateTime<Utc>>, DecodeError> {
    match v {
        HeaderValue::Null => Ok(None),
        HeaderValue::Str(s) if s.is_empty() => Ok(None),
        HeaderValue::Str(s) => parse_iso8601(&s)
            .map(Some)
            .map_err(|e| DecodeError::header(name, e)),
        other => Err(DecodeError::header(
            name,
            format!("expected an ISO-8601 string, got {other}"),
        )),
    }
}

/// An integer header; null gives `default`.
fn int_or(name: &str, v: HeaderValue<'_>, default: i64) -> Result<i64, DecodeError> {
    match v {
        HeaderValue::Null => Ok(default),
        HeaderValue::Num(n) => n
            .as_i64()
            .ok_or_else(|| DecodeError::header(name, format!("expected an integer, got {n}"))),
        other => Err(DecodeError::header(
            name,
            format!("expected an integer, got {other}"),
        )),
    }
}

/// One `timelimit` entry: seconds (int or float) or null. Negative or non-finite limits
/// are refused here so later `Duration` conversions cannot fail.
fn limit(v: Option<&Value>) -> Result<Option<f64>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
            _ => Err(DecodeError::header(
                "timelimit",
                format!("time limit {n} is not a non-negative number of seconds"),
            )),
        },
        Some(other) => Err(DecodeError::header(
            "timelimit",
            format!("expected seconds or null, got {other}"),
        )),
    }
}

/// A number of seconds as Python would have sent it: integral values as ints.
fn seconds_value(secs: Option<f64>) -> Value {
    match secs {
        None => Value::Null,
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
        Some(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
    }
}

/// Reads headers one at a time, in any order, into [`TaskHeaders`]: the one place that
/// knows what each header may hold, whatever form a transport hands them in (a JSON map,
/// an AMQP field table, the Redis envelope's JSON).
pub(crate) struct HeadersReader {
    headers: TaskHeaders,
    has_task: bool,
    has_id: bool,
    /// Wrong headers, by rank (see [`RANKS`]); a header seen again replaces its entry.
    errors: Vec<(u8, DecodeError)>,
}

impl HeadersReader {
    pub(crate) fn new() -> Self {
        HeadersReader {
            headers: TaskHeaders::default(),
            has_task: false,
            has_id: false,
            errors: Vec::new(),
        }
    }

    /// Whether a `task` header was seen (a protocol v2 message).
    pub(crate) fn has_task(&self) -> bool {
        self.has_task
    }

    /// A header kept as it came (unknown to [`TaskHeaders`]), e.g. `compression`.
    pub(crate) fn extra(&self, name: &str) -> Option<&Value> {
        self.headers.extra.get(name)
    }

    /// Read one header. A header given twice keeps the last value, as a JSON map does.
    pub(crate) fn put(&mut self, name: &str, v: HeaderValue<'_>) {
        let Some(rank) = RANKS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r) else {
            self.headers.extra.insert(name.to_owned(), v.into_value());
            return;
        };
        if !self.errors.is_empty() {
            self.errors.retain(|(r, _)| *r != rank);
        }
        if let Err(e) = self.read(rank, v) {
            self.errors.push((rank, e));
        }
    }

    fn read(&mut self, rank: u8, v: HeaderValue<'_>) -> Result<(), DecodeError> {
        let h = &mut self.headers;
        let name = RANKS[usize::from(rank)].0;
        match rank {
            0 => {
                self.has_task = true;
                h.task = required_string(name, v)?;
            }
            1 => {
                self.has_id = true;
                h.id = required_string(name, v)?;
            }
            2 => {
                let retries = int_or(name, v, 0)?;
                h.retries = u32::try_from(retries).map_err(|_| {
                    DecodeError::header(name, format!("{retries} is not a retry count"))
                })?;
            }
            // `if timelimit: self.time_limits = timelimit`: null or [] = no limits; a
            // one-item list gives only the hard limit.
            3 => {
                h.timelimit = match v {
                    HeaderValue::Null => (None, None),
                    HeaderValue::Json(items) => match items.as_ref() {
                        Value::Array(items) if items.len() <= 2 => {
                            (limit(items.first())?, limit(items.get(1))?)
                        }
                        other => {
                            return Err(DecodeError::header(
                                name,
                                format!("expected [hard, soft], got {other}"),
                            ));
                        }
                    },
                    other => {
                        return Err(DecodeError::header(
                            name,
                            format!("expected [hard, soft], got {other}"),
                        ));
                    }
                }
            }
            4 => {
                h.group_index = match v {
                    HeaderValue::Null => None,
                    HeaderValue::Num(n) => Some(n.as_i64().ok_or_else(|| {
                        DecodeError::header(name, format!("expected an integer, got {n}"))
                    })?),
                    other => {
                        return Err(DecodeError::header(
                            name,
                            format!("expected an integer or null, got {other}"),
                        ));
                    }
                }
            }
            5 => {
                h.ignore_result = match v {
                    HeaderValue::Null => None,
                    HeaderValue::Bool(b) => Some(b),
                    // Python reads the header for its truth value.
                    HeaderValue::Num(n) => Some(n.as_f64() != Some(0.0)),
                    other => {
                        return Err(DecodeError::header(
                            name,
                            format!("expected a boolean or null, got {other}"),
                        ));
                    }
                }
            }
            6 => {
                h.stamped_headers = match v {
                    HeaderValue::Null => None,
                    HeaderValue::Json(items) if items.is_array() => Some(
                        items
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|v| v.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                DecodeError::header(name, "expected a list of strings")
                            })?,
                    ),
                    other => {
                        return Err(DecodeError::header(
                            name,
                            format!("expected a list or null, got {other}"),
                        ));
                    }
                }
            }
            7 => {
                h.stamps = match v {
                    HeaderValue::Null => Map::new(),
                    HeaderValue::Json(m) if m.is_object() => match m.into_owned() {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    },
                    other => {
                        return Err(DecodeError::header(
                            name,
                            format!("expected a mapping, got {other}"),
                        ));
                    }
                }
            }
            8 => h.lang = opt_string(name, v)?,
            9 => h.shadow = opt_string(name, v)?,
            10 => h.eta = opt_time(name, v)?,
            11 => h.expires = opt_time(name, v)?,
            12 => h.group = opt_string(name, v)?,
            13 => h.root_id = opt_string(name, v)?,
            14 => h.parent_id = opt_string(name, v)?,
            15 => h.argsrepr = opt_string(name, v)?,
            16 => h.kwargsrepr = opt_string(name, v)?,
            17 => h.origin = opt_string(name, v)?,
            _ => h.replaced_task_nesting = int_or(name, v, 0)?,
        }
        Ok(())
    }

    /// The headers read, or the error of the lowest rank: `task` and `id` are required,
    /// everything else follows the worker's `.get()` defaults.
    pub(crate) fn finish(self) -> Result<TaskHeaders, DecodeError> {
        if !self.has_task {
            return Err(DecodeError::MissingHeader("task"));
        }
        match self.errors.into_iter().min_by_key(|(rank, _)| *rank) {
            Some((0, err)) => Err(err),
            _ if !self.has_id => Err(DecodeError::MissingHeader("id")),
            Some((_, err)) => Err(err),
            None => Ok(self.headers),
        }
    }
}

impl TaskHeaders {
    /// Read Celery's v2 headers (also used for v1 bodies and hybrid messages, whose
    /// fields are the same). `task` and `id` are required; everything else follows the
    /// worker's `.get()` defaults. Unknown headers go to [`TaskHeaders::extra`] in order.
    pub fn from_map(map: &Map<String, Value>) -> Result<Self, DecodeError> {
        let mut reader = HeadersReader::new();
        for (k, v) in map {
            reader.put(k, HeaderValue::of(v));
        }
        reader.finish()
    }

    /// [`TaskHeaders::from_map`] over a message's [`Headers`], read from the transport's own
    /// form when it has one (no JSON map built).
    pub fn from_headers(headers: &Headers) -> Result<Self, DecodeError> {
        let mut reader = HeadersReader::new();
        headers.visit(&mut |k, v| reader.put(k, v));
        reader.finish()
    }

    /// The header map in Celery's order, as `as_task_v2` builds it: `lang` defaults to
    /// `"py"` and `root_id` to the task id (Celery's own defaults), other unset values are
    /// written as `null`, times in Python's `isoformat()`, then every extra header.
    /// `argsrepr`/`kwargsrepr` are written as they are; [`crate::protocol::encode()`] fills
    /// them in first.
    pub fn to_map(&self) -> Map<String, Value> {
        let s = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()));
        let t = |v: &Option<DateTime<Utc>>| {
            v.as_ref().map_or(Value::Null, |d| {
                Value::String(super::encode::python_isoformat(d))
            })
        };
        // Room for every entry at once: the map would otherwise grow (and copy) three times.
        let mut m = Map::with_capacity(KNOWN_HEADERS.len() + self.extra.len());
        m.insert(
            "lang".into(),
            Value::String(self.lang.clone().unwrap_or_else(|| "py".into())),
        );
        m.insert("task".into(), Value::String(self.task.clone()));
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("shadow".into(), s(&self.shadow));
        m.insert("eta".into(), t(&self.eta));
        m.insert("expires".into(), t(&self.expires));
        m.insert("group".into(), s(&self.group));
        m.insert(
            "group_index".into(),
            self.group_index.map_or(Value::Null, Value::from),
        );
        m.insert("retries".into(), Value::from(self.retries));
        m.insert(
            "timelimit".into(),
            Value::Array(vec![
                seconds_value(self.timelimit.0),
                seconds_value(self.timelimit.1),
            ]),
        );
        let root_id = match &self.root_id {
            Some(r) if !r.is_empty() => r.clone(),
            _ => self.id.clone(),
        };
        m.insert("root_id".into(), Value::String(root_id));
        m.insert("parent_id".into(), s(&self.parent_id));
        m.insert("argsrepr".into(), s(&self.argsrepr));
        m.insert("kwargsrepr".into(), s(&self.kwargsrepr));
        m.insert("origin".into(), s(&self.origin));
        m.insert(
            "ignore_result".into(),
            self.ignore_result.map_or(Value::Null, Value::Bool),
        );
        m.insert(
            "replaced_task_nesting".into(),
            Value::from(self.replaced_task_nesting),
        );
        m.insert(
            "stamped_headers".into(),
            self.stamped_headers.as_ref().map_or(Value::Null, |names| {
                Value::Array(names.iter().cloned().map(Value::String).collect())
            }),
        );
        m.insert("stamps".into(), Value::Object(self.stamps.clone()));
        for (k, v) in &self.extra {
            if !KNOWN_HEADERS.contains(&k.as_str()) {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    /// The hard time limit (`timelimit[0]`) as a duration.
    pub fn hard_time_limit(&self) -> Option<std::time::Duration> {
        self.timelimit
            .0
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
    }

    /// The soft time limit (`timelimit[1]`) as a duration.
    pub fn soft_time_limit(&self) -> Option<std::time::Duration> {
        self.timelimit
            .1
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(v: Value) -> Result<TaskHeaders, DecodeError> {
        TaskHeaders::from_map(v.as_object().unwrap())
    }

    #[test]
    fn minimal_headers_take_celery_defaults() {
        let h = headers(json!({"task": "t", "id": "i"})).unwrap();
        assert_eq!(
            (h.retries, h.timelimit, h.ignore_result, h.root_id),
            (0, (None, None), None, None)
        );
        assert!(h.stamps.is_empty() && h.extra.is_empty());
    }

    #[test]
    fn timelimit_accepts_ints_floats_nulls_and_short_lists() {
        let tl = |v: Value| {
            headers(json!({"task": "t", "id": "i", "timelimit": v})).map(|h| h.timelimit)
        };
        assert_eq!(tl(json!([30, 20])).unwrap(), (Some(30.0), Some(20.0)));
        assert_eq!(tl(json!([1.5, null])).unwrap(), (Some(1.5), None));
        assert_eq!(tl(json!([null, 2.25])).unwrap(), (None, Some(2.25)));
        assert_eq!(tl(json!([10])).unwrap(), (Some(10.0), None));
        assert_eq!(tl(json!([])).unwrap(), (None, None));
        assert_eq!(tl(json!(null)).unwrap(), (None, None));
        assert!(tl(json!([1, 2, 3])).is_err());
        assert!(tl(json!(["1", 2])).is_err());
        assert!(tl(json!([-1, 2])).is_err());
        assert!(tl(json!(5)).is_err());
    }

    #[test]
    fn extra_headers_keep_arrival_order_and_round_trip() {
        let h = headers(json!({"z-last": 1, "task": "t", "a-first": 2, "id": "i"})).unwrap();
        assert_eq!(h.extra.keys().collect::<Vec<_>>(), ["z-last", "a-first"]);
        let m = h.to_map();
        assert_eq!(m.keys().skip(19).collect::<Vec<_>>(), ["z-last", "a-first"]);
        assert_eq!(m.keys().take(19).collect::<Vec<_>>(), KNOWN_HEADERS);
    }

    /// Several wrong headers at once: the one reported does not depend on their order.
    #[test]
    fn the_first_check_in_celery_order_is_the_one_reported() {
        let name = |v: Value| match headers(v) {
            Err(DecodeError::InvalidHeader { name, .. }) => name,
            Err(DecodeError::MissingHeader(name)) => format!("missing {name}"),
            other => panic!("{other:?}"),
        };
        assert_eq!(name(json!({"eta": 1, "id": 2})), "missing task");
        assert_eq!(name(json!({"eta": 1, "task": 2})), "task");
        assert_eq!(name(json!({"eta": 1, "task": "t"})), "missing id");
        assert_eq!(
            name(json!({"eta": 1, "origin": 2, "task": "t", "retries": "x", "id": "i"})),
            "retries"
        );
        assert_eq!(
            name(json!({"replaced_task_nesting": "x", "lang": 1, "task": "t", "id": "i"})),
            "lang"
        );
    }

    #[test]
    fn bad_types_name_the_header() {
        for (name, v) in [
            ("id", json!(1)),
            ("retries", json!(-1)),
            ("retries", json!(1.5)),
            ("eta", json!("never")),
            ("eta", json!(5)),
            ("group_index", json!("0")),
            ("stamps", json!([])),
            ("shadow", json!({})),
            ("stamped_headers", json!([1])),
            ("ignore_result", json!("yes")),
        ] {
            let mut m = json!({"task": "t", "id": "i"});
            m[name] = v;
            match headers(m) {
                Err(DecodeError::InvalidHeader { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            headers(json!({"task": "t"})),
            Err(DecodeError::MissingHeader("id"))
        ));
    }

    #[test]
    fn to_map_writes_integral_limits_as_ints() {
        let mut h = TaskHeaders::new("t", "i");
        h.timelimit = (Some(30.0), Some(2.5));
        assert_eq!(h.to_map()["timelimit"], json!([30, 2.5]));
        assert_eq!(
            h.hard_time_limit(),
            Some(std::time::Duration::from_secs(30))
        );
    }
}
