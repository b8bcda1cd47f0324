//! Restoring a cluster from a backup (`livestock cluster restore`).
//!
//! A backup (`GET /v1/cluster/backup`, `livestock cluster backup`) is the applied state at the
//! leader's read index, in the snapshot file's format (`snapshot_file.rs`): everything
//! acknowledged before it was taken. A restore writes it into an empty data directory as that
//! node's snapshot, with the log purged up to it and committed there, so the node starts as if
//! it had built the snapshot itself.
//!
//! The membership inside the backup names the old cluster's addresses. A restore replaces it
//! with the new `--peers` (same log id), so the new cluster elects among its own members. Every
//! member of the new cluster is restored from the same backup: then each one holds the state,
//! none of them forms a fresh empty cluster (formation only happens on an empty log), and any
//! of them may win the first election. Each starts having voted for itself in the term after
//! the backup's last entry, so the first election is in a term no old leader held.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::Arc;

use livestock_core::ids::HoldIdKey;
use openraft::storage::RaftLogStorage;
use openraft::Membership as Config;

use crate::cluster::log_store::{RaftLog, RaftLogConfig};
use crate::cluster::open::RAFT_DIR;
use crate::cluster::snapshot_file;
use crate::cluster::state_machine::SnapshotBody;
use crate::cluster::types::{Membership, NodeId, PeerNode, Vote};
use crate::wal::{DirStorage, Storage};

/// What a restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The raft index the backup was taken at: the restored node's snapshot and commit.
    pub index: Option<u64>,
    /// Deals in the backup.
    pub deals: usize,
    pub bytes: usize,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Restores `backup` into `data_dir` (which must hold no raft state yet) as a member of the
/// cluster `peers`. `hold_id_key` is the new cluster's (derived from its secret): hold ids
/// are rendered with the key in the state, so a backup under another key is refused rather
/// than restored into a cluster whose nodes would render ids their peers cannot read.
pub async fn restore(
    backup: &[u8],
    data_dir: &Path,
    node_id: NodeId,
    peers: &[(NodeId, String)],
    hold_id_key: HoldIdKey,
) -> io::Result<Restored> {
    let dir = data_dir.join(RAFT_DIR);
    std::fs::create_dir_all(&dir)?;
    let storage: Arc<dyn Storage> = Arc::new(DirStorage::open(&dir)?);
    restore_in(backup, storage, node_id, peers, hold_id_key).await
}

/// As [`restore`], over any storage.
pub async fn restore_in(
    backup: &[u8],
    storage: Arc<dyn Storage>,
    node_id: NodeId,
    peers: &[(NodeId, String)],
    hold_id_key: HoldIdKey,
) -> io::Result<Restored> {
    if let Some(name) = storage.list()?.first() {
        return Err(invalid(format!(
            "the raft directory is not empty ({name}): a restore only writes a new node"
        )));
    }
    if !peers.iter().any(|(id, _)| *id == node_id) {
        return Err(invalid(format!("node {node_id} is not in the peers: name every member")));
    }
    let (mut meta, data, layout) = snapshot_file::decode(backup)?;
    let mut body = SnapshotBody::decode(&data, layout)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("backup body: {e}")))?;
    if body.last_applied != meta.last_log_id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the backup's meta and body disagree on its index",
        ));
    }
    if body.allocator.hold_id_key != hold_id_key {
        return Err(invalid(
            "the backup was taken under another cluster secret: restore with the same \
             LIVESTOCK_CLUSTER_SECRET"
                .into(),
        ));
    }
    let voters: BTreeSet<NodeId> = peers.iter().map(|(id, _)| *id).collect();
    let nodes: BTreeMap<NodeId, PeerNode> =
        peers.iter().map(|(id, addr)| (*id, PeerNode { peer_addr: addr.clone() })).collect();
    let config = Config::new(vec![voters], nodes).map_err(|e| invalid(e.to_string()))?;
    let membership = Membership::new(*meta.last_membership.log_id(), config);
    meta.last_membership = membership.clone();
    body.membership = membership;
    let deals = body.allocator.deals.len();
    let data = postcard::to_stdvec(&body).map_err(|e| io::Error::other(e.to_string()))?;
    snapshot_file::write(&*storage, &meta, &data)?;
    // The log starts after the snapshot, committed up to it: openraft then reads the state
    // from the snapshot and never asks for an entry before it. A node's vote is never behind
    // the leader of its last entry (openraft asserts it); a vote for itself one term later,
    // not granted by anyone, makes every restored member start with an election in a term
    // the old cluster's leaders never held.
    if let Some(last) = meta.last_log_id {
        let mut log = RaftLog::open(storage, RaftLogConfig::default())?;
        log.purge(last).await?;
        log.save_committed(Some(last)).await?;
        let term = last.committed_leader_id().term + 1;
        log.save_vote(&Vote::new(term, node_id)).await?;
        let handle = log.handle();
        drop(log);
        tokio::task::spawn_blocking(move || handle.close())
            .await
            .map_err(|e| io::Error::other(format!("closing the log: {e}")))??;
    }
    Ok(Restored { index: meta.last_log_id.map(|id| id.index), deals, bytes: backup.len() })
}
