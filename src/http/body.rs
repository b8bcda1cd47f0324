//! A response body: the whole answer at once (every endpoint but one), or a stream of events
//! (the live feed).
//!
//! An enum rather than a boxed body for every response: the sold-out answer, most of a burst,
//! must allocate nothing (`tests/refusal_allocates_nothing.rs`), and wrapping its `Full` in a
//! variant is a move, where boxing it would be an allocation per answer. Only a feed, which
//! lives for minutes, pays for its box.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

pub enum Body {
    /// The whole answer, with its length known.
    Full(Full<Bytes>),
    /// Chunks as they come, until the stream ends.
    Stream(UnsyncBoxBody<Bytes, Infallible>),
}

impl From<Full<Bytes>> for Body {
    fn from(full: Full<Bytes>) -> Self {
        Body::Full(full)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // Both variants are `Unpin` (`Full` holds bytes, the box is a `Pin<Box<..>>`).
        match self.get_mut() {
            Body::Full(full) => Pin::new(full).poll_frame(cx),
            Body::Stream(stream) => Pin::new(stream).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Stream(stream) => stream.is_end_stream(),
        }
    }

    /// `Full`'s exact size, so hyper still writes `Content-Length` for every whole answer.
    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Stream(stream) => stream.size_hint(),
        }
    }
}
