//! The configuration of `livestock serve`: one struct, every option with its default and unit.
//!
//! Filled in four layers, each overriding the one before: the defaults below, a TOML file
//! (`--config FILE`), environment variables (`LIVESTOCK_<OPTION>`), and command-line flags
//! (`--<option>`). `livestock config check FILE` validates a file and prints the effective
//! configuration (with tokens redacted). docs/operations.md lists every option.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use livestock_core::limits::{
    CHECKPOINT_INTERVAL_MS_DEFAULT, CHECKPOINT_LOG_BYTES_DEFAULT, EVENTS_RETENTION_BYTES_DEFAULT,
    EVENTS_SUBSCRIBERS_MAX_DEFAULT, FEED_INTERVAL_MS_DEFAULT, FEED_INTERVAL_MS_MAX,
    FEED_INTERVAL_MS_MIN, FEED_SUBSCRIBERS_MAX_DEFAULT, FSYNC_INTERVAL_MS_DEFAULT,
    HOLD_TTL_MS_DEFAULT, HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN, IDEMPOTENCY_KEYS_MAX_DEFAULT,
    IDEMPOTENCY_WINDOW_MS_DEFAULT, REQUEST_BODY_BYTES_MAX, RESOLVED_HOLD_RETENTION_MS_DEFAULT,
    WAL_SEGMENT_BYTES_MAX_DEFAULT,
};

/// When a change is acknowledged (see docs/durability.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// After the record is fsynced: no acknowledged change is ever lost.
    Strict,
    /// Once the record is written to the kernel; fsync every `fsync_interval_ms`. A machine
    /// crash (not a process crash) can lose that interval plus one batch of acknowledged
    /// changes.
    Relaxed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// A bearer token. Never printed: `Debug`, `Display` and serialization redact it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Secret(s.to_owned()))
    }
}

/// A cluster member as `--peers` names it: `id=host:port` (its peer address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub addr: String,
}

impl std::str::FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, addr) =
            s.split_once('=').ok_or_else(|| format!("peer {s:?}: expected id=host:port"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("peer {s:?}: id is not a number"))?;
        if id == 0 {
            return Err(format!("peer {s:?}: node ids start at 1"));
        }
        let addr = addr.trim();
        if addr.parse::<SocketAddr>().is_err() && !addr.contains(':') {
            return Err(format!("peer {s:?}: expected host:port after '='"));
        }
        Ok(Peer { id, addr: addr.to_owned() })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.id, self.addr)
    }
}

