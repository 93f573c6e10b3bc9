//! The timely/differential jobs (docs/architecture.md, "The dataflow"). Each worker reads its
//! share of the input and pre-aggregates it to one record per (arm, bucket) per epoch; records are
//! exchanged by (tenant, city), so one worker owns each shard. The stream keeps the counts in
//! differential with a pair diff (impressions, clicks) per (arm, bucket) and per arm all-time
//! (bucket −1), and writes each shard's changed rows, with its applied log offsets, once the
//! frontier passes their epoch; the backfill totals them per worker and writes them once.
//!
//! - `backfill.rs`: Parquet history; `stream/`: an event log with exactly-once effect. They differ
//!   in the source and the driver loop; the stream ends in the dataflow of `sink.rs`, the backfill
//!   in that of `totals.rs`, and both run under `harness.rs`.
//! - `handoff.rs`: what the jobs leave each other in the store's metadata (the backfill's as-of
//!   instant, bucket width and retention, the stream's cutoff and start).
//! - `priors.rs`: the priors both jobs keep beside the counts (the hierarchical rule of
//!   `bandit`, scheduled per slot), and `slotbandit priors` over a store's counts.
//! - `history.rs`: what the jobs over history read: Parquet row groups shared like the
//!   backfill's, or an event log up to the end offsets taken at its start.
//! - `report.rs`: `slotbandit report` over history, impressions and clicks joined by
//!   (request_id, banner) across the workers.
//! - `evaluate.rs`: `slotbandit evaluate` over history, events exchanged by (tenant, slot) so
//!   that each worker weighs whole slots, their parts merged on worker 0.

mod arm_table;
mod backfill;
mod evaluate;
mod handoff;
mod harness;
mod history;
mod priors;
mod report;
mod sink;
mod stream;
mod totals;

pub use backfill::{
    plan_history, run_backfill, BackfillJob, BackfillReport, BackfillStore, DEFAULT_EPOCH_ROWS,
};
pub use evaluate::{run_evaluate, EvaluateJob, EvaluateRun};
pub use handoff::{hand_off, stream_start, StreamStart};
pub use history::{History, LogHistory};
pub use priors::{
    write_priors, PriorSettings, DEFAULT_MAX_PRIOR_STRENGTH, DEFAULT_PRIORS_EVERY_MINUTES,
};
pub use report::{run_report, ReportJob, ReportRun};
pub use sink::SinkStats;
pub use stream::{
    run_stream, ClickLatency, Readiness, RepeatWindows, StreamJob, StreamMetrics, StreamReport,
};

use crate::model::parquet::ParquetEventError;
use crate::source::LogError;
use crate::store::StoreError;
use crate::time::TimeError;

#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error(transparent)]
    Source(#[from] ParquetEventError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Config(String),
    #[error("timely: {0}")]
    Timely(String),
    #[error("the cutoff recorded by the backfill handoff")]
    HandoffCutoff(#[source] TimeError),
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
