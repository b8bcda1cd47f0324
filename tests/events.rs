//! Guards `GET /v1/events` against losing, repeating or reordering a change for a consumer that
//! disconnects and resumes (by `Last-Event-ID` or `?after=`), across checkpoints, a clean
//! restart and `kill -9`, under a load of reserves, confirms and releases; and its 410
//! `cursor_expired`, admin role, subscriber bound (503), and shutdown with open streams.
//!
//! No timed assertions: every wait is a blocking read (or a poll) whose timeout only turns a
//! hang into a failure.

#![allow(clippy::expect_used, reason = "test code: a failed expect is a failed test")]

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livestock::clock::ManualClock;
use livestock::config::{Config, Secret};
use livestock::http::{Server, ServerOptions};
use livestock::node::Node;
use livestock::wal::{DirStorage, Durability, WalConfig};
use serde_json::{json, Value};

/// How long a read may block before the test fails (a hang guard, not a measurement).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN_TOKEN: &str = "events-admin-token-0123456789";
const CLIENT_TOKEN: &str = "events-client-token-0123456789";

// ------------------------------------------------------------------ the client side

/// One event as the client saw it.
#[derive(Clone, Debug, PartialEq)]
struct Event {
    id: u64,
    data: Value,
}

impl Event {
    fn kind(&self) -> &str {
        self.data["type"].as_str().expect("a type")
    }
}

/// An open event stream.
struct Stream {
    lines: BufReader<Box<dyn Read + Send + Sync>>,
}

/// What `Stream::next` read.
#[derive(Debug)]
enum Next {
    Event(Event),
    /// The final `cursor_expired` event.
    Expired,
    End,
}

impl Stream {
    fn next(&mut self) -> Next {
        let (mut id, mut name, mut data): (Option<u64>, Option<String>, Option<String>) =
            (None, None, None);
        loop {
            let mut line = String::new();
            let read = self.lines.read_line(&mut line).expect("the stream reads (or ends)");
            if read == 0 {
                assert!(id.is_none() && data.is_none(), "the stream ended inside an event");
                return Next::End;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                let Some(data) = data.take() else { continue }; // after a comment
                let data: Value = serde_json::from_str(&data).expect("JSON data");
                if name.as_deref() == Some("cursor_expired") {
                    assert_eq!(id, None, "the expiry notice has no id");
                    assert_eq!(data["error"]["code"], "cursor_expired", "{data}");
                    return Next::Expired;
                }
                assert_eq!(name, None, "change events have no name");
                let id = id.expect("every change carries an id");
                assert_eq!(data["position"], id, "position is the id");
                return Next::Event(Event { id, data });
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(": ").expect("field: value");
            match field {
                "id" => id = Some(value.parse::<u64>().expect("a numeric id")),
                "event" => name = Some(value.to_owned()),
                "data" => {
                    assert!(data.is_none(), "one data line per event");
                    data = Some(value.to_owned());
                }
                other => panic!("unexpected field {other:?}"),
            }
        }
    }

    /// The next change; panics on the end of the stream.
    fn event(&mut self) -> Event {
        match self.next() {
            Next::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Changes until (and with) the first that `last` accepts.
    fn until(&mut self, last: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = self.event();
            let done = last(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

/// An HTTP client of one server.
struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<&'static str>,
}

impl Client {
    fn new(base: String, token: Option<&'static str>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(READ_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .build();
        Client { base, agent, token }
    }

    fn request(&self, method: &str, path: &str, token: Option<&str>) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.base));
        match token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// (status, body) of a POST with a JSON body.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = match self.request("POST", path, self.token).send_json(body.clone()) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("POST {path}: {e}"),
        };
        (response.status(), response.into_json().unwrap_or(Value::Null))
    }

    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, answer) = self.post(path, body);
        assert!((200..300).contains(&status), "POST {path} {body}: {status} {answer}");
        answer
    }

    fn get(&self, path: &str) -> Value {
        let response = self.request("GET", path, self.token).call().expect("GET answers 2xx");
        response.into_json().expect("JSON")
    }

    fn reserve(&self, deal: &str, user: &str, qty: u32) -> String {
        let hold =
            self.ok(&format!("/v1/deals/{deal}/reserve"), &json!({"user_id": user, "qty": qty}));
        hold["hold_id"].as_str().expect("a hold id").to_owned()
    }

    /// Opens `/v1/events{query}` with an optional `Last-Event-ID`; `Err((status, body))` if
    /// refused.
    fn events_as(
        &self,
        query: &str,
        last_event_id: Option<u64>,
        token: Option<&str>,
    ) -> Result<Stream, (u16, Value)> {
        let mut request = self.request("GET", &format!("/v1/events{query}"), token);
        if let Some(id) = last_event_id {
            request = request.set("Last-Event-ID", &id.to_string());
        }
        Ok(Stream { lines: common::open_sse(request)? })
    }

    fn events(&self, query: &str, last_event_id: Option<u64>) -> Stream {
        match self.events_as(query, last_event_id, self.token) {
            Ok(stream) => stream,
            Err((status, body)) => panic!("GET /v1/events{query}: {status} {body}"),
        }
    }

    /// Marks the end of what a test did: a paused deal of its own. Reading up to its
    /// `deal_paused` event reads everything before it.
    fn mark(&self, name: &str) {
        self.ok("/v1/deals", &json!({"id": name, "stock": 1}));
        self.ok(&format!("/v1/deals/{name}/pause"), &json!({}));
    }
}

