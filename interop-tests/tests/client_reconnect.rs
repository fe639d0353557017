//! The client when its connections fail: the publish retry policy, reconnecting, results
//! awaited across a lost connection, many concurrent sends from clones, and the `rpc://`
//! reply queue compared with a real Celery 5.7 client's.
//!
//! The client reaches the servers through a TCP proxy of the test ([`common::proxy`]) that
//! is cut (every connection dropped, new ones refused) and restored; the servers
//! themselves are never touched. Workers (real Python Celery, `python-fixtures/pytasks.py`)
//! connect directly.
//!
//! Servers: Redis on 127.0.0.1:6379, database 14 (no other suite uses it); RabbitMQ at
//! `CELERIAC_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/celeriac-test`).
//! The Python venv: `CELERIAC_PYTHON_BIN_DIR`, else `<repo>/.venv/bin`. Missing any of
//! them is a failure, never a skip. Timing assertions are generous lower or upper bounds
//! only: the machine is shared and busy.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use celeriac::backend::AnyBackend;
use celeriac::broker::{AnyBroker, BrokerError, BrokerOptions, RetryPolicy};
use celeriac::client::{Client, ClientConfig, ClientError, SendOptions};
use common::proxy::Proxy;
use common::{FIXTURES, PythonWorker, python_bin_dir};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

const REDIS_ADDR: &str = "127.0.0.1:6379";
const REDIS_DB: u32 = 14;
const RESULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Redis,
    Amqp,
}

fn amqp_url() -> String {
    std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/celeriac-test".into())
}

/// `scheme://[user@]`, `host:port` and `/vhost` of an AMQP URL.
fn amqp_parts(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").expect("an AMQP URL");
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host.to_owned()),
        None => (String::new(), authority.to_owned()),
    };
    let host_port = if host_port.contains(':') {
        host_port
    } else {
        format!("{host_port}:5672")
    };
    (format!("{scheme}://{user}"), host_port, tail.to_owned())
}

/// The vhost of the AMQP URL, as `rabbitmqctl -p` takes it.
fn vhost() -> String {
    let (_, _, tail) = amqp_parts(&amqp_url());
    let v = tail.trim_start_matches('/');
    if v.is_empty() {
        "/".into()
    } else {
        v.replace("%2F", "/").replace("%2f", "/")
    }
}

/// A server reached directly and through a proxy.
struct Setup {
    kind: Kind,
    proxy: Proxy,
    /// The server's URL through the proxy.
    via: String,
    /// The server's URL.
    direct: String,
}

async fn setup(kind: Kind) -> Setup {
    // `RUST_LOG=celeriac=debug` shows the retries and reconnections.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    match kind {
        Kind::Redis => {
            let proxy = Proxy::start(REDIS_ADDR).await;
            Setup {
                kind,
                via: format!("redis://127.0.0.1:{}/{REDIS_DB}", proxy.port()),
                direct: format!("redis://{REDIS_ADDR}/{REDIS_DB}"),
                proxy,
            }
        }
        Kind::Amqp => {
            let direct = amqp_url();
            let (prefix, target, tail) = amqp_parts(&direct);
            let proxy = Proxy::start(&target).await;
            Setup {
                kind,
                via: format!("{prefix}127.0.0.1:{}{tail}", proxy.port()),
                direct,
                proxy,
            }
        }
    }
}

impl Setup {
    /// A broker connected directly, for counting and cleaning up.
    async fn direct_broker(&self) -> AnyBroker {
        AnyBroker::connect(&self.direct, BrokerOptions::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{:?} must run ({}; RabbitMQ: vhost celeriac-test or CELERIAC_TEST_AMQP_URL): {e}",
                    self.kind, self.direct
                )
            })
    }

    async fn client(&self, queue: &str, backend: Option<&str>) -> Result<Client> {
        Client::connect(ClientConfig {
            broker_url: self.via.clone(),
            result_backend: backend.map(str::to_owned),
            default_queue: queue.to_owned(),
            ..ClientConfig::default()
        })
        .await
        .with_context(|| format!("connect a client through the proxy: {}", self.via))
    }
}

