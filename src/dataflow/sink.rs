//! The dataflow both jobs end in (docs/architecture.md, "The dataflow"): records are exchanged
//! by (tenant, city) so that one worker owns each shard, counted per (arm, bucket) with a pair diff
//! (impressions, clicks), and each shard's changed rows are written, with its applied log offsets,
//! once the frontier passes their epoch.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::count::CountTotal;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use differential_dataflow::VecCollection;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Map as _;
use timely::dataflow::operators::{Capability, Exchange as _, Operator, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};

use super::arm_table;
use super::harness::Failure;
use super::priors::{AllTime, PriorSettings};
use crate::model::{owner_of, ArmKey, CountKey, Counts, Offset, Partition, ShardKey, ALL_TIME};
use crate::store::{PosteriorStore, ShardWrite};
use crate::time::{Buckets, Retention};

/// A [`CountKey`] with its arm interned by the worker that owns the arm's shard, so that
/// differential sorts, merges and seeks integers instead of four strings, and the sink groups
/// and looks up rows by integers. The ids mean something only on that worker, which counts and
/// writes the shard: the key never leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct PackedKey {
    arm: u32,
    bucket: i64,
}

/// The arms and shards one worker owns, by id.
type ArmTable = arm_table::ArmTable<Arc<ArmKey>>;

impl ArmTable {
    fn pack(&mut self, key: CountKey) -> PackedKey {
        let CountKey { arm, bucket } = key;
        let arm = self.intern(arm, |arm| ShardKey::of(arm));
        PackedKey { arm, bucket }
    }

    fn unpack(&self, key: PackedKey) -> CountKey {
        CountKey {
            arm: self.arm(key.arm).clone(),
            bucket: key.bucket,
        }
    }
}

/// Which worker counts and writes each (tenant, city) shard, and loads its stored rows when a
/// stream restarts: [`owner_of`] among the workers that write, which are every worker of the
/// cluster for a store several processes may write, else process 0's workers (timely numbers
/// them first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ShardPlacement {
    writers: usize,
}

impl ShardPlacement {
    /// `threads` workers in each of `processes` processes.
    pub(super) fn new(shared_store: bool, threads: usize, processes: usize) -> Self {
        let writers = if shared_store {
            threads * processes
        } else {
            threads
        };
        Self { writers }
    }

    /// The index of the worker that owns a shard.
    pub(super) fn owner(self, tenant: &str, city: &str) -> usize {
        owner_of(tenant, city, self.writers)
    }

    /// The key an exchange routes a slot's records by, to the writer that keeps its priors.
    pub(super) fn slot_exchange_key(self, tenant: &str, slot: &str) -> u64 {
        owner_of(tenant, slot, self.writers) as u64
    }

    /// Whether `worker` (its index among all the cluster's workers) owns a shard.
    pub(super) fn owns(self, worker: usize, tenant: &str, city: &str) -> bool {
        self.owner(tenant, city) == worker
    }

    /// The key the sink's exchanges route a shard's records by; timely sends key `h` to worker
    /// `h % peers`, which is [`ShardPlacement::owner`] as there are at least as many peers as
    /// writers.
    pub(super) fn exchange_key(self, tenant: &str, city: &str) -> u64 {
        self.owner(tenant, city) as u64
    }

