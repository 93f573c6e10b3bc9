//! `slotbandit priors`: cold-start priors from history (empirical Bayes per slot).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use slotbandit::bandit::{empirical_bayes, BannerCounts, DEFAULT_PRIOR_STRENGTH};
use slotbandit::model::pool_cities;
use slotbandit::store::{open_store, CountQuery, PosteriorStore};

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

/// Pools each slot's all-time counts over cities and writes its empirical-Bayes priors.
pub fn write_priors(
    counts: &dyn PosteriorStore,
    target: &dyn PosteriorStore,
    prior_strength: f64,
) -> anyhow::Result<usize> {
    let all = counts.counts(&CountQuery::default())?;
    let mut slots: BTreeMap<(String, String), Vec<BannerCounts>> = BTreeMap::new();
    for (arm, c) in pool_cities(all.iter().map(|(arm, c)| (arm, *c))) {
        slots
            .entry((arm.tenant, arm.slot))
            .or_default()
            .push(BannerCounts {
                banner: arm.banner,
                impressions: c.impressions,
                clicks: c.clicks,
            });
    }
    for ((tenant, slot), banners) in &slots {
        target.write_priors(tenant, slot, &empirical_bayes(banners, prior_strength))?;
    }
    Ok(slots.len())
}
