//! Serializers, chosen per message by content type (PROTOCOL.md section 3).
//!
//! JSON is kombu's: Python `json.dumps` bytes on the way out, `__type__` markers checked
//! on the way in. msgpack is `packb(use_bin_type=True)` / `unpackb(raw=False)`. msgpack
//! `bin` has no `serde_json::Value` form, so it is carried as kombu's JSON bytes marker
//! (`{"__type__": "bytes" | "base64", "__value__": ...}`) and written back as `bin`: a
//! value survives either serializer unchanged.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::{Map, Value};

use super::decode::DecodeError;
use super::encode::EncodeError;
use super::kombu::{bytes_marker, check_markers, marker_bytes, to_python_json};

/// How deep a msgpack body may nest (serde_json's own limit is 128 as well); deeper
/// input is refused rather than risking the stack.
const MAX_DEPTH: usize = 128;

/// A body serializer Celery and kombu know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Serializer {
    /// `application/json`, kombu's JSON with its type markers.
    #[default]
    Json,
    /// `application/x-msgpack`.
    Msgpack,
}

impl fmt::Display for Serializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Serializer::Json => "json",
            Serializer::Msgpack => "msgpack",
        })
    }
}

impl Serializer {
    /// The serializer for a content type, `None` when it is not one we accept.
    ///
    /// kombu's registry matches the mime type exactly and registers msgpack only as
    /// `application/x-msgpack`, so `application/msgpack` (or any parameter such as
    /// `; charset=utf-8`) is refused, as a Python worker would.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type {
            "application/json" => Some(Serializer::Json),
            "application/x-msgpack" => Some(Serializer::Msgpack),
            _ => None,
        }
    }

    /// The serializer for a kombu serializer name (`task_serializer`): `json` or `msgpack`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Serializer::Json),
            "msgpack" => Some(Serializer::Msgpack),
            _ => None,
        }
    }

    /// The mime type written in `content_type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Serializer::Json => "application/json",
            Serializer::Msgpack => "application/x-msgpack",
        }
    }

    /// The value written in `content_encoding` (`utf-8` or `binary`).
    pub fn content_encoding(self) -> &'static str {
        match self {
            Serializer::Json => "utf-8",
            Serializer::Msgpack => "binary",
        }
    }

    /// Serialize a value the way kombu does.
    ///
    /// JSON refuses marker objects kombu could not read back (unknown `__type__`, bad
    /// value), since the peer would reject the message. msgpack writes valid `bytes` /
    /// `base64` markers as `bin` and everything else as it is.
    pub fn serialize(self, value: &Value) -> Result<Vec<u8>, EncodeError> {
        match self {
            Serializer::Json => {
                check_markers(value)?;
                Ok(to_python_json(value).into_bytes())
            }
            Serializer::Msgpack => rmp_serde::to_vec(&MsgpackOut(value))
                .map_err(|e| EncodeError::Msgpack(e.to_string())),
        }
    }

    /// Deserialize bytes into a value.
    pub fn deserialize(self, bytes: &[u8]) -> Result<Value, DecodeError> {
        let fail = |reason: String| DecodeError::Body {
            serializer: self,
            reason,
        };
        match self {
            Serializer::Json => {
                let value: Value =
                    serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
                check_markers(&value)?;
                Ok(value)
            }
            Serializer::Msgpack => {
                let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
                let value = MsgpackIn { depth: 0 }
                    .deserialize(&mut de)
                    .map_err(|e| fail(e.to_string()))?;
                // `unpackb` refuses trailing bytes (ExtraData).
                let used = de.position();
                if used != bytes.len() as u64 {
                    return Err(fail(format!(
                        "{} extra bytes after the value",
                        bytes.len() as u64 - used
                    )));
                }
                Ok(value)
            }
        }
    }
}

/// Writes a [`Value`] as msgpack, bytes markers as `bin`.
struct MsgpackOut<'a>(&'a Value);

impl serde::Serialize for MsgpackOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    s.serialize_i64(i)
                } else if let Some(u) = n.as_u64() {
                    s.serialize_u64(u)
                } else {
                    // Python floats are doubles; packb writes them as float 64.
                    s.serialize_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(text) => s.serialize_str(text),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&MsgpackOut(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                if let Some(bytes) = marker_bytes(self.0) {
                    return s.serialize_bytes(&bytes);
                }
                let mut out = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(k, &MsgpackOut(v))?;
                }
                out.end()
            }
        }
    }
}

