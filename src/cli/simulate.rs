//! `slotbandit simulate`: regret curves of the policies in a Bernoulli environment, against the
//! Lai–Robbins bound. Settings come from a TOML file; flags override it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use slotbandit::dataflow::DEFAULT_MAX_PRIOR_STRENGTH;
use slotbandit::sim::env::{draw_banner_effects, ChangeSpec, EnvSpec, Environment};
use slotbandit::sim::plot::{
    plot_per_run, plot_regret, write_per_run_csv, write_regret_csv, Reference,
};
use slotbandit::sim::run::{quantile, run_seed};
use slotbandit::sim::{log_spaced_checkpoints, simulate, Experiment, PolicySpec, PriorMode};

#[derive(Args)]
pub struct SimulateArgs {
    /// TOML file with the settings (see docs/lab.md and bench/lab/*.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Comma-separated CTRs of the banners (the banner effects when there are several cities).
    #[arg(long, value_delimiter = ',')]
    ctrs: Option<Vec<f64>>,
    /// Draw this many banner CTRs uniformly from --ctr-range instead of --ctrs.
    #[arg(long)]
    arms: Option<usize>,
    /// Range LOW,HIGH of the drawn CTRs (with --arms).
    #[arg(long, value_delimiter = ',')]
    ctr_range: Option<Vec<f64>>,
    /// Decisions per run (T).
    #[arg(long)]
    horizon: Option<u64>,
    /// Seeded runs per policy.
    #[arg(long)]
    runs: Option<usize>,
    /// Decisions between posterior refreshes for Thompson sampling; a list gives one curve each.
    #[arg(long, value_delimiter = ',')]
    refresh: Option<Vec<u64>>,
    /// Policies: service (the production path: the jobs' priors and the service's decision),
    /// ts, ts-eb (empirical-Bayes priors), ts-window, ts-eb-window, ucb1, egreedy, uniform,
    /// oracle.
    #[arg(long, value_delimiter = ',')]
    policy: Option<Vec<String>>,
    /// Base seed (run r uses a seed derived from it).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of cities.
    #[arg(long)]
    cities: Option<usize>,
    /// Zipf exponent of the traffic over cities (0: uniform).
    #[arg(long)]
    traffic_skew: Option<f64>,
    /// Standard deviation of ln(city effect).
    #[arg(long)]
    city_sigma: Option<f64>,
    /// Sliding window, in decisions, of the -window Thompson policies.
    #[arg(long)]
    window: Option<u64>,
    /// ε of the egreedy policy.
    #[arg(long)]
    epsilon: Option<f64>,
    /// Cap on a prior's strength, in pseudo-impressions, for service and the -eb policies
    /// (default: the jobs' default).
    #[arg(long)]
    prior_strength: Option<f64>,
    /// Impressions per banner of the pooled history sample the empirical-Bayes priors start from.
    #[arg(long)]
    history_impressions: Option<u64>,
    /// Draw each run's own city effects from its seed (one environment per run) instead of one
    /// environment from --seed for every run.
    #[arg(long)]
    environment_per_run: bool,
    /// Title of the plot.
    #[arg(long)]
    title: Option<String>,
    /// Output folder: regret.csv, summary.csv, regret.png, regret.svg.
    #[arg(long)]
    out: PathBuf,
}

/// The settings file. Every key is optional; flags override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateConfig {
    horizon: Option<u64>,
    runs: Option<usize>,
    seed: Option<u64>,
    policies: Option<Vec<String>>,
    refresh: Option<Vec<u64>>,
    window: Option<u64>,
    epsilon: Option<f64>,
    prior_strength: Option<f64>,
    history_impressions: Option<u64>,
    environment_per_run: Option<bool>,
    title: Option<String>,
    environment: Option<EnvConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvConfig {
    ctrs: Option<Vec<f64>>,
    arms: Option<usize>,
    ctr_range: Option<Vec<f64>>,
    cities: Option<usize>,
    city_sigma: Option<f64>,
    traffic_skew: Option<f64>,
    change: Option<ChangeSpec>,
}

const DEFAULT_CTRS: [f64; 10] = [0.1, 0.08, 0.08, 0.08, 0.08, 0.08, 0.08, 0.08, 0.08, 0.08];

