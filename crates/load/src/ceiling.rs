//! `livestock-ceiling`: the ceiling of the peer benchmark (`benches/peers/`). A bare
//! hyper server, on the same tokio runtime settings and hyper connection settings as `serve`,
//! that reads each request whole and answers every POST with one fixed 201 JSON body shaped
//! like a hold, and every GET with a fixed deal. No allocator, no log, no idempotency: what is
//! left is the HTTP stack and the runtime, the most any HTTP server on this machine could
//! serve for the same requests from the same client.
//!
//! Its answers are fixed, so a load run against it verifies nothing: its verification is not a
//! result (the benchmark reports it as n/a).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use livestock::config::Config;

/// The answer to every POST: a hold as `POST /v1/deals/{id}/reserve` returns it, with the deal
/// counters `POST /v1/deals` returns (all zero), so the load tool's set-up reads it too.
pub const HOLD_BODY: &str = concat!(
    r#"{"hold_id":"h0000000000000000","deal_id":"ceiling","user_id":"v0","qty":1,"#,
    r#""state":"held","confirmed_qty":0,"created_at":"2026-01-01T00:00:00.000Z","#,
    r#""expires_at":"2026-01-01T00:00:05.000Z","resolved_at":null,"#,
    r#""stock":0,"available":0,"held":0,"sold":0}"#
);

/// The answer to every GET: a deal with zero counters.
pub const DEAL_BODY: &str = concat!(
    r#"{"id":"ceiling","stream_id":null,"state":"open","stock":0,"available":0,"held":0,"#,
    r#""sold":0,"per_user_limit":null,"hold_ttl_ms":5000,"deals":[]}"#
);

/// `livestock-ceiling`: the bare-hyper ceiling of the peer benchmark.
#[derive(clap::Args, Clone, Debug)]
pub struct CeilingArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Worker threads of the runtime, as `serve --worker-threads` (0: one per core it may use).
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
}

async fn answer(req: Request<Incoming>, body_bytes_max: usize) -> Response<Full<Bytes>> {
    let (status, body) = if req.method() == Method::POST {
        (StatusCode::CREATED, HOLD_BODY)
    } else {
        (StatusCode::OK, DEAL_BODY)
    };
    // Read the request whole, as livestock does before it answers.
    if Limited::new(req.into_body(), body_bytes_max).collect().await.is_err() {
        return Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
    }
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Serves `listener` until the task is dropped.
pub(crate) async fn run(listener: TcpListener, config: Config) {
    let body_bytes_max = config.body_bytes_max;
    loop {
        let Ok((stream, _peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let service = service_fn(move |req: Request<Incoming>| async move {
            Ok::<_, Infallible>(answer(req, body_bytes_max).await)
        });
        // The connection settings of `serve` (src/http/server.rs).
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
            .max_headers(config.headers_max);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Serves until SIGTERM or SIGINT.
pub fn main(args: CeilingArgs) -> ExitCode {
    if !args.listen.ip().is_loopback() {
        eprintln!("error: the ceiling listens on loopback only, not {}", args.listen);
        return ExitCode::from(2);
    }
    // The runtime `serve` builds (src/main.rs).
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        runtime.worker_threads(args.worker_threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map_or(args.listen, |a| a);
        println!("livestock-ceiling listening on http://{addr}");
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    eprintln!("error: cannot watch SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            () = run(listener, Config::default()) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, BackendKind};
    use crate::client::{Outcome, Target};
    use crate::postgres::PgSettings;
    use serde_json::Value;

    #[tokio::test]
    async fn answers_the_load_tools_calls_with_its_fixed_bodies() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(run(listener, Config::default()));
        let backend = Backend {
            kind: BackendKind::Http,
            targets: vec![Target::loopback(addr).unwrap()],
            timeout: Duration::from_secs(5),
            retries: 0,
            pg: PgSettings { user: String::new(), dbname: String::new() },
        };
        let mut admin = backend.admin().await.expect("GET /healthz answers");
        let created = admin.create_deal("d", 10, Some(1), 1_000).await.expect("a deal, read");
        assert_eq!(created.stock, 0, "the counters are fixed at zero");
        let mut conn = backend.conn();
        let reserved = conn.reserve("d", "key-1", "v1", 1, 1_000).await;
        assert_eq!(reserved.outcome, Outcome::Ok);
        assert_eq!(reserved.hold_id.as_deref(), Some("h0000000000000000"));
        assert_eq!(conn.confirm("h0000000000000000", None).await, Outcome::Ok);
        assert_eq!(conn.available(&["d".to_owned()]).await, Some(0));
        server.abort();
    }

    #[test]
    fn the_fixed_bodies_read_as_a_hold_and_a_deal() {
        let hold: Value = serde_json::from_str(HOLD_BODY).unwrap();
        assert!(hold["hold_id"].is_string() && hold["state"] == "held");
        let deal: Value = serde_json::from_str(DEAL_BODY).unwrap();
        for body in [&hold, &deal] {
            for counter in ["stock", "available", "held", "sold"] {
                assert_eq!(body[counter], 0, "{counter}: the load tool's set-up reads counters");
            }
        }
        assert!(deal["deals"].is_array(), "a deal list too, for the stock poll");
    }
}
