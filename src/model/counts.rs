//! Impression and click counts: what the job keeps per arm and bucket, what a store returns, and
//! what a posterior is updated with.

use std::collections::BTreeMap;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

use super::keys::ALL_CITIES;
use super::{ArmKey, EventKind};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Counts {
    pub impressions: u64,
    pub clicks: u64,
}

impl Counts {
    pub const ZERO: Counts = Counts::new(0, 0);

    pub const fn new(impressions: u64, clicks: u64) -> Self {
        Self {
            impressions,
            clicks,
        }
    }

    /// The sum, each count saturating at `u64::MAX` rather than wrapping.
    pub const fn saturating_add(self, o: Counts) -> Counts {
        Counts::new(
            self.impressions.saturating_add(o.impressions),
            self.clicks.saturating_add(o.clicks),
        )
    }

    /// One event of `kind`.
    pub fn of(kind: EventKind) -> Self {
        match kind {
            EventKind::Impression => Self::new(1, 0),
            EventKind::Click => Self::new(0, 1),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.impressions += o.impressions;
        self.clicks += o.clicks;
    }
}

impl Add for Counts {
    type Output = Counts;
    fn add(mut self, o: Counts) -> Counts {
        self += o;
        self
    }
}

impl std::iter::Sum for Counts {
    fn sum<I: Iterator<Item = Counts>>(iter: I) -> Counts {
        iter.fold(Counts::ZERO, Add::add)
    }
}

/// Counts per arm summed over cities: each arm's city becomes [`ALL_CITIES`], in key order.
/// The slot's all-city posterior, and the pooled data priors are computed from.
pub fn pool_cities<'a>(
    rows: impl IntoIterator<Item = (&'a ArmKey, Counts)>,
) -> BTreeMap<ArmKey, Counts> {
    let mut pooled: BTreeMap<ArmKey, Counts> = BTreeMap::new();
    for (arm, counts) in rows {
        let key = ArmKey::new(&arm.tenant, &arm.slot, ALL_CITIES, &arm.banner);
        *pooled.entry(key).or_default() += counts;
    }
    pooled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_and_sum() {
        let mut c = Counts::of(EventKind::Impression);
        c += Counts::of(EventKind::Click);
        assert_eq!(c, Counts::new(1, 1));
        assert_eq!(
            [c, c, Counts::ZERO].into_iter().sum::<Counts>(),
            Counts::new(2, 2)
        );
        assert!(Counts::default().is_zero());
    }

    #[test]
    fn pooling_sums_each_banner_over_its_cities_and_keeps_slots_apart() {
        let rows = [
            (ArmKey::new("t", "hero", "pune", "b1"), Counts::new(10, 1)),
            (ArmKey::new("t", "hero", "delhi", "b1"), Counts::new(5, 2)),
            (ArmKey::new("t", "hero", "delhi", "b2"), Counts::new(3, 0)),
            (ArmKey::new("t", "side", "pune", "b1"), Counts::new(7, 7)),
        ];
        let pooled = pool_cities(rows.iter().map(|(a, c)| (a, *c)));
        assert_eq!(
            pooled.into_iter().collect::<Vec<_>>(),
            vec![
                (ArmKey::new("t", "hero", "*", "b1"), Counts::new(15, 3)),
                (ArmKey::new("t", "hero", "*", "b2"), Counts::new(3, 0)),
                (ArmKey::new("t", "side", "*", "b1"), Counts::new(7, 7)),
            ]
        );
    }
}
