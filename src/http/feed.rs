//! The live stock feed: who follows which deal or stream, and the publisher that tells them
//! (each subscriber's stream of Server-Sent Events is `feed_subscriber.rs`).
//!
//! Shell code around the pure parts (`feed_frame.rs` encodes, `feed_change.rs` decides). The
//! request path is untouched: nothing on a reserve notifies anyone. Instead the publisher (a
//! tokio task beside the reaper) reads the counters of the deals someone follows every
//! `FEED_TICK_MS`, through `Node::read` like `GET /v1/deals/{id}` (so in a cluster it reads the
//! applied state, never a decision that may still be lost), and publishes what changed: a
//! change of state (sold out, back in stock, paused, ended) on the tick that sees it, counters
//! alone at most once per `feed_interval_ms`.
//!
//! Fan-out: each feed (a deal's, a stream's) is a `watch` channel holding a [`Snapshot`], the
//! newest encoded frame of each of its deals and their last few changes of state. A frame is
//! encoded once per deal per change and shared (a `Bytes` clone) by every subscriber; one task
//! per feed writes it to the feed's sockets (`feed_subscriber.rs`). A subscriber that is slow
//! to write skips to the newest snapshot, sending the changes of state it missed first, so a
//! slow viewer still sees a sell-out, nothing queues per subscriber and memory does not grow
//! with a slow reader. A feed ends when its deals have ended, or when the server stops (the
//! publisher closes every channel, so graceful shutdown does not wait on open feeds).
//!
//! Budget: every frame costs a write per subscriber of its feed, and those writes are most of
//! the feed's cost (the kernel's TCP send). The fan-outs measure the time their writes take
//! and the publisher charges it to a budget of `FEED_CPU_SHARE_PERCENT` of one core
//! (`feed_change.rs`, [`Budget`]): a change of state goes out on the tick that sees it,
//! counters alone only when the budget keeps a change of state to everyone in reserve. With
//! few subscribers that is every `feed_interval_ms`; with 10,000 on one deal about once a
//! second on an idle core, less often on a busy one. Counters of every deal due go out on the
//! same tick, so a stream's subscriber gets one write per tick whatever the number of its
//! deals that changed.
//!
//! Past 600 lines, as one concept: what is followed and what is published (the state of
//! every feed, the publisher's tick, the budget's use); about 200 of the lines are its unit
//! tests. The sockets are `feed_subscriber.rs`'s.
//!
//! Lock order: the feed's one mutex is a leaf. It is never held while the node is read (the
//! publisher reads, then takes the lock to publish), nor across an `.await`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use livestock_core::deal::DealView;
use livestock_core::error::ErrorCode;
use livestock_core::ids::{DealId, StreamId};
use livestock_core::limits::{
    FEED_CPU_SHARE_PERCENT, FEED_STATE_FRAMES_KEPT, FEED_STREAM_DEALS_MAX, FEED_STREAM_REFRESH_MS,
    FEED_TICK_MS, FEED_WRITE_NS_INITIAL,
};
use tokio::sync::watch;

use crate::http::body::Body;
use crate::http::error::ApiError;
use crate::http::feed_change::{Budget, Decision, Tracker};
use crate::http::feed_frame::{FeedState, Frame, Snapshot, Stock};
use crate::http::feed_subscriber::{sse, sse_ended, Group, Seat, WriteMeter};
use crate::metrics::Limit;
use crate::node::Node;
use crate::sync::os::Mutex;

/// The feed of one server: its settings, its subscribers, and what they follow.
pub struct Feed {
    interval_ms: u64,
    subscribers_max: usize,
    /// Subscribers now: a seat is taken before a subscription is made and given back when its
    /// body is dropped (the client went away, or the feed ended).
    subscribers: Arc<AtomicUsize>,
    /// The next frame's id, for every deal: ids increase along every connection.
    next_id: AtomicU64,
    state: Mutex<State>,
}

