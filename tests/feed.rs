//! Guards the live stock feed and the availability answer over real sockets: the first event,
//! a sold-out and a back-in-stock event with increasing ids, the end of a deal ending its feed,
//! a stream's feed, a feed over HTTP/1.0 (unchunked), the subscriber bound (503 `feed_full`),
//! `ETag`/304, the `feed_public` switch, and that a server with open feeds still shuts down.
//!
//! No timed assertions: every wait is a blocking read whose timeout only turns a hang into a
//! failure.

#![allow(clippy::expect_used, reason = "test code: a failed expect is a failed test")]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use livestock::config::{Config, Secret};
use livestock::http::{Server, ServerOptions};
use serde_json::{json, Value};

/// How long a read may block before the test fails (a hang guard, not a measurement).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
const ADMIN_TOKEN: &str = "feed-admin-token-0123456789";
const CLIENT_TOKEN: &str = "feed-client-token-0123456789";

struct Fixture {
    base: String,
    agent: ureq::Agent,
    server: Option<Server>,
    runtime: tokio::runtime::Runtime,
    token: Option<&'static str>,
}

impl Fixture {
    fn start(config: &Config) -> Fixture {
        let (runtime, server, _clock) =
            common::serve(ServerOptions::from_config(config), common::IDEMPOTENCY_KEYS_MAX);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(READ_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .build();
        let token = (!config.admin_tokens.is_empty()).then_some(ADMIN_TOKEN);
        Fixture {
            base: format!("http://{}", server.local_addr()),
            agent,
            server: Some(server),
            runtime,
            token,
        }
    }

    fn with_defaults() -> Fixture {
        Fixture::start(&Config::default())
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.base));
        match self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// (status, body) of a POST with a JSON body, whatever the status.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = match self.request("POST", path).send_json(body.clone()) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("POST {path}: {e}"),
        };
        let status = response.status();
        (status, response.into_json().unwrap_or(Value::Null))
    }

    fn create(&self, deal: &Value) {
        let (status, body) = self.post("/v1/deals", deal);
        assert_eq!(status, 201, "create {deal}: {body}");
    }

    /// Reserves `qty` of `deal` for `user`; returns the hold id.
    fn reserve(&self, deal: &str, user: &str, qty: u32) -> String {
        let (status, body) =
            self.post(&format!("/v1/deals/{deal}/reserve"), &json!({"user_id": user, "qty": qty}));
        assert_eq!(status, 201, "reserve {deal} for {user}: {body}");
        body["hold_id"].as_str().expect("a hold id").to_owned()
    }

    fn release(&self, hold: &str) {
        let (status, body) = self.post(&format!("/v1/holds/{hold}/release"), &json!({}));
        assert_eq!(status, 200, "release {hold}: {body}");
    }

    /// Opens a feed; `Err((status, body))` if it is refused.
    fn feed(&self, path: &str) -> Result<Feed, (u16, Value)> {
        let lines = common::open_sse(self.agent.get(&format!("{}{path}", self.base)))?;
        Ok(Feed { lines })
    }
}

/// One `stock` event.
#[derive(Debug)]
struct Event {
    id: u64,
    data: Value,
}

impl Event {
    fn state(&self) -> &str {
        self.data["state"].as_str().expect("a state")
    }

    fn deal(&self) -> &str {
        self.data["deal_id"].as_str().expect("a deal id")
    }
}

/// The client side of an open feed.
struct Feed {
    lines: BufReader<Box<dyn Read + Send + Sync>>,
}

