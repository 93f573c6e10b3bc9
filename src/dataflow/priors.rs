//! Priors kept by the jobs (docs/architecture.md, "Priors"): the hierarchical priors of every
//! slot, computed by `bandit::hierarchical_priors` from the all-time counts the job maintains and
//! written beside them. This module only holds the counts per slot and schedules the rule.
//!
//! - The sink hands on each arm's new all-time counts (the stream: every epoch's changes, epoch
//!   0's stored counts too; the backfill: every arm once written). They are exchanged by
//!   (tenant, slot), so one worker holds each slot's counts of every city.
//! - The stream recomputes the slots whose counts changed every `every_ms` of event time (the
//!   newest event any worker has counted) and once more when it stops; the backfill once, at its
//!   end. Each slot's priors are one atomic write with a new version of its `priors` part.
//! - `slotbandit priors` ([`write_priors`]) runs the same rule over the store's all-time rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc};

use rustc_hash::FxHashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Operator;
use timely::dataflow::StreamVec;

use super::harness::Failure;
use super::sink::SinkSpec;
use crate::bandit::{hierarchical_priors, BannerCounts, CityCounts};
use crate::model::{ArmKey, Counts};
use crate::store::{CountQuery, PosteriorStore, SlotPriorsWrite, StoreError};

pub use crate::bandit::DEFAULT_MAX_PRIOR_STRENGTH;

/// Minutes of event time between two computations of the stream job's priors, by default.
pub const DEFAULT_PRIORS_EVERY_MINUTES: u32 = 1;

/// How a job keeps the priors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorSettings {
    /// Pseudo-impressions an arm's prior carries at most.
    pub max_strength: f64,
    /// Event time between two computations in the stream job, in milliseconds (it also computes
    /// when it stops; a backfill computes once, at its end).
    pub every_ms: i64,
}

impl Default for PriorSettings {
    fn default() -> Self {
        Self {
            max_strength: DEFAULT_MAX_PRIOR_STRENGTH,
            every_ms: i64::from(DEFAULT_PRIORS_EVERY_MINUTES) * 60_000,
        }
    }
}

/// Every slot's all-time counts per arm, and whether they changed since its priors were last
/// computed.
#[derive(Default)]
pub(super) struct SlotCounts {
    /// tenant → slot → its arms.
    tenants: HashMap<String, HashMap<String, SlotTable>>,
}

#[derive(Default)]
struct SlotTable {
    arms: FxHashMap<Arc<ArmKey>, Counts>,
    changed: bool,
}

impl SlotCounts {
    /// Sets an arm's all-time counts (zero forgets the arm).
    pub(super) fn set(&mut self, arm: Arc<ArmKey>, counts: Counts) {
        let slots = match self.tenants.get_mut(&arm.tenant) {
            Some(slots) => slots,
            None => self.tenants.entry(arm.tenant.clone()).or_default(),
        };
        let table = match slots.get_mut(&arm.slot) {
            Some(table) => table,
            None => slots.entry(arm.slot.clone()).or_default(),
        };
        let changed = if counts.is_zero() {
            table.arms.remove(&arm).is_some()
        } else {
            table.arms.insert(arm, counts) != Some(counts)
        };
        table.changed |= changed;
    }

