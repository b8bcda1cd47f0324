//! The JSON wire format: request bodies into validated commands, outcomes into answers.
//!
//! Timestamps are RFC 3339 UTC strings with milliseconds; durations are integers with their unit
//! in the name. Unknown fields are refused: a misspelt `quantity` must not silently mean 1.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alloc::DrawView;
use crate::http::error::ApiError;
use crate::idempotency::StoredReply;
use livestock_core::command::{Command, HoldView, Line, Outcome, Reserve};
use livestock_core::deal::{DealView, NewDeal};
use livestock_core::draw::{self, DrawSeed};
use livestock_core::ids::{DealId, EntrySeq, HoldIdKey, HoldSeq, StreamId, UserId};
use livestock_core::waitlist::EntryView;

/// The body as idempotency fingerprints it: parsed and written back compactly with sorted
/// keys, so whitespace and key order do not make a retry a different request.
pub(crate) fn canonical_json(body: &[u8]) -> Vec<u8> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => value.to_string().into_bytes(),
        // Not JSON: the request fails validation before this point; fall back to the bytes.
        Err(_) => body.to_vec(),
    }
}

pub fn timestamp(ms: u64) -> String {
    match i64::try_from(ms).ok().and_then(DateTime::<Utc>::from_timestamp_millis) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => panic!("timestamp {ms} out of range (validated on the way in)"),
    }
}

fn parse_timestamp(field: &str, raw: &str) -> Result<u64, ApiError> {
    let parsed = DateTime::parse_from_rfc3339(raw)
        .map_err(|e| ApiError::invalid(format!("{field}: not an RFC 3339 timestamp ({e})")))?;
    u64::try_from(parsed.timestamp_millis())
        .map_err(|_| ApiError::invalid(format!("{field}: before 1970")))
}

/// Parses a JSON body into `T`. An empty body reads as `{}` (for bodies whose fields are all
/// optional: pause, release, confirm).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    // Serde's derived decoders also take a JSON array, filling fields in order (`[]` would be
    // a valid confirm of the whole hold): every body here is an object, so refuse the rest.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body: expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDealBody {
    id: String,
    stock: u64,
    #[serde(default)]
    stream_id: Option<String>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default)]
    per_user_limit: Option<u32>,
    #[serde(default)]
    hold_ttl_ms: Option<u64>,
    #[serde(default)]
    hold_ttl_ms_max: Option<u64>,
    #[serde(default)]
    waitlist_max: Option<u32>,
    #[serde(default)]
    offer_ttl_ms: Option<u64>,
    #[serde(default)]
    draw_window_ms: Option<u64>,
}

impl CreateDealBody {
    /// `defaults`: the server's (hold_ttl_ms, hold_ttl_ms_max) for a deal that names neither.
    /// `seed` chooses a draw's secret seed (called only for a deal with `draw_window_ms`).
    pub fn command(
        self,
        defaults: (u64, u64),
        seed: impl FnOnce() -> Result<DrawSeed, ApiError>,
    ) -> Result<Command, ApiError> {
        let (ttl_default, ttl_max_default) = defaults;
        let hold_ttl_ms_max = self.hold_ttl_ms_max.or(Some(ttl_max_default));
        let ttl_cap = hold_ttl_ms_max.unwrap_or(ttl_max_default);
        let hold_ttl_ms = self.hold_ttl_ms.or(Some(ttl_default.min(ttl_cap)));
        let id = DealId::parse(&self.id).map_err(|e| ApiError::invalid(e.to_string()))?;
        let stream_id = self
            .stream_id
            .map(|s| StreamId::parse(&s))
            .transpose()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(Command::CreateDeal(NewDeal {
            id,
            stream_id,
            stock: self.stock,
            starts_at_ms: self.starts_at.map(|t| parse_timestamp("starts_at", &t)).transpose()?,
            ends_at_ms: self.ends_at.map(|t| parse_timestamp("ends_at", &t)).transpose()?,
            per_user_limit: self.per_user_limit,
            hold_ttl_ms,
            hold_ttl_ms_max,
            waitlist_max: self.waitlist_max,
            offer_ttl_ms: self.offer_ttl_ms,
            draw_window_ms: self.draw_window_ms,
            draw_seed: self.draw_window_ms.map(|_| seed()).transpose()?,
        }))
    }
}

