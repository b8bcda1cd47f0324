//! One simulated machine: its disk (`SimStorage`), its clock, and, while it runs, the replica
//! and the node on it, started exactly as `livestock serve --node-id` starts them (through
//! `cluster::open::open_with`) but wired to the simulated network and an inline raft log.
//!
//! A kill stops the machine where it stands: the disk refuses every operation from that
//! moment (nothing more is written, as with `kill -9` or a power cut), then the raft core is
//! shut down and the disk either keeps its page cache (a process crash) or loses what was not
//! fsynced (a power loss; see `tests/sim/storage.rs`). A restart opens the replica again from
//! what the disk kept.

use std::sync::Arc;
use std::time::Duration;

use livestock::alloc::AllocatorConfig;
use livestock::clock::Clock;
use livestock::cluster::log_store::RaftLogConfig;
use livestock::cluster::network::PeerNetwork;
use livestock::cluster::open::{open_with, ReplicaConfig, Wiring};
use livestock::cluster::replica::{Replica, ReplicaTiming};
use livestock::cluster::types::NodeId;
use livestock::metrics::Metrics;
use livestock::node::Node;
use livestock::wal::Storage;

use super::net::{SimFactory, SimNet};
use super::Plan;
use crate::sim::storage::SimStorage;
use crate::sim::workload::KEY;

/// 2027-01-15T08:00:00Z, as in the single-node simulation.
pub const T0_MS: u64 = 1_800_000_000_000;
/// The nodes' clocks run this much faster than the runtime's virtual clock: hold TTLs of
/// seconds then lapse within the virtual time a history spans, while raft's timers (scaled
/// down too, see [`config`]) run on the virtual clock itself.
pub const CLOCK_SPEED: u64 = 50;
/// Resolved holds are forgotten this long after they resolve (node clock): short, so that
/// histories see the replicas forget them.
pub const RETENTION_MS: u64 = 30 * 1_000;
/// The idempotency window (node clock): longer than any history, so every acknowledged keyed
/// answer must replay to the end.
pub const WINDOW_MS: u64 = 2 * 60 * 60 * 1_000;
/// openraft's tick is `heartbeat_interval * 13 / 64` ms: at 9 ms it is 1 ms, and the random
/// phase openraft gives the first tick (from an RNG we cannot seed) is below one millisecond,
/// which the timer wheel rounds away. A larger interval would make the tick phase, and so
/// every election, depend on that RNG.
pub const HEARTBEAT_MS: u64 = 9;
/// How long a write waits for its commit (production: 2 s; scaled like the raft timers).
pub const COMMIT_TIMEOUT_MS: u64 = 300;

/// A node's clock: virtual time since the history began, sped up, plus the node's skew.
pub struct SimClock {
    pub origin: tokio::time::Instant,
    pub skew_ms: i64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        (T0_MS + elapsed * CLOCK_SPEED).saturating_add_signed(self.skew_ms)
    }
}

pub struct Running {
    pub replica: Arc<Replica>,
    pub node: Arc<Node>,
    /// The election timeout this incarnation was started with.
    pub election_ms: u64,
}

pub struct Machine {
    pub id: NodeId,
    pub storage: SimStorage,
    pub clock: Arc<SimClock>,
    pub running: Option<Running>,
    /// While down: steps until its supervisor starts it again.
    pub restart_in: u64,
    /// Failed start-ups in a row (a bad disk is replaced after a few).
    pub failed_starts: u32,
    /// Steps the disk stays bad for (faults on), when it is.
    pub bad_disk_for: u64,
}

/// The replica's configuration: production's, with raft's timers scaled down (see
/// [`HEARTBEAT_MS`]) and snapshots every `plan.snapshot_entries` entries.
pub fn config(id: NodeId, election_ms: u64, plan: &Plan) -> ReplicaConfig {
    ReplicaConfig {
        node_id: id,
        peers: (1..=3).map(|n| (n, format!("sim-node-{n}:1"))).collect(),
        secret: None,
        allocator: AllocatorConfig { hold_id_key: KEY, resolved_hold_retention_ms: RETENTION_MS },
        idempotency_window_ms: WINDOW_MS,
        idempotency_keys_max: 100_000,
        timing: ReplicaTiming { commit_timeout_ms: COMMIT_TIMEOUT_MS, stale_refusal_ms: 0 },
        heartbeat_interval_ms: HEARTBEAT_MS,
        election_timeout_min_ms: election_ms,
        snapshot_entries: plan.snapshot_entries,
    }
}

impl Machine {
    /// Opens the replica from the disk and joins the network. `Err` if the start-up failed
    /// (an injected read or write fault): the supervisor tries again later.
    pub async fn start(
        &mut self,
        net: &Arc<SimNet>,
        plan: &Plan,
        election_ms: u64,
    ) -> Result<(), String> {
        let config = config(self.id, election_ms, plan);
        let wiring = Wiring {
            raft_network: SimFactory { from: self.id, net: net.clone() },
            // Never used: the simulation routes every request to a node itself.
            peers: PeerNetwork::new(self.id, None).map_err(|e| e.to_string())?,
            log: RaftLogConfig {
                segment_bytes_max: plan.segment_bytes_max,
                inline: true,
                ..RaftLogConfig::default()
            },
            // One value: openraft's unseeded RNG picks from [min, min + 1).
            election_timeout_max_ms: Some(election_ms + 1),
        };
        let storage: Arc<dyn Storage> = Arc::new(self.storage.clone());
        let replica = open_with(storage, config, wiring).await.map_err(|e| e.to_string())?;
        net.up(self.id, replica.clone());
        let clock: Arc<dyn Clock> = self.clock.clone();
        let node = Arc::new(Node::clustered(Metrics::default(), clock, replica.clone()));
        self.running = Some(Running { replica, node, election_ms });
        self.failed_starts = 0;
        Ok(())
    }

    /// Stops the machine now; `power`: it lost power (unsynced data may go), else only the
    /// process died (the page cache survives). `Err` if raft would not stop.
    pub async fn kill(&mut self, net: &SimNet, power: bool) -> Result<(), String> {
        net.down(self.id);
        self.storage.halt();
        if let Some(running) = self.running.take() {
            let stopped =
                tokio::time::timeout(Duration::from_secs(10), running.replica.raft.shutdown());
            if stopped.await.is_err() {
                return Err(format!("node {}: raft did not shut down within 10 s", self.id));
            }
        }
        if power {
            self.storage.power_loss();
        } else {
            self.storage.restart_process();
        }
        Ok(())
    }

    /// Why the running replica cannot go on (its raft stopped on a storage error, or its
    /// machine died in the middle of an operation), if it cannot.
    pub fn broken(&self) -> Option<String> {
        let running = self.running.as_ref()?;
        if self.storage.is_down() {
            return Some("the machine died mid-operation".into());
        }
        running.replica.stopped()
    }
}
