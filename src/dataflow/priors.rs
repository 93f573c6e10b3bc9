//! Cold-start priors from counted history (docs/architecture.md, "Bandit math"): each slot's
//! all-time counts, pooled over cities, fitted to empirical-Bayes priors.

use std::collections::BTreeMap;

use crate::bandit::{empirical_bayes, BannerCounts};
use crate::model::pool_cities;
use crate::store::{CountQuery, PosteriorStore, StoreError};

/// Pools each slot's all-time counts in `counts` over cities and writes its empirical-Bayes
/// priors to `target`; returns the number of slots.
pub fn write_priors(
    counts: &dyn PosteriorStore,
    target: &dyn PosteriorStore,
    prior_strength: f64,
) -> Result<usize, StoreError> {
    let all = counts.counts(&CountQuery::default())?;
    let mut slots: BTreeMap<(String, String), Vec<BannerCounts>> = BTreeMap::new();
    for (arm, c) in pool_cities(all.iter().map(|(arm, c)| (arm, *c))) {
        slots
            .entry((arm.tenant, arm.slot))
            .or_default()
            .push(BannerCounts {
                banner: arm.banner,
                impressions: c.impressions,
                clicks: c.clicks,
            });
    }
    for ((tenant, slot), banners) in &slots {
        target.write_priors(tenant, slot, &empirical_bayes(banners, prior_strength))?;
    }
    Ok(slots.len())
}