/// Bodies of pause, resume, end, release: nothing, or an empty object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    pub delta: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    user_id: String,
    qty: u32,
    #[serde(default)]
    ttl_ms: Option<u64>,
    /// Join the deal's waitlist when it cannot serve the request now.
    #[serde(default)]
    waitlist: bool,
}

impl ReserveBody {
    pub fn command(self, deal_id: DealId) -> Result<Command, ApiError> {
        Ok(Command::Reserve(Reserve {
            user_id: user_id(&self.user_id)?,
            lines: vec![Line { deal_id, qty: self.qty }],
            ttl_ms: self.ttl_ms,
            waitlist: self.waitlist,
        }))
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CartLineBody {
    deal_id: String,
    qty: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartBody {
    user_id: String,
    lines: Vec<CartLineBody>,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

impl CartBody {
    pub fn command(self) -> Result<Command, ApiError> {
        let lines = self
            .lines
            .into_iter()
            .map(|l| Ok(Line { deal_id: deal_id(&l.deal_id)?, qty: l.qty }))
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Command::Cart(Reserve {
            user_id: user_id(&self.user_id)?,
            lines,
            ttl_ms: self.ttl_ms,
            waitlist: false,
        }))
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    #[serde(default)]
    pub qty: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    pub ttl_ms: u64,
}

pub fn deal_id(raw: &str) -> Result<DealId, ApiError> {
    DealId::parse(raw).map_err(|e| ApiError::invalid(e.to_string()))
}

pub fn stream_id(raw: &str) -> Result<StreamId, ApiError> {
    StreamId::parse(raw).map_err(|e| ApiError::invalid(e.to_string()))
}

pub fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::invalid(e.to_string()))
}

pub fn hold_seq(raw: &str, key: HoldIdKey) -> Result<HoldSeq, ApiError> {
    HoldSeq::from_id(raw, key).map_err(|e| ApiError::invalid(e.to_string()))
}

pub fn entry_seq(raw: &str, key: HoldIdKey) -> Result<EntrySeq, ApiError> {
    EntrySeq::from_id(raw, key).map_err(|e| ApiError::invalid(e.to_string()))
}

// ------------------------------------------------------------------ answers

/// A deal on the wire. Fields in alphabetical order (the order `json!` objects print in), so
/// every answer's bytes are the same whichever way it was built.
#[derive(Serialize)]
pub struct DealJson<'a> {
    available: u64,
    created_at: String,
    /// SHA-256 of the draw's secret seed, hex (null without a draw).
    draw_commitment: Option<String>,
    draw_window_ms: Option<u64>,
    ends_at: Option<String>,
    held: u64,
    hold_ttl_ms: u64,
    hold_ttl_ms_max: u64,
    id: &'a str,
    /// The TTL of a hold offered from the waitlist; null without a waitlist.
    offer_ttl_ms: Option<u64>,
    per_user_limit: Option<u32>,
    sold: u64,
    starts_at: Option<String>,
    state: &'static str,
    stock: u64,
    stream_id: Option<&'a str>,
    waiting: u64,
    waitlist_max: u32,
}

pub fn deal_json(view: &DealView) -> DealJson<'_> {
    let spec = &view.spec;
    let c = view.counters;
    DealJson {
        available: c.available(),
        created_at: timestamp(spec.created_at_ms),
        draw_commitment: view.options.draw_seed.map(|seed| draw::hex(&draw::commitment(&seed))),
        draw_window_ms: view.options.draw_window_ms,
        ends_at: spec.ends_at_ms.map(timestamp),
        held: c.held(),
        hold_ttl_ms: spec.hold_ttl_ms,
        hold_ttl_ms_max: spec.hold_ttl_ms_max,
        id: spec.id.as_str(),
        offer_ttl_ms: view.options.has_waitlist().then_some(view.options.offer_ttl_ms),
        per_user_limit: spec.per_user_limit,
        sold: c.sold(),
        starts_at: spec.starts_at_ms.map(timestamp),
        state: view.state.as_str(),
        stock: c.stock(),
        stream_id: spec.stream_id.as_ref().map(|s| s.as_str()),
        waiting: view.waiting,
        waitlist_max: view.options.waitlist_max,
    }
}

