//! The allocator's hot paths: reserve (alone and with two threads on one deal), the sold-out
//! rejection (the check alone and the whole call), confirm, release, a hold's insert and
//! removal, the expiry of a million holds, and the counters word's own compare-and-swap (64- and
//! 128-bit, one and two threads: what the word alone allows a hot deal). Events go to a sink
//! that drops them, so these are the allocator's own costs, without the write-ahead log.
//!
//! Run: `cargo bench --bench allocator` (add `-- --quick` for a fast, rougher pass).
#![allow(
    clippy::expect_used,
    reason = "bench code: a setup that fails is a broken bench, and stopping with its message is \
              the right answer"
)]

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use livestock::alloc::{Allocator, AllocatorConfig};
use livestock_core::command::{Command, Line, Outcome, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::event::{Event, EventSink};
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, UserId};
use livestock_core::limits::{
    DEAL_STOCK_UNITS_MAX, HOLD_TTL_MS_MAX, RESOLVED_HOLD_RETENTION_MS_DEFAULT,
};

const T0_MS: u64 = 1_800_000_000_000;
/// Reserves made against one allocator before a fresh one replaces it (untimed), so that a
/// deal never sells out and the hold table stays the size of a busy sale's, not of the whole
/// benchmark's.
const RESERVES_PER_ALLOCATOR: u64 = 100_000;
const _: () = assert!(RESERVES_PER_ALLOCATOR <= DEAL_STOCK_UNITS_MAX);

/// Drops every event: the benches measure the allocator, not a log.
struct NoSink;

impl EventSink for NoSink {
    fn append(&mut self, _event: Event, _outcome: &Outcome) {}
}

fn allocator_with_deal(stock: u64) -> Allocator {
    let alloc = Allocator::new(AllocatorConfig {
        hold_id_key: HoldIdKey(0xBE7C_4000_0000_0001),
        resolved_hold_retention_ms: RESOLVED_HOLD_RETENTION_MS_DEFAULT,
    });
    let deal = NewDeal {
        id: DealId::parse("drop").expect("a valid deal id"),
        stream_id: None,
        stock,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit: None,
        hold_ttl_ms: None,
        hold_ttl_ms_max: Some(HOLD_TTL_MS_MAX),
        waitlist_max: None,
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    };
    alloc.execute(&Command::CreateDeal(deal), T0_MS, &mut NoSink).expect("the deal is created");
    alloc
}

fn reserve_one(user: &str) -> Command {
    Command::Reserve(Reserve {
        user_id: UserId::parse(user).expect("a valid user id"),
        lines: vec![Line { deal_id: DealId::parse("drop").expect("a valid deal id"), qty: 1 }],
        ttl_ms: None,
        waitlist: false,
    })
}

/// Runs `iters` timed operations in chunks of at most [`RESERVES_PER_ALLOCATOR`], each chunk
/// on a fresh allocator made by `setup` (untimed); `timed` runs one chunk and returns its time.
fn in_chunks<S>(
    iters: u64,
    setup: impl Fn(u64) -> S,
    timed: impl Fn(&S, u64) -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(RESERVES_PER_ALLOCATOR);
        let state = setup(n);
        total += timed(&state, n);
        drop(state);
        left -= n;
    }
    total
}

/// `n` holds of one unit each, made untimed for the confirm and release benches.
fn allocator_with_holds(n: u64) -> (Allocator, Vec<HoldSeq>) {
    let alloc = allocator_with_deal(DEAL_STOCK_UNITS_MAX);
    let command = reserve_one("buyer");
    let seqs = (0..n)
        .map(|_| match alloc.execute(&command, T0_MS, &mut NoSink) {
            Ok(Outcome::Holds(views)) => views[0].hold.seq,
            other => panic!("setup reserve answered {other:?}"),
        })
        .collect();
    (alloc, seqs)
}

