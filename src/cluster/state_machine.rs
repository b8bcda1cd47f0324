//! The state machine: the allocator as of the last committed entry, and the node's live
//! allocator kept in step with it.
//!
//! Two allocators per node:
//! - the **applied** one (here, behind [`Shared::applied`]) holds exactly the committed entries,
//!   in log order. Snapshots, linearizable reads and `state_digest` read it.
//! - the **live** one (the node's, in [`Shared::live`]) is what commands run against. On a
//!   follower it is the applied state (every committed entry is applied to both). On the
//!   leader it runs ahead: the leader decides on it and proposes the decision, so it holds
//!   decisions not yet committed. Entries of the leader's own term are therefore already in
//!   it and are not applied twice.
//!
//! When the node stops deciding (it lost the leadership, or a proposal failed), the live
//! allocator may hold decisions that will never commit: it is rebuilt from the applied one
//! ([`rebuild_live`]), and with it the idempotency table's answers.
//!
//! Time: every record carries the leader's clock; the applied state ages by
//! `max(previous, stamped)`, never by a clock of its own, so every replica makes the same
//! forget decisions at the same entries whatever its clock says.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::alloc::{Allocator, AllocatorConfig, Snapshot as AllocatorSnapshot};
use crate::cluster::snapshot_file::{self, BodyLayout};
use crate::cluster::types::{
    Applied, Chain, LogId, Membership, NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig,
};
use crate::idempotency::{IdempotencyTable, StoredReply};
use crate::sync::ArcCell;
use crate::wal::{KeptReply, Record, Storage};

/// How far the stamped clock must move before resolved holds past their retention are
/// forgotten: a function of the log alone, so every replica forgets at the same entries.
const FORGET_STEP_MS: u64 = 1_000;

/// The committed state.
pub struct AppliedState {
    pub allocator: Allocator,
    /// Keyed answers still inside their window, by (scope, key).
    pub replies: HashMap<(String, String), KeptReply>,
    /// The newest stamped time applied.
    pub now_ms: u64,
    forgot_at_ms: u64,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    /// The last decision applied, in its leader's chain (see `types::Chain`).
    pub chain_tip: Option<ChainTip>,
    /// The newest snapshot, as built or installed (also on disk).
    pub snapshot: Option<(SnapshotMeta, Arc<Vec<u8>>)>,
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
pub struct SnapshotBody {
    pub allocator: AllocatorSnapshot,
    pub replies: Vec<KeptReply>,
    pub now_ms: u64,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    pub chain_tip: Option<ChainTip>,
}

/// A snapshot body written before waitlists (`snapshot_file::BodyLayout::BeforeWaitlists`).
#[derive(Deserialize)]
struct LegacySnapshotBody {
    allocator: crate::alloc::LegacySnapshot,
    replies: Vec<KeptReply>,
    now_ms: u64,
    last_applied: Option<LogId>,
    membership: Membership,
    chain_tip: Option<ChainTip>,
}

impl SnapshotBody {
    /// Decodes a body laid out as `layout` says.
    pub fn decode(data: &[u8], layout: BodyLayout) -> io::Result<SnapshotBody> {
        let garbled =
            |e: postcard::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        match layout {
            BodyLayout::Current => postcard::from_bytes(data).map_err(garbled),
            BodyLayout::BeforeWaitlists => {
                let old: LegacySnapshotBody = postcard::from_bytes(data).map_err(garbled)?;
                Ok(SnapshotBody {
                    allocator: old.allocator.into(),
                    replies: old.replies,
                    now_ms: old.now_ms,
                    last_applied: old.last_applied,
                    membership: old.membership,
                    chain_tip: old.chain_tip,
                })
            }
        }
    }
}

/// The last decision applied: its leader (term, node), its run and its sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTip {
    pub term: u64,
    pub node_id: NodeId,
    pub chain: Chain,
}

impl ChainTip {
    /// Whether a decision of leader (`term`, `node_id`) at `chain` follows this tip: the next
    /// of the same run, or the first of a run this tip is not part of.
    fn admits(tip: Option<&ChainTip>, term: u64, node_id: NodeId, chain: Chain) -> bool {
        match tip {
            Some(t) if (t.term, t.node_id, t.chain.start) == (term, node_id, chain.start) => {
                chain.seq == t.chain.seq + 1
            }
            _ => chain.seq == chain.start,
        }
    }
}

