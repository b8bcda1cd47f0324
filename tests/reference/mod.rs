//! The reference model of the allocator, and the step-by-step comparison against the real one.
//!
//! Shared by the model-based property test (`tests/model.rs`, which generates [`Op`]s with
//! proptest) and the fuzz target `fuzz/fuzz_targets/commands_vs_model.rs` (which decodes them
//! from the fuzzer's bytes); both include this file with `mod reference;`, so it depends on
//! neither proptest nor arbitrary. [`run`] applies a sequence of ops to a fresh allocator and
//! to the model, compares their answers and whole state after every step, then replays the
//! event log into a fresh allocator and restores a snapshot, and compares again. A
//! disagreement comes back as a [`Mismatch`] that says what differed.
//!
//! The model is deliberately naive (maps and loops, one thread, the rules written out from
//! `core::deal`, `core::hold` and `alloc`), so that a disagreement points at the allocator or at
//! a rule that changed without the model being told.

use std::collections::BTreeMap;
use std::fmt;

use livestock::alloc::{Allocator, AllocatorConfig, DrawRecord};
use livestock_core::command::{Command, HoldView, Line, Outcome, Reserve};
use livestock_core::deal::{DealState, DealView, NewDeal};
use livestock_core::draw::{draw_order, DrawSeed};
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::event::{Event, EventLog};
use livestock_core::hold::HoldState;
use livestock_core::ids::{DealId, EntrySeq, HoldIdKey, HoldSeq, StreamId, UserId};
use livestock_core::limits::{
    CART_LINES_MAX, DEAL_STOCK_UNITS_MAX, HOLD_QTY_MAX, HOLD_TTL_MS_DEFAULT, HOLD_TTL_MS_MAX,
    HOLD_TTL_MS_MIN, TIMESTAMP_MS_MAX, TIMESTAMP_MS_MIN, WAITLIST_MAX,
};
use livestock_core::limits::{DRAW_WINDOW_MS_MAX, DRAW_WINDOW_MS_MIN};
use livestock_core::waitlist::{EntryState, EntryView};

/// The clock at the start of every sequence: 2027-01-15T08:00:00Z.
pub const T0_MS: u64 = 1_800_000_000_000;
/// Short enough that resolved holds are forgotten within a sequence, so lookups of forgotten
/// holds (unknown_hold) are exercised too.
pub const RETENTION_MS: u64 = 90_000;
pub const HOLD_ID_KEY: HoldIdKey = HoldIdKey(0x5EED_0F11_FE00_0001);
/// Deals the sequences may create; `ghost` is never created.
pub const DEAL_IDS: [&str; 4] = ["d0", "d1", "d2", "ghost"];
pub const DEALS_CREATABLE: usize = 3;
/// Streams deals may belong to; `s-ghost` never has a deal.
pub const STREAM_IDS: [&str; 3] = ["s0", "s1", "s-ghost"];
pub const STREAMS_USED: usize = 2;
pub const USER_IDS: [&str; 4] = ["u0", "u1", "u2", "u3"];
/// A hold or entry reference past `HOLD_BACK_GHOST` names this never-issued sequence.
pub const GHOST_HOLD: u64 = 1 << 40;
/// A hold reference of exactly `HOLD_BACK_GHOST` names the latest waitlist entry's number (a
/// number that is an entry, not a hold), and an entry reference of exactly it the latest
/// hold's: holds and entries are numbered from one sequence, and neither may be taken for the
/// other. Past it, both name `GHOST_HOLD`.
pub const HOLD_BACK_GHOST: usize = 60;
/// The hold-expiry shards of the allocator (`livestock_core::limits::SHARDS`): the reaper
/// expires due holds shard by shard (a hold's shard is its number modulo this), and within a
/// shard by (expiry, number); each expiry's units are handed on to a waitlist before the next.
/// The order matters once freed units make offers (they take numbers, and a user's limit
/// counts at offer time), so the model walks due holds in the same order.
pub const EXPIRY_SHARDS: u64 = 64;

// ------------------------------------------------------------------------------------- ops

/// One step of a sequence. Indices pick from `DEAL_IDS`, `STREAM_IDS` and `USER_IDS`, and the
/// generators (proptest strategies, the fuzz decoder) keep them in range. Other numbers may be
/// anything, except that the clock must stay far from `u64::MAX`: `Advance` moves it by days
/// at most.
#[derive(Clone, Debug)]
pub enum Op {
    CreateDeal {
        deal: usize,
        stream: Option<usize>,
        stock: u64,
        starts_at_ms: Option<u64>,
        ends_at_ms: Option<u64>,
        per_user_limit: Option<u32>,
        hold_ttl_ms: Option<u64>,
        hold_ttl_ms_max: Option<u64>,
        /// `None` or `Some(0)`: no waitlist.
        waitlist_max: Option<u32>,
        offer_ttl_ms: Option<u64>,
        /// A draw window from `starts_at_ms` (valid with a seed, a start, and an end after it).
        draw_window_ms: Option<u64>,
        draw_seed: Option<DrawSeed>,
    },
    /// `waitlist`: join the deal's waitlist if it cannot serve the reserve for want of stock.
    Reserve {
        user: usize,
        deal: usize,
        qty: u32,
        ttl_ms: Option<u64>,
        waitlist: bool,
    },
    /// `waitlist` is carried but a cart never joins a waitlist.
    Cart {
        user: usize,
        lines: Vec<(usize, u32)>,
        ttl_ms: Option<u64>,
        waitlist: bool,
    },
    /// `hold` counts back from the latest hold made (modulo their number); from
    /// `HOLD_BACK_GHOST` on it names a hold that never existed.
    Confirm {
        hold: usize,
        qty: Option<u32>,
    },
    Release {
        hold: usize,
    },
    Extend {
        hold: usize,
        ttl_ms: u64,
    },
    /// Move the clock; `reap` runs the reaper at the new instant (without it, holds past their
    /// expiry stay recorded as held, which callers must already see as expired).
    Advance {
        ms: u64,
        reap: bool,
    },
    AdjustStock {
        deal: usize,
        delta: i64,
    },
    Pause(usize),
    Resume(usize),
    EndDeal(usize),
    EndStream(usize),
    /// `entry` counts back from the latest waitlist entry made, as `hold` does for holds.
    CancelEntry {
        entry: usize,
    },
}

// -------------------------------------------------------------------------------- mismatch

/// Where the allocator and the model (or the live allocator and its replay) disagree, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch(pub String);

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Mismatch {}

/// `prop_assert_eq!` without proptest: returns a [`Mismatch`] naming both expressions, their
/// values and the line.
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {
        ensure_eq!($left, $right, "values differ")
    };
    ($left:expr, $right:expr, $($what:tt)+) => {
        match (&$left, &$right) {
            (left, right) => {
                if left != right {
                    return Err(Mismatch(format!(
                        "{} at {}:{}\n  {} = {:?}\n  {} = {:?}",
                        format!($($what)+),
                        file!(),
                        line!(),
                        stringify!($left),
                        left,
                        stringify!($right),
                        right,
                    )));
                }
            }
        }
    };
}

/// `prop_assert!` without proptest.
macro_rules! ensure {
    ($cond:expr) => {
        if !$cond {
            return Err(Mismatch(format!(
                "{} is false at {}:{}",
                stringify!($cond),
                file!(),
                line!()
            )));
        }
    };
}

// ----------------------------------------------------------------------------------- model

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Open,
    Paused,
    Ended,
}

#[derive(Clone, Debug)]
struct ModelDeal {
    id: String,
    stream: Option<String>,
    starts_at_ms: Option<u64>,
    ends_at_ms: Option<u64>,
    per_user_limit: Option<u32>,
    hold_ttl_ms: u64,
    hold_ttl_ms_max: u64,
    created_at_ms: u64,
    life: Life,
    available: u64,
    held: u64,
    sold: u64,
    /// 0: no waitlist.
    waitlist_max: u32,
    offer_ttl_ms: u64,
    draw_window_ms: Option<u64>,
    draw_seed: Option<DrawSeed>,
    /// A draw not done yet (its window open, or closed and not drawn); false without a draw.
    draw_pending: bool,
    /// The draw, once done.
    draw: Option<ModelDraw>,
}

/// A draw as it was done (`DrawRecord`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelDraw {
    at_ms: u64,
    units: u64,
    /// (entry, user, qty) in log order.
    entrants: Vec<(u64, String, u32)>,
    order: Vec<u32>,
    winners: Vec<u64>,
    closed: bool,
}

#[derive(Clone, Debug)]
struct ModelHold {
    seq: u64,
    deal: String,
    user: String,
    qty: u32,
    created_at_ms: u64,
    expires_at_ms: u64,
    state: HoldState,
    confirmed_qty: u32,
    resolved_at_ms: Option<u64>,
    /// Dropped from the allocator after its retention; its sold units still count for its user.
    forgotten: bool,
    /// The waitlist entry it was offered to.
    origin: Option<u64>,
}

