//! The byte format of an op sequence, both ways: [`Sequence`] decodes the fuzzer's bytes into
//! [`Op`]s for `commands_vs_model`, and [`encode`] writes a chosen sequence as the bytes that
//! decode to it (`fuzz/examples/seeds.rs` writes the seed corpus with it and checks the round
//! trip).
//!
//! Every choice is one `Unstructured::int_in_range`: a weighted pick among a few buckets (one
//! byte, modulo the total weight) or a number (as many big-endian bytes as its range needs).
//! The weights follow the property test's strategies, but numbers reach further: any `u32`
//! quantity, any `u64` TTL or timestamp, any `i64` stock delta. A sequence is the three deal
//! creations first (like the property test, so that most sequences have deals to work on),
//! then ops until the bytes run out, at most `OPS_MAX`. Deals carry waitlist options (mostly a
//! short waitlist) and draw options (a window on 5-second steps and a seed, sometimes; with a
//! `starts_at` on the same steps the window opens and closes within a sequence), reserves and carts say whether they would wait (half do), and
//! `CancelEntry` refers to entries as holds are referred to.

use arbitrary::{Arbitrary, Unstructured};
use livestock_core::limits::{
    CART_LINES_MAX, DEAL_STOCK_UNITS_MAX, DRAW_WINDOW_MS_MAX, DRAW_WINDOW_MS_MIN, HOLD_QTY_MAX, HOLD_TTL_MS_DEFAULT, HOLD_TTL_MS_MAX,
    HOLD_TTL_MS_MIN, TIMESTAMP_MS_MAX, WAITLIST_MAX,
};

use crate::reference::{
    Op, DEALS_CREATABLE, HOLD_BACK_GHOST, STREAMS_USED, STREAM_IDS, T0_MS, USER_IDS,
};

pub const OPS_MAX: usize = 100;
/// `Advance` moves the clock by at most this much (the model's clock must not overflow).
pub const ADVANCE_MS_MAX: u64 = 2 * HOLD_TTL_MS_MAX;
/// Holds the "latest few" bucket reaches.
const RECENT_HOLDS: usize = 3;
const STOCK_SMALL: usize = 20;

// The weights of each choice's buckets, in bucket order (see the decoder for what each is).
const OP: [u32; 13] = [2, 12, 4, 5, 3, 3, 6, 2, 1, 1, 1, 1, 3];
const DEAL: [u32; 2] = [12, 1];
const HOLD: [u32; 2] = [6, 2];
const RESERVE_TTL: [u32; 6] = [8, 12, 1, 1, 1, 1];
const QTY: [u32; 5] = [3, 30, 1, 1, 1];
const STREAM: [u32; 2] = [1, 2];
const STOCK: [u32; 4] = [50, 2, 1, 1];
const STARTS: [u32; 4] = [30, 20, 1, 1];
const ENDS: [u32; 5] = [30, 20, 1, 1, 1];
const LIMIT: [u32; 4] = [25, 25, 1, 1];
const TTL: [u32; 6] = [40, 5, 5, 1, 1, 1];
const TTL_MAX: [u32; 7] = [40, 5, 5, 1, 1, 1, 1];
const CART_LEN: [u32; 3] = [20, 1, 1];
const LINE_QTY: [u32; 4] = [20, 1, 1, 1];
const CONFIRM_QTY: [u32; 3] = [3, 4, 1];
const EXTEND_TTL: [u32; 7] = [1, 1, 1, 8, 1, 1, 1];
const ADVANCE: [u32; 3] = [6, 1, 1];
const REAP: [u32; 2] = [3, 1];
const DELTA: [u32; 3] = [10, 1, 1];
/// waitlist_max: none, 1..=3, 0, WAITLIST_MAX, WAITLIST_MAX + 1, any.
const WAITLIST: [u32; 6] = [12, 24, 1, 1, 1, 1];
/// offer_ttl_ms: none, 5 s steps up to a minute, HOLD_TTL_MS_MIN - 1, HOLD_TTL_MS_MAX, any.
const OFFER_TTL: [u32; 5] = [6, 6, 1, 1, 1];
/// Whether a reserve (or a cart) asks to wait: no, yes.
const JOIN: [u32; 2] = [1, 1];
/// draw_window_ms: none, 5 s steps up to a minute, DRAW_WINDOW_MS_MIN, DRAW_WINDOW_MS_MAX,
/// DRAW_WINDOW_MS_MAX + 1, any; then a seed (below). The first bucket has no seed.
const DRAW: [u32; 6] = [24, 6, 1, 1, 1, 1];
/// draw_seed (with a window, or without one to be refused): one byte repeated, any 32 bytes,
/// none.
const SEED: [u32; 3] = [4, 1, 1];

