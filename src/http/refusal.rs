//! The refusal that most of a burst gets, answered without allocating.
//!
//! In a livestream drop almost every reserve asks for stock that is gone, or for a deal that
//! ended or is paused. Those answers depend on the deal alone, so they are the same bytes for
//! every caller: each thread keeps them preformatted per deal (built once, on the first such
//! refusal, by the same code as every other answer), and a refusal reads the deal's counters
//! once, picks its bytes and goes. Nothing is allocated and no shared cache line is written
//! (the body's reference count belongs to the thread that made it).
//!
//! It is a shortcut, not a second set of rules: it answers only what the full path would
//! answer, in the same order, and hands everything else to it (`None`):
//! - a request with an `Idempotency-Key` (its refusal is remembered for retries, which is the
//!   key table's own allocation);
//! - a body that does not parse as a reserve with borrowed strings (the full path says what
//!   is wrong with it), an invalid deal or user id, a quantity out of range;
//! - an unknown deal, or fewer units left than asked (the message says how many);
//! - a log that cannot write (the full path answers 503).
//!
//! The per-user rate limit applies as on the full path: a refused reserve still spends a
//! token, and a user out of tokens gets 429.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::ids::{DealId, UserId};
use serde::Deserialize;

use crate::alloc::Refusal;
use crate::http::error::{status_of, ApiError};
use crate::http::handlers::{self, Action, Call};
use crate::idempotency::StoredReply;

/// A reserve's body with its strings borrowed from the request (`wire::ReserveBody` owns
/// them). A user id with escapes cannot be borrowed: it fails here and takes the full path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBodyRef<'a> {
    #[serde(borrow)]
    user_id: &'a str,
    qty: u32,
    #[serde(default)]
    #[expect(dead_code, reason = "parsed so the body is checked as the full path checks it")]
    ttl_ms: Option<u64>,
}

/// The preformatted bodies a thread keeps, per deal id, one per kind of refusal.
type Bodies = HashMap<Box<str>, [Option<Bytes>; KINDS]>;

/// Kinds of refusal kept: sold out, ended, paused, not started.
const KINDS: usize = 4;

/// Deals a thread keeps bodies for before it starts over (a bound on memory; a deal's bodies
/// are rebuilt on its next refusal).
const DEALS_KEPT_MAX: usize = 1_024;

thread_local! {
    static BODIES: RefCell<Bodies> = RefCell::new(HashMap::new());
}

fn kind(refusal: Refusal) -> usize {
    use livestock_core::deal::Closed;
    match refusal {
        Refusal::SoldOut => 0,
        Refusal::Closed(Closed::Ended) => 1,
        Refusal::Closed(Closed::Paused) => 2,
        Refusal::Closed(Closed::NotStarted { .. }) => 3,
    }
}

/// The body of `refusal` for `deal_id`: the bytes the full path renders for it.
fn preformatted(deal_id: &str, refusal: Refusal) -> Option<Bytes> {
    BODIES.with(|bodies| {
        let mut bodies = bodies.borrow_mut();
        if let Some(body) = bodies.get(deal_id).and_then(|kept| kept[kind(refusal)].as_ref()) {
            return Some(body.clone());
        }
        let id = DealId::parse(deal_id).ok()?;
        let error = CommandError::from(refusal.error(id));
        let body = ApiError::from(&error).reply().body;
        if bodies.len() >= DEALS_KEPT_MAX && !bodies.contains_key(deal_id) {
            bodies.clear();
        }
        let kept = bodies.entry(deal_id.into()).or_default();
        // A clone now, so the shared form is made here and not on the next answer.
        kept[kind(refusal)] = Some(body.clone());
        Some(body)
    })
}

/// The preformatted answer to an error that is one of these refusals (of a reserve or a
/// cart, keyed or not), for the full path's rendering.
pub fn reply_of(error: &CommandError) -> Option<StoredReply> {
    let CommandError::Reserve(e) = error else { return None };
    let (refusal, deal_id) = Refusal::of(e)?;
    let code = refusal.code();
    let body = preformatted(deal_id.as_str(), refusal)?;
    Some(StoredReply { status: status_of(code).as_u16(), body, code: Some(code) })
}