/// A waitlist entry. Waiting entries of a deal are served in the order they started waiting
/// (entries join at the back and never go back in; a draw enqueues its entrants in draw order),
/// so the queue is not kept: it is the waiting entries, sorted by `order`.
#[derive(Clone, Debug)]
struct ModelEntry {
    seq: u64,
    /// When it started waiting (a number from `Model::next_order`); 0 before that.
    order: u64,
    deal: String,
    user: String,
    qty: u32,
    created_at_ms: u64,
    state: EntryState,
    hold: Option<u64>,
    resolved_at_ms: Option<u64>,
    /// Dropped after its retention (from when it was cancelled or lapsed, or its offer was
    /// confirmed).
    forgotten: bool,
}

impl ModelHold {
    fn visible(&self, now_ms: u64) -> HoldState {
        if self.state == HoldState::Held && now_ms >= self.expires_at_ms {
            HoldState::Expired
        } else {
            self.state
        }
    }
}

/// What the model says a successful command answers; compared with the real outcome against
/// the model's state after the step.
#[derive(Debug)]
enum Expect {
    Deal(String),
    StreamEnded { stream: String, deals: Vec<String>, released: usize },
    Holds(Vec<u64>),
    Hold(u64),
    Entry { seq: u64, created: bool },
}

type Answer = Result<Expect, ErrorCode>;

#[derive(Clone)]
struct Model {
    now_ms: u64,
    deals: BTreeMap<String, ModelDeal>,
    holds: BTreeMap<u64, ModelHold>,
    entries: BTreeMap<u64, ModelEntry>,
    /// Numbers holds and entries alike.
    next_seq: u64,
    /// Orders waiting entries (`ModelEntry::order`).
    next_order: u64,
    /// How many events the allocator should have logged so far.
    events: usize,
    /// What the model went through that an answer does not show (draws and how they came).
    notes: Coverage,
}

impl Model {
    fn new() -> Self {
        Model {
            now_ms: T0_MS,
            deals: BTreeMap::new(),
            holds: BTreeMap::new(),
            entries: BTreeMap::new(),
            next_seq: 1,
            next_order: 1,
            events: 0,
            notes: Coverage::default(),
        }
    }

