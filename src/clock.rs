//! Time, injected. The only module that reads the operating system's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The wall clock. A flash sale's windows and hold expiries are wall-clock instants the caller
/// also knows (RFC 3339 timestamps), so this is wall time, not a monotonic clock; it never goes
/// backwards as seen by livestock (a step back is clamped to the last value read).
#[derive(Default)]
pub struct SystemClock {
    last_ms: AtomicU64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        // Relaxed: only this value's monotonicity matters, not its order with other memory.
        // Read first: a `fetch_max` is a locked write even when it changes nothing, and every
        // request on every core reads the clock; this way the line is written once a ms.
        let last = self.last_ms.load(Ordering::Relaxed);
        if now <= last {
            return last;
        }
        self.last_ms.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

/// A clock that moves only when told: tests, the simulator, and `serve --manual-clock`-style
/// harnesses make expiry instant and exact with it.
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock { now_ms: AtomicU64::new(start_ms) }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: u64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// The wall clock, off by a fixed amount: the cluster tests run a replica whose clock is
/// ahead or behind the others (`--clock-skew-ms`, hidden), as a misconfigured machine would.
pub struct SkewedClock {
    inner: SystemClock,
    skew_ms: i64,
}

impl SkewedClock {
    pub fn new(skew_ms: i64) -> Self {
        SkewedClock { inner: SystemClock::default(), skew_ms }
    }
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms().saturating_add_signed(self.skew_ms)
    }
}
