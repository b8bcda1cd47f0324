//! A deal's stock counters, packed into one 64-bit word.
//!
//! ```text
//!  63   62            42 41            21 20             0
//! +----+----------------+----------------+----------------+
//! |shut|      sold      |      held      |   available    |
//! +----+----------------+----------------+----------------+
//! ```
//!
//! Why one word: `available + held + sold == stock` must hold in *every* read, and a reader of
//! three separate atomics can see `held` before a confirm and `sold` after it (`held + sold >
//! stock`). With one word every transition is a single compare-and-swap and every read is a
//! single load, so no torn view exists. `stock` is not stored at all: it is the sum, so the
//! balance invariant holds by construction. The price is [`DEAL_STOCK_UNITS_MAX`] units per deal.
//!
//! The `shut` bit is set while the deal is paused or ended, so that a reserve's first and
//! usually only read (one atomic load) tells it everything it needs on the sold-out path.
//!
//! This type is a plain value: the transitions are pure functions, used in compare-and-swap loops
//! by the concurrent allocator and directly by replay and tests.

use crate::limits::{COUNTER_BITS, DEAL_STOCK_UNITS_MAX};

const MASK: u64 = DEAL_STOCK_UNITS_MAX;
const HELD_SHIFT: u32 = COUNTER_BITS;
const SOLD_SHIFT: u32 = 2 * COUNTER_BITS;
const SHUT_BIT: u64 = 1 << 63;

/// Why a reserve could not take units. Split out of the caller's error so the pure transition
/// does not depend on the request type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortage {
    /// Nothing is available.
    SoldOut,
    /// Something is available, but less than asked.
    Insufficient { available: u64 },
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counters(u64);

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("available", &self.available())
            .field("held", &self.held())
            .field("sold", &self.sold())
            .field("shut", &self.shut())
            .finish()
    }
}

/// Encoded as the raw word; decoding checks every field fits (a checkpoint is outside input).
impl serde::Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Counters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = u64::deserialize(d)?;
        Counters::try_from_raw(raw).ok_or_else(|| serde::de::Error::custom("counters out of range"))
    }
}

impl Counters {
    /// Counters of a fresh deal. Panics on a stock over the limit: callers validate first.
    pub fn new(stock: u64) -> Self {
        assert!(stock <= DEAL_STOCK_UNITS_MAX, "stock {stock} over the limit");
        Counters(stock)
    }

    pub fn from_parts(available: u64, held: u64, sold: u64, shut: bool) -> Option<Self> {
        if available > MASK || held > MASK || sold > MASK {
            return None;
        }
        if available + held + sold > DEAL_STOCK_UNITS_MAX {
            return None;
        }
        let shut = if shut { SHUT_BIT } else { 0 };
        Some(Counters(available | held << HELD_SHIFT | sold << SOLD_SHIFT | shut))
    }

    pub const fn from_raw(raw: u64) -> Self {
        Counters(raw)
    }

    /// `from_raw` for words read from outside (a checkpoint): `None` unless the fields fit.
    pub fn try_from_raw(raw: u64) -> Option<Self> {
        let c = Counters(raw);
        Counters::from_parts(c.available(), c.held(), c.sold(), c.shut())
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn available(self) -> u64 {
        self.0 & MASK
    }

    pub const fn held(self) -> u64 {
        (self.0 >> HELD_SHIFT) & MASK
    }

    pub const fn sold(self) -> u64 {
        (self.0 >> SOLD_SHIFT) & MASK
    }

    pub const fn stock(self) -> u64 {
        self.available() + self.held() + self.sold()
    }

    pub const fn shut(self) -> bool {
        self.0 & SHUT_BIT != 0
    }

    pub const fn with_shut(self, shut: bool) -> Self {
        if shut {
            Counters(self.0 | SHUT_BIT)
        } else {
            Counters(self.0 & !SHUT_BIT)
        }
    }

    /// available -> held. The one rule of stock: never take what is not there.
    pub fn take(self, qty: u64) -> Result<Self, Shortage> {
        debug_assert!(qty > 0);
        let available = self.available();
        if available == 0 {
            return Err(Shortage::SoldOut);
        }
        if available < qty {
            return Err(Shortage::Insufficient { available });
        }
        Ok(self.checked(available - qty, self.held() + qty, self.sold()))
    }

    /// held -> sold. Panics if fewer units are held: a hold never sells more than it holds.
    pub fn sell(self, qty: u64) -> Self {
        assert!(self.held() >= qty, "sell {qty} of {self:?}");
        self.checked(self.available(), self.held() - qty, self.sold() + qty)
    }

    /// held -> available (release, expiry, the unsold rest of a partial confirm).
    pub fn put_back(self, qty: u64) -> Self {
        assert!(self.held() >= qty, "put back {qty} of {self:?}");
        self.checked(self.available() + qty, self.held() - qty, self.sold())
    }

    /// New units arrive in `available`. `None` if the deal would pass the stock limit.
    pub fn add_stock(self, units: u64) -> Option<Self> {
        let stock = self.stock().checked_add(units)?;
        if stock > DEAL_STOCK_UNITS_MAX {
            return None;
        }
        Some(self.checked(self.available() + units, self.held(), self.sold()))
    }

    /// Units leave, only from `available`: held and sold units belong to buyers.
    pub fn remove_stock(self, units: u64) -> Result<Self, Shortage> {
        let available = self.available();
        if available < units {
            return Err(Shortage::Insufficient { available });
        }
        Ok(self.checked(available - units, self.held(), self.sold()))
    }

    fn checked(self, available: u64, held: u64, sold: u64) -> Self {
        match Counters::from_parts(available, held, sold, self.shut()) {
            Some(next) => next,
            None => panic!("counters out of range: {available}/{held}/{sold}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_bleed_into_each_other() {
        let c = Counters::from_parts(DEAL_STOCK_UNITS_MAX, 0, 0, true).unwrap();
        assert_eq!(c.available(), DEAL_STOCK_UNITS_MAX);
        assert_eq!(c.held(), 0);
        assert!(c.shut());
        let c = c.take(DEAL_STOCK_UNITS_MAX).unwrap();
        assert_eq!((c.available(), c.held(), c.sold()), (0, DEAL_STOCK_UNITS_MAX, 0));
        let c = c.sell(DEAL_STOCK_UNITS_MAX);
        assert_eq!((c.available(), c.held(), c.sold()), (0, 0, DEAL_STOCK_UNITS_MAX));
        assert!(c.shut());
    }

    #[test]
    fn take_reports_the_shortage() {
        let c = Counters::new(3);
        assert_eq!(c.take(4), Err(Shortage::Insufficient { available: 3 }));
        let c = c.take(3).unwrap();
        assert_eq!(c.take(1), Err(Shortage::SoldOut));
        assert_eq!(c.put_back(2).available(), 2);
    }

    #[test]
    fn stock_changes_respect_the_limit_and_the_buyers() {
        let c = Counters::new(10).take(4).unwrap();
        assert_eq!(c.remove_stock(7), Err(Shortage::Insufficient { available: 6 }));
        assert_eq!(c.remove_stock(6).unwrap().stock(), 4);
        assert!(c.add_stock(DEAL_STOCK_UNITS_MAX).is_none());
        assert_eq!(c.add_stock(5).unwrap().available(), 11);
        assert!(Counters::from_parts(DEAL_STOCK_UNITS_MAX, 1, 0, false).is_none());
    }
}
