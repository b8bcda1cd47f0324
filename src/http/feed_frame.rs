//! What the live feed says about a deal, and its bytes: the `stock` event of the Server-Sent
//! Events stream (`GET /v1/deals/{id}/live`, `GET /v1/streams/{stream_id}/live`), the cacheable
//! availability answer (`GET /v1/deals/{id}/availability`) and its `ETag`.
//!
//! Pure: no clock, no I/O. A frame is encoded once per deal per change and its bytes shared by
//! every subscriber (a `Bytes` clone is a reference count, not a copy).

use bytes::Bytes;
use livestock_core::deal::{DealState, DealView};

/// A deal's state as a viewer sees it: the deal's own, with `sold_out` for a live deal that has
/// no unit available (what a reserve would be told), so an app can grey out its button on the
/// state alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    Scheduled,
    Live,
    SoldOut,
    Paused,
    Ended,
}

impl FeedState {
    pub fn of(state: DealState, available: u64) -> FeedState {
        match state {
            DealState::Scheduled => FeedState::Scheduled,
            DealState::Live if available == 0 => FeedState::SoldOut,
            DealState::Live => FeedState::Live,
            DealState::Paused => FeedState::Paused,
            DealState::Ended => FeedState::Ended,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            FeedState::Scheduled => "scheduled",
            FeedState::Live => "live",
            FeedState::SoldOut => "sold_out",
            FeedState::Paused => "paused",
            FeedState::Ended => "ended",
        }
    }
}

/// What the feed publishes of one deal: its state and counters, as read at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stock {
    pub state: FeedState,
    pub available: u64,
    pub held: u64,
    pub sold: u64,
    /// Entries waiting on the deal's waitlist (0 without one).
    pub waiting: u64,
}

impl Stock {
    pub fn of(view: &DealView) -> Stock {
        let c = view.counters;
        Stock {
            state: FeedState::of(view.state, c.available()),
            available: c.available(),
            held: c.held(),
            sold: c.sold(),
            waiting: view.waiting,
        }
    }
}

/// One encoded `stock` event, shared by every subscriber of its deal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Increasing over the server's life (one counter for every deal): a subscriber sends the
    /// frames it has not sent yet in id order, so ids increase along every connection.
    pub id: u64,
    /// The event, for a body hyper writes (the first events of a subscription).
    pub bytes: Bytes,
    /// The event as one HTTP/1.1 chunk (`{len:x}\r\n`, the event, `\r\n`), for the fan-out,
    /// which writes a subscriber's socket itself once hyper has sent the response's head.
    /// `bytes` is a slice of it: one allocation for both.
    pub chunk: Bytes,
}

/// Writes `{"deal_id":...,"state":...,"available":...,"held":...,"sold":...}` without the
/// closing brace. Deal ids are `[A-Za-z0-9._-]` (validated when the deal was made), so the id
/// needs no JSON escaping.
fn write_fields(out: &mut Vec<u8>, deal_id: &str, stock: &Stock) {
    use std::io::Write as _;
    debug_assert!(deal_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    let written = write!(
        out,
        "{{\"deal_id\":\"{deal_id}\",\"state\":\"{}\",\"available\":{},\"held\":{},\"sold\":{}",
        stock.state.as_str(),
        stock.available,
        stock.held,
        stock.sold
    );
    debug_assert!(written.is_ok(), "a Vec takes any write");
}

impl Frame {
    /// `id: N`, `event: stock`, `data: {...}` and the blank line that ends an event.
    pub fn encode(id: u64, deal_id: &str, stock: &Stock) -> Frame {
        use std::io::Write as _;
        let mut event = Vec::with_capacity(160);
        let head = write!(event, "id: {id}\nevent: stock\ndata: ");
        write_fields(&mut event, deal_id, stock);
        let tail = write!(event, ",\"waiting\":{}}}\n\n", stock.waiting);
        debug_assert!(head.is_ok() && tail.is_ok(), "a Vec takes any write");
        let mut chunk = Vec::with_capacity(event.len() + 8);
        let size = write!(chunk, "{:x}\r\n", event.len());
        debug_assert!(size.is_ok(), "a Vec takes any write");
        let start = chunk.len();
        chunk.extend_from_slice(&event);
        chunk.extend_from_slice(b"\r\n");
        let chunk = Bytes::from(chunk);
        let bytes = chunk.slice(start..chunk.len() - 2);
        Frame { id, bytes, chunk }
    }
}

/// What one feed's subscribers see: the newest frame of each of its deals (one for a deal's
/// feed, one per deal for a stream's), the deals' recent changes of state, and whether the
/// feed is over (the deals ended, or the server is stopping). A subscriber that falls behind
/// skips straight to this: it sends the changes of state it missed, then each deal's newest
/// frame; counters in between are skipped, and nothing queues per subscriber.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The newest frame of each deal: what a new subscriber starts with.
    pub frames: Vec<Frame>,
    /// `frames` and the kept changes of state older than them, by id: what a subscriber that
    /// sent up to some id sends next is a suffix of this.
    pub ordered: Vec<Frame>,
    pub closed: bool,
    /// It carries a change of state: the fan-out gives it priority over the requests beside it.
    pub urgent: bool,
}

