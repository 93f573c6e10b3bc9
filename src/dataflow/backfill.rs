//! Backfill: Parquet history, row groups shared among the workers; an epoch is a worker's run of
//! row groups of at least `epoch_rows` rows, pre-aggregated to one record per (arm, bucket) and
//! one per arm all-time before it enters the dataflow. A backfill starts over: process 0 clears
//! the counts first, and records what they are as of once they are all in the store.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use differential_dataflow::input::Input;
use timely::dataflow::operators::ToStream;
use timely::worker::Worker;

use rustc_hash::FxHashMap;

use super::handoff::record_backfill;
use super::harness::{run_job, wait_for_epochs_in_flight, JobSetup, ReadProgress, WorkerReport};
use super::sink::{count_and_sink, AppliedOffset, SinkSpec, SinkStats};
use super::{Cluster, DataflowError};
use crate::model::{CountKey, ALL_TIME};
use crate::source::parquet::{read_unit, ArmIds, Names, ParquetPlan};
use crate::store::{open_store, PosteriorStore, StoreUrl};
use crate::time::Buckets;

/// What one process saw during a backfill.
#[derive(Debug, Default, Clone)]
pub struct BackfillReport {
    pub rows: u64,
    pub rejected: u64,
    pub first_rejection: Option<String>,
    /// Files whose row groups failed to decode, skipped with `--skip-bad-files`.
    pub skipped: Vec<String>,
    /// What the sink wrote, and the time it took (this process's workers).
    pub sink: SinkStats,
}

impl WorkerReport for BackfillReport {
    fn merge(&mut self, other: BackfillReport) {
        self.rows += other.rows;
        self.rejected += other.rejected;
        if self.first_rejection.is_none() {
            self.first_rejection = other.first_rejection;
        }
        self.skipped.extend(other.skipped);
        self.sink.add(other.sink);
    }
}

/// The Parquet files under `input`, planned for a backfill; a folder without any is refused.
pub fn plan_backfill(input: &Path, skip_bad_files: bool) -> Result<ParquetPlan, DataflowError> {
    let plan = ParquetPlan::new(input, skip_bad_files)?;
    if plan.files.is_empty() && plan.skipped.is_empty() {
        return Err(DataflowError::Config(format!(
            "no Parquet files under {}",
            input.display()
        )));
    }
    Ok(plan)
}

/// The store as one process of a backfill sees it.
pub struct BackfillStore {
    /// `None` in a process that does not write (a store only process 0 may open).
    store: Option<Arc<dyn PosteriorStore>>,
    /// Whether every process writes the shards its workers own (else process 0 writes all).
    shared: bool,
}

impl BackfillStore {
    /// Opens the store at `url` for this process of `cluster`: a store that several processes
    /// may write (Cassandra) in every process, an embedded file only in process 0. Process 0
    /// clears the counts before its workers start, and no epoch completes anywhere before they
    /// do, so no process writes before the clear.
    pub fn open(url: &str, cluster: &Cluster) -> Result<Self, DataflowError> {
        let leader = cluster.process == 0;
        let shared = url.parse::<StoreUrl>()?.shared_across_processes();
        let store: Option<Arc<dyn PosteriorStore>> = if leader || shared {
            let store = open_store(url, true)?;
            if leader {
                store.clear_counts()?;
            }
            Some(Arc::from(store))
        } else {
            None
        };
        Ok(Self { store, shared })
    }
}

