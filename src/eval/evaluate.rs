//! Off-policy evaluation of other configurations from the service's own decision log: for each
//! logged single-banner decision with a propensity, the probability that a target policy would
//! have shown the same banner, at the same time, to the same city, from what the logs knew then;
//! then the estimators of [`super::ope`] per (tenant, slot) and overall.
//!
//! - **Targets.** `uniform` (every valid banner alike) and `thompson` with its settings: the
//!   production rule (hierarchical priors fitted to every city's all-time counts, at most
//!   `prior` pseudo-impressions strong, an arm's posterior its prior plus its counts) over a
//!   recency `window` of counts if one is given, rebuilt from the logged impressions and clicks
//!   every `refresh` seconds of event time, as the job and the service refresh theirs. Its
//!   probability of each banner is P(its draw is the best), computed as the service computes
//!   propensities.
//! - **Valid banners** are those the store's slot definition makes valid at the decision's
//!   time, as the service chose among.
//! - **The reward model** of the doubly robust estimate is each (city, banner)'s CTR shrunk
//!   towards its banner's and the slot's, cross-fitted: decisions alternate between two folds in
//!   time order, and a decision's model comes from the other fold's clicks.
//! - **Rows that cannot take part are counted, never dropped silently**: impressions without a
//!   propensity, without a request_id (their clicks cannot be joined), of carousel decisions
//!   (several banners per request), of a slot the store does not define, or of a banner its
//!   definition does not make valid at that time.
//! - **A slot is evaluated from its own events alone**, whatever order they come in: a request
//!   and its clicks belong to one (tenant, slot), a click repeated for the same (request_id,
//!   banner) counts once at its earliest time, and decisions at the same instant are taken in
//!   request_id order. So a dataflow job can evaluate each slot on the worker that owns it and
//!   merge the [`EvaluationParts`] of every worker into the same evaluation as one tally's.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::ope::{OffPolicyEstimate, OffPolicyTally, Term};
use super::ReportRange;
use crate::bandit::{
    hierarchical_priors, prob_best_bounded, CityCounts, SlotPolicy, SlotPriors,
    DEFAULT_MAX_PRIOR_STRENGTH,
};
use crate::model::{Counts, Event, EventKind, SlotConfig};

/// A policy to evaluate, named as the user wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub policy: TargetPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetPolicy {
    Uniform,
    Thompson(ThompsonTarget),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThompsonTarget {
    /// Counts over this much time before the decision; `None`: all time.
    pub window: Option<Duration>,
    pub prior_strength: f64,
    pub refresh: Duration,
}

const YEAR_MS: f64 = 366.0 * 24.0 * 3600e3;

/// How often the target's posteriors are rebuilt, by default: the job's priors cadence.
pub const DEFAULT_TARGET_REFRESH_SECS: i64 = 60;

impl Default for ThompsonTarget {
    fn default() -> Self {
        Self {
            window: None,
            prior_strength: DEFAULT_MAX_PRIOR_STRENGTH,
            refresh: Duration::seconds(DEFAULT_TARGET_REFRESH_SECS),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvaluateError {
    #[error("--policy {spec:?}: {rule}")]
    Policy { spec: String, rule: String },
    #[error("--confidence must be between 0 and 1 exclusive (got {0})")]
    Confidence(f64),
    #[error(
        "none of the {impressions} impressions in the range carries a propensity (the decision \
         log's `propensity` field, logged by the service since the decision log was added): \
         nothing to evaluate"
    )]
    NoPropensities { impressions: u64 },
}

impl FromStr for Target {
    type Err = EvaluateError;

