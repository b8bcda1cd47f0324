//! Guards against a crash or a disk fault losing an acknowledged change or inventing one.
//!
//! The cases: torn tails, flipped bytes, interrupted checkpoints, failed writes and fsyncs.
//! Every test builds a real data directory by running a [`Node`] over a [`DirStorage`] (so the
//! bytes are the ones production writes), then damages or interrupts it and checks what
//! [`recover`] makes of it against the node's own state after each record. Faults are injected
//! with [`FaultyStorage`]; a "crash" is dropping everything and recovering from the directory.

#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failed expectation is a failed test; casts are of small test-sized counts"
)]

mod faulty;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use faulty::{FaultyStorage, Op};
use livestock::alloc::{AllocatorConfig, Snapshot};
use livestock::clock::{Clock, ManualClock};
use livestock::http::error::ApiError;
use livestock::idempotency::StoredReply;
use livestock::node::{Executed, Keyed, KeyedResult, Node, NodeConfig};
use livestock::wal::checkpoint::{self, checkpoint_name, CheckpointBody, Step};
use livestock::wal::record::{check_header, FRAME_HEADER_BYTES};
use livestock::wal::recovery::Recovered;
use livestock::wal::segment::{parse_segment_name, SEGMENT_HEADER_BYTES};
use livestock::wal::storage::AppendFile;
use livestock::wal::{
    recover, DirStorage, Durability, LogState, RecoveryError, Storage, Wal, WalConfig,
};
use livestock_core::command::{Command, Line, Outcome, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::error::CommandError;
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, StreamId, UserId};

const T0_MS: u64 = 1_800_000_000_000;
const KEY: HoldIdKey = HoldIdKey(0x3A1_D00D_FEED_F00D);
const HOUR_MS: u64 = 60 * 60 * 1_000;
/// Small enough that a workload spans several segments.
const SEGMENT_BYTES: u64 = 400;

// ------------------------------------------------------------------------------- fixtures

/// A directory under cargo's scratch space, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("wal-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn storage(&self) -> DirStorage {
        DirStorage::open(&self.0).expect("open the temp dir")
    }

    /// A fresh directory holding exactly `files`.
    fn with(tag: &str, files: &Files) -> TempDir {
        let dir = TempDir::new(tag);
        for (name, bytes) in files {
            fs::write(dir.path().join(name), bytes).expect("write a file");
        }
        dir
    }

    fn files(&self) -> Files {
        let mut files = Files::new();
        for entry in fs::read_dir(&self.0).expect("list the temp dir") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().into_string().expect("utf-8 name");
            files.insert(name, fs::read(entry.path()).expect("read a file"));
        }
        files
    }

    fn names(&self) -> BTreeSet<String> {
        self.files().into_keys().collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A data directory's files, in memory: name -> bytes.
type Files = BTreeMap<String, Vec<u8>>;

fn alloc_config() -> AllocatorConfig {
    AllocatorConfig { hold_id_key: KEY, resolved_hold_retention_ms: HOUR_MS }
}

fn node_config() -> NodeConfig {
    NodeConfig {
        allocator: alloc_config(),
        idempotency_window_ms: HOUR_MS,
        idempotency_keys_max: 1_000,
    }
}

/// Strict durability; checkpoints only on close, so the operations a test counts are the log's.
fn wal_config() -> WalConfig {
    WalConfig {
        durability: Durability::Strict,
        segment_bytes_max: SEGMENT_BYTES,
        checkpoint_interval_ms: HOUR_MS,
        checkpoint_log_bytes: u64::MAX,
        idempotency_window_ms: HOUR_MS,
        manual: false,
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime").block_on(future)
}

fn recover_dir(storage: &dyn Storage) -> Result<Recovered, RecoveryError> {
    recover(storage, alloc_config(), KEY, false)
}

/// Recovers or fails the test with the error.
fn recovered(storage: &dyn Storage, context: &str) -> Recovered {
    recover_dir(storage).unwrap_or_else(|e| panic!("{context}: recovery refused: {e}"))
}

/// The refusal, or fails the test if recovery succeeded.
fn refused(storage: &dyn Storage, context: &str) -> RecoveryError {
    match recover_dir(storage) {
        Ok(r) => panic!("{context}: recovery accepted damage (last lsn {})", r.report.last_lsn),
        Err(e) => e,
    }
}

fn segment_names(files: &Files) -> Vec<(u64, String)> {
    let mut segments: Vec<(u64, String)> = files
        .keys()
        .filter_map(|name| parse_segment_name(name).map(|first| (first, name.clone())))
        .collect();
    segments.sort();
    segments
}

/// Where each frame of a segment ends; `[0]` is the end of the segment header.
fn frame_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = vec![SEGMENT_HEADER_BYTES];
    let mut at = SEGMENT_HEADER_BYTES;
    while at < bytes.len() {
        let (_, len) = check_header(&bytes[at..]).expect("a whole log has whole frames");
        at += FRAME_HEADER_BYTES + len;
        ends.push(at);
    }
    assert_eq!(at, bytes.len(), "a whole log ends on a frame boundary");
    ends
}

// ------------------------------------------------------------------------------- commands

fn deal_id(id: &str) -> DealId {
    DealId::parse(id).expect("deal id")
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("user id")
}

fn stream(id: &str) -> StreamId {
    StreamId::parse(id).expect("stream id")
}

fn create(id: &str, stream_id: Option<&str>, stock: u64, per_user_limit: Option<u32>) -> Command {
    Command::CreateDeal(NewDeal {
        id: deal_id(id),
        stream_id: stream_id.map(stream),
        stock,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit,
        hold_ttl_ms: None,
        hold_ttl_ms_max: None,
    })
}

fn reserve(user_id: &str, lines: &[(&str, u32)], ttl_ms: Option<u64>) -> Reserve {
    Reserve {
        user_id: user(user_id),
        lines: lines.iter().map(|(d, qty)| Line { deal_id: deal_id(d), qty: *qty }).collect(),
        ttl_ms,
    }
}

fn reply_of(result: &Result<Outcome, CommandError>) -> StoredReply {
    match result {
        Ok(outcome) => StoredReply { status: 200, body: format!("{outcome:?}").into() },
        Err(e) => ApiError::from(e).reply(),
    }
}

fn error_code(reply: &StoredReply) -> String {
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    body["error"]["code"].as_str().unwrap_or_default().to_owned()
}

fn assert_unavailable(reply: &StoredReply, context: &str) {
    assert_eq!(reply.status, 503, "{context}: {reply:?}");
    assert_eq!(error_code(reply), "storage_unavailable", "{context}");
}

/// What became of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ran {
    /// Its record (or, for a no-op success, everything logged before it) is durable.
    Acked(u64),
    /// A business refusal (sold out, limit, ...): no record, nothing changed.
    NoRecord,
    /// Logged in memory, but the log failed before it was durable: a 503 went out.
    Unacked(u64),
    /// Refused up front because the log is not writable: a 503, nothing changed.
    Refused,
}

