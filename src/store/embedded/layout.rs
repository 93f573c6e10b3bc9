//! The embedded store's layout (docs/architecture.md, "Store layouts"): its redb tables and how
//! keys and values are encoded in them. Count keys are byte strings whose order is the order of
//! their tuples, so that a tenant or a window is one key range; bucket counts are kept in blocks of
//! [`BLOCK_BUCKETS`] consecutive buckets per arm.

use redb::{ReadableTable, TableDefinition};

use crate::model::{ArmKey, CountKey, Counts, Event, ShardKey, ALL_TIME};
use crate::store::customer_rows::CustomerEventRow;
use crate::store::{next_version, Part};

/// (tenant, city, slot, banner) → all-time (impressions, clicks), the key encoded by
/// [`arm_key`]: byte order is tuple order, and comparing keys is a memcmp.
pub(super) const ARM_TOTALS: TableDefinition<&[u8], (u64, u64)> =
    TableDefinition::new("arm_totals");
/// (block, tenant, city, slot, banner) → (impressions, clicks) of each of the block's
/// [`BLOCK_BUCKETS`] buckets that has any, the key encoded by [`block_key`], the value by
/// [`encode_block`]. One row carries a day of hourly buckets, and blocks lead the key, so that a
/// backfill, whose epochs move forward in time, appends few rows near the end of the table instead
/// of inserting one row per (arm, hour) all over it, and a window is one range of the table.
/// (Stores written before the sparse encoding kept every cell of a block in `arm_blocks`.)
pub(super) const ARM_BLOCKS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("arm_block_cells");
/// Consecutive buckets kept in one [`ARM_BLOCKS`] row (a day of the default hourly buckets).
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

/// `tenant 0 city 0 slot 0 banner 0`. Names are `[a-z0-9_-]+`, so the 0 separators keep the
/// order of the (tenant, city, slot, banner) tuple.
fn push_arm(key: &mut Vec<u8>, arm: &ArmKey) {
    for name in [&arm.tenant, &arm.city, &arm.slot, &arm.banner] {
        key.extend_from_slice(name.as_bytes());
        key.push(0);
    }
}

pub(super) fn arm_key(arm: &ArmKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(arm_len(arm));
    push_arm(&mut key, arm);
    key
}

fn arm_len(arm: &ArmKey) -> usize {
    arm.tenant.len() + arm.city.len() + arm.slot.len() + arm.banner.len() + 4
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

pub(super) type Block = [(u64, u64); BLOCK_BUCKETS as usize];

const _: () = assert!(BLOCK_BUCKETS <= 32, "a block's cells are flagged in a u32");

/// A little-endian u32 with bit i set when bucket i of the block has counts, then each such
/// bucket's impressions and clicks as LEB128 varints: an arm seen in a few hours of a day costs a
/// few bytes per hour, not 16 per bucket of the day.
pub(super) fn encode_block(block: &Block) -> Vec<u8> {
    let mut present = 0u32;
    let mut bytes = vec![0; 4];
    for (place, &(imp, clk)) in block.iter().enumerate() {
        if (imp, clk) != (0, 0) {
            present |= 1 << place;
            push_varint(&mut bytes, imp);
            push_varint(&mut bytes, clk);
        }
    }
    bytes[..4].copy_from_slice(&present.to_le_bytes());
    bytes
}

fn decode_block(bytes: &[u8]) -> Option<Block> {
    let (present, mut rest) = bytes.split_at_checked(4)?;
    let present = u32::from_le_bytes(present.try_into().ok()?);
    if present >> BLOCK_BUCKETS != 0 {
        return None;
    }
    let mut block = [(0, 0); BLOCK_BUCKETS as usize];
    for (place, cell) in block.iter_mut().enumerate() {
        if present & (1 << place) != 0 {
            *cell = (take_varint(&mut rest)?, take_varint(&mut rest)?);
        }
    }
    rest.is_empty().then_some(block)
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

pub(super) fn corrupt(what: &str, bytes: &[u8]) -> redb::Error {
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
pub(super) fn block_rows<'a, I: Iterator<Item = BlockEntry<'a>>>(
    range: I,
) -> impl Iterator<Item = Result<(i64, ArmKey, Block), redb::Error>> + use<'a, I> {
    range.map(|entry| {
        let (k, v) = entry?;
        let (block, arm) =
            decode_block_key(k.value()).ok_or_else(|| corrupt("arm_block_cells key", k.value()))?;
        let cells =
            decode_block(v.value()).ok_or_else(|| corrupt("arm_block_cells value", v.value()))?;
        Ok((block, arm, cells))
    })
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

/// Count rows with their keys encoded, in key order: built before the write transaction, so
/// that a writer holds redb's single write lock only to read and insert.
pub(super) struct EncodedCounts {
    totals: Vec<(Vec<u8>, u64, u64)>,
    blocks: Vec<(Vec<u8>, BlockChanges)>,
}

impl EncodedCounts {
    /// The rows' keys encoded and sorted; where rows share a key, the later one wins.
    pub(super) fn of<'k>(rows: impl Iterator<Item = (&'k CountKey, Counts)>) -> Self {
        let mut totals: Vec<(Vec<u8>, u64, u64)> = Vec::new();
        // A block row per run of rows of one (block, arm), with its place in arrival order: a
        // sink's rows come grouped by arm, so runs are whole blocks and the merge below finds
        // nothing to merge.
        let mut block_keys: Vec<(Vec<u8>, u32)> = Vec::new();
        let mut block_changes: Vec<BlockChanges> = Vec::new();
        let mut last: Option<(i64, &ArmKey)> = None;
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
            if last != Some(id) {
                block_keys.push((block_key(block, &key.arm), block_changes.len() as u32));
                block_changes.push([None; BLOCK_BUCKETS as usize]);
                last = Some(id);
            }
            if let Some(changes) = block_changes.last_mut() {
                changes[place] = Some((imp, clk));
            }
        }
        // In key order, so that the B-trees are written front to back; the keys are encoded
        // first so that sorting compares bytes, not four names, and the blocks' cells stay put
        // while their keys move.
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        totals.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                (kept.1, kept.2) = (later.1, later.2);
            }
            same
        });
        block_keys.sort_unstable();
        let mut blocks: Vec<(Vec<u8>, BlockChanges)> = Vec::with_capacity(block_keys.len());
        for (key, index) in block_keys {
            let changes = &block_changes[index as usize];
            match blocks.last_mut() {
                Some((last, merged)) if *last == key => {
                    for (cell, change) in merged.iter_mut().zip(changes) {
                        if change.is_some() {
                            *cell = *change;
                        }
                    }
                }
                _ => blocks.push((key, *changes)),
            }
        }
        Self { totals, blocks }
    }
}

