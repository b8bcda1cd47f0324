//! Guards the raft log against losing or inventing an acknowledged entry, vote, purge or
//! committed id across a restart, and against acknowledging an append before its fsync.
//!
//! openraft's own storage suite runs against it first (with a minimal in-memory state machine,
//! which the suite needs beside the log). Then our cases: restarts, torn tails, flipped bits,
//! truncation and purge across segments, group commit observed through a storage whose fsync
//! a test holds, and poisoning through [`FaultyStorage`]. A "crash" is a copy of the directory
//! taken while the log runs (what reached the files), opened by a second log.

#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failed expectation is a failed test; casts are of small test-sized counts"
)]

mod faulty;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use faulty::{FaultyStorage, Op};
use futures_util::TryStreamExt;
use livestock::cluster::log_store::{RaftLog, RaftLogConfig};
use livestock::cluster::types::{
    Applied, Chain, Decision, Entry, LogId, Membership, SnapshotData, SnapshotMeta, TypeConfig,
    Vote,
};
use livestock::wal::storage::{AppendFile, FileSync};
use livestock::wal::{DirStorage, Record, Storage};
use livestock_core::event::Event;
use livestock_core::ids::HoldSeq;
use openraft::alias::CommittedLeaderIdOf;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageError};

/// Small enough that a few dozen entries span several segments.
const SEGMENT_BYTES: u64 = 300;
/// Longer than any test: the committed id is written to the meta file only when a test says.
const NEVER_MS: u64 = 3_600_000;

// ------------------------------------------------------------------------------- fixtures

/// A directory under cargo's scratch space, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("raft-log-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(DirStorage::open(&self.0).expect("open the temp dir"))
    }

    /// A fresh directory holding exactly `files`.
    fn with(tag: &str, files: &Files) -> TempDir {
        let dir = TempDir::new(tag);
        for (name, bytes) in files {
            fs::write(dir.0.join(name), bytes).expect("write a file");
        }
        dir
    }

    /// The files as they are now: what a crash at this moment would leave (page cache aside).
    fn files(&self) -> Files {
        let mut files = Files::new();
        for entry in fs::read_dir(&self.0).expect("list the temp dir") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().into_string().expect("utf-8 name");
            files.insert(name, fs::read(entry.path()).expect("read a file"));
        }
        files
    }

    fn segments(&self) -> Vec<String> {
        self.files().into_keys().filter(|n| n.ends_with(".log")).collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A directory's files, in memory: name -> bytes.
type Files = BTreeMap<String, Vec<u8>>;

fn config() -> RaftLogConfig {
    RaftLogConfig {
        segment_bytes_max: SEGMENT_BYTES,
        committed_idle_persist_ms: NEVER_MS,
        inline: false,
    }
}

fn open(storage: Arc<dyn Storage>) -> RaftLog {
    RaftLog::open(storage, config()).expect("open the raft log")
}

/// The log in inline mode (each call does its own I/O; the cluster simulation's).
fn open_inline(storage: Arc<dyn Storage>) -> RaftLog {
    RaftLog::open(storage, RaftLogConfig { inline: true, ..config() }).expect("open inline")
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderIdOf::<TypeConfig>::new(term, 1), index)
}

/// An entry carrying a record, as the cluster's entries do.
fn entry(term: u64, index: u64) -> Entry {
    let record = Record {
        at_ms: index,
        event: Event::Expired { seq: HoldSeq(index), at_ms: index },
        reply: None,
    };
    Entry::new_normal(
        log_id(term, index),
        Decision { record, chain: Chain { start: 1, seq: index } },
    )
}

fn entries(term: u64, indexes: std::ops::Range<u64>) -> Vec<Entry> {
    indexes.map(|index| entry(term, index)).collect()
}

/// Appends and waits for the callback; `Err` from the call or from the callback.
async fn append(log: &mut RaftLog, batch: Vec<Entry>) -> io::Result<()> {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(batch, IOFlushed::signal(tx)).await?;
    rx.await.map_err(|_| io::Error::other("callback dropped"))?
}

