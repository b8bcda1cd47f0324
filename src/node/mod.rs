//! The node: the shell around the allocator that the HTTP layer talks to.
//!
//! It owns what the pure parts must not: the clock, the idempotency table, and the log the
//! allocator's events go to. Each command runs synchronously, start to finish, without an
//! `.await`; only then does the request wait (asynchronously) for its record to be durable, so
//! a client that disconnects mid-request cannot leave a half-done change.
//!
//! It answers in types (`Result<Outcome, CommandError>`, [`Unavailable`]); statuses and JSON
//! are the HTTP layer's. The one exception is a keyed command, whose answer the node must keep
//! for retries: the caller passes the [`Render`] that turns a result into that answer.
//!
//! | file | concept |
//! |---|---|
//! | `mod.rs` | the node: open (recover), execute, keyed execute, durability waits, close |
//! | `journal.rs` | the allocator's event sink: events to the log, in decision order |
//! | `reaper.rs` | the expiry tick, an async task beside the node |
//! | `scrape.rs` | the `/metrics` text: process metrics plus the state read at scrape time |

mod journal;
pub mod reaper;
mod scrape;

pub use journal::Render;
pub use scrape::scrape;

use std::sync::Arc;

use crate::alloc::{Allocator, AllocatorConfig};
use crate::clock::Clock;
use crate::cluster::replica::{NotDecided, Replica};
use crate::idempotency::{Begin, IdempotencyTable, StoredReply};
use crate::metrics::Metrics;
use crate::node::journal::{Journal, Sink};
use crate::sync::ArcCell;
use crate::wal::{self, Durability, RecoveryReport, Storage, Wal, WalConfig};
use livestock_core::command::{Command, Outcome};
use livestock_core::error::CommandError;
use livestock_core::event::{Event, EventSink};
use livestock_core::ids::HoldIdKey;

#[derive(Clone, Copy, Debug)]
pub struct NodeConfig {
    pub allocator: AllocatorConfig,
    pub idempotency_window_ms: u64,
    pub idempotency_keys_max: usize,
}

pub struct Node {
    metrics: Metrics,
    /// The live allocator. Swapped only in cluster mode, when a replica that stops leading
    /// drops decisions that did not commit (see `cluster::state_machine`).
    allocator: LiveAllocator,
    clock: Arc<dyn Clock>,
    idempotency: Arc<IdempotencyTable>,
    log: Log,
}

/// The live allocator: fixed for a single node (no atomic load on the request path: a swap
/// cell cost the sold-out answer 7%), swappable in a cluster (see `cluster::state_machine`).
enum LiveAllocator {
    Fixed(Allocator),
    Swappable(Arc<ArcCell<Allocator>>),
}

/// A handle on the live allocator for the length of one use.
pub enum AllocatorRef<'a> {
    Fixed(&'a Allocator),
    Loaded(arc_swap::Guard<Arc<Allocator>>),
}

impl std::ops::Deref for AllocatorRef<'_> {
    type Target = Allocator;
    #[inline]
    fn deref(&self) -> &Allocator {
        match self {
            AllocatorRef::Fixed(allocator) => allocator,
            AllocatorRef::Loaded(guard) => guard,
        }
    }
}

/// Where decided events go.
enum Log {
    /// Nowhere: state lives in memory only (tests and tools that need no durability).
    Memory,
    /// The single-node write-ahead log (boxed: the variants differ in size by hundreds of
    /// bytes, and a node has one).
    Wal(Box<Wal>),
    /// A raft group: a decision is acknowledged once a majority has it durable.
    Raft(Arc<Replica>),
}

/// The right to decide in cluster mode (held while a command runs), and the term it decides
/// in. Outside a cluster it guards nothing.
struct Decider<'a> {
    _guard: Option<parking_lot::RwLockReadGuard<'a, Option<u64>>>,
    sink_term: u64,
}

/// A keyed request's identity: where its key lives and what request it stands for.
pub struct Keyed<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub fingerprint: u64,
}

/// A command's result, and the log record it depends on.
#[derive(Debug)]
pub struct Executed {
    /// The outcome as of the command's (last) event, or the refusal.
    pub result: Result<Outcome, CommandError>,
    /// Answer only once this LSN is durable (see [`Node::durable`]).
    pub lsn: Option<u64>,
}

/// A keyed command's answer as it goes out (and is kept for retries), and the log record it
/// depends on.
#[derive(Debug)]
pub struct Answered {
    pub reply: StoredReply,
    /// Answer only once this LSN is durable (see [`Node::durable`]).
    pub lsn: Option<u64>,
}

/// What became of a keyed request.
#[derive(Debug)]
pub enum KeyedResult {
    /// It executed now.
    Ran(Answered),
    /// It had executed before: the stored answer.
    Replayed(Answered),
    Mismatch,
    InFlight,
    Full,
}

/// The log cannot make a change durable (it is poisoned, or closed): nothing was changed, or
/// what was changed will not be acknowledged. The HTTP layer answers 503
/// `storage_unavailable`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// Cluster mode: this node may not decide now, or the decision did not commit (503
    /// `no_leader`, or a forward to the leader).
    #[error("{0}")]
    Cluster(NotDecided),
}