/// The answer to an unkeyed single reserve (`POST /v1/deals/{id}/reserve`) that the deal
/// refuses by its stock or its state, or `None` for the full path. See the module comment.
pub fn answer(call: &Call<'_>) -> Option<(ErrorCode, Response<Full<Bytes>>)> {
    DealId::validate(call.param).ok()?;
    let raw = call.body.as_ref();
    // The full path refuses a body that is not an object (serde would take an array).
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let parsed: ReserveBodyRef<'_> = serde_json::from_slice(raw).ok()?;
    UserId::validate(parsed.user_id).ok()?;
    call.node.check_writable().ok()?;
    let now_ms = call.node.now_ms();
    let refusal = call.node.allocator().refusal(call.param, parsed.qty, now_ms)?;
    // The refusal was only read: the rate limit comes first on the full path, and it spends
    // its token here just the same.
    if let Err(retry_ms) = call.options.rate.take(parsed.user_id, now_ms) {
        let Action::Response(response) = handlers::rate_limited(call, retry_ms) else {
            unreachable!("rate_limited answers with a response")
        };
        return Some((ErrorCode::RateLimited, response));
    }
    let body = preformatted(call.param, refusal)?;
    let code = refusal.code();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status_of(code);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Some((code, response))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::FutureExt;
    use http::Request;
    use http_body_util::BodyExt;
    use livestock_core::command::Command;
    use livestock_core::deal::NewDeal;
    use livestock_core::ids::HoldIdKey;

    use super::*;
    use crate::alloc::AllocatorConfig;
    use crate::clock::ManualClock;
    use crate::http::options::ServerOptions;
    use crate::http::rate::RateLimiter;
    use crate::node::{Node, NodeConfig};

    const T0_MS: u64 = 1_800_000_000_000;

    fn node() -> Node {
        let config = NodeConfig {
            allocator: AllocatorConfig { hold_id_key: HoldIdKey(7), resolved_hold_retention_ms: 1 },
            idempotency_window_ms: 60_000,
            idempotency_keys_max: 1_000,
        };
        Node::new(config, Arc::new(ManualClock::new(T0_MS)))
    }

    fn create(node: &Node, id: &str, stock: u64, starts_at_ms: Option<u64>) {
        let deal = NewDeal {
            id: DealId::parse(id).expect("id"),
            stream_id: None,
            stock,
            starts_at_ms,
            ends_at_ms: None,
            per_user_limit: None,
            hold_ttl_ms: None,
            hold_ttl_ms_max: None,
        };
        node.execute(&Command::CreateDeal(deal)).expect("up").result.expect("created");
    }

    /// (status, content type, body) of a reserve, keyed (the full path) or not.
    fn reserve(
        node: &Node,
        options: &ServerOptions,
        deal: &str,
        body: &'static str,
        key: Option<&str>,
    ) -> (u16, String, Bytes) {
        let mut request = Request::post(format!("/v1/deals/{deal}/reserve"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request");
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("idempotency-key", HeaderValue::from_str(key).expect("key"));
        }
        let response =
            crate::http::handle_with(node, options, request).now_or_never().expect("no wait");
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().expect("ascii");
        let content_type = content_type.to_owned();
        let status = response.status().as_u16();
        let body = response.into_body().collect().now_or_never().expect("ready");
        let body = body.expect("infallible").to_bytes();
        (status, content_type, body)
    }

    /// Every refusal the shortcut gives is the full path's answer, byte for byte (a keyed
    /// request always takes the full path).
    #[test]
    fn the_shortcut_answers_what_the_full_path_answers() {
        let node = node();
        let options = ServerOptions::default();
        create(&node, "gone", 1, None);
        create(&node, "ended", 5, None);
        create(&node, "paused", 5, None);
        create(&node, "later", 5, Some(T0_MS + 60_000));
        let body = r#"{"user_id":"u1","qty":1}"#;
        assert_eq!(reserve(&node, &options, "gone", body, None).0, 201);
        let end = Command::EndDeal(DealId::parse("ended").expect("id"));
        node.execute(&end).expect("up").result.expect("ended");
        let pause = Command::PauseDeal(DealId::parse("paused").expect("id"));
        node.execute(&pause).expect("up").result.expect("paused");
        for (deal, code, message) in [
            ("gone", ErrorCode::SoldOut, r#"the deal \"gone\" is sold out"#),
            ("ended", ErrorCode::DealEnded, r#"the deal \"ended\" has ended"#),
            ("paused", ErrorCode::DealPaused, r#"the deal \"paused\" is paused"#),
            (
                "later",
                ErrorCode::DealNotStarted,
                r#"the deal \"later\" starts at 2027-01-15T08:01:00.000Z"#,
            ),
        ] {
            let request = Call {
                node: &node,
                options: &options,
                param: deal,
                body: &Bytes::from_static(body.as_bytes()),
            };
            let (shortcut_code, _) = answer(&request).expect("the shortcut answers");
            assert_eq!(shortcut_code, code, "{deal}");
            let fast = reserve(&node, &options, deal, body, None);
            let full = reserve(&node, &options, deal, body, Some(&format!("k-{deal}")));
            assert_eq!(fast, full, "{deal}");
            assert_eq!(fast.0, status_of(code).as_u16());
            let expected =
                format!(r#"{{"error":{{"code":"{}","message":"{message}"}}}}"#, code.as_str());
            assert_eq!(fast.2, expected.as_bytes(), "{deal}");
        }
    }

    /// What it does not answer, it leaves to the full path, which says what is wrong.
    #[test]
    fn the_shortcut_leaves_the_rest_to_the_full_path() {
        let node = node();
        let options = ServerOptions::default();
        create(&node, "few", 2, None);
        let call = |deal: &'static str, body: &'static str| {
            let body = Bytes::from_static(body.as_bytes());
            let call = Call { node: &node, options: &options, param: deal, body: &body };
            answer(&call).map(|(code, _)| code)
        };
        // Stock left: it might succeed.
        assert_eq!(call("few", r#"{"user_id":"u1","qty":1}"#), None);
        // Fewer left than asked: the message says how many.
        assert_eq!(call("few", r#"{"user_id":"u1","qty":3}"#), None);
        assert_eq!(call("nope", r#"{"user_id":"u1","qty":1}"#), None, "unknown deal");
        assert_eq!(call("b@d", r#"{"user_id":"u1","qty":1}"#), None, "invalid deal id");
        assert_eq!(call("few", r#"{"user_id":"u1","qty":0}"#), None, "qty 0");
        assert_eq!(call("few", r#"{"user_id":"u 1","qty":1}"#), None, "invalid user id");
        assert_eq!(call("few", r#"{"user_id":"u1","qty":1,"x":1}"#), None, "unknown field");
        assert_eq!(call("few", r#"["u1",1]"#), None, "not an object");
        assert_eq!(call("few", r#"{"user_id":"\u0075","qty":1}"#), None, "escapes");
        // And the full path does answer those.
        let invalid = reserve(&node, &options, "few", r#"{"user_id":"u1","qty":1,"x":1}"#, None);
        assert_eq!(invalid.0, 400);
    }

    /// A refused reserve spends a rate-limit token as on the full path, and a user out of
    /// tokens gets 429, not the refusal.
    #[test]
    fn the_rate_limit_applies_to_the_shortcut() {
        let node = node();
        let options = ServerOptions { rate: RateLimiter::new(1, 2), ..ServerOptions::default() };
        create(&node, "gone", 0, None);
        let body = r#"{"user_id":"u1","qty":1}"#;
        assert_eq!(reserve(&node, &options, "gone", body, None).0, 409);
        assert_eq!(reserve(&node, &options, "gone", body, None).0, 409);
        assert_eq!(reserve(&node, &options, "gone", body, None).0, 429);
        assert_eq!(reserve(&node, &options, "gone", r#"{"user_id":"u2","qty":1}"#, None).0, 409);
    }
}
