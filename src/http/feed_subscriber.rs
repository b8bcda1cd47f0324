//! The subscribers of one feed and the fan-out that writes to them.
//!
//! A subscription starts as an ordinary hyper answer: `text/event-stream`, chunked, whose body
//! is the feed's newest frames. Once hyper has flushed that first chunk, the connection is
//! handed off (`server.rs` takes the socket back from hyper, see [`Ticket`]) to its feed's
//! [`Group`]: one fan-out task per feed that writes each new snapshot to every socket of the
//! feed itself, as HTTP/1.1 chunks (for an HTTP/1.0 request, which hyper answers with a body
//! delimited by the connection's end, the events as they are).
//!
//! Why not a hyper body per subscriber: then every event wakes one task per subscriber, which
//! polls hyper's connection, which writes its socket; with 10,000 subscribers that was 29% of
//! the server's core in tokio's run queue alone, and each connection kept hyper's buffers
//! (about 13 KiB of the 15 KiB a subscriber cost). The fan-out is one wake per feed per
//! event and a loop of `writev`s, and a handed-off subscriber is its socket and a few words.
//!
//! A subscriber slow to read (its socket's send buffer full) is not waited for: it keeps the
//! remainder of a chunk it could not finish, and on a later try it sends what it missed from
//! the feed's newest snapshot: the kept changes of state, then each deal's newest frame
//! (`Snapshot::since`). Nothing queues per subscriber beyond one chunk.

use std::convert::Infallible;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{header, HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body as HttpBody, Frame as HttpFrame, SizeHint};
use livestock_core::limits::{FEED_HEARTBEAT_MS, FEED_TICK_MS};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::http::body::Body;
use crate::http::feed_frame::{Frame, Snapshot, HEARTBEAT, HEARTBEAT_CHUNK, LAST_CHUNK};
use crate::sync::os::Mutex;

/// Sockets written between two yields of the fan-out: a round to 10,000 subscribers is
/// about 100 ms of `writev`, during which reserves on the same core must still run. A round
/// of counters yields often (it can wait). A change of state (a sell-out) yields every 15-20
/// ms only: each yield waits for every task ready to run, and with the server saturated by a
/// drop that is hundreds of requests, so yielding often made a sell-out take several times
/// its own cost to reach everyone. Reserves then wait up to one such stretch.
const WRITES_PER_YIELD: usize = 64;
const WRITES_PER_YIELD_URGENT: usize = 2048;
/// A feed that is over gives its slow subscribers this many retries (one a tick) to take
/// their last chunks before their sockets are closed anyway.
const CLOSING_RETRIES: u32 = 100;

/// A place among the subscribers, given back when the subscriber is dropped (the client went
/// away, or the feed ended).
pub struct Seat(Arc<AtomicUsize>);

impl Seat {
    /// A seat already counted in `total`.
    pub fn new(total: Arc<AtomicUsize>) -> Seat {
        Seat(total)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The time the fan-outs spent writing, and their writes, since the server started: the
/// publisher charges it to the feed's budget.
#[derive(Debug, Default)]
pub struct WriteMeter {
    ns: AtomicU64,
    writes: AtomicU64,
}

impl WriteMeter {
    fn add(&self, elapsed: Duration, writes: u64) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.ns.fetch_add(ns, Relaxed);
        self.writes.fetch_add(writes, Relaxed);
    }

    /// (ns, writes) so far.
    pub fn read(&self) -> (u64, u64) {
        (self.ns.load(Relaxed), self.writes.load(Relaxed))
    }
}

/// The subscribers of one live feed (a deal's or a stream's) and its fan-out task.
pub struct Group {
    meter: Arc<WriteMeter>,
    joining: Mutex<Joining>,
    joined: Notify,
}

#[derive(Default)]
struct Joining {
    subscribers: Vec<Subscriber>,
    /// A fan-out task runs for this group (it stops when it has no subscriber left).
    running: bool,
}

impl Group {
    /// A feed's subscribers, whose writes go to `meter`.
    pub fn new(meter: Arc<WriteMeter>) -> Group {
        Group { meter, joining: Mutex::default(), joined: Notify::new() }
    }
}

/// A subscription the handler made, waiting for its connection to be handed off.
struct Waiting {
    group: Arc<Group>,
    rx: watch::Receiver<Arc<Snapshot>>,
    sent_id: u64,
    seat: Seat,
}

/// What a feed answer tells the connection that carries it: the subscription to hand off, and
/// how far hyper got with the first chunk. Travels as a response extension (cloned, hence the
/// `Arc`).
#[derive(Clone)]
pub struct Ticket(Arc<TicketInner>);

struct TicketInner {
    phase: AtomicU8,
    waiting: Mutex<Option<Waiting>>,
}

const PHASE_ANSWERED: u8 = 0;
/// The body gave hyper its first (and only) chunk.
const PHASE_GIVEN: u8 = 1;
/// Hyper flushed its buffer after that: the head and the first chunk are on the socket, and
/// hyper has nothing more to write.
const PHASE_FLUSHED: u8 = 2;

impl Ticket {
    /// Hyper flushed the connection: the first chunk, if given, is out.
    pub fn flushed(&self) {
        let _ = self.0.phase.compare_exchange(PHASE_GIVEN, PHASE_FLUSHED, Relaxed, Relaxed);
    }

