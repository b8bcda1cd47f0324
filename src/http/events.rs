//! The event stream, `GET /v1/events`: every decided change, as Server-Sent Events, read from
//! the write-ahead log (docs/operations.md, "Event stream").
//!
//! One source, one cursor: a subscriber reads the log from its position with a `LogReader`
//! (`wal/reader.rs`), up to the newest durable record, then waits for the log to make more
//! durable and reads on. There is no separate live path to hand over to: the records sent
//! "live" are read from the log like the backlog, so the hand-over from catching up to
//! keeping up can neither drop nor repeat a record, and nothing is sent that a crash could
//! take back (only durable records are read; in relaxed durability, only fsynced ones).
//!
//! Positions: the SSE `id` of an event is its record's LSN. A consumer resumes with
//! `Last-Event-ID: N` or `?after=N` and gets every change after N; with neither, from the
//! oldest the log holds, or `?from=now` for only what comes next. `Last-Event-ID` wins over
//! the query: an `EventSource` reconnects to the URL it was given (with its first `?after=`)
//! and sends the id it last saw in the header, which is the newer one.
//!
//! Bounds: at most `events_subscribers_max` subscribers (503 `events_full`). A subscriber
//! reads `EVENTS_CHUNK_BYTES` of log at a time, and the next chunk only once hyper asked for
//! more body (the connection took the last one), so a slow consumer holds one chunk in the
//! server, never a queue; if it falls so far behind that checkpoints delete its records, its
//! stream ends with a `cursor_expired` event (and resuming gets 410). A heartbeat comment
//! every `EVENTS_HEARTBEAT_MS` keeps proxies from closing an idle stream. Every stream ends
//! when the server stops (`Events::close`, called by `server.rs` before it waits for the
//! connections), or at once after its backlog when no server runs (tests driving `handle`).
//!
//! Cluster mode: not served (501 `not_implemented`, on every node): the raft log has other
//! positions, entries voided by a refused proposal, and is purged by snapshots. A single node
//! serves it (docs/replication.md, "Limits").

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use livestock_core::error::ErrorCode;
use livestock_core::ids::HoldIdKey;
use livestock_core::limits::{EVENTS_CHUNK_BYTES, EVENTS_HEARTBEAT_MS};
use tokio::sync::watch;

use crate::http::body::Body;
use crate::http::error::ApiError;
use crate::http::event_json::event_json;
use crate::http::feed_frame::HEARTBEAT;
use crate::http::feed_subscriber::Seat;
use crate::metrics::Limit;
use crate::node::Node;
use crate::wal::{LogReader, LogState, ReadError, Record};

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// After this position (`Last-Event-ID`, `?after=`).
    After(u64),
    /// From the oldest record the log holds (no cursor, or `?from=oldest`).
    Oldest,
    /// After the newest durable record (`?from=now`).
    Now,
}

/// The `Last-Event-ID` header.
const LAST_EVENT_ID: &str = "last-event-id";

/// The start a request asks for: `Last-Event-ID` if it has one, else its query (`after=N`,
/// `from=oldest|now`, at most one of them), else [`Start::Oldest`]. Anything else in the query
/// is refused (400): a misspelt `afer=` must not silently mean "from the oldest".
pub fn start_of(query: Option<&str>, headers: &HeaderMap) -> Result<Start, ApiError> {
    let mut from_query = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let start = match name {
            "after" => Start::After(position("after", value)?),
            "from" if value == "oldest" => Start::Oldest,
            "from" if value == "now" => Start::Now,
            "from" => return Err(ApiError::invalid("from: `oldest` or `now`")),
            _ => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {name:?} (after=N or from=oldest|now)"
                )))
            }
        };
        if from_query.replace(start).is_some() {
            return Err(ApiError::invalid("at most one of after= and from= (once)"));
        }
    }
    // An empty header is no id (an `EventSource` sends none before its first event).
    match headers.get(LAST_EVENT_ID).filter(|v| !v.is_empty()) {
        Some(id) => {
            let id = id.to_str().map_err(|_| ApiError::invalid("Last-Event-ID: not a position"))?;
            Ok(Start::After(position("Last-Event-ID", id)?))
        }
        None => Ok(from_query.unwrap_or(Start::Oldest)),
    }
}

