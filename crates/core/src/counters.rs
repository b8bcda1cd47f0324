//! A deal's stock counters, packed into one 128-bit word.
//!
//! ```text
//!  127  126   120 119          80 79           40 39            0
//! +----+---------+--------------+---------------+---------------+
//! |shut|  zero   |     sold     |     held      |   available   |
//! +----+---------+--------------+---------------+---------------+
//! ```
//!
//! Why one word: `available + held + sold == stock` must hold in *every* read, and a reader of
//! three separate atomics can see `held` before a confirm and `sold` after it (`held + sold >
//! stock`). With one word every transition is a single compare-and-swap and every read is a
//! single load, so no torn view exists. `stock` is not stored at all: it is the sum, so the
//! balance invariant holds by construction. The price is [`DEAL_STOCK_UNITS_MAX`] units per
//! deal: 40 bits a field, 2^40 - 1 (about 1.1 trillion) units.
//!
//! The `shut` bit is set while the deal is paused or ended, so that a reserve's first and
//! usually only read (one atomic load) tells it everything it needs on the sold-out path.
//!
//! # The atomic behind it
//!
//! The allocator keeps the word in `portable_atomic::AtomicU128` (through `src/sync.rs`). On
//! x86-64 its compare-and-swap is `lock cmpxchg16b`. Its load matters more: the sold-out path
//! loads a hot deal's word from every core, and a load that wrote the cache line would make
//! every refusal take the line exclusive and bounce it between cores. portable-atomic picks the
//! load once, at the first call, from CPUID (leaf 1: `cmpxchg16b` and `avx`, and XGETBV that the
//! OS saves the AVX state) and keeps the choice in a function pointer:
//! - `cmpxchg16b` and AVX (every x86-64 CPU since 2011, and this project's machines): the load
//!   is one `vmovdqa`, a plain 16-byte read that Intel and AMD document as atomic when AVX is
//!   present. It writes nothing: readers share the line.
//! - `cmpxchg16b` without AVX (older CPUs, or a hypervisor that hides AVX): the load is a
//!   `lock cmpxchg16b` of zero with zero, which always writes the line. Correct, but refusals
//!   then cost a contended write each; building with `-C target-feature=+avx` (or a
//!   `target-cpu` that has it) is not a fix for such a CPU, it would not run there.
//! - no `cmpxchg16b` (the first x86-64 CPUs): portable-atomic's global seqlocks; a load is an
//!   optimistic read that writes nothing unless it races a writer.
//!
//! Without `-C target-feature=+cmpxchg16b,+avx` at build time each operation is one indirect
//! call through that pointer (measured in `docs/benchmarks.md`, "128-bit counters").
//!
//! # Encoding
//!
//! A checkpoint, a raft snapshot and a backup store the word through serde. The encoding says
//! which layout it is, so a state written by the 64-bit layout (before the 128-bit word) still
//! reads, in every container, without a version of its own (raft snapshot bodies have none):
//! - layout 2 (this one): the word with [`WIRE_LAYOUT_2`] (bit 126) set, as a `u128`;
//! - layout 1 (before): a `u64` word, 21 bits a field (`available`, `held`, `sold` from bit 0,
//!   `shut` at bit 63).
//!
//! postcard writes both as the same variable-length integer, so the value tells them apart:
//! below 2^64 it is layout 1, and a layout 2 value is at least 2^126. An older build reading a
//! layout 2 value fails (a `u64` varint of 19 bytes overflows) instead of misreading it.
//!
//! This type is a plain value: the transitions are pure functions, used in compare-and-swap loops
//! by the concurrent allocator and directly by replay and tests.

use crate::limits::{COUNTER_BITS, DEAL_STOCK_UNITS_MAX};

const MASK: u128 = DEAL_STOCK_UNITS_MAX as u128;
const HELD_SHIFT: u32 = COUNTER_BITS;
const SOLD_SHIFT: u32 = 2 * COUNTER_BITS;
const SHUT_BIT: u128 = 1 << 127;

/// Marks an encoded word as layout 2 (see "Encoding"). Never set in memory.
pub const WIRE_LAYOUT_2: u128 = 1 << 126;

/// Layout 1, the 64-bit word of earlier versions: read from old checkpoints and snapshots only.
const LEGACY_BITS: u32 = 21;
const LEGACY_MASK: u64 = (1 << LEGACY_BITS) - 1;
const LEGACY_UNITS_MAX: u64 = LEGACY_MASK;
const LEGACY_SHUT_BIT: u64 = 1 << 63;

const _: () = assert!(3 * COUNTER_BITS < 126, "three fields below the tag and the shut bit");
const _: () = assert!(DEAL_STOCK_UNITS_MAX >= LEGACY_UNITS_MAX, "every old deal still fits");

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
pub struct Counters(u128);

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

