//! One deal's waitlist: its entries, the queue of those waiting, and when terminal entries are
//! forgotten. A plain structure under the deal's waitlist lock (`DealSlot::lock_waitlist`);
//! the decisions that use it are in `offers.rs`, the rules in `livestock_core::waitlist`.
//!
//! Why a queue keyed by an order number and not by the entry's number: a join appends, but
//! the draw (to come) enqueues in draw order; an order number given at enqueue time keeps
//! "arrival order" whatever made the arrival.

use std::collections::{BTreeMap, HashMap};

use super::ranks::Ranks;
use livestock_core::draw::{draw_order, DrawSeed};
use livestock_core::ids::{EntrySeq, HoldSeq, UserId};
use livestock_core::waitlist::{EntryState, WaitEntry};

#[derive(Default)]
pub struct Waitlist {
    /// Every entry in memory: waiting, offered, and terminal ones until they are forgotten.
    entries: HashMap<u64, WaitEntry>,
    /// order -> entry number, waiting entries only, in serving order.
    queue: BTreeMap<u64, u64>,
    /// The quantities the waiting entries ask, as counts: a free smaller than the smallest is
    /// handed to nobody without walking the queue (most frees of a drop: a confirm frees 0,
    /// and after the last offer of a free what is left is below every entry's quantity).
    waiting_qtys: BTreeMap<u32, u32>,
    /// entry number -> its key in `queue`, waiting entries only.
    order_of: HashMap<u64, u64>,
    /// A user's one active entry: waiting, or offered with its hold still open.
    active_by_user: HashMap<UserId, u64>,
    /// offer hold -> its entry, while the hold is open.
    offers: HashMap<u64, u64>,
    next_order: u64,
    /// Ranks of order numbers, for `position`.
    ranks: Ranks,
    /// forget_at_ms -> entries to drop from memory then (terminal ones, kept readable as long
    /// as resolved holds are).
    forgets: BTreeMap<u64, Vec<u64>>,
    /// Entries that entered the draw, in log order, while its window is open.
    entered: Vec<u64>,
    /// The draw, once it started.
    draw: Option<DrawRecord>,
}

/// A draw as it was done: enough to reveal and re-check it whatever becomes of its entries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrawRecord {
    pub at_ms: u64,
    /// Units available when it was drawn.
    pub units: u64,
    /// The entries drawn, in log order (the algorithm's index order).
    pub entrants: Vec<(EntrySeq, UserId, u32)>,
    /// The draw order, as indices into `entrants`.
    pub order: Vec<u32>,
    /// Entries served by the draw, in the order they were served.
    pub winners: Vec<EntrySeq>,
    /// Winners are fixed and the rest placed (waitlist or lost).
    pub closed: bool,
}

impl Waitlist {
    pub fn get(&self, seq: EntrySeq) -> Option<&WaitEntry> {
        self.entries.get(&seq.0)
    }

    pub fn active_of(&self, user: &UserId) -> Option<&WaitEntry> {
        self.active_by_user.get(user).and_then(|seq| self.entries.get(seq))
    }

    pub fn waiting_count(&self) -> usize {
        self.queue.len()
    }

    /// Entries in the draw now (its window open).
    pub fn entered_count(&self) -> usize {
        self.entered.len()
    }

    pub fn draw(&self) -> Option<&DrawRecord> {
        self.draw.as_ref()
    }

    /// A new entry in the draw (state `entered`).
    pub fn enter(&mut self, entry: WaitEntry) {
        assert_eq!(entry.state, EntryState::Entered, "a draw entry is entered");
        assert!(self.draw.is_none(), "an entry after the draw");
        let seq = entry.seq.0;
        let previous = self.active_by_user.insert(entry.user_id.clone(), seq);
        assert!(previous.is_none(), "user {} has two active entries", entry.user_id);
        self.entered.push(seq);
        let previous = self.entries.insert(seq, entry);
        assert!(previous.is_none(), "entry {seq} inserted twice");
    }

