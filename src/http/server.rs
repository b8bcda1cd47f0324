//! Connections, requests, and the expiry reaper.
//!
//! A request's life: route -> size check (before reading) -> body -> command -> (idempotency)
//! -> the node executes it synchronously -> the reply goes out. No lock is held across an
//! `.await`; the only waits are reading the body and, for a retry whose first attempt is still
//! running, a short poll.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::command::{Command, Outcome};
use crate::core::error::{CommandError, ErrorCode};
use crate::core::ids::{HoldIdKey, IdempotencyKey};
use crate::http::error::ApiError;
use crate::http::routes::{self, NoRoute, Route};
use crate::http::wire::{self, parse_body};
use crate::idempotency::{fingerprint, StoredReply};
use crate::limits::{EXPIRY_TICK_MS, IDEMPOTENCY_WAIT_MS_MAX, REQUEST_BODY_BYTES_MAX};
use crate::node::{Executed, Keyed, KeyedResult, Node};

/// How long a client may take to send its request headers before it is dropped.
const HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// A running server: its address, and the handle that stops it.
pub struct Server {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts serving `node`, plus its reaper.
    pub async fn start(addr: SocketAddr, node: Arc<Node>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(run(listener, node, stop));
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

async fn run(listener: TcpListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let reaper = tokio::spawn(reap(node.clone(), stop.clone()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let node = node.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let node = node.clone();
                    async move { Ok::<_, Infallible>(handle(&node, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
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

fn respond(reply: StoredReply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(reply.body));
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

/// One request, start to answer. Generic over the body so the fuzzers and tests can drive the
/// whole HTTP surface (routing, size limits, decoding, idempotency) without a socket.
pub async fn handle<B>(node: &Node, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let route = match routes::route(&parts.method, &path) {
        Ok(route) => route,
        Err(NoRoute::Unknown) => {
            return error(ApiError::new(ErrorCode::UnknownRoute, format!("no route {path}")));
        }
        Err(NoRoute::Method(allow)) => {
            let message = format!("{} is not allowed on {path}; allowed: {allow}", parts.method);
            let mut response = error(ApiError::new(ErrorCode::MethodNotAllowed, message));
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return response;
        }
    };
    // Refuse an oversized body before reading it, by its declared length, and cap what is read
    // for bodies that declare none (chunked).
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("request body over {REQUEST_BODY_BYTES_MAX} bytes"),
        )
    };
    if declared.is_some_and(|n| n > REQUEST_BODY_BYTES_MAX as u64) {
        return error(too_large());
    }
    let body = match Limited::new(body, REQUEST_BODY_BYTES_MAX).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return error(too_large()),
        Err(e) => return error(ApiError::invalid(format!("reading the body failed: {e}"))),
    };
    let key = match parts.headers.get("idempotency-key") {
        None => None,
        Some(raw) => match raw.to_str().ok().map(IdempotencyKey::parse) {
            Some(Ok(key)) => Some(key),
            Some(Err(e)) => return error(ApiError::invalid(e.to_string())),
            None => return error(ApiError::invalid("Idempotency-Key: not printable ASCII")),
        },
    };
    match dispatch(node, &parts.method, &path, route, &body, key.as_ref()).await {
        Ok(response) => response,
        Err(e) => error(e),
    }
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
    method: &Method,
    path: &str,
    route: Route<'_>,
    body: &Bytes,
    key: Option<&IdempotencyKey>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let hold_key = node.allocator().config().hold_id_key;
    let (command, scope, answer) = match route {
        Route::Healthz => return Ok(respond(wire::reply(200, &json!({ "status": "ok" })))),
        Route::ListDeals => {
            let now_ms = node.now_ms();
            let deals: Vec<_> =
                node.allocator().deals(now_ms).iter().map(wire::deal_json).collect();
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
            let command = parse_body::<wire::CreateDealBody>(body)?.command()?;
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
            let scope = format!("user:{}", parsed.user_id());
            (parsed.command(deal_id)?, scope, Answer::ReservedHold)
        }
        Route::CartReserve => {
            let parsed = parse_body::<wire::CartBody>(body)?;
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
