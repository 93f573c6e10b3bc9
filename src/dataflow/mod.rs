//! The timely/differential job (DESIGN.md §4). Each worker reads its share of the input and
//! pre-aggregates it to one record per (arm, bucket) per epoch; records are exchanged by
//! (tenant, city), so one worker owns each shard; differential keeps the counts with a pair diff
//! (impressions, clicks) per (arm, bucket) and per arm all-time (bucket −1); the sink writes each
//! shard's changed rows once the frontier passes their epoch.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use differential_dataflow::input::Input;
use differential_dataflow::operators::count::CountTotal;
use differential_dataflow::{Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator, Probe};
use timely::dataflow::ProbeHandle;

use crate::model::parquet::ParquetEventError;
use crate::model::ArmKey;
use crate::source::parquet::{read_unit, ParquetPlan};
use crate::store::{PosteriorStore, ShardWrite, StoreError, ALL_TIME};
use crate::time::Buckets;

/// An arm in one bucket (an IST hour, or −1 for all-time): the key of the counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CountKey {
    pub arm: ArmKey,
    pub bucket: i64,
}

/// Hashes only (tenant, city): differential exchanges by this hash, so every key of a shard
/// lands on the same worker, which can then write the shard in one atomic batch.
impl Hash for CountKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.arm.tenant.hash(state);
        self.arm.city.hash(state);
    }
}

impl CountKey {
    pub fn all_time(&self) -> Self {
        Self {
            arm: self.arm.clone(),
            bucket: ALL_TIME,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error(transparent)]
    Source(#[from] ParquetEventError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("timely: {0}")]
    Timely(String),
}

/// Where the job runs: worker threads per process, and the processes of a cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub workers: usize,
    pub process: usize,
    /// `host:port` of every process; empty or one entry for a single process.
    pub hosts: Vec<String>,
}

impl Cluster {
    pub fn single(workers: usize) -> Self {
        Self {
            workers,
            process: 0,
            hosts: Vec::new(),
        }
    }

    pub fn processes(&self) -> usize {
        self.hosts.len().max(1)
    }

    fn timely_config(&self) -> timely::Config {
        let communication = if self.processes() > 1 {
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.hosts.clone(),
                report: false,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            timely::CommunicationConfig::Process(self.workers)
        } else {
            timely::CommunicationConfig::Thread
        };
        timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        }
    }
}

/// What one process saw during a backfill.
#[derive(Debug, Default, Clone)]
pub struct BackfillReport {
    pub rows: u64,
    pub rejected: u64,
    pub first_rejection: Option<String>,
    /// Files whose row groups failed to decode, skipped with `--skip-bad-files`.
    pub skipped: Vec<String>,
    /// Epoch writes to the store, the shard batches and rows they carried, and the time the
    /// sink spent in them (summed over this process's workers).
    pub sink: SinkStats,
}

/// What a sink wrote, and the time it spent writing.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SinkStats {
    pub epochs: u64,
    pub shards: u64,
    pub rows: u64,
    pub seconds: f64,
}

