//! Celeriac: a Celery-compatible task runtime for Rust.
//!
//! The path of one message:
//!
//! ```text
//! broker/      Consumer::next()                 -> Delivery { raw message, its own acker }
//! worker/      take a concurrency permit; spawn the pipeline
//! worker/pipeline.rs, top to bottom, once:
//!   1 protocol/decode    raw -> TaskMessage            error -> dead-letter the delivery
//!   2 registry           look the task up by name      none  -> store FAILURE NotRegistered, ack
//!   3 broker             early ack (Celery's default)  unless acks_late
//!   4 task/args          args + kwargs -> typed params error -> FAILURE TypeError
//!   5 task/call          spawn or spawn_blocking; panic -> FAILURE
//!   6 outcome            retry -> publish a copy; success / failure -> backend store
//!   7 broker             late ack
//! ```

pub mod backend;
pub mod broker;
pub mod error;
pub mod protocol;
pub mod registry;
pub mod task;
pub mod worker;

pub use celeriac_macros::task;
pub use error::Error;

#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use serde_json;
}
