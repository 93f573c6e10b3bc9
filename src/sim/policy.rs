//! The policies under test. Thompson sampling calls `bandit::thompson_select`, the function the
//! service calls, over posteriors rebuilt every `refresh` decisions exactly as the service
//! rebuilds them from the job's counts (with Beta(1, 1) or empirical-Bayes priors); `Service`
//! runs the production path itself: the jobs' priors and the service's arms and decision.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use super::env::argmax;
use crate::bandit::{
    self, empirical_bayes, hierarchical_priors, thompson_select, BannerCounts, BetaSampler, Prior,
    SlotPolicy, SlotPriors,
};
use crate::model::{Banner, Counts, SlotConfig};

/// Which policy, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PolicySpec {
    /// Thompson sampling as the service runs it: posteriors refreshed every `refresh` decisions;
    /// `window` > 0 keeps only the counts of the last `window` decisions ("only fresh banners").
    Thompson {
        refresh: u64,
        window: u64,
        priors: PriorMode,
    },
    /// The production path: the jobs' priors (`bandit::hierarchical_priors`, at most
    /// `max_strength` pseudo-impressions) recomputed every `refresh` decisions from the all-time
    /// counts per arm, and each decision by the service's own arms and decision
    /// (`SlotPolicy::of_city`, `SlotPolicy::decide`).
    Service { refresh: u64, max_strength: f64 },
    /// UCB1 (Auer et al. 2002).
    Ucb1,
    /// With probability ε a uniform banner, otherwise the best empirical mean.
    EpsilonGreedy { epsilon: f64 },
    /// Uniform A/B: every banner equally often, decided after the fact.
    Uniform,
    /// Always the banner with the highest true CTR (zero regret; for tests).
    Oracle,
}

/// Where Thompson sampling's priors come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PriorMode {
    /// Beta(1, 1) for every (city, banner): cities learn independently.
    Uniform,
    /// Empirical-Bayes priors (docs/architecture.md, "Bandit math") from the all-city pooled counts (plus the history
    /// sample, if any), recomputed at each refresh.
    EmpiricalBayes { strength: f64 },
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySpec::Thompson {
                refresh,
                window,
                priors,
            } => {
                write!(f, "ts")?;
                match priors {
                    PriorMode::Uniform => {}
                    PriorMode::EmpiricalBayes { strength } => write!(f, "-eb{strength}")?,
                }
                if *window > 0 {
                    write!(f, "-window{window}")?;
                }
                write!(f, "/refresh={refresh}")
            }
            PolicySpec::Service { refresh, .. } => write!(f, "service/refresh={refresh}"),
            PolicySpec::Ucb1 => write!(f, "ucb1"),
            PolicySpec::EpsilonGreedy { epsilon } => write!(f, "egreedy{epsilon}"),
            PolicySpec::Uniform => write!(f, "uniform"),
            PolicySpec::Oracle => write!(f, "oracle"),
        }
    }
}

/// A policy deciding for `cities` × `arms` banners and learning from each outcome.
pub trait Policy {
    /// The banner to show in `city`. `truth` (the current CTRs) is seen only by the oracle.
    fn choose<R: Rng + ?Sized>(&mut self, city: usize, truth: &[f64], rng: &mut R) -> usize;
    /// The outcome of showing `arm` in `city`.
    fn observe(&mut self, city: usize, arm: usize, click: bool);
    /// The banners that may be shown from the next decision on (every banner until told).
    fn set_live(&mut self, live: &[bool]);
}

/// Which banners a policy may show: all of them, or those flagged.
#[derive(Debug, Clone, Default, PartialEq)]
struct Live(Option<Vec<bool>>);

impl Live {
    fn set(&mut self, live: &[bool]) {
        self.0 = (!live.iter().all(|&l| l)).then(|| live.to_vec());
    }

    fn allows(&self, arm: usize) -> bool {
        self.0.as_ref().is_none_or(|live| live[arm])
    }

    /// The first live arm of the highest `value`.
    fn argmax(&self, values: &[f64]) -> usize {
        match &self.0 {
            None => argmax(values),
            Some(live) => {
                let mut best: Option<usize> = None;
                for (a, v) in values.iter().enumerate() {
                    if live[a] && best.is_none_or(|b| *v > values[b]) {
                        best = Some(a);
                    }
                }
                best.unwrap_or(0)
            }
        }
    }

    /// A uniformly drawn live arm among `arms`.
    fn uniform<R: Rng + ?Sized>(&self, arms: usize, rng: &mut R) -> usize {
        loop {
            let a = rng.random_range(0..arms);
            if self.allows(a) {
                return a;
            }
        }
    }
}