    /// Whether the connection may be taken from hyper now.
    pub fn ready(&self) -> bool {
        self.0.phase.load(Relaxed) == PHASE_FLUSHED
    }

    /// Hands `stream` to the feed's fan-out, with `guard` kept for as long as the socket is
    /// (the server's count of open connections). `chunked`: hyper answered HTTP/1.1 with a
    /// chunked body (else HTTP/1.0, delimited by the connection's end).
    pub fn hand_off(&self, stream: TcpStream, guard: Box<dyn Send + Sync>, chunked: bool) {
        let Some(waiting) = self.0.waiting.lock().take() else { return };
        let subscriber = Subscriber {
            stream,
            sent_id: waiting.sent_id,
            chunked,
            rest: Bytes::new(),
            _seat: waiting.seat,
            _guard: guard,
        };
        let group = waiting.group;
        let spawn = {
            let mut joining = group.joining.lock();
            joining.subscribers.push(subscriber);
            !std::mem::replace(&mut joining.running, true)
        };
        if spawn {
            tokio::spawn(fan_out(group.clone(), waiting.rx));
        } else {
            group.joined.notify_one();
        }
    }
}

/// The first events of a live feed's answer, then nothing: the fan-out writes the rest once
/// the connection is handed off. Never ends by itself (the connection is taken from hyper).
struct FirstEvents {
    bytes: Option<Bytes>,
    ticket: Ticket,
}

impl HttpBody for FirstEvents {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<HttpFrame<Bytes>, Infallible>>> {
        match self.bytes.take() {
            Some(bytes) => {
                self.ticket.0.phase.store(PHASE_GIVEN, Relaxed);
                Poll::Ready(Some(Ok(HttpFrame::data(bytes))))
            }
            // No waker kept: nothing more will come through hyper.
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The streaming answer of a live feed (`group`), from the receiver's current snapshot on. It
/// carries a [`Ticket`] in its extensions for the connection to hand it off.
pub fn sse(rx: watch::Receiver<Arc<Snapshot>>, group: Arc<Group>, seat: Seat) -> Response<Body> {
    let snapshot = Arc::clone(&rx.borrow());
    let waiting = Waiting { group, rx, sent_id: snapshot.last_id(), seat };
    let ticket = Ticket(Arc::new(TicketInner {
        phase: AtomicU8::new(PHASE_ANSWERED),
        waiting: Mutex::new(Some(waiting)),
    }));
    let body = FirstEvents { bytes: Some(snapshot.first_events()), ticket: ticket.clone() };
    let mut response = answer(Body::Stream(body.boxed_unsync()));
    response.extensions_mut().insert(ticket);
    response
}

/// The answer of a feed that is already over (its deals ended, or no publisher runs): its
/// newest frames, then the end, through hyper alone.
pub fn sse_ended(snapshot: &Snapshot, seat: Seat) -> Response<Body> {
    let bytes = snapshot.first_events();
    let chunks = futures_util::stream::once(async move {
        let _seat = seat;
        Ok::<_, Infallible>(HttpFrame::data(bytes))
    });
    answer(Body::Stream(StreamBody::new(chunks).boxed_unsync()))
}

fn answer(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied answers by default, which would hold events back: this tells it not
    // to for this answer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One handed-off subscriber: its socket, the newest id it sent, the rest of a chunk its
/// socket did not take.
struct Subscriber {
    stream: TcpStream,
    sent_id: u64,
    /// Its body is chunked (HTTP/1.1); else the events go as they are (HTTP/1.0).
    chunked: bool,
    rest: Bytes,
    _seat: Seat,
    _guard: Box<dyn Send + Sync>,
}

/// What a write left a subscriber as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Everything it had to send is out.
    All,
    /// Its socket is full: it tries again later.
    Blocked,
    /// Its socket failed (the client went away): dropped.
    Gone,
}

impl Subscriber {
    /// A frame as this subscriber's body carries it.
    fn wire<'f>(&self, frame: &'f Frame) -> &'f Bytes {
        if self.chunked {
            &frame.chunk
        } else {
            &frame.bytes
        }
    }

