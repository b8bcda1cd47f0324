//! Helpers of the operations tests (`tests/ops.rs`): an in-process server with chosen options,
//! the real binary as a child process with its stdout and stderr kept, an HTTP client that
//! returns every header, raw sockets for hostile clients, and a checker of the metrics text.

#![allow(clippy::expect_used, reason = "test code: a failed expect is a failed test")]
#![allow(dead_code)] // the helpers a test file does not use

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use livestock::alloc::AllocatorConfig;
use livestock::clock::ManualClock;
use livestock::config::Config;
use livestock::http::{Server, ServerOptions};
use livestock::node::{Node, NodeConfig};
use livestock_core::ids::HoldIdKey;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_livestock");
/// The manual clock's start: 2027-01-15T08:00:00.000Z.
pub const T0_MS: u64 = 1_800_000_000_000;
pub const HOLD_ID_KEY: HoldIdKey = HoldIdKey(0x0B5E_55ED_0F5E_ED00);
pub const HOUR_MS: u64 = 60 * 60 * 1_000;
/// How long a child process may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ scratch directories

/// A directory under cargo's scratch space, removed on drop unless the test is failing.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ops-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for a post-mortem: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ------------------------------------------------------------------ in-process server

pub fn node_config() -> NodeConfig {
    NodeConfig {
        allocator: AllocatorConfig {
            hold_id_key: HOLD_ID_KEY,
            resolved_hold_retention_ms: HOUR_MS,
        },
        idempotency_window_ms: HOUR_MS,
        idempotency_keys_max: 10_000,
    }
}

/// A server on a free loopback port, in this process, with the HTTP options of `config`.
/// Dropping it stops the server (the runtime goes with it).
pub struct Served {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub client: Http,
    _server: Server,
    _runtime: tokio::runtime::Runtime,
}

impl Served {
    /// An in-memory node over `clock`.
    pub fn memory(config: &Config, clock: Arc<ManualClock>) -> Served {
        Served::over(Node::new(node_config(), clock), config)
    }

    pub fn over(node: Node, config: &Config) -> Served {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let node = Arc::new(node);
        let addr = "127.0.0.1:0".parse().expect("loopback address");
        let options = ServerOptions::from_config(config);
        let server =
            runtime.block_on(Server::start_with(addr, node.clone(), options)).expect("serve");
        let addr = server.local_addr();
        Served {
            node,
            addr,
            client: Http::new(&format!("http://{addr}")),
            _server: server,
            _runtime: runtime,
        }
    }
}

// ------------------------------------------------------------------ HTTP client

/// An answer: status, every header (names lower-case), body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// `error.code` of an error answer.
    pub fn code(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        body["error"]["code"].as_str().map(str::to_owned)
    }
}

#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    pub base: String,
}

impl Http {
    /// A client that opens a connection per request: the server closes a connection after
    /// refusing a request whose body it did not read (401, 403, 413), without saying so, and a
    /// pooled connection would fail the next POST (see `tests/ops.rs`).
    pub fn new(base: &str) -> Http {
        let agent = ureq::AgentBuilder::new()
            .max_idle_connections(0)
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build();
        Http { agent, base: base.to_owned() }
    }

    /// Any request; never fails on a status.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut request = self.agent.request(method, &format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(body) => request.set("content-type", "application/json").send_string(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("{method} {path}: transport error {e}"),
        };
        let (status, headers) = (response.status(), headers_of(&response));
        let body = response.into_string().expect("a text body");
        Resp { status, headers, body }
    }

    /// A request whose answer's status and headers are read, and its body not: for a live
    /// feed, whose body lasts as long as its deal. The connection closes when this returns.
    pub fn send_head(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut request = self.agent.request(method, &format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let response = match request.call() {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("{method} {path}: transport error {e}"),
        };
        let (status, headers) = (response.status(), headers_of(&response));
        // An error's body is whole (it has a length): read it, for the error code.
        let body = if status >= 400 {
            response.into_string().expect("a text body")
        } else {
            String::new()
        };
        Resp { status, headers, body }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], None)
    }

    pub fn get_as(&self, path: &str, token: &str) -> Resp {
        let bearer = format!("Bearer {token}");
        self.send("GET", path, &[("authorization", &bearer)], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.send("POST", path, &[], Some(&body.to_string()))
    }

    pub fn post_as(&self, path: &str, token: &str, body: &Value) -> Resp {
        let bearer = format!("Bearer {token}");
        self.send("POST", path, &[("authorization", &bearer)], Some(&body.to_string()))
    }

    /// `GET /metrics`, checked for format and parsed.
    pub fn metrics(&self, token: Option<&str>) -> Exposition {
        let r = match token {
            Some(token) => self.get_as("/metrics", token),
            None => self.get("/metrics"),
        };
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        Exposition::parse(&r.body)
    }
}

