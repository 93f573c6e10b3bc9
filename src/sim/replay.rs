//! Off-policy evaluation on logged bandit data in the Open Bandit Dataset's CSV format.
//!
//! Mapping to our model: an OBD campaign is a slot, an item a banner, a position a carousel
//! position (1, 2, 3); every row is one impression with its click and the logging policy's
//! propensity of showing that item at that position.
//!
//! - Replay (Li et al. 2011), on uniform-random logs only: the policy under test runs through the
//!   log in time order; a row counts when the policy's choice for the row's position is the
//!   logged item, and only counted rows update the policy.
//! - IPW: a fixed policy (Thompson sampling over posteriors learned on the first half of the log,
//!   or uniform) scored on the second half, weighting each click by π(item | position) over the
//!   logged propensity; π of Thompson sampling is its probability of ranking the item at that
//!   position, by Monte Carlo over the same `thompson_select` draws the service makes.
//!
//! Intervals are percentile bootstraps over rows.

use std::path::Path;

use rand::{Rng, RngExt};
use serde::Serialize;

use crate::bandit::{empirical_bayes, thompson_select, BannerCounts, BetaPosterior, BetaSampler};
use crate::model::Counts;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading {path}: {source}")]
    Csv { path: String, source: csv::Error },
    #[error("{path}: missing column {column:?}")]
    MissingColumn { path: String, column: &'static str },
    #[error("{path} line {line}: {message}")]
    BadRow {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{0}: the log has no rows")]
    Empty(String),
}

/// One logged impression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggedRow {
    pub item: usize,
    /// Carousel position, 0-based.
    pub position: usize,
    pub click: bool,
    pub propensity: f64,
}

/// A campaign's log: rows in time order, the number of items and positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub rows: Vec<LoggedRow>,
    pub items: usize,
    pub positions: usize,
}

impl Log {
    pub fn observed_ctr(&self) -> f64 {
        self.rows.iter().filter(|r| r.click).count() as f64 / self.rows.len().max(1) as f64
    }
}

/// Reads an OBD campaign CSV (columns timestamp, item_id, position, click, propensity_score, …;
/// positions 1-based), sorted by timestamp.
pub fn read_obd_csv(path: &Path) -> Result<Log, ReplayError> {
    let shown = path.display().to_string();
    let csv_err = |source| ReplayError::Csv {
        path: shown.clone(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_err)?;
    let headers = reader.headers().map_err(csv_err)?.clone();
    let column = |name: &'static str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or(ReplayError::MissingColumn {
                path: shown.clone(),
                column: name,
            })
    };
    let (ts, item, position, click, propensity) = (
        column("timestamp")?,
        column("item_id")?,
        column("position")?,
        column("click")?,
        column("propensity_score")?,
    );
    let mut rows: Vec<(String, LoggedRow)> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(csv_err)?;
        let line = i as u64 + 2;
        let bad = |message: String| ReplayError::BadRow {
            path: shown.clone(),
            line,
            message,
        };
        let field = |c: usize| record.get(c).unwrap_or("");
        let item: usize = field(item)
            .parse()
            .map_err(|_| bad(format!("item_id {:?} is not an index", field(item))))?;
        let position: usize = field(position)
            .parse()
            .ok()
            .filter(|&p: &usize| p >= 1)
            .ok_or_else(|| bad(format!("position {:?} is not 1, 2, …", field(position))))?;
        let click = match field(click) {
            "0" => false,
            "1" => true,
            other => return Err(bad(format!("click {other:?} is not 0 or 1"))),
        };
        let propensity: f64 = field(propensity)
            .parse()
            .ok()
            .filter(|p: &f64| *p > 0.0 && *p <= 1.0)
            .ok_or_else(|| {
                bad(format!(
                    "propensity_score {:?} is not in (0, 1]",
                    field(propensity)
                ))
            })?;
        rows.push((
            field(ts).to_string(),
            LoggedRow {
                item,
                position: position - 1,
                click,
                propensity,
            },
        ));
    }
    if rows.is_empty() {
        return Err(ReplayError::Empty(shown));
    }
    // ISO timestamps of one format sort as text; the sort is stable for equal times.
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let rows: Vec<LoggedRow> = rows.into_iter().map(|(_, r)| r).collect();
    let items = rows.iter().map(|r| r.item).max().unwrap_or(0) + 1;
    let positions = rows.iter().map(|r| r.position).max().unwrap_or(0) + 1;
    Ok(Log {
        rows,
        items,
        positions,
    })
}

/// An estimate with its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub ctr: f64,
    pub low: f64,
    pub high: f64,
    /// Rows the estimate rests on (matched rows for replay).
    pub rows: usize,
}

