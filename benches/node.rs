//! A request's cost above the allocator: the whole HTTP surface (routing, access, body read and
//! decoding, the node, the answer's JSON, metrics) without a socket and without a log, for the
//! two answers a drop is made of: a sold-out refusal, and a reserve (timed with the release
//! that undoes it, so that a run never sells out). Compare with `benches/allocator.rs` for what
//! the allocator itself costs.
//!
//! Run: `cargo bench --bench node` (add `-- --quick` for a fast, rougher pass).

#![allow(clippy::expect_used, reason = "bench set-up: a failed expect is a broken bench")]

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use livestock::alloc::AllocatorConfig;
use livestock::clock::ManualClock;
use livestock::http::{endpoints, handle};
use livestock::node::{Node, NodeConfig};
use livestock_core::ids::HoldIdKey;
use livestock_core::limits::{
    DEAL_STOCK_UNITS_MAX, IDEMPOTENCY_KEYS_MAX_DEFAULT, IDEMPOTENCY_WINDOW_MS_DEFAULT,
    RESOLVED_HOLD_RETENTION_MS_DEFAULT,
};

const T0_MS: u64 = 1_800_000_000_000;
const RESERVE_BODY: &str = r#"{"user_id":"viewer-42","qty":1}"#;

fn node_with_deal(stock: u64) -> Node {
    let config = NodeConfig {
        allocator: AllocatorConfig {
            hold_id_key: HoldIdKey(0xBE7C_4000_0000_0002),
            resolved_hold_retention_ms: RESOLVED_HOLD_RETENTION_MS_DEFAULT,
        },
        idempotency_window_ms: IDEMPOTENCY_WINDOW_MS_DEFAULT,
        idempotency_keys_max: IDEMPOTENCY_KEYS_MAX_DEFAULT,
    };
    let node = Node::new(config, Arc::new(ManualClock::new(T0_MS)));
    let body = format!(r#"{{"id":"drop","stock":{stock}}}"#);
    let (status, _) = run(&node, Method::POST, "/v1/deals", &body);
    assert_eq!(status, 201, "the deal is created");
    node
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

fn request(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("a request")
}

/// One request on a throwaway runtime: set-up only.
fn run(node: &Node, method: Method, path: &str, body: &str) -> (u16, Bytes) {
    runtime().block_on(async {
        let response = handle(node, request(method, path, body)).await;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("a body").to_bytes();
        (status, body)
    })
}

fn sold_out(c: &mut Criterion) {
    let node = node_with_deal(0);
    let (status, body) = run(&node, Method::POST, "/v1/deals/drop/reserve", RESERVE_BODY);
    assert_eq!(status, 409, "{body:?}");
    let rt = runtime();
    c.bench_function("http_sold_out", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = request(Method::POST, "/v1/deals/drop/reserve", RESERVE_BODY);
                black_box(handle(&node, req).await)
            })
        });
    });
}

fn reserve_release(c: &mut Criterion) {
    let node = node_with_deal(DEAL_STOCK_UNITS_MAX);
    let rt = runtime();
    c.bench_function("http_reserve_and_release", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = request(Method::POST, "/v1/deals/drop/reserve", RESERVE_BODY);
                let reserved = handle(&node, req).await;
                let body = reserved.into_body().collect().await.expect("a body").to_bytes();
                // `"hold_id":"h` + 16 hex digits: the hold to release.
                let at = body.windows(11).position(|w| w == br#""hold_id":""#).expect("a hold");
                let hold = std::str::from_utf8(&body[at + 11..at + 28]).expect("ascii");
                let path = format!("/v1/holds/{hold}/release");
                black_box(handle(&node, request(Method::POST, &path, "")).await)
            })
        });
    });
}

fn route(c: &mut Criterion) {
    c.bench_function("http_route", |b| {
        b.iter(|| endpoints::find(black_box(&Method::POST), black_box("/v1/deals/drop/reserve")));
    });
}

criterion_group!(benches, sold_out, reserve_release, route);
criterion_main!(benches);
