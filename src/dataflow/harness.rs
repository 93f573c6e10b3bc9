//! What running a job takes besides its dataflow and its driver loop, the same for the backfill
//! and the stream: the check that its processes can write their store, timely on the cluster, a
//! sink for every worker, the first error of any worker, the workers' reports merged once they
//! are done, and the pace of epochs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::priors::PriorSettings;
use super::sink::{ShardPlacement, SinkRetention, SinkSpec, SinkStats};
use super::{Cluster, DataflowError};
use crate::store::PosteriorStore;

/// The first error of any worker; every worker stops at its next epoch once one is set.
#[derive(Clone, Default)]
pub(super) struct Failure(Arc<Mutex<Option<DataflowError>>>);

impl Failure {
    /// Keeps `e` unless an earlier error is kept already.
    pub(super) fn set(&self, e: impl Into<DataflowError>) {
        self.0.lock().expect("failure lock").get_or_insert(e.into());
    }

    pub(super) fn is_set(&self) -> bool {
        self.0.lock().expect("failure lock").is_some()
    }

    fn take(&self) -> Option<DataflowError> {
        self.0.lock().expect("failure lock").take()
    }
}

/// What one worker saw, merged over a process's workers.
pub(super) trait WorkerReport: Default + Send + 'static {
    fn merge(&mut self, other: Self);
}

/// What the harness needs to know of a job: where its sink writes and which of its epochs.
pub(super) struct JobSetup {
    /// The job's name in messages.
    pub name: &'static str,
    /// `None` in a process that does not write (a store only process 0 may open).
    pub store: Option<Arc<dyn PosteriorStore>>,
    /// Whether every process writes its own shards (else all go to process 0's workers).
    pub shared_store: bool,
    /// Whether every process needs the store itself (else a job of several processes may use a
    /// store only process 0 opens).
    pub store_in_every_process: bool,
    /// Epochs before this one only load state that is already in the store; not written back.
    pub first_written_epoch: u64,
    /// Whether each epoch must be on disk before the next (else the job syncs at its end).
    pub durable_epochs: bool,
    /// How long the sink keeps bucket rows, if it expires them as time moves (the stream).
    pub retention: Option<SinkRetention>,
    /// How the job keeps the priors beside the counts (`None`: it does not).
    pub priors: Option<PriorSettings>,
}

impl JobSetup {
    /// A job that reads history and writes nothing (the report, the evaluation).
    pub fn read_only(name: &'static str) -> Self {
        Self {
            name,
            store: None,
            shared_store: false,
            store_in_every_process: false,
            first_written_epoch: 0,
            durable_epochs: false,
            retention: None,
            priors: None,
        }
    }
}

/// Runs `work` on every worker of this process with the sink it builds its dataflow with, and
/// returns the workers' merged report and what the sink wrote; the first error of any worker
/// is returned instead.
pub(super) fn run_job<R: WorkerReport>(
    cluster: &Cluster,
    setup: JobSetup,
    work: impl Fn(&mut Worker, &SinkSpec) -> R + Send + Sync + 'static,
) -> Result<(R, SinkStats), DataflowError> {
    if setup.store_in_every_process && cluster.processes() > 1 && !setup.shared_store {
        return Err(DataflowError::Config(format!(
            "a {} job of several processes needs a store every process can write (cassandra://)",
            setup.name
        )));
    }
    let sink = SinkSpec {
        store: setup.store,
        placement: ShardPlacement::new(setup.shared_store, cluster.workers, cluster.processes()),
        first_written_epoch: setup.first_written_epoch,
        durable_epochs: setup.durable_epochs,
        retention: setup.retention,
        priors: setup.priors,
        failure: Failure::default(),
        stats: Arc::default(),
    };
    let worker_sink = sink.clone();
    let guards = timely::execute(cluster.timely_config(), move |worker| {
        work(worker, &worker_sink)
    })
    .map_err(DataflowError::Timely)?;
    let mut report = R::default();
    for r in guards.join() {
        report.merge(r.map_err(DataflowError::Timely)?);
    }
    if let Some(e) = sink.failure.take() {
        return Err(e);
    }
    Ok((report, sink.stats()))
}

/// Epochs a worker hands to the dataflow before the oldest is in the store: enough to read the
/// next epoch while the sink writes one, few enough that memory stays flat while catching up.
const EPOCHS_IN_FLIGHT: u64 = 2;

/// Steps the dataflow until no more than [`EPOCHS_IN_FLIGHT`] epochs before `epoch` are still
/// on their way to the store, or a worker failed.
pub(super) fn wait_for_epochs_in_flight(
    worker: &mut Worker,
    probe: &ProbeHandle<u64>,
    epoch: u64,
    failure: &Failure,
) {
    worker.step_while(|| {
        probe.less_than(&epoch.saturating_sub(EPOCHS_IN_FLIGHT)) && !failure.is_set()
    });
}

/// What a process's workers have read, reported as a running total.
pub(super) struct ReadProgress {
    read: AtomicU64,
    report: Arc<dyn Fn(u64) + Send + Sync>,
}

impl ReadProgress {
    pub(super) fn new(report: Arc<dyn Fn(u64) + Send + Sync>) -> Self {
        Self {
            read: AtomicU64::new(0),
            report,
        }
    }

    pub(super) fn add(&self, read: u64) {
        (self.report)(self.read.fetch_add(read, Ordering::Relaxed) + read);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many workers reported.
    #[derive(Debug, Default, PartialEq)]
    struct Workers(usize);

    impl WorkerReport for Workers {
        fn merge(&mut self, other: Workers) {
            self.0 += other.0;
        }
    }

    fn setup(store_in_every_process: bool) -> JobSetup {
        JobSetup {
            name: "stream",
            store: None,
            shared_store: false,
            store_in_every_process,
            first_written_epoch: 1,
            durable_epochs: true,
            retention: None,
            priors: None,
        }
    }

    #[test]
    fn the_workers_reports_are_merged_and_the_first_error_wins_over_them() {
        let (report, sink) = run_job(&Cluster::single(3), setup(false), |_, _| Workers(1)).unwrap();
        assert_eq!(report, Workers(3));
        assert_eq!(sink, SinkStats::default());

        let failed = run_job(&Cluster::single(2), setup(false), |worker, sink| {
            if worker.index() == 1 {
                sink.failure
                    .set(DataflowError::Config("worker 1 failed".into()));
            }
            Workers(1)
        });
        assert_eq!(failed.unwrap_err().to_string(), "worker 1 failed");
    }

    #[test]
    fn a_job_of_several_processes_that_each_need_the_store_refuses_one_only_process_0_opens() {
        let cluster = Cluster {
            workers: 1,
            process: 1,
            hosts: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        };
        let refused = run_job(&cluster, setup(true), |_, _| Workers(1));
        assert_eq!(
            refused.unwrap_err().to_string(),
            "a stream job of several processes needs a store every process can write (cassandra://)"
        );
    }

    #[test]
    fn progress_reports_the_running_total_of_every_worker() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let report = seen.clone();
        let progress = ReadProgress::new(Arc::new(move |n| report.lock().unwrap().push(n)));
        progress.add(5);
        progress.add(7);
        assert_eq!(*seen.lock().unwrap(), vec![5, 12]);
    }
}
