//! The hold table: holds by sequence number in sharded maps, each shard with its own timer
//! index of expiries and of forgetting resolved holds.
//!
//! Why shards keyed by the hold's sequence number: consecutive reserves get consecutive numbers
//! and so land on different shards; two cores reserving at once almost never meet on a lock.
//! Why a timer index per shard (an ordered set of (instant, hold)): the reaper pops exactly the
//! holds that are due, never scanning live ones, and an extension or a resolution moves or
//! removes the hold's one entry in O(log n), so no stale entry outlives its hold.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crossbeam::utils::CachePadded;

use crate::alloc::deal_slot::DealSlot;
use crate::sync::{Arc, Mutex, MutexGuard};
use livestock_core::command::HoldView;
use livestock_core::hold::{Hold, HoldState, Settlement};
use livestock_core::ids::{EntrySeq, HoldSeq};
use livestock_core::limits::SHARDS;

pub struct Entry {
    pub hold: Hold,
    /// The hold's deal, so that resolving a hold never looks the deal up again.
    pub deal: Arc<DealSlot>,
    /// The waitlist entry this hold was offered to, if it is an offer.
    pub origin: Option<EntrySeq>,
}

impl Entry {
    /// The hold as a caller sees it at `now`.
    pub fn view(&self, now_ms: u64) -> HoldView {
        HoldView { origin: self.origin, ..HoldView::at(self.hold.clone(), now_ms) }
    }
}

/// Hashes hold numbers. They are ours (a counter), never chosen by a client, so the map needs
/// no flood-resistant hash; SipHash cost more than the rest of a lookup. One multiply by an
/// odd constant, then the high half folded down: a shard holds numbers that share their low
/// six bits (`HoldTable::shard_of`), and the table picks buckets by the low bits of the hash.
#[derive(Default, Clone, Copy)]
pub struct SeqHasher(u64);

const SEQ_HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(SEQ_HASH_MULTIPLIER);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(SEQ_HASH_MULTIPLIER);
    }
}

#[derive(Default)]
pub struct HoldShard {
    holds: HashMap<u64, Entry, BuildHasherDefault<SeqHasher>>,
    /// (expires_at_ms, seq) of every open hold: exactly one entry per open hold, removed when
    /// it resolves or moves when it is extended, so the reaper pops only what is due and a
    /// copy that never reaps (the log writer's shadow) keeps nothing stale.
    expiries: BTreeSet<(u64, u64)>,
    /// forget_at_ms -> resolved holds to drop from memory then.
    forgets: BTreeMap<u64, Vec<u64>>,
}

/// A hold that has just been resolved: what its deal and user get back once the event is
/// ordered.
pub struct Resolved {
    pub seq: HoldSeq,
    pub state: HoldState,
    pub deal: Arc<DealSlot>,
    pub user_id: livestock_core::ids::UserId,
    pub settlement: Settlement,
    /// The waitlist entry, if the hold was an offer: it lapses unless the hold was confirmed.
    pub origin: Option<EntrySeq>,
    pub at_ms: u64,
}

impl HoldShard {
    pub fn get(&self, seq: HoldSeq) -> Option<&Entry> {
        self.holds.get(&seq.0)
    }

    pub fn contains(&self, seq: HoldSeq) -> bool {
        self.holds.contains_key(&seq.0)
    }

    /// Adds a hold with its timer (expiry if open, forgetting if resolved). Panics on a duplicate number: numbers are unique
    /// by construction (replay checks before it calls this).
    pub fn insert(&mut self, entry: Entry, retention_ms: u64) {
        let seq = entry.hold.seq.0;
        match entry.hold.resolved_at_ms {
            None => self.schedule_expiry(seq, entry.hold.expires_at_ms),
            Some(at_ms) => {
                self.forgets.entry(at_ms.saturating_add(retention_ms)).or_default().push(seq)
            }
        }
        let previous = self.holds.insert(seq, entry);
        assert!(previous.is_none(), "hold {seq} inserted twice");
    }