impl From<NotDecided> for Unavailable {
    fn from(e: NotDecided) -> Self {
        Unavailable::Cluster(e)
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

impl Node {
    /// A node whose state lives in memory only.
    pub fn new(config: NodeConfig, clock: Arc<dyn Clock>) -> Self {
        Node {
            metrics: Metrics::default(),
            allocator: LiveAllocator::Fixed(Allocator::new(config.allocator)),
            clock,
            idempotency: Arc::new(IdempotencyTable::new(
                config.idempotency_window_ms,
                config.idempotency_keys_max,
            )),
            log: Log::Memory,
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
            // Only successes are kept in the log (see `remembered` in the HTTP layer).
            let reply = StoredReply { status: r.status, body: r.body.clone().into(), code: None };
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
        let node = Node {
            metrics,
            allocator: LiveAllocator::Fixed(allocator),
            clock,
            idempotency: Arc::new(idempotency),
            log: Log::Wal(Box::new(wal)),
        };
        node.expire_due();
        node.metrics.recovered_in(started.elapsed());
        Ok((node, recovered.report))
    }

    /// A node of a cluster: its state is the replica's (`cluster::open` recovers it).
    pub fn clustered(metrics: Metrics, clock: Arc<dyn Clock>, replica: Arc<Replica>) -> Node {
        Node {
            metrics,
            allocator: LiveAllocator::Swappable(replica.shared.live.clone()),
            clock,
            idempotency: replica.shared.idempotency.clone(),
            log: Log::Raft(replica),
        }
    }

    /// The clock. In a cluster, never behind the newest time a leader stamped on an applied
    /// entry: a new leader whose clock runs late does not decide in the past.
    pub fn now_ms(&self) -> u64 {
        let now_ms = self.clock.now_ms();
        match &self.log {
            Log::Raft(replica) => {
                now_ms.max(replica.shared.stamped_ms.load(std::sync::atomic::Ordering::Relaxed))
            }
            _ => now_ms,
        }
    }

    /// The live allocator (a cheap handle: at most one atomic load).
    #[inline]
    pub fn allocator(&self) -> AllocatorRef<'_> {
        match &self.allocator {
            LiveAllocator::Fixed(allocator) => AllocatorRef::Fixed(allocator),
            LiveAllocator::Swappable(cell) => AllocatorRef::Loaded(cell.load()),
        }
    }

    /// Runs a read against the state a read may see: the live allocator on a single node; in a
    /// cluster the applied (committed) state, never a decision that may still be lost. In a
    /// cluster, call after `Replica::read_barrier` for a linearizable read.
    pub fn read<R>(&self, f: impl FnOnce(&Allocator, u64) -> R) -> R {
        let now_ms = self.now_ms();
        match &self.log {
            Log::Raft(replica) => f(&replica.shared.applied.lock().allocator, now_ms),
            _ => f(&self.allocator(), now_ms),
        }
    }

    /// The raft replica, in cluster mode.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        match &self.log {
            Log::Raft(replica) => Some(replica),
            _ => None,
        }
    }

    pub fn idempotency(&self) -> &IdempotencyTable {
        &self.idempotency
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn wal(&self) -> Option<&Wal> {
        match &self.log {
            Log::Wal(wal) => Some(wal),
            _ => None,
        }
    }

    pub(crate) fn check_writable(&self) -> Result<(), Unavailable> {
        match &self.log {
            Log::Wal(wal) if !wal.is_writable() => {
                Err(Unavailable::Storage("the log is not writable".to_owned()))
            }
            Log::Raft(replica) => match replica.stopped() {
                None => Ok(()),
                Some(why) => Err(Unavailable::Storage(format!("the replica stopped: {why}"))),
            },
            _ => Ok(()),
        }
    }

    /// In cluster mode, the right to decide (a read guard on the decider term) and the term.
    fn decider(&self) -> Result<Decider<'_>, Unavailable> {
        match &self.log {
            Log::Raft(replica) => {
                let guard = replica.decide()?;
                let term = (*guard).unwrap_or_default();
                Ok(Decider { _guard: Some(guard), sink_term: term })
            }
            _ => Ok(Decider { _guard: None, sink_term: 0 }),
        }
    }