// ------------------------------------------------------------------ raw sockets

/// One HTTP/1.1 connection driven by hand: for clients a library would not be (slow, huge
/// declared bodies, many headers), and for keeping a connection open on purpose.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::from(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
    }

    pub fn from(stream: TcpStream) -> Raw {
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        Raw { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write a request");
    }

    /// `GET path` (keep-alive), then its response.
    pub fn get(&mut self, path: &str) -> RawResp {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: livestock\r\n\r\n").as_bytes());
        self.response().unwrap_or_else(|| panic!("GET {path}: connection closed"))
    }

    /// The next response; `None` if the connection closes first.
    pub fn response(&mut self) -> Option<RawResp> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((resp, used)) = parse_response(&self.buf) {
                self.buf.drain(..used);
                return Some(resp);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading a response: {e} (so far {:?})", self.buf),
            }
        }
    }

    /// Whether the peer has closed: waits up to `within` for end of file (or a reset).
    /// Any bytes that arrive meanwhile are kept.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).expect("read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// What arrived and was not yet taken as a response.
    pub fn pending(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// A whole response at the start of `buf` (with a Content-Length, or none: empty body), and
/// the bytes it took.
fn parse_response(buf: &[u8]) -> Option<(RawResp, usize)> {
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
    let body = String::from_utf8_lossy(body).into_owned();
    Some((RawResp { status, head, body }, end + 4 + length))
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn code(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        body["error"]["code"].as_str().map(str::to_owned)
    }
}

// ------------------------------------------------------------------ the metrics text

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape, checked line by line: `# HELP`/`# TYPE`/`# UNIT` comments, samples
/// `name{k="v",...} value`, every sample of a declared family, and `# EOF` last.
#[derive(Debug)]
pub struct Exposition {
    pub text: String,
    pub samples: Vec<Sample>,
    /// Family name -> type.
    pub types: BTreeMap<String, String>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `k="v",k2="v2"` with `\\`, `\"` and `\n` escapes.
fn parse_labels(text: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label in {line:?}"));
        assert!(is_metric_name(name), "label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(labels.insert(name.to_owned(), value).is_none(), "label twice in {line:?}");
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => panic!("junk after a label in {line:?}"),
        };
    }
    labels
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        assert!(text.ends_with("# EOF\n"), "the scrape does not end with # EOF:\n{text}");
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if *line == "# EOF" {
                assert_eq!(i, lines.len() - 1, "# EOF before the end");
                continue;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                let (kind, family) = (words.next(), words.next());
                let family = family.unwrap_or_else(|| panic!("comment without a name: {line:?}"));
                assert!(is_metric_name(family), "bad family name in {line:?}");
                match kind {
                    Some("TYPE") => {
                        let ty = words.next().unwrap_or_else(|| panic!("no type: {line:?}"));
                        let known = ["counter", "gauge", "histogram", "summary", "unknown"];
                        assert!(known.contains(&ty), "type {ty:?} in {line:?}");
                        types.insert(family.to_owned(), ty.to_owned());
                    }
                    Some("HELP" | "UNIT") => {}
                    _ => panic!("unknown comment {line:?}"),
                }
                continue;
            }
            let (series, value) =
                line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels =
                        labels.strip_suffix('}').unwrap_or_else(|| panic!("no }} in {line:?}"));
                    (name, parse_labels(labels, line))
                }
                None => (series, BTreeMap::new()),
            };
            assert!(is_metric_name(name), "bad metric name in {line:?}");
            let family = ["_total", "_bucket", "_count", "_sum", "_created"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| types.contains_key(*f)))
                .unwrap_or(name);
            assert!(types.contains_key(family), "sample of an undeclared family: {line:?}");
            samples.push(Sample { name: name.to_owned(), labels, value });
        }
        Exposition { text: text.to_owned(), samples, types }
    }

    /// The samples named `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v)))
            .collect()
    }

    /// The one sample named `name` with `labels` (and perhaps others); `None` if absent.
    #[track_caller]
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(found.len() <= 1, "{name} {labels:?} matches several samples: {found:?}");
        found.first().map(|s| s.value)
    }

    /// Like `get`, failing the test (with the whole scrape) when absent.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in the scrape:\n{}", self.text))
    }

    /// Checks a histogram series: buckets cumulative and non-decreasing, the `+Inf` bucket
    /// equal to the count. Returns the count.
    #[track_caller]
    pub fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        assert_eq!(self.types.get(family).map(String::as_str), Some("histogram"), "{family}");
        let count = self.value(&format!("{family}_count"), labels);
        self.value(&format!("{family}_sum"), labels);
        let mut buckets: Vec<(f64, f64)> = self
            .find(&format!("{family}_bucket"), labels)
            .iter()
            .map(|s| {
                let le = s.labels.get("le").unwrap_or_else(|| panic!("bucket without le: {s:?}"));
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le") };
                (bound, s.value)
            })
            .collect();
        assert!(buckets.len() >= 2, "{family} {labels:?} has no buckets:\n{}", self.text);
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}: not cumulative");
        let last = buckets.last().expect("a bucket");
        assert_eq!(last.0, f64::INFINITY, "{family} {labels:?}: no +Inf bucket");
        assert_eq!(last.1, count, "{family} {labels:?}: +Inf bucket differs from the count");
        count
    }
}

