//! The decision itself, shared by the v1 route and the seed-compatible route: a Thompson draw
//! over the slot's banners valid now, a signed request_id, and one impression per banner shown,
//! queued for the event log. The routes check the request; this is the hot path (see
//! bench/README.md), so it allocates only what the answer and the impressions need.

use std::cell::RefCell;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::token::Shown;
use super::AppState;
use crate::bandit::{seeded_rng, ComputeBudget, DecisionRng, KnownOnly, SlotPolicy};
use crate::model::{Banner, DecisionLog, Event, EventKind, RANK_MAX};
use crate::time;

/// Banners one decision may show at most (a carousel).
pub const MAX_N: usize = RANK_MAX as usize;

/// The version of the decision rule impressions log beside its name: raised whenever the way a
/// decision is drawn changes, so that evaluations can tell logs of different rules apart.
pub const POLICY_VERSION: u32 = 1;

thread_local! {
    /// Each worker thread draws from its own generator: no lock, no contention.
    static RNG: RefCell<DecisionRng> = RefCell::new(seeded_rng(rand::rng().next_u64()));
}

/// Runs `draw` with this thread's generator.
pub(super) fn with_rng<T>(draw: impl FnOnce(&mut DecisionRng) -> T) -> T {
    RNG.with(|rng| draw(&mut rng.borrow_mut()))
}

/// A checked request for a decision: names already validated, `n` within 1..=[`MAX_N`].
#[derive(Debug)]
pub struct DecisionRequest<'a> {
    pub tenant: &'a str,
    pub slot: &'a str,
    pub city: &'a str,
    /// How many distinct banners to show.
    pub n: usize,
    /// Decide from the counts of the last `window` minutes; `None` follows the slot's recency
    /// rule, then the service's.
    pub window: Option<u32>,
    /// Copied into the impressions.
    pub customer_id: Option<String>,
    pub referrer: Option<String>,
}

/// A banner chosen by a decision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShownBanner {
    pub banner: String,
    /// The image file name or URL from the slot configuration.
    pub image: String,
    /// 1 for the best draw.
    pub rank: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionResponse {
    /// The signed decision token; send it back with a click.
    pub request_id: String,
    pub tenant: String,
    pub slot: String,
    /// The requested city, normalized and resolved through the tenant's aliases: the arm's city.
    pub city: String,
    /// The city whose posterior decided: always the (resolved) city itself, a city without
    /// counts by its prior alone (`*`, the pooled posterior, is no longer decided from).
    pub posterior_city: String,
    pub banners: Vec<ShownBanner>,
    /// When the decision was made, in IST (RFC 3339, +05:30).
    pub ts: String,
    /// The window the counts came from: the request's, else the slot's recency rule, else the
    /// service's; null for all-time counts.
    pub window_minutes: Option<u32>,
    /// A holdout decision: banners drawn uniformly at random (the slot's holdout share).
    pub holdout: bool,
}

