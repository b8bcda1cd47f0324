//! Starting a replica: the raft log and the state machine from `<data-dir>/raft/`, the peer
//! network, openraft itself, and (first start of a new cluster) its formation.
//!
//! Formation: nodes started with empty directories and the same `--peers` form the cluster
//! by themselves. The member with the smallest id initializes it with every peer as a voter;
//! the others wait to be contacted. A restarted node finds its vote and log and rejoins. A node
//! added later (`livestock cluster add`) starts empty and is brought in by the leader.
//!
//! Wiring: production opens with [`open`] / [`open_in`] (raft over [`PeerNetwork`], the log's
//! writer thread). [`open_with`] takes the raft network, the log's mode and the election
//! timeout range as parameters: the deterministic cluster simulation (`tests/sim_cluster`)
//! passes a simulated network, an inline log and a range one millisecond wide (openraft draws
//! election timeouts from an unseeded RNG; a one-value range leaves it nothing to choose).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use openraft::network::{NetSnapshot, RaftNetworkFactory};
use openraft::{Config, SnapshotPolicy};

use crate::alloc::AllocatorConfig;
use crate::cluster::log_store::{RaftLog, RaftLogConfig};
use crate::cluster::network::PeerNetwork;
use crate::cluster::replica::{Raft, Replica, ReplicaTiming};
use crate::cluster::state_machine::StateMachine;
use crate::cluster::types::{NodeId, PeerNode, SnapshotData, TypeConfig};
use crate::idempotency::IdempotencyTable;
use crate::wal::{DirStorage, Storage};

/// What a replica is started with.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub node_id: NodeId,
    /// Every member at formation: id and peer address.
    pub peers: Vec<(NodeId, String)>,
    pub secret: Option<Arc<str>>,
    pub allocator: AllocatorConfig,
    pub idempotency_window_ms: u64,
    pub idempotency_keys_max: usize,
    pub timing: ReplicaTiming,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub snapshot_entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot open the raft directory: {0}")]
    Io(#[from] io::Error),
    #[error("raft: {0}")]
    Raft(String),
}

/// The directory the replica keeps its log, vote and snapshot in.
pub const RAFT_DIR: &str = "raft";

/// How a replica is connected, beyond its configuration (see "Wiring" in the module docs).
pub struct Wiring<N> {
    /// What openraft sends its RPCs through.
    pub raft_network: N,
    /// The peer client the replica forwards writes with.
    pub peers: PeerNetwork,
    pub log: RaftLogConfig,
    /// The exclusive upper end of the election timeout range; `None`: twice the minimum.
    pub election_timeout_max_ms: Option<u64>,
}

impl Wiring<PeerNetwork> {
    /// Production: raft and forwarding share one peer client; the log has its writer thread.
    pub fn production(config: &ReplicaConfig) -> Result<Self, ClusterError> {
        let network = PeerNetwork::new(config.node_id, config.secret.clone())
            .map_err(|e| ClusterError::Raft(format!("cluster secret: {e}")))?;
        Ok(Wiring {
            raft_network: network.clone(),
            peers: network,
            log: RaftLogConfig::default(),
            election_timeout_max_ms: None,
        })
    }
}

/// openraft's settings from ours. Elections: a follower waits a random time in
/// [min, 2 x min) without a heartbeat before it campaigns; pre-vote keeps a node that was cut
/// off from raising the term when it comes back.
fn raft_config(
    config: &ReplicaConfig,
    election_timeout_max_ms: Option<u64>,
) -> Result<Config, ClusterError> {
    let raft = Config {
        cluster_name: "livestock".to_owned(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: election_timeout_max_ms.unwrap_or(config.election_timeout_min_ms * 2),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_entries),
        // Keep some log behind a snapshot: a follower a little behind catches up from the log,
        // not with a whole snapshot.
        max_in_snapshot_log_to_keep: config.snapshot_entries.min(10_000),
        // A leader restarted before anyone else was elected would otherwise lead its old term
        // again without an election. Its log then holds that term's entries decided by the
        // process that died, which the new process's live allocator never saw; the state
        // machine would skip them as "already in live" once they commit, and the leader would
        // decide against a state without them. Found twice: by the kill loop (a confirm
        // committed while the restored leader answered `hold_expired` to its retry) and by
        // tests/sim_cluster. A restarted node starts as a follower and leads only a term it
        // won, whose entries are all its own.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    raft.validate().map_err(|e| ClusterError::Raft(e.to_string()))
}

/// Opens (or creates) the replica in `data_dir/raft` and starts raft. Call inside a tokio
/// runtime. Returns once raft runs; formation, if this node forms the cluster, is under way.
pub async fn open(
    data_dir: &std::path::Path,
    config: ReplicaConfig,
) -> Result<Arc<Replica>, ClusterError> {
    let dir = data_dir.join(RAFT_DIR);
    std::fs::create_dir_all(&dir)?;
    let storage: Arc<dyn Storage> = Arc::new(DirStorage::open(&dir)?);
    open_in(storage, config).await
}

/// As [`open`], over any storage (tests use a faulty one).
pub async fn open_in(
    storage: Arc<dyn Storage>,
    config: ReplicaConfig,
) -> Result<Arc<Replica>, ClusterError> {
    let wiring = Wiring::production(&config)?;
    open_with(storage, config, wiring).await
}

/// As [`open_in`], wired as the caller says (see "Wiring" in the module docs).
pub async fn open_with<N>(
    storage: Arc<dyn Storage>,
    config: ReplicaConfig,
    wiring: Wiring<N>,
) -> Result<Arc<Replica>, ClusterError>
where
    N: RaftNetworkFactory<TypeConfig>,
    N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
{
    let idempotency =
        Arc::new(IdempotencyTable::new(config.idempotency_window_ms, config.idempotency_keys_max));
    let state_machine = StateMachine::open(
        storage.clone(),
        config.node_id,
        config.allocator,
        idempotency,
        config.idempotency_window_ms,
    )?;
    let shared = state_machine.shared.clone();
    let log = RaftLog::open(storage, wiring.log)?;
    let raft_config = Arc::new(raft_config(&config, wiring.election_timeout_max_ms)?);
    let raft: Raft =
        openraft::Raft::new(config.node_id, raft_config, wiring.raft_network, log, state_machine)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
    let formed = raft.is_initialized().await.map_err(|e| ClusterError::Raft(e.to_string()))?;
    let smallest = config.peers.iter().map(|(id, _)| *id).min();
    if !formed && smallest == Some(config.node_id) {
        let members: BTreeMap<NodeId, PeerNode> = config
            .peers
            .iter()
            .map(|(id, addr)| (*id, PeerNode { peer_addr: addr.clone() }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(members = config.peers.len(), "cluster formed"),
            // Another start already formed it (a race on a restart): nothing to do.
            Err(e) => tracing::info!(error = %e, "cluster not formed here"),
        }
    }
    Ok(Replica::start(raft, shared, wiring.peers, config.timing))
}
