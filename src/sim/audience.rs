//! A simulated audience for the demo: visitors arrive at a steady rate, each from a city drawn
//! by the generator's traffic shares, ask the service for a banner over HTTP, and click with the
//! banner's true CTR from _truth.json. It uses the public API like any site would, so watching it
//! learn is watching the real service, job and store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use serde::Deserialize;

use crate::bandit::DecisionRng;
use crate::eval::{uplift, Uplift};
use crate::model::Counts;
use crate::synth::Truth;

#[derive(Debug, Clone)]
pub struct AudienceSpec {
    /// The service, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// A `serve` key of `tenant`.
    pub key: String,
    pub tenant: String,
    /// Visitors per second.
    pub rate: f64,
    pub seed: u64,
}

/// What the audience did, updated as it goes.
#[derive(Debug, Default)]
pub struct AudienceStats {
    pub visits: AtomicU64,
    pub clicks: AtomicU64,
    pub errors: AtomicU64,
    /// Sum of the shown banners' true CTRs, and of the best banners' (×1e6, for regret).
    pub expected_clicks_micro: AtomicU64,
    pub best_clicks_micro: AtomicU64,
    /// The visits whose decision was Thompson sampling's, and the holdout's.
    pub ts: GroupStats,
    pub holdout: GroupStats,
}

/// One group of decisions (TS or holdout): what the audience saw and clicked.
#[derive(Debug, Default)]
pub struct GroupStats {
    pub visits: AtomicU64,
    pub clicks: AtomicU64,
    /// Sum of the shown banners' true CTRs (×1e6).
    pub expected_clicks_micro: AtomicU64,
}

impl GroupStats {
    pub fn counts(&self) -> Counts {
        Counts::new(
            self.visits.load(Ordering::Relaxed),
            self.clicks.load(Ordering::Relaxed),
        )
    }

    /// The mean true CTR of the banners shown to this group (0 before any visit).
    pub fn true_ctr(&self) -> f64 {
        let visits = self.visits.load(Ordering::Relaxed);
        self.expected_clicks_micro.load(Ordering::Relaxed) as f64 / 1e6 / visits.max(1) as f64
    }
}

impl AudienceStats {
    /// TS's uplift over the holdout from the clicks the audience made, with a 95% interval
    /// (`None` until both groups have visits).
    pub fn uplift(&self) -> Option<Uplift> {
        // Clicks are counted after their visit, so the counts are always valid.
        uplift(self.ts.counts(), self.holdout.counts(), 0.95)
            .ok()
            .flatten()
    }

    /// What the uplift is on the truth: the mean true CTR of the banners TS showed minus the
    /// holdout's.
    pub fn true_difference(&self) -> f64 {
        self.ts.true_ctr() - self.holdout.true_ctr()
    }

    /// The share of the best banners' expected clicks that the shown banners earned so far.
    pub fn efficiency(&self) -> f64 {
        let got = self.expected_clicks_micro.load(Ordering::Relaxed) as f64;
        let best = self.best_clicks_micro.load(Ordering::Relaxed) as f64;
        if best > 0.0 {
            got / best
        } else {
            0.0
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error("_truth.json has no arms of tenant {0:?}")]
    NoArms(String),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

#[derive(Deserialize)]
struct Decision {
    request_id: String,
    banners: Vec<Shown>,
    #[serde(default)]
    holdout: bool,
}

#[derive(Deserialize)]
struct Shown {
    banner: String,
}

/// (slot, city) → banner → true CTR
type Ctrs = HashMap<(String, String), HashMap<String, f64>>;

/// Runs until `stop` resolves. Visits whose request fails are counted as errors and skipped.
pub async fn run(
    spec: AudienceSpec,
    truth: &Truth,
    stats: Arc<AudienceStats>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AudienceError> {
    let mut ctrs: Ctrs = HashMap::new();
    for a in truth.arms.iter().filter(|a| a.tenant == spec.tenant) {
        ctrs.entry((a.slot.clone(), a.city.clone()))
            .or_default()
            .insert(a.banner.clone(), a.ctr);
    }
    let mut slots: Vec<String> = ctrs.keys().map(|(s, _)| s.clone()).collect();
    slots.sort();
    slots.dedup();
    if slots.is_empty() {
        return Err(AudienceError::NoArms(spec.tenant.clone()));
    }
    let cities: Vec<(String, f64)> = truth.city_traffic_share.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut rng = <DecisionRng as SeedableRng>::seed_from_u64(spec.seed);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {}
        }
        let slot = &slots[rng.random_range(0..slots.len())];
        let city = pick_city(&cities, rng.random::<f64>());
        let Some(truth_ctrs) = ctrs.get(&(slot.clone(), city.to_string())) else {
            continue;
        };
        match visit(&client, &spec, slot, city, truth_ctrs, &mut rng, &stats).await {
            Ok(()) => {}
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("audience visit failed: {e}");
            }
        }
    }
}

fn pick_city(cities: &[(String, f64)], u: f64) -> &str {
    let total: f64 = cities.iter().map(|c| c.1).sum();
    let mut acc = 0.0;
    for (city, share) in cities {
        acc += share / total;
        if u < acc {
            return city;
        }
    }
    &cities.last().expect("truth has cities").0
}

async fn visit(
    client: &reqwest::Client,
    spec: &AudienceSpec,
    slot: &str,
    city: &str,
    ctrs: &HashMap<String, f64>,
    rng: &mut DecisionRng,
    stats: &AudienceStats,
) -> Result<(), reqwest::Error> {
    let base = spec.base_url.trim_end_matches('/');
    let decision: Decision = client
        .get(format!(
            "{base}/v1/tenants/{}/slots/{slot}/decision",
            spec.tenant
        ))
        .query(&[("city", city)])
        .bearer_auth(&spec.key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    stats.visits.fetch_add(1, Ordering::Relaxed);
    let group = if decision.holdout {
        &stats.holdout
    } else {
        &stats.ts
    };
    group.visits.fetch_add(1, Ordering::Relaxed);
    let banner = &decision.banners[0].banner;
    let ctr = ctrs.get(banner).copied().unwrap_or(0.0);
    let best = ctrs.values().copied().fold(0.0, f64::max);
    let micro = (ctr * 1e6) as u64;
    stats
        .expected_clicks_micro
        .fetch_add(micro, Ordering::Relaxed);
    group
        .expected_clicks_micro
        .fetch_add(micro, Ordering::Relaxed);
    stats
        .best_clicks_micro
        .fetch_add((best * 1e6) as u64, Ordering::Relaxed);
    if rng.random::<f64>() < ctr {
        client
            .post(format!("{base}/v1/tenants/{}/clicks", spec.tenant))
            .bearer_auth(&spec.key)
            .json(&serde_json::json!({"request_id": decision.request_id, "banner": banner}))
            .send()
            .await?
            .error_for_status()?;
        stats.clicks.fetch_add(1, Ordering::Relaxed);
        group.clicks.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cities_are_drawn_by_share() {
        let cities = vec![("a".to_string(), 3.0), ("b".to_string(), 1.0)];
        assert_eq!(pick_city(&cities, 0.0), "a");
        assert_eq!(pick_city(&cities, 0.74), "a");
        assert_eq!(pick_city(&cities, 0.76), "b");
        assert_eq!(pick_city(&cities, 0.9999), "b");
    }
}
