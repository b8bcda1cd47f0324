//! What both simulations' test drivers share (`tests/simulation.rs`, `tests/sim_cluster.rs`):
//! settings from the environment, output past the test harness's capture, many seeds on a
//! few threads, a caught panic's message, and the verdict over the failures.

use std::fmt::Display;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// `name` from the environment as a number, or `default` when it is not set.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => {
            value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?}: not a number"))
        }
        Err(_) => default,
    }
}

/// `SIM_THREADS`, by default the cores up to two.
pub fn threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    usize::try_from(env_u64("SIM_THREADS", cores.min(2) as u64)).unwrap_or(1)
}

/// Printed past the test harness's capture: the tally is the point of the run.
pub fn show(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// What a panic caught by `catch_unwind` said.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".into())
}

/// `run(seed)` for seeds `first..first + count` on `threads` threads (each history is its
/// own; the threads share only the list of seeds), the results in seed order.
pub fn for_seeds<R: Send>(
    first: u64,
    count: u64,
    threads: usize,
    run: impl Fn(u64) -> R + Sync,
) -> Vec<R> {
    let next = AtomicU64::new(first);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                let result = run(seed);
                results.lock().expect("results").push((seed, result));
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(seed, _)| *seed);
    results.into_iter().map(|(_, result)| result).collect()
}

/// Shows the first failures and panics if there is one, naming every failing seed.
pub fn fail_on<F: Display>(failures: &[F], seed: impl Fn(&F) -> u64) {
    for failure in failures.iter().take(20) {
        show(&format!("FAILED {failure}"));
    }
    if !failures.is_empty() {
        let seeds: Vec<String> = failures.iter().map(|f| seed(f).to_string()).collect();
        panic!(
            "{} histories failed (seeds {}); rerun one with SIM_SEED=N to see its trace",
            failures.len(),
            seeds.join(", ")
        );
    }
}
