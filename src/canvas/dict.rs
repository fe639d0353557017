//! A signature in the form Celery writes it into messages: a dict with `task`, `args`,
//! `kwargs`, `options`, `subtask_type` and `immutable` (what `link` / `link_error` carry in
//! a message's `callbacks` / `errbacks`).

use super::Signature;
use crate::client::SendOptions;
use crate::protocol::Serializer;
use crate::protocol::decode::parse_iso8601;
use chrono::Utc;
use serde_json::{Map, Value};
use std::time::Duration;

/// Why a signature dict could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureError {
    /// Not a dict, no task name, or a field of the wrong type.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// A chain, group or chord used where Celeriac only runs single tasks so far.
    #[error("a {0} signature cannot be called by this worker yet (only single tasks)")]
    Unsupported(String),
}

impl Signature<Value> {
    /// Read a signature as Celery serializes one (`dict(signature)`), e.g. an errback from
    /// a message's `errbacks`. The options Celeriac knows are kept (`task_id`, `queue`,
    /// `exchange`, `routing_key`, `priority`, `countdown`, `eta`, `expires`, `shadow`,
    /// `ignore_result`, `time_limit`, `soft_time_limit`, `serializer`, `headers`); others
    /// are ignored, as Celery ignores options its producer does not know.
    ///
    /// ```
    /// use celeriac::canvas::Signature;
    /// use serde_json::json;
    ///
    /// let sig = Signature::from_dict(&json!({
    ///     "task": "pytasks.on_error", "args": [1], "kwargs": {},
    ///     "options": {"queue": "py", "countdown": 2}, "subtask_type": null, "immutable": false,
    /// }))?;
    /// assert_eq!(sig.name(), "pytasks.on_error");
    /// assert_eq!(sig.options().queue.as_deref(), Some("py"));
    /// # Ok::<(), celeriac::canvas::SignatureError>(())
    /// ```
    pub fn from_dict(value: &Value) -> Result<Signature<Value>, SignatureError> {
        let bad = |what: &str| SignatureError::Malformed(what.to_owned());
        let dict = value.as_object().ok_or_else(|| bad("not a dict"))?;
        if let Some(kind) = dict.get("subtask_type").and_then(Value::as_str) {
            return Err(SignatureError::Unsupported(kind.to_owned()));
        }
        let name = dict
            .get("task")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no task name"))?;
        let mut sig = Signature::new(name);
        match dict.get("args") {
            None | Some(Value::Null) => {}
            Some(Value::Array(args)) => sig.args = args.clone(),
            Some(_) => return Err(bad("args is not a list")),
        }
        match dict.get("kwargs") {
            None | Some(Value::Null) => {}
            Some(Value::Object(kwargs)) => sig.kwargs = kwargs.clone(),
            Some(_) => return Err(bad("kwargs is not a dict")),
        }
        sig.immutable = dict
            .get("immutable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match dict.get("options") {
            None | Some(Value::Null) => {}
            Some(Value::Object(options)) => sig.options = send_options(options)?,
            Some(_) => return Err(bad("options is not a dict")),
        }
        Ok(sig)
    }
}

/// The `apply_async` options of a signature dict.
fn send_options(o: &Map<String, Value>) -> Result<SendOptions, SignatureError> {
    let bad = |key: &str| SignatureError::Malformed(format!("option {key} has the wrong type"));
    let text = |key: &str| -> Result<Option<String>, SignatureError> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(key)),
        }
    };
    let number = |key: &str| -> Result<Option<f64>, SignatureError> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(key)),
        }
    };
    let seconds = |key: &str| -> Result<Option<Duration>, SignatureError> {
        number(key)?
            .map(|s| Duration::try_from_secs_f64(s.max(0.0)).map_err(|_| bad(key)))
            .transpose()
    };
    let instant = |key: &str| match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso8601(s).map(Some).map_err(|_| bad(key)),
        // `expires` may also be seconds from now.
        Some(v) => {
            let secs = v.as_f64().ok_or_else(|| bad(key))?;
            let d = chrono::Duration::milliseconds((secs * 1000.0) as i64);
            Ok(Some(Utc::now() + d))
        }
    };
    let mut opts = SendOptions::new();
    opts.task_id = text("task_id")?;
    opts.queue = text("queue")?;
    opts.exchange = text("exchange")?;
    opts.routing_key = text("routing_key")?;
    opts.shadow = text("shadow")?;
    opts.priority = number("priority")?.map(|p| p.clamp(0.0, 255.0) as u8);
    opts.countdown = seconds("countdown")?;
    opts.eta = instant("eta")?;
    opts.expires = instant("expires")?;
    opts.ignore_result = o.get("ignore_result").and_then(Value::as_bool);
    opts.time_limit = number("time_limit")?;
    opts.soft_time_limit = number("soft_time_limit")?;
    if let Some(name) = text("serializer")? {
        opts.serializer = Some(Serializer::from_name(&name).ok_or_else(|| bad("serializer"))?);
    }
    if let Some(Value::Object(headers)) = o.get("headers") {
        opts.headers = headers.clone();
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_celery_writes_for_link_error() {
        // `dict(app.signature('pytasks.on_error', args=(1,), queue='py', countdown=2).set(
        // immutable=True))`, as Celery 5.7 serializes it into `errbacks`.
        let sig = Signature::from_dict(&json!({
            "task": "pytasks.on_error", "args": [1], "kwargs": {"k": "v"},
            "options": {"queue": "py", "countdown": 2, "task_id": "e-1", "priority": 5,
                        "expires": "2030-01-01T00:00:00+00:00", "link": []},
            "subtask_type": null, "immutable": true, "chord_size": null
        }))
        .unwrap();
        assert_eq!(sig.name(), "pytasks.on_error");
        assert_eq!(sig.args(), &[json!(1)]);
        assert_eq!(sig.kwargs().get("k"), Some(&json!("v")));
        assert!(sig.is_immutable());
        let o = sig.options();
        assert_eq!(o.queue.as_deref(), Some("py"));
        assert_eq!(o.task_id.as_deref(), Some("e-1"));
        assert_eq!(o.countdown, Some(Duration::from_secs(2)));
        assert_eq!(o.priority, Some(5));
        assert_eq!(o.expires.unwrap().to_rfc3339(), "2030-01-01T00:00:00+00:00");
    }

    #[test]
    fn minimal_dict_and_errors() {
        let sig = Signature::from_dict(&json!({"task": "t"})).unwrap();
        assert!(sig.args().is_empty() && !sig.is_immutable());
        assert_eq!(sig.options(), &SendOptions::new());
        assert!(matches!(
            Signature::from_dict(&json!(["t"])),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            Signature::from_dict(&json!({"task": "t", "args": 3})),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            Signature::from_dict(&json!({"task": "t", "options": {"countdown": "x"}})),
            Err(SignatureError::Malformed(_))
        ));
        assert_eq!(
            Signature::from_dict(&json!({"task": "celery.chain", "subtask_type": "chain"}))
                .unwrap_err(),
            SignatureError::Unsupported("chain".into())
        );
    }
}
