//! Priors (docs/architecture.md, "Bandit math"): empirical Bayes per (tenant, slot, banner) from
//! pooled all-city counts, and on top of it the hierarchical priors the jobs keep, with an effect
//! per banner and per city.
//!
//! [`empirical_bayes`]: a slot-level Beta(a, b) is fitted to the banners' pooled CTRs by the
//! method of moments, with the binomial sampling noise taken out of the between-banner variance
//! and its strength a + b capped at `prior_strength`. Each banner's prior is then the banner's
//! pooled posterior mean under that slot prior, with strength min(prior_strength, a + b +
//! impressions). A banner without history falls back to the slot prior (the slot mean).
//!
//! [`hierarchical_priors`]: those banner priors are the banner effects; each city gets an effect
//! (a level multiplying every banner's mean) and the slot a strength fitted to the spread between
//! cities. [`SlotPriors::for_arm`] composes an arm's prior from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::function::gamma::ln_gamma;

use super::BetaPosterior;
use crate::model::{Banner, Counts};

/// Pseudo-impressions a prior may carry at most, unless configured otherwise.
pub const DEFAULT_PRIOR_STRENGTH: f64 = 100.0;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BannerCounts {
    pub banner: String,
    pub impressions: u64,
    pub clicks: u64,
}

/// Where a prior comes from. Stored priors are the slot's (`slot_mean` or `uniform`) and the
/// banners' (`empirical_bayes`, or `slot_mean` for a banner without history); an arm's prior
/// ([`SlotPriors::for_arm`]) says which of them it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorSource {
    /// Fitted to this banner's pooled history. For an arm: the banner's effect at the slot's
    /// level, as a city without counts of its own in the slot gets it.
    EmpiricalBayes,
    /// The banner has no history: the slot-level prior (for an arm: at its city's level).
    SlotMean,
    /// The slot has no history: Beta(1, 1).
    Uniform,
    /// An arm's prior only: the banner's effect times its city's own effect.
    Hierarchical,
}

impl PriorSource {
    /// The stored name (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            PriorSource::EmpiricalBayes => "empirical_bayes",
            PriorSource::SlotMean => "slot_mean",
            PriorSource::Uniform => "uniform",
            PriorSource::Hierarchical => "hierarchical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            PriorSource::EmpiricalBayes,
            PriorSource::SlotMean,
            PriorSource::Uniform,
            PriorSource::Hierarchical,
        ]
        .into_iter()
        .find(|source| source.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    pub alpha0: f64,
    pub beta0: f64,
    pub source: PriorSource,
}

impl Prior {
    pub const UNIFORM: Prior = Prior {
        alpha0: 1.0,
        beta0: 1.0,
        source: PriorSource::Uniform,
    };

    pub fn posterior(&self, impressions: u64, clicks: u64) -> BetaPosterior {
        BetaPosterior {
            alpha: self.alpha0,
            beta: self.beta0,
        }
        .updated(impressions, clicks)
    }

    pub fn mean(&self) -> f64 {
        self.alpha0 / (self.alpha0 + self.beta0)
    }

    /// Pseudo-impressions: α0 + β0.
    pub fn strength(&self) -> f64 {
        self.alpha0 + self.beta0
    }

    /// The same mean at another strength.
    fn with_strength(self, strength: f64) -> Prior {
        Prior::of_mean(self.mean(), strength, self.source)
    }

    fn of_mean(mean: f64, strength: f64, source: PriorSource) -> Prior {
        let m = clamp_mean(mean);
        Prior {
            alpha0: m * strength,
            beta0: (1.0 - m) * strength,
            source,
        }
    }
}

/// A slot's priors: the slot-level prior, the banner effects and the city effects (empty for
/// priors fitted without cities, such as a plain [`empirical_bayes`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotPriors {
    pub slot: Prior,
    pub banners: BTreeMap<String, Prior>,
    #[serde(default)]
    pub cities: BTreeMap<String, CityEffect>,
}

impl SlotPriors {
    pub fn uniform() -> Self {
        Self {
            slot: Prior::UNIFORM,
            banners: BTreeMap::new(),
            cities: BTreeMap::new(),
        }
    }

    /// The banner's own prior (its effect), or the slot's for a banner without one.
    pub fn for_banner(&self, banner: &str) -> Prior {
        self.banners.get(banner).copied().unwrap_or(self.slot)
    }

