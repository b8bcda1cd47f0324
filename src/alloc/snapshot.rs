//! The whole state as plain values: what a checkpoint stores, and what tests compare between a
//! live allocator and a replayed one. `restore` reads one back as outside input.

use std::collections::HashMap;

use livestock_core::counters::Counters;
use livestock_core::deal::{DealSpec, Lifecycle};
use livestock_core::hold::{Hold, HoldState};
use livestock_core::ids::{DealId, EntrySeq, HoldIdKey, HoldSeq, UserId};
use livestock_core::waitlist::{DealOptions, EntryState, WaitEntry};

use super::holds::Entry;
use super::waitlist::{DrawRecord, Waitlist};
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
    /// Deals with a waitlist: their options and entries, by deal id. Last: a checkpoint of
    /// version 2 ends before it (`LegacySnapshot`).
    pub waitlists: Vec<WaitlistSnapshot>,
}

/// A snapshot as checkpoints of version 1 and 2 hold it, from before waitlists.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LegacySnapshot {
    pub hold_id_key: HoldIdKey,
    pub next_hold_seq: u64,
    pub deals: Vec<DealSnapshot>,
    pub holds: Vec<Hold>,
    pub user_counts: Vec<(DealId, UserId, u32)>,
}

impl From<LegacySnapshot> for Snapshot {
    fn from(old: LegacySnapshot) -> Self {
        Snapshot {
            hold_id_key: old.hold_id_key,
            next_hold_seq: old.next_hold_seq,
            deals: old.deals,
            holds: old.holds,
            user_counts: old.user_counts,
            waitlists: Vec::new(),
        }
    }
}

/// One deal's waitlist: its options, every entry in memory (by number), and the waiting ones'
/// serving order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WaitlistSnapshot {
    pub deal_id: DealId,
    pub options: DealOptions,
    pub entries: Vec<WaitEntry>,
    pub queue: Vec<EntrySeq>,
    /// Entries in the deal's open draw, in log order.
    pub entered: Vec<EntrySeq>,
    /// The draw, once started.
    pub draw: Option<DrawRecord>,
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
            waitlists: self.waitlist_snapshots(),
        }
    }

    /// Every waitlist, sorted by deal id.
    fn waitlist_snapshots(&self) -> Vec<WaitlistSnapshot> {
        let mut lists: Vec<WaitlistSnapshot> = self
            .waitlist_deals()
            .iter()
            .filter_map(|deal| {
                let list = deal.lock_waitlist()?;
                Some(WaitlistSnapshot {
                    deal_id: deal.spec.id.clone(),
                    options: deal.options,
                    entries: list.entries_sorted(),
                    queue: list.queue_order(),
                    entered: list.entered_order(),
                    draw: list.draw().cloned(),
                })
            })
            .collect();
        lists.sort_by(|a, b| a.deal_id.cmp(&b.deal_id));
        lists
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
        encode_into(out, &self.waitlist_snapshots());
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
        let retention_ms = config.resolved_hold_retention_ms;
        for (i, list) in snapshot.waitlists.iter().enumerate() {
            if i > 0 && snapshot.waitlists[i - 1].deal_id >= list.deal_id {
                return Err(err(format!("waitlist of deal {} out of order", list.deal_id)));
            }
        }
        let list_of = |id: &DealId| snapshot.waitlists.iter().find(|list| &list.deal_id == id);
        for deal in &snapshot.deals {
            let spec = &deal.spec;
            let options = list_of(&spec.id).map_or(DealOptions::none(spec), |l| l.options);
            if !spec.is_valid(deal.counters.stock())
                || !options.is_valid(spec)
                || list_of(&spec.id).is_some() != options.keeps_entries()
            {
                return Err(err(format!("deal {} has an invalid spec", spec.id)));
            }
            allocator.deals.insert(
                &spec.id,
                usize::MAX,
                || err(format!("deal {} twice", spec.id)),
                || err("too many deals".into()),
                || {
                    Ok(Arc::new(DealSlot::new(
                        spec.clone(),
                        options,
                        deal.counters,
                        deal.lifecycle,
                    )))
                },
            )?;
        }
        for list in &snapshot.waitlists {
            let slot = allocator.replay_slot(&list.deal_id)?;
            let wrong = list.entries.iter().find(|e| {
                e.deal_id != list.deal_id
                    || e.seq.0 >= snapshot.next_hold_seq
                    || e.qty == 0
                    || (e.state == EntryState::Waiting && e.hold.is_some())
                    || (e.state == EntryState::Offered && e.hold.is_none())
            });
            if let Some(entry) = wrong {
                return Err(err(format!("waitlist entry {} is inconsistent", entry.seq.0)));
            }
            let restored = Waitlist::restore(
                list.entries.clone(),
                &list.queue,
                &list.entered,
                list.draw.clone(),
                retention_ms,
            )
            .map_err(|e| err(format!("waitlist of deal {}: {e}", list.deal_id)))?;
            if restored.waiting_count() > list.options.waitlist_max as usize {
                return Err(err(format!("waitlist of deal {} over its maximum", list.deal_id)));
            }
            let Some(mut guard) = slot.lock_waitlist() else { panic!("a deal without its list") };
            if list.options.has_draw() != (restored.draw().is_some() || slot.draw_pending()) {
                return Err(err(format!("draw of deal {} is inconsistent", list.deal_id)));
            }
            if restored.draw().is_some_and(|d| d.closed) {
                slot.set_drawn();
            }
            *guard = restored;
            slot.set_waiting(guard.waiting_count());
        }
        let offered: HashMap<HoldSeq, EntrySeq> = snapshot
            .waitlists
            .iter()
            .flat_map(|list| list.entries.iter())
            .filter_map(|e| Some((e.hold?, e.seq)))
            .collect();
        for hold in &snapshot.holds {
            let slot = allocator.replay_slot(&hold.deal_id)?;
            let mut shard = allocator.holds.lock(hold.seq);
            if shard.contains(hold.seq) || hold.seq.0 >= snapshot.next_hold_seq {
                return Err(err(format!("hold {} twice or above the sequence", hold.seq.0)));
            }
            if (hold.state == HoldState::Held) != hold.resolved_at_ms.is_none() || hold.qty == 0 {
                return Err(err(format!("hold {} is inconsistent", hold.seq.0)));
            }
            // An offer's hold names its entry.
            let origin = offered.get(&hold.seq).copied();
            shard.insert(Entry { hold: hold.clone(), deal: slot.clone(), origin }, retention_ms);
        }
        for list in &snapshot.waitlists {
            let slot = allocator.replay_slot(&list.deal_id)?;
            let Some(mut guard) = slot.lock_waitlist() else { panic!("a deal without its list") };
            for entry in list.entries.iter().filter(|e| e.state == EntryState::Offered) {
                let Some(hold_seq) = entry.hold else { continue };
                let hold = allocator.holds.lock(hold_seq).get(hold_seq).map(|e| e.hold.clone());
                let linked = match hold {
                    Some(hold)
                        if hold.deal_id != entry.deal_id || hold.user_id != entry.user_id =>
                    {
                        return Err(err(format!("entry {} names another's hold", entry.seq.0)));
                    }
                    Some(hold) => {
                        let open = hold.state == HoldState::Held;
                        guard.link_offer(entry.seq, open, hold.resolved_at_ms, retention_ms)
                    }
                    // The hold was forgotten: its entry is done, forgotten soon too.
                    None => {
                        guard.link_offer(entry.seq, false, Some(entry.created_at_ms), retention_ms)
                    }
                };
                linked.map_err(|e| err(format!("waitlist of deal {}: {e}", list.deal_id)))?;
            }
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
