//! Property tests: decoding never panics, whatever the bytes and headers, and every
//! error explains itself; encoding then decoding gives the same task back.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use celeriac::protocol::kombu::{args_repr, kwargs_repr, plain, py_repr, saferepr};
use celeriac::protocol::{DeliveryInfo, RawMessage, Serializer, TaskMessage, decode, encode};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const CONTENT_TYPES: [&str; 4] = [
    "application/json",
    "application/x-msgpack",
    "application/msgpack",
    "",
];

fn vectors() -> PathBuf {
    let dir = std::env::var_os("CELERIAC_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors")).to_path_buf()
        });
    assert!(
        dir.join("INDEX.md").exists(),
        "golden vectors not found at {} (set CELERIAC_VECTORS)",
        dir.display()
    );
    dir
}

/// Every captured Redis task envelope, as raw messages.
fn captures() -> &'static [RawMessage] {
    static CAPTURES: OnceLock<Vec<RawMessage>> = OnceLock::new();
    CAPTURES.get_or_init(|| {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(vectors().join("redis/broker")).expect("vectors") {
            let path = entry.expect("entry").path();
            let name = path.to_string_lossy().to_string();
            if !name.ends_with(".json") || name.ends_with(".decoded.json") {
                continue;
            }
            let env: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            let (Some(body), Some(Value::Object(headers)), Some(Value::Object(props))) = (
                env.get("body").and_then(Value::as_str),
                env.get("headers"),
                env.get("properties"),
            ) else {
                continue;
            };
            let mut properties = props.clone();
            properties.remove("body_encoding");
            properties.remove("delivery_tag");
            let delivery_info = properties
                .remove("delivery_info")
                .and_then(|d| serde_json::from_value::<DeliveryInfo>(d).ok())
                .unwrap_or_default();
            out.push(RawMessage {
                body: B64.decode(body).expect("base64"),
                content_type: env["content-type"].as_str().unwrap_or_default().into(),
                content_encoding: env["content-encoding"].as_str().unwrap_or_default().into(),
                headers: headers.clone().into(),
                properties,
                delivery_info,
            });
        }
        assert!(out.len() > 20, "captures not found");
        out
    })
}

/// Any JSON value, with kombu-marker-shaped objects (valid or not) among the leaves.
fn arb_value(markers: bool) -> impl Strategy<Value = Value> {
    let marker_types = prop_oneof![
        Just("bytes"),
        Just("base64"),
        Just("uuid"),
        Just("datetime"),
        Just("date"),
        Just("time"),
        Just("decimal"),
        Just("set")
    ];
    let plain_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    // serde_json (without its `float_roundtrip` feature) may read a 17-digit float with a
    // large exponent one ULP off; floats with few digits read back exactly.
    let plain_leaf = if markers {
        plain_leaf.boxed()
    } else {
        prop_oneof![
            plain_leaf.prop_filter("few-digit floats only", |v| !v.is_f64()),
            (any::<i32>(), 0..=15i32).prop_map(|(m, k)| Value::from(f64::from(m) / 10f64.powi(k))),
        ]
        .boxed()
    };
    let leaf = if markers {
        prop_oneof![
            4 => plain_leaf,
            1 => (marker_types, prop_oneof![Just("2024-01-02T03:04:05".to_string()), Just("/wAB".to_string()), ".{0,10}"])
                .prop_map(|(t, v)| json!({"__type__": t, "__value__": v})),
            1 => "[0-9a-f]{30,34}".prop_map(|hex| json!({"__type__": "uuid", "__value__": {"hex": hex}})),
        ]
        .boxed()
    } else {
        plain_leaf.boxed()
    };
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,6}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Decode must not panic; an error must say something.
fn check(raw: &RawMessage) -> Result<(), TestCaseError> {
    match decode(raw) {
        Ok(msg) => {
            // Whatever decodes must also encode (or refuse with a message), without panic.
            if let Err(e) = encode(&msg) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
        Err(e) => prop_assert!(!e.to_string().is_empty(), "empty error message for {e:?}"),
    }
    Ok(())
}

/// Every header the codec types, plus a few it keeps untyped.
fn header_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = celeriac::protocol::headers::KNOWN_HEADERS.to_vec();
        names.extend(["compression", "x-custom", "redelivered"]);
        names
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(usize, u8),
    Truncate(usize),
    DeleteHeader(usize),
    RetypeHeader(usize, Value),
    ContentType(usize),
    AppendGarbage(Vec<u8>),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::FlipByte(i, m)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DeleteHeader),
        (any::<usize>(), arb_value(true)).prop_map(|(i, v)| Mutation::RetypeHeader(i, v)),
        (0..CONTENT_TYPES.len()).prop_map(Mutation::ContentType),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::AppendGarbage),
    ]
}

