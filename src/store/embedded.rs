//! The embedded store: one redb file. Each epoch is one write transaction, so a crash leaves the
//! file at the end of the last whole epoch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::{
    ApiKey, AppliedOffsets, CountQuery, PosteriorStore, ShardState, ShardWrite, StoreError,
};
use crate::bandit::{Prior, PriorSource, SlotPriors};
use crate::model::{
    ArmKey, CountKey, Counts, Event, EventFields, Offset, Partition, ShardKey, SlotConfig, ALL_TIME,
};
use chrono::DateTime;

/// (tenant, city, slot, banner) → all-time (impressions, clicks), the key encoded by
/// [`arm_key`]: byte order is tuple order, and comparing keys is a memcmp.
const ARM_TOTALS: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("arm_totals");
/// (block, tenant, city, slot, banner) → (impressions, clicks) of each of the block's
/// [`BLOCK_BUCKETS`] buckets, the key encoded by [`block_key`], the value by [`encode_block`].
/// One row carries a day of hourly buckets, and blocks lead the key, so that a backfill, whose
/// epochs move forward in time, appends few rows near the end of the table instead of inserting
/// one row per (arm, hour) all over it, and a window is one range of the table.
const ARM_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("arm_blocks");
/// Where stores written before the block layout kept the counts: (tenant, city, slot, banner,
/// bucket) → (impressions, clicks), the key encoded by [`legacy_arm_state_key`]. Moved into
/// [`ARM_TOTALS`] and [`ARM_BLOCKS`] when such a store is opened.
const LEGACY_ARM_STATE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("arm_counts");
/// Consecutive buckets kept in one [`ARM_BLOCKS`] row (a day of the default hourly buckets).
const BLOCK_BUCKETS: i64 = 24;
/// (tenant, slot, banner) → (alpha0, beta0, source); banner "" is the slot prior.
const PRIORS: TableDefinition<(&str, &str, &str), (f64, f64, &str)> =
    TableDefinition::new("priors");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// (tenant, city, partition) → the offset up to which the shard has applied that partition.
const APPLIED: TableDefinition<(&str, &str, i32), i64> = TableDefinition::new("applied");
/// (job, partition) → resume low-watermark.
const CHECKPOINTS: TableDefinition<(&str, i32), i64> = TableDefinition::new("checkpoints");
/// (tenant, slot) → the slot configuration as JSON.
const SLOTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("slot_banners");
/// key_sha256 → (tenant, role).
const API_KEYS: TableDefinition<&str, (&str, &str)> = TableDefinition::new("api_keys");
/// (tenant, customer_id, ts µs, event_id) → (slot, city, banner, kind, referrer, request_id).
const CUSTOMER_EVENTS: TableDefinition<(&str, &str, i64, &str), CustomerEventValue> =
    TableDefinition::new("customer_history");
/// Where stores written before the compact encoding kept the history: the same key → the event
/// as JSON. Moved into [`CUSTOMER_EVENTS`] when such a store is opened.
const CUSTOMER_EVENTS_JSON: TableDefinition<(&str, &str, i64, &str), &str> =
    TableDefinition::new("customer_events");
type CustomerEventValue = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

pub struct EmbeddedStore {
    path: PathBuf,
    db: Database,
}

