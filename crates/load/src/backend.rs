//! What the load is driven against: livestock over HTTP (the default), or a peer of the
//! benchmark in its own protocol (`benches/peers/`): Redis with Lua scripts, PostgreSQL with
//! PL/pgSQL functions. The schedule, the driver, the histograms and the ledger are the same
//! for all of them; only these few calls differ, so a comparison measures the servers, not
//! three different tools.
//!
//! Every backend answers in the API's terms: a refusal carries livestock's error code
//! (`sold_out`, `per_user_limit`, `hold_expired`, ...) with status 409 (404 for an unknown deal
//! or hold), and the counters read back for verification are the deal's
//! `stock = available + held + sold`, so oversell is measured the same way for every system.
//! The peers have no expiry timer of their own: [`Backend::start_reaper`] runs one, on its own
//! connection, at livestock's reaper tick.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use http::Method;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::client::{entry_of, Client, Outcome, Target, Unhealthy};
use crate::ledger::Counters;
use crate::limits::WAIT_RETRY_MS;
use crate::postgres::{PgConn, PgSettings};
use crate::redis::RedisConn;
use crate::waitlist::EntrySeen;

/// Up to this many deals are polled one by one over HTTP; more are read with one list request.
const STOCK_POLL_SINGLY_MAX: usize = 16;

/// Which system `livestock-load` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// livestock's HTTP/JSON API (or the `livestock-ceiling` server).
    Http,
    /// redis-server: Lua scripts loaded with SCRIPT LOAD and called with EVALSHA.
    Redis,
    /// PostgreSQL: one PL/pgSQL function call (one transaction) per operation.
    Postgres,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Http => "http",
            BackendKind::Redis => "redis",
            BackendKind::Postgres => "postgres",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend and where it listens (always loopback): makes connections.
#[derive(Clone, Debug)]
pub struct Backend {
    pub kind: BackendKind,
    /// One server, or (HTTP only) the nodes of one cluster.
    pub targets: Vec<Target>,
    pub timeout: Duration,
    /// Retries of a request no node could serve (HTTP; see [`Client::retry_wait`]).
    pub retries: u32,
    pub pg: PgSettings,
}

impl Backend {
    /// The first target: the only one of a peer.
    pub fn target(&self) -> &Target {
        &self.targets[0]
    }

    /// Several targets: the nodes of a livestock cluster.
    pub fn is_cluster(&self) -> bool {
        self.targets.len() > 1
    }

    /// The targets as `--target` names them.
    pub fn targets_label(&self) -> String {
        self.targets.iter().map(Target::to_string).collect::<Vec<_>>().join(",")
    }

    /// A connection (not yet opened: [`Conn::connect`] opens it, or the first call does).
    pub fn conn(&self) -> Conn {
        self.conn_at(0)
    }

    /// A connection that starts on target `i` (modulo their number): the driver spreads its
    /// connections round-robin.
    pub fn conn_at(&self, i: usize) -> Conn {
        match self.kind {
            BackendKind::Http => {
                Conn::Http(Client::new(&self.targets, i, self.timeout, self.retries))
            }
            BackendKind::Redis => Conn::Redis(RedisConn::new(self.target(), self.timeout)),
            BackendKind::Postgres => {
                Conn::Postgres(Box::new(PgConn::new(self.target(), &self.pg, self.timeout)))
            }
        }
    }

    /// An opened connection that has answered a health check, with the backend's schema or
    /// scripts installed: the admin connection of a run.
    pub async fn admin(&self) -> Result<Conn, String> {
        let mut admin = self.conn();
        admin.health().await.map_err(|u| u.message().to_owned())?;
        match &mut admin {
            Conn::Http(_) => {}
            Conn::Redis(redis) => redis.load_scripts().await?,
            Conn::Postgres(pg) => pg.install_schema().await?,
        }
        Ok(admin)
    }

    /// One look at whether the target answers: a health check, or with several targets, a
    /// leader in the cluster (`GET /v1/cluster` on each in turn until one names a leader).
    async fn answers(&self, conn: &mut Conn) -> Result<(), Unhealthy> {
        let Conn::Http(client) = conn else { return conn.health().await };
        if !self.is_cluster() {
            return client.health().await;
        }
        let mut silence = None;
        for _ in 0..self.targets.len() {
            match client.cluster_leader().await {
                Ok(_) => return Ok(()),
                Err(Unhealthy::Answered(wrong)) => return Err(Unhealthy::Answered(wrong)),
                Err(Unhealthy::Silent(why)) => silence = Some(why),
            }
        }
        Err(Unhealthy::Silent(silence.unwrap_or_default()))
    }