/// Impressions and clicks per (city, banner).
#[derive(Debug, Clone, PartialEq)]
struct CityCounts {
    impressions: Vec<Vec<u64>>,
    clicks: Vec<Vec<u64>>,
}

impl CityCounts {
    fn zero(cities: usize, arms: usize) -> Self {
        Self {
            impressions: vec![vec![0; arms]; cities],
            clicks: vec![vec![0; arms]; cities],
        }
    }

    fn add(&mut self, city: usize, arm: usize, click: bool) {
        self.impressions[city][arm] += 1;
        self.clicks[city][arm] += u64::from(click);
    }
}

/// The counts of the last `window` decisions, kept in ten buckets of `window / 10` decisions.
#[derive(Debug, Clone)]
struct SlidingCounts {
    bucket_len: u64,
    in_bucket: u64,
    buckets: VecDeque<CityCounts>,
}

const WINDOW_BUCKETS: usize = 10;

impl SlidingCounts {
    /// Records an outcome into `total`; returns true when a bucket expired (all arms changed).
    fn add(&mut self, total: &mut CityCounts, city: usize, arm: usize, click: bool) -> bool {
        total.add(city, arm, click);
        if let Some(current) = self.buckets.back_mut() {
            current.add(city, arm, click);
        }
        self.in_bucket += 1;
        if self.in_bucket < self.bucket_len {
            return false;
        }
        self.in_bucket = 0;
        let (cities, arms) = (total.impressions.len(), total.impressions[0].len());
        self.buckets.push_back(CityCounts::zero(cities, arms));
        if self.buckets.len() <= WINDOW_BUCKETS {
            return false;
        }
        if let Some(old) = self.buckets.pop_front() {
            for c in 0..cities {
                for a in 0..arms {
                    total.impressions[c][a] -= old.impressions[c][a];
                    total.clicks[c][a] -= old.clicks[c][a];
                }
            }
        }
        true
    }
}

/// Thompson sampling over per-(city, banner) Beta posteriors, decided by
/// `bandit::thompson_select` (the service's function).
#[derive(Debug, Clone)]
pub struct Thompson {
    refresh: u64,
    priors: PriorMode,
    /// Pooled impressions and clicks per banner from a history sample (cold start).
    history: Vec<Counts>,
    banner_names: Vec<String>,
    counts: CityCounts,
    window: Option<SlidingCounts>,
    samplers: Vec<Vec<BetaSampler>>,
    /// Arms whose counts changed since the last refresh, when only those need rebuilding,
    /// and a flag per (city × arms + banner) saying whether it is listed.
    stale: Vec<(usize, usize)>,
    is_stale: Vec<bool>,
    rebuild_all: bool,
    since_refresh: u64,
    /// Sequential TS with fixed Beta(1, 1) priors: the refresh after every outcome changes the
    /// observed arm alone, by one click or one non-click.
    sequential_uniform: bool,
    live: Live,
    chosen: Vec<usize>,
}

impl Thompson {
    /// `history` holds pooled (impressions, clicks) per banner known before the first decision.
    pub fn new(
        cities: usize,
        arms: usize,
        refresh: u64,
        window: u64,
        priors: PriorMode,
        history: Vec<Counts>,
    ) -> Self {
        let window = (window > 0).then(|| SlidingCounts {
            bucket_len: (window / WINDOW_BUCKETS as u64).max(1),
            in_bucket: 0,
            buckets: VecDeque::from([CityCounts::zero(cities, arms)]),
        });
        let sequential_uniform = refresh <= 1 && window.is_none() && priors == PriorMode::Uniform;
        let mut policy = Self {
            refresh: refresh.max(1),
            priors,
            history: if history.is_empty() {
                vec![Counts::ZERO; arms]
            } else {
                history
            },
            banner_names: (0..arms).map(|a| format!("b{a}")).collect(),
            counts: CityCounts::zero(cities, arms),
            window,
            samplers: Vec::new(),
            stale: Vec::new(),
            is_stale: vec![false; cities * arms],
            rebuild_all: true,
            since_refresh: 0,
            sequential_uniform,
            live: Live::default(),
            chosen: Vec::with_capacity(1),
        };
        policy.refresh_posteriors();
        policy
    }

    /// The samplers the decisions currently use, per city then banner.
    pub fn samplers(&self) -> &[Vec<BetaSampler>] {
        &self.samplers
    }

