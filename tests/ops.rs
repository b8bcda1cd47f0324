//! Guards what operators rely on (metrics, health, logs, config, auth, limits) against regressions.
//!
//! What an operator relies on without reading the code: `/metrics` carries every documented
//! family in valid text format, `/readyz` turns 503 when the log is poisoned, JSON logs carry
//! request ids and never a token, configuration layers in the documented order, every route
//! is guarded by the right role, and hostile clients (huge bodies, slowloris, header floods,
//! request floods, connection floods, 10,000 idle sockets) are cut off or turned away at a
//! bounded cost while others keep being served.

#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "test code: a failed expect is a failed test; casts of small measured values"
)]

mod faulty;
mod ops_support;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faulty::{FaultyStorage, Op};
use livestock::clock::ManualClock;
use livestock::config::{Config, Secret};
use livestock::http::endpoints::ENDPOINTS;
use livestock::node::Node;
use livestock::wal::{DirStorage, Durability, WalConfig};
use ops_support::{
    livestock, node_config, open_files_soft_limit, run, Exposition, Http, Proc, Raw, Served,
    TempDir, HOLD_ID_KEY, HOUR_MS, T0_MS,
};
use serde_json::{json, Value};

const ADMIN: &str = "ops-admin-token-5f2a9c71e4";
const CLIENT: &str = "ops-client-token-8d3b6e02f7";
/// Well-formed, long enough, and configured nowhere.
const WRONG: &str = "ops-wrong-token-1c4e7a9b30";

fn wal_config(checkpoint_interval_ms: u64) -> WalConfig {
    WalConfig {
        durability: Durability::Strict,
        segment_bytes_max: 1 << 20,
        checkpoint_interval_ms,
        checkpoint_log_bytes: u64::MAX,
        idempotency_window_ms: HOUR_MS,
        retention_bytes: 0,
        manual: false,
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0_MS))
}

/// Polls `cond` every 10 ms for up to `within`.
#[track_caller]
fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn hold_id(reply: &Value) -> String {
    reply["hold_id"].as_str().unwrap_or_else(|| panic!("no hold_id in {reply}")).to_owned()
}

// ------------------------------------------------------------------ metrics

#[test]
fn metrics_cover_requests_latency_holds_expiry_deals_log_checkpoints_recovery_and_limits() {
    let dir = TempDir::new("metrics");
    let clock = clock();
    let storage = Arc::new(DirStorage::open(dir.path()).expect("open the data dir"));
    let (node, _) = Node::open(node_config(), clock.clone(), storage, wal_config(20), HOLD_ID_KEY)
        .expect("open");
    let config = Config {
        body_bytes_max: 1_024,
        user_rate_per_s: 1,
        user_rate_burst: 1,
        ..Config::default()
    };
    let served = Served::over(node, &config);
    let http = &served.client;

    let created =
        http.post("/v1/deals", &json!({ "id": "drop", "stock": 2, "hold_ttl_ms": 30_000 }));
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(http.post("/v1/deals", &json!({ "id": "other", "stock": 5 })).status, 201);
    let reserve = |deal: &str, user: &str, qty: u32| {
        http.post(&format!("/v1/deals/{deal}/reserve"), &json!({ "user_id": user, "qty": qty }))
    };
    let sold = reserve("drop", "u1", 1);
    assert_eq!(sold.status, 201, "{sold:?}");
    let expiring = reserve("drop", "u2", 1);
    assert_eq!(expiring.status, 201, "{expiring:?}");
    let sold_out = reserve("drop", "u3", 1);
    assert_eq!(sold_out.code().as_deref(), Some("sold_out"), "{sold_out:?}");
    let confirmed = http.post(&format!("/v1/holds/{}/confirm", hold_id(&sold.json())), &json!({}));
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    // The second hold expires: the reaper returns its unit within a tick of the clock passing it.
    clock.advance_ms(31_000);
    eventually("the reaper expires the hold", Duration::from_secs(5), || {
        served.node.allocator().hold_counts().0 == 0
    });
    let held = reserve("other", "u4", 2);
    assert_eq!(held.status, 201, "{held:?}");
    // Rejected: by the per-user rate (u4 just spent its one token) and by the body size.
    let limited = reserve("other", "u4", 1);
    assert_eq!(limited.code().as_deref(), Some("rate_limited"), "{limited:?}");
    let big = http.send("POST", "/v1/deals/other/reserve", &[], Some(&" ".repeat(2_000)));
    assert_eq!(big.code().as_deref(), Some("body_too_large"), "{big:?}");
    assert_eq!(http.get("/v1/nowhere").status, 404);
    // The checkpointer runs every 20 ms once the log has grown.
    eventually("a checkpoint", Duration::from_secs(5), || {
        let m = http.metrics(None);
        m.get("livestock_checkpoints_written", &[]).is_some_and(|n| n >= 1.0)
            && m.get("livestock_checkpoint_age_seconds", &[]).is_some()
    });

    let response = http.get("/metrics");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let m = Exposition::parse(&response.body);
    let requests =
        |op: &str, code: &str| m.value("livestock_requests_total", &[("op", op), ("code", code)]);
    assert_eq!(requests("create_deal", "ok"), 2.0);
    assert_eq!(requests("reserve", "ok"), 3.0);
    assert_eq!(requests("reserve", "sold_out"), 1.0);
    assert_eq!(requests("reserve", "rate_limited"), 1.0);
    assert_eq!(requests("reserve", "body_too_large"), 1.0);
    assert_eq!(requests("confirm", "ok"), 1.0);
    assert_eq!(requests("unrouted", "unknown_route"), 1.0);
    assert_eq!(m.get("livestock_requests_total", &[("op", "release")]), None, "none sent");
    // Latency per operation: every answered request is in its operation's histogram.
    let latency = "livestock_request_duration_seconds";
    assert_eq!(m.histogram(latency, &[("op", "reserve")]), 6.0);
    assert_eq!(m.histogram(latency, &[("op", "create_deal")]), 2.0);
    assert_eq!(m.histogram(latency, &[("op", "confirm")]), 1.0);
    assert!(m.histogram(latency, &[("op", "metrics")]) >= 1.0);
    // Holds and expiries.
    assert_eq!(m.value("livestock_holds_open", &[]), 1.0);
    assert_eq!(m.value("livestock_hold_expiries_total", &[]), 1.0);
    assert_eq!(m.histogram("livestock_hold_expiry_lag_seconds", &[]), 1.0);
    // Per-deal counters.
    let deal = |family: &str, id: &str| {
        m.value(&format!("livestock_deal_{family}_units"), &[("deal", id)])
    };
    assert_eq!(
        (deal("available", "drop"), deal("held", "drop"), deal("sold", "drop")),
        (1.0, 0.0, 1.0)
    );
    assert_eq!(
        (deal("available", "other"), deal("held", "other"), deal("sold", "other")),
        (3.0, 2.0, 0.0)
    );
    // The log: batches and fsyncs (strict: at least one fsync per acknowledged change).
    assert!(m.histogram("livestock_log_batch_records", &[]) >= 1.0);
    assert!(m.histogram("livestock_log_fsync_duration_seconds", &[]) >= 1.0);
    assert_eq!(m.value("livestock_log_poisoned", &[]), 0.0);
    assert!(m.value("livestock_log_durable_lsn", &[]) >= 6.0, "6 changes were acknowledged");
    // Checkpoints and recovery.
    assert!(m.histogram("livestock_checkpoint_duration_seconds", &[]) >= 1.0);
    assert!(m.value("livestock_checkpoint_age_seconds", &[]) >= 0.0);
    assert_eq!(m.value("livestock_checkpoint_failures", &[]), 0.0);
    assert!(m.value("livestock_recovery_duration_milliseconds", &[]) >= 0.0);
    // Connections (this scrape's is open) and rejections by limit.
    assert!(m.value("livestock_connections_open", &[]) >= 1.0);
    let rejections = |limit: &str| m.value("livestock_rejections_total", &[("limit", limit)]);
    assert_eq!(rejections("body_bytes"), 1.0);
    assert_eq!(rejections("user_rate"), 1.0);
    assert_eq!(rejections("connections"), 0.0);
    assert_eq!(rejections("idempotency_keys"), 0.0);
    // Joins the log's threads before the directory goes.
    served.node.close().expect("a clean close");
}

