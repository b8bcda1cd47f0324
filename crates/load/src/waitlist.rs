//! `--waitlist`: the viewers turned away join the deal's waitlist, learn of offers by reading
//! their entry, and pay for them as a winner of a reserve does. Pure: what the tool knows of
//! each entry, how often an entry is read and within which budget, which units came back and
//! how many the waitlist resold, and the end-of-run check of every entry and offer. Times are
//! µs since the run's start (the client's) or ms since the epoch (the server's timestamps, read
//! back at the end; client and server share this machine's clock).
//!
//! **Why polling.** An app learns of an offer by reading `GET /v1/waitlist/{entry_id}`: that is
//! the API there is. A production backend would instead follow the server's event stream
//! (`/v1/events`, being built) and push the offer to the viewer's phone; polling is what is
//! left to a client without it, and the tool bounds it (`--entry-poll-rate`), reading the
//! entries near the head of the queue often and those far back rarely, as the entry's
//! `position` invites.

use std::collections::HashMap;

use serde::Serialize;

pub use livestock_core::waitlist::EntryState;

use crate::ledger::{Fate, HoldRead, HoldRecord, HoldState, Ledger, ServerHold};
use crate::limits::{exact_f64, ENTRY_POLL_MS_MAX, ENTRY_POLL_MS_MIN};
use crate::schedule::After;

/// A waitlist entry as the server answered it (a reserve's 200 or 202, a read, a cancel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySeen {
    pub entry_id: String,
    pub deal_id: String,
    pub user_id: String,
    pub qty: u32,
    pub state: EntryState,
    /// 1 at the head of the queue; only while waiting.
    pub position: Option<u64>,
    /// The offered hold, once offered.
    pub hold_id: Option<String>,
}

/// What the tool knows of one of its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryFate {
    /// Waiting at the last answer: read again later.
    Waiting,
    /// Offered, and the tool knows the hold (`EntryRecord::hold`): it follows it up.
    Offered,
    /// Read as lapsed: its offer expired before a read saw it (the entry names it), or the
    /// user's limit was full when its turn came.
    Lapsed,
    /// Read as cancelled, though the tool had not cancelled it.
    CancelledUnasked,
    /// Still waiting when the entries stopped being followed; cancelled by the tool (the
    /// viewer gives up). `offer_given_up`: the cancel's answer named an offer no read had seen.
    Cancelled { offer_given_up: bool },
    /// The cancel was refused (409): `entry_lapsed` (an offer expired since the last read) or
    /// `hold_confirmed`.
    CancelRefused,
    /// The cancel got no answer: it may or may not have happened.
    CancelUnknown,
}

/// One entry the server made for one of the tool's viewers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub entry_id: String,
    pub deal: usize,
    pub viewer: u64,
    pub qty: u32,
    /// What the viewer does with an offer: the follow-up drawn for the tap that made the entry.
    pub after: After,
    /// When the reserve that made it was sent, and answered.
    pub joined_sent_us: u64,
    pub joined_acked_us: u64,
    /// The send instant of the last request answered `waiting`: an offer is made after it.
    pub waiting_sent_us: u64,
    /// The position at the last answer, and when that answer came.
    pub position: Option<u64>,
    pub position_us: u64,
    pub fate: EntryFate,
    /// The offered hold, as answered (a read, a repeated tap, a cancel, a lapse).
    pub hold_id: Option<String>,
    /// Its index in the ledger's holds, if the tool learned of the offer in time to follow it.
    pub hold: Option<usize>,
    /// When the tool learned of the offer.
    pub learned_us: Option<u64>,
    /// An answer named another hold than an earlier one: offered twice.
    pub hold_changed: bool,
    /// Reads of the entry, and those that got no useful answer.
    pub reads: u64,
    pub read_errors: u64,
}

/// What a reserve answered with an entry means for the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    /// A new entry (202), waiting at `position`: read it later.
    New { entry: usize, position: u64 },
    /// The viewer's entry, already known (200).
    Known,
    /// An answer that tells of an offer the tool did not know yet: follow up hold `hold`.
    Offer { entry: usize, hold: usize },
}

/// What an entry's read (or a cancel's answer) means for the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryStep {
    /// Still waiting at `position`: read again later.
    Wait { position: u64 },
    /// Offered: follow up hold `hold` as the viewer would.
    Offer { hold: usize },
    /// Nothing more to do for this entry.
    Done,
}