    /// [`ShardPlacement::exchange_key`] of the shard whose [`crate::model::shard_hash`] is
    /// `shard_hash`, as [`owner_of`] reckons it.
    pub(super) fn exchange_key_of_hash(self, shard_hash: u64) -> u64 {
        shard_hash % self.writers.max(1) as u64
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
    /// Bucket rows past the retention horizon taken out of the job's memory.
    pub released: u64,
}

impl SinkStats {
    pub(super) fn add(&mut self, other: SinkStats) {
        self.epochs += other.epochs;
        self.shards += other.shards;
        self.rows += other.rows;
        self.seconds += other.seconds;
        self.released += other.released;
    }
}

/// Where the sink writes, which epochs it skips, and where it reports.
#[derive(Clone)]
pub(super) struct SinkSpec {
    /// `None` in a process that does not write (a store only process 0 may open).
    pub(super) store: Option<Arc<dyn PosteriorStore>>,
    pub(super) placement: ShardPlacement,
    /// Epochs before this one only load state that is already in the store; not written back.
    pub(super) first_written_epoch: u64,
    /// Whether each epoch must be on disk before the next (else the job syncs at its end).
    pub(super) durable_epochs: bool,
    /// How long bucket rows are kept, when the sink expires them as time moves.
    pub(super) retention: Option<SinkRetention>,
    /// How the job keeps the priors beside the counts (`None`: it does not).
    pub(super) priors: Option<PriorSettings>,
    pub(super) failure: Failure,
    pub(super) stats: Arc<Mutex<SinkStats>>,
}

impl SinkSpec {
    /// What the sink has written so far, summed over this process's workers.
    pub(super) fn stats(&self) -> SinkStats {
        *self.stats.lock().expect("sink stats lock")
    }

    /// Applies one batch of shard writes, on disk before returning or not (`durable`), counting
    /// it and its time in the sink's statistics; a failure is the job's.
    pub(super) fn write(&self, store: &dyn PosteriorStore, writes: &[ShardWrite], durable: bool) {
        let started = std::time::Instant::now();
        let applied = if durable {
            store.apply_epoch(writes)
        } else {
            store.apply_epoch_unsynced(writes)
        };
        if let Err(e) = applied {
            self.failure.set(e);
        }
        tracing::debug!(
            shards = writes.len(),
            rows = writes.iter().map(|w| w.rows.len()).sum::<usize>(),
            expiring = writes.iter().filter(|w| w.keep_from.is_some()).count(),
            seconds = started.elapsed().as_secs_f64(),
            "epoch written"
        );
        self.stats.lock().expect("sink stats lock").add(SinkStats {
            epochs: 1,
            shards: writes.len() as u64,
            rows: writes.iter().map(|w| w.rows.len() as u64).sum(),
            seconds: started.elapsed().as_secs_f64(),
            released: 0,
        });
    }
}

/// How long the stream's sink keeps bucket rows, and the bucket width to reckon it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SinkRetention {
    pub(super) retention: Retention,
    pub(super) buckets: Buckets,
}

/// Where one worker's sink stands with retention: the newest bucket it has counted, the
/// horizon each shard was last written with, and the totals of the bucket rows it holds.
#[derive(Default)]
struct Expiry {
    newest_bucket: Option<i64>,
    kept_from: FxHashMap<ShardKey, i64>,
    /// Shards seen since the horizon last moved whose earlier buckets are still in the store.
    due: BTreeSet<ShardKey>,
    /// Per bucket, the current total of each arm with a row in it, as the dataflow holds it.
    held: BTreeMap<i64, FxHashMap<u32, (i64, i64)>>,
}

impl Expiry {
    /// Notes one epoch's changes of the totals: the newest bucket, and each bucket key's total
    /// (a key whose new total is inserted after its old one is retracted; one only retracted
    /// fell to zero).
    fn saw(&mut self, updates: &[Update]) {
        for &((key, total), _, diff) in updates {
            if key.bucket == ALL_TIME {
                continue;
            }
            self.newest_bucket = self.newest_bucket.max(Some(key.bucket));
            let bucket = self.held.entry(key.bucket).or_default();
            if diff > 0 {
                bucket.insert(key.arm, total);
            } else if bucket.get(&key.arm) == Some(&total) {
                bucket.remove(&key.arm);
            }
        }
    }

