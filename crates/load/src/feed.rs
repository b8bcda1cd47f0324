//! Live-feed subscribers (`--feed-subscribers N`): N Server-Sent Events connections to
//! `GET /v1/deals/{id}/live` of the driven deals, opened before the first arrival and read
//! through the run, and what they saw: events per subscriber, connection errors, and the lag
//! of the `sold_out` event behind the tool's own first `sold_out` answer.
//!
//! Why that lag: the events carry no server timestamp, so the earliest instant the tool itself
//! knows a deal sold out is the answer of its first reserve refused with `sold_out`. A
//! subscriber's lag is from that answer to its own `stock` event with `state` `sold_out`, on the
//! same clock. It includes the publisher's tick (10 ms), the fan-out to every subscriber and
//! the tool reading thousands of sockets on a shared core, as a viewer's app would feel it.
//! An event may even come first (the deal was sold out before the next reserve was refused):
//! that subscriber's lag is counted as 0 and as `ahead_of_client`.
//!
//! Ordinary counter updates are not timed: an event's `held + sold` is a count the client's
//! ledger cannot place in time (its acknowledgements race with the server's other answers), so
//! a lag computed from it would be a guess. Events are counted instead.
//!
//! The parser ([`SseParser`]) is pure; the rest is the shell that opens and reads sockets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::client::Target;
use crate::limits::{FEED_LINE_BYTES_MAX, FEED_OPENS_CONCURRENT};
use crate::recorder::{histogram, Latency};

/// One dispatched Server-Sent Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<u64>,
    /// `message` unless the event named itself (`event: stock`).
    pub event: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// The text/event-stream grammar, fed in arbitrary chunks: lines end with `\n` (a `\r` before
/// it is dropped), `field: value` sets a field, a line starting with `:` is a comment, a blank
/// line dispatches the event if it has data. Only what the livestock feed sends is kept
/// (`id`, `event`, `data`); `retry` and unknown fields are ignored, as the standard says.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    id: Option<u64>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Takes the next bytes of the stream, calling `dispatch` for each complete event. A line
    /// longer than [`FEED_LINE_BYTES_MAX`] or not UTF-8 is an error: the stream is broken.
    pub fn push(&mut self, bytes: &[u8], mut dispatch: impl FnMut(SseEvent)) -> Result<(), String> {
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() == FEED_LINE_BYTES_MAX {
                    return Err(format!(
                        "a line of the stream is over {FEED_LINE_BYTES_MAX} bytes"
                    ));
                }
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8(line).map_err(|_| "a line is not UTF-8".to_owned())?;
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    let event = self.event.take().unwrap_or_else(|| "message".to_owned());
                    dispatch(SseEvent { id: self.id, event, data });
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                // The last event id persists across events, as in a browser's EventSource.
                "id" => self.id = value.parse().ok(),
                "event" => self.event = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        Ok(())
    }
}

/// The `data` of a `stock` event.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StockEvent {
    pub deal_id: String,
    pub state: String,
    pub available: u64,
    pub held: u64,
    pub sold: u64,
    pub waiting: u64,
}

/// What one subscriber saw, written by its task and read at the end.
#[derive(Debug)]
struct Seen {
    deal: usize,
    /// `stock` events of its deal.
    events: AtomicU64,
    /// µs from [`Subscribers::origin`] to its first `sold_out` event; `u64::MAX`: none yet.
    sold_out_us: AtomicU64,
    /// The stream failed (could not open, broke, or ended before the run did).
    failed: AtomicBool,
}

/// The open subscribers of a run.
pub struct Subscribers {
    origin: Instant,
    seen: Vec<Arc<Seen>>,
    tasks: Vec<JoinHandle<()>>,
    /// Why the first failed subscriber failed, for the report.
    first_error: Arc<parking_lot::Mutex<Option<String>>>,
}

/// Opens `n` subscribers spread over `deal_ids` (subscriber *i* follows deal *i* mod the
/// deals) and returns once each has its first event or has failed, so the run's arrivals
/// start with every feed in place. A failure is not a set-up error: it is counted, and fails
/// the verification.
pub async fn open(
    target: &Target,
    deal_ids: &[String],
    n: usize,
    timeout: Duration,
) -> Subscribers {
    let origin = Instant::now();
    let opening = Arc::new(Semaphore::new(FEED_OPENS_CONCURRENT));
    let first_error = Arc::new(parking_lot::Mutex::new(None));
    let mut seen = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    let mut ready = Vec::with_capacity(n);
    for i in 0..n {
        let deal = i % deal_ids.len().max(1);
        let Some(deal_id) = deal_ids.get(deal) else { break };
        let one = Arc::new(Seen {
            deal,
            events: AtomicU64::new(0),
            sold_out_us: AtomicU64::new(u64::MAX),
            failed: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let follow = Follow {
            target: target.clone(),
            path: format!("/v1/deals/{deal_id}/live"),
            deal_id: deal_id.clone(),
            seen: one.clone(),
            origin,
            timeout,
        };
        let (opening, first_error) = (opening.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(why) = follow.run(opening, ready_tx).await {
                follow.seen.failed.store(true, Ordering::Relaxed);
                first_error.lock().get_or_insert(why);
            }
        }));
        seen.push(one);
        ready.push(ready_rx);
    }
    for ready in ready {
        // A dropped sender is a subscriber that failed before its first event: counted.
        let _ = ready.await;
    }
    Subscribers { origin, seen, tasks, first_error }
}

