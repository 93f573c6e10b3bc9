//! ns per Thompson decision (10 banners; carousel of 3), what one decision is made of (a Beta
//! draw, a normal, a uniform, rand_distr's Beta for comparison), and generator rows/s.

use chrono::{Duration, NaiveDate};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand_distr::{Distribution, Open01, StandardNormal};
use slotbandit::bandit::{seeded_rng, BetaPosterior, BetaSampler, SlotPolicy};
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

criterion_group!(benches, decisions, draws, generator);
criterion_main!(benches);
