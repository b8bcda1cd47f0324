//! The listener and its connections: the accept loop, the connection bound, hyper's
//! connection settings, graceful shutdown. Each request goes to `exchange.rs`; the expiry
//! reaper (`node/reaper.rs`) and the live feed's publisher (`feed.rs`) run beside the server
//! for as long as it serves.
//!
//! A live-feed answer is handed off: once hyper has flushed its head and first events, the
//! connection's socket is taken back from hyper (which is dropped, with its buffers and its
//! task) and given to the feed's fan-out (`feed_subscriber.rs`), which writes every later
//! event itself. Hence each connection's socket sits behind a [`HandOff`] hyper reads and
//! writes through.

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::exchange::handle_with;
use crate::http::feed;
use crate::http::feed_subscriber::Ticket;
use crate::http::options::ServerOptions;
use crate::metrics::Limit;
use crate::node::{reaper, Node};
use crate::sync::os::Mutex;

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

/// Counts a connection open for as long as it lives (with a feed's fan-out once handed off).
struct ConnectionGuard(Arc<Node>);

/// A connection's socket, shared by hyper (which reads and writes through it) and the task
/// that serves the connection (which takes it back for a live feed), and the feed answer's
/// [`Ticket`] if the connection's request was one. The lock is never contended: hyper and the
/// connection's task are the same task.
struct HandOff {
    stream: Mutex<Option<TcpStream>>,
    /// With the request's version: hyper frames an HTTP/1.1 body in chunks, an HTTP/1.0 one
    /// by the connection's end, and the fan-out must go on alike.
    ticket: Mutex<Option<(Ticket, http::Version)>>,
}

impl HandOff {
    /// The socket and the ticket, once hyper has flushed a feed answer's first events.
    fn take(&self) -> Option<(TcpStream, (Ticket, http::Version))> {
        let mut ticket = self.ticket.lock();
        if !ticket.as_ref().is_some_and(|(t, _)| t.ready()) {
            return None;
        }
        let stream = self.stream.lock().take()?;
        Some((stream, ticket.take()?))
    }
}

/// Hyper's side of a [`HandOff`]: the socket, or an end of file once it has been taken.
struct Io(Arc<HandOff>);

fn gone() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.0.stream.lock().as_mut() {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.0.stream.lock().as_mut() {
            Some(stream) => Pin::new(stream).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.0.stream.lock().as_mut() {
            Some(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Hyper flushes once its buffer is on the socket: a feed answer's ticket learns that its
    /// first events are out.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = match self.0.stream.lock().as_mut() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        };
        if flushed.is_ready() {
            if let Some((ticket, _)) = self.0.ticket.lock().as_ref() {
                ticket.flushed();
            }
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.0.stream.lock().as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

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
                let hand_off = Arc::new(HandOff {
                    stream: Mutex::new(Some(stream)),
                    ticket: Mutex::new(None),
                });
                // Each request's future owns a handle on what it serves: a handle of this
                // connection's own, so that a request writes this connection's reference
                // count, not the node's, which every connection on every core shares.
                let shared = Arc::new((node.clone(), options.clone(), hand_off.clone()));
                let service = service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let (node, options, hand_off) = &*shared;
                        let version = req.version();
                        let mut response = handle_with(node, options, req).await;
                        if let Some(ticket) = response.extensions_mut().remove::<Ticket>() {
                            *hand_off.ticket.lock() = Some((ticket, version));
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(options.header_read_timeout_ms))
                    .max_headers(options.headers_max);
                let io = TokioIo::new(Io(hand_off.clone()));
                let conn = graceful.watch(builder.serve_connection(io, service));
                tokio::spawn(async move {
                    // Served by hyper until it ends, or until a feed answer's first events
                    // are out: then hyper (its buffers, its state) is dropped at the end of
                    // this block and the socket goes to the feed.
                    let taken = {
                        let mut conn = std::pin::pin!(conn);
                        std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
                            Poll::Ready(_) => Poll::Ready(None),
                            Poll::Pending => hand_off.take().map_or(Poll::Pending, |t| Poll::Ready(Some(t))),
                        })
                        .await
                    };
                    match taken {
                        Some((stream, (ticket, version))) => {
                            let chunked = version >= http::Version::HTTP_11;
                            ticket.hand_off(stream, Box::new(guard), chunked);
                        }
                        None => drop(guard),
                    }
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
