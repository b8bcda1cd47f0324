//! Per-user request rate limits (off by default): a token bucket per user, in sharded maps.
//!
//! A user over the limit gets 429 with `Retry-After` (whole seconds, rounded up). Buckets are
//! forgotten once full again (an idle user costs nothing), so memory follows the users active
//! within one refill period.

use std::collections::HashMap;
use std::hash::BuildHasher;

use crossbeam::utils::CachePadded;

use crate::sync::{Mutex, ShardHasher};
use livestock_core::limits::SHARDS;

struct Bucket {
    /// Tokens, in thousandths (so a rate below 1/ms refills smoothly in integer math).
    milli_tokens: u64,
    updated_ms: u64,
}

type Shard = CachePadded<Mutex<HashMap<Box<str>, Bucket>>>;

pub struct RateLimiter {
    per_s: u64,
    burst: u64,
    shards: Box<[Shard]>,
    hasher: ShardHasher,
}

impl RateLimiter {
    /// `per_s` 0 disables the limiter.
    pub fn new(per_s: u32, burst: u32) -> Self {
        RateLimiter {
            per_s: u64::from(per_s),
            burst: u64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| CachePadded::new(Mutex::new(HashMap::new()))).collect(),
            hasher: ShardHasher::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_s > 0
    }

    /// Takes one request's token. `Err(retry_after_ms)` if the user is over the limit.
    pub fn take(&self, user: &str, now_ms: u64) -> Result<(), u64> {
        if !self.enabled() {
            return Ok(());
        }
        #[expect(
            clippy::cast_possible_truncation,
            reason = "only the hash's low bits pick a shard"
        )]
        let shard_index = (self.hasher.hash_one(user) as usize) & (SHARDS - 1);
        let mut shard = self.shards[shard_index].lock();
        let full = self.burst * 1_000;
        // Refill: per_s tokens per 1000 ms is per_s milli-tokens per ms.
        let refill = |bucket: &mut Bucket| {
            let elapsed_ms = now_ms.saturating_sub(bucket.updated_ms);
            bucket.milli_tokens = (bucket.milli_tokens + elapsed_ms * self.per_s).min(full);
            bucket.updated_ms = now_ms;
        };
        if shard.len() > 4 * 1024 {
            // Forget the users whose bucket has refilled: they are indistinguishable from new.
            shard.retain(|_, b| {
                refill(b);
                b.milli_tokens < full
            });
        }
        let bucket =
            shard.entry(user.into()).or_insert(Bucket { milli_tokens: full, updated_ms: now_ms });
        refill(bucket);
        if bucket.milli_tokens >= 1_000 {
            bucket.milli_tokens -= 1_000;
            Ok(())
        } else {
            let missing = 1_000 - bucket.milli_tokens;
            Err(missing.div_ceil(self.per_s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(2, 3);
        for _ in 0..3 {
            assert_eq!(limiter.take("u", 0), Ok(()));
        }
        assert_eq!(limiter.take("u", 0), Err(500));
        assert_eq!(limiter.take("other", 0), Ok(()), "users are limited separately");
        assert_eq!(limiter.take("u", 499), Err(1));
        assert_eq!(limiter.take("u", 500), Ok(()));
        assert!(RateLimiter::new(0, 0).take("u", 0).is_ok());
    }
}
