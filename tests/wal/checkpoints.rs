//! Checkpoints: failing or crashing at any step of writing one loses nothing, any checkpoint
//! plus the log after it is the same state, and the checkpointer's shadow is audited.

use super::*;

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

// ---------------------------------------------------------------- 128-bit counters

/// Runs `command`, waits for its record to be durable, and returns the outcome.
fn run(node: &Node, command: &Command) -> Outcome {
    let executed = node.execute(command).expect("the log takes it");
    block_on(node.durable(executed.lsn)).expect("durable");
    executed.result.unwrap_or_else(|e| panic!("{command:?} refused: {e}"))
}

fn hold_seq(outcome: Outcome) -> HoldSeq {
    match outcome {
        Outcome::Holds(views) => views[0].hold.seq,
        other => panic!("not a reserve's answer: {other:?}"),
    }
}

fn counts(node: &Node, id: &str) -> (u64, u64, u64) {
    let c = node.allocator().deal(id, T0_MS).expect("the deal").counters;
    (c.available(), c.held(), c.sold())
}

/// Deals of a billion units and of the limit (2^40 - 1) reserve, confirm, release and take
/// stock, and a checkpoint plus the log after it recovers them exactly. With 21-bit counters
/// neither deal could exist.
#[test]
fn deals_of_a_billion_units_and_of_the_limit_recover_from_checkpoint_and_log() {
    use livestock_core::limits::DEAL_STOCK_UNITS_MAX as MAX;
    const BILLION: u64 = 1_000_000_000;
    let dir = TempDir::new("big-deals");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let open = || {
        let storage = Arc::new(dir.storage());
        Node::open(node_config(), clock.clone(), storage, wal_config(), KEY).expect("open").0
    };
    let node = open();
    run(&node, &create("big", None, BILLION, None));
    run(&node, &create("max", None, MAX, Some(1_000)));
    let a = hold_seq(run(&node, &Command::Reserve(reserve("u1", &[("big", 1_000)], None))));
    let b = hold_seq(run(&node, &Command::Reserve(reserve("u1", &[("max", 1_000)], None))));
    run(&node, &Command::Confirm { hold: a, qty: Some(400) });
    run(&node, &Command::Release { hold: b });
    run(&node, &Command::AdjustStock { deal_id: deal_id("big"), delta: 5 });
    assert_eq!(counts(&node, "big"), (BILLION + 5 - 400, 0, 400));
    assert_eq!(counts(&node, "max"), (MAX, 0, 0));
    node.close().expect("close: writes the checkpoint");

    let node = open();
    assert_eq!(counts(&node, "big"), (BILLION + 5 - 400, 0, 400), "from the checkpoint");
    let c = hold_seq(run(&node, &Command::Reserve(reserve("u2", &[("big", 999)], None))));
    let d = hold_seq(run(&node, &Command::Reserve(reserve("u2", &[("max", 1_000)], None))));
    run(&node, &Command::Confirm { hold: d, qty: None });
    run(&node, &Command::AdjustStock { deal_id: deal_id("big"), delta: -1_000 });
    run(&node, &Command::PauseDeal(deal_id("max")));
    let _held = c;
    assert_eq!(counts(&node, "big"), (BILLION + 5 - 400 - 999 - 1_000, 999, 400));
    assert_eq!(counts(&node, "max"), (MAX - 1_000, 0, 1_000));
    // At the limit, one more unit is refused with the usual code and changes nothing.
    let over = node.execute(&Command::AdjustStock { deal_id: deal_id("max"), delta: 1 });
    let over = over.expect("the log is fine").result.expect_err("past the limit");
    assert_eq!(over.code(), ErrorCode::InvalidRequest);
    let over_create = node.execute(&create("over", None, MAX + 1, None)).expect("log").result;
    assert_eq!(over_create.expect_err("past the limit").code(), ErrorCode::InvalidRequest);
    let live = node.allocator().snapshot();
    let files = dir.files();
    drop(node);

    let copy = TempDir::with("big-deals-crash", &files);
    let r = recovered(&copy.storage(), "checkpoint plus log");
    assert!(r.report.checkpoint_lsn.is_some_and(|lsn| lsn > 0), "{:?}", r.report);
    assert!(r.report.replayed >= 5, "{:?}", r.report);
    assert_eq!(r.allocator.snapshot(), live);
    let max = r.allocator.deal("max", T0_MS).expect("max").counters;
    assert!(max.shut() && max.stock() == MAX);
}

