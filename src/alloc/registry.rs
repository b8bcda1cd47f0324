//! Deals by id. Read on every request, written when a deal is created: reads go through a
//! copy-on-write map behind an atomic pointer (no lock, no shared write), creations copy it.

use std::collections::HashMap;

use crate::alloc::deal_slot::DealSlot;
use crate::sync::{Arc, ArcCell, Mutex};
use livestock_core::ids::DealId;

type Map = HashMap<DealId, Arc<DealSlot>>;

pub struct Registry {
    map: ArcCell<Map>,
    /// The deals that keep waitlist entries (a waitlist or a draw), sorted by id: the reaper's
    /// steps and entry lookups scan these, not every deal.
    keeping_entries: ArcCell<Vec<Arc<DealSlot>>>,
    /// Serializes creations: each copies the map, and two at once would lose one.
    write: Mutex<()>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            map: ArcCell::from_pointee(Map::new()),
            keeping_entries: ArcCell::from_pointee(Vec::new()),
            write: Mutex::new(()),
        }
    }
}

impl Registry {
    /// Runs `f` on the deal without cloning its `Arc` (a clone would write its shared count).
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&Arc<DealSlot>) -> R) -> Option<R> {
        let map = self.map.load();
        map.get(id).map(f)
    }

    pub fn get(&self, id: &str) -> Option<Arc<DealSlot>> {
        self.with(id, Arc::clone)
    }

    /// All deals, sorted by id.
    pub fn all(&self) -> Vec<Arc<DealSlot>> {
        let map = self.map.load();
        let mut deals: Vec<_> = map.values().cloned().collect();
        deals.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        deals
    }

    /// The deals with a waitlist or a draw, sorted by id.
    pub fn keeping_entries(&self) -> Vec<Arc<DealSlot>> {
        self.keeping_entries.load().iter().cloned().collect()
    }

    /// Inserts a deal made by `make` unless the id is taken or the table is full; `make` runs
    /// under the write lock, so the check and the insert are one step.
    pub fn insert<E>(
        &self,
        id: &DealId,
        deals_max: usize,
        exists: impl FnOnce() -> E,
        full: impl FnOnce() -> E,
        make: impl FnOnce() -> Result<Arc<DealSlot>, E>,
    ) -> Result<Arc<DealSlot>, E> {
        let _write = self.write.lock();
        let current = self.map.load();
        if current.contains_key(id.as_str()) {
            return Err(exists());
        }
        if current.len() >= deals_max {
            return Err(full());
        }
        let slot = make()?;
        let mut next = Map::clone(&current);
        next.insert(id.clone(), slot.clone());
        self.map.store(std::sync::Arc::new(next));
        if slot.keeps_entries() {
            let mut keeping: Vec<_> = self.keeping_entries.load().iter().cloned().collect();
            keeping.push(slot.clone());
            keeping.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
            self.keeping_entries.store(std::sync::Arc::new(keeping));
        }
        Ok(slot)
    }
}
