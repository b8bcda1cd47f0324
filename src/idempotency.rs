//! Remembered answers to requests that carry an `Idempotency-Key`.
//!
//! Same key and same request: the first answer again, byte for byte. Same key and a different
//! request: refused (`idempotency_key_reused`). Two requests with one key at once: the first
//! executes, the second waits for its answer (`InFlight` here; the HTTP layer waits). Keys are
//! scoped (per user, per hold, or admin) so two callers cannot collide, kept for a window, and
//! bounded in number: past the bound a new key is refused rather than evicting a live one,
//! because a silently forgotten key is a double reservation waiting for a retry.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam::utils::CachePadded;

use crate::sync::{AtomicUsize, Mutex, Ordering};
use livestock_core::error::ErrorCode;
use livestock_core::limits::SHARDS;

/// An answer as it went out: status and body bytes, and the error code the body carries (for
/// the metrics; `None` for a success).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReply {
    pub status: u16,
    pub body: Bytes,
    pub code: Option<ErrorCode>,
}

struct Slot {
    fingerprint: u64,
    /// When the key was first seen; its window runs from here. The window's queue may hold
    /// older entries for the same key (from an attempt that was not remembered): only the
    /// entry with this instant expires the slot.
    seen_ms: u64,
    state: SlotState,
}

enum SlotState {
    InFlight,
    /// `lsn`: the log record that carries the answer; a replay waits until it is durable, so a
    /// retry is never acknowledged before the original could be.
    Done {
        reply: StoredReply,
        lsn: Option<u64>,
    },
}

#[derive(Default)]
struct Shard {
    /// Shared with `order` and the in-flight guard: one allocation per key, not three.
    slots: HashMap<Arc<str>, Slot>,
    /// Keys in the order they were first seen, with that instant: the window's queue.
    order: VecDeque<(u64, Arc<str>)>,
}

pub struct IdempotencyTable {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    hasher: crate::sync::ShardHasher,
    /// Keys held across all shards (in flight or done).
    count: AtomicUsize,
    window_ms: u64,
    capacity: usize,
}

/// What to do with a keyed request.
pub enum Begin<'a> {
    /// First time: execute, then `finish` the guard with the answer.
    Execute(InFlightGuard<'a>),
    /// Seen before with the same request: send this, once `lsn` is durable.
    Replay(StoredReply, Option<u64>),
    /// Seen before with a different request.
    Mismatch,
    /// The first request with this key is still executing.
    InFlight,
    /// The table is at its bound.
    Full,
}

/// Marks a key in flight; dropping it without `finish` (an error that should not be
/// remembered, or a panic) forgets the key so a retry executes.
pub struct InFlightGuard<'a> {
    table: &'a IdempotencyTable,
    key: Option<Arc<str>>,
}

