//! Golden tests over the project's own captures (`interop-tests/vectors`, written by
//! `python-fixtures/capture.py` against real Celery 5.7): every captured LPUSH element is
//! read through the Redis broker's envelope decoder and the protocol decoder and compared
//! with its readable `.decoded.json`; v2 messages are re-encoded and must give back the
//! captured body bytes, headers and envelope; every captured backend value round-trips
//! byte for byte. The directory is walked, so new captures are covered without edits.

use std::fs;
use std::path::{Path, PathBuf};

use celeriac::broker::redis::{decode_envelope, envelope};
use celeriac::protocol::decode::parse_iso8601;
use celeriac::protocol::kombu::to_python_json;
use celeriac::protocol::{ProtocolVersion, ResultMeta, Serializer, TaskMessage, decode, encode};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/interop-tests/vectors");

/// Transport bookkeeping kombu's envelope adds to the properties; not part of a message.
const TRANSPORT_PROPERTIES: [&str; 3] = ["delivery_info", "body_encoding", "delivery_tag"];

/// The `*.json` files of a vector directory, sorted, with `*.decoded.json` left out.
fn exact_files(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(VECTORS).join(sub);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".json") && !name.ends_with(".decoded.json")
        })
        .collect();
    files.sort();
    files
}

fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 file name");
    name.strip_suffix(".json").expect(".json file").to_string()
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON `null` or list as the decoder's `Option<Vec<Value>>`.
fn opt_list(v: &Value, what: &str) -> Option<Vec<Value>> {
    match v {
        Value::Null => None,
        Value::Array(items) => Some(items.clone()),
        other => panic!("{what}: expected null or a list, got {other}"),
    }
}

fn opt_time(v: &Value, what: &str) -> Option<DateTime<Utc>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(parse_iso8601(s).unwrap_or_else(|e| panic!("{what}: {s}: {e}"))),
        other => panic!("{what}: expected null or a string, got {other}"),
    }
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// `[hard, soft]` as the decoder's pair of seconds.
fn time_limits(v: &Value) -> (Option<f64>, Option<f64>) {
    match v {
        Value::Null => (None, None),
        Value::Array(pair) if pair.len() == 2 => (pair[0].as_f64(), pair[1].as_f64()),
        other => panic!("timelimit: expected [hard, soft], got {other}"),
    }
}

/// Celery's request fields of one capture: the v2 headers, or the v1 body dict (where
/// `taskset` is the old name of `group`).
fn request_fields(decoded: &Value, v1: bool) -> Map<String, Value> {
    if v1 {
        let mut body = decoded["decoded_body"]
            .as_object()
            .cloned()
            .expect("v1 body is a dict");
        if !body.contains_key("group") {
            let taskset = body.get("taskset").cloned().unwrap_or(Value::Null);
            body.insert("group".into(), taskset);
        }
        body
    } else {
        decoded["envelope"]["headers"]
            .as_object()
            .cloned()
            .expect("v2 headers")
    }
}