    /// The prior of one arm (docs/architecture.md, "Bandit math"): the banner's effect (its
    /// mean and strength; the slot's for a banner without history) times the city's effect. A
    /// city without counts in the slot gets the slot's level, 1: every new city starts from the
    /// same shrinkage prior, the slot's.
    pub fn for_arm(&self, city: &str, banner: &str) -> Prior {
        self.for_city(city)(banner)
    }

    /// [`Self::for_arm`] of each banner in `city`, the city's effect looked up once.
    pub fn for_city(&self, city: &str) -> impl Fn(&str) -> Prior + '_ {
        let city = self.cities.get(city).copied();
        move |banner| {
            let effect = self.for_banner(banner);
            if effect.source == PriorSource::Uniform {
                return effect;
            }
            let (level, source) = match city {
                Some(c) if effect.source == PriorSource::EmpiricalBayes => {
                    (c.level, PriorSource::Hierarchical)
                }
                Some(c) => (c.level, effect.source),
                None => (1.0, effect.source),
            };
            let strength = effect.strength().max(MIN_STRENGTH);
            Prior::of_mean(effect.mean() * level, strength, source)
        }
    }
}

/// Fits the slot prior and each banner's prior from pooled counts.
pub fn empirical_bayes(counts: &[BannerCounts], prior_strength: f64) -> SlotPriors {
    let rows: Vec<(&str, f64, f64)> = counts
        .iter()
        .map(|c| (c.banner.as_str(), c.impressions as f64, c.clicks as f64))
        .collect();
    fit_banners(&rows, prior_strength)
}

/// [`empirical_bayes`] on (banner, impressions, clicks) rows whose impressions may be weighted
/// (by city levels, in [`hierarchical_priors`]).
fn fit_banners(rows: &[(&str, f64, f64)], prior_strength: f64) -> SlotPriors {
    let strength_cap = strength_cap(prior_strength);
    let seen: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.1 > 0.0)
        .map(|&(_, n, k)| (n, k.min(n)))
        .collect();
    let n: f64 = seen.iter().map(|r| r.0).sum();
    if seen.is_empty() {
        return SlotPriors::uniform();
    }
    let k: f64 = seen.iter().map(|r| r.1).sum();
    // Half a pseudo-click keeps the mean strictly inside (0, 1) when a slot has no clicks yet.
    let mean = (k + 0.5) / (n + 1.0);
    let between: f64 = seen
        .iter()
        .map(|&(imp, clk)| imp * (clk / imp - mean).powi(2))
        .sum::<f64>()
        / n;
    let noise = mean * (1.0 - mean) * seen.len() as f64 / n;
    let signal = between - noise;
    let fitted = if signal > 0.0 {
        mean * (1.0 - mean) / signal - 1.0
    } else {
        f64::INFINITY
    };
    let slot_strength = fitted.clamp(2.0, strength_cap);
    let slot = Prior {
        alpha0: mean * slot_strength,
        beta0: (1.0 - mean) * slot_strength,
        source: PriorSource::SlotMean,
    };
    let banners = rows
        .iter()
        .map(|&(banner, imp, clk)| {
            let prior = if imp <= 0.0 {
                slot
            } else {
                // The banner's pooled posterior under the slot prior; clicks beyond impressions
                // count as successes without a failure.
                let alpha = slot.alpha0 + clk;
                let beta = slot.beta0 + (imp - clk).max(0.0);
                let strength = (slot_strength + imp).min(strength_cap);
                let m = alpha / (alpha + beta);
                Prior {
                    alpha0: m * strength,
                    beta0: (1.0 - m) * strength,
                    source: PriorSource::EmpiricalBayes,
                }
            };
            (banner.to_string(), prior)
        })
        .collect();
    SlotPriors {
        slot,
        banners,
        cities: BTreeMap::new(),
    }
}

/// Clicks of pseudo-evidence that pull a city's level towards the slot's (level 1).
pub const LEVEL_PSEUDO_CLICKS: f64 = 10.0;

/// Rounds of the fit of banner and city effects in turn (it usually settles in a few).
const FIT_ROUNDS: usize = 20;

