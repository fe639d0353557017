//! Many waits on one Redis result backend share one subscriber connection, against a real
//! Redis (127.0.0.1:6379, database 11). Nothing is flushed: every task id is a fresh uuid,
//! and pub/sub channels are shared by all databases anyway. The tests of this file run one
//! at a time, so the connections they count are their own.
//!
//! Redis missing is a failure, never a skip.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use celeriac::backend::{AnyBackend, BackendOptions};
use celeriac::protocol::{ExceptionInfo, ResultMeta, TaskState};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep};

const URL: &str = "redis://127.0.0.1:6379/11";

static SERIAL: Mutex<()> = Mutex::const_new(());

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn key(id: &str) -> String {
    format!("celery-task-meta-{id}")
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis must run at 127.0.0.1:6379 for these tests (start it: redis-server --daemonize yes): {e}")
        })
}

async fn backend() -> AnyBackend {
    AnyBackend::connect(Some(URL), BackendOptions::default())
        .await
        .expect("connect to the Redis result backend")
}

/// Local TCP ports of this process's sockets: socket inodes of /proc/self/fd matched against
/// /proc/net/tcp{,6}.
fn own_ports() -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|p| {
            let s = p.to_string_lossy().into_owned();
            Some(s.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// `CLIENT LIST` entries of this process's connections.
async fn own_clients(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    let ports = own_ports();
    list.lines()
        .filter(|line| {
            line.split(' ')
                .find_map(|f| f.strip_prefix("addr="))
                .and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok())
                .is_some_and(|p| ports.contains(&p))
        })
        .map(str::to_owned)
        .collect()
}

async fn numsub(conn: &mut redis::aio::MultiplexedConnection, ids: &[String]) -> Vec<i64> {
    let mut cmd = redis::cmd("PUBSUB");
    cmd.arg("NUMSUB");
    for id in ids {
        cmd.arg(key(id));
    }
    let reply: Vec<redis::Value> = cmd.query_async(conn).await.unwrap();
    reply
        .chunks(2)
        .map(|pair| redis::from_redis_value(pair[1].clone()).unwrap())
        .collect()
}

/// Poll until every channel of `ids` has `want` subscribers (pub/sub state changes are
/// asynchronous to the caller of `wait`).
async fn until_numsub(
    conn: &mut redis::aio::MultiplexedConnection,
    ids: &[String],
    want: i64,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = numsub(conn, ids).await;
        if counts.iter().all(|&n| n == want) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "PUBSUB NUMSUB never reached {want} for all channels: {:?}",
            counts
                .iter()
                .filter(|&&n| n != want)
                .take(5)
                .collect::<Vec<_>>()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waits_share_one_subscriber() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut conn = raw().await;
    let waiting = backend().await;
    let storing = backend().await;
    let before = own_clients(&mut conn).await.len();
    // This raw connection and the two backends' command connections are seen.
    ensure!(
        before >= 3,
        "CLIENT LIST shows this process's connections: {before}"
    );

    let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let (b, id) = (waiting.clone(), id.clone());
            tokio::spawn(async move { b.wait(&id, Duration::from_secs(60)).await })
        })
        .collect();
    until_numsub(&mut conn, &ids, 1).await?;

    let clients = own_clients(&mut conn).await;
    ensure!(
        clients.len() <= before + 1 && clients.len() <= 6,
        "1,000 waits use one more connection, not {} more: {clients:#?}",
        clients.len() - before
    );
    ensure!(
        clients
            .iter()
            .filter(|c| c.contains("sub=1000 ") || c.contains("cmd=subscribe"))
            .count()
            == 1,
        "one subscriber connection holds the 1,000 channels: {clients:#?}"
    );

    let stores: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (b, id) = (storing.clone(), id.clone());
            tokio::spawn(async move { b.store(&ResultMeta::success(id, json!(i))).await })
        })
        .collect();
    for store in stores {
        store.await??;
    }
    for (i, wait) in waits.into_iter().enumerate() {
        let meta = wait
            .await??
            .with_context(|| format!("wait {i} timed out"))?;
        ensure!(meta.status == TaskState::Success && meta.result == json!(i));
        ensure!(meta.task_id == ids[i]);
    }
    // Every waiter has left: every channel is unsubscribed.
    until_numsub(&mut conn, &ids, 0).await?;
    Ok(())
}