/// Runs commands one at a time, each waited on until durable, and keeps the live state after
/// every record: the reference recovery must reproduce.
struct Driver<'a> {
    node: &'a Node,
    clock: &'a ManualClock,
    /// The node's state right after each record, by LSN (0: before any).
    states: BTreeMap<u64, Snapshot>,
    /// The highest LSN a caller was told is durable.
    acked: u64,
    /// Holds that acknowledged reserves made, in order.
    holds: Vec<HoldSeq>,
    log: Vec<Ran>,
}

impl<'a> Driver<'a> {
    fn new(node: &'a Node, clock: &'a ManualClock, states: BTreeMap<u64, Snapshot>) -> Self {
        let acked = states.keys().next_back().copied().unwrap_or(0);
        Driver { node, clock, states, acked, holds: Vec::new(), log: Vec::new() }
    }

    fn poisoned(&self) -> bool {
        self.log.iter().any(|r| matches!(r, Ran::Unacked(_) | Ran::Refused))
    }

    async fn run(&mut self, command: Command) -> Ran {
        self.run_keyed(None, command).await
    }

    async fn run_keyed(&mut self, key: Option<&str>, command: Command) -> Ran {
        self.clock.advance_ms(1_000);
        let before = self.node.allocator().snapshot();
        let made = Mutex::new(Vec::new());
        let render = |result: &Result<Outcome, CommandError>| {
            if let Ok(Outcome::Holds(views)) = result {
                made.lock().expect("lock").extend(views.iter().map(|v| v.hold.seq));
            }
            reply_of(result)
        };
        let executed = match key {
            None => self.node.execute(&command, &render),
            Some(key) => {
                let keyed = Keyed { scope: "user:keyed", key, fingerprint: 7 };
                match self.node.execute_keyed(&keyed, &command, &render, |_| true) {
                    KeyedResult::Ran(executed) => executed,
                    _ => panic!("key {key} used twice by the workload"),
                }
            }
        };
        let ran = self.settle(executed, &before, &format!("{command:?}")).await;
        if matches!(ran, Ran::Acked(_)) {
            self.holds.extend(made.into_inner().expect("lock"));
        }
        ran
    }

    /// The reaper's tick after `advance_ms`.
    async fn expire_after(&mut self, advance_ms: u64) -> Ran {
        self.clock.advance_ms(advance_ms);
        let before = self.node.allocator().snapshot();
        let wal = self.node.wal().expect("a logged node");
        let last = wal.last_appended_lsn();
        if !wal.is_writable() {
            assert_eq!(self.node.expire_due(), 0, "expiry on a poisoned log");
            assert_eq!(self.node.allocator().snapshot(), before, "expiry on a poisoned log");
            return self.record(Ran::Refused);
        }
        if self.node.expire_due() == 0 {
            assert_eq!(self.node.allocator().snapshot(), before, "expiry of nothing");
            return self.record(Ran::NoRecord);
        }
        let lsn = wal.last_appended_lsn();
        assert!(lsn > last);
        // No caller sees an expiry's answer; only its record matters.
        let executed =
            Executed { reply: StoredReply { status: 200, body: "".into() }, lsn: Some(lsn) };
        self.settle(executed, &before, "expiry").await
    }

    async fn settle(&mut self, executed: Executed, before: &Snapshot, what: &str) -> Ran {
        let after = self.node.allocator().snapshot();
        let Some(lsn) = executed.lsn else {
            assert_eq!(&after, before, "{what} changed state without a record");
            let ran = if executed.reply.status == 503 {
                assert_unavailable(&executed.reply, what);
                Ran::Refused
            } else {
                assert!(!self.poisoned(), "{what} ran on a poisoned log: {:?}", executed.reply);
                Ran::NoRecord
            };
            return self.record(ran);
        };
        match self.states.get(&lsn) {
            // A no-op success waits for what is already logged; it changed nothing.
            Some(state) => assert_eq!(state, &after, "{what}: no-op changed state"),
            None => {
                self.states.insert(lsn, after);
            }
        }
        let ran = match self.node.durable(Some(lsn)).await {
            Ok(()) => {
                assert!(!self.poisoned(), "{what} acknowledged after the log failed");
                self.acked = self.acked.max(lsn);
                Ran::Acked(lsn)
            }
            Err(reply) => {
                assert_unavailable(&reply, what);
                Ran::Unacked(lsn)
            }
        };
        self.record(ran)
    }

    fn record(&mut self, ran: Ran) -> Ran {
        self.log.push(ran);
        ran
    }
}

