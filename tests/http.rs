//! Guards the HTTP/JSON contract over real sockets against drift and regressions.
//!
//! Every endpoint, every error code with its status and `{"error":{"code","message"}}` shape,
//! that refused requests change nothing, idempotent retries (byte-identical replays, per-user
//! scope, concurrent retries), body size limits, and expiry driven by an injected clock.

mod common;

use std::sync::{Arc, Barrier};

use common::{
    assert_error, counters_of, ghost_hold_id, str_of, Api, Reply, IDEMPOTENCY_WINDOW_MS,
    RETENTION_MS, T0_TEXT,
};
use livestock_core::limits::DEAL_STOCK_UNITS_MAX;
use serde_json::{json, Value};

fn hold_path(hold: &Value, action: &str) -> String {
    let id = str_of(hold, "hold_id");
    if action.is_empty() {
        format!("/v1/holds/{id}")
    } else {
        format!("/v1/holds/{id}/{action}")
    }
}

/// Runs a request that must be refused, comparing every deal and the given holds before and
/// after it.
#[track_caller]
fn refused(api: &Api, status: u16, code: &str, holds: &[&Value], send: impl FnOnce() -> Reply) {
    let deals_before = api.deals();
    let holds_before: Vec<Value> = holds.iter().map(|h| api.hold(str_of(h, "hold_id"))).collect();
    let reply = send();
    assert_error(&reply, status, code);
    assert_eq!(api.deals(), deals_before, "a refused request ({code}) changed a deal");
    let holds_after: Vec<Value> = holds.iter().map(|h| api.hold(str_of(h, "hold_id"))).collect();
    assert_eq!(holds_after, holds_before, "a refused request ({code}) changed a hold");
}

// ------------------------------------------------------------------ deals

#[test]
fn deal_endpoints_answer_with_the_deal() {
    let api = Api::start();
    let created = api.create_deal(json!({
        "id": "drop-1",
        "stock": 10,
        "stream_id": "live-7",
        "ends_at": "2027-01-15T09:00:00Z",
        "per_user_limit": 2,
        "hold_ttl_ms": 30_000,
        "hold_ttl_ms_max": 120_000,
    }));
    assert_eq!(created["id"], "drop-1");
    assert_eq!(created["stream_id"], "live-7");
    assert_eq!(created["state"], "live");
    assert_eq!(counters_of(&created), (10, 10, 0, 0));
    assert_eq!(created["starts_at"], Value::Null);
    assert_eq!(created["ends_at"], "2027-01-15T09:00:00.000Z");
    assert_eq!(created["per_user_limit"], 2);
    assert_eq!(created["hold_ttl_ms"], 30_000);
    assert_eq!(created["hold_ttl_ms_max"], 120_000);
    assert_eq!(created["created_at"], T0_TEXT);
    assert_eq!(api.deal("drop-1"), created);

    let other = api.simple_deal("a-first", 3);
    assert_eq!(api.deals(), json!({ "deals": [other, created] }), "sorted by id");

    let paused = api.post("/v1/deals/drop-1/pause", "");
    assert_eq!(paused.status, 200, "{}", paused.raw);
    assert_eq!(paused.body["state"], "paused");
    assert_eq!(api.deal("drop-1")["state"], "paused");
    // Pausing a paused deal is a no-op answer, not an error.
    assert_eq!(api.post("/v1/deals/drop-1/pause", "{}").body, paused.body);

    let resumed = api.post("/v1/deals/drop-1/resume", "");
    assert_eq!(resumed.status, 200, "{}", resumed.raw);
    assert_eq!(resumed.body["state"], "live");
    assert_eq!(api.post("/v1/deals/drop-1/resume", "").status, 200);

    let more = api.post_json("/v1/deals/drop-1/stock", &json!({ "delta": 5 }));
    assert_eq!(more.status, 200, "{}", more.raw);
    assert_eq!(counters_of(&more.body), (15, 15, 0, 0));
    let less = api.post_json("/v1/deals/drop-1/stock", &json!({ "delta": -4 }));
    assert_eq!(less.status, 200, "{}", less.raw);
    assert_eq!(counters_of(&less.body), (11, 11, 0, 0));

    let ended = api.post("/v1/deals/drop-1/end", "");
    assert_eq!(ended.status, 200, "{}", ended.raw);
    assert_eq!(ended.body["state"], "ended");
    // Ending again answers with the deal as it is.
    let again = api.post("/v1/deals/drop-1/end", "");
    assert_eq!((again.status, &again.body), (200, &ended.body));
    assert_eq!(api.deal("drop-1"), ended.body);

    let health = api.get("/healthz");
    assert_eq!((health.status, health.body), (200, json!({ "status": "ok" })));
}

/// The stock limit (2^40 - 1) over HTTP: a deal at it is created, one unit more is refused
/// with `invalid_request` (creating, and adding stock); a billion-unit deal reserves,
/// confirms, releases and takes stock like a small one.
#[test]
fn a_deal_holds_up_to_the_stock_limit() {
    let api = Api::start();
    let max = DEAL_STOCK_UNITS_MAX;
    assert_eq!(max, 1_099_511_627_775);
    refused(&api, 400, "invalid_request", &[], || {
        api.post_json("/v1/deals", &json!({ "id": "over", "stock": max + 1 }))
    });
    let at_max = api.simple_deal("max", max);
    assert_eq!(counters_of(&at_max), (max, max, 0, 0));
    let hold = api.reserve("max", "u1", 1_000);
    assert_eq!(api.counters("max"), (max, max - 1_000, 1_000, 0));
    refused(&api, 400, "invalid_request", &[&hold], || {
        api.post_json("/v1/deals/max/stock", &json!({ "delta": 1 }))
    });
    assert_eq!(api.post(&hold_path(&hold, "confirm"), "").status, 200);
    assert_eq!(api.counters("max"), (max, max - 1_000, 0, 1_000));

    let billion = 1_000_000_000;
    api.simple_deal("big", billion);
    let first = api.reserve("big", "u1", 700);
    let second = api.reserve("big", "u2", 300);
    assert_eq!(api.counters("big"), (billion, billion - 1_000, 1_000, 0));
    let partial = api.post_json(&hold_path(&first, "confirm"), &json!({ "qty": 600 }));
    assert_eq!(partial.status, 200, "{}", partial.raw);
    assert_eq!(api.post(&hold_path(&second, "release"), "").status, 200);
    assert_eq!(api.counters("big"), (billion, billion - 600, 0, 600));
    let more = api.post_json("/v1/deals/big/stock", &json!({ "delta": max - billion }));
    assert_eq!(counters_of(&more.body), (max, max - 600, 0, 600), "{}", more.raw);
    let less = api
        .post_json("/v1/deals/big/stock", &json!({ "delta": -i64::try_from(max - 600).unwrap() }));
    assert_eq!(counters_of(&less.body), (600, 0, 0, 600), "{}", less.raw);
}

#[test]
fn stock_changes_only_touch_available_units() {
    let api = Api::start();
    api.simple_deal("d", 10);
    let hold = api.reserve("d", "u1", 4);
    let reply = api.post_json("/v1/deals/d/stock", &json!({ "delta": -6 }));
    assert_eq!(reply.status, 200, "{}", reply.raw);
    assert_eq!(counters_of(&reply.body), (4, 0, 4, 0));
    // Held units belong to a buyer: they cannot be removed.
    refused(&api, 409, "insufficient_stock", &[&hold], || {
        api.post_json("/v1/deals/d/stock", &json!({ "delta": -1 }))
    });
    refused(&api, 400, "invalid_request", &[&hold], || {
        api.post_json("/v1/deals/d/stock", &json!({ "delta": 0 }))
    });
    refused(&api, 400, "invalid_request", &[&hold], || {
        // Stock 4 + (max - 3): one unit past the limit.
        api.post_json("/v1/deals/d/stock", &json!({ "delta": DEAL_STOCK_UNITS_MAX - 3 }))
    });
    refused(&api, 400, "invalid_request", &[&hold], || {
        api.post_json("/v1/deals/d/stock", &json!({ "delta": "5" }))
    });
    refused(&api, 400, "invalid_request", &[&hold], || api.post("/v1/deals/d/stock", "{}"));
    refused(&api, 404, "unknown_deal", &[&hold], || {
        api.post_json("/v1/deals/nope/stock", &json!({ "delta": 1 }))
    });
    assert_eq!(api.post("/v1/deals/d/end", "").status, 200);
    refused(&api, 409, "deal_ended", &[], || {
        api.post_json("/v1/deals/d/stock", &json!({ "delta": 1 }))
    });
}

