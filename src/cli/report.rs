//! `slotbandit report`: TS against the holdout per (tenant, slot) and overall, from Parquet
//! history or an event log, computed by the dataflow job on one or several timely processes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{ArgAction, Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::dataflow::{plan_history, run_report, History, LogHistory, ReportJob, ReportRun};
use slotbandit::eval::{Report, ReportRange};
use slotbandit::source::{open_log, LogUrl};

use super::flags;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct ReportArgs {
    #[command(flatten)]
    history: HistoryArgs,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[command(flatten)]
    cluster: flags::ClusterArgs,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// The impressions of a time range in history, with their clicks.
#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    source: HistorySource,
    /// Impressions from this instant (RFC 3339, or IST DD-Mon-YY HH:MM:SS); default: all.
    #[arg(long, value_parser = flags::instant)]
    from: Option<DateTime<Utc>>,
    /// Impressions before this instant; default: now.
    #[arg(long, value_parser = flags::instant)]
    to: Option<DateTime<Utc>>,
}

/// Where history is read: Parquet, or an event log (exactly one).
#[derive(Args)]
#[group(required = true, multiple = false)]
struct HistorySource {
    /// A folder of Parquet history (searched recursively), e.g. one `consume --parquet` wrote.
    #[arg(long)]
    input: Option<PathBuf>,
    /// An event log, kafka://HOST:PORT[,HOST:PORT...]/TOPIC or file:PATH, read from the start
    /// of every partition to its end when the command starts.
    #[arg(long, value_parser = flags::log_url)]
    log: Option<String>,
}

impl HistoryArgs {
    pub fn range(&self) -> anyhow::Result<ReportRange> {
        let from = self.from.unwrap_or(DateTime::<Utc>::MIN_UTC);
        Ok(ReportRange::new(from, self.to.unwrap_or_else(Utc::now))?)
    }

    /// The flag that names the history, with its value, for messages.
    pub fn flag(&self) -> String {
        match (&self.source.input, &self.source.log) {
            (Some(input), _) => format!("--input {}", input.display()),
            (None, Some(log)) => format!("--log {log}"),
            (None, None) => unreachable!("clap requires --input or --log"),
        }
    }

    /// The history to read: the Parquet files planned, or the log with its end offsets now.
    pub fn open(&self) -> anyhow::Result<History> {
        let history = match (&self.source.input, &self.source.log) {
            (Some(input), _) => plan_history(input, false).map(History::Parquet)?,
            (None, Some(url)) => {
                // Opening a file log creates it: a mistyped path would read as an empty log.
                if let Ok(LogUrl::File { path, .. }) = url.parse::<LogUrl>() {
                    anyhow::ensure!(path.is_dir(), "{}: no such log", self.flag());
                }
                History::Log(LogHistory::open(open_log(url)?)?)
            }
            (None, None) => unreachable!("clap requires --input or --log"),
        };
        Ok(history)
    }
}

/// A progress bar of the rows (or log records) a history job reads.
pub fn rows_bar(rows: u64) -> ProgressBar {
    ProgressBar::new(rows).with_style(
        ProgressStyle::with_template("{bar:30} {human_pos}/{human_len} rows  {per_sec}  {elapsed}")
            .expect("valid template"),
    )
}

const COLUMNS: [&str; 12] = [
    "tenant",
    "slot",
    "ts_impressions",
    "ts_clicks",
    "ts_ctr",
    "holdout_impressions",
    "holdout_clicks",
    "holdout_ctr",
    "uplift_pp",
    "uplift_low_pp",
    "uplift_high_pp",
    "extra_clicks",
];

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let cluster = args.cluster.cluster()?;
    let source = args.history.flag();
    let history = args.history.open().with_context(|| source.clone())?;
    let bar = rows_bar(history.rows());
    let progress_bar = bar.clone();
    let job = ReportJob {
        history,
        range: args.history.range()?,
        progress: Arc::new(move |n| progress_bar.set_position(n)),
    };
    let run = super::with_stdout_on_stderr(|| run_report(job, &cluster))?
        .with_context(|| format!("report of {source}"))?;
    bar.finish_and_clear();
    // Process 0 gathers the report; the other processes of a cluster only read their share.
    let Some(ReportRun {
        report,
        invalid_rows,
    }) = run
    else {
        return Ok(());
    };
    print(&report, args.format)?;
    eprintln!(
        "{} events read, {invalid_rows} invalid rows skipped; {} impressions without a holdout \
         flag, {} repeated clicks counted once, {} clicks without their impression in the range",
        report.events,
        report.unflagged_impressions,
        report.repeated_clicks,
        report.unmatched_clicks
    );
    Ok(())
}

fn cells(row: &slotbandit::eval::ReportRow) -> Vec<String> {
    let pct = |c: slotbandit::model::Counts| {
        if c.impressions == 0 {
            String::new()
        } else {
            format!("{:.4}", 100.0 * c.clicks as f64 / c.impressions as f64)
        }
    };
    let (ts, h) = (row.groups.ts, row.groups.holdout);
    let mut out = vec![
        row.tenant.clone(),
        row.slot.clone(),
        ts.impressions.to_string(),
        ts.clicks.to_string(),
        pct(ts),
        h.impressions.to_string(),
        h.clicks.to_string(),
        pct(h),
    ];
    match &row.uplift {
        Some(u) => out.extend([
            format!("{:.4}", 100.0 * u.difference.estimate),
            format!("{:.4}", 100.0 * u.difference.low),
            format!("{:.4}", 100.0 * u.difference.high),
            format!("{:.1}", u.extra_clicks.estimate),
        ]),
        None => out.extend(std::iter::repeat_n(String::new(), 4)),
    }
    out
}

fn print(report: &Report, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(report)?),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record(COLUMNS)?;
            for row in &report.rows {
                w.write_record(cells(row))?;
            }
            w.flush()?;
        }
        Format::Table => {
            let mut table = super::table(COLUMNS);
            for row in &report.rows {
                table.add_row(cells(row));
            }
            println!("{table}");
        }
    }
    Ok(())
}
