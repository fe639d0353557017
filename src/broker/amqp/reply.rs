//! The caller's reply queue for the `rpc://` result backend, declared and consumed as
//! Celery 5.7's `RPCBackend` does (`celery/backends/rpc.py`, `binding`):
//!
//! ```text
//! queue.declare  <reply queue>  durable, auto_delete, x-expires = result_expires in ms
//!                               (no exchange: replies come through the default exchange)
//! basic.consume  <reply queue>  no_ack (kombu's Consumer(no_ack=True))
//! ```
//!
//! One consumer, on its own connection, hands every reply to a callback. After a lost
//! connection it reconnects with backoff, declares the queue again and consumes again
//! (an `auto_delete` queue is gone once its consumer is).

use super::fields::{self, short};
use super::{AmqpBroker, BrokerError, MAX_BACKOFF, amqp_err};
use crate::protocol::RawMessage;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;
use tokio::task::JoinHandle;

/// A running reply consumer; dropping it stops consuming and closes its connection.
#[derive(Debug)]
pub struct ReplyConsumer {
    task: JoinHandle<()>,
}

impl Drop for ReplyConsumer {
    fn drop(&mut self) {
        // The connection and channel close when the task's handles are dropped.
        self.task.abort();
    }
}

/// `x-expires` as kombu computes it: `int(expires * 1000)`.
fn queue_arguments(expires: Option<Duration>) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(ms) = expires.map(|d| d.as_millis()).filter(|ms| *ms > 0) {
        let value = match i32::try_from(ms) {
            Ok(v) => AMQPValue::LongInt(v),
            Err(_) => AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
        };
        args.insert("x-expires".into(), value);
    }
    args
}

/// Declare the reply queue `queue` on `ch`: durable, auto_delete, `x-expires`.
pub(super) async fn declare(
    ch: &lapin::Channel,
    queue: &str,
    expires: Option<Duration>,
) -> Result<(), BrokerError> {
    ch.queue_declare(
        short(queue, "queue name")?,
        QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        queue_arguments(expires),
    )
    .await
    .map(drop)
    .map_err(|source| BrokerError::Declare {
        queue: queue.to_owned(),
        source,
    })
}

/// Declare `queue` and consume it; the first connection happens here, so its errors are
/// returned at once.
async fn open(
    broker: &AmqpBroker,
    queue: &str,
    expires: Option<Duration>,
) -> Result<(lapin::Channel, lapin::Consumer), BrokerError> {
    let (_conn, ch) = broker.open_channel("replies").await?;
    declare(&ch, queue, expires).await?;
    let consumer = ch
        .basic_consume(
            short(queue, "queue name")?,
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp_err("basic.consume"))?;
    Ok((ch, consumer))
}

/// Declare the reply queue `queue` and hand every message arriving there to `on_reply`
/// until the returned [`ReplyConsumer`] is dropped.
pub(super) async fn consume(
    broker: &AmqpBroker,
    queue: &str,
    expires: Option<Duration>,
    on_reply: impl Fn(RawMessage) + Send + Sync + 'static,
) -> Result<ReplyConsumer, BrokerError> {
    let first = open(broker, queue, expires).await?;
    let broker = broker.clone();
    let queue = queue.to_owned();
    let task = tokio::spawn(async move {
        let (mut channel, mut consumer) = first;
        loop {
            while let Some(item) = consumer.next().await {
                match item {
                    Ok(d) => on_reply(fields::raw_message(
                        d.data,
                        d.properties,
                        d.exchange.as_str(),
                        d.routing_key.as_str(),
                        d.redelivered,
                    )),
                    Err(error) => {
                        tracing::warn!(%error, queue, "reply consumer lost its connection");
                        break;
                    }
                }
            }
            drop((consumer, channel));
            let mut backoff = Duration::from_millis(200);
            (channel, consumer) = loop {
                tokio::time::sleep(backoff).await;
                match open(&broker, &queue, expires).await {
                    Ok(opened) => {
                        tracing::info!(queue, "reply consumer reconnected");
                        break opened;
                    }
                    Err(error) => {
                        tracing::warn!(%error, queue, retry_in = ?backoff, "reply consumer cannot reconnect");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
        }
    });
    Ok(ReplyConsumer { task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_expires_is_kombus_milliseconds() {
        let args = queue_arguments(Some(Duration::from_secs(86_400)));
        assert_eq!(
            args.inner().get("x-expires"),
            Some(&AMQPValue::LongInt(86_400_000))
        );
        assert!(queue_arguments(None).inner().is_empty());
        assert!(queue_arguments(Some(Duration::ZERO)).inner().is_empty());
    }
}
