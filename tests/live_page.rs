//! Guards the live page (`GET /live/{stream_id}`) over a real socket: a self-contained HTML page
//! (no external URL), whose `Content-Security-Policy` names exactly the hashes of the inline
//! style and script served, never cached stale, with the feed's 400/404 and access rules.
//! What the page shows in a browser is scripts/live-page-check.sh's (headless Chromium).

#![allow(clippy::expect_used, reason = "test code: a failed expect is a failed test")]

mod common;

use std::time::Duration;

use livestock::config::{Config, Secret};
use livestock::http::live_page::hash_source;
use livestock::http::{Server, ServerOptions};
use serde_json::{json, Value};

/// A hang guard, not a measurement.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
const ADMIN_TOKEN: &str = "page-admin-token-0123456789";
const CLIENT_TOKEN: &str = "page-client-token-0123456789";

struct Fixture {
    base: String,
    agent: ureq::Agent,
    _server: Server,
    _runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn start(config: &Config) -> Fixture {
        let (runtime, server, _clock) =
            common::serve(ServerOptions::from_config(config), common::IDEMPOTENCY_KEYS_MAX);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(READ_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .build();
        Fixture {
            base: format!("http://{}", server.local_addr()),
            agent,
            _server: server,
            _runtime: runtime,
        }
    }

    /// Creates a deal as the admin (whether or not tokens are configured).
    fn create(&self, deal: &Value) {
        let response = self
            .agent
            .post(&format!("{}/v1/deals", self.base))
            .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .send_json(deal.clone())
            .expect("a deal");
        assert_eq!(response.status(), 201);
    }

    /// (status, headers we check, body) of a GET without a token.
    fn get(&self, path: &str) -> (u16, ureq::Response) {
        match self.agent.get(&format!("{}{path}", self.base)).call() {
            Ok(response) | Err(ureq::Error::Status(_, response)) => (response.status(), response),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }
}

/// The content of the one `<tag>` element of `page`.
fn inline<'p>(page: &'p str, tag: &str) -> &'p str {
    let open = format!("<{tag}>");
    assert_eq!(page.matches(&open).count(), 1, "one <{tag}>");
    let start = page.find(&open).expect("opened") + open.len();
    let len = page[start..].find(&format!("</{tag}>")).expect("closed");
    &page[start..start + len]
}

#[test]
fn the_page_is_self_contained_and_its_policy_allows_exactly_its_own_style_and_script() {
    let f = Fixture::start(&Config::default());
    f.create(&json!({"id": "d1", "stock": 300, "stream_id": "s1"}));
    f.create(&json!({"id": "d2", "stock": 200, "stream_id": "s1"}));
    let (status, response) = f.get("/live/s1");
    assert_eq!(status, 200);
    assert_eq!(response.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    let policy = response.header("content-security-policy").expect("a policy").to_owned();
    let page = response.into_string().expect("the page");
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..40]);

    // Nothing from elsewhere: no absolute or scheme-relative URL, and no attribute that loads
    // anything (the page's one connection is its script's EventSource, to this origin).
    for needle in ["http://", "https://", "src=", "href=", "url(", "@import", "//cdn", "=\"//"] {
        assert!(!page.contains(needle), "the page contains {needle:?}");
    }
    // The data goes in as text only.
    assert!(!page.contains("innerHTML") && !page.contains("insertAdjacentHTML"));
    assert!(page.contains("new EventSource(") && page.contains("/live\""));

    // The policy, directive by directive: the hashes are those of the bytes served.
    let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
    let style = format!("style-src {}", hash_source(inline(&page, "style")));
    let script = format!("script-src {}", hash_source(inline(&page, "script")));
    for expected in [
        "default-src 'none'",
        style.as_str(),
        script.as_str(),
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(directives.contains(&expected), "{expected:?} is not in {policy:?}");
    }
    assert_eq!(directives.len(), 7, "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
}

#[test]
fn the_stream_id_is_checked_as_the_feed_checks_it() {
    let f = Fixture::start(&Config::default());
    f.create(&json!({"id": "d1", "stock": 3, "stream_id": "s1"}));
    f.create(&json!({"id": "d2", "stock": 3}));
    let long = "s".repeat(65);
    for (path, status, code) in [
        ("/live/nope", 404, "unknown_stream"),
        ("/live/a%20b", 400, "invalid_request"),
        (&format!("/live/{long}") as &str, 400, "invalid_request"),
    ] {
        let (got, response) = f.get(path);
        assert_eq!(got, status, "{path}");
        let feed_path = format!("/v1/streams/{}/live", path.trim_start_matches("/live/"));
        assert_eq!(f.get(&feed_path).0, status, "the feed of {path} answers alike");
        let body: Value = response.into_json().expect("a JSON error");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    // A deal id is not a stream; `/live/` without an id matches the route and is refused.
    assert_eq!(f.get("/live/d2").0, 404);
    assert_eq!(f.get("/live/").0, 400);
    assert_eq!(f.get("/live/s1").0, 200);
    // A stream's page, once its feed is followed, is answered from the feed's own record.
    let _follower = f.agent.get(&format!("{}/v1/streams/s1/live", f.base)).call().expect("feed");
    assert_eq!(f.get("/live/s1").0, 200);
}

#[test]
fn with_feed_public_off_the_page_needs_a_client_token_like_its_feed() {
    let config = Config {
        feed_public: false,
        admin_tokens: vec![Secret::new(ADMIN_TOKEN)],
        client_tokens: vec![Secret::new(CLIENT_TOKEN)],
        ..Config::default()
    };
    let f = Fixture::start(&config);
    f.create(&json!({"id": "d1", "stock": 3, "stream_id": "s1"}));
    assert_eq!(f.get("/live/s1").0, 401);
    let response = f
        .agent
        .get(&format!("{}/live/s1", f.base))
        .set("Authorization", &format!("Bearer {CLIENT_TOKEN}"))
        .call()
        .expect("200 with a client token");
    assert_eq!(response.status(), 200);

    // Public by default, with tokens configured.
    let config = Config {
        admin_tokens: vec![Secret::new(ADMIN_TOKEN)],
        client_tokens: vec![Secret::new(CLIENT_TOKEN)],
        ..Config::default()
    };
    let f = Fixture::start(&config);
    f.create(&json!({"id": "d1", "stock": 3, "stream_id": "s1"}));
    assert_eq!(f.get("/live/s1").0, 200);
}
