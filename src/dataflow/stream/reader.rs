//! Reading a worker's partitions: where each stands (the checkpoint it resumed from, the rewind
//! before it that only remembers clicks, the resume points after each epoch), which events count
//! (not yet applied by their shard, not a repeat, not before the cutoff), and their
//! pre-aggregation into one epoch's batch, on interned arms so that counting an event allocates
//! nothing once its arm is known.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;

use super::dedup::RecentRequests;
use super::{RepeatWindows, StreamJob, StreamReport};
use crate::dataflow::sink::AppliedOffset;
use crate::dataflow::DataflowError;
use crate::model::{
    ArmKey, CountKey, Counts, Event, EventKind, EventRef, Offset, Partition, ShardKey,
    TenantAliases, ALL_TIME,
};
use crate::source::{LogReader, RecordRef};
use crate::store::AppliedOffsets;
use crate::time::Buckets;

/// Records asked of the log per poll.
const POLL_BATCH: usize = 8192;
/// How long a poll waits for the first record, so the dataflow keeps stepping on a quiet log.
const POLL_WAIT: Duration = Duration::from_millis(10);

/// One epoch's worth of a reader's partitions, pre-aggregated.
pub(super) struct EpochBatch {
    pub(super) records: u64,
    /// When each counted click was appended to the log (ms since the Unix epoch).
    pub(super) clicks_appended_ms: Vec<i64>,
    pub(super) counts: Vec<(CountKey, (i64, i64))>,
    /// The counted events of decisions whose group is known, per (tenant, slot, held out).
    pub(super) groups: Vec<GroupCount>,
    pub(super) applied: Vec<AppliedOffset>,
    /// The newest event time counted in the epoch, at most the wall clock's (ms since the Unix
    /// epoch): the priors' clock.
    pub(super) newest_event_ms: Option<i64>,
}

/// The impressions and clicks of one slot's decisions of one group (held out or not) in an
/// epoch: (tenant, slot, held out, counts).
pub(crate) type GroupCount = (String, String, bool, Counts);

/// The arms and shards a reader has seen, numbered, so counting an event hashes one short
/// string and allocates nothing once its arm is known.
#[derive(Default)]
struct Interner {
    /// `tenant 0 slot 0 city 0 banner` → arm number.
    arm_numbers: FxHashMap<String, u32>,
    /// Per arm number: the arm and its shard's number.
    arms: Vec<(Arc<ArmKey>, u32)>,
    /// `tenant 0 city` → shard number.
    shard_numbers: FxHashMap<String, u32>,
    /// Per shard number: the shard and the offset it had applied per partition at start.
    shards: Vec<(ShardKey, FxHashMap<Partition, Offset>)>,
    scratch: String,
}

impl Interner {
    /// The numbers of the event's arm and shard; `applied_at_start` gives a new shard's offsets.
    fn arm(&mut self, event: &EventRef<'_>, applied_at_start: &AppliedOffsets) -> (u32, u32) {
        self.scratch.clear();
        for name in [event.tenant, event.slot, event.city, event.banner] {
            self.scratch.push_str(name);
            self.scratch.push('\0');
        }
        if let Some(&arm) = self.arm_numbers.get(self.scratch.as_str()) {
            return (arm, self.arms[arm as usize].1);
        }
        let arm = self.arms.len() as u32;
        self.arm_numbers.insert(self.scratch.clone(), arm);
        self.scratch.clear();
        self.scratch.push_str(event.tenant);
        self.scratch.push('\0');
        self.scratch.push_str(event.city);
        let shard = match self.shard_numbers.get(self.scratch.as_str()) {
            Some(&shard) => shard,
            None => {
                let shard = self.shards.len() as u32;
                self.shard_numbers.insert(self.scratch.clone(), shard);
                let key = ShardKey::new(event.tenant, event.city);
                let applied = applied_at_start
                    .get(&key)
                    .map(|offsets| offsets.iter().map(|(&p, &o)| (p, o)).collect())
                    .unwrap_or_default();
                self.shards.push((key, applied));
                shard
            }
        };
        self.arms.push((Arc::new(event.arm()), shard));
        (arm, shard)
    }
}

/// A worker's partitions: the log reader and what it tracks while counting.
pub(super) struct PartitionReader {
    reader: Box<dyn LogReader>,
    pub(super) state: PartitionState,
}

