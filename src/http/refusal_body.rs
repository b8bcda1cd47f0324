//! The bodies of the refusals a burst gets (sold out, ended, paused, not started), kept
//! preformatted per thread and deal.
//!
//! They depend on the deal alone, so they are the same bytes for every caller: each thread
//! builds a deal's body once, on its first such refusal, by the same code as every other
//! answer (`ApiError::reply`), and hands out clones of it. A clone writes only the body's own
//! reference count, which belongs to the thread that made it. The shortcut (`refusal.rs`) and
//! the full path's rendering (`handlers.rs`) both answer from here, so the bytes are the same
//! whichever way a refusal went.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;
use livestock_core::error::CommandError;
use livestock_core::ids::DealId;
use livestock_core::limits::REFUSAL_BODIES_DEALS_MAX;

use crate::alloc::Refusal;
use crate::http::error::{status_of, ApiError};
use crate::idempotency::StoredReply;

/// The preformatted bodies a thread keeps, per deal id, one per kind of refusal.
type Bodies = HashMap<Box<str>, [Option<Bytes>; KINDS]>;

/// Kinds of refusal kept: sold out, ended, paused, not started.
const KINDS: usize = 4;

thread_local! {
    static BODIES: RefCell<Bodies> = RefCell::new(HashMap::new());
}

/// The slot of `refusal`'s body. A not-started body names the deal's start, yet one slot is
/// enough: a deal's spec (its window with it) never changes once created.
fn kind(refusal: Refusal) -> usize {
    use livestock_core::deal::Closed;
    match refusal {
        Refusal::SoldOut => 0,
        Refusal::Closed(Closed::Ended) => 1,
        Refusal::Closed(Closed::Paused) => 2,
        Refusal::Closed(Closed::NotStarted { .. }) => 3,
    }
}

/// The body of `refusal` for `deal_id`: the bytes the full path renders for it.
pub fn preformatted(deal_id: &str, refusal: Refusal) -> Option<Bytes> {
    BODIES.with(|bodies| {
        let mut bodies = bodies.borrow_mut();
        if let Some(body) = bodies.get(deal_id).and_then(|kept| kept[kind(refusal)].as_ref()) {
            return Some(body.clone());
        }
        let id = DealId::parse(deal_id).ok()?;
        let error = CommandError::from(refusal.error(id));
        let body = ApiError::from(&error).reply().body;
        if bodies.len() >= REFUSAL_BODIES_DEALS_MAX && !bodies.contains_key(deal_id) {
            bodies.clear();
        }
        let kept = bodies.entry(deal_id.into()).or_default();
        // A clone now, so the shared form is made here and not on the next answer.
        kept[kind(refusal)] = Some(body.clone());
        Some(body)
    })
}

/// The preformatted answer to an error that is one of these refusals (of a reserve or a
/// cart, keyed or not), for the full path's rendering.
pub fn reply_of(error: &CommandError) -> Option<StoredReply> {
    let CommandError::Reserve(e) = error else { return None };
    let (refusal, deal_id) = Refusal::of(e)?;
    let code = refusal.code();
    let body = preformatted(deal_id.as_str(), refusal)?;
    Some(StoredReply { status: status_of(code).as_u16(), body, code: Some(code) })
}