impl Feed {
    /// The next event (comments skipped); `None` once the server ended the stream.
    fn next(&mut self) -> Option<Event> {
        let (mut id, mut name, mut data): (Option<u64>, Option<String>, Option<String>) =
            (None, None, None);
        loop {
            let mut line = String::new();
            let read = self.lines.read_line(&mut line).expect("the feed reads (or ends)");
            if read == 0 {
                assert!(id.is_none() && data.is_none(), "the stream ended inside an event");
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if data.is_none() {
                    continue; // after a comment
                }
                assert_eq!(name.as_deref(), Some("stock"), "the event's name");
                let id = id.expect("every event carries an id");
                let data: Value = serde_json::from_str(&data.expect("data")).expect("JSON data");
                return Some(Event { id, data });
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(": ").expect("field: value");
            match field {
                "id" => id = Some(value.parse::<u64>().expect("a numeric id")),
                "event" => name = Some(value.to_owned()),
                "data" => data = Some(value.to_owned()),
                other => panic!("unexpected field {other:?}"),
            }
        }
    }

    /// Reads events until one satisfies `wanted`, checking that ids increase; returns it.
    fn until(&mut self, last_id: &mut u64, wanted: impl Fn(&Event) -> bool) -> Event {
        loop {
            let event = self.next().expect("the feed ended before the event came");
            assert!(event.id > *last_id, "ids must increase: {} after {last_id}", event.id);
            *last_id = event.id;
            if wanted(&event) {
                return event;
            }
        }
    }
}

#[test]
fn a_deal_feed_starts_with_the_stock_and_tells_sold_out_back_in_stock_and_the_end() {
    let f = Fixture::with_defaults();
    f.create(&json!({"id": "d1", "stock": 3}));
    let mut feed = f.feed("/v1/deals/d1/live").expect("subscribed");
    let first = feed.next().expect("a first event on connect");
    assert_eq!(
        first.data,
        json!({"deal_id": "d1", "state": "live", "available": 3, "held": 0, "sold": 0,
               "waiting": 0})
    );
    let mut last_id = first.id;

    let holds: Vec<String> = (0..3).map(|n| f.reserve("d1", &format!("u{n}"), 1)).collect();
    let sold_out = feed.until(&mut last_id, |e| e.state() == "sold_out");
    assert_eq!(
        sold_out.data,
        json!({"deal_id": "d1", "state": "sold_out", "available": 0, "held": 3, "sold": 0,
               "waiting": 0})
    );

    f.release(&holds[0]);
    let back = feed.until(&mut last_id, |e| e.state() != "sold_out");
    assert_eq!((back.state(), &back.data["available"]), ("live", &json!(1)));

    let (status, body) = f.post("/v1/deals/d1/end", &json!({}));
    assert_eq!(status, 200, "{body}");
    let ended = feed.until(&mut last_id, |e| e.state() == "ended");
    assert_eq!(ended.deal(), "d1");
    assert!(feed.next().is_none(), "the feed of an ended deal ends");

    // An ended deal's feed: its final event, then the end.
    let mut again = f.feed("/v1/deals/d1/live").expect("subscribed");
    assert_eq!(again.next().expect("the final event").state(), "ended");
    assert!(again.next().is_none());
}

#[test]
fn an_http_1_0_feed_is_the_events_unchunked_until_the_connection_ends() {
    use std::io::Write;
    let f = Fixture::with_defaults();
    f.create(&json!({"id": "d1", "stock": 1}));
    let addr = f.base.strip_prefix("http://").expect("an http base");
    let mut socket = std::net::TcpStream::connect(addr).expect("connected");
    socket.set_read_timeout(Some(READ_TIMEOUT)).expect("a read timeout");
    socket.write_all(b"GET /v1/deals/d1/live HTTP/1.0\r\n\r\n").expect("sent");
    let mut lines = BufReader::new(socket);
    let mut until = |wanted: &str| {
        let mut seen = String::new();
        while !seen.contains(wanted) {
            let mut line = String::new();
            assert!(lines.read_line(&mut line).expect("a line") > 0, "ended before {wanted}");
            seen.push_str(&line);
        }
        seen
    };
    let head = until("\r\n\r\n");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
    assert!(until("\n\n").contains("\"state\":\"live\""));
    // Handed off to the fan-out by now: the next event comes unchunked too.
    f.reserve("d1", "u1", 1);
    let sold_out = until("\n\n");
    assert!(
        sold_out.starts_with("id: ") && sold_out.contains("\"state\":\"sold_out\""),
        "{sold_out:?}"
    );
}

#[test]
fn an_unknown_or_malformed_deal_or_stream_is_refused() {
    let f = Fixture::with_defaults();
    let (status, body) = f.feed("/v1/deals/nope/live").err().expect("refused");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("unknown_deal")));
    let (status, body) = f.feed("/v1/deals/bad%20id/live").err().expect("refused");
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_request")));
    let (status, body) = f.feed("/v1/streams/nope/live").err().expect("refused");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("unknown_stream")));
}

