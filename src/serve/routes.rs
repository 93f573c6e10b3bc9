//! The `/v1` API: decisions, clicks, slot configuration, posteriors and series. Handlers are
//! thin: check the caller, validate the input (every error names its field), then read the
//! cache or write through the store and the event log.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::cache::{Arms, SlotEntry, Snapshot};
use super::error::{ApiError, ErrorBody};
use super::events::ClickError;
use super::metrics::ClickOutcome;
use super::token::TokenError;
use super::AppState;
use crate::bandit::{prob_best, seeded_rng, DecisionRng, PosteriorSummary};
use crate::model::{
    validate_name, validate_token, Banner, Counts, Event, EventKind, FieldError, SlotConfig,
    ALL_CITIES, CUSTOMER_ID_MAX, REFERRER_MAX,
};
use crate::store::Role;
use crate::time;

/// Banners one decision may show at most (a carousel).
pub const MAX_N: usize = 10;
/// The longest window a decision or posterior may ask for: 30 days.
pub const MAX_WINDOW_MINUTES: u32 = 43_200;
const PBEST_DRAWS: usize = 4000;

thread_local! {
    /// Each worker thread draws from its own generator: no lock, no contention.
    static RNG: RefCell<DecisionRng> = RefCell::new(seeded_rng(rand::rng().next_u64()));
}

pub(super) type Shared = State<Arc<AppState>>;
type SlotPath = Result<Path<(String, String)>, PathRejection>;

fn slot_path(path: SlotPath) -> Result<(String, String), ApiError> {
    let Path((tenant, slot)) = path?;
    validate_name("tenant", &tenant)?;
    validate_name("slot", &slot)?;
    Ok((tenant, slot))
}

fn tenant_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(tenant) = path?;
    validate_name("tenant", &tenant)?;
    Ok(tenant)
}

pub(super) fn snapshot(state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
    state.cache.snapshot().ok_or_else(|| {
        ApiError::unavailable(
            "cache_not_loaded",
            format!(
                "the posterior cache has not been loaded from the store yet{}",
                state
                    .cache
                    .last_error()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            2,
        )
    })
}

pub(super) fn slot_entry(
    snapshot: &Snapshot,
    tenant: &str,
    slot: &str,
) -> Result<Arc<SlotEntry>, ApiError> {
    snapshot.slot(tenant, slot).cloned().ok_or_else(|| {
        ApiError::not_found(
            "slot",
            format!("slot {slot:?} of tenant {tenant:?} is not configured"),
        )
    })
}

/// Reads an optional number within bounds, naming the field on error.
fn bounded(field: &str, value: Option<&str>, min: u32, max: u32) -> Result<Option<u32>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                field,
                format!("must be a whole number from {min} to {max} (got {v:?})"),
            )),
        },
    }
}

fn optional_token(
    field: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => {
            validate_token(field, &v, max)?;
            Ok(Some(v))
        }
    }
}

/// The arms for a window, loading the window into the cache first if it is new.
pub(super) async fn window_arms(
    state: &AppState,
    snapshot: Arc<Snapshot>,
    tenant: &str,
    slot: &str,
    window: Option<u32>,
) -> Result<(Arc<Snapshot>, Arc<SlotEntry>), ApiError> {
    let entry = slot_entry(&snapshot, tenant, slot)?;
    if entry.window(window).is_some() {
        return Ok((snapshot, entry));
    }
    let minutes = window.expect("all-time arms are always loaded");
    let snapshot = state
        .cache
        .ensure_window(minutes)
        .await
        .map_err(|e| match e {
            super::cache::CacheError::TooManyWindows(_) => {
                ApiError::invalid("window_minutes", e.to_string())
            }
            other => ApiError::unavailable("store_unavailable", other.to_string(), 2),
        })?;
    let entry = slot_entry(&snapshot, tenant, slot)?;
    Ok((snapshot, entry))
}

