//! `slotbandit demo`: backfills the committed sample into an embedded store with the dataflow
//! job (which keeps the hierarchical priors beside the counts), and prints per (tenant, slot, city) the counts, the
//! leading banner with its 95% interval and P(best), and the true best banner from _truth.json.
//! Then, in the same process and until Ctrl-C, it runs the rest of the embedded default: the
//! stream job on a fresh file log, the lookup service with its demo page and dashboard, and with
//! `--audience` a simulated audience that clicks with _truth.json's CTRs (`--once` stops after
//! the table).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use slotbandit::bandit::{prob_best, seeded_rng};
use slotbandit::dataflow::{hand_off, Cluster, Readiness, StreamMetrics};
use slotbandit::model::{SlotConfig, SlotRules};
use slotbandit::serve::auth::create_key;
use slotbandit::serve::{token_secret, ServeOptions, Service};
use slotbandit::sim::audience::{self, AudienceSpec, AudienceStats};
use slotbandit::source::open_log;
use slotbandit::store::{open_store, CountQuery, PosteriorRow, PosteriorStore, Role};
use slotbandit::synth::{Truth, SLOTS_FILE, TRUTH_FILE};

use super::stream::{stream_until, StreamOptions};

/// (tenant, slot, city)
type SlotCity = (String, String, String);

#[derive(Args, Default)]
pub struct DemoArgs {
    /// Folder with Parquet history and its _truth.json (default: the committed sample).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where the demo store lives (default: slotbandit-demo.redb in the temp folder).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Print the table and exit, without the stream job and the service.
    #[arg(long)]
    once: bool,
    /// Where the demo service listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: Option<SocketAddr>,
    /// Simulate visitors that ask the service for banners and click with _truth.json's CTRs.
    #[arg(long)]
    audience: bool,
    /// Visitors per second of the simulated audience.
    #[arg(long, default_value_t = 20.0, value_parser = super::flags::positive_f64)]
    audience_rate: f64,
    /// The tenant whose visitors are simulated.
    #[arg(long, default_value = "ajio", value_parser = super::flags::name)]
    audience_tenant: String,
    /// Stop after the audience has made this many visits, printing its final line.
    #[arg(long, requires = "audience", value_parser = clap::value_parser!(u64).range(1..))]
    audience_visits: Option<u64>,
    /// The share of every slot's decisions held out (uniform among valid banners), 0 to 0.5;
    /// with --audience, the demo prints TS's uplift over the holdout.
    #[arg(long, default_value_t = 0.0, value_parser = super::flags::holdout)]
    holdout: f64,
}

/// The committed sample: relative to the working folder, else to the source tree.
fn sample_dir() -> PathBuf {
    let local = PathBuf::from("datasets/sample");
    if local.is_dir() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/sample")
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let input = args.input.clone().unwrap_or_else(sample_dir);
    let store_path = args
        .store
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("slotbandit-demo.redb"));
    let url = format!("embedded:{}", store_path.display());
    let report = super::backfill::backfill(
        &input,
        None,
        &url,
        &Cluster::single(2),
        &Default::default(),
        true,
    )?;
    let store = open_store(&url, true)?;
    let rows = store.posteriors(&CountQuery::default())?;

    let truth: Option<Truth> = std::fs::read(input.join(TRUTH_FILE))
        .ok()
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .context(TRUTH_FILE)?;
    let true_best: BTreeMap<SlotCity, String> = truth
        .iter()
        .flat_map(|t| &t.best)
        .map(|a| {
            (
                (a.tenant.clone(), a.slot.clone(), a.city.clone()),
                a.banner.clone(),
            )
        })
        .collect();
    let mut groups: BTreeMap<SlotCity, Vec<&PosteriorRow>> = BTreeMap::new();
    for r in &rows {
        groups
            .entry((r.tenant.clone(), r.slot.clone(), r.city.clone()))
            .or_default()
            .push(r);
    }

    let mut table = super::table([
        "tenant",
        "slot",
        "city",
        "impressions",
        "clicks",
        "CTR",
        "leader",
        "mean",
        "95% interval",
        "P(best)",
        "true best",
    ]);
    let mut rng = seeded_rng(1);
    let (mut agree, mut total) = (0, 0);
    for (key, arms) in &groups {
        let samplers: Vec<_> = arms
            .iter()
            .map(|r| r.summary.posterior().distribution())
            .collect();
        let pbest = prob_best(&samplers, 4000, &mut rng);
        let leader = (0..arms.len())
            .max_by(|&a, &b| arms[a].summary.mean.total_cmp(&arms[b].summary.mean))
            .expect("a group has arms");
        let imp: u64 = arms.iter().map(|a| a.summary.impressions).sum();
        let clk: u64 = arms.iter().map(|a| a.summary.clicks).sum();
        let truth_cell = match true_best.get(key) {
            Some(b) => {
                total += 1;
                if *b == arms[leader].banner {
                    agree += 1;
                    format!("{b} ✓")
                } else {
                    b.clone()
                }
            }
            None => "-".into(),
        };
        let lead = arms[leader];
        table.add_row([
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            imp.to_string(),
            clk.to_string(),
            format!("{:.2}%", 100.0 * clk as f64 / imp.max(1) as f64),
            lead.banner.clone(),
            format!("{:.2}%", 100.0 * lead.summary.mean),
            format!(
                "{:.2}–{:.2}%",
                100.0 * lead.summary.lower95,
                100.0 * lead.summary.upper95
            ),
            format!("{:.2}", pbest[leader]),
            truth_cell,
        ]);
    }
    println!("{table}");
    println!(
        "{} events from {} backfilled by the timely/differential job into {}",
        report.rows,
        input.display(),
        store_path.display()
    );
    println!(
        "posterior = hierarchical prior (banner effect × city effect, kept by the job) + counts"
    );
    if total > 0 {
        println!("the posterior leader is the true best banner in {agree} of {total} (tenant, slot, city)");
    }
    if args.once {
        println!("try: slotbandit posteriors --store {url} --tenant ajio --slot hero --city pune");
        return Ok(());
    }
    live(Arc::from(store), &input, truth, &args)
}

