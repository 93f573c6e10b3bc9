//! The probability that Thompson sampling shows a banner at a rank, given the posteriors: the
//! propensity an impression logs, which off-policy evaluation divides by.
//!
//! For one banner (rank 1) it is P(the banner's draw is the highest) = ∫ f_i(x) G_i(x) dx with
//! G_i = Π_{j≠i} F_j, computed on a grid that follows arm i's posterior. G_i is
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
    for &i in valid {
        (p[i], error[i]) = prob_best_of(arms, valid, i);
    }
    (p, error)
}

/// P(arm `i`'s draw is the highest among `valid`) with the bound of its error:
/// ∫ f_i(x) G_i(x) dx on a grid that follows arm i's posterior (G_i, the product of the other
/// arms' CDFs, at both ends of each cell bracket the integral). It costs one CDF per grid point
/// and arm, fewer for arms whose CDF reaches 1 inside the grid, so the service computes it only
/// for the banners it shows.
///
/// The other arms are multiplied in from the highest mean down, and the points where the product
/// has fallen below [`NEGLIGIBLE`] are left alone from then on: G_i is non-decreasing, so they are
/// a prefix of the grid, and there G_i lies between 0 and the partial product, which the bracket
/// takes as its lower and upper end. Arms clearly above arm i thus end the work after one arm,
/// and arms clearly below cost one CDF each.
pub fn prob_best_of(arms: &[BetaSampler], valid: &[usize], i: usize) -> (f64, f64) {
    match valid {
        [] => return (0.0, 0.0),
        [only] => return (if *only == i { 1.0 } else { 0.0 }, 0.0),
        _ => {}
    }
    let grid = grid(&arms[i]);
    let points = grid.len();
    let mut others: Vec<usize> = valid.iter().copied().filter(|&j| j != i).collect();
    others.sort_unstable_by(|&a, &b| arms[b].mean().total_cmp(&arms[a].mean()));
    let mut product = vec![1.0; points];
    // Points below `negligible` hold an upper bound of G_i under NEGLIGIBLE, no longer updated.
    let mut negligible = 0;
    for j in others {
        multiply_cdf_into(&arms[j], &grid[negligible..], &mut product[negligible..]);
        while negligible < points && product[negligible] < NEGLIGIBLE {
            negligible += 1;
        }
        if negligible == points {
            break;
        }
    }
    // The cells wholly inside the prefix hold at most arm i's whole mass times NEGLIGIBLE.
    let start = negligible.saturating_sub(1);
    let (mut low, mut high) = (0.0, if start > 0 { NEGLIGIBLE } else { 0.0 });
    let own = cdf_on(&arms[i], &grid[start..]);
    for (k, cell) in (start..points).zip(own.windows(2)) {
        let mass = cell[1] - cell[0];
        if k >= negligible {
            low += mass * product[k];
        }
        high += mass * product[k + 1];
    }
    ((low + high) / 2.0, (high - low) / 2.0)
}

/// A product of CDFs below this is treated as lying anywhere between 0 and its value (see
/// [`prob_best_of`]); it adds at most twice this to a propensity's error bound.
const NEGLIGIBLE: f64 = 1e-12;

fn cdf_on(arm: &BetaSampler, grid: &[f64]) -> Vec<f64> {
    let mut out = vec![1.0; grid.len()];
    multiply_cdf_into(arm, grid, &mut out);
    out
}

/// Multiplies the arm's CDF at each grid point (ascending) into `out`; once it reaches 1 it
/// stays there, so the points above are left as they are.
fn multiply_cdf_into(arm: &BetaSampler, grid: &[f64], out: &mut [f64]) {
    let (a, b) = (arm.alpha(), arm.beta());
    for (f, &x) in out.iter_mut().zip(grid) {
        let cdf = match x {
            x if x <= 0.0 => 0.0,
            x if x >= 1.0 => 1.0,
            x => beta_reg(a, b, x),
        };
        if cdf >= 1.0 {
            return;
        }
        *f *= cdf;
    }
}

/// Points on [0, 1] dense where the arm's posterior has its mass: its mean ± 4 standard
/// deviations in twenty-fifths of one, ± 4 to 10 in halves, and powers of ten towards both ends
/// (where shapes below 1 put their mass).
fn grid(arm: &BetaSampler) -> Vec<f64> {
    let (a, b) = (arm.alpha(), arm.beta());
    let mean = a / (a + b);
    let sd = (a * b / ((a + b) * (a + b) * (a + b + 1.0))).sqrt();
    let steps = (-200..=200)
        .filter(|&z: &i32| z.abs() <= 100 || z % 10 == 0)
        .map(|z| f64::from(z) / 25.0);
    let mut grid: Vec<f64> = steps
        .map(|z| (mean + z * sd).clamp(0.0, 1.0))
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
        // Fifty banners a few clicks apart, as a slot with little traffic per city has them.
        let fifty: Vec<(f64, f64)> = (0..50)
            .map(|i| (3.0 + f64::from(i % 7), 150.0 + f64::from(i * 3 % 11)))
            .collect();
        let separated = separated_by_strong_priors();
        let cases: [&[(f64, f64)]; 7] = [
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
            &fifty,
            &separated,
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

    /// A (slot, city) of a million-arm store: priors of ten thousand pseudo-impressions, so the
    /// posteriors are narrow and most banners far from the best few.
    fn separated_by_strong_priors() -> Vec<(f64, f64)> {
        (0..50)
            .map(|i| {
                let clicks = 120.0 + f64::from(i * 37 % 541);
                (clicks, 10_100.0 - clicks)
            })
            .collect()
    }

    /// The bracket on the whole grid with every other arm's CDF at every point: what
    /// [`prob_best_of`] computes with less work.
    fn prob_best_in_full(arms: &[BetaSampler], valid: &[usize], i: usize) -> (f64, f64) {
        let grid = grid(&arms[i]);
        let own: Vec<f64> = grid.iter().map(|&x| cdf(&arms[i], x)).collect();
        let others: Vec<f64> = grid
            .iter()
            .map(|&x| {
                let others = valid.iter().filter(|&&j| j != i);
                others.map(|&j| cdf(&arms[j], x)).product()
            })
            .collect();
        let (mut low, mut high) = (0.0, 0.0);
        for k in 0..grid.len() - 1 {
            low += (own[k + 1] - own[k]) * others[k];
            high += (own[k + 1] - own[k]) * others[k + 1];
        }
        ((low + high) / 2.0, (high - low) / 2.0)
    }

    fn cdf(arm: &BetaSampler, x: f64) -> f64 {
        if x <= 0.0 || x >= 1.0 {
            x.clamp(0.0, 1.0)
        } else {
            beta_reg(arm.alpha(), arm.beta(), x)
        }
    }

    proptest::proptest! {
        #[test]
        fn skipping_negligible_work_keeps_the_bracket(
            params in proptest::collection::vec((0.3f64..3_000.0, 0.3f64..30_000.0), 2..30),
            shown in 0usize..30,
        ) {
            let arms = arms(&params);
            let valid: Vec<usize> = (0..arms.len()).collect();
            let i = shown % arms.len();
            let (p, error) = prob_best_of(&arms, &valid, i);
            let (full, full_error) = prob_best_in_full(&arms, &valid, i);
            // The same bracket, widened by at most the negligible part.
            proptest::prop_assert!((p - full).abs() <= 4.0 * NEGLIGIBLE, "{p} vs {full}");
            proptest::prop_assert!(error <= full_error + 4.0 * NEGLIGIBLE);
            proptest::prop_assert!(error >= 0.0 && (0.0..=1.0 + 1e-9).contains(&p));
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
