//! Errors on the wire: every code's HTTP status, in one place, and the JSON error body.

use bytes::Bytes;
use http::StatusCode;

use crate::idempotency::StoredReply;
use livestock_core::error::{CommandError, ErrorCode};

/// The status of each code. 409 is for conflicts with the current state (including sold out:
/// the request was fine, the stock is not there), 404 for unknown things, 400 for requests
/// that are wrong whatever the state.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::UnknownDeal
        | ErrorCode::UnknownHold
        | ErrorCode::UnknownStream
        | ErrorCode::UnknownRoute => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::DealExists
        | ErrorCode::TooManyDeals
        | ErrorCode::DealNotStarted
        | ErrorCode::DealEnded
        | ErrorCode::DealPaused
        | ErrorCode::SoldOut
        | ErrorCode::InsufficientStock
        | ErrorCode::PerUserLimit
        | ErrorCode::HoldExpired
        | ErrorCode::HoldReleased
        | ErrorCode::HoldConfirmed
        | ErrorCode::HoldTtlExceeded
        | ErrorCode::IdempotencyKeyInUse => StatusCode::CONFLICT,
        ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::IdempotencyCapacity | ErrorCode::StorageUnavailable | ErrorCode::NoLeader => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    /// `{"error": {"code": "...", "message": "..."}}`
    pub fn reply(&self) -> StoredReply {
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        StoredReply {
            status: self.status().as_u16(),
            body: Bytes::from(body.to_string()),
            code: Some(self.code),
        }
    }
}

impl From<&CommandError> for ApiError {
    fn from(e: &CommandError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}
