//! livestock's pure core: domain types, the rules, the events they produce, and every bound.
//!
//! Nothing here does I/O, spawns a thread, or reads a clock: time comes in as `now_ms`
//! arguments. This crate depends on no runtime (no tokio, no hyper), so the compiler enforces
//! that purity. The concurrent allocator, log replay, the property tests and the simulator all
//! decide through these functions, so the rules exist once.
//!
//! # Layout
//! | file | concept |
//! |---|---|
//! | `limits.rs` | every bound of the system, related by `const` asserts |
//! | `ids.rs` | deal, stream, user and hold ids; idempotency keys |
//! | `counters.rs` | a deal's stock, held and sold counts, packed into one word |
//! | `deal.rs` | a deal's spec, state and window rules |
//! | `hold.rs` | a hold and its state transitions |
//! | `command.rs` | what a client asks for, and the outcomes |
//! | `event.rs` | decided changes: what the log records and replay applies |
//! | `error.rs` | every refusal as an enum with a stable machine code |
//! | `draw.rs` | the draw: its commitment, its seeded order, verifiable by anyone |
//! | `waitlist.rs` | waitlist options, an entry's life, who is served first |
//! | `time.rs` | instants in messages, as RFC 3339 UTC |

#![forbid(unsafe_code)]

pub mod command;
pub mod counters;
pub mod deal;
pub mod draw;
pub mod error;
pub mod event;
pub mod hold;
pub mod ids;
pub mod limits;
pub mod time;
pub mod waitlist;