    /// The pooled counts per banner: history plus every city.
    fn pooled_counts(&self) -> Vec<BannerCounts> {
        self.banner_names
            .iter()
            .enumerate()
            .map(|(a, name)| {
                let Counts {
                    mut impressions,
                    mut clicks,
                } = self.history[a];
                for c in 0..self.counts.impressions.len() {
                    impressions += self.counts.impressions[c][a];
                    clicks += self.counts.clicks[c][a];
                }
                BannerCounts {
                    banner: name.clone(),
                    impressions,
                    clicks,
                }
            })
            .collect()
    }

    /// The prior of each (city, banner), as the service's job would publish it now.
    fn arm_priors(&self) -> Vec<Vec<Prior>> {
        let cities = self.counts.impressions.len();
        match self.priors {
            PriorMode::Uniform => vec![vec![Prior::UNIFORM; self.banner_names.len()]; cities],
            PriorMode::EmpiricalBayes { strength } => {
                let slot = empirical_bayes(&self.pooled_counts(), strength);
                let banners: Vec<Prior> = self
                    .banner_names
                    .iter()
                    .map(|name| slot.for_banner(name))
                    .collect();
                vec![banners; cities]
            }
        }
    }

    /// Rebuilds one arm's sampler from its counts under the fixed Beta(1, 1) prior.
    fn rebuild_uniform(&mut self, city: usize, arm: usize) {
        self.samplers[city][arm] = Prior::UNIFORM
            .posterior(
                self.counts.impressions[city][arm],
                self.counts.clicks[city][arm],
            )
            .distribution();
    }

    fn refresh_posteriors(&mut self) {
        let arms = self.banner_names.len();
        if self.rebuild_all || !matches!(self.priors, PriorMode::Uniform) {
            let priors = self.arm_priors();
            let counts = &self.counts;
            self.samplers = priors
                .iter()
                .enumerate()
                .map(|(c, city)| {
                    city.iter()
                        .enumerate()
                        .map(|(a, prior)| {
                            prior
                                .posterior(counts.impressions[c][a], counts.clicks[c][a])
                                .distribution()
                        })
                        .collect()
                })
                .collect();
        } else {
            // Fixed Beta(1, 1) priors: only the arms that saw an outcome change.
            for i in 0..self.stale.len() {
                let (c, a) = self.stale[i];
                self.rebuild_uniform(c, a);
            }
        }
        for (c, a) in self.stale.drain(..) {
            self.is_stale[c * arms + a] = false;
        }
        self.rebuild_all = false;
        self.since_refresh = 0;
    }

    /// Records an outcome for the next refresh, and refreshes when it is due.
    fn observe_batched(&mut self, city: usize, arm: usize, click: bool) {
        match &mut self.window {
            Some(window) => {
                if window.add(&mut self.counts, city, arm, click) {
                    self.rebuild_all = true;
                }
            }
            None => self.counts.add(city, arm, click),
        }
        let flag = &mut self.is_stale[city * self.banner_names.len() + arm];
        if !*flag {
            *flag = true;
            self.stale.push((city, arm));
        }
        self.since_refresh += 1;
        if self.since_refresh >= self.refresh {
            self.refresh_posteriors();
        }
    }
}

impl Policy for Thompson {
    fn choose<R: Rng + ?Sized>(&mut self, city: usize, _truth: &[f64], rng: &mut R) -> usize {
        let samplers = &self.samplers[city];
        match &self.live.0 {
            None => thompson_select(samplers, |_| true, 1, rng, &mut self.chosen),
            Some(live) => thompson_select(samplers, |a| live[a], 1, rng, &mut self.chosen),
        }
        self.chosen[0]
    }

    fn set_live(&mut self, live: &[bool]) {
        self.live.set(live);
    }

    #[inline]
    fn observe(&mut self, city: usize, arm: usize, click: bool) {
        if self.sequential_uniform {
            // The arm's sampler is updated in place (the same sampler as rebuilt from the
            // counts), without the stale-arm bookkeeping; the counts are not kept, as nothing
            // reads them again (no pooled priors, no window, no rebuild of every arm).
            self.samplers[city][arm].observe(click);
            return;
        }
        self.observe_batched(city, arm, click);
    }
}