    /// The `back`-th latest of `numbers` (modulo their count); see `HOLD_BACK_GHOST` for the
    /// references past them (`other`: the latest number of the other kind).
    fn counted_back<'a>(
        numbers: impl DoubleEndedIterator<Item = &'a u64> + ExactSizeIterator,
        other: Option<u64>,
        back: usize,
    ) -> u64 {
        if back == HOLD_BACK_GHOST {
            return other.unwrap_or(GHOST_HOLD);
        }
        let len = numbers.len();
        if back > HOLD_BACK_GHOST || len == 0 {
            return GHOST_HOLD;
        }
        numbers.rev().nth(back % len).copied().unwrap_or(GHOST_HOLD)
    }

    fn hold_seq(&self, back: usize) -> u64 {
        Self::counted_back(self.holds.keys(), self.entries.keys().next_back().copied(), back)
    }

    fn entry_seq(&self, back: usize) -> u64 {
        Self::counted_back(self.entries.keys(), self.holds.keys().next_back().copied(), back)
    }

    /// An entry the allocator still remembers.
    fn known_entry(&self, seq: u64) -> Option<&ModelEntry> {
        self.entries.get(&seq).filter(|e| !e.forgotten)
    }

    /// The waiting entries of a deal in serving order: (number, user, qty).
    fn waiting(&self, deal: &str) -> Vec<(u64, String, u32)> {
        let mut waiting: Vec<&ModelEntry> = self
            .entries
            .values()
            .filter(|e| e.deal == deal && e.state == EntryState::Waiting)
            .collect();
        waiting.sort_by_key(|e| e.order);
        waiting.into_iter().map(|e| (e.seq, e.user.clone(), e.qty)).collect()
    }

    /// 1 for the head of its deal's queue; `None` unless waiting.
    fn position(&self, seq: u64) -> Option<u64> {
        let e = self.entries.get(&seq)?;
        if e.state != EntryState::Waiting {
            return None;
        }
        let ahead = self.waiting(&e.deal).iter().take_while(|(s, _, _)| *s != seq).count();
        Some(ahead as u64 + 1)
    }

    /// The user's active entry on the deal: waiting, or offered with its hold still recorded
    /// as held (a hold past its expiry that the reaper has not expired yet still counts, as it
    /// still counts against the user's limit).
    fn active_entry(&self, deal: &str, user: &str) -> Option<u64> {
        self.entries
            .values()
            .filter(|e| e.deal == deal && e.user == user)
            .find(|e| match e.state {
                EntryState::Waiting | EntryState::Entered => true,
                EntryState::Offered => e
                    .hold
                    .and_then(|h| self.holds.get(&h))
                    .is_some_and(|h| h.state == HoldState::Held),
                EntryState::Cancelled | EntryState::Lapsed | EntryState::Lost => false,
            })
            .map(|e| e.seq)
    }

    /// Whether the deal hands out offers now: not ended (by an admin or its window), not
    /// paused, started.
    fn takes_offers(&self, d: &ModelDeal) -> bool {
        d.life == Life::Open && self.state(d) == DealState::Live
    }

    /// Ends an entry's wait or offer.
    fn close_entry(&mut self, seq: u64, state: EntryState) {
        let now = self.now_ms;
        let Some(e) = self.entries.get_mut(&seq) else { panic!("model: no entry {seq}") };
        e.state = state;
        e.resolved_at_ms = Some(now);
    }

    /// Units came back to a deal (they are in `available` already): while the deal takes
    /// offers, the first waiting entry in queue order whose quantity fits in what is available
    /// is served a hold of its quantity with the deal's offer TTL, unless its user's limit
    /// cannot take that many more (then it lapses); again until no waiting entry fits.
    fn hand_on(&mut self, id: &str) {
        loop {
            let Some(d) = self.deals.get(id) else { panic!("model: no deal {id}") };
            // A draw offers to its entrants whether or not the deal keeps a waitlist after it.
            let drawing = d.draw.as_ref().is_some_and(|draw| !draw.closed);
            if (d.waitlist_max == 0 && !drawing) || !self.takes_offers(d) {
                return;
            }
            let (available, limit, ttl) = (d.available, d.per_user_limit, d.offer_ttl_ms);
            let waiting = self.waiting(id);
            let Some((entry, user, qty)) =
                waiting.into_iter().find(|(_, _, qty)| u64::from(*qty) <= available)
            else {
                return;
            };
            if limit.is_some_and(|limit| self.taken(id, &user) + qty > limit) {
                self.close_entry(entry, EntryState::Lapsed);
                self.events += 1;
                continue;
            }
            let now = self.now_ms;
            let Some(d) = self.deals.get_mut(id) else { panic!("model: no deal {id}") };
            d.available -= u64::from(qty);
            d.held += u64::from(qty);
            let seq = self.next_seq;
            self.next_seq += 1;
            let hold = ModelHold {
                seq,
                deal: id.to_string(),
                user,
                qty,
                created_at_ms: now,
                expires_at_ms: now + ttl,
                state: HoldState::Held,
                confirmed_qty: 0,
                resolved_at_ms: None,
                forgotten: false,
                origin: Some(entry),
            };
            self.holds.insert(seq, hold);
            let Some(e) = self.entries.get_mut(&entry) else { panic!("model: no entry {entry}") };
            e.state = EntryState::Offered;
            e.hold = Some(seq);
            self.events += 1;
            if let Some(draw) = self.deals.get_mut(id).and_then(|d| d.draw.as_mut()) {
                if !draw.closed {
                    draw.winners.push(entry);
                }
            }
        }
    }

    /// When a deal's draw window closes, for a deal with a draw.
    fn draw_closes_at(d: &ModelDeal) -> Option<u64> {
        Some(d.starts_at_ms?.saturating_add(d.draw_window_ms?))
    }

    /// Whether the deal's draw is due: pending, its window closed, the deal open.
    fn draw_due(&self, d: &ModelDeal) -> bool {
        d.draw_pending
            && Self::draw_closes_at(d).is_some_and(|at| self.now_ms >= at)
            && self.takes_offers(d)
    }

    /// The draw, written out from docs/draw.md: the entries still entered, in log order, are
    /// ranked by the seed (`draw_order`, the published algorithm); they start waiting in that
    /// order; the available units are offered first fit in queue order (the winners); then the
    /// entries still waiting past `waitlist_max` are lost. `by` says what triggered it.
    fn draw(&mut self, id: &str, by: &'static str) {
        let now = self.now_ms;
        let Some(d) = self.deals.get(id) else { panic!("model: no deal {id}") };
        let Some(seed) = d.draw_seed else { panic!("model: deal {id} draws without a seed") };
        let (units, keep) = (d.available, d.waitlist_max as usize);
        let entrants: Vec<(u64, String, u32)> = self
            .entries
            .values()
            .filter(|e| e.deal == id && e.state == EntryState::Entered)
            .map(|e| (e.seq, e.user.clone(), e.qty))
            .collect();
        let order = draw_order(&seed, entrants.iter().map(|(_, user, _)| user.as_str()));
        for index in &order {
            let seq = entrants[*index].0;
            let order = self.next_order;
            self.next_order += 1;
            let Some(e) = self.entries.get_mut(&seq) else { panic!("model: no entry {seq}") };
            e.state = EntryState::Waiting;
            e.order = order;
        }
        let order = order.into_iter().map(|i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
        let Some(d) = self.deals.get_mut(id) else { panic!("model: no deal {id}") };
        d.draw = Some(ModelDraw {
            at_ms: now,
            units,
            entrants,
            order,
            winners: Vec::new(),
            closed: false,
        });
        self.events += 1; // Drawn
        self.hand_on(id);
        let waiting = self.waiting(id);
        for (seq, _, _) in waiting.iter().skip(keep) {
            self.close_entry(*seq, EntryState::Lost);
            self.notes.add("drawn: lost");
        }
        for _ in waiting.iter().take(keep) {
            self.notes.add("drawn: loser waiting");
        }
        let Some(d) = self.deals.get_mut(id) else { panic!("model: no deal {id}") };
        d.draw_pending = false;
        let winners = d.draw.as_ref().map_or(0, |draw| draw.winners.len());
        if let Some(draw) = d.draw.as_mut() {
            draw.closed = true;
        }
        self.events += 1; // DrawClosed
        self.notes.add(by);
        for _ in 0..winners {
            self.notes.add("drawn: winner offered");
        }
    }

    /// A hold the allocator still remembers.
    fn known_hold(&self, seq: u64) -> Option<&ModelHold> {
        self.holds.get(&seq).filter(|h| !h.forgotten)
    }

    /// Held plus bought units of a user in a deal, forgotten holds included.
    fn taken(&self, deal: &str, user: &str) -> u32 {
        self.holds
            .values()
            .filter(|h| h.deal == deal && h.user == user)
            .map(|h| match h.state {
                HoldState::Held => h.qty,
                HoldState::Confirmed => h.confirmed_qty,
                HoldState::Released | HoldState::Expired => 0,
            })
            .sum()
    }

    fn state(&self, d: &ModelDeal) -> DealState {
        let now = self.now_ms;
        if d.life == Life::Ended || d.ends_at_ms.is_some_and(|e| now >= e) {
            DealState::Ended
        } else if d.life == Life::Paused {
            DealState::Paused
        } else if d.starts_at_ms.is_some_and(|s| now < s) {
            DealState::Scheduled
        } else {
            DealState::Live
        }
    }

    /// Moves a resolved hold's units: `sold` to sold, the rest back to available.
    fn settle(&mut self, seq: u64, state: HoldState, sold: u32) {
        let now = self.now_ms;
        let Some(h) = self.holds.get_mut(&seq) else { panic!("model: no hold {seq}") };
        assert_eq!(h.state, HoldState::Held, "model resolves hold {seq} twice");
        h.state = state;
        h.confirmed_qty = sold;
        h.resolved_at_ms = Some(now);
        let (deal, qty, origin) = (h.deal.clone(), h.qty, h.origin);
        let Some(d) = self.deals.get_mut(&deal) else { panic!("model: no deal {deal}") };
        d.held -= u64::from(qty);
        d.sold += u64::from(sold);
        d.available += u64::from(qty - sold);
        // An offer released or expired lapses its entry (no event of its own); a confirmed one
        // leaves it offered; a cancelled entry gave its offer up and stays cancelled.
        if let Some(entry) = origin {
            let offered = self.entries.get(&entry).map(|e| e.state) == Some(EntryState::Offered);
            if offered && state != HoldState::Confirmed {
                self.close_entry(entry, EntryState::Lapsed);
            }
        }
    }

    /// A resolved hold's units came back: to its deal's waitlist first.
    fn given_back(&mut self, seq: u64) {
        let Some(deal) = self.holds.get(&seq).map(|h| h.deal.clone()) else {
            panic!("model: no hold {seq}")
        };
        self.hand_on(&deal);
    }

    #[expect(clippy::too_many_arguments, reason = "one argument per field of a new deal")]
    fn create(
        &mut self,
        id: &str,
        stream: Option<&str>,
        stock: u64,
        starts_at_ms: Option<u64>,
        ends_at_ms: Option<u64>,
        per_user_limit: Option<u32>,
        hold_ttl_ms: Option<u64>,
        hold_ttl_ms_max: Option<u64>,
        waitlist_max: Option<u32>,
        offer_ttl_ms: Option<u64>,
        draw_window_ms: Option<u64>,
        draw_seed: Option<DrawSeed>,
    ) -> Answer {
        let timestamp_ok = |ms: u64| (TIMESTAMP_MS_MIN..=TIMESTAMP_MS_MAX).contains(&ms);
        if stock > DEAL_STOCK_UNITS_MAX {
            return Err(ErrorCode::InvalidRequest);
        }
        if starts_at_ms.is_some_and(|s| !timestamp_ok(s)) {
            return Err(ErrorCode::InvalidRequest);
        }
        if let Some(e) = ends_at_ms {
            if !timestamp_ok(e) || starts_at_ms.is_some_and(|s| e <= s) {
                return Err(ErrorCode::InvalidRequest);
            }
        }
        if per_user_limit == Some(0) {
            return Err(ErrorCode::InvalidRequest);
        }
        let ttl_max = hold_ttl_ms_max.unwrap_or(HOLD_TTL_MS_MAX);
        if !(HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX).contains(&ttl_max) {
            return Err(ErrorCode::InvalidRequest);
        }
        let ttl = hold_ttl_ms.unwrap_or(if HOLD_TTL_MS_DEFAULT < ttl_max {
            HOLD_TTL_MS_DEFAULT
        } else {
            ttl_max
        });
        if !(HOLD_TTL_MS_MIN..=ttl_max).contains(&ttl) {
            return Err(ErrorCode::InvalidRequest);
        }
        // The waitlist: at most WAITLIST_MAX; an offer TTL only with a waitlist, within the
        // bounds of a hold's TTL (defaulting to the deal's hold TTL).
        let waitlist_max = waitlist_max.unwrap_or(0);
        if waitlist_max > WAITLIST_MAX || (waitlist_max == 0 && offer_ttl_ms.is_some()) {
            return Err(ErrorCode::InvalidRequest);
        }
        let offer_ttl = offer_ttl_ms.unwrap_or(ttl);
        if !(HOLD_TTL_MS_MIN..=ttl_max).contains(&offer_ttl) {
            return Err(ErrorCode::InvalidRequest);
        }
        // A window already over at creation is a mistake, not a deal.
        if ends_at_ms.is_some_and(|e| e <= self.now_ms) {
            return Err(ErrorCode::InvalidRequest);
        }
        // A draw: a window within bounds, from a start, closing before the end; a seed exactly
        // when there is a window.
        match (draw_window_ms, starts_at_ms) {
            (None, _) if draw_seed.is_some() => return Err(ErrorCode::InvalidRequest),
            (None, _) => {}
            (Some(_), None) => return Err(ErrorCode::InvalidRequest),
            (Some(w), Some(s)) => {
                if !(DRAW_WINDOW_MS_MIN..=DRAW_WINDOW_MS_MAX).contains(&w)
                    || ends_at_ms.is_some_and(|e| e <= s.saturating_add(w))
                    || draw_seed.is_none()
                {
                    return Err(ErrorCode::InvalidRequest);
                }
            }
        }
        if self.deals.contains_key(id) {
            return Err(ErrorCode::DealExists);
        }
        let deal = ModelDeal {
            id: id.to_string(),
            stream: stream.map(str::to_string),
            starts_at_ms,
            ends_at_ms,
            per_user_limit,
            hold_ttl_ms: ttl,
            hold_ttl_ms_max: ttl_max,
            created_at_ms: self.now_ms,
            life: Life::Open,
            available: stock,
            held: 0,
            sold: 0,
            waitlist_max,
            offer_ttl_ms: offer_ttl,
            draw_window_ms,
            draw_seed,
            draw_pending: draw_window_ms.is_some(),
            draw: None,
        };
        self.deals.insert(id.to_string(), deal);
        self.events += 1;
        Ok(Expect::Deal(id.to_string()))
    }

    fn reserve(&mut self, user: &str, lines: &[(&str, u32)], ttl_ms: Option<u64>) -> Answer {
        if lines.is_empty() || lines.len() > CART_LINES_MAX {
            return Err(ErrorCode::InvalidRequest);
        }
        let mut summed: Vec<(String, u32)> = Vec::new();
        for (deal, qty) in lines {
            if *qty == 0 || *qty > HOLD_QTY_MAX {
                return Err(ErrorCode::InvalidRequest);
            }
            match summed.iter_mut().find(|(d, _)| d.as_str() == *deal) {
                Some((_, total)) => *total += qty,
                None => summed.push((deal.to_string(), *qty)),
            }
        }
        if summed.iter().any(|(_, qty)| *qty > HOLD_QTY_MAX) {
            return Err(ErrorCode::InvalidRequest);
        }
        let now = self.now_ms;
        let mut ttls = Vec::new();
        for (id, qty) in &summed {
            let Some(d) = self.deals.get(id) else { return Err(ErrorCode::UnknownDeal) };
            // Ended, by an admin or by the clock, wins over paused.
            if d.life == Life::Ended || d.ends_at_ms.is_some_and(|e| now >= e) {
                return Err(ErrorCode::DealEnded);
            }
            if d.life == Life::Paused {
                return Err(ErrorCode::DealPaused);
            }
            if d.starts_at_ms.is_some_and(|s| now < s) {
                return Err(ErrorCode::DealNotStarted);
            }
            // A single reserve enters the draw, or draws (`reserve_or_join`); a cart is refused.
            if d.draw_pending {
                return Err(ErrorCode::DrawWindow);
            }
            if d.available == 0 {
                return Err(ErrorCode::SoldOut);
            }
            if d.available < u64::from(*qty) {
                return Err(ErrorCode::InsufficientStock);
            }
            let ttl = ttl_ms.unwrap_or(d.hold_ttl_ms);
            if !(HOLD_TTL_MS_MIN..=d.hold_ttl_ms_max).contains(&ttl) {
                return Err(ErrorCode::InvalidRequest);
            }
            ttls.push(ttl);
        }
        for (id, qty) in &summed {
            let limit = self.deals.get(id).and_then(|d| d.per_user_limit);
            if let Some(limit) = limit {
                if self.taken(id, user) + qty > limit {
                    return Err(ErrorCode::PerUserLimit);
                }
            }
        }
        let mut seqs = Vec::new();
        for ((id, qty), ttl) in summed.iter().zip(ttls) {
            let Some(d) = self.deals.get_mut(id) else { panic!("model: deal {id} vanished") };
            d.available -= u64::from(*qty);
            d.held += u64::from(*qty);
            let seq = self.next_seq;
            self.next_seq += 1;
            let hold = ModelHold {
                seq,
                deal: id.clone(),
                user: user.to_string(),
                qty: *qty,
                created_at_ms: now,
                expires_at_ms: now + ttl,
                state: HoldState::Held,
                confirmed_qty: 0,
                resolved_at_ms: None,
                forgotten: false,
                origin: None,
            };
            self.holds.insert(seq, hold);
            seqs.push(seq);
        }
        self.events += 1;
        Ok(Expect::Holds(seqs))
    }

    /// A single reserve, which joins the deal's waitlist if it asked to, the deal has one and
    /// cannot serve it for want of stock. Under the waitlist: the user's active entry is the
    /// answer; else a full waitlist refuses, then a user limit that the quantity would pass;
    /// else a new entry waits at the back.
    fn reserve_or_join(
        &mut self,
        user: &str,
        deal: &str,
        qty: u32,
        ttl_ms: Option<u64>,
        waitlist: bool,
    ) -> Answer {
        let refused = match self.reserve(user, &[(deal, qty)], ttl_ms) {
            Err(ErrorCode::DrawWindow) => {
                return self.draw_reserve(user, deal, qty, ttl_ms, waitlist)
            }
            Err(code @ (ErrorCode::SoldOut | ErrorCode::InsufficientStock)) => code,
            other => return other,
        };
        let Some(d) = self.deals.get(deal) else { panic!("model: a refusal of no deal {deal}") };
        if !waitlist || d.waitlist_max == 0 {
            return Err(refused);
        }
        // An invalid TTL is refused as such, not joined.
        let ttl = ttl_ms.unwrap_or(d.hold_ttl_ms);
        if !(HOLD_TTL_MS_MIN..=d.hold_ttl_ms_max).contains(&ttl) {
            return Err(ErrorCode::InvalidRequest);
        }
        let (max, limit) = (d.waitlist_max, d.per_user_limit);
        if let Some(seq) = self.active_entry(deal, user) {
            return Ok(Expect::Entry { seq, created: false });
        }
        if self.waiting(deal).len() >= max as usize {
            return Err(ErrorCode::WaitlistFull);
        }
        if limit.is_some_and(|limit| self.taken(deal, user) + qty > limit) {
            return Err(ErrorCode::PerUserLimit);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let order = self.next_order;
        self.next_order += 1;
        let entry = ModelEntry {
            seq,
            order,
            deal: deal.to_string(),
            user: user.to_string(),
            qty,
            created_at_ms: self.now_ms,
            state: EntryState::Waiting,
            hold: None,
            resolved_at_ms: None,
            forgotten: false,
        };
        self.entries.insert(seq, entry);
        self.events += 1;
        Ok(Expect::Entry { seq, created: true })
    }

    /// A single reserve of a deal whose draw is pending (and that is open): in the window, an
    /// entry (an invalid TTL refused, the user's entry answered, the user's limit checked,
    /// else a new entry `entered`); after it, the draw first, then the reserve as any other.
    fn draw_reserve(
        &mut self,
        user: &str,
        deal: &str,
        qty: u32,
        ttl_ms: Option<u64>,
        waitlist: bool,
    ) -> Answer {
        let Some(d) = self.deals.get(deal) else { panic!("model: a draw of no deal {deal}") };
        let closes_at = Self::draw_closes_at(d).unwrap_or(0);
        if self.now_ms >= closes_at {
            self.draw(deal, "drawn by a late reserve");
            return self.reserve_or_join(user, deal, qty, ttl_ms, waitlist);
        }
        let ttl = ttl_ms.unwrap_or(d.hold_ttl_ms);
        if !(HOLD_TTL_MS_MIN..=d.hold_ttl_ms_max).contains(&ttl) {
            return Err(ErrorCode::InvalidRequest);
        }
        let limit = d.per_user_limit;
        if let Some(seq) = self.active_entry(deal, user) {
            return Ok(Expect::Entry { seq, created: false });
        }
        if limit.is_some_and(|limit| self.taken(deal, user) + qty > limit) {
            return Err(ErrorCode::PerUserLimit);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = ModelEntry {
            seq,
            order: 0,
            deal: deal.to_string(),
            user: user.to_string(),
            qty,
            created_at_ms: self.now_ms,
            state: EntryState::Entered,
            hold: None,
            resolved_at_ms: None,
            forgotten: false,
        };
        self.entries.insert(seq, entry);
        self.events += 1;
        Ok(Expect::Entry { seq, created: true })
    }

    /// Leaves a waitlist: a waiting entry leaves the queue; an offered one whose hold is still
    /// live gives it up (released, its units handed on); a cancelled one answers again.
    fn cancel_entry(&mut self, seq: u64) -> Answer {
        let now = self.now_ms;
        let Some(e) = self.known_entry(seq) else { return Err(ErrorCode::UnknownEntry) };
        match e.state {
            EntryState::Cancelled => Ok(Expect::Entry { seq, created: false }),
            EntryState::Lapsed | EntryState::Lost => Err(ErrorCode::EntryLapsed),
            EntryState::Waiting | EntryState::Entered => {
                self.close_entry(seq, EntryState::Cancelled);
                self.events += 1;
                Ok(Expect::Entry { seq, created: false })
            }
            EntryState::Offered => {
                let Some(hold) = e.hold else { panic!("model: offered entry {seq} without hold") };
                match self.known_hold(hold).map(|h| h.visible(now)) {
                    Some(HoldState::Held) => {}
                    Some(HoldState::Confirmed) => return Err(ErrorCode::HoldConfirmed),
                    _ => return Err(ErrorCode::EntryLapsed),
                }
                self.close_entry(seq, EntryState::Cancelled);
                self.settle(hold, HoldState::Released, 0);
                self.events += 1;
                self.given_back(hold);
                Ok(Expect::Entry { seq, created: false })
            }
        }
    }

    /// The caller-facing error of a hold that is not live.
    fn dead(state: HoldState) -> ErrorCode {
        match state {
            HoldState::Confirmed => ErrorCode::HoldConfirmed,
            HoldState::Released => ErrorCode::HoldReleased,
            HoldState::Expired => ErrorCode::HoldExpired,
            HoldState::Held => panic!("a held hold is not dead"),
        }
    }

    fn confirm(&mut self, seq: u64, qty: Option<u32>) -> Answer {
        let now = self.now_ms;
        let Some(h) = self.known_hold(seq) else { return Err(ErrorCode::UnknownHold) };
        if h.state == HoldState::Confirmed {
            // A retry of the confirm that won, unless it asks for a different quantity.
            return match qty {
                Some(q) if q != h.confirmed_qty => Err(ErrorCode::HoldConfirmed),
                _ => Ok(Expect::Hold(seq)),
            };
        }
        let state = h.visible(now);
        if state != HoldState::Held {
            return Err(Self::dead(state));
        }
        let sold = qty.unwrap_or(h.qty);
        if sold == 0 || sold > h.qty {
            return Err(ErrorCode::InvalidRequest);
        }
        self.settle(seq, HoldState::Confirmed, sold);
        self.events += 1;
        self.given_back(seq);
        Ok(Expect::Hold(seq))
    }

    fn release(&mut self, seq: u64) -> Answer {
        let now = self.now_ms;
        let Some(h) = self.known_hold(seq) else { return Err(ErrorCode::UnknownHold) };
        if h.state == HoldState::Released {
            return Ok(Expect::Hold(seq));
        }
        let state = h.visible(now);
        if state != HoldState::Held {
            return Err(Self::dead(state));
        }
        self.settle(seq, HoldState::Released, 0);
        self.events += 1;
        self.given_back(seq);
        Ok(Expect::Hold(seq))
    }

    fn extend(&mut self, seq: u64, ttl_ms: u64) -> Answer {
        let now = self.now_ms;
        let Some(h) = self.known_hold(seq) else { return Err(ErrorCode::UnknownHold) };
        let state = h.visible(now);
        if state != HoldState::Held {
            return Err(Self::dead(state));
        }
        if ttl_ms < HOLD_TTL_MS_MIN {
            return Err(ErrorCode::InvalidRequest);
        }
        let Some(max_ms) = self.deals.get(&h.deal).map(|d| d.hold_ttl_ms_max) else {
            panic!("model: hold {seq} of no deal")
        };
        // Saturating: the fuzz target sends any u64, and a TTL past the end of time is simply
        // too long.
        let expires_at_ms = now.saturating_add(ttl_ms);
        if expires_at_ms > h.created_at_ms + max_ms {
            return Err(ErrorCode::HoldTtlExceeded);
        }
        if expires_at_ms > h.expires_at_ms {
            if let Some(h) = self.holds.get_mut(&seq) {
                h.expires_at_ms = expires_at_ms;
            }
            self.events += 1;
        }
        Ok(Expect::Hold(seq))
    }

    /// The reaper: expires due holds (in the allocator's shard order, `EXPIRY_SHARDS`), each
    /// handing its units on; lapses the waiting entries of deals whose window has closed;
    /// hands available units to waiting entries they fit; forgets what is past its retention.
    fn expire_due(&mut self) -> usize {
        let now = self.now_ms;
        let mut due: Vec<(u64, u64, u64)> = self
            .holds
            .values()
            .filter(|h| h.state == HoldState::Held && h.expires_at_ms <= now)
            .map(|h| (h.seq % EXPIRY_SHARDS, h.expires_at_ms, h.seq))
            .collect();
        due.sort_unstable();
        for (_, _, seq) in &due {
            self.settle(*seq, HoldState::Expired, 0);
            self.events += 1;
            self.given_back(*seq);
        }
        let ids: Vec<String> = self.deals.keys().cloned().collect();
        // Draws whose window has closed, on deals open now (in id order).
        for id in &ids {
            if self.deals.get(id).is_some_and(|d| self.draw_due(d)) {
                self.draw(id, "drawn by the reaper");
            }
        }
        for id in &ids {
            let closed = self.deals.get(id).is_some_and(|d| d.ends_at_ms.is_some_and(|e| now >= e));
            if closed {
                for (seq, _, _) in self.waiting(id) {
                    self.close_entry(seq, EntryState::Lapsed);
                    self.events += 1;
                }
                self.lapse_undrawn(id);
            }
        }
        for id in &ids {
            let available = self.deals.get(id).map_or(0, |d| d.available);
            if available > 0 && !self.waiting(id).is_empty() {
                self.hand_on(id);
            }
        }
        let forget = |at: Option<u64>| at.is_some_and(|at| at + RETENTION_MS <= now);
        for h in self.holds.values_mut() {
            if forget(h.resolved_at_ms) {
                h.forgotten = true;
            }
        }
        let holds = &self.holds;
        for e in self.entries.values_mut() {
            let done_at = match e.state {
                EntryState::Cancelled | EntryState::Lapsed | EntryState::Lost => e.resolved_at_ms,
                // Offered: done once its hold was confirmed.
                EntryState::Offered => e
                    .hold
                    .and_then(|h| holds.get(&h))
                    .filter(|h| h.state == HoldState::Confirmed)
                    .and_then(|h| h.resolved_at_ms),
                EntryState::Waiting | EntryState::Entered => None,
            };
            if forget(done_at) {
                e.forgotten = true;
            }
        }
        due.len()
    }

    /// A deal whose window closed by the clock before its draw never draws: its entries lapse
    /// at the reaper's tick, as waiting entries do (docs/draw.md: "an ended one never draws and
    /// its entries lapse").
    fn lapse_undrawn(&mut self, id: &str) {
        let entered: Vec<u64> = self
            .entries
            .values()
            .filter(|e| e.deal == id && e.state == EntryState::Entered)
            .map(|e| e.seq)
            .collect();
        if entered.is_empty() {
            return;
        }
        for seq in entered {
            self.close_entry(seq, EntryState::Lapsed);
            self.events += 1;
        }
        if let Some(d) = self.deals.get_mut(id) {
            d.draw_pending = false;
        }
        self.notes.add("ended before its draw");
    }

    fn pause(&mut self, id: &str) -> Answer {
        let Some(d) = self.deals.get_mut(id) else { return Err(ErrorCode::UnknownDeal) };
        match d.life {
            Life::Ended => return Err(ErrorCode::DealEnded),
            Life::Paused => {}
            Life::Open => {
                d.life = Life::Paused;
                self.events += 1;
            }
        }
        Ok(Expect::Deal(id.to_string()))
    }

    fn resume(&mut self, id: &str) -> Answer {
        let Some(d) = self.deals.get_mut(id) else { return Err(ErrorCode::UnknownDeal) };
        match d.life {
            Life::Ended => return Err(ErrorCode::DealEnded),
            Life::Open => {}
            Life::Paused => {
                d.life = Life::Open;
                self.events += 1;
                let pending = d.draw_pending;
                if self.deals.get(id).is_some_and(|d| self.draw_due(d)) {
                    // Paused when its window closed: it draws now.
                    self.draw(id, "drawn at a resume");
                } else if !pending {
                    // What was freed while it was paused goes to the waitlist before reserves.
                    self.hand_on(id);
                }
            }
        }
        Ok(Expect::Deal(id.to_string()))
    }

    fn adjust(&mut self, id: &str, delta: i64) -> Answer {
        if delta == 0 {
            return Err(ErrorCode::InvalidRequest);
        }
        let Some(d) = self.deals.get_mut(id) else { return Err(ErrorCode::UnknownDeal) };
        if d.life == Life::Ended {
            return Err(ErrorCode::DealEnded);
        }
        let units = delta.unsigned_abs();
        if delta > 0 {
            if d.available + d.held + d.sold + units > DEAL_STOCK_UNITS_MAX {
                return Err(ErrorCode::InvalidRequest);
            }
            d.available += units;
            self.events += 1;
            self.hand_on(id);
            return Ok(Expect::Deal(id.to_string()));
        } else {
            if d.available < units {
                return Err(ErrorCode::InsufficientStock);
            }
            d.available -= units;
        }
        self.events += 1;
        Ok(Expect::Deal(id.to_string()))
    }

    /// Ends the deals not ended yet and releases their holds that are still live; returns how
    /// many holds it released.
    fn end(&mut self, ids: &[String]) -> usize {
        let ending: Vec<String> = ids
            .iter()
            .filter(|id| self.deals.get(*id).is_some_and(|d| d.life != Life::Ended))
            .cloned()
            .collect();
        if ending.is_empty() {
            return 0;
        }
        for id in &ending {
            let mut undrawn = false;
            if let Some(d) = self.deals.get_mut(id) {
                d.life = Life::Ended;
                // A draw that never happened never will.
                undrawn = d.draw_pending;
                d.draw_pending = false;
            }
            // Their waiting and entered entries lapse with the end (its one event).
            for (seq, _, _) in self.waiting(id) {
                self.close_entry(seq, EntryState::Lapsed);
            }
            let entered: Vec<u64> = self
                .entries
                .values()
                .filter(|e| &e.deal == id && e.state == EntryState::Entered)
                .map(|e| e.seq)
                .collect();
            if undrawn {
                self.notes.add("ended before its draw");
            }
            for seq in entered {
                self.close_entry(seq, EntryState::Lapsed);
            }
        }
        let now = self.now_ms;
        let open: Vec<u64> = self
            .holds
            .values()
            .filter(|h| {
                ending.contains(&h.deal) && !h.forgotten && h.visible(now) == HoldState::Held
            })
            .map(|h| h.seq)
            .collect();
        for seq in &open {
            self.settle(*seq, HoldState::Released, 0);
        }
        self.events += 1;
        open.len()
    }

    fn end_deal(&mut self, id: &str) -> Answer {
        if !self.deals.contains_key(id) {
            return Err(ErrorCode::UnknownDeal);
        }
        self.end(&[id.to_string()]);
        Ok(Expect::Deal(id.to_string()))
    }

    fn end_stream(&mut self, stream: &str) -> Answer {
        let ids: Vec<String> = self
            .deals
            .values()
            .filter(|d| d.stream.as_deref() == Some(stream))
            .map(|d| d.id.clone())
            .collect();
        if ids.is_empty() {
            return Err(ErrorCode::UnknownStream);
        }
        let released = self.end(&ids);
        Ok(Expect::StreamEnded { stream: stream.to_string(), deals: ids, released })
    }
}

// ------------------------------------------------------------------------- what we compare

/// A deal as a caller sees it, in plain values, built from either side.
#[derive(Debug, PartialEq, Eq)]
struct DealSeen {
    id: String,
    stream: Option<String>,
    starts_at_ms: Option<u64>,
    ends_at_ms: Option<u64>,
    per_user_limit: Option<u32>,
    hold_ttl_ms: u64,
    hold_ttl_ms_max: u64,
    created_at_ms: u64,
    state: DealState,
    available: u64,
    held: u64,
    sold: u64,
    stock: u64,
    shut: bool,
    waitlist_max: u32,
    offer_ttl_ms: u64,
    waiting: u64,
    draw_window_ms: Option<u64>,
    draw_seed: Option<DrawSeed>,
}

fn deal_seen(view: &DealView) -> DealSeen {
    let c = view.counters;
    DealSeen {
        id: view.spec.id.to_string(),
        stream: view.spec.stream_id.as_ref().map(ToString::to_string),
        starts_at_ms: view.spec.starts_at_ms,
        ends_at_ms: view.spec.ends_at_ms,
        per_user_limit: view.spec.per_user_limit,
        hold_ttl_ms: view.spec.hold_ttl_ms,
        hold_ttl_ms_max: view.spec.hold_ttl_ms_max,
        created_at_ms: view.spec.created_at_ms,
        state: view.state,
        available: c.available(),
        held: c.held(),
        sold: c.sold(),
        stock: c.stock(),
        shut: c.shut(),
        waitlist_max: view.options.waitlist_max,
        offer_ttl_ms: view.options.offer_ttl_ms,
        waiting: view.waiting,
        draw_window_ms: view.options.draw_window_ms,
        draw_seed: view.options.draw_seed,
    }
}

fn deal_expected(model: &Model, d: &ModelDeal) -> DealSeen {
    DealSeen {
        id: d.id.clone(),
        stream: d.stream.clone(),
        starts_at_ms: d.starts_at_ms,
        ends_at_ms: d.ends_at_ms,
        per_user_limit: d.per_user_limit,
        hold_ttl_ms: d.hold_ttl_ms,
        hold_ttl_ms_max: d.hold_ttl_ms_max,
        created_at_ms: d.created_at_ms,
        state: model.state(d),
        available: d.available,
        held: d.held,
        sold: d.sold,
        stock: d.available + d.held + d.sold,
        shut: d.life != Life::Open,
        waitlist_max: d.waitlist_max,
        offer_ttl_ms: d.offer_ttl_ms,
        waiting: model.waiting(&d.id).len() as u64,
        draw_window_ms: d.draw_window_ms,
        draw_seed: d.draw_seed,
    }
}

#[derive(Debug, PartialEq, Eq)]
struct HoldSeen {
    seq: u64,
    deal: String,
    user: String,
    qty: u32,
    created_at_ms: u64,
    expires_at_ms: u64,
    recorded: HoldState,
    visible: HoldState,
    confirmed_qty: u32,
    resolved_at_ms: Option<u64>,
    origin: Option<u64>,
}

fn hold_seen(view: &HoldView) -> HoldSeen {
    let h = &view.hold;
    HoldSeen {
        seq: h.seq.0,
        deal: h.deal_id.to_string(),
        user: h.user_id.to_string(),
        qty: h.qty,
        created_at_ms: h.created_at_ms,
        expires_at_ms: h.expires_at_ms,
        recorded: h.state,
        visible: view.state,
        confirmed_qty: h.confirmed_qty,
        resolved_at_ms: h.resolved_at_ms,
        origin: view.origin.map(|e| e.0),
    }
}

fn hold_expected(h: &ModelHold, now_ms: u64) -> HoldSeen {
    HoldSeen {
        seq: h.seq,
        deal: h.deal.clone(),
        user: h.user.clone(),
        qty: h.qty,
        created_at_ms: h.created_at_ms,
        expires_at_ms: h.expires_at_ms,
        recorded: h.state,
        visible: h.visible(now_ms),
        confirmed_qty: h.confirmed_qty,
        resolved_at_ms: h.resolved_at_ms,
        origin: h.origin,
    }
}

/// A waitlist entry as a caller sees it.
#[derive(Debug, PartialEq, Eq)]
struct EntrySeen {
    seq: u64,
    deal: String,
    user: String,
    qty: u32,
    created_at_ms: u64,
    state: EntryState,
    hold: Option<u64>,
    resolved_at_ms: Option<u64>,
    position: Option<u64>,
    created: bool,
}

fn entry_seen(view: &EntryView) -> EntrySeen {
    let e = &view.entry;
    EntrySeen {
        seq: e.seq.0,
        deal: e.deal_id.to_string(),
        user: e.user_id.to_string(),
        qty: e.qty,
        created_at_ms: e.created_at_ms,
        state: e.state,
        hold: e.hold.map(|h| h.0),
        resolved_at_ms: e.resolved_at_ms,
        position: view.position,
        created: view.created,
    }
}

fn model_entry(model: &Model, seq: u64, created: bool) -> Result<EntrySeen, Mismatch> {
    let e = model.known_entry(seq);
    let e = e.ok_or_else(|| Mismatch(format!("model has no entry {seq}")))?;
    Ok(EntrySeen {
        seq: e.seq,
        deal: e.deal.clone(),
        user: e.user.clone(),
        qty: e.qty,
        created_at_ms: e.created_at_ms,
        state: e.state,
        hold: e.hold,
        resolved_at_ms: e.resolved_at_ms,
        position: model.position(seq),
        created,
    })
}

/// A draw record in plain values (`DrawRecord`, `ModelDraw`).
fn draw_seen(record: &DrawRecord) -> ModelDraw {
    ModelDraw {
        at_ms: record.at_ms,
        units: record.units,
        entrants: record
            .entrants
            .iter()
            .map(|(seq, user, qty)| (seq.0, user.to_string(), *qty))
            .collect(),
        order: record.order.clone(),
        winners: record.winners.iter().map(|seq| seq.0).collect(),
        closed: record.closed,
    }
}

/// Every deal's draw (`Allocator::draw_view`) against the model: the record once drawn, and the
/// entries counted while it is pending.
fn check_draws(alloc: &Allocator, model: &Model) -> Result<(), Mismatch> {
    for d in model.deals.values() {
        let Some(view) = alloc.draw_view(&d.id) else {
            return Err(Mismatch(format!("no draw view of deal {}", d.id)));
        };
        ensure_eq!(view.record.as_ref().map(draw_seen), d.draw, "draw of deal {}", d.id);
        // The entries in the draw: those entered now (docs/draw.md).
        let entered = model
            .entries
            .values()
            .filter(|e| e.deal == d.id && e.state == EntryState::Entered)
            .count();
        ensure_eq!(view.entered, entered, "entries in the draw of deal {}", d.id);
    }
    ensure!(alloc.draw_view(DEAL_IDS[DEALS_CREATABLE]).is_none());
    Ok(())
}

fn model_deal<'m>(model: &'m Model, id: &str) -> Result<&'m ModelDeal, Mismatch> {
    model.deals.get(id).ok_or_else(|| Mismatch(format!("model has no deal {id}")))
}

