//! The v2 body `[args, kwargs, embed]` and the v1 body dict.
//!
//! Celery unpacks a v2 body with `args, kwargs, embed = body`: exactly three items,
//! `embed` may be `{}` or `null` (`**embed or {}`), and its `chain` may be `[]`, which is
//! kept apart from `null`.

use serde_json::{Map, Value};

use super::Embed;
use super::decode::DecodeError;
use super::raw_headers::Key;

/// The embed keys Celery reads; any other key lands in [`Embed::extra`].
const EMBED_KEYS: [&str; 4] = ["callbacks", "errbacks", "chain", "chord"];

/// A task body split into positional args, keyword args and canvas fields.
pub type BodyParts = (Vec<Value>, Map<String, Value>, Embed);

/// Split a decoded v2 body into args, kwargs and embed.
pub fn parse_v2_body(body: Value) -> Result<BodyParts, DecodeError> {
    let Value::Array(items) = body else {
        return Err(DecodeError::BodyShape(format!(
            "expected [args, kwargs, embed], got {}",
            kind(&body)
        )));
    };
    let Ok::<[Value; 3], _>([args, kwargs, embed]) = items.try_into() else {
        return Err(DecodeError::BodyShape(
            "expected exactly 3 items: [args, kwargs, embed]".into(),
        ));
    };
    let Value::Array(args) = args else {
        return Err(DecodeError::BodyShape(format!(
            "task args must be a list, got {}",
            kind(&args)
        )));
    };
    let Value::Object(kwargs) = kwargs else {
        return Err(DecodeError::BodyShape(format!(
            "task keyword arguments must be a mapping, got {}",
            kind(&kwargs)
        )));
    };
    let embed = match embed {
        Value::Null => Embed::default(),
        Value::Object(mut fields) => {
            let chain = match fields.remove("chain") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) => Some(items),
                Some(other) => {
                    return Err(DecodeError::BodyShape(format!(
                        "embed chain must be a list or null, got {}",
                        kind(&other)
                    )));
                }
            };
            let known = embed_from_fields(&mut fields)?;
            Embed {
                chain,
                extra: fields,
                ..known
            }
        }
        other => {
            return Err(DecodeError::BodyShape(format!(
                "embed must be a mapping or null, got {}",
                kind(&other)
            )));
        }
    };
    Ok((args, kwargs, embed))
}

/// A JSON v2 body read straight into its parts, without a JSON value for the body and its
/// embed map. `None` when this does not accept the body (anything but a well-formed
/// `[list, object, object-or-null]` whose embed fields have the types Celery reads, or an
/// object that could be a kombu marker): [`parse_v2_body`] over the value then gives the
/// answer, and the error, as before.
pub(crate) fn parse_v2_json(bytes: &[u8]) -> Option<BodyParts> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parts = serde::Deserializer::deserialize_seq(&mut de, BodyVisitor).ok()?;
    de.end().ok()?;
    Some(parts)
}

/// Whether a map could be a kombu marker object (`{"__type__": .., "__value__": ..}`).
fn marker_like(map: &Map<String, Value>) -> bool {
    map.contains_key(super::kombu::TYPE_KEY)
}

struct BodyVisitor;

impl<'de> serde::de::Visitor<'de> for BodyVisitor {
    type Value = BodyParts;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[args, kwargs, embed]")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<BodyParts, A::Error> {
        use serde::de::Error;
        let args: Vec<Value> = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("args"))?;
        let kwargs: Map<String, Value> = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("kwargs"))?;
        let embed: EmbedWire = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("embed"))?;
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() || marker_like(&kwargs) {
            return Err(A::Error::custom("not the common shape"));
        }
        Ok((args, kwargs, embed.0))
    }
}

/// The embed map (or null) read into an [`Embed`].
struct EmbedWire(Embed);

impl<'de> serde::Deserialize<'de> for EmbedWire {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EmbedVisitor)
    }
}

struct EmbedVisitor;