/// A mixed day of a flash sale: deals, reserves (some over the per-user limit), full and
/// partial confirms, releases, an extension, a cart, pause and resume, stock changes, an
/// expiry, a keyed request, and a stream end. Round `r` uses its own ids. About 30 records.
async fn workload(d: &mut Driver<'_>, round: u32) {
    let (a, b, c, s) =
        (format!("a{round}"), format!("b{round}"), format!("c{round}"), format!("s{round}"));
    d.run(create(&a, None, 100, Some(5))).await;
    d.run(create(&b, Some(&s), 40, None)).await;
    d.run(create(&c, Some(&s), 8, None)).await;
    let first_hold = d.holds.len();
    for i in 0..12u32 {
        let who = format!("u{}", i % 4);
        d.run(Command::Reserve(reserve(&who, &[(&a, 1 + i % 3)], None))).await;
    }
    let holds: Vec<HoldSeq> = d.holds[first_hold..].to_vec();
    for (i, hold) in holds.iter().enumerate() {
        let command = match i % 4 {
            0 => Command::Confirm { hold: *hold, qty: None },
            1 => Command::Confirm { hold: *hold, qty: Some(1) },
            2 => Command::Release { hold: *hold },
            _ => continue,
        };
        d.run(command).await;
    }
    if let Some(hold) = holds.first() {
        // A retry of a confirm: a success with no record of its own.
        d.run(Command::Confirm { hold: *hold, qty: None }).await;
    }
    if let Some(hold) = holds.get(3) {
        d.run(Command::Extend { hold: *hold, ttl_ms: 15 * 60 * 1_000 }).await;
    }
    d.run(Command::Cart(reserve("u9", &[(&b, 2), (&c, 1), (&b, 1)], None))).await;
    d.run(Command::Reserve(reserve("u8", &[(&c, 2)], Some(2_000)))).await;
    d.run(Command::PauseDeal(deal_id(&c))).await;
    d.run(Command::Reserve(reserve("u8", &[(&c, 1)], None))).await;
    d.run(Command::ResumeDeal(deal_id(&c))).await;
    d.run(Command::AdjustStock { deal_id: deal_id(&a), delta: 10 }).await;
    d.run(Command::AdjustStock { deal_id: deal_id(&a), delta: -5 }).await;
    d.expire_after(3_000).await;
    let key = format!("k{round}");
    d.run_keyed(Some(&key), Command::Reserve(reserve("u7", &[(&b, 3)], None))).await;
    d.run(Command::EndStream(stream(&s))).await;
    d.run(Command::Reserve(reserve("u1", &[(&a, 1)], None))).await;
    if !d.poisoned() {
        let records = d.log.iter().filter(|r| matches!(r, Ran::Acked(_))).count();
        let refusals = d.log.iter().filter(|r| **r == Ran::NoRecord).count();
        assert!(records >= 25 && refusals >= 2, "{records} records, {refusals} refusals");
    }
}

/// A data directory as a node left it, and the node's state after every record.
struct Built {
    /// The directory before the final close (which would write a checkpoint).
    files: Files,
    states: BTreeMap<u64, Snapshot>,
    /// The newest checkpoint in `files`.
    checkpoint_lsn: u64,
    last_lsn: u64,
}

impl Built {
    fn state(&self, lsn: u64) -> &Snapshot {
        self.states.get(&lsn).unwrap_or_else(|| panic!("no state at lsn {lsn}"))
    }
}

/// Runs `rounds` of the workload, closing and reopening the node between rounds (so the last
/// round starts from a checkpoint with older segments still around).
fn build(rounds: u32) -> Built {
    let dir = TempDir::new("build");
    let clock = Arc::new(ManualClock::new(T0_MS));
    block_on(async {
        let mut states = BTreeMap::new();
        let mut checkpoint_lsn = 0;
        for round in 0..rounds {
            let storage = Arc::new(dir.storage());
            let (node, report) =
                Node::open(node_config(), clock.clone(), storage, wal_config(), KEY).expect("open");
            match states.get(&report.last_lsn) {
                Some(state) => assert_eq!(state, &node.allocator().snapshot(), "restart"),
                None => {
                    states.insert(report.last_lsn, node.allocator().snapshot());
                }
            }
            let mut driver = Driver::new(&node, &clock, states);
            workload(&mut driver, round).await;
            assert!(!driver.poisoned());
            states = driver.states;
            let last_lsn = node.wal().expect("logged").last_appended_lsn();
            if round + 1 == rounds {
                let files = dir.files();
                node.close().expect("close");
                return Built { files, states, checkpoint_lsn, last_lsn };
            }
            node.close().expect("close");
            checkpoint_lsn = last_lsn;
        }
        panic!("no rounds")
    })
}

// ----------------------------------------------------------------------------- torn tails

#[test]
fn a_tail_cut_at_any_byte_recovers_the_longest_whole_prefix() {
    // One round: the log starts at the first checkpoint. Two: at a later one, with a covered
    // segment still in the directory.
    for rounds in [1, 2] {
        tail_cut_at_any_byte(&build(rounds));
    }
}

fn tail_cut_at_any_byte(built: &Built) {
    let segments = segment_names(&built.files);
    assert!(segments.len() >= 3, "the workload should span segments: {segments:?}");
    let (first_lsn, last) = segments.last().cloned().expect("a segment");
    let whole = built.files[&last].clone();
    let ends = frame_ends(&whole);
    assert!(ends.len() >= 3, "the last segment should hold records");

    let dir = TempDir::with("torn", &built.files);
    let storage = dir.storage();
    let file = storage.describe(&last);
    for cut in 0..=whole.len() {
        fs::write(dir.path().join(&last), &whole[..cut]).expect("cut");
        let context = format!("cut at {cut} of {}", whole.len());
        let r = recovered(&storage, &context);
        let records = ends[1..].iter().filter(|end| **end <= cut).count() as u64;
        let expected = first_lsn - 1 + records;
        assert_eq!(r.report.last_lsn, expected, "{context}");
        assert_eq!(r.report.replayed, expected - built.checkpoint_lsn, "{context}");
        assert_eq!(&r.allocator.snapshot(), built.state(expected), "{context}");
        let boundary = ends[records as usize];
        if records == 0 {
            assert_eq!(r.report.empty_tail_segments, vec![file.clone()], "{context}");
            assert_eq!(r.report.torn_tail, None, "{context}");
        } else if cut == boundary {
            assert_eq!(r.report.torn_tail, None, "{context}");
        } else {
            let torn = Some((file.clone(), boundary as u64, (cut - boundary) as u64));
            assert_eq!(r.report.torn_tail, torn, "{context}");
        }
    }
}