// ------------------------------------------------------------------ health

#[test]
fn healthz_is_liveness_and_readyz_fails_once_the_log_is_poisoned() {
    let dir = TempDir::new("ready");
    let faulty = Arc::new(FaultyStorage::new(Arc::new(
        DirStorage::open(dir.path()).expect("open the data dir"),
    )));
    let (node, _) =
        Node::open(node_config(), clock(), faulty.clone(), wal_config(HOUR_MS), HOLD_ID_KEY)
            .expect("open");
    let served = Served::over(node, &Config::default());
    let http = &served.client;
    let healthz = http.get("/healthz");
    assert_eq!((healthz.status, healthz.json()), (200, json!({ "status": "ok" })));
    let readyz = http.get("/readyz");
    assert_eq!((readyz.status, readyz.json()), (200, json!({ "status": "ready" })));
    assert_eq!(http.post("/v1/deals", &json!({ "id": "d", "stock": 3 })).status, 201);

    faulty.fail_next(Op::Sync, ErrorKind::Other);
    let failed = http.post("/v1/deals/d/reserve", &json!({ "user_id": "u", "qty": 1 }));
    assert_eq!((failed.status, failed.code().as_deref()), (503, Some("storage_unavailable")));
    let readyz = http.get("/readyz");
    assert_eq!(
        (readyz.status, readyz.code().as_deref()),
        (503, Some("storage_unavailable")),
        "{readyz:?}"
    );
    assert_eq!(http.get("/healthz").status, 200, "the process is alive, just not ready");
    assert_eq!(http.metrics(None).value("livestock_log_poisoned", &[]), 1.0);
    // Joins the log's threads before the directory goes (the poisoned log reports so).
    assert!(served.node.close().is_err());
}

// ------------------------------------------------------------------ structured logs

#[test]
fn json_logs_carry_request_ids_and_never_a_token() {
    let dir = TempDir::new("logs");
    let mut command = livestock();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(dir.join("data"))
        // One token by flag, one by the environment: neither may be logged.
        .args(["--admin-tokens", ADMIN])
        .env("LIVESTOCK_CLIENT_TOKENS", CLIENT)
        .env("RUST_LOG", "debug");
    let mut server = Proc::spawn(command, &dir.join("stderr"));
    let http = server.http();

    let given = http.send(
        "GET",
        "/v1/deals",
        &[("authorization", &format!("Bearer {CLIENT}")), ("x-request-id", "ops-given-id-1")],
        None,
    );
    assert_eq!(given.status, 200, "{given:?}");
    assert_eq!(given.header("x-request-id"), Some("ops-given-id-1"), "a given id is echoed");
    let created = http.post_as("/v1/deals", ADMIN, &json!({ "id": "d1", "stock": 3 }));
    assert_eq!(created.status, 201, "{created:?}");
    let generated = created.header("x-request-id").expect("an id is generated").to_owned();
    assert!(!generated.is_empty() && generated != "ops-given-id-1");
    let other = http.get("/healthz");
    let other_id = other.header("x-request-id").expect("an id on every answer");
    assert_ne!(other_id, generated, "generated ids are unique");
    // Refused tokens: unknown, of the wrong role, malformed, and a near miss of a real one.
    assert_eq!(http.get_as("/v1/deals", WRONG).status, 401);
    assert_eq!(http.post_as("/v1/deals", CLIENT, &json!({ "id": "d2", "stock": 1 })).status, 403);
    let no_scheme = http.send("GET", "/v1/deals", &[("authorization", ADMIN)], None);
    assert_eq!(no_scheme.status, 401);
    assert_eq!(http.get_as("/v1/deals", &ADMIN[..ADMIN.len() - 1]).status, 401);
    // Lets everything be written (a clean exit flushes), then reads it all.
    let status = server.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    let stderr = server.stderr();
    let stdout = server.stdout();

    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 5, "{stderr}");
    for line in &lines {
        for field in ["timestamp", "level", "message", "target"] {
            assert!(line.get(field).is_some(), "no {field} in {line}");
        }
    }
    let of_request = |id: &str| -> Vec<&Value> {
        lines.iter().filter(|l| request_ids(l).contains(&id)).collect()
    };
    let given_lines = of_request("ops-given-id-1");
    assert!(
        given_lines.iter().any(|l| l["status"] == 200 && l["level"] == "DEBUG"),
        "no log line of the request with the given id:\n{stderr}"
    );
    let generated_lines = of_request(&generated);
    assert!(
        generated_lines.iter().any(|l| l["status"] == 201),
        "no log line of the request with generated id {generated}:\n{stderr}"
    );
    // Every line about a request names it, the refused ones too (one line each here).
    let request_lines: Vec<&Value> = lines.iter().filter(|l| l.get("status").is_some()).collect();
    assert!(request_lines.len() >= 7, "{stderr}");
    for line in request_lines {
        assert!(!request_ids(line).is_empty(), "a request's line without its id: {line}");
    }
    for token in [ADMIN, CLIENT, WRONG, &ADMIN[..ADMIN.len() - 1]] {
        assert!(!stderr.contains(token), "a token is in the logs:\n{stderr}");
        assert!(!stdout.contains(token), "a token is on stdout:\n{stdout}");
    }
}

