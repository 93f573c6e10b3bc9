//! Empirical-Bayes priors per (tenant, slot, banner) from pooled all-city counts (docs/architecture.md, "Bandit math").
//!
//! A slot-level Beta(a, b) is fitted to the banners' pooled CTRs by the method of moments, with
//! the binomial sampling noise taken out of the between-banner variance and its strength a + b
//! capped at `prior_strength`. Each banner's prior for its city arms is then the banner's pooled
//! posterior mean under that slot prior, with strength min(prior_strength, a + b + impressions).
//! A banner without history falls back to the slot prior (the slot mean).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::function::gamma::ln_gamma;

use super::BetaPosterior;

/// Pseudo-impressions a prior may carry at most, unless configured otherwise.
pub const DEFAULT_PRIOR_STRENGTH: f64 = 100.0;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BannerCounts {
    pub banner: String,
    pub impressions: u64,
    pub clicks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorSource {
    /// Fitted to this banner's pooled history.
    EmpiricalBayes,
    /// The banner has no history: the slot-level prior.
    SlotMean,
    /// The slot has no history: Beta(1, 1).
    Uniform,
}

impl PriorSource {
    /// The stored name (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            PriorSource::EmpiricalBayes => "empirical_bayes",
            PriorSource::SlotMean => "slot_mean",
            PriorSource::Uniform => "uniform",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            PriorSource::EmpiricalBayes,
            PriorSource::SlotMean,
            PriorSource::Uniform,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotPriors {
    pub slot: Prior,
    pub banners: BTreeMap<String, Prior>,
}

impl SlotPriors {
    pub fn uniform() -> Self {
        Self {
            slot: Prior::UNIFORM,
            banners: BTreeMap::new(),
        }
    }

    pub fn for_banner(&self, banner: &str) -> Prior {
        self.banners.get(banner).copied().unwrap_or(self.slot)
    }
}

/// Fits the slot prior and each banner's prior from pooled counts.
pub fn empirical_bayes(counts: &[BannerCounts], prior_strength: f64) -> SlotPriors {
    let strength_cap = if prior_strength.is_finite() && prior_strength > 0.0 {
        prior_strength
    } else {
        DEFAULT_PRIOR_STRENGTH
    };
    let seen: Vec<&BannerCounts> = counts.iter().filter(|c| c.impressions > 0).collect();
    let n: f64 = seen.iter().map(|c| c.impressions as f64).sum();
    if seen.is_empty() {
        return SlotPriors::uniform();
    }
    let k: f64 = seen
        .iter()
        .map(|c| c.clicks.min(c.impressions) as f64)
        .sum();
    // Half a pseudo-click keeps the mean strictly inside (0, 1) when a slot has no clicks yet.
    let mean = (k + 0.5) / (n + 1.0);
    let between: f64 = seen
        .iter()
        .map(|c| {
            let p = c.clicks.min(c.impressions) as f64 / c.impressions as f64;
            c.impressions as f64 * (p - mean).powi(2)
        })
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
    let banners = counts
        .iter()
        .map(|c| {
            let prior = if c.impressions == 0 {
                slot
            } else {
                let pooled = slot.posterior(c.impressions, c.clicks);
                let strength = (slot_strength + c.impressions as f64).min(strength_cap);
                let m = pooled.mean();
                Prior {
                    alpha0: m * strength,
                    beta0: (1.0 - m) * strength,
                    source: PriorSource::EmpiricalBayes,
                }
            };
            (c.banner.clone(), prior)
        })
        .collect();
    SlotPriors { slot, banners }
}

/// Clicks of pseudo-evidence that pull a city's level towards the slot's (level 1).
const LEVEL_PSEUDO_CLICKS: f64 = 10.0;

/// The prior strengths tried by [`city_priors`]: 10^0.5 to 10^5 pseudo-impressions.
fn strength_grid() -> impl Iterator<Item = f64> {
    (2..=20).map(|i| 10f64.powf(f64::from(i) / 4.0))
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// Priors per (city, banner) for a slot whose CTRs are a banner effect times a city effect
/// (hierarchical pooling). `cities[c]` lists city c's counts per banner, in the same banner order
/// for every city; the result has the same shape.
///
/// The banner effect is the banner's pooled prior mean from `pooled` (see [`empirical_bayes`]);
/// the city level is the city's clicks over the clicks those means predict for its impressions,
/// shrunk towards 1 by ten pseudo-clicks; the prior mean of (city, banner) is their product. The
/// strength is the one on a log grid up to `max_strength` that maximises the beta-binomial
/// marginal likelihood of all cities' counts, but never more than the strength of the banner's
/// pooled prior (the evidence behind its mean), so that a rarely shown banner keeps a weak prior
/// and is still explored.
pub fn city_priors(
    pooled: &SlotPriors,
    cities: &[Vec<BannerCounts>],
    max_strength: f64,
) -> Vec<Vec<Prior>> {
    let mean = |p: Prior| p.alpha0 / (p.alpha0 + p.beta0);
    let means: Vec<Vec<f64>> = cities
        .iter()
        .map(|counts| {
            let banner_means: Vec<f64> = counts
                .iter()
                .map(|c| mean(pooled.for_banner(&c.banner)))
                .collect();
            let clicks: f64 = counts
                .iter()
                .map(|c| c.clicks.min(c.impressions) as f64)
                .sum();
            let expected: f64 = counts
                .iter()
                .zip(&banner_means)
                .map(|(c, m)| c.impressions as f64 * m)
                .sum();
            let level = (clicks + LEVEL_PSEUDO_CLICKS) / (expected + LEVEL_PSEUDO_CLICKS);
            banner_means
                .iter()
                .map(|m| (m * level).clamp(1e-6, 1.0 - 1e-6))
                .collect()
        })
        .collect();
    let log_likelihood = |strength: f64| -> f64 {
        cities
            .iter()
            .zip(&means)
            .flat_map(|(counts, ms)| counts.iter().zip(ms))
            .filter(|(c, _)| c.impressions > 0)
            .map(|(c, &m)| {
                let (a, b) = (m * strength, (1.0 - m) * strength);
                let k = c.clicks.min(c.impressions) as f64;
                let misses = c.impressions as f64 - k;
                ln_beta(a + k, b + misses) - ln_beta(a, b)
            })
            .sum()
    };
    let cap = if max_strength.is_finite() && max_strength > 0.0 {
        max_strength
    } else {
        DEFAULT_PRIOR_STRENGTH
    };
    let strength = strength_grid()
        .filter(|&s| s <= cap)
        .map(|s| (log_likelihood(s), s))
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .map_or(cap.min(2.0), |(_, s)| s);
    cities
        .iter()
        .zip(&means)
        .map(|(counts, ms)| {
            counts
                .iter()
                .zip(ms)
                .map(|(c, m)| {
                    let evidence = pooled.for_banner(&c.banner);
                    let strength = strength.min(evidence.alpha0 + evidence.beta0);
                    Prior {
                        alpha0: m * strength,
                        beta0: (1.0 - m) * strength,
                        source: PriorSource::EmpiricalBayes,
                    }
                })
                .collect()
        })
        .collect()
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
    fn city_priors_follow_banner_times_city_effects() {
        let banners = [("a", 0.05), ("b", 0.03), ("c", 0.02)];
        let city = |level: f64, n: u64| -> Vec<BannerCounts> {
            banners
                .iter()
                .map(|&(b, p)| BannerCounts {
                    banner: b.into(),
                    impressions: n,
                    clicks: (p * level * n as f64).round() as u64,
                })
                .collect()
        };
        let cities = vec![city(1.0, 100_000), city(2.0, 100_000), city(0.5, 400)];
        let mut pooled_counts = city(1.0, 0);
        for c in &cities {
            for (p, x) in pooled_counts.iter_mut().zip(c) {
                p.impressions += x.impressions;
                p.clicks += x.clicks;
            }
        }
        let pooled = empirical_bayes(&pooled_counts, 1e9);
        let priors = city_priors(&pooled, &cities, 1e5);
        let mean = |p: &Prior| p.alpha0 / (p.alpha0 + p.beta0);
        for city in &priors {
            assert!(mean(&city[0]) > mean(&city[1]) && mean(&city[1]) > mean(&city[2]));
        }
        // The busy city at twice the level gets about twice the CTRs.
        assert!((mean(&priors[1][0]) / mean(&priors[0][0]) - 2.0).abs() < 0.1);
        // Exactly multiplicative data: the marginal likelihood wants a strong prior.
        assert!(priors[0][0].alpha0 + priors[0][0].beta0 >= 1_000.0);
    }
}
