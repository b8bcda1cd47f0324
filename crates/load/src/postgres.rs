//! The PostgreSQL peer: livestock's operations as PL/pgSQL functions (`peers/postgres.sql`),
//! each called through a prepared statement, so an operation is one round trip and one
//! transaction: reserve is `UPDATE deals SET available = available - $q ... WHERE available >=
//! $q` plus a hold row (and the per-user count), committed with the server's
//! `synchronous_commit` (set where it is started, `benches/peers/`).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

use crate::backend::{
    counters_from, peer_failure, peer_outcome, within_deadline, Reserved, EXPIRE_BATCH,
};
use crate::client::{Outcome, Target, Unhealthy};
use crate::ledger::Counters;

/// The schema and the functions; every statement is idempotent.
pub const SCHEMA_SQL: &str = include_str!("peers/postgres.sql");

/// The SQLSTATE the functions raise for a refusal that must roll back their writes; the
/// message is the refusal's code.
const REFUSAL_SQLSTATE: &str = "LS409";

const RESERVE_SQL: &str = "SELECT code, hold_id FROM ls_reserve($1, $2, $3, $4)";
const RESOLVE_SQL: &str = "SELECT ls_resolve($1, $2)";
const EXPIRE_SQL: &str = "SELECT ls_expire($1)";

/// Who to log in as (trust authentication on loopback, as `benches/peers/` sets it up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgSettings {
    pub user: String,
    pub dbname: String,
}

struct Statements {
    reserve: Statement,
    resolve: Statement,
    expire: Statement,
}

struct Live {
    // Shared with the call in flight, so a call's future does not borrow the connection.
    client: Arc<Client>,
    driver: JoinHandle<()>,
    statements: Option<Statements>,
}

impl Drop for Live {
    fn drop(&mut self) {
        // Closes the socket; the server rolls back a transaction still open on it.
        self.driver.abort();
    }
}

/// One connection to PostgreSQL.
pub struct PgConn {
    config: tokio_postgres::Config,
    timeout: Duration,
    live: Option<Live>,
}

/// How a failed call counts: a refusal raised by a function is the rules at work; any other
/// server error is an error (`pg_{sqlstate}`: a deadlock would show as `pg_40P01`); no answer
/// is a transport failure.
fn failure(e: &tokio_postgres::Error) -> Outcome {
    match e.as_db_error() {
        Some(db) if db.code().code() == REFUSAL_SQLSTATE => peer_outcome(db.message()),
        Some(db) => peer_failure(&format!("pg_{}", db.code().code())),
        None => Outcome::Transport("io"),
    }
}

impl PgConn {
    pub fn new(target: &Target, settings: &PgSettings, timeout: Duration) -> PgConn {
        let mut config = tokio_postgres::Config::new();
        config
            .hostaddr(target.addr.ip())
            .port(target.addr.port())
            .user(&settings.user)
            .dbname(&settings.dbname)
            .application_name("livestock-load")
            .connect_timeout(timeout);
        PgConn { config, timeout, live: None }
    }

    async fn open(&mut self) -> Result<&mut Live, Outcome> {
        if self.live.as_ref().is_some_and(|l| l.client.is_closed()) {
            self.live = None;
        }
        if self.live.is_none() {
            let (client, connection) =
                tokio::time::timeout(self.timeout, self.config.connect(NoTls))
                    .await
                    .map_err(|_| Outcome::Transport("timeout"))?
                    .map_err(|_| Outcome::Transport("connect"))?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            self.live = Some(Live { client: Arc::new(client), driver, statements: None });
        }
        self.live.as_mut().ok_or(Outcome::Transport("connect"))
    }

