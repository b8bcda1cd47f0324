//! Cluster mode in the request path: which node answers a request.
//!
//! Every node serves the whole API. The leader executes; before a read it passes the read
//! barrier (read index), so reads are linearizable. A follower answers a reserve that its own
//! state says is sold out while it is fresh (at most `stale_refusal_ms` behind the leader: a
//! refusal changes nothing, and it is most of a burst); everything else it forwards to the
//! leader over the peer link and hands back the leader's answer. A request forwarded once is
//! never forwarded again (a node that is no longer leader answers 503 `no_leader`), so two
//! nodes with stale views cannot bounce a request between them.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use livestock_core::command::Command;
use livestock_core::error::{CommandError, ErrorCode};
use openraft::ChangeMembers;

use crate::cluster::peer_server::ForwardRequest;
use crate::cluster::replica::{NotDecided, Replica};
use crate::cluster::types::{NodeId, PeerNode};
use crate::http::error::ApiError;
use crate::http::handlers::{self, Action, Call};
use crate::http::refusal;
use crate::http::response::{respond, OutcomeCode};
use crate::metrics::Op;

/// Marks a request a follower forwarded to the leader.
pub const FORWARDED: &str = "x-livestock-forwarded";

/// Request headers that travel with a forwarded request (the rest are hop-by-hop or
/// connection details the leader does not need).
const FORWARDED_HEADERS: [&str; 6] =
    ["authorization", "content-type", "idempotency-key", "x-request-id", "accept", "if-none-match"];

