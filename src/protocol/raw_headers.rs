//! A message's application headers as a transport hands them over.
//!
//! Every message carries about twenty headers, and the worker needs them only as typed
//! [`TaskHeaders`](super::TaskHeaders). A transport that can show its own form of the headers
//! (lapin's field table, the Redis envelope's JSON) wraps it in a [`HeaderSource`] and
//! [`Headers`] reads it straight into `TaskHeaders`, without the JSON map in between. The map
//! is built only when someone asks for it (a held message being packed, a hybrid v1 body,
//! a library user reading `headers`), and then kept.

use std::borrow::Cow;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use serde_json::{Map, Number, Value};

/// One header value as a transport reads it: borrowed from the wire where it can be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HeaderValue<'a> {
    /// `None` / void / `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// Any number.
    Num(Number),
    /// Text.
    Str(Cow<'a, str>),
    /// A list or a mapping.
    Json(Cow<'a, Value>),
}

impl<'a> HeaderValue<'a> {
    /// A JSON map's value, borrowed.
    pub(crate) fn of(value: &'a Value) -> Self {
        match value {
            Value::Null => HeaderValue::Null,
            Value::Bool(b) => HeaderValue::Bool(*b),
            Value::Number(n) => HeaderValue::Num(n.clone()),
            Value::String(s) => HeaderValue::Str(Cow::Borrowed(s)),
            other => HeaderValue::Json(Cow::Borrowed(other)),
        }
    }

    /// The value as JSON, owned.
    pub(crate) fn into_value(self) -> Value {
        match self {
            HeaderValue::Null => Value::Null,
            HeaderValue::Bool(b) => Value::Bool(b),
            HeaderValue::Num(n) => Value::Number(n),
            HeaderValue::Str(s) => Value::String(s.into_owned()),
            HeaderValue::Json(v) => v.into_owned(),
        }
    }
}

impl fmt::Display for HeaderValue<'_> {
    /// As the JSON value would print (for error messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Null => f.write_str("null"),
            HeaderValue::Bool(b) => write!(f, "{b}"),
            HeaderValue::Num(n) => write!(f, "{n}"),
            HeaderValue::Str(s) => write!(f, "{}", Value::String(s.to_string())),
            HeaderValue::Json(v) => write!(f, "{v}"),
        }
    }
}

/// A JSON value read as a header value: text borrowed from the input when it has no
/// escapes, lists and mappings as JSON values.
impl<'de> serde::Deserialize<'de> for HeaderValue<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(HeaderValueVisitor)
    }
}

struct HeaderValueVisitor;

