//! Request counts and latencies in per-thread cells: every answer updates them, so they must
//! not be cache lines that every core writes.
//!
//! One shared counter per (operation, outcome) and one shared histogram per operation made each
//! answer do four `fetch_add`s on lines that both cores wrote, so in a burst of sold-out
//! answers the counters, not the answer, bounced between cores. Here each thread picks a cell
//! the first time it answers (round robin) and only writes its own cell; a scrape sums the
//! cells. Past `METRIC_CELLS` threads, cells are shared: still exact (the updates are atomic),
//! only no longer private. The histogram's count is not kept: it is the sum of its buckets.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crossbeam::utils::CachePadded;
use livestock_core::limits::METRIC_CELLS;

/// Upper bounds, in seconds, of the latency buckets: 10 µs to ~5 s, doubling.
pub const LATENCY_BOUNDS: usize = 20;

pub fn latency_bound_s(i: usize) -> f64 {
    0.000_01 * f64::from(1u32 << i)
}

/// The bucket of a latency: the first whose bound is at least it (the last is +Inf).
fn bucket_of(micros: u64) -> usize {
    // Bound i is 10 * 2^i µs: the first i with 10 * 2^i >= micros.
    let tens = micros.div_ceil(10);
    if tens <= 1 {
        return 0;
    }
    let i = usize::try_from(u64::BITS - (tens - 1).leading_zeros()).unwrap_or(LATENCY_BOUNDS);
    i.min(LATENCY_BOUNDS)
}

/// One thread's counts: `counts[slot]` per (operation, outcome) slot, and per operation its
/// latency buckets (`LATENCY_BOUNDS + 1`, the last +Inf) and the sum of its latencies in µs.
struct Cell {
    counts: Box<[AtomicU64]>,
    buckets: Box<[AtomicU64]>,
    sums_micros: Box<[AtomicU64]>,
}

pub struct RequestCells {
    cells: Box<[CachePadded<Cell>]>,
    ops: usize,
}

static NEXT_CELL: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static CELL: usize = NEXT_CELL.fetch_add(1, Relaxed) % METRIC_CELLS;
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl RequestCells {
    /// Cells for `ops` operations of `slots_per_op` outcome slots each.
    pub fn new(ops: usize, slots_per_op: usize) -> Self {
        let cells = (0..METRIC_CELLS)
            .map(|_| {
                CachePadded::new(Cell {
                    counts: zeros(ops * slots_per_op),
                    buckets: zeros(ops * (LATENCY_BOUNDS + 1)),
                    sums_micros: zeros(ops),
                })
            })
            .collect();
        RequestCells { cells, ops }
    }

    /// One answer: its (operation, outcome) slot, its operation, its latency.
    pub fn record(&self, slot: usize, op: usize, elapsed: std::time::Duration) {
        let cell = &self.cells[CELL.with(|c| *c)];
        cell.counts[slot].fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        cell.buckets[op * (LATENCY_BOUNDS + 1) + bucket_of(micros)].fetch_add(1, Relaxed);
        cell.sums_micros[op].fetch_add(micros, Relaxed);
    }

    /// The count of a slot, summed over the cells.
    pub fn count(&self, slot: usize) -> u64 {
        self.cells.iter().map(|c| c.counts[slot].load(Relaxed)).sum()
    }

    pub fn slots(&self) -> usize {
        self.cells.first().map_or(0, |c| c.counts.len())
    }

    /// An operation's histogram summed over the cells: (sum in seconds, count, buckets as
    /// `(upper bound, count in that bucket alone)` with `f64::MAX` for +Inf; the encoder
    /// accumulates them).
    pub fn histogram(&self, op: usize) -> (f64, u64, Vec<(f64, u64)>) {
        assert!(op < self.ops, "operation {op} out of range");
        let mut buckets: Vec<(f64, u64)> = (0..=LATENCY_BOUNDS)
            .map(|i| (if i < LATENCY_BOUNDS { latency_bound_s(i) } else { f64::MAX }, 0))
            .collect();
        let mut sum_micros = 0u64;
        for cell in self.cells.iter() {
            for (i, bucket) in buckets.iter_mut().enumerate() {
                bucket.1 += cell.buckets[op * (LATENCY_BOUNDS + 1) + i].load(Relaxed);
            }
            sum_micros = sum_micros.saturating_add(cell.sums_micros[op].load(Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        #[expect(
            clippy::cast_precision_loss,
            reason = "a sum of seconds for monitoring: exact to the microsecond below 2^53 us (285 years)"
        )]
        let sum_s = sum_micros as f64 / 1_000_000.0;
        (sum_s, count, buckets)
    }
}

impl std::fmt::Debug for RequestCells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestCells({} cells)", self.cells.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_their_bounds() {
        // The bucket of a latency is the first whose bound is at least it.
        for micros in
            [0u64, 1, 9, 10, 11, 19, 20, 21, 40, 41, 1_000, 5_242_880, 5_242_881, u64::MAX]
        {
            #[expect(clippy::cast_precision_loss, reason = "test values")]
            let seconds = micros as f64 / 1_000_000.0;
            let expected = (0..LATENCY_BOUNDS)
                .position(|i| seconds <= latency_bound_s(i) + 1e-12)
                .unwrap_or(LATENCY_BOUNDS);
            assert_eq!(bucket_of(micros), expected, "{micros} µs");
        }
    }

    /// Threads write their own cells; the sums see every answer.
    #[test]
    fn cells_sum_every_thread() {
        let cells = std::sync::Arc::new(RequestCells::new(2, 3));
        let threads: Vec<_> = (0..METRIC_CELLS + 3)
            .map(|_| {
                let cells = cells.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        cells.record(4, 1, std::time::Duration::from_micros(15));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let n = u64::try_from((METRIC_CELLS + 3) * 1_000).expect("small");
        assert_eq!(cells.count(4), n);
        let (sum_s, count, buckets) = cells.histogram(1);
        assert_eq!(count, n);
        assert_eq!(buckets[1].1, n, "15 µs is in the 20 µs bucket");
        #[expect(clippy::cast_precision_loss, reason = "test values")]
        let expected_s = (n * 15) as f64 / 1e6;
        assert!((sum_s - expected_s).abs() < 1e-9, "{sum_s}");
        assert_eq!(cells.histogram(0).1, 0);
    }
}
