//! Poisoning: a failed write or fsync (strict mode, or the relaxed syncer's) refuses every
//! later command, acknowledges nothing after the failure, and loses nothing acknowledged; a
//! restart on a healthy disk goes on from what recovery found (expiring overdue holds once).

use super::*;

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
        let executed = execute(&node, &command);
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
        let reply = durable(&node, Some(lsn)).await.expect_err("acknowledged a failed batch");
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
                let executed = execute(&node, &create("after", None, 5, None));
                assert_eq!(executed.reply.status, 200, "{context}");
                durable(&node, executed.lsn).await.expect("durable after restart");
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
