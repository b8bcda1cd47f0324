//! Guards against races in the allocator: overselling the last units, a per-user limit passed by concurrent reserves, a cart half-applied, a hold resolved twice, or an event log that does not replay to the live state.
//!
//! Real threads, real contention (no loom): each test starts its threads at a barrier so they
//! meet on the same deal, repeats its race many times, and checks the allocator's invariants and
//! the replay of its event log at the end. On two cores the threads interleave by preemption as
//! much as by parallelism, which is why every race is run in many rounds.
#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failed setup stops the test with its message; the casts turn small \
              random numbers (below a slice length or a thread count) into indices"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use livestock::alloc::{Allocator, AllocatorConfig};
use livestock_core::command::{Command, Line, Outcome, Reserve};
use livestock_core::deal::{DealState, NewDeal};
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::event::{Event, EventLog, EventSink};
use livestock_core::hold::HoldState;
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, UserId};
use parking_lot::Mutex;

const T0_MS: u64 = 1_800_000_000_000;

/// One log for all threads. Each append happens under the one lock, so the vector's order is
/// the order in which the allocator ordered the events: the order replay needs.
#[derive(Clone, Default)]
struct SharedLog(Arc<Mutex<Vec<Event>>>);

impl EventSink for SharedLog {
    fn append(&mut self, event: Event, _outcome: &Outcome) {
        self.0.lock().push(event);
    }
}

impl SharedLog {
    fn events(&self) -> Vec<Event> {
        self.0.lock().clone()
    }
}

/// A small deterministic generator per thread (xorshift64*): no extra dependency, and a failing
/// run can be repeated with the same seeds.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn allocator(retention_ms: u64) -> Allocator {
    Allocator::new(AllocatorConfig {
        hold_id_key: HoldIdKey(0xC0FF_EE00_D15E_A5E5),
        resolved_hold_retention_ms: retention_ms,
    })
}

fn deal_id(id: &str) -> DealId {
    DealId::parse(id).expect("test deal ids are valid")
}

fn user_id(id: &str) -> UserId {
    UserId::parse(id).expect("test user ids are valid")
}

fn new_deal(id: &str, stock: u64) -> NewDeal {
    NewDeal {
        id: deal_id(id),
        stream_id: None,
        stock,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit: None,
        hold_ttl_ms: None,
        hold_ttl_ms_max: None,
        waitlist_max: None,
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    }
}

fn create(alloc: &Allocator, deal: NewDeal, log: &mut SharedLog) {
    alloc.execute(&Command::CreateDeal(deal), T0_MS, log).expect("the deal is created");
}

fn reserve(user: &str, lines: &[(&str, u32)], ttl_ms: Option<u64>) -> Reserve {
    Reserve {
        user_id: user_id(user),
        lines: lines.iter().map(|(deal, qty)| Line { deal_id: deal_id(deal), qty: *qty }).collect(),
        ttl_ms,
        waitlist: false,
    }
}

fn holds_of(outcome: &Outcome) -> Vec<(HoldSeq, u32)> {
    match outcome {
        Outcome::Holds(views) => views.iter().map(|v| (v.hold.seq, v.hold.qty)).collect(),
        other => panic!("a reserve answered {other:?}"),
    }
}

fn counters(alloc: &Allocator, id: &str) -> (u64, u64, u64) {
    let Some(view) = alloc.deal(id, T0_MS) else { panic!("no deal {id}") };
    let c = view.counters;
    (c.available(), c.held(), c.sold())
}

/// Reaps at `now_ms` (forgetting resolved holds is the reaper's housekeeping, not an event, so
/// both sides must reap at the same instant), then replays the log into a fresh allocator and
/// compares the two.
fn assert_replays(alloc: &Allocator, log: &mut SharedLog, now_ms: u64) {
    alloc.expire_due(now_ms, log);
    alloc.check_invariants();
    let replayed = Allocator::new(alloc.config());
    for (i, event) in log.events().iter().enumerate() {
        if let Err(e) = replayed.apply(event) {
            panic!("replay of event {i} ({event:?}): {e}");
        }
    }
    assert_eq!(replayed.expire_due(now_ms, &mut EventLog::default()), 0);
    replayed.check_invariants();
    assert_eq!(replayed.snapshot(), alloc.snapshot());
}

/// Runs `threads` copies of `work` (given its index and a sink), started together.
fn race(threads: usize, log: &SharedLog, work: impl Fn(usize, &mut SharedLog) + Sync) {
    let barrier = Barrier::new(threads);
    thread::scope(|s| {
        for index in 0..threads {
            let (barrier, work) = (&barrier, &work);
            let mut sink = log.clone();
            s.spawn(move || {
                barrier.wait();
                work(index, &mut sink);
            });
        }
    });
}

