//! `slotbandit priors`: cold-start priors from history (empirical Bayes per slot).

use std::path::PathBuf;

use clap::Args;
use slotbandit::bandit::DEFAULT_PRIOR_STRENGTH;
use slotbandit::dataflow::write_priors;
use slotbandit::store::open_store;

use super::flags;

#[derive(Args)]
pub struct PriorsArgs {
    /// Folder of Parquet history.
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    store: flags::StoreArg,
    /// Pseudo-impressions a prior may carry at most.
    #[arg(long, allow_negative_numbers = true, default_value_t = DEFAULT_PRIOR_STRENGTH, value_parser = flags::positive_f64)]
    prior_strength: f64,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

pub fn run(args: PriorsArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let history = format!("embedded:{}", scratch.path().join("history.redb").display());
    let cluster = slotbandit::dataflow::Cluster::single(args.workers.into());
    super::backfill::backfill(
        &args.input,
        None,
        &history,
        &cluster,
        &Default::default(),
        true,
    )?;
    let counts = open_store(&history, false)?;
    let target = open_store(&args.store.store, true)?;
    let slots = write_priors(counts.as_ref(), target.as_ref(), args.prior_strength)?;
    println!("priors for {slots} slots written to {}", args.store.store);
    Ok(())
}