#[test]
fn junk_after_the_last_record_is_a_torn_tail() {
    let built = build(1);
    let (_, last) = segment_names(&built.files).last().cloned().expect("a segment");
    let whole = built.files[&last].clone();
    let ends = frame_ends(&whole);
    // A stale copy of an earlier frame (as a reused disk block would hold) is not a record.
    let stale = whole[ends[0]..ends[1]].to_vec();
    let tails: Vec<(&str, Vec<u8>)> = vec![
        ("one zero", vec![0]),
        ("zeros", vec![0; 19]),
        ("a zeroed header", vec![0; 20]),
        ("a zeroed block", vec![0; 4_096]),
        ("ones", vec![0xFF; 100]),
        ("a stale frame", stale),
        ("noise", (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()),
    ];
    for (what, tail) in tails {
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&tail);
        let mut files = built.files.clone();
        files.insert(last.clone(), bytes);
        let dir = TempDir::with("junk", &files);
        let storage = dir.storage();
        let r = recovered(&storage, what);
        assert_eq!(r.report.last_lsn, built.last_lsn, "{what}");
        assert_eq!(&r.allocator.snapshot(), built.state(built.last_lsn), "{what}");
        let torn = Some((storage.describe(&last), whole.len() as u64, tail.len() as u64));
        assert_eq!(r.report.torn_tail, torn, "{what}");

        // Repair cuts it, and the node goes on from there.
        let r = recover(&storage, alloc_config(), KEY, true).expect("repair");
        assert!(r.report.repaired);
        assert_eq!(fs::read(dir.path().join(&last)).expect("read"), whole, "{what}: cut");
        let again = recovered(&storage, what);
        assert_eq!(again.report.torn_tail, None, "{what}: clean after repair");
        assert_eq!(again.report.last_lsn, built.last_lsn);
    }
}

// ----------------------------------------------------------------------------- corruption

#[test]
fn a_flipped_byte_before_the_tail_is_refused_with_its_place() {
    let built = build(1);
    let segments = segment_names(&built.files);
    let dir = TempDir::with("flip", &built.files);
    let storage = dir.storage();
    for (index, (_, name)) in segments.iter().enumerate() {
        let whole = built.files[name].clone();
        let ends = frame_ends(&whole);
        // In the last segment, the last frame is the one place a bad frame reads as torn.
        let limit = if index + 1 == segments.len() { ends[ends.len() - 2] } else { whole.len() };
        for at in 0..limit {
            let mut bytes = whole.clone();
            bytes[at] ^= 0xFF;
            fs::write(dir.path().join(name), &bytes).expect("flip");
            let context = format!("flip of {name} at {at}");
            let RecoveryError::Corrupt(c) = refused(&storage, &context) else {
                panic!("{context}: not reported as corruption");
            };
            let frame = if at < SEGMENT_HEADER_BYTES {
                0
            } else {
                ends.iter().rev().find(|end| **end <= at).copied().unwrap_or(0)
            };
            assert_eq!(c.file, storage.describe(name), "{context}");
            assert_eq!(c.offset, frame as u64, "{context}: {}", c.reason);
        }
        fs::write(dir.path().join(name), &whole).expect("restore");
    }
    recovered(&storage, "restored");
}

#[test]
fn a_cut_in_a_sealed_segment_is_refused() {
    let built = build(1);
    let segments = segment_names(&built.files);
    let dir = TempDir::with("sealed", &built.files);
    let storage = dir.storage();
    for pair in segments.windows(2) {
        let ((_, name), (_, next)) = (&pair[0], &pair[1]);
        let whole = built.files[name].clone();
        let ends = frame_ends(&whole);
        for cut in 0..whole.len() {
            fs::write(dir.path().join(name), &whole[..cut]).expect("cut");
            let context = format!("cut of {name} at {cut}");
            let RecoveryError::Corrupt(c) = refused(&storage, &context) else {
                panic!("{context}: not reported as corruption");
            };
            if cut >= SEGMENT_HEADER_BYTES && ends.contains(&cut) {
                // Whole frames only: the gap shows at the next segment.
                assert_eq!((c.file, c.offset), (storage.describe(next), 0), "{context}");
            } else {
                let frame = ends.iter().rev().find(|end| **end <= cut).copied().unwrap_or(0);
                let frame = if cut < SEGMENT_HEADER_BYTES { 0 } else { frame };
                assert_eq!((c.file, c.offset), (storage.describe(name), frame as u64), "{context}");
            }
        }
        fs::write(dir.path().join(name), &whole).expect("restore");
    }
}

#[test]
fn a_damaged_checkpoint_is_refused_naming_it() {
    let built = build(1);
    let dir = TempDir::with("ckpt-flip", &built.files);
    let storage = dir.storage();
    let r = recovered(&storage, "before the checkpoint");
    let body = CheckpointBody { snapshot: r.allocator.snapshot(), replies: r.replies };
    checkpoint::write(&storage, built.last_lsn, &body).expect("checkpoint");
    let name = checkpoint_name(built.last_lsn);
    let whole = fs::read(dir.path().join(&name)).expect("read");
    let r = recovered(&storage, "after the checkpoint");
    assert_eq!(r.report.checkpoint_lsn, Some(built.last_lsn));
    assert_eq!(&r.allocator.snapshot(), built.state(built.last_lsn));
    const HEADER_BYTES: usize = 36;
    let cuts = [0, 1, HEADER_BYTES - 1, HEADER_BYTES, whole.len() / 2, whole.len() - 1];
    let damaged = (0..whole.len())
        .map(|at| {
            let mut bytes = whole.clone();
            bytes[at] ^= 0xFF;
            (format!("flip at {at}"), bytes, if at < HEADER_BYTES { 0 } else { HEADER_BYTES })
        })
        .chain(cuts.iter().map(|cut| {
            let offset = if *cut < HEADER_BYTES { 0 } else { 20 };
            (format!("cut at {cut}"), whole[..*cut].to_vec(), offset)
        }));
    for (what, bytes, offset) in damaged {
        fs::write(dir.path().join(&name), &bytes).expect("damage");
        let RecoveryError::Corrupt(c) = refused(&storage, &what) else {
            panic!("{what}: not reported as corruption");
        };
        assert_eq!(c.file, storage.describe(&name), "{what}");
        assert_eq!(c.offset, offset as u64, "{what}: {}", c.reason);
    }
}

// ----------------------------------------------------------------------------- checkpoints

/// A storage that remembers which files recovery read.
struct Watched {
    inner: DirStorage,
    reads: Mutex<Vec<String>>,
}

impl Storage for Watched {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        self.reads.lock().expect("lock").push(name.to_owned());
        self.inner.read(name)
    }
    fn create(&self, name: &str) -> std::io::Result<Box<dyn AppendFile>> {
        self.inner.create(name)
    }
    fn open_append(&self, name: &str) -> std::io::Result<Box<dyn AppendFile>> {
        self.inner.open_append(name)
    }
    fn truncate(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.inner.truncate(name, len)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
}

