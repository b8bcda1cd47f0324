//! The concurrent allocator: the hot path of livestock.
//!
//! It holds all state in memory and applies commands to it from many threads at once. It
//! decides with the pure rules of `core` (one copy of them), reads no clock (`now` is an
//! argument) and does no I/O: it hands each decided [`Event`](livestock_core::event::Event) to
//! an [`EventSink`] at the moment the event is ordered, and the shell (the write-ahead log)
//! makes it durable.
//!
//! Where the rules meet concurrency:
//! - stock: one atomic word per deal (`deal_slot`); a reserve is a compare-and-swap that re-runs
//!   the rules on every retry, so a unit is never taken twice;
//! - per-user limits: the (deal, user) shard lock is held across the check and the stock
//!   change, so one user's concurrent reserves cannot both pass the check;
//! - holds: each resolves under its shard lock, exactly once;
//! - ordering with the log: units freed by an event (release, expiry, ...) become available
//!   only after the event is appended, so a reserve that takes them is logged after it.
//!
//! Where invariants are checked: each structure asserts its own on every change, in every
//! build, not only debug ones (counters stay in range and balanced, a hold number is inserted
//! once and a hold resolved once, an extended hold had its timer, a user count never goes
//! below zero). The invariants *across* structures ([`Allocator::audit`]) need a quiescent
//! allocator and read all of it, so they are not asserted on the live path: tests check them
//! after every step, and `restore` on every checkpoint it reads.
//!
//! # Layout
//! | file | concept |
//! |---|---|
//! | `mod.rs` | the allocator's state, its reads, and `execute`, the one entry point of commands |
//! | `admin.rs` | create, pause, resume, stock changes, ending deals and streams |
//! | `reserve.rs` | reserve and cart: the hot path |
//! | `resolve.rs` | confirm, release, extend, and the reaper's expiry of due holds |
//! | `offers.rs` | waitlists: joining, cancelling, units that come back offered to waiting entries |
//! | `replay.rs` | applying recorded events (recovery, the checkpointer's shadow) |
//! | `snapshot.rs` | the whole state as values (checkpoints, comparisons) and its restore |
//! | `audit.rs` | the cross-structure invariants |
//! | `deal_slot.rs` | one deal: spec, counters word, lifecycle, admin lock |
//! | `holds.rs` | the sharded hold table with its timers |
//! | `registry.rs` | deals by id, lock-free to read |
//! | `users.rs` | per-user counts for deals with a limit |
//! | `waitlist.rs` | one deal's waitlist: entries, the queue, the draw's record, forgetting |
//! | `ranks.rs` | a waiting entry's position in O(log n) (a Fenwick tree) |

mod admin;
mod audit;
mod deal_slot;
mod holds;
mod offers;
mod ranks;
mod registry;
mod replay;
mod reserve;
mod resolve;
mod snapshot;
#[cfg(test)]
pub(crate) mod test_support;
mod users;
mod waitlist;

use livestock_core::command::{Command, HoldView, Outcome};

use livestock_core::deal::DealView;
use livestock_core::error::CommandError;
use livestock_core::event::EventSink;
use livestock_core::hold::HoldState;
use livestock_core::ids::{HoldIdKey, HoldSeq};

use crate::sync::AtomicU64;

pub use deal_slot::DealSlot;
use holds::{HoldTable, Resolved};
pub use offers::DrawView;
use registry::Registry;
pub use replay::ReplayError;
pub use reserve::Refusal;
pub use snapshot::{encode_into, DealSnapshot, LegacySnapshot, Snapshot, WaitlistSnapshot};
use users::UserCounts;
pub use waitlist::DrawRecord;

#[derive(Clone, Copy, Debug)]
pub struct AllocatorConfig {
    pub hold_id_key: HoldIdKey,
    /// How long resolved holds stay readable (and their confirm/release retry-safe).
    pub resolved_hold_retention_ms: u64,
}

pub struct Allocator {
    config: AllocatorConfig,
    deals: Registry,
    holds: HoldTable,
    users: UserCounts,
    next_hold_seq: AtomicU64,
}

impl Allocator {
    pub fn new(config: AllocatorConfig) -> Self {
        Allocator {
            config,
            deals: Registry::default(),
            holds: HoldTable::default(),
            users: UserCounts::default(),
            next_hold_seq: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> AllocatorConfig {
        self.config
    }

    fn hold_id(&self, seq: HoldSeq) -> String {
        seq.to_id(self.config.hold_id_key)
    }

    // ---------------------------------------------------------------- reads

    pub fn deal(&self, id: &str, now_ms: u64) -> Option<DealView> {
        self.deals.with(id, |slot| slot.view(now_ms))
    }

    pub fn deals(&self, now_ms: u64) -> Vec<DealView> {
        self.deals.all().iter().map(|slot| slot.view(now_ms)).collect()
    }

    pub fn hold(&self, seq: HoldSeq, now_ms: u64) -> Option<HoldView> {
        let shard = self.holds.lock(seq);
        shard.get(seq).map(|entry| entry.view(now_ms))
    }

    /// (open, resolved) holds in memory: counted at scrape time, not maintained on the hot path.
    pub fn hold_counts(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for index in 0..self.holds.shard_count() {
            let shard = self.holds.lock_index(index);
            for entry in shard.entries() {
                match entry.hold.state {
                    HoldState::Held => counts.0 += 1,
                    _ => counts.1 += 1,
                }
            }
        }
        counts
    }

    // ---------------------------------------------------------------- commands

    /// The single entry point for every state change.
    pub fn execute(
        &self,
        command: &Command,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, CommandError> {
        match command {
            Command::CreateDeal(new) => Ok(self.create_deal(new, now_ms, sink)?),
            Command::PauseDeal(id) => Ok(self.pause(id, now_ms, sink)?),
            Command::ResumeDeal(id) => Ok(self.resume(id, now_ms, sink)?),
            Command::EndDeal(id) => Ok(self.end_deal(id, now_ms, sink)?),
            Command::AdjustStock { deal_id, delta } => {
                Ok(self.adjust_stock(deal_id, *delta, now_ms, sink)?)
            }
            Command::EndStream(stream) => Ok(self.end_stream(stream, now_ms, sink)?),
            Command::Reserve(r) => Ok(self.reserve(r, false, now_ms, sink)?),
            Command::Cart(r) => Ok(self.reserve(r, true, now_ms, sink)?),
            Command::Confirm { hold, qty } => Ok(self.confirm(*hold, *qty, now_ms, sink)?),
            Command::Release { hold } => Ok(self.release(*hold, now_ms, sink)?),
            Command::Extend { hold, ttl_ms } => Ok(self.extend(*hold, *ttl_ms, now_ms, sink)?),
            Command::CancelEntry { entry } => self.cancel_entry(*entry, now_ms, sink),
        }
    }

    /// Gives a resolved hold's units back to its deal and its user, straight to `available`
    /// (replay, an end; the live paths go through `give_back`, which serves a waitlist first).
    fn settle(&self, resolved: &Resolved) {
        resolved.deal.settle(resolved.settlement);
        if resolved.deal.spec.per_user_limit.is_some() && resolved.settlement.returned > 0 {
            let deal_id = &resolved.deal.spec.id;
            self.users.with(deal_id, &resolved.user_id, |shard| {
                users::sub(shard, deal_id, &resolved.user_id, resolved.settlement.returned)
            });
        }
    }
}
