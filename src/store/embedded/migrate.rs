//! Stores written by earlier builds are moved to the current layout when opened for writing: the
//! counts kept one row per bucket, blocks that kept every bucket's cell, and counts kept one row
//! per arm move into the slot rows; the customer history kept as JSON into the compact rows.

use std::collections::BTreeSet;
use std::sync::Arc;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

use super::layout::{
    bump_version, corrupt, decode_arm, from_ordered_i64, insert_customer_event, shard_of_slot_key,
    take_block, write_counts, Block, BLOCK_BUCKETS, CUSTOMER_EVENTS, PRIORS, SLOTS, SLOT_TOTALS,
    VERSIONS,
};
use crate::model::{CountKey, Counts, Event};
use crate::store::Part;

/// Where stores written before the block layout kept the counts: (tenant, city, slot, banner,
/// bucket) → (impressions, clicks), the key read by [`decode_legacy_arm_state_key`].
const LEGACY_ARM_STATE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("arm_counts");
/// Where stores written before the slot rows kept the all-time counts: (tenant, city, slot,
/// banner) as `tenant 0 city 0 slot 0 banner 0` → (impressions, clicks).
const ARM_TOTALS: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("arm_totals");
/// Where stores written before the slot rows kept the bucket counts: the block as
/// [`super::layout::ordered_i64`], then the arm as in [`ARM_TOTALS`] → the arm's block, as one
/// entry of a slot row encodes it.
const ARM_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("arm_block_cells");
/// Where stores written before the sparse block encoding kept the bucket counts: the key of
/// [`ARM_BLOCKS`] → every bucket's (impressions, clicks) as two little-endian u64.
const DENSE_ARM_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("arm_blocks");
/// Rows moved per write while moving counts: bounds the memory a move holds.
const MOVE_ROWS: usize = 1 << 16;
/// Where stores written before the compact encoding kept the customer history: the key of
/// [`CUSTOMER_EVENTS`] → the event as JSON.
const CUSTOMER_EVENTS_JSON: TableDefinition<(&str, &str, i64, &str), &str> =
    TableDefinition::new("customer_events");

/// Moves whatever an earlier layout left in the store into the current one.
pub(super) fn move_earlier_layouts(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let exists = |name: &str| -> Result<bool, redb::Error> {
        Ok(tx.list_tables()?.any(|t| t.name() == name))
    };
    if exists(DENSE_ARM_BLOCKS.name())? {
        move_blocks(tx, DENSE_ARM_BLOCKS, decode_dense_block)?;
    }
    if exists(ARM_BLOCKS.name())? {
        move_blocks(tx, ARM_BLOCKS, decode_arm_block)?;
    }
    if exists(ARM_TOTALS.name())? {
        move_arm_totals(tx)?;
    }
    if exists(LEGACY_ARM_STATE.name())? {
        move_legacy_counts(tx)?;
    }
    if exists(CUSTOMER_EVENTS_JSON.name())? {
        move_json_customer_history(tx)?;
    }
    if tx.open_table(VERSIONS)?.is_empty()? {
        version_every_part(tx)?;
    }
    Ok(())
}

/// Gives every shard, slot and priors of a store written before versions existed a version, so
/// that readers can tell when they change.
fn version_every_part(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut parts = BTreeSet::new();
    for entry in tx.open_table(SLOT_TOTALS)?.iter()? {
        let (k, _) = entry?;
        let (tenant, city) =
            shard_of_slot_key(k.value()).ok_or_else(|| corrupt("slot_totals key", k.value()))?;
        parts.insert((tenant.to_string(), Part::Shard, city.to_string()));
    }
    for entry in tx.open_table(SLOTS)?.iter()? {
        let (key, _) = entry?;
        let (tenant, slot) = key.value();
        parts.insert((tenant.to_string(), Part::Slot, slot.to_string()));
    }
    for entry in tx.open_table(PRIORS)?.iter()? {
        let (key, _) = entry?;
        let (tenant, slot, _) = key.value();
        parts.insert((tenant.to_string(), Part::Priors, slot.to_string()));
    }
    for (tenant, part, name) in parts {
        bump_version(tx, &tenant, part, &name)?;
    }
    Ok(())
}

