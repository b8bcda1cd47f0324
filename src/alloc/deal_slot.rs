//! One deal in the concurrent allocator: its fixed spec and its one-word counters.
//!
//! The word is 128 bits (`livestock_core::counters`: three 40-bit counts and `shut`), in an
//! `AtomicU128`: a change is one `lock cmpxchg16b`, a read one 16-byte load that writes
//! nothing on x86-64 with AVX (the sold-out path: see `counters.rs` for what each CPU gets).
//!
//! Memory orderings. The counts need no ordering of their own: every change is a read-modify-
//! write of one word, and RMWs of one location are totally ordered whatever the ordering
//! argument. What needs ordering is the `shut` bit, which publishes the `lifecycle` byte: a
//! pause or end stores the lifecycle, then sets `shut` with `Release`; a reserve loads the word
//! with `Acquire`, so a reserve that sees `shut` also sees why (paused or ended). RMWs use
//! `AcqRel` for the same pairing in both directions; on x86-64 every locked RMW is a full
//! barrier anyway, so this costs nothing there.

use super::waitlist::Waitlist;
use crate::sync::{AtomicU128, AtomicU64, AtomicU8, Mutex, MutexGuard, Ordering};
use livestock_core::counters::{Counters, Shortage};
use livestock_core::deal::{DealSpec, DealView, Lifecycle};
use livestock_core::error::ReserveError;
use livestock_core::hold::Settlement;
use livestock_core::waitlist::DealOptions;

pub struct DealSlot {
    pub spec: DealSpec,
    pub options: DealOptions,
    counters: AtomicU128,
    lifecycle: AtomicU8,
    /// Serializes admin changes (pause, resume, end, stock) of this deal, so that each one's
    /// event is ordered with the change it describes. Never taken on the reserve path.
    admin: Mutex<()>,
    /// The waitlist, for deals that have one. Its lock serializes everything that hands out
    /// freed units or joins the queue (`offers.rs`), so that units that come back reach the
    /// waiting entries before anyone else; a reserve that takes units takes it only when the
    /// deal could not serve it and it asked to wait.
    waitlist: Option<Mutex<Waitlist>>,
    /// Entries waiting, for readers that must not take the lock (views, the live feed);
    /// written under it.
    waiting: AtomicU64,
    /// Set once the deal's draw is done (its winners fixed), or at once for a deal without
    /// one: until then a reserve takes the waitlist lock (it enters the draw, or draws).
    drawn: AtomicU8,
}

impl DealSlot {
    pub fn new(
        spec: DealSpec,
        options: DealOptions,
        counters: Counters,
        lifecycle: Lifecycle,
    ) -> Self {
        let counters = counters.with_shut(lifecycle != Lifecycle::Open);
        DealSlot {
            waitlist: options.keeps_entries().then(|| Mutex::new(Waitlist::default())),
            drawn: AtomicU8::new(u8::from(!options.has_draw())),
            spec,
            options,
            counters: AtomicU128::new(counters.raw()),
            lifecycle: AtomicU8::new(lifecycle as u8),
            admin: Mutex::new(()),
            waiting: AtomicU64::new(0),
        }
    }