/// Where each partition stands, what each shard has applied, recent clicks, and the rules an
/// event is counted by.
pub(super) struct PartitionState {
    /// The next offset to read per partition.
    positions: BTreeMap<Partition, Offset>,
    /// Below this offset a partition is applied by every shard (the checkpoint at start).
    checkpoints: BTreeMap<Partition, Offset>,
    /// The log's end per partition when the job started.
    ends: BTreeMap<Partition, Offset>,
    /// What each shard had applied at start, for the shards of these partitions.
    applied_at_start: AppliedOffsets,
    interner: Interner,
    clicks: RecentRequests,
    impressions: RecentRequests,
    buckets: Buckets,
    /// Events with `ts` before this instant are dropped (the backfill→stream handoff).
    cutoff: Option<DateTime<Utc>>,
    /// The city aliases in force: an event counts into its city's canonical arm.
    aliases: Arc<TenantAliases>,
}

/// Where a reader's partitions stand when it starts, as read from the store and the log.
struct Start {
    /// The job's checkpoint per partition (none on a first run).
    checkpoints: BTreeMap<Partition, Offset>,
    /// Every shard's applied offsets.
    applied: AppliedOffsets,
    /// The log's end per partition.
    ends: BTreeMap<Partition, Offset>,
    /// Per partition, the first offset whose append time is within the longer repeat window.
    remember_from: BTreeMap<Partition, Offset>,
}

impl PartitionReader {
    pub(super) fn open(
        job: &StreamJob,
        partitions: &[Partition],
        aliases: &Arc<TenantAliases>,
    ) -> Result<Option<Self>, DataflowError> {
        if partitions.is_empty() {
            return Ok(None);
        }
        let start = Start {
            checkpoints: job.store.checkpoints(&job.name)?,
            applied: job.store.applied_offsets()?,
            ends: job.log.end_offsets()?,
            remember_from: job.log.offsets_for_time(
                Utc::now() - chrono::Duration::from_std(job.repeats.longest()).unwrap_or_default(),
            )?,
        };
        let mut state =
            PartitionState::new(partitions, start, job.buckets, job.cutoff, job.repeats);
        state.aliases = aliases.clone();
        job.metrics.reading_from(&state.resume_points());
        Ok(Some(Self {
            reader: job.log.reader(&state.positions)?,
            state,
        }))
    }

    /// Reads for one epoch and pre-aggregates; malformed records go to the dead-letter log
    /// before the epoch is handed on, so none is lost.
    pub(super) fn read_epoch(
        &mut self,
        job: &StreamJob,
        report: &mut StreamReport,
        mut between_polls: impl FnMut(),
    ) -> Result<EpochBatch, DataflowError> {
        let deadline = Instant::now() + job.epoch;
        let mut batch = EpochBatch {
            records: 0,
            clicks_appended_ms: Vec::new(),
            counts: Vec::new(),
            groups: Vec::new(),
            applied: Vec::new(),
            newest_event_ms: None,
        };
        let mut epoch = EpochCounts::default();
        let mut letters = Vec::new();
        let mut customers = Vec::new();
        let state = &mut self.state;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || (job.stop_at_end && state.at_end()) {
                break;
            }
            between_polls();
            let read = self
                .reader
                .poll_each(POLL_BATCH, left.min(POLL_WAIT), &mut |record| {
                    state.passed(&record);
                    let counted = Event::decode_json(record.payload, |event| {
                        let shard = state.count(&record, &event, &mut epoch, report)?;
                        if job.customer_events && event.customer_id.is_some() {
                            customers.push(event.to_event());
                        }
                        Some(shard)
                    });
                    match counted {
                        Err(e) => {
                            if !state.rewound(&record) {
                                letters.push((record.to_log_record(), e.to_string()));
                            }
                        }
                        Ok(Some(shard)) => {
                            epoch
                                .applied
                                .insert((shard, record.partition), record.offset);
                        }
                        Ok(None) => {}
                    }
                })?;
            batch.records += read as u64;
        }
        report.records += batch.records;
        if !letters.is_empty() {
            report.dead_letters += letters.len() as u64;
            job.log.dead_letter(&letters)?;
        }
        if !customers.is_empty() {
            job.store.append_customer_events(&customers)?;
        }
        let arms = &state.interner.arms;
        let shards = &state.interner.shards;
        batch.counts = epoch
            .counts
            .into_iter()
            .map(|((arm, bucket), diff)| {
                let arm = arms[arm as usize].0.clone();
                (CountKey { arm, bucket }, diff)
            })
            .collect();
        // Per slot, so that the metrics take one labelled update per slot and group an epoch.
        let mut groups: FxHashMap<(&str, &str, bool), Counts> = FxHashMap::default();
        for ((arm, holdout), counts) in epoch.groups {
            let arm = &arms[arm as usize].0;
            *groups
                .entry((arm.tenant.as_str(), arm.slot.as_str(), holdout))
                .or_default() += counts;
        }
        batch.groups = groups
            .into_iter()
            .map(|((tenant, slot, holdout), counts)| {
                (tenant.to_string(), slot.to_string(), holdout, counts)
            })
            .collect();
        batch.applied = epoch
            .applied
            .into_iter()
            .map(|((shard, p), o)| (shards[shard as usize].0.clone(), p, o))
            .collect();
        batch.clicks_appended_ms = epoch.clicks_appended_ms;
        // Never past the wall clock: one event from the far future must not stall the priors'
        // cadence until its time comes.
        let now_ms = Utc::now().timestamp_millis();
        batch.newest_event_ms = epoch.newest_event_ms.map(|ms| ms.min(now_ms));
        Ok(batch)
    }
}

