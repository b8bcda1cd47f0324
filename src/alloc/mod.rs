//! The concurrent allocator: the hot path of livestock.
//!
//! It holds all state in memory and applies commands to it from many threads at once. It
//! decides with the pure rules of `core` (one copy of them), reads no clock (`now` is an
//! argument) and does no I/O: it hands each decided [`Event`] to an [`EventSink`] at the moment
//! the event is ordered, and the shell (the write-ahead log) makes it durable.
//!
//! Where the rules meet concurrency:
//! - stock: one atomic word per deal (`deal_slot`); a reserve is a compare-and-swap that re-runs
//!   the rules on every retry, so a unit is never taken twice;
//! - per-user limits: the (deal, user) shard lock is held across the check and the stock
//!   change, so one user's concurrent reserves cannot both pass the check;
//! - holds: each resolves under its shard lock, exactly once;
//! - ordering with the log: units freed by an event (release, expiry, ...) become available
//!   only after the event is appended, so a reserve that takes them is logged after it.

mod deal_slot;
mod holds;
mod registry;
mod users;

use std::borrow::Cow;
use std::collections::BTreeSet;

use smallvec::SmallVec;

use crate::sync::{Arc, AtomicU64, Ordering};
use livestock_core::command::{Command, HoldView, Line, Outcome, Reserve};
use livestock_core::counters::Counters;
use livestock_core::deal::{DealSpec, DealView, Lifecycle, NewDeal};
use livestock_core::error::{
    CommandError, CreateDealError, DealAdminError, HoldError, Invalid, ReserveError,
};
use livestock_core::event::{Event, EventSink};
use livestock_core::hold::{Decision, Hold, HoldState, Settlement};
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, StreamId, UserId};
use livestock_core::limits::{CART_LINES_MAX, DEALS_MAX, DEAL_STOCK_UNITS_MAX, HOLD_QTY_MAX};

pub use deal_slot::DealSlot;
use holds::{Entry, HoldTable, Resolved};
use registry::Registry;
use users::UserCounts;

#[derive(Clone, Copy, Debug)]
pub struct AllocatorConfig {
    pub hold_id_key: HoldIdKey,
    /// How long resolved holds stay readable (and their confirm/release retry-safe).
    pub resolved_hold_retention_ms: u64,
}

/// Why an event could not be replayed: the log and the state disagree. Recovery reports it
/// instead of guessing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply event: {0}")]
pub struct ReplayError(pub String);

