//! The Redis peer: livestock's operations as Lua scripts (`peers/redis-*.lua`), loaded once
//! with SCRIPT LOAD and called with EVALSHA, so each operation is one round trip and runs
//! atomically on the server, as a reserve does in livestock. Durability is the server's
//! (`appendfsync always | everysec`, or no AOF), set where it is started (`benches/peers/`).

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, Script};

use crate::backend::{
    counters_from, peer_failure, peer_outcome, within_deadline, Reserved, EXPIRE_BATCH,
};
use crate::client::{Outcome, Target, Unhealthy};
use crate::ledger::Counters;

const COMMON_LUA: &str = include_str!("peers/redis-common.lua");
const RESERVE_LUA: &str = include_str!("peers/redis-reserve.lua");
const RESOLVE_LUA: &str = include_str!("peers/redis-resolve.lua");
const EXPIRE_LUA: &str = include_str!("peers/redis-expire.lua");

const EXPIRIES_KEY: &str = "ls:expiries";
const HOLD_SEQ_KEY: &str = "ls:hold_seq";

fn deal_key(deal: &str) -> String {
    format!("ls:deal:{deal}")
}

fn users_key(deal: &str) -> String {
    format!("ls:users:{deal}")
}

fn hold_key(hold: &str) -> String {
    format!("ls:hold:{hold}")
}

/// The scripts, each with the shared prelude in front (their SHA-1 is computed once).
struct Scripts {
    reserve: Script,
    resolve: Script,
    expire: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        reserve: Script::new(&format!("{COMMON_LUA}\n{RESERVE_LUA}")),
        resolve: Script::new(&format!("{COMMON_LUA}\n{RESOLVE_LUA}")),
        expire: Script::new(&format!("{COMMON_LUA}\n{EXPIRE_LUA}")),
    })
}

/// One connection to redis-server (the crate's multiplexed connection, used by one worker at
/// a time: a request waits for the previous one's answer, as on an HTTP/1.1 connection).
pub struct RedisConn {
    ip: String,
    port: u16,
    timeout: Duration,
    conn: Option<MultiplexedConnection>,
}

/// How a failed call counts: a broken or late connection is a transport failure (and the
/// connection is replaced); anything the server said is a server error.
fn failure(e: &RedisError) -> Outcome {
    if e.is_timeout() {
        Outcome::Transport("timeout")
    } else if e.is_connection_refusal() {
        Outcome::Transport("connect")
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        Outcome::Transport("io")
    } else {
        peer_failure(&format!("redis_{}", e.code().unwrap_or("error").to_ascii_lowercase()))
    }
}

impl RedisConn {
    pub fn new(target: &Target, timeout: Duration) -> RedisConn {
        RedisConn {
            ip: target.addr.ip().to_string(),
            port: target.addr.port(),
            timeout,
            conn: None,
        }
    }

