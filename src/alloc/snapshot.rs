//! The whole state as plain values: what a checkpoint stores, and what tests compare between a
//! live allocator and a replayed one. `restore` reads one back as outside input.

use std::collections::HashMap;

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
        let deals = self.deal_snapshots();
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

    /// Appends to `out` the postcard encoding of this state as a [`Snapshot`], without building
    /// the snapshot: the same bytes as encoding `snapshot()`, except that holds and user counts
    /// come in shard order rather than sorted ([`Allocator::restore`] needs no order, and a
    /// restored allocator's `snapshot()` is canonical again). No copy of a hold is made, so a
    /// million holds cost their encoding only, not a million clones and frees.
    ///
    /// `between` is called after each shard's part: the checkpointer paces itself there so that
    /// a large state never takes the core from the requests for the whole encoding. Consistent
    /// only when nothing changes the allocator until this returns (the checkpointer's shadow,
    /// which its own thread alone changes, and not between the calls).
    pub fn encode_snapshot(&self, out: &mut Vec<u8>, between: &mut dyn FnMut()) {
        let deals = self.deal_snapshots();
        encode_into(out, &self.config.hold_id_key);
        encode_into(out, &self.next_hold_seq.load(Ordering::Relaxed));
        encode_into(out, &deals);
        // A sequence is its length (a varint, as a u64 is) and then its items.
        let holds: usize =
            (0..self.holds.shard_count()).map(|i| self.holds.lock_index(i).entries().len()).sum();
        encode_into(out, &(holds as u64));
        let mut written = 0;
        for i in 0..self.holds.shard_count() {
            let shard = self.holds.lock_index(i);
            for entry in shard.entries() {
                encode_into(out, &entry.hold);
                written += 1;
            }
            drop(shard);
            between();
        }
        assert_eq!(written, holds, "the holds changed while they were encoded");
        let counts: usize = (0..self.users.shard_count())
            .map(|i| self.users.lock(i).values().map(HashMap::len).sum::<usize>())
            .sum();
        encode_into(out, &(counts as u64));
        let mut written = 0;
        for i in 0..self.users.shard_count() {
            let shard = self.users.lock(i);
            for (deal, users) in shard.iter() {
                for (user, n) in users {
                    encode_into(out, &(deal, user, *n));
                    written += 1;
                }
            }
            drop(shard);
            between();
        }
        assert_eq!(written, counts, "the user counts changed while they were encoded");
    }

    fn deal_snapshots(&self) -> Vec<DealSnapshot> {
        let slots = self.deals.all();
        slots
            .iter()
            .map(|slot| DealSnapshot {
                spec: slot.spec.clone(),
                lifecycle: slot.lifecycle(),
                counters: slot.counters(),
            })
            .collect()
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

/// Appends `value`'s postcard encoding to `out`.
pub fn encode_into<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if let Err(e) = postcard::serialize_with_flavor::<T, _, _>(value, Append(out)) {
        // Appending to a Vec cannot fail; encoding fails only on a type postcard cannot
        // express: a bug.
        panic!("a snapshot always encodes: {e}");
    }
}

/// Postcard's output into a borrowed Vec, a slice at a time (its `Extend` flavour pushes a
/// byte at a time, its `io::Write` one makes a call per byte).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}
