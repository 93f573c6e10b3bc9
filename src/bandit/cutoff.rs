//! Cut-offs for pruned exact Thompson sampling (`thompson_select` with n = 1).
//!
//! Sequential Thompson sampling spends almost all its time on arms that cannot win: their
//! posteriors lie far below the leader's (the arm of the highest mean, drawn first). Each other
//! arm's sampler caches a cut-off q, computed the first time a decision needs it, with its exact
//! upper tail s = P(X > q) = I_{1−q}(β, α) (statrs' `beta_reg`, on the upper tail directly so
//! nothing cancels), stored as P(X ≤ q) = 1 − s. When the best draw so far, M, is at least q, a
//! Bernoulli(s) decides the arm: with probability 1 − s the draw X lies at or below q ≤ M and the
//! arm cannot win, so X is never drawn; otherwise X is drawn from the tail law X | X > q
//! (`draw_above`) and compared as usual. When M < q the arm takes a full draw.
//!
//! The pruned arms share one uniform U for these Bernoullis instead of one each: the first
//! pruned arm is in its tail when U ≥ p₁ = 1 − s₁; given that it is not, U is uniform on
//! [0, p₁), so the second is in its tail when U ≥ p₁p₂, with probability s₂ whatever happened
//! to the first, and so on down the running product; once an arm falls in its tail, U is spent
//! and the arms after it start over with a fresh uniform. So the Bernoullis are independent,
//! each with its own s, exactly as with one uniform each, and whether an arm is pruned at all
//! depends only on M, not on U. In floating point: U lies on the 2^-53 grid of
//! `random::<f64>()` and the product is rounded, so P(the first k stay below) = P(U < p₁⋯p_k)
//! is off by at most 2^-53 plus k rounding errors of the product — however many arms share U (a
//! long run makes the product small, but it is reached only with that small probability), so
//! the error stays of the order of 10^-16 per arm, far below `beta_reg`'s.
//!
//! Why this is exactly Thompson sampling: the mixture "below q with probability 1 − s, else from
//! the tail law" is the Beta law of X itself, so every arm's draw has its Beta marginal, and the
//! draws stay independent because q, and the choice between pruning and a full draw, depend only
//! on the posteriors and on the other arms' draws, never on X's own randomness. The winner is the
//! arm of the highest draw, as in plain Thompson sampling, since a pruned arm's draw is ≤ q ≤ M
//! (ties have probability 0). So the decision's law is exactly Thompson sampling's, up to the
//! accuracy of s: `beta_reg`'s relative error, measured against mpmath (quadrature at 30
//! digits) at cut-offs 2.5–6 sd above the mean, is 2·10^-14 for shapes near 1, 3·10^-11 at
//! shapes 10^4 and 1.3·10^-9 at 10^6 (the log-gamma cancellation); it shifts each pruning
//! probability by at most s (≤ 0.03) times that, i.e. below 10^-10 absolutely.
//!
//! The tail law is drawn by rejection from the exponential envelope tangent to the log-density
//! at q (Devroye's method for log-concave tails): exact whenever α, β ≥ 1 and q lies beyond the
//! mode, which the cut-off requires (otherwise the arm always takes a full draw).

use rand::Rng;
use rand_distr::{Distribution, Exp1};
use statrs::function::beta::beta_reg;

/// The cut-off lies this many posterior standard deviations above the mean: far enough that the
/// tail beyond it (drawn in full) is light (0.6% for near-normal posteriors, at most 3% for the
/// exponential-like Beta(1, β), the heaviest among α, β ≥ 1) and its envelope tight, near
/// enough that the best draw clears it once the arm is a few of its own standard deviations
/// behind the leader.
pub(super) const Z: f64 = 2.5;

/// The cut-off q of one posterior and P(X ≤ q) = 1 − the exact upper tail P(X > q).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Cutoff {
    /// +∞ when the arm is not prunable, so that no draw clears it.
    pub(super) q: f64,
    pub(super) below: f64,
}

impl Cutoff {
    const NONE: Self = Self {
        q: f64::INFINITY,
        below: 0.0,
    };

    /// The cut-off of Beta(alpha, beta) at `cutoff_point`, if the tail beyond it can be drawn
    /// exactly. A function of the posterior alone, so a decision's draws do
    /// not depend on which samplers have computed theirs.
    pub(super) fn new(alpha: f64, beta: f64) -> Self {
        if alpha < 1.0 || beta < 1.0 {
            return Self::NONE;
        }
        let q = cutoff_point(alpha, beta);
        if q >= 1.0 || log_density_slope(alpha, beta, q) >= 0.0 {
            return Self::NONE;
        }
        Self {
            q,
            below: 1.0 - beta_reg(beta, alpha, 1.0 - q),
        }
    }
}

/// mean + Z·sd of Beta(alpha, beta): where the cut-off lies if the arm is prunable.
#[inline]
pub(super) fn cutoff_point(alpha: f64, beta: f64) -> f64 {
    let (mean, sd) = mean_sd(alpha, beta);
    mean + Z * sd
}

