//! Deals: their configuration, their lifecycle, and the rules that say whether a deal takes a
//! reservation right now.

use crate::counters::Counters;
use crate::error::{CreateDealError, Invalid, ReserveError};
use crate::ids::{DealId, StreamId};
use crate::limits::{
    DEAL_STOCK_UNITS_MAX, HOLD_TTL_MS_DEFAULT, HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN, TIMESTAMP_MS_MAX,
    TIMESTAMP_MS_MIN,
};

/// A deal as the caller asks for it; `DealSpec::new` validates and fills the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeal {
    pub id: DealId,
    pub stream_id: Option<StreamId>,
    pub stock: u64,
    pub starts_at_ms: Option<u64>,
    pub ends_at_ms: Option<u64>,
    pub per_user_limit: Option<u32>,
    pub hold_ttl_ms: Option<u64>,
    pub hold_ttl_ms_max: Option<u64>,
    /// Entries that may wait for units that come back (0 or `None`: no waitlist).
    pub waitlist_max: Option<u32>,
    /// TTL of a hold offered to a waiting entry (default: `hold_ttl_ms`).
    pub offer_ttl_ms: Option<u64>,
    /// Reserves from `starts_at` for this long enter a draw (`draw.rs`).
    pub draw_window_ms: Option<u64>,
    /// The draw's secret seed, chosen by the shell (the core reads no randomness); required
    /// with `draw_window_ms`.
    pub draw_seed: Option<crate::draw::DrawSeed>,
}

impl NewDeal {
    /// The request that makes `spec` (with `stock` units and no waitlist): the pair to the
    /// validation of a spec read back from the log.
    pub fn of_spec(spec: &DealSpec, stock: u64) -> Self {
        NewDeal {
            id: spec.id.clone(),
            stream_id: spec.stream_id.clone(),
            stock,
            starts_at_ms: spec.starts_at_ms,
            ends_at_ms: spec.ends_at_ms,
            per_user_limit: spec.per_user_limit,
            hold_ttl_ms: Some(spec.hold_ttl_ms),
            hold_ttl_ms_max: Some(spec.hold_ttl_ms_max),
            waitlist_max: None,
            offer_ttl_ms: None,
            draw_window_ms: None,
            draw_seed: None,
        }
    }
}

/// A deal's fixed configuration. Immutable once created: the hot path reads it without locks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DealSpec {
    pub id: DealId,
    pub stream_id: Option<StreamId>,
    pub starts_at_ms: Option<u64>,
    pub ends_at_ms: Option<u64>,
    /// Units one user may hold plus have bought in this deal.
    pub per_user_limit: Option<u32>,
    /// TTL of a hold whose request names none.
    pub hold_ttl_ms: u64,
    /// The longest a hold may live from its creation, extensions included.
    pub hold_ttl_ms_max: u64,
    pub created_at_ms: u64,
}

fn check_timestamp(field: &str, ms: u64) -> Result<(), Invalid> {
    if !(TIMESTAMP_MS_MIN..=TIMESTAMP_MS_MAX).contains(&ms) {
        return Err(Invalid(format!("{field}: must be between the years 2000 and 9999")));
    }
    Ok(())
}

impl DealSpec {
    /// Validates a deal being created at `now_ms` and fills its defaults: its shape (see
    /// `shaped`), and that its window is not already over. A deal whose `ends_at` has passed
    /// could only ever be `ended`; accepting it would hide a caller's mistake (a wrong year, a
    /// local time read as UTC) behind a deal that silently refuses every reserve.
    pub fn new(new: &NewDeal, now_ms: u64) -> Result<Self, CreateDealError> {
        let spec = Self::shaped(new, now_ms)?;
        if let Some(ends_at_ms) = spec.ends_at_ms.filter(|ends| *ends <= now_ms) {
            return Err(CreateDealError::EndsInPast { ends_at_ms, now_ms });
        }
        Ok(spec)
    }