#[test]
fn admin_actions_on_an_ended_deal_are_refused() {
    let api = Api::start();
    api.simple_deal("d", 5);
    assert_eq!(api.post("/v1/deals/d/end", "").status, 200);
    refused(&api, 409, "deal_ended", &[], || api.post("/v1/deals/d/pause", ""));
    refused(&api, 409, "deal_ended", &[], || api.post("/v1/deals/d/resume", ""));
    refused(&api, 409, "deal_ended", &[], || api.reserve_reply("d", "u", 1));
    for action in ["pause", "resume", "end"] {
        refused(&api, 404, "unknown_deal", &[], || {
            api.post(&format!("/v1/deals/ghost/{action}"), "")
        });
    }
    refused(&api, 404, "unknown_deal", &[], || api.get("/v1/deals/ghost"));
}

// ------------------------------------------------------------------ reserve, holds

#[test]
fn reserve_answers_201_with_the_hold() {
    let api = Api::start();
    api.create_deal(json!({ "id": "d", "stock": 10, "hold_ttl_ms": 60_000 }));
    let reply = api.reserve_reply("d", "user-1", 3);
    assert_eq!(reply.status, 201, "{}", reply.raw);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    let hold = &reply.body;
    let hold_id = str_of(hold, "hold_id");
    assert!(
        hold_id.len() == 17
            && hold_id.starts_with('h')
            && hold_id[1..].bytes().all(|c| c.is_ascii_hexdigit()),
        "{hold_id}"
    );
    assert_eq!(hold["deal_id"], "d");
    assert_eq!(hold["user_id"], "user-1");
    assert_eq!(hold["qty"], 3);
    assert_eq!(hold["state"], "held");
    assert_eq!(hold["created_at"], T0_TEXT);
    assert_eq!(hold["expires_at"], "2027-01-15T08:01:00.000Z");
    assert_eq!(api.hold(hold_id), *hold);
    assert_eq!(api.counters("d"), (10, 7, 3, 0));

    // A ttl_ms in the request wins over the deal's default.
    let short = api
        .post_json("/v1/deals/d/reserve", &json!({ "user_id": "u2", "qty": 1, "ttl_ms": 5_000 }));
    assert_eq!(short.status, 201, "{}", short.raw);
    assert_eq!(short.body["expires_at"], "2027-01-15T08:00:05.000Z");
    assert_ne!(short.body["hold_id"], hold["hold_id"]);
}

#[test]
fn cart_reserve_makes_one_hold_per_deal_with_lines_summed() {
    let api = Api::start();
    api.simple_deal("a", 10);
    api.simple_deal("b", 10);
    let reply = api.post_json(
        "/v1/cart/reserve",
        &json!({
            "user_id": "u",
            "ttl_ms": 20_000,
            "lines": [
                { "deal_id": "b", "qty": 2 },
                { "deal_id": "a", "qty": 1 },
                { "deal_id": "b", "qty": 3 },
            ],
        }),
    );
    assert_eq!(reply.status, 201, "{}", reply.raw);
    let holds = reply.body["holds"].as_array().expect("holds");
    assert_eq!(holds.len(), 2, "{}", reply.raw);
    // In the order of first mention.
    assert_eq!((&holds[0]["deal_id"], &holds[0]["qty"]), (&json!("b"), &json!(5)));
    assert_eq!((&holds[1]["deal_id"], &holds[1]["qty"]), (&json!("a"), &json!(1)));
    for hold in holds {
        assert_eq!(hold["user_id"], "u");
        assert_eq!(hold["state"], "held");
        assert_eq!(hold["expires_at"], "2027-01-15T08:00:20.000Z");
        assert_eq!(api.hold(str_of(hold, "hold_id")), *hold);
    }
    assert_ne!(holds[0]["hold_id"], holds[1]["hold_id"]);
    assert_eq!(api.counters("a"), (10, 9, 1, 0));
    assert_eq!(api.counters("b"), (10, 5, 5, 0));
}

#[test]
fn cart_lines_for_one_deal_are_summed_against_the_per_user_limit() {
    let api = Api::start();
    api.create_deal(json!({ "id": "d", "stock": 100, "per_user_limit": 5 }));
    let lines = json!({
        "user_id": "u",
        "lines": [{ "deal_id": "d", "qty": 3 }, { "deal_id": "d", "qty": 3 }],
    });
    refused(&api, 409, "per_user_limit", &[], || api.post_json("/v1/cart/reserve", &lines));
    // Nothing was counted against the user either: the whole limit is still there.
    api.reserve("d", "u", 5);
}

#[test]
fn cart_lines_for_one_deal_are_summed_against_the_stock() {
    let api = Api::start();
    api.simple_deal("d", 5);
    let lines = json!({
        "user_id": "u",
        "lines": [{ "deal_id": "d", "qty": 3 }, { "deal_id": "d", "qty": 3 }],
    });
    refused(&api, 409, "insufficient_stock", &[], || api.post_json("/v1/cart/reserve", &lines));
    assert_eq!(api.counters("d"), (5, 5, 0, 0));
}

#[test]
fn a_cart_is_all_or_nothing() {
    let api = Api::start();
    api.create_deal(json!({ "id": "first", "stock": 10, "per_user_limit": 3 }));
    api.simple_deal("scarce", 2);
    api.create_deal(json!({ "id": "limited", "stock": 10, "per_user_limit": 2 }));
    api.simple_deal("paused", 10);
    assert_eq!(api.post("/v1/deals/paused/pause", "").status, 200);
    api.simple_deal("empty", 1);
    api.reserve("empty", "someone", 1);
    api.reserve("limited", "u", 1);
    let cart = |second: &str, qty: u32| {
        json!({
            "user_id": "u",
            "lines": [{ "deal_id": "first", "qty": 3 }, { "deal_id": second, "qty": qty }],
        })
    };
    for (body, status, code) in [
        (cart("scarce", 3), 409, "insufficient_stock"),
        (cart("empty", 1), 409, "sold_out"),
        (cart("paused", 1), 409, "deal_paused"),
        (cart("limited", 2), 409, "per_user_limit"),
        (cart("ghost", 1), 404, "unknown_deal"),
    ] {
        refused(&api, status, code, &[], || api.post_json("/v1/cart/reserve", &body));
        assert_eq!(api.counters("first"), (10, 10, 0, 0), "after {code}");
    }
    // The user's count on the first deal is untouched too: its whole limit is still there.
    api.reserve("first", "u", 3);
}

#[test]
fn confirm_sells_the_hold_and_a_retry_gets_the_same_answer() {
    let api = Api::start();
    api.simple_deal("d", 10);
    let hold = api.reserve("d", "u", 3);
    let confirmed = api.post(&hold_path(&hold, "confirm"), "");
    assert_eq!(confirmed.status, 200, "{}", confirmed.raw);
    assert_eq!(confirmed.body["hold_id"], hold["hold_id"]);
    assert_eq!(confirmed.body["state"], "confirmed");
    assert_eq!(confirmed.body["qty"], 3);
    assert_eq!(confirmed.body["confirmed_qty"], 3);
    assert_eq!(api.counters("d"), (10, 7, 0, 3));
    assert_eq!(api.hold(str_of(&hold, "hold_id")), confirmed.body);

    let again = api.post(&hold_path(&hold, "confirm"), "");
    assert_eq!((again.status, &again.body), (200, &confirmed.body));
    let again = api.post_json(&hold_path(&hold, "confirm"), &json!({ "qty": 3 }));
    assert_eq!((again.status, &again.body), (200, &confirmed.body));
    assert_eq!(api.counters("d"), (10, 7, 0, 3));

    refused(&api, 409, "hold_confirmed", &[&hold], || api.post(&hold_path(&hold, "release"), ""));
    refused(&api, 409, "hold_confirmed", &[&hold], || {
        api.post_json(&hold_path(&hold, "confirm"), &json!({ "qty": 2 }))
    });
    refused(&api, 409, "hold_confirmed", &[&hold], || {
        api.post_json(&hold_path(&hold, "extend"), &json!({ "ttl_ms": 5_000 }))
    });
}

