//! The seed prototype's routes, so that its page and clients keep working:
//! `GET /adclick/{platform}/{slot}/{location}/{pastmin}` (every part optional from the right;
//! defaults ajio, hero, bangalore, 720) answers `{"key": banner, "value": image}` and logs an
//! impression; `POST /adclick/?bannerid=&location=&clicked=&customerid=&platform=&slot=&referral=`
//! records a click. Names are normalized as the prototype's routes did (trimmed and lowercased,
//! [`normalize_name`]): the GET route's location only, the click route's every name; a location
//! is a city, normalized by the city rule ([`normalize_city`]) as everywhere. These routes
//! carry no key and no token, so they are off unless the service enables them for a tenant
//! (`--compat-tenant`). Unlike the prototype, errors are 4xx JSON, and `pastmin` picks one of
//! a fixed set of windows ([`WINDOWS`]) instead of any number of minutes.

use std::collections::BTreeSet;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::decide::{decide, DecisionRequest};
use super::error::{ApiError, ErrorBody};
use super::routes::click::log_click;
use super::routes::{given, optional_token, Shared, MAX_WINDOW_MINUTES};
use crate::model::{
    normalize_city, normalize_name, validate_name, Event, EventKind, CUSTOMER_ID_MAX, REFERRER_MAX,
};

const DEFAULTS: [&str; 4] = ["ajio", "hero", "bangalore", "720"];

/// The windows kept for a tenant of these routes (those within the store's retention): a
/// `pastmin` is answered from the shortest of them at least as long, or the longest, so that
/// requests without a key cannot make the service keep windows of their choosing.
pub const WINDOWS: [u32; 5] = [60, 180, 720, 1440, 2880];

/// The kept window that answers for `pastmin`.
fn window_for(pastmin: u32, kept: &BTreeSet<u32>) -> Option<u32> {
    kept.range(pastmin..)
        .next()
        .or_else(|| kept.last())
        .copied()
}

/// The prototype's answer: the banner and its image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

fn enabled(state: &super::AppState, tenant: &str) -> Result<(), ApiError> {
    if state.options.compat_tenants.contains(tenant) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "compat_disabled",
            Some("platform"),
            format!(
                "the seed-compatible routes are not enabled for {tenant:?} (serve --compat-tenant {tenant}); use /v1 with an API key"
            ),
        ))
    }
}