#[test]
fn the_last_units_go_to_exactly_as_many_reserves() {
    const THREADS: usize = 8;
    const STOCK: u64 = 50;
    const ATTEMPTS_PER_THREAD: usize = 200;
    for round in 0..50 {
        let alloc = allocator(3_600_000);
        let mut log = SharedLog::default();
        create(&alloc, new_deal("drop", STOCK), &mut log);
        let won = AtomicU64::new(0);
        race(THREADS, &log, |index, sink| {
            let command = Command::Reserve(reserve(&format!("u{index}"), &[("drop", 1)], None));
            for _ in 0..ATTEMPTS_PER_THREAD {
                match alloc.execute(&command, T0_MS, sink) {
                    Ok(outcome) => {
                        assert_eq!(holds_of(&outcome).len(), 1);
                        won.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => assert_eq!(e.code(), ErrorCode::SoldOut, "round {round}: {e}"),
                }
            }
        });
        let won = won.load(Ordering::Relaxed);
        assert_eq!(won, STOCK, "round {round}: reserves won");
        assert_eq!(counters(&alloc, "drop"), (0, won, 0), "round {round}: available/held/sold");
        assert_replays(&alloc, &mut log, T0_MS);
    }
}

#[test]
fn one_user_never_passes_the_limit_from_many_threads() {
    const THREADS: usize = 8;
    const LIMIT: u32 = 3;
    const STEPS_PER_THREAD: usize = 2_000;
    let alloc = allocator(3_600_000);
    let mut log = SharedLog::default();
    create(
        &alloc,
        NewDeal { per_user_limit: Some(LIMIT), ..new_deal("limited", 10_000) },
        &mut log,
    );
    // Two users, four threads each. A thread counts a hold in after its reserve returned and
    // out before it releases it, so this count never exceeds the allocator's own: seeing it
    // above the limit proves the allocator let the user pass it.
    let users = ["alice", "bob"];
    let outstanding = [AtomicU32::new(0), AtomicU32::new(0)];
    let refused = AtomicU64::new(0);
    race(THREADS, &log, |index, sink| {
        let user = index % users.len();
        let mut rng = Rng::new(index as u64 + 1);
        let mut mine: Vec<(HoldSeq, u32)> = Vec::new();
        for _ in 0..STEPS_PER_THREAD {
            if !mine.is_empty() && rng.below(2) == 0 {
                let (seq, qty) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                outstanding[user].fetch_sub(qty, Ordering::SeqCst);
                alloc.execute(&Command::Release { hold: seq }, T0_MS, sink).expect("released");
                continue;
            }
            let qty = rng.pick(&[1, 1, 2]);
            let command = Command::Reserve(reserve(users[user], &[("limited", qty)], None));
            match alloc.execute(&command, T0_MS, sink) {
                Ok(outcome) => {
                    let before = outstanding[user].fetch_add(qty, Ordering::SeqCst);
                    assert!(before + qty <= LIMIT, "{} holds {} units", users[user], before + qty);
                    mine.extend(holds_of(&outcome));
                }
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::PerUserLimit, "{e}");
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    assert!(refused.load(Ordering::Relaxed) > 0, "the limit was never reached: no race tested");
    let snapshot = alloc.snapshot();
    for (user, count) in users.iter().zip(&outstanding) {
        let held: u32 = snapshot
            .holds
            .iter()
            .filter(|h| h.user_id.as_str() == *user && h.state == HoldState::Held)
            .map(|h| h.qty)
            .sum();
        assert_eq!(held, count.load(Ordering::SeqCst), "{user}'s held units");
        assert!(held <= LIMIT);
        let counted = snapshot.user_counts.iter().find(|(_, u, _)| u.as_str() == *user);
        assert_eq!(counted.map_or(0, |(_, _, n)| *n), held, "{user}'s count");
    }
    assert_replays(&alloc, &mut log, T0_MS);
}

#[test]
fn a_cart_racing_for_the_last_units_is_all_or_nothing() {
    const ROUNDS: usize = 1_000;
    // Threads 0-3 want both deals in a cart (in both line orders), 4 and 5 one deal each.
    const THREADS: usize = 6;
    for round in 0..ROUNDS {
        let alloc = allocator(3_600_000);
        let mut log = SharedLog::default();
        create(&alloc, new_deal("deal-a", 1), &mut log);
        create(&alloc, new_deal("deal-b", 1), &mut log);
        let carts_won = AtomicU64::new(0);
        let singles_won = AtomicU64::new(0);
        let winners: Mutex<BTreeSet<HoldSeq>> = Mutex::new(BTreeSet::new());
        race(THREADS, &log, |index, sink| {
            let lines: &[(&str, u32)] = match index {
                0 | 2 => &[("deal-a", 1), ("deal-b", 1)],
                1 | 3 => &[("deal-b", 1), ("deal-a", 1)],
                4 => &[("deal-a", 1)],
                _ => &[("deal-b", 1)],
            };
            let request = reserve(&format!("u{index}"), lines, None);
            let command =
                if index < 4 { Command::Cart(request) } else { Command::Reserve(request) };
            for _ in 0..3 {
                match alloc.execute(&command, T0_MS, sink) {
                    Ok(outcome) => {
                        let holds = holds_of(&outcome);
                        assert_eq!(holds.len(), lines.len(), "round {round}: a partial cart");
                        let won = if index < 4 { &carts_won } else { &singles_won };
                        won.fetch_add(1, Ordering::Relaxed);
                        winners.lock().extend(holds.iter().map(|(seq, _)| *seq));
                    }
                    Err(e) => {
                        let code = e.code();
                        assert!(
                            matches!(code, ErrorCode::SoldOut | ErrorCode::InsufficientStock),
                            "round {round}: {e}"
                        );
                    }
                }
            }
        });
        let carts = carts_won.load(Ordering::Relaxed);
        let singles = singles_won.load(Ordering::Relaxed);
        assert!(carts <= 1, "round {round}: {carts} carts won one unit each of two deals");
        let (a, b) = (counters(&alloc, "deal-a"), counters(&alloc, "deal-b"));
        assert_eq!(a.1 + b.1, 2 * carts + singles, "round {round}: held units vs winners");
        if carts == 1 {
            assert_eq!((a, b, singles), ((0, 1, 0), (0, 1, 0), 0), "round {round}");
        }
        // Every hold in the allocator was answered to a winner: no cart left one line behind.
        let held: BTreeSet<HoldSeq> = alloc.snapshot().holds.iter().map(|h| h.seq).collect();
        assert_eq!(held, *winners.lock(), "round {round}: holds vs answered holds");
        assert_replays(&alloc, &mut log, T0_MS);
    }
}

/// The resolutions (confirm, release, expiry, end) each hold got in the log.
fn resolutions(events: &[Event]) -> BTreeMap<HoldSeq, usize> {
    let mut count: BTreeMap<HoldSeq, usize> = BTreeMap::new();
    for event in events {
        match event {
            Event::Confirmed { seq, .. }
            | Event::Released { seq, .. }
            | Event::Expired { seq, .. } => {
                *count.entry(*seq).or_default() += 1;
            }
            Event::DealsEnded { deals, .. } => {
                for seq in deals.iter().flat_map(|(_, seqs)| seqs) {
                    *count.entry(*seq).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    count
}

struct LastOneOut<'a> {
    done: &'a AtomicU64,
    of: u64,
    stop: &'a AtomicBool,
}

impl Drop for LastOneOut<'_> {
    fn drop(&mut self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.of {
            self.stop.store(false, Ordering::Release);
        }
    }
}

#[test]
fn churn_keeps_the_books_and_the_log_straight() {
    const WORKERS: usize = 3;
    const STEPS_PER_WORKER: usize = 40_000;
    // Each worker step moves the clock; with TTLs of a few seconds and a short retention, holds
    // expire, are extended and are forgotten while the workers use them.
    const STEP_MS: u64 = 5;
    let alloc = allocator(5_000);
    let mut log = SharedLog::default();
    // Stock runs low (confirms sell units for good) but does not run out for the whole run.
    create(&alloc, new_deal("churn-a", 2_000), &mut log);
    create(&alloc, NewDeal { per_user_limit: Some(2), ..new_deal("churn-b", 200) }, &mut log);
    create(
        &alloc,
        NewDeal { hold_ttl_ms_max: Some(8_000), ..new_deal("churn-c", 1_000) },
        &mut log,
    );
    create(&alloc, new_deal("churn-d", 40), &mut log);
    let deals = ["churn-a", "churn-b", "churn-c", "churn-d"];
    let users = ["u0", "u1", "u2", "u3"];
    let clock = AtomicU64::new(T0_MS);
    let issued: Mutex<Vec<HoldSeq>> = Mutex::new(Vec::new());
    let workers_done = AtomicU64::new(0);
    let reaping = AtomicBool::new(true);
    race(WORKERS + 1, &log, |index, sink| {
        if index == WORKERS {
            // The reaper: expires what is due at the clock's instant until the workers finish.
            while reaping.load(Ordering::Acquire) {
                alloc.expire_due(clock.load(Ordering::SeqCst), sink);
                thread::yield_now();
            }
            return;
        }
        // Stops the reaper when the last worker is done, even if this one panics.
        let _done = LastOneOut { done: &workers_done, of: WORKERS as u64, stop: &reaping };
        let mut rng = Rng::new(1_000 + index as u64);
        for step in 0..STEPS_PER_WORKER {
            let now = clock.fetch_add(STEP_MS, Ordering::SeqCst) + STEP_MS;
            // Mostly one of the latest holds (still open, where the races are), any of them
            // otherwise.
            let pick_hold = |rng: &mut Rng| {
                let issued = issued.lock();
                let len = issued.len() as u64;
                let back = if rng.below(4) == 0 { rng.below(len.max(1)) } else { rng.below(8) };
                (back < len).then(|| issued[(len - 1 - back) as usize])
            };
            let command = match rng.below(20) {
                // Ending a deal late in the run races its reserves and its holds' resolutions.
                _ if index == 0 && step == STEPS_PER_WORKER * 3 / 4 => {
                    Command::EndDeal(deal_id("churn-d"))
                }
                0..=6 => {
                    let ttl = rng.pick(&[None, Some(1_000), Some(2_000), Some(5_000)]);
                    let line = [(rng.pick(&deals), rng.pick(&[1, 1, 2, 3]))];
                    Command::Reserve(reserve(rng.pick(&users), &line, ttl))
                }
                7..=8 => {
                    let lines = [(rng.pick(&deals), 1), (rng.pick(&deals), rng.pick(&[1, 2]))];
                    Command::Cart(reserve(rng.pick(&users), &lines, Some(3_000)))
                }
                9..=11 => match pick_hold(&mut rng) {
                    Some(hold) => Command::Confirm { hold, qty: rng.pick(&[None, Some(1)]) },
                    None => continue,
                },
                12..=14 => match pick_hold(&mut rng) {
                    Some(hold) => Command::Release { hold },
                    None => continue,
                },
                15..=17 => match pick_hold(&mut rng) {
                    Some(hold) => {
                        Command::Extend { hold, ttl_ms: rng.pick(&[1_000, 2_000, 4_000, 9_000]) }
                    }
                    None => continue,
                },
                18 => Command::AdjustStock {
                    deal_id: deal_id(rng.pick(&deals[..3])),
                    delta: rng.pick(&[-2, -1, 1, 2]),
                },
                _ if step % 2 == 0 => Command::PauseDeal(deal_id("churn-a")),
                _ => Command::ResumeDeal(deal_id("churn-a")),
            };
            match alloc.execute(&command, now, sink) {
                Ok(Outcome::Holds(views)) => {
                    issued.lock().extend(views.iter().map(|v| v.hold.seq));
                }
                Ok(_) => {}
                Err(
                    CommandError::Reserve(_) | CommandError::Hold(_) | CommandError::DealAdmin(_),
                ) => {}
                Err(e) => panic!("{command:?}: {e}"),
            }
        }
    });

    let ended = alloc.deal("churn-d", clock.load(Ordering::SeqCst)).map(|view| view.state);
    assert_eq!(ended, Some(DealState::Ended), "the end of churn-d ran");
    let events = log.events();
    let mut reserved = BTreeSet::new();
    for event in &events {
        if let Event::Reserved { holds } = event {
            for hold in holds {
                assert!(reserved.insert(hold.seq), "hold {:?} reserved twice", hold.seq);
            }
        }
    }
    for (seq, n) in resolutions(&events) {
        assert_eq!(n, 1, "hold {seq:?} resolved {n} times");
        assert!(reserved.contains(&seq), "hold {seq:?} resolved but never reserved");
    }
    assert_eq!(reserved.len(), issued.lock().len(), "holds logged vs holds answered");

    // A reserve that took units just before an end shut its deal gives them back unlogged but
    // has numbered its hold: the live sequence may be ahead of the replayed one (a harmless
    // gap of numbers never shown to anyone). Everything else must match exactly.
    let now = clock.load(Ordering::SeqCst);
    alloc.expire_due(now, &mut log);
    alloc.check_invariants();
    let replayed = Allocator::new(alloc.config());
    for (i, event) in log.events().iter().enumerate() {
        if let Err(e) = replayed.apply(event) {
            panic!("replay of event {i} ({event:?}): {e}");
        }
    }
    assert_eq!(replayed.expire_due(now, &mut EventLog::default()), 0);
    replayed.check_invariants();
    let (live, mut replayed) = (alloc.snapshot(), replayed.snapshot());
    assert!(replayed.next_hold_seq <= live.next_hold_seq);
    replayed.next_hold_seq = live.next_hold_seq;
    assert_eq!(replayed, live);
}
