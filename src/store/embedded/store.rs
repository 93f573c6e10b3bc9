//! [`EmbeddedStore`]: the [`PosteriorStore`] over one redb file. Each epoch is one write
//! transaction, so a crash leaves the file at the end of the last whole epoch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::layout::{
    block_rows_from, bump_version, corrupt, customer_event, decode_arm, decode_totals, each_arm,
    expire_buckets, insert_customer_event, names_range, shard_of_slot_key, write_encoded_counts,
    EncodedCounts, API_KEYS, APPLIED, BLOCK_BUCKETS, CHECKPOINTS, CITY_ALIASES, CUSTOMER_EVENTS,
    META, META_CHANGE_MARKER, PRIORS, PRIOR_CITIES, SLOTS, SLOT_BLOCKS, SLOT_TOTALS, VERSIONS,
};
use super::migrate::move_earlier_layouts;
use crate::bandit::SlotPriors;
use crate::model::{
    ArmKey, CityAliases, CountKey, Counts, Event, Offset, Partition, ShardKey, SlotConfig,
};
use crate::store::prior_rows::{
    city_rows, prior_rows, read_city_row, read_prior_row, CityRow, PriorRow,
};
use crate::store::{
    next_version, ApiKey, AppliedOffsets, CountQuery, Part, PosteriorStore, ShardState, ShardWrite,
    SlotPriorsWrite, StoreError, StoreUse, Versions,
};

pub struct EmbeddedStore {
    path: PathBuf,
    pub(super) db: Database,
}

/// redb's page cache for a store opened for [`StoreUse::Batch`]. redb's default (1 GiB) let a
/// backfill's resident memory grow with the file it wrote (at a million arms, 1.05 GB peak instead
/// of 0.85 GB, no faster): the jobs write far more than they read back, and the kernel caches the
/// file anyway.
const BATCH_CACHE_BYTES: usize = 64 << 20;
/// redb's page cache for [`StoreUse::Lookup`]: the service keeps its own snapshot and reads each
/// changed shard once, so a cache only held pages it would not read again (64 MiB of them made
/// up a third of its memory at 400k arms; refreshes were no slower without them).
const LOOKUP_CACHE_BYTES: usize = 4 << 20;

impl EmbeddedStore {
    /// Opens the file, created (with its folder) when opened for writing; a store written by an
    /// earlier build is moved to the current layout.
    pub fn open(path: &Path, writable: bool) -> Result<Self, StoreError> {
        Self::open_for(path, writable, StoreUse::Batch)
    }

    /// [`EmbeddedStore::open`], with a page cache sized for `store_use`.
    pub fn open_for(path: &Path, writable: bool, store_use: StoreUse) -> Result<Self, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Embedded {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        if !writable && !path.exists() {
            return Err(err(&"does not exist (run a backfill first)"));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = Database::builder()
            .set_cache_size(match store_use {
                StoreUse::Batch => BATCH_CACHE_BYTES,
                StoreUse::Lookup => LOOKUP_CACHE_BYTES,
            })
            .create(path)
            .map_err(|e| err(&e))?;
        let store = Self {
            path: path.to_path_buf(),
            db,
        };
        store.write(|tx| {
            tx.open_table(SLOT_TOTALS)?;
            tx.open_table(SLOT_BLOCKS)?;
            tx.open_table(PRIORS)?;
            tx.open_table(PRIOR_CITIES)?;
            tx.open_table(META)?;
            tx.open_table(APPLIED)?;
            tx.open_table(CHECKPOINTS)?;
            tx.open_table(SLOTS)?;
            tx.open_table(API_KEYS)?;
            tx.open_table(CUSTOMER_EVENTS)?;
            tx.open_table(VERSIONS)?;
            tx.open_table(CITY_ALIASES)?;
            move_earlier_layouts(tx)
        })?;
        Ok(store)
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Embedded {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        self.write_with(Durability::Immediate, f)
    }

    fn write_with(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        tx.set_durability(durability).map_err(|e| self.fail(e))?;
        f(&tx).map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))
    }