/// Recovers `dir` as after a crash: must succeed with exactly `built`'s final state, from
/// the old checkpoint or the new one, and without reading a `.tmp`.
fn assert_recovers_whole(dir: &TempDir, built: &Built, replies: usize, context: &str) -> u64 {
    let watched = Watched { inner: dir.storage(), reads: Mutex::new(Vec::new()) };
    let r = recovered(&watched, context);
    let reads = watched.reads.into_inner().expect("lock");
    assert!(reads.iter().all(|n| !n.ends_with(".tmp")), "{context}: read {reads:?}");
    assert_eq!(r.report.last_lsn, built.last_lsn, "{context}: records lost");
    assert_eq!(&r.allocator.snapshot(), built.state(built.last_lsn), "{context}");
    assert_eq!(r.replies.len(), replies, "{context}: remembered answers");
    let from = r.report.checkpoint_lsn.expect("a checkpoint");
    assert!(from == built.checkpoint_lsn || from == built.last_lsn, "{context}: from {from}");
    from
}

#[test]
fn a_checkpoint_failing_at_any_step_loses_nothing() {
    let built = build(2);
    assert!(built.checkpoint_lsn > 0, "a previous checkpoint");
    let fresh = TempDir::with("ckpt-clean", &built.files);
    let r = recovered(&fresh.storage(), "golden");
    let replies = r.replies.len();
    assert!(replies >= 2, "the keyed requests of both rounds are remembered");
    let lsn = r.report.last_lsn;
    let body = CheckpointBody { snapshot: r.allocator.snapshot(), replies: r.replies };

    // A clean run counts each operation; then each one fails in turn.
    let faulty = FaultyStorage::new(Arc::new(fresh.storage()));
    checkpoint::write(&faulty, lsn, &body).expect("a clean checkpoint");
    let ops = [Op::Create, Op::Append, Op::Sync, Op::Rename, Op::SyncDir, Op::Remove];
    let counts: Vec<(Op, u64)> = ops.iter().map(|op| (*op, faulty.count(*op))).collect();
    assert!(faulty.count(Op::Remove) >= 3, "covered segments and the old checkpoint: {counts:?}");
    drop(fresh);

    let mut steps = BTreeSet::new();
    for (op, count) in counts {
        for nth in 1..=count {
            let context = format!("{op:?} #{nth} fails");
            let kind = if nth % 2 == 0 { ErrorKind::StorageFull } else { ErrorKind::Other };
            let dir = TempDir::with("ckpt-fault", &built.files);
            let faulty = FaultyStorage::new(Arc::new(dir.storage()));
            faulty.fail(op, nth, kind);
            let result = checkpoint::write(&faulty, lsn, &body);
            assert_eq!(faulty.failures(), 1, "{context}");
            match (op, nth) {
                // Removing a stale temp that is not there is allowed to fail.
                (Op::Remove, 1) => assert!(result.is_ok(), "{context}: {result:?}"),
                _ => {
                    let Err((step, e)) = result else { panic!("{context}: no error") };
                    assert_eq!(e.kind(), kind, "{context}");
                    let expected = match (op, nth) {
                        (Op::Create | Op::Append, _) => Step::WriteTemp,
                        (Op::Sync, _) => Step::SyncTemp,
                        (Op::Rename, _) => Step::Rename,
                        (Op::SyncDir, 1) => Step::SyncDir,
                        _ => Step::DeleteCovered,
                    };
                    assert_eq!(step, expected, "{context}");
                    steps.insert(format!("{step:?}"));
                }
            }
            drop(faulty);
            // Crash: recover from what is on disk.
            let from = assert_recovers_whole(&dir, &built, replies, &context);
            let renamed = matches!(op, Op::SyncDir | Op::Remove);
            let expected_from = if renamed { lsn } else { built.checkpoint_lsn };
            assert_eq!(from, expected_from, "{context}: the rename is the commit point");
            // The next attempt succeeds over whatever this one left.
            checkpoint::write(&dir.storage(), lsn, &body).expect("retry");
            assert_eq!(assert_recovers_whole(&dir, &built, replies, &context), lsn);
            let left: Vec<String> = dir
                .names()
                .into_iter()
                .filter(|n| n.ends_with(".tmp") || n.ends_with(".ckpt"))
                .collect();
            assert_eq!(left, vec![checkpoint_name(lsn)], "{context}: leftovers");
        }
    }
    let all = ["WriteTemp", "SyncTemp", "Rename", "SyncDir", "DeleteCovered"];
    assert_eq!(steps, all.iter().map(|s| s.to_string()).collect(), "every step was failed");
}

#[test]
fn a_crash_between_checkpoint_steps_loses_nothing() {
    let built = build(2);
    let fresh = TempDir::with("ckpt-steps", &built.files);
    let r = recovered(&fresh.storage(), "golden");
    let replies = r.replies.len();
    let lsn = r.report.last_lsn;
    let body = CheckpointBody { snapshot: r.allocator.snapshot(), replies: r.replies };
    let encoded = checkpoint::encode(lsn, &body);
    let temp = format!("ckpt-{lsn:020}.tmp");
    let covered: Vec<String> = segment_names(&built.files)
        .windows(2)
        .filter(|pair| pair[1].0 <= lsn + 1)
        .map(|pair| pair[0].1.clone())
        .collect();
    assert!(covered.len() >= 2, "segments a new checkpoint covers");
    let old = checkpoint_name(built.checkpoint_lsn);

    let mut cases: Vec<(String, Files)> = Vec::new();
    for cut in [0, 1, 35, 36, encoded.len() / 2, encoded.len() - 1, encoded.len()] {
        let mut files = built.files.clone();
        files.insert(temp.clone(), encoded[..cut].to_vec());
        cases.push((format!("temp written to {cut} bytes"), files));
    }
    // A temp that would change the state if it were read: a different state, a later LSN.
    let mut files = built.files.clone();
    let foreign = CheckpointBody { snapshot: built.state(0).clone(), replies: vec![] };
    files.insert(format!("ckpt-{:020}.tmp", lsn + 5), checkpoint::encode(lsn + 5, &foreign));
    cases.push(("a complete temp of another state".into(), files));
    let mut renamed = built.files.clone();
    renamed.insert(checkpoint_name(lsn), encoded.clone());
    cases.push(("renamed, nothing deleted".into(), renamed.clone()));
    for n in 1..=covered.len() {
        let mut files = renamed.clone();
        for name in &covered[..n] {
            files.remove(name);
        }
        cases.push((format!("renamed, {n} covered segments deleted"), files.clone()));
        files.remove(&old);
        cases
            .push((format!("renamed, {n} covered segments and the old checkpoint deleted"), files));
    }
    let mut files = renamed.clone();
    files.remove(&old);
    cases.push(("renamed, the old checkpoint deleted first".into(), files));

    for (what, files) in cases {
        let dir = TempDir::with("ckpt-step", &files);
        let from = assert_recovers_whole(&dir, &built, replies, &what);
        let expected =
            if files.contains_key(&checkpoint_name(lsn)) { lsn } else { built.checkpoint_lsn };
        assert_eq!(from, expected, "{what}");
    }
}

