//! `slotbandit stream`: the event log counted into the store, epoch by epoch, with exactly-once
//! effect across restarts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{ArgAction, Args};
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::dataflow::{
    run_stream, stream_start, ClickLatency, Cluster, Readiness, RepeatWindows, StreamJob,
    StreamMetrics, StreamReport,
};
use slotbandit::source::{open_log, EventLog};
use slotbandit::store::{open_store, PosteriorStore};
use slotbandit::time::Retention;

use super::flags;

/// The checkpoint name of the stream job unless `--name` says otherwise.
pub const DEFAULT_JOB_NAME: &str = "stream";

#[derive(Args)]
#[command(
    disable_help_flag = true,
    after_help = "Malformed messages are not counted: they go, with the reason, to the \
                  dead-letter log (Kafka: topic TOPIC-dlq, one partition with TOPIC's replicas; \
                  file log: the folder PATH/dlq); `slotbandit consume --print messages --log` on that \
                  topic or folder reads them."
)]
pub struct StreamArgs {
    #[command(flatten)]
    pub log: flags::LogArg,
    #[command(flatten)]
    pub store: flags::StoreArg,
    #[command(flatten)]
    pub cluster: flags::ClusterArgs,
    #[command(flatten)]
    pub options: StreamOptions,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// The stream job's settings, shared with `backfill --then-stream`.
#[derive(Args, Clone)]
pub struct StreamOptions {
    /// The name the job's checkpoints are kept under (one per job reading the log).
    #[arg(long = "name", default_value = DEFAULT_JOB_NAME, value_parser = flags::name)]
    pub job_name: String,
    /// How often an epoch closes, in milliseconds.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub epoch_ms: u64,
    /// Drop events with a timestamp before this instant (RFC 3339, or IST DD-Mon-YY HH:MM:SS).
    #[arg(long, value_parser = flags::instant)]
    pub cutoff: Option<DateTime<Utc>>,
    /// How many minutes of clicks to remember to count a (request_id, banner) once. A click may
    /// be replayed as long as its decision token is valid, so the job remembers at least the
    /// token lifetime that `serve` records in the store (`--token-ttl-secs`), and the default is
    /// that flag's default (24 h). Each remembered click costs memory, and a restart re-reads
    /// this much of the log.
    #[arg(long, default_value_t = 1440, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub click_dedup_minutes: u64,
    /// How many minutes of impressions to remember to count a (request_id, banner) once. A
    /// service re-sends impressions whose append to the log timed out (the log may hold them
    /// after all); a copy that arrives within this much event time of its decision is dropped.
    /// Cover the longest log outage a service's spool should ride out; each remembered
    /// impression costs about 50 bytes.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub impression_dedup_minutes: u64,
    /// Hours of per-bucket counts to keep (the all-time counts keep everything): at least the
    /// longest window the service answers. Also what `backfill` keeps.
    #[arg(long = "retention-hours", default_value = "48", value_parser = flags::retention_hours)]
    pub retention: Retention,
    /// Do not write events with a customer ID to the customer history.
    #[arg(long)]
    pub no_customer_events: bool,
    /// Stop once everything the log held at start is counted (catch-up runs, tests).
    #[arg(long)]
    pub stop_at_end: bool,
    /// Serve the job's Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464), and
    /// its readiness at /readyz.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// /readyz answers 503 while a partition is more records than this behind the log's end.
    #[arg(long, default_value = "10000")]
    pub ready_max_lag: u64,
    #[command(flatten)]
    pub priors: super::priors::PriorOptions,
}

pub fn run(args: StreamArgs) -> anyhow::Result<()> {
    let cluster = args.cluster.cluster()?;
    let store: Arc<dyn PosteriorStore> = Arc::from(open_store(&args.store.store, true)?);
    let log = open_log(&args.log.log)?;
    stream(log, store, &args.options, &cluster, true)
}

/// Runs the stream job until the end (with `--stop-at-end`), Ctrl-C or SIGTERM, and prints what
/// it did. Shared by `stream`, `backfill --then-stream` and `demo`.
pub fn stream(
    log: Arc<dyn EventLog>,
    store: Arc<dyn PosteriorStore>,
    options: &StreamOptions,
    cluster: &Cluster,
    show_progress: bool,
) -> anyhow::Result<()> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(StreamMetrics::default());
    stream_until(
        log,
        store,
        options,
        cluster,
        show_progress,
        shutdown,
        metrics,
    )
}

