//! The HTTP surface: sequences of requests with arbitrary method, path, headers and body go
//! through `http::handle` (routing, the size limits, the wire decoding, idempotency) into
//! one in-memory node. No input may panic it; every answer is JSON (but a live feed's events
//! and a 304); every rejection is a 4xx
//! whose `{"error":{"code","message"}}` code maps to that very status (the 5xx allowed are
//! `503 idempotency_capacity`, and `501 not_implemented` from the event stream, which needs a
//! log: this node has none, so `storage_unavailable` cannot happen);
//! a rejection changes no state; and the allocator's invariants hold after every request.
//!
//! # Input format
//! Text, so that seeds are readable requests and libFuzzer's mutations (with
//! `fuzz/dict/http_surface.dict`) stay close to HTTP. Requests are separated by a line `---`;
//! each one is
//! ```text
//! METHOD PATH [+ADVANCE_MS]
//! name: value            (any number of header lines)
//!                        (a blank line, then the body: any bytes, up to the next `---`)
//! {"user_id":"u1","qty":2}
//! ```
//! `+ADVANCE_MS` moves the node's manual clock (and runs the reaper) before the request. In the
//! path, `{hold}` stands for the id of the latest hold the server handed out and `{hold:N}` for
//! the N-th latest (modulo their number): hold ids are keyed permutations a fuzzer cannot guess.
//! A method, URI or header that `http` itself refuses never reaches a server (hyper answers 400
//! before routing), so such a request or header is skipped. With `FUZZ_TRACE` set in the
//! environment, every request and its answer are printed (to read a seed or a crash).
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use livestock::alloc::AllocatorConfig;
use livestock::clock::ManualClock;
use livestock_core::error::ErrorCode;
use livestock_core::ids::HoldIdKey;
use livestock::http::error::status_of;
use livestock::node::{Node, NodeConfig};
use serde_json::Value;

/// 2027-01-15T08:00:00Z.
const T0_MS: u64 = 1_800_000_000_000;
const REQUESTS_MAX: usize = 64;
/// One request moves the clock by at most this (30 days): far enough to pass every TTL,
/// retention and idempotency window, never near the end of representable time.
const ADVANCE_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1_000;
/// Small, so that a fuzz input can fill the table and reach `idempotency_capacity`.
const IDEMPOTENCY_KEYS_MAX: usize = 8;
const IDEMPOTENCY_WINDOW_MS: u64 = 60_000;

/// Every code of the API, to map a code string back to its variant.
const CODES: &[ErrorCode] = &ErrorCode::ALL;

/// One request as written in the input.
struct Script<'a> {
    method: &'a [u8],
    path: &'a [u8],
    advance_ms: u64,
    headers: Vec<(&'a [u8], &'a [u8])>,
    body: &'a [u8],
}

fn split<'a>(bytes: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(separator.len()).position(|w| w == separator) {
        parts.push(&rest[..at]);
        rest = &rest[at + separator.len()..];
    }
    parts.push(rest);
    parts
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

fn parse(chunk: &[u8]) -> Script<'_> {
    let (line, mut rest) = match chunk.iter().position(|b| *b == b'\n') {
        Some(at) => (&chunk[..at], &chunk[at + 1..]),
        None => (chunk, &[][..]),
    };
    let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    let advance_ms = words
        .next()
        .and_then(|w| w.strip_prefix(b"+"))
        .and_then(|w| std::str::from_utf8(w).ok())
        .and_then(|w| w.trim().parse::<u64>().ok())
        .map_or(0, |ms| ms.min(ADVANCE_MS_MAX));
    let mut headers = Vec::new();
    loop {
        let (line, after) = match rest.iter().position(|b| *b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        if trim(line).is_empty() {
            rest = after;
            break;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            headers.push((trim(&line[..colon]), trim(&line[colon + 1..])));
        }
        rest = after;
        if rest.is_empty() {
            break;
        }
    }
    Script { method, path, advance_ms, headers, body: rest }
}

/// The path with `{hold}` / `{hold:N}` replaced by hold ids the server handed out.
fn fill_holds(path: &str, holds: &[String]) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(start) = rest.find("{hold") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            rest = &rest[start..];
            break;
        };
        let inside = &rest[start + 5..start + len];
        let back = inside.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
        let id = match holds.len() {
            0 => "h0000000000000000".to_owned(),
            n => holds[n - 1 - back % n].clone(),
        };
        out.push_str(&id);
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime,
            Err(e) => panic!("runtime: {e}"),
        }
    })
}

