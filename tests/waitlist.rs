//! Guards the waitlist's promise: units that come back go to the people who were turned away,
//! in arrival order, each exactly once, never oversold, and the same after replay, a
//! checkpoint, or a crash between a free and its offers.
#![allow(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failed setup stops the test with its message; casts turn small test \
              numbers into indices"
)]

use std::sync::{Arc, Barrier};
use std::thread;

use livestock::alloc::{Allocator, AllocatorConfig};
use livestock_core::command::{Command, HoldView, Line, Outcome, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::error::{CommandError, ErrorCode};
use livestock_core::event::{Event, EventLog, EventSink};
use livestock_core::hold::HoldState;
use livestock_core::ids::{DealId, EntrySeq, HoldIdKey, HoldSeq, UserId};
use livestock_core::waitlist::{EntryState, EntryView};
use parking_lot::Mutex;

const T0: u64 = 1_800_000_000_000;
const TTL_MS: u64 = 60_000;
const OFFER_TTL_MS: u64 = 30_000;

fn config() -> AllocatorConfig {
    AllocatorConfig { hold_id_key: HoldIdKey(11), resolved_hold_retention_ms: 3_600_000 }
}

fn deal_id() -> DealId {
    DealId::parse("drop").expect("id")
}

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("user")
}

fn new_deal(stock: u64, waitlist_max: u32, per_user_limit: Option<u32>) -> NewDeal {
    NewDeal {
        id: deal_id(),
        stream_id: None,
        stock,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit,
        hold_ttl_ms: Some(TTL_MS),
        hold_ttl_ms_max: Some(10 * TTL_MS),
        waitlist_max: Some(waitlist_max),
        offer_ttl_ms: (waitlist_max > 0).then_some(OFFER_TTL_MS),
        draw_window_ms: None,
        draw_seed: None,
    }
}

/// The allocator under test, its events, and a replica that applies them after every step:
/// replay must build the very same state.
struct Fixture {
    live: Allocator,
    log: EventLog,
    applied: usize,
    replica: Allocator,
    now: u64,
}

impl Fixture {
    fn new(deal: NewDeal) -> Self {
        let mut f = Fixture {
            live: Allocator::new(config()),
            log: EventLog::default(),
            applied: 0,
            replica: Allocator::new(config()),
            now: T0,
        };
        f.run(Command::CreateDeal(deal)).expect("created");
        f
    }

    fn run(&mut self, command: Command) -> Result<Outcome, CommandError> {
        let result = self.live.execute(&command, self.now, &mut self.log);
        self.check();
        result
    }

    /// Replays new events on the replica and compares; checks every invariant.
    fn check(&mut self) {
        for event in &self.log.events[self.applied..] {
            self.replica.apply(event).expect("replay applies what the allocator decided");
        }
        self.applied = self.log.events.len();
        self.replica.forget_due(self.now);
        self.live.check_invariants();
        self.replica.check_invariants();
        assert_eq!(self.live.snapshot(), self.replica.snapshot(), "replay differs");
        let restored = Allocator::restore(config(), &self.live.snapshot()).expect("restores");
        assert_eq!(restored.snapshot(), self.live.snapshot(), "a checkpoint differs");
    }

    fn reserve(&mut self, who: &str, qty: u32, waitlist: bool) -> Result<Outcome, CommandError> {
        self.run(Command::Reserve(Reserve {
            user_id: user(who),
            lines: vec![Line { deal_id: deal_id(), qty }],
            ttl_ms: None,
            waitlist,
        }))
    }

    fn hold(&mut self, who: &str, qty: u32) -> HoldSeq {
        match self.reserve(who, qty, false) {
            Ok(Outcome::Holds(holds)) => holds[0].hold.seq,
            other => panic!("{who} reserves {qty}: {other:?}"),
        }
    }

