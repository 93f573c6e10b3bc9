//! Thompson decisions: one Beta draw per eligible banner, the highest draws win.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand_distr::Distribution;

use super::{BetaPosterior, BetaSampler};
use crate::model::{Banner, SlotConfig};
use crate::time;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("no banner of {tenant}/{slot} is valid at {at}")]
    NoValidBanner {
        tenant: String,
        slot: String,
        at: String,
    },
    #[error("n must be at least 1")]
    ZeroBanners,
}

/// Chooses up to `n` distinct arms among those `eligible` by Thompson sampling and writes their
/// indices into `out`, best draw first. Used by the service and by the simulator alike.
pub fn thompson_select<R: Rng + ?Sized>(
    arms: &[BetaSampler],
    eligible: impl Fn(usize) -> bool,
    n: usize,
    rng: &mut R,
    out: &mut Vec<usize>,
) {
    out.clear();
    if n == 1 {
        // The best draw so far as x / (x + y) (initially −1, below every draw); a draw beats
        // it when x · (best x + best y) > best x · (x + y), both sums being positive.
        let (mut best_x, mut best_sum, mut best) = (-1.0, 1.0, usize::MAX);
        for (i, arm) in arms.iter().enumerate() {
            if eligible(i) {
                let (x, y) = arm.draw_parts(rng);
                let sum = x + y;
                if x * best_sum > best_x * sum {
                    (best_x, best_sum, best) = (x, sum, i);
                }
            }
        }
        if best != usize::MAX {
            out.push(best);
        }
        return;
    }
    let mut draws: Vec<(f64, usize)> = arms
        .iter()
        .enumerate()
        .filter(|(i, _)| eligible(*i))
        .map(|(i, arm)| (arm.sample(rng), i))
        .collect();
    let take = n.min(draws.len());
    if take == 0 {
        return;
    }
    let by_draw_desc = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0);
    if take < draws.len() {
        draws.select_nth_unstable_by(take - 1, by_draw_desc);
        draws.truncate(take);
    }
    draws.sort_unstable_by(by_draw_desc);
    out.extend(draws.iter().map(|&(_, i)| i));
}

/// A banner of a slot with its current posterior.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub banner: Banner,
    pub posterior: BetaPosterior,
}

/// A slot ready for decisions: its banners, their posteriors and the prepared samplers.
#[derive(Debug, Clone)]
pub struct SlotPolicy {
    tenant: String,
    slot: String,
    candidates: Vec<Candidate>,
    samplers: Vec<BetaSampler>,
}

impl SlotPolicy {
    pub fn new(
        config: &SlotConfig,
        mut posterior_of: impl FnMut(&Banner) -> BetaPosterior,
    ) -> Self {
        let candidates: Vec<Candidate> = config
            .banners
            .iter()
            .map(|b| Candidate {
                banner: b.clone(),
                posterior: posterior_of(b),
            })
            .collect();
        let samplers = candidates
            .iter()
            .map(|c| c.posterior.distribution())
            .collect();
        Self {
            tenant: config.tenant.clone(),
            slot: config.slot.clone(),
            candidates,
            samplers,
        }
    }

    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    pub fn samplers(&self) -> &[BetaSampler] {
        &self.samplers
    }

    /// Up to `n` distinct banners valid at `now`, best draw first, as indices into
    /// `candidates()`. Fails when `n` is 0 or no banner is valid.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        now: DateTime<Utc>,
        n: usize,
        rng: &mut R,
        out: &mut Vec<usize>,
    ) -> Result<(), DecisionError> {
        if n == 0 {
            return Err(DecisionError::ZeroBanners);
        }
        let valid = |i: usize| self.candidates[i].banner.is_valid_at(now);
        thompson_select(&self.samplers, valid, n, rng, out);
        if out.is_empty() {
            return Err(DecisionError::NoValidBanner {
                tenant: self.tenant.clone(),
                slot: self.slot.clone(),
                at: time::format_ist(now),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::seeded_rng;
    use statrs::distribution::{Beta as BetaDist, ContinuousCDF};

    /// Exact P(arm i has the highest draw) = ∫_0^1 Π_{j≠i} F_j(F_i⁻¹(u)) du. The integrand is
    /// non-decreasing in u and within [0, 1], so the midpoint rule with `steps` points is off by
    /// at most 1 / steps, and shapes below 1 (unbounded densities) need no special care.
    fn exact_prob_best(params: &[(f64, f64)], steps: usize) -> Vec<f64> {
        let dists: Vec<BetaDist> = params
            .iter()
            .map(|&(a, b)| BetaDist::new(a, b).unwrap())
            .collect();
        (0..dists.len())
            .map(|i| {
                (0..steps)
                    .map(|k| {
                        let x = dists[i].inverse_cdf((k as f64 + 0.5) / steps as f64);
                        dists
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .map(|(_, d)| d.cdf(x))
                            .product::<f64>()
                    })
                    .sum::<f64>()
                    / steps as f64
            })
            .collect()
    }

    #[test]
    fn selection_frequencies_match_exact_p_best() {
        let cases: [&[(f64, f64)]; 4] = [
            &[(0.5, 0.5), (0.7, 2.0)],
            &[(12.0, 90.0), (9.0, 95.0)],
            &[(12.0, 90.0), (9.0, 95.0), (15.0, 120.0)],
            &[(0.3, 4.0), (2.0, 20.0), (1.0, 9.0)],
        ];
        let (draws, steps) = (200_000, 4000);
        for (case, params) in cases.iter().enumerate() {
            let arms: Vec<BetaSampler> = params
                .iter()
                .map(|&(a, b)| BetaSampler::new(a, b))
                .collect();
            let mut rng = seeded_rng(300 + case as u64);
            let mut wins = vec![0u64; arms.len()];
            let mut out = Vec::new();
            for _ in 0..draws {
                thompson_select(&arms, |_| true, 1, &mut rng, &mut out);
                wins[out[0]] += 1;
            }
            let exact = exact_prob_best(params, steps);
            for (k, &p) in exact.iter().enumerate() {
                // Five binomial standard errors plus the quadrature bound.
                let tol = 5.0 * (p * (1.0 - p) / draws as f64).sqrt() + 1.0 / steps as f64;
                let freq = wins[k] as f64 / draws as f64;
                assert!(
                    (freq - p).abs() < tol,
                    "{params:?} arm {k}: frequency {freq} vs exact {p} (tol {tol})"
                );
            }
        }
    }

    #[test]
    fn carousel_draws_are_distinct_and_ranked() {
        let arms: Vec<BetaSampler> = (1..=6)
            .map(|k| BetaSampler::new(k as f64 * 10.0, 100.0))
            .collect();
        let mut rng = seeded_rng(7);
        let mut out = Vec::new();
        thompson_select(&arms, |_| true, 3, &mut rng, &mut out);
        assert_eq!(out.len(), 3);
        let mut sorted = out.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 3);
        thompson_select(&arms, |i| i < 2, 5, &mut rng, &mut out);
        assert_eq!(out.len(), 2, "no more than the eligible arms");
        thompson_select(&arms, |_| false, 1, &mut rng, &mut out);
        assert!(out.is_empty());
    }
}
