//! The checks after each recovery (and the cheap ones after every step).
//!
//! - **No oversell**: the allocator's own audit, and per deal `held + sold <= stock`.
//! - **Nothing acknowledged lost**: every acknowledged deal exists (ended if an end was
//!   acknowledged, with no open hold left); every acknowledged hold is there in a state its
//!   answers allow (a confirm acknowledged: confirmed with that quantity; a release: released;
//!   a reserve or an extend: any state, but never an expiry earlier than promised) unless it
//!   was resolved long enough ago to be forgotten; `sold` covers every acknowledged confirm.
//! - **Holds resolve once**: every resolution seen durably reads the same forever after.
//! - **Waitlists**: every acknowledged join's entry is there (same deal, user, quantity) unless
//!   it could have ended and been forgotten; an acknowledged cancel reads cancelled at its
//!   instant; an entry seen ended (cancelled, lapsed) durably reads the same after; no entry of
//!   a deal whose end was acknowledged still waits. Offers are holds: the hold checks cover
//!   them, and the audit checks that each names its entry.
//! - **Draws**: an acknowledged draw entry is there like a join (and never still `entered`
//!   after its deal's end was acknowledged); once its deal drew, it is one of the draw's
//!   entrants unless it was cancelled before the draw; a draw seen in a recovered state reads
//!   the same in every later one (the instant, the units, the entrants in log order, the order;
//!   the winners once closed, and before that only more of them: a crash mid-draw is finished
//!   with the same winners).
//! - **Exactly the logged prefix**: the recovered state equals the live node's state right
//!   after the last recovered record (modulo resolved holds past their retention, which either
//!   side may have forgotten).
//!
//! Idempotent replies are checked by re-sending requests (see `history.rs`).

use livestock::alloc::Snapshot;
use livestock_core::deal::Lifecycle;
use livestock_core::hold::HoldState;
use livestock_core::ids::{EntrySeq, HoldSeq};
use livestock_core::waitlist::EntryState;

use super::ledger::{Fate, Ledger};

/// No oversell, per deal, on a snapshot.
pub fn no_oversell(snapshot: &Snapshot) -> Result<(), String> {
    for deal in &snapshot.deals {
        let c = deal.counters;
        if c.held() + c.sold() > c.stock() {
            return Err(format!(
                "deal {} oversold: held {} + sold {} > stock {}",
                deal.spec.id,
                c.held(),
                c.sold(),
                c.stock()
            ));
        }
    }
    Ok(())
}

/// Drops resolved holds past their retention at `now_ms`: the live node and a recovered one
/// forget them at different moments.
pub fn normalized(snapshot: &Snapshot, now_ms: u64, retention_ms: u64) -> Snapshot {
    let mut s = snapshot.clone();
    let kept = |at: Option<u64>| at.is_none_or(|at| at.saturating_add(retention_ms) > now_ms);
    s.holds.retain(|h| kept(h.resolved_at_ms));
    // Entries are forgotten with their end (or their confirmed offer) past the retention.
    let holds = s.holds.clone();
    for list in &mut s.waitlists {
        list.entries.retain(|e| match e.state {
            EntryState::Waiting | EntryState::Entered => true,
            EntryState::Cancelled | EntryState::Lapsed | EntryState::Lost => kept(e.resolved_at_ms),
            EntryState::Offered => {
                holds.iter().any(|h| Some(h.seq) == e.hold && kept(h.resolved_at_ms))
            }
        });
    }
    s
}