    fn join(&mut self, who: &str, qty: u32) -> EntryView {
        match self.reserve(who, qty, true) {
            Ok(Outcome::Entry(view)) => view,
            other => panic!("{who} joins for {qty}: {other:?}"),
        }
    }

    fn entry(&self, seq: EntrySeq) -> EntryView {
        self.live.entry(seq).expect("the entry")
    }

    fn offer(&self, seq: EntrySeq) -> HoldView {
        let entry = self.entry(seq);
        assert_eq!(entry.entry.state, EntryState::Offered, "{entry:?}");
        let hold = entry.entry.hold.expect("an offered entry names its hold");
        self.live.hold(hold, self.now).expect("the offer")
    }

    /// (available, held, sold, waiting)
    fn counts(&self) -> (u64, u64, u64, u64) {
        let view = self.live.deal("drop", self.now).expect("the deal");
        let c = view.counters;
        (c.available(), c.held(), c.sold(), view.waiting)
    }

    fn tick(&mut self, advance_ms: u64) {
        self.now += advance_ms;
        self.live.expire_due(self.now, &mut self.log);
        self.check();
    }
}

fn code(result: Result<Outcome, CommandError>) -> ErrorCode {
    match result {
        Err(e) => e.code(),
        Ok(outcome) => panic!("expected a refusal, got {outcome:?}"),
    }
}

#[test]
fn a_sold_out_reserve_joins_and_units_that_come_back_are_offered_in_order() {
    let mut f = Fixture::new(new_deal(2, 10, None));
    let a = f.hold("a", 1);
    let b = f.hold("b", 1);
    assert_eq!(code(f.reserve("c", 1, false)), ErrorCode::SoldOut, "no waitlist asked");
    let c = f.join("c", 1);
    assert!(c.created);
    assert_eq!((c.entry.state, c.position), (EntryState::Waiting, Some(1)));
    let d = f.join("d", 1);
    assert_eq!(d.position, Some(2));
    // A second join answers the user's entry, unchanged.
    let again = f.join("c", 1);
    assert!(!again.created);
    assert_eq!(again.entry, c.entry);
    assert_eq!(f.counts(), (0, 2, 0, 2));

    // A release goes to the head, never through `available`.
    f.now += 40_000;
    f.run(Command::Release { hold: a }).expect("released");
    let offer = f.offer(c.entry.seq);
    assert_eq!(offer.origin, Some(c.entry.seq));
    assert_eq!(offer.hold.user_id, user("c"));
    assert_eq!(offer.hold.expires_at_ms, f.now + OFFER_TTL_MS);
    assert_eq!(f.entry(d.entry.seq).position, Some(1), "d moved up");
    assert_eq!(f.counts(), (0, 2, 0, 1));

    // An expiry too; the reaper hands it on in the same step.
    f.tick(TTL_MS - 40_000);
    assert_eq!(f.live.hold(b, f.now).expect("b").state, HoldState::Expired);
    let offer_d = f.offer(d.entry.seq);
    assert_eq!(f.counts(), (0, 2, 0, 0));

    // The offers are holds like any: confirm one, let the other expire (its entry lapses and,
    // with nobody waiting, the unit becomes available).
    f.run(Command::Confirm { hold: offer.hold.seq, qty: None }).expect("confirmed");
    f.tick(OFFER_TTL_MS);
    assert_eq!(f.live.hold(offer_d.hold.seq, f.now).expect("d").state, HoldState::Expired);
    assert_eq!(f.entry(d.entry.seq).entry.state, EntryState::Lapsed);
    assert_eq!(f.entry(c.entry.seq).entry.state, EntryState::Offered, "c bought");
    assert_eq!(f.counts(), (1, 0, 1, 0));
    // With units available a waitlist reserve is a plain reserve.
    assert!(matches!(f.reserve("e", 1, true), Ok(Outcome::Holds(_))));
}

