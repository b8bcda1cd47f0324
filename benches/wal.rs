//! Write-ahead log benchmarks, on a real disk (cargo's scratch directory under `target/`):
//!
//! - `wal_append/strict/{1,16,256}`: append N records back to back through `Wal::append` and
//!   wait until the last is durable (strict mode: the writer's group commit decides how many
//!   fsyncs that takes);
//! - `wal_fsync`: one record made durable through the log, and a bare append + `fdatasync`
//!   through `DirStorage` (the floor under it);
//! - `recovery/1m_records`: `recover` of a log of a deal and 1M reserves (target: under 1 s);
//! - `checkpoint/1m_open_holds`: `checkpoint::write` (and `encode` alone) of 1M open holds;
//!   the checkpointer's work per checkpoint, a copy then its encoding (before) against the
//!   payload encoded from the live structures (`encode_payload`, now).
//!
//! Quick run: `cargo bench --bench wal -- --quick`.

#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "bench code: a failed set-up stops the bench; casts are of indices below a Vec length"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use livestock::alloc::{Allocator, AllocatorConfig, Snapshot};
use livestock::wal::checkpoint::{self, CheckpointBody};
use livestock::wal::record::{encode_frame, encode_payload};
use livestock::wal::segment::{segment_header, segment_name};
use livestock::wal::{recover, DirStorage, Durability, Record, Storage, Wal, WalConfig, WalStart};
use livestock_core::deal::{DealSpec, NewDeal};
use livestock_core::event::Event;
use livestock_core::hold::{Hold, HoldState};
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, UserId};
use livestock_core::limits::DEAL_STOCK_UNITS_MAX;

const T0_MS: u64 = 1_800_000_000_000;
const KEY: HoldIdKey = HoldIdKey(0xBE7C_4000_0000_0001);
const HOUR_MS: u64 = 60 * 60 * 1_000;
const ONE_MILLION: u64 = 1_000_000;