/// A position: decimal digits (20 at most: a u64).
fn position(field: &str, raw: &str) -> Result<u64, ApiError> {
    let digits = !raw.is_empty() && raw.len() <= 20 && raw.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| raw.parse().ok())
        .flatten()
        .ok_or_else(|| ApiError::invalid(format!("{field}: not a log position (decimal digits)")))
}

/// The event stream of one server: its subscribers and whether it serves.
pub struct Events {
    subscribers_max: usize,
    subscribers: Arc<AtomicUsize>,
    /// True while a server serves: streams stay open for live records. False before it starts
    /// (a subscription then gets its backlog and ends) and once it stops (every stream ends).
    serving: watch::Sender<bool>,
}

impl Events {
    pub fn new(subscribers_max: usize) -> Events {
        Events {
            subscribers_max,
            subscribers: Arc::new(AtomicUsize::new(0)),
            serving: watch::Sender::new(false),
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Relaxed)
    }

    /// The server serves: streams stay open. Called before it accepts a connection.
    pub fn open(&self) {
        self.serving.send_replace(true);
    }

    /// The server stops: every stream ends (after the chunk it is sending), so that graceful
    /// shutdown, which waits for every answer to end, does not wait on a stream.
    pub fn close(&self) {
        self.serving.send_replace(false);
    }

    fn seat(&self, node: &Node) -> Result<Seat, ApiError> {
        let max = self.subscribers_max;
        match self.subscribers.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)) {
            Ok(_) => Ok(Seat::new(self.subscribers.clone())),
            Err(_) => {
                node.metrics().rejected(Limit::EventsSubscribers);
                Err(ApiError::new(
                    ErrorCode::EventsFull,
                    format!("the event stream has its {max} subscribers; retry later"),
                ))
            }
        }
    }

    /// `GET /v1/events`: the stream from `start`.
    pub fn subscribe(&self, node: &Node, start: Start) -> Result<Response<Body>, ApiError> {
        let Some(wal) = node.wal() else {
            let why = if node.replica().is_some() {
                "the event stream is not served in cluster mode (it reads a single node's log)"
            } else {
                "the event stream needs a write-ahead log; this node keeps its state in memory"
            };
            return Err(ApiError::new(ErrorCode::NotImplemented, why));
        };
        let durable = durable_of(&wal.state()).map_err(|reason| {
            ApiError::new(ErrorCode::StorageUnavailable, format!("the log failed: {reason}"))
        })?;
        let oldest = wal.oldest_lsn().map_err(|e| {
            ApiError::new(ErrorCode::StorageUnavailable, format!("cannot list the log: {e}"))
        })?;
        let after = resolve(start, durable, oldest)?;
        let seat = self.seat(node)?;
        let serving = self.serving.subscribe();
        // Without a server nothing would end a stream: it sends what is durable now and ends.
        let end_at = (!*serving.borrow()).then_some(durable);
        let subscriber = Subscriber {
            reader: Some(wal.reader(after)),
            log: wal.watch_state(),
            serving,
            end_at,
            key: node.allocator().config().hold_id_key,
            heartbeat: None,
            over: false,
            _seat: seat,
        };
        Ok(sse(subscriber))
    }
}

/// The newest durable position of a log in `state`, or why it has none.
fn durable_of(state: &LogState) -> Result<u64, String> {
    match state {
        LogState::DurableUpTo(lsn) | LogState::Closed(lsn) => Ok(*lsn),
        LogState::Poisoned(reason) => Err(reason.clone()),
    }
}