/// Draws the banners, signs the decision and queues its impressions.
pub(super) async fn decide(
    state: &AppState,
    request: DecisionRequest<'_>,
) -> Result<DecisionResponse, ApiError> {
    let DecisionRequest {
        tenant,
        slot,
        city,
        n,
        window,
        customer_id,
        referrer,
    } = request;
    let (snapshot, entry, window) = state.window_entry(tenant, slot, window).await?;
    // One place, one arm: an alias decides, and is counted, as its canonical city.
    let city = snapshot.resolve_city(tenant, city);
    let (arms, posterior_city) = entry
        .window(window)
        .expect("window_entry loads the window")
        .for_city(city);
    let now = Utc::now();
    let holdout_share = entry.config.rules.holdout_share();
    let chosen = with_rng(|rng| {
        let holdout = holdout_share > 0.0 && rng.random::<f64>() < holdout_share;
        let mut out = Vec::with_capacity(n);
        let decided = if holdout {
            arms.policy.decide_uniformly(now, n, rng, &mut out)
        } else {
            arms.policy.decide(now, n, rng, &mut out)
        };
        decided.map(|()| (out, holdout))
    });
    let chosen = chosen.map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_valid_banner",
            Some("slot"),
            e.to_string(),
        )
    })?;
    let (chosen, holdout) = chosen;
    let banners: Vec<&Banner> = chosen.iter().map(|&i| &arms.policy.banners()[i]).collect();
    let ids: Vec<&str> = banners.iter().map(|b| b.id.as_str()).collect();
    let nonce = with_rng(|rng| rng.next_u64());
    let shown = Shown {
        tenant,
        slot,
        city,
        banners: &ids,
        holdout,
    };
    let (token, decision_id) = state.tokens.sign(&shown, now, nonce);

    let impressions: Vec<Event> = banners
        .iter()
        .map(|b| Event {
            event_id: uuid::Uuid::new_v4().to_string(),
            kind: EventKind::Impression,
            tenant: tenant.to_string(),
            slot: slot.to_string(),
            city: city.to_string(),
            banner: b.id.clone(),
            ts: now,
            customer_id: customer_id.clone(),
            referrer: referrer.clone(),
            request_id: Some(decision_id.clone()),
            decision: DecisionLog::default(),
        })
        .collect();
    let logging = Logging {
        now,
        n,
        holdout_share,
        holdout,
    };
    let known = logging.propensities(&arms.policy, &chosen, &KnownOnly);
    if known.iter().all(|d| d.propensity.is_some()) {
        state.events.impressions(logged(impressions, known));
    } else {
        let (entry, city) = (entry.clone(), city.to_string());
        state.propensities.complete(Box::new(move |budget| {
            let (arms, _) = entry
                .window(window)
                .expect("window_entry loads the window")
                .for_city(&city);
            logged(
                impressions,
                logging.propensities(&arms.policy, &chosen, budget),
            )
        }));
    }

    Ok(DecisionResponse {
        request_id: token,
        tenant: tenant.to_string(),
        slot: slot.to_string(),
        city: city.to_string(),
        posterior_city: posterior_city.to_string(),
        banners: banners
            .iter()
            .enumerate()
            .map(|(i, b)| ShownBanner {
                banner: b.id.clone(),
                image: b.image.clone(),
                rank: i as u32 + 1,
            })
            .collect(),
        ts: time::format_ist_rfc3339(now),
        window_minutes: window,
        holdout,
    })
}

/// How a decision was made, as its impressions log it.
struct Logging {
    now: DateTime<Utc>,
    n: usize,
    holdout_share: f64,
    holdout: bool,
}

impl Logging {
    /// What each banner of `chosen` logs: the probability that the slot's policy — Thompson
    /// sampling with `holdout_share` of decisions drawn uniformly instead — shows it at its
    /// rank, with the error bound (both absent when `budget` refused the computation), the
    /// decision's group, the policy version and the rank.
    fn propensities(
        &self,
        policy: &SlotPolicy,
        chosen: &[usize],
        budget: &dyn ComputeBudget,
    ) -> Vec<DecisionLog> {
        let (thompson, valid) =
            with_rng(|rng| policy.propensities(self.now, self.n, chosen, rng, budget));
        let uniform = 1.0 / valid.max(1) as f64;
        let share = self.holdout_share;
        thompson
            .into_iter()
            .enumerate()
            .map(|(rank, known)| {
                let mixed = known.map(|(p, error)| {
                    let propensity = share * uniform + (1.0 - share) * p;
                    (
                        propensity.clamp(f64::MIN_POSITIVE, 1.0),
                        ((1.0 - share) * error).min(1.0),
                    )
                });
                DecisionLog {
                    policy_version: Some(POLICY_VERSION),
                    propensity: mixed.map(|m| m.0),
                    propensity_error: mixed.map(|m| m.1),
                    rank: Some(rank as u8 + 1),
                    ..DecisionLog::default()
                }
                .with_group(self.holdout)
            })
            .collect()
    }
}

/// The impressions with what each logs of its decision.
fn logged(mut impressions: Vec<Event>, decisions: Vec<DecisionLog>) -> Vec<Event> {
    for (impression, decision) in impressions.iter_mut().zip(decisions) {
        impression.decision = decision;
    }
    impressions
}