fn is_mark(name: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.kind() == "deal_paused" && e.data["deal_id"] == name
}

#[track_caller]
fn assert_refused(refused: Result<Stream, (u16, Value)>, status: u16, code: &str) {
    match refused {
        Ok(_) => panic!("expected {status} {code}, got a stream"),
        Err((got, body)) => {
            assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
        }
    }
}

/// Ids strictly increase: nothing repeated, nothing out of order.
#[track_caller]
fn assert_increasing(events: &[Event]) {
    for pair in events.windows(2) {
        assert!(pair[0].id < pair[1].id, "ids {} then {}", pair[0].id, pair[1].id);
    }
}

// ------------------------------------------------------------------ an in-process server

fn wal_config(
    segment_bytes_max: u64,
    checkpoint_interval_ms: u64,
    retention_bytes: u64,
) -> WalConfig {
    WalConfig {
        durability: Durability::Strict,
        segment_bytes_max,
        checkpoint_interval_ms,
        checkpoint_log_bytes: 1 << 30,
        idempotency_window_ms: common::IDEMPOTENCY_WINDOW_MS,
        retention_bytes,
        manual: false,
    }
}

/// A node with a log in `dir` served in this process.
struct Fixture {
    client: Client,
    node: Arc<Node>,
    clock: Arc<ManualClock>,
    server: Option<Server>,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn open(dir: &Path, wal: WalConfig, config: &Config) -> Fixture {
        Fixture::open_at(dir, wal, config, Arc::new(ManualClock::new(common::T0_MS)))
    }

    fn open_at(dir: &Path, wal: WalConfig, config: &Config, clock: Arc<ManualClock>) -> Fixture {
        let storage = Arc::new(DirStorage::open(dir).expect("data directory"));
        let (node, _) = Node::open(
            common::node_config(common::IDEMPOTENCY_KEYS_MAX),
            clock.clone(),
            storage,
            wal,
            common::HOLD_ID_KEY,
        )
        .expect("recovery");
        let node = Arc::new(node);
        let (runtime, server) =
            common::serve_node(node.clone(), ServerOptions::from_config(config));
        let token = (!config.admin_tokens.is_empty()).then_some(ADMIN_TOKEN);
        let client = Client::new(format!("http://{}", server.local_addr()), token);
        Fixture { client, node, clock, server: Some(server), runtime }
    }

    /// Stops the server (graceful) and closes the log (final checkpoint); returns the clock.
    fn stop(mut self) -> Arc<ManualClock> {
        if let Some(server) = self.server.take() {
            let stopped = self
                .runtime
                .block_on(async { tokio::time::timeout(READ_TIMEOUT, server.shutdown()).await });
            assert!(stopped.is_ok(), "the server did not stop");
        }
        self.node.close().expect("the log closes");
        self.clock.clone()
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the data directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("wal-"))
        .collect();
    names.sort();
    names
}

// ------------------------------------------------------------------ tests