// ------------------------------------------------------------------------------- decoding

type Result<T> = arbitrary::Result<T>;

/// One of `n` choices (`n` <= 256: one byte, modulo `n`).
fn pick(u: &mut Unstructured, n: usize) -> Result<usize> {
    let last = u32::try_from(n - 1).unwrap_or(u32::MAX);
    Ok(u.int_in_range(0..=last)? as usize)
}

/// The index of a bucket, with probability proportional to its weight.
fn weighted(u: &mut Unstructured, weights: &[u32]) -> Result<usize> {
    let total: u32 = weights.iter().sum();
    let mut x = u.int_in_range(0..=total - 1)?;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return Ok(i);
        }
        x -= w;
    }
    Ok(weights.len() - 1)
}

fn any_u64(u: &mut Unstructured) -> Result<u64> {
    u.int_in_range(0..=u64::MAX)
}

fn any_u32(u: &mut Unstructured) -> Result<u32> {
    u.int_in_range(0..=u32::MAX)
}

fn any_deal(u: &mut Unstructured) -> Result<usize> {
    Ok(match weighted(u, &DEAL)? {
        0 => pick(u, DEALS_CREATABLE)?,
        _ => DEALS_CREATABLE,
    })
}

/// Mostly the latest few holds (live ones, where the rules are interesting), sometimes any.
fn any_hold(u: &mut Unstructured) -> Result<usize> {
    Ok(match weighted(u, &HOLD)? {
        0 => pick(u, RECENT_HOLDS)?,
        _ => pick(u, HOLD_BACK_GHOST + 4)?,
    })
}

/// TTLs on 5-second steps, like the clock's moves, so that instants coincide exactly.
fn reserve_ttl(u: &mut Unstructured) -> Result<Option<u64>> {
    Ok(match weighted(u, &RESERVE_TTL)? {
        0 => None,
        1 => Some((1 + pick(u, 24)? as u64) * 5_000),
        2 => Some(HOLD_TTL_MS_MIN - 1),
        3 => Some(HOLD_TTL_MS_MIN),
        4 => Some(HOLD_TTL_MS_MAX + 1),
        _ => Some(any_u64(u)?),
    })
}

fn qty(u: &mut Unstructured) -> Result<u32> {
    Ok(match weighted(u, &QTY)? {
        0 => 0,
        1 => 1 + pick(u, 5)? as u32,
        2 => HOLD_QTY_MAX,
        3 => HOLD_QTY_MAX + 1,
        _ => any_u32(u)?,
    })
}

fn seed(u: &mut Unstructured) -> Result<Option<[u8; 32]>> {
    Ok(match weighted(u, &SEED)? {
        0 => Some([pick(u, 256)? as u8; 32]),
        1 => {
            let mut seed = [0u8; 32];
            for byte in &mut seed {
                *byte = pick(u, 256)? as u8;
            }
            Some(seed)
        }
        _ => None,
    })
}

/// (draw_window_ms, draw_seed).
fn draw(u: &mut Unstructured) -> Result<(Option<u64>, Option<[u8; 32]>)> {
    let window = match weighted(u, &DRAW)? {
        0 => return Ok((None, None)),
        1 => Some((1 + pick(u, 12)? as u64) * 5_000),
        2 => Some(DRAW_WINDOW_MS_MIN),
        3 => Some(DRAW_WINDOW_MS_MAX),
        4 => Some(DRAW_WINDOW_MS_MAX + 1),
        _ => match any_u64(u)? {
            // 0 stands for no window with a seed (refused).
            0 => None,
            w => Some(w),
        },
    };
    Ok((window, seed(u)?))
}

