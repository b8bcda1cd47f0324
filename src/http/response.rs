//! An answer as a hyper response: status, JSON content type, and the error code it carries,
//! kept on the response (an extension) for the metrics and the log line; and the conditional
//! GET (`ETag` / `If-None-Match` -> 304).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
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

/// A conditional GET (RFC 9110, 13.1.2): a 200 whose `ETag` the request's `If-None-Match`
/// names becomes a 304 with the same headers and no body.
pub fn conditional(
    request: &HeaderMap,
    mut response: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    if response.status() != StatusCode::OK {
        return response;
    }
    let (Some(tag), Some(wanted)) =
        (response.headers().get(header::ETAG), request.get(header::IF_NONE_MATCH))
    else {
        return response;
    };
    if !names_tag(wanted.as_bytes(), tag.as_bytes()) {
        return response;
    }
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    *response.body_mut() = Full::new(Bytes::new());
    response.headers_mut().remove(header::CONTENT_TYPE);
    response
}

/// Whether an `If-None-Match` value (a list of tags, or `*`) names `tag`. The comparison is the
/// weak one the RFC prescribes for `If-None-Match`: `W/"x"` and `"x"` match.
fn names_tag(if_none_match: &[u8], tag: &[u8]) -> bool {
    fn opaque(tag: &[u8]) -> &[u8] {
        tag.strip_prefix(b"W/").unwrap_or(tag)
    }
    if_none_match
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|candidate| candidate == b"*" || opaque(candidate) == opaque(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(tag: &'static str) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
        response.headers_mut().insert(header::ETAG, HeaderValue::from_static(tag));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    fn asking(if_none_match: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(if_none_match));
        headers
    }

    #[test]
    fn a_named_tag_is_not_modified_and_keeps_its_tag() {
        for asked in ["\"a-1\"", "W/\"a-1\"", "\"x\", \"a-1\"", "*"] {
            let answer = conditional(&asking(asked), tagged("\"a-1\""));
            assert_eq!(answer.status(), StatusCode::NOT_MODIFIED, "{asked}");
            assert_eq!(answer.headers()[header::ETAG], "\"a-1\"");
            assert!(answer.headers().get(header::CONTENT_TYPE).is_none());
        }
    }

    #[test]
    fn another_tag_or_none_gets_the_answer() {
        for asked in ["\"a-2\"", "\"a-1", "a-1"] {
            let answer = conditional(&asking(asked), tagged("\"a-1\""));
            assert_eq!(answer.status(), StatusCode::OK, "{asked}");
        }
        assert_eq!(conditional(&HeaderMap::new(), tagged("\"a-1\"")).status(), StatusCode::OK);
        // An answer without a tag, or not a 200, is never turned into a 304.
        let untagged = Response::new(Full::new(Bytes::new()));
        assert_eq!(conditional(&asking("*"), untagged).status(), StatusCode::OK);
        let mut refused = tagged("\"a-1\"");
        *refused.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(conditional(&asking("*"), refused).status(), StatusCode::NOT_FOUND);
    }
}
