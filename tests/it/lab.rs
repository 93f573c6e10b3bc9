//! The bandit lab: the simulator's policies, regret accounting, P(best), and the CLI. Small
//! horizons only; the long runs live in bench/lab.

use std::process::{Command, Output};

use chrono::Duration;
use slotbandit::bandit::{
    prob_best, seeded_rng, thompson_select, BetaPosterior, BetaSampler, SlotPolicy,
};
use slotbandit::model::SlotConfig;
use slotbandit::sim::env::{EnvSpec, Environment};
use slotbandit::sim::{
    log_spaced_checkpoints, simulate, simulate_run, Experiment, Policy, PolicySpec, PriorMode,
    Thompson,
};
use slotbandit::time;
use statrs::distribution::{Beta as BetaDist, Continuous, ContinuousCDF};

fn experiment(ctrs: &[f64], horizon: u64, runs: usize) -> Experiment {
    let spec = EnvSpec {
        ctrs: ctrs.to_vec(),
        cities: 1,
        city_sigma: 0.0,
        traffic_skew: 0.0,
        change: None,
    };
    Experiment {
        env: Environment::build(&spec, 1).unwrap(),
        horizon,
        runs,
        seed: 3,
        history_impressions: 0,
        history_ctrs: ctrs.to_vec(),
        run_envs: Vec::new(),
    }
}

const SEQUENTIAL_TS: PolicySpec = PolicySpec::Thompson {
    refresh: 1,
    window: 0,
    priors: PriorMode::Uniform,
};

#[test]
fn the_oracle_has_zero_regret() {
    let exp = experiment(&[0.1, 0.05, 0.02], 20_000, 1);
    let checkpoints = log_spaced_checkpoints(exp.horizon, &[]);
    let regret = simulate_run(&exp, &PolicySpec::Oracle, &checkpoints, 9);
    assert_eq!(regret.len(), checkpoints.len());
    assert!(regret.iter().all(|&r| r == 0.0), "{regret:?}");
}

#[test]
fn uniform_regret_grows_linearly() {
    let ctrs = [0.1, 0.05, 0.02];
    let exp = experiment(&ctrs, 40_000, 4);
    let checkpoints = log_spaced_checkpoints(exp.horizon, &[10_000, 20_000]);
    let curves = simulate(&exp, &[PolicySpec::Uniform], &checkpoints, &|| ());
    let mean_gap = (0.0 + 0.05 + 0.08) / 3.0;
    for t in [10_000u64, 20_000, 40_000] {
        let (regret, _) = curves[0].at(t).unwrap();
        let expected = mean_gap * t as f64;
        assert!(
            (regret / expected - 1.0).abs() < 0.03,
            "t={t}: {regret} vs {expected}"
        );
    }
}

#[test]
fn thompson_beats_uniform_and_grows_sublinearly() {
    let exp = experiment(&[0.1, 0.05, 0.02], 20_000, 4);
    let checkpoints = log_spaced_checkpoints(exp.horizon, &[10_000]);
    let curves = simulate(
        &exp,
        &[SEQUENTIAL_TS, PolicySpec::Uniform],
        &checkpoints,
        &|| (),
    );
    let (ts, _) = curves[0].at_horizon();
    let (uniform, _) = curves[1].at_horizon();
    assert!(ts < uniform / 5.0, "ts {ts} uniform {uniform}");
    let (ts_half, _) = curves[0].at(10_000).unwrap();
    assert!(ts < 1.6 * ts_half, "{ts_half} -> {ts}");
}

/// P(X1 > X2) for independent Beta variables by Simpson's rule on ∫ f1(x) F2(x) dx.
fn exact_prob_first_is_best(a: (f64, f64), b: (f64, f64)) -> f64 {
    let f1 = BetaDist::new(a.0, a.1).unwrap();
    let f2 = BetaDist::new(b.0, b.1).unwrap();
    let n = 20_000;
    let h = 1.0 / n as f64;
    let g = |x: f64| f1.pdf(x) * f2.cdf(x);
    let mut sum = g(0.0) + g(1.0);
    for i in 1..n {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += w * g(i as f64 * h);
    }
    sum * h / 3.0
}

#[test]
fn prob_best_by_monte_carlo_matches_numerical_integration() {
    for (a, b) in [((12.0, 90.0), (9.0, 95.0)), ((3.0, 5.0), (4.0, 4.0))] {
        let arms = [BetaSampler::new(a.0, a.1), BetaSampler::new(b.0, b.1)];
        let draws = 200_000;
        let mc = prob_best(&arms, draws, &mut seeded_rng(11));
        let exact = exact_prob_first_is_best(a, b);
        let se = (exact * (1.0 - exact) / draws as f64).sqrt();
        assert!(
            (mc[0] - exact).abs() < 4.0 * se,
            "{a:?} vs {b:?}: mc {} exact {exact}",
            mc[0]
        );
        assert!((mc[0] + mc[1] - 1.0).abs() < 1e-12);
    }
}