/// A hold on the wire (alphabetical fields, as `DealJson`).
#[derive(Serialize)]
pub struct HoldJson<'a> {
    confirmed_qty: u32,
    created_at: String,
    deal_id: &'a str,
    /// The waitlist entry an offer was made to (only for `origin: "waitlist"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_id: Option<String>,
    expires_at: String,
    hold_id: String,
    /// `reserve` (asked for) or `waitlist` (offered to a waiting entry).
    origin: &'static str,
    qty: u32,
    resolved_at: Option<String>,
    state: &'static str,
    user_id: &'a str,
}

pub fn hold_json(view: &HoldView, key: HoldIdKey) -> HoldJson<'_> {
    let hold = &view.hold;
    HoldJson {
        confirmed_qty: hold.confirmed_qty,
        created_at: timestamp(hold.created_at_ms),
        deal_id: hold.deal_id.as_str(),
        entry_id: view.origin.map(|seq| seq.to_id(key)),
        expires_at: timestamp(hold.expires_at_ms),
        hold_id: hold.seq.to_id(key),
        origin: if view.origin.is_some() { "waitlist" } else { "reserve" },
        qty: hold.qty,
        resolved_at: hold.resolved_at_ms.map(timestamp),
        state: view.state.as_str(),
        user_id: hold.user_id.as_str(),
    }
}

/// A waitlist entry on the wire (alphabetical fields, as `DealJson`).
#[derive(Serialize)]
pub struct EntryJson<'a> {
    created_at: String,
    deal_id: &'a str,
    entry_id: String,
    /// The offered hold, once offered.
    hold_id: Option<String>,
    /// 1 for the head of the queue; null unless waiting.
    position: Option<u64>,
    qty: u32,
    resolved_at: Option<String>,
    state: &'static str,
    user_id: &'a str,
}

pub fn entry_json(view: &EntryView, key: HoldIdKey) -> EntryJson<'_> {
    let entry = &view.entry;
    EntryJson {
        created_at: timestamp(entry.created_at_ms),
        deal_id: entry.deal_id.as_str(),
        entry_id: entry.seq.to_id(key),
        hold_id: entry.hold.map(|seq| seq.to_id(key)),
        position: view.position,
        qty: entry.qty,
        resolved_at: entry.resolved_at_ms.map(timestamp),
        state: entry.state.as_str(),
        user_id: entry.user_id.as_str(),
    }
}