    fn write_epoch(&self, durability: Durability, shards: &[ShardWrite]) -> Result<(), StoreError> {
        let counts = EncodedCounts::of(shards.iter().flat_map(|s| &s.rows).map(|(k, c)| (k, *c)));
        self.write_with(durability, |tx| {
            write_encoded_counts(tx, counts)?;
            for shard in shards {
                if let Some(keep_from) = shard.keep_from {
                    expire_buckets(tx, &shard.shard, keep_from)?;
                }
                if shard.moves_version() {
                    bump_version(tx, &shard.shard.tenant, Part::Shard, &shard.shard.city)?;
                }
            }
            let mut applied = tx.open_table(APPLIED)?;
            for shard in shards {
                for (&partition, &offset) in &shard.applied {
                    applied.insert(
                        (
                            shard.shard.tenant.as_str(),
                            shard.shard.city.as_str(),
                            partition.0,
                        ),
                        offset.0,
                    )?;
                }
            }
            Ok(())
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        f(&tx).map_err(|e| self.fail(e))
    }
}

impl PosteriorStore for EmbeddedStore {
    fn apply_epoch(&self, shards: &[ShardWrite]) -> Result<(), StoreError> {
        self.write_epoch(Durability::Immediate, shards)
    }

    /// A commit without waiting for the disk (an fsync per epoch held up the worker that
    /// writes); redb persists it with the next durable commit, [`PosteriorStore::sync`].
    fn apply_epoch_unsynced(&self, shards: &[ShardWrite]) -> Result<(), StoreError> {
        self.write_epoch(Durability::None, shards)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.write(|_| Ok(()))
    }

    fn merge_shards(&self, writes: &[ShardWrite; 2]) -> Result<(), StoreError> {
        // One transaction, as every epoch.
        self.write_epoch(Durability::Immediate, writes)
    }

    fn clear_counts(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.delete_table(SLOT_TOTALS)?;
            tx.open_table(SLOT_TOTALS)?;
            tx.delete_table(SLOT_BLOCKS)?;
            tx.open_table(SLOT_BLOCKS)?;
            tx.delete_table(APPLIED)?;
            tx.open_table(APPLIED)?;
            // A shard whose version is gone reads as changed: readers drop what they had.
            let mut versions = tx.open_table(VERSIONS)?;
            versions.retain(|(_, part, _), _| part != Part::Shard.as_str())?;
            tx.open_table(META)?
                .insert(META_CHANGE_MARKER, next_version().to_string().as_str())?;
            Ok(())
        })
    }

    fn counts(&self, q: &CountQuery) -> Result<Vec<(ArmKey, Counts)>, StoreError> {
        self.read(|tx| {
            // Summed by encoded arm: decoding and comparing four names per row cost most of a
            // read at a million arms. Each arm is decoded once, as it is kept.
            let mut sums: Vec<(ArmKey, Counts)> = Vec::new();
            let mut keep = |key: &[u8], counts: Counts| {
                let arm = decode_arm(key).ok_or_else(|| corrupt("arm key", key))?;
                if q.matches(&arm) {
                    sums.push((arm, counts));
                }
                Ok::<(), redb::Error>(())
            };
            let names: Vec<&str> = match (&q.tenant, &q.city) {
                (Some(tenant), Some(city)) => vec![tenant, city],
                (Some(tenant), None) => vec![tenant],
                (None, _) => vec![],
            };
            match q.from_bucket {
                // One row per slot of a shard, in key order.
                None => {
                    let t = tx.open_table(SLOT_TOTALS)?;
                    let (start, end) = match names.as_slice() {
                        [] => (Vec::new(), vec![0xff]),
                        leading => names_range(&[], leading),
                    };
                    for entry in t.range(start.as_slice()..end.as_slice())? {
                        let (k, v) = entry?;
                        each_arm(k.value(), decode_totals(v.value())?, |arm, (imp, clk)| {
                            keep(arm, Counts::new(imp, clk))
                        })?;
                    }
                }
                // A row per (block, slot of a shard): summed over the blocks by arm.
                Some(from) => {
                    let t = tx.open_table(SLOT_BLOCKS)?;
                    let mut rows: Vec<(Vec<u8>, Counts)> = Vec::new();
                    block_rows_from(&t, &names, from, |block, arm, cells| {
                        let (imp, clk) = cells
                            .iter()
                            .enumerate()
                            .filter(|&(place, _)| block * BLOCK_BUCKETS + place as i64 >= from)
                            .fold((0, 0), |(i, c), (_, &(imp, clk))| (i + imp, c + clk));
                        if (imp, clk) != (0, 0) {
                            rows.push((arm.to_vec(), Counts::new(imp, clk)));
                        }
                        Ok(())
                    })?;
                    // One sorted run per block: a stable sort merges them.
                    rows.sort_by(|a, b| a.0.cmp(&b.0));
                    for run in rows.chunk_by(|a, b| a.0 == b.0) {
                        let total = run.iter().fold(Counts::ZERO, |t, (_, c)| t + *c);
                        keep(&run[0].0, total)?;
                    }
                }
            }
            // Key order is (tenant, city, slot, banner); a stable sort by (tenant, slot) keeps
            // it within each slot.
            sums.sort_by(|(a, _), (b, _)| (&a.tenant, &a.slot).cmp(&(&b.tenant, &b.slot)));
            Ok(sums)
        })
    }