/// Encoded as the tagged word (see "Encoding"); decoding checks every field fits (a checkpoint
/// is outside input) and reads layout 1 too.
impl serde::Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u128(self.to_wire())
    }
}

impl<'de> serde::Deserialize<'de> for Counters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = u128::deserialize(d)?;
        Counters::from_wire(wire).ok_or_else(|| serde::de::Error::custom("counters out of range"))
    }
}

impl Counters {
    /// Counters of a fresh deal. Panics on a stock over the limit: callers validate first.
    pub fn new(stock: u64) -> Self {
        assert!(stock <= DEAL_STOCK_UNITS_MAX, "stock {stock} over the limit");
        Counters(u128::from(stock))
    }

    pub fn from_parts(available: u64, held: u64, sold: u64, shut: bool) -> Option<Self> {
        if available > DEAL_STOCK_UNITS_MAX
            || held > DEAL_STOCK_UNITS_MAX
            || sold > DEAL_STOCK_UNITS_MAX
        {
            return None;
        }
        // Each is at most 2^40 - 1, so the sum cannot overflow.
        if available + held + sold > DEAL_STOCK_UNITS_MAX {
            return None;
        }
        let shut = if shut { SHUT_BIT } else { 0 };
        let word = u128::from(available)
            | u128::from(held) << HELD_SHIFT
            | u128::from(sold) << SOLD_SHIFT
            | shut;
        Some(Counters(word))
    }

    pub const fn from_raw(raw: u128) -> Self {
        Counters(raw)
    }

    /// `from_raw` for words read from outside: `None` unless the fields fit and the bits
    /// between `sold` and `shut` are zero.
    pub fn try_from_raw(raw: u128) -> Option<Self> {
        let c = Counters(raw);
        Counters::from_parts(c.available(), c.held(), c.sold(), c.shut()).filter(|p| p.0 == raw)
    }

    /// A layout 1 word (the 64-bit layout of earlier versions), if its fields fit there.
    pub fn from_legacy_word(word: u64) -> Option<Self> {
        let field = |shift: u32| (word >> shift) & LEGACY_MASK;
        let (available, held, sold) = (field(0), field(LEGACY_BITS), field(2 * LEGACY_BITS));
        if available + held + sold > LEGACY_UNITS_MAX {
            return None;
        }
        Counters::from_parts(available, held, sold, word & LEGACY_SHUT_BIT != 0)
    }

    /// The encoded form: the word tagged as layout 2.
    pub const fn to_wire(self) -> u128 {
        self.0 | WIRE_LAYOUT_2
    }

    /// Reads an encoded word of either layout; `None` if it is neither or does not fit.
    pub fn from_wire(wire: u128) -> Option<Self> {
        match u64::try_from(wire) {
            Ok(legacy) => Counters::from_legacy_word(legacy),
            Err(_) if wire & WIRE_LAYOUT_2 != 0 => Counters::try_from_raw(wire & !WIRE_LAYOUT_2),
            Err(_) => None,
        }
    }

    pub const fn raw(self) -> u128 {
        self.0
    }

    pub const fn available(self) -> u64 {
        (self.0 & MASK) as u64
    }

    pub const fn held(self) -> u64 {
        ((self.0 >> HELD_SHIFT) & MASK) as u64
    }

    pub const fn sold(self) -> u64 {
        ((self.0 >> SOLD_SHIFT) & MASK) as u64
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
    use proptest::prelude::*;

    /// A layout 1 word, packed the way the 64-bit code packed it.
    fn legacy_word(available: u64, held: u64, sold: u64, shut: bool) -> u64 {
        available | held << 21 | sold << 42 | if shut { 1 << 63 } else { 0 }
    }

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
        assert!(!c.with_shut(false).shut());
        assert_eq!(c.with_shut(false).sold(), DEAL_STOCK_UNITS_MAX);
    }

    #[test]
    fn a_billion_units_fit_and_the_limit_is_forty_bits() {
        assert_eq!(DEAL_STOCK_UNITS_MAX, (1 << 40) - 1);
        let c = Counters::new(1_000_000_000).take(999).unwrap().sell(990).put_back(9);
        assert_eq!((c.available(), c.held(), c.sold()), (1_000_000_000 - 990, 0, 990));
        assert_eq!(c.stock(), 1_000_000_000);
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
        assert!(c.add_stock(u64::MAX).is_none());
        assert_eq!(c.add_stock(5).unwrap().available(), 11);
        assert_eq!(c.add_stock(DEAL_STOCK_UNITS_MAX - 10).unwrap().stock(), DEAL_STOCK_UNITS_MAX);
        assert!(Counters::from_parts(DEAL_STOCK_UNITS_MAX, 1, 0, false).is_none());
        assert!(Counters::from_parts(DEAL_STOCK_UNITS_MAX + 1, 0, 0, false).is_none());
    }