    /// `uniform`, or `thompson` with optional `:key=value,…` settings: `window` (minutes),
    /// `prior` (the prior's maximum strength, pseudo-impressions) and `refresh` (seconds).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let error = |rule: String| EvaluateError::Policy {
            spec: spec.to_string(),
            rule,
        };
        let (kind, settings) = spec.split_once(':').unwrap_or((spec, ""));
        let policy =
            match kind {
                "uniform" if settings.is_empty() => TargetPolicy::Uniform,
                "uniform" => return Err(error("uniform takes no settings".into())),
                "thompson" => {
                    let mut target = ThompsonTarget::default();
                    for pair in settings.split(',').filter(|p| !p.is_empty()) {
                        let (key, value) = pair
                            .split_once('=')
                            .ok_or_else(|| error(format!("{pair:?} is not key=value")))?;
                        let number = value
                            .parse::<f64>()
                            .ok()
                            .filter(|v| v.is_finite() && *v > 0.0)
                            .ok_or_else(|| {
                                error(format!("{key} must be a positive number (got {value:?})"))
                            })?;
                        // A window or refresh beyond a year means nothing and would overflow a
                        // Duration.
                        let within_a_year = |unit_ms: f64, unit: &str| {
                            let ms = number * unit_ms;
                            if ms > YEAR_MS {
                                Err(error(format!(
                                    "{key} must be at most a year ({} {unit}; got {value:?})",
                                    YEAR_MS / unit_ms
                                )))
                            } else {
                                Ok(Duration::milliseconds(ms.max(1.0) as i64))
                            }
                        };
                        match key {
                            "window" => target.window = Some(within_a_year(60e3, "minutes")?),
                            "prior" => target.prior_strength = number,
                            "refresh" => target.refresh = within_a_year(1e3, "seconds")?,
                            _ => {
                                return Err(error(format!(
                                    "unknown setting {key:?} (known: window, prior, refresh)"
                                )))
                            }
                        }
                    }
                    TargetPolicy::Thompson(target)
                }
                _ => return Err(error(
                    "must be uniform or thompson[:window=MINUTES,prior=STRENGTH,refresh=SECONDS]"
                        .into(),
                )),
            };
        Ok(Target {
            name: spec.to_string(),
            policy,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Rows that could not take part, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub without_propensity: u64,
    pub without_request_id: u64,
    pub carousel: u64,
    pub unknown_slot: u64,
    pub banner_not_valid: u64,
    /// Clicks beyond the first for the same (request_id, banner): counted once.
    pub repeated_clicks: u64,
}

impl Skipped {
    fn merge(&mut self, other: &Skipped) {
        self.without_propensity += other.without_propensity;
        self.without_request_id += other.without_request_id;
        self.carousel += other.carousel;
        self.unknown_slot += other.unknown_slot;
        self.banner_not_valid += other.banner_not_valid;
        self.repeated_clicks += other.repeated_clicks;
    }
}

/// One target's estimates per (tenant, slot), then overall (`*`, `*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyEvaluation {
    pub policy: String,
    pub rows: Vec<EvaluationRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationRow {
    pub tenant: String,
    pub slot: String,
    /// `None` when no decision of the slot could be weighed.
    pub estimate: Option<OffPolicyEstimate>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub policies: Vec<PolicyEvaluation>,
    /// Impressions of the range, evaluated or not.
    pub impressions: u64,
    pub skipped: Skipped,
    /// Events read, of every kind and time.
    pub events: u64,
}

/// One weighed decision, for whoever wants to check the arithmetic (`evaluate --decisions-out`).
#[derive(Debug, Serialize)]
pub struct DecisionRecord<'a> {
    pub policy: &'a str,
    pub tenant: &'a str,
    pub slot: &'a str,
    pub city: &'a str,
    pub ts: DateTime<Utc>,
    pub request_id: &'a str,
    /// The banners valid then, in the slot's order; `target` and `model` follow it.
    pub banners: Vec<&'a str>,
    /// The index in `banners` of the banner shown.
    pub shown: usize,
    pub propensity: f64,
    pub reward: f64,
    pub target: &'a [f64],
    pub model: &'a [f64],
}

/// An event as the evaluation reads it: what, where and when, and its decision's request_id,
/// propensity and rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationEvent {
    pub kind: EventKind,
    pub tenant: String,
    pub slot: String,
    pub city: String,
    pub banner: String,
    pub ts: DateTime<Utc>,
    pub request_id: Option<String>,
    pub propensity: Option<f64>,
    pub rank: Option<u8>,
}