    fn schedule_expiry(&mut self, seq: u64, at_ms: u64) {
        self.expiries.insert((at_ms, seq));
    }

    pub fn extend(&mut self, seq: HoldSeq, expires_at_ms: u64) -> Option<&Hold> {
        let entry = self.holds.get_mut(&seq.0)?;
        assert_eq!(entry.hold.state, HoldState::Held, "extend of a resolved hold");
        let moved = self.expiries.remove(&(entry.hold.expires_at_ms, seq.0));
        assert!(moved, "open hold {seq:?} had no timer");
        entry.hold.expires_at_ms = expires_at_ms;
        self.schedule_expiry(seq.0, expires_at_ms);
        self.holds.get(&seq.0).map(|e| &e.hold)
    }

    /// Records a resolution and schedules the hold to be forgotten `retention_ms` later.
    pub fn resolve(
        &mut self,
        seq: HoldSeq,
        state: HoldState,
        settlement: Settlement,
        at_ms: u64,
        retention_ms: u64,
    ) -> Option<Resolved> {
        let entry = self.holds.get_mut(&seq.0)?;
        self.expiries.remove(&(entry.hold.expires_at_ms, seq.0));
        entry.hold.resolve(state, settlement, at_ms);
        let resolved = Resolved {
            seq,
            state,
            deal: entry.deal.clone(),
            user_id: entry.hold.user_id.clone(),
            settlement,
            origin: entry.origin,
            at_ms,
        };
        self.forgets.entry(at_ms.saturating_add(retention_ms)).or_default().push(seq.0);
        Some(resolved)
    }

    /// Pops the holds whose expiry instant has come and that are still held at `now`.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<HoldSeq> {
        let mut due = Vec::new();
        while let Some(&(at_ms, seq)) = self.expiries.first() {
            if at_ms > now_ms {
                break;
            }
            self.expiries.pop_first();
            if self.holds.get(&seq).is_some_and(|e| e.hold.is_due(now_ms)) {
                due.push(HoldSeq(seq));
            }
        }
        due
    }

    /// Drops resolved holds whose retention has passed; returns how many.
    pub fn forget_due(&mut self, now_ms: u64) -> usize {
        let mut forgotten = 0;
        while let Some(entry) = self.forgets.first_entry() {
            if *entry.key() > now_ms {
                break;
            }
            for seq in entry.remove() {
                let resolved =
                    self.holds.get(&seq).is_some_and(|e| e.hold.state != HoldState::Held);
                if resolved {
                    self.holds.remove(&seq);
                    forgotten += 1;
                }
            }
        }
        forgotten
    }

    pub fn entries(&self) -> impl ExactSizeIterator<Item = &Entry> {
        self.holds.values()
    }

    /// Every open hold has a timer entry at its current expiry (checked by the invariants).
    pub fn has_timer(&self, seq: HoldSeq, at_ms: u64) -> bool {
        self.expiries.contains(&(at_ms, seq.0))
    }
}

pub struct HoldTable {
    shards: Box<[CachePadded<Mutex<HoldShard>>]>,
}

impl Default for HoldTable {
    fn default() -> Self {
        HoldTable {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(HoldShard::default())))
                .collect(),
        }
    }
}

impl HoldTable {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "only the low bits pick the shard (SHARDS is a small power of two), and a \
                  cast to usize keeps the low bits"
    )]
    pub fn shard_of(seq: HoldSeq) -> usize {
        (seq.0 as usize) & (SHARDS - 1)
    }

    pub fn lock(&self, seq: HoldSeq) -> MutexGuard<'_, HoldShard> {
        self.shards[Self::shard_of(seq)].lock()
    }

    pub fn lock_index(&self, index: usize) -> MutexGuard<'_, HoldShard> {
        self.shards[index].lock()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}
