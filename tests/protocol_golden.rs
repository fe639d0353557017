//! Golden tests: the task messages captured from real Celery 5.7 (vectors/, see
//! shared/vectors/INDEX.md) decode to what Celery meant, and encoding rebuilds the
//! captured bytes.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use celeriac::protocol::kombu::to_python_json;
use celeriac::protocol::{
    DecodeError, DeliveryInfo, ProtocolVersion, RawMessage, Serializer, TaskHeaders, TaskMessage,
    decode, encode,
};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value, json};

/// `shared/vectors` beside the checkout (as in CI), or `CELERIAC_VECTORS` when set (a
/// worktree elsewhere). Missing vectors fail the test: they are never skipped.
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

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

/// A kombu Redis envelope -> the transport-neutral message, as the Redis broker builds it.
fn raw_from_envelope(env: &Value) -> RawMessage {
    let mut properties = obj(&env["properties"]);
    let body_text = env["body"].as_str().expect("body string");
    let body = match properties.remove("body_encoding") {
        Some(Value::String(enc)) if enc == "base64" => B64.decode(body_text).expect("base64 body"),
        _ => body_text.as_bytes().to_vec(),
    };
    properties.remove("delivery_tag");
    let delivery_info = properties
        .remove("delivery_info")
        .map(|d| serde_json::from_value::<DeliveryInfo>(d).expect("delivery_info"))
        .unwrap_or_default();
    RawMessage {
        body,
        content_type: env["content-type"].as_str().unwrap_or_default().to_string(),
        content_encoding: env["content-encoding"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        headers: obj(&env["headers"]).into(),
        properties,
        delivery_info,
    }
}

fn redis(name: &str) -> (Value, RawMessage) {
    let env = read_json(&vectors().join("redis/broker").join(format!("{name}.json")));
    let raw = raw_from_envelope(&env);
    (env, raw)
}

/// An AMQP capture (`properties`, `headers`, `body_b64`, `delivery_info`) -> message.
fn amqp(name: &str) -> (Value, RawMessage) {
    let cap = read_json(&vectors().join("amqp/broker").join(format!("{name}.json")));
    let mut properties = obj(&cap["properties"]);
    let content_type = properties
        .remove("content_type")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let content_encoding = properties
        .remove("content_encoding")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let raw = RawMessage {
        body: B64
            .decode(cap["body_b64"].as_str().expect("body_b64"))
            .expect("base64"),
        content_type,
        content_encoding,
        headers: obj(&cap["headers"]).into(),
        properties,
        delivery_info: serde_json::from_value(cap["delivery_info"].clone()).expect("delivery_info"),
    };
    (cap, raw)
}

/// The capture tool wrote msgpack `bin` as `{"__bytes_utf8__": text}`; ours is kombu's
/// JSON marker.
fn normalize_capture(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("__bytes_utf8__") => {
            json!({"__type__": "bytes", "__value__": m["__bytes_utf8__"]})
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalize_capture(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize_capture).collect()),
        other => other.clone(),
    }
}

fn embed_value(msg: &TaskMessage) -> Value {
    celeriac::protocol::body::embed_to_value(&msg.embed)
}

