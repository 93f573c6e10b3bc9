//! Backfill: Parquet history, row groups shared among the workers; an epoch is a worker's run of
//! row groups of at least `epoch_rows` rows, pre-aggregated to one record per (arm, bucket) and
//! one per arm all-time before it enters the dataflow. A backfill starts over: process 0 clears
//! the counts first, and records what they are as of once they are all in the store.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use timely::dataflow::operators::Input;
use timely::worker::Worker;

use super::handoff::record_backfill;
use super::harness::{run_job, wait_for_epochs_in_flight, JobSetup, ReadProgress, WorkerReport};
use super::priors::{keep_priors, AllTime, PriorSettings};
use super::sink::{SinkSpec, SinkStats};
use super::totals::{packed_ids, total_and_sink, BackfillCell, SentArms};
use super::{Cluster, DataflowError};
use crate::model::{Counts, TenantAliases};
use crate::source::parquet::{read_unit, ArmIds, Names, ParquetPlan};
use crate::store::{open_store, PosteriorStore, StoreUrl};
use crate::time::{Buckets, Retention};

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

/// The Parquet files under `input`, planned for a job over history (the backfill, the report);
/// a folder without any is refused.
pub fn plan_history(input: &Path, skip_bad_files: bool) -> Result<ParquetPlan, DataflowError> {
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
    /// Every tenant's city aliases, which the workers apply to the arms they read.
    aliases: Arc<TenantAliases>,
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
        let aliases = match &store {
            Some(store) => store.all_city_aliases()?,
            None => TenantAliases::default(),
        };
        // The processes that cannot open the store would not know them.
        if !shared && cluster.hosts.len() > 1 && !aliases.is_empty() {
            return Err(DataflowError::Config(
                "city aliases are declared, and only process 0 can read this store: run the \
                 backfill in one process, or on a Cassandra store"
                    .into(),
            ));
        }
        Ok(Self {
            store,
            shared,
            aliases: Arc::new(aliases),
        })
    }
}

pub struct BackfillJob {
    pub plan: ParquetPlan,
    pub buckets: Buckets,
    /// Buckets before the horizon (the as-of instant's bucket less the retention) count into
    /// the all-time rows only.
    pub retention: Retention,
    pub until: Option<DateTime<Utc>>,
    pub skip_bad_files: bool,
    /// Rows a worker reads into one epoch (see [`DEFAULT_EPOCH_ROWS`]).
    pub epoch_rows: u64,
    pub store: BackfillStore,
    /// How the job computes the priors at its end (`None`: it leaves them alone).
    pub priors: Option<PriorSettings>,
    /// Called with the number of rows read so far by this process.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

impl BackfillJob {
    /// The instant the counts are as of: `until`, else the newest event.
    fn as_of(&self) -> Option<DateTime<Utc>> {
        self.until.or(self.plan.newest)
    }

