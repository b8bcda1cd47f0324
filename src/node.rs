//! The node: the shell around the allocator that the HTTP layer talks to.
//!
//! It owns what the pure parts must not: the clock, the idempotency table, and the sink the
//! allocator's events go to. Each command runs synchronously, start to finish, without an
//! `.await`, so a client that disconnects mid-request cannot leave a half-done change.

use std::sync::Arc;

use crate::alloc::{Allocator, AllocatorConfig};
use crate::clock::Clock;
use crate::core::command::{Command, Outcome};
use crate::core::error::CommandError;
use crate::core::event::{Event, EventSink};
use crate::idempotency::{Begin, IdempotencyTable, StoredReply};

pub struct NodeConfig {
    pub allocator: AllocatorConfig,
    pub idempotency_window_ms: u64,
    pub idempotency_keys_max: usize,
}

/// Where the node's events go while state lives in memory only: nowhere. The write-ahead log
/// takes this place; everything upstream of it already produces the events it will record.
struct MemoryOnly;

impl EventSink for MemoryOnly {
    fn append(&mut self, _event: Event, _outcome: &Outcome) {}
}

pub struct Node {
    allocator: Allocator,
    clock: Arc<dyn Clock>,
    idempotency: IdempotencyTable,
}

/// A keyed request's identity: where its key lives and what request it stands for.
pub struct Keyed<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub fingerprint: u64,
}

/// What became of a keyed request.
pub enum KeyedResult<T> {
    /// It executed now.
    Ran(T),
    /// It had executed before: the stored answer.
    Replayed(StoredReply),
    Mismatch,
    InFlight,
    Full,
}

impl Node {
    pub fn new(config: NodeConfig, clock: Arc<dyn Clock>) -> Self {
        Node {
            allocator: Allocator::new(config.allocator),
            clock,
            idempotency: IdempotencyTable::new(
                config.idempotency_window_ms,
                config.idempotency_keys_max,
            ),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    pub fn idempotency(&self) -> &IdempotencyTable {
        &self.idempotency
    }

    /// Runs a command. `answer` turns the result into the reply that goes out.
    pub fn execute(
        &self,
        command: &Command,
        answer: impl Fn(&Result<Outcome, CommandError>) -> StoredReply,
    ) -> StoredReply {
        let now_ms = self.now_ms();
        let mut sink = MemoryOnly;
        let result = self.allocator.execute(command, now_ms, &mut sink);
        answer(&result)
    }

    /// Runs a command under an idempotency key. `remember` says whether an answer is kept for
    /// retries (business outcomes are; malformed requests and server trouble are not).
    pub fn execute_keyed(
        &self,
        keyed: &Keyed<'_>,
        command: &Command,
        answer: impl Fn(&Result<Outcome, CommandError>) -> StoredReply,
        remember: impl Fn(&StoredReply) -> bool,
    ) -> KeyedResult<StoredReply> {
        let now_ms = self.now_ms();
        match self.idempotency.begin(keyed.scope, keyed.key, keyed.fingerprint, now_ms) {
            Begin::Replay(reply) => KeyedResult::Replayed(reply),
            Begin::Mismatch => KeyedResult::Mismatch,
            Begin::InFlight => KeyedResult::InFlight,
            Begin::Full => KeyedResult::Full,
            Begin::Execute(guard) => {
                let reply = self.execute(command, answer);
                if remember(&reply) {
                    guard.finish(reply.clone());
                }
                KeyedResult::Ran(reply)
            }
        }
    }

    /// The reaper's tick: expire what is due now. Returns how many holds expired.
    pub fn expire_due(&self) -> usize {
        let mut sink = MemoryOnly;
        self.allocator.expire_due(self.now_ms(), &mut sink)
    }
}