/// Bounds of a prior's mean away from 0 and 1 (a mean of exactly 0 or 1 has no Beta).
const MEAN_BOUNDS: (f64, f64) = (1e-6, 1.0 - 1e-6);

/// The weakest prior any arm gets: two pseudo-impressions.
const MIN_STRENGTH: f64 = 2.0;

/// The prior strengths tried by [`hierarchical_priors`]: 10^0.5 to 10^5 pseudo-impressions.
fn strength_grid() -> impl Iterator<Item = f64> {
    (2..=20).map(|i| 10f64.powf(f64::from(i) / 4.0))
}

/// ln B(a + k, b + misses) − ln B(a, b): the log-likelihood of an arm's k clicks and `misses`
/// misses under a Beta(a, b) prior (without the binomial coefficient, which no strength changes).
fn ln_beta_ratio(a: f64, b: f64, k: f64, misses: f64) -> f64 {
    ln_rising(a, k) + ln_rising(b, misses) - ln_rising(a + b, k + misses)
}

/// Counts up to which [`ln_rising`] multiplies instead of calling ln Γ twice.
const RISING_BY_PRODUCT: f64 = 32.0;

/// ln Γ(x + n) − ln Γ(x) for a whole n ≥ 0 and x > 0: the log of x (x + 1) … (x + n − 1). Most
/// arms have few clicks and impressions, and the fit evaluates every arm at every strength of the
/// grid, so for small n one logarithm of the product replaces two ln Γ (and is more exact).
fn ln_rising(x: f64, n: f64) -> f64 {
    if n == 0.0 {
        return 0.0;
    }
    if n > RISING_BY_PRODUCT {
        return ln_gamma(x + n) - ln_gamma(x);
    }
    // Two independent products halve the chain of dependent multiplications; each factor is at
    // most x + 32, so the 32 of them stay inside f64's range for any x below 1e9 (the grid's
    // strengths reach 1e5).
    let (mut even, mut odd, mut i) = (1.0f64, 1.0f64, 0.0);
    while i + 1.0 < n {
        even *= x + i;
        odd *= x + i + 1.0;
        i += 2.0;
    }
    if i < n {
        even *= x + i;
    }
    (even * odd).ln()
}

/// `max_strength` as a cap: at least [`MIN_STRENGTH`], [`DEFAULT_PRIOR_STRENGTH`] when it is
/// not a positive number.
fn strength_cap(max_strength: f64) -> f64 {
    if max_strength.is_finite() && max_strength > 0.0 {
        max_strength.max(MIN_STRENGTH)
    } else {
        DEFAULT_PRIOR_STRENGTH
    }
}

/// One city's all-time counts per banner in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CityCounts {
    pub city: String,
    pub banners: Vec<BannerCounts>,
}

impl CityCounts {
    /// A city's banners with counts (`counts` in the order of `banners`), in banner-name order;
    /// `None` when none has any.
    pub fn of(city: &str, banners: &[Banner], counts: &[Counts]) -> Option<Self> {
        let mut rows: Vec<BannerCounts> = banners
            .iter()
            .zip(counts)
            .filter(|(_, c)| !c.is_zero())
            .map(|(b, c)| BannerCounts {
                banner: b.id.clone(),
                impressions: c.impressions,
                clicks: c.clicks,
            })
            .collect();
        rows.sort_by(|a, b| a.banner.cmp(&b.banner));
        (!rows.is_empty()).then(|| CityCounts {
            city: city.to_string(),
            banners: rows,
        })
    }
}

/// A city's effect in a slot: how much its CTRs differ from the slot's, as one factor on every
/// banner's mean, and the evidence behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CityEffect {
    /// The city's clicks over the clicks the banner effects predict for its impressions, both
    /// plus [`LEVEL_PSEUDO_CLICKS`] (so a city with little data stays near the slot's level, 1).
    pub level: f64,
    /// The clicks behind the level: the city's own plus [`LEVEL_PSEUDO_CLICKS`].
    pub clicks: f64,
}

/// Pseudo-impressions an arm's prior carries at most, unless a job is told otherwise: what the
/// lab's `--policy service` runs with (docs/lab.md). The fitted strength and the evidence bounds of
/// [`hierarchical_priors`] usually keep priors well below it.
pub const DEFAULT_MAX_PRIOR_STRENGTH: f64 = 1e5;

