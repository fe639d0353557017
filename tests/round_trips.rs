//! Round trips on the path of one call (issue 6), counted without any clock: a TCP proxy of
//! the test sits between Celeriac and the shared Redis (127.0.0.1:6379, database 11, shared
//! with `backend_shared_wait.rs`: nothing is flushed, every id and queue is a fresh uuid) and
//! reads the commands each connection sends. A *turn* is what a connection sends before it
//! has heard back: commands pipelined together are one turn, a command sent after a reply
//! starts the next. The proxy can also hold back the replies of a connection once it has sent
//! a given command, to show what does not wait for them.
//!
//! Redis missing is a failure, never a skip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use celeriac::backend::{AnyBackend, BackendOptions};
use celeriac::client::{Client, ClientConfig, SendOptions};
use celeriac::protocol::{ExceptionInfo, ResultMeta, TaskState};
use celeriac::worker::{Worker, WorkerConfig};
use futures_util::StreamExt;
use serde_json::{Map, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio::time::{Instant, sleep};

const REDIS_ADDR: &str = "127.0.0.1:6379";
const DB: u8 = 11;

/// The tests of this file run one at a time: the ACL user and the proxies stay their own.
static SERIAL: AsyncMutex<()> = AsyncMutex::const_new(());

#[celeriac::task(name = "rtt.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

fn direct_url() -> String {
    format!("redis://{REDIS_ADDR}/{DB}")
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(direct_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis must run at {REDIS_ADDR} for these tests (start it: redis-server --daemonize yes): {e}")
        })
}

/// One command a connection sent: its name (upper case), its first argument, and the turn
/// of that connection it was sent in.
#[derive(Debug, Clone)]
struct Sent {
    conn: usize,
    turn: usize,
    name: String,
    arg: String,
    /// Every argument after the name.
    args: Vec<String>,
}

#[derive(Default)]
struct Log {
    sent: Vec<Sent>,
    /// Connections whose replies are held back, with what releases them.
    held: HashMap<usize, Arc<Notify>>,
}

/// A proxy on a free local port forwarding to Redis, logging every command.
struct Proxy {
    port: u16,
    log: Arc<Mutex<Log>>,
    /// Hold the replies of a connection from the moment it sends this command.
    hold_after: Arc<Mutex<Option<String>>>,
    release: Arc<Notify>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Arc<Mutex<Log>> = Arc::default();
        let hold_after: Arc<Mutex<Option<String>>> = Arc::default();
        let release = Arc::new(Notify::new());
        let (l, h, r) = (log.clone(), hold_after.clone(), release.clone());
        tokio::spawn(async move {
            let mut next = 0;
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(REDIS_ADDR).await.unwrap();
                tokio::spawn(link(next, client, server, l.clone(), h.clone(), r.clone()));
                next += 1;
            }
        });
        Proxy {
            port,
            log,
            hold_after,
            release,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/{DB}", self.port)
    }

    /// Everything sent so far.
    fn sent(&self) -> Vec<Sent> {
        self.log.lock().unwrap().sent.clone()
    }

    /// Forget what was sent so far.
    fn clear(&self) {
        self.log.lock().unwrap().sent.clear();
    }

    /// From now on, hold back every reply to a connection once it has sent `command`.
    fn hold_replies_after(&self, command: &str) {
        *self.hold_after.lock().unwrap() = Some(command.to_owned());
    }

    /// Whether some connection's replies are being held.
    fn holding(&self) -> bool {
        !self.log.lock().unwrap().held.is_empty()
    }

    /// Let held replies through, and hold no more.
    fn release(&self) {
        *self.hold_after.lock().unwrap() = None;
        self.log.lock().unwrap().held.clear();
        self.release.notify_waiters();
    }
}

