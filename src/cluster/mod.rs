//! Replication: a raft group (openraft) whose log is our log format on disk and whose state
//! machine is the allocator.
//!
//! | file | concept |
//! |---|---|
//! | `types.rs` | the raft type configuration: entries, nodes, responses |
//! | `log_store.rs` | openraft's log storage over our segment files: group commit, vote, purge |
//! | `network.rs` | raft RPCs to peers over HTTP/1.1, authenticated with the cluster secret |
//! | `peer_server.rs` | the peer listener: raft RPCs and writes forwarded by followers |
//!
//! See docs/replication.md.

pub mod log_store;
pub mod types;
