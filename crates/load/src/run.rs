//! One invocation of `livestock-load`, from set-up to verdict: wait for the target (or for a
//! cluster's leader), create or read the deals, drive the load, drain the holds left to
//! expire, read the counters and every hold back, verify them against the client's ledger,
//! write the report and the plot, and pick the exit code.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livestock_core::limits::EXPIRY_TICK_MS;

use crate::args::LoadArgs;
use crate::backend::{Backend, BackendKind, Conn};
use crate::capacity::{self, CapacityReport};
use crate::client::Client;
use crate::draw_check;
use crate::driver::{self, Deals, Driver, Mode, Plan, WaitlistPlan};
use crate::feed::{self, rss_kib, ServerRss};
use crate::ledger::{verify, Counters, DealState, Fate, HoldRead};
use crate::limits::{ARRIVALS_MAX, CLIENT_THREADS_MAX, DRAIN_GRACE_MS, HOLD_READ_CONNECTIONS_MAX};
use crate::plot;
use crate::recorder::us_to_ms;
use crate::report::{self, RunReport, SellOut};
use crate::schedule::Schedule;
use crate::settings::{settings, Settings};
use crate::waitlist_check::{self, check_entries, EntryRead, ReadHold, WaitlistReport};

/// What `livestock-load` produced.
#[derive(Clone, Debug)]
pub enum LoadOutcome {
    Run(Box<RunReport>),
    Capacity(CapacityReport),
}

/// Runs the load the arguments describe, writes `--json` and `--plot` if asked, and returns
/// the report. Errors are set-up problems (bad arguments, no server, a deal that cannot be
/// created); a server that misbehaves under load is a report whose verification failed.
pub async fn run(args: &LoadArgs) -> Result<LoadOutcome, String> {
    let settings = settings(args)?;
    // Listened to from the start: a SIGUSR1 ends a process that does not (a script marking a
    // kill must not kill the load instead). Marks are taken during a single run.
    let marks = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    // `livestock serve & livestock-load ...` starts both at once: give the server a moment.
    settings.backend.wait_until_answering(settings.wait).await?;
    let outcome = if settings.capacity.is_some() {
        LoadOutcome::Capacity(capacity::find_capacity(&settings).await?)
    } else {
        LoadOutcome::Run(Box::new(single(&settings, marks).await?))
    };
    if let Some(path) = &args.json {
        let json = match &outcome {
            LoadOutcome::Run(report) => serde_json::to_string_pretty(report),
            LoadOutcome::Capacity(report) => serde_json::to_string_pretty(report),
        }
        .map_err(|e| format!("cannot encode the report: {e}"))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write --json {}: {e}", path.display()))?;
    }
    if let (Some(path), LoadOutcome::Run(report)) = (&args.plot, &outcome) {
        plot::write_svg(report, path)?;
    }
    Ok(outcome)
}

/// Reads the counters of every deal.
async fn read_all(admin: &mut Conn, ids: &[String]) -> Result<Vec<Counters>, String> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(admin.deal(id).await?.0);
    }
    Ok(out)
}

/// Reads every hold back (`GET /v1/holds/{id}`) on up to [`HOLD_READ_CONNECTIONS_MAX`]
/// connections spread over the targets, each retried on the next node as the load's are;
/// `reads[i]` is `ids[i]`'s.
async fn read_holds(backend: &Backend, ids: Vec<String>) -> Vec<HoldRead> {
    let reads = read_back(backend, ids, false).await;
    reads
        .into_iter()
        .map(|r| match r {
            Reading::Hold(hold) => hold,
            Reading::Entry(_) => HoldRead::Unread("not read".to_owned()),
        })
        .collect()
}

/// Reads every waitlist entry back (`GET /v1/waitlist/{id}`), as [`read_holds`] does holds.
async fn read_entries(backend: &Backend, ids: Vec<String>) -> Vec<EntryRead> {
    let reads = read_back(backend, ids, true).await;
    reads
        .into_iter()
        .map(|r| match r {
            Reading::Entry(entry) => entry,
            Reading::Hold(_) => EntryRead::Unread("not read".to_owned()),
        })
        .collect()
}

/// One read of [`read_back`].
#[derive(Clone)]
enum Reading {
    Hold(HoldRead),
    Entry(EntryRead),
}