fn create_deal(u: &mut Unstructured, deal: usize) -> Result<Op> {
    // Invalid values are rare, so that most sequences get deals to work on.
    let stream = match weighted(u, &STREAM)? {
        0 => None,
        _ => Some(pick(u, STREAMS_USED)?),
    };
    let stock = match weighted(u, &STOCK)? {
        0 => pick(u, STOCK_SMALL)? as u64,
        1 => DEAL_STOCK_UNITS_MAX - pick(u, 4)? as u64,
        2 => DEAL_STOCK_UNITS_MAX + 1,
        _ => any_u64(u)?,
    };
    let starts_at_ms = match weighted(u, &STARTS)? {
        0 => None,
        1 => Some(T0_MS + pick(u, 60)? as u64 * 5_000),
        2 => Some(5),
        _ => Some(any_u64(u)?),
    };
    let ends_at_ms = match weighted(u, &ENDS)? {
        0 => None,
        1 => Some(T0_MS + (1 + pick(u, 59)? as u64) * 50_000),
        2 => Some(TIMESTAMP_MS_MAX),
        3 => Some(TIMESTAMP_MS_MAX + 1),
        _ => Some(any_u64(u)?),
    };
    let per_user_limit = match weighted(u, &LIMIT)? {
        0 => None,
        1 => Some(1 + pick(u, 4)? as u32),
        2 => Some(0),
        _ => Some(any_u32(u)?),
    };
    let hold_ttl_ms = match weighted(u, &TTL)? {
        0 => None,
        1 => Some(20_000),
        2 => Some(60_000),
        3 => Some(500),
        4 => Some(700_000),
        _ => Some(any_u64(u)?),
    };
    let hold_ttl_ms_max = match weighted(u, &TTL_MAX)? {
        0 => None,
        1 => Some(60_000),
        2 => Some(120_000),
        3 => Some(999),
        4 => Some(HOLD_TTL_MS_MAX),
        5 => Some(HOLD_TTL_MS_MAX + 1),
        _ => Some(any_u64(u)?),
    };
    let waitlist_max = match weighted(u, &WAITLIST)? {
        0 => None,
        1 => Some(1 + pick(u, 3)? as u32),
        2 => Some(0),
        3 => Some(WAITLIST_MAX),
        4 => Some(WAITLIST_MAX + 1),
        _ => Some(any_u32(u)?),
    };
    let offer_ttl_ms = match weighted(u, &OFFER_TTL)? {
        0 => None,
        1 => Some((1 + pick(u, 12)? as u64) * 5_000),
        2 => Some(HOLD_TTL_MS_MIN - 1),
        3 => Some(HOLD_TTL_MS_MAX),
        _ => Some(any_u64(u)?),
    };
    let (draw_window_ms, draw_seed) = draw(u)?;
    Ok(Op::CreateDeal {
        deal,
        stream,
        stock,
        starts_at_ms,
        ends_at_ms,
        per_user_limit,
        hold_ttl_ms,
        hold_ttl_ms_max,
        waitlist_max,
        offer_ttl_ms,
        draw_window_ms,
        draw_seed,
    })
}

