//! The cluster's checks, on top of the single-node ledger (`tests/sim/check.rs`):
//!
//! - **Replicas agree**: the applied state's digest (`Shared::state_digest`) at an applied
//!   index is the same on every replica and every incarnation that ever reports that index.
//! - **Nothing acknowledged lost, nothing oversold**: the committed state of the newest
//!   deciding leader (which has applied everything committed before its term, and its own
//!   acknowledged decisions) holds every acknowledged change, checked by the ledger
//!   (`sim::check::against_ledger`, which also checks `held + sold <= stock` and that holds
//!   resolve once); at the end, every replica's state does.
//! - **Keyed answers survive**: every acknowledged keyed success is in the committed state's
//!   remembered answers, byte for byte, and a retry on any node gets exactly those bytes.

use std::collections::BTreeMap;

use livestock::alloc::Snapshot;
use livestock::cluster::replica::Replica;
use livestock::cluster::types::NodeId;
use livestock::wal::KeptReply;

use crate::sim::check::against_ledger;
use crate::sim::ledger::Ledger;

use super::machine::RETENTION_MS;

/// The committed (applied) state of a replica: the allocator and its stamped time.
pub struct Committed {
    pub snapshot: Snapshot,
    pub now_ms: u64,
}

pub fn committed(replica: &Replica) -> Committed {
    let applied = replica.shared.applied.lock();
    Committed { snapshot: applied.allocator.snapshot(), now_ms: applied.now_ms }
}

/// The committed remembered answer of a key, if any.
pub fn kept_reply(replica: &Replica, scope: &str, key: &str) -> Option<KeptReply> {
    let applied = replica.shared.applied.lock();
    applied.replies.get(&(scope.to_owned(), key.to_owned())).cloned()
}

/// Digests seen, by applied index: (digest, node, step).
#[derive(Default)]
pub struct Digests {
    pub by_index: BTreeMap<u64, (String, NodeId, u64)>,
    pub compared: u64,
}

impl Digests {
    /// Records `node`'s digest at `index`; `Err` if another report of that index differs.
    pub fn observe(
        &mut self,
        node: NodeId,
        index: u64,
        digest: String,
        step: u64,
    ) -> Result<(), String> {
        match self.by_index.get(&index) {
            Some((seen, by, at)) if *seen != digest => Err(format!(
                "replicas diverged: at applied index {index} node {node} has state digest \
                 {digest}, node {by} had {seen} (step {at})"
            )),
            Some(_) => {
                self.compared += 1;
                Ok(())
            }
            None => {
                self.by_index.insert(index, (digest, node, step));
                Ok(())
            }
        }
    }
}

/// Checks a replica's committed state against everything acknowledged so far.
pub fn against_acknowledged(
    ledger: &mut Ledger,
    state: &Committed,
    seen: &str,
) -> Result<(), String> {
    against_ledger(ledger, &state.snapshot, state.now_ms, RETENTION_MS, seen, true)
}