/// Reads holds (or with `entries`, waitlist entries) back on up to
/// [`HOLD_READ_CONNECTIONS_MAX`] connections; `reads[i]` is `ids[i]`'s.
async fn read_back(backend: &Backend, ids: Vec<String>, entries: bool) -> Vec<Reading> {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let readers = HOLD_READ_CONNECTIONS_MAX.min(ids.len());
    let tasks: Vec<_> = (0..readers)
        .map(|i| {
            let mut client = Client::new(&backend.targets, i, backend.timeout, backend.retries);
            let (ids, next) = (ids.clone(), next.clone());
            tokio::spawn(async move {
                let mut read = Vec::new();
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = ids.get(at) else { return read };
                    let reading = if entries {
                        Reading::Entry(match client.entry(id).await {
                            Ok(Some(entry)) => EntryRead::Found(entry),
                            Ok(None) => EntryRead::Missing,
                            Err(why) => EntryRead::Unread(why),
                        })
                    } else {
                        Reading::Hold(match client.hold(id).await {
                            Ok(Some(hold)) => HoldRead::Found(hold),
                            Ok(None) => HoldRead::Missing,
                            Err(why) => HoldRead::Unread(why),
                        })
                    };
                    read.push((at, reading));
                }
            })
        })
        .collect();
    let unread = if entries {
        Reading::Entry(EntryRead::Unread("not read".to_owned()))
    } else {
        Reading::Hold(HoldRead::Unread("not read".to_owned()))
    };
    let mut reads = vec![unread; ids.len()];
    for task in tasks {
        // A reader that panicked leaves its reads undone, which fails the verification.
        for (at, reading) in task.await.unwrap_or_default() {
            reads[at] = reading;
        }
    }
    reads
}

/// The wall clock now, ms since the epoch (the server's timestamps count from it).
fn wall_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// `instant` on the wall clock, ms since the epoch.
fn wall_ms_at(instant: Instant) -> u64 {
    let (wall, now) = (wall_ms(), Instant::now());
    if instant >= now {
        wall + u64::try_from((instant - now).as_millis()).unwrap_or(0)
    } else {
        wall.saturating_sub(u64::try_from((now - instant).as_millis()).unwrap_or(0))
    }
}

/// At the end of the followed window, before the cancels: the deals with units available
/// (at least `qty`, what one entry asks) while entries wait, twice a couple of reaper ticks
/// apart (the server publishes `waiting` beside the counters, not with them), as
/// `deal: available, waiting`.
async fn waiting_while_available(
    backend: Backend,
    ids: Vec<String>,
    at: Instant,
    qty: u32,
) -> Vec<String> {
    tokio::time::sleep_until(at.into()).await;
    let Conn::Http(mut client) = backend.conn() else { return Vec::new() };
    let mut found = Vec::new();
    for id in &ids {
        let suspect = |c: Counters, waiting: u64| c.available >= u64::from(qty) && waiting > 0;
        let Ok((c, waiting)) = client.deal_waiting(id).await else { continue };
        if !suspect(c, waiting) {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(2 * EXPIRY_TICK_MS)).await;
        if let Ok((c, waiting)) = client.deal_waiting(id).await {
            if suspect(c, waiting) {
                found.push(format!("{id}: {} available, {waiting} waiting", c.available));
            }
        }
    }
    found
}