#[test]
fn a_checkpoint_at_any_lsn_plus_the_log_after_it_is_the_same_state() {
    let built = build(1);
    for lsn in 0..=built.last_lsn {
        let Some(state) = built.states.get(&lsn) else { continue };
        let dir = TempDir::with("ckpt-any", &built.files);
        let storage = dir.storage();
        let body = CheckpointBody { snapshot: state.clone(), replies: vec![] };
        checkpoint::write(&storage, lsn, &body).expect("checkpoint");
        let context = format!("checkpoint at {lsn}");
        let r = recovered(&storage, &context);
        assert_eq!(r.report.checkpoint_lsn, Some(lsn), "{context}");
        assert_eq!(r.report.replayed, built.last_lsn - lsn, "{context}");
        assert_eq!(&r.allocator.snapshot(), built.state(built.last_lsn), "{context}");
    }
}

#[test]
fn a_failed_checkpoint_on_close_costs_nothing() {
    let dir = TempDir::new("close-fail");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let faulty = Arc::new(FaultyStorage::new(Arc::new(dir.storage())));
    let (node, _) =
        Node::open(node_config(), clock.clone(), faulty.clone(), wal_config(), KEY).expect("open");
    let states = BTreeMap::from([(0, node.allocator().snapshot())]);
    let mut driver = Driver::new(&node, &clock, states);
    block_on(workload(&mut driver, 0));
    let last = driver.acked;
    let live = node.allocator().snapshot();
    faulty.fail_next(Op::Rename, ErrorKind::StorageFull);
    node.close().expect("a failed checkpoint does not fail the close");
    let wal = node.wal().expect("logged");
    assert_eq!(wal.stats().checkpoint_failures.load(Ordering::Relaxed), 1);
    assert_eq!(wal.state(), LogState::Closed(last));
    let r = recovered(&dir.storage(), "after a failed checkpoint");
    assert_eq!(r.report.checkpoint_lsn, Some(0));
    assert_eq!(r.report.last_lsn, last);
    assert_eq!(r.allocator.snapshot(), live);
}

/// In debug builds (which the tests are) the checkpointer audits its shadow's invariants after
/// every batch it applies, one per fsync that made records durable; release builds never do.
#[test]
fn the_shadow_is_audited_after_every_durable_batch_in_debug_builds() {
    let dir = TempDir::new("audit");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let storage = Arc::new(dir.storage());
    let (node, _) =
        Node::open(node_config(), clock.clone(), storage, wal_config(), KEY).expect("open");
    let states = BTreeMap::from([(0, node.allocator().snapshot())]);
    let mut driver = Driver::new(&node, &clock, states);
    block_on(workload(&mut driver, 0));
    node.close().expect("close");
    let stats = node.wal().expect("logged").stats();
    // The driver waits for each record to be durable: about one batch per record.
    let batches = stats.fsync_seconds.count();
    assert!(batches >= 20, "the workload is many batches: {batches}");
    let audits = stats.shadow_audits.load(Ordering::Relaxed);
    assert_eq!(audits, if cfg!(debug_assertions) { batches } else { 0 });
}

// ----------------------------------------------------------------------------- poisoning

/// Opens a node over `faulty`; the log is not checkpointed until close.
fn open_faulty(dir: &TempDir, clock: &Arc<ManualClock>) -> (Node, Arc<FaultyStorage>) {
    let faulty = Arc::new(FaultyStorage::new(Arc::new(dir.storage())));
    let (node, _) =
        Node::open(node_config(), clock.clone(), faulty.clone(), wal_config(), KEY).expect("open");
    (node, faulty)
}

/// The log failed: every command is refused with a 503 and changes nothing; the reaper
/// expires nothing.
async fn assert_refuses_everything(d: &mut Driver<'_>) {
    let wal = d.node.wal().expect("logged");
    assert!(!wal.is_writable());
    let LogState::Poisoned(reason) = wal.state() else { panic!("not poisoned: {:?}", wal.state()) };
    assert!(reason.contains("injected fault"), "{reason}");
    let before = d.node.allocator().snapshot();
    assert_eq!(d.run(create("late", None, 5, None)).await, Ran::Refused);
    assert_eq!(d.run(Command::Reserve(reserve("u1", &[("a0", 1)], None))).await, Ran::Refused);
    if let Some(hold) = d.holds.last() {
        assert_eq!(d.run(Command::Release { hold: *hold }).await, Ran::Refused);
    }
    // Past the workload's default expiries, so a restart has holds to expire.
    d.clock.advance_ms(11 * 60 * 1_000);
    assert_eq!(d.node.expire_due(), 0, "the reaper must not change state either");
    assert_eq!(d.node.allocator().snapshot(), before);
    assert!(d.node.close().is_err(), "close reports the poisoned log");
}

/// Recovers the directory with a healthy storage: every acknowledged record is there, and
/// nothing that was never logged. Returns the LSN recovered to.
fn assert_recovers_acknowledged(dir: &TempDir, d: &Driver<'_>, context: &str) -> u64 {
    let r = recovered(&dir.storage(), context);
    let last = r.report.last_lsn;
    assert!(last >= d.acked, "{context}: acknowledged {} but recovered to {last}", d.acked);
    let state = d.states.get(&last).unwrap_or_else(|| panic!("{context}: no state at {last}"));
    assert_eq!(&r.allocator.snapshot(), state, "{context}");
    last
}