fn model_hold(model: &Model, seq: u64) -> Result<HoldSeen, Mismatch> {
    let h = model.known_hold(seq);
    let h = h.ok_or_else(|| Mismatch(format!("model has no hold {seq}")))?;
    Ok(hold_expected(h, model.now_ms))
}

fn check_answer(
    real: Result<Outcome, CommandError>,
    expected: Answer,
    model: &Model,
) -> Result<(), Mismatch> {
    match (real, expected) {
        (Err(e), Err(code)) => ensure_eq!(e.code(), code, "error {:?}", e),
        (Ok(Outcome::Deal(view)), Ok(Expect::Deal(id))) => {
            ensure_eq!(deal_seen(&view), deal_expected(model, model_deal(model, &id)?));
        }
        (
            Ok(Outcome::StreamEnded { stream_id, deals, holds_released }),
            Ok(Expect::StreamEnded { stream, deals: ids, released }),
        ) => {
            ensure_eq!(stream_id.as_str(), stream.as_str());
            ensure_eq!(holds_released, released);
            let seen: Vec<DealSeen> = deals.iter().map(deal_seen).collect();
            let expected: Vec<DealSeen> = ids
                .iter()
                .map(|id| model_deal(model, id).map(|d| deal_expected(model, d)))
                .collect::<Result<_, _>>()?;
            ensure_eq!(seen, expected);
        }
        (Ok(Outcome::Holds(views)), Ok(Expect::Holds(seqs))) => {
            let seen: Vec<HoldSeen> = views.iter().map(hold_seen).collect();
            let expected: Vec<HoldSeen> =
                seqs.iter().map(|seq| model_hold(model, *seq)).collect::<Result<_, _>>()?;
            ensure_eq!(seen, expected);
        }
        (Ok(Outcome::Hold(view)), Ok(Expect::Hold(seq))) => {
            ensure_eq!(hold_seen(&view), model_hold(model, seq)?);
        }
        (Ok(Outcome::Entry(view)), Ok(Expect::Entry { seq, created })) => {
            ensure_eq!(entry_seen(&view), model_entry(model, seq, created)?);
        }
        (real, expected) => {
            return Err(Mismatch(format!("allocator: {real:?}\nmodel: {expected:?}")));
        }
    }
    Ok(())
}

