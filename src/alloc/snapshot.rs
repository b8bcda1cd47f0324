//! The whole state as plain values: what a checkpoint stores, and what tests compare between a
//! live allocator and a replayed one. `restore` reads one back as outside input.

use livestock_core::counters::Counters;
use livestock_core::deal::{DealSpec, Lifecycle};
use livestock_core::hold::{Hold, HoldState};
use livestock_core::ids::{DealId, HoldIdKey, UserId};

use super::holds::Entry;
use super::{users, Allocator, AllocatorConfig, DealSlot, ReplayError};
use crate::sync::{Arc, Ordering};

/// Everything the allocator holds, as plain values, in a canonical order: for checkpoints and
/// for comparing two allocators (live vs replayed) in tests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub hold_id_key: HoldIdKey,
    pub next_hold_seq: u64,
    pub deals: Vec<DealSnapshot>,
    pub holds: Vec<Hold>,
    /// Units each user has taken (held plus bought) per limited deal, sorted. Kept whole, not
    /// derived from holds: a confirmed hold is forgotten after its retention, its units not.
    pub user_counts: Vec<(DealId, UserId, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DealSnapshot {
    pub spec: DealSpec,
    pub lifecycle: Lifecycle,
    pub counters: Counters,
}

impl Allocator {
    /// A canonical copy of the state. Consistent only when no command runs concurrently (tests,
    /// and the log writer's single-threaded shadow allocator).
    pub fn snapshot(&self) -> Snapshot {
        let deals = self
            .deals
            .all()
            .iter()
            .map(|slot| DealSnapshot {
                spec: slot.spec.clone(),
                lifecycle: slot.lifecycle(),
                counters: slot.counters(),
            })
            .collect();
        let mut holds: Vec<Hold> = (0..self.holds.shard_count())
            .flat_map(|i| {
                let shard = self.holds.lock_index(i);
                shard.entries().map(|e| e.hold.clone()).collect::<Vec<_>>()
            })
            .collect();
        holds.sort_by_key(|h| h.seq);
        let mut user_counts: Vec<(DealId, UserId, u32)> = (0..self.users.shard_count())
            .flat_map(|i| {
                let shard = self.users.lock(i);
                shard
                    .iter()
                    .flat_map(|(deal, users)| {
                        users.iter().map(|(user, n)| (deal.clone(), user.clone(), *n))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        user_counts.sort();
        Snapshot {
            hold_id_key: self.config.hold_id_key,
            next_hold_seq: self.next_hold_seq.load(Ordering::Relaxed),
            deals,
            holds,
            user_counts,
        }
    }

    /// Rebuilds an allocator from a snapshot (a checkpoint), checking it as outside input:
    /// every spec valid, every hold's deal known, every invariant holding.
    pub fn restore(config: AllocatorConfig, snapshot: &Snapshot) -> Result<Self, ReplayError> {
        let err = |what: String| ReplayError(what);
        let config = AllocatorConfig { hold_id_key: snapshot.hold_id_key, ..config };
        let allocator = Allocator::new(config);
        for deal in &snapshot.deals {
            let spec = &deal.spec;
            if !spec.is_valid(deal.counters.stock()) {
                return Err(err(format!("deal {} has an invalid spec", spec.id)));
            }
            allocator.deals.insert(
                &spec.id,
                usize::MAX,
                || err(format!("deal {} twice", spec.id)),
                || err("too many deals".into()),
                || Ok(Arc::new(DealSlot::new(spec.clone(), deal.counters, deal.lifecycle))),
            )?;
        }
        for hold in &snapshot.holds {
            let slot = allocator.replay_slot(&hold.deal_id)?;
            let mut shard = allocator.holds.lock(hold.seq);
            if shard.contains(hold.seq) || hold.seq.0 >= snapshot.next_hold_seq {
                return Err(err(format!("hold {} twice or above the sequence", hold.seq.0)));
            }
            if (hold.state == HoldState::Held) != hold.resolved_at_ms.is_none() || hold.qty == 0 {
                return Err(err(format!("hold {} is inconsistent", hold.seq.0)));
            }
            let retention_ms = config.resolved_hold_retention_ms;
            shard.insert(Entry { hold: hold.clone(), deal: slot }, retention_ms);
        }
        for (deal_id, user_id, count) in &snapshot.user_counts {
            let slot = allocator.replay_slot(deal_id)?;
            if slot.spec.per_user_limit.is_none() || *count == 0 {
                return Err(err(format!("user count for deal {deal_id} that has no limit")));
            }
            allocator
                .users
                .with(deal_id, user_id, |shard| users::add(shard, deal_id, user_id, *count));
        }
        allocator.next_hold_seq.store(snapshot.next_hold_seq, Ordering::Relaxed);
        allocator.audit().map_err(err)?;
        Ok(allocator)
    }
}
