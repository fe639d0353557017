//! Messages the worker holds without running them yet: those whose eta or rate-limit turn
//! lies ahead (one timer heap for all of them), and those whose turn has come but that wait
//! for a free concurrency slot (a first-in, first-out queue).
//!
//! A worker may hold many messages at once (every eta message it is sent, however far off:
//! on RabbitMQ it raises its prefetch by one per held message, as Celery does), so holding
//! one must cost little: no task, no timer and no decoded message per held message, only
//! the raw message packed into one byte buffer ([`pack`]) and the delivery parked
//! ([`Delivery::park`]: its acker kept, the rest dropped).
//!
//! When its time comes a message joins the back of the ready queue; when a slot is free the
//! worker takes the front one and runs it through the pipeline again from the top, so
//! expiry and revocation are checked at run time, as Celery's `execute_using_pool` does.

use crate::broker::{Delivery, ParkedDelivery, canonical_uuid};
use crate::protocol::headers::KNOWN_HEADERS;
use crate::protocol::{DeliveryInfo, RawMessage};
use chrono::{DateTime, Utc};
use serde_json::{Map, Number, Value};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// One held message: the raw message packed, the delivery parked. Boxed, so that the
/// timer heap and the ready queue (which grow by doubling) hold a pointer per message.
pub(crate) struct Held(Box<Inner>);

struct Inner {
    packed: Box<[u8]>,
    parked: ParkedDelivery,
    /// See [`Held::rated`].
    rated: bool,
}

impl Held {
    /// Park `delivery` and pack its message.
    pub fn new(delivery: Delivery, rated: bool) -> Held {
        let (message, parked) = delivery.park();
        Held(Box::new(Inner {
            packed: pack(&message),
            parked,
            rated,
        }))
    }

    /// It has passed the rate-limit step (its start was reserved and has come, or the task
    /// has no limit): the pipeline does not reserve another start for it.
    pub fn rated(&self) -> bool {
        self.0.rated
    }

    /// The delivery again, its message unpacked.
    pub fn into_delivery(self) -> Delivery {
        let Inner { packed, parked, .. } = *self.0;
        let message = unpack(&packed).expect("a buffer made by `pack` unpacks");
        parked.unpark(message)
    }
}

/// A held message waiting for its time.
struct Timer {
    due: Instant,
    /// Order of arrival, so that equal times keep it.
    seq: u64,
    held: Held,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest is wanted first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct State {
    timers: BinaryHeap<Timer>,
    ready: VecDeque<Held>,
    seq: u64,
    closed: bool,
    /// The wall clock and the monotonic clock read together: etas (wall clock) become
    /// timer instants by this one offset, so that messages keep their eta order exactly.
    /// (Reading both clocks for each message would not: a thread preempted between the two
    /// reads gets a later instant than a message with the same eta.)
    clocks: (DateTime<Utc>, Instant),
}

/// How far the two clocks may move apart before they are read together again (the wall
/// clock was set).
const CLOCK_STEP: Duration = Duration::from_millis(20);

/// The wall clock and the monotonic clock at one moment: the monotonic clock read on both
/// sides of the wall clock, a few times if a read was interrupted.
fn read_clocks() -> (DateTime<Utc>, Instant) {
    let mut best: Option<(Duration, DateTime<Utc>, Instant)> = None;
    for _ in 0..3 {
        let before = Instant::now();
        let wall = Utc::now();
        let after = Instant::now();
        let gap = after - before;
        if best.as_ref().is_none_or(|b| gap < b.0) {
            best = Some((gap, wall, before + gap / 2));
        }
        if gap < Duration::from_micros(50) {
            break;
        }
    }
    let (_, wall, mono) = best.expect("read at least once");
    (wall, mono)
}

impl State {
    /// Move every timer that is due to the back of the ready queue, earliest first.
    fn promote(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|t| t.due <= now) {
            let t = self.timers.pop().expect("peeked");
            self.ready.push_back(t.held);
        }
    }
}

/// Every message a worker holds, and the worker's concurrency slots.
pub(crate) struct Hold {
    state: Mutex<State>,
    /// Woken when a timer earlier than all others, or a first ready message, is added.
    changed: Notify,
    slots: Arc<Semaphore>,
}

