//! What the service knows of a slot: posteriors per city from the cache (with P(best) and
//! whether each banner may be shown now), and impressions and clicks per time bucket from the
//! store.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{blocking, bounded, optional_city, slot_path, window_minutes, Shared, SlotPath};
use crate::bandit::{prob_best, PosteriorSummary, Prior, PriorSource, SlotPriors};
use crate::model::{Counts, ALL_CITIES};
use crate::serve::auth::Caller;
use crate::serve::cache::Arms;
use crate::serve::decide::with_rng;
use crate::serve::error::{ApiError, ErrorBody};
use crate::store::Role;
use crate::time;

/// Monte Carlo draws behind each P(best).
const PBEST_DRAWS: usize = 4000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PosteriorQuery {
    /// One city, normalized and resolved through the tenant's aliases as in a decision (a city
    /// without counts shows the prior it decides from); default every city with counts, and
    /// `*` (the counts pooled over cities, never decided from).
    #[param(value_type = Option<String>)]
    pub city: Option<String>,
    /// Counts of the last N minutes only (whole buckets); default all time.
    /// A window the tenant keeps (the service's `--windows`, or one its admin keys
    /// registered); an admin key's request registers a new one (at most 4 per tenant). At
    /// least one bucket (60 minutes).
    #[param(value_type = Option<u32>, minimum = 60, maximum = 43200)]
    pub window_minutes: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BannerPosterior {
    pub banner: String,
    pub image: String,
    #[serde(flatten)]
    pub summary: PosteriorSummary,
    /// The probability that this banner has the highest CTR (Monte Carlo).
    pub p_best: f64,
    /// Whether the banner may be shown now.
    pub valid_now: bool,
    /// The prior this arm's posterior starts from (α = α0 + clicks, β = β0 + misses).
    pub prior: ArmPrior,
}

/// The prior of one arm (docs/architecture.md, "Bandit math").
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArmPrior {
    /// `hierarchical`: the banner's effect times the city's own effect; `empirical_bayes`: the
    /// banner's effect at the slot's level, as every city without counts in the slot gets it;
    /// `slot_mean`: a banner without history, the slot's mean at the city's level; `uniform`:
    /// the slot has no history, Beta(1, 1).
    pub source: PriorSource,
    pub alpha0: f64,
    pub beta0: f64,
    /// The city's effect (a factor on every banner's mean; the slot's level is 1), when the
    /// city has counts in the slot.
    pub city_effect: Option<f64>,
}

impl ArmPrior {
    fn new(priors: &SlotPriors, city: &str, banner: &str) -> Self {
        let Prior {
            alpha0,
            beta0,
            source,
        } = priors.for_arm(city, banner);
        Self {
            source,
            alpha0,
            beta0,
            city_effect: priors.cities.get(city).map(|c| c.level),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CityPosteriors {
    pub city: String,
    pub banners: Vec<BannerPosterior>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PosteriorsResponse {
    pub tenant: String,
    pub slot: String,
    pub window_minutes: Option<u32>,
    /// When the cache was loaded from the store, in IST.
    pub as_of: String,
    pub cities: Vec<CityPosteriors>,
}

fn city_posteriors(
    city: &str,
    arms: &Arms,
    priors: &SlotPriors,
    now: DateTime<Utc>,
) -> CityPosteriors {
    let p_best = with_rng(|rng| prob_best(arms.policy.samplers(), PBEST_DRAWS, rng));
    CityPosteriors {
        city: city.to_string(),
        banners: arms
            .policy
            .banners()
            .iter()
            .zip(arms.posteriors())
            .zip(&arms.counts)
            .zip(p_best)
            .map(|(((banner, posterior), &counts), p_best)| BannerPosterior {
                banner: banner.id.clone(),
                image: banner.image.clone(),
                summary: PosteriorSummary::new(counts, posterior),
                p_best,
                valid_now: banner.is_valid_at(now),
                prior: ArmPrior::new(priors, city, &banner.id),
            })
            .collect(),
    }
}

/// Posteriors of a slot per city, from the service's cache.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/slots/{slot}/posteriors",
    tag = "posteriors",
    params(
        ("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        ("slot" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        PosteriorQuery
    ),
    responses(
        (status = 200, body = PosteriorsResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn posteriors(
    State(state): Shared,
    caller: Caller,
    path: SlotPath,
    query: Result<Query<PosteriorQuery>, QueryRejection>,
) -> Result<Json<PosteriorsResponse>, ApiError> {
    let (tenant, slot) = slot_path(path)?;
    caller.require(&tenant, Role::Serve)?;
    let Query(q) = query?;
    let city = optional_city("city", q.city)?;
    let window = window_minutes(q.window_minutes.as_deref())?;
    if let Some(minutes) = window {
        let may_register = caller.role >= Role::Admin;
        state.ensure_window(&tenant, minutes, may_register).await?;
    }
    // Without a window, the posteriors decisions use (the slot's or the service's recency rule).
    let (snapshot, entry, window) = state.window_entry(&tenant, &slot, window).await?;
    let arms = entry.window(window).expect("window_entry loads the window");
    let now = Utc::now();
    let priors = &entry.priors;
    let cities = match &city {
        Some(c) => {
            let (a, shown) = arms.for_city(snapshot.resolve_city(&tenant, c));
            vec![city_posteriors(shown, a, priors, now)]
        }
        None => {
            let mut names: Vec<&String> = arms.by_city.keys().collect();
            names.sort();
            names
                .into_iter()
                .map(|c| city_posteriors(c, &arms.by_city[c], priors, now))
                .chain(std::iter::once(city_posteriors(
                    ALL_CITIES,
                    &arms.all_cities,
                    priors,
                    now,
                )))
                .collect()
        }
    };
    Ok(Json(PosteriorsResponse {
        tenant,
        slot,
        window_minutes: window,
        as_of: time::format_ist_rfc3339(snapshot.loaded_at_utc),
        cities,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// One city, normalized and resolved through the tenant's aliases; default all cities
    /// together.
    #[param(value_type = Option<String>)]
    pub city: Option<String>,
    /// How many buckets, ending at the newest bucket with data (default 168, at most 2000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 2000)]
    pub buckets: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SeriesPoint {
    /// Bucket start in IST (RFC 3339, +05:30).
    pub start: String,
    /// Impressions per banner, in the order of `banners`.
    pub impressions: Vec<u64>,
    pub clicks: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SeriesResponse {
    pub tenant: String,
    pub slot: String,
    pub city: Option<String>,
    pub bucket_minutes: u32,
    pub banners: Vec<String>,
    pub points: Vec<SeriesPoint>,
}

/// Impressions and clicks per banner and time bucket (IST), read from the store.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/slots/{slot}/series",
    tag = "posteriors",
    params(
        ("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        ("slot" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        SeriesQuery
    ),
    responses(
        (status = 200, body = SeriesResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "The store is down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn series(
    State(state): Shared,
    caller: Caller,
    path: SlotPath,
    query: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<SeriesResponse>, ApiError> {
    let (tenant, slot) = slot_path(path)?;
    caller.require(&tenant, Role::Serve)?;
    let Query(q) = query?;
    let city = optional_city("city", q.city)?;
    let count = bounded("buckets", q.buckets.as_deref(), 1, 2000)?.unwrap_or(168) as i64;
    let entry = state.slot_entry(&tenant, &slot)?;
    let city = match (city, state.cache.snapshot()) {
        (Some(c), Some(snapshot)) => Some(snapshot.resolve_city(&tenant, &c).to_string()),
        (city, _) => city,
    };
    let banners: Vec<String> = entry.config.banners.iter().map(|b| b.id.clone()).collect();
    let store = state.cache.store().clone();
    let (t, s, c) = (tenant.clone(), slot.clone(), city.clone());
    let (rows, buckets) = blocking(move || {
        let owns = |tenant: &str, shard_city: &str| {
            tenant == t && c.as_deref().is_none_or(|c| c == shard_city)
        };
        let shards = store.shards(&owns)?;
        let rows: Vec<(String, i64, Counts)> = shards
            .into_iter()
            .flat_map(|shard| shard.rows)
            .filter(|(k, _)| k.arm.slot == s && !k.is_all_time())
            .map(|(k, c)| (k.arm.banner.clone(), k.bucket, c))
            .collect();
        Ok((rows, store.buckets()?))
    })
    .await?;
    let index: BTreeMap<&str, usize> = banners
        .iter()
        .enumerate()
        .map(|(i, b)| (b.as_str(), i))
        .collect();
    let newest = rows.iter().map(|r| r.1).max();
    let mut points: BTreeMap<i64, SeriesPoint> = BTreeMap::new();
    if let Some(newest) = newest {
        let first = newest - count + 1;
        for b in first..=newest {
            points.insert(
                b,
                SeriesPoint {
                    start: time::format_ist_rfc3339(buckets.start(b)),
                    impressions: vec![0; banners.len()],
                    clicks: vec![0; banners.len()],
                },
            );
        }
        for (banner, bucket, c) in &rows {
            if let (Some(p), Some(&i)) = (points.get_mut(bucket), index.get(banner.as_str())) {
                p.impressions[i] += c.impressions;
                p.clicks[i] += c.clicks;
            }
        }
    }
    Ok(Json(SeriesResponse {
        tenant,
        slot,
        city,
        bucket_minutes: buckets.minutes(),
        banners,
        points: points.into_values().collect(),
    }))
}