/// [`stream`], also stopping after the epoch in which `shutdown` is set, reporting into
/// `metrics` (where a caller in the same process sees its readiness).
pub fn stream_until(
    log: Arc<dyn EventLog>,
    store: Arc<dyn PosteriorStore>,
    options: &StreamOptions,
    cluster: &Cluster,
    show_progress: bool,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
) -> anyhow::Result<()> {
    let start = stream_start(
        store.as_ref(),
        &options.job_name,
        options.cutoff,
        options.retention,
    )?;
    stop_on_signals(shutdown.clone())?;
    let bar = if show_progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {human_pos} records read  {per_sec}  {elapsed}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress_bar = bar.clone();
    if let Some(addr) = options.metrics_listen {
        serve_metrics(addr, metrics.clone(), options.ready_max_lag)?;
    }
    let started = Instant::now();
    let log_name = log.name().to_string();
    let job = StreamJob {
        log,
        store,
        name: options.job_name.clone(),
        buckets: start.buckets,
        retention: options.retention,
        epoch: Duration::from_millis(options.epoch_ms),
        cutoff: start.cutoff,
        repeats: RepeatWindows {
            clicks: start.click_dedup(Duration::from_secs(options.click_dedup_minutes * 60)),
            impressions: Duration::from_secs(options.impression_dedup_minutes * 60),
        },
        customer_events: !options.no_customer_events,
        stop_at_end: options.stop_at_end,
        shutdown,
        progress: Arc::new(move |n| progress_bar.set_position(n)),
        metrics: metrics.clone(),
        priors: options.priors.settings(),
    };
    let report = run_stream(job, cluster).with_context(|| format!("stream from {log_name}"))?;
    bar.finish_and_clear();
    print_report(
        &report,
        &metrics.click_latency(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn print_report(r: &StreamReport, latency: &ClickLatency, secs: f64) {
    println!(
        "stream: {} records in {secs:.2} s ({:.0} records/s): {} counted, {} already applied, \
         {} repeated clicks, {} repeated impressions, {} before the cutoff, {} dead letters",
        r.records,
        r.records as f64 / secs.max(1e-9),
        r.counted,
        r.already_applied,
        r.repeated_clicks,
        r.repeated_impressions,
        r.before_cutoff,
        r.dead_letters
    );
    println!(
        "sink: {} epochs, {} shard batches, {} rows written in {:.2} s; {} expired bucket rows \
         released from memory",
        r.sink.epochs, r.sink.shards, r.sink.rows, r.sink.seconds, r.sink.released
    );
    if latency.clicks > 0 {
        println!(
            "click to store: p50 {} ms, p99 {} ms, max {} ms over {} clicks",
            latency.p50_ms, latency.p99_ms, latency.max_ms, latency.clicks
        );
    }
}

/// Sets `shutdown` on Ctrl-C or SIGTERM (what Kubernetes sends), so the job ends after the
/// current epoch with everything read so far in the store.
fn stop_on_signals(shutdown: Arc<AtomicBool>) -> anyhow::Result<()> {
    in_background("signals", async move {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            },
            Err(e) => {
                tracing::warn!("no SIGTERM handler ({e}); Ctrl-C still stops the job");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("stopping after the current epoch");
        shutdown.store(true, Ordering::Relaxed);
    })
}

/// Runs `task` on a single-threaded runtime in a thread of its own (the job itself is timely's
/// threads, not async).
fn in_background(
    name: &str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .with_context(|| format!("{name} runtime"))?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(task))
        .with_context(|| format!("{name} thread"))?;
    Ok(())
}

/// Serves `GET /metrics` and `GET /readyz` on `addr` from a thread of its own for as long as
/// the process runs.
fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<StreamMetrics>,
    ready_max_lag: u64,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
    listener.set_nonblocking(true)?;
    in_background("metrics", async move {
        let readiness = metrics.clone();
        let app = axum::Router::new()
            .route("/metrics", get(move || async move { metrics.render() }))
            .route(
                "/readyz",
                get(move || async move {
                    let state = readiness.readiness(ready_max_lag);
                    let code = if state == Readiness::Ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, state.to_string())
                }),
            );
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!("metrics endpoint stopped: {e}");
                }
            }
            Err(e) => tracing::warn!("metrics endpoint: {e}"),
        }
    })?;
    tracing::info!("metrics at http://{addr}/metrics");
    Ok(())
}
