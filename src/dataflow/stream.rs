//! Stream: an event log (Kafka or the file log) counted into the store with exactly-once effect
//! (DESIGN.md §5).
//!
//! - Worker `w` of `W` reads the log partitions `p` with `p % W == w`, from the job's checkpoint
//!   (the resume low-watermark) or, on a first run, from the start of the log.
//! - Every `epoch` it hands its pre-aggregated counts to differential, and for every shard it
//!   read the highest offset per partition; the sink writes a shard's rows and those offsets in
//!   one atomic batch. On restart an event at or below its shard's applied offset is skipped.
//! - Once an epoch is in the store, the reader moves the checkpoint of its partitions past it.
//! - Epoch 0 loads the stored counts (so totals continue from them); it is not written back.
//! - Clicks count at most once per (request_id, banner): each reader remembers the clicks of its
//!   partitions for `click_dedup` of event time and, on restart, re-reads that much of the log to
//!   remember them again. Events are keyed `tenant|city`, so a request's clicks share a partition.
//! - Malformed messages go to the dead-letter log with the reason; the job never stops for them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use differential_dataflow::input::Input;
use rustc_hash::FxHashMap;
use timely::dataflow::operators::Input as TimelyInput;

use super::{
    count_and_sink, fail, failed, AppliedOffset, Cluster, DataflowError, Failure, SinkSpec,
    SinkStats,
};
use crate::model::{
    owner_of, ArmKey, CountKey, Event, EventKind, EventRef, Offset, Partition, ShardKey, ALL_TIME,
};
use crate::retry::{Retry, RetryPolicy};
use crate::source::{EventLog, LogError, RecordRef};
use crate::store::{AppliedOffsets, PosteriorStore};
use crate::time::Buckets;

/// Records asked of the log per poll.
const POLL_BATCH: usize = 8192;
/// How long a poll waits for the first record, so the dataflow keeps stepping on a quiet log.
const POLL_WAIT: Duration = Duration::from_millis(10);
/// How the job waits for a log that fails, and how long before it gives up.
const LOG_RETRY: RetryPolicy =
    RetryPolicy::fixed(Duration::from_millis(500), Some(Duration::from_secs(60)));

pub struct StreamJob {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn PosteriorStore>,
    /// The name the job's checkpoints are kept under.
    pub name: String,
    pub buckets: Buckets,
    /// How often an epoch closes.
    pub epoch: Duration,
    /// Events with `ts` before this instant are dropped (the backfill→stream handoff).
    pub cutoff: Option<DateTime<Utc>>,
    /// How much event time of clicks each reader remembers to drop repeated clicks.
    pub click_dedup: Duration,
    /// Whether events with a customer ID are written to the store's customer history.
    pub customer_events: bool,
    /// Stop once the offsets that were the log's end at start are counted (else run until
    /// `shutdown`).
    pub stop_at_end: bool,
    pub shutdown: Arc<AtomicBool>,
    /// Called with the number of records this process has read so far.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
    pub metrics: Arc<StreamMetrics>,
}

/// The job's live counters, for Prometheus (`stream --metrics-listen`).
pub struct StreamMetrics {
    pub registry: prometheus::Registry,
    records: prometheus::IntCounter,
    counted: prometheus::IntCounter,
    already_applied: prometheus::IntCounter,
    repeated_clicks: prometheus::IntCounter,
    before_cutoff: prometheus::IntCounter,
    dead_letters: prometheus::IntCounter,
    epochs_stored: prometheus::IntCounter,
    click_to_store: prometheus::Histogram,
    /// The same latencies in milliseconds, exact enough for the report's quantiles.
    click_to_store_ms: Mutex<hdrhistogram::Histogram<u64>>,
}

