//! Guards against a crash or a disk fault losing an acknowledged change or inventing one.
//!
//! The cases: torn tails, flipped bytes, interrupted checkpoints, failed writes and fsyncs.
//! Every test builds a real data directory by running a [`Node`] over a [`DirStorage`] (so the
//! bytes are the ones production writes), then damages or interrupts it and checks what
//! [`recover`] makes of it against the node's own state after each record. Faults are injected
//! with [`FaultyStorage`]; a "crash" is dropping everything and recovering from the directory.
//!
//! This file holds the fixtures (scratch directories, a driver that keeps the node's state
//! after every record, a mixed workload); the cases are in `tests/wal/`: `damage.rs` (torn
//! tails, corruption), `checkpoints.rs`, `poisoning.rs` (strict and relaxed).

#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failed expectation is a failed test; casts are of small test-sized counts"
)]

#[path = "wal/checkpoints.rs"]
mod checkpoints;
#[path = "wal/damage.rs"]
mod damage;
mod faulty;
#[path = "wal/poisoning.rs"]
mod poisoning;

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
use livestock::node::{Answered, Keyed, KeyedResult, Node, NodeConfig, Unavailable};
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
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, StreamId, UserId};

const T0_MS: u64 = 1_800_000_000_000;
const KEY: HoldIdKey = HoldIdKey(0x3A1_D00D_FEED_F00D);
const HOUR_MS: u64 = 60 * 60 * 1_000;
/// Small enough that a workload spans several segments.
const SEGMENT_BYTES: u64 = 600;

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
        retention_bytes: 0,
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
        waitlist_max: None,
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    })
}

fn reserve(user_id: &str, lines: &[(&str, u32)], ttl_ms: Option<u64>) -> Reserve {
    Reserve {
        user_id: user(user_id),
        lines: lines.iter().map(|(d, qty)| Line { deal_id: deal_id(d), qty: *qty }).collect(),
        ttl_ms,
        waitlist: false,
    }
}

fn reply_of(result: &Result<Outcome, CommandError>) -> StoredReply {
    match result {
        Ok(outcome) => StoredReply { status: 200, body: format!("{outcome:?}").into(), code: None },
        Err(e) => ApiError::from(e).reply(),
    }
}

/// The 503 the HTTP layer answers when the log cannot take a change.
fn unavailable_reply(e: &Unavailable) -> StoredReply {
    ApiError::new(ErrorCode::StorageUnavailable, e.to_string()).reply()
}

/// Runs an unkeyed command and renders its answer as the HTTP layer would (with `render`).
fn execute_with(
    node: &Node,
    command: &Command,
    render: &dyn Fn(&Result<Outcome, CommandError>) -> StoredReply,
) -> Answered {
    match node.execute(command) {
        Ok(executed) => Answered { reply: render(&executed.result), lsn: executed.lsn },
        Err(e) => Answered { reply: unavailable_reply(&e), lsn: None },
    }
}

fn execute(node: &Node, command: &Command) -> Answered {
    execute_with(node, command, &reply_of)
}

/// Waits for `lsn` to be durable; the 503 the HTTP layer would answer if it cannot be.
async fn durable(node: &Node, lsn: Option<u64>) -> Result<(), StoredReply> {
    node.durable(lsn).await.map_err(|e| unavailable_reply(&e))
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
            None => execute_with(self.node, &command, &render),
            Some(key) => {
                let keyed = Keyed { scope: "user:keyed", key, fingerprint: 7 };
                match self.node.execute_keyed(&keyed, &command, &render, |_| true) {
                    Ok(KeyedResult::Ran(answered)) => answered,
                    Err(e) => Answered { reply: unavailable_reply(&e), lsn: None },
                    Ok(_) => panic!("key {key} used twice by the workload"),
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
        let executed = Answered {
            reply: StoredReply { status: 200, body: "".into(), code: None },
            lsn: Some(lsn),
        };
        self.settle(executed, &before, "expiry").await
    }

    async fn settle(&mut self, executed: Answered, before: &Snapshot, what: &str) -> Ran {
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
        let ran = match durable(self.node, Some(lsn)).await {
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
