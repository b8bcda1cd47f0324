//! Raft's RPCs to the other members, over HTTP/1.1 (the protocol is defined in
//! `peer_server.rs`), and the forwarding of a client's write to the leader.
//!
//! One [`PeerNetwork`] per node holds one connection pool (hyper-util's client) shared by every
//! peer client openraft asks for, and by [`PeerNetwork::forward`]. HTTP/1.1 carries one request
//! per connection at a time, so the pool opens a connection per request in flight and keeps
//! them alive for the next: replication, heartbeats and a snapshot transfer to the same peer
//! run on connections of their own and never wait behind one another (which is why the
//! factory does not override `new_heartbeat_client` / `new_snapshot_client`).
//!
//! # Errors, as openraft sees them
//! - No connection (refused, reset, bad address), a refusal by the peer's listener (401: the
//!   secrets differ; 413), an answer that does not decode, or a peer whose raft has stopped
//!   (its `Fatal`): `Unreachable`, so openraft backs off ([`PeerClient::backoff`]: 50 ms
//!   doubling to 500 ms, see `livestock_core::limits`).
//! - A connection that failed in the middle of an exchange: `Network`, retried at once (the
//!   retry finds out whether the peer is gone, and is then `Unreachable`).
//! - No answer within the RPC's soft TTL (`RPCOption::soft_ttl`, before openraft's hard TTL):
//!   `Timeout`.
//! - The peer's verdict (a higher vote, a conflict, a refused vote) is not an error: it is the
//!   body of the answer, decoded as it was sent. openraft's `RPCError::RemoteError` cannot be
//!   built for these RPCs (their `RPCError<C>` has an uninhabited remote error type); the only
//!   remote error raft's handlers return is `Fatal`, mapped to `Unreachable` above.
//!
//! # Secret
//! Every request carries `Authorization: Bearer <secret>` (see `peer_server.rs`). The header
//! value is marked sensitive, and the `Debug` of these types prints `<redacted>` in its place.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use livestock_core::limits::{
    PEER_BACKOFF_MS_MAX, PEER_BACKOFF_MS_MIN, PEER_FORWARDS_IN_FLIGHT_MAX, PEER_POOL_IDLE_MS,
    PEER_SNAPSHOT_BYTES_MAX, PEER_SNAPSHOT_BYTES_PER_S_MIN, PEER_SNAPSHOT_TIMEOUT_MS_MIN,
};
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::cluster::peer_server::{
    read_body, FatalAnswer, ForwardRequest, ForwardResponse, PeerRoute, RaftAnswer, SnapshotHead,
    AUTH_SCHEME,
};
use crate::cluster::types::{NodeId, PeerNode, Snapshot, SnapshotData, TypeConfig, Vote};

/// A refusal's text is read up to this much: it is one line, and only ever logged.
const REFUSAL_BYTES_MAX: u64 = 4 * 1024;

type PeerBody = BoxBody<Bytes, Infallible>;
type HttpClient = Client<HttpConnector, PeerBody>;

/// Why a cluster secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("the cluster secret is empty")]
    Empty,
    #[error("the cluster secret must be visible ASCII (no spaces or control characters)")]
    NotVisibleAscii,
}

/// Why a forwarded request got no answer from the leader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The request did not reach the leader (no connection): it was not applied.
    #[error("leader unreachable: {message}")]
    Unreachable { message: String },
    /// The connection failed after the request went out, or the answer did not decode: the
    /// leader may have applied it.
    #[error("connection to the leader failed mid-request: {message}")]
    Interrupted { message: String },
    /// No answer in time: the leader may have applied it.
    #[error("no answer from the leader within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The leader's peer listener refused the request (401: the cluster secrets differ).
    #[error("refused by the leader with {status}: {message}")]
    Refused { status: u16, message: String },
}

/// How one exchange with a peer failed.
#[derive(Debug)]
enum CallError {
    /// No connection was made.
    Unreachable(String),
    /// The connection failed mid-exchange.
    Interrupted(String),
    /// The peer's listener answered with something other than 200.
    Refused { status: u16, message: String },
    /// A 200 whose body does not decode.
    Garbled(String),
}

