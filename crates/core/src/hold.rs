//! Holds (reservations) and the rules of their one-way life:
//! held -> confirmed, or held -> released, or held -> expired; exactly once.

use crate::error::{HoldError, Invalid};
use crate::ids::{DealId, HoldSeq, UserId};
use crate::limits::HOLD_TTL_MS_MIN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum HoldState {
    Held,
    Confirmed,
    Released,
    Expired,
}

impl HoldState {
    pub const ALL: [HoldState; 4] =
        [HoldState::Held, HoldState::Confirmed, HoldState::Released, HoldState::Expired];

    /// The state named as the API writes it (`as_str`), e.g. read back by a client.
    pub fn parse(raw: &str) -> Option<HoldState> {
        HoldState::ALL.into_iter().find(|state| state.as_str() == raw)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            HoldState::Held => "held",
            HoldState::Confirmed => "confirmed",
            HoldState::Released => "released",
            HoldState::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    pub seq: HoldSeq,
    pub deal_id: DealId,
    pub user_id: UserId,
    pub qty: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// The recorded state. A `Held` hold past `expires_at_ms` is already dead to callers (see
    /// [`Hold::state_at`]); the reaper records its expiry shortly after.
    pub state: HoldState,
    /// Units sold by a confirm (all of `qty`, or fewer for a partial confirm).
    pub confirmed_qty: u32,
    pub resolved_at_ms: Option<u64>,
}

/// What a hold's resolution does to its deal's counters and its user's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// held -> sold.
    pub sold: u32,
    /// held -> available; also what leaves the user's count.
    pub returned: u32,
}

/// A decision about a hold: change it, or it already is what was asked (a retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<T> {
    Apply(T),
    AlreadyDone,
}

impl<T> Decision<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decision<U> {
        match self {
            Decision::Apply(value) => Decision::Apply(f(value)),
            Decision::AlreadyDone => Decision::AlreadyDone,
        }
    }
}

impl Hold {
    /// The state a caller sees at `now`: a hold is dead from its `expires_at` instant, whether or
    /// not the reaper has run.
    pub fn state_at(&self, now_ms: u64) -> HoldState {
        match self.state {
            HoldState::Held if now_ms >= self.expires_at_ms => HoldState::Expired,
            state => state,
        }
    }

    fn live_or_err(&self, now_ms: u64) -> Result<(), HoldError> {
        match self.state_at(now_ms) {
            HoldState::Held => Ok(()),
            HoldState::Confirmed => Err(HoldError::Confirmed),
            HoldState::Released => Err(HoldError::Released),
            HoldState::Expired => Err(HoldError::Expired),
        }
    }

    /// Confirm `qty` units (all when `None`); the rest go back to the deal.
    pub fn decide_confirm(
        &self,
        qty: Option<u32>,
        now_ms: u64,
    ) -> Result<Decision<Settlement>, HoldError> {
        if self.state == HoldState::Confirmed {
            // A retry of the confirm that won: same answer, unless it asks for something else.
            return match qty {
                None => Ok(Decision::AlreadyDone),
                Some(q) if q == self.confirmed_qty => Ok(Decision::AlreadyDone),
                Some(_) => Err(HoldError::Confirmed),
            };
        }
        self.live_or_err(now_ms)?;
        let sold = qty.unwrap_or(self.qty);
        if sold == 0 || sold > self.qty {
            return Err(
                Invalid(format!("qty: must be between 1 and the hold's {}", self.qty)).into()
            );
        }
        Ok(Decision::Apply(Settlement { sold, returned: self.qty - sold }))
    }

    pub fn decide_release(&self, now_ms: u64) -> Result<Decision<Settlement>, HoldError> {
        if self.state == HoldState::Released {
            return Ok(Decision::AlreadyDone);
        }
        self.live_or_err(now_ms)?;
        Ok(Decision::Apply(Settlement { sold: 0, returned: self.qty }))
    }

    /// Push the expiry to `now + ttl_ms`, never past `created_at + max_ms`. An extension that
    /// would not move the expiry later changes nothing.
    pub fn decide_extend(
        &self,
        ttl_ms: u64,
        max_ms: u64,
        now_ms: u64,
    ) -> Result<Decision<u64>, HoldError> {
        self.live_or_err(now_ms)?;
        if ttl_ms < HOLD_TTL_MS_MIN {
            return Err(Invalid(format!("ttl_ms: must be at least {HOLD_TTL_MS_MIN}")).into());
        }
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        if expires_at_ms > self.created_at_ms.saturating_add(max_ms) {
            return Err(HoldError::TtlExceeded { max_ms });
        }
        if expires_at_ms <= self.expires_at_ms {
            return Ok(Decision::AlreadyDone);
        }
        Ok(Decision::Apply(expires_at_ms))
    }