#[tokio::test]
async fn a_result_stored_before_the_wait_is_found() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let waiting = backend().await;
    let storing = backend().await;
    let id = new_id();
    let boom = ExceptionInfo::new("ValueError", "builtins", vec![json!("boom")]);
    storing.store(&ResultMeta::failure(&id, boom, None)).await?;
    let meta = waiting
        .wait(&id, Duration::from_secs(5))
        .await?
        .context("the stored FAILURE is found")?;
    ensure!(meta.status == TaskState::Failure, "{meta:?}");
    // Twice, and from two waiters at once.
    let (a, b) = tokio::join!(
        waiting.wait(&id, Duration::from_secs(5)),
        waiting.wait(&id, Duration::from_secs(5))
    );
    ensure!(a?.is_some() && b?.is_some());
    Ok(())
}

#[tokio::test]
async fn only_ready_states_wake_waiters() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut conn = raw().await;
    let waiting = backend().await;
    let storing = backend().await;
    let id = new_id();
    storing.store(&ResultMeta::started(&id, "host", 1)).await?;
    let wait = {
        let (b, id) = (waiting.clone(), id.clone());
        tokio::spawn(async move { b.wait(&id, Duration::from_secs(10)).await })
    };
    until_numsub(&mut conn, std::slice::from_ref(&id), 1).await?;
    let oops = ExceptionInfo::new("ValueError", "builtins", vec![json!("again")]);
    storing.store(&ResultMeta::retry(&id, oops, None)).await?;
    sleep(Duration::from_millis(200)).await;
    ensure!(
        !wait.is_finished(),
        "STARTED and RETRY do not wake a waiter"
    );
    storing.store(&ResultMeta::revoked(&id, "revoked")).await?;
    let meta = wait.await??.context("REVOKED wakes the waiter")?;
    ensure!(meta.status == TaskState::Revoked);
    Ok(())
}

#[tokio::test]
async fn a_timeout_returns_none_and_unsubscribes() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut conn = raw().await;
    let waiting = backend().await;
    let id = new_id();
    let started = Instant::now();
    let got = waiting.wait(&id, Duration::from_millis(300)).await?;
    ensure!(got.is_none(), "{got:?}");
    ensure!(started.elapsed() >= Duration::from_millis(300));
    until_numsub(&mut conn, std::slice::from_ref(&id), 0).await?;

    // A waiter dropped before its timeout leaves too.
    let wait = {
        let (b, id) = (waiting.clone(), id.clone());
        tokio::spawn(async move { b.wait(&id, Duration::from_secs(60)).await })
    };
    until_numsub(&mut conn, std::slice::from_ref(&id), 1).await?;
    wait.abort();
    until_numsub(&mut conn, std::slice::from_ref(&id), 0).await?;
    Ok(())
}

#[tokio::test]
async fn the_subscriber_reconnects_and_catches_up() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut conn = raw().await;
    let waiting = backend().await;
    let storing = backend().await;
    let id = new_id();
    let wait = {
        let (b, id) = (waiting.clone(), id.clone());
        tokio::spawn(async move { b.wait(&id, Duration::from_secs(30)).await })
    };
    until_numsub(&mut conn, std::slice::from_ref(&id), 1).await?;
    let subscriber = own_clients(&mut conn)
        .await
        .into_iter()
        .find(|c| c.contains("sub=1 "))
        .context("the subscriber connection")?;
    let client_id = subscriber
        .split(' ')
        .find_map(|f| f.strip_prefix("id="))
        .context("client id")?
        .to_owned();
    // Kill it and store while it is down: the value is read again after reconnecting.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&client_id)
        .query_async(&mut conn)
        .await?;
    ensure!(killed == 1);
    storing
        .store(&ResultMeta::success(&id, json!("after the loss")))
        .await?;
    let meta = wait.await??.context("woken after the reconnection")?;
    ensure!(meta.result == json!("after the loss"));
    Ok(())
}
