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
        D = Decision,
        R = Applied,
        NodeId = NodeId,
        Node = PeerNode,
);

/// One entry's payload: a decided record, and its place in the leader's chain of decisions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub record: Record,
    pub chain: Chain,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (run {} #{})", self.record, self.chain.start, self.chain.seq)
    }
}

/// Where a decision sits in its leader's run of decisions. A leader decides each command on
/// top of all its earlier ones, but openraft may refuse one proposal (a lapsed lease, say) and
/// append the next: that one's premise never reaches the log. So each proposal carries its
/// run (`start`: the sequence number the run began with, one run per stretch of deciding) and
/// its own sequence number; the state machine applies an entry only if it follows the last one
/// applied of its run without a gap (the first of a run must be `start` itself), and voids it
/// otherwise, on every replica alike. A void entry changes nothing and acknowledges nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub start: u64,
    pub seq: u64,
}

/// What applying an entry reports to the writer that proposed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The raft index the entry was applied at.
    pub index: u64,
    /// The entry broke its leader's chain (a proposal before it in its run was refused), so it
    /// changed nothing: its writer must not acknowledge it.
    pub void: bool,
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
