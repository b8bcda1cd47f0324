//! The HTTP side of the load generator: the loopback-only target, one keep-alive HTTP/1.1
//! connection per worker (hyper's low-level client over a tokio `TcpStream`: no pool to hide
//! queueing from us), and the few API calls the run needs besides the load itself.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::ledger::Counters;

/// Where the load goes: an address on this machine, never anywhere else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    host: HeaderValue,
    /// `Authorization: Bearer ...` for a server with tokens (`--token`); never printed.
    authorization: Option<HeaderValue>,
}

impl Target {
    /// Sends `token` as a bearer token with every request.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Target, String> {
        self.authorization = match token {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| "--token: not a valid header value".to_owned())?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(self)
    }

    /// Parses `host:port` or `http://host:port[/]`, where host is `localhost`, an address in
    /// 127.0.0.0/8, or `::1` (as `[::1]`). Anything else is refused: a load test drives only
    /// this machine. No name is resolved.
    pub fn parse(raw: &str) -> Result<Target, String> {
        let refuse = |why: &str| {
            format!(
                "refusing --target {raw:?}: {why}; a load test drives only this machine \
                 (localhost, 127.0.0.0/8 or [::1], with a port)"
            )
        };
        let rest = raw.strip_prefix("http://").unwrap_or(raw);
        if rest.contains("://") {
            return Err(refuse("only plain http:// is spoken"));
        }
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        if hostport.contains('/') {
            return Err(refuse("give an address, not a path"));
        }
        let (host, port) = hostport.rsplit_once(':').ok_or_else(|| refuse("no port"))?;
        let port: u16 = port.parse().map_err(|_| refuse("the port is not a number"))?;
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            bare.parse::<IpAddr>().map_err(|_| refuse("not localhost or an IP address"))?
        };
        // `::ffff:127.0.0.1` is 127.0.0.1.
        let ip = ip.to_canonical();
        if !ip.is_loopback() {
            return Err(refuse(&format!("{ip} is not a loopback address")));
        }
        if port == 0 {
            return Err(refuse("port 0"));
        }
        Target::loopback(SocketAddr::new(ip, port))
    }

    /// A target from an address already known to be local (for tests that start a server).
    pub fn loopback(addr: SocketAddr) -> Result<Target, String> {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address"));
        }
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?;
        Ok(Target { addr, host, authorization: None })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// A 2xx answer.
    Ok,
    /// An error answer: the API's code (`sold_out`, `per_user_limit`, ...), or `http_{status}`
    /// if the body carries none.
    Refused { status: u16, code: String },
    /// No answer: `connect`, `io` (the connection broke) or `timeout`.
    Transport(&'static str),
}

impl Outcome {
    /// Classifies an answer by its status and JSON error body.
    pub fn of(status: u16, body: &[u8]) -> Outcome {
        if (200..300).contains(&status) {
            return Outcome::Ok;
        }
        let code = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("http_{status}"));
        Outcome::Refused { status, code }
    }

    pub fn label(&self) -> &str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused { code, .. } => code,
            Outcome::Transport(kind) => kind,
        }
    }

    /// Counts against an error budget: no answer, a server error, or a refusal other than a
    /// conflict with the state (409: sold out, per-user limit, hold expired... are the
    /// system working as designed).
    pub fn is_error(&self) -> bool {
        match self {
            Outcome::Ok => false,
            Outcome::Refused { status, .. } => *status != 409,
            Outcome::Transport(_) => true,
        }
    }
}

/// Why a health check failed: the difference between "not yet" and "wrong".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unhealthy {
    /// Nothing answered (refused, reset, timed out): the server may not be listening yet.
    Silent(String),
    /// Something answered, but not as a healthy server does: waiting will not change that.
    Answered(String),
}

impl Unhealthy {
    pub fn message(&self) -> &str {
        match self {
            Unhealthy::Silent(m) | Unhealthy::Answered(m) => m,
        }
    }
}

/// One keep-alive HTTP/1.1 connection. Dropping it closes the socket.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn connect(target: &Target) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { sender, driver })
}

/// A connection that reconnects when it breaks, with a deadline on every request.
pub struct Client {
    target: Target,
    timeout: Duration,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(target: &Target, timeout: Duration) -> Client {
        Client { target: target.clone(), timeout, conn: None }
    }

    /// Opens the connection now (so the first measured request does not pay for it).
    pub async fn connect(&mut self) -> Result<(), String> {
        self.ready().await.map_err(|o| format!("cannot connect to {}: {}", self.target, o.label()))
    }

