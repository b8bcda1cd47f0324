//! Guards docs/openapi.yaml against drifting from the code (routes, error codes, roles, limits).
//!
//! The spec is what clients (and scripts/schemathesis.sh) hold the server to, so an endpoint
//! added to `ENDPOINTS`, a new `ErrorCode`, a code moved to another status, a route whose role changed or
//! a bound changed in `limits.rs` must show up here as a failure until the spec says so too.

#![allow(clippy::expect_used, reason = "test code: a failed expect is a failed test")]

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use livestock::http::auth::{Access, Role};
use livestock::http::endpoints::{self, ENDPOINTS};
use livestock::http::error::status_of;
use livestock_core::error::ErrorCode;
use livestock_core::limits;
use serde_norway::Value;

const SPEC: &str = include_str!("../docs/openapi.yaml");

/// Every `ErrorCode` (`ErrorCode::ALL`); `the_code_list_is_complete` holds it to the source of
/// `ErrorCode::as_str`: `ALL` is written by hand, and nothing else proves it complete.
const ALL_CODES: &[ErrorCode] = &ErrorCode::ALL;

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn spec() -> Value {
    serde_norway::from_str(SPEC).expect("docs/openapi.yaml is not valid YAML")
}

/// `/v1/deals/{id}/end` -> `/v1/deals/{}/end`: parameter names may differ between the two.
fn normalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// Follows `$ref`s (local ones, `#/a/b/c`) until a value that is not a reference.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    let mut value = value;
    for _ in 0..16 {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else { return value };
        let pointer = reference
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("only local references are used: {reference}"));
        value = pointer.split('/').fold(doc, |node, key| {
            node.get(key).unwrap_or_else(|| panic!("dangling reference {reference}"))
        });
    }
    panic!("a reference cycle")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .expect("a list")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Every (METHOD, normalised path) -> operation object.
fn operations(doc: &Value) -> BTreeMap<(String, String), &Value> {
    let paths = doc.get("paths").and_then(Value::as_mapping).expect("`paths`");
    let mut out = BTreeMap::new();
    for (path, item) in paths {
        let path = path.as_str().expect("a path");
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                out.insert((method.to_uppercase(), normalise(path)), op);
            }
        }
    }
    out
}

/// The error codes a response may carry: the `enum` its body schema narrows `error.code` to.
fn codes_of(doc: &Value, response: &Value) -> Vec<String> {
    let response = resolve(doc, response);
    let schema = response
        .get("content")
        .and_then(|c| c.get("application/json"))
        .and_then(|c| c.get("schema"))
        .unwrap_or_else(|| panic!("an error response without a JSON schema: {response:?}"));
    let schema = resolve(doc, schema);
    let narrowed = schema
        .get("allOf")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .find_map(|part| {
            resolve(doc, part)
                .get("properties")?
                .get("error")?
                .get("properties")?
                .get("code")?
                .get("enum")
        })
        .unwrap_or_else(|| panic!("an error schema that does not narrow the code: {schema:?}"));
    strings(narrowed)
}

fn code_named(name: &str) -> ErrorCode {
    *ALL_CODES
        .iter()
        .find(|c| c.as_str() == name)
        .unwrap_or_else(|| panic!("{name:?} is no error code"))
}

#[test]
fn the_spec_has_every_route_and_no_other() {
    let doc = spec();
    assert_eq!(doc.get("openapi").and_then(Value::as_str), Some("3.1.0"));
    let in_spec: BTreeSet<(String, String)> = operations(&doc).into_keys().collect();
    let in_code: BTreeSet<(String, String)> =
        ENDPOINTS.iter().map(|e| (e.method.to_string(), normalise(e.path))).collect();
    assert_eq!(ENDPOINTS.len(), in_code.len(), "ENDPOINTS lists an endpoint twice");
    let missing: Vec<_> = in_code.difference(&in_spec).collect();
    let extra: Vec<_> = in_spec.difference(&in_code).collect();
    assert!(missing.is_empty(), "routes missing from docs/openapi.yaml: {missing:?}");
    assert!(extra.is_empty(), "docs/openapi.yaml has operations no route serves: {extra:?}");
}