impl From<Event> for EvaluationEvent {
    fn from(e: Event) -> Self {
        Self {
            kind: e.kind,
            tenant: e.tenant,
            slot: e.slot,
            city: e.city,
            banner: e.banner,
            ts: e.ts,
            request_id: e.request_id,
            propensity: e.decision.propensity,
            rank: e.decision.rank,
        }
    }
}

/// A logged decision of one banner: an impression with its propensity.
#[derive(Debug)]
struct Logged {
    ts: DateTime<Utc>,
    city: String,
    banner: String,
    request_id: String,
    propensity: Option<f64>,
    rank: u8,
}

/// What the target's counts are made of: every impression and (first) click, at its time.
#[derive(Debug)]
struct Observed {
    ts: DateTime<Utc>,
    city: String,
    banner: String,
    click: bool,
}

/// The (request_id, banner) of an impression, which its clicks name.
type ImpressionKey = (String, String);

/// Everything a slot's evaluation reads.
#[derive(Debug, Default)]
struct SlotLog {
    /// Impressions of any time, and clicks without a request_id.
    observed: Vec<Observed>,
    /// Per clicked (request_id, banner), its earliest click: (time, city).
    first_clicks: HashMap<ImpressionKey, (DateTime<Utc>, String)>,
    decisions: Vec<Logged>,
    impressions_per_request: HashMap<String, u32>,
}

/// (tenant, slot)
type SlotKey = (String, String);

/// Gathers events in any order, then [`finish`](EvaluationTally::finish)es, or
/// [`weigh`](EvaluationTally::weigh)s its slots into parts that merge with other tallies'.
pub struct EvaluationTally {
    range: ReportRange,
    slots: BTreeMap<SlotKey, SlotLog>,
    impressions: u64,
    skipped: Skipped,
    events: u64,
}

/// What the slots of one tally add to an evaluation: per (tenant, slot), each target's sums over
/// its weighed decisions, and the counts. Parts of tallies of different slots merge into the
/// parts of one tally of all their events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluationParts {
    /// Per slot with weighed decisions, one tally per target, in the targets' order.
    slots: BTreeMap<SlotKey, Vec<OffPolicyTally>>,
    impressions: u64,
    with_propensity: u64,
    skipped: Skipped,
    events: u64,
}

impl EvaluationTally {
    pub fn new(range: ReportRange) -> Self {
        Self {
            range,
            slots: BTreeMap::new(),
            impressions: 0,
            skipped: Skipped::default(),
            events: 0,
        }
    }

    pub fn add(&mut self, e: EvaluationEvent) {
        self.events += 1;
        let log = self
            .slots
            .entry((e.tenant.clone(), e.slot.clone()))
            .or_default();
        if e.kind == EventKind::Click {
            let Some(request_id) = e.request_id else {
                log.observed.push(Observed {
                    ts: e.ts,
                    city: e.city,
                    banner: e.banner,
                    click: true,
                });
                return;
            };
            match log.first_clicks.entry((request_id, e.banner)) {
                Entry::Vacant(v) => {
                    v.insert((e.ts, e.city));
                }
                Entry::Occupied(mut o) => {
                    self.skipped.repeated_clicks += 1;
                    if (e.ts, &e.city) < (o.get().0, &o.get().1) {
                        o.insert((e.ts, e.city));
                    }
                }
            }
            return;
        }
        log.observed.push(Observed {
            ts: e.ts,
            city: e.city.clone(),
            banner: e.banner.clone(),
            click: false,
        });
        if !self.range.contains(e.ts) {
            return;
        }
        self.impressions += 1;
        let Some(request_id) = e.request_id else {
            self.skipped.without_request_id += 1;
            return;
        };
        *log.impressions_per_request
            .entry(request_id.clone())
            .or_default() += 1;
        log.decisions.push(Logged {
            ts: e.ts,
            city: e.city,
            banner: e.banner,
            request_id,
            propensity: e.propensity,
            rank: e.rank.unwrap_or(1),
        });
    }