    /// The counts per city of every slot whose counts changed since the last call, in
    /// (tenant, slot) order; those slots count as unchanged from then on.
    pub(super) fn take_changed(&mut self) -> Vec<SlotCities> {
        let mut out = Vec::new();
        for (tenant, slots) in &mut self.tenants {
            for (slot, table) in slots.iter_mut().filter(|(_, t)| t.changed) {
                table.changed = false;
                out.push((tenant.clone(), slot.clone(), table.cities()));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

/// One slot's counts per city: (tenant, slot, cities).
pub(super) type SlotCities = (String, String, Vec<CityCounts>);

/// Fits and writes priors on a thread of its own, so that a worker's epochs (and the clicks in
/// them) never wait for a computation that at a million arms takes about a second. Slots handed
/// on while it works are merged, a slot's newer counts replacing older ones; [`finish`] waits
/// until everything handed on is written.
///
/// [`finish`]: PriorsWriter::finish
pub(super) struct PriorsWriter {
    queue: Option<mpsc::Sender<Vec<SlotCities>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PriorsWriter {
    pub(super) fn start(
        store: Arc<dyn PosteriorStore>,
        max_strength: f64,
        failure: Failure,
    ) -> Self {
        let (queue, handed_on) = mpsc::channel::<Vec<SlotCities>>();
        let thread = std::thread::Builder::new()
            .name("priors".into())
            .spawn(move || {
                while let Ok(first) = handed_on.recv() {
                    let mut slots: BTreeMap<(String, String), Vec<CityCounts>> = BTreeMap::new();
                    for batch in std::iter::once(first).chain(handed_on.try_iter()) {
                        slots.extend(batch.into_iter().map(|(t, s, c)| ((t, s), c)));
                    }
                    if failure.is_set() {
                        continue;
                    }
                    let slots = slots.into_iter().map(|((t, s), c)| (t, s, c));
                    if let Err(e) = store.write_all_priors(&fit(slots, max_strength)) {
                        failure.set(e);
                    }
                }
            })
            .ok();
        Self {
            queue: Some(queue),
            thread,
        }
    }

    pub(super) fn hand_on(&self, slots: Vec<SlotCities>) {
        if let Some(queue) = &self.queue {
            // The thread ends only once the queue is dropped, in `finish`.
            let _ = queue.send(slots);
        }
    }

    /// Waits until every slot handed on is written (or the job has failed).
    pub(super) fn finish(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SlotTable {
    /// The counts per city, cities and banners in name order.
    fn cities(&self) -> Vec<CityCounts> {
        // Hashed, then sorted once per city: a slot of a million-arm store has thousands of arms
        // over a few hundred cities.
        let mut by_city: FxHashMap<&str, Vec<BannerCounts>> = FxHashMap::default();
        for (arm, c) in &self.arms {
            by_city.entry(&arm.city).or_default().push(BannerCounts {
                banner: arm.banner.clone(),
                impressions: c.impressions,
                clicks: c.clicks,
            });
        }
        let mut cities: Vec<CityCounts> = by_city
            .into_iter()
            .map(|(city, mut banners)| {
                banners.sort_unstable_by(|a, b| a.banner.cmp(&b.banner));
                CityCounts {
                    city: city.to_string(),
                    banners,
                }
            })
            .collect();
        cities.sort_unstable_by(|a, b| a.city.cmp(&b.city));
        cities
    }
}

/// Fits every slot's hierarchical priors to the store's all-time counts and writes them
/// (`slotbandit priors`): the jobs' rule without a job; returns the number of slots.
pub fn write_priors(store: &dyn PosteriorStore, max_strength: f64) -> Result<usize, StoreError> {
    let mut slots = SlotCounts::default();
    for (arm, c) in store.counts(&CountQuery::default())? {
        slots.set(Arc::new(arm), c);
    }
    let priors = fit(slots.take_changed(), max_strength);
    store.write_all_priors(&priors)?;
    Ok(priors.len())
}

/// Each slot's hierarchical priors, from its counts per city.
fn fit(slots: impl IntoIterator<Item = SlotCities>, max_strength: f64) -> Vec<SlotPriorsWrite> {
    slots
        .into_iter()
        .map(|(tenant, slot, cities)| (tenant, slot, hierarchical_priors(&cities, max_strength)))
        .collect()
}

/// An arm's new all-time counts, as a sink hands them on.
pub(super) type AllTime = (Arc<ArmKey>, Counts);

/// Keeps the priors of the slots whose all-time counts arrive on `all_time`: each record goes
/// to the worker that owns its (tenant, slot), which recomputes the changed slots once `every`
/// of event time has passed on `clock` (each worker's newest event time in an epoch, in ms since
/// the Unix epoch) and when both inputs end, and writes them.
pub(super) fn keep_priors<'s>(
    all_time: StreamVec<'s, u64, AllTime>,
    clock: StreamVec<'s, u64, i64>,
    settings: PriorSettings,
    spec: SinkSpec,
) {
    let placement = spec.placement;
    all_time.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        clock.broadcast(),
        Exchange::new(move |(arm, _): &AllTime| {
            placement.slot_exchange_key(&arm.tenant, &arm.slot)
        }),
        timely::dataflow::channels::pact::Pipeline,
        "Priors",
        move |_cap, _info| {
            let mut slots = SlotCounts::default();
            // Per epoch not yet complete: its counts and the newest event time read in it.
            let mut pending: BTreeMap<u64, (Vec<AllTime>, Option<i64>)> = BTreeMap::new();
            let mut newest: Option<i64> = None;
            let mut computed_at: Option<i64> = None;
            let mut done = false;
            let mut writer: Option<PriorsWriter> = None;
            move |(counts, counts_frontier), (times, times_frontier), _output| {
                counts.for_each(|cap, data| {
                    let Some(&t) = cap.least() else { return };
                    pending.entry(t).or_default().0.append(data);
                });
                times.for_each(|cap, data| {
                    let Some(&t) = cap.least() else { return };
                    let seen = &mut pending.entry(t).or_default().1;
                    *seen = data.iter().copied().chain(*seen).max();
                });
                let complete: Vec<u64> = pending
                    .keys()
                    .copied()
                    .filter(|t| !counts_frontier.less_equal(t) && !times_frontier.less_equal(t))
                    .collect();
                let mut due = false;
                for t in complete {
                    let (rows, time) = pending.remove(&t).expect("listed");
                    for (arm, c) in rows {
                        slots.set(arm, c);
                    }
                    newest = newest.max(time);
                    if let Some(now) = newest {
                        due |= computed_at
                            .is_none_or(|at| now >= at.saturating_add(settings.every_ms));
                    }
                }
                let ended = counts_frontier.is_empty() && times_frontier.is_empty();
                if done || !(due || ended) {
                    return;
                }
                done = ended;
                computed_at = newest;
                let Some(store) = spec.store.as_ref() else {
                    return;
                };
                if spec.failure.is_set() {
                    return;
                }
                let writer = writer.get_or_insert_with(|| {
                    PriorsWriter::start(store.clone(), settings.max_strength, spec.failure.clone())
                });
                let changed = slots.take_changed();
                if !changed.is_empty() {
                    writer.hand_on(changed);
                }
                if ended {
                    writer.finish();
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::{SlotPriors, DEFAULT_PRIOR_STRENGTH};
    use crate::model::{CountKey, ShardKey, ALL_TIME};
    use crate::store::{EmbeddedStore, ShardWrite};

    fn arm(tenant: &str, slot: &str, city: &str, banner: &str) -> Arc<ArmKey> {
        Arc::new(ArmKey::new(tenant, slot, city, banner))
    }

    fn banner(banner: &str, impressions: u64, clicks: u64) -> BannerCounts {
        BannerCounts {
            banner: banner.into(),
            impressions,
            clicks,
        }
    }

    #[test]
    fn only_changed_slots_are_computed_each_from_all_its_cities() {
        let mut slots = SlotCounts::default();
        slots.set(arm("t1", "hero", "pune", "b1"), Counts::new(1000, 50));
        slots.set(arm("t1", "hero", "pune", "b2"), Counts::new(800, 8));
        slots.set(arm("t1", "hero", "delhi", "b1"), Counts::new(500, 40));
        slots.set(arm("t1", "side", "pune", "b1"), Counts::new(300, 3));
        slots.set(arm("t2", "hero", "pune", "b9"), Counts::new(200, 20));
        let all = slots.take_changed();
        let names: Vec<(&str, &str)> = all.iter().map(|(t, s, _)| (&t[..], &s[..])).collect();
        assert_eq!(names, [("t1", "hero"), ("t1", "side"), ("t2", "hero")]);
        let hero = [
            CityCounts {
                city: "delhi".into(),
                banners: vec![banner("b1", 500, 40)],
            },
            CityCounts {
                city: "pune".into(),
                banners: vec![banner("b1", 1000, 50), banner("b2", 800, 8)],
            },
        ];
        assert_eq!(all[0].2, hero);
        assert!(slots.take_changed().is_empty());

        // The same counts again change nothing; new counts, or an arm falling to zero, do.
        slots.set(arm("t1", "hero", "pune", "b1"), Counts::new(1000, 50));
        assert!(slots.take_changed().is_empty());
        slots.set(arm("t1", "side", "pune", "b1"), Counts::ZERO);
        slots.set(arm("t2", "hero", "goa", "b9"), Counts::new(10, 1));
        let names: Vec<(String, String)> = slots
            .take_changed()
            .into_iter()
            .map(|(t, s, _)| (t, s))
            .collect();
        assert_eq!(
            names,
            [("t1".into(), "side".into()), ("t2".into(), "hero".into())]
        );
    }

    #[test]
    fn the_command_fits_the_stores_all_time_counts_of_every_city() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"), true).unwrap();
        let row = |arm: Arc<ArmKey>, bucket: i64, imp: u64, clk: u64| {
            (CountKey { arm, bucket }, Counts::new(imp, clk))
        };
        let shard = |tenant: &str, city: &str, rows: Vec<(CountKey, Counts)>| ShardWrite {
            rows,
            ..ShardWrite::new(ShardKey::new(tenant, city))
        };
        store
            .apply_epoch(&[
                shard(
                    "t1",
                    "pune",
                    vec![
                        row(arm("t1", "hero", "pune", "b1"), ALL_TIME, 1000, 50),
                        // A bucket row: already in the all-time row, not counted again.
                        row(arm("t1", "hero", "pune", "b1"), 490_000, 1000, 50),
                        row(arm("t1", "hero", "pune", "b2"), ALL_TIME, 800, 8),
                    ],
                ),
                shard(
                    "t1",
                    "delhi",
                    vec![row(arm("t1", "hero", "delhi", "b1"), ALL_TIME, 500, 40)],
                ),
            ])
            .unwrap();
        assert_eq!(write_priors(&store, DEFAULT_PRIOR_STRENGTH).unwrap(), 1);
        let mut slots = SlotCounts::default();
        slots.set(arm("t1", "hero", "pune", "b1"), Counts::new(1000, 50));
        slots.set(arm("t1", "hero", "pune", "b2"), Counts::new(800, 8));
        slots.set(arm("t1", "hero", "delhi", "b1"), Counts::new(500, 40));
        let expected = hierarchical_priors(&slots.take_changed()[0].2, DEFAULT_PRIOR_STRENGTH);
        assert_eq!(store.priors("t1", "hero").unwrap(), expected);
        // A slot without counts keeps uniform priors.
        assert_eq!(store.priors("t3", "hero").unwrap(), SlotPriors::uniform());
    }
}