fn apply(raw: &mut RawMessage, m: &Mutation) {
    match m {
        Mutation::FlipByte(i, mask) if !raw.body.is_empty() => {
            let i = i % raw.body.len();
            raw.body[i] ^= mask;
        }
        Mutation::FlipByte(..) => {}
        Mutation::Truncate(n) => {
            let n = n % (raw.body.len() + 1);
            raw.body.truncate(n);
        }
        Mutation::DeleteHeader(i) => {
            let name = header_names()[i % header_names().len()];
            raw.headers.remove(name);
        }
        Mutation::RetypeHeader(i, v) => {
            raw.headers.insert(
                header_names()[i % header_names().len()].to_string(),
                v.clone(),
            );
        }
        Mutation::ContentType(i) => raw.content_type = CONTENT_TYPES[*i].to_string(),
        Mutation::AppendGarbage(bytes) => raw.body.extend_from_slice(bytes),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bodies_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..256),
        ct in 0..CONTENT_TYPES.len(),
        with_task in any::<bool>(),
    ) {
        let mut headers = Map::new();
        if with_task {
            headers.insert("task".into(), json!("t"));
            headers.insert("id".into(), json!("i"));
        }
        check(&RawMessage { body, content_type: CONTENT_TYPES[ct].into(), headers: headers.into(), ..RawMessage::default() })?;
    }

    #[test]
    fn arbitrary_json_documents_never_panic(doc in arb_value(true), ct in 0..2usize, with_task in any::<bool>()) {
        let serializer = [Serializer::Json, Serializer::Msgpack][ct];
        // Bodies shaped like a task more often than chance would give.
        let docs = [doc.clone(), json!([doc.clone(), {}, {}]), json!([[], doc.clone(), null]), json!([[1], {}, doc.clone()]),
                    json!({"task": "t", "id": "i", "args": doc.clone()})];
        for d in docs {
            let Ok(body) = serializer.serialize(&d) else { continue };
            let mut headers = Map::new();
            if with_task {
                headers.insert("task".into(), json!("t"));
                headers.insert("id".into(), json!("i"));
            }
            check(&RawMessage { body, content_type: serializer.content_type().into(), headers: headers.into(), ..RawMessage::default() })?;
        }
    }

    #[test]
    fn arbitrary_header_maps_never_panic(
        pairs in prop::collection::vec((0..header_names().len(), arb_value(true)), 0..12),
        keep_task in any::<bool>(),
    ) {
        let mut headers = Map::new();
        if keep_task {
            headers.insert("task".into(), json!("t"));
            headers.insert("id".into(), json!("i"));
        }
        for (i, v) in pairs {
            headers.insert(header_names()[i].to_string(), v);
        }
        let body = br#"[[1], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#.to_vec();
        check(&RawMessage { body, content_type: "application/json".into(), headers: headers.into(), ..RawMessage::default() })?;
    }

    #[test]
    fn mutated_captures_never_panic(which in any::<usize>(), mutations in prop::collection::vec(arb_mutation(), 1..4)) {
        let caps = captures();
        let mut raw = caps[which % caps.len()].clone();
        for m in &mutations {
            apply(&mut raw, m);
        }
        check(&raw)?;
    }

    #[test]
    fn encode_then_decode_gives_the_task_back(
        args in prop::collection::vec(arb_value(false), 0..4),
        kwargs in prop::collection::vec(("[a-z]{1,6}", arb_value(false)), 0..4),
        msgpack in any::<bool>(),
        hard in prop::option::of(0.0..1e6f64),
        retries in any::<u32>(),
    ) {
        let mut msg = TaskMessage::new("tasks.t", "id-1", args, kwargs.into_iter().collect());
        msg.serializer = if msgpack { Serializer::Msgpack } else { Serializer::Json };
        msg.headers.timelimit = (hard, None);
        msg.headers.retries = retries;
        let raw = encode(&msg).expect("plain values encode");
        let back = decode(&raw).expect("our own message decodes");
        prop_assert_eq!(&back.args, &msg.args);
        prop_assert_eq!(&back.kwargs, &msg.kwargs);
        prop_assert_eq!(&back.embed, &msg.embed);
        prop_assert_eq!(back.headers.timelimit, msg.headers.timelimit);
        prop_assert_eq!(back.headers.retries, retries);
        // And a second trip is byte-identical.
        prop_assert_eq!(encode(&back).expect("re-encode").body, raw.body);
    }

    #[test]
    fn repr_helpers_never_panic(v in arb_value(true), maxlen in prop::option::of(0usize..64)) {
        let _ = py_repr(&v);
        let s = saferepr(&v, maxlen);
        if maxlen.is_none() {
            prop_assert!(!s.is_empty());
        }
        let _ = plain(&v);
        if let Value::Array(items) = &v {
            prop_assert!(args_repr(items).starts_with('('), "args repr of {items:?}");
        }
        if let Value::Object(map) = &v {
            prop_assert!(kwargs_repr(map).starts_with('{'), "kwargs repr of {map:?}");
        }
    }
}
