//! Settling deliveries on one channel with as few frames as the order of settlements
//! allows.
//!
//! Every settlement of a delivery consumed on a channel (ack, reject with or without
//! requeue) goes through that channel's [`AckTracker`]. RabbitMQ's `basic.ack` with
//! `multiple=true` settles every unacknowledged tag up to the one given, so:
//!
//! * **The front.** Deliveries settled in a contiguous run from the lowest outstanding tag
//!   are settled by one frame: `basic.ack(last, multiple=true)` for a run of acks,
//!   `basic.nack(last, multiple=true, requeue)` for a run of rejects with the same
//!   `requeue` (a single one: `basic.ack` / `basic.reject`).
//! * **Above a hole.** A delivery still in flight (not settled yet) below a settled one
//!   blocks a multiple ack. The settled ones wait at most [`HOLE_WAIT`] for the hole to
//!   fill, then are settled one frame each, so a slow task never delays the others' acks
//!   for long. A hole that will stay for long (a message parked for its eta, or dropped
//!   without being settled) does not make anyone wait: above it, settlements go out at once.
//! * **Order.** Frames leave in the order they were planned, and a multiple ack or nack
//!   only covers tags that were meant for it: a tag to reject is rejected before any
//!   multiple ack reaches past it, and the tag a multiple frame names is always still
//!   unsettled on the broker (RabbitMQ closes the channel on an unknown tag).
//! * **Completion.** A settlement resolves once the frame covering it was written (or
//!   failed: the channel is gone, and RabbitMQ requeues everything it had not settled).
//! * **Reconnects.** A tracker belongs to one channel; tags of a lost channel are never
//!   settled on its successor.
//!
//! Bookkeeping is proportional to what is in flight, not to what went through: settled
//! tags above a hole are kept as ranges.

use super::{BrokerError, amqp_err};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// How long a settled delivery waits for a hole below it to fill before it is settled by
/// a frame of its own.
pub(crate) const HOLE_WAIT: Duration = Duration::from_millis(5);

/// How a delivery is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// `basic.ack`: done.
    Ack,
    /// `basic.reject` / `basic.nack`: given back (`requeue`) or dropped / dead-lettered by
    /// RabbitMQ's own policy.
    Reject {
        /// Put it back in its queue.
        requeue: bool,
    },
}

/// One frame to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `basic.ack(tag, multiple)`.
    Ack {
        /// The (last) tag settled.
        tag: u64,
        /// Every unsettled tag up to `tag`.
        multiple: bool,
    },
    /// `basic.reject(tag, requeue)`.
    Reject {
        /// The tag.
        tag: u64,
        /// Put it back.
        requeue: bool,
    },
    /// `basic.nack(tag, multiple=true, requeue)`.
    Nack {
        /// The last tag settled.
        tag: u64,
        /// Put them back.
        requeue: bool,
    },
}

impl Frame {
    fn op(self) -> &'static str {
        match self {
            Frame::Ack { .. } => "basic.ack",
            Frame::Reject { .. } => "basic.reject",
            Frame::Nack { .. } => "basic.nack",
        }
    }
}

/// A planned frame with whatever waits for it (`W`: a waiter; tests use plain tags).
#[derive(Debug)]
pub(crate) struct Planned<W> {
    pub(crate) frame: Frame,
    pub(crate) waiters: Vec<W>,
}

struct Pending<W> {
    how: Settle,
    since: Instant,
    waiter: W,
}

/// The bookkeeping of one channel, free of I/O: settlements in, frames out.
pub(crate) struct Ledger<W> {
    /// Every tag below it has been settled on the broker (its frame planned).
    floor: u64,
    /// Delivered tags (≥ `floor`) not settled yet; `true`: expected to stay for long
    /// (parked for its eta, or abandoned).
    outstanding: BTreeMap<u64, bool>,
    /// How many of `outstanding` are `true`.
    parked: usize,
    /// Settled tags (≥ `floor`) whose frame is not planned yet.
    pending: BTreeMap<u64, Pending<W>>,
    /// Tags (≥ `floor`) settled by frames of their own, as ranges `start → end`
    /// (inclusive).
    done: BTreeMap<u64, u64>,
}