    /// The waitlist's lock, if the deal has one (see the lock order in docs/ARCHITECTURE.md:
    /// after the admin lock, before user and hold shards).
    pub fn lock_waitlist(&self) -> Option<MutexGuard<'_, Waitlist>> {
        self.waitlist.as_ref().map(|list| list.lock())
    }

    /// Whether the deal keeps entries (a waitlist, a draw, or both).
    pub fn keeps_entries(&self) -> bool {
        self.waitlist.is_some()
    }

    /// A draw that is not done: its window is open, or closed and not yet drawn. One load;
    /// `false` at once for deals without a draw.
    pub fn draw_pending(&self) -> bool {
        self.drawn.load(Ordering::Acquire) == 0
    }

    /// The draw's winners are fixed (under the waitlist lock).
    pub fn set_drawn(&self) {
        self.drawn.store(1, Ordering::Release);
    }

    /// Publishes the waiting count after a change under the waitlist lock.
    pub fn set_waiting(&self, waiting: usize) {
        self.waiting.store(waiting as u64, Ordering::Release);
    }

    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Acquire)
    }

    /// One consistent view of all counters: a single load.
    pub fn counters(&self) -> Counters {
        Counters::from_raw(self.counters.load(Ordering::Acquire))
    }

    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(Ordering::Acquire))
    }

    pub fn view(&self, now_ms: u64) -> DealView {
        DealView {
            spec: self.spec.clone(),
            options: self.options,
            state: self.spec.state(self.lifecycle(), now_ms),
            counters: self.counters(),
            waiting: self.waiting(),
        }
    }

    pub fn lock_admin(&self) -> MutexGuard<'_, ()> {
        self.admin.lock()
    }

    /// The reserve rules and the stock change as one atomic step. On the sold-out path this is
    /// one load and no write: the rules reject before any compare-and-swap is tried.
    pub fn try_take(&self, qty: u32, now_ms: u64) -> Result<Counters, ReserveError> {
        let mut current = self.counters.load(Ordering::Acquire);
        loop {
            let counters = Counters::from_raw(current);
            self.spec.check_open(counters.shut(), || self.lifecycle(), now_ms)?;
            let next = self.spec.take(counters, qty)?;
            match self.counters.compare_exchange_weak(
                current,
                next.raw(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(next),
                Err(actual) => current = actual,
            }
        }
    }

    /// Applies a pure transition to the word; `f` returning `Err` leaves the word unchanged.
    fn update<E>(&self, f: impl Fn(Counters) -> Result<Counters, E>) -> Result<Counters, E> {
        let mut current = self.counters.load(Ordering::Acquire);
        loop {
            let next = f(Counters::from_raw(current))?;
            match self.counters.compare_exchange_weak(
                current,
                next.raw(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(next),
                Err(actual) => current = actual,
            }
        }
    }

    /// A hold resolved: `sold` units move held -> sold, `returned` held -> available.
    pub fn settle(&self, settlement: Settlement) -> Counters {
        let result: Result<Counters, std::convert::Infallible> = self.update(|c| {
            Ok(c.sell(u64::from(settlement.sold)).put_back(u64::from(settlement.returned)))
        });
        match result {
            Ok(counters) => counters,
        }
    }

    /// Takes units from `available` without asking the deal's window or lifecycle: an offer to
    /// a waiting entry (decided under the waitlist lock), or replay of a decided reserve.
    pub fn force_take(&self, qty: u32) -> Result<Counters, Shortage> {
        self.update(|c| c.take(u64::from(qty)))
    }

    /// Stock added straight into holds: `held` units of an addition go to offers and never
    /// become available (the rest, `units - held`, does).
    pub fn add_stock_held(&self, units: u64, held: u64) -> Option<Counters> {
        self.update(|c| c.add_stock(units).and_then(|c| c.take(held).ok()).ok_or(())).ok()
    }

    pub fn add_stock(&self, units: u64) -> Option<Counters> {
        self.update(|c| c.add_stock(units).ok_or(())).ok()
    }

    pub fn remove_stock(&self, units: u64) -> Result<Counters, Shortage> {
        self.update(|c| c.remove_stock(units))
    }

    /// Stores the lifecycle, then sets or clears `shut` to match; the flag is the
    /// linearization point for reserves (see the module comment for the ordering).
    pub fn set_lifecycle(&self, lifecycle: Lifecycle) {
        self.lifecycle.store(lifecycle as u8, Ordering::Release);
        let shut = lifecycle != Lifecycle::Open;
        let result: Result<Counters, std::convert::Infallible> =
            self.update(|c| Ok(c.with_shut(shut)));
        let _ = result;
    }
}