/// One subscriber's connection.
struct Follow {
    target: Target,
    path: String,
    deal_id: String,
    seen: Arc<Seen>,
    origin: Instant,
    timeout: Duration,
}

impl Follow {
    async fn run(
        &self,
        opening: Arc<Semaphore>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), String> {
        let permit = opening.acquire_owned().await.map_err(|_| "closed".to_owned())?;
        let opened = async {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .map_err(|e| format!("connect to {}: {e} (ulimit -n?)", self.target.addr))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let request = self
                .target
                .request(Method::GET, &self.path)
                .header(http::header::ACCEPT, "text/event-stream")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("GET {}: {e}", self.path))?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("GET {}: status {}", self.path, response.status()));
            }
            Ok::<_, String>(response.into_body())
        };
        let mut body = tokio::time::timeout(self.timeout, opened)
            .await
            .map_err(|_| format!("GET {}: no answer within the request timeout", self.path))??;
        let mut parser = SseParser::default();
        let (mut permit, mut ready) = (Some(permit), Some(ready));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the stream of {} broke: {e}", self.path))?;
            let Ok(bytes) = frame.into_data() else { continue };
            let at_us = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
            let mut bad = None;
            parser.push(&bytes, |event| {
                if event.event != "stock" {
                    return;
                }
                match serde_json::from_str::<StockEvent>(&event.data) {
                    Ok(stock) if stock.deal_id == self.deal_id => {
                        self.seen.events.fetch_add(1, Ordering::Relaxed);
                        if stock.state == "sold_out" {
                            // Only the first: a deal back in stock may sell out again.
                            let _ = self.seen.sold_out_us.compare_exchange(
                                u64::MAX,
                                at_us,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                    }
                    Ok(stock) => {
                        bad = Some(format!("an event of {} on {}", stock.deal_id, self.path))
                    }
                    Err(e) => bad = Some(format!("an event's data is not a stock: {e}")),
                }
            })?;
            if let Some(why) = bad {
                return Err(why);
            }
            if self.seen.events.load(Ordering::Relaxed) > 0 {
                // Open: the next subscriber may start opening, and the run may start.
                permit.take();
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
        }
        // The server ends a deal's stream only when the deal ends or it stops: during a run
        // neither should happen.
        Err(format!("the stream of {} ended during the run", self.path))
    }
}

/// What the subscribers saw, in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FeedReport {
    pub subscribers: usize,
    /// Subscribers that could not open, or whose stream broke or ended during the run.
    pub connection_errors: usize,
    pub first_error: Option<String>,
    /// `stock` events received per subscriber over the run (the first, on connect, included).
    pub events_min: u64,
    pub events_mean: f64,
    pub events_max: u64,
    /// Subscribers of deals the tool saw sell out (a reserve answered `sold_out`).
    pub sold_out_expected: usize,
    /// Of those, subscribers that never received a `sold_out` event (must be 0).
    pub sold_out_missed: usize,
    /// Of those, subscribers whose `sold_out` event came before the tool's first `sold_out`
    /// answer (their lag counts as 0).
    pub ahead_of_client: usize,
    /// From the tool's first `sold_out` answer for the deal to each subscriber's first
    /// `sold_out` event, µs.
    pub sold_out_lag: Latency,
    /// The server's resident memory (`--server-pid`), KiB: before the subscribers, with every
    /// subscriber open (before the first arrival), and at the end of the run.
    pub server_rss_kib: Option<ServerRss>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServerRss {
    pub before_kib: u64,
    pub subscribed_kib: u64,
    pub end_kib: u64,
    /// `(subscribed - before) / subscribers`: a subscriber with its connection, at rest.
    pub per_subscriber_kib: f64,
    /// `(end - before) / subscribers`: the same after the drop's events went through.
    pub per_subscriber_end_kib: f64,
}