/// Reads msgpack into a [`Value`], `bin` as a bytes marker, counting depth.
#[derive(Clone, Copy)]
struct MsgpackIn {
    depth: usize,
}

impl MsgpackIn {
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(MsgpackIn {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for MsgpackIn {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MsgpackIn {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a msgpack value without extension types")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Value, E> {
        self.visit_f64(f64::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("float {v} has no JSON form")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(bytes_marker(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        // Never trust the announced length for the allocation.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(MsgpackKey)? {
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A msgpack map key: strings, and integers written as their decimal text (JSON keys
/// can only be strings).
struct MsgpackKey;

impl<'de> DeserializeSeed<'de> for MsgpackKey {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MsgpackKey {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or integer map key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types_match_kombu_exactly() {
        assert_eq!(
            Serializer::from_content_type("application/json"),
            Some(Serializer::Json)
        );
        assert_eq!(
            Serializer::from_content_type("application/x-msgpack"),
            Some(Serializer::Msgpack)
        );
        for other in [
            "application/msgpack",
            "application/json; charset=utf-8",
            "",
            "application/x-python-serialize",
        ] {
            assert_eq!(Serializer::from_content_type(other), None, "{other}");
        }
        assert_eq!(Serializer::Msgpack.content_encoding(), "binary");
        assert_eq!(Serializer::Json.content_encoding(), "utf-8");
    }

    #[test]
    fn msgpack_bin_round_trips_through_the_bytes_markers() {
        // packb([b"\xff\x00", b"hi", "s", -1, 2.5, None, {"k": True}], use_bin_type=True)
        let python = b"\x97\xc4\x02\xff\x00\xc4\x02hi\xa1s\xff\xcb\x40\x04\x00\x00\x00\x00\x00\x00\xc0\x81\xa1k\xc3";
        let v = Serializer::Msgpack.deserialize(python).unwrap();
        assert_eq!(
            v,
            json!([{"__type__": "base64", "__value__": "/wA="}, {"__type__": "bytes", "__value__": "hi"}, "s", -1, 2.5, null, {"k": true}])
        );
        assert_eq!(Serializer::Msgpack.serialize(&v).unwrap(), python);
        // The same value as JSON is kombu's marker form, and reads back unchanged.
        let j = Serializer::Json.serialize(&v).unwrap();
        assert_eq!(Serializer::Json.deserialize(&j).unwrap(), v);
    }

    #[test]
    fn msgpack_ints_use_the_smallest_form_like_python() {
        // packb([0, 127, 128, 255, 256, -32, -33, 2**40, 2**64-1])
        let python: &[u8] = b"\x99\x00\x7f\xcc\x80\xcc\xff\xcd\x01\x00\xe0\xd0\xdf\xcf\x00\x00\x01\x00\x00\x00\x00\x00\xcf\xff\xff\xff\xff\xff\xff\xff\xff";
        let v = json!([0, 127, 128, 255, 256, -32, -33, 1u64 << 40, u64::MAX]);
        assert_eq!(Serializer::Msgpack.serialize(&v).unwrap(), python);
        assert_eq!(Serializer::Msgpack.deserialize(python).unwrap(), v);
    }

    #[test]
    fn msgpack_rejects_trailing_bytes_ext_types_and_deep_nesting() {
        assert!(Serializer::Msgpack.deserialize(b"\x90\x90").is_err());
        assert!(Serializer::Msgpack.deserialize(b"\xd4\x01\x00").is_err());
        assert!(Serializer::Msgpack.deserialize(&[0x91; 200]).is_err());
        assert!(Serializer::Msgpack.deserialize(b"").is_err());
    }

    #[test]
    fn json_rejects_unknown_markers_both_ways() {
        let bad = json!({"__type__": "pickle", "__value__": "x"});
        assert!(matches!(
            Serializer::Json.deserialize(br#"{"__type__": "pickle", "__value__": "x"}"#),
            Err(DecodeError::Marker(_))
        ));
        assert!(matches!(
            Serializer::Json.serialize(&bad),
            Err(EncodeError::Marker(_))
        ));
        // A third key makes it an ordinary dict.
        assert!(
            Serializer::Json
                .deserialize(br#"{"__type__": "pickle", "__value__": "x", "y": 1}"#)
                .is_ok()
        );
    }
}
