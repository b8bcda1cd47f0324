//! A refusal allocates nothing: in a burst most requests are for stock that is gone, so the
//! sold-out path must not touch the heap (issue 12). A counting global allocator measures the
//! node's `execute` of a reserve that is refused, after a warm-up.

#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]
#![allow(unsafe_code, reason = "a global allocator is an unsafe trait; it only counts")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use livestock::alloc::AllocatorConfig;
use livestock::clock::ManualClock;
use livestock::node::{Node, NodeConfig};
use livestock_core::command::{Command, Line, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::ids::{DealId, HoldIdKey, StreamId, UserId};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const T0_MS: u64 = 1_800_000_000_000;

fn node_with_sold_out_deal() -> (Node, Command) {
    let config = NodeConfig {
        allocator: AllocatorConfig {
            hold_id_key: HoldIdKey(7),
            resolved_hold_retention_ms: 60_000,
        },
        idempotency_window_ms: 60_000,
        idempotency_keys_max: 1_000,
    };
    let node = Node::new(config, Arc::new(ManualClock::new(T0_MS)));
    let deal = NewDeal {
        id: DealId::parse("drop").unwrap(),
        stream_id: Some(StreamId::parse("s").unwrap()),
        stock: 1,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit: None,
        hold_ttl_ms: None,
        hold_ttl_ms_max: None,
    };
    node.execute(&Command::CreateDeal(deal)).unwrap().result.unwrap();
    let reserve = |user: &str| {
        Command::Reserve(Reserve {
            user_id: UserId::parse(user).unwrap(),
            lines: vec![Line { deal_id: DealId::parse("drop").unwrap(), qty: 1 }],
            ttl_ms: None,
        })
    };
    node.execute(&reserve("first")).unwrap().result.unwrap();
    (node, reserve("late"))
}

#[test]
fn a_sold_out_reserve_allocates_nothing_in_the_node() {
    let (node, late) = node_with_sold_out_deal();
    // Warm up: lazily built state (metrics cells, thread locals) is built once.
    for _ in 0..3 {
        let refused = node.execute(&late).unwrap();
        let code = refused.result.as_ref().map_err(CommandError::code).err();
        assert_eq!(code, Some(ErrorCode::SoldOut), "{refused:?}");
    }
    let before = allocations();
    let refused = node.execute(&late).unwrap();
    let made = allocations() - before;
    let code = refused.result.as_ref().map_err(CommandError::code).err();
    assert_eq!(code, Some(ErrorCode::SoldOut));
    assert_eq!(made, 0, "a sold-out refusal allocated {made} times");
}

/// The counter counts: a reserve that succeeds allocates (a hold, an event), so a refusal's
/// zero above is measured, not a counter that never moves.
#[test]
fn the_counter_sees_a_reserve_that_succeeds() {
    let (node, _) = node_with_sold_out_deal();
    node.execute(&Command::AdjustStock { deal_id: DealId::parse("drop").unwrap(), delta: 10 })
        .unwrap()
        .result
        .unwrap();
    let winner = Command::Reserve(Reserve {
        user_id: UserId::parse("winner").unwrap(),
        lines: vec![Line { deal_id: DealId::parse("drop").unwrap(), qty: 1 }],
        ttl_ms: None,
    });
    let before = allocations();
    node.execute(&winner).unwrap().result.unwrap();
    assert!(
        allocations() > before,
        "a successful reserve allocated nothing: the counter is broken"
    );
}