/// Forward one connection both ways, logging the client's commands by turn.
async fn link(
    conn: usize,
    client: TcpStream,
    server: TcpStream,
    log: Arc<Mutex<Log>>,
    hold_after: Arc<Mutex<Option<String>>>,
    release: Arc<Notify>,
) {
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when the server has spoken since the client's last command: the next command
    // starts a new turn.
    let replied = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let up = {
        let (log, replied) = (log.clone(), replied.clone());
        async move {
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut turn = 0;
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                let mut commands = Vec::new();
                while let Some((args, used)) = parse_command(&pending) {
                    pending.drain(..used);
                    commands.push(args);
                }
                if !commands.is_empty() {
                    if replied.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        turn += 1;
                    }
                    let hold = hold_after.lock().unwrap().clone();
                    let mut log = log.lock().unwrap();
                    for args in commands {
                        let name = args.first().cloned().unwrap_or_default().to_uppercase();
                        if hold.as_deref() == Some(name.as_str()) {
                            log.held.entry(conn).or_insert_with(|| release.clone());
                        }
                        log.sent.push(Sent {
                            conn,
                            turn,
                            arg: args.get(1).cloned().unwrap_or_default(),
                            args: args.get(1..).unwrap_or_default().to_vec(),
                            name,
                        });
                    }
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            loop {
                let gate = log.lock().unwrap().held.get(&conn).cloned();
                let Some(gate) = gate else { break };
                let released = gate.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if !log.lock().unwrap().held.contains_key(&conn) {
                    break;
                }
                released.await;
            }
            // Marked before the client can read it, so its next command counts as a new turn.
            replied.store(true, std::sync::atomic::Ordering::SeqCst);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}

/// One RESP command (an array of bulk strings) at the start of `buf`: its arguments as text
/// (lossy) and the bytes it took; `None` until it is complete.
fn parse_command(buf: &[u8]) -> Option<(Vec<String>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let count: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if buf.len() < next + len + 2 {
            return None;
        }
        args.push(String::from_utf8_lossy(&buf[next..next + len]).into_owned());
        at = next + len + 2;
    }
    Some((args, at))
}

/// The turns in `sent` (as `(connection, turn)`) that contain a command named `name`.
fn turns_with(sent: &[Sent], name: &str) -> Vec<(usize, usize)> {
    let mut turns: Vec<(usize, usize)> = sent
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (s.conn, s.turn))
        .collect();
    turns.dedup();
    turns
}

/// How many turns `sent` holds in all.
fn turns(sent: &[Sent]) -> usize {
    let mut all: Vec<(usize, usize)> = sent.iter().map(|s| (s.conn, s.turn)).collect();
    all.sort_unstable();
    all.dedup();
    all.len()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_stored_state_costs_one_round_trip_and_success_stays_final() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let proxy = Proxy::start().await;
    let backend = AnyBackend::connect(Some(&proxy.url()), BackendOptions::default()).await?;
    // The first store may load the script.
    backend
        .store(&ResultMeta::success(new_id(), json!(0)))
        .await?;

    let id = new_id();
    let key = format!("celery-task-meta-{id}");
    let client = redis::Client::open(direct_url())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&key).await?;
    let mut messages = pubsub.into_on_message();

    proxy.clear();
    let started = ResultMeta::started(&id, "celeriac@test", 1);
    let success = ResultMeta::success(&id, json!(5));
    let late = ResultMeta::failure(&id, ExceptionInfo::builtin("ValueError", "late"), None);
    for meta in [&started, &success, &late] {
        backend.store(meta).await?;
    }
    let sent = proxy.sent();
    // Celery's GET, then MULTI SETEX PUBLISH EXEC, would be two turns per store.
    ensure!(
        turns(&sent) == 3,
        "three stores, three round trips: {sent:#?}"
    );
    ensure!(turns_with(&sent, "EVALSHA").len() == 3, "{sent:#?}");

    // What Celery's clients see is unchanged: both states before SUCCESS were published,
    // the later FAILURE was not, and the key holds SUCCESS with Celery's expiry.
    for expected in [&started, &success] {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await?
            .context("published")?;
        ensure!(msg.get_payload_bytes() == expected.to_json().as_bytes());
    }
    ensure!(
        tokio::time::timeout(Duration::from_millis(300), messages.next())
            .await
            .is_err(),
        "nothing published after SUCCESS"
    );
    let mut conn = raw().await;
    let stored: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    ensure!(stored == success.to_json().into_bytes());
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await?;
    ensure!((86_000..=86_400).contains(&ttl), "ttl {ttl}");
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_server_refusing_scripts_gets_celerys_commands() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut conn = raw().await;
    let user = format!("celeriac-noscript-{}", new_id());
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            &user,
            "on",
            "nopass",
            "~*",
            "&*",
            "+@all",
            "-@scripting",
        ])
        .query_async::<()>(&mut conn)
        .await?;
    let outcome = async {
        let proxy = Proxy::start().await;
        let url = format!("redis://{user}:x@127.0.0.1:{}/{DB}", proxy.port);
        let backend = AnyBackend::connect(Some(&url), BackendOptions::default()).await?;
        let id = new_id();
        proxy.clear();
        backend.store(&ResultMeta::started(&id, "w@h", 1)).await?;
        backend.store(&ResultMeta::success(&id, json!(5))).await?;
        backend
            .store(&ResultMeta::failure(
                &id,
                ExceptionInfo::builtin("ValueError", "late"),
                None,
            ))
            .await?;
        let sent = proxy.sent();
        // Refused once, then never tried again: GET + MULTI/EXEC per store.
        ensure!(turns_with(&sent, "EVALSHA").len() == 1, "{sent:#?}");
        ensure!(turns_with(&sent, "GET").len() == 3, "{sent:#?}");
        ensure!(turns_with(&sent, "MULTI").len() == 2, "{sent:#?}");
        let got = backend.get(&id).await?.context("stored")?;
        ensure!(got.status == TaskState::Success && got.result == json!(5));
        backend.forget(&id).await?;
        Ok(())
    }
    .await;
    redis::cmd("ACL")
        .arg(&["DELUSER", &user])
        .query_async::<()>(&mut conn)
        .await?;
    outcome
}

