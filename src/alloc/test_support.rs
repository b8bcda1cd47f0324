//! What the allocator's unit tests share: an allocator with one deal and a hold per user, and
//! an event sink that keeps what it is given.

use livestock_core::command::{Command, Line, Outcome, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::event::{Event, EventSink};
use livestock_core::ids::{DealId, HoldIdKey, UserId};

use super::{Allocator, AllocatorConfig};

/// The events a test's commands logged.
pub struct Events(pub Vec<Event>);

impl EventSink for Events {
    fn append(&mut self, event: Event, _: &Outcome) {
        self.0.push(event);
    }
}

/// An allocator with deal `d` (10 units, `per_user_limit`) and one 1-unit hold for each of
/// `users`, all at time 0; its events go to `events`.
pub fn allocator_with_holds(
    per_user_limit: Option<u32>,
    users: &[&str],
    events: &mut Events,
) -> (Allocator, DealId) {
    let config = AllocatorConfig { hold_id_key: HoldIdKey(7), resolved_hold_retention_ms: 1 };
    let allocator = Allocator::new(config);
    let id = DealId::parse("d").expect("id");
    let deal = NewDeal {
        id: id.clone(),
        stream_id: None,
        stock: 10,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit,
        hold_ttl_ms: None,
        hold_ttl_ms_max: None,
        waitlist_max: None,
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    };
    allocator.execute(&Command::CreateDeal(deal), 0, events).expect("created");
    for user in users {
        let reserve = Reserve {
            user_id: UserId::parse(user).expect("user"),
            lines: vec![Line { deal_id: id.clone(), qty: 1 }],
            ttl_ms: None,
            waitlist: false,
        };
        allocator.execute(&Command::Reserve(reserve), 0, events).expect("reserved");
    }
    (allocator, id)
}
