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
        | ErrorCode::UnknownEntry
        | ErrorCode::NoDraw
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
        | ErrorCode::WaitlistFull
        | ErrorCode::EntryLapsed
        | ErrorCode::DrawFull
        | ErrorCode::DrawWindow
        | ErrorCode::IdempotencyKeyInUse => StatusCode::CONFLICT,
        ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::IdempotencyCapacity
        | ErrorCode::StorageUnavailable
        | ErrorCode::NoLeader
        | ErrorCode::FeedFull
        | ErrorCode::EventsFull => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::CursorExpired => StatusCode::GONE,
        ErrorCode::NotImplemented => StatusCode::NOT_IMPLEMENTED,
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

    /// 404 `unknown_deal`: a read of a deal that does not exist (its page, feed, availability).
    pub fn unknown_deal(id: &impl std::fmt::Debug) -> Self {
        ApiError::new(ErrorCode::UnknownDeal, format!("no deal with id {id:?}"))
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    /// `{"error": {"code": "...", "message": "..."}}`
    pub fn reply(&self) -> StoredReply {
        // Written straight into one buffer: the bytes `serde_json::json!` would make (keys in
        // order, the message escaped by serde_json), without its map and two growing buffers.
        let code = self.code.as_str();
        let mut body = Vec::with_capacity(40 + code.len() + self.message.len());
        body.extend_from_slice(b"{\"error\":{\"code\":\"");
        body.extend_from_slice(code.as_bytes());
        body.extend_from_slice(b"\",\"message\":");
        if let Err(e) = serde_json::to_writer(&mut body, &self.message) {
            unreachable!("a string always encodes into a Vec: {e}");
        }
        body.extend_from_slice(b"}}");
        StoredReply {
            status: self.status().as_u16(),
            body: Bytes::from(body),
            code: Some(self.code),
        }
    }
}

impl From<&CommandError> for ApiError {
    fn from(e: &CommandError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written body is the one `serde_json` makes of the same object.
    #[test]
    fn the_error_body_is_serde_json_s() {
        for message in
            ["plain", "quote \" and \\ backslash", "tab\tnew\nline\u{1}", "ünïcödé €", ""]
        {
            for code in [ErrorCode::SoldOut, ErrorCode::InvalidRequest] {
                let e = ApiError::new(code, message);
                let expected = serde_json::json!({
                    "error": { "code": code.as_str(), "message": message }
                });
                assert_eq!(e.reply().body, expected.to_string(), "{message:?}");
            }
        }
    }
}
