//! Thompson decisions: one Beta draw per eligible banner, the highest draws win. A single choice
//! (n = 1) skips the draws of arms that cannot win without changing the decision's law (module
//! `cutoff`).

use chrono::{DateTime, Utc};
use rand::{Rng, RngExt};
use rand_distr::Distribution;
use std::sync::{Arc, RwLock, TryLockError};

use super::cutoff::{cutoff_point, draw_above};
use super::{prob_best_of, BetaPosterior, BetaSampler, RankPropensities, SlotPriors};
use crate::model::{Banner, Counts, SlotConfig};
use crate::time;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("no banner of {tenant}/{slot} is valid at {at}")]
    NoValidBanner {
        tenant: String,
        slot: String,
        at: String,
    },
    #[error("n must be at least 1")]
    ZeroBanners,
}

/// Chooses up to `n` distinct arms among those `eligible` by Thompson sampling and writes their
/// indices into `out`, best draw first. Used by the service and by the simulator alike.
pub fn thompson_select<R: Rng + ?Sized>(
    arms: &[BetaSampler],
    eligible: impl Fn(usize) -> bool,
    n: usize,
    rng: &mut R,
    out: &mut Vec<usize>,
) {
    out.clear();
    if n == 1 {
        select_one(arms, eligible, rng, out);
        return;
    }
    let mut draws: Vec<(f64, usize)> = arms
        .iter()
        .enumerate()
        .filter(|(i, _)| eligible(*i))
        .map(|(i, arm)| (arm.sample(rng), i))
        .collect();
    let take = n.min(draws.len());
    if take == 0 {
        return;
    }
    let by_draw_desc = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0);
    if take < draws.len() {
        draws.select_nth_unstable_by(take - 1, by_draw_desc);
        draws.truncate(take);
    }
    draws.sort_unstable_by(by_draw_desc);
    out.extend(draws.iter().map(|&(_, i)| i));
}

/// The single Thompson choice, pruned (module `cutoff` gives the exactness argument): the leader
/// (the eligible arm of the highest posterior mean) is drawn first; the other arms whose cut-off
/// the best draw so far clears are decided together by one uniform (each in its tail with its own
/// probability, independently), and an arm takes a Beta draw only when it falls in its tail
/// (then drawn from the tail law) or when its cut-off is not cleared.
#[inline]
fn select_one<R: Rng + ?Sized>(
    arms: &[BetaSampler],
    eligible: impl Fn(usize) -> bool,
    rng: &mut R,
    out: &mut Vec<usize>,
) {
    let mut leader: Option<(usize, f64)> = None;
    for (i, arm) in arms.iter().enumerate() {
        if eligible(i) && leader.is_none_or(|(_, mean)| arm.mean() > mean) {
            leader = Some((i, arm.mean()));
        }
    }
    let Some((leader, _)) = leader else {
        return;
    };
    // The best draw so far as best_x / best_sum; a draw x / sum beats it when
    // x · best_sum > best_x · sum, both sums being positive.
    let (mut best_x, best_y) = arms[leader].draw_parts(rng);
    let (mut best_sum, mut best) = (best_x + best_y, leader);
    // The pruned arms since the last tail share one uniform `u`: given that they all stayed
    // below their cut-offs, u is uniform on [0, below), below being the product of their
    // probabilities P(X ≤ q); the next pruned arm stays below its cut-off exactly when
    // u < below · P(X ≤ q), with probability P(X ≤ q), independently of the others.
    let (mut u, mut below) = (rng.random::<f64>(), 1.0);
    for (i, arm) in arms.iter().enumerate() {
        if i == leader || !eligible(i) {
            continue;
        }
        // Computing a cut-off costs about a microsecond: only once the best draw clears it.
        let cutoff = match arm.cached_cutoff() {
            Some(cutoff) => Some(cutoff),
            None => {
                (cutoff_point(arm.alpha(), arm.beta()) * best_sum <= best_x).then(|| arm.cutoff())
            }
        };
        let (x, sum) = match cutoff {
            Some(cutoff) if cutoff.q * best_sum <= best_x => {
                below *= cutoff.below;
                if u < below {
                    continue;
                }
                // In its tail: u is spent, the arms after this one share a fresh uniform.
                (u, below) = (rng.random::<f64>(), 1.0);
                (draw_above(arm.alpha(), arm.beta(), cutoff.q, rng), 1.0)
            }
            _ => draw_in_full(arm, rng),
        };
        if x * best_sum > best_x * sum {
            (best_x, best_sum, best) = (x, sum, i);
        }
    }
    out.push(best);
}

