//! City aliases in the stream job (docs/architecture.md, "City names"). An alias is in force,
//! its events counted into its city's shard, once the alias's own shard holds no counts: at
//! start, process 0 merges each alias's shard into its city's in one atomic store write, when
//! that merge is exact, before any worker loads its shards. A job whose store's aliases change,
//! or whose pending merge becomes exact, stops after its stored epochs and starts again.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{CityAliases, CountKey, Counts, Offset, Partition, ShardKey, TenantAliases};
use crate::store::{CountQuery, PosteriorStore, ShardState, ShardWrite, StoreError};

/// The shards of an alias and of its city, as stored.
struct Pair {
    alias: ShardState,
    city: ShardState,
}

/// The stored shards of `tenant`'s `alias` and `city`.
fn pair(
    store: &dyn PosteriorStore,
    tenant: &str,
    alias: &str,
    city: &str,
) -> Result<Pair, StoreError> {
    let mut alias_shard = ShardState::new(ShardKey::new(tenant, alias));
    let mut city_shard = ShardState::new(ShardKey::new(tenant, city));
    let owns = |t: &str, c: &str| t == tenant && (c == alias || c == city);
    for shard in store.shards(&owns)? {
        if shard.shard.city == alias {
            alias_shard = shard;
        } else {
            city_shard = shard;
        }
    }
    Ok(Pair {
        alias: alias_shard,
        city: city_shard,
    })
}

/// Whether `alias`'s own shard holds counts (its all-time rows: one slice), which wait to be
/// merged into its city's.
fn pending(store: &dyn PosteriorStore, tenant: &str, alias: &str) -> Result<bool, StoreError> {
    let query = CountQuery {
        tenant: Some(tenant.to_string()),
        city: Some(alias.to_string()),
        ..Default::default()
    };
    Ok(store.counts(&query)?.iter().any(|(_, c)| !c.is_zero()))
}

impl Pair {
    /// Whether one applied offset per partition can stand for both shards: every partition
    /// either shard applied is applied by every shard below the job's checkpoint, past both
    /// offsets. Then no event of either name lies uncounted below the larger offset, which is
    /// so after a clean stop but not after a crash that cut an epoch's shard writes apart.
    fn exact(&self, checkpoints: &BTreeMap<Partition, Offset>) -> bool {
        self.alias
            .applied
            .iter()
            .chain(&self.city.applied)
            .all(|(p, o)| checkpoints.get(p).is_some_and(|c| c.0 > o.0))
    }

    /// The merge: the alias's rows to (0, 0); the city's rows plus the alias's; per partition
    /// the larger applied offset.
    fn merge(self) -> [ShardWrite; 2] {
        let city_shard = self.city.shard.clone();
        let mut sums: BTreeMap<(String, String, i64), Counts> = BTreeMap::new();
        for (key, c) in self.city.rows.iter().chain(&self.alias.rows) {
            let k = (key.arm.slot.clone(), key.arm.banner.clone(), key.bucket);
            *sums.entry(k).or_default() += *c;
        }
        let mut applied = self.city.applied;
        for (p, o) in self.alias.applied {
            let a = applied.entry(p).or_insert(o);
            *a = (*a).max(o);
        }
        let into = ShardWrite {
            rows: sums
                .into_iter()
                .map(|((slot, banner, bucket), c)| {
                    let arm = crate::model::ArmKey::new(
                        &city_shard.tenant,
                        &slot,
                        &city_shard.city,
                        &banner,
                    );
                    (CountKey::new(Arc::new(arm), bucket), c)
                })
                .collect(),
            applied,
            ..ShardWrite::new(city_shard)
        };
        let from = ShardWrite {
            rows: self
                .alias
                .rows
                .into_iter()
                .map(|(k, _)| (k, Counts::default()))
                .collect(),
            ..ShardWrite::new(self.alias.shard)
        };
        [from, into]
    }
}

/// Process 0 at start: merges every declared alias's shard that holds counts into its city's
/// shard, where that is exact (else the alias waits, not in force, for a later start).
pub(super) fn merge_alias_shards(store: &dyn PosteriorStore, job: &str) -> Result<(), StoreError> {
    let checkpoints = store.checkpoints(job)?;
    let declared = store.all_city_aliases()?;
    store.finish_merges(&declared)?;
    for (tenant, alias, city) in declared.iter() {
        if !pending(store, tenant, alias)? {
            continue;
        }
        let pair = pair(store, tenant, alias, city)?;
        if pair.exact(&checkpoints) {
            tracing::info!("merging city {alias} of {tenant} into its alias target {city}");
            store.merge_shards(&pair.merge())?;
        } else {
            tracing::warn!(
                "city alias {alias} = {city} of {tenant} waits: its counts merge once the job's \
                 checkpoint has passed both shards' applied offsets"
            );
        }
    }
    Ok(())
}

