//! Identifiers and their validation. Every id that enters from the wire passes through here.

use std::fmt;
use std::sync::Arc;

use crate::limits::{DEAL_ID_LEN_MAX, IDEMPOTENCY_KEY_LEN_MAX, STREAM_ID_LEN_MAX, USER_ID_LEN_MAX};

/// Why an id was refused; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidId {
    pub field: &'static str,
    pub reason: &'static str,
}

fn is_slug_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

fn check_slug(field: &'static str, raw: &str, len_max: usize) -> Result<(), InvalidId> {
    if raw.is_empty() {
        return Err(InvalidId { field, reason: "must not be empty" });
    }
    if raw.len() > len_max {
        return Err(InvalidId { field, reason: "too long (at most 64 characters)" });
    }
    if !raw.bytes().all(is_slug_char) {
        return Err(InvalidId {
            field,
            reason: "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed",
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        /// Decoding validates, as parsing does: a log or checkpoint cannot smuggle in an id
        /// the API would refuse.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A deal's id, chosen by the caller: 1-64 chars of `[A-Za-z0-9._-]`.
    DealId
);
string_id!(
    /// The livestream a deal belongs to; same alphabet as deal ids.
    StreamId
);
string_id!(
    /// The buyer, opaque to us: 1-128 printable ASCII characters.
    UserId
);
string_id!(
    /// A caller's idempotency key: 1-128 printable ASCII characters.
    IdempotencyKey
);

impl DealId {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        DealId::validate(raw)?;
        Ok(DealId(raw.into()))
    }

    /// What `parse` checks, without making an id (the sold-out answer allocates nothing).
    pub fn validate(raw: &str) -> Result<(), InvalidId> {
        check_slug("deal_id", raw, DEAL_ID_LEN_MAX)
    }
}

impl StreamId {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        check_slug("stream_id", raw, STREAM_ID_LEN_MAX)?;
        Ok(StreamId(raw.into()))
    }
}

fn check_opaque(field: &'static str, raw: &str, len_max: usize) -> Result<(), InvalidId> {
    if raw.is_empty() {
        return Err(InvalidId { field, reason: "must not be empty" });
    }
    if raw.len() > len_max {
        return Err(InvalidId { field, reason: "too long (at most 128 characters)" });
    }
    // Printable ASCII only: these strings land in logs and headers.
    if !raw.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(InvalidId { field, reason: "only printable ASCII without spaces is allowed" });
    }
    Ok(())
}

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        UserId::validate(raw)?;
        Ok(UserId(raw.into()))
    }

    /// What `parse` checks, without making an id (the sold-out answer allocates nothing).
    pub fn validate(raw: &str) -> Result<(), InvalidId> {
        check_opaque("user_id", raw, USER_ID_LEN_MAX)
    }
}

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        IdempotencyKey::validate(raw)?;
        Ok(IdempotencyKey(raw.into()))
    }

    /// What `parse` checks, without making a key (the refusal shortcut allocates nothing).
    pub fn validate(raw: &str) -> Result<(), InvalidId> {
        check_opaque("Idempotency-Key", raw, IDEMPOTENCY_KEY_LEN_MAX)
    }
}

/// A hold's server-made id. Inside, holds are numbered by a sequence (`seq`); outside, the
/// number is shown through a keyed permutation so ids are opaque and not enumerable from one
/// another, while staying unique (a permutation is a bijection) and cheap to map back.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct HoldSeq(pub u64);

/// The secret of the hold id permutation. Chosen at random when a data set is created and kept
/// with it, so ids stay stable across restarts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub struct HoldIdKey(pub u64);

const HOLD_ID_PREFIX: char = 'h';
const HOLD_ID_LEN: usize = 17;
const FEISTEL_ROUNDS: u32 = 4;

fn feistel_round(half: u32, key: HoldIdKey, round: u32) -> u32 {
    let x = (u64::from(half) ^ key.0.rotate_left(round * 16)).wrapping_add(u64::from(round));
    halves(x.wrapping_mul(0x9E37_79B9_7F4A_7C15)).0
}

