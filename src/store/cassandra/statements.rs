//! The store's prepared statements, one per thing it does, prepared once when the store opens.
//! Every one is idempotent (an upsert, a delete, a read, or a map update with the same entries), so
//! the driver and the retry policy may send it again.

use scylla::statement::prepared::PreparedStatement;

use super::connection::Connection;
use crate::store::StoreError;

/// The prepared statements, named by what they do.
pub(super) struct Statements {
    pub upsert_count: PreparedStatement,
    pub delete_count: PreparedStatement,
    pub add_applied: PreparedStatement,
    pub shard_partitions: PreparedStatement,
    pub applied_offsets: PreparedStatement,
    pub shard: PreparedStatement,
    pub counts_in_shard: PreparedStatement,
    pub counts_of_slot_in_shard: PreparedStatement,
    pub write_prior: PreparedStatement,
    pub priors_of_slot: PreparedStatement,
    pub set_meta: PreparedStatement,
    pub meta: PreparedStatement,
    pub set_checkpoint: PreparedStatement,
    pub checkpoints: PreparedStatement,
    pub delete_slot: PreparedStatement,
    pub insert_banner: PreparedStatement,
    pub slot_banners: PreparedStatement,
    pub slot_partitions: PreparedStatement,
    pub put_api_key: PreparedStatement,
    pub api_key: PreparedStatement,
    pub insert_customer_event: PreparedStatement,
    pub customer_events: PreparedStatement,
}

impl Statements {
    pub async fn prepare(conn: &Connection) -> Result<Self, StoreError> {
        let ks = &conn.keyspace;
        let prepare = |cql: String| async move {
            let mut statement = conn
                .retrying("prepare statements", || async {
                    Ok(conn.session.prepare(cql.as_str()).await?)
                })
                .await?;
            statement.set_is_idempotent(true);
            Ok::<_, StoreError>(statement)
        };
        Ok(Statements {
            upsert_count: prepare(format!(
                "INSERT INTO {ks}.arm_state (tenant, city, slot, banner, bucket, impressions, clicks) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            delete_count: prepare(format!(
                "DELETE FROM {ks}.arm_state \
                 WHERE tenant = ? AND city = ? AND slot = ? AND banner = ? AND bucket = ?"
            ))
            .await?,
            add_applied: prepare(format!(
                "UPDATE {ks}.arm_state SET applied = applied + ? WHERE tenant = ? AND city = ?"
            ))
            .await?,
            shard_partitions: prepare(format!("SELECT DISTINCT tenant, city FROM {ks}.arm_state"))
                .await?,
            // DISTINCT reads partition keys and static columns only: no rows.
            applied_offsets: prepare(format!(
                "SELECT DISTINCT tenant, city, applied FROM {ks}.arm_state"
            ))
            .await?,
            shard: prepare(format!(
                "SELECT slot, banner, bucket, impressions, clicks, applied FROM {ks}.arm_state \
                 WHERE tenant = ? AND city = ?"
            ))
            .await?,
            // Filtering on the last clustering column inside one partition: the server reads
            // the partition and sends only the wanted buckets.
            counts_in_shard: prepare(format!(
                "SELECT slot, banner, bucket, impressions, clicks FROM {ks}.arm_state \
                 WHERE tenant = ? AND city = ? AND bucket >= ? AND bucket <= ? ALLOW FILTERING"
            ))
            .await?,
            counts_of_slot_in_shard: prepare(format!(
                "SELECT slot, banner, bucket, impressions, clicks FROM {ks}.arm_state \
                 WHERE tenant = ? AND city = ? AND slot = ? AND bucket >= ? AND bucket <= ? \
                 ALLOW FILTERING"
            ))
            .await?,
            write_prior: prepare(format!(
                "INSERT INTO {ks}.priors (tenant, slot, banner, alpha0, beta0, source) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            priors_of_slot: prepare(format!(
                "SELECT banner, alpha0, beta0, source FROM {ks}.priors WHERE tenant = ? AND slot = ?"
            ))
            .await?,
            set_meta: prepare(format!(
                "INSERT INTO {ks}.meta (name, value) VALUES (?, ?)"
            ))
            .await?,
            meta: prepare(format!("SELECT value FROM {ks}.meta WHERE name = ?")).await?,
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
            slot_banners: prepare(format!(
                "SELECT banner, image_url, valid_from, valid_to FROM {ks}.slot_banners \
                 WHERE tenant = ? AND slot = ?"
            ))
            .await?,
            slot_partitions: prepare(format!(
                "SELECT DISTINCT tenant, slot FROM {ks}.slot_banners"
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
