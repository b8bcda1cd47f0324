//! Guards against losing or inventing acknowledged changes when the server is SIGKILLed mid-load.
//!
//! The kill loop: start the real binary on a scratch data directory, drive reserve / confirm /
//! release traffic from several threads (every mutation under an `Idempotency-Key`), keep a
//! ledger of every acknowledged (2xx) answer, SIGKILL the server mid-traffic, restart it on the
//! same directory and check:
//! (a) no deal is oversold and every deal's units add up;
//! (b) every acknowledged reserve's hold exists, every acknowledged confirm and release is there;
//! (c) no hold is both confirmed and released (in the ledger, or between ledger and server);
//! (d) an acknowledged keyed request sent again gets its original answer, byte for byte; a
//!     request whose answer was lost in the kill gets some answer, and the same one again.
//!
//! `LIVESTOCK_KILL_CYCLES` (default 30) sets the number of kills, `LIVESTOCK_KILL_SEED` the seed
//! of the test's own choices. `scripts/kill-loop.sh` runs many cycles in release mode.

#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failed expectation is a failed test; casts are of random indices below a Vec length"
)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    assert_deal_balanced, check_hold, str_field, u64_field, verify, Answer, Client, Ledger,
    Request, Resolution, Rng, Scratch, Server,
};

const STOCK: u64 = 20;
const PER_USER_LIMIT: u64 = 3;
const DEALS_PER_CYCLE: usize = 3;
const WORKERS: usize = 4;
const USERS: u64 = 16;
/// Traffic runs this long (ms, chosen at random per cycle) before the kill.
const TRAFFIC_MS: (u64, u64) = (100, 400);
/// Up to this many holds the check after every restart looks at every hold; past it, the holds
/// of the last cycle plus a random sample (and every hold after the last cycle).
const FULL_CHECK_HOLDS_MAX: usize = 3_000;
const SAMPLED_HOLDS: usize = 500;
/// Acknowledged keyed requests re-sent after each restart: from the last cycle, and from any.
const RETRIES_RECENT: usize = 8;
const RETRIES_ANY: usize = 8;
/// Requests whose answer was lost, re-sent after each restart.
const LOST_RETRIES: usize = 2;

#[derive(Default, Debug)]
struct Tally {
    cycles: usize,
    confirms_verified: u64,
    releases_verified: u64,
    reserves_verified: u64,
    retries_verified: u64,
    lost_retried: u64,
    lost_retries_acknowledged: u64,
}

/// One worker's traffic for one cycle: until its server dies (the first lost answer).
fn drive(
    client: &Client,
    ledger: &Mutex<Ledger>,
    deals: &[String],
    cycle: usize,
    worker: usize,
    mut rng: Rng,
) {
    let mut mine: Vec<(String, u64)> = Vec::new();
    let mut resolved: Vec<String> = Vec::new();
    for n in 0.. {
        let key = format!("k{cycle}-{worker}-{n}");
        let request = if !resolved.is_empty() && rng.chance(4) {
            // A second resolution of a resolved hold: a no-op 200 if it asks for the same thing,
            // a 409 if it asks for the other one. A 2xx to the other one trips check (c).
            let hold = rng.pick(&resolved).clone();
            let action = if rng.chance(50) { "confirm" } else { "release" };
            Request::post(format!("/v1/holds/{hold}/{action}"), key, &json!({}))
        } else if !mine.is_empty() && rng.chance(50) {
            let index = rng.range(0, mine.len() as u64 - 1) as usize;
            let (hold, qty) = mine.swap_remove(index);
            match rng.range(0, 9) {
                0..=2 => Request::post(format!("/v1/holds/{hold}/confirm"), key, &json!({})),
                3..=4 => {
                    let partial = rng.range(1, qty);
                    Request::post(
                        format!("/v1/holds/{hold}/confirm"),
                        key,
                        &json!({ "qty": partial }),
                    )
                }
                5..=8 => Request::post(format!("/v1/holds/{hold}/release"), key, &json!({})),
                // Left to expire.
                _ => continue,
            }
        } else {
            let deal = rng.pick(deals);
            let user = format!("u{}", rng.range(0, USERS - 1));
            let mut body = json!({ "user_id": user, "qty": rng.range(1, 2) });
            if rng.chance(30) {
                body["ttl_ms"] = json!(*rng.pick(&[1_000, 2_000]));
            }
            Request::post(format!("/v1/deals/{deal}/reserve"), key, &body)
        };
        let answer = client.send(&request);
        let lost = matches!(answer, Answer::Lost(_));
        {
            let mut ledger = ledger.lock().expect("ledger lock");
            ledger.sent += 1;
            ledger.record(&request, &answer, cycle);
        }
        if lost {
            return;
        }
        if answer.is_success() {
            let reply = answer.json();
            if request.path.ends_with("/reserve") {
                mine.push((str_field(&reply, "hold_id"), u64_field(&reply, "qty")));
            } else {
                resolved.push(str_field(&reply, "hold_id"));
            }
        }
    }
}