    /// Waits up to `wait` for the target to answer a health check (`GET /healthz`, a redis
    /// PING, a PostgreSQL login and `SELECT 1`), or with several targets for their cluster to
    /// have a leader: a server started a moment ago may not listen yet, a cluster may still be
    /// electing. Says once, on stderr, that it is waiting. Only silence is waited out: a
    /// target that answers wrongly fails at once. A zero `wait` is one try.
    pub async fn wait_until_answering(&self, wait: Duration) -> Result<(), String> {
        let retry = Duration::from_millis(WAIT_RETRY_MS);
        let deadline = Instant::now() + wait;
        let mut conn = self.conn();
        let mut said = false;
        loop {
            // One try never outlasts the wait (nor, with no wait, the request timeout).
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = if wait.is_zero() { self.timeout } else { left.min(self.timeout) };
            let silence = match tokio::time::timeout(budget, self.answers(&mut conn)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Unhealthy::Answered(wrong))) => return Err(wrong),
                Ok(Err(Unhealthy::Silent(silence))) => silence,
                Err(_) => format!(
                    "no answer from {} within {} ms",
                    self.targets_label(),
                    budget.as_millis()
                ),
            };
            if wait.is_zero() {
                return Err(silence);
            }
            if Instant::now() + retry >= deadline {
                let what = if self.is_cluster() { "no cluster leader" } else { "nothing answered" };
                return Err(format!(
                    "{what} at {} ({}) within --wait-ms {} ms: {silence}",
                    self.targets_label(),
                    self.kind,
                    wait.as_millis()
                ));
            }
            if !said {
                said = true;
                let what = if self.is_cluster() { "to have a leader" } else { "to answer" };
                eprintln!(
                    "waiting up to {} ms for {} ({}) {what}...",
                    wait.as_millis(),
                    self.targets_label(),
                    self.kind
                );
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// The peers' expiry timer: expires due holds every `tick`, on a connection of its own,
    /// until the handle is dropped. livestock (HTTP) runs its own reaper: `None`.
    pub async fn start_reaper(&self, tick: Duration) -> Result<Option<Reaper>, String> {
        let task = match self.conn() {
            Conn::Http(_) => return Ok(None),
            Conn::Redis(mut redis) => {
                redis.connect().await?;
                tokio::spawn(async move {
                    let mut interval = tokio::time::interval(tick);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        interval.tick().await;
                        // A full batch means more may be due: go again at once.
                        while redis.expire_due().await.is_ok_and(|n| n >= EXPIRE_BATCH) {}
                    }
                })
            }
            Conn::Postgres(mut pg) => {
                pg.connect().await?;
                tokio::spawn(async move {
                    let mut interval = tokio::time::interval(tick);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        interval.tick().await;
                        while pg.expire_due().await.is_ok_and(|n| n >= EXPIRE_BATCH) {}
                    }
                })
            }
        };
        Ok(Some(Reaper(task)))
    }
}

/// Holds expired by one call of a peer's expiry routine, at most.
pub const EXPIRE_BATCH: u64 = 256;

/// A running expiry timer; dropping it stops it.
pub struct Reaper(JoinHandle<()>);

impl Drop for Reaper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a reserve was answered: the outcome, and the hold's id when one was granted (or the
/// waitlist entry, [`Outcome::Waitlisted`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub outcome: Outcome,
    pub hold_id: Option<String>,
    pub entry: Option<EntrySeen>,
}

/// One connection to the backend, used by one worker at a time.
pub enum Conn {
    Http(Client),
    Redis(RedisConn),
    /// Boxed: a PostgreSQL connection's configuration is three times the size of the others.
    Postgres(Box<PgConn>),
}

impl Conn {
    /// Opens the connection now (so the first measured request does not pay for it).
    pub async fn connect(&mut self) -> Result<(), String> {
        match self {
            Conn::Http(c) => c.connect().await,
            Conn::Redis(c) => c.connect().await,
            Conn::Postgres(c) => c.connect().await,
        }
    }

    /// The index (into the backend's targets) of the node the last attempt went to.
    pub fn last_target(&self) -> usize {
        match self {
            Conn::Http(c) => c.last_target(),
            Conn::Redis(_) | Conn::Postgres(_) => 0,
        }
    }

    /// Ends every attempt by `end` (a request's budget, retries included); HTTP only, the
    /// peers are never retried.
    pub fn set_budget_end(&mut self, end: Option<Instant>) {
        if let Conn::Http(c) = self {
            c.set_budget_end(end);
        }
    }

    /// Whether, and after how long, to send again a request that ended in `outcome` after
    /// `retry` retries ([`Client::retry_wait`]); never for a peer.
    pub fn retry_wait(&self, retry: u32, outcome: &Outcome) -> Option<Duration> {
        match self {
            Conn::Http(c) => c.retry_wait(retry, outcome),
            Conn::Redis(_) | Conn::Postgres(_) => None,
        }
    }

