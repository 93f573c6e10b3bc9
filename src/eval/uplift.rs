//! What Thompson sampling earned over the holdout: the difference of click-through rates with a
//! Newcombe hybrid score interval (each rate's Wilson interval, combined), the relative uplift
//! with a Katz log-ratio interval, and the extra clicks the difference is worth over TS's
//! impressions. Wilson and Newcombe keep their coverage at the small rates and counts banner
//! traffic has, where the textbook (Wald) interval undercovers.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

use crate::model::Counts;

/// An estimate with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    fn scaled(&self, by: f64) -> Interval {
        Interval {
            estimate: self.estimate * by,
            low: self.low * by,
            high: self.high * by,
        }
    }
}

/// TS against the holdout over one group of impressions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uplift {
    pub ts: Counts,
    pub holdout: Counts,
    pub ctr_ts: f64,
    pub ctr_holdout: f64,
    /// CTR of TS minus CTR of the holdout.
    pub difference: Interval,
    /// CTR of TS over CTR of the holdout, minus 1; `None` while the holdout has no click.
    pub relative: Option<Interval>,
    /// The difference times TS's impressions: clicks TS earned beyond what uniform choice
    /// would have had on the same traffic.
    pub extra_clicks: Interval,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpliftError {
    #[error("confidence must be between 0 and 1 exclusive (got {0})")]
    Confidence(f64),
    #[error("{group} has more clicks ({clicks}) than impressions ({impressions})")]
    MoreClicksThanImpressions {
        group: &'static str,
        clicks: u64,
        impressions: u64,
    },
}

/// The uplift of `ts` over `holdout` at `confidence` (e.g. 0.95); `None` when either group has
/// no impressions.
pub fn uplift(ts: Counts, holdout: Counts, confidence: f64) -> Result<Option<Uplift>, UpliftError> {
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(UpliftError::Confidence(confidence));
    }
    for (group, c) in [("ts", ts), ("holdout", holdout)] {
        if c.clicks > c.impressions {
            return Err(UpliftError::MoreClicksThanImpressions {
                group,
                clicks: c.clicks,
                impressions: c.impressions,
            });
        }
    }
    if ts.impressions == 0 || holdout.impressions == 0 {
        return Ok(None);
    }
    let z = z_of(confidence);
    let (p1, p2) = (rate(ts), rate(holdout));
    let (l1, u1) = wilson(ts, z);
    let (l2, u2) = wilson(holdout, z);
    let d = p1 - p2;
    let difference = Interval {
        estimate: d,
        low: d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        high: d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
    };
    Ok(Some(Uplift {
        ts,
        holdout,
        ctr_ts: p1,
        ctr_holdout: p2,
        difference,
        relative: relative(ts, holdout, z),
        extra_clicks: difference.scaled(ts.impressions as f64),
    }))
}

fn rate(c: Counts) -> f64 {
    c.clicks as f64 / c.impressions as f64
}

/// The two-sided standard normal quantile for `confidence`.
pub(crate) fn z_of(confidence: f64) -> f64 {
    let normal = Normal::standard();
    normal.inverse_cdf(0.5 + confidence / 2.0)
}

/// The Wilson score interval of a rate.
fn wilson(c: Counts, z: f64) -> (f64, f64) {
    let n = c.impressions as f64;
    let p = rate(c);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The ratio of rates minus 1, with the Katz interval on the log of the ratio.
fn relative(ts: Counts, holdout: Counts, z: f64) -> Option<Interval> {
    if ts.clicks == 0 || holdout.clicks == 0 {
        return None;
    }
    let ratio = rate(ts) / rate(holdout);
    let se = (1.0 / ts.clicks as f64 - 1.0 / ts.impressions as f64 + 1.0 / holdout.clicks as f64
        - 1.0 / holdout.impressions as f64)
        .max(0.0)
        .sqrt();
    Some(Interval {
        estimate: ratio - 1.0,
        low: ratio * (-z * se).exp() - 1.0,
        high: ratio * (z * se).exp() - 1.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn draw(rng: &mut impl rand::Rng, n: u64, p: f64) -> Counts {
        let clicks = (0..n).filter(|_| rng.random::<f64>() < p).count() as u64;
        Counts::new(n, clicks)
    }

    /// Coverage by simulation at banner-like rates and sizes: the share of intervals holding
    /// the true value is near the nominal 95%, never far below.
    #[test]
    fn intervals_cover_the_true_difference_and_ratio_about_as_often_as_promised() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (n_ts, n_h, p_ts, p_h) in [
            (5_000, 500, 0.04, 0.02),
            (2_000, 2_000, 0.01, 0.01),
            (800, 200, 0.05, 0.03),
        ] {
            let trials = 2_000;
            let (mut diff, mut ratio, mut ratio_trials) = (0, 0, 0);
            for _ in 0..trials {
                let u = uplift(draw(&mut rng, n_ts, p_ts), draw(&mut rng, n_h, p_h), 0.95)
                    .unwrap()
                    .unwrap();
                diff += usize::from(u.difference.contains(p_ts - p_h));
                if let Some(r) = u.relative {
                    ratio_trials += 1;
                    ratio += usize::from(r.contains(p_ts / p_h - 1.0));
                }
            }
            let diff = diff as f64 / trials as f64;
            let ratio = ratio as f64 / ratio_trials as f64;
            assert!((0.93..=0.985).contains(&diff), "{n_ts} {n_h}: {diff}");
            assert!((0.93..=0.99).contains(&ratio), "{n_ts} {n_h}: {ratio}");
        }
    }

    #[test]
    fn the_estimates_are_the_rates_difference_ratio_and_clicks_worth() {
        let u = uplift(Counts::new(1000, 50), Counts::new(200, 5), 0.95)
            .unwrap()
            .unwrap();
        assert!((u.difference.estimate - (0.05 - 0.025)).abs() < 1e-12);
        assert!((u.relative.unwrap().estimate - 1.0).abs() < 1e-12);
        assert!((u.extra_clicks.estimate - 25.0).abs() < 1e-9);
        assert!(
            u.difference.low < u.difference.estimate && u.difference.estimate < u.difference.high
        );
        let wider = uplift(Counts::new(1000, 50), Counts::new(200, 5), 0.99)
            .unwrap()
            .unwrap();
        assert!(
            wider.difference.low < u.difference.low && wider.difference.high > u.difference.high
        );
    }

    #[test]
    fn empty_groups_zero_clicks_and_bad_input() {
        assert_eq!(uplift(Counts::new(10, 1), Counts::ZERO, 0.95), Ok(None));
        let none_clicked = uplift(Counts::new(100, 0), Counts::new(100, 0), 0.95)
            .unwrap()
            .unwrap();
        assert_eq!(none_clicked.relative, None);
        assert!(none_clicked.difference.low < 0.0 && none_clicked.difference.high > 0.0);
        assert_eq!(
            uplift(Counts::new(1, 1), Counts::new(1, 0), 1.0),
            Err(UpliftError::Confidence(1.0))
        );
        assert!(matches!(
            uplift(Counts::new(1, 2), Counts::new(1, 0), 0.95),
            Err(UpliftError::MoreClicksThanImpressions { group: "ts", .. })
        ));
    }
}
