//! `slotbandit import-prototype`: a prototype installation's Cassandra keyspace into Parquet
//! history, a slot CSV and a reject file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::source::prototype::{import, PrototypeSource, PrototypeUrl, Window};
use slotbandit::time;

use super::flags;

#[derive(Args)]
pub struct ImportPrototypeArgs {
    /// The prototype's keyspace: cassandra://HOST:PORT[,HOST:PORT...]/KEYSPACE
    /// (usually .../cognitivebanners).
    #[arg(long, value_parser = prototype_url)]
    from: PrototypeUrl,
    /// Output folder (created, must be empty): Parquet under OUT/dt=YYYY-MM-DD/, the slots in
    /// OUT/_slots.csv, refused rows in OUT/_rejects.csv.
    #[arg(long)]
    out: PathBuf,
    /// Import only events at or after this instant (RFC 3339, or IST DD-Mon-YY HH:MM:SS).
    #[arg(long, value_parser = flags::instant)]
    since: Option<DateTime<Utc>>,
    /// Import only events before this instant (RFC 3339, or IST DD-Mon-YY HH:MM:SS).
    #[arg(long, value_parser = flags::instant)]
    until: Option<DateTime<Utc>>,
}

fn prototype_url(s: &str) -> Result<PrototypeUrl, String> {
    s.parse()
        .map_err(|e: slotbandit::source::prototype::ImportError| e.to_string())
}

pub fn run(args: ImportPrototypeArgs) -> anyhow::Result<()> {
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--since {} must be before --until {}\n",
                    time::format_utc(since),
                    time::format_utc(until)
                ),
            )
            .exit();
        }
    }
    if args.out.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "--out {} is not empty; choose an empty folder",
            args.out.display()
        );
    }
    let started = Instant::now();
    let source = PrototypeSource::connect(&args.from)?;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {human_pos} rows read  {per_sec}  {elapsed}")
            .expect("valid template"),
    );
    let window = Window {
        since: args.since,
        until: args.until,
    };
    let report = import(&source, &args.out, window, |n| bar.set_position(n))
        .with_context(|| format!("importing into {}", args.out.display()))?;
    bar.finish_and_clear();
    println!(
        "read {} clickstream rows and {} slot rows in {:.1} s",
        report.clickstream_rows,
        report.slot_rows,
        started.elapsed().as_secs_f64()
    );
    println!(
        "wrote {} impressions and {} clicks in {} Parquet files under {}",
        report.impressions,
        report.clicks,
        report.parquet_files.len(),
        args.out.display()
    );
    if report.outside_window > 0 {
        println!(
            "left out {} events outside --since/--until",
            report.outside_window
        );
    }
    match &report.slots_file {
        Some(path) => println!(
            "wrote {} slots with {} banners to {}",
            report.slots,
            report.banners,
            path.display()
        ),
        None => println!("no slot configuration to write"),
    }
    let refused: u64 = report.rejects.values().sum();
    println!(
        "refused {refused} rows, listed in {}",
        report.rejects_file.display()
    );
    if refused > 0 {
        let mut table = super::table(["reason", "rows"]);
        for (reason, n) in &report.rejects {
            table.add_row([reason.clone(), n.to_string()]);
        }
        println!("{table}");
    }
    Ok(())
}