    async fn ready(&mut self) -> Result<(), Outcome> {
        // A connection the server closed while it was idle is replaced before anything is sent
        // on it: nothing was sent, so nothing is lost or doubled.
        if let Some(conn) = &mut self.conn {
            if conn.sender.ready().await.is_err() {
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            let conn = tokio::time::timeout(self.timeout, connect(&self.target))
                .await
                .map_err(|_| Outcome::Transport("timeout"))?
                .map_err(|_| Outcome::Transport("connect"))?;
            self.conn = Some(conn);
        }
        Ok(())
    }

    /// Sends one request and reads the whole answer. On any failure the connection is dropped
    /// (a late answer must not be read as the next request's) and the error is an
    /// [`Outcome::Transport`].
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, Bytes), Outcome> {
        self.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.host.clone());
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(authorization) = &self.target.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = request.body(Full::new(body)).map_err(|_| Outcome::Transport("io"))?;
        let Some(conn) = self.conn.as_mut() else { return Err(Outcome::Transport("connect")) };
        let exchange = async {
            let response = conn.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => {
                self.conn = None;
                Err(Outcome::Transport("io"))
            }
            Err(_) => {
                self.conn = None;
                Err(Outcome::Transport("timeout"))
            }
        }
    }

    /// A call whose answer must be a 2xx JSON body.
    async fn call_json(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Value, String> {
        let what = format!("{method} {path}");
        let (status, bytes) = self
            .call(method, path, None, body)
            .await
            .map_err(|o| format!("{what}: no answer from {} ({})", self.target, o.label()))?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes);
            return Err(format!("{what}: {status} {text}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{what}: the answer is not JSON: {e}"))
    }

    /// Checks that a livestock server answers `GET /healthz` with a 2xx JSON body.
    pub async fn health(&mut self) -> Result<(), Unhealthy> {
        let (status, bytes) =
            self.call(Method::GET, "/healthz", None, Bytes::new()).await.map_err(|o| {
                Unhealthy::Silent(format!(
                    "GET /healthz: no answer from {} ({}); is a server running? start one with \
                     `livestock serve`",
                    self.target,
                    o.label()
                ))
            })?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes);
            return Err(Unhealthy::Answered(format!("GET /healthz: {status} {text}")));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map(|_| ())
            .map_err(|e| Unhealthy::Answered(format!("GET /healthz: the answer is not JSON: {e}")))
    }

    pub async fn create_deal(
        &mut self,
        id: &str,
        stock: u64,
        per_user_limit: Option<u32>,
        hold_ttl_ms: u64,
    ) -> Result<Counters, String> {
        let mut body = json!({ "id": id, "stock": stock, "hold_ttl_ms": hold_ttl_ms });
        if let Some(limit) = per_user_limit {
            body["per_user_limit"] = json!(limit);
        }
        let deal = self.call_json(Method::POST, "/v1/deals", Bytes::from(body.to_string())).await?;
        counters_of(&deal).ok_or_else(|| format!("POST /v1/deals: no counters in {deal}"))
    }

    /// A deal's counters and per-user limit.
    pub async fn deal(&mut self, id: &str) -> Result<(Counters, Option<u32>), String> {
        let path = format!("/v1/deals/{id}");
        let deal = self.call_json(Method::GET, &path, Bytes::new()).await?;
        let counters = counters_of(&deal).ok_or_else(|| format!("GET {path}: no counters"))?;
        let limit = deal["per_user_limit"].as_u64().and_then(|l| u32::try_from(l).ok());
        Ok((counters, limit))
    }

    /// Every deal's id and counters (one request, for polling many deals).
    pub async fn deals(&mut self) -> Result<Vec<(String, Counters)>, String> {
        let list = self.call_json(Method::GET, "/v1/deals", Bytes::new()).await?;
        let deals = list["deals"].as_array().ok_or("GET /v1/deals: no deals array")?;
        Ok(deals
            .iter()
            .filter_map(|d| Some((d["id"].as_str()?.to_owned(), counters_of(d)?)))
            .collect())
    }
}

fn counters_of(deal: &Value) -> Option<Counters> {
    Some(Counters {
        stock: deal["stock"].as_u64()?,
        available: deal["available"].as_u64()?,
        held: deal["held"].as_u64()?,
        sold: deal["sold"].as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "127.0.0.1:8080",
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "127.9.8.7:1",
            "localhost:80",
            "LOCALHOST:80",
            "[::1]:8080",
            "http://[::1]:8080",
            "[::ffff:127.0.0.1]:9",
        ] {
            let target = Target::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(target.addr.ip().is_loopback(), "{ok}");
        }
        assert_eq!(Target::parse("localhost:81").unwrap().addr, "127.0.0.1:81".parse().unwrap());
        for bad in [
            "10.0.0.1:8080",
            "192.168.1.2:80",
            "8.8.8.8:53",
            "0.0.0.0:8080",
            "example.com:80",
            "[::]:80",
            "[2001:db8::1]:80",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:x",
            "https://127.0.0.1:443",
            "http://127.0.0.1:80/v1",
            "localhost.evil.com:80",
        ] {
            let e = Target::parse(bad).expect_err(bad);
            assert!(e.contains("refusing"), "{bad}: {e}");
        }
        assert!(Target::loopback("10.1.1.1:80".parse().unwrap()).is_err());
    }

    #[test]
    fn answers_are_classified_by_status_and_code() {
        assert_eq!(Outcome::of(201, b"{}"), Outcome::Ok);
        let sold_out = Outcome::of(409, br#"{"error":{"code":"sold_out","message":"m"}}"#);
        assert_eq!(sold_out.label(), "sold_out");
        assert!(!sold_out.is_error());
        let unavailable =
            Outcome::of(503, br#"{"error":{"code":"storage_unavailable","message":"m"}}"#);
        assert_eq!(unavailable.label(), "storage_unavailable");
        assert!(unavailable.is_error());
        let bare = Outcome::of(502, b"bad gateway");
        assert_eq!(bare.label(), "http_502");
        assert!(bare.is_error());
        assert!(Outcome::of(400, b"{}").is_error());
        assert!(Outcome::Transport("timeout").is_error());
    }
}