// ------------------------------------------------------------------ the real binary

/// `livestock` with a clean environment: no `LIVESTOCK_*` or `RUST_LOG` leaks in from the one
/// running the tests.
pub fn livestock() -> Command {
    clean(Command::new(BIN))
}

/// `command` without the `LIVESTOCK_*` and `RUST_LOG` variables of the test's environment.
pub fn clean(mut command: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("LIVESTOCK_") || name_text == "RUST_LOG" {
            command.env_remove(&name);
        }
    }
    command
}

/// Runs a command that should exit by itself; kills it and fails the test if it is still
/// running after 20 s (a `serve` that was expected to refuse to start, say).
pub fn run(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn livestock");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    Output { status, stdout, stderr }
}

/// A running `livestock serve`: its address, its stdout (kept as it arrives) and its stderr (a
/// file). Dropping it kills the process.
pub struct Proc {
    child: Child,
    /// `host:port` as printed.
    pub addr: String,
    stdout: Arc<Mutex<String>>,
    stderr: PathBuf,
}

impl Proc {
    /// Spawns `command` (a `serve`) and waits for its "listening on" line.
    pub fn spawn(mut command: Command, stderr: &Path) -> Proc {
        let log = std::fs::File::create(stderr).expect("create the stderr file");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn livestock");
        let out = child.stdout.take().expect("piped stdout");
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let kept = stdout.clone();
        // Keeps reading so that the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("livestock listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut kept = kept.lock().expect("stdout lock");
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => return Proc { child, addr, stdout, stderr: stderr.to_owned() },
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let err = std::fs::read_to_string(stderr).unwrap_or_default();
                        panic!("livestock exited during startup ({status}):\n{err}");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err = std::fs::read_to_string(stderr).unwrap_or_default();
                    panic!("livestock did not print its address in time:\n{err}");
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        let (_, port) = self.addr.rsplit_once(':').expect("host:port");
        port.parse().expect("a port")
    }

    /// A client for `127.0.0.1:<port>` (whatever address it listens on).
    pub fn http(&self) -> Http {
        Http::new(&format!("http://127.0.0.1:{}", self.port()))
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout lock").clone()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM (through `kill(1)`: no libc bindings here), then waits for the exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit {within:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`, ...).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let err = self.stderr();
            let lines: Vec<&str> = err.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!("livestock stderr ({}):\n{tail}", self.stderr.display());
        }
    }
}

/// A field of `/proc/<pid>/status`, in kB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The soft limit on open files of a process, from `/proc/<pid>/limits`.
pub fn open_files_soft_limit(pid: &str) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open files limit in {limits}"));
    let soft = line["Max open files".len()..].split_whitespace().next().expect("a soft limit");
    if soft == "unlimited" {
        u64::MAX
    } else {
        soft.parse().expect("a number")
    }
}

/// A response's headers, names in lower case.
fn headers_of(response: &ureq::Response) -> Vec<(String, String)> {
    response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or_default().to_owned();
            (name.to_ascii_lowercase(), value)
        })
        .collect()
}