    /// Writes the rest of a chunk, then what `snapshot` has past `sent_id`, in one `writev`
    /// when it fits (the usual case: one frame).
    fn write(&mut self, snapshot: &Snapshot) -> Wrote {
        loop {
            let frames = snapshot.since(self.sent_id);
            if self.rest.is_empty() && frames.is_empty() {
                return Wrote::All;
            }
            let mut slices = [IoSlice::new(&[]); 16];
            let mut n = 0;
            if !self.rest.is_empty() {
                slices[0] = IoSlice::new(&self.rest);
                n = 1;
            }
            for frame in frames.iter().take(slices.len() - n) {
                slices[n] = IoSlice::new(self.wire(frame));
                n += 1;
            }
            let written = match self.stream.try_write_vectored(&slices[..n]) {
                Ok(written) => written,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Wrote::Blocked,
                Err(_) => return Wrote::Gone,
            };
            if written == 0 {
                return Wrote::Gone;
            }
            if !self.take_written(written, frames) {
                return Wrote::Blocked;
            }
        }
    }

    /// Accounts for `written` bytes of the rest and then of `frames`' chunks; a chunk written
    /// in part leaves its remainder as the rest. Returns whether all of it was written.
    fn take_written(&mut self, mut written: usize, frames: &[Frame]) -> bool {
        let rest = self.rest.len().min(written);
        self.rest.advance(rest);
        written -= rest;
        if !self.rest.is_empty() {
            return false;
        }
        for frame in frames {
            if written == 0 {
                break;
            }
            self.sent_id = frame.id;
            let wire = self.wire(frame);
            if written < wire.len() {
                self.rest = wire.slice(written..);
                return false;
            }
            written -= wire.len();
        }
        true
    }

