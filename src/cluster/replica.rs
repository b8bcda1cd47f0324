//! The node's handle on the raft group: who may decide, proposals in decision order, waiting
//! for a decision to commit, and the watcher that rebuilds the live state when this node stops
//! leading.
//!
//! A decision's life on the leader: a command runs on the live allocator under
//! [`Replica::decide`] (a read lock on the decider term); its record is queued with
//! [`Replica::propose`] under the allocator lock that ordered it, so the queue order is the
//! decision order; the proposer task hands queued records to openraft in that order, each
//! bound to the term it was decided in (`with_leader`), so a record decided under one
//! leadership can never be appended under another; the answer waits in
//! [`Replica::wait_committed`] until the entry is committed and applied.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::impls::ProgressResponder;
use openraft::ServerState;
use parking_lot::{Mutex, RwLockReadGuard};
use tokio::sync::{mpsc, watch, Notify};

use crate::cluster::network::PeerNetwork;
use crate::cluster::state_machine::{rebuild_live, Shared, StateMachine};
use crate::cluster::types::{Chain, Decision, NodeId, PeerNode, TypeConfig};
use crate::wal::Record;

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Why this node cannot decide (or could not get a decision committed) now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotDecided {
    /// No leader is known, or this node leads but has not caught up with its term yet.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// Another node leads: forward to it.
    #[error("node {0} leads")]
    Follower(NodeId, PeerNode),
    /// The decision was made but not committed in time (a minority leader, an election): its
    /// outcome is unknown until a retry with the same idempotency key asks again.
    #[error("not committed: {0}")]
    NotCommitted(String),
}

/// What `GET /v1/cluster` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub role: &'static str,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub state_digest: String,
    pub members: Vec<MemberStatus>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub peer_addr: String,
    pub voter: bool,
    /// The newest index the leader knows this member holds (`None` on a follower, which does
    /// not track it).
    pub matched_index: Option<u64>,
}

/// The replica's timing settings (from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct ReplicaTiming {
    pub commit_timeout_ms: u64,
    pub stale_refusal_ms: u64,
}

struct Proposal {
    term: u64,
    decision: Decision,
}

pub struct Replica {
    pub raft: Raft,
    pub shared: Arc<Shared>,
    network: PeerNetwork,
    commit_timeout_ms: u64,
    stale_refusal_ms: u64,
    /// When this follower last heard the leader (ms on `clock_origin`), and the commit index
    /// the leader said then: a follower is fresh while it heard the leader recently and has
    /// applied that far.
    heard_at_ms: AtomicU64,
    heard_commit: AtomicU64,
    /// tokio's clock (the OS's monotonic clock, or a runtime's paused one in the simulation).
    clock_origin: tokio::time::Instant,
    queue: Mutex<VecDeque<Proposal>>,
    queued: Notify,
    last_seq: AtomicU64,
    /// The first sequence number of the current run of deciding (see `types::Chain`): set
    /// when deciding starts, before any command can propose.
    run_start: AtomicU64,
    /// Every proposal with a sequence number up to this one is resolved (committed or failed).
    resolved: watch::Sender<u64>,
    /// Resolved proposals that failed (pruned from below as the watermark moves on).
    failed: Mutex<BTreeSet<u64>>,
}

/// Failed proposals remembered at most: a waiter looks within a commit timeout of the failure.
const FAILED_KEPT_MAX: usize = 1 << 16;