impl<W> Default for Ledger<W> {
    fn default() -> Self {
        Ledger {
            floor: 1, // RabbitMQ numbers a channel's deliveries from 1
            outstanding: BTreeMap::new(),
            parked: 0,
            pending: BTreeMap::new(),
            done: BTreeMap::new(),
        }
    }
}

impl<W> Ledger<W> {
    /// A delivery arrived with `tag`.
    pub(crate) fn delivered(&mut self, tag: u64) {
        if tag >= self.floor {
            self.outstanding.insert(tag, false);
        }
    }

    /// The delivery `tag` will stay unsettled for long: nobody waits for it.
    pub(crate) fn park(&mut self, tag: u64) {
        if let Some(parked) = self.outstanding.get_mut(&tag)
            && !*parked
        {
            *parked = true;
            self.parked += 1;
        }
    }

    /// Settle `tag` as `how`; `waiter` is handed back with the frame that covers it.
    /// Returns `false` (and drops nothing: the waiter is returned) when the tag is unknown
    /// or already settled.
    pub(crate) fn settle(
        &mut self,
        tag: u64,
        how: Settle,
        now: Instant,
        waiter: W,
    ) -> Result<(), W> {
        match self.outstanding.remove(&tag) {
            None => Err(waiter),
            Some(parked) => {
                if parked {
                    self.parked -= 1;
                }
                self.pending.insert(
                    tag,
                    Pending {
                        how,
                        since: now,
                        waiter,
                    },
                );
                Ok(())
            }
        }
    }

    /// Nothing settled waits for a frame.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Plan the frames due at `now` (in the order they must be sent), and when to look
    /// again if settlements wait for a hole. `all`: settle everything pending now,
    /// whatever blocks it (the tracker is closing).
    pub(crate) fn plan(&mut self, now: Instant, all: bool) -> (Vec<Planned<W>>, Option<Instant>) {
        let mut out = Vec::new();
        self.plan_front(&mut out);
        // Above the lowest hole: alone, when the hole is parked or the wait is over.
        let lowest_parked = if self.parked == 0 {
            None
        } else {
            self.outstanding
                .iter()
                .find_map(|(t, parked)| parked.then_some(*t))
        };
        let mut next = None;
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter_map(|(tag, p)| {
                let deadline = p.since + HOLE_WAIT;
                if all || lowest_parked.is_some_and(|l| l < *tag) || deadline <= now {
                    Some(*tag)
                } else {
                    next = Some(next.map_or(deadline, |n: Instant| n.min(deadline)));
                    None
                }
            })
            .collect();
        for tag in due {
            let p = self.pending.remove(&tag).expect("listed above");
            let frame = match p.how {
                Settle::Ack => Frame::Ack {
                    tag,
                    multiple: false,
                },
                Settle::Reject { requeue } => Frame::Reject { tag, requeue },
            };
            out.push(Planned {
                frame,
                waiters: vec![p.waiter],
            });
            self.mark_done(tag);
        }
        // Those may have filled the front's hole (e.g. `all`).
        self.advance_floor();
        (out, next)
    }

    /// Runs settled from the floor up: one frame per run of the same kind.
    fn plan_front(&mut self, out: &mut Vec<Planned<W>>) {
        let mut run: Option<(Settle, u64, Vec<W>)> = None;
        loop {
            self.advance_floor();
            let Some(entry) = self.pending.first_entry() else {
                break;
            };
            if *entry.key() != self.floor {
                break; // a hole: in flight, or not delivered to us yet
            }
            let (tag, p) = entry.remove_entry();
            self.floor = tag + 1;
            match &mut run {
                Some((how, last, waiters)) if *how == p.how => {
                    *last = tag;
                    waiters.push(p.waiter);
                }
                _ => {
                    if let Some(r) = run.take() {
                        out.push(Self::run_frame(r));
                    }
                    run = Some((p.how, tag, vec![p.waiter]));
                }
            }
        }
        if let Some(r) = run {
            out.push(Self::run_frame(r));
        }
    }

    fn run_frame((how, last, waiters): (Settle, u64, Vec<W>)) -> Planned<W> {
        let single = waiters.len() == 1;
        let frame = match how {
            Settle::Ack => Frame::Ack {
                tag: last,
                multiple: !single,
            },
            Settle::Reject { requeue } if single => Frame::Reject { tag: last, requeue },
            Settle::Reject { requeue } => Frame::Nack { tag: last, requeue },
        };
        Planned { frame, waiters }
    }