/// Appends `indexes` of `term`, `per_call` entries per call.
async fn append_all(log: &mut RaftLog, term: u64, indexes: std::ops::Range<u64>, per_call: u64) {
    let mut at = indexes.start;
    while at < indexes.end {
        let end = (at + per_call).min(indexes.end);
        append(log, entries(term, at..end)).await.expect("append");
        at = end;
    }
}

async fn all_entries(log: &mut RaftLog) -> Vec<Entry> {
    log.try_get_log_entries(..).await.expect("read the log")
}

async fn state(log: &mut RaftLog) -> LogState<TypeConfig> {
    log.get_log_state().await.expect("log state")
}

fn vote(term: u64, node: u64) -> Vote {
    Vote::new(term, node)
}

/// Waits (polling, up to 10 s) for `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

// ------------------------------------------------------------ a state machine for the suite

/// The least state machine openraft's suite accepts: it remembers the last applied id and
/// membership, and keeps a snapshot of them as bytes.
#[derive(Clone, Default)]
struct TestStateMachine(Arc<Mutex<SmState>>);

#[derive(Default)]
struct SmState {
    applied: Option<LogId>,
    membership: Membership,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

impl RaftSnapshotBuilder<TypeConfig> for TestStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::alias::SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let mut state = self.0.lock().expect("state machine lock");
        let meta =
            SnapshotMeta { last_log_id: state.applied, last_membership: state.membership.clone() };
        let bytes = postcard::to_stdvec(&state.applied).expect("encode");
        state.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(openraft::Snapshot { meta, snapshot: std::io::Cursor::new(bytes) })
    }
}

impl RaftStateMachine<TypeConfig> for TestStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let state = self.0.lock().expect("state machine lock");
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut state = self.0.lock().expect("state machine lock");
                state.applied = Some(entry.log_id);
                if let EntryPayload::Membership(membership) = &entry.payload {
                    state.membership = Membership::new(Some(entry.log_id), membership.clone());
                }
            }
            if let Some(responder) = responder {
                responder.send(Applied { index: entry.log_id.index, void: false });
            }
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
        let bytes = snapshot.into_inner();
        let applied: Option<LogId> = postcard::from_bytes(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        assert_eq!(applied, meta.last_log_id, "the snapshot's bytes match its meta");
        let mut state = self.0.lock().expect("state machine lock");
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        let state = self.0.lock().expect("state machine lock");
        Ok(state.snapshot.clone().map(|(meta, bytes)| openraft::Snapshot {
            meta,
            snapshot: std::io::Cursor::new(bytes),
        }))
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, RaftLog, TestStateMachine, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, RaftLog, TestStateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new("suite");
        let log = open(dir.storage());
        Ok((dir, log, TestStateMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).await.expect("openraft's log storage suite");
}

struct InlineBuilder;

impl StoreBuilder<TypeConfig, RaftLog, TestStateMachine, TempDir> for InlineBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, RaftLog, TestStateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new("suite-inline");
        let log = open_inline(dir.storage());
        Ok((dir, log, TestStateMachine::default()))
    }
}

#[tokio::test]
async fn openraft_storage_suite_passes_inline() {
    Suite::test_all(InlineBuilder).await.expect("openraft's log storage suite, inline");
}

// ------------------------------------------------------------------ a storage that holds fsyncs

/// Holds segment fsyncs while shut: a `sync` that comes then waits (and is counted as
/// waiting) until the test opens the gate. Lets a test see what happens while an fsync runs.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    shut: bool,
    waiting: u64,
}

impl Gate {
    fn set(&self, shut: bool) {
        self.state.lock().expect("gate lock").shut = shut;
        self.changed.notify_all();
    }

    fn waiting(&self) -> u64 {
        self.state.lock().expect("gate lock").waiting
    }

    fn pass(&self) {
        let mut state = self.state.lock().expect("gate lock");
        if state.shut {
            state.waiting += 1;
            while state.shut {
                state = self.changed.wait(state).expect("gate lock");
            }
            state.waiting -= 1;
        }
    }
}

struct GatedStorage {
    inner: Arc<dyn Storage>,
    gate: Arc<Gate>,
}

struct GatedFile {
    inner: Box<dyn AppendFile>,
    gate: Arc<Gate>,
}

impl AppendFile for GatedFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.append(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync()
    }

    fn sync_handle(&self) -> io::Result<Arc<dyn FileSync>> {
        self.inner.sync_handle()
    }
}

