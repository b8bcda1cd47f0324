//! The HTTP/JSON API: hyper 1.x on tokio.
//!
//! `routes` maps (method, path) to endpoints, `wire` turns bodies into commands and outcomes
//! into JSON, `error` maps error codes to statuses, `server` runs connections and the reaper.

pub mod auth;
pub mod error;
pub mod rate;
pub mod routes;
pub mod server;
pub mod wire;

pub use server::Server;