/// A word as its (high, low) halves, the two sides of the Feistel network.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the low half is wanted: `as u32` keeps exactly the low 32 bits, and the high half \
              is shifted down first so it fits"
)]
const fn halves(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// The keyed permutation behind hold and entry ids (a 4-round Feistel network on the halves).
fn permute(n: u64, key: HoldIdKey) -> u64 {
    let (mut left, mut right) = halves(n);
    for round in 0..FEISTEL_ROUNDS {
        let next = left ^ feistel_round(right, key, round);
        left = right;
        right = next;
    }
    u64::from(left) << 32 | u64::from(right)
}

fn unpermute(raw: u64, key: HoldIdKey) -> u64 {
    let (mut left, mut right) = halves(raw);
    for round in (0..FEISTEL_ROUNDS).rev() {
        let prev = right ^ feistel_round(left, key, round);
        right = left;
        left = prev;
    }
    u64::from(left) << 32 | u64::from(right)
}

/// An id of ours as the caller sees it: a prefix letter and 16 lowercase hex digits of the
/// permuted number.
fn to_opaque_id(prefix: char, n: u64, key: HoldIdKey) -> String {
    format!("{prefix}{:016x}", permute(n, key))
}

fn from_opaque_id(
    id: &str,
    prefix: char,
    key: HoldIdKey,
    invalid: InvalidId,
) -> Result<u64, InvalidId> {
    let hex = id.strip_prefix(prefix).ok_or(invalid.clone())?;
    if id.len() != HOLD_ID_LEN || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid);
    }
    let raw = u64::from_str_radix(hex, 16).map_err(|_| invalid)?;
    Ok(unpermute(raw, key))
}

impl HoldSeq {
    /// The id a caller sees: `h` and 16 lowercase hex digits.
    pub fn to_id(self, key: HoldIdKey) -> String {
        to_opaque_id(HOLD_ID_PREFIX, self.0, key)
    }

    /// Maps a caller's id back; `Err` if it is not of our shape (any 16 hex digits map to some
    /// sequence number, which then may or may not be a hold).
    pub fn from_id(id: &str, key: HoldIdKey) -> Result<Self, InvalidId> {
        let invalid = InvalidId { field: "hold_id", reason: "not a hold id (h + 16 hex digits)" };
        from_opaque_id(id, HOLD_ID_PREFIX, key, invalid).map(HoldSeq)
    }
}

/// A waitlist entry's number. Entries are numbered from the same sequence as holds (a number
/// is a hold or an entry, never both), and shown through the same keyed permutation with the
/// prefix `w`.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct EntrySeq(pub u64);

const ENTRY_ID_PREFIX: char = 'w';

impl EntrySeq {
    /// The id a caller sees: `w` and 16 lowercase hex digits.
    pub fn to_id(self, key: HoldIdKey) -> String {
        to_opaque_id(ENTRY_ID_PREFIX, self.0, key)
    }

    pub fn from_id(id: &str, key: HoldIdKey) -> Result<Self, InvalidId> {
        let invalid =
            InvalidId { field: "entry_id", reason: "not a waitlist entry id (w + 16 hex digits)" };
        from_opaque_id(id, ENTRY_ID_PREFIX, key, invalid).map(EntrySeq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deal_ids_are_slugs() {
        assert!(DealId::parse("drop-2026.11_a").is_ok());
        assert!(DealId::parse("").is_err());
        assert!(DealId::parse(&"a".repeat(65)).is_err());
        assert!(DealId::parse(&"a".repeat(64)).is_ok());
        assert!(DealId::parse("a/b").is_err());
        assert!(DealId::parse("é").is_err());
    }

    #[test]
    fn user_ids_are_printable() {
        assert!(UserId::parse("user:42@shop").is_ok());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse(&"u".repeat(129)).is_err());
    }

    #[test]
    fn hold_ids_are_stable() {
        // Ids outlive the process (clients keep them across restarts): the permutation must
        // not change. Values from an independent implementation of the same network.
        assert_eq!(HoldSeq(1).to_id(HoldIdKey(0x1234_5678_9ABC_DEF0)), "h60f64c9368e83f22");
        assert_eq!(HoldSeq(0xDEAD_BEEF_0000_0042).to_id(HoldIdKey(7)), "h1b42480f6fe39a69");
    }

    #[test]
    fn hold_ids_round_trip_and_differ_by_key() {
        let key = HoldIdKey(0xDEAD_BEEF_0123_4567);
        for seq in [0, 1, 2, 1 << 40, u64::MAX] {
            let id = HoldSeq(seq).to_id(key);
            assert_eq!(id.len(), 17);
            assert_eq!(HoldSeq::from_id(&id, key), Ok(HoldSeq(seq)));
        }
        assert_ne!(HoldSeq(1).to_id(key), HoldSeq(1).to_id(HoldIdKey(7)));
        assert!(HoldSeq::from_id("h123", key).is_err());
        assert!(HoldSeq::from_id("x0000000000000001", key).is_err());
        assert!(HoldSeq::from_id("h000000000000000G", key).is_err());
        assert!(HoldSeq::from_id("h00000000000000001", key).is_err());
    }

    #[test]
    fn entry_ids_round_trip_and_are_not_hold_ids() {
        let key = HoldIdKey(0xDEAD_BEEF_0123_4567);
        let id = EntrySeq(42).to_id(key);
        assert!(id.starts_with('w'));
        assert_eq!(EntrySeq::from_id(&id, key), Ok(EntrySeq(42)));
        assert!(HoldSeq::from_id(&id, key).is_err());
        assert!(EntrySeq::from_id(&HoldSeq(42).to_id(key), key).is_err());
    }
}
