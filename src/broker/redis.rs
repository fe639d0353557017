//! kombu's Redis transport.

/// Redis broker.
#[derive(Clone)]
pub struct RedisBroker;
/// Redis consumer.
pub struct RedisConsumer;