fn server_args(durability: &str, rng: &mut Rng) -> Vec<String> {
    // Checkpoints and segment rolls happen often, so that kills land inside them too.
    let checkpoint_ms = rng.range(20, 300);
    let segment_bytes = *rng.pick(&[4_096u64, 65_536, 64 * 1024 * 1024]);
    vec![
        "--durability".into(),
        durability.into(),
        "--checkpoint-interval-ms".into(),
        checkpoint_ms.to_string(),
        "--segment-bytes-max".into(),
        segment_bytes.to_string(),
        "--worker-threads".into(),
        "2".into(),
    ]
}

fn start(data: &Scratch, log: &std::path::Path, durability: &str, rng: &mut Rng) -> Server {
    let args = server_args(durability, rng);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(data.path(), log, &args)
}

/// The checks after a restart. `full`: look at every hold, not a sample.
fn check(
    client: &Client,
    ledger: &mut Ledger,
    cycle: usize,
    full: bool,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    // (a) every deal balances; every acknowledged deal exists; sold covers acknowledged confirms.
    let listed = client.get_json("/v1/deals").expect("deal list");
    let listed = listed["deals"].as_array().expect("deals array");
    let mut sold_acked: HashMap<&str, u64> = HashMap::new();
    for facts in ledger.holds.values() {
        if let Some(Resolution::Confirmed { qty }) = facts.resolution {
            *sold_acked.entry(&facts.deal).or_default() += qty;
        }
    }
    for deal in listed {
        assert_deal_balanced(deal);
        let id = str_field(deal, "id");
        let sold = u64_field(deal, "sold");
        let acked = sold_acked.get(id.as_str()).copied().unwrap_or(0);
        assert!(
            sold >= acked,
            "deal {id}: {acked} units acknowledged sold, only {sold} sold: {deal}"
        );
    }
    for id in &ledger.deals {
        assert!(
            listed.iter().any(|d| d["id"] == json!(id)),
            "acknowledged deal {id} is gone after restart"
        );
    }

    // (b), (c): the acknowledged holds, as the server sees them.
    let selected: Vec<&String> = if full || ledger.holds.len() <= FULL_CHECK_HOLDS_MAX {
        ledger.holds.keys().collect()
    } else {
        let all: Vec<&String> = ledger.holds.keys().collect();
        let mut picked: Vec<&String> =
            ledger.holds.iter().filter(|(_, f)| f.cycle + 1 >= cycle).map(|(id, _)| id).collect();
        picked.extend((0..SAMPLED_HOLDS).map(|_| *rng.pick(&all)));
        picked
    };
    let every_hold = selected.len() == ledger.holds.len();
    let mut taken: HashMap<(&str, &str), u64> = HashMap::new();
    for hold_id in selected {
        let facts = &ledger.holds[hold_id];
        let hold = check_hold(client, hold_id, facts, &format!("after restart {cycle}"));
        tally.reserves_verified += 1;
        match facts.resolution {
            Some(Resolution::Confirmed { .. }) => tally.confirms_verified += 1,
            Some(Resolution::Released) => tally.releases_verified += 1,
            None => {}
        }
        let units = match hold["state"].as_str() {
            Some("held") => facts.qty,
            Some("confirmed") => u64_field(&hold, "confirmed_qty"),
            _ => 0,
        };
        *taken.entry((&facts.user, &facts.deal)).or_default() += units;
    }
    if every_hold {
        for ((user, deal), units) in taken {
            assert!(
                units <= PER_USER_LIMIT,
                "user {user} holds or bought {units} units of {deal}, over {PER_USER_LIMIT}"
            );
        }
    }

    // (d) acknowledged keyed requests get their original answer back.
    let recent: Vec<usize> =
        (0..ledger.acked.len()).filter(|&i| ledger.acked[i].cycle + 1 == cycle).collect();
    let mut sample: Vec<usize> = Vec::new();
    if !recent.is_empty() {
        sample.extend((0..RETRIES_RECENT).map(|_| *rng.pick(&recent)));
    }
    if !ledger.acked.is_empty() {
        sample
            .extend((0..RETRIES_ANY).map(|_| rng.range(0, ledger.acked.len() as u64 - 1) as usize));
    }
    for index in sample {
        let acked = &ledger.acked[index];
        let again = client.send(&acked.request);
        assert_eq!(
            again,
            Answer::Reply { status: acked.status, body: acked.body.clone() },
            "(d) retry of {} {} (key {:?}, acknowledged in cycle {}) after restart {cycle} \
             got another answer",
            acked.request.method,
            acked.request.path,
            acked.request.key,
            acked.cycle
        );
        tally.retries_verified += 1;
    }

    // (d) a request whose answer was lost: any answer, then the same one again.
    for _ in 0..LOST_RETRIES.min(ledger.lost.len()) {
        let index = rng.range(0, ledger.lost.len() as u64 - 1) as usize;
        let request = ledger.lost.swap_remove(index);
        let first = client.send(&request);
        let second = client.send(&request);
        assert!(matches!(first, Answer::Reply { .. }), "retry of {request:?}: {first:?}");
        assert_eq!(
            first, second,
            "a retry of {} {} (key {:?}) is not stable",
            request.method, request.path, request.key
        );
        tally.lost_retried += 1;
        if first.is_success() {
            tally.lost_retries_acknowledged += 1;
            ledger.record(&request, &first, cycle);
        }
    }
}

