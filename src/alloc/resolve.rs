//! The end of a hold's life: confirm, release, extend, and the reaper's expiry of due holds.
//! Each decides under the hold's shard lock (so a hold resolves exactly once), logs, and only
//! then gives the freed units back.

use livestock_core::command::Outcome;
use livestock_core::error::HoldError;
use livestock_core::event::{Event, EventSink};
use livestock_core::hold::{Decision, Hold, HoldState, Settlement};
use livestock_core::ids::HoldSeq;

use super::Allocator;

impl Allocator {
    fn unknown_hold(&self, seq: HoldSeq) -> HoldError {
        HoldError::UnknownHold(self.hold_id(seq))
    }

    pub(super) fn confirm(
        &self,
        seq: HoldSeq,
        qty: Option<u32>,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, HoldError> {
        self.resolve(seq, now_ms, sink, |hold| {
            let decision = hold.decide_confirm(qty, now_ms)?;
            Ok(decision.map(|s| (HoldState::Confirmed, s)))
        })
    }

    pub(super) fn release(
        &self,
        seq: HoldSeq,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, HoldError> {
        self.resolve(seq, now_ms, sink, |hold| {
            let decision = hold.decide_release(now_ms)?;
            Ok(decision.map(|s| (HoldState::Released, s)))
        })
    }

    /// Confirm and release: decide under the hold's shard lock, record, log, then give back.
    fn resolve(
        &self,
        seq: HoldSeq,
        now_ms: u64,
        sink: &mut dyn EventSink,
        decide: impl FnOnce(&Hold) -> Result<Decision<(HoldState, Settlement)>, HoldError>,
    ) -> Result<Outcome, HoldError> {
        let resolved = {
            let mut shard = self.holds.lock(seq);
            let entry = shard.get(seq).ok_or_else(|| self.unknown_hold(seq))?;
            let (state, settlement) = match decide(&entry.hold)? {
                Decision::AlreadyDone => return Ok(Outcome::Hold(entry.view(now_ms))),
                Decision::Apply(decided) => decided,
            };
            let retention_ms = self.config.resolved_hold_retention_ms;
            let Some(resolved) = shard.resolve(seq, state, settlement, now_ms, retention_ms) else {
                panic!("hold vanished under its lock");
            };
            let Some(entry) = shard.get(seq) else { panic!("hold vanished under its lock") };
            let outcome = Outcome::Hold(entry.view(now_ms));
            let event = match state {
                HoldState::Confirmed => {
                    Event::Confirmed { seq, qty: settlement.sold, at_ms: now_ms }
                }
                HoldState::Released => Event::Released { seq, at_ms: now_ms },
                HoldState::Expired | HoldState::Held => panic!("resolve to {state:?}"),
            };
            sink.append(event, &outcome);
            (resolved, outcome)
        };
        self.give_back(&resolved.0, now_ms, sink);
        Ok(resolved.1)
    }

    pub(super) fn extend(
        &self,
        seq: HoldSeq,
        ttl_ms: u64,
        now_ms: u64,
        sink: &mut dyn EventSink,
    ) -> Result<Outcome, HoldError> {
        let mut shard = self.holds.lock(seq);
        let entry = shard.get(seq).ok_or_else(|| self.unknown_hold(seq))?;
        let max_ms = entry.deal.spec.hold_ttl_ms_max;
        let expires_at_ms = match entry.hold.decide_extend(ttl_ms, max_ms, now_ms)? {
            Decision::AlreadyDone => return Ok(Outcome::Hold(entry.view(now_ms))),
            Decision::Apply(at) => at,
        };
        if shard.extend(seq, expires_at_ms).is_none() {
            panic!("hold vanished under its lock");
        }
        let Some(entry) = shard.get(seq) else { panic!("hold vanished under its lock") };
        let outcome = Outcome::Hold(entry.view(now_ms));
        // Logged under the shard lock: no resolution of this hold can be ordered before it.
        sink.append(Event::Extended { seq, expires_at_ms, at_ms: now_ms }, &outcome);
        Ok(outcome)
    }

    /// The reaper's step: expires every hold due at `now` and forgets resolved holds whose
    /// retention has passed. Returns how many holds expired.
    pub fn expire_due(&self, now_ms: u64, sink: &mut dyn EventSink) -> usize {
        let mut expired = 0;
        for index in 0..self.holds.shard_count() {
            let mut resolved = Vec::new();
            {
                let mut shard = self.holds.lock_index(index);
                for seq in shard.take_due(now_ms) {
                    let Some(settlement) = shard.get(seq).map(|e| e.hold.full_return()) else {
                        continue;
                    };
                    let retention_ms = self.config.resolved_hold_retention_ms;
                    if let Some(r) =
                        shard.resolve(seq, HoldState::Expired, settlement, now_ms, retention_ms)
                    {
                        let Some(entry) = shard.get(seq) else { panic!("hold vanished") };
                        let outcome = Outcome::Hold(entry.view(now_ms));
                        sink.append(Event::Expired { seq, at_ms: now_ms }, &outcome);
                        resolved.push(r);
                    }
                }
                shard.forget_due(now_ms);
            }
            expired += resolved.len();
            for r in &resolved {
                self.give_back(r, now_ms, sink);
            }
        }
        self.run_due_draws(now_ms, sink);
        self.lapse_closed_waitlists(now_ms, sink);
        self.hand_on_available(now_ms, sink);
        self.forget_due_entries(now_ms);
        expired
    }
}