/// Writes [`EncodedCounts`] as [`write_counts`] does.
pub(super) fn write_encoded_counts(
    tx: &redb::WriteTransaction,
    counts: EncodedCounts,
) -> Result<(), redb::Error> {
    let mut t = tx.open_table(ARM_TOTALS)?;
    for (key, imp, clk) in counts.totals {
        if imp == 0 && clk == 0 {
            t.remove(key.as_slice())?;
        } else {
            t.insert(key.as_slice(), (imp, clk))?;
        }
    }
    let mut t = tx.open_table(ARM_BLOCKS)?;
    for (key, changes) in counts.blocks {
        let written: Block = changes.map(|change| change.unwrap_or((0, 0)));
        // Written before it is read: a block not stored yet (all of a backfill's, a new day's)
        // costs one descent of the tree; one that was is merged with what it replaced.
        let replaced = match t.insert(key.as_slice(), encode_block(&written).as_slice())? {
            Some(v) => Some(
                decode_block(v.value())
                    .ok_or_else(|| corrupt("arm_block_cells value", v.value()))?,
            ),
            None => None,
        };
        let block = match replaced {
            None => written,
            Some(mut block) => {
                for (cell, change) in block.iter_mut().zip(changes) {
                    if let Some(counts) = change {
                        *cell = counts;
                    }
                }
                if block != written {
                    t.insert(key.as_slice(), encode_block(&block).as_slice())?;
                }
                block
            }
        };
        if block.iter().all(|&c| c == (0, 0)) {
            t.remove(key.as_slice())?;
        }
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

/// The block keys in `block` of the arms whose leading names are `names` (a tenant, or a
/// tenant and a city): `block name 0 … name 0` up to, not including, `block name 0 … name 1`.
fn block_range(block: i64, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
    names_range(&ordered_i64(block), names)
}

/// The key range of the arms whose leading names are `names`, in a table whose keys are `prefix`
/// then an encoded arm.
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
            .ok_or_else(|| corrupt("arm_block_cells key", key))
    };
    match (t.first()?, t.last()?) {
        (Some((first, _)), Some((last, _))) => {
            Ok(Some((block(first.value())?, block(last.value())?)))
        }
        _ => Ok(None),
    }
}

