//! The raft type configuration: what an entry carries, who a node is, what a write returns.
//!
//! One entry is one decision: the record the leader's allocator decided (an event, the time
//! the leader stamped on it, and a keyed request's answer). A cart is one `Reserved` event, so
//! it is one entry: openraft's `write_many` is not atomic across a leadership change, and a
//! cart must commit whole or not at all.

use serde::{Deserialize, Serialize};

use crate::wal::Record;

/// A node's id in the cluster (`--node-id`): 1, 2, 3, ... Zero is not an id.
pub type NodeId = u64;

/// Where a cluster member listens for peers (raft RPCs and forwarded writes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub peer_addr: String,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.peer_addr)
    }
}

/// The group this raft instance replicates. One group today; a deal's partition will name
/// its group later (see docs/replication.md, "Partitions").
pub const GROUP_ID: u32 = 0;

openraft::declare_raft_types!(
    /// livestock's raft types: entries carry decided records, nodes are peer addresses.
    pub TypeConfig:
        D = Record,
        R = Applied,
        NodeId = NodeId,
        Node = PeerNode,
);

/// What applying an entry reports to the writer that proposed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The raft index the entry was applied at.
    pub index: u64,
}

pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Membership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// A snapshot as it is built, sent and installed: the encoded checkpoint of the applied state
/// (see `state_machine.rs`), in memory. One group's state is at most a few hundred MB at the
/// limits in `livestock_core::limits`, and a snapshot is built off the request path.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