    /// The checks that hold whenever the deal is read, at any later time: its fields and their
    /// relations, with `created_at_ms` as given. Not the window against the clock: that holds
    /// only at creation, and a recorded deal is checked against a later clock.
    fn shaped(new: &NewDeal, created_at_ms: u64) -> Result<Self, Invalid> {
        if new.stock > DEAL_STOCK_UNITS_MAX {
            return Err(Invalid(format!("stock: at most {DEAL_STOCK_UNITS_MAX} units per deal")));
        }
        if let Some(starts) = new.starts_at_ms {
            check_timestamp("starts_at", starts)?;
        }
        if let Some(ends) = new.ends_at_ms {
            check_timestamp("ends_at", ends)?;
            if new.starts_at_ms.is_some_and(|starts| ends <= starts) {
                return Err(Invalid("ends_at: must be after starts_at".into()));
            }
        }
        if new.per_user_limit == Some(0) {
            return Err(Invalid("per_user_limit: must be at least 1".into()));
        }
        let ttl_max = new.hold_ttl_ms_max.unwrap_or(HOLD_TTL_MS_MAX);
        if !(HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX).contains(&ttl_max) {
            return Err(Invalid(format!(
                "hold_ttl_ms_max: must be between {HOLD_TTL_MS_MIN} and {HOLD_TTL_MS_MAX}"
            )));
        }
        let ttl = new.hold_ttl_ms.unwrap_or(HOLD_TTL_MS_DEFAULT.min(ttl_max));
        if !(HOLD_TTL_MS_MIN..=ttl_max).contains(&ttl) {
            return Err(Invalid(format!(
                "hold_ttl_ms: must be between {HOLD_TTL_MS_MIN} and hold_ttl_ms_max ({ttl_max})"
            )));
        }
        Ok(DealSpec {
            id: new.id.clone(),
            stream_id: new.stream_id.clone(),
            starts_at_ms: new.starts_at_ms,
            ends_at_ms: new.ends_at_ms,
            per_user_limit: new.per_user_limit,
            hold_ttl_ms: ttl,
            hold_ttl_ms_max: ttl_max,
            created_at_ms,
        })
    }

    /// Whether a spec read from outside (log, checkpoint) is one `new` could have made: the
    /// pair to the validation on the way in. Only the shape: a log may hold a deal created,
    /// before `new` refused it, with its window already over (it replays as `ended`).
    pub fn is_valid(&self, stock: u64) -> bool {
        DealSpec::shaped(&NewDeal::of_spec(self, stock), self.created_at_ms).as_ref() == Ok(self)
    }

    /// The TTL of a new hold: the request's, or the deal's default.
    pub fn hold_ttl(&self, requested_ms: Option<u64>) -> Result<u64, Invalid> {
        let ttl = requested_ms.unwrap_or(self.hold_ttl_ms);
        if !(HOLD_TTL_MS_MIN..=self.hold_ttl_ms_max).contains(&ttl) {
            return Err(Invalid(format!(
                "ttl_ms: must be between {HOLD_TTL_MS_MIN} and {} for deal {}",
                self.hold_ttl_ms_max, self.id
            )));
        }
        Ok(ttl)
    }

    /// Whether the deal takes reservations at `now`: the window and the lifecycle. `shut` is the
    /// counters' flag; `lifecycle` is read only when it is set (off the sold-out fast path).
    pub fn check_open(
        &self,
        shut: bool,
        lifecycle: impl FnOnce() -> Lifecycle,
        now_ms: u64,
    ) -> Result<(), ReserveError> {
        match self.closed(shut, lifecycle, now_ms) {
            None => Ok(()),
            Some(closed) => Err(closed.error(self.id.clone())),
        }
    }