#[test]
fn every_kind_of_change_arrives_in_log_order_with_its_position() {
    let dir = support::Scratch::new("events-kinds");
    let f = Fixture::open(dir.path(), wal_config(1 << 26, 60_000, 0), &Config::default());
    let c = &f.client;
    c.ok("/v1/deals", &json!({"id": "d1", "stock": 10, "stream_id": "s1"}));
    let confirmed = c.reserve("d1", "u1", 2);
    c.ok(&format!("/v1/holds/{confirmed}/confirm"), &json!({"qty": 1}));
    let released = c.reserve("d1", "u2", 1);
    c.ok(&format!("/v1/holds/{released}/release"), &json!({}));
    let extended = c.reserve("d1", "u3", 1);
    c.ok(&format!("/v1/holds/{extended}/extend"), &json!({"ttl_ms": 700_000}));
    c.ok("/v1/deals/d1/stock", &json!({"delta": 5}));
    c.ok("/v1/deals/d1/pause", &json!({}));
    c.ok("/v1/deals/d1/resume", &json!({}));
    let cart =
        c.ok("/v1/cart/reserve", &json!({"user_id": "u4", "lines": [{"deal_id": "d1", "qty": 1}]}));
    let cart_hold = cart["holds"][0]["hold_id"].as_str().expect("a hold id").to_owned();
    c.ok(&format!("/v1/holds/{cart_hold}/confirm"), &json!({}));
    // A keyed retry of a confirm that is done: a record that changes nothing, skipped.
    for _ in 0..2 {
        let response = c
            .request("POST", &format!("/v1/holds/{confirmed}/confirm"), None)
            .set("Idempotency-Key", "retry-1")
            .send_json(json!({"qty": 1}))
            .expect("a retried confirm answers 200");
        assert_eq!(response.status(), 200);
    }
    let expiring = c.reserve("d1", "u5", 1);
    // Past u5's expiry (10 min), not u3's (extended to 11 min 40 s).
    f.clock.advance_ms(650_000);
    let mut stream = c.events("?after=0", None);
    let events = stream.until(|e| e.kind() == "expired" && e.data["hold_id"] == expiring.as_str());
    c.ok("/v1/streams/s1/end", &json!({}));
    let ended = stream.event();
    assert_increasing(&events);
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        [
            "deal_created",
            "reserved",
            "confirmed",
            "reserved",
            "released",
            "reserved",
            "extended",
            "stock_adjusted",
            "deal_paused",
            "deal_resumed",
            "reserved",
            "confirmed",
            "reserved",
            "expired"
        ]
    );
    assert_eq!(events[0].id, 1, "the first record of a new log");
    // Same formats as the rest of the API.
    let reserved = &events[1].data["holds"][0];
    assert_eq!(reserved["hold_id"], confirmed.as_str());
    assert_eq!(
        (reserved["deal_id"].as_str(), reserved["user_id"].as_str()),
        (Some("d1"), Some("u1"))
    );
    assert_eq!(reserved["state"], "held");
    assert_eq!(events[0].data["at"], common::T0_TEXT);
    assert_eq!(
        events[2].data,
        json!({"type": "confirmed", "position": events[2].id, "at": common::T0_TEXT, "hold_id": confirmed, "qty": 1})
    );
    assert_eq!(events[4].data["hold_id"], released.as_str());
    assert_eq!(events[10].data["holds"][0]["hold_id"], cart_hold.as_str());
    assert!(events[12].id > events[11].id + 1, "the retry's no-op record is skipped");
    // The end released the one open hold, u3's.
    assert_eq!(ended.kind(), "deals_ended");
    assert_eq!(
        ended.data["deals"],
        json!([{"deal_id": "d1", "released_hold_ids": [extended]}]),
        "{}",
        ended.data
    );
}

