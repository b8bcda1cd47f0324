//! Connections, requests, and the expiry reaper.
//!
//! A request's life: route -> size check (before reading) -> body -> command -> (idempotency)
//! -> the node executes it synchronously -> the reply goes out. No lock is held across an
//! `.await`; the only waits are reading the body and, for a retry whose first attempt is still
//! running, a short poll.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use livestock_core::command::{Command, Outcome};
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::ids::{HoldIdKey, IdempotencyKey};
use crate::http::auth::{self, Denied, Tokens};
use crate::http::error::ApiError;
use crate::http::rate::RateLimiter;
use crate::http::routes::{self, NoRoute, Route};
use crate::http::wire::{self, parse_body};
use crate::idempotency::{fingerprint, StoredReply};
use livestock_core::limits::{EXPIRY_TICK_MS, IDEMPOTENCY_WAIT_MS_MAX};
use crate::metrics::{Limit, Op};
use crate::node::{Executed, Keyed, KeyedResult, Node};

/// The HTTP layer's settings: limits, access control, rate limits, deal defaults. Built from
/// the configuration (`ServerOptions::from_config`); the default is the embedded one (no
/// tokens, no rate limit, the documented limits).
pub struct ServerOptions {
    pub body_bytes_max: usize,
    pub header_read_timeout_ms: u64,
    pub connections_max: usize,
    pub headers_max: usize,
    pub metrics_public: bool,
    pub tokens: Tokens,
    pub rate: RateLimiter,
    /// Filled into a created deal that names no `hold_ttl_ms` / `hold_ttl_ms_max`.
    pub hold_ttl_ms_default: u64,
    pub hold_ttl_ms_max: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions::from_config(&Config::default())
    }
}

impl ServerOptions {
    pub fn from_config(config: &Config) -> Self {
        ServerOptions {
            body_bytes_max: config.body_bytes_max,
            header_read_timeout_ms: config.header_read_timeout_ms,
            connections_max: config.connections_max,
            headers_max: config.headers_max,
            metrics_public: config.metrics_public,
            tokens: Tokens::new(&config.admin_tokens, &config.client_tokens),
            rate: RateLimiter::new(config.user_rate_per_s, config.user_rate_burst),
            hold_ttl_ms_default: config.hold_ttl_ms_default,
            hold_ttl_ms_max: config.hold_ttl_ms_max,
        }
    }
}

/// A running server: its address, and the handle that stops it.
pub struct Server {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts serving `node` with the default
    /// options, plus its reaper.
    pub async fn start(addr: SocketAddr, node: Arc<Node>) -> std::io::Result<Server> {
        Server::start_with(addr, node, ServerOptions::default()).await
    }

