//! Waitlists in the concurrent allocator: joining, cancelling, and handing units that come back
//! to the waiting entries first (offers).
//!
//! Everything here runs under the deal's waitlist lock (lock order: after the admin lock,
//! before user and hold shards; docs/ARCHITECTURE.md). Every path that frees units of a deal
//! with a waitlist (a release, an expiry, the rest of a partial confirm, a cancelled offer,
//! stock added, a resume) ends in [`Allocator::offer_freed`] under that lock, and a reserve
//! joins the queue only under it after looking at the stock again. So an entry never waits
//! while units it fits are free: either its join saw them (and took them), or the free that
//! came after the join saw the entry.
//!
//! Freed units of a resolved hold are never made available before the waitlist has had them:
//! they stay counted in `held` (no hold owns them for that moment, which is why the audit runs
//! only on a quiescent allocator) until they become an offer's or, what no entry can use, are
//! put back. A reserve racing on the lock-free path therefore cannot take them first.
//!
//! Log order: the event that freed the units is appended before this runs (`Released`,
//! `Expired`, `Confirmed`, `StockAdjusted`, `DealResumed`, `WaitlistCancelled`), each offer's
//! `Offered` after it, so every prefix of the log stays a state that never oversold.

use livestock_core::command::{HoldView, Outcome, Reserve};
use livestock_core::error::{CommandError, HoldError, ReserveError, WaitlistError};
use livestock_core::event::{Event, EventSink};
use livestock_core::hold::{Hold, HoldState, Settlement};
use livestock_core::ids::{EntrySeq, HoldSeq};
use livestock_core::limits::DRAW_ENTRANTS_MAX;
use livestock_core::waitlist::{
    decide_cancel, first_fit, CancelDecision, EntryState, EntryView, WaitEntry,
};

use super::holds::{Entry, Resolved};
use super::waitlist::Waitlist;
use super::{users, Allocator, DealSlot};
use crate::sync::{Arc, Ordering};

/// A deal's draw, read (`Allocator::draw_view`).
#[derive(Clone, Debug)]
pub struct DrawView {
    pub spec: livestock_core::deal::DealSpec,
    pub options: livestock_core::waitlist::DealOptions,
    pub record: Option<super::waitlist::DrawRecord>,
    /// Entries in the draw while its window is open.
    pub entered: usize,
}

/// Units that an event already logged has freed, not yet anyone's.
#[derive(Clone, Copy, Debug)]
pub(super) enum Freed {
    /// A resolved hold's: `sold` go to `sold`, `returned` are still counted in `held`.
    Held { sold: u32, returned: u32 },
    /// Stock added: not counted anywhere yet.
    Added(u64),
    /// Already in `available` (a resume: reserves were shut out until now).
    Available,
}

impl Allocator {
    /// Gives a resolved hold's units back: through the waitlist first if its deal has one.
    pub(super) fn give_back(&self, resolved: &Resolved, now_ms: u64, sink: &mut dyn EventSink) {
        let deal = &resolved.deal;
        let Some(mut list) = deal.lock_waitlist() else {
            self.settle(resolved);
            return;
        };
        let retention_ms = self.config.resolved_hold_retention_ms;
        if resolved.origin.is_some() {
            let confirmed = resolved.state == HoldState::Confirmed;
            list.offer_resolved(resolved.seq, confirmed, resolved.at_ms, retention_ms);
        }
        self.return_user_units(deal, &resolved.user_id, resolved.settlement.returned);
        let settlement = resolved.settlement;
        let freed = Freed::Held { sold: settlement.sold, returned: settlement.returned };
        let open = Self::takes_offers(deal, now_ms);
        self.offer_freed(deal, &mut list, freed, open, now_ms, sink);
    }