impl<'de> serde::de::Visitor<'de> for EmbedVisitor {
    type Value = EmbedWire;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an embed mapping or null")
    }

    fn visit_unit<E>(self) -> Result<EmbedWire, E> {
        Ok(EmbedWire(Embed::default()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<EmbedWire, A::Error> {
        use serde::de::Error;
        let mut embed = Embed::default();
        let list = |v: Value| match v {
            Value::Null => Ok(None),
            Value::Array(items) => Ok(Some(items)),
            _ => Err(A::Error::custom("not a list")),
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value: Value = map.next_value()?;
            match key.as_ref() {
                "callbacks" => embed.callbacks = list(value)?,
                "errbacks" => embed.errbacks = list(value)?,
                "chain" => embed.chain = list(value)?,
                "chord" => {
                    embed.chord = match value {
                        Value::Null => None,
                        sig @ Value::Object(_) => Some(sig),
                        _ => return Err(A::Error::custom("not a signature")),
                    }
                }
                super::kombu::TYPE_KEY => return Err(A::Error::custom("a marker")),
                _ => {
                    embed.extra.insert(key.into_owned(), value);
                }
            }
        }
        Ok(EmbedWire(embed))
    }
}

/// Take `callbacks`, `errbacks` and `chord` out of a map (a v2 embed, or a v1 body),
/// checking their types. `chain` is left alone (Celery ignores a v1 body's chain), and so
/// are other keys.
pub fn embed_from_fields(fields: &mut Map<String, Value>) -> Result<Embed, DecodeError> {
    let list = |name: &str, v: Option<Value>| match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(DecodeError::BodyShape(format!(
            "embed {name} must be a list or null, got {}",
            kind(&other)
        ))),
    };
    let callbacks = list("callbacks", fields.remove("callbacks"))?;
    let errbacks = list("errbacks", fields.remove("errbacks"))?;
    let chord = match fields.remove("chord") {
        None | Some(Value::Null) => None,
        Some(sig @ Value::Object(_)) => Some(sig),
        Some(other) => {
            return Err(DecodeError::BodyShape(format!(
                "embed chord must be a signature or null, got {}",
                kind(&other)
            )));
        }
    };
    Ok(Embed {
        callbacks,
        errbacks,
        chain: None,
        chord,
        extra: Map::new(),
    })
}

/// The embed map as Celery writes it: the four canvas keys (null when unset), then any
/// extra keys.
pub fn embed_to_value(embed: &Embed) -> Value {
    let list = |v: &Option<Vec<Value>>| {
        v.as_ref()
            .map_or(Value::Null, |items| Value::Array(items.clone()))
    };
    let mut map = Map::new();
    map.insert("callbacks".into(), list(&embed.callbacks));
    map.insert("errbacks".into(), list(&embed.errbacks));
    map.insert("chain".into(), list(&embed.chain));
    map.insert("chord".into(), embed.chord.clone().unwrap_or(Value::Null));
    for (k, v) in &embed.extra {
        if !EMBED_KEYS.contains(&k.as_str()) {
            map.insert(k.clone(), v.clone());
        }
    }
    Value::Object(map)
}

/// The v2 body value `[args, kwargs, embed]`.
pub fn v2_body(args: &[Value], kwargs: &Map<String, Value>, embed: &Embed) -> Value {
    Value::Array(vec![
        Value::Array(args.to_vec()),
        Value::Object(kwargs.clone()),
        embed_to_value(embed),
    ])
}

/// A short name of a value's JSON type, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embed_null_and_empty_are_default() {
        let (_, _, e) = parse_v2_body(json!([[], {}, null])).unwrap();
        assert_eq!(e, Embed::default());
        let (_, _, e) = parse_v2_body(json!([[], {}, {}])).unwrap();
        assert_eq!(e, Embed::default());
    }

    #[test]
    fn empty_chain_is_kept_apart_from_null() {
        let (_, _, e) = parse_v2_body(json!([[], {}, {"chain": []}])).unwrap();
        assert_eq!(e.chain, Some(vec![]));
    }

    #[test]
    fn unknown_embed_keys_go_to_extra_and_back() {
        let (_, _, e) = parse_v2_body(json!([[1], {}, {"chord": null, "x": 1}])).unwrap();
        assert_eq!(e.extra, json!({"x": 1}).as_object().unwrap().clone());
        assert_eq!(
            embed_to_value(&e),
            json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null, "x": 1})
        );
    }

    /// The one-pass JSON read gives what the value path gives, and leaves every body it
    /// does not take (wrong shapes, markers, bad JSON) to that path.
    #[test]
    fn json_bodies_read_in_one_pass_as_the_value_path_reads_them() {
        for body in [
            json!([[], {}, null]),
            json!([[1, "a", {"x": [null]}], {"k": 1.5}, {}]),
            json!([[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]),
            json!([[2, 3], {}, {"callbacks": [{"task": "t"}], "chain": [], "x": 1, "chord": {"task": "c"}}]),
            json!([[], {}, {"chain": [1], "chain": null, "y": {"__type__": "bytes"}}]),
        ] {
            let bytes = serde_json::to_vec(&body).unwrap();
            let fast = parse_v2_json(&bytes).unwrap_or_else(|| panic!("{body}"));
            assert_eq!(fast, parse_v2_body(body.clone()).unwrap(), "{body}");
        }
        for text in [
            r#"{}"#,
            r#"[[], {}]"#,
            r#"[[], {}, {}, 1]"#,
            r#"[[], [], {}]"#,
            r#"[[], {}, 3]"#,
            r#"[[], {}, {"callbacks": {}}]"#,
            r#"[[], {}, {"chord": []}]"#,
            r#"[[], {"__type__": "bytes", "__value__": "x"}, {}]"#,
            r#"[[], {}, {"__type__": "x"}]"#,
            r#"[[], {}, {}] x"#,
            r#"[[], {}, {}"#,
        ] {
            assert!(parse_v2_json(text.as_bytes()).is_none(), "{text}");
        }
    }

    #[test]
    fn wrong_shapes_are_errors() {
        for body in [
            json!({}),
            json!([[], {}]),
            json!([[], {}, {}, 1]),
            json!(["a", {}, {}]),
            json!([[], [], {}]),
            json!([[], {}, 3]),
            json!([[], {}, {"callbacks": {}}]),
            json!([[], {}, {"chord": []}]),
        ] {
            assert!(
                matches!(parse_v2_body(body.clone()), Err(DecodeError::BodyShape(_))),
                "{body}"
            );
        }
    }
}