impl PartitionState {
    /// A reader's partitions at `start`: each is read from its checkpoint, or from earlier to
    /// remember the events within the `repeats` windows; each shard's applied offsets are kept
    /// for these partitions only.
    fn new(
        partitions: &[Partition],
        start: Start,
        buckets: Buckets,
        cutoff: Option<DateTime<Utc>>,
        repeats: RepeatWindows,
    ) -> Self {
        let mut positions = BTreeMap::new();
        let mut checkpoints = BTreeMap::new();
        for &p in partitions {
            let checkpoint = start.checkpoints.get(&p).copied().unwrap_or_default();
            let rewind = start.remember_from.get(&p).copied().unwrap_or(checkpoint);
            positions.insert(p, checkpoint.min(rewind));
            checkpoints.insert(p, checkpoint);
        }
        let applied_at_start = start
            .applied
            .into_iter()
            .map(|(shard, mut offsets)| {
                offsets.retain(|p, _| partitions.contains(p));
                (shard, offsets)
            })
            .filter(|(_, offsets)| !offsets.is_empty())
            .collect();
        Self {
            positions,
            checkpoints,
            ends: partitions
                .iter()
                .map(|&p| (p, start.ends.get(&p).copied().unwrap_or_default()))
                .collect(),
            applied_at_start,
            interner: Interner::default(),
            clicks: RecentRequests::new(repeats.clicks),
            impressions: RecentRequests::new(repeats.impressions),
            buckets,
            cutoff,
            aliases: Arc::default(),
        }
    }

    /// Notes that `record` was read: its partition continues after it.
    fn passed(&mut self, record: &RecordRef<'_>) {
        self.positions
            .insert(record.partition, record.offset.next());
    }

    /// Whether `record` lies before the checkpoint, re-read only to remember what it repeats.
    fn rewound(&self, record: &RecordRef<'_>) -> bool {
        record.offset < self.checkpoint(record.partition)
    }

    /// Where a restart may resume each partition: past everything read, never before the
    /// checkpoint it started from (re-reading to remember repeats does not move it back).
    pub(super) fn resume_points(&self) -> BTreeMap<Partition, Offset> {
        self.positions
            .iter()
            .map(|(&p, &pos)| (p, pos.max(self.checkpoint(p))))
            .collect()
    }

    pub(super) fn at_end(&self) -> bool {
        self.ends
            .iter()
            .all(|(p, end)| self.positions.get(p).is_some_and(|pos| pos >= end))
    }

    fn checkpoint(&self, partition: Partition) -> Offset {
        self.checkpoints
            .get(&partition)
            .copied()
            .unwrap_or_default()
    }