async fn a_failed_fsync_is_not_acknowledged(kind: ErrorKind) {
    let dir = TempDir::new("fsync");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (node, faulty) = open_faulty(&dir, &clock);
    let mut d = Driver::new(&node, &clock, BTreeMap::from([(0, node.allocator().snapshot())]));
    workload(&mut d, 0).await;
    let acked = d.acked;
    faulty.fail_next(Op::Sync, kind);
    let ran = d.run(Command::Reserve(reserve("late-user", &[("a0", 1)], None))).await;
    assert_eq!(ran, Ran::Unacked(acked + 1), "the reserve in the failed batch");
    assert_refuses_everything(&mut d).await;
    // The write reached the file before its fsync failed: recovery may keep it (it was never
    // acknowledged, so either way is correct), but must keep everything before it.
    let last = assert_recovers_acknowledged(&dir, &d, "after a failed fsync");
    assert!(last == acked || last == acked + 1);
}

#[tokio::test]
async fn a_failed_fsync_poisons_the_log_eio() {
    a_failed_fsync_is_not_acknowledged(ErrorKind::Other).await;
}

#[tokio::test]
async fn a_failed_fsync_poisons_the_log_enospc() {
    a_failed_fsync_is_not_acknowledged(ErrorKind::StorageFull).await;
}

#[tokio::test]
async fn a_failed_write_poisons_the_log_and_writes_nothing() {
    let dir = TempDir::new("write");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (node, faulty) = open_faulty(&dir, &clock);
    let mut d = Driver::new(&node, &clock, BTreeMap::from([(0, node.allocator().snapshot())]));
    workload(&mut d, 0).await;
    let acked = d.acked;
    faulty.fail_next(Op::Append, ErrorKind::StorageFull);
    let ran = d.run(Command::AdjustStock { deal_id: deal_id("a0"), delta: 3 }).await;
    assert_eq!(ran, Ran::Unacked(acked + 1));
    assert_refuses_everything(&mut d).await;
    assert_eq!(assert_recovers_acknowledged(&dir, &d, "after a failed write"), acked);
}

#[tokio::test]
async fn every_record_of_a_failed_batch_is_refused() {
    let dir = TempDir::new("batch");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (node, faulty) = open_faulty(&dir, &clock);
    let mut d = Driver::new(&node, &clock, BTreeMap::from([(0, node.allocator().snapshot())]));
    workload(&mut d, 0).await;
    faulty.fail_next(Op::Sync, ErrorKind::Other);
    // Several commands logged before anyone waits: they share one or more batches, and the
    // first of those fails. Those that come after the writer found out are refused up front.
    let mut lsns = Vec::new();
    for i in 0..6 {
        let who = format!("batch{i}");
        let command = Command::Reserve(reserve(&who, &[("a0", 1)], None));
        let before = node.allocator().snapshot();
        let executed = node.execute(&command, &reply_of);
        let Some(lsn) = executed.lsn else {
            assert_unavailable(&executed.reply, &who);
            assert_eq!(node.allocator().snapshot(), before, "{who}: refused but changed state");
            d.log.push(Ran::Refused);
            continue;
        };
        assert_eq!(executed.reply.status, 200, "{who}");
        d.states.insert(lsn, node.allocator().snapshot());
        lsns.push(lsn);
    }
    assert!(!lsns.is_empty(), "the first reserve is logged");
    for lsn in lsns {
        let reply = node.durable(Some(lsn)).await.expect_err("acknowledged a failed batch");
        assert_unavailable(&reply, &format!("lsn {lsn}"));
        d.log.push(Ran::Unacked(lsn));
    }
    assert_refuses_everything(&mut d).await;
    assert_recovers_acknowledged(&dir, &d, "after a failed batch");
}

/// Every write-side operation of a node's life, failed in turn: opening a new directory
/// (its first checkpoint, the first segment), every batch, every segment switch. Whatever
/// fails, no acknowledged change is lost, nothing is acknowledged after the failure, and a
/// restart on a healthy disk goes on from what recovery found.
#[test]
fn every_failed_log_operation_loses_no_acknowledged_change() {
    let clean = TempDir::new("enum-clean");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (node, faulty) = open_faulty(&clean, &clock);
    let mut d = Driver::new(&node, &clock, BTreeMap::from([(0, node.allocator().snapshot())]));
    block_on(workload(&mut d, 0));
    let ops = [Op::Create, Op::Append, Op::Sync, Op::SyncDir, Op::Rename, Op::Remove];
    let counts: Vec<(Op, u64)> = ops.iter().map(|op| (*op, faulty.count(*op))).collect();
    node.close().expect("close");
    assert!(faulty.count(Op::Create) >= 4, "several segments: {counts:?}");

    for (op, count) in counts {
        for nth in 1..=count {
            let context = format!("{op:?} #{nth} fails");
            let kind = if nth % 2 == 0 { ErrorKind::StorageFull } else { ErrorKind::Other };
            let dir = TempDir::new("enum");
            let clock = Arc::new(ManualClock::new(T0_MS));
            let faulty = Arc::new(FaultyStorage::new(Arc::new(dir.storage())));
            faulty.fail(op, nth, kind);
            let opened =
                Node::open(node_config(), clock.clone(), faulty.clone(), wal_config(), KEY);
            let last = match opened {
                Err(e) => {
                    assert_eq!(faulty.failures(), 1, "{context}: open failed on its own: {e}");
                    let r = recovered(&dir.storage(), &context);
                    assert_eq!(r.report.last_lsn, 0, "{context}");
                    assert_eq!(r.allocator.snapshot(), node_free_state(), "{context}");
                    0
                }
                Ok((node, _)) => {
                    let states = BTreeMap::from([(0, node.allocator().snapshot())]);
                    let mut d = Driver::new(&node, &clock, states);
                    block_on(async {
                        workload(&mut d, 0).await;
                        if d.poisoned() {
                            let first = d
                                .log
                                .iter()
                                .position(|r| !matches!(r, Ran::Acked(_) | Ran::NoRecord));
                            let after = &d.log[first.expect("a failure") + 1..];
                            assert!(
                                after.iter().all(|r| *r == Ran::Refused),
                                "{context}: {after:?}"
                            );
                            assert_refuses_everything(&mut d).await;
                        } else {
                            // The fault hit an operation whose failure is tolerated.
                            node.close().expect("close");
                        }
                    });
                    assert_recovers_acknowledged(&dir, &d, &context)
                }
            };
            // Restart on a healthy disk and go on.
            let (node, report) = Node::open(
                node_config(),
                clock.clone(),
                Arc::new(dir.storage()),
                wal_config(),
                KEY,
            )
            .unwrap_or_else(|e| panic!("{context}: restart: {e}"));
            assert_eq!(report.last_lsn, last, "{context}");
            block_on(async {
                let executed = node.execute(&create("after", None, 5, None), &reply_of);
                assert_eq!(executed.reply.status, 200, "{context}");
                node.durable(executed.lsn).await.expect("durable after restart");
            });
            // The restart expired what came due while it was down (the reaper's records),
            // then logged the new deal.
            let expected = node.wal().expect("logged").last_appended_lsn();
            assert!(expected > last, "{context}");
            let live = node.allocator().snapshot();
            node.close().expect("close");
            let r = recovered(&dir.storage(), &context);
            assert_eq!(r.report.last_lsn, expected, "{context}: after restart");
            assert_eq!(r.allocator.snapshot(), live, "{context}: after restart");
        }
    }
}