#[test]
fn units_go_to_the_first_entry_they_fit_and_the_rest_to_anyone() {
    let mut f = Fixture::new(new_deal(3, 10, None));
    let a = f.hold("a", 3);
    let big = f.join("big", 2);
    let small = f.join("small", 1);
    // A partial confirm returns 1 unit: too few for the head, enough for the next.
    f.run(Command::Confirm { hold: a, qty: Some(2) }).expect("confirmed");
    assert_eq!(f.entry(big.entry.seq).position, Some(1), "the head keeps its place");
    f.offer(small.entry.seq);
    assert_eq!(f.counts(), (0, 1, 2, 1));
    // Stock added: 3 units, 2 to the head, 1 left for anyone.
    f.run(Command::AdjustStock { deal_id: deal_id(), delta: 3 }).expect("added");
    let offer = f.offer(big.entry.seq);
    assert_eq!(offer.hold.qty, 2);
    assert_eq!(f.counts(), (1, 3, 2, 0));
}

#[test]
fn an_entry_whose_user_reached_the_limit_meanwhile_lapses_and_the_units_go_on() {
    let mut f = Fixture::new(new_deal(1, 10, Some(2)));
    let x = f.hold("x", 1);
    // A user at the limit cannot join.
    let mut g = Fixture::new(new_deal(1, 10, Some(1)));
    g.hold("a", 1);
    assert_eq!(code(g.reserve("a", 1, true)), ErrorCode::PerUserLimit);

    let y = f.join("y", 2);
    let z = f.join("z", 1);
    // One unit added: too few for y (2); z is next and fits.
    f.run(Command::AdjustStock { deal_id: deal_id(), delta: 1 }).expect("added");
    f.offer(z.entry.seq);
    // Another, with nobody it fits: available to anyone, and y buys it while it waits.
    f.run(Command::AdjustStock { deal_id: deal_id(), delta: 1 }).expect("added");
    assert_eq!(f.entry(y.entry.seq).position, Some(1));
    f.hold("y", 1);
    let w = f.join("w", 2);
    // Two come back: y's turn, but 1 held + 2 is over its limit of 2: y lapses, w is served.
    f.run(Command::Release { hold: x }).expect("released");
    f.run(Command::AdjustStock { deal_id: deal_id(), delta: 1 }).expect("added");
    assert_eq!(f.entry(y.entry.seq).entry.state, EntryState::Lapsed);
    assert!(f
        .log
        .events
        .iter()
        .any(|e| matches!(e, Event::WaitlistLapsed { entry, .. } if *entry == y.entry.seq)));
    assert_eq!(f.offer(w.entry.seq).hold.qty, 2);
}

#[test]
fn a_user_who_bought_may_join_again_within_the_limit() {
    let mut f = Fixture::new(new_deal(2, 10, Some(1)));
    let a = f.hold("a", 1);
    f.hold("b", 1);
    let c = f.join("c", 1);
    f.run(Command::Release { hold: a }).expect("released");
    let offer = f.offer(c.entry.seq);
    f.run(Command::Confirm { hold: offer.hold.seq, qty: None }).expect("bought");
    // c's entry is done; a new join is a new entry, refused here by c's limit (1 bought).
    assert_eq!(code(f.reserve("c", 1, true)), ErrorCode::PerUserLimit);
    assert!(f.join("d", 1).created);
}

