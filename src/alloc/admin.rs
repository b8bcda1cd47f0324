//! The admin commands: create a deal, pause, resume, change its stock, end it or a whole
//! stream. Each takes the deal's admin lock, so its event is ordered with the change it
//! describes; none is on the reserve path.

use std::collections::BTreeSet;

use livestock_core::command::Outcome;
use livestock_core::counters::{Counters, Shortage};
use livestock_core::deal::{DealSpec, DealView, Lifecycle, NewDeal};
use livestock_core::error::{CreateDealError, DealAdminError, Invalid};
use livestock_core::event::{Event, EventSink};
use livestock_core::hold::HoldState;
use livestock_core::ids::{DealId, HoldSeq, StreamId};
use livestock_core::limits::{DEALS_MAX, DEAL_STOCK_UNITS_MAX, END_HOLDS_MAX};
use livestock_core::waitlist::DealOptions;

use super::holds::Resolved;
use super::offers::Freed;
use super::{Allocator, DealSlot};
use crate::sync::Arc;

impl Allocator {
    pub(super) fn create_deal(
        &self,
        new: &NewDeal,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, CreateDealError> {
        let spec = DealSpec::new(new, now_ms)?;
        let options = DealOptions::new(new, &spec)?;
        let stock = new.stock;
        let mut outcome = None;
        self.deals.insert(
            &spec.id,
            DEALS_MAX,
            || CreateDealError::Exists(new.id.to_string()),
            || CreateDealError::TooMany(DEALS_MAX),
            || {
                let slot = Arc::new(DealSlot::new(
                    spec.clone(),
                    options,
                    Counters::new(stock),
                    Lifecycle::Open,
                ));
                // Logged before the deal is visible (this runs under the registry's write lock,
                // before the insert is published): a reserve of it is always logged after it.
                let view = Outcome::Deal(slot.view(now_ms));
                // A deal without options is logged as before options existed, so a log of
                // such deals stays readable by an older build (a rollback).
                let event = if options == DealOptions::none(&spec) {
                    Event::DealCreated { spec: spec.clone(), stock }
                } else {
                    Event::DealOpened { spec: spec.clone(), options, stock }
                };
                sink.append(event, &view);
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

    pub(super) fn pause(
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

    pub(super) fn resume(
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
        // Reopening frees the stock to reserves: log first, then open. With a waitlist, the
        // waiting entries are offered what is available before reserves may see it.
        let mut list = slot.lock_waitlist();
        let mut view = slot.view(now_ms);
        view.state = view.spec.state(Lifecycle::Open, now_ms);
        view.counters = view.counters.with_shut(false);
        sink.append(
            Event::DealResumed { deal_id: id.clone(), at_ms: now_ms },
            &Outcome::Deal(view),
        );
        if let Some(list) = list.as_mut() {
            let open = slot.spec.closed(false, || Lifecycle::Open, now_ms).is_none();
            let draw_due = slot.draw_pending()
                && slot.options.draw_closes_at_ms(&slot.spec).is_some_and(|at| now_ms >= at);
            if draw_due && open {
                self.draw_now(&slot, list, now_ms, sink);
            } else if !slot.draw_pending() {
                self.offer_freed(&slot, list, Freed::Available, open, now_ms, sink);
            }
        }
        slot.set_lifecycle(Lifecycle::Open);
        drop(list);
        Ok(Outcome::Deal(slot.view(now_ms)))
    }

    pub(super) fn adjust_stock(
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
            let mut list = slot.lock_waitlist();
            sink.append(event, &Outcome::Deal(view));
            // Only admin changes add stock, and we hold the admin lock: the check above holds.
            match list.as_mut() {
                Some(list) => {
                    let open = Self::takes_offers(&slot, now_ms);
                    self.offer_freed(&slot, list, Freed::Added(units), open, now_ms, sink);
                }
                None => {
                    if slot.add_stock(units).is_none() {
                        panic!("stock limit passed under the admin lock");
                    }
                }
            }
        } else {
            slot.remove_stock(units).map_err(|shortage| match shortage {
                Shortage::SoldOut => DealAdminError::InsufficientStock { available: 0 },
                Shortage::Insufficient { available } => {
                    DealAdminError::InsufficientStock { available }
                }
            })?;
            sink.append(event, &Outcome::Deal(slot.view(now_ms)));
        }
        Ok(Outcome::Deal(slot.view(now_ms)))
    }

    pub(super) fn end_deal(
        &self,
        id: &DealId,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, DealAdminError> {
        let slot = self.slot(id)?;
        let (mut views, _released) = self.end_deals(
            vec![slot],
            now_ms,
            sink,
            |views, _| Outcome::Deal(views[0].clone()),
            END_HOLDS_MAX,
        )?;
        Ok(Outcome::Deal(views.remove(0)))
    }

    pub(super) fn end_stream(
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
        let (views, released) = self.end_deals(slots, now_ms, sink, outcome, END_HOLDS_MAX)?;
        Ok(outcome(&views, released))
    }

    /// Open holds of the deals in `ids` at `now_ms`: a scan of every shard.
    fn open_holds_of(&self, ids: &BTreeSet<&str>, now_ms: u64) -> usize {
        (0..self.holds.shard_count())
            .map(|index| {
                let shard = self.holds.lock_index(index);
                shard
                    .entries()
                    .filter(|e| ids.contains(e.hold.deal_id.as_str()))
                    .filter(|e| e.hold.state_at(now_ms) == HoldState::Held)
                    .count()
            })
            .sum()
    }

    /// Ends deals (sorted by id, so two concurrent stream ends lock in one order) and releases
    /// their open holds. Deals already ended are left as they are. Refused, with nothing
    /// changed, if they have more than `holds_max` open holds (`END_HOLDS_MAX`: what one record
    /// can list; a parameter so a test can reach it).
    pub(super) fn end_deals(
        &self,
        slots: Vec<Arc<DealSlot>>,
        now_ms: u64,
        sink: &mut dyn EventSink,
        outcome: impl Fn(&[DealView], usize) -> Outcome,
        holds_max: usize,
    ) -> Result<(Vec<DealView>, usize), DealAdminError> {
        let guards: Vec<_> = slots.iter().map(|slot| slot.lock_admin()).collect();
        let ending: Vec<&Arc<DealSlot>> =
            slots.iter().filter(|slot| slot.lifecycle() != Lifecycle::Ended).collect();
        if ending.is_empty() {
            drop(guards);
            return Ok((slots.iter().map(|s| s.view(now_ms)).collect(), 0));
        }
        // Counted before anything changes: the end's record lists every hold it releases, and
        // one past the log's record bound could not be written (the process would stop at
        // every attempt). Reserves still in flight may add a few before the shut below; the
        // bound leaves room for them.
        let ids: BTreeSet<&str> = ending.iter().map(|slot| slot.spec.id.as_str()).collect();
        let open = self.open_holds_of(&ids, now_ms);
        if open > holds_max {
            drop(guards);
            return Err(DealAdminError::Invalid(Invalid(format!(
                "{open} holds are open: one end releases at most {holds_max}; pause the deal \
                 and end it once enough holds were confirmed, released or expired"
            ))));
        }
        // The waitlists next (lock order: after the admin locks): no offer is handed out while
        // the deals end, and their waiting entries lapse with the end (its event says so).
        let mut lists: Vec<_> = ending.iter().map(|slot| (*slot, slot.lock_waitlist())).collect();
        // Shut first: from here no reserve passes, and a reserve that took units before this
        // point re-checks the lifecycle under its hold shard lock (see `reserve`), so the scan
        // below sees every hold of these deals.
        for slot in &ending {
            slot.set_lifecycle(Lifecycle::Ended);
        }
        let retention_ms = self.config.resolved_hold_retention_ms;
        for (slot, list) in lists.iter_mut() {
            if let Some(list) = list.as_mut() {
                list.lapse_all_waiting(now_ms, retention_ms);
                slot.set_waiting(0);
                // A draw that never happened never will.
                slot.set_drawn();
            }
        }
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
            if resolved.origin.is_some() {
                let list = lists.iter_mut().find(|(slot, _)| Arc::ptr_eq(slot, &resolved.deal));
                if let Some((_, Some(list))) = list {
                    list.offer_resolved(resolved.seq, false, now_ms, retention_ms);
                }
            }
            self.settle(&resolved);
        }
        drop(lists);
        drop(guards);
        Ok((views, count))
    }
}

#[cfg(test)]
mod end_bound_tests {
    use super::*;
    use crate::alloc::test_support::{allocator_with_holds, Events};

    /// An end with more open holds than its record may list changes nothing; within the
    /// bound it ends the deal and releases them all.
    #[test]
    fn an_end_past_the_bound_is_refused_and_changes_nothing() {
        let mut events = Events(Vec::new());
        let (allocator, id) = allocator_with_holds(None, &["a", "b", "c"], &mut events);
        let logged = events.0.len();
        let slot = allocator.slot(&id).expect("the deal");
        let one = |_: &[DealView], _: usize| Outcome::Deal(slot.view(0));
        let refused = allocator.end_deals(vec![slot.clone()], 0, &mut events, one, 2);
        assert!(matches!(refused, Err(DealAdminError::Invalid(_))), "{refused:?}");
        assert_eq!(events.0.len(), logged, "nothing logged");
        assert_eq!(slot.lifecycle(), Lifecycle::Open, "not ended");
        assert_eq!(slot.counters().held(), 3, "the holds stand");
        let (_, released) =
            allocator.end_deals(vec![slot.clone()], 0, &mut events, one, 3).expect("ends");
        assert_eq!(released, 3);
        assert_eq!(slot.lifecycle(), Lifecycle::Ended);
        assert_eq!(slot.counters().held(), 0);
    }
}
