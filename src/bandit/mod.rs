//! Bandit math: Beta posteriors, empirical-Bayes and hierarchical priors, Thompson decisions,
//! P(best) and the propensities decisions log.

mod beta;
mod cutoff;
mod pbest;
mod posterior;
mod prior;
mod propensity;
mod thompson;

pub use beta::BetaSampler;
pub use pbest::prob_best;
pub use posterior::{BetaPosterior, PosteriorError, PosteriorSummary};
pub use prior::{
    empirical_bayes, hierarchical_priors, BannerCounts, CityCounts, CityEffect, Prior, PriorSource,
    SlotPriors, DEFAULT_MAX_PRIOR_STRENGTH, DEFAULT_PRIOR_STRENGTH, LEVEL_PSEUDO_CLICKS,
};
pub use propensity::{prob_best_bounded, prob_best_of, RankPropensities, CAROUSEL_DRAWS};
pub use thompson::{
    thompson_select, ComputeBudget, DecisionError, KnownOnly, SlotPolicy, Unbounded,
};

/// The RNG of the decision path: a fast, seedable generator owned by one thread (no locks).
pub type DecisionRng = rand::rngs::SmallRng;

/// A decision RNG from a seed (the same seed gives the same draws).
pub fn seeded_rng(seed: u64) -> DecisionRng {
    <DecisionRng as rand::SeedableRng>::seed_from_u64(seed)
}