#[test]
fn partial_confirm_sells_qty_and_returns_the_rest() {
    let api = Api::start();
    api.create_deal(json!({ "id": "d", "stock": 10, "per_user_limit": 4 }));
    let hold = api.reserve("d", "u", 4);
    refused(&api, 400, "invalid_request", &[&hold], || {
        api.post_json(&hold_path(&hold, "confirm"), &json!({ "qty": 5 }))
    });
    refused(&api, 400, "invalid_request", &[&hold], || {
        api.post_json(&hold_path(&hold, "confirm"), &json!({ "qty": 0 }))
    });
    let confirmed = api.post_json(&hold_path(&hold, "confirm"), &json!({ "qty": 3 }));
    assert_eq!(confirmed.status, 200, "{}", confirmed.raw);
    assert_eq!(confirmed.body["state"], "confirmed");
    assert_eq!(confirmed.body["qty"], 4);
    assert_eq!(confirmed.body["confirmed_qty"], 3);
    assert_eq!(api.counters("d"), (10, 7, 0, 3));
    // The unsold unit went back to the user's allowance too: 3 bought, 1 more allowed.
    assert_error(&api.reserve_reply("d", "u", 2), 409, "per_user_limit");
    api.reserve("d", "u", 1);
}

#[test]
fn release_returns_the_units_and_a_retry_gets_the_same_answer() {
    let api = Api::start();
    api.create_deal(json!({ "id": "d", "stock": 5, "per_user_limit": 2 }));
    let hold = api.reserve("d", "u", 2);
    assert_eq!(api.counters("d"), (5, 3, 2, 0));
    let released = api.post(&hold_path(&hold, "release"), "");
    assert_eq!(released.status, 200, "{}", released.raw);
    assert_eq!(released.body["state"], "released");
    assert_eq!(released.body["hold_id"], hold["hold_id"]);
    assert_eq!(api.counters("d"), (5, 5, 0, 0));
    assert_eq!(api.hold(str_of(&hold, "hold_id")), released.body);

    let again = api.post(&hold_path(&hold, "release"), "{}");
    assert_eq!((again.status, &again.body), (200, &released.body));
    assert_eq!(api.counters("d"), (5, 5, 0, 0));

    refused(&api, 409, "hold_released", &[&hold], || api.post(&hold_path(&hold, "confirm"), ""));
    refused(&api, 409, "hold_released", &[&hold], || {
        api.post_json(&hold_path(&hold, "extend"), &json!({ "ttl_ms": 5_000 }))
    });
    // The user's allowance came back with the units.
    api.reserve("d", "u", 2);
}

#[test]
fn extend_moves_the_expiry_within_the_deal_maximum() {
    let api = Api::start();
    api.create_deal(json!({
        "id": "d", "stock": 5, "hold_ttl_ms": 10_000, "hold_ttl_ms_max": 60_000,
    }));
    let hold = api.reserve("d", "u", 1);
    assert_eq!(hold["expires_at"], "2027-01-15T08:00:10.000Z");
    api.clock.advance_ms(5_000);
    let extended = api.post_json(&hold_path(&hold, "extend"), &json!({ "ttl_ms": 30_000 }));
    assert_eq!(extended.status, 200, "{}", extended.raw);
    assert_eq!(extended.body["state"], "held");
    assert_eq!(extended.body["expires_at"], "2027-01-15T08:00:35.000Z");
    assert_eq!(api.hold(str_of(&hold, "hold_id")), extended.body);

    // Asking for an earlier expiry changes nothing and is not an error.
    let shorter = api.post_json(&hold_path(&hold, "extend"), &json!({ "ttl_ms": 2_000 }));
    assert_eq!((shorter.status, &shorter.body), (200, &extended.body));

    // created_at + hold_ttl_ms_max = 08:01:00 is the limit: 55 s from now reaches it exactly.
    let refusals: [(Value, u16, &str); 4] = [
        (json!({ "ttl_ms": 55_001 }), 409, "hold_ttl_exceeded"),
        (json!({ "ttl_ms": 999 }), 400, "invalid_request"),
        (json!({ "ttl_ms": -1 }), 400, "invalid_request"),
        (json!({}), 400, "invalid_request"),
    ];
    for (body, status, code) in refusals {
        refused(&api, status, code, &[&hold], || api.post_json(&hold_path(&hold, "extend"), &body));
    }
    let max = api.post_json(&hold_path(&hold, "extend"), &json!({ "ttl_ms": 55_000 }));
    assert_eq!(max.status, 200, "{}", max.raw);
    assert_eq!(max.body["expires_at"], "2027-01-15T08:01:00.000Z");
    assert_eq!(api.counters("d"), (5, 4, 1, 0));
}

#[test]
fn ending_a_stream_ends_its_deals_and_releases_their_holds() {
    let api = Api::start();
    api.create_deal(json!({ "id": "s-a", "stock": 5, "stream_id": "show" }));
    api.create_deal(json!({ "id": "s-b", "stock": 5, "stream_id": "show" }));
    api.create_deal(json!({ "id": "other", "stock": 5, "stream_id": "another-show" }));
    let h1 = api.reserve("s-a", "u1", 2);
    let h2 = api.reserve("s-b", "u2", 1);
    let h3 = api.reserve("s-b", "u3", 1);
    let confirmed = api.reserve("s-a", "u4", 1);
    assert_eq!(api.post(&hold_path(&confirmed, "confirm"), "").status, 200);
    let untouched = api.reserve("other", "u1", 1);

    let reply = api.post("/v1/streams/show/end", "");
    assert_eq!(reply.status, 200, "{}", reply.raw);
    assert_eq!(reply.body["stream_id"], "show");
    assert_eq!(reply.body["holds_released"], 3);
    let deals = reply.body["deals_ended"].as_array().expect("deals_ended");
    let ids: Vec<&str> = deals.iter().map(|d| str_of(d, "id")).collect();
    assert_eq!(ids, ["s-a", "s-b"]);
    assert!(deals.iter().all(|d| d["state"] == "ended"), "{}", reply.raw);
    // The answer shows the units back, as a later read does.
    assert_eq!(counters_of(&deals[0]), (5, 4, 0, 1));
    assert_eq!(counters_of(&deals[1]), (5, 5, 0, 0));
    assert_eq!(api.deal("s-a"), deals[0]);
    assert_eq!(api.deal("s-b"), deals[1]);
    for hold in [&h1, &h2, &h3] {
        assert_eq!(api.hold(str_of(hold, "hold_id"))["state"], "released");
    }
    assert_eq!(api.hold(str_of(&confirmed, "hold_id"))["state"], "confirmed");
    assert_eq!(api.hold(str_of(&untouched, "hold_id"))["state"], "held");
    assert_eq!(api.deal("other")["state"], "live");
    assert_error(&api.reserve_reply("s-a", "u9", 1), 409, "deal_ended");

    // Ending it again releases nothing more.
    let again = api.post("/v1/streams/show/end", "");
    assert_eq!(again.status, 200, "{}", again.raw);
    assert_eq!(again.body["holds_released"], 0);
    refused(&api, 404, "unknown_stream", &[&untouched], || {
        api.post("/v1/streams/no-such-show/end", "")
    });
    refused(&api, 400, "invalid_request", &[&untouched], || {
        api.post(&format!("/v1/streams/{}/end", "s".repeat(65)), "")
    });
}

// ------------------------------------------------------------------ routing and bodies

