//! Backfill: Parquet history, row groups shared among the workers; an epoch is a worker's run of
//! row groups of at least `epoch_rows` rows, pre-aggregated to one record per (arm, bucket) and
//! one per arm all-time before it enters the dataflow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use differential_dataflow::input::Input;
use timely::dataflow::operators::ToStream;

use rustc_hash::FxHashMap;

use super::{
    count_and_sink, fail, failed, AppliedOffset, Cluster, DataflowError, Failure, SinkSpec,
    SinkStats,
};
use crate::model::{CountKey, ALL_TIME};
use crate::source::parquet::{read_unit, ArmIds, Names, ParquetPlan};
use crate::store::PosteriorStore;
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

impl BackfillReport {
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

pub struct BackfillJob {
    pub plan: ParquetPlan,
    pub buckets: Buckets,
    pub until: Option<DateTime<Utc>>,
    pub skip_bad_files: bool,
    /// Rows a worker reads into one epoch (see [`DEFAULT_EPOCH_ROWS`]).
    pub epoch_rows: u64,
    /// `None` in a process that does not write (a store only process 0 may open).
    pub store: Option<Arc<dyn PosteriorStore>>,
    pub shared_store: bool,
    /// Called with the number of rows read so far by this process.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

/// Runs the backfill on this process's workers and returns what they saw.
pub fn run_backfill(job: BackfillJob, cluster: &Cluster) -> Result<BackfillReport, DataflowError> {
    let store = job.store.clone();
    let job = Arc::new(job);
    let failure: Failure = Arc::default();
    let read_rows = Arc::new(AtomicU64::new(0));
    let threads = cluster.workers;
    let shared_failure = failure.clone();
    let sink_stats: Arc<Mutex<SinkStats>> = Arc::default();
    let process_sink_stats = sink_stats.clone();
    let guards = timely::execute(cluster.timely_config(), move |worker| {
        let job = job.clone();
        let failure = shared_failure.clone();
        let sink_stats = process_sink_stats.clone();
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
            let probe = count_and_sink(
                records,
                no_offsets,
                SinkSpec {
                    store: job.store.clone(),
                    shared_store: job.shared_store,
                    threads,
                    first_written_epoch: 0,
                    durable_epochs: false,
                    failure: failure.clone(),
                    stats: sink_stats.clone(),
                },
            );
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
                    fail(&failure, e);
                    break;
                }
            }
            epoch.rows += unit.rows;
            (job.progress)(read_rows_add(&read_rows, unit.rows));
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
            // Keep at most two epochs in flight so memory stays flat.
            worker.step_while(|| probe.less_than(&next.saturating_sub(2)));
            if failed(&failure) {
                break;
            }
        }
        drop(counts_in);
        drop(bad_in);
        while worker.step_or_park(None) {}
        report
    })
    .map_err(DataflowError::Timely)?;
    let mut report = BackfillReport::default();
    for r in guards.join() {
        report.merge(r.map_err(DataflowError::Timely)?);
    }
    if let Some(e) = failure.lock().expect("failure lock").take() {
        return Err(e);
    }
    report.sink = *sink_stats.lock().expect("sink stats lock");
    if let Some(store) = store {
        let started = std::time::Instant::now();
        store.sync()?;
        report.sink.seconds += started.elapsed().as_secs_f64();
    }
    Ok(report)
}

fn read_rows_add(counter: &AtomicU64, rows: u64) -> u64 {
    counter.fetch_add(rows, Ordering::Relaxed) + rows
}

/// Rows a worker reads into one epoch: larger epochs mean fewer store transactions and fewer
/// rewrites of the all-time rows; the state held for an epoch is its distinct (arm, bucket)
/// cells, not its rows.
/// 2M rows: the sink's transactions and block rewrites cost less than at 1M (about 5% of the run
/// over 51M rows) for some 40 MiB more (bench/backfill/README.md, session 6).
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