fn unique(what: &str) -> String {
    format!(
        "celeriac-reconnect-{what}-{}",
        uuid::Uuid::new_v4().simple()
    )
}

/// Messages ready in `queue`.
async fn queue_len(broker: &AnyBroker, queue: &str) -> Result<u64> {
    Ok(match broker {
        AnyBroker::Redis(b) => b.queue_len(queue).await? as u64,
        AnyBroker::Amqp(b) => u64::from(b.queue_len(queue).await?),
        AnyBroker::Memory(_) => bail!("no memory broker here"),
    })
}

/// Remove `queue` and what declaring it left behind.
async fn remove_queue(kind: Kind, direct: &str, queue: &str) {
    match kind {
        Kind::Redis => {
            let Ok(client) = redis::Client::open(direct) else {
                return;
            };
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(queue)
                    .arg(format!("_kombu.binding.{queue}"))
                    .arg(format!("_kombu.binding_permanent.{queue}"));
                for step in [3, 6, 9] {
                    cmd.arg(format!("{queue}\x06\x16{step}"));
                }
                let _ = cmd.query_async::<()>(&mut conn).await;
            }
        }
        Kind::Amqp => rabbitmqctl_delete_queue(queue),
    }
}

fn rabbitmqctl_delete_queue(queue: &str) {
    let _ = Command::new("rabbitmqctl")
        .args(["delete_queue", "-p", &vhost(), queue])
        .output();
}

/// A policy that keeps retrying for about `total`, `every` apart.
fn patient(total: Duration, every: Duration) -> RetryPolicy {
    let retries = (total.as_millis() / every.as_millis().max(1)) as u32;
    RetryPolicy::default()
        .max_retries(Some(retries))
        .interval_start(every)
        .interval_step(Duration::ZERO)
        .interval_max(every)
}

async fn send(
    client: &Client,
    opts: &SendOptions,
) -> Result<celeriac::client::AsyncResult, ClientError> {
    client
        .send_task("celeriac.never_run", vec![], Map::new(), opts)
        .await
}

