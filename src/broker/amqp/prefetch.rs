//! The consumer's prefetch window on RabbitMQ (`basic.qos`), widened by one for each
//! delivery the worker holds back without working on it, a message waiting for its eta,
//! so such messages never starve the others. Celery does the same with
//! `consumer.qos.increment_eventually()` / `decrement_eventually()`.
//!
//! Only a global `basic.qos` (per channel, what Celery uses on classic queues) reaches
//! running consumers; a per-consumer one (quorum queues) is fixed when the consumer starts,
//! so such a window is never widened (Celery's prefetch is static there too).
//!
//! The count in force is `base + held`. Changes are applied by one background task that
//! always sends the latest count (a `watch` channel coalesces bursts), on the consumer's
//! current channel; a reconnected session starts with the count in force.

use lapin::Channel;
use lapin::options::BasicQosOptions;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;

/// The window of one consumer.
pub(crate) struct PrefetchWindow {
    base: u16,
    global: bool,
    held: watch::Sender<u32>,
    channel: Mutex<Option<Arc<Channel>>>,
}

impl PrefetchWindow {
    /// A window of `base` deliveries (`0`: no limit, which is never widened), applied per
    /// channel (`global`) or per consumer, with the task that applies its changes.
    pub(crate) fn new(base: u16, global: bool) -> Arc<PrefetchWindow> {
        let (held, changes) = watch::channel(0);
        let window = Arc::new(PrefetchWindow {
            base,
            global,
            held,
            channel: Mutex::new(None),
        });
        if window.widens() {
            tokio::spawn(apply(Arc::downgrade(&window), changes));
        }
        window
    }

    fn widens(&self) -> bool {
        self.base > 0 && self.global
    }

    /// The `basic.qos` options: `global` or per consumer.
    pub(crate) fn options(&self) -> BasicQosOptions {
        BasicQosOptions {
            global: self.global,
        }
    }

    /// The prefetch count in force.
    pub(crate) fn count(&self) -> u16 {
        if self.base == 0 {
            return 0;
        }
        let wide = u32::from(self.base).saturating_add(*self.held.borrow());
        u16::try_from(wide).unwrap_or(u16::MAX)
    }

    /// The channel a (re)opened session consumes on: later changes go there.
    pub(crate) fn set_channel(&self, channel: Arc<Channel>) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel);
    }

    /// Widen the window by one until the returned loan is dropped; `None` without a limit.
    pub(crate) fn widen(self: &Arc<Self>) -> Option<PrefetchLoan> {
        if !self.widens() {
            return None;
        }
        self.held.send_modify(|h| *h += 1);
        Some(PrefetchLoan(self.clone()))
    }
}

/// One step of widening; dropping it narrows the window again.
pub(crate) struct PrefetchLoan(Arc<PrefetchWindow>);

impl Drop for PrefetchLoan {
    fn drop(&mut self) {
        self.0.held.send_modify(|h| *h = h.saturating_sub(1));
    }
}

/// Send `basic.qos` with the latest count after every change, until the window is gone.
async fn apply(window: Weak<PrefetchWindow>, mut changes: watch::Receiver<u32>) {
    while changes.changed().await.is_ok() {
        let Some(window) = window.upgrade() else {
            return;
        };
        let count = window.count();
        let options = window.options();
        let channel = window
            .channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        drop(window);
        if let Some(ch) = channel
            && let Err(err) = ch.basic_qos(count, options).await
        {
            // A lost channel is reopened with the count in force; nothing else to do.
            tracing::debug!(error = %err, count, "could not change the prefetch count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loans_widen_the_window_until_dropped() {
        let window = PrefetchWindow::new(4, true);
        assert_eq!(window.count(), 4);
        let a = window.widen().unwrap();
        let b = window.widen().unwrap();
        assert_eq!(window.count(), 6);
        drop(a);
        assert_eq!(window.count(), 5);
        drop(b);
        assert_eq!(window.count(), 4);
        let unlimited = PrefetchWindow::new(0, true);
        assert!(unlimited.widen().is_none());
        assert_eq!(unlimited.count(), 0);
        let per_consumer = PrefetchWindow::new(4, false);
        assert!(per_consumer.widen().is_none(), "per-consumer QoS is static");
        assert_eq!(per_consumer.count(), 4);
    }
}
