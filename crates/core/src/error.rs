//! What can go wrong with a command, as values. Bugs are panics, not errors.
//!
//! Each operation has its own error enum (so a caller matching on a reserve's error does not see
//! variants a reserve can never produce); every variant maps to one stable machine code in
//! [`ErrorCode`], and the HTTP layer maps codes to statuses in one place.

use crate::ids::{DealId, InvalidId};
use crate::time::Rfc3339;

/// The stable, machine-readable codes of the API. Their strings are a contract: never rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
// Deliberately exhaustive (unlike the per-operation error enums): the HTTP layer maps every
// code to a status in one `match`, and a new code must fail that build until it has one.
pub enum ErrorCode {
    InvalidRequest,
    UnknownDeal,
    UnknownHold,
    UnknownStream,
    UnknownRoute,
    MethodNotAllowed,
    BodyTooLarge,
    /// A mutation's body declared (`Content-Type`) as something other than JSON.
    UnsupportedMediaType,
    DealExists,
    TooManyDeals,
    DealNotStarted,
    DealEnded,
    DealPaused,
    SoldOut,
    InsufficientStock,
    PerUserLimit,
    HoldExpired,
    HoldReleased,
    HoldConfirmed,
    HoldTtlExceeded,
    IdempotencyKeyReused,
    IdempotencyKeyInUse,
    IdempotencyCapacity,
    StorageUnavailable,
    /// A cluster without a reachable leader (an election, a minority side), or a decision that
    /// did not commit in time: retry (with the same idempotency key).
    NoLeader,
    /// The HTTP layer's own: no or an unknown bearer token, the wrong role, a rate limit.
    Unauthorized,
    Forbidden,
    RateLimited,
    /// The live feed has as many subscribers as it is configured to keep (`feed_subscribers_max`).
    FeedFull,
    /// The deal's waitlist has `waitlist_max` entries waiting.
    WaitlistFull,
    UnknownEntry,
    /// A cancel of a waitlist entry that already lapsed (its offer expired or was released).
    EntryLapsed,
    /// A deal's draw has `DRAW_ENTRANTS_MAX` entries.
    DrawFull,
    /// A cart names a deal whose draw is not done yet (its window is open or just closed).
    DrawWindow,
    /// `GET /v1/deals/{id}/draw` of a deal without a draw.
    NoDraw,
    /// The event stream has as many subscribers as it is configured to keep
    /// (`events_subscribers_max`).
    EventsFull,
    /// An event-stream position the log no longer holds (or never held): the consumer must
    /// resynchronize from the current state.
    CursorExpired,
    /// This node cannot serve the endpoint in the mode it runs in (the event stream in
    /// cluster mode, or without a log).
    NotImplemented,
    Internal,
}