impl Snapshot {
    /// The newest `frames` of each deal and their `history` (kept changes of state).
    pub fn new(frames: Vec<Frame>, history: impl IntoIterator<Item = Frame>, closed: bool) -> Self {
        let mut ordered: Vec<Frame> = frames.iter().cloned().chain(history).collect();
        ordered.sort_unstable_by_key(|f| f.id);
        ordered.dedup_by_key(|f| f.id);
        Snapshot { frames, ordered, closed, urgent: false }
    }

    /// The frames a subscriber that has sent every frame up to `sent_id` sends next, oldest
    /// first.
    pub fn since(&self, sent_id: u64) -> &[Frame] {
        let from = self.ordered.partition_point(|f| f.id <= sent_id);
        &self.ordered[from..]
    }

    /// The highest id in it: a subscriber that sent `frames` has nothing older left to send.
    pub fn last_id(&self) -> u64 {
        self.ordered.last().map_or(0, |f| f.id)
    }

    /// A new subscriber's first events: each deal's newest frame, by id, in one piece.
    pub fn first_events(&self) -> Bytes {
        let mut frames: Vec<&Frame> = self.frames.iter().collect();
        frames.sort_unstable_by_key(|f| f.id);
        match frames.as_slice() {
            [one] => one.bytes.clone(),
            many => many.iter().flat_map(|f| f.bytes.iter().copied()).collect::<Vec<u8>>().into(),
        }
    }
}

/// An SSE comment: ignored by clients, but traffic for proxies that close idle connections.
pub const HEARTBEAT: &[u8] = b": keep-alive\n\n";
/// The same as one HTTP/1.1 chunk (14 bytes).
pub const HEARTBEAT_CHUNK: &[u8] = b"e\r\n: keep-alive\n\n\r\n";
/// The end of a chunked body: the feed is over.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The availability answer: `{"deal_id":...,"state":...,"available":...,"held":...,"sold":...}`.
pub fn availability_json(deal_id: &str, stock: &Stock) -> Bytes {
    let mut out = Vec::with_capacity(120);
    write_fields(&mut out, deal_id, stock);
    out.push(b'}');
    Bytes::from(out)
}