fn op(u: &mut Unstructured) -> Result<Op> {
    Ok(match weighted(u, &OP)? {
        0 => {
            let deal = pick(u, DEALS_CREATABLE)?;
            create_deal(u, deal)?
        }
        1 => Op::Reserve {
            user: pick(u, USER_IDS.len())?,
            deal: any_deal(u)?,
            qty: qty(u)?,
            ttl_ms: reserve_ttl(u)?,
            waitlist: weighted(u, &JOIN)? == 1,
        },
        2 => {
            let user = pick(u, USER_IDS.len())?;
            // Mostly a few lines; sometimes none, or one more than a cart may have.
            let len = match weighted(u, &CART_LEN)? {
                0 => 1 + pick(u, 4)?,
                1 => 0,
                _ => CART_LINES_MAX + 1,
            };
            let mut lines = Vec::with_capacity(len);
            for _ in 0..len {
                // Two 600-unit lines of one deal add up to more than one hold may take.
                let qty = match weighted(u, &LINE_QTY)? {
                    0 => 1 + pick(u, 5)? as u32,
                    1 => 0,
                    2 => 600,
                    _ => any_u32(u)?,
                };
                lines.push((any_deal(u)?, qty));
            }
            Op::Cart { user, lines, ttl_ms: reserve_ttl(u)?, waitlist: weighted(u, &JOIN)? == 1 }
        }
        3 => {
            let hold = any_hold(u)?;
            let qty = match weighted(u, &CONFIRM_QTY)? {
                0 => None,
                1 => Some(pick(u, 6)? as u32),
                _ => Some(any_u32(u)?),
            };
            Op::Confirm { hold, qty }
        }
        4 => Op::Release { hold: any_hold(u)? },
        5 => {
            let hold = any_hold(u)?;
            let ttl_ms = match weighted(u, &EXTEND_TTL)? {
                0 => 0,
                1 => HOLD_TTL_MS_MIN - 1,
                2 => HOLD_TTL_MS_MIN,
                3 => (1 + pick(u, 24)? as u64) * 5_000,
                4 => HOLD_TTL_MS_DEFAULT,
                5 => 3_600_000,
                _ => any_u64(u)?,
            };
            Op::Extend { hold, ttl_ms }
        }
        6 => {
            let ms = match weighted(u, &ADVANCE)? {
                0 => pick(u, 19)? as u64 * 5_000,
                1 => u.int_in_range(0..=89_999)?,
                _ => u.int_in_range(0..=ADVANCE_MS_MAX)?,
            };
            Op::Advance { ms, reap: weighted(u, &REAP)? == 0 }
        }
        7 => {
            let deal = any_deal(u)?;
            let delta = match weighted(u, &DELTA)? {
                0 => pick(u, 17)? as i64 - 8,
                1 => DEAL_STOCK_UNITS_MAX as i64,
                _ => u.int_in_range(i64::MIN..=i64::MAX)?,
            };
            Op::AdjustStock { deal, delta }
        }
        8 => Op::Pause(any_deal(u)?),
        9 => Op::Resume(any_deal(u)?),
        10 => Op::EndDeal(any_deal(u)?),
        11 => Op::EndStream(pick(u, STREAM_IDS.len())?),
        _ => Op::CancelEntry { entry: any_hold(u)? },
    })
}

/// The op sequence a fuzz input stands for.
#[derive(Debug)]
pub struct Sequence(pub Vec<Op>);

impl<'a> Arbitrary<'a> for Sequence {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut ops = Vec::new();
        for deal in 0..DEALS_CREATABLE {
            ops.push(create_deal(u, deal)?);
        }
        while !u.is_empty() && ops.len() < OPS_MAX {
            ops.push(op(u)?);
        }
        Ok(Sequence(ops))
    }
}

// ------------------------------------------------------------------------------- encoding

/// The bytes of a sequence of choices: each the inverse of one decoding call above.
#[derive(Default)]
struct Tape(Vec<u8>);

impl Tape {
    /// `int_in_range` over a range of width `delta + 1` taking `offset` from its start: the
    /// offset's low bytes, big-endian, as many as `delta` needs.
    fn int(&mut self, delta: u64, offset: u64) {
        let bytes = (64 - delta.leading_zeros() as usize).div_ceil(8);
        self.0.extend_from_slice(&offset.to_be_bytes()[8 - bytes..]);
    }

    fn pick(&mut self, n: usize, choice: usize) -> std::result::Result<(), String> {
        if choice >= n {
            return Err(format!("choice {choice} of {n}"));
        }
        self.int(n as u64 - 1, choice as u64);
        Ok(())
    }

    fn weighted(&mut self, weights: &[u32], bucket: usize) {
        let total: u32 = weights.iter().sum();
        let before: u32 = weights[..bucket].iter().sum();
        self.int(u64::from(total - 1), u64::from(before));
    }

    fn any_u64(&mut self, value: u64) {
        self.int(u64::MAX, value);
    }

    fn any_u32(&mut self, value: u32) {
        self.int(u64::from(u32::MAX), u64::from(value));
    }
}