impl Ledger {
    /// A reserve answered with an entry (200 or 202). A new entry is booked; a known one may
    /// tell of its offer. The answer is the deal's "no units now", so it counts as the
    /// sell-out the way `sold_out` does.
    #[expect(clippy::too_many_arguments, reason = "one call site, the answer's facts")]
    pub fn joined(
        &mut self,
        deal: usize,
        viewer: u64,
        after: After,
        seen: &EntrySeen,
        sent_us: u64,
        acked_us: u64,
        offer_ttl_us: u64,
    ) -> Joined {
        let tally = &mut self.deals[deal];
        tally.first_sold_out_us = Some(tally.first_sold_out_us.map_or(sent_us, |t| t.min(sent_us)));
        tally.first_sold_out_answer_us =
            Some(tally.first_sold_out_answer_us.map_or(acked_us, |t| t.min(acked_us)));
        if let Some(&entry) = self.entry_ids.get(&seen.entry_id) {
            self.entry_repeats += 1;
            return match self.entry_read(entry, seen, sent_us, acked_us, offer_ttl_us) {
                EntryStep::Offer { hold } => Joined::Offer { entry, hold },
                EntryStep::Wait { .. } | EntryStep::Done => Joined::Known,
            };
        }
        let entry = self.entries.len();
        self.entries.push(EntryRecord {
            entry_id: seen.entry_id.clone(),
            deal,
            viewer,
            qty: seen.qty,
            after,
            joined_sent_us: sent_us,
            joined_acked_us: acked_us,
            waiting_sent_us: sent_us,
            position: None,
            position_us: acked_us,
            fate: EntryFate::Waiting,
            hold_id: None,
            hold: None,
            learned_us: None,
            hold_changed: false,
            reads: 0,
            read_errors: 0,
        });
        self.entry_ids.insert(seen.entry_id.clone(), entry);
        match self.entry_read(entry, seen, sent_us, acked_us, offer_ttl_us) {
            EntryStep::Offer { hold } => Joined::Offer { entry, hold },
            EntryStep::Wait { position } => Joined::New { entry, position },
            EntryStep::Done => Joined::Known,
        }
    }

    /// An answer about entry `entry` (a read, or a repeated tap): books what it says.
    pub fn entry_read(
        &mut self,
        entry: usize,
        seen: &EntrySeen,
        sent_us: u64,
        acked_us: u64,
        offer_ttl_us: u64,
    ) -> EntryStep {
        let record = &mut self.entries[entry];
        if let (Some(known), Some(now)) = (&record.hold_id, &seen.hold_id) {
            record.hold_changed |= known != now;
        }
        if record.hold_id.is_none() {
            record.hold_id.clone_from(&seen.hold_id);
        }
        if record.fate != EntryFate::Waiting {
            return EntryStep::Done;
        }
        match (seen.state, &seen.hold_id) {
            (EntryState::Waiting, _) => {
                let position = seen.position.unwrap_or(1);
                record.waiting_sent_us = record.waiting_sent_us.max(sent_us);
                record.position = Some(position);
                record.position_us = acked_us;
                EntryStep::Wait { position }
            }
            (EntryState::Offered, Some(hold_id)) => {
                record.fate = EntryFate::Offered;
                record.learned_us = Some(acked_us);
                let hold = HoldRecord {
                    hold_id: hold_id.clone(),
                    deal: record.deal,
                    viewer: record.viewer,
                    qty: record.qty,
                    // The offer was made after the last answer that said `waiting` was asked
                    // for, and existed when this answer came.
                    sent_us: record.waiting_sent_us,
                    acked_us,
                    ttl_us: offer_ttl_us,
                    fate: Fate::Open,
                    entry_id: Some(record.entry_id.clone()),
                };
                self.deals[hold.deal].offered_units += u64::from(hold.qty);
                self.holds.push(hold);
                let hold = self.holds.len() - 1;
                self.entries[entry].hold = Some(hold);
                EntryStep::Offer { hold }
            }
            // Offered without a hold would be a server bug: the end-of-run read judges it.
            (EntryState::Offered, None) | (EntryState::Lapsed, _) => {
                record.fate = EntryFate::Lapsed;
                EntryStep::Done
            }
            (EntryState::Cancelled, _) => {
                record.fate = EntryFate::CancelledUnasked;
                EntryStep::Done
            }
        }
    }

    /// A read of entry `entry` that got no useful answer: read it again later.
    pub fn entry_read_failed(&mut self, entry: usize) {
        self.entries[entry].read_errors += 1;
    }

    /// Counts a read of entry `entry`.
    pub fn entry_read_sent(&mut self, entry: usize) {
        self.entries[entry].reads += 1;
    }

    /// The tool's cancel of entry `entry` (still waiting when the entries stopped being
    /// followed) was answered: `Ok(seen)` acknowledged, `Err(true)` refused by the rules,
    /// `Err(false)` unknown.
    pub fn entry_cancelled(&mut self, entry: usize, answer: Result<&EntrySeen, bool>) {
        let record = &mut self.entries[entry];
        if record.fate != EntryFate::Waiting {
            return;
        }
        record.fate = match answer {
            Ok(seen) => {
                if let (Some(known), Some(now)) = (&record.hold_id, &seen.hold_id) {
                    record.hold_changed |= known != now;
                }
                if record.hold_id.is_none() {
                    record.hold_id.clone_from(&seen.hold_id);
                }
                EntryFate::Cancelled { offer_given_up: seen.hold_id.is_some() }
            }
            Err(true) => EntryFate::CancelRefused,
            Err(false) => EntryFate::CancelUnknown,
        };
    }
}