struct State {
    /// A publisher runs: set as the server starts, cleared as it stops. Without one a feed
    /// would never hear again, so a subscription then gets its first events and ends.
    open: bool,
    /// The publisher's clock at its last tick (ms since it started): when a new subscription's
    /// first frame counts as published.
    now_ms: u64,
    /// Every deal someone follows, through its own feed or its stream's.
    deals: HashMap<String, Followed>,
    streams: HashMap<String, FollowedStream>,
    /// The time the feed may still spend writing (see the module's doc).
    budget: Budget,
    /// What the fan-outs spent, and how much of it the budget has been charged.
    meter: Arc<WriteMeter>,
    metered: (u64, u64),
}

impl Default for State {
    fn default() -> State {
        State {
            open: false,
            now_ms: 0,
            deals: HashMap::new(),
            streams: HashMap::new(),
            budget: Budget::new(FEED_CPU_SHARE_PERCENT, FEED_WRITE_NS_INITIAL, 0),
            meter: Arc::new(WriteMeter::default()),
            metered: (0, 0),
        }
    }
}

struct Followed {
    tracker: Tracker,
    /// The newest frame published.
    frame: Frame,
    /// `frame` is a change of state: kept in `history` once a newer frame replaces it.
    frame_is_state: bool,
    /// Older frames that changed the deal's state, oldest first, at most
    /// `FEED_STATE_FRAMES_KEPT`: a subscriber that fell behind sends them before `frame`.
    history: VecDeque<Frame>,
    /// The deal's own feed, while it has subscribers.
    channel: Option<Channel>,
    /// Published on this tick: a stream carrying the deal refreshes its snapshot.
    changed: bool,
}

impl Followed {
    fn new(tracker: Tracker, frame: Frame, channel: Option<Channel>, changed: bool) -> Followed {
        let history = VecDeque::new();
        Followed { tracker, frame, frame_is_state: false, history, channel, changed }
    }

    /// `frame` replaces the newest; `is_state`: it changes the deal's state.
    fn replace(&mut self, frame: Frame, is_state: bool) {
        let old = std::mem::replace(&mut self.frame, frame);
        if std::mem::replace(&mut self.frame_is_state, is_state) {
            if self.history.len() == FEED_STATE_FRAMES_KEPT {
                self.history.pop_front();
            }
            self.history.push_back(old);
        }
    }

    /// The deal's own feed's snapshot.
    fn snapshot(&self, closed: bool) -> Snapshot {
        let frames = vec![self.frame.clone()];
        let snapshot = Snapshot::new(frames, self.history.iter().cloned(), closed);
        Snapshot { urgent: self.frame_is_state, ..snapshot }
    }
}

/// A live feed: its channel and its subscribers.
struct Channel {
    sender: watch::Sender<Arc<Snapshot>>,
    group: Arc<Group>,
}

impl Channel {
    fn open(snapshot: Snapshot, meter: &Arc<WriteMeter>) -> (Channel, Tap) {
        let (sender, rx) = watch::channel(Arc::new(snapshot));
        let group = Arc::new(Group::new(meter.clone()));
        (Channel { sender, group: group.clone() }, Tap::Live(rx, group))
    }

    fn tap(&self) -> Tap {
        Tap::Live(self.sender.subscribe(), self.group.clone())
    }

    fn send(&self, snapshot: Snapshot) {
        self.sender.send_replace(Arc::new(snapshot));
    }
}

/// What a new subscriber is given: a live feed, or the last words of one that is over.
enum Tap {
    Live(watch::Receiver<Arc<Snapshot>>, Arc<Group>),
    Ended(Snapshot),
}

impl Tap {
    fn answer(self, seat: Seat) -> Response<Body> {
        match self {
            Tap::Live(rx, group) => sse(rx, group, seat),
            Tap::Ended(snapshot) => sse_ended(&snapshot, seat),
        }
    }
}

struct FollowedStream {
    /// Its deals' ids, sorted, at most `FEED_STREAM_DEALS_MAX`.
    deals: Vec<String>,
    channel: Channel,
    refreshed_at_ms: u64,
}

impl Feed {
    pub fn new(interval_ms: u64, subscribers_max: usize) -> Feed {
        Feed {
            interval_ms,
            subscribers_max,
            subscribers: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Relaxed)
    }