impl ErrorCode {
    /// Every code, for tables indexed by code (metrics) and for checks that a list is complete.
    pub const ALL: [ErrorCode; 39] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownDeal,
        ErrorCode::UnknownHold,
        ErrorCode::UnknownStream,
        ErrorCode::UnknownRoute,
        ErrorCode::MethodNotAllowed,
        ErrorCode::BodyTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::DealExists,
        ErrorCode::TooManyDeals,
        ErrorCode::DealNotStarted,
        ErrorCode::DealEnded,
        ErrorCode::DealPaused,
        ErrorCode::SoldOut,
        ErrorCode::InsufficientStock,
        ErrorCode::PerUserLimit,
        ErrorCode::HoldExpired,
        ErrorCode::HoldReleased,
        ErrorCode::HoldConfirmed,
        ErrorCode::HoldTtlExceeded,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::IdempotencyKeyInUse,
        ErrorCode::IdempotencyCapacity,
        ErrorCode::StorageUnavailable,
        ErrorCode::NoLeader,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::FeedFull,
        ErrorCode::WaitlistFull,
        ErrorCode::UnknownEntry,
        ErrorCode::EntryLapsed,
        ErrorCode::DrawFull,
        ErrorCode::DrawWindow,
        ErrorCode::NoDraw,
        ErrorCode::EventsFull,
        ErrorCode::CursorExpired,
        ErrorCode::NotImplemented,
        ErrorCode::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownDeal => "unknown_deal",
            ErrorCode::UnknownHold => "unknown_hold",
            ErrorCode::UnknownStream => "unknown_stream",
            ErrorCode::UnknownRoute => "unknown_route",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::DealExists => "deal_exists",
            ErrorCode::TooManyDeals => "too_many_deals",
            ErrorCode::DealNotStarted => "deal_not_started",
            ErrorCode::DealEnded => "deal_ended",
            ErrorCode::DealPaused => "deal_paused",
            ErrorCode::SoldOut => "sold_out",
            ErrorCode::InsufficientStock => "insufficient_stock",
            ErrorCode::PerUserLimit => "per_user_limit",
            ErrorCode::HoldExpired => "hold_expired",
            ErrorCode::HoldReleased => "hold_released",
            ErrorCode::HoldConfirmed => "hold_confirmed",
            ErrorCode::HoldTtlExceeded => "hold_ttl_exceeded",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::IdempotencyKeyInUse => "idempotency_key_in_use",
            ErrorCode::IdempotencyCapacity => "idempotency_capacity",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::FeedFull => "feed_full",
            ErrorCode::WaitlistFull => "waitlist_full",
            ErrorCode::UnknownEntry => "unknown_entry",
            ErrorCode::EntryLapsed => "entry_lapsed",
            ErrorCode::DrawFull => "draw_full",
            ErrorCode::DrawWindow => "draw_window",
            ErrorCode::NoDraw => "no_draw",
            ErrorCode::EventsFull => "events_full",
            ErrorCode::CursorExpired => "cursor_expired",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A request that is malformed whatever the state: the message says which field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<InvalidId> for Invalid {
    fn from(e: InvalidId) -> Self {
        Invalid(e.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateDealError {
    #[error("a deal with id {0:?} exists")]
    Exists(String),
    #[error("too many deals (at most {0})")]
    TooMany(usize),
    /// The whole sale window is already in the past: such a deal could only ever be `ended`.
    #[error("ends_at: {} is not after the time of creation ({})", Rfc3339(*.ends_at_ms), Rfc3339(*.now_ms))]
    EndsInPast { ends_at_ms: u64, now_ms: u64 },
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DealAdminError {
    #[error("no deal with id {0:?}")]
    UnknownDeal(String),
    #[error("no deal belongs to stream {0:?}")]
    UnknownStream(String),
    #[error("the deal has ended")]
    Ended,
    #[error("only {available} units are available to remove")]
    InsufficientStock { available: u64 },
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveError {
    #[error("no deal with id {0:?}")]
    UnknownDeal(DealId),
    #[error("the deal {deal_id:?} starts at {}", Rfc3339(*.starts_at_ms))]
    NotStarted { deal_id: DealId, starts_at_ms: u64 },
    #[error("the deal {0:?} has ended")]
    Ended(DealId),
    #[error("the deal {0:?} is paused")]
    Paused(DealId),
    #[error("the deal {0:?} is sold out")]
    SoldOut(DealId),
    #[error("the deal {deal_id:?} has {available} units left, fewer than asked")]
    InsufficientStock { deal_id: DealId, available: u64 },
    #[error("user may hold or buy at most {limit} units of deal {deal_id:?}; has {taken}")]
    PerUserLimit { deal_id: DealId, limit: u32, taken: u32 },
    #[error("the waitlist of deal {deal_id:?} is full ({max} entries waiting)")]
    WaitlistFull { deal_id: DealId, max: u32 },
    #[error("the draw of deal {deal_id:?} is full ({max} entries)")]
    DrawFull { deal_id: DealId, max: u32 },
    /// The deal's draw is not done: a single reserve enters it (the allocator routes it
    /// there); a cart cannot.
    #[error("the deal {0:?} is in its draw window: reserve it alone to enter the draw")]
    DrawPending(DealId),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitlistError {
    #[error("no waitlist entry with id {0:?}")]
    UnknownEntry(String),
    #[error("the entry lapsed: its offer expired or was released, or its deal ended")]
    Lapsed,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HoldError {
    #[error("no hold with id {0:?}")]
    UnknownHold(String),
    #[error("the hold expired")]
    Expired,
    #[error("the hold was released")]
    Released,
    #[error("the hold was confirmed")]
    Confirmed,
    #[error("a hold may live at most {max_ms} ms from its creation")]
    TtlExceeded { max_ms: u64 },
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Any command's error: what the allocator's single entry point returns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error(transparent)]
    CreateDeal(#[from] CreateDealError),
    #[error(transparent)]
    DealAdmin(#[from] DealAdminError),
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    #[error(transparent)]
    Hold(#[from] HoldError),
    #[error(transparent)]
    Waitlist(#[from] WaitlistError),
}

impl CommandError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::CreateDeal(e) => match e {
                CreateDealError::Exists(_) => ErrorCode::DealExists,
                CreateDealError::TooMany(_) => ErrorCode::TooManyDeals,
                CreateDealError::EndsInPast { .. } => ErrorCode::InvalidRequest,
                CreateDealError::Invalid(_) => ErrorCode::InvalidRequest,
            },
            CommandError::DealAdmin(e) => match e {
                DealAdminError::UnknownDeal(_) => ErrorCode::UnknownDeal,
                DealAdminError::UnknownStream(_) => ErrorCode::UnknownStream,
                DealAdminError::Ended => ErrorCode::DealEnded,
                DealAdminError::InsufficientStock { .. } => ErrorCode::InsufficientStock,
                DealAdminError::Invalid(_) => ErrorCode::InvalidRequest,
            },
            CommandError::Reserve(e) => match e {
                ReserveError::UnknownDeal(_) => ErrorCode::UnknownDeal,
                ReserveError::NotStarted { .. } => ErrorCode::DealNotStarted,
                ReserveError::Ended(_) => ErrorCode::DealEnded,
                ReserveError::Paused(_) => ErrorCode::DealPaused,
                ReserveError::SoldOut(_) => ErrorCode::SoldOut,
                ReserveError::InsufficientStock { .. } => ErrorCode::InsufficientStock,
                ReserveError::PerUserLimit { .. } => ErrorCode::PerUserLimit,
                ReserveError::WaitlistFull { .. } => ErrorCode::WaitlistFull,
                ReserveError::DrawFull { .. } => ErrorCode::DrawFull,
                ReserveError::DrawPending(_) => ErrorCode::DrawWindow,
                ReserveError::Invalid(_) => ErrorCode::InvalidRequest,
            },
            CommandError::Waitlist(e) => match e {
                WaitlistError::UnknownEntry(_) => ErrorCode::UnknownEntry,
                WaitlistError::Lapsed => ErrorCode::EntryLapsed,
            },
            CommandError::Hold(e) => match e {
                HoldError::UnknownHold(_) => ErrorCode::UnknownHold,
                HoldError::Expired => ErrorCode::HoldExpired,
                HoldError::Released => ErrorCode::HoldReleased,
                HoldError::Confirmed => ErrorCode::HoldConfirmed,
                HoldError::TtlExceeded { .. } => ErrorCode::HoldTtlExceeded,
                HoldError::Invalid(_) => ErrorCode::InvalidRequest,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05T15:00:00Z.
    const T_MS: u64 = 1_796_482_800_000;

    #[test]
    fn times_in_messages_are_rfc3339_utc() {
        let not_started =
            ReserveError::NotStarted { deal_id: DealId::parse("d1").unwrap(), starts_at_ms: T_MS };
        assert_eq!(not_started.to_string(), "the deal \"d1\" starts at 2026-12-05T15:00:00.000Z");
        let over = CreateDealError::EndsInPast { ends_at_ms: T_MS, now_ms: T_MS + 1_500 };
        assert_eq!(
            over.to_string(),
            "ends_at: 2026-12-05T15:00:00.000Z is not after the time of creation \
             (2026-12-05T15:00:01.500Z)"
        );
    }

    #[test]
    fn a_deal_ending_in_the_past_is_a_bad_request() {
        let over = CreateDealError::EndsInPast { ends_at_ms: T_MS, now_ms: T_MS };
        assert_eq!(CommandError::from(over).code(), ErrorCode::InvalidRequest);
        let not_started =
            ReserveError::NotStarted { deal_id: DealId::parse("d1").unwrap(), starts_at_ms: T_MS };
        assert_eq!(CommandError::from(not_started).code(), ErrorCode::DealNotStarted);
    }
}
