//! The node: the shell around the allocator that the HTTP layer talks to.
//!
//! It owns what the pure parts must not: the clock, the idempotency table, and the log the
//! allocator's events go to. Each command runs synchronously, start to finish, without an
//! `.await`; only then does the request wait (asynchronously) for its record to be durable, so
//! a client that disconnects mid-request cannot leave a half-done change.

use std::sync::Arc;

use crate::alloc::{Allocator, AllocatorConfig};
use crate::clock::Clock;
use livestock_core::command::{Command, Outcome};
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::event::{Event, EventSink};
use livestock_core::ids::HoldIdKey;
use crate::http::error::ApiError;
use crate::idempotency::{Begin, IdempotencyTable, StoredReply};
use crate::metrics::Metrics;
use crate::wal::{self, Durability, KeptReply, Record, RecoveryReport, Storage, Wal, WalConfig};

#[derive(Clone, Copy, Debug)]
pub struct NodeConfig {
    pub allocator: AllocatorConfig,
    pub idempotency_window_ms: u64,
    pub idempotency_keys_max: usize,
}

pub struct Node {
    metrics: Metrics,
    allocator: Allocator,
    clock: Arc<dyn Clock>,
    idempotency: IdempotencyTable,
    /// `None`: state lives in memory only (tests and tools that need no durability).
    wal: Option<Wal>,
}

/// A keyed request's identity: where its key lives and what request it stands for.
pub struct Keyed<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub fingerprint: u64,
}

/// A command's answer, and the log record the answer depends on.
pub struct Executed {
    pub reply: StoredReply,
    /// Answer only once this LSN is durable (see [`Node::durable`]).
    pub lsn: Option<u64>,
}

/// What became of a keyed request.
pub enum KeyedResult {
    /// It executed now.
    Ran(Executed),
    /// It had executed before: the stored answer.
    Replayed(Executed),
    Mismatch,
    InFlight,
    Full,
}

type Render<'a> = &'a dyn Fn(&Result<Outcome, CommandError>) -> StoredReply;

/// The allocator's event sink for one command: appends each event to the log (with the
/// request's answer when it is keyed) and remembers the answer and the LSN.
struct Journal<'a> {
    wal: Option<&'a Wal>,
    metrics: &'a Metrics,
    now_ms: u64,
    render: Option<Render<'a>>,
    keyed: Option<&'a Keyed<'a>>,
    reply: Option<StoredReply>,
    lsn: Option<u64>,
}

