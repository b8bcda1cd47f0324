//! One request, start to answer: route -> access -> media type and size (before reading) ->
//! body -> idempotency key -> the endpoint's handler -> the node executes -> the answer waits
//! for durability -> metrics and the request id.
//!
//! No lock is held across an `.await`; the only waits are reading the body, the durability of
//! the answer's log record, and, for a retry whose first attempt is still running, a short
//! poll. Generic over the body so the fuzzers and tests drive the whole surface without a
//! socket.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use livestock_core::error::ErrorCode;
use livestock_core::ids::IdempotencyKey;
use livestock_core::limits::IDEMPOTENCY_WAIT_MS_MAX;
use tracing::Instrument;

use crate::http::auth::Denied;
use crate::http::body::Body;
use crate::http::cluster;
use crate::http::endpoints::{self, NoRoute};
use crate::http::error::ApiError;
use crate::http::handlers::{self, Action, Answer, Call};
use crate::http::options::ServerOptions;
use crate::http::refusal;
use crate::http::response::{conditional, respond, OutcomeCode};
use crate::http::wire;
use crate::idempotency::{fingerprint, StoredReply};
use crate::metrics::{Limit, Op};
use crate::node::{Answered, Keyed, KeyedResult, Node, Unavailable};

fn error(e: ApiError) -> Response<Full<Bytes>> {
    if e.code == ErrorCode::NoLeader {
        return cluster::no_leader(e.message);
    }
    respond(e.reply())
}

fn unavailable(e: Unavailable) -> ApiError {
    match e {
        Unavailable::Storage(_) => ApiError::new(ErrorCode::StorageUnavailable, e.to_string()),
        Unavailable::Cluster(_) => ApiError::new(ErrorCode::NoLeader, e.to_string()),
    }
}

/// A constant, not a `&str`: `HeaderMap::insert` copies a name given as a string.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request id: the caller's `x-request-id` if it is a sane token (the header value itself,
/// shared, not copied), else a new one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    match headers.get(X_REQUEST_ID) {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id.as_bytes().iter().all(u8::is_ascii_graphic) =>
        {
            id.clone()
        }
        _ => new_request_id(),
    }
}

/// Bytes of request ids a thread writes into one buffer before it takes another: one
/// allocation per ~700 requests instead of one per request (the id must be a `Bytes` the
/// response owns; each is a slice of the thread's buffer).
const REQUEST_ID_BUFFER_BYTES: usize = 16 * 1024;

/// `{pid:08x}-{thread:x}-{n:x}`: unique in the process (one counter per thread, each thread's
/// ids prefixed with its own number), sortable by nothing, and made without a shared write.
fn new_request_id() -> HeaderValue {
    use std::cell::{Cell, RefCell};
    use std::fmt::Write as _;
    static THREADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    thread_local! {
        static THREAD: u64 = THREADS.fetch_add(1, Relaxed);
        // Read once: `getpid` is a system call, and showed in the sold-out answer's profile.
        static PID: u32 = std::process::id();
        static NEXT: Cell<u64> = const { Cell::new(0) };
        static BUFFER: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
    }
    let n = NEXT.with(|next| {
        let n = next.get();
        next.set(n + 1);
        n
    });
    let thread = THREAD.with(|t| *t);
    let pid = PID.with(|p| *p);
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        // 8 + 1 + 16 + 1 + 16 hex digits at most.
        if buffer.capacity() < 48 {
            *buffer = bytes::BytesMut::with_capacity(REQUEST_ID_BUFFER_BYTES);
        }
        let written = write!(buffer, "{pid:08x}-{thread:x}-{n:x}");
        debug_assert!(written.is_ok(), "BytesMut takes any write");
        match HeaderValue::from_maybe_shared(buffer.split().freeze()) {
            Ok(value) => value,
            Err(_) => unreachable!("hex digits and dashes are a valid header value"),
        }
    })
}

/// One request with the default options (no tokens, no rate limit): tests and fuzzers. With
/// no server, no feed publisher runs: a live feed answers its first events and ends.
pub async fn handle<B>(node: &Node, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    static DEFAULT: std::sync::OnceLock<ServerOptions> = std::sync::OnceLock::new();
    handle_with(node, DEFAULT.get_or_init(ServerOptions::default), req).await
}