/// A rejection: `{"error":{"code","message"}}`, a known code whose status is this one.
/// `keys_live`: whether any idempotency key may still be inside its window.
fn check_error(status: u16, body: &Value, allow: Option<&HeaderValue>, keys_live: bool) {
    let code = body["error"]["code"].as_str();
    let message = body["error"]["message"].as_str();
    let Some(code) = code else { panic!("{status} without an error code: {body}") };
    assert!(message.is_some_and(|m| !m.is_empty()), "{status} without a message: {body}");
    let Some(known) = CODES.iter().find(|c| c.as_str() == code) else {
        panic!("{status} with a code the fuzz target does not know: {code}")
    };
    assert_eq!(status_of(*known).as_u16(), status, "code {code} answered with {status}");
    match status {
        400..=499 => {}
        // `GET /v1/events` on a node without a log.
        501 => assert_eq!(*known, ErrorCode::NotImplemented, "501: {body}"),
        503 => {
            assert_eq!(*known, ErrorCode::IdempotencyCapacity, "503: {body}");
            // The bound is on keys inside their window: with none left, the table is not full.
            assert!(keys_live, "idempotency_capacity, but every key is past its window");
        }
        _ => panic!("a rejection that is not a 4xx: {status} {body}"),
    }
    if status == 405 {
        assert!(allow.is_some(), "405 without an Allow header: {body}");
    }
}

/// Remembers the hold ids of a success answer (one hold, or a cart's `holds`).
fn collect_holds(body: &Value, holds: &mut Vec<String>) {
    let one = body["hold_id"].as_str();
    let many = body["holds"].as_array().into_iter().flatten().filter_map(|h| h["hold_id"].as_str());
    for id in one.into_iter().chain(many) {
        if !holds.iter().any(|h| h == id) {
            holds.push(id.to_owned());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let config = NodeConfig {
        allocator: AllocatorConfig {
            hold_id_key: HoldIdKey(11),
            resolved_hold_retention_ms: 60_000,
        },
        idempotency_window_ms: IDEMPOTENCY_WINDOW_MS,
        idempotency_keys_max: IDEMPOTENCY_KEYS_MAX,
    };
    let node = Node::new(config, clock.clone());
    let mut holds: Vec<String> = Vec::new();
    // When the last request with an Idempotency-Key came: no key is younger than that.
    let mut last_keyed_ms: Option<u64> = None;
    for chunk in split(data, b"\n---\n").into_iter().take(REQUESTS_MAX) {
        let script = parse(chunk);
        clock.advance_ms(script.advance_ms);
        node.expire_due();
        let Ok(method) = Method::from_bytes(script.method) else { continue };
        let Ok(path) = std::str::from_utf8(script.path) else { continue };
        let Ok(uri) = Uri::try_from(fill_holds(path, &holds)) else { continue };
        let line = format!("{method} {uri}");
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in &script.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                builder = builder.header(name, value);
            }
        }
        let Ok(request) = builder.body(Full::new(Bytes::copy_from_slice(script.body))) else {
            continue;
        };

        let now_ms = node.now_ms();
        let keys_live = last_keyed_ms.is_some_and(|at| now_ms < at + IDEMPOTENCY_WINDOW_MS);
        if request.headers().contains_key("idempotency-key") {
            last_keyed_ms = Some(now_ms);
        }
        let before = node.allocator().snapshot();
        let response = runtime().block_on(livestock::http::handle(&node, request));
        let status = response.status().as_u16();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let allow = response.headers().get(ALLOW).cloned();
        let bytes = match runtime().block_on(response.into_body().collect()) {
            Ok(collected) => collected.to_bytes(),
            Err(e) => match e {},
        };
        // The two answers that are not JSON: a live feed (with no server, no publisher runs,
        // so it sends its first events and ends) and a 304 to a conditional GET.
        if content_type.as_ref().is_some_and(|v| v == "text/event-stream") {
            assert_eq!(status, 200, "a feed answered {status}");
            assert!(bytes.starts_with(b"id: "), "a feed without an event: {bytes:?}");
            continue;
        }
        if status == 304 {
            assert!(bytes.is_empty(), "a 304 with a body: {bytes:?}");
            continue;
        }
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{status} without a JSON content type"
        );
        if tracing() {
            eprintln!("{line} -> {status} {}", String::from_utf8_lossy(&bytes));
        }
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(value) => value,
            Err(e) => panic!("{status} with a body that is not JSON ({e}): {bytes:?}"),
        };
        match status {
            200 | 201 => {
                assert!(body.is_object(), "{status} with a body that is not an object: {body}");
                collect_holds(&body, &mut holds);
            }
            _ => {
                check_error(status, &body, allow.as_ref(), keys_live);
                assert!(
                    node.allocator().snapshot() == before,
                    "a refused request ({status} {body}) changed the state"
                );
            }
        }
        node.allocator().check_invariants();
    }
});
