//! The draw: for the first `draw_window_ms` of a deal's sale, reserves are entries, not first
//! come first served; when the window closes, a seeded random order decides who is served, and
//! anyone can check it.
//!
//! Fair: within the window, arriving in the first millisecond (a bot's advantage) is worth
//! nothing; every entry has the same chance. Verifiable: the deal publishes, at creation,
//! `commitment = SHA-256(seed)` for a secret 32-byte seed; after the draw the seed is revealed
//! with every entry, so anyone can check that the seed is the committed one and recompute the
//! order from it: the server could not pick the seed after seeing the entries, nor reorder them.
//!
//! The algorithm, `sha256-rank-v1`, over the entries in log order (index `i` from 0, the order
//! they entered, as the reveal lists them):
//!
//! ```text
//! key(i) = SHA-256("livestock-draw-v1" || seed || u64_be(i) || user_id)
//! order  = the entries sorted by key ascending (a tie, never seen with SHA-256, by i)
//! ```
//!
//! Then the deal's available units are handed out in that order with the waitlist's rule
//! (`waitlist.rs`, first fit, each entry whole): the entries served are the winners; the
//! others join the waitlist in draw order (up to `waitlist_max`) or, without one, are `lost`.
//! Nobody can have bought units of the deal before its window (it has not started), so
//! per-user limits never change the result (each entry was checked against the limit).

use sha2::{Digest, Sha256};

pub const DRAW_ALGORITHM: &str = "sha256-rank-v1";
const DOMAIN: &[u8] = b"livestock-draw-v1";

/// The draw's secret: 32 random bytes chosen by the server when the deal is created.
pub type DrawSeed = [u8; 32];

/// What the deal publishes at creation: SHA-256 of the seed.
pub fn commitment(seed: &DrawSeed) -> [u8; 32] {
    Sha256::digest(seed).into()
}

/// The key of the entry at `index` (log order) for user `user_id`.
pub fn rank_key(seed: &DrawSeed, index: u64, user_id: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(DOMAIN);
    hash.update(seed);
    hash.update(index.to_be_bytes());
    hash.update(user_id.as_bytes());
    hash.finalize().into()
}

/// The draw order: indices into `users` (the entries' users in log order), first served first.
pub fn draw_order<'a>(seed: &DrawSeed, users: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
    let mut keyed: Vec<([u8; 32], usize)> = users
        .into_iter()
        .enumerate()
        .map(|(i, user)| (rank_key(seed, i as u64, user), i))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Lowercase hex, as the API shows seeds and commitments.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: DrawSeed = [7; 32];

    #[test]
    fn the_algorithm_is_fixed() {
        // Verifiers outside this code base (docs/draw.md has a Python version) depend on these
        // exact bytes: a change here is a new algorithm name, not a fix.
        assert_eq!(hex(&commitment(&SEED)), hex(&Sha256::digest([7u8; 32])));
        let key = rank_key(&SEED, 1, "u");
        let mut manual = Vec::new();
        manual.extend_from_slice(b"livestock-draw-v1");
        manual.extend_from_slice(&SEED);
        manual.extend_from_slice(&1u64.to_be_bytes());
        manual.extend_from_slice(b"u");
        assert_eq!(key, <[u8; 32]>::from(Sha256::digest(&manual)));
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }

    #[test]
    fn the_order_is_a_permutation_that_depends_on_the_seed() {
        let users: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
        let order = draw_order(&SEED, users.iter().map(String::as_str));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(order, (0..100).collect::<Vec<_>>(), "not arrival order");
        let other = draw_order(&[8; 32], users.iter().map(String::as_str));
        assert_ne!(order, other);
        assert_eq!(order, draw_order(&SEED, users.iter().map(String::as_str)), "deterministic");
    }

    #[test]
    fn every_entry_wins_as_often_over_many_seeds() {
        // 20 entries, 5 winners (first 5 of the order), 4,000 seeds: each entry should win
        // 1,000 times; chi-square with 19 degrees of freedom, p = 0.001 critical value 43.8.
        let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
        let mut wins = [0u64; 20];
        for s in 0..4_000u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&s.to_le_bytes());
            for i in &draw_order(&seed, users.iter().map(String::as_str))[..5] {
                wins[*i] += 1;
            }
        }
        let expected = 1_000.0;
        let chi2: f64 = wins.iter().map(|w| (*w as f64 - expected).powi(2) / expected).sum();
        assert!(chi2 < 43.8, "chi-square {chi2} for {wins:?}");
    }
}