#[test]
fn cancelling_leaves_the_queue_or_gives_the_offer_up_to_the_next() {
    let mut f = Fixture::new(new_deal(1, 10, None));
    let a = f.hold("a", 1);
    let b = f.join("b", 1);
    let c = f.join("c", 1);
    let d = f.join("d", 1);
    let cancelled = f.run(Command::CancelEntry { entry: c.entry.seq }).expect("cancelled");
    let Outcome::Entry(view) = cancelled else { panic!("{cancelled:?}") };
    assert_eq!((view.entry.state, view.position), (EntryState::Cancelled, None));
    assert_eq!(f.entry(d.entry.seq).position, Some(2));
    // A retry is the same answer; a join after it makes a new entry at the back.
    assert!(f.run(Command::CancelEntry { entry: c.entry.seq }).is_ok());
    let c2 = f.join("c", 1);
    assert!(c2.created && c2.entry.seq != c.entry.seq);
    assert_eq!(c2.position, Some(3));

    f.run(Command::Release { hold: a }).expect("released");
    let offer = f.offer(b.entry.seq);
    // Giving the offer up releases its hold; the unit goes to the next (d).
    f.run(Command::CancelEntry { entry: b.entry.seq }).expect("given up");
    assert_eq!(f.entry(b.entry.seq).entry.state, EntryState::Cancelled);
    assert_eq!(f.live.hold(offer.hold.seq, f.now).expect("b's").state, HoldState::Released);
    let offer_d = f.offer(d.entry.seq);
    // A lapsed entry cannot be cancelled; a bought offer cannot be given up.
    f.tick(OFFER_TTL_MS);
    assert_eq!(f.entry(d.entry.seq).entry.state, EntryState::Lapsed);
    assert_eq!(code(f.run(Command::CancelEntry { entry: d.entry.seq })), ErrorCode::EntryLapsed);
    let offer_c = f.offer(c2.entry.seq);
    f.run(Command::Confirm { hold: offer_c.hold.seq, qty: None }).expect("bought");
    assert_eq!(code(f.run(Command::CancelEntry { entry: c2.entry.seq })), ErrorCode::HoldConfirmed);
    assert_eq!(
        code(f.run(Command::CancelEntry { entry: EntrySeq(9_999) })),
        ErrorCode::UnknownEntry
    );
    let _ = offer_d;
}

#[test]
fn a_full_waitlist_refuses_and_changes_nothing() {
    let mut f = Fixture::new(new_deal(1, 2, None));
    f.hold("a", 1);
    f.join("b", 1);
    f.join("c", 1);
    let before = f.live.snapshot();
    assert_eq!(code(f.reserve("d", 1, true)), ErrorCode::WaitlistFull);
    assert_eq!(f.live.snapshot(), before);
    // A deal without a waitlist refuses as ever.
    let mut g = Fixture::new(new_deal(1, 0, None));
    g.hold("a", 1);
    assert_eq!(code(g.reserve("b", 1, true)), ErrorCode::SoldOut);
}

#[test]
fn an_end_lapses_the_waiting_and_a_pause_holds_offers_until_the_resume() {
    let mut f = Fixture::new(new_deal(1, 10, None));
    let a = f.hold("a", 1);
    let b = f.join("b", 1);
    f.run(Command::PauseDeal(deal_id())).expect("paused");
    f.run(Command::Release { hold: a }).expect("released");
    assert_eq!(f.entry(b.entry.seq).entry.state, EntryState::Waiting, "no offer while paused");
    f.run(Command::ResumeDeal(deal_id())).expect("resumed");
    let offer = f.offer(b.entry.seq);
    let c = f.join("c", 1);
    f.run(Command::EndDeal(deal_id())).expect("ended");
    assert_eq!(f.entry(c.entry.seq).entry.state, EntryState::Lapsed);
    assert_eq!(f.entry(b.entry.seq).entry.state, EntryState::Lapsed, "its offer was released");
    assert_eq!(f.live.hold(offer.hold.seq, f.now).expect("b").state, HoldState::Released);
    assert_eq!(f.counts(), (1, 0, 0, 0));
}

