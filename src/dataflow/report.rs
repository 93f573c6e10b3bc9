//! `slotbandit report` as a dataflow over history (the semantics are those of `eval::report`).
//! Each worker reads its share of the history — Parquet row groups shared as in the backfill,
//! read as checked event columns on dictionary keys (`source::parquet::events`, no `Event` made),
//! or the whole log as events on worker 0 of process 0 (`history.rs`) — counts what it can alone
//! (events, invalid rows, impressions per (tenant, slot, group), impressions without a holdout
//! flag, clicks without a request id), and hands the keyed impressions and clicks to the
//! dataflow, which exchanges them by (request_id, banner), joins each clicked key to its
//! impression and counts the rest. Every count ends on worker 0, which makes the report.
//!
//! The dataflow holds no names: a (request_id, banner) is its 128-bit digest and a (tenant,
//! slot) too, so the arrangement of millions of impressions holds fixed-size keys and values.
//! The names of each (tenant, slot) travel once per row group that saw it, to worker 0.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::VecCollection;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::{Exchange as _, Inspect, Probe};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::harness::{
    run_job, wait_for_epochs_in_flight, Failure, JobSetup, ReadProgress, WorkerReport,
};
use super::history::{History, Reading};
use super::sink::SinkSpec;
use super::{Cluster, DataflowError};
use crate::eval::{report_rows, Groups, Report, ReportRange};
use crate::model::{Counts, Event, EventKind, PairDigest};
use crate::source::parquet::{read_event_batches, EventBatch};

/// The digest of the (request_id, banner) of an impression, which its clicks name.
type ImpressionKey = u128;

/// The digest of a (tenant, slot).
type SlotId = u128;

/// Where an impression counts: its (tenant, slot), and whether it was held out.
type Place = (SlotId, bool);

/// What the report sums: each record stands for as many of its kind as its diff says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Counted {
    Event,
    InvalidRow,
    /// The names of a slot digest (its count is of no meaning).
    SlotNames(SlotId, String, String),
    Impression(Place),
    UnflaggedImpression,
    /// A clicked key's click, for the least by name of its impressions' places (one, unless
    /// the key was logged in several).
    Click(Vec<Place>),
    RepeatedClick,
    UnmatchedClick,
}

/// What the report sums from what the readers counted alone (`read`), the keyed impressions of
/// the range with their places, and the keyed clicks: a clicked key counts one click for its
/// impression, once however often it was clicked (the repeats counted apart), or one unmatched
/// click without one. A key of several impressions hands on all their places: which is the
/// least by name is known only where the names are.
/// Consolidated per worker and batch, not across workers.
fn report_counts<'s>(
    read: VecCollection<'s, u64, Counted>,
    impressions: VecCollection<'s, u64, (ImpressionKey, Place)>,
    clicks: VecCollection<'s, u64, ImpressionKey>,
) -> VecCollection<'s, u64, Counted> {
    let clicked = clicks.clone().distinct();
    let repeated = clicks
        .map(|_| Counted::RepeatedClick)
        .concat(clicked.clone().map(|_| Counted::RepeatedClick).negate());
    let matched = impressions
        .semijoin(clicked.clone())
        .reduce(|_key, places, once| {
            once.push((places.iter().map(|(place, _)| **place).collect(), 1))
        });
    let unmatched = clicked
        .map(|_| Counted::UnmatchedClick)
        .concat(matched.clone().map(|_| Counted::UnmatchedClick).negate());
    read.concat(repeated)
        .concat(unmatched)
        .concat(matched.map(|(_, place)| Counted::Click(place)))
        .consolidate_stream()
}

pub struct ReportJob {
    pub history: History,
    pub range: ReportRange,
    /// Called with the number of rows read so far by this process.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

/// The report, and the rows that broke the event contract (not counted as events).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRun {
    pub report: Report,
    pub invalid_rows: u64,
}

/// The totals of what the report sums; only worker 0's are not empty.
#[derive(Default)]
struct Totals(FxHashMap<Counted, i64>);

impl WorkerReport for Totals {
    fn merge(&mut self, other: Totals) {
        for (counted, n) in other.0 {
            *self.0.entry(counted).or_default() += n;
        }
    }
}