/// Percentile bootstrap of `statistic` over resampled `values`.
pub fn bootstrap<R: Rng + ?Sized>(
    values: &[f64],
    resamples: usize,
    rng: &mut R,
    statistic: impl Fn(&[f64]) -> f64,
) -> Estimate {
    let ctr = statistic(values);
    if values.is_empty() {
        return Estimate {
            ctr: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
            rows: 0,
        };
    }
    let mut sample = vec![0.0; values.len()];
    let mut stats: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            for s in sample.iter_mut() {
                *s = values[rng.random_range(0..values.len())];
            }
            statistic(&sample)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let q = |p: f64| stats[((p * (stats.len() - 1) as f64).round() as usize).min(stats.len() - 1)];
    Estimate {
        ctr,
        low: q(0.025),
        high: q(0.975),
        rows: values.len(),
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The logged policy's own CTR with its interval.
pub fn observed<R: Rng + ?Sized>(log: &Log, resamples: usize, rng: &mut R) -> Estimate {
    let clicks: Vec<f64> = log
        .rows
        .iter()
        .map(|r| f64::from(u8::from(r.click)))
        .collect();
    bootstrap(&clicks, resamples, rng, mean)
}

/// Replay of online Thompson sampling (Beta(1, 1) per (position, item), refreshed every
/// `refresh` matched rows) on a uniform-random log. Returns the matched rows' clicks.
pub fn replay_thompson<R: Rng + ?Sized>(log: &Log, refresh: u64, rng: &mut R) -> Vec<f64> {
    let mut counts = vec![vec![Counts::ZERO; log.items]; log.positions];
    let sampler = |c: Counts| {
        BetaPosterior::uniform()
            .updated(c.impressions, c.clicks)
            .distribution()
    };
    let mut samplers: Vec<Vec<BetaSampler>> = counts
        .iter()
        .map(|row| row.iter().map(|&c| sampler(c)).collect())
        .collect();
    let mut chosen = Vec::with_capacity(1);
    let mut matched = Vec::new();
    let mut since_refresh = 0;
    for row in &log.rows {
        thompson_select(&samplers[row.position], |_| true, 1, rng, &mut chosen);
        if chosen.first() != Some(&row.item) {
            continue;
        }
        matched.push(f64::from(u8::from(row.click)));
        counts[row.position][row.item] += Counts::new(1, u64::from(row.click));
        since_refresh += 1;
        if since_refresh >= refresh.max(1) {
            since_refresh = 0;
            for (p, row_counts) in counts.iter().enumerate() {
                for (i, &c) in row_counts.iter().enumerate() {
                    samplers[p][i] = sampler(c);
                }
            }
        }
    }
    matched
}

/// Replay of uniform A/B: the matched rows' clicks.
pub fn replay_uniform<R: Rng + ?Sized>(log: &Log, rng: &mut R) -> Vec<f64> {
    log.rows
        .iter()
        .filter(|r| rng.random_range(0..log.items) == r.item)
        .map(|r| f64::from(u8::from(r.click)))
        .collect()
}

/// π(item | position) of Thompson sampling that ranks `positions` items by one draw per item
/// from `samplers` (`thompson_select` with n = positions), by Monte Carlo.
pub fn thompson_rank_probabilities<R: Rng + ?Sized>(
    samplers: &[BetaSampler],
    positions: usize,
    draws: usize,
    rng: &mut R,
) -> Vec<Vec<f64>> {
    let mut freq = vec![vec![0.0; samplers.len()]; positions];
    let mut out = Vec::with_capacity(positions);
    for _ in 0..draws {
        thompson_select(samplers, |_| true, positions, rng, &mut out);
        for (p, &item) in out.iter().enumerate() {
            freq[p][item] += 1.0;
        }
    }
    for row in &mut freq {
        for f in row.iter_mut() {
            *f /= draws.max(1) as f64;
        }
    }
    freq
}

/// The posteriors Thompson sampling would hold after `rows`: empirical-Bayes priors from the
/// item counts pooled over positions (docs/architecture.md, "Bandit math"), plus each item's counts.
pub fn trained_samplers(rows: &[LoggedRow], items: usize, prior_strength: f64) -> Vec<BetaSampler> {
    let mut counts = vec![(0u64, 0u64); items];
    for r in rows {
        counts[r.item].0 += 1;
        counts[r.item].1 += u64::from(r.click);
    }
    let named: Vec<BannerCounts> = counts
        .iter()
        .enumerate()
        .map(|(i, &(impressions, clicks))| BannerCounts {
            banner: i.to_string(),
            impressions,
            clicks,
        })
        .collect();
    let priors = empirical_bayes(&named, prior_strength);
    counts
        .iter()
        .enumerate()
        .map(|(i, &(n, k))| {
            priors
                .for_banner(&i.to_string())
                .posterior(n, k)
                .distribution()
        })
        .collect()
}

/// IPW terms π(item | position) · click / propensity of `rows`, for a target policy given as
/// π per position and item.
pub fn ipw_terms(rows: &[LoggedRow], target: &[Vec<f64>]) -> Vec<f64> {
    rows.iter()
        .map(|r| {
            let pi = target
                .get(r.position)
                .and_then(|p| p.get(r.item))
                .copied()
                .unwrap_or(0.0);
            pi * f64::from(u8::from(r.click)) / r.propensity
        })
        .collect()
}
