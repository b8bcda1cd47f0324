//! Pure: a deal's draw checked from its reveal (`GET /v1/deals/{id}/draw`), as an outsider
//! would, and its fairness over many seeds.
//!
//! The check recomputes what the server says it did: the seed is the one committed at the
//! deal's creation (SHA-256), the order is the seed's (`livestock_core::draw::draw_order`, the
//! published algorithm), and the winners are the first entries of that order the units fit,
//! each whole. It also checks the run's own side: every entry the server answered `entered`
//! is among the entrants, once.
//!
//! Fairness: the same draw redone under `seeds` other seeds (each the SHA-256 of its index), a
//! count of wins per entrant, and a chi-square against the uniform distribution (every entrant
//! equally likely to win; each count binomial, its variance `seeds x p x (1 - p)`), its
//! p-value by the Wilson-Hilferty normal approximation (good for
//! the thousands of degrees of freedom a drop has). With one quantity for every entry (the
//! tool's `--qty`) each seed has the same number of winners, so uniform is exact. Also the win
//! rate of the earliest tenth of the entrants (the fastest clients: bots) against everyone's.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use livestock_core::draw::{commitment, draw_order, hex, DrawSeed, DRAW_ALGORITHM};

/// One deal's draw, checked.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DrawCheck {
    pub deal_id: String,
    /// `drawn` when checked; anything else is a failure.
    pub state: String,
    pub entrants: u64,
    pub units: u64,
    pub winners: u64,
    /// The seed matches the commitment, the order and the winners are the seed's.
    pub verified: bool,
    /// Entries the run was answered `entered` that the reveal does not list.
    pub entries_missing: u64,
    /// Seeds the fairness test redid the draw under.
    pub fairness_seeds: u32,
    pub chi_square: f64,
    pub degrees_of_freedom: u64,
    /// Probability of a chi-square this large if every entrant were equally likely to win.
    pub p_value: f64,
    /// In the real draw: the win rate of the first tenth of entrants (log order), and of all.
    pub early_win_rate: f64,
    pub win_rate: f64,
    /// What failed, in words.
    pub problems: Vec<String>,
}

