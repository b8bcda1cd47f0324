//! The one place that imports atomics and locks.
//!
//! Under `--cfg loom` the same names resolve to loom's model-checked versions, so the
//! allocator's concurrent code can be explored interleaving by interleaving without a second
//! copy of it (the pattern of tokio's `src/loom` and crossbeam's `primitive` module).

#[cfg(not(loom))]
mod imp {
    pub use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
    pub use std::sync::Arc;

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