/// Quantiles of the time from a click's append to the log to its count being in the store.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClickLatency {
    pub clicks: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        let registry = prometheus::Registry::new_custom(Some("slotbandit_stream".into()), None)
            .expect("a constant prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        Self {
            records: counter("records_total", "Records read from the event log"),
            counted: counter("events_counted_total", "Events counted into the posteriors"),
            already_applied: counter(
                "events_already_applied_total",
                "Events skipped because their shard had applied them before a restart",
            ),
            repeated_clicks: counter(
                "repeated_clicks_total",
                "Clicks dropped as repeats of a (request_id, banner)",
            ),
            before_cutoff: counter(
                "events_before_cutoff_total",
                "Events dropped for a timestamp before the handoff cutoff",
            ),
            dead_letters: counter(
                "dead_letters_total",
                "Malformed messages sent to the dead-letter log",
            ),
            epochs_stored: counter(
                "epochs_stored_total",
                "Epochs whose changes are in the store (summed over readers)",
            ),
            click_to_store: {
                let h = prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "click_to_store_seconds",
                        "From a click's append to the event log until its count is in the store",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 60.0]),
                )
                .expect("valid histogram options");
                registry
                    .register(Box::new(h.clone()))
                    .expect("registered once");
                h
            },
            click_to_store_ms: Mutex::new(
                // Up to an hour; longer ones (a catch-up) are recorded as an hour.
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3)
                    .expect("valid histogram bounds"),
            ),
            registry,
        }
    }
}

impl StreamMetrics {
    fn add(&self, before: &StreamReport, after: &StreamReport) {
        self.records.inc_by(after.records - before.records);
        self.counted.inc_by(after.counted - before.counted);
        self.already_applied
            .inc_by(after.already_applied - before.already_applied);
        self.repeated_clicks
            .inc_by(after.repeated_clicks - before.repeated_clicks);
        self.before_cutoff
            .inc_by(after.before_cutoff - before.before_cutoff);
        self.dead_letters
            .inc_by(after.dead_letters - before.dead_letters);
    }

    /// Records that the clicks appended to the log at `appended_ms` are now in the store.
    fn clicks_stored(&self, appended_ms: &[i64]) {
        if appended_ms.is_empty() {
            return;
        }
        let now = Utc::now().timestamp_millis();
        let mut exact = self.click_to_store_ms.lock().expect("latency lock");
        for &t in appended_ms {
            let ms = (now - t).max(0) as u64;
            self.click_to_store.observe(ms as f64 / 1000.0);
            exact.saturating_record(ms);
        }
    }