/// The request ids a JSON log line carries: as a field of its own, or of the span it is in.
fn request_ids(line: &Value) -> Vec<&str> {
    let spans = line["spans"].as_array().into_iter().flatten().chain([&line["span"]]);
    let fields =
        [&line["request_id"]].into_iter().chain(spans.flat_map(|s| [&s["request_id"], &s["id"]]));
    fields.filter_map(Value::as_str).collect()
}

// ------------------------------------------------------------------ configuration

/// The option names: the keys of the effective configuration as `config check` prints it.
fn option_names() -> Vec<String> {
    Config::default()
        .to_toml()
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
        .collect()
}

#[test]
fn config_check_prints_the_effective_configuration_with_tokens_redacted() {
    let dir = TempDir::new("check");
    let file = dir.join("livestock.toml");
    std::fs::write(
        &file,
        format!("headers_max = 20\nconnections_max = 77\nadmin_tokens = [\"{ADMIN}\"]\n"),
    )
    .expect("write the file");
    let out = run({
        let mut c = livestock();
        c.args(["config", "check"]).arg(&file);
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let printed: toml::Table = toml::from_str(&stdout).expect("the output is TOML");
    assert_eq!(printed["headers_max"].as_integer(), Some(20), "from the file");
    assert_eq!(printed["connections_max"].as_integer(), Some(77), "from the file");
    assert_eq!(printed["body_bytes_max"].as_integer(), Some(16_384), "the default");
    let names: Vec<&String> = printed.keys().collect();
    assert_eq!(names.len(), option_names().len(), "every option is printed: {names:?}");
    assert!(stdout.contains("<redacted>") && !stdout.contains(ADMIN), "{stdout}");
}

#[test]
fn config_check_shows_the_environment_over_the_file() {
    let dir = TempDir::new("check-env");
    let file = dir.join("livestock.toml");
    std::fs::write(&file, "headers_max = 20\nconnections_max = 77\n").expect("write the file");
    let out = run({
        let mut c = livestock();
        c.args(["config", "check"]).arg(&file).env("LIVESTOCK_HEADERS_MAX", "33");
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let printed: toml::Table = toml::from_str(&stdout).expect("the output is TOML");
    assert_eq!(printed["connections_max"].as_integer(), Some(77), "the file");
    assert_eq!(printed["headers_max"].as_integer(), Some(33), "the environment over the file");
}

fn config_check(file: &std::path::Path) -> std::process::Output {
    let mut command = livestock();
    command.args(["config", "check"]).arg(file);
    run(command)
}

#[test]
fn a_bad_config_file_exits_2_with_the_reason() {
    let dir = TempDir::new("bad");
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("typo.toml", Some("headers_maxx = 20\n"), "unknown field `headers_maxx`"),
        ("syntax.toml", Some("headers_max = \n"), "syntax.toml"),
        ("zero.toml", Some("headers_max = 0\n"), "headers_max must be at least 1"),
        ("type.toml", Some("headers_max = \"many\"\n"), "invalid type"),
        ("missing.toml", None, "cannot read"),
    ];
    for (name, text, reason) in cases {
        let file = dir.join(name);
        if let Some(text) = text {
            std::fs::write(&file, text).expect("write the file");
        }
        let out = config_check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        assert!(stderr.contains(reason), "{name}: the reason {reason:?} is not in {stderr}");
        assert!(out.stdout.is_empty(), "{name}: printed a configuration anyway: {out:?}");
        // `serve` refuses the same file the same way, before touching anything.
        let mut serve = livestock();
        serve.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&file);
        serve.arg("--data-dir").arg(dir.join("never"));
        let out = run(serve);
        assert_eq!(out.status.code(), Some(2), "serve {name}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(reason), "serve {name}: {out:?}");
        assert!(!dir.join("never").exists(), "serve {name} created its data directory");
    }
}

/// Starts `serve` with `file` (and `env`, `flags` over it): the data directory it reports.
fn served_data_dir(file: &std::path::Path, env: Option<&str>, flag: Option<&str>) -> String {
    let dir = TempDir::new("layers-run");
    let mut command = livestock();
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(file);
    if let Some(env) = env {
        command.env("LIVESTOCK_DATA_DIR", env);
    }
    if let Some(flag) = flag {
        command.args(["--data-dir", flag]);
    }
    let server = Proc::spawn(command, &dir.join("stderr"));
    let mut line = None;
    eventually("the data directory line", Duration::from_secs(10), || {
        line = server
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("data directory: ").map(str::to_owned));
        line.is_some()
    });
    line.expect("a data directory line")
}

#[test]
fn serve_layers_file_then_environment_then_flags() {
    let dir = TempDir::new("layers");
    let (in_file, in_env, in_flag) =
        (dir.join("from-file"), dir.join("from-env"), dir.join("from-flag"));
    let file = dir.join("livestock.toml");
    let text = format!("data_dir = {:?}\n", in_file.display().to_string());
    std::fs::write(&file, text).expect("write the file");
    let (env, flag) = (in_env.to_str().expect("utf-8"), in_flag.to_str().expect("utf-8"));
    assert_eq!(served_data_dir(&file, None, None), in_file.display().to_string());
    assert_eq!(served_data_dir(&file, Some(env), None), env, "the environment over the file");
    assert_eq!(served_data_dir(&file, Some(env), Some(flag)), flag, "the flag over both");

    // The same order decides validity: an invalid lower layer is overridden by a valid one.
    std::fs::write(&file, "headers_max = 0\n").expect("write the file");
    let serve = |env: Option<&str>, flag: Option<&str>| {
        let mut command = livestock();
        command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&file);
        command.arg("--data-dir").arg(dir.join("data"));
        if let Some(env) = env {
            command.env("LIVESTOCK_HEADERS_MAX", env);
        }
        if let Some(flag) = flag {
            command.args(["--headers-max", flag]);
        }
        command
    };
    let refused = run(serve(None, None));
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let refused = run(serve(Some("0"), None));
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let refused = run(serve(Some("16"), Some("0")));
    assert_eq!(
        refused.status.code(),
        Some(2),
        "the flag's 0 wins over the environment: {refused:?}"
    );
    let started = Proc::spawn(serve(Some("16"), None), &dir.join("stderr-env"));
    drop(started);
    let started = Proc::spawn(serve(Some("0"), Some("16")), &dir.join("stderr-flag"));
    // It took the flag's 16: a request with 20 headers is refused, one with 10 is served.
    let addr = format!("127.0.0.1:{}", started.port()).parse().expect("an address");
    let headers = |n: usize| -> String {
        let extra: String = (1..n).map(|i| format!("x-h{i}: v\r\n")).collect();
        format!("GET /healthz HTTP/1.1\r\nhost: livestock\r\n{extra}\r\n")
    };
    let mut raw = Raw::connect(addr);
    raw.send(headers(20).as_bytes());
    assert_eq!(raw.response().expect("an answer").status, 431);
    let mut raw = Raw::connect(addr);
    raw.send(headers(10).as_bytes());
    assert_eq!(raw.response().expect("an answer").status, 200);
}

#[test]
fn every_option_is_documented_in_serve_help() {
    let out = run({
        let mut c = livestock();
        c.args(["serve", "--help"]);
        c
    });
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    let names = option_names();
    assert!(names.len() >= 24, "{names:?}");
    for name in &names {
        let flag = format!("--{}", name.replace('_', "-"));
        let env = format!("LIVESTOCK_{}", name.to_ascii_uppercase());
        assert!(help.contains(&format!("{flag} ")), "{flag} is not in serve --help:\n{help}");
        assert!(help.contains(&env), "{env} is not in serve --help:\n{help}");
        // The flag has a description: the text after its line is not the next flag.
        let at = help.find(&format!("{flag} ")).expect("found above");
        let described = help[at..].lines().nth(1).is_some_and(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with("--") && !l.starts_with("[env")
        });
        assert!(described, "{flag} has no description:\n{}", &help[at..]);
    }
    assert!(help.contains("--config "), "{help}");
}

