//! The Beta posterior of one arm, and the summary of it that reports show.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta as BetaCdf, ContinuousCDF};
use utoipa::ToSchema;

use super::BetaSampler;
use crate::model::Counts;

#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum PosteriorError {
    #[error("prior alpha0 and beta0 must be finite and positive (got {0}, {1})")]
    BadPrior(f64, f64),
}

/// Beta(α, β) with α = α0 + clicks and β = β0 + (impressions − clicks).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BetaPosterior {
    pub alpha: f64,
    pub beta: f64,
}

impl BetaPosterior {
    pub fn new(alpha: f64, beta: f64) -> Result<Self, PosteriorError> {
        if alpha.is_finite() && beta.is_finite() && alpha > 0.0 && beta > 0.0 {
            Ok(Self { alpha, beta })
        } else {
            Err(PosteriorError::BadPrior(alpha, beta))
        }
    }

    /// The uniform prior Beta(1, 1).
    pub fn uniform() -> Self {
        Self {
            alpha: 1.0,
            beta: 1.0,
        }
    }

    /// Prior plus counts. Clicks beyond impressions (a click whose impression was never logged)
    /// count as successes without a failure, so β never drops below β0.
    pub fn from_counts(
        alpha0: f64,
        beta0: f64,
        impressions: u64,
        clicks: u64,
    ) -> Result<Self, PosteriorError> {
        let prior = Self::new(alpha0, beta0)?;
        Ok(prior.updated(impressions, clicks))
    }

    pub fn updated(&self, impressions: u64, clicks: u64) -> Self {
        Self {
            alpha: self.alpha + clicks as f64,
            beta: self.beta + impressions.saturating_sub(clicks) as f64,
        }
    }

    pub fn mean(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }

    pub fn variance(&self) -> f64 {
        let s = self.alpha + self.beta;
        self.alpha * self.beta / (s * s * (s + 1.0))
    }

    /// The central 95% credible interval (2.5% and 97.5% quantiles).
    pub fn interval95(&self) -> (f64, f64) {
        match BetaCdf::new(self.alpha, self.beta) {
            Ok(d) => (d.inverse_cdf(0.025), d.inverse_cdf(0.975)),
            Err(_) => (f64::NAN, f64::NAN),
        }
    }

    /// The prepared sampler of the decision path (α, β > 0 is an invariant).
    pub fn distribution(&self) -> BetaSampler {
        BetaSampler::new(self.alpha, self.beta)
    }
}

// The store's posterior rows and the service's posteriors both carry this summary, flattened
// into their own fields, so that the CLI and the API report an arm alike.
/// An arm's counts and its Beta posterior: α, β, the mean and the central 95% credible interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PosteriorSummary {
    pub impressions: u64,
    pub clicks: u64,
    pub alpha: f64,
    pub beta: f64,
    pub mean: f64,
    /// The 2.5% quantile.
    pub lower95: f64,
    /// The 97.5% quantile.
    pub upper95: f64,
}

impl PosteriorSummary {
    pub fn new(counts: Counts, posterior: BetaPosterior) -> Self {
        let (lower95, upper95) = posterior.interval95();
        Self {
            impressions: counts.impressions,
            clicks: counts.clicks,
            alpha: posterior.alpha,
            beta: posterior.beta,
            mean: posterior.mean(),
            lower95,
            upper95,
        }
    }

    /// The posterior the summary was made from.
    pub fn posterior(&self) -> BetaPosterior {
        BetaPosterior {
            alpha: self.alpha,
            beta: self.beta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_move_the_posterior() {
        let p = BetaPosterior::from_counts(1.0, 1.0, 100, 10).unwrap();
        assert_eq!((p.alpha, p.beta), (11.0, 91.0));
        assert!((p.mean() - 11.0 / 102.0).abs() < 1e-12);
        let (lo, hi) = p.interval95();
        assert!(lo < p.mean() && p.mean() < hi);
        // Known quantiles of Beta(11, 91) (scipy.stats.beta.ppf).
        assert!((lo - 0.055637).abs() < 1e-4, "{lo}");
        assert!((hi - 0.174553).abs() < 1e-4, "{hi}");
    }

    #[test]
    fn bad_priors_are_rejected() {
        assert!(BetaPosterior::new(0.0, 1.0).is_err());
        assert!(BetaPosterior::new(1.0, f64::NAN).is_err());
        assert!(BetaPosterior::new(-1.0, 1.0).is_err());
    }

    #[test]
    fn a_summary_is_the_counts_and_the_posterior_they_make() {
        let counts = Counts::new(100, 10);
        let posterior = BetaPosterior::uniform().updated(100, 10);
        let s = PosteriorSummary::new(counts, posterior);
        assert_eq!((s.impressions, s.clicks), (100, 10));
        assert_eq!((s.alpha, s.beta, s.mean), (11.0, 91.0, posterior.mean()));
        assert_eq!((s.lower95, s.upper95), posterior.interval95());
        assert_eq!(s.posterior(), posterior);
    }

    #[test]
    fn excess_clicks_do_not_underflow() {
        let p = BetaPosterior::uniform().updated(2, 5);
        assert_eq!((p.alpha, p.beta), (6.0, 1.0));
    }
}