fn seed_of(raw: &str) -> Option<DrawSeed> {
    if raw.len() != 64 {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(raw.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(seed)
}

/// The winners of a draw: the first entries of `order` that `units` fit, each whole.
fn first_fit(order: &[usize], qty: &[u32], units: u64) -> Vec<usize> {
    let mut left = units;
    let mut winners = Vec::new();
    for i in order {
        if u64::from(qty[*i]) <= left {
            left -= u64::from(qty[*i]);
            winners.push(*i);
        }
    }
    winners
}

/// Checks one deal's reveal; `entered` are the entry ids the run was answered `entered`.
#[expect(clippy::cast_precision_loss, reason = "counts of entries and wins, far below 2^52")]
pub fn check(reveal: &Value, entered: &[String], seeds: u32) -> DrawCheck {
    let mut c = DrawCheck {
        deal_id: reveal["deal_id"].as_str().unwrap_or("?").to_owned(),
        state: reveal["state"].as_str().unwrap_or("?").to_owned(),
        fairness_seeds: seeds,
        ..DrawCheck::default()
    };
    let fail = |c: &mut DrawCheck, what: String| c.problems.push(format!("{}: {what}", c.deal_id));
    if c.state != "drawn" {
        let what = format!("not drawn (state {})", c.state);
        fail(&mut c, what);
        return c;
    }
    if reveal["algorithm"] != DRAW_ALGORITHM {
        fail(&mut c, format!("unknown algorithm {}", reveal["algorithm"]));
        return c;
    }
    let Some(seed) = reveal["seed"].as_str().and_then(seed_of) else {
        fail(&mut c, "no seed".into());
        return c;
    };
    if Some(hex(&commitment(&seed)).as_str()) != reveal["commitment"].as_str() {
        fail(&mut c, "the seed is not the committed one".into());
    }
    let entrants = reveal["entrants"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = entrants.iter().map(|e| e["entry_id"].as_str().unwrap_or("")).collect();
    let users: Vec<&str> = entrants.iter().map(|e| e["user_id"].as_str().unwrap_or("")).collect();
    let qty: Vec<u32> = entrants
        .iter()
        .map(|e| e["qty"].as_u64().and_then(|q| u32::try_from(q).ok()).unwrap_or(u32::MAX))
        .collect();
    c.entrants = entrants.len() as u64;
    c.units = reveal["units"].as_u64().unwrap_or(0);
    let order = draw_order(&seed, users.iter().copied());
    let order_ids: Vec<&str> = order.iter().map(|i| ids[*i]).collect();
    let said_order: Vec<&str> = reveal["order"]
        .as_array()
        .map_or(Vec::new(), |o| o.iter().filter_map(Value::as_str).collect());
    if order_ids != said_order {
        fail(&mut c, "the order is not the seed's".into());
    }
    let winners = first_fit(&order, &qty, c.units);
    let winner_ids: Vec<&str> = winners.iter().map(|i| ids[*i]).collect();
    let said_winners: Vec<&str> = reveal["winners"]
        .as_array()
        .map_or(Vec::new(), |w| w.iter().filter_map(Value::as_str).collect());
    if winner_ids != said_winners {
        fail(&mut c, "the winners are not the first fit of the units in the order".into());
    }
    c.winners = winners.len() as u64;
    c.verified = c.problems.is_empty();
    let listed: std::collections::HashSet<&str> = ids.iter().copied().collect();
    if listed.len() != ids.len() {
        fail(&mut c, "an entry is listed twice".into());
    }
    c.entries_missing = entered.iter().filter(|e| !listed.contains(e.as_str())).count() as u64;
    if c.entries_missing > 0 {
        let what = format!("{} entries we entered are not among the entrants", c.entries_missing);
        fail(&mut c, what);
    }
    let n = entrants.len();
    if n == 0 {
        return c;
    }
    // The real draw: the earliest tenth's win rate against everyone's.
    let won: std::collections::HashSet<usize> = winners.iter().copied().collect();
    let early = (n / 10).max(1);
    let early_wins = (0..early).filter(|i| won.contains(i)).count();
    c.early_win_rate = early_wins as f64 / early as f64;
    c.win_rate = won.len() as f64 / n as f64;
    // Fairness over other seeds.
    let mut wins = vec![0u64; n];
    let mut total = 0u64;
    for s in 0..seeds {
        let seed: DrawSeed = Sha256::digest(format!("livestock-load fairness {s}")).into();
        let order = draw_order(&seed, users.iter().copied());
        for i in first_fit(&order, &qty, c.units) {
            wins[i] += 1;
            total += 1;
        }
    }
    let expected = total as f64 / n as f64;
    // Each seed picks its winners without replacement, so an entrant's wins over the seeds
    // are binomial (seeds, p), p its chance under one seed: their variance is expected x
    // (1 - p), not `expected` (Poisson), or an honest draw would look too even (p = 1).
    let p_win = expected / f64::from(seeds.max(1));
    let variance = expected * (1.0 - p_win);
    if n > 1 && variance > 0.0 {
        c.chi_square = wins.iter().map(|w| (*w as f64 - expected).powi(2) / variance).sum();
        c.degrees_of_freedom = n as u64 - 1;
        c.p_value = chi_square_p(c.chi_square, c.degrees_of_freedom as f64);
    } else {
        c.p_value = 1.0;
    }
    c
}

/// P(X >= x) for X chi-square with `k` degrees of freedom (Wilson-Hilferty).
pub fn chi_square_p(x: f64, k: f64) -> f64 {
    let v = 2.0 / (9.0 * k);
    let z = ((x / k).cbrt() - (1.0 - v)) / v.sqrt();
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' erfcc, |error| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reveal(seed: &DrawSeed, users: &[&str], units: u64) -> Value {
        let ids: Vec<String> = (0..users.len()).map(|i| format!("w{i:016x}")).collect();
        let order = draw_order(seed, users.iter().copied());
        let winners = first_fit(&order, &vec![1; users.len()], units);
        json!({
            "deal_id": "d", "state": "drawn", "algorithm": DRAW_ALGORITHM,
            "commitment": hex(&commitment(seed)), "seed": hex(seed), "units": units,
            "entrants": users.iter().zip(&ids).map(|(u, id)| json!({"entry_id": id, "user_id": u, "qty": 1})).collect::<Vec<_>>(),
            "order": order.iter().map(|i| ids[*i].clone()).collect::<Vec<_>>(),
            "winners": winners.iter().map(|i| ids[*i].clone()).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn an_honest_draw_verifies_and_is_fair_and_a_forged_one_does_not() {
        let users: Vec<String> = (0..200).map(|i| format!("v{i}")).collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        let honest = reveal(&[9; 32], &users, 20);
        let entered: Vec<String> = vec!["w0000000000000003".into()];
        let c = check(&honest, &entered, 200);
        assert!(c.verified && c.problems.is_empty(), "{c:?}");
        assert_eq!((c.entrants, c.winners, c.entries_missing), (200, 20, 0));
        assert!(c.p_value > 0.001, "an honest draw is uniform: {c:?}");
        // A server that picked its winners (the first 20 to arrive) is caught.
        let mut forged = honest.clone();
        forged["winners"] = json!((0..20).map(|i| format!("w{i:016x}")).collect::<Vec<_>>());
        assert!(!check(&forged, &entered, 0).verified);
        // A seed other than the committed one is caught.
        let mut reseeded = reveal(&[8; 32], &users, 20);
        reseeded["commitment"] = honest["commitment"].clone();
        assert!(!check(&reseeded, &entered, 0).verified);
        // An entry we were told was entered and is not listed.
        let missing = check(&honest, &["w-not-there".into()], 0);
        assert_eq!(missing.entries_missing, 1);
        assert!(!missing.problems.is_empty());
    }

    #[test]
    fn the_p_value_follows_the_chi_square_distribution() {
        // Known quantiles: chi-square(10) exceeds 18.307 with p = 0.05, 23.209 with 0.01.
        assert!((chi_square_p(18.307, 10.0) - 0.05).abs() < 0.005);
        assert!((chi_square_p(23.209, 10.0) - 0.01).abs() < 0.002);
        assert!((chi_square_p(1000.0, 1000.0) - 0.49).abs() < 0.02);
    }
}
