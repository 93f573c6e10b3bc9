//! Thompson decisions: one Beta draw per eligible banner, the highest draws win.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand_distr::{Beta, Distribution};

use super::BetaPosterior;
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
    arms: &[Beta<f64>],
    eligible: impl Fn(usize) -> bool,
    n: usize,
    rng: &mut R,
    out: &mut Vec<usize>,
) {
    out.clear();
    if n == 1 {
        let mut best = (f64::NEG_INFINITY, usize::MAX);
        for (i, arm) in arms.iter().enumerate() {
            if eligible(i) {
                let draw = arm.sample(rng);
                if draw > best.0 {
                    best = (draw, i);
                }
            }
        }
        if best.1 != usize::MAX {
            out.push(best.1);
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
    samplers: Vec<Beta<f64>>,
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

    pub fn samplers(&self) -> &[Beta<f64>] {
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

    #[test]
    fn carousel_draws_are_distinct_and_ranked() {
        let arms: Vec<Beta<f64>> = (1..=6)
            .map(|k| Beta::new(k as f64 * 10.0, 100.0).unwrap())
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
