//! A refusal allocates nothing: in a burst most requests are for stock that is gone, so the
//! sold-out path must not touch the heap (issue 12). A counting global allocator measures the
//! node's `execute` of a reserve that is refused, and the whole HTTP exchange of one
//! (`http::handle`: routing, body, the answer, metrics, the request id), after a warm-up.

#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]
#![allow(unsafe_code, reason = "a global allocator is an unsafe trait; it only counts")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use livestock::alloc::AllocatorConfig;
use livestock::clock::ManualClock;
use livestock::http::body::Body;
use livestock::node::{Node, NodeConfig};
use livestock_core::command::{Command, Line, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::ids::{DealId, HoldIdKey, StreamId, UserId};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const T0_MS: u64 = 1_800_000_000_000;

fn node_with_sold_out_deal() -> (Node, Command) {
    node_with_sold_out_deal_keeping(1_000)
}

/// `keys_max`: the idempotency table's bound.
fn node_with_sold_out_deal_keeping(keys_max: usize) -> (Node, Command) {
    let config = NodeConfig {
        allocator: AllocatorConfig {
            hold_id_key: HoldIdKey(7),
            resolved_hold_retention_ms: 60_000,
        },
        idempotency_window_ms: 60_000,
        idempotency_keys_max: keys_max,
    };
    let node = Node::new(config, Arc::new(ManualClock::new(T0_MS)));
    let deal = NewDeal {
        id: DealId::parse("drop").unwrap(),
        stream_id: Some(StreamId::parse("s").unwrap()),
        stock: 1,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit: None,
        hold_ttl_ms: None,
        hold_ttl_ms_max: None,
        waitlist_max: None,
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    };
    node.execute(&Command::CreateDeal(deal)).unwrap().result.unwrap();
    let reserve = |user: &str| {
        Command::Reserve(Reserve {
            user_id: UserId::parse(user).unwrap(),
            lines: vec![Line { deal_id: DealId::parse("drop").unwrap(), qty: 1 }],
            ttl_ms: None,
            waitlist: false,
        })
    };
    node.execute(&reserve("first")).unwrap().result.unwrap();
    (node, reserve("late"))
}

#[test]
fn a_sold_out_reserve_allocates_nothing_in_the_node() {
    let (node, late) = node_with_sold_out_deal();
    // Warm up: lazily built state (metrics cells, thread locals) is built once.
    for _ in 0..3 {
        let refused = node.execute(&late).unwrap();
        let code = refused.result.as_ref().map_err(CommandError::code).err();
        assert_eq!(code, Some(ErrorCode::SoldOut), "{refused:?}");
    }
    let before = allocations();
    let refused = node.execute(&late).unwrap();
    let made = allocations() - before;
    let code = refused.result.as_ref().map_err(CommandError::code).err();
    assert_eq!(code, Some(ErrorCode::SoldOut));
    assert_eq!(made, 0, "a sold-out refusal allocated {made} times");
}

/// The counter counts: a reserve that succeeds allocates (a hold, an event), so a refusal's
/// zero above is measured, not a counter that never moves.
#[test]
fn the_counter_sees_a_reserve_that_succeeds() {
    let (node, _) = node_with_sold_out_deal();
    node.execute(&Command::AdjustStock { deal_id: DealId::parse("drop").unwrap(), delta: 10 })
        .unwrap()
        .result
        .unwrap();
    let winner = Command::Reserve(Reserve {
        user_id: UserId::parse("winner").unwrap(),
        lines: vec![Line { deal_id: DealId::parse("drop").unwrap(), qty: 1 }],
        ttl_ms: None,
        waitlist: false,
    });
    let before = allocations();
    node.execute(&winner).unwrap().result.unwrap();
    assert!(
        allocations() > before,
        "a successful reserve allocated nothing: the counter is broken"
    );
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

fn sold_out_request(request_id: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::post("/v1/deals/drop/reserve")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(br#"{"user_id":"late","qty":1}"#)))
        .unwrap();
    if let Some(id) = request_id {
        // Shared bytes, as hyper hands them over (slices of the connection's read buffer).
        let shared = Bytes::copy_from_slice(id.as_bytes());
        let value = HeaderValue::from_maybe_shared(shared.clone()).unwrap();
        request.headers_mut().insert(X_REQUEST_ID, value);
    }
    request
}

/// Allocations of one sold-out exchange. The answer never waits (nothing to make durable), so
/// one poll completes it: no runtime, whose own bookkeeping would be counted.
fn exchange_allocations(node: &Node, request: Request<Full<Bytes>>) -> (u64, Response<Body>) {
    let before = allocations();
    let response = livestock::http::handle(node, request).now_or_never().expect("no wait");
    (allocations() - before, response)
}

/// What the response's own header map costs: `http`'s `HeaderMap` allocates its two tables on
/// the first insert. A hyper response with headers cannot avoid it; it is not ours to remove.
fn header_map_allocations() -> u64 {
    let before = allocations();
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_REQUEST_ID, HeaderValue::from_static("id"));
    let made = allocations() - before;
    drop(response);
    made
}

#[test]
fn a_sold_out_answer_over_http_allocates_only_its_header_map() {
    let (node, _) = node_with_sold_out_deal();
    for _ in 0..3 {
        let (_, response) = exchange_allocations(&node, sold_out_request(Some("warm-up")));
        assert_eq!(response.status(), 409);
    }
    let baseline = header_map_allocations();
    assert!(baseline > 0, "the counter is broken");
    let (made, response) = exchange_allocations(&node, sold_out_request(Some("caller-1")));
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["x-request-id"], "caller-1");
    assert_eq!(
        made, baseline,
        "a sold-out answer made {made} allocations; its header map alone makes {baseline}"
    );
}

/// Without the caller's id the server makes one, in a per-thread buffer: at most one
/// allocation per several hundred answers.
#[test]
fn a_sold_out_answer_with_a_new_request_id_allocates_almost_never() {
    let (node, _) = node_with_sold_out_deal();
    for _ in 0..3 {
        exchange_allocations(&node, sold_out_request(None));
    }
    let baseline = header_map_allocations();
    let answers = 2_000;
    let mut extra = 0;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..answers {
        let (made, response) = exchange_allocations(&node, sold_out_request(None));
        assert_eq!(response.status(), 409);
        assert!(ids.insert(response.headers()["x-request-id"].clone()), "a request id repeated");
        extra += made - baseline;
    }
    assert!(extra <= 4, "{extra} allocations beyond the header maps over {answers} answers");
}

/// With an `Idempotency-Key` the refusal is remembered under it: the key table's entry (one
/// allocation of the key, shared by the table and the window's queue) is all it costs beyond
/// the header map, plus the table's own growth now and then.
#[test]
fn a_keyed_sold_out_answer_allocates_only_its_key_entry() {
    let (node, _) = node_with_sold_out_deal_keeping(100_000);
    let keyed = |n: u32| {
        let mut request = sold_out_request(Some("caller"));
        let key = HeaderValue::from_str(&format!("key-{n}")).unwrap();
        request.headers_mut().insert("idempotency-key", key);
        request
    };
    // Warm: the table's 64 shards grow from empty (a map and a queue each) in the first few
    // thousand keys; from then on a shard grows only when it doubles.
    for n in 0..20_000 {
        exchange_allocations(&node, keyed(n));
    }
    let baseline = header_map_allocations();
    let answers = 2_000;
    let mut exact = 0;
    for n in 20_000..20_000 + answers {
        let (made, response) = exchange_allocations(&node, keyed(n));
        assert_eq!(response.status(), 409);
        // One for the key; a shard's map or queue growing adds one each, now and then.
        assert!(made <= baseline + 3, "a keyed answer made {made}; header map {baseline}");
        if made == baseline + 1 {
            exact += 1;
        }
    }
    assert!(
        exact * 100 >= answers * 98,
        "{exact} of {answers} answers made only the key's allocation"
    );
}