#[test]
fn a_stream_feed_carries_every_deal_of_the_stream() {
    let f = Fixture::with_defaults();
    f.create(&json!({"id": "a", "stock": 5, "stream_id": "s1"}));
    f.create(&json!({"id": "b", "stock": 1, "stream_id": "s1"}));
    f.create(&json!({"id": "elsewhere", "stock": 5, "stream_id": "s2"}));
    let mut feed = f.feed("/v1/streams/s1/live").expect("subscribed");
    let mut last_id = 0;
    let first = feed.until(&mut last_id, |_| true);
    let second = feed.until(&mut last_id, |_| true);
    let mut deals = [first.deal().to_owned(), second.deal().to_owned()];
    deals.sort();
    assert_eq!(deals, ["a", "b"], "one event per deal of the stream on connect");

    f.reserve("b", "u1", 1);
    let sold_out = feed.until(&mut last_id, |e| e.state() == "sold_out");
    assert_eq!(sold_out.deal(), "b");
    f.reserve("elsewhere", "u1", 1);
    f.reserve("a", "u1", 1);
    let a = feed.until(&mut last_id, |e| e.deal() != "b");
    assert_eq!((a.deal(), &a.data["available"]), ("a", &json!(4)), "not another stream's deal");

    // A deal created in the stream joins its feed.
    f.create(&json!({"id": "c", "stock": 2, "stream_id": "s1"}));
    let c = feed.until(&mut last_id, |e| e.deal() == "c");
    assert_eq!(c.state(), "live");

    let (status, body) = f.post("/v1/streams/s1/end", &json!({}));
    assert_eq!(status, 200, "{body}");
    let mut ended = std::collections::BTreeSet::new();
    while ended.len() < 3 {
        let event = feed.until(&mut last_id, |e| e.state() == "ended");
        ended.insert(event.deal().to_owned());
    }
    assert_eq!(ended.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(feed.next().is_none(), "the feed ends once every deal of the stream has ended");
}

#[test]
fn past_the_bound_a_subscriber_gets_503_feed_full_and_a_seat_comes_back_when_one_leaves() {
    let f = Fixture::start(&Config { feed_subscribers_max: 2, ..Config::default() });
    f.create(&json!({"id": "d1", "stock": 1, "stream_id": "s1"}));
    let mut one = f.feed("/v1/deals/d1/live").expect("first subscriber");
    let two = f.feed("/v1/streams/s1/live").expect("second subscriber (a stream's counts)");
    let (status, body) = f.feed("/v1/deals/d1/live").err().expect("the third is refused");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("feed_full")), "{body}");
    let (status, _) = f.feed("/v1/streams/s1/live").err().expect("refused for a stream too");
    assert_eq!(status, 503);

    // The second leaves. The server learns it when it next writes to that connection, so the
    // deal flips between sold out and back in stock (each flip an event at once) until the
    // seat is free. The deadline only turns a leaked seat into a failure.
    drop(two);
    assert!(one.next().is_some());
    let deadline = Instant::now() + READ_TIMEOUT;
    let third = loop {
        let hold = f.reserve("d1", "u1", 1);
        f.release(&hold);
        match f.feed("/v1/deals/d1/live") {
            Ok(feed) => break feed,
            Err((503, _)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((status, body)) => panic!("no seat came back: {status} {body}"),
        }
    };
    drop(third);
}