    /// A heartbeat, unless the socket is in the middle of a chunk (the rest goes first).
    fn heartbeat(&mut self) -> Wrote {
        if !self.rest.is_empty() {
            return Wrote::Blocked;
        }
        let heartbeat = if self.chunked { HEARTBEAT_CHUNK } else { HEARTBEAT };
        match self.stream.try_write(heartbeat) {
            Ok(n) if n == heartbeat.len() => Wrote::All,
            Ok(0) => Wrote::Gone,
            Ok(n) => {
                self.rest = Bytes::from_static(heartbeat).slice(n..);
                Wrote::Blocked
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Wrote::Blocked,
            Err(_) => Wrote::Gone,
        }
    }
}

/// Where a subscriber is with the feed's newest snapshot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Due {
    /// It has sent it.
    No,
    /// It is to write it in this round.
    Now,
    /// Its socket was full: it tries again on the next retry tick (or the next snapshot).
    Retry,
}

/// A group's fan-out: writes every new snapshot of its feed to its subscribers, retries the
/// slow ones every tick, sends heartbeats, and ends the stream of each when the feed is over.
/// Stops when it has no subscriber left (the next one to join starts another).
async fn fan_out(group: Arc<Group>, mut rx: watch::Receiver<Arc<Snapshot>>) {
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut due: Vec<Due> = Vec::new();
    let period = Duration::from_millis(FEED_HEARTBEAT_MS);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(Duration::from_millis(FEED_TICK_MS));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender_gone = false;
    let mut closing_retries = 0;
    let mut snapshot = Arc::clone(&rx.borrow_and_update());
    loop {
        {
            let mut joining = group.joining.lock();
            subscribers.append(&mut joining.subscribers);
            // The newcomers may have missed what came since they were answered.
            due.resize(subscribers.len(), Due::Now);
            if subscribers.is_empty() {
                joining.running = false;
                return;
            }
        }
        if !sender_gone && rx.has_changed().unwrap_or(false) {
            snapshot = Arc::clone(&rx.borrow_and_update());
            due.fill(Due::Now);
        }
        let over = snapshot.closed || sender_gone;
        write_round(&mut subscribers, &mut due, &mut rx, &mut snapshot, over, &group.meter).await;
        let any_retry = due.contains(&Due::Retry);
        if over {
            closing_retries += 1;
            if !any_retry || closing_retries > CLOSING_RETRIES {
                // Dropping the sockets closes them; a stream not ended (its client would not
                // read) is cut.
                subscribers.clear();
                due.clear();
                // Newcomers may still join (answered just before the end): they are ended on
                // the next turn, with the same snapshot.
                continue;
            }
        }
        tokio::select! {
            changed = rx.changed(), if !sender_gone => {
                sender_gone = changed.is_err();
                snapshot = Arc::clone(&rx.borrow_and_update());
                due.fill(Due::Now);
            }
            () = group.joined.notified() => {}
            _ = retry.tick(), if any_retry || over => {
                due.iter_mut().filter(|d| **d == Due::Retry).for_each(|d| *d = Due::Now);
            }
            _ = heartbeat.tick() => {
                let mut i = 0;
                while i < subscribers.len() {
                    if subscribers[i].heartbeat() == Wrote::Gone {
                        subscribers.swap_remove(i);
                        due.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }
}

/// Writes the newest snapshot to every subscriber that is due, yielding now and then. A newer
/// snapshot published meanwhile is taken at the next yield and the round goes on with it from
/// where it is, wrapping round: a sell-out waits for a few milliseconds of writes, not for a
/// whole round of counters. With `over`, ends each stream it completes.
async fn write_round(
    subscribers: &mut Vec<Subscriber>,
    due: &mut Vec<Due>,
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    snapshot: &mut Arc<Snapshot>,
    over: bool,
    meter: &WriteMeter,
) {
    let mut i = 0;
    // Positions looked at since the snapshot last changed: a whole turn ends the round.
    let mut looked = 0;
    let mut writes = 0;
    // Writes since the last yield, and when they started: what goes to the meter.
    let mut started = tokio::time::Instant::now();
    let mut timed = 0;
    while looked < subscribers.len() {
        if i >= subscribers.len() {
            i = 0;
        }
        looked += 1;
        if due[i] != Due::Now {
            i += 1;
            continue;
        }
        let mut wrote = subscribers[i].write(snapshot);
        if over && wrote == Wrote::All {
            // Ended (the end chunk written, or cut short: the client sees the stream break;
            // HTTP/1.0: the end of the connection is the end of the body).
            if subscribers[i].chunked {
                let _ = subscribers[i].stream.try_write(LAST_CHUNK);
            }
            wrote = Wrote::Gone;
        }
        match wrote {
            Wrote::All => {
                due[i] = Due::No;
                i += 1;
            }
            Wrote::Blocked => {
                due[i] = Due::Retry;
                i += 1;
            }
            Wrote::Gone => {
                subscribers.swap_remove(i);
                due.swap_remove(i);
            }
        }
        writes += 1;
        timed += 1;
        let per_yield = if snapshot.urgent { WRITES_PER_YIELD_URGENT } else { WRITES_PER_YIELD };
        if writes % per_yield == 0 {
            meter.add(started.elapsed(), std::mem::take(&mut timed));
            tokio::task::yield_now().await;
            started = tokio::time::Instant::now();
            if !over && rx.has_changed().unwrap_or(false) {
                *snapshot = Arc::clone(&rx.borrow_and_update());
                due.fill(Due::Now);
                looked = 0;
            }
        }
    }
    meter.add(started.elapsed(), timed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::feed_frame::{FeedState, Stock};

    fn frame(id: u64) -> Frame {
        Frame::encode(
            id,
            "d",
            &Stock { state: FeedState::Live, available: id, held: 0, sold: 0, waiting: 0 },
        )
    }

    /// A subscriber on one end of a loopback connection, and the other end.
    async fn pair() -> (Subscriber, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let stream = TcpStream::from_std(server).unwrap();
        let seat = Seat::new(Arc::new(AtomicUsize::new(1)));
        let subscriber = Subscriber {
            stream,
            sent_id: 0,
            chunked: true,
            rest: Bytes::new(),
            _seat: seat,
            _guard: Box::new(()),
        };
        (subscriber, client)
    }

    #[test]
    fn a_partial_write_keeps_the_rest_of_its_chunk_and_later_frames_follow_it() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (mut subscriber, _client) = pair().await;
            let frames = [frame(3), frame(5)];
            let first = frames[0].chunk.len();
            assert!(!subscriber.take_written(first + 4, &frames));
            assert_eq!((subscriber.sent_id, &subscriber.rest[..]), (5, &frames[1].chunk[4..]));
            assert!(subscriber.take_written(frames[1].chunk.len() - 4, &[]));
            assert!(subscriber.rest.is_empty());
        });
    }

    #[test]
    fn a_slow_subscriber_sends_the_changes_of_state_it_missed_then_the_newest() {
        use std::io::Read;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (mut subscriber, mut client) = pair().await;
            subscriber.sent_id = 1;
            // Missed: 2 (a change of state, kept) and 3 (counters, superseded); 4 is newest.
            let snapshot = Snapshot::new(vec![frame(4)], [frame(2)], false);
            // A new socket's readiness is learnt from the reactor.
            subscriber.stream.writable().await.unwrap();
            assert!(subscriber.write(&snapshot) == Wrote::All);
            assert_eq!(subscriber.sent_id, 4);
            let want = [frame(2).chunk, frame(4).chunk].concat();
            let mut got = vec![0; want.len()];
            client.read_exact(&mut got).unwrap();
            assert_eq!(got, want);
        });
    }
}