    /// Takes at most `at_most` rows of buckets before `horizon` out of what is held, oldest
    /// bucket first, each with the diff that retracts its total: fed back into the dataflow,
    /// they drop the keys from its arrangement (the all-time rows keep the counts, and the
    /// store no longer has those buckets). When the horizon jumps (a job started on history a
    /// day old) a million-arm store releases millions of rows, and retracting them in one epoch
    /// held the clicks behind it for seconds; even one hour's bucket (up to 240k rows a worker)
    /// took half a second, so a bucket may go over several epochs.
    fn release(&mut self, horizon: i64, at_most: usize) -> Vec<(PackedKey, (i64, i64))> {
        let mut released = Vec::new();
        let retraction = |bucket: i64, (arm, (impressions, clicks)): (u32, (i64, i64))| {
            (PackedKey { arm, bucket }, (-impressions, -clicks))
        };
        while released.len() < at_most {
            let Some(mut entry) = self.held.first_entry().filter(|e| *e.key() < horizon) else {
                break;
            };
            let bucket = *entry.key();
            let room = at_most - released.len();
            let taken: Vec<(u32, (i64, i64))> = if entry.get().len() <= room {
                entry.remove().into_iter().collect()
            } else {
                let arms = entry.get_mut();
                let some: Vec<u32> = arms.keys().take(room).copied().collect();
                some.into_iter()
                    .map(|arm| (arm, arms.remove(&arm).expect("listed")))
                    .collect()
            };
            released.extend(
                taken
                    .into_iter()
                    .filter(|&(_, total)| total != (0, 0))
                    .map(|row| retraction(bucket, row)),
            );
        }
        released
    }

    /// The first bucket kept: the retention before the newest bucket counted, but never after
    /// the wall clock's bucket, so that an event from the far future cannot expire the present.
    fn horizon(&self, retention: SinkRetention, now: DateTime<Utc>) -> Option<i64> {
        let SinkRetention { retention, buckets } = retention;
        let newest = self.newest_bucket?.min(buckets.index(now));
        Some(retention.horizon(buckets, newest))
    }

    /// Drops the rows of buckets before `horizon` from `writes` (their counts stay in the
    /// all-time rows) and asks the store to delete a shard's earlier buckets once per horizon,
    /// at most [`EXPIRE_SHARDS`] shards an epoch: when the horizon moves, every shard has
    /// buckets to delete, and deleting them all in one epoch held the clicks behind it for a
    /// second at a million arms. A shard waits its turn in `due`; a write whose only change
    /// was released rows is dropped. `writes` are in shard order, as [`shard_writes`] makes them.
    fn apply(&mut self, writes: &mut Vec<ShardWrite>, horizon: i64) {
        let behind = |kept: &FxHashMap<ShardKey, i64>, shard: &ShardKey| {
            kept.get(shard).is_none_or(|&k| k < horizon)
        };
        for write in writes.iter_mut() {
            write
                .rows
                .retain(|(key, _)| key.bucket == ALL_TIME || key.bucket >= horizon);
            if behind(&self.kept_from, &write.shard) {
                self.due.insert(write.shard.clone());
            }
        }
        writes.retain(|w| !w.rows.is_empty() || !w.applied.is_empty());
        let mut expiring = 0;
        while expiring < EXPIRE_SHARDS {
            let Some(shard) = self.due.pop_first() else {
                break;
            };
            if !behind(&self.kept_from, &shard) {
                continue;
            }
            expiring += 1;
            self.kept_from.insert(shard.clone(), horizon);
            match writes.binary_search_by(|w| w.shard.cmp(&shard)) {
                Ok(at) => writes[at].keep_from = Some(horizon),
                Err(at) => writes.insert(
                    at,
                    ShardWrite {
                        keep_from: Some(horizon),
                        ..ShardWrite::new(shard)
                    },
                ),
            }
        }
    }
}

/// Shards whose expired buckets one worker deletes per epoch at most (see [`Expiry::apply`]).
const EXPIRE_SHARDS: usize = 256;

/// A shard's applied offset in one partition after an epoch.
pub(super) type AppliedOffset = (ShardKey, Partition, Offset);

/// One change of the totals: ((key, (impressions, clicks)), epoch, diff).
type Update = ((PackedKey, (i64, i64)), u64, isize);

/// Expired bucket rows one worker retracts per epoch at most (see [`Expiry::release`]).
const RELEASE_ROWS: usize = 1 << 14;

