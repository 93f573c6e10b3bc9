//! Stream: an event log (Kafka or the file log) counted into the store with exactly-once effect
//! (docs/architecture.md, "Exactly once"). This file holds the job and its driver loop;
//! `reader.rs` reads and pre-aggregates a worker's partitions, `dedup.rs` drops repeats,
//! `metrics.rs` holds what the job reports.
//!
//! - Worker `w` of `W` reads the log partitions `p` with `p % W == w`, from the job's checkpoint
//!   (the resume low-watermark) or, on a first run, from the start of the log.
//! - Every `epoch` it hands its pre-aggregated counts to differential, and for every shard it
//!   read the highest offset per partition; the sink writes a shard's rows and those offsets in
//!   one atomic batch. On restart an event at or below its shard's applied offset is skipped.
//! - Once an epoch is in the store, the reader moves the checkpoint of its partitions past it.
//! - Epoch 0 loads the stored counts (so totals continue from them); it is not written back.
//! - Clicks count at most once per (request_id, banner), and so do impressions (a service re-sends
//!   impressions whose append timed out, which the log may hold after all): each reader remembers
//!   the events of its partitions for their `repeats` window of event time and, on restart,
//!   re-reads that much of the log to remember them again. Events are keyed `tenant|city`, so a
//!   request's events share a partition.
//! - Malformed messages go to the dead-letter log with the reason; the job never stops for them.
//! - City aliases: `aliases.rs`; the job starts again when they change.

mod aliases;
mod dedup;
mod metrics;
mod reader;

pub use metrics::{ClickLatency, Readiness, StreamMetrics, StreamReport};

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use differential_dataflow::input::Input;
use timely::dataflow::operators::Input as TimelyInput;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use self::reader::{GroupCount, PartitionReader};
use super::harness::{
    run_job, wait_for_epochs_in_flight, Failure, JobSetup, ReadProgress, WorkerReport,
};
use super::priors::{keep_priors, PriorSettings};
use super::sink::{count_and_sink, AppliedOffset, SinkRetention, SinkSpec};
use super::{Cluster, DataflowError};
use crate::model::{CountKey, Offset, Partition};
use crate::retry::{Retry, RetryPolicy};
use crate::source::{EventLog, LogError};
use crate::store::PosteriorStore;
use crate::time::{Buckets, Retention};

/// How the job waits for a log that fails, and how long before it gives up.
const LOG_RETRY: RetryPolicy =
    RetryPolicy::fixed(Duration::from_millis(500), Some(Duration::from_secs(60)));
/// How often the lag gauges are set from the log's end offsets.
const LAG_EVERY: Duration = Duration::from_secs(1);

pub struct StreamJob {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn PosteriorStore>,
    /// The name the job's checkpoints are kept under.
    pub name: String,
    pub buckets: Buckets,
    /// Bucket rows before the horizon (the newest bucket seen, at most the wall clock's, less
    /// the retention) are deleted from each shard as it is written, and not written again.
    pub retention: Retention,
    /// How often an epoch closes.
    pub epoch: Duration,
    /// Events with `ts` before this instant are dropped (the backfill→stream handoff).
    pub cutoff: Option<DateTime<Utc>>,
    /// How much event time of clicks and of impressions each reader remembers to drop repeats.
    pub repeats: RepeatWindows,
    /// Whether events with a customer ID are written to the store's customer history.
    pub customer_events: bool,
    /// Stop once the offsets that were the log's end at start are counted (else run until
    /// `shutdown`).
    pub stop_at_end: bool,
    pub shutdown: Arc<AtomicBool>,
    /// Called with the number of records this process has read so far.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
    pub metrics: Arc<StreamMetrics>,
    /// How the job keeps the priors beside the counts (`None`: it leaves them alone).
    pub priors: Option<PriorSettings>,
}

/// How long each kind of event is remembered by its (request_id, banner) to drop repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatWindows {
    pub clicks: Duration,
    pub impressions: Duration,
}

impl RepeatWindows {
    /// How much of the log a restart re-reads to remember repeats.
    pub fn longest(&self) -> Duration {
        self.clicks.max(self.impressions)
    }
}

/// How often the store's city aliases are checked for a change that restarts the job.
const ALIASES_EVERY: Duration = Duration::from_secs(2);