#[test]
fn unknown_routes_and_wrong_methods() {
    let api = Api::start();
    api.simple_deal("d", 1);
    for path in ["/v1/nope", "/v1/deals/d/explode", "/v1/holds/x/y/z", "/", "/v2/deals"] {
        assert_error(&api.get(path), 404, "unknown_route");
        assert_error(&api.post(path, "{}"), 404, "unknown_route");
    }
    let cases = [
        ("DELETE", "/v1/deals", "GET, POST"),
        ("PUT", "/v1/deals/d", "GET"),
        ("GET", "/v1/deals/d/reserve", "POST"),
        ("GET", "/v1/cart/reserve", "POST"),
        ("POST", "/v1/holds/h0000000000000001", "GET"),
        ("GET", "/v1/streams/s/end", "POST"),
        ("POST", "/healthz", "GET"),
    ];
    for (method, path, allow) in cases {
        let reply = api.request(method, path, None, None);
        assert_error(&reply, 405, "method_not_allowed");
        assert_eq!(reply.allow.as_deref(), Some(allow), "{method} {path}");
    }
    assert_eq!(api.counters("d"), (1, 1, 0, 0));
}

#[test]
fn malformed_requests_are_invalid_and_change_nothing() {
    let api = Api::start();
    api.create_deal(json!({ "id": "d", "stock": 10, "per_user_limit": 5 }));
    let hold = api.reserve("d", "u", 2);
    let hold_id = str_of(&hold, "hold_id").to_owned();
    let long_deal = "d".repeat(65);
    let long_user = "u".repeat(129);
    let cases: Vec<(String, String)> = vec![
        // create
        ("/v1/deals".into(), r#"{"id":"x","stock":1"#.into()),
        ("/v1/deals".into(), "not json".into()),
        ("/v1/deals".into(), "[]".into()),
        ("/v1/deals".into(), "".into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":"1"}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":-1}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":1.5}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":1099511627776}"#.into()),
        ("/v1/deals".into(), r#"{"id":7,"stock":1}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":1,"colour":"red"}"#.into()),
        ("/v1/deals".into(), format!(r#"{{"id":"{long_deal}","stock":1}}"#)),
        ("/v1/deals".into(), r#"{"id":"","stock":1}"#.into()),
        ("/v1/deals".into(), r#"{"id":"a/b","stock":1}"#.into()),
        ("/v1/deals".into(), r#"{"id":"a b","stock":1}"#.into()),
        ("/v1/deals".into(), r#"{"id":"é","stock":1}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":1,"stream_id":"a b"}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":1,"per_user_limit":0}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":1,"hold_ttl_ms":999}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":1,"hold_ttl_ms_max":86400001}"#.into()),
        (
            "/v1/deals".into(),
            r#"{"id":"x","stock":1,"hold_ttl_ms":60000,"hold_ttl_ms_max":30000}"#.into(),
        ),
        ("/v1/deals".into(), r#"{"id":"x","stock":1,"starts_at":"tomorrow"}"#.into()),
        ("/v1/deals".into(), r#"{"id":"x","stock":1,"starts_at":"1969-12-31T00:00:00Z"}"#.into()),
        (
            "/v1/deals".into(),
            json!({
                "id": "x", "stock": 1,
                "starts_at": "2027-01-15T10:00:00Z", "ends_at": "2027-01-15T09:00:00Z",
            })
            .to_string(),
        ),
        // reserve
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","qty":0}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","qty":-1}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","qty":1001}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","qty":"1"}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","qty":1.5}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","quantity":1}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u"}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":42,"qty":1}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"","qty":1}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"a b","qty":1}"#.into()),
        ("/v1/deals/d/reserve".into(), format!(r#"{{"user_id":"{long_user}","qty":1}}"#)),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","qty":1,"ttl_ms":999}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","qty":1,"ttl_ms":86400001}"#.into()),
        ("/v1/deals/d/reserve".into(), r#"{"user_id":"u","qty":1"#.into()),
        (format!("/v1/deals/{long_deal}/reserve"), r#"{"user_id":"u","qty":1}"#.into()),
        ("/v1/deals/a%20b/reserve".into(), r#"{"user_id":"u","qty":1}"#.into()),
        ("/v1/deals/a~b/reserve".into(), r#"{"user_id":"u","qty":1}"#.into()),
        // cart
        ("/v1/cart/reserve".into(), r#"{"user_id":"u","lines":[]}"#.into()),
        ("/v1/cart/reserve".into(), r#"{"user_id":"u","lines":{}}"#.into()),
        ("/v1/cart/reserve".into(), r#"{"user_id":"u","lines":[{"deal_id":"d","qty":0}]}"#.into()),
        (
            "/v1/cart/reserve".into(),
            r#"{"user_id":"u","lines":[{"deal_id":"d","qty":600},{"deal_id":"d","qty":401}]}"#
                .into(),
        ),
        (
            "/v1/cart/reserve".into(),
            r#"{"user_id":"u","lines":[{"deal_id":"d","qty":1,"price":3}]}"#.into(),
        ),
        (
            "/v1/cart/reserve".into(),
            r#"{"user_id":"u","lines":[{"deal_id":"a/b","qty":1}]}"#.into(),
        ),
        (
            "/v1/cart/reserve".into(),
            json!({ "user_id": "u", "lines": vec![json!({ "deal_id": "d", "qty": 1 }); 33] })
                .to_string(),
        ),
        // admin with bodies that must be empty
        ("/v1/deals/d/pause".into(), r#"{"now":true}"#.into()),
        ("/v1/deals/d/end".into(), "[1]".into()),
        (format!("/v1/deals/{long_deal}/pause"), "".into()),
        // holds
        ("/v1/holds/h123/confirm".into(), "".into()),
        ("/v1/holds/x0000000000000001/confirm".into(), "".into()),
        ("/v1/holds/h000000000000000G/release".into(), "".into()),
        ("/v1/holds/H0000000000000001/release".into(), "".into()),
        ("/v1/holds/h00000000000000001/extend".into(), r#"{"ttl_ms":5000}"#.into()),
        (format!("/v1/holds/{hold_id}/confirm"), r#"{"qty":-1}"#.into()),
        (format!("/v1/holds/{hold_id}/confirm"), r#"{"qty":"2"}"#.into()),
        (format!("/v1/holds/{hold_id}/confirm"), r#"{"quantity":2}"#.into()),
        (format!("/v1/holds/{hold_id}/release"), r#"{"reason":"x"}"#.into()),
        (format!("/v1/holds/{hold_id}/extend"), r#"{"ttl_ms":"5000"}"#.into()),
        (format!("/v1/holds/{hold_id}/extend"), "".into()),
    ];
    for (path, body) in &cases {
        refused(&api, 400, "invalid_request", &[&hold], || api.post(path, body));
    }
    for path in [format!("/v1/deals/{long_deal}"), "/v1/holds/h123".to_owned()] {
        refused(&api, 400, "invalid_request", &[&hold], || api.get(&path));
    }
    // No deal other than `d` came into being, and the user's count is untouched.
    assert_eq!(api.deals()["deals"].as_array().map(Vec::len), Some(1));
    api.reserve("d", "u", 3);
}

#[test]
fn state_conflicts_have_their_codes_and_change_nothing() {
    let api = Api::start();
    api.create_deal(json!({ "id": "d", "stock": 3, "per_user_limit": 2 }));
    let hold = api.reserve("d", "u1", 2);
    let ghost = ghost_hold_id();
    refused(&api, 409, "deal_exists", &[&hold], || {
        api.post_json("/v1/deals", &json!({ "id": "d", "stock": 99 }))
    });
    refused(&api, 404, "unknown_deal", &[&hold], || api.reserve_reply("ghost", "u1", 1));
    refused(&api, 409, "per_user_limit", &[&hold], || api.reserve_reply("d", "u1", 1));
    refused(&api, 409, "insufficient_stock", &[&hold], || api.reserve_reply("d", "u2", 2));
    api.reserve("d", "u2", 1);
    refused(&api, 409, "sold_out", &[&hold], || api.reserve_reply("d", "u3", 1));
    for action in ["confirm", "release"] {
        refused(&api, 404, "unknown_hold", &[&hold], || {
            api.post(&format!("/v1/holds/{ghost}/{action}"), "")
        });
    }
    refused(&api, 404, "unknown_hold", &[&hold], || {
        api.post_json(&format!("/v1/holds/{ghost}/extend"), &json!({ "ttl_ms": 5_000 }))
    });
    refused(&api, 404, "unknown_hold", &[&hold], || api.get(&format!("/v1/holds/{ghost}")));

    assert_eq!(api.post(&hold_path(&hold, "release"), "").status, 200);
    assert_eq!(api.post("/v1/deals/d/pause", "").status, 200);
    refused(&api, 409, "deal_paused", &[&hold], || api.reserve_reply("d", "u3", 1));
    refused(&api, 409, "deal_paused", &[&hold], || {
        api.post_json(
            "/v1/cart/reserve",
            &json!({ "user_id": "u3", "lines": [{ "deal_id": "d", "qty": 1 }] }),
        )
    });
    assert_eq!(api.post("/v1/deals/d/resume", "").status, 200);
    api.reserve("d", "u3", 1);
}

#[test]
fn a_deal_takes_no_reservation_before_starts_at() {
    let api = Api::start();
    let deal = api.create_deal(json!({
        "id": "later", "stock": 5, "starts_at": "2027-01-15T08:01:00Z",
    }));
    assert_eq!(deal["state"], "scheduled");
    assert_eq!(deal["starts_at"], "2027-01-15T08:01:00.000Z");
    refused(&api, 409, "deal_not_started", &[], || api.reserve_reply("later", "u", 1));
    let early = api.reserve_reply("later", "u", 1);
    let message = early.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("starts at 2027-01-15T08:01:00.000Z"), "RFC 3339: {message}");
    api.clock.advance_ms(59_999);
    refused(&api, 409, "deal_not_started", &[], || api.reserve_reply("later", "u", 1));
    api.clock.advance_ms(1);
    assert_eq!(api.deal("later")["state"], "live");
    api.reserve("later", "u", 1);
}

#[test]
fn a_deal_whose_window_is_over_at_creation_is_refused() {
    let api = Api::start();
    for ends_at in ["2027-01-15T08:00:00Z", "2027-01-15T07:59:59.999Z", "2026-01-01T00:00:00Z"] {
        let body = json!({ "id": "gone", "stock": 5, "ends_at": ends_at });
        let reply = api.post_json("/v1/deals", &body);
        assert_error(&reply, 400, "invalid_request");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("ends_at: "), "{message}");
        assert!(message.contains(T0_TEXT), "names the creation time in RFC 3339: {message}");
    }
    assert_eq!(api.deals()["deals"], json!([]), "a refusal creates nothing");
    api.create_deal(json!({ "id": "gone", "stock": 5, "ends_at": "2027-01-15T08:00:00.001Z" }));
}

#[test]
fn a_deal_takes_no_reservation_from_ends_at() {
    let api = Api::start();
    api.create_deal(json!({ "id": "brief", "stock": 5, "ends_at": "2027-01-15T08:00:10Z" }));
    api.reserve("brief", "u", 1);
    api.clock.advance_ms(10_000);
    assert_eq!(api.deal("brief")["state"], "ended");
    refused(&api, 409, "deal_ended", &[], || api.reserve_reply("brief", "u", 1));
    refused(&api, 409, "deal_ended", &[], || {
        api.post_json(
            "/v1/cart/reserve",
            &json!({ "user_id": "u", "lines": [{ "deal_id": "brief", "qty": 1 }] }),
        )
    });
}

#[test]
fn a_deal_past_ends_at_refuses_reserves_as_ended_even_when_paused() {
    let api = Api::start();
    api.create_deal(json!({ "id": "brief", "stock": 5, "ends_at": "2027-01-15T08:00:10Z" }));
    api.clock.advance_ms(10_000);
    assert_eq!(api.post("/v1/deals/brief/pause", "").status, 200);
    assert_eq!(api.deal("brief")["state"], "ended");
    refused(&api, 409, "deal_ended", &[], || api.reserve_reply("brief", "u", 1));
}

#[test]
fn concurrent_reserves_never_oversell_nor_pass_the_user_limit() {
    let api = Arc::new(Api::start());
    api.simple_deal("few", 5);
    api.create_deal(json!({ "id": "limited", "stock": 100, "per_user_limit": 3 }));
    let threads = 16;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let api = api.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let few = api.reserve_reply("few", &format!("user-{i}"), 1);
                let limited = api.reserve_reply("limited", "greedy", 1);
                (few, limited)
            })
        })
        .collect();
    let replies: Vec<(Reply, Reply)> =
        handles.into_iter().map(|h| h.join().expect("client thread")).collect();
    let won = |code: &str, pick: fn(&(Reply, Reply)) -> &Reply| {
        let mut wins = 0;
        for reply in replies.iter().map(pick) {
            if reply.status == 201 {
                wins += 1;
            } else {
                assert_error(reply, 409, code);
            }
        }
        wins
    };
    assert_eq!(won("sold_out", |r| &r.0), 5);
    assert_eq!(won("per_user_limit", |r| &r.1), 3);
    assert_eq!(api.counters("few"), (5, 0, 5, 0));
    assert_eq!(api.counters("limited"), (100, 97, 3, 0));
}

// ------------------------------------------------------------------ expiry

#[test]
fn a_hold_expires_at_its_instant_and_the_reaper_returns_its_units() {
    let api = Api::start();
    api.create_deal(json!({ "id": "d", "stock": 5, "per_user_limit": 3 }));
    let doomed =
        api.post_json("/v1/deals/d/reserve", &json!({ "user_id": "u", "qty": 3, "ttl_ms": 5_000 }));
    assert_eq!(doomed.status, 201, "{}", doomed.raw);
    let doomed = doomed.body;
    let survivor = api
        .post_json("/v1/deals/d/reserve", &json!({ "user_id": "v", "qty": 1, "ttl_ms": 60_000 }));
    let survivor = survivor.body;
    api.clock.advance_ms(4_999);
    assert_eq!(api.hold(str_of(&doomed, "hold_id"))["state"], "held");

    // At expires_at the hold is dead to callers whether or not the reaper ran yet.
    api.clock.advance_ms(1);
    let confirm = api.post(&hold_path(&doomed, "confirm"), "");
    assert_error(&confirm, 409, "hold_expired");
    assert_error(&api.post(&hold_path(&doomed, "release"), ""), 409, "hold_expired");
    assert_error(
        &api.post_json(&hold_path(&doomed, "extend"), &json!({ "ttl_ms": 60_000 })),
        409,
        "hold_expired",
    );
    assert_eq!(api.hold(str_of(&doomed, "hold_id"))["state"], "expired");

    api.eventually("the expired hold's units are available again", || {
        api.counters("d") == (5, 4, 1, 0)
    });
    let expired = api.hold(str_of(&doomed, "hold_id"));
    assert_eq!(expired["state"], "expired");
    assert_eq!(expired["confirmed_qty"], 0);
    assert_eq!(api.hold(str_of(&survivor, "hold_id"))["state"], "held");
    // Still refused after the reaper, and the user's allowance is back.
    assert_error(&api.post(&hold_path(&doomed, "confirm"), ""), 409, "hold_expired");
    api.reserve("d", "u", 3);
}

// ------------------------------------------------------------------ body size

const BODY_BYTES_MAX: usize = 16 * 1024;

#[test]
fn a_body_declared_too_large_is_refused_before_it_is_read() {
    let api = Api::start();
    let request = format!(
        "POST /v1/deals HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        100 * BODY_BYTES_MAX
    );
    // Nothing of the body is sent: the answer must come from the declared length alone.
    let (status, _head, body) = api.raw(request.as_bytes());
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "body_too_large");

    // One byte over the limit, declared.
    let request = format!(
        "POST /v1/deals HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        BODY_BYTES_MAX + 1
    );
    let (status, _head, body) = api.raw(request.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert_eq!(api.deals(), json!({ "deals": [] }));
}

#[test]
fn a_body_at_the_limit_is_read() {
    let api = Api::start();
    let json = r#"{"id":"padded","stock":1}"#;
    let body = format!("{json}{}", " ".repeat(BODY_BYTES_MAX - json.len()));
    assert_eq!(body.len(), BODY_BYTES_MAX);
    let reply = api.post("/v1/deals", &body);
    assert_eq!(reply.status, 201, "{}", reply.raw);
}

fn chunked(path: &str, body: &[u8], chunk_bytes: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(chunk_bytes) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[test]
fn a_chunked_body_without_length_is_capped_while_read() {
    let api = Api::start();
    // A small chunked body is fine (so the refusal below is about size, not chunking).
    let (status, _, body) = api.raw(&chunked("/v1/deals", br#"{"id":"small","stock":1}"#, 7));
    assert_eq!(status, 201, "{body}");

    let json = format!(r#"{{"id":"chunky",{}"stock":1}}"#, " ".repeat(BODY_BYTES_MAX));
    let (status, _, body) = api.raw(&chunked("/v1/deals", json.as_bytes(), 4096));
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "body_too_large");
    assert_error(&api.get("/v1/deals/chunky"), 404, "unknown_deal");
}

// ------------------------------------------------------------------ idempotency

const RESERVE_BODY: &str = r#"{"user_id":"u1","qty":2}"#;

#[test]
fn a_keyed_retry_replays_the_first_answer_byte_for_byte() {
    let api = Api::start();
    api.simple_deal("d", 10);
    let first = api.post_keyed("/v1/deals/d/reserve", "key-1", RESERVE_BODY);
    assert_eq!(first.status, 201, "{}", first.raw);
    assert!(!first.replayed);
    let retry = api.post_keyed("/v1/deals/d/reserve", "key-1", RESERVE_BODY);
    assert_eq!((retry.status, &retry.raw), (first.status, &first.raw));
    assert!(retry.replayed, "the retry carries idempotent-replayed: true");
    assert_eq!(api.counters("d"), (10, 8, 2, 0), "one reservation only");

    // The same request re-serialized (whitespace, key order) is the same request.
    let respelled = "{ \"qty\" : 2,\n  \"user_id\" : \"u1\" }";
    let retry = api.post_keyed("/v1/deals/d/reserve", "key-1", respelled);
    assert_eq!((retry.status, &retry.raw), (first.status, &first.raw));
    assert!(retry.replayed);
    assert_eq!(api.counters("d"), (10, 8, 2, 0));

    // Hold actions are keyed too.
    let confirm = api.request("POST", &hold_path(&first.body, "confirm"), Some("c-1"), None);
    assert_eq!(confirm.status, 200, "{}", confirm.raw);
    let again = api.request("POST", &hold_path(&first.body, "confirm"), Some("c-1"), Some("{}"));
    assert_eq!((again.status, &again.raw, again.replayed), (200, &confirm.raw, true));
    assert_eq!(api.counters("d"), (10, 8, 0, 2));
}

#[test]
fn a_key_reused_with_another_request_is_refused_and_changes_nothing() {
    let api = Api::start();
    api.simple_deal("d", 10);
    api.simple_deal("e", 10);
    let first = api.post_keyed("/v1/deals/d/reserve", "key-1", RESERVE_BODY);
    assert_eq!(first.status, 201, "{}", first.raw);
    let hold = first.body;
    refused(&api, 422, "idempotency_key_reused", &[&hold], || {
        api.post_keyed("/v1/deals/d/reserve", "key-1", r#"{"user_id":"u1","qty":3}"#)
    });
    // Same body, another deal: another request.
    refused(&api, 422, "idempotency_key_reused", &[&hold], || {
        api.post_keyed("/v1/deals/e/reserve", "key-1", RESERVE_BODY)
    });
    // The original still replays.
    let retry = api.post_keyed("/v1/deals/d/reserve", "key-1", RESERVE_BODY);
    assert_eq!((retry.status, &retry.raw), (201, &first.raw));
}

#[test]
fn idempotency_keys_are_scoped_per_user() {
    let api = Api::start();
    api.simple_deal("d", 10);
    let a = api.post_keyed("/v1/deals/d/reserve", "shared", r#"{"user_id":"a","qty":1}"#);
    let b = api.post_keyed("/v1/deals/d/reserve", "shared", r#"{"user_id":"b","qty":1}"#);
    assert_eq!((a.status, b.status), (201, 201), "{} / {}", a.raw, b.raw);
    assert!(!b.replayed);
    assert_ne!(a.body["hold_id"], b.body["hold_id"]);
    assert_eq!(b.body["user_id"], "b");
    assert_eq!(api.counters("d"), (10, 8, 2, 0));
}

#[test]
fn a_refusal_by_the_state_is_remembered_but_a_malformed_request_is_not() {
    let api = Api::start();
    api.simple_deal("d", 1);
    api.reserve("d", "other", 1);
    let sold_out = api.post_keyed("/v1/deals/d/reserve", "k", RESERVE_BODY);
    assert_error(&sold_out, 409, "sold_out");
    assert_eq!(api.post_json("/v1/deals/d/stock", &json!({ "delta": 5 })).status, 200);
    let retry = api.post_keyed("/v1/deals/d/reserve", "k", RESERVE_BODY);
    assert_eq!((retry.status, &retry.raw, retry.replayed), (409, &sold_out.raw, true));
    assert_eq!(api.counters("d"), (6, 5, 1, 0));

    // A malformed request decided nothing: the key stays free for the corrected request.
    let bad = api.post_keyed("/v1/deals/d/reserve", "k2", r#"{"user_id":"u1","qty":0}"#);
    assert_error(&bad, 400, "invalid_request");
    let good = api.post_keyed("/v1/deals/d/reserve", "k2", RESERVE_BODY);
    assert_eq!(good.status, 201, "{}", good.raw);
    assert!(!good.replayed);
}

#[test]
fn a_malformed_idempotency_key_is_invalid() {
    let api = Api::start();
    api.simple_deal("d", 10);
    let long = "k".repeat(129);
    for key in [long.as_str(), "has space"] {
        refused(&api, 400, "invalid_request", &[], || {
            api.post_keyed("/v1/deals/d/reserve", key, RESERVE_BODY)
        });
    }
}

#[test]
fn concurrent_retries_with_one_key_make_one_hold() {
    let api = Arc::new(Api::start());
    api.simple_deal("d", 100);
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let api = api.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                api.post_keyed("/v1/deals/d/reserve", "burst", RESERVE_BODY)
            })
        })
        .collect();
    let replies: Vec<Reply> =
        handles.into_iter().map(|h| h.join().expect("client thread")).collect();
    for reply in &replies {
        assert_eq!((reply.status, &reply.raw), (201, &replies[0].raw));
    }
    assert_eq!(replies.iter().filter(|r| !r.replayed).count(), 1, "exactly one ran");
    assert_eq!(api.counters("d"), (100, 98, 2, 0));
}

#[test]
fn a_deal_created_with_a_key_is_created_once() {
    let api = Api::start();
    let body = r#"{"id":"once","stock":4}"#;
    let first = api.post_keyed("/v1/deals", "create-1", body);
    assert_eq!(first.status, 201, "{}", first.raw);
    let retry = api.post_keyed("/v1/deals", "create-1", body);
    assert_eq!((retry.status, &retry.raw, retry.replayed), (201, &first.raw, true));
    // Without the key the same body is a new request, refused by the state.
    assert_error(&api.post("/v1/deals", body), 409, "deal_exists");
}

#[test]
fn a_key_is_forgotten_after_the_window() {
    let api = Api::start();
    api.simple_deal("d", 10);
    let first = api.post_keyed("/v1/deals/d/reserve", "k", RESERVE_BODY);
    assert_eq!(first.status, 201, "{}", first.raw);
    api.clock.advance_ms(IDEMPOTENCY_WINDOW_MS - 1);
    let retry = api.post_keyed("/v1/deals/d/reserve", "k", r#"{"user_id":"u1","qty":1}"#);
    assert_error(&retry, 422, "idempotency_key_reused");
    api.clock.advance_ms(1);
    let fresh = api.post_keyed("/v1/deals/d/reserve", "k", r#"{"user_id":"u1","qty":1}"#);
    assert_eq!((fresh.status, fresh.replayed), (201, false), "{}", fresh.raw);
}

#[test]
fn a_key_first_used_by_an_invalid_request_keeps_its_later_answer_for_a_whole_window() {
    let api = Api::start();
    api.simple_deal("d", 10);
    // qty 0 parses, reaches the allocator and is refused there: not remembered.
    let bad = api.post_keyed("/v1/deals/d/reserve", "k", r#"{"user_id":"u1","qty":0}"#);
    assert_error(&bad, 400, "invalid_request");
    api.clock.advance_ms(IDEMPOTENCY_WINDOW_MS - 1_000);
    let first = api.post_keyed("/v1/deals/d/reserve", "k", RESERVE_BODY);
    assert_eq!((first.status, first.replayed), (201, false), "{}", first.raw);
    // Two seconds after the success: well inside its window.
    api.clock.advance_ms(2_000);
    let retry = api.post_keyed("/v1/deals/d/reserve", "k", RESERVE_BODY);
    assert_eq!((retry.status, &retry.raw, retry.replayed), (201, &first.raw, true));
    assert_eq!(api.counters("d"), (10, 8, 2, 0), "one reservation only");
}

#[test]
fn past_the_key_bound_a_new_key_is_refused_with_503() {
    let api = Api::start_with(2);
    api.simple_deal("d", 10);
    for key in ["k1", "k2"] {
        assert_eq!(api.post_keyed("/v1/deals/d/reserve", key, RESERVE_BODY).status, 201);
    }
    refused(&api, 503, "idempotency_capacity", &[], || {
        api.post_keyed("/v1/deals/d/reserve", "k3", RESERVE_BODY)
    });
    // Remembered keys still replay, and unkeyed requests still run.
    let retry = api.post_keyed("/v1/deals/d/reserve", "k1", RESERVE_BODY);
    assert_eq!((retry.status, retry.replayed), (201, true));
    api.reserve("d", "u9", 1);
}

#[test]
fn an_extended_hold_does_not_expire_at_its_old_instant() {
    let api = Api::start();
    api.simple_deal("d", 5);
    let hold =
        api.post_json("/v1/deals/d/reserve", &json!({ "user_id": "u", "qty": 2, "ttl_ms": 5_000 }));
    assert_eq!(hold.status, 201, "{}", hold.raw);
    let hold = hold.body;
    let extended = api.post_json(&hold_path(&hold, "extend"), &json!({ "ttl_ms": 30_000 }));
    assert_eq!(extended.status, 200, "{}", extended.raw);
    api.clock.advance_ms(10_000);
    // Give the reaper a few ticks at the old instant's far side.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(api.hold(str_of(&hold, "hold_id"))["state"], "held");
    assert_eq!(api.counters("d"), (5, 3, 2, 0));
    api.clock.advance_ms(20_000);
    assert_eq!(api.hold(str_of(&hold, "hold_id"))["state"], "expired");
    api.eventually("the extended hold expires at its new instant", || {
        api.counters("d") == (5, 5, 0, 0)
    });
}

#[test]
fn resolved_holds_are_forgotten_after_their_retention() {
    let api = Api::start();
    api.simple_deal("d", 5);
    let hold = api.reserve("d", "u", 2);
    let released = api.post(&hold_path(&hold, "release"), "");
    assert_eq!(released.status, 200, "{}", released.raw);
    api.clock.advance_ms(RETENTION_MS - 1);
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(api.hold(str_of(&hold, "hold_id")), released.body);
    api.clock.advance_ms(1);
    api.eventually("the released hold is forgotten", || {
        api.get(&hold_path(&hold, "")).status == 404
    });
    assert_error(&api.get(&hold_path(&hold, "")), 404, "unknown_hold");
    assert_error(&api.post(&hold_path(&hold, "release"), ""), 404, "unknown_hold");
    assert_eq!(api.counters("d"), (5, 5, 0, 0));
}

#[test]
fn units_bought_count_against_the_user_limit_after_the_hold_is_forgotten() {
    let api = Api::start();
    api.create_deal(json!({ "id": "d", "stock": 5, "per_user_limit": 2 }));
    let hold = api.reserve("d", "u", 2);
    assert_eq!(api.post(&hold_path(&hold, "confirm"), "").status, 200);
    api.clock.advance_ms(RETENTION_MS);
    api.eventually("the confirmed hold is forgotten", || {
        api.get(&hold_path(&hold, "")).status == 404
    });
    assert_eq!(api.counters("d"), (5, 3, 0, 2));
    refused(&api, 409, "per_user_limit", &[], || api.reserve_reply("d", "u", 1));
}

/// Serde's derived decoders accept a JSON array for a struct (fields in order): `[]` would
/// confirm a whole hold and `["drop", 10]` create a deal. Every body must be an object.
#[test]
fn bodies_that_are_arrays_are_refused_and_change_nothing() {
    let api = Api::start();
    api.simple_deal("drop", 10);
    let hold = api.reserve("drop", "alice", 3);
    let hold_id = str_of(&hold, "hold_id").to_owned();
    let deals_before = api.deals();
    let hold_before = api.hold(&hold_id);
    for (path, body) in [
        ("/v1/deals".to_owned(), r#"["other", 10]"#),
        ("/v1/deals/drop/reserve".to_owned(), r#"["bob", 1]"#),
        ("/v1/cart/reserve".to_owned(), r#"["bob", [["drop", 2]]]"#),
        (format!("/v1/holds/{hold_id}/confirm"), "[]"),
        (format!("/v1/holds/{hold_id}/release"), " []"),
        ("/v1/deals/drop/stock".to_owned(), "[3]"),
        ("/v1/deals/drop/pause".to_owned(), "[]"),
    ] {
        let reply = api.post(&path, body);
        assert_error(&reply, 400, "invalid_request");
    }
    assert_eq!(api.deals(), deals_before);
    assert_eq!(api.hold(&hold_id), hold_before);
}

#[test]
fn a_body_declared_as_something_other_than_json_is_refused_with_415() {
    let api = Api::start();
    api.simple_deal("d", 5);
    let body = r#"{"user_id":"u","qty":1}"#;
    let send = |content_type: Option<&str>| {
        let header = content_type.map(|t| format!("Content-Type: {t}\r\n")).unwrap_or_default();
        let request = format!(
            "POST /v1/deals/d/reserve HTTP/1.1\r\nHost: t\r\n{header}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        api.raw(request.as_bytes())
    };
    for declared in ["text/plain", "application/x-www-form-urlencoded", "text/json", "*/*"] {
        let (status, head, answer) = send(Some(declared));
        assert_eq!(status, 415, "{declared}: {answer}");
        let answer: Value = serde_json::from_str(&answer).expect("a JSON error");
        assert_eq!(answer["error"]["code"], "unsupported_media_type", "{declared}");
        assert!(head.to_ascii_lowercase().contains("connection: close"), "unread body: {head}");
    }
    assert_eq!(api.counters("d"), (5, 5, 0, 0), "a refusal changes nothing");
    for declared in [Some("application/json"), Some("application/json; charset=utf-8"), None] {
        let (status, _, answer) = send(declared);
        assert_eq!(status, 201, "{declared:?}: {answer}");
    }
    assert_eq!(api.counters("d"), (5, 2, 3, 0));
    // Reads take no body: a Content-Type on a GET is not judged.
    let (status, _, _) =
        api.raw(b"GET /v1/deals/d HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n\r\n");
    assert_eq!(status, 200);
}

// ------------------------------------------------------------------ waitlist

#[test]
fn a_waitlist_over_http_joins_offers_and_cancels() {
    let api = Api::start();
    let deal = api.create_deal(json!({
        "id": "w", "stock": 1, "hold_ttl_ms": 60_000, "waitlist_max": 2, "offer_ttl_ms": 20_000,
    }));
    assert_eq!(
        (deal["waitlist_max"].clone(), deal["offer_ttl_ms"].clone()),
        (json!(2), json!(20_000))
    );
    assert_eq!(deal["waiting"], 0);
    let plain = api.simple_deal("plain", 1);
    assert_eq!(
        (plain["waitlist_max"].clone(), plain["offer_ttl_ms"].clone()),
        (json!(0), Value::Null)
    );
    // Options are validated like the rest of a deal.
    let bad = api.post_json("/v1/deals", &json!({ "id": "x", "stock": 1, "offer_ttl_ms": 5_000 }));
    assert_error(&bad, 400, "invalid_request");
    let bad =
        api.post_json("/v1/deals", &json!({ "id": "x", "stock": 1, "waitlist_max": 1_000_001 }));
    assert_error(&bad, 400, "invalid_request");

    let first = api.reserve("w", "a", 1);
    assert_eq!(first["origin"], "reserve");
    assert!(first.get("entry_id").is_none(), "only offers name an entry");
    // Sold out: without `waitlist` a 409 as ever, with it a 202 entry.
    assert_error(&api.reserve_reply("w", "b", 1), 409, "sold_out");
    let join = |user: &str| {
        api.post_json(
            "/v1/deals/w/reserve",
            &json!({ "user_id": user, "qty": 1, "waitlist": true }),
        )
    };
    let b = join("b");
    assert_eq!(b.status, 202, "{}", b.raw);
    let entry_id = str_of(&b.body, "entry_id").to_owned();
    assert!(entry_id.starts_with('w') && entry_id.len() == 17, "{entry_id}");
    assert_eq!(b.body["state"], "waiting");
    assert_eq!(b.body["position"], 1);
    assert_eq!(b.body["hold_id"], Value::Null);
    assert_eq!(b.body["created_at"], T0_TEXT);
    // The same user again: 200 with the same entry.
    let again = join("b");
    assert_eq!((again.status, &again.body), (200, &b.body));
    let c = join("c");
    assert_eq!((c.status, c.body["position"].clone()), (202, json!(2)));
    refused(&api, 409, "waitlist_full", &[&first], || join("d"));
    assert_eq!(api.deal("w")["waiting"], 2);
    // On a deal without a waitlist the flag changes nothing.
    api.reserve("plain", "a", 1);
    assert_error(
        &api.post_json(
            "/v1/deals/plain/reserve",
            &json!({ "user_id": "b", "qty": 1, "waitlist": true }),
        ),
        409,
        "sold_out",
    );

    // A release goes to the head of the queue as a hold with the offer's TTL.
    let released = api.post(&hold_path(&first, "release"), "");
    assert_eq!(released.status, 200, "{}", released.raw);
    assert_eq!(released.body["state"], "released", "the release's own answer");
    let offered = api.get(&format!("/v1/waitlist/{entry_id}"));
    assert_eq!(offered.status, 200, "{}", offered.raw);
    assert_eq!(
        (offered.body["state"].clone(), offered.body["position"].clone()),
        (json!("offered"), Value::Null)
    );
    let offer_id = str_of(&offered.body, "hold_id").to_owned();
    let offer = api.hold(&offer_id);
    assert_eq!(offer["origin"], "waitlist");
    assert_eq!(offer["entry_id"], entry_id.as_str());
    assert_eq!(offer["user_id"], "b");
    assert_eq!(offer["expires_at"], "2027-01-15T08:00:20.000Z");
    assert_eq!(api.counters("w"), (1, 0, 1, 0));
    let c_id = str_of(&c.body, "entry_id").to_owned();
    assert_eq!(api.get(&format!("/v1/waitlist/{c_id}")).body["position"], 1);

    // b gives the offer up: its hold is released and c is offered the unit.
    let cancelled = api.post(&format!("/v1/waitlist/{entry_id}/cancel"), "");
    assert_eq!(cancelled.status, 200, "{}", cancelled.raw);
    assert_eq!(cancelled.body["state"], "cancelled");
    assert_eq!(api.hold(&offer_id)["state"], "released");
    let c_now = api.get(&format!("/v1/waitlist/{c_id}")).body;
    assert_eq!(c_now["state"], "offered");
    // A retry answers the same; bad and unknown ids are told apart.
    assert_eq!(api.post(&format!("/v1/waitlist/{entry_id}/cancel"), "").body, cancelled.body);
    assert_error(&api.get("/v1/waitlist/nope"), 400, "invalid_request");
    assert_error(&api.get("/v1/waitlist/w0000000000000000"), 404, "unknown_entry");
    assert_error(&api.post("/v1/waitlist/w0000000000000000/cancel", ""), 404, "unknown_entry");
    // c's offer expires: the entry lapses and cannot be cancelled any more.
    api.clock.advance_ms(20_000);
    api.eventually("c's offer expires", || {
        api.get(&format!("/v1/waitlist/{c_id}")).body["state"] == "lapsed"
    });
    let lapsed = api.post(&format!("/v1/waitlist/{c_id}/cancel"), "");
    assert_error(&lapsed, 409, "entry_lapsed");
    assert_eq!(api.counters("w"), (1, 1, 0, 0));
}

#[test]
fn a_draw_over_http_commits_takes_entries_and_reveals_what_recomputes_it() {
    use livestock_core::draw;
    let api = Api::start();
    let deal = api.create_deal(json!({
        "id": "lucky", "stock": 2, "starts_at": "2027-01-15T08:00:10Z", "draw_window_ms": 5_000,
        "waitlist_max": 10,
    }));
    assert_eq!(deal["draw_window_ms"], 5_000);
    let commitment = str_of(&deal, "draw_commitment").to_owned();
    assert_eq!(commitment.len(), 64);
    assert_eq!(api.simple_deal("plain", 1)["draw_commitment"], Value::Null);
    assert_error(&api.get("/v1/deals/plain/draw"), 404, "no_draw");
    assert_error(&api.get("/v1/deals/nope/draw"), 404, "unknown_deal");
    let bad =
        api.post_json("/v1/deals", &json!({ "id": "x", "stock": 1, "draw_window_ms": 5_000 }));
    assert_error(&bad, 400, "invalid_request");

    let before = api.get("/v1/deals/lucky/draw").body;
    assert_eq!(
        (before["state"].clone(), before["seed"].clone()),
        (json!("scheduled"), Value::Null)
    );
    assert_eq!(before["commitment"], commitment.as_str());
    assert_eq!(before["algorithm"], "sha256-rank-v1");

    api.clock.advance_ms(10_000);
    for i in 0..8 {
        let entered = api.reserve_reply("lucky", &format!("viewer-{i}"), 1);
        assert_eq!(entered.status, 202, "{}", entered.raw);
        assert_eq!(
            (entered.body["state"].clone(), entered.body["position"].clone()),
            (json!("entered"), Value::Null)
        );
    }
    assert_eq!(api.reserve_reply("lucky", "viewer-0", 1).status, 200, "the same entry");
    let cart = api.post_json(
        "/v1/cart/reserve",
        &json!({ "user_id": "c", "lines": [{ "deal_id": "lucky", "qty": 1 }] }),
    );
    assert_error(&cart, 409, "draw_window");
    let open = api.get("/v1/deals/lucky/draw").body;
    assert_eq!((open["state"].clone(), open["entries"].clone()), (json!("open"), json!(8)));

    api.clock.advance_ms(5_000);
    api.eventually("the reaper draws", || api.get("/v1/deals/lucky/draw").body["state"] == "drawn");
    let drawn = api.get("/v1/deals/lucky/draw").body;
    // Anyone can check it: the seed is the committed one, and the order and winners follow.
    let seed_hex = str_of(&drawn, "seed");
    let seed: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&seed_hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let seed: draw::DrawSeed = seed.try_into().expect("32 bytes");
    assert_eq!(draw::hex(&draw::commitment(&seed)), commitment);
    let entrants = drawn["entrants"].as_array().expect("entrants");
    let users: Vec<&str> = entrants.iter().map(|e| str_of(e, "user_id")).collect();
    let order: Vec<&Value> = draw::draw_order(&seed, users.iter().copied())
        .iter()
        .map(|i| &entrants[*i]["entry_id"])
        .collect();
    assert_eq!(drawn["order"].as_array().expect("order").iter().collect::<Vec<_>>(), order);
    assert_eq!(drawn["units"], 2);
    assert_eq!(
        drawn["winners"].as_array().expect("winners").as_slice(),
        &[order[0].clone(), order[1].clone()]
    );
    // Winners hold offers; the others wait in draw order.
    let winner = api.get(&format!("/v1/waitlist/{}", order[0].as_str().expect("id"))).body;
    assert_eq!(winner["state"], "offered");
    assert_eq!(api.hold(str_of(&winner, "hold_id"))["origin"], "waitlist");
    let third = api.get(&format!("/v1/waitlist/{}", order[2].as_str().expect("id"))).body;
    assert_eq!((third["state"].clone(), third["position"].clone()), (json!("waiting"), json!(1)));
    assert_eq!(api.counters("lucky"), (2, 0, 2, 0));
}