    /// Draws: the entries still entered, ranked by the seed (`livestock_core::draw`), join
    /// the queue in that order (the queue is empty before a draw: nobody can wait on a deal
    /// that has not been on sale). Offers then serve the queue's head; `close_draw` fixes the
    /// winners.
    pub fn start_draw(&mut self, seed: &DrawSeed, at_ms: u64, units: u64) {
        assert!(self.draw.is_none(), "drawn twice");
        let entered = std::mem::take(&mut self.entered);
        let entrants: Vec<(EntrySeq, UserId, u32)> = entered
            .iter()
            .filter_map(|seq| self.entries.get(seq))
            .filter(|e| e.state == EntryState::Entered)
            .map(|e| (e.seq, e.user_id.clone(), e.qty))
            .collect();
        let order = draw_order(seed, entrants.iter().map(|(_, user, _)| user.as_str()));
        for index in &order {
            let seq = entrants[*index].0;
            self.entry_mut(seq).state = EntryState::Waiting;
            self.enqueue(seq.0);
        }
        let order = order.into_iter().map(|i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
        self.draw =
            Some(DrawRecord { at_ms, units, entrants, order, winners: Vec::new(), closed: false });
    }

    /// Whether the draw started and its winners are not fixed yet (offers now are wins).
    pub fn draw_open(&self) -> bool {
        self.draw.as_ref().is_some_and(|d| !d.closed)
    }

    /// Fixes the winners; the entries still waiting stay on the waitlist up to `keep` (its
    /// `waitlist_max`, 0 without one), in draw order, and the others are `lost`.
    pub fn close_draw(&mut self, at_ms: u64, keep: usize, retention_ms: u64) {
        let Some(draw) = self.draw.as_mut() else { panic!("closing a draw never started") };
        assert!(!draw.closed, "draw closed twice");
        draw.closed = true;
        let lost: Vec<u64> = self.queue.values().skip(keep).copied().collect();
        for seq in lost {
            self.dequeue(seq);
            self.close(EntrySeq(seq), at_ms, retention_ms, WaitEntry::lose);
        }
    }

    /// Waiting entries in serving order, as (number, quantity).
    pub fn waiting(&self) -> impl Iterator<Item = (EntrySeq, u32)> + '_ {
        self.queue.values().map(|seq| {
            let entry = &self.entries[seq];
            (entry.seq, entry.qty)
        })
    }

    /// 1 for the head. O(log n) (`ranks.rs`): polls read it under the waitlist lock.
    pub fn position(&self, seq: EntrySeq) -> Option<u64> {
        let order = self.order_of.get(&seq.0)?;
        Some(self.ranks.below(*order) + 1)
    }

    /// The entry an offer hold belongs to, while the hold is open.
    pub fn entry_of_offer(&self, hold: HoldSeq) -> Option<EntrySeq> {
        self.offers.get(&hold.0).map(|seq| EntrySeq(*seq))
    }

    /// A new entry at the back of the queue (state `waiting`).
    pub fn push(&mut self, entry: WaitEntry) {
        assert_eq!(entry.state, EntryState::Waiting, "a new entry waits");
        let seq = entry.seq.0;
        let previous = self.active_by_user.insert(entry.user_id.clone(), seq);
        assert!(previous.is_none(), "user {} has two active entries", entry.user_id);
        let previous = self.entries.insert(seq, entry);
        assert!(previous.is_none(), "entry {seq} inserted twice");
        self.enqueue(seq);
    }

    /// The smallest quantity a waiting entry asks (`None` if nobody waits).
    pub fn smallest_waiting_qty(&self) -> Option<u32> {
        self.waiting_qtys.keys().next().copied()
    }

    fn enqueue(&mut self, seq: u64) {
        let qty = self.entries.get(&seq).map_or(0, |e| e.qty);
        *self.waiting_qtys.entry(qty).or_default() += 1;
        let order = self.next_order;
        self.next_order += 1;
        self.ranks.insert(order, self.queue.keys().copied());
        self.queue.insert(order, seq);
        self.order_of.insert(seq, order);
    }

    fn dequeue(&mut self, seq: u64) {
        let Some(order) = self.order_of.remove(&seq) else { panic!("entry {seq} not queued") };
        self.queue.remove(&order);
        let qty = self.entries.get(&seq).map_or(0, |e| e.qty);
        match self.waiting_qtys.get_mut(&qty) {
            Some(1) => {
                self.waiting_qtys.remove(&qty);
            }
            Some(count) => *count -= 1,
            None => panic!("entry {seq} asks {qty}, a quantity nobody waits for"),
        }
        self.ranks.remove(order);
    }

    fn entry_mut(&mut self, seq: EntrySeq) -> &mut WaitEntry {
        match self.entries.get_mut(&seq.0) {
            Some(entry) => entry,
            None => panic!("entry {seq:?} vanished under its lock"),
        }
    }

    fn forget_later(&mut self, seq: u64, at_ms: u64, retention_ms: u64) {
        self.forgets.entry(at_ms.saturating_add(retention_ms)).or_default().push(seq);
    }

    /// A waiting entry is served by the open hold `hold`.
    pub fn offer(&mut self, seq: EntrySeq, hold: HoldSeq) {
        self.dequeue(seq.0);
        self.entry_mut(seq).offer(hold);
        self.offers.insert(hold.0, seq.0);
        if let Some(draw) = self.draw.as_mut().filter(|d| !d.closed) {
            draw.winners.push(seq);
        }
    }