impl<'de> serde::de::Visitor<'de> for HeaderValueVisitor {
    type Value = HeaderValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(HeaderValue::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(HeaderValue::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(HeaderValue::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(HeaderValue::Num(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(HeaderValue::Num(u.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(Number::from_f64(f).map_or(HeaderValue::Null, HeaderValue::Num))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(HeaderValue::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(HeaderValue::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(HeaderValue::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        use serde::Deserialize;
        let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(HeaderValue::Json(Cow::Owned(v)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        use serde::Deserialize;
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(HeaderValue::Json(Cow::Owned(v)))
    }
}

/// A JSON object's key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'a>(pub Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match HeaderValue::deserialize(d)? {
            HeaderValue::Str(s) => Ok(Key(s)),
            _ => Err(serde::de::Error::custom("a key that is not a string")),
        }
    }
}

/// Hand every entry of a JSON object to `each`, its keys and text borrowed from `json`
/// where they have no escapes. Anything but a well-formed object hands over nothing.
pub(crate) fn visit_json_object(json: &str, each: &mut dyn FnMut(&str, HeaderValue<'_>)) {
    struct Entries<'f>(&'f mut dyn FnMut(&str, HeaderValue<'_>));

    impl<'de> serde::de::Visitor<'de> for Entries<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<Key<'de>>()? {
                let value = map.next_value::<HeaderValue<'de>>()?;
                (self.0)(&key.0, value);
            }
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_str(json);
    let _ = serde::Deserializer::deserialize_map(&mut de, Entries(each));
}

/// A transport's own form of a message's headers.
pub(crate) trait HeaderSource: Send + Sync + fmt::Debug {
    /// Every header, as JSON, in the order [`HeaderSource::visit`] gives them.
    fn to_map(&self) -> Map<String, Value>;

    /// Hand every header to `each`, in order.
    fn visit(&self, each: &mut dyn FnMut(&str, HeaderValue<'_>));
}

/// A message's application headers: a JSON map to every reader, read lazily from the
/// transport's own form when a transport supplied one.
///
/// It dereferences to the [`Map`] (building it on first use, from then on kept), so
/// `raw.headers.get("task")` and `raw.headers.insert(..)` read and change it as a map.
/// Build one from a map with `Headers::from(map)`.
///
/// ```
/// use celeriac::protocol::Headers;
/// use serde_json::{Map, json};
///
/// let mut map = Map::new();
/// map.insert("task".into(), json!("tasks.add"));
/// let headers = Headers::from(map);
/// assert_eq!(headers.get("task"), Some(&json!("tasks.add")));
/// ```
#[derive(Default)]
pub struct Headers {
    map: OnceLock<Map<String, Value>>,
    source: Option<Box<dyn HeaderSource>>,
}

impl Headers {
    /// Headers read from `source` only when asked for.
    pub(crate) fn from_source(source: Box<dyn HeaderSource>) -> Self {
        Headers {
            map: OnceLock::new(),
            source: Some(source),
        }
    }

    /// Hand every header to `each`: from the transport's own form while no map was built,
    /// otherwise from the map.
    pub(crate) fn visit(&self, each: &mut dyn FnMut(&str, HeaderValue<'_>)) {
        match (self.map.get(), &self.source) {
            (None, Some(source)) => source.visit(each),
            _ => {
                for (k, v) in self.as_map() {
                    each(k, HeaderValue::of(v));
                }
            }
        }
    }

    /// The headers as a JSON map (built from the transport's form on first use).
    pub fn as_map(&self) -> &Map<String, Value> {
        self.map
            .get_or_init(|| self.source.as_ref().map(|s| s.to_map()).unwrap_or_default())
    }

    /// The headers as a JSON map, owned.
    pub fn into_map(mut self) -> Map<String, Value> {
        self.as_map();
        self.map.take().unwrap_or_default()
    }
}

impl Deref for Headers {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        self.as_map()
    }
}

impl DerefMut for Headers {
    /// The map, to change: from here on it is the only form kept.
    fn deref_mut(&mut self) -> &mut Map<String, Value> {
        self.as_map();
        self.source = None;
        self.map.get_mut().expect("built just above")
    }
}

impl From<Map<String, Value>> for Headers {
    fn from(map: Map<String, Value>) -> Self {
        Headers {
            map: OnceLock::from(map),
            source: None,
        }
    }
}

impl From<Headers> for Map<String, Value> {
    fn from(headers: Headers) -> Self {
        headers.into_map()
    }
}

impl Clone for Headers {
    fn clone(&self) -> Self {
        Headers::from(self.as_map().clone())
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.as_map() == other.as_map()
    }
}

impl serde::Serialize for Headers {
    /// As the JSON map.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_map().serialize(serializer)
    }
}

impl PartialEq<Map<String, Value>> for Headers {
    fn eq(&self, other: &Map<String, Value>) -> bool {
        self.as_map() == other
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_map(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A source that says how often its map was built.
    #[derive(Debug)]
    struct Counting(
        Map<String, Value>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    );

    impl HeaderSource for Counting {
        fn to_map(&self) -> Map<String, Value> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.clone()
        }
        fn visit(&self, each: &mut dyn FnMut(&str, HeaderValue<'_>)) {
            for (k, v) in &self.0 {
                each(k, HeaderValue::of(v));
            }
        }
    }

    fn source() -> Box<Counting> {
        let map = json!({"task": "t", "id": "i", "n": 1});
        Box::new(Counting(
            map.as_object().unwrap().clone(),
            Default::default(),
        ))
    }

    #[test]
    fn a_source_is_read_as_a_map_once_and_then_changed_as_one() {
        let mut h = Headers::from_source(source());
        let mut seen = Vec::new();
        h.visit(&mut |k, v| seen.push((k.to_owned(), v.into_value())));
        assert_eq!(seen.len(), 3);
        assert_eq!(h.get("n"), Some(&json!(1)));
        assert_eq!(h.len(), 3);
        h.insert("extra".into(), json!(true));
        let mut keys = Vec::new();
        h.visit(&mut |k, _| keys.push(k.to_owned()));
        assert_eq!(keys, ["task", "id", "n", "extra"]);
        assert_eq!(h.clone(), h);
        assert_eq!(h.into_map().len(), 4);
    }

    #[test]
    fn visiting_a_source_does_not_build_the_map() {
        let counting = source();
        let built = counting.1.clone();
        let h = Headers::from_source(counting);
        h.visit(&mut |_, _| {});
        let count = || built.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(count(), 0);
        let _ = h.get("task");
        let _ = h.get("id");
        assert_eq!(count(), 1);
    }

    #[test]
    fn a_json_object_is_visited_as_its_map_reads() {
        let json = r#"{"task": "t", "s": "a\"b", "n": -1, "u": 18446744073709551615,
            "f": 1.5, "b": true, "z": null, "l": [1, {"x": "y"}], "m": {"k": []}, "n": 2}"#;
        let map: Map<String, Value> = serde_json::from_str(json).unwrap();
        let mut seen = Map::new();
        visit_json_object(json, &mut |k, v| {
            seen.insert(k.to_owned(), v.into_value());
        });
        assert_eq!(seen, map);
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            map.keys().collect::<Vec<_>>()
        );
        let mut borrowed = 0;
        visit_json_object(r#"{"a": "plain", "b": "esc\n"}"#, &mut |_, v| {
            borrowed += usize::from(matches!(v, HeaderValue::Str(Cow::Borrowed(_))));
        });
        assert_eq!(borrowed, 1);
    }

    #[test]
    fn values_print_as_json() {
        assert_eq!(HeaderValue::Str("a\"b".into()).to_string(), r#""a\"b""#);
        assert_eq!(HeaderValue::of(&json!([1, null])).to_string(), "[1,null]");
        assert_eq!(HeaderValue::Null.to_string(), "null");
    }
}