/// The hierarchical priors of one slot from every city's all-time counts (docs/architecture.md,
/// "Bandit math"); one rule for the jobs, `slotbandit priors` and the simulator's `service` policy.
///
/// - **Banner effects** and **city effects**, fitted in turn until they settle. A banner's effect
///   is [`empirical_bayes`] (strengths capped at `max_strength`) on its clicks over its
///   impressions weighted by the levels of the cities that showed them, so that a banner shown
///   mostly in cities of low CTRs does not pass for a bad banner everywhere (pooled CTRs confound
///   the two: the lab's runs that did worse than independent TS came from exactly that); the
///   slot's mean stands for a banner without history. A city's level is its clicks over the
///   clicks the banner effects predict for its impressions, both plus ten pseudo-clicks, so a
///   city with little data stays near the slot's level (1) and the mix of banners it happened to
///   show does not bias it.
/// - **Strength**: one per slot, the value on a log grid (10^0.5 … `max_strength`) that maximises
///   the beta-binomial marginal likelihood of every city's counts under means banner × city: the
///   spread between cities the data supports. A banner's strength is that, but never more than
///   the evidence behind its effect (its empirical-Bayes strength), so a rarely shown banner
///   keeps a weak prior and is still explored.
///
/// An arm's prior is then [`SlotPriors::for_arm`]: mean banner × city at the banner's strength.
/// No prior is stronger than `max_strength`, so a city's own counts always win in the end. A slot
/// without impressions gets Beta(1, 1) everywhere. The result never holds a NaN or a strength
/// below two pseudo-impressions (property tests in this file).
pub fn hierarchical_priors(cities: &[CityCounts], max_strength: f64) -> SlotPriors {
    let cap = strength_cap(max_strength);
    let index = BannerIndex::new(cities);
    // Banner and city effects in turn, until the levels settle.
    let mut levels: Vec<Option<CityEffect>> = vec![None; cities.len()];
    for _ in 0..FIT_ROUNDS {
        let effects = banner_effects(&index, &levels, cap);
        if effects.slot.source == PriorSource::Uniform {
            return SlotPriors::uniform();
        }
        let means = index.means(&effects);
        let mut next: Vec<Option<CityEffect>> = (0..cities.len())
            .map(|c| city_effect(index.arms(c, &means)))
            .collect();
        normalize_levels(&index, &means, &mut next);
        let moved = next
            .iter()
            .zip(&levels)
            .map(|(a, b)| (a.map_or(1.0, |e| e.level) - b.map_or(1.0, |e| e.level)).abs())
            .fold(0.0, f64::max);
        levels = next;
        if moved < 1e-6 {
            break;
        }
    }
    // The banner effects under the levels kept, so each banner's evidence is the impressions
    // those levels weigh.
    let effects = banner_effects(&index, &levels, cap);
    let means = index.means(&effects);
    // Each arm's (mean, clicks, misses), for all the strengths tried.
    let arms: Vec<(f64, f64, f64)> = (0..cities.len())
        .filter_map(|c| Some((c, levels[c]?)))
        .flat_map(|(c, level)| index.arms(c, &means).map(move |arm| (arm, level)))
        .filter(|((counts, _), _)| counts.impressions > 0)
        .map(|((counts, mean), level)| {
            let m = clamp_mean(mean * level.level);
            let k = counts.clicks.min(counts.impressions) as f64;
            (m, k, counts.impressions as f64 - k)
        })
        .collect();
    let log_likelihood = |strength: f64| -> f64 {
        arms.iter()
            .map(|&(m, k, misses)| ln_beta_ratio(m * strength, (1.0 - m) * strength, k, misses))
            .sum()
    };
    let strength = strength_grid()
        .filter(|&s| s <= cap)
        .map(|s| (log_likelihood(s), s))
        .filter(|(l, _)| l.is_finite())
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .map_or(MIN_STRENGTH, |(_, s)| s);
    let at_strength = |p: Prior| p.with_strength(strength.min(p.strength()));
    SlotPriors {
        slot: at_strength(effects.slot),
        banners: effects
            .banners
            .into_iter()
            .map(|(banner, p)| (banner, at_strength(p)))
            .collect(),
        cities: cities
            .iter()
            .zip(levels)
            .filter_map(|(city, level)| Some((city.city.clone(), level?)))
            .collect(),
    }
}