impl EventSink for Journal<'_> {
    fn append(&mut self, event: Event, outcome: &Outcome) {
        if let (Event::Expired { at_ms, .. }, Outcome::Hold(view)) = (&event, outcome) {
            self.metrics.expired(at_ms.saturating_sub(view.hold.expires_at_ms));
        }
        // The answer is rendered here, from the outcome as the event was ordered, so the answer
        // sent now and the one kept in the log for retries are the same bytes.
        let reply = self.render.map(|render| render(&Ok(outcome.clone())));
        if let Some(wal) = self.wal {
            let kept = match (self.keyed, &reply) {
                (Some(keyed), Some(reply)) => Some(KeptReply {
                    scope: keyed.scope.to_owned(),
                    key: keyed.key.to_owned(),
                    fingerprint: keyed.fingerprint,
                    status: reply.status,
                    body: reply.body.to_vec(),
                    seen_ms: self.now_ms,
                }),
                _ => None,
            };
            self.lsn = Some(wal.append(Record { at_ms: self.now_ms, event, reply: kept }));
        }
        self.reply = reply;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Recovery(#[from] wal::RecoveryError),
    #[error("cannot start the log: {0}")]
    Io(#[from] std::io::Error),
    #[error("recovered state is inconsistent: {0}")]
    Inconsistent(String),
}

fn unavailable(reason: &str) -> StoredReply {
    ApiError::new(ErrorCode::StorageUnavailable, format!("storage unavailable: {reason}")).reply()
}

impl Node {
    /// A node whose state lives in memory only.
    pub fn new(config: NodeConfig, clock: Arc<dyn Clock>) -> Self {
        Node {
            metrics: Metrics::default(),
            allocator: Allocator::new(config.allocator),
            clock,
            idempotency: IdempotencyTable::new(
                config.idempotency_window_ms,
                config.idempotency_keys_max,
            ),
            wal: None,
        }
    }

    /// Recovers the state in `storage` and starts logging to it. Holds that expired while the
    /// node was down are expired (and logged) before this returns.
    pub fn open(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        storage: Arc<dyn Storage>,
        wal_config: WalConfig,
        new_key: HoldIdKey,
    ) -> Result<(Node, RecoveryReport), OpenError> {
        let started = std::time::Instant::now();
        let recovered = wal::recover(&*storage, config.allocator, new_key, true)?;
        let shadow = wal::recovery::shadow_of(&recovered)
            .map_err(|e| OpenError::Inconsistent(e.to_string()))?;
        let now_ms = clock.now_ms();
        let idempotency =
            IdempotencyTable::new(config.idempotency_window_ms, config.idempotency_keys_max);
        for r in &recovered.replies {
            let reply = StoredReply { status: r.status, body: r.body.clone().into() };
            idempotency.restore(&r.scope, &r.key, r.fingerprint, reply, r.seen_ms, now_ms);
        }
        let start = wal::WalStart {
            next_lsn: recovered.next_lsn(),
            checkpoint_lsn: recovered.report.checkpoint_lsn.unwrap_or(0),
            shadow,
            replies: recovered.replies,
        };
        let wal = Wal::start(storage, start, wal_config)?;
        let metrics = Metrics::default();
        let allocator = recovered.allocator;
        let node = Node { metrics, allocator, clock, idempotency, wal: Some(wal) };
        node.expire_due();
        node.metrics.recovered_in(started.elapsed());
        Ok((node, recovered.report))
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

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn wal(&self) -> Option<&Wal> {
        self.wal.as_ref()
    }

    /// Runs a command. `render` turns its result into the answer.
    pub fn execute(&self, command: &Command, render: Render<'_>) -> Executed {
        self.run(command, render, None)
    }

    fn run(&self, command: &Command, render: Render<'_>, keyed: Option<&Keyed<'_>>) -> Executed {
        if let Some(wal) = &self.wal {
            if !wal.is_writable() {
                return Executed { reply: unavailable("the log is not writable"), lsn: None };
            }
        }
        let now_ms = self.now_ms();
        let mut journal = Journal {
            wal: self.wal.as_ref(),
            metrics: &self.metrics,
            now_ms,
            render: Some(render),
            keyed,
            reply: None,
            lsn: None,
        };
        let result = self.allocator.execute(command, now_ms, &mut journal);
        if keyed.is_some() && result.is_ok() && journal.lsn.is_none() && self.wal.is_some() {
            // A keyed success that changed nothing: log its answer all the same, or a retry
            // after a restart would execute again against a state that has moved on.
            if let Ok(outcome) = &result {
                journal.append(Event::Answered { at_ms: now_ms }, outcome);
            }
        }
        let reply = journal.reply.take().unwrap_or_else(|| render(&result));
        // A success without an event of its own is a retry or a no-op ("already confirmed"):
        // it acknowledges state another request changed, perhaps not yet durably. Answer it
        // only once everything logged so far is durable (one group commit at most).
        let lsn = match (journal.lsn, &result, &self.wal) {
            (None, Ok(_), Some(wal)) => Some(wal.last_appended_lsn()),
            (lsn, _, _) => lsn,
        };
        Executed { reply, lsn }
    }

    /// Runs a command under an idempotency key. `remember` says whether an answer is kept for
    /// retries (business outcomes are; malformed requests and server trouble are not).
    pub fn execute_keyed(
        &self,
        keyed: &Keyed<'_>,
        command: &Command,
        render: Render<'_>,
        remember: impl Fn(&StoredReply) -> bool,
    ) -> KeyedResult {
        let now_ms = self.now_ms();
        match self.idempotency.begin(keyed.scope, keyed.key, keyed.fingerprint, now_ms) {
            Begin::Replay(reply, lsn) => KeyedResult::Replayed(Executed { reply, lsn }),
            Begin::Mismatch => KeyedResult::Mismatch,
            Begin::InFlight => KeyedResult::InFlight,
            Begin::Full => KeyedResult::Full,
            Begin::Execute(guard) => {
                let executed = self.run(command, render, Some(keyed));
                if remember(&executed.reply) {
                    guard.finish(executed.reply.clone(), executed.lsn);
                }
                KeyedResult::Ran(executed)
            }
        }
    }

    /// Waits until an answer may go out: its record is fsynced (strict) or written to the
    /// kernel (relaxed: it then survives a crash of the process, and a crash of the machine
    /// loses at most the last fsync interval). `Err` carries the 503 to send instead.
    pub async fn durable(&self, lsn: Option<u64>) -> Result<(), StoredReply> {
        let (Some(wal), Some(lsn)) = (&self.wal, lsn) else { return Ok(()) };
        let reached = match wal.durability() {
            Durability::Strict => wal.wait_durable(lsn).await,
            Durability::Relaxed { .. } => wal.wait_written(lsn).await,
        };
        reached.map_err(|reason| unavailable(&reason))
    }

    /// The reaper's tick: expire what is due now. Returns how many holds expired.
    pub fn expire_due(&self) -> usize {
        if self.wal.as_ref().is_some_and(|wal| !wal.is_writable()) {
            return 0;
        }
        let mut journal = Journal {
            wal: self.wal.as_ref(),
            metrics: &self.metrics,
            now_ms: self.now_ms(),
            render: None,
            keyed: None,
            reply: None,
            lsn: None,
        };
        let expired = self.allocator.expire_due(journal.now_ms, &mut journal);
        // Keys past their window are also dropped as new keys arrive; this keeps the count
        // (and memory) honest while traffic is idle.
        self.idempotency.expire_all(journal.now_ms);
        expired
    }

    /// Flushes the log and writes a final checkpoint. Call after the server stopped.
    pub fn close(&self) -> Result<(), String> {
        match &self.wal {
            Some(wal) => wal.close(),
            None => Ok(()),
        }
    }
}