/// `tenant 0 city 0 slot 0 banner 0` then the bucket as [`super::layout::ordered_i64`]: the key of
/// [`LEGACY_ARM_STATE`].
fn decode_legacy_arm_state_key(key: &[u8]) -> Option<CountKey> {
    let (arm, bucket) = key.split_at_checked(key.len().checked_sub(8)?)?;
    Some(CountKey {
        arm: Arc::new(decode_arm(arm)?),
        bucket: from_ordered_i64(bucket)?,
    })
}

/// Moves the counts of a store written before the block layout into the slot rows.
fn move_legacy_counts(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut rows = Vec::new();
    for entry in tx.open_table(LEGACY_ARM_STATE)?.iter()? {
        let (k, v) = entry?;
        let key = decode_legacy_arm_state_key(k.value())
            .ok_or_else(|| corrupt("arm_state key", k.value()))?;
        let (imp, clk) = v.value();
        rows.push((key, Counts::new(imp, clk)));
        write_when_full(tx, &mut rows)?;
    }
    write_counts(tx, rows.iter().map(|(k, c)| (k, *c)))?;
    tx.delete_table(LEGACY_ARM_STATE)?;
    Ok(())
}

/// Writes `rows` once they are [`MOVE_ROWS`], and empties them.
fn write_when_full(
    tx: &redb::WriteTransaction,
    rows: &mut Vec<(CountKey, Counts)>,
) -> Result<(), redb::Error> {
    if rows.len() >= MOVE_ROWS {
        write_counts(tx, rows.iter().map(|(k, c)| (k, *c)))?;
        rows.clear();
    }
    Ok(())
}

/// Moves the all-time counts of a store written before the slot rows into them.
fn move_arm_totals(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut rows = Vec::new();
    for entry in tx.open_table(ARM_TOTALS)?.iter()? {
        let (k, v) = entry?;
        let arm = decode_arm(k.value()).ok_or_else(|| corrupt("arm_totals key", k.value()))?;
        let (imp, clk) = v.value();
        rows.push((CountKey::all_time(Arc::new(arm)), Counts::new(imp, clk)));
        write_when_full(tx, &mut rows)?;
    }
    write_counts(tx, rows.iter().map(|(k, c)| (k, *c)))?;
    tx.delete_table(ARM_TOTALS)?;
    Ok(())
}

