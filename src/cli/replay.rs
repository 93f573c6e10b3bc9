//! `slotbandit replay`: off-policy evaluation on the Open Bandit Dataset (see
//! `slotbandit::sim::replay` for the estimators and the OBD → slot mapping).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use clap::Args;
use slotbandit::bandit::seeded_rng;
use slotbandit::sim::replay::{
    bootstrap, ipw_terms, observed, read_obd_csv, replay_thompson, replay_uniform,
    thompson_rank_probabilities, trained_samplers, Estimate, Log,
};

#[derive(Args)]
pub struct ReplayArgs {
    /// The OBD folder (random/<campaign>/<campaign>.csv and bts/…), as datasets/fetch_obd.sh
    /// leaves it.
    #[arg(long)]
    log: PathBuf,
    /// Policies to evaluate: ts, uniform.
    #[arg(long, value_delimiter = ',', default_value = "ts,uniform")]
    policy: Vec<String>,
    /// Campaigns: all, men, women.
    #[arg(long, value_delimiter = ',', default_value = "all,men,women")]
    campaign: Vec<String>,
    /// Bootstrap resamples for the intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Matched rows between posterior refreshes during replay.
    #[arg(long, default_value_t = 1)]
    refresh: u64,
    /// Monte Carlo draws for Thompson sampling's rank probabilities (IPW).
    #[arg(long, default_value_t = 20_000)]
    draws: usize,
    /// Cap on the empirical-Bayes prior strength of the IPW Thompson policy.
    #[arg(long, default_value_t = 100.0)]
    prior_strength: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the table as CSV here.
    #[arg(long)]
    out: Option<PathBuf>,
}

const CAMPAIGNS: [&str; 3] = ["all", "men", "women"];
const POLICIES: [&str; 2] = ["ts", "uniform"];

fn campaign_log(dir: &Path, behaviour: &str, campaign: &str) -> anyhow::Result<Log> {
    let path = dir
        .join(behaviour)
        .join(campaign)
        .join(format!("{campaign}.csv"));
    ensure!(
        path.is_file(),
        "{} is missing; fetch the Open Bandit Dataset with datasets/fetch_obd.sh",
        path.display()
    );
    Ok(read_obd_csv(&path)?)
}

struct Row {
    campaign: String,
    log: &'static str,
    method: &'static str,
    policy: String,
    estimate: Estimate,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    ensure!(
        args.log.is_dir(),
        "--log {} is not a folder; fetch the Open Bandit Dataset with datasets/fetch_obd.sh",
        args.log.display()
    );
    for c in &args.campaign {
        ensure!(
            CAMPAIGNS.contains(&c.as_str()),
            "unknown campaign {c:?}; expected all, men or women"
        );
    }
    for p in &args.policy {
        ensure!(
            POLICIES.contains(&p.as_str()),
            "unknown policy {p:?}; replay evaluates ts or uniform"
        );
    }
    ensure!(args.bootstrap >= 10, "--bootstrap must be at least 10");
    ensure!(args.refresh >= 1, "--refresh must be at least 1");
    ensure!(args.draws >= 100, "--draws must be at least 100");
    if !(args.prior_strength.is_finite() && args.prior_strength > 0.0) {
        bail!("--prior-strength must be positive");
    }
    let mut rng = seeded_rng(args.seed);
    let mut rows = Vec::new();
    for campaign in &args.campaign {
        let random = campaign_log(&args.log, "random", campaign)?;
        let bts = campaign_log(&args.log, "bts", campaign)?;
        for (name, log) in [("random", &random), ("bts", &bts)] {
            rows.push(Row {
                campaign: campaign.clone(),
                log: name,
                method: "observed",
                policy: format!("logged {name}"),
                estimate: observed(log, args.bootstrap, &mut rng),
            });
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        for policy in &args.policy {
            let matched = match policy.as_str() {
                "ts" => replay_thompson(&random, args.refresh, &mut rng),
                _ => replay_uniform(&random, &mut rng),
            };
            rows.push(Row {
                campaign: campaign.clone(),
                log: "random",
                method: "replay",
                policy: policy.clone(),
                estimate: bootstrap(&matched, args.bootstrap, &mut rng, mean),
            });
        }
        for (name, log) in [("random", &random), ("bts", &bts)] {
            let (train, test) = log.rows.split_at(log.rows.len() / 2);
            for policy in &args.policy {
                let target = match policy.as_str() {
                    "ts" => {
                        let samplers = trained_samplers(train, log.items, args.prior_strength);
                        thompson_rank_probabilities(&samplers, log.positions, args.draws, &mut rng)
                    }
                    _ => vec![vec![1.0 / log.items as f64; log.items]; log.positions],
                };
                let terms = ipw_terms(test, &target);
                rows.push(Row {
                    campaign: campaign.clone(),
                    log: name,
                    method: "ipw (2nd half)",
                    policy: policy.clone(),
                    estimate: bootstrap(&terms, args.bootstrap, &mut rng, mean),
                });
            }
        }
    }
    let header = [
        "campaign",
        "log",
        "method",
        "policy",
        "CTR %",
        "95% interval %",
        "rows",
    ];
    let mut table = super::table(header);
    let mut csv = String::from("campaign,log,method,policy,ctr,low,high,rows\n");
    for r in &rows {
        let e = r.estimate;
        table.add_row([
            r.campaign.clone(),
            r.log.to_string(),
            r.method.to_string(),
            r.policy.clone(),
            format!("{:.3}", 100.0 * e.ctr),
            format!("{:.3} – {:.3}", 100.0 * e.low, 100.0 * e.high),
            e.rows.to_string(),
        ]);
        csv.push_str(&format!(
            "{},{},{},{},{:.6},{:.6},{:.6},{}\n",
            r.campaign, r.log, r.method, r.policy, e.ctr, e.low, e.high, e.rows
        ));
    }
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, csv).with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