/// A non-leader arm's draw as (x, x + y), out of line: rare once the posteriors concentrate,
/// and inlined it would crowd the pruning loop's registers.
#[cold]
#[inline(never)]
fn draw_in_full<R: Rng + ?Sized>(arm: &BetaSampler, rng: &mut R) -> (f64, f64) {
    let (x, y) = arm.draw_parts(rng);
    (x, x + y)
}

/// A slot ready for decisions: its banners (shared with every other policy of the slot: one
/// per city and window) and a prepared sampler of each banner's posterior.
#[derive(Debug)]
pub struct SlotPolicy {
    config: Arc<SlotConfig>,
    samplers: Vec<BetaSampler>,
    /// Propensities by (valid banners, banners shown), computed when a decision first needs
    /// them: the posteriors do not change for the life of a policy. A carousel's table is made
    /// whole at once; one banner's fills in banner by banner.
    propensities: RwLock<Vec<PropensityEntry>>,
}

type PropensityEntry = (Vec<usize>, usize, Propensities);

/// Whether a propensity computation may run now: `run` runs `work` and says so, or skips it.
/// The service bounds the CPU time decisions spend on propensities this way.
pub trait ComputeBudget {
    fn run(&self, work: &mut dyn FnMut()) -> bool;
}

/// Every computation runs.
pub struct Unbounded;

impl ComputeBudget for Unbounded {
    fn run(&self, work: &mut dyn FnMut()) -> bool {
        work();
        true
    }
}

/// No computation runs: only what is already known is used.
pub struct KnownOnly;

impl ComputeBudget for KnownOnly {
    fn run(&self, _: &mut dyn FnMut()) -> bool {
        false
    }
}

/// What a policy knows of its propensities for one set of valid banners.
#[derive(Debug)]
enum Propensities {
    /// One banner a decision: P(best) with its error bound, per banner as it is first shown.
    Best(Vec<Option<(f64, f64)>>),
    /// Carousels: every rank of every banner at once, estimated from draws.
    Ranks(RankPropensities),
}

impl Clone for SlotPolicy {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            samplers: self.samplers.clone(),
            propensities: RwLock::default(),
        }
    }
}

impl SlotPolicy {
    pub fn new(
        config: &Arc<SlotConfig>,
        mut posterior_of: impl FnMut(&Banner) -> BetaPosterior,
    ) -> Self {
        let samplers = config
            .banners
            .iter()
            .map(|b| posterior_of(b).distribution())
            .collect();
        Self {
            config: config.clone(),
            samplers,
            propensities: RwLock::default(),
        }
    }

    /// For each banner of `shown` (at rank = its position), the probability that Thompson
    /// sampling alone shows it there in decisions of `n` banners at `now`, with the bound of its
    /// error; and how many banners are valid then. Computed once per banner and valid set, when
    /// `budget` lets the work run (outside the lock: decisions reading what is known do not wait
    /// for a computation); `None` where it does not.
    pub fn propensities<R: Rng + ?Sized>(
        &self,
        now: DateTime<Utc>,
        n: usize,
        shown: &[usize],
        rng: &mut R,
        budget: &dyn ComputeBudget,
    ) -> (Vec<Option<(f64, f64)>>, usize) {
        let valid: Vec<usize> = (0..self.config.banners.len())
            .filter(|&i| self.config.banners[i].is_valid_at(now))
            .collect();
        let count = valid.len();
        let mut out = self.known_propensities(&valid, n, shown);
        if out.iter().all(Option::is_some) {
            return (out, count);
        }
        if n == 1 {
            for (known, &arm) in out.iter_mut().zip(shown) {
                if known.is_none() {
                    budget.run(&mut || *known = Some(prob_best_of(&self.samplers, &valid, arm)));
                    if let Some(p) = *known {
                        self.remember(&valid, n, |table| match table {
                            Propensities::Best(best) => best[arm] = Some(p),
                            Propensities::Ranks(_) => unreachable!("one banner keeps P(best)"),
                        });
                    }
                }
            }
        } else {
            let mut computed = None;
            budget.run(&mut || {
                computed = Some(RankPropensities::compute(&self.samplers, &valid, n, rng));
            });
            if let Some(ranks) = computed {
                out = Self::of_ranks(&ranks, shown);
                self.remember(&valid, n, |table| *table = Propensities::Ranks(ranks));
            }
        }
        (out, count)
    }