/// The first difference between two snapshots, described.
pub fn diff(recovered: &Snapshot, expected: &Snapshot) -> Option<String> {
    if recovered == expected {
        return None;
    }
    if recovered.next_hold_seq != expected.next_hold_seq {
        return Some(format!(
            "next hold number {} recovered, {} expected",
            recovered.next_hold_seq, expected.next_hold_seq
        ));
    }
    if recovered.deals != expected.deals {
        for (r, e) in recovered.deals.iter().zip(&expected.deals) {
            if r != e {
                return Some(format!("deal recovered as {r:?}, expected {e:?}"));
            }
        }
        return Some(format!(
            "{} deals recovered, {} expected",
            recovered.deals.len(),
            expected.deals.len()
        ));
    }
    if recovered.holds != expected.holds {
        for hold in &recovered.holds {
            match expected.holds.iter().find(|h| h.seq == hold.seq) {
                None => return Some(format!("hold recovered that should not be: {hold:?}")),
                Some(e) if e != hold => {
                    return Some(format!("hold recovered as {hold:?}, expected {e:?}"))
                }
                Some(_) => {}
            }
        }
        for hold in &expected.holds {
            if !recovered.holds.iter().any(|h| h.seq == hold.seq) {
                return Some(format!("hold missing after recovery: {hold:?}"));
            }
        }
    }
    if recovered.user_counts != expected.user_counts {
        return Some(format!(
            "user counts recovered as {:?}, expected {:?}",
            recovered.user_counts, expected.user_counts
        ));
    }
    Some("snapshots differ".into())
}