/// The availability answer's entity tag: its state and counters written out, not a hash of
/// them, so two different answers can never share a tag (a hash collision would answer a
/// stale 304). The deal id is in the URL, so the tag need not carry it.
pub fn etag(stock: &Stock) -> String {
    format!("\"{}-{}-{}-{}\"", stock.state.as_str(), stock.available, stock.held, stock.sold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn stock(state: FeedState, available: u64, held: u64, sold: u64) -> Stock {
        Stock { state, available, held, sold, waiting: 3 }
    }

    #[test]
    fn a_frame_is_one_sse_event_with_the_stock_as_json() {
        let frame = Frame::encode(42, "drop-1.a_b", &stock(FeedState::Live, 3, 1, 6));
        assert_eq!(frame.id, 42);
        let text = std::str::from_utf8(&frame.bytes).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[..3], ["id: 42", "event: stock", lines[2]]);
        assert_eq!(lines[3..], ["", ""], "an event ends with a blank line: {text:?}");
        let data: Value = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"deal_id": "drop-1.a_b", "state": "live", "available": 3, "held": 1,
                   "sold": 6, "waiting": 3})
        );
    }

    #[test]
    fn the_largest_counters_encode() {
        let max = livestock_core::limits::DEAL_STOCK_UNITS_MAX;
        let frame = Frame::encode(u64::MAX, "d", &stock(FeedState::SoldOut, 0, max, max));
        let text = std::str::from_utf8(&frame.bytes).unwrap();
        let data = text.lines().nth(2).and_then(|l| l.strip_prefix("data: ")).unwrap();
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!((data["held"].as_u64(), data["state"].as_str()), (Some(max), Some("sold_out")));
    }

    #[test]
    fn a_live_deal_without_units_is_sold_out_and_only_a_live_one() {
        assert_eq!(FeedState::of(DealState::Live, 0), FeedState::SoldOut);
        assert_eq!(FeedState::of(DealState::Live, 1), FeedState::Live);
        assert_eq!(FeedState::of(DealState::Paused, 0), FeedState::Paused);
        assert_eq!(FeedState::of(DealState::Ended, 0), FeedState::Ended);
        assert_eq!(FeedState::of(DealState::Scheduled, 0), FeedState::Scheduled);
    }

    #[test]
    fn availability_is_the_event_without_waiting_and_its_tag_tells_answers_apart() {
        let s = stock(FeedState::Live, 2, 0, 8);
        let body: Value = serde_json::from_slice(&availability_json("d1", &s)).unwrap();
        assert_eq!(
            body,
            json!({"deal_id": "d1", "state": "live", "available": 2, "held": 0, "sold": 8})
        );
        assert_eq!(etag(&s), "\"live-2-0-8\"");
        // Counters that a sum or a hash could confuse get different tags.
        assert_ne!(etag(&stock(FeedState::Live, 1, 2, 3)), etag(&stock(FeedState::Live, 2, 1, 3)));
        assert_ne!(
            etag(&stock(FeedState::Live, 0, 1, 1)),
            etag(&stock(FeedState::SoldOut, 0, 1, 1))
        );
    }

    #[test]
    fn the_heartbeat_is_a_comment() {
        assert!(HEARTBEAT.starts_with(b":") && HEARTBEAT.ends_with(b"\n\n"));
        assert_eq!(HEARTBEAT_CHUNK, [b"e\r\n", HEARTBEAT, b"\r\n"].concat());
        assert_eq!(HEARTBEAT.len(), 0xe);
    }

    #[test]
    fn a_frame_chunk_is_its_event_framed_for_http_1_1() {
        let frame = Frame::encode(7, "d", &stock(FeedState::Live, 1, 0, 0));
        let len = format!("{:x}\r\n", frame.bytes.len());
        assert_eq!(frame.chunk, [len.as_bytes(), &frame.bytes, b"\r\n"].concat());
    }

    #[test]
    fn a_snapshot_orders_its_frames_and_history_by_id() {
        let f = |id| Frame::encode(id, "d", &stock(FeedState::Live, 1, 0, 0));
        let snapshot = Snapshot::new(vec![f(9), f(4)], [f(2), f(7)], false);
        let ids = |frames: &[Frame]| frames.iter().map(|f| f.id).collect::<Vec<_>>();
        assert_eq!(ids(snapshot.since(0)), [2, 4, 7, 9]);
        assert_eq!(ids(snapshot.since(4)), [7, 9]);
        assert_eq!(ids(snapshot.since(5)), [7, 9]);
        assert!(snapshot.since(9).is_empty());
        assert_eq!(snapshot.last_id(), 9);
        assert_eq!(snapshot.first_events(), [f(4).bytes, f(9).bytes].concat(), "no history");
    }
}