/// A 503 `no_leader` with `Retry-After: 1`: a client retries within a second or two, by which
/// time an election has normally finished (docs/replication.md has the figures).
pub fn no_leader(message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = respond(ApiError::new(ErrorCode::NoLeader, message).reply());
    response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

pub fn not_decided(e: &NotDecided) -> Response<Full<Bytes>> {
    no_leader(e.to_string())
}

/// What happens to a request in cluster mode before its handler runs: `None` to go on here
/// (this node leads; a read has passed the barrier), or the answer.
pub async fn route(
    replica: &Replica,
    op: Op,
    parts: &http::request::Parts,
    body: &Bytes,
    call: &Call<'_>,
) -> Option<Response<Full<Bytes>>> {
    if op.is_local() {
        return None;
    }
    if op == Op::ClusterMembers {
        return Some(match replica.decide().map(drop) {
            Ok(()) => change_membership(replica, call).await,
            Err(why) => forward(replica, why, parts, body).await,
        });
    }
    if parts.method == Method::GET {
        // A read needs no right to decide, only the leadership confirmed by a quorum and the
        // applied state caught up to it: a newly elected leader serves reads before it decides.
        if replica.raft.as_leader().is_ok() {
            return replica.read_barrier().await.err().map(|e| not_decided(&e));
        }
        return Some(forward(replica, replica.not_leader(), parts, body).await);
    }
    // The guard is dropped at once: it must not be held across an `.await`.
    let leading = replica.decide().map(drop);
    match leading {
        Ok(()) => None,
        Err(why) => {
            if op == Op::Reserve {
                if let Some(answer) = stale_refusal(replica, parts, call) {
                    return Some(answer);
                }
            }
            Some(forward(replica, why, parts, body).await)
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: NodeId,
    peer_addr: String,
}

/// Adds a node (`POST /v1/cluster/members {id, peer_addr}`: first as a learner that catches up
/// from a snapshot and the log, then as a voter, through joint consensus) or removes one
/// (`POST /v1/cluster/members/{id}/remove`). Answers with the cluster status after the change.
async fn change_membership(replica: &Replica, call: &Call<'_>) -> Response<Full<Bytes>> {
    let invalid = |message: String| respond(ApiError::invalid(message).reply());
    let voters: std::collections::BTreeSet<NodeId> =
        replica.status().members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let changed = if call.param.is_empty() {
        let add: AddMember = match serde_json::from_slice(call.body) {
            Ok(add) => add,
            Err(e) => return invalid(format!("body: {e}")),
        };
        if add.id == 0 || add.peer_addr.parse::<std::net::SocketAddr>().is_err() {
            return invalid("id must be at least 1 and peer_addr an ip:port".into());
        }
        if voters.contains(&add.id) {
            return invalid(format!("node {} is already a voter", add.id));
        }
        let node = PeerNode { peer_addr: add.peer_addr };
        match replica.raft.add_learner(add.id, node, true).await {
            Ok(_) => {
                let ids = std::collections::BTreeSet::from([add.id]);
                replica.raft.change_membership(ChangeMembers::AddVoterIds(ids), false).await
            }
            Err(e) => Err(e),
        }
    } else {
        let Ok(id) = call.param.parse::<NodeId>() else {
            return invalid(format!("{:?} is not a node id", call.param));
        };
        if !voters.contains(&id) {
            return invalid(format!("node {id} is not a voter"));
        }
        if voters.len() == 1 {
            return invalid("the last voter cannot be removed".into());
        }
        let ids = std::collections::BTreeSet::from([id]);
        replica.raft.change_membership(ChangeMembers::RemoveVoters(ids), false).await
    };
    match changed {
        Ok(_) => respond(crate::http::wire::reply(200, &serde_json::json!(replica.status()))),
        Err(e) => no_leader(format!("the membership change did not complete: {e}")),
    }
}

/// A follower's own `sold_out`/`insufficient_stock` answer, while it is fresh.
fn stale_refusal(
    replica: &Replica,
    parts: &http::request::Parts,
    call: &Call<'_>,
) -> Option<Response<Full<Bytes>>> {
    if !replica.fresh() {
        return None;
    }
    if !parts.headers.contains_key("idempotency-key") {
        // The preformatted refusal (`refusal.rs`), which also answers a deal that ended or
        // is paused; its code travels on the response here, as route's answers' do.
        if let Some((code, mut response)) = refusal::answer(call) {
            response.extensions_mut().insert(OutcomeCode(code));
            return Some(response);
        }
    }
    let Ok(Action::Execute { command: Command::Reserve(request), answer, .. }) =
        handlers::reserve(call)
    else {
        return None;
    };
    let refusal = call.node.allocator().stock_refusal(&request, call.node.now_ms())?;
    let hold_key = call.node.allocator().config().hold_id_key;
    let result = Err(CommandError::from(refusal));
    Some(respond(handlers::render(answer, &result, hold_key)))
}

async fn forward(
    replica: &Replica,
    why: NotDecided,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    if parts.headers.contains_key(FORWARDED) {
        return no_leader("forwarded here, but this node does not lead (the leadership moved)");
    }
    let NotDecided::Follower(leader_id, leader) = why else { return not_decided(&why) };
    let headers = FORWARDED_HEADERS
        .iter()
        .filter_map(|name| {
            parts.headers.get(*name).map(|v| ((*name).to_owned(), v.as_bytes().to_vec()))
        })
        .collect();
    let request = ForwardRequest {
        method: parts.method.as_str().to_owned(),
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        headers,
        body: body.to_vec(),
    };
    let timeout = Duration::from_millis(replica.forward_timeout_ms());
    match replica.network().forward(&leader.peer_addr, request, timeout).await {
        Ok(answer) => {
            let mut response = Response::new(Full::new(Bytes::from(answer.body)));
            *response.status_mut() =
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            for (name, value) in answer.headers {
                let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(&value),
                ) else {
                    continue;
                };
                response.headers_mut().insert(name, value);
            }
            if let Ok(value) = HeaderValue::from_str(&leader_id.to_string()) {
                response.headers_mut().insert("x-livestock-leader", value);
            }
            response
        }
        Err(e) => no_leader(format!("the leader (node {leader_id}) did not answer: {e}")),
    }
}