    /// The estimates of every target at `confidence`, the slots defined by `configs`; `record`
    /// sees every weighed decision.
    pub fn finish(
        self,
        configs: &HashMap<SlotKey, Arc<SlotConfig>>,
        targets: &[Target],
        confidence: f64,
        record: &mut dyn FnMut(&DecisionRecord),
    ) -> Result<Evaluation, EvaluateError> {
        self.weigh(configs, targets, record)
            .evaluation(targets, confidence)
    }

    /// Weighs every slot's decisions for every target, the slots defined by `configs`, in slot
    /// order; `record` sees every weighed decision.
    pub fn weigh(
        self,
        configs: &HashMap<SlotKey, Arc<SlotConfig>>,
        targets: &[Target],
        record: &mut dyn FnMut(&DecisionRecord),
    ) -> EvaluationParts {
        let mut parts = EvaluationParts {
            slots: BTreeMap::new(),
            impressions: self.impressions,
            with_propensity: 0,
            skipped: self.skipped,
            events: self.events,
        };
        for ((tenant, slot), log) in self.slots {
            let mut decisions = Vec::with_capacity(log.decisions.len());
            for d in log.decisions {
                if d.propensity.is_none() {
                    parts.skipped.without_propensity += 1;
                } else if d.rank != 1 || log.impressions_per_request[&d.request_id] != 1 {
                    parts.with_propensity += 1;
                    parts.skipped.carousel += 1;
                } else {
                    parts.with_propensity += 1;
                    decisions.push(d);
                }
            }
            if decisions.is_empty() {
                continue;
            }
            let Some(config) = configs.get(&(tenant.clone(), slot.clone())) else {
                parts.skipped.unknown_slot += decisions.len() as u64;
                continue;
            };
            let mut observed = log.observed;
            observed.extend(
                log.first_clicks
                    .iter()
                    .map(|((_, banner), (ts, city))| Observed {
                        ts: *ts,
                        city: city.clone(),
                        banner: banner.clone(),
                        click: true,
                    }),
            );
            let slot_log = SlotDecisions::new(config, decisions, observed, &log.first_clicks);
            parts.skipped.banner_not_valid += slot_log.not_valid;
            let tallies = targets
                .iter()
                .map(|target| {
                    let mut t = OffPolicyTally::default();
                    slot_log.weigh(target, &mut t, &mut |r| {
                        record(&DecisionRecord {
                            policy: &target.name,
                            tenant: &tenant,
                            slot: &slot,
                            ..r
                        })
                    });
                    t
                })
                .collect();
            parts.slots.insert((tenant, slot), tallies);
        }
        parts
    }
}

impl EvaluationParts {
    /// Adds the parts of a tally of other slots.
    pub fn merge(&mut self, other: EvaluationParts) {
        self.slots.extend(other.slots);
        self.impressions += other.impressions;
        self.with_propensity += other.with_propensity;
        self.skipped.merge(&other.skipped);
        self.events += other.events;
    }

    /// The estimates of every target (the targets the parts were weighed for) at `confidence`:
    /// per slot in name order, then overall.
    pub fn evaluation(
        self,
        targets: &[Target],
        confidence: f64,
    ) -> Result<Evaluation, EvaluateError> {
        if !(confidence > 0.0 && confidence < 1.0) {
            return Err(EvaluateError::Confidence(confidence));
        }
        if self.with_propensity == 0 {
            return Err(EvaluateError::NoPropensities {
                impressions: self.impressions,
            });
        }
        let policies = targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                let mut overall = OffPolicyTally::default();
                let mut rows: Vec<EvaluationRow> = self
                    .slots
                    .iter()
                    .map(|((tenant, slot), tallies)| {
                        let t = &tallies[i];
                        overall.merge(t);
                        EvaluationRow {
                            tenant: tenant.clone(),
                            slot: slot.clone(),
                            estimate: t.estimate(confidence),
                        }
                    })
                    .collect();
                rows.push(EvaluationRow {
                    tenant: "*".into(),
                    slot: "*".into(),
                    estimate: overall.estimate(confidence),
                });
                PolicyEvaluation {
                    policy: target.name.clone(),
                    rows,
                }
            })
            .collect();
        Ok(Evaluation {
            policies,
            impressions: self.impressions,
            skipped: self.skipped,
            events: self.events,
        })
    }
}

