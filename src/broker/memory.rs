//! The in-process broker.

/// In-process broker.
#[derive(Clone)]
pub struct MemoryBroker;
/// In-process consumer.
pub struct MemoryConsumer;