/// Bucket rows past the retention horizon, with the diffs that retract them, for the driver to
/// feed back into the sink's input (this worker's): the dataflow then forgets them.
pub(super) type Released = Rc<RefCell<Vec<(CountKey, (i64, i64))>>>;

/// Counts `records` per key (a pair diff of impressions and clicks) and writes each completed
/// epoch's changed shards, with their applied offsets, in one batch per shard. The returned probe
/// passes an epoch only once it is in the store. With retention, the rows of expired buckets
/// gather in the returned [`Released`]. The returned stream carries each completed epoch's new
/// all-time counts of the arms it changed (epochs not written too), for the priors.
pub(super) fn count_and_sink<'s>(
    records: VecCollection<'s, u64, CountKey, (i64, i64)>,
    applied: StreamVec<'s, u64, AppliedOffset>,
    spec: SinkSpec,
) -> (ProbeHandle<u64>, Released, StreamVec<'s, u64, AllTime>) {
    let released: Released = Rc::default();
    let releasing = released.clone();
    let placement = spec.placement;
    // Records reach the owner with their names, which it interns; from there on the keys are
    // integers and stay on that worker (arranged, counted and written without an exchange).
    let arms: Rc<RefCell<ArmTable>> = Rc::default();
    let packing = arms.clone();
    let packed = records
        .inner
        .exchange(move |(key, _, _): &(CountKey, u64, (i64, i64))| {
            placement.exchange_key(&key.arm.tenant, &key.arm.city)
        })
        .map(move |(key, time, diff)| ((packing.borrow_mut().pack(key), ()), time, diff));
    let totals = arrange_core::<_, _, KeyBatcher<PackedKey, u64, (i64, i64)>, KeySpine<_, _, _>>(
        packed,
        Pipeline,
        "Counts",
        KeyBatcher::new,
    )
    .count_total();
    let stream = totals
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<AllTime>>, _, _, _, _>(
            applied,
            Pipeline,
            Exchange::new(move |a: &AppliedOffset| placement.exchange_key(&a.0.tenant, &a.0.city)),
            "Sink",
            move |_cap, _info| {
                type Pending = (Capability<u64>, Vec<Update>, Vec<AppliedOffset>);
                let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
                let mut expiry = Expiry::default();
                move |(counts, counts_frontier), (offsets, offsets_frontier), output| {
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
                        let (cap, updates, applied) = pending.remove(&t).expect("listed");
                        expiry.saw(&updates);
                        if spec.priors.is_some() {
                            output
                                .session(&cap)
                                .give_iterator(all_time_changes(&updates, &arms.borrow()));
                        }
                        let Some(store) = spec
                            .store
                            .as_ref()
                            .filter(|_| t >= spec.first_written_epoch)
                        else {
                            continue;
                        };
                        if spec.failure.is_set() {
                            continue;
                        }
                        let mut writes = shard_writes(updates, applied, &arms.borrow());
                        if let Some(horizon) =
                            spec.retention.and_then(|r| expiry.horizon(r, Utc::now()))
                        {
                            expiry.apply(&mut writes, horizon);
                            let expired = expiry.release(horizon, RELEASE_ROWS);
                            if !expired.is_empty() {
                                tracing::debug!(
                                    epoch = t,
                                    rows = expired.len(),
                                    "expired rows released"
                                );
                                let arms = arms.borrow();
                                spec.stats.lock().expect("sink stats lock").released +=
                                    expired.len() as u64;
                                releasing.borrow_mut().extend(
                                    expired
                                        .into_iter()
                                        .map(|(key, diff)| (arms.unpack(key), diff)),
                                );
                            }
                        }
                        spec.write(store.as_ref(), &writes, spec.durable_epochs);
                    }
                }
            },
        );
    let (probe, all_time) = stream.probe();
    (probe, released, all_time)
}