fn create_deals(client: &Client, ledger: &mut Ledger, cycle: usize) -> Vec<String> {
    (0..DEALS_PER_CYCLE)
        .map(|d| {
            let id = format!("c{cycle}-{d}");
            let body = json!({
                "id": id,
                "stock": STOCK,
                "per_user_limit": PER_USER_LIMIT,
                "hold_ttl_ms": 1_500,
                "hold_ttl_ms_max": 2_000,
            });
            let request = Request::post("/v1/deals", format!("deal-{id}"), &body);
            let answer = client.send(&request);
            assert!(matches!(answer, Answer::Reply { status: 201, .. }), "create {id}: {answer:?}");
            ledger.sent += 1;
            ledger.record(&request, &answer, cycle);
            id
        })
        .collect()
}

#[test]
fn acknowledged_changes_survive_kill_9() {
    kill_loop("strict");
}

/// `serve --help` promises that relaxed durability loses changes only in a machine crash, "not a
/// process crash": the same checks must hold under SIGKILL.
#[test]
fn relaxed_acknowledged_changes_survive_kill_9() {
    kill_loop("relaxed");
}

/// Kills the server `LIVESTOCK_KILL_CYCLES` times under load, checking after every restart.
fn kill_loop(durability: &str) {
    let cycles: usize = match std::env::var("LIVESTOCK_KILL_CYCLES") {
        Ok(s) => s.parse().expect("LIVESTOCK_KILL_CYCLES: a number"),
        Err(_) => 30,
    };
    let seed = Rng::seed_from_env("LIVESTOCK_KILL_SEED");
    eprintln!("kill loop: {cycles} cycles, {durability} durability, LIVESTOCK_KILL_SEED={seed}");
    let mut rng = Rng::new(seed);
    let scratch = Scratch::new("crash");
    let data = Scratch::new("crash-data");
    let log = scratch.join("server.log");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tally = Tally::default();
    let started = Instant::now();

    for cycle in 0..=cycles {
        let mut server = start(&data, &log, durability, &mut rng);
        let client = Client::new(&server.base());
        let mut guard = ledger.lock().expect("ledger lock");
        if cycle > 0 {
            check(&client, &mut guard, cycle, cycle == cycles, &mut rng, &mut tally);
        }
        if cycle == cycles {
            break;
        }
        let deals = Arc::new(create_deals(&client, &mut guard, cycle));
        drop(guard);

        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (client, ledger, deals) = (client.clone(), ledger.clone(), deals.clone());
                let worker_rng = Rng::new(rng.next_u64());
                std::thread::spawn(move || {
                    drive(&client, &ledger, &deals, cycle, worker, worker_rng)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.range(TRAFFIC_MS.0, TRAFFIC_MS.1)));
        server.kill();
        // Whatever the kill left, the offline check must accept it.
        let (status, report) = verify(data.path());
        assert!(status.success(), "verify after kill {cycle}: {status}\n{report}");
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        tally.cycles += 1;
    }

    let ledger = ledger.lock().expect("ledger lock");
    let acknowledged = ledger.acked.len();
    assert!(acknowledged > cycles, "too little traffic to mean anything: {acknowledged} answers");
    println!(
        "kill loop tally: {durability} durability, cycles {}, requests sent {}, acknowledged {}, holds {}, \
         reserves verified {}, confirms verified {}, releases verified {}, retries verified {}, \
         lost answers retried {} ({} now acknowledged), time {:.1} s, seed {seed}",
        tally.cycles,
        ledger.sent,
        acknowledged,
        ledger.holds.len(),
        tally.reserves_verified,
        tally.confirms_verified,
        tally.releases_verified,
        tally.retries_verified,
        tally.lost_retried,
        tally.lost_retries_acknowledged,
        started.elapsed().as_secs_f64()
    );
}