    /// Marks the publisher as running. The server calls it before it accepts a connection, so
    /// no subscription made while it serves is mistaken for one without a publisher.
    pub fn open(&self) {
        self.state.lock().open = true;
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    fn seat(&self, node: &Node) -> Result<Seat, ApiError> {
        let max = self.subscribers_max;
        match self.subscribers.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)) {
            Ok(_) => Ok(Seat::new(self.subscribers.clone())),
            Err(_) => {
                node.metrics().rejected(Limit::FeedSubscribers);
                Err(ApiError::new(
                    ErrorCode::FeedFull,
                    format!("the live feed has its {max} subscribers; retry later"),
                ))
            }
        }
    }

    /// `GET /v1/deals/{id}/live`: the deal's feed, starting with its newest frame.
    pub fn subscribe_deal(&self, node: &Node, id: &DealId) -> Result<Response<Body>, ApiError> {
        let seat = self.seat(node)?;
        // A deal already followed: its channel has the newest frame, and nothing is read (a
        // crowd connecting at once reads the deal once, not once each).
        let followed = self.state.lock().deal_receiver(id.as_str());
        if let Some(tap) = followed {
            return Ok(tap.answer(seat));
        }
        let stock = node.read(|allocator, now_ms| allocator.deal(id.as_str(), now_ms));
        let stock = stock.map(|view| Stock::of(&view)).ok_or_else(|| ApiError::unknown_deal(id))?;
        let tap = {
            let mut state = self.state.lock();
            match state.deal_receiver(id.as_str()) {
                Some(tap) => tap,
                None => state.follow_deal(id.as_str(), stock, self.next_id()),
            }
        };
        Ok(tap.answer(seat))
    }

    /// `GET /v1/streams/{stream_id}/live`: every deal of the stream, each with its newest frame.
    pub fn subscribe_stream(
        &self,
        node: &Node,
        stream: &StreamId,
    ) -> Result<Response<Body>, ApiError> {
        let seat = self.seat(node)?;
        let followed = self.state.lock().stream_receiver(stream.as_str());
        if let Some(tap) = followed {
            return Ok(tap.answer(seat));
        }
        let deals =
            node.read(|allocator, now_ms| deals_of(&allocator.deals(now_ms), stream.as_str()));
        if deals.is_empty() {
            return Err(unknown_stream(stream));
        }
        let tap = {
            let mut state = self.state.lock();
            match state.stream_receiver(stream.as_str()) {
                Some(tap) => tap,
                None => state.follow_stream(stream.as_str(), &deals, &|| self.next_id()),
            }
        };
        Ok(tap.answer(seat))
    }

    /// Whether `stream`'s feed would be served (`GET /live/{stream_id}`, a page built on it,
    /// answers 404 where the feed would): a stream someone follows has deals, and is not read
    /// again (a crowd opening the page reads the deals once, not once each).
    pub fn check_stream(&self, node: &Node, stream: &StreamId) -> Result<(), ApiError> {
        if self.state.lock().streams.contains_key(stream.as_str()) {
            return Ok(());
        }
        let known = node.read(|allocator, now_ms| {
            allocator.deals(now_ms).iter().any(|view| {
                view.spec.stream_id.as_ref().is_some_and(|s| s.as_str() == stream.as_str())
            })
        });
        if known {
            Ok(())
        } else {
            Err(unknown_stream(stream))
        }
    }

    /// One tick of the publisher at `now_ms` (its own clock): read what is followed, publish
    /// what changed.
    fn tick(&self, node: &Node, now_ms: u64) {
        let (ids, refresh) = {
            let mut state = self.state.lock();
            state.now_ms = now_ms;
            state.prune();
            if state.deals.is_empty() && state.streams.is_empty() {
                return;
            }
            let refresh: Vec<String> = state
                .streams
                .iter()
                .filter(|(_, s)| now_ms >= s.refreshed_at_ms.saturating_add(FEED_STREAM_REFRESH_MS))
                .map(|(id, _)| id.clone())
                .collect();
            (state.deals.keys().cloned().collect::<Vec<_>>(), refresh)
        };
        // Read outside the feed's lock (in a cluster this takes the applied state's).
        let (stocks, joined) = node.read(|allocator, at_ms| {
            let stocks: Vec<Option<Stock>> = ids
                .iter()
                .map(|id| allocator.deal(id, at_ms).map(|view| Stock::of(&view)))
                .collect();
            let joined: Vec<(String, Vec<(String, Stock)>)> = if refresh.is_empty() {
                Vec::new()
            } else {
                let all = allocator.deals(at_ms);
                refresh.iter().map(|s| (s.clone(), deals_of(&all, s))).collect()
            };
            (stocks, joined)
        });
        let next_id = || self.next_id();
        let subscribers = self.subscribers();
        let mut state = self.state.lock();
        let (ns, writes) = state.meter.read();
        let (ns_then, writes_then) = std::mem::replace(&mut state.metered, (ns, writes));
        state.budget.spend(ns - ns_then, writes - writes_then);
        state.budget.refill(now_ms, subscribers);
        let allow = Allow {
            counters: state.budget.allows_counters(subscribers),
            state: state.budget.allows_state(),
        };
        for (id, stock) in ids.iter().zip(stocks) {
            state.observe(id, stock, now_ms, self.interval_ms, allow, &next_id);
        }
        for (stream, deals) in &joined {
            state.join(stream, deals, now_ms, &next_id);
        }
        state.publish_streams();
    }

    /// Ends every feed: their subscribers get the newest frames they have not sent, then the
    /// end of the stream. New subscriptions get their first events and end.
    fn close(&self) {
        let mut state = self.state.lock();
        state.open = false;
        for followed in state.deals.values_mut() {
            if let Some(channel) = followed.channel.take() {
                channel.send(followed.snapshot(true));
            }
        }
        let streams: Vec<FollowedStream> = state.streams.drain().map(|(_, s)| s).collect();
        for stream in streams {
            stream.channel.send(state.snapshot_of(&stream.deals, true));
        }
        state.deals.clear();
    }
}