    /// Adds one valid event to the epoch unless it is already applied, a repeat or before the
    /// cutoff; returns its shard's number when it moves the shard's applied offset.
    fn count(
        &mut self,
        record: &RecordRef<'_>,
        event: &EventRef<'_>,
        epoch: &mut EpochCounts,
        report: &mut StreamReport,
    ) -> Option<u32> {
        let repeated = !match event.kind {
            EventKind::Click => self.clicks.first(event),
            EventKind::Impression => self.impressions.first(event),
        };
        if self.rewound(record) {
            report.rewound += 1;
            return None;
        }
        let city = self.aliases.resolve(event.tenant, event.city);
        let resolved = EventRef { city, ..*event };
        let (arm, shard) = self.interner.arm(&resolved, &self.applied_at_start);
        let applied = self.interner.shards[shard as usize]
            .1
            .get(&record.partition)
            .is_some_and(|&o| record.offset <= o);
        if applied {
            report.already_applied += 1;
            return None;
        }
        if repeated {
            match event.kind {
                EventKind::Click => report.repeated_clicks += 1,
                EventKind::Impression => report.repeated_impressions += 1,
            }
        } else if self.cutoff.is_some_and(|c| event.ts < c) {
            report.before_cutoff += 1;
        } else {
            report.counted += 1;
            let ms = event.ts.timestamp_millis();
            epoch.newest_event_ms = epoch.newest_event_ms.max(Some(ms));
            let (diff, one) = match event.kind {
                EventKind::Impression => ((1, 0), Counts::new(1, 0)),
                EventKind::Click => {
                    epoch.clicks_appended_ms.push(record.timestamp_ms);
                    ((0, 1), Counts::new(0, 1))
                }
            };
            for bucket in [ALL_TIME, self.buckets.index(event.ts)] {
                let c = epoch.counts.entry((arm, bucket)).or_default();
                c.0 += diff.0;
                c.1 += diff.1;
            }
            if let Some(holdout) = event.decision.holdout {
                *epoch.groups.entry((arm, holdout)).or_default() += one;
            }
        }
        Some(shard)
    }
}

/// What a reader gathers during one epoch, by arm and shard number.
#[derive(Default)]
struct EpochCounts {
    counts: FxHashMap<(u32, i64), (i64, i64)>,
    groups: FxHashMap<(u32, bool), Counts>,
    /// The highest offset per (shard, partition) counted or skipped as a repeat.
    applied: FxHashMap<(u32, Partition), Offset>,
    clicks_appended_ms: Vec<i64>,
    newest_event_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::stream::test_events::{self, at};
    use crate::model::DecisionLog;

    const P0: Partition = Partition(0);
    const P1: Partition = Partition(1);
    const P2: Partition = Partition(2);