/// One request, start to answer, with metrics and the request id.
pub async fn handle_with<B>(node: &Node, options: &ServerOptions, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let id_value = request_id(req.headers());
    let id = id_value.to_str().unwrap_or_default();
    // The span (debug level, so free when debug logging is off) tags anything logged while
    // the request runs; the completion lines carry the id themselves, at any level.
    let span = tracing::debug_span!("request", request_id = %id);
    let (op, code, mut response) = answer(node, options, req).instrument(span).await;
    response.headers_mut().insert(X_REQUEST_ID, id_value.clone());
    node.metrics().request(op, code, started.elapsed());
    let status = response.status().as_u16();
    let code = code.map(ErrorCode::as_str);
    if response.status().is_server_error() {
        tracing::warn!(request_id = %id, status, code, "request failed");
    } else {
        tracing::debug!(request_id = %id, status, code, "request");
    }
    response
}

/// Whether a declared `Content-Type` is JSON (`application/json`, or a `+json` type, with any
/// parameters). No `Content-Type` at all is accepted as JSON: many clients send none.
fn is_json(content_type: &HeaderValue) -> bool {
    // Compared without allocating: this runs on every mutation.
    let value = content_type.as_bytes();
    let essence = value.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
    let (prefix, suffix) = (b"application/".as_slice(), b"+json".as_slice());
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > prefix.len() + suffix.len()
            && essence[..prefix.len()].eq_ignore_ascii_case(prefix)
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
}

/// An answer with the error code it carries, for the metrics and the log line.
fn coded(op: Op, response: Response<Full<Bytes>>) -> (Op, Option<ErrorCode>, Response<Body>) {
    let code = response.extensions().get::<OutcomeCode>().map(|c| c.0);
    (op, code, response.map(Body::Full))
}

async fn answer<B>(
    node: &Node,
    options: &ServerOptions,
    req: Request<B>,
) -> (Op, Option<ErrorCode>, Response<Body>)
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let (endpoint, param) = match endpoints::find(&parts.method, path) {
        Ok(found) => found,
        Err(NoRoute::Unknown) => {
            let e = ApiError::new(ErrorCode::UnknownRoute, format!("no route {path}"));
            return coded(Op::Unrouted, error(e));
        }
        Err(NoRoute::Method(allow)) => {
            let message = format!("{} is not allowed on {path}; allowed: {allow}", parts.method);
            let mut response = error(ApiError::new(ErrorCode::MethodNotAllowed, message));
            if let Ok(allow) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            return coded(Op::Unrouted, response);
        }
    };
    let op = endpoint.op;
    // Access before anything is read: an unauthenticated caller costs no body read.
    let authorization = parts.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    let access = endpoint.access.resolve(options.metrics_public, options.feed_public);
    match options.tokens.check(access, authorization) {
        Ok(()) => {}
        Err(Denied::Unauthenticated) => {
            let e = ApiError::new(ErrorCode::Unauthorized, "a valid bearer token is required");
            let mut response = unread(error(e));
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return coded(op, response);
        }
        Err(Denied::Forbidden) => {
            let e = ApiError::new(ErrorCode::Forbidden, "this token's role may not do this");
            return coded(op, unread(error(e)));
        }
    }
    if parts.method == Method::POST {
        if let Some(declared) = parts.headers.get(header::CONTENT_TYPE) {
            if !is_json(declared) {
                let shown = String::from_utf8_lossy(declared.as_bytes()).into_owned();
                let e = ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!(
                        "the body must be JSON (Content-Type: application/json), not {shown:?}"
                    ),
                );
                return coded(op, unread(error(e)));
            }
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
    if declared.is_some_and(|n| usize::try_from(n).map_or(true, |n| n > max)) {
        return coded(op, unread(error(too_large())));
    }
    let body = match read_body(body, max).await {
        Ok(body) => body,
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return coded(op, unread(error(too_large())));
        }
        Err(e) => {
            return coded(op, error(ApiError::invalid(format!("reading the body failed: {e}"))));
        }
    };
    // Checked here, made (an allocation) only where the full path needs it.
    let key = match parts.headers.get("idempotency-key") {
        None => None,
        Some(raw) => match raw.to_str().ok().map(|k| IdempotencyKey::validate(k).map(|()| k)) {
            Some(Ok(key)) => Some(key),
            Some(Err(e)) => return coded(op, error(ApiError::invalid(e.to_string()))),
            None => {
                return coded(op, error(ApiError::invalid("Idempotency-Key: not printable ASCII")));
            }
        },
    };
    let call = Call {
        node,
        options,
        param,
        body: &body,
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    if let Some(replica) = node.replica() {
        // Boxed: the cluster path's future (forwarding, read barriers) is large, and inline it
        // made every request's future bigger to move: +8% on the single-node sold-out answer.
        if let Some(response) = Box::pin(cluster::route(replica, op, &parts, &body, &call)).await {
            return coded(op, response);
        }
    }
    // Here this node decides (alone, or as the leader): most of a burst is answered now.
    if op == Op::Reserve {
        let shortcut = match &key {
            None => refusal::answer(&call),
            Some(key) => refusal::answer_keyed(&call, key, path),
        };
        if let Some((code, response)) = shortcut {
            return (op, Some(code), response.map(Body::Full));
        }
    }
    let response = match (endpoint.handler)(&call) {
        Ok(Action::Reply(reply)) => respond(reply),
        Ok(Action::Response(response)) => conditional(&parts.headers, response),
        Ok(Action::Feed(response)) => return (op, None, response),
        Ok(Action::Execute { command, scope, answer }) => {
            let request = Mutation { method: &parts.method, path, body: &body, scope: &scope };
            let key = key.map(IdempotencyKey::parse).transpose();
            let Ok(key) = key else { unreachable!("the key was validated above") };
            match execute(node, &command, answer, key.as_ref(), request).await {
                Ok(response) => response,
                Err(e) => error(e),
            }
        }
        Err(e) => error(e),
    };
    coded(op, response)
}

