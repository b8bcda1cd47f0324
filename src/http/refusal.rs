//! The refusal that most of a burst gets, answered without allocating.
//!
//! In a livestream drop almost every reserve asks for stock that is gone, or for a deal that
//! ended or is paused. Those answers depend on the deal alone, so they are the same bytes for
//! every caller: each thread keeps them preformatted per deal (`refusal_body.rs`: built once,
//! on the first such refusal, by the same code as every other answer), and a refusal reads the
//! deal's counters once, picks its bytes and goes. Nothing is allocated and no shared cache
//! line is written (the body's reference count belongs to the thread that made it).
//!
//! A request with an `Idempotency-Key` takes it too, in single-node mode (`answer_keyed`): its
//! refusal is remembered for retries as on the full path, which costs the key table its entry
//! (the key's two copies), and nothing else. Its fingerprint is computed from the parsed body
//! without building a JSON tree: the same bytes as the full path's canonical form.
//!
//! It is a shortcut, not a second set of rules: it answers only what the full path would
//! answer, in the same order, and hands everything else to it (`None`):
//! - a key seen before (a replay, a mismatch, a first attempt still running) or a full table;
//! - a body that does not parse as a reserve with borrowed strings (the full path says what
//!   is wrong with it), an invalid deal or user id, a quantity out of range;
//! - an unknown deal, or fewer units left than asked (the message says how many);
//! - a log that cannot write (the full path answers 503).
//!
//! The per-user rate limit applies as on the full path: a refused reserve still spends a
//! token, and a user out of tokens gets 429.

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use livestock_core::error::ErrorCode;
use livestock_core::ids::{DealId, UserId};
use serde::Deserialize;

use crate::http::error::status_of;
use crate::http::handlers::{self, Action, Call};
use crate::http::refusal_body::preformatted;
use crate::idempotency::{Begin, StoredReply};

/// A reserve's body with its strings borrowed from the request (`wire::ReserveBody` owns
/// them). A user id with escapes cannot be borrowed: it fails here and takes the full path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBodyRef<'a> {
    #[serde(borrow)]
    user_id: &'a str,
    qty: u32,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

/// The request's canonical form (what `wire::canonical_json` makes of the body: keys
/// sorted, no spaces), written into `buf`; `None` if it cannot be sure to match it (a `null`,
/// or more than fits).
fn canonical<'b>(parsed: &ReserveBodyRef<'_>, raw: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
    use std::io::Write as _;
    if parsed.ttl_ms.is_none() && raw.windows(6).any(|w| w == b"ttl_ms") {
        return None; // `"ttl_ms": null`: the full form keeps the null
    }
    let len = buf.len();
    let mut w = &mut buf[..];
    let written = match parsed.ttl_ms {
        Some(ttl_ms) => write!(
            w,
            r#"{{"qty":{},"ttl_ms":{ttl_ms},"user_id":"{}"}}"#,
            parsed.qty, parsed.user_id
        ),
        None => write!(w, r#"{{"qty":{},"user_id":"{}"}}"#, parsed.qty, parsed.user_id),
    };
    written.ok()?;
    let used = len - w.len();
    Some(&buf[..used])
}

/// Parses and checks a single reserve the way the full path does, without allocating:
/// `None` for anything the full path must look at.
fn parse<'a>(call: &Call<'a>) -> Option<ReserveBodyRef<'a>> {
    DealId::validate(call.param).ok()?;
    let raw: &'a [u8] = call.body.as_ref();
    // The full path refuses a body that is not an object (serde would take an array).
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let parsed: ReserveBodyRef<'a> = serde_json::from_slice(raw).ok()?;
    UserId::validate(parsed.user_id).ok()?;
    call.node.check_writable().ok()?;
    Some(parsed)
}