/// The poll budget: a token bucket of `rate` reads per second with a burst of 50 ms' worth
/// (at least one), so the reads of 50,000 entries never exceed the rate however they fall due.
#[derive(Clone, Debug)]
pub struct PollBudget {
    per_us: f64,
    burst: f64,
    tokens: f64,
    last_us: u64,
}

impl PollBudget {
    pub fn new(rate_per_s: f64) -> PollBudget {
        let burst = (rate_per_s / 20.0).max(1.0);
        PollBudget { per_us: rate_per_s / 1e6, burst, tokens: burst, last_us: 0 }
    }

    fn refill(&mut self, now_us: u64) {
        if now_us > self.last_us {
            let earned = exact_f64(now_us - self.last_us) * self.per_us;
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last_us = now_us;
        }
    }

    /// Takes one read's token at `now_us`, if there is one.
    pub fn take(&mut self, now_us: u64) -> bool {
        self.refill(now_us);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// µs from `now_us` until the next token.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a few µs, >= 0")]
    pub fn wait_us(&mut self, now_us: u64) -> u64 {
        self.refill(now_us);
        if self.tokens >= 1.0 {
            0
        } else {
            ((1.0 - self.tokens) / self.per_us).ceil() as u64
        }
    }
}

/// How fast a deal's queue moves: positions per second, smoothed over the reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueSpeed {
    pub per_s: Option<f64>,
}

impl QueueSpeed {
    /// An entry moved `moved` positions in `over_us`.
    pub fn observe(&mut self, moved: u64, over_us: u64) {
        if over_us < 10_000 {
            return;
        }
        let sample = exact_f64(moved) * 1e6 / exact_f64(over_us);
        self.per_s = Some(match self.per_s {
            None => sample,
            Some(speed) => 0.7 * speed + 0.3 * sample,
        });
    }
}

/// The longest wait between two reads of an entry: half the offer's TTL, within
/// [`ENTRY_POLL_MS_MIN`]..=[`ENTRY_POLL_MS_MAX`], so an offer is seen with time left to pay.
pub fn poll_ms_max(offer_ttl_ms: u64) -> u64 {
    (offer_ttl_ms / 2).clamp(ENTRY_POLL_MS_MIN, ENTRY_POLL_MS_MAX)
}

/// When to read an entry at `position` again: after half the time the queue needs to serve the
/// entries ahead of it at `speed` (positions per second; at least 1), within
/// [`ENTRY_POLL_MS_MIN`]..=`ms_max`. The head is read every [`ENTRY_POLL_MS_MIN`], the back
/// rarely, and an entry's reads come closer together as it nears the head.
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "clamped, >= 0")]
pub fn poll_delay_ms(position: u64, speed: QueueSpeed, ms_max: u64) -> u64 {
    let per_s = speed.per_s.unwrap_or(0.0).max(1.0);
    let ahead = position.clamp(1, 1 << 40) - 1;
    let ms = 500.0 * exact_f64(ahead) / per_s;
    (ms.min(1e12) as u64).clamp(ENTRY_POLL_MS_MIN, ms_max.max(ENTRY_POLL_MS_MIN))
}

/// Percentiles of a set of lags, ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LagStats {
    pub count: u64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl LagStats {
    pub fn of(mut ms: Vec<u64>) -> Option<LagStats> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_unstable();
        let at = |q: f64| {
            #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "< len")]
            let i = ((exact_f64(ms.len() as u64) * q).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[i]
        };
        Some(LagStats {
            count: ms.len() as u64,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: ms[ms.len() - 1],
        })
    }
}

/// When a unit came back, by the server's clock: a release's `resolved_at`, an expiry's
/// `expires_at` (the reaper frees it at its next tick).
pub fn came_back_at_ms(hold: &ServerHold) -> Option<u64> {
    match hold.state {
        HoldState::Released => hold.resolved_at_ms,
        HoldState::Expired => Some(hold.expires_at_ms),
        HoldState::Held | HoldState::Confirmed => None,
    }
}