/// The whole body, at most `max` bytes. A body that comes in one frame (every small request)
/// is kept as that frame's bytes, shared with the connection's buffer: no copy and no
/// allocation (`BodyExt::collect` would allocate a list for even one frame).
async fn read_body<B>(body: B, max: usize) -> Result<Bytes, BoxError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(Limited::new(body, max));
    let mut first: Option<Bytes> = None;
    let mut more: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue }; // trailers: not ours
        match (&first, &mut more) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = bytes::BytesMut::with_capacity(head.len() + data.len());
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match (first, more) {
        (_, Some(joined)) => joined.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Marks an answer given before the request's body was read: the connection closes after it,
/// and says so, since the unread body would otherwise be taken for the next request (a client
/// that pools connections would lose its next request to an unexpected EOF).
fn unread(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What identifies a mutation for its idempotency key.
struct Mutation<'a> {
    method: &'a Method,
    path: &'a str,
    body: &'a [u8],
    scope: &'a str,
}

async fn execute(
    node: &Node,
    command: &livestock_core::command::Command,
    answer: Answer,
    key: Option<&IdempotencyKey>,
    request: Mutation<'_>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let hold_key = node.allocator().config().hold_id_key;
    let Some(key) = key else {
        let executed = node.execute(command).map_err(unavailable)?;
        node.durable(executed.lsn).await.map_err(unavailable)?;
        // Rendered here, outside every allocator lock: an unkeyed answer is kept nowhere.
        return Ok(respond(handlers::render(answer, &executed.result, hold_key)));
    };
    let render = |result: &_| handlers::render(answer, result, hold_key);
    // The fingerprint covers the route and the body's meaning, not its spelling: the body is
    // canonicalized (keys sorted, no whitespace) so a retry that re-serializes still matches.
    let canonical = wire::canonical_json(request.body);
    let method = request.method.as_str().as_bytes();
    let keyed = Keyed {
        scope: request.scope,
        key: key.as_str(),
        fingerprint: fingerprint(&[method, request.path.as_bytes(), &canonical]),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(IDEMPOTENCY_WAIT_MS_MAX);
    loop {
        match node.execute_keyed(&keyed, command, &render, remembered).map_err(unavailable)? {
            KeyedResult::Ran(answered) => return Ok(respond(settle(node, answered).await?)),
            KeyedResult::Replayed(answered) => {
                let mut response = respond(settle(node, answered).await?);
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
async fn settle(node: &Node, answered: Answered) -> Result<StoredReply, ApiError> {
    node.durable(answered.lsn).await.map_err(unavailable)?;
    Ok(answered.reply)
}

/// Which answers a retry gets back: decided outcomes (success, and refusals by the state such
/// as `sold_out`), not malformed requests (nothing was decided) or server trouble. Only
/// successes are kept in the log; remembered refusals last until a restart.
pub fn remembered(reply: &StoredReply) -> bool {
    matches!(reply.status, 200..=299 | 404 | 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        let json = |v: &'static str| is_json(&HeaderValue::from_static(v));
        assert!(json("application/json"));
        assert!(json("application/json; charset=utf-8"));
        assert!(json("Application/JSON"));
        assert!(json("application/merge-patch+json"));
        assert!(!json("text/plain"));
        assert!(!json("application/x-www-form-urlencoded"));
        assert!(!json("application/jsonx"));
        assert!(!json("text/json+xml"));
    }
}