fn response(code: ErrorCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status_of(code);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The rate limit's answer if `user` is out of tokens.
fn rate_limited(call: &Call<'_>, user: &str, now_ms: u64) -> Option<Response<Full<Bytes>>> {
    let retry_ms = call.options.rate.take(user, now_ms).err()?;
    let Action::Response(response) = handlers::rate_limited(call, retry_ms) else {
        unreachable!("rate_limited answers with a response")
    };
    Some(response)
}

/// The answer to a keyed single reserve (`POST path` with `key`) that the deal refuses by its
/// stock or its state, remembered under the key as the full path remembers it; `None` for the
/// full path (a key seen before included). Single-node mode only: in a cluster the keyed
/// answers of the leader are replicated state, and go the full way.
/// `key`: the request's `Idempotency-Key`, already checked (`IdempotencyKey::validate`).
pub fn answer_keyed(
    call: &Call<'_>,
    key: &str,
    path: &str,
) -> Option<(ErrorCode, Response<Full<Bytes>>)> {
    if call.node.replica().is_some() {
        return None;
    }
    let parsed = parse(call)?;
    let now_ms = call.node.now_ms();
    let allocator = call.node.allocator();
    // A first look, so a reserve that may succeed costs the table nothing here.
    allocator.refusal(call.param, parsed.qty, now_ms)?;
    let mut buf = [0u8; 320];
    let canonical = canonical(&parsed, call.body, &mut buf)?;
    let fingerprint = crate::idempotency::fingerprint(&[b"POST", path.as_bytes(), canonical]);
    let scope = ["user:", parsed.user_id];
    let Begin::Execute(guard) = call.node.idempotency().begin_in(&scope, key, fingerprint, now_ms)
    else {
        return None; // seen before, or the table is full: the full path says which
    };
    // The decision, now that the key is ours (units may have come back since the first look;
    // then the guard forgets the key and the full path runs).
    let refusal = allocator.refusal(call.param, parsed.qty, now_ms)?;
    if let Some(limited) = rate_limited(call, parsed.user_id, now_ms) {
        return Some((ErrorCode::RateLimited, limited)); // not remembered, as on the full path
    }
    let code = refusal.code();
    let body = preformatted(call.param, refusal)?;
    let reply =
        StoredReply { status: status_of(code).as_u16(), body: body.clone(), code: Some(code) };
    guard.finish(reply, None);
    Some((code, response(code, body)))
}

/// The answer to an unkeyed single reserve (`POST /v1/deals/{id}/reserve`) that the deal
/// refuses by its stock or its state, or `None` for the full path. See the module comment.
pub fn answer(call: &Call<'_>) -> Option<(ErrorCode, Response<Full<Bytes>>)> {
    let parsed = parse(call)?;
    let now_ms = call.node.now_ms();
    let refusal = call.node.allocator().refusal(call.param, parsed.qty, now_ms)?;
    // The refusal was only read: the rate limit comes first on the full path, and it spends
    // its token here just the same.
    if let Some(limited) = rate_limited(call, parsed.user_id, now_ms) {
        return Some((ErrorCode::RateLimited, limited));
    }
    let code = refusal.code();
    Some((code, response(code, preformatted(call.param, refusal)?)))
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
            waitlist_max: None,
            offer_ttl_ms: None,
            draw_window_ms: None,
            draw_seed: None,
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

    /// Every refusal the shortcut gives is the answer the error renders to, byte for byte,
    /// keyed or not.
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
                query: None,
                headers: &http::HeaderMap::new(),
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
            let headers = http::HeaderMap::new();
            let call = Call {
                node: &node,
                options: &options,
                param: deal,
                body: &body,
                query: None,
                headers: &headers,
            };
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

    /// The canonical form written from the parsed body is the full path's, byte for byte, or
    /// it declines.
    #[test]
    fn the_canonical_form_is_the_full_paths() {
        for body in [
            r#"{"user_id":"u1","qty":1}"#,
            r#"{ "qty" : 3 , "user_id" : "viewer-42" }"#,
            r#"{"ttl_ms":60000,"user_id":"a.b_c-d","qty":12}"#,
            r#"{"user_id":"x","ttl_ms":0,"qty":4294967295}"#,
            "{\n\t\"user_id\": \"tab\",\n\t\"qty\": 2\n}",
        ] {
            let parsed: ReserveBodyRef<'_> =
                serde_json::from_slice(body.as_bytes()).expect("parses");
            let mut buf = [0u8; 320];
            let fast = canonical(&parsed, body.as_bytes(), &mut buf).expect("canonical");
            let full = crate::http::wire::canonical_json(body.as_bytes());
            assert_eq!(std::str::from_utf8(fast), std::str::from_utf8(&full), "{body}");
        }
        let null = r#"{"user_id":"u1","qty":1,"ttl_ms":null}"#;
        let parsed: ReserveBodyRef<'_> = serde_json::from_slice(null.as_bytes()).expect("parses");
        assert!(canonical(&parsed, null.as_bytes(), &mut [0u8; 320]).is_none(), "declines a null");
    }

    /// A keyed refusal through the shortcut is remembered as the full path remembers it: the
    /// retry is a replay of the same bytes, and the key with another body is a mismatch.
    #[test]
    fn a_keyed_refusal_is_remembered() {
        let node = node();
        let options = ServerOptions::default();
        create(&node, "gone", 0, None);
        let body = Bytes::from_static(br#"{"user_id":"u1","qty":1}"#);
        let headers = http::HeaderMap::new();
        let call = Call {
            node: &node,
            options: &options,
            param: "gone",
            body: &body,
            query: None,
            headers: &headers,
        };
        let key = "k1";
        let path = "/v1/deals/gone/reserve";
        let (code, _) = answer_keyed(&call, key, path).expect("the shortcut answers");
        assert_eq!(code, ErrorCode::SoldOut);
        assert!(answer_keyed(&call, key, path).is_none(), "a replay goes the full way");
        let first = reserve(&node, &options, "gone", r#"{"user_id":"u1","qty":1}"#, Some("k1"));
        let unkeyed = reserve(&node, &options, "gone", r#"{"user_id":"u1","qty":1}"#, None);
        assert_eq!(first, unkeyed, "the replay is the refusal's bytes");
        let other = reserve(&node, &options, "gone", r#"{"user_id":"u1","qty":2}"#, Some("k1"));
        assert_eq!(other.0, 422, "the key with another request");
        // Stock back: a new key may succeed; the remembered refusal stays a refusal.
        node.execute(&Command::AdjustStock {
            deal_id: DealId::parse("gone").expect("id"),
            delta: 5,
        })
        .expect("up")
        .result
        .expect("restocked");
        assert!(answer_keyed(&call, "k2", path).is_none());
        let again = reserve(&node, &options, "gone", r#"{"user_id":"u1","qty":1}"#, Some("k1"));
        assert_eq!(again, unkeyed, "still the remembered refusal");
        let fresh = reserve(&node, &options, "gone", r#"{"user_id":"u1","qty":1}"#, Some("k3"));
        assert_eq!(fresh.0, 201);
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