#[test]
fn resuming_by_last_event_id_or_after_misses_nothing_and_repeats_nothing() {
    let dir = support::Scratch::new("events-resume");
    let f = Fixture::open(dir.path(), wal_config(1 << 26, 60_000, 0), &Config::default());
    let c = &f.client;
    c.ok("/v1/deals", &json!({"id": "d1", "stock": 100}));
    for n in 0..10 {
        c.reserve("d1", &format!("u{n}"), 1);
    }
    c.mark("m1");
    let all = c.events("", None).until(is_mark("m1"));
    assert_eq!(all.len(), 13);
    assert_increasing(&all);

    // A consumer that stopped after the 5th event, resumed each way.
    let fifth = all[4].id;
    let by_header = c.events("", Some(fifth)).until(is_mark("m1"));
    let by_query = c.events(&format!("?after={fifth}"), None).until(is_mark("m1"));
    assert_eq!(by_header, all[5..]);
    assert_eq!(by_query, all[5..]);
    // An EventSource reconnecting to its first URL sends a newer id: the header wins.
    let reconnect = c.events("?after=1", Some(fifth)).until(is_mark("m1"));
    assert_eq!(reconnect, all[5..]);

    // Live: a consumer caught up gets what comes next, once, after what it had.
    let mut live = c.events("", Some(all[12].id));
    let hold = c.reserve("d1", "late", 1);
    let next = live.event();
    assert_eq!(next.data["holds"][0]["hold_id"], hold.as_str());
    assert!(next.id > all[12].id);
    // from=now: only what comes after the subscription.
    let mut now = c.events("?from=now", None);
    c.ok(&format!("/v1/holds/{hold}/release"), &json!({}));
    assert_eq!(now.event(), live.event());

    // A position past the newest durable one is not from this log.
    assert_refused(c.events_as("?after=1000000", None, None), 410, "cursor_expired");
    assert_refused(c.events_as("?afer=1", None, None), 400, "invalid_request");
    assert_refused(c.events_as("?after=1&from=now", None, None), 400, "invalid_request");
}

#[test]
fn checkpoints_and_restarts_lose_nothing_and_deleted_positions_are_expired() {
    let dir = support::Scratch::new("events-restart");
    // Small segments, a checkpoint every 20 ms while the log grows: many segments covered.
    let retained = wal_config(1024, 20, 1 << 30);
    let f = Fixture::open(dir.path(), retained, &Config::default());
    f.client.ok("/v1/deals", &json!({"id": "d1", "stock": 1000}));
    for n in 0..60 {
        f.client.reserve("d1", &format!("u{n}"), 1);
    }
    f.client.mark("m1");
    let before = f.client.events("", None).until(is_mark("m1"));
    let half = before[30].id;
    let clock = f.stop();
    assert!(segments(dir.path()).len() > 3, "the test needs several segments");

    // A clean restart (a final checkpoint covered everything): the retained log is served.
    let f = Fixture::open_at(dir.path(), retained, &Config::default(), clock);
    let again = f.client.events("?after=0", None).until(is_mark("m1"));
    assert_eq!(again, before, "the same changes at the same positions after a restart");
    let mut resumed = f.client.events("", Some(half));
    for n in 0..20 {
        f.client.reserve("d1", &format!("v{n}"), 1);
    }
    f.client.mark("m2");
    let after = resumed.until(is_mark("m2"));
    assert_eq!(after[..before.len() - 31], before[31..], "the rest of the old log first");
    assert_increasing(&after);
    let clock = f.stop();

    // Without retention, checkpoints delete covered segments: old positions are gone (410),
    // what is left is served, and a consumer far behind is told so when it falls off.
    let f = Fixture::open_at(dir.path(), wal_config(1024, 20, 0), &Config::default(), clock);
    for n in 0..40 {
        f.client.reserve("d1", &format!("w{n}"), 1);
    }
    f.client.mark("m3");
    // The final checkpoint of the last stop covers everything before this start; the next
    // ones (20 ms after a write) delete those segments. Wait until no checkpoint changes the
    // log any more (the last one covered the mark).
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut seen = segments(dir.path());
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = segments(dir.path());
        if now == seen && now.first().is_some_and(|s| s != "wal-00000000000000000001.log") {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint deleted the first segment");
        seen = now;
    }
    assert_refused(f.client.events_as("?after=0", None, None), 410, "cursor_expired");
    let oldest = f.client.events("", None).event().id;
    assert!(oldest > 2, "the oldest retained change is {oldest}");
    assert_eq!(f.client.events("", Some(oldest - 1)).event().id, oldest);
    assert_refused(f.client.events_as("", Some(oldest - 2), None), 410, "cursor_expired");
    let rest = f.client.events("", Some(oldest - 1)).until(is_mark("m3"));
    assert_eq!(rest[0].id, oldest);
    assert_increasing(&rest);
}

