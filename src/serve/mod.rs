//! The lookup service (docs/architecture.md, "Lookup service"): an axum app that decides from an
//! in-memory posterior cache, signs each decision, logs impressions and clicks to the event log,
//! and serves the demo page, the dashboard, metrics and its OpenAPI document.
//!
//! One module per concern: `routes` (the /v1 API and the router), `decide` (the decision both
//! APIs make), `compat` (the seed's /adclick routes), `auth` (API keys), `token` (signed
//! request_ids), `cache` (posteriors), `events` and `spool` (impressions and clicks to the log),
//! `propensity` and `budget` (the propensities impressions log, computed off the decisions'
//! path), `error` (the JSON error answer), `metrics`, `pages` (embedded HTML/JS), `openapi`, and
//! `workers` (the serving threads). This file holds the options, the state every handler reads,
//! and the service's start, refresh and stop.

pub mod auth;
pub mod budget;
pub mod cache;
pub mod compat;
pub mod decide;
pub mod error;
pub mod events;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod propensity;
pub mod routes;
pub mod spool;
pub mod token;
pub mod workers;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rand::Rng;

use self::auth::KeyCache;
use self::cache::{CacheError, KeptWindows, PosteriorCache, SlotEntry, Snapshot, TenantScope};
use self::error::ApiError;
use self::events::EventSink;
use self::metrics::Metrics;
use self::propensity::PropensityStage;
use self::spool::{Spool, SpoolError};
use self::token::TokenSigner;
use crate::model::Recency;
use crate::source::EventLog;
use crate::store::{PosteriorStore, StoreError, META_TOKEN_TTL_SECS};

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
    /// The recency rule of slots that set none (a window is kept for every tenant).
    pub recency: Recency,
    /// Largest accepted JSON body, in bytes.
    pub body_limit: usize,
    /// Largest accepted slot CSV, in bytes.
    pub csv_limit: usize,
    /// Where impressions wait while the event log is down.
    pub spool_dir: PathBuf,
    /// Serving threads, each with its own share of the connections.
    pub threads: usize,
    /// The tenants this replica loads and serves (others get 404).
    pub tenants: TenantScope,
    /// Share of one core that decisions may spend computing the propensities they log
    /// (`serve::budget`); beyond it impressions are logged without one.
    pub propensity_cpu: f64,
    /// Niceness of the thread computing propensities (`serve::propensity`): 0 (the service's
    /// priority) to 19 (only spare CPU).
    pub propensity_nice: i32,
}

/// How often the service checks the store for changes unless told otherwise. A stored click
/// reaches decisions within the stream job's epoch (250 ms), this interval and one refresh; a
/// check that finds nothing reads one marker on the embedded store and one versions partition
/// per served tenant on Cassandra.
pub const DEFAULT_REFRESH_MS: u64 = 250;

