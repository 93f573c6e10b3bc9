//! Slot configuration: read, replace, list, and import the seed's CSV. Writes go to the store,
//! then reload the cache so that the next decision sees them.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{blocking, slot_path, tenant_path, Shared, SlotPath, TenantPath};
use crate::model::{Banner, FieldError, Recency, SlotConfig, SlotConfigError, SlotRules};
use crate::serve::auth::Caller;
use crate::serve::error::{ApiError, ErrorBody};
use crate::serve::{window_error, AppState};
use crate::store::Role;
use crate::time;

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
    /// Decide from the counts of the last this many minutes when a decision request names no
    /// window: 60 to 43200, or 0 for all-time counts; absent follows the service's
    /// `--recency-minutes`. A window must fit in the store's retention.
    #[schema(minimum = 0, maximum = 43200, example = 1440)]
    pub recency_minutes: Option<u32>,
    /// The share of decisions made uniformly at random among the valid banners and flagged
    /// as holdout (to measure what Thompson sampling earns), 0 to 0.5; default 0.
    #[schema(minimum = 0.0, maximum = 0.5, example = 0.1)]
    pub holdout: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SlotResponse {
    pub tenant: String,
    pub slot: String,
    pub banners: Vec<BannerBody>,
    /// The slot's recency rule (0: all time); null follows the service's default.
    pub recency_minutes: Option<u32>,
    /// The holdout share, 0 to 0.5.
    pub holdout: f64,
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
            recency_minutes: c.rules.recency.map(Recency::minutes),
            holdout: c.rules.holdout_share(),
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
    let recency = body
        .recency_minutes
        .map(|m| Recency::from_minutes("recency_minutes", m))
        .transpose()
        .map_err(slot_field_error)?;
    let holdout_bp = body
        .holdout
        .map(|share| SlotRules::holdout_from_share("holdout", share))
        .transpose()
        .map_err(slot_field_error)?
        .unwrap_or(0);
    let config = SlotConfig {
        tenant: tenant.to_string(),
        slot: slot.to_string(),
        banners,
        rules: SlotRules {
            recency,
            holdout_bp,
        },
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

/// Stores slots, then reloads the cache so that the next decision sees them. A slot's recency
/// window is checked against the store's buckets and retention, and kept, first.
async fn put_slots(state: &AppState, configs: Vec<SlotConfig>) -> Result<(), ApiError> {
    for c in &configs {
        if let Some(minutes) = c.rules.recency.and_then(Recency::window) {
            state
                .cache
                .keep_slot_window(&c.tenant, minutes)
                .await
                .map_err(|e| window_error("recency_minutes", e))?;
        }
    }
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
    let config = blocking(move || store.slot(&t, &s))
        .await?
        .ok_or_else(|| ApiError::slot_not_configured(&tenant, &slot))?;
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
    path: TenantPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SlotList>, ApiError> {
    let tenant = tenant_path(path)?;
    caller.require(&tenant, Role::Admin)?;
    let body = body?;
    let configs = SlotConfig::read_csv(body.as_ref()).map_err(|e| {
        let field = match &e {
            SlotConfigError::Row { error, .. } => error.field.clone(),
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
    path: TenantPath,
) -> Result<Json<SlotList>, ApiError> {
    let tenant = tenant_path(path)?;
    caller.require(&tenant, Role::Serve)?;
    let snapshot = state.snapshot()?;
    let mut slots: Vec<SlotSummary> = snapshot
        .slots
        .get(&tenant)
        .into_iter()
        .flat_map(|slots| slots.iter())
        .map(|(name, entry)| SlotSummary {
            slot: name.clone(),
            banners: entry.config.banners.len(),
        })
        .collect();
    slots.sort_by(|a, b| a.slot.cmp(&b.slot));
    Ok(Json(SlotList { tenant, slots }))
}
