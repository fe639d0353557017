//! Waiters for pushed results, shared by the Redis and RPC backends.
//!
//! Every task id being awaited has one slot, however many callers await it; a ready state
//! delivered to the slot wakes them all. The last waiter to leave (woken, timed out or
//! dropped) removes the slot and tells the backend, which can then stop listening for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};

use crate::protocol::ResultMeta;

/// The task ids being awaited, each with its waiters.
#[derive(Default)]
pub(crate) struct Waiters {
    slots: Mutex<HashMap<String, Slot>>,
}

struct Slot {
    /// The ready state, once it has arrived.
    tx: watch::Sender<Option<ResultMeta>>,
    /// Waiters holding this slot.
    count: usize,
}

impl Waiters {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a waiter for `task_id`. When it leaves as the last one, `task_id` is sent to
    /// `on_last_leave`.
    pub(crate) fn join(
        self: &Arc<Self>,
        task_id: &str,
        on_last_leave: Option<mpsc::UnboundedSender<String>>,
    ) -> Waiter {
        self.join_first(task_id, on_last_leave).0
    }

    /// [`Waiters::join`], and whether the waiter is the first of its task id (the id was
    /// not awaited until now), decided under the same lock as the join.
    pub(crate) fn join_first(
        self: &Arc<Self>,
        task_id: &str,
        on_last_leave: Option<mpsc::UnboundedSender<String>>,
    ) -> (Waiter, bool) {
        let mut slots = self.slots();
        let slot = slots.entry(task_id.to_owned()).or_insert_with(|| Slot {
            tx: watch::Sender::new(None),
            count: 0,
        });
        slot.count += 1;
        let first = slot.count == 1;
        let waiter = Waiter {
            waiters: self.clone(),
            task_id: task_id.to_owned(),
            rx: slot.tx.subscribe(),
            on_last_leave,
        };
        (waiter, first)
    }

    /// Wake every waiter of `meta`'s task with it (`task_id` is the id it was awaited by).
    /// Returns whether anyone was waiting.
    pub(crate) fn wake(&self, task_id: &str, meta: &ResultMeta) -> bool {
        match self.slots().get(task_id) {
            Some(slot) => {
                slot.tx.send_replace(Some(meta.clone()));
                true
            }
            None => false,
        }
    }

    /// Whether `task_id` is awaited.
    pub(crate) fn contains(&self, task_id: &str) -> bool {
        self.slots().contains_key(task_id)
    }

    /// Every awaited task id.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.slots().keys().cloned().collect()
    }
}

/// One caller waiting for one task; leaving is dropping it.
pub(crate) struct Waiter {
    waiters: Arc<Waiters>,
    task_id: String,
    rx: watch::Receiver<Option<ResultMeta>>,
    on_last_leave: Option<mpsc::UnboundedSender<String>>,
}

impl Waiter {
    /// The ready state, once it is delivered (cancel-safe).
    pub(crate) async fn ready(&mut self) -> ResultMeta {
        // The guard `wait_for` returns is not `Send`: copy the value out before any await.
        let got = self
            .rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|m| m.clone());
        match got {
            Some(meta) => meta,
            // The sender lives in the slot, which lives as long as this waiter.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut slots = self.waiters.slots();
        let last = match slots.get_mut(&self.task_id) {
            Some(slot) => {
                slot.count -= 1;
                slot.count == 0
            }
            None => false,
        };
        if last {
            slots.remove(&self.task_id);
            drop(slots);
            if let Some(tx) = &self.on_last_leave {
                let _ = tx.send(std::mem::take(&mut self.task_id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_ready_state_wakes_every_waiter_and_the_last_to_leave_is_reported() {
        let waiters = Arc::new(Waiters::default());
        let (tx, mut left) = mpsc::unbounded_channel();
        let mut a = waiters.join("t", Some(tx.clone()));
        let mut b = waiters.join("t", Some(tx.clone()));
        assert_eq!(waiters.ids(), vec!["t".to_owned()]);
        assert!(!waiters.wake("other", &ResultMeta::success("other", 1.into())));
        let meta = ResultMeta::success("t", 5.into());
        assert!(waiters.wake("t", &meta));
        assert_eq!(a.ready().await, meta);
        // A waiter joining after the wake sees it too, until the slot is gone.
        let mut c = waiters.join("t", Some(tx));
        assert_eq!(c.ready().await, meta);
        assert_eq!(b.ready().await, meta);
        drop((a, b));
        assert!(left.try_recv().is_err());
        drop(c);
        assert_eq!(left.try_recv().unwrap(), "t");
        assert!(!waiters.contains("t"));

        let mut d = waiters.join("t", None);
        let pending = tokio::time::timeout(Duration::from_millis(20), d.ready()).await;
        assert!(pending.is_err(), "a fresh slot has no state");
    }
}