/// The cluster's network, one per node: the factory of raft's peer clients and the client of
/// forwarded writes. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct PeerNetwork {
    /// This node: who is timing out, in `Timeout` errors.
    id: NodeId,
    /// `Bearer <secret>`, marked sensitive; `None` for a loopback cluster without a secret.
    authorization: Option<HeaderValue>,
    client: HttpClient,
    /// Bounds the forwarded requests in flight, hence the connections they hold open.
    forwards: Arc<Semaphore>,
}

impl fmt::Debug for PeerNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerNetwork")
            .field("id", &self.id)
            .field("secret", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl PeerNetwork {
    /// The network of node `id`. With a `secret`, every request carries it; `None` is for a
    /// cluster on loopback only (the caller checks: [`secret_required`]).
    pub fn new(id: NodeId, secret: Option<Arc<str>>) -> Result<PeerNetwork, SecretError> {
        let authorization = secret.map(|s| authorization_header(&s)).transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(PEER_POOL_IDLE_MS))
            .build(connector);
        Ok(PeerNetwork {
            id,
            authorization,
            client,
            forwards: Arc::new(Semaphore::new(PEER_FORWARDS_IN_FLIGHT_MAX)),
        })
    }

    /// Sends a client's request to the leader's peer listener (`peer_addr`), for its
    /// `forward` callback to serve, and returns the leader's answer.
    pub async fn forward(
        &self,
        peer_addr: &str,
        req: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardResponse, ForwardError> {
        let body = full(encode(&req));
        let exchange = async {
            let Ok(_permit) = self.forwards.acquire().await else {
                unreachable!("the forward semaphore is never closed")
            };
            let answer = self.exchange(peer_addr, PeerRoute::Forward, body, None).await?;
            postcard::from_bytes(&answer).map_err(|e| CallError::Garbled(e.to_string()))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(match e {
                CallError::Unreachable(message) => ForwardError::Unreachable { message },
                CallError::Interrupted(message) => ForwardError::Interrupted { message },
                CallError::Garbled(e) => {
                    ForwardError::Interrupted { message: format!("answer does not decode: {e}") }
                }
                CallError::Refused { status, message } => ForwardError::Refused { status, message },
            }),
            Err(_) => Err(ForwardError::Timeout { timeout_ms: millis(timeout) }),
        }
    }

    /// One request to `route` at `addr` and its 200 answer's body; no deadline of its own
    /// (the callers put theirs around it). `content_length`: for a body that does not know
    /// its own length (a snapshot's two parts).
    async fn exchange(
        &self,
        addr: &str,
        route: PeerRoute,
        body: PeerBody,
        content_length: Option<usize>,
    ) -> Result<Vec<u8>, CallError> {
        let uri: Uri = format!("http://{addr}{}", route.path())
            .parse()
            .map_err(|e| CallError::Unreachable(format!("peer address {addr:?}: {e}")))?;
        let mut req = Request::post(uri);
        if let Some(authorization) = &self.authorization {
            req = req.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(len) = content_length {
            req = req.header(CONTENT_LENGTH, len);
        }
        let req = req
            .header(CONTENT_TYPE, "application/postcard")
            .body(body)
            .map_err(|e| CallError::Unreachable(format!("request to {addr}: {e}")))?;
        let response = self.client.request(req).await.map_err(|e| {
            let message = format!("{addr}{}: {}", route.path(), error_chain(&e));
            if e.is_connect() {
                CallError::Unreachable(message)
            } else {
                CallError::Interrupted(message)
            }
        })?;
        let status = response.status();
        if status != StatusCode::OK {
            let text = read_body(response.into_body(), REFUSAL_BYTES_MAX).await.unwrap_or_default();
            let message = format!("{addr}{}: {}", route.path(), String::from_utf8_lossy(&text));
            return Err(CallError::Refused { status: status.as_u16(), message });
        }
        read_body(response.into_body(), route.body_bytes_max())
            .await
            .map_err(|e| CallError::Interrupted(format!("{addr}{}: answer: {e}", route.path())))
    }
}

fn authorization_header(secret: &str) -> Result<HeaderValue, SecretError> {
    if secret.is_empty() {
        return Err(SecretError::Empty);
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SecretError::NotVisibleAscii);
    }
    let mut value = HeaderValue::from_str(&format!("{AUTH_SCHEME}{secret}"))
        .map_err(|_| SecretError::NotVisibleAscii)?;
    value.set_sensitive(true);
    Ok(value)
}

/// Whether a cluster with these peers must have a secret: as soon as one address is not
/// provably loopback (an IP in 127.0.0.0/8 or ::1, or `localhost`). A host name other than
/// `localhost` counts as remote: we do not resolve it here.
pub fn secret_required(peers: &[(NodeId, String)]) -> bool {
    peers.iter().any(|(_, addr)| !is_loopback(addr))
}

fn is_loopback(addr: &str) -> bool {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// A client of one peer, made by openraft through [`PeerNetwork`]'s factory.
#[derive(Debug)]
pub struct PeerClient {
    network: PeerNetwork,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        PeerClient { network: self.clone(), target, addr: node.peer_addr.clone() }
    }
}

impl PeerClient {
    /// One raft RPC with the soft TTL as its deadline.
    async fn rpc<Req, Resp>(
        &self,
        route: PeerRoute,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        RaftAnswer<Resp>: DeserializeOwned,
    {
        let answer: RaftAnswer<Resp> = self.call(route, action, req, option.soft_ttl()).await?;
        answer.map_err(|e| match e {
            RaftError::Fatal(fatal) => self.unreachable(format!("raft stopped: {fatal}")),
            RaftError::APIError(never) => match never {},
        })
    }

    /// A request and its decoded 200 answer within `timeout`.
    async fn call<Req, Answer>(
        &self,
        route: PeerRoute,
        action: RPCTypes,
        req: &Req,
        timeout: Duration,
    ) -> Result<Answer, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Answer: DeserializeOwned,
    {
        let exchange = self.network.exchange(&self.addr, route, full(encode(req)), None);
        let body = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result.map_err(|e| self.rpc_error(e))?,
            Err(_) => return Err(self.timeout(action, timeout)),
        };
        postcard::from_bytes(&body)
            .map_err(|e| self.unreachable(format!("{}: answer does not decode: {e}", route.path())))
    }

    fn rpc_error(&self, e: CallError) -> RPCError<TypeConfig> {
        match e {
            CallError::Unreachable(message) | CallError::Garbled(message) => {
                self.unreachable(message)
            }
            CallError::Refused { status, message } => {
                self.unreachable(format!("refused with {status}: {message}"))
            }
            CallError::Interrupted(message) => RPCError::Network(NetworkError::from_string(
                format!("peer {}: {message}", self.target),
            )),
        }
    }

    fn unreachable(&self, message: String) -> RPCError<TypeConfig> {
        RPCError::Unreachable(Unreachable::from_string(format!(
            "peer {} at {}: {message}",
            self.target, self.addr
        )))
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> RPCError<TypeConfig> {
        RPCError::Timeout(Timeout { action, id: self.network.id, target: self.target, timeout })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(PeerRoute::Append, RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(PeerRoute::Vote, RPCTypes::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(PeerRoute::PreVote, RPCTypes::Vote, &rpc, &option).await
    }

    /// The whole snapshot in one request: its head, then its bytes as they are (no copy).
    /// The deadline grows with the size (see [`snapshot_timeout`]); `cancel` drops the
    /// request, and with it the connection.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let head = encode(&SnapshotHead { vote, meta: snapshot.meta });
        let data = snapshot.snapshot.into_inner();
        let len = head.len().saturating_add(data.len());
        let len_bytes = u64::try_from(len).unwrap_or(u64::MAX);
        if len_bytes > PEER_SNAPSHOT_BYTES_MAX {
            return Err(StreamingError::Unreachable(Unreachable::from_string(format!(
                "snapshot of {len} bytes for peer {} is over PEER_SNAPSHOT_BYTES_MAX",
                self.target
            ))));
        }
        let frames = [Bytes::from(head), Bytes::from(data)].map(|b| Ok(Frame::data(b)));
        let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
        let timeout = snapshot_timeout(option.soft_ttl(), len_bytes);
        let send = async {
            let exchange = self.network.exchange(&self.addr, PeerRoute::Snapshot, body, Some(len));
            let answer = match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result.map_err(|e| self.rpc_error(e))?,
                Err(_) => return Err(self.timeout(RPCTypes::InstallSnapshot, timeout)),
            };
            let answer: FatalAnswer<SnapshotResponse<TypeConfig>> = postcard::from_bytes(&answer)
                .map_err(|e| {
                self.unreachable(format!("snapshot answer does not decode: {e}"))
            })?;
            answer.map_err(|fatal| self.unreachable(format!("raft stopped: {fatal}")))
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = send => sent.map_err(StreamingError::from),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let answer: FatalAnswer<TransferLeaderResponse<TypeConfig>> = self
            .call(PeerRoute::TransferLeader, RPCTypes::TransferLeader, &req, option.soft_ttl())
            .await?;
        answer.map_err(|fatal| self.unreachable(format!("raft stopped: {fatal}")))
    }

    /// 50 ms, doubling to 500 ms: a dead peer is tried twice a second, and found within half
    /// a second of its return. openraft drops the backoff after the first RPC that succeeds.
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(backoff_ms().map(Duration::from_millis)))
    }
}

fn backoff_ms() -> impl Iterator<Item = u64> + Send + 'static {
    std::iter::successors(Some(PEER_BACKOFF_MS_MIN), |ms| {
        Some(ms.saturating_mul(2).min(PEER_BACKOFF_MS_MAX))
    })
}