/// The share of one core decisions may spend on propensities unless told otherwise.
pub const DEFAULT_PROPENSITY_CPU: f64 = 0.25;

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            refresh: Duration::from_millis(DEFAULT_REFRESH_MS),
            token_ttl_secs: 24 * 3600,
            click_timeout: Duration::from_secs(10),
            compat_tenants: BTreeSet::new(),
            stale_after: Duration::from_secs(30),
            windows: vec![720],
            recency: Recency::AllTime,
            body_limit: 16 * 1024,
            csv_limit: 1024 * 1024,
            spool_dir: PathBuf::from("slotbandit-spool"),
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            tenants: TenantScope::All,
            propensity_cpu: DEFAULT_PROPENSITY_CPU,
            propensity_nice: propensity::DEFAULT_PROPENSITY_NICE,
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
    #[error(transparent)]
    Propensity(#[from] propensity::PropensityError),
    #[error("token lifetime: {0}")]
    TokenLifetime(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything a handler needs.
pub struct AppState {
    pub cache: Arc<PosteriorCache>,
    pub keys: KeyCache,
    pub events: Arc<EventSink>,
    pub tokens: TokenSigner,
    pub metrics: Arc<Metrics>,
    pub options: ServeOptions,
    pub propensities: PropensityStage,
}

impl AppState {
    /// The cache as last loaded; 503 before the first load.
    fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        self.cache.snapshot().ok_or_else(|| {
            ApiError::unavailable(
                "cache_not_loaded",
                format!(
                    "the posterior cache has not been loaded from the store yet{}",
                    self.cache
                        .last_error()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                2,
            )
        })
    }

    /// A configured slot of the cache; 404 when it is not configured.
    fn slot_entry(&self, tenant: &str, slot: &str) -> Result<Arc<SlotEntry>, ApiError> {
        let snapshot = self.snapshot()?;
        self.entry_of(&snapshot, tenant, slot)
    }

    /// A slot of `snapshot`; 404 when it is not configured or its tenant is not served here.
    fn entry_of(
        &self,
        snapshot: &Snapshot,
        tenant: &str,
        slot: &str,
    ) -> Result<Arc<SlotEntry>, ApiError> {
        if let TenantScope::Only(served) = &self.options.tenants {
            if !served.contains(tenant) {
                let served: Vec<&str> = served.iter().map(String::as_str).collect();
                return Err(ApiError::not_found(
                    "tenant",
                    format!(
                        "tenant {tenant:?} is not served by this replica (it serves {})",
                        served.join(", ")
                    ),
                ));
            }
        }
        snapshot
            .slot(tenant, slot)
            .cloned()
            .ok_or_else(|| ApiError::slot_not_configured(tenant, slot))
    }

    /// A slot with its arms for `window` loaded (`None` = all time), loading a new window into
    /// the cache first; the snapshot is the one the arms come from.
    /// Makes sure `minutes` is kept for `tenant` (registering it when `may_register`, for
    /// admin callers) and returns a snapshot holding it.
    async fn ensure_window(
        &self,
        tenant: &str,
        minutes: u32,
        may_register: bool,
    ) -> Result<Arc<Snapshot>, ApiError> {
        self.cache
            .ensure_window(tenant, minutes, may_register)
            .await
            .map_err(|e| window_error("window_minutes", e))
    }

    /// The slot's entry holding the window a decision uses: the request's, else the slot's
    /// recency rule, else the service's; returned beside the snapshot and the entry.
    async fn window_entry(
        &self,
        tenant: &str,
        slot: &str,
        requested: Option<u32>,
    ) -> Result<(Arc<Snapshot>, Arc<SlotEntry>, Option<u32>), ApiError> {
        let snapshot = self.snapshot()?;
        let entry = self.entry_of(&snapshot, tenant, slot)?;
        let window = match requested {
            Some(minutes) => Some(minutes),
            None => entry
                .config
                .rules
                .recency
                .unwrap_or(self.options.recency)
                .window(),
        };
        if entry.window(window).is_some() {
            return Ok((snapshot, entry, window));
        }
        let minutes = window.expect("all-time arms are always loaded");
        let snapshot = if requested.is_some() {
            self.ensure_window(tenant, minutes, false).await?
        } else {
            // A slot's rule written to the store directly (`slotbandit slots import`).
            self.cache
                .keep_slot_window(tenant, minutes)
                .await
                .map_err(|e| window_error("recency_minutes", e))?;
            self.cache
                .refresh()
                .await
                .map_err(|e| ApiError::unavailable("store_unavailable", e.to_string(), 2))?
                .snapshot
        };
        let entry = self.entry_of(&snapshot, tenant, slot)?;
        Ok((snapshot, entry, window))
    }
}

/// A window refused (a 400 naming `field`) or the store unavailable.
pub(crate) fn window_error(field: &str, e: CacheError) -> ApiError {
    match e {
        CacheError::TooManyWindows { .. }
        | CacheError::WindowNotKept { .. }
        | CacheError::WindowBelowBucket { .. }
        | CacheError::WindowBeyondRetention { .. } => ApiError::invalid(field, e.to_string()),
        other => ApiError::unavailable("store_unavailable", other.to_string(), 2),
    }
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
    let held = match store.meta(META_TOKEN_SECRET)? {
        Some(held) => held,
        None => {
            // Replicas starting together on a new store each make one; the first stored is
            // every one's.
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            store.claim_meta(META_TOKEN_SECRET, &hex::encode(secret))?
        }
    };
    hex::decode(held.trim()).map_err(|e| {
        ServeError::Secret(format!(
            "store metadata `{META_TOKEN_SECRET}` is not hex: {e}"
        ))
    })
}

/// Records the lifetime of the tokens this service signs, unless the store records a longer one
/// (another replica's): the stream job remembers clicks at least that long, so that a click
/// replayed at any time while its token is valid counts once.
/// Every step is atomic, so replicas starting together with different lifetimes leave the
/// longest recorded (a plain read-then-write could leave the shorter).
pub fn record_token_lifetime(store: &dyn PosteriorStore, secs: u64) -> Result<(), ServeError> {
    let value = secs.to_string();
    let mut held = store.claim_meta(META_TOKEN_TTL_SECS, &value)?;
    // Each failed replacement means another replica raised it: at most one try per replica.
    for _ in 0..LIFETIME_ATTEMPTS {
        if held
            .trim()
            .parse::<u64>()
            .is_ok_and(|recorded| recorded >= secs)
        {
            return Ok(());
        }
        held = store.replace_meta(META_TOKEN_TTL_SECS, &held, &value)?;
    }
    Err(ServeError::TokenLifetime(format!(
        "store metadata `{META_TOKEN_TTL_SECS}` changed {LIFETIME_ATTEMPTS} times while this \
         replica recorded {secs} s (it holds {held:?})"
    )))
}

/// How often [`record_token_lifetime`] tries to raise the recorded lifetime.
const LIFETIME_ATTEMPTS: usize = 32;

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
        let events = Arc::new(EventSink::start(log, spool, metrics.clone())?);
        let propensities = PropensityStage::start(
            budget::CpuBudget::new(options.propensity_cpu, metrics.propensities_skipped.clone()),
            events.clone(),
            options.propensity_nice,
        )?;
        options.tenants.check(store.as_ref())?;
        let cache = Arc::new(PosteriorCache::new(
            store,
            KeptWindows::service(
                options
                    .windows
                    .iter()
                    .copied()
                    .chain(options.recency.window()),
            ),
            options.tenants.clone(),
        ));
        cache.check_windows()?;
        for tenant in &options.compat_tenants {
            cache.keep_fixed(tenant, &compat::WINDOWS)?;
        }
        let state = Arc::new(AppState {
            cache,
            keys: KeyCache::new(),
            events,
            tokens: TokenSigner::new(secret, options.token_ttl_secs),
            propensities,
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
        routes::router(self.state.clone())
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
        tokio::task::spawn_blocking(move || {
            state.propensities.shutdown();
            state.events.shutdown();
        })
        .await
        .ok();
        served
    }
}

async fn refresh_once(state: &AppState) {
    match state.cache.refresh().await {
        Ok(refreshed) => {
            if refreshed.shards > 0 {
                tracing::debug!(
                    shards = refreshed.shards,
                    seconds = refreshed.seconds,
                    "posterior cache refreshed"
                );
            }
            let metrics = &state.metrics;
            metrics.cache_refreshes.inc();
            metrics.cache_refresh_seconds.observe(refreshed.seconds);
            metrics
                .cache_refresh_changed_shards
                .observe(refreshed.shards as f64);
            metrics
                .cache_slots
                .set(refreshed.snapshot.slot_count() as i64);
            metrics.cache_arms.set(refreshed.snapshot.arms as i64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    #[test]
    fn the_longest_token_lifetime_of_the_replicas_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"), true).unwrap();
        for (secs, recorded) in [(3600, "3600"), (86_400, "86400"), (600, "86400")] {
            record_token_lifetime(&store, secs).unwrap();
            assert_eq!(
                store.meta(META_TOKEN_TTL_SECS).unwrap().as_deref(),
                Some(recorded)
            );
        }
        store.set_meta(META_TOKEN_TTL_SECS, "not a number").unwrap();
        record_token_lifetime(&store, 60).unwrap();
        assert_eq!(
            store.meta(META_TOKEN_TTL_SECS).unwrap().as_deref(),
            Some("60")
        );
    }

    #[test]
    fn replicas_recording_together_leave_the_longest_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"), true).unwrap();
        let lifetimes = [600, 86_400, 3600, 7200, 60, 43_200];
        std::thread::scope(|s| {
            for secs in lifetimes {
                let store = &store;
                s.spawn(move || record_token_lifetime(store, secs).unwrap());
            }
        });
        assert_eq!(
            store.meta(META_TOKEN_TTL_SECS).unwrap().as_deref(),
            Some("86400")
        );
    }
}
