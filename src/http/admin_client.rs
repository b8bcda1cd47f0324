//! `livestock cluster status|add|remove|backup`: the cluster's admin endpoints from the
//! command line.
//!
//! An operator's tool, not a request path: one HTTP/1.1 request to one node's API (any node:
//! a follower forwards membership changes to the leader), the answer printed as it came. The
//! token is an admin token (`--token` or `LIVESTOCK_ADMIN_TOKEN`); the status needs none when
//! the node lets anyone read it.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCall {
    Status,
    Add { id: u64, peer_addr: String },
    Remove { id: u64 },
    Backup,
}

impl AdminCall {
    fn method(&self) -> Method {
        match self {
            AdminCall::Status | AdminCall::Backup => Method::GET,
            AdminCall::Add { .. } | AdminCall::Remove { .. } => Method::POST,
        }
    }

    fn path(&self) -> String {
        match self {
            AdminCall::Status => "/v1/cluster".to_owned(),
            AdminCall::Add { .. } => "/v1/cluster/members".to_owned(),
            AdminCall::Remove { id } => format!("/v1/cluster/members/{id}/remove"),
            AdminCall::Backup => "/v1/cluster/backup".to_owned(),
        }
    }

    fn body(&self) -> Option<String> {
        match self {
            AdminCall::Add { id, peer_addr } => {
                Some(serde_json::json!({ "id": id, "peer_addr": peer_addr }).to_string())
            }
            AdminCall::Status | AdminCall::Remove { .. } | AdminCall::Backup => None,
        }
    }
}

/// A node's answer: its status and body as they came (JSON, or a backup's bytes).
#[derive(Debug)]
pub struct AdminAnswer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0:?} is not host:port")]
    BadNode(String),
    #[error("no answer from {node} within {timeout_ms} ms")]
    Timeout { node: String, timeout_ms: u64 },
    #[error("cannot reach {node}: {message}")]
    Unreachable { node: String, message: String },
}

/// Sends `call` to the node at `node` (`host:port` of its HTTP API) and returns its answer.
/// A membership change waits for joint consensus (a new node first catches up as a learner),
/// so `timeout_ms` should be generous.
pub async fn send(
    node: &str,
    token: Option<&str>,
    call: &AdminCall,
    timeout_ms: u64,
) -> Result<AdminAnswer, AdminError> {
    let uri: http::Uri = format!("http://{node}{}", call.path())
        .parse()
        .map_err(|_| AdminError::BadNode(node.to_owned()))?;
    if uri.port().is_none() {
        return Err(AdminError::BadNode(node.to_owned()));
    }
    let mut request = Request::builder().method(call.method()).uri(uri);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match call.body() {
        Some(json) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(json))
        }
        None => Full::new(Bytes::new()),
    };
    let request = request.body(body).map_err(|_| AdminError::BadNode(node.to_owned()))?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let unreachable = |message: String| AdminError::Unreachable { node: node.to_owned(), message };
    let exchange = async {
        let response = client.request(request).await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok(AdminAnswer { status, body: bytes })
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(AdminError::Timeout { node: node.to_owned(), timeout_ms }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_names_its_endpoint() {
        let add = AdminCall::Add { id: 4, peer_addr: "127.0.0.1:9084".into() };
        assert_eq!((add.method(), add.path()), (Method::POST, "/v1/cluster/members".into()));
        let body: serde_json::Value =
            serde_json::from_str(&add.body().expect("a body")).expect("json");
        assert_eq!(body, serde_json::json!({"id": 4, "peer_addr": "127.0.0.1:9084"}));
        let remove = AdminCall::Remove { id: 3 };
        assert_eq!(remove.path(), "/v1/cluster/members/3/remove");
        assert_eq!(remove.body(), None);
        assert_eq!(
            (AdminCall::Status.method(), AdminCall::Status.path()),
            (Method::GET, "/v1/cluster".into())
        );
    }

    #[tokio::test]
    async fn a_node_that_is_not_host_and_port_is_refused_before_any_connection() {
        for node in ["127.0.0.1", "not a host:1", ""] {
            let e = send(node, None, &AdminCall::Status, 100).await.expect_err(node);
            assert!(matches!(e, AdminError::BadNode(_)), "{node}: {e}");
        }
    }

    #[tokio::test]
    async fn nobody_listening_is_unreachable_not_a_hang() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let e = send(&format!("127.0.0.1:{port}"), None, &AdminCall::Status, 2_000)
            .await
            .expect_err("nothing listens");
        assert!(matches!(e, AdminError::Unreachable { .. }), "{e}");
    }
}