// ---------------------------------------------------------------------------------------------
// Decisions

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DecisionQuery {
    /// The visitor's city, `[a-z0-9_-]{1,64}`. A city without counts gets the slot's
    /// all-city posterior.
    #[param(required = true, value_type = String, pattern = "^[a-z0-9_-]{1,64}$", example = "pune")]
    pub city: Option<String>,
    /// The visitor, if known (at most 128 bytes, no whitespace); copied into the impressions.
    #[param(value_type = Option<String>, max_length = 128, pattern = "^\\S+$")]
    pub customer_id: Option<String>,
    /// Where the visitor came from (`ads`, `thirdparty`, `direct`, …; at most 64 bytes).
    #[param(value_type = Option<String>, max_length = 64, pattern = "^\\S+$")]
    pub referrer: Option<String>,
    /// How many distinct banners to show (a carousel), 1 to 10; default 1.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10)]
    pub n: Option<String>,
    /// Decide from the counts of the last N minutes only (whole buckets); default all time.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 43200)]
    pub window_minutes: Option<String>,
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
    pub city: String,
    /// The city whose posterior decided: the requested city, or `*` (all cities) when it has
    /// no counts yet.
    pub posterior_city: String,
    pub banners: Vec<ShownBanner>,
    /// When the decision was made, in IST (RFC 3339, +05:30).
    pub ts: String,
    pub window_minutes: Option<u32>,
}

/// Choose banners for a slot by Thompson sampling.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/slots/{slot}/decision",
    tag = "decisions",
    params(
        ("tenant" = String, Path, description = "Tenant (platform)", pattern = "^[a-z0-9_-]{1,64}$"),
        ("slot" = String, Path, description = "Banner slot", pattern = "^[a-z0-9_-]{1,64}$"),
        DecisionQuery
    ),
    responses(
        (status = 200, description = "The chosen banners and the signed request_id", body = DecisionResponse),
        (status = 400, description = "A parameter breaks a rule", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key belongs to another tenant", body = ErrorBody),
        (status = 404, description = "The slot is not configured", body = ErrorBody),
        (status = 409, description = "No banner of the slot is valid now", body = ErrorBody),
        (status = 503, description = "The posterior cache is not loaded yet", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn decision(
    State(state): Shared,
    caller: Caller,
    path: SlotPath,
    query: Result<Query<DecisionQuery>, QueryRejection>,
) -> Result<Json<DecisionResponse>, ApiError> {
    let started = Instant::now();
    let result = decide(&state, caller, path, query).await;
    match &result {
        Ok(_) => {
            state.metrics.decisions.inc();
            state
                .metrics
                .decision_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Err(_) => state.metrics.decision_errors.inc(),
    }
    result.map(Json)
}

async fn decide(
    state: &AppState,
    caller: Caller,
    path: SlotPath,
    query: Result<Query<DecisionQuery>, QueryRejection>,
) -> Result<DecisionResponse, ApiError> {
    let (tenant, slot) = slot_path(path)?;
    caller.require(&tenant, Role::Serve)?;
    let Query(q) = query?;
    let city = q
        .city
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::invalid("city", "is required"))?;
    validate_name("city", &city)?;
    let customer_id = optional_token("customer_id", q.customer_id, CUSTOMER_ID_MAX)?;
    let referrer = optional_token("referrer", q.referrer, REFERRER_MAX)?;
    let n = bounded("n", q.n.as_deref(), 1, MAX_N as u32)?.unwrap_or(1) as usize;
    let window = bounded(
        "window_minutes",
        q.window_minutes.as_deref(),
        1,
        MAX_WINDOW_MINUTES,
    )?;
    decide_and_log(
        state,
        &tenant,
        &slot,
        &city,
        n,
        window,
        customer_id,
        referrer,
    )
    .await
}

/// The decision shared by the v1 route and the seed-compatible route: draw, sign, log the
/// impressions.
#[allow(clippy::too_many_arguments)]
pub(super) async fn decide_and_log(
    state: &AppState,
    tenant: &str,
    slot: &str,
    city: &str,
    n: usize,
    window: Option<u32>,
    customer_id: Option<String>,
    referrer: Option<String>,
) -> Result<DecisionResponse, ApiError> {
    let snapshot = snapshot(state)?;
    let (_snapshot, entry) = window_arms(state, snapshot, tenant, slot, window).await?;
    let (arms, posterior_city) = entry
        .window(window)
        .expect("window_arms loads the window")
        .for_city(city);
    let now = Utc::now();
    let chosen = RNG.with(|rng| {
        let mut out = Vec::with_capacity(n);
        arms.policy
            .decide(now, n, &mut *rng.borrow_mut(), &mut out)
            .map(|()| out)
    });
    let chosen = chosen.map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_valid_banner",
            Some("slot"),
            e.to_string(),
        )
    })?;
    let banners: Vec<&Banner> = chosen
        .iter()
        .map(|&i| &arms.policy.candidates()[i].banner)
        .collect();
    let ids: Vec<&str> = banners.iter().map(|b| b.id.as_str()).collect();
    let nonce = RNG.with(|rng| rng.borrow_mut().next_u64());
    let (token, decision_id) = state.tokens.sign(tenant, slot, city, &ids, now, nonce);

    let impressions = banners
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
        })
        .collect();
    state.events.impressions(impressions);

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
    })
}

