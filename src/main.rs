//! `livestock`: parse the command line, build the node, serve. Nothing else lives here.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use livestock::alloc::AllocatorConfig;
use livestock::clock::SystemClock;
use livestock::core::ids::HoldIdKey;
use livestock::http::Server;
use livestock::limits::{
    IDEMPOTENCY_KEYS_MAX_DEFAULT, IDEMPOTENCY_WINDOW_MS_DEFAULT, RESOLVED_HOLD_RETENTION_MS_DEFAULT,
};
use livestock::node::{Node, NodeConfig};

#[derive(Parser)]
#[command(name = "livestock", version, about = "A flash-sale inventory kernel")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP/JSON API. State is kept in memory.
    Serve {
        /// Address to listen on (loopback by default).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve {
            listen,
            idempotency_window_ms,
            idempotency_keys_max,
            resolved_hold_retention_ms,
            worker_threads,
        } => {
            if idempotency_window_ms == 0 {
                eprintln!("error: --idempotency-window-ms must be at least 1");
                return ExitCode::from(2);
            }
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
            let config = NodeConfig {
                allocator: AllocatorConfig {
                    hold_id_key: HoldIdKey(random_u64()),
                    resolved_hold_retention_ms,
                },
                idempotency_window_ms,
                idempotency_keys_max,
            };
            let node = Arc::new(Node::new(config, Arc::new(SystemClock::default())));
            runtime.block_on(async move {
                let server = match Server::start(listen, node).await {
                    Ok(server) => server,
                    Err(e) => {
                        eprintln!("error: cannot listen on {listen}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                println!("livestock listening on http://{}", server.local_addr());
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down: finishing requests in flight");
                server.shutdown().await;
                ExitCode::SUCCESS
            })
        }
    }
}