impl InFlightGuard<'_> {
    /// Stores the answer for later retries (`lsn`: the log record that carries it).
    pub fn finish(mut self, reply: StoredReply, lsn: Option<u64>) {
        if let Some(key) = self.key.take() {
            let mut shard = self.table.shard(&key).lock();
            match shard.slots.get_mut(&key) {
                Some(slot) if matches!(slot.state, SlotState::InFlight) => {
                    slot.state = SlotState::Done { reply, lsn };
                }
                _ => panic!("idempotency key finished but not in flight"),
            }
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut shard = self.table.shard(&key).lock();
            if shard.slots.remove(&key).is_some() {
                self.table.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The full key: scope (the concatenation of its parts) and caller's key, joined by a byte
/// neither may contain. Joined on the stack, so the key costs one allocation (its `Arc`).
fn full_key(scope: &[&str], key: &str) -> Arc<str> {
    let mut full: smallvec::SmallVec<[u8; 320]> = smallvec::SmallVec::new();
    for part in scope {
        full.extend_from_slice(part.as_bytes());
    }
    full.push(b'\n');
    full.extend_from_slice(key.as_bytes());
    match std::str::from_utf8(&full) {
        Ok(full) => Arc::from(full),
        Err(_) => unreachable!("strings joined by a newline are a string"),
    }
}

/// A stable 64-bit fingerprint of a request (FNV-1a): stable across processes, so that a
/// fingerprint written to the log still matches after a restart.
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().copied().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

impl IdempotencyTable {
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        assert!(window_ms > 0, "an idempotency window of 0 ms remembers nothing");
        IdempotencyTable {
            shards: (0..SHARDS).map(|_| CachePadded::new(Mutex::new(Shard::default()))).collect(),
            hasher: Default::default(),
            count: AtomicUsize::new(0),
            window_ms,
            capacity,
        }
    }

    #[expect(clippy::cast_possible_truncation, reason = "only the hash's low bits pick a shard")]
    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(key.as_bytes());
        &self.shards[(hasher.finish() as usize) & (SHARDS - 1)]
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops this shard's keys older than the window.
    fn expire(&self, shard: &mut Shard, now_ms: u64) {
        while let Some((seen_ms, _)) = shard.order.front() {
            if seen_ms.saturating_add(self.window_ms) > now_ms {
                break;
            }
            let Some((seen_ms, key)) = shard.order.pop_front() else {
                break;
            };
            let Some(slot) = shard.slots.get_mut(&key) else { continue };
            if slot.seen_ms != seen_ms {
                continue; // the entry of an earlier attempt with this key that was forgotten
            }
            match slot.state {
                SlotState::Done { .. } => {
                    shard.slots.remove(&key);
                    self.count.fetch_sub(1, Ordering::Relaxed);
                }
                // A key still in flight stays (its request has not answered yet) and gets a new
                // window from now; the loop stops at it, as its instant is now.
                SlotState::InFlight => {
                    slot.seen_ms = now_ms;
                    shard.order.push_back((now_ms, key));
                }
            }
        }
    }

    /// Drops every shard's keys older than the window (the reaper calls it each tick).
    pub fn expire_all(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            self.expire(&mut shard.lock(), now_ms);
        }
    }

    pub fn begin(&self, scope: &str, key: &str, fingerprint: u64, now_ms: u64) -> Begin<'_> {
        self.begin_in(&[scope], key, fingerprint, now_ms)
    }

    /// `begin` with the scope in parts (`["user:", id]`), so a caller need not join them.
    pub fn begin_in(&self, scope: &[&str], key: &str, fingerprint: u64, now_ms: u64) -> Begin<'_> {
        let key = full_key(scope, key);
        let mut shard = self.shard(&key).lock();
        self.expire(&mut shard, now_ms);
        match shard.slots.get(&key) {
            Some(slot) if slot.fingerprint != fingerprint => Begin::Mismatch,
            Some(Slot { state: SlotState::Done { reply, lsn }, .. }) => {
                Begin::Replay(reply.clone(), *lsn)
            }
            Some(Slot { state: SlotState::InFlight, .. }) => Begin::InFlight,
            None => {
                // Count first, so two shards racing for the last place cannot both pass.
                if self.count.fetch_add(1, Ordering::Relaxed) >= self.capacity {
                    self.count.fetch_sub(1, Ordering::Relaxed);
                    return Begin::Full;
                }
                let slot = Slot { fingerprint, seen_ms: now_ms, state: SlotState::InFlight };
                shard.slots.insert(key.clone(), slot);
                shard.order.push_back((now_ms, key.clone()));
                Begin::Execute(InFlightGuard { table: self, key: Some(key) })
            }
        }
    }

    /// Forgets every finished answer (keys in flight stay): a replica that stops leading
    /// drops answers that may belong to decisions that never committed, then puts back the
    /// committed ones with `restore`.
    pub fn forget_answers(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.slots.len();
            shard.slots.retain(|_, slot| matches!(slot.state, SlotState::InFlight));
            let removed = before - shard.slots.len();
            self.count.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    /// Puts back a remembered answer (recovery from the log). Older than the window: ignored.
    pub fn restore(
        &self,
        scope: &str,
        key: &str,
        fingerprint: u64,
        reply: StoredReply,
        seen_ms: u64,
        now_ms: u64,
    ) {
        if seen_ms.saturating_add(self.window_ms) <= now_ms {
            return;
        }
        let key = full_key(&[scope], key);
        let mut shard = self.shard(&key).lock();
        let slot = Slot { fingerprint, seen_ms, state: SlotState::Done { reply, lsn: None } };
        if shard.slots.insert(key.clone(), slot).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
            shard.order.push_back((seen_ms, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: &'static str) -> StoredReply {
        StoredReply { status: 201, body: Bytes::from_static(body.as_bytes()), code: None }
    }

    #[test]
    fn same_key_same_request_replays_and_different_request_is_refused() {
        let table = IdempotencyTable::new(1_000, 10);
        let Begin::Execute(guard) = table.begin("user:a", "k1", 7, 0) else { panic!() };
        assert!(matches!(table.begin("user:a", "k1", 7, 1), Begin::InFlight));
        assert!(matches!(table.begin("user:a", "k1", 8, 1), Begin::Mismatch));
        guard.finish(reply("first"), Some(3));
        assert!(
            matches!(table.begin("user:a", "k1", 7, 2), Begin::Replay(r, Some(3)) if r == reply("first"))
        );
        assert!(matches!(table.begin("user:a", "k1", 8, 2), Begin::Mismatch));
        // Another scope with the same key is another key.
        assert!(matches!(table.begin("user:b", "k1", 8, 2), Begin::Execute(_)));
    }

    #[test]
    fn keys_expire_after_the_window_and_the_table_is_bounded() {
        let table = IdempotencyTable::new(1_000, 2);
        let Begin::Execute(g) = table.begin("s", "a", 1, 0) else { panic!() };
        g.finish(reply("a"), None);
        let Begin::Execute(g) = table.begin("s", "b", 1, 10) else { panic!() };
        g.finish(reply("b"), None);
        assert!(matches!(table.begin("s", "c", 1, 20), Begin::Full));
        assert_eq!(table.len(), 2);
        // Past the window, "a" is gone: its slot is free and the key executes again.
        let Begin::Execute(g) = table.begin("s", "a", 1, 1_000) else { panic!() };
        drop(g);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_forgotten_attempt_does_not_shorten_the_next_window() {
        let table = IdempotencyTable::new(1_000, 10);
        let Begin::Execute(g) = table.begin("s", "a", 1, 0) else { panic!() };
        drop(g); // e.g. a 400: not remembered
        let Begin::Execute(g) = table.begin("s", "a", 1, 900) else { panic!() };
        g.finish(reply("second"), None);
        // The first attempt's window would end at 1_000; the remembered answer's at 1_900.
        assert!(matches!(table.begin("s", "a", 1, 1_500), Begin::Replay(..)));
        assert!(matches!(table.begin("s", "a", 1, 1_900), Begin::Execute(_)));
    }

    #[test]
    fn a_dropped_guard_forgets_the_key() {
        let table = IdempotencyTable::new(1_000, 10);
        let Begin::Execute(g) = table.begin("s", "a", 1, 0) else { panic!() };
        drop(g);
        assert!(table.is_empty());
        assert!(matches!(table.begin("s", "a", 2, 0), Begin::Execute(_)));
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"POST", b"/v1/x"]), fingerprint(&[b"POST", b"/v1/x"]));
    }
}