impl Hold {
    /// An empty hold handing out `slots`.
    pub fn new(slots: Arc<Semaphore>) -> Hold {
        Hold {
            state: Mutex::new(State {
                timers: BinaryHeap::new(),
                ready: VecDeque::new(),
                seq: 0,
                closed: false,
                clocks: read_clocks(),
            }),
            changed: Notify::new(),
            slots,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instant at which the wall clock shows `eta`, by the clocks read together (again,
    /// when they moved apart: the wall clock was set).
    pub fn due(&self, eta: DateTime<Utc>) -> Instant {
        let mut st = self.lock();
        let (wall, mono) = (Utc::now(), Instant::now());
        let (w0, i0) = st.clocks;
        let apart = (wall - w0) - chrono::TimeDelta::from_std(mono - i0).unwrap_or_default();
        if apart.abs().to_std().unwrap_or_default() > CLOCK_STEP {
            st.clocks = read_clocks();
        }
        let (w0, i0) = st.clocks;
        match (eta - w0).to_std() {
            Ok(ahead) => i0 + ahead,
            Err(_) => (w0 - eta)
                .to_std()
                .ok()
                .and_then(|behind| i0.checked_sub(behind))
                .unwrap_or(i0),
        }
    }

    /// Hold `held` until `due`. After [`Hold::close`] it is handed back instead.
    pub fn until(&self, due: Instant, held: Held) -> Result<(), Held> {
        let mut st = self.lock();
        if st.closed {
            return Err(held);
        }
        st.seq += 1;
        let seq = st.seq;
        let first = st.timers.peek().is_none_or(|t| due < t.due);
        st.timers.push(Timer { due, seq, held });
        drop(st);
        if first {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Queue `held` for the next free slot, behind those already waiting. After
    /// [`Hold::close`] it is handed back instead.
    pub fn ready(&self, held: Held) -> Result<(), Held> {
        let mut st = self.lock();
        if st.closed {
            return Err(held);
        }
        let first = st.ready.is_empty();
        st.ready.push_back(held);
        drop(st);
        if first {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// A slot at once, unless none is free or messages are already waiting for one (they
    /// go first).
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        let mut st = self.lock();
        st.promote(Instant::now());
        if st.ready.is_empty() {
            self.slots.clone().try_acquire_owned().ok()
        } else {
            None
        }
    }

    /// The next held message whose turn has come, with a slot to run in: the front of the
    /// ready queue, once a slot is free. Cancel-safe: nothing is taken from the hold until
    /// it is returned.
    pub async fn next(&self) -> (Held, OwnedSemaphorePermit) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (due, waiting) = {
                let mut st = self.lock();
                st.promote(Instant::now());
                if !st.ready.is_empty()
                    && let Ok(slot) = self.slots.clone().try_acquire_owned()
                {
                    let held = st.ready.pop_front().expect("not empty");
                    return (held, slot);
                }
                (st.timers.peek().map(|t| t.due), !st.ready.is_empty())
            };
            let timer = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut changed => {}
                () = timer => {}
                slot = self.slots.clone().acquire_owned(), if waiting => {
                    let slot = slot.expect("the slot semaphore is never closed");
                    if let Some(held) = self.lock().ready.pop_front() {
                        return (held, slot);
                    }
                }
            }
        }
    }

    /// Stop holding: every held message is returned (those ready first, then the others in
    /// the order of their times) and any message offered later is handed back.
    pub fn close(&self) -> Vec<Held> {
        let mut st = self.lock();
        st.closed = true;
        let mut out: Vec<Held> = st.ready.drain(..).collect();
        let timers = std::mem::take(&mut st.timers).into_sorted_vec();
        // Sorted ascending by `Ord`, which is reversed: latest first.
        out.extend(timers.into_iter().rev().map(|t| t.held));
        out
    }

    /// How many messages are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.timers.len() + st.ready.len()
    }
}

// ---------------------------------------------------------------------------------------
// Packing: a raw message in one byte buffer. Lengths and numbers are LEB128 varints; the
// names Celery's headers and properties use, and a few common values, are one byte.
// ---------------------------------------------------------------------------------------

/// Strings written as their index here: the header names Celery's protocol 2 defines, then
/// kombu's property names and a few common values. The order is only an in-memory format
/// (a packed message never leaves the process), so the list may grow freely.
const COMMON: [&str; KNOWN_HEADERS.len() + MORE_COMMON.len()] =
    concat_strs(KNOWN_HEADERS, MORE_COMMON);

/// Common strings other than the header names.
const MORE_COMMON: [&str; 16] = [
    "correlation_id",
    "reply_to",
    "delivery_mode",
    "priority",
    "expiration",
    "callbacks",
    "errbacks",
    "chain",
    "chord",
    "py",
    "application/json",
    "utf-8",
    "binary",
    "application/x-msgpack",
    "celery",
    "",
];

/// `a` followed by `b`, at compile time.
const fn concat_strs<const A: usize, const B: usize, const C: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; C] {
    assert!(A + B == C);
    let mut out = [""; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < C {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UINT: u8 = 3;
const NEG: u8 = 4;
const FLOAT: u8 = 5;
const STRING: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;

/// `msg` in one buffer, for [`unpack`].
pub(crate) fn pack(msg: &RawMessage) -> Box<[u8]> {
    let mut out = Vec::with_capacity(msg.body.len() + 256);
    put_bytes(&mut out, &msg.body);
    put_str(&mut out, &msg.content_type);
    put_str(&mut out, &msg.content_encoding);
    let di = &msg.delivery_info;
    put_str(&mut out, &di.exchange);
    put_str(&mut out, &di.routing_key);
    put_len(&mut out, di.priority.map_or(0, |p| usize::from(p) + 1));
    out.push(u8::from(di.redelivered));
    put_object(&mut out, &msg.headers);
    put_object(&mut out, &msg.properties);
    // A copy of exactly its size: shrinking `out` in place would leave a small free gap
    // beside every held message, which the allocator cannot give back.
    Box::from(out.as_slice())
}

/// The message [`pack`] packed; `None` for a buffer it did not make.
pub(crate) fn unpack(buf: &[u8]) -> Option<RawMessage> {
    let mut r = Reader(buf);
    let body = r.bytes()?.to_vec();
    let content_type = r.string()?;
    let content_encoding = r.string()?;
    let exchange = r.string()?;
    let routing_key = r.string()?;
    let priority = match r.len()? {
        0 => None,
        p => Some(u8::try_from(p - 1).ok()?),
    };
    let redelivered = r.byte()? != 0;
    let headers = r.object()?;
    let properties = r.object()?;
    r.0.is_empty().then_some(RawMessage {
        body,
        content_type,
        content_encoding,
        headers: headers.into(),
        properties,
        delivery_info: DeliveryInfo {
            exchange,
            routing_key,
            priority,
            redelivered,
        },
    })
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    put_u64(out, n as u64);
}

fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

/// After the common strings' indexes: a lowercase hyphenated UUID (task ids, correlation
/// ids, reply queues) as its 16 bytes.
const UUID: usize = COMMON.len();
/// After that: `LITERAL + length`, then the string's bytes.
const LITERAL: usize = UUID + 1;

/// A common string as its index, a UUID as its 16 bytes, any other as `LITERAL + length`
/// and its bytes.
fn put_str(out: &mut Vec<u8>, s: &str) {
    if let Some(i) = COMMON.iter().position(|c| *c == s) {
        put_len(out, i);
    } else if let Some(uuid) = canonical_uuid(s) {
        put_len(out, UUID);
        out.extend_from_slice(uuid.as_bytes());
    } else {
        put_len(out, LITERAL + s.len());
        out.extend_from_slice(s.as_bytes());
    }
}

fn put_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    put_len(out, map.len());
    for (k, v) in map {
        put_str(out, k);
        put_value(out, v);
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(UINT);
                put_u64(out, u);
            } else if let Some(i) = n.as_i64() {
                // Negative: -(i + 1) fits in u64.
                out.push(NEG);
                put_u64(out, !(i as u64));
            } else {
                out.push(FLOAT);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
            }
        }
        Value::String(s) => {
            out.push(STRING);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            put_len(out, items.len());
            for item in items {
                put_value(out, item);
            }
        }
        Value::Object(map) => {
            out.push(OBJECT);
            put_object(out, map);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        let n = self.len()?;
        if let Some(s) = COMMON.get(n) {
            return Some((*s).to_owned());
        }
        if n == UUID {
            let b = self.take(16)?;
            let uuid = uuid::Uuid::from_slice(b).ok()?;
            return Some(uuid.hyphenated().to_string());
        }
        let b = self.take(n - LITERAL)?;
        String::from_utf8(b.to_vec()).ok()
    }

    fn object(&mut self) -> Option<Map<String, Value>> {
        let n = self.len()?;
        let mut map = Map::with_capacity(n.min(self.0.len()));
        for _ in 0..n {
            let k = self.string()?;
            let v = self.value()?;
            map.insert(k, v);
        }
        Some(map)
    }

    fn value(&mut self) -> Option<Value> {
        Some(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UINT => Value::Number(self.u64()?.into()),
            NEG => Value::Number((!self.u64()? as i64).into()),
            FLOAT => {
                let b: [u8; 8] = self.take(8)?.try_into().ok()?;
                Value::Number(Number::from_f64(f64::from_le_bytes(b))?)
            }
            STRING => Value::String(self.string()?),
            ARRAY => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(self.0.len()));
                for _ in 0..n {
                    items.push(self.value()?);
                }
                Value::Array(items)
            }
            OBJECT => Value::Object(self.object()?),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use serde_json::json;

    /// `n` deliveries from a fresh memory broker, their bodies `"0"`, `"1"`, ...
    async fn deliveries(name: &str, n: usize) -> (MemoryBroker, Vec<Delivery>) {
        let broker = MemoryBroker::named(name);
        for i in 0..n {
            let msg = RawMessage {
                body: i.to_string().into_bytes(),
                ..RawMessage::default()
            };
            broker.publish(&msg, "", "q").unwrap();
        }
        let mut consumer = broker.consume(&["q".to_string()], 0).unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(consumer.next().await.unwrap());
        }
        (broker, out)
    }

    fn body(held: Held) -> String {
        let d = held.into_delivery();
        let b = String::from_utf8(d.message.body.clone()).unwrap();
        drop(d); // memory: restored to its queue
        b
    }

    #[test]
    fn equal_etas_get_equal_instants_and_eta_order_is_kept() {
        let hold = Hold::new(Arc::new(Semaphore::new(1)));
        let eta = Utc::now() + chrono::Duration::seconds(5);
        let first = hold.due(eta);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(hold.due(eta), first, "the same eta, the same instant");
        let later = hold.due(eta + chrono::Duration::microseconds(1));
        assert_eq!(later - first, Duration::from_micros(1));
        let left = first - Instant::now();
        assert!(
            left > Duration::from_secs(4) && left <= Duration::from_secs(5),
            "{left:?}"
        );
        let past = hold.due(Utc::now() - chrono::Duration::seconds(1));
        assert!(past <= Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn timers_come_due_in_time_order_then_wait_in_line_for_a_slot() {
        let (broker, ds) = deliveries("hold-order", 5).await;
        let hold = Hold::new(Arc::new(Semaphore::new(1)));
        let t0 = Instant::now();
        let at = [30, 10, 20, 10, 0];
        for (d, ms) in ds.into_iter().zip(at) {
            hold.until(t0 + Duration::from_millis(ms), Held::new(d, false))
                .map_err(|_| ())
                .unwrap();
        }
        assert_eq!(hold.len(), 5);
        let mut order = Vec::new();
        let mut slots = Vec::new();
        // Nothing is due before its time, and with the only slot taken nothing comes out.
        for _ in 0..5 {
            let (held, slot) = hold.next().await;
            order.push((body(held), (Instant::now() - t0).as_millis()));
            slots.push(slot);
            if slots.len() == 1 {
                assert!(hold.try_slot().is_none(), "the only slot is taken");
                let waited = tokio::time::timeout(Duration::from_secs(60), hold.next()).await;
                assert!(waited.is_err(), "no slot, nothing comes out");
            }
            slots.clear();
        }
        // Equal times keep their order of arrival; the one slot was held for 60 s once.
        let bodies: Vec<&str> = order.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(bodies, ["4", "1", "3", "2", "0"]);
        assert_eq!(order[0].1, 0);
        assert_eq!(hold.len(), 0);
        assert_eq!(broker.queue_len("q"), 5, "dropped deliveries went back");
    }

    #[tokio::test(start_paused = true)]
    async fn ready_messages_go_first_in_order_and_close_hands_everything_back() {
        let (_broker, ds) = deliveries("hold-ready", 4).await;
        let slots = Arc::new(Semaphore::new(1));
        let hold = Hold::new(slots.clone());
        let mut ds = ds.into_iter();
        let first = hold.try_slot().expect("a free slot and nobody waiting");
        hold.ready(Held::new(ds.next().unwrap(), true))
            .map_err(|_| ())
            .unwrap();
        hold.ready(Held::new(ds.next().unwrap(), false))
            .map_err(|_| ())
            .unwrap();
        drop(first);
        // A slot is free but two wait for one: a newcomer does not jump the line.
        assert!(hold.try_slot().is_none());
        let (held, slot) = hold.next().await;
        assert!(held.rated());
        assert_eq!(body(held), "0");
        drop(slot);
        hold.until(
            Instant::now() + Duration::from_secs(3600),
            Held::new(ds.next().unwrap(), false),
        )
        .map_err(|_| ())
        .unwrap();
        let back = hold.close();
        let bodies: Vec<String> = back.into_iter().map(body).collect();
        assert_eq!(bodies, ["1", "2"], "ready first, then by time");
        let late = hold.ready(Held::new(ds.next().unwrap(), false));
        assert!(late.is_err(), "a closed hold takes nothing");
        assert_eq!(hold.len(), 0);
        assert_eq!(slots.available_permits(), 1);
    }

    fn sample() -> RawMessage {
        let mut msg = RawMessage {
            body: br#"[[1, 2], {"x": -3.25}, {"callbacks": null}]"#.to_vec(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            delivery_info: DeliveryInfo {
                exchange: "".into(),
                routing_key: "celery.special".into(),
                priority: Some(9),
                redelivered: true,
            },
            ..RawMessage::default()
        };
        let headers = json!({
            "lang": "py", "task": "tasks.add", "id": "0e4f0b8c-0000-4000-8000-000000000001",
            "eta": "2026-01-01T00:00:00+00:00", "retries": 0, "timelimit": [null, 2.5],
            "group_index": -1, "big": u64::MAX, "small": i64::MIN, "tiny": 1e-300,
            "stamps": {}, "stamped_headers": [], "é": "ünïcode",
            "upper": "0E4F0B8C-0000-4000-8000-000000000001", "braced": "{0e4f0b8c-0000-4000-8000-000000000001}",
            "simple": "0e4f0b8c000040008000000000000001", "nested": [[{"a": [true, false]}]],
        });
        msg.headers = headers.as_object().unwrap().clone().into();
        msg.properties = json!({"correlation_id": "x", "reply_to": "r", "priority": 0})
            .as_object()
            .unwrap()
            .clone();
        msg
    }

    #[test]
    fn packing_round_trips_exactly_and_keeps_key_order() {
        let msg = sample();
        let packed = pack(&msg);
        let back = unpack(&packed).expect("unpacks");
        assert_eq!(back, msg);
        let keys: Vec<&String> = back.headers.keys().collect();
        let want: Vec<&String> = msg.headers.keys().collect();
        assert_eq!(keys, want);
        assert_eq!(
            serde_json::to_string(&back.headers).unwrap(),
            serde_json::to_string(&msg.headers).unwrap()
        );
        let empty = RawMessage::default();
        assert_eq!(unpack(&pack(&empty)), Some(empty));
    }

    #[test]
    fn a_truncated_or_padded_buffer_does_not_unpack() {
        let packed = pack(&sample());
        for cut in 0..packed.len() {
            assert_eq!(unpack(&packed[..cut]), None, "cut at {cut}");
        }
        let mut padded = packed.to_vec();
        padded.push(0);
        assert_eq!(unpack(&padded), None);
    }

    #[test]
    fn a_celery_message_packs_small() {
        let msg = sample();
        let json = serde_json::to_vec(&msg.headers).unwrap().len()
            + serde_json::to_vec(&msg.properties).unwrap().len()
            + msg.body.len();
        assert!(pack(&msg).len() < json, "{} >= {json}", pack(&msg).len());
    }
}