// ------------------------------------------------------------------ access control

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    Client,
    Admin,
}

/// Who may call each route, written out here independently of `auth.rs`.
fn needs(method: &str, pattern: &str) -> Needs {
    match (method, pattern) {
        ("GET", "/healthz" | "/readyz") => Needs::Nothing,
        // The live feed, availability and the live page: public by default (`feed_public`).
        ("GET", "/v1/deals/{id}/live" | "/v1/streams/{stream_id}/live")
        | ("GET", "/v1/deals/{id}/availability" | "/live/{stream_id}")
        | ("GET", "/v1/deals/{id}/draw") => Needs::Nothing,
        ("GET", "/metrics")
        | ("POST", "/v1/deals")
        | ("POST", "/v1/deals/{id}/pause")
        | ("POST", "/v1/deals/{id}/resume")
        | ("POST", "/v1/deals/{id}/end")
        | ("POST", "/v1/deals/{id}/stock")
        | ("POST", "/v1/streams/{stream_id}/end")
        | ("GET", "/v1/cluster")
        | ("POST", "/v1/cluster/members")
        | ("POST", "/v1/cluster/members/{id}/remove")
        | ("GET", "/v1/cluster/backup")
        | ("GET", "/v1/events") => Needs::Admin,
        _ => Needs::Client,
    }
}

fn tokens_config(metrics_public: bool) -> Config {
    Config {
        admin_tokens: vec![Secret::new(ADMIN)],
        client_tokens: vec![Secret::new(CLIENT)],
        metrics_public,
        ..Config::default()
    }
}