/// The prototype's decision: one banner for a platform, slot and location, from the posterior
/// over the last `pastmin` minutes.
#[utoipa::path(
    get,
    path = "/adclick/{platform}/{slot}/{location}/{pastmin}",
    tag = "seed-compatible",
    params(
        ("platform" = String, Path, description = "Tenant; default ajio", pattern = "^[a-z0-9_-]{1,64}$"),
        ("slot" = String, Path, description = "Slot; default hero", pattern = "^[a-z0-9_-]{1,64}$"),
        ("location" = String, Path, description = "City, trimmed and lowercased as the prototype did; default bangalore"),
        ("pastmin" = u32, Path, description = "Window in minutes; default 720. Answered from the shortest kept window (60, 180, 720, 1440 or 2880 minutes, within the store's retention) at least this long, or the longest", minimum = 1, maximum = 43200),
    ),
    responses(
        (status = 200, body = KeyValue),
        (status = 400, body = ErrorBody), (status = 403, description = "Not enabled for the platform", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
pub async fn decision(
    State(state): Shared,
    path: Result<Path<Vec<String>>, PathRejection>,
) -> Result<Json<KeyValue>, ApiError> {
    let parts = match path {
        Ok(Path(parts)) => parts,
        // `/adclick` itself: every part takes its default.
        Err(PathRejection::MissingPathParams(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let part = |i: usize| parts.get(i).map(String::as_str).unwrap_or(DEFAULTS[i]);
    let (tenant, slot) = (part(0), part(1));
    validate_name("platform", tenant)?;
    validate_name("slot", slot)?;
    let city = &normalize_city("location", part(2))?;
    let pastmin = match part(3).parse::<u32>() {
        Ok(m) if (1..=MAX_WINDOW_MINUTES).contains(&m) => m,
        _ => {
            return Err(ApiError::invalid(
                "pastmin",
                format!(
                    "must be a whole number of minutes from 1 to {MAX_WINDOW_MINUTES} (got {:?})",
                    part(3)
                ),
            ))
        }
    };
    enabled(&state, tenant)?;
    let kept = state.cache.kept_windows(tenant);
    let request = DecisionRequest {
        tenant,
        slot,
        city,
        n: 1,
        window: window_for(pastmin, &kept),
        customer_id: None,
        referrer: None,
    };
    let decision = decide(&state, request).await?;
    let shown = &decision.banners[0];
    Ok(Json(KeyValue {
        key: shown.banner.clone(),
        value: shown.image.clone(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClickQuery {
    /// The banner clicked (trimmed and lowercased, like every name of this route).
    #[param(required = true, value_type = String)]
    pub bannerid: Option<String>,
    /// The city.
    #[param(required = true, value_type = String)]
    pub location: Option<String>,
    /// 1 (or true, yes) for a click; 0 (false, no) records nothing.
    #[param(value_type = Option<String>, example = "1")]
    pub clicked: Option<String>,
    #[param(value_type = Option<String>, max_length = 128)]
    pub customerid: Option<String>,
    /// Tenant; default ajio.
    #[param(value_type = Option<String>)]
    pub platform: Option<String>,
    /// Slot; default hero.
    #[param(value_type = Option<String>)]
    pub slot: Option<String>,
    /// The referrer (`ads`, `thirdparty`, …).
    #[param(value_type = Option<String>, max_length = 64)]
    pub referral: Option<String>,
}

fn required(field: &str, value: Option<String>) -> Result<String, ApiError> {
    given(value).ok_or_else(|| ApiError::invalid(field, "is required"))
}

/// The prototype's click: records a click on a banner of the slot (durable before the answer).
#[utoipa::path(
    post,
    path = "/adclick/",
    tag = "seed-compatible",
    params(ClickQuery),
    responses(
        (status = 200, description = "`[{\"key\": \"200\", \"value\": \"Record updated successfully\"}]`", body = Vec<KeyValue>),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
pub async fn click(
    State(state): Shared,
    query: Result<Query<ClickQuery>, QueryRejection>,
) -> Result<Json<Vec<KeyValue>>, ApiError> {
    let Query(q) = query?;
    // The prototype's click route lowercased every name it was given.
    let tenant = normalize_name(
        "platform",
        &given(q.platform).unwrap_or_else(|| DEFAULTS[0].into()),
    )?;
    let slot = normalize_name("slot", &given(q.slot).unwrap_or_else(|| DEFAULTS[1].into()))?;
    let banner = normalize_name("bannerid", &required("bannerid", q.bannerid)?)?;
    let city = normalize_city("location", &required("location", q.location)?)?.into_owned();
    let clicked = match q.clicked.as_deref().unwrap_or("1") {
        "1" | "true" | "yes" => true,
        "0" | "false" | "no" => false,
        other => {
            return Err(ApiError::invalid(
                "clicked",
                format!(
                    "must be 1, true or yes for a click, 0, false or no for none (got {other:?})"
                ),
            ))
        }
    };
    let customer_id = optional_token("customerid", q.customerid, CUSTOMER_ID_MAX)?;
    let referrer = optional_token("referral", q.referral, REFERRER_MAX)?;
    enabled(&state, &tenant)?;
    let entry = state.slot_entry(&tenant, &slot)?;
    if !entry.config.banners.iter().any(|b| b.id == banner) {
        return Err(ApiError::not_found(
            "bannerid",
            format!("{banner:?} is not a banner of {tenant}/{slot}"),
        ));
    }
    if clicked {
        let event = Event {
            event_id: uuid::Uuid::new_v4().to_string(),
            kind: EventKind::Click,
            tenant,
            slot,
            city,
            banner,
            ts: Utc::now(),
            customer_id,
            referrer,
            request_id: None,
            decision: Default::default(),
        };
        log_click(&state, event).await?;
    }
    Ok(Json(vec![KeyValue {
        key: "200".into(),
        value: "Record updated successfully".into(),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pastmin_takes_the_shortest_kept_window_at_least_as_long_or_the_longest() {
        let kept = BTreeSet::from([60, 720, 1440]);
        let answered: Vec<_> = [1, 60, 61, 720, 721, 1440, 43200]
            .iter()
            .map(|&m| window_for(m, &kept))
            .collect();
        let expected = [60, 60, 720, 720, 1440, 1440, 1440].map(Some);
        assert_eq!(answered, expected);
        assert_eq!(window_for(30, &BTreeSet::new()), None, "all time");
    }
}