// ---------------------------------------------------------------------------------------------
// Clicks

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickRequest {
    /// The request_id of the decision that showed the banner.
    pub request_id: String,
    /// The banner clicked; it must be one the decision showed.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub banner: String,
    #[schema(max_length = 128)]
    pub customer_id: Option<String>,
    #[schema(max_length = 64)]
    pub referrer: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClickAccepted {
    pub event_id: String,
    pub tenant: String,
    pub slot: String,
    pub city: String,
    pub banner: String,
    /// The decision's ID, as written into its impressions and this click.
    pub decision_id: String,
    /// When the click was recorded, in IST.
    pub ts: String,
}

/// Record a click on a banner that a decision showed.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/clicks",
    tag = "clicks",
    params(("tenant" = String, Path, description = "Tenant (platform)", pattern = "^[a-z0-9_-]{1,64}$")),
    request_body = ClickRequest,
    responses(
        (status = 202, description = "The click is durable in the event log", body = ClickAccepted),
        (status = 400, description = "Forged or malformed request_id, or a banner the decision did not show", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key belongs to another tenant", body = ErrorBody),
        (status = 410, description = "The request_id has expired", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "The body does not have the fields of a click", body = ErrorBody),
        (status = 503, description = "The event log is down; retry after Retry-After seconds", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn click(
    State(state): Shared,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<ClickRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ClickAccepted>), ApiError> {
    let result = record_click(&state, caller, path, body).await;
    state.metrics.click(match &result {
        Ok(_) => ClickOutcome::Accepted,
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => ClickOutcome::Unavailable,
        Err(_) => ClickOutcome::Rejected,
    });
    result.map(|accepted| (StatusCode::ACCEPTED, Json(accepted)))
}

async fn record_click(
    state: &AppState,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<ClickRequest>, JsonRejection>,
) -> Result<ClickAccepted, ApiError> {
    let tenant = tenant_path(path)?;
    caller.require(&tenant, Role::Serve)?;
    let Json(body) = body?;
    validate_name("banner", &body.banner)?;
    let customer_id = optional_token("customer_id", body.customer_id, CUSTOMER_ID_MAX)?;
    let referrer = optional_token("referrer", body.referrer, REFERRER_MAX)?;
    let now = Utc::now();
    let decision = state
        .tokens
        .verify(&body.request_id, now)
        .map_err(|e| match e {
            TokenError::Expired { .. } => ApiError::new(
                StatusCode::GONE,
                "token_expired",
                Some("request_id"),
                e.to_string(),
            ),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_token",
                Some("request_id"),
                e.to_string(),
            ),
        })?;
    if decision.tenant != tenant {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            Some("request_id"),
            format!(
                "was issued for tenant {:?}, not {tenant:?}",
                decision.tenant
            ),
        ));
    }
    if !decision.banners.contains(&body.banner) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "banner_not_shown",
            Some("banner"),
            format!(
                "{:?} was not shown by this decision (it showed {})",
                body.banner,
                decision.banners.join(", ")
            ),
        ));
    }
    let event = Event {
        event_id: uuid::Uuid::new_v4().to_string(),
        kind: EventKind::Click,
        tenant: decision.tenant.clone(),
        slot: decision.slot.clone(),
        city: decision.city.clone(),
        banner: body.banner.clone(),
        ts: now,
        customer_id,
        referrer,
        request_id: Some(decision.id.clone()),
    };
    let accepted = ClickAccepted {
        event_id: event.event_id.clone(),
        tenant: event.tenant.clone(),
        slot: event.slot.clone(),
        city: event.city.clone(),
        banner: event.banner.clone(),
        decision_id: decision.id,
        ts: time::format_ist_rfc3339(now),
    };
    log_click(state, event).await?;
    Ok(accepted)
}