/// Everything the allocator holds, as plain values, in a canonical order: for checkpoints and
/// for comparing two allocators (live vs replayed) in tests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub hold_id_key: HoldIdKey,
    pub next_hold_seq: u64,
    pub deals: Vec<DealSnapshot>,
    pub holds: Vec<Hold>,
    /// Units each user has taken (held plus bought) per limited deal, sorted. Kept whole, not
    /// derived from holds: a confirmed hold is forgotten after its retention, its units not.
    pub user_counts: Vec<(DealId, UserId, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DealSnapshot {
    pub spec: DealSpec,
    pub lifecycle: Lifecycle,
    pub counters: Counters,
}

pub struct Allocator {
    config: AllocatorConfig,
    deals: Registry,
    holds: HoldTable,
    users: UserCounts,
    next_hold_seq: AtomicU64,
}

/// A line of a reserve after lines for one deal were summed and the deal was found.
struct Take {
    deal: Arc<DealSlot>,
    qty: u32,
    ttl_ms: u64,
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

    pub fn hold_id(&self, seq: HoldSeq) -> String {
        seq.to_id(self.config.hold_id_key)
    }

    pub fn parse_hold_id(&self, id: &str) -> Result<HoldSeq, Invalid> {
        Ok(HoldSeq::from_id(id, self.config.hold_id_key)?)
    }

    // ---------------------------------------------------------------- reads

    pub fn deal(&self, id: &str, now_ms: u64) -> Option<DealView> {
        self.deals.with(id, |slot| slot.view(now_ms))
    }

    pub fn deals(&self, now_ms: u64) -> Vec<DealView> {
        self.deals.all().iter().map(|slot| slot.view(now_ms)).collect()
    }

    pub fn deal_count(&self) -> usize {
        self.deals.len()
    }

    pub fn hold(&self, seq: HoldSeq, now_ms: u64) -> Option<HoldView> {
        let shard = self.holds.lock(seq);
        shard.get(seq).map(|entry| HoldView::at(entry.hold.clone(), now_ms))
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

    /// The earliest instant at which a hold may be due (a hint for the reaper's sleep).
    pub fn next_expiry(&self) -> Option<u64> {
        (0..self.holds.shard_count()).filter_map(|i| self.holds.lock_index(i).next_expiry()).min()
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
        }
    }

    fn create_deal(
        &self,
        new: &NewDeal,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, CreateDealError> {
        let spec = DealSpec::new(new, now_ms)?;
        let stock = new.stock;
        let mut outcome = None;
        self.deals.insert(
            &spec.id,
            DEALS_MAX,
            || CreateDealError::Exists(new.id.to_string()),
            || CreateDealError::TooMany(DEALS_MAX),
            || {
                let slot =
                    Arc::new(DealSlot::new(spec.clone(), Counters::new(stock), Lifecycle::Open));
                // Logged before the deal is visible (this runs under the registry's write lock,
                // before the insert is published): a reserve of it is always logged after it.
                let view = Outcome::Deal(slot.view(now_ms));
                sink.append(Event::DealCreated { spec: spec.clone(), stock }, &view);
                outcome = Some(view);
                Ok(slot)
            },
        )?;
        match outcome {
            Some(outcome) => Ok(outcome),
            None => panic!("deal inserted without its event"),
        }
    }

    fn slot(&self, id: &DealId) -> Result<Arc<DealSlot>, DealAdminError> {
        self.deals.get(id.as_str()).ok_or_else(|| DealAdminError::UnknownDeal(id.to_string()))
    }

    fn pause(
        &self,
        id: &DealId,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, DealAdminError> {
        let slot = self.slot(id)?;
        let _admin = slot.lock_admin();
        match slot.lifecycle() {
            Lifecycle::Ended => return Err(DealAdminError::Ended),
            Lifecycle::Paused => return Ok(Outcome::Deal(slot.view(now_ms))),
            Lifecycle::Open => {}
        }
        slot.set_lifecycle(Lifecycle::Paused);
        let outcome = Outcome::Deal(slot.view(now_ms));
        sink.append(Event::DealPaused { deal_id: id.clone(), at_ms: now_ms }, &outcome);
        Ok(outcome)
    }

    fn resume(
        &self,
        id: &DealId,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, DealAdminError> {
        let slot = self.slot(id)?;
        let _admin = slot.lock_admin();
        match slot.lifecycle() {
            Lifecycle::Ended => return Err(DealAdminError::Ended),
            Lifecycle::Open => return Ok(Outcome::Deal(slot.view(now_ms))),
            Lifecycle::Paused => {}
        }
        // Reopening frees the stock to reserves: log first, then open.
        let mut view = slot.view(now_ms);
        view.state = view.spec.state(Lifecycle::Open, now_ms);
        view.counters = view.counters.with_shut(false);
        sink.append(
            Event::DealResumed { deal_id: id.clone(), at_ms: now_ms },
            &Outcome::Deal(view),
        );
        slot.set_lifecycle(Lifecycle::Open);
        Ok(Outcome::Deal(slot.view(now_ms)))
    }

    fn adjust_stock(
        &self,
        id: &DealId,
        delta: i64,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, DealAdminError> {
        if delta == 0 {
            return Err(Invalid("delta: must not be zero".into()).into());
        }
        let slot = self.slot(id)?;
        let _admin = slot.lock_admin();
        if slot.lifecycle() == Lifecycle::Ended {
            return Err(DealAdminError::Ended);
        }
        let event = Event::StockAdjusted { deal_id: id.clone(), delta, at_ms: now_ms };
        let units = delta.unsigned_abs();
        if delta > 0 {
            // Added units are freed units: log first, then make them available. Check the
            // limit on a copy first so that a refusal logs nothing.
            let mut view = slot.view(now_ms);
            view.counters = view.counters.add_stock(units).ok_or_else(|| {
                Invalid(format!("delta: a deal holds at most {DEAL_STOCK_UNITS_MAX} units"))
            })?;
            sink.append(event, &Outcome::Deal(view));
            // Only admin changes add stock, and we hold the admin lock: the check above holds.
            if slot.add_stock(units).is_none() {
                panic!("stock limit passed under the admin lock");
            }
        } else {
            slot.remove_stock(units).map_err(|shortage| match shortage {
                livestock_core::counters::Shortage::SoldOut => {
                    DealAdminError::InsufficientStock { available: 0 }
                }
                livestock_core::counters::Shortage::Insufficient { available } => {
                    DealAdminError::InsufficientStock { available }
                }
            })?;
            sink.append(event, &Outcome::Deal(slot.view(now_ms)));
        }
        Ok(Outcome::Deal(slot.view(now_ms)))
    }

    fn end_deal(
        &self,
        id: &DealId,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, DealAdminError> {
        let slot = self.slot(id)?;
        let (mut views, _released) =
            self.end_deals(vec![slot], now_ms, sink, |views, _| Outcome::Deal(views[0].clone()));
        Ok(Outcome::Deal(views.remove(0)))
    }

    fn end_stream(
        &self,
        stream: &StreamId,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, DealAdminError> {
        let slots: Vec<_> = self
            .deals
            .all()
            .into_iter()
            .filter(|slot| slot.spec.stream_id.as_ref() == Some(stream))
            .collect();
        if slots.is_empty() {
            return Err(DealAdminError::UnknownStream(stream.to_string()));
        }
        let outcome = |views: &[DealView], released: usize| Outcome::StreamEnded {
            stream_id: stream.clone(),
            deals: views.to_vec(),
            holds_released: released,
        };
        let (views, released) = self.end_deals(slots, now_ms, sink, outcome);
        Ok(outcome(&views, released))
    }

    /// Ends deals (sorted by id, so two concurrent stream ends lock in one order) and releases
    /// their open holds. Deals already ended are left as they are.
    fn end_deals(
        &self,
        slots: Vec<Arc<DealSlot>>,
        now_ms: u64,
        sink: &mut dyn EventSink,
        outcome: impl Fn(&[DealView], usize) -> Outcome,
    ) -> (Vec<DealView>, usize) {
        let guards: Vec<_> = slots.iter().map(|slot| slot.lock_admin()).collect();
        let ending: Vec<&Arc<DealSlot>> =
            slots.iter().filter(|slot| slot.lifecycle() != Lifecycle::Ended).collect();
        if ending.is_empty() {
            drop(guards);
            return (slots.iter().map(|s| s.view(now_ms)).collect(), 0);
        }
        // Shut first: from here no reserve passes, and a reserve that took units before this
        // point re-checks the lifecycle under its hold shard lock (see `reserve`), so the scan
        // below sees every hold of these deals.
        for slot in &ending {
            slot.set_lifecycle(Lifecycle::Ended);
        }
        let ids: BTreeSet<&str> = ending.iter().map(|slot| slot.spec.id.as_str()).collect();
        let mut released: Vec<(HoldSeq, Resolved)> = Vec::new();
        for index in 0..self.holds.shard_count() {
            let mut shard = self.holds.lock_index(index);
            // Holds already past their expiry are the reaper's: to a caller they are expired,
            // and ending the deal must not turn them into "released".
            let open: Vec<HoldSeq> = shard
                .entries()
                .filter(|e| ids.contains(e.hold.deal_id.as_str()))
                .filter(|e| e.hold.state_at(now_ms) == HoldState::Held)
                .map(|e| e.hold.seq)
                .collect();
            for seq in open {
                let settlement = shard.get(seq).map(|e| e.hold.full_return());
                let resolved = settlement.and_then(|s| {
                    shard.resolve(
                        seq,
                        HoldState::Released,
                        s,
                        now_ms,
                        self.config.resolved_hold_retention_ms,
                    )
                });
                if let Some(resolved) = resolved {
                    released.push((seq, resolved));
                }
            }
        }
        let deals = ending
            .iter()
            .map(|slot| {
                let seqs = released
                    .iter()
                    .filter(|(_, r)| Arc::ptr_eq(&r.deal, slot))
                    .map(|(seq, _)| *seq)
                    .collect();
                (slot.spec.id.clone(), seqs)
            })
            .collect();
        // The answer shows the counters as they are once the released units are back.
        let views: Vec<DealView> = slots
            .iter()
            .map(|slot| {
                let mut view = slot.view(now_ms);
                for (_, r) in released.iter().filter(|(_, r)| Arc::ptr_eq(&r.deal, slot)) {
                    view.counters = view.counters.put_back(u64::from(r.settlement.returned));
                }
                view
            })
            .collect();
        sink.append(Event::DealsEnded { at_ms: now_ms, deals }, &outcome(&views, released.len()));
        let count = released.len();
        for (_, resolved) in released {
            self.settle(&resolved);
        }
        drop(guards);
        (views, count)
    }

    /// Sums lines per deal (first-mention order) and checks each summed line: a cart that asks
    /// 600 + 600 of one deal is a request for 1,200, checked as such.
    ///
    /// Borrows the lines when no deal repeats (every single reserve): cloning a line would
    /// bump its deal id's shared reference count, a write the sold-out path must not make.
    fn summed_lines(lines: &[Line]) -> Result<Cow<'_, [Line]>, Invalid> {
        if lines.is_empty() {
            return Err(Invalid("lines: at least one line is required".into()));
        }
        if lines.len() > CART_LINES_MAX {
            return Err(Invalid(format!("lines: at most {CART_LINES_MAX} lines")));
        }
        if let Some(line) = lines.iter().find(|l| l.qty == 0 || l.qty > HOLD_QTY_MAX) {
            return Err(Invalid(format!(
                "qty: must be between 1 and {HOLD_QTY_MAX} (deal {} asks {})",
                line.deal_id, line.qty
            )));
        }
        let repeats = lines
            .iter()
            .enumerate()
            .any(|(i, l)| lines[..i].iter().any(|e| e.deal_id == l.deal_id));
        if !repeats {
            return Ok(Cow::Borrowed(lines));
        }
        let mut summed: Vec<Line> = Vec::with_capacity(lines.len());
        for line in lines {
            match summed.iter_mut().find(|l| l.deal_id == line.deal_id) {
                Some(l) => l.qty += line.qty,
                None => summed.push(line.clone()),
            }
        }
        if let Some(line) = summed.iter().find(|l| l.qty > HOLD_QTY_MAX) {
            return Err(Invalid(format!(
                "qty: lines for deal {} add up to {}, over {HOLD_QTY_MAX}",
                line.deal_id, line.qty
            )));
        }
        Ok(Cow::Owned(summed))
    }

    fn reserve(
        &self,
        request: &Reserve,
        cart: bool,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, ReserveError> {
        let lines = Self::summed_lines(&request.lines)?;
        if !cart && lines.len() != 1 {
            panic!("a single reserve carries one line");
        }
        // Find the deals and run the rules on one load of each: the sold-out path ends here
        // having written nothing.
        let mut takes: SmallVec<[Take; 1]> = SmallVec::with_capacity(lines.len());
        for line in lines.iter() {
            let taken = self.deals.with(line.deal_id.as_str(), |slot| {
                let counters = slot.counters();
                slot.spec.check_open(counters.shut(), || slot.lifecycle(), now_ms)?;
                slot.spec.take(counters, line.qty)?;
                let ttl_ms = slot.spec.hold_ttl(request.ttl_ms)?;
                Ok::<_, ReserveError>(Take { deal: slot.clone(), qty: line.qty, ttl_ms })
            });
            match taken {
                None => return Err(ReserveError::UnknownDeal(line.deal_id.to_string())),
                Some(take) => takes.push(take?),
            }
        }
        self.take_units(&takes, &request.user_id, now_ms)?;

        // Number the holds and lock their shards (in index order: no lock-order cycles).
        let first = self.next_hold_seq.fetch_add(takes.len() as u64, Ordering::Relaxed);
        // (SmallVecs: a single reserve, the hot path, allocates none of this.)
        let seqs: SmallVec<[HoldSeq; 1]> =
            (0..takes.len() as u64).map(|i| HoldSeq(first + i)).collect();
        let mut shard_indices: SmallVec<[usize; 1]> =
            seqs.iter().map(|s| HoldTable::shard_of(*s)).collect();
        shard_indices.sort_unstable();
        shard_indices.dedup();
        let mut shards: SmallVec<[_; 1]> =
            shard_indices.iter().map(|i| (*i, self.holds.lock_index(*i))).collect();
        // An end of one of these deals may have begun after our units were taken; it scans the
        // hold shards after shutting the deal, so checking here under the shard lock means it
        // either sees our hold or we see its end (and give the units back).
        if let Some(ended) = takes.iter().find(|t| t.deal.lifecycle() == Lifecycle::Ended) {
            let deal_id = ended.deal.spec.id.to_string();
            drop(shards);
            self.untake_units(&takes, &request.user_id);
            return Err(ReserveError::Ended(deal_id));
        }
        let holds: Vec<Hold> = takes
            .iter()
            .zip(&seqs)
            .map(|(take, seq)| Hold {
                seq: *seq,
                deal_id: take.deal.spec.id.clone(),
                user_id: request.user_id.clone(),
                qty: take.qty,
                created_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(take.ttl_ms),
                state: HoldState::Held,
                confirmed_qty: 0,
                resolved_at_ms: None,
            })
            .collect();
        let outcome =
            Outcome::Holds(holds.iter().map(|h| HoldView::at(h.clone(), now_ms)).collect());
        sink.append(Event::Reserved { holds: holds.clone() }, &outcome);
        for (hold, take) in holds.into_iter().zip(&takes) {
            let index = HoldTable::shard_of(hold.seq);
            let Some((_, shard)) = shards.iter_mut().find(|(i, _)| *i == index) else {
                panic!("hold shard {index} not locked");
            };
            shard.insert(Entry { hold, deal: take.deal.clone() }, 0);
        }
        Ok(outcome)
    }

    /// Takes the units of every line, all or nothing, with the per-user limits held across
    /// the check and the change.
    fn take_units(&self, takes: &[Take], user: &UserId, now_ms: u64) -> Result<(), ReserveError> {
        let limited: BTreeSet<usize> = takes
            .iter()
            .filter(|t| t.deal.spec.per_user_limit.is_some())
            .map(|t| self.users.shard_of(&t.deal.spec.id, user))
            .collect();
        let mut user_shards: Vec<_> = limited.iter().map(|i| (*i, self.users.lock(*i))).collect();
        let shard_for = |shards: &mut Vec<(usize, _)>, take: &Take| {
            let index = self.users.shard_of(&take.deal.spec.id, user);
            shards.iter().position(|(i, _)| *i == index)
        };
        for take in takes.iter().filter(|t| t.deal.spec.per_user_limit.is_some()) {
            let Some(pos) = shard_for(&mut user_shards, take) else {
                panic!("user shard not locked");
            };
            let taken = users::taken(&user_shards[pos].1, &take.deal.spec.id, user);
            take.deal.spec.check_user_limit(taken, take.qty)?;
        }
        for (done, take) in takes.iter().enumerate() {
            if let Err(e) = take.deal.try_take(take.qty, now_ms) {
                // Give back what this cart took so far. No event was logged for those units,
                // and giving back is safe: they were never visible as held by anyone.
                for earlier in &takes[..done] {
                    earlier.deal.settle(Settlement { sold: 0, returned: earlier.qty });
                }
                return Err(e);
            }
        }
        for take in takes.iter().filter(|t| t.deal.spec.per_user_limit.is_some()) {
            let Some(pos) = shard_for(&mut user_shards, take) else {
                panic!("user shard not locked");
            };
            users::add(&mut user_shards[pos].1, &take.deal.spec.id, user, take.qty);
        }
        Ok(())
    }

    /// Undoes `take_units` for a reserve that lost a race with an end (nothing was logged).
    fn untake_units(&self, takes: &[Take], user: &UserId) {
        for take in takes {
            take.deal.settle(Settlement { sold: 0, returned: take.qty });
            if take.deal.spec.per_user_limit.is_some() {
                self.users.with(&take.deal.spec.id, user, |shard| {
                    users::sub(shard, &take.deal.spec.id, user, take.qty)
                });
            }
        }
    }

    /// Gives a resolved hold's units back to its deal and its user.
    fn settle(&self, resolved: &Resolved) {
        resolved.deal.settle(resolved.settlement);
        if resolved.deal.spec.per_user_limit.is_some() && resolved.settlement.returned > 0 {
            let deal_id = &resolved.deal.spec.id;
            self.users.with(deal_id, &resolved.user_id, |shard| {
                users::sub(shard, deal_id, &resolved.user_id, resolved.settlement.returned)
            });
        }
    }

    fn unknown_hold(&self, seq: HoldSeq) -> HoldError {
        HoldError::UnknownHold(self.hold_id(seq))
    }

    fn confirm(
        &self,
        seq: HoldSeq,
        qty: Option<u32>,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, HoldError> {
        self.resolve(seq, now_ms, sink, |hold| {
            let decision = hold.decide_confirm(qty, now_ms)?;
            Ok(decision.map(|s| (HoldState::Confirmed, s)))
        })
    }

    fn release(
        &self,
        seq: HoldSeq,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, HoldError> {
        self.resolve(seq, now_ms, sink, |hold| {
            let decision = hold.decide_release(now_ms)?;
            Ok(decision.map(|s| (HoldState::Released, s)))
        })
    }

    /// Confirm and release: decide under the hold's shard lock, record, log, then give back.
    fn resolve(
        &self,
        seq: HoldSeq,
        now_ms: u64,
        sink: &mut dyn EventSink,
        decide: impl FnOnce(&Hold) -> Result<Decision<(HoldState, Settlement)>, HoldError>,
    ) -> Result<Outcome, HoldError> {
        let resolved = {
            let mut shard = self.holds.lock(seq);
            let entry = shard.get(seq).ok_or_else(|| self.unknown_hold(seq))?;
            let (state, settlement) = match decide(&entry.hold)? {
                Decision::AlreadyDone => {
                    return Ok(Outcome::Hold(HoldView::at(entry.hold.clone(), now_ms)));
                }
                Decision::Apply(decided) => decided,
            };
            let retention_ms = self.config.resolved_hold_retention_ms;
            let Some(resolved) = shard.resolve(seq, state, settlement, now_ms, retention_ms) else {
                panic!("hold vanished under its lock");
            };
            let Some(entry) = shard.get(seq) else { panic!("hold vanished under its lock") };
            let outcome = Outcome::Hold(HoldView::at(entry.hold.clone(), now_ms));
            let event = match state {
                HoldState::Confirmed => {
                    Event::Confirmed { seq, qty: settlement.sold, at_ms: now_ms }
                }
                HoldState::Released => Event::Released { seq, at_ms: now_ms },
                HoldState::Expired | HoldState::Held => panic!("resolve to {state:?}"),
            };
            sink.append(event, &outcome);
            (resolved, outcome)
        };
        self.settle(&resolved.0);
        Ok(resolved.1)
    }

    fn extend(
        &self,
        seq: HoldSeq,
        ttl_ms: u64,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, HoldError> {
        let mut shard = self.holds.lock(seq);
        let entry = shard.get(seq).ok_or_else(|| self.unknown_hold(seq))?;
        let max_ms = entry.deal.spec.hold_ttl_ms_max;
        let expires_at_ms = match entry.hold.decide_extend(ttl_ms, max_ms, now_ms)? {
            Decision::AlreadyDone => {
                return Ok(Outcome::Hold(HoldView::at(entry.hold.clone(), now_ms)))
            }
            Decision::Apply(at) => at,
        };
        let Some(hold) = shard.extend(seq, expires_at_ms) else {
            panic!("hold vanished under its lock");
        };
        let outcome = Outcome::Hold(HoldView::at(hold.clone(), now_ms));
        // Logged under the shard lock: no resolution of this hold can be ordered before it.
        sink.append(Event::Extended { seq, expires_at_ms, at_ms: now_ms }, &outcome);
        Ok(outcome)
    }

    /// The reaper's step: expires every hold due at `now` and forgets resolved holds whose
    /// retention has passed. Returns how many holds expired.
    pub fn expire_due(&self, now_ms: u64, sink: &mut dyn EventSink) -> usize {
        let mut expired = 0;
        for index in 0..self.holds.shard_count() {
            let mut resolved = Vec::new();
            {
                let mut shard = self.holds.lock_index(index);
                for seq in shard.take_due(now_ms) {
                    let Some(settlement) = shard.get(seq).map(|e| e.hold.full_return()) else {
                        continue;
                    };
                    let retention_ms = self.config.resolved_hold_retention_ms;
                    if let Some(r) =
                        shard.resolve(seq, HoldState::Expired, settlement, now_ms, retention_ms)
                    {
                        let Some(entry) = shard.get(seq) else { panic!("hold vanished") };
                        let outcome = Outcome::Hold(HoldView::at(entry.hold.clone(), now_ms));
                        sink.append(Event::Expired { seq, at_ms: now_ms }, &outcome);
                        resolved.push(r);
                    }
                }
                shard.forget_due(now_ms);
            }
            expired += resolved.len();
            for r in &resolved {
                self.settle(r);
            }
        }
        expired
    }

    // ---------------------------------------------------------------- replay

    /// Applies an event decided earlier (by this process before a crash, or by the log writer's
    /// shadow copy) without deciding anything again. Single-threaded use.
    pub fn apply(&self, event: &Event) -> Result<(), ReplayError> {
        let err = |what: String| Err(ReplayError(what));
        match event {
            Event::DealCreated { spec, stock } => {
                if !spec.is_valid(*stock) {
                    return err(format!("deal {} has an invalid spec", spec.id));
                }
                let result = self.deals.insert(
                    &spec.id,
                    usize::MAX,
                    || ReplayError(format!("deal {} created twice", spec.id)),
                    || ReplayError("too many deals".into()),
                    || {
                        Ok(Arc::new(DealSlot::new(
                            spec.clone(),
                            Counters::new(*stock),
                            Lifecycle::Open,
                        )))
                    },
                );
                result.map(|_| ())
            }
            Event::DealPaused { deal_id, .. } => {
                self.replay_slot(deal_id)?.set_lifecycle(Lifecycle::Paused);
                Ok(())
            }
            Event::DealResumed { deal_id, .. } => {
                self.replay_slot(deal_id)?.set_lifecycle(Lifecycle::Open);
                Ok(())
            }
            Event::StockAdjusted { deal_id, delta, .. } => {
                let slot = self.replay_slot(deal_id)?;
                let units = delta.unsigned_abs();
                let ok = if *delta > 0 {
                    slot.add_stock(units).is_some()
                } else {
                    slot.remove_stock(units).is_ok()
                };
                if !ok {
                    return err(format!("stock change {delta} does not fit deal {deal_id}"));
                }
                Ok(())
            }
            Event::DealsEnded { at_ms, deals } => {
                for (deal_id, seqs) in deals {
                    self.replay_slot(deal_id)?.set_lifecycle(Lifecycle::Ended);
                    for seq in seqs {
                        self.replay_resolve(*seq, HoldState::Released, None, *at_ms)?;
                    }
                }
                Ok(())
            }
            Event::Reserved { holds } => {
                for hold in holds {
                    self.replay_reserve(hold)?;
                }
                Ok(())
            }
            Event::Confirmed { seq, qty, at_ms } => {
                self.replay_resolve(*seq, HoldState::Confirmed, Some(*qty), *at_ms)
            }
            Event::Released { seq, at_ms } => {
                self.replay_resolve(*seq, HoldState::Released, None, *at_ms)
            }
            Event::Expired { seq, at_ms } => {
                self.replay_resolve(*seq, HoldState::Expired, None, *at_ms)
            }
            Event::Answered { .. } => Ok(()),
            Event::Extended { seq, expires_at_ms, .. } => {
                let mut shard = self.holds.lock(*seq);
                match shard.get(*seq) {
                    Some(e) if e.hold.state == HoldState::Held => {}
                    _ => return err(format!("extend of hold {} that is not held", seq.0)),
                }
                shard.extend(*seq, *expires_at_ms);
                Ok(())
            }
        }
    }

    fn replay_slot(&self, id: &DealId) -> Result<Arc<DealSlot>, ReplayError> {
        self.deals.get(id.as_str()).ok_or_else(|| ReplayError(format!("unknown deal {id}")))
    }

    fn replay_reserve(&self, hold: &Hold) -> Result<(), ReplayError> {
        let slot = self.replay_slot(&hold.deal_id)?;
        if hold.state != HoldState::Held || hold.qty == 0 {
            return Err(ReplayError(format!("hold {} is not a fresh hold", hold.seq.0)));
        }
        let mut shard = self.holds.lock(hold.seq);
        if shard.contains(hold.seq) {
            return Err(ReplayError(format!("hold {} reserved twice", hold.seq.0)));
        }
        slot.force_take(hold.qty).map_err(|shortage| {
            ReplayError(format!("hold {} takes {} units: {shortage:?}", hold.seq.0, hold.qty))
        })?;
        if slot.spec.per_user_limit.is_some() {
            self.users.with(&hold.deal_id, &hold.user_id, |users| {
                users::add(users, &hold.deal_id, &hold.user_id, hold.qty)
            });
        }
        shard.insert(Entry { hold: hold.clone(), deal: slot }, 0);
        self.next_hold_seq.fetch_max(hold.seq.0 + 1, Ordering::Relaxed);
        Ok(())
    }

    fn replay_resolve(
        &self,
        seq: HoldSeq,
        state: HoldState,
        sold: Option<u32>,
        at_ms: u64,
    ) -> Result<(), ReplayError> {
        let resolved = {
            let mut shard = self.holds.lock(seq);
            let Some(entry) = shard.get(seq) else {
                return Err(ReplayError(format!("unknown hold {}", seq.0)));
            };
            if entry.hold.state != HoldState::Held {
                return Err(ReplayError(format!("hold {} resolved twice", seq.0)));
            }
            let qty = entry.hold.qty;
            let sold = sold.unwrap_or(0);
            if sold > qty || (state == HoldState::Confirmed && sold == 0) {
                return Err(ReplayError(format!("hold {} confirms {sold} of {qty}", seq.0)));
            }
            let settlement = Settlement { sold, returned: qty - sold };
            let retention_ms = self.config.resolved_hold_retention_ms;
            shard.resolve(seq, state, settlement, at_ms, retention_ms)
        };
        if let Some(resolved) = resolved {
            self.settle(&resolved);
        }
        Ok(())
    }

    /// Rebuilds an allocator from a snapshot (a checkpoint), checking it as outside input:
    /// every spec valid, every hold's deal known, every invariant holding.
    pub fn restore(config: AllocatorConfig, snapshot: &Snapshot) -> Result<Self, ReplayError> {
        let err = |what: String| ReplayError(what);
        let config = AllocatorConfig { hold_id_key: snapshot.hold_id_key, ..config };
        let allocator = Allocator::new(config);
        for deal in &snapshot.deals {
            let spec = &deal.spec;
            if !spec.is_valid(deal.counters.stock()) {
                return Err(err(format!("deal {} has an invalid spec", spec.id)));
            }
            allocator.deals.insert(
                &spec.id,
                usize::MAX,
                || err(format!("deal {} twice", spec.id)),
                || err("too many deals".into()),
                || Ok(Arc::new(DealSlot::new(spec.clone(), deal.counters, deal.lifecycle))),
            )?;
        }
        for hold in &snapshot.holds {
            let slot = allocator.replay_slot(&hold.deal_id)?;
            let mut shard = allocator.holds.lock(hold.seq);
            if shard.contains(hold.seq) || hold.seq.0 >= snapshot.next_hold_seq {
                return Err(err(format!("hold {} twice or above the sequence", hold.seq.0)));
            }
            if (hold.state == HoldState::Held) != hold.resolved_at_ms.is_none() || hold.qty == 0 {
                return Err(err(format!("hold {} is inconsistent", hold.seq.0)));
            }
            let retention_ms = config.resolved_hold_retention_ms;
            shard.insert(Entry { hold: hold.clone(), deal: slot }, retention_ms);
        }
        for (deal_id, user_id, count) in &snapshot.user_counts {
            let slot = allocator.replay_slot(deal_id)?;
            if slot.spec.per_user_limit.is_none() || *count == 0 {
                return Err(err(format!("user count for deal {deal_id} that has no limit")));
            }
            allocator
                .users
                .with(deal_id, user_id, |shard| users::add(shard, deal_id, user_id, *count));
        }
        allocator.next_hold_seq.store(snapshot.next_hold_seq, Ordering::Relaxed);
        allocator.audit().map_err(err)?;
        Ok(allocator)
    }

    /// Forgets resolved holds whose retention has passed (the reaper does this as part of
    /// `expire_due`; the log writer's shadow copy, which never decides expiries, calls this).
    pub fn forget_due(&self, now_ms: u64) {
        for index in 0..self.holds.shard_count() {
            self.holds.lock_index(index).forget_due(now_ms);
        }
    }

    // ---------------------------------------------------------------- whole-state views

    /// A canonical copy of the state. Consistent only when no command runs concurrently (tests,
    /// and the log writer's single-threaded shadow allocator).
    pub fn snapshot(&self) -> Snapshot {
        let deals = self
            .deals
            .all()
            .iter()
            .map(|slot| DealSnapshot {
                spec: slot.spec.clone(),
                lifecycle: slot.lifecycle(),
                counters: slot.counters(),
            })
            .collect();
        let mut holds: Vec<Hold> = (0..self.holds.shard_count())
            .flat_map(|i| {
                let shard = self.holds.lock_index(i);
                shard.entries().map(|e| e.hold.clone()).collect::<Vec<_>>()
            })
            .collect();
        holds.sort_by_key(|h| h.seq);
        let mut user_counts: Vec<(DealId, UserId, u32)> = (0..self.users.shard_count())
            .flat_map(|i| {
                let shard = self.users.lock(i);
                shard
                    .iter()
                    .flat_map(|(deal, users)| {
                        users.iter().map(|(user, n)| (deal.clone(), user.clone(), *n))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        user_counts.sort();
        Snapshot {
            hold_id_key: self.config.hold_id_key,
            next_hold_seq: self.next_hold_seq.load(Ordering::Relaxed),
            deals,
            holds,
            user_counts,
        }
    }

    /// Checks every cross-structure invariant; panics with the first violation. O(holds):
    /// tests call it after every step. Only valid while quiescent.
    pub fn check_invariants(&self) {
        if let Err(violation) = self.audit() {
            panic!("invariant violated: {violation}");
        }
    }

    /// The invariants as a result, for state read from outside (a checkpoint).
    pub fn audit(&self) -> Result<(), String> {
        macro_rules! ensure {
            ($cond:expr, $($msg:tt)+) => {
                if !$cond {
                    return Err(format!($($msg)+));
                }
            };
        }
        use std::collections::HashMap;
        let snapshot = self.snapshot();
        let mut held: HashMap<&str, u64> = HashMap::new();
        let mut sold: HashMap<&str, u64> = HashMap::new();
        let mut per_user: HashMap<(&str, &str), u32> = HashMap::new();
        for hold in &snapshot.holds {
            ensure!(hold.seq.0 < snapshot.next_hold_seq, "hold {:?} above the sequence", hold.seq);
            let deal = hold.deal_id.as_str();
            match hold.state {
                HoldState::Held => {
                    *held.entry(deal).or_default() += u64::from(hold.qty);
                    *per_user.entry((deal, hold.user_id.as_str())).or_default() += hold.qty;
                    let shard = self.holds.lock(hold.seq);
                    ensure!(
                        shard.has_timer(hold.seq, hold.expires_at_ms),
                        "open hold {:?} has no expiry timer",
                        hold.seq
                    );
                }
                HoldState::Confirmed => {
                    ensure!(
                        hold.confirmed_qty >= 1 && hold.confirmed_qty <= hold.qty,
                        "hold {:?} confirmed_qty out of range",
                        hold.seq
                    );
                    *sold.entry(deal).or_default() += u64::from(hold.confirmed_qty);
                    *per_user.entry((deal, hold.user_id.as_str())).or_default() +=
                        hold.confirmed_qty;
                }
                HoldState::Released | HoldState::Expired => {
                    ensure!(
                        hold.confirmed_qty == 0,
                        "hold {:?} unsold but confirmed_qty",
                        hold.seq
                    );
                }
            }
        }
        for deal in &snapshot.deals {
            let id = deal.spec.id.as_str();
            let c = deal.counters;
            ensure!(c.shut() == (deal.lifecycle != Lifecycle::Open), "deal {id} shut flag");
            ensure!(c.held() == held.get(id).copied().unwrap_or(0), "deal {id} held vs holds");
            // Forgotten confirmed holds leave their units in `sold`: at least what we see.
            ensure!(c.sold() >= sold.get(id).copied().unwrap_or(0), "deal {id} sold vs holds");
            ensure!(c.held() + c.sold() <= c.stock(), "deal {id} oversold");
            let Some(limit) = deal.spec.per_user_limit else {
                continue;
            };
            for index in 0..self.users.shard_count() {
                let shard = self.users.lock(index);
                let Some(users) = shard.get(id) else { continue };
                for (user, count) in users {
                    ensure!(*count <= limit, "user {user} over the limit in deal {id}");
                    let from_holds = per_user.get(&(id, user.as_str())).copied().unwrap_or(0);
                    // Forgotten confirmed holds still count against the user.
                    ensure!(*count >= from_holds, "user {user} count below its holds in {id}");
                }
            }
            for ((deal_id, user), qty) in &per_user {
                if *deal_id == id {
                    let Ok(user_id) = UserId::parse(user) else {
                        return Err(format!("bad user id {user:?}"));
                    };
                    let counted = self.users.with(&deal.spec.id, &user_id, |s| {
                        users::taken(s, &deal.spec.id, &user_id)
                    });
                    ensure!(counted >= *qty, "user {user} count misses holds in {id}");
                }
            }
        }
        Ok(())
    }
}