#[test]
fn a_crash_between_a_release_and_its_offer_is_handed_on_by_the_next_tick() {
    let mut f = Fixture::new(new_deal(1, 10, None));
    let a = f.hold("a", 1);
    let b = f.join("b", 1);
    f.run(Command::Release { hold: a }).expect("released");
    let released = f
        .log
        .events
        .iter()
        .position(|e| matches!(e, Event::Released { .. }))
        .expect("the release's record");
    assert!(matches!(f.log.events[released + 1], Event::Offered { .. }), "then the offer's");
    // Recovery of the log up to the release only: the unit is available, b still waits.
    let recovered = Allocator::new(config());
    for event in &f.log.events[..=released] {
        recovered.apply(event).expect("applies");
    }
    recovered.check_invariants();
    let deal = recovered.deal("drop", f.now).expect("deal");
    assert_eq!((deal.counters.available(), deal.waiting), (1, 1));
    let mut log = EventLog::default();
    recovered.expire_due(f.now, &mut log);
    recovered.check_invariants();
    let entry = recovered.entry(b.entry.seq).expect("b");
    assert_eq!(entry.entry.state, EntryState::Offered);
    assert!(matches!(log.events.as_slice(), [Event::Offered { .. }]));
}

/// Many threads reserve (joining the waitlist when sold out), release, confirm and cancel at
/// once: never oversold, every entry resolved once, the replay equal, and at the end no waiting
/// entry that fits what is available.
#[test]
fn concurrent_joins_and_frees_never_oversell_and_replay() {
    for round in 0..20u64 {
        let live = Arc::new(Allocator::new(config()));
        let log = Arc::new(Mutex::new(Vec::<Event>::new()));
        struct Shared(Arc<Mutex<Vec<Event>>>);
        impl EventSink for Shared {
            fn append(&mut self, event: Event, _: &Outcome) {
                self.0.lock().push(event);
            }
        }
        let stock = 5;
        live.execute(
            &Command::CreateDeal(new_deal(stock, 1_000, Some(2))),
            T0,
            &mut Shared(log.clone()),
        )
        .expect("created");
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (live, log, barrier) = (live.clone(), log.clone(), barrier.clone());
                thread::spawn(move || {
                    let mut sink = Shared(log);
                    barrier.wait();
                    for i in 0..60u64 {
                        let who = user(&format!("u{}", (t as u64 * 7 + i * 3 + round) % 23));
                        let qty = 1 + ((i + t as u64) % 2) as u32;
                        let request = Reserve {
                            user_id: who,
                            lines: vec![Line { deal_id: deal_id(), qty }],
                            ttl_ms: None,
                            waitlist: true,
                        };
                        let now = T0 + i;
                        match live.execute(&Command::Reserve(request), now, &mut sink) {
                            Ok(Outcome::Holds(holds)) => {
                                let hold = holds[0].hold.seq;
                                let command = if (i + round) % 3 == 0 {
                                    Command::Confirm { hold, qty: None }
                                } else {
                                    Command::Release { hold }
                                };
                                let _ = live.execute(&command, now, &mut sink);
                            }
                            Ok(Outcome::Entry(view)) if i % 5 == 0 => {
                                let cancel = Command::CancelEntry { entry: view.entry.seq };
                                let _ = live.execute(&cancel, now, &mut sink);
                            }
                            _ => {}
                        }
                        // Offers are holds too: release some of them as they appear.
                        if i % 4 == 0 {
                            let offers: Vec<HoldSeq> = sink
                                .0
                                .lock()
                                .iter()
                                .filter_map(|e| match e {
                                    Event::Offered { hold, .. } => Some(hold.seq),
                                    _ => None,
                                })
                                .collect();
                            if let Some(hold) = offers.get((i as usize + t) % offers.len().max(1)) {
                                let _ =
                                    live.execute(&Command::Release { hold: *hold }, now, &mut sink);
                            }
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("a worker");
        }
        live.check_invariants();
        let deal = live.deal("drop", T0 + 100).expect("deal");
        let c = deal.counters;
        assert_eq!(c.available() + c.held() + c.sold(), stock, "round {round}");
        let replica = Allocator::new(config());
        for event in log.lock().iter() {
            replica.apply(event).expect("replays");
        }
        assert_eq!(replica.snapshot(), live.snapshot(), "round {round}: replay differs");
        // Nobody waits for units that sit available.
        let snapshot = live.snapshot();
        let waiting_min = snapshot
            .waitlists
            .iter()
            .flat_map(|l| l.queue.iter())
            .filter_map(|seq| live.entry(*seq))
            .map(|e| u64::from(e.entry.qty))
            .min();
        if let Some(min) = waiting_min {
            assert!(
                c.available() < min,
                "round {round}: {} available, an entry wants {min}",
                c.available()
            );
        }
    }
}

// ----------------------------------------------------------------------------------- draw

const WINDOW_MS: u64 = 10_000;
const SEED: [u8; 32] = [42; 32];

fn draw_deal(stock: u64, waitlist_max: u32) -> NewDeal {
    NewDeal {
        starts_at_ms: Some(T0 + 1_000),
        draw_window_ms: Some(WINDOW_MS),
        draw_seed: Some(SEED),
        ..new_deal(stock, waitlist_max, None)
    }
}

impl Fixture {
    fn enter(&mut self, who: &str, qty: u32) -> EntryView {
        match self.reserve(who, qty, false) {
            Ok(Outcome::Entry(view)) => view,
            other => panic!("{who} enters for {qty}: {other:?}"),
        }
    }
}

/// Recomputes the draw from what the record reveals, as an outsider would: the order from the
/// seed, then first fit of the units in that order.
fn recompute(record: &livestock::alloc::DrawRecord) -> Vec<EntrySeq> {
    let order =
        livestock_core::draw::draw_order(&SEED, record.entrants.iter().map(|(_, u, _)| u.as_str()));
    assert_eq!(order.iter().map(|i| *i as u32).collect::<Vec<_>>(), record.order);
    let mut units = record.units;
    let mut winners = Vec::new();
    for i in order {
        let (seq, _, qty) = &record.entrants[i];
        if u64::from(*qty) <= units {
            units -= u64::from(*qty);
            winners.push(*seq);
        }
    }
    winners
}

#[test]
fn a_draw_window_takes_entries_then_draws_verifiably() {
    let mut f = Fixture::new(draw_deal(3, 100));
    assert_eq!(code(f.reserve("early", 1, false)), ErrorCode::DealNotStarted);
    f.now = T0 + 1_000;
    let mut entries = Vec::new();
    for i in 0..12 {
        let view = f.enter(&format!("u{i}"), 1 + (i % 2));
        assert_eq!(
            (view.entry.state, view.position, view.created),
            (EntryState::Entered, None, true)
        );
        entries.push(view.entry.seq);
        f.now += 100;
    }
    // Arriving first is worth nothing, asking again changes nothing, a cart cannot enter.
    let again = f.enter("u0", 1);
    assert!(!again.created);
    let cart = f.run(Command::Cart(Reserve {
        user_id: user("carter"),
        lines: vec![Line { deal_id: deal_id(), qty: 1 }],
        ttl_ms: None,
        waitlist: false,
    }));
    assert_eq!(code(cart), ErrorCode::DrawWindow);
    let cancelled = f.enter("quitter", 1).entry.seq;
    f.run(Command::CancelEntry { entry: cancelled }).expect("left the draw");
    assert_eq!(f.counts(), (3, 0, 0, 0), "nothing is held during the window");

    // The window closes: the reaper draws.
    f.now = T0 + 1_000 + WINDOW_MS;
    f.tick(0);
    let view = f.live.draw_view("drop").expect("the deal");
    let record = view.record.expect("drawn");
    assert!(record.closed);
    assert_eq!(record.entrants.len(), 12, "the cancelled entry is not drawn");
    assert_eq!(record.units, 3);
    assert_eq!(recompute(&record), record.winners, "anyone can recompute the winners");
    let held: u64 = record.winners.iter().map(|seq| u64::from(f.offer(*seq).hold.qty)).sum();
    assert_eq!(f.counts().1, held);
    // The others wait in draw order.
    let waiting: Vec<EntrySeq> = record
        .order
        .iter()
        .map(|i| record.entrants[*i as usize].0)
        .filter(|seq| !record.winners.contains(seq))
        .collect();
    for (position, seq) in waiting.iter().enumerate() {
        assert_eq!(f.entry(*seq).position, Some(position as u64 + 1));
    }
    // After the draw, first come first served, and the waitlist takes the latecomers last.
    let late = f.join("late", 1);
    assert_eq!(late.position, Some(waiting.len() as u64 + 1));
}

#[test]
fn a_draw_without_a_waitlist_loses_the_rest_and_a_late_reserve_draws_first() {
    let mut f = Fixture::new(draw_deal(2, 0));
    f.now = T0 + 1_000;
    let entries: Vec<EntrySeq> = (0..6).map(|i| f.enter(&format!("u{i}"), 1).entry.seq).collect();
    // A reserve after the window, before the reaper: the draw runs first, then the reserve.
    f.now = T0 + 1_000 + WINDOW_MS + 5;
    assert_eq!(code(f.reserve("late", 1, true)), ErrorCode::SoldOut);
    let record = f.live.draw_view("drop").and_then(|v| v.record).expect("drawn");
    assert_eq!(record.winners.len(), 2);
    for seq in entries {
        let state = f.entry(seq).entry.state;
        let won = record.winners.contains(&seq);
        assert_eq!(state, if won { EntryState::Offered } else { EntryState::Lost });
    }
    let lost = record.entrants.iter().find(|(seq, _, _)| !record.winners.contains(seq));
    let lost = lost.expect("a lost entry").0;
    assert_eq!(code(f.run(Command::CancelEntry { entry: lost })), ErrorCode::EntryLapsed);
}

#[test]
fn a_crash_inside_a_draw_is_finished_by_the_next_tick_with_the_same_winners() {
    let mut f = Fixture::new(draw_deal(2, 10));
    f.now = T0 + 1_000;
    for i in 0..6 {
        f.enter(&format!("u{i}"), 1);
    }
    f.now = T0 + 1_000 + WINDOW_MS;
    f.tick(0);
    let winners = f.live.draw_view("drop").and_then(|v| v.record).expect("drawn").winners;
    let drawn = f
        .log
        .events
        .iter()
        .position(|e| matches!(e, Event::Drawn { .. }))
        .expect("the draw's record");
    let recovered = Allocator::new(config());
    for event in &f.log.events[..=drawn] {
        recovered.apply(event).expect("applies");
    }
    recovered.check_invariants();
    let mut log = EventLog::default();
    recovered.expire_due(f.now, &mut log);
    recovered.check_invariants();
    let again = recovered.draw_view("drop").and_then(|v| v.record).expect("drawn");
    assert!(again.closed);
    assert_eq!(again.winners, winners);
}

#[test]
fn a_paused_deal_draws_at_its_resume_and_an_end_lapses_the_entries() {
    let mut f = Fixture::new(draw_deal(1, 10));
    f.now = T0 + 1_000;
    f.enter("a", 1);
    f.run(Command::PauseDeal(deal_id())).expect("paused");
    f.now = T0 + 1_000 + WINDOW_MS;
    f.tick(0);
    assert!(f.live.draw_view("drop").and_then(|v| v.record).is_none(), "no draw while paused");
    f.run(Command::ResumeDeal(deal_id())).expect("resumed");
    let record = f.live.draw_view("drop").and_then(|v| v.record).expect("drawn at the resume");
    assert_eq!(record.winners.len(), 1);

    let mut g = Fixture::new(draw_deal(1, 10));
    g.now = T0 + 1_000;
    let a = g.enter("a", 1).entry.seq;
    g.run(Command::EndDeal(deal_id())).expect("ended");
    assert_eq!(g.entry(a).entry.state, EntryState::Lapsed);
    g.now = T0 + 1_000 + WINDOW_MS;
    g.tick(0);
    assert!(g.live.draw_view("drop").and_then(|v| v.record).is_none(), "an ended deal never draws");
}
