//! `slotbandit serve`: the lookup service over a store and an event log.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use slotbandit::serve::cache::TenantScope;
use slotbandit::serve::{propensity, record_token_lifetime, token_secret, ServeOptions, Service};
use slotbandit::source::open_log;
use slotbandit::store::{open_store_for, StoreUse};

use super::flags::{self, LogArg, StoreArg};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Where impressions and clicks go.
    #[command(flatten)]
    log: LogArg,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// How often the posterior cache checks the store for changes (and reads them), in milliseconds.
    #[arg(long, default_value_t = slotbandit::serve::DEFAULT_REFRESH_MS, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    refresh_ms: u64,
    /// How long after a decision its clicks are accepted, in seconds.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    token_ttl_secs: u64,
    /// The secret that signs request_ids (at least 32 bytes); default: the store's, made on
    /// first start, so that replicas on one store agree.
    #[arg(long, env = "SLOTBANDIT_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Enable the seed-compatible /adclick routes (no key, no token) for a tenant; repeatable.
    #[arg(long = "compat-tenant", value_parser = flags::name)]
    compat_tenants: Vec<String>,
    /// Where impressions wait while the event log is down.
    #[arg(long, default_value = "slotbandit-spool")]
    spool_dir: PathBuf,
    /// Windows (minutes) kept in the cache from the start, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "720", value_parser = clap::value_parser!(u32).range(1..=43_200))]
    windows: Vec<u32>,
    /// The recency rule of slots that set none (a slot sets its own through the admin API or
    /// the slot CSV's `recency_minutes`): decisions without a window use the counts of the last
    /// this many minutes (60 to 43200, at most the store's retention), or 0 for all-time counts.
    #[arg(long = "recency-minutes", default_value = "0", value_parser = flags::recency)]
    recency: slotbandit::model::Recency,
    /// Largest accepted JSON body, in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    body_limit: usize,
    /// Serving threads, each a single-threaded runtime owning its share of the connections
    /// (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// Load and serve only these tenants, comma-separated (replicas that split the tenants);
    /// requests for others get 404. Default: every tenant in the store.
    #[arg(long, value_delimiter = ',', value_parser = flags::name)]
    tenants: Vec<String>,
    /// Share of one core that decisions may spend computing the propensities impressions log
    /// (0 to 64; 0 logs none). A propensity is computed once per banner until the posteriors
    /// change; beyond the share, impressions are logged without one and counted in
    /// slotbandit_propensities_skipped_total.
    #[arg(long, default_value_t = slotbandit::serve::DEFAULT_PROPENSITY_CPU, value_parser = flags::cpu_share)]
    propensity_cpu: f64,
    /// Niceness of the thread that computes propensities, off the decisions' path: 19 (the
    /// default, and on Linux the idle scheduling class) gives it only CPU that decisions leave
    /// spare, so a saturated service logs
    /// impressions without propensities rather than answer fewer decisions; 0 gives it the
    /// service's priority. Impressions wait for it at most a second.
    #[arg(long, default_value_t = propensity::DEFAULT_PROPENSITY_NICE,
          value_parser = clap::value_parser!(i32).range(
              i64::from(*propensity::PROPENSITY_NICE.start())..=i64::from(*propensity::PROPENSITY_NICE.end())))]
    propensity_nice: i32,
}

impl ServeArgs {
    pub fn options(&self) -> ServeOptions {
        let defaults = ServeOptions::default();
        ServeOptions {
            refresh: Duration::from_millis(self.refresh_ms),
            token_ttl_secs: self.token_ttl_secs,
            compat_tenants: self.compat_tenants.iter().cloned().collect::<BTreeSet<_>>(),
            windows: self.windows.clone(),
            recency: self.recency,
            body_limit: self.body_limit,
            spool_dir: self.spool_dir.clone(),
            threads: self.threads.map_or(defaults.threads, usize::from),
            propensity_cpu: self.propensity_cpu,
            propensity_nice: self.propensity_nice,
            tenants: if self.tenants.is_empty() {
                TenantScope::All
            } else {
                TenantScope::Only(self.tenants.iter().cloned().collect())
            },
            ..defaults
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Accepts, refreshes the cache and waits for signals; requests run on the serving threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store: Arc<dyn slotbandit::store::PosteriorStore> =
        Arc::from(open_store_for(&args.store.store, true, StoreUse::Lookup)?);
    let log = open_log(&args.log.log)?;
    let secret = token_secret(store.as_ref(), args.token_secret.as_deref())?;
    record_token_lifetime(store.as_ref(), args.token_ttl_secs)?;
    runtime.block_on(async {
        let service = Service::start(store, log, &secret, args.options()).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))?;
        let addr = listener.local_addr()?;
        // Tests and scripts read this line to find the port (with --listen 127.0.0.1:0).
        println!("listening on http://{addr}");
        tracing::info!(
            "serving {} with events to {} (demo page http://{addr}/, dashboard http://{addr}/dashboard)",
            args.store.store,
            args.log.log
        );
        service.serve(listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
