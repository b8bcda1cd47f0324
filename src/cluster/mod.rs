//! Replication: a raft group (openraft) whose log is our log format on disk and whose state
//! machine is the allocator.
//!
//! | file | concept |
//! |---|---|
//! | `types.rs` | the raft type configuration: entries, nodes, responses |
//! | `log_store/` | openraft's log storage over our segment files: group commit, vote, purge |
//! | `state_machine.rs` | the applied allocator, the live one kept in step, snapshots |
//! | `snapshot_file.rs` | the newest snapshot on disk, written atomically |
//! | `replica.rs` | the node's handle: who decides, proposals in order, commit waits, rebuilds |
//! | `network.rs` | raft RPCs to peers over HTTP/1.1, authenticated with the cluster secret |
//! | `peer_server.rs` | the peer listener: raft RPCs and writes forwarded by followers |
//! | `restore.rs` | a backup written into a new node's empty directory |
//!
//! See docs/replication.md.

pub mod log_store;
pub mod network;
pub mod open;
pub mod peer_server;
pub mod replica;
pub mod restore;
pub mod snapshot_file;
pub mod state_machine;
pub mod types;