/// A slot's counts per city with its banner names in name order and, for each city's counts, the
/// index of each of its banners among them: the fit's rounds look a banner's effect up by index,
/// not by name.
struct BannerIndex<'a> {
    cities: &'a [CityCounts],
    names: Vec<&'a str>,
    /// Parallel to each city's `banners`.
    of_city: Vec<Vec<usize>>,
}

impl<'a> BannerIndex<'a> {
    fn new(cities: &'a [CityCounts]) -> Self {
        let mut names: Vec<&str> = cities
            .iter()
            .flat_map(|city| city.banners.iter().map(|c| c.banner.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let of_city = cities
            .iter()
            .map(|city| {
                let index = |c: &BannerCounts| names.binary_search(&c.banner.as_str());
                city.banners
                    .iter()
                    .map(|c| index(c).expect("listed"))
                    .collect()
            })
            .collect();
        Self {
            cities,
            names,
            of_city,
        }
    }

    /// Each banner's mean under `effects`, by index.
    fn means(&self, effects: &SlotPriors) -> Vec<f64> {
        let mean = |banner: &&str| effects.for_banner(banner).mean();
        self.names.iter().map(mean).collect()
    }

    /// City `c`'s counts, each with its banner's mean out of `means`.
    fn arms<'c>(
        &'c self,
        c: usize,
        means: &'c [f64],
    ) -> impl Iterator<Item = (&'c BannerCounts, f64)> + 'c {
        let banners = self.cities[c].banners.iter().zip(&self.of_city[c]);
        banners.map(move |(counts, &b)| (counts, means[b]))
    }
}

/// [`fit_banners`] on each banner's clicks over its impressions weighted by the levels of the
/// cities that showed them (a city without a level counts at 1).
fn banner_effects(index: &BannerIndex<'_>, levels: &[Option<CityEffect>], cap: f64) -> SlotPriors {
    let mut pooled = vec![(0.0, 0.0); index.names.len()];
    for ((city, banners), level) in index.cities.iter().zip(&index.of_city).zip(levels) {
        let level = level.map_or(1.0, |e| e.level);
        for (c, &b) in city.banners.iter().zip(banners) {
            pooled[b].0 += c.impressions as f64 * level;
            pooled[b].1 += c.clicks as f64;
        }
    }
    let rows: Vec<(&str, f64, f64)> = (index.names.iter().zip(pooled))
        .map(|(&b, (n, k))| (b, n, k))
        .collect();
    fit_banners(&rows, cap)
}

/// Scales the levels so that their mean, weighted by the clicks each city's impressions
/// would bring at level 1, is 1: the banner effects are then the CTRs of the slot's average
/// city, and the scale the fit could trade between banners and cities stays put.
fn normalize_levels(index: &BannerIndex<'_>, means: &[f64], levels: &mut [Option<CityEffect>]) {
    let (mut weighted, mut weights) = (0.0, 0.0);
    for (c, level) in levels.iter().enumerate() {
        let Some(level) = level else { continue };
        let expected: f64 = index
            .arms(c, means)
            .map(|(counts, mean)| counts.impressions as f64 * mean)
            .sum();
        weighted += expected * level.level;
        weights += expected;
    }
    let scale = weighted / weights;
    if !(scale.is_finite() && scale > 0.0) {
        return;
    }
    for level in levels.iter_mut().flatten() {
        level.level /= scale;
    }
}

/// A city's effect from its counts, each with the mean of its banner's effect; `None` for a city
/// without impressions.
fn city_effect<'c>(arms: impl Iterator<Item = (&'c BannerCounts, f64)>) -> Option<CityEffect> {
    let mut clicks = 0.0;
    let mut expected = 0.0;
    for (c, mean) in arms.filter(|(c, _)| c.impressions > 0) {
        clicks += c.clicks.min(c.impressions) as f64;
        expected += c.impressions as f64 * mean;
    }
    if expected <= 0.0 {
        return None;
    }
    let level = (clicks + LEVEL_PSEUDO_CLICKS) / (expected + LEVEL_PSEUDO_CLICKS);
    Some(CityEffect {
        level,
        clicks: clicks + LEVEL_PSEUDO_CLICKS,
    })
    .filter(|e| e.level.is_finite() && e.clicks.is_finite())
}