    fn versions(&self, tenant: &str) -> Result<Versions, StoreError> {
        self.read(|tx| {
            let mut versions = Versions::new();
            let t = tx.open_table(VERSIONS)?;
            for entry in t.range((tenant, "", "")..)? {
                let (k, v) = entry?;
                let (kt, part, name) = k.value();
                if kt != tenant {
                    break;
                }
                let part = Part::parse(part)
                    .ok_or_else(|| redb::Error::Corrupted(format!("versions part {part:?}")))?;
                versions.insert((part, name.to_string()), v.value());
            }
            Ok(versions)
        })
    }

    fn change_marker(&self) -> Result<Option<u64>, StoreError> {
        let marker = self.read(|tx| {
            let t = tx.open_table(META)?;
            let value = t.get(META_CHANGE_MARKER)?;
            Ok(value.map(|v| v.value().to_string()))
        })?;
        match marker {
            None => Ok(Some(0)),
            Some(m) => m.parse().map(Some).map_err(|_| StoreError::Meta {
                key: META_CHANGE_MARKER,
                detail: format!("not a number: {m:?}"),
            }),
        }
    }

    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            let mut tenants = std::collections::BTreeSet::new();
            for entry in tx.open_table(VERSIONS)?.iter()? {
                tenants.insert(entry?.0.value().0.to_string());
            }
            for entry in tx.open_table(SLOTS)?.iter()? {
                tenants.insert(entry?.0.value().0.to_string());
            }
            for entry in tx.open_table(API_KEYS)?.iter()? {
                tenants.insert(entry?.1.value().0.to_string());
            }
            Ok(tenants.into_iter().collect())
        })
    }

    fn write_all_priors(&self, slots: &[SlotPriorsWrite]) -> Result<(), StoreError> {
        self.write(|tx| {
            slots
                .iter()
                .try_for_each(|(tenant, slot, priors)| replace_priors(tx, tenant, slot, priors))
        })
    }

    fn priors(&self, tenant: &str, slot: &str) -> Result<SlotPriors, StoreError> {
        self.read(|tx| {
            let corrupt = |e: &dyn std::fmt::Display| redb::Error::Corrupted(e.to_string());
            let t = tx.open_table(PRIORS)?;
            let mut priors = SlotPriors::uniform();
            // The slot's own prior, under banner "", sorts first.
            for entry in t.range((tenant, slot, "")..)? {
                let (k, v) = entry?;
                let (kt, ks, banner) = k.value();
                if kt != tenant || ks != slot {
                    break;
                }
                let (alpha0, beta0, source) = v.value();
                let row = PriorRow {
                    banner,
                    alpha0,
                    beta0,
                    source,
                };
                read_prior_row(&mut priors, row).map_err(|e| corrupt(&e))?;
            }
            for entry in tx.open_table(PRIOR_CITIES)?.range((tenant, slot, "")..)? {
                let (k, v) = entry?;
                let (kt, ks, city) = k.value();
                if kt != tenant || ks != slot {
                    break;
                }
                let (level, clicks) = v.value();
                let row = CityRow {
                    city,
                    level,
                    clicks,
                };
                read_city_row(&mut priors, row).map_err(|e| corrupt(&e))?;
            }
            Ok(priors)
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(META)?.insert(key, value)?;
            Ok(())
        })
    }

    fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let mut held = value.to_string();
        self.write(|tx| {
            let mut t = tx.open_table(META)?;
            let before = t.get(key)?.map(|v| v.value().to_string());
            match before {
                Some(before) => held = before,
                None => {
                    t.insert(key, value)?;
                }
            }
            Ok(())
        })?;
        Ok(held)
    }

    fn replace_meta(&self, key: &str, expected: &str, value: &str) -> Result<String, StoreError> {
        let mut held = None;
        self.write(|tx| {
            let mut t = tx.open_table(META)?;
            let before = t.get(key)?.map(|v| v.value().to_string());
            if before.as_deref() == Some(expected) {
                t.insert(key, value)?;
                held = Some(value.to_string());
            } else {
                held = before;
            }
            Ok(())
        })?;
        held.ok_or_else(|| StoreError::Meta {
            key: "replace_meta",
            detail: format!("{key:?} holds no value to replace"),
        })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(META)?;
            Ok(t.get(key)?.map(|v| v.value().to_string()))
        })
    }

    fn shared_across_processes(&self) -> bool {
        false
    }

    fn shards(&self, owns: &dyn Fn(&str, &str) -> bool) -> Result<Vec<ShardState>, StoreError> {
        self.read(|tx| {
            let mut shards: BTreeMap<ShardKey, ShardState> = BTreeMap::new();
            let arm_of = |key: &[u8]| decode_arm(key).ok_or_else(|| corrupt("arm key", key));
            for entry in tx.open_table(SLOT_TOTALS)?.iter()? {
                let (k, v) = entry?;
                let (tenant, city) = shard_of_slot_key(k.value())
                    .ok_or_else(|| corrupt("slot_totals key", k.value()))?;
                if owns(tenant, city) {
                    let state = ShardState::entry(&mut shards, &ShardKey::new(tenant, city));
                    each_arm(k.value(), decode_totals(v.value())?, |arm, (imp, clk)| {
                        let key = CountKey::all_time(Arc::new(arm_of(arm)?));
                        state.rows.push((key, Counts::new(imp, clk)));
                        Ok(())
                    })?;
                }
            }
            let t = tx.open_table(SLOT_BLOCKS)?;
            block_rows_from(&t, &[], i64::MIN, |block, arm, cells| {
                let arm = arm_of(arm)?;
                if owns(&arm.tenant, &arm.city) {
                    let state = ShardState::entry(&mut shards, &ShardKey::of(&arm));
                    let arm = Arc::new(arm);
                    for (place, &(imp, clk)) in cells.iter().enumerate() {
                        if (imp, clk) != (0, 0) {
                            let bucket = block * BLOCK_BUCKETS + place as i64;
                            let key = CountKey::new(arm.clone(), bucket);
                            state.rows.push((key, Counts::new(imp, clk)));
                        }
                    }
                }
                Ok(())
            })?;
            for entry in tx.open_table(APPLIED)?.iter()? {
                let (k, v) = entry?;
                let (tenant, city, partition) = k.value();
                if owns(tenant, city) {
                    ShardState::entry(&mut shards, &ShardKey::new(tenant, city))
                        .applied
                        .insert(Partition(partition), Offset(v.value()));
                }
            }
            Ok(shards.into_values().collect())
        })
    }

    fn applied_offsets(&self) -> Result<AppliedOffsets, StoreError> {
        self.read(|tx| {
            let mut offsets = AppliedOffsets::new();
            for entry in tx.open_table(APPLIED)?.iter()? {
                let (k, v) = entry?;
                let (tenant, city, partition) = k.value();
                offsets
                    .entry(ShardKey::new(tenant, city))
                    .or_default()
                    .insert(Partition(partition), Offset(v.value()));
            }
            Ok(offsets)
        })
    }

    fn checkpoints(&self, job: &str) -> Result<BTreeMap<Partition, Offset>, StoreError> {
        self.read(|tx| {
            let mut offsets = BTreeMap::new();
            for entry in tx
                .open_table(CHECKPOINTS)?
                .range((job, i32::MIN)..=(job, i32::MAX))?
            {
                let (k, v) = entry?;
                offsets.insert(Partition(k.value().1), Offset(v.value()));
            }
            Ok(offsets)
        })
    }

    fn set_checkpoints(
        &self,
        job: &str,
        offsets: &BTreeMap<Partition, Offset>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(CHECKPOINTS)?;
            for (&partition, &offset) in offsets {
                t.insert((job, partition.0), offset.0)?;
            }
            Ok(())
        })
    }

    fn put_slot(&self, config: &SlotConfig) -> Result<(), StoreError> {
        let json = serde_json::to_string(config).map_err(|e| self.fail(e))?;
        self.write(|tx| {
            tx.open_table(SLOTS)?.insert(
                (config.tenant.as_str(), config.slot.as_str()),
                json.as_str(),
            )?;
            bump_version(tx, &config.tenant, Part::Slot, &config.slot)
        })
    }

    fn slot(&self, tenant: &str, slot: &str) -> Result<Option<SlotConfig>, StoreError> {
        let json = self.read(|tx| {
            let t = tx.open_table(SLOTS)?;
            Ok(t.get((tenant, slot))?.map(|v| v.value().to_string()))
        })?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| self.fail(e)))
            .transpose()
    }

    fn slots(&self, tenant: Option<&str>) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|tx| {
            let mut slots = Vec::new();
            for entry in tx.open_table(SLOTS)?.iter()? {
                let (k, _) = entry?;
                let (t, s) = k.value();
                if tenant.is_none_or(|want| want == t) {
                    slots.push((t.to_string(), s.to_string()));
                }
            }
            Ok(slots)
        })
    }

    fn city_aliases(&self, tenant: &str) -> Result<CityAliases, StoreError> {
        self.read(|tx| {
            // A file written before aliases existed, opened read-only, has no such table.
            let table = match tx.open_table(CITY_ALIASES) {
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(CityAliases::default()),
                t => t?,
            };
            let mut aliases = Vec::new();
            for entry in table.range((tenant, "")..)? {
                let (k, v) = entry?;
                let (t, alias) = k.value();
                if t != tenant {
                    break;
                }
                aliases.push((alias.to_string(), v.value().to_string()));
            }
            Ok(aliases.into_iter().collect())
        })
    }

    fn put_city_aliases(&self, tenant: &str, aliases: &CityAliases) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(CITY_ALIASES)?;
            table.retain(|(t, _), _| t != tenant)?;
            for (alias, city) in aliases.iter() {
                table.insert((tenant, alias), city)?;
            }
            bump_version(tx, tenant, Part::Aliases, "")
        })
    }

    fn put_api_key(&self, key_sha256: &str, key: &ApiKey) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(API_KEYS)?
                .insert(key_sha256, (key.tenant.as_str(), key.role.as_str()))?;
            Ok(())
        })
    }

    fn api_key(&self, key_sha256: &str) -> Result<Option<ApiKey>, StoreError> {
        let found = self.read(|tx| {
            let t = tx.open_table(API_KEYS)?;
            Ok(t.get(key_sha256)?.map(|v| {
                let (tenant, role) = v.value();
                (tenant.to_string(), role.to_string())
            }))
        })?;
        found
            .map(|(tenant, role)| {
                Ok(ApiKey {
                    tenant,
                    role: role.parse().map_err(|e: String| self.fail(e))?,
                })
            })
            .transpose()
    }

    fn append_customer_events(&self, events: &[Event]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(CUSTOMER_EVENTS)?;
            for e in events {
                insert_customer_event(&mut t, e)?;
            }
            Ok(())
        })
    }

    fn customer_events(
        &self,
        tenant: &str,
        customer_id: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(CUSTOMER_EVENTS)?;
            let range = t.range(
                (tenant, customer_id, i64::MIN, "")..=(tenant, customer_id, i64::MAX, "\u{10ffff}"),
            )?;
            let mut out = Vec::new();
            for entry in range.rev().take(limit) {
                let (key, value) = entry?;
                out.push(customer_event(key.value(), value.value())?);
            }
            Ok(out)
        })
    }
}

