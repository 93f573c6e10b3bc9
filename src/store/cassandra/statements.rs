//! The store's prepared statements, one per thing it does, prepared once when the store opens.
//! Every one is idempotent (an upsert, a delete, a read, a map update with the same entries, or an
//! insert-if-absent whose outcome is read back), so the driver and the retry policy may send it
//! again.

use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use super::connection::Connection;
use crate::store::StoreError;

/// The prepared statements, named by what they do.
pub(super) struct Statements {
    pub upsert_count: PreparedStatement,
    pub delete_count: PreparedStatement,
    pub expire_buckets: PreparedStatement,
    pub add_applied: PreparedStatement,
    pub shard: PreparedStatement,
    pub shard_applied: PreparedStatement,
    pub all_time_counts: PreparedStatement,
    pub all_time_counts_of_slot: PreparedStatement,
    pub bucket_counts: PreparedStatement,
    pub mark_writing: PreparedStatement,
    pub set_version: PreparedStatement,
    pub versions: PreparedStatement,
    pub part_names: PreparedStatement,
    pub delete_part_versions: PreparedStatement,
    pub tenants: PreparedStatement,
    pub delete_priors: PreparedStatement,
    pub delete_prior_cities: PreparedStatement,
    pub write_prior: PreparedStatement,
    pub write_prior_city: PreparedStatement,
    pub priors_of_slot: PreparedStatement,
    pub prior_cities_of_slot: PreparedStatement,
    pub set_meta: PreparedStatement,
    pub meta: PreparedStatement,
    /// A lightweight transaction: the insert applies only if the name holds nothing yet.
    pub claim_meta: PreparedStatement,
    pub replace_meta: PreparedStatement,
    /// A read at LOCAL_SERIAL: it sees the outcome of every lightweight transaction, finishing
    /// one left in progress.
    pub meta_serial: PreparedStatement,
    pub set_checkpoint: PreparedStatement,
    pub checkpoints: PreparedStatement,
    pub delete_slot: PreparedStatement,
    pub insert_banner: PreparedStatement,
    pub insert_slot_rules: PreparedStatement,
    pub slot_banners: PreparedStatement,
    pub slot_partitions: PreparedStatement,
    pub delete_city_aliases: PreparedStatement,
    pub insert_city_alias: PreparedStatement,
    pub city_aliases: PreparedStatement,
    pub record_merge: PreparedStatement,
    pub merge_record: PreparedStatement,
    pub delete_merge_record: PreparedStatement,
    pub delete_shard: PreparedStatement,
    pub put_api_key: PreparedStatement,
    pub api_key: PreparedStatement,
    pub api_key_tenants: PreparedStatement,
    pub insert_customer_event: PreparedStatement,
    pub customer_events: PreparedStatement,
}

