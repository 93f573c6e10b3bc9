//! The embedded store's layout (docs/architecture.md, "Store layouts"): its redb tables and how
//! keys and values are encoded in them. Count keys are byte strings whose order is the order of
//! their tuples, so that a tenant, a shard or a window is one key range. A slot's banners share a
//! row (per shard; per block of [`BLOCK_BUCKETS`] consecutive buckets for the bucket counts), so
//! that a million arms are a few ten thousand rows.

use redb::{ReadableTable, TableDefinition};
use rustc_hash::FxHashMap;

use crate::model::{ArmKey, CountKey, Counts, Event, ShardKey, ALL_TIME};
use crate::store::customer_rows::CustomerEventRow;
use crate::store::{next_version, Part};

/// (tenant, city, slot) → each banner's all-time (impressions, clicks), the key encoded by
/// [`slot_key`] (byte order is tuple order, comparing keys is a memcmp), the value by
/// [`encode_totals`].
pub(super) const SLOT_TOTALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("slot_totals");
/// (block, tenant, city, slot) → each banner's (impressions, clicks) in those of the block's
/// [`BLOCK_BUCKETS`] buckets that have any, the value encoded by [`encode_slot_blocks`]. One row
/// carries a day of hourly buckets, and blocks lead the key, so that a backfill, whose epochs
/// move forward in time, appends rows near the end of the table, and a window is one range.
pub(super) const SLOT_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("slot_blocks");
/// Consecutive buckets kept in one [`SLOT_BLOCKS`] row (a day of the default hourly buckets).
pub(super) const BLOCK_BUCKETS: i64 = 24;
/// (tenant, slot, banner) → (alpha0, beta0, source); banner "" is the slot prior.
pub(super) const PRIORS: TableDefinition<(&str, &str, &str), (f64, f64, &str)> =
    TableDefinition::new("priors");
/// (tenant, slot, city) → (level, clicks): the city effects of a slot's priors, replaced with
/// its [`PRIORS`] rows in one transaction.
pub(super) const PRIOR_CITIES: TableDefinition<(&str, &str, &str), (f64, f64)> =
    TableDefinition::new("prior_cities");
pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// (tenant, part, city or slot) → version (see [`crate::store::Versions`]).
pub(super) const VERSIONS: TableDefinition<(&str, &str, &str), u64> =
    TableDefinition::new("versions");
/// The [`META`] key of the change marker: the newest version given to any part.
pub(super) const META_CHANGE_MARKER: &str = "change_marker";
/// (tenant, city, partition) → the offset up to which the shard has applied that partition.
pub(super) const APPLIED: TableDefinition<(&str, &str, i32), i64> = TableDefinition::new("applied");
/// (job, partition) → resume low-watermark.
pub(super) const CHECKPOINTS: TableDefinition<(&str, i32), i64> =
    TableDefinition::new("checkpoints");
/// (tenant, slot) → the slot configuration as JSON.
pub(super) const SLOTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("slot_banners");
/// (tenant, alias) → canonical city.
pub(super) const CITY_ALIASES: TableDefinition<(&str, &str), &str> =
    TableDefinition::new("city_aliases");
/// key_sha256 → (tenant, role).
pub(super) const API_KEYS: TableDefinition<&str, (&str, &str)> = TableDefinition::new("api_keys");
/// (tenant, customer_id, ts µs, event_id) → (slot, city, banner, kind, referrer, request_id).
pub(super) const CUSTOMER_EVENTS: TableDefinition<(&str, &str, i64, &str), CustomerEventValue> =
    TableDefinition::new("customer_history");
type CustomerEventValue = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

type CustomerHistory<'tx> =
    redb::Table<'tx, (&'static str, &'static str, i64, &'static str), CustomerEventValue>;

/// Adds an event with a customer ID to the history (events without one are not kept).
pub(super) fn insert_customer_event(
    t: &mut CustomerHistory<'_>,
    e: &Event,
) -> Result<(), redb::Error> {
    if let Some((customer, row)) = CustomerEventRow::of(e) {
        let key = (e.tenant.as_str(), customer, row.ts_us, row.event_id);
        let value = (
            row.slot,
            row.city,
            row.banner,
            row.kind,
            row.referrer,
            row.request_id,
        );
        t.insert(key, value)?;
    }
    Ok(())
}