/// Mean and standard deviation of Beta(alpha, beta).
#[inline]
fn mean_sd(alpha: f64, beta: f64) -> (f64, f64) {
    let s = alpha + beta;
    let mean = alpha / s;
    (mean, (mean * (1.0 - mean) / (s + 1.0)).sqrt())
}

/// d/dx ln of the Beta(alpha, beta) density at x.
fn log_density_slope(alpha: f64, beta: f64, x: f64) -> f64 {
    (alpha - 1.0) / x - (beta - 1.0) / (1.0 - x)
}

/// A draw of X ~ Beta(alpha, beta) given X > q, for alpha, beta ≥ 1 and q beyond the mode (the
/// conditions `Cutoff::new` checks). The log-density is concave, so it lies below its tangent
/// at q: ln f(x) ≤ ln f(q) − λ(x − q) with λ = −(d/dx ln f)(q) > 0. Proposals x = q + E/λ
/// (E ~ Exp(1)) are accepted with probability f(x) / (f(q) e^(−λ(x − q))) ≤ 1.
pub(super) fn draw_above<R: Rng + ?Sized>(alpha: f64, beta: f64, q: f64, rng: &mut R) -> f64 {
    let lambda = -log_density_slope(alpha, beta, q);
    debug_assert!(alpha >= 1.0 && beta >= 1.0 && lambda > 0.0 && q < 1.0);
    loop {
        let e: f64 = Exp1.sample(rng);
        let h = e / lambda;
        let x = q + h;
        if x >= 1.0 {
            continue;
        }
        // ln f(x) − ln f(q) + λh ≤ 0, with ln_1p keeping the small steps accurate.
        let log_ratio =
            (alpha - 1.0) * (h / q).ln_1p() + (beta - 1.0) * (-h / (1.0 - q)).ln_1p() + lambda * h;
        let e_accept: f64 = Exp1.sample(rng);
        if -e_accept < log_ratio {
            return x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::seeded_rng;

    /// Upper tail P(X > x) of Beta(a, b).
    fn upper(a: f64, b: f64, x: f64) -> f64 {
        beta_reg(b, a, 1.0 - x)
    }

    #[test]
    fn tail_draws_follow_the_truncated_beta() {
        // Kolmogorov–Smirnov against (S(q) − S(x)) / S(q), S the upper tail by statrs, at the
        // level 0.001; shapes near 1, skewed, moderate and large, cut-offs at 2.5 to 5 sd.
        let n = 20_000;
        let critical = ((2.0f64 / 0.001).ln() / 2.0).sqrt() / (n as f64).sqrt();
        let cases = [
            (1.0, 50.0, 2.5),
            (1.0, 3.0, 2.5),
            (3.0, 8.0, 2.5),
            (12.0, 90.0, 3.0),
            (101.0, 9_901.0, 4.0),
            (2_000.0, 20_000.0, 5.0),
            (1e5, 9e5, 3.0),
            (5.0, 1e6, 3.0),
        ];
        for (k, &(a, b, z)) in cases.iter().enumerate() {
            let (mean, sd) = mean_sd(a, b);
            let q = mean + z * sd;
            assert!(log_density_slope(a, b, q) < 0.0, "Beta({a}, {b}) at {q}");
            let s_q = upper(a, b, q);
            let mut rng = seeded_rng(700 + k as u64);
            let mut x: Vec<f64> = (0..n).map(|_| draw_above(a, b, q, &mut rng)).collect();
            assert!(x.iter().all(|&v| v > q && v < 1.0), "Beta({a}, {b})");
            x.sort_unstable_by(f64::total_cmp);
            let d = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let f = (s_q - upper(a, b, v)) / s_q;
                    (f - i as f64 / n as f64).max((i + 1) as f64 / n as f64 - f)
                })
                .fold(0.0, f64::max);
            assert!(
                d < critical,
                "Beta({a}, {b}) above {q}: D = {d} ≥ {critical}"
            );
        }
    }

    #[test]
    fn cutoffs_hold_their_tail_and_refuse_what_cannot_be_pruned() {
        let shapes = [
            (801.0, 9_201.0),
            (12.0, 90.0),
            (1.0, 50.0),
            (1.0, 1e5),
            (3.0, 8.0),
        ];
        for (a, b) in shapes {
            let c = Cutoff::new(a, b);
            let (mean, sd) = mean_sd(a, b);
            assert_eq!(c.q, mean + Z * sd);
            let tail = upper(a, b, c.q);
            assert_eq!(c.below, 1.0 - tail);
            assert!(tail > 1e-3 && tail < 0.031, "Beta({a}, {b}): {tail}");
        }
        // Shapes below 1 (not log-concave), the uniform (no slope), cut-offs past 1.
        for (a, b) in [(0.5, 30.0), (20.0, 0.7), (1.0, 1.0), (9e5, 2.0), (1.0, 1.2)] {
            assert_eq!(Cutoff::new(a, b), Cutoff::NONE, "Beta({a}, {b})");
        }
    }
}
