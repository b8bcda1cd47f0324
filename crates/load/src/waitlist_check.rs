//! `--waitlist`, at the end of the run: which units came back after the sell-out and how many
//! the waitlist resold, how long a unit that came back took to be offered, and the check of
//! every entry and of every offer an entry names, read back from the server. Pure: the reads
//! are passed in. Times here are the server's (ms since the epoch, from the API's timestamps;
//! the tool and the server share this machine's clock).

use std::collections::HashMap;

use serde::Serialize;

use crate::ledger::{HoldRead, HoldState, Ledger, ServerHold};
use crate::limits::exact_f64;
use crate::waitlist::{EntryFate, EntrySeen, EntryState};

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
    /// waitlist entry) and, with `--waitlist`, before the end of the followed window, by the
    /// server's clock: a release's `resolved_at`, an expiry's `expires_at`. Offers that came
    /// back are included (a unit may come back several times).
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
/// clock; never sold out: nothing counts) and until `until_ms` (the end of the followed
/// window: the offers the tool's final cancels give up, passed from one cancelled entry to the
/// next, are not the drop's) over every hold read back, and what the waitlist resold
/// (`resold_units`, from the ledger).
pub fn returns(
    holds: &[ReadHold<'_>],
    sold_out_ms: &[Option<u64>],
    until_ms: u64,
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
        let after_sell_out = sold_out_ms.get(h.deal).copied().flatten().is_some_and(|s| back >= s);
        if after_sell_out && back <= until_ms {
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
            EntryState::Waiting | EntryState::Entered => states.waiting += 1,
            EntryState::Offered => states.offered += 1,
            EntryState::Cancelled => states.cancelled += 1,
            // Not drawn, without a place on the waitlist: an end like a lapse.
            EntryState::Lapsed | EntryState::Lost => states.lapsed += 1,
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
        if matches!(seen.state, EntryState::Waiting | EntryState::Entered) {
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
            EntryState::Waiting | EntryState::Entered => true,
            // Not drawn, and no place on the waitlist: no offer was ever made.
            EntryState::Lost => hold_state.is_none(),
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
    use crate::schedule::After;
    use crate::waitlist::tests::seen;
    use crate::waitlist::EntryStep;

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
        let r = returns(&holds, &[Some(100)], u64::MAX, 1, 3);
        assert_eq!(r.came_back_units, 3, "2 of the first hand, 1 of an offer; not the one before");
        assert_eq!((r.came_back_from_offers_units, r.came_back_first_hand_units), (1, 2));
        assert_eq!(r.resold_share, Some(0.5));
        assert_eq!(r.offer_lag.as_ref().map(|l| (l.count, l.max_ms)), Some((2, 1)));
        let never = returns(&holds, &[None], u64::MAX, 0, 3);
        let cut = returns(&holds, &[Some(100)], 1_000, 1, 3);
        assert_eq!(cut.came_back_units, 2, "the offer that came back after the window is not");
        assert_eq!((never.came_back_units, never.resold_share), (0, None));
    }
}