/// The event a history row stores.
pub(super) fn customer_event(
    (tenant, customer_id, ts_us, event_id): (&str, &str, i64, &str),
    (slot, city, banner, kind, referrer, request_id): (
        &str,
        &str,
        &str,
        &str,
        Option<&str>,
        Option<&str>,
    ),
) -> Result<Event, redb::Error> {
    CustomerEventRow {
        event_id,
        ts_us,
        kind,
        slot,
        city,
        banner,
        referrer,
        request_id,
    }
    .into_event(tenant, customer_id)
    .map_err(redb::Error::Corrupted)
}

/// `name 0` for each name. Names are `[a-z0-9_-]+`, so the 0 separators keep the order of the
/// tuple of names.
fn push_names(key: &mut Vec<u8>, names: [&str; 3]) {
    for name in names {
        key.extend_from_slice(name.as_bytes());
        key.push(0);
    }
}

/// `tenant 0 city 0 slot 0 banner 0`: how the store's readers see an arm ([`decode_arm`]), and
/// how stores written before the slot rows keyed it.
#[cfg(test)]
pub(super) fn arm_key(arm: &ArmKey) -> Vec<u8> {
    let mut key = slot_key(&arm.tenant, &arm.city, &arm.slot);
    key.extend_from_slice(arm.banner.as_bytes());
    key.push(0);
    key
}

pub(super) fn decode_arm(key: &[u8]) -> Option<ArmKey> {
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

/// `tenant 0 city 0 slot 0`: the key of a [`SLOT_TOTALS`] row, and of a [`SLOT_BLOCKS`] row after
/// its block.
pub(super) fn slot_key(tenant: &str, city: &str, slot: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + city.len() + slot.len() + 3);
    push_names(&mut key, [tenant, city, slot]);
    key
}

/// The tenant and city of a [`slot_key`].
pub(super) fn shard_of_slot_key(key: &[u8]) -> Option<(&str, &str)> {
    let mut parts = key.strip_suffix(&[0])?.split(|&b| b == 0);
    let (tenant, city, _slot) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((
        std::str::from_utf8(tenant).ok()?,
        std::str::from_utf8(city).ok()?,
    ))
}

