//! Moving messages: the transports. Brokers know kombu's storage layouts, not Celery's
//! message format (that is [`crate::protocol`]).

pub mod memory;
pub mod redis;
pub mod url;

use crate::protocol::RawMessage;
use std::time::Duration;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Placeholder until the broker module is written.
    #[error("{0}")]
    Other(String),
}

/// Options for connecting a broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Redis: messages unacked for longer are restored to their queue.
    pub visibility_timeout: Duration,
    /// Redis: how often to look for messages to restore.
    pub restore_interval: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions { visibility_timeout: Duration::from_secs(3600), restore_interval: Duration::from_secs(10) }
    }
}

/// One of the brokers Celeriac speaks.
#[derive(Clone)]
pub enum AnyBroker {
    /// In-process.
    Memory(memory::MemoryBroker),
    /// kombu's Redis transport.
    Redis(redis::RedisBroker),
}

/// A stream of deliveries from some queues.
pub enum Consumer {
    /// In-process.
    Memory(memory::MemoryConsumer),
    /// Redis.
    Redis(redis::RedisConsumer),
}

/// One message taken from a queue. It owns its acknowledgement.
pub struct Delivery {
    /// The message.
    pub message: RawMessage,
}
