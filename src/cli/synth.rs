//! `slotbandit gen`: the synthetic clickstream generator.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::synth::{
    generate, GenSpec, MAX_BANNERS, MAX_CITIES, MAX_TENANTS, SLOTS_FILE, TRUTH_FILE,
};

#[derive(Args)]
pub struct GenArgs {
    /// Output folder (created); Parquet goes to OUT/dt=YYYY-MM-DD/part-N.parquet.
    #[arg(long)]
    out: PathBuf,
    /// Number of impressions; each click adds one more row.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    events: u64,
    /// Days of history, starting at --start.
    #[arg(long, allow_negative_numbers = true, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3660))]
    days: u32,
    /// Seed of every random choice: the same seed gives the same files.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    seed: u64,
    /// Number of tenants (platforms).
    #[arg(long, allow_negative_numbers = true, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_TENANTS)))]
    tenants: u16,
    /// Number of cities, most traffic first.
    #[arg(long, allow_negative_numbers = true, default_value_t = 12, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_CITIES)))]
    cities: u16,
    /// Banners per slot.
    #[arg(long, allow_negative_numbers = true, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_BANNERS)))]
    banners: u16,
    /// First IST date of the data (YYYY-MM-DD).
    #[arg(long, default_value = "2026-11-01", value_parser = super::flags::ist_date)]
    start: NaiveDate,
    /// Write into a folder that already has files (they may be mixed with the new ones).
    #[arg(long)]
    force: bool,
}

pub fn run(args: GenArgs) -> anyhow::Result<()> {
    if !args.force && args.out.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "--out {} is not empty; choose an empty folder or pass --force",
            args.out.display()
        );
    }
    let spec = GenSpec {
        impressions: args.events,
        days: args.days,
        seed: args.seed,
        tenants: args.tenants.into(),
        cities: args.cities.into(),
        banners: args.banners.into(),
        start: args.start,
    };
    let bar = ProgressBar::new(spec.impressions).with_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40} {human_pos}/{human_len} impressions  {per_sec}  ETA {eta}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let truth = generate(&spec, &args.out, |n| bar.set_position(n))
        .with_context(|| format!("generating into {}", args.out.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {} rows ({} impressions, {} clicks) to {} in {:.1} s: {:.0} rows/s",
        truth.rows,
        truth.impressions,
        truth.clicks,
        args.out.display(),
        secs,
        truth.rows as f64 / secs
    );
    println!(
        "truth: {}  slots: {}",
        args.out.join(TRUTH_FILE).display(),
        args.out.join(SLOTS_FILE).display()
    );
    Ok(())
}
