//! The one place that imports atomics and locks.
//!
//! Under `--cfg loom` the same names resolve to loom's model-checked versions, so the
//! allocator's concurrent code can be explored interleaving by interleaving without a second
//! copy of it (the pattern of tokio's `src/loom` and crossbeam's `primitive` module).

#[cfg(not(loom))]
mod imp {
    pub use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
    pub use std::sync::Arc;

    /// A deal's counters word (`alloc/deal_slot.rs`). `std` has no 128-bit atomic on stable;
    /// portable-atomic's is `lock cmpxchg16b` for a compare-and-swap and, on x86-64 with AVX, a
    /// plain `vmovdqa` for a load (what each CPU gets: `livestock_core::counters`).
    pub use portable_atomic::AtomicU128;

    /// `parking_lot` rather than `std`: no poisoning (a panic is a bug and takes the process
    /// down anyway) and a smaller, faster uncontended path. Never a tokio mutex: no lock in the
    /// allocator is held across an `.await`.
    pub use parking_lot::{Mutex, MutexGuard};

    /// Lock-free reads of rarely written data (the deal registry): a load touches only
    /// thread-local memory, so a burst of reads does not bounce a shared cache line.
    pub type ArcCell<T> = arc_swap::ArcSwap<T>;
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
    pub use loom::sync::Arc;

    /// loom's mutex with parking_lot's signature (`lock` returns the guard directly).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);
    pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }
        pub fn lock(&self) -> MutexGuard<'_, T> {
            match self.0.lock() {
                Ok(guard) => guard,
                Err(_) => panic!("poisoned lock under loom"),
            }
        }
    }

    /// A 128-bit atomic for the models, which loom lacks (it models `std`'s atomics, and those
    /// stop at 64 bits): an `AtomicUsize` holding the *index* of the value, in a table that
    /// gives each distinct value one index, forever.
    ///
    /// Why that is the same atomic: what an atomic does depends on its values only through
    /// equality (a compare-and-swap succeeds when the value equals the expected one; a load
    /// returns some store's value). Value -> index is one-to-one, so the index atomic has
    /// exactly the executions of a 128-bit one, and loom explores them with its full model:
    /// a load may read any store coherence allows, and each ordering argument makes exactly the
    /// happens-before edges it makes on hardware. A mutex around the value would be simpler
    /// and weaker as a model: every access, loads included, would acquire and release, so a
    /// missing `Acquire` on the counters word (the `shut` bit publishes the lifecycle) could
    /// never show up. The table is bookkeeping, not shared memory of the program: loom runs
    /// one thread at a time and no loom operation happens while it is locked, so its lock is
    /// never contended and adds no interleavings.
    pub struct AtomicU128 {
        index: loom::sync::atomic::AtomicUsize,
        values: std::sync::Mutex<Vec<u128>>,
    }

    impl AtomicU128 {
        pub fn new(value: u128) -> Self {
            AtomicU128 {
                index: loom::sync::atomic::AtomicUsize::new(0),
                values: std::sync::Mutex::new(vec![value]),
            }
        }

        fn values(&self) -> std::sync::MutexGuard<'_, Vec<u128>> {
            match self.values.lock() {
                Ok(values) => values,
                Err(_) => panic!("a model thread panicked holding the value table"),
            }
        }

        /// The value's index, giving it the next one the first time it is seen.
        fn index_of(&self, value: u128) -> usize {
            let mut values = self.values();
            match values.iter().position(|v| *v == value) {
                Some(index) => index,
                None => {
                    values.push(value);
                    values.len() - 1
                }
            }
        }

        fn value_at(&self, index: usize) -> u128 {
            self.values()[index]
        }

        pub fn load(&self, order: Ordering) -> u128 {
            self.value_at(self.index.load(order))
        }

        pub fn compare_exchange_weak(
            &self,
            current: u128,
            new: u128,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u128, u128> {
            let (current, new) = (self.index_of(current), self.index_of(new));
            match self.index.compare_exchange_weak(current, new, success, failure) {
                Ok(previous) => Ok(self.value_at(previous)),
                Err(actual) => Err(self.value_at(actual)),
            }
        }
    }

    /// A model of `ArcSwap` for loom: a mutex around an `Arc`.
    pub struct ArcCell<T>(Mutex<std::sync::Arc<T>>);

    impl<T> ArcCell<T> {
        pub fn from_pointee(value: T) -> Self {
            ArcCell(Mutex::new(std::sync::Arc::new(value)))
        }
        pub fn load(&self) -> std::sync::Arc<T> {
            self.0.lock().clone()
        }
        pub fn store(&self, value: std::sync::Arc<T>) {
            *self.0.lock() = value;
        }
    }
}

pub use imp::*;

/// Picks shards. Random keys in production, so a caller cannot aim its keys at one shard;
/// fixed keys under loom, whose executions must repeat exactly.
#[cfg(not(loom))]
pub type ShardHasher = std::collections::hash_map::RandomState;
#[cfg(loom)]
pub type ShardHasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// Locks of the shell's own OS threads (the log writer and checkpointer), which loom does not
/// model: they stay real under `--cfg loom` so the crate still builds there.
pub mod os {
    pub use parking_lot::{Condvar, Mutex};
}