    /// Whether a deal hands out offers now: open (not paused, not ended by an admin or its
    /// window). A paused deal's freed units wait in `available` (shut) for its resume.
    pub(super) fn takes_offers(deal: &DealSlot, now_ms: u64) -> bool {
        deal.spec.closed(deal.counters().shut(), || deal.lifecycle(), now_ms).is_none()
    }

    /// What leaves a user's count when units of a limited deal come back.
    pub(super) fn return_user_units(
        &self,
        deal: &DealSlot,
        user: &livestock_core::ids::UserId,
        returned: u32,
    ) {
        if deal.spec.per_user_limit.is_some() && returned > 0 {
            self.users.with(&deal.spec.id, user, |shard| {
                users::sub(shard, &deal.spec.id, user, returned)
            });
        }
    }

    /// Hands freed units to waiting entries, first fit in queue order (`livestock_core::
    /// waitlist::first_fit`), each served entry becoming an open hold with the deal's
    /// `offer_ttl_ms`; what no entry can use becomes available. `open` says whether the deal
    /// takes offers now (a resume passes `true` before it opens the deal to reserves).
    pub(super) fn offer_freed(
        &self,
        deal: &Arc<DealSlot>,
        list: &mut Waitlist,
        freed: Freed,
        open: bool,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) {
        let retention_ms = self.config.resolved_hold_retention_ms;
        let (mut pool, added) = match freed {
            Freed::Held { sold, returned } => {
                if sold > 0 {
                    deal.settle(Settlement { sold, returned: 0 });
                }
                (u64::from(returned), false)
            }
            Freed::Added(units) => (units, true),
            Freed::Available => (0, false),
        };
        loop {
            let free = pool + deal.counters().available();
            // A deal that takes no offers (paused, ended) serves nobody: the units go back. So
            // does a free smaller than every quantity waiting (no walk of the queue for it).
            let fits_someone =
                list.smallest_waiting_qty().is_some_and(|qty| u64::from(qty) <= free);
            let fit = if open && fits_someone { first_fit(list.waiting(), free) } else { None };
            let Some((seq, qty)) = fit else { break };
            let Some(user) = list.get(seq).map(|e| e.user_id.clone()) else {
                panic!("a queued entry vanished under its lock");
            };
            if !self.count_offer(deal, &user, qty) {
                list.lapse_waiting(seq, now_ms, retention_ms);
                let view = self.entry_view(list, seq, false);
                sink.append_consequence(
                    Event::WaitlistLapsed { entry: seq, at_ms: now_ms },
                    &Outcome::Entry(view),
                );
                continue;
            }
            // At most `qty`, so it fits a u32.
            let from_pool = u32::try_from(pool.min(u64::from(qty))).unwrap_or(qty);
            let from_available = qty - from_pool;
            let taken = if added {
                deal.add_stock_held(u64::from(from_pool), u64::from(qty)).is_some()
            } else {
                from_available == 0 || deal.force_take(from_available).is_ok()
            };
            if !taken {
                // A reserve on the lock-free path took what was available since we looked:
                // undo the count and look again with what is left.
                self.return_user_units(deal, &user, qty);
                continue;
            }
            pool -= u64::from(from_pool);
            let hold_seq = HoldSeq(self.next_hold_seq.fetch_add(1, Ordering::Relaxed));
            let hold = Hold {
                seq: hold_seq,
                deal_id: deal.spec.id.clone(),
                user_id: user,
                qty,
                created_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(deal.options.offer_ttl_ms),
                state: HoldState::Held,
                confirmed_qty: 0,
                resolved_at_ms: None,
            };
            let mut shard = self.holds.lock(hold_seq);
            list.offer(seq, hold_seq);
            let view = HoldView { origin: Some(seq), ..HoldView::at(hold.clone(), now_ms) };
            sink.append_consequence(
                Event::Offered { entry: seq, hold: hold.clone() },
                &Outcome::Hold(view),
            );
            shard.insert(Entry { hold, deal: deal.clone(), origin: Some(seq) }, 0);
        }
        if pool > 0 {
            if added {
                if deal.add_stock(pool).is_none() {
                    panic!("stock limit passed under the admin lock");
                }
            } else {
                deal.settle(Settlement {
                    sold: 0,
                    returned: u32::try_from(pool).unwrap_or(u32::MAX),
                });
            }
        }
        deal.set_waiting(list.waiting_count());
    }

