//! The peer listener: what a cluster member answers to the other members. Raft's RPCs, and the
//! client writes a follower forwards to the leader so that every node serves the whole API.
//!
//! This file is also the wire protocol's definition (routes, bodies, authentication), which
//! the client side (`network.rs`) is written against.
//!
//! # Protocol
//! HTTP/1.1, every request a `POST` with `Authorization: Bearer <cluster secret>` (the secret
//! verbatim; the listener compares the whole header value in constant time and answers 401 to
//! anything else, before it reads the body). Bodies are postcard:
//!
//! | path | request body | 200 answer |
//! |---|---|---|
//! | `/raft/append` | `AppendEntriesRequest` | `Result<AppendEntriesResponse, RaftError>` |
//! | `/raft/vote` | `VoteRequest` | `Result<VoteResponse, RaftError>` |
//! | `/raft/pre_vote` | `VoteRequest` | `Result<VoteResponse, RaftError>` |
//! | `/raft/snapshot` | [`SnapshotHead`], then the snapshot's bytes as they are | `Result<SnapshotResponse, Fatal>` |
//! | `/raft/transfer_leader` | `TransferLeaderRequest` | `Result<TransferLeaderResponse, Fatal>` |
//! | `/raft/forward` | [`ForwardRequest`] | [`ForwardResponse`] |
//!
//! A raft error travels inside a 200: it is the peer's answer, not a transport failure. Other
//! statuses are the listener refusing the request, with a one-line text body: 400 (the body
//! does not decode), 401 (no or wrong secret), 404 (no such path), 405 (not a `POST`), 413 (the
//! body is over the route's bound, refused before it is read when `Content-Length` says so).
//!
//! # Bounds
//! The bounds live in `livestock_core::limits` with the others: `PEER_RPC_BYTES_MAX` (raft
//! bodies), `PEER_SNAPSHOT_BYTES_MAX`, `PEER_FORWARD_BYTES_MAX`, `PEER_CONNECTIONS_MAX` (past
//! it a new connection is closed at once), `PEER_IDLE_MS_MAX` (an idle connection is closed).
//!
//! # Lifetime
//! [`serve_peers`] owns every connection it accepts (a `JoinSet`): when its shutdown future
//! completes it stops accepting, lets requests in flight finish for up to
//! `SHUTDOWN_GRACE_MS`, and drops the rest. Dropping (or aborting) the future closes every
//! connection at once, which is how a test kills a node.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use livestock_core::limits::{
    PEER_CONNECTIONS_MAX, PEER_FORWARD_BYTES_MAX, PEER_IDLE_MS_MAX, PEER_RPC_BYTES_MAX,
    PEER_SNAPSHOT_BYTES_MAX,
};
use openraft::errors::{Fatal, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::cluster::types::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};

/// How long a stopping listener lets requests in flight finish before it drops them.
const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// After a failed `accept` (out of file descriptors, most likely), wait this long before the
/// next: retrying at once would spin on a condition that takes a connection's close to clear.
const ACCEPT_RETRY_MS: u64 = 50;

/// The scheme of the `Authorization` header peers send: `Bearer <secret>`.
pub const AUTH_SCHEME: &str = "Bearer ";

/// A peer endpoint: one row per path, read by the client (which path to post to) and the
/// listener (what to call, how large a body may be).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRoute {
    Append,
    Vote,
    PreVote,
    Snapshot,
    TransferLeader,
    Forward,
}

impl PeerRoute {
    pub const ALL: [PeerRoute; 6] = [
        PeerRoute::Append,
        PeerRoute::Vote,
        PeerRoute::PreVote,
        PeerRoute::Snapshot,
        PeerRoute::TransferLeader,
        PeerRoute::Forward,
    ];