impl Replica {
    /// Starts the replica's tasks (proposer, completion, watcher) on the current runtime.
    pub fn start(
        raft: Raft,
        shared: Arc<Shared>,
        network: PeerNetwork,
        timing: ReplicaTiming,
    ) -> Arc<Replica> {
        let (resolved, _) = watch::channel(0);
        let replica = Arc::new(Replica {
            raft,
            shared,
            network,
            commit_timeout_ms: timing.commit_timeout_ms,
            stale_refusal_ms: timing.stale_refusal_ms,
            heard_at_ms: AtomicU64::new(0),
            heard_commit: AtomicU64::new(u64::MAX),
            clock_origin: tokio::time::Instant::now(),
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            last_seq: AtomicU64::new(0),
            run_start: AtomicU64::new(1),
            resolved,
            failed: Mutex::new(BTreeSet::new()),
        });
        let (completions, pending) = mpsc::unbounded_channel();
        tokio::spawn(proposer(replica.clone(), completions));
        tokio::spawn(completion(replica.clone(), pending));
        tokio::spawn(watcher(replica.clone()));
        replica
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The peer network (forwarding writes to the leader).
    pub fn network(&self) -> &PeerNetwork {
        &self.network
    }

    /// How long a follower waits for the leader's answer to a forwarded request: the leader's
    /// own commit wait, plus a margin for the two hops.
    pub fn forward_timeout_ms(&self) -> u64 {
        self.commit_timeout_ms + 500
    }

    fn since_origin_ms(&self) -> u64 {
        u64::try_from(self.clock_origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The peer listener calls this for every append (or heartbeat) the leader sends.
    pub fn heard_from_leader(&self, leader_commit: Option<u64>) {
        self.heard_commit.store(leader_commit.unwrap_or(0), Ordering::Release);
        self.heard_at_ms.store(self.since_origin_ms(), Ordering::Release);
    }

    /// Whether this follower may answer a refusal from its own state: it heard the leader
    /// within `stale_refusal_ms` and has applied what the leader had committed then.
    pub fn fresh(&self) -> bool {
        if self.stale_refusal_ms == 0 {
            return false;
        }
        let heard_at_ms = self.heard_at_ms.load(Ordering::Acquire);
        let commit = self.heard_commit.load(Ordering::Acquire);
        heard_at_ms > 0
            && self.since_origin_ms().saturating_sub(heard_at_ms) <= self.stale_refusal_ms
            && self.shared.applied_index.load(Ordering::Acquire) >= commit
    }

    /// A read lock under which a command may decide on the live allocator, with the term it
    /// decides in; or why not.
    pub fn decide(&self) -> Result<RwLockReadGuard<'_, Option<u64>>, NotDecided> {
        let decider = self.shared.decider.read();
        if decider.is_some() {
            return Ok(decider);
        }
        drop(decider);
        Err(self.not_leader())
    }

    /// Why the raft core stopped (a storage error is fatal to it), if it did.
    pub fn stopped(&self) -> Option<String> {
        match &self.raft.metrics().borrow_watched().running_state {
            Ok(()) => None,
            Err(fatal) => Some(fatal.to_string()),
        }
    }

    /// Who to send a write to instead.
    pub fn not_leader(&self) -> NotDecided {
        let metrics = self.raft.metrics().borrow_watched().clone();
        match metrics.current_leader {
            Some(id) if id != self.shared.node_id => {
                match metrics.membership_config.membership().get_node(&id) {
                    Some(node) => NotDecided::Follower(id, node.clone()),
                    None => NotDecided::NoLeader(format!("leader {id} is not a known member")),
                }
            }
            Some(_) => NotDecided::NoLeader("this node was elected and is catching up".into()),
            None => NotDecided::NoLeader("an election is under way".into()),
        }
    }

    /// Queues a decided record for the log. Call under the lock that ordered the decision and
    /// under [`Replica::decide`]'s guard (`term` is the guard's term). Returns its sequence
    /// number for [`Replica::wait_committed`].
    pub fn propose(&self, term: u64, record: Record) -> u64 {
        let mut queue = self.queue.lock();
        let seq = self.last_seq.load(Ordering::Relaxed) + 1;
        self.last_seq.store(seq, Ordering::Release);
        let chain = Chain { start: self.run_start.load(Ordering::Acquire), seq };
        queue.push_back(Proposal { term, decision: Decision { record, chain } });
        drop(queue);
        self.queued.notify_one();
        seq
    }

    /// The newest proposal's sequence number (a no-op success waits for it: it acknowledges
    /// state that earlier proposals changed).
    pub fn last_proposed(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Waits until proposal `seq` is committed and applied, or says why it will not be
    /// acknowledged. Never waits longer than the commit timeout.
    pub async fn wait_committed(&self, seq: u64) -> Result<(), NotDecided> {
        let mut resolved = self.resolved.subscribe();
        let timeout = Duration::from_millis(self.commit_timeout_ms);
        match tokio::time::timeout(timeout, resolved.wait_for(|r| *r >= seq)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(NotDecided::NotCommitted("the replica stopped".into())),
            Err(_) => {
                return Err(NotDecided::NotCommitted(format!(
                    "not committed within {} ms (no majority reachable?); retry with the same \
                     Idempotency-Key to learn the outcome",
                    self.commit_timeout_ms
                )))
            }
        }
        if self.failed.lock().contains(&seq) {
            return Err(NotDecided::NotCommitted(
                "the leadership changed before the decision committed; retry".into(),
            ));
        }
        Ok(())
    }

    /// Waits until this node has applied everything committed as of now, confirmed by a
    /// quorum (read index): a read after it is linearizable.
    pub async fn read_barrier(&self) -> Result<(), NotDecided> {
        match self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(e) => match e.forward_to_leader() {
                Some(f) => match (f.leader_id, f.leader_node.clone()) {
                    (Some(id), Some(node)) => Err(NotDecided::Follower(id, node)),
                    _ => Err(NotDecided::NoLeader("no leader to confirm the read".into())),
                },
                None => Err(NotDecided::NoLeader(e.to_string())),
            },
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let (applied_index, state_digest) = self.shared.state_digest();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = metrics.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                peer_addr: node.peer_addr.clone(),
                voter: voters.contains(id),
                matched_index: matched.get(id).and_then(|m| m.as_ref().map(|l| l.index)),
            })
            .collect();
        ClusterStatus {
            node_id: self.shared.node_id,
            role,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            commit_index: metrics.local_committed.as_ref().map(|l| l.index),
            applied_index,
            state_digest,
            members,
        }
    }

    fn resolve(&self, seq: u64, ok: bool) {
        if !ok {
            let mut failed = self.failed.lock();
            failed.insert(seq);
            while failed.len() > FAILED_KEPT_MAX {
                failed.pop_first();
            }
        }
        self.resolved.send_replace(seq);
    }
}

/// Hands queued records to openraft in decision order, each bound to its term.
async fn proposer(
    replica: Arc<Replica>,
    completions: mpsc::UnboundedSender<(u64, Option<CompleteRx>)>,
) {
    loop {
        let notified = replica.queued.notified();
        let batch: Vec<Proposal> = replica.queue.lock().drain(..).collect();
        if batch.is_empty() {
            notified.await;
            continue;
        }
        for Proposal { term, decision } in batch {
            let seq = decision.chain.seq;
            let (responder, rx) = ProgressResponder::complete_only();
            let leader = LeaderId { term, node_id: replica.shared.node_id };
            let sent = replica.raft.write(decision).with_leader(leader).responder(responder).await;
            let rx = sent.ok().map(|()| rx);
            if completions.send((seq, rx)).is_err() {
                return;
            }
        }
    }
}

/// No decision of this node can still reach the log: every proposal is resolved and every
/// entry in the log is applied.
fn quiet(replica: &Replica, m: &openraft::RaftMetrics<TypeConfig>) -> bool {
    let proposed = replica.last_seq.load(Ordering::Acquire);
    replica.queue.lock().is_empty()
        && *replica.resolved.borrow() >= proposed
        && m.last_applied.as_ref().map(|l| l.index) == m.last_log_index
}

type CompleteRx =
    openraft::alias::OneshotReceiverOf<TypeConfig, openraft::raft::ClientWriteResult<TypeConfig>>;

/// Resolves proposals in order as openraft answers them.
async fn completion(
    replica: Arc<Replica>,
    mut pending: mpsc::UnboundedReceiver<(u64, Option<CompleteRx>)>,
) {
    while let Some((seq, rx)) = pending.recv().await {
        let ok = match rx {
            // A void entry committed but changed nothing (a proposal before it was refused).
            Some(rx) => matches!(rx.await, Ok(Ok(written)) if !written.data.void),
            None => false,
        };
        if !ok {
            // The live state may hold this decision; it will never commit from here.
            replica.shared.live_dirty.store(true, Ordering::Release);
            replica.shared.wake.notify_one();
        }
        replica.resolve(seq, ok);
    }
}

/// Starts deciding once this node leads and has applied an entry of its own term (the blank
/// entry openraft appends on election: everything committed before is then applied to the
/// live state); stops, and rebuilds the live state, when it no longer leads that term or the
/// live state was found to hold a decision that lost.
async fn watcher(replica: Arc<Replica>) {
    let mut metrics = replica.raft.metrics();
    // The term of the last rebuild. Entries of that term proposed before the rebuild may
    // still commit; the live state no longer holds them, so they must apply to it, and the
    // state machine skips only the decider term's entries. So deciding restarts in that term
    // only once none can come: every proposal resolved and everything in the log applied
    // (`quiet`); in a later term, once its first entry is applied.
    let mut rebuilt_in: u64 = 0;
    loop {
        let m = metrics.borrow_and_update().clone();
        if m.state == ServerState::Shutdown {
            return;
        }
        let leading_term = match (&m.state, m.current_leader) {
            (ServerState::Leader, Some(id)) if id == replica.shared.node_id => Some(m.current_term),
            _ => None,
        };
        let applied_own_term = match (&m.last_applied, leading_term) {
            (Some(applied), Some(term)) => applied.committed_leader_id().term == term,
            _ => false,
        };
        let current = *replica.shared.decider.read();
        let dirty = replica.shared.live_dirty.load(Ordering::Acquire);
        if (current.is_some() && current != leading_term) || dirty {
            {
                let applied = replica.shared.applied.lock();
                rebuild_live(&replica.shared, &applied);
            }
            rebuilt_in = m.current_term;
            tracing::info!(term = ?current, "stopped deciding; live state rebuilt from the applied state");
        } else if current.is_none()
            && applied_own_term
            && leading_term
                .is_some_and(|t| t > rebuilt_in || (t == rebuilt_in && quiet(&replica, &m)))
        {
            // Still leading the term whose decisions were dropped (a write was refused, say
            // while the leader's lease had lapsed) resumes here: openraft ignores an election
            // triggered by a leader, so waiting for a new term would wait forever (found by
            // tests/sim_cluster).
            // The live state is the applied state plus nothing (no decision of ours pending:
            // the last term we decided in ended with a rebuild), so deciding may start.
            // A new run: its first proposal takes the next sequence number. No command
            // proposes meanwhile (none decides while `decider` is `None`).
            let mut decider = replica.shared.decider.write();
            replica
                .run_start
                .store(replica.last_seq.load(Ordering::Acquire) + 1, Ordering::Release);
            *decider = leading_term;
            drop(decider);
            tracing::info!(term = ?leading_term, "leading: deciding");
        }
        // Biased: polled in this order, not a random one, so a seeded simulation replays the
        // same wake-ups (either branch only loops back to re-read the state).
        tokio::select! {
            biased;
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = replica.shared.wake.notified() => {}
        }
    }
}