/// Runs the report on this process's workers; process 0 returns it, the others `None`.
pub fn run_report(job: ReportJob, cluster: &Cluster) -> Result<Option<ReportRun>, DataflowError> {
    let setup = JobSetup::read_only("report");
    let progress = Arc::new(ReadProgress::new(job.progress.clone()));
    let job = Arc::new(job);
    let (totals, _) = run_job(cluster, setup, move |worker, sink| {
        report_worker(worker, sink, &job, &progress)
    })?;
    Ok((cluster.process == 0).then(|| report_of(totals)))
}

fn report_of(totals: Totals) -> ReportRun {
    let mut report = Report::default();
    let mut invalid_rows = 0;
    let names: FxHashMap<SlotId, (String, String)> = totals
        .0
        .keys()
        .filter_map(|counted| match counted {
            Counted::SlotNames(id, tenant, slot) => Some((*id, (tenant.clone(), slot.clone()))),
            _ => None,
        })
        .collect();
    let named = |&(id, holdout): &Place| (&names[&id], holdout);
    let mut slots: BTreeMap<(String, String), Groups> = BTreeMap::new();
    for (counted, n) in totals.0 {
        let n = u64::try_from(n).expect("a total is never negative");
        match counted {
            Counted::Event => report.events += n,
            Counted::InvalidRow => invalid_rows += n,
            Counted::SlotNames(..) => {}
            Counted::Impression(place) => {
                let (slot, holdout) = named(&place);
                slots
                    .entry(slot.clone())
                    .or_default()
                    .add(holdout, Counts::new(n, 0));
            }
            Counted::Click(places) => {
                let (slot, holdout) = places
                    .iter()
                    .map(named)
                    .min()
                    .expect("a matched key has a place");
                slots
                    .entry(slot.clone())
                    .or_default()
                    .add(holdout, Counts::new(0, n));
            }
            Counted::UnflaggedImpression => report.unflagged_impressions += n,
            Counted::RepeatedClick => report.repeated_clicks += n,
            Counted::UnmatchedClick => report.unmatched_clicks += n,
        }
    }
    report.rows = report_rows(slots);
    ReportRun {
        report,
        invalid_rows,
    }
}

/// One worker's report: its share of the history, one epoch per unit read.
fn report_worker(
    worker: &mut Worker,
    sink: &SinkSpec,
    job: &ReportJob,
    progress: &ReadProgress,
) -> Totals {
    let failure = sink.failure.clone();
    let (index, peers) = (worker.index(), worker.peers());
    let totals: Rc<RefCell<FxHashMap<Counted, i64>>> = Rc::default();
    let adding = totals.clone();
    let (read_in, impressions_in, clicks_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (read_in, read) = scope.new_collection::<Counted, isize>();
        let (impressions_in, impressions) = scope.new_collection();
        let (clicks_in, clicks) = scope.new_collection();
        let (probe, _) = report_counts(read, impressions, clicks)
            .inner
            .exchange(|_| 0)
            .inspect(move |(counted, _, n): &(Counted, u64, isize)| {
                *adding.borrow_mut().entry(counted.clone()).or_default() += *n as i64;
            })
            .probe();
        (read_in, impressions_in, clicks_in, probe)
    });
    let mut inputs = Inputs {
        read_in,
        impressions_in,
        clicks_in,
        epoch: 0,
    };
    let mut read = UnitCounts::default();
    let reading = match &job.history {
        // Parquet: each unit's rows as checked columns, with no `Event` made.
        History::Parquet(plan) => plan.share(index, peers).try_for_each(|unit| {
            let file = &plan.files[unit.file as usize];
            read_event_batches(file, unit, |batch| {
                read.add_batch(batch, &job.range, |keyed| inputs.insert(keyed));
                !failure.is_set()
            })
            .map_err(|e| Some(e.into()))?;
            inputs.unit_read(&mut read, unit.rows, worker, &probe, progress, &failure);
            if failure.is_set() {
                Err(None)
            } else {
                Ok(())
            }
        }),
        History::Log(_) => job
            .history
            .read_share(index, peers, &mut |reading| {
                match reading {
                    Reading::Event(event) => {
                        if let Some(keyed) = read.add(event, &job.range) {
                            inputs.insert(keyed);
                        }
                    }
                    Reading::Invalid => read.count(Counted::InvalidRow),
                    Reading::UnitRead { rows } => {
                        inputs.unit_read(&mut read, rows, worker, &probe, progress, &failure)
                    }
                }
                !failure.is_set()
            })
            .map_err(Some),
    };
    if let Err(Some(e)) = reading {
        failure.set(e);
    }
    let Inputs {
        read_in,
        impressions_in,
        clicks_in,
        ..
    } = inputs;
    drop((read_in, impressions_in, clicks_in));
    while worker.step_or_park(None) {}
    Totals(totals.take())
}