/// One slot's weighable decisions in time order, with what the targets need.
struct SlotDecisions<'a> {
    config: &'a Arc<SlotConfig>,
    decisions: Vec<Weighable>,
    /// Impressions and clicks of the slot's banners in time order: (time, city, banner index, click).
    observed: Vec<(DateTime<Utc>, String, usize, bool)>,
    not_valid: u64,
}

struct Weighable {
    logged: Logged,
    shown: usize,
    valid: Vec<usize>,
    reward: f64,
    /// The reward model of each banner of the slot (config order) for this decision's city.
    model: Vec<f64>,
}

/// Pseudo-impressions by which the reward model shrinks an arm's CTR towards its banner's, and a
/// banner's towards the slot's.
const MODEL_SHRINKAGE: f64 = 10.0;

impl<'a> SlotDecisions<'a> {
    fn new(
        config: &'a Arc<SlotConfig>,
        mut decisions: Vec<Logged>,
        mut observed: Vec<Observed>,
        clicks: &HashMap<ImpressionKey, (DateTime<Utc>, String)>,
    ) -> Self {
        let index = config.banner_index();
        // Decisions at the same instant in request_id order (one decision per request here);
        // observations at the same instant count together, in any order.
        decisions.sort_by(|a, b| (a.ts, &a.request_id).cmp(&(b.ts, &b.request_id)));
        observed.sort_by_key(|o| o.ts);
        let observed = observed
            .into_iter()
            .filter_map(|o| Some((o.ts, o.city, *index.get(o.banner.as_str())?, o.click)))
            .collect();
        let mut not_valid = 0;
        let mut weighable = Vec::with_capacity(decisions.len());
        for d in decisions {
            let valid: Vec<usize> = (0..config.banners.len())
                .filter(|&i| config.banners[i].is_valid_at(d.ts))
                .collect();
            match index.get(d.banner.as_str()) {
                Some(&shown) if valid.contains(&shown) => {
                    let reward = clicks.contains_key(&(d.request_id.clone(), d.banner.clone()));
                    weighable.push(Weighable {
                        logged: d,
                        shown,
                        valid,
                        reward: f64::from(u8::from(reward)),
                        model: Vec::new(),
                    });
                }
                _ => not_valid += 1,
            }
        }
        let mut slot = Self {
            config,
            decisions: weighable,
            observed,
            not_valid,
        };
        slot.fit_reward_model();
        slot
    }