    /// What is known of the propensities of `shown` among `valid` in decisions of `n`; nothing
    /// while another thread updates the table. Never waits: the thread that computes may run at
    /// a low priority (the service's does), and a decision waiting for it would wait for as long
    /// as the scheduler keeps it off the CPU. Readers share the lock, so decisions of one policy
    /// on several threads do not miss each other's reads.
    fn known_propensities(
        &self,
        valid: &[usize],
        n: usize,
        shown: &[usize],
    ) -> Vec<Option<(f64, f64)>> {
        let known = match self.propensities.try_read() {
            Ok(known) => known,
            Err(TryLockError::WouldBlock) => return vec![None; shown.len()],
            Err(TryLockError::Poisoned(e)) => panic!("propensity table poisoned: {e}"),
        };
        match known.iter().find(|(v, m, _)| v == valid && *m == n) {
            None => vec![None; shown.len()],
            Some((_, _, Propensities::Best(best))) => shown.iter().map(|&arm| best[arm]).collect(),
            Some((_, _, Propensities::Ranks(ranks))) => Self::of_ranks(ranks, shown),
        }
    }

    fn of_ranks(ranks: &RankPropensities, shown: &[usize]) -> Vec<Option<(f64, f64)>> {
        shown
            .iter()
            .enumerate()
            .map(|(rank, &arm)| Some((ranks.p[arm][rank], ranks.error[arm][rank])))
            .collect()
    }

    /// Updates the table of `valid` and `n`, made (empty) if there is none yet.
    fn remember(&self, valid: &[usize], n: usize, update: impl FnOnce(&mut Propensities)) {
        let mut known = self.propensities.write().expect("not poisoned");
        let at = match known.iter().position(|(v, m, _)| v == valid && *m == n) {
            Some(at) => at,
            None => {
                // Validity changes a few times a day: keep the latest few sets.
                if known.len() >= 4 {
                    known.remove(0);
                }
                let empty = Propensities::Best(vec![None; self.samplers.len()]);
                known.push((valid.to_vec(), n, empty));
                known.len() - 1
            }
        };
        update(&mut known[at].2);
    }

    /// The arms of one city as the service decides with them: each banner's prior
    /// ([`SlotPriors::for_arm`]) updated by its counts (`counts` in config order; a city without
    /// counts of its own passes zeros and decides from its prior alone).
    pub fn of_city(
        config: &Arc<SlotConfig>,
        priors: &SlotPriors,
        city: &str,
        counts: &[Counts],
    ) -> Self {
        let mut counts = counts.iter();
        let prior_of = priors.for_city(city);
        Self::new(config, |b| {
            let c = counts.next().copied().unwrap_or(Counts::ZERO);
            prior_of(&b.id).posterior(c.impressions, c.clicks)
        })
    }

    /// The slot's banners, in the order of `samplers()` and `posteriors()`.
    pub fn banners(&self) -> &[Banner] {
        &self.config.banners
    }