#[test]
fn availability_is_cacheable_and_a_known_tag_gets_304() {
    let f = Fixture::with_defaults();
    f.create(&json!({"id": "d1", "stock": 4}));
    let url = format!("{}/v1/deals/d1/availability", f.base);
    let response = f.agent.get(&url).call().expect("200");
    assert_eq!(response.header("cache-control"), Some("public, max-age=1"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    let tag = response.header("etag").expect("an ETag").to_owned();
    let body: Value = response.into_json().expect("JSON");
    assert_eq!(
        body,
        json!({"deal_id": "d1", "state": "live", "available": 4, "held": 0, "sold": 0})
    );

    let response = f.agent.get(&url).set("If-None-Match", &tag).call().expect("304");
    assert_eq!(response.status(), 304);
    assert_eq!(response.header("etag"), Some(tag.as_str()));
    assert_eq!(response.into_string().expect("text"), "", "a 304 has no body");
    let weak = format!("W/{tag}");
    let response = f.agent.get(&url).set("If-None-Match", &weak).call().expect("304");
    assert_eq!(response.status(), 304, "If-None-Match compares weakly");

    f.reserve("d1", "u1", 1);
    let response = f.agent.get(&url).set("If-None-Match", &tag).call().expect("200");
    assert_eq!(response.status(), 200, "the stock moved: the old tag is stale");
    let new_tag = response.header("etag").expect("an ETag").to_owned();
    assert_ne!(new_tag, tag);
    let body: Value = response.into_json().expect("JSON");
    assert_eq!((&body["available"], &body["held"]), (&json!(3), &json!(1)));

    match f.agent.get(&format!("{}/v1/deals/nope/availability", f.base)).call() {
        Err(ureq::Error::Status(404, response)) => {
            let body: Value = response.into_json().expect("JSON");
            assert_eq!(body["error"]["code"], "unknown_deal");
        }
        other => panic!("an unknown deal: {other:?}"),
    }
}

#[test]
fn with_feed_public_off_the_feed_needs_a_client_token() {
    let config = Config {
        feed_public: false,
        admin_tokens: vec![Secret::new(ADMIN_TOKEN)],
        client_tokens: vec![Secret::new(CLIENT_TOKEN)],
        ..Config::default()
    };
    let f = Fixture::start(&config);
    f.create(&json!({"id": "d1", "stock": 4}));
    for path in ["/v1/deals/d1/live", "/v1/deals/d1/availability"] {
        match f.agent.get(&format!("{}{path}", f.base)).call() {
            Err(ureq::Error::Status(401, _)) => {}
            other => panic!("{path} without a token: {other:?}"),
        }
    }
    let client = format!("Bearer {CLIENT_TOKEN}");
    let url = format!("{}/v1/deals/d1/availability", f.base);
    let response = f.agent.get(&url).set("Authorization", &client).call().expect("200");
    assert_eq!(response.status(), 200);
    let response = f
        .agent
        .get(&format!("{}/v1/deals/d1/live", f.base))
        .set("Authorization", &client)
        .call()
        .expect("200");
    let mut feed = Feed { lines: BufReader::new(response.into_reader()) };
    assert_eq!(feed.next().expect("a first event").state(), "live");
}

#[test]
fn shutdown_ends_open_feeds_and_completes() {
    let mut f = Fixture::with_defaults();
    f.create(&json!({"id": "d1", "stock": 2, "stream_id": "s1"}));
    let mut deal_feed = f.feed("/v1/deals/d1/live").expect("subscribed");
    let mut stream_feed = f.feed("/v1/streams/s1/live").expect("subscribed");
    assert!(deal_feed.next().is_some() && stream_feed.next().is_some());
    let server = f.server.take().expect("a server");
    // The timeout turns a hang (a graceful shutdown waiting on open feeds) into a failure.
    let stopped =
        f.runtime.block_on(async { tokio::time::timeout(READ_TIMEOUT, server.shutdown()).await });
    assert!(stopped.is_ok(), "the shutdown waited on the open feeds");
    assert!(deal_feed.next().is_none(), "the deal's feed ended cleanly");
    assert!(stream_feed.next().is_none(), "the stream's feed ended cleanly");
}

#[test]
fn the_feed_counts_the_waitlist() {
    let f = Fixture::with_defaults();
    f.create(&json!({"id": "w", "stock": 1, "waitlist_max": 10}));
    let mut feed = f.feed("/v1/deals/w/live").expect("subscribed");
    let mut last_id = feed.next().expect("a first event").id;
    let hold = f.reserve("w", "a", 1);
    for user in ["b", "c"] {
        let (status, body) =
            f.post("/v1/deals/w/reserve", &json!({"user_id": user, "qty": 1, "waitlist": true}));
        assert_eq!(status, 202, "{body}");
    }
    let two = feed.until(&mut last_id, |e| e.data["waiting"] == 2);
    assert_eq!(two.state(), "sold_out");
    // The released unit goes to b: still sold out, one fewer waiting.
    f.release(&hold);
    let one = feed.until(&mut last_id, |e| e.data["waiting"] == 1);
    assert_eq!((one.state(), &one.data["held"]), ("sold_out", &json!(1)));
}
