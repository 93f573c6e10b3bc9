//! Seeded runs of a policy in an environment, in parallel, summarised as regret curves.

use rand::{Rng, RngExt};
use rayon::prelude::*;
use serde::Serialize;

use super::env::{draw_city, Environment};
use super::policy::{
    EpsilonGreedy, Oracle, Policy, PolicySpec, Service, Thompson, Ucb1, UniformAb,
};
use crate::bandit::{seeded_rng, DecisionRng};
use crate::model::Counts;

/// What every run shares.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub env: Environment,
    pub horizon: u64,
    pub runs: usize,
    pub seed: u64,
    /// Impressions per banner in the pooled history sample (0: none), drawn at the banner
    /// effects (a city of effect 1) before the first decision; used by empirical-Bayes priors.
    pub history_impressions: u64,
    /// The banner effects the history sample is drawn at.
    pub history_ctrs: Vec<f64>,
    /// An environment per run (run r in `run_envs[r]`, e.g. with its own city effects); empty:
    /// every run in `env`.
    pub run_envs: Vec<Environment>,
}

impl Experiment {
    /// The environment of run `run`.
    pub fn env_of_run(&self, run: usize) -> &Environment {
        self.run_envs.get(run).unwrap_or(&self.env)
    }
}

/// Mean cumulative regret over the runs, with its standard error, at each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegretCurve {
    pub policy: String,
    pub t: Vec<u64>,
    pub mean: Vec<f64>,
    pub se: Vec<f64>,
    /// Regret accrued after the change point (mean, standard error), in a changing environment.
    pub after_change: Option<(f64, f64)>,
    /// Each run's regret at the horizon, in run order (run r of every policy has the same seed
    /// and environment).
    pub per_run: Vec<f64>,
}

impl RegretCurve {
    /// The mean and standard error at the last checkpoint (the horizon).
    pub fn at_horizon(&self) -> (f64, f64) {
        (
            self.mean.last().copied().unwrap_or(0.0),
            self.se.last().copied().unwrap_or(0.0),
        )
    }

    /// Mean and standard error at checkpoint `t`, if it is one.
    pub fn at(&self, t: u64) -> Option<(f64, f64)> {
        let i = self.t.iter().position(|&x| x == t)?;
        Some((self.mean[i], self.se[i]))
    }
}

/// About twenty log-spaced decision counts per decade from 1 to `horizon`, plus `extra`, sorted,
/// always ending with `horizon`.
pub fn log_spaced_checkpoints(horizon: u64, extra: &[u64]) -> Vec<u64> {
    let mut points: Vec<u64> = Vec::new();
    let mut k = 0u32;
    loop {
        let t = 10f64.powf(f64::from(k) / 20.0).round() as u64;
        if t >= horizon {
            break;
        }
        points.push(t);
        k += 1;
    }
    points.extend(extra.iter().copied().filter(|&t| t > 0 && t < horizon));
    points.push(horizon);
    points.sort_unstable();
    points.dedup();
    points
}

