//! When the live feed publishes a deal: the rule, pure (time is passed in).
//!
//! A change of the viewer's state (`live` -> `sold_out`, back in stock, paused, ended) goes
//! out at once: it is what an app acts on (grey out the button, bring it back). A change of
//! counters alone goes out at most once per `feed_interval_ms`: during a burst the counters
//! move thousands of times a second, and a viewer needs a smooth number, not every step. A
//! change held back is not stored: the publisher reads the counters again on its next tick
//! and publishes whatever they are then, so a held change is never lost, only merged.
//!
//! Both are paid from a [`Budget`]: a share of one core for writing to subscribers' sockets,
//! which is most of what a subscriber costs the server (the kernel's TCP send). With many
//! subscribers counters go out less often than `feed_interval_ms`, keeping the feed's share
//! of the core bounded whatever the crowd. A change of state is never held back for counters:
//! counters go out only when the budget would still pay one state change to every subscriber.

use crate::http::feed_frame::Stock;

/// What to do with a deal's newest reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changed since the last publication.
    Same,
    /// Counters changed, but the last publication is younger than the interval: look again on
    /// a later tick.
    Wait,
    /// Counters alone changed and the interval has passed: send a frame if the budget allows.
    Publish,
    /// The state changed (sold out, back in stock, paused, ended): send a frame now.
    PublishState,
}

/// One deal as the feed last published it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    published: Stock,
    published_at_ms: u64,
}

impl Tracker {
    /// A deal whose `published` reading went out at `at_ms`.
    pub fn new(published: Stock, at_ms: u64) -> Tracker {
        Tracker { published, published_at_ms: at_ms }
    }

    pub fn published(&self) -> Stock {
        self.published
    }

    /// Whether `seen`, read at `now_ms` (the publisher's own clock, monotonic), goes out.
    pub fn decide(&self, seen: &Stock, now_ms: u64, interval_ms: u64) -> Decision {
        if *seen == self.published {
            Decision::Same
        } else if seen.state != self.published.state {
            Decision::PublishState
        } else if now_ms >= self.published_at_ms.saturating_add(interval_ms) {
            Decision::Publish
        } else {
            Decision::Wait
        }
    }

    /// Records that `stock` went out at `now_ms`.
    pub fn publish(&mut self, stock: Stock, now_ms: u64) {
        self.published = stock;
        self.published_at_ms = now_ms;
    }
}

/// The time the feed may spend writing to subscribers' sockets: `share_percent` of one core,
/// refilled with the publisher's clock and spent as the fan-outs measure their writes. Counted
/// in time rather than in writes because a write's cost is not a constant: about 7 µs on an
/// idle core here, several times that when other work shares the core, and a budget in writes
/// would then take a larger share of a core the sale needs. So the feed backs off when the
/// machine is busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    share_percent: u64,
    /// Time left, ns (negative: overspent).
    left_ns: i64,
    at_ms: u64,
    /// What one write costs, ns, as measured lately (a moving average).
    write_ns: u64,
}

impl Budget {
    /// Full (one second's worth) at `now_ms`, a write guessed at `write_ns` until measured.
    pub fn new(share_percent: u64, write_ns: u64, now_ms: u64) -> Budget {
        let left_ns = to_i64(share_percent.saturating_mul(10_000_000));
        Budget { share_percent, left_ns, at_ms: now_ms, write_ns: write_ns.max(1) }
    }

    /// What accrued up to `now_ms`, kept at most a second's worth or two writes to each of
    /// `subscribers` (whichever is more: a crowd larger than a second's budget still gets its
    /// counters, only less often).
    pub fn refill(&mut self, now_ms: u64, subscribers: usize) {
        let elapsed_ms = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        let accrued = elapsed_ms.saturating_mul(self.share_percent).saturating_mul(10_000);
        let second = self.share_percent.saturating_mul(10_000_000);
        let cap = to_i64(second.max(self.two_rounds_ns(subscribers)));
        self.left_ns = self.left_ns.saturating_add(to_i64(accrued)).min(cap);
    }

    /// Whether counters may go out to `subscribers`: only with a whole round left after them,
    /// so that the change of state that may follow goes out at once.
    pub fn allows_counters(&self, subscribers: usize) -> bool {
        self.left_ns >= to_i64(self.two_rounds_ns(subscribers))
    }

    /// Whether a change of state may go out: unless earlier changes of state overspent (a deal
    /// flapping between sold out and back in stock), in which case it waits for the refill.
    pub fn allows_state(&self) -> bool {
        self.left_ns >= 0
    }

    /// `writes` writes took `ns`.
    pub fn spend(&mut self, ns: u64, writes: u64) {
        self.left_ns = self.left_ns.saturating_sub(to_i64(ns));
        // A moving average over about eight measurements (ticks with writes).
        if let Some(measured) = ns.checked_div(writes) {
            self.write_ns = (self.write_ns.saturating_mul(7).saturating_add(measured) / 8).max(1);
        }
    }

    /// What one write is reckoned to cost now, ns.
    pub fn write_ns(&self) -> u64 {
        self.write_ns
    }

