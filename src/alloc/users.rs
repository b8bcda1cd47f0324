//! Per-user counts (units held plus bought) for deals with a per-user limit.
//!
//! Sharded by (deal, user): one user's concurrent reserves meet on one lock, which is what makes
//! the limit exact; different users rarely share a shard. Deals without a limit never touch
//! this table, so the common hot path pays nothing for it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use crossbeam::utils::CachePadded;

use crate::sync::{Mutex, MutexGuard};
use livestock_core::ids::{DealId, UserId};
use livestock_core::limits::SHARDS;

/// deal -> user -> units taken.
pub type UserShard = HashMap<DealId, HashMap<UserId, u32>>;

pub struct UserCounts {
    shards: Box<[CachePadded<Mutex<UserShard>>]>,
    hasher: crate::sync::ShardHasher,
}

impl Default for UserCounts {
    fn default() -> Self {
        UserCounts {
            shards: (0..SHARDS).map(|_| CachePadded::new(Mutex::new(UserShard::new()))).collect(),
            hasher: Default::default(),
        }
    }
}

pub fn taken(shard: &UserShard, deal: &DealId, user: &UserId) -> u32 {
    shard.get(deal).and_then(|users| users.get(user)).copied().unwrap_or(0)
}

pub fn add(shard: &mut UserShard, deal: &DealId, user: &UserId, qty: u32) {
    let count = shard.entry(deal.clone()).or_default().entry(user.clone()).or_insert(0);
    *count += qty;
}

/// Takes `qty` off a user's count, dropping entries that reach zero so memory follows the
/// number of users with open or bought units, not every user ever seen.
pub fn sub(shard: &mut UserShard, deal: &DealId, user: &UserId, qty: u32) {
    let Some(users) = shard.get_mut(deal) else {
        panic!("no user counts for deal {deal}");
    };
    let Some(count) = users.get_mut(user) else {
        panic!("no count for user {user} in deal {deal}");
    };
    *count = count.checked_sub(qty).unwrap_or_else(|| panic!("user count below zero"));
    if *count == 0 {
        users.remove(user);
        if users.is_empty() {
            shard.remove(deal);
        }
    }
}

impl UserCounts {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "only the low bits of the hash pick the shard (SHARDS is a small power of two), \
                  and a cast to usize keeps the low bits"
    )]
    pub fn shard_of(&self, deal: &DealId, user: &UserId) -> usize {
        let mut hasher = self.hasher.build_hasher();
        deal.hash(&mut hasher);
        user.hash(&mut hasher);
        (hasher.finish() as usize) & (SHARDS - 1)
    }

    pub fn lock(&self, index: usize) -> MutexGuard<'_, UserShard> {
        self.shards[index].lock()
    }

    pub fn with<R>(&self, deal: &DealId, user: &UserId, f: impl FnOnce(&mut UserShard) -> R) -> R {
        let mut shard = self.lock(self.shard_of(deal, user));
        f(&mut shard)
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}
