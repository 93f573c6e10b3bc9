//! `slotbandit report`: TS against the holdout per (tenant, slot) and overall, from Parquet
//! history (an event log becomes Parquet with `consume --parquet`).

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::eval::{Report, ReportRange, ReportTally};
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
pub struct ReportArgs {
    #[command(flatten)]
    history: HistoryArgs,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
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
    let mut tally = ReportTally::new(args.history.range()?);
    let invalid = args.history.read(|e| tally.add(e))?;
    let report = tally.finish();
    print(&report, args.format)?;
    eprintln!(
        "{} events read, {invalid} invalid rows skipped; {} impressions without a holdout flag, \
         {} repeated clicks counted once, {} clicks without their impression in the range",
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
