//! `GET /v1/tenants/{tenant}/slots/{slot}/decision`: checks the caller and the query, then
//! decides (see `serve::decide`) and counts the answer in the metrics.

use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{bounded, optional_token, required_city, slot_path, window_minutes, Shared, SlotPath};
use crate::model::{CUSTOMER_ID_MAX, REFERRER_MAX};
use crate::serve::auth::Caller;
use crate::serve::decide::{decide, DecisionRequest, DecisionResponse, MAX_N};
use crate::serve::error::{ApiError, ErrorBody};
use crate::serve::AppState;
use crate::store::Role;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DecisionQuery {
    /// The visitor's city as the site has it (`Pune`, `New Delhi`), normalized (case, spaces
    /// and punctuation folded: `new_delhi`) and then resolved through the tenant's city aliases.
    /// A city without counts gets the slot's all-city posterior.
    #[param(required = true, value_type = String, example = "New Delhi")]
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
    /// A window the tenant keeps (the service's `--windows`, or one its admin keys
    /// registered); an admin key's request registers a new one (at most 4 per tenant). At
    /// least one bucket (60 minutes).
    #[param(value_type = Option<u32>, minimum = 60, maximum = 43200)]
    pub window_minutes: Option<String>,
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
    let result = checked_decision(&state, caller, path, query).await;
    match &result {
        Ok(answer) => {
            state.metrics.decided(&answer.tenant);
            state
                .metrics
                .decision_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Err(_) => state.metrics.decision_errors.inc(),
    }
    result.map(Json)
}

/// The decision for a request whose caller and query pass their checks.
async fn checked_decision(
    state: &AppState,
    caller: Caller,
    path: SlotPath,
    query: Result<Query<DecisionQuery>, QueryRejection>,
) -> Result<DecisionResponse, ApiError> {
    let (tenant, slot) = slot_path(path)?;
    caller.require(&tenant, Role::Serve)?;
    let Query(q) = query?;
    let city = required_city("city", q.city)?;
    let customer_id = optional_token("customer_id", q.customer_id, CUSTOMER_ID_MAX)?;
    let referrer = optional_token("referrer", q.referrer, REFERRER_MAX)?;
    let n = bounded("n", q.n.as_deref(), 1, MAX_N as u32)?.unwrap_or(1) as usize;
    let window = window_minutes(q.window_minutes.as_deref())?;
    if let Some(minutes) = window {
        let may_register = caller.role >= Role::Admin;
        state.ensure_window(&tenant, minutes, may_register).await?;
    }
    let request = DecisionRequest {
        tenant: &tenant,
        slot: &slot,
        city: &city,
        n,
        window,
        customer_id,
        referrer,
    };
    decide(state, request).await
}
