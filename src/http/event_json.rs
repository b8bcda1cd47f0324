//! What the event stream (`GET /v1/events`) says of each decided change: one log record as one
//! JSON object. The one place that maps [`Event`] to JSON: its `match` names every variant
//! (no `_` arm), so a new kind of event does not build until it says what it sends.
//!
//! Every object has `type` (the kind, below), `position` (the record's log position, also the
//! SSE `id`) and `at` (when the server decided it, RFC 3339 UTC with milliseconds); the rest
//! depends on the kind. Ids are formatted as the rest of the API formats them (hold ids
//! through the data set's permutation, `HoldSeq::to_id`), times as RFC 3339 strings:
//!
//! | `type` | fields besides `type`, `position`, `at` |
//! |---|---|
//! | `deal_created` | `deal_id`, `stream_id`, `stock`, `starts_at`, `ends_at`, `per_user_limit`, `hold_ttl_ms`, `hold_ttl_ms_max` (absent settings are `null`) |
//! | `deal_paused`, `deal_resumed` | `deal_id` |
//! | `deals_ended` | `deals`: `[{deal_id, released_hold_ids}]`, one per deal ended (a deal's end, or its stream's), with the holds the end released |
//! | `stock_adjusted` | `deal_id`, `delta` (units added, negative for removed) |
//! | `reserved` | `holds`: each new hold as `GET /v1/holds/{id}` showed it then (one for a reserve, one per deal for a cart) |
//! | `confirmed` | `hold_id`, `qty` (units sold; fewer than the hold's for a partial confirm, the rest returned) |
//! | `released`, `expired` | `hold_id` |
//! | `extended` | `hold_id`, `expires_at` |
//! | `waitlist_joined` | `entry_id`, `deal_id`, `user_id`, `qty`, `state` (`waiting` on a waitlist, `entered` in a draw) |
//! | `offered` | `entry_id`, `hold` (the hold offered to it, `origin: "waitlist"`) |
//! | `waitlist_lapsed`, `waitlist_cancelled` | `entry_id` (a cancel of an offered entry also released its hold) |
//! | `drawn` | `deal_id`, `seed` (revealed with the draw), `algorithm`; the `offered` events up to `draw_closed` are its winners |
//! | `draw_closed` | `deal_id` |
//!
//! `deal_created` also carries `waitlist_max`, `offer_ttl_ms`, `draw_window_ms` and
//! `draw_commitment` (never the draw's seed).
//!
//! The resolutions (`confirmed`, `released`, `expired`, `extended`) carry the hold id only, as
//! the log records them: the deal, the user and the quantity are in the hold's `reserved`
//! event (and `GET /v1/holds/{id}` while the hold is retained). Nothing here reads the
//! current state, so the same position always renders the same bytes, whenever it is read.
//!
//! A record that changed nothing (`Event::Answered`, kept for a keyed request's retry) has no
//! object: the stream skips it, and positions have a gap there.

use livestock_core::command::HoldView;
use livestock_core::deal::DealSpec;
use livestock_core::draw;
use livestock_core::event::Event;
use livestock_core::hold::HoldState;
use livestock_core::ids::HoldIdKey;
use livestock_core::waitlist::DealOptions;
use serde_json::{json, Value};

use crate::http::wire::{hold_json, timestamp};

/// A deal's creation: its spec and options, the draw's commitment but never its seed.
fn deal_created(spec: &DealSpec, options: &DealOptions, stock: u64) -> Value {
    json!({
        "deal_id": spec.id.as_str(),
        "stream_id": spec.stream_id.as_ref().map(|s| s.as_str()),
        "stock": stock,
        "starts_at": spec.starts_at_ms.map(timestamp),
        "ends_at": spec.ends_at_ms.map(timestamp),
        "per_user_limit": spec.per_user_limit,
        "hold_ttl_ms": spec.hold_ttl_ms,
        "hold_ttl_ms_max": spec.hold_ttl_ms_max,
        "waitlist_max": options.waitlist_max,
        "offer_ttl_ms": options.has_waitlist().then_some(options.offer_ttl_ms),
        "draw_window_ms": options.draw_window_ms,
        "draw_commitment": options.draw_seed.map(|seed| draw::hex(&draw::commitment(&seed))),
    })
}

