//! What the simulated clients ask: requests as the HTTP API would carry them (path, JSON body,
//! idempotency scope and fingerprint), turned into commands by the server's own wire parsers,
//! and answered with the server's own rendering.

use std::sync::OnceLock;

use livestock::config::Config;
use livestock::http::error::ApiError;
use livestock::http::handlers::{self, Answer};
use livestock::http::wire;
use livestock::idempotency::{fingerprint, StoredReply};
use livestock_core::command::{Command, Outcome};
use livestock_core::error::CommandError;
use livestock_core::ids::{EntrySeq, HoldIdKey, HoldSeq};
use serde_json::{json, Map, Value};

use super::rng::Rng;

/// The hold-id secret of every simulated data directory.
pub const KEY: HoldIdKey = HoldIdKey(0x051D_5EED_0FF4_1700);

pub const DEALS: [&str; 5] = ["d1", "d2", "d3", "d4", "d5"];
pub const STREAMS: [&str; 2] = ["s1", "s2"];
pub const USERS: [&str; 4] = ["u1", "u2", "u3", "u4"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Req {
    CreateDeal {
        id: String,
        stream: Option<String>,
        stock: u64,
        limit: Option<u32>,
        ttl_ms: Option<u64>,
        ttl_max_ms: Option<u64>,
        starts_at_ms: Option<u64>,
        waitlist_max: Option<u32>,
        /// A draw window from `starts_at_ms` (the seed is the server's: `command` gives it).
        draw_window_ms: Option<u64>,
    },
    /// `waitlist`: join the deal's waitlist if it cannot serve the reserve (202 or 200 with the
    /// entry).
    Reserve {
        deal: String,
        user: String,
        qty: u32,
        ttl_ms: Option<u64>,
        waitlist: bool,
    },
    CancelEntry {
        entry: EntrySeq,
    },
    Cart {
        user: String,
        lines: Vec<(String, u32)>,
        ttl_ms: Option<u64>,
    },
    Confirm {
        hold: HoldSeq,
        qty: Option<u32>,
    },
    Release {
        hold: HoldSeq,
    },
    Extend {
        hold: HoldSeq,
        ttl_ms: u64,
    },
    Pause {
        deal: String,
    },
    Resume {
        deal: String,
    },
    EndDeal {
        deal: String,
    },
    EndStream {
        stream: String,
    },
    AdjustStock {
        deal: String,
        delta: i64,
    },
}

fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    let mut map = Map::new();
    for (name, value) in fields {
        if let Some(value) = value {
            map.insert(name.to_owned(), value);
        }
    }
    Value::Object(map)
}

impl Req {
    pub fn path(&self) -> String {
        let hold = |seq: &HoldSeq| seq.to_id(KEY);
        match self {
            Req::CreateDeal { .. } => "/v1/deals".into(),
            Req::Reserve { deal, .. } => format!("/v1/deals/{deal}/reserve"),
            Req::Cart { .. } => "/v1/cart/reserve".into(),
            Req::Confirm { hold: h, .. } => format!("/v1/holds/{}/confirm", hold(h)),
            Req::Release { hold: h } => format!("/v1/holds/{}/release", hold(h)),
            Req::Extend { hold: h, .. } => format!("/v1/holds/{}/extend", hold(h)),
            Req::Pause { deal } => format!("/v1/deals/{deal}/pause"),
            Req::Resume { deal } => format!("/v1/deals/{deal}/resume"),
            Req::EndDeal { deal } => format!("/v1/deals/{deal}/end"),
            Req::EndStream { stream } => format!("/v1/streams/{stream}/end"),
            Req::AdjustStock { deal, .. } => format!("/v1/deals/{deal}/stock"),
            Req::CancelEntry { entry } => format!("/v1/waitlist/{}/cancel", entry.to_id(KEY)),
        }
    }

    pub fn body(&self) -> Value {
        match self {
            Req::CreateDeal {
                id,
                stream,
                stock,
                limit,
                ttl_ms,
                ttl_max_ms,
                starts_at_ms,
                waitlist_max,
                draw_window_ms,
            } => object(vec![
                ("id", Some(json!(id))),
                ("stream_id", stream.as_ref().map(|s| json!(s))),
                ("stock", Some(json!(stock))),
                ("per_user_limit", limit.map(|l| json!(l))),
                ("hold_ttl_ms", ttl_ms.map(|t| json!(t))),
                ("hold_ttl_ms_max", ttl_max_ms.map(|t| json!(t))),
                ("starts_at", starts_at_ms.map(|t| json!(wire::timestamp(t)))),
                ("waitlist_max", waitlist_max.map(|m| json!(m))),
                ("draw_window_ms", draw_window_ms.map(|w| json!(w))),
            ]),
            Req::Reserve { user, qty, ttl_ms, waitlist, .. } => object(vec![
                ("user_id", Some(json!(user))),
                ("qty", Some(json!(qty))),
                ("ttl_ms", ttl_ms.map(|t| json!(t))),
                ("waitlist", waitlist.then_some(json!(true))),
            ]),
            Req::Cart { user, lines, ttl_ms } => object(vec![
                ("user_id", Some(json!(user))),
                (
                    "lines",
                    Some(Value::Array(
                        lines.iter().map(|(d, q)| json!({ "deal_id": d, "qty": q })).collect(),
                    )),
                ),
                ("ttl_ms", ttl_ms.map(|t| json!(t))),
            ]),
            Req::Confirm { qty, .. } => object(vec![("qty", qty.map(|q| json!(q)))]),
            Req::Extend { ttl_ms, .. } => json!({ "ttl_ms": ttl_ms }),
            Req::AdjustStock { delta, .. } => json!({ "delta": delta }),
            Req::Release { .. }
            | Req::Pause { .. }
            | Req::Resume { .. }
            | Req::EndDeal { .. }
            | Req::EndStream { .. }
            | Req::CancelEntry { .. } => json!({}),
        }
    }

