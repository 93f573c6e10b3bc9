//! `slotbandit backfill`: Parquet history into the store, on one or several timely processes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{ArgAction, Args};
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::dataflow::{
    hand_off, plan_history, run_backfill, BackfillJob, BackfillReport, BackfillStore, Cluster,
    PriorSettings, DEFAULT_EPOCH_ROWS,
};
use slotbandit::source::open_log;
use slotbandit::store::{open_store, PosteriorStore};
use slotbandit::time::{Buckets, Retention};

use super::flags;

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct BackfillArgs {
    /// Folder of Parquet history (dt=YYYY-MM-DD/part-N.parquet, searched recursively).
    #[arg(long)]
    input: PathBuf,
    /// Count only events before this instant (RFC 3339, or IST DD-Mon-YY HH:MM:SS).
    #[arg(long, value_parser = flags::instant)]
    until: Option<DateTime<Utc>>,
    #[command(flatten)]
    store: flags::StoreArg,
    #[command(flatten)]
    cluster: flags::ClusterArgs,
    /// Width of the time buckets in minutes; must divide a day.
    #[arg(long, default_value_t = 60, value_parser = flags::bucket_minutes)]
    bucket_minutes: u32,
    /// Report unreadable files and count the rest, instead of failing.
    #[arg(long)]
    skip_bad_files: bool,
    /// Rows each worker reads into one epoch (whole row groups, at least this many): what it
    /// pre-aggregates before handing the counts to the workers that own them.
    #[arg(long, default_value_t = DEFAULT_EPOCH_ROWS, value_parser = clap::value_parser!(u64).range(1..))]
    epoch_rows: u64,
    /// After the backfill, stream from --log: history covers ts < cutoff (--until, else the
    /// start of the run) and the stream starts at the cutoff, dropping anything earlier.
    #[arg(long, requires = "log")]
    then_stream: bool,
    /// The event log to stream from with --then-stream: kafka://HOST:PORT/TOPIC or file:PATH.
    #[arg(long, value_parser = flags::log_url, requires = "then_stream")]
    log: Option<String>,
    #[command(flatten)]
    stream: super::stream::StreamOptions,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

pub fn run(args: BackfillArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let until = match args.then_stream {
        true => Some(args.until.unwrap_or_else(Utc::now)),
        false => args.until,
    };
    let report = backfill(
        &args.input,
        until,
        &args.store.store,
        &args.cluster.cluster()?,
        &ReadOptions {
            bucket_minutes: args.bucket_minutes,
            skip_bad_files: args.skip_bad_files,
            epoch_rows: args.epoch_rows,
            retention: args.stream.retention,
            priors: args.stream.priors.settings(),
        },
        true,
    )?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backfill: {} rows in {:.2} s ({:.0} rows/s) into {}",
        report.rows,
        secs,
        report.rows as f64 / secs.max(1e-9),
        args.store.store
    );
    let sink = report.sink;
    println!(
        "sink: {} epochs, {} shard batches, {} rows written in {:.2} s ({:.0}% of the run)",
        sink.epochs,
        sink.shards,
        sink.rows,
        sink.seconds,
        100.0 * sink.seconds / secs.max(1e-9)
    );
    if let (Some(log_url), Some(cutoff)) = (args.log.filter(|_| args.then_stream), until) {
        let cluster = args.cluster.cluster()?;
        let store: Arc<dyn PosteriorStore> = Arc::from(open_store(&args.store.store, true)?);
        let log = open_log(&log_url)?;
        // Process 0 hands off before it joins the cluster, and the others read the checkpoints
        // only once every process has joined.
        if cluster.process == 0 {
            hand_off(log.as_ref(), store.as_ref(), &args.stream.job_name, cutoff)?;
        }
        super::stream::stream(log, store, &args.stream, &cluster, true)?;
    }
    Ok(())
}

/// How history is read: bucket width, what to do with bad files, the epoch size, how long
/// bucket rows are kept, and how the priors are computed at the end.
pub struct ReadOptions {
    pub bucket_minutes: u32,
    pub skip_bad_files: bool,
    pub epoch_rows: u64,
    pub retention: Retention,
    pub priors: Option<PriorSettings>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            bucket_minutes: 60,
            skip_bad_files: false,
            epoch_rows: DEFAULT_EPOCH_ROWS,
            retention: Retention::default(),
            priors: Some(PriorSettings::default()),
        }
    }
}

/// Plans and runs a backfill with a progress bar and reports what it skipped and rejected;
/// shared by `backfill` and `demo`.
pub fn backfill(
    input: &std::path::Path,
    until: Option<DateTime<Utc>>,
    store_url: &str,
    cluster: &Cluster,
    options: &ReadOptions,
    show_progress: bool,
) -> anyhow::Result<BackfillReport> {
    let &ReadOptions {
        bucket_minutes,
        skip_bad_files,
        epoch_rows,
        retention,
        priors,
    } = options;
    let buckets = Buckets::of_minutes(bucket_minutes).map_err(anyhow::Error::msg)?;
    let plan = plan_history(input, skip_bad_files)?;
    for s in &plan.skipped {
        tracing::warn!("skipped: {s}");
    }
    let store = BackfillStore::open(store_url, cluster)?;
    let bar = if show_progress {
        ProgressBar::new(plan.rows())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40} {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
        )
        .expect("valid template"),
    );
    let progress_bar = bar.clone();
    let mut skipped = plan.skipped.clone();
    let job = BackfillJob {
        plan,
        buckets,
        retention,
        until,
        skip_bad_files,
        epoch_rows,
        store,
        priors,
        progress: Arc::new(move |n| progress_bar.set_position(n)),
    };
    let mut report = super::with_stdout_on_stderr(|| run_backfill(job, cluster))?
        .with_context(|| format!("backfill of {}", input.display()))?;
    bar.finish_and_clear();
    for s in &report.skipped {
        tracing::warn!("skipped: {s}");
    }
    skipped.append(&mut report.skipped);
    report.skipped = skipped;
    if report.rejected > 0 {
        tracing::warn!(
            "{} rows break the event contract and were not counted; first: {}",
            report.rejected,
            report.first_rejection.as_deref().unwrap_or("-")
        );
    }
    if !report.skipped.is_empty() {
        eprintln!("skipped {} bad file(s):", report.skipped.len());
        for s in &report.skipped {
            eprintln!("  {s}");
        }
    }
    Ok(report)
}