    /// The reaper's rule: a held hold whose instant has come.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.state == HoldState::Held && now_ms >= self.expires_at_ms
    }

    /// Record a resolution. Panics if the hold was already resolved: exactly-once is the
    /// caller's lock's job, and a second resolution is a bug.
    pub fn resolve(&mut self, state: HoldState, settlement: Settlement, at_ms: u64) {
        assert_eq!(self.state, HoldState::Held, "hold {:?} resolved twice", self.seq);
        assert_ne!(state, HoldState::Held);
        assert_eq!(settlement.sold + settlement.returned, self.qty);
        self.state = state;
        self.confirmed_qty = settlement.sold;
        self.resolved_at_ms = Some(at_ms);
    }

    /// What releasing or expiring this hold gives back.
    pub fn full_return(&self) -> Settlement {
        Settlement { sold: 0, returned: self.qty }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold() -> Hold {
        Hold {
            seq: HoldSeq(1),
            deal_id: DealId::parse("d").unwrap(),
            user_id: UserId::parse("u").unwrap(),
            qty: 3,
            created_at_ms: 1_000,
            expires_at_ms: 11_000,
            state: HoldState::Held,
            confirmed_qty: 0,
            resolved_at_ms: None,
        }
    }

    #[test]
    fn a_hold_is_dead_from_its_expiry_instant() {
        let h = hold();
        assert_eq!(h.state_at(10_999), HoldState::Held);
        assert_eq!(h.state_at(11_000), HoldState::Expired);
        assert_eq!(h.decide_confirm(None, 11_000), Err(HoldError::Expired));
        assert_eq!(h.decide_release(11_000), Err(HoldError::Expired));
        assert!(h.is_due(11_000));
    }

    #[test]
    fn partial_confirm_returns_the_rest_and_retries_are_answers() {
        let mut h = hold();
        let Ok(Decision::Apply(s)) = h.decide_confirm(Some(2), 5_000) else { panic!() };
        assert_eq!(s, Settlement { sold: 2, returned: 1 });
        h.resolve(HoldState::Confirmed, s, 5_000);
        assert_eq!(h.decide_confirm(Some(2), 6_000), Ok(Decision::AlreadyDone));
        assert_eq!(h.decide_confirm(None, 60_000), Ok(Decision::AlreadyDone));
        assert_eq!(h.decide_confirm(Some(3), 6_000), Err(HoldError::Confirmed));
        assert_eq!(h.decide_release(6_000), Err(HoldError::Confirmed));
        assert!(matches!(hold().decide_confirm(Some(4), 5_000), Err(HoldError::Invalid(_))));
        assert!(matches!(hold().decide_confirm(Some(0), 5_000), Err(HoldError::Invalid(_))));
    }

    #[test]
    fn release_is_idempotent_and_final() {
        let mut h = hold();
        h.resolve(HoldState::Released, h.full_return(), 2_000);
        assert_eq!(h.decide_release(3_000), Ok(Decision::AlreadyDone));
        assert_eq!(h.decide_confirm(None, 3_000), Err(HoldError::Released));
        assert_eq!(h.decide_extend(5_000, 60_000, 3_000), Err(HoldError::Released));
    }

    #[test]
    fn extend_stays_within_the_maximum() {
        let h = hold();
        assert_eq!(h.decide_extend(20_000, 60_000, 5_000), Ok(Decision::Apply(25_000)));
        assert_eq!(h.decide_extend(5_000, 60_000, 5_000), Ok(Decision::AlreadyDone));
        assert_eq!(
            h.decide_extend(57_000, 60_000, 5_000),
            Err(HoldError::TtlExceeded { max_ms: 60_000 })
        );
        assert!(matches!(h.decide_extend(10, 60_000, 5_000), Err(HoldError::Invalid(_))));
    }

    #[test]
    #[should_panic(expected = "resolved twice")]
    fn resolving_twice_is_a_bug() {
        let mut h = hold();
        h.resolve(HoldState::Released, h.full_return(), 2_000);
        h.resolve(HoldState::Expired, h.full_return(), 2_000);
    }

    #[test]
    fn every_state_parses_back_from_its_name() {
        for state in HoldState::ALL {
            assert_eq!(HoldState::parse(state.as_str()), Some(state));
        }
        assert_eq!(HoldState::parse("Held"), None, "names are the API's, lower case");
    }
}