    pub fn path(self) -> &'static str {
        match self {
            PeerRoute::Append => "/raft/append",
            PeerRoute::Vote => "/raft/vote",
            PeerRoute::PreVote => "/raft/pre_vote",
            PeerRoute::Snapshot => "/raft/snapshot",
            PeerRoute::TransferLeader => "/raft/transfer_leader",
            PeerRoute::Forward => "/raft/forward",
        }
    }

    pub fn from_path(path: &str) -> Option<PeerRoute> {
        PeerRoute::ALL.into_iter().find(|route| route.path() == path)
    }

    /// The largest request body this route accepts (and, for the client, the largest answer
    /// it reads back: an answer is never larger than what it answers).
    pub fn body_bytes_max(self) -> u64 {
        let bytes = match self {
            PeerRoute::Snapshot => return PEER_SNAPSHOT_BYTES_MAX,
            PeerRoute::Forward => PEER_FORWARD_BYTES_MAX,
            PeerRoute::Append
            | PeerRoute::Vote
            | PeerRoute::PreVote
            | PeerRoute::TransferLeader => PEER_RPC_BYTES_MAX,
        };
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

/// A client's HTTP request, as a follower received it, for the leader to serve.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The leader's answer to a forwarded request, for the follower to hand back to its client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// What serves a forwarded request on the leader: the node's own HTTP routing.
pub type ForwardFn =
    Arc<dyn Fn(ForwardRequest) -> BoxFuture<'static, ForwardResponse> + Send + Sync>;

/// The first part of a snapshot's body; the snapshot's bytes follow it unframed, so that the
/// sender does not copy hundreds of MB into an encoding buffer, nor the receiver out of one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHead {
    /// The leader's vote, which the follower checks before installing.
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body is over {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    #[error("body could not be read: {0}")]
    Read(String),
}

/// Reads a whole body into one buffer, refusing it as soon as it passes `max_bytes` (or at
/// once, when its announced length does). One buffer, sized from the announced length: a
/// snapshot of hundreds of MB is not copied from frame to frame.
pub async fn read_body<B>(body: B, max_bytes: u64) -> Result<Vec<u8>, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let announced = body.size_hint().exact().unwrap_or(body.size_hint().lower());
    if announced > max_bytes {
        return Err(BodyError::TooLarge { max_bytes });
    }
    let mut buf = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let len = buf.len().saturating_add(data.len());
            if u64::try_from(len).unwrap_or(u64::MAX) > max_bytes {
                return Err(BodyError::TooLarge { max_bytes });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Splits a snapshot body into its head and its data, in place: the data is the same buffer
/// with the head's bytes moved out of its front.
pub fn decode_snapshot(mut body: Vec<u8>) -> Result<(Vote, Snapshot), postcard::Error> {
    let (head, rest): (SnapshotHead, &[u8]) = postcard::take_from_bytes(&body)?;
    let head_len = body.len() - rest.len();
    body.drain(..head_len);
    Ok((head.vote, Snapshot { meta: head.meta, snapshot: SnapshotData::new(body) }))
}

/// `a == b`, in a time that depends on the lengths only: the secret is not guessable byte by
/// byte from how long a refusal takes.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// What every connection's handler shares.
struct Shared<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    raft: Raft<TypeConfig, SM>,
    /// `Bearer <secret>`, the exact header value a peer must send; `None`: no check (a
    /// loopback cluster, see `network::secret_required`).
    authorization: Option<Vec<u8>>,
    forward: ForwardFn,
    on_append: Option<AppendHook>,
}

/// Told of every append the leader sent that this node accepted, with the leader's commit
/// index then: a follower's freshness for answering refusals itself (`Replica::fresh`).
pub type AppendHook = Arc<dyn Fn(Option<u64>) + Send + Sync>;

/// Serves peers on `listener` until `shutdown` completes: raft's RPCs to `raft`, forwarded
/// client requests to `forward`. With `secret`, a request without it is refused with 401.
pub async fn serve_peers<SM>(
    listener: TcpListener,
    raft: Raft<TypeConfig, SM>,
    secret: Option<Arc<str>>,
    forward: ForwardFn,
    shutdown: impl Future<Output = ()> + Send,
) where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    serve_peers_with(listener, raft, secret, forward, None, shutdown).await;
}

/// [`serve_peers`], also telling `on_append` of every accepted append.
pub async fn serve_peers_with<SM>(
    listener: TcpListener,
    raft: Raft<TypeConfig, SM>,
    secret: Option<Arc<str>>,
    forward: ForwardFn,
    on_append: Option<AppendHook>,
    shutdown: impl Future<Output = ()> + Send,
) where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    let authorization = secret.map(|s| format!("{AUTH_SCHEME}{s}").into_bytes());
    let shared = Arc::new(Shared { raft, authorization, forward, on_append });
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "peer listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                        continue;
                    }
                };
                // Past the bound, close at once: peers retry with backoff, and a flood of
                // connections must not grow memory without limit.
                if connections.len() >= PEER_CONNECTIONS_MAX {
                    tracing::warn!(%remote, "peer listener: connection bound reached, closing");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, remote, req).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                // The header read timeout also closes a connection idle between requests.
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(PEER_IDLE_MS_MAX));
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                connections.spawn(graceful.watch(conn));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("peer listener: requests still in flight after the grace period, dropped");
    }
    connections.shutdown().await;
}

type PeerResponse = Response<Full<Bytes>>;

/// Why the listener will not serve a request: a status and one line of text.
struct Refusal {
    status: StatusCode,
    message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal { status, message: message.into() }
}

fn refusal_response(refusal: Refusal) -> PeerResponse {
    let mut response = Response::new(Full::new(Bytes::from(refusal.message)));
    *response.status_mut() = refusal.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn answer(body: Vec<u8>) -> PeerResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("application/postcard"));
    response
}

fn encode<T: Serialize>(value: &T) -> PeerResponse {
    match postcard::to_stdvec(value) {
        Ok(body) => answer(body),
        // Our own types always encode; a failure here is a bug in a serde derive.
        Err(e) => panic!("peer answer does not encode: {e}"),
    }
}