    /// Where the server keeps this request's idempotency key (`http::handlers`).
    pub fn scope(&self) -> String {
        match self {
            Req::Reserve { user, .. } | Req::Cart { user, .. } => format!("user:{user}"),
            Req::Confirm { hold, .. } | Req::Release { hold } | Req::Extend { hold, .. } => {
                format!("hold:{}", hold.to_id(KEY))
            }
            Req::CancelEntry { entry } => format!("entry:{}", entry.to_id(KEY)),
            _ => "admin".into(),
        }
    }

    /// The fingerprint the server computes: method, path, canonical body.
    pub fn fingerprint(&self) -> u64 {
        let body = self.body().to_string();
        fingerprint(&[b"POST", self.path().as_bytes(), body.as_bytes()])
    }

    fn answer(&self) -> Answer {
        match self {
            Req::CreateDeal { .. } => Answer::CreatedDeal,
            Req::Reserve { .. } => Answer::ReservedHold,
            _ => Answer::Plain,
        }
    }

    /// The command the server would build from this request, through its wire parsers; `Err`
    /// is the 400 it would answer instead.
    pub fn command(&self) -> Result<Command, StoredReply> {
        let body = self.body().to_string();
        let body = body.as_bytes();
        let bad = |e: ApiError| e.reply();
        let hold = |seq: &HoldSeq| wire::hold_seq(&seq.to_id(KEY), KEY).map_err(bad);
        let parsed = match self {
            Req::CreateDeal { .. } => wire::parse_body::<wire::CreateDealBody>(body)
                .and_then(|b| b.command(defaults(), || Ok([7; 32]))),
            Req::Reserve { deal, .. } => wire::deal_id(deal).and_then(|id| {
                wire::parse_body::<wire::ReserveBody>(body).and_then(|b| b.command(id))
            }),
            Req::Cart { .. } => wire::parse_body::<wire::CartBody>(body).and_then(|b| b.command()),
            Req::Confirm { hold: h, .. } => {
                let qty = wire::parse_body::<wire::ConfirmBody>(body).map_err(bad)?.qty;
                return Ok(Command::Confirm { hold: hold(h)?, qty });
            }
            Req::Release { hold: h } => return Ok(Command::Release { hold: hold(h)? }),
            Req::CancelEntry { entry } => {
                let entry = wire::entry_seq(&entry.to_id(KEY), KEY).map_err(bad)?;
                return Ok(Command::CancelEntry { entry });
            }
            Req::Extend { hold: h, .. } => {
                let ttl_ms = wire::parse_body::<wire::ExtendBody>(body).map_err(bad)?.ttl_ms;
                return Ok(Command::Extend { hold: hold(h)?, ttl_ms });
            }
            Req::Pause { deal } => wire::deal_id(deal).map(Command::PauseDeal),
            Req::Resume { deal } => wire::deal_id(deal).map(Command::ResumeDeal),
            Req::EndDeal { deal } => wire::deal_id(deal).map(Command::EndDeal),
            Req::EndStream { stream } => wire::stream_id(stream).map(Command::EndStream),
            Req::AdjustStock { deal, .. } => wire::deal_id(deal).and_then(|deal_id| {
                let delta = wire::parse_body::<wire::StockBody>(body)?.delta;
                Ok(Command::AdjustStock { deal_id, delta })
            }),
        };
        parsed.map_err(bad)
    }

    /// The answer to `result`, rendered by the server's own code (`http::handlers::render`).
    pub fn render(&self, result: &Result<Outcome, CommandError>) -> StoredReply {
        handlers::render(self.answer(), result, KEY)
    }

    pub fn describe(&self) -> String {
        format!("POST {} {}", self.path(), self.body())
    }
}

/// What the server fills into a deal that names no TTLs: its default configuration's.
fn defaults() -> (u64, u64) {
    static DEFAULTS: OnceLock<(u64, u64)> = OnceLock::new();
    *DEFAULTS.get_or_init(|| {
        let config = Config::default();
        (config.hold_ttl_ms_default, config.hold_ttl_ms_max)
    })
}

/// Which answers a retry gets back: the server's own rule.
pub use livestock::http::exchange::remembered;

