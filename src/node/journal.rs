//! The allocator's event sink for one command: appends each decided event to the log and
//! remembers the outcome as the event was ordered (and, for a keyed request, its answer).
//!
//! `append` runs inside the allocator, under the lock that decided the event (a hold shard,
//! or a deal's admin lock), because the log order must be the decision order (the prefix rule
//! in docs/ARCHITECTURE.md). So it does as little as it can there: an unkeyed command's
//! answer is rendered after the allocator returns, from the outcome captured here. Only a
//! keyed command renders its answer here, because that answer travels in the same log record
//! (a retry after a restart must get the same bytes) and the record must be queued under the
//! lock. The queue's mutex is therefore taken under a hold-shard lock: see the lock order in
//! docs/ARCHITECTURE.md for why that cannot deadlock.

use livestock_core::command::Outcome;
use livestock_core::error::CommandError;
use livestock_core::event::{Event, EventSink};

use crate::cluster::replica::Replica;
use crate::idempotency::StoredReply;
use crate::metrics::Metrics;
use crate::node::Keyed;
use crate::wal::{KeptReply, Record, Wal};

/// Renders a command's result as the answer a client gets (the HTTP layer's JSON). The node
/// calls it only for keyed commands, whose answers it must keep.
pub type Render<'a> = &'a dyn Fn(&Result<Outcome, CommandError>) -> StoredReply;

/// Where a command's records go: nowhere, the write-ahead log, or the replica's proposal
/// queue (with the term the command decides in).
pub(crate) enum Sink<'a> {
    Memory,
    Wal(&'a Wal),
    Raft(&'a Replica, u64),
}

pub(crate) struct Journal<'a> {
    pub sink: Sink<'a>,
    pub metrics: &'a Metrics,
    pub now_ms: u64,
    /// `Some` for a keyed command: its answer is rendered and logged with its event.
    pub keyed: Option<(&'a Keyed<'a>, Render<'a>)>,
    /// The outcome as of the last event (what the answer reports).
    pub outcome: Option<Outcome>,
    pub reply: Option<StoredReply>,
    pub lsn: Option<u64>,
}

impl<'a> Journal<'a> {
    pub fn new(sink: Sink<'a>, metrics: &'a Metrics, now_ms: u64) -> Self {
        Journal { sink, metrics, now_ms, keyed: None, outcome: None, reply: None, lsn: None }
    }
}

impl EventSink for Journal<'_> {
    fn append(&mut self, event: Event, outcome: &Outcome) {
        if let (Event::Expired { at_ms, .. }, Outcome::Hold(view)) = (&event, outcome) {
            self.metrics.expired(at_ms.saturating_sub(view.hold.expires_at_ms));
        }
        let kept = match self.keyed {
            Some((keyed, render)) => {
                // Rendered from the outcome as the event was ordered, so the answer sent now
                // and the one kept in the log for retries are the same bytes.
                let reply = render(&Ok(outcome.clone()));
                let kept = KeptReply {
                    scope: keyed.scope.to_owned(),
                    key: keyed.key.to_owned(),
                    fingerprint: keyed.fingerprint,
                    status: reply.status,
                    body: reply.body.to_vec(),
                    seen_ms: self.now_ms,
                };
                self.reply = Some(reply);
                Some(kept)
            }
            None => None,
        };
        let record = Record { at_ms: self.now_ms, event, reply: kept };
        match self.sink {
            Sink::Memory => {}
            Sink::Wal(wal) => self.lsn = Some(wal.append(record)),
            Sink::Raft(replica, term) => self.lsn = Some(replica.propose(term, record)),
        }
        self.outcome = Some(outcome.clone());
    }

    fn append_consequence(&mut self, event: Event, _outcome: &Outcome) {
        match &event {
            Event::Offered { .. } => self.metrics.offered(),
            Event::WaitlistLapsed { .. } => self.metrics.lapsed(),
            Event::Drawn { .. } => self.metrics.drawn(),
            _ => {}
        }
        let record = Record { at_ms: self.now_ms, event, reply: None };
        match self.sink {
            Sink::Memory => {}
            Sink::Wal(wal) => self.lsn = Some(wal.append(record)),
            Sink::Raft(replica, term) => self.lsn = Some(replica.propose(term, record)),
        }
    }
}