/// A directory under cargo's scratch space, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bench-wal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a bench dir");
        TempDir(path)
    }

    fn storage(&self) -> DirStorage {
        DirStorage::open(&self.0).expect("open the bench dir")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn alloc_config() -> AllocatorConfig {
    AllocatorConfig { hold_id_key: KEY, resolved_hold_retention_ms: HOUR_MS }
}

/// Strict, no checkpoints while measuring, default-sized segments.
fn wal_config() -> WalConfig {
    WalConfig {
        durability: Durability::Strict,
        segment_bytes_max: livestock_core::limits::WAL_SEGMENT_BYTES_MAX_DEFAULT,
        checkpoint_interval_ms: HOUR_MS,
        checkpoint_log_bytes: u64::MAX,
        idempotency_window_ms: HOUR_MS,
        retention_bytes: 0,
        manual: false,
    }
}

/// A stream of records that stays valid in order (the log writer's shadow applies every
/// durable one, and panics on one that does not apply): a deal, then reserves of one unit,
/// each released again by the next record when `release` is set.
struct Events {
    deal: DealId,
    users: Vec<UserId>,
    next_seq: u64,
    release: bool,
    open: Option<HoldSeq>,
}

impl Events {
    fn new(release: bool) -> Self {
        let users = (0..1_000).map(|i| UserId::parse(&format!("user-{i}")).expect("id")).collect();
        Events { deal: DealId::parse("drop").expect("id"), users, next_seq: 1, release, open: None }
    }

    fn deal_created(&self) -> Record {
        let new = NewDeal {
            id: self.deal.clone(),
            stream_id: None,
            stock: DEAL_STOCK_UNITS_MAX,
            starts_at_ms: None,
            ends_at_ms: None,
            per_user_limit: None,
            hold_ttl_ms: None,
            hold_ttl_ms_max: None,
            waitlist_max: None,
            offer_ttl_ms: None,
            draw_window_ms: None,
            draw_seed: None,
        };
        let spec = DealSpec::new(&new, T0_MS).expect("a valid deal");
        let event = Event::DealCreated { spec, stock: DEAL_STOCK_UNITS_MAX };
        Record { at_ms: T0_MS, event, reply: None }
    }

    fn next(&mut self) -> Record {
        let at_ms = T0_MS + self.next_seq;
        if let Some(seq) = self.open.take() {
            return Record { at_ms, event: Event::Released { seq, at_ms }, reply: None };
        }
        let seq = HoldSeq(self.next_seq);
        self.next_seq += 1;
        let hold = Hold {
            seq,
            deal_id: self.deal.clone(),
            user_id: self.users[(seq.0 % self.users.len() as u64) as usize].clone(),
            qty: 1,
            created_at_ms: at_ms,
            expires_at_ms: at_ms + 10 * 60 * 1_000,
            state: HoldState::Held,
            confirmed_qty: 0,
            resolved_at_ms: None,
        };
        if self.release {
            self.open = Some(seq);
        }
        Record { at_ms, event: Event::Reserved { holds: vec![hold] }, reply: None }
    }
}

/// A log on a fresh directory whose first record (the deal) is already durable.
fn started_wal(dir: &TempDir, events: &Events, runtime: &tokio::runtime::Runtime) -> Wal {
    let start = WalStart {
        next_lsn: 1,
        checkpoint_lsn: 0,
        shadow: Allocator::new(alloc_config()),
        replies: Vec::new(),
    };
    let wal = Wal::start(Arc::new(dir.storage()), start, wal_config()).expect("start the log");
    let lsn = wal.append(events.deal_created());
    runtime.block_on(wal.wait_durable(lsn)).expect("durable");
    wal
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime")
}

fn append_throughput(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("wal_append");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for batch in [1u64, 16, 256] {
        let dir = TempDir::new(&format!("append-{batch}"));
        let mut events = Events::new(true);
        let wal = started_wal(&dir, &events, &runtime);
        group.throughput(Throughput::Elements(batch));
        group.bench_function(BenchmarkId::new("strict", batch), |b| {
            b.iter(|| {
                let mut lsn = 0;
                for _ in 0..batch {
                    lsn = wal.append(events.next());
                }
                runtime.block_on(wal.wait_durable(lsn)).expect("durable");
            })
        });
        wal.close().expect("close");
    }
    group.finish();
}

fn fsync_cost(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("wal_fsync");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    let dir = TempDir::new("fsync-wal");
    let mut events = Events::new(true);
    let wal = started_wal(&dir, &events, &runtime);
    group.bench_function("one_record_durable", |b| {
        b.iter(|| {
            let lsn = wal.append(events.next());
            runtime.block_on(wal.wait_durable(lsn)).expect("durable");
        })
    });
    wal.close().expect("close");

    let raw = TempDir::new("fsync-raw");
    let storage = raw.storage();
    let mut file = storage.create("raw.log").expect("create");
    let bytes = [0x5Au8; 64];
    group.bench_function("append_64b_and_fdatasync", |b| {
        b.iter(|| {
            file.append(&bytes).expect("append");
            file.sync().expect("fdatasync");
        })
    });
    group.finish();
}

/// `ckpt-0` (an empty state) and one segment: a deal and `reserves` reserves, encoded
/// directly (the writer would take minutes of fsyncs to make this).
fn write_big_log(dir: &TempDir, reserves: u64) -> u64 {
    let storage = dir.storage();
    let empty =
        CheckpointBody { snapshot: Allocator::new(alloc_config()).snapshot(), replies: vec![] };
    checkpoint::write(&storage, 0, &empty).expect("first checkpoint");
    let mut events = Events::new(false);
    let mut bytes = segment_header(1).to_vec();
    encode_frame(1, &encode_payload(&events.deal_created()), &mut bytes);
    for lsn in 2..=reserves + 1 {
        encode_frame(lsn, &encode_payload(&events.next()), &mut bytes);
    }
    std::fs::write(dir.0.join(segment_name(1)), &bytes).expect("write the segment");
    println!("log of {} records: {} MB", reserves + 1, bytes.len() / 1_000_000);
    reserves + 1
}

fn recovery_and_checkpoint(c: &mut Criterion) {
    let dir = TempDir::new("recovery");
    let started = Instant::now();
    let last_lsn = write_big_log(&dir, ONE_MILLION);
    println!("built in {:?}", started.elapsed());
    let storage = dir.storage();

    let mut group = c.benchmark_group("recovery");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(last_lsn));
    group.bench_function("1m_records", |b| {
        b.iter_with_large_drop(|| {
            let r = recover(&storage, alloc_config(), KEY, false).expect("recover");
            assert_eq!(r.report.last_lsn, last_lsn);
            r
        })
    });
    group.finish();

    let recovered = recover(&storage, alloc_config(), KEY, false).expect("recover");
    let snapshot: Snapshot = recovered.allocator.snapshot();
    assert_eq!(snapshot.holds.len() as u64, ONE_MILLION);
    let body = CheckpointBody { snapshot, replies: vec![] };
    println!(
        "checkpoint of 1M open holds: {} MB",
        checkpoint::encode(last_lsn, &body).len() / 1_000_000
    );
    drop(dir);

    let target = TempDir::new("checkpoint");
    let storage = target.storage();
    let mut group = c.benchmark_group("checkpoint");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(ONE_MILLION));
    group.bench_function("1m_open_holds_encode", |b| {
        b.iter_with_large_drop(|| checkpoint::encode(last_lsn, &body))
    });
    group.bench_function("1m_open_holds_write", |b| {
        b.iter(|| checkpoint::write(&storage, last_lsn, &body).expect("checkpoint"))
    });
    // What the checkpointer spends per checkpoint, before and after it stopped copying the
    // state: a snapshot (a copy of every hold) then its encoding, against the payload encoded
    // from the live structures (`encode_payload`, unpaced here).
    group.bench_function("1m_open_holds_snapshot_then_encode", |b| {
        b.iter_with_large_drop(|| {
            let body = CheckpointBody { snapshot: recovered.allocator.snapshot(), replies: vec![] };
            checkpoint::encode(last_lsn, &body)
        })
    });
    group.bench_function("1m_open_holds_encode_payload", |b| {
        b.iter_with_large_drop(|| {
            checkpoint::encode_payload(&recovered.allocator, std::iter::empty(), &mut || {})
        })
    });
    group.finish();
}

criterion_group!(benches, append_throughput, fsync_cost, recovery_and_checkpoint);
criterion_main!(benches);
