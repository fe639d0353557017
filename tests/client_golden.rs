//! The client writes what Celery 5.7's `send_task` writes: compared with messages captured
//! from real Celery (`interop-tests/vectors`, made by `python-fixtures/capture.py`). Only
//! the fields Celery fills per process are left out: `origin` and `reply_to`.

use celeriac::broker::redis::decode_envelope;
use celeriac::client::{Client, ClientConfig, SendOptions};
use celeriac::protocol::{self, RawMessage, Serializer};
use chrono::{TimeZone, Utc};
use serde_json::{Map, Value, json};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/interop-tests/vectors/redis/broker"
);

fn captured(name: &str) -> (RawMessage, String) {
    let bytes =
        std::fs::read(format!("{VECTORS}/{name}.json")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let raw = decode_envelope(&bytes).expect("captured envelope decodes");
    let decoded: Value = serde_json::from_slice(
        &std::fs::read(format!("{VECTORS}/{name}.decoded.json")).expect("decoded vector"),
    )
    .unwrap();
    (raw, decoded["list_key"].as_str().unwrap().to_owned())
}

async fn client() -> Client {
    Client::connect(ClientConfig {
        broker_url: "memory://client-golden".into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap()
}

fn without(map: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Our message for the same call equals the capture, header by header and byte by byte.
fn assert_same(ours: &RawMessage, theirs: &RawMessage) {
    assert_eq!(
        String::from_utf8_lossy(&ours.body),
        String::from_utf8_lossy(&theirs.body),
        "body"
    );
    assert_eq!(ours.content_type, theirs.content_type);
    assert_eq!(ours.content_encoding, theirs.content_encoding);
    assert_eq!(
        without(&ours.headers, &["origin"]),
        without(&theirs.headers, &["origin"])
    );
    assert!(
        ours.headers["origin"].as_str().unwrap().starts_with("gen"),
        "origin is gen<pid>@<host>"
    );
    for key in ["correlation_id", "delivery_mode", "priority"] {
        assert_eq!(
            ours.properties.get(key),
            theirs.properties.get(key),
            "property {key}"
        );
    }
    assert!(uuid::Uuid::parse_str(ours.properties["reply_to"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn send_task_by_name_matches_celery() {
    let c = client().await;
    let (theirs, list_key) = captured("v2_send_task");
    let (msg, exchange, routing_key) = c.build_message(
        "interop.add",
        vec![json!(2), json!(3)],
        Map::new(),
        &SendOptions::new()
            .task_id("00000000-0000-4000-8000-000000000003")
            .queue("celery"),
    );
    assert_same(&protocol::encode(&msg).unwrap(), &theirs);
    assert_eq!(
        (exchange.as_str(), routing_key.as_str()),
        ("", list_key.as_str())
    );
}

#[tokio::test]
async fn msgpack_eta_expires_and_time_limits_are_written_as_celery_writes_them() {
    let c = client().await;
    // The captures are apply_async calls of registered tasks, which send ignore_result=False
    // and a tuple argsrepr; the same options give the same message otherwise.
    for (name, task, args, opts) in [
        (
            "v2_msgpack",
            "pytasks.add",
            vec![json!(2), json!(3)],
            SendOptions::new()
                .task_id("00000000-0000-4000-8000-000000000004")
                .serializer(Serializer::Msgpack),
        ),
        (
            "v2_eta_expires",
            "pytasks.add",
            vec![json!(2), json!(3)],
            SendOptions::new()
                .task_id("00000000-0000-4000-8000-000000000005")
                .eta(
                    Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap()
                        + chrono::Duration::milliseconds(678),
                )
                .expires(Utc.with_ymd_and_hms(2030, 1, 3, 0, 0, 0).unwrap()),
        ),
        (
            "v2_timelimit",
            "pytasks.sleep",
            vec![json!(1)],
            SendOptions::new()
                .task_id("00000000-0000-4000-8000-000000000006")
                .time_limits(Some(30.0), Some(10.5)),
        ),
    ] {
        let (theirs, list_key) = captured(name);
        let opts = opts.queue(&list_key).ignore_result(false);
        let (mut msg, exchange, routing_key) = c.build_message(task, args, Map::new(), &opts);
        msg.headers.argsrepr = Some(protocol::kombu::args_repr(&msg.args));
        let ours = protocol::encode(&msg).unwrap();
        assert_same(&ours, &theirs);
        assert_eq!(
            (exchange.as_str(), routing_key.as_str()),
            ("", list_key.as_str()),
            "{name}"
        );
        if name == "v2_eta_expires" {
            // A TTL in milliseconds until `expires`, as Celery adds it (the capture's value
            // depends on when it was taken; ours must be close to the time left now).
            let ms: i64 = ours.properties["expiration"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let left = (Utc.with_ymd_and_hms(2030, 1, 3, 0, 0, 0).unwrap() - Utc::now())
                .num_milliseconds();
            assert!(
                (left - ms).abs() < 60_000,
                "expiration {ms} vs {left} ms left"
            );
            assert!(theirs.properties.contains_key("expiration"));
        }
    }
}

#[tokio::test]
async fn routing_follows_celery() {
    let c = client().await;
    let route = |opts: SendOptions| {
        let (_, e, k) = c.build_message("t", vec![], Map::new(), &opts);
        (e, k)
    };
    assert_eq!(route(SendOptions::new()), ("".into(), "celery".into()));
    assert_eq!(
        route(SendOptions::new().queue("py")),
        ("".into(), "py".into())
    );
    // An exchange without a routing key (or a key without an exchange) still goes by queue.
    assert_eq!(
        route(SendOptions::new().queue("py").exchange("media")),
        ("".into(), "py".into())
    );
    assert_eq!(
        route(
            SendOptions::new()
                .exchange("media")
                .routing_key("media.images")
        ),
        ("media".into(), "media.images".into())
    );
    let (msg, _, _) = c.build_message(
        "t",
        vec![],
        Map::new(),
        &SendOptions::new()
            .priority(7)
            .shadow("alias")
            .ignore_result(true)
            .header("x-trace", json!("abc"))
            .countdown(std::time::Duration::from_secs(60)),
    );
    let raw = protocol::encode(&msg).unwrap();
    assert_eq!(raw.properties["priority"], json!(7));
    assert_eq!(raw.headers["shadow"], json!("alias"));
    assert_eq!(raw.headers["ignore_result"], json!(true));
    assert_eq!(raw.headers["x-trace"], json!("abc"));
    let eta = chrono::DateTime::parse_from_rfc3339(raw.headers["eta"].as_str().unwrap()).unwrap();
    let ahead = (eta.with_timezone(&Utc) - Utc::now()).num_seconds();
    assert!(
        (50..=60).contains(&ahead),
        "countdown 60 s gave an eta {ahead} s ahead"
    );
}