/// What the state machine, the node and the replica's tasks share.
///
/// Lock order: `applied` -> `decider` -> the live allocator's own locks -> the proposal queue;
/// `digest` is a leaf, taken under `applied`.
/// Commands take `decider` (read) without `applied`; the state machine and rebuilds take
/// `applied` first.
pub struct Shared {
    pub node_id: NodeId,
    pub allocator_config: AllocatorConfig,
    pub idempotency_window_ms: u64,
    pub applied: Mutex<AppliedState>,
    /// `Some(term)`: this node is the leader of `term` and its live allocator holds its
    /// decisions of that term (committed or not). Commands decide only under a read lock.
    pub decider: RwLock<Option<u64>>,
    pub live: Arc<ArcCell<Allocator>>,
    pub idempotency: Arc<IdempotencyTable>,
    /// The live allocator refused a committed entry (it held a decision that lost): rebuild.
    pub live_dirty: AtomicBool,
    /// The newest stamped time applied (read without the lock by `now_ms`).
    pub stamped_ms: AtomicU64,
    pub applied_index: AtomicU64,
    /// Wakes the replica's watcher (a rebuild is due).
    pub wake: tokio::sync::Notify,
    /// The newest state digest and the applied index it is of. The applied state changes
    /// only with the index (entries, or a snapshot installed at a new index).
    digest: Mutex<Option<(Option<u64>, String)>>,
}

impl Shared {
    /// A state digest: SHA-256 of the canonical encoding of the applied state, first 16 hex
    /// digits. Equal on replicas at the same applied index.
    /// Computed at most once per applied index (the hash covers the whole state: a status
    /// poll while nothing changes costs a lookup, not a pass over every hold).
    pub fn state_digest(&self) -> (Option<u64>, String) {
        let applied = self.applied.lock();
        let index = applied.last_applied.as_ref().map(|id| id.index);
        let mut cached = self.digest.lock();
        if let Some((at, digest)) = cached.as_ref() {
            if *at == index {
                return (index, digest.clone());
            }
        }
        let digest = digest_of(&applied, self.idempotency_window_ms);
        *cached = Some((index, digest.clone()));
        (index, digest)
    }

    /// A backup: the applied state now, as a snapshot file's bytes (`snapshot_file.rs`), for
    /// `cluster::restore`. Encoded under the `applied` lock, as a snapshot is: entries wait
    /// meanwhile (about a second per few hundred MB), requests do not.
    pub fn backup(&self) -> io::Result<Vec<u8>> {
        let (meta, data) = {
            let applied = self.applied.lock();
            encode_applied(&applied, self.idempotency_window_ms)?
        };
        snapshot_file::encode(&meta, &data)
    }
}

/// The applied state as a snapshot: its meta and its body's bytes.
fn encode_applied(applied: &AppliedState, window_ms: u64) -> io::Result<(SnapshotMeta, Vec<u8>)> {
    let body = applied.body(window_ms);
    let data = postcard::to_stdvec(&body)
        .map_err(|e| io::Error::other(format!("snapshot does not encode: {e}")))?;
    let meta = SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
    };
    Ok((meta, data))
}

fn digest_of(applied: &AppliedState, window_ms: u64) -> String {
    use sha2::Digest;
    // Only the answers inside their window: a node that built a snapshot dropped the older
    // ones, one that did not still has them, and both hold the same state.
    let mut replies: Vec<&KeptReply> = applied.live_replies(window_ms).collect();
    replies.sort_by(|a, b| (&a.scope, &a.key).cmp(&(&b.scope, &b.key)));
    let bytes = postcard::to_stdvec(&(applied.allocator.snapshot(), replies, applied.now_ms));
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(e) => panic!("the applied state always encodes: {e}"),
    };
    let hash = sha2::Sha256::digest(&bytes);
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Puts the live allocator and the idempotency answers back to the applied state, and stops
/// deciding. Call with `applied` locked (the caller holds it, so no entry applies meanwhile).
pub fn rebuild_live(shared: &Shared, applied: &AppliedState) {
    let mut decider = shared.decider.write();
    *decider = None;
    let copy = match Allocator::restore(shared.allocator_config, &applied.allocator.snapshot()) {
        Ok(copy) => copy,
        Err(e) => panic!("the applied state restores into an allocator: {e}"),
    };
    shared.live.store(Arc::new(copy));
    shared.idempotency.forget_answers();
    for r in applied.replies.values() {
        restore_reply(&shared.idempotency, r, applied.now_ms);
    }
    shared.live_dirty.store(false, Ordering::Release);
}

fn restore_reply(table: &IdempotencyTable, r: &KeptReply, now_ms: u64) {
    let reply = StoredReply { status: r.status, body: r.body.clone().into(), code: None };
    table.restore(&r.scope, &r.key, r.fingerprint, reply, r.seen_ms, now_ms);
}

