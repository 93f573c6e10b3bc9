//! Bernoulli environments: K banners per city, a traffic profile over cities, and an optional
//! change of the CTRs at a change point (an abrupt swap or a linear drift).

use rand::{Rng, RngExt};
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};

use crate::bandit::seeded_rng;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvError {
    #[error("an environment needs at least two banners (got {0})")]
    TooFewArms(usize),
    #[error("every CTR must lie strictly between 0 and 1 (got {0})")]
    BadCtr(f64),
    #[error("cities must be at least 1")]
    NoCity,
    #[error("city_sigma must be finite and non-negative (got {0})")]
    BadCitySigma(f64),
    #[error("traffic_skew must be finite and non-negative (got {0})")]
    BadSkew(f64),
    #[error("change.after must list as many CTRs as there are banners ({expected}, got {got})")]
    ChangeShape { expected: usize, got: usize },
    #[error("change.banner must be the index of a banner, below {arms} (got {got})")]
    NoSuchBanner { arms: usize, got: usize },
}

/// How the CTRs change at the change point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ChangeSpec {
    /// At decision `at`, the best and the worst banner of every city trade CTRs.
    Swap { at: u64 },
    /// From decision `at` the banner effects move linearly to `after`, reaching it `over`
    /// decisions later.
    Drift { at: u64, over: u64, after: Vec<f64> },
    /// Banner `banner` (an index into the CTRs) is new: no policy may show it before decision
    /// `at`, in any city.
    NewBanner { banner: usize, at: u64 },
}

/// What to build: banner effects, cities with lognormal city effects, and the traffic profile.
/// The CTR of banner b in city c is `banner_effect[b] × city_effect[c]` (capped below 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// The banner effects: the CTRs of a city whose effect is 1.
    pub ctrs: Vec<f64>,
    /// Number of cities.
    #[serde(default = "one")]
    pub cities: usize,
    /// Standard deviation of ln(city effect); 0 makes every city alike.
    #[serde(default)]
    pub city_sigma: f64,
    /// Zipf exponent of the traffic share of city rank r (share ∝ 1 / r^skew); 0 is uniform.
    #[serde(default)]
    pub traffic_skew: f64,
    /// A change of the CTRs, if any.
    #[serde(default)]
    pub change: Option<ChangeSpec>,
}

fn one() -> usize {
    1
}

/// The environment of a run (the same for every run of a seed).
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// CTRs before the change, per city then banner.
    pub ctrs: Vec<Vec<f64>>,
    /// CTRs after the change (equal to `ctrs` without a change).
    pub ctrs_after: Vec<Vec<f64>>,
    /// Traffic share per city (sums to 1).
    pub traffic: Vec<f64>,
    /// Decision at which the change starts and its length (0 = abrupt).
    pub change_at: u64,
    pub change_over: u64,
    pub has_change: bool,
    /// The first decision at which each banner may be shown (0 but for a new banner).
    pub live_from: Vec<u64>,
}

const CTR_CAP: f64 = 0.99;

