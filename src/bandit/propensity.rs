//! The probability that Thompson sampling shows a banner at a rank, given the posteriors: the
//! propensity an impression logs, which off-policy evaluation divides by.
//!
//! For one banner (rank 1) it is P(the banner's draw is the highest) = ∫ f_i(x) G_i(x) dx with
//! G_i = Π_{j≠i} F_j, computed on a grid of CDF values that follows every arm's posterior. G_i is
//! non-decreasing, so the sums with G_i at the left and at the right end of each cell bracket the
//! integral: the propensity is their midpoint and its error bound half their distance, a bound
//! that holds whatever the posteriors. For carousels (rank > 1) the probabilities are estimated
//! from draws of the same sampler the decisions use, with a 99% binomial bound.

use rand::Rng;
use statrs::function::beta::beta_reg;

use super::{thompson_select, BetaSampler};

/// Draws behind the estimate of rank probabilities of a carousel.
pub const CAROUSEL_DRAWS: usize = 20_000;

/// Each arm's probability of being shown at each rank, and the bound of its error.
#[derive(Debug, Clone, PartialEq)]
pub struct RankPropensities {
    /// `p[arm][rank - 1]`, by index into the arms; zero for arms not valid.
    pub p: Vec<Vec<f64>>,
    /// The error bound of each entry of `p`.
    pub error: Vec<Vec<f64>>,
}

impl RankPropensities {
    /// Rank probabilities among the `valid` arms for decisions of `n` banners.
    pub fn compute<R: Rng + ?Sized>(
        arms: &[BetaSampler],
        valid: &[usize],
        n: usize,
        rng: &mut R,
    ) -> Self {
        let ranks = n.min(valid.len()).max(1);
        if n == 1 || valid.len() <= 1 {
            let (best, error) = prob_best_bounded(arms, valid);
            let p = best.into_iter().map(|b| vec![b; 1]).collect();
            let error = error.into_iter().map(|e| vec![e; 1]).collect();
            return Self { p, error }.padded(ranks);
        }
        let mut shown = vec![vec![0u64; ranks]; arms.len()];
        let mut out = Vec::with_capacity(ranks);
        let is_valid = |i: usize| valid.binary_search(&i).is_ok();
        for _ in 0..CAROUSEL_DRAWS {
            out.clear();
            thompson_select(arms, is_valid, n, rng, &mut out);
            for (rank, &arm) in out.iter().enumerate() {
                shown[arm][rank] += 1;
            }
        }
        let draws = CAROUSEL_DRAWS as f64;
        let p: Vec<Vec<f64>> = shown
            .iter()
            .map(|ranks| ranks.iter().map(|&c| c as f64 / draws).collect())
            .collect();
        let error = p
            .iter()
            .map(|ranks| {
                ranks
                    .iter()
                    .map(|&q| 2.576 * (q * (1.0 - q) / draws).sqrt() + 1.0 / draws)
                    .collect()
            })
            .collect();
        Self { p, error }
    }

    /// Rank 1 only for a single valid arm: the ranks it cannot reach have probability 0.
    fn padded(mut self, ranks: usize) -> Self {
        for row in self.p.iter_mut().chain(self.error.iter_mut()) {
            row.resize(ranks, 0.0);
        }
        self
    }
}

/// P(arm i's draw is the highest among `valid`) for every arm (0 for arms not valid), each with
/// the bound of its error.
pub fn prob_best_bounded(arms: &[BetaSampler], valid: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let mut p = vec![0.0; arms.len()];
    let mut error = vec![0.0; arms.len()];
    match valid {
        [] => return (p, error),
        [only] => {
            p[*only] = 1.0;
            return (p, error);
        }
        _ => {}
    }
    let grid = grid(arms, valid);
    // cdf[v][k] = F of the v-th valid arm at grid[k].
    let cdf: Vec<Vec<f64>> = valid
        .iter()
        .map(|&j| {
            let (a, b) = (arms[j].alpha(), arms[j].beta());
            grid.iter()
                .map(|&x| match x {
                    x if x <= 0.0 => 0.0,
                    x if x >= 1.0 => 1.0,
                    x => beta_reg(a, b, x),
                })
                .collect()
        })
        .collect();
    let points = grid.len();
    // Products of every valid arm's CDF but one, from prefix and suffix products.
    let mut prefix = vec![vec![1.0; points]; valid.len() + 1];
    for v in 0..valid.len() {
        for k in 0..points {
            prefix[v + 1][k] = prefix[v][k] * cdf[v][k];
        }
    }
    let mut suffix = vec![1.0; points];
    for v in (0..valid.len()).rev() {
        let (mut low, mut high) = (0.0, 0.0);
        for k in 0..points - 1 {
            let mass = cdf[v][k + 1] - cdf[v][k];
            low += mass * prefix[v][k] * suffix[k];
            high += mass * prefix[v][k + 1] * suffix[k + 1];
        }
        p[valid[v]] = (low + high) / 2.0;
        error[valid[v]] = (high - low) / 2.0;
        for k in 0..points {
            suffix[k] *= cdf[v][k];
        }
    }
    (p, error)
}