/// The production path (docs/lab.md, "What is simulated"): what the jobs keep and how the
/// service decides from it, on the simulator's clock (decision t at `EPOCH` + t ms).
///
/// - The counts: all-time impressions and clicks per (city, banner), as the store keeps them; a
///   history sample is one more city's counts.
/// - The priors: every `refresh` decisions the jobs' rule, `bandit::hierarchical_priors`, over
///   the arms with counts, cities and banners in name order (as the stream job groups them).
/// - The decision: at the same refresh the service's arms, `SlotPolicy::of_city` (each arm's
///   prior composed by `SlotPriors::for_arm`, plus its counts), and `SlotPolicy::decide` over
///   the banners valid now; a new banner is valid from its first decision on and, without
///   counts, gets the prior the service gives it (the slot's, at the city's level); a city
///   without counts decides from the slot's prior for a new city.
#[derive(Debug, Clone)]
pub struct Service {
    refresh: u64,
    max_strength: f64,
    config: Arc<SlotConfig>,
    city_names: Vec<String>,
    /// City indices in name order.
    by_name: Vec<usize>,
    counts: Vec<Vec<Counts>>,
    history: Vec<Counts>,
    arms: Vec<SlotPolicy>,
    since_refresh: u64,
    decisions: u64,
    chosen: Vec<usize>,
}

/// The simulator's clock starts here; decision t is made t milliseconds later.
const EPOCH: DateTime<Utc> = DateTime::from_timestamp_nanos(1_767_225_600_000_000_000);

/// What the history sample's counts are stored under: a city of its own.
const HISTORY_CITY: &str = "history";

impl Service {
    /// `live_from[b]`: the first decision at which banner b may be shown. `history` holds pooled
    /// (impressions, clicks) per banner known before the first decision (empty: none).
    pub fn new(
        cities: usize,
        live_from: &[u64],
        refresh: u64,
        max_strength: f64,
        history: Vec<Counts>,
    ) -> Self {
        let banners = live_from
            .iter()
            .enumerate()
            .map(|(b, &from)| Banner {
                id: format!("b{b}"),
                image: String::new(),
                valid_from: EPOCH + Duration::milliseconds(from as i64),
                valid_to: DateTime::<Utc>::MAX_UTC,
            })
            .collect();
        let config = Arc::new(SlotConfig {
            tenant: "lab".into(),
            slot: "home".into(),
            banners,
            rules: Default::default(),
        });
        let city_names: Vec<String> = (0..cities).map(|c| format!("c{c}")).collect();
        let mut by_name: Vec<usize> = (0..cities).collect();
        by_name.sort_by(|&a, &b| city_names[a].cmp(&city_names[b]));
        let mut service = Self {
            refresh: refresh.max(1),
            max_strength,
            config,
            city_names,
            by_name,
            counts: vec![vec![Counts::ZERO; live_from.len()]; cities],
            history,
            arms: Vec::new(),
            since_refresh: 0,
            decisions: 0,
            chosen: Vec::with_capacity(1),
        };
        service.refresh_arms();
        service
    }

    /// The arms the decisions currently use, per city.
    pub fn arms(&self) -> &[SlotPolicy] {
        &self.arms
    }

    /// The job's input: every city's arms with counts, cities and banners in name order.
    fn city_counts(&self) -> Vec<bandit::CityCounts> {
        let banners = &self.config.banners;
        let mut cities: BTreeMap<&str, &[Counts]> = self
            .by_name
            .iter()
            .map(|&c| (self.city_names[c].as_str(), self.counts[c].as_slice()))
            .collect();
        if !self.history.is_empty() {
            cities.insert(HISTORY_CITY, &self.history);
        }
        cities
            .into_iter()
            .filter_map(|(city, counts)| bandit::CityCounts::of(city, banners, counts))
            .collect()
    }

    /// The job computes the priors; the service builds every city's arms from them.
    fn refresh_arms(&mut self) {
        let priors: SlotPriors = hierarchical_priors(&self.city_counts(), self.max_strength);
        self.arms = self
            .city_names
            .iter()
            .zip(&self.counts)
            .map(|(city, counts)| SlotPolicy::of_city(&self.config, &priors, city, counts))
            .collect();
        self.since_refresh = 0;
    }
}

impl Policy for Service {
    fn choose<R: Rng + ?Sized>(&mut self, city: usize, _truth: &[f64], rng: &mut R) -> usize {
        let now = EPOCH + Duration::milliseconds(self.decisions as i64);
        self.decisions += 1;
        match self.arms[city].decide(now, 1, rng, &mut self.chosen) {
            Ok(()) => self.chosen[0],
            // The environment always keeps a banner live.
            Err(e) => unreachable!("{e}"),
        }
    }

    fn observe(&mut self, city: usize, arm: usize, click: bool) {
        self.counts[city][arm] += Counts::new(1, u64::from(click));
        self.since_refresh += 1;
        if self.since_refresh >= self.refresh {
            self.refresh_arms();
        }
    }

