//! Replay: applying events decided earlier, by this process before a crash (recovery) or by the
//! live allocator (the log writer's shadow copy, which the checkpointer snapshots). Nothing is
//! decided again and no rule is re-run against the replaying clock: an event says what
//! happened, and a log is checked only for consistency with the state it builds.

use livestock_core::counters::Counters;
use livestock_core::deal::{DealSpec, Lifecycle};
use livestock_core::event::Event;
use livestock_core::hold::{Hold, HoldState, Settlement};
use livestock_core::ids::{DealId, EntrySeq, HoldSeq};
use livestock_core::limits::HOLD_QTY_MAX;
use livestock_core::waitlist::{DealOptions, EntryState, WaitEntry};

use super::holds::Entry;
use super::waitlist::Waitlist;
use super::{users, Allocator, DealSlot};
use crate::sync::{Arc, Ordering};

/// Why an event could not be replayed: the log and the state disagree. Recovery reports it
/// instead of guessing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply event: {0}")]
pub struct ReplayError(pub String);

impl Allocator {
    /// Applies an event decided earlier (by this process before a crash, or by the log writer's
    /// shadow copy) without deciding anything again. Single-threaded use.
    pub fn apply(&self, event: &Event) -> Result<(), ReplayError> {
        let err = |what: String| Err(ReplayError(what));
        match event {
            Event::DealCreated { spec, stock } => {
                self.replay_create(spec, DealOptions::none(spec), *stock)
            }
            Event::DealOpened { spec, options, stock } => {
                self.replay_create(spec, *options, *stock)
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
                    let slot = self.replay_slot(deal_id)?;
                    slot.set_lifecycle(Lifecycle::Ended);
                    if let Some(mut list) = slot.lock_waitlist() {
                        let retention_ms = self.config.resolved_hold_retention_ms;
                        list.lapse_all_waiting(*at_ms, retention_ms);
                        slot.set_waiting(0);
                        slot.set_drawn();
                    }
                    for seq in seqs {
                        self.replay_resolve(*seq, HoldState::Released, None, *at_ms)?;
                    }
                }
                Ok(())
            }
            Event::Reserved { holds } => {
                for hold in holds {
                    self.replay_reserve(hold, None)?;
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
            Event::WaitlistJoined { entry } => self.replay_join(entry),
            Event::Drawn { deal_id, seed, at_ms } => {
                let slot = self.replay_slot(deal_id)?;
                let Some(mut list) = slot.lock_waitlist() else {
                    return err(format!("draw of deal {deal_id} without one"));
                };
                if slot.options.draw_seed.as_ref() != Some(seed) || list.draw().is_some() {
                    return err(format!("draw of deal {deal_id} with another seed, or twice"));
                }
                list.start_draw(seed, *at_ms, slot.counters().available());
                slot.set_waiting(list.waiting_count());
                Ok(())
            }
            Event::DrawClosed { deal_id, at_ms } => {
                let slot = self.replay_slot(deal_id)?;
                let Some(mut list) = slot.lock_waitlist() else {
                    return err(format!("draw of deal {deal_id} without one"));
                };
                if !list.draw_open() {
                    return err(format!("close of a draw of deal {deal_id} that is not open"));
                }
                let keep = slot.options.waitlist_max as usize;
                list.close_draw(*at_ms, keep, self.config.resolved_hold_retention_ms);
                slot.set_waiting(list.waiting_count());
                slot.set_drawn();
                Ok(())
            }
            Event::Offered { entry, hold } => self.replay_offer(*entry, hold),
            Event::WaitlistLapsed { entry, at_ms } => {
                self.replay_entry(*entry, |allocator, slot, list| {
                    let retention_ms = allocator.config.resolved_hold_retention_ms;
                    match list.get(*entry).map(|e| e.state) {
                        Some(EntryState::Waiting) => {
                            list.lapse_waiting(*entry, *at_ms, retention_ms);
                        }
                        // A draw that never happened: its deal's end came first.
                        Some(EntryState::Entered) if list.draw().is_none() => {
                            list.lapse_entered(*entry, *at_ms, retention_ms);
                            if list.entered_count() == 0 {
                                slot.set_drawn();
                            }
                        }
                        _ => {
                            return Err(ReplayError(format!(
                                "lapse of entry {} not waiting",
                                entry.0
                            )))
                        }
                    }
                    slot.set_waiting(list.waiting_count());
                    Ok(())
                })
            }
            Event::WaitlistCancelled { entry, at_ms } => {
                let offer = self.replay_entry(*entry, |allocator, slot, list| {
                    let Some(found) = list.get(*entry) else { panic!("checked") };
                    let offer = match found.state {
                        EntryState::Waiting | EntryState::Entered => None,
                        EntryState::Offered => found.hold,
                        _ => {
                            return Err(ReplayError(format!(
                                "cancel of entry {} in state {:?}",
                                entry.0, found.state
                            )))
                        }
                    };
                    let retention_ms = allocator.config.resolved_hold_retention_ms;
                    list.cancel(*entry, *at_ms, retention_ms);
                    slot.set_waiting(list.waiting_count());
                    Ok(offer)
                })?;
                // An offered entry's cancel released its hold (the entry is already unlinked
                // from it, so the release does not lapse it).
                match offer {
                    Some(hold) => self.replay_resolve(hold, HoldState::Released, None, *at_ms),
                    None => Ok(()),
                }
            }
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

    fn replay_create(
        &self,
        spec: &DealSpec,
        options: DealOptions,
        stock: u64,
    ) -> Result<(), ReplayError> {
        if !spec.is_valid(stock) || !options.is_valid(spec) {
            return Err(ReplayError(format!("deal {} has an invalid spec", spec.id)));
        }
        let result = self.deals.insert(
            &spec.id,
            usize::MAX,
            || ReplayError(format!("deal {} created twice", spec.id)),
            || ReplayError("too many deals".into()),
            || {
                Ok(Arc::new(DealSlot::new(
                    spec.clone(),
                    options,
                    Counters::new(stock),
                    Lifecycle::Open,
                )))
            },
        );
        result.map(|_| ())
    }

    pub(super) fn replay_slot(&self, id: &DealId) -> Result<Arc<DealSlot>, ReplayError> {
        self.deals.get(id.as_str()).ok_or_else(|| ReplayError(format!("unknown deal {id}")))
    }

    fn replay_reserve(&self, hold: &Hold, origin: Option<EntrySeq>) -> Result<(), ReplayError> {
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
        shard.insert(Entry { hold: hold.clone(), deal: slot, origin }, 0);
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
            if resolved.origin.is_some() {
                if let Some(mut list) = resolved.deal.lock_waitlist() {
                    let confirmed = resolved.state == HoldState::Confirmed;
                    let retention_ms = self.config.resolved_hold_retention_ms;
                    list.offer_resolved(resolved.seq, confirmed, at_ms, retention_ms);
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on the waitlist holding `entry` (single-threaded replay: the scan is fine).
    fn replay_entry<R>(
        &self,
        entry: EntrySeq,
        f: impl FnOnce(&Self, &DealSlot, &mut Waitlist) -> Result<R, ReplayError>,
    ) -> Result<R, ReplayError> {
        for slot in self.waitlist_deals() {
            let Some(mut list) = slot.lock_waitlist() else { continue };
            if list.get(entry).is_some() {
                return f(self, &slot, &mut list);
            }
        }
        Err(ReplayError(format!("unknown waitlist entry {}", entry.0)))
    }

    fn replay_join(&self, entry: &WaitEntry) -> Result<(), ReplayError> {
        let slot = self.replay_slot(&entry.deal_id)?;
        let Some(mut list) = slot.lock_waitlist() else {
            return Err(ReplayError(format!("deal {} has no waitlist", entry.deal_id)));
        };
        if entry.state == EntryState::Entered {
            let fits = slot.draw_pending()
                && list.draw().is_none()
                && list.active_of(&entry.user_id).is_none()
                && list.get(entry.seq).is_none()
                && entry.hold.is_none()
                && entry.resolved_at_ms.is_none()
                && (1..=HOLD_QTY_MAX).contains(&entry.qty);
            if !fits {
                return Err(ReplayError(format!("entry {} does not enter the draw", entry.seq.0)));
            }
            list.enter(entry.clone());
            self.next_hold_seq.fetch_max(entry.seq.0 + 1, Ordering::Relaxed);
            return Ok(());
        }
        let fresh = entry.state == EntryState::Waiting
            && entry.hold.is_none()
            && entry.resolved_at_ms.is_none()
            && (1..=HOLD_QTY_MAX).contains(&entry.qty);
        if !fresh || list.active_of(&entry.user_id).is_some() || list.get(entry.seq).is_some() {
            return Err(ReplayError(format!("entry {} does not join", entry.seq.0)));
        }
        if list.waiting_count() >= slot.options.waitlist_max as usize {
            return Err(ReplayError(format!("entry {} joins a full waitlist", entry.seq.0)));
        }
        list.push(entry.clone());
        slot.set_waiting(list.waiting_count());
        self.next_hold_seq.fetch_max(entry.seq.0 + 1, Ordering::Relaxed);
        Ok(())
    }

    fn replay_offer(&self, entry: EntrySeq, hold: &Hold) -> Result<(), ReplayError> {
        let slot = self.replay_slot(&hold.deal_id)?;
        let Some(mut list) = slot.lock_waitlist() else {
            return Err(ReplayError(format!("deal {} has no waitlist", hold.deal_id)));
        };
        match list.get(entry) {
            Some(e)
                if e.state == EntryState::Waiting
                    && e.qty == hold.qty
                    && e.user_id == hold.user_id => {}
            _ => return Err(ReplayError(format!("offer to entry {} that does not wait", entry.0))),
        }
        self.replay_reserve(hold, Some(entry))?;
        list.offer(entry, hold.seq);
        slot.set_waiting(list.waiting_count());
        Ok(())
    }

    /// Forgets resolved holds whose retention has passed (the reaper does this as part of
    /// `expire_due`; the log writer's shadow copy, which never decides expiries, calls this).
    pub fn forget_due(&self, now_ms: u64) {
        for index in 0..self.holds.shard_count() {
            self.holds.lock_index(index).forget_due(now_ms);
        }
        self.forget_due_entries(now_ms);
    }
}