impl AppliedState {
    pub fn new(allocator: Allocator) -> Self {
        AppliedState {
            allocator,
            replies: HashMap::new(),
            now_ms: 0,
            forgot_at_ms: 0,
            last_applied: None,
            membership: Membership::default(),
            chain_tip: None,
            snapshot: None,
        }
    }

    /// Keyed answers still inside their window at the newest stamped time: what a snapshot
    /// and the digest hold, whenever the older ones were dropped from the map.
    fn live_replies(&self, window_ms: u64) -> impl Iterator<Item = &KeptReply> {
        let now_ms = self.now_ms;
        self.replies.values().filter(move |r| r.seen_ms.saturating_add(window_ms) > now_ms)
    }

    fn body(&self, window_ms: u64) -> SnapshotBody {
        SnapshotBody {
            allocator: self.allocator.snapshot(),
            replies: self.live_replies(window_ms).cloned().collect(),
            now_ms: self.now_ms,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            chain_tip: self.chain_tip,
        }
    }

    fn from_body(config: AllocatorConfig, body: SnapshotBody) -> io::Result<Self> {
        let allocator = Allocator::restore(config, &body.allocator)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(AppliedState {
            allocator,
            replies: body
                .replies
                .into_iter()
                .map(|r| ((r.scope.clone(), r.key.clone()), r))
                .collect(),
            now_ms: body.now_ms,
            forgot_at_ms: body.now_ms,
            last_applied: body.last_applied,
            membership: body.membership,
            chain_tip: body.chain_tip,
            snapshot: None,
        })
    }
}

/// openraft's state machine: applies committed entries to the applied state and, unless they
/// are this leader's own, to the live one.
#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<Shared>,
    storage: Arc<dyn Storage>,
    /// The last log id of the snapshot file on disk. Held while a snapshot file is written:
    /// a snapshot being built (written outside the applied lock) and one being installed from
    /// the leader can be written at the same time, and must neither share the temporary file
    /// nor put an older snapshot over a newer one (the log before the newer one may already be
    /// purged). A restarted follower caught between the two stopped (found by CI).
    on_disk: Arc<Mutex<Option<LogId>>>,
}

impl StateMachine {
    /// The state machine over the snapshot in `storage` (if any). Entries after it are applied
    /// again by openraft from the log, up to the committed index it persisted.
    pub fn open(
        storage: Arc<dyn Storage>,
        node_id: NodeId,
        allocator_config: AllocatorConfig,
        idempotency: Arc<IdempotencyTable>,
        idempotency_window_ms: u64,
    ) -> io::Result<Self> {
        let (applied, on_disk) = match snapshot_file::read(&*storage)? {
            Some((meta, data, layout)) => {
                let body = SnapshotBody::decode(&data, layout)?;
                // An older layout is re-encoded: the bytes kept are the ones sent to followers.
                let data = match layout {
                    BodyLayout::Current => data,
                    BodyLayout::BeforeWaitlists => postcard::to_stdvec(&body)
                        .map_err(|e| io::Error::other(format!("snapshot does not encode: {e}")))?,
                };
                let mut applied = AppliedState::from_body(allocator_config, body)?;
                let on_disk = meta.last_log_id;
                applied.snapshot = Some((meta, Arc::new(data)));
                (applied, on_disk)
            }
            None => (AppliedState::new(Allocator::new(allocator_config)), None),
        };
        tracing::info!(snapshot = ?on_disk, index = ?applied.last_applied, "state machine opened");
        let live = Arc::new(ArcCell::from_pointee(Allocator::new(allocator_config)));
        let shared = Arc::new(Shared {
            node_id,
            allocator_config,
            idempotency_window_ms,
            stamped_ms: AtomicU64::new(applied.now_ms),
            applied_index: AtomicU64::new(applied.last_applied.as_ref().map_or(0, |l| l.index)),
            applied: Mutex::new(applied),
            decider: RwLock::new(None),
            live,
            idempotency,
            live_dirty: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            digest: Mutex::new(None),
        });
        {
            let applied = shared.applied.lock();
            rebuild_live(&shared, &applied);
        }
        Ok(StateMachine { shared, storage, on_disk: Arc::new(Mutex::new(on_disk)) })
    }