fn read_config(path: &Path) -> anyhow::Result<SimulateConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The policies named in `names`, Thompson ones once per refresh interval.
fn policy_specs(
    names: &[String],
    refresh: &[u64],
    window: u64,
    epsilon: f64,
    prior_strength: f64,
) -> anyhow::Result<Vec<PolicySpec>> {
    let mut specs = Vec::new();
    for name in names {
        let eb = PriorMode::EmpiricalBayes {
            strength: prior_strength,
        };
        let thompson = |priors, window| -> Vec<PolicySpec> {
            refresh
                .iter()
                .map(|&refresh| PolicySpec::Thompson {
                    refresh,
                    window,
                    priors,
                })
                .collect()
        };
        match name.trim() {
            "service" => specs.extend(refresh.iter().map(|&refresh| PolicySpec::Service {
                refresh,
                max_strength: prior_strength,
            })),
            "ts" => specs.extend(thompson(PriorMode::Uniform, 0)),
            "ts-eb" => specs.extend(thompson(eb, 0)),
            "ts-window" | "ts-eb-window" => {
                ensure!(
                    window > 0,
                    "policy {name} needs --window (decisions) above 0"
                );
                let priors = if name.contains("eb") {
                    eb
                } else {
                    PriorMode::Uniform
                };
                specs.extend(thompson(priors, window));
            }
            "ucb1" => specs.push(PolicySpec::Ucb1),
            "egreedy" => specs.push(PolicySpec::EpsilonGreedy { epsilon }),
            "uniform" => specs.push(PolicySpec::Uniform),
            "oracle" => specs.push(PolicySpec::Oracle),
            other => bail!(
                "unknown policy {other:?}; expected service, ts, ts-eb, ts-window, ts-eb-window, \
                 ucb1, egreedy, uniform or oracle"
            ),
        }
    }
    ensure!(!specs.is_empty(), "--policy lists no policy");
    Ok(specs)
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => SimulateConfig::default(),
    };
    let env_file = file.environment.unwrap_or_default();
    let horizon = args.horizon.or(file.horizon).unwrap_or(100_000);
    ensure!(horizon >= 1, "--horizon must be at least 1");
    let runs = args.runs.or(file.runs).unwrap_or(10);
    ensure!(runs >= 1, "--runs must be at least 1");
    let refresh = args.refresh.or(file.refresh).unwrap_or_else(|| vec![1]);
    ensure!(
        !refresh.is_empty() && refresh.iter().all(|&r| r >= 1),
        "--refresh values must be at least 1"
    );
    let epsilon = args.epsilon.or(file.epsilon).unwrap_or(0.1);
    ensure!(
        (0.0..=1.0).contains(&epsilon),
        "--epsilon must lie in [0, 1] (got {epsilon})"
    );
    let prior_strength = args
        .prior_strength
        .or(file.prior_strength)
        .unwrap_or(DEFAULT_MAX_PRIOR_STRENGTH);
    ensure!(
        prior_strength.is_finite() && prior_strength > 0.0,
        "--prior-strength must be positive (got {prior_strength})"
    );
    let window = args.window.or(file.window).unwrap_or(0);
    let names = args
        .policy
        .or(file.policies)
        .unwrap_or_else(|| vec!["ts".into(), "ucb1".into()]);
    let policies = policy_specs(&names, &refresh, window, epsilon, prior_strength)?;
    let seed = args.seed.or(file.seed).unwrap_or(1);
    let ctrs = match (args.ctrs, args.arms.or(env_file.arms)) {
        (Some(ctrs), _) => ctrs,
        (None, Some(arms)) => {
            let range = args
                .ctr_range
                .or(env_file.ctr_range)
                .unwrap_or_else(|| vec![0.01, 0.1]);
            let (low, high) = match range[..] {
                [low, high] => (low, high),
                _ => bail!("--ctr-range takes two values LOW,HIGH (got {range:?})"),
            };
            draw_banner_effects(arms, low, high, seed).with_context(|| {
                format!(
                    "--arms must be at least 2 and --ctr-range must satisfy 0 < LOW < HIGH < 1 \
                     (got {arms} arms, {low},{high})"
                )
            })?
        }
        (None, None) => env_file.ctrs.unwrap_or_else(|| DEFAULT_CTRS.to_vec()),
    };
    let spec = EnvSpec {
        ctrs,
        cities: args.cities.or(env_file.cities).unwrap_or(1),
        city_sigma: args.city_sigma.or(env_file.city_sigma).unwrap_or(0.0),
        traffic_skew: args.traffic_skew.or(env_file.traffic_skew).unwrap_or(0.0),
        change: env_file.change,
    };
    let env = Environment::build(&spec, seed).context("invalid environment")?;
    let seeds: Vec<u64> = (0..runs).map(|r| run_seed(seed, r)).collect();
    let run_envs = if args.environment_per_run || file.environment_per_run.unwrap_or(false) {
        seeds
            .iter()
            .map(|&s| Environment::build(&spec, s))
            .collect::<Result<Vec<_>, _>>()
            .context("invalid environment")?
    } else {
        Vec::new()
    };
    let experiment = Experiment {
        env,
        horizon,
        runs,
        seed,
        history_impressions: args
            .history_impressions
            .or(file.history_impressions)
            .unwrap_or(0),
        history_ctrs: spec.ctrs.clone(),
        run_envs,
    };
    let title = args.title.or(file.title).unwrap_or_else(|| {
        format!(
            "{} banners, {} cities, T = {horizon}, {runs} runs",
            spec.ctrs.len(),
            spec.cities
        )
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let extra: Vec<u64> = experiment
        .env
        .has_change
        .then_some(experiment.env.change_at)
        .into_iter()
        .collect();
    let checkpoints = log_spaced_checkpoints(horizon, &extra);
    let progress = ProgressBar::new((policies.len() * runs) as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} elapsed, eta {eta}")
            .context("progress template")?,
    );
    tracing::info!(
        policies = policies.len(),
        runs,
        horizon,
        threads = rayon::current_num_threads(),
        "simulating"
    );
    let started = Instant::now();
    let curves = simulate(&experiment, &policies, &checkpoints, &|| progress.inc(1));
    let elapsed = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let decisions = (policies.len() * runs) as f64 * horizon as f64;
    let per_core = decisions / elapsed / rayon::current_num_threads() as f64;
    tracing::info!(
        seconds = format!("{elapsed:.2}"),
        decisions_per_second_per_core = format!("{per_core:.3e}"),
        "done"
    );

    write_regret_csv(&args.out.join("regret.csv"), &curves)?;
    let log_horizon = (horizon as f64).ln();
    let bound_at_horizon = experiment.env.lai_robbins_bound(horizon as f64);
    let bound = Reference {
        label: "Lai–Robbins bound".into(),
        points: checkpoints
            .iter()
            .map(|&t| (t as f64, experiment.env.lai_robbins_bound(t as f64)))
            .collect(),
    };
    // The asymptotic bound is a yardstick for one city; summed over many small cities it
    // dwarfs every finite-horizon curve, so it is tabulated but not drawn.
    let drawn_bound = (experiment.env.cities() == 1).then_some(&bound);
    plot_regret(&args.out, "regret", &title, &curves, drawn_bound)?;
    write_per_run_csv(&args.out.join("per_run.csv"), &curves, &seeds)?;
    plot_per_run(&args.out, "per_run", &title, &curves)?;

    let mut header = vec![
        "policy".to_string(),
        format!("regret at T={horizon}"),
        "se".into(),
        "regret / Lai–Robbins".into(),
    ];
    let has_change = experiment.env.has_change;
    if has_change {
        header.extend(["regret after change".into(), "se after".into()]);
    }
    // Per run at T: the spread, and in how many runs a policy did worse than the first one
    // listed (the same seed and environment).
    let first = curves[0].per_run.clone();
    header.extend([
        "median".into(),
        "p90".into(),
        "max".into(),
        format!("runs worse than {}", curves[0].policy),
    ]);
    let mut table = super::table(&header);
    let mut summary = String::from(&*header.join(","));
    summary.push('\n');
    for c in &curves {
        let (mean, se) = c.at_horizon();
        let mut row = vec![
            c.policy.clone(),
            format!("{mean:.1}"),
            format!("{se:.1}"),
            format!("{:.3}", mean / bound_at_horizon),
        ];
        if let Some((after, after_se)) = c.after_change {
            row.extend([format!("{after:.1}"), format!("{after_se:.1}")]);
        }
        let worse = c.per_run.iter().zip(&first).filter(|(a, b)| a > b).count();
        row.extend([
            format!("{:.1}", quantile(&c.per_run, 0.5)),
            format!("{:.1}", quantile(&c.per_run, 0.9)),
            format!("{:.1}", c.per_run.iter().copied().fold(f64::MIN, f64::max)),
            format!("{worse} of {}", c.per_run.len()),
        ]);
        summary.push_str(&row.join(","));
        summary.push('\n');
        table.add_row(row);
    }
    std::fs::write(args.out.join("summary.csv"), summary)
        .with_context(|| format!("writing {}", args.out.join("summary.csv").display()))?;
    println!("{table}");
    println!(
        "Lai–Robbins bound at T: {bound_at_horizon:.1} (constant {:.1} × ln T = {log_horizon:.2} \
         for one city); {decisions:.3e} decisions in {elapsed:.2} s = {per_core:.3e} per second \
         per core on {} threads",
        experiment.env.lai_robbins_constants().iter().sum::<f64>(),
        rayon::current_num_threads()
    );
    println!("wrote {}", args.out.display());
    Ok(())
}
