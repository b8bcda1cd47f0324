//! Guards `livestock-load` against false verdicts, missing reports, unlabelled closed loops and
//! starting before the server listens.
//!
//! A short open-loop burst on an in-process server must sell out with no oversell, a balanced
//! ledger and no per-user limit breach, and write its JSON report and SVG; a closed loop says
//! so; capacity mode returns a number; a non-loopback target is refused; a server that starts
//! listening after the load still gets its run, and a target where nothing listens fails within
//! `--wait-ms` with a message naming it. Several targets: a request whose node fails it
//! (refused connection, `no_leader` after the decision was made) is retried on the next node
//! with its idempotency key and booked once, and targets that are not a cluster are refused.
//! Live-feed subscribers (`--feed-subscribers`) each get their deal's `sold_out`, are counted
//! in the report, and one the server turns away fails the verification. A drop with
//! `--waitlist` resells units that come back to the viewers it turned away, and every entry and
//! offer is checked.
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

/// Hold ids the server granted, through the flaky node, whether or not the client saw them.
type Granted = Arc<parking_lot::Mutex<std::collections::HashSet<String>>>;

/// A node of a make-believe cluster in front of a real server: it says it has a leader, and
/// forwards every request to the server, but answers every `every`-th write with 503
/// `no_leader` *after* the server executed it, as a node whose leader died between deciding
/// and answering would. A client that retried without its idempotency key would be granted a
/// second hold; every hold the server granted is collected.
async fn flaky_node(
    server: SocketAddr,
    every: u64,
) -> (SocketAddr, Granted, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let writes = Arc::new(AtomicU64::new(0));
    let granted = Granted::default();
    let holds = granted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (writes, holds) = (writes.clone(), holds.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (writes, holds) = (writes.clone(), holds.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let reply = |status: u16, body: String| {
                            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(status).expect("a status");
                            Ok::<_, hyper::Error>(response)
                        };
                        if parts.uri.path() == "/v1/cluster" {
                            return reply(200, r#"{"node_id":1,"leader_id":1}"#.to_owned());
                        }
                        let body = body.collect().await?.to_bytes();
                        let stream = tokio::net::TcpStream::connect(server).await.expect("server");
                        let (mut sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                        tokio::spawn(conn);
                        let forwarded = hyper::Request::from_parts(parts, Full::new(body));
                        let write = forwarded.method() == hyper::Method::POST
                            && !forwarded.uri().path().ends_with("/v1/deals");
                        let answer = sender.send_request(forwarded).await?;
                        let status = answer.status().as_u16();
                        let bytes = answer.into_body().collect().await?.to_bytes();
                        if write && status == 201 {
                            let hold: Value = serde_json::from_slice(&bytes).expect("JSON");
                            let id = hold["hold_id"].as_str().expect("a hold id").to_owned();
                            holds.lock().insert(id);
                        }
                        if write && writes.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
                            let lost = r#"{"error":{"code":"no_leader","message":"flaky"}}"#;
                            return reply(503, lost.to_owned());
                        }
                        reply(status, String::from_utf8_lossy(&bytes).into_owned())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, granted, task)
}

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
        assert_eq!(v.lost_changes, Some(0), "every acknowledged change is on the server");
        let holds = v.holds.as_ref().expect("livestock's holds are read back");
        assert!(holds.read >= 100, "every granted hold was read back: {holds:?}");
        assert_eq!((holds.unexplained, holds.unread), (0, 0), "{holds:?}");
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
fn every_feed_subscriber_gets_the_sold_out_and_the_report_counts_them() {
    let runtime = runtime();
    let dir = scratch("feed");
    let json = dir.join("report.json");
    runtime.block_on(async {
        let server = server().await;
        let target = server.local_addr().to_string();
        // The server is this process: its resident memory is read as the tool would read a
        // `livestock serve`'s.
        let pid = std::process::id().to_string();
        let args = args(
            &target,
            &[
                "--profile",
                "steady",
                "--rate",
                "500",
                "--duration-ms",
                "1000",
                "--deals",
                "2",
                "--zipf",
                "0",
                "--stock",
                "20",
                "--viewers",
                "300",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "20..200",
                "--connections",
                "8",
                "--seed",
                "13",
                "--feed-subscribers",
                "5",
                "--server-pid",
                &pid,
                "--json",
                json.to_str().expect("utf-8 path"),
            ],
        );
        let LoadOutcome::Run(report) = load::run(&args).await.expect("the run starts") else {
            panic!("not a capacity run");
        };
        assert!(report.verification.passed, "{:?}", report.verification.problems);
        assert_eq!(report.sell_out.deals_sold_out, 2, "250 taps on each 20-unit deal sell out");
        let feed = report.feed.as_ref().expect("a feed report");
        assert_eq!(feed.subscribers, 5);
        assert_eq!(feed.connection_errors, 0, "{:?}", feed.first_error);
        assert_eq!(
            feed.sold_out_expected, 5,
            "both deals sold out, so every subscriber expects it"
        );
        assert_eq!(feed.sold_out_missed, 0);
        assert_eq!(feed.sold_out_lag.count, 5, "one lag per subscriber");
        assert!(feed.events_min >= 2, "the first event and the sold_out at least: {feed:?}");
        let rss = feed.server_rss_kib.as_ref().expect("the server's memory was read");
        assert!(rss.before_kib > 0 && rss.subscribed_kib > 0 && rss.end_kib > 0, "{rss:?}");
        assert!(load::report::render(&report).contains("live feed: 5 subscribers"));
        server.shutdown().await;
    });
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON report written"))
            .expect("the report is JSON");
    assert_eq!(written["feed"]["subscribers"], 5);
    assert_eq!(written["feed"]["sold_out_missed"], 0);
    assert_eq!(written["feed"]["sold_out_lag"]["count"], 5);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_waitlist_drop_resells_the_units_that_come_back_and_checks_every_entry() {
    let runtime = runtime();
    let dir = scratch("waitlist");
    let json = dir.join("report.json");
    runtime.block_on(async {
        let server = server().await;
        let target = server.local_addr().to_string();
        let args = args(
            &target,
            &[
                "--profile",
                "drop",
                "--rate",
                "600",
                "--ramp-ms",
                "200",
                "--hold-ms",
                "600",
                "--decay-ms",
                "200",
                "--stock",
                "40",
                "--viewers",
                "400",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "20..200",
                "--connections",
                "8",
                "--seed",
                "21",
                "--waitlist",
                "--entry-poll-rate",
                "400",
                "--json",
                json.to_str().expect("utf-8 path"),
            ],
        );
        let LoadOutcome::Run(report) = load::run(&args).await.expect("the run starts") else {
            panic!("not a capacity run");
        };
        let v = &report.verification;
        assert!(v.passed, "{:?}", v.problems);
        assert_eq!((v.oversell_units, v.oversell_units_client), (0, 0));
        assert_eq!(v.lost_changes, Some(0));
        let deal = &v.deals[0];
        assert_eq!(deal.sold_units, deal.confirmed_units, "server sold == direct + offers");
        let w = report.waitlist.as_ref().expect("a waitlist report");
        assert_eq!(w.waitlist_max, 400, "the viewers");
        assert!(w.entries > 0, "turned-away viewers joined: {w:?}");
        assert!(w.offers_seen > 0, "offers were seen and followed: {w:?}");
        assert!(w.reads > 0);
        let c = &w.check;
        assert_eq!(c.read, w.entries, "every entry read back: {c:?}");
        let s = &w.states;
        assert_eq!(s.waiting, 0, "nobody waits after the run");
        assert_eq!(s.offered + s.cancelled + s.lapsed, w.entries);
        assert!(s.offered > 0, "some offers were bought");
        assert!(w.waiting_while_available.is_empty());
        let r = report.returns.as_ref().expect("returns");
        assert!(r.came_back_units > 0, "{r:?}");
        assert!(r.resold_units > 0, "the waitlist resold units: {r:?}");
        assert!(r.resold_share.is_some_and(|share| share > 0.0), "{r:?}");
        let offers_bought = report
            .measured
            .latency
            .iter()
            .find(|l| l.op == load::recorder::Op::Entry && l.outcome == "all")
            .map_or(0, |l| l.latency.count);
        assert!(offers_bought > 0, "entry reads are in the latency table");
        let text = load::report::render(&report);
        assert!(text.contains("resold by the waitlist"), "{text}");
        assert!(text.contains("entries checked"), "{text}");
        server.shutdown().await;
    });
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON report written"))
            .expect("the report is JSON");
    assert_eq!(written["verification"]["passed"], true);
    assert!(written["waitlist"]["entries"].as_u64().is_some_and(|n| n > 0));
    assert!(written["returns"]["resold_units"].as_u64().is_some_and(|n| n > 0));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_subscriber_the_server_turns_away_fails_the_verification() {
    use livestock::http::feed::Feed;
    use livestock::http::options::ServerOptions;

    let runtime = runtime();
    runtime.block_on(async {
        // Room for one subscriber: the second is answered 503 feed_full.
        let options = ServerOptions { feed: Arc::new(Feed::new(100, 1)), ..Default::default() };
        let config = NodeConfig {
            allocator: AllocatorConfig {
                hold_id_key: HoldIdKey(0x10AD_7E57),
                resolved_hold_retention_ms: 60_000,
            },
            idempotency_window_ms: 60_000,
            idempotency_keys_max: 100_000,
        };
        let node = Arc::new(Node::new(config, Arc::new(SystemClock::default())));
        let addr = "127.0.0.1:0".parse().expect("address");
        let server = Server::start_with(addr, node, options).await.expect("server starts");
        let target = server.local_addr().to_string();
        let args = args(
            &target,
            &[
                "--profile",
                "steady",
                "--rate",
                "200",
                "--duration-ms",
                "300",
                "--stock",
                "10",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "10..20",
                "--feed-subscribers",
                "2",
            ],
        );
        let LoadOutcome::Run(report) = load::run(&args).await.expect("the run starts") else {
            panic!("not a capacity run");
        };
        let feed = report.feed.as_ref().expect("a feed report");
        assert_eq!((feed.subscribers, feed.connection_errors), (2, 1), "{feed:?}");
        assert!(feed.first_error.as_deref().is_some_and(|e| e.contains("503")), "{feed:?}");
        assert!(!report.verification.passed, "a failed subscriber fails the run");
        assert!(report.verification.problems.iter().any(|p| p.contains("live-feed")));
        server.shutdown().await;
    });
}

#[test]
fn a_cluster_client_retries_on_the_next_node_and_books_each_change_once() {
    runtime().block_on(async {
        let server = server().await;
        let (flaky, granted, proxy) = flaky_node(server.local_addr(), 4).await;
        let dead = free_port();
        let targets = format!("{flaky},{dead}");
        let args = args(
            &targets,
            &[
                "--profile",
                "steady",
                "--rate",
                "300",
                "--duration-ms",
                "800",
                "--stock",
                "60",
                "--viewers",
                "200",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "20..200",
                "--connections",
                "8",
                "--seed",
                "11",
            ],
        );
        let LoadOutcome::Run(report) = load::run(&args).await.expect("the run starts") else {
            panic!("not a capacity run");
        };
        let v = &report.verification;
        assert!(v.passed, "{:?}", v.problems);
        assert_eq!(v.lost_changes, Some(0));
        let read = v.holds.as_ref().expect("holds read back").read;
        assert_eq!(
            granted.lock().len(),
            usize::try_from(read).expect("a count"),
            "one hold per grant"
        );
        assert_eq!(v.oversell_units + v.oversell_units_client, 0);
        assert_eq!(v.unacknowledged_sold_units, 0, "no confirm was booked twice or left unknown");
        let m = &report.measured;
        assert_eq!(m.requests.errors, 0, "every lost answer was recovered by a retry");
        assert!(m.requests.retries > 0);
        let [front, down] = &m.targets[..] else { panic!("two targets: {:?}", m.targets) };
        assert!(front.outcomes.get("no_leader").is_some_and(|n| *n > 0), "{front:?}");
        assert!(front.outcomes.get("ok").is_some_and(|n| *n > 0), "{front:?}");
        assert_eq!(down.outcomes.keys().collect::<Vec<_>>(), ["connect"], "{down:?}");
        assert_eq!(report.target, targets);
        let summary = load::report::render(&report);
        assert!(summary.contains("attempts per target"), "{summary}");
        assert!(summary.contains("lost acknowledged changes: 0"), "{summary}");
        proxy.abort();
        server.shutdown().await;
    });
}

#[test]
fn several_targets_must_be_a_cluster() {
    runtime().block_on(async {
        let (a, b) = (server().await, server().await);
        let targets = format!("{},{}", a.local_addr(), b.local_addr());
        let e = load::run(&args(&targets, &["--wait-ms", "0"])).await.expect_err("not a cluster");
        assert!(e.contains("not a node of a cluster"), "{e}");
        a.shutdown().await;
        b.shutdown().await;
    });
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

/// `--draw-window-ms`: the first second's taps are entries, the server draws when the window
/// closes, and the run checks the draw from its reveal (seed, order, winners) and its fairness.
#[test]
fn a_drop_with_a_draw_window_is_drawn_verifiably_and_fairly() {
    let runtime = runtime();
    runtime.block_on(async {
        let server = server().await;
        let target = server.local_addr().to_string();
        let args = args(
            &target,
            &[
                "--profile",
                "drop",
                "--rate",
                "600",
                "--ramp-ms",
                "100",
                "--hold-ms",
                "1500",
                "--decay-ms",
                "100",
                "--stock",
                "40",
                "--viewers",
                "400",
                "--hold-ttl-ms",
                "1000",
                "--payment-delay-ms",
                "20..200",
                "--connections",
                "8",
                "--seed",
                "22",
                "--waitlist",
                "--draw-window-ms",
                "1000",
                "--draw-fairness-seeds",
                "200",
                "--entry-poll-rate",
                "400",
            ],
        );
        let LoadOutcome::Run(report) = load::run(&args).await.expect("the run starts") else {
            panic!("not a capacity run");
        };
        let v = &report.verification;
        assert!(v.passed, "{:?}", v.problems);
        let draws = report.draws.as_ref().expect("a draw report");
        assert_eq!(draws.len(), 1);
        let d = &draws[0];
        assert!(d.verified, "{d:?}");
        assert_eq!(d.entries_missing, 0);
        assert!(d.entrants > d.units, "more entries than units: {d:?}");
        assert_eq!(d.winners, d.units, "one unit each: every unit drawn");
        assert!(d.p_value > 0.0001, "the draw's order looks uniform: {d:?}");
        let text = load::report::render(&report);
        assert!(text.contains("verified from its seed: yes"), "{text}");
        server.shutdown().await;
    });
}