type Encoded = std::result::Result<(), String>;

fn put_deal(t: &mut Tape, deal: usize) -> Encoded {
    if deal == DEALS_CREATABLE {
        t.weighted(&DEAL, 1);
        return Ok(());
    }
    t.weighted(&DEAL, 0);
    t.pick(DEALS_CREATABLE, deal)
}

fn put_hold(t: &mut Tape, hold: usize) -> Encoded {
    if hold < RECENT_HOLDS {
        t.weighted(&HOLD, 0);
        return t.pick(RECENT_HOLDS, hold);
    }
    t.weighted(&HOLD, 1);
    t.pick(HOLD_BACK_GHOST + 4, hold)
}

/// `Some(k)` if `ms` is `k * step` with `k` in `1..=k_max`.
fn steps_of(ms: u64, step: u64, k_max: u64) -> Option<u64> {
    (ms.is_multiple_of(step) && (1..=k_max).contains(&(ms / step))).then(|| ms / step)
}

fn put_reserve_ttl(t: &mut Tape, ttl_ms: Option<u64>) {
    match ttl_ms {
        None => t.weighted(&RESERVE_TTL, 0),
        Some(ms) if steps_of(ms, 5_000, 24).is_some() => {
            t.weighted(&RESERVE_TTL, 1);
            t.int(23, ms / 5_000 - 1);
        }
        Some(ms) if ms == HOLD_TTL_MS_MIN - 1 => t.weighted(&RESERVE_TTL, 2),
        Some(HOLD_TTL_MS_MIN) => t.weighted(&RESERVE_TTL, 3),
        Some(ms) if ms == HOLD_TTL_MS_MAX + 1 => t.weighted(&RESERVE_TTL, 4),
        Some(ms) => {
            t.weighted(&RESERVE_TTL, 5);
            t.any_u64(ms);
        }
    }
}

fn put_qty(t: &mut Tape, qty: u32) {
    match qty {
        0 => t.weighted(&QTY, 0),
        1..=5 => {
            t.weighted(&QTY, 1);
            t.int(4, u64::from(qty - 1));
        }
        HOLD_QTY_MAX => t.weighted(&QTY, 2),
        q if q == HOLD_QTY_MAX + 1 => t.weighted(&QTY, 3),
        q => {
            t.weighted(&QTY, 4);
            t.any_u32(q);
        }
    }
}