/// The answer for a stream none of whose deals exists (404 `unknown_stream`).
fn unknown_stream(stream: &StreamId) -> ApiError {
    ApiError::new(ErrorCode::UnknownStream, format!("no deal belongs to stream {stream:?}"))
}

/// The deals of `stream` among `all`, by id, at most `FEED_STREAM_DEALS_MAX`.
fn deals_of(all: &[DealView], stream: &str) -> Vec<(String, Stock)> {
    let mut deals: Vec<(String, Stock)> = all
        .iter()
        .filter(|view| view.spec.stream_id.as_ref().is_some_and(|s| s.as_str() == stream))
        .map(|view| (view.spec.id.as_str().to_owned(), Stock::of(view)))
        .collect();
    deals.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    deals.truncate(FEED_STREAM_DEALS_MAX);
    deals
}

/// Which publications this tick's budget pays for.
#[derive(Clone, Copy, Debug)]
struct Allow {
    counters: bool,
    state: bool,
}

impl Allow {
    #[cfg(test)]
    const ALL: Allow = Allow { counters: true, state: true };
}

impl State {
    /// A tap on a followed deal's feed (opening it if only its stream had one).
    fn deal_receiver(&mut self, id: &str) -> Option<Tap> {
        let open = self.open;
        let followed = self.deals.get_mut(id)?;
        if let Some(channel) = &followed.channel {
            return Some(channel.tap());
        }
        let closed = !open || followed.tracker.published().state == FeedState::Ended;
        let snapshot = followed.snapshot(closed);
        if closed {
            return Some(Tap::Ended(snapshot));
        }
        let (channel, tap) = Channel::open(snapshot, &self.meter);
        followed.channel = Some(channel);
        Some(tap)
    }

    /// Starts following a deal read as `stock`, with its first frame numbered `frame_id`.
    fn follow_deal(&mut self, id: &str, stock: Stock, frame_id: u64) -> Tap {
        let frame = Frame::encode(frame_id, id, &stock);
        let closed = !self.open || stock.state == FeedState::Ended;
        let snapshot = Snapshot::new(vec![frame.clone()], [], closed);
        if closed {
            return Tap::Ended(snapshot);
        }
        let (channel, tap) = Channel::open(snapshot, &self.meter);
        let tracker = Tracker::new(stock, self.now_ms);
        self.deals.insert(id.to_owned(), Followed::new(tracker, frame, Some(channel), false));
        tap
    }

    fn stream_receiver(&mut self, stream: &str) -> Option<Tap> {
        self.streams.get(stream).map(|s| s.channel.tap())
    }

