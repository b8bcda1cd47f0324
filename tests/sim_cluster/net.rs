//! The simulated network: openraft's RPCs delivered straight to the target replica's `Raft`, on
//! the runtime's virtual clock, through links that drop, delay and cut.
//!
//! Each leg of an exchange (the request, then the answer) is dropped with the plan's
//! probability or when its directed link is cut (a partition), and otherwise delayed by a draw
//! from the current delay range; two messages on one link overtake each other whenever the
//! later one draws the shorter delay (reordering). A lost leg is noticed as a real client
//! notices it: the exchange runs into the RPC's soft TTL (`Timeout`). A node that is down
//! refuses at once (`Unreachable`, as a refused connection; openraft then backs off, as it
//! does with `PeerNetwork`). Successful appends tell the target replica it heard the leader,
//! as the peer listener does.
//!
//! The draws come from the network's own PRNG (forked from the seed), in the order the
//! runtime polls the exchanges: on the one-thread runtime with paused time that order is the
//! program's, so a seed replays its network too.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use livestock::cluster::replica::Replica;
use livestock::cluster::types::{NodeId, PeerNode, Snapshot, SnapshotData, TypeConfig, Vote};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};

use crate::sim::rng::Rng;

/// Message counts, for the tally.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub dropped: u64,
    pub cut: u64,
    pub refused: u64,
}

struct State {
    rng: Rng,
    /// The running incarnation of each node (absent while it is down).
    up: BTreeMap<NodeId, Arc<Replica>>,
    /// Directed links that carry nothing: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_per_mille: u32,
    delay_ms: (u64, u64),
    stats: NetStats,
}

/// The network every node's raft talks through. Shared by the nodes and the history.
pub struct SimNet {
    state: Mutex<State>,
}

impl SimNet {
    pub fn new(rng: Rng) -> Arc<SimNet> {
        let state = State {
            rng,
            up: BTreeMap::new(),
            cut: BTreeSet::new(),
            drop_per_mille: 0,
            delay_ms: (0, 2),
            stats: NetStats::default(),
        };
        Arc::new(SimNet { state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn up(&self, id: NodeId, replica: Arc<Replica>) {
        self.lock().up.insert(id, replica);
    }

    pub fn down(&self, id: NodeId) {
        self.lock().up.remove(&id);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_between(&self, a: NodeId, b: NodeId) {
        let mut state = self.lock();
        state.cut.insert((a, b));
        state.cut.insert((b, a));
    }

    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    pub fn heal(&self) {
        let mut state = self.lock();
        state.cut.clear();
        state.drop_per_mille = 0;
        state.delay_ms = (0, 2);
    }

    pub fn set_drop(&self, per_mille: u32) {
        self.lock().drop_per_mille = per_mille;
    }

    pub fn set_delay(&self, lo_ms: u64, hi_ms: u64) {
        self.lock().delay_ms = (lo_ms, hi_ms);
    }

    pub fn describe(&self) -> String {
        let state = self.lock();
        format!("cut={:?} drop={}‰ delay={:?}ms", state.cut, state.drop_per_mille, state.delay_ms)
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats.clone()
    }

    /// One leg from `from` to `to`: its delay, or `None` if it is lost.
    fn leg(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        let mut state = self.lock();
        let state = &mut *state;
        state.stats.sent += 1;
        if state.cut.contains(&(from, to)) {
            state.stats.cut += 1;
            return None;
        }
        if state.drop_per_mille > 0 && state.rng.chance(state.drop_per_mille) {
            state.stats.dropped += 1;
            return None;
        }
        let (lo, hi) = state.delay_ms;
        Some(Duration::from_millis(state.rng.range(lo, hi)))
    }

    fn target(&self, id: NodeId) -> Option<Arc<Replica>> {
        let mut state = self.lock();
        let replica = state.up.get(&id).cloned();
        if replica.is_none() {
            state.stats.refused += 1;
        }
        replica
    }
}

/// openraft's factory for one node: clients from `from` to each peer.
pub struct SimFactory {
    pub from: NodeId,
    pub net: Arc<SimNet>,
}

impl RaftNetworkFactory<TypeConfig> for SimFactory {
    type Network = SimClient;

    async fn new_client(&mut self, target: NodeId, _node: &PeerNode) -> SimClient {
        SimClient { from: self.from, to: target, net: self.net.clone() }
    }
}

pub struct SimClient {
    from: NodeId,
    to: NodeId,
    net: Arc<SimNet>,
}

/// Why the target could not answer (its raft stopped).
type Fatal = String;

impl SimClient {
    /// One exchange: the request leg, the target's handling, the answer leg, all within the
    /// RPC's soft TTL.
    async fn exchange<T, F, Fut>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        handle: F,
    ) -> Result<T, RPCError<TypeConfig>>
    where
        F: FnOnce(Arc<Replica>) -> Fut,
        Fut: Future<Output = Result<T, Fatal>>,
    {
        let exchange = async {
            let Some(delay) = self.net.leg(self.from, self.to) else {
                return std::future::pending().await;
            };
            tokio::time::sleep(delay).await;
            let Some(target) = self.net.target(self.to) else {
                return Err(self.unreachable("down".into()));
            };
            let answer = handle(target).await.map_err(|fatal| self.unreachable(fatal))?;
            let Some(delay) = self.net.leg(self.to, self.from) else {
                return std::future::pending().await;
            };
            tokio::time::sleep(delay).await;
            Ok(answer)
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.to,
                timeout: ttl,
            })),
        }
    }

    fn unreachable(&self, why: String) -> RPCError<TypeConfig> {
        RPCError::Unreachable(Unreachable::from_string(format!("sim node {}: {why}", self.to)))
    }
}

impl RaftNetworkV2<TypeConfig> for SimClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange(RPCTypes::AppendEntries, option.soft_ttl(), |target| async move {
            let leader_commit = rpc.leader_commit.as_ref().map(|id| id.index);
            let answer = target.raft.append_entries(rpc).await.map_err(|e| e.to_string())?;
            if matches!(answer, AppendEntriesResponse::Success) {
                // What the peer listener does for every accepted append.
                target.heard_from_leader(leader_commit);
            }
            Ok(answer)
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange(RPCTypes::Vote, option.soft_ttl(), |target| async move {
            target.raft.vote(rpc).await.map_err(|e| e.to_string())
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange(RPCTypes::Vote, option.soft_ttl(), |target| async move {
            target.raft.pre_vote(rpc).await.map_err(|e| e.to_string())
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send =
            self.exchange(RPCTypes::InstallSnapshot, option.soft_ttl() * 4, |target| async move {
                target.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string())
            });
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = send => sent.map_err(StreamingError::from),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange(RPCTypes::TransferLeader, option.soft_ttl(), |target| async move {
            target.raft.handle_transfer_leader(req).await.map_err(|e| e.to_string())
        })
        .await
    }

    /// `PeerNetwork`'s schedule, scaled to the simulation's faster timers: 10 ms doubling to
    /// 100 ms.
    fn backoff(&self) -> Option<Backoff> {
        let ms = std::iter::successors(Some(10u64), |ms| Some((ms * 2).min(100)));
        Some(Backoff::new(ms.map(Duration::from_millis)))
    }
}
