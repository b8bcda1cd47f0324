//! Serving a replica: the HTTP API, the peer listener (raft RPCs and forwarded writes) and
//! the reaper, started together (`ClusterNode`), and what a leader runs for a request a
//! follower forwarded. Apart from `cluster.rs` because it starts the server, which the request
//! path (`exchange.rs` -> `cluster.rs`) must not import.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use livestock_core::ids::HoldIdKey;

use crate::alloc::AllocatorConfig;
use crate::clock::Clock;
use crate::cluster::open::ReplicaConfig;
use crate::cluster::peer_server::{
    serve_peers_with, AppendHook, ForwardFn, ForwardRequest, ForwardResponse,
};
use crate::cluster::replica::ReplicaTiming;
use crate::config::Config;
use crate::http::cluster::FORWARDED;
use crate::http::error::ApiError;
use crate::http::options::ServerOptions;
use crate::http::server::Server;
use crate::metrics::Metrics;
use crate::node::Node;

/// What a leader runs for a request a follower forwarded: the node's own request path, with
/// the request marked so it is not forwarded again.
pub fn forward_handler(node: Arc<Node>, options: Arc<ServerOptions>) -> ForwardFn {
    Arc::new(move |forwarded: ForwardRequest| {
        let (node, options) = (node.clone(), options.clone());
        Box::pin(async move {
            let mut builder = http::Request::builder()
                .method(forwarded.method.as_str())
                .uri(forwarded.path_and_query.as_str())
                .header(FORWARDED, "1");
            for (name, value) in &forwarded.headers {
                builder = builder.header(name.as_str(), value.as_slice());
            }
            let request = match builder.body(Full::new(Bytes::from(forwarded.body))) {
                Ok(request) => request,
                Err(e) => {
                    let reply = ApiError::invalid(format!("forwarded request: {e}")).reply();
                    return ForwardResponse {
                        status: reply.status,
                        headers: vec![("content-type".into(), b"application/json".to_vec())],
                        body: reply.body.to_vec(),
                    };
                }
            };
            let response = crate::http::handle_with(&node, &options, request).await;
            let (parts, body) = response.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes().to_vec(),
                Err(never) => match never {},
            };
            let headers = parts
                .headers
                .iter()
                .filter(|(name, _)| *name != http::header::CONNECTION)
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect();
            ForwardResponse { status: parts.status.as_u16(), headers, body }
        })
    })
}

/// The hold-id key of a cluster: every replica renders and parses hold ids alike, so it is
/// derived from the cluster secret (a fixed key without one: ids are then only obfuscated).
pub fn cluster_hold_key(secret: Option<&str>) -> HoldIdKey {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("livestock hold ids|{}", secret.unwrap_or("")));
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    HoldIdKey(u64::from_le_bytes(word))
}

/// A node of a cluster, serving: the HTTP API, the peer listener, the reaper.
pub struct ClusterNode {
    pub node: Arc<Node>,
    pub server: Server,
    pub peer_addr: std::net::SocketAddr,
    peers: tokio::task::JoinHandle<()>,
    stop_peers: tokio::sync::oneshot::Sender<()>,
}

impl ClusterNode {
    /// Opens the replica in `config.data_dir/raft` and serves. `config` must be in cluster mode
    /// (validated: `node_id`, `peer_listen`, `peers`).
    pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<ClusterNode, String> {
        let (Some(node_id), Some(peer_listen)) = (config.node_id, config.peer_listen) else {
            return Err("not in cluster mode: node_id and peer_listen are needed".into());
        };
        let secret: Option<Arc<str>> =
            config.cluster_secret.as_ref().map(|s| Arc::from(s.expose()));
        let replica_config = ReplicaConfig {
            node_id,
            peers: config.peers.iter().map(|p| (p.id, p.addr.clone())).collect(),
            secret: secret.clone(),
            allocator: AllocatorConfig {
                hold_id_key: cluster_hold_key(secret.as_deref()),
                resolved_hold_retention_ms: config.resolved_hold_retention_ms,
            },
            idempotency_window_ms: config.idempotency_window_ms,
            idempotency_keys_max: config.idempotency_keys_max,
            timing: ReplicaTiming {
                commit_timeout_ms: config.commit_timeout_ms,
                stale_refusal_ms: config.stale_refusal_ms,
            },
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            election_timeout_min_ms: config.election_timeout_min_ms,
            snapshot_entries: config.snapshot_entries,
        };
        let peer_listener = tokio::net::TcpListener::bind(peer_listen)
            .await
            .map_err(|e| format!("cannot listen for peers on {peer_listen}: {e}"))?;
        let peer_addr = peer_listener.local_addr().map_err(|e| e.to_string())?;
        let replica = crate::cluster::open::open(&config.data_dir, replica_config)
            .await
            .map_err(|e| e.to_string())?;
        let node = Arc::new(Node::clustered(Metrics::default(), clock, replica.clone()));
        let options = ServerOptions::from_config(config);
        // The forwarded requests' own options (their rate-limit buckets are separate: a
        // forwarded request was already counted where it arrived).
        let forward = forward_handler(node.clone(), Arc::new(ServerOptions::from_config(config)));
        let heard = replica.clone();
        let on_append: AppendHook = Arc::new(move |commit| heard.heard_from_leader(commit));
        let (stop_peers, stopped) = tokio::sync::oneshot::channel::<()>();
        let peers = tokio::spawn(serve_peers_with(
            peer_listener,
            replica.raft.clone(),
            secret,
            forward,
            Some(on_append),
            async move {
                let _ = stopped.await;
            },
        ));
        let server = Server::start_with(config.listen, node.clone(), options)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        Ok(ClusterNode { node, server, peer_addr, peers, stop_peers })
    }

    /// Stops serving and stops raft (its log is durable as it goes).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        let _ = self.stop_peers.send(());
        let _ = self.peers.await;
        if let Some(replica) = self.node.replica() {
            let _ = replica.raft.shutdown().await;
        }
    }
}
