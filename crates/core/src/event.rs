//! Events: the decided outcomes of commands, in the form the write-ahead log records them.
//!
//! An event says what happened, not what was asked: replaying events applies them without
//! deciding anything again (a reserve that won a race in the live server must not lose it in
//! replay), so every value an event needs (hold ids, times, quantities) is in it.

use crate::deal::DealSpec;
use crate::hold::Hold;
use crate::ids::{DealId, EntrySeq, HoldSeq};
use crate::waitlist::{DealOptions, WaitEntry};

/// New variants go at the end: the log encodes a variant by its index, so appending keeps
/// every log written before readable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    /// A deal without options (no waitlist, no draw): logged as before options existed, so
    /// an older build reads such logs. A deal with options is [`Event::DealOpened`].
    DealCreated {
        spec: DealSpec,
        stock: u64,
    },
    DealPaused {
        deal_id: DealId,
        at_ms: u64,
    },
    DealResumed {
        deal_id: DealId,
        at_ms: u64,
    },
    /// One deal (end) or all of a stream's (stream end), with the holds each released.
    DealsEnded {
        at_ms: u64,
        deals: Vec<(DealId, Vec<HoldSeq>)>,
    },
    StockAdjusted {
        deal_id: DealId,
        delta: i64,
        at_ms: u64,
    },
    /// New holds, in state `held`: one for a reserve, one per deal for a cart.
    Reserved {
        holds: Vec<Hold>,
    },
    Confirmed {
        seq: HoldSeq,
        qty: u32,
        at_ms: u64,
    },
    Released {
        seq: HoldSeq,
        at_ms: u64,
    },
    Extended {
        seq: HoldSeq,
        expires_at_ms: u64,
        at_ms: u64,
    },
    Expired {
        seq: HoldSeq,
        at_ms: u64,
    },
    /// Nothing changed. The allocator never emits this: the node logs it for a keyed request
    /// that succeeded as a no-op (a retried confirm, a pause of a paused deal), so the answer
    /// that request got is in the log and a retry after a restart gets it again.
    Answered {
        at_ms: u64,
    },
    /// A deal created with options (a waitlist, a draw).
    DealOpened {
        spec: DealSpec,
        options: DealOptions,
        stock: u64,
    },
    /// A reserve the deal could not serve joined its waitlist (state `waiting`, at the back).
    WaitlistJoined {
        entry: WaitEntry,
    },
    /// Units that came back were offered to a waiting entry: `hold` is a new hold (state
    /// `held`, the deal's `offer_ttl_ms`) that takes them, as `Reserved` would. Logged after the
    /// event that freed them.
    Offered {
        entry: EntrySeq,
        hold: Hold,
    },
    /// A waiting entry whose turn came while its user's per-user limit was full.
    WaitlistLapsed {
        entry: EntrySeq,
        at_ms: u64,
    },
    /// A user left the waitlist. If the entry was offered and its hold still held, the hold
    /// is released by this event (its units freed, as `Released` frees them).
    WaitlistCancelled {
        entry: EntrySeq,
        at_ms: u64,
    },
    /// A deal's draw window closed and it was drawn: its entries (state `entered`, in log
    /// order) join its queue in the order `seed` gives them (`draw.rs`); the `Offered` events
    /// that follow, up to `DrawClosed`, are its winners. `seed` is the deal's own (revealed
    /// here; replay checks it).
    Drawn {
        deal_id: DealId,
        seed: crate::draw::DrawSeed,
        at_ms: u64,
    },
    /// The draw's winners are fixed: entries still waiting past the deal's `waitlist_max` (all
    /// of them without a waitlist) are `lost`.
    DrawClosed {
        deal_id: DealId,
        at_ms: u64,
    },
}

/// Where the allocator puts the events it decides. The allocator calls `append` at the moment
/// an event is ordered; for events that free units (release, expiry, the rest of a partial
/// confirm, stock added, deals ended) it calls it *before* the freed units become available,
/// so any reserve that takes those units is ordered after the event that freed them. That
/// makes every prefix of the log a state that never oversold (see docs/ARCHITECTURE.md).
pub trait EventSink {
    fn append(&mut self, event: Event, outcome: &crate::command::Outcome);

    /// An event that follows from the command's own, logged after it in the same command (an
    /// offer or a lapse on a waitlist after a release): ordered like any event, but it is not
    /// the command's answer, and a keyed command's kept answer stays with its own event.
    fn append_consequence(&mut self, event: Event, outcome: &crate::command::Outcome) {
        self.append(event, outcome);
    }
}

/// Collects events in order: replay tests and the in-memory server's tooling use it.
#[derive(Default, Debug)]
pub struct EventLog {
    pub events: Vec<Event>,
}

impl EventSink for EventLog {
    fn append(&mut self, event: Event, _outcome: &crate::command::Outcome) {
        self.events.push(event);
    }
}
