//! ns per Thompson decision (10 banners; carousel of 3; 50 banners of one of 20,000 policies at
//! random, as over a million arms), what one decision is made of (a Beta
//! draw, a normal, a uniform, rand_distr's Beta for comparison), the propensity a shown banner
//! logs (P(best) among 50 banners), and generator rows/s.

use chrono::{Duration, NaiveDate};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand_distr::{Distribution, Open01, StandardNormal};
use slotbandit::bandit::{prob_best_of, seeded_rng, BetaPosterior, BetaSampler, SlotPolicy};
use slotbandit::model::SlotConfig;
use slotbandit::synth::{generate, GenSpec};
use slotbandit::time;

fn slot(banners: usize) -> SlotConfig {
    let from = time::parse_rfc3339("2026-11-01T00:00:00+05:30").unwrap();
    let ids = (0..banners).map(|i| format!("b{i:02}"));
    SlotConfig::with_banners("ajio", "hero", ids, from, from + Duration::days(60))
}

fn decisions(c: &mut Criterion) {
    let config = slot(10);
    let mut i = 0u64;
    let policy = SlotPolicy::new(&std::sync::Arc::new(config), |_| {
        i += 1;
        BetaPosterior::uniform().updated(10_000, 100 + 20 * i)
    });
    let now = time::parse_rfc3339("2026-11-28T21:00:00+05:30").unwrap();
    let mut rng = seeded_rng(42);
    let mut out = Vec::with_capacity(4);
    let mut group = c.benchmark_group("decision");
    group.throughput(Throughput::Elements(1));
    group.bench_function("thompson_10_banners", |b| {
        b.iter(|| {
            policy.decide(now, 1, &mut rng, &mut out).unwrap();
            out[0]
        })
    });
    group.bench_function("thompson_10_banners_top3", |b| {
        b.iter(|| {
            policy.decide(now, 3, &mut rng, &mut out).unwrap();
            out[0]
        })
    });
    // A million arms as the service holds them: 20,000 (slot, city) policies of 50 banners,
    // each decision for one of them at random, so that most of what it reads is not in cache.
    let config = std::sync::Arc::new(slot(50));
    let policies: Vec<SlotPolicy> = (0..20_000u64)
        .map(|p| {
            let mut i = 0u64;
            SlotPolicy::new(&config, |_| {
                i += 1;
                let clicks = 120 + (p * 7 + i * 37) % 541;
                BetaPosterior::uniform().updated(10_000, clicks)
            })
        })
        .collect();
    for policy in &policies {
        for _ in 0..20 {
            policy.decide(now, 1, &mut rng, &mut out).unwrap();
        }
    }
    let mut pick = seeded_rng(7);
    group.bench_function("thompson_50_banners_of_20000_policies", |b| {
        b.iter(|| {
            let policy = &policies[rand::RngExt::random_range(&mut pick, 0..policies.len())];
            policy.decide(now, 1, &mut rng, &mut out).unwrap();
            out[0]
        })
    });
    group.finish();
}

fn draws(c: &mut Criterion) {
    let mut rng = seeded_rng(42);
    let mut group = c.benchmark_group("draw");
    group.throughput(Throughput::Elements(1));
    // A posterior of the decision benchmark's size: Beta(1 + 200, 1 + 9,800).
    let ours = BetaSampler::new(201.0, 9_801.0);
    group.bench_function("beta_sampler", |b| b.iter(|| ours.sample(&mut rng)));
    let theirs = rand_distr::Beta::new(201.0, 9_801.0).unwrap();
    group.bench_function("rand_distr_beta", |b| b.iter(|| theirs.sample(&mut rng)));
    let small = BetaSampler::new(0.5, 3.0);
    group.bench_function("beta_sampler_shape_below_1", |b| {
        b.iter(|| small.sample(&mut rng))
    });
    group.bench_function("standard_normal", |b| {
        b.iter(|| -> f64 { StandardNormal.sample(&mut rng) })
    });
    group.bench_function("uniform_open01", |b| {
        b.iter(|| -> f64 { Open01.sample(&mut rng) })
    });
    group.finish();
}

/// P(best) of one shown banner among 50, the propensity the service logs on a (slot, city,
/// banner)'s first decision after its posteriors change: in a (slot, city) of the million-arm
/// bench store (priors of ten thousand pseudo-impressions: narrow, mostly separated posteriors)
/// for the best banner and for one far below it, and among 50 wide, overlapping posteriors.
fn propensities(c: &mut Criterion) {
    let separated: Vec<BetaSampler> = (0..50)
        .map(|i| {
            let clicks = 120.0 + f64::from(i * 37 % 541);
            BetaSampler::new(clicks, 10_100.0 - clicks)
        })
        .collect();
    let overlapping: Vec<BetaSampler> = (0..50)
        .map(|i| BetaSampler::new(3.0 + f64::from(i % 7), 150.0 + f64::from(i * 3 % 11)))
        .collect();
    let valid: Vec<usize> = (0..50).collect();
    let best = |arms: &[BetaSampler]| {
        (0..arms.len())
            .max_by(|&a, &b| arms[a].mean().total_cmp(&arms[b].mean()))
            .unwrap()
    };
    let (top, low) = (best(&separated), 0);
    let mut group = c.benchmark_group("propensity");
    group.throughput(Throughput::Elements(1));
    group.bench_function("p_best_of_50_separated_best", |b| {
        b.iter(|| prob_best_of(&separated, &valid, top))
    });
    group.bench_function("p_best_of_50_separated_low", |b| {
        b.iter(|| prob_best_of(&separated, &valid, low))
    });
    let top = best(&overlapping);
    group.bench_function("p_best_of_50_overlapping_best", |b| {
        b.iter(|| prob_best_of(&overlapping, &valid, top))
    });
    group.finish();
}

fn generator(c: &mut Criterion) {
    let spec = GenSpec {
        impressions: 200_000,
        days: 2,
        seed: 1,
        tenants: 3,
        cities: 12,
        banners: 10,
        start: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
    };
    let mut group = c.benchmark_group("generator");
    group.sample_size(10);
    group.throughput(Throughput::Elements(spec.impressions));
    group.bench_function("impressions_to_parquet", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| generate(&spec, dir.path(), |_| {}).unwrap().rows,
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, decisions, draws, propensities, generator);
criterion_main!(benches);
