//! Off-policy estimates of a target policy's click-through rate from logged decisions: inverse
//! propensity weighting (IPW), its self-normalised form (SNIPW) and doubly robust (DR), each with
//! an asymptotic normal interval, beside the logged policy's own CTR and the effective sample
//! size of the weights. The estimators are those of the Open Bandit Pipeline (Saito et al.,
//! 2021), which a test compares them with.
//!
//! - IPW: the mean of w·r, w = π_target(shown) / π_logged(shown); unbiased when every banner the
//!   target may show had a propensity above 0, with a variance that grows with the weights.
//! - SNIPW: Σ w·r / Σ w; a little biased, much steadier when weights are large; its interval
//!   by the delta method.
//! - DR: the mean of Σ_a π_target(a)·q̂(a) + w·(r − q̂(shown)), q̂ a reward model; unbiased like
//!   IPW when the propensities are right, with less variance the better q̂ is.

use serde::{Deserialize, Serialize};

use super::uplift::{z_of, Interval};

/// One logged decision as the estimators see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Term {
    /// π_target(shown | context) / π_logged(shown | context).
    pub weight: f64,
    /// 1 for a click, 0 without.
    pub reward: f64,
    /// The reward model at the banner shown.
    pub model_shown: f64,
    /// The reward model averaged over the target policy's choice: Σ_a π_target(a)·q̂(a).
    pub model_target: f64,
}

impl Term {
    fn doubly_robust(&self) -> f64 {
        self.model_target + self.weight * (self.reward - self.model_shown)
    }
}

/// Sums over terms, added one at a time in any order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OffPolicyTally {
    n: u64,
    reward: Moments,
    ipw: Moments,
    dr: Moments,
    weight: Moments,
    /// Σ w²·r, for the self-normalised estimate's variance.
    weight2_reward: f64,
    max_weight: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Moments {
    sum: f64,
    sum2: f64,
}

impl Moments {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.sum2 += x * x;
    }

    /// The mean with a normal interval (sample variance; 0 wide below two values).
    fn mean_interval(&self, n: u64, z: f64) -> Interval {
        let nf = n as f64;
        let mean = self.sum / nf;
        let variance = if n > 1 {
            ((self.sum2 - nf * mean * mean) / (nf - 1.0)).max(0.0)
        } else {
            0.0
        };
        let half = z * (variance / nf).sqrt();
        Interval {
            estimate: mean,
            low: mean - half,
            high: mean + half,
        }
    }
}

/// What the logs say of a target policy, over `decisions` logged decisions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OffPolicyEstimate {
    pub decisions: u64,
    /// The logged policy's CTR on the same decisions, for comparison.
    pub logged: Interval,
    pub ipw: Interval,
    pub snipw: Interval,
    pub dr: Interval,
    /// (Σw)² / Σw²: how many decisions' worth of information the weights leave. Far below
    /// `decisions`, the target is unlike the logged policy and the intervals are optimistic.
    pub effective_sample_size: f64,
    pub max_weight: f64,
}

impl OffPolicyTally {
    pub fn add(&mut self, t: &Term) {
        self.n += 1;
        self.reward.add(t.reward);
        self.ipw.add(t.weight * t.reward);
        self.dr.add(t.doubly_robust());
        self.weight.add(t.weight);
        self.weight2_reward += t.weight * t.weight * t.reward;
        self.max_weight = self.max_weight.max(t.weight);
    }

    pub fn merge(&mut self, other: &OffPolicyTally) {
        self.n += other.n;
        for (mine, theirs) in [
            (&mut self.reward, other.reward),
            (&mut self.ipw, other.ipw),
            (&mut self.dr, other.dr),
            (&mut self.weight, other.weight),
        ] {
            mine.sum += theirs.sum;
            mine.sum2 += theirs.sum2;
        }
        self.weight2_reward += other.weight2_reward;
        self.max_weight = self.max_weight.max(other.max_weight);
    }

    pub fn decisions(&self) -> u64 {
        self.n
    }

