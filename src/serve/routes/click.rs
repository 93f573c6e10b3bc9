//! `POST /v1/tenants/{tenant}/clicks`: a click on a banner that a decision showed, checked
//! against the decision's signed request_id and durable in the event log before the answer.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{optional_token, tenant_path, Shared, TenantPath};
use crate::model::{validate_name, DecisionLog, Event, EventKind, CUSTOMER_ID_MAX, REFERRER_MAX};
use crate::serve::auth::Caller;
use crate::serve::error::{ApiError, ErrorBody};
use crate::serve::events::ClickError;
use crate::serve::metrics::ClickOutcome;
use crate::serve::token::TokenError;
use crate::serve::AppState;
use crate::store::Role;
use crate::time;

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
    path: TenantPath,
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
    path: TenantPath,
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
        decision: decision
            .holdout
            .map(|holdout| DecisionLog::default().with_group(holdout))
            .unwrap_or_default(),
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
pub(in crate::serve) async fn log_click(state: &AppState, event: Event) -> Result<(), ApiError> {
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
