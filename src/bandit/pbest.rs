//! P(best): the probability that each arm has the highest CTR, by Monte Carlo.

use super::{thompson_select, BetaSampler};
use rand::Rng;

/// The share of `draws` joint draws in which each arm's sample is the highest.
pub fn prob_best<R: Rng + ?Sized>(arms: &[BetaSampler], draws: usize, rng: &mut R) -> Vec<f64> {
    let mut wins = vec![0u64; arms.len()];
    let mut out = Vec::with_capacity(1);
    for _ in 0..draws {
        thompson_select(arms, |_| true, 1, rng, &mut out);
        if let Some(&i) = out.first() {
            wins[i] += 1;
        }
    }
    let total = draws.max(1) as f64;
    wins.into_iter().map(|w| w as f64 / total).collect()
}