fn slot_config(arms: usize) -> SlotConfig {
    let from = time::parse_rfc3339("2026-11-01T00:00:00+05:30").unwrap();
    let ids = (0..arms).map(|i| format!("b{i}"));
    SlotConfig::with_banners("lab", "hero", ids, from, from + Duration::days(30))
}

/// The simulator's Thompson policy decides with the service's function: with the same seed and
/// the same counts it makes the same choices as `thompson_select` and `SlotPolicy::decide`.
#[test]
fn simulator_thompson_is_the_service_function() {
    let arms = 5;
    let mut policy = Thompson::new(1, arms, 1, 0, PriorMode::Uniform, Vec::new());
    let mut counts = vec![(0u64, 0u64); arms];
    let mut feed = seeded_rng(5);
    let truth = [0.3, 0.2, 0.25, 0.1, 0.05];
    for _ in 0..2_000 {
        let arm = policy.choose(0, &truth, &mut feed);
        let click = rand::RngExt::random::<f64>(&mut feed) < truth[arm];
        policy.observe(0, arm, click);
        counts[arm].0 += 1;
        counts[arm].1 += u64::from(click);
    }
    let posteriors: Vec<BetaPosterior> = counts
        .iter()
        .map(|&(n, k)| BetaPosterior::uniform().updated(n, k))
        .collect();
    let config = slot_config(arms);
    let mut banner = 0;
    let service = SlotPolicy::new(&std::sync::Arc::new(config.clone()), |_| {
        banner += 1;
        posteriors[banner - 1]
    });
    let now = time::parse_rfc3339("2026-11-02T12:00:00+05:30").unwrap();
    let (mut sim_rng, mut fn_rng, mut service_rng) =
        (seeded_rng(42), seeded_rng(42), seeded_rng(42));
    let mut out = Vec::new();
    let mut distinct = std::collections::BTreeSet::new();
    for _ in 0..5_000 {
        let simulated = policy.choose(0, &truth, &mut sim_rng);
        thompson_select(&policy.samplers()[0], |_| true, 1, &mut fn_rng, &mut out);
        assert_eq!(simulated, out[0]);
        service.decide(now, 1, &mut service_rng, &mut out).unwrap();
        assert_eq!(simulated, out[0]);
        distinct.insert(simulated);
    }
    assert!(
        distinct.len() > 1,
        "the draws must be random, not a fixed argmax"
    );
}

#[test]
fn batched_refresh_keeps_the_posterior_until_the_refresh() {
    let mut policy = Thompson::new(1, 2, 100, 0, PriorMode::Uniform, Vec::new());
    let before = policy.samplers()[0].clone();
    for _ in 0..99 {
        policy.observe(0, 0, true);
    }
    assert_eq!(policy.samplers()[0], before);
    policy.observe(0, 0, true);
    assert_ne!(policy.samplers()[0], before);
}

fn slotbandit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn assert_fails_with(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

#[test]
fn simulate_writes_the_csv_and_both_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = dir.path().join("lab.toml");
    std::fs::write(
        &config,
        "horizon = 500\nruns = 50\npolicies = [\"uniform\"]\n[environment]\nctrs = [0.2, 0.1]\n",
    )
    .unwrap();
    let o = slotbandit(&[
        "simulate",
        "--config",
        config.to_str().unwrap(),
        "--horizon",
        "2000",
        "--runs",
        "3",
        "--policy",
        "ts,ucb1,egreedy,uniform",
        "--refresh",
        "1,100",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(out.join("regret.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("policy,t,mean,se"));
    for policy in [
        "ts/refresh=1",
        "ts/refresh=100",
        "ucb1",
        "egreedy0.1",
        "uniform",
    ] {
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&format!("{policy},2000,"))),
            "{policy} lacks t = T (flags override the file): {csv}"
        );
    }
    for plot in ["regret.png", "regret.svg"] {
        let bytes = std::fs::read(out.join(plot)).unwrap();
        assert!(bytes.len() > 10_000, "{plot} is {} bytes", bytes.len());
    }
    let svg = std::fs::read_to_string(out.join("regret.svg")).unwrap();
    assert!(svg.contains("Lai–Robbins bound"));
}

#[test]
fn simulate_rejects_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--arms", "1"], "--arms"),
        (&["--arms", "5", "--ctr-range", "0.2,0.1"], "--ctr-range"),
        (&["--horizon", "0"], "--horizon"),
        (&["--runs", "0"], "--runs"),
        (&["--refresh", "0"], "--refresh"),
        (&["--policy", "greedyish"], "unknown policy"),
        (&["--ctrs", "0.1,1.5"], "CTR"),
        (&["--epsilon", "2"], "--epsilon"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["simulate", "--out", out];
        args.extend_from_slice(flags);
        assert_fails_with(&slotbandit(&args), needle);
    }
    let missing = slotbandit(&["simulate", "--config", "/nonexistent.toml", "--out", out]);
    assert_fails_with(&missing, "/nonexistent.toml");
}