/// For each offered unit, the time from the unit that came back before it to the offer:
/// `backs` and `offers` are `(ms, units)`. Which release fed which offer is not on the wire, so
/// each offer takes the latest units that came back at or before it and are not yet taken
/// (units that went to `available` because nobody waited stay at the bottom and are not
/// matched to much later offers). An estimate, exact when entries wait for every unit.
pub fn offer_lags_ms(mut backs: Vec<(u64, u32)>, mut offers: Vec<(u64, u32)>) -> Vec<u64> {
    backs.sort_unstable();
    offers.sort_unstable();
    let mut stack: Vec<(u64, u32)> = Vec::new();
    let mut lags = Vec::new();
    let mut next = backs.into_iter().peekable();
    for (at, mut units) in offers {
        while let Some(&(back, n)) = next.peek() {
            if back > at {
                break;
            }
            stack.push((back, n));
            next.next();
        }
        while units > 0 {
            let Some(top) = stack.last_mut() else { break };
            let take = top.1.min(units);
            lags.extend(std::iter::repeat_n(at - top.0, take as usize));
            top.1 -= take;
            units -= take;
            if top.1 == 0 {
                stack.pop();
            }
        }
    }
    lags
}

/// Units that came back after the sell-out and what became of them: the waitlist's headline.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Returns {
    /// Units released or expired after the deal's first turned-away reserve (`sold_out`, or a
    /// waitlist entry), by the server's clock: a release's `resolved_at`, an expiry's
    /// `expires_at`. Offers that came back are included (a unit may come back several times).
    pub came_back_units: u64,
    /// Of those, units of offers that came back (they went on to the next entry).
    pub came_back_from_offers_units: u64,
    /// Units that came back from the first buyers' holds: `came_back - from_offers`.
    pub came_back_first_hand_units: u64,
    /// Units the waitlist sold: offers whose confirm was acknowledged.
    pub resold_units: u64,
    /// `resold / first_hand`: the share of the units that came back that the waitlist sold.
    pub resold_share: Option<f64>,
    /// Units nobody bought: `stock - sold` at the end, over the run's deals.
    pub unsold_units: u64,
    /// Time from a unit coming back to its offer (server clock, ms; [`offer_lags_ms`]).
    pub offer_lag: Option<LagStats>,
}

/// A hold read back with the deal it belongs to (an index into the run's deals).
pub struct ReadHold<'a> {
    pub deal: usize,
    pub qty: u32,
    pub read: &'a HoldRead,
}

/// Counts the units that came back after each deal's sell-out (`sold_out_ms[deal]`, server
/// clock; never sold out: nothing counts) over every hold read back, and what the waitlist
/// resold (`resold_units`, from the ledger).
pub fn returns(
    holds: &[ReadHold<'_>],
    sold_out_ms: &[Option<u64>],
    resold_units: u64,
    unsold_units: u64,
) -> Returns {
    let mut r = Returns { resold_units, unsold_units, ..Returns::default() };
    let (mut backs, mut offers) = (Vec::new(), Vec::new());
    for h in holds {
        let HoldRead::Found(hold) = h.read else { continue };
        if hold.from_waitlist {
            if let Some(created) = hold.created_at_ms {
                offers.push((created, h.qty));
            }
        }
        let Some(back) = came_back_at_ms(hold) else { continue };
        backs.push((back, h.qty));
        if sold_out_ms.get(h.deal).copied().flatten().is_some_and(|s| back >= s) {
            r.came_back_units += u64::from(h.qty);
            if hold.from_waitlist {
                r.came_back_from_offers_units += u64::from(h.qty);
            }
        }
    }
    r.came_back_first_hand_units = r.came_back_units - r.came_back_from_offers_units;
    r.resold_share = (r.came_back_first_hand_units > 0)
        .then(|| exact_f64(resold_units) / exact_f64(r.came_back_first_hand_units));
    r.offer_lag = LagStats::of(offer_lags_ms(backs, offers));
    r
}

/// An entry read back at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryRead {
    Found(EntrySeen),
    /// 404 `unknown_entry`.
    Missing,
    /// No node answered: nothing can be concluded.
    Unread(String),
}

/// The entry-by-entry check: every entry the server made for us, read back at the end, and
/// every hold an entry names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EntriesCheck {
    pub read: u64,
    /// Entries the server does not have, or has for another deal, user or quantity. Must be 0.
    pub lost: u64,
    /// Entries whose final state disagrees with what was acknowledged (a cancelled entry not
    /// cancelled, an offer confirmed but its entry lapsed, ...). Must be 0.
    pub wrong_state: u64,
    /// Entries still waiting after the tool cancelled every waiting one. Must be 0.
    pub still_waiting: u64,
    /// Offered entries whose hold is missing, not `origin: "waitlist"`, for another entry,
    /// user, deal or quantity, or confirmed though the tool never saw the offer. Must be 0.
    pub bad_offers: u64,
    /// Entries offered twice: an answer named another hold than an earlier one, or two
    /// entries name one hold. Must be 0.
    pub offered_twice: u64,
    /// Entries or offers no node answered for. Must be 0.
    pub unread: u64,
}