impl Storage for GatedStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read(name)
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(GatedFile { inner: self.inner.create(name)?, gate: self.gate.clone() }))
    }
    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(GatedFile { inner: self.inner.open_append(name)?, gate: self.gate.clone() }))
    }
    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(name, len)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
}

/// A log over `inner` whose fsyncs `gate` holds, with one entry (index 0) already durable, so
/// its segment exists and the next fsync a test holds is a group commit's.
async fn gated_log(inner: Arc<dyn Storage>) -> (RaftLog, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let mut log = open(Arc::new(GatedStorage { inner, gate: gate.clone() }));
    append(&mut log, vec![entry(1, 0)]).await.expect("first append");
    // Its fsync is over (not only its callback told), so the gate holds a later one.
    let stats = log.handle();
    eventually("the first fsync", || stats.stats().fsyncs.load(Ordering::Relaxed) == 1).await;
    (log, gate)
}

type Flushed = tokio::sync::oneshot::Receiver<io::Result<()>>;

/// Appends without waiting for the callback; the receiver reports it.
async fn append_nowait(log: &mut RaftLog, batch: Vec<Entry>) -> Flushed {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(batch, IOFlushed::signal(tx)).await.expect("append queued");
    rx
}

fn not_yet(rx: &mut Flushed) -> bool {
    matches!(rx.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty))
}

// ------------------------------------------------------------------------------ restarts

