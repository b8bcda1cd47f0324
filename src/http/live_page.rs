//! `GET /live/{stream_id}`: a page that shows a livestream's deals burning down (a bar and the
//! counters of each, the sell-out moment), fed by the stream's live feed through the browser's
//! `EventSource`.
//!
//! One self-contained file (`live_page.html`, inline style and script, no external asset and no
//! build step), the same bytes for every stream: the script reads the stream id from the page's
//! own path. Its `Content-Security-Policy` allows that one style and that one script by their
//! SHA-256 (computed once, from the very bytes served, so an edit of the page cannot leave a
//! stale hash behind), and connections to this origin only: anything injected into the page
//! could neither run nor load nor send anything anywhere.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use sha2::{Digest, Sha256};

/// The page, as served.
pub const PAGE: &str = include_str!("live_page.html");

/// The text between `<tag>` and `</tag>`: what a CSP hash covers (the element's content,
/// exactly). The page has one of each; a page without one is a bug of this file, caught by its
/// test and at the first request.
pub fn inline<'p>(page: &'p str, tag: &str) -> Option<&'p str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page.find(&open)? + open.len();
    let len = page[start..].find(&close)?;
    Some(&page[start..start + len])
}

/// A CSP hash source (`'sha256-<base64>'`) for an inline element's content.
pub fn hash_source(content: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(content.as_bytes())))
}

/// Standard base64 with padding (RFC 4648, section 4), the encoding CSP hashes use; 32 bytes
/// do not justify a dependency.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The page's policy: nothing by default; its own style and script by hash; `EventSource` to
/// this origin only; no framing (a page of counters has no business inside another site's frame),
/// no `<base>` and no form.
pub fn content_security_policy() -> String {
    let style = inline(PAGE, "style").map(hash_source);
    let script = inline(PAGE, "script").map(hash_source);
    let (Some(style), Some(script)) = (style, script) else {
        panic!("live_page.html has lost its inline <style> or <script>")
    };
    format!(
        "default-src 'none'; style-src {style}; script-src {script}; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The policy as a header, made on the first request (hashing 9 KB once).
fn policy_header() -> &'static HeaderValue {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    POLICY.get_or_init(|| {
        HeaderValue::from_str(&content_security_policy())
            .unwrap_or_else(|e| panic!("the page's policy is not a header value: {e}"))
    })
}

/// The page's answer. `no-cache`: a browser revalidates, so a new server version's page (and
/// policy) is what the next load gets.
pub fn response() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, policy_header().clone());
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn a_hash_source_is_the_one_browsers_compute() {
        // `echo -n "alert('Hello, world.');" | openssl dgst -sha256 -binary | base64`, the
        // example of the CSP specification.
        assert_eq!(
            hash_source("alert('Hello, world.');"),
            "'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='"
        );
    }

    #[test]
    fn the_page_has_one_style_and_one_script_and_the_policy_names_both() {
        assert_eq!(PAGE.matches("<style>").count(), 1);
        assert_eq!(PAGE.matches("<script>").count(), 1);
        let policy = content_security_policy();
        for tag in ["style", "script"] {
            let content = inline(PAGE, tag).unwrap();
            assert!(policy.contains(&hash_source(content)), "{tag}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{policy}");
    }
}
