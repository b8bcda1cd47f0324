//! Writes the committed seed corpora, `fuzz/corpus/<target>/seed-*`, with the real encoders:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! (a plain build: no nightly flags, no sanitizer). Rerun it after a change to a format (the
//! log record, the checkpoint, the op byte format, the HTTP API) so the seeds stay valid
//! inputs that reach deep; the fuzzers' own corpora are scratch and not committed.
//!
//! - `wal_decode`: a whole segment of real records (every event kind, some with a kept reply),
//!   the same segment torn mid-record, single frames, and bare payloads.
//! - `checkpoint_decode`: the empty first checkpoint, a busy one (deals in every state, holds
//!   in every state, per-user counts, kept replies), and the busy payload alone.
//! - `commands_vs_model`: op sequences for the main stories (sell out, expiry and extension,
//!   carts and per-user limits, admin moves, sale windows, refused values), each encoded with
//!   `commands/ops.rs`, checked to decode back to itself and to pass the model comparison.
//! - `http_surface`: request scripts in the target's text format covering every route, the
//!   idempotency paths, and the error answers.

use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use livestock::alloc::{Allocator, AllocatorConfig};
use livestock::wal::checkpoint::{self, CheckpointBody};
use livestock::wal::record::{encode_frame, encode_payload, KeptReply, Record};
use livestock::wal::segment::segment_header;
use livestock_core::command::{Command, Line, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::event::EventLog;
use livestock_core::ids::{DealId, HoldIdKey, HoldSeq, StreamId, UserId};
use livestock_core::limits::{
    DEAL_STOCK_UNITS_MAX, HOLD_QTY_MAX, HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN,
};

#[path = "../../tests/reference/mod.rs"]
#[allow(dead_code)]
mod reference;

#[path = "../fuzz_targets/commands/ops.rs"]
mod ops;

use reference::{Op, T0_MS};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let path = corpus(target).join(format!("seed-{name}"));
    if let Err(e) = fs::write(&path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
    println!("{:>6} bytes  {}", bytes.len(), path.display());
}

// ------------------------------------------------------------------ a busy allocator's log

fn deal_id(s: &str) -> DealId {
    DealId::parse(s).expect("a valid deal id")
}

fn user_id(s: &str) -> UserId {
    UserId::parse(s).expect("a valid user id")
}

fn new_deal(id: &str, stock: u64, stream: Option<&str>, limit: Option<u32>) -> Command {
    Command::CreateDeal(NewDeal {
        id: deal_id(id),
        stream_id: stream.map(|s| StreamId::parse(s).expect("a valid stream id")),
        stock,
        starts_at_ms: None,
        ends_at_ms: Some(T0_MS + 3_600_000),
        per_user_limit: limit,
        hold_ttl_ms: Some(60_000),
        hold_ttl_ms_max: Some(600_000),
        waitlist_max: None,
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    })
}

fn reserve(user: &str, lines: &[(&str, u32)], ttl_ms: Option<u64>) -> Reserve {
    Reserve {
        user_id: user_id(user),
        lines: lines.iter().map(|(d, qty)| Line { deal_id: deal_id(d), qty: *qty }).collect(),
        ttl_ms,
        waitlist: false,
    }
}

/// Every kind of event, from a real allocator: deals created, paused, resumed, restocked and
/// ended (alone and by stream), holds reserved (one and a cart), confirmed (whole and in
/// part), released, extended and expired. Returns the allocator and its log, with the instant
/// of each event.
fn busy() -> (Allocator, Vec<(u64, livestock_core::event::Event)>) {
    let config =
        AllocatorConfig { hold_id_key: HoldIdKey(11), resolved_hold_retention_ms: 600_000 };
    let allocator = Allocator::new(config);
    let mut log = EventLog::default();
    let mut at = Vec::new();
    let steps: Vec<(u64, Command)> = vec![
        (0, new_deal("drop-1", 10, Some("live-7"), Some(3))),
        (0, new_deal("drop-2", 5, Some("live-7"), None)),
        (0, new_deal("solo", 100, None, None)),
        (1_000, Command::Reserve(reserve("u1", &[("drop-1", 2)], None))),
        (1_000, Command::Cart(reserve("u2", &[("drop-1", 1), ("drop-2", 2)], Some(30_000)))),
        (2_000, Command::Confirm { hold: HoldSeq(1), qty: None }),
        (2_000, Command::Confirm { hold: HoldSeq(3), qty: Some(1) }),
        (3_000, Command::Reserve(reserve("u3", &[("solo", 7)], Some(20_000)))),
        (4_000, Command::Extend { hold: HoldSeq(4), ttl_ms: 40_000 }),
        (5_000, Command::Reserve(reserve("u4", &[("solo", 1)], None))),
        (5_000, Command::Release { hold: HoldSeq(5) }),
        (6_000, Command::PauseDeal(deal_id("solo"))),
        (6_000, Command::ResumeDeal(deal_id("solo"))),
        (7_000, Command::AdjustStock { deal_id: deal_id("solo"), delta: 25 }),
        (7_000, Command::AdjustStock { deal_id: deal_id("solo"), delta: -5 }),
        (8_000, Command::Reserve(reserve("u5", &[("drop-2", 1)], None))),
        (9_000, Command::EndStream(StreamId::parse("live-7").expect("a valid stream id"))),
        (10_000, Command::Reserve(reserve("u6", &[("solo", 3)], Some(HOLD_TTL_MS_MIN)))),
    ];
    for (offset, command) in steps {
        let now = T0_MS + offset;
        let before = log.events.len();
        if let Err(e) = allocator.execute(&command, now, &mut log) {
            panic!("seed step {command:?} fails: {e}");
        }
        at.extend(std::iter::repeat_n(now, log.events.len() - before));
    }
    // The 20 s hold on `solo` (extended to 44 s) and the 1 s one expire.
    let now = T0_MS + 50_000;
    let before = log.events.len();
    assert_eq!(allocator.expire_due(now, &mut log), 2);
    at.extend(std::iter::repeat_n(now, log.events.len() - before));
    allocator.check_invariants();
    (allocator, at.into_iter().zip(log.events).collect())
}

fn kept(n: u64, at_ms: u64) -> KeptReply {
    KeptReply {
        scope: format!("user:u{n}"),
        key: format!("order-{n}"),
        fingerprint: 0x5EED_0000 + n,
        status: 201,
        body: format!(r#"{{"hold_id":"h{n:016x}","qty":2,"state":"held"}}"#).into_bytes(),
        seen_ms: at_ms,
    }
}

fn wal_seeds(log: &[(u64, livestock_core::event::Event)]) {
    let records: Vec<Record> = log
        .iter()
        .enumerate()
        .map(|(i, (at_ms, event))| Record {
            at_ms: *at_ms,
            event: event.clone(),
            reply: (i % 3 == 1).then(|| kept(i as u64, *at_ms)),
        })
        .collect();
    let mut segment = segment_header(1).to_vec();
    let mut starts = Vec::new();
    for (i, record) in records.iter().enumerate() {
        starts.push(segment.len());
        encode_frame(i as u64 + 1, &encode_payload(record), &mut segment);
    }
    write("wal_decode", "segment", &segment);
    let last = starts[starts.len() - 1];
    write("wal_decode", "segment-torn", &segment[..last + (segment.len() - last) / 2]);
    // One frame of each kind of event, at its own LSN, and two bare payloads (one with a kept
    // reply).
    let mut kinds_seen: Vec<String> = Vec::new();
    let mut payloads = 0;
    for (i, record) in records.iter().enumerate() {
        let kind = format!("{:?}", record.event);
        let kind = kind.split([' ', '{', '(']).next().unwrap_or("event").to_lowercase();
        let mut frame = Vec::new();
        encode_frame(i as u64 + 1, &encode_payload(record), &mut frame);
        let end = starts.get(i + 1).copied().unwrap_or(segment.len());
        assert_eq!(frame, segment[starts[i]..end]);
        if !kinds_seen.contains(&kind) {
            write("wal_decode", &format!("frame-{kind}"), &frame);
            kinds_seen.push(kind.clone());
        }
        if payloads < 2 && (i == 0 || record.reply.is_some()) {
            write("wal_decode", &format!("payload-{}-{kind}", i + 1), &encode_payload(record));
            payloads += 1;
        }
    }
    assert_eq!(kinds_seen.len(), 10, "every kind of event: {kinds_seen:?}");
}

fn checkpoint_seeds(allocator: &Allocator, lsn: u64) {
    let empty = Allocator::new(AllocatorConfig {
        hold_id_key: HoldIdKey(0x1234_5678_9ABC_DEF0),
        resolved_hold_retention_ms: 3_600_000,
    });
    let body = CheckpointBody { snapshot: empty.snapshot(), replies: vec![] };
    write("checkpoint_decode", "empty", &checkpoint::encode(0, &body));
    let body = CheckpointBody {
        snapshot: allocator.snapshot(),
        replies: vec![kept(1, T0_MS + 1_000), kept(2, T0_MS + 1_000)],
    };
    let file = checkpoint::encode(lsn, &body);
    assert_eq!(checkpoint::decode(&file), Ok((lsn, body.clone())));
    write("checkpoint_decode", "busy", &file);
    // The payload alone: the target also decodes its input as a bare body.
    const HEADER_BYTES: usize = 36;
    assert_eq!(checkpoint::decode_body(&file[HEADER_BYTES..]), Ok(body));
    write("checkpoint_decode", "busy-payload", &file[HEADER_BYTES..]);
}

// ------------------------------------------------------------------- op sequences

#[allow(clippy::too_many_arguments)]
fn create(
    deal: usize,
    stream: Option<usize>,
    stock: u64,
    starts_at_ms: Option<u64>,
    ends_at_ms: Option<u64>,
    per_user_limit: Option<u32>,
    hold_ttl_ms: Option<u64>,
    hold_ttl_ms_max: Option<u64>,
) -> Op {
    Op::CreateDeal {
        deal,
        stream,
        stock,
        starts_at_ms,
        ends_at_ms,
        per_user_limit,
        hold_ttl_ms,
        hold_ttl_ms_max,
        waitlist_max: None,
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    }
}

/// d0: 5 units, no stream; d1: 3 units, limit 2, stream s0; d2: 10 units, stream s0.
fn plain_deals() -> Vec<Op> {
    vec![
        create(0, None, 5, None, None, None, None, None),
        create(1, Some(0), 3, None, None, Some(2), Some(20_000), Some(60_000)),
        create(2, Some(0), 10, None, None, None, None, None),
    ]
}

fn reserve_op(user: usize, deal: usize, qty: u32, ttl_ms: Option<u64>) -> Op {
    Op::Reserve { user, deal, qty, ttl_ms, waitlist: false }
}

fn join_op(user: usize, deal: usize, qty: u32) -> Op {
    Op::Reserve { user, deal, qty, ttl_ms: None, waitlist: true }
}

/// d0: 2 units, a waitlist of 3 with 20-second offers, limit 3; d1: no waitlist; d2: a
/// waitlist of 1 whose offers last the deal's hold TTL, in stream s0 with a window.
fn waitlist_deals() -> Vec<Op> {
    let with = |mut op: Op, max: Option<u32>, offer: Option<u64>| {
        if let Op::CreateDeal { waitlist_max, offer_ttl_ms, .. } = &mut op {
            *waitlist_max = max;
            *offer_ttl_ms = offer;
        }
        op
    };
    let ends = reference::T0_MS + 300_000;
    vec![
        with(create(0, None, 2, None, None, Some(3), Some(60_000), None), Some(3), Some(20_000)),
        create(1, None, 1, None, None, None, None, None),
        with(create(2, Some(0), 1, None, Some(ends), None, None, None), Some(1), None),
    ]
}

/// d0: a draw from T0 + 5 s for 10 s, 2 units, no waitlist; d1: a draw from T0 for 10 s, 1
/// unit, a waitlist of 2 after it; d2: a draw from T0 + 5 s for 10 s, 1 unit, in stream s0,
/// ending at T0 + 300 s.
fn draw_deals() -> Vec<Op> {
    let with = |mut op: Op, max: Option<u32>, seed: u8| {
        if let Op::CreateDeal { waitlist_max, draw_window_ms, draw_seed, .. } = &mut op {
            *waitlist_max = max;
            *draw_window_ms = Some(10_000);
            *draw_seed = Some([seed; 32]);
        }
        op
    };
    let (t0, ends) = (reference::T0_MS, reference::T0_MS + 300_000);
    vec![
        with(create(0, None, 2, Some(t0 + 5_000), None, None, None, None), None, 7),
        with(create(1, None, 1, Some(t0), None, Some(2), None, None), Some(2), 13),
        with(create(2, Some(0), 1, Some(t0 + 5_000), Some(ends), None, None, None), None, 21),
    ]
}

fn sequences() -> Vec<(&'static str, Vec<Op>)> {
    let ghost = reference::DEALS_CREATABLE;
    vec![
        // Draws: entries (a second one answered, an invalid TTL, a limit), a cart refused in
        // the window, a cancelled entry, a draw by the reaper (winners offered, a loser
        // waiting), one by a late reserve (lost entries), a paused deal drawn at its resume,
        // offers confirmed and released (the waiting loser served).
        (
            "draw",
            [
                draw_deals(),
                vec![
                    reserve_op(0, 0, 1, None),
                    Op::Advance { ms: 5_000, reap: true },
                    reserve_op(0, 0, 1, None),
                    join_op(1, 0, 1),
                    reserve_op(2, 0, 2, None),
                    reserve_op(0, 0, 1, None),
                    reserve_op(3, 0, 1, Some(999)),
                    Op::Cart { user: 1, lines: vec![(0, 1), (2, 1)], ttl_ms: None, waitlist: false },
                    reserve_op(1, 1, 1, None),
                    reserve_op(2, 1, 1, None),
                    reserve_op(0, 1, 3, None),
                    reserve_op(3, 1, 1, None),
                    Op::CancelEntry { entry: 0 },
                    reserve_op(0, 2, 1, None),
                    reserve_op(1, 2, 1, None),
                    Op::Pause(2),
                    Op::Advance { ms: 5_000, reap: true },
                    Op::Advance { ms: 5_000, reap: false },
                    reserve_op(3, 0, 1, None),
                    Op::Advance { ms: 5_000, reap: true },
                    Op::Resume(2),
                    Op::Confirm { hold: 0, qty: None },
                    Op::Release { hold: 1 },
                    Op::Release { hold: 2 },
                    Op::Advance { ms: 5_000, reap: true },
                    Op::EndStream(0),
                ],
            ]
            .concat(),
        ),
        // Waitlists: joins past the stock, a second join answered with the entry, a full
        // list, offers first fit (a 2-unit entry keeps its place while a 1-unit one is
        // served), an offer confirmed, one expired, cancels of every kind, a lapse by the
        // user's limit at offer time, the window's end lapsing the rest.
        (
            "waitlist",
            [
                waitlist_deals(),
                vec![
                    reserve_op(0, 0, 2, None),
                    join_op(1, 0, 2),
                    join_op(2, 0, 1),
                    join_op(1, 0, 1),
                    join_op(3, 0, 1),
                    join_op(0, 0, 1),
                    join_op(0, 1, 1),
                    Op::Cart { user: 2, lines: vec![(0, 1)], ttl_ms: None, waitlist: true },
                    Op::Confirm { hold: 0, qty: Some(1) },
                    Op::Confirm { hold: 0, qty: None },
                    Op::CancelEntry { entry: 0 },
                    Op::CancelEntry { entry: 1 },
                    Op::CancelEntry { entry: 1 },
                    Op::AdjustStock { deal: 0, delta: 2 },
                    Op::Advance { ms: 25_000, reap: true },
                    Op::CancelEntry { entry: 0 },
                    Op::Pause(0),
                    Op::Release { hold: 0 },
                    Op::Resume(0),
                    Op::CancelEntry { entry: 0 },
                    Op::CancelEntry { entry: reference::HOLD_BACK_GHOST },
                    Op::CancelEntry { entry: reference::HOLD_BACK_GHOST + 1 },
                    Op::Confirm { hold: reference::HOLD_BACK_GHOST, qty: None },
                    reserve_op(1, 2, 1, None),
                    join_op(0, 2, 1),
                    join_op(3, 2, 1),
                    Op::Advance { ms: 300_000, reap: true },
                    Op::CancelEntry { entry: 0 },
                    Op::EndDeal(0),
                ],
            ]
            .concat(),
        ),
        // The last units: one winner, sold out, a release makes room again.
        (
            "sell-out",
            [
                plain_deals(),
                vec![
                    reserve_op(0, 0, 2, None),
                    Op::Confirm { hold: 0, qty: None },
                    reserve_op(1, 0, 3, None),
                    reserve_op(2, 0, 1, None),
                    Op::Release { hold: 0 },
                    reserve_op(2, 0, 1, None),
                    Op::Confirm { hold: 0, qty: Some(1) },
                    Op::Confirm { hold: 0, qty: Some(1) },
                    Op::Release { hold: 1 },
                ],
            ]
            .concat(),
        ),
        // Expiry: extend, pass the expiry without reaping (callers see it expired), reap, forget.
        (
            "expiry",
            [
                plain_deals(),
                vec![
                    reserve_op(0, 1, 1, Some(20_000)),
                    Op::Advance { ms: 10_000, reap: true },
                    Op::Extend { hold: 0, ttl_ms: 30_000 },
                    Op::Extend { hold: 0, ttl_ms: 5_000 },
                    Op::Extend { hold: 0, ttl_ms: 3_600_000 },
                    Op::Advance { ms: 35_000, reap: false },
                    Op::Confirm { hold: 0, qty: None },
                    Op::Advance { ms: 0, reap: true },
                    Op::Release { hold: 0 },
                    Op::Advance { ms: 90_000, reap: true },
                    Op::Confirm { hold: 0, qty: None },
                    Op::Confirm { hold: 60, qty: None },
                ],
            ]
            .concat(),
        ),
        // Carts: lines summed per deal, all or nothing, per-user limits across holds.
        (
            "cart-limits",
            [
                plain_deals(),
                vec![
                    Op::Cart {
                        user: 0,
                        lines: vec![(1, 1), (2, 3), (1, 1)],
                        ttl_ms: None,
                        waitlist: false,
                    },
                    Op::Cart { user: 0, lines: vec![(1, 1)], ttl_ms: None, waitlist: false },
                    Op::Cart {
                        user: 1,
                        lines: vec![(1, 2), (0, 6)],
                        ttl_ms: None,
                        waitlist: false,
                    },
                    Op::Cart {
                        user: 1,
                        lines: vec![(2, 600), (2, 600)],
                        ttl_ms: None,
                        waitlist: false,
                    },
                    Op::Cart {
                        user: 1,
                        lines: vec![(2, 1), (ghost, 1)],
                        ttl_ms: None,
                        waitlist: false,
                    },
                    Op::Confirm { hold: 1, qty: Some(1) },
                    Op::Release { hold: 0 },
                    Op::Cart {
                        user: 0,
                        lines: vec![(1, 1), (0, 5)],
                        ttl_ms: Some(60_000),
                        waitlist: false,
                    },
                    Op::Cart { user: 2, lines: vec![], ttl_ms: None, waitlist: false },
                ],
            ]
            .concat(),
        ),
        // Admin: pause, resume, restock, end a stream with live holds, end a deal.
        (
            "admin",
            [
                plain_deals(),
                vec![
                    reserve_op(3, 2, 4, None),
                    reserve_op(3, 1, 1, None),
                    Op::Pause(2),
                    reserve_op(0, 2, 1, None),
                    Op::Pause(2),
                    Op::Resume(2),
                    Op::AdjustStock { deal: 2, delta: -6 },
                    Op::AdjustStock { deal: 2, delta: -1 },
                    Op::AdjustStock { deal: 2, delta: 8 },
                    Op::AdjustStock { deal: 2, delta: DEAL_STOCK_UNITS_MAX as i64 },
                    Op::AdjustStock { deal: 0, delta: 0 },
                    Op::EndStream(0),
                    Op::EndStream(0),
                    Op::Confirm { hold: 0, qty: None },
                    reserve_op(0, 2, 1, None),
                    Op::Resume(1),
                    Op::EndDeal(0),
                    Op::AdjustStock { deal: 0, delta: 1 },
                    Op::EndStream(2),
                    Op::EndDeal(ghost),
                ],
            ]
            .concat(),
        ),
        // Sale windows: not started, live, ended by the clock.
        (
            "windows",
            vec![
                create(0, None, 5, Some(T0_MS + 30_000), Some(T0_MS + 100_000), None, None, None),
                create(1, Some(1), 3, None, Some(T0_MS + 50_000), Some(1), None, Some(120_000)),
                create(2, None, 10, Some(T0_MS + 295_000), None, None, Some(60_000), None),
                reserve_op(0, 0, 1, None),
                reserve_op(0, 1, 1, Some(45_000)),
                Op::Advance { ms: 30_000, reap: true },
                reserve_op(0, 0, 1, None),
                Op::Extend { hold: 0, ttl_ms: 100_000 },
                Op::Advance { ms: 20_000, reap: true },
                reserve_op(1, 1, 1, None),
                Op::Advance { ms: 55_000, reap: true },
                reserve_op(1, 0, 1, None),
                Op::Confirm { hold: 0, qty: None },
                Op::Advance { ms: 87_654, reap: true },
                Op::Advance { ms: HOLD_TTL_MS_MAX, reap: true },
                reserve_op(1, 2, 2, None),
            ],
        ),
        // Refused values: every validation edge the decoder has a bucket for.
        (
            "refusals",
            vec![
                create(0, None, DEAL_STOCK_UNITS_MAX + 1, None, None, None, None, None),
                create(1, None, 3, Some(5), None, None, None, None),
                create(2, None, 3, None, None, Some(0), Some(500), Some(999)),
                create(0, None, DEAL_STOCK_UNITS_MAX, None, None, None, Some(700_000), None),
                create(1, None, 3, None, None, None, None, Some(HOLD_TTL_MS_MAX + 1)),
                create(2, None, 3, Some(T0_MS + 50_000), Some(T0_MS + 50_000), None, None, None),
                create(2, Some(1), 3, None, None, None, Some(60_000), Some(60_000)),
                reserve_op(0, 0, 0, None),
                reserve_op(0, 0, HOLD_QTY_MAX + 1, None),
                reserve_op(0, 0, HOLD_QTY_MAX, Some(HOLD_TTL_MS_MIN - 1)),
                reserve_op(0, 0, HOLD_QTY_MAX, Some(HOLD_TTL_MS_MAX + 1)),
                reserve_op(0, 2, 1, Some(u64::MAX)),
                reserve_op(0, 0, u32::MAX, None),
                Op::Extend { hold: 0, ttl_ms: u64::MAX },
                Op::Extend { hold: 0, ttl_ms: 0 },
                Op::Confirm { hold: 0, qty: Some(0) },
                Op::Confirm { hold: 0, qty: Some(u32::MAX) },
                Op::Cart { user: 0, lines: vec![(0, 1); 33], ttl_ms: None, waitlist: false },
                Op::AdjustStock { deal: 0, delta: i64::MIN },
                Op::AdjustStock { deal: 0, delta: i64::MAX },
                Op::Advance { ms: 2 * HOLD_TTL_MS_MAX, reap: true },
                Op::Release { hold: 63 },
            ],
        ),
    ]
}

fn command_seeds() {
    for (name, ops) in sequences() {
        let bytes = match ops::encode(&ops) {
            Ok(bytes) => bytes,
            Err(e) => panic!("seed {name} does not encode: {e}"),
        };
        let decoded = match ops::Sequence::arbitrary_take_rest(Unstructured::new(&bytes)) {
            Ok(sequence) => sequence.0,
            Err(e) => panic!("seed {name} does not decode: {e}"),
        };
        assert_eq!(format!("{decoded:?}"), format!("{ops:?}"), "seed {name} round trip");
        if let Err(mismatch) = reference::run(&ops) {
            panic!("seed {name}: the allocator and the model disagree: {mismatch}");
        }
        write("commands_vs_model", name, &bytes);
    }
}

// ---------------------------------------------------------------------- HTTP scripts

const HTTP_SCRIPTS: &[(&str, &str)] = &[
    (
        "reserve-confirm",
        r#"POST /v1/deals
content-type: application/json

{"id":"drop-1","stock":5,"stream_id":"live-7","per_user_limit":2,"hold_ttl_ms":60000}
---
POST /v1/deals/drop-1/reserve
idempotency-key: order-1

{"user_id":"u1","qty":2}
---
GET /v1/holds/{hold}
---
POST /v1/holds/{hold}/confirm
idempotency-key: confirm-1

{"qty":1}
---
POST /v1/holds/{hold}/confirm

{"qty":1}
---
GET /v1/deals/drop-1
---
GET /v1/deals
---
GET /healthz"#,
    ),
    (
        "cart-release-extend",
        r#"POST /v1/deals

{"id":"a","stock":3,"hold_ttl_ms_max":120000}
---
POST /v1/deals

{"id":"b","stock":10,"starts_at":"2027-01-15T08:00:00Z","ends_at":"2027-01-15T09:00:00.000Z"}
---
POST /v1/cart/reserve

{"user_id":"u1","lines":[{"deal_id":"a","qty":1},{"deal_id":"b","qty":4},{"deal_id":"a","qty":2}],"ttl_ms":30000}
---
POST /v1/holds/{hold:1}/extend +10000

{"ttl_ms":60000}
---
POST /v1/holds/{hold:1}/release
---
POST /v1/holds/{hold:0}/extend

{"ttl_ms":600000}
---
POST /v1/cart/reserve

{"user_id":"u2","lines":[{"deal_id":"a","qty":3},{"deal_id":"nope","qty":1}]}
---
POST /v1/holds/{hold:0}/confirm +61000
---
GET /v1/holds/{hold:0}"#,
    ),
    (
        "admin",
        r#"POST /v1/deals

{"id":"d1","stock":4,"stream_id":"s1"}
---
POST /v1/deals

{"id":"d2","stock":2,"stream_id":"s1","per_user_limit":1}
---
POST /v1/deals/d1/reserve

{"user_id":"u1","qty":3,"ttl_ms":20000}
---
POST /v1/deals/d1/pause
---
POST /v1/deals/d1/reserve

{"user_id":"u2","qty":1}
---
POST /v1/deals/d1/resume

{}
---
POST /v1/deals/d1/stock

{"delta":-1}
---
POST /v1/deals/d1/stock

{"delta":-5}
---
POST /v1/deals/d1/stock

{"delta":10}
---
POST /v1/streams/s1/end
---
POST /v1/holds/{hold}/confirm
---
POST /v1/deals/d2/end
---
POST /v1/streams/s9/end"#,
    ),
    (
        "idempotency",
        r#"POST /v1/deals
idempotency-key: create-1

{"id":"d1","stock":1}
---
POST /v1/deals
idempotency-key: create-1

{ "stock": 1, "id": "d1" }
---
POST /v1/deals
idempotency-key: create-1

{"id":"d1","stock":2}
---
POST /v1/deals/d1/reserve
idempotency-key: k

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k

{"user_id":"u2","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k

{"user_id":"u2","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k

{"user_id":"u1","qty":1}
---
POST /v1/holds/{hold}/release
idempotency-key: bad key é"#,
    ),
    (
        "capacity",
        r#"POST /v1/deals
idempotency-key: k1

{"id":"d1","stock":100}
---
POST /v1/deals/d1/reserve
idempotency-key: k2

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k3

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k4

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k5

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k6

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k7

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k8

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve
idempotency-key: k9

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve +3600000
idempotency-key: k10

{"user_id":"u1","qty":1}"#,
    ),
    (
        "errors",
        r#"GET /v1/nope
---
DELETE /v1/deals
---
GET /v1/deals/d1/reserve
---
PATCH /v1/holds/{hold}
---
POST /v1/deals

{"id":"d1","stock":1,"quantity":1}
---
POST /v1/deals

{"id":"bad id","stock":1}
---
POST /v1/deals

{"id":"d1","stock":-1}
---
POST /v1/deals

{"id":"d1","stock":1099511627776}
---
POST /v1/deals

{"id":"d1","stock":1,"starts_at":"yesterday"}
---
POST /v1/deals

{"id":"d1","stock":1,"starts_at":"2027-01-15T09:00:00Z","ends_at":"2027-01-15T08:00:00Z"}
---
POST /v1/deals

{"id":"d1","stock":1
---
POST /v1/deals
content-length: 999999

{"id":"d1","stock":1}
---
POST /v1/deals/ghost/reserve

{"user_id":"u1","qty":1}
---
POST /v1/deals/d1/reserve

{"user_id":"u1","qty":0}
---
GET /v1/holds/h123
---
GET /v1/holds/h0000000000000001
---
POST /v1/holds/h0000000000000001/extend

{"ttl_ms":"soon"}
---
POST /v1/deals/d1/stock

{"delta":0}
---
POST /v1/deals/d1/end

{"now":true}"#,
    ),
];

fn http_seeds() {
    for (name, script) in HTTP_SCRIPTS {
        write("http_surface", name, script.as_bytes());
    }
}

fn main() {
    let (allocator, log) = busy();
    wal_seeds(&log);
    checkpoint_seeds(&allocator, log.len() as u64);
    command_seeds();
    http_seeds();
}