    fn sink(&self, term: u64) -> Sink<'_> {
        match &self.log {
            Log::Memory => Sink::Memory,
            Log::Wal(wal) => Sink::Wal(wal),
            Log::Raft(replica) => Sink::Raft(replica, term),
        }
    }

    /// Runs a command. The answer reports the outcome as of the command's event (what was
    /// decided), not a later read.
    pub fn execute(&self, command: &Command) -> Result<Executed, Unavailable> {
        self.check_writable()?;
        let decider = self.decider()?;
        let mut journal = Journal::new(self.sink(decider.sink_term), &self.metrics, self.now_ms());
        let result = self.allocator().execute(command, journal.now_ms, &mut journal);
        drop(decider);
        let lsn = self.settled_lsn(journal.lsn, result.is_ok());
        let result = match journal.outcome.take() {
            Some(outcome) => Ok(outcome),
            None => result,
        };
        Ok(Executed { result, lsn })
    }

    /// A success without an event of its own is a retry or a no-op ("already confirmed"): it
    /// acknowledges state another request changed, perhaps not yet durably. Answer it only
    /// once everything logged so far is durable (one group commit at most).
    fn settled_lsn(&self, logged: Option<u64>, ok: bool) -> Option<u64> {
        match (logged, ok, &self.log) {
            (None, true, Log::Wal(wal)) => Some(wal.last_appended_lsn()),
            (None, true, Log::Raft(replica)) => Some(replica.last_proposed()),
            (lsn, _, _) => lsn,
        }
    }

    /// Runs a command under an idempotency key. `render` turns its result into the answer,
    /// which is logged with the command's event; `remember` says whether an answer is kept for
    /// retries (business outcomes are; malformed requests and server trouble are not).
    pub fn execute_keyed(
        &self,
        keyed: &Keyed<'_>,
        command: &Command,
        render: Render<'_>,
        remember: impl Fn(&StoredReply) -> bool,
    ) -> Result<KeyedResult, Unavailable> {
        // Held from the key's lookup to its answer being kept: a replica that stops leading
        // rebuilds its answers under the write side, so none of a lost decision survives.
        let decider = self.decider()?;
        let now_ms = self.now_ms();
        let guard = match self.idempotency.begin(keyed.scope, keyed.key, keyed.fingerprint, now_ms)
        {
            Begin::Replay(reply, lsn) => return Ok(KeyedResult::Replayed(Answered { reply, lsn })),
            Begin::Mismatch => return Ok(KeyedResult::Mismatch),
            Begin::InFlight => return Ok(KeyedResult::InFlight),
            Begin::Full => return Ok(KeyedResult::Full),
            Begin::Execute(guard) => guard,
        };
        // An error here drops the guard: the key is forgotten and a retry executes.
        self.check_writable()?;
        let mut journal = Journal::new(self.sink(decider.sink_term), &self.metrics, now_ms);
        journal.keyed = Some((keyed, render));
        let result = self.allocator().execute(command, now_ms, &mut journal);
        if journal.reply.is_none() && !matches!(self.log, Log::Memory) {
            // A keyed success with no record of its own (it changed nothing, or only its
            // consequences were logged: a reserve that made a draw happen, then answered the
            // user's entry): log its answer all the same, or a retry after a restart would
            // execute again against a state that has moved on.
            if let Ok(outcome) = &result {
                journal.append(Event::Answered { at_ms: now_ms }, outcome);
            }
        }
        let reply = journal.reply.take().unwrap_or_else(|| render(&result));
        let lsn = self.settled_lsn(journal.lsn, result.is_ok());
        if remember(&reply) {
            guard.finish(reply.clone(), lsn);
        }
        drop(decider);
        Ok(KeyedResult::Ran(Answered { reply, lsn }))
    }

    /// Waits until an answer may go out: its record is fsynced (strict) or written to the
    /// kernel (relaxed: it then survives a crash of the process, and a crash of the machine
    /// loses at most the last fsync interval).
    pub async fn durable(&self, lsn: Option<u64>) -> Result<(), Unavailable> {
        let Some(lsn) = lsn else { return Ok(()) };
        let wal = match &self.log {
            Log::Memory => return Ok(()),
            // Boxed: inline, its timer and watch made every durability wait's future bigger.
            Log::Raft(replica) => return Ok(Box::pin(replica.wait_committed(lsn)).await?),
            Log::Wal(wal) => wal,
        };
        let reached = match wal.durability() {
            Durability::Strict => wal.wait_durable(lsn).await,
            Durability::Relaxed { .. } => wal.wait_written(lsn).await,
        };
        reached.map_err(Unavailable::Storage)
    }

    /// The reaper's tick: expire what is due now. Returns how many holds expired.
    pub fn expire_due(&self) -> usize {
        if self.check_writable().is_err() {
            return 0;
        }
        // In a cluster only the leader decides expiries; a follower applies them.
        let Ok(decider) = self.decider() else {
            self.idempotency.expire_all(self.now_ms());
            return 0;
        };
        let mut journal = Journal::new(self.sink(decider.sink_term), &self.metrics, self.now_ms());
        let expired = self.allocator().expire_due(journal.now_ms, &mut journal);
        drop(decider);
        // Keys past their window are also dropped as new keys arrive; this keeps the count
        // (and memory) honest while traffic is idle.
        self.idempotency.expire_all(journal.now_ms);
        expired
    }

    /// Flushes the log and writes a final checkpoint. Call after the server stopped.
    pub fn close(&self) -> Result<(), String> {
        match &self.log {
            Log::Wal(wal) => wal.close(),
            // The replica's log is fsynced as it goes; `cluster::shutdown` stops raft.
            Log::Raft(_) | Log::Memory => Ok(()),
        }
    }
}
