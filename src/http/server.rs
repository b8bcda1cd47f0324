//! The listener and its connections: the accept loop, the connection bound, hyper's
//! connection settings, graceful shutdown. Each request goes to `exchange.rs`; the expiry
//! reaper (`node/reaper.rs`) and the live feed's publisher (`feed.rs`) run beside the server
//! for as long as it serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::exchange::handle_with;
use crate::http::feed;
use crate::http::options::ServerOptions;
use crate::metrics::Limit;
use crate::node::{reaper, Node};

/// A running server: its address, and the handle that stops it.
pub struct Server {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts serving `node` with the default
    /// options, plus its reaper.
    pub async fn start(addr: SocketAddr, node: Arc<Node>) -> std::io::Result<Server> {
        Server::start_with(addr, node, ServerOptions::default()).await
    }

    pub async fn start_with(
        addr: SocketAddr,
        node: Arc<Node>,
        options: ServerOptions,
    ) -> std::io::Result<Server> {
        let listener = listen(addr)?;
        let local_addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        options.feed.open();
        options.events.open();
        let task = tokio::spawn(run(listener, node, Arc::new(options), stop));
        Ok(Server { local_addr, shutdown, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish, ends the live feeds and event streams,
    /// and returns when all connections are closed.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// A listening socket with a deep accept queue: a livestream drop opens thousands of
/// connections at once, and the default backlog (128) makes the kernel drop handshakes, which
/// clients retry only after a second.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Counts a connection open for as long as it lives.
struct ConnectionGuard(Arc<Node>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.metrics().connection_closed();
    }
}

async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    options: Arc<ServerOptions>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let reaper = tokio::spawn(reaper::run(node.clone(), stop.clone()));
    // It sees `stop` too and closes every feed, so that the graceful shutdown below, which
    // waits for each connection's answer to end, does not wait forever on an open feed.
    let publisher = tokio::spawn(feed::run(options.feed.clone(), node.clone(), stop.clone()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                // Past the bound, close at once: an idle connection costs a task and buffers,
                // and a flood of them must not grow memory without limit.
                let open = usize::try_from(node.metrics().connections_open()).unwrap_or(usize::MAX);
                if open >= options.connections_max {
                    node.metrics().rejected(Limit::Connections);
                    drop(stream);
                    continue;
                }
                node.metrics().connection_opened();
                let guard = ConnectionGuard(node.clone());
                let _ = stream.set_nodelay(true);
                // Each request's future owns a handle on what it serves: a handle of this
                // connection's own, so that a request writes this connection's reference
                // count, not the node's, which every connection on every core shares.
                let shared = Arc::new((node.clone(), options.clone()));
                let service = service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let (node, options) = &*shared;
                        Ok::<_, Infallible>(handle_with(node, options, req).await)
                    }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(options.header_read_timeout_ms))
                    .max_headers(options.headers_max);
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(guard);
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    // Event streams wait for the log, not for the feed's publisher: end them here, or the
    // graceful shutdown below would wait on them forever.
    options.events.close();
    graceful.shutdown().await;
    let _ = reaper.await;
    let _ = publisher.await;
}
