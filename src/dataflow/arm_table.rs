//! The arms and shards one worker owns, numbered in the order it meets them: both sinks key their
//! counts by these numbers (integers sort, merge and hash faster than four strings) and group
//! the rows they write by shard number.

use std::hash::Hash;

use rustc_hash::FxHashMap;

use crate::model::ShardKey;

/// Arms of type `A` (the stream's shared keys, the backfill's packed names) with their ids, and
/// the shards they fall in with theirs. Ids mean something only on the worker that made them.
pub(super) struct ArmTable<A> {
    ids: FxHashMap<A, u32>,
    /// Each arm with the id of its shard.
    arms: Vec<(A, u32)>,
    shard_ids: FxHashMap<ShardKey, u32>,
    shards: Vec<ShardKey>,
}

impl<A> Default for ArmTable<A> {
    fn default() -> Self {
        Self {
            ids: FxHashMap::default(),
            arms: Vec::new(),
            shard_ids: FxHashMap::default(),
            shards: Vec::new(),
        }
    }
}

impl<A: Clone + Eq + Hash> ArmTable<A> {
    /// The id of `arm`, numbered (with its shard, `shard_of` it) when it is new.
    pub(super) fn intern(&mut self, arm: A, shard_of: impl FnOnce(&A) -> ShardKey) -> u32 {
        if let Some(&id) = self.ids.get(&arm) {
            return id;
        }
        let next_shard = self.shards.len() as u32;
        let shard = *self
            .shard_ids
            .entry(shard_of(&arm))
            .or_insert_with_key(|shard| {
                self.shards.push(shard.clone());
                next_shard
            });
        let id = self.arms.len() as u32;
        self.arms.push((arm.clone(), shard));
        self.ids.insert(arm, id);
        id
    }

    pub(super) fn arm(&self, id: u32) -> &A {
        &self.arms[id as usize].0
    }

    /// The id of the shard of the arm `id`.
    pub(super) fn shard_of(&self, id: u32) -> u32 {
        self.arms[id as usize].1
    }

    pub(super) fn shard(&self, shard: u32) -> &ShardKey {
        &self.shards[shard as usize]
    }

    pub(super) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.arms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_and_shards_are_numbered_once_in_the_order_they_come() {
        let mut table: ArmTable<(&str, &str, &str)> = ArmTable::default();
        let shard = |arm: &(&str, &str, &str)| ShardKey::new(arm.0, arm.1);
        let pune_b1 = table.intern(("ajio", "pune", "b1"), shard);
        let delhi_b1 = table.intern(("ajio", "delhi", "b1"), shard);
        let pune_b2 = table.intern(("ajio", "pune", "b2"), shard);
        assert_eq!((pune_b1, delhi_b1, pune_b2), (0, 1, 2));
        assert_eq!(table.intern(("ajio", "pune", "b1"), shard), pune_b1);
        assert_eq!(table.len(), 3);
        assert_eq!(table.shard_count(), 2);
        assert_eq!(table.shard_of(pune_b1), table.shard_of(pune_b2));
        assert_ne!(table.shard_of(pune_b1), table.shard_of(delhi_b1));
        assert_eq!(
            table.shard(table.shard_of(delhi_b1)),
            &ShardKey::new("ajio", "delhi")
        );
        assert_eq!(table.arm(pune_b2), &("ajio", "pune", "b2"));
    }
}
