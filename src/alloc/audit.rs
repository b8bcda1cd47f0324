//! The invariants across the allocator's structures, checked on a quiescent allocator: by tests
//! after every step, and by `restore` on a checkpoint (outside input). Not on the live path:
//! the check reads every structure, which no concurrent command may change meanwhile.

use std::collections::HashMap;

use livestock_core::deal::Lifecycle;
use livestock_core::hold::HoldState;
use livestock_core::ids::UserId;

use super::{users, Allocator};

impl Allocator {
    /// Checks every cross-structure invariant; panics with the first violation. O(holds):
    /// tests call it after every step. Only valid while quiescent.
    pub fn check_invariants(&self) {
        if let Err(violation) = self.audit() {
            panic!("invariant violated: {violation}");
        }
    }

    /// The invariants as a result, for state read from outside (a checkpoint).
    pub fn audit(&self) -> Result<(), String> {
        macro_rules! ensure {
            ($cond:expr, $($msg:tt)+) => {
                if !$cond {
                    return Err(format!($($msg)+));
                }
            };
        }
        let snapshot = self.snapshot();
        let mut held: HashMap<&str, u64> = HashMap::new();
        let mut sold: HashMap<&str, u64> = HashMap::new();
        // u64: a checkpoint is outside input, and its holds' quantities (each a u32) may add up past
        // a u32 for one user; the sum must be refused as wrong, not overflow.
        let mut per_user: HashMap<(&str, &str), u64> = HashMap::new();
        for hold in &snapshot.holds {
            ensure!(hold.seq.0 < snapshot.next_hold_seq, "hold {:?} above the sequence", hold.seq);
            let deal = hold.deal_id.as_str();
            match hold.state {
                HoldState::Held => {
                    *held.entry(deal).or_default() += u64::from(hold.qty);
                    *per_user.entry((deal, hold.user_id.as_str())).or_default() +=
                        u64::from(hold.qty);
                    let shard = self.holds.lock(hold.seq);
                    ensure!(
                        shard.has_timer(hold.seq, hold.expires_at_ms),
                        "open hold {:?} has no expiry timer",
                        hold.seq
                    );
                }
                HoldState::Confirmed => {
                    ensure!(
                        hold.confirmed_qty >= 1 && hold.confirmed_qty <= hold.qty,
                        "hold {:?} confirmed_qty out of range",
                        hold.seq
                    );
                    *sold.entry(deal).or_default() += u64::from(hold.confirmed_qty);
                    *per_user.entry((deal, hold.user_id.as_str())).or_default() +=
                        u64::from(hold.confirmed_qty);
                }
                HoldState::Released | HoldState::Expired => {
                    ensure!(
                        hold.confirmed_qty == 0,
                        "hold {:?} unsold but confirmed_qty",
                        hold.seq
                    );
                }
            }
        }
        for deal in self.waitlist_deals() {
            let Some(list) = deal.lock_waitlist() else { continue };
            let id = deal.spec.id.as_str();
            list.check().map_err(|e| format!("waitlist of deal {id}: {e}"))?;
            ensure!(
                deal.waiting() == list.waiting_count() as u64,
                "deal {id} publishes {} waiting, has {}",
                deal.waiting(),
                list.waiting_count()
            );
        }
        // Offers, read out of the hold shards first: a waitlist lock is never taken under a
        // hold shard (the lock order).
        let offers: Vec<_> = (0..self.holds.shard_count())
            .flat_map(|index| {
                let shard = self.holds.lock_index(index);
                shard
                    .entries()
                    .filter_map(|e| Some((e.hold.seq, e.hold.state, e.origin?, e.deal.clone())))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (seq, state, origin, deal) in offers {
            let Some(list) = deal.lock_waitlist() else {
                return Err(format!("offer {seq:?} of a deal without a waitlist"));
            };
            let linked = list.get(origin).and_then(|e| e.hold) == Some(seq);
            ensure!(linked, "offer {seq:?} and entry {origin:?} disagree");
            if state == HoldState::Held {
                ensure!(
                    list.entry_of_offer(seq) == Some(origin),
                    "open offer {seq:?} is not linked to entry {origin:?}"
                );
            }
        }
        for deal in &snapshot.deals {
            let id = deal.spec.id.as_str();
            let c = deal.counters;
            ensure!(c.shut() == (deal.lifecycle != Lifecycle::Open), "deal {id} shut flag");
            ensure!(c.held() == held.get(id).copied().unwrap_or(0), "deal {id} held vs holds");
            // Forgotten confirmed holds leave their units in `sold`: at least what we see.
            ensure!(c.sold() >= sold.get(id).copied().unwrap_or(0), "deal {id} sold vs holds");
            ensure!(c.held() + c.sold() <= c.stock(), "deal {id} oversold");
            let Some(limit) = deal.spec.per_user_limit else {
                continue;
            };
            for index in 0..self.users.shard_count() {
                let shard = self.users.lock(index);
                let Some(users) = shard.get(id) else { continue };
                for (user, count) in users {
                    ensure!(*count <= limit, "user {user} over the limit in deal {id}");
                    let from_holds = per_user.get(&(id, user.as_str())).copied().unwrap_or(0);
                    // Forgotten confirmed holds still count against the user.
                    ensure!(
                        u64::from(*count) >= from_holds,
                        "user {user} count below its holds in {id}"
                    );
                }
            }
            for ((deal_id, user), qty) in &per_user {
                if *deal_id == id {
                    let Ok(user_id) = UserId::parse(user) else {
                        return Err(format!("bad user id {user:?}"));
                    };
                    let counted = self.users.with(&deal.spec.id, &user_id, |s| {
                        users::taken(s, &deal.spec.id, &user_id)
                    });
                    ensure!(u64::from(counted) >= *qty, "user {user} count misses holds in {id}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use livestock_core::ids::HoldSeq;

    use super::*;
    use crate::alloc::test_support::{allocator_with_holds, Events};

    /// A checkpoint whose holds for one user add up past a u32 is refused as wrong, not a
    /// panic on overflow (the checkpoint_decode fuzzer found it with two holds near u32::MAX).
    #[test]
    fn a_users_holds_past_u32_are_refused_not_overflowed() {
        let (allocator, _) = allocator_with_holds(Some(2), &["u"], &mut Events(Vec::new()));
        let config = allocator.config();
        let mut snapshot = allocator.snapshot();
        assert!(Allocator::restore(config, &snapshot).is_ok(), "the honest snapshot restores");
        let mut twin = snapshot.holds[0].clone();
        twin.seq = HoldSeq(snapshot.next_hold_seq);
        twin.qty = u32::MAX;
        snapshot.holds[0].qty = u32::MAX;
        snapshot.holds.push(twin);
        snapshot.next_hold_seq += 1;
        let refused = Allocator::restore(config, &snapshot);
        assert!(refused.is_err(), "restored a user holding 2 x u32::MAX units");
    }
}