    /// Two writes to each subscriber: the counters' round and the state change kept in reserve.
    fn two_rounds_ns(&self, subscribers: usize) -> u64 {
        u64::try_from(subscribers)
            .unwrap_or(u64::MAX)
            .saturating_mul(2)
            .saturating_mul(self.write_ns)
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::feed_frame::FeedState;

    const INTERVAL_MS: u64 = 100;

    fn live(available: u64, held: u64) -> Stock {
        let state = if available == 0 { FeedState::SoldOut } else { FeedState::Live };
        Stock { state, available, held, sold: 10 - available - held, waiting: 0 }
    }

    #[test]
    fn nothing_changed_is_nothing_to_send_however_long_ago() {
        let tracker = Tracker::new(live(5, 0), 1_000);
        assert_eq!(tracker.decide(&live(5, 0), 1_000, INTERVAL_MS), Decision::Same);
        assert_eq!(tracker.decide(&live(5, 0), 1_000_000, INTERVAL_MS), Decision::Same);
    }

    #[test]
    fn counters_alone_go_out_at_most_once_per_interval() {
        let mut tracker = Tracker::new(live(5, 0), 1_000);
        assert_eq!(tracker.decide(&live(4, 1), 1_010, INTERVAL_MS), Decision::Wait);
        assert_eq!(tracker.decide(&live(3, 2), 1_099, INTERVAL_MS), Decision::Wait);
        // The held changes merged: what goes out is the reading of the tick that may send.
        assert_eq!(tracker.decide(&live(2, 3), 1_100, INTERVAL_MS), Decision::Publish);
        tracker.publish(live(2, 3), 1_100);
        assert_eq!(tracker.published(), live(2, 3));
        assert_eq!(tracker.decide(&live(2, 2), 1_150, INTERVAL_MS), Decision::Wait);
        assert_eq!(tracker.decide(&live(2, 2), 1_200, INTERVAL_MS), Decision::Publish);
    }

    #[test]
    fn sold_out_and_back_in_stock_go_out_at_once() {
        let mut tracker = Tracker::new(live(1, 0), 1_000);
        // One millisecond after the last publication: the interval does not hold it back.
        assert_eq!(tracker.decide(&live(0, 1), 1_001, INTERVAL_MS), Decision::PublishState);
        tracker.publish(live(0, 1), 1_001);
        assert_eq!(tracker.decide(&live(1, 0), 1_002, INTERVAL_MS), Decision::PublishState);
    }

    #[test]
    fn any_change_of_state_goes_out_at_once() {
        let tracker = Tracker::new(live(5, 0), 1_000);
        for state in [FeedState::Paused, FeedState::Ended, FeedState::Scheduled] {
            let seen = Stock { state, ..live(5, 0) };
            assert_eq!(
                tracker.decide(&seen, 1_000, INTERVAL_MS),
                Decision::PublishState,
                "{state:?}"
            );
        }
    }

    #[test]
    fn a_clock_near_its_end_does_not_overflow() {
        let tracker = Tracker::new(live(5, 0), u64::MAX - 1);
        assert_eq!(tracker.decide(&live(4, 1), u64::MAX - 1, INTERVAL_MS), Decision::Wait);
        // The interval's end saturates at the clock's end instead of wrapping to the past.
        assert_eq!(tracker.decide(&live(4, 1), u64::MAX, INTERVAL_MS), Decision::Publish);
    }

    #[test]
    fn the_budget_sends_counters_only_with_a_state_change_in_reserve() {
        // 20% of a core, 10 µs a write, 10,000 subscribers: a round is 100 ms of writes, and
        // the cap is two rounds (200 ms, a second's worth).
        let mut budget = Budget::new(20, 10_000, 0);
        budget.refill(0, 10_000);
        assert!(budget.allows_counters(10_000));
        budget.spend(100_000_000, 10_000);
        assert!(!budget.allows_counters(10_000), "one round left: kept for a state change");
        assert!(budget.allows_state());
        budget.spend(100_000_000, 10_000); // a sell-out to everyone
        assert!(budget.allows_state(), "spent to zero, not past it");
        budget.spend(100_000_000, 10_000); // back in stock at once: the budget is overspent
        assert!(!budget.allows_state(), "a third change waits for the refill");
        budget.refill(499, 10_000);
        assert!(!budget.allows_state());
        budget.refill(500, 10_000);
        assert!(budget.allows_state() && !budget.allows_counters(10_000));
        // Counters again once two rounds have accrued: one second later.
        budget.refill(1_499, 10_000);
        assert!(!budget.allows_counters(10_000));
        budget.refill(1_500, 10_000);
        assert!(budget.allows_counters(10_000));
    }

    #[test]
    fn dearer_writes_make_rounds_rarer() {
        let mut budget = Budget::new(10, 10_000, 0);
        for _ in 0..64 {
            budget.spend(0, 1); // measured: as good as free
        }
        assert_eq!(budget.write_ns(), 1);
        for _ in 0..64 {
            budget.spend(0, 0);
        }
        assert_eq!(budget.write_ns(), 1, "a tick without writes measures nothing");
        let mut budget = Budget::new(10, 10_000, 0);
        for _ in 0..64 {
            budget.spend(30_000, 1); // a busy core: 30 µs a write
        }
        assert!(budget.write_ns() > 29_000, "{}", budget.write_ns());
        // 1,000 subscribers now need 60 ms in reserve: 600 ms of refill at 10%.
        let mut budget = Budget { left_ns: 0, ..budget };
        budget.at_ms = 0;
        budget.refill(590, 1_000);
        assert!(!budget.allows_counters(1_000));
        budget.refill(610, 1_000);
        assert!(budget.allows_counters(1_000));
    }

    #[test]
    fn the_budget_keeps_at_most_a_second_or_two_rounds() {
        let mut budget = Budget::new(10, 10_000, 0);
        budget.refill(60_000, 10);
        budget.spend(100_000_000, 0);
        assert!(budget.allows_state(), "a minute idle keeps a second's worth");
        budget.spend(1, 0);
        assert!(!budget.allows_state(), "and no more");
        // A crowd larger than a second's budget: the cap grows to two rounds of it.
        let mut budget = Budget::new(10, 10_000, 0);
        budget.spend(100_000_000, 0);
        budget.refill(10_000, 50_000);
        assert!(budget.allows_counters(50_000));
    }
}