    /// Starts following a stream whose deals were read as `deals` (sorted by id).
    fn follow_stream(
        &mut self,
        stream: &str,
        deals: &[(String, Stock)],
        next_id: &dyn Fn() -> u64,
    ) -> Tap {
        let mut frames = Vec::with_capacity(deals.len());
        let mut history = Vec::new();
        for (id, stock) in deals {
            match self.deals.get(id) {
                Some(followed) => {
                    frames.push(followed.frame.clone());
                    history.extend(followed.history.iter().cloned());
                }
                None => {
                    let frame = Frame::encode(next_id(), id, stock);
                    frames.push(frame.clone());
                    if self.open {
                        let tracker = Tracker::new(*stock, self.now_ms);
                        self.deals.insert(id.clone(), Followed::new(tracker, frame, None, false));
                    }
                }
            }
        }
        let ended = deals.iter().all(|(_, stock)| stock.state == FeedState::Ended);
        let snapshot = Snapshot::new(frames, history, !self.open || ended);
        if snapshot.closed {
            return Tap::Ended(snapshot);
        }
        let (channel, tap) = Channel::open(snapshot, &self.meter);
        let ids = deals.iter().map(|(id, _)| id.clone()).collect();
        let refreshed_at_ms = self.now_ms;
        self.streams
            .insert(stream.to_owned(), FollowedStream { deals: ids, channel, refreshed_at_ms });
        tap
    }

    /// Forgets feeds nobody reads any more, and deals nobody follows.
    fn prune(&mut self) {
        self.streams.retain(|_, stream| stream.channel.sender.receiver_count() > 0);
        for followed in self.deals.values_mut() {
            if followed.channel.as_ref().is_some_and(|c| c.sender.receiver_count() == 0) {
                followed.channel = None;
            }
        }
        let carried: HashSet<&str> =
            self.streams.values().flat_map(|s| s.deals.iter().map(String::as_str)).collect();
        self.deals
            .retain(|id, followed| followed.channel.is_some() || carried.contains(id.as_str()));
    }

    /// A followed deal read as `stock` (`None`: it is gone) at `now_ms`, published if `allow`
    /// says the budget pays for it.
    fn observe(
        &mut self,
        id: &str,
        stock: Option<Stock>,
        now_ms: u64,
        interval_ms: u64,
        allow: Allow,
        next_id: &dyn Fn() -> u64,
    ) {
        let Some(followed) = self.deals.get_mut(id) else { return };
        let Some(stock) = stock else {
            // No deal is removed today; if one ever is, its feed ends with what it last said.
            if let Some(channel) = followed.channel.take() {
                channel.send(followed.snapshot(true));
            }
            return;
        };
        let is_state = match followed.tracker.decide(&stock, now_ms, interval_ms) {
            Decision::Publish if allow.counters => false,
            Decision::PublishState if allow.state => true,
            Decision::Same | Decision::Wait | Decision::Publish | Decision::PublishState => return,
        };
        followed.replace(Frame::encode(next_id(), id, &stock), is_state);
        followed.tracker.publish(stock, now_ms);
        followed.changed = true;
        let ended = stock.state == FeedState::Ended;
        if let Some(channel) = &followed.channel {
            channel.send(followed.snapshot(ended));
        }
        if ended {
            // Its subscribers have the final frame and the end; nothing more will come.
            followed.channel = None;
        }
    }

    /// A followed stream's deals as read at `now_ms`: deals created in it since join its feed.
    fn join(
        &mut self,
        stream: &str,
        deals: &[(String, Stock)],
        now_ms: u64,
        next_id: &dyn Fn() -> u64,
    ) {
        let Some(followed_stream) = self.streams.get_mut(stream) else { return };
        followed_stream.refreshed_at_ms = now_ms;
        for (id, stock) in deals {
            if followed_stream.deals.len() >= FEED_STREAM_DEALS_MAX {
                break;
            }
            if followed_stream.deals.binary_search(id).is_ok() {
                continue;
            }
            let at = followed_stream.deals.partition_point(|d| d < id);
            followed_stream.deals.insert(at, id.clone());
            match self.deals.get_mut(id) {
                // Followed already (through its own feed): its frame again, under a new id, or
                // the stream's subscribers, who have sent newer ids, would skip it.
                Some(followed) => {
                    followed.frame = Frame::encode(next_id(), id, &followed.tracker.published());
                    followed.changed = true;
                }
                None => {
                    let frame = Frame::encode(next_id(), id, stock);
                    let tracker = Tracker::new(*stock, now_ms);
                    self.deals.insert(id.clone(), Followed::new(tracker, frame, None, true));
                }
            }
        }
    }