    /// Checks that the server answers.
    pub async fn health(&mut self) -> Result<(), Unhealthy> {
        match self {
            Conn::Http(c) => c.health().await,
            Conn::Redis(c) => c.health().await,
            Conn::Postgres(c) => c.health().await,
        }
    }

    pub async fn create_deal(
        &mut self,
        id: &str,
        stock: u64,
        per_user_limit: Option<u32>,
        hold_ttl_ms: u64,
    ) -> Result<Counters, String> {
        self.create_deal_with(id, stock, per_user_limit, hold_ttl_ms, None).await
    }

    /// [`Conn::create_deal`] with a waitlist (`waitlist_max`, `offer_ttl_ms`): livestock only.
    pub async fn create_deal_with(
        &mut self,
        id: &str,
        stock: u64,
        per_user_limit: Option<u32>,
        hold_ttl_ms: u64,
        waitlist: Option<(u32, u64, Option<u64>)>,
    ) -> Result<Counters, String> {
        if waitlist.is_some() && !matches!(self, Conn::Http(_)) {
            return Err("only livestock has a waitlist".to_owned());
        }
        match self {
            Conn::Http(c) => c.create_deal(id, stock, per_user_limit, hold_ttl_ms, waitlist).await,
            Conn::Redis(c) => c.create_deal(id, stock, per_user_limit, hold_ttl_ms).await,
            Conn::Postgres(c) => c.create_deal(id, stock, per_user_limit, hold_ttl_ms).await,
        }
    }

    /// A deal's draw as revealed: livestock only.
    pub async fn draw(&mut self, id: &str) -> Result<serde_json::Value, String> {
        match self {
            Conn::Http(c) => c.draw(id).await,
            Conn::Redis(_) | Conn::Postgres(_) => Err("only livestock draws".to_owned()),
        }
    }

    /// A deal's counters and per-user limit.
    pub async fn deal(&mut self, id: &str) -> Result<(Counters, Option<u32>), String> {
        match self {
            Conn::Http(c) => c.deal(id).await,
            Conn::Redis(c) => c.deal(id).await,
            Conn::Postgres(c) => c.deal(id).await,
        }
    }

    /// The available units of these deals, summed (`None` if the read failed).
    pub async fn available(&mut self, ids: &[String]) -> Option<u64> {
        match self {
            Conn::Http(c) if ids.len() <= STOCK_POLL_SINGLY_MAX => {
                let mut sum = 0;
                for id in ids {
                    sum += c.deal(id).await.ok()?.0.available;
                }
                Some(sum)
            }
            Conn::Http(c) => {
                let ours: std::collections::HashSet<&str> =
                    ids.iter().map(String::as_str).collect();
                let all = c.deals().await.ok()?;
                Some(
                    all.iter()
                        .filter(|(id, _)| ours.contains(id.as_str()))
                        .map(|(_, c)| c.available)
                        .sum(),
                )
            }
            Conn::Redis(c) => c.available(ids).await,
            Conn::Postgres(c) => c.available(ids).await,
        }
    }

    /// Reserves `qty` units of `deal` for viewer `user` (HTTP: with an idempotency key).
    pub async fn reserve(
        &mut self,
        deal: &str,
        key: &str,
        user: &str,
        qty: u32,
        ttl_ms: u64,
    ) -> Reserved {
        self.reserve_or_wait(deal, key, user, qty, ttl_ms, false).await
    }