/// Final states of the entries, as read back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EntryStates {
    pub waiting: u64,
    /// Offered, and the offer bought.
    pub offered: u64,
    pub cancelled: u64,
    /// Lapsed: the offer was released or expired, or the user's limit was full.
    pub lapsed: u64,
}

/// Checks every entry of the ledger against its read (`reads[i]` is `ledger.entries[i]`'s) and
/// against the hold it names (`offers`, by hold id; the ledger's holds are there too).
pub fn check_entries(
    ledger: &Ledger,
    deal_ids: &[&str],
    reads: &[EntryRead],
    offers: &HashMap<String, HoldRead>,
) -> (EntriesCheck, EntryStates, Vec<String>) {
    assert_eq!(reads.len(), ledger.entries.len(), "one read per entry");
    let mut check = EntriesCheck::default();
    let mut states = EntryStates::default();
    let mut examples: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut note = |what: &'static str, text: String| {
        let list = examples.entry(what).or_default();
        if list.len() < 3 {
            list.push(text);
        }
    };
    let mut holders: HashMap<&str, u64> = HashMap::new();
    for (record, read) in ledger.entries.iter().zip(reads) {
        let id = &record.entry_id;
        let seen = match read {
            EntryRead::Unread(why) => {
                check.unread += 1;
                note("unread", format!("{id} ({why})"));
                continue;
            }
            EntryRead::Missing => {
                check.lost += 1;
                note("lost", format!("{id} (unknown to the server)"));
                continue;
            }
            EntryRead::Found(seen) => seen,
        };
        check.read += 1;
        match seen.state {
            EntryState::Waiting => states.waiting += 1,
            EntryState::Offered => states.offered += 1,
            EntryState::Cancelled => states.cancelled += 1,
            EntryState::Lapsed => states.lapsed += 1,
        }
        if seen.deal_id != deal_ids[record.deal]
            || seen.user_id != crate::ledger::user_id(record.viewer)
            || seen.qty != record.qty
        {
            check.lost += 1;
            note(
                "lost",
                format!("{id} (the server has deal {}, user {})", seen.deal_id, seen.user_id),
            );
            continue;
        }
        if seen.state == EntryState::Waiting {
            check.still_waiting += 1;
            note("still_waiting", format!("{id} ({:?} in our ledger)", record.fate));
        }
        if let Some(hold_id) = &seen.hold_id {
            *holders.entry(hold_id.as_str()).or_default() += 1;
        }
        let renamed = record.hold_changed
            || record.hold_id.as_ref().is_some_and(|h| seen.hold_id.as_ref() != Some(h));
        if renamed {
            check.offered_twice += 1;
            note(
                "offered_twice",
                format!("{id} (named {:?}, now {:?})", record.hold_id, seen.hold_id),
            );
        }
        // The offer's hold, read back: ours, for this entry, and in a state we explain.
        let hold = seen.hold_id.as_ref().map(|h| (h, offers.get(h)));
        let hold_state = match hold {
            None => None,
            Some((h, None | Some(HoldRead::Unread(_)))) => {
                check.unread += 1;
                note("unread", format!("{id}'s offer {h} (not read)"));
                continue;
            }
            Some((h, Some(HoldRead::Missing))) => {
                check.bad_offers += 1;
                note("bad_offers", format!("{id}'s offer {h} (unknown to the server)"));
                continue;
            }
            Some((h, Some(HoldRead::Found(found)))) => {
                let ours = found.from_waitlist
                    && found.entry_id.as_deref() == Some(id.as_str())
                    && found.user_id == seen.user_id
                    && found.deal_id == seen.deal_id
                    && found.qty == seen.qty;
                // The tool never confirms an offer it has not seen.
                let unseen_bought = record.hold.is_none() && found.state == HoldState::Confirmed;
                if !ours || unseen_bought {
                    check.bad_offers += 1;
                    note(
                        "bad_offers",
                        format!(
                            "{id}'s offer {h} (origin waitlist {}, entry {:?}, user {}, {:?}{})",
                            found.from_waitlist,
                            found.entry_id,
                            found.user_id,
                            found.state,
                            if unseen_bought { ", never seen by us" } else { "" }
                        ),
                    );
                    continue;
                }
                Some(found.state)
            }
        };
        let cancelled_by_us =
            matches!(record.fate, EntryFate::Cancelled { .. } | EntryFate::CancelUnknown);
        let fine = match seen.state {
            // Counted above.
            EntryState::Waiting => true,
            // Bought: the entry stays offered.
            EntryState::Offered => hold_state == Some(HoldState::Confirmed),
            // Its offer released or expired, or the user's limit full when its turn came.
            EntryState::Lapsed => {
                matches!(hold_state, None | Some(HoldState::Released | HoldState::Expired))
                    && !matches!(record.fate, EntryFate::Cancelled { .. })
            }
            // Only by our cancel (which gives up an open offer: released).
            EntryState::Cancelled => {
                cancelled_by_us && matches!(hold_state, None | Some(HoldState::Released))
            }
        };
        if !fine {
            check.wrong_state += 1;
            note(
                "wrong_state",
                format!(
                    "{id} ({:?} in our ledger; the server has {:?}, offer {:?})",
                    record.fate, seen.state, hold_state
                ),
            );
        }
    }
    let shared = holders.values().filter(|&&n| n > 1).map(|n| n - 1).sum::<u64>();
    check.offered_twice += shared;
    let mut problems = Vec::new();
    let mut say = |n: u64, what: &str, words: &str| {
        if n > 0 {
            let e = examples.get(what).map(|l| l.join("; ")).unwrap_or_default();
            problems.push(format!("{n} {words}, e.g. {e}"));
        }
    };
    say(check.lost, "lost", "waitlist entries are missing or differ");
    say(
        check.wrong_state,
        "wrong_state",
        "waitlist entries are in a state our requests do not explain",
    );
    say(
        check.still_waiting,
        "still_waiting",
        "waitlist entries still wait after the run cancelled them",
    );
    say(check.bad_offers, "bad_offers", "offers are not holds for their entry");
    say(check.offered_twice, "offered_twice", "waitlist entries were offered twice");
    say(check.unread, "unread", "waitlist entries or offers could not be read back");
    (check, states, problems)
}

