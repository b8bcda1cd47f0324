//! `livestock`: parse the command line, recover, serve (or load-test). Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use livestock::alloc::AllocatorConfig;
use livestock::clock::SystemClock;
use livestock::core::ids::HoldIdKey;
use livestock::http::Server;
use livestock::limits::{
    CHECKPOINT_INTERVAL_MS_DEFAULT, CHECKPOINT_LOG_BYTES_DEFAULT, FSYNC_INTERVAL_MS_DEFAULT,
    IDEMPOTENCY_KEYS_MAX_DEFAULT, IDEMPOTENCY_WINDOW_MS_DEFAULT,
    RESOLVED_HOLD_RETENTION_MS_DEFAULT, WAL_SEGMENT_BYTES_MAX_DEFAULT,
};
use livestock::node::{Node, NodeConfig};
use livestock::wal::{self, DirStorage, Durability, WalConfig};

#[derive(Parser)]
#[command(name = "livestock", version, about = "A flash-sale inventory kernel")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Answer after the record is fsynced (no acknowledged change is ever lost).
    Strict,
    /// Answer once the record is queued; fsync every --fsync-interval-ms. A machine crash
    /// (not a process crash) loses at most that interval plus one batch of changes.
    Relaxed,
}

#[derive(clap::Args)]
struct Storage {
    /// Data directory: write-ahead log segments and checkpoints.
    #[arg(long, default_value = "livestock-data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Recover the data directory and serve the HTTP/JSON API.
    Serve {
        /// Address to listen on (loopback by default).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        storage: Storage,
        /// When a change is acknowledged.
        #[arg(long, value_enum, default_value = "strict")]
        durability: DurabilityArg,
        /// Relaxed durability: fsync at least this often, in milliseconds.
        #[arg(long, default_value_t = FSYNC_INTERVAL_MS_DEFAULT)]
        fsync_interval_ms: u64,
        /// Write a checkpoint at least this often while the log grows, in milliseconds.
        #[arg(long, default_value_t = CHECKPOINT_INTERVAL_MS_DEFAULT)]
        checkpoint_interval_ms: u64,
        /// ...and whenever this many log bytes were written since the last one.
        #[arg(long, default_value_t = CHECKPOINT_LOG_BYTES_DEFAULT)]
        checkpoint_log_bytes: u64,
        /// Start a new log segment past this size, in bytes.
        #[arg(long, default_value_t = WAL_SEGMENT_BYTES_MAX_DEFAULT)]
        segment_bytes_max: u64,
        /// How long an Idempotency-Key is remembered, in milliseconds.
        #[arg(long, default_value_t = IDEMPOTENCY_WINDOW_MS_DEFAULT)]
        idempotency_window_ms: u64,
        /// How many Idempotency-Keys are remembered at most; past it, new keys get 503.
        #[arg(long, default_value_t = IDEMPOTENCY_KEYS_MAX_DEFAULT)]
        idempotency_keys_max: usize,
        /// How long resolved holds stay readable, in milliseconds.
        #[arg(long, default_value_t = RESOLVED_HOLD_RETENTION_MS_DEFAULT)]
        resolved_hold_retention_ms: u64,
        /// Worker threads of the runtime (default: one per core).
        #[arg(long)]
        worker_threads: Option<usize>,
    },
    /// Check a data directory offline and print what recovery would do. Writes nothing.
    Verify {
        #[command(flatten)]
        storage: Storage,
    },
    /// Drive a running server over loopback HTTP: open-loop bursts, latency histograms,
    /// verification of its counters, a plot, capacity search.
    Load(Box<livestock::load::LoadArgs>),
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if let Err(e) = getrandom::getrandom(&mut bytes) {
        panic!("no randomness from the operating system: {e}");
    }
    u64::from_le_bytes(bytes)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Cmd::Verify { storage } => verify(&storage.data_dir),
        Cmd::Load(args) => livestock::load::main(*args),
        Cmd::Serve {
            listen,
            storage,
            durability,
            fsync_interval_ms,
            checkpoint_interval_ms,
            checkpoint_log_bytes,
            segment_bytes_max,
            idempotency_window_ms,
            idempotency_keys_max,
            resolved_hold_retention_ms,
            worker_threads,
        } => {
            if idempotency_window_ms == 0 || fsync_interval_ms == 0 || checkpoint_interval_ms == 0 {
                eprintln!("error: intervals and windows must be at least 1 ms");
                return ExitCode::from(2);
            }
            let config = NodeConfig {
                allocator: AllocatorConfig {
                    hold_id_key: HoldIdKey(0),
                    resolved_hold_retention_ms,
                },
                idempotency_window_ms,
                idempotency_keys_max,
            };
            let wal_config = WalConfig {
                durability: match durability {
                    DurabilityArg::Strict => Durability::Strict,
                    DurabilityArg::Relaxed => Durability::Relaxed { fsync_interval_ms },
                },
                segment_bytes_max,
                checkpoint_interval_ms,
                checkpoint_log_bytes,
                idempotency_window_ms,
                manual: false,
            };
            serve(listen, &storage.data_dir, config, wal_config, worker_threads)
        }
    }
}

fn verify(data_dir: &std::path::Path) -> ExitCode {
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

fn serve(
    listen: SocketAddr,
    data_dir: &std::path::Path,
    config: NodeConfig,
    wal_config: WalConfig,
    worker_threads: Option<usize>,
) -> ExitCode {
    let storage = match DirStorage::open(data_dir) {
        Ok(storage) => Arc::new(storage),
        Err(e) => {
            eprintln!("error: cannot open data directory {}: {e}", data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let clock = Arc::new(SystemClock::default());
    let (node, report) =
        match Node::open(config, clock, storage, wal_config, HoldIdKey(random_u64())) {
            Ok(opened) => opened,
            Err(e) => {
                eprintln!("error: recovery of {} failed: {e}", data_dir.display());
                return ExitCode::FAILURE;
            }
        };
    tracing::info!(
        data_dir = %data_dir.display(),
        ms = started.elapsed().as_millis() as u64,
        replayed = report.replayed,
        last_lsn = report.last_lsn,
        "recovered"
    );
    if let Some((file, offset, len)) = &report.torn_tail {
        tracing::warn!(%file, offset, len, "cut a torn log tail (an unacknowledged partial write)");
    }
    let node = Arc::new(node);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::start(listen, node.clone()).await {
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
                ExitCode::SUCCESS
            }
            Err(reason) => {
                eprintln!("error: the log could not be closed cleanly: {reason}");
                ExitCode::FAILURE
            }
        }
    })
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
