//! The routes that are not about a tenant's slots: who the caller is, liveness, readiness,
//! metrics, and the JSON answers for an unknown path or method.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Shared;
use crate::serve::auth::Caller;
use crate::serve::cache::Snapshot;
use crate::serve::error::{ApiError, ErrorBody};

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

pub(super) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        Some("path"),
        format!(
            "no route {} (the API is described at /openapi.json)",
            uri.path()
        ),
    )
}

pub(super) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        Some("method"),
        format!(
            "{method} is not allowed on {} (see /openapi.json)",
            uri.path()
        ),
    )
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready`; `stale` when the cache is older than the threshold (the store is down or slow;
    /// decisions continue from the cache); `not_ready` before the first load.
    pub status: String,
    pub cache_age_seconds: Option<f64>,
    /// Seconds since a refresh last found new counts, slots or priors.
    pub cache_unchanged_seconds: Option<f64>,
    pub cache_slots: usize,
    /// The last error of a cache load, if the last load failed.
    pub store_error: Option<String>,
    pub event_log: String,
    pub event_log_up: bool,
    /// Impressions waiting in the local spool for the event log.
    pub spooled_impressions: u64,
}

/// Readiness: 200 while the service can decide (`ready` or `stale`), 503 before the first
/// cache load.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness))
)]
pub async fn readyz(State(state): Shared) -> Response {
    let snapshot = state.cache.snapshot();
    let age = snapshot.as_ref().map(|s| s.loaded_at.elapsed());
    let status = match age {
        None => "not_ready",
        Some(a) if a > state.options.stale_after => "stale",
        Some(_) => "ready",
    };
    let body = Readiness {
        status: status.into(),
        cache_age_seconds: age.map(|a| a.as_secs_f64()),
        cache_unchanged_seconds: snapshot
            .as_ref()
            .map(|s| s.changed_at.elapsed().as_secs_f64()),
        cache_slots: snapshot.as_ref().map_or(0, |s| s.slot_count()),
        store_error: state.cache.last_error(),
        event_log: state.events.log_name().to_string(),
        event_log_up: state.events.log_up(),
        spooled_impressions: state.events.spooled(),
    };
    let code = if snapshot.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String))
)]
pub async fn metrics_text(State(state): Shared) -> Response {
    let snapshot = state.cache.snapshot();
    let seconds_since = |at: fn(&Snapshot) -> std::time::Instant| {
        snapshot
            .as_deref()
            .map_or(f64::NAN, |s| at(s).elapsed().as_secs_f64())
    };
    let metrics = &state.metrics;
    metrics
        .cache_age_seconds
        .set(seconds_since(|s| s.loaded_at));
    metrics
        .cache_unchanged_seconds
        .set(seconds_since(|s| s.changed_at));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
