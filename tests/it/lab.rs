//! The bandit lab: the simulator's policies, regret accounting, P(best), and the CLI. Small
//! horizons only; the long runs live in bench/lab.

use std::process::{Command, Output};

use chrono::Duration;
use slotbandit::bandit::{
    hierarchical_priors, prob_best, seeded_rng, thompson_select, BannerCounts, BetaPosterior,
    BetaSampler, CityCounts, SlotPolicy,
};
use slotbandit::model::SlotConfig;
use slotbandit::sim::env::{EnvSpec, Environment};
use slotbandit::sim::{
    log_spaced_checkpoints, simulate, simulate_run, ChangeSpec, Experiment, Policy, PolicySpec,
    PriorMode, Service, Thompson,
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

/// `--policy service` decides as production does: after a refresh every city's arms are the
/// jobs' hierarchical priors over the counts so far, composed per arm, plus the arm's counts.
#[test]
fn simulator_service_decides_from_the_jobs_priors_over_its_counts() {
    let (cities, arms, refresh) = (3, 4, 3_000);
    let truth = [
        [0.30, 0.20, 0.10, 0.05],
        [0.15, 0.10, 0.05, 0.02],
        [0.5, 0.4, 0.3, 0.2],
    ];
    let mut policy = Service::new(cities, &[0; 4], refresh, 1e5, Vec::new());
    let mut ledger = vec![vec![(0u64, 0u64); arms]; cities];
    let mut rng = seeded_rng(9);
    for t in 0..refresh {
        let city = (t % 7 % 3) as usize;
        let arm = policy.choose(city, &truth[city], &mut rng);
        let click = rand::RngExt::random::<f64>(&mut rng) < truth[city][arm];
        policy.observe(city, arm, click);
        ledger[city][arm].0 += 1;
        ledger[city][arm].1 += u64::from(click);
    }
    let name = |c: usize| format!("c{c}");
    let counts: Vec<CityCounts> = (0..cities)
        .map(|c| CityCounts {
            city: name(c),
            banners: (0..arms)
                .filter(|&b| ledger[c][b].0 > 0)
                .map(|b| BannerCounts {
                    banner: format!("b{b}"),
                    impressions: ledger[c][b].0,
                    clicks: ledger[c][b].1,
                })
                .collect(),
        })
        .collect();
    let priors = hierarchical_priors(&counts, 1e5);
    for (c, slot) in policy.arms().iter().enumerate() {
        let expected: Vec<BetaPosterior> = (0..arms)
            .map(|b| {
                priors
                    .for_arm(&name(c), &format!("b{b}"))
                    .posterior(ledger[c][b].0, ledger[c][b].1)
            })
            .collect();
        assert_eq!(slot.posteriors().collect::<Vec<_>>(), expected, "city {c}");
        let uniform = BetaPosterior::uniform().updated(ledger[c][0].0, ledger[c][0].1);
        assert_ne!(expected[0], uniform, "the priors are not Beta(1, 1)");
    }
}

/// A banner that is not live yet is never shown; once live, the production path finds it.
#[test]
fn the_service_policy_shows_a_new_banner_only_from_its_start() {
    let live_from = [0, 0, 5_000];
    let truth = [0.02, 0.03, 0.08];
    let mut policy = Service::new(1, &live_from, 500, 1e5, Vec::new());
    let mut rng = seeded_rng(4);
    let mut shown_new = 0;
    for t in 0..20_000u64 {
        let arm = policy.choose(0, &truth, &mut rng);
        assert!(
            t >= 5_000 || arm != 2,
            "banner 2 shown at {t}, before it is live"
        );
        shown_new += u64::from(arm == 2);
        let click = rand::RngExt::random::<f64>(&mut rng) < truth[arm];
        policy.observe(0, arm, click);
    }
    assert!(
        shown_new > 7_500,
        "the new best banner was shown {shown_new} times of 15,000"
    );
}

/// Sharing across cities pays: on cities that differ by a common factor, the production path's
/// regret is well below independent per-city TS's, and also when a new best banner arrives.
#[test]
fn the_service_policy_shares_what_cities_have_in_common() {
    let mut spec = EnvSpec {
        ctrs: vec![0.05, 0.045, 0.04, 0.035, 0.03, 0.02],
        cities: 12,
        city_sigma: 0.5,
        traffic_skew: 1.0,
        change: None,
    };
    for change in [
        None,
        Some(ChangeSpec::NewBanner {
            banner: 0,
            at: 50_000,
        }),
    ] {
        spec.change = change.clone();
        let mut experiment = experiment(&spec.ctrs, 200_000, 4);
        experiment.env = Environment::build(&spec, 12).unwrap();
        let refresh = 2_000;
        let policies = [
            PolicySpec::Thompson {
                refresh,
                window: 0,
                priors: PriorMode::Uniform,
            },
            PolicySpec::Service {
                refresh,
                max_strength: 1e5,
            },
        ];
        let checkpoints = [experiment.horizon];
        let curves = simulate(&experiment, &policies, &checkpoints, &|| {});
        let (ts, service) = (curves[0].at_horizon().0, curves[1].at_horizon().0);
        assert!(
            service < 0.5 * ts,
            "{change:?}: service {service:.0} against independent TS {ts:.0}"
        );
    }
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
    for plot in ["regret.png", "regret.svg", "per_run.png", "per_run.svg"] {
        let bytes = std::fs::read(out.join(plot)).unwrap();
        assert!(bytes.len() > 10_000, "{plot} is {} bytes", bytes.len());
    }
    let svg = std::fs::read_to_string(out.join("regret.svg")).unwrap();
    assert!(svg.contains("Lai–Robbins bound"));
    // Each run's regret at T, a column per policy; its mean is the curve's value at T.
    let per_run = std::fs::read_to_string(out.join("per_run.csv")).unwrap();
    let mut rows = per_run.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert_eq!(&header[..3], ["run", "seed", "ts/refresh=1"]);
    let rows: Vec<Vec<f64>> = rows
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3);
    let uniform = header.iter().position(|h| *h == "uniform").unwrap();
    let mean = rows.iter().map(|r| r[uniform]).sum::<f64>() / 3.0;
    let at_t = csv
        .lines()
        .find_map(|l| l.strip_prefix("uniform,2000,"))
        .and_then(|rest| rest.split(',').next())
        .map(|v| v.parse::<f64>().unwrap())
        .unwrap();
    assert!(
        (mean - at_t).abs() < 0.1,
        "per-run mean {mean} against {at_t}"
    );
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

/// The report's uplift interval (TS against a 10% uniform holdout, 95%) covers the true
/// difference — the mean true CTR of the banners TS showed minus the holdout's — in at least 90%
/// of 50 seeds, on a lab environment with the production policy deciding.
#[test]
fn the_uplift_interval_covers_the_truth_in_50_seeds() {
    use rand::RngExt;
    use slotbandit::eval::uplift;
    use slotbandit::model::Counts;
    let spec = EnvSpec {
        ctrs: vec![0.06, 0.05, 0.04, 0.03, 0.02],
        cities: 4,
        city_sigma: 0.4,
        traffic_skew: 1.0,
        change: None,
    };
    let (seeds, decisions, holdout_share) = (50u64, 20_000u64, 0.1);
    let mut covered = 0;
    let mut excluded_zero = 0;
    for seed in 0..seeds {
        let env = Environment::build(&spec, seed).unwrap();
        let mut policy = Service::new(env.cities(), &[0; 5], 500, 1e5, Vec::new());
        let mut rng = seeded_rng(1_000 + seed);
        let mut groups = [Counts::ZERO; 2];
        let mut truth = [0.0f64; 2];
        let cumulative: Vec<f64> = env
            .traffic
            .iter()
            .scan(0.0, |acc, s| {
                *acc += s;
                Some(*acc)
            })
            .collect();
        for _ in 0..decisions {
            let u: f64 = rng.random();
            let city = cumulative
                .iter()
                .position(|&c| u < c)
                .unwrap_or(env.cities() - 1);
            let ctrs = &env.ctrs[city];
            let held = rng.random::<f64>() < holdout_share;
            let arm = if held {
                rng.random_range(0..ctrs.len())
            } else {
                policy.choose(city, ctrs, &mut rng)
            };
            let click = rng.random::<f64>() < ctrs[arm];
            policy.observe(city, arm, click);
            let g = usize::from(held);
            groups[g] += Counts::new(1, u64::from(click));
            truth[g] += ctrs[arm];
        }
        let true_difference =
            truth[0] / groups[0].impressions as f64 - truth[1] / groups[1].impressions as f64;
        let u = uplift(groups[0], groups[1], 0.95).unwrap().unwrap();
        covered += u32::from(u.difference.contains(true_difference));
        excluded_zero += u32::from(u.difference.low > 0.0);
    }
    eprintln!("uplift interval: covered the truth in {covered} of {seeds} seeds, excluded 0 in {excluded_zero}");
    assert!(
        covered >= 45,
        "covered the truth in {covered} of {seeds} seeds"
    );
    // Not a vacuous interval: with 2,000 holdout impressions TS's lead is usually seen.
    assert!(
        excluded_zero >= 25,
        "excluded 0 in {excluded_zero} of {seeds} seeds"
    );
}
