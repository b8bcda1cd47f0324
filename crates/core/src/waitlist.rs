//! Waitlists: units that come back go to the people who were turned away.
//!
//! A deal created with `waitlist_max > 0` keeps, in arrival order, the single reserves it could
//! not serve (sold out, fewer left than asked) whose request said `waitlist: true`. When units
//! come back (a release, an expiry, the unsold rest of a partial confirm, stock added, a resume)
//! they go to the waiting entries first, each served entry becoming a normal hold (an *offer*)
//! with the deal's `offer_ttl_ms`. An offer that is released or expires passes its units on to
//! the next entry the same way.
//!
//! Who gets what, in one rule ([`first_fit`]): entries are served in arrival order, each only
//! whole (an entry is never offered fewer units than it asked for). An entry that wants more
//! than there is keeps its place and the units go on to the next entry that fits; what no
//! waiting entry can use becomes available to anyone. So a large request near the head does
//! not hold back single units from the people behind it, and it is served as soon as enough
//! units are free at once.
//!
//! This file holds the pure parts: the options, an entry's one-way life (waiting -> offered |
//! cancelled | lapsed; offered -> lapsed when its hold is released or expires, or cancelled)
//! and the rules; the allocator (`src/alloc/waitlist*.rs`) applies them under the deal's
//! waitlist lock.

use crate::deal::{DealSpec, NewDeal};
use crate::draw::DrawSeed;
use crate::error::Invalid;
use crate::ids::{DealId, EntrySeq, HoldSeq, UserId};
use crate::limits::{DRAW_WINDOW_MS_MAX, DRAW_WINDOW_MS_MIN, HOLD_TTL_MS_MIN, WAITLIST_MAX};

/// A deal's waitlist settings (kept beside its [`DealSpec`], logged with it at creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DealOptions {
    /// Entries that may wait at once; 0 = no waitlist.
    pub waitlist_max: u32,
    /// The TTL of a hold offered to a waiting entry.
    pub offer_ttl_ms: u64,
    /// Reserves from `starts_at` for this long enter the draw (`draw.rs`).
    pub draw_window_ms: Option<u64>,
    /// The draw's secret seed (with `draw_window_ms`), revealed once the draw is done.
    pub draw_seed: Option<DrawSeed>,
}

impl DealOptions {
    /// A deal without a waitlist (every deal created before waitlists existed).
    pub fn none(spec: &DealSpec) -> Self {
        DealOptions {
            waitlist_max: 0,
            offer_ttl_ms: spec.hold_ttl_ms,
            draw_window_ms: None,
            draw_seed: None,
        }
    }

    /// Validates the options of a deal being created and fills the defaults.
    pub fn new(new: &NewDeal, spec: &DealSpec) -> Result<Self, Invalid> {
        let waitlist_max = new.waitlist_max.unwrap_or(0);
        if waitlist_max > WAITLIST_MAX {
            return Err(Invalid(format!("waitlist_max: at most {WAITLIST_MAX}")));
        }
        if waitlist_max == 0 && new.offer_ttl_ms.is_some() {
            return Err(Invalid("offer_ttl_ms: the deal has no waitlist (waitlist_max)".into()));
        }
        let offer_ttl_ms = new.offer_ttl_ms.unwrap_or(spec.hold_ttl_ms);
        if !(HOLD_TTL_MS_MIN..=spec.hold_ttl_ms_max).contains(&offer_ttl_ms) {
            return Err(Invalid(format!(
                "offer_ttl_ms: must be between {HOLD_TTL_MS_MIN} and hold_ttl_ms_max ({})",
                spec.hold_ttl_ms_max
            )));
        }
        let draw_window_ms = new.draw_window_ms;
        if let Some(window) = draw_window_ms {
            if !(DRAW_WINDOW_MS_MIN..=DRAW_WINDOW_MS_MAX).contains(&window) {
                return Err(Invalid(format!(
                    "draw_window_ms: must be between {DRAW_WINDOW_MS_MIN} and {DRAW_WINDOW_MS_MAX}"
                )));
            }
            let Some(starts_at_ms) = spec.starts_at_ms else {
                return Err(Invalid("draw_window_ms: the deal needs a starts_at".into()));
            };
            if spec.ends_at_ms.is_some_and(|end| end <= starts_at_ms.saturating_add(window)) {
                return Err(Invalid("draw_window_ms: the window must close before ends_at".into()));
            }
            if new.draw_seed.is_none() {
                return Err(Invalid("draw_window_ms: no draw seed was chosen".into()));
            }
        } else if new.draw_seed.is_some() {
            return Err(Invalid("draw seed without draw_window_ms".into()));
        }
        Ok(DealOptions { waitlist_max, offer_ttl_ms, draw_window_ms, draw_seed: new.draw_seed })
    }

    /// When the draw window closes, for a deal with a draw.
    pub fn draw_closes_at_ms(&self, spec: &DealSpec) -> Option<u64> {
        let window = self.draw_window_ms?;
        Some(spec.starts_at_ms?.saturating_add(window))
    }