/// Each (block, arm) row in the blocks that hold buckets from `from` on, of the arms whose
/// leading names are `names` (a tenant, or a tenant and a city; none: every arm), reading only
/// their key ranges: the arm as [`arm_key`] encodes it, in key order within each block.
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
        let (block, arm) = k
            .value()
            .split_at_checked(8)
            .and_then(|(block, arm)| Some((from_ordered_i64(block)?, arm)))
            .ok_or_else(|| corrupt("arm_block_cells key", k.value()))?;
        let cells =
            decode_block(v.value()).ok_or_else(|| corrupt("arm_block_cells value", v.value()))?;
        each(block, arm, &cells)
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

/// Deletes one shard's bucket counts before bucket `keep_from` (whole block rows, and the
/// earlier cells of the block that holds `keep_from`).
pub(super) fn expire_buckets(
    tx: &redb::WriteTransaction,
    shard: &ShardKey,
    keep_from: i64,
) -> Result<(), redb::Error> {
    let mut t = tx.open_table(ARM_BLOCKS)?;
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
        let mut trimmed = Vec::new();
        for row in block_rows(t.range(start.as_slice()..end.as_slice())?) {
            let (block, arm, mut cells) = row?;
            if cells[..keep_place].iter().any(|&c| c != (0, 0)) {
                cells[..keep_place].fill((0, 0));
                trimmed.push((block_key(block, &arm), cells));
            }
        }
        for (key, cells) in trimmed {
            if cells.iter().all(|&c| c == (0, 0)) {
                t.remove(key.as_slice())?;
            } else {
                t.insert(key.as_slice(), encode_block(&cells).as_slice())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

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
    }

    #[test]
    fn blocks_keep_only_the_cells_with_counts_and_refuse_what_they_did_not_write() {
        let mut block = [(0, 0); BLOCK_BUCKETS as usize];
        assert_eq!(encode_block(&block), vec![0; 4]);
        assert_eq!(decode_block(&encode_block(&block)), Some(block));
        block[0] = (7, 1);
        block[5] = (0, 2);
        block[23] = (u64::MAX, 3);
        let bytes = encode_block(&block);
        assert_eq!(bytes.len(), 4 + 2 + 2 + 10 + 1);
        assert_eq!(decode_block(&bytes), Some(block));
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
        // Truncated, trailing bytes, a bucket past the block, a varint past 64 bits.
        assert_eq!(decode_block(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_block(&[bytes.as_slice(), &[0]].concat()), None);
        assert_eq!(decode_block(&(1u32 << 24).to_le_bytes()), None);
        assert_eq!(
            decode_block(&[
                1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0
            ]),
            None
        );
        assert_eq!(decode_block(&[0; 3]), None);
    }

    proptest::proptest! {
        #[test]
        fn encoded_counts_are_sorted_by_key_and_the_last_row_of_a_key_wins(
            rows in proptest::collection::vec(
                (0usize..3, proptest::option::of(0i64..72), 0u64..4, 0u64..2),
                0..60,
            ),
        ) {
            let arms = [
                ArmKey::new("ajio", "hero", "pune", "b1"),
                ArmKey::new("ajio", "hero", "pune", "b2"),
                ArmKey::new("myntra", "hero", "delhi", "b1"),
            ]
            .map(Arc::new);
            let keys: Vec<CountKey> = rows
                .iter()
                .map(|&(arm, bucket, _, _)| {
                    CountKey::new(arms[arm].clone(), bucket.unwrap_or(ALL_TIME))
                })
                .collect();
            let mut totals = std::collections::BTreeMap::new();
            let mut blocks = std::collections::BTreeMap::new();
            for (key, &(_, _, imp, clk)) in keys.iter().zip(&rows) {
                if key.bucket == ALL_TIME {
                    totals.insert(arm_key(&key.arm), (imp, clk));
                } else {
                    let (block, place) = block_of(key.bucket);
                    let changes: &mut BlockChanges = blocks
                        .entry(block_key(block, &key.arm))
                        .or_insert([None; BLOCK_BUCKETS as usize]);
                    changes[place] = Some((imp, clk));
                }
            }
            let encoded = EncodedCounts::of(
                keys.iter().zip(&rows).map(|(key, &(_, _, imp, clk))| (key, Counts::new(imp, clk))),
            );
            let want_totals: Vec<(Vec<u8>, u64, u64)> =
                totals.into_iter().map(|(k, (imp, clk))| (k, imp, clk)).collect();
            proptest::prop_assert_eq!(encoded.totals, want_totals);
            proptest::prop_assert_eq!(encoded.blocks, blocks.into_iter().collect::<Vec<_>>());
        }
    }
}
