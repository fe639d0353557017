//! The in-process result backend (`memory://`).
//!
//! Results live in a map shared by every handle opened with the same URL, so a worker and a
//! test (or a client) in one process see the same results without any server. Waiters are
//! woken when a result is stored, never polled. Expiry follows `result_expires` on tokio's
//! clock, so tests with a paused clock can check it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{BackendError, BackendOptions};
use crate::protocol::{ResultMeta, TaskState};

/// Every store opened so far, by URL. Stores are kept for the life of the process (like a
/// server would keep them), so reopening a URL finds earlier results.
static REGISTRY: LazyLock<Mutex<HashMap<String, Arc<Store>>>> = LazyLock::new(Default::default);

#[derive(Debug, Default)]
struct Store {
    entries: Mutex<HashMap<String, Entry>>,
    /// Woken on every store, so waiters re-check their task.
    changed: Notify,
}

#[derive(Debug)]
struct Entry {
    meta: ResultMeta,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// A handle on an in-process result store; clones share it.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    url: Arc<str>,
    store: Arc<Store>,
    opts: Arc<BackendOptions>,
}

/// A poisoned lock only means another thread panicked while holding it; the map itself is
/// always consistent (each update is a single insert), so keep using it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBackend {
    /// Open the store for `url` (the exact string, e.g. `memory://` or `memory://tests-a`),
    /// creating it on first use. Each handle applies its own `opts`.
    pub fn open(url: &str, opts: BackendOptions) -> Self {
        let store = lock(&REGISTRY).entry(url.to_owned()).or_default().clone();
        Self {
            url: url.into(),
            store,
            opts: Arc::new(opts),
        }
    }

    /// The URL this store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Store a state change; a stored SUCCESS is never overwritten (as on Redis).
    pub fn store(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        let now = Instant::now();
        {
            let mut entries = lock(&self.store.entries);
            if let Some(current) = entries.get(&meta.task_id)
                && current.live(now)
                && current.meta.status == TaskState::Success
            {
                return Ok(());
            }
            let expires_at = self.opts.expires_for(meta.status).map(|d| now + d);
            entries.insert(
                meta.task_id.clone(),
                Entry {
                    meta: meta.clone(),
                    expires_at,
                },
            );
        }
        self.store.changed.notify_waiters();
        Ok(())
    }

    /// The latest live state of a task, `None` if none is stored or it expired.
    pub fn get(&self, task_id: &str) -> Option<ResultMeta> {
        let now = Instant::now();
        let mut entries = lock(&self.store.entries);
        match entries.get(task_id) {
            Some(entry) if entry.live(now) => Some(entry.meta.clone()),
            Some(_) => {
                entries.remove(task_id);
                None
            }
            None => None,
        }
    }

    /// Drop a task's result (Celery's `AsyncResult.forget`).
    pub fn forget(&self, task_id: &str) {
        lock(&self.store.entries).remove(task_id);
    }

    /// Wait until the task reaches a ready state (SUCCESS, FAILURE, REVOKED); `None` when
    /// `timeout` passes first.
    pub async fn wait(&self, task_id: &str, timeout: Duration) -> Option<ResultMeta> {
        self.wait_for(task_id, timeout, ResultMeta::is_ready).await
    }

    /// Wait until the task's stored state satisfies `done` (e.g. any state at all, or
    /// STARTED); `None` when `timeout` passes first.
    pub async fn wait_for(
        &self,
        task_id: &str,
        timeout: Duration,
        done: impl Fn(&ResultMeta) -> bool,
    ) -> Option<ResultMeta> {
        let deadline = Instant::now() + timeout;
        loop {
            // Register for the wake-up before looking, so a store landing between the look
            // and the await is not missed.
            let notified = self.store.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(meta) = self.get(task_id).filter(|m| done(m)) {
                return Some(meta);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ExceptionInfo;
    use serde_json::json;

    #[tokio::test]
    async fn handles_with_the_same_url_share_results() {
        let a = MemoryBackend::open("memory://share", BackendOptions::default());
        let b = MemoryBackend::open("memory://share", BackendOptions::default());
        let other = MemoryBackend::open("memory://share-other", BackendOptions::default());
        a.store(&ResultMeta::success("t1", json!(5))).unwrap();
        assert_eq!(b.get("t1").unwrap().result, json!(5));
        assert_eq!(other.get("t1"), None);
        b.forget("t1");
        assert_eq!(a.get("t1"), None);
    }

    #[tokio::test]
    async fn success_is_never_overwritten() {
        let b = MemoryBackend::open("memory://success-final", BackendOptions::default());
        b.store(&ResultMeta::started("t", "w@h", 1)).unwrap();
        b.store(&ResultMeta::success("t", json!(1))).unwrap();
        b.store(&ResultMeta::failure(
            "t",
            ExceptionInfo::builtin("ValueError", "late"),
            None,
        ))
        .unwrap();
        b.store(&ResultMeta::started("t", "w@h", 2)).unwrap();
        assert_eq!(b.get("t").unwrap().status, TaskState::Success);
    }

    #[tokio::test]
    async fn wait_is_woken_by_a_store() {
        let b = MemoryBackend::open("memory://wait", BackendOptions::default());
        let writer = b.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.store(&ResultMeta::started("w", "w@h", 1)).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer
                .store(&ResultMeta::success("w", json!("done")))
                .unwrap();
        });
        let started = std::time::Instant::now();
        let got = b
            .wait("w", Duration::from_secs(5))
            .await
            .expect("result arrives");
        assert_eq!(got.result, json!("done"));
        assert!(started.elapsed() < Duration::from_secs(2));
        task.await.unwrap();
        assert_eq!(b.wait("never", Duration::from_millis(10)).await, None);
        let any = b.wait_for("w", Duration::ZERO, |_| true).await;
        assert_eq!(any.map(|m| m.status), Some(TaskState::Success));
    }

    #[tokio::test]
    async fn results_expire_after_result_expires() {
        let opts = BackendOptions {
            result_expires: Some(Duration::from_millis(150)),
            ..Default::default()
        };
        let b = MemoryBackend::open("memory://expire", opts);
        b.store(&ResultMeta::success("e", json!(1))).unwrap();
        assert!(b.get("e").is_some());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(b.get("e"), None);
        // An expired SUCCESS no longer guards the key.
        b.store(&ResultMeta::revoked("e", "revoked")).unwrap();
        assert_eq!(b.get("e").unwrap().status, TaskState::Revoked);
    }
}