    /// The first bucket whose rows are kept (none without an as-of instant: no rows either).
    fn horizon(&self) -> Option<i64> {
        self.as_of()
            .map(|t| self.retention.horizon(self.buckets, self.buckets.index(t)))
    }
}

/// Runs the backfill on this process's workers and returns what they saw. Once every epoch is
/// in the store, process 0 records the instant the counts are as of (`until`, else the newest
/// event), their bucket width and the retention.
pub fn run_backfill(job: BackfillJob, cluster: &Cluster) -> Result<BackfillReport, DataflowError> {
    let store = job.store.store.clone();
    let as_of = job.as_of();
    let (buckets, retention) = (job.buckets, job.retention);
    let setup = JobSetup {
        name: "backfill",
        store: store.clone(),
        shared_store: job.store.shared,
        store_in_every_process: false,
        first_written_epoch: 0,
        durable_epochs: false,
        // The backfill keeps only the buckets from its horizon on in the first place.
        retention: None,
        priors: job.priors,
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
            record_backfill(store.as_ref(), as_of, buckets, retention)?;
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
    let (mut cells_in, mut bad_in, mut priors_in, probe, all_time) =
        worker.dataflow::<u64, _, _>(|scope| {
            let (cells_in, cells) = scope.new_input::<Vec<BackfillCell>>();
            let (bad_in, bad_files) = scope.new_input::<Vec<u32>>();
            let (probe, all_time) = total_and_sink(cells, bad_files, sink.clone());
            // The written all-time rows, handed on once every owner has written its shards.
            let priors_in = sink.priors.map(|settings| {
                let (rows_in, rows) = scope.new_input::<Vec<AllTime>>();
                let (clock_in, clock) = scope.new_input::<Vec<i64>>();
                keep_priors(rows, clock, settings, sink.clone());
                (rows_in, clock_in)
            });
            (cells_in, bad_in, priors_in, probe, all_time)
        });
    let mut names = Names::new(job.store.aliases.clone());
    let mut sent = SentArms::new(index);
    let mut epoch = EpochCounts {
        horizon: job.horizon(),
        ..EpochCounts::default()
    };
    let mut next = 0u64;
    let mut units = job.plan.share(index, peers).peekable();
    while let Some(unit) = units.next() {
        let file = &job.plan.files[unit.file as usize];
        // Without --skip-bad-files no count is ever taken back, so files need not be told apart.
        let file_id = if job.skip_bad_files { unit.file } else { 0 };
        let counted = read_unit(
            file,
            unit,
            job.buckets,
            job.until,
            &mut names,
            |arm, b, c| epoch.add(file_id, arm, b, c),
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
                bad_in.send(unit.file);
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
        for cell in epoch.drain(&names, &mut sent) {
            cells_in.send(cell);
        }
        next += 1;
        cells_in.advance_to(next);
        bad_in.advance_to(next);
        wait_for_epochs_in_flight(worker, &probe, next, &failure);
        if failure.is_set() {
            break;
        }
    }
    drop(cells_in);
    drop(bad_in);
    // The owners write once every worker has read everything; the epoch's emptied map and the
    // arms' numbers would hold their memory through the writes.
    drop(epoch);
    drop(sent);
    if let Some((rows_in, _)) = priors_in.as_mut() {
        // A backfill computes the priors once, at its end, from every arm's all-time row as
        // written (the priors' clock stays silent).
        worker.step_or_park_while(None, || !probe.done());
        for row in all_time.take() {
            rows_in.send(row);
        }
    }
    drop(priors_in);
    while worker.step_or_park(None) {}
    report
}

/// Rows a worker reads into one epoch: the unit of pre-aggregation before the exchange. Epochs
/// are not written (the owners write once at the end), so they only need to be large enough
/// that an arm's rows meet in one, and small enough that a worker's epoch state stays small.
/// 512k rows (measured in bench/backfill/README.md).
pub const DEFAULT_EPOCH_ROWS: u64 = 1 << 19;

/// One epoch's counts per (file, arm, bucket), on interned names, appended as read and summed
/// by sorting when the epoch is sent: at a million arms an epoch's cells rarely meet, and a hash
/// map of them, far larger than the CPU's caches, missed the cache on nearly every row (a fifth
/// of a backfill's CPU). The file stays in the key so that a file found bad later
/// (`--skip-bad-files`) takes all of its counts back. A bucket before the retention horizon is
/// kept as `None`: it counts into the all-time row only.
#[derive(Default)]
struct EpochCounts {
    cells: Vec<EpochCell>,
    horizon: Option<i64>,
    rows: u64,
}

/// A cell as read: its arm's four ids, then its file and the bucket kept (0 for none, else the
/// bucket with its sign bit flipped; no bucket of an event is `i64::MIN`), packed into two
/// integers so that sorting compares two integers, not seven fields.
struct EpochCell {
    key: (u128, u128),
    counts: Counts,
}

impl EpochCell {
    fn new(file: u32, arm: ArmIds, bucket: Option<i64>, counts: Counts) -> Self {
        let bucket = bucket.map_or(0, |b| b as u64 ^ (1 << 63));
        Self {
            key: (
                packed_ids(arm),
                (u128::from(file) << 64) | u128::from(bucket),
            ),
            counts,
        }
    }

    fn file(&self) -> u32 {
        (self.key.1 >> 64) as u32
    }

    fn arm(&self) -> ArmIds {
        [96, 64, 32, 0].map(|shift| (self.key.0 >> shift) as u32)
    }

    fn bucket(&self) -> Option<i64> {
        let bucket = self.key.1 as u64;
        (bucket != 0).then_some((bucket ^ (1 << 63)) as i64)
    }
}

impl EpochCounts {
    fn add(&mut self, file: u32, arm: ArmIds, bucket: i64, (imp, clk): (i64, i64)) {
        let kept = self.horizon.is_none_or(|h| bucket >= h).then_some(bucket);
        let counts = Counts::new(imp.max(0) as u64, clk.max(0) as u64);
        self.cells.push(EpochCell::new(file, arm, kept, counts));
    }

    /// The epoch's cells, summed per (file, arm, bucket), each arm as `sent` sends it; empties
    /// the epoch.
    fn drain(&mut self, names: &Names, sent: &mut SentArms) -> Vec<BackfillCell> {
        self.rows = 0;
        self.cells.sort_unstable_by_key(|cell| cell.key);
        let cells = self
            .cells
            .chunk_by(|a, b| a.key == b.key)
            .map(|run| BackfillCell {
                file: run[0].file(),
                arm: sent.arm(run[0].key.0, || names.arm(run[0].arm())),
                bucket: run[0].bucket(),
                counts: run.iter().fold(Counts::ZERO, |sum, cell| sum + cell.counts),
            });
        let cells = cells.collect();
        self.cells.clear();
        cells
    }
}