    /// Writes `meta`'s snapshot file unless the one on disk is as new; `true` if it wrote.
    /// Skipping is safe: the newer file on disk covers everything the older one does, and the
    /// applied state in memory never depends on which file is there.
    fn persist(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<bool> {
        let mut on_disk = self.on_disk.lock();
        if on_disk.is_some() && meta.last_log_id <= *on_disk {
            return Ok(false);
        }
        snapshot_file::write(&*self.storage, meta, data)?;
        *on_disk = meta.last_log_id;
        Ok(true)
    }

    /// Applies one committed entry; `false` if it is void (it broke its leader's chain and
    /// changed nothing, on every replica alike).
    fn apply_one(&self, applied: &mut AppliedState, entry: &crate::cluster::types::Entry) -> bool {
        let log_id = entry.log_id;
        let mut effective = true;
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                applied.membership = Membership::new(Some(log_id), m.clone());
            }
            EntryPayload::Normal(decision) => {
                let leader = log_id.committed_leader_id();
                let (term, node_id) = (leader.term, leader.node_id);
                if ChainTip::admits(applied.chain_tip.as_ref(), term, node_id, decision.chain) {
                    applied.chain_tip = Some(ChainTip { term, node_id, chain: decision.chain });
                    self.apply_decision(applied, log_id, &decision.record);
                } else {
                    // Decided on top of a proposal that openraft refused: its premise is not
                    // in the log. The leader that decided it stopped deciding when the refusal
                    // came back and rebuilds its live state from this applied state.
                    tracing::warn!(entry = %log_id, chain = ?decision.chain, tip = ?applied.chain_tip, "void entry: a decision before it in its run was refused");
                    effective = false;
                    if *self.shared.decider.read() == Some(term) {
                        // Our own live state holds it: rebuild (the refusal that caused it
                        // asks for the same; this does not depend on its timing).
                        self.shared.live_dirty.store(true, Ordering::Release);
                        self.shared.wake.notify_one();
                    }
                }
            }
        }
        self.shared.applied_index.store(log_id.index, Ordering::Release);
        applied.last_applied = Some(log_id);
        effective
    }

    fn apply_decision(&self, applied: &mut AppliedState, log_id: LogId, record: &Record) {
        {
            {
                if let Err(e) = applied.allocator.apply(&record.event) {
                    // The leader decided this event from the state every replica has at this
                    // index: a refusal is divergence, a bug, never bad input.
                    panic!("committed entry {log_id} does not apply: {e}");
                }
                if let Some(reply) = &record.reply {
                    applied.replies.insert((reply.scope.clone(), reply.key.clone()), reply.clone());
                }
                applied.now_ms = applied.now_ms.max(record.at_ms);
                let decider = self.shared.decider.read();
                let own = *decider == Some(log_id.committed_leader_id().term);
                if !own {
                    let live = self.shared.live.load();
                    if live.apply(&record.event).is_err() {
                        // The live state held a decision this entry contradicts: it lost.
                        self.shared.live_dirty.store(true, Ordering::Release);
                        self.shared.wake.notify_one();
                    }
                    if let Some(r) = &record.reply {
                        restore_reply(&self.shared.idempotency, r, applied.now_ms);
                    }
                }
                drop(decider);
                if applied.now_ms >= applied.forgot_at_ms.saturating_add(FORGET_STEP_MS) {
                    applied.allocator.forget_due(applied.now_ms);
                    if !own {
                        self.shared.live.load().forget_due(applied.now_ms);
                    }
                    applied.forgot_at_ms = applied.now_ms;
                }
                self.shared.stamped_ms.fetch_max(applied.now_ms, Ordering::Relaxed);
            }
        }
    }

    fn build(&self) -> io::Result<Snapshot> {
        let (meta, data) = {
            let mut applied = self.shared.applied.lock();
            let window_ms = self.shared.idempotency_window_ms;
            let now_ms = applied.now_ms;
            // Answers past their window go with each snapshot (the snapshot leaves them out).
            applied.replies.retain(|_, r| r.seen_ms.saturating_add(window_ms) > now_ms);
            let (meta, data) = encode_applied(&applied, window_ms)?;
            let data = Arc::new(data);
            applied.snapshot = Some((meta.clone(), data.clone()));
            (meta, data)
        };
        // Written outside the lock: entries keep applying while the file is written.
        let written = self.persist(&meta, &data)?;
        tracing::info!(last = ?meta.last_log_id, bytes = data.len(), written, "snapshot built");
        Ok(Snapshot { meta, snapshot: std::io::Cursor::new(data.to_vec()) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        // Encoding a large state takes a while: off the async workers.
        match tokio::task::spawn_blocking(move || this.build()).await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("snapshot task failed: {e}"))),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let applied = self.shared.applied.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        let mut responses = Vec::with_capacity(batch.len());
        {
            let mut applied = self.shared.applied.lock();
            for (entry, responder) in batch {
                let effective = self.apply_one(&mut applied, &entry);
                if let Some(responder) = responder {
                    responses.push((responder, entry.log_id.index, !effective));
                }
            }
            if cfg!(debug_assertions) {
                if let Err(violation) = applied.allocator.audit() {
                    panic!("the applied state broke an invariant: {violation}");
                }
            }
        }
        for (responder, index, void) in responses {
            responder.send(Applied { index, void });
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let body = SnapshotBody::decode(&data, BodyLayout::Current)?;
        let mut installed = AppliedState::from_body(self.shared.allocator_config, body)?;
        if installed.last_applied != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the snapshot says it holds {:?} but its body holds {:?}",
                    meta.last_log_id, installed.last_applied
                ),
            ));
        }
        self.persist(meta, &data)?;
        installed.snapshot = Some((meta.clone(), Arc::new(data)));
        let mut applied = self.shared.applied.lock();
        *applied = installed;
        self.shared.stamped_ms.fetch_max(applied.now_ms, Ordering::Relaxed);
        let index = applied.last_applied.as_ref().map_or(0, |l| l.index);
        self.shared.applied_index.store(index, Ordering::Release);
        rebuild_live(&self.shared, &applied);
        tracing::info!(last = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let applied = self.shared.applied.lock();
        Ok(applied.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: std::io::Cursor::new(data.to_vec()),
        }))
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    fn tip(term: u64, node_id: NodeId, start: u64, seq: u64) -> Option<ChainTip> {
        Some(ChainTip { term, node_id, chain: Chain { start, seq } })
    }

    #[test]
    fn a_run_is_admitted_only_without_gaps() {
        let c = |start, seq| Chain { start, seq };
        // The first decision of a run must be its start.
        assert!(ChainTip::admits(None, 1, 1, c(1, 1)));
        assert!(!ChainTip::admits(None, 1, 1, c(1, 2)), "the run's first was refused");
        // Then each follows the last one applied of its run.
        assert!(ChainTip::admits(tip(1, 1, 1, 4).as_ref(), 1, 1, c(1, 5)));
        assert!(!ChainTip::admits(tip(1, 1, 1, 4).as_ref(), 1, 1, c(1, 6)), "a gap");
        assert!(!ChainTip::admits(tip(1, 1, 1, 4).as_ref(), 1, 1, c(1, 4)), "a repeat");
        // A new run (same leader, resumed after a rebuild) or another leader starts afresh.
        assert!(ChainTip::admits(tip(1, 1, 1, 4).as_ref(), 1, 1, c(9, 9)));
        assert!(!ChainTip::admits(tip(1, 1, 1, 4).as_ref(), 1, 1, c(9, 10)));
        assert!(ChainTip::admits(tip(1, 1, 1, 4).as_ref(), 2, 3, c(1, 1)));
        assert!(ChainTip::admits(tip(1, 1, 1, 4).as_ref(), 1, 2, c(1, 1)), "another node");
    }
}

