//! The keys the job, the stores and the service share: a shard, an arm in one bucket, and a
//! position in an event log. They live here, at the bottom of the stack, so that the source, the
//! store and the dataflow all take them from one place (docs/architecture.md, "Layers").

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ArmKey;

/// The bucket of all-time totals.
pub const ALL_TIME: i64 = -1;
/// The city of a slot's all-city posterior (the fallback for an unknown city).
pub const ALL_CITIES: &str = "*";

/// One (tenant, city) shard: the unit of partitioning, of ownership by one worker, and of
/// atomic writes to the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardKey {
    pub tenant: String,
    pub city: String,
}

impl ShardKey {
    pub fn new(tenant: &str, city: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            city: city.to_string(),
        }
    }

    pub fn of(arm: &ArmKey) -> Self {
        Self::new(&arm.tenant, &arm.city)
    }
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.city)
    }
}

/// 128-bit digests of pairs of names (a request_id and a banner; a tenant and a slot), computed
/// in one reused buffer: the jobs key millions of events by them without allocating, and a
/// collision among even 10^12 pairs is about 10^-15 likely.
#[derive(Debug, Default)]
pub struct PairDigest(Vec<u8>);

impl PairDigest {
    pub fn of(&mut self, first: &str, second: &str) -> u128 {
        self.0.clear();
        self.0.extend_from_slice(first.as_bytes());
        self.0.push(0);
        self.0.extend_from_slice(second.as_bytes());
        twox_hash::XxHash3_128::oneshot(&self.0)
    }
}

/// The hash that places a (tenant, city) shard on a worker: differential's exchange hash, the same
/// in every process of one build, so the processes of a cluster agree on each shard's owner.
pub fn shard_hash(tenant: &str, city: &str) -> u64 {
    differential_dataflow::Hashable::hashed(&(tenant, city))
}

/// The worker (of `workers`) that owns a shard, the one timely's exchange by [`shard_hash`] sends
/// it to: it counts the shard, loads its stored rows on restart, and writes it.
pub fn owner_of(tenant: &str, city: &str, workers: usize) -> usize {
    (shard_hash(tenant, city) % workers.max(1) as u64) as usize
}

/// An arm in one bucket (an IST bucket's epoch number, or [`ALL_TIME`]): the key of the counts.
/// The arm is shared, so that the many buckets of one arm, and the copies a key goes through on
/// its way to the store, do not copy four names each.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CountKey {
    pub arm: Arc<ArmKey>,
    pub bucket: i64,
}

impl CountKey {
    pub fn new(arm: Arc<ArmKey>, bucket: i64) -> Self {
        Self { arm, bucket }
    }

    pub fn all_time(arm: Arc<ArmKey>) -> Self {
        Self::new(arm, ALL_TIME)
    }

    pub fn is_all_time(&self) -> bool {
        self.bucket == ALL_TIME
    }
}

/// A partition of an event log (a Kafka partition, or one of the file log's).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Partition(pub i32);

/// A record's position in one partition of an event log: 0, 1, 2, …
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub i64);

impl Offset {
    /// The offset of the record after this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

/// `n` records further on.
impl std::ops::Add<i64> for Offset {
    type Output = Offset;
    fn add(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

impl std::ops::AddAssign<i64> for Offset {
    fn add_assign(&mut self, n: i64) {
        self.0 += n;
    }
}

/// How many records lie between two offsets.
impl std::ops::Sub for Offset {
    type Output = i64;
    fn sub(self, o: Offset) -> i64 {
        self.0 - o.0
    }
}

impl Partition {
    /// The partition as an index (partitions are numbered from 0).
    pub fn index(self) -> usize {
        usize::try_from(self.0).expect("partitions are numbered from 0")
    }
}

impl std::str::FromStr for Offset {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Offset)
    }
}

impl std::str::FromStr for Partition {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Partition)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_count_places_a_shard_on_one_worker_in_range() {
        for workers in 1..9 {
            for (t, c) in [("ajio", "pune"), ("ajio", "delhi"), ("myntra", "pune")] {
                let w = owner_of(t, c, workers);
                assert!(w < workers);
                assert_eq!(w, owner_of(t, c, workers), "stable");
            }
        }
        assert_eq!(
            owner_of("ajio", "pune", 0),
            0,
            "no workers is treated as one"
        );
    }

    #[test]
    fn the_shard_hash_separates_the_names() {
        // ("ab", "c") and ("a", "bc") are different shards.
        assert_ne!(shard_hash("ab", "c"), shard_hash("a", "bc"));
    }
}
