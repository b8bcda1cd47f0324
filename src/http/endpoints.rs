//! Every endpoint in one table: method, path, who may call it, the operation it is counted
//! as, and its handler. Routing, access control, metrics and the OpenAPI check all read this
//! table, so adding an endpoint is one row (and its handler in `handlers.rs`).

use std::sync::OnceLock;

use http::Method;
use smallvec::SmallVec;

use crate::http::auth::{Access, Role};
use crate::http::handlers::{self, Handler};
use crate::metrics::Op;

/// One endpoint. `path` is a pattern: a `{name}` segment matches any one segment, and its
/// value is handed to the handler (no endpoint has more than one).
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub op: Op,
    pub handler: Handler,
}

const ADMIN: Access = Access::Role(Role::Admin);
const CLIENT: Access = Access::Role(Role::Client);
/// The live feed, availability and the live page: a viewer's app or browser, without a token,
/// unless configured otherwise.
const FEED: Access = Access::ClientUnlessFeedPublic;

macro_rules! endpoint {
    ($method:ident $path:literal, $access:expr, $op:ident, $handler:path) => {
        Endpoint {
            method: Method::$method,
            path: $path,
            access: $access,
            op: Op::$op,
            handler: $handler,
        }
    };
}

/// The API. `admin` may do everything; `client` may reserve, confirm, release, extend and read.
pub static ENDPOINTS: [Endpoint; 29] = [
    endpoint!(POST "/v1/deals", ADMIN, CreateDeal, handlers::create_deal),
    endpoint!(GET "/v1/deals", CLIENT, ListDeals, handlers::list_deals),
    endpoint!(GET "/v1/deals/{id}", CLIENT, GetDeal, handlers::get_deal),
    endpoint!(POST "/v1/deals/{id}/pause", ADMIN, PauseDeal, handlers::pause_deal),
    endpoint!(POST "/v1/deals/{id}/resume", ADMIN, ResumeDeal, handlers::resume_deal),
    endpoint!(POST "/v1/deals/{id}/end", ADMIN, EndDeal, handlers::end_deal),
    endpoint!(POST "/v1/deals/{id}/stock", ADMIN, AdjustStock, handlers::adjust_stock),
    endpoint!(POST "/v1/deals/{id}/reserve", CLIENT, Reserve, handlers::reserve),
    endpoint!(GET "/v1/deals/{id}/live", FEED, DealFeed, handlers::deal_live),
    endpoint!(GET "/v1/deals/{id}/availability", FEED, Availability, handlers::availability),
    endpoint!(GET "/v1/deals/{id}/draw", FEED, Draw, handlers::get_draw),
    endpoint!(GET "/v1/streams/{stream_id}/live", FEED, StreamFeed, handlers::stream_live),
    endpoint!(GET "/live/{stream_id}", FEED, LivePage, handlers::live_page),
    endpoint!(POST "/v1/streams/{stream_id}/end", ADMIN, EndStream, handlers::end_stream),
    endpoint!(POST "/v1/cart/reserve", CLIENT, Cart, handlers::cart_reserve),
    endpoint!(GET "/v1/holds/{hold_id}", CLIENT, GetHold, handlers::get_hold),
    endpoint!(POST "/v1/holds/{hold_id}/confirm", CLIENT, Confirm, handlers::confirm),
    endpoint!(POST "/v1/holds/{hold_id}/release", CLIENT, Release, handlers::release),
    endpoint!(POST "/v1/holds/{hold_id}/extend", CLIENT, Extend, handlers::extend),
    endpoint!(GET "/v1/waitlist/{entry_id}", CLIENT, GetEntry, handlers::get_entry),
    endpoint!(POST "/v1/waitlist/{entry_id}/cancel", CLIENT, CancelEntry, handlers::cancel_entry),
    endpoint!(GET "/v1/events", ADMIN, Events, handlers::events),
    endpoint!(GET "/healthz", Access::Public, Health, handlers::healthz),
    endpoint!(GET "/readyz", Access::Public, Health, handlers::readyz),
    endpoint!(GET "/metrics", Access::AdminUnlessPublic, Metrics, handlers::metrics),
    endpoint!(GET "/v1/cluster", Access::AdminUnlessPublic, Cluster, handlers::cluster),
    endpoint!(POST "/v1/cluster/members", ADMIN, ClusterMembers, handlers::no_cluster),
    endpoint!(POST "/v1/cluster/members/{id}/remove", ADMIN, ClusterMembers, handlers::no_cluster),
    endpoint!(GET "/v1/cluster/backup", ADMIN, ClusterBackup, handlers::cluster_backup),
];

/// Why a request matches no endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// No such path.
    Unknown,
    /// The path exists with other methods: the `Allow` header's value.
    Method(String),
}

