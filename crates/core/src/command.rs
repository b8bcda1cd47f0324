//! Commands (what a caller asks) and outcomes (what it gets back).
//!
//! Every state change enters the allocator as one [`Command`]; a command that changes state
//! emits exactly one [`Event`](crate::event::Event) (the decided outcome, the unit of the
//! write-ahead log) and returns one [`Outcome`] (the caller's answer).

use crate::deal::{DealView, NewDeal};
use crate::hold::{Hold, HoldState};
use crate::ids::{DealId, EntrySeq, HoldSeq, StreamId, UserId};
use crate::waitlist::EntryView;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateDeal(NewDeal),
    PauseDeal(DealId),
    ResumeDeal(DealId),
    /// End a deal now: no more reservations, open holds released.
    EndDeal(DealId),
    /// Add units (`delta > 0`) or remove them from `available` (`delta < 0`).
    AdjustStock {
        deal_id: DealId,
        delta: i64,
    },
    /// End every deal of a livestream, releasing their open holds.
    EndStream(StreamId),
    /// One deal, one line.
    Reserve(Reserve),
    /// Several deals, all or nothing; lines naming the same deal are summed.
    Cart(Reserve),
    Confirm {
        hold: HoldSeq,
        qty: Option<u32>,
    },
    Release {
        hold: HoldSeq,
    },
    Extend {
        hold: HoldSeq,
        ttl_ms: u64,
    },
    /// Leave a deal's waitlist (an offered entry gives its offer up: the hold is released).
    CancelEntry {
        entry: EntrySeq,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserve {
    pub user_id: UserId,
    pub lines: Vec<Line>,
    pub ttl_ms: Option<u64>,
    /// A single reserve the deal cannot serve (sold out, fewer left than asked) joins the
    /// deal's waitlist, if it has one, instead of being refused.
    pub waitlist: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub deal_id: DealId,
    pub qty: u32,
}

/// A hold as a caller sees it at one instant (its state accounts for an expiry not yet reaped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldView {
    pub hold: Hold,
    pub state: HoldState,
    /// The waitlist entry the hold was offered to (`origin: "waitlist"`), if any.
    pub origin: Option<EntrySeq>,
}

impl HoldView {
    pub fn at(hold: Hold, now_ms: u64) -> Self {
        let state = hold.state_at(now_ms);
        HoldView { hold, state, origin: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Deal(DealView),
    StreamEnded {
        stream_id: StreamId,
        deals: Vec<DealView>,
        holds_released: usize,
    },
    /// The holds a reserve or cart made, one per deal, in the order of first mention.
    Holds(Vec<HoldView>),
    Hold(HoldView),
    /// A waitlist entry: joined (202 when new), read, or cancelled.
    Entry(EntryView),
}