/// A worker of this test binary's tasks on `queue`, its broker at `broker_url`, results in
/// database 11 directly.
async fn start_worker(
    broker_url: String,
    queue: &str,
) -> Result<(tokio::task::JoinHandle<()>, Arc<Notify>)> {
    let worker = Worker::connect(WorkerConfig {
        broker_url,
        result_backend: Some(direct_url()),
        queues: vec![queue.to_owned()],
        concurrency: 2,
        ..WorkerConfig::default()
    })
    .await?;
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let handle = tokio::spawn(async move {
        worker
            .run(async move { stopped.notified().await })
            .await
            .expect("the worker runs");
    });
    Ok((handle, stop))
}

/// Which side of a call talks to Redis through the test's proxy.
#[derive(Clone, Copy)]
enum Proxied {
    Worker,
    Client,
}

/// A worker of this file's tasks on a fresh queue and a client, one of them behind a
/// counting proxy, after one call has been answered (connections made, the worker warm).
struct Warm {
    proxy: Proxy,
    queue: String,
    worker: tokio::task::JoinHandle<()>,
    stop: Arc<Notify>,
    client: Client,
    opts: SendOptions,
    /// The id of the warm-up call.
    first: String,
}

async fn warm(proxied: Proxied) -> Result<Warm> {
    let proxy = Proxy::start().await;
    let queue = format!("rtt-{}", new_id());
    let (worker_url, client_url) = match proxied {
        Proxied::Worker => (proxy.url(), direct_url()),
        Proxied::Client => (direct_url(), proxy.url()),
    };
    let (worker, stop) = start_worker(worker_url, &queue).await?;
    let client = Client::connect(ClientConfig {
        broker_url: client_url.clone(),
        result_backend: Some(client_url),
        ..ClientConfig::default()
    })
    .await?;
    let opts = SendOptions::new().queue(queue.clone());
    let first = client
        .send_task("rtt.add", vec![json!(1), json!(1)], Map::new(), &opts)
        .await?;
    ensure!(first.get(Duration::from_secs(30)).await? == json!(2));
    Ok(Warm {
        proxy,
        queue,
        worker,
        stop,
        client,
        opts,
        first: first.id().to_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_early_ack_does_not_delay_the_result() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Warm: the worker has taken and acked one message.
    let Warm {
        proxy,
        worker,
        stop,
        client,
        opts,
        ..
    } = warm(Proxied::Worker).await?;

    // From its ack on (kombu's MULTI ZREM HDEL EXEC), the worker hears nothing more from the
    // broker connection that sent it, until released.
    proxy.hold_replies_after("ZREM");
    let result = client
        .send_task("rtt.add", vec![json!(2), json!(3)], Map::new(), &opts)
        .await?;
    let got = result.get(Duration::from_secs(8)).await;
    // The ack is handed to the broker connection when the task starts or, for a task done
    // in its first poll as this one, once its result's store is written: either way its
    // reply is held from then, and the result does not wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.holding() && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
    let held = proxy.holding();
    proxy.release();
    ensure!(held, "the worker acked the message");
    ensure!(
        got? == json!(5),
        "the result is stored while the ack's reply is still on its way"
    );

    // The ack itself lands once its reply goes through: nothing of the task is left in
    // kombu's `unacked` hash.
    let mut conn = raw().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg("unacked")
            .query_async(&mut conn)
            .await?;
        if !held
            .iter()
            .any(|v| String::from_utf8_lossy(v).contains(result.id()))
        {
            break;
        }
        ensure!(Instant::now() < deadline, "the ack never landed");
        sleep(Duration::from_millis(20)).await;
    }
    stop.notify_one();
    worker.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_subscribes_as_it_sends_and_reads_once() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let Warm {
        proxy,
        worker,
        stop,
        client,
        opts,
        ..
    } = warm(Proxied::Client).await?;

    proxy.clear();
    let calls = 5;
    let mut ids = Vec::new();
    for i in 0..calls {
        let result = client
            .send_task("rtt.add", vec![json!(i), json!(3)], Map::new(), &opts)
            .await?;
        ensure!(result.get(Duration::from_secs(30)).await? == json!(i + 3));
        ids.push(result.id().to_owned());
    }
    let keys: Vec<String> = ids
        .iter()
        .map(|id| format!("celery-task-meta-{id}"))
        .collect();
    let about = |sent: &[Sent], name: &str| {
        sent.iter()
            .filter(|s| s.name == name && keys.contains(&s.arg))
            .count()
    };
    // Keys read: the subscriber reads the keys of the calls it has subscribed for meanwhile
    // in one MGET, so a read can carry two calls' keys.
    let reads = |sent: &[Sent]| {
        sent.iter()
            .filter(|s| s.name == "MGET")
            .flat_map(|s| &s.args)
            .filter(|a| keys.contains(a))
            .count()
    };
    // A result the PUBLISH brought can reach the caller before the subscriber has sent the
    // read it queued on subscribing: the last call's MGET may still be on its way.
    let deadline = Instant::now() + Duration::from_secs(5);
    while reads(&proxy.sent()) < calls && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_millis(100)).await;
    let sent = proxy.sent();
    // Per call: the LPUSH, a SUBSCRIBE sent alongside it, and one read of the key once
    // subscribed; no GET before waiting (Celeriac's client sent GET, SUBSCRIBE, MGET and
    // UNSUBSCRIBE for each call before).
    ensure!(turns_with(&sent, "LPUSH").len() == calls, "{sent:#?}");
    ensure!(about(&sent, "SUBSCRIBE") == calls, "{sent:#?}");
    ensure!(reads(&sent) == calls, "{sent:#?}");
    ensure!(about(&sent, "GET") == 0, "{sent:#?}");

    // Unsubscribed in the end (in batches, off the path of the next call).
    let mut conn = raw().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(&keys);
        let reply: Vec<redis::Value> = cmd.query_async(&mut conn).await?;
        let counts: Vec<i64> = reply
            .chunks(2)
            .map(|pair| redis::from_redis_value(pair[1].clone()).unwrap())
            .collect();
        if counts.iter().all(|&n| n == 0) {
            break;
        }
        ensure!(Instant::now() < deadline, "still subscribed: {counts:?}");
        sleep(Duration::from_millis(20)).await;
    }
    for key in &keys {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut conn)
            .await?;
    }
    stop.notify_one();
    worker.await?;
    Ok(())
}