    /// Counts an offer of `qty` against its user's limit; `false` if the limit is full.
    fn count_offer(&self, deal: &DealSlot, user: &livestock_core::ids::UserId, qty: u32) -> bool {
        if deal.spec.per_user_limit.is_none() {
            return true;
        }
        self.users.with(&deal.spec.id, user, |shard| {
            let taken = users::taken(shard, &deal.spec.id, user);
            let fits = deal.spec.check_user_limit(taken, qty).is_ok();
            if fits {
                users::add(shard, &deal.spec.id, user, qty);
            }
            fits
        })
    }

    fn entry_view(&self, list: &Waitlist, seq: EntrySeq, created: bool) -> EntryView {
        let Some(entry) = list.get(seq) else { panic!("entry {seq:?} vanished under its lock") };
        EntryView { entry: entry.clone(), position: list.position(seq), created }
    }

    /// A single reserve the deal refused for want of stock, with `waitlist: true`: under the
    /// waitlist lock, answer the user's active entry, or take units if some came back since,
    /// or join the queue. `refused` is the refusal it got on the lock-free path.
    pub(super) fn join_waitlist(
        &self,
        deal: &Arc<DealSlot>,
        request: &Reserve,
        refused: ReserveError,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, ReserveError> {
        let Some(mut list) = deal.lock_waitlist() else { return Err(refused) };
        // A request a served reserve would refuse as invalid is refused as such, not joined.
        deal.spec.hold_ttl(request.ttl_ms)?;
        if let Some(entry) = list.active_of(&request.user_id) {
            let seq = entry.seq;
            return Ok(Outcome::Entry(self.entry_view(&list, seq, false)));
        }
        // Units may have come back since the lock-free look; nobody waiting fits them (every
        // free hands them out under this lock first), so this request may take them.
        match self.reserve_now(request, false, now_ms, sink) {
            Err(ReserveError::SoldOut(_) | ReserveError::InsufficientStock { .. }) => {}
            other => return other,
        }
        let max = deal.options.waitlist_max;
        if list.waiting_count() >= max as usize {
            return Err(ReserveError::WaitlistFull { deal_id: deal.spec.id.clone(), max });
        }
        let entry = self.new_entry(deal, request, EntryState::Waiting, now_ms)?;
        let seq = entry.seq;
        list.push(entry.clone());
        deal.set_waiting(list.waiting_count());
        let view = self.entry_view(&list, seq, true);
        sink.append(Event::WaitlistJoined { entry }, &Outcome::Entry(view.clone()));
        Ok(Outcome::Entry(view))
    }

    /// A single reserve of a deal whose draw is not done (`ReserveError::DrawPending`): under
    /// the waitlist lock, enter the draw while its window is open (202 `entered`, or the user's
    /// entry again); once it closed, draw first (if the deal takes offers) and serve the
    /// reserve as any other after it.
    pub(super) fn draw_reserve(
        &self,
        deal: &Arc<DealSlot>,
        request: &Reserve,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, ReserveError> {
        let Some(mut list) = deal.lock_waitlist() else { panic!("a draw deal without a list") };
        let Some(closes_at_ms) = deal.options.draw_closes_at_ms(&deal.spec) else {
            panic!("a draw deal without a window");
        };
        if deal.draw_pending() && now_ms < closes_at_ms {
            return self.enter_draw(deal, &mut list, request, now_ms, sink);
        }
        if deal.draw_pending() {
            if !Self::takes_offers(deal, now_ms) {
                // Paused: no draw until the resume (reserves are refused meanwhile anyway).
                let closed = deal.spec.closed(deal.counters().shut(), || deal.lifecycle(), now_ms);
                return Err(match closed {
                    Some(closed) => closed.error(deal.spec.id.clone()),
                    None => ReserveError::DrawPending(deal.spec.id.clone()),
                });
            }
            self.draw_now(deal, &mut list, now_ms, sink);
        }
        drop(list);
        self.reserve(request, false, now_ms, sink)
    }

    fn enter_draw(
        &self,
        deal: &Arc<DealSlot>,
        list: &mut Waitlist,
        request: &Reserve,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, ReserveError> {
        deal.spec.hold_ttl(request.ttl_ms)?;
        if let Some(entry) = list.active_of(&request.user_id) {
            let seq = entry.seq;
            return Ok(Outcome::Entry(self.entry_view(list, seq, false)));
        }
        if list.entered_count() >= DRAW_ENTRANTS_MAX as usize {
            let deal_id = deal.spec.id.clone();
            return Err(ReserveError::DrawFull { deal_id, max: DRAW_ENTRANTS_MAX });
        }
        let entry = self.new_entry(deal, request, EntryState::Entered, now_ms)?;
        let seq = entry.seq;
        list.enter(entry.clone());
        let view = self.entry_view(list, seq, true);
        sink.append(Event::WaitlistJoined { entry }, &Outcome::Entry(view.clone()));
        Ok(Outcome::Entry(view))
    }

    /// Draws (the window has closed and the deal takes offers): the entries join the queue in
    /// the seed's order, the available units are offered to it (the winners), and the rest
    /// stay on the waitlist or are lost. Resumes a draw that a crash or a lost leadership left
    /// between its `Drawn` and its `DrawClosed`.
    pub(super) fn draw_now(
        &self,
        deal: &Arc<DealSlot>,
        list: &mut Waitlist,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) {
        let Some(seed) = deal.options.draw_seed else { panic!("a draw deal without a seed") };
        if list.draw().is_none() {
            list.start_draw(&seed, now_ms, deal.counters().available());
            let drawn = Event::Drawn { deal_id: deal.spec.id.clone(), seed, at_ms: now_ms };
            sink.append_consequence(drawn, &Outcome::Deal(deal.view(now_ms)));
        }
        self.offer_freed(deal, list, Freed::Available, true, now_ms, sink);
        let keep = deal.options.waitlist_max as usize;
        list.close_draw(now_ms, keep, self.config.resolved_hold_retention_ms);
        deal.set_waiting(list.waiting_count());
        deal.set_drawn();
        let closed = Event::DrawClosed { deal_id: deal.spec.id.clone(), at_ms: now_ms };
        sink.append_consequence(closed, &Outcome::Deal(deal.view(now_ms)));
    }

    /// The reaper's step for draws: every deal whose window has closed and that takes offers
    /// is drawn (or its interrupted draw finished).
    pub(super) fn run_due_draws(&self, now_ms: u64, sink: &mut dyn EventSink) {
        for deal in self.waitlist_deals() {
            if !deal.draw_pending() {
                continue;
            }
            let due = deal.options.draw_closes_at_ms(&deal.spec).is_some_and(|at| now_ms >= at);
            if !due || !Self::takes_offers(&deal, now_ms) {
                continue;
            }
            let Some(mut list) = deal.lock_waitlist() else { continue };
            if deal.draw_pending() {
                self.draw_now(&deal, &mut list, now_ms, sink);
            }
        }
    }

    /// A new entry for a single reserve's user and quantity, in `state` (waiting or entered),
    /// numbered from the hold sequence; refused if the user's held plus bought units and this
    /// quantity would pass the deal's per-user limit (checked now; again at offer time).
    fn new_entry(
        &self,
        deal: &DealSlot,
        request: &Reserve,
        state: EntryState,
        now_ms: u64,
    ) -> Result<WaitEntry, ReserveError> {
        let qty = request.lines[0].qty;
        if deal.spec.per_user_limit.is_some() {
            let taken = self.users.with(&deal.spec.id, &request.user_id, |shard| {
                users::taken(shard, &deal.spec.id, &request.user_id)
            });
            deal.spec.check_user_limit(taken, qty)?;
        }
        Ok(WaitEntry {
            seq: EntrySeq(self.next_hold_seq.fetch_add(1, Ordering::Relaxed)),
            deal_id: deal.spec.id.clone(),
            user_id: request.user_id.clone(),
            qty,
            created_at_ms: now_ms,
            state,
            hold: None,
            resolved_at_ms: None,
        })
    }

    /// The deal whose waitlist holds entry `seq`: a scan of the deals with a waitlist or a
    /// draw (few: they are drops), each under its own lock briefly.
    fn waitlist_deal_of(&self, seq: EntrySeq) -> Option<Arc<DealSlot>> {
        self.waitlist_deals()
            .into_iter()
            .find(|deal| deal.lock_waitlist().is_some_and(|list| list.get(seq).is_some()))
    }

    /// Deals that have a waitlist.
    pub(super) fn waitlist_deals(&self) -> Vec<Arc<DealSlot>> {
        self.deals.keeping_entries()
    }

    fn unknown_entry(&self, seq: EntrySeq) -> WaitlistError {
        WaitlistError::UnknownEntry(seq.to_id(self.config.hold_id_key))
    }

    /// A deal's draw as its callers see it: its options, the record once drawn, and how many
    /// entries it has while its window is open. `None` for an unknown deal.
    pub fn draw_view(&self, deal_id: &str) -> Option<DrawView> {
        let deal = self.deals.get(deal_id)?;
        let list = deal.lock_waitlist();
        let (record, entered) = match &list {
            Some(list) => (list.draw().cloned(), list.entered_count()),
            None => (None, 0),
        };
        Some(DrawView { spec: deal.spec.clone(), options: deal.options, record, entered })
    }

    /// A waitlist entry as its caller sees it.
    pub fn entry(&self, seq: EntrySeq) -> Option<EntryView> {
        let deal = self.waitlist_deal_of(seq)?;
        let list = deal.lock_waitlist()?;
        list.get(seq)?;
        Some(self.entry_view(&list, seq, false))
    }

    pub(super) fn cancel_entry(
        &self,
        seq: EntrySeq,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, CommandError> {
        let deal = self.waitlist_deal_of(seq).ok_or_else(|| self.unknown_entry(seq))?;
        let Some(mut list) = deal.lock_waitlist() else { panic!("a waitlist vanished") };
        let entry = list.get(seq).cloned().ok_or_else(|| self.unknown_entry(seq))?;
        let retention_ms = self.config.resolved_hold_retention_ms;
        let event = Event::WaitlistCancelled { entry: seq, at_ms: now_ms };
        match decide_cancel(entry.state)? {
            CancelDecision::AlreadyDone => Ok(Outcome::Entry(self.entry_view(&list, seq, false))),
            CancelDecision::Leave => {
                list.cancel(seq, now_ms, retention_ms);
                deal.set_waiting(list.waiting_count());
                let outcome = Outcome::Entry(self.entry_view(&list, seq, false));
                sink.append(event, &outcome);
                Ok(outcome)
            }
            CancelDecision::GiveUpOffer => {
                let Some(hold_seq) = entry.hold else { panic!("offered entry without a hold") };
                let resolved = {
                    let mut shard = self.holds.lock(hold_seq);
                    let state = shard.get(hold_seq).map(|e| e.hold.state_at(now_ms));
                    match state {
                        Some(HoldState::Held) => {}
                        Some(HoldState::Confirmed) => return Err(HoldError::Confirmed.into()),
                        // Released or expired and not yet handed on, or forgotten: it lapsed
                        // (or is about to, once its expiry is reaped).
                        _ => return Err(WaitlistError::Lapsed.into()),
                    }
                    let Some(settlement) = shard.get(hold_seq).map(|e| e.hold.full_return()) else {
                        panic!("hold vanished under its lock");
                    };
                    let Some(resolved) = shard.resolve(
                        hold_seq,
                        HoldState::Released,
                        settlement,
                        now_ms,
                        retention_ms,
                    ) else {
                        panic!("hold vanished under its lock");
                    };
                    list.cancel(seq, now_ms, retention_ms);
                    let outcome = Outcome::Entry(self.entry_view(&list, seq, false));
                    // Under the hold's shard lock: ordered with every other event of the hold.
                    sink.append(event, &outcome);
                    resolved
                };
                self.return_user_units(&deal, &resolved.user_id, resolved.settlement.returned);
                let freed = Freed::Held { sold: 0, returned: resolved.settlement.returned };
                let open = Self::takes_offers(&deal, now_ms);
                self.offer_freed(&deal, &mut list, freed, open, now_ms, sink);
                Ok(Outcome::Entry(self.entry_view(&list, seq, false)))
            }
        }
    }

    /// Lapses the waiting entries of deals whose window has closed by the clock (an admin end
    /// lapses them in its own event), and the entries of a draw that never happened (paused
    /// until its deal's end): the reaper's step, for deals with a waitlist or a draw.
    pub(super) fn lapse_closed_waitlists(&self, now_ms: u64, sink: &mut dyn EventSink) {
        let retention_ms = self.config.resolved_hold_retention_ms;
        for deal in self.waitlist_deals() {
            let nothing = deal.waiting() == 0 && !deal.draw_pending();
            if nothing || deal.spec.ends_at_ms.is_none_or(|end| now_ms < end) {
                continue;
            }
            let Some(mut list) = deal.lock_waitlist() else { continue };
            if deal.draw_pending() {
                for seq in list.entered_order() {
                    list.lapse_entered(seq, now_ms, retention_ms);
                    let view = self.entry_view(&list, seq, false);
                    sink.append_consequence(
                        Event::WaitlistLapsed { entry: seq, at_ms: now_ms },
                        &Outcome::Entry(view),
                    );
                }
                // The window is over and so is the deal: no draw will happen.
                deal.set_drawn();
            }
            let waiting: Vec<EntrySeq> = list.waiting().map(|(seq, _)| seq).collect();
            for seq in waiting {
                list.lapse_waiting(seq, now_ms, retention_ms);
                let view = self.entry_view(&list, seq, false);
                sink.append_consequence(
                    Event::WaitlistLapsed { entry: seq, at_ms: now_ms },
                    &Outcome::Entry(view),
                );
            }
            deal.set_waiting(list.waiting_count());
        }
    }

    /// Hands available units to waiting entries they fit: the reaper's step. Every free hands
    /// its units on as it happens, so this finds work only where a free's record reached the
    /// log and its offers did not (a crash between the two records, a leader lost between
    /// them): recovery and a new leader leave such units available, and this hands them on
    /// within one tick. Cheap when there is nothing to do: two loads per deal with a waitlist.
    pub(super) fn hand_on_available(&self, now_ms: u64, sink: &mut dyn EventSink) {
        for deal in self.waitlist_deals() {
            if deal.waiting() == 0 || deal.counters().available() == 0 {
                continue;
            }
            let Some(mut list) = deal.lock_waitlist() else { continue };
            let open = Self::takes_offers(&deal, now_ms);
            self.offer_freed(&deal, &mut list, Freed::Available, open, now_ms, sink);
        }
    }

    /// Drops terminal waitlist entries whose retention has passed.
    pub(super) fn forget_due_entries(&self, now_ms: u64) {
        for deal in self.waitlist_deals() {
            if let Some(mut list) = deal.lock_waitlist() {
                list.forget_due(now_ms);
            }
        }
    }
}