    /// The open connection with its statements prepared (the functions must exist).
    async fn prepared(&mut self) -> Result<(&Arc<Client>, &Statements), Outcome> {
        let timeout = self.timeout;
        let live = self.open().await?;
        if live.statements.is_none() {
            let prepare = async {
                let statements = Statements {
                    reserve: live.client.prepare(RESERVE_SQL).await?,
                    resolve: live.client.prepare(RESOLVE_SQL).await?,
                    expire: live.client.prepare(EXPIRE_SQL).await?,
                };
                // Warm the new backend: each compiles a PL/pgSQL function on its first call.
                // These calls are refused at their first statement (no such deal or hold) and
                // write nothing; the measured requests then find the functions compiled, as
                // on the long-lived connections of a real pool.
                let (none, zero) = ("", 0i64);
                live.client.query_one(&statements.reserve, &[&none, &none, &1i32, &zero]).await?;
                live.client.query_one(&statements.resolve, &[&zero, &false]).await?;
                Ok::<_, tokio_postgres::Error>(statements)
            };
            let statements = match tokio::time::timeout(timeout, prepare).await {
                Ok(Ok(statements)) => statements,
                Ok(Err(e)) => return Err(failure(&e)),
                Err(_) => return Err(Outcome::Transport("timeout")),
            };
            live.statements = Some(statements);
        }
        match &live.statements {
            Some(statements) => Ok((&live.client, statements)),
            None => Err(Outcome::Transport("connect")),
        }
    }