/// A lone message costs the worker one turn on the broker before its task runs: the take
/// script travels behind the BLMOVE that waits for the message, so Redis runs it as the
/// message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_message_costs_one_take() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let Warm {
        proxy,
        queue,
        worker,
        stop,
        client,
        opts,
        first,
    } = warm(Proxied::Worker).await?;
    // Let the worker block again for the next message before counting.
    sleep(Duration::from_millis(300)).await;

    proxy.clear();
    let calls = 5;
    let mut ids = vec![first];
    for i in 0..calls {
        let result = client
            .send_task("rtt.add", vec![json!(i), json!(3)], Map::new(), &opts)
            .await?;
        ensure!(result.get(Duration::from_secs(30)).await? == json!(i + 3));
        ids.push(result.id().to_owned());
    }
    // Let the worker settle (acks, waiters blocking again) before counting.
    sleep(Duration::from_millis(300)).await;
    let sent = proxy.sent();
    // The take script names kombu's `unacked_index` and this queue's list among its keys.
    let takes: Vec<&Sent> = sent
        .iter()
        .filter(|s| {
            s.name == "EVALSHA"
                && s.args.iter().any(|a| a == "unacked_index")
                && s.args.iter().any(|a| a == &queue)
        })
        .collect();
    // One take per message: it took fewer than it could, so the lists were empty and the
    // waiters block at once (before: a second, empty take after every delivery). Each
    // message's take was sent before the message, behind the BLMOVE that waits for it.
    ensure!(
        takes.len() == calls,
        "{} takes for {calls} calls: {sent:#?}",
        takes.len()
    );
    // The BLMOVEs on the queue's own list (those of its priority lists block throughout).
    let blocks: Vec<(usize, usize)> = sent
        .iter()
        .filter(|s| s.name == "BLMOVE" && s.arg == queue)
        .map(|s| (s.conn, s.turn))
        .collect();
    ensure!(blocks.len() == calls, "{sent:#?}");
    for take in &takes {
        ensure!(
            blocks.contains(&(take.conn, take.turn)),
            "a take not pipelined behind a BLMOVE: {sent:#?}"
        );
    }

    let mut conn = raw().await;
    for id in &ids {
        redis::cmd("DEL")
            .arg(format!("celery-task-meta-{id}"))
            .query_async::<()>(&mut conn)
            .await?;
    }
    stop.notify_one();
    worker.await?;
    Ok(())
}