    /// Why the deal takes no reserve now, if it does not: `check_open` as a plain value, with
    /// no id cloned (the HTTP refusal answer reads it on every request of a burst, and a clone
    /// would write the id's shared reference count).
    pub fn closed(
        &self,
        shut: bool,
        lifecycle: impl FnOnce() -> Lifecycle,
        now_ms: u64,
    ) -> Option<Closed> {
        // Ended (by an admin or by the clock) wins over paused, as in `state`.
        let lifecycle = shut.then(lifecycle);
        if lifecycle == Some(Lifecycle::Ended) || self.ends_at_ms.is_some_and(|e| now_ms >= e) {
            return Some(Closed::Ended);
        }
        // Paused, or a resume in progress: it clears the lifecycle before the flag, so a reader
        // may briefly see the flag over an open lifecycle; the flag (the linearization point)
        // wins.
        if lifecycle.is_some() {
            return Some(Closed::Paused);
        }
        if let Some(starts_at_ms) = self.starts_at_ms.filter(|starts| now_ms < *starts) {
            return Some(Closed::NotStarted { starts_at_ms });
        }
        None
    }

    /// The per-user rule: what the user has taken (held plus bought) plus `qty` within the limit.
    pub fn check_user_limit(&self, taken: u32, qty: u32) -> Result<(), ReserveError> {
        match self.per_user_limit {
            Some(limit) if u64::from(taken) + u64::from(qty) > u64::from(limit) => {
                Err(ReserveError::PerUserLimit { deal_id: self.id.clone(), limit, taken })
            }
            _ => Ok(()),
        }
    }

    /// What the stock rule says about taking `qty` units from `counters`.
    pub fn take(&self, counters: Counters, qty: u32) -> Result<Counters, ReserveError> {
        use crate::counters::Shortage;
        counters.take(u64::from(qty)).map_err(|shortage| match shortage {
            Shortage::SoldOut => ReserveError::SoldOut(self.id.clone()),
            Shortage::Insufficient { available } => {
                ReserveError::InsufficientStock { deal_id: self.id.clone(), available }
            }
        })
    }

    pub fn state(&self, lifecycle: Lifecycle, now_ms: u64) -> DealState {
        match lifecycle {
            Lifecycle::Ended => DealState::Ended,
            _ if self.ends_at_ms.is_some_and(|ends| now_ms >= ends) => DealState::Ended,
            Lifecycle::Paused => DealState::Paused,
            _ if self.starts_at_ms.is_some_and(|starts| now_ms < starts) => DealState::Scheduled,
            Lifecycle::Open => DealState::Live,
        }
    }
}

/// Why a deal takes no reserve at this moment (its window or an admin), before any stock is
/// looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    Ended,
    Paused,
    NotStarted { starts_at_ms: u64 },
}

impl Closed {
    pub fn error(self, deal_id: DealId) -> ReserveError {
        match self {
            Closed::Ended => ReserveError::Ended(deal_id),
            Closed::Paused => ReserveError::Paused(deal_id),
            Closed::NotStarted { starts_at_ms } => {
                ReserveError::NotStarted { deal_id, starts_at_ms }
            }
        }
    }
}

/// What admins did to a deal. The sale window adds `scheduled` and time-based `ended` on top.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Lifecycle {
    Open = 0,
    Paused = 1,
    Ended = 2,
}

impl Lifecycle {
    pub fn from_u8(raw: u8) -> Self {
        match raw {
            0 => Lifecycle::Open,
            1 => Lifecycle::Paused,
            2 => Lifecycle::Ended,
            _ => panic!("lifecycle byte {raw}"),
        }
    }
}

/// The state a caller sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DealState {
    Scheduled,
    Live,
    Paused,
    Ended,
}

impl DealState {
    pub const fn as_str(self) -> &'static str {
        match self {
            DealState::Scheduled => "scheduled",
            DealState::Live => "live",
            DealState::Paused => "paused",
            DealState::Ended => "ended",
        }
    }
}