/// Appends a click and waits for it to be durable; a down log is a 503 with Retry-After.
pub(super) async fn log_click(state: &AppState, event: Event) -> Result<(), ApiError> {
    state
        .events
        .click(event, state.options.click_timeout)
        .await
        .map_err(|e: ClickError| {
            tracing::warn!("click not recorded: {e}");
            ApiError::unavailable(
                "event_log_unavailable",
                format!("the click was not recorded: {e}"),
                5,
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Slots

/// A banner of a slot; times are RFC 3339 with an offset or the seed's IST `DD-Mon-YY HH:MM:SS`
/// on input, IST RFC 3339 on output. Valid on `[valid_from, valid_to)`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BannerBody {
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "b01")]
    pub id: String,
    #[schema(example = "b01.svg")]
    pub image: String,
    #[schema(example = "2026-11-01T00:00:00+05:30")]
    pub valid_from: String,
    #[schema(example = "2027-12-31T23:59:59+05:30")]
    pub valid_to: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotBody {
    pub banners: Vec<BannerBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SlotResponse {
    pub tenant: String,
    pub slot: String,
    pub banners: Vec<BannerBody>,
}

impl From<&SlotConfig> for SlotResponse {
    fn from(c: &SlotConfig) -> Self {
        Self {
            tenant: c.tenant.clone(),
            slot: c.slot.clone(),
            banners: c
                .banners
                .iter()
                .map(|b| BannerBody {
                    id: b.id.clone(),
                    image: b.image.clone(),
                    valid_from: time::format_ist_rfc3339(b.valid_from),
                    valid_to: time::format_ist_rfc3339(b.valid_to),
                })
                .collect(),
        }
    }
}

fn parse_slot(tenant: &str, slot: &str, body: SlotBody) -> Result<SlotConfig, ApiError> {
    let banners = body
        .banners
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let at = |field: &str, value: &str| {
                time::parse_any(value)
                    .map_err(|e| ApiError::invalid(&format!("banners[{i}].{field}"), e.to_string()))
            };
            Ok(Banner {
                valid_from: at("valid_from", &b.valid_from)?,
                valid_to: at("valid_to", &b.valid_to)?,
                id: b.id,
                image: b.image,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let config = SlotConfig {
        tenant: tenant.to_string(),
        slot: slot.to_string(),
        banners,
    };
    config.validate().map_err(slot_field_error)?;
    Ok(config)
}

/// Slot validation speaks the CSV's column names; the JSON API's fields are named otherwise.
fn slot_field_error(e: FieldError) -> ApiError {
    let field = match e.field.as_str() {
        "imageid" => "banners[].id",
        "imagename" => "banners[].image",
        "validfrom" => "banners[].valid_from",
        "validto" => "banners[].valid_to",
        other => other,
    };
    ApiError::invalid(field, e.rule)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::unavailable("store_unavailable", e.to_string(), 5)),
        Err(e) => Err(ApiError::unavailable("store_unavailable", e.to_string(), 5)),
    }
}

/// Stores slots, then reloads the cache so that the next decision sees them.
async fn put_slots(state: &AppState, configs: Vec<SlotConfig>) -> Result<(), ApiError> {
    let store = state.cache.store().clone();
    blocking(move || configs.iter().try_for_each(|c| store.put_slot(c))).await?;
    if let Err(e) = state.cache.refresh().await {
        tracing::warn!("slot stored, cache reload failed (retried on the next refresh): {e}");
    }
    Ok(())
}

/// The configuration of a slot.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/slots/{slot}",
    tag = "slots",
    params(
        ("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        ("slot" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
    ),
    responses(
        (status = 200, body = SlotResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "The store is down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_slot(
    State(state): Shared,
    caller: Caller,
    path: SlotPath,
) -> Result<Json<SlotResponse>, ApiError> {
    let (tenant, slot) = slot_path(path)?;
    caller.require(&tenant, Role::Serve)?;
    let store = state.cache.store().clone();
    let (t, s) = (tenant.clone(), slot.clone());
    let config = blocking(move || store.slot(&t, &s)).await?.ok_or_else(|| {
        ApiError::not_found(
            "slot",
            format!("slot {slot:?} of tenant {tenant:?} is not configured"),
        )
    })?;
    Ok(Json(SlotResponse::from(&config)))
}

/// Create or replace a slot's configuration (banners left out are removed). Needs role admin.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/slots/{slot}",
    tag = "slots",
    params(
        ("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        ("slot" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
    ),
    request_body = SlotBody,
    responses(
        (status = 200, description = "Stored; decisions use it from now on", body = SlotResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Another tenant's key, or role serve", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, description = "The store is down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn put_slot(
    State(state): Shared,
    caller: Caller,
    path: SlotPath,
    body: Result<Json<SlotBody>, JsonRejection>,
) -> Result<Json<SlotResponse>, ApiError> {
    let (tenant, slot) = slot_path(path)?;
    caller.require(&tenant, Role::Admin)?;
    let Json(body) = body?;
    let config = parse_slot(&tenant, &slot, body)?;
    let response = SlotResponse::from(&config);
    put_slots(&state, vec![config]).await?;
    Ok(Json(response))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SlotSummary {
    pub slot: String,
    pub banners: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SlotList {
    pub tenant: String,
    pub slots: Vec<SlotSummary>,
}

/// Import slots from a CSV in the seed's format
/// (`platform,slotname,imageid,imagename,validfrom,validto`, IST `DD-Mon-YY HH:MM:SS`). Every
/// row's platform must be the tenant. Each slot in the file replaces its stored configuration.
/// Needs role admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/slot-imports",
    tag = "slots",
    params(("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$")),
    request_body(content = String, content_type = "text/csv"),
    responses(
        (status = 200, description = "The imported slots", body = SlotList),
        (status = 400, description = "The CSV breaks a rule (the line and column are named)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, description = "The store is down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn import_slots(
    State(state): Shared,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SlotList>, ApiError> {
    let tenant = tenant_path(path)?;
    caller.require(&tenant, Role::Admin)?;
    let body = body?;
    let configs = SlotConfig::read_csv(body.as_ref()).map_err(|e| {
        let field = match &e {
            crate::model::SlotConfigError::Row { error, .. } => error.field.clone(),
            _ => "body".into(),
        };
        ApiError::invalid(&field, e.to_string())
    })?;
    if let Some(other) = configs.iter().find(|c| c.tenant != tenant) {
        return Err(ApiError::invalid(
            "platform",
            format!(
                "the CSV has rows of platform {:?}; this endpoint imports tenant {tenant:?} only",
                other.tenant
            ),
        ));
    }
    let list = SlotList {
        tenant,
        slots: configs
            .iter()
            .map(|c| SlotSummary {
                slot: c.slot.clone(),
                banners: c.banners.len(),
            })
            .collect(),
    };
    put_slots(&state, configs).await?;
    Ok(Json(list))
}

/// The tenant's configured slots.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/slots",
    tag = "slots",
    params(("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$")),
    responses(
        (status = 200, body = SlotList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list_slots(
    State(state): Shared,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SlotList>, ApiError> {
    let tenant = tenant_path(path)?;
    caller.require(&tenant, Role::Serve)?;
    let snapshot = snapshot(&state)?;
    let mut slots: Vec<SlotSummary> = snapshot
        .slots
        .get(&tenant)
        .into_iter()
        .flatten()
        .map(|(name, entry)| SlotSummary {
            slot: name.clone(),
            banners: entry.config.banners.len(),
        })
        .collect();
    slots.sort_by(|a, b| a.slot.cmp(&b.slot));
    Ok(Json(SlotList { tenant, slots }))
}

// ---------------------------------------------------------------------------------------------
// Posteriors and series

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PosteriorQuery {
    /// One city (an unknown city gets the all-city posterior, `*`); default every city with
    /// counts, and `*`.
    #[param(value_type = Option<String>, pattern = "^[a-z0-9_-]{1,64}$")]
    pub city: Option<String>,
    /// Counts of the last N minutes only (whole buckets); default all time.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 43200)]
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

fn city_posteriors(city: &str, arms: &Arms, now: DateTime<Utc>) -> CityPosteriors {
    let p_best =
        RNG.with(|rng| prob_best(arms.policy.samplers(), PBEST_DRAWS, &mut *rng.borrow_mut()));
    CityPosteriors {
        city: city.to_string(),
        banners: arms
            .policy
            .candidates()
            .iter()
            .zip(&arms.counts)
            .zip(p_best)
            .map(|((c, &counts), p_best)| BannerPosterior {
                banner: c.banner.id.clone(),
                image: c.banner.image.clone(),
                summary: PosteriorSummary::new(counts, c.posterior),
                p_best,
                valid_now: c.banner.is_valid_at(now),
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
    let city = q.city.filter(|c| !c.is_empty());
    if let Some(c) = &city {
        validate_name("city", c)?;
    }
    let window = bounded(
        "window_minutes",
        q.window_minutes.as_deref(),
        1,
        MAX_WINDOW_MINUTES,
    )?;
    let snapshot = snapshot(&state)?;
    let (snapshot, entry) = window_arms(&state, snapshot, &tenant, &slot, window).await?;
    let arms = entry.window(window).expect("window_arms loads the window");
    let now = Utc::now();
    let cities = match &city {
        Some(c) => {
            let (a, shown) = arms.for_city(c);
            vec![city_posteriors(shown, a, now)]
        }
        None => {
            let mut names: Vec<&String> = arms.by_city.keys().collect();
            names.sort();
            names
                .into_iter()
                .map(|c| city_posteriors(c, &arms.by_city[c], now))
                .chain(std::iter::once(city_posteriors(
                    ALL_CITIES,
                    &arms.all_cities,
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
    /// One city; default all cities together.
    #[param(value_type = Option<String>, pattern = "^[a-z0-9_-]{1,64}$")]
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
    let city = q.city.filter(|c| !c.is_empty());
    if let Some(c) = &city {
        validate_name("city", c)?;
    }
    let count = bounded("buckets", q.buckets.as_deref(), 1, 2000)?.unwrap_or(168) as i64;
    let entry = slot_entry(&*snapshot(&state)?, &tenant, &slot)?;
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

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub tenant: String,
    pub role: String,
}

/// The tenant and role of the calling API key.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        tenant: caller.tenant,
        role: caller.role.as_str().to_string(),
    })
}