pub struct BackfillJob {
    pub plan: ParquetPlan,
    pub buckets: Buckets,
    pub until: Option<DateTime<Utc>>,
    pub skip_bad_files: bool,
    /// Rows a worker reads into one epoch (see [`DEFAULT_EPOCH_ROWS`]).
    pub epoch_rows: u64,
    pub store: BackfillStore,
    /// Called with the number of rows read so far by this process.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

/// Runs the backfill on this process's workers and returns what they saw. Once every epoch is
/// in the store, process 0 records the instant the counts are as of (`until`, else the newest
/// event) and their bucket width.
pub fn run_backfill(job: BackfillJob, cluster: &Cluster) -> Result<BackfillReport, DataflowError> {
    let store = job.store.store.clone();
    let as_of = job.until.or(job.plan.newest);
    let buckets = job.buckets;
    let setup = JobSetup {
        name: "backfill",
        store: store.clone(),
        shared_store: job.store.shared,
        store_in_every_process: false,
        first_written_epoch: 0,
        durable_epochs: false,
    };
    let progress = Arc::new(ReadProgress::new(job.progress.clone()));
    let job = Arc::new(job);
    let (mut report, sink) = run_job(cluster, setup, move |worker, sink| {
        backfill_worker(worker, sink, &job, &progress)
    })?;
    report.sink = sink;
    if let Some(store) = store {
        let started = std::time::Instant::now();
        store.sync()?;
        report.sink.seconds += started.elapsed().as_secs_f64();
        if cluster.process == 0 {
            record_backfill(store.as_ref(), as_of, buckets)?;
        }
    }
    Ok(report)
}

/// One worker's backfill: its share of the row groups, read epoch by epoch into the dataflow.
fn backfill_worker(
    worker: &mut Worker,
    sink: &SinkSpec,
    job: &BackfillJob,
    progress: &ReadProgress,
) -> BackfillReport {
    let failure = sink.failure.clone();
    let index = worker.index();
    let peers = worker.peers();
    let mut report = BackfillReport::default();
    let (mut counts_in, mut bad_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (counts_in, counts) = scope.new_collection::<(u32, CountKey), (i64, i64)>();
        let (bad_in, bad_files) = scope.new_collection::<u32, isize>();
        let good = if job.skip_bad_files {
            counts.antijoin(bad_files.distinct_core::<i64>())
        } else {
            counts
        };
        let records = good.map(|(_, key)| key);
        let no_offsets = Vec::<AppliedOffset>::new().to_stream(scope);
        let probe = count_and_sink(records, no_offsets, sink.clone());
        (counts_in, bad_in, probe)
    });
    let mut names = Names::default();
    let mut epoch = EpochCounts::default();
    let mut next = 0u64;
    let mut units = job.plan.share(index, peers).peekable();
    while let Some(unit) = units.next() {
        let file = &job.plan.files[unit.file as usize];
        let counted = read_unit(
            file,
            unit,
            job.buckets,
            job.until,
            &mut names,
            |arm, b, c| epoch.add(unit.file, arm, b, c),
        );
        match counted {
            Ok(read) => {
                report.rows += read.rows;
                report.rejected += read.rejected;
                if report.first_rejection.is_none() {
                    report.first_rejection = read.first_rejection.map(|r| {
                        format!("{} row group {}: {r}", file.path.display(), unit.row_group)
                    });
                }
            }
            Err(e) if job.skip_bad_files => {
                report.skipped.push(e.to_string());
                bad_in.insert(unit.file);
            }
            Err(e) => {
                failure.set(e);
                break;
            }
        }
        epoch.rows += unit.rows;
        progress.add(unit.rows);
        if epoch.rows < job.epoch_rows && units.peek().is_some() {
            continue;
        }
        for (key, diff) in epoch.drain(&mut names) {
            counts_in.update(key, diff);
        }
        next += 1;
        counts_in.advance_to(next);
        bad_in.advance_to(next);
        counts_in.flush();
        bad_in.flush();
        wait_for_epochs_in_flight(worker, &probe, next, &failure);
        if failure.is_set() {
            break;
        }
    }
    drop(counts_in);
    drop(bad_in);
    while worker.step_or_park(None) {}
    report
}

/// Rows a worker reads into one epoch: larger epochs mean fewer store transactions and fewer
/// rewrites of the all-time rows; the state held for an epoch is its distinct (arm, bucket)
/// cells, not its rows.
/// 2M rows: fewer sink transactions and block rewrites than 1M for a few tens of MiB more, and
/// larger epochs gained nothing (measured in bench/backfill/README.md).
pub const DEFAULT_EPOCH_ROWS: u64 = 1 << 21;

/// One epoch's counts per (file, arm, bucket), on interned names. The file stays in the key so
/// that a file found bad later (`--skip-bad-files`) takes all of its counts back.
#[derive(Default)]
struct EpochCounts {
    cells: FxHashMap<(u32, ArmIds, i64), (i64, i64)>,
    rows: u64,
}

impl EpochCounts {
    fn add(&mut self, file: u32, arm: ArmIds, bucket: i64, (imp, clk): (i64, i64)) {
        let cell = self.cells.entry((file, arm, bucket)).or_default();
        cell.0 += imp;
        cell.1 += clk;
    }

    /// The epoch's records, bucket and all-time, with their names; empties the epoch.
    fn drain(&mut self, names: &mut Names) -> Vec<((u32, CountKey), (i64, i64))> {
        let mut all_time: FxHashMap<(u32, ArmIds), (i64, i64)> = FxHashMap::default();
        let mut records = Vec::with_capacity(self.cells.len());
        for ((file, arm, bucket), (imp, clk)) in self.cells.drain() {
            let total = all_time.entry((file, arm)).or_default();
            total.0 += imp;
            total.1 += clk;
            let arm = names.arm(arm);
            records.push(((file, CountKey { arm, bucket }), (imp, clk)));
        }
        records.reserve(all_time.len());
        for ((file, arm), counts) in all_time {
            let key = CountKey {
                arm: names.arm(arm),
                bucket: ALL_TIME,
            };
            records.push(((file, key), counts));
        }
        self.rows = 0;
        records
    }
}