/// `--waitlist`: what the waitlist did during the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaitlistReport {
    pub waitlist_max: u32,
    pub offer_ttl_ms: u64,
    pub entry_poll_rate_per_s: f64,
    /// Entries were followed until this instant (ms from the start); then those still
    /// waiting were cancelled.
    pub followed_until_ms: f64,
    /// Entries made (202), and taps answered with the viewer's existing entry (200).
    pub entries: u64,
    pub entry_repeats: u64,
    /// Reserves refused `waitlist_full`.
    pub waitlist_full: u64,
    /// Offers the tool saw in time and followed up like a won reserve.
    pub offers_seen: u64,
    /// Entries that lapsed with an offer no read saw (it expired first).
    pub offers_missed: u64,
    /// Entries still waiting when they stopped being followed, cancelled by the tool; and of
    /// those, cancels that gave up an offer made since the last read.
    pub still_waiting_at_end: u64,
    pub offers_given_up: u64,
    /// Final states, read back.
    pub states: EntryStates,
    /// Entry reads, and those without a useful answer.
    pub reads: u64,
    pub read_errors: u64,
    /// From an offer's creation (server clock) to the tool's read that saw it.
    pub learn_lag: Option<LagStats>,
    /// At the end of the followed window, after a reaper tick: deals with units available while
    /// entries that fit them waited (a server bug: units that come back go to the waiting
    /// first). `deal: available, waiting`.
    pub waiting_while_available: Vec<String>,
    pub check: EntriesCheck,
}