fn decode<T: DeserializeOwned>(route: PeerRoute, body: &[u8]) -> Result<T, Refusal> {
    postcard::from_bytes(body).map_err(|e| {
        refuse(StatusCode::BAD_REQUEST, format!("{}: body does not decode: {e}", route.path()))
    })
}

async fn handle<SM>(shared: &Shared<SM>, remote: SocketAddr, req: Request<Incoming>) -> PeerResponse
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    route(shared, remote, req).await.unwrap_or_else(refusal_response)
}

async fn route<SM>(
    shared: &Shared<SM>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<PeerResponse, Refusal>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    let Some(route) = PeerRoute::from_path(req.uri().path()) else {
        return Err(refuse(StatusCode::NOT_FOUND, "no such peer route"));
    };
    if req.method() != Method::POST {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "peer routes take POST"));
    }
    if let Some(expected) = &shared.authorization {
        let presented = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
        if !constant_time_eq(expected, presented) {
            tracing::warn!(%remote, path = route.path(), "peer request without the cluster secret");
            return Err(refuse(StatusCode::UNAUTHORIZED, "wrong or missing cluster secret"));
        }
    }
    let max_bytes = route.body_bytes_max();
    let announced = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if announced.is_some_and(|len: u64| len > max_bytes) {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is over {max_bytes} bytes"),
        ));
    }
    let body = read_body(req.into_body(), max_bytes).await.map_err(|e| match e {
        BodyError::TooLarge { .. } => refuse(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        BodyError::Read(_) => refuse(StatusCode::BAD_REQUEST, e.to_string()),
    })?;
    let raft = &shared.raft;
    Ok(match route {
        PeerRoute::Append => {
            let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = decode(route, &body)?;
            let leader_commit = rpc.leader_commit.as_ref().map(|id| id.index);
            let answer = raft.append_entries(rpc).await;
            if let (Some(hook), Ok(openraft::raft::AppendEntriesResponse::Success)) =
                (&shared.on_append, &answer)
            {
                hook(leader_commit);
            }
            encode(&answer)
        }
        PeerRoute::Vote => encode(&raft.vote(decode(route, &body)?).await),
        PeerRoute::PreVote => encode(&raft.pre_vote(decode(route, &body)?).await),
        PeerRoute::Snapshot => {
            let (vote, snapshot) = decode_snapshot(body).map_err(|e| {
                refuse(StatusCode::BAD_REQUEST, format!("snapshot head does not decode: {e}"))
            })?;
            let installed: Result<_, Fatal<TypeConfig>> =
                raft.install_full_snapshot(vote, snapshot).await;
            encode(&installed)
        }
        PeerRoute::TransferLeader => {
            let transferred: Result<_, Fatal<TypeConfig>> =
                raft.handle_transfer_leader(decode(route, &body)?).await;
            encode(&transferred)
        }
        PeerRoute::Forward => encode(&(shared.forward)(decode(route, &body)?).await),
    })
}

/// The answer type of the raft routes, for the client to decode.
pub type RaftAnswer<T> = Result<T, RaftError<TypeConfig>>;
/// The answer type of the snapshot and leader transfer routes.
pub type FatalAnswer<T> = Result<T, Fatal<TypeConfig>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_their_paths() {
        for route in PeerRoute::ALL {
            assert_eq!(PeerRoute::from_path(route.path()), Some(route));
        }
        assert_eq!(PeerRoute::from_path("/raft/append/"), None);
        assert_eq!(PeerRoute::from_path("/raft"), None);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abc", b"Bearer abd"));
        assert!(!constant_time_eq(b"Bearer abc", b"Bearer abcd"));
        assert!(!constant_time_eq(b"Bearer abc", b""));
    }

    #[test]
    fn snapshot_body_splits_into_head_and_data() {
        let vote = Vote::new(3, 1);
        let meta = SnapshotMeta::default();
        let data = b"the checkpoint's bytes".to_vec();
        let head = SnapshotHead { vote, meta: meta.clone() };
        let mut body = postcard::to_stdvec(&head).unwrap();
        body.extend_from_slice(&data);
        let (got_vote, snapshot) = decode_snapshot(body).unwrap();
        assert_eq!(got_vote, vote);
        assert_eq!(snapshot.meta, meta);
        assert_eq!(snapshot.snapshot.into_inner(), data);
        assert!(decode_snapshot(vec![0xff; 3]).is_err());
    }

    #[tokio::test]
    async fn body_over_the_bound_is_refused() {
        let body = Full::new(Bytes::from(vec![0u8; 11]));
        assert!(matches!(read_body(body, 10).await, Err(BodyError::TooLarge { max_bytes: 10 })));
        let body = Full::new(Bytes::from(vec![7u8; 10]));
        assert_eq!(read_body(body, 10).await.unwrap(), vec![7u8; 10]);
    }
}