/// The position a stream starts after, for a log durable up to `durable` whose oldest record
/// on disk is `oldest`; or 410 `cursor_expired` for a position it cannot serve.
fn resolve(start: Start, durable: u64, oldest: Option<u64>) -> Result<u64, ApiError> {
    // Everything after this is on disk (nothing, if no segment is).
    let oldest_after = oldest.map_or(durable, |first| first - 1);
    match start {
        Start::Oldest => Ok(oldest_after),
        Start::Now => Ok(durable),
        Start::After(n) if n > durable => Err(ApiError::new(
            ErrorCode::CursorExpired,
            format!(
                "position {n} is past the newest durable one ({durable}): it is not from this \
                 log (a data directory replaced or restored?); resynchronize from the current \
                 state and subscribe with from=now"
            ),
        )),
        Start::After(n) if n < oldest_after => Err(ApiError::new(
            ErrorCode::CursorExpired,
            format!(
                "the log no longer holds the changes after position {n} (it holds those after \
                 {oldest_after}); resynchronize from the current state and subscribe with from=now"
            ),
        )),
        Start::After(n) => Ok(n),
    }
}

/// One subscriber: its cursor in the log, what it waits on, its seat.
struct Subscriber {
    /// `None` only while a read runs on the blocking pool.
    reader: Option<LogReader>,
    log: watch::Receiver<LogState>,
    serving: watch::Receiver<bool>,
    /// Set when no server runs: the stream ends once it has sent up to here.
    end_at: Option<u64>,
    key: HoldIdKey,
    /// Made on first use, inside the runtime (a timer needs one).
    heartbeat: Option<tokio::time::Interval>,
    over: bool,
    _seat: Seat,
}

/// The bytes of a final event telling the consumer its position is gone (it would get 410 on
/// resuming; an `EventSource` hides statuses from its page, so it is told here).
fn expired_frame(e: &ReadError) -> Bytes {
    let body = ApiError::new(
        ErrorCode::CursorExpired,
        format!("{e}: resynchronize from the current state and subscribe with from=now"),
    )
    .reply()
    .body;
    let mut out = b"event: cursor_expired\ndata: ".to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Records as SSE events: `id: <position>` and `data: <one line of JSON>`, in order; records
/// that changed nothing are skipped.
fn frames(records: &[(u64, Record)], key: HoldIdKey) -> Vec<u8> {
    let mut out = Vec::new();
    for (lsn, record) in records {
        let Some(json) = event_json(*lsn, record.at_ms, &record.event, key) else { continue };
        let written = write!(out, "id: {lsn}\ndata: ");
        debug_assert!(written.is_ok(), "a Vec takes any write");
        if let Err(e) = serde_json::to_writer(&mut out, &json) {
            unreachable!("a JSON value always encodes into a Vec: {e}");
        }
        out.extend_from_slice(b"\n\n");
    }
    out
}

impl Subscriber {
    /// The next chunk of the body; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.over || (self.end_at.is_none() && !*self.serving.borrow()) {
                return None;
            }
            let state = self.log.borrow_and_update().clone();
            let Ok(durable) = durable_of(&state) else {
                // Poisoned: the process exits for recovery; the consumer resumes after it.
                return None;
            };
            let up_to = self.end_at.map_or(durable, |end| end.min(durable));
            let reader = self.reader.as_ref()?;
            if reader.next_lsn() <= up_to {
                match self.read(up_to).await? {
                    Ok(bytes) if bytes.is_empty() => continue,
                    Ok(bytes) => return Some(Bytes::from(bytes)),
                    Err(e @ ReadError::Expired { .. }) => {
                        self.over = true;
                        return Some(expired_frame(&e));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: reading the log failed");
                        return None;
                    }
                }
            }
            // Caught up.
            if self.end_at.is_some() || matches!(state, LogState::Closed(_)) {
                return None;
            }
            let heartbeat = self.heartbeat.get_or_insert_with(|| {
                let period = Duration::from_millis(EVENTS_HEARTBEAT_MS);
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            tokio::select! {
                changed = self.log.changed() => self.over |= changed.is_err(),
                changed = self.serving.changed() => self.over |= changed.is_err(),
                _ = heartbeat.tick() => return Some(Bytes::from_static(HEARTBEAT)),
            }
        }
    }

    /// One chunk of records up to `up_to`, read on the blocking pool (file I/O), as SSE bytes.
    /// `None` if the read's task failed.
    async fn read(&mut self, up_to: u64) -> Option<Result<Vec<u8>, ReadError>> {
        let mut reader = self.reader.take()?;
        let key = self.key;
        let (reader, read) = tokio::task::spawn_blocking(move || {
            let read = reader.read(up_to, EVENTS_CHUNK_BYTES).map(|records| frames(&records, key));
            (reader, read)
        })
        .await
        .ok()?;
        self.reader = Some(reader);
        Some(read)
    }
}