    async fn ready(&mut self) -> Result<&mut MultiplexedConnection, Outcome> {
        if self.conn.is_none() {
            let info = (self.ip.clone(), self.port)
                .into_connection_info()
                .map_err(|_| Outcome::Transport("connect"))?
                // Like the HTTP client: a request goes out at once, not after the last ACK.
                .set_tcp_settings(TcpSettings::default().set_nodelay(true));
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout));
            let client = redis::Client::open(info).map_err(|_| Outcome::Transport("connect"))?;
            let conn = client.get_multiplexed_async_connection_with_config(&config).await.map_err(
                |e| Outcome::Transport(if e.is_timeout() { "timeout" } else { "connect" }),
            )?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(Outcome::Transport("connect"))
    }

    /// Runs `call` on the connection; on a transport failure the connection is dropped, so a
    /// late answer is never read as the next request's.
    async fn with<T, F>(&mut self, call: F) -> Result<T, Outcome>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    {
        let timeout = self.timeout;
        let conn = self.ready().await?;
        let result = within_deadline(timeout, call(conn), failure).await;
        if let Err(Outcome::Transport(_)) = result {
            self.conn = None;
        }
        result
    }

    pub async fn connect(&mut self) -> Result<(), String> {
        self.ready()
            .await
            .map(|_| ())
            .map_err(|o| format!("cannot connect to redis: {}", o.label()))
    }

    /// Checks that redis answers PING.
    pub async fn health(&mut self) -> Result<(), Unhealthy> {
        self.with(async |c| redis::cmd("PING").query_async::<String>(c).await)
            .await
            .map(|_| ())
            .map_err(|o| match o {
                Outcome::Transport(kind) => Unhealthy::Silent(format!(
                    "redis does not answer PING ({kind}); is redis-server running?"
                )),
                refused => Unhealthy::Answered(format!("redis PING: {}", refused.label())),
            })
    }

    /// SCRIPT LOAD of every script, so the run's EVALSHAs find them.
    pub async fn load_scripts(&mut self) -> Result<(), String> {
        let s = scripts();
        for script in [&s.reserve, &s.resolve, &s.expire] {
            let sha = self
                .with(async |c| script.prepare_invoke().load_async(c).await)
                .await
                .map_err(|o| format!("redis SCRIPT LOAD failed: {}", o.label()))?;
            if sha != script.get_hash() {
                return Err(format!("redis SCRIPT LOAD answered {sha}, not {}", script.get_hash()));
            }
        }
        Ok(())
    }

    pub async fn create_deal(
        &mut self,
        id: &str,
        stock: u64,
        per_user_limit: Option<u32>,
        hold_ttl_ms: u64,
    ) -> Result<Counters, String> {
        let key = deal_key(id);
        let limit = per_user_limit.unwrap_or(0);
        let created: bool = self
            .with(async |c| {
                // HSETNX first: a deal is never overwritten.
                let created: bool =
                    redis::cmd("HSETNX").arg(&key).arg("stock").arg(stock).query_async(c).await?;
                if created {
                    redis::cmd("HSET")
                        .arg(&key)
                        .arg("available")
                        .arg(stock)
                        .arg("held")
                        .arg(0)
                        .arg("sold")
                        .arg(0)
                        .arg("limit")
                        .arg(limit)
                        .arg("ttl_ms")
                        .arg(hold_ttl_ms)
                        .query_async::<()>(c)
                        .await?;
                }
                Ok(created)
            })
            .await
            .map_err(|o| format!("redis: cannot create deal {id}: {}", o.label()))?;
        if !created {
            return Err(format!("redis: deal {id} exists"));
        }
        Ok(self.deal(id).await?.0)
    }

    pub async fn deal(&mut self, id: &str) -> Result<(Counters, Option<u32>), String> {
        let key = deal_key(id);
        let fields: Vec<Option<i64>> = self
            .with(async |c| {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&["stock", "available", "held", "sold", "limit"])
                    .query_async(c)
                    .await
            })
            .await
            .map_err(|o| format!("redis: cannot read deal {id}: {}", o.label()))?;
        match fields[..] {
            [Some(stock), Some(available), Some(held), Some(sold), limit] => Ok((
                counters_from(stock, available, held, sold),
                limit.filter(|l| *l > 0).and_then(|l| u32::try_from(l).ok()),
            )),
            _ => Err(format!("redis: no deal {id}")),
        }
    }

    pub async fn available(&mut self, ids: &[String]) -> Option<u64> {
        let keys: Vec<String> = ids.iter().map(|id| deal_key(id)).collect();
        let counts: Vec<Option<i64>> = self
            .with(async |c| {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("HGET").arg(key).arg("available");
                }
                pipe.query_async(c).await
            })
            .await
            .ok()?;
        Some(counts.iter().map(|n| u64::try_from(n.unwrap_or(0)).unwrap_or(0)).sum())
    }

    pub async fn reserve(&mut self, deal: &str, user: &str, qty: u32, ttl_ms: u64) -> Reserved {
        let script = &scripts().reserve;
        let (deal_k, users_k) = (deal_key(deal), users_key(deal));
        let answer: Result<Vec<String>, Outcome> = self
            .with(async |c| {
                script
                    .key(&deal_k)
                    .key(&users_k)
                    .key(EXPIRIES_KEY)
                    .key(HOLD_SEQ_KEY)
                    .arg(deal)
                    .arg(user)
                    .arg(qty)
                    .arg(ttl_ms)
                    .invoke_async(c)
                    .await
            })
            .await;
        match answer {
            Ok(reply) => match reply.as_slice() {
                [ok, id] if ok == "ok" => {
                    Reserved { outcome: Outcome::Ok, hold_id: Some(id.clone()), entry: None }
                }
                [code] => Reserved { outcome: peer_outcome(code), hold_id: None, entry: None },
                _ => Reserved {
                    outcome: peer_failure("redis_bad_reply"),
                    hold_id: None,
                    entry: None,
                },
            },
            Err(outcome) => Reserved { outcome, hold_id: None, entry: None },
        }
    }

    /// Confirms (`confirm`) or releases the hold.
    pub async fn resolve(&mut self, hold_id: &str, confirm: bool) -> Outcome {
        let script = &scripts().resolve;
        let key = hold_key(hold_id);
        let op = if confirm { "confirm" } else { "release" };
        let answer: Result<String, Outcome> =
            self.with(async |c| script.key(&key).arg(hold_id).arg(op).invoke_async(c).await).await;
        match answer {
            Ok(code) => peer_outcome(&code),
            Err(outcome) => outcome,
        }
    }

    /// Expires up to [`EXPIRE_BATCH`] due holds; returns how many were due.
    pub async fn expire_due(&mut self) -> Result<u64, Outcome> {
        let script = &scripts().expire;
        self.with(async |c| script.key(EXPIRIES_KEY).arg(EXPIRE_BATCH).invoke_async(c).await).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_the_prelude_and_its_keys() {
        let s = scripts();
        assert_ne!(s.reserve.get_hash(), s.resolve.get_hash());
        assert_eq!(s.reserve.get_hash().len(), 40, "a SHA-1 in hex");
        for lua in [RESERVE_LUA, RESOLVE_LUA, EXPIRE_LUA] {
            assert!(lua.contains("KEYS[1]"), "scripts name their keys");
        }
        assert!(COMMON_LUA.contains("local function give_back"));
        assert!(RESERVE_LUA.contains("'per_user_limit'") && RESERVE_LUA.contains("'sold_out'"));
        assert_eq!(deal_key("d1"), "ls:deal:d1");
        assert_eq!(hold_key("42"), "ls:hold:42");
    }
}