    fn set_live(&mut self, live: &[bool]) {
        // Banners go live by their validity on the service's clock, as in production.
        let now = EPOCH + Duration::milliseconds(self.decisions as i64);
        debug_assert!(self
            .config
            .banners
            .iter()
            .zip(live)
            .all(|(b, &l)| b.is_valid_at(now) == l));
    }
}

/// UCB1 per city: the highest mean + sqrt(2 ln n / n_i), each banner tried once first.
#[derive(Debug, Clone)]
pub struct Ucb1 {
    counts: CityCounts,
    plays: Vec<u64>,
    live: Live,
}

impl Ucb1 {
    pub fn new(cities: usize, arms: usize) -> Self {
        Self {
            counts: CityCounts::zero(cities, arms),
            plays: vec![0; cities],
            live: Live::default(),
        }
    }
}

impl Policy for Ucb1 {
    fn choose<R: Rng + ?Sized>(&mut self, city: usize, _truth: &[f64], _rng: &mut R) -> usize {
        let impressions = &self.counts.impressions[city];
        let live = &self.live;
        if let Some(untried) =
            (0..impressions.len()).find(|&a| impressions[a] == 0 && live.allows(a))
        {
            return untried;
        }
        let log_plays = 2.0 * (self.plays[city] as f64).ln();
        let clicks = &self.counts.clicks[city];
        let mut best = (f64::NEG_INFINITY, 0);
        for (a, (&n, &k)) in impressions.iter().zip(clicks).enumerate() {
            let n = n as f64;
            let index = k as f64 / n + (log_plays / n).sqrt();
            if index > best.0 && live.allows(a) {
                best = (index, a);
            }
        }
        best.1
    }

    fn observe(&mut self, city: usize, arm: usize, click: bool) {
        self.counts.add(city, arm, click);
        self.plays[city] += 1;
    }

    fn set_live(&mut self, live: &[bool]) {
        self.live.set(live);
    }
}

/// ε-greedy per city; untried banners count as the best.
#[derive(Debug, Clone)]
pub struct EpsilonGreedy {
    epsilon: f64,
    counts: CityCounts,
    live: Live,
}

impl EpsilonGreedy {
    pub fn new(cities: usize, arms: usize, epsilon: f64) -> Self {
        Self {
            epsilon,
            counts: CityCounts::zero(cities, arms),
            live: Live::default(),
        }
    }
}

impl Policy for EpsilonGreedy {
    fn choose<R: Rng + ?Sized>(&mut self, city: usize, truth: &[f64], rng: &mut R) -> usize {
        if rng.random::<f64>() < self.epsilon {
            return self.live.uniform(truth.len(), rng);
        }
        let impressions = &self.counts.impressions[city];
        let live = &self.live;
        if let Some(untried) =
            (0..impressions.len()).find(|&a| impressions[a] == 0 && live.allows(a))
        {
            return untried;
        }
        let mut best = (f64::NEG_INFINITY, 0);
        for (a, (&n, &k)) in impressions
            .iter()
            .zip(&self.counts.clicks[city])
            .enumerate()
        {
            let mean = k as f64 / n as f64;
            if mean > best.0 && live.allows(a) {
                best = (mean, a);
            }
        }
        best.1
    }

    fn observe(&mut self, city: usize, arm: usize, click: bool) {
        self.counts.add(city, arm, click);
    }

    fn set_live(&mut self, live: &[bool]) {
        self.live.set(live);
    }
}

/// Uniform A/B.
#[derive(Debug, Clone, Default)]
pub struct UniformAb {
    live: Live,
}

impl Policy for UniformAb {
    fn choose<R: Rng + ?Sized>(&mut self, _city: usize, truth: &[f64], rng: &mut R) -> usize {
        self.live.uniform(truth.len(), rng)
    }

    fn observe(&mut self, _city: usize, _arm: usize, _click: bool) {}

    fn set_live(&mut self, live: &[bool]) {
        self.live.set(live);
    }
}

/// The banner with the highest true CTR.
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    live: Live,
}

impl Policy for Oracle {
    fn choose<R: Rng + ?Sized>(&mut self, _city: usize, truth: &[f64], _rng: &mut R) -> usize {
        self.live.argmax(truth)
    }

    fn observe(&mut self, _city: usize, _arm: usize, _click: bool) {}

    fn set_live(&mut self, live: &[bool]) {
        self.live.set(live);
    }
}
