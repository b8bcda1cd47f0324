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

use livestock::alloc::{Allocator, AllocatorConfig};
use livestock_core::command::{Command, HoldView, Line, Outcome, Reserve};
use livestock_core::deal::{DealState, DealView, NewDeal};
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::event::EventLog;
use livestock_core::hold::HoldState;
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, StreamId, UserId};
use livestock_core::limits::{
    CART_LINES_MAX, DEAL_STOCK_UNITS_MAX, HOLD_QTY_MAX, HOLD_TTL_MS_DEFAULT, HOLD_TTL_MS_MAX,
    HOLD_TTL_MS_MIN, TIMESTAMP_MS_MAX, TIMESTAMP_MS_MIN,
};

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
/// A hold reference at or past `HOLD_BACK_GHOST` names this never-issued sequence.
pub const GHOST_HOLD: u64 = 1 << 40;
pub const HOLD_BACK_GHOST: usize = 60;

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
    },
    Reserve {
        user: usize,
        deal: usize,
        qty: u32,
        ttl_ms: Option<u64>,
    },
    Cart {
        user: usize,
        lines: Vec<(usize, u32)>,
        ttl_ms: Option<u64>,
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
}

type Answer = Result<Expect, ErrorCode>;

struct Model {
    now_ms: u64,
    deals: BTreeMap<String, ModelDeal>,
    holds: BTreeMap<u64, ModelHold>,
    next_seq: u64,
    /// How many events the allocator should have logged so far.
    events: usize,
}

impl Model {
    fn new() -> Self {
        Model {
            now_ms: T0_MS,
            deals: BTreeMap::new(),
            holds: BTreeMap::new(),
            next_seq: 1,
            events: 0,
        }
    }

    fn hold_seq(&self, back: usize) -> u64 {
        if back >= HOLD_BACK_GHOST || self.holds.is_empty() {
            return GHOST_HOLD;
        }
        let back = back % self.holds.len();
        self.holds.keys().rev().nth(back).copied().unwrap_or(GHOST_HOLD)
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
        let (deal, qty) = (h.deal.clone(), h.qty);
        let Some(d) = self.deals.get_mut(&deal) else { panic!("model: no deal {deal}") };
        d.held -= u64::from(qty);
        d.sold += u64::from(sold);
        d.available += u64::from(qty - sold);
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
        // A window already over at creation is a mistake, not a deal.
        if ends_at_ms.is_some_and(|e| e <= self.now_ms) {
            return Err(ErrorCode::InvalidRequest);
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
            };
            self.holds.insert(seq, hold);
            seqs.push(seq);
        }
        self.events += 1;
        Ok(Expect::Holds(seqs))
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

    fn expire_due(&mut self) -> usize {
        let now = self.now_ms;
        let due: Vec<u64> = self
            .holds
            .values()
            .filter(|h| h.state == HoldState::Held && h.expires_at_ms <= now)
            .map(|h| h.seq)
            .collect();
        for seq in &due {
            self.settle(*seq, HoldState::Expired, 0);
            self.events += 1;
        }
        for h in self.holds.values_mut() {
            if h.resolved_at_ms.is_some_and(|at| at + RETENTION_MS <= now) {
                h.forgotten = true;
            }
        }
        due.len()
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
            if let Some(d) = self.deals.get_mut(id) {
                d.life = Life::Ended;
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
    }
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
        (real, expected) => {
            return Err(Mismatch(format!("allocator: {real:?}\nmodel: {expected:?}")));
        }
    }
    Ok(())
}

/// Every deal, every hold ever made, the per-user counts and the sequence, as seen through the
/// allocator's read API, against the model; then the allocator's own invariants.
fn check_state(alloc: &Allocator, model: &Model, log: &EventLog) -> Result<(), Mismatch> {
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
    ensure_eq!(log.events.len(), model.events, "events logged");

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

/// Applies one op to both sides, then compares their answers and their whole state.
fn step(alloc: &Allocator, model: &mut Model, log: &mut EventLog, op: &Op) -> Result<(), Mismatch> {
    let now = model.now_ms;
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
                waitlist_max: None,
                offer_ttl_ms: None,
                draw_window_ms: None,
                draw_seed: None,
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
            );
            (Command::CreateDeal(new), expected)
        }
        Op::Reserve { user, deal, qty, ttl_ms } => {
            let command = Command::Reserve(Reserve {
                user_id: user_id(*user),
                lines: vec![Line { deal_id: deal_id(*deal), qty: *qty }],
                ttl_ms: *ttl_ms,
                waitlist: false,
            });
            (command, model.reserve(USER_IDS[*user], &[(DEAL_IDS[*deal], *qty)], *ttl_ms))
        }
        Op::Cart { user, lines, ttl_ms } => {
            let command = Command::Cart(Reserve {
                user_id: user_id(*user),
                lines: lines
                    .iter()
                    .map(|(deal, qty)| Line { deal_id: deal_id(*deal), qty: *qty })
                    .collect(),
                ttl_ms: *ttl_ms,
                waitlist: false,
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
    };
    let real = alloc.execute(&command, now, log);
    check_answer(real, expected, model)?;
    check_state(alloc, model, log)
}

/// Runs `ops` on a fresh allocator and on the model, comparing after every step; then checks
/// that the event log replays, and a snapshot restores, to the same state. Panics only where
/// the allocator itself does (its invariant checks, or a bug).
pub fn run(ops: &[Op]) -> Result<(), Mismatch> {
    let alloc = Allocator::new(config());
    let mut model = Model::new();
    let mut log = EventLog::default();
    for op in ops {
        step(&alloc, &mut model, &mut log, op)?;
    }
    // Reap once more so that both allocators below forget the same resolved holds: forgetting
    // is the reaper's housekeeping, not an event, so a replay forgets only when its reaper runs.
    let expired = alloc.expire_due(model.now_ms, &mut log);
    ensure_eq!(expired, model.expire_due(), "holds expired at the end");
    check_state(&alloc, &model, &log)?;

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
    let restored = Allocator::restore(config(), &snapshot);
    let restored = restored.map_err(|e| Mismatch(format!("restore: {e}")))?;
    ensure_eq!(restored.snapshot(), snapshot);
    Ok(())
}