    /// Each banner's posterior.
    pub fn posteriors(&self) -> impl Iterator<Item = BetaPosterior> + '_ {
        self.samplers.iter().map(|s| BetaPosterior {
            alpha: s.alpha(),
            beta: s.beta(),
        })
    }

    pub fn samplers(&self) -> &[BetaSampler] {
        &self.samplers
    }

    /// Up to `n` distinct banners valid at `now`, best draw first, as indices into
    /// `candidates()`. Fails when `n` is 0 or no banner is valid.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        now: DateTime<Utc>,
        n: usize,
        rng: &mut R,
        out: &mut Vec<usize>,
    ) -> Result<(), DecisionError> {
        self.checked(now, n, out, |out| {
            let valid = |i: usize| self.config.banners[i].is_valid_at(now);
            thompson_select(&self.samplers, valid, n, rng, out);
        })
    }

    /// `choose`'s banners in `out`, refusing a decision of no banner and one that found none
    /// valid at `now`.
    fn checked(
        &self,
        now: DateTime<Utc>,
        n: usize,
        out: &mut Vec<usize>,
        choose: impl FnOnce(&mut Vec<usize>),
    ) -> Result<(), DecisionError> {
        if n == 0 {
            return Err(DecisionError::ZeroBanners);
        }
        choose(out);
        if out.is_empty() {
            return Err(DecisionError::NoValidBanner {
                tenant: self.config.tenant.clone(),
                slot: self.config.slot.clone(),
                at: time::format_ist(now),
            });
        }
        Ok(())
    }

    /// Up to `n` distinct banners valid at `now`, each ordering equally likely: the holdout's
    /// uniform random decision. Fails like [`Self::decide`].
    pub fn decide_uniformly<R: Rng + ?Sized>(
        &self,
        now: DateTime<Utc>,
        n: usize,
        rng: &mut R,
        out: &mut Vec<usize>,
    ) -> Result<(), DecisionError> {
        self.checked(now, n, out, |out| {
            out.extend(
                (0..self.config.banners.len()).filter(|&i| self.config.banners[i].is_valid_at(now)),
            );
            let shown = n.min(out.len());
            for k in 0..shown {
                let pick = rng.random_range(k..out.len());
                out.swap(k, pick);
            }
            out.truncate(shown);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::seeded_rng;
    use statrs::distribution::{Beta as BetaDist, ContinuousCDF};

    /// Exact P(arm i has the highest draw) = ∫_0^1 Π_{j≠i} F_j(F_i⁻¹(u)) du. The integrand is
    /// non-decreasing in u and within [0, 1], so the midpoint rule with `steps` points is off by
    /// at most 1 / steps, and shapes below 1 (unbounded densities) need no special care.
    fn exact_prob_best(params: &[(f64, f64)], steps: usize) -> Vec<f64> {
        let dists: Vec<BetaDist> = params
            .iter()
            .map(|&(a, b)| BetaDist::new(a, b).unwrap())
            .collect();
        (0..dists.len())
            .map(|i| {
                (0..steps)
                    .map(|k| {
                        let x = dists[i].inverse_cdf((k as f64 + 0.5) / steps as f64);
                        dists
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .map(|(_, d)| d.cdf(x))
                            .product::<f64>()
                    })
                    .sum::<f64>()
                    / steps as f64
            })
            .collect()
    }

    #[test]
    fn uniform_decisions_ignore_the_posteriors_and_skip_invalid_banners() {
        let from = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let to = from + chrono::Duration::days(1);
        let mut config =
            SlotConfig::with_banners("ajio", "hero", ["b0", "b1", "b2", "b3"], from, to);
        config.banners[3].valid_to = from + chrono::Duration::hours(1);
        let config = Arc::new(config);
        // b0 is far ahead: Thompson sampling would show it first nearly always.
        let policy = SlotPolicy::new(&config, |b| match b.id.as_str() {
            "b0" => BetaPosterior {
                alpha: 900.0,
                beta: 100.0,
            },
            _ => BetaPosterior {
                alpha: 1.0,
                beta: 99.0,
            },
        });
        let now = from + chrono::Duration::hours(2);
        let mut rng = seeded_rng(11);
        let (draws, mut first, mut out) = (30_000, [0u32; 4], Vec::new());
        for _ in 0..draws {
            out.clear();
            policy.decide_uniformly(now, 2, &mut rng, &mut out).unwrap();
            assert_eq!(out.len(), 2);
            assert_ne!(out[0], out[1]);
            assert!(!out.contains(&3), "b3 is no longer valid");
            first[out[0]] += 1;
        }
        for (i, &n) in first[..3].iter().enumerate() {
            let freq = f64::from(n) / f64::from(draws);
            let tol = 4.5 * (2.0 / 9.0 / f64::from(draws)).sqrt();
            assert!((freq - 1.0 / 3.0).abs() <= tol, "b{i} first in {freq}");
        }
        out.clear();
        assert!(policy.decide_uniformly(to, 1, &mut rng, &mut out).is_err());
    }

    #[test]
    fn selection_frequencies_match_exact_p_best() {
        let cases: [&[(f64, f64)]; 9] = [
            &[(0.5, 0.5), (0.7, 2.0)],
            &[(12.0, 90.0), (9.0, 95.0)],
            &[(12.0, 90.0), (9.0, 95.0), (15.0, 120.0)],
            &[(0.3, 4.0), (2.0, 20.0), (1.0, 9.0)],
            // Pruned: a concentrated leader, concentrated arms near it (their wins all come
            // from tail draws beyond the cut-off) and one far below.
            &[
                (600.0, 5_400.0),
                (80.0, 920.0),
                (75.0, 925.0),
                (90.0, 910.0),
                (50.0, 950.0),
            ],
            // A concentrated leader among wide arms (never prunable: full draws) and a pruned one.
            &[
                (1_000.0, 9_000.0),
                (3.0, 27.0),
                (1.0, 12.0),
                (0.6, 5.0),
                (70.0, 930.0),
            ],
            // Skewed small shapes pruned against a leader near 0.9, beside an unprunable one.
            &[(90.0, 10.0), (1.0, 3.0), (1.5, 4.0), (2.0, 2.5), (1.0, 1.0)],
            // Arms of equal means: which one leads is decided by order, the law must not change.
            &[(200.0, 1_800.0), (200.0, 1_800.0), (20.0, 180.0)],
            // Many arms pruned together, sharing one uniform, with heavy tails (3% beyond the
            // cut-off, so several tails per decision are common) that often beat the leader,
            // and two arms pruned only when the leader's draw is high.
            &[
                (300.0, 2_700.0),
                (1.0, 40.0),
                (1.0, 40.0),
                (1.0, 40.0),
                (2.0, 60.0),
                (2.0, 60.0),
                (25.0, 320.0),
                (25.0, 320.0),
                (1.0, 30.0),
            ],
        ];
        let (draws, steps) = (200_000, 20_000);
        for (case, params) in cases.iter().enumerate() {
            let arms: Vec<BetaSampler> = params
                .iter()
                .map(|&(a, b)| BetaSampler::new(a, b))
                .collect();
            let mut rng = seeded_rng(300 + case as u64);
            let mut wins = vec![0u64; arms.len()];
            let mut out = Vec::new();
            for _ in 0..draws {
                thompson_select(&arms, |_| true, 1, &mut rng, &mut out);
                wins[out[0]] += 1;
            }
            let exact = exact_prob_best(params, steps);
            for (k, &p) in exact.iter().enumerate() {
                // Five binomial standard errors plus the quadrature bound.
                let tol = 5.0 * (p * (1.0 - p) / draws as f64).sqrt() + 1.0 / steps as f64;
                let freq = wins[k] as f64 / draws as f64;
                assert!(
                    (freq - p).abs() < tol,
                    "{params:?} arm {k}: frequency {freq} vs exact {p} (tol {tol})"
                );
            }
        }
    }

    /// A decision RNG that counts the 32- and 64-bit words drawn from it.
    struct CountingRng {
        inner: crate::bandit::DecisionRng,
        words: u64,
    }

    impl rand::TryRng for CountingRng {
        type Error = std::convert::Infallible;

        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            self.words += 1;
            Ok(self.inner.next_u32())
        }

        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            self.words += 1;
            Ok(self.inner.next_u64())
        }

        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            self.words += 1;
            self.inner.fill_bytes(dst);
            Ok(())
        }
    }

    #[test]
    fn arms_far_below_the_leader_share_one_uniform() {
        // A full Beta draw takes at least four words (a normal and a uniform per gamma); the
        // arms pruned against the leader's draw share one uniform, plus a fresh one and a tail
        // draw for each that falls in its tail (0.6% each). Leader Beta(10^4, 9·10^4) and nine
        // arms around 0.08 (sd 0.0027, 7 sd below the leader): about 4 + 1 + 0.3 words a
        // decision pruned, at least 40 drawn in full. The eligible filter leaves out a tenth arm
        // that would lead.
        let mut arms = vec![BetaSampler::new(10_001.0, 90_001.0)];
        arms.extend((0..9).map(|_| BetaSampler::new(801.0, 9_201.0)));
        arms.push(BetaSampler::new(5_000.0, 5_000.0));
        let mut rng = CountingRng {
            inner: seeded_rng(11),
            words: 0,
        };
        let (decisions, mut out) = (10_000, Vec::new());
        for _ in 0..decisions {
            thompson_select(&arms, |i| i < 10, 1, &mut rng, &mut out);
            assert_eq!(out, [0]);
        }
        let words_per_decision = rng.words as f64 / decisions as f64;
        assert!(
            (5.0..6.0).contains(&words_per_decision),
            "{words_per_decision} words per decision"
        );
        assert!(arms[1..10].iter().all(|arm| arm.cached_cutoff().is_some()));
        assert!(
            arms[10].cached_cutoff().is_none(),
            "ineligible, never looked at"
        );
    }

    #[test]
    fn carousel_draws_are_distinct_and_ranked() {
        let arms: Vec<BetaSampler> = (1..=6)
            .map(|k| BetaSampler::new(k as f64 * 10.0, 100.0))
            .collect();
        let mut rng = seeded_rng(7);
        let mut out = Vec::new();
        thompson_select(&arms, |_| true, 3, &mut rng, &mut out);
        assert_eq!(out.len(), 3);
        let mut sorted = out.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 3);
        thompson_select(&arms, |i| i < 2, 5, &mut rng, &mut out);
        assert_eq!(out.len(), 2, "no more than the eligible arms");
        thompson_select(&arms, |_| false, 1, &mut rng, &mut out);
        assert!(out.is_empty());
    }
}