/// An i64 as big-endian with the sign bit flipped, so that byte order is numeric order.
pub(super) fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn from_ordered_i64(bytes: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(bytes.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// The block of a bucket and the bucket's place in it.
pub(super) fn block_of(bucket: i64) -> (i64, usize) {
    (
        bucket.div_euclid(BLOCK_BUCKETS),
        bucket.rem_euclid(BLOCK_BUCKETS) as usize,
    )
}

pub(super) type Block = [(u64, u64); BLOCK_BUCKETS as usize];

const EMPTY_BLOCK: Block = [(0, 0); BLOCK_BUCKETS as usize];

const _: () = assert!(BLOCK_BUCKETS <= 32, "a block's cells are flagged in a u32");

/// A little-endian u32 with bit i set when bucket i of the block has counts, then each such
/// bucket's impressions and clicks as LEB128 varints: an arm seen in a few hours of a day costs a
/// few bytes per hour, not 16 per bucket of the day.
pub(super) fn push_block(bytes: &mut Vec<u8>, block: &Block) {
    let start = bytes.len();
    bytes.extend_from_slice(&[0; 4]);
    let mut present = 0u32;
    for (place, &(imp, clk)) in block.iter().enumerate() {
        if (imp, clk) != (0, 0) {
            present |= 1 << place;
            push_varint(bytes, imp);
            push_varint(bytes, clk);
        }
    }
    bytes[start..start + 4].copy_from_slice(&present.to_le_bytes());
}

pub(super) fn take_block(bytes: &mut &[u8]) -> Option<Block> {
    let (present, rest) = bytes.split_at_checked(4)?;
    *bytes = rest;
    let present = u32::from_le_bytes(present.try_into().ok()?);
    if present >> BLOCK_BUCKETS != 0 {
        return None;
    }
    let mut block = EMPTY_BLOCK;
    for (place, cell) in block.iter_mut().enumerate() {
        if present & (1 << place) != 0 {
            *cell = take_counts(bytes)?;
        }
    }
    Some(block)
}

fn push_varint(bytes: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        bytes.push(v as u8 | 0x80);
        v >>= 7;
    }
    bytes.push(v as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        v |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn take_counts(bytes: &mut &[u8]) -> Option<(u64, u64)> {
    Some((take_varint(bytes)?, take_varint(bytes)?))
}

/// A slot row's entries: each banner (its length as a varint, then its bytes), in name order,
/// followed by what `push` writes of its value. Entries that `keep` refuses are left out.
fn encode_entries<'a, T>(
    entries: impl IntoIterator<Item = (&'a [u8], T)>,
    keep: impl Fn(&T) -> bool,
    push: impl Fn(&mut Vec<u8>, &T),
) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (banner, value) in entries {
        if keep(&value) {
            push_varint(&mut bytes, banner.len() as u64);
            bytes.extend_from_slice(banner);
            push(&mut bytes, &value);
        }
    }
    bytes
}

/// The entries [`encode_entries`] wrote, each value read by `take`; `None` unless the banners are
/// non-empty, in strictly increasing order, and the bytes end with the last entry.
fn decode_entries<'v, T>(
    mut bytes: &'v [u8],
    take: impl Fn(&mut &'v [u8]) -> Option<T>,
) -> Option<Vec<(&'v [u8], T)>> {
    let mut entries: Vec<(&'v [u8], T)> = Vec::new();
    while !bytes.is_empty() {
        let len = usize::try_from(take_varint(&mut bytes)?).ok()?;
        let (banner, rest) = bytes.split_at_checked(len)?;
        bytes = rest;
        if banner.is_empty() || entries.last().is_some_and(|(last, _)| *last >= banner) {
            return None;
        }
        let value = take(&mut bytes)?;
        entries.push((banner, value));
    }
    Some(entries)
}

/// A banner of a slot row and its value.
pub(super) type Entry<'v, T> = (&'v [u8], T);

/// A [`SLOT_TOTALS`] value: each banner with counts, then its impressions and clicks as varints.
fn encode_totals<'a>(entries: impl IntoIterator<Item = (&'a [u8], (u64, u64))>) -> Vec<u8> {
    encode_entries(
        entries,
        |&counts| counts != (0, 0),
        |bytes, &(imp, clk)| {
            push_varint(bytes, imp);
            push_varint(bytes, clk);
        },
    )
}

pub(super) fn decode_totals(bytes: &[u8]) -> Result<Vec<Entry<'_, (u64, u64)>>, redb::Error> {
    decode_entries(bytes, take_counts).ok_or_else(|| corrupt("slot_totals value", bytes))
}

/// A [`SLOT_BLOCKS`] value: each banner with counts in the block, then its block as
/// [`push_block`] encodes it.
fn encode_slot_blocks<'a>(entries: impl IntoIterator<Item = (&'a [u8], Block)>) -> Vec<u8> {
    encode_entries(entries, |block| *block != EMPTY_BLOCK, push_block)
}

pub(super) fn decode_slot_blocks(bytes: &[u8]) -> Result<Vec<Entry<'_, Block>>, redb::Error> {
    decode_entries(bytes, take_block).ok_or_else(|| corrupt("slot_blocks value", bytes))
}

/// Calls `each` with every entry of the slot row keyed `slot_key`, and its arm's key: the slot
/// key, the banner, 0 (read by [`decode_arm`]).
pub(super) fn each_arm<T>(
    slot_key: &[u8],
    entries: Vec<(&[u8], T)>,
    mut each: impl FnMut(&[u8], T) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let mut arm = Vec::with_capacity(slot_key.len() + 16);
    arm.extend_from_slice(slot_key);
    for (banner, value) in entries {
        arm.truncate(slot_key.len());
        arm.extend_from_slice(banner);
        arm.push(0);
        each(&arm, value)?;
    }
    Ok(())
}