impl Serialize for Peer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Every setting. Field docs give the unit and the default; the defaults live in `Default`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Data directory (log segments, checkpoints). Default `livestock-data`.
    pub data_dir: PathBuf,
    /// `strict` (default) or `relaxed`.
    pub durability: DurabilityMode,
    /// Relaxed durability: fsync at least this often, ms. Default 10.
    pub fsync_interval_ms: u64,
    /// A checkpoint at least this often while the log grows, ms. Default 60000.
    pub checkpoint_interval_ms: u64,
    /// ...and after this many log bytes since the last one. Default 268435456 (256 MiB).
    pub checkpoint_log_bytes: u64,
    /// A new log segment past this size, bytes. Default 67108864 (64 MiB).
    pub segment_bytes_max: u64,
    /// TTL of holds of deals created without `hold_ttl_ms`, ms. Default 600000 (10 min).
    pub hold_ttl_ms_default: u64,
    /// Longest life of holds of deals created without `hold_ttl_ms_max`, ms. Default 86400000.
    pub hold_ttl_ms_max: u64,
    /// Resolved holds stay readable (and retry-safe) this long, ms. Default 3600000 (1 h).
    pub resolved_hold_retention_ms: u64,
    /// An Idempotency-Key is remembered this long, ms. Default 3600000 (1 h).
    pub idempotency_window_ms: u64,
    /// At most this many keys remembered; past it new keys get 503. Default 1000000.
    pub idempotency_keys_max: usize,
    /// Request bodies over this are refused (413) before they are read, bytes. Default 16384;
    /// at most 16384.
    pub body_bytes_max: usize,
    /// A client that has not sent its request headers within this is dropped, ms. Default 10000.
    pub header_read_timeout_ms: u64,
    /// Connections open at once; past it new ones are closed at once. Default 10000.
    pub connections_max: usize,
    /// Headers in one request; past it the request is refused (431). Default 64.
    pub headers_max: usize,
    /// Requests per second one user may make (reserve, cart); 0 = no limit (default).
    pub user_rate_per_s: u32,
    /// Burst allowance of that rate, requests. Default 10.
    pub user_rate_burst: u32,
    /// Runtime worker threads; 0 = one per core (default).
    pub worker_threads: usize,
    /// `human` (default) or `json`.
    pub log_format: LogFormat,
    /// Serve `/metrics` without a token. Default false.
    pub metrics_public: bool,
    /// Allow a non-loopback listener without tokens. Default false.
    pub insecure: bool,
    /// The live feed: a deal's counter changes go out at most this often, ms (state changes,
    /// such as sold out, at once). Default 100; 10..=60000.
    pub feed_interval_ms: u64,
    /// The live feed: subscribers at once; past it 503 `feed_full`. Default 5000.
    pub feed_subscribers_max: usize,
    /// The live feed and a deal's availability without a token. Default true; false: they
    /// need the client role.
    pub feed_public: bool,
    /// The event stream (`GET /v1/events`): subscribers at once; past it 503 `events_full`.
    /// Default 64.
    pub events_subscribers_max: usize,
    /// The event stream: log kept behind the newest checkpoint so that a consumer can resume
    /// from it, bytes (whole segments; 0: none). Default 1073741824 (1 GiB).
    pub events_retention_bytes: u64,
    /// Tokens of the `admin` role (deals, streams, and everything `client` may do).
    pub admin_tokens: Vec<Secret>,
    /// Tokens of the `client` role (reserve, cart, confirm, release, extend, reads).
    pub client_tokens: Vec<Secret>,
    /// Cluster mode: this node's id (1, 2, ...). Absent: a single node (the default).
    pub node_id: Option<u64>,
    /// Cluster mode: where this node listens for its peers (raft and forwarded writes).
    pub peer_listen: Option<SocketAddr>,
    /// Cluster mode: every member, `id=host:port` (peer addresses), this node included.
    pub peers: Vec<Peer>,
    /// Cluster mode: the secret peers authenticate with. Required as soon as a peer address is
    /// not loopback. Never printed.
    pub cluster_secret: Option<Secret>,
    /// Cluster mode: a follower answers `sold_out` itself while it is at most this far behind
    /// the leader; otherwise it forwards. 0: always forward. Default 100.
    pub stale_refusal_ms: u64,
    /// Cluster mode: how long a write waits for its decision to commit before it gets 503
    /// `no_leader` (its outcome then unknown: retry with the same key). Default 2000.
    pub commit_timeout_ms: u64,
    /// Cluster mode: the leader's heartbeat period. Default 50.
    pub heartbeat_interval_ms: u64,
    /// Cluster mode: a follower that hears no leader for a random time in
    /// [election_timeout_min_ms, 2 x election_timeout_min_ms) starts an election. Default 200.
    pub election_timeout_min_ms: u64,
    /// Cluster mode: a snapshot is built after this many entries since the last one.
    /// Default 50000.
    pub snapshot_entries: u64,
    /// Testing only: this node's clock reads this many ms ahead (or behind, negative) of the
    /// machine's. Default 0.
    pub clock_skew_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("livestock-data"),
            durability: DurabilityMode::Strict,
            fsync_interval_ms: FSYNC_INTERVAL_MS_DEFAULT,
            checkpoint_interval_ms: CHECKPOINT_INTERVAL_MS_DEFAULT,
            checkpoint_log_bytes: CHECKPOINT_LOG_BYTES_DEFAULT,
            segment_bytes_max: WAL_SEGMENT_BYTES_MAX_DEFAULT,
            hold_ttl_ms_default: HOLD_TTL_MS_DEFAULT,
            hold_ttl_ms_max: HOLD_TTL_MS_MAX,
            resolved_hold_retention_ms: RESOLVED_HOLD_RETENTION_MS_DEFAULT,
            idempotency_window_ms: IDEMPOTENCY_WINDOW_MS_DEFAULT,
            idempotency_keys_max: IDEMPOTENCY_KEYS_MAX_DEFAULT,
            body_bytes_max: REQUEST_BODY_BYTES_MAX,
            header_read_timeout_ms: 10_000,
            connections_max: 10_000,
            headers_max: 64,
            user_rate_per_s: 0,
            user_rate_burst: 10,
            worker_threads: 0,
            log_format: LogFormat::Human,
            metrics_public: false,
            insecure: false,
            feed_interval_ms: FEED_INTERVAL_MS_DEFAULT,
            feed_subscribers_max: FEED_SUBSCRIBERS_MAX_DEFAULT,
            feed_public: true,
            events_subscribers_max: EVENTS_SUBSCRIBERS_MAX_DEFAULT,
            events_retention_bytes: EVENTS_RETENTION_BYTES_DEFAULT,
            admin_tokens: Vec::new(),
            client_tokens: Vec::new(),
            node_id: None,
            peer_listen: None,
            peers: Vec::new(),
            cluster_secret: None,
            stale_refusal_ms: 100,
            commit_timeout_ms: 2_000,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 200,
            snapshot_entries: 50_000,
            clock_skew_ms: 0,
        }
    }
}

