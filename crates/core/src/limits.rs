//! Every bound of the system, in one place.
//!
//! A number that limits livestock lives here and nowhere else, so an SRE can read the whole
//! envelope in one screen and a reviewer can see how the bounds relate (the `const` asserts at
//! the bottom fail the build if an edit breaks a relation).

/// Deal ids, stream ids: 1..=64 chars of `[A-Za-z0-9._-]`.
pub const DEAL_ID_LEN_MAX: usize = 64;
/// Stream ids share the deal id alphabet and length.
pub const STREAM_ID_LEN_MAX: usize = 64;
/// User ids are opaque to us, but bounded: they are keys in per-user maps.
pub const USER_ID_LEN_MAX: usize = 128;
/// Idempotency keys: opaque, printable ASCII, bounded (they are stored for a window).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;

/// Counters are packed into one 128-bit word, 40 bits each (see `core::counters`), so one deal
/// can hold at most 2^40 - 1 units (1,099,511,627,775: a billion-unit drop fits a thousand
/// times over).
pub const COUNTER_BITS: u32 = 40;
pub const DEAL_STOCK_UNITS_MAX: u64 = (1 << COUNTER_BITS) - 1;
/// Units one hold (or one cart line) may take.
pub const HOLD_QTY_MAX: u32 = 1_000;
/// Lines in one cart reserve.
pub const CART_LINES_MAX: usize = 32;
/// Entries one deal's waitlist may hold waiting at once (`waitlist_max` is at most this): a
/// drop's turned-away viewers, with room to spare.
pub const WAITLIST_MAX: u32 = 1_000_000;
/// A draw window's bounds: long enough for a crowd's taps to arrive, short enough that a drop
/// is still live when it closes. It must close before the deal's `ends_at`.
pub const DRAW_WINDOW_MS_MIN: u64 = 1_000;
pub const DRAW_WINDOW_MS_MAX: u64 = 60 * 60 * 1_000;
/// Entries one draw may take (its reveal lists them all).
pub const DRAW_ENTRANTS_MAX: u32 = 1_000_000;
/// Deals alive in memory at once (ended deals count until removed).
pub const DEALS_MAX: usize = 100_000;

/// Hold time-to-live bounds. A hold shorter than a second cannot survive a payment round trip;
/// one longer than a day is not a flash sale.
pub const HOLD_TTL_MS_MIN: u64 = 1_000;
pub const HOLD_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// Default TTL of a hold when neither the request nor the deal names one.
pub const HOLD_TTL_MS_DEFAULT: u64 = 10 * 60 * 1_000;

/// Resolved (confirmed, released, expired) holds stay readable, and their confirm/release stays
/// retry-safe, for this long after they resolve; then they are forgotten.
pub const RESOLVED_HOLD_RETENTION_MS_DEFAULT: u64 = 60 * 60 * 1_000;

/// Expiry runs on a timer with this granularity: a hold's units return to `available` at most
/// one tick (plus reaper scheduling delay) after its `expires_at`.
pub const EXPIRY_TICK_MS: u64 = 10;

/// Idempotency keys are remembered for a window and bounded in number; past the bound a new key
/// is refused (503) rather than silently evicting a key whose window has not closed.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 60 * 60 * 1_000;
pub const IDEMPOTENCY_KEYS_MAX_DEFAULT: usize = 1_000_000;
/// How long a retry waits for the first request with the same key to finish.
pub const IDEMPOTENCY_WAIT_MS_MAX: u64 = 5_000;

/// Request bodies larger than this are refused with 413 before they are read.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;

