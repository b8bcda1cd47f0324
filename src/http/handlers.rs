//! One handler per endpoint: the request's path parameter and body become either an answer
//! (reads, health, metrics) or a command for the node, with the idempotency scope its key
//! lives in and the shape of its success answer. Handlers are synchronous and do no I/O; the
//! exchange (`exchange.rs`) executes what they return.

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use livestock_core::command::{Command, Outcome};
use livestock_core::draw::DrawSeed;
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::ids::HoldIdKey;
use serde_json::json;

use crate::http::body::Body;
use crate::http::error::ApiError;
use crate::http::events;
use crate::http::feed_frame::{self, Stock};
use crate::http::live_page;
use crate::http::options::ServerOptions;
use crate::http::refusal_body;
use crate::http::response::respond;
use crate::http::wire::{self, parse_body};
use crate::idempotency::StoredReply;
use crate::metrics::Limit;
use crate::node::{self, Node};

/// What a handler sees of a request.
pub struct Call<'a> {
    pub node: &'a Node,
    pub options: &'a ServerOptions,
    /// The value of the endpoint's `{...}` path segment, unvalidated ("" if it has none).
    pub param: &'a str,
    pub body: &'a Bytes,
    /// The query string, unvalidated (only the event stream reads one).
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

pub type Handler = fn(&Call<'_>) -> Result<Action, ApiError>;

/// What a handler decided.
pub enum Action {
    /// This answer, now.
    Reply(StoredReply),
    /// A response with its own headers or content type. One with an `ETag` answers 304 to a
    /// request whose `If-None-Match` names it (`response::conditional`).
    Response(Response<Full<Bytes>>),
    /// A stream of events (the live feed, the event stream), answered as it is.
    Feed(Response<Body>),
    /// Run this command (under the request's `Idempotency-Key`, if any, within `scope`), and
    /// answer its result in the shape `answer` says.
    Execute { command: Command, scope: String, answer: Answer },
}

/// The shape of a mutation's success answer.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// 201 with the deal.
    CreatedDeal,
    /// 201 with the one hold.
    ReservedHold,
    /// The outcome's own shape (200, or 201 with `holds` for a cart).
    Plain,
}

/// Idempotency scopes: a key is unique per user (reserves), per hold, or among admins.
const ADMIN_SCOPE: &str = "admin";

fn admin(command: Command) -> Action {
    Action::Execute { command, scope: ADMIN_SCOPE.to_owned(), answer: Answer::Plain }
}

pub fn healthz(_: &Call<'_>) -> Result<Action, ApiError> {
    Ok(Action::Reply(wire::reply(200, &json!({ "status": "ok" }))))
}

pub fn readyz(call: &Call<'_>) -> Result<Action, ApiError> {
    // Listening implies recovery finished (the listener opens after it); ready also needs a
    // log that can still make changes durable.
    if call.node.wal().is_some_and(|wal| !wal.is_writable()) {
        return Err(ApiError::new(ErrorCode::StorageUnavailable, "the log is not writable"));
    }
    if let Some(why) = call.node.replica().and_then(|r| r.stopped()) {
        return Err(ApiError::new(ErrorCode::StorageUnavailable, why));
    }
    Ok(Action::Reply(wire::reply(200, &json!({ "status": "ready" }))))
}