/// One run: set up the deals, drive the load, drain the holds, verify, report.
async fn single(
    s: &Settings,
    marks: Option<tokio::signal::unix::Signal>,
) -> Result<RunReport, String> {
    let started = Instant::now();
    let mut admin = s.backend.admin().await?;
    // A peer's hold expiry (livestock runs its own), through the drain.
    let _reaper = s.backend.start_reaper(Duration::from_millis(EXPIRY_TICK_MS)).await?;
    let (ids, limits) = if s.existing_deals.is_empty() {
        let mut ids = Vec::new();
        for i in 0..s.deals {
            let id = format!("{}-d{i}", s.run_id);
            let waitlist = s.waitlist.map(|w| (w.max, w.offer_ttl_ms, w.draw_window_ms));
            admin.create_deal_with(&id, s.stock, s.per_user_limit, s.hold_ttl_ms, waitlist).await?;
            ids.push(id);
        }
        (ids, vec![s.per_user_limit; s.deals])
    } else {
        let mut limits = Vec::new();
        for id in &s.existing_deals {
            limits.push(admin.deal(id).await?.1);
        }
        (s.existing_deals.clone(), limits)
    };
    let before = read_all(&mut admin, &ids).await?;
    let deals = Deals { ids: ids.clone(), units: before.iter().map(|c| c.available).collect() };
    let end_us = match s.mode {
        Mode::Open => s.phase_us,
        Mode::Closed { .. } => u64::MAX,
    };
    let schedule = Schedule::new(s.timing.clone(), s.choices.clone(), s.seed, end_us, ARRIVALS_MAX);
    let plan = Plan {
        backend: s.backend.clone(),
        mode: s.mode,
        connections: s.connections,
        schedule,
        phase_us: s.phase_us,
        hold_ttl_ms: s.hold_ttl_ms,
        run_id: s.run_id.clone(),
        poll_stock: true,
        progress: s.progress,
        marks,
        waitlist: s.waitlist.map(|w| WaitlistPlan {
            offer_ttl_ms: w.offer_ttl_ms,
            poll_rate_per_s: w.poll_rate_per_s,
            follow_until_us: s.phase_us + w.window_ms * 1_000,
        }),
    };
    // The feed's subscribers are in place before the first arrival, as a drop's viewers are.
    let rss_before_kib = match s.server_pid {
        Some(pid) if s.feed_subscribers > 0 => Some(rss_kib(pid)?),
        _ => None,
    };
    let subscribers = if s.feed_subscribers > 0 {
        let target = s.backend.target();
        Some(feed::open(target, &ids, s.feed_subscribers, s.request_timeout).await)
    } else {
        None
    };
    let rss_subscribed_kib = match s.server_pid {
        Some(pid) if subscribers.is_some() => Some(rss_kib(pid)?),
        _ => None,
    };
    let mut driver = Driver::start(plan, &deals).await?;
    let t0 = driver.t0();
    let t0_wall_ms = wall_ms_at(t0);
    // Just before the entries' cancels: did anyone wait while units sat available?
    let end_check = s.waitlist.map(|w| {
        let at = t0 + Duration::from_micros(s.phase_us + w.window_ms * 1_000);
        let at = at.checked_sub(Duration::from_millis(150)).unwrap_or(at);
        tokio::spawn(waiting_while_available(s.backend.clone(), ids.clone(), at, s.qty))
    });
    let completed = driver.finish(s.deadline_us(s.phase_us)).await;
    let arrival_phase_ms = us_to_ms(s.phase_us);

    // Drain: holds left to expire come back within their TTL; wait (bounded) until every
    // deal holds no more than it did before the run.
    let ttl_ms = s.waitlist.map_or(s.hold_ttl_ms, |w| w.offer_ttl_ms.max(s.hold_ttl_ms));
    let drain_until = Instant::now() + Duration::from_millis(ttl_ms + DRAIN_GRACE_MS);
    let (after, drained) = loop {
        let now = read_all(&mut admin, &ids).await?;
        let drained = now.iter().zip(&before).all(|(a, b)| a.held <= b.held);
        if drained || Instant::now() >= drain_until {
            break (now, drained);
        }
        tokio::time::sleep(Duration::from_millis(driver::STOCK_POLL_MS)).await;
    };
    // One more stock sample at the end, then stop the watchers.
    tokio::time::sleep(Duration::from_millis(driver::STOCK_POLL_MS)).await;
    let driven = driver.stop(completed);
    let feed = match subscribers {
        Some(subscribers) => {
            let rss_end_kib = match s.server_pid {
                Some(pid) => Some(rss_kib(pid)?),
                None => None,
            };
            let sold_out_at: Vec<Option<Instant>> = driven
                .ledger
                .deals
                .iter()
                .map(|d| d.first_sold_out_answer_us.map(|us| t0 + Duration::from_micros(us)))
                .collect();
            let mut report = subscribers.finish(&sold_out_at);
            if let (Some(before), Some(subscribed), Some(end)) =
                (rss_before_kib, rss_subscribed_kib, rss_end_kib)
            {
                report.server_rss_kib =
                    Some(ServerRss::of(before, subscribed, end, report.subscribers));
            }
            Some(report)
        }
        None => None,
    };

    let states: Vec<DealState<'_>> = ids
        .iter()
        .zip(&before)
        .zip(&after)
        .zip(&limits)
        .map(|(((id, b), a), l)| DealState { id, before: *b, after: *a, per_user_limit: *l })
        .collect();
    // Hold by hold (livestock only: the peers' holds are not read back).
    let holds = match s.backend.kind {
        BackendKind::Http => {
            let ids = driven.ledger.holds.iter().map(|h| h.hold_id.clone()).collect();
            Some(read_holds(&s.backend, ids).await)
        }
        BackendKind::Redis | BackendKind::Postgres => None,
    };
    let mut verification = verify(&states, &driven.ledger, drained, holds.as_deref());
    // The waitlist's entries, and every offer they name that the ledger does not hold.
    let mut offer_reads: HashMap<String, HoldRead> = HashMap::new();
    if let Some(reads) = &holds {
        for (record, read) in driven.ledger.holds.iter().zip(reads) {
            offer_reads.insert(record.hold_id.clone(), read.clone());
        }
    }
    let mut waitlist_report = None;
    let mut entry_reads_for_draws: Vec<crate::waitlist::EntrySeen> = Vec::new();
    if let Some(w) = s.waitlist {
        let ledger = &driven.ledger;
        let entry_ids = ledger.entries.iter().map(|e| e.entry_id.clone()).collect();
        let entry_reads = read_entries(&s.backend, entry_ids).await;
        entry_reads_for_draws = entry_reads
            .iter()
            .filter_map(|r| match r {
                EntryRead::Found(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        let unseen: Vec<String> = entry_reads
            .iter()
            .filter_map(|r| match r {
                EntryRead::Found(e) => e.hold_id.clone().filter(|h| !offer_reads.contains_key(h)),
                _ => None,
            })
            .collect();
        let unseen_reads = read_holds(&s.backend, unseen.clone()).await;
        offer_reads.extend(unseen.into_iter().zip(unseen_reads));
        let deal_ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (check, states, problems) =
            check_entries(ledger, &deal_ids, &entry_reads, &offer_reads);
        let waiting_while_available = match end_check {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        if !waiting_while_available.is_empty() {
            verification.problems.push(format!(
                "entries waited while units sat available at the end of the window (a server \
                 bug: units that come back go to the waiting first): {}",
                waiting_while_available.join("; ")
            ));
        }
        verification.passed &= problems.is_empty() && waiting_while_available.is_empty();
        verification.problems.extend(problems);
        let created_ms: HashMap<String, u64> = offer_reads
            .iter()
            .filter_map(|(id, r)| match r {
                HoldRead::Found(h) if h.from_waitlist => Some((id.clone(), h.created_at_ms?)),
                _ => None,
            })
            .collect();
        let (offers_seen, offers_missed, still_waiting_at_end, offers_given_up, learn_lag) =
            waitlist_check::entry_tallies(ledger, t0_wall_ms, &created_ms);
        waitlist_report = Some(WaitlistReport {
            waitlist_max: w.max,
            offer_ttl_ms: w.offer_ttl_ms,
            entry_poll_rate_per_s: w.poll_rate_per_s,
            followed_until_ms: us_to_ms(s.phase_us + w.window_ms * 1_000),
            entries: ledger.entries.len() as u64,
            entry_repeats: ledger.entry_repeats,
            waitlist_full: ledger.waitlist_full,
            offers_seen,
            offers_missed,
            still_waiting_at_end,
            offers_given_up,
            states,
            reads: ledger.entries.iter().map(|e| e.reads).sum(),
            read_errors: ledger.entries.iter().map(|e| e.read_errors).sum(),
            learn_lag,
            waiting_while_available,
            check,
        });
    }
    // Each deal's draw, checked from its reveal as an outsider would.
    let mut draws = None;
    if let Some(w) = s.waitlist.filter(|w| w.draw_window_ms.is_some()) {
        let mut checks = Vec::new();
        for id in &ids {
            let reveal = admin.draw(id).await?;
            let closes_ms = reveal["window_closes_at"].as_str().and_then(crate::client::epoch_ms);
            let entered: Vec<String> = entry_reads_for_draws
                .iter()
                .filter(|e| &e.deal_id == id)
                .filter(|e| e.created_at_ms.zip(closes_ms).is_some_and(|(at, end)| at < end))
                .map(|e| e.entry_id.clone())
                .collect();
            let check = draw_check::check(&reveal, &entered, w.draw_fairness_seeds);
            if !check.problems.is_empty() {
                verification.passed = false;
                verification.problems.extend(check.problems.iter().cloned());
            }
            checks.push(check);
        }
        draws = Some(checks);
    }
    // Units that came back after the sell-out, and what the waitlist resold of them.
    let returns = holds.as_ref().map(|reads| {
        let mut read_holds: Vec<ReadHold<'_>> = driven
            .ledger
            .holds
            .iter()
            .zip(reads)
            .map(|(h, read)| ReadHold { deal: h.deal, qty: h.qty, read })
            .collect();
        let known: std::collections::HashSet<&str> =
            driven.ledger.holds.iter().map(|h| h.hold_id.as_str()).collect();
        let deal_of: HashMap<&str, usize> =
            ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        for (id, read) in &offer_reads {
            if let (false, HoldRead::Found(h)) = (known.contains(id.as_str()), read) {
                if let Some(&deal) = deal_of.get(h.deal_id.as_str()) {
                    read_holds.push(ReadHold { deal, qty: h.qty, read });
                }
            }
        }
        let sold_out_ms: Vec<Option<u64>> = driven
            .ledger
            .deals
            .iter()
            .map(|d| d.first_sold_out_us.map(|us| t0_wall_ms + us / 1_000))
            .collect();
        let resold = driven
            .ledger
            .holds
            .iter()
            .filter(|h| h.entry_id.is_some() && h.fate == Fate::Confirmed)
            .map(|h| u64::from(h.qty))
            .sum();
        let unsold = after.iter().map(|c| c.stock.saturating_sub(c.sold)).sum();
        let until_ms = s
            .waitlist
            .map_or(u64::MAX, |w| t0_wall_ms + (s.phase_us + w.window_ms * 1_000) / 1_000);
        waitlist_check::returns(&read_holds, &sold_out_ms, until_ms, resold, unsold)
    });
    if !completed {
        verification.passed = false;
        verification.problems.push(format!(
            "{} requests were still unanswered at the run's deadline; the ledger is incomplete",
            driven.abandoned
        ));
    }
    if let Some(feed) = &feed {
        if feed.sold_out_missed > 0 {
            verification.passed = false;
            verification.problems.push(format!(
                "{} of {} live-feed subscribers never received the sold_out their deal reached",
                feed.sold_out_missed, feed.sold_out_expected
            ));
        }
        if feed.connection_errors > 0 {
            verification.passed = false;
            verification.problems.push(format!(
                "{} of {} live-feed subscribers failed (first: {})",
                feed.connection_errors,
                feed.subscribers,
                feed.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
    let sold_out_ms: Vec<Option<f64>> = driven
        .ledger
        .deals
        .iter()
        .map(|d| d.first_sold_out_us.map(|us| us_to_ms(us).round()))
        .collect();
    let (mode, latency_from) = match s.mode {
        Mode::Open => ("open_loop", report::OPEN_LOOP_LABEL),
        Mode::Closed { .. } => ("closed_loop", report::CLOSED_LOOP_LABEL),
    };
    Ok(RunReport {
        mode,
        latency_from,
        target: s.backend.targets_label(),
        backend: s.backend.kind.as_str(),
        run_id: s.run_id.clone(),
        seed: s.seed,
        profile: s.profile.clone(),
        deals: ids.len(),
        stock_units: before.iter().map(|c| c.available).sum(),
        viewers: s.choices.viewers,
        arrival_phase_ms,
        wall_ms: (started.elapsed().as_secs_f64() * 1e3).round(),
        measured: driven.recorder.measurements(),
        sell_out: SellOut {
            deals_sold_out: sold_out_ms.iter().filter(|t| t.is_some()).count(),
            hot_deal_ms: sold_out_ms.first().copied().flatten(),
            per_deal_ms: sold_out_ms.into_iter().take(100).collect(),
        },
        fairness: driven.ledger.fairness(),
        feed,
        returns,
        waitlist: waitlist_report,
        draws,
        verification,
    })
}

/// `livestock-load`: runs, prints the summary, exits 0 if the verification passed (1 if not,
/// 2 on a set-up error).
pub fn main(args: LoadArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(1, CLIENT_THREADS_MAX))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&args)) {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok(LoadOutcome::Run(report)) => {
            let mut text = report::render(&report);
            if let Some(path) = &args.json {
                text.push_str(&format!("report: {}\n", path.display()));
            }
            if let Some(path) = &args.plot {
                text.push_str(&format!("plot: {}\n", path.display()));
            }
            say(&text);
            if report.verification.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(LoadOutcome::Capacity(report)) => {
            say(&report.render());
            if report.oversell_units > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn say(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