    pub fn click_latency(&self) -> ClickLatency {
        let h = self.click_to_store_ms.lock().expect("latency lock");
        ClickLatency {
            clicks: h.len(),
            p50_ms: h.value_at_quantile(0.5),
            p99_ms: h.value_at_quantile(0.99),
            max_ms: h.max(),
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// What one process's workers did.
#[derive(Debug, Default, Clone)]
pub struct StreamReport {
    /// Records read from the log.
    pub records: u64,
    /// Events counted.
    pub counted: u64,
    /// Events skipped because their shard had already applied them (a restart).
    pub already_applied: u64,
    /// Clicks dropped as repeats of a (request_id, banner).
    pub repeated_clicks: u64,
    /// Events dropped for `ts` before the cutoff.
    pub before_cutoff: u64,
    /// Malformed messages sent to the dead-letter log.
    pub dead_letters: u64,
    /// Records read before the checkpoint only to remember clicks.
    pub rewound: u64,
    pub sink: SinkStats,
}

impl StreamReport {
    fn merge(&mut self, o: &StreamReport) {
        self.records += o.records;
        self.counted += o.counted;
        self.already_applied += o.already_applied;
        self.repeated_clicks += o.repeated_clicks;
        self.before_cutoff += o.before_cutoff;
        self.dead_letters += o.dead_letters;
        self.rewound += o.rewound;
    }
}

/// Runs the streaming job on this process's workers until the log's end (with `stop_at_end`),
/// a shutdown request, or an error.
pub fn run_stream(job: StreamJob, cluster: &Cluster) -> Result<StreamReport, DataflowError> {
    if cluster.processes() > 1 && !job.store.shared_across_processes() {
        return Err(DataflowError::Config(
            "a stream job of several processes needs a store every process can write (cassandra://)"
                .into(),
        ));
    }
    let partitions = job.log.partitions()?;
    let job = Arc::new(job);
    let failure: Failure = Arc::default();
    let sink_stats: Arc<Mutex<SinkStats>> = Arc::default();
    let read = Arc::new(AtomicU64::new(0));
    let threads = cluster.workers;
    let (worker_failure, worker_stats) = (failure.clone(), sink_stats.clone());
    let guards = timely::execute(cluster.timely_config(), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let job = job.clone();
        let failure = worker_failure.clone();
        let (mut counts_in, mut applied_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (counts_in, counts) = scope.new_collection::<CountKey, (i64, i64)>();
            let (applied_in, applied) = scope.new_input::<Vec<AppliedOffset>>();
            let probe = count_and_sink(
                counts,
                applied,
                SinkSpec {
                    store: Some(job.store.clone()),
                    shared_store: job.store.shared_across_processes(),
                    threads,
                    first_written_epoch: 1,
                    durable_epochs: true,
                    failure: failure.clone(),
                    stats: worker_stats.clone(),
                },
            );
            (counts_in, applied_in, probe)
        });
        let mut report = StreamReport::default();
        // Epoch 0: the stored counts of the shards this worker loads.
        let owns = |tenant: &str, city: &str| owner_of(tenant, city, peers) == index;
        match job.store.shards(&owns) {
            Ok(shards) => {
                for shard in shards {
                    for (key, c) in shard.rows {
                        counts_in.update(key, (c.impressions as i64, c.clicks as i64));
                    }
                }
            }
            Err(e) => fail(&failure, e),
        }
        let mine: Vec<Partition> = partitions
            .iter()
            .copied()
            .filter(|p| p.index() % peers == index)
            .collect();
        // Read once every process has joined (a handoff writes them before process 0 joins).
        let mut reader = while_log_unavailable(&job, || PartitionReader::open(&job, &mine))
            .unwrap_or_else(|e| {
                fail(&failure, e);
                None
            });
        let mut epoch = 1u64;
        counts_in.advance_to(epoch);
        applied_in.advance_to(epoch);
        // Reader positions at the end of each epoch not yet known to be in the store.
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut log_failing: Option<Retry> = None;
        loop {
            let mut done = failed(&failure) || job.shutdown.load(Ordering::Relaxed);
            if let (Some(r), false) = (reader.as_mut(), done) {
                let before = report.clone();
                // Between polls the dataflow runs on, so an epoch reaches the store while the
                // next one is read rather than after it.
                let outcome = r.read_epoch(&job, &mut report, || {
                    worker.step();
                    checkpoint(&job, &probe, &mut in_flight, &failure);
                });
                job.metrics.add(&before, &report);
                match outcome {
                    Ok(batch) => {
                        log_failing = None;
                        (job.progress)(
                            read.fetch_add(batch.records, Ordering::Relaxed) + batch.records,
                        );
                        for (key, diff) in batch.counts {
                            counts_in.update(key, diff);
                        }
                        for (shard, partition, offset) in batch.applied {
                            applied_in.send((shard, partition, offset));
                        }
                        in_flight.push_back(InFlight {
                            epoch,
                            positions: r.state.resume_points(),
                            clicks_appended_ms: batch.clicks_appended_ms,
                        });
                        done = job.stop_at_end && r.state.at_end();
                    }
                    Err(e) => match log_failing
                        .get_or_insert_with(|| LOG_RETRY.start())
                        .next_wait()
                    {
                        Some(wait) => {
                            tracing::warn!("{e}; retrying");
                            std::thread::sleep(wait);
                        }
                        None => fail(&failure, e),
                    },
                }
            } else if reader.is_none() {
                done = done || job.stop_at_end;
                std::thread::sleep(job.epoch.min(Duration::from_millis(50)));
            }
            epoch += 1;
            counts_in.advance_to(epoch);
            applied_in.advance_to(epoch);
            counts_in.flush();
            applied_in.flush();
            // At most two epochs in flight, so memory stays flat while catching up.
            worker.step_while(|| probe.less_than(&epoch.saturating_sub(2)) && !failed(&failure));
            checkpoint(&job, &probe, &mut in_flight, &failure);
            if done {
                break;
            }
        }
        drop(counts_in);
        drop(applied_in);
        while worker.step_or_park(None) {}
        checkpoint(&job, &probe, &mut in_flight, &failure);
        report
    })
    .map_err(DataflowError::Timely)?;
    let mut report = StreamReport::default();
    for r in guards.join() {
        report.merge(&r.map_err(DataflowError::Timely)?);
    }
    if let Some(e) = failure.lock().expect("failure lock").take() {
        return Err(e);
    }
    report.sink = *sink_stats.lock().expect("sink stats lock");
    Ok(report)
}

/// Runs `f` again while the log is unavailable (a broker restarting, partitions without a leader
/// yet), under [`LOG_RETRY`] or until shutdown.
fn while_log_unavailable<T>(
    job: &StreamJob,
    f: impl FnMut() -> Result<T, DataflowError>,
) -> Result<T, DataflowError> {
    LOG_RETRY.run_blocking(
        f,
        |e| {
            matches!(e, DataflowError::Log(LogError::Unavailable { .. }))
                && !job.shutdown.load(Ordering::Relaxed)
        },
        |e, _| tracing::warn!("{e}; retrying"),
    )
}

/// An epoch handed to the dataflow and not yet known to be in the store.
struct InFlight {
    epoch: u64,
    /// The reader's resume points at the end of the epoch.
    positions: BTreeMap<Partition, Offset>,
    clicks_appended_ms: Vec<i64>,
}

/// Moves the checkpoint past every epoch the store has (all of them once the dataflow is done).
fn checkpoint(
    job: &StreamJob,
    probe: &timely::dataflow::ProbeHandle<u64>,
    in_flight: &mut VecDeque<InFlight>,
    failure: &Failure,
) {
    let mut newest = None;
    while let Some(front) = in_flight.front() {
        if probe.less_equal(&front.epoch) || failed(failure) {
            break;
        }
        let stored = in_flight.pop_front().expect("front exists");
        job.metrics.clicks_stored(&stored.clicks_appended_ms);
        newest = Some(stored.positions);
    }
    if let Some(positions) = newest {
        job.metrics.epochs_stored.inc();
        if let Err(e) = job.store.set_checkpoints(&job.name, &positions) {
            fail(failure, e);
        }
    }
}

/// One epoch's worth of a reader's partitions, pre-aggregated.
struct EpochBatch {
    records: u64,
    /// When each counted click was appended to the log (ms since the Unix epoch).
    clicks_appended_ms: Vec<i64>,
    counts: Vec<(CountKey, (i64, i64))>,
    applied: Vec<AppliedOffset>,
}

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
struct PartitionReader {
    reader: Box<dyn crate::source::LogReader>,
    state: PartitionState,
}

/// Where each partition stands, what each shard has applied, and recent clicks.
struct PartitionState {
    /// The next offset to read per partition.
    positions: BTreeMap<Partition, Offset>,
    /// Below this offset a partition is applied by every shard (the checkpoint at start).
    checkpoints: BTreeMap<Partition, Offset>,
    /// The log's end per partition when the job started.
    ends: BTreeMap<Partition, Offset>,
    /// What each shard had applied at start, for the shards of these partitions.
    applied_at_start: AppliedOffsets,
    interner: Interner,
    clicks: RecentClicks,
}

impl PartitionReader {
    fn open(job: &StreamJob, partitions: &[Partition]) -> Result<Option<Self>, DataflowError> {
        if partitions.is_empty() {
            return Ok(None);
        }
        let checkpoints = job.store.checkpoints(&job.name)?;
        let applied = job.store.applied_offsets()?;
        let ends = job.log.end_offsets()?;
        let remember_from = job.log.offsets_for_time(
            Utc::now() - chrono::Duration::from_std(job.click_dedup).unwrap_or_default(),
        )?;
        let mut start = BTreeMap::new();
        let mut resume = BTreeMap::new();
        for &p in partitions {
            let checkpoint = checkpoints.get(&p).copied().unwrap_or_default();
            let rewind = remember_from.get(&p).copied().unwrap_or(checkpoint);
            start.insert(p, checkpoint.min(rewind));
            resume.insert(p, checkpoint);
        }
        let applied_at_start = applied
            .into_iter()
            .map(|(shard, mut offsets)| {
                offsets.retain(|p, _| partitions.contains(p));
                (shard, offsets)
            })
            .filter(|(_, offsets)| !offsets.is_empty())
            .collect();
        Ok(Some(Self {
            reader: job.log.reader(&start)?,
            state: PartitionState {
                positions: start,
                checkpoints: resume,
                ends: partitions
                    .iter()
                    .map(|&p| (p, ends.get(&p).copied().unwrap_or_default()))
                    .collect(),
                applied_at_start,
                interner: Interner::default(),
                clicks: RecentClicks::new(job.click_dedup),
            },
        }))
    }