/// Every deal, every hold ever made, the per-user counts and the sequence, as seen through the
/// allocator's read API, against the model; then the allocator's own invariants.
fn check_state(alloc: &Allocator, model: &mut Model, log: &EventLog) -> Result<(), Mismatch> {
    let now = model.now_ms;
    let seen: Vec<DealSeen> = alloc.deals(now).iter().map(deal_seen).collect();
    let expected: Vec<DealSeen> = model.deals.values().map(|d| deal_expected(model, d)).collect();
    ensure_eq!(seen, expected);
    for h in model.holds.values() {
        let seen = alloc.hold(HoldSeq(h.seq), now).map(|view| hold_seen(&view));
        let expected = (!h.forgotten).then(|| hold_expected(h, now));
        ensure_eq!(seen, expected);
    }
    ensure!(alloc.hold(HoldSeq(GHOST_HOLD), now).is_none());
    for e in model.entries.values() {
        let seen = alloc.entry(EntrySeq(e.seq)).map(|view| entry_seen(&view));
        let expected = (!e.forgotten).then(|| model_entry(model, e.seq, false)).transpose()?;
        ensure_eq!(seen, expected, "entry {}", e.seq);
    }
    ensure!(alloc.entry(EntrySeq(GHOST_HOLD)).is_none());
    // A hold's number is no entry's.
    if let Some(seq) = model.holds.keys().next_back() {
        ensure!(alloc.entry(EntrySeq(*seq)).is_none());
    }
    ensure_eq!(log.events.len(), model.events, "events logged");
    check_draws(alloc, model)?;

    let snapshot = alloc.snapshot();
    ensure_eq!(snapshot.next_hold_seq, model.next_seq);
    let counts: Vec<(String, String, u32)> = snapshot
        .user_counts
        .iter()
        .map(|(deal, user, n)| (deal.to_string(), user.to_string(), *n))
        .collect();
    let mut expected_counts = Vec::new();
    for d in model.deals.values().filter(|d| d.per_user_limit.is_some()) {
        for user in USER_IDS {
            let taken = model.taken(&d.id, user);
            if taken > 0 {
                expected_counts.push((d.id.clone(), user.to_string(), taken));
            }
        }
    }
    ensure_eq!(counts, expected_counts, "per-user counts");
    alloc.check_invariants();
    Ok(())
}

