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
