//! The engine: turns a schedule into requests on a pool of connections, and answers into the
//! recorder and the ledger.
//!
//! **Open loop.** A pacer thread releases each request at its intended instant, whatever
//! happened to the previous ones, into a queue that the connection workers drain. When every
//! connection is busy a request waits in the queue, and its latency still counts from its
//! intended instant: a stalled server cannot hide its stall by slowing the sender (coordinated
//! omission). The pacer is an OS thread sleeping on a deadline rather than a tokio timer, whose
//! 1 ms grain would add up to a millisecond to every latency.
//!
//! **Closed loop.** `concurrency` reserves are in flight at any time; a worker sends the next
//! as soon as the previous is answered, and latency counts from the actual send. Labelled as
//! such everywhere, because it under-counts stalls.
//!
//! After a granted reserve the viewer's follow-up (confirm or release after a payment delay)
//! goes back to the pacer with its own intended instant.
//!
//! **The waitlist** (`--waitlist`): a reserve answered with an entry (202) makes the viewer
//! read the entry later (`GET /v1/waitlist/{id}`), sooner the nearer the head of the queue
//! ([`crate::waitlist::poll_delay_ms`]); the reads wait in the pacer until their instant and
//! then for the poll budget (`--entry-poll-rate`, a token bucket), so however many entries
//! fall due at once the reads never exceed the rate. An offer the read sees is followed up as
//! a won reserve is. At the end of the followed window every read still to come becomes the
//! entry's cancel (the viewer gives up), so the run ends.
//!
//! **Several targets** (a cluster): connections are spread over the nodes round-robin. A
//! request that no node could serve (refused connection, reset, 503 `no_leader`) is sent again
//! on the next node, with the same idempotency key (follow-ups carry keys too when retries are
//! on), after a short backoff, within one request timeout; every attempt is counted per target
//! and outcome, and only an OK answer is booked as acknowledged. Its latency counts from its
//! intended instant to the last attempt's answer, as a user would feel it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, RecvTimeoutError};
// parking_lot, not `crate::sync`: this is a client shell, never model-checked under loom, and
// its locks are held for a few counter updates, never across an `.await`.
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::backend::{Backend, Conn, Reserved};
use crate::client::Outcome;
use crate::ledger::{user_id, Answered, Fate, HoldRecord, Ledger};
use crate::recorder::{Op, Recorder};
use crate::schedule::{After, Arrival, Schedule};
use crate::waitlist::{
    poll_delay_ms, poll_ms_max, EntryFate, EntryStep, Joined, PollBudget, QueueSpeed,
};

/// How often the available stock is sampled for the burn-down chart.
pub const STOCK_POLL_MS: u64 = 100;
/// The pacer never sleeps longer than this, so it notices a stop promptly.
const PACER_NAP_MS: u64 = 50;

/// Open or closed loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Open,
    Closed { concurrency: usize },
}

/// The deals a run drives, by index.
#[derive(Clone, Debug)]
pub struct Deals {
    pub ids: Vec<String>,
    /// Units each deal could sell at the start (for fairness: the first this many units' worth
    /// of arrivals are the ones a first-come-first-served server would serve).
    pub units: Vec<u64>,
}

/// What to drive, and how.
pub struct Plan {
    pub backend: Backend,
    pub mode: Mode,
    /// Connections (workers) in open loop.
    pub connections: usize,
    pub schedule: Schedule,
    /// Length of the arrival phase, µs (the closed loop stops feeding reserves at its end).
    pub phase_us: u64,
    pub hold_ttl_ms: u64,
    /// Prefix of idempotency keys, unique per run.
    pub run_id: String,
    /// Sample the stock every 100 ms.
    pub poll_stock: bool,
    /// Print a progress line every second.
    pub progress: bool,
    /// SIGUSR1, listened to during the run: each signal marks an instant (a node's kill) for
    /// the report's time to the first acknowledged write after it.
    pub marks: Option<tokio::signal::unix::Signal>,
    /// `--waitlist`: reserves join the waitlist, and entries are followed.
    pub waitlist: Option<WaitlistPlan>,
}