/// A worker's inputs to the report's dataflow, and the epoch of the unit being read.
struct Inputs {
    read_in: InputSession<u64, Counted, isize>,
    impressions_in: InputSession<u64, (ImpressionKey, Place), isize>,
    clicks_in: InputSession<u64, ImpressionKey, isize>,
    epoch: u64,
}

impl Inputs {
    fn insert(&mut self, keyed: Keyed) {
        match keyed {
            Keyed::Impression(key, place) => self.impressions_in.insert((key, place)),
            Keyed::Click(key) => self.clicks_in.insert(key),
        }
    }

    /// Ends the unit of `rows` rows: what was counted alone goes in, and the epoch closes.
    fn unit_read(
        &mut self,
        read: &mut UnitCounts,
        rows: u64,
        worker: &mut Worker,
        probe: &ProbeHandle<u64>,
        progress: &ReadProgress,
        failure: &Failure,
    ) {
        for (counted, n) in read.drain() {
            self.read_in.update(counted, n);
        }
        progress.add(rows);
        self.epoch += 1;
        self.read_in.advance_to(self.epoch);
        self.impressions_in.advance_to(self.epoch);
        self.clicks_in.advance_to(self.epoch);
        self.read_in.flush();
        self.impressions_in.flush();
        self.clicks_in.flush();
        wait_for_epochs_in_flight(worker, probe, self.epoch, failure);
    }
}

/// An event the dataflow must match: a keyed impression of the range, or a keyed click.
#[derive(Debug, PartialEq)]
enum Keyed {
    Impression(ImpressionKey, Place),
    Click(ImpressionKey),
}

/// What a worker counts alone in one row group, and the names of the slots it saw.
#[derive(Default)]
struct UnitCounts {
    counted: FxHashMap<Counted, isize>,
    names: FxHashMap<SlotId, (String, String)>,
    digest: PairDigest,
}

impl UnitCounts {
    fn count(&mut self, counted: Counted) {
        *self.counted.entry(counted).or_default() += 1;
    }