/// One log record's payload. The largest record is a stream end listing every hold it
/// released, at most 10 bytes a hold (a hold sequence number): room for about 6.7 million
/// open holds in one stream's deals. The stock limit does not bound that (a billion units can
/// be held by a billion holds), so an end counts the open holds first and refuses past
/// [`END_HOLDS_MAX`].
pub const WAL_RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Open holds one end (of a deal, or of a stream's deals) may release: counted before the deals
/// are shut, and refused (400, nothing changed) past this. The rest of the record's room is for
/// reserves that were in flight between the count and the shut (at most one per open
/// connection and cart line) and the deal ids.
pub const END_HOLDS_MAX: usize = 6_000_000;
// An end's record: 10 bytes a hold at most, with 700,000 holds' room to spare.
const _: () = assert!(END_HOLDS_MAX * 10 + 7_000_000 <= WAL_RECORD_BYTES_MAX);
/// A log segment is closed and a new one started past this size.
pub const WAL_SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// A raft log segment (`cluster/log_store`) is closed and a new one started past this size.
pub const RAFT_LOG_SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// What a raft log entry adds around its record: the log id, the committed log id the frame
/// carries, the payload's tag, or a whole membership config (node ids and peer addresses).
pub const RAFT_ENTRY_ENVELOPE_BYTES_MAX: usize = 64 * 1024;
/// One raft log entry's encoded payload.
pub const RAFT_ENTRY_BYTES_MAX: usize = WAL_RECORD_BYTES_MAX + RAFT_ENTRY_ENVELOPE_BYTES_MAX;
/// The raft log writer lets a new committed log id ride on the next batch's fsync; when no
/// batch comes for this long, it writes the id to its meta file instead. Bounds how long a
/// committed id stays volatile on an idle log (see `cluster/log_store.rs`, "Committed").
pub const RAFT_COMMITTED_IDLE_PERSIST_MS: u64 = 20;
/// Checkpoints are written at least this often while the log grows...
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// ...and as soon as this much log was written since the last one.
pub const CHECKPOINT_LOG_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// Relaxed durability: the log is fsynced at least this often.
pub const FSYNC_INTERVAL_MS_DEFAULT: u64 = 10;
/// Relaxed durability: the writer lets records gather at least this long between two writes.
/// Without it, it woke and wrote once per request (nothing else paces it: the fsync is on the
/// syncer), and on a busy core those wake-ups pre-empted the requests themselves: relaxed had
/// a worse tail than strict at the same rate. Strict gets the same pacing from its fsync.
/// Adds at most this much to a relaxed answer, only when the previous write was that recent.
pub const RELAXED_WRITE_GATHER_US: u64 = 100;
/// The checkpointer applies durable batches to its shadow state at most this often (it sleeps
/// between takes so that a busy log wakes it per period, not per group commit). Bounds how far
/// the shadow, hence a checkpoint, trails the log: by this much plus one checkpoint.
pub const SHADOW_APPLY_PERIOD_MS: u64 = 20;
/// A checkpoint is built in pieces (a shard of holds or user counts, this many replies, this
/// many bytes checksummed or written), and between pieces the checkpointer pauses once it has
/// worked `CHECKPOINT_SLICE_US`, for `CHECKPOINT_IDLE_PER_BUSY` times as long as it worked.
/// So a checkpoint takes at most a quarter of a core while it runs, in slices of about a
/// millisecond, instead of the scheduler's fair share of a shared core for its whole length:
/// with a million open holds, checkpoints raised the reserve p99 of a server on one core 32
/// times, paced 1.7 times (docs/benchmarks.md, "Checkpoints under load"). It takes four
/// times as long in wall time. The shadow's catch-up after a checkpoint is paced the same way.
pub const CHECKPOINT_PIECE_ITEMS: usize = 4_096;
pub const CHECKPOINT_PIECE_BYTES: usize = 1024 * 1024;
pub const CHECKPOINT_SLICE_US: u64 = 1_000;
pub const CHECKPOINT_IDLE_PER_BUSY: u32 = 3;
/// A checkpoint file: at most this large (a million holds take ~60 MB).
pub const CHECKPOINT_BYTES_MAX: usize = 4 * 1024 * 1024 * 1024 - 1;

/// Shards of the concurrent maps (holds, per-user counts, idempotency keys). A power of two so
/// that a shard is picked with a mask; 64 keeps two cores' collisions rare at little memory.
/// Under loom, 4: the models explore every interleaving, and fewer locks keep them small while
/// still letting two holds share a shard or not.
pub const SHARDS: usize = if cfg!(loom) { 4 } else { 64 };

/// Unix-epoch milliseconds we accept for timestamps: year 2000 to year 9999.
pub const TIMESTAMP_MS_MIN: u64 = 946_684_800_000;
pub const TIMESTAMP_MS_MAX: u64 = 253_402_300_799_999;

const _: () = assert!(SHARDS.is_power_of_two());
const _: () =
    assert!(HOLD_TTL_MS_MIN <= HOLD_TTL_MS_DEFAULT && HOLD_TTL_MS_DEFAULT <= HOLD_TTL_MS_MAX);
const _: () = assert!((HOLD_QTY_MAX as u64) <= DEAL_STOCK_UNITS_MAX);
// Three counters plus the closed flag must fit one u128 (bit 126 tags the encoded word).
const _: () = assert!(3 * COUNTER_BITS < 126);
// A stock is a u64 everywhere outside the word, and a JSON number a client reads exactly.
const _: () = assert!(DEAL_STOCK_UNITS_MAX < 1 << f64::MANTISSA_DIGITS);
const _: () = assert!(DEAL_STOCK_UNITS_MAX >= 1_000_000_000);
// A cart can never take more than one deal could hold, so summing its lines cannot overflow.
const _: () = assert!((CART_LINES_MAX as u64) * (HOLD_QTY_MAX as u64) <= DEAL_STOCK_UNITS_MAX);
const _: () = assert!(EXPIRY_TICK_MS < HOLD_TTL_MS_MIN);

// Peers: the raft network between cluster members (`src/cluster/network.rs`,
// `src/cluster/peer_server.rs`). Kept in a block of their own with their relations below it.

/// A raft RPC body (an append, a vote, a leadership transfer) and its answer. One append must
/// carry the largest record with room beside it; openraft's `max_payload_entries` bounds how
/// many entries an append carries, and the node's configuration keeps entries x their usual
/// size far under this (an append over it is refused with 413, and replication backs off).
pub const PEER_RPC_BYTES_MAX: usize = 2 * WAL_RECORD_BYTES_MAX;
/// A snapshot sent to a follower that fell behind the purged log: the encoded checkpoint plus
/// its metadata and the leader's vote (a few hundred bytes; 1 MiB of room). u64: it passes the
/// 32-bit range.
pub const PEER_SNAPSHOT_BYTES_MAX: u64 = CHECKPOINT_BYTES_MAX as u64 + 1024 * 1024;
/// A snapshot is sent with a deadline of at least this long...
pub const PEER_SNAPSHOT_TIMEOUT_MS_MIN: u64 = 10_000;
/// ...plus its size at this rate (a 300 MB snapshot: 10 s + 37 s): openraft's own RPC timeout
/// (`install_snapshot_timeout`) is sized for votes, not for hundreds of megabytes.
pub const PEER_SNAPSHOT_BYTES_PER_S_MIN: u64 = 8 * 1024 * 1024;
/// A client write forwarded by a follower to the leader, and the leader's answer: a request
/// body with its headers, an answer with its own.
pub const PEER_FORWARD_BYTES_MAX: usize = 1024 * 1024;
/// Forwarded writes one node has in flight at once: HTTP/1.1 takes one connection per request
/// in flight, so this bounds the connections a follower opens to the leader for its clients.
pub const PEER_FORWARDS_IN_FLIGHT_MAX: usize = 64;
/// Connections the peer listener serves at once; past it a new one is closed at once.
pub const PEER_CONNECTIONS_MAX: usize = 512;
/// An idle peer connection is closed by the listener after this long...
pub const PEER_IDLE_MS_MAX: u64 = 30_000;
/// ...and dropped by the client's pool sooner, so that a request never races the close.
pub const PEER_POOL_IDLE_MS: u64 = 20_000;
/// An unreachable peer is retried after this long, doubling up to the max: a dead node is not
/// hammered, and one that is back is found within half a second.
pub const PEER_BACKOFF_MS_MIN: u64 = 50;
pub const PEER_BACKOFF_MS_MAX: u64 = 500;

const _: () = assert!(PEER_RPC_BYTES_MAX > WAL_RECORD_BYTES_MAX);
const _: () = assert!(PEER_SNAPSHOT_BYTES_MAX > CHECKPOINT_BYTES_MAX as u64);
const _: () = assert!(PEER_FORWARD_BYTES_MAX >= 8 * REQUEST_BODY_BYTES_MAX);
// Every other member forwarding at its bound still leaves room for raft's own connections
// (replication, heartbeats, snapshots, votes: a handful per member), for clusters of up to 7.
const _: () = assert!(6 * (PEER_FORWARDS_IN_FLIGHT_MAX + 8) <= PEER_CONNECTIONS_MAX);
const _: () = assert!(PEER_POOL_IDLE_MS < PEER_IDLE_MS_MAX);
const _: () = assert!(PEER_BACKOFF_MS_MIN < PEER_BACKOFF_MS_MAX);
// A raft entry's length must fit a frame's u32 length field.
const _: () = assert!(RAFT_ENTRY_BYTES_MAX <= u32::MAX as usize);

// ---------------------------------------------------------------- metrics

/// Per-thread cells of the request counters and latency histograms (`metrics/cells.rs`): as
/// many threads as this answer without sharing a written cache line; more share cells. Each
/// cell is about 9 KiB.
pub const METRIC_CELLS: usize = 16;

// ---------------------------------------------------------------- http

/// Deals a thread keeps preformatted refusal bodies for (`http/refusal_body.rs`) before it
/// starts over: a bound on memory (a deal's four bodies are a few hundred bytes); a deal's
/// bodies are rebuilt on its next refusal.
pub const REFUSAL_BODIES_DEALS_MAX: usize = 1_024;

// ---------------------------------------------------------------- feed

/// The live stock feed (`http/feed.rs`): the publisher reads the counters of every deal someone
/// follows this often. A change of a deal's state (sold out, back in stock, paused, ended) goes
/// out on the tick that sees it, so at most this long (plus scheduling delay) after it happened;
/// a change of counters alone waits for `feed_interval_ms`. A tick reads only followed deals.
pub const FEED_TICK_MS: u64 = 10;
/// Events per deal at most once per `feed_interval_ms` (configured) for counter changes:
/// ten a second by default is smooth for a progress bar, and bounds the bytes a crowd of
/// viewers costs during a burst (one frame per deal per interval, whatever the reserve rate).
pub const FEED_INTERVAL_MS_DEFAULT: u64 = 100;
/// Below one tick the interval means nothing (the publisher cannot look more often); a minute
/// is the longest a viewer's counter may trail.
pub const FEED_INTERVAL_MS_MIN: u64 = FEED_TICK_MS;
pub const FEED_INTERVAL_MS_MAX: u64 = 60_000;
/// Feed subscribers (deal and stream feeds together) one server keeps at once; past it a new
/// one gets 503 `feed_full`. Each is an open connection, so the default is half the default
/// `connections_max` (10,000): a crowd of viewers cannot take every connection from the
/// commerce backend that reserves.
pub const FEED_SUBSCRIBERS_MAX_DEFAULT: usize = 5_000;
/// A comment line (`: keep-alive`) this often on an open feed: proxies and load balancers drop
/// connections idle for 30-60 s, and a sold-out deal may send nothing for much longer.
pub const FEED_HEARTBEAT_MS: u64 = 15_000;
/// How often the publisher re-reads which deals a followed stream has (a deal created in the
/// stream joins its feed within this): a read of every deal, so not every tick.
pub const FEED_STREAM_REFRESH_MS: u64 = 1_000;
/// Deals one stream feed carries (the first, by id): a stream's snapshot is rebuilt whenever
/// one of its deals changes, so its size is bounded like everything else.
pub const FEED_STREAM_DEALS_MAX: usize = 1_024;
/// The live feed's budget (`http/feed_change.rs`): the share of one core, on average, that
/// writing to feed subscribers' sockets may take from the sale. A write is 7-10 µs on an idle
/// core here (the kernel's TCP send, on loopback the receiver's side too), so 10% is about
/// 10,000 writes a second: 10,000 subscribers of one deal get its counters about once a
/// second, fewer when the core is busy. Changes of state go out at once regardless, but are
/// paid from it too, so a deal flapping between sold out and back in stock waits.
pub const FEED_CPU_SHARE_PERCENT: u64 = 10;
/// What a write is reckoned to cost before the feed has measured one.
pub const FEED_WRITE_NS_INITIAL: u64 = 10_000;
/// Changes of state (sold out, back in stock, ...) a deal's feed keeps for a subscriber that
/// fell behind: it sends them before the newest frame, so a slow viewer still sees a sell-out
/// undone since; past this many in its backlog it skips the oldest (memory stays bounded).
pub const FEED_STATE_FRAMES_KEPT: usize = 4;

const _: () = assert!(FEED_INTERVAL_MS_MIN <= FEED_INTERVAL_MS_DEFAULT);
const _: () = assert!(FEED_INTERVAL_MS_DEFAULT <= FEED_INTERVAL_MS_MAX);
const _: () = assert!(FEED_TICK_MS < FEED_STREAM_REFRESH_MS);

// ---------------------------------------------------------------- event stream

/// The event stream (`GET /v1/events`, `http/events.rs`) reads the log in pieces of at most
/// this many bytes (a record larger than that in one read of its own size): what a subscriber
/// far behind costs per read, whatever the size of the log.
pub const EVENTS_READ_PIECE_BYTES: usize = 256 * 1024;
/// Log frames one subscriber reads and sends as one body chunk (their JSON is 2 to 4 times
/// larger): what the server holds for a subscriber at a time. It reads the next chunk only
/// once the connection took this one, so a slow consumer costs this much, not a queue.
pub const EVENTS_CHUNK_BYTES: usize = 64 * 1024;
/// Event-stream subscribers one server keeps at once; past it 503 `events_full`. Commerce
/// backends and auditors, not viewers: a few each. Each one reads the log from disk (the page
/// cache while it keeps up) on a thread of the blocking pool.
pub const EVENTS_SUBSCRIBERS_MAX_DEFAULT: usize = 64;
/// Log kept behind the newest checkpoint for the event stream, by default: 1 GiB (16 segments
/// of the default size). Without it a checkpoint (every minute under load) deletes the log
/// it covers, and a consumer stopped for longer than that could not resume (410
/// `cursor_expired`). Sized in docs/operations.md ("Event stream").
pub const EVENTS_RETENTION_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;
/// A comment line (`: keep-alive`) this often on an idle event stream, as on the live feed.
pub const EVENTS_HEARTBEAT_MS: u64 = FEED_HEARTBEAT_MS;

const _: () = assert!(EVENTS_CHUNK_BYTES <= EVENTS_READ_PIECE_BYTES);
const _: () = assert!(EVENTS_READ_PIECE_BYTES <= WAL_RECORD_BYTES_MAX);
// A whole number of default segments, so the default means what it says.
const _: () = assert!(EVENTS_RETENTION_BYTES_DEFAULT.is_multiple_of(WAL_SEGMENT_BYTES_MAX_DEFAULT));