/// The first indexes of the segment files in a directory, in order.
fn segment_firsts(dir: &TempDir) -> Vec<u64> {
    let mut firsts: Vec<u64> = dir
        .segments()
        .iter()
        .map(|name| name["raft-".len()..name.len() - ".log".len()].parse().expect("a segment name"))
        .collect();
    firsts.sort_unstable();
    firsts
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn restart_recovers_exactly_what_was_acknowledged() {
    let dir = TempDir::new("restart");
    let mut log = open(dir.storage());
    let handle = log.handle();
    append_all(&mut log, 1, 0..40, 3).await;
    log.save_vote(&vote(2, 1)).await.expect("vote");
    append_all(&mut log, 2, 40..45, 2).await;
    log.purge(log_id(1, 12)).await.expect("purge");
    log.save_committed(Some(log_id(2, 42))).await.expect("committed");
    // This batch carries committed (2, 42): no meta write has happened since it was saved (the
    // idle delay is an hour), so a crash copy taken now must find it in the frames.
    append(&mut log, entries(2, 45..47)).await.expect("append");
    assert!(segment_firsts(&dir).len() > 3, "the log spans several segments");

    let crash = TempDir::with("restart-crash", &dir.files());
    let expected = all_entries(&mut log).await;
    assert_eq!(indexes(&expected), (13..47).collect::<Vec<_>>());
    let expected_state = state(&mut log).await;
    assert_eq!(expected_state.last_purged_log_id, Some(log_id(1, 12)));
    assert_eq!(expected_state.last_log_id, Some(log_id(2, 46)));

    let mut recovered = open(crash.storage());
    assert_eq!(all_entries(&mut recovered).await, expected);
    assert_eq!(state(&mut recovered).await, expected_state);
    assert_eq!(recovered.read_vote().await.expect("vote"), Some(vote(2, 1)));
    assert_eq!(recovered.read_committed().await.expect("committed"), Some(log_id(2, 42)));

    // A clean close, and the log refuses calls after it.
    handle.close().expect("close");
    assert!(append(&mut log, entries(2, 47..48)).await.is_err(), "append after close");
    assert!(log.read_vote().await.is_err(), "read after close");
    drop(log);
    let mut reopened = open(dir.storage());
    assert_eq!(all_entries(&mut reopened).await, expected);
    assert_eq!(state(&mut reopened).await, expected_state);
    assert_eq!(reopened.read_vote().await.expect("vote"), Some(vote(2, 1)));
    assert_eq!(reopened.read_committed().await.expect("committed"), Some(log_id(2, 42)));
    // And it goes on where it stopped.
    append(&mut reopened, entries(2, 47..49)).await.expect("append after reopen");
    assert_eq!(state(&mut reopened).await.last_log_id, Some(log_id(2, 48)));
}

#[tokio::test]
async fn a_committed_id_with_no_append_after_it_reaches_the_meta_file() {
    let dir = TempDir::new("committed");
    let config = RaftLogConfig { committed_idle_persist_ms: 20, ..config() };
    let mut log = RaftLog::open(dir.storage(), config).expect("open");
    append_all(&mut log, 1, 0..5, 5).await;
    log.save_committed(Some(log_id(1, 3))).await.expect("committed");
    eventually("the meta file", || dir.files().contains_key("raft-meta")).await;
    let crash = TempDir::with("committed-crash", &dir.files());
    let mut recovered = open(crash.storage());
    assert_eq!(recovered.read_committed().await.expect("committed"), Some(log_id(1, 3)));
    assert_eq!(indexes(&all_entries(&mut recovered).await), (0..5).collect::<Vec<_>>());
}

// ------------------------------------------------------------------- torn tails, corruption

/// Where each frame of a segment file starts, and the file's length.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    use livestock::wal::record::{check_header_within, FRAME_HEADER_BYTES};
    use livestock::wal::segment::SEGMENT_HEADER_BYTES;
    let mut starts = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at < bytes.len() {
        starts.push(at);
        let (_, len) =
            check_header_within(&bytes[at..], livestock_core::limits::RAFT_ENTRY_BYTES_MAX)
                .expect("a whole frame");
        at += FRAME_HEADER_BYTES + len;
    }
    assert_eq!(at, bytes.len());
    starts
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_log_goes_on() {
    let dir = TempDir::new("torn");
    let mut log = open(dir.storage());
    append_all(&mut log, 1, 0..4, 1).await;
    log.handle().close().expect("close");
    let files = dir.files();
    let [segment] = dir.segments().try_into().expect("one segment");
    let bytes = &files[&segment];
    let starts = frame_starts(bytes);
    assert_eq!(starts.len(), 4);
    let ends: Vec<usize> = starts[1..].iter().copied().chain([bytes.len()]).collect();
    for cut in 0..bytes.len() {
        let mut torn = files.clone();
        torn.insert(segment.clone(), bytes[..cut].to_vec());
        let copy = TempDir::with("torn-copy", &torn);
        let mut recovered = open(copy.storage());
        let whole = ends.iter().filter(|end| **end <= cut).count();
        let found = all_entries(&mut recovered).await;
        assert_eq!(indexes(&found), (0..whole as u64).collect::<Vec<_>>(), "cut at {cut}");
        // The tail is gone from the file, not just skipped; a segment left with no frame
        // is gone altogether.
        match whole {
            0 => assert!(copy.segments().is_empty(), "cut at {cut}"),
            _ => assert_eq!(copy.files()[&segment].len(), ends[whole - 1], "cut at {cut}"),
        }
        if cut % 9 == 0 {
            append_all(&mut recovered, 2, whole as u64..5, 5).await;
            recovered.handle().close().expect("close");
            drop(recovered);
            let mut again = open(copy.storage());
            let after = all_entries(&mut again).await;
            assert_eq!(indexes(&after), (0..5).collect::<Vec<_>>(), "cut at {cut}");
            assert_eq!(after[whole].log_id, log_id(2, whole as u64));
        }
    }
}

#[tokio::test]
async fn a_new_segment_with_a_torn_header_is_removed() {
    let dir = TempDir::new("torn-header");
    let mut log = open(dir.storage());
    append_all(&mut log, 1, 0..3, 3).await;
    log.handle().close().expect("close");
    let mut files = dir.files();
    let header = livestock::wal::segment::segment_header_with(b"LVSTRAFT", 3);
    files.insert(format!("raft-{:020}.log", 3), header[..11].to_vec());
    let copy = TempDir::with("torn-header-copy", &files);
    let mut recovered = open(copy.storage());
    assert_eq!(indexes(&all_entries(&mut recovered).await), vec![0, 1, 2]);
    assert_eq!(segment_firsts(&copy), vec![0]);
    append(&mut recovered, entries(1, 3..4)).await.expect("append");
    assert_eq!(segment_firsts(&copy), vec![0], "the entry went to the open segment");
}

fn open_err(files: &Files) -> io::Error {
    let copy = TempDir::with("corrupt", files);
    match RaftLog::open(copy.storage(), config()) {
        Ok(_) => panic!("a corrupt log opened"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_flipped_bit_before_the_tail_is_corruption() {
    let dir = TempDir::new("flip");
    let mut log = open(dir.storage());
    append_all(&mut log, 1, 0..30, 2).await;
    log.save_vote(&vote(1, 1)).await.expect("vote");
    log.handle().close().expect("close");
    let files = dir.files();
    let firsts = segment_firsts(&dir);
    assert!(firsts.len() >= 3);
    let name = |first: u64| format!("raft-{first:020}.log");
    let flip = |file: &str, at: usize| {
        let mut bad = files.clone();
        bad.get_mut(file).expect("file")[at] ^= 0x10;
        bad
    };

    // In the middle of a segment that is not the last.
    let first = name(firsts[0]);
    let starts = frame_starts(&files[&first]);
    let err = open_err(&flip(&first, starts[1] + 25));
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains(&first), "names the file: {err}");
    assert!(err.to_string().contains(&format!("offset {}", starts[1])), "and the frame: {err}");

    // In the last frame of a segment that is not the last: still corruption.
    let err = open_err(&flip(&first, *starts.last().expect("a frame") + 2));
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

    // In the last segment, with whole frames after it.
    let last = name(*firsts.last().expect("a segment"));
    let starts = frame_starts(&files[&last]);
    assert!(starts.len() >= 2);
    let err = open_err(&flip(&last, starts[0] + 21));
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

    // A segment header.
    let err = open_err(&flip(&last, 9));
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

    // The vote file.
    let err = open_err(&flip("raft-vote", 22));
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("raft-vote"), "{err}");

    // The very last frame of the log: indistinguishable from a torn write, so it is cut.
    let copy = TempDir::with("flip-tail", &flip(&last, *starts.last().expect("a frame") + 21));
    let mut recovered = open(copy.storage());
    assert_eq!(indexes(&all_entries(&mut recovered).await), (0..29).collect::<Vec<_>>());
}

// --------------------------------------------------------------------- truncation and purge

#[tokio::test]
async fn truncate_then_append_then_restart() {
    let dir = TempDir::new("truncate");
    let mut log = open(dir.storage());
    append_all(&mut log, 1, 0..30, 2).await;
    let firsts = segment_firsts(&dir);
    assert!(firsts.len() >= 4);

    // Inside a segment: the later ones go, this one is cut.
    let inner = firsts[1] + 1;
    log.truncate_after(Some(log_id(1, inner))).await.expect("truncate");
    assert_eq!(state(&mut log).await.last_log_id, Some(log_id(1, inner)));
    assert_eq!(segment_firsts(&dir), firsts[..2].to_vec());
    append_all(&mut log, 2, inner + 1..inner + 8, 3).await;
    let expected = all_entries(&mut log).await;
    let crash = TempDir::with("truncate-crash", &dir.files());
    let mut recovered = open(crash.storage());
    assert_eq!(all_entries(&mut recovered).await, expected);
    assert_eq!(indexes(&expected), (0..inner + 8).collect::<Vec<_>>());
    assert_eq!(expected[usize::try_from(inner).expect("small") + 1].log_id, log_id(2, inner + 1));

    // At a segment's first index: that segment goes whole, and a new one of the same name
    // takes the next append.
    let boundary = segment_firsts(&dir)[1];
    log.truncate_after(Some(log_id(1, boundary - 1))).await.expect("truncate");
    assert_eq!(segment_firsts(&dir), vec![0]);
    append_all(&mut log, 3, boundary..boundary + 3, 3).await;
    assert_eq!(segment_firsts(&dir), vec![0, boundary]);

    // Everything.
    log.truncate_after(None).await.expect("truncate all");
    assert_eq!(state(&mut log).await, LogState { last_purged_log_id: None, last_log_id: None });
    assert!(dir.segments().is_empty());
    append_all(&mut log, 4, 0..3, 3).await;
    log.handle().close().expect("close");
    drop(log);
    let mut reopened = open(dir.storage());
    let found = all_entries(&mut reopened).await;
    assert_eq!(found, entries(4, 0..3));
}

#[tokio::test]
async fn purge_across_segment_boundaries_then_restart() {
    let dir = TempDir::new("purge");
    let mut log = open(dir.storage());
    append_all(&mut log, 1, 0..40, 2).await;
    let firsts = segment_firsts(&dir);
    assert!(firsts.len() >= 4 && firsts[2] - firsts[1] >= 3, "segments of several entries");

    // Inside the second segment: the first goes, the second stays (it holds entries after).
    let upto = firsts[1] + 1;
    log.purge(log_id(1, upto)).await.expect("purge");
    assert_eq!(segment_firsts(&dir), firsts[1..].to_vec());
    assert_eq!(indexes(&all_entries(&mut log).await), (upto + 1..40).collect::<Vec<_>>());
    let crash = TempDir::with("purge-crash", &dir.files());
    let mut recovered = open(crash.storage());
    assert_eq!(
        state(&mut recovered).await,
        LogState { last_purged_log_id: Some(log_id(1, upto)), last_log_id: Some(log_id(1, 39)) }
    );
    assert_eq!(all_entries(&mut recovered).await, entries(1, upto + 1..40));

    // At a segment's last entry: that segment goes too.
    let upto = firsts[3] - 1;
    log.purge(log_id(1, upto)).await.expect("purge");
    assert_eq!(segment_firsts(&dir), firsts[3..].to_vec());

    // Past the last entry (a snapshot installed from the leader): every segment goes, and the
    // log goes on after the purge point.
    log.purge(log_id(1, 50)).await.expect("purge");
    assert!(dir.segments().is_empty());
    assert_eq!(
        state(&mut log).await,
        LogState { last_purged_log_id: Some(log_id(1, 50)), last_log_id: Some(log_id(1, 50)) }
    );
    append_all(&mut log, 2, 51..55, 2).await;
    let crash = TempDir::with("purge-crash-2", &dir.files());
    let mut recovered = open(crash.storage());
    assert_eq!(state(&mut recovered).await.last_purged_log_id, Some(log_id(1, 50)));
    assert_eq!(all_entries(&mut recovered).await, entries(2, 51..55));
}

#[tokio::test]
async fn segments_left_behind_by_an_interrupted_purge_are_removed() {
    let dir = TempDir::new("purge-interrupted");
    let mut log = open(dir.storage());
    append_all(&mut log, 1, 0..20, 2).await;
    let before = dir.files();
    let firsts = segment_firsts(&dir);
    let upto = firsts[2] + 1;
    log.purge(log_id(1, upto)).await.expect("purge");
    log.handle().close().expect("close");
    // The crash: the meta file was replaced, no segment deleted yet.
    let mut files = before;
    files.insert("raft-meta".into(), dir.files()["raft-meta"].clone());
    let copy = TempDir::with("purge-interrupted-copy", &files);
    let mut recovered = open(copy.storage());
    assert_eq!(segment_firsts(&copy), firsts[2..].to_vec());
    assert_eq!(all_entries(&mut recovered).await, entries(1, upto + 1..20));
}

// ------------------------------------------------------------------------- group commit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_waits_for_the_fsync() {
    let dir = TempDir::new("callback");
    let (mut log, gate) = gated_log(dir.storage()).await;
    gate.set(true);
    let mut flushed = append_nowait(&mut log, vec![entry(1, 1)]).await;
    eventually("the writer to reach the fsync", || gate.waiting() == 1).await;
    // Readable at once (openraft requires it), but not acknowledged while the fsync is held.
    assert_eq!(indexes(&all_entries(&mut log).await), vec![0, 1]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(not_yet(&mut flushed), "acknowledged before its fsync");
    gate.set(false);
    flushed.await.expect("callback").expect("durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_queued_during_an_fsync_share_the_next_one() {
    let dir = TempDir::new("group");
    let (mut log, gate) = gated_log(dir.storage()).await;
    let handle = log.handle();
    let fsyncs_before = handle.stats().fsyncs.load(Ordering::Relaxed);
    gate.set(true);
    let mut pending = vec![append_nowait(&mut log, vec![entry(1, 1)]).await];
    eventually("the writer to reach the fsync", || gate.waiting() == 1).await;
    for index in 2..7 {
        pending.push(append_nowait(&mut log, vec![entry(1, index)]).await);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(pending.iter_mut().all(not_yet), "acknowledged before the fsync");
    gate.set(false);
    for flushed in pending {
        flushed.await.expect("callback").expect("durable");
    }
    let stats = handle.stats();
    // One fsync for the held append, one for the five queued behind it.
    assert_eq!(stats.fsyncs.load(Ordering::Relaxed) - fsyncs_before, 2);
    assert_eq!(stats.appends_acknowledged.load(Ordering::Relaxed), 7);
    assert_eq!(stats.entries_appended.load(Ordering::Relaxed), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_waits_for_the_appends_queued_before_it() {
    let dir = TempDir::new("vote-order");
    let (mut log, gate) = gated_log(dir.storage()).await;
    gate.set(true);
    let held = append_nowait(&mut log, vec![entry(1, 1)]).await;
    eventually("the writer to reach the fsync", || gate.waiting() == 1).await;
    // Queued together behind the held fsync, so the writer takes them in one cycle.
    let mut before_vote = append_nowait(&mut log, vec![entry(1, 2)]).await;
    let new_vote = vote(2, 3);
    let voted = {
        let save = log.save_vote(&new_vote);
        tokio::pin!(save);
        let early = tokio::time::timeout(Duration::from_millis(50), &mut save).await;
        assert!(early.is_err(), "the vote was saved while an append before it was not durable");
        assert!(!dir.files().contains_key("raft-vote"));
        gate.set(false);
        save.await
    };
    voted.expect("vote");
    // By the time the vote is durable, the append queued before it was acknowledged.
    assert!(matches!(before_vote.try_recv(), Ok(Ok(()))), "the vote overtook an append");
    held.await.expect("callback").expect("durable");
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote(2, 3)));
}

// ------------------------------------------------------------------------------ poisoning

/// Every call on a poisoned log fails, and none touches the disk.
async fn assert_refuses_everything(log: &mut RaftLog, faulty: &FaultyStorage) {
    let syncs = faulty.count(Op::Sync);
    let appends = faulty.count(Op::Append);
    assert!(log.append(entries(1, 1_000..1_001), IOFlushed::noop()).await.is_err());
    assert!(log.save_vote(&vote(9, 1)).await.is_err());
    assert!(log.save_committed(Some(log_id(1, 1))).await.is_err());
    assert!(log.read_committed().await.is_err());
    assert!(log.truncate_after(Some(log_id(1, 1))).await.is_err());
    assert!(log.purge(log_id(1, 1)).await.is_err());
    assert!(log.get_log_state().await.is_err());
    assert!(log.try_get_log_entries(..).await.is_err());
    let err = log.read_vote().await.expect_err("read on a poisoned log");
    assert!(err.to_string().contains("poisoned"), "{err}");
    assert_eq!(faulty.count(Op::Sync), syncs, "an fsync after a failure");
    assert_eq!(faulty.count(Op::Append), appends, "a write after a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_poisons_the_log() {
    let dir = TempDir::new("poison-fsync");
    let faulty = FaultyStorage::new(dir.storage());
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage { inner: Arc::new(faulty.clone()), gate: gate.clone() });
    let mut log = open(storage);
    let handle = log.handle();
    append_all(&mut log, 1, 0..3, 1).await;

    // The fsync of index 3 fails; 4 and 5 queue behind it meanwhile.
    faulty.fail_next(Op::Sync, io::ErrorKind::Other);
    gate.set(true);
    let failed = append_nowait(&mut log, vec![entry(1, 3)]).await;
    eventually("the writer to reach the fsync", || gate.waiting() == 1).await;
    let behind = [
        append_nowait(&mut log, vec![entry(1, 4)]).await,
        append_nowait(&mut log, vec![entry(1, 5)]).await,
    ];
    gate.set(false);
    let err = failed.await.expect("callback").expect_err("the failed batch reports an error");
    assert!(err.to_string().contains("injected fault"), "{err}");
    for flushed in behind {
        flushed.await.expect("callback").expect_err("queued behind a failed fsync");
    }
    assert!(handle.poisoned().is_some());
    assert_refuses_everything(&mut log, &faulty).await;
    assert!(handle.close().is_err(), "close reports the poisoning");

    // A restart finds every acknowledged entry.
    drop(log);
    let mut recovered = open(dir.storage());
    let found = all_entries(&mut recovered).await;
    assert_eq!(found[..3], entries(1, 0..3));
}

#[tokio::test]
async fn a_failed_write_poisons_the_log() {
    let dir = TempDir::new("poison-write");
    let faulty = FaultyStorage::new(dir.storage());
    let mut log = open(Arc::new(faulty.clone()));
    append_all(&mut log, 1, 0..3, 1).await;
    faulty.fail_next(Op::Append, io::ErrorKind::StorageFull);
    let err = append(&mut log, entries(1, 3..5)).await.expect_err("a failed write");
    assert_eq!(err.kind(), io::ErrorKind::Other, "{err}");
    assert!(log.handle().poisoned().is_some());
    assert_refuses_everything(&mut log, &faulty).await;
}

#[tokio::test]
async fn a_failed_vote_write_poisons_the_log_and_keeps_the_old_vote() {
    let dir = TempDir::new("poison-vote");
    let faulty = FaultyStorage::new(dir.storage());
    let mut log = open(Arc::new(faulty.clone()));
    append_all(&mut log, 1, 0..3, 1).await;
    log.save_vote(&vote(1, 1)).await.expect("vote");
    faulty.fail_next(Op::Rename, io::ErrorKind::Other);
    let err = log.save_vote(&vote(2, 2)).await.expect_err("a failed vote");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_refuses_everything(&mut log, &faulty).await;
    drop(log);
    let mut recovered = open(dir.storage());
    assert_eq!(recovered.read_vote().await.expect("vote"), Some(vote(1, 1)));
}

// ---------------------------------------------------------------------------- inline mode

/// Inline mode: an append is durable when its callback is told, which happens before `append`
/// returns; what was acknowledged survives a crash copy; a close refuses later calls.
#[tokio::test]
async fn inline_mode_acknowledges_after_the_fsync_and_recovers() {
    let dir = TempDir::new("inline");
    let faulty = FaultyStorage::new(dir.storage());
    let mut log = open_inline(Arc::new(faulty.clone()));
    let handle = log.handle();
    let syncs = faulty.count(Op::Sync);
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries(1, 0..3), IOFlushed::signal(tx)).await.expect("append");
    assert!(faulty.count(Op::Sync) > syncs, "the fsync is done inside the call");
    rx.await.expect("callback").expect("durable");
    log.save_vote(&vote(1, 1)).await.expect("vote");
    append_all(&mut log, 1, 3..20, 4).await;
    log.save_committed(Some(log_id(1, 10))).await.expect("committed");
    append(&mut log, entries(1, 20..22)).await.expect("append carrying the committed id");
    let expected = all_entries(&mut log).await;

    let crash = TempDir::with("inline-crash", &dir.files());
    let mut recovered = open_inline(crash.storage());
    assert_eq!(all_entries(&mut recovered).await, expected);
    assert_eq!(recovered.read_vote().await.expect("vote"), Some(vote(1, 1)));
    assert_eq!(recovered.read_committed().await.expect("committed"), Some(log_id(1, 10)));

    handle.close().expect("close");
    assert!(append(&mut log, entries(1, 22..23)).await.is_err(), "append after close");
}

#[tokio::test]
async fn inline_mode_a_failed_fsync_poisons_the_log() {
    let dir = TempDir::new("inline-poison");
    let faulty = FaultyStorage::new(dir.storage());
    let mut log = open_inline(Arc::new(faulty.clone()));
    append_all(&mut log, 1, 0..3, 1).await;
    faulty.fail_next(Op::Sync, io::ErrorKind::Other);
    let err = append(&mut log, entries(1, 3..5)).await.expect_err("a failed fsync");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert!(log.handle().poisoned().is_some());
    assert_refuses_everything(&mut log, &faulty).await;
    assert!(log.handle().close().is_err(), "close reports the poisoning");
    drop(log);
    let mut recovered = open(dir.storage());
    assert_eq!(all_entries(&mut recovered).await[..3], entries(1, 0..3));
}