impl ServerRss {
    /// The readings around `subscribers` subscribers.
    pub fn of(before_kib: u64, subscribed_kib: u64, end_kib: u64, subscribers: usize) -> ServerRss {
        let per = |after: u64| {
            let n = crate::limits::exact_f64(subscribers.max(1) as u64);
            let grown = crate::limits::exact_f64(after.saturating_sub(before_kib));
            (grown / n * 100.0).round() / 100.0
        };
        ServerRss {
            before_kib,
            subscribed_kib,
            end_kib,
            per_subscriber_kib: per(subscribed_kib),
            per_subscriber_end_kib: per(end_kib),
        }
    }
}

/// A process's resident set, KiB, from `/proc/PID/status` (Linux).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("--server-pid {pid}: cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .ok_or_else(|| format!("--server-pid {pid}: no VmRSS in /proc/{pid}/status"))
}

impl Subscribers {
    /// Stops every subscriber and sums up what they saw. `sold_out_at[d]` is the instant the
    /// tool first got a `sold_out` answer for deal `d`, if it did.
    pub fn finish(self, sold_out_at: &[Option<Instant>]) -> FeedReport {
        for task in &self.tasks {
            task.abort();
        }
        let mut lag = histogram();
        let (mut expected, mut missed, mut ahead, mut errors) = (0, 0, 0, 0);
        let (mut events_min, mut events_max, mut events_sum) = (u64::MAX, 0, 0u64);
        for seen in &self.seen {
            let events = seen.events.load(Ordering::Relaxed);
            events_min = events_min.min(events);
            events_max = events_max.max(events);
            events_sum += events;
            errors += usize::from(seen.failed.load(Ordering::Relaxed));
            let Some(Some(reference)) = sold_out_at.get(seen.deal) else { continue };
            expected += 1;
            let at_us = seen.sold_out_us.load(Ordering::Relaxed);
            if at_us == u64::MAX {
                missed += 1;
                continue;
            }
            let at = self.origin + Duration::from_micros(at_us);
            let lag_us = match at.checked_duration_since(*reference) {
                Some(lag) => u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
                None => {
                    ahead += 1;
                    0
                }
            };
            lag.saturating_record(lag_us.max(1));
        }
        let n = self.seen.len();
        FeedReport {
            subscribers: n,
            connection_errors: errors,
            first_error: self.first_error.lock().clone(),
            events_min: if n == 0 { 0 } else { events_min },
            events_mean: if n == 0 {
                0.0
            } else {
                (crate::limits::exact_f64(events_sum) / crate::limits::exact_f64(n as u64) * 10.0)
                    .round()
                    / 10.0
            },
            events_max,
            sold_out_expected: expected,
            sold_out_missed: missed,
            ahead_of_client: ahead,
            sold_out_lag: Latency::of(&lag),
            server_rss_kib: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.push(chunk.as_bytes(), |e| events.push(e)).expect("a valid stream");
        }
        events
    }

    const STOCK: &str = "id: 7\nevent: stock\ndata: {\"deal_id\":\"d1\",\"state\":\"sold_out\",\
                         \"available\":0,\"held\":3,\"sold\":2,\"waiting\":0}\n\n";

    #[test]
    fn a_stock_event_parses_whole_or_split_at_any_byte() {
        let whole = parse(&[STOCK]);
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].id, Some(7));
        assert_eq!(whole[0].event, "stock");
        let stock: StockEvent = serde_json::from_str(&whole[0].data).expect("JSON");
        assert_eq!(stock.state, "sold_out");
        assert_eq!((stock.available, stock.held, stock.sold, stock.waiting), (0, 3, 2, 0));
        for cut in 0..STOCK.len() {
            assert_eq!(parse(&[&STOCK[..cut], &STOCK[cut..]]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn comments_crlf_multiline_data_and_unknown_fields() {
        let events =
            parse(&[": keep-alive\r\nretry: 1000\r\nfoo: bar\r\ndata: a\r\ndata:b\r\n\r\n"]);
        assert_eq!(
            events,
            vec![SseEvent { id: None, event: "message".to_owned(), data: "a\nb".to_owned() }]
        );
    }

    #[test]
    fn a_blank_line_without_data_dispatches_nothing_and_ids_persist() {
        let events = parse(&["id: 3\nevent: stock\n\n", "data: x\n\n"]);
        assert_eq!(
            events,
            vec![SseEvent { id: Some(3), event: "message".to_owned(), data: "x".to_owned() }]
        );
    }

    #[test]
    fn an_endless_line_is_an_error_not_a_buffer() {
        let mut parser = SseParser::default();
        let long = vec![b'x'; FEED_LINE_BYTES_MAX + 1];
        assert!(parser.push(&long, |_| {}).is_err());
        let mut parser = SseParser::default();
        assert!(parser.push(&[0xff, b'\n'], |_| {}).is_err(), "not UTF-8");
    }
}