    fn event(
        kind: EventKind,
        city: &'static str,
        request_id: Option<&'static str>,
        minute: i64,
    ) -> EventRef<'static> {
        test_events::event(kind, city, "b1", request_id, minute)
    }

    fn impression(city: &'static str) -> EventRef<'static> {
        event(EventKind::Impression, city, None, 0)
    }

    fn click(request_id: &'static str) -> EventRef<'static> {
        event(EventKind::Click, "pune", Some(request_id), 0)
    }

    fn offsets(pairs: &[(Partition, i64)]) -> BTreeMap<Partition, Offset> {
        pairs.iter().map(|&(p, o)| (p, Offset(o))).collect()
    }

    /// A reader of partitions 0 and 1 starting at `start`, counting as `read_epoch` does.
    struct Reading {
        state: PartitionState,
        epoch: EpochCounts,
        report: StreamReport,
    }

    impl Reading {
        fn new(start: Start, cutoff: Option<DateTime<Utc>>) -> Self {
            Self {
                state: PartitionState::new(
                    &[P0, P1],
                    start,
                    Buckets::hourly(),
                    cutoff,
                    RepeatWindows {
                        clicks: Duration::from_secs(3600),
                        impressions: Duration::from_secs(3600),
                    },
                ),
                epoch: EpochCounts::default(),
                report: StreamReport::default(),
            }
        }

        /// Reads `event` at `offset` of `partition`; the shard whose applied offset it moves.
        fn read(&mut self, partition: Partition, offset: i64, event: EventRef<'_>) -> Option<u32> {
            let record = record(partition, offset);
            self.state.passed(&record);
            self.state
                .count(&record, &event, &mut self.epoch, &mut self.report)
        }

        /// The epoch's counts by (city, bucket).
        fn counts(&self) -> BTreeMap<(String, i64), (i64, i64)> {
            self.epoch
                .counts
                .iter()
                .map(|(&(arm, bucket), &c)| {
                    let city = self.state.interner.arms[arm as usize].0.city.clone();
                    ((city, bucket), c)
                })
                .collect()
        }

        fn shard(&self, number: u32) -> &ShardKey {
            &self.state.interner.shards[number as usize].0
        }
    }

    fn record(partition: Partition, offset: i64) -> RecordRef<'static> {
        RecordRef {
            partition,
            offset: Offset(offset),
            key: None,
            payload: b"",
            timestamp_ms: 1_000 + offset,
        }
    }

    fn start(checkpoints: &[(Partition, i64)], remember_from: &[(Partition, i64)]) -> Start {
        Start {
            checkpoints: offsets(checkpoints),
            applied: AppliedOffsets::new(),
            ends: offsets(&[(P0, 100), (P1, 100)]),
            remember_from: offsets(remember_from),
        }
    }

    #[test]
    fn an_event_at_or_below_its_shards_applied_offset_is_skipped() {
        let mut start = start(&[(P0, 10)], &[]);
        start.applied = AppliedOffsets::from([
            (ShardKey::new("t1", "pune"), offsets(&[(P0, 15), (P2, 40)])),
            // Applied only in a partition another reader reads: nothing to skip here.
            (ShardKey::new("t1", "delhi"), offsets(&[(P2, 30)])),
        ]);
        let mut r = Reading::new(start, None);
        assert_eq!(r.read(P0, 12, impression("pune")), None);
        assert_eq!(r.read(P0, 15, impression("pune")), None);
        assert_eq!(r.report.already_applied, 2);
        assert_eq!(r.report.counted, 0);

        let pune = r.read(P0, 16, impression("pune")).expect("counted");
        assert_eq!(r.shard(pune), &ShardKey::new("t1", "pune"));
        // The shard applied nothing of partition 1, and delhi nothing of this reader's.
        assert_eq!(r.read(P1, 0, impression("pune")), Some(pune));
        let delhi = r.read(P0, 11, impression("delhi")).expect("counted");
        assert_eq!(r.shard(delhi), &ShardKey::new("t1", "delhi"));
        assert_eq!(r.report.counted, 3);
        assert_eq!(r.report.already_applied, 2);

        let hour = Buckets::hourly().index(at(0));
        assert_eq!(
            r.counts(),
            BTreeMap::from([
                (("delhi".into(), ALL_TIME), (1, 0)),
                (("delhi".into(), hour), (1, 0)),
                (("pune".into(), ALL_TIME), (2, 0)),
                (("pune".into(), hour), (2, 0)),
            ])
        );
        assert_eq!(
            r.state.applied_at_start,
            AppliedOffsets::from([(ShardKey::new("t1", "pune"), offsets(&[(P0, 15)]))])
        );
    }

    #[test]
    fn group_counts_take_flagged_events_once_and_leave_unflagged_ones_out() {
        let in_group = |kind, request, holdout: bool| EventRef {
            decision: DecisionLog::default().with_group(holdout),
            ..event(kind, "pune", Some(request), 0)
        };
        let mut r = Reading::new(start(&[], &[]), None);
        r.read(P0, 0, in_group(EventKind::Impression, "r1", false));
        r.read(P0, 1, in_group(EventKind::Impression, "r1", false));
        r.read(P0, 2, in_group(EventKind::Click, "r1", false));
        r.read(P0, 3, in_group(EventKind::Impression, "r2", true));
        r.read(P1, 0, in_group(EventKind::Impression, "r3", true));
        r.read(P1, 1, in_group(EventKind::Click, "r3", true));
        r.read(P1, 2, in_group(EventKind::Click, "r3", true));
        r.read(P1, 3, event(EventKind::Impression, "pune", Some("r4"), 0));
        r.read(P1, 4, click("r4"));
        let groups: BTreeMap<bool, Counts> = r
            .epoch
            .groups
            .iter()
            .map(|(&(_, holdout), &c)| (holdout, c))
            .collect();
        assert_eq!(
            groups,
            BTreeMap::from([(false, Counts::new(1, 1)), (true, Counts::new(2, 1))]),
            "repeats are out, unflagged events are out"
        );
        assert_eq!(r.counts()[&("pune".to_string(), ALL_TIME)], (4, 3));
    }

    #[test]
    fn an_impression_sent_again_counts_once_even_across_a_restart() {
        let shown = |request| event(EventKind::Impression, "pune", Some(request), 0);
        let mut r = Reading::new(start(&[(P0, 10)], &[(P0, 4)]), None);
        // Remembered in the rewind, counted before the restart.
        assert_eq!(r.read(P0, 5, shown("r1")), None);
        let shard = r.read(P0, 10, shown("r1"));
        assert!(shard.is_some(), "a repeat still moves the applied offset");
        assert_eq!(r.read(P0, 11, shown("r2")), shard);
        assert_eq!(r.read(P0, 12, shown("r2")), shard);
        // Impressions without a request_id are never taken for repeats.
        r.read(P0, 13, impression("pune"));
        r.read(P0, 14, impression("pune"));
        assert_eq!(r.report.repeated_impressions, 2);
        assert_eq!(r.report.repeated_clicks, 0);
        assert_eq!(r.report.counted, 3);
        assert_eq!(r.counts()[&("pune".to_string(), ALL_TIME)], (3, 0));
        // A click of the same request and banner is not a repeat of its impression.
        r.read(P0, 15, click("r2"));
        assert_eq!(r.counts()[&("pune".to_string(), ALL_TIME)], (3, 1));
    }

    #[test]
    fn the_rewind_below_the_checkpoint_only_remembers_repeats() {
        let mut r = Reading::new(start(&[(P0, 10)], &[(P0, 4)]), None);
        assert_eq!(r.read(P0, 5, click("r1")), None);
        assert_eq!(r.read(P0, 6, impression("pune")), None);
        assert_eq!(r.report.rewound, 2);
        assert!(r.counts().is_empty());
        assert!(r.state.rewound(&record(P0, 9)));
        assert!(!r.state.rewound(&record(P0, 10)));

        // The click remembered in the rewind is a repeat past the checkpoint; its offset is
        // still applied by the shard.
        let shard = r.read(P0, 10, click("r1"));
        assert!(shard.is_some());
        assert_eq!(r.report.repeated_clicks, 1);
        assert_eq!(r.report.counted, 0);
        assert_eq!(r.read(P0, 11, click("r2")), shard);
        assert_eq!(r.report.counted, 1);
        assert_eq!(r.epoch.clicks_appended_ms, vec![1_011]);
        assert_eq!(r.counts()[&("pune".to_string(), ALL_TIME)], (0, 1));
    }

    #[test]
    fn events_before_the_cutoff_are_dropped_but_move_the_applied_offset() {
        let mut r = Reading::new(start(&[], &[]), Some(at(30)));
        let shard = r.read(P0, 0, event(EventKind::Impression, "pune", None, 29));
        assert!(shard.is_some());
        assert_eq!(r.report.before_cutoff, 1);
        assert!(r.counts().is_empty());
        assert_eq!(
            r.read(P0, 1, event(EventKind::Impression, "pune", None, 30)),
            shard
        );
        assert_eq!(r.report.counted, 1);
    }

    #[test]
    fn a_reader_starts_before_its_checkpoint_to_remember_clicks_and_never_resumes_before_it() {
        let start = Start {
            checkpoints: offsets(&[(P0, 10), (P1, 3)]),
            applied: AppliedOffsets::new(),
            ends: offsets(&[(P0, 12), (P1, 3)]),
            // Partition 1's clicks to remember all lie past its checkpoint.
            remember_from: offsets(&[(P0, 4), (P1, 8)]),
        };
        let mut r = Reading::new(start, None);
        assert_eq!(r.state.positions, offsets(&[(P0, 4), (P1, 3)]));
        assert_eq!(r.state.resume_points(), offsets(&[(P0, 10), (P1, 3)]));
        assert!(!r.state.at_end());
        for offset in 4..9 {
            r.read(P0, offset, impression("pune"));
        }
        assert_eq!(r.state.resume_points(), offsets(&[(P0, 10), (P1, 3)]));
        r.read(P0, 11, impression("pune"));
        assert_eq!(r.state.resume_points(), offsets(&[(P0, 12), (P1, 3)]));
        assert!(r.state.at_end());
    }

    #[test]
    fn a_first_run_reads_every_partition_from_its_start() {
        let start = Start {
            checkpoints: BTreeMap::new(),
            applied: AppliedOffsets::new(),
            ends: offsets(&[(P0, 5)]),
            remember_from: offsets(&[(P0, 2)]),
        };
        let r = Reading::new(start, None);
        assert_eq!(r.state.positions, offsets(&[(P0, 0), (P1, 0)]));
        assert_eq!(r.state.resume_points(), offsets(&[(P0, 0), (P1, 0)]));
        // Partition 1 is empty (no end recorded), partition 0 is not yet read.
        assert!(!r.state.at_end());
    }
}