    /// A waiting entry lapses (its turn came with its user's limit full; its deal ended).
    pub fn lapse_waiting(&mut self, seq: EntrySeq, at_ms: u64, retention_ms: u64) {
        self.dequeue(seq.0);
        self.close(seq, at_ms, retention_ms, WaitEntry::lapse);
    }

    /// An offer's hold was resolved: a confirm keeps the entry `offered` (its user bought), a
    /// release or an expiry lapses it. Either way the user may join again.
    pub fn offer_resolved(
        &mut self,
        hold: HoldSeq,
        confirmed: bool,
        at_ms: u64,
        retention_ms: u64,
    ) {
        let Some(seq) = self.offers.remove(&hold.0) else { return };
        let seq = EntrySeq(seq);
        if confirmed {
            let user = self.entry_mut(seq).user_id.clone();
            self.active_by_user.remove(&user);
            self.forget_later(seq.0, at_ms, retention_ms);
        } else {
            self.close(seq, at_ms, retention_ms, WaitEntry::lapse);
        }
    }

    /// A user leaves: a waiting entry leaves the queue; an offered one (whose hold the caller
    /// released first) is cancelled.
    pub fn cancel(&mut self, seq: EntrySeq, at_ms: u64, retention_ms: u64) {
        let entry = self.entry_mut(seq);
        match entry.state {
            EntryState::Waiting => self.dequeue(seq.0),
            // Out of the draw (and of its count, which bounds it).
            EntryState::Entered => self.entered.retain(|s| *s != seq.0),
            EntryState::Offered => {
                if let Some(hold) = entry.hold {
                    self.offers.remove(&hold.0);
                }
            }
            state => panic!("cancel of entry {seq:?} in state {state:?}"),
        }
        self.close(seq, at_ms, retention_ms, WaitEntry::cancel);
    }

    fn close(
        &mut self,
        seq: EntrySeq,
        at_ms: u64,
        retention_ms: u64,
        how: fn(&mut WaitEntry, u64),
    ) {
        let entry = self.entry_mut(seq);
        how(entry, at_ms);
        let user = entry.user_id.clone();
        if self.active_by_user.get(&user) == Some(&seq.0) {
            self.active_by_user.remove(&user);
        }
        self.forget_later(seq.0, at_ms, retention_ms);
    }

    /// An entered entry lapses: its deal's window ended (by the clock) before it was drawn.
    pub fn lapse_entered(&mut self, seq: EntrySeq, at_ms: u64, retention_ms: u64) {
        self.entered.retain(|s| *s != seq.0);
        self.close(seq, at_ms, retention_ms, WaitEntry::lapse);
    }

    /// Every waiting or entered entry lapses (the deal ended); returns how many.
    pub fn lapse_all_waiting(&mut self, at_ms: u64, retention_ms: u64) -> usize {
        let waiting: Vec<u64> = self.queue.values().copied().collect();
        for seq in &waiting {
            self.lapse_waiting(EntrySeq(*seq), at_ms, retention_ms);
        }
        let entered: Vec<u64> = std::mem::take(&mut self.entered);
        let mut lapsed = waiting.len();
        for seq in entered {
            if self.entries.get(&seq).is_some_and(|e| e.state == EntryState::Entered) {
                self.close(EntrySeq(seq), at_ms, retention_ms, WaitEntry::lapse);
                lapsed += 1;
            }
        }
        lapsed
    }

    /// Drops terminal entries whose retention has passed.
    pub fn forget_due(&mut self, now_ms: u64) {
        while let Some(due) = self.forgets.first_entry() {
            if *due.key() > now_ms {
                break;
            }
            for seq in due.remove() {
                let inactive = self.entries.get(&seq).is_some_and(|e| match e.state {
                    EntryState::Waiting | EntryState::Entered => false,
                    EntryState::Offered => e.hold.is_none_or(|h| !self.offers.contains_key(&h.0)),
                    EntryState::Cancelled | EntryState::Lapsed | EntryState::Lost => true,
                });
                if inactive {
                    self.entries.remove(&seq);
                }
            }
        }
    }

    /// Every entry in memory, in number order (snapshots, comparisons).
    pub fn entries_sorted(&self) -> Vec<WaitEntry> {
        let mut entries: Vec<WaitEntry> = self.entries.values().cloned().collect();
        entries.sort_by_key(|e| e.seq);
        entries
    }

    /// Waiting entries' numbers in serving order (snapshots).
    pub fn queue_order(&self) -> Vec<EntrySeq> {
        self.queue.values().map(|seq| EntrySeq(*seq)).collect()
    }

    /// Entries that entered the open draw, in log order (snapshots).
    pub fn entered_order(&self) -> Vec<EntrySeq> {
        self.entered.iter().map(|seq| EntrySeq(*seq)).collect()
    }

