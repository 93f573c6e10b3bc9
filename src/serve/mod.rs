//! The lookup service (DESIGN.md §6): an axum app that decides from an in-memory posterior
//! cache, signs each decision, logs impressions and clicks to the event log, and serves the
//! demo page, the dashboard, metrics and its OpenAPI document.
//!
//! One module per concern: `routes` (the /v1 API), `compat` (the seed's /adclick routes),
//! `auth` (API keys), `token` (signed request_ids), `cache` (posteriors), `events` and `spool`
//! (impressions and clicks to the log), `metrics`, `pages` (embedded HTML/JS), `openapi`, and
//! `audience` (a simulated audience that uses the HTTP API).

pub mod auth;
pub mod cache;
pub mod compat;
pub mod error;
pub mod events;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod routes;
pub mod spool;
pub mod token;
pub mod workers;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Serialize;
use utoipa::ToSchema;

use self::auth::KeyCache;
use self::cache::PosteriorCache;
use self::error::ApiError;
use self::events::EventSink;
use self::metrics::Metrics;
use self::spool::{Spool, SpoolError};
use self::token::TokenSigner;
use crate::source::EventLog;
use crate::store::{PosteriorStore, StoreError};

/// The store metadata key of the token secret shared by every replica (hex).
pub const META_TOKEN_SECRET: &str = "token_secret";

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How often the posterior cache is reloaded from the store.
    pub refresh: Duration,
    /// How long after a decision its clicks are accepted.
    pub token_ttl_secs: u64,
    /// How long a click waits for the event log before answering 503.
    pub click_timeout: Duration,
    /// Tenants for which the seed-compatible /adclick routes (no key, no token) are on.
    pub compat_tenants: BTreeSet<String>,
    /// A cache older than this makes /readyz report `stale`.
    pub stale_after: Duration,
    /// Windows (minutes) kept in the cache from the start.
    pub windows: Vec<u32>,
    /// Largest accepted JSON body, in bytes.
    pub body_limit: usize,
    /// Largest accepted slot CSV, in bytes.
    pub csv_limit: usize,
    /// Where impressions wait while the event log is down.
    pub spool_dir: PathBuf,
    /// Serving threads, each with its own share of the connections.
    pub threads: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            refresh: Duration::from_millis(500),
            token_ttl_secs: 24 * 3600,
            click_timeout: Duration::from_secs(10),
            compat_tenants: BTreeSet::new(),
            stale_after: Duration::from_secs(30),
            windows: vec![720],
            body_limit: 16 * 1024,
            csv_limit: 1024 * 1024,
            spool_dir: PathBuf::from("slotbandit-spool"),
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("token secret: {0}")]
    Secret(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything a handler needs.
pub struct AppState {
    pub cache: Arc<PosteriorCache>,
    pub keys: KeyCache,
    pub events: EventSink,
    pub tokens: TokenSigner,
    pub metrics: Arc<Metrics>,
    pub options: ServeOptions,
}

/// The token secret: `explicit` when given, else the store's, made and stored on first use so
/// that every replica on the same store signs alike.
pub fn token_secret(
    store: &dyn PosteriorStore,
    explicit: Option<&str>,
) -> Result<Vec<u8>, ServeError> {
    if let Some(s) = explicit {
        if s.len() < 32 {
            return Err(ServeError::Secret(format!(
                "must be at least 32 bytes (got {})",
                s.len()
            )));
        }
        return Ok(s.as_bytes().to_vec());
    }
    if let Some(hex_secret) = store.meta(META_TOKEN_SECRET)? {
        return hex::decode(hex_secret.trim()).map_err(|e| {
            ServeError::Secret(format!(
                "store metadata `{META_TOKEN_SECRET}` is not hex: {e}"
            ))
        });
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    store.set_meta(META_TOKEN_SECRET, &hex::encode(secret))?;
    Ok(secret.to_vec())
}

/// A running service: its state and the cache refresher.
pub struct Service {
    state: Arc<AppState>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Builds the state, loads the cache once (a store that is down now is retried by the
    /// refresher) and starts the refresher and the impression appender. Call inside a Tokio
    /// runtime.
    pub async fn start(
        store: Arc<dyn PosteriorStore>,
        log: Arc<dyn EventLog>,
        secret: &[u8],
        options: ServeOptions,
    ) -> Result<Service, ServeError> {
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(&options.spool_dir)?;
        metrics.spool_pending.set(spool.pending() as i64);
        let events = EventSink::start(log, spool, metrics.clone())?;
        let cache = Arc::new(PosteriorCache::new(store, options.windows.iter().copied()));
        let state = Arc::new(AppState {
            cache,
            keys: KeyCache::new(),
            events,
            tokens: TokenSigner::new(secret, options.token_ttl_secs),
            metrics,
            options,
        });
        refresh_once(&state).await;
        let refresher = tokio::spawn(refresh_loop(state.clone()));
        Ok(Service { state, refresher })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then sends or spools every queued
    /// impression.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let threads = self.state.options.threads;
        let served = workers::serve_on_threads(listener, self.router(), threads, shutdown).await;
        self.refresher.abort();
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.events.shutdown())
            .await
            .ok();
        served
    }
}

async fn refresh_once(state: &AppState) {
    match state.cache.refresh().await {
        Ok(snapshot) => {
            state.metrics.cache_refreshes.inc();
            state.metrics.cache_slots.set(snapshot.slot_count() as i64);
        }
        Err(e) => {
            state.metrics.cache_refresh_failures.inc();
            tracing::warn!("posterior cache not refreshed (deciding from the previous one): {e}");
        }
    }
}

async fn refresh_loop(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.options.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        refresh_once(&state).await;
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let csv_limit = state.options.csv_limit;
    let body_limit = state.options.body_limit;
    let v1 = Router::new()
        .route("/v1/me", get(routes::me))
        .route("/v1/tenants/{tenant}/slots", get(routes::list_slots))
        .route(
            "/v1/tenants/{tenant}/slots/{slot}",
            get(routes::get_slot).put(routes::put_slot),
        )
        .route(
            "/v1/tenants/{tenant}/slots/{slot}/decision",
            get(routes::decision),
        )
        .route(
            "/v1/tenants/{tenant}/slots/{slot}/posteriors",
            get(routes::posteriors),
        )
        .route(
            "/v1/tenants/{tenant}/slots/{slot}/series",
            get(routes::series),
        )
        .route("/v1/tenants/{tenant}/clicks", post(routes::click))
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(
            Router::new()
                .route(
                    "/v1/tenants/{tenant}/slot-imports",
                    post(routes::import_slots),
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
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
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

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
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

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
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

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready`; `stale` when the cache is older than the threshold (the store is down or slow;
    /// decisions continue from the cache); `not_ready` before the first load.
    pub status: String,
    pub cache_age_seconds: Option<f64>,
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
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
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
pub async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let age = state.cache.age().map_or(f64::NAN, |a| a.as_secs_f64());
    state.metrics.cache_age_seconds.set(age);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
