//! Ranks in a queue whose members leave from anywhere: how many members have a smaller order
//! number than a given one, in O(log n). A Fenwick (binary indexed) tree over order numbers.
//!
//! Why: a waitlist entry's `position` is the number of entries waiting ahead of it, read on
//! every poll of the entry under the deal's waitlist lock. Counting a `BTreeMap` range is
//! linear in the entries ahead (a millisecond behind 200,000 of them), and polls would hold
//! the lock that frees and joins need. Order numbers only grow (one per enqueue), so the tree
//! grows by doubling, rebuilt from the members when it does.

pub struct Ranks {
    /// `tree[i]` (1-based) counts members with order numbers in `(i - lowbit(i), i]`, shifted
    /// by one (order 0 is index 1).
    tree: Vec<u32>,
}

impl Default for Ranks {
    fn default() -> Self {
        Ranks { tree: vec![0; 1 + 64] }
    }
}

impl Ranks {
    fn capacity(&self) -> u64 {
        (self.tree.len() - 1) as u64
    }

    fn add(&mut self, order: u64, delta: i32) {
        let Ok(mut i) = usize::try_from(order + 1) else { panic!("order {order} too large") };
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// A member with order number `order` joins. `members` are the present ones (used to
    /// rebuild when the tree must grow).
    pub fn insert(&mut self, order: u64, members: impl Iterator<Item = u64>) {
        if order >= self.capacity() {
            let mut capacity = self.capacity().max(64);
            while order >= capacity {
                capacity *= 2;
            }
            let Ok(len) = usize::try_from(capacity + 1) else { panic!("{capacity} orders") };
            self.tree = vec![0; len];
            for member in members {
                self.add(member, 1);
            }
        }
        self.add(order, 1);
    }

    pub fn remove(&mut self, order: u64) {
        self.add(order, -1);
    }

    /// Members with an order number below `order`.
    pub fn below(&self, order: u64) -> u64 {
        let mut i = usize::try_from(order.min(self.capacity())).unwrap_or(usize::MAX);
        let mut count = 0u64;
        while i > 0 {
            count += u64::from(self.tree[i]);
            i -= i & i.wrapping_neg();
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn ranks_match_a_naive_count_through_growth_and_removals() {
        let mut ranks = Ranks::default();
        let mut members = BTreeSet::new();
        let mut state = 7u64;
        for order in 0..1_000u64 {
            ranks.insert(order, members.iter().copied());
            members.insert(order);
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            if state >> 62 == 0 {
                let pick = usize::try_from(state >> 8).unwrap_or(0) % members.len();
                let gone = *members.iter().nth(pick).unwrap();
                members.remove(&gone);
                ranks.remove(gone);
            }
            if order % 37 == 0 {
                for probe in [0, order / 2, order, order + 1, order + 500] {
                    let naive = members.range(..probe).count() as u64;
                    assert_eq!(ranks.below(probe), naive, "below {probe} after {order}");
                }
            }
        }
    }
}