/// The aliases the job applies: the declared ones whose alias shard holds no counts.
pub(super) fn aliases_in_force(store: &dyn PosteriorStore) -> Result<TenantAliases, StoreError> {
    let declared = store.all_city_aliases()?;
    let mut in_force: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for (tenant, alias, city) in declared.iter() {
        let entry = in_force.entry(tenant).or_default();
        if !pending(store, tenant, alias)? {
            entry.push((alias.to_string(), city.to_string()));
        }
    }
    let mut aliases = TenantAliases::default();
    for (tenant, pairs) in in_force {
        aliases.insert(tenant, pairs.into_iter().collect::<CityAliases>());
    }
    Ok(aliases)
}

/// Whether the job should start again: the store's aliases are not `declared` any more, or an
/// alias's pending merge has become exact.
pub(super) fn restart_due(
    store: &dyn PosteriorStore,
    job: &str,
    declared: &TenantAliases,
) -> Result<bool, StoreError> {
    let now = store.all_city_aliases()?;
    if now != *declared {
        return Ok(true);
    }
    let checkpoints = store.checkpoints(job)?;
    for (tenant, alias, city) in now.iter() {
        if pending(store, tenant, alias)? && pair(store, tenant, alias, city)?.exact(&checkpoints) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ArmKey;
    use crate::store::EmbeddedStore;

    fn write(city: &str, impressions: u64, applied: &[(i32, i64)]) -> ShardWrite {
        let arm = ArmKey::new("t1", "hero", city, "b1");
        ShardWrite {
            rows: vec![(
                CountKey::all_time(Arc::new(arm)),
                Counts::new(impressions, impressions / 10),
            )],
            applied: applied
                .iter()
                .map(|&(p, o)| (Partition(p), Offset(o)))
                .collect(),
            ..ShardWrite::new(ShardKey::new("t1", city))
        }
    }

    fn all_time(store: &dyn PosteriorStore, city: &str) -> Option<Counts> {
        let query = CountQuery {
            city: Some(city.into()),
            ..Default::default()
        };
        store.counts(&query).unwrap().first().map(|(_, c)| *c)
    }

    /// After a crash that cut an epoch's writes apart, `bangalore` applied partition 0 up to 100
    /// and `bengaluru` only to 50: one offset cannot stand for both until the checkpoint has
    /// passed 100, so the merge waits, with the alias not in force, and the job restarts to
    /// merge once it has.
    #[test]
    fn a_merge_waits_until_the_checkpoint_has_passed_both_shards_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"), true).unwrap();
        store
            .apply_epoch(&[
                write("bangalore", 40, &[(0, 100)]),
                write("bengaluru", 60, &[(0, 50), (1, 7)]),
            ])
            .unwrap();
        let mut aliases = CityAliases::default();
        aliases.declare("bangalore", "bengaluru").unwrap();
        store.put_city_aliases("t1", &aliases).unwrap();
        let declared = store.all_city_aliases().unwrap();
        let checkpoint = |p0: i64| {
            let offsets = BTreeMap::from([(Partition(0), Offset(p0)), (Partition(1), Offset(8))]);
            store.set_checkpoints("stream", &offsets).unwrap();
        };

        checkpoint(60);
        merge_alias_shards(&store, "stream").unwrap();
        assert_eq!(all_time(&store, "bangalore"), Some(Counts::new(40, 4)));
        assert_eq!(aliases_in_force(&store).unwrap(), TenantAliases::default());
        assert!(!restart_due(&store, "stream", &declared).unwrap());

        checkpoint(101);
        assert!(restart_due(&store, "stream", &declared).unwrap());
        merge_alias_shards(&store, "stream").unwrap();
        assert_eq!(all_time(&store, "bangalore"), None);
        assert_eq!(all_time(&store, "bengaluru"), Some(Counts::new(100, 10)));
        let merged = store.shards(&|_, c| c == "bengaluru").unwrap().remove(0);
        let applied = BTreeMap::from([(Partition(0), Offset(100)), (Partition(1), Offset(7))]);
        assert_eq!(merged.applied, applied);
        assert_eq!(aliases_in_force(&store).unwrap(), declared);
        assert!(!restart_due(&store, "stream", &declared).unwrap());
        // Run again (a crash after the merge), it changes nothing.
        merge_alias_shards(&store, "stream").unwrap();
        assert_eq!(all_time(&store, "bengaluru"), Some(Counts::new(100, 10)));
    }
}
