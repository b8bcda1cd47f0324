//! Guards against SIGTERM under load losing acknowledged changes or leaving log to replay.
//!
//! The process must exit 0 by itself, `livestock verify` must then find nothing to replay, and a
//! restart must show every acknowledged change and answer every retry as the first time.

#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failed expect is a failed test; casts of small counts"
)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    assert_deal_balanced, check_hold, str_field, u64_field, verify, Answer, Client, Ledger,
    Request, Rng, Scratch, Server,
};

const WORKERS: usize = 4;
const STOCK: u64 = 100_000;
/// Acknowledged changes to wait for before the SIGTERM, so that it lands mid-traffic.
const ACKED_BEFORE_TERM: usize = 200;
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const CLEAN: &str = "records to replay after the checkpoint: 0";

/// Whether the SIGTERM was sent, and how many successes came after it.
#[derive(Default)]
struct Term {
    sent: AtomicBool,
    answered_after: AtomicU64,
}

/// Reserves, confirms and releases until the server stops answering.
/// Counts the successes answered after the SIGTERM was sent (requests that were in flight).
fn drive(client: &Client, ledger: &Mutex<Ledger>, term: &Term, worker: usize, mut rng: Rng) {
    let mut mine: Vec<String> = Vec::new();
    for n in 0.. {
        let key = format!("s{worker}-{n}");
        let request = if !mine.is_empty() && rng.chance(40) {
            let hold = mine.swap_remove(rng.range(0, mine.len() as u64 - 1) as usize);
            let action = if rng.chance(50) { "confirm" } else { "release" };
            Request::post(format!("/v1/holds/{hold}/{action}"), key, &json!({}))
        } else {
            let body =
                json!({ "user_id": format!("u{worker}-{}", n % 50), "qty": rng.range(1, 3) });
            Request::post("/v1/deals/drop/reserve", key, &body)
        };
        let answer = client.send(&request);
        ledger.lock().expect("ledger lock").record(&request, &answer, 0);
        if answer.is_success() && term.sent.load(Ordering::SeqCst) {
            term.answered_after.fetch_add(1, Ordering::SeqCst);
        }
        match &answer {
            Answer::Lost(_) => return,
            _ if answer.is_success() && request.path.ends_with("/reserve") => {
                mine.push(str_field(&answer.json(), "hold_id"));
            }
            // A refusal is not a change (a confirm or release of a hold is tried only once).
            _ => {}
        }
    }
}

/// SIGTERM; the process must exit 0 by itself, and leave nothing to replay.
fn stop_cleanly(server: &mut Server, data: &Scratch) -> Duration {
    let started = Instant::now();
    server.terminate();
    let Some(status) = server.wait_timeout(EXIT_TIMEOUT) else {
        panic!("no exit {EXIT_TIMEOUT:?} after SIGTERM:\n{}", server.log_tail());
    };
    let took = started.elapsed();
    assert!(status.success(), "exit after SIGTERM: {status}\n{}", server.log_tail());
    let (status, report) = verify(data.path());
    assert!(status.success(), "verify after a clean exit: {status}\n{report}");
    assert!(report.contains(CLEAN), "a clean exit left log to replay:\n{report}");
    assert!(!report.contains("torn"), "a clean exit left a torn log:\n{report}");
    took
}

#[test]
fn sigterm_under_load_exits_zero_keeps_every_acknowledged_change_and_replays_nothing() {
    let scratch = Scratch::new("shutdown");
    let data = Scratch::new("shutdown-data");
    let log = scratch.join("server.log");
    let mut rng = Rng::new(Rng::seed_from_env("LIVESTOCK_SHUTDOWN_SEED"));
    let args = ["--worker-threads", "2", "--checkpoint-interval-ms", "50"];

    let mut server = Server::start(data.path(), &log, &args);
    let client = Client::new(&server.base());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let create =
        Request::post("/v1/deals", "create-drop", &json!({ "id": "drop", "stock": STOCK }));
    let created = client.send(&create);
    assert!(matches!(created, Answer::Reply { status: 201, .. }), "{created:?}");
    ledger.lock().expect("ledger lock").record(&create, &created, 0);

    let term = Arc::new(Term::default());
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (client, ledger, term) = (client.clone(), ledger.clone(), term.clone());
            let rng = Rng::new(rng.next_u64());
            std::thread::spawn(move || drive(&client, &ledger, &term, worker, rng))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.lock().expect("ledger lock").acked.len() < ACKED_BEFORE_TERM {
        assert!(Instant::now() < deadline, "no traffic:\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(5));
    }
    term.sent.store(true, Ordering::SeqCst);
    let took = stop_cleanly(&mut server, &data);
    for worker in workers {
        worker.join().expect("worker");
    }

    // Restart: every acknowledged change is there, and retries get their original answers.
    let mut server = Server::start(data.path(), &log, &args);
    let client = Client::new(&server.base());
    let ledger = ledger.lock().expect("ledger lock");
    let deal = client.get_json("/v1/deals/drop").expect("the deal survives");
    assert_deal_balanced(&deal);
    let mut held = 0;
    let mut sold_acked = 0;
    for (hold_id, facts) in &ledger.holds {
        let hold = check_hold(&client, hold_id, facts, "after a clean restart");
        match hold["state"].as_str() {
            Some("held") => held += facts.qty,
            Some("confirmed") => sold_acked += u64_field(&hold, "confirmed_qty"),
            _ => {}
        }
    }
    // Holds live for 10 minutes by default: nothing expired, so the deal's counters are exactly
    // what the acknowledged holds say, plus whatever the lost answers did.
    assert!(u64_field(&deal, "held") >= held, "held units lost: {deal}, {held} acknowledged");
    assert!(u64_field(&deal, "sold") >= sold_acked, "sold units lost: {deal}, {sold_acked}");
    for acked in &ledger.acked {
        let again = client.send(&acked.request);
        assert_eq!(
            again,
            Answer::Reply { status: acked.status, body: acked.body.clone() },
            "retry of {:?} after a clean restart",
            acked.request
        );
    }
    let acknowledged = ledger.acked.len();
    let lost = ledger.lost.len();
    drop(ledger);

    // An idle server stops cleanly too.
    stop_cleanly(&mut server, &data);
    println!(
        "shutdown: {acknowledged} acknowledged changes kept and retried ({} answered after the \
         SIGTERM), {lost} answers lost in the shutdown, exit after SIGTERM in {} ms",
        term.answered_after.load(Ordering::SeqCst),
        took.as_millis()
    );
}