fn assert_matches_decoded(name: &str, msg: &TaskMessage, decoded: &Value) {
    let v1 = name.starts_with("v1_");
    let fields = request_fields(decoded, v1);
    let env = &decoded["envelope"];

    let expected_protocol = if v1 {
        ProtocolVersion::V1
    } else {
        ProtocolVersion::V2
    };
    assert_eq!(msg.protocol, expected_protocol, "{name}: protocol");
    let expected_serializer =
        Serializer::from_content_type(env["content-type"].as_str().expect("content-type"))
            .expect("known serializer");
    assert_eq!(msg.serializer, expected_serializer, "{name}: serializer");

    let h = &msg.headers;
    assert_eq!(
        Some(h.task.as_str()),
        fields["task"].as_str(),
        "{name}: task name"
    );
    assert_eq!(Some(h.id.as_str()), fields["id"].as_str(), "{name}: id");
    assert_eq!(h.eta, opt_time(&fields["eta"], "eta"), "{name}: eta");
    assert_eq!(
        h.expires,
        opt_time(&fields["expires"], "expires"),
        "{name}: expires"
    );
    assert_eq!(
        h.timelimit,
        time_limits(&fields["timelimit"]),
        "{name}: timelimit [hard, soft]"
    );
    assert_eq!(h.group, opt_str(&fields["group"]), "{name}: group");
    assert_eq!(
        h.group_index,
        fields["group_index"].as_i64(),
        "{name}: group_index"
    );
    assert_eq!(
        Some(u64::from(h.retries)),
        fields["retries"].as_u64(),
        "{name}: retries"
    );
    if !v1 {
        assert_eq!(h.root_id, opt_str(&fields["root_id"]), "{name}: root_id");
        assert_eq!(
            h.parent_id,
            opt_str(&fields["parent_id"]),
            "{name}: parent_id"
        );
        assert_eq!(h.origin, opt_str(&fields["origin"]), "{name}: origin");
        assert_eq!(h.argsrepr, opt_str(&fields["argsrepr"]), "{name}: argsrepr");
        assert_eq!(
            h.kwargsrepr,
            opt_str(&fields["kwargsrepr"]),
            "{name}: kwargsrepr"
        );
        assert_eq!(
            h.ignore_result,
            fields["ignore_result"].as_bool(),
            "{name}: ignore_result"
        );
        assert_eq!(
            Some(h.replaced_task_nesting),
            fields["replaced_task_nesting"].as_i64(),
            "{name}: nesting"
        );
        let stamped: Option<Vec<String>> =
            serde_json::from_value(fields["stamped_headers"].clone()).expect("list");
        assert_eq!(h.stamped_headers, stamped, "{name}: stamped_headers");
        assert_eq!(
            Some(&h.stamps),
            fields["stamps"].as_object(),
            "{name}: stamps"
        );
    }

    // Arguments and canvas: the v2 body is `[args, kwargs, embed]`; v1 has them in the dict.
    let body = &decoded["decoded_body"];
    let (args, kwargs, embed) = if v1 {
        let embed = json!({
            "callbacks": body["callbacks"], "errbacks": body["errbacks"],
            "chain": body.get("chain").cloned().unwrap_or(Value::Null), "chord": body["chord"],
        });
        (body["args"].clone(), body["kwargs"].clone(), embed)
    } else {
        (body[0].clone(), body[1].clone(), body[2].clone())
    };
    assert_eq!(Value::Array(msg.args.clone()), args, "{name}: args");
    assert_eq!(Value::Object(msg.kwargs.clone()), kwargs, "{name}: kwargs");
    assert_eq!(
        msg.embed.callbacks,
        opt_list(&embed["callbacks"], "callbacks"),
        "{name}: callbacks"
    );
    assert_eq!(
        msg.embed.errbacks,
        opt_list(&embed["errbacks"], "errbacks"),
        "{name}: errbacks"
    );
    // Celery sends the remaining chain last step first; the decoder keeps that order.
    assert_eq!(
        msg.embed.chain,
        opt_list(&embed["chain"], "chain"),
        "{name}: chain"
    );
    let chord = match &embed["chord"] {
        Value::Null => None,
        other => Some(other.clone()),
    };
    assert_eq!(msg.embed.chord, chord, "{name}: chord");

    // Properties: what the envelope carried, less the transport's bookkeeping.
    let mut props = env["properties"].as_object().cloned().expect("properties");
    for key in TRANSPORT_PROPERTIES {
        props.remove(key);
    }
    assert_eq!(msg.properties, props, "{name}: properties");
    assert_eq!(
        msg.delivery_info.routing_key,
        decoded["list_key"].as_str().expect("list_key"),
        "{name}: routing key"
    );
    assert_eq!(msg.delivery_info.exchange, "", "{name}: exchange");
}

/// Re-encode a decoded v2 message and compare with the captured element: body bytes,
/// header map (order included), properties, and finally the whole envelope's bytes.
fn assert_reencodes(name: &str, msg: &TaskMessage, exact: &str, captured: &Value) {
    let raw = encode(msg).unwrap_or_else(|e| panic!("{name}: encode: {e}"));
    let original = decode_envelope(exact.as_bytes()).expect("decoded before");
    assert_eq!(raw.body, original.body, "{name}: re-encoded body bytes");
    assert_eq!(
        raw.content_type, original.content_type,
        "{name}: content type"
    );
    assert_eq!(
        raw.content_encoding, original.content_encoding,
        "{name}: content encoding"
    );
    let captured_headers = captured["headers"].as_object().expect("headers");
    assert_eq!(&raw.headers, captured_headers, "{name}: header map");
    assert_eq!(
        raw.headers.keys().collect::<Vec<_>>(),
        captured_headers.keys().collect::<Vec<_>>(),
        "{name}: header order"
    );
    let props = &captured["properties"];
    let rebuilt = envelope(
        &raw,
        props["delivery_info"]["exchange"]
            .as_str()
            .expect("exchange"),
        props["delivery_info"]["routing_key"]
            .as_str()
            .expect("routing_key"),
        props["delivery_tag"].as_str().expect("delivery_tag"),
    );
    assert_eq!(
        to_python_json(&rebuilt),
        exact,
        "{name}: re-encoded envelope bytes"
    );
}