/// Runs the streaming job on this process's workers until the log's end (with `stop_at_end`),
/// a shutdown request, or an error; it starts again, within the call, when the store's city
/// aliases change (`aliases.rs`).
pub fn run_stream(job: StreamJob, cluster: &Cluster) -> Result<StreamReport, DataflowError> {
    let job = Arc::new(job);
    let mut total = StreamReport::default();
    loop {
        if cluster.process == 0 {
            aliases::merge_alias_shards(job.store.as_ref(), &job.name)?;
        }
        let restart = Arc::new(AtomicBool::new(false));
        let watch = watch_aliases(job.clone(), restart.clone())?;
        let ran = run_once(&job, cluster, &restart);
        watch.stop();
        let mut report = ran?;
        total.sink.add(std::mem::take(&mut report.sink));
        total.merge(report);
        if !restart.load(Ordering::Relaxed) || job.shutdown.load(Ordering::Relaxed) {
            return Ok(total);
        }
        tracing::info!("city aliases changed: the stream job starts again");
    }
}

/// One run of the job, until it ends or `restart` is set.
fn run_once(
    job: &Arc<StreamJob>,
    cluster: &Cluster,
    restart: &Arc<AtomicBool>,
) -> Result<StreamReport, DataflowError> {
    let partitions = job.log.partitions()?;
    let setup = JobSetup {
        name: "stream",
        store: Some(job.store.clone()),
        shared_store: job.store.shared_across_processes(),
        // Every reader keeps its checkpoints there and every worker loads its shards from it.
        store_in_every_process: true,
        first_written_epoch: 1,
        durable_epochs: true,
        retention: Some(SinkRetention {
            retention: job.retention,
            buckets: job.buckets,
        }),
        priors: job.priors,
    };
    let progress = Arc::new(ReadProgress::new(job.progress.clone()));
    let lag_watch = watch_lag(job.clone());
    let worker_job = job.clone();
    let restart = restart.clone();
    let ran = run_job(cluster, setup, move |worker, sink| {
        stream_worker(worker, sink, &worker_job, &partitions, &progress, &restart)
    });
    lag_watch.stop();
    let (mut report, sink) = ran?;
    report.sink = sink;
    Ok(report)
}

/// A thread that watches something for the job while it runs.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        self.thread.join().ok();
    }
}

/// Checks the store's city aliases every [`ALIASES_EVERY`] and sets `restart` when the job
/// should start again (the first check waits one period, so that process 0 has merged).
fn watch_aliases(job: Arc<StreamJob>, restart: Arc<AtomicBool>) -> Result<Watcher, DataflowError> {
    let declared = job.store.all_city_aliases()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || loop {
        std::thread::park_timeout(ALIASES_EVERY);
        if stopped.load(Ordering::Relaxed) || job.shutdown.load(Ordering::Relaxed) {
            return;
        }
        match aliases::restart_due(job.store.as_ref(), &job.name, &declared) {
            Ok(true) => return restart.store(true, Ordering::Relaxed),
            Ok(false) => {}
            Err(e) => tracing::debug!("city aliases not checked: {e}"),
        }
    });
    Ok(Watcher { stop, thread })
}

/// Reads the log's end offsets every [`LAG_EVERY`] and sets the lag gauges from them.
fn watch_lag(job: Arc<StreamJob>) -> Watcher {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) && !job.shutdown.load(Ordering::Relaxed) {
            match job.log.end_offsets() {
                Ok(ends) => job.metrics.log_ends(&ends, Utc::now().timestamp_millis()),
                Err(e) => tracing::debug!("lag not measured: {e}"),
            }
            std::thread::park_timeout(LAG_EVERY);
        }
    });
    Watcher { stop, thread }
}