/// The entries' tallies of the report (the rest is filled by the run).
pub fn entry_tallies(
    ledger: &Ledger,
    t0_wall_ms: u64,
    created_ms: &HashMap<String, u64>,
) -> (u64, u64, u64, u64, Option<LagStats>) {
    let mut seen = 0;
    let mut missed = 0;
    let mut at_end = 0;
    let mut given_up = 0;
    let mut learn = Vec::new();
    for e in &ledger.entries {
        match e.fate {
            EntryFate::Offered => seen += 1,
            EntryFate::Lapsed if e.hold_id.is_some() => missed += 1,
            EntryFate::Cancelled { offer_given_up } => {
                at_end += 1;
                given_up += u64::from(offer_given_up);
            }
            EntryFate::CancelRefused | EntryFate::CancelUnknown => at_end += 1,
            _ => {}
        }
        if let (Some(learned_us), Some(hold)) = (e.learned_us, &e.hold_id) {
            if let Some(&created) = created_ms.get(hold) {
                learn.push((t0_wall_ms + learned_us / 1_000).saturating_sub(created));
            }
        }
    }
    (seen, missed, at_end, given_up, LagStats::of(learn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_never_lends_more_than_its_rate() {
        let mut b = PollBudget::new(1_000.0);
        let mut taken = 0;
        for us in (0..1_000_000).step_by(100) {
            while b.take(us) {
                taken += 1;
            }
        }
        // 50 ms of burst, then 1 per ms over the second.
        assert!((1_000..=1_051).contains(&taken), "{taken}");
        let mut slow = PollBudget::new(2.0);
        assert!(slow.take(0), "a burst of at least one");
        assert!(!slow.take(1));
        assert!((499_999..=500_000).contains(&slow.wait_us(1)));
        assert!(slow.take(500_010), "a token every 500 ms");
    }

    #[test]
    fn entries_near_the_head_are_read_often() {
        let unknown = QueueSpeed::default();
        assert_eq!(poll_delay_ms(1, unknown, 2_500), ENTRY_POLL_MS_MIN);
        assert_eq!(poll_delay_ms(3, unknown, 2_500), 1_000);
        assert_eq!(poll_delay_ms(50_000, unknown, 2_500), 2_500);
        let mut fast = QueueSpeed::default();
        fast.observe(400, 1_000_000);
        assert_eq!(fast.per_s, Some(400.0));
        assert_eq!(poll_delay_ms(80, fast, 2_500), ENTRY_POLL_MS_MIN);
        assert_eq!(poll_delay_ms(801, fast, 2_500), 1_000);
        fast.observe(0, 1_000_000);
        assert_eq!(fast.per_s, Some(280.0), "smoothed");
        fast.observe(1, 5);
        assert_eq!(fast.per_s, Some(280.0), "too short to say");
        assert_eq!(poll_ms_max(5_000), 2_500);
        assert_eq!(poll_ms_max(1_000), 500);
        assert_eq!(poll_ms_max(120_000), ENTRY_POLL_MS_MAX);
    }

    #[test]
    fn offers_take_the_latest_units_that_came_back() {
        // One unit back at 100 went to `available` (nobody waited); 2 at 500 went to offers
        // at 500 and 502; one more at 900 to an offer at 910.
        let lags =
            offer_lags_ms(vec![(100, 1), (500, 2), (900, 1)], vec![(500, 1), (502, 1), (910, 1)]);
        assert_eq!(lags, [0, 2, 10]);
        assert!(offer_lags_ms(vec![(5, 1)], vec![(4, 1)]).is_empty(), "never from the future");
        let stats = LagStats::of(vec![5, 1, 3, 2, 4]).unwrap();
        assert_eq!((stats.count, stats.p50_ms, stats.p90_ms, stats.max_ms), (5, 3, 5, 5));
        assert_eq!(LagStats::of(Vec::new()), None);
    }

    fn seen(id: &str, state: EntryState, position: Option<u64>, hold: Option<&str>) -> EntrySeen {
        EntrySeen {
            entry_id: id.to_owned(),
            deal_id: "d".to_owned(),
            user_id: crate::ledger::user_id(7),
            qty: 1,
            state,
            position,
            hold_id: hold.map(str::to_owned),
        }
    }

    fn offer(entry: &str, state: HoldState, created: u64, back: Option<u64>) -> HoldRead {
        HoldRead::Found(ServerHold {
            deal_id: "d".to_owned(),
            user_id: crate::ledger::user_id(7),
            qty: 1,
            state,
            from_waitlist: true,
            entry_id: Some(entry.to_owned()),
            created_at_ms: Some(created),
            expires_at_ms: created + 1_000,
            resolved_at_ms: back,
        })
    }

    #[test]
    fn an_entry_is_followed_from_its_join_to_its_offer() {
        let mut ledger = Ledger::new(1);
        let after = After::Confirm { delay_us: 300_000 };
        let w = seen("e1", EntryState::Waiting, Some(5), None);
        assert_eq!(
            ledger.joined(0, 7, after, &w, 100, 200, 1_000_000),
            Joined::New { entry: 0, position: 5 }
        );
        assert_eq!(ledger.deals[0].first_sold_out_us, Some(100), "an entry is the sell-out too");
        // The same viewer taps again: the same entry.
        assert_eq!(ledger.joined(0, 7, after, &w, 300, 400, 1_000_000), Joined::Known);
        assert_eq!(ledger.entry_repeats, 1);
        let w2 = seen("e1", EntryState::Waiting, Some(2), None);
        assert_eq!(
            ledger.entry_read(0, &w2, 1_000, 1_100, 1_000_000),
            EntryStep::Wait { position: 2 }
        );
        let o = seen("e1", EntryState::Offered, None, Some("h9"));
        let EntryStep::Offer { hold } = ledger.entry_read(0, &o, 2_000, 2_100, 1_000_000) else {
            panic!("an offer")
        };
        let h = &ledger.holds[hold];
        assert_eq!((h.sent_us, h.acked_us, h.entry_id.as_deref()), (1_000, 2_100, Some("e1")));
        assert_eq!(ledger.deals[0].offered_units, 1);
        assert_eq!(ledger.entry_read(0, &o, 3_000, 3_100, 1_000_000), EntryStep::Done);
        assert!(!ledger.entries[0].hold_changed);
        let other = seen("e1", EntryState::Offered, None, Some("h10"));
        ledger.entry_read(0, &other, 4_000, 4_100, 1_000_000);
        assert!(ledger.entries[0].hold_changed, "a second offer to one entry");
    }

    #[test]
    fn every_entry_and_offer_is_checked_at_the_end() {
        let mut ledger = Ledger::new(1);
        let after = After::Confirm { delay_us: 1 };
        // e1 offered and bought; e2 cancelled by the tool at the end; e3 lapsed unseen.
        for id in ["e1", "e2", "e3"] {
            ledger.joined(
                0,
                7,
                after,
                &seen(id, EntryState::Waiting, Some(1), None),
                0,
                1,
                1_000_000,
            );
        }
        let EntryStep::Offer { hold } = ledger.entry_read(
            0,
            &seen("e1", EntryState::Offered, None, Some("h1")),
            5,
            6,
            1_000_000,
        ) else {
            panic!("an offer")
        };
        ledger.confirmed(hold, crate::ledger::Answered::Ok);
        ledger.entry_cancelled(1, Ok(&seen("e2", EntryState::Cancelled, None, None)));
        ledger.entry_read(2, &seen("e3", EntryState::Lapsed, None, Some("h3")), 7, 8, 1_000_000);
        let reads = vec![
            EntryRead::Found(seen("e1", EntryState::Offered, None, Some("h1"))),
            EntryRead::Found(seen("e2", EntryState::Cancelled, None, None)),
            EntryRead::Found(seen("e3", EntryState::Lapsed, None, Some("h3"))),
        ];
        let mut offers = HashMap::new();
        offers.insert("h1".to_owned(), offer("e1", HoldState::Confirmed, 10, None));
        offers.insert("h3".to_owned(), offer("e3", HoldState::Expired, 20, None));
        let (check, states, problems) = check_entries(&ledger, &["d"], &reads, &offers);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(check.read, 3);
        assert_eq!((states.offered, states.cancelled, states.lapsed), (1, 1, 1));
        let (seen_n, missed, at_end, given_up, _) = entry_tallies(&ledger, 0, &HashMap::new());
        assert_eq!((seen_n, missed, at_end, given_up), (1, 1, 1, 0));

        for (i, read, hold, what) in [
            (
                1,
                EntryRead::Found(seen("e2", EntryState::Waiting, Some(1), None)),
                None,
                "still wait",
            ),
            (1, EntryRead::Missing, None, "missing"),
            (
                0,
                EntryRead::Found(seen("e1", EntryState::Lapsed, None, Some("h1"))),
                None,
                "do not explain",
            ),
            (
                0,
                EntryRead::Found(seen("e1", EntryState::Offered, None, Some("h3"))),
                None,
                "offered twice",
            ),
            (
                2,
                EntryRead::Found(seen("e3", EntryState::Lapsed, None, Some("h3"))),
                Some(offer("e3", HoldState::Confirmed, 20, None)),
                "not holds",
            ),
            (
                2,
                EntryRead::Found(seen("e3", EntryState::Lapsed, None, Some("h3"))),
                Some(offer("e9", HoldState::Expired, 20, None)),
                "not holds",
            ),
            (2, EntryRead::Unread("timeout".into()), None, "read back"),
        ] {
            let mut reads = reads.clone();
            reads[i] = read.clone();
            let mut offers = offers.clone();
            if let Some(hold) = hold {
                offers.insert("h3".to_owned(), hold);
            }
            let (_, _, problems) = check_entries(&ledger, &["d"], &reads, &offers);
            assert!(problems.iter().any(|p| p.contains(what)), "{read:?}: {problems:?}");
        }
    }

    #[test]
    fn units_that_came_back_after_the_sell_out_are_counted_once_per_return() {
        let released = |resolved: u64| {
            HoldRead::Found(ServerHold {
                deal_id: "d".into(),
                user_id: "v1".into(),
                qty: 2,
                state: HoldState::Released,
                from_waitlist: false,
                entry_id: None,
                created_at_ms: Some(0),
                expires_at_ms: 10_000,
                resolved_at_ms: Some(resolved),
            })
        };
        let before = released(50);
        let after = released(150);
        let offer_back = offer("e1", HoldState::Expired, 150, None); // came back at 1_150
        let offer_bought = offer("e2", HoldState::Confirmed, 151, None);
        let reads = [&before, &after, &offer_back, &offer_bought];
        let holds: Vec<ReadHold<'_>> = reads
            .iter()
            .map(|read| {
                let qty = match read {
                    HoldRead::Found(h) => h.qty,
                    _ => 0,
                };
                ReadHold { deal: 0, qty, read }
            })
            .collect();
        let r = returns(&holds, &[Some(100)], 1, 3);
        assert_eq!(r.came_back_units, 3, "2 of the first hand, 1 of an offer; not the one before");
        assert_eq!((r.came_back_from_offers_units, r.came_back_first_hand_units), (1, 2));
        assert_eq!(r.resold_share, Some(0.5));
        assert_eq!(r.offer_lag.as_ref().map(|l| (l.count, l.max_ms)), Some((2, 1)));
        let never = returns(&holds, &[None], 0, 3);
        assert_eq!((never.came_back_units, never.resold_share), (0, None));
    }
}
