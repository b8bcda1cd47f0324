//! Pure randomness for reproducible workloads: a small seeded generator, and the Zipf picker
//! that skews traffic over the deals. Not for secrets.

/// A small, fast, seedable generator (xorshift64*, seeded through splitmix64). Not for secrets:
/// for reproducible workloads.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 spreads similar seeds apart; xorshift must not start at zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    #[expect(clippy::cast_precision_loss, reason = "53-bit integers and 2^53 are exact in f64")]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)`; `n` must be positive. Lemire's multiply-shift: no division, and a
    /// bias of at most n / 2^64, far below anything a load test can see.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[lo, hi]`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "between({lo}, {hi})");
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// An exponential variate with mean 1 (the gap between arrivals of a unit-rate Poisson
    /// process).
    pub fn exp1(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        -(1.0 - self.next_f64()).ln()
    }
}

/// Picks deal indexes with a Zipf skew: index `k` (0-based) has weight `1 / (k + 1)^s`. `s = 0`
/// is uniform; `s = 1` is the classic "a few deals take most of the traffic". Index 0 is the
/// hottest deal.
#[derive(Clone, Debug)]
pub struct Zipf {
    /// Cumulative weights, normalized so the last is 1.
    cdf: Vec<f64>,
}

impl Zipf {
    #[expect(clippy::cast_precision_loss, reason = "k <= n, a number of deals: far below 2^53")]
    pub fn new(n: usize, exponent: f64) -> Zipf {
        assert!(n > 0, "Zipf over no items");
        assert!(exponent.is_finite() && exponent >= 0.0, "Zipf exponent {exponent}");
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                total += (k as f64).powf(-exponent);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// The probability of index `k`.
    #[cfg(test)]
    pub fn p(&self, k: usize) -> f64 {
        let below = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf[k] - below
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let a: Vec<u64> = (0..5).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..5).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let c: Vec<u64> = (0..5).scan(Rng::new(8), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut rng = Rng::new(0);
        for _ in 0..10_000 {
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(rng.below(3) < 3);
            assert!((5..=9).contains(&rng.between(5, 9)));
            assert!(rng.exp1().is_finite());
        }
        assert_eq!(rng.between(4, 4), 4);
    }

    #[test]
    fn zipf_weights_and_samples_follow_the_skew() {
        let uniform = Zipf::new(4, 0.0);
        for k in 0..4 {
            assert!((uniform.p(k) - 0.25).abs() < 1e-12);
        }
        let zipf = Zipf::new(3, 1.0);
        // Weights 1, 1/2, 1/3 over 11/6.
        assert!((zipf.p(0) - 6.0 / 11.0).abs() < 1e-12);
        assert!((zipf.p(2) - 2.0 / 11.0).abs() < 1e-12);
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 3];
        for _ in 0..60_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        for (k, &count) in counts.iter().enumerate() {
            let share = f64::from(count) / 60_000.0;
            assert!((share - zipf.p(k)).abs() < 0.01, "index {k}: {share} vs {}", zipf.p(k));
        }
        let one = Zipf::new(1, 1.2);
        assert_eq!(one.sample(&mut rng), 0);
        assert_eq!(one.p(0), 1.0);
    }
}
