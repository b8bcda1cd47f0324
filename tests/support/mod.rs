//! Helpers for the tests that run the real `livestock` binary as a child process: a scratch
//! data directory, a server that can be killed, stopped and restarted, and an HTTP client whose
//! answers distinguish "the server answered" from "the answer was lost".

#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failed expect is a failed test; casts of small counts and durations"
)]
#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_livestock");

/// How long a server may take to recover and print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ scratch directories

/// A fresh directory under the system temp dir, removed on drop, unless the test is failing:
/// then it is kept (and its path printed) for a post-mortem.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "livestock-{label}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the scratch directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for a post-mortem: {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ------------------------------------------------------------------ the server process

/// A running `livestock serve`. Dropping it kills the process (and, if the test is failing,
/// prints the end of its log).
pub struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    /// Starts `livestock serve --listen 127.0.0.1:0 --data-dir <data_dir> <extra...>` and waits
    /// for its "listening on" line. Its stderr goes to `log` (appended), read back on failure.
    pub fn start(data_dir: &Path, log: &Path, extra: &[&str]) -> Server {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the server log");
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn livestock");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Keeps reading stdout after the address line so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("livestock listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => return Server { child, addr, log: log.to_path_buf() },
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("livestock exited during startup ({status}):\n{}", tail(log));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("livestock did not print its address in time:\n{}", tail(log));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (through `kill(1)`: the test uses no libc bindings).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid());
    }

    /// Waits for the process to exit by itself; `None` if it is still running at `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => return None,
            }
        }
    }

    /// The last lines the server wrote to stderr.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("server log ({}):\n{}", self.log.display(), self.log_tail());
        }
    }
}

fn tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs `livestock verify --data-dir <dir>`: (exit status, stdout).
pub fn verify(data_dir: &Path) -> (ExitStatus, String) {
    let output = Command::new(BIN)
        .arg("verify")
        .arg("--data-dir")
        .arg(data_dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run livestock verify");
    (output.status, String::from_utf8_lossy(&output.stdout).into_owned())
}

// ------------------------------------------------------------------ HTTP

/// A keyed (or not) request, kept verbatim so that a retry sends the same bytes.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub key: Option<String>,
    pub body: Option<String>,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Request {
        Request { method: "GET", path: path.into(), key: None, body: None }
    }

    pub fn post(path: impl Into<String>, key: impl Into<String>, body: &Value) -> Request {
        Request {
            method: "POST",
            path: path.into(),
            key: Some(key.into()),
            body: Some(body.to_string()),
        }
    }
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The server answered (any status): the exact body bytes.
    Reply { status: u16, body: String },
    /// No (whole) answer: the connection failed. The request may or may not have taken effect.
    Lost(String),
}

impl Answer {
    pub fn is_success(&self) -> bool {
        matches!(self, Answer::Reply { status: 200..=299, .. })
    }

    /// The body as JSON (panics if there is no answer or it is not JSON).
    pub fn json(&self) -> Value {
        match self {
            Answer::Reply { body, .. } => serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {body}")),
            Answer::Lost(e) => panic!("no answer: {e}"),
        }
    }

    /// The `error.code` of an error answer.
    pub fn error_code(&self) -> Option<String> {
        match self {
            Answer::Reply { status: 400.., body } => serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned)),
            _ => None,
        }
    }
}

/// A client for one server address.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    pub fn new(base: &str) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build();
        Client { agent, base: base.to_owned() }
    }

    pub fn send(&self, request: &Request) -> Answer {
        let mut call =
            self.agent.request(request.method, &format!("{}{}", self.base, request.path));
        if let Some(key) = &request.key {
            call = call.set("Idempotency-Key", key);
        }
        let result = match &request.body {
            Some(body) => call.set("Content-Type", "application/json").send_string(body),
            None => call.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(e)) => return Answer::Lost(e.to_string()),
        };
        let status = response.status();
        match response.into_string() {
            Ok(body) => Answer::Reply { status, body },
            Err(e) => Answer::Lost(format!("reading the body: {e}")),
        }
    }

    /// GET that must answer 200 (or 404: `None`).
    pub fn get_json(&self, path: &str) -> Option<Value> {
        match self.send(&Request::get(path)) {
            Answer::Reply { status: 200, body } => {
                Some(serde_json::from_str(&body).expect("JSON body"))
            }
            Answer::Reply { status: 404, .. } => None,
            other => panic!("GET {path}: {other:?}"),
        }
    }
}

// ------------------------------------------------------------------ randomness

/// A small deterministic generator (splitmix64): no dependency, and a printed seed reproduces
/// the test's own choices (thread scheduling aside).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `env` if set, else from the clock.
    pub fn seed_from_env(env: &str) -> u64 {
        match std::env::var(env) {
            Ok(s) => s.parse().unwrap_or_else(|_| panic!("{env}: not a number: {s}")),
            Err(_) => {
                SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            }
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next_u64() as usize % items.len()]
    }
}