fn broker_error(err: ClientError) -> Result<BrokerError> {
    match err {
        ClientError::Broker(e) => Ok(e),
        other => bail!("expected a broker error, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// 1. The publish retry policy and reconnecting.

async fn publish_retry_scenarios(kind: Kind) -> Result<()> {
    let s = setup(kind).await;
    let direct = s.direct_broker().await;
    let queue = unique("publish");
    let outcome = async {
        let client = s.client(&queue, None).await?;
        // Celery's task_publish_retry = False, client-wide.
        let no_retry_client = Client::connect(ClientConfig {
            broker_url: s.via.clone(),
            default_queue: queue.clone(),
            publish_retry: false,
            ..ClientConfig::default()
        })
        .await?;
        send(&client, &SendOptions::new()).await?;
        ensure!(queue_len(&direct, &queue).await? == 1);

        // A refusal that is not about the connection fails at once whatever the policy:
        // the queue's own exchange with a routing key nothing is bound with.
        let ten_seconds = patient(Duration::from_secs(10), Duration::from_millis(200));
        let started = Instant::now();
        let err = send(
            &client,
            &SendOptions::new()
                .exchange(queue.clone())
                .routing_key("nothing-bound")
                .retry_policy(ten_seconds),
        )
        .await
        .err()
        .context("an unroutable send succeeded")?;
        let err = broker_error(err)?;
        ensure!(matches!(err, BrokerError::Unroutable { .. }), "{err}");
        ensure!(
            started.elapsed() < Duration::from_secs(8),
            "an unroutable send was retried: {:?}",
            started.elapsed()
        );

        // (a) Unreachable, then back within the policy's window: the send succeeds.
        s.proxy.cut();
        let started = Instant::now();
        let sending = {
            let client = client.clone();
            let opts = SendOptions::new()
                .retry_policy(patient(Duration::from_secs(30), Duration::from_millis(250)));
            tokio::spawn(async move { send(&client, &opts).await.map(|r| r.id().to_owned()) })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        ensure!(
            !sending.is_finished(),
            "the send finished while the broker was unreachable"
        );
        s.proxy.restore().await;
        sending
            .await?
            .context("a send across a short outage failed")?;
        let took = started.elapsed();
        ensure!(
            took >= Duration::from_millis(900),
            "sent before the proxy was restored: {took:?}"
        );
        ensure!(queue_len(&direct, &queue).await? == 2);
        eprintln!("{kind:?}: a send across a 1 s outage took {took:.2?}");

        // (b) Unreachable for longer than the policy: a clear error after max_retries,
        // after at least the policy's waits (0.3 + 0.6 + 0.9 s).
        s.proxy.cut();
        let short = RetryPolicy::default()
            .max_retries(Some(3))
            .interval_start(Duration::from_millis(300))
            .interval_step(Duration::from_millis(300))
            .interval_max(Duration::from_secs(1));
        let started = Instant::now();
        let err = send(&client, &SendOptions::new().retry_policy(short))
            .await
            .err()
            .context("a send to an unreachable broker succeeded")?;
        let took = started.elapsed();
        let err = broker_error(err)?;
        eprintln!("{kind:?}: gave up after {took:.2?}: {err}");
        match &err {
            BrokerError::RetriesExhausted {
                retries, source, ..
            } => {
                ensure!(*retries == 3, "{err}");
                ensure!(source.is_connection_error(), "{source}");
            }
            other => bail!("expected RetriesExhausted, got {other}"),
        }
        ensure!(err.to_string().contains("unreachable"), "{err}");
        ensure!(
            took >= Duration::from_millis(1800),
            "gave up too early: {took:?}"
        );
        ensure!(
            took < Duration::from_secs(40),
            "gave up far too late: {took:?}"
        );

        // (c) retry=false fails on the first error, per call and client-wide.
        let started = Instant::now();
        let err = broker_error(
            send(&client, &SendOptions::new().retry(false))
                .await
                .err()
                .context("retry=false succeeded while unreachable")?,
        )?;
        ensure!(
            err.is_connection_error() && !matches!(err, BrokerError::RetriesExhausted { .. }),
            "retry=false: {err}"
        );
        let err = broker_error(
            send(&no_retry_client, &SendOptions::new())
                .await
                .err()
                .context("publish_retry=false succeeded while unreachable")?,
        )?;
        ensure!(
            !matches!(err, BrokerError::RetriesExhausted { .. }),
            "publish_retry=false: {err}"
        );
        let took = started.elapsed();
        ensure!(
            took < Duration::from_secs(8),
            "retry=false waited: {took:?}"
        );
        eprintln!("{kind:?}: two sends with retry=false failed in {took:.2?}: {err}");

        // Restored: both clients work again (with Celery's default policy).
        s.proxy.restore().await;
        send(&client, &SendOptions::new()).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match send(&no_retry_client, &SendOptions::new()).await {
                Ok(_) => break,
                // Without retries a send may still meet the connection lost before.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{kind:?}: retry=false after the restore: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        ensure!(queue_len(&direct, &queue).await? == 4);

        // Cut while sends are in flight (some waiting for their confirm or reply): every
        // send succeeds once the proxy is back. A message whose confirm was lost with the
        // connection is sent again, so at least every one lands (at-least-once, as Celery).
        const IN_FLIGHT: usize = 300;
        let opts = SendOptions::new()
            .retry_policy(patient(Duration::from_secs(30), Duration::from_millis(250)));
        let sends: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                let (client, opts) = (client.clone(), opts.clone());
                tokio::spawn(async move { send(&client, &opts).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.proxy.cut();
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.proxy.restore().await;
        for (i, sending) in sends.into_iter().enumerate() {
            sending
                .await?
                .with_context(|| format!("in-flight send {i} failed"))?;
        }
        let landed = queue_len(&direct, &queue).await?;
        ensure!(
            landed >= 4 + IN_FLIGHT as u64,
            "{landed} messages for {}",
            4 + IN_FLIGHT
        );
        eprintln!(
            "{kind:?}: {IN_FLIGHT} sends cut in flight all succeeded ({} duplicates)",
            landed - 4 - IN_FLIGHT as u64
        );
        Ok(())
    }
    .await;
    remove_queue(kind, &s.direct, &queue).await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_is_retried_per_policy_across_a_lost_connection() -> Result<()> {
    publish_retry_scenarios(Kind::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_is_retried_per_policy_across_a_lost_connection() -> Result<()> {
    publish_retry_scenarios(Kind::Amqp).await
}

// ---------------------------------------------------------------------------------------
// 2. Results awaited across a lost connection (the Redis backend's shared subscriber, the
//    rpc:// reply consumer), with a Python Celery worker connected directly.

async fn results_scenarios(kind: Kind) -> Result<()> {
    let s = setup(kind).await;
    let queue = unique("results");
    let (worker_backend, client_backend) = match kind {
        Kind::Redis => (s.direct.clone(), s.via.clone()),
        Kind::Amqp => ("rpc://".to_owned(), "rpc://".to_owned()),
    };
    let worker = PythonWorker::start("pytasks", &queue, &s.direct, &worker_backend, 4);
    let outcome = async {
        let client = s.client(&queue, Some(&client_backend)).await?;
        let call = |name: &'static str, args: Vec<Value>| {
            let client = client.clone();
            async move {
                client
                    .send_task(name, args, Map::new(), &SendOptions::new())
                    .await
            }
        };
        let sum: i64 = call("pytasks.add", vec![json!(2), json!(3)])
            .await?
            .typed()
            .get(RESULT_TIMEOUT)
            .await?;
        ensure!(sum == 5);

        eprintln!("{kind:?}: a result awaited across a lost connection");
        let slow = call("pytasks.sleep", vec![json!(4.0)]).await?;
        let waiting = tokio::spawn(async move { slow.typed::<f64>().get(RESULT_TIMEOUT).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.proxy.cut();
        tokio::time::sleep(Duration::from_secs(1)).await;
        ensure!(!waiting.is_finished(), "the wait ended during the outage");
        s.proxy.restore().await;
        let slept = waiting
            .await?
            .context("a result awaited across a lost connection")?;
        ensure!(slept == 4.0, "{slept}");

        eprintln!("{kind:?}: cut and restored while nothing is awaited");
        s.proxy.cut();
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.proxy.restore().await;
        let product: i64 = call("pytasks.mul", vec![json!(6), json!(7)])
            .await?
            .typed()
            .get(RESULT_TIMEOUT)
            .await?;
        ensure!(product == 42);
        Ok(())
    }
    .await;
    let outcome = outcome.with_context(|| worker.log_tail());
    drop(worker);
    remove_queue(kind, &s.direct, &queue).await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_results_arrive_after_a_lost_connection() -> Result<()> {
    results_scenarios(Kind::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_results_arrive_after_a_lost_connection() -> Result<()> {
    results_scenarios(Kind::Amqp).await
}

// ---------------------------------------------------------------------------------------
// 3. Many concurrent sends from clones of one client.

const CONCURRENT_SENDS: usize = 2000;

async fn concurrent_sends(kind: Kind) -> Result<()> {
    let s = setup(kind).await;
    let direct = s.direct_broker().await;
    let queue = unique("concurrent");
    let outcome = async {
        let client = Client::connect(ClientConfig {
            broker_url: s.direct.clone(),
            default_queue: queue.clone(),
            ..ClientConfig::default()
        })
        .await?;
        // Declared once before, so the timing is of publishing only.
        send(&client, &SendOptions::new()).await?;
        let started = Instant::now();
        let sends: Vec<_> = (0..CONCURRENT_SENDS)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { send(&client, &SendOptions::new()).await })
            })
            .collect();
        for s in sends {
            s.await??;
        }
        let took = started.elapsed();
        eprintln!(
            "{kind:?}: {CONCURRENT_SENDS} concurrent sends from clones in {took:.2?} ({:.0}/s)",
            CONCURRENT_SENDS as f64 / took.as_secs_f64()
        );
        let landed = queue_len(&direct, &queue).await?;
        ensure!(
            landed == CONCURRENT_SENDS as u64 + 1,
            "{landed} of {} messages landed",
            CONCURRENT_SENDS + 1
        );
        Ok(())
    }
    .await;
    remove_queue(kind, &s.direct, &queue).await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_sends_from_clones_all_land() -> Result<()> {
    concurrent_sends(Kind::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_concurrent_sends_from_clones_all_land() -> Result<()> {
    concurrent_sends(Kind::Amqp).await
}

// ---------------------------------------------------------------------------------------
// 4. The rpc:// reply queue, declared as a Python Celery 5.7 client declares it.

/// `name durable auto_delete exclusive arguments` of every queue of the vhost.
fn list_queues() -> Result<Vec<Value>> {
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "-p", &vhost()])
        .args(["name", "durable", "auto_delete", "exclusive", "arguments"])
        .args(["--formatter", "json"])
        .output()
        .context("rabbitmqctl is required")?;
    ensure!(
        out.status.success(),
        "rabbitmqctl list_queues failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('[').context("no JSON list from rabbitmqctl")?;
    Ok(serde_json::from_str(&text[start..])?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_reply_queue_is_declared_as_python_celery_declares_it() -> Result<()> {
    let client = Client::connect(ClientConfig {
        broker_url: amqp_url(),
        result_backend: Some("rpc://".into()),
        ..ClientConfig::default()
    })
    .await
    .with_context(|| format!("RabbitMQ must run: {}", amqp_url()))?;
    let AnyBackend::Rpc(rpc) = client.backend() else {
        bail!("rpc:// gives the RPC backend");
    };
    let ours = rpc.reply_queue().to_owned();

    let python = python_bin_dir().join("python");
    ensure!(
        python.exists(),
        "the Python venv is required: {}",
        python.display()
    );
    let task_queue = unique("rpcprobe");
    let out = Command::new(&python)
        .arg("rpc_reply_queue.py")
        .args([amqp_url().as_str(), task_queue.as_str()])
        .current_dir(FIXTURES)
        .output()
        .context("run python-fixtures/rpc_reply_queue.py")?;
    ensure!(
        out.status.success(),
        "rpc_reply_queue.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(!theirs.is_empty(), "no reply queue name from Python");

    let outcome = (|| {
        let queues = list_queues()?;
        let find = |name: &str| -> Result<Value> {
            let mut q = queues
                .iter()
                .find(|q| q["name"] == name)
                .cloned()
                .with_context(|| format!("queue {name} is not listed"))?;
            q.as_object_mut().context("a queue object")?.remove("name");
            Ok(q)
        };
        let (ours, theirs) = (find(&ours)?, find(&theirs)?);
        eprintln!("reply queues: ours {ours}, Celery's {theirs}");
        ensure!(ours == theirs, "ours: {ours}\nCelery's: {theirs}");
        ensure!(
            theirs
                == json!({"durable": true, "auto_delete": true, "exclusive": false,
                          "arguments": [["x-expires", "signedint", 86_400_000]]}),
            "Celery 5.7 declares something else now: {theirs}"
        );
        Ok(())
    })();
    rabbitmqctl_delete_queue(&theirs);
    outcome
}