    pub fn has_draw(&self) -> bool {
        self.draw_window_ms.is_some()
    }

    /// Whether the deal keeps entries at all (a waitlist or a draw).
    pub fn keeps_entries(&self) -> bool {
        self.has_waitlist() || self.has_draw()
    }

    /// Whether options read from outside (log, checkpoint) are ones `new` could have made.
    pub fn is_valid(&self, spec: &DealSpec) -> bool {
        let new = NewDeal {
            waitlist_max: Some(self.waitlist_max),
            offer_ttl_ms: (self.waitlist_max > 0).then_some(self.offer_ttl_ms),
            draw_window_ms: self.draw_window_ms,
            draw_seed: self.draw_seed,
            ..NewDeal::of_spec(spec, 0)
        };
        DealOptions::new(&new, spec).as_ref() == Ok(self)
            && (self.waitlist_max > 0 || self.offer_ttl_ms == spec.hold_ttl_ms)
    }

    pub fn has_waitlist(&self) -> bool {
        self.waitlist_max > 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EntryState {
    Waiting,
    Offered,
    Cancelled,
    Lapsed,
    /// In a deal's draw, during its window (not yet in any order).
    Entered,
    /// Not drawn, on a deal without a waitlist (or past `waitlist_max` of it).
    Lost,
}

impl EntryState {
    pub const ALL: [EntryState; 6] = [
        EntryState::Waiting,
        EntryState::Offered,
        EntryState::Cancelled,
        EntryState::Lapsed,
        EntryState::Entered,
        EntryState::Lost,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EntryState::Waiting => "waiting",
            EntryState::Offered => "offered",
            EntryState::Cancelled => "cancelled",
            EntryState::Lapsed => "lapsed",
            EntryState::Entered => "entered",
            EntryState::Lost => "lost",
        }
    }

    pub fn parse(raw: &str) -> Option<EntryState> {
        EntryState::ALL.into_iter().find(|state| state.as_str() == raw)
    }
}

/// One user's place on one deal's waitlist.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WaitEntry {
    pub seq: EntrySeq,
    pub deal_id: DealId,
    pub user_id: UserId,
    pub qty: u32,
    pub created_at_ms: u64,
    pub state: EntryState,
    /// The hold offered to this entry, once offered.
    pub hold: Option<HoldSeq>,
    /// When it left `waiting` for good: cancelled, lapsed (an offered entry's hold is resolved
    /// by its own hold's time).
    pub resolved_at_ms: Option<u64>,
}

impl WaitEntry {
    /// The entry is served: its offer is `hold`.
    pub fn offer(&mut self, hold: HoldSeq) {
        assert_eq!(self.state, EntryState::Waiting, "entry {:?} offered twice", self.seq);
        self.state = EntryState::Offered;
        self.hold = Some(hold);
    }

    /// Its offer was released or expired, the deal ended while it waited, or the user's limit
    /// was full when its turn came.
    pub fn lapse(&mut self, at_ms: u64) {
        assert!(
            matches!(self.state, EntryState::Waiting | EntryState::Offered | EntryState::Entered),
            "entry {:?} lapses from {:?}",
            self.seq,
            self.state
        );
        self.state = EntryState::Lapsed;
        self.resolved_at_ms = Some(at_ms);
    }

    /// The draw did not serve it and there is no place on a waitlist for it.
    pub fn lose(&mut self, at_ms: u64) {
        assert_eq!(
            self.state,
            EntryState::Waiting,
            "entry {:?} lost from {:?}",
            self.seq,
            self.state
        );
        self.state = EntryState::Lost;
        self.resolved_at_ms = Some(at_ms);
    }

    pub fn cancel(&mut self, at_ms: u64) {
        assert_ne!(self.state, EntryState::Cancelled, "entry {:?} cancelled twice", self.seq);
        self.state = EntryState::Cancelled;
        self.resolved_at_ms = Some(at_ms);
    }

    /// Entered, waiting or offered: the user's one entry on this deal (a second join answers
    /// it).
    pub fn is_active(&self) -> bool {
        matches!(self.state, EntryState::Waiting | EntryState::Offered | EntryState::Entered)
    }
}

/// What a cancel does to an entry in `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelDecision {
    /// Waiting: leaves the queue.
    Leave,
    /// Offered: its hold (if still held) is released and passes on; the entry is cancelled.
    GiveUpOffer,
    /// Already cancelled: the same answer again (a retry).
    AlreadyDone,
}

pub fn decide_cancel(state: EntryState) -> Result<CancelDecision, crate::error::WaitlistError> {
    match state {
        EntryState::Waiting | EntryState::Entered => Ok(CancelDecision::Leave),
        EntryState::Offered => Ok(CancelDecision::GiveUpOffer),
        EntryState::Cancelled => Ok(CancelDecision::AlreadyDone),
        EntryState::Lapsed | EntryState::Lost => Err(crate::error::WaitlistError::Lapsed),
    }
}

