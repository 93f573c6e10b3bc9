//! The Beta sampler of the decision path: Beta(α, β) = X / (X + Y) with X ~ Gamma(α) and
//! Y ~ Gamma(β), each drawn by Marsaglia & Tsang (2000) from a ziggurat normal and a uniform.
//! The constants depend only on the shape, so they are computed once per posterior change, not
//! once per draw; a draw is then two normals, two uniforms and a few multiplications, with a log
//! only in the rare case the squeeze test fails. Exact for every α, β > 0.
//!
//! The squeeze is tighter than Marsaglia & Tsang's shape-free `u < 1 − 0.0331 x⁴`, which fails
//! for about 10% of the draws whatever the shape. With t = c·x the exact test is
//! ln u < d·h(t), h(t) = 3 ln(1 + t) − 3t + 1.5t² − t³ = −¾t⁴ + ⅗t⁵ − …, and
//! h(t) ≥ −¾t⁴ / min(1, 1 + t) for every t > −1 (Taylor's remainder for t ≥ 0; the geometric
//! bound Σ_{k≥4} |t|^k / k ≤ t⁴ / (4(1 + t)) for t < 0). Since ln u ≤ u − 1, a draw with
//! (1 − u)·min(1, 1 + t) > ¾d·t⁴ = x⁴ / (108 d) is accepted without a log: the squeeze then fails
//! with probability about 1 / (36 d), e.g. 4% at shape 1 and 0.03% at shape 100.

use std::sync::OnceLock;

use rand::Rng;
use rand_distr::{Distribution, Open01, StandardNormal};

use super::cutoff::Cutoff;

/// Gamma(shape, 1), prepared. Marsaglia–Tsang needs shape ≥ 1; a smaller shape a is drawn as
/// Gamma(a + 1) · U^(1/a) (the standard boost), the caller keeping the shape. Two numbers: a
/// million-arm service holds one sampler per arm and window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GammaSampler {
    /// d = s − 1/3 and c = 1 / sqrt(9d) for s = the shape (or shape + 1 when boosted).
    d: f64,
    c: f64,
}

/// Whether a Gamma shape is drawn through the boost.
fn boosted(shape: f64) -> bool {
    shape < 1.0
}

impl GammaSampler {
    fn new(shape: f64) -> Self {
        let s = if boosted(shape) { shape + 1.0 } else { shape };
        let d = s - 1.0 / 3.0;
        Self {
            d,
            c: (1.0 / (9.0 * d)).sqrt(),
        }
    }

    /// The squeeze's x⁴ coefficient ¾·d·c⁴ = c² / 12 = 1 / (108 d).
    #[inline(always)]
    fn squeeze(&self) -> f64 {
        self.c * self.c * (1.0 / 12.0)
    }

    /// A Gamma(s) draw, s ≥ 1 (Marsaglia & Tsang 2000, the squeeze of the module doc first).
    #[inline(always)]
    fn draw_unboosted<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        loop {
            let x: f64 = StandardNormal.sample(rng);
            let cube_root = 1.0 + self.c * x;
            if cube_root <= 0.0 {
                continue;
            }
            let v = cube_root * cube_root * cube_root;
            let u: f64 = Open01.sample(rng);
            let x2 = x * x;
            if (1.0 - u) * cube_root.min(1.0) > self.squeeze() * x2 * x2
                || u.ln() < 0.5 * x2 + self.d * (1.0 - v + v.ln())
            {
                return self.d * v;
            }
        }
    }

    /// A Gamma(`shape`) draw as (g, u), the draw being g · u^(1/shape): g ~ Gamma(s) and u the
    /// boost's uniform (1 when the shape is not boosted).
    fn draw_boosted<R: Rng + ?Sized>(&self, shape: f64, rng: &mut R) -> (f64, f64) {
        let g = self.draw_unboosted(rng);
        let u = if boosted(shape) {
            Open01.sample(rng)
        } else {
            1.0
        };
        (g, u)
    }
}

/// g · u^(1/shape), or g when the shape is not boosted.
fn boost(shape: f64, g: f64, u: f64) -> f64 {
    if boosted(shape) {
        g * u.powf(1.0 / shape)
    } else {
        g
    }
}

/// ln(g · u^(1/shape)), for draws whose product underflows.
fn ln_boosted(shape: f64, g: f64, u: f64) -> f64 {
    if boosted(shape) {
        g.ln() + u.ln() * (1.0 / shape)
    } else {
        g.ln()
    }
}

/// Beta(α, β) prepared for fast exact draws. Built from a posterior whenever it changes.
#[derive(Debug, Clone)]
pub struct BetaSampler {
    x: GammaSampler,
    y: GammaSampler,
    alpha: f64,
    beta: f64,
    mean: f64,
    /// The pruning cut-off (module `cutoff`), computed when a decision first needs it: most
    /// posteriors of sequential Thompson sampling change before that.
    cutoff: OnceLock<Cutoff>,
}

// The service holds a sampler per arm and window: a million arms' worth stays small.
const _: () = assert!(std::mem::size_of::<BetaSampler>() <= 80);