    /// [`Conn::reserve`], and with `waitlist` (livestock only) join the deal's waitlist if it
    /// cannot serve the request now: the answer is then [`Outcome::Waitlisted`] with the entry.
    pub async fn reserve_or_wait(
        &mut self,
        deal: &str,
        key: &str,
        user: &str,
        qty: u32,
        ttl_ms: u64,
        waitlist: bool,
    ) -> Reserved {
        match self {
            Conn::Http(c) => {
                let path = format!("/v1/deals/{deal}/reserve");
                let join = if waitlist { r#","waitlist":true"# } else { "" };
                let body = Bytes::from(format!(
                    r#"{{"user_id":"{user}","qty":{qty},"ttl_ms":{ttl_ms}{join}}}"#
                ));
                match c.call(Method::POST, &path, Some(key), body).await {
                    Ok((status, body)) => {
                        let mut outcome = Outcome::of(status, &body);
                        let json = (outcome == Outcome::Ok)
                            .then(|| serde_json::from_slice::<Value>(&body).ok())
                            .flatten();
                        // 202 (a new entry) or 200 (the viewer's own): an entry, not a hold.
                        let entry = json.as_ref().filter(|_| status != 201).and_then(entry_of);
                        if entry.is_some() {
                            outcome = Outcome::Waitlisted;
                        }
                        let hold_id = json
                            .filter(|_| entry.is_none())
                            .and_then(|v| v["hold_id"].as_str().map(str::to_owned));
                        Reserved { outcome, hold_id, entry }
                    }
                    Err(transport) => Reserved { outcome: transport, hold_id: None, entry: None },
                }
            }
            Conn::Redis(c) => c.reserve(deal, user, qty, ttl_ms).await,
            Conn::Postgres(c) => c.reserve(deal, user, qty, ttl_ms).await,
        }
    }

    /// One attempt at reading (or, `cancel`, cancelling with `key`) a waitlist entry; the
    /// peers have none.
    pub async fn entry(
        &mut self,
        entry_id: &str,
        cancel: bool,
        key: Option<&str>,
    ) -> (Outcome, Option<EntrySeen>) {
        match self {
            Conn::Http(c) => c.entry_call(entry_id, cancel, key).await,
            Conn::Redis(_) | Conn::Postgres(_) => (peer_failure("no_waitlist"), None),
        }
    }

    /// Confirms the whole hold (HTTP: with `key` if given).
    pub async fn confirm(&mut self, hold_id: &str, key: Option<&str>) -> Outcome {
        match self {
            Conn::Http(c) => http_outcome(c, &format!("/v1/holds/{hold_id}/confirm"), key).await,
            Conn::Redis(c) => c.resolve(hold_id, true).await,
            Conn::Postgres(c) => c.resolve(hold_id, true).await,
        }
    }

    /// Releases the hold (HTTP: with `key` if given).
    pub async fn release(&mut self, hold_id: &str, key: Option<&str>) -> Outcome {
        match self {
            Conn::Http(c) => http_outcome(c, &format!("/v1/holds/{hold_id}/release"), key).await,
            Conn::Redis(c) => c.resolve(hold_id, false).await,
            Conn::Postgres(c) => c.resolve(hold_id, false).await,
        }
    }
}

async fn http_outcome(client: &mut Client, path: &str, key: Option<&str>) -> Outcome {
    match client.call(Method::POST, path, key, Bytes::new()).await {
        Ok((status, body)) => Outcome::of(status, &body),
        Err(transport) => transport,
    }
}

/// Awaits a peer's call with the request deadline; an error becomes the outcome `failure`
/// names. The caller drops its connection when this is a transport failure, so a late answer
/// is never read as the next request's.
pub async fn within_deadline<T, E>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
    failure: impl FnOnce(&E) -> Outcome,
) -> Result<T, Outcome> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(failure(&e)),
        Err(_) => Err(Outcome::Transport("timeout")),
    }
}

/// A peer's answer to an operation, in the API's terms: `ok`, or a refusal code with the status
/// livestock gives it.
pub fn peer_outcome(code: &str) -> Outcome {
    match code {
        "ok" => Outcome::Ok,
        "unknown_deal" | "unknown_hold" => Outcome::Refused { status: 404, code: code.to_owned() },
        _ => Outcome::Refused { status: 409, code: code.to_owned() },
    }
}

/// A server-side failure of a peer (not a refusal by the rules): counts as an error.
pub fn peer_failure(code: &str) -> Outcome {
    Outcome::Refused { status: 500, code: code.to_owned() }
}

/// Counters from four signed integers as a peer stores them (a negative count, which only a
/// broken peer produces, reads as 0; held and sold still show the oversell).
pub fn counters_from(stock: i64, available: i64, held: i64, sold: i64) -> Counters {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Counters { stock: u(stock), available: u(available), held: u(held), sold: u(sold) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_codes_map_to_the_api_statuses() {
        assert_eq!(peer_outcome("ok"), Outcome::Ok);
        for code in ["sold_out", "insufficient_stock", "per_user_limit", "hold_expired"] {
            let outcome = peer_outcome(code);
            assert_eq!(outcome.label(), code);
            assert!(!outcome.is_error(), "{code} is the rules at work, not an error");
        }
        assert_eq!(
            peer_outcome("unknown_hold"),
            Outcome::Refused { status: 404, code: "unknown_hold".into() }
        );
        assert!(peer_outcome("unknown_deal").is_error());
        assert!(peer_failure("deadlock_detected").is_error());
    }

    #[test]
    fn negative_peer_counters_read_as_zero() {
        let c = counters_from(10, -2, 7, 5);
        assert_eq!(c, Counters { stock: 10, available: 0, held: 7, sold: 5 });
        assert_eq!((c.held + c.sold).saturating_sub(c.stock), 2, "the oversell still shows");
    }

    #[test]
    fn backends_are_named() {
        let names: Vec<&str> = [BackendKind::Http, BackendKind::Redis, BackendKind::Postgres]
            .map(|b| b.as_str())
            .into();
        assert_eq!(names, ["http", "redis", "postgres"]);
    }
}
