//! `slotbandit demo`: reads the committed sample and prints, per (tenant, slot, city), the
//! counts, the banner with the highest posterior mean, and the true best banner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use slotbandit::bandit::{prob_best, seeded_rng, BetaPosterior};
use slotbandit::gen::Truth;
use slotbandit::model::parquet::{list_parquet_files, read_events};
use slotbandit::model::ArmCounts;

/// (tenant, slot, city)
type SlotCity = (String, String, String);

#[derive(Args, Default)]
pub struct DemoArgs {
    /// Folder with the Parquet sample and its truth.json.
    #[arg(long)]
    input: Option<PathBuf>,
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
    let files = list_parquet_files(&input)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no Parquet files under {}; regenerate the sample with datasets/sample/regenerate.sh",
        input.display()
    );
    let mut counts = ArmCounts::default();
    for f in &files {
        for e in read_events(f)? {
            counts.add(&e);
        }
    }
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

    let mut groups: BTreeMap<SlotCity, Vec<(String, u64, u64)>> = BTreeMap::new();
    for (arm, &(imp, clk)) in &counts.0 {
        groups
            .entry((arm.tenant.clone(), arm.slot.clone(), arm.city.clone()))
            .or_default()
            .push((arm.banner.clone(), imp, clk));
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
        let posteriors: Vec<BetaPosterior> = arms
            .iter()
            .map(|&(_, i, c)| BetaPosterior::uniform().updated(i, c))
            .collect();
        let samplers: Vec<_> = posteriors.iter().map(|p| p.distribution()).collect();
        let pbest = prob_best(&samplers, 4000, &mut rng);
        let leader = (0..arms.len())
            .max_by(|&a, &b| posteriors[a].mean().total_cmp(&posteriors[b].mean()))
            .expect("a group has arms");
        let imp: u64 = arms.iter().map(|a| a.1).sum();
        let clk: u64 = arms.iter().map(|a| a.2).sum();
        let (lo, hi) = posteriors[leader].interval95();
        let truth_cell = match true_best.get(key) {
            Some(b) => {
                total += 1;
                if *b == arms[leader].0 {
                    agree += 1;
                    format!("{b} ✓")
                } else {
                    b.clone()
                }
            }
            None => "-".into(),
        };
        table.add_row([
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            imp.to_string(),
            clk.to_string(),
            format!("{:.2}%", 100.0 * clk as f64 / imp.max(1) as f64),
            arms[leader].0.clone(),
            format!("{:.2}%", 100.0 * posteriors[leader].mean()),
            format!("{:.2}–{:.2}%", 100.0 * lo, 100.0 * hi),
            format!("{:.2}", pbest[leader]),
            truth_cell,
        ]);
    }
    println!("{table}");
    println!(
        "{} events from {} files under {}; posterior = Beta(1 + clicks, 1 + impressions - clicks)",
        counts.0.values().map(|(i, c)| i + c).sum::<u64>(),
        files.len(),
        input.display()
    );
    if total > 0 {
        println!("the posterior leader is the true best banner in {agree} of {total} (tenant, slot, city)");
    }
    Ok(())
}