/// How the entries of a `--waitlist` run are followed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WaitlistPlan {
    pub offer_ttl_ms: u64,
    /// Entry reads per second, all entries together.
    pub poll_rate_per_s: f64,
    /// Entries are read until this instant (µs from the start); then those still waiting are
    /// cancelled.
    pub follow_until_us: u64,
}

enum Task {
    Reserve {
        arrival: Arrival,
        early: bool,
    },
    Confirm {
        hold: usize,
        hold_id: String,
    },
    Release {
        hold: usize,
        hold_id: String,
    },
    /// Read a waitlist entry (within the poll budget).
    Poll {
        entry: usize,
        entry_id: String,
    },
    /// Cancel a waitlist entry still waiting at the end of the followed window.
    Cancel {
        entry: usize,
        entry_id: String,
    },
}

struct Job {
    intended: Instant,
    task: Task,
    /// Closed loop: the reserve's slot, freed when the job is done.
    _permit: Option<OwnedSemaphorePermit>,
}

/// A follow-up waiting for its instant in the pacer.
struct Due {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Shared {
    t0: Instant,
    open_loop: bool,
    recorder: Mutex<Recorder>,
    ledger: Mutex<Ledger>,
    jobs: mpsc::UnboundedSender<Job>,
    follow_ups: channel::Sender<(Instant, Job)>,
    /// Jobs created and not yet finished (queued, in flight, or follow-ups waiting).
    outstanding: AtomicU64,
    arrivals_done: AtomicBool,
    stop: AtomicBool,
    all_done: Notify,
    deal_ids: Vec<String>,
    ttl_ms: u64,
    run_id: String,
    /// A request's whole time, retries included.
    timeout: Duration,
    /// Confirms and releases carry idempotency keys (when requests may be retried).
    key_follow_ups: bool,
    waitlist: Option<WaitlistPlan>,
    /// How fast each deal's waitlist moves, as the reads see it.
    speeds: Mutex<Vec<QueueSpeed>>,
}

impl Shared {
    fn us(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.t0).as_micros()).unwrap_or(u64::MAX)
    }

    /// Hands a job to the workers, counting it as offered at its intended instant.
    fn enqueue(&self, job: Job) {
        self.recorder.lock().offered(self.us(job.intended));
        // The receiver lives as long as the workers; after a stop the job is simply dropped.
        let _ = self.jobs.send(job);
    }

    fn mark_arrivals_done(&self) {
        self.arrivals_done.store(true, Ordering::SeqCst);
        if self.outstanding.load(Ordering::SeqCst) == 0 {
            self.all_done.notify_one();
        }
    }

    fn finish_one(&self) {
        if self.outstanding.fetch_sub(1, Ordering::SeqCst) == 1
            && self.arrivals_done.load(Ordering::SeqCst)
        {
            self.all_done.notify_one();
        }
    }

    fn follow_up(&self, at: Instant, task: Task) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        let job = Job { intended: at, task, _permit: None };
        if self.follow_ups.send((at, job)).is_err() {
            self.finish_one();
        }
    }

    /// One attempt of a job on `conn`.
    async fn attempt(&self, conn: &mut Conn, task: &Task) -> (Op, Reserved) {
        match task {
            Task::Reserve { arrival, .. } => {
                let key = format!("{}-r{}", self.run_id, arrival.index);
                let user = user_id(arrival.viewer);
                let deal = &self.deal_ids[arrival.deal];
                let join = self.waitlist.is_some();
                let reserved =
                    conn.reserve_or_wait(deal, &key, &user, arrival.qty, self.ttl_ms, join).await;
                (Op::Reserve, reserved)
            }
            Task::Confirm { hold, hold_id } => {
                let key = self.key_follow_ups.then(|| format!("{}-c{hold}", self.run_id));
                let outcome = conn.confirm(hold_id, key.as_deref()).await;
                (Op::Confirm, Reserved { outcome, hold_id: None, entry: None })
            }
            Task::Release { hold, hold_id } => {
                let key = self.key_follow_ups.then(|| format!("{}-x{hold}", self.run_id));
                let outcome = conn.release(hold_id, key.as_deref()).await;
                (Op::Release, Reserved { outcome, hold_id: None, entry: None })
            }
            Task::Poll { entry_id, .. } => {
                let (outcome, entry) = conn.entry(entry_id, false, None).await;
                (Op::Entry, Reserved { outcome, hold_id: None, entry })
            }
            Task::Cancel { entry, entry_id } => {
                let key = self.key_follow_ups.then(|| format!("{}-w{entry}", self.run_id));
                let (outcome, entry) = conn.entry(entry_id, true, key.as_deref()).await;
                (Op::Cancel, Reserved { outcome, hold_id: None, entry })
            }
        }
    }

    /// Runs one job on `conn`, retried while the connection says so (within one request
    /// timeout), and books its answer.
    async fn run(&self, conn: &mut Conn, job: Job) {
        let started = Instant::now();
        conn.set_budget_end(Some(started + self.timeout));
        let mut retry = 0;
        let (op, Reserved { outcome, hold_id, entry }, last_started) = loop {
            let attempt_started = Instant::now();
            let (op, answer) = self.attempt(conn, &job.task).await;
            self.recorder.lock().attempt(conn.last_target(), &answer.outcome);
            match conn.retry_wait(retry, &answer.outcome) {
                Some(wait) if Instant::now() + wait < started + self.timeout => {
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                _ => break (op, answer, attempt_started),
            }
        };
        conn.set_budget_end(None);
        let done = Instant::now();
        let from = if self.open_loop { job.intended } else { started };
        let latency_us =
            u64::try_from(done.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX);
        let (intended_us, started_us, done_us) =
            (self.us(job.intended), self.us(started), self.us(done));
        {
            let mut recorder = self.recorder.lock();
            recorder.record(op, &outcome, intended_us, started_us, done_us, latency_us);
            // A read is not a write.
            if matches!(outcome, Outcome::Ok | Outcome::Waitlisted) && op != Op::Entry {
                recorder.acknowledged(self.us(last_started), done_us);
            }
        }
        let answered = match &outcome {
            Outcome::Ok | Outcome::Waitlisted => Answered::Ok,
            refused if refused.is_known_refusal() => Answered::Refused,
            Outcome::Refused { .. } | Outcome::Transport(_) => Answered::Unknown,
        };
        match job.task {
            Task::Reserve { arrival, early } => {
                if let (Outcome::Waitlisted, Some(seen)) = (&outcome, &entry) {
                    let joined = {
                        let mut ledger = self.ledger.lock();
                        ledger.deals[arrival.deal].early_arrivals += u64::from(early);
                        let offer_ttl_us = self.offer_ttl_us();
                        let (deal, viewer, after) = (arrival.deal, arrival.viewer, arrival.after);
                        ledger.joined(deal, viewer, after, seen, started_us, done_us, offer_ttl_us)
                    };
                    match joined {
                        Joined::New { entry, position } => {
                            self.next_poll(entry, &seen.entry_id, arrival.deal, position, done);
                        }
                        Joined::Offer { hold, .. } => self.follow_offer(hold, arrival.after, done),
                        Joined::Known => {}
                    }
                    return;
                }
                self.booked_reserve(arrival, early, &outcome, hold_id, started_us, done_us, done);
            }
            Task::Confirm { hold, .. } => self.ledger.lock().confirmed(hold, answered),
            Task::Release { hold, .. } => self.ledger.lock().released(hold, answered, started_us),
            Task::Poll { entry: at, entry_id } => {
                self.booked_read(at, &entry_id, &outcome, entry.as_ref(), started_us, done);
            }
            Task::Cancel { entry: at, .. } => {
                let answer = match (&answered, &entry) {
                    (Answered::Ok, Some(seen)) => Ok(seen),
                    (Answered::Refused, _) => Err(true),
                    _ => Err(false),
                };
                self.ledger.lock().entry_cancelled(at, answer);
            }
        }
    }

    fn offer_ttl_us(&self) -> u64 {
        self.waitlist.map_or(self.ttl_ms, |w| w.offer_ttl_ms) * 1_000
    }

    /// Reads entry `entry` again after the wait its position calls for (at the latest at the
    /// end of the followed window, where the read becomes its cancel).
    fn next_poll(&self, entry: usize, entry_id: &str, deal: usize, position: u64, now: Instant) {
        let Some(plan) = self.waitlist else { return };
        let speed = self.speeds.lock()[deal];
        let delay_ms = poll_delay_ms(position, speed, poll_ms_max(plan.offer_ttl_ms));
        let until = self.t0 + Duration::from_micros(plan.follow_until_us);
        let at = (now + Duration::from_millis(delay_ms)).min(until.max(now));
        self.follow_up(at, Task::Poll { entry, entry_id: entry_id.to_owned() });
    }

    /// The viewer of an offer does what it drew for its tap: pays, changes its mind, or walks
    /// away, as a winner of a reserve.
    fn follow_offer(&self, hold: usize, after: After, now: Instant) {
        let hold_id = self.ledger.lock().holds[hold].hold_id.clone();
        match after {
            After::Expire => self.ledger.lock().let_expire(hold),
            After::Confirm { delay_us } => {
                self.follow_up(now + us(delay_us), Task::Confirm { hold, hold_id });
            }
            After::Release { delay_us } => {
                self.follow_up(now + us(delay_us), Task::Release { hold, hold_id });
            }
        }
    }

    /// Books a read of entry `entry` and does what it calls for.
    fn booked_read(
        &self,
        entry: usize,
        entry_id: &str,
        outcome: &Outcome,
        seen: Option<&crate::waitlist::EntrySeen>,
        sent_us: u64,
        done: Instant,
    ) {
        let done_us = self.us(done);
        let mut ledger = self.ledger.lock();
        ledger.entry_read_sent(entry);
        let (deal, after, before) = {
            let e = &ledger.entries[entry];
            (e.deal, e.after, e.position.map(|p| (p, e.position_us)))
        };
        let Some(seen) = seen.filter(|_| *outcome == Outcome::Ok) else {
            ledger.entry_read_failed(entry);
            drop(ledger);
            // An entry the server does not know is not read again: the final read judges it.
            if outcome.label() != "unknown_entry" {
                self.next_poll(entry, entry_id, deal, u64::MAX, done);
            }
            return;
        };
        let step = ledger.entry_read(entry, seen, sent_us, done_us, self.offer_ttl_us());
        drop(ledger);
        match step {
            EntryStep::Wait { position } => {
                if let Some((was, was_us)) = before {
                    let moved = was.saturating_sub(position);
                    self.speeds.lock()[deal].observe(moved, done_us.saturating_sub(was_us));
                }
                self.next_poll(entry, entry_id, deal, position, done);
            }
            EntryStep::Offer { hold } => self.follow_offer(hold, after, done),
            EntryStep::Done => {}
        }
    }

    #[expect(clippy::too_many_arguments, reason = "one call site; a struct would only rename them")]
    fn booked_reserve(
        &self,
        arrival: Arrival,
        early: bool,
        outcome: &Outcome,
        hold_id: Option<String>,
        sent_us: u64,
        acked_us: u64,
        done: Instant,
    ) {
        let mut ledger = self.ledger.lock();
        let hold_id = match (outcome, hold_id) {
            (Outcome::Ok, Some(hold_id)) => hold_id,
            (Outcome::Refused { code, .. }, _) if outcome.is_known_refusal() => {
                ledger.reserve_refused(arrival.deal, arrival.qty, code, sent_us, acked_us, early);
                return;
            }
            // No answer, a server error, or a 2xx without a hold id: the units may be held.
            _ => {
                ledger.reserve_unknown(arrival.deal, arrival.qty, early);
                return;
            }
        };
        let hold = ledger.reserved(
            HoldRecord {
                hold_id: hold_id.clone(),
                deal: arrival.deal,
                viewer: arrival.viewer,
                qty: arrival.qty,
                sent_us,
                acked_us,
                ttl_us: self.ttl_ms * 1_000,
                fate: Fate::Open,
                entry_id: None,
            },
            early,
        );
        match arrival.after {
            After::Expire => ledger.let_expire(hold),
            After::Confirm { delay_us } => {
                drop(ledger);
                let at = done + Duration::from_micros(delay_us);
                self.follow_up(at, Task::Confirm { hold, hold_id });
            }
            After::Release { delay_us } => {
                drop(ledger);
                let at = done + Duration::from_micros(delay_us);
                self.follow_up(at, Task::Release { hold, hold_id });
            }
        }
    }
}

