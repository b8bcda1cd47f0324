//! Guards `livestock-load` against false verdicts, missing reports, unlabelled closed loops and
//! starting before the server listens.
//!
//! A short open-loop burst on an in-process server must sell out with no oversell, a balanced
//! ledger and no per-user limit breach, and write its JSON report and SVG; a closed loop says
//! so; capacity mode returns a number; a non-loopback target is refused; a server that starts
//! listening after the load still gets its run, and a target where nothing listens fails within
//! `--wait-ms` with a message naming it.
#![allow(clippy::expect_used, reason = "test code: a failed set-up is a failed test")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livestock::alloc::AllocatorConfig;
use livestock::clock::SystemClock;
use livestock::http::Server;
use livestock::node::{Node, NodeConfig};
use livestock_core::ids::HoldIdKey;
use livestock_load::{self as load, LoadArgs, LoadOutcome};
use serde_json::Value;

/// A server on a free loopback port over the system clock (holds must really expire), on the
/// caller's runtime.
async fn server() -> Server {
    server_at("127.0.0.1:0".parse().expect("address")).await
}

/// A server listening on `addr`.
async fn server_at(addr: SocketAddr) -> Server {
    let config = NodeConfig {
        allocator: AllocatorConfig {
            hold_id_key: HoldIdKey(0x10AD_7E57),
            resolved_hold_retention_ms: 60_000,
        },
        idempotency_window_ms: 60_000,
        idempotency_keys_max: 100_000,
    };
    let node = Arc::new(Node::new(config, Arc::new(SystemClock::default())));
    Server::start(addr, node).await.expect("server starts")
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("livestock-load-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn args(target: &str, extra: &[&str]) -> LoadArgs {
    let mut argv = vec!["livestock-load", "--target", target, "--quiet"];
    argv.extend_from_slice(extra);
    LoadArgs::parse_from_args(argv).expect("arguments parse")
}

#[test]
fn a_short_burst_sells_out_and_the_ledger_balances() {
    let runtime = runtime();
    let dir = scratch("burst");
    let (json, svg) = (dir.join("report.json"), dir.join("plot.svg"));
    runtime.block_on(async {
        let server = server().await;
        let target = server.local_addr().to_string();
        let args = args(
            &target,
            &[
                "--profile",
                "steady",
                "--rate",
                "500",
                "--duration-ms",
                "1000",
                "--stock",
                "100",
                "--viewers",
                "300",
                "--per-user-limit",
                "1",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "20..200",
                "--connections",
                "16",
                "--seed",
                "7",
                "--json",
                json.to_str().expect("utf-8 path"),
                "--plot",
                svg.to_str().expect("utf-8 path"),
            ],
        );
        let LoadOutcome::Run(report) = load::run(&args).await.expect("the run starts") else {
            panic!("not a capacity run");
        };
        let v = &report.verification;
        assert!(v.passed, "{:?}", v.problems);
        assert!(v.drained, "every hold resolved before the final read");
        assert_eq!(v.oversell_units, 0);
        assert_eq!(v.oversell_units_client, 0);
        assert_eq!(v.lost_confirm_units, 0);
        assert_eq!(v.unacknowledged_sold_units, 0);
        assert_eq!(v.stuck_held_units, 0);
        assert_eq!(v.per_user_limit_breaches, 0);
        let deal = &v.deals[0];
        assert_eq!(deal.sold_units, deal.confirmed_units, "server sold == client confirmed");
        assert!(deal.sold_units > 0);
        let after = deal.after;
        assert_eq!(after.available + after.held + after.sold, after.stock);

        let m = &report.measured;
        assert_eq!(m.requests.offered, m.requests.answered, "every request was answered");
        assert_eq!(m.requests.errors, 0);
        let count = |outcome: &str| {
            m.latency
                .iter()
                .find(|l| l.op == load::recorder::Op::Reserve && l.outcome == outcome)
                .map_or(0, |l| l.latency.count)
        };
        assert!(count("ok") >= 100, "the whole stock was reserved at least once");
        assert!(count("sold_out") > 0, "500 taps on 100 units sell out");
        assert!(report.sell_out.hot_deal_ms.is_some());
        assert!(report.fairness.first_arrivals >= 90, "{:?}", report.fairness);
        assert!(!m.series.is_empty() && !m.stock.is_empty());
        assert_eq!(report.mode, "open_loop");
        server.shutdown().await;
    });

    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON report written"))
            .expect("the report is JSON");
    assert_eq!(written["mode"], "open_loop");
    assert_eq!(written["verification"]["passed"], true);
    assert_eq!(written["verification"]["oversell_units"], 0);
    assert!(written["latency"].as_array().is_some_and(|rows| rows.len() >= 3));
    assert!(written["series"].as_array().is_some_and(|s| !s.is_empty()));
    let picture = std::fs::read_to_string(&svg).expect("SVG written");
    assert!(picture.starts_with("<svg"), "{}", &picture[..picture.len().min(80)]);
    for caption in ["per second, 100 ms buckets", "reserve latency", "available stock"] {
        assert!(picture.contains(caption), "the plot has its {caption} panel");
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn closed_loop_runs_are_labelled_and_verified() {
    runtime().block_on(async {
        let server = server().await;
        let target = server.local_addr().to_string();
        let args = args(
            &target,
            &[
                "--closed-loop",
                "--concurrency",
                "4",
                "--duration-ms",
                "300",
                "--stock",
                "50",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "10..50",
            ],
        );
        let LoadOutcome::Run(report) = load::run(&args).await.expect("the run starts") else {
            panic!("not a capacity run");
        };
        assert_eq!(report.mode, "closed_loop");
        assert!(report.latency_from.contains("NOT corrected"), "{}", report.latency_from);
        assert!(load::report::render(&report).contains("CLOSED LOOP"));
        assert!(report.verification.passed, "{:?}", report.verification.problems);
        assert!(report.measured.requests.answered > 50, "a closed loop keeps going");
        server.shutdown().await;
    });
}

#[test]
fn capacity_mode_finds_a_rate_that_holds() {
    runtime().block_on(async {
        let server = server().await;
        let target = server.local_addr().to_string();
        let args = args(
            &target,
            &[
                "--find-capacity",
                "--p99-slo-ms",
                "500",
                "--step-duration-ms",
                "300",
                "--start-rate",
                "100",
                "--rate-factor",
                "2",
                "--max-rate",
                "400",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "10..50",
                "--connections",
                "8",
            ],
        );
        let LoadOutcome::Capacity(report) = load::run(&args).await.expect("the search runs") else {
            panic!("not a capacity report");
        };
        assert!(!report.steps.is_empty());
        assert_eq!(report.oversell_units, 0);
        let rate = report.capacity_per_s.expect("a loopback server holds 100/s at p99 500 ms");
        assert!((100.0..=400.0).contains(&rate), "{rate}");
        assert!(report.verdict().starts_with("capacity: "), "{}", report.verdict());
        server.shutdown().await;
    });
}

#[test]
fn only_loopback_targets_are_driven() {
    let e = runtime()
        .block_on(load::run(&args("192.168.1.10:8080", &[])))
        .expect_err("a private address is refused");
    assert!(e.contains("refusing") && e.contains("loopback"), "{e}");
}

#[test]
fn the_load_waits_for_a_server_that_starts_late() {
    runtime().block_on(async {
        let addr = free_port();
        // `livestock serve & livestock-load ...`: the server listens a moment after the load
        // has started.
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            server_at(addr).await
        });
        let args = args(
            &addr.to_string(),
            &[
                "--profile",
                "steady",
                "--rate",
                "200",
                "--duration-ms",
                "300",
                "--stock",
                "20",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "10..50",
                "--wait-ms",
                "10000",
            ],
        );
        let started = Instant::now();
        let LoadOutcome::Run(report) = load::run(&args).await.expect("the load waits") else {
            panic!("not a capacity run");
        };
        assert!(started.elapsed() >= Duration::from_millis(500), "the run began after the server");
        assert!(report.verification.passed, "{:?}", report.verification.problems);
        assert!(report.measured.requests.answered > 0);
        late.await.expect("the server task").shutdown().await;
    });
}

#[test]
fn nothing_listening_fails_within_the_wait_and_names_the_target() {
    let target = free_port().to_string();
    let started = Instant::now();
    let e = runtime()
        .block_on(load::run(&args(&target, &["--wait-ms", "700"])))
        .expect_err("nothing listens");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "it waited: {waited:?}");
    assert!(waited < Duration::from_secs(5), "within the bound: {waited:?}");
    assert!(e.contains(&target) && e.contains("--wait-ms 700 ms") && e.contains("http"), "{e}");

    // --wait-ms 0: one try, no wait.
    let started = Instant::now();
    let e = runtime()
        .block_on(load::run(&args(&target, &["--wait-ms", "0"])))
        .expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_millis(500), "no wait");
    assert!(e.contains(&target) && e.contains("no answer"), "{e}");
}
