//! The routes: one table from (method, path) to an endpoint.

use http::Method;

/// An endpoint with its path parameters (raw; validated by the wire layer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    CreateDeal,
    ListDeals,
    GetDeal(&'a str),
    PauseDeal(&'a str),
    ResumeDeal(&'a str),
    EndDeal(&'a str),
    AdjustStock(&'a str),
    EndStream(&'a str),
    Reserve(&'a str),
    CartReserve,
    GetHold(&'a str),
    Confirm(&'a str),
    Release(&'a str),
    Extend(&'a str),
    Healthz,
    Readyz,
    Metrics,
}

/// Why a request matches no endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// No such path.
    Unknown,
    /// The path exists with other methods (for the `Allow` header).
    Method(&'static str),
}

/// Every route as (method, path pattern): the single list the router, the docs and the
/// OpenAPI check are held to.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/deals"),
    ("GET", "/v1/deals"),
    ("GET", "/v1/deals/{id}"),
    ("POST", "/v1/deals/{id}/pause"),
    ("POST", "/v1/deals/{id}/resume"),
    ("POST", "/v1/deals/{id}/end"),
    ("POST", "/v1/deals/{id}/stock"),
    ("POST", "/v1/deals/{id}/reserve"),
    ("POST", "/v1/streams/{stream_id}/end"),
    ("POST", "/v1/cart/reserve"),
    ("GET", "/v1/holds/{hold_id}"),
    ("POST", "/v1/holds/{hold_id}/confirm"),
    ("POST", "/v1/holds/{hold_id}/release"),
    ("POST", "/v1/holds/{hold_id}/extend"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

pub fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, NoRoute> {
    let segments: Vec<&str> = match path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return Err(NoRoute::Unknown),
    };
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    let only = |ok: bool, route: Route<'a>, allow: &'static str| {
        if ok {
            Ok(route)
        } else {
            Err(NoRoute::Method(allow))
        }
    };
    match segments.as_slice() {
        ["healthz"] => only(get, Route::Healthz, "GET"),
        ["readyz"] => only(get, Route::Readyz, "GET"),
        ["metrics"] => only(get, Route::Metrics, "GET"),
        ["v1", "deals"] => match () {
            _ if post => Ok(Route::CreateDeal),
            _ if get => Ok(Route::ListDeals),
            _ => Err(NoRoute::Method("GET, POST")),
        },
        ["v1", "deals", id] => only(get, Route::GetDeal(id), "GET"),
        ["v1", "deals", id, action] => {
            let route = match *action {
                "pause" => Route::PauseDeal(id),
                "resume" => Route::ResumeDeal(id),
                "end" => Route::EndDeal(id),
                "stock" => Route::AdjustStock(id),
                "reserve" => Route::Reserve(id),
                _ => return Err(NoRoute::Unknown),
            };
            only(post, route, "POST")
        }
        ["v1", "streams", id, "end"] => only(post, Route::EndStream(id), "POST"),
        ["v1", "cart", "reserve"] => only(post, Route::CartReserve, "POST"),
        ["v1", "holds", id] => only(get, Route::GetHold(id), "GET"),
        ["v1", "holds", id, action] => {
            let route = match *action {
                "confirm" => Route::Confirm(id),
                "release" => Route::Release(id),
                "extend" => Route::Extend(id),
                _ => return Err(NoRoute::Unknown),
            };
            only(post, route, "POST")
        }
        _ => Err(NoRoute::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_route_routes_and_others_do_not() {
        for (method, pattern) in ROUTES {
            let path = pattern
                .replace("{id}", "d1")
                .replace("{stream_id}", "s1")
                .replace("{hold_id}", "h0000000000000001");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(route(&method, &path).is_ok(), "{method} {path}");
        }
        assert_eq!(route(&Method::GET, "/v1/nope"), Err(NoRoute::Unknown));
        assert_eq!(route(&Method::GET, "/v1/deals/d1/reserve"), Err(NoRoute::Method("POST")));
        assert_eq!(route(&Method::DELETE, "/v1/deals"), Err(NoRoute::Method("GET, POST")));
        assert_eq!(route(&Method::GET, "v1/deals"), Err(NoRoute::Unknown));
        assert_eq!(route(&Method::POST, "/v1/deals/d1/explode"), Err(NoRoute::Unknown));
    }
}