/// Every route with a real deal, stream and hold in its path.
fn routes(http: &Http, as_admin: Option<&str>) -> Vec<(&'static str, String, &'static str)> {
    let create = json!({ "id": "d1", "stock": 100, "stream_id": "s1" });
    let reserve = json!({ "user_id": "u1", "qty": 1 });
    let hold = match as_admin {
        Some(token) => {
            assert_eq!(http.post_as("/v1/deals", token, &create).status, 201);
            http.post_as("/v1/deals/d1/reserve", token, &reserve)
        }
        None => {
            assert_eq!(http.post("/v1/deals", &create).status, 201);
            http.post("/v1/deals/d1/reserve", &reserve)
        }
    };
    assert_eq!(hold.status, 201, "{hold:?}");
    let hold = hold_id(&hold.json());
    // A deal with a draw (for its route) and one with a waitlist and an entry on it.
    let draw = json!({ "id": "d2", "stock": 1, "starts_at": "2100-01-01T00:00:00Z", "draw_window_ms": 1_000 });
    let waitlist = json!({ "id": "w1", "stock": 1, "waitlist_max": 5 });
    let join = json!({ "user_id": "u2", "qty": 1, "waitlist": true });
    let post = |path: &str, body: &Value| match as_admin {
        Some(token) => http.post_as(path, token, body),
        None => http.post(path, body),
    };
    assert_eq!(post("/v1/deals", &draw).status, 201);
    assert_eq!(post("/v1/deals", &waitlist).status, 201);
    assert_eq!(post("/v1/deals/w1/reserve", &reserve).status, 201);
    let entry = post("/v1/deals/w1/reserve", &join);
    assert_eq!(entry.status, 202, "{entry:?}");
    let entry = entry.json()["entry_id"].as_str().expect("an entry").to_owned();
    ENDPOINTS
        .iter()
        .map(|endpoint| {
            let (method, pattern) = (endpoint.method.as_str(), endpoint.path);
            let deal = if pattern == "/v1/deals/{id}/draw" { "d2" } else { "d1" };
            let path = pattern
                .replace("{id}", deal)
                .replace("{stream_id}", "s1")
                .replace("{hold_id}", &hold)
                .replace("{entry_id}", &entry);
            (method, path, pattern)
        })
        .collect()
}

fn call(http: &Http, method: &str, path: &str, authorization: Option<&str>) -> ops_support::Resp {
    let headers: Vec<(&str, &str)> =
        authorization.map(|a| ("authorization", a)).into_iter().collect();
    if path.ends_with("/live") {
        return http.send_head(method, path, &headers);
    }
    let body = (method == "POST").then_some("{}");
    http.send(method, path, &headers, body)
}

#[track_caller]
fn assert_unauthenticated(r: &ops_support::Resp, what: &str) {
    assert_eq!((r.status, r.code().as_deref()), (401, Some("unauthorized")), "{what}: {r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}: {r:?}");
}

#[test]
fn every_route_needs_its_role() {
    let served = Served::memory(&tokens_config(false), clock());
    let http = &served.client;
    let routes = routes(http, Some(ADMIN));
    assert_eq!(routes.len(), ENDPOINTS.len());
    let bearer = |t: &str| format!("Bearer {t}");
    let (admin, client, wrong) = (bearer(ADMIN), bearer(CLIENT), bearer(WRONG));
    let malformed = [
        ADMIN.to_owned(),
        format!("Basic {ADMIN}"),
        format!("bearer {ADMIN}"),
        "Bearer ".to_owned(),
    ];
    let mut counted = [0; 3];
    for (method, path, pattern) in &routes {
        let needs = needs(method, pattern);
        counted[needs as usize] += 1;
        let what = format!("{method} {path}");
        let none = call(http, method, path, None);
        let with_wrong = call(http, method, path, Some(&wrong));
        let as_client = call(http, method, path, Some(&client));
        if needs == Needs::Nothing {
            for r in [&none, &with_wrong, &as_client] {
                assert_eq!(r.status, 200, "{what}: {r:?}");
            }
            continue;
        }
        assert_unauthenticated(&none, &format!("{what} without a token"));
        assert_unauthenticated(&with_wrong, &format!("{what} with an unknown token"));
        for m in &malformed {
            assert_unauthenticated(
                &call(http, method, path, Some(m)),
                &format!("{what} with {m:?}"),
            );
        }
        match needs {
            Needs::Admin => assert_eq!(
                (as_client.status, as_client.code().as_deref()),
                (403, Some("forbidden")),
                "{what} as a client: {as_client:?}"
            ),
            _ => assert!(
                ![401, 403].contains(&as_client.status),
                "{what} as a client: {as_client:?}"
            ),
        }
    }
    // The admin token is accepted everywhere (the answer is whatever the request deserves).
    for (method, path, _) in &routes {
        let r = call(http, method, path, Some(&admin));
        assert!(![401, 403].contains(&r.status), "{method} {path} as admin: {r:?}");
    }
    assert_eq!(
        counted,
        [7, 10, 12],
        "public, client and admin routes: a new route needs a row here"
    );
}

#[test]
fn metrics_can_be_public_and_no_tokens_means_no_access_control() {
    let public = Served::memory(&tokens_config(true), clock());
    assert_eq!(public.client.get("/metrics").status, 200, "public metrics need no token");
    assert_eq!(public.client.get_as("/metrics", CLIENT).status, 200);
    assert_unauthenticated(&public.client.get("/v1/deals"), "the rest still needs a token");

    let open = Served::memory(&Config::default(), clock());
    for (method, path, _) in routes(&open.client, None) {
        let r = call(&open.client, method, &path, None);
        assert!(![401, 403].contains(&r.status), "{method} {path} without tokens: {r:?}");
        assert!(r.header("www-authenticate").is_none(), "{r:?}");
    }
}