/// A deal as read at one instant: its spec, its state, and one consistent load of its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DealView {
    pub spec: DealSpec,
    pub options: crate::waitlist::DealOptions,
    pub state: DealState,
    pub counters: Counters,
    /// Entries waiting on its waitlist (0 without one).
    pub waiting: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn new_deal() -> NewDeal {
        NewDeal {
            id: DealId::parse("d1").unwrap(),
            stream_id: None,
            stock: 10,
            starts_at_ms: Some(T0 + 1_000),
            ends_at_ms: Some(T0 + 2_000),
            per_user_limit: Some(2),
            hold_ttl_ms: None,
            hold_ttl_ms_max: Some(60_000),
            waitlist_max: None,
            offer_ttl_ms: None,
            draw_window_ms: None,
            draw_seed: None,
        }
    }

    #[test]
    fn the_window_decides_the_state() {
        let spec = DealSpec::new(&new_deal(), T0).unwrap();
        assert_eq!(spec.hold_ttl_ms, 60_000);
        assert_eq!(spec.state(Lifecycle::Open, T0), DealState::Scheduled);
        assert_eq!(spec.state(Lifecycle::Open, T0 + 1_000), DealState::Live);
        assert_eq!(spec.state(Lifecycle::Paused, T0 + 1_000), DealState::Paused);
        assert_eq!(spec.state(Lifecycle::Open, T0 + 2_000), DealState::Ended);
        assert!(matches!(
            spec.check_open(false, || Lifecycle::Open, T0),
            Err(ReserveError::NotStarted { .. })
        ));
        assert!(spec.check_open(false, || Lifecycle::Open, T0 + 1_999).is_ok());
        assert!(matches!(
            spec.check_open(false, || Lifecycle::Open, T0 + 2_000),
            Err(ReserveError::Ended(_))
        ));
        assert!(matches!(
            spec.check_open(true, || Lifecycle::Paused, T0 + 1_500),
            Err(ReserveError::Paused(_))
        ));
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut bad = new_deal();
        bad.ends_at_ms = Some(T0 + 1_000);
        assert!(DealSpec::new(&bad, T0).is_err());
        let mut bad = new_deal();
        bad.per_user_limit = Some(0);
        assert!(DealSpec::new(&bad, T0).is_err());
        let mut bad = new_deal();
        bad.hold_ttl_ms = Some(61_000);
        assert!(DealSpec::new(&bad, T0).is_err());
        let mut bad = new_deal();
        bad.stock = DEAL_STOCK_UNITS_MAX + 1;
        assert!(DealSpec::new(&bad, T0).is_err());
        let mut bad = new_deal();
        bad.starts_at_ms = Some(5);
        assert!(DealSpec::new(&bad, T0).is_err());
    }

    #[test]
    fn a_deal_whose_window_is_over_is_refused_at_creation() {
        let mut over = new_deal();
        over.starts_at_ms = None;
        over.ends_at_ms = Some(T0);
        let refused = DealSpec::new(&over, T0);
        assert_eq!(refused, Err(CreateDealError::EndsInPast { ends_at_ms: T0, now_ms: T0 }));
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            message,
            "ends_at: 2027-01-15T08:00:00.000Z is not after the time of creation \
             (2027-01-15T08:00:00.000Z)"
        );
        assert!(matches!(
            DealSpec::new(&over, T0 + 1),
            Err(CreateDealError::EndsInPast { ends_at_ms: T0, now_ms })
                if now_ms == T0 + 1
        ));
        // One millisecond of window left is a window.
        assert!(DealSpec::new(&over, T0 - 1).is_ok());
    }

    #[test]
    fn a_recorded_deal_whose_window_was_over_at_creation_stays_valid() {
        // Logs written before creation refused such deals hold them; replay must take them.
        let mut over = new_deal();
        over.starts_at_ms = None;
        over.ends_at_ms = Some(T0);
        let Ok(mut spec) = DealSpec::new(&over, T0 - 1) else { panic!("a valid deal") };
        spec.created_at_ms = T0 + 5_000;
        assert!(spec.is_valid(over.stock));
        assert_eq!(spec.state(Lifecycle::Open, T0 + 5_000), DealState::Ended);
    }

    #[test]
    fn the_user_limit_counts_what_is_taken() {
        let spec = DealSpec::new(&new_deal(), T0).unwrap();
        assert!(spec.check_user_limit(1, 1).is_ok());
        assert!(matches!(
            spec.check_user_limit(1, 2),
            Err(ReserveError::PerUserLimit { limit: 2, taken: 1, .. })
        ));
    }
}
