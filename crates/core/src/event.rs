//! Events: the decided outcomes of commands, in the form the write-ahead log records them.
//!
//! An event says what happened, not what was asked: replaying events applies them without
//! deciding anything again (a reserve that won a race in the live server must not lose it in
//! replay), so every value an event needs (hold ids, times, quantities) is in it.

use crate::deal::DealSpec;
use crate::hold::Hold;
use crate::ids::{DealId, HoldSeq};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Event {
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
}

/// Where the allocator puts the events it decides. The allocator calls `append` at the moment
/// an event is ordered; for events that free units (release, expiry, the rest of a partial
/// confirm, stock added, deals ended) it calls it *before* the freed units become available,
/// so any reserve that takes those units is ordered after the event that freed them. That
/// makes every prefix of the log a state that never oversold (see docs/ARCHITECTURE.md).
pub trait EventSink {
    fn append(&mut self, event: Event, outcome: &crate::command::Outcome);
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