    /// The snapshot of a stream carrying the deals `ids`.
    fn snapshot_of(&self, ids: &[String], closed: bool) -> Snapshot {
        let followed = || ids.iter().filter_map(|id| self.deals.get(id));
        let frames = followed().map(|f| f.frame.clone()).collect();
        let history = followed().flat_map(|f| f.history.iter().cloned());
        let snapshot = Snapshot::new(frames, history, closed);
        Snapshot { urgent: followed().any(|f| f.changed && f.frame_is_state), ..snapshot }
    }

    /// Sends a new snapshot to each stream one of whose deals was published on this tick, and
    /// ends the streams whose deals have all ended.
    fn publish_streams(&mut self) {
        let mut ended = Vec::new();
        let deals = &self.deals;
        for (id, stream) in &self.streams {
            let followed = move || stream.deals.iter().filter_map(move |d| deals.get(d));
            if !followed().any(|f| f.changed) {
                continue;
            }
            let over = followed().all(|f| f.tracker.published().state == FeedState::Ended);
            stream.channel.send(self.snapshot_of(&stream.deals, over));
            if over {
                ended.push(id.clone());
            }
        }
        for id in ended {
            self.streams.remove(&id);
        }
        for followed in self.deals.values_mut() {
            followed.changed = false;
        }
    }
}