/// The deals of a snapshot as they were encoded, with each word mapped by `word`: with
/// `Counters` itself and the waitlists this is today's encoding byte for byte (postcard writes
/// a struct as its fields in order, like a tuple), which the test checks; without the
/// waitlists it is what version 2 wrote, and with the 64-bit word too what version 1 wrote.
#[allow(clippy::type_complexity, reason = "the shape of `CheckpointBody`, spelled out")]
fn body_with_words<W: serde::Serialize>(
    body: &CheckpointBody,
    word: impl Fn(livestock_core::counters::Counters) -> W,
    with_waitlists: bool,
) -> Vec<u8> {
    use livestock_core::deal::{DealSpec, Lifecycle};
    use livestock_core::hold::Hold;
    let s = &body.snapshot;
    let deals: Vec<(&DealSpec, Lifecycle, W)> =
        s.deals.iter().map(|d| (&d.spec, d.lifecycle, word(d.counters))).collect();
    let snapshot: (HoldIdKey, u64, Vec<(&DealSpec, Lifecycle, W)>, &Vec<Hold>, &Vec<_>) =
        (s.hold_id_key, s.next_hold_seq, deals, &s.holds, &s.user_counts);
    if with_waitlists {
        postcard::to_stdvec(&((snapshot, &s.waitlists), &body.replies)).expect("encodes")
    } else {
        postcard::to_stdvec(&(snapshot, &body.replies)).expect("encodes")
    }
}

