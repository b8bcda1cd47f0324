//! Guards the concurrent core against interleavings no example test reaches: loom runs each
//! model under every schedule (up to LOOM_MAX_PREEMPTIONS) and the business invariants must hold
//! in all of them. Built only with `RUSTFLAGS="--cfg loom"`; see scripts/loom.sh.
#![cfg(loom)]

use livestock::alloc::{Allocator, AllocatorConfig};
use livestock::idempotency::{Begin, IdempotencyTable, StoredReply};
use livestock_core::command::{Command, Line, Outcome, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::event::EventLog;
use livestock_core::hold::HoldState;
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, UserId};
use loom::sync::Arc;
use loom::thread;

const T0: u64 = 1_800_000_000_000;

fn allocator() -> Allocator {
    Allocator::new(AllocatorConfig {
        hold_id_key: HoldIdKey(7),
        resolved_hold_retention_ms: 3_600_000,
    })
}

fn create(alloc: &Allocator, id: &str, stock: u64, per_user_limit: Option<u32>) {
    let new = NewDeal {
        id: DealId::parse(id).unwrap(),
        stream_id: None,
        stock,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit,
        hold_ttl_ms: Some(10_000),
        hold_ttl_ms_max: Some(60_000),
        waitlist_max: None,
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    };
    alloc.execute(&Command::CreateDeal(new), T0, &mut EventLog::default()).unwrap();
}

fn reserve(alloc: &Allocator, deal: &str, user: &str, qty: u32) -> Result<HoldSeq, ErrorCode> {
    let command = Command::Reserve(Reserve {
        user_id: UserId::parse(user).unwrap(),
        lines: vec![Line { deal_id: DealId::parse(deal).unwrap(), qty }],
        ttl_ms: None,
        waitlist: false,
    });
    match alloc.execute(&command, T0, &mut EventLog::default()) {
        Ok(Outcome::Holds(holds)) => Ok(holds[0].hold.seq),
        Ok(other) => panic!("unexpected outcome {other:?}"),
        Err(e) => Err(e.code()),
    }
}

fn counters(alloc: &Allocator, deal: &str) -> (u64, u64, u64) {
    let c = alloc.deal(deal, T0).unwrap().counters;
    (c.available(), c.held(), c.sold())
}

fn code(result: Result<Outcome, CommandError>) -> Result<HoldState, ErrorCode> {
    match result {
        Ok(Outcome::Hold(view)) => Ok(view.state),
        Ok(other) => panic!("unexpected outcome {other:?}"),
        Err(e) => Err(e.code()),
    }
}

/// The last unit: racing reserves, exactly one wins in every interleaving.
#[test]
fn the_last_unit_has_exactly_one_winner() {
    let threads: usize =
        std::env::var("LOOM_LAST_UNIT_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    loom::model(move || {
        let alloc = Arc::new(allocator());
        create(&alloc, "d", 1, None);
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let alloc = alloc.clone();
                thread::spawn(move || reserve(&alloc, "d", &format!("u{i}"), 1))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{results:?}");
        assert!(results.iter().all(|r| r.is_ok() || *r == Err(ErrorCode::SoldOut)));
        assert_eq!(counters(&alloc, "d"), (0, 1, 0));
        alloc.check_invariants();
    });
}