pub fn metrics(call: &Call<'_>) -> Result<Action, ApiError> {
    let mut response = Response::new(Full::new(Bytes::from(node::scrape(call.node))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(Action::Response(response))
}

/// This node's view of the cluster. Outside cluster mode: 404 `unknown_route` (there is no
/// cluster), so a script can tell the two apart.
pub fn cluster(call: &Call<'_>) -> Result<Action, ApiError> {
    let Some(replica) = call.node.replica() else {
        return Err(ApiError::new(
            ErrorCode::UnknownRoute,
            "this node runs alone (no --node-id): there is no cluster",
        ));
    };
    let status = replica.status();
    Ok(Action::Reply(wire::reply(200, &json!(status))))
}

/// A backup of the cluster's applied state (`livestock cluster backup`): the bytes
/// `livestock cluster restore` takes. In cluster mode the request reaches the leader and passes
/// its read barrier first (`cluster::route`), so the backup holds every change acknowledged
/// before it was asked for. A node run alone has its data directory to copy instead
/// (docs/operations.md, "Backup and restore").
pub fn cluster_backup(call: &Call<'_>) -> Result<Action, ApiError> {
    let Some(replica) = call.node.replica() else {
        return Err(ApiError::new(
            ErrorCode::UnknownRoute,
            "this node runs alone (no --node-id): copy its data directory to back it up",
        ));
    };
    let bytes = replica.shared.backup().map_err(|e| {
        ApiError::new(ErrorCode::StorageUnavailable, format!("the backup did not encode: {e}"))
    })?;
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(Action::Response(response))
}

/// Membership changes outside cluster mode (in cluster mode `cluster::route` serves them).
pub fn no_cluster(_: &Call<'_>) -> Result<Action, ApiError> {
    Err(ApiError::new(
        ErrorCode::UnknownRoute,
        "this node runs alone (no --node-id): there is no cluster to change",
    ))
}

pub fn list_deals(call: &Call<'_>) -> Result<Action, ApiError> {
    let views = call.node.read(|allocator, now_ms| allocator.deals(now_ms));
    let deals: Vec<_> = views.iter().map(wire::deal_json).collect();
    Ok(Action::Reply(wire::reply(200, &json!({ "deals": deals }))))
}

pub fn get_deal(call: &Call<'_>) -> Result<Action, ApiError> {
    let id = wire::deal_id(call.param)?;
    let view = call.node.read(|allocator, now_ms| allocator.deal(id.as_str(), now_ms));
    let view = view.ok_or_else(|| ApiError::unknown_deal(&id))?;
    Ok(Action::Reply(wire::reply(200, &wire::deal_json(&view))))
}

/// `GET /v1/deals/{id}/live`: the deal's live feed (`feed.rs`).
pub fn deal_live(call: &Call<'_>) -> Result<Action, ApiError> {
    let id = wire::deal_id(call.param)?;
    Ok(Action::Feed(call.options.feed.subscribe_deal(call.node, &id)?))
}

/// `GET /v1/streams/{stream_id}/live`: the live feed of every deal of a stream.
pub fn stream_live(call: &Call<'_>) -> Result<Action, ApiError> {
    let stream = wire::stream_id(call.param)?;
    Ok(Action::Feed(call.options.feed.subscribe_stream(call.node, &stream)?))
}

/// `GET /v1/events`: every decided change from a position (`events.rs`).
pub fn events(call: &Call<'_>) -> Result<Action, ApiError> {
    let start = events::start_of(call.query, call.headers)?;
    Ok(Action::Feed(call.options.events.subscribe(call.node, start)?))
}

/// `GET /live/{stream_id}`: the page that shows the stream's feed (`live_page.rs`), for a stream
/// whose feed would be served (the same 400 and 404).
pub fn live_page(call: &Call<'_>) -> Result<Action, ApiError> {
    let stream = wire::stream_id(call.param)?;
    call.options.feed.check_stream(call.node, &stream)?;
    Ok(Action::Response(live_page::response()))
}

/// `GET /v1/deals/{id}/availability`: what the feed's event says, as one cacheable answer. A
/// second is as stale as a viewer's page may be, and lets a CDN absorb a crowd's polling; the
/// `ETag` lets a poller that has the current answer get a body-less 304.
pub fn availability(call: &Call<'_>) -> Result<Action, ApiError> {
    let id = wire::deal_id(call.param)?;
    let view = call.node.read(|allocator, now_ms| allocator.deal(id.as_str(), now_ms));
    let view = view.ok_or_else(|| ApiError::unknown_deal(&id))?;
    let stock = Stock::of(&view);
    let mut response = Response::new(Full::new(feed_frame::availability_json(id.as_str(), &stock)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=1"));
    if let Ok(tag) = HeaderValue::from_str(&feed_frame::etag(&stock)) {
        headers.insert(header::ETAG, tag);
    }
    Ok(Action::Response(response))
}

fn hold_key(call: &Call<'_>) -> HoldIdKey {
    call.node.allocator().config().hold_id_key
}

pub fn get_hold(call: &Call<'_>) -> Result<Action, ApiError> {
    let key = hold_key(call);
    let seq = wire::hold_seq(call.param, key)?;
    let view = call.node.read(|allocator, now_ms| allocator.hold(seq, now_ms));
    let view = view.ok_or_else(|| {
        ApiError::new(ErrorCode::UnknownHold, format!("no hold with id {:?}", call.param))
    })?;
    Ok(Action::Reply(wire::reply(200, &wire::hold_json(&view, key))))
}

pub fn create_deal(call: &Call<'_>) -> Result<Action, ApiError> {
    let defaults = (call.options.hold_ttl_ms_default, call.options.hold_ttl_ms_max);
    let command = parse_body::<wire::CreateDealBody>(call.body)?.command(defaults, draw_seed)?;
    Ok(Action::Execute { command, scope: ADMIN_SCOPE.to_owned(), answer: Answer::CreatedDeal })
}

/// A draw's secret seed, from the operating system's random source (the leader's, in a
/// cluster: a follower forwards the creation before any handler runs).
fn draw_seed() -> Result<DrawSeed, ApiError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| {
        ApiError::new(ErrorCode::Internal, format!("no randomness for the draw's seed: {e}"))
    })?;
    Ok(seed)
}

pub fn pause_deal(call: &Call<'_>) -> Result<Action, ApiError> {
    parse_body::<wire::EmptyBody>(call.body)?;
    Ok(admin(Command::PauseDeal(wire::deal_id(call.param)?)))
}

pub fn resume_deal(call: &Call<'_>) -> Result<Action, ApiError> {
    parse_body::<wire::EmptyBody>(call.body)?;
    Ok(admin(Command::ResumeDeal(wire::deal_id(call.param)?)))
}

pub fn end_deal(call: &Call<'_>) -> Result<Action, ApiError> {
    parse_body::<wire::EmptyBody>(call.body)?;
    Ok(admin(Command::EndDeal(wire::deal_id(call.param)?)))
}

pub fn adjust_stock(call: &Call<'_>) -> Result<Action, ApiError> {
    let delta = parse_body::<wire::StockBody>(call.body)?.delta;
    Ok(admin(Command::AdjustStock { deal_id: wire::deal_id(call.param)?, delta }))
}

pub fn end_stream(call: &Call<'_>) -> Result<Action, ApiError> {
    parse_body::<wire::EmptyBody>(call.body)?;
    Ok(admin(Command::EndStream(wire::stream_id(call.param)?)))
}

/// A rate-limit refusal: 429 with `Retry-After` in whole seconds.
pub fn rate_limited(call: &Call<'_>, retry_after_ms: u64) -> Action {
    call.node.metrics().rejected(Limit::UserRate);
    let seconds = retry_after_ms.div_ceil(1_000).max(1);
    let e = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many requests for this user; retry in {seconds} s"),
    );
    let mut response = respond(e.reply());
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Action::Response(response)
}

pub fn reserve(call: &Call<'_>) -> Result<Action, ApiError> {
    let deal_id = wire::deal_id(call.param)?;
    let parsed = parse_body::<wire::ReserveBody>(call.body)?;
    if let Err(retry_ms) = call.options.rate.take(parsed.user_id(), call.node.now_ms()) {
        return Ok(rate_limited(call, retry_ms));
    }
    let scope = format!("user:{}", parsed.user_id());
    Ok(Action::Execute { command: parsed.command(deal_id)?, scope, answer: Answer::ReservedHold })
}

pub fn cart_reserve(call: &Call<'_>) -> Result<Action, ApiError> {
    let parsed = parse_body::<wire::CartBody>(call.body)?;
    if let Err(retry_ms) = call.options.rate.take(parsed.user_id(), call.node.now_ms()) {
        return Ok(rate_limited(call, retry_ms));
    }
    let scope = format!("user:{}", parsed.user_id());
    Ok(Action::Execute { command: parsed.command()?, scope, answer: Answer::Plain })
}

fn on_hold(call: &Call<'_>, command: Command) -> Action {
    Action::Execute { command, scope: format!("hold:{}", call.param), answer: Answer::Plain }
}

pub fn confirm(call: &Call<'_>) -> Result<Action, ApiError> {
    let hold = wire::hold_seq(call.param, hold_key(call))?;
    let qty = parse_body::<wire::ConfirmBody>(call.body)?.qty;
    Ok(on_hold(call, Command::Confirm { hold, qty }))
}

pub fn release(call: &Call<'_>) -> Result<Action, ApiError> {
    let hold = wire::hold_seq(call.param, hold_key(call))?;
    parse_body::<wire::EmptyBody>(call.body)?;
    Ok(on_hold(call, Command::Release { hold }))
}

pub fn extend(call: &Call<'_>) -> Result<Action, ApiError> {
    let hold = wire::hold_seq(call.param, hold_key(call))?;
    let ttl_ms = parse_body::<wire::ExtendBody>(call.body)?.ttl_ms;
    Ok(on_hold(call, Command::Extend { hold, ttl_ms }))
}

/// `GET /v1/deals/{id}/draw`: the draw's commitment, and once drawn everything needed to
/// recompute it (docs/draw.md).
pub fn get_draw(call: &Call<'_>) -> Result<Action, ApiError> {
    let id = wire::deal_id(call.param)?;
    let key = hold_key(call);
    let view = call
        .node
        .read(|allocator, now_ms| allocator.draw_view(id.as_str()).map(|view| (view, now_ms)));
    let (view, now_ms) = view.ok_or_else(|| ApiError::unknown_deal(&id))?;
    if !view.options.has_draw() {
        return Err(ApiError::new(ErrorCode::NoDraw, format!("the deal {id:?} has no draw")));
    }
    Ok(Action::Reply(wire::reply(200, &wire::draw_json(&view, key, now_ms))))
}

pub fn get_entry(call: &Call<'_>) -> Result<Action, ApiError> {
    let key = hold_key(call);
    let seq = wire::entry_seq(call.param, key)?;
    let view = call.node.read(|allocator, _| allocator.entry(seq));
    let view = view.ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownEntry,
            format!("no waitlist entry with id {:?}", call.param),
        )
    })?;
    Ok(Action::Reply(wire::reply(200, &wire::entry_json(&view, key))))
}

pub fn cancel_entry(call: &Call<'_>) -> Result<Action, ApiError> {
    let entry = wire::entry_seq(call.param, hold_key(call))?;
    parse_body::<wire::EmptyBody>(call.body)?;
    let scope = format!("entry:{}", call.param);
    Ok(Action::Execute { command: Command::CancelEntry { entry }, scope, answer: Answer::Plain })
}

/// A command's result as the answer a client gets.
pub fn render(
    answer: Answer,
    result: &Result<Outcome, CommandError>,
    key: HoldIdKey,
) -> StoredReply {
    match (answer, result) {
        // Most refusals of a burst: preformatted (`refusal_body.rs`).
        (_, Err(e)) => refusal_body::reply_of(e).unwrap_or_else(|| ApiError::from(e).reply()),
        (Answer::CreatedDeal, Ok(Outcome::Deal(view))) => wire::reply(201, &wire::deal_json(view)),
        (Answer::ReservedHold, Ok(Outcome::Holds(holds))) if holds.len() == 1 => {
            wire::reply(201, &wire::hold_json(&holds[0], key))
        }
        (_, Ok(outcome)) => wire::outcome_reply(outcome, key),
    }
}