/// A snapshot's deadline: openraft's soft TTL, but at least the floor plus the time to send
/// `len_bytes` at the slowest rate we accept.
pub fn snapshot_timeout(soft_ttl: Duration, len_bytes: u64) -> Duration {
    let transfer =
        Duration::from_millis(len_bytes.saturating_mul(1000) / PEER_SNAPSHOT_BYTES_PER_S_MIN);
    soft_ttl.max(Duration::from_millis(PEER_SNAPSHOT_TIMEOUT_MS_MIN) + transfer)
}

fn full(body: Vec<u8>) -> PeerBody {
    BodyExt::boxed(Full::new(Bytes::from(body)))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_stdvec(value) {
        Ok(body) => body,
        // Our own types always encode; a failure here is a bug in a serde derive.
        Err(e) => panic!("peer request does not encode: {e}"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An error with its causes, one line: hyper's top-level messages ("client error (Connect)")
/// say little without them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(addrs: &[&str]) -> Vec<(NodeId, String)> {
        addrs.iter().zip(1..).map(|(a, id)| (id, a.to_string())).collect()
    }

    #[test]
    fn a_secret_is_required_as_soon_as_one_peer_is_not_loopback() {
        assert!(!secret_required(&peers(&["127.0.0.1:7001", "127.0.0.2:7002", "[::1]:7003"])));
        assert!(!secret_required(&peers(&["localhost:7001", "LOCALHOST:7002"])));
        assert!(secret_required(&peers(&["127.0.0.1:7001", "10.0.0.2:7002"])));
        assert!(secret_required(&peers(&["127.0.0.1:7001", "node2.internal:7002"])));
        assert!(secret_required(&peers(&["0.0.0.0:7001"])));
        assert!(!secret_required(&[]));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let network = PeerNetwork::new(1, Some(Arc::from("hunter2-cluster"))).unwrap();
        let client = PeerClient { network: network.clone(), target: 2, addr: "x:1".into() };
        for text in [format!("{network:?}"), format!("{client:?}"), format!("{network:#?}")] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    #[test]
    fn unusable_secrets_are_refused() {
        assert_eq!(PeerNetwork::new(1, Some(Arc::from(""))).err(), Some(SecretError::Empty));
        for bad in ["two words", "tab\there", "line\n", "é"] {
            let got = PeerNetwork::new(1, Some(Arc::from(bad))).err();
            assert_eq!(got, Some(SecretError::NotVisibleAscii), "{bad:?}");
        }
        assert!(PeerNetwork::new(1, None).is_ok());
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let got: Vec<u64> = backoff_ms().take(6).collect();
        assert_eq!(got, vec![50, 100, 200, 400, 500, 500]);
    }

    #[test]
    fn snapshot_deadline_grows_with_size() {
        let soft = Duration::from_millis(150);
        assert_eq!(snapshot_timeout(soft, 0), Duration::from_millis(PEER_SNAPSHOT_TIMEOUT_MS_MIN));
        let big = snapshot_timeout(soft, 300 * 1024 * 1024);
        assert!(big > Duration::from_secs(40), "{big:?}");
        let long_soft = Duration::from_secs(3600);
        assert_eq!(snapshot_timeout(long_soft, 1), long_soft);
    }
}