impl EmbeddedStore {
    pub fn open(path: &Path, writable: bool) -> Result<Self, StoreError> {
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
        let db = Database::create(path).map_err(|e| err(&e))?;
        let store = Self {
            path: path.to_path_buf(),
            db,
        };
        store.write(|tx| {
            tx.open_table(ARM_TOTALS)?;
            tx.open_table(ARM_BLOCKS)?;
            if tx
                .list_tables()?
                .any(|t| t.name() == LEGACY_ARM_STATE.name())
            {
                move_legacy_counts(tx)?;
            }
            tx.open_table(PRIORS)?;
            tx.open_table(META)?;
            tx.open_table(APPLIED)?;
            tx.open_table(CHECKPOINTS)?;
            tx.open_table(SLOTS)?;
            tx.open_table(API_KEYS)?;
            let mut history = tx.open_table(CUSTOMER_EVENTS)?;
            if tx
                .list_tables()?
                .any(|t| t.name() == CUSTOMER_EVENTS_JSON.name())
            {
                for entry in tx.open_table(CUSTOMER_EVENTS_JSON)?.iter()? {
                    let (_, json) = entry?;
                    let event = Event::from_json(json.value().as_bytes()).map_err(|e| {
                        redb::Error::Corrupted(format!("customer event {}: {e}", json.value()))
                    })?;
                    insert_customer_event(&mut history, &event)?;
                }
                drop(history);
                tx.delete_table(CUSTOMER_EVENTS_JSON)?;
            }
            Ok(())
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
        self.write_with(durability, |tx| {
            write_counts(
                tx,
                shards.iter().flat_map(|s| &s.rows).map(|(k, c)| (k, *c)),
            )?;
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

type CustomerHistory<'tx> =
    redb::Table<'tx, (&'static str, &'static str, i64, &'static str), CustomerEventValue>;

/// Adds an event with a customer ID to the history (events without one are not kept).
fn insert_customer_event(t: &mut CustomerHistory<'_>, e: &Event) -> Result<(), redb::Error> {
    if let Some(customer) = &e.customer_id {
        let key = (
            e.tenant.as_str(),
            customer.as_str(),
            e.ts.timestamp_micros(),
            e.event_id.as_str(),
        );
        let value = (
            e.slot.as_str(),
            e.city.as_str(),
            e.banner.as_str(),
            e.kind.as_str(),
            e.referrer.as_deref(),
            e.request_id.as_deref(),
        );
        t.insert(key, value)?;
    }
    Ok(())
}

/// `tenant 0 city 0 slot 0 banner 0`. Names are `[a-z0-9_-]+`, so the 0 separators keep the
/// order of the (tenant, city, slot, banner) tuple.
fn push_arm(key: &mut Vec<u8>, arm: &ArmKey) {
    for name in [&arm.tenant, &arm.city, &arm.slot, &arm.banner] {
        key.extend_from_slice(name.as_bytes());
        key.push(0);
    }
}

fn arm_key(arm: &ArmKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(arm_len(arm));
    push_arm(&mut key, arm);
    key
}

fn arm_len(arm: &ArmKey) -> usize {
    arm.tenant.len() + arm.city.len() + arm.slot.len() + arm.banner.len() + 4
}

fn decode_arm(key: &[u8]) -> Option<ArmKey> {
    let names = key.strip_suffix(&[0])?;
    let mut parts = names
        .split(|&b| b == 0)
        .map(|name| std::str::from_utf8(name).ok());
    let (tenant, city, slot, banner) = (
        parts.next()??,
        parts.next()??,
        parts.next()??,
        parts.next()??,
    );
    parts
        .next()
        .is_none()
        .then(|| ArmKey::new(tenant, slot, city, banner))
}

/// An i64 as big-endian with the sign bit flipped, so that byte order is numeric order.
fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered_i64(bytes: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(bytes.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// The block of a bucket and the bucket's place in it.
fn block_of(bucket: i64) -> (i64, usize) {
    (
        bucket.div_euclid(BLOCK_BUCKETS),
        bucket.rem_euclid(BLOCK_BUCKETS) as usize,
    )
}

/// The block then the arm: byte order is (block, tenant, city, slot, banner) order.
fn block_key(block: i64, arm: &ArmKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + arm_len(arm));
    key.extend_from_slice(&ordered_i64(block));
    push_arm(&mut key, arm);
    key
}

fn decode_block_key(key: &[u8]) -> Option<(i64, ArmKey)> {
    let (block, arm) = key.split_at_checked(8)?;
    Some((from_ordered_i64(block)?, decode_arm(arm)?))
}

type Block = [(u64, u64); BLOCK_BUCKETS as usize];

/// Each bucket's (impressions, clicks) as two little-endian u64.
fn encode_block(block: &Block) -> [u8; BLOCK_BUCKETS as usize * 16] {
    let mut bytes = [0; BLOCK_BUCKETS as usize * 16];
    for (chunk, &(imp, clk)) in bytes.chunks_exact_mut(16).zip(block) {
        chunk[..8].copy_from_slice(&imp.to_le_bytes());
        chunk[8..].copy_from_slice(&clk.to_le_bytes());
    }
    bytes
}

fn decode_block(bytes: &[u8]) -> Option<Block> {
    if bytes.len() != BLOCK_BUCKETS as usize * 16 {
        return None;
    }
    let mut block = [(0, 0); BLOCK_BUCKETS as usize];
    for (cell, chunk) in block.iter_mut().zip(bytes.chunks_exact(16)) {
        let (imp, clk) = chunk.split_at(8);
        *cell = (
            u64::from_le_bytes(imp.try_into().ok()?),
            u64::from_le_bytes(clk.try_into().ok()?),
        );
    }
    Some(block)
}

fn corrupt(what: &str, bytes: &[u8]) -> redb::Error {
    redb::StorageError::Corrupted(format!("{what} {bytes:?}")).into()
}

type BlockEntry<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

/// Each (block, arm) row as stored, decoded.
fn block_rows<'a, I: Iterator<Item = BlockEntry<'a>>>(
    range: I,
) -> impl Iterator<Item = Result<(i64, ArmKey, Block), redb::Error>> + use<'a, I> {
    range.map(|entry| {
        let (k, v) = entry?;
        let (block, arm) =
            decode_block_key(k.value()).ok_or_else(|| corrupt("arm_blocks key", k.value()))?;
        let cells =
            decode_block(v.value()).ok_or_else(|| corrupt("arm_blocks value", v.value()))?;
        Ok((block, arm, cells))
    })
}

/// Writes the new absolute counts of `rows` (an all-time row, or a bucket's cell within its
/// block row); a count of (0, 0) removes the row or cell.
fn write_counts<'k>(
    tx: &redb::WriteTransaction,
    rows: impl Iterator<Item = (&'k CountKey, Counts)>,
) -> Result<(), redb::Error> {
    type Changes = [Option<(u64, u64)>; BLOCK_BUCKETS as usize];
    let mut totals: Vec<(Vec<u8>, u64, u64)> = Vec::new();
    // Rows usually come grouped by arm (a sink's rows are), so a row of the block before it is
    // found without a lookup.
    let mut blocks: Vec<((i64, &ArmKey), Changes)> = Vec::new();
    let mut block_index: FxHashMap<(i64, &ArmKey), usize> = FxHashMap::default();
    for (
        key,
        Counts {
            impressions: imp,
            clicks: clk,
        },
    ) in rows
    {
        if key.bucket == ALL_TIME {
            totals.push((arm_key(&key.arm), imp, clk));
            continue;
        }
        let (block, place) = block_of(key.bucket);
        let id = (block, key.arm.as_ref());
        let index = match blocks.last() {
            Some((last, _)) if *last == id => blocks.len() - 1,
            _ => *block_index.entry(id).or_insert_with(|| {
                blocks.push((id, [None; BLOCK_BUCKETS as usize]));
                blocks.len() - 1
            }),
        };
        blocks[index].1[place] = Some((imp, clk));
    }
    // In key order, so that the B-trees are written front to back; the keys are encoded first
    // so that sorting compares bytes, not four names.
    totals.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut blocks: Vec<(Vec<u8>, Changes)> = blocks
        .into_iter()
        .map(|((block, arm), changes)| (block_key(block, arm), changes))
        .collect();
    blocks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut t = tx.open_table(ARM_TOTALS)?;
    for (key, imp, clk) in totals {
        if imp == 0 && clk == 0 {
            t.remove(key.as_slice())?;
        } else {
            t.insert(key.as_slice(), (imp, clk))?;
        }
    }
    let mut t = tx.open_table(ARM_BLOCKS)?;
    for (key, changes) in blocks {
        let stored = t
            .get(key.as_slice())?
            .map(|v| decode_block(v.value()).ok_or_else(|| corrupt("arm_blocks value", v.value())));
        let mut block = stored
            .transpose()?
            .unwrap_or([(0, 0); BLOCK_BUCKETS as usize]);
        for (cell, change) in block.iter_mut().zip(changes) {
            if let Some(counts) = change {
                *cell = counts;
            }
        }
        if block.iter().all(|&c| c == (0, 0)) {
            t.remove(key.as_slice())?;
        } else {
            t.insert(key.as_slice(), encode_block(&block).as_slice())?;
        }
    }
    Ok(())
}

/// `tenant 0 city 0 slot 0 banner 0` then the bucket as [`ordered_i64`]: the key of
/// [`LEGACY_ARM_STATE`].
fn decode_legacy_arm_state_key(key: &[u8]) -> Option<CountKey> {
    let (arm, bucket) = key.split_at_checked(key.len().checked_sub(8)?)?;
    Some(CountKey {
        arm: Arc::new(decode_arm(arm)?),
        bucket: from_ordered_i64(bucket)?,
    })
}

/// Moves the counts of a store written before the block layout into it.
fn move_legacy_counts(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut rows = Vec::new();
    for entry in tx.open_table(LEGACY_ARM_STATE)?.iter()? {
        let (k, v) = entry?;
        let key = decode_legacy_arm_state_key(k.value())
            .ok_or_else(|| corrupt("arm_state key", k.value()))?;
        let (imp, clk) = v.value();
        rows.push((key, Counts::new(imp, clk)));
    }
    write_counts(tx, rows.iter().map(|(k, c)| (k, *c)))?;
    tx.delete_table(LEGACY_ARM_STATE)?;
    Ok(())
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

    fn clear_counts(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.delete_table(ARM_TOTALS)?;
            tx.open_table(ARM_TOTALS)?;
            tx.delete_table(ARM_BLOCKS)?;
            tx.open_table(ARM_BLOCKS)?;
            tx.delete_table(APPLIED)?;
            tx.open_table(APPLIED)?;
            Ok(())
        })
    }

    fn counts(&self, q: &CountQuery) -> Result<Vec<(ArmKey, Counts)>, StoreError> {
        self.read(|tx| {
            let mut sums: BTreeMap<ArmKey, Counts> = BTreeMap::new();
            let mut add = |arm: ArmKey, imp: u64, clk: u64| {
                if q.matches(&arm) {
                    *sums.entry(arm).or_default() += Counts::new(imp, clk);
                }
            };
            match q.from_bucket {
                None => {
                    let t = tx.open_table(ARM_TOTALS)?;
                    let (start, end) = match &q.tenant {
                        Some(tenant) => (
                            format!("{tenant}\0").into_bytes(),
                            format!("{tenant}\u{1}").into_bytes(),
                        ),
                        None => (Vec::new(), vec![0xff]),
                    };
                    for entry in t.range(start.as_slice()..end.as_slice())? {
                        let (k, v) = entry?;
                        let arm = decode_arm(k.value())
                            .ok_or_else(|| corrupt("arm_totals key", k.value()))?;
                        let (imp, clk) = v.value();
                        add(arm, imp, clk);
                    }
                }
                Some(from) => {
                    let t = tx.open_table(ARM_BLOCKS)?;
                    let (first, _) = block_of(from);
                    let start = ordered_i64(first);
                    for row in block_rows(t.range(start.as_slice()..)?) {
                        let (block, arm, cells) = row?;
                        let (imp, clk) = cells
                            .iter()
                            .enumerate()
                            .filter(|&(place, _)| block * BLOCK_BUCKETS + place as i64 >= from)
                            .fold((0, 0), |(i, c), (_, &(imp, clk))| (i + imp, c + clk));
                        if (imp, clk) != (0, 0) {
                            add(arm, imp, clk);
                        }
                    }
                }
            }
            Ok(sums.into_iter().collect())
        })
    }

    fn write_priors(
        &self,
        tenant: &str,
        slot: &str,
        priors: &SlotPriors,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(PRIORS)?;
            let s = priors.slot;
            t.insert((tenant, slot, ""), (s.alpha0, s.beta0, s.source.as_str()))?;
            for (banner, p) in &priors.banners {
                t.insert(
                    (tenant, slot, banner.as_str()),
                    (p.alpha0, p.beta0, p.source.as_str()),
                )?;
            }
            Ok(())
        })
    }

    fn priors(&self, tenant: &str, slot: &str) -> Result<SlotPriors, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(PRIORS)?;
            let mut priors = SlotPriors::uniform();
            for entry in t.range((tenant, slot, "")..)? {
                let (k, v) = entry?;
                let (kt, ks, banner) = k.value();
                if kt != tenant || ks != slot {
                    break;
                }
                let (alpha0, beta0, source) = v.value();
                let prior = Prior {
                    alpha0,
                    beta0,
                    source: PriorSource::parse(source).unwrap_or(PriorSource::Uniform),
                };
                if banner.is_empty() {
                    priors.slot = prior;
                } else {
                    priors.banners.insert(banner.to_string(), prior);
                }
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
            for entry in tx.open_table(ARM_TOTALS)?.iter()? {
                let (k, v) = entry?;
                let arm =
                    decode_arm(k.value()).ok_or_else(|| corrupt("arm_totals key", k.value()))?;
                if owns(&arm.tenant, &arm.city) {
                    let (imp, clk) = v.value();
                    let state = ShardState::entry(&mut shards, &ShardKey::of(&arm));
                    let key = CountKey::all_time(Arc::new(arm));
                    state.rows.push((key, Counts::new(imp, clk)));
                }
            }
            for row in block_rows(tx.open_table(ARM_BLOCKS)?.iter()?) {
                let (block, arm, cells) = row?;
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
            }
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
            Ok(())
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
                let (_, _, ts_us, event_id) = key.value();
                let (slot, city, banner, kind, referrer, request_id) = value.value();
                let event = EventFields {
                    event_id: Some(event_id),
                    kind: Some(kind),
                    tenant: Some(tenant),
                    slot: Some(slot),
                    city: Some(city),
                    banner: Some(banner),
                    ts: DateTime::from_timestamp_micros(ts_us),
                    customer_id: Some(customer_id),
                    referrer,
                    request_id,
                }
                .validate()
                .map_err(|e| redb::Error::Corrupted(format!("customer event {event_id}: {e}")))?;
                out.push(event);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    #[test]
    fn a_store_with_the_json_customer_history_is_moved_to_the_compact_one_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let event = |id: &str, customer: Option<&str>, ts: &str| Event {
            event_id: id.into(),
            kind: crate::model::EventKind::Click,
            tenant: "ajio".into(),
            slot: "hero".into(),
            city: "pune".into(),
            banner: "b03".into(),
            ts: crate::time::parse_rfc3339(ts).unwrap(),
            customer_id: customer.map(Into::into),
            referrer: Some("ads".into()),
            request_id: None,
        };
        let older = event("e1", Some("c-1"), "2026-11-28T10:00:00Z");
        let newer = event("e2", Some("c-1"), "2026-11-28T11:00:00.000001Z");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(CUSTOMER_EVENTS_JSON).unwrap();
                for e in [&older, &newer] {
                    let key = ("ajio", "c-1", e.ts.timestamp_micros(), e.event_id.as_str());
                    t.insert(key, e.to_json().as_str()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let store = EmbeddedStore::open(&path, true).unwrap();
        assert_eq!(
            store.customer_events("ajio", "c-1", 10).unwrap(),
            vec![newer.clone(), older.clone()]
        );
        let tx = store.db.begin_read().unwrap();
        let names: Vec<String> = tx.list_tables().unwrap().map(|t| t.name().into()).collect();
        assert!(!names.contains(&"customer_events".to_string()), "{names:?}");
        drop(tx);
        drop(store);
        let reopened = EmbeddedStore::open(&path, true).unwrap();
        assert_eq!(
            reopened.customer_events("ajio", "c-1", 1).unwrap(),
            vec![newer]
        );
    }

    #[test]
    fn block_keys_sort_like_their_tuples_and_round_trip() {
        let tuples = [
            (i64::MIN, "myntra", "delhi", "footer", "b2"),
            (-1, "ajio", "pune", "hero", "b1"),
            (0, "ajio", "pune", "hero", "b1"),
            (0, "ajio", "pune", "hero", "b10"),
            (0, "ajio", "pune-2", "hero", "b1"),
            (0, "ajio2", "a", "a", "a"),
            (20_416, "ajio", "pune", "hero", "b1"),
            (i64::MAX, "a", "a", "a", "a"),
        ];
        let arm = |t: &str, c: &str, s: &str, b: &str| ArmKey::new(t, s, c, b);
        let keys: Vec<Vec<u8>> = tuples
            .iter()
            .map(|&(k, t, c, s, b)| block_key(k, &arm(t, c, s, b)))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        for (key, &(k, t, c, s, b)) in keys.iter().zip(&tuples) {
            assert_eq!(decode_block_key(key), Some((k, arm(t, c, s, b))));
            assert_eq!(decode_arm(&key[8..]), Some(arm(t, c, s, b)));
        }
        assert_eq!(decode_block_key(b"short"), None);
        assert_eq!(decode_arm(b"a\0b\0c\0"), None);
        assert_eq!(decode_arm(b"a\0b\0c\0d\0e\0"), None);
        let mut block = [(0, 0); BLOCK_BUCKETS as usize];
        block[0] = (7, 1);
        block[23] = (u64::MAX, 3);
        assert_eq!(decode_block(&encode_block(&block)), Some(block));
        assert_eq!(decode_block(&[0; 16]), None);
    }

    fn row(
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

    fn stored_rows(store: &EmbeddedStore) -> Vec<(CountKey, Counts)> {
        let mut rows: Vec<_> = store
            .shards(&|_, _| true)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.rows)
            .collect();
        rows.sort();
        rows
    }

    fn window(
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
        assert_eq!(tx.open_table(ARM_BLOCKS).unwrap().len().unwrap(), 1);
    }

    #[test]
    fn a_store_with_one_row_per_bucket_is_moved_to_the_block_layout_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let rows = vec![
            row("ajio", "pune", "hero", "b1", ALL_TIME, 9, 2),
            row("ajio", "pune", "hero", "b1", 20, 4, 1),
            row("ajio", "pune", "hero", "b1", 25, 5, 1),
            row("ajio", "pune", "hero", "b2", ALL_TIME, 3, 0),
            row("ajio", "pune", "hero", "b2", 25, 3, 0),
        ];
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LEGACY_ARM_STATE).unwrap();
                for (k, c) in &rows {
                    let mut key = arm_key(&k.arm);
                    key.extend_from_slice(&ordered_i64(k.bucket));
                    t.insert(key.as_slice(), (c.impressions, c.clicks)).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let store = EmbeddedStore::open(&path, true).unwrap();
        assert_eq!(stored_rows(&store), rows);
        let arm = |b: &str| ArmKey::new("ajio", "hero", "pune", b);
        assert_eq!(
            window(&store, None, Some(21)),
            vec![
                (arm("b1"), Counts::new(5, 1)),
                (arm("b2"), Counts::new(3, 0))
            ]
        );
        let tx = store.db.begin_read().unwrap();
        let names: Vec<String> = tx.list_tables().unwrap().map(|t| t.name().into()).collect();
        assert!(!names.contains(&"arm_counts".to_string()), "{names:?}");
    }
}
