//! `slotbandit priors`: cold-start priors (empirical Bayes per slot) from the counts a store
//! already holds: no second pass over history.

use clap::Args;
use slotbandit::bandit::DEFAULT_PRIOR_STRENGTH;
use slotbandit::dataflow::write_priors;
use slotbandit::store::open_store;

use super::flags;

#[derive(Args)]
pub struct PriorsArgs {
    /// The store whose all-time counts the priors are fitted to, and where they are written.
    #[command(flatten)]
    store: flags::StoreArg,
    /// Pseudo-impressions a prior may carry at most.
    #[arg(long, allow_negative_numbers = true, default_value_t = DEFAULT_PRIOR_STRENGTH, value_parser = flags::positive_f64)]
    prior_strength: f64,
}

pub fn run(args: PriorsArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store.store, false)?;
    let started = std::time::Instant::now();
    let slots = write_priors(store.as_ref(), store.as_ref(), args.prior_strength)?;
    println!(
        "priors for {slots} slots written to {} in {:.1} s",
        args.store.store,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
