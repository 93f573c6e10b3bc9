//! `slotbandit priors`: the hierarchical priors of every slot from the all-time counts a store
//! already holds, by the rule the jobs keep them with (no pass over history); and the flags by
//! which `stream` and `backfill` keep them.

use clap::Args;
use slotbandit::dataflow::{
    write_priors, PriorSettings, DEFAULT_MAX_PRIOR_STRENGTH, DEFAULT_PRIORS_EVERY_MINUTES,
};
use slotbandit::store::open_store;

use super::flags;

#[derive(Args)]
pub struct PriorsArgs {
    /// The store whose all-time counts the priors are fitted to, and where they are written.
    #[command(flatten)]
    store: flags::StoreArg,
    /// Pseudo-impressions an arm's prior may carry at most.
    #[arg(long, allow_negative_numbers = true, default_value_t = DEFAULT_MAX_PRIOR_STRENGTH, value_parser = flags::positive_f64)]
    prior_strength: f64,
}

pub fn run(args: PriorsArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store.store, true)?;
    let started = std::time::Instant::now();
    let slots = write_priors(store.as_ref(), args.prior_strength)?;
    println!(
        "priors for {slots} slots written to {} in {:.1} s",
        args.store.store,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How `stream` and `backfill` keep the priors beside the counts.
#[derive(Args, Clone)]
pub struct PriorOptions {
    /// Pseudo-impressions an arm's prior may carry at most (the fitted strength and the
    /// evidence behind each banner and city bound it further).
    #[arg(long, allow_negative_numbers = true, default_value_t = DEFAULT_MAX_PRIOR_STRENGTH, value_parser = flags::positive_f64)]
    pub prior_strength: f64,
    /// Minutes of event time between two computations of the priors by the stream job (which
    /// also computes them when it stops; a backfill computes them once, at its end).
    #[arg(long, default_value_t = DEFAULT_PRIORS_EVERY_MINUTES, value_parser = clap::value_parser!(u32).range(1..=10_080))]
    pub priors_every_minutes: u32,
    /// Leave the store's priors alone (another job keeps them).
    #[arg(long)]
    pub no_priors: bool,
}

impl Default for PriorOptions {
    fn default() -> Self {
        Self {
            prior_strength: DEFAULT_MAX_PRIOR_STRENGTH,
            priors_every_minutes: DEFAULT_PRIORS_EVERY_MINUTES,
            no_priors: false,
        }
    }
}

impl PriorOptions {
    /// The job's settings, `None` with --no-priors.
    pub fn settings(&self) -> Option<PriorSettings> {
        (!self.no_priors).then(|| PriorSettings {
            max_strength: self.prior_strength,
            every_ms: i64::from(self.priors_every_minutes) * 60_000,
        })
    }
}