/// Check a decoded v2 message against the captured headers and decoded body.
fn assert_matches_capture(what: &str, msg: &TaskMessage, headers: &Value, body: &Value) {
    let body = normalize_capture(body);
    assert_eq!(msg.protocol, ProtocolVersion::V2, "{what}");
    assert_eq!(msg.headers.task, headers["task"], "{what}: task");
    assert_eq!(msg.headers.id, headers["id"], "{what}: id");
    assert_eq!(Value::Array(msg.args.clone()), body[0], "{what}: args");
    assert_eq!(Value::Object(msg.kwargs.clone()), body[1], "{what}: kwargs");
    assert_eq!(embed_value(msg), body[2], "{what}: embed");
    assert_eq!(
        msg.headers.retries as u64,
        headers["retries"].as_u64().unwrap_or(0),
        "{what}: retries"
    );
    assert_eq!(
        msg.headers.root_id.as_deref(),
        headers["root_id"].as_str(),
        "{what}: root_id"
    );
    assert_eq!(
        msg.headers.parent_id.as_deref(),
        headers["parent_id"].as_str(),
        "{what}: parent_id"
    );
    assert_eq!(
        msg.headers.group.as_deref(),
        headers["group"].as_str(),
        "{what}: group"
    );
    assert_eq!(
        msg.headers.group_index,
        headers["group_index"].as_i64(),
        "{what}: group_index"
    );
    assert_eq!(
        msg.headers.shadow.as_deref(),
        headers["shadow"].as_str(),
        "{what}: shadow"
    );
    assert_eq!(
        msg.headers.argsrepr.as_deref(),
        headers["argsrepr"].as_str(),
        "{what}: argsrepr"
    );
    assert_eq!(
        msg.headers.kwargsrepr.as_deref(),
        headers["kwargsrepr"].as_str(),
        "{what}: kwargsrepr"
    );
    assert_eq!(
        msg.headers.origin.as_deref(),
        headers["origin"].as_str(),
        "{what}: origin"
    );
    assert_eq!(
        msg.headers.ignore_result,
        headers["ignore_result"].as_bool(),
        "{what}: ignore_result"
    );
    let tl = &headers["timelimit"];
    assert_eq!(
        msg.headers.timelimit,
        (tl[0].as_f64(), tl[1].as_f64()),
        "{what}: timelimit"
    );
    assert_eq!(
        Value::Object(msg.headers.stamps.clone()),
        headers["stamps"],
        "{what}: stamps"
    );
    for (k, v) in &msg.headers.extra {
        assert_eq!(&headers[k], v, "{what}: extra header {k}");
    }
    let iso = |field: &str| {
        headers[field].as_str().filter(|s| !s.is_empty()).map(|s| {
            let with_zone = if s.len() > 19 && (s.ends_with('Z') || s[19..].contains(['+', '-'])) {
                s.to_string()
            } else {
                format!("{s}+00:00")
            };
            DateTime::parse_from_rfc3339(&with_zone)
                .unwrap_or_else(|e| panic!("{what}: {field} {s}: {e}"))
                .with_timezone(&Utc)
        })
    };
    assert_eq!(msg.headers.eta, iso("eta"), "{what}: eta");
    assert_eq!(msg.headers.expires, iso("expires"), "{what}: expires");
}

/// Every Redis envelope among the captures, with its file name.
fn redis_envelopes() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for dir in ["redis/broker", "redis/ack-emulation"] {
        let mut paths: Vec<_> = fs::read_dir(vectors().join(dir))
            .expect("vectors dir")
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".json") || name.ends_with(".decoded.json") {
                continue;
            }
            let v = read_json(&path);
            if v.get("body").is_some()
                && v.get("headers").is_some()
                && v.get("properties").is_some()
            {
                out.push((format!("{dir}/{name}"), v));
            }
        }
    }
    out
}

#[test]
fn every_redis_capture_decodes_to_its_decoded_json() {
    let envelopes = redis_envelopes();
    assert!(
        envelopes.len() >= 30,
        "expected the captured envelopes, found {}",
        envelopes.len()
    );
    for (name, env) in &envelopes {
        let raw = raw_from_envelope(env);
        let msg = decode(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg.properties, raw.properties, "{name}: properties copied");
        assert_eq!(
            msg.delivery_info, raw.delivery_info,
            "{name}: delivery_info copied"
        );
        let decoded_path = vectors().join(name.replace(".json", ".decoded.json"));
        if !decoded_path.exists() {
            continue;
        }
        let decoded = read_json(&decoded_path);
        let expected = &decoded["envelope"];
        if env["headers"].get("task").is_none() {
            // Protocol v1: the task is in the body.
            let body = &expected["body_decoded"];
            assert_eq!(msg.protocol, ProtocolVersion::V1, "{name}");
            assert_eq!(msg.headers.task, body["task"], "{name}");
            assert_eq!(Value::Array(msg.args.clone()), body["args"], "{name}");
            continue;
        }
        assert_matches_capture(name, &msg, &expected["headers"], &expected["body_decoded"]);
    }
}