/// Samplers are equal when their distributions are (whether a cut-off is cached or not).
impl PartialEq for BetaSampler {
    fn eq(&self, other: &Self) -> bool {
        self.alpha == other.alpha && self.beta == other.beta
    }
}

impl BetaSampler {
    /// Beta(alpha, beta); the caller guarantees finite alpha, beta > 0 (`BetaPosterior`'s
    /// invariant).
    pub fn new(alpha: f64, beta: f64) -> Self {
        debug_assert!(alpha > 0.0 && beta > 0.0 && alpha.is_finite() && beta.is_finite());
        Self {
            x: GammaSampler::new(alpha),
            y: GammaSampler::new(beta),
            alpha,
            beta,
            mean: alpha / (alpha + beta),
            cutoff: OnceLock::new(),
        }
    }

    /// The sampler of the posterior after one more outcome: α + 1 after a click, β + 1 after
    /// none. The same sampler as `new` of the updated shapes, rebuilding only the changed gamma.
    #[inline]
    pub fn observe(&mut self, click: bool) {
        if click {
            self.alpha += 1.0;
            self.x = GammaSampler::new(self.alpha);
        } else {
            self.beta += 1.0;
            self.y = GammaSampler::new(self.beta);
        }
        self.mean = self.alpha / (self.alpha + self.beta);
        self.cutoff = OnceLock::new();
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// α / (α + β).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The cut-off if a decision has computed it already.
    #[inline(always)]
    pub(super) fn cached_cutoff(&self) -> Option<&Cutoff> {
        self.cutoff.get()
    }

    /// The cut-off, computed now unless cached; concurrent callers agree on one.
    #[cold]
    pub(super) fn cutoff(&self) -> &Cutoff {
        self.cutoff
            .get_or_init(|| Cutoff::new(self.alpha, self.beta))
    }

    /// A draw as the pair (x, y) with x, y ≥ 0 and x + y > 0, the Beta draw being x / (x + y):
    /// comparing draws by cross-multiplying saves the division.
    #[inline(always)]
    pub fn draw_parts<R: Rng + ?Sized>(&self, rng: &mut R) -> (f64, f64) {
        if !boosted(self.alpha) && !boosted(self.beta) {
            let x = self.x.draw_unboosted(rng);
            let y = self.y.draw_unboosted(rng);
            return (x, y);
        }
        self.draw_parts_boosted(rng)
    }

    /// X = g_x · u_x^(1/α) and Y likewise. When both are normal f64 numbers the pair is exact
    /// as it stands; otherwise (tiny shapes, where U^(1/a) underflows) the same draws are
    /// combined in log space: X/(X+Y) = e^(ln X − m) / (e^(ln X − m) + e^(ln Y − m)) with
    /// m = max(ln X, ln Y), so the larger part is 1 and nothing underflows that matters.
    #[cold]
    fn draw_parts_boosted<R: Rng + ?Sized>(&self, rng: &mut R) -> (f64, f64) {
        let (gx, ux) = self.x.draw_boosted(self.alpha, rng);
        let (gy, uy) = self.y.draw_boosted(self.beta, rng);
        let x = boost(self.alpha, gx, ux);
        let y = boost(self.beta, gy, uy);
        if x >= f64::MIN_POSITIVE && y >= f64::MIN_POSITIVE {
            return (x, y);
        }
        let ln_x = ln_boosted(self.alpha, gx, ux);
        let ln_y = ln_boosted(self.beta, gy, uy);
        let m = ln_x.max(ln_y);
        ((ln_x - m).exp(), (ln_y - m).exp())
    }
}

impl Distribution<f64> for BetaSampler {
    #[inline]
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        let (x, y) = self.draw_parts(rng);
        x / (x + y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::seeded_rng;
    use statrs::distribution::{Beta as BetaDist, ContinuousCDF};

    /// Shapes below 1 (boosted, down to draws that underflow f64), at 1, just below and above
    /// 1, moderate, skewed and large (10^5), as posteriors reach them.
    const SHAPES: [(f64, f64); 14] = [
        (0.001, 0.001),
        (0.05, 0.3),
        (0.5, 0.5),
        (0.3, 4.0),
        (0.999, 1.0),
        (1.0, 1.0),
        (1.0, 1.001),
        (2.0, 5.0),
        (0.7, 200.0),
        (11.0, 91.0),
        (101.0, 9_901.0),
        (1e5, 1e5),
        (1e3, 1e5),
        (1e5, 3.0),
    ];

    fn draws(alpha: f64, beta: f64, n: usize, seed: u64) -> Vec<f64> {
        let sampler = BetaSampler::new(alpha, beta);
        let mut rng = seeded_rng(seed);
        (0..n).map(|_| sampler.sample(&mut rng)).collect()
    }

    /// Mean, variance and fourth central moment of Beta(a, b).
    fn beta_moments(a: f64, b: f64) -> (f64, f64, f64) {
        let s = a + b;
        let mean = a / s;
        let var = a * b / (s * s * (s + 1.0));
        let excess_kurtosis = 6.0 * ((a - b).powi(2) * (s + 1.0) - a * b * (s + 2.0))
            / (a * b * (s + 2.0) * (s + 3.0));
        (mean, var, (excess_kurtosis + 3.0) * var * var)
    }

    #[test]
    fn mean_and_variance_agree_with_beta() {
        // Five standard errors of the sample mean (σ/√n) and of the sample variance
        // (√((μ4 − σ⁴)/n)): a correct sampler fails one of the 28 checks with probability
        // below 2·10^-5.
        let n = 200_000;
        for (k, &(a, b)) in SHAPES.iter().enumerate() {
            let x = draws(a, b, n, 100 + k as u64);
            assert!(x.iter().all(|v| (0.0..=1.0).contains(v)), "Beta({a}, {b})");
            let (mean, var, mu4) = beta_moments(a, b);
            let m = x.iter().sum::<f64>() / n as f64;
            let v = x.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            let se_mean = (var / n as f64).sqrt();
            let se_var = ((mu4 - var * var) / n as f64).sqrt();
            assert!(
                (m - mean).abs() < 5.0 * se_mean,
                "Beta({a}, {b}): mean {m} vs {mean} (se {se_mean})"
            );
            assert!(
                (v - var).abs() < 5.0 * se_var,
                "Beta({a}, {b}): variance {v} vs {var} (se {se_var})"
            );
        }
    }

    #[test]
    fn kolmogorov_smirnov_against_the_beta_cdf() {
        // Critical value of D_n at level 0.001: √(ln(2/0.001)/2) / √n (asymptotic Kolmogorov).
        let n = 20_000;
        // Beta(0.001, 0.001) is left out: about half its mass lies within 10^-16 of 1, where
        // every f64 draw rounds to 1, so no CDF of representable values matches it there.
        let critical = ((2.0f64 / 0.001).ln() / 2.0).sqrt() / (n as f64).sqrt();
        for (k, &(a, b)) in SHAPES.iter().enumerate().skip(1) {
            let cdf = BetaDist::new(a, b).unwrap();
            let mut x = draws(a, b, n, 200 + k as u64);
            x.sort_unstable_by(f64::total_cmp);
            let d = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let f = cdf.cdf(v);
                    (f - i as f64 / n as f64).max((i + 1) as f64 / n as f64 - f)
                })
                .fold(0.0, f64::max);
            assert!(d < critical, "Beta({a}, {b}): D = {d} ≥ {critical}");
        }
    }