impl Environment {
    /// Builds the environment; the city effects are drawn from `seed`.
    pub fn build(spec: &EnvSpec, seed: u64) -> Result<Self, EnvError> {
        if spec.ctrs.len() < 2 {
            return Err(EnvError::TooFewArms(spec.ctrs.len()));
        }
        if let Some(&bad) = spec.ctrs.iter().find(|p| !(**p > 0.0 && **p < 1.0)) {
            return Err(EnvError::BadCtr(bad));
        }
        if spec.cities == 0 {
            return Err(EnvError::NoCity);
        }
        if !(spec.city_sigma.is_finite() && spec.city_sigma >= 0.0) {
            return Err(EnvError::BadCitySigma(spec.city_sigma));
        }
        if !(spec.traffic_skew.is_finite() && spec.traffic_skew >= 0.0) {
            return Err(EnvError::BadSkew(spec.traffic_skew));
        }
        let mut rng = seeded_rng(seed ^ 0x5eed_c17e);
        let effects: Vec<f64> = if spec.city_sigma > 0.0 {
            let lognormal = LogNormal::new(0.0, spec.city_sigma)
                .map_err(|_| EnvError::BadCitySigma(spec.city_sigma))?;
            (0..spec.cities)
                .map(|_| lognormal.sample(&mut rng))
                .collect()
        } else {
            vec![1.0; spec.cities]
        };
        let scaled = |banner: &[f64]| -> Vec<Vec<f64>> {
            effects
                .iter()
                .map(|e| banner.iter().map(|p| (p * e).min(CTR_CAP)).collect())
                .collect()
        };
        let ctrs = scaled(&spec.ctrs);
        let mut live_from = vec![0; spec.ctrs.len()];
        let (ctrs_after, change_at, change_over) = match &spec.change {
            None => (ctrs.clone(), u64::MAX, 0),
            Some(ChangeSpec::NewBanner { banner, at }) => {
                let slot = live_from.get_mut(*banner).ok_or(EnvError::NoSuchBanner {
                    arms: spec.ctrs.len(),
                    got: *banner,
                })?;
                *slot = *at;
                (ctrs.clone(), *at, 0)
            }
            Some(ChangeSpec::Swap { at }) => {
                let swapped = ctrs.iter().map(|city| swap_best_and_worst(city)).collect();
                (swapped, *at, 0)
            }
            Some(ChangeSpec::Drift { at, over, after }) => {
                if after.len() != spec.ctrs.len() {
                    return Err(EnvError::ChangeShape {
                        expected: spec.ctrs.len(),
                        got: after.len(),
                    });
                }
                if let Some(&bad) = after.iter().find(|p| !(**p > 0.0 && **p < 1.0)) {
                    return Err(EnvError::BadCtr(bad));
                }
                (scaled(after), *at, *over)
            }
        };
        let weights: Vec<f64> = (1..=spec.cities)
            .map(|rank| (rank as f64).powf(-spec.traffic_skew))
            .collect();
        let total: f64 = weights.iter().sum();
        Ok(Self {
            ctrs,
            ctrs_after,
            traffic: weights.iter().map(|w| w / total).collect(),
            change_at,
            change_over,
            has_change: spec.change.is_some(),
            live_from,
        })
    }

    pub fn arms(&self) -> usize {
        self.ctrs[0].len()
    }

    pub fn cities(&self) -> usize {
        self.ctrs.len()
    }

    /// The CTRs in force at decision `t` (0-based), per city then banner.
    pub fn ctrs_at(&self, t: u64) -> Vec<Vec<f64>> {
        if t < self.change_at {
            return self.ctrs.clone();
        }
        let progress = if self.change_over == 0 {
            1.0
        } else {
            ((t - self.change_at) as f64 / self.change_over as f64).min(1.0)
        };
        if progress >= 1.0 {
            return self.ctrs_after.clone();
        }
        self.ctrs
            .iter()
            .zip(&self.ctrs_after)
            .map(|(before, after)| {
                before
                    .iter()
                    .zip(after)
                    .map(|(b, a)| b + (a - b) * progress)
                    .collect()
            })
            .collect()
    }

    /// Which banners may be shown at decision `t`.
    pub fn live_at(&self, t: u64) -> Vec<bool> {
        self.live_from.iter().map(|&from| from <= t).collect()
    }

    /// Whether the CTRs or the banners shown may differ between decisions `t` and `t + 1`.
    pub fn changes_at(&self, t: u64) -> bool {
        self.has_change && t >= self.change_at && t <= self.change_at + self.change_over
    }

    /// The Lai–Robbins constant of each city: Σ over suboptimal banners of Δ / KL(μ_i, μ*),
    /// for the CTRs before the change.
    pub fn lai_robbins_constants(&self) -> Vec<f64> {
        self.ctrs
            .iter()
            .map(|city| lai_robbins_constant(city))
            .collect()
    }

    /// The asymptotic lower bound on the expected regret after `t` decisions: Σ over cities of
    /// constant × ln(traffic share × t), counting only cities that have seen a decision.
    pub fn lai_robbins_bound(&self, t: f64) -> f64 {
        self.lai_robbins_constants()
            .iter()
            .zip(&self.traffic)
            .map(|(c, w)| c * (w * t).max(1.0).ln())
            .sum()
    }
}

/// `arms` banner effects drawn uniformly from [low, high) with `seed` (the environment's
/// "drawn CTRs"); `None` unless 2 ≤ arms and 0 < low < high < 1.
pub fn draw_banner_effects(arms: usize, low: f64, high: f64, seed: u64) -> Option<Vec<f64>> {
    if arms < 2 || !(low > 0.0 && low < high && high < 1.0) {
        return None;
    }
    let mut rng = seeded_rng(seed ^ 0xc7_5eed);
    Some((0..arms).map(|_| rng.random_range(low..high)).collect())
}