#[cfg(test)]
mod persist_tests {
    use super::*;
    use crate::wal::DirStorage;
    use livestock_core::ids::HoldIdKey;
    use openraft::vote::RaftLeaderId;

    fn machine(dir: &std::path::Path) -> StateMachine {
        let storage: Arc<dyn Storage> = Arc::new(DirStorage::open(dir).expect("storage"));
        let config = AllocatorConfig { hold_id_key: HoldIdKey(7), resolved_hold_retention_ms: 1 };
        StateMachine::open(storage, 1, config, Arc::new(IdempotencyTable::new(1_000, 100)), 1_000)
            .expect("open")
    }

    fn meta(index: u64) -> SnapshotMeta {
        let leader = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
        SnapshotMeta {
            last_log_id: Some(LogId::new(leader, index)),
            last_membership: Membership::default(),
        }
    }

    /// A snapshot being built and one being installed are written at once (a restarted
    /// follower does both): every write succeeds and the newest stays on disk.
    #[test]
    fn concurrent_snapshot_writes_keep_the_newest() {
        let dir = std::env::temp_dir().join(format!("livestock-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let sm = machine(&dir);
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let sm = sm.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let index = i * 4 + t;
                        sm.persist(&meta(index), &index.to_le_bytes()).expect("a snapshot write");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        // An older snapshot never replaces a newer one.
        assert!(!sm.persist(&meta(5), b"old").expect("persist"));
        let storage = DirStorage::open(&dir).expect("storage");
        let (meta_on_disk, data, _) = snapshot_file::read(&storage).expect("read").expect("a file");
        assert_eq!(meta_on_disk.last_log_id.map(|l| l.index), Some(799));
        assert_eq!(data, 799u64.to_le_bytes());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
