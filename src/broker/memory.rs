//! The in-process broker (`memory://name`): first class, with the Redis transport's
//! semantics so that the pipeline behaves the same on both.
//!
//! * Every [`MemoryBroker`] connected to the same `memory://` name shares one store (a
//!   process-wide registry), so a client and a worker in one process meet.
//! * Each queue is four FIFO lists, one per kombu priority step `[0, 3, 6, 9]`; lower steps
//!   are served first, then queues round-robin, exactly like the Redis transport's key order.
//! * Taken messages are held in an `unacked` table until settled. `requeue` puts the
//!   message at the back of its queue, `restore` (and dropping a delivery unsettled, and
//!   `close`) at the front, both with the redelivered flags. There is no visibility timeout:
//!   nothing outlives the process, so an unsettled delivery is restored when it is dropped.
//! * Messages are kept as [`RawMessage`]s: there is no envelope to get wrong, so nothing is
//!   dead-lettered by the broker itself, only through [`Delivery::dead_letter`].

use super::{
    Acker, BrokerError, Delivery, PRIORITY_STEPS, message_priority, priority_index, rotate,
};
use crate::protocol::RawMessage;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use tokio::sync::{Notify, Semaphore};

/// Process-wide stores by `memory://` name. Entries live as long as the process: a broker
/// reconnecting to a name finds the messages it left there, as with a real broker.
static REGISTRY: LazyLock<Mutex<HashMap<String, Arc<Shared>>>> = LazyLock::new(Default::default);

struct Shared {
    state: Mutex<State>,
    /// Woken on every push, so waiting consumers look again.
    pushed: Notify,
}

#[derive(Default)]
struct State {
    /// queue name -> one FIFO per priority step; push_front = LPUSH, pop_back = RPOP.
    queues: HashMap<String, [VecDeque<Stored>; 4]>,
    /// exchange -> (routing key, queue) bindings.
    bindings: HashMap<String, Vec<(String, String)>>,
    /// delivery tag -> (queue it was taken from, message).
    unacked: HashMap<String, (String, RawMessage)>,
    dead: Vec<(String, RawMessage)>,
}

struct Stored {
    tag: String,
    message: RawMessage,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated (every change
        // is a single insert/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn push(&mut self, queue: &str, stored: Stored, front_of_line: bool) {
        let idx = priority_index(message_priority(&stored.message.properties));
        let lists = self.queues.entry(queue.to_string()).or_default();
        if front_of_line {
            lists[idx].push_back(stored); // RPUSH: popped next
        } else {
            lists[idx].push_front(stored); // LPUSH: popped last
        }
    }
}

/// In-process broker.
#[derive(Clone)]
pub struct MemoryBroker {
    name: String,
    shared: Arc<Shared>,
}

