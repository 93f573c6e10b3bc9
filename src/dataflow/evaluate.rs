//! `slotbandit evaluate` as a dataflow over history (the rules are those of `eval::evaluate`).
//! Each worker reads its share of the history (Parquet row groups shared as in the backfill, or
//! the whole log on worker 0 of process 0), and the events are exchanged by (tenant, slot), with
//! the slot definitions process 0 read, so that one worker holds all of a slot's impressions and
//! clicks. Once everything is read, each worker weighs its slots with an [`EvaluationTally`] and
//! sends the parts (and, if asked, its weighed decisions) to worker 0, which merges them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Exchange as _, Input, Operator, Probe};
use timely::worker::Worker;

use super::harness::{run_job, wait_for_epochs_in_flight, JobSetup, ReadProgress, WorkerReport};
use super::history::{History, Reading};
use super::sink::SinkSpec;
use super::{Cluster, DataflowError};
use crate::eval::{EvaluationEvent, EvaluationParts, EvaluationTally, ReportRange, Target};
use crate::model::SlotConfig;

pub struct EvaluateJob {
    pub history: History,
    pub range: ReportRange,
    /// Every slot's definition; only process 0's are used (the other processes may pass none).
    pub configs: Vec<SlotConfig>,
    pub targets: Vec<Target>,
    /// Whether to gather every weighed decision as a JSON line (`evaluate --decisions-out`).
    pub record_decisions: bool,
    /// Called with the number of rows read so far by this process.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

/// What the workers weighed, merged; and the rows that broke the event contract.
#[derive(Debug, Default)]
pub struct EvaluateRun {
    pub parts: EvaluationParts,
    /// Every weighed decision as a JSON line (a [`crate::eval::DecisionRecord`]), slot by slot
    /// in name order, as one tally's `weigh` sees them; empty unless recorded.
    pub decisions: Vec<String>,
    pub invalid_rows: u64,
}

/// (tenant, slot)
type SlotKey = (String, String);

/// What a worker sends worker 0.
#[derive(Clone, Serialize, Deserialize)]
enum Gathered {
    Weighed {
        parts: EvaluationParts,
        decisions: BTreeMap<SlotKey, Vec<String>>,
    },
    InvalidRows(u64),
}

/// What worker 0 gathered (the other workers' is empty).
#[derive(Default)]
struct Gathering {
    parts: EvaluationParts,
    decisions: BTreeMap<SlotKey, Vec<String>>,
    invalid_rows: u64,
}

impl Gathering {
    fn add(&mut self, gathered: Gathered) {
        match gathered {
            Gathered::Weighed { parts, decisions } => {
                self.parts.merge(parts);
                self.decisions.extend(decisions);
            }
            Gathered::InvalidRows(n) => self.invalid_rows += n,
        }
    }
}

impl WorkerReport for Gathering {
    fn merge(&mut self, other: Gathering) {
        self.parts.merge(other.parts);
        self.decisions.extend(other.decisions);
        self.invalid_rows += other.invalid_rows;
    }
}

/// The exchange key of a slot: its events and definition meet on one worker.
fn slot_key(tenant: &str, slot: &str) -> u64 {
    differential_dataflow::Hashable::hashed(&(tenant, slot))
}

/// Runs the evaluation on this process's workers; process 0 returns it, the others `None`.
pub fn run_evaluate(
    job: EvaluateJob,
    cluster: &Cluster,
) -> Result<Option<EvaluateRun>, DataflowError> {
    let setup = JobSetup::read_only("evaluate");
    let progress = Arc::new(ReadProgress::new(job.progress.clone()));
    let job = Arc::new(job);
    let (gathering, _) = run_job(cluster, setup, move |worker, sink| {
        evaluate_worker(worker, sink, &job, &progress)
    })?;
    Ok((cluster.process == 0).then(|| EvaluateRun {
        parts: gathering.parts,
        decisions: gathering.decisions.into_values().flatten().collect(),
        invalid_rows: gathering.invalid_rows,
    }))
}

/// One worker's evaluation: its share of the history, one epoch per unit read; its slots
/// weighed once every worker has read everything.
fn evaluate_worker(
    worker: &mut Worker,
    sink: &SinkSpec,
    job: &EvaluateJob,
    progress: &ReadProgress,
) -> Gathering {
    let failure = sink.failure.clone();
    let (index, peers) = (worker.index(), worker.peers());
    let gathering: Rc<RefCell<Gathering>> = Rc::default();
    let gathered = gathering.clone();
    let (range, targets, record) = (job.range, job.targets.clone(), job.record_decisions);
    let (mut events_in, mut configs_in, mut invalid_in, probe) =
        worker.dataflow::<u64, _, _>(|scope| {
            let (events_in, events) = scope.new_input::<Vec<EvaluationEvent>>();
            let (configs_in, configs) = scope.new_input::<Vec<SlotConfig>>();
            let (invalid_in, invalid) = scope.new_input::<Vec<u64>>();
            let (probe, events) = events
                .exchange(|e: &EvaluationEvent| slot_key(&e.tenant, &e.slot))
                .probe();
            let weighed = events
                .binary_frontier::<_, CapacityContainerBuilder<Vec<Gathered>>, _, _, _, _>(
                    configs,
                    Pipeline,
                    Exchange::new(|c: &SlotConfig| slot_key(&c.tenant, &c.slot)),
                    "Evaluate",
                    move |capability, _info| {
                        let mut capability = Some(capability);
                        let mut tally = Some(EvaluationTally::new(range));
                        let mut configs = HashMap::new();
                        move |(events, events_frontier), (defined, defined_frontier), output| {
                            events.for_each(|_, data| {
                                let tally = tally.as_mut().expect("weighed only at the end");
                                data.drain(..).for_each(|e| tally.add(e));
                            });
                            defined.for_each(|_, data| {
                                configs
                                    .extend(data.drain(..).map(|c| {
                                        ((c.tenant.clone(), c.slot.clone()), Arc::new(c))
                                    }));
                            });
                            if !events_frontier.is_empty() || !defined_frontier.is_empty() {
                                return;
                            }
                            let (Some(capability), Some(tally)) = (capability.take(), tally.take())
                            else {
                                return;
                            };
                            let mut decisions: BTreeMap<SlotKey, Vec<String>> = BTreeMap::new();
                            let parts = tally.weigh(&configs, &targets, &mut |r| {
                                if record {
                                    decisions
                                        .entry((r.tenant.to_string(), r.slot.to_string()))
                                        .or_default()
                                        .push(serde_json::to_string(r).expect("serialisable"));
                                }
                            });
                            output
                                .session(&capability)
                                .give(Gathered::Weighed { parts, decisions });
                        }
                    },
                );
            weighed.concat(invalid.map(Gathered::InvalidRows)).sink(
                Exchange::new(|_| 0),
                "Gather",
                move |(input, _)| {
                    input.for_each(|_, data| {
                        let mut gathering = gathered.borrow_mut();
                        data.drain(..).for_each(|g| gathering.add(g));
                    });
                },
            );
            (events_in, configs_in, invalid_in, probe)
        });
    if index == 0 {
        for config in &job.configs {
            configs_in.send(config.clone());
        }
    }
    let mut epoch = 0u64;
    let mut invalid = 0u64;
    let read = job.history.read_share(index, peers, &mut |reading| {
        match reading {
            Reading::Event(event) => events_in.send(EvaluationEvent::from(event)),
            Reading::Invalid => invalid += 1,
            Reading::UnitRead { rows } => {
                progress.add(rows);
                epoch += 1;
                events_in.advance_to(epoch);
                events_in.flush();
                wait_for_epochs_in_flight(worker, &probe, epoch, &failure);
            }
        }
        !failure.is_set()
    });
    if let Err(e) = read {
        failure.set(e);
    }
    invalid_in.send(invalid);
    drop((events_in, configs_in, invalid_in));
    while worker.step_or_park(None) {}
    gathering.take()
}