/// Replaces the priors of one slot (its rows in [`PRIORS`] and [`PRIOR_CITIES`]) and moves its
/// version, in the transaction `tx`.
fn replace_priors(
    tx: &redb::WriteTransaction,
    tenant: &str,
    slot: &str,
    priors: &SlotPriors,
) -> Result<(), redb::Error> {
    let mut t = tx.open_table(PRIORS)?;
    t.retain_in((tenant, slot, "")..=(tenant, slot, "\u{10ffff}"), |_, _| {
        false
    })?;
    for row in prior_rows(priors) {
        t.insert(
            (tenant, slot, row.banner),
            (row.alpha0, row.beta0, row.source),
        )?;
    }
    let mut t = tx.open_table(PRIOR_CITIES)?;
    t.retain_in((tenant, slot, "")..=(tenant, slot, "\u{10ffff}"), |_, _| {
        false
    })?;
    for row in city_rows(priors) {
        t.insert((tenant, slot, row.city), (row.level, row.clicks))?;
    }
    bump_version(tx, tenant, Part::Priors, slot)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::ALL_TIME;
    use redb::ReadableTableMetadata;

    pub(in crate::store::embedded) fn row(
        t: &str,
        c: &str,
        s: &str,
        b: &str,
        bucket: i64,
        imp: u64,
        clk: u64,
    ) -> (CountKey, Counts) {
        let arm = Arc::new(ArmKey::new(t, s, c, b));
        (CountKey { arm, bucket }, Counts::new(imp, clk))
    }

    fn write(store: &EmbeddedStore, rows: &[(CountKey, Counts)]) {
        let mut shards = BTreeMap::new();
        for r in rows {
            ShardWrite::entry(&mut shards, &ShardKey::of(&r.0.arm))
                .rows
                .push(r.clone());
        }
        let shards: Vec<ShardWrite> = shards.into_values().collect();
        store.apply_epoch(&shards).unwrap();
    }

    pub(in crate::store::embedded) fn stored_rows(
        store: &EmbeddedStore,
    ) -> Vec<(CountKey, Counts)> {
        let mut rows: Vec<_> = store
            .shards(&|_, _| true)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.rows)
            .collect();
        rows.sort();
        rows
    }

    pub(in crate::store::embedded) fn window(
        store: &EmbeddedStore,
        tenant: Option<&str>,
        from: Option<i64>,
    ) -> Vec<(ArmKey, Counts)> {
        store
            .counts(&CountQuery {
                tenant: tenant.map(Into::into),
                from_bucket: from,
                ..Default::default()
            })
            .unwrap()
    }

    #[test]
    fn unsynced_epochs_are_read_back_at_once_and_kept_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let rows = [
            row("ajio", "pune", "hero", "b1", ALL_TIME, 12, 3),
            row("ajio", "pune", "hero", "b1", 479, 12, 3),
        ];
        let store = EmbeddedStore::open(&path, true).unwrap();
        let mut shards = BTreeMap::new();
        for r in &rows {
            ShardWrite::entry(&mut shards, &ShardKey::of(&r.0.arm))
                .rows
                .push(r.clone());
        }
        let shards: Vec<ShardWrite> = shards.into_values().collect();
        store.apply_epoch_unsynced(&shards).unwrap();
        assert_eq!(stored_rows(&store), rows.to_vec());
        store.sync().unwrap();
        drop(store);
        let store = EmbeddedStore::open(&path, false).unwrap();
        assert_eq!(stored_rows(&store), rows.to_vec());
    }

    #[test]
    fn epochs_update_cells_within_and_across_blocks_and_windows_sum_whole_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"), true).unwrap();
        // Buckets 479 and 480 lie in blocks 19 and 20; -30 in block -2.
        write(
            &store,
            &[
                row("ajio", "pune", "hero", "b1", ALL_TIME, 12, 3),
                row("ajio", "pune", "hero", "b1", 479, 5, 1),
                row("ajio", "pune", "hero", "b1", 480, 6, 2),
                row("ajio", "pune", "hero", "b1", -30, 1, 0),
                row("zara", "goa", "hero", "b1", ALL_TIME, 4, 4),
                row("zara", "goa", "hero", "b1", 481, 4, 4),
            ],
        );
        // A later epoch sets new absolute values: one cell changes, one falls to zero, a new
        // cell joins an existing block row, a whole block row empties.
        write(
            &store,
            &[
                row("ajio", "pune", "hero", "b1", ALL_TIME, 14, 3),
                row("ajio", "pune", "hero", "b1", 479, 0, 0),
                row("ajio", "pune", "hero", "b1", 480, 7, 2),
                row("ajio", "pune", "hero", "b1", 490, 1, 0),
                row("ajio", "pune", "hero", "b1", -30, 0, 0),
                row("zara", "goa", "hero", "b1", ALL_TIME, 0, 0),
                row("zara", "goa", "hero", "b1", 481, 0, 0),
            ],
        );
        assert_eq!(
            stored_rows(&store),
            vec![
                row("ajio", "pune", "hero", "b1", ALL_TIME, 14, 3),
                row("ajio", "pune", "hero", "b1", 480, 7, 2),
                row("ajio", "pune", "hero", "b1", 490, 1, 0),
            ]
        );
        let b1 = ArmKey::new("ajio", "hero", "pune", "b1");
        assert_eq!(
            window(&store, None, None),
            vec![(b1.clone(), Counts::new(14, 3))]
        );
        assert_eq!(window(&store, Some("zara"), None), vec![]);
        assert_eq!(
            window(&store, None, Some(0)),
            vec![(b1.clone(), Counts::new(8, 2))]
        );
        assert_eq!(
            window(&store, None, Some(481)),
            vec![(b1.clone(), Counts::new(1, 0))]
        );
        assert_eq!(
            window(&store, Some("ajio"), Some(480)),
            vec![(b1, Counts::new(8, 2))]
        );
        assert_eq!(window(&store, None, Some(491)), vec![]);
        let tx = store.db.begin_read().unwrap();
        assert_eq!(tx.open_table(SLOT_BLOCKS).unwrap().len().unwrap(), 1);
    }
}