    /// Cross-fitted: decision i's model comes from the decisions of the other parity.
    fn fit_reward_model(&mut self) {
        let banners = self.config.banners.len();
        let mut arms: [HashMap<&str, Vec<Counts>>; 2] = Default::default();
        let mut by_banner = [vec![Counts::ZERO; banners], vec![Counts::ZERO; banners]];
        let mut slot = [Counts::ZERO; 2];
        for (i, d) in self.decisions.iter().enumerate() {
            let c = Counts::new(1, d.reward as u64);
            arms[i % 2]
                .entry(d.logged.city.as_str())
                .or_insert_with(|| vec![Counts::ZERO; banners])[d.shown] += c;
            by_banner[i % 2][d.shown] += c;
            slot[i % 2] += c;
        }
        let shrunk = |c: Counts, towards: f64| {
            (c.clicks as f64 + MODEL_SHRINKAGE * towards) / (c.impressions as f64 + MODEL_SHRINKAGE)
        };
        let models: Vec<Vec<f64>> = self
            .decisions
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let other = 1 - i % 2;
                let slot_ctr =
                    (slot[other].clicks as f64 + 1.0) / (slot[other].impressions as f64 + 2.0);
                let city = arms[other].get(d.logged.city.as_str());
                (0..banners)
                    .map(|b| {
                        let banner_ctr = shrunk(by_banner[other][b], slot_ctr);
                        shrunk(city.map_or(Counts::ZERO, |c| c[b]), banner_ctr)
                    })
                    .collect()
            })
            .collect();
        for (d, model) in self.decisions.iter_mut().zip(models) {
            d.model = model;
        }
    }

    fn weigh(
        &self,
        target: &Target,
        tally: &mut OffPolicyTally,
        record: &mut dyn FnMut(DecisionRecord),
    ) {
        let mut thompson = match target.policy {
            TargetPolicy::Uniform => None,
            TargetPolicy::Thompson(settings) => Some(ThompsonReplay::new(settings)),
        };
        for d in &self.decisions {
            let probabilities: Vec<f64> = match &mut thompson {
                None => vec![1.0 / d.valid.len() as f64; d.valid.len()],
                Some(replay) => replay.probabilities(self, d),
            };
            let at = d.valid.iter().position(|&i| i == d.shown).expect("valid");
            let propensity = d.logged.propensity.expect("weighable");
            let model: Vec<f64> = d.valid.iter().map(|&i| d.model[i]).collect();
            let term = Term {
                weight: probabilities[at] / propensity,
                reward: d.reward,
                model_shown: model[at],
                model_target: probabilities.iter().zip(&model).map(|(p, q)| p * q).sum(),
            };
            tally.add(&term);
            record(DecisionRecord {
                policy: "",
                tenant: "",
                slot: "",
                city: &d.logged.city,
                ts: d.logged.ts,
                request_id: &d.logged.request_id,
                banners: d
                    .valid
                    .iter()
                    .map(|&i| self.config.banners[i].id.as_str())
                    .collect(),
                shown: at,
                propensity,
                reward: d.reward,
                target: &probabilities,
                model: &model,
            });
        }
    }
}

/// Thompson sampling's choice probabilities as the logs knew the slot, refreshed at the
/// settings' cadence.
struct ThompsonReplay {
    settings: ThompsonTarget,
    /// Observations counted so far (all time) and dropped from the window.
    counted: usize,
    expired: usize,
    all_time: BTreeMap<String, Vec<Counts>>,
    windowed: BTreeMap<String, Vec<Counts>>,
    epoch: Option<i64>,
    priors: SlotPriors,
    /// Per (city, valid banners), this epoch's probabilities over the valid banners.
    cache: HashMap<(String, Vec<usize>), Vec<f64>>,
}

impl ThompsonReplay {
    fn new(settings: ThompsonTarget) -> Self {
        Self {
            settings,
            counted: 0,
            expired: 0,
            all_time: BTreeMap::new(),
            windowed: BTreeMap::new(),
            epoch: None,
            priors: SlotPriors::uniform(),
            cache: HashMap::new(),
        }
    }

    fn probabilities(&mut self, slot: &SlotDecisions, d: &Weighable) -> Vec<f64> {
        let refresh_ms = self.settings.refresh.num_milliseconds().max(1);
        let epoch = d.logged.ts.timestamp_millis().div_euclid(refresh_ms);
        if self.epoch != Some(epoch) {
            self.advance(slot, epoch * refresh_ms);
            self.epoch = Some(epoch);
        }
        let key = (d.logged.city.clone(), d.valid.clone());
        if let Some(p) = self.cache.get(&key) {
            return p.clone();
        }
        let banners = slot.config.banners.len();
        let zeros = vec![Counts::ZERO; banners];
        let counts = match self.settings.window {
            Some(_) => self.windowed.get(&d.logged.city),
            None => self.all_time.get(&d.logged.city),
        }
        .unwrap_or(&zeros);
        let policy =
            SlotPolicy::of_city(slot.config, &self.priors, &d.logged.city, &capped(counts));
        let (p, _) = prob_best_bounded(policy.samplers(), &d.valid);
        let mut p: Vec<f64> = d.valid.iter().map(|&i| p[i]).collect();
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
        self.cache.insert(key, p.clone());
        p
    }