    /// Rebuilds a waitlist from a snapshot's entries and queue order; `Err` says what does not
    /// fit together. Open offers are linked by the caller once holds are restored.
    pub fn restore(
        entries: Vec<WaitEntry>,
        queue: &[EntrySeq],
        entered: &[EntrySeq],
        draw: Option<DrawRecord>,
        retention_ms: u64,
    ) -> Result<Self, String> {
        let mut list = Waitlist { draw, ..Waitlist::default() };
        for entry in entries {
            let seq = entry.seq.0;
            match (entry.state, entry.resolved_at_ms) {
                (EntryState::Waiting | EntryState::Entered, None) => {
                    if list.active_by_user.insert(entry.user_id.clone(), seq).is_some() {
                        return Err(format!("user {} has two active entries", entry.user_id));
                    }
                }
                // Active only while its hold is open: `link_offer` decides, once holds are
                // restored (a confirmed offer's entry stays `offered`, and its user may have
                // joined again since).
                (EntryState::Offered, None) => {}
                (EntryState::Cancelled | EntryState::Lapsed | EntryState::Lost, Some(at_ms)) => {
                    list.forget_later(seq, at_ms, retention_ms);
                }
                (state, at) => return Err(format!("entry {seq} is {state:?} resolved at {at:?}")),
            }
            if list.entries.insert(seq, entry).is_some() {
                return Err(format!("entry {seq} appears twice"));
            }
        }
        for seq in queue {
            match list.entries.get(&seq.0) {
                Some(e)
                    if e.state == EntryState::Waiting && !list.order_of.contains_key(&seq.0) =>
                {
                    list.enqueue(seq.0)
                }
                _ => return Err(format!("queue names entry {} that does not wait", seq.0)),
            }
        }
        if list.queue.len()
            != list.entries.values().filter(|e| e.state == EntryState::Waiting).count()
        {
            return Err("a waiting entry is missing from the queue".into());
        }
        for seq in entered {
            if list.draw.is_some() || !list.entries.contains_key(&seq.0) {
                return Err(format!("entry {} entered a draw that is not open", seq.0));
            }
            list.entered.push(seq.0);
        }
        let mut entered_now = list.entries.values().filter(|e| e.state == EntryState::Entered);
        if entered_now.any(|e| !list.entered.contains(&e.seq.0)) {
            return Err("an entered entry is missing from the draw".into());
        }
        Ok(list)
    }

    /// Links an offered entry to its still-open hold (restore), or, if the hold was resolved,
    /// records that the user's entry is no longer active.
    pub fn link_offer(
        &mut self,
        seq: EntrySeq,
        hold_open: bool,
        confirmed_at_ms: Option<u64>,
        retention_ms: u64,
    ) -> Result<(), String> {
        let entry = self.entry_mut(seq);
        let Some(hold) = entry.hold else { panic!("offered entry without a hold") };
        let user = entry.user_id.clone();
        if hold_open {
            self.offers.insert(hold.0, seq.0);
            if self.active_by_user.insert(user.clone(), seq.0).is_some() {
                return Err(format!("user {user} has two active entries"));
            }
        } else if let Some(at_ms) = confirmed_at_ms {
            self.forget_later(seq.0, at_ms, retention_ms);
        }
        Ok(())
    }

    /// The structure's own rules, for the audit: the queue holds exactly the waiting entries,
    /// each active user has one active entry, each open offer names an offered entry.
    pub fn check(&self) -> Result<(), String> {
        let entered = self.entries.values().filter(|e| e.state == EntryState::Entered).count();
        if entered > 0 && self.draw.is_some() {
            return Err(format!("{entered} entries still entered after the draw"));
        }
        let waiting = self.entries.values().filter(|e| e.state == EntryState::Waiting).count();
        let counted: u32 = self.waiting_qtys.values().sum();
        if counted as usize != waiting {
            return Err(format!("{waiting} waiting entries, {counted} counted by quantity"));
        }
        if waiting != self.queue.len() || waiting != self.order_of.len() {
            return Err(format!("{waiting} waiting entries, {} queued", self.queue.len()));
        }
        for (user, seq) in &self.active_by_user {
            match self.entries.get(seq) {
                Some(e) if e.is_active() && &e.user_id == user => {}
                _ => return Err(format!("user {user}'s active entry {seq} is not active")),
            }
        }
        for (hold, seq) in &self.offers {
            match self.entries.get(seq) {
                Some(e) if e.state == EntryState::Offered && e.hold == Some(HoldSeq(*hold)) => {}
                _ => return Err(format!("offer hold {hold} names entry {seq} wrongly")),
            }
        }
        Ok(())
    }
}
