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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bandit::{SlotPriors, DEFAULT_PRIOR_STRENGTH};
    use crate::model::{ArmKey, CountKey, Counts, ShardKey, ALL_TIME};
    use crate::store::{EmbeddedStore, ShardWrite};

    fn row(
        tenant: &str,
        slot: &str,
        city: &str,
        banner: &str,
        bucket: i64,
        imp: u64,
        clk: u64,
    ) -> (CountKey, Counts) {
        let key = CountKey {
            arm: Arc::new(ArmKey::new(tenant, slot, city, banner)),
            bucket,
        };
        (key, Counts::new(imp, clk))
    }

    fn banner(banner: &str, impressions: u64, clicks: u64) -> BannerCounts {
        BannerCounts {
            banner: banner.into(),
            impressions,
            clicks,
        }
    }

    #[test]
    fn each_slots_all_time_counts_are_pooled_over_cities_into_its_priors() {
        let dir = tempfile::tempdir().unwrap();
        let counts = EmbeddedStore::open(&dir.path().join("history.redb"), true).unwrap();
        let target = EmbeddedStore::open(&dir.path().join("target.redb"), true).unwrap();
        let shard = |tenant: &str, city: &str, rows: Vec<(CountKey, Counts)>| ShardWrite {
            rows,
            ..ShardWrite::new(ShardKey::new(tenant, city))
        };
        counts
            .apply_epoch(&[
                shard(
                    "t1",
                    "pune",
                    vec![
                        row("t1", "hero", "pune", "b1", ALL_TIME, 1000, 50),
                        row("t1", "hero", "pune", "b1", 490_000, 1000, 50),
                        row("t1", "hero", "pune", "b2", ALL_TIME, 800, 8),
                        row("t1", "side", "pune", "b1", ALL_TIME, 300, 3),
                    ],
                ),
                shard(
                    "t1",
                    "delhi",
                    vec![row("t1", "hero", "delhi", "b1", ALL_TIME, 500, 40)],
                ),
                shard(
                    "t2",
                    "pune",
                    vec![row("t2", "hero", "pune", "b9", ALL_TIME, 200, 20)],
                ),
            ])
            .unwrap();

        let slots = write_priors(&counts, &target, DEFAULT_PRIOR_STRENGTH).unwrap();
        assert_eq!(slots, 3);
        let fitted = |banners: &[BannerCounts]| empirical_bayes(banners, DEFAULT_PRIOR_STRENGTH);
        assert_eq!(
            target.priors("t1", "hero").unwrap(),
            fitted(&[banner("b1", 1500, 90), banner("b2", 800, 8)])
        );
        assert_eq!(
            target.priors("t1", "side").unwrap(),
            fitted(&[banner("b1", 300, 3)])
        );
        assert_eq!(
            target.priors("t2", "hero").unwrap(),
            fitted(&[banner("b9", 200, 20)])
        );
        // Nothing is written to the history, and a slot without counts keeps uniform priors.
        assert_eq!(counts.priors("t1", "hero").unwrap(), SlotPriors::uniform());
        assert_eq!(target.priors("t3", "hero").unwrap(), SlotPriors::uniform());
    }
}
