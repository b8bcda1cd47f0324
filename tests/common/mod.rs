//! Shared fixture of the HTTP tests: a real server on a free port over a manual clock, and a
//! blocking client that hands back every answer (any status) as status, headers and JSON.

#![allow(clippy::expect_used, reason = "test code: a failed expect is a failed test")]
#![allow(dead_code)] // Each test binary that includes this module uses a different part of it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livestock::alloc::AllocatorConfig;
use livestock::clock::ManualClock;
use livestock::http::{Server, ServerOptions};
use livestock::node::{Node, NodeConfig};
use livestock_core::ids::{HoldIdKey, HoldSeq};
use serde_json::{json, Value};

/// The manual clock's start: 2027-01-15T08:00:00.000Z.
pub const T0_MS: u64 = 1_800_000_000_000;
pub const T0_TEXT: &str = "2027-01-15T08:00:00.000Z";
pub const HOLD_ID_KEY: HoldIdKey = HoldIdKey(0x7E57_0F41_771D_5E00);
pub const RETENTION_MS: u64 = 60 * 60 * 1_000;
pub const IDEMPOTENCY_WINDOW_MS: u64 = 60 * 60 * 1_000;
pub const IDEMPOTENCY_KEYS_MAX: usize = 10_000;
/// How long a test waits (real time) for the reaper, which ticks every 10 ms.
pub const REAPER_WAIT: Duration = Duration::from_secs(2);

/// One server and its clock. The runtime lives as long as the fixture; dropping the fixture
/// stops the server.
pub struct Api {
    pub clock: Arc<ManualClock>,
    pub addr: SocketAddr,
    base: String,
    agent: ureq::Agent,
    _server: Server,
    _runtime: tokio::runtime::Runtime,
}

/// A runtime and a server with `options` on a free loopback port, over a manual clock at
/// `T0_MS`; the server stops when both are dropped.
pub fn serve(
    options: ServerOptions,
    idempotency_keys_max: usize,
) -> (tokio::runtime::Runtime, Server, Arc<ManualClock>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let config = node_config(idempotency_keys_max);
    let node = Arc::new(Node::new(config, clock.clone()));
    let (runtime, server) = serve_node_on(runtime, node, options);
    (runtime, server, clock)
}

/// The node configuration of `serve` (for tests that open a node of their own).
pub fn node_config(idempotency_keys_max: usize) -> NodeConfig {
    NodeConfig {
        allocator: AllocatorConfig {
            hold_id_key: HOLD_ID_KEY,
            resolved_hold_retention_ms: RETENTION_MS,
        },
        idempotency_window_ms: IDEMPOTENCY_WINDOW_MS,
        idempotency_keys_max,
    }
}

/// A runtime and a server with `options` serving `node` (one with a log, say) on a free
/// loopback port.
pub fn serve_node(node: Arc<Node>, options: ServerOptions) -> (tokio::runtime::Runtime, Server) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    serve_node_on(runtime, node, options)
}

fn serve_node_on(
    runtime: tokio::runtime::Runtime,
    node: Arc<Node>,
    options: ServerOptions,
) -> (tokio::runtime::Runtime, Server) {
    let addr = "127.0.0.1:0".parse().expect("loopback address");
    let server = runtime.block_on(Server::start_with(addr, node, options)).expect("server starts");
    (runtime, server)
}

/// An answer as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The body as sent (for byte-for-byte comparisons of replays).
    pub raw: String,
    /// The body parsed; `Value::Null` if it is not JSON.
    pub body: Value,
    pub allow: Option<String>,
    pub content_type: Option<String>,
    /// The `idempotent-replayed: true` header was present.
    pub replayed: bool,
}

impl Api {
    pub fn start() -> Api {
        Api::start_with(IDEMPOTENCY_KEYS_MAX)
    }

    /// A server that remembers at most `idempotency_keys_max` keys.
    pub fn start_with(idempotency_keys_max: usize) -> Api {
        let (runtime, server, clock) = serve(ServerOptions::default(), idempotency_keys_max);
        let addr = server.local_addr();
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        Api {
            clock,
            addr,
            base: format!("http://{addr}"),
            agent,
            _server: server,
            _runtime: runtime,
        }
    }