#[test]
fn the_spec_lists_every_error_code_and_no_other() {
    let doc = spec();
    let schema = &doc["components"]["schemas"]["ErrorCode"];
    let in_spec: BTreeSet<String> = strings(&schema["enum"]).into_iter().collect();
    let in_code: BTreeSet<String> = ALL_CODES.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(in_code.len(), ALL_CODES.len(), "two codes share a string");
    let missing: Vec<_> = in_code.difference(&in_spec).collect();
    let extra: Vec<_> = in_spec.difference(&in_code).collect();
    assert!(missing.is_empty(), "codes missing from the spec's ErrorCode enum: {missing:?}");
    assert!(extra.is_empty(), "the spec's ErrorCode enum has unknown codes: {extra:?}");
    // The Error schema's `code` is that enum.
    let code = &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"];
    assert_eq!(resolve(&doc, code), schema);
}

/// `ErrorCode::ALL` against the source of `ErrorCode::as_str`: a variant added there and not in `ALL`
/// would otherwise pass unseen.
#[test]
fn the_code_list_is_complete() {
    let source = include_str!("../crates/core/src/error.rs");
    let in_source: BTreeSet<&str> = source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ErrorCode::"))
        .filter_map(|rest| rest.split_once(" => \""))
        .filter_map(|(_, code)| code.strip_suffix("\","))
        .collect();
    let listed: BTreeSet<&str> = ALL_CODES.iter().map(|c| c.as_str()).collect();
    assert!(in_source.len() >= 20, "could not read the codes from crates/core/src/error.rs");
    assert_eq!(in_source, listed, "ErrorCode::ALL is out of date");
}

#[test]
fn each_error_status_carries_only_codes_of_that_status() {
    let doc = spec();
    for ((method, path), op) in operations(&doc) {
        let responses = op.get("responses").and_then(Value::as_mapping).expect("responses");
        for (status, response) in responses {
            let status: u16 = status
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{method} {path}: a status is not a number"));
            let headers = resolve(&doc, response).get("headers");
            assert!(
                headers.and_then(|h| h.get("x-request-id")).is_some(),
                "{method} {path} {status}: no x-request-id header"
            );
            if status < 400 {
                continue;
            }
            let codes = codes_of(&doc, response);
            assert!(!codes.is_empty(), "{method} {path} {status}: no code");
            for code in codes {
                assert_eq!(
                    status_of(code_named(&code)).as_u16(),
                    status,
                    "{method} {path}: {code} is listed under the wrong status"
                );
            }
            let header = |name: &str| {
                resolve(&doc, response).get("headers").and_then(|h| h.get(name)).is_some()
            };
            match status {
                401 => assert!(header("WWW-Authenticate"), "{method} {path}: 401 w/o header"),
                405 => assert!(header("Allow"), "{method} {path}: 405 without Allow"),
                429 => assert!(header("Retry-After"), "{method} {path}: 429 without Retry-After"),
                _ => {}
            }
        }
    }
}

/// Each operation's documented role (`x-required-role`, `security`, a 401 and a 403 where they
/// can happen) is the one `auth::access` enforces.
#[test]
fn each_operation_documents_the_role_it_needs() {
    let doc = spec();
    let ops = operations(&doc);
    for endpoint in &ENDPOINTS {
        let (method, pattern) = (endpoint.method.as_str(), endpoint.path);
        let path = pattern
            .replace("{id}", "d1")
            .replace("{stream_id}", "s1")
            .replace("{hold_id}", "h0000000000000001");
        let parsed = Method::from_bytes(method.as_bytes()).expect("a method");
        let (found, _) = endpoints::find(&parsed, &path).expect("every listed endpoint routes");
        assert!(std::ptr::eq(found, endpoint), "{method} {path} routes to another endpoint");
        let op = ops[&(method.to_string(), normalise(pattern))];
        let role = op.get("x-required-role").and_then(Value::as_str);
        let public = op
            .get("security")
            .and_then(Value::as_sequence)
            .is_some_and(|requirements| requirements.is_empty());
        let responses = &op["responses"];
        let has = |status: &str| responses.get(status).is_some();
        let label = format!("{method} {pattern}");
        // `/metrics` is admin-only unless configured public, the live feed public unless
        // configured otherwise; the spec documents the defaults.
        match endpoint.access.resolve(false, true) {
            Access::Public => {
                assert_eq!(role, Some("none"), "{label}");
                assert!(public, "{label}: public, so `security: []`");
                assert!(!has("401") && !has("403"), "{label}: public, no 401/403");
            }
            Access::AdminUnlessPublic | Access::ClientUnlessFeedPublic => {
                unreachable!("resolved above")
            }
            Access::Role(needed) => {
                let expected = match needed {
                    Role::Admin => "admin",
                    Role::Client => "client",
                };
                assert_eq!(role, Some(expected), "{label}");
                assert!(!public, "{label}: needs a token, so no `security: []`");
                assert!(has("401"), "{label}: no 401");
                // Every valid token is at least a client: only admin operations can be 403.
                assert_eq!(has("403"), needed == Role::Admin, "{label}: 403 iff admin-only");
            }
        }
    }
}