/// The live part of the demo: slots, keys, a fresh file log, the stream job, the service and
/// the audience, until Ctrl-C.
fn live(
    store: Arc<dyn PosteriorStore>,
    input: &Path,
    truth: Option<Truth>,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let csv = input.join(SLOTS_FILE);
    let file = std::fs::File::open(&csv).with_context(|| format!("{}", csv.display()))?;
    let mut tenants = BTreeSet::new();
    for mut config in SlotConfig::read_csv(file)? {
        // The sample's banners are valid for its week of history; keep them valid for the demo.
        for b in &mut config.banners {
            if b.valid_to <= now + chrono::Duration::days(1) {
                b.valid_to = now + chrono::Duration::days(365);
            }
        }
        if args.holdout > 0.0 {
            config.rules.holdout_bp = SlotRules::holdout_from_share("--holdout", args.holdout)?;
        }
        store.put_slot(&config)?;
        tenants.insert(config.tenant.clone());
    }
    let keys: Vec<(String, String)> = tenants
        .iter()
        .map(|t| Ok((t.clone(), create_key(store.as_ref(), t, Role::Admin)?)))
        .collect::<anyhow::Result<_>>()?;

    let tmp = std::env::temp_dir();
    let log_dir = tmp.join("slotbandit-demo-log");
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir).with_context(|| format!("{}", log_dir.display()))?;
    }
    let log = open_log(&format!("file:{}", log_dir.display()))?;
    hand_off(log.as_ref(), store.as_ref(), "demo", now)?;
    let stream_options = StreamOptions {
        job_name: "demo".into(),
        epoch_ms: 250,
        cutoff: None,
        click_dedup_minutes: 24 * 60,
        impression_dedup_minutes: 60,
        retention: slotbandit::time::Retention::default(),
        no_customer_events: false,
        stop_at_end: false,
        metrics_listen: None,
        ready_max_lag: 10_000,
        priors: Default::default(),
    };
    let secret = token_secret(store.as_ref(), None)?;
    let options = ServeOptions {
        compat_tenants: tenants.clone(),
        spool_dir: tmp.join("slotbandit-demo-spool"),
        ..ServeOptions::default()
    };
    let listen = args.listen.unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("--listen {listen}"))?;
    let addr = listener.local_addr()?;

    let stop_job = Arc::new(AtomicBool::new(false));
    let job_metrics = Arc::new(StreamMetrics::default());
    let ready_max_lag = stream_options.ready_max_lag;
    let job = {
        let (log, store, stop) = (log.clone(), store.clone(), stop_job.clone());
        let metrics = job_metrics.clone();
        std::thread::Builder::new()
            .name("stream".into())
            .spawn(move || {
                stream_until(
                    log,
                    store,
                    &stream_options,
                    &Cluster::single(1),
                    false,
                    stop,
                    metrics,
                )
            })?
    };
    // The service opens once the job has taken in the stored counts (seconds at a million arms):
    // a click posted before would wait for that.
    while job_metrics.readiness(ready_max_lag) != Readiness::Ready {
        if job.is_finished() {
            job.join()
                .map_err(|_| anyhow::anyhow!("the stream job panicked"))??;
            anyhow::bail!("the stream job stopped before it was ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ctrl-C, SIGTERM, or the audience's last visit with --audience-visits.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = super::serve::shutdown_signal() => {},
            _ = done_rx => {},
        }
    };
    runtime.block_on(async {
        let service = Service::start(store, log, &secret, options).await?;
        println!();
        println!(
            "the stream job counts {} into the store; the lookup service listens on http://{addr}",
            log_dir.display()
        );
        for (tenant, key) in &keys {
            println!("  {tenant}: demo page http://{addr}/#key={key}");
            println!("  {tenant}: dashboard http://{addr}/dashboard#key={key}");
        }
        println!("  API: http://{addr}/openapi.json (Authorization: Bearer <key>); Ctrl-C stops");
        if args.audience {
            let key = keys
                .iter()
                .find(|(t, _)| *t == args.audience_tenant)
                .map(|(_, k)| k.clone())
                .with_context(|| {
                    format!(
                        "--audience-tenant {}: no such tenant in the sample",
                        args.audience_tenant
                    )
                })?;
            let truth = truth.context("--audience needs the sample's _truth.json")?;
            let spec = AudienceSpec {
                base_url: format!("http://{addr}"),
                key,
                tenant: args.audience_tenant.clone(),
                rate: args.audience_rate,
                seed: 7,
            };
            let stats = Arc::new(AudienceStats::default());
            tokio::spawn(report_audience(stats.clone()));
            let visits = args.audience_visits;
            tokio::spawn(async move {
                let enough = enough_visits(stats.clone(), visits);
                if let Err(e) = audience::run(spec, &truth, stats.clone(), enough).await {
                    tracing::error!("audience: {e}");
                }
                if visits.is_some() {
                    println!("{}", audience_line(&stats));
                    let _ = done_tx.send(());
                }
            });
        }
        service.serve(listener, shutdown).await?;
        anyhow::Ok(())
    })?;
    stop_job.store(true, Ordering::Relaxed);
    job.join()
        .map_err(|_| anyhow::anyhow!("the stream job panicked"))?
}