    /// Any method, optional idempotency key, optional body; never fails on a status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut request = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.set("Idempotency-Key", key);
        }
        let result = match body {
            Some(body) => request.send_string(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("{method} {path}: transport error {e}"),
        };
        let status = response.status();
        let allow = response.header("allow").map(str::to_owned);
        let content_type = response.header("content-type").map(str::to_owned);
        let replayed = response.header("idempotent-replayed") == Some("true");
        let raw = response.into_string().expect("body is text");
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Reply { status, raw, body, allow, content_type, replayed }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.request("POST", path, None, Some(body))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(path, &body.to_string())
    }

    pub fn post_keyed(&self, path: &str, key: &str, body: &str) -> Reply {
        self.request("POST", path, Some(key), Some(body))
    }

    /// Creates a deal; asserts 201 and returns the deal.
    pub fn create_deal(&self, body: Value) -> Value {
        let reply = self.post_json("/v1/deals", &body);
        assert_eq!(reply.status, 201, "create {body}: {}", reply.raw);
        reply.body
    }

    /// A live deal with `stock` units and no other settings.
    pub fn simple_deal(&self, id: &str, stock: u64) -> Value {
        self.create_deal(json!({ "id": id, "stock": stock }))
    }

    pub fn deal(&self, id: &str) -> Value {
        let reply = self.get(&format!("/v1/deals/{id}"));
        assert_eq!(reply.status, 200, "GET deal {id}: {}", reply.raw);
        reply.body
    }

    /// (stock, available, held, sold) of a deal, checking that they balance.
    pub fn counters(&self, id: &str) -> (u64, u64, u64, u64) {
        counters_of(&self.deal(id))
    }

    pub fn hold(&self, hold_id: &str) -> Value {
        let reply = self.get(&format!("/v1/holds/{hold_id}"));
        assert_eq!(reply.status, 200, "GET hold {hold_id}: {}", reply.raw);
        reply.body
    }

    pub fn reserve_reply(&self, deal: &str, user: &str, qty: u32) -> Reply {
        self.post_json(
            &format!("/v1/deals/{deal}/reserve"),
            &json!({ "user_id": user, "qty": qty }),
        )
    }

    /// Reserves; asserts 201 and returns the hold.
    pub fn reserve(&self, deal: &str, user: &str, qty: u32) -> Value {
        let reply = self.reserve_reply(deal, user, qty);
        assert_eq!(reply.status, 201, "reserve {qty} of {deal} for {user}: {}", reply.raw);
        reply.body
    }

    /// Everything a caller can see of the deals: the list, as one value.
    pub fn deals(&self) -> Value {
        let reply = self.get("/v1/deals");
        assert_eq!(reply.status, 200, "GET deals: {}", reply.raw);
        reply.body
    }

    /// Polls `cond` (real time, every 10 ms) until it holds or `REAPER_WAIT` passes.
    pub fn eventually(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + REAPER_WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends raw bytes on a fresh connection and reads one response (status, head, body).
    pub fn raw(&self, request: &[u8]) -> (u16, String, String) {
        let mut stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        stream.write_all(request).expect("write request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(parsed) = parse_response(&buf) {
                return parsed;
            }
            match stream.read(&mut chunk) {
                Ok(0) => panic!("connection closed before a full response: {buf:?}"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading the response: {e} (got {buf:?})"),
            }
        }
    }
}

/// (status, head, body) once `buf` holds a whole response with a Content-Length.
fn parse_response(buf: &[u8]) -> Option<(u16, String, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let body = buf.get(end + 4..end + 4 + length)?;
    Some((status, head, String::from_utf8_lossy(body).into_owned()))
}

pub fn counters_of(deal: &Value) -> (u64, u64, u64, u64) {
    let field = |name: &str| deal[name].as_u64().unwrap_or_else(|| panic!("{name} in {deal}"));
    let (stock, available, held, sold) =
        (field("stock"), field("available"), field("held"), field("sold"));
    assert_eq!(available + held + sold, stock, "unbalanced deal {deal}");
    (stock, available, held, sold)
}

/// Asserts an error answer: its status, and the body `{"error":{"code":..,"message":..}}`
/// with nothing else in it.
#[track_caller]
pub fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "expected {status} {code}, got {}", reply.raw);
    let top = reply.body.as_object().unwrap_or_else(|| panic!("not a JSON object: {}", reply.raw));
    assert_eq!(top.len(), 1, "error body has extra keys: {}", reply.raw);
    let error =
        reply.body["error"].as_object().unwrap_or_else(|| panic!("no error object: {}", reply.raw));
    assert_eq!(error.len(), 2, "error object has extra keys: {}", reply.raw);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.raw);
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "error without a message: {}", reply.raw);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"), "{}", reply.raw);
}

/// A well-formed hold id that names no hold.
pub fn ghost_hold_id() -> String {
    HoldSeq(1 << 40).to_id(HOLD_ID_KEY)
}

pub fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("{field} in {value}"))
}

/// An open Server-Sent Events answer, read line by line.
pub type SseLines = std::io::BufReader<Box<dyn Read + Send + Sync>>;

/// Sends a request for a stream of events: its lines if it is one (200, `text/event-stream`,
/// `no-cache`), or `Err((status, body))` if it is refused.
pub fn open_sse(request: ureq::Request) -> Result<SseLines, (u16, Value)> {
    let url = request.url().to_owned();
    match request.call() {
        Ok(response) => {
            assert_eq!(response.status(), 200);
            assert_eq!(response.header("content-type"), Some("text/event-stream"));
            assert_eq!(response.header("cache-control"), Some("no-cache"));
            Ok(std::io::BufReader::new(response.into_reader()))
        }
        Err(ureq::Error::Status(status, response)) => {
            Err((status, response.into_json().unwrap_or(Value::Null)))
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}
