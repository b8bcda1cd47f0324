//! An answer as a hyper response: status, JSON content type, and the error code it carries,
//! kept on the response (an extension) for the metrics and the log line.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use livestock_core::error::ErrorCode;

use crate::idempotency::StoredReply;

/// The error code an answer carries, kept on the response for the metrics and the log line.
#[derive(Clone, Copy, Debug)]
pub struct OutcomeCode(pub ErrorCode);

/// An answer as a response: its status, JSON content type, and its code for the metrics.
pub fn respond(reply: StoredReply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(reply.body));
    if let Some(code) = reply.code {
        response.extensions_mut().insert(OutcomeCode(code));
    }
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