fn reserve_uncontended(c: &mut Criterion) {
    let command = reserve_one("buyer");
    c.bench_function("reserve_uncontended", |b| {
        b.iter_custom(|iters| {
            in_chunks(
                iters,
                |_| allocator_with_deal(DEAL_STOCK_UNITS_MAX),
                |alloc, n| {
                    let start = Instant::now();
                    for _ in 0..n {
                        let outcome = alloc.execute(black_box(&command), T0_MS, &mut NoSink);
                        debug_assert!(outcome.is_ok());
                        black_box(outcome).ok();
                    }
                    start.elapsed()
                },
            )
        });
    });
}

/// Two threads reserve from one deal at once; the time is the wall time of the whole burst
/// divided over both threads' reserves, i.e. the cost per reserve of the pair.
fn reserve_hot_deal_2_threads(c: &mut Criterion) {
    let commands = [reserve_one("buyer-0"), reserve_one("buyer-1")];
    c.bench_function("reserve_hot_deal_2_threads", |b| {
        b.iter_custom(|iters| {
            in_chunks(
                iters,
                |_| allocator_with_deal(DEAL_STOCK_UNITS_MAX),
                |alloc, n| {
                    let start = Barrier::new(3);
                    // The scope joins both threads before it returns the burst's start.
                    let began = thread::scope(|s| {
                        for (i, command) in commands.iter().enumerate() {
                            let share = if i == 0 { n / 2 } else { n - n / 2 };
                            let start = &start;
                            s.spawn(move || {
                                start.wait();
                                for _ in 0..share {
                                    let outcome = alloc.execute(command, T0_MS, &mut NoSink);
                                    black_box(outcome).ok();
                                }
                            });
                        }
                        start.wait();
                        Instant::now()
                    });
                    began.elapsed()
                },
            )
        });
    });
}

fn sold_out(c: &mut Criterion) {
    let alloc = allocator_with_deal(0);
    let command = reserve_one("buyer");
    assert!(alloc.execute(&command, T0_MS, &mut NoSink).is_err(), "the deal has no units");
    c.bench_function("sold_out", |b| {
        b.iter(|| alloc.execute(black_box(&command), T0_MS, &mut NoSink));
    });
}

fn confirm(c: &mut Criterion) {
    c.bench_function("confirm", |b| {
        b.iter_custom(|iters| {
            in_chunks(iters, allocator_with_holds, |(alloc, seqs), _| {
                let start = Instant::now();
                for seq in seqs {
                    let command = Command::Confirm { hold: *seq, qty: None };
                    black_box(alloc.execute(black_box(&command), T0_MS, &mut NoSink)).ok();
                }
                start.elapsed()
            })
        });
    });
}

fn release(c: &mut Criterion) {
    c.bench_function("release", |b| {
        b.iter_custom(|iters| {
            in_chunks(iters, allocator_with_holds, |(alloc, seqs), _| {
                let start = Instant::now();
                for seq in seqs {
                    let command = Command::Release { hold: *seq };
                    black_box(alloc.execute(black_box(&command), T0_MS, &mut NoSink)).ok();
                }
                start.elapsed()
            })
        });
    });
}

/// The sold-out check itself: one atomic load of the counters word and the stock rule on it.
fn sold_out_check(c: &mut Criterion) {
    let alloc = allocator_with_deal(0);
    c.bench_function("sold_out_check", |b| {
        b.iter(|| {
            let view = alloc.deal(black_box("drop"), T0_MS);
            black_box(view.map(|v| v.counters.take(1).is_err()))
        });
    });
    // The same check without the registry lookup and the view: the load and the rule only.
    let deal = alloc.deal("drop", T0_MS).expect("the deal exists");
    let slot = livestock::alloc::DealSlot::new(
        deal.spec,
        deal.options,
        livestock_core::counters::Counters::new(0),
        livestock_core::deal::Lifecycle::Open,
    );
    c.bench_function("sold_out_check_word", |b| {
        b.iter(|| black_box(&slot).counters().take(black_box(1)).is_err());
    });
}