    pub async fn start_with(
        addr: SocketAddr,
        node: Arc<Node>,
        options: ServerOptions,
    ) -> std::io::Result<Server> {
        let listener = listen(addr)?;
        let local_addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(run(listener, node, Arc::new(options), stop));
        Ok(Server { local_addr, shutdown, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish, and returns when all connections are
    /// closed.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// A listening socket with a deep accept queue: a livestream drop opens thousands of
/// connections at once, and the default backlog (128) makes the kernel drop handshakes, which
/// clients retry only after a second.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Counts a connection open for as long as it lives.
struct ConnectionGuard(Arc<Node>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.metrics().connection_closed();
    }
}

async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    options: Arc<ServerOptions>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let reaper = tokio::spawn(reap(node.clone(), stop.clone()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                // Past the bound, close at once: an idle connection costs a task and buffers,
                // and a flood of them must not grow memory without limit.
                if node.metrics().connections_open() >= options.connections_max as u64 {
                    node.metrics().rejected(Limit::Connections);
                    drop(stream);
                    continue;
                }
                node.metrics().connection_opened();
                let guard = ConnectionGuard(node.clone());
                let _ = stream.set_nodelay(true);
                let (node, service_options) = (node.clone(), options.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (node, options) = (node.clone(), service_options.clone());
                    async move { Ok::<_, Infallible>(handle_with(&node, &options, req).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(options.header_read_timeout_ms))
                    .max_headers(options.headers_max);
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(guard);
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    let _ = reaper.await;
}

/// Expires due holds every tick: a hold's units are back in `available` at most
/// `EXPIRY_TICK_MS` (plus scheduling delay) after its `expires_at`.
async fn reap(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(EXPIRY_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => { node.expire_due(); }
            _ = stop.changed() => return,
        }
    }
}

/// The error code an answer carries, kept on the response for the metrics.
#[derive(Clone, Debug)]
struct OutcomeCode(String);

fn respond(reply: StoredReply) -> Response<Full<Bytes>> {
    let code = code_of(reply.status, &reply.body);
    let mut response = Response::new(Full::new(reply.body));
    if let Some(code) = code {
        response.extensions_mut().insert(OutcomeCode(code));
    }
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(e: ApiError) -> Response<Full<Bytes>> {
    respond(e.reply())
}

/// The metrics' name of a request's operation.
fn op_of(route: &Route<'_>) -> Op {
    match route {
        Route::CreateDeal => Op::CreateDeal,
        Route::ListDeals => Op::ListDeals,
        Route::GetDeal(_) => Op::GetDeal,
        Route::PauseDeal(_) => Op::PauseDeal,
        Route::ResumeDeal(_) => Op::ResumeDeal,
        Route::EndDeal(_) => Op::EndDeal,
        Route::AdjustStock(_) => Op::AdjustStock,
        Route::EndStream(_) => Op::EndStream,
        Route::Reserve(_) => Op::Reserve,
        Route::CartReserve => Op::Cart,
        Route::GetHold(_) => Op::GetHold,
        Route::Confirm(_) => Op::Confirm,
        Route::Release(_) => Op::Release,
        Route::Extend(_) => Op::Extend,
        Route::Healthz | Route::Readyz => Op::Health,
        Route::Metrics => Op::Metrics,
    }
}

/// The error code of an answer we made: error bodies are `{"error":{"code":"...",...}}` with
/// sorted keys, so the code follows a fixed prefix (cheaper than parsing for a counter).
fn code_of(status: u16, body: &[u8]) -> Option<String> {
    if status < 400 {
        return None;
    }
    let rest = body.strip_prefix(br#"{"error":{"code":""#)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// A request id: the caller's `x-request-id` if it is a sane token, else a new one.
fn request_id(headers: &http::HeaderMap) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let given = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    match given {
        Some(id)
            if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_owned()
        }
        _ => format!("{:08x}-{:x}", std::process::id(), NEXT.fetch_add(1, Relaxed)),
    }
}

/// One request with the default options (no tokens, no rate limit): tests and fuzzers.
pub async fn handle<B>(node: &Node, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    static DEFAULT: std::sync::OnceLock<ServerOptions> = std::sync::OnceLock::new();
    handle_with(node, DEFAULT.get_or_init(ServerOptions::default), req).await
}

/// One request, start to answer: routing, access control, size limits, decoding, idempotency,
/// the command, metrics and the request id. Generic over the body so the fuzzers and tests can
/// drive the whole HTTP surface without a socket.
pub async fn handle_with<B>(
    node: &Node,
    options: &ServerOptions,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let id = request_id(req.headers());
    // The span (debug level, so free when debug logging is off) tags anything logged while
    // the request runs; the completion lines carry the id themselves, at any level.
    let span = tracing::debug_span!("request", request_id = %id);
    let (op, mut response) = answer(node, options, req).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let code = response.extensions().get::<OutcomeCode>().map(|c| c.0.clone());
    node.metrics().request(op, code.as_deref(), started.elapsed());
    let status = response.status().as_u16();
    if response.status().is_server_error() {
        tracing::warn!(request_id = %id, status, code = code.as_deref(), "request failed");
    } else {
        tracing::debug!(request_id = %id, status, code = code.as_deref(), "request");
    }
    response
}

async fn answer<B>(
    node: &Node,
    options: &ServerOptions,
    req: Request<B>,
) -> (Op, Response<Full<Bytes>>)
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let route = match routes::route(&parts.method, &path) {
        Ok(route) => route,
        Err(NoRoute::Unknown) => {
            let e = ApiError::new(ErrorCode::UnknownRoute, format!("no route {path}"));
            return (Op::Unrouted, error(e));
        }
        Err(NoRoute::Method(allow)) => {
            let message = format!("{} is not allowed on {path}; allowed: {allow}", parts.method);
            let mut response = error(ApiError::new(ErrorCode::MethodNotAllowed, message));
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return (Op::Unrouted, response);
        }
    };
    let op = op_of(&route);
    // Access before anything is read: an unauthenticated caller costs no body read.
    let authorization = parts.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    match options.tokens.check(auth::access(&route, options.metrics_public), authorization) {
        Ok(()) => {}
        Err(Denied::Unauthenticated) => {
            let e = ApiError::new(ErrorCode::Unauthorized, "a valid bearer token is required");
            let mut response = unread(error(e));
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return (op, response);
        }
        Err(Denied::Forbidden) => {
            let e = ApiError::new(ErrorCode::Forbidden, "this token's role may not do this");
            return (op, unread(error(e)));
        }
    }
    // Refuse an oversized body before reading it, by its declared length, and cap what is read
    // for bodies that declare none (chunked).
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = options.body_bytes_max;
    let too_large = || {
        node.metrics().rejected(Limit::BodyBytes);
        ApiError::new(ErrorCode::BodyTooLarge, format!("request body over {max} bytes"))
    };
    if declared.is_some_and(|n| n > max as u64) {
        return (op, unread(error(too_large())));
    }
    let body = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return (op, unread(error(too_large())));
        }
        Err(e) => {
            return (op, error(ApiError::invalid(format!("reading the body failed: {e}"))));
        }
    };
    let key = match parts.headers.get("idempotency-key") {
        None => None,
        Some(raw) => match raw.to_str().ok().map(IdempotencyKey::parse) {
            Some(Ok(key)) => Some(key),
            Some(Err(e)) => return (op, error(ApiError::invalid(e.to_string()))),
            None => {
                return (op, error(ApiError::invalid("Idempotency-Key: not printable ASCII")));
            }
        },
    };
    let response =
        match dispatch(node, options, &parts.method, &path, route, &body, key.as_ref()).await {
            Ok(response) => response,
            Err(e) => error(e),
        };
    (op, response)
}

/// Marks an answer given before the request's body was read: the connection closes after it,
/// and says so, since the unread body would otherwise be taken for the next request (a client
/// that pools connections would lose its next request to an unexpected EOF).
fn unread(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A rate-limit refusal: 429 with `Retry-After` in whole seconds.
fn rate_limited(node: &Node, retry_after_ms: u64) -> Response<Full<Bytes>> {
    node.metrics().rejected(Limit::UserRate);
    let seconds = retry_after_ms.div_ceil(1_000).max(1);
    let e = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many requests for this user; retry in {seconds} s"),
    );
    let mut response = error(e);
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// What kind of success answer a mutation gives.
#[derive(Clone, Copy)]
enum Answer {
    /// 201 with the deal.
    CreatedDeal,
    /// 201 with the one hold.
    ReservedHold,
    /// The outcome's own shape (200, or 201 with `holds` for a cart).
    Plain,
}

async fn dispatch(
    node: &Node,
    options: &ServerOptions,
    method: &Method,
    path: &str,
    route: Route<'_>,
    body: &Bytes,
    key: Option<&IdempotencyKey>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let hold_key = node.allocator().config().hold_id_key;
    let (command, scope, answer) = match route {
        Route::Healthz => return Ok(respond(wire::reply(200, &json!({ "status": "ok" })))),
        Route::Readyz => {
            // Listening implies recovery finished (the listener opens after it); ready also
            // needs a log that can still make changes durable.
            if node.wal().is_some_and(|wal| !wal.is_writable()) {
                let e = ApiError::new(ErrorCode::StorageUnavailable, "the log is not writable");
                return Err(e);
            }
            return Ok(respond(wire::reply(200, &json!({ "status": "ready" }))));
        }
        Route::Metrics => {
            let text = crate::metrics::scrape(node);
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return Ok(response);
        }
        Route::ListDeals => {
            let now_ms = node.now_ms();
            let views = node.allocator().deals(now_ms);
            let deals: Vec<_> = views.iter().map(wire::deal_json).collect();
            return Ok(respond(wire::reply(200, &json!({ "deals": deals }))));
        }
        Route::GetDeal(id) => {
            let id = wire::deal_id(id)?;
            let view = node.allocator().deal(id.as_str(), node.now_ms()).ok_or_else(|| {
                ApiError::new(ErrorCode::UnknownDeal, format!("no deal with id {id:?}"))
            })?;
            return Ok(respond(wire::reply(200, &wire::deal_json(&view))));
        }
        Route::GetHold(id) => {
            let seq = wire::hold_seq(id, hold_key)?;
            let view = node.allocator().hold(seq, node.now_ms()).ok_or_else(|| {
                ApiError::new(ErrorCode::UnknownHold, format!("no hold with id {id:?}"))
            })?;
            return Ok(respond(wire::reply(200, &wire::hold_json(&view, hold_key))));
        }
        Route::CreateDeal => {
            let defaults = (options.hold_ttl_ms_default, options.hold_ttl_ms_max);
            let command = parse_body::<wire::CreateDealBody>(body)?.command(defaults)?;
            (command, "admin".to_owned(), Answer::CreatedDeal)
        }
        Route::PauseDeal(id) | Route::ResumeDeal(id) | Route::EndDeal(id) => {
            parse_body::<wire::EmptyBody>(body)?;
            let id = wire::deal_id(id)?;
            let command = match route {
                Route::PauseDeal(_) => Command::PauseDeal(id),
                Route::ResumeDeal(_) => Command::ResumeDeal(id),
                _ => Command::EndDeal(id),
            };
            (command, "admin".to_owned(), Answer::Plain)
        }
        Route::AdjustStock(id) => {
            let delta = parse_body::<wire::StockBody>(body)?.delta;
            (
                Command::AdjustStock { deal_id: wire::deal_id(id)?, delta },
                "admin".to_owned(),
                Answer::Plain,
            )
        }
        Route::EndStream(id) => {
            parse_body::<wire::EmptyBody>(body)?;
            (Command::EndStream(wire::stream_id(id)?), "admin".to_owned(), Answer::Plain)
        }
        Route::Reserve(id) => {
            let deal_id = wire::deal_id(id)?;
            let parsed = parse_body::<wire::ReserveBody>(body)?;
            if let Err(retry_ms) = options.rate.take(parsed.user_id(), node.now_ms()) {
                return Ok(rate_limited(node, retry_ms));
            }
            let scope = format!("user:{}", parsed.user_id());
            (parsed.command(deal_id)?, scope, Answer::ReservedHold)
        }
        Route::CartReserve => {
            let parsed = parse_body::<wire::CartBody>(body)?;
            if let Err(retry_ms) = options.rate.take(parsed.user_id(), node.now_ms()) {
                return Ok(rate_limited(node, retry_ms));
            }
            let scope = format!("user:{}", parsed.user_id());
            (parsed.command()?, scope, Answer::Plain)
        }
        Route::Confirm(id) | Route::Release(id) | Route::Extend(id) => {
            let hold = wire::hold_seq(id, hold_key)?;
            let command = match route {
                Route::Confirm(_) => {
                    Command::Confirm { hold, qty: parse_body::<wire::ConfirmBody>(body)?.qty }
                }
                Route::Release(_) => {
                    parse_body::<wire::EmptyBody>(body)?;
                    Command::Release { hold }
                }
                _ => Command::Extend { hold, ttl_ms: parse_body::<wire::ExtendBody>(body)?.ttl_ms },
            };
            (command, format!("hold:{id}"), Answer::Plain)
        }
    };
    let render = |result: &Result<Outcome, CommandError>| answer_reply(answer, result, hold_key);
    let Some(key) = key else {
        let executed = node.execute(&command, &render);
        return Ok(respond(settle(node, executed).await));
    };
    // The fingerprint covers the route and the body's meaning, not its spelling: the body is
    // canonicalized (keys sorted, no whitespace) so a retry that re-serializes still matches.
    let canonical = canonical_json(body);
    let keyed = Keyed {
        scope: &scope,
        key: key.as_str(),
        fingerprint: fingerprint(&[method.as_str().as_bytes(), path.as_bytes(), &canonical]),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(IDEMPOTENCY_WAIT_MS_MAX);
    loop {
        match node.execute_keyed(&keyed, &command, &render, remembered) {
            KeyedResult::Ran(executed) => return Ok(respond(settle(node, executed).await)),
            KeyedResult::Replayed(executed) => {
                let mut response = respond(settle(node, executed).await);
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(response);
            }
            KeyedResult::Mismatch => {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyKeyReused,
                    "this Idempotency-Key was used with a different request",
                ));
            }
            KeyedResult::Full => {
                node.metrics().rejected(Limit::IdempotencyKeys);
                return Err(ApiError::new(
                    ErrorCode::IdempotencyCapacity,
                    "too many idempotency keys are remembered; retry later",
                ));
            }
            KeyedResult::InFlight if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            KeyedResult::InFlight => {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyKeyInUse,
                    "a request with this Idempotency-Key is still running",
                ));
            }
        }
    }
}

/// The answer once it may go out: after its record is durable, or a 503 if it cannot become so.
async fn settle(node: &Node, executed: Executed) -> StoredReply {
    match node.durable(executed.lsn).await {
        Ok(()) => executed.reply,
        Err(unavailable) => unavailable,
    }
}

fn answer_reply(
    answer: Answer,
    result: &Result<Outcome, CommandError>,
    key: HoldIdKey,
) -> StoredReply {
    match (answer, result) {
        (_, Err(e)) => ApiError::from(e).reply(),
        (Answer::CreatedDeal, Ok(Outcome::Deal(view))) => wire::reply(201, &wire::deal_json(view)),
        (Answer::ReservedHold, Ok(Outcome::Holds(holds))) if holds.len() == 1 => {
            wire::reply(201, &wire::hold_json(&holds[0], key))
        }
        (_, Ok(outcome)) => wire::outcome_reply(outcome, key),
    }
}

/// Which answers a retry gets back: decided outcomes (success, and refusals by the state such
/// as `sold_out`), not malformed requests (nothing was decided) or server trouble. Only
/// successes are kept in the log; remembered refusals last until a restart.
fn remembered(reply: &StoredReply) -> bool {
    matches!(reply.status, 200..=299 | 404 | 409)
}

fn canonical_json(body: &[u8]) -> Vec<u8> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => value.to_string().into_bytes(),
        // Not JSON: the request fails validation before this point; fall back to the bytes.
        Err(_) => body.to_vec(),
    }
}
