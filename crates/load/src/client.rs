//! The HTTP side of the load generator: the loopback-only targets, one keep-alive HTTP/1.1
//! connection per worker (hyper's low-level client over a tokio `TcpStream`: no pool to hide
//! queueing from us), and the few API calls the run needs besides the load itself.
//!
//! **Several targets** are the nodes of one cluster. A connection starts on one of them (the
//! driver spreads connections round-robin) and moves on to the next when its node fails it: a
//! refused connection, a broken one, a timeout, or 503 `no_leader`. Such an answer is never an
//! acknowledgement; the caller may send the request again ([`Client::retry_wait`] says whether
//! and when), with the same idempotency key, so the retry gets the first attempt's answer if
//! that one was decided after all.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::ledger::{Counters, HoldState, ServerHold};
use crate::limits::{RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS_MIN, TARGETS_MAX};
use crate::waitlist::{EntrySeen, EntryState};

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

    /// A request to this target: its `Host`, and its bearer token if it has one.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        let request =
            Request::builder().method(method).uri(path).header(header::HOST, self.host.clone());
        match &self.authorization {
            Some(authorization) => request.header(header::AUTHORIZATION, authorization.clone()),
            None => request,
        }
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

    /// Parses `--target`: one address, or the nodes of one cluster separated by commas
    /// (`127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083`), each as [`Target::parse`] takes it.
    pub fn parse_list(raw: &str) -> Result<Vec<Target>, String> {
        let mut targets: Vec<Target> = Vec::new();
        for part in raw.split(',') {
            let target = Target::parse(part.trim())?;
            if targets.iter().any(|t| t.addr == target.addr) {
                return Err(format!("--target {raw:?} names {} twice", target.addr));
            }
            targets.push(target);
        }
        if targets.len() > TARGETS_MAX {
            return Err(format!("--target: at most {TARGETS_MAX} nodes, {} given", targets.len()));
        }
        Ok(targets)
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
    /// A reserve answered with a waitlist entry (202 a new one, 200 the viewer's own): the
    /// entry exists, no hold was granted.
    Waitlisted,
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
            Outcome::Waitlisted => "waitlisted",
            Outcome::Refused { code, .. } => code,
            Outcome::Transport(kind) => kind,
        }
    }

    /// Says that no node could serve the request, so sending it again (to the next node, with
    /// the same idempotency key) is what a client does: a refused or broken connection, 503
    /// `no_leader`, or 409 `idempotency_key_in_use` (the first attempt is still running on a
    /// node). A timeout is not retried: the request's time is up.
    pub fn is_retryable(&self) -> bool {
        match self {
            Outcome::Transport(kind) => matches!(*kind, "connect" | "io"),
            Outcome::Refused { status: 503, code } => code == "no_leader",
            Outcome::Refused { status: 409, code } => code == "idempotency_key_in_use",
            Outcome::Ok | Outcome::Waitlisted | Outcome::Refused { .. } => false,
        }
    }

    /// Whether the request surely did not change anything: a success did, a refusal by the
    /// rules did not; no answer, a server error, `no_leader` (decided but not committed in
    /// time?) or a key still in use leave it unknown.
    pub fn is_known_refusal(&self) -> bool {
        match self {
            Outcome::Refused { status, code } => *status < 500 && code != "idempotency_key_in_use",
            Outcome::Ok | Outcome::Waitlisted | Outcome::Transport(_) => false,
        }
    }

    /// Counts against an error budget: no answer, a server error, or a refusal other than a
    /// conflict with the state (409: sold out, per-user limit, hold expired... are the
    /// system working as designed).
    pub fn is_error(&self) -> bool {
        match self {
            Outcome::Ok | Outcome::Waitlisted => false,
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

/// The wait before retry number `retry` (0 for the first) of a request that ended in
/// `outcome`, with `targets` nodes to try. A refused connection sent nothing and the next node
/// may well be up, so the first round of the targets goes at once; otherwise the wait doubles
/// from [`RETRY_BACKOFF_MS_MIN`] to [`RETRY_BACKOFF_MS_MAX`] (an election takes a few hundred ms).
pub fn retry_backoff(retry: u32, outcome: &Outcome, targets: usize) -> Duration {
    let next_is_new = usize::try_from(retry).is_ok_and(|r| r + 1 < targets);
    if next_is_new && *outcome == Outcome::Transport("connect") {
        return Duration::ZERO;
    }
    let doubled = RETRY_BACKOFF_MS_MIN.saturating_mul(1u64 << retry.min(16));
    Duration::from_millis(doubled.min(RETRY_BACKOFF_MS_MAX))
}

/// A connection to one of the targets that reconnects when it breaks and moves on to the next
/// target when its node fails it, with a deadline on every request.
pub struct Client {
    targets: Vec<Target>,
    /// Where the connection goes now.
    at: usize,
    /// Where the last attempt went (for per-target counts).
    last: usize,
    timeout: Duration,
    /// The end of the current request's time, retries included (the driver's budget); an
    /// attempt never runs past it.
    budget_end: Option<Instant>,
    /// Retries of a request that found no node to serve it ([`Outcome::is_retryable`]).
    retries: u32,
    conn: Option<Conn>,
}

impl Client {
    /// A client of `targets` whose connection starts on `targets[first % len]`.
    pub fn new(targets: &[Target], first: usize, timeout: Duration, retries: u32) -> Client {
        assert!(!targets.is_empty(), "a client has a target");
        let at = first % targets.len();
        Client {
            targets: targets.to_vec(),
            at,
            last: at,
            timeout,
            budget_end: None,
            retries,
            conn: None,
        }
    }

    /// The index (into the targets) of the node the last attempt went to.
    pub fn last_target(&self) -> usize {
        self.last
    }

    /// Ends every attempt by `end` (the request's budget, retries included), until unset.
    pub fn set_budget_end(&mut self, end: Option<Instant>) {
        self.budget_end = end;
    }

    /// Whether to send a request that ended in `outcome` again after `retry` retries, and
    /// after how long; `None` if not (it succeeded, was refused by the rules, or the retries
    /// are spent).
    pub fn retry_wait(&self, retry: u32, outcome: &Outcome) -> Option<Duration> {
        (retry < self.retries && outcome.is_retryable())
            .then(|| retry_backoff(retry, outcome, self.targets.len()))
    }

    fn target(&self) -> &Target {
        &self.targets[self.at]
    }

    /// Drops the connection and moves on to the next target (the same one if there is one).
    fn move_on(&mut self) {
        self.conn = None;
        self.at = (self.at + 1) % self.targets.len();
    }

    /// How long the next attempt may take.
    fn attempt_timeout(&self) -> Duration {
        match self.budget_end {
            Some(end) => self.timeout.min(end.saturating_duration_since(Instant::now())),
            None => self.timeout,
        }
    }

    /// Opens the connection now (so the first measured request does not pay for it), on the
    /// first target that accepts it.
    pub async fn connect(&mut self) -> Result<(), String> {
        let mut failures = Vec::new();
        for _ in 0..self.targets.len() {
            let target = self.target().to_string();
            match self.ready(self.timeout).await {
                Ok(()) => return Ok(()),
                Err(o) => failures.push(format!("{target}: {}", o.label())),
            }
            self.move_on();
        }
        Err(format!("cannot connect to {}", failures.join(", ")))
    }

    async fn ready(&mut self, timeout: Duration) -> Result<(), Outcome> {
        // A connection the server closed while it was idle is replaced before anything is sent
        // on it: nothing was sent, so nothing is lost or doubled.
        if let Some(conn) = &mut self.conn {
            if conn.sender.ready().await.is_err() {
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            let conn = tokio::time::timeout(timeout, connect(self.target()))
                .await
                .map_err(|_| Outcome::Transport("timeout"))?
                .map_err(|_| Outcome::Transport("connect"))?;
            self.conn = Some(conn);
        }
        Ok(())
    }

    /// Sends one request (one attempt, to the current target) and reads the whole answer. On
    /// a transport failure the connection is dropped (a late answer must not be read as the
    /// next request's) and the error is an [`Outcome::Transport`]. After a failure or a 503
    /// `no_leader` the client moves on to the next target.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, Bytes), Outcome> {
        self.last = self.at;
        let timeout = self.attempt_timeout();
        if timeout.is_zero() {
            return Err(Outcome::Transport("timeout"));
        }
        if let Err(failure) = self.ready(timeout).await {
            self.move_on();
            return Err(failure);
        }
        let target = self.target();
        let mut request =
            Request::builder().method(method).uri(path).header(header::HOST, target.host.clone());
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(authorization) = &target.authorization {
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
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((status, body))) => {
                // This node cannot serve writes now: the next request goes to another.
                if status == 503 && Outcome::of(status, &body).label() == "no_leader" {
                    self.move_on();
                }
                Ok((status, body))
            }
            Ok(Err(_)) => {
                self.move_on();
                Err(Outcome::Transport("io"))
            }
            Err(_) => {
                self.move_on();
                Err(Outcome::Transport("timeout"))
            }
        }
    }

    /// [`Client::call`], sent again while [`Client::retry_wait`] says so, all within one
    /// request timeout. The set-up and verification calls use it; the driver runs its own
    /// loop, to count every attempt.
    pub async fn call_retrying(
        &mut self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, Bytes), Outcome> {
        let end = Instant::now() + self.timeout;
        let outer = self.budget_end.replace(end);
        let mut retry = 0;
        let result = loop {
            let result = self.call(method.clone(), path, key, body.clone()).await;
            let outcome = match &result {
                Ok((status, bytes)) => Outcome::of(*status, bytes),
                Err(failure) => failure.clone(),
            };
            match self.retry_wait(retry, &outcome) {
                Some(wait) if Instant::now() + wait < end => {
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                _ => break result,
            }
        };
        self.budget_end = outer;
        result
    }

    /// A call whose answer must be a 2xx JSON body.
    async fn call_json(
        &mut self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Bytes,
    ) -> Result<Value, String> {
        let what = format!("{method} {path}");
        let (status, bytes) = self.call_retrying(method, path, key, body).await.map_err(|o| {
            format!("{what}: no answer from {} ({})", self.targets[self.last], o.label())
        })?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes);
            return Err(format!("{what}: {status} {text}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{what}: the answer is not JSON: {e}"))
    }

    /// Checks that a livestock server answers `GET /healthz` with a 2xx JSON body.
    pub async fn health(&mut self) -> Result<(), Unhealthy> {
        let (status, bytes) =
            self.call_retrying(Method::GET, "/healthz", None, Bytes::new()).await.map_err(|o| {
                Unhealthy::Silent(format!(
                    "GET /healthz: no answer from {} ({}); is a server running? start one with \
                     `livestock serve`",
                    self.targets[self.last],
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

    /// Asks the current target (one attempt) whether its cluster has a leader
    /// (`GET /v1/cluster` shows a `leader_id`); moves on to the next target for the next ask.
    pub async fn cluster_leader(&mut self) -> Result<u64, Unhealthy> {
        let target = self.target().to_string();
        let answer = self.call(Method::GET, "/v1/cluster", None, Bytes::new()).await;
        if answer.is_ok() {
            // (A failed call has moved on already.)
            self.move_on();
        }
        let (status, bytes) = answer.map_err(|o| {
            Unhealthy::Silent(format!("GET /v1/cluster: no answer from {target} ({})", o.label()))
        })?;
        if status == 404 {
            return Err(Unhealthy::Answered(format!(
                "{target} is not a node of a cluster (GET /v1/cluster: 404); several --target \
                 are the nodes of one cluster (`livestock serve --node-id ...`)"
            )));
        }
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes);
            return Err(Unhealthy::Answered(format!(
                "GET /v1/cluster at {target}: {status} {text}"
            )));
        }
        let status: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Unhealthy::Answered(format!("GET /v1/cluster at {target}: not JSON: {e}"))
        })?;
        status["leader_id"].as_u64().ok_or_else(|| {
            Unhealthy::Silent(format!("{target}: the cluster has no leader yet ({status})"))
        })
    }

    /// Creates a deal; `waitlist`: its `waitlist_max`, `offer_ttl_ms` and a draw window that
    /// opens now (`starts_at` this instant).
    pub async fn create_deal(
        &mut self,
        id: &str,
        stock: u64,
        per_user_limit: Option<u32>,
        hold_ttl_ms: u64,
        waitlist: Option<(u32, u64, Option<u64>)>,
    ) -> Result<Counters, String> {
        let mut body = json!({ "id": id, "stock": stock, "hold_ttl_ms": hold_ttl_ms });
        if let Some((_, _, Some(draw_window_ms))) = waitlist {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| format!("the clock is before 1970: {e}"))?
                .as_millis();
            let now = i64::try_from(now_ms)
                .ok()
                .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
                .ok_or("the clock is out of range")?;
            body["starts_at"] = json!(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            body["draw_window_ms"] = json!(draw_window_ms);
        }
        if let Some(limit) = per_user_limit {
            body["per_user_limit"] = json!(limit);
        }
        if let Some((waitlist_max, offer_ttl_ms, _)) = waitlist {
            body["waitlist_max"] = json!(waitlist_max);
            body["offer_ttl_ms"] = json!(offer_ttl_ms);
        }
        // Keyed: a creation retried after a lost answer gets the same deal, not `deal_exists`.
        let key = format!("create-{id}");
        let deal = self
            .call_json(Method::POST, "/v1/deals", Some(&key), Bytes::from(body.to_string()))
            .await?;
        counters_of(&deal).ok_or_else(|| format!("POST /v1/deals: no counters in {deal}"))
    }

    /// A deal's draw as revealed (`GET /v1/deals/{id}/draw`).
    pub async fn draw(&mut self, id: &str) -> Result<Value, String> {
        let path = format!("/v1/deals/{id}/draw");
        self.call_json(Method::GET, &path, None, Bytes::new()).await
    }

    /// A deal's counters and per-user limit.
    pub async fn deal(&mut self, id: &str) -> Result<(Counters, Option<u32>), String> {
        let path = format!("/v1/deals/{id}");
        let deal = self.call_json(Method::GET, &path, None, Bytes::new()).await?;
        let counters = counters_of(&deal).ok_or_else(|| format!("GET {path}: no counters"))?;
        let limit = deal["per_user_limit"].as_u64().and_then(|l| u32::try_from(l).ok());
        Ok((counters, limit))
    }

    /// A deal's counters and its waiting entries (`waiting`).
    pub async fn deal_waiting(&mut self, id: &str) -> Result<(Counters, u64), String> {
        let path = format!("/v1/deals/{id}");
        let deal = self.call_json(Method::GET, &path, None, Bytes::new()).await?;
        let counters = counters_of(&deal).ok_or_else(|| format!("GET {path}: no counters"))?;
        let waiting = deal["waiting"].as_u64().ok_or_else(|| format!("GET {path}: no waiting"))?;
        Ok((counters, waiting))
    }

    /// One attempt at an entry's read (`GET /v1/waitlist/{id}`) or cancel (`POST
    /// .../cancel`, with `key`): the outcome, and the entry if the answer carries one.
    pub async fn entry_call(
        &mut self,
        entry_id: &str,
        cancel: bool,
        key: Option<&str>,
    ) -> (Outcome, Option<EntrySeen>) {
        let (method, path) = if cancel {
            (Method::POST, format!("/v1/waitlist/{entry_id}/cancel"))
        } else {
            (Method::GET, format!("/v1/waitlist/{entry_id}"))
        };
        match self.call(method, &path, key, Bytes::new()).await {
            Ok((status, body)) => {
                let outcome = Outcome::of(status, &body);
                let entry = (outcome == Outcome::Ok)
                    .then(|| serde_json::from_slice::<Value>(&body).ok())
                    .flatten()
                    .and_then(|v| entry_of(&v));
                (outcome, entry)
            }
            Err(transport) => (transport, None),
        }
    }

    /// An entry as the server has it, `None` if it does not know it (the end-of-run read).
    pub async fn entry(&mut self, id: &str) -> Result<Option<EntrySeen>, String> {
        let path = format!("/v1/waitlist/{id}");
        let (status, bytes) =
            self.call_retrying(Method::GET, &path, None, Bytes::new()).await.map_err(|o| {
                format!("GET {path}: no answer from {} ({})", self.targets[self.last], o.label())
            })?;
        if status == 404 && Outcome::of(status, &bytes).label() == "unknown_entry" {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(format!("GET {path}: {status} {}", String::from_utf8_lossy(&bytes)));
        }
        let entry: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("GET {path}: the answer is not JSON: {e}"))?;
        entry_of(&entry).map(Some).ok_or_else(|| format!("GET {path}: not an entry: {entry}"))
    }

    /// Every deal's id and counters (one request, for polling many deals).
    pub async fn deals(&mut self) -> Result<Vec<(String, Counters)>, String> {
        let list = self.call_json(Method::GET, "/v1/deals", None, Bytes::new()).await?;
        let deals = list["deals"].as_array().ok_or("GET /v1/deals: no deals array")?;
        Ok(deals
            .iter()
            .filter_map(|d| Some((d["id"].as_str()?.to_owned(), counters_of(d)?)))
            .collect())
    }

    /// A hold as the server has it (`GET /v1/holds/{id}`), `None` if it does not know it.
    pub async fn hold(&mut self, id: &str) -> Result<Option<ServerHold>, String> {
        let path = format!("/v1/holds/{id}");
        let (status, bytes) =
            self.call_retrying(Method::GET, &path, None, Bytes::new()).await.map_err(|o| {
                format!("GET {path}: no answer from {} ({})", self.targets[self.last], o.label())
            })?;
        if status == 404 && Outcome::of(status, &bytes).label() == "unknown_hold" {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(format!("GET {path}: {status} {}", String::from_utf8_lossy(&bytes)));
        }
        let hold: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("GET {path}: the answer is not JSON: {e}"))?;
        let field = |name: &str| hold[name].as_str().map(str::to_owned);
        let parsed = (|| {
            Some(ServerHold {
                deal_id: field("deal_id")?,
                user_id: field("user_id")?,
                qty: u32::try_from(hold["qty"].as_u64()?).ok()?,
                state: HoldState::parse(hold["state"].as_str()?)?,
                from_waitlist: match hold["origin"].as_str() {
                    // Servers from before the waitlist say nothing: a reserve's.
                    None | Some("reserve") => false,
                    Some("waitlist") => true,
                    Some(_) => return None,
                },
                entry_id: field("entry_id"),
                created_at_ms: Some(epoch_ms(hold["created_at"].as_str()?)?),
                expires_at_ms: epoch_ms(hold["expires_at"].as_str()?)?,
                resolved_at_ms: match hold["resolved_at"].as_str() {
                    None => None,
                    Some(t) => Some(epoch_ms(t)?),
                },
            })
        })();
        parsed.map(Some).ok_or_else(|| format!("GET {path}: not a hold: {hold}"))
    }
}