impl MemoryBroker {
    /// The broker for `memory://<name>`, shared by everything in the process using that name.
    pub fn named(name: &str) -> MemoryBroker {
        let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        let shared = registry
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Shared {
                    state: Mutex::new(State::default()),
                    pushed: Notify::new(),
                })
            })
            .clone();
        MemoryBroker {
            name: name.to_string(),
            shared,
        }
    }

    /// `memory://<name>`.
    pub fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    /// Messages waiting in `queue` (all priorities), not counting unsettled deliveries.
    pub fn queue_len(&self, queue: &str) -> usize {
        self.shared
            .lock()
            .queues
            .get(queue)
            .map_or(0, |l| l.iter().map(VecDeque::len).sum())
    }

    /// Remove every message waiting in `queue`; returns how many there were.
    pub fn purge(&self, queue: &str) -> usize {
        let mut st = self.shared.lock();
        st.queues.get_mut(queue).map_or(0, |lists| {
            lists.iter_mut().map(|l| l.drain(..).count()).sum()
        })
    }

    /// Messages taken and not yet settled.
    pub fn unacked_len(&self) -> usize {
        self.shared.lock().unacked.len()
    }

    /// Every dead-lettered message with its reason, oldest first.
    pub fn dead_letters(&self) -> Vec<(String, RawMessage)> {
        self.shared.lock().dead.clone()
    }

    /// Bind `queue` to `exchange` with `routing_key` (a direct exchange).
    pub fn bind(&self, exchange: &str, routing_key: &str, queue: &str) {
        let mut st = self.shared.lock();
        let table = st.bindings.entry(exchange.to_string()).or_default();
        let binding = (routing_key.to_string(), queue.to_string());
        if !table.contains(&binding) {
            table.push(binding);
        }
    }

    /// Publish like the Redis transport: a fresh uuid4 delivery tag, `delivery_info` set,
    /// `properties.priority` filled in (0) when missing.
    pub fn publish(
        &self,
        msg: &RawMessage,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let mut st = self.shared.lock();
        let queues: Vec<String> = if exchange.is_empty() {
            vec![routing_key.to_string()]
        } else {
            let mut qs: Vec<String> = st
                .bindings
                .get(exchange)
                .map(|t| {
                    t.iter()
                        .filter(|(rk, _)| rk == routing_key)
                        .map(|(_, q)| q.clone())
                        .collect()
                })
                .unwrap_or_default();
            qs.dedup();
            qs
        };
        if queues.is_empty() {
            return Err(BrokerError::Unroutable {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            });
        }
        let mut message = msg.clone();
        let priority = message_priority(&message.properties);
        if !matches!(message.properties.get("priority"), Some(Value::Number(_))) {
            message
                .properties
                .insert("priority".into(), Value::from(priority));
        }
        message.delivery_info.exchange = exchange.to_string();
        message.delivery_info.routing_key = routing_key.to_string();
        message.delivery_info.priority = Some(priority);
        message.delivery_info.redelivered = false;
        let tag = uuid::Uuid::new_v4().to_string();
        for q in &queues {
            st.push(
                q,
                Stored {
                    tag: tag.clone(),
                    message: message.clone(),
                },
                false,
            );
        }
        drop(st);
        self.shared.pushed.notify_waiters();
        Ok(())
    }

    /// Consume `queues` with at most `prefetch` unsettled deliveries (0 = no limit).
    /// Binds each queue to the exchange of the same name, as a Celery worker declares it.
    pub fn consume(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> Result<MemoryConsumer, BrokerError> {
        if queues.is_empty() {
            return Err(BrokerError::NoQueues);
        }
        for q in queues {
            self.bind(q, q, q);
        }
        let permits = if prefetch == 0 {
            Semaphore::MAX_PERMITS
        } else {
            prefetch
        };
        let mut cycle: Vec<String> = Vec::new();
        for q in queues {
            if !cycle.contains(q) {
                cycle.push(q.clone());
            }
        }
        Ok(MemoryConsumer {
            broker: self.clone(),
            cycle,
            slots: Arc::new(Semaphore::new(permits)),
        })
    }

    fn take(&self, cycle: &[String]) -> Option<(String, Stored)> {
        let mut st = self.shared.lock();
        for idx in 0..PRIORITY_STEPS.len() {
            for q in cycle {
                let popped = st.queues.get_mut(q).and_then(|lists| lists[idx].pop_back());
                if let Some(stored) = popped {
                    st.unacked
                        .insert(stored.tag.clone(), (q.clone(), stored.message.clone()));
                    return Some((q.clone(), stored));
                }
            }
        }
        None
    }
}

/// In-process consumer. Nothing is fetched ahead: [`MemoryConsumer::next`] takes a message
/// only when it can hand it out, so there is never anything to give back on close.
pub struct MemoryConsumer {
    broker: MemoryBroker,
    cycle: Vec<String>,
    slots: Arc<Semaphore>,
}

impl MemoryConsumer {
    /// The next delivery; waits for a free prefetch slot, then for a message.
    /// Cancel-safe: the message is taken without any await before it is returned.
    pub async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BrokerError::Closed)?;
        loop {
            // Register for the wake-up before looking, so a push between the look and the
            // wait is not missed.
            let pushed = self.broker.shared.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            if let Some((queue, stored)) = self.broker.take(&self.cycle) {
                rotate(&mut self.cycle, &queue);
                let acker = Acker::Memory(MemoryAcker {
                    shared: self.broker.shared.clone(),
                });
                return Ok(Delivery::new(
                    stored.message,
                    stored.tag,
                    acker,
                    Some(permit),
                ));
            }
            pushed.await;
        }
    }

    /// Stop consuming. Nothing is buffered, so nothing needs restoring.
    pub async fn close(self) -> Result<(), BrokerError> {
        self.slots.close();
        Ok(())
    }
}

/// Settles memory deliveries.
pub(crate) struct MemoryAcker {
    shared: Arc<Shared>,
}

impl MemoryAcker {
    pub(crate) fn ack(&self, tag: &str) {
        self.shared.lock().unacked.remove(tag);
    }

    /// Back into the queue it came from; `requeue` = back of the line (LPUSH), otherwise
    /// the front (RPUSH). Redelivered flags as kombu's restore sets them.
    pub(crate) fn restore(&self, tag: &str, requeue: bool) {
        let mut st = self.shared.lock();
        let Some((queue, mut message)) = st.unacked.remove(tag) else {
            return;
        };
        message
            .headers
            .insert("redelivered".into(), Value::Bool(true));
        message.delivery_info.redelivered = true;
        st.push(
            &queue,
            Stored {
                tag: tag.to_string(),
                message,
            },
            !requeue,
        );
        drop(st);
        self.shared.pushed.notify_waiters();
    }

    pub(crate) fn dead_letter(&self, tag: &str, reason: &str) {
        let mut st = self.shared.lock();
        if let Some((queue, message)) = st.unacked.remove(tag) {
            tracing::error!(%queue, delivery_tag = %tag, %reason, "message moved to the dead-letter store");
            st.dead.push((reason.to_string(), message));
        }
    }
}