/// Checks a state against the ledger. `durable`: the state as recovered from the disk (its
/// resolutions are recorded as seen for good); otherwise the node's state after start-up,
/// whose start-up expiries are not durable yet (checked against what is known, not recorded),
/// and in which no hold may be overdue.
pub fn against_ledger(
    ledger: &mut Ledger,
    snapshot: &Snapshot,
    now_ms: u64,
    retention_ms: u64,
    seen: &str,
    durable: bool,
) -> Result<(), String> {
    no_oversell(snapshot)?;
    let forgettable = |at: u64| at.saturating_add(retention_ms) <= now_ms;
    for (id, fact) in &ledger.deals {
        let Some(deal) = snapshot.deals.iter().find(|d| d.spec.id.as_str() == id) else {
            return Err(format!("acknowledged deal {id} is gone"));
        };
        if fact.ended && deal.lifecycle != Lifecycle::Ended {
            return Err(format!("deal {id} acknowledged ended reads {:?}", deal.lifecycle));
        }
        let confirmed: u64 = ledger
            .holds
            .values()
            .filter(|h| h.deal == *id)
            .map(|h| match h.fate {
                Fate::Confirmed(q) => u64::from(q),
                _ => 0,
            })
            .sum();
        if deal.counters.sold() < confirmed {
            return Err(format!(
                "deal {id} sold {} < {confirmed} acknowledged confirmed",
                deal.counters.sold()
            ));
        }
    }
    for (seq, fact) in &ledger.holds {
        let ended = ledger.deals.get(&fact.deal).is_some_and(|d| d.ended);
        let Some(hold) = snapshot.holds.iter().find(|h| h.seq.0 == *seq) else {
            let gone_ok = match ledger.resolved.get(seq) {
                Some(r) => forgettable(r.resolved_at_ms),
                // Resolved without an acknowledgement (expired, released by a deal's end, or
                // by a request whose answer was lost): at the earliest when it was created.
                None => fact.fate == Fate::Held && forgettable(fact.created_at_ms),
            };
            if gone_ok {
                continue;
            }
            return Err(format!("acknowledged hold {seq} ({fact:?}) is gone"));
        };
        let what = format!("acknowledged hold {seq} ({fact:?}) reads {hold:?}");
        if (hold.deal_id.as_str(), hold.user_id.as_str(), hold.qty)
            != (fact.deal.as_str(), fact.user.as_str(), fact.qty)
        {
            return Err(format!("{what}: not the hold that was reserved"));
        }
        if hold.expires_at_ms < fact.expires_at_ms {
            return Err(format!("{what}: expires earlier than an answer promised"));
        }
        match (fact.fate, hold.state) {
            (Fate::Confirmed(q), HoldState::Confirmed) if hold.confirmed_qty == q => {}
            (Fate::Released, HoldState::Released) => {}
            (Fate::Held, HoldState::Held) => {
                if ended && hold.expires_at_ms > now_ms {
                    return Err(format!("{what}: open after its deal's end was acknowledged"));
                }
                if !durable && hold.expires_at_ms <= now_ms {
                    return Err(format!("{what}: overdue but not expired after start-up"));
                }
            }
            (Fate::Held, HoldState::Expired) => {
                if hold.resolved_at_ms.is_none_or(|at| at < hold.expires_at_ms) {
                    return Err(format!("{what}: expired before its expiry"));
                }
            }
            (Fate::Held, HoldState::Confirmed | HoldState::Released) => {}
            _ => return Err(format!("{what}: not what was acknowledged")),
        }
    }
    for hold in &snapshot.holds {
        if hold.state == HoldState::Held {
            continue;
        }
        let Some(at) = hold.resolved_at_ms else {
            return Err(format!("resolved hold without resolved_at: {hold:?}"));
        };
        if durable {
            ledger.observe(hold.seq, hold.state, hold.confirmed_qty, at, seen)?;
        } else if let Some(r) = ledger.resolved.get(&hold.seq.0) {
            if (r.state, r.confirmed_qty, r.resolved_at_ms) != (hold.state, hold.confirmed_qty, at)
            {
                return Err(format!("hold resolved {:?} per {} reads {hold:?}", r.state, r.seen));
            }
        }
    }
    for (seq, r) in &ledger.resolved {
        let present = snapshot.holds.iter().any(|h| h.seq == HoldSeq(*seq));
        if !present && !forgettable(r.resolved_at_ms) {
            return Err(format!("hold {seq} resolved {:?} per {} is gone", r.state, r.seen));
        }
    }
    let entries: Vec<_> = snapshot.waitlists.iter().flat_map(|list| &list.entries).collect();
    for (seq, fact) in &ledger.entries {
        let Some(entry) = entries.iter().find(|e| e.seq == EntrySeq(*seq)) else {
            // Any entry may end (lapse, a cancel whose answer was lost, a confirmed offer) and
            // be forgotten after the retention: at the earliest from its creation.
            if forgettable(fact.cancelled_at_ms.unwrap_or(fact.created_at_ms)) {
                continue;
            }
            return Err(format!("acknowledged entry {seq} ({fact:?}) is gone"));
        };
        let what = format!("acknowledged entry {seq} ({fact:?}) reads {entry:?}");
        if (entry.deal_id.as_str(), entry.user_id.as_str(), entry.qty)
            != (fact.deal.as_str(), fact.user.as_str(), fact.qty)
        {
            return Err(format!("{what}: not the entry that joined"));
        }
        if let Some(at) = fact.cancelled_at_ms {
            if (entry.state, entry.resolved_at_ms) != (EntryState::Cancelled, Some(at)) {
                return Err(format!("{what}: its cancel was acknowledged"));
            }
        }
        if matches!(entry.state, EntryState::Waiting | EntryState::Entered)
            && ledger.deals.get(&fact.deal).is_some_and(|d| d.ended)
        {
            return Err(format!("{what}: waits after its deal's end was acknowledged"));
        }
        let draw = snapshot.waitlists.iter().find(|l| l.deal_id.as_str() == fact.deal);
        if let Some(draw) = draw.and_then(|l| l.draw.as_ref()).filter(|_| fact.entered) {
            let drawn = draw.entrants.iter().any(|(s, _, _)| *s == entry.seq);
            let cancelled_before = entry.state == EntryState::Cancelled
                && entry.resolved_at_ms.is_some_and(|at| at <= draw.at_ms);
            if !drawn && !cancelled_before {
                return Err(format!("{what}: not among the entrants of its deal's draw"));
            }
        }
    }
    for list in &snapshot.waitlists {
        if let Some(draw) = &list.draw {
            ledger.observe_draw(list.deal_id.as_str(), draw, seen, durable)?;
        }
    }
    for entry in &entries {
        let (EntryState::Cancelled | EntryState::Lapsed | EntryState::Lost) = entry.state else {
            continue;
        };
        let Some(at) = entry.resolved_at_ms else {
            return Err(format!("ended entry without resolved_at: {entry:?}"));
        };
        if durable {
            ledger.observe_entry(entry.seq, entry.state, at, seen)?;
        } else if let Some((state, ended_at, before)) = ledger.entries_ended.get(&entry.seq.0) {
            if (*state, *ended_at) != (entry.state, at) {
                return Err(format!("entry ended {state:?} per {before} reads {entry:?}"));
            }
        }
    }
    for (seq, (state, at, before)) in &ledger.entries_ended {
        let present = entries.iter().any(|e| e.seq == EntrySeq(*seq));
        if !present && !forgettable(*at) {
            return Err(format!("entry {seq} ended {state:?} per {before} is gone"));
        }
    }
    Ok(())
}