    #[test]
    fn the_squeeze_lies_below_the_exact_acceptance_bound() {
        // h(t) ≥ −¾t⁴ / min(1, 1 + t) on t ∈ (−1, 20], the bound the squeeze relies on. Near
        // t = 0 both sides are ≈ −¾t⁴ and f64 cancellation in h exceeds t⁴, so |t| ≥ 0.01 here.
        let h = |t: f64| 3.0 * t.ln_1p() - 3.0 * t + 1.5 * t * t - t * t * t;
        let bound = |t: f64| -0.75 * t.powi(4) / (1.0 + t).min(1.0);
        for k in 1..200_000 {
            let t = -1.0 + k as f64 * 1.05e-4;
            if t.abs() >= 0.01 {
                assert!(h(t) >= bound(t), "t = {t}: h {} < bound {}", h(t), bound(t));
            }
        }
        // Marsaglia–Tsang's own squeeze 1 − u > 0.0331 x⁴, for comparison: ours accepts more
        // at every shape ≥ 1 and x ≥ 0 (where min(1, 1 + t) = 1).
        for &(a, _) in &SHAPES {
            let g = GammaSampler::new(a.max(1.0));
            assert!(g.squeeze() < 0.0331, "shape {a}: {}", g.squeeze());
        }
    }

    #[test]
    fn an_observed_outcome_gives_the_sampler_of_the_updated_posterior() {
        for &(a, b) in &SHAPES {
            for click in [true, false] {
                let mut observed = BetaSampler::new(a, b);
                observed.cutoff();
                observed.observe(click);
                let rebuilt = if click {
                    BetaSampler::new(a + 1.0, b)
                } else {
                    BetaSampler::new(a, b + 1.0)
                };
                assert_eq!(
                    (observed.x, observed.y, observed.mean),
                    (rebuilt.x, rebuilt.y, rebuilt.mean),
                    "Beta({a}, {b}), click {click}"
                );
                assert_eq!(
                    (observed.alpha, observed.beta),
                    (rebuilt.alpha, rebuilt.beta)
                );
                assert!(
                    observed.cached_cutoff().is_none(),
                    "a stale cut-off is kept"
                );
            }
        }
    }

    #[test]
    fn draw_parts_divide_to_the_sampled_value() {
        for &(a, b) in &SHAPES {
            let sampler = BetaSampler::new(a, b);
            let (mut r1, mut r2) = (seeded_rng(5), seeded_rng(5));
            for _ in 0..1000 {
                let (x, y) = sampler.draw_parts(&mut r1);
                assert!(
                    x >= 0.0 && y >= 0.0 && x + y > 0.0,
                    "Beta({a}, {b}): {x} {y}"
                );
                assert_eq!(x / (x + y), sampler.sample(&mut r2));
            }
        }
    }
}
