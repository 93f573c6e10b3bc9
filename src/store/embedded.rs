//! The embedded store: one redb file. Each epoch is one write transaction, so a crash leaves the
//! file at the end of the last whole epoch.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use std::collections::BTreeMap;

use super::{
    ApiKey, AppliedOffsets, CountQuery, Offset, Partition, PosteriorStore, ShardState, ShardWrite,
    StoreError, ALL_TIME,
};
use crate::bandit::{Prior, PriorSource, SlotPriors};
use crate::dataflow::CountKey;
use crate::model::{ArmKey, Event, EventFields, SlotConfig};
use chrono::DateTime;

/// (tenant, city, slot, banner, bucket) → (impressions, clicks), the key encoded by
/// [`arm_state_key`]: byte order is tuple order, and comparing keys is a memcmp.
const ARM_STATE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("arm_counts");
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
            tx.open_table(ARM_STATE)?;
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
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        f(&tx).map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))
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

/// `tenant 0 city 0 slot 0 banner 0` then the bucket as big-endian with the sign bit flipped.
/// Names are `[a-z0-9_-]+`, so the 0 separators keep the order of the (tenant, city, slot, banner,
/// bucket) tuple.
fn arm_state_key(tenant: &str, city: &str, slot: &str, banner: &str, bucket: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + city.len() + slot.len() + banner.len() + 12);
    for name in [tenant, city, slot, banner] {
        key.extend_from_slice(name.as_bytes());
        key.push(0);
    }
    key.extend_from_slice(&((bucket as u64) ^ (1 << 63)).to_be_bytes());
    key
}

fn decode_arm_state_key(key: &[u8]) -> Option<(ArmKey, i64)> {
    let (names, bucket) = key.split_at_checked(key.len().checked_sub(8)?)?;
    let mut parts = names.split(|&b| b == 0).map(std::str::from_utf8);
    let mut next = || parts.next()?.ok();
    let (tenant, city, slot, banner) = (next()?, next()?, next()?, next()?);
    let bucket = (u64::from_be_bytes(bucket.try_into().ok()?) ^ (1 << 63)) as i64;
    Some((ArmKey::new(tenant, slot, city, banner), bucket))
}

impl PosteriorStore for EmbeddedStore {
    fn apply_epoch(&self, shards: &[ShardWrite]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(ARM_STATE)?;
            // In key order, so that the B-tree is written front to back.
            let mut rows: Vec<(Vec<u8>, u64, u64)> = shards
                .iter()
                .flat_map(|s| &s.rows)
                .map(|(k, imp, clk)| {
                    let a = &k.arm;
                    (
                        arm_state_key(&a.tenant, &a.city, &a.slot, &a.banner, k.bucket),
                        *imp,
                        *clk,
                    )
                })
                .collect();
            rows.sort_unstable();
            for (key, imp, clk) in rows {
                if imp == 0 && clk == 0 {
                    t.remove(key.as_slice())?;
                } else {
                    t.insert(key.as_slice(), (imp, clk))?;
                }
            }
            let mut applied = tx.open_table(APPLIED)?;
            for shard in shards {
                for (&partition, &offset) in &shard.applied {
                    applied.insert(
                        (shard.tenant.as_str(), shard.city.as_str(), partition),
                        offset,
                    )?;
                }
            }
            Ok(())
        })
    }

    fn clear_counts(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.delete_table(ARM_STATE)?;
            tx.open_table(ARM_STATE)?;
            tx.delete_table(APPLIED)?;
            tx.open_table(APPLIED)?;
            Ok(())
        })
    }

    fn counts(&self, q: &CountQuery) -> Result<Vec<(ArmKey, u64, u64)>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(ARM_STATE)?;
            let mut sums: std::collections::BTreeMap<ArmKey, (u64, u64)> = Default::default();
            let (start, end) = match &q.tenant {
                Some(tenant) => (
                    format!("{tenant}\0").into_bytes(),
                    format!("{tenant}\u{1}").into_bytes(),
                ),
                None => (Vec::new(), vec![0xff]),
            };
            for entry in t.range(start.as_slice()..end.as_slice())? {
                let (k, v) = entry?;
                let Some((arm, bucket)) = decode_arm_state_key(k.value()) else {
                    return Err(redb::StorageError::Corrupted(format!(
                        "arm_state key {:?}",
                        k.value()
                    ))
                    .into());
                };
                let wanted = match q.from_bucket {
                    None => bucket == ALL_TIME,
                    Some(from) => bucket != ALL_TIME && bucket >= from,
                };
                if wanted && q.matches(&arm) {
                    let (imp, clk) = v.value();
                    let s = sums.entry(arm).or_default();
                    s.0 += imp;
                    s.1 += clk;
                }
            }
            Ok(sums.into_iter().map(|(k, (i, c))| (k, i, c)).collect())
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
            let mut shards: BTreeMap<(String, String), ShardState> = BTreeMap::new();
            for entry in tx.open_table(ARM_STATE)?.iter()? {
                let (k, v) = entry?;
                let (arm, bucket) = decode_arm_state_key(k.value()).ok_or_else(|| {
                    redb::StorageError::Corrupted(format!("arm_state key {:?}", k.value()))
                })?;
                if owns(&arm.tenant, &arm.city) {
                    let (imp, clk) = v.value();
                    let state = ShardState::entry(&mut shards, &arm.tenant, &arm.city);
                    state.rows.push((CountKey { arm, bucket }, imp, clk));
                }
            }
            for entry in tx.open_table(APPLIED)?.iter()? {
                let (k, v) = entry?;
                let (tenant, city, partition) = k.value();
                if owns(tenant, city) {
                    ShardState::entry(&mut shards, tenant, city)
                        .applied
                        .insert(partition, v.value());
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
                    .entry((tenant.to_string(), city.to_string()))
                    .or_default()
                    .insert(partition, v.value());
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
                offsets.insert(k.value().1, v.value());
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
                t.insert((job, partition), offset)?;
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
    fn arm_state_keys_sort_like_their_tuples_and_round_trip() {
        let tuples = [
            ("ajio", "pune", "hero", "b1", -1),
            ("ajio", "pune", "hero", "b1", 0),
            ("ajio", "pune", "hero", "b1", 490_000),
            ("ajio", "pune", "hero", "b10", -1),
            ("ajio", "pune-2", "hero", "b1", -1),
            ("ajio2", "a", "a", "a", i64::MIN),
            ("myntra", "delhi", "footer", "b2", i64::MAX),
        ];
        let keys: Vec<Vec<u8>> = tuples
            .iter()
            .map(|&(t, c, s, b, k)| arm_state_key(t, c, s, b, k))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        for (key, &(t, c, s, b, k)) in keys.iter().zip(&tuples) {
            assert_eq!(
                decode_arm_state_key(key),
                Some((ArmKey::new(t, s, c, b), k))
            );
        }
        assert_eq!(decode_arm_state_key(b"short"), None);
    }
}