fn clamp_mean(m: f64) -> f64 {
    if m.is_nan() {
        return 0.5;
    }
    m.clamp(MEAN_BOUNDS.0, MEAN_BOUNDS.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rows: &[(&str, u64, u64)]) -> Vec<BannerCounts> {
        rows.iter()
            .map(|&(b, i, c)| BannerCounts {
                banner: b.into(),
                impressions: i,
                clicks: c,
            })
            .collect()
    }

    #[test]
    fn no_history_is_uniform() {
        let p = empirical_bayes(&[], 100.0);
        assert_eq!(p.for_banner("x"), Prior::UNIFORM);
    }

    #[test]
    fn banner_priors_keep_the_ranking_and_the_cap() {
        let p = empirical_bayes(
            &counts(&[
                ("a", 100_000, 5_000),
                ("b", 100_000, 2_000),
                ("c", 100_000, 1_000),
            ]),
            50.0,
        );
        let (a, b, c) = (p.for_banner("a"), p.for_banner("b"), p.for_banner("c"));
        for prior in [a, b, c] {
            assert!((prior.alpha0 + prior.beta0 - 50.0).abs() < 1e-9);
            assert_eq!(prior.source, PriorSource::EmpiricalBayes);
        }
        let mean = |p: Prior| p.alpha0 / (p.alpha0 + p.beta0);
        assert!(mean(a) > mean(b) && mean(b) > mean(c));
        assert!((mean(a) - 0.05).abs() < 0.001);
        let unknown = p.for_banner("new");
        assert_eq!(unknown.source, PriorSource::SlotMean);
        assert!((mean(unknown) - 8_000.0 / 300_000.0).abs() < 0.001);
    }

    #[test]
    fn homogeneous_banners_get_the_full_strength_slot_prior() {
        let p = empirical_bayes(&counts(&[("a", 10_000, 300), ("b", 10_000, 300)]), 80.0);
        assert!((p.slot.alpha0 + p.slot.beta0 - 80.0).abs() < 1e-9);
    }

    #[test]
    fn little_history_gives_a_weak_prior() {
        let p = empirical_bayes(&counts(&[("a", 3, 1), ("b", 0, 0)]), 100.0);
        let a = p.for_banner("a");
        assert!(a.alpha0 + a.beta0 <= 100.0);
        assert!(a.alpha0 > 0.0 && a.beta0 > 0.0);
        assert_eq!(p.for_banner("b").source, PriorSource::SlotMean);
    }

    #[test]
    fn arms_compose_banner_and_city_effects() {
        let banners = [("a", 0.05), ("b", 0.03), ("c", 0.02)];
        let city = |name: &str, level: f64, n: u64| CityCounts {
            city: name.into(),
            banners: banners
                .iter()
                .map(|&(b, p)| BannerCounts {
                    banner: b.into(),
                    impressions: n,
                    clicks: (p * level * n as f64).round() as u64,
                })
                .collect(),
        };
        let cities = vec![
            city("one", 1.0, 100_000),
            city("two", 2.0, 100_000),
            city("small", 0.5, 400),
        ];
        let priors = hierarchical_priors(&cities, 1e5);
        for c in ["one", "two", "small", "new"] {
            let m: Vec<f64> = ["a", "b", "c"]
                .iter()
                .map(|b| priors.for_arm(c, b).mean())
                .collect();
            assert!(m[0] > m[1] && m[1] > m[2], "{c}: {m:?}");
        }
        // The busy city at twice the level gets about twice the CTRs.
        let ratio = priors.for_arm("two", "a").mean() / priors.for_arm("one", "a").mean();
        assert!((ratio - 2.0).abs() < 0.1, "{ratio}");
        // Exactly multiplicative data: the marginal likelihood wants a strong prior, and a busy
        // city's evidence allows it.
        assert!(priors.for_arm("one", "a").strength() >= 1_000.0);
        assert_eq!(priors.for_arm("one", "a").source, PriorSource::Hierarchical);
        // A new city: the banner's effect at the slot's level.
        let new = priors.for_arm("new", "a");
        assert_eq!(new.source, PriorSource::EmpiricalBayes);
        assert_eq!(new, priors.for_banner("a"));
        // A banner without history: the slot's mean, at the city's level.
        let unknown = priors.for_arm("two", "z");
        assert_eq!(unknown.source, PriorSource::SlotMean);
        let level = priors.cities["two"].level;
        assert!((unknown.mean() - priors.slot.mean() * level).abs() < 1e-9);
    }

    #[test]
    fn a_slot_without_impressions_is_uniform_everywhere() {
        for cities in [
            vec![],
            vec![CityCounts {
                city: "pune".into(),
                banners: counts(&[("a", 0, 0), ("b", 0, 3)]),
            }],
        ] {
            let p = hierarchical_priors(&cities, 100.0);
            assert_eq!(p, SlotPriors::uniform());
            assert_eq!(p.for_arm("pune", "a"), Prior::UNIFORM);
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const CITIES: [&str; 4] = ["c0", "c1", "c2", "c3"];
        const BANNERS: [&str; 4] = ["b0", "b1", "b2", "b3"];

        /// Counts from nothing to huge, clicks anywhere from none to more than impressions.
        fn some_counts() -> impl Strategy<Value = (u64, u64)> {
            prop_oneof![
                Just((0, 0)),
                (0u64..50, 0u64..5),
                (0u64..100_000).prop_flat_map(|n| (Just(n), 0..=n)),
                (0u64..10).prop_map(|c| (0, c)),
                (1u64..u64::MAX / 4, 0u64..1000),
            ]
        }

        /// Up to four cities, each once (as the jobs group counts), with any counts per banner.
        fn slot() -> impl Strategy<Value = Vec<CityCounts>> {
            let rows = prop::collection::vec((0..BANNERS.len(), some_counts()), 0..5);
            prop::collection::btree_map(0..CITIES.len(), rows, 0..5).prop_map(|cities| {
                cities
                    .into_iter()
                    .map(|(c, rows)| CityCounts {
                        city: CITIES[c].into(),
                        banners: rows
                            .into_iter()
                            .map(|(b, (impressions, clicks))| BannerCounts {
                                banner: BANNERS[b].into(),
                                impressions,
                                clicks,
                            })
                            .collect(),
                    })
                    .collect()
            })
        }

        fn max_strength() -> impl Strategy<Value = f64> {
            prop_oneof![
                Just(100.0),
                Just(1e5),
                0.1f64..1e6,
                Just(f64::NAN),
                Just(-1.0)
            ]
        }

        proptest! {
            #[test]
            fn the_rising_product_is_the_ln_gamma_difference(
                x in prop_oneof![1e-7f64..1.0, 1.0f64..1e5],
                // The counts the product covers (beyond them ln_rising is the ln Γ difference).
                n in 0u64..=RISING_BY_PRODUCT as u64,
            ) {
                let n = n as f64;
                let product = ln_rising(x, n);
                let by_gamma = ln_gamma(x + n) - ln_gamma(x);
                let tolerance = 1e-9 * by_gamma.abs().max(1.0);
                prop_assert!((product - by_gamma).abs() <= tolerance, "{product} against {by_gamma}");
            }
        }

        proptest! {
            #[test]
            fn every_arm_prior_is_a_proper_beta_of_bounded_strength(
                cities in slot(),
                max in max_strength(),
            ) {
                let priors = hierarchical_priors(&cities, max);
                let cap = strength_cap(max);
                for city in CITIES.iter().chain(&["new"]) {
                    for banner in BANNERS.iter().chain(&["new"]) {
                        let p = priors.for_arm(city, banner);
                        prop_assert!(p.alpha0.is_finite() && p.beta0.is_finite(), "{p:?}");
                        prop_assert!(p.alpha0 > 0.0 && p.beta0 > 0.0, "{p:?}");
                        // Never zero-strength, never more than the cap...
                        prop_assert!(p.strength() >= MIN_STRENGTH - 1e-9, "{p:?}");
                        prop_assert!(p.strength() <= cap * (1.0 + 1e-12), "{p:?} cap {cap}");
                        if p.source == PriorSource::Uniform {
                            prop_assert_eq!(p, Prior::UNIFORM);
                            continue;
                        }
                        // ...nor more than the evidence behind the banner's effect: its
                        // impressions weighted by its cities' levels, plus the slot's strength.
                        let weighted: f64 = cities
                            .iter()
                            .flat_map(|c| {
                                let level = priors.cities.get(&c.city).map_or(1.0, |e| e.level);
                                c.banners.iter().map(move |b| (b, level))
                            })
                            .filter(|(b, _)| b.banner == *banner)
                            .map(|(b, level)| b.impressions as f64 * level)
                            .sum();
                        let slot = priors.slot.strength();
                        prop_assert!(
                            p.strength() <= (slot + weighted) * (1.0 + 1e-9) + 1e-6,
                            "{p:?} {weighted}"
                        );
                    }
                }
            }

            #[test]
            fn a_city_without_data_gets_the_slots_prior(cities in slot(), max in max_strength()) {
                let priors = hierarchical_priors(&cities, max);
                for banner in BANNERS.iter().chain(&["new"]) {
                    // Every new city alike, at the banner's effect (the slot's level).
                    let new = priors.for_arm("new", banner);
                    prop_assert_eq!(new, priors.for_arm("other", banner));
                    if new.source != PriorSource::Uniform {
                        let effect = priors.for_banner(banner);
                        prop_assert!((new.mean() - clamp_mean(effect.mean())).abs() < 1e-12);
                        prop_assert_eq!(new.source, effect.source);
                    }
                }
                // A city without impressions has no effect of its own.
                for city in CITIES {
                    let shown = cities
                        .iter()
                        .filter(|c| c.city == city)
                        .flat_map(|c| &c.banners)
                        .any(|c| c.impressions > 0);
                    if !shown {
                        prop_assert!(!priors.cities.contains_key(city));
                    }
                }
            }

            #[test]
            fn a_citys_level_is_shrunk_towards_the_slot_and_more_data_moves_it_further(
                rows in prop::collection::vec((0..BANNERS.len(), 1u64..5_000, 0u64..300), 1..6),
                scale in 2u64..50,
            ) {
                let effects = empirical_bayes(
                    &counts(&[("b0", 100_000, 5_000), ("b1", 100_000, 3_000), ("b2", 100_000, 1_000)]),
                    1e5,
                );
                let city = |scale: u64| -> Vec<BannerCounts> {
                    rows.iter()
                        .map(|&(b, n, k)| BannerCounts {
                            banner: BANNERS[b].into(),
                            impressions: n * scale,
                            clicks: k.min(n) * scale,
                        })
                        .collect()
                };
                let (few, many) = (city(1), city(scale));
                let raw = {
                    let clicks: f64 = few.iter().map(|c| c.clicks as f64).sum();
                    let expected: f64 = few
                        .iter()
                        .map(|c| c.impressions as f64 * effects.for_banner(&c.banner).mean())
                        .sum();
                    clicks / expected
                };
                let mean = |c: &BannerCounts| effects.for_banner(&c.banner).mean();
                let l_few = city_effect(few.iter().map(|c| (c, mean(c)))).unwrap();
                let l_many = city_effect(many.iter().map(|c| (c, mean(c)))).unwrap();
                // Between the slot's level (1) and the city's own ratio...
                for l in [l_few.level, l_many.level] {
                    prop_assert!((l - 1.0) * (raw - 1.0) >= 0.0, "{l} {raw}");
                    prop_assert!((l - 1.0).abs() <= (raw - 1.0).abs() + 1e-9, "{l} {raw}");
                }
                // ...and nearer that ratio with more data, with more evidence behind it.
                prop_assert!((l_many.level - raw).abs() <= (l_few.level - raw).abs() + 1e-12);
                prop_assert!(l_many.clicks >= l_few.clicks);
            }

            #[test]
            fn a_citys_own_counts_win_in_the_end(
                cities in slot(),
                max in max_strength(),
                city in 0..CITIES.len(),
                banner in 0..BANNERS.len(),
                own in 0.0f64..1.0,
            ) {
                // However strong the priors, the posterior mean of an arm that keeps showing
                // CTR `own` ends within 1% of it: a prior's strength is bounded.
                let prior = hierarchical_priors(&cities, max).for_arm(CITIES[city], BANNERS[banner]);
                let n = 1u64 << 40;
                let k = (own * n as f64) as u64;
                let posterior = prior.posterior(n, k);
                prop_assert!((posterior.mean() - own).abs() < 0.01, "{prior:?} {own}");
            }
        }
    }
}