/// Invariants every deal must satisfy, whatever happened: no unit is sold or held twice.
#[track_caller]
pub fn assert_deal_balanced(deal: &Value) {
    let n = |field: &str| deal[field].as_u64().unwrap_or_else(|| panic!("{field} in {deal}"));
    let (stock, available, held, sold) = (n("stock"), n("available"), n("held"), n("sold"));
    assert!(held + sold <= stock, "oversold: {deal}");
    assert_eq!(available + held + sold, stock, "units unaccounted for: {deal}");
}

// ------------------------------------------------------------------ the ledger

/// How an acknowledged answer resolved a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Confirmed { qty: u64 },
    Released,
}

/// What the acknowledged answers say about one hold.
#[derive(Debug)]
pub struct HoldFacts {
    pub deal: String,
    pub user: String,
    pub qty: u64,
    pub resolution: Option<Resolution>,
    pub cycle: usize,
}

/// An acknowledged keyed request and its exact answer.
pub struct Acked {
    pub request: Request,
    pub status: u16,
    pub body: String,
    pub cycle: usize,
}

#[derive(Default)]
pub struct Ledger {
    pub acked: Vec<Acked>,
    pub holds: BTreeMap<String, HoldFacts>,
    pub deals: Vec<String>,
    /// Requests whose answer was lost (not yet re-sent).
    pub lost: Vec<Request>,
    pub sent: u64,
}

pub fn str_field(value: &Value, field: &str) -> String {
    match value[field].as_str() {
        Some(s) => s.to_owned(),
        None => panic!("no string {field:?} in {value}"),
    }
}

pub fn u64_field(value: &Value, field: &str) -> u64 {
    match value[field].as_u64() {
        Some(n) => n,
        None => panic!("no integer {field:?} in {value}"),
    }
}

impl Ledger {
    /// Records the answer to a keyed mutation: a lost answer is kept for a retry, a success is an
    /// acknowledged change, any other answer changed nothing. `cycle`: when (the caller's count).
    pub fn record(&mut self, request: &Request, answer: &Answer, cycle: usize) {
        let Answer::Reply { status, body } = answer else {
            self.lost.push(request.clone());
            return;
        };
        if !answer.is_success() {
            return;
        }
        let reply = answer.json();
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["v1", "deals"] => self.deals.push(str_field(&reply, "id")),
            ["v1", "deals", _, "reserve"] => {
                let hold_id = str_field(&reply, "hold_id");
                let facts = HoldFacts {
                    deal: str_field(&reply, "deal_id"),
                    user: str_field(&reply, "user_id"),
                    qty: u64_field(&reply, "qty"),
                    resolution: None,
                    cycle,
                };
                if let Some(old) = self.holds.insert(hold_id.clone(), facts) {
                    panic!("hold id {hold_id} was handed out twice (first: {old:?})");
                }
            }
            ["v1", "holds", hold_id, action] => {
                let resolution = match *action {
                    "confirm" => Resolution::Confirmed { qty: u64_field(&reply, "confirmed_qty") },
                    "release" => Resolution::Released,
                    other => panic!("unexpected action {other}"),
                };
                let Some(facts) = self.holds.get_mut(*hold_id) else {
                    panic!(
                        "{} {} acknowledged for a hold never reserved",
                        request.method, request.path
                    )
                };
                match facts.resolution {
                    None => facts.resolution = Some(resolution),
                    Some(earlier) => assert_eq!(
                        earlier, resolution,
                        "(c) hold {hold_id} acknowledged as {earlier:?} and then as {resolution:?} \
                         ({} answered {status} {body})",
                        request.path
                    ),
                }
            }
            _ => panic!("unexpected request {}", request.path),
        }
        self.acked.push(Acked {
            request: request.clone(),
            status: *status,
            body: body.clone(),
            cycle,
        });
    }
}

/// Checks one acknowledged hold against the server: it exists, is the hold that was reserved,
/// and shows the acknowledged resolution, if any. Returns the server's view.
#[track_caller]
pub fn check_hold(client: &Client, hold_id: &str, facts: &HoldFacts, when: &str) -> Value {
    let Some(hold) = client.get_json(&format!("/v1/holds/{hold_id}")) else {
        panic!("(b) acknowledged hold {hold_id} ({facts:?}) is gone {when}");
    };
    assert_eq!(
        (str_field(&hold, "deal_id"), str_field(&hold, "user_id"), u64_field(&hold, "qty")),
        (facts.deal.clone(), facts.user.clone(), facts.qty),
        "hold {hold_id} changed {when}: {hold}"
    );
    let state = str_field(&hold, "state");
    let confirmed_qty = u64_field(&hold, "confirmed_qty");
    match facts.resolution {
        Some(Resolution::Confirmed { qty }) => assert_eq!(
            (state.as_str(), confirmed_qty),
            ("confirmed", qty),
            "(b)/(c) the acknowledged confirm of {hold_id} is lost {when}: {hold}"
        ),
        Some(Resolution::Released) => assert_eq!(
            state, "released",
            "(b)/(c) the acknowledged release of {hold_id} is lost {when}: {hold}"
        ),
        None => assert!(
            ["held", "confirmed", "released", "expired"].contains(&state.as_str()),
            "hold {hold_id} in an unknown state: {hold}"
        ),
    }
    hold
}