impl Statements {
    pub async fn prepare(conn: &Connection) -> Result<Self, StoreError> {
        let ks = &conn.keyspace;
        let prepare = |cql: String| async move { conn.prepare("prepare statements", &cql).await };
        Ok(Statements {
            upsert_count: prepare(format!(
                "INSERT INTO {ks}.arm_counts (tenant, city, bucket, slot, banner, impressions, clicks) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            delete_count: prepare(format!(
                "DELETE FROM {ks}.arm_counts \
                 WHERE tenant = ? AND city = ? AND bucket = ? AND slot = ? AND banner = ?"
            ))
            .await?,
            // One range delete: the all-time rows (bucket -1) lie outside it.
            expire_buckets: prepare(format!(
                "DELETE FROM {ks}.arm_counts \
                 WHERE tenant = ? AND city = ? AND bucket >= 0 AND bucket < ?"
            ))
            .await?,
            add_applied: prepare(format!(
                "UPDATE {ks}.arm_counts SET applied = applied + ? WHERE tenant = ? AND city = ?"
            ))
            .await?,
            shard: prepare(format!(
                "SELECT bucket, slot, banner, impressions, clicks, applied FROM {ks}.arm_counts \
                 WHERE tenant = ? AND city = ?"
            ))
            .await?,
            // DISTINCT reads the partition's static columns only: no rows.
            shard_applied: prepare(format!(
                "SELECT DISTINCT applied FROM {ks}.arm_counts WHERE tenant = ? AND city = ?"
            ))
            .await?,
            all_time_counts: prepare(format!(
                "SELECT slot, banner, impressions, clicks FROM {ks}.arm_counts \
                 WHERE tenant = ? AND city = ? AND bucket = -1"
            ))
            .await?,
            all_time_counts_of_slot: prepare(format!(
                "SELECT slot, banner, impressions, clicks FROM {ks}.arm_counts \
                 WHERE tenant = ? AND city = ? AND bucket = -1 AND slot = ?"
            ))
            .await?,
            bucket_counts: prepare(format!(
                "SELECT bucket, slot, banner, impressions, clicks FROM {ks}.arm_counts \
                 WHERE tenant = ? AND city = ? AND bucket >= ? AND bucket <= ?"
            ))
            .await?,
            mark_writing: prepare(format!(
                "UPDATE {ks}.part_versions SET writing = true \
                 WHERE tenant = ? AND part = ? AND name = ?"
            ))
            .await?,
            set_version: prepare(format!(
                "UPDATE {ks}.part_versions SET version = ?, writing = false \
                 WHERE tenant = ? AND part = ? AND name = ?"
            ))
            .await?,
            versions: prepare(format!(
                "SELECT part, name, version, writing FROM {ks}.part_versions WHERE tenant = ?"
            ))
            .await?,
            part_names: prepare(format!(
                "SELECT name FROM {ks}.part_versions WHERE tenant = ? AND part = ?"
            ))
            .await?,
            delete_part_versions: prepare(format!(
                "DELETE FROM {ks}.part_versions WHERE tenant = ? AND part = ?"
            ))
            .await?,
            tenants: prepare(format!("SELECT DISTINCT tenant FROM {ks}.part_versions")).await?,
            delete_priors: prepare(format!(
                "DELETE FROM {ks}.priors USING TIMESTAMP ? WHERE tenant = ? AND slot = ?"
            ))
            .await?,
            delete_prior_cities: prepare(format!(
                "DELETE FROM {ks}.prior_cities USING TIMESTAMP ? WHERE tenant = ? AND slot = ?"
            ))
            .await?,
            write_prior: prepare(format!(
                "INSERT INTO {ks}.priors (tenant, slot, banner, alpha0, beta0, source) \
                 VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            write_prior_city: prepare(format!(
                "INSERT INTO {ks}.prior_cities (tenant, slot, city, level, clicks) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            priors_of_slot: prepare(format!(
                "SELECT banner, alpha0, beta0, source FROM {ks}.priors WHERE tenant = ? AND slot = ?"
            ))
            .await?,
            prior_cities_of_slot: prepare(format!(
                "SELECT city, level, clicks FROM {ks}.prior_cities WHERE tenant = ? AND slot = ?"
            ))
            .await?,
            set_meta: prepare(format!(
                "INSERT INTO {ks}.meta (name, value) VALUES (?, ?)"
            ))
            .await?,
            meta: prepare(format!("SELECT value FROM {ks}.meta WHERE name = ?")).await?,
            claim_meta: {
                let mut s = prepare(format!(
                    "INSERT INTO {ks}.meta (name, value) VALUES (?, ?) IF NOT EXISTS"
                ))
                .await?;
                s.set_serial_consistency(Some(SerialConsistency::LocalSerial));
                s
            },
            replace_meta: {
                let mut s = prepare(format!(
                    "UPDATE {ks}.meta SET value = ? WHERE name = ? IF value = ?"
                ))
                .await?;
                s.set_serial_consistency(Some(SerialConsistency::LocalSerial));
                s
            },
            meta_serial: {
                let mut s = prepare(format!("SELECT value FROM {ks}.meta WHERE name = ?")).await?;
                s.set_consistency(Consistency::LocalSerial);
                s
            },
            set_checkpoint: prepare(format!(
                "INSERT INTO {ks}.checkpoints (job, partition, offset, updated_at) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            checkpoints: prepare(format!(
                "SELECT partition, offset FROM {ks}.checkpoints WHERE job = ?"
            ))
            .await?,
            delete_slot: prepare(format!(
                "DELETE FROM {ks}.slot_banners USING TIMESTAMP ? WHERE tenant = ? AND slot = ?"
            ))
            .await?,
            insert_banner: prepare(format!(
                "INSERT INTO {ks}.slot_banners \
                 (tenant, slot, banner, image_url, valid_from, valid_to, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            insert_slot_rules: prepare(format!(
                "INSERT INTO {ks}.slot_banners (tenant, slot, recency_minutes, holdout_bp) \
                 VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            slot_banners: prepare(format!(
                "SELECT banner, image_url, valid_from, valid_to, recency_minutes, holdout_bp \
                 FROM {ks}.slot_banners \
                 WHERE tenant = ? AND slot = ?"
            ))
            .await?,
            slot_partitions: prepare(format!(
                "SELECT DISTINCT tenant, slot FROM {ks}.slot_banners"
            ))
            .await?,
            delete_city_aliases: prepare(format!(
                "DELETE FROM {ks}.city_aliases USING TIMESTAMP ? WHERE tenant = ?"
            ))
            .await?,
            insert_city_alias: prepare(format!(
                "INSERT INTO {ks}.city_aliases (tenant, alias, city) VALUES (?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            city_aliases: prepare(format!(
                "SELECT alias, city FROM {ks}.city_aliases WHERE tenant = ?"
            ))
            .await?,
            record_merge: prepare(format!(
                "INSERT INTO {ks}.city_merges (tenant, city, alias, merged_at) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            merge_record: prepare(format!(
                "SELECT alias FROM {ks}.city_merges WHERE tenant = ? AND city = ? AND alias = ?"
            ))
            .await?,
            delete_merge_record: prepare(format!(
                "DELETE FROM {ks}.city_merges WHERE tenant = ? AND city = ? AND alias = ?"
            ))
            .await?,
            delete_shard: prepare(format!(
                "DELETE FROM {ks}.arm_counts WHERE tenant = ? AND city = ?"
            ))
            .await?,
            put_api_key: prepare(format!(
                "INSERT INTO {ks}.api_keys (key_sha256, tenant, role) VALUES (?, ?, ?)"
            ))
            .await?,
            api_key: prepare(format!(
                "SELECT tenant, role FROM {ks}.api_keys WHERE key_sha256 = ?"
            ))
            .await?,
            // A few rows per tenant: the whole table is small.
            api_key_tenants: prepare(format!("SELECT tenant FROM {ks}.api_keys")).await?,
            insert_customer_event: prepare(format!(
                "INSERT INTO {ks}.customer_events (tenant, customer_id, ts, ts_us, event_id, kind, \
                 slot, city, banner, referrer, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            customer_events: prepare(format!(
                "SELECT event_id, ts_us, kind, slot, city, banner, referrer, request_id \
                 FROM {ks}.customer_events WHERE tenant = ? AND customer_id = ? LIMIT ?"
            ))
            .await?,
        })
    }
}