    /// Reads for one epoch and pre-aggregates; malformed records go to the dead-letter log
    /// before the epoch is handed on, so none is lost.
    fn read_epoch(
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
            applied: Vec::new(),
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
                    state
                        .positions
                        .insert(record.partition, record.offset.next());
                    let counted = Event::decode_json(record.payload, |event| {
                        let shard = state.count(job, &record, &event, &mut epoch, report)?;
                        if job.customer_events && event.customer_id.is_some() {
                            customers.push(event.to_event());
                        }
                        Some(shard)
                    });
                    match counted {
                        Err(e) => {
                            if record.offset >= state.checkpoint(record.partition) {
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
        batch.applied = epoch
            .applied
            .into_iter()
            .map(|((shard, p), o)| (shards[shard as usize].0.clone(), p, o))
            .collect();
        batch.clicks_appended_ms = epoch.clicks_appended_ms;
        Ok(batch)
    }
}

impl PartitionState {
    /// Where a restart may resume each partition: past everything read, never before the
    /// checkpoint it started from (re-reading to remember clicks does not move it back).
    fn resume_points(&self) -> BTreeMap<Partition, Offset> {
        self.positions
            .iter()
            .map(|(&p, &pos)| (p, pos.max(self.checkpoint(p))))
            .collect()
    }

    fn at_end(&self) -> bool {
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

    /// Adds one valid event to the epoch unless it is already applied, a repeated click or
    /// before the cutoff; returns its shard's number when it moves the shard's applied offset.
    fn count(
        &mut self,
        job: &StreamJob,
        record: &RecordRef<'_>,
        event: &EventRef<'_>,
        epoch: &mut EpochCounts,
        report: &mut StreamReport,
    ) -> Option<u32> {
        let repeated = event.kind == EventKind::Click && !self.clicks.first(event);
        if record.offset < self.checkpoint(record.partition) {
            report.rewound += 1;
            return None;
        }
        let (arm, shard) = self.interner.arm(event, &self.applied_at_start);
        let applied = self.interner.shards[shard as usize]
            .1
            .get(&record.partition)
            .is_some_and(|&o| record.offset <= o);
        if applied {
            report.already_applied += 1;
            return None;
        }
        if repeated {
            report.repeated_clicks += 1;
        } else if job.cutoff.is_some_and(|c| event.ts < c) {
            report.before_cutoff += 1;
        } else {
            report.counted += 1;
            let diff = match event.kind {
                EventKind::Impression => (1, 0),
                EventKind::Click => {
                    epoch.clicks_appended_ms.push(record.timestamp_ms);
                    (0, 1)
                }
            };
            for bucket in [ALL_TIME, job.buckets.index(event.ts)] {
                let c = epoch.counts.entry((arm, bucket)).or_default();
                c.0 += diff.0;
                c.1 += diff.1;
            }
        }
        Some(shard)
    }
}

/// What a reader gathers during one epoch, by arm and shard number.
#[derive(Default)]
struct EpochCounts {
    counts: FxHashMap<(u32, i64), (i64, i64)>,
    /// The highest offset per (shard, partition) counted or skipped as a repeat.
    applied: FxHashMap<(u32, Partition), Offset>,
    clicks_appended_ms: Vec<i64>,
}

/// The clicks seen in the last `window` of event time, by `request_id 0 banner`.
struct RecentClicks {
    window: chrono::Duration,
    seen: FxHashMap<String, DateTime<Utc>>,
    order: VecDeque<(DateTime<Utc>, String)>,
    newest: Option<DateTime<Utc>>,
    scratch: String,
}

impl RecentClicks {
    fn new(window: Duration) -> Self {
        Self {
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
            seen: FxHashMap::default(),
            order: VecDeque::new(),
            newest: None,
            scratch: String::new(),
        }
    }

    /// Whether this is the first click of its (request_id, banner); clicks without a
    /// request_id are always first.
    fn first(&mut self, click: &EventRef<'_>) -> bool {
        let Some(request) = click.request_id else {
            return true;
        };
        self.scratch.clear();
        self.scratch.push_str(request);
        self.scratch.push('\0');
        self.scratch.push_str(click.banner);
        if self.seen.contains_key(self.scratch.as_str()) {
            return false;
        }
        self.seen.insert(self.scratch.clone(), click.ts);
        self.order.push_back((click.ts, self.scratch.clone()));
        let newest = *self.newest.get_or_insert(click.ts);
        self.newest = Some(newest.max(click.ts));
        self.forget_old();
        true
    }

    fn forget_old(&mut self) {
        let Some(horizon) = self.newest.and_then(|n| n.checked_sub_signed(self.window)) else {
            return;
        };
        while let Some((ts, _)) = self.order.front() {
            if *ts >= horizon {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            self.seen.remove(&key);
        }
    }
}