    fn drain(&mut self) -> impl Iterator<Item = (Counted, isize)> + '_ {
        let names = self
            .names
            .drain()
            .map(|(id, (tenant, slot))| (Counted::SlotNames(id, tenant, slot), 1));
        self.counted.drain().chain(names)
    }

    /// Counts the rows of `batch` as [`UnitCounts::add`] counts their events, and hands
    /// `keyed` those the dataflow must match. A (tenant, slot) is digested, and its impressions
    /// summed, once per distinct pair of dictionary keys of the batch.
    fn add_batch(&mut self, batch: &EventBatch, range: &ReportRange, mut keyed: impl FnMut(Keyed)) {
        let invalid = batch.invalid();
        let valid = batch.rows() as u64 - invalid;
        for (counted, n) in [(Counted::Event, valid), (Counted::InvalidRow, invalid)] {
            if n > 0 {
                *self.counted.entry(counted).or_default() += n as isize;
            }
        }
        let (from, to) = (range.from.timestamp_micros(), range.to.timestamp_micros());
        // Per (tenant key, slot key): the slot's digest and its impressions per group.
        let mut places: FxHashMap<(u32, u32), (SlotId, [isize; 2])> = FxHashMap::default();
        let (mut unflagged, mut unmatched) = (0, 0);
        for i in (0..batch.rows()).filter(|&i| batch.is_valid(i)) {
            match batch.kind(i) {
                EventKind::Impression => {
                    let ts = batch.ts_micros(i);
                    if ts < from || ts >= to {
                        continue;
                    }
                    let Some(holdout) = batch.holdout(i) else {
                        unflagged += 1;
                        continue;
                    };
                    let (tenant, slot) = (batch.tenant_key(i), batch.slot_key(i));
                    let (digest, names) = (&mut self.digest, &mut self.names);
                    let (id, impressions) = places.entry((tenant, slot)).or_insert_with(|| {
                        let (tenant, slot) = (batch.tenant(tenant), batch.slot(slot));
                        let id = digest.of(tenant, slot);
                        names
                            .entry(id)
                            .or_insert_with(|| (tenant.to_string(), slot.to_string()));
                        (id, [0; 2])
                    });
                    impressions[usize::from(holdout)] += 1;
                    let place = (*id, holdout);
                    if let Some(request_id) = batch.request_id(i) {
                        let banner = batch.banner(batch.banner_key(i));
                        keyed(Keyed::Impression(digest.of(request_id, banner), place));
                    }
                }
                EventKind::Click => match batch.request_id(i) {
                    Some(request_id) => {
                        let banner = batch.banner(batch.banner_key(i));
                        keyed(Keyed::Click(self.digest.of(request_id, banner)));
                    }
                    None => unmatched += 1,
                },
            }
        }
        let impressions = places.into_values().flat_map(|(id, groups)| {
            [false, true].into_iter().map(move |holdout| {
                (
                    Counted::Impression((id, holdout)),
                    groups[usize::from(holdout)],
                )
            })
        });
        let alone = [
            (Counted::UnflaggedImpression, unflagged),
            (Counted::UnmatchedClick, unmatched),
        ];
        for (counted, n) in impressions.chain(alone) {
            if n > 0 {
                *self.counted.entry(counted).or_default() += n;
            }
        }
    }

    /// Counts `event`, and returns it keyed if the dataflow must match it.
    fn add(&mut self, event: Event, range: &ReportRange) -> Option<Keyed> {
        self.count(Counted::Event);
        match event.kind {
            EventKind::Impression if !range.contains(event.ts) => None,
            EventKind::Impression => {
                let Some(holdout) = event.decision.holdout else {
                    self.count(Counted::UnflaggedImpression);
                    return None;
                };
                let slot = self.digest.of(&event.tenant, &event.slot);
                self.names
                    .entry(slot)
                    .or_insert_with(|| (event.tenant, event.slot));
                let place = (slot, holdout);
                self.count(Counted::Impression(place));
                let key = self.digest.of(&event.request_id?, &event.banner);
                Some(Keyed::Impression(key, place))
            }
            EventKind::Click => match event.request_id {
                Some(request_id) => Some(Keyed::Click(self.digest.of(&request_id, &event.banner))),
                None => {
                    self.count(Counted::UnmatchedClick);
                    None
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parquet::PartitionedWriter;
    use crate::model::DecisionLog;
    use crate::source::parquet::ParquetPlan;
    use chrono::DateTime;

    fn at(minute: i64) -> chrono::DateTime<chrono::Utc> {
        DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap()
    }

    fn event(kind: EventKind, slot: &str, request: &str, banner: &str, minute: i64) -> Event {
        Event {
            event_id: format!("{request}-{banner}-{minute}-{kind:?}"),
            kind,
            tenant: "ajio".into(),
            slot: slot.into(),
            city: "pune".into(),
            banner: banner.into(),
            ts: at(minute),
            customer_id: None,
            referrer: None,
            request_id: Some(request.into()),
            decision: DecisionLog::default(),
        }
    }

    fn shown(slot: &str, request: &str, banner: &str, minute: i64, holdout: Option<bool>) -> Event {
        let mut e = event(EventKind::Impression, slot, request, banner, minute);
        e.decision.holdout = holdout;
        e
    }

    fn report(events: &[Event], range: ReportRange, workers: usize) -> ReportRun {
        let dir = tempfile::tempdir().unwrap();
        // Two rows per file: the workers share many row groups.
        let mut writer = PartitionedWriter::create(dir.path(), 2).unwrap();
        for e in events {
            writer.write(&e.into()).unwrap();
        }
        writer.finish().unwrap();
        let job = ReportJob {
            history: History::Parquet(ParquetPlan::new(dir.path(), false).unwrap()),
            range,
            progress: Arc::new(|_| {}),
        };
        run_report(job, &Cluster::single(workers)).unwrap().unwrap()
    }

    #[test]
    fn clicks_count_once_for_their_impressions_group_and_the_rest_is_counted() {
        let range = ReportRange::new(at(0), at(60)).unwrap();
        let mut keyless_click = event(EventKind::Click, "hero", "-", "b1", 9);
        keyless_click.request_id = None;
        let events = [
            // A click read before its impression still counts.
            event(EventKind::Click, "hero", "r1", "b1", 2),
            shown("hero", "r1", "b1", 1, Some(false)),
            shown("hero", "r2", "b2", 3, Some(true)),
            event(EventKind::Click, "hero", "r2", "b2", 4),
            event(EventKind::Click, "hero", "r2", "b2", 5),
            shown("hero", "r3", "b1", 6, Some(false)),
            // After the range: its click is not the range's.
            shown("hero", "r4", "b1", 61, Some(false)),
            event(EventKind::Click, "hero", "r4", "b1", 62),
            // In the range, without a flag.
            shown("side", "r5", "b1", 7, None),
            shown("side", "r6", "b1", 8, Some(true)),
            keyless_click,
        ];
        for workers in [1, 3] {
            let ReportRun {
                report,
                invalid_rows,
            } = report(&events, range, workers);
            assert_eq!(invalid_rows, 0);
            assert_eq!(report.events, 11);
            assert_eq!(report.repeated_clicks, 1);
            assert_eq!(report.unmatched_clicks, 2);
            assert_eq!(report.unflagged_impressions, 1);
            let hero = &report.rows[0];
            assert_eq!((hero.tenant.as_str(), hero.slot.as_str()), ("ajio", "hero"));
            assert_eq!(hero.groups.ts, Counts::new(2, 1));
            assert_eq!(hero.groups.holdout, Counts::new(1, 1));
            let side = &report.rows[1];
            assert_eq!(side.groups.ts, Counts::ZERO);
            assert_eq!(side.groups.holdout, Counts::new(1, 0));
            let overall = report.rows.last().unwrap();
            assert_eq!(overall.slot, "*");
            assert_eq!(overall.groups.ts, Counts::new(2, 1));
            assert_eq!(overall.groups.holdout, Counts::new(2, 1));
        }
    }

    #[test]
    fn a_key_of_two_impressions_counts_both_and_its_click_once_for_the_least_place() {
        let range = ReportRange::new(at(0), at(60)).unwrap();
        let events = [
            shown("side", "r1", "b1", 1, Some(false)),
            shown("hero", "r1", "b1", 2, Some(true)),
            event(EventKind::Click, "hero", "r1", "b1", 3),
        ];
        let report = report(&events, range, 2).report;
        let hero = &report.rows[0];
        assert_eq!(hero.slot, "hero");
        assert_eq!(hero.groups.holdout, Counts::new(1, 1));
        assert_eq!(report.rows[1].groups.ts, Counts::new(1, 0));
        assert_eq!(report.unmatched_clicks, 0);
    }

    #[test]
    fn a_worker_counts_impressions_of_the_range_and_keys_what_must_be_matched() {
        let range = ReportRange::new(at(0), at(60)).unwrap();
        let mut read = UnitCounts::default();
        let mut keyless = shown("hero", "-", "b1", 1, Some(true));
        keyless.request_id = None;
        assert_eq!(read.add(keyless, &range), None);
        let mut digest = PairDigest::default();
        let hero = digest.of("ajio", "hero");
        assert_eq!(
            read.add(shown("hero", "r1", "b2", 2, Some(false)), &range),
            Some(Keyed::Impression(digest.of("r1", "b2"), (hero, false)))
        );
        assert_eq!(
            read.add(shown("hero", "r2", "b2", 60, Some(false)), &range),
            None
        );
        assert_eq!(
            read.add(event(EventKind::Click, "hero", "r2", "b2", 61), &range),
            Some(Keyed::Click(digest.of("r2", "b2")))
        );
        assert_ne!(digest.of("r2", "b2"), digest.of("r2b", "2"));
        let counts: BTreeMap<_, _> = read.drain().collect();
        assert_eq!(
            counts,
            BTreeMap::from([
                (Counted::Event, 4),
                (Counted::SlotNames(hero, "ajio".into(), "hero".into()), 1),
                (Counted::Impression((hero, true)), 1),
                (Counted::Impression((hero, false)), 1),
            ])
        );
    }
}