impl SinkStats {
    fn add(&mut self, other: SinkStats) {
        self.epochs += other.epochs;
        self.shards += other.shards;
        self.rows += other.rows;
        self.seconds += other.seconds;
    }
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
    /// `None` in a process that does not write (a store only process 0 may open).
    pub store: Option<Arc<dyn PosteriorStore>>,
    pub shared_store: bool,
    /// Called with the number of rows read so far by this process.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

/// Runs the backfill on this process's workers and returns what they saw.
pub fn run_backfill(job: BackfillJob, cluster: &Cluster) -> Result<BackfillReport, DataflowError> {
    let job = Arc::new(job);
    let failure: Arc<Mutex<Option<DataflowError>>> = Arc::new(Mutex::new(None));
    let read_rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads = cluster.workers as u64;
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
            let totals = good
                .flat_map(|(_, key)| [key.all_time(), key])
                .count_total();
            let probe = sink(
                totals,
                job.store.clone(),
                job.shared_store,
                threads,
                failure.clone(),
                sink_stats.clone(),
            );
            (counts_in, bad_in, probe)
        });
        for (epoch, unit) in job.plan.share(index, peers).enumerate() {
            let file = &job.plan.files[unit.file as usize];
            match read_unit(file, unit, job.buckets, job.until) {
                Ok(read) => {
                    report.rows += read.rows;
                    report.rejected += read.rejected;
                    if report.first_rejection.is_none() {
                        report.first_rejection = read.first_rejection.map(|r| {
                            format!("{} row group {}: {r}", file.path.display(), unit.row_group)
                        });
                    }
                    for (key, diff) in read.counts {
                        counts_in.update((unit.file, key), diff);
                    }
                }
                Err(e) if job.skip_bad_files => {
                    report.skipped.push(e.to_string());
                    bad_in.insert(unit.file);
                }
                Err(e) => {
                    failure
                        .lock()
                        .expect("failure lock")
                        .get_or_insert(e.into());
                    break;
                }
            }
            (job.progress)(read_rows_add(&read_rows, unit.rows));
            let next = epoch as u64 + 1;
            counts_in.advance_to(next);
            bad_in.advance_to(next);
            counts_in.flush();
            bad_in.flush();
            // Keep at most two epochs in flight so memory stays flat.
            worker.step_while(|| probe.less_than(&next.saturating_sub(2)));
            if failure.lock().expect("failure lock").is_some() {
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
    Ok(report)
}

fn read_rows_add(counter: &std::sync::atomic::AtomicU64, rows: u64) -> u64 {
    counter.fetch_add(rows, std::sync::atomic::Ordering::Relaxed) + rows
}

type Totals<'s> = VecCollection<'s, u64, (CountKey, (i64, i64)), isize>;
/// One change of the totals: ((key, (impressions, clicks)), epoch, diff).
type Update = ((CountKey, (i64, i64)), u64, isize);

/// Writes each completed epoch's changed shards, holding a capability per pending epoch so that
/// the returned probe passes an epoch only once it is in the store.
fn sink(
    totals: Totals<'_>,
    store: Option<Arc<dyn PosteriorStore>>,
    shared_store: bool,
    writer_threads: u64,
    failure: Arc<Mutex<Option<DataflowError>>>,
    stats: Arc<Mutex<SinkStats>>,
) -> ProbeHandle<u64> {
    // A shared store is written by the worker that owns the shard (the count's own exchange);
    // a store only process 0 may open gets every shard routed to one of process 0's workers.
    let route = move |u: &Update| {
        let h = u.0 .0.hashed();
        if shared_store {
            h
        } else {
            h % writer_threads.max(1)
        }
    };
    let stream = totals
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(route),
            "Sink",
            move |_cap, _info| {
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Update>)> = BTreeMap::new();
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        for update in data.drain(..) {
                            pending
                                .entry(update.1)
                                .or_insert_with(|| (cap.delayed(&update.1, 0), Vec::new()))
                                .1
                                .push(update);
                        }
                    });
                    let complete: Vec<u64> = pending
                        .keys()
                        .copied()
                        .filter(|t| !frontier.less_equal(t))
                        .collect();
                    for t in complete {
                        let (_cap, updates) = pending.remove(&t).expect("listed");
                        if let Some(store) = &store {
                            let writes = shard_writes(updates);
                            let started = std::time::Instant::now();
                            if let Err(e) = store.apply_epoch(&writes) {
                                failure
                                    .lock()
                                    .expect("failure lock")
                                    .get_or_insert(e.into());
                            }
                            stats.lock().expect("sink stats lock").add(SinkStats {
                                epochs: 1,
                                shards: writes.len() as u64,
                                rows: writes.iter().map(|w| w.rows.len() as u64).sum(),
                                seconds: started.elapsed().as_secs_f64(),
                            });
                        }
                    }
                }
            },
        );
    let (probe, _) = stream.probe();
    probe
}

/// The new absolute value of every key changed in one epoch, grouped by (tenant, city).
fn shard_writes(updates: Vec<Update>) -> Vec<ShardWrite> {
    let mut latest: BTreeMap<CountKey, (u64, u64)> = BTreeMap::new();
    for ((key, (imp, clk)), _, diff) in updates {
        if diff > 0 {
            latest.insert(key, (imp.max(0) as u64, clk.max(0) as u64));
        } else {
            latest.entry(key).or_insert((0, 0));
        }
    }
    let mut shards: BTreeMap<(String, String), ShardWrite> = BTreeMap::new();
    for (key, (imp, clk)) in latest {
        shards
            .entry((key.arm.tenant.clone(), key.arm.city.clone()))
            .or_insert_with_key(|(tenant, city)| ShardWrite {
                tenant: tenant.clone(),
                city: city.clone(),
                ..Default::default()
            })
            .rows
            .push((key, imp, clk));
    }
    shards.into_values().collect()
}