// ----------------------------------------------------------------------------------- runner

pub fn config() -> AllocatorConfig {
    AllocatorConfig { hold_id_key: HOLD_ID_KEY, resolved_hold_retention_ms: RETENTION_MS }
}

pub fn deal_id(index: usize) -> DealId {
    match DealId::parse(DEAL_IDS[index]) {
        Ok(id) => id,
        Err(e) => panic!("test deal ids are valid: {e}"),
    }
}

pub fn user_id(index: usize) -> UserId {
    match UserId::parse(USER_IDS[index]) {
        Ok(id) => id,
        Err(e) => panic!("test user ids are valid: {e}"),
    }
}

pub fn stream_id(index: usize) -> StreamId {
    match StreamId::parse(STREAM_IDS[index]) {
        Ok(id) => id,
        Err(e) => panic!("test stream ids are valid: {e}"),
    }
}

/// What a run went through on the waitlist side, by kind, so that a generator can be held to
/// reaching each (`tests/model.rs`): events logged, how entries ended, and answers.
#[derive(Clone, Debug, Default)]
pub struct Coverage(pub BTreeMap<&'static str, u64>);

impl Coverage {
    /// Every kind a good generator reaches.
    // Read by the property test's coverage check, not by the fuzz target, which includes this
    // module too.
    #[allow(dead_code)]
    pub const KINDS: [&'static str; 26] = [
        "joined",
        "join answered the active entry",
        "offered",
        "offer confirmed",
        "offer lapsed (released or expired)",
        "lapsed at offer time (user limit)",
        "lapsed with its deal (end or window)",
        "cancelled waiting",
        "cancelled offered",
        "cancel retried",
        "cancel refused: entry_lapsed",
        "cancel refused: hold_confirmed",
        "cancel refused: unknown_entry",
        "join refused: waitlist_full",
        "join refused: per_user_limit",
        "entered a draw",
        "draw entry answered again",
        "cancelled entered",
        "cart refused: draw_window",
        "drawn by the reaper",
        "drawn by a late reserve",
        "drawn at a resume",
        "ended before its draw",
        "drawn: winner offered",
        "drawn: lost",
        "drawn: loser waiting",
    ];

    fn add(&mut self, kind: &'static str) {
        *self.0.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Coverage) {
        for (kind, n) in &other.0 {
            *self.0.entry(kind).or_default() += n;
        }
    }

    /// The kinds of `KINDS` never reached.
    #[allow(dead_code)] // the property test's, not the fuzz target's
    pub fn missing(&self) -> Vec<&'static str> {
        Self::KINDS.into_iter().filter(|k| self.0.get(k).copied().unwrap_or(0) == 0).collect()
    }

    /// Counts what one step's answer was, from the model before it.
    fn answer(&mut self, op: &Op, before: &Model, answer: &Answer) {
        let in_window = |deal: &usize| {
            before.deals.get(DEAL_IDS[*deal]).is_some_and(|d| {
                d.draw_pending && Model::draw_closes_at(d).is_some_and(|at| before.now_ms < at)
            })
        };
        match (op, answer) {
            (Op::Reserve { deal, .. }, Ok(Expect::Entry { created, .. })) if in_window(deal) => {
                self.add(if *created { "entered a draw" } else { "draw entry answered again" });
            }
            (Op::Cart { .. }, Err(ErrorCode::DrawWindow)) => self.add("cart refused: draw_window"),
            (Op::Reserve { .. }, Ok(Expect::Entry { created: false, .. })) => {
                self.add("join answered the active entry");
            }
            (Op::Reserve { waitlist: true, deal, .. }, Err(code)) => {
                let has_list =
                    before.deals.get(DEAL_IDS[*deal]).is_some_and(|d| d.waitlist_max > 0);
                match code {
                    ErrorCode::WaitlistFull => self.add("join refused: waitlist_full"),
                    ErrorCode::PerUserLimit if has_list => self.add("join refused: per_user_limit"),
                    _ => {}
                }
            }
            (Op::CancelEntry { entry }, answer) => {
                let seq = before.entry_seq(*entry);
                let state = before.known_entry(seq).map(|e| e.state);
                match (state, answer) {
                    (Some(EntryState::Waiting), Ok(_)) => self.add("cancelled waiting"),
                    (Some(EntryState::Entered), Ok(_)) => self.add("cancelled entered"),
                    (Some(EntryState::Offered), Ok(_)) => self.add("cancelled offered"),
                    (Some(EntryState::Cancelled), Ok(_)) => self.add("cancel retried"),
                    (_, Err(ErrorCode::EntryLapsed)) => self.add("cancel refused: entry_lapsed"),
                    (_, Err(ErrorCode::HoldConfirmed)) => {
                        self.add("cancel refused: hold_confirmed");
                    }
                    (_, Err(ErrorCode::UnknownEntry)) => self.add("cancel refused: unknown_entry"),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Counts the events and the entries' ends of a finished run.
    fn finish(&mut self, model: &Model, log: &EventLog) {
        for event in &log.events {
            match event {
                Event::WaitlistJoined { .. } => self.add("joined"),
                Event::Offered { .. } => self.add("offered"),
                _ => {}
            }
        }
        for e in model.entries.values() {
            let hold = e.hold.and_then(|h| model.holds.get(&h));
            let deal_closed =
                model.deals.get(&e.deal).is_some_and(|d| model.state(d) == DealState::Ended);
            match (e.state, hold) {
                (EntryState::Offered, Some(h)) if h.state == HoldState::Confirmed => {
                    self.add("offer confirmed");
                }
                (EntryState::Lapsed, Some(_)) => self.add("offer lapsed (released or expired)"),
                (EntryState::Lapsed, None) if deal_closed => {
                    self.add("lapsed with its deal (end or window)");
                }
                (EntryState::Lapsed, None) => self.add("lapsed at offer time (user limit)"),
                _ => {}
            }
        }
    }
}

/// Applies one op to both sides, then compares their answers and their whole state.
fn step(
    alloc: &Allocator,
    model: &mut Model,
    log: &mut EventLog,
    op: &Op,
    coverage: &mut Coverage,
) -> Result<(), Mismatch> {
    let now = model.now_ms;
    let before = model.clone();
    let (command, expected) = match op {
        Op::CreateDeal {
            deal,
            stream,
            stock,
            starts_at_ms,
            ends_at_ms,
            per_user_limit,
            hold_ttl_ms,
            hold_ttl_ms_max,
            waitlist_max,
            offer_ttl_ms,
            draw_window_ms,
            draw_seed,
        } => {
            let new = NewDeal {
                id: deal_id(*deal),
                stream_id: stream.map(stream_id),
                stock: *stock,
                starts_at_ms: *starts_at_ms,
                ends_at_ms: *ends_at_ms,
                per_user_limit: *per_user_limit,
                hold_ttl_ms: *hold_ttl_ms,
                hold_ttl_ms_max: *hold_ttl_ms_max,
                waitlist_max: *waitlist_max,
                offer_ttl_ms: *offer_ttl_ms,
                draw_window_ms: *draw_window_ms,
                draw_seed: *draw_seed,
            };
            let expected = model.create(
                DEAL_IDS[*deal],
                stream.map(|s| STREAM_IDS[s]),
                *stock,
                *starts_at_ms,
                *ends_at_ms,
                *per_user_limit,
                *hold_ttl_ms,
                *hold_ttl_ms_max,
                *waitlist_max,
                *offer_ttl_ms,
                *draw_window_ms,
                *draw_seed,
            );
            (Command::CreateDeal(new), expected)
        }
        Op::Reserve { user, deal, qty, ttl_ms, waitlist } => {
            let command = Command::Reserve(Reserve {
                user_id: user_id(*user),
                lines: vec![Line { deal_id: deal_id(*deal), qty: *qty }],
                ttl_ms: *ttl_ms,
                waitlist: *waitlist,
            });
            let (user, deal) = (USER_IDS[*user], DEAL_IDS[*deal]);
            (command, model.reserve_or_join(user, deal, *qty, *ttl_ms, *waitlist))
        }
        Op::Cart { user, lines, ttl_ms, waitlist } => {
            let command = Command::Cart(Reserve {
                user_id: user_id(*user),
                lines: lines
                    .iter()
                    .map(|(deal, qty)| Line { deal_id: deal_id(*deal), qty: *qty })
                    .collect(),
                ttl_ms: *ttl_ms,
                waitlist: *waitlist,
            });
            let lines: Vec<(&str, u32)> =
                lines.iter().map(|(deal, qty)| (DEAL_IDS[*deal], *qty)).collect();
            (command, model.reserve(USER_IDS[*user], &lines, *ttl_ms))
        }
        Op::Confirm { hold, qty } => {
            let seq = model.hold_seq(*hold);
            (Command::Confirm { hold: HoldSeq(seq), qty: *qty }, model.confirm(seq, *qty))
        }
        Op::Release { hold } => {
            let seq = model.hold_seq(*hold);
            (Command::Release { hold: HoldSeq(seq) }, model.release(seq))
        }
        Op::Extend { hold, ttl_ms } => {
            let seq = model.hold_seq(*hold);
            (Command::Extend { hold: HoldSeq(seq), ttl_ms: *ttl_ms }, model.extend(seq, *ttl_ms))
        }
        Op::Advance { ms, reap } => {
            model.now_ms += ms;
            if *reap {
                let expired = alloc.expire_due(model.now_ms, log);
                ensure_eq!(expired, model.expire_due(), "holds expired");
            }
            return check_state(alloc, model, log);
        }
        Op::AdjustStock { deal, delta } => (
            Command::AdjustStock { deal_id: deal_id(*deal), delta: *delta },
            model.adjust(DEAL_IDS[*deal], *delta),
        ),
        Op::Pause(deal) => (Command::PauseDeal(deal_id(*deal)), model.pause(DEAL_IDS[*deal])),
        Op::Resume(deal) => (Command::ResumeDeal(deal_id(*deal)), model.resume(DEAL_IDS[*deal])),
        Op::EndDeal(deal) => (Command::EndDeal(deal_id(*deal)), model.end_deal(DEAL_IDS[*deal])),
        Op::EndStream(stream) => {
            (Command::EndStream(stream_id(*stream)), model.end_stream(STREAM_IDS[*stream]))
        }
        Op::CancelEntry { entry } => {
            let seq = model.entry_seq(*entry);
            (Command::CancelEntry { entry: EntrySeq(seq) }, model.cancel_entry(seq))
        }
    };
    coverage.answer(op, &before, &expected);
    let real = alloc.execute(&command, now, log);
    check_answer(real, expected, model)?;
    check_state(alloc, model, log)
}

/// Runs `ops` on a fresh allocator and on the model, comparing after every step; then checks
/// that the event log replays, and a snapshot restores, to the same state. Panics only where
/// the allocator itself does (its invariant checks, or a bug).
pub fn run(ops: &[Op]) -> Result<(), Mismatch> {
    run_covered(ops).map(|_| ())
}

/// [`run`], also saying what the sequence did on the waitlist side.
pub fn run_covered(ops: &[Op]) -> Result<Coverage, Mismatch> {
    let alloc = Allocator::new(config());
    let mut model = Model::new();
    let mut log = EventLog::default();
    let mut coverage = Coverage::default();
    for op in ops {
        step(&alloc, &mut model, &mut log, op, &mut coverage)?;
    }
    // Reap once more so that both allocators below forget the same resolved holds: forgetting
    // is the reaper's housekeeping, not an event, so a replay forgets only when its reaper runs.
    let expired = alloc.expire_due(model.now_ms, &mut log);
    ensure_eq!(expired, model.expire_due(), "holds expired at the end");
    check_state(&alloc, &mut model, &log)?;

    let replayed = Allocator::new(config());
    for (i, event) in log.events.iter().enumerate() {
        if let Err(e) = replayed.apply(event) {
            return Err(Mismatch(format!("replay of event {i} {event:?}: {e}")));
        }
    }
    let mut after_replay = EventLog::default();
    ensure_eq!(replayed.expire_due(model.now_ms, &mut after_replay), 0);
    ensure!(after_replay.events.is_empty());
    replayed.check_invariants();
    let snapshot = alloc.snapshot();
    ensure_eq!(replayed.snapshot(), snapshot.clone());
    // And a checkpoint of the same state restores to it.
    let restored =
        Allocator::restore(config(), &snapshot).map_err(|e| Mismatch(format!("restore: {e}")))?;
    ensure_eq!(restored.snapshot(), snapshot);
    // Entries read the same from the replayed and the restored allocator.
    for e in model.entries.values() {
        let live = alloc.entry(EntrySeq(e.seq));
        ensure_eq!(replayed.entry(EntrySeq(e.seq)), live.clone(), "replayed entry {}", e.seq);
        ensure_eq!(restored.entry(EntrySeq(e.seq)), live, "restored entry {}", e.seq);
    }
    // And so do draws (the reveal: record and entries counted).
    for d in model.deals.values() {
        let live = alloc.draw_view(&d.id).map(|v| (v.record, v.entered));
        let replayed_draw = replayed.draw_view(&d.id).map(|v| (v.record, v.entered));
        ensure_eq!(replayed_draw, live.clone(), "replayed draw of {}", d.id);
        let restored_draw = restored.draw_view(&d.id).map(|v| (v.record, v.entered));
        ensure_eq!(restored_draw, live, "restored draw of {}", d.id);
    }
    coverage.finish(&model, &log);
    coverage.merge(&model.notes);
    Ok(coverage)
}