#[test]
fn every_amqp_capture_decodes_to_its_body() {
    let mut names: Vec<String> = fs::read_dir(vectors().join("amqp/broker"))
        .expect("vectors dir")
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .map(|n| n.trim_end_matches(".json").to_string())
        .collect();
    names.sort();
    assert!(names.len() >= 25, "found {names:?}");
    for name in names {
        let (cap, raw) = amqp(&name);
        let msg = decode(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg.properties, raw.properties, "{name}");
        if name.starts_with("v1_") {
            assert_eq!(msg.protocol, ProtocolVersion::V1);
            assert_eq!(Value::Array(msg.args.clone()), cap["body_decoded"]["args"]);
        } else {
            assert_matches_capture(&name, &msg, &cap["headers"], &cap["body_decoded"]);
        }
    }
}

/// Decoding then encoding a captured v2 message gives back its body bytes, its header map
/// (values and order) and its properties.
#[test]
fn decode_then_encode_rebuilds_every_captured_v2_message() {
    for (name, env) in redis_envelopes() {
        let raw = raw_from_envelope(&env);
        if !raw.headers.contains_key("task") || raw.headers.len() < 19 {
            continue; // v1, and the hand-built minimal message, are not what apply_async writes
        }
        let msg = decode(&raw).unwrap();
        let again = encode(&msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        // A naive eta is read as UTC and written back aware; everything else is unchanged.
        let mut expected = env["headers"].clone();
        for field in ["eta", "expires"] {
            if let Some(s) = expected[field].as_str().filter(|s| s.len() == 19) {
                expected[field] = json!(format!("{s}+00:00"));
            }
        }
        assert_eq!(
            to_python_json(&Value::Object(again.headers.as_map().clone())),
            to_python_json(&expected),
            "{name}: headers"
        );
        if raw.headers.contains_key("compression") {
            // Our zlib stream may differ from Python's; what it holds must not.
            assert_eq!(decode(&again).unwrap().args, msg.args, "{name}");
        } else {
            assert_eq!(again.body, raw.body, "{name}: body bytes");
        }
        assert_eq!(again.content_type, raw.content_type, "{name}");
        assert_eq!(again.content_encoding, raw.content_encoding, "{name}");
        assert_eq!(
            Value::Object(again.properties.clone()),
            Value::Object(raw.properties.clone()),
            "{name}: properties"
        );
        assert_eq!(
            again.properties.keys().collect::<Vec<_>>(),
            raw.properties.keys().collect::<Vec<_>>(),
            "{name}: property order"
        );
    }
}

/// Build `add.apply_async((2, 3))` from scratch and compare with the capture.
#[test]
fn golden_encode_v2_basic() {
    let (env, raw) = redis("v2_basic");
    let id = "00000000-0000-4000-8000-000000000001";
    let mut msg = TaskMessage::new("tasks.add", id, vec![json!(2), json!(3)], Map::new());
    msg.headers.origin = Some("gen30196@vm".into());
    msg.properties.insert(
        "reply_to".into(),
        json!("66381240-4081-3615-a8ad-96f052e1eb1a"),
    );
    let out = encode(&msg).unwrap();
    assert_eq!(out.body, raw.body);
    assert_eq!(
        String::from_utf8(out.body.clone()).unwrap(),
        r#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
    );
    assert_eq!(
        to_python_json(&Value::Object(out.headers.into_map())),
        to_python_json(&env["headers"])
    );
    assert_eq!(Value::Object(out.properties), Value::Object(raw.properties));
    assert_eq!(
        (out.content_type.as_str(), out.content_encoding.as_str()),
        ("application/json", "utf-8")
    );
}

/// link, link_error, custom headers, shadow, time limits, retries, ignore_result, ids.
#[test]
fn golden_encode_v2_full_options() {
    let (env, raw) = redis("v2_full_options");
    let mut kwargs = Map::new();
    kwargs.insert("y".into(), json!(2));
    let mut msg = TaskMessage::new(
        "tasks.add",
        "00000000-0000-4000-8000-000000000006",
        vec![json!(1)],
        kwargs,
    );
    let h = &mut msg.headers;
    h.shadow = Some("shadowed.name".into());
    h.retries = 3;
    h.timelimit = (Some(30.0), Some(20.0));
    h.root_id = Some("00000000-0000-4000-8000-000000000900".into());
    h.parent_id = Some("00000000-0000-4000-8000-000000000901".into());
    h.origin = Some("gen30196@vm".into());
    h.ignore_result = Some(true);
    h.extra.insert("x-custom".into(), json!("value"));
    h.extra.insert("x-num".into(), json!(7));
    let sig = |task: &str, args: Value| json!({"task": task, "args": args, "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false});
    msg.embed.callbacks = Some(vec![sig("tasks.add", json!([10]))]);
    msg.embed.errbacks = Some(vec![sig("tasks.errback", json!([]))]);
    msg.properties.insert(
        "reply_to".into(),
        json!("66381240-4081-3615-a8ad-96f052e1eb1a"),
    );
    let out = encode(&msg).unwrap();
    assert_eq!(out.body, raw.body);
    assert_eq!(
        to_python_json(&Value::Object(out.headers.into_map())),
        to_python_json(&env["headers"])
    );
    assert_eq!(Value::Object(out.properties), Value::Object(raw.properties));
}

/// `send_task` leaves ignore_result null and writes argsrepr of the list it was given.
#[test]
fn golden_encode_v2_send_task() {
    let (env, raw) = redis("v2_send_task");
    let mut kwargs = Map::new();
    kwargs.insert("z".into(), json!(1));
    let mut msg = TaskMessage::new(
        "tasks.add",
        "00000000-0000-4000-8000-000000000002",
        vec![json!(2), json!(3)],
        kwargs,
    );
    msg.headers.ignore_result = None;
    msg.headers.origin = Some("gen30196@vm".into());
    // send_task(args=[2, 3]) reprs a list, not a tuple.
    msg.headers.argsrepr = Some("[2, 3]".into());
    msg.properties.insert(
        "reply_to".into(),
        json!("66381240-4081-3615-a8ad-96f052e1eb1a"),
    );
    let out = encode(&msg).unwrap();
    assert_eq!(out.body, raw.body);
    assert_eq!(
        to_python_json(&Value::Object(out.headers.into_map())),
        to_python_json(&env["headers"])
    );
}

#[test]
fn golden_encode_msgpack_body() {
    let (_, raw) = redis("v2_msgpack");
    let msg = decode(&raw).unwrap();
    assert_eq!(msg.serializer, Serializer::Msgpack);
    // args [1, 2.5, b"\x00\x01"]: bin arrives as the bytes marker and is written back as bin.
    assert_eq!(
        msg.args,
        vec![
            json!(1),
            json!(2.5),
            json!({"__type__": "bytes", "__value__": "\u{0}\u{1}"})
        ]
    );
    let out = encode(&msg).unwrap();
    assert_eq!(out.body, raw.body);
    assert_eq!(
        (out.content_type.as_str(), out.content_encoding.as_str()),
        ("application/x-msgpack", "binary")
    );
}

// ---------------------------------------------------------------------------
// Specific captures.
// ---------------------------------------------------------------------------

#[test]
fn v1_message_is_converted_like_proto1_to_proto2() {
    for (what, raw) in [
        ("redis", redis("v1_send_task").1),
        ("amqp", amqp("v1_send_task").1),
    ] {
        let msg = decode(&raw).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(msg.protocol, ProtocolVersion::V1);
        assert_eq!(msg.headers.task, "tasks.add");
        assert_eq!(msg.headers.id, "00000000-0000-4000-8000-000000000030");
        assert_eq!(msg.args, vec![json!(4), json!(5)]);
        assert!(msg.kwargs.is_empty());
        assert_eq!(msg.embed.chain, None);
        assert_eq!(msg.headers.argsrepr.as_deref(), Some("[4, 5]"));
        assert_eq!(msg.headers.kwargsrepr.as_deref(), Some("{}"));
        assert!(msg.headers.eta.is_some() && msg.headers.expires.is_some());
        assert_eq!(msg.headers.extra.get("utc"), Some(&json!(true)));
        assert!(
            !msg.headers.extra.contains_key("args") && !msg.headers.extra.contains_key("taskset")
        );
    }
}

#[test]
fn v1_taskset_becomes_group_and_kwargs_must_be_a_mapping() {
    let v1 = |body: Value| RawMessage {
        body: to_python_json(&body).into_bytes(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        ..RawMessage::default()
    };
    let msg = decode(&v1(
        json!({"task": "t", "id": "i", "args": [1], "kwargs": {}, "taskset": "g1"}),
    ))
    .unwrap();
    assert_eq!(msg.headers.group.as_deref(), Some("g1"));
    let err = decode(&v1(
        json!({"task": "t", "id": "i", "args": [], "kwargs": [1]}),
    ))
    .unwrap_err();
    assert!(matches!(err, DecodeError::BodyShape(_)), "{err}");
    assert!(err.to_string().contains("mapping"));
    // No args/kwargs at all: Celery's .get() defaults.
    let msg = decode(&v1(json!({"task": "t", "id": "i"}))).unwrap();
    assert!(msg.args.is_empty() && msg.kwargs.is_empty());
    assert!(matches!(
        decode(&v1(json!({"task": "t"}))),
        Err(DecodeError::MissingHeader("id"))
    ));
}

#[test]
fn hybrid_message_takes_body_fields_under_the_message_headers() {
    let raw = RawMessage {
        body: br#"{"task": "body.name", "id": "body-id", "args": [1, 2], "kwargs": {"k": 3}, "retries": 2, "callbacks": [{"task": "cb"}]}"#.to_vec(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers: obj(&json!({"task": "header.name", "x-extra": 1})).into(),
        ..RawMessage::default()
    };
    let msg = decode(&raw).unwrap();
    assert_eq!(msg.headers.task, "header.name"); // headers win
    assert_eq!(msg.headers.id, "body-id");
    assert_eq!(msg.headers.retries, 2);
    assert_eq!(msg.args, vec![json!(1), json!(2)]);
    assert_eq!(msg.kwargs["k"], json!(3));
    assert_eq!(msg.embed.callbacks, Some(vec![json!({"task": "cb"})]));
    assert_eq!(msg.embed.chain, None);
    assert_eq!(msg.headers.extra.get("x-extra"), Some(&json!(1)));
}

#[test]
fn eta_countdown_and_expires_are_instants() {
    let (_, raw) = redis("v2_eta_aware");
    let msg = decode(&raw).unwrap();
    assert!(msg.headers.eta.is_some() && msg.headers.expires.is_some());
    let (_, raw) = redis("v2_countdown_expires_priority");
    let msg = decode(&raw).unwrap();
    let (eta, expires) = (msg.headers.eta.unwrap(), msg.headers.expires.unwrap());
    // countdown=30, expires=120 seconds, both from the same "now".
    assert_eq!((expires - eta).num_seconds(), 90);
    assert_eq!(msg.properties["priority"], json!(5));
    assert_eq!(msg.properties["expiration"], json!("120000"));
}

#[test]
fn naive_eta_is_read_as_utc() {
    let (_, raw) = redis("v2_eta_naive");
    assert_eq!(raw.headers["eta"], json!("2030-01-01T12:00:00"));
    let msg = decode(&raw).unwrap();
    assert_eq!(
        msg.headers.eta,
        Some(Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap())
    );
}

#[test]
fn eta_is_written_in_python_isoformat() {
    let mut msg = TaskMessage::new("t", "i", vec![], Map::new());
    msg.headers.eta = Some(Utc.with_ymd_and_hms(2030, 1, 2, 0, 0, 0).unwrap());
    msg.headers.expires = Some(
        Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
            + chrono::Duration::microseconds(123_456),
    );
    let out = encode(&msg).unwrap();
    assert_eq!(out.headers["eta"], json!("2030-01-02T00:00:00+00:00"));
    assert_eq!(
        out.headers["expires"],
        json!("2030-01-01T12:00:00.123456+00:00")
    );
}

#[test]
fn group_members_share_the_group_id_with_their_index() {
    for i in 0..3 {
        let (_, raw) = redis(&format!("v2_group.{i}"));
        let msg = decode(&raw).unwrap();
        assert!(msg.headers.group.is_some());
        assert_eq!(msg.headers.group_index, Some(i));
        assert_eq!(
            msg.headers.root_id.as_deref(),
            Some(msg.headers.id.as_str())
        );
    }
}

#[test]
fn chain_is_embedded_reversed() {
    let (_, raw) = redis("v2_chain");
    let msg = decode(&raw).unwrap();
    // chain(add.s(1,2), add.s(3), add.s(4)): the last step comes first.
    let chain = msg.embed.chain.expect("chain");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["args"], json!([4]));
    assert_eq!(chain[1]["args"], json!([3]));
    assert!(chain[0]["options"]["task_id"].is_string());
}

#[test]
fn chord_header_carries_the_body_signature() {
    let (_, raw) = redis("v2_chord.0");
    let msg = decode(&raw).unwrap();
    let chord = msg.embed.chord.expect("chord");
    assert_eq!(chord["task"], json!("tasks.xsum"));
    assert_eq!(
        chord["options"]["group_id"].as_str(),
        msg.headers.group.as_deref()
    );
}

#[test]
fn stamps_and_stamped_headers() {
    let (_, raw) = redis("v2_stamped");
    let msg = decode(&raw).unwrap();
    assert_eq!(
        msg.headers.stamped_headers,
        Some(vec!["mystamp".to_string()])
    );
    assert_eq!(msg.headers.stamps["mystamp"], json!("stamp-value"));
}

#[test]
fn special_types_keep_their_markers_byte_for_byte() {
    let (_, raw) = redis("v2_json_special_types");
    let msg = decode(&raw).unwrap();
    assert_eq!(
        msg.args[5],
        json!({"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}})
    );
    assert_eq!(
        msg.args[7],
        json!({"__type__": "base64", "__value__": "/wAB"})
    );
    // An echo of these values is the very same bytes.
    assert_eq!(encode(&msg).unwrap().body, raw.body);
    let plain = celeriac::protocol::kombu::plain(&Value::Array(msg.args.clone()));
    assert_eq!(plain[5], json!("12345678-1234-5678-1234-567812345678"));
    assert_eq!(plain[6], json!("hello"));
    assert_eq!(plain[7], json!([255, 0, 1]));
    // kwargsrepr Celery wrote for the same values, rebuilt by saferepr (tuples are lists in JSON).
    assert_eq!(
        celeriac::protocol::kombu::kwargs_repr(&msg.kwargs),
        "{'nested': {'t': [3, 4], 'none': None, 'f': 1.5, 'b': True}}"
    );
}

#[test]
fn argsrepr_of_special_types_matches_celery() {
    let (_, raw) = redis("v2_json_special_types");
    let msg = decode(&raw).unwrap();
    // Celery's argsrepr shows the tuple (1, 2) that JSON turned into a list; the rest is equal.
    let expected = msg
        .headers
        .argsrepr
        .clone()
        .unwrap()
        .replace("(1, 2)]", "[1, 2]]");
    assert_eq!(
        celeriac::protocol::kombu::saferepr(&Value::Array(msg.args.clone()), Some(1024)),
        expected
    );
}

#[test]
fn gzip_compression_is_a_zlib_stream() {
    let (_, raw) = redis("v2_gzip");
    assert_eq!(&raw.body[..2], b"\x78\x9c");
    let msg = decode(&raw).unwrap();
    assert_eq!(msg.args, vec![json!(1), json!(2)]);
    let (_, raw) = amqp("v2_gzip");
    assert_eq!(decode(&raw).unwrap().args, vec![json!(1), json!(2)]);
}

#[test]
fn other_compressions_are_refused_by_name() {
    let (_, mut raw) = redis("v2_basic");
    raw.headers
        .insert("compression".into(), json!("application/x-bz2"));
    let err = decode(&raw).unwrap_err();
    assert!(matches!(err, DecodeError::Compression(_)));
    assert!(err.to_string().contains("application/x-bz2"), "{err}");
}

#[test]
fn retry_message_carries_origin_as_an_extra_property() {
    let (_, raw) = redis("retry_message");
    let msg = decode(&raw).unwrap();
    assert_eq!(msg.headers.retries, 1);
    assert_eq!(
        msg.headers.parent_id.as_deref(),
        Some(msg.headers.id.as_str())
    );
    assert_eq!(msg.properties["origin"], json!("gen30405@vm"));
    let out = encode(&msg).unwrap();
    assert_eq!(
        out.properties.keys().collect::<Vec<_>>(),
        [
            "correlation_id",
            "reply_to",
            "origin",
            "delivery_mode",
            "priority"
        ]
    );
}

#[test]
fn handbuilt_minimal_message_decodes() {
    let (_, raw) = redis("handbuilt_minimal_v2");
    let msg = decode(&raw).unwrap();
    assert_eq!(msg.args, vec![json!(2), json!(2)]);
    assert_eq!(msg.embed, Default::default());
    assert_eq!(
        (
            msg.headers.retries,
            msg.headers.ignore_result,
            msg.headers.lang.as_deref()
        ),
        (0, None, None)
    );
}

// ---------------------------------------------------------------------------
// PROTOCOL.md section 11 items that concern the codec.
// ---------------------------------------------------------------------------

#[test]
fn section11_timelimit_is_hard_then_soft() {
    let (_, raw) = amqp("v2_full_options");
    let msg = decode(&raw).unwrap();
    assert_eq!(msg.headers.timelimit, (Some(30.0), Some(20.0)));
    assert_eq!(
        msg.headers.hard_time_limit(),
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(
        msg.headers.soft_time_limit(),
        Some(std::time::Duration::from_secs(20))
    );
}

#[test]
fn section11_ignore_result_may_be_null() {
    let (_, raw) = redis("v2_send_task");
    assert_eq!(raw.headers["ignore_result"], Value::Null);
    assert_eq!(decode(&raw).unwrap().headers.ignore_result, None);
    let mut msg = TaskMessage::new("t", "i", vec![], Map::new());
    msg.headers.ignore_result = None;
    assert_eq!(encode(&msg).unwrap().headers["ignore_result"], Value::Null);
}

#[test]
fn section11_chain_may_be_an_empty_list() {
    let (_, raw) = redis("worker_published_chain_step3");
    let msg = decode(&raw).unwrap();
    assert_eq!(msg.embed.chain, Some(vec![]));
    assert_eq!(encode(&msg).unwrap().body, raw.body);
}

#[test]
fn section11_embed_may_be_an_empty_map_or_null() {
    for body in [&b"[[2, 2], {}, {}]"[..], &b"[[2, 2], {}, null]"[..]] {
        let raw = RawMessage {
            body: body.to_vec(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            headers: obj(&json!({"task": "tasks.add", "id": "x"})).into(),
            ..RawMessage::default()
        };
        let msg = decode(&raw).unwrap();
        assert_eq!(msg.embed, Default::default());
        assert_eq!(msg.args, vec![json!(2), json!(2)]);
    }
}

#[test]
fn section11_uuid_marker_value_is_an_object() {
    let (_, raw) = redis("v2_json_special_types");
    let msg = decode(&raw).unwrap();
    assert!(msg.args[5]["__value__"].is_object());
    // A bare string is what kombu would refuse (uuid.UUID(**"...") fails).
    let mut bad = raw.clone();
    bad.body =
        br#"[[{"__type__": "uuid", "__value__": "12345678123456781234567812345678"}], {}, {}]"#
            .to_vec();
    assert!(matches!(decode(&bad), Err(DecodeError::Marker(_))));
}

#[test]
fn section11_unknown_marker_type_is_a_decode_error() {
    let (_, mut raw) = redis("v2_basic");
    raw.body = br#"[[{"__type__": "set", "__value__": [1]}], {}, {}]"#.to_vec();
    let err = decode(&raw).unwrap_err();
    assert!(matches!(err, DecodeError::Marker(_)));
    assert!(err.to_string().contains("set"), "{err}");
}

#[test]
fn section11_json_bytes_are_python_json_dumps() {
    let mut msg = TaskMessage::new(
        "t",
        "i",
        vec![json!("é😀"), json!({"a": [1.0, null]})],
        Map::new(),
    );
    msg.kwargs.insert("k".into(), json!(true));
    let out = encode(&msg).unwrap();
    assert_eq!(
        String::from_utf8(out.body).unwrap(),
        r#"[["\u00e9\ud83d\ude00", {"a": [1.0, null]}], {"k": true}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
    );
}

#[test]
fn section11_correlation_id_is_the_task_id_and_defaults_are_celerys() {
    let out = encode(&TaskMessage::new("t", "the-id", vec![], Map::new())).unwrap();
    assert_eq!(out.properties["correlation_id"], json!("the-id"));
    assert_eq!(out.properties["delivery_mode"], json!(2));
    assert_eq!(out.properties["priority"], json!(0));
    assert_eq!(out.headers["root_id"], json!("the-id"));
    assert_eq!(out.headers["lang"], json!("py"));
    assert_eq!(out.headers["argsrepr"], json!("()"));
    assert_eq!(out.headers["kwargsrepr"], json!("{}"));
    assert_eq!(out.headers["stamps"], json!({}));
    assert_eq!(out.headers["timelimit"], json!([null, null]));
}

#[test]
fn unsupported_content_type_is_refused_by_name() {
    let (_, mut raw) = redis("v2_basic");
    raw.content_type = "application/x-python-serialize".into();
    let err = decode(&raw).unwrap_err();
    assert!(
        matches!(&err, DecodeError::UnsupportedContentType(ct) if ct == "application/x-python-serialize")
    );
    assert!(err.to_string().contains("x-python-serialize"));
}

#[test]
fn not_a_task_without_task_header_or_v1_body() {
    let (_, mut raw) = redis("v2_basic");
    raw.headers.remove("task");
    assert!(matches!(decode(&raw), Err(DecodeError::NotATask)));
}

#[test]
fn body_must_have_exactly_three_items() {
    let (_, mut raw) = redis("v2_basic");
    raw.body = b"[[2, 3], {}]".to_vec();
    assert!(matches!(decode(&raw), Err(DecodeError::BodyShape(_))));
}

#[test]
fn unparsable_eta_is_an_invalid_header() {
    let (_, mut raw) = redis("v2_basic");
    raw.headers.insert("eta".into(), json!("tomorrow-ish"));
    match decode(&raw) {
        Err(DecodeError::InvalidHeader { name, .. }) => assert_eq!(name, "eta"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn msgpack_and_json_give_the_same_task() {
    let mut msg = TaskMessage::new(
        "t",
        "i",
        vec![
            json!(1),
            json!("s"),
            json!({"__type__": "base64", "__value__": "/wAB"}),
        ],
        Map::new(),
    );
    let json_raw = encode(&msg).unwrap();
    msg.serializer = Serializer::Msgpack;
    let mp_raw = encode(&msg).unwrap();
    assert_eq!(
        decode(&json_raw).unwrap().args,
        decode(&mp_raw).unwrap().args
    );
    let mut back = decode(&mp_raw).unwrap();
    back.serializer = Serializer::Json;
    assert_eq!(encode(&back).unwrap().body, json_raw.body);
}

#[test]
fn unknown_headers_survive_a_round_trip_in_order() {
    let (_, raw) = redis("v2_full_options");
    let msg = decode(&raw).unwrap();
    assert_eq!(
        msg.headers.extra.keys().collect::<Vec<_>>(),
        ["x-custom", "x-num"]
    );
    let again = encode(&msg).unwrap();
    assert_eq!(
        again.headers.keys().rev().take(2).collect::<Vec<_>>(),
        ["x-num", "x-custom"]
    );
    let _ = TaskHeaders::new("a", "b");
}
