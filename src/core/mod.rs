//! The pure core: domain types, the rules, and the events they produce.
//!
//! Nothing here does I/O, spawns a thread, or reads a clock: time comes in as `now_ms`
//! arguments. The concurrent allocator, log replay, the property tests and the simulator all
//! decide through these functions, so the rules exist once.

pub mod command;
pub mod counters;
pub mod deal;
pub mod error;
pub mod event;
pub mod hold;
pub mod ids;