fn swap_best_and_worst(city: &[f64]) -> Vec<f64> {
    let mut out = city.to_vec();
    let best = argmax(city);
    let worst = (0..city.len())
        .min_by(|&a, &b| city[a].total_cmp(&city[b]))
        .unwrap_or(0);
    out.swap(best, worst);
    out
}

/// The first index of the highest value.
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// KL divergence between Bernoulli(p) and Bernoulli(q).
pub fn bernoulli_kl(p: f64, q: f64) -> f64 {
    let term = |a: f64, b: f64| if a == 0.0 { 0.0 } else { a * (a / b).ln() };
    term(p, q) + term(1.0 - p, 1.0 - q)
}

/// Σ over suboptimal arms of (μ* − μ_i) / KL(μ_i, μ*).
pub fn lai_robbins_constant(ctrs: &[f64]) -> f64 {
    let best = ctrs[argmax(ctrs)];
    ctrs.iter()
        .filter(|&&p| p < best)
        .map(|&p| (best - p) / bernoulli_kl(p, best))
        .sum()
}

/// Draws a city index by its traffic share from cumulative shares.
pub(crate) fn draw_city<R: Rng + ?Sized>(cumulative: &[f64], rng: &mut R) -> usize {
    if cumulative.len() == 1 {
        return 0;
    }
    let u: f64 = rng.random();
    cumulative
        .partition_point(|&c| c <= u)
        .min(cumulative.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ctrs: &[f64]) -> EnvSpec {
        EnvSpec {
            ctrs: ctrs.to_vec(),
            cities: 1,
            city_sigma: 0.0,
            traffic_skew: 0.0,
            change: None,
        }
    }

    #[test]
    fn chapelle_li_constant_matches_the_reference_ratio() {
        let mut ctrs = vec![0.08; 10];
        ctrs[0] = 0.1;
        // 432 / (ln 10^6 · constant) = 0.41 in the reference.
        let c = lai_robbins_constant(&ctrs);
        assert!((432.0 / (1e6f64.ln() * c) - 0.41).abs() < 0.01, "{c}");
    }

    #[test]
    fn swap_trades_best_and_worst_at_the_change() {
        let mut s = spec(&[0.1, 0.05, 0.02]);
        s.change = Some(ChangeSpec::Swap { at: 10 });
        let env = Environment::build(&s, 1).unwrap();
        assert_eq!(env.ctrs_at(9)[0], vec![0.1, 0.05, 0.02]);
        assert_eq!(env.ctrs_at(10)[0], vec![0.02, 0.05, 0.1]);
    }

    #[test]
    fn a_new_banner_goes_live_at_its_decision() {
        let mut s = spec(&[0.1, 0.05, 0.02]);
        s.change = Some(ChangeSpec::NewBanner { banner: 0, at: 10 });
        let env = Environment::build(&s, 1).unwrap();
        assert_eq!(env.live_at(9), vec![false, true, true]);
        assert_eq!(env.live_at(10), vec![true, true, true]);
        assert!(env.changes_at(10) && !env.changes_at(11));
        assert_eq!(env.ctrs_at(10), env.ctrs_at(0));
        s.change = Some(ChangeSpec::NewBanner { banner: 3, at: 10 });
        assert!(Environment::build(&s, 1).is_err());
    }

    #[test]
    fn drawn_ctrs_are_reproducible_and_in_range() {
        let a = draw_banner_effects(20, 0.01, 0.05, 3).unwrap();
        assert_eq!(a, draw_banner_effects(20, 0.01, 0.05, 3).unwrap());
        assert!(a.iter().all(|p| (0.01..0.05).contains(p)));
        assert!(draw_banner_effects(1, 0.01, 0.05, 3).is_none());
        assert!(draw_banner_effects(5, 0.05, 0.01, 3).is_none());
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!(Environment::build(&spec(&[0.1]), 1).is_err());
        assert!(Environment::build(&spec(&[0.1, 1.0]), 1).is_err());
        let mut s = spec(&[0.1, 0.2]);
        s.cities = 0;
        assert!(Environment::build(&s, 1).is_err());
    }

    #[test]
    fn skewed_traffic_sums_to_one_and_falls() {
        let mut s = spec(&[0.1, 0.2]);
        s.cities = 5;
        s.traffic_skew = 1.0;
        let env = Environment::build(&s, 1).unwrap();
        assert!((env.traffic.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(env.traffic.windows(2).all(|w| w[0] > w[1]));
    }
}