fn decode_dense_block(bytes: &[u8]) -> Option<Block> {
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

fn decode_arm_block(mut bytes: &[u8]) -> Option<Block> {
    take_block(&mut bytes).filter(|_| bytes.is_empty())
}

/// Moves the bucket counts of a store written before the slot rows (one row per (block, arm),
/// its value read by `decode`) into them.
fn move_blocks(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&[u8], &[u8]>,
    decode: fn(&[u8]) -> Option<Block>,
) -> Result<(), redb::Error> {
    let mut rows = Vec::new();
    for entry in tx.open_table(table)?.iter()? {
        let (k, v) = entry?;
        let bad = |what: &str, bytes: &[u8]| corrupt(&format!("{} {what}", table.name()), bytes);
        let (block, arm) = k
            .value()
            .split_at_checked(8)
            .and_then(|(block, arm)| Some((from_ordered_i64(block)?, decode_arm(arm)?)))
            .ok_or_else(|| bad("key", k.value()))?;
        let cells = decode(v.value()).ok_or_else(|| bad("value", v.value()))?;
        let arm = Arc::new(arm);
        for (place, &(imp, clk)) in cells.iter().enumerate() {
            if (imp, clk) != (0, 0) {
                let key = CountKey::new(arm.clone(), block * BLOCK_BUCKETS + place as i64);
                rows.push((key, Counts::new(imp, clk)));
            }
        }
        write_when_full(tx, &mut rows)?;
    }
    write_counts(tx, rows.iter().map(|(k, c)| (k, *c)))?;
    tx.delete_table(table)?;
    Ok(())
}

/// Moves the customer history of a store written before the compact encoding into it.
fn move_json_customer_history(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut history = tx.open_table(CUSTOMER_EVENTS)?;
    for entry in tx.open_table(CUSTOMER_EVENTS_JSON)?.iter()? {
        let (_, json) = entry?;
        let event = Event::from_json(json.value().as_bytes())
            .map_err(|e| redb::Error::Corrupted(format!("customer event {}: {e}", json.value())))?;
        insert_customer_event(&mut history, &event)?;
    }
    drop(history);
    tx.delete_table(CUSTOMER_EVENTS_JSON)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase};

    use super::super::layout::{arm_key, ordered_i64, push_block};
    use super::super::store::tests::{row, stored_rows, window};
    use super::super::EmbeddedStore;
    use super::*;
    use crate::model::{ArmKey, ALL_TIME};
    use crate::store::PosteriorStore;

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
            decision: Default::default(),
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
    fn a_store_with_dense_blocks_is_moved_to_the_slot_rows_on_open() {
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
            // The layout as the previous build wrote it: the all-time rows as now, each block
            // with all 24 cells of 16 bytes.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut totals = tx.open_table(ARM_TOTALS).unwrap();
                let mut blocks = tx.open_table(DENSE_ARM_BLOCKS).unwrap();
                let mut dense: std::collections::BTreeMap<Vec<u8>, [u8; 384]> = Default::default();
                for (k, c) in &rows {
                    if k.bucket == ALL_TIME {
                        totals
                            .insert(arm_key(&k.arm).as_slice(), (c.impressions, c.clicks))
                            .unwrap();
                        continue;
                    }
                    let mut key = ordered_i64(k.bucket.div_euclid(24)).to_vec();
                    key.extend_from_slice(&arm_key(&k.arm));
                    let cell = k.bucket.rem_euclid(24) as usize * 16;
                    let value = dense.entry(key).or_insert([0; 384]);
                    value[cell..cell + 8].copy_from_slice(&c.impressions.to_le_bytes());
                    value[cell + 8..cell + 16].copy_from_slice(&c.clicks.to_le_bytes());
                }
                for (key, value) in &dense {
                    blocks.insert(key.as_slice(), value.as_slice()).unwrap();
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
        assert_eq!(tables(&store), CURRENT_COUNT_TABLES);
    }

    /// The count tables a store has: only the current ones once it is moved.
    fn tables(store: &EmbeddedStore) -> Vec<String> {
        let tx = store.db.begin_read().unwrap();
        let mut names: Vec<String> = tx
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .filter(|n| n.starts_with("arm_") || CURRENT_COUNT_TABLES.contains(&n.as_str()))
            .collect();
        names.sort();
        names
    }

    const CURRENT_COUNT_TABLES: [&str; 2] = ["slot_blocks", "slot_totals"];

    #[test]
    fn a_store_with_a_row_per_arm_is_moved_to_the_slot_rows_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let mut rows = vec![
            row("ajio", "pune", "hero", "b1", ALL_TIME, 9, 2),
            row("ajio", "pune", "hero", "b1", 20, 4, 1),
            row("ajio", "pune", "hero", "b1", 25, 5, 1),
            row("ajio", "pune", "hero", "b2", ALL_TIME, 3, 0),
            row("ajio", "pune", "hero", "b2", 25, 3, 0),
            row("ajio", "pune", "side", "b1", 47, 1, 1),
            row("zara", "goa", "hero", "b1", ALL_TIME, 1, 0),
        ];
        // More rows than one move writes at once.
        for banner in 0..MOVE_ROWS / 2 + 10 {
            let banner = format!("x{banner}");
            rows.push(row("myntra", "delhi", "hero", &banner, ALL_TIME, 2, 1));
            rows.push(row("myntra", "delhi", "hero", &banner, 30, 2, 1));
        }
        {
            // The layout as the previous build wrote it: a row per arm, a row per (block, arm).
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut totals = tx.open_table(ARM_TOTALS).unwrap();
                let mut blocks = tx.open_table(ARM_BLOCKS).unwrap();
                let mut cells: std::collections::BTreeMap<Vec<u8>, Block> = Default::default();
                for (k, c) in &rows {
                    let counts = (c.impressions, c.clicks);
                    if k.bucket == ALL_TIME {
                        totals.insert(arm_key(&k.arm).as_slice(), counts).unwrap();
                        continue;
                    }
                    let mut key = ordered_i64(k.bucket.div_euclid(24)).to_vec();
                    key.extend_from_slice(&arm_key(&k.arm));
                    cells.entry(key).or_insert([(0, 0); 24])[k.bucket.rem_euclid(24) as usize] =
                        counts;
                }
                for (key, block) in &cells {
                    let mut value = Vec::new();
                    push_block(&mut value, block);
                    blocks.insert(key.as_slice(), value.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let store = EmbeddedStore::open(&path, true).unwrap();
        rows.sort();
        assert_eq!(stored_rows(&store), rows);
        let arm = |b: &str| ArmKey::new("ajio", "hero", "pune", b);
        assert_eq!(
            store
                .counts(&crate::store::CountQuery {
                    tenant: Some("ajio".into()),
                    from_bucket: Some(21),
                    ..Default::default()
                })
                .unwrap(),
            vec![
                (arm("b1"), Counts::new(5, 1)),
                (arm("b2"), Counts::new(3, 0)),
                (ArmKey::new("ajio", "side", "pune", "b1"), Counts::new(1, 1)),
            ]
        );
        assert_eq!(tables(&store), CURRENT_COUNT_TABLES);
        let versions = store.versions("myntra").unwrap();
        assert_eq!(
            versions.into_keys().collect::<Vec<_>>(),
            [(Part::Shard, "delhi".into())]
        );
    }

    #[test]
    fn a_store_with_one_row_per_bucket_is_moved_to_the_slot_rows_on_open() {
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
        assert_eq!(tables(&store), CURRENT_COUNT_TABLES);
    }

    #[test]
    fn a_store_written_before_versions_gets_a_version_for_every_part_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut totals = tx.open_table(ARM_TOTALS).unwrap();
                for (tenant, city) in [("ajio", "pune"), ("ajio", "goa"), ("zara", "pune")] {
                    let arm = ArmKey::new(tenant, "hero", city, "b1");
                    totals.insert(arm_key(&arm).as_slice(), (10, 1)).unwrap();
                }
                let mut slots = tx.open_table(SLOTS).unwrap();
                slots.insert(("ajio", "side"), "{}").unwrap();
                let mut priors = tx.open_table(PRIORS).unwrap();
                priors
                    .insert(("zara", "hero", ""), (1.0, 9.0, "empirical_bayes"))
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = EmbeddedStore::open(&path, true).unwrap();
        let parts = |tenant: &str| -> Vec<(Part, String)> {
            let versions = store.versions(tenant).unwrap();
            assert!(versions.values().all(|&v| v > 0));
            versions.into_keys().collect()
        };
        assert_eq!(
            parts("ajio"),
            [
                (Part::Shard, "goa".into()),
                (Part::Shard, "pune".into()),
                (Part::Slot, "side".into())
            ]
        );
        assert_eq!(
            parts("zara"),
            [(Part::Shard, "pune".into()), (Part::Priors, "hero".into())]
        );
        assert!(store.change_marker().unwrap().is_some_and(|m| m > 0));
        // Opening again gives no part a new version.
        let before = store.versions("ajio").unwrap();
        drop(store);
        let reopened = EmbeddedStore::open(&path, true).unwrap();
        assert_eq!(reopened.versions("ajio").unwrap(), before);
    }
}
