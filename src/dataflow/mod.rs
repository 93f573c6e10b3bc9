//! The timely/differential job (DESIGN.md §4). Each worker reads its share of the input and
//! pre-aggregates it to one record per (arm, bucket) per epoch; records are exchanged by
//! (tenant, city), so one worker owns each shard; differential keeps the counts with a pair diff
//! (impressions, clicks) per (arm, bucket) and per arm all-time (bucket −1); the sink writes each
//! shard's changed rows, with its applied log offsets, once the frontier passes their epoch.
//! Backfill (`backfill.rs`, Parquet) and stream (`stream.rs`, an event log) differ only in the
//! source; both end in [`count_and_sink`].

mod backfill;
mod stream;

pub use backfill::{run_backfill, BackfillJob, BackfillReport, DEFAULT_EPOCH_ROWS};
pub use stream::{run_stream, ClickLatency, StreamJob, StreamMetrics, StreamReport};

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use differential_dataflow::operators::count::CountTotal;
use differential_dataflow::{AsCollection, Hashable, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Exchange as _, Operator, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};

use crate::model::parquet::ParquetEventError;
use crate::model::ArmKey;
use crate::source::LogError;
use crate::store::{Offset, Partition, PosteriorStore, ShardWrite, StoreError};

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

/// A [`CountKey`] with its arm interned by the worker that owns the arm's shard, so that
/// differential sorts, merges and seeks integers instead of four strings. The ids mean something
/// only on that worker: its hash is the shard's, like a [`CountKey`]'s, so the key never leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct PackedKey {
    shard: u64,
    arm: u64,
    bucket: i64,
}

impl Hash for PackedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.shard.hash(state);
    }
}

/// The worker that owns `key`'s shard, by the same hash a [`PackedKey`] of the shard has.
fn packed_route(key: &CountKey) -> u64 {
    shard_hash(&key.arm.tenant, &key.arm.city).hashed()
}

/// The arms one worker has seen, each with its shard hash, by id.
#[derive(Default)]
struct ArmTable {
    ids: FxHashMap<ArmKey, u64>,
    arms: Vec<(ArmKey, u64)>,
}

impl ArmTable {
    fn pack(&mut self, key: CountKey) -> PackedKey {
        let CountKey { arm, bucket } = key;
        let (arm, shard) = match self.ids.get(&arm) {
            Some(&id) => (id, self.arms[id as usize].1),
            None => {
                let id = self.arms.len() as u64;
                let shard = shard_hash(&arm.tenant, &arm.city);
                self.arms.push((arm.clone(), shard));
                self.ids.insert(arm, id);
                (id, shard)
            }
        };
        PackedKey { shard, arm, bucket }
    }

    fn unpack(&self, key: PackedKey) -> CountKey {
        CountKey {
            arm: self.arms[key.arm as usize].0.clone(),
            bucket: key.bucket,
        }
    }
}

/// One (tenant, city) shard: the unit of partitioning and of atomic writes.
pub type Shard = (String, String);

/// The hash that places a shard on a worker (the same as a [`CountKey`] of the shard).
pub fn shard_hash(tenant: &str, city: &str) -> u64 {
    (tenant, city).hashed()
}

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

/// Epoch writes to the store, the shard batches and rows they carried, and the time the sink
/// spent in them (summed over a process's workers).
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

/// The first error of any worker; every worker stops at its next epoch once one is set.
type Failure = Arc<Mutex<Option<DataflowError>>>;

fn fail(failure: &Failure, e: impl Into<DataflowError>) {
    failure
        .lock()
        .expect("failure lock")
        .get_or_insert(e.into());
}

fn failed(failure: &Failure) -> bool {
    failure.lock().expect("failure lock").is_some()
}

/// Where the sink writes, and which epochs it skips.
struct SinkSpec {
    /// `None` in a process that does not write (a store only process 0 may open).
    store: Option<Arc<dyn PosteriorStore>>,
    /// Whether every process writes its own shards (else all go to process 0's workers).
    shared_store: bool,
    /// Worker threads per process.
    threads: u64,
    /// Epochs before this one only load state that is already in the store; not written back.
    first_written_epoch: u64,
    /// Whether each epoch must be on disk before the next (else the job syncs at its end).
    durable_epochs: bool,
    failure: Failure,
    stats: Arc<Mutex<SinkStats>>,
}