/// A checkpoint file as `checkpoint::encode` lays it out, with any version and payload.
fn checkpoint_file(lsn: u64, version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = b"LVSTKCKP".to_vec();
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A data directory written before the 128-bit counters (checkpoint version 1, each deal's
/// counters one 64-bit word of 21-bit fields) recovers after the upgrade: the old checkpoint
/// plus the log after it is the same state as before.
#[test]
fn a_checkpoint_of_the_64_bit_layout_still_recovers() {
    let built = build(1);
    // A state with counts in every field somewhere and a shut deal, to test every field.
    let (lsn, state) = built
        .states
        .iter()
        .rev()
        .find(|(_, s)| {
            let c = |f: fn(&livestock_core::counters::Counters) -> bool| {
                s.deals.iter().any(|d| f(&d.counters))
            };
            c(|c| c.held() > 0)
                && c(|c| c.sold() > 0)
                && c(|c| c.available() > 0)
                && c(|c| c.shut())
        })
        .expect("the workload reaches such a state");
    let body = CheckpointBody { snapshot: state.clone(), replies: vec![] };
    // The mirror is today's encoding exactly, so with the old word it is the old encoding.
    let today = body_with_words(&body, |c| c, true);
    assert_eq!(checkpoint_file(*lsn, 3, &today), checkpoint::encode(*lsn, &body));
    // Version 2 (no waitlists) reads as the same state with none.
    let v2 = checkpoint_file(*lsn, 2, &body_with_words(&body, |c| c, false));
    assert!(body.snapshot.waitlists.is_empty(), "the workload makes no waitlist");
    assert_eq!(checkpoint::decode(&v2).expect("decodes"), (*lsn, body.clone()));
    let old_word = |c: livestock_core::counters::Counters| {
        assert!(c.stock() < 1 << 21, "the old layout's limit");
        c.available() | c.held() << 21 | c.sold() << 42 | u64::from(c.shut()) << 63
    };
    let old = checkpoint_file(*lsn, 1, &body_with_words(&body, old_word, false));
    assert_eq!(checkpoint::decode(&old).expect("decodes"), (*lsn, body.clone()));

    let dir = TempDir::with("ckpt-v1", &built.files);
    let storage = dir.storage();
    checkpoint::write(&storage, *lsn, &body).expect("checkpoint");
    fs::write(dir.path().join(checkpoint_name(*lsn)), &old).expect("the old checkpoint");
    let r = recovered(&storage, "a version 1 checkpoint");
    assert_eq!(r.report.checkpoint_lsn, Some(*lsn));
    assert_eq!(r.report.replayed, built.last_lsn - lsn);
    assert_eq!(&r.allocator.snapshot(), built.state(built.last_lsn));

    // A version this build does not know is refused, not guessed at.
    let future = checkpoint_file(*lsn, 4, &today);
    assert!(checkpoint::decode(&future).is_err());
}

/// A deal with a waitlist (entries waiting, one offered, one cancelled) recovers exactly from
/// its log alone and from a checkpoint plus the log after it.
#[test]
fn waitlists_recover_from_the_log_and_from_a_checkpoint() {
    use livestock_core::waitlist::EntryState;
    let dir = TempDir::new("waitlist");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let open = || {
        let storage = Arc::new(dir.storage());
        Node::open(node_config(), clock.clone(), storage, wal_config(), KEY).expect("open").0
    };
    let node = open();
    let mut deal = match create("w", None, 2, Some(2)) {
        Command::CreateDeal(deal) => deal,
        other => panic!("{other:?}"),
    };
    deal.waitlist_max = Some(10);
    deal.offer_ttl_ms = Some(30_000);
    run(&node, &Command::CreateDeal(deal));
    let a = hold_seq(run(&node, &Command::Reserve(reserve("a", &[("w", 2)], None))));
    let join = |node: &Node, who: &str, qty: u32| {
        let mut request = reserve(who, &[("w", qty)], None);
        request.waitlist = true;
        match run(node, &Command::Reserve(request)) {
            Outcome::Entry(view) => view.entry.seq,
            other => panic!("not an entry: {other:?}"),
        }
    };
    let b = join(&node, "b", 1);
    let c = join(&node, "c", 2);
    let d = join(&node, "d", 1);
    run(&node, &Command::CancelEntry { entry: d });
    // 1 of 2 comes back: b (1) is first and fits.
    run(&node, &Command::Confirm { hold: a, qty: Some(1) });
    let entry = |node: &Node, seq| node.allocator().entry(seq).expect("entry").entry.state;
    assert_eq!(entry(&node, b), EntryState::Offered);
    assert_eq!(entry(&node, c), EntryState::Waiting);
    let live = node.allocator().snapshot();
    assert_eq!(live.waitlists.len(), 1);
    let files = dir.files();
    node.close().expect("close: writes the checkpoint");

    // From the log alone (the files as they were before the close's checkpoint).
    let copy = TempDir::with("waitlist-log", &files);
    let r = recovered(&copy.storage(), "the log alone");
    assert_eq!(r.allocator.snapshot(), live);
    // From the checkpoint, then more changes in the log after it.
    let node = open();
    assert_eq!(node.allocator().snapshot(), live, "from the checkpoint");
    let e = join(&node, "e", 1);
    run(&node, &Command::AdjustStock { deal_id: deal_id("w"), delta: 2 });
    assert_eq!(entry(&node, c), EntryState::Offered);
    assert_eq!(entry(&node, e), EntryState::Waiting, "c took both");
    let live = node.allocator().snapshot();
    let files = dir.files();
    drop(node);
    let copy = TempDir::with("waitlist-ckpt", &files);
    let r = recovered(&copy.storage(), "checkpoint plus log");
    assert!(r.report.checkpoint_lsn.is_some_and(|lsn| lsn > 0), "{:?}", r.report);
    assert_eq!(r.allocator.snapshot(), live);
}