/// The seed of run `run`: distinct, well-mixed seeds per run (SplitMix64 finaliser).
pub fn run_seed(seed: u64, run: usize) -> u64 {
    let mut z = seed.wrapping_add((run as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One run in `experiment.env`: the cumulative expected regret Σ (μ* − μ_chosen) at each
/// checkpoint.
pub fn simulate_run(
    experiment: &Experiment,
    spec: &PolicySpec,
    checkpoints: &[u64],
    seed: u64,
) -> Vec<f64> {
    run_in(experiment, &experiment.env, spec, checkpoints, seed)
}

fn run_in(
    experiment: &Experiment,
    env: &Environment,
    spec: &PolicySpec,
    checkpoints: &[u64],
    seed: u64,
) -> Vec<f64> {
    let (cities, arms) = (env.cities(), env.arms());
    let mut rng = seeded_rng(seed);
    match *spec {
        PolicySpec::Thompson {
            refresh,
            window,
            priors,
        } => {
            let history = draw_history(experiment, &mut rng);
            let policy = Thompson::new(cities, arms, refresh, window, priors, history);
            run_policy(experiment, env, policy, checkpoints, &mut rng)
        }
        PolicySpec::Service {
            refresh,
            max_strength,
        } => {
            let history = draw_history(experiment, &mut rng);
            let policy = Service::new(cities, &env.live_from, refresh, max_strength, history);
            run_policy(experiment, env, policy, checkpoints, &mut rng)
        }
        PolicySpec::Ucb1 => run_policy(
            experiment,
            env,
            Ucb1::new(cities, arms),
            checkpoints,
            &mut rng,
        ),
        PolicySpec::EpsilonGreedy { epsilon } => run_policy(
            experiment,
            env,
            EpsilonGreedy::new(cities, arms, epsilon),
            checkpoints,
            &mut rng,
        ),
        PolicySpec::Uniform => {
            run_policy(experiment, env, UniformAb::default(), checkpoints, &mut rng)
        }
        PolicySpec::Oracle => run_policy(experiment, env, Oracle::default(), checkpoints, &mut rng),
    }
}

fn draw_history<R: Rng + ?Sized>(experiment: &Experiment, rng: &mut R) -> Vec<Counts> {
    if experiment.history_impressions == 0 {
        return Vec::new();
    }
    experiment
        .history_ctrs
        .iter()
        .map(|&p| {
            let clicks = (0..experiment.history_impressions)
                .filter(|_| rng.random::<f64>() < p)
                .count() as u64;
            Counts::new(experiment.history_impressions, clicks)
        })
        .collect()
}

fn run_policy<P: Policy>(
    experiment: &Experiment,
    env: &Environment,
    mut policy: P,
    checkpoints: &[u64],
    rng: &mut DecisionRng,
) -> Vec<f64> {
    let mut cumulative = Vec::with_capacity(env.traffic.len());
    let mut acc = 0.0;
    for w in &env.traffic {
        acc += w;
        cumulative.push(acc);
    }
    // The best live banner's CTR per city.
    let best_of = |ctrs: &[Vec<f64>], live: &[bool]| -> Vec<f64> {
        ctrs.iter()
            .map(|c| {
                c.iter()
                    .zip(live)
                    .filter(|(_, &l)| l)
                    .map(|(&p, _)| p)
                    .fold(f64::MIN, f64::max)
            })
            .collect()
    };
    let mut ctrs = env.ctrs_at(0);
    let live = env.live_at(0);
    policy.set_live(&live);
    let mut best = best_of(&ctrs, &live);
    let mut regret = 0.0;
    let mut out = Vec::with_capacity(checkpoints.len());
    let mut next = checkpoints.iter().peekable();
    for t in 0..experiment.horizon {
        if env.changes_at(t) {
            ctrs = env.ctrs_at(t);
            let live = env.live_at(t);
            policy.set_live(&live);
            best = best_of(&ctrs, &live);
        }
        let city = draw_city(&cumulative, rng);
        let truth = &ctrs[city];
        let arm = policy.choose(city, truth, rng);
        let ctr = truth[arm];
        regret += best[city] - ctr;
        let click = rng.random::<f64>() < ctr;
        policy.observe(city, arm, click);
        while next.peek().is_some_and(|&&c| c == t + 1) {
            out.push(regret);
            next.next();
        }
    }
    out
}

/// Runs every policy `experiment.runs` times in parallel (run r of every policy uses the same
/// seed) and summarises the runs; `on_run_done` is called after each run.
pub fn simulate(
    experiment: &Experiment,
    policies: &[PolicySpec],
    checkpoints: &[u64],
    on_run_done: &(dyn Fn() + Sync),
) -> Vec<RegretCurve> {
    let jobs: Vec<(usize, usize)> = (0..policies.len())
        .flat_map(|p| (0..experiment.runs).map(move |r| (p, r)))
        .collect();
    let results: Vec<(usize, Vec<f64>)> = jobs
        .par_iter()
        .map(|&(p, r)| {
            let curve = run_in(
                experiment,
                experiment.env_of_run(r),
                &policies[p],
                checkpoints,
                run_seed(experiment.seed, r),
            );
            on_run_done();
            (p, curve)
        })
        .collect();
    policies
        .iter()
        .enumerate()
        .map(|(p, spec)| {
            let runs: Vec<&Vec<f64>> = results
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, c)| c)
                .collect();
            let mut curve = summarise(spec.to_string(), checkpoints, &runs);
            curve.per_run = runs.iter().map(|r| r[r.len() - 1]).collect();
            let change = checkpoints
                .iter()
                .position(|&t| t == experiment.env.change_at);
            if let (true, Some(at)) = (experiment.env.has_change, change) {
                let after: Vec<f64> = runs.iter().map(|r| r[r.len() - 1] - r[at]).collect();
                curve.after_change = Some(mean_and_se(&after));
            }
            curve
        })
        .collect()
}

/// The mean of `values` and its standard error (0 for fewer than two values).
pub fn mean_and_se(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

fn summarise(policy: String, checkpoints: &[u64], runs: &[&Vec<f64>]) -> RegretCurve {
    let (mean, se) = (0..checkpoints.len())
        .map(|i| mean_and_se(&runs.iter().map(|r| r[i]).collect::<Vec<f64>>()))
        .unzip();
    RegretCurve {
        policy,
        t: checkpoints.to_vec(),
        mean,
        se,
        after_change: None,
        per_run: Vec::new(),
    }
}

/// The `q` quantile of `values` (0 ≤ q ≤ 1), linear between order statistics (numpy's
/// default); NaN for no values.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n => {
            let at = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_log_spaced_and_end_at_the_horizon() {
        let c = log_spaced_checkpoints(1_000_000, &[12_345]);
        assert_eq!(c.first(), Some(&1));
        assert_eq!(c.last(), Some(&1_000_000));
        assert!(c.contains(&12_345) && c.contains(&1000) && c.contains(&100));
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert!(c.len() < 140);
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        let v = [4.0, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert!((quantile(&v, 0.9) - 4.6).abs() < 1e-12);
        assert!((quantile(&[1.0, 2.0], 0.5) - 1.5).abs() < 1e-12);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