    /// Counts everything observed before `until_ms`, drops what the window no longer holds, and
    /// refits the priors, as the job does at an epoch.
    fn advance(&mut self, slot: &SlotDecisions, until_ms: i64) {
        let banners = slot.config.banners.len();
        let add = |map: &mut BTreeMap<String, Vec<Counts>>, city: &str, b: usize, click: bool| {
            let c = &mut map
                .entry(city.to_string())
                .or_insert_with(|| vec![Counts::ZERO; banners])[b];
            if click {
                c.clicks += 1;
            } else {
                c.impressions += 1;
            }
        };
        while let Some((ts, city, b, click)) = slot.observed.get(self.counted) {
            if ts.timestamp_millis() >= until_ms {
                break;
            }
            add(&mut self.all_time, city, *b, *click);
            if self.settings.window.is_some() {
                add(&mut self.windowed, city, *b, *click);
            }
            self.counted += 1;
        }
        if let Some(window) = self.settings.window {
            let from_ms = until_ms - window.num_milliseconds();
            while self.expired < self.counted {
                let (ts, city, b, click) = &slot.observed[self.expired];
                if ts.timestamp_millis() >= from_ms {
                    break;
                }
                let c = &mut self.windowed.get_mut(city).expect("counted")[*b];
                if *click {
                    c.clicks = c.clicks.saturating_sub(1);
                } else {
                    c.impressions = c.impressions.saturating_sub(1);
                }
                self.expired += 1;
            }
        }
        self.priors = hierarchical_priors(
            &city_counts(slot.config, &self.all_time),
            self.settings.prior_strength,
        );
        self.cache.clear();
    }
}

/// The job's input to the priors: every city's banners with counts, in name order.
fn city_counts(config: &SlotConfig, counts: &BTreeMap<String, Vec<Counts>>) -> Vec<CityCounts> {
    counts
        .iter()
        .filter_map(|(city, counts)| CityCounts::of(city, &config.banners, &capped(counts)))
        .collect()
}

/// Counts with clicks at most impressions: a window may hold a click whose impression it has
/// already dropped.
fn capped(counts: &[Counts]) -> Vec<Counts> {
    counts
        .iter()
        .map(|c| Counts::new(c.impressions, c.clicks.min(c.impressions)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_specs_parse_or_name_the_setting_and_rule() {
        let t: Target = "thompson:window=60,prior=30,refresh=5".parse().unwrap();
        let TargetPolicy::Thompson(s) = t.policy else {
            panic!("{t:?}")
        };
        assert_eq!(s.window, Some(Duration::minutes(60)));
        assert_eq!(s.prior_strength, 30.0);
        assert_eq!(s.refresh, Duration::seconds(5));
        assert_eq!(
            "uniform".parse::<Target>().unwrap().policy,
            TargetPolicy::Uniform
        );
        for (spec, rule) in [
            ("greedy", "must be uniform or thompson"),
            ("uniform:window=5", "uniform takes no settings"),
            ("thompson:window", "is not key=value"),
            ("thompson:window=0", "window must be a positive number"),
            ("thompson:prior=NaN", "prior must be a positive number"),
            ("thompson:window=1e300", "window must be at most a year"),
            ("thompson:refresh=1e30", "refresh must be at most a year"),
            ("thompson:decay=2", "unknown setting"),
        ] {
            let e = spec.parse::<Target>().unwrap_err().to_string();
            assert!(e.contains("--policy") && e.contains(rule), "{spec}: {e}");
        }
    }
}
