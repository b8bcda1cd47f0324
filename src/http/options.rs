//! The HTTP layer's settings, from the configuration.

use std::sync::Arc;

use crate::config::Config;
use crate::http::auth::Tokens;
use crate::http::events::Events;
use crate::http::feed::Feed;
use crate::http::rate::RateLimiter;

/// The HTTP layer's settings: limits, access control, rate limits, deal defaults, the live
/// feed. Built from
/// the configuration (`ServerOptions::from_config`); the default is the embedded one (no
/// tokens, no rate limit, the documented limits).
pub struct ServerOptions {
    pub body_bytes_max: usize,
    pub header_read_timeout_ms: u64,
    pub connections_max: usize,
    pub headers_max: usize,
    pub metrics_public: bool,
    /// The live feed and availability without a token (else the client role).
    pub feed_public: bool,
    /// The live feed's subscriptions; its publisher runs with the server (`server.rs`).
    pub feed: Arc<Feed>,
    /// The event stream's subscriptions (`GET /v1/events`); ended by the server as it stops.
    pub events: Arc<Events>,
    pub tokens: Tokens,
    pub rate: RateLimiter,
    /// Filled into a created deal that names no `hold_ttl_ms` / `hold_ttl_ms_max`.
    pub hold_ttl_ms_default: u64,
    pub hold_ttl_ms_max: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions::from_config(&Config::default())
    }
}

impl ServerOptions {
    pub fn from_config(config: &Config) -> Self {
        ServerOptions {
            body_bytes_max: config.body_bytes_max,
            header_read_timeout_ms: config.header_read_timeout_ms,
            connections_max: config.connections_max,
            headers_max: config.headers_max,
            metrics_public: config.metrics_public,
            feed_public: config.feed_public,
            feed: Arc::new(Feed::new(config.feed_interval_ms, config.feed_subscribers_max)),
            events: Arc::new(Events::new(config.events_subscribers_max)),
            tokens: Tokens::new(&config.admin_tokens, &config.client_tokens),
            rate: RateLimiter::new(config.user_rate_per_s, config.user_rate_burst),
            hold_ttl_ms_default: config.hold_ttl_ms_default,
            hold_ttl_ms_max: config.hold_ttl_ms_max,
        }
    }
}