    #[test]
    #[should_panic(expected = "over the limit")]
    fn a_stock_over_the_limit_is_a_bug() {
        let _ = Counters::new(DEAL_STOCK_UNITS_MAX + 1);
    }

    #[test]
    fn stray_bits_are_refused_from_outside() {
        let c = Counters::from_parts(1, 2, 3, true).unwrap();
        assert_eq!(Counters::try_from_raw(c.raw()), Some(c));
        for bit in 120..126 {
            assert_eq!(Counters::try_from_raw(c.raw() | 1 << bit), None, "bit {bit}");
        }
        assert_eq!(Counters::from_wire(c.raw() | 1 << 125), None, "untagged above 2^64");
        assert_eq!(Counters::from_wire(c.to_wire() | 1 << 121), None);
    }

    /// The bytes the 64-bit code wrote for one word, as postcard wrote them (`serialize_u64`):
    /// they must decode to the same counters, so old checkpoints and snapshots still read.
    #[test]
    fn layout_1_encodings_still_decode() {
        let old = legacy_word(2_097_151 - 7, 4, 3, true);
        let bytes = postcard::to_stdvec(&old).unwrap();
        let c: Counters = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((c.available(), c.held(), c.sold(), c.shut()), (2_097_144, 4, 3, true));
        let c: Counters = postcard::from_bytes(&postcard::to_stdvec(&5u64).unwrap()).unwrap();
        assert_eq!(c, Counters::new(5));
        // A layout 1 word over the old limit was never written: refused, as before.
        let over = legacy_word(2_097_151, 1, 0, false);
        assert!(postcard::from_bytes::<Counters>(&postcard::to_stdvec(&over).unwrap()).is_err());
    }

    /// An older build reads a layout 2 value as a `u64` and must fail, not misread it.
    #[test]
    fn layout_2_encodings_do_not_read_as_layout_1() {
        for c in [Counters::new(0), Counters::new(5), Counters::new(DEAL_STOCK_UNITS_MAX)] {
            let bytes = postcard::to_stdvec(&c).unwrap();
            assert!(postcard::from_bytes::<u64>(&bytes).is_err(), "{c:?} read as a u64");
        }
    }

    fn counters() -> impl Strategy<Value = Counters> {
        // Fields anywhere in 0..=max (edges weighted), the sum held to the limit.
        let field = prop_oneof![
            1 => Just(0u64),
            1 => Just(DEAL_STOCK_UNITS_MAX),
            1 => 0..=1_000u64,
            3 => 0..=DEAL_STOCK_UNITS_MAX,
        ];
        (field.clone(), field.clone(), field, any::<bool>()).prop_map(|(a, h, s, shut)| {
            let h = h.min(DEAL_STOCK_UNITS_MAX - a);
            let s = s.min(DEAL_STOCK_UNITS_MAX - a - h);
            Counters::from_parts(a, h, s, shut).unwrap()
        })
    }

    proptest! {
        #[test]
        fn every_word_round_trips(c in counters()) {
            let (a, h, s, shut) = (c.available(), c.held(), c.sold(), c.shut());
            prop_assert_eq!(Counters::from_parts(a, h, s, shut), Some(c));
            prop_assert_eq!(Counters::try_from_raw(c.raw()), Some(c));
            prop_assert_eq!(Counters::from_wire(c.to_wire()), Some(c));
            let bytes = postcard::to_stdvec(&c).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Counters>(&bytes).unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(serde_json::from_str::<Counters>(&json).unwrap(), c);
            prop_assert_eq!(c.stock(), a + h + s);
        }

        #[test]
        fn every_layout_1_word_reads_as_its_fields(
            a in 0..=2_097_151u64, h in 0..=2_097_151u64, s in 0..=2_097_151u64, shut: bool,
        ) {
            let h = h.min(2_097_151 - a);
            let s = s.min(2_097_151 - a - h);
            let bytes = postcard::to_stdvec(&legacy_word(a, h, s, shut)).unwrap();
            let c: Counters = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!((c.available(), c.held(), c.sold(), c.shut()), (a, h, s, shut));
        }

        #[test]
        fn transitions_keep_the_stock_over_the_full_range(c in counters(), qty in 1..=1_000u64) {
            let stock = c.stock();
            if let Ok(taken) = c.take(qty) {
                prop_assert_eq!(taken.stock(), stock);
                prop_assert_eq!(taken.held(), c.held() + qty);
                prop_assert_eq!(taken.sell(qty).sold(), c.sold() + qty);
                prop_assert_eq!(taken.put_back(qty), c);
                prop_assert_eq!(taken.shut(), c.shut());
            } else {
                prop_assert!(c.available() < qty);
            }
            match c.add_stock(qty) {
                Some(more) => prop_assert_eq!(more.stock(), stock + qty),
                None => prop_assert!(stock + qty > DEAL_STOCK_UNITS_MAX),
            }
        }
    }
}