#[test]
fn a_non_loopback_listener_without_tokens_needs_insecure() {
    let dir = TempDir::new("insecure");
    let serve = |extra: &[&str]| {
        let mut command = livestock();
        command.args(["serve", "--listen", "0.0.0.0:0", "--data-dir"]).arg(dir.join("data"));
        command.args(extra);
        command
    };
    let refused = run(serve(&[]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert!(!dir.join("data").exists(), "refused after creating its data directory");
    // Tokens too short are refused, without echoing them.
    let short = run(serve(&["--admin-tokens", "tiny-secret"]));
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert_eq!(short.status.code(), Some(2), "{short:?}");
    assert!(stderr.contains("16") && !stderr.contains("tiny-secret"), "{stderr}");

    // With --insecure it starts (traffic only over loopback).
    let server = Proc::spawn(serve(&["--insecure"]), &dir.join("stderr-insecure"));
    assert!(server.addr.starts_with("0.0.0.0:"), "{}", server.addr);
    assert_eq!(server.http().get("/v1/deals").status, 200, "no tokens: no access control");
    drop(server);
    // With tokens it starts too, and they are required.
    let server = Proc::spawn(serve(&["--admin-tokens", ADMIN]), &dir.join("stderr-tokens"));
    assert_unauthenticated(&server.http().get("/v1/deals"), "tokens configured");
    assert_eq!(server.http().get_as("/v1/deals", ADMIN).status, 200);
}

// ------------------------------------------------------------------ limits and hostile traffic

#[test]
fn a_huge_declared_body_is_refused_before_it_is_sent() {
    let config = Config { admin_tokens: vec![Secret::new(ADMIN)], ..Config::default() };
    let served = Served::memory(&config, clock());
    let mut raw = Raw::connect(served.addr);
    // The headers only: the gigabyte is never sent, and the answer must not wait for it.
    raw.send(
        format!(
            "POST /v1/deals HTTP/1.1\r\nhost: livestock\r\nauthorization: Bearer {ADMIN}\r\n\
             content-type: application/json\r\ncontent-length: 1000000000\r\n\r\n"
        )
        .as_bytes(),
    );
    raw.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let started = Instant::now();
    let refused = raw.response().expect("an answer without the body");
    assert_eq!(
        (refused.status, refused.code().as_deref()),
        (413, Some("body_too_large")),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let m = served.client.metrics(Some(ADMIN));
    assert_eq!(m.value("livestock_rejections_total", &[("limit", "body_bytes")]), 1.0);
    assert_eq!(
        m.value("livestock_requests_total", &[("op", "create_deal"), ("code", "body_too_large")]),
        1.0
    );
    // An unauthenticated one is refused before its size is even looked at.
    let mut raw = Raw::connect(served.addr);
    raw.send(b"POST /v1/deals HTTP/1.1\r\nhost: livestock\r\ncontent-length: 1000000000\r\n\r\n");
    assert_eq!(raw.response().expect("an answer").status, 401);
}

#[test]
fn a_refusal_that_leaves_the_body_unread_says_connection_close() {
    let config = Config { body_bytes_max: 1_024, ..tokens_config(false) };
    let served = Served::memory(&config, clock());
    let cases = [
        ("401", String::new(), 2),
        ("403", format!("authorization: Bearer {CLIENT}\r\n"), 2),
        ("413", format!("authorization: Bearer {ADMIN}\r\n"), 2_000),
    ];
    for (status, auth, length) in cases {
        // The headers first and the body after the answer, as a client that does not wait
        // for `100 Continue` may well send them.
        let mut raw = Raw::connect(served.addr);
        raw.send(
            format!(
                "POST /v1/deals HTTP/1.1\r\nhost: livestock\r\n{auth}\
                 content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
            )
            .as_bytes(),
        );
        let refused = raw.response().unwrap_or_else(|| panic!("{status}: no answer"));
        assert_eq!(refused.status.to_string(), status, "{refused:?}");
        if refused.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
            continue;
        }
        // Kept alive, as it says: it must then read the body and serve the next request.
        let mut rest = " ".repeat(length);
        rest.push_str("GET /healthz HTTP/1.1\r\nhost: livestock\r\n\r\n");
        let _ = raw.stream.write_all(rest.as_bytes());
        let next = raw.response();
        assert!(
            next.as_ref().is_some_and(|r| r.status == 200),
            "{status} without `Connection: close`, and then the connection was closed: {next:?}"
        );
    }
}

#[test]
fn a_slowloris_client_is_cut_off_after_the_header_read_timeout() {
    let config = Config { header_read_timeout_ms: 300, ..Config::default() };
    let served = Served::memory(&config, clock());
    // Others are served meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let others = {
        let (stop, http) = (stop.clone(), served.client.clone());
        std::thread::spawn(move || {
            let mut served = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                assert_eq!(http.get("/healthz").status, 200);
                assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
                served += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            served
        })
    };
    // Slow request lines and slow headers (the start sent at once, then one byte every 50 ms),
    // and a client that sends nothing at all: each is cut off at the timeout.
    let cases = [
        ("a slow request line", "", "GET /healthz HTTP/1.1\r\n"),
        ("slow headers", "GET /healthz HTTP/1.1\r\nhost: livestock\r\n", "x-slow: aaaaaaaaaaaa"),
        ("silence", "", ""),
    ];
    for (case, head, trickle) in cases {
        let mut raw = Raw::connect(served.addr);
        let started = Instant::now();
        raw.send(head.as_bytes());
        let mut cut = None;
        for byte in trickle.bytes().cycle().take(200) {
            if raw.stream.write_all(&[byte]).is_err()
                || raw.closed_within(Duration::from_millis(50))
            {
                cut = Some(started.elapsed());
                break;
            }
        }
        if trickle.is_empty() && raw.closed_within(Duration::from_secs(10)) {
            cut = Some(started.elapsed());
        }
        let cut = cut.unwrap_or_else(|| panic!("{case}: still open after {:?}", started.elapsed()));
        println!("slowloris ({case}) cut off after {cut:?}; it received {:?}", raw.pending());
        assert!(cut >= Duration::from_millis(250), "{case}: cut after {cut:?}, before the timeout");
        assert!(cut < Duration::from_secs(3), "{case}: cut only after {cut:?}");
        assert!(!raw.pending().starts_with("HTTP/1.1 200"), "{case}: it was served");
    }
    stop.store(true, Ordering::SeqCst);
    let served_meanwhile = others.join().expect("the other client");
    assert!(served_meanwhile >= 5, "only {served_meanwhile} requests served meanwhile");
}

#[test]
fn too_many_headers_get_431() {
    let config = Config { headers_max: 16, ..Config::default() };
    let served = Served::memory(&config, clock());
    let request = |n: usize| -> String {
        let extra: String = (1..n).map(|i| format!("x-h{i}: v\r\n")).collect();
        format!("GET /healthz HTTP/1.1\r\nhost: livestock\r\n{extra}\r\n")
    };
    for (headers, status) in [(16, 200), (17, 431), (100, 431)] {
        let mut raw = Raw::connect(served.addr);
        raw.send(request(headers).as_bytes());
        let r = raw.response().unwrap_or_else(|| panic!("{headers} headers: no answer"));
        assert_eq!(r.status, status, "{headers} headers: {r:?}");
    }
}

#[test]
fn the_per_user_rate_limit_refuses_a_burst_with_retry_after_and_is_off_by_default() {
    let clock = clock();
    let config = Config { user_rate_per_s: 5, user_rate_burst: 5, ..Config::default() };
    let served = Served::memory(&config, clock.clone());
    let http = &served.client;
    assert_eq!(http.post("/v1/deals", &json!({ "id": "d", "stock": 1000 })).status, 201);
    let reserve =
        |user: &str| http.post("/v1/deals/d/reserve", &json!({ "user_id": user, "qty": 1 }));
    for i in 1..=5 {
        assert_eq!(reserve("fast").status, 201, "reserve {i} of the burst");
    }
    let before = http.get("/v1/deals/d").json();
    let sixth = reserve("fast");
    assert_eq!((sixth.status, sixth.code().as_deref()), (429, Some("rate_limited")), "{sixth:?}");
    assert_eq!(sixth.header("retry-after"), Some("1"), "{sixth:?}");
    assert_eq!(http.get("/v1/deals/d").json(), before, "a refused reserve changes nothing");
    assert_eq!(reserve("calm").status, 201, "another user is not limited");
    // Carts count against the same bucket.
    let cart = http.post(
        "/v1/cart/reserve",
        &json!({ "user_id": "fast", "lines": [{ "deal_id": "d", "qty": 1 }] }),
    );
    assert_eq!(cart.status, 429, "{cart:?}");
    // 5 per second: one token back every 200 ms.
    clock.advance_ms(200);
    assert_eq!(reserve("fast").status, 201);
    assert_eq!(reserve("fast").status, 429);
    let m = http.metrics(None);
    assert_eq!(m.value("livestock_rejections_total", &[("limit", "user_rate")]), 3.0);

    let default = Served::memory(&Config::default(), Arc::new(ManualClock::new(T0_MS)));
    let http = &default.client;
    assert_eq!(http.post("/v1/deals", &json!({ "id": "d", "stock": 1000 })).status, 201);
    for i in 1..=50 {
        let r = http.post("/v1/deals/d/reserve", &json!({ "user_id": "fast", "qty": 1 }));
        assert_eq!(r.status, 201, "reserve {i} with no rate limit: {r:?}");
    }
}

#[test]
fn past_the_connection_bound_a_new_connection_is_closed_at_once() {
    const MAX: usize = 4;
    let served = Served::memory(&Config { connections_max: MAX, ..Config::default() }, clock());
    let mut open: Vec<Raw> = (0..MAX)
        .map(|_| {
            let mut raw = Raw::connect(served.addr);
            assert_eq!(raw.get("/healthz").status, 200, "within the bound");
            raw
        })
        .collect();
    let mut extra = Raw::connect(served.addr);
    let started = Instant::now();
    assert!(extra.closed_within(Duration::from_secs(2)), "connection {} was kept open", MAX + 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed only after {:?}",
        started.elapsed()
    );
    assert_eq!(extra.pending(), "", "nothing is sent to a turned-away connection");
    // Scraped over one of the connections already open.
    let scrape = open[0].get("/metrics");
    let m = Exposition::parse(&scrape.body);
    assert_eq!(m.value("livestock_rejections_total", &[("limit", "connections")]), 1.0);
    assert_eq!(m.value("livestock_connections_open", &[]), MAX as f64);
    // Closing one frees its place.
    drop(open.pop());
    eventually("a freed place is taken", Duration::from_secs(5), || {
        let mut raw = Raw::connect(served.addr);
        raw.send(b"GET /healthz HTTP/1.1\r\nhost: livestock\r\n\r\n");
        raw.response().is_some_and(|r| r.status == 200)
    });
}

/// Idle connections wanted; fewer if the open-file limits do not allow them (at least
/// `IDLE_CONNECTIONS_MIN`).
const IDLE_CONNECTIONS: u64 = 10_000;
const IDLE_CONNECTIONS_MIN: u64 = 3_000;
/// Memory an idle connection may cost the server. What one costs by design: hyper's 8 KiB read
/// buffer, allocated at the first read; the connection's state and its task; the socket's
/// registration with the reactor: about 13 KiB measured (debug build, 2 workers). 32 KiB leaves
/// room for the allocator's rounding and fragmentation, and fails if a connection holds a
/// second buffer of the read buffer's size or a body's (16 KiB) before any request.
const IDLE_CONNECTION_BYTES_MAX: u64 = 32 * 1024;

/// Raises this process's soft open-files limit towards `wanted` (never above the hard limit),
/// through `prlimit(1)`: the tests have no libc bindings. Best effort.
fn raise_open_files_limit(wanted: u64) {
    let pid = std::process::id().to_string();
    if open_files_soft_limit(&pid) >= wanted {
        return;
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().nth(1).map(str::to_owned))
        .and_then(|h| if h == "unlimited" { Some(u64::MAX) } else { h.parse().ok() })
        .unwrap_or(0);
    let target = wanted.min(hard);
    let _ = Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={target}:")]).status();
}

#[test]
fn ten_thousand_idle_connections_cost_bounded_memory() {
    let dir = TempDir::new("idle");
    // The server may open as many files as root or the hard limit allows; its own bound on
    // connections is set above the test's count so that none is turned away.
    let mut command = ops_support::clean(Command::new("sh"));
    command
        .arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
        .arg(ops_support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--worker-threads", "2"])
        .args(["--connections-max", "20000", "--header-read-timeout-ms", "120000", "--data-dir"])
        .arg(dir.join("data"));
    let server = Proc::spawn(command, &dir.join("stderr"));
    let addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", server.port()).parse().expect("an address");
    raise_open_files_limit(IDLE_CONNECTIONS + 1_024);
    let client_limit = open_files_soft_limit(&std::process::id().to_string());
    let server_limit = open_files_soft_limit(&server.pid().to_string());
    // Room for the other tests of this binary running meanwhile, and for the server's own files.
    let n = IDLE_CONNECTIONS
        .min(client_limit.saturating_sub(512))
        .min(server_limit.saturating_sub(128));
    println!(
        "open files: client soft limit {client_limit}, server {server_limit}: {n} connections"
    );
    assert!(n >= IDLE_CONNECTIONS_MIN, "the open-files limits allow only {n} connections");

    // One connection kept for scraping, and a little traffic so that first-use allocations
    // (the runtime's, the allocator's) are in the baseline.
    let mut probe = Raw::connect(addr);
    let http = Http::new(&format!("http://{addr}"));
    assert_eq!(http.post("/v1/deals", &json!({ "id": "d", "stock": 100 })).status, 201);
    for _ in 0..20 {
        assert_eq!(probe.get("/metrics").status, 200);
        assert_eq!(
            http.post("/v1/deals/d/reserve", &json!({ "user_id": "u", "qty": 1 })).status,
            201
        );
    }
    let open_now = |probe: &mut Raw| {
        let scrape = probe.get("/metrics");
        Exposition::parse(&scrape.body).value("livestock_connections_open", &[]) as u64
    };
    // Only the probe is open once the setup's connections are closed.
    let baseline_connections = 1;
    eventually("the setup's connections close", Duration::from_secs(5), || {
        open_now(&mut probe) == baseline_connections
    });
    std::thread::sleep(Duration::from_millis(200));
    let rss_before_kib = server.status_kib("VmRSS");

    let started = Instant::now();
    let mut idle: Vec<TcpStream> = Vec::with_capacity(n as usize);
    while (idle.len() as u64) < n {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {}: {e}", idle.len() + 1));
        idle.push(stream);
        // Never more than 100 waiting in the listen backlog (128 deep): past it the kernel
        // drops handshakes and connecting stalls for a second per retry.
        if idle.len().is_multiple_of(100) {
            let want = baseline_connections + idle.len() as u64;
            eventually("the server accepts them", Duration::from_secs(20), || {
                open_now(&mut probe) >= want
            });
        }
    }
    let want = baseline_connections + n;
    eventually("the server holds every connection", Duration::from_secs(20), || {
        open_now(&mut probe) == want
    });
    let opened_in = started.elapsed();
    // Each connection's task has been polled (its buffer allocated) once accepted; let the
    // runtime settle before reading.
    std::thread::sleep(Duration::from_millis(300));
    let rss_after_kib = server.status_kib("VmRSS");
    let grown_bytes = rss_after_kib.saturating_sub(rss_before_kib) * 1024;
    let per_connection = grown_bytes / n;
    println!(
        "{n} idle connections opened in {opened_in:?}: server VmRSS {rss_before_kib} kB -> \
         {rss_after_kib} kB, {per_connection} bytes per connection (bound {IDLE_CONNECTION_BYTES_MAX})"
    );
    assert!(
        per_connection < IDLE_CONNECTION_BYTES_MAX,
        "{per_connection} bytes per idle connection ({n} connections)"
    );
    // It still serves, on a new connection and on an old one.
    let fresh = Http::new(&format!("http://{addr}"));
    assert_eq!(fresh.post("/v1/deals/d/reserve", &json!({ "user_id": "v", "qty": 1 })).status, 201);
    drop(fresh);
    assert_eq!(probe.get("/healthz").status, 200);
    let mut old = Raw::from(idle.pop().expect("a connection"));
    assert_eq!(old.get("/healthz").status, 200, "an idle connection still works");
    drop(old);

    drop(idle);
    eventually("the server closes them all", Duration::from_secs(20), || {
        open_now(&mut probe) <= baseline_connections
    });
}

/// Human-format logs to a file or a pipe (journald) carry no terminal colour codes, and a clean
/// stop still writes its last lines and exits 0.
#[test]
fn human_logs_off_a_terminal_carry_no_colour_codes() {
    let dir = TempDir::new("human-logs");
    let mut command = livestock();
    command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.join("data"));
    let mut server = Proc::spawn(command, &dir.join("stderr"));
    let http = server.http();
    assert_eq!(http.post("/v1/deals", &json!({ "id": "d1", "stock": 3 })).status, 201);
    let status = server.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    let stderr = server.stderr();
    assert!(stderr.contains("recovered"), "{stderr}");
    assert!(stderr.contains("final checkpoint written; bye"), "the last line is kept:\n{stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes in a log file:\n{stderr:?}");
}

#[test]
fn metrics_count_waitlist_offers_lapses_draws_and_waiting_entries() {
    let dir = TempDir::new("metrics-waitlist");
    let clock = clock();
    let storage = Arc::new(DirStorage::open(dir.path()).expect("open the data dir"));
    let (node, _) = Node::open(node_config(), clock.clone(), storage, wal_config(20), HOLD_ID_KEY)
        .expect("open");
    let served = Served::over(node, &Config::default());
    let http = &served.client;
    let body = json!({ "id": "w", "stock": 1, "waitlist_max": 10, "per_user_limit": 1 });
    assert_eq!(http.post("/v1/deals", &body).status, 201);
    let reserve = |user: &str| {
        http.post("/v1/deals/w/reserve", &json!({ "user_id": user, "qty": 1, "waitlist": true }))
    };
    let first = reserve("a");
    assert_eq!(first.status, 201, "{first:?}");
    for user in ["b", "c"] {
        assert_eq!(reserve(user).status, 202);
    }
    let m = http.metrics(None);
    assert_eq!(m.value("livestock_deal_waiting_entries", &[("deal", "w")]), 2.0);
    assert_eq!(m.value("livestock_waitlist_offers_total", &[]), 0.0);
    let released = http.post(&format!("/v1/holds/{}/release", hold_id(&first.json())), &json!({}));
    assert_eq!(released.status, 200, "{released:?}");
    let m = http.metrics(None);
    assert_eq!(m.value("livestock_waitlist_offers_total", &[]), 1.0);
    assert_eq!(m.value("livestock_deal_waiting_entries", &[("deal", "w")]), 1.0);
    assert_eq!(m.value("livestock_draws_total", &[]), 0.0);
    assert_eq!(m.value("livestock_waitlist_lapses_total", &[]), 0.0);
    assert_eq!(m.get("livestock_deal_waiting_entries", &[("deal", "plain")]), None);
}
