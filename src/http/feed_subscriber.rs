//! One subscriber of the live feed: its `text/event-stream` answer, which sends the frames of
//! its feed's newest snapshot it has not sent yet (in id order), a heartbeat comment every
//! `FEED_HEARTBEAT_MS`, and ends when its feed closes. It holds a seat among the subscribers
//! for as long as its body lives.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use livestock_core::limits::FEED_HEARTBEAT_MS;
use tokio::sync::watch;

use crate::http::body::Body;
use crate::http::feed_frame::{Frame, Snapshot, HEARTBEAT};

/// A place among the subscribers, given back when the subscription's body is dropped.
pub struct Seat(Arc<AtomicUsize>);

impl Seat {
    /// A seat already counted in `count`.
    pub fn new(count: Arc<AtomicUsize>) -> Seat {
        Seat(count)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One subscriber: the frames it has yet to send, and the newest id it sent.
struct Subscriber {
    rx: watch::Receiver<Arc<Snapshot>>,
    pending: VecDeque<Bytes>,
    sent_id: u64,
    over: bool,
    /// Made on the first poll, inside the runtime (a timer needs one).
    heartbeat: Option<tokio::time::Interval>,
    _seat: Seat,
}

impl Subscriber {
    /// Queues the newest snapshot's frames this subscriber has not sent, oldest first. A
    /// subscriber that fell behind skips every snapshot in between: it sends each deal's newest.
    fn take_latest(&mut self) {
        let snapshot = Arc::clone(&self.rx.borrow_and_update());
        let mut fresh: Vec<&Frame> =
            snapshot.frames.iter().filter(|f| f.id > self.sent_id).collect();
        fresh.sort_unstable_by_key(|f| f.id);
        for frame in fresh {
            self.pending.push_back(frame.bytes.clone());
            self.sent_id = frame.id;
        }
        self.over |= snapshot.closed;
    }

    /// The next chunk of the body; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            if self.over {
                return None;
            }
            let heartbeat = self.heartbeat.get_or_insert_with(|| {
                let period = Duration::from_millis(FEED_HEARTBEAT_MS);
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            tokio::select! {
                changed = self.rx.changed() => {
                    // An error: the channel's sender is gone (its feed ended). It always
                    // closes the snapshot first; a feed dropped without a word ends too.
                    self.over |= changed.is_err();
                    self.take_latest();
                }
                _ = heartbeat.tick() => return Some(Bytes::from_static(HEARTBEAT)),
            }
        }
    }
}

/// The streaming answer: `text/event-stream` from the receiver's current snapshot on.
pub fn sse(rx: watch::Receiver<Arc<Snapshot>>, seat: Seat) -> Response<Body> {
    let mut subscriber = Subscriber {
        rx,
        pending: VecDeque::new(),
        sent_id: 0,
        over: false,
        heartbeat: None,
        _seat: seat,
    };
    subscriber.take_latest();
    let chunks = futures_util::stream::unfold(subscriber, |mut subscriber| async move {
        let bytes = subscriber.next().await?;
        Some((Ok::<_, Infallible>(hyper::body::Frame::data(bytes)), subscriber))
    });
    let mut response = Response::new(Body::Stream(StreamBody::new(chunks).boxed_unsync()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied answers by default, which would hold events back: this tells it not
    // to for this answer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