/// Path segments at most, in a pattern or a path we route (longer paths match nothing).
const SEGMENTS_MAX: usize = 6;

/// A pattern's segments: `None` for a `{...}` parameter.
type Pattern = SmallVec<[Option<&'static str>; SEGMENTS_MAX]>;

/// The table's patterns, split once: routing compares segments, it does not re-parse
/// patterns per request (that cost the sold-out answer a quarter of its time).
fn patterns() -> &'static [Pattern] {
    static PATTERNS: OnceLock<Vec<Pattern>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        ENDPOINTS
            .iter()
            .map(|e| {
                let pattern: Pattern =
                    e.path.split('/').map(|seg| (!seg.starts_with('{')).then_some(seg)).collect();
                assert!(pattern.len() <= SEGMENTS_MAX, "{}: too many segments", e.path);
                pattern
            })
            .collect()
    })
}

/// Matches split path segments against a pattern; the value of its parameter ("" if none).
fn matches<'p>(pattern: &Pattern, path: &[&'p str]) -> Option<&'p str> {
    if pattern.len() != path.len() {
        return None;
    }
    let mut param = "";
    for (wanted, given) in pattern.iter().zip(path) {
        match wanted {
            None => param = given,
            Some(literal) if literal == given => {}
            Some(_) => return None,
        }
    }
    Some(param)
}

/// The endpoint for a request, and the value of its path parameter.
pub fn find<'p>(method: &Method, path: &'p str) -> Result<(&'static Endpoint, &'p str), NoRoute> {
    if !path.starts_with('/') {
        return Err(NoRoute::Unknown);
    }
    let mut segments: SmallVec<[&str; SEGMENTS_MAX]> = SmallVec::new();
    for segment in path.split('/') {
        if segments.len() == SEGMENTS_MAX {
            return Err(NoRoute::Unknown);
        }
        segments.push(segment);
    }
    let mut allowed: SmallVec<[&str; 2]> = SmallVec::new();
    for (endpoint, pattern) in ENDPOINTS.iter().zip(patterns()) {
        if let Some(param) = matches(pattern, &segments) {
            if endpoint.method == *method {
                return Ok((endpoint, param));
            }
            allowed.push(endpoint.method.as_str());
        }
    }
    if allowed.is_empty() {
        return Err(NoRoute::Unknown);
    }
    allowed.sort_unstable();
    allowed.dedup();
    Err(NoRoute::Method(allowed.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path for a pattern, with plausible parameter values.
    pub(crate) fn example(pattern: &str) -> String {
        pattern
            .replace("{id}", "d1")
            .replace("{stream_id}", "s1")
            .replace("{hold_id}", "h0000000000000001")
            .replace("{entry_id}", "w0000000000000001")
    }

    #[test]
    fn every_endpoint_routes_to_itself_and_others_do_not() {
        for endpoint in &ENDPOINTS {
            let path = example(endpoint.path);
            let (found, _) = find(&endpoint.method, &path).unwrap();
            assert!(std::ptr::eq(found, endpoint), "{} {path}", endpoint.method);
        }
        assert_eq!(find(&Method::GET, "/v1/nope").err(), Some(NoRoute::Unknown));
        assert_eq!(
            find(&Method::GET, "/v1/deals/d1/reserve").err(),
            Some(NoRoute::Method("POST".into()))
        );
        assert_eq!(
            find(&Method::DELETE, "/v1/deals").err(),
            Some(NoRoute::Method("GET, POST".into()))
        );
        assert_eq!(find(&Method::GET, "v1/deals").err(), Some(NoRoute::Unknown));
        assert_eq!(find(&Method::POST, "/v1/deals/d1/explode").err(), Some(NoRoute::Unknown));
        assert_eq!(find(&Method::GET, "/v1/deals/d1/").err(), Some(NoRoute::Unknown));
    }

    #[test]
    fn parameters_are_handed_over_raw() {
        let (endpoint, param) = find(&Method::POST, "/v1/holds/h42/confirm").unwrap();
        assert_eq!((endpoint.op, param), (Op::Confirm, "h42"));
        let (endpoint, param) = find(&Method::GET, "/v1/deals/").unwrap();
        assert_eq!((endpoint.op, param), (Op::GetDeal, ""), "validated by the handler");
        assert_eq!(find(&Method::GET, "/healthz").unwrap().1, "");
        assert_eq!(find(&Method::GET, "/v1/deals/d1/a/b/c/d/e").err(), Some(NoRoute::Unknown));
    }

    #[test]
    fn no_two_endpoints_share_a_method_and_path() {
        for (i, a) in ENDPOINTS.iter().enumerate() {
            for b in &ENDPOINTS[i + 1..] {
                assert!(a.method != b.method || a.path != b.path, "{} {}", a.method, a.path);
            }
        }
    }
}
