//! Reserve and cart: the hot path. Find the deals, run the rules on one load of each (the
//! sold-out path ends there having written nothing), take the units by compare-and-swap with
//! the per-user limits held, number the holds, log, and insert them.

use std::borrow::Cow;
use std::collections::BTreeSet;

use smallvec::SmallVec;

use livestock_core::command::{HoldView, Line, Outcome, Reserve};
use livestock_core::counters::Shortage;
use livestock_core::deal::{Closed, Lifecycle};
use livestock_core::error::{ErrorCode, Invalid, ReserveError};
use livestock_core::event::{Event, EventSink};
use livestock_core::hold::{Hold, HoldState, Settlement};
use livestock_core::ids::{DealId, HoldSeq, UserId};
use livestock_core::limits::{CART_LINES_MAX, HOLD_QTY_MAX};

use super::holds::{Entry, HoldTable};
use super::{users, Allocator, DealSlot};
use crate::sync::{Arc, Ordering};

/// A single reserve's refusal that depends on the deal alone (its window, its admin state,
/// its stock) and on nothing the request says beyond the quantity: the same answer for every
/// caller, which the HTTP layer keeps preformatted (`http/refusal_body.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Closed(Closed),
    SoldOut,
}

impl Refusal {
    pub fn error(self, deal_id: DealId) -> ReserveError {
        match self {
            Refusal::Closed(closed) => closed.error(deal_id),
            Refusal::SoldOut => ReserveError::SoldOut(deal_id),
        }
    }

    /// The refusal an error is, and its deal, if it is one of these.
    pub fn of(error: &ReserveError) -> Option<(Refusal, &DealId)> {
        match error {
            ReserveError::SoldOut(id) => Some((Refusal::SoldOut, id)),
            ReserveError::Ended(id) => Some((Refusal::Closed(Closed::Ended), id)),
            ReserveError::Paused(id) => Some((Refusal::Closed(Closed::Paused), id)),
            ReserveError::NotStarted { deal_id, starts_at_ms } => {
                Some((Refusal::Closed(Closed::NotStarted { starts_at_ms: *starts_at_ms }), deal_id))
            }
            _ => None,
        }
    }

    /// The error code of `error`, without making the error.
    pub fn code(self) -> ErrorCode {
        match self {
            Refusal::Closed(Closed::Ended) => ErrorCode::DealEnded,
            Refusal::Closed(Closed::Paused) => ErrorCode::DealPaused,
            Refusal::Closed(Closed::NotStarted { .. }) => ErrorCode::DealNotStarted,
            Refusal::SoldOut => ErrorCode::SoldOut,
        }
    }
}

/// A line of a reserve after lines for one deal were summed and the deal was found.
struct Take {
    deal: Arc<DealSlot>,
    qty: u32,
    ttl_ms: u64,
}

impl Allocator {
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

    /// A single reserve's refusal for want of stock (`sold_out`, `insufficient_stock`), read
    /// without changing anything; `None` if it might succeed or be refused for another reason.
    /// A follower answers these from its own state while it is fresh (docs/replication.md): a
    /// refusal changes nothing, and it is what most of a burst gets.
    pub fn stock_refusal(&self, request: &Reserve, now_ms: u64) -> Option<ReserveError> {
        let [line] = request.lines.as_slice() else { return None };
        let slot = self.deals.get(line.deal_id.as_str())?;
        if (request.waitlist && slot.options.has_waitlist()) || slot.draw_pending() {
            return None; // it would join the waitlist or enter the draw: the leader decides
        }
        let counters = slot.counters();
        slot.spec.check_open(counters.shut(), || slot.lifecycle(), now_ms).ok()?;
        match slot.spec.take(counters, line.qty) {
            Err(e @ (ReserveError::SoldOut(_) | ReserveError::InsufficientStock { .. })) => Some(e),
            _ => None,
        }
    }

    /// The refusal a single reserve of `qty` units of `deal_id` gets from the deal alone, read
    /// with one load and without writing anything (not even a reference count); `None` if it
    /// might succeed or be refused for another reason (an invalid quantity, an unknown deal,
    /// fewer units left than asked: those take the full path). The rules run in the order
    /// `reserve` runs them, so the answer is the one `reserve` would give at that load.
    pub fn refusal(&self, deal_id: &str, qty: u32, now_ms: u64) -> Option<Refusal> {
        if qty == 0 || qty > HOLD_QTY_MAX {
            return None;
        }
        self.deals.with(deal_id, |slot| {
            let counters = slot.counters();
            if let Some(closed) = slot.spec.closed(counters.shut(), || slot.lifecycle(), now_ms) {
                return Some(Refusal::Closed(closed));
            }
            match counters.take(u64::from(qty)) {
                Err(Shortage::SoldOut) => Some(Refusal::SoldOut),
                Err(Shortage::Insufficient { .. }) | Ok(_) => None,
            }
        })?
    }

    /// A reserve or cart; a single reserve the deal cannot serve for want of stock joins the
    /// deal's waitlist instead if it asked to and the deal has one (`offers.rs`).
    pub(super) fn reserve(
        &self,
        request: &Reserve,
        cart: bool,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, ReserveError> {
        match self.reserve_now(request, cart, now_ms, sink) {
            Err(ReserveError::DrawPending(deal_id)) if !cart => {
                match self.deals.get(deal_id.as_str()) {
                    Some(deal) => self.draw_reserve(&deal, request, now_ms, sink),
                    None => Err(ReserveError::UnknownDeal(deal_id)),
                }
            }
            Err(refused @ (ReserveError::SoldOut(_) | ReserveError::InsufficientStock { .. }))
                if request.waitlist && !cart =>
            {
                match self.deals.get(request.lines[0].deal_id.as_str()) {
                    Some(deal) if deal.options.has_waitlist() => {
                        self.join_waitlist(&deal, request, refused, now_ms, sink)
                    }
                    _ => Err(refused),
                }
            }
            other => other,
        }
    }

    /// A reserve or cart served from what is available now, or refused.
    pub(super) fn reserve_now(
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
                if slot.draw_pending() {
                    return Err(ReserveError::DrawPending(slot.spec.id.clone()));
                }
                slot.spec.take(counters, line.qty)?;
                let ttl_ms = slot.spec.hold_ttl(request.ttl_ms)?;
                Ok::<_, ReserveError>(Take { deal: slot.clone(), qty: line.qty, ttl_ms })
            });
            match taken {
                None => return Err(ReserveError::UnknownDeal(line.deal_id.clone())),
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
            let deal_id = ended.deal.spec.id.clone();
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
            shard.insert(Entry { hold, deal: take.deal.clone(), origin: None }, 0);
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
}
