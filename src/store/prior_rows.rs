//! A slot's priors as stored rows, one codec for both backends: the slot's own prior under banner
//! `""`, then one row per banner, each with alpha0, beta0 and the source's stored name; and one
//! row per city effect, its level and the clicks behind it (docs/architecture.md, "Store
//! layouts").

use crate::bandit::{CityEffect, Prior, PriorSource, SlotPriors};

/// The banner under which the slot's own prior is stored.
const SLOT_PRIOR_BANNER: &str = "";

/// One stored prior row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PriorRow<'a> {
    pub banner: &'a str,
    pub alpha0: f64,
    pub beta0: f64,
    pub source: &'a str,
}

/// A stored row names a prior source this build does not know.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown prior source {0:?}")]
pub(super) struct UnknownPriorSource(String);

/// The rows that store `priors`: the slot's prior first, then the banners' in banner order.
pub(super) fn prior_rows(priors: &SlotPriors) -> impl Iterator<Item = PriorRow<'_>> {
    std::iter::once((SLOT_PRIOR_BANNER, &priors.slot))
        .chain(priors.banners.iter().map(|(b, p)| (b.as_str(), p)))
        .map(|(banner, p)| PriorRow {
            banner,
            alpha0: p.alpha0,
            beta0: p.beta0,
            source: p.source.as_str(),
        })
}

/// Adds a stored row to the priors read so far (start from [`SlotPriors::uniform`], so that a
/// slot without rows reads as Beta(1, 1)).
pub(super) fn read_prior_row(
    priors: &mut SlotPriors,
    row: PriorRow<'_>,
) -> Result<(), UnknownPriorSource> {
    let prior = Prior {
        alpha0: row.alpha0,
        beta0: row.beta0,
        source: PriorSource::parse(row.source)
            .ok_or_else(|| UnknownPriorSource(row.source.to_string()))?,
    };
    if row.banner == SLOT_PRIOR_BANNER {
        priors.slot = prior;
    } else {
        priors.banners.insert(row.banner.to_string(), prior);
    }
    Ok(())
}

/// One stored city effect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CityRow<'a> {
    pub city: &'a str,
    pub level: f64,
    pub clicks: f64,
}

/// A stored city effect that no computation gives.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("city {0:?} has an effect that is not a positive number")]
pub(super) struct BadCityEffect(String);

/// The rows that store `priors`' city effects, in city order.
pub(super) fn city_rows(priors: &SlotPriors) -> impl Iterator<Item = CityRow<'_>> {
    priors.cities.iter().map(|(city, e)| CityRow {
        city,
        level: e.level,
        clicks: e.clicks,
    })
}

/// Adds a stored city effect to the priors read so far.
pub(super) fn read_city_row(
    priors: &mut SlotPriors,
    row: CityRow<'_>,
) -> Result<(), BadCityEffect> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(row.level) || !positive(row.clicks) {
        return Err(BadCityEffect(row.city.to_string()));
    }
    priors.cities.insert(
        row.city.to_string(),
        CityEffect {
            level: row.level,
            clicks: row.clicks,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priors_round_trip_through_their_rows_and_an_unknown_source_is_named() {
        let prior = |alpha0, beta0, source| Prior {
            alpha0,
            beta0,
            source,
        };
        let priors = SlotPriors {
            slot: prior(2.0, 38.0, PriorSource::SlotMean),
            banners: [
                (
                    "b1".to_string(),
                    prior(3.5, 60.25, PriorSource::EmpiricalBayes),
                ),
                ("b2".to_string(), prior(1.0, 1.0, PriorSource::Uniform)),
            ]
            .into(),
            cities: [(
                "pune".to_string(),
                CityEffect {
                    level: 1.25,
                    clicks: 42.0,
                },
            )]
            .into(),
        };
        let rows: Vec<PriorRow> = prior_rows(&priors).collect();
        assert_eq!(
            rows.iter()
                .map(|r| (r.banner, r.source))
                .collect::<Vec<_>>(),
            [
                ("", "slot_mean"),
                ("b1", "empirical_bayes"),
                ("b2", "uniform")
            ]
        );
        let mut read = SlotPriors::uniform();
        for row in rows.iter().rev() {
            read_prior_row(&mut read, *row).unwrap();
        }
        for row in city_rows(&priors) {
            read_city_row(&mut read, row).unwrap();
        }
        assert_eq!(read, priors);
        for level in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let bad = CityRow {
                city: "goa",
                level,
                clicks: 10.0,
            };
            let err = read_city_row(&mut read, bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                "city \"goa\" has an effect that is not a positive number"
            );
        }

        let bad = PriorRow {
            source: "guess",
            ..rows[1]
        };
        let err = read_prior_row(&mut read, bad).unwrap_err();
        assert_eq!(err.to_string(), "unknown prior source \"guess\"");
    }
}