/// One worker's stream: epoch 0 loads the stored counts of the shards it owns, then every epoch
/// hands on what its partitions held, and the checkpoint follows the epochs into the store.
fn stream_worker(
    worker: &mut Worker,
    sink: &SinkSpec,
    job: &StreamJob,
    partitions: &[Partition],
    progress: &ReadProgress,
    restart: &AtomicBool,
) -> StreamReport {
    let index = worker.index();
    let peers = worker.peers();
    let failure = sink.failure.clone();
    let (mut counts_in, mut applied_in, mut clock_in, probe) =
        worker.dataflow::<u64, _, _>(|scope| {
            let (counts_in, counts) = scope.new_collection::<CountKey, (i64, i64)>();
            let (applied_in, applied) = scope.new_input::<Vec<AppliedOffset>>();
            let (clock_in, clock) = scope.new_input::<Vec<i64>>();
            let (probe, released, all_time) = count_and_sink(counts, applied, sink.clone());
            if let Some(settings) = sink.priors {
                keep_priors(all_time, clock, settings, sink.clone());
            }
            (counts_in, applied_in, clock_in, (probe, released))
        });
    let (probe, released) = probe;
    let mut report = StreamReport::default();
    // Epoch 0: the stored counts of the shards this worker owns.
    let owns = |tenant: &str, city: &str| sink.placement.owns(index, tenant, city);
    match job.store.shards(&owns) {
        Ok(shards) => {
            for shard in shards {
                for (key, c) in shard.rows {
                    counts_in.update(key, (c.impressions as i64, c.clicks as i64));
                }
            }
        }
        Err(e) => failure.set(e),
    }
    let aliases = match aliases::aliases_in_force(job.store.as_ref()) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            failure.set(e);
            Arc::default()
        }
    };
    let mine: Vec<Partition> = partitions
        .iter()
        .copied()
        .filter(|p| p.index() % peers == index)
        .collect();
    // Read once every process has joined (a handoff writes them before process 0 joins).
    let mut reader = while_log_unavailable(job, || PartitionReader::open(job, &mine, &aliases))
        .unwrap_or_else(|e| {
            failure.set(e);
            None
        });
    let mut epoch = 1u64;
    counts_in.advance_to(epoch);
    applied_in.advance_to(epoch);
    clock_in.advance_to(epoch);
    // Reader positions at the end of each epoch not yet known to be in the store.
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut log_failing: Option<Retry> = None;
    loop {
        let mut done = failure.is_set()
            || job.shutdown.load(Ordering::Relaxed)
            || restart.load(Ordering::Relaxed);
        if let (Some(r), false) = (reader.as_mut(), done) {
            let before = report.clone();
            // Between polls the dataflow runs on, so an epoch reaches the store while the
            // next one is read rather than after it.
            let outcome = r.read_epoch(job, &mut report, || {
                worker.step();
                checkpoint(job, &probe, &mut in_flight, &failure);
            });
            job.metrics.add(&before, &report);
            match outcome {
                Ok(batch) => {
                    log_failing = None;
                    progress.add(batch.records);
                    for (key, diff) in batch.counts {
                        counts_in.update(key, diff);
                    }
                    for (shard, partition, offset) in batch.applied {
                        applied_in.send((shard, partition, offset));
                    }
                    if let Some(ms) = batch.newest_event_ms {
                        clock_in.send(ms);
                    }
                    in_flight.push_back(InFlight {
                        epoch,
                        positions: r.state.resume_points(),
                        clicks_appended_ms: batch.clicks_appended_ms,
                        groups: batch.groups,
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
                    None => failure.set(e),
                },
            }
        } else if reader.is_none() {
            done = done || job.stop_at_end;
            std::thread::sleep(job.epoch.min(Duration::from_millis(50)));
        }
        for (key, diff) in released.borrow_mut().drain(..) {
            counts_in.update(key, diff);
        }
        epoch += 1;
        counts_in.advance_to(epoch);
        applied_in.advance_to(epoch);
        clock_in.advance_to(epoch);
        counts_in.flush();
        applied_in.flush();
        clock_in.flush();
        wait_for_epochs_in_flight(worker, &probe, epoch, &failure);
        checkpoint(job, &probe, &mut in_flight, &failure);
        if done {
            break;
        }
    }
    drop(counts_in);
    drop(applied_in);
    drop(clock_in);
    while worker.step_or_park(None) {}
    checkpoint(job, &probe, &mut in_flight, &failure);
    report
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
    groups: Vec<GroupCount>,
}

/// Moves the checkpoint past every epoch the store has (all of them once the dataflow is done).
fn checkpoint(
    job: &StreamJob,
    probe: &ProbeHandle<u64>,
    in_flight: &mut VecDeque<InFlight>,
    failure: &Failure,
) {
    let mut newest = None;
    while let Some(front) = in_flight.front() {
        if probe.less_equal(&front.epoch) || failure.is_set() {
            break;
        }
        let stored = in_flight.pop_front().expect("front exists");
        job.metrics.clicks_stored(&stored.clicks_appended_ms);
        job.metrics.groups_stored(&stored.groups);
        newest = Some(stored.positions);
    }
    if let Some(positions) = newest {
        job.metrics.epoch_stored(&positions);
        if let Err(e) = job.store.set_checkpoints(&job.name, &positions) {
            failure.set(e);
        }
    }
}

/// Events for the tests of what a reader does with them.
#[cfg(test)]
mod test_events {
    use chrono::{DateTime, Utc};

    use crate::model::{EventKind, EventRef};

    /// `minute` minutes after a fixed instant.
    pub(super) fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap() + chrono::Duration::minutes(minute)
    }

    /// An event of tenant `t1`, slot `hero` at minute `minute`.
    pub(super) fn event(
        kind: EventKind,
        city: &'static str,
        banner: &'static str,
        request_id: Option<&'static str>,
        minute: i64,
    ) -> EventRef<'static> {
        EventRef {
            event_id: "e",
            kind,
            tenant: "t1",
            slot: "hero",
            city,
            banner,
            ts: at(minute),
            customer_id: None,
            referrer: None,
            request_id,
            decision: Default::default(),
        }
    }
}