#[test]
fn operations_have_ids_links_resolve_and_mutations_take_idempotency_keys() {
    let doc = spec();
    let ops = operations(&doc);
    let ids: BTreeSet<&str> = ops
        .values()
        .map(|op| op.get("operationId").and_then(Value::as_str).expect("an operationId"))
        .collect();
    assert_eq!(ids.len(), ops.len(), "operationIds must be unique");
    for ((method, path), op) in &ops {
        let keyed =
            op.get("parameters").and_then(Value::as_sequence).into_iter().flatten().any(|p| {
                resolve(&doc, p).get("name").and_then(Value::as_str) == Some("Idempotency-Key")
            });
        // Membership changes say `x-no-idempotency-key`: a retry learns the outcome from the
        // state (adding a voter twice, or removing one that is gone, is refused with the reason).
        let exempt = op.get("x-no-idempotency-key").and_then(Value::as_bool) == Some(true);
        let mutation = method == "POST" && !exempt;
        assert_eq!(keyed, mutation, "{method} {path}: Idempotency-Key iff a keyed mutation");
        let responses = op.get("responses").and_then(Value::as_mapping).expect("responses");
        for response in responses.values() {
            let links = resolve(&doc, response).get("links").and_then(Value::as_mapping);
            for (name, link) in links.into_iter().flatten() {
                let target = link.get("operationId").and_then(Value::as_str);
                assert!(
                    target.is_some_and(|t| ids.contains(t)),
                    "{method} {path}: link {name:?} names no operation"
                );
            }
        }
    }
}

/// The bounds the spec states are the ones `limits.rs` enforces.
#[test]
fn the_spec_states_the_limits() {
    let doc = spec();
    let schemas = &doc["components"]["schemas"];
    let int = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v:?}"));
    assert_eq!(int(&schemas["Units"]["maximum"]), limits::DEAL_STOCK_UNITS_MAX);
    assert_eq!(int(&schemas["Qty"]["maximum"]), u64::from(limits::HOLD_QTY_MAX));
    assert_eq!(int(&schemas["HoldTtlMs"]["minimum"]), limits::HOLD_TTL_MS_MIN);
    assert_eq!(int(&schemas["HoldTtlMs"]["maximum"]), limits::HOLD_TTL_MS_MAX);
    let lines = &schemas["CartRequest"]["properties"]["lines"];
    assert_eq!(int(&lines["maxItems"]), limits::CART_LINES_MAX as u64);
    for (schema, len) in [
        ("DealId", limits::DEAL_ID_LEN_MAX),
        ("StreamId", limits::STREAM_ID_LEN_MAX),
        ("UserId", limits::USER_ID_LEN_MAX),
    ] {
        let pattern = schemas[schema]["pattern"].as_str().expect("a pattern");
        assert!(pattern.ends_with(&format!("{{1,{len}}}$")), "{schema}: {pattern}");
    }
    let key = &doc["components"]["parameters"]["IdempotencyKey"]["schema"]["pattern"];
    let len = limits::IDEMPOTENCY_KEY_LEN_MAX;
    assert!(key.as_str().is_some_and(|p| p.ends_with(&format!("{{1,{len}}}$"))), "{key:?}");
}