#[test]
fn a_consumer_killed_and_resumed_under_load_sees_every_change_exactly_once() {
    let dir = support::Scratch::new("events-load");
    let f = Fixture::open(dir.path(), wal_config(64 * 1024, 50, 1 << 30), &Config::default());
    let base = f.client.base.clone();
    f.client.ok("/v1/deals", &json!({"id": "d1", "stock": 100000}));

    // The consumer: reads a few events, drops the connection (killed), resumes with the last
    // id it processed, until it has seen the mark.
    let consumer = {
        let base = base.clone();
        std::thread::spawn(move || {
            let client = Client::new(base, None);
            let mut seen: Vec<Event> = Vec::new();
            let mut rng = support::Rng::new(support::Rng::seed_from_env("EVENTS_SEED"));
            let mut connections = 0;
            loop {
                let last = seen.last().map(|e| e.id);
                let mut stream = match last {
                    None => client.events("?after=0", None),
                    Some(id) if connections % 2 == 0 => client.events("", Some(id)),
                    Some(id) => client.events(&format!("?after={id}"), None),
                };
                connections += 1;
                for _ in 0..rng.range(1, 40) {
                    let event = stream.event();
                    let over = is_mark("end")(&event);
                    seen.push(event);
                    if over {
                        return (seen, connections);
                    }
                }
            }
        })
    };

    // The load: three buyers reserving, confirming or releasing.
    let buyers: Vec<_> = (0..3)
        .map(|b| {
            let base = base.clone();
            std::thread::spawn(move || {
                let client = Client::new(base, None);
                let (mut reserved, mut confirmed, mut released) = (vec![], vec![], vec![]);
                for n in 0..80 {
                    let hold = client.reserve("d1", &format!("b{b}-{n}"), 1 + n % 3);
                    reserved.push(hold.clone());
                    if n % 2 == 0 {
                        client.ok(&format!("/v1/holds/{hold}/confirm"), &json!({}));
                        confirmed.push(hold);
                    } else if n % 3 == 0 {
                        client.ok(&format!("/v1/holds/{hold}/release"), &json!({}));
                        released.push(hold);
                    }
                }
                (reserved, confirmed, released)
            })
        })
        .collect();
    let (mut reserved, mut confirmed, mut released) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for buyer in buyers {
        let (r, c, l) = buyer.join().expect("a buyer");
        reserved.extend(r);
        confirmed.extend(c);
        released.extend(l);
    }
    f.client.mark("end");
    let (seen, connections) = consumer.join().expect("the consumer");
    assert!(connections > 5, "the consumer was killed only {connections} times");

    // Exactly once, in order: the same as one uninterrupted read.
    assert_increasing(&seen);
    let whole = f.client.events("?after=0", None).until(is_mark("end"));
    assert_eq!(seen, whole, "a resumed consumer saw what an uninterrupted one saw");
    let mut per_kind: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for event in &seen {
        let hold = match event.kind() {
            "reserved" => event.data["holds"][0]["hold_id"].as_str(),
            _ => event.data["hold_id"].as_str(),
        };
        if let Some(hold) = hold {
            per_kind.entry(event.kind()).or_default().push(hold.to_owned());
        }
    }
    for (kind, expected) in
        [("reserved", &reserved), ("confirmed", &confirmed), ("released", &released)]
    {
        let got = &per_kind[kind];
        assert_eq!(got.len(), expected.len(), "{kind}: each change once");
        assert_eq!(&got.iter().cloned().collect::<BTreeSet<_>>(), expected, "{kind}");
    }
    // Against the state: sold and held are what the events add up to.
    let qty: BTreeMap<&str, u64> = seen
        .iter()
        .filter(|e| e.kind() == "reserved")
        .map(|e| {
            (
                e.data["holds"][0]["hold_id"].as_str().expect("id"),
                e.data["holds"][0]["qty"].as_u64().expect("qty"),
            )
        })
        .collect();
    let sum = |set: &BTreeSet<String>| set.iter().map(|h| qty[h.as_str()]).sum::<u64>();
    let deal = f.client.get("/v1/deals/d1");
    assert_eq!(deal["sold"].as_u64(), Some(sum(&confirmed)));
    assert_eq!(deal["held"].as_u64(), Some(sum(&reserved) - sum(&confirmed) - sum(&released)));
}