/// The flag and environment layers: every option optional, so that what is not given falls
/// through to the file and the defaults.
#[derive(clap::Args, Debug, Default)]
pub struct ConfigArgs {
    /// A TOML file with any of the options below (lowest precedence but the defaults).
    #[arg(long, env = "LIVESTOCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "LIVESTOCK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: log segments and checkpoints [default: livestock-data].
    #[arg(long, env = "LIVESTOCK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When a change is acknowledged [default: strict]. relaxed: once written to the kernel,
    /// fsync every --fsync-interval-ms; a machine crash can lose that interval plus one batch.
    #[arg(long, value_enum, env = "LIVESTOCK_DURABILITY")]
    pub durability: Option<DurabilityMode>,
    /// Relaxed durability: fsync at least this often, ms [default: 10].
    #[arg(long, env = "LIVESTOCK_FSYNC_INTERVAL_MS")]
    pub fsync_interval_ms: Option<u64>,
    /// Write a checkpoint at least this often while the log grows, ms [default: 60000].
    #[arg(long, env = "LIVESTOCK_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// ...and after this many log bytes since the last one [default: 268435456].
    #[arg(long, env = "LIVESTOCK_CHECKPOINT_LOG_BYTES")]
    pub checkpoint_log_bytes: Option<u64>,
    /// Start a new log segment past this size, bytes [default: 67108864].
    #[arg(long, env = "LIVESTOCK_SEGMENT_BYTES_MAX")]
    pub segment_bytes_max: Option<u64>,
    /// TTL of holds of deals created without hold_ttl_ms, ms [default: 600000].
    #[arg(long, env = "LIVESTOCK_HOLD_TTL_MS_DEFAULT")]
    pub hold_ttl_ms_default: Option<u64>,
    /// Longest hold life of deals created without hold_ttl_ms_max, ms [default: 86400000].
    #[arg(long, env = "LIVESTOCK_HOLD_TTL_MS_MAX")]
    pub hold_ttl_ms_max: Option<u64>,
    /// How long resolved holds stay readable, ms [default: 3600000].
    #[arg(long, env = "LIVESTOCK_RESOLVED_HOLD_RETENTION_MS")]
    pub resolved_hold_retention_ms: Option<u64>,
    /// How long an Idempotency-Key is remembered, ms [default: 3600000].
    #[arg(long, env = "LIVESTOCK_IDEMPOTENCY_WINDOW_MS")]
    pub idempotency_window_ms: Option<u64>,
    /// Most Idempotency-Keys remembered; past it new keys get 503 [default: 1000000].
    #[arg(long, env = "LIVESTOCK_IDEMPOTENCY_KEYS_MAX")]
    pub idempotency_keys_max: Option<usize>,
    /// Largest request body, bytes, at most 16384 [default: 16384].
    #[arg(long, env = "LIVESTOCK_BODY_BYTES_MAX")]
    pub body_bytes_max: Option<usize>,
    /// Drop a client that has not sent its headers within this, ms [default: 10000].
    #[arg(long, env = "LIVESTOCK_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Most connections open at once [default: 10000].
    #[arg(long, env = "LIVESTOCK_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Most headers in one request [default: 64].
    #[arg(long, env = "LIVESTOCK_HEADERS_MAX")]
    pub headers_max: Option<usize>,
    /// Requests per second one user may make; 0 = no limit [default: 0].
    #[arg(long, env = "LIVESTOCK_USER_RATE_PER_S")]
    pub user_rate_per_s: Option<u32>,
    /// Burst allowance of the per-user rate, requests [default: 10].
    #[arg(long, env = "LIVESTOCK_USER_RATE_BURST")]
    pub user_rate_burst: Option<u32>,
    /// Runtime worker threads; 0 = one per core [default: 0].
    #[arg(long, env = "LIVESTOCK_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Log format [default: human].
    #[arg(long, value_enum, env = "LIVESTOCK_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Serve /metrics without a token [default: false].
    #[arg(long, env = "LIVESTOCK_METRICS_PUBLIC", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_public: Option<bool>,
    /// Allow a non-loopback listener without tokens [default: false].
    #[arg(long, env = "LIVESTOCK_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// The live feed: counter changes of a deal at most this often, ms, 10..=60000
    /// [default: 100].
    #[arg(long, env = "LIVESTOCK_FEED_INTERVAL_MS")]
    pub feed_interval_ms: Option<u64>,
    /// The live feed: most subscribers at once; past it 503 feed_full [default: 5000].
    #[arg(long, env = "LIVESTOCK_FEED_SUBSCRIBERS_MAX")]
    pub feed_subscribers_max: Option<usize>,
    /// The live feed and availability without a token; false: the client role [default: true].
    #[arg(long, env = "LIVESTOCK_FEED_PUBLIC", num_args = 0..=1, default_missing_value = "true")]
    pub feed_public: Option<bool>,
    /// The event stream: most subscribers at once; past it 503 events_full [default: 64].
    #[arg(long, env = "LIVESTOCK_EVENTS_SUBSCRIBERS_MAX")]
    pub events_subscribers_max: Option<usize>,
    /// The event stream: log kept behind the newest checkpoint for consumers to resume from,
    /// bytes, in whole segments; 0: none [default: 1073741824].
    #[arg(long, env = "LIVESTOCK_EVENTS_RETENTION_BYTES")]
    pub events_retention_bytes: Option<u64>,
    /// admin tokens, comma-separated. Prefer the environment or the file: flags show in `ps`.
    #[arg(long, env = "LIVESTOCK_ADMIN_TOKENS", value_delimiter = ',', hide_env_values = true)]
    pub admin_tokens: Option<Vec<Secret>>,
    /// client tokens, comma-separated.
    #[arg(long, env = "LIVESTOCK_CLIENT_TOKENS", value_delimiter = ',', hide_env_values = true)]
    pub client_tokens: Option<Vec<Secret>>,
    /// Cluster mode: this node's id (1, 2, ...) [default: none, a single node].
    #[arg(long, env = "LIVESTOCK_NODE_ID")]
    pub node_id: Option<u64>,
    /// Cluster mode: the address peers reach this node at.
    #[arg(long, env = "LIVESTOCK_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Cluster mode: every member as id=host:port, comma-separated, this node included.
    #[arg(long, env = "LIVESTOCK_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<Peer>>,
    /// Cluster mode: the shared secret peers authenticate with (required off loopback).
    #[arg(long, env = "LIVESTOCK_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Secret>,
    /// Cluster mode: how stale a follower may be and still answer sold_out itself, ms
    /// [default: 100; 0 = always forward].
    #[arg(long, env = "LIVESTOCK_STALE_REFUSAL_MS")]
    pub stale_refusal_ms: Option<u64>,
    /// Cluster mode: how long a write waits for its commit before 503 no_leader, ms
    /// [default: 2000].
    #[arg(long, env = "LIVESTOCK_COMMIT_TIMEOUT_MS")]
    pub commit_timeout_ms: Option<u64>,
    /// Cluster mode: the leader's heartbeat period, ms [default: 50].
    #[arg(long, env = "LIVESTOCK_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Cluster mode: the shortest election timeout, ms [default: 200].
    #[arg(long, env = "LIVESTOCK_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Cluster mode: entries between snapshots [default: 50000].
    #[arg(long, env = "LIVESTOCK_SNAPSHOT_ENTRIES")]
    pub snapshot_entries: Option<u64>,
    /// Testing only: this node's clock reads this many ms ahead (negative: behind) of the
    /// machine's [default: 0].
    #[arg(long, env = "LIVESTOCK_CLOCK_SKEW_MS", allow_hyphen_values = true)]
    pub clock_skew_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: PathBuf, error: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse { path: path.to_owned(), error })
    }

    /// All four layers, validated.
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! layer {
            ($($field:ident),* $(,)?) => {
                $(if let Some(value) = &args.$field {
                    config.$field = value.clone();
                })*
            };
        }
        layer!(
            listen,
            data_dir,
            durability,
            fsync_interval_ms,
            checkpoint_interval_ms,
            checkpoint_log_bytes,
            segment_bytes_max,
            hold_ttl_ms_default,
            hold_ttl_ms_max,
            resolved_hold_retention_ms,
            idempotency_window_ms,
            idempotency_keys_max,
            body_bytes_max,
            header_read_timeout_ms,
            connections_max,
            headers_max,
            user_rate_per_s,
            user_rate_burst,
            worker_threads,
            log_format,
            metrics_public,
            insecure,
            feed_interval_ms,
            feed_subscribers_max,
            feed_public,
            events_subscribers_max,
            events_retention_bytes,
            admin_tokens,
            client_tokens,
            peers,
            stale_refusal_ms,
            commit_timeout_ms,
            heartbeat_interval_ms,
            election_timeout_min_ms,
            snapshot_entries,
            clock_skew_ms,
        );
        if args.node_id.is_some() {
            config.node_id = args.node_id;
        }
        if args.peer_listen.is_some() {
            config.peer_listen = args.peer_listen;
        }
        if args.cluster_secret.is_some() {
            config.cluster_secret = args.cluster_secret.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every option's range and the relations between options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError::Invalid(message));
        let at_least_1 = [
            ("fsync_interval_ms", self.fsync_interval_ms),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("checkpoint_log_bytes", self.checkpoint_log_bytes),
            ("idempotency_window_ms", self.idempotency_window_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("resolved_hold_retention_ms", self.resolved_hold_retention_ms),
            ("connections_max", self.connections_max as u64),
            ("headers_max", self.headers_max as u64),
            ("body_bytes_max", self.body_bytes_max as u64),
            ("feed_subscribers_max", self.feed_subscribers_max as u64),
            ("events_subscribers_max", self.events_subscribers_max as u64),
        ];
        for (name, value) in at_least_1 {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if self.segment_bytes_max < 4096 {
            return fail("segment_bytes_max must be at least 4096".into());
        }
        if self.body_bytes_max > REQUEST_BODY_BYTES_MAX {
            return fail(format!("body_bytes_max must be at most {REQUEST_BODY_BYTES_MAX}"));
        }
        if !(HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX).contains(&self.hold_ttl_ms_max) {
            return fail(format!(
                "hold_ttl_ms_max must be between {HOLD_TTL_MS_MIN} and {HOLD_TTL_MS_MAX}"
            ));
        }
        if !(HOLD_TTL_MS_MIN..=self.hold_ttl_ms_max).contains(&self.hold_ttl_ms_default) {
            return fail(format!(
                "hold_ttl_ms_default must be between {HOLD_TTL_MS_MIN} and hold_ttl_ms_max"
            ));
        }
        if !(FEED_INTERVAL_MS_MIN..=FEED_INTERVAL_MS_MAX).contains(&self.feed_interval_ms) {
            return fail(format!(
                "feed_interval_ms must be between {FEED_INTERVAL_MS_MIN} and {FEED_INTERVAL_MS_MAX}"
            ));
        }
        if self.user_rate_per_s > 0 && self.user_rate_burst == 0 {
            return fail("user_rate_burst must be at least 1 when user_rate_per_s is set".into());
        }
        let tokens = self.admin_tokens.iter().chain(&self.client_tokens);
        if tokens.clone().any(|t| t.expose().len() < 16) {
            return fail("tokens must be at least 16 characters".into());
        }
        let mut seen: Vec<&str> = tokens.map(Secret::expose).collect();
        seen.sort_unstable();
        if seen.windows(2).any(|pair| pair[0] == pair[1]) {
            return fail("a token is listed twice (or under both roles)".into());
        }
        self.validate_cluster()?;
        if self.tokens_configured() == 0 && !self.listen.ip().is_loopback() && !self.insecure {
            return fail(format!(
                "listening on {} (not loopback) without tokens: configure admin_tokens and \
                 client_tokens, or pass --insecure to serve it unauthenticated",
                self.listen
            ));
        }
        Ok(())
    }

    /// Cluster options come together or not at all; the secret is required off loopback.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError::Invalid(message));
        let Some(node_id) = self.node_id else {
            if self.peer_listen.is_some() || !self.peers.is_empty() {
                return fail("peer_listen and peers need node_id (cluster mode)".into());
            }
            return Ok(());
        };
        if self.peer_listen.is_none() || self.peers.is_empty() {
            return fail("cluster mode (node_id) needs peer_listen and peers".into());
        }
        if !self.peers.iter().any(|p| p.id == node_id) {
            return fail(format!("node_id {node_id} is not among the peers"));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return fail("a node id is listed twice in peers".into());
        }
        let loopback = |addr: &str| match addr.parse::<SocketAddr>() {
            Ok(a) => a.ip().is_loopback(),
            Err(_) => addr.starts_with("localhost:"),
        };
        let off_loopback = self.peers.iter().any(|p| !loopback(&p.addr))
            || self.peer_listen.is_some_and(|a| !a.ip().is_loopback());
        if off_loopback && self.cluster_secret.is_none() {
            return fail(
                "a peer address is not loopback: set LIVESTOCK_CLUSTER_SECRET (cluster_secret)"
                    .into(),
            );
        }
        if self.cluster_secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return fail("cluster_secret must be at least 16 characters".into());
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms < 2 * self.heartbeat_interval_ms
        {
            return fail(
                "heartbeat_interval_ms must be at least 1 and election_timeout_min_ms at least \
                 twice it"
                    .into(),
            );
        }
        if self.commit_timeout_ms == 0 || self.snapshot_entries == 0 {
            return fail("commit_timeout_ms and snapshot_entries must be at least 1".into());
        }
        Ok(())
    }

    pub fn tokens_configured(&self) -> usize {
        self.admin_tokens.len() + self.client_tokens.len()
    }

    /// The effective configuration as TOML, tokens redacted.
    pub fn to_toml(&self) -> String {
        match toml::to_string(self) {
            Ok(text) => text,
            Err(e) => panic!("a configuration always serializes: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let dir = std::env::temp_dir().join(format!("livestock-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("livestock.toml");
        std::fs::write(&file, "fsync_interval_ms = 5\nconnections_max = 77\n").unwrap();
        let args = ConfigArgs {
            config: Some(file.clone()),
            connections_max: Some(99),
            ..ConfigArgs::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.fsync_interval_ms, 5, "the file over the default");
        assert_eq!(config.connections_max, 99, "the flag over the file");
        assert_eq!(config.headers_max, 64, "the default where nothing is said");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_and_values_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("livestock-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "fsync_interval = 5\n").unwrap();
        assert!(matches!(Config::from_file(&file), Err(ConfigError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
        let mut config = Config { hold_ttl_ms_default: 10, ..Config::default() };
        assert!(config.validate().is_err());
        config.hold_ttl_ms_default = HOLD_TTL_MS_DEFAULT;
        config.listen = "0.0.0.0:8080".parse().unwrap();
        let refused = config.validate().unwrap_err().to_string();
        assert!(refused.contains("--insecure"), "{refused}");
        config.insecure = true;
        assert!(config.validate().is_ok());
        config.admin_tokens = vec![Secret::new("short")];
        assert!(config.validate().is_err());
        config.admin_tokens = Vec::new();
        config.feed_interval_ms = 5;
        let refused = config.validate().unwrap_err().to_string();
        assert!(refused.contains("feed_interval_ms"), "{refused}");
        config.feed_interval_ms = 100;
        config.feed_subscribers_max = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn feed_options_come_from_the_file_and_the_flags() {
        let dir =
            std::env::temp_dir().join(format!("livestock-config-feed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("feed.toml");
        std::fs::write(&file, "feed_interval_ms = 250\nfeed_public = false\n").unwrap();
        let args = ConfigArgs {
            config: Some(file.clone()),
            feed_subscribers_max: Some(7),
            ..ConfigArgs::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.feed_interval_ms, 250);
        assert!(!config.feed_public);
        assert_eq!(config.feed_subscribers_max, 7);
        assert_eq!(Config::default().feed_interval_ms, FEED_INTERVAL_MS_DEFAULT);
        assert!(Config::default().feed_public);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn event_stream_options_come_from_the_file_and_the_flags() {
        let dir =
            std::env::temp_dir().join(format!("livestock-config-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("events.toml");
        std::fs::write(&file, "events_retention_bytes = 0\nevents_subscribers_max = 3\n").unwrap();
        let args = ConfigArgs {
            config: Some(file.clone()),
            events_subscribers_max: Some(9),
            ..ConfigArgs::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.events_retention_bytes, 0);
        assert_eq!(config.events_subscribers_max, 9, "the flag over the file");
        let defaults = Config::default();
        assert_eq!(defaults.events_retention_bytes, EVENTS_RETENTION_BYTES_DEFAULT);
        assert_eq!(defaults.events_subscribers_max, EVENTS_SUBSCRIBERS_MAX_DEFAULT);
        let refused = Config { events_subscribers_max: 0, ..Config::default() }.validate();
        assert!(refused.is_err_and(|e| e.to_string().contains("events_subscribers_max")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_never_print() {
        let config = Config {
            admin_tokens: vec![Secret::new("a-very-secret-admin-token")],
            ..Config::default()
        };
        assert!(!config.to_toml().contains("a-very-secret"));
        assert!(!format!("{config:?}").contains("a-very-secret"));
    }
}