    /// The estimates at `confidence` (e.g. 0.95); `None` without decisions or when every weight
    /// is 0 (the target never shows what was logged).
    pub fn estimate(&self, confidence: f64) -> Option<OffPolicyEstimate> {
        if self.n == 0 || self.weight.sum <= 0.0 {
            return None;
        }
        let z = z_of(confidence);
        let n = self.n as f64;
        let snipw = self.ipw.sum / self.weight.sum;
        // Delta method: the terms w·(r − V)/w̄, whose squares sum to
        // (Σw²r² − 2V·Σw²r + V²·Σw²) / w̄²; r² = r for clicks, kept general.
        let mean_weight = self.weight.sum / n;
        let squares =
            self.ipw.sum2 - 2.0 * snipw * self.weight2_reward + snipw * snipw * self.weight.sum2;
        let half = z * (squares.max(0.0) / (mean_weight * mean_weight)).sqrt() / n;
        Some(OffPolicyEstimate {
            decisions: self.n,
            logged: self.reward.mean_interval(self.n, z),
            ipw: self.ipw.mean_interval(self.n, z),
            snipw: Interval {
                estimate: snipw,
                low: snipw - half,
                high: snipw + half,
            },
            dr: self.dr.mean_interval(self.n, z),
            effective_sample_size: self.weight.sum * self.weight.sum / self.weight.sum2,
            max_weight: self.max_weight,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(weight: f64, reward: f64, model_shown: f64, model_target: f64) -> Term {
        Term {
            weight,
            reward,
            model_shown,
            model_target,
        }
    }

    #[test]
    fn the_estimates_follow_their_definitions() {
        let terms = [
            term(2.0, 1.0, 0.5, 0.4),
            term(0.5, 0.0, 0.2, 0.3),
            term(1.0, 1.0, 0.1, 0.2),
            term(0.0, 1.0, 0.3, 0.25),
        ];
        let mut tally = OffPolicyTally::default();
        terms.iter().for_each(|t| tally.add(t));
        let e = tally.estimate(0.95).unwrap();
        assert_eq!(e.decisions, 4);
        assert_eq!(e.logged.estimate, 0.75);
        assert!((e.ipw.estimate - (2.0 + 1.0) / 4.0).abs() < 1e-12);
        assert!((e.snipw.estimate - 3.0 / 3.5).abs() < 1e-12);
        let dr = (0.4 + 2.0 * 0.5) + (0.3 - 0.5 * 0.2) + (0.2 + 0.9) + 0.25;
        assert!((e.dr.estimate - dr / 4.0).abs() < 1e-12);
        assert!((e.effective_sample_size - 3.5 * 3.5 / 5.25).abs() < 1e-12);
        assert_eq!(e.max_weight, 2.0);
        // The IPW interval: ±1.96 standard errors of the terms 2, 0, 1, 0.
        let sd = ((4.0 + 1.0 - 4.0 * 0.75f64.powi(2)) / 3.0).sqrt();
        assert!((e.ipw.high - e.ipw.estimate - 1.959964 * sd / 2.0).abs() < 1e-5);
        assert!(e.snipw.low < e.snipw.estimate && e.snipw.estimate < e.snipw.high);
    }

    #[test]
    fn merged_tallies_equal_one_tally_of_every_term() {
        let terms: Vec<Term> = (0..10)
            .map(|i| term(0.2 * i as f64, f64::from(i % 3 == 0), 0.1, 0.2))
            .collect();
        let mut whole = OffPolicyTally::default();
        let (mut a, mut b) = (OffPolicyTally::default(), OffPolicyTally::default());
        for (i, t) in terms.iter().enumerate() {
            whole.add(t);
            if i < 4 { &mut a } else { &mut b }.add(t);
        }
        a.merge(&b);
        let (x, y) = (a.estimate(0.9).unwrap(), whole.estimate(0.9).unwrap());
        assert_eq!(x.decisions, y.decisions);
        for (p, q) in [(x.ipw, y.ipw), (x.snipw, y.snipw), (x.dr, y.dr)] {
            assert!((p.estimate - q.estimate).abs() < 1e-12);
            assert!((p.low - q.low).abs() < 1e-12);
        }
    }

    #[test]
    fn no_estimate_without_decisions_or_weight() {
        assert!(OffPolicyTally::default().estimate(0.95).is_none());
        let mut tally = OffPolicyTally::default();
        tally.add(&term(0.0, 1.0, 0.5, 0.5));
        assert!(tally.estimate(0.95).is_none());
    }
}