/// A shard's applied offset in one partition after an epoch.
pub type AppliedOffset = (Shard, Partition, Offset);

/// One change of the totals: ((key, (impressions, clicks)), epoch, diff).
type Update = ((CountKey, (i64, i64)), u64, isize);

/// Counts `records` per key (a pair diff of impressions and clicks) and writes each completed
/// epoch's changed shards, with their applied offsets, in one batch per shard. The returned probe
/// passes an epoch only once it is in the store.
fn count_and_sink<'s>(
    records: VecCollection<'s, u64, CountKey, (i64, i64)>,
    applied: StreamVec<'s, u64, AppliedOffset>,
    spec: SinkSpec,
) -> ProbeHandle<u64> {
    // A shared store is written by the worker that owns the shard; a store only process 0 may
    // open gets every shard routed to one of process 0's workers.
    let shared = spec.shared_store;
    let threads = spec.threads.max(1);
    let route = move |hash: u64| if shared { hash } else { hash % threads };
    // Every record goes to the worker that owns its shard, which interns its arm; differential
    // then keeps it there (a packed key hashes like its shard) and the names come back after.
    let arms: Rc<RefCell<ArmTable>> = Rc::default();
    let packing = arms.clone();
    let totals = records
        .inner
        .exchange(|(key, _, _): &(CountKey, u64, (i64, i64))| packed_route(key))
        .as_collection()
        .map(move |key| packing.borrow_mut().pack(key))
        .count_total()
        .map(move |(key, counts)| (arms.borrow().unpack(key), counts));
    let stream = totals
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
            applied,
            Exchange::new(move |u: &Update| route(u.0 .0.hashed())),
            Exchange::new(move |a: &AppliedOffset| route(shard_hash(&a.0 .0, &a.0 .1))),
            "Sink",
            move |_cap, _info| {
                type Pending = (Capability<u64>, Vec<Update>, Vec<AppliedOffset>);
                let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
                move |(counts, counts_frontier), (offsets, offsets_frontier), _output| {
                    counts.for_each(|cap, data| {
                        for update in data.drain(..) {
                            pending
                                .entry(update.1)
                                .or_insert_with(|| (cap.delayed(&update.1, 0), vec![], vec![]))
                                .1
                                .push(update);
                        }
                    });
                    offsets.for_each(|cap, data| {
                        let Some(&t) = cap.least() else { return };
                        pending
                            .entry(t)
                            .or_insert_with(|| (cap.delayed(&t, 0), vec![], vec![]))
                            .2
                            .append(data);
                    });
                    let complete: Vec<u64> = pending
                        .keys()
                        .copied()
                        .filter(|t| {
                            !counts_frontier.less_equal(t) && !offsets_frontier.less_equal(t)
                        })
                        .collect();
                    for t in complete {
                        let (_cap, updates, applied) = pending.remove(&t).expect("listed");
                        let Some(store) = spec
                            .store
                            .as_ref()
                            .filter(|_| t >= spec.first_written_epoch)
                        else {
                            continue;
                        };
                        if failed(&spec.failure) {
                            continue;
                        }
                        let writes = shard_writes(updates, applied);
                        let started = std::time::Instant::now();
                        let applied = if spec.durable_epochs {
                            store.apply_epoch(&writes)
                        } else {
                            store.apply_epoch_unsynced(&writes)
                        };
                        if let Err(e) = applied {
                            fail(&spec.failure, e);
                        }
                        spec.stats.lock().expect("sink stats lock").add(SinkStats {
                            epochs: 1,
                            shards: writes.len() as u64,
                            rows: writes.iter().map(|w| w.rows.len() as u64).sum(),
                            seconds: started.elapsed().as_secs_f64(),
                        });
                    }
                }
            },
        );
    let (probe, _) = stream.probe();
    probe
}