/// Draws a new request. `holds`, `entries`: hold and waitlist entry numbers the clients have
/// seen, newest last.
pub fn request(
    rng: &mut Rng,
    created: &[String],
    holds: &[HoldSeq],
    entries: &[EntrySeq],
    now_ms: u64,
) -> Req {
    let deal = |rng: &mut Rng| -> String {
        match rng.pick(created) {
            Some(d) if !rng.chance(25) => d.clone(),
            _ => (*rng.pick(&DEALS).expect("deals")).to_owned(),
        }
    };
    let user = |rng: &mut Rng| (*rng.pick(&USERS).expect("users")).to_owned();
    // Mostly recent holds: they are the ones still open.
    let hold = |rng: &mut Rng| -> HoldSeq {
        if holds.is_empty() || rng.chance(20) {
            return HoldSeq(rng.range(1, 40));
        }
        let n = holds.len() as u64;
        let back = if rng.chance(700) { rng.below(n.min(4)) } else { rng.below(n) };
        holds[(n - 1 - back) as usize]
    };
    let ttl = |rng: &mut Rng| -> Option<u64> {
        match rng.below(4) {
            0 => None,
            1 => Some(rng.range(1_000, 5_000)),
            2 => Some(rng.range(5_000, 120_000)),
            _ => Some(rng.range(500, 1_500)), // sometimes below the minimum: a 400
        }
    };
    // Deals first: until two exist, most requests would only be told `unknown_deal`.
    let create = if created.len() < 2 { 60 } else { 4 };
    let weights = [create, 30, 8, 18, 8, 8, 2, 2, 2, 2, 3, 4];
    match rng.weighted(&weights) {
        0 => {
            let fresh: Vec<&&str> =
                DEALS.iter().filter(|d| !created.iter().any(|c| c == **d)).collect();
            let id = match rng.pick(&fresh) {
                Some(d) if !rng.chance(100) => (**d).to_owned(),
                _ => deal(rng),
            };
            let ttl_max_ms = if rng.chance(500) { Some(rng.range(30_000, 900_000)) } else { None };
            let ttl_ms = if rng.chance(600) {
                Some(rng.range(1_000, ttl_max_ms.unwrap_or(600_000).min(300_000)))
            } else {
                None
            };
            // Most deals keep a short waitlist and little stock: sold out quickly, with units
            // coming back often.
            let waitlist_max = rng.chance(600).then(|| rng.range(1, 4) as u32);
            let stock = if waitlist_max.is_some() { rng.range(1, 3) } else { rng.range(1, 8) };
            // Some deals start with a draw within seconds: its window (a second to ten) opens
            // and closes within a history, across ticks, crashes and recoveries.
            let draw = rng.chance(150);
            let starts_at_ms = if draw {
                Some(now_ms + rng.range(0, 3_000))
            } else if rng.chance(100) {
                Some(now_ms + rng.range(1, 20_000))
            } else {
                None
            };
            let draw_window_ms = draw.then(|| rng.range(1_000, 10_000));
            Req::CreateDeal {
                id,
                stream: rng.pick(&STREAMS).filter(|_| rng.chance(700)).map(|s| (*s).to_owned()),
                stock,
                limit: if rng.chance(400) { Some(rng.range(1, 3) as u32) } else { None },
                ttl_ms,
                ttl_max_ms,
                starts_at_ms,
                waitlist_max,
                draw_window_ms,
            }
        }
        1 => Req::Reserve {
            deal: deal(rng),
            user: user(rng),
            qty: rng.range(1, 3) as u32,
            ttl_ms: ttl(rng),
            waitlist: rng.chance(500),
        },
        2 => {
            let lines = (0..rng.range(1, 3)).map(|_| (deal(rng), rng.range(1, 2) as u32)).collect();
            Req::Cart { user: user(rng), lines, ttl_ms: ttl(rng) }
        }
        3 => Req::Confirm {
            hold: hold(rng),
            qty: if rng.chance(400) { Some(rng.range(1, 3) as u32) } else { None },
        },
        4 => Req::Release { hold: hold(rng) },
        5 => Req::Extend { hold: hold(rng), ttl_ms: rng.range(1_000, 180_000) },
        6 => Req::Pause { deal: deal(rng) },
        7 => Req::Resume { deal: deal(rng) },
        8 => Req::EndDeal { deal: deal(rng) },
        9 => Req::EndStream { stream: (*rng.pick(&STREAMS).expect("streams")).to_owned() },
        11 => {
            // Mostly recent entries; sometimes a number that is no entry.
            let entry = match rng.pick(entries) {
                Some(_) if !rng.chance(100) => {
                    let n = entries.len() as u64;
                    entries[(n - 1 - rng.below(n.min(3))) as usize]
                }
                _ => EntrySeq(rng.range(1, 40)),
            };
            Req::CancelEntry { entry }
        }
        _ => {
            let delta = rng.range(1, 3) as i64;
            Req::AdjustStock {
                deal: deal(rng),
                delta: if rng.chance(500) { delta } else { -delta },
            }
        }
    }
}
