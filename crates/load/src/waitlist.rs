//! `--waitlist`: the viewers turned away join the deal's waitlist, learn of offers by reading
//! their entry, and pay for them as a winner of a reserve does. Pure: what the tool knows of
//! each entry (booked in the [`Ledger`]), and how often an entry is read and within which
//! budget. Times are µs since the run's start. The end of the run (what came back, what was
//! resold, the check of every entry) is `waitlist_check.rs`.
//!
//! **Why polling.** An app learns of an offer by reading `GET /v1/waitlist/{entry_id}`: that is
//! the API there is. A production backend would instead follow the server's event stream
//! (`/v1/events`, being built) and push the offer to the viewer's phone; polling is what is
//! left to a client without it, and the tool bounds it (`--entry-poll-rate`), reading the
//! entries near the head of the queue often and those far back rarely, as the entry's
//! `position` invites.

pub use livestock_core::waitlist::EntryState;

use crate::ledger::{Fate, HoldRecord, Ledger};
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
    /// When the server made the entry (its clock).
    pub created_at_ms: Option<u64>,
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
    /// The cancel was sent and got no answer (yet): it may or may not have happened.
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
            // Entered: in a draw whose window is open (it has no position yet).
            (EntryState::Waiting | EntryState::Entered, _) => {
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
            (EntryState::Offered, None) | (EntryState::Lapsed | EntryState::Lost, _) => {
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

    /// The tool cancels entry `entry` (still waiting when the entries stopped being followed):
    /// until its answer comes, it may or may not have happened.
    pub fn entry_cancel_sent(&mut self, entry: usize) {
        let record = &mut self.entries[entry];
        if record.fate == EntryFate::Waiting {
            record.fate = EntryFate::CancelUnknown;
        }
    }

    /// The tool's cancel of entry `entry` was answered: `Ok(seen)` acknowledged, `Err(true)`
    /// refused by the rules, `Err(false)` unknown.
    pub fn entry_cancelled(&mut self, entry: usize, answer: Result<&EntrySeen, bool>) {
        let record = &mut self.entries[entry];
        if !matches!(record.fate, EntryFate::Waiting | EntryFate::CancelUnknown) {
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

#[cfg(test)]
pub(crate) mod tests {
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

    /// An entry as a read of deal `d` by viewer 7 shows it (also `waitlist_check`'s tests).
    pub(crate) fn seen(
        id: &str,
        state: EntryState,
        position: Option<u64>,
        hold: Option<&str>,
    ) -> EntrySeen {
        EntrySeen {
            entry_id: id.to_owned(),
            deal_id: "d".to_owned(),
            user_id: crate::ledger::user_id(7),
            qty: 1,
            state,
            position,
            hold_id: hold.map(str::to_owned),
            created_at_ms: None,
        }
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
        // A cancel counts as sent until its answer; a refused one as refused.
        let w3 = seen("e3", EntryState::Waiting, Some(9), None);
        ledger.joined(0, 8, after, &w3, 5_000, 5_100, 1_000_000);
        ledger.entry_cancel_sent(1);
        assert_eq!(ledger.entries[1].fate, EntryFate::CancelUnknown);
        ledger.entry_cancelled(1, Err(true));
        assert_eq!(ledger.entries[1].fate, EntryFate::CancelRefused);
        ledger.entry_cancel_sent(0);
        assert_eq!(ledger.entries[0].fate, EntryFate::Offered, "an offered entry is not cancelled");
        let other = seen("e1", EntryState::Offered, None, Some("h10"));
        ledger.entry_read(0, &other, 4_000, 4_100, 1_000_000);
        assert!(ledger.entries[0].hold_changed, "a second offer to one entry");
    }
}