pub(super) fn corrupt(what: &str, bytes: &[u8]) -> redb::Error {
    redb::StorageError::Corrupted(format!("{what} {bytes:?}")).into()
}

/// Writes the new absolute counts of `rows` (an all-time row, or a bucket's cell within its
/// block row); a count of (0, 0) removes the row or cell.
pub(super) fn write_counts<'k>(
    tx: &redb::WriteTransaction,
    rows: impl Iterator<Item = (&'k CountKey, Counts)>,
) -> Result<(), redb::Error> {
    write_encoded_counts(tx, EncodedCounts::of(rows))
}

type BlockChanges = [Option<(u64, u64)>; BLOCK_BUCKETS as usize];

/// A slot row's key and the changes to it, by banner in name order.
type SlotChanges<'k, C> = (Vec<u8>, Vec<(&'k str, C)>);

/// Count rows grouped into the slot rows they change, in key order and each row's banners in name
/// order: built before the write transaction, so that a writer holds redb's single write lock
/// only to read, merge and insert.
pub(super) struct EncodedCounts<'k> {
    totals: Vec<SlotChanges<'k, (u64, u64)>>,
    blocks: Vec<SlotChanges<'k, BlockChanges>>,
}

impl<'k> EncodedCounts<'k> {
    /// The rows grouped by slot row; where rows share a key, the later one wins.
    pub(super) fn of(rows: impl Iterator<Item = (&'k CountKey, Counts)>) -> Self {
        // Each slot is encoded once; rows refer to it by number, and sort by its rank in key
        // order, so that sorting compares integers and banners, not whole keys.
        let mut slot_ids: FxHashMap<[&'k str; 3], u32> = FxHashMap::default();
        let mut slot_keys: Vec<Vec<u8>> = Vec::new();
        let mut totals: Vec<(u32, &'k str, (u64, u64))> = Vec::new();
        // A block entry per run of rows of one (block, arm), its changes by index: a sink's rows
        // come grouped by arm, so runs are whole blocks and the merge below finds nothing to
        // merge.
        let mut blocks: Vec<(i64, u32, &'k str, u32)> = Vec::new();
        let mut block_changes: Vec<BlockChanges> = Vec::new();
        let mut last: Option<(&'k ArmKey, u32, Option<i64>)> = None;
        for (key, counts) in rows {
            let arm: &'k ArmKey = &key.arm;
            let slot = match last {
                Some((seen, slot, _)) if std::ptr::eq(seen, arm) || *seen == *arm => slot,
                _ => {
                    let names = [arm.tenant.as_str(), arm.city.as_str(), arm.slot.as_str()];
                    let next = slot_keys.len() as u32;
                    let slot = *slot_ids.entry(names).or_insert_with(|| {
                        slot_keys.push(slot_key(names[0], names[1], names[2]));
                        next
                    });
                    last = Some((arm, slot, None));
                    slot
                }
            };
            let counts = (counts.impressions, counts.clicks);
            if key.bucket == ALL_TIME {
                totals.push((slot, &arm.banner, counts));
                continue;
            }
            let (block, place) = block_of(key.bucket);
            if let Some((_, _, last_block)) = last.as_mut().filter(|l| l.2 != Some(block)) {
                *last_block = Some(block);
                blocks.push((block, slot, &arm.banner, block_changes.len() as u32));
                block_changes.push([None; BLOCK_BUCKETS as usize]);
            }
            if let Some(changes) = block_changes.last_mut() {
                changes[place] = Some(counts);
            }
        }
        let mut by_key: Vec<u32> = (0..slot_keys.len() as u32).collect();
        by_key.sort_unstable_by(|&a, &b| slot_keys[a as usize].cmp(&slot_keys[b as usize]));
        let mut rank = vec![0u32; slot_keys.len()];
        for (r, &slot) in by_key.iter().enumerate() {
            rank[slot as usize] = r as u32;
        }
        // Stable sorts: of rows with one key, the later stays later.
        totals.sort_by(|a, b| (rank[a.0 as usize], a.1).cmp(&(rank[b.0 as usize], b.1)));
        blocks.sort_by(|a, b| (a.0, rank[a.1 as usize], a.2).cmp(&(b.0, rank[b.1 as usize], b.2)));
        let mut encoded = Self {
            totals: Vec::new(),
            blocks: Vec::new(),
        };
        for row in totals.chunk_by(|a, b| a.0 == b.0) {
            let mut banners: Vec<(&'k str, (u64, u64))> = Vec::with_capacity(row.len());
            for &(_, banner, counts) in row {
                match banners.last_mut() {
                    Some(last) if last.0 == banner => last.1 = counts,
                    _ => banners.push((banner, counts)),
                }
            }
            encoded
                .totals
                .push((slot_keys[row[0].0 as usize].clone(), banners));
        }
        for row in blocks.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let mut banners: Vec<(&'k str, BlockChanges)> = Vec::with_capacity(row.len());
            for &(_, _, banner, changes) in row {
                let changes = &block_changes[changes as usize];
                match banners.last_mut() {
                    Some((last, merged)) if *last == banner => {
                        for (cell, change) in merged.iter_mut().zip(changes) {
                            if change.is_some() {
                                *cell = *change;
                            }
                        }
                    }
                    _ => banners.push((banner, *changes)),
                }
            }
            let (block, slot) = (row[0].0, row[0].1 as usize);
            let mut key = ordered_i64(block).to_vec();
            key.extend_from_slice(&slot_keys[slot]);
            encoded.blocks.push((key, banners));
        }
        encoded
    }
}

/// A slot row's entries with `changes` (by banner, in name order) applied: `apply` gets the
/// stored value, if any, and the change.
fn merge_by_banner<'a, T, C>(
    stored: Vec<(&'a [u8], T)>,
    changes: Vec<(&'a [u8], C)>,
    apply: impl Fn(Option<T>, C) -> T,
) -> Vec<(&'a [u8], T)> {
    let mut merged = Vec::with_capacity(stored.len().max(changes.len()));
    let mut stored = stored.into_iter().peekable();
    for (banner, change) in changes {
        while let Some(before) = stored.next_if(|(b, _)| *b < banner) {
            merged.push(before);
        }
        let old = stored.next_if(|(b, _)| *b == banner).map(|(_, v)| v);
        merged.push((banner, apply(old, change)));
    }
    merged.extend(stored);
    merged
}

/// Writes [`EncodedCounts`] as [`write_counts`] does: each slot row read, merged with its
/// changes, and written back (or removed once no banner has counts).
pub(super) fn write_encoded_counts(
    tx: &redb::WriteTransaction,
    counts: EncodedCounts<'_>,
) -> Result<(), redb::Error> {
    merge_slot_rows(
        tx,
        SLOT_TOTALS,
        counts.totals,
        decode_totals,
        |_, totals| totals,
        |e| encode_totals(e),
    )?;
    let apply_block_changes = |old: Option<Block>, changes: BlockChanges| {
        let mut block = old.unwrap_or(EMPTY_BLOCK);
        for (cell, change) in block.iter_mut().zip(changes) {
            if let Some(counts) = change {
                *cell = counts;
            }
        }
        block
    };
    merge_slot_rows(
        tx,
        SLOT_BLOCKS,
        counts.blocks,
        decode_slot_blocks,
        apply_block_changes,
        |e| encode_slot_blocks(e),
    )
}

/// How a slot row's stored value reads: its banners in name order, each with its value.
type DecodeRow<T> = for<'v> fn(&'v [u8]) -> Result<Vec<Entry<'v, T>>, redb::Error>;

/// Each slot row of `table` in `rows` read, merged with its changes by banner (`apply` gives a
/// banner's new value from its stored one and its change) and written back, or removed once no
/// banner is left.
fn merge_slot_rows<T, C>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&[u8], &[u8]>,
    rows: Vec<SlotChanges<'_, C>>,
    decode: DecodeRow<T>,
    apply: impl Fn(Option<T>, C) -> T + Copy,
    encode: fn(Vec<Entry<'_, T>>) -> Vec<u8>,
) -> Result<(), redb::Error> {
    let mut t = tx.open_table(table)?;
    for (key, changes) in rows {
        // Copied out: the table is written below while the stored row would still be borrowed.
        let stored = t.get(key.as_slice())?.map(|v| v.value().to_vec());
        let stored = stored
            .as_deref()
            .map(decode)
            .transpose()?
            .unwrap_or_default();
        let changes = changes
            .into_iter()
            .map(|(b, c)| (b.as_bytes(), c))
            .collect();
        put_or_remove(
            &mut t,
            &key,
            &encode(merge_by_banner(stored, changes, apply)),
        )?;
    }
    Ok(())
}

/// Stores a slot row, or removes it when no banner is left in it.
fn put_or_remove(
    t: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    key: &[u8],
    value: &[u8],
) -> Result<(), redb::Error> {
    if value.is_empty() {
        t.remove(key)?;
    } else {
        t.insert(key, value)?;
    }
    Ok(())
}

/// Gives `name` of `tenant`'s `part` a new version and moves the change marker to it.
pub(super) fn bump_version(
    tx: &redb::WriteTransaction,
    tenant: &str,
    part: Part,
    name: &str,
) -> Result<(), redb::Error> {
    let version = next_version();
    tx.open_table(VERSIONS)?
        .insert((tenant, part.as_str(), name), version)?;
    tx.open_table(META)?
        .insert(META_CHANGE_MARKER, version.to_string().as_str())?;
    Ok(())
}

/// The block keys in `block` of the slots whose leading names are `names` (a tenant, or a tenant
/// and a city): `block name 0 … name 0` up to, not including, `block name 0 … name 1`.
fn block_range(block: i64, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
    names_range(&ordered_i64(block), names)
}

/// The key range of the slots whose leading names are `names`, in a table whose keys are
/// `prefix` then a [`slot_key`].
pub(super) fn names_range(prefix: &[u8], names: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let bound = |end: u8| {
        let mut key = prefix.to_vec();
        for (i, name) in names.iter().enumerate() {
            key.extend_from_slice(name.as_bytes());
            key.push(if i + 1 == names.len() { end } else { 0 });
        }
        key
    };
    (bound(0), bound(1))
}

/// The first and last block stored, if any.
fn stored_blocks(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<Option<(i64, i64)>, redb::Error> {
    let block = |key: &[u8]| {
        key.get(..8)
            .and_then(from_ordered_i64)
            .ok_or_else(|| corrupt("slot_blocks key", key))
    };
    match (t.first()?, t.last()?) {
        (Some((first, _)), Some((last, _))) => {
            Ok(Some((block(first.value())?, block(last.value())?)))
        }
        _ => Ok(None),
    }
}

/// Each (block, arm) with counts in the blocks that hold buckets from `from` on, of the arms
/// whose leading names are `names` (a tenant, or a tenant and a city; none: every arm), reading
/// only their key ranges: the arm's key as [`each_arm`] gives it, in key order within each block.
pub(super) fn block_rows_from(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    names: &[&str],
    from: i64,
    mut each: impl FnMut(i64, &[u8], &Block) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let Some((first, last)) = stored_blocks(t)? else {
        return Ok(());
    };
    let mut each_row = |entry: BlockEntry<'_>| {
        let (k, v) = entry?;
        let (block, slot) = k
            .value()
            .split_at_checked(8)
            .and_then(|(block, slot)| Some((from_ordered_i64(block)?, slot)))
            .ok_or_else(|| corrupt("slot_blocks key", k.value()))?;
        each_arm(slot, decode_slot_blocks(v.value())?, |arm, cells| {
            each(block, arm, &cells)
        })
    };
    if names.is_empty() {
        let start = ordered_i64(block_of(from).0);
        for entry in t.range(start.as_slice()..)? {
            each_row(entry)?;
        }
        return Ok(());
    }
    for block in first.max(block_of(from).0)..=last {
        let (start, end) = block_range(block, names);
        for entry in t.range(start.as_slice()..end.as_slice())? {
            each_row(entry)?;
        }
    }
    Ok(())
}

type BlockEntry<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

/// Deletes one shard's bucket counts before bucket `keep_from` (whole block rows, and the
/// earlier cells of the block that holds `keep_from`).
pub(super) fn expire_buckets(
    tx: &redb::WriteTransaction,
    shard: &ShardKey,
    keep_from: i64,
) -> Result<(), redb::Error> {
    let mut t = tx.open_table(SLOT_BLOCKS)?;
    let Some((first, _)) = stored_blocks(&t)? else {
        return Ok(());
    };
    let (keep_block, keep_place) = block_of(keep_from);
    for block in first..=keep_block {
        let (start, end) = block_range(block, &[&shard.tenant, &shard.city]);
        if block < keep_block {
            t.retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
            continue;
        }
        let mut trimmed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for entry in t.range(start.as_slice()..end.as_slice())? {
            let (k, v) = entry?;
            let entries = decode_slot_blocks(v.value())?;
            let earlier = |cells: &Block| cells[..keep_place].iter().any(|&c| c != (0, 0));
            if entries.iter().any(|(_, cells)| earlier(cells)) {
                let kept = entries.into_iter().map(|(banner, mut cells)| {
                    cells[..keep_place].fill((0, 0));
                    (banner, cells)
                });
                trimmed.push((k.value().to_vec(), encode_slot_blocks(kept)));
            }
        }
        for (key, value) in trimmed {
            put_or_remove(&mut t, &key, &value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    /// A slot row's key and its changes by banner, owned.
    type Owned<C> = (Vec<u8>, Vec<(String, C)>);

    #[test]
    fn slot_keys_sort_like_their_tuples_and_arm_keys_extend_them() {
        let tuples = [
            ("ajio", "pune", "hero"),
            ("ajio", "pune", "hero2"),
            ("ajio", "pune-2", "a"),
            ("ajio2", "a", "a"),
            ("b", "a", "a"),
        ];
        let keys: Vec<Vec<u8>> = tuples.iter().map(|&(t, c, s)| slot_key(t, c, s)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        for (key, &(t, c, _)) in keys.iter().zip(&tuples) {
            assert_eq!(shard_of_slot_key(key), Some((t, c)));
        }
        let arm = ArmKey::new("ajio", "hero", "pune", "b1");
        let key = arm_key(&arm);
        assert!(key.starts_with(&slot_key("ajio", "pune", "hero")));
        assert_eq!(decode_arm(&key), Some(arm));
        assert_eq!(shard_of_slot_key(b"a\0b\0"), None);
        assert_eq!(shard_of_slot_key(b"a\0b\0c\0d\0"), None);
        assert_eq!(decode_arm(b"a\0b\0c\0"), None);
        assert_eq!(decode_arm(b"a\0b\0c\0d\0e\0"), None);
    }

    #[test]
    fn slot_rows_keep_only_the_banners_and_cells_with_counts_and_refuse_what_they_did_not_write() {
        let mut block = EMPTY_BLOCK;
        block[0] = (7, 1);
        block[5] = (0, 2);
        block[23] = (u64::MAX, 3);
        let entries: [(&[u8], Block); 3] = [(b"b1", block), (b"b2", EMPTY_BLOCK), (b"b3", block)];
        let bytes = encode_slot_blocks(entries);
        // Each kept banner: a length byte, its name, the flags, the cells' varints.
        assert_eq!(bytes.len(), 2 * (1 + 2 + 4 + 2 + 2 + 10 + 1));
        assert_eq!(
            decode_slot_blocks(&bytes).unwrap(),
            vec![(&b"b1"[..], block), (&b"b3"[..], block)]
        );
        let totals = encode_totals([(&b"a"[..], (3, 1)), (b"b", (0, 0)), (b"c", (300, 0))]);
        assert_eq!(
            decode_totals(&totals).unwrap(),
            vec![(&b"a"[..], (3, 1)), (&b"c"[..], (300, 0))]
        );
        assert_eq!(encode_totals([(&b"a"[..], (0, 0))]), Vec::<u8>::new());
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut bytes = Vec::new();
            push_varint(&mut bytes, v);
            let mut rest = bytes.as_slice();
            assert_eq!(take_varint(&mut rest), Some(v));
            assert!(rest.is_empty());
        }
        let out_of_order = [
            encode_totals([(&b"b"[..], (1, 0))]),
            encode_totals([(&b"a"[..], (1, 0))]),
        ];
        for bad in [
            // Truncated; trailing bytes; banners out of order, repeated or empty.
            totals[..totals.len() - 1].to_vec(),
            [totals.as_slice(), &[0]].concat(),
            out_of_order.concat(),
            [totals.as_slice(), totals.as_slice()].concat(),
            vec![0, 1, 0],
            // A varint past 64 bits.
            vec![
                1, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0,
            ],
        ] {
            assert!(decode_totals(&bad).is_err(), "{bad:?}");
        }
        let mut past_block = vec![1, b'a'];
        past_block.extend_from_slice(&(1u32 << 24).to_le_bytes());
        assert!(decode_slot_blocks(&past_block).is_err());
        assert!(decode_slot_blocks(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn encoded_counts_are_grouped_by_slot_row_in_key_order_and_the_last_row_of_a_key_wins(
            rows in proptest::collection::vec(
                (0usize..4, proptest::option::of(0i64..72), 0u64..4, 0u64..2),
                0..60,
            ),
        ) {
            let arms = [
                ArmKey::new("ajio", "hero", "pune", "b1"),
                ArmKey::new("ajio", "hero", "pune", "b2"),
                ArmKey::new("ajio", "side", "pune", "b1"),
                ArmKey::new("myntra", "hero", "delhi", "b1"),
            ]
            .map(Arc::new);
            let keys: Vec<CountKey> = rows
                .iter()
                .map(|&(arm, bucket, _, _)| {
                    CountKey::new(arms[arm].clone(), bucket.unwrap_or(ALL_TIME))
                })
                .collect();
            type Changes = BTreeMap<String, BlockChanges>;
            let mut totals: BTreeMap<Vec<u8>, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
            let mut blocks: BTreeMap<Vec<u8>, Changes> = BTreeMap::new();
            for (key, &(_, _, imp, clk)) in keys.iter().zip(&rows) {
                let arm = &key.arm;
                let slot = slot_key(&arm.tenant, &arm.city, &arm.slot);
                if key.bucket == ALL_TIME {
                    totals.entry(slot).or_default().insert(arm.banner.clone(), (imp, clk));
                } else {
                    let (block, place) = block_of(key.bucket);
                    let row = [ordered_i64(block).as_slice(), &slot].concat();
                    let changes = blocks
                        .entry(row)
                        .or_default()
                        .entry(arm.banner.clone())
                        .or_insert([None; BLOCK_BUCKETS as usize]);
                    changes[place] = Some((imp, clk));
                }
            }
            let encoded = EncodedCounts::of(
                keys.iter().zip(&rows).map(|(key, &(_, _, imp, clk))| (key, Counts::new(imp, clk))),
            );
            let got_totals: Vec<Owned<(u64, u64)>> = encoded
                .totals
                .into_iter()
                .map(|(k, b)| (k, b.into_iter().map(|(b, c)| (b.to_string(), c)).collect()))
                .collect();
            let want_totals: Vec<Owned<(u64, u64)>> =
                totals.into_iter().map(|(k, b)| (k, b.into_iter().collect())).collect();
            proptest::prop_assert_eq!(got_totals, want_totals);
            let got_blocks: Vec<Owned<BlockChanges>> = encoded
                .blocks
                .into_iter()
                .map(|(k, b)| (k, b.into_iter().map(|(b, c)| (b.to_string(), c)).collect()))
                .collect();
            let want_blocks: Vec<Owned<BlockChanges>> =
                blocks.into_iter().map(|(k, b)| (k, b.into_iter().collect())).collect();
            proptest::prop_assert_eq!(got_blocks, want_blocks);
        }
    }
}