#[test]
fn every_captured_broker_message_decodes_as_celery_meant() {
    let files = exact_files("redis/broker");
    // 17 captures today; an emptied or moved directory must fail, not pass vacuously.
    assert!(
        files.len() >= 17,
        "expected at least 17 broker captures, found {}",
        files.len()
    );
    let mut v1_seen = 0;
    let mut reencoded = 0;
    for path in &files {
        let name = file_stem(path);
        let exact = fs::read_to_string(path).expect("capture");
        let captured: Value = serde_json::from_str(&exact).expect("capture is JSON");
        let decoded = read_json(&path.with_file_name(format!("{name}.decoded.json")));

        let raw =
            decode_envelope(exact.as_bytes()).unwrap_or_else(|e| panic!("{name}: envelope: {e}"));
        let msg = decode(&raw).unwrap_or_else(|e| panic!("{name}: decode: {e}"));
        assert_matches_decoded(&name, &msg, &decoded);

        if msg.protocol == ProtocolVersion::V2 {
            assert_reencodes(&name, &msg, &exact, &captured);
            reencoded += 1;
        } else {
            v1_seen += 1;
        }
    }
    assert!(v1_seen >= 1, "the v1_send_task capture must be among them");
    assert!(
        reencoded >= 16,
        "expected at least 16 v2 captures re-encoded, got {reencoded}"
    );
}

#[test]
fn chain_capture_keeps_the_remaining_steps_last_first() {
    let path = Path::new(VECTORS).join("redis/broker/v2_chain.json");
    let raw = decode_envelope(&fs::read(&path).expect("v2_chain.json")).expect("envelope");
    let msg = decode(&raw).expect("decode");
    assert_eq!(msg.args, vec![json!(1), json!(2)]);
    let chain = msg.embed.chain.expect("a chain");
    assert_eq!(chain.len(), 2);
    // chain(add.s(1, 2), add.s(3), add.s(4)): the next step to run (add(3)) is popped from the end.
    assert_eq!(chain.last().map(|s| &s["args"]), Some(&json!([3])));
    assert_eq!(chain.first().map(|s| &s["args"]), Some(&json!([4])));
}

#[test]
fn v1_capture_moves_its_body_fields_into_the_request() {
    let path = Path::new(VECTORS).join("redis/broker/v1_send_task.json");
    let raw = decode_envelope(&fs::read(&path).expect("v1_send_task.json")).expect("envelope");
    assert!(raw.headers.is_empty(), "v1 sends empty headers");
    let msg = decode(&raw).expect("decode");
    assert_eq!(msg.protocol, ProtocolVersion::V1);
    assert_eq!(msg.headers.task, "pytasks.add");
    assert_eq!(msg.args, vec![json!(2), json!(3)]);
    // proto1_to_proto2 computes the reprs the v1 sender did not send.
    assert_eq!(msg.headers.argsrepr.as_deref(), Some("[2, 3]"));
    assert_eq!(msg.headers.kwargsrepr.as_deref(), Some("{}"));
    assert_eq!(msg.embed.chain, None);
}

#[test]
fn every_captured_backend_value_round_trips_byte_for_byte() {
    let files = exact_files("backend/redis");
    assert!(
        files.len() >= 3,
        "expected at least 3 backend captures, found {}",
        files.len()
    );
    for path in &files {
        let name = file_stem(path);
        let exact = fs::read(path).expect("capture");
        let meta = ResultMeta::from_slice(&exact).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            meta.to_json().as_bytes(),
            exact.as_slice(),
            "{name}: to_json bytes"
        );
        let captured: Value = serde_json::from_slice(&exact).expect("JSON");
        assert_eq!(
            Some(meta.status.as_str()),
            captured["status"].as_str(),
            "{name}: status"
        );
        assert_eq!(
            Some(meta.task_id.as_str()),
            captured["task_id"].as_str(),
            "{name}: task_id"
        );
    }
}