/// The new all-time counts of the arms whose all-time row changed in `updates` (zero for a row
/// that fell to nothing).
fn all_time_changes<'a>(
    updates: &'a [Update],
    arms: &'a ArmTable,
) -> impl Iterator<Item = AllTime> + 'a {
    let mut changed: BTreeMap<u32, Counts> = BTreeMap::new();
    for &((key, (imp, clk)), _, diff) in updates {
        if key.bucket != ALL_TIME {
            continue;
        }
        let entry = changed.entry(key.arm).or_insert(Counts::ZERO);
        if diff > 0 {
            *entry = Counts::new(imp.max(0) as u64, clk.max(0) as u64);
        }
    }
    changed
        .into_iter()
        .map(|(arm, counts)| (arms.arm(arm).clone(), counts))
}

/// The new absolute value of every key changed in one epoch and the highest applied offset per
/// partition, grouped by shard, each shard's rows in (arm, bucket) order.
fn shard_writes(
    mut updates: Vec<Update>,
    applied: Vec<AppliedOffset>,
    arms: &ArmTable,
) -> Vec<ShardWrite> {
    // A changed key has its new value inserted and its old one retracted; a key that is only
    // retracted fell to zero. Sorted by key then diff, a key's insertion comes last. The updates
    // arrive as runs already in key order, which a stable sort merges cheaply.
    updates.sort_by_key(|&((key, _), _, diff)| (key, diff));
    // Per shard id, its rows in (arm, bucket) order, so each arm's rows are together.
    let mut rows: Vec<Vec<(CountKey, Counts)>> = vec![Vec::new(); arms.shard_count()];
    for run in updates.chunk_by(|a, b| a.0 .0 == b.0 .0) {
        let &((key, (imp, clk)), _, diff) = run.last().expect("a run has an update");
        let counts = if diff > 0 {
            Counts::new(imp.max(0) as u64, clk.max(0) as u64)
        } else {
            Counts::ZERO
        };
        rows[arms.shard_of(key.arm) as usize].push((arms.unpack(key), counts));
    }
    let mut shards: BTreeMap<ShardKey, ShardWrite> = BTreeMap::new();
    for (shard, rows) in rows.into_iter().enumerate() {
        if !rows.is_empty() {
            ShardWrite::entry(&mut shards, arms.shard(shard as u32)).rows = rows;
        }
    }
    for (shard, partition, offset) in applied {
        let offsets = &mut ShardWrite::entry(&mut shards, &shard).applied;
        let entry = offsets.entry(partition).or_insert(offset);
        *entry = (*entry).max(offset);
    }
    shards.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, slot: &str, city: &str, banner: &str, bucket: i64) -> CountKey {
        CountKey {
            arm: Arc::new(ArmKey::new(tenant, slot, city, banner)),
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
            key("t1", "hero", "delhi", "b1", crate::model::ALL_TIME),
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
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn arms_of_one_tenant_and_city_share_a_shard() {
        let mut table = ArmTable::default();
        let a = table.pack(key("t1", "hero", "pune", "b1", 3));
        let b = table.pack(key("t1", "side", "pune", "b2", 4));
        let c = table.pack(key("t1", "hero", "delhi", "b1", 3));
        let d = table.pack(key("t2", "hero", "pune", "b1", 3));
        assert_eq!(table.shard_of(a.arm), table.shard_of(b.arm));
        assert_ne!(table.shard_of(a.arm), table.shard_of(c.arm));
        assert_ne!(table.shard_of(a.arm), table.shard_of(d.arm));
        assert_ne!(table.shard_of(c.arm), table.shard_of(d.arm));
    }

    #[test]
    fn shard_writes_keep_each_keys_new_value_grouped_by_shard() {
        let mut table = ArmTable::default();
        let changed = key("t1", "hero", "pune", "b1", 7);
        let emptied = key("t1", "hero", "pune", "b2", 7);
        let added = key("t1", "hero", "delhi", "b1", 7);
        let [changed_p, emptied_p, added_p] =
            [&changed, &emptied, &added].map(|k| table.pack(k.clone()));
        let updates = vec![
            ((changed_p, (10, 1)), 3, 1),
            ((emptied_p, (4, 0)), 3, -1),
            ((changed_p, (8, 1)), 3, -1),
            ((added_p, (2, 2)), 3, 1),
        ];
        let pune = ShardKey::new("t1", "pune");
        let applied = vec![
            (pune.clone(), Partition(0), Offset(5)),
            (pune.clone(), Partition(0), Offset(9)),
            (pune.clone(), Partition(1), Offset(2)),
        ];
        let writes = shard_writes(updates, applied, &table);
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].shard, ShardKey::new("t1", "delhi"));
        assert_eq!(writes[0].rows, vec![(added, Counts::new(2, 2))]);
        assert!(writes[0].applied.is_empty());
        assert_eq!(writes[1].shard, pune);
        assert_eq!(
            writes[1].rows,
            vec![(changed, Counts::new(10, 1)), (emptied, Counts::ZERO)]
        );
        assert_eq!(
            writes[1].applied,
            BTreeMap::from([(Partition(0), Offset(9)), (Partition(1), Offset(2))])
        );
    }

    #[test]
    fn expiry_follows_the_newest_bucket_but_not_past_the_clock_and_deletes_once_per_horizon() {
        let hourly = Buckets::hourly();
        let retention = SinkRetention {
            retention: Retention::of_hours(2).unwrap(),
            buckets: hourly,
        };
        let mut table = ArmTable::default();
        let old = table.pack(key("t1", "hero", "pune", "b1", 100));
        let new = table.pack(key("t1", "hero", "pune", "b1", 110));
        let total = table.pack(key("t1", "hero", "pune", "b1", ALL_TIME));
        let mut expiry = Expiry::default();
        let now = hourly.start(200);
        assert_eq!(expiry.horizon(retention, now), None);
        expiry.saw(&[((old, (1, 0)), 1, 1), ((total, (1, 0)), 1, 1)]);
        assert_eq!(expiry.horizon(retention, now), Some(98));
        expiry.saw(&[((new, (1, 0)), 2, 1)]);
        assert_eq!(expiry.horizon(retention, now), Some(108));
        // A bucket from the far future moves the horizon no further than the clock's bucket.
        let future = table.pack(key("t1", "hero", "pune", "b1", 10_000));
        expiry.saw(&[((future, (1, 0)), 3, 1)]);
        assert_eq!(expiry.horizon(retention, now), Some(198));

        let pune = ShardKey::new("t1", "pune");
        let write = |rows: Vec<(CountKey, Counts)>| ShardWrite {
            rows,
            ..ShardWrite::new(pune.clone())
        };
        let mut expiry = Expiry::default();
        let mut writes = vec![write(vec![
            (key("t1", "hero", "pune", "b1", 100), Counts::new(1, 0)),
            (key("t1", "hero", "pune", "b1", 110), Counts::new(2, 0)),
            (key("t1", "hero", "pune", "b1", ALL_TIME), Counts::new(3, 0)),
        ])];
        expiry.apply(&mut writes, 108);
        assert_eq!(writes[0].keep_from, Some(108));
        assert_eq!(
            writes[0].rows,
            vec![
                (key("t1", "hero", "pune", "b1", 110), Counts::new(2, 0)),
                (key("t1", "hero", "pune", "b1", ALL_TIME), Counts::new(3, 0)),
            ]
        );
        // Already expired up to this horizon, and with no rows: nothing to write.
        let mut again = vec![write(vec![])];
        expiry.apply(&mut again, 108);
        assert!(again.is_empty());
        let mut again = vec![write(vec![])];
        expiry.apply(&mut again, 109);
        assert_eq!(again[0].keep_from, Some(109));
    }

    #[test]
    fn a_moved_horizon_expires_at_most_a_bounded_number_of_shards_an_epoch_and_each_once() {
        let shard = |i: usize| ShardKey::new("t1", &format!("city{i:04}"));
        let released = |i: usize| ShardWrite {
            rows: vec![(
                key("t1", "hero", &format!("city{i:04}"), "b1", 100),
                Counts::ZERO,
            )],
            ..ShardWrite::new(shard(i))
        };
        let shards = EXPIRE_SHARDS * 2 + 10;
        let mut expiry = Expiry::default();
        // One epoch releases a row of every shard; a live row of the last shard comes too.
        let mut writes: Vec<ShardWrite> = (0..shards).map(released).collect();
        writes[shards - 1].rows.push((
            key("t1", "hero", &format!("city{:04}", shards - 1), "b1", 120),
            Counts::new(1, 0),
        ));
        let mut expired = Vec::new();
        let mut epochs = 0;
        while epochs == 0 || !expiry.due.is_empty() {
            expiry.apply(&mut writes, 110);
            assert!(writes.len() <= EXPIRE_SHARDS + 1, "{} writes", writes.len());
            assert!(
                writes.windows(2).all(|w| w[0].shard < w[1].shard),
                "in shard order"
            );
            for w in &writes {
                assert!(
                    w.rows.iter().all(|(k, _)| k.bucket >= 110),
                    "no expired row written"
                );
                if w.keep_from.is_some() {
                    assert_eq!(w.keep_from, Some(110));
                    expired.push(w.shard.clone());
                } else {
                    assert!(!w.rows.is_empty(), "a write carries rows or an expiry");
                }
            }
            writes.clear();
            epochs += 1;
        }
        expired.sort();
        let every: Vec<ShardKey> = (0..shards).map(shard).collect();
        assert_eq!(expired, every, "every shard expired exactly once");
        assert_eq!(epochs, shards.div_ceil(EXPIRE_SHARDS));
        // The next horizon expires again the shards seen from then on.
        let mut writes = vec![released(7)];
        expiry.apply(&mut writes, 111);
        assert_eq!(writes.len(), 1);
        assert_eq!(
            (&writes[0].shard, writes[0].keep_from),
            (&shard(7), Some(111))
        );
    }

    #[test]
    fn expired_bucket_rows_are_released_with_the_diffs_that_retract_their_totals() {
        let mut table = ArmTable::default();
        let b1_100 = table.pack(key("t1", "hero", "pune", "b1", 100));
        let b2_100 = table.pack(key("t1", "hero", "pune", "b2", 100));
        let b1_101 = table.pack(key("t1", "hero", "pune", "b1", 101));
        let b1_all = table.pack(key("t1", "hero", "pune", "b1", ALL_TIME));
        let mut expiry = Expiry::default();
        expiry.saw(&[
            ((b1_100, (2, 1)), 1, 1),
            ((b2_100, (1, 0)), 1, 1),
            ((b1_101, (1, 0)), 1, 1),
            ((b1_all, (3, 1)), 1, 1),
        ]);
        // A changed total replaces the old one whichever comes first; a key retracted alone
        // fell to zero and is no longer held.
        expiry.saw(&[((b1_100, (3, 1)), 2, 1), ((b1_100, (2, 1)), 2, -1)]);
        expiry.saw(&[((b2_100, (1, 0)), 3, -1)]);
        assert_eq!(expiry.release(100, usize::MAX), vec![]);
        assert_eq!(expiry.release(101, usize::MAX), vec![(b1_100, (-3, -1))]);
        // A late event for a released bucket is held again, and released at the next look.
        expiry.saw(&[((b2_100, (1, 0)), 4, 1)]);
        let mut released = expiry.release(102, usize::MAX);
        released.sort();
        assert_eq!(released, vec![(b1_101, (-1, 0)), (b2_100, (-1, 0))]);
        assert!(expiry.held.is_empty(), "the all-time rows are never held");
    }

    #[test]
    fn a_release_takes_the_oldest_rows_first_up_to_its_bound_and_the_rest_later() {
        let mut table = ArmTable::default();
        let mut expiry = Expiry::default();
        let keys: Vec<PackedKey> = [100, 100, 101, 101, 102, 103]
            .into_iter()
            .zip(["b1", "b2", "b1", "b2", "b1", "b1"])
            .map(|(bucket, banner)| table.pack(key("t1", "hero", "pune", banner, bucket)))
            .collect();
        let updates: Vec<Update> = keys.iter().map(|&k| ((k, (1, 0)), 1, 1)).collect();
        expiry.saw(&updates);
        let buckets = |released: &[(PackedKey, (i64, i64))]| {
            let mut b: Vec<i64> = released.iter().map(|(k, _)| k.bucket).collect();
            b.sort();
            b
        };
        // Oldest first, at most the bound, a bucket over several looks when it is larger.
        assert_eq!(buckets(&expiry.release(103, 1)), [100]);
        assert_eq!(buckets(&expiry.release(103, 2)), [100, 101]);
        assert_eq!(buckets(&expiry.release(103, 3)), [101, 102]);
        // Nothing at or after the horizon goes, however high the bound.
        assert_eq!(buckets(&expiry.release(103, usize::MAX)), Vec::<i64>::new());
        assert_eq!(expiry.held.keys().copied().collect::<Vec<_>>(), [103]);
    }

    #[test]
    fn the_worker_that_loads_a_shard_is_the_one_the_sink_sends_it_to() {
        for processes in 1..=3 {
            for threads in 1..=8 {
                let peers = threads * processes;
                for shared_store in [true, false] {
                    let placement = ShardPlacement::new(shared_store, threads, processes);
                    for shard in 0..400 {
                        let (tenant, city) = (format!("t{}", shard % 7), format!("c{shard}"));
                        let routed =
                            (placement.exchange_key(&tenant, &city) % peers as u64) as usize;
                        assert_eq!(
                            placement
                                .exchange_key_of_hash(crate::model::shard_hash(&tenant, &city)),
                            placement.exchange_key(&tenant, &city)
                        );
                        let loaders: Vec<usize> = (0..peers)
                            .filter(|&w| placement.owns(w, &tenant, &city))
                            .collect();
                        assert_eq!(
                            loaders,
                            vec![routed],
                            "{tenant}/{city} on {threads}x{processes}"
                        );
                        if shared_store {
                            assert_eq!(routed, owner_of(&tenant, &city, peers));
                        } else {
                            // Only process 0 writes, and timely numbers its workers first.
                            assert_eq!(routed, owner_of(&tenant, &city, threads));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn timelys_exchange_delivers_each_shard_to_its_owner() {
        let workers = 3;
        let placement = ShardPlacement::new(true, workers, 1);
        let shards: Vec<ShardKey> = (0..60)
            .map(|i| ShardKey::new(&format!("t{}", i % 4), &format!("c{i}")))
            .collect();
        let arrived: Arc<Mutex<Vec<(usize, ShardKey)>>> = Arc::default();
        let seen = arrived.clone();
        timely::execute(
            crate::dataflow::Cluster::single(workers).timely_config(),
            move |worker| {
                use timely::dataflow::operators::{Inspect, ToStream};
                let index = worker.index();
                let shards = if index == 0 {
                    shards.clone()
                } else {
                    Vec::new()
                };
                let seen = seen.clone();
                worker.dataflow::<u64, _, _>(|scope| {
                    let shards: StreamVec<'_, u64, ShardKey> = shards.to_stream(scope);
                    shards
                        .exchange(move |s: &ShardKey| placement.exchange_key(&s.tenant, &s.city))
                        .inspect(move |s: &ShardKey| seen.lock().unwrap().push((index, s.clone())));
                });
            },
        )
        .unwrap()
        .join();
        let arrived = arrived.lock().unwrap();
        assert_eq!(arrived.len(), 60);
        for (worker, shard) in arrived.iter() {
            assert!(
                placement.owns(*worker, &shard.tenant, &shard.city),
                "{shard}"
            );
        }
        let used: std::collections::BTreeSet<usize> = arrived.iter().map(|a| a.0).collect();
        assert_eq!(used.len(), workers, "shards spread over every worker");
    }
}