/// The distribution rule: the first waiting entry, in queue order, whose `qty` fits in `free`
/// units. `None` when no waiting entry fits (then what is free goes to anyone).
pub fn first_fit<'a>(
    waiting: impl IntoIterator<Item = (EntrySeq, u32)> + 'a,
    free: u64,
) -> Option<(EntrySeq, u32)> {
    waiting.into_iter().find(|(_, qty)| u64::from(*qty) <= free)
}

/// An entry as a caller sees it: with its place in the queue while it waits, and whether this
/// answer made it (a join answers 202 for a new entry, 200 for the user's existing one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub entry: WaitEntry,
    /// 1 for the head of the queue; `None` unless waiting.
    pub position: Option<u64>,
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::HOLD_TTL_MS_MAX;

    const T0: u64 = 1_800_000_000_000;

    fn new_deal() -> NewDeal {
        NewDeal {
            id: DealId::parse("d1").unwrap(),
            stream_id: None,
            stock: 10,
            starts_at_ms: None,
            ends_at_ms: None,
            per_user_limit: None,
            hold_ttl_ms: Some(60_000),
            hold_ttl_ms_max: Some(120_000),
            waitlist_max: Some(100),
            offer_ttl_ms: None,
            draw_window_ms: None,
            draw_seed: None,
        }
    }

    #[test]
    fn options_default_and_validate() {
        let new = new_deal();
        let spec = DealSpec::new(&new, T0).unwrap();
        let options = DealOptions::new(&new, &spec).unwrap();
        assert_eq!(
            options,
            DealOptions {
                waitlist_max: 100,
                offer_ttl_ms: 60_000,
                draw_window_ms: None,
                draw_seed: None
            }
        );
        assert!(options.is_valid(&spec));
        assert!(DealOptions::none(&spec).is_valid(&spec));
        let too_long = NewDeal { offer_ttl_ms: Some(HOLD_TTL_MS_MAX), ..new_deal() };
        assert!(DealOptions::new(&too_long, &spec).is_err());
        let no_list = NewDeal { waitlist_max: None, offer_ttl_ms: Some(5_000), ..new_deal() };
        assert!(DealOptions::new(&no_list, &spec).is_err());
        let huge = NewDeal { waitlist_max: Some(WAITLIST_MAX + 1), ..new_deal() };
        assert!(DealOptions::new(&huge, &spec).is_err());
        assert!(!DealOptions { offer_ttl_ms: 5_000, ..DealOptions::none(&spec) }.is_valid(&spec));
        // A draw needs a start, a window that closes before the end, and a seed.
        let draw = NewDeal { draw_window_ms: Some(10_000), draw_seed: Some([1; 32]), ..new_deal() };
        assert!(DealOptions::new(&draw, &spec).is_err(), "no starts_at");
        let starting = NewDeal { starts_at_ms: Some(T0 + 1_000), ..draw.clone() };
        let spec = DealSpec::new(&starting, T0).unwrap();
        let options = DealOptions::new(&starting, &spec).unwrap();
        assert!(options.is_valid(&spec));
        assert_eq!(options.draw_closes_at_ms(&spec), Some(T0 + 11_000));
        let no_seed = NewDeal { draw_seed: None, ..starting.clone() };
        assert!(DealOptions::new(&no_seed, &spec).is_err());
        let ending = NewDeal { ends_at_ms: Some(T0 + 11_000), ..starting.clone() };
        let spec_ending = DealSpec::new(&ending, T0).unwrap();
        assert!(DealOptions::new(&ending, &spec_ending).is_err(), "the window outlives the deal");
    }

    #[test]
    fn first_fit_serves_in_order_and_skips_what_does_not_fit() {
        let queue = [(EntrySeq(1), 3), (EntrySeq(2), 1), (EntrySeq(3), 2)];
        assert_eq!(first_fit(queue, 3), Some((EntrySeq(1), 3)));
        assert_eq!(first_fit(queue, 2), Some((EntrySeq(2), 1)));
        assert_eq!(first_fit(queue, 0), None);
        assert_eq!(first_fit([(EntrySeq(1), 3)], 2), None);
    }

    #[test]
    fn an_entry_lives_one_way() {
        let mut e = WaitEntry {
            seq: EntrySeq(1),
            deal_id: DealId::parse("d1").unwrap(),
            user_id: UserId::parse("u").unwrap(),
            qty: 1,
            created_at_ms: T0,
            state: EntryState::Waiting,
            hold: None,
            resolved_at_ms: None,
        };
        assert_eq!(decide_cancel(e.state), Ok(CancelDecision::Leave));
        e.offer(HoldSeq(7));
        assert_eq!(decide_cancel(e.state), Ok(CancelDecision::GiveUpOffer));
        e.lapse(T0 + 1);
        assert!(decide_cancel(e.state).is_err());
        assert!(!e.is_active());
        for state in EntryState::ALL {
            assert_eq!(EntryState::parse(state.as_str()), Some(state));
        }
    }
}
