//! The HTTP/JSON API: hyper 1.x on tokio. The only layer that knows statuses and JSON.
//!
//! | file | concept |
//! |---|---|
//! | `endpoints.rs` | the endpoint table (method, path, access, operation, handler) and routing |
//! | `handlers.rs` | one handler per endpoint: path and body to an answer or a command |
//! | `exchange.rs` | one request start to answer: access, media type, size, idempotency, metrics |
//! | `cluster.rs` | cluster mode: the leader answers, a follower forwards (or refuses sold-out) |
//! | `cluster_node.rs` | serving a replica: API, peer listener, forwarded requests |
//! | `server.rs` | the listener and connections, graceful shutdown |
//! | `options.rs` | the HTTP layer's settings, from the configuration |
//! | `response.rs` | an answer as a response, with its error code for the metrics; 304s |
//! | `body.rs` | a response body: the whole answer, or a stream (the live feed, events) |
//! | `feed.rs` | the live feed: subscriptions and the publisher task |
//! | `feed_subscriber.rs` | one subscriber's event stream: newest frames, heartbeat, its seat |
//! | `feed_frame.rs` | what the feed says of a deal, and its bytes (events, availability, ETag) |
//! | `feed_change.rs` | when the feed publishes a deal (at once, or once per interval) |
//! | `events.rs` | the event stream (`GET /v1/events`): decided changes read from the log |
//! | `event_json.rs` | each kind of event as JSON: the one `match` over `Event` |
//! | `live_page.rs` | `GET /live/{stream_id}`: the page that shows a stream's feed, and its policy |
//! | `wire.rs` | request bodies to commands, outcomes to JSON |
//! | `error.rs` | every error code's status, and the JSON error body |
//! | `auth.rs` | bearer tokens and roles |
//! | `rate.rs` | the per-user rate limit |
//! | `refusal.rs` | the refusal most of a burst gets (sold out, ended), without allocating |
//! | `refusal_body.rs` | those refusals' bodies, preformatted per thread and deal |
//! | `admin_client.rs` | `livestock cluster ...`: the admin endpoints from the command line |

pub mod admin_client;
pub mod auth;
pub mod body;
pub mod cluster;
pub mod cluster_node;
pub mod endpoints;
pub mod error;
pub mod event_json;
pub mod events;
pub mod exchange;
pub mod feed;
pub mod feed_change;
pub mod feed_frame;
pub mod feed_subscriber;
pub mod handlers;
pub mod live_page;
pub mod options;
pub mod rate;
pub mod refusal;
pub mod refusal_body;
pub mod response;
pub mod server;
pub mod wire;

pub use exchange::{handle, handle_with};
pub use options::ServerOptions;
pub use server::Server;