    /// Move the floor over tags settled alone.
    fn advance_floor(&mut self) {
        while let Some(entry) = self.done.first_entry()
            && *entry.key() <= self.floor
        {
            let end = entry.remove();
            self.floor = self.floor.max(end + 1);
        }
    }

    /// Record `tag` as settled by a frame of its own, merging with neighbouring ranges.
    fn mark_done(&mut self, tag: u64) {
        let mut start = tag;
        let mut end = tag;
        if let Some((&s, &e)) = self.done.range(..tag).next_back()
            && e + 1 == tag
        {
            start = s;
        }
        if let Some(e) = self.done.remove(&(tag + 1)) {
            end = e;
        }
        self.done.insert(start, end);
    }
}

/// Frames and settlements counted over a consumer's life (every channel it used).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    settled: AtomicU64,
    acks: AtomicU64,
    multiple_acks: AtomicU64,
    rejects: AtomicU64,
    nacks: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> AckStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AckStats {
            settled: get(&self.settled),
            ack_frames: get(&self.acks),
            multiple_ack_frames: get(&self.multiple_acks),
            reject_frames: get(&self.rejects),
            nack_frames: get(&self.nacks),
        }
    }

    fn count(&self, frame: Frame, settled: usize) {
        self.settled.fetch_add(settled as u64, Ordering::Relaxed);
        let counter = match frame {
            Frame::Ack { multiple: true, .. } => {
                self.acks.fetch_add(1, Ordering::Relaxed);
                &self.multiple_acks
            }
            Frame::Ack { .. } => &self.acks,
            Frame::Reject { .. } => &self.rejects,
            Frame::Nack { .. } => &self.nacks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a consumer's deliveries were settled on RabbitMQ: settlements, and the frames that
/// carried them ([`AmqpConsumer::ack_stats`](super::AmqpConsumer::ack_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckStats {
    /// Deliveries settled by a frame that was written (acked, rejected or nacked).
    pub settled: u64,
    /// `basic.ack` frames written, multiple or not.
    pub ack_frames: u64,
    /// Of those, `multiple=true` ones.
    pub multiple_ack_frames: u64,
    /// `basic.reject` frames written.
    pub reject_frames: u64,
    /// `basic.nack(multiple=true)` frames written.
    pub nack_frames: u64,
}

type Waiter = oneshot::Sender<Result<(), BrokerError>>;

struct Shared {
    ledger: Mutex<Ledger<Waiter>>,
    wake: Notify,
    /// No more settlements will come: flush everything, then stop.
    closing: std::sync::atomic::AtomicBool,
}

/// The settlements of one channel (see the module docs). Dropping it (the session and
/// every delivery from it are gone) flushes what is pending and stops its task.
pub(crate) struct AckTracker {
    shared: Arc<Shared>,
}

impl AckTracker {
    /// A tracker for `channel`, with the task that writes its frames.
    pub(crate) fn new(channel: Arc<Channel>, counters: Arc<Counters>) -> AckTracker {
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::default()),
            wake: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(flush(shared.clone(), channel, counters));
        AckTracker { shared }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger<Waiter>> {
        self.shared.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A delivery with `tag` arrived on the channel (before it is handed out).
    pub(crate) fn delivered(&self, tag: u64) {
        self.ledger().delivered(tag);
    }

    /// The delivery `tag` will stay unsettled for long (parked for its eta, or dropped).
    pub(crate) fn park(&self, tag: u64) {
        self.ledger().park(tag);
        // Settlements waiting above it need not wait any more.
        self.shared.wake.notify_one();
    }

    /// Settle `tag`; resolves once the frame covering it was written.
    pub(crate) fn settle(
        &self,
        tag: u64,
        how: Settle,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        let queued = self.ledger().settle(tag, how, Instant::now(), tx).is_ok();
        if queued {
            self.shared.wake.notify_one();
        }
        async move {
            if !queued {
                // Never delivered on this channel, or settled twice: a caller's bug.
                return Err(BrokerError::UnexpectedReply {
                    command: "basic.ack",
                    detail: format!("delivery tag {tag} is not outstanding on its channel"),
                });
            }
            rx.await.unwrap_or(Err(BrokerError::Closed))
        }
    }
}

impl Drop for AckTracker {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// The tracker's task: plan, write, report; until the tracker is dropped and idle.
async fn flush(shared: Arc<Shared>, channel: Arc<Channel>, counters: Arc<Counters>) {
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        let (planned, next) = {
            let mut ledger = shared.ledger.lock().unwrap_or_else(|e| e.into_inner());
            if closing && ledger.is_idle() {
                return;
            }
            ledger.plan(Instant::now(), closing)
        };
        if !planned.is_empty() {
            write(&channel, planned, &counters).await;
            continue; // more may have been settled meanwhile
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

type Sending<'a> = Pin<Box<dyn Future<Output = lapin::Result<()>> + Send + 'a>>;

/// Write the frames in order (lapin queues a frame when its future is first polled: each
/// is polled once before the next is made), then wait for each to be written.
async fn write(channel: &Channel, planned: Vec<Planned<Waiter>>, counters: &Counters) {
    let mut sending: Vec<(Sending<'_>, Planned<Waiter>)> = Vec::with_capacity(planned.len());
    for p in planned {
        let mut fut: Sending<'_> = match p.frame {
            Frame::Ack { tag, multiple } => {
                Box::pin(channel.basic_ack(tag, BasicAckOptions { multiple }))
            }
            Frame::Reject { tag, requeue } => {
                Box::pin(channel.basic_reject(tag, BasicRejectOptions { requeue }))
            }
            Frame::Nack { tag, requeue } => Box::pin(channel.basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue,
                },
            )),
        };
        match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            Poll::Ready(result) => report(result, p, counters),
            Poll::Pending => sending.push((fut, p)),
        }
    }
    for (fut, p) in sending {
        report(fut.await, p, counters);
    }
}

fn report(result: lapin::Result<()>, p: Planned<Waiter>, counters: &Counters) {
    match result {
        Ok(()) => {
            counters.count(p.frame, p.waiters.len());
            for w in p.waiters {
                let _ = w.send(Ok(()));
            }
        }
        Err(err) => {
            for w in p.waiters {
                let _ = w.send(Err(amqp_err(p.frame.op())(err.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(tags: std::ops::RangeInclusive<u64>) -> Ledger<u64> {
        let mut l = Ledger::default();
        for t in tags {
            l.delivered(t);
        }
        l
    }

    fn settle(l: &mut Ledger<u64>, tag: u64, how: Settle, now: Instant) {
        l.settle(tag, how, now, tag).unwrap();
    }

    fn frames(planned: &[Planned<u64>]) -> Vec<Frame> {
        planned.iter().map(|p| p.frame).collect()
    }

    const ACK: Settle = Settle::Ack;
    const REQUEUE: Settle = Settle::Reject { requeue: true };

    #[test]
    fn a_contiguous_run_is_one_multiple_ack() {
        let now = Instant::now();
        let mut l = ledger(1..=10);
        for t in [3, 1, 2, 5, 4] {
            settle(&mut l, t, ACK, now);
        }
        let (p, next) = l.plan(now, false);
        assert_eq!(
            frames(&p),
            [Frame::Ack {
                tag: 5,
                multiple: true
            }]
        );
        let mut waiters = p[0].waiters.clone();
        waiters.sort_unstable();
        assert_eq!(waiters, [1, 2, 3, 4, 5]);
        assert_eq!(next, None);
        settle(&mut l, 6, ACK, now);
        let (p, _) = l.plan(now, false);
        assert_eq!(
            frames(&p),
            [Frame::Ack {
                tag: 6,
                multiple: false
            }]
        );
    }

    #[test]
    fn rejects_keep_their_place_between_acks() {
        let now = Instant::now();
        let mut l = ledger(1..=8);
        for (t, how) in [
            (1, ACK),
            (2, ACK),
            (3, REQUEUE),
            (4, ACK),
            (5, REQUEUE),
            (6, REQUEUE),
            (7, Settle::Reject { requeue: false }),
            (8, ACK),
        ] {
            settle(&mut l, t, how, now);
        }
        let (p, _) = l.plan(now, false);
        assert_eq!(
            frames(&p),
            [
                Frame::Ack {
                    tag: 2,
                    multiple: true
                },
                Frame::Reject {
                    tag: 3,
                    requeue: true
                },
                Frame::Ack {
                    tag: 4,
                    multiple: false
                },
                Frame::Nack {
                    tag: 6,
                    requeue: true
                },
                Frame::Reject {
                    tag: 7,
                    requeue: false
                },
                Frame::Ack {
                    tag: 8,
                    multiple: false
                },
            ]
        );
    }

    #[test]
    fn settlements_above_a_hole_wait_then_go_alone() {
        let t0 = Instant::now();
        let mut l = ledger(1..=5);
        settle(&mut l, 2, ACK, t0);
        settle(&mut l, 3, REQUEUE, t0);
        let (p, next) = l.plan(t0, false);
        assert!(p.is_empty(), "1 is in flight");
        assert_eq!(next, Some(t0 + HOLE_WAIT));
        let (p, next) = l.plan(t0 + HOLE_WAIT, false);
        assert_eq!(
            frames(&p),
            [
                Frame::Ack {
                    tag: 2,
                    multiple: false
                },
                Frame::Reject {
                    tag: 3,
                    requeue: true
                },
            ]
        );
        assert_eq!(next, None);
        // 1 settles: its multiple ack must not name 2 or 3 (settled on the broker already),
        // and 4 joins the run past them.
        settle(&mut l, 4, ACK, t0);
        settle(&mut l, 1, ACK, t0);
        let (p, _) = l.plan(t0 + HOLE_WAIT, false);
        assert_eq!(
            frames(&p),
            [Frame::Ack {
                tag: 4,
                multiple: true
            }]
        );
        assert_eq!(p[0].waiters, [1, 4]);
        assert!(l.done.is_empty() && l.pending.is_empty() && l.outstanding.contains_key(&5));
        assert_eq!(l.floor, 5);
    }

    #[test]
    fn nothing_waits_above_a_parked_hole_and_bookkeeping_stays_small() {
        let t0 = Instant::now();
        let mut l = ledger(1..=1000);
        l.park(2);
        settle(&mut l, 1, ACK, t0);
        for t in 3..=1000 {
            settle(&mut l, t, ACK, t0);
            let (p, next) = l.plan(t0, false);
            assert_eq!(next, None);
            if t == 3 {
                assert_eq!(
                    frames(&p),
                    [
                        Frame::Ack {
                            tag: 1,
                            multiple: false
                        },
                        Frame::Ack {
                            tag: 3,
                            multiple: false
                        }
                    ]
                );
            } else {
                assert_eq!(
                    frames(&p),
                    [Frame::Ack {
                        tag: t,
                        multiple: false
                    }]
                );
            }
        }
        assert_eq!(l.done.len(), 1, "one range: 3..=1000");
        settle(&mut l, 2, REQUEUE, t0);
        let (p, _) = l.plan(t0, false);
        assert_eq!(
            frames(&p),
            [Frame::Reject {
                tag: 2,
                requeue: true
            }]
        );
        assert_eq!(l.floor, 1001);
        assert!(l.done.is_empty());
    }

    #[test]
    fn a_tag_not_yet_seen_is_a_hole() {
        // Two consumers on one channel: tag 1 may reach the tracker after tag 2.
        let now = Instant::now();
        let mut l: Ledger<u64> = Ledger::default();
        l.delivered(2);
        settle(&mut l, 2, ACK, now);
        let (p, _) = l.plan(now, false);
        assert!(p.is_empty(), "a multiple ack of 2 would cover 1");
        l.delivered(1);
        settle(&mut l, 1, ACK, now);
        let (p, _) = l.plan(now, false);
        assert_eq!(
            frames(&p),
            [Frame::Ack {
                tag: 2,
                multiple: true
            }]
        );
    }

    #[test]
    fn unknown_or_twice_settled_tags_are_refused() {
        let now = Instant::now();
        let mut l = ledger(1..=1);
        assert_eq!(l.settle(7, ACK, now, 7), Err(7));
        settle(&mut l, 1, ACK, now);
        assert_eq!(l.settle(1, ACK, now, 1), Err(1));
    }

    #[test]
    fn closing_settles_everything_pending() {
        let now = Instant::now();
        let mut l = ledger(1..=3);
        settle(&mut l, 3, ACK, now);
        let (p, _) = l.plan(now, true);
        assert_eq!(
            frames(&p),
            [Frame::Ack {
                tag: 3,
                multiple: false
            }]
        );
        assert!(l.is_idle());
    }
}