    /// Awaits `call` with the deadline; on a transport failure the connection is dropped, so
    /// a late answer is never read as the next request's.
    async fn finish<T>(
        &mut self,
        call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Outcome> {
        let result = within_deadline(self.timeout, call, failure).await;
        if let Err(Outcome::Transport(_)) = result {
            self.live = None;
        }
        result
    }

    /// Opens the connection and prepares the statements.
    pub async fn connect(&mut self) -> Result<(), String> {
        self.prepared()
            .await
            .map(|_| ())
            .map_err(|o| format!("cannot connect to postgres: {}", o.label()))
    }

    /// Checks that PostgreSQL accepts the connection and answers `SELECT 1`. A refused login
    /// counts as no answer: a server that is still starting refuses logins too.
    pub async fn health(&mut self) -> Result<(), Unhealthy> {
        let live = self.open().await.map_err(|o| {
            Unhealthy::Silent(format!(
                "cannot connect to postgres ({}); is the server running?",
                o.label()
            ))
        })?;
        let client = Arc::clone(&live.client);
        self.finish(async move { client.simple_query("SELECT 1").await }).await.map(|_| ()).map_err(
            |o| {
                let message = format!("postgres does not answer SELECT 1: {}", o.label());
                match o {
                    Outcome::Transport(_) => Unhealthy::Silent(message),
                    _ => Unhealthy::Answered(message),
                }
            },
        )
    }

    /// Creates the tables and functions (idempotent).
    pub async fn install_schema(&mut self) -> Result<(), String> {
        let live = self.open().await.map_err(|o| format!("postgres: {}", o.label()))?;
        // Quiet: `IF NOT EXISTS` says "already exists, skipping" for every table otherwise.
        live.client
            .batch_execute(&format!("SET client_min_messages = warning;\n{SCHEMA_SQL}"))
            .await
            .map_err(|e| format!("postgres: cannot install the schema: {e}"))
    }

    async fn client(&mut self) -> Result<Arc<Client>, String> {
        self.open()
            .await
            .map(|live| Arc::clone(&live.client))
            .map_err(|o| format!("postgres: {}", o.label()))
    }

    pub async fn create_deal(
        &mut self,
        id: &str,
        stock: u64,
        per_user_limit: Option<u32>,
        hold_ttl_ms: u64,
    ) -> Result<Counters, String> {
        let client = self.client().await?;
        let stock = i64::try_from(stock).map_err(|_| "stock out of range".to_owned())?;
        let limit = per_user_limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX));
        let ttl = i64::try_from(hold_ttl_ms).unwrap_or(i64::MAX);
        let row = client
            .query_one(
                "INSERT INTO deals (id, stock, available, per_user_limit, hold_ttl_ms) \
                 VALUES ($1, $2, $2, $3, $4) RETURNING stock, available, held, sold",
                &[&id, &stock, &limit, &ttl],
            )
            .await
            .map_err(|e| format!("postgres: cannot create deal {id}: {e}"))?;
        Ok(counters_from(row.get(0), row.get(1), row.get(2), row.get(3)))
    }

    pub async fn deal(&mut self, id: &str) -> Result<(Counters, Option<u32>), String> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT stock, available, held, sold, per_user_limit FROM deals WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|e| format!("postgres: cannot read deal {id}: {e}"))?
            .ok_or_else(|| format!("postgres: no deal {id}"))?;
        let limit: Option<i32> = row.get(4);
        Ok((
            counters_from(row.get(0), row.get(1), row.get(2), row.get(3)),
            limit.and_then(|l| u32::try_from(l).ok()),
        ))
    }

    pub async fn available(&mut self, ids: &[String]) -> Option<u64> {
        let client = self.client().await.ok()?;
        let ids = ids.to_vec();
        let row = self
            .finish(async move {
                client
                    .query_one(
                        "SELECT coalesce(sum(available), 0)::bigint FROM deals WHERE id = ANY($1)",
                        &[&ids],
                    )
                    .await
            })
            .await
            .ok()?;
        u64::try_from(row.get::<_, i64>(0)).ok()
    }

    pub async fn reserve(&mut self, deal: &str, user: &str, qty: u32, ttl_ms: u64) -> Reserved {
        let (client, statements) = match self.prepared().await {
            Ok((client, s)) => (Arc::clone(client), s.reserve.clone()),
            Err(outcome) => return Reserved { outcome, hold_id: None, entry: None },
        };
        let qty = i32::try_from(qty).unwrap_or(i32::MAX);
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let answer = self
            .finish(async move { client.query_one(&statements, &[&deal, &user, &qty, &ttl]).await })
            .await;
        match answer {
            Ok(row) => {
                let code: String = row.get(0);
                let hold_id: Option<i64> = row.get(1);
                match (code.as_str(), hold_id) {
                    ("ok", Some(id)) => Reserved {
                        outcome: Outcome::Ok,
                        hold_id: Some(id.to_string()),
                        entry: None,
                    },
                    ("ok", None) => Reserved {
                        outcome: peer_failure("pg_no_hold_id"),
                        hold_id: None,
                        entry: None,
                    },
                    (code, _) => {
                        Reserved { outcome: peer_outcome(code), hold_id: None, entry: None }
                    }
                }
            }
            Err(outcome) => Reserved { outcome, hold_id: None, entry: None },
        }
    }

    /// Confirms (`confirm`) or releases the hold.
    pub async fn resolve(&mut self, hold_id: &str, confirm: bool) -> Outcome {
        let Ok(id) = hold_id.parse::<i64>() else { return peer_outcome("unknown_hold") };
        let (client, statement) = match self.prepared().await {
            Ok((client, s)) => (Arc::clone(client), s.resolve.clone()),
            Err(outcome) => return outcome,
        };
        match self.finish(async move { client.query_one(&statement, &[&id, &confirm]).await }).await
        {
            Ok(row) => peer_outcome(&row.get::<_, String>(0)),
            Err(outcome) => outcome,
        }
    }

    /// Expires up to [`EXPIRE_BATCH`] due holds; returns how many it ended.
    pub async fn expire_due(&mut self) -> Result<u64, Outcome> {
        let (client, statement) = match self.prepared().await {
            Ok((client, s)) => (Arc::clone(client), s.expire.clone()),
            Err(outcome) => return Err(outcome),
        };
        let batch = i32::try_from(EXPIRE_BATCH).unwrap_or(i32::MAX);
        let row = self.finish(async move { client.query_one(&statement, &[&batch]).await }).await?;
        Ok(u64::try_from(row.get::<_, i32>(0)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_defines_what_the_statements_call() {
        for name in ["ls_reserve(", "ls_resolve(", "ls_expire(", "ls_give_back("] {
            assert!(SCHEMA_SQL.contains(&format!("FUNCTION {name}")), "{name} is defined");
        }
        for table in ["deals", "holds", "user_counts"] {
            assert!(SCHEMA_SQL.contains(&format!("CREATE TABLE IF NOT EXISTS {table} (")));
        }
        assert!(SCHEMA_SQL.contains(&format!("ERRCODE = '{REFUSAL_SQLSTATE}'")));
        assert!(!SCHEMA_SQL.contains("CREATE TABLE deals"), "every statement is idempotent");
    }
}
