//! `livestock`: parse the command line and configuration, recover, serve (or verify, or
//! load-test). Nothing else lives here.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use livestock::alloc::AllocatorConfig;
use livestock::clock::SystemClock;
use livestock::config::{Config, ConfigArgs, DurabilityMode, LogFormat};
use livestock::http::admin_client::{self, AdminCall};
use livestock::http::cluster_node::ClusterNode;
use livestock::http::Server;
use livestock::http::ServerOptions;
use livestock::node::{Node, NodeConfig};
use livestock::wal::{self, DirStorage, Durability, WalConfig};
use livestock_core::ids::HoldIdKey;
use livestock_core::limits::RESOLVED_HOLD_RETENTION_MS_DEFAULT;

#[derive(Parser)]
#[command(name = "livestock", version, about = "A flash-sale inventory kernel")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Recover the data directory and serve the HTTP/JSON API. Every option can also be set
    /// in a TOML file (--config) or as LIVESTOCK_<OPTION>; flags win over the environment,
    /// which wins over the file.
    Serve(Box<ConfigArgs>),
    /// Check a data directory offline and print what recovery would do. Writes nothing.
    Verify {
        /// The data directory to check.
        #[arg(long, default_value = "livestock-data")]
        data_dir: PathBuf,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// A cluster's membership and status, through any node's HTTP API (docs/operations.md,
    /// "Running a cluster"). Prints the node's answer; exits 1 if it is an error.
    Cluster(ClusterArgs),
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// The HTTP API (`--listen`) of any node: a follower forwards changes to the leader.
    #[arg(long, default_value = "127.0.0.1:8080", global = true)]
    node: String,
    /// An admin token (needed for changes, and for the status unless it is public).
    #[arg(long, env = "LIVESTOCK_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// How long to wait for the answer: a new node catches up before it votes.
    #[arg(long, default_value_t = 60_000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: ClusterCmd,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Role, leader, term, commit and applied indexes, state digest and members.
    Status,
    /// Add a node: it joins as a learner, catches up, then becomes a voter. Start it first,
    /// with an empty data directory and every member (itself included) in --peers.
    Add {
        /// The new node's --node-id (never the id of a node that was removed).
        #[arg(long)]
        id: u64,
        /// The new node's --peer-listen address.
        #[arg(long)]
        peer_addr: String,
    },
    /// Remove a voter (then stop it). Replacing a dead node: add its replacement, then remove it.
    Remove {
        #[arg(long)]
        id: u64,
    },
    /// Save a backup of the cluster's state: every change acknowledged before it was asked
    /// for. The cluster goes on serving.
    Backup {
        /// Where to write it (a new file; written whole, then renamed into place).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a backup into a new node's empty data directory, offline. Run it for every member
    /// of the new cluster (each its own --data-dir, the same --peers), then start them all with
    /// those --peers.
    Restore {
        /// The backup file (`livestock cluster backup`).
        #[arg(long)]
        from: PathBuf,
        /// The new node's data directory (its raft/ must not exist or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's --node-id.
        #[arg(long, env = "LIVESTOCK_NODE_ID")]
        node_id: u64,
        /// Every member of the new cluster as id=host:port, comma-separated.
        #[arg(long, env = "LIVESTOCK_PEERS", value_delimiter = ',', required = true)]
        peers: Vec<livestock::config::Peer>,
        /// The new cluster's secret: the same as the old cluster's (hold ids are keyed by it).
        #[arg(long, env = "LIVESTOCK_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<livestock::config::Secret>,
    },
}

/// The configuration layers without the flags: the environment over a file.
#[derive(Parser)]
struct CheckArgs {
    #[command(flatten)]
    args: ConfigArgs,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a TOML file (with the environment over it) and print the effective
    /// configuration, tokens redacted.
    Check { file: PathBuf },
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if let Err(e) = getrandom::getrandom(&mut bytes) {
        panic!("no randomness from the operating system: {e}");
    }
    u64::from_le_bytes(bytes)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: journald and log files store the escape codes
    // as they are.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Verify { data_dir } => {
            init_logging(LogFormat::Human);
            verify(&data_dir)
        }
        Cmd::Config(ConfigCmd::Check { file }) => {
            // The file under the environment, as `serve` would see it (flags aside): let clap
            // read the LIVESTOCK_* variables as it does for `serve`.
            let file = file.to_string_lossy().into_owned();
            let args = match CheckArgs::try_parse_from(["livestock", "--config", file.as_str()]) {
                Ok(parsed) => parsed.args,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match Config::load(&args) {
                Ok(config) => {
                    print!("{}", config.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Cluster(args) => cluster(args),
        Cmd::Serve(args) => match Config::load(&args) {
            Ok(config) => {
                init_logging(config.log_format);
                serve(config)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn cluster(args: ClusterArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (call, out) = match args.command {
        ClusterCmd::Status => (AdminCall::Status, None),
        ClusterCmd::Add { id, peer_addr } => (AdminCall::Add { id, peer_addr }, None),
        ClusterCmd::Remove { id } => (AdminCall::Remove { id }, None),
        ClusterCmd::Backup { out } => (AdminCall::Backup, Some(out)),
        ClusterCmd::Restore { from, data_dir, node_id, peers, cluster_secret } => {
            let secret = cluster_secret.as_ref().map(|s| s.expose());
            return runtime.block_on(restore(&from, &data_dir, node_id, &peers, secret));
        }
    };
    let sent = admin_client::send(&args.node, args.token.as_deref(), &call, args.timeout_ms);
    match runtime.block_on(sent) {
        Ok(answer) if answer.status.is_success() => match out {
            None => {
                println!("{}", String::from_utf8_lossy(&answer.body));
                ExitCode::SUCCESS
            }
            Some(out) => match write_new_file(&out, &answer.body) {
                Ok(()) => {
                    println!("backup: {} bytes to {}", answer.body.len(), out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            },
        },
        Ok(answer) => {
            let body = String::from_utf8_lossy(&answer.body);
            eprintln!("error: {} answered {}: {body}", args.node, answer.status);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `bytes` to a temporary name, fsyncs, and renames it to `path` (which must not
/// exist): a backup on disk is whole or absent.
fn write_new_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if path.exists() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it exists"));
    }
    let temp = path.with_extension("partial");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)
}

async fn restore(
    from: &Path,
    data_dir: &Path,
    node_id: u64,
    peers: &[livestock::config::Peer],
    secret: Option<&str>,
) -> ExitCode {
    let backup = match std::fs::read(from) {
        Ok(backup) => backup,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", from.display());
            return ExitCode::FAILURE;
        }
    };
    let peers: Vec<(u64, String)> = peers.iter().map(|p| (p.id, p.addr.clone())).collect();
    let key = livestock::http::cluster_node::cluster_hold_key(secret);
    match livestock::cluster::restore::restore(&backup, data_dir, node_id, &peers, key).await {
        Ok(restored) => {
            println!(
                "restored {} bytes into {}: {} deals, at raft index {:?}",
                restored.bytes,
                data_dir.display(),
                restored.deals,
                restored.index
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify(data_dir: &Path) -> ExitCode {
    if !data_dir.is_dir() {
        eprintln!("error: {} is not a directory", data_dir.display());
        return ExitCode::FAILURE;
    }
    let storage = match DirStorage::open(data_dir) {
        Ok(storage) => storage,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let config = AllocatorConfig {
        hold_id_key: HoldIdKey(0),
        resolved_hold_retention_ms: RESOLVED_HOLD_RETENTION_MS_DEFAULT,
    };
    match wal::recover(&storage, config, HoldIdKey(0), false) {
        Ok(recovered) => {
            let snapshot = recovered.allocator.snapshot();
            let open = snapshot.holds.iter().filter(|h| h.resolved_at_ms.is_none()).count();
            println!("{}", recovered.report);
            println!(
                "state: {} deals, {} holds ({open} open), {} remembered answers",
                snapshot.deals.len(),
                snapshot.holds.len(),
                recovered.replies.len()
            );
            println!("ok: recovery would succeed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            println!("recovery would refuse to start");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    if config.node_id.is_some() {
        return serve_cluster(config);
    }
    let data_dir = config.data_dir.clone();
    let storage = match DirStorage::open(&data_dir) {
        Ok(storage) => Arc::new(storage),
        Err(e) => {
            eprintln!("error: cannot open data directory {}: {e}", data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    // Held until the process exits.
    let _lock = match storage.lock_exclusive() {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("error: cannot lock the data directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.tokens_configured() == 0 {
        // Protected mode (config validation refuses this off loopback without --insecure).
        tracing::warn!(
            listen = %config.listen,
            "no tokens configured: serving without authentication (loopback only, or --insecure)"
        );
    }
    let node_config = NodeConfig {
        allocator: AllocatorConfig {
            hold_id_key: HoldIdKey(0),
            resolved_hold_retention_ms: config.resolved_hold_retention_ms,
        },
        idempotency_window_ms: config.idempotency_window_ms,
        idempotency_keys_max: config.idempotency_keys_max,
    };
    let wal_config = WalConfig {
        durability: match config.durability {
            DurabilityMode::Strict => Durability::Strict,
            DurabilityMode::Relaxed => {
                Durability::Relaxed { fsync_interval_ms: config.fsync_interval_ms }
            }
        },
        segment_bytes_max: config.segment_bytes_max,
        checkpoint_interval_ms: config.checkpoint_interval_ms,
        checkpoint_log_bytes: config.checkpoint_log_bytes,
        idempotency_window_ms: config.idempotency_window_ms,
        retention_bytes: config.events_retention_bytes,
        manual: false,
    };
    let started = std::time::Instant::now();
    let clock = Arc::new(SystemClock::default());
    let key = HoldIdKey(random_u64());
    let (node, report) = match Node::open(node_config, clock, storage, wal_config, key) {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("error: recovery of {} failed: {e}", data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        data_dir = %data_dir.display(),
        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        replayed = report.replayed,
        last_lsn = report.last_lsn,
        "recovered"
    );
    if let Some((file, offset, len)) = &report.torn_tail {
        tracing::warn!(%file, offset, len, "cut a torn log tail (an unacknowledged partial write)");
    }
    let node = Arc::new(node);
    let Some(runtime) = runtime(&config) else { return ExitCode::FAILURE };
    let listen = config.listen;
    let options = ServerOptions::from_config(&config);
    runtime.block_on(async move {
        let server = match Server::start_with(listen, node.clone(), options).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("livestock listening on http://{}", server.local_addr());
        println!("data directory: {}", data_dir.display());
        let poisoned = async {
            match node.wal() {
                Some(wal) => wal.poisoned().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            reason = poisoned => {
                // Give the requests that were waiting a moment to receive their 503, then exit
                // non-zero so a supervisor restarts us into recovery.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                eprintln!("error: the write-ahead log is poisoned ({reason}); exiting for recovery");
                return ExitCode::FAILURE;
            }
            signal = shutdown_signal() => {
                tracing::info!(signal, "shutting down: finishing requests in flight");
            }
        }
        server.shutdown().await;
        match node.close() {
            Ok(()) => {
                tracing::info!("final checkpoint written; bye");
                exit_now(0)
            }
            Err(reason) => {
                eprintln!("error: the log could not be closed cleanly: {reason}");
                exit_now(1)
            }
        }
    })
}

/// The multi-threaded runtime both modes serve on (`worker_threads`, 0 = one per core).
fn runtime(config: &Config) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    match builder.enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// Cluster mode: the replica in `data_dir/raft`, the HTTP API and the peer listener.
fn serve_cluster(config: Config) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        eprintln!("error: cannot create {}: {e}", config.data_dir.display());
        return ExitCode::FAILURE;
    }
    let storage = match DirStorage::open(&config.data_dir) {
        Ok(storage) => storage,
        Err(e) => {
            eprintln!("error: cannot open data directory {}: {e}", config.data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let _lock = match storage.lock_exclusive() {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("error: cannot lock the data directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = runtime(&config) else { return ExitCode::FAILURE };
    runtime.block_on(async move {
        let clock: Arc<dyn livestock::clock::Clock> = match config.clock_skew_ms {
            0 => Arc::new(SystemClock::default()),
            skew_ms => Arc::new(livestock::clock::SkewedClock::new(skew_ms)),
        };
        let cluster = match ClusterNode::start(&config, clock).await {
            Ok(cluster) => cluster,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let node_id = config.node_id.unwrap_or_default();
        println!("livestock listening on http://{}", cluster.server.local_addr());
        println!("cluster node {node_id}; peers reach it at {}", cluster.peer_addr);
        println!("data directory: {}", config.data_dir.display());
        let Some(replica) = cluster.node.replica().cloned() else {
            return ExitCode::FAILURE;
        };
        let stopped = async {
            loop {
                if let Some(why) = replica.stopped() {
                    return why;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            why = stopped => {
                // A storage error stops raft: exit so a supervisor restarts us into recovery.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                eprintln!("error: the replica stopped ({why}); exiting for recovery");
                return ExitCode::FAILURE;
            }
            signal = shutdown_signal() => {
                tracing::info!(signal, "shutting down: finishing requests in flight");
            }
        }
        cluster.shutdown().await;
        tracing::info!("stopped; bye");
        exit_now(0)
    })
}

/// Exits without running destructors: everything is durable by now, and freeing the state
/// (millions of holds and remembered answers after a drop) took 1-2 s of a supervisor's stop
/// timeout for nothing; the kernel takes the memory back at once. Output is flushed first.
fn exit_now(code: i32) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// SIGTERM (a supervisor's stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