/// While the leader waits (BLMOVE with the take behind it), a message on another list (a
/// priority step) cuts its wait short with `CLIENT UNBLOCK`: it is delivered at once, not
/// when the BLMOVE times out (10 s). Closing the idle consumer cuts it short too, and leaves
/// nothing of this queue in kombu's `unacked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_another_list_cuts_the_leaders_wait_short() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let proxy = Proxy::start().await;
    let queue = format!("rtt-{}", new_id());
    let broker = celeriac::broker::AnyBroker::connect(&proxy.url(), Default::default()).await?;
    let mut consumer = broker.consume(std::slice::from_ref(&queue), 4).await?;
    // The leader is blocked.
    sleep(Duration::from_millis(300)).await;
    let client = Client::connect(ClientConfig {
        broker_url: direct_url(),
        result_backend: None,
        ..ClientConfig::default()
    })
    .await?;
    let mut tags = Vec::new();
    for priority in [9, 0] {
        let opts = SendOptions::new().queue(queue.clone()).priority(priority);
        client
            .send_task("rtt.add", vec![json!(1), json!(2)], Map::new(), &opts)
            .await?;
        let delivery = tokio::time::timeout(Duration::from_secs(3), consumer.next())
            .await
            .context("delivered before the leader's BLMOVE times out")??;
        tags.push(delivery.delivery_tag().to_owned());
        delivery.ack().await?;
    }
    ensure!(
        proxy
            .sent()
            .iter()
            .any(|s| s.name == "CLIENT" && s.arg.eq_ignore_ascii_case("UNBLOCK")),
        "{:#?}",
        proxy.sent()
    );
    sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(3), consumer.close())
        .await
        .context("close cuts the leader's wait short")??;
    let mut conn = raw().await;
    let held: Vec<String> = redis::cmd("HKEYS")
        .arg("unacked")
        .query_async(&mut conn)
        .await?;
    for tag in &tags {
        ensure!(!held.contains(tag), "{tag} still unacked");
    }
    let left: usize = redis::cmd("LLEN")
        .arg(&queue)
        .query_async(&mut conn)
        .await?;
    ensure!(left == 0, "{left} left in the queue");
    Ok(())
}