/// Resolves once the audience has made `visits` visits (never without a number).
async fn enough_visits(stats: Arc<AudienceStats>, visits: Option<u64>) {
    let Some(visits) = visits else {
        return std::future::pending().await;
    };
    while stats.visits.load(Ordering::Relaxed) < visits {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints what the audience has done every 10 seconds.
async fn report_audience(stats: Arc<AudienceStats>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        println!("{}", audience_line(&stats));
    }
}

/// The audience's visits, clicks and regret, and with a holdout TS's uplift over it: the
/// interval from the clicks, beside the difference on the sample's true CTRs.
fn audience_line(stats: &AudienceStats) -> String {
    let visits = stats.visits.load(Ordering::Relaxed);
    let clicks = stats.clicks.load(Ordering::Relaxed);
    let mut line = format!(
        "audience: {visits} visits, {clicks} clicks (CTR {:.2}%), {:.1}% of the clicks the best banners would earn, {} errors",
        100.0 * clicks as f64 / visits.max(1) as f64,
        100.0 * stats.efficiency(),
        stats.errors.load(Ordering::Relaxed)
    );
    if let Some(u) = stats.uplift() {
        let pp = |x: f64| 100.0 * x;
        line.push_str(&format!(
            "\nuplift: TS {ts} visits CTR {:.2}%, holdout {h} visits CTR {:.2}%; TS − holdout {:+.2} pp, 95% [{:+.2}, {:+.2}] pp ({:+.0} extra clicks); on the true CTRs {:+.2} pp",
            pp(u.ctr_ts),
            pp(u.ctr_holdout),
            pp(u.difference.estimate),
            pp(u.difference.low),
            pp(u.difference.high),
            u.extra_clicks.estimate,
            pp(stats.true_difference()),
            ts = u.ts.impressions,
            h = u.holdout.impressions,
        ));
    }
    line
}