/// A deal's draw on the wire: the commitment always; the seed, the entries in log order, the
/// draw order and the winners once drawn, so that anyone can recompute it (docs/draw.md).
pub fn draw_json(view: &DrawView, key: HoldIdKey, now_ms: u64) -> serde_json::Value {
    let options = &view.options;
    let (Some(seed), Some(window_ms), Some(opens_ms)) =
        (options.draw_seed, options.draw_window_ms, view.spec.starts_at_ms)
    else {
        panic!("draw_json of a deal without a draw");
    };
    let closes_ms = opens_ms.saturating_add(window_ms);
    let state = match &view.record {
        Some(record) if record.closed => "drawn",
        Some(_) => "drawing",
        None if now_ms < opens_ms => "scheduled",
        None if now_ms < closes_ms => "open",
        None => "closed",
    };
    let mut answer = json!({
        "deal_id": view.spec.id.as_str(),
        "algorithm": draw::DRAW_ALGORITHM,
        "commitment": draw::hex(&draw::commitment(&seed)),
        "window_opens_at": timestamp(opens_ms),
        "window_closes_at": timestamp(closes_ms),
        "state": state,
        "entries": view.record.as_ref().map_or(view.entered, |r| r.entrants.len()),
        "seed": null,
        "drawn_at": null,
        "units": null,
        "entrants": null,
        "order": null,
        "winners": null,
    });
    if let Some(record) = view.record.as_ref().filter(|r| r.closed) {
        let id = |seq: EntrySeq| seq.to_id(key);
        answer["seed"] = json!(draw::hex(&seed));
        answer["drawn_at"] = json!(timestamp(record.at_ms));
        answer["units"] = json!(record.units);
        answer["entrants"] = record
            .entrants
            .iter()
            .map(|(seq, user, qty)| json!({ "entry_id": id(*seq), "user_id": user.as_str(), "qty": qty }))
            .collect();
        answer["order"] =
            record.order.iter().map(|i| json!(id(record.entrants[*i as usize].0))).collect();
        answer["winners"] = record.winners.iter().map(|seq| json!(id(*seq))).collect();
    }
    answer
}

pub fn reply<T: Serialize + ?Sized>(status: u16, body: &T) -> StoredReply {
    match serde_json::to_vec(body) {
        Ok(bytes) => StoredReply { status, body: Bytes::from(bytes), code: None },
        Err(e) => panic!("an answer always serializes: {e}"),
    }
}

/// The answer to a command's outcome. `created` is the status of a fresh creation (201).
pub fn outcome_reply(outcome: &Outcome, key: HoldIdKey) -> StoredReply {
    match outcome {
        Outcome::Deal(view) => reply(200, &deal_json(view)),
        Outcome::StreamEnded { stream_id, deals, holds_released } => reply(
            200,
            &json!({
                "stream_id": stream_id.as_str(),
                "deals_ended": deals.iter().map(deal_json).collect::<Vec<_>>(),
                "holds_released": holds_released,
            }),
        ),
        Outcome::Holds(holds) => reply(
            201,
            &json!({ "holds": holds.iter().map(|h| hold_json(h, key)).collect::<Vec<_>>() }),
        ),
        Outcome::Hold(view) => reply(200, &hold_json(view, key)),
        // 202: a new entry is a promise to try, not a hold; the user's existing one is 200.
        Outcome::Entry(view) => reply(if view.created { 202 } else { 200 }, &entry_json(view, key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_utc_with_milliseconds() {
        let ms = 1_800_000_000_123;
        let text = timestamp(ms);
        assert_eq!(text, "2027-01-15T08:00:00.123Z");
        assert_eq!(parse_timestamp("t", &text), Ok(ms));
        assert_eq!(parse_timestamp("t", "2027-01-15T09:00:00.123+01:00"), Ok(ms));
        assert!(parse_timestamp("t", "yesterday").is_err());
    }

    #[test]
    fn bodies_are_strict() {
        assert!(parse_body::<ReserveBody>(br#"{"user_id":"u","qty":1}"#).is_ok());
        assert!(parse_body::<ReserveBody>(br#"{"user_id":"u","qty":-1}"#).is_err());
        assert!(parse_body::<ReserveBody>(br#"{"user_id":"u","qty":"1"}"#).is_err());
        assert!(parse_body::<ReserveBody>(br#"{"user_id":"u","quantity":1}"#).is_err());
        assert!(parse_body::<ReserveBody>(br#"{"user_id":"u","qty":1"#).is_err());
        assert!(parse_body::<EmptyBody>(b"").is_ok());
        assert!(parse_body::<ReserveBody>(br#"["u", 1]"#).is_err());
        assert!(parse_body::<ConfirmBody>(b" []").is_err());
        assert!(parse_body::<StockBody>(b"[3]").is_err());
        assert!(parse_body::<ConfirmBody>(b"  ").is_ok());
    }
}
