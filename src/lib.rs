//! livestock: a flash-sale inventory kernel.
//!
//! A commerce backend reserves units of a deal for a user (a hold that expires), then confirms
//! the sale or releases the units. livestock never sells a unit twice.
//!
//! The pure core (ids, deals, holds, counters, commands, events, errors, limits) is the
//! `livestock-core` crate (`crates/core`); the load generator is `livestock-load`
//! (`crates/load`), a binary of its own so that this server links none of its clients.
//!
//! # Layout
//! | file | concept |
//! |---|---|
//! | `clock.rs` | time, injected; the only reader of the OS clock |
//! | `sync.rs` | the one import point of atomics and locks (std or loom) |
//! | `alloc/` | the concurrent allocator: the hot path; no I/O, no clock |
//! | `idempotency.rs` | remembered answers to keyed requests |
//! | `node.rs` | the shell around the allocator: clock, idempotency, event sink, reaper |
//! | `http/` | routes, wire types, errors as status + JSON, auth, rate limits, the live feed, the hyper server |
//! | `wal/` | the write-ahead log, checkpoints, recovery, the storage trait |
//! | `cluster/` | replication on openraft: log storage, state machine, peer network |
//! | `config.rs` | the configuration: defaults < TOML file < environment < flags |
//! | `metrics.rs` | counters and histograms for `/metrics` |
//!
//! See `docs/ARCHITECTURE.md` for the invariants and the life of a reserve request.

#![forbid(unsafe_code)]

pub mod alloc;
pub mod clock;
#[cfg(not(loom))]
pub mod config;
pub mod idempotency;
pub mod sync;

// The shell's I/O modules are left out of loom builds: tokio drops its networking under
// `--cfg loom`, and the models exercise the concurrent core, not sockets or files.
#[cfg(not(loom))]
pub mod cluster;
#[cfg(not(loom))]
pub mod http;
#[cfg(not(loom))]
pub mod metrics;
#[cfg(not(loom))]
pub mod node;
#[cfg(not(loom))]
pub mod wal;