/// Marks each arrival that falls within the first `units` of its deal.
struct EarlyMarker {
    units: Vec<u64>,
    seen: Vec<u64>,
}

impl EarlyMarker {
    fn mark(&mut self, arrival: &Arrival) -> bool {
        let early = self.seen[arrival.deal] < self.units[arrival.deal];
        self.seen[arrival.deal] += u64::from(arrival.qty);
        early
    }
}

/// The pacer thread: releases arrivals (open loop) and follow-ups at their instants.
fn pace(
    shared: Arc<Shared>,
    mut arrivals: Option<(Schedule, EarlyMarker)>,
    follow_ups: channel::Receiver<(Instant, Job)>,
) {
    let mut waiting: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    // Entry reads that are due, waiting for the budget, by entry: the entries made first are
    // nearest the head of their queue (it serves in arrival order), so they are read first and
    // a budget too small for every entry starves only those far back, which no offer reaches
    // soon. (Entry indexes follow the answers' order, close to the server's.)
    let mut due_polls: std::collections::BTreeMap<usize, String> =
        std::collections::BTreeMap::new();
    let mut budget = shared.waitlist.map(|w| PollBudget::new(w.poll_rate_per_s));
    let follow_until = shared.waitlist.map(|w| shared.t0 + us(w.follow_until_us));
    let mut seq = 0u64;
    let mut next = arrivals.as_mut().and_then(|(s, _)| s.next());
    if arrivals.is_some() && next.is_none() {
        shared.mark_arrivals_done();
    }
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(arrival) = next.filter(|a| shared.t0 + us(a.offset_us) <= now) {
            let Some((schedule, marker)) = arrivals.as_mut() else { break };
            shared.outstanding.fetch_add(1, Ordering::SeqCst);
            let early = marker.mark(&arrival);
            let intended = shared.t0 + us(arrival.offset_us);
            shared.enqueue(Job { intended, task: Task::Reserve { arrival, early }, _permit: None });
            next = schedule.next();
            if next.is_none() {
                shared.mark_arrivals_done();
            }
        }
        while waiting.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(due)) = waiting.pop() {
                if let Task::Poll { entry, entry_id } = due.job.task {
                    due_polls.insert(entry, entry_id);
                } else {
                    shared.enqueue(due.job);
                }
            }
        }
        let over = follow_until.is_some_and(|until| now >= until);
        let now_us = shared.us(now);
        while let Some(&entry) = due_polls.keys().next() {
            // An entry offered meanwhile (a repeated tap answered with its offer) is neither
            // read nor cancelled again: its viewer is paying.
            if shared.ledger.lock().entries[entry].fate != EntryFate::Waiting {
                due_polls.remove(&entry);
                shared.finish_one();
                continue;
            }
            // The window is over: the viewer gives up, at once and whatever the budget.
            let task = if over {
                let Some(entry_id) = due_polls.remove(&entry) else { break };
                shared.ledger.lock().entry_cancel_sent(entry);
                Task::Cancel { entry, entry_id }
            } else if budget.as_mut().is_some_and(|b| b.take(now_us)) {
                let Some(entry_id) = due_polls.remove(&entry) else { break };
                Task::Poll { entry, entry_id }
            } else {
                break;
            };
            // Counted from its release: the budget's queue is the tool's choice, not the
            // server's latency.
            shared.enqueue(Job { intended: now, task, _permit: None });
        }
        let mut wake = now + Duration::from_millis(PACER_NAP_MS);
        if !due_polls.is_empty() {
            let wait_us = budget.as_mut().map_or(0, |b| b.wait_us(now_us)).max(100);
            wake = wake.min(now + us(wait_us));
        }
        if let Some(until) = follow_until.filter(|u| *u > now && !due_polls.is_empty()) {
            wake = wake.min(until);
        }
        if let Some(arrival) = &next {
            wake = wake.min(shared.t0 + us(arrival.offset_us));
        }
        if let Some(Reverse(due)) = waiting.peek() {
            wake = wake.min(due.at);
        }
        match follow_ups.recv_deadline(wake) {
            Ok((at, job)) => {
                waiting.push(Reverse(Due { at, seq, job }));
                seq += 1;
                while let Ok((at, job)) = follow_ups.try_recv() {
                    waiting.push(Reverse(Due { at, seq, job }));
                    seq += 1;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn us(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// Closed loop: keeps `concurrency` reserves in flight until the schedule or the time ends.
async fn feed_closed(
    shared: Arc<Shared>,
    schedule: Schedule,
    mut marker: EarlyMarker,
    concurrency: usize,
    end: Instant,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    for arrival in schedule {
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        if Instant::now() >= end {
            break;
        }
        shared.outstanding.fetch_add(1, Ordering::SeqCst);
        let early = marker.mark(&arrival);
        let job = Job {
            intended: Instant::now(),
            task: Task::Reserve { arrival, early },
            _permit: Some(permit),
        };
        shared.enqueue(job);
    }
    shared.mark_arrivals_done();
}

async fn work(
    shared: Arc<Shared>,
    mut conn: Conn,
    jobs: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>,
) {
    loop {
        // A tokio mutex: the guard is held while waiting for the next job (one waiter at the
        // queue, the others in line behind the lock, FIFO).
        let job = jobs.lock().await.recv().await;
        let Some(job) = job else { return };
        shared.run(&mut conn, job).await;
        shared.finish_one();
    }
}

/// Samples the run's available stock every [`STOCK_POLL_MS`] on a connection of its own.
async fn poll_stock(shared: Arc<Shared>, mut conn: Conn, ids: Vec<String>) {
    let mut tick = tokio::time::interval(Duration::from_millis(STOCK_POLL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(available) = conn.available(&ids).await {
            let t_us = shared.us(Instant::now());
            shared.recorder.lock().stock_sample(t_us, available);
        }
    }
}

/// Marks an instant in the recorder at each SIGUSR1.
async fn listen_for_marks(shared: Arc<Shared>, mut signal: tokio::signal::unix::Signal) {
    while signal.recv().await.is_some() {
        let at_us = shared.us(Instant::now());
        shared.recorder.lock().mark(at_us);
    }
}

async fn show_progress(shared: Arc<Shared>) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let line = shared.recorder.lock().progress_line(shared.us(Instant::now()));
        if tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// A run in progress.
pub struct Driver {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    feeder: Option<JoinHandle<()>>,
    watchers: Vec<JoinHandle<()>>,
    pacer: Option<std::thread::JoinHandle<()>>,
    progress: bool,
}

/// What a finished run measured.
pub struct Driven {
    pub recorder: Recorder,
    pub ledger: Ledger,
    /// Requests still queued or in flight when the deadline stopped the run.
    pub abandoned: u64,
}

impl Driver {
    /// Connects every worker, then starts the clock.
    pub async fn start(plan: Plan, deals: &Deals) -> Result<Driver, String> {
        let Plan {
            backend,
            mode,
            connections,
            schedule,
            phase_us,
            hold_ttl_ms,
            run_id,
            poll_stock: poll,
            progress,
            marks,
            waitlist,
        } = plan;
        let workers_n = match mode {
            Mode::Open => connections,
            Mode::Closed { concurrency } => concurrency,
        };
        let mut conns = Vec::with_capacity(workers_n);
        for i in 0..workers_n {
            let mut conn = backend.conn_at(i);
            conn.connect().await?;
            conns.push(conn);
        }
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (follow_tx, follow_rx) = channel::unbounded();
        // A short lead so that the first arrivals are not late by the time spawning took.
        let t0 = Instant::now() + Duration::from_millis(20);
        let shared = Arc::new(Shared {
            t0,
            open_loop: mode == Mode::Open,
            recorder: Mutex::new(Recorder::new(
                phase_us,
                &backend.targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )),
            ledger: Mutex::new(Ledger::new(deals.ids.len())),
            jobs: jobs_tx,
            follow_ups: follow_tx,
            outstanding: AtomicU64::new(0),
            arrivals_done: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            all_done: Notify::new(),
            deal_ids: deals.ids.clone(),
            ttl_ms: hold_ttl_ms,
            run_id,
            timeout: backend.timeout,
            key_follow_ups: backend.retries > 0,
            waitlist,
            speeds: Mutex::new(vec![QueueSpeed::default(); deals.ids.len()]),
        });
        let jobs_rx = Arc::new(tokio::sync::Mutex::new(jobs_rx));
        let workers = conns
            .into_iter()
            .map(|conn| tokio::spawn(work(shared.clone(), conn, jobs_rx.clone())))
            .collect();
        let marker = EarlyMarker { units: deals.units.clone(), seen: vec![0; deals.ids.len()] };
        let (arrivals, feeder) = match mode {
            Mode::Open => (Some((schedule, marker)), None),
            Mode::Closed { concurrency } => {
                let end = t0 + Duration::from_micros(phase_us);
                let feed = feed_closed(shared.clone(), schedule, marker, concurrency, end);
                (
                    None,
                    Some(tokio::spawn(async move {
                        tokio::time::sleep_until(t0.into()).await;
                        feed.await;
                    })),
                )
            }
        };
        let pacer_shared = shared.clone();
        let pacer = std::thread::Builder::new()
            .name("load-pacer".to_owned())
            .spawn(move || pace(pacer_shared, arrivals, follow_rx))
            .map_err(|e| format!("cannot start the pacer thread: {e}"))?;
        let mut watchers = Vec::new();
        if poll {
            let mut conn = backend.conn();
            conn.connect().await?;
            watchers.push(tokio::spawn(poll_stock(shared.clone(), conn, deals.ids.clone())));
        }
        if progress {
            watchers.push(tokio::spawn(show_progress(shared.clone())));
        }
        if let Some(signal) = marks {
            watchers.push(tokio::spawn(listen_for_marks(shared.clone(), signal)));
        }
        Ok(Driver { shared, workers, feeder, watchers, pacer: Some(pacer), progress })
    }

    /// The run's start: every µs of the recorder and the ledger counts from it.
    pub fn t0(&self) -> Instant {
        self.shared.t0
    }

    /// Waits until every request of the run (reserves and their follow-ups) is answered, or
    /// until `deadline_us` (µs since the start), then stops the senders. The stock poller and
    /// the progress line keep going until [`Driver::stop`].
    pub async fn finish(&mut self, deadline_us: u64) -> bool {
        let deadline = self.shared.t0 + Duration::from_micros(deadline_us);
        let done = tokio::time::timeout_at(deadline.into(), self.shared.all_done.notified()).await;
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(feeder) = self.feeder.take() {
            feeder.abort();
        }
        for worker in self.workers.drain(..) {
            worker.abort();
        }
        if let Some(pacer) = self.pacer.take() {
            let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
        }
        done.is_ok()
    }

    /// Stops the watchers and hands back the measurements.
    pub fn stop(self, completed: bool) -> Driven {
        for watcher in &self.watchers {
            watcher.abort();
        }
        if self.progress && std::io::stderr().is_terminal() {
            eprintln!();
        }
        let abandoned = if completed { 0 } else { self.shared.outstanding.load(Ordering::SeqCst) };
        let recorder = std::mem::replace(&mut *self.shared.recorder.lock(), Recorder::new(0, &[]));
        let ledger = std::mem::take(&mut *self.shared.ledger.lock());
        Driven { recorder, ledger, abandoned }
    }
}
