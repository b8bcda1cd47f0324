//! When the live feed publishes a deal: the rule, pure (time is passed in).
//!
//! A change of the viewer's state (`live` -> `sold_out`, back in stock, paused, ended) goes
//! out at once: it is what an app acts on (grey out the button, bring it back). A change of
//! counters alone goes out at most once per `feed_interval_ms`: during a burst the counters
//! move thousands of times a second, and a viewer needs a smooth number, not every step. A
//! change held back is not stored: the publisher reads the counters again on its next tick
//! and publishes whatever they are then, so a held change is never lost, only merged.

use crate::http::feed_frame::Stock;

/// What to do with a deal's newest reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changed since the last publication.
    Same,
    /// Counters changed, but the last publication is younger than the interval: look again on
    /// a later tick.
    Wait,
    /// Encode and send a frame now.
    Publish,
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
        } else if seen.state != self.published.state
            || now_ms >= self.published_at_ms.saturating_add(interval_ms)
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::feed_frame::FeedState;

    const INTERVAL_MS: u64 = 100;

    fn live(available: u64, held: u64) -> Stock {
        let state = if available == 0 { FeedState::SoldOut } else { FeedState::Live };
        Stock { state, available, held, sold: 10 - available - held }
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
        assert_eq!(tracker.decide(&live(0, 1), 1_001, INTERVAL_MS), Decision::Publish);
        tracker.publish(live(0, 1), 1_001);
        assert_eq!(tracker.decide(&live(1, 0), 1_002, INTERVAL_MS), Decision::Publish);
    }

    #[test]
    fn any_change_of_state_goes_out_at_once() {
        let tracker = Tracker::new(live(5, 0), 1_000);
        for state in [FeedState::Paused, FeedState::Ended, FeedState::Scheduled] {
            let seen = Stock { state, ..live(5, 0) };
            assert_eq!(tracker.decide(&seen, 1_000, INTERVAL_MS), Decision::Publish, "{state:?}");
        }
    }

    #[test]
    fn a_clock_near_its_end_does_not_overflow() {
        let tracker = Tracker::new(live(5, 0), u64::MAX - 1);
        assert_eq!(tracker.decide(&live(4, 1), u64::MAX - 1, INTERVAL_MS), Decision::Wait);
        // The interval's end saturates at the clock's end instead of wrapping to the past.
        assert_eq!(tracker.decide(&live(4, 1), u64::MAX, INTERVAL_MS), Decision::Publish);
    }
}