/// The new absolute value of every key changed in one epoch and the highest applied offset per
/// partition, grouped by shard.
fn shard_writes(updates: Vec<Update>, applied: Vec<AppliedOffset>) -> Vec<ShardWrite> {
    // A changed key has its new value inserted and its old one retracted; a key that is only
    // retracted fell to zero.
    let mut latest: FxHashMap<WholeKey, (u64, u64)> = FxHashMap::default();
    for ((key, (imp, clk)), _, diff) in updates {
        let value = (diff > 0).then(|| (imp.max(0) as u64, clk.max(0) as u64));
        match latest.entry(WholeKey(key)) {
            Entry::Occupied(mut e) => {
                if let Some(value) = value {
                    *e.get_mut() = value;
                }
            }
            Entry::Vacant(e) => {
                e.insert(value.unwrap_or((0, 0)));
            }
        }
    }
    // Grouped by shard through a hash of (tenant, city) rather than by sorting every row on two
    // names; the few shards are ordered at the end.
    let mut shards: Vec<ShardWrite> = Vec::new();
    let mut by_hash: FxHashMap<u64, Vec<usize>> = FxHashMap::default();
    for (WholeKey(key), (imp, clk)) in latest {
        let arm = &key.arm;
        let same = by_hash
            .entry(shard_hash(&arm.tenant, &arm.city))
            .or_default();
        let index = match same
            .iter()
            .find(|&&i| shards[i].tenant == arm.tenant && shards[i].city == arm.city)
        {
            Some(&i) => i,
            None => {
                same.push(shards.len());
                shards.push(ShardWrite {
                    tenant: arm.tenant.clone(),
                    city: arm.city.clone(),
                    rows: Vec::new(),
                    applied: BTreeMap::new(),
                });
                shards.len() - 1
            }
        };
        shards[index].rows.push((key, imp, clk));
    }
    let mut shards: BTreeMap<Shard, ShardWrite> = shards
        .into_iter()
        .map(|w| ((w.tenant.clone(), w.city.clone()), w))
        .collect();
    for ((tenant, city), partition, offset) in applied {
        let offsets = &mut ShardWrite::entry(&mut shards, &tenant, &city).applied;
        let entry = offsets.entry(partition).or_insert(offset);
        *entry = (*entry).max(offset);
    }
    shards.into_values().collect()
}

/// A [`CountKey`] hashed on every field (its own hash covers only the shard, for the exchange).
#[derive(PartialEq, Eq)]
struct WholeKey(CountKey);

impl Hash for WholeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let arm = &self.0.arm;
        (
            &arm.tenant,
            &arm.slot,
            &arm.city,
            &arm.banner,
            self.0.bucket,
        )
            .hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, slot: &str, city: &str, banner: &str, bucket: i64) -> CountKey {
        CountKey {
            arm: ArmKey::new(tenant, slot, city, banner),
            bucket,
        }
    }

    #[test]
    fn packed_keys_round_trip_and_tell_arms_apart() {
        let mut table = ArmTable::default();
        let keys = [
            key("t1", "hero", "pune", "b1", 7),
            key("t1", "hero", "pune", "b2", 7),
            key("t1", "hero", "pune", "b1", 8),
            key("t1", "side", "pune", "b1", 7),
            key("t2", "hero", "pune", "b1", 7),
            key("t1", "hero", "delhi", "b1", crate::store::ALL_TIME),
        ];
        let packed: Vec<PackedKey> = keys.iter().cloned().map(|k| table.pack(k)).collect();
        for (k, p) in keys.iter().zip(&packed) {
            assert_eq!(&table.unpack(*p), k);
        }
        // Equal keys pack equal, different keys differently, whatever the order seen.
        for (i, a) in packed.iter().enumerate() {
            for (j, b) in packed.iter().enumerate() {
                assert_eq!(a == b, keys[i] == keys[j], "{:?} {:?}", keys[i], keys[j]);
            }
        }
        assert_eq!(table.pack(keys[3].clone()), packed[3]);
        assert_eq!(table.arms.len(), 5);
    }

    #[test]
    fn a_packed_key_is_routed_like_its_shard() {
        let mut table = ArmTable::default();
        for (tenant, city) in [("t1", "pune"), ("t1", "delhi"), ("t2", "pune"), ("a", "b")] {
            let k = key(tenant, "hero", city, "b1", 3);
            let packed = table.pack(k.clone());
            // The exchange before interning and differential's own exchange of the packed key
            // must pick the same worker, or the ids would reach a worker that never saw them.
            assert_eq!(packed.hashed(), packed_route(&k));
            assert_eq!(packed.shard, shard_hash(tenant, city));
            assert_eq!(k.hashed(), packed.shard);
        }
    }
}