/// Reserve, release and expiry on one deal at once: the counters always balance, and the
/// released or expired unit is either taken by the reserve or back in `available`.
#[test]
fn reserve_release_and_expiry_keep_the_counters_balanced() {
    loom::model(|| {
        let alloc = Arc::new(allocator());
        create(&alloc, "d", 2, None);
        let first = reserve(&alloc, "d", "a", 1).unwrap();
        let second = reserve(&alloc, "d", "b", 1).unwrap();
        let releaser = {
            let alloc = alloc.clone();
            thread::spawn(move || {
                code(alloc.execute(
                    &Command::Release { hold: first },
                    T0 + 5,
                    &mut EventLog::default(),
                ))
            })
        };
        let reaper = {
            let alloc = alloc.clone();
            // At T0 + 10_000 both holds are due; the release of the first may come before.
            thread::spawn(move || alloc.expire_due(T0 + 10_000, &mut EventLog::default()))
        };
        let buyer = {
            let alloc = alloc.clone();
            thread::spawn(move || reserve(&alloc, "d", "c", 1))
        };
        let released = releaser.join().unwrap();
        let expired = reaper.join().unwrap();
        let bought = buyer.join().unwrap();
        let c = alloc.deal("d", T0).unwrap().counters;
        assert_eq!(c.stock(), 2);
        assert!(c.held() + c.sold() <= 2);
        // The first hold resolved exactly once: released or expired.
        let state = alloc.hold(first, T0).unwrap().hold.state;
        match released {
            Ok(HoldState::Released) => assert_eq!(state, HoldState::Released),
            Err(ErrorCode::HoldExpired) => assert_eq!(state, HoldState::Expired),
            other => panic!("release answered {other:?}"),
        }
        assert_eq!(alloc.hold(second, T0).unwrap().hold.state, HoldState::Expired);
        // The second hold always expires; the first unless released first; the buyer's new hold
        // (same TTL) if it was in the table before the reaper passed its shard.
        assert!((1..=3).contains(&expired), "{expired}");
        // The buyer can only have won a unit freed by the release or the expiry.
        if bought.is_err() {
            assert_eq!(bought, Err(ErrorCode::SoldOut));
        }
        alloc.check_invariants();
    });
}

/// Confirm against expiry, and confirm against release, on one hold: exactly one resolution.
#[test]
fn a_hold_resolves_exactly_once() {
    loom::model(|| {
        let alloc = Arc::new(allocator());
        create(&alloc, "d", 1, None);
        let hold = reserve(&alloc, "d", "a", 1).unwrap();
        let expires_at = alloc.hold(hold, T0).unwrap().hold.expires_at_ms;
        let confirm = {
            let alloc = alloc.clone();
            thread::spawn(move || {
                let command = Command::Confirm { hold, qty: None };
                code(alloc.execute(&command, expires_at - 1, &mut EventLog::default()))
            })
        };
        let release = {
            let alloc = alloc.clone();
            thread::spawn(move || {
                let command = Command::Release { hold };
                code(alloc.execute(&command, expires_at - 1, &mut EventLog::default()))
            })
        };
        let expired = alloc.expire_due(expires_at, &mut EventLog::default());
        let confirmed = confirm.join().unwrap();
        let released = release.join().unwrap();
        let wins = [
            confirmed == Ok(HoldState::Confirmed),
            released == Ok(HoldState::Released),
            expired == 1,
        ];
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{confirmed:?} {released:?} {expired}");
        let (available, held, sold) = counters(&alloc, "d");
        assert_eq!(held, 0);
        assert_eq!(available + sold, 1);
        alloc.check_invariants();
    });
}

/// One user's concurrent reserves never pass the per-user limit.
#[test]
fn the_per_user_limit_holds_under_concurrent_reserves() {
    loom::model(|| {
        let alloc = Arc::new(allocator());
        create(&alloc, "d", 10, Some(1));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let alloc = alloc.clone();
                thread::spawn(move || reserve(&alloc, "d", "same-user", 1))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        assert!(results.contains(&Err(ErrorCode::PerUserLimit)));
        assert_eq!(counters(&alloc, "d"), (9, 1, 0));
        alloc.check_invariants();
    });
}

/// Two requests with one idempotency key: one executes, the other waits for or replays it.
#[test]
fn one_idempotency_key_executes_once() {
    loom::model(|| {
        let table = Arc::new(IdempotencyTable::new(60_000, 16));
        let executions = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let table = table.clone();
                let executions = executions.clone();
                thread::spawn(move || match table.begin("user:u", "k", 42, T0) {
                    Begin::Execute(guard) => {
                        executions.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                        let body = bytes::Bytes::from_static(b"{}");
                        guard.finish(StoredReply { status: 201, body, code: None }, Some(1));
                        "executed"
                    }
                    Begin::InFlight => "in flight",
                    Begin::Replay(..) => "replayed",
                    Begin::Mismatch | Begin::Full => panic!("same key, same request"),
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(executions.load(loom::sync::atomic::Ordering::SeqCst), 1, "{results:?}");
        assert!(matches!(table.begin("user:u", "k", 42, T0), Begin::Replay(..)));
    });
}