/// The publisher: a tick every `FEED_TICK_MS` until `stop` changes, then every feed is closed.
/// Its clock is the tick's own instant (from the timer it waits on), as ms since it started.
pub async fn run(feed: Arc<Feed>, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(FEED_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = tick.tick().await;
    loop {
        tokio::select! {
            at = tick.tick() => {
                let elapsed_ms = at.duration_since(origin).as_millis();
                feed.tick(&node, u64::try_from(elapsed_ms).unwrap_or(u64::MAX));
            }
            _ = stop.changed() => break,
        }
    }
    feed.close();
    // The fan-outs end their subscribers' streams on their own tasks: give them a moment (a
    // tick at a time, a second at most, for sockets that would not take their last event), so
    // that a server that stops right after this has sent every stream its end.
    for _ in 0..1_000 / FEED_TICK_MS {
        if feed.subscribers() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(FEED_TICK_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL_MS: u64 = 100;

    fn stock(state: FeedState, available: u64) -> Stock {
        Stock { state, available, held: 5 - available, sold: 0, waiting: 0 }
    }

    fn live(available: u64) -> Stock {
        let state = if available == 0 { FeedState::SoldOut } else { FeedState::Live };
        stock(state, available)
    }

    /// Frame ids from 1, as the feed numbers them.
    fn numbering() -> impl Fn() -> u64 {
        let ids = AtomicU64::new(1);
        move || ids.fetch_add(1, Relaxed)
    }

    /// The receiver a subscriber would get (an ended feed's: a channel already closed).
    fn rx(tap: Tap) -> watch::Receiver<Arc<Snapshot>> {
        match tap {
            Tap::Live(rx, _) => rx,
            Tap::Ended(snapshot) => watch::channel(Arc::new(snapshot)).1,
        }
    }

    fn text(frame: &Frame) -> &str {
        std::str::from_utf8(&frame.bytes).unwrap()
    }

    #[test]
    fn a_deal_feed_gets_state_changes_at_once_and_counters_once_per_interval() {
        let next_id = numbering();
        let mut state = State { open: true, ..State::default() };
        let mut rx = rx(state.follow_deal("d1", live(5), next_id()));
        let first = rx.borrow_and_update().clone();
        assert_eq!((first.frames.len(), first.frames[0].id, first.closed), (1, 1, false));

        // Counters alone, within the interval of the first frame (published at 0): held back.
        state.observe("d1", Some(live(4)), 10, INTERVAL_MS, Allow::ALL, &next_id);
        assert!(!rx.has_changed().unwrap());
        // Sold out: at once, whatever the interval says.
        state.observe("d1", Some(live(0)), 20, INTERVAL_MS, Allow::ALL, &next_id);
        let sold_out = rx.borrow_and_update().clone();
        assert_eq!(sold_out.frames[0].id, 2);
        assert!(text(&sold_out.frames[0]).contains("\"state\":\"sold_out\""));
        // Back in stock: at once too.
        state.observe("d1", Some(live(1)), 21, INTERVAL_MS, Allow::ALL, &next_id);
        assert!(text(&rx.borrow_and_update().frames[0]).contains("\"state\":\"live\""));
        // Counters once the interval has passed since the last publication.
        state.observe("d1", Some(live(2)), 120, INTERVAL_MS, Allow::ALL, &next_id);
        assert!(!rx.has_changed().unwrap());
        state.observe("d1", Some(live(2)), 121, INTERVAL_MS, Allow::ALL, &next_id);
        assert!(text(&rx.borrow_and_update().frames[0]).contains("\"available\":2"));
        // The end: the final frame, closed, and the deal's channel let go.
        state.observe(
            "d1",
            Some(stock(FeedState::Ended, 2)),
            122,
            INTERVAL_MS,
            Allow::ALL,
            &next_id,
        );
        let ended = rx.borrow_and_update().clone();
        assert!(ended.closed && text(&ended.frames[0]).contains("\"state\":\"ended\""));
        assert!(rx.has_changed().is_err(), "nothing publishes to an ended deal's feed");
        assert_eq!(ended.frames[0].id, 5, "ids increase with every frame");
    }

    #[test]
    fn a_stream_feed_carries_each_deal_newest_frame_and_ends_with_the_last_deal() {
        let next_id = numbering();
        let mut state = State { open: true, ..State::default() };
        let deals = [("a".to_owned(), live(5)), ("b".to_owned(), live(1))];
        let mut rx = rx(state.follow_stream("s1", &deals, &next_id));
        let ids: Vec<u64> = rx.borrow_and_update().frames.iter().map(|f| f.id).collect();
        assert_eq!(ids, [1, 2]);

        state.observe("b", Some(live(0)), 10, INTERVAL_MS, Allow::ALL, &next_id);
        state.observe("a", Some(live(5)), 10, INTERVAL_MS, Allow::ALL, &next_id);
        state.publish_streams();
        let snapshot = rx.borrow_and_update().clone();
        let ids: Vec<u64> = snapshot.frames.iter().map(|f| f.id).collect();
        assert_eq!(ids, [1, 3], "a unchanged, b's newest");
        assert!(!snapshot.closed);

        // A tick with no change sends nothing.
        state.observe("a", Some(live(5)), 20, INTERVAL_MS, Allow::ALL, &next_id);
        state.publish_streams();
        assert!(!rx.has_changed().unwrap());

        // A deal created in the stream joins it.
        state.join("s1", &[("c".to_owned(), live(3))], 30, &next_id);
        state.publish_streams();
        assert_eq!(rx.borrow_and_update().frames.len(), 3);

        for id in ["a", "b"] {
            state.observe(
                id,
                Some(stock(FeedState::Ended, 0)),
                40,
                INTERVAL_MS,
                Allow::ALL,
                &next_id,
            );
        }
        state.publish_streams();
        assert!(!rx.borrow_and_update().closed, "c has not ended");
        state.observe("c", Some(stock(FeedState::Ended, 0)), 50, INTERVAL_MS, Allow::ALL, &next_id);
        state.publish_streams();
        assert!(rx.borrow_and_update().closed);
        assert!(state.streams.is_empty());
    }

    #[test]
    fn a_deal_feed_keeps_its_changes_of_state_for_a_subscriber_that_fell_behind() {
        let next_id = numbering();
        let mut state = State { open: true, ..State::default() };
        let mut rx = rx(state.follow_deal("d1", live(1), next_id()));
        let behind = rx.borrow_and_update().last_id();
        state.observe("d1", Some(live(0)), 10, INTERVAL_MS, Allow::ALL, &next_id); // sold out
        state.observe("d1", Some(live(1)), 20, INTERVAL_MS, Allow::ALL, &next_id); // back
        state.observe("d1", Some(live(2)), 200, INTERVAL_MS, Allow::ALL, &next_id); // counters
        let snapshot = rx.borrow_and_update().clone();
        let states: Vec<&str> = snapshot
            .since(behind)
            .iter()
            .map(|f| if text(f).contains("sold_out") { "sold_out" } else { "live" })
            .collect();
        assert_eq!(states, ["sold_out", "live", "live"], "both changes of state, then the newest");
        assert_eq!(snapshot.frames.len(), 1, "a new subscriber starts with the newest alone");
        // At most FEED_STATE_FRAMES_KEPT are kept.
        for n in 0..2 * FEED_STATE_FRAMES_KEPT {
            let available = u64::try_from(n % 2).unwrap();
            state.observe("d1", Some(live(available)), 300, INTERVAL_MS, Allow::ALL, &next_id);
        }
        let snapshot = rx.borrow_and_update().clone();
        assert_eq!(snapshot.ordered.len(), FEED_STATE_FRAMES_KEPT + 1);
    }

    #[test]
    fn without_budget_counters_wait_and_changes_of_state_wait_only_for_an_overspent_budget() {
        let next_id = numbering();
        let mut state = State { open: true, ..State::default() };
        let mut rx = rx(state.follow_deal("d1", live(3), next_id()));
        rx.borrow_and_update();
        let counters_only = Allow { counters: false, state: true };
        state.observe("d1", Some(live(2)), 200, INTERVAL_MS, counters_only, &next_id);
        assert!(!rx.has_changed().unwrap(), "counters wait for the budget");
        state.observe("d1", Some(live(0)), 210, INTERVAL_MS, counters_only, &next_id);
        assert!(rx.borrow_and_update().urgent, "a sell-out goes out, urgent");
        let nothing = Allow { counters: false, state: false };
        state.observe("d1", Some(live(1)), 220, INTERVAL_MS, nothing, &next_id);
        assert!(!rx.has_changed().unwrap(), "an overspent budget holds even a change of state");
        state.observe("d1", Some(live(1)), 230, INTERVAL_MS, Allow::ALL, &next_id);
        assert!(text(&rx.borrow_and_update().frames[0]).contains("\"state\":\"live\""));
    }

    #[test]
    fn feeds_nobody_reads_are_forgotten() {
        let next_id = numbering();
        let mut state = State { open: true, ..State::default() };
        let deal = state.follow_deal("d1", live(5), next_id());
        let stream = state.follow_stream("s1", &[("d2".to_owned(), live(5))], &next_id);
        state.prune();
        assert_eq!((state.deals.len(), state.streams.len()), (2, 1));
        drop(deal);
        state.prune();
        assert!(!state.deals.contains_key("d1") && state.deals.contains_key("d2"));
        drop(stream);
        state.prune();
        assert!(state.deals.is_empty() && state.streams.is_empty());
    }

    #[test]
    fn without_a_publisher_a_feed_is_its_first_events_and_its_end() {
        let next_id = numbering();
        let mut state = State::default();
        let snapshot = rx(state.follow_deal("d1", live(5), next_id())).borrow().clone();
        assert!(snapshot.closed && snapshot.frames.len() == 1);
        assert!(state.deals.is_empty(), "nothing to follow without a publisher");
    }

    #[test]
    fn closing_ends_every_feed_with_its_newest_frames() {
        let feed = Feed::new(INTERVAL_MS, 10);
        feed.open();
        let next_id = numbering();
        let (deal, stream) = {
            let mut state = feed.state.lock();
            let deal = rx(state.follow_deal("d1", live(5), next_id()));
            (deal, rx(state.follow_stream("s1", &[("d1".to_owned(), live(5))], &next_id)))
        };
        feed.close();
        for rx in [deal, stream] {
            let snapshot = rx.borrow().clone();
            assert!(snapshot.closed && snapshot.frames.len() == 1, "{snapshot:?}");
        }
        let mut state = feed.state.lock();
        assert!(state.deals.is_empty() && state.streams.is_empty() && !state.open);
        // A subscription after the close ends at once.
        assert!(rx(state.follow_deal("d2", live(1), next_id())).borrow().closed);
    }
}