/// An RFC 3339 timestamp (the API's `2026-12-07T01:02:03.456Z`) as ms since the epoch.
pub fn epoch_ms(raw: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(raw).ok()?;
    u64::try_from(t.timestamp_millis()).ok()
}

/// A waitlist entry from its JSON (a reserve's 200/202, a read, a cancel).
pub fn entry_of(v: &Value) -> Option<EntrySeen> {
    let field = |name: &str| v[name].as_str().map(str::to_owned);
    Some(EntrySeen {
        entry_id: field("entry_id")?,
        deal_id: field("deal_id")?,
        user_id: field("user_id")?,
        qty: u32::try_from(v["qty"].as_u64()?).ok()?,
        state: EntryState::parse(v["state"].as_str()?)?,
        position: v["position"].as_u64(),
        hold_id: field("hold_id"),
        created_at_ms: v["created_at"].as_str().and_then(epoch_ms),
    })
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

    #[test]
    fn entries_and_timestamps_parse_from_the_wire() {
        assert_eq!(epoch_ms("2027-01-15T08:00:00.123Z"), Some(1_800_000_000_123));
        assert_eq!(epoch_ms("yesterday"), None);
        let waiting = json!({"created_at":"2027-01-15T08:00:00.123Z","deal_id":"d","entry_id":"w1",
            "hold_id":null,"position":3,"qty":1,"resolved_at":null,"state":"waiting","user_id":"v1"});
        let e = entry_of(&waiting).expect("an entry");
        assert_eq!((e.state, e.position, e.hold_id), (EntryState::Waiting, Some(3), None));
        let offered = json!({"deal_id":"d","entry_id":"w1","hold_id":"h1","position":null,
            "qty":1,"state":"offered","user_id":"v1"});
        let e = entry_of(&offered).expect("an entry");
        assert_eq!((e.state, e.hold_id.as_deref()), (EntryState::Offered, Some("h1")));
        assert_eq!(entry_of(&json!({"hold_id":"h1"})), None, "a hold is not an entry");
        assert!(!Outcome::Waitlisted.is_error() && !Outcome::Waitlisted.is_retryable());
        assert_eq!(Outcome::Waitlisted.label(), "waitlisted");
    }

    #[test]
    fn a_cluster_is_a_list_of_distinct_loopback_nodes() {
        let nodes = Target::parse_list("127.0.0.1:8081,localhost:8082, [::1]:8083").unwrap();
        let addrs: Vec<String> = nodes.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:8081", "127.0.0.1:8082", "[::1]:8083"]);
        assert_eq!(Target::parse_list("127.0.0.1:1").unwrap().len(), 1);
        assert!(Target::parse_list("127.0.0.1:1,localhost:1").unwrap_err().contains("twice"));
        assert!(Target::parse_list("127.0.0.1:1,10.0.0.1:1").unwrap_err().contains("refusing"));
        let ten = (1..=10).map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        assert!(Target::parse_list(&ten).unwrap_err().contains("at most"));
    }

    #[test]
    fn only_a_missing_node_is_retried_and_never_a_refusal() {
        let no_leader = Outcome::of(503, br#"{"error":{"code":"no_leader","message":"m"}}"#);
        let in_use = Outcome::of(409, br#"{"error":{"code":"idempotency_key_in_use"}}"#);
        let sold_out = Outcome::of(409, br#"{"error":{"code":"sold_out"}}"#);
        let storage = Outcome::of(503, br#"{"error":{"code":"storage_unavailable"}}"#);
        for retried in [&no_leader, &in_use, &Outcome::Transport("connect")] {
            assert!(retried.is_retryable(), "{retried:?}");
            assert!(!retried.is_known_refusal(), "{retried:?}: its outcome is unknown");
        }
        assert!(Outcome::Transport("io").is_retryable());
        for final_ in [&sold_out, &storage, &Outcome::Ok, &Outcome::Transport("timeout")] {
            assert!(!final_.is_retryable(), "{final_:?}");
        }
        assert!(sold_out.is_known_refusal());
        assert!(!storage.is_known_refusal());
        assert!(!Outcome::Ok.is_known_refusal());
    }

    #[test]
    fn retries_go_round_the_targets_at_once_then_back_off() {
        let ms = Duration::from_millis;
        let connect = Outcome::Transport("connect");
        let no_leader = Outcome::Refused { status: 503, code: "no_leader".into() };
        assert_eq!(retry_backoff(0, &connect, 3), Duration::ZERO, "the next node may be up");
        assert_eq!(retry_backoff(1, &connect, 3), Duration::ZERO);
        assert_eq!(retry_backoff(2, &connect, 3), ms(80), "every node refused: back off");
        assert_eq!(retry_backoff(0, &connect, 1), ms(20), "one target: never at once");
        let waits: Vec<Duration> = (0..6).map(|r| retry_backoff(r, &no_leader, 3)).collect();
        assert_eq!(waits, [ms(20), ms(40), ms(80), ms(160), ms(250), ms(250)]);
        assert_eq!(retry_backoff(u32::MAX, &no_leader, 3), ms(RETRY_BACKOFF_MS_MAX));

        let targets = Target::parse_list("127.0.0.1:1,127.0.0.1:2").unwrap();
        let client = Client::new(&targets, 5, Duration::from_secs(1), 2);
        assert_eq!(client.last_target(), 1, "starts on target 5 mod 2");
        assert_eq!(client.retry_wait(0, &no_leader), Some(ms(20)));
        assert_eq!(client.retry_wait(1, &connect), Some(ms(40)));
        assert_eq!(client.retry_wait(2, &no_leader), None, "two retries at most");
        assert_eq!(client.retry_wait(0, &Outcome::Ok), None);
    }
}