/// The JSON of the change recorded at `position` (decided at `at_ms`), or `None` for a record
/// that changed nothing.
pub fn event_json(position: u64, at_ms: u64, event: &Event, key: HoldIdKey) -> Option<Value> {
    let (kind, fields) = match event {
        Event::DealCreated { spec, stock } => {
            ("deal_created", deal_created(spec, &DealOptions::none(spec), *stock))
        }
        Event::DealOpened { spec, options, stock } => {
            ("deal_created", deal_created(spec, options, *stock))
        }
        Event::DealPaused { deal_id, at_ms: _ } => {
            ("deal_paused", json!({ "deal_id": deal_id.as_str() }))
        }
        Event::DealResumed { deal_id, at_ms: _ } => {
            ("deal_resumed", json!({ "deal_id": deal_id.as_str() }))
        }
        Event::DealsEnded { at_ms: _, deals } => {
            let deals: Vec<Value> = deals
                .iter()
                .map(|(deal_id, holds)| {
                    let released: Vec<String> = holds.iter().map(|seq| seq.to_id(key)).collect();
                    json!({ "deal_id": deal_id.as_str(), "released_hold_ids": released })
                })
                .collect();
            ("deals_ended", json!({ "deals": deals }))
        }
        Event::StockAdjusted { deal_id, delta, at_ms: _ } => {
            ("stock_adjusted", json!({ "deal_id": deal_id.as_str(), "delta": delta }))
        }
        Event::Reserved { holds } => {
            let holds: Vec<Value> = holds
                .iter()
                .map(|hold| {
                    let view =
                        HoldView { hold: hold.clone(), state: HoldState::Held, origin: None };
                    json!(hold_json(&view, key))
                })
                .collect();
            ("reserved", json!({ "holds": holds }))
        }
        Event::Confirmed { seq, qty, at_ms: _ } => {
            ("confirmed", json!({ "hold_id": seq.to_id(key), "qty": qty }))
        }
        Event::Released { seq, at_ms: _ } => ("released", json!({ "hold_id": seq.to_id(key) })),
        Event::Extended { seq, expires_at_ms, at_ms: _ } => (
            "extended",
            json!({ "hold_id": seq.to_id(key), "expires_at": timestamp(*expires_at_ms) }),
        ),
        Event::Expired { seq, at_ms: _ } => ("expired", json!({ "hold_id": seq.to_id(key) })),
        Event::Answered { at_ms: _ } => return None,
        Event::WaitlistJoined { entry } => (
            // `waiting` on a waitlist, or `entered` in a draw.
            "waitlist_joined",
            json!({
                "entry_id": entry.seq.to_id(key),
                "deal_id": entry.deal_id.as_str(),
                "user_id": entry.user_id.as_str(),
                "qty": entry.qty,
                "state": entry.state.as_str(),
            }),
        ),
        Event::Offered { entry, hold } => {
            let view =
                HoldView { hold: hold.clone(), state: HoldState::Held, origin: Some(*entry) };
            ("offered", json!({ "entry_id": entry.to_id(key), "hold": hold_json(&view, key) }))
        }
        Event::WaitlistLapsed { entry, at_ms: _ } => {
            ("waitlist_lapsed", json!({ "entry_id": entry.to_id(key) }))
        }
        Event::WaitlistCancelled { entry, at_ms: _ } => {
            ("waitlist_cancelled", json!({ "entry_id": entry.to_id(key) }))
        }
        // The seed is revealed here, with the draw: never before (a `deal_created` carries
        // only its commitment).
        Event::Drawn { deal_id, seed, at_ms: _ } => (
            "drawn",
            json!({
                "deal_id": deal_id.as_str(),
                "seed": draw::hex(seed),
                "algorithm": draw::DRAW_ALGORITHM,
            }),
        ),
        Event::DrawClosed { deal_id, at_ms: _ } => {
            ("draw_closed", json!({ "deal_id": deal_id.as_str() }))
        }
    };
    let mut object = match fields {
        Value::Object(object) => object,
        _ => unreachable!("every kind's fields are an object"),
    };
    object.insert("type".into(), kind.into());
    object.insert("position".into(), position.into());
    object.insert("at".into(), timestamp(at_ms).into());
    Some(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use livestock_core::hold::Hold;
    use livestock_core::ids::{DealId, EntrySeq, HoldSeq, StreamId, UserId};

    const SEED: [u8; 32] = [3; 32];

    const KEY: HoldIdKey = HoldIdKey(0x5EED);
    /// 2027-01-15T08:00:00.000Z.
    const T_MS: u64 = 1_800_000_000_000;

    fn render(event: &Event) -> Value {
        event_json(7, T_MS, event, KEY).expect("a change")
    }

    #[test]
    fn every_kind_has_its_shape() {
        let deal_id = DealId::parse("d1").unwrap();
        let spec = DealSpec {
            id: deal_id.clone(),
            stream_id: Some(StreamId::parse("s1").unwrap()),
            starts_at_ms: None,
            ends_at_ms: Some(T_MS + 1_000),
            per_user_limit: Some(2),
            hold_ttl_ms: 60_000,
            hold_ttl_ms_max: 120_000,
            created_at_ms: T_MS,
        };
        let hold = Hold {
            seq: HoldSeq(3),
            deal_id: deal_id.clone(),
            user_id: UserId::parse("u1").unwrap(),
            qty: 2,
            created_at_ms: T_MS,
            expires_at_ms: T_MS + 60_000,
            state: HoldState::Held,
            confirmed_qty: 0,
            resolved_at_ms: None,
        };
        let hold_id = HoldSeq(3).to_id(KEY);
        let entry_id = EntrySeq(9).to_id(KEY);
        let entry = livestock_core::waitlist::WaitEntry {
            seq: EntrySeq(9),
            deal_id: deal_id.clone(),
            user_id: UserId::parse("u1").unwrap(),
            qty: 2,
            created_at_ms: T_MS,
            state: livestock_core::waitlist::EntryState::Waiting,
            hold: None,
            resolved_at_ms: None,
        };
        let head =
            |kind: &str| json!({ "type": kind, "position": 7, "at": "2027-01-15T08:00:00.000Z" });
        let with = |kind: &str, fields: Value| {
            let mut all = head(kind);
            for (k, v) in fields.as_object().unwrap() {
                all[k] = v.clone();
            }
            all
        };
        let cases = [
            (
                Event::DealCreated { spec: spec.clone(), stock: 10 },
                with(
                    "deal_created",
                    json!({
                        "deal_id": "d1", "stream_id": "s1", "stock": 10, "starts_at": null,
                        "ends_at": "2027-01-15T08:00:01.000Z", "per_user_limit": 2,
                        "hold_ttl_ms": 60_000, "hold_ttl_ms_max": 120_000,
                        "waitlist_max": 0, "offer_ttl_ms": null, "draw_window_ms": null,
                        "draw_commitment": null,
                    }),
                ),
            ),
            (
                Event::DealOpened {
                    spec: spec.clone(),
                    options: DealOptions {
                        waitlist_max: 5,
                        offer_ttl_ms: 30_000,
                        draw_window_ms: Some(2_000),
                        draw_seed: Some(SEED),
                    },
                    stock: 10,
                },
                with(
                    "deal_created",
                    json!({
                        "deal_id": "d1", "stream_id": "s1", "stock": 10, "starts_at": null,
                        "ends_at": "2027-01-15T08:00:01.000Z", "per_user_limit": 2,
                        "hold_ttl_ms": 60_000, "hold_ttl_ms_max": 120_000,
                        "waitlist_max": 5, "offer_ttl_ms": 30_000, "draw_window_ms": 2_000,
                        "draw_commitment": draw::hex(&draw::commitment(&SEED)),
                    }),
                ),
            ),
            (
                Event::WaitlistJoined { entry: entry.clone() },
                with(
                    "waitlist_joined",
                    json!({
                        "entry_id": entry_id, "deal_id": "d1", "user_id": "u1", "qty": 2,
                        "state": "waiting",
                    }),
                ),
            ),
            (
                Event::Offered { entry: EntrySeq(9), hold: hold.clone() },
                with(
                    "offered",
                    json!({ "entry_id": entry_id, "hold": {
                        "hold_id": hold_id, "deal_id": "d1", "user_id": "u1", "qty": 2,
                        "state": "held", "confirmed_qty": 0, "created_at": "2027-01-15T08:00:00.000Z",
                        "expires_at": "2027-01-15T08:01:00.000Z", "resolved_at": null,
                        "origin": "waitlist", "entry_id": entry_id,
                    }}),
                ),
            ),
            (
                Event::WaitlistLapsed { entry: EntrySeq(9), at_ms: T_MS },
                with("waitlist_lapsed", json!({ "entry_id": entry_id })),
            ),
            (
                Event::WaitlistCancelled { entry: EntrySeq(9), at_ms: T_MS },
                with("waitlist_cancelled", json!({ "entry_id": entry_id })),
            ),
            (
                Event::Drawn { deal_id: deal_id.clone(), seed: SEED, at_ms: T_MS },
                with(
                    "drawn",
                    json!({ "deal_id": "d1", "seed": draw::hex(&SEED), "algorithm": "sha256-rank-v1" }),
                ),
            ),
            (
                Event::DrawClosed { deal_id: deal_id.clone(), at_ms: T_MS },
                with("draw_closed", json!({ "deal_id": "d1" })),
            ),
            (
                Event::DealPaused { deal_id: deal_id.clone(), at_ms: T_MS },
                with("deal_paused", json!({ "deal_id": "d1" })),
            ),
            (
                Event::DealResumed { deal_id: deal_id.clone(), at_ms: T_MS },
                with("deal_resumed", json!({ "deal_id": "d1" })),
            ),
            (
                Event::DealsEnded { at_ms: T_MS, deals: vec![(deal_id.clone(), vec![HoldSeq(3)])] },
                with(
                    "deals_ended",
                    json!({ "deals": [{ "deal_id": "d1", "released_hold_ids": [hold_id] }] }),
                ),
            ),
            (
                Event::StockAdjusted { deal_id, delta: -4, at_ms: T_MS },
                with("stock_adjusted", json!({ "deal_id": "d1", "delta": -4 })),
            ),
            (
                Event::Reserved { holds: vec![hold] },
                with(
                    "reserved",
                    json!({ "holds": [{
                        "hold_id": hold_id, "deal_id": "d1", "user_id": "u1", "qty": 2,
                        "state": "held", "confirmed_qty": 0, "created_at": "2027-01-15T08:00:00.000Z",
                        "expires_at": "2027-01-15T08:01:00.000Z", "resolved_at": null,
                        "origin": "reserve",
                    }] }),
                ),
            ),
            (
                Event::Confirmed { seq: HoldSeq(3), qty: 1, at_ms: T_MS },
                with("confirmed", json!({ "hold_id": hold_id, "qty": 1 })),
            ),
            (
                Event::Released { seq: HoldSeq(3), at_ms: T_MS },
                with("released", json!({ "hold_id": hold_id })),
            ),
            (
                Event::Extended { seq: HoldSeq(3), expires_at_ms: T_MS + 5_000, at_ms: T_MS },
                with(
                    "extended",
                    json!({ "hold_id": hold_id, "expires_at": "2027-01-15T08:00:05.000Z" }),
                ),
            ),
            (
                Event::Expired { seq: HoldSeq(3), at_ms: T_MS },
                with("expired", json!({ "hold_id": hold_id })),
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(render(&event), expected, "{event:?}");
        }
        assert_eq!(event_json(8, T_MS, &Event::Answered { at_ms: T_MS }, KEY), None);
    }
}