/// The streaming answer.
fn sse(subscriber: Subscriber) -> Response<Body> {
    let chunks = futures_util::stream::unfold(subscriber, |mut subscriber| async move {
        let bytes = subscriber.next().await?;
        Some((Ok::<_, Infallible>(hyper::body::Frame::data(bytes)), subscriber))
    });
    let mut response = Response::new(Body::Stream(StreamBody::new(chunks).boxed_unsync()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied answers by default, which would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(last_event_id: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(id) = last_event_id {
            headers.insert(LAST_EVENT_ID, HeaderValue::from_static(id));
        }
        headers
    }

    #[test]
    fn the_header_wins_over_the_query_and_the_default_is_the_oldest() {
        let start = |query: Option<&str>, id| start_of(query, &headers(id));
        assert_eq!(start(None, None), Ok(Start::Oldest));
        assert_eq!(start(Some(""), None), Ok(Start::Oldest));
        assert_eq!(start(Some("after=0"), None), Ok(Start::After(0)));
        assert_eq!(start(Some("after=42"), None), Ok(Start::After(42)));
        assert_eq!(start(Some("from=now"), None), Ok(Start::Now));
        assert_eq!(start(Some("from=oldest"), None), Ok(Start::Oldest));
        assert_eq!(start(None, Some("7")), Ok(Start::After(7)));
        // An EventSource reconnecting to `?after=3` after it saw 9.
        assert_eq!(start(Some("after=3"), Some("9")), Ok(Start::After(9)));
        assert_eq!(start(Some("from=now"), Some("9")), Ok(Start::After(9)));
        assert_eq!(start(Some("after=3"), Some("")), Ok(Start::After(3)), "empty: no id");
        for bad in [
            "after=",
            "after=-1",
            "after=1x",
            "after=+1",
            "after=99999999999999999999",
            "after=1&after=2",
            "after=1&from=now",
            "from=never",
            "afer=1",
            "after",
        ] {
            let refused = start(Some(bad), None).unwrap_err();
            assert_eq!(refused.code, ErrorCode::InvalidRequest, "{bad}");
        }
        assert!(start(None, Some("h1")).is_err());
    }

    #[test]
    fn positions_outside_the_log_are_expired() {
        // The log holds records 11.. (10 and before were deleted), durable up to 20.
        let oldest = Some(11);
        assert_eq!(resolve(Start::Oldest, 20, oldest), Ok(10));
        assert_eq!(resolve(Start::Now, 20, oldest), Ok(20));
        assert_eq!(resolve(Start::After(10), 20, oldest), Ok(10));
        assert_eq!(resolve(Start::After(20), 20, oldest), Ok(20));
        for gone in [0, 9, 21, u64::MAX] {
            let refused = resolve(Start::After(gone), 20, oldest).unwrap_err();
            assert_eq!(refused.code, ErrorCode::CursorExpired, "{gone}");
        }
        // A new log: everything from the first record.
        assert_eq!(resolve(Start::Oldest, 0, Some(1)), Ok(0));
        assert_eq!(resolve(Start::After(0), 0, Some(1)), Ok(0));
    }

    /// A data directory with records 1..=3 in one segment and 4..=6 in the next.
    fn two_segments(tag: &str) -> (std::path::PathBuf, Arc<dyn crate::wal::Storage>) {
        use crate::wal::record::{encode_frame, encode_payload};
        use crate::wal::segment::{segment_header, segment_name};
        use livestock_core::event::Event;
        use livestock_core::ids::HoldSeq;
        let path =
            std::env::temp_dir().join(format!("livestock-events-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let storage = Arc::new(crate::wal::DirStorage::open(&path).unwrap());
        for first in [1, 4] {
            let mut bytes = segment_header(first).to_vec();
            for lsn in first..first + 3 {
                let event = Event::Released { seq: HoldSeq(lsn), at_ms: 1_800_000_000_000 };
                let record = Record { at_ms: 1_800_000_000_000, event, reply: None };
                encode_frame(lsn, &encode_payload(&record), &mut bytes);
            }
            std::fs::write(path.join(segment_name(first)), bytes).unwrap();
        }
        (path, storage)
    }

    fn subscriber(
        storage: Arc<dyn crate::wal::Storage>,
        durable: u64,
        seats: &Arc<AtomicUsize>,
    ) -> (Subscriber, watch::Sender<LogState>, watch::Sender<bool>) {
        let (log_tx, log) = watch::channel(LogState::DurableUpTo(durable));
        let (serving_tx, serving) = watch::channel(true);
        seats.fetch_add(1, Relaxed);
        let subscriber = Subscriber {
            reader: Some(LogReader::new(storage, 0)),
            log,
            serving,
            end_at: None,
            key: HoldIdKey(1),
            heartbeat: None,
            over: false,
            _seat: Seat::new(seats.clone()),
        };
        (subscriber, log_tx, serving_tx)
    }

    fn ids(chunk: &[u8]) -> Vec<u64> {
        std::str::from_utf8(chunk)
            .unwrap()
            .lines()
            .filter_map(|line| line.strip_prefix("id: "))
            .map(|id| id.parse().unwrap())
            .collect()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    /// Only durable records go out; the stream waits for more, keeps the connection alive
    /// meanwhile, and ends when the server stops, giving its seat back.
    #[test]
    fn a_subscriber_sends_what_is_durable_waits_for_more_and_ends_on_stop() {
        let (path, storage) = two_segments("live");
        let seats = Arc::new(AtomicUsize::new(0));
        let (mut subscriber, log, serving) = subscriber(storage, 2, &seats);
        runtime().block_on(async {
            assert_eq!(ids(&subscriber.next().await.unwrap()), [1, 2]);
            // Caught up: a heartbeat (the paused clock runs to it), not record 3.
            assert_eq!(&subscriber.next().await.unwrap()[..], HEARTBEAT);
            log.send_replace(LogState::DurableUpTo(5));
            assert_eq!(ids(&subscriber.next().await.unwrap()), [3, 4, 5]);
            serving.send_replace(false);
            assert_eq!(subscriber.next().await, None);
        });
        drop(subscriber);
        assert_eq!(seats.load(Relaxed), 0, "the seat is given back");
        std::fs::remove_dir_all(path).unwrap();
    }

    /// A subscriber whose next record a checkpoint deleted gets the notice, then the end.
    #[test]
    fn a_subscriber_that_falls_behind_the_log_is_told_and_ended() {
        let (path, storage) = two_segments("behind");
        let seats = Arc::new(AtomicUsize::new(0));
        let (mut subscriber, log, _serving) = subscriber(storage, 2, &seats);
        runtime().block_on(async {
            assert_eq!(ids(&subscriber.next().await.unwrap()), [1, 2]);
            std::fs::remove_file(path.join(crate::wal::segment::segment_name(1))).unwrap();
            log.send_replace(LogState::DurableUpTo(6));
            let notice = subscriber.next().await.unwrap();
            let text = std::str::from_utf8(&notice).unwrap();
            assert!(
                text.starts_with(
                    "event: cursor_expired\ndata: {\"error\":{\"code\":\"cursor_expired\""
                ),
                "{text}"
            );
            assert!(text.ends_with("\n\n") && ids(&notice).is_empty(), "{text}");
            assert_eq!(subscriber.next().await, None);
        });
        std::fs::remove_dir_all(path).unwrap();
    }
}
