//! The HTTP routes: one file per resource of the `/v1` API (`decision`, `click`, `slots`,
//! `posteriors` with series, `cities` (city aliases), and `operations`: who am I, health, readiness, metrics), the router
//! that assembles them with the seed-compatible routes and the pages, and the checks the
//! handlers share. Handlers are thin: check the caller, validate the input (every error names
//! its field), then read the cache or write through the store and the event log.

pub mod cities;
pub mod click;
pub mod decision;
pub mod operations;
pub mod posteriors;
pub mod slots;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;

use super::error::ApiError;
use super::{compat, pages, AppState};
use crate::model::{normalize_city, validate_name, validate_token};
use crate::store::StoreError;

/// The longest window a decision or posterior may ask for: 30 days.
pub const MAX_WINDOW_MINUTES: u32 = 43_200;

/// Every route of the service, with its body limits.
pub fn router(state: Arc<AppState>) -> Router {
    let csv_limit = state.options.csv_limit;
    let body_limit = state.options.body_limit;
    let v1 = Router::new()
        .route("/v1/me", get(operations::me))
        .route("/v1/tenants/{tenant}/slots", get(slots::list_slots))
        .route(
            "/v1/tenants/{tenant}/slots/{slot}",
            get(slots::get_slot).put(slots::put_slot),
        )
        .route(
            "/v1/tenants/{tenant}/slots/{slot}/decision",
            get(decision::decision),
        )
        .route(
            "/v1/tenants/{tenant}/slots/{slot}/posteriors",
            get(posteriors::posteriors),
        )
        .route(
            "/v1/tenants/{tenant}/slots/{slot}/series",
            get(posteriors::series),
        )
        .route("/v1/tenants/{tenant}/clicks", post(click::click))
        .route(
            "/v1/tenants/{tenant}/city-aliases",
            get(cities::list_aliases),
        )
        .route(
            "/v1/tenants/{tenant}/city-aliases/{alias}",
            put(cities::put_alias).delete(cities::delete_alias),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(
            Router::new()
                .route(
                    "/v1/tenants/{tenant}/slot-imports",
                    post(slots::import_slots),
                )
                .route(
                    "/v1/tenants/{tenant}/city-alias-imports",
                    post(cities::import_aliases),
                )
                .layer(DefaultBodyLimit::max(csv_limit)),
        );
    let compat_routes = Router::new()
        .route("/adclick", get(compat::decision).post(compat::click))
        .route("/adclick/", get(compat::decision).post(compat::click))
        .route("/adclick/{platform}", get(compat::decision))
        .route("/adclick/{platform}/{slot}", get(compat::decision))
        .route(
            "/adclick/{platform}/{slot}/{location}",
            get(compat::decision),
        )
        .route(
            "/adclick/{platform}/{slot}/{location}/{pastmin}",
            get(compat::decision),
        )
        .layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .merge(v1)
        .merge(compat_routes)
        .merge(pages::routes())
        .route("/healthz", get(operations::healthz))
        .route("/readyz", get(operations::readyz))
        .route("/metrics", get(operations::metrics_text))
        .route("/openapi.json", get(super::openapi::document))
        .fallback(operations::not_found)
        .method_not_allowed_fallback(operations::method_not_allowed)
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_response,
        ))
        .with_state(state)
}

async fn count_response(State(state): Shared, response: Response) -> Response {
    state.metrics.responded(response.status());
    response
}

pub(super) type Shared = State<Arc<AppState>>;
type SlotPath = Result<Path<(String, String)>, PathRejection>;
type TenantPath = Result<Path<String>, PathRejection>;

fn slot_path(path: SlotPath) -> Result<(String, String), ApiError> {
    let Path((tenant, slot)) = path?;
    validate_name("tenant", &tenant)?;
    validate_name("slot", &slot)?;
    Ok((tenant, slot))
}

fn tenant_path(path: TenantPath) -> Result<String, ApiError> {
    let Path(tenant) = path?;
    validate_name("tenant", &tenant)?;
    Ok(tenant)
}

/// A query parameter or field that may be left out; empty counts as left out.
pub(super) fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// A city (normalized, `model::normalize_city`) that must be given.
pub(super) fn required_city(field: &str, value: Option<String>) -> Result<String, ApiError> {
    let city = given(value).ok_or_else(|| ApiError::invalid(field, "is required"))?;
    Ok(normalize_city(field, &city)?.into_owned())
}

/// A city (normalized) that may be left out.
pub(super) fn optional_city(
    field: &str,
    value: Option<String>,
) -> Result<Option<String>, ApiError> {
    given(value)
        .map(|c| Ok(normalize_city(field, &c)?.into_owned()))
        .transpose()
}

/// A free-form token (no white space, at most `max` bytes) that may be left out.
pub(super) fn optional_token(
    field: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    let token = given(value);
    if let Some(t) = &token {
        validate_token(field, t, max)?;
    }
    Ok(token)
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

/// The `window_minutes` parameter of decisions and posteriors; `None` is all time.
fn window_minutes(value: Option<&str>) -> Result<Option<u32>, ApiError> {
    bounded("window_minutes", value, 1, MAX_WINDOW_MINUTES)
}

/// Runs a store call off the serving thread; a store error is a 503.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::unavailable("store_unavailable", e.to_string(), 5)),
        Err(e) => Err(ApiError::unavailable("store_unavailable", e.to_string(), 5)),
    }
}
