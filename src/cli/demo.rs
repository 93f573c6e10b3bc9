//! `slotbandit demo`: backfills the committed sample into an embedded store with the dataflow
//! job, computes the cold-start priors, and prints per (tenant, slot, city) the counts, the
//! leading banner with its 95% interval and P(best), and the true best banner from truth.json.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use slotbandit::bandit::{prob_best, seeded_rng, BetaPosterior, DEFAULT_PRIOR_STRENGTH};
use slotbandit::dataflow::Cluster;
use slotbandit::gen::Truth;
use slotbandit::store::{open_store, CountQuery, PosteriorRow};

/// (tenant, slot, city)
type SlotCity = (String, String, String);

#[derive(Args, Default)]
pub struct DemoArgs {
    /// Folder with Parquet history and its truth.json (default: the committed sample).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where the demo store lives (default: slotbandit-demo.redb in the temp folder).
    #[arg(long)]
    store: Option<PathBuf>,
}

/// The committed sample: relative to the working folder, else to the source tree.
fn sample_dir() -> PathBuf {
    let local = PathBuf::from("datasets/sample");
    if local.is_dir() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/sample")
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let input = args.input.unwrap_or_else(sample_dir);
    let store_path = args
        .store
        .unwrap_or_else(|| std::env::temp_dir().join("slotbandit-demo.redb"));
    let url = format!("embedded:{}", store_path.display());
    let report =
        super::backfill::backfill(&input, None, &url, &Cluster::single(2), 60, false, true)?;
    let store = open_store(&url, true)?;
    super::priors::write_priors(store.as_ref(), store.as_ref(), DEFAULT_PRIOR_STRENGTH)?;
    let rows = store.posteriors(&CountQuery::default())?;

    let truth: Option<Truth> = std::fs::read(input.join("truth.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .context("reading truth.json")?;
    let true_best: BTreeMap<SlotCity, String> = truth
        .iter()
        .flat_map(|t| &t.best)
        .map(|a| {
            (
                (a.tenant.clone(), a.slot.clone(), a.city.clone()),
                a.banner.clone(),
            )
        })
        .collect();
    let mut groups: BTreeMap<SlotCity, Vec<&PosteriorRow>> = BTreeMap::new();
    for r in &rows {
        groups
            .entry((r.tenant.clone(), r.slot.clone(), r.city.clone()))
            .or_default()
            .push(r);
    }

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "tenant",
        "slot",
        "city",
        "impressions",
        "clicks",
        "CTR",
        "leader",
        "mean",
        "95% interval",
        "P(best)",
        "true best",
    ]);
    let mut rng = seeded_rng(1);
    let (mut agree, mut total) = (0, 0);
    for (key, arms) in &groups {
        let samplers: Vec<_> = arms
            .iter()
            .map(|r| {
                BetaPosterior {
                    alpha: r.alpha,
                    beta: r.beta,
                }
                .distribution()
            })
            .collect();
        let pbest = prob_best(&samplers, 4000, &mut rng);
        let leader = (0..arms.len())
            .max_by(|&a, &b| arms[a].mean.total_cmp(&arms[b].mean))
            .expect("a group has arms");
        let imp: u64 = arms.iter().map(|a| a.impressions).sum();
        let clk: u64 = arms.iter().map(|a| a.clicks).sum();
        let truth_cell = match true_best.get(key) {
            Some(b) => {
                total += 1;
                if *b == arms[leader].banner {
                    agree += 1;
                    format!("{b} ✓")
                } else {
                    b.clone()
                }
            }
            None => "-".into(),
        };
        let lead = arms[leader];
        table.add_row([
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            imp.to_string(),
            clk.to_string(),
            format!("{:.2}%", 100.0 * clk as f64 / imp.max(1) as f64),
            lead.banner.clone(),
            format!("{:.2}%", 100.0 * lead.mean),
            format!("{:.2}–{:.2}%", 100.0 * lead.lower95, 100.0 * lead.upper95),
            format!("{:.2}", pbest[leader]),
            truth_cell,
        ]);
    }
    println!("{table}");
    println!(
        "{} events from {} backfilled by the timely/differential job into {}",
        report.rows,
        input.display(),
        store_path.display()
    );
    println!("posterior = empirical-Bayes prior (per tenant, slot, banner) + counts");
    if total > 0 {
        println!("the posterior leader is the true best banner in {agree} of {total} (tenant, slot, city)");
    }
    println!("try: slotbandit posteriors --store {url} --tenant ajio --slot hero --city pune");
    Ok(())
}
