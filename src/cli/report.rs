//! `slotbandit report`: TS against the holdout per (tenant, slot) and overall, from Parquet
//! history (an event log becomes Parquet with `consume --parquet`), computed by the dataflow job
//! on one or several timely processes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{ArgAction, Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::dataflow::{plan_history, run_report, ReportJob, ReportRun};
use slotbandit::eval::{Report, ReportRange};
use slotbandit::model::parquet::{list_parquet_files, EventFileReader};
use slotbandit::model::Event;

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

/// The impressions of a time range in Parquet history, with their clicks.
#[derive(Args)]
pub struct HistoryArgs {
    /// A folder of Parquet history (searched recursively), e.g. one `consume --parquet` wrote.
    #[arg(long)]
    input: PathBuf,
    /// Impressions from this instant (RFC 3339, or IST DD-Mon-YY HH:MM:SS); default: all.
    #[arg(long, value_parser = flags::instant)]
    from: Option<DateTime<Utc>>,
    /// Impressions before this instant; default: now.
    #[arg(long, value_parser = flags::instant)]
    to: Option<DateTime<Utc>>,
}

impl HistoryArgs {
    pub fn range(&self) -> anyhow::Result<ReportRange> {
        let from = self.from.unwrap_or(DateTime::<Utc>::MIN_UTC);
        Ok(ReportRange::new(from, self.to.unwrap_or_else(Utc::now))?)
    }

    /// Every valid event of the history, in file order, with a progress bar; returns how many
    /// rows were invalid (skipped).
    pub fn read(&self, mut add: impl FnMut(&Event)) -> anyhow::Result<u64> {
        let files = list_parquet_files(&self.input)
            .with_context(|| format!("--input {}", self.input.display()))?;
        anyhow::ensure!(
            !files.is_empty(),
            "--input {}: no Parquet files",
            self.input.display()
        );
        let bar = ProgressBar::new(files.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} files  {elapsed}").expect("valid"),
        );
        let mut invalid = 0u64;
        for path in &files {
            let mut reader = EventFileReader::open(path)?;
            while let Some(rows) = reader.next_batch() {
                for row in rows? {
                    match row {
                        Ok(event) => add(&event),
                        Err(_) => invalid += 1,
                    }
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(invalid)
    }
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
    let input = &args.history.input;
    let plan =
        plan_history(input, false).with_context(|| format!("--input {}", input.display()))?;
    let bar = ProgressBar::new(plan.rows()).with_style(
        ProgressStyle::with_template("{bar:30} {human_pos}/{human_len} rows  {per_sec}  {elapsed}")
            .expect("valid template"),
    );
    let progress_bar = bar.clone();
    let job = ReportJob {
        plan,
        range: args.history.range()?,
        progress: Arc::new(move |n| progress_bar.set_position(n)),
    };
    let run = with_stdout_on_stderr(|| run_report(job, &cluster))?
        .with_context(|| format!("report of {}", input.display()))?;
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

/// Runs `job` with stdout going to stderr: timely prints its connection messages to stdout when
/// a job spans processes, and the report must be all of stdout.
fn with_stdout_on_stderr<T>(job: impl FnOnce() -> T) -> anyhow::Result<T> {
    std::io::stdout().flush()?;
    let stdout = rustix::io::dup(std::io::stdout())?;
    rustix::stdio::dup2_stdout(std::io::stderr())?;
    let out = job();
    std::io::stdout().flush()?;
    rustix::stdio::dup2_stdout(&stdout)?;
    Ok(out)
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