/// A hold's whole stay in the table: inserted by a reserve, resolved by a release.
fn hold_insert_remove(c: &mut Criterion) {
    let command = reserve_one("buyer");
    c.bench_function("hold_insert_remove", |b| {
        b.iter_custom(|iters| {
            in_chunks(
                iters,
                |_| allocator_with_deal(DEAL_STOCK_UNITS_MAX),
                |alloc, n| {
                    let start = Instant::now();
                    for _ in 0..n {
                        let Ok(Outcome::Holds(views)) = alloc.execute(&command, T0_MS, &mut NoSink)
                        else {
                            panic!("reserve failed");
                        };
                        let release = Command::Release { hold: views[0].hold.seq };
                        black_box(alloc.execute(&release, T0_MS, &mut NoSink)).ok();
                    }
                    start.elapsed()
                },
            )
        });
    });
}

/// The reaper's pass when a million holds are due at once (a drop whose buyers all walked
/// away): the time of `expire_due` alone, units back in `available`.
fn expire_1m_holds(c: &mut Criterion) {
    const HOLDS: u64 = 1_000_000;
    let mut group = c.benchmark_group("expiry");
    group.sample_size(10);
    group.bench_function("expire_1m_holds", |b| {
        b.iter_batched(
            || {
                let alloc = allocator_with_deal(DEAL_STOCK_UNITS_MAX);
                let command = reserve_one("buyer");
                for _ in 0..HOLDS {
                    alloc.execute(&command, T0_MS, &mut NoSink).expect("reserve");
                }
                alloc
            },
            |alloc| {
                let expired = alloc.expire_due(T0_MS + HOLD_TTL_MS_MAX, &mut NoSink);
                assert_eq!(expired as u64, HOLDS);
                alloc
            },
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// `threads` threads (each its share of `iters`) run `step` on one shared `word` at once; the
/// wall time of the burst.
fn race<W: Sync>(threads: u64, iters: u64, word: &W, step: impl Fn(&W) + Sync) -> Duration {
    let threads_usize = usize::try_from(threads).expect("a few threads");
    let start = Barrier::new(threads_usize + 1);
    let began = thread::scope(|s| {
        for i in 0..threads {
            let share = iters / threads + u64::from(i < iters % threads);
            let (start, step) = (&start, &step);
            s.spawn(move || {
                start.wait();
                for _ in 0..share {
                    step(word);
                }
            });
        }
        start.wait();
        Instant::now()
    });
    began.elapsed()
}

/// The ceiling the counters word alone puts on a hot deal: compare-and-swap increments of one
/// shared word and nothing else, with the old 64-bit word (`std`'s `AtomicU64`) and the 128-bit
/// one (portable-atomic's `AtomicU128`, as `DealSlot` holds it), on one thread and on two.
fn word_cas(c: &mut Criterion) {
    use portable_atomic::AtomicU128;
    use std::sync::atomic::{
        AtomicU64,
        Ordering::{AcqRel, Acquire},
    };
    fn cas_u64(w: &AtomicU64) {
        let mut current = w.load(Acquire);
        while let Err(actual) = w.compare_exchange_weak(current, current + 1, AcqRel, Acquire) {
            current = actual;
        }
    }
    fn cas_u128(w: &AtomicU128) {
        let mut current = w.load(Acquire);
        while let Err(actual) = w.compare_exchange_weak(current, current + 1, AcqRel, Acquire) {
            current = actual;
        }
    }
    let mut group = c.benchmark_group("word_cas");
    for threads in [1, 2] {
        group.bench_function(format!("u64_{threads}_threads"), |b| {
            b.iter_custom(|iters| race(threads, iters, &AtomicU64::new(0), cas_u64));
        });
        group.bench_function(format!("u128_{threads}_threads"), |b| {
            b.iter_custom(|iters| race(threads, iters, &AtomicU128::new(0), cas_u128));
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    reserve_uncontended,
    reserve_hot_deal_2_threads,
    sold_out,
    sold_out_check,
    confirm,
    release,
    hold_insert_remove,
    expire_1m_holds,
    word_cas
);
criterion_main!(benches);