#[test]
fn a_killed_server_restarted_on_its_data_resumes_where_the_consumer_stopped() {
    let dir = support::Scratch::new("events-kill");
    let log = dir.join("server.log");
    let data = dir.join("data");
    let flags = ["--checkpoint-interval-ms", "50", "--segment-bytes-max", "4096"];
    let mut server = support::Server::start(&data, &log, &flags);
    let client = Client::new(server.base(), None);
    client.ok("/v1/deals", &json!({"id": "d1", "stock": 1000}));
    let holds: Vec<String> = (0..30).map(|n| client.reserve("d1", &format!("u{n}"), 1)).collect();
    let mut stream = client.events("", None);
    let first: Vec<Event> = (0..20).map(|_| stream.event()).collect();
    // The consumer processed 20 changes (more may be in its buffers, unread) when the server
    // died.
    server.kill();
    drop(stream);

    let server = support::Server::start(&data, &log, &flags);
    let client = Client::new(server.base(), None);
    for hold in &holds {
        client.ok(&format!("/v1/holds/{hold}/confirm"), &json!({}));
    }
    client.mark("m1");
    let rest = client.events("", Some(first[19].id)).until(is_mark("m1"));
    let whole = client.events("?after=0", None).until(is_mark("m1"));
    let joined: Vec<Event> = first.into_iter().chain(rest).collect();
    assert_eq!(
        joined, whole,
        "stopped after 20, resumed after a kill -9: nothing lost or repeated"
    );
    let confirmed = whole.iter().filter(|e| e.kind() == "confirmed").count();
    assert_eq!(confirmed, holds.len());
}

#[test]
fn the_stream_needs_the_admin_role_and_is_bounded() {
    let dir = support::Scratch::new("events-access");
    let config = Config {
        admin_tokens: vec![Secret::new(ADMIN_TOKEN)],
        client_tokens: vec![Secret::new(CLIENT_TOKEN)],
        events_subscribers_max: 1,
        ..Config::default()
    };
    let f = Fixture::open(dir.path(), wal_config(1 << 26, 60_000, 0), &config);
    let c = &f.client;
    assert_refused(c.events_as("", None, None), 401, "unauthorized");
    assert_refused(c.events_as("", None, Some(CLIENT_TOKEN)), 403, "forbidden");
    c.ok("/v1/deals", &json!({"id": "d1", "stock": 1}));
    let mut first = c.events("", None);
    assert_eq!(first.event().kind(), "deal_created");
    assert_refused(c.events_as("", None, Some(ADMIN_TOKEN)), 503, "events_full");
    drop(first);
    // The seat is given back once the server notices the closed connection (its next write).
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        c.ok("/v1/deals/d1/pause", &json!({}));
        c.ok("/v1/deals/d1/resume", &json!({}));
        match c.events_as("", None, Some(ADMIN_TOKEN)) {
            Ok(mut stream) => {
                assert_eq!(stream.event().kind(), "deal_created");
                break;
            }
            Err((503, _)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_node_without_a_log_refuses_and_shutdown_ends_open_streams() {
    let (runtime, server, _clock) =
        common::serve(ServerOptions::default(), common::IDEMPOTENCY_KEYS_MAX);
    let memory = Client::new(format!("http://{}", server.local_addr()), None);
    assert_refused(memory.events_as("", None, None), 501, "not_implemented");
    drop((server, runtime));

    let dir = support::Scratch::new("events-shutdown");
    let f = Fixture::open(dir.path(), wal_config(1 << 26, 60_000, 0), &Config::default());
    f.client.ok("/v1/deals", &json!({"id": "d1", "stock": 1}));
    let mut open: Vec<Stream> = (0..3).map(|_| f.client.events("", None)).collect();
    for stream in &mut open {
        assert_eq!(stream.event().kind(), "deal_created");
    }
    f.stop();
    for stream in &mut open {
        assert!(matches!(stream.next(), Next::End), "the stream ends with the server");
    }
}

/// Cluster mode is not served (the raft log has other positions and is purged by snapshots):
/// a clear 501 on any node, not a stream that would miss changes.
#[test]
fn a_cluster_node_refuses_with_not_implemented() {
    let dir = support::Scratch::new("events-cluster");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let peer = format!("127.0.0.1:{port}");
    let peers = format!("1={peer}");
    let args = ["--node-id", "1", "--peer-listen", peer.as_str(), "--peers", peers.as_str()];
    let server = support::Server::start(&dir.join("n1"), &dir.join("n1.log"), &args);
    let client = Client::new(server.base(), None);
    assert_refused(client.events_as("", None, None), 501, "not_implemented");
}