/// A hold extended and then left alone has two timer entries (its first expiry and its
/// extended one). When a node restarts after both instants passed, replaying the log rebuilds
/// both entries, and the expiry at open must expire the hold once.
#[test]
fn a_restart_after_an_extended_hold_expired_expires_it_once() {
    let dir = TempDir::new("extended");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (node, _) = open_faulty(&dir, &clock);
    let mut d = Driver::new(&node, &clock, BTreeMap::from([(0, node.allocator().snapshot())]));
    let files = block_on(async {
        d.run(create("x", None, 10, None)).await;
        d.run(Command::Reserve(reserve("u1", &[("x", 2)], None))).await;
        let hold = d.holds[0];
        assert!(matches!(
            d.run(Command::Extend { hold, ttl_ms: 20 * 60 * 1_000 }).await,
            Ran::Acked(_)
        ));
        // Crash: the log has the reserve and the extension, no checkpoint has the hold.
        dir.files()
    });
    node.close().expect("close");
    let crashed = TempDir::with("extended-crash", &files);
    clock.advance_ms(HOUR_MS);
    let (node, _) =
        Node::open(node_config(), clock.clone(), Arc::new(crashed.storage()), wal_config(), KEY)
            .expect("restart");
    let deal = node.allocator().deal("x", clock.now_ms()).expect("the deal");
    assert_eq!(deal.counters.available(), 10, "the hold expired and its units came back");
    node.close().expect("close");
}

/// The state of a node that never ran a command.
fn node_free_state() -> Snapshot {
    livestock::alloc::Allocator::new(alloc_config()).snapshot()
}

// ----------------------------------------------------------------------------- relaxed mode

/// Relaxed durability, fsynced by its own thread every 2 ms.
fn relaxed_config() -> WalConfig {
    WalConfig { durability: Durability::Relaxed { fsync_interval_ms: 2 }, ..wal_config() }
}

/// The log's segments and their lengths.
fn log_segments(dir: &TempDir) -> BTreeMap<String, usize> {
    dir.files()
        .into_iter()
        .filter(|(name, _)| parse_segment_name(name).is_some())
        .map(|(name, bytes)| (name, bytes.len()))
        .collect()
}

/// Waits (bounded) until the syncer has made `lsn` durable.
async fn wait_synced(wal: &Wal, lsn: u64) {
    tokio::time::timeout(std::time::Duration::from_secs(10), wal.wait_durable(lsn))
        .await
        .expect("the syncer fsyncs within its interval")
        .expect("durable");
}

/// The writer hands the syncer a handle on every new segment; across many segment switches
/// (400-byte segments), everything written is fsynced by the syncer alone, and recovery after
/// close finds every record.
#[tokio::test]
async fn relaxed_syncer_covers_every_segment() {
    let dir = TempDir::new("relaxed");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (node, _) =
        Node::open(node_config(), clock.clone(), Arc::new(dir.storage()), relaxed_config(), KEY)
            .expect("open");
    let mut d = Driver::new(&node, &clock, BTreeMap::from([(0, node.allocator().snapshot())]));
    for round in 0..4 {
        workload(&mut d, round).await;
    }
    let wal = node.wal().expect("logged");
    let last = wal.last_appended_lsn();
    assert!(segment_names(&dir.files()).len() > 4, "the workload spans several segments");
    wait_synced(wal, last).await;
    assert!(wal.stats().fsync_seconds.count() >= 1, "the syncer's fsyncs are measured");
    node.close().expect("close");
    assert_eq!(assert_recovers_acknowledged(&dir, &d, "relaxed, after close"), last);
}

/// A failed fsync on the syncer thread poisons the log: the writer stops writing, every
/// later command is refused, and what was acknowledged (written to the kernel) is recovered.
#[tokio::test]
async fn relaxed_a_failed_background_fsync_poisons_the_log() {
    let dir = TempDir::new("relaxed-fsync");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let faulty = Arc::new(FaultyStorage::new(Arc::new(dir.storage())));
    let (node, _) = Node::open(node_config(), clock.clone(), faulty.clone(), relaxed_config(), KEY)
        .expect("open");
    let mut d = Driver::new(&node, &clock, BTreeMap::from([(0, node.allocator().snapshot())]));
    workload(&mut d, 0).await;
    let wal = node.wal().expect("logged");
    wait_synced(wal, wal.last_appended_lsn()).await;
    faulty.fail_next(Op::Sync, ErrorKind::Other);
    // Acknowledged once written: the fsync that fails comes after.
    let ran = d.run(Command::Reserve(reserve("late-user", &[("a0", 1)], None))).await;
    assert!(matches!(ran, Ran::Acked(_)), "{ran:?}");
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), wal.poisoned())
        .await
        .expect("the syncer's next fsync fails and poisons the log");
    assert!(reason.contains("injected fault"), "{reason}");
    let log = log_segments(&dir);
    assert_refuses_everything(&mut d).await;
    // The checkpointer still writes a checkpoint of the state fsynced before the failure, and
    // removes the segments it covers; no segment is new or longer.
    for (name, len) in log_segments(&dir) {
        assert_eq!(Some(&len), log.get(&name), "{name} was written after its fsync failed");
    }
    // The fault injector does not drop the page cache: what was written is on disk.
    assert_recovers_acknowledged(&dir, &d, "relaxed, after a failed fsync");
}