/// Picks the first bucket of `options` whose value is `value`, else the last ("any") bucket.
fn put_option<T: PartialEq>(t: &mut Tape, weights: &[u32], options: &[T], value: &T) -> bool {
    match options.iter().position(|o| o == value) {
        Some(bucket) => {
            t.weighted(weights, bucket);
            true
        }
        None => {
            t.weighted(weights, weights.len() - 1);
            false
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "one argument per field of a new deal")]
fn put_create_deal(
    t: &mut Tape,
    stream: Option<usize>,
    stock: u64,
    starts_at_ms: Option<u64>,
    ends_at_ms: Option<u64>,
    per_user_limit: Option<u32>,
    hold_ttl_ms: Option<u64>,
    hold_ttl_ms_max: Option<u64>,
    waitlist_max: Option<u32>,
    offer_ttl_ms: Option<u64>,
    draw_window_ms: Option<u64>,
    draw_seed: Option<[u8; 32]>,
) -> Encoded {
    match stream {
        None => t.weighted(&STREAM, 0),
        Some(s) => {
            t.weighted(&STREAM, 1);
            t.pick(STREAMS_USED, s)?;
        }
    }
    match stock {
        s if s < STOCK_SMALL as u64 => {
            t.weighted(&STOCK, 0);
            t.int(STOCK_SMALL as u64 - 1, s);
        }
        s if (DEAL_STOCK_UNITS_MAX - 3..=DEAL_STOCK_UNITS_MAX).contains(&s) => {
            t.weighted(&STOCK, 1);
            t.int(3, DEAL_STOCK_UNITS_MAX - s);
        }
        s if s == DEAL_STOCK_UNITS_MAX + 1 => t.weighted(&STOCK, 2),
        s => {
            t.weighted(&STOCK, 3);
            t.any_u64(s);
        }
    }
    match starts_at_ms {
        None => t.weighted(&STARTS, 0),
        Some(ms)
            if ms >= T0_MS && (ms - T0_MS).is_multiple_of(5_000) && (ms - T0_MS) / 5_000 < 60 =>
        {
            t.weighted(&STARTS, 1);
            t.int(59, (ms - T0_MS) / 5_000);
        }
        Some(5) => t.weighted(&STARTS, 2),
        Some(ms) => {
            t.weighted(&STARTS, 3);
            t.any_u64(ms);
        }
    }
    match ends_at_ms {
        None => t.weighted(&ENDS, 0),
        Some(ms) if ms > T0_MS && steps_of(ms - T0_MS, 50_000, 59).is_some() => {
            t.weighted(&ENDS, 1);
            t.int(58, (ms - T0_MS) / 50_000 - 1);
        }
        Some(TIMESTAMP_MS_MAX) => t.weighted(&ENDS, 2),
        Some(ms) if ms == TIMESTAMP_MS_MAX + 1 => t.weighted(&ENDS, 3),
        Some(ms) => {
            t.weighted(&ENDS, 4);
            t.any_u64(ms);
        }
    }
    match per_user_limit {
        None => t.weighted(&LIMIT, 0),
        Some(l @ 1..=4) => {
            t.weighted(&LIMIT, 1);
            t.int(3, u64::from(l - 1));
        }
        Some(0) => t.weighted(&LIMIT, 2),
        Some(l) => {
            t.weighted(&LIMIT, 3);
            t.any_u32(l);
        }
    }
    let ttls = [None, Some(20_000), Some(60_000), Some(500), Some(700_000)];
    if !put_option(t, &TTL, &ttls, &hold_ttl_ms) {
        t.any_u64(hold_ttl_ms.ok_or("a missing TTL has its own bucket")?);
    }
    let ttl_maxes = [
        None,
        Some(60_000),
        Some(120_000),
        Some(999),
        Some(HOLD_TTL_MS_MAX),
        Some(HOLD_TTL_MS_MAX + 1),
    ];
    if !put_option(t, &TTL_MAX, &ttl_maxes, &hold_ttl_ms_max) {
        t.any_u64(hold_ttl_ms_max.ok_or("a missing TTL max has its own bucket")?);
    }
    match waitlist_max {
        None => t.weighted(&WAITLIST, 0),
        Some(m @ 1..=3) => {
            t.weighted(&WAITLIST, 1);
            t.int(2, u64::from(m - 1));
        }
        Some(0) => t.weighted(&WAITLIST, 2),
        Some(WAITLIST_MAX) => t.weighted(&WAITLIST, 3),
        Some(m) if m == WAITLIST_MAX + 1 => t.weighted(&WAITLIST, 4),
        Some(m) => {
            t.weighted(&WAITLIST, 5);
            t.any_u32(m);
        }
    }
    match offer_ttl_ms {
        None => t.weighted(&OFFER_TTL, 0),
        Some(ms) if steps_of(ms, 5_000, 12).is_some() => {
            t.weighted(&OFFER_TTL, 1);
            t.int(11, ms / 5_000 - 1);
        }
        Some(ms) if ms == HOLD_TTL_MS_MIN - 1 => t.weighted(&OFFER_TTL, 2),
        Some(HOLD_TTL_MS_MAX) => t.weighted(&OFFER_TTL, 3),
        Some(ms) => {
            t.weighted(&OFFER_TTL, 4);
            t.any_u64(ms);
        }
    }
    put_draw(t, draw_window_ms, draw_seed)
}

fn put_draw(t: &mut Tape, window: Option<u64>, seed: Option<[u8; 32]>) -> Encoded {
    match window {
        None if seed.is_none() => {
            t.weighted(&DRAW, 0);
            return Ok(());
        }
        None => {
            t.weighted(&DRAW, 5);
            t.any_u64(0);
        }
        Some(ms) if steps_of(ms, 5_000, 12).is_some() => {
            t.weighted(&DRAW, 1);
            t.int(11, ms / 5_000 - 1);
        }
        Some(DRAW_WINDOW_MS_MIN) => t.weighted(&DRAW, 2),
        Some(DRAW_WINDOW_MS_MAX) => t.weighted(&DRAW, 3),
        Some(ms) if ms == DRAW_WINDOW_MS_MAX + 1 => t.weighted(&DRAW, 4),
        Some(0) => return Err("a draw window of 0 ms cannot be written".into()),
        Some(ms) => {
            t.weighted(&DRAW, 5);
            t.any_u64(ms);
        }
    }
    match seed {
        Some(seed) if seed.iter().all(|b| *b == seed[0]) => {
            t.weighted(&SEED, 0);
            t.int(255, u64::from(seed[0]));
        }
        Some(seed) => {
            t.weighted(&SEED, 1);
            for byte in seed {
                t.int(255, u64::from(byte));
            }
        }
        None => t.weighted(&SEED, 2),
    }
    Ok(())
}

fn put_op(t: &mut Tape, op: &Op) -> Encoded {
    match op {
        Op::CreateDeal {
            deal,
            stream,
            stock,
            starts_at_ms,
            ends_at_ms,
            per_user_limit,
            hold_ttl_ms,
            hold_ttl_ms_max,
            waitlist_max,
            offer_ttl_ms,
            draw_window_ms,
            draw_seed,
        } => {
            t.weighted(&OP, 0);
            t.pick(DEALS_CREATABLE, *deal)?;
            put_create_deal(
                t,
                *stream,
                *stock,
                *starts_at_ms,
                *ends_at_ms,
                *per_user_limit,
                *hold_ttl_ms,
                *hold_ttl_ms_max,
                *waitlist_max,
                *offer_ttl_ms,
                *draw_window_ms,
                *draw_seed,
            )?;
        }
        Op::Reserve { user, deal, qty, ttl_ms, waitlist } => {
            t.weighted(&OP, 1);
            t.pick(USER_IDS.len(), *user)?;
            put_deal(t, *deal)?;
            put_qty(t, *qty);
            put_reserve_ttl(t, *ttl_ms);
            t.weighted(&JOIN, usize::from(*waitlist));
        }
        Op::Cart { user, lines, ttl_ms, waitlist } => {
            t.weighted(&OP, 2);
            t.pick(USER_IDS.len(), *user)?;
            match lines.len() {
                n @ 1..=4 => {
                    t.weighted(&CART_LEN, 0);
                    t.int(3, n as u64 - 1);
                }
                0 => t.weighted(&CART_LEN, 1),
                n if n == CART_LINES_MAX + 1 => t.weighted(&CART_LEN, 2),
                n => return Err(format!("a cart of {n} lines")),
            }
            for (deal, qty) in lines {
                match qty {
                    1..=5 => {
                        t.weighted(&LINE_QTY, 0);
                        t.int(4, u64::from(qty - 1));
                    }
                    0 => t.weighted(&LINE_QTY, 1),
                    600 => t.weighted(&LINE_QTY, 2),
                    q => {
                        t.weighted(&LINE_QTY, 3);
                        t.any_u32(*q);
                    }
                }
                put_deal(t, *deal)?;
            }
            put_reserve_ttl(t, *ttl_ms);
            t.weighted(&JOIN, usize::from(*waitlist));
        }
        Op::Confirm { hold, qty } => {
            t.weighted(&OP, 3);
            put_hold(t, *hold)?;
            match qty {
                None => t.weighted(&CONFIRM_QTY, 0),
                Some(q @ 0..=5) => {
                    t.weighted(&CONFIRM_QTY, 1);
                    t.int(5, u64::from(*q));
                }
                Some(q) => {
                    t.weighted(&CONFIRM_QTY, 2);
                    t.any_u32(*q);
                }
            }
        }
        Op::Release { hold } => {
            t.weighted(&OP, 4);
            put_hold(t, *hold)?;
        }
        Op::Extend { hold, ttl_ms } => {
            t.weighted(&OP, 5);
            put_hold(t, *hold)?;
            match *ttl_ms {
                0 => t.weighted(&EXTEND_TTL, 0),
                ms if ms == HOLD_TTL_MS_MIN - 1 => t.weighted(&EXTEND_TTL, 1),
                HOLD_TTL_MS_MIN => t.weighted(&EXTEND_TTL, 2),
                ms if steps_of(ms, 5_000, 24).is_some() => {
                    t.weighted(&EXTEND_TTL, 3);
                    t.int(23, ms / 5_000 - 1);
                }
                HOLD_TTL_MS_DEFAULT => t.weighted(&EXTEND_TTL, 4),
                3_600_000 => t.weighted(&EXTEND_TTL, 5),
                ms => {
                    t.weighted(&EXTEND_TTL, 6);
                    t.any_u64(ms);
                }
            }
        }
        Op::Advance { ms, reap } => {
            t.weighted(&OP, 6);
            match *ms {
                ms if ms.is_multiple_of(5_000) && ms <= 18 * 5_000 => {
                    t.weighted(&ADVANCE, 0);
                    t.int(18, ms / 5_000);
                }
                ms if ms < 90_000 => {
                    t.weighted(&ADVANCE, 1);
                    t.int(89_999, ms);
                }
                ms if ms <= ADVANCE_MS_MAX => {
                    t.weighted(&ADVANCE, 2);
                    t.int(ADVANCE_MS_MAX, ms);
                }
                ms => return Err(format!("an advance of {ms} ms")),
            }
            t.weighted(&REAP, usize::from(!reap));
        }
        Op::AdjustStock { deal, delta } => {
            t.weighted(&OP, 7);
            put_deal(t, *deal)?;
            match *delta {
                d @ -8..=8 => {
                    t.weighted(&DELTA, 0);
                    t.int(16, (d + 8) as u64);
                }
                d if d == DEAL_STOCK_UNITS_MAX as i64 => t.weighted(&DELTA, 1),
                d => {
                    t.weighted(&DELTA, 2);
                    t.int(u64::MAX, (d as u64) ^ (1 << 63));
                }
            }
        }
        Op::Pause(deal) => {
            t.weighted(&OP, 8);
            put_deal(t, *deal)?;
        }
        Op::Resume(deal) => {
            t.weighted(&OP, 9);
            put_deal(t, *deal)?;
        }
        Op::EndDeal(deal) => {
            t.weighted(&OP, 10);
            put_deal(t, *deal)?;
        }
        Op::EndStream(stream) => {
            t.weighted(&OP, 11);
            t.pick(STREAM_IDS.len(), *stream)?;
        }
        Op::CancelEntry { entry } => {
            t.weighted(&OP, 12);
            put_hold(t, *entry)?;
        }
    }
    Ok(())
}

/// The bytes that decode to `ops`: the three deal creations (deals 0, 1, 2, in order), then at
/// most `OPS_MAX - 3` ops whose values the decoder can produce. `Err` names what cannot be.
pub fn encode(ops: &[Op]) -> std::result::Result<Vec<u8>, String> {
    if ops.len() > OPS_MAX {
        return Err(format!("{} ops, at most {OPS_MAX}", ops.len()));
    }
    let mut t = Tape::default();
    for (i, op) in ops.iter().enumerate() {
        if i < DEALS_CREATABLE {
            let Op::CreateDeal {
                deal,
                stream,
                stock,
                starts_at_ms,
                ends_at_ms,
                per_user_limit,
                hold_ttl_ms,
                hold_ttl_ms_max,
                waitlist_max,
                offer_ttl_ms,
                draw_window_ms,
                draw_seed,
            } = op
            else {
                return Err(format!("op {i} must create deal {i}"));
            };
            if *deal != i {
                return Err(format!("op {i} must create deal {i}"));
            }
            put_create_deal(
                &mut t,
                *stream,
                *stock,
                *starts_at_ms,
                *ends_at_ms,
                *per_user_limit,
                *hold_ttl_ms,
                *hold_ttl_ms_max,
                *waitlist_max,
                *offer_ttl_ms,
                *draw_window_ms,
                *draw_seed,
            )?;
        } else {
            put_op(&mut t, op)?;
        }
    }
    Ok(t.0)
}