/// Points on [0, 1] dense where any valid arm's posterior has its mass: each arm's mean ± 3
/// standard deviations in twentieths of one, ± 3 to 5 in tenths, ± 5 to 10 in halves, and powers of ten towards both
/// ends (where shapes below 1 put their mass).
fn grid(arms: &[BetaSampler], valid: &[usize]) -> Vec<f64> {
    let steps = (-200..=200)
        .filter(|&z: &i32| z.abs() <= 60 || (z.abs() <= 100 && z % 2 == 0) || z % 10 == 0)
        .map(|z| f64::from(z) / 20.0);
    let mut grid: Vec<f64> = valid
        .iter()
        .flat_map(|&j| {
            let (a, b) = (arms[j].alpha(), arms[j].beta());
            let mean = a / (a + b);
            let sd = (a * b / ((a + b) * (a + b) * (a + b + 1.0))).sqrt();
            steps.clone().map(move |z| (mean + z * sd).clamp(0.0, 1.0))
        })
        .chain((1..=15).flat_map(|k| {
            let near = 10f64.powi(-k);
            [near, 3.0 * near, 1.0 - near, 1.0 - 3.0 * near]
        }))
        .chain([0.0, 1.0])
        .collect();
    grid.sort_unstable_by(f64::total_cmp);
    grid.dedup();
    grid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::{prob_best, seeded_rng, BetaPosterior};

    fn arms(params: &[(f64, f64)]) -> Vec<BetaSampler> {
        params
            .iter()
            .map(|&(alpha, beta)| BetaPosterior { alpha, beta }.distribution())
            .collect()
    }

    #[test]
    fn p_best_matches_the_samplers_frequencies_within_its_bound() {
        let cases: [&[(f64, f64)]; 5] = [
            &[(0.5, 0.5), (0.7, 2.0)],
            &[(12.0, 90.0), (9.0, 95.0), (15.0, 120.0)],
            &[
                (600.0, 5_400.0),
                (80.0, 920.0),
                (75.0, 925.0),
                (90.0, 910.0),
            ],
            &[(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)],
            &[(90.0, 10.0), (1.0, 3.0), (2.0, 2.5)],
        ];
        for (c, params) in cases.iter().enumerate() {
            let arms = arms(params);
            let valid: Vec<usize> = (0..arms.len()).collect();
            let (p, error) = prob_best_bounded(&arms, &valid);
            let total: f64 = p.iter().sum();
            assert!((total - 1.0).abs() < 1e-3, "case {c}: sums to {total}");
            let draws = 200_000;
            let freq = prob_best(&arms, draws, &mut seeded_rng(c as u64));
            for i in 0..arms.len() {
                assert!(error[i] < 0.01, "case {c} arm {i}: bound {}", error[i]);
                let tol = 4.5 * (p[i] * (1.0 - p[i]) / draws as f64).sqrt() + 1e-3;
                assert!(
                    (freq[i] - p[i]).abs() <= tol,
                    "case {c} arm {i}: {} vs {}",
                    freq[i],
                    p[i]
                );
            }
        }
    }

    #[test]
    fn only_valid_arms_compete() {
        let arms = arms(&[(50.0, 50.0), (10.0, 90.0), (20.0, 80.0)]);
        let (p, error) = prob_best_bounded(&arms, &[1, 2]);
        assert_eq!(p[0], 0.0);
        assert!(
            p[2] > 0.9 && (p[1] + p[2] - 1.0).abs() < 1e-3,
            "{p:?} ± {error:?}"
        );
        let (p, _) = prob_best_bounded(&arms, &[1]);
        assert_eq!(p, [0.0, 1.0, 0.0]);
    }

    #[test]
    fn carousel_ranks_sum_to_one_per_rank() {
        let arms = arms(&[(30.0, 70.0), (25.0, 75.0), (20.0, 80.0), (5.0, 95.0)]);
        let valid = [0, 1, 2, 3];
        let table = RankPropensities::compute(&arms, &valid, 2, &mut seeded_rng(3));
        for rank in 0..2 {
            let total: f64 = table.p.iter().map(|r| r[rank]).sum();
            assert!((total - 1.0).abs() < 1e-9, "rank {rank}: {total}");
        }
        let (best, _) = prob_best_bounded(&arms, &valid);
        for ((p, e), best) in table.p.iter().zip(&table.error).zip(best) {
            assert!((p[0] - best).abs() <= e[0] + 1e-3, "{} vs {best}", p[0]);
        }
    }
}
