//! What `slotbandit schema apply` does beyond a version's CQL, run once before the version is
//! recorded. Version 2 copies the counts of version 1's `arm_state` into `arm_counts` and gives
//! every shard, slot and priors present a version in `part_versions`.
//!
//! Writers of the keyspace must be stopped while it runs: a store of this build refuses the
//! keyspace until the version is recorded, but a process of the previous build would go on
//! writing `arm_state`. A copy cut short is run again by the next `schema apply`: every write is
//! an idempotent upsert.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};

use super::connection::{Connection, IN_FLIGHT};
use super::statements::Statements;
use crate::store::{next_version, Part, StoreError};

/// Rows copied per round of concurrent writes.
const COPY_CHUNK: usize = 1000;

/// Moves a keyspace's data to schema `version`, whose tables exist by now.
pub(super) async fn move_data_to(version: i32, conn: &Connection) -> Result<(), StoreError> {
    match version {
        2 => copy_arm_state(conn).await,
        _ => Ok(()),
    }
}

/// One write of the copy: a row, or a shard's applied offsets.
enum CopyWrite {
    Row {
        tenant: String,
        city: String,
        bucket: i64,
        slot: String,
        banner: String,
        impressions: i64,
        clicks: i64,
    },
    Applied {
        tenant: String,
        city: String,
        offsets: BTreeMap<i32, i64>,
    },
}

async fn copy_arm_state(conn: &Connection) -> Result<(), StoreError> {
    let st = Statements::prepare(conn).await?;
    let ks = &conn.keyspace;
    let prepare = |cql: String| async move { conn.prepare("prepare the migration", &cql).await };
    let arm_state = prepare(format!(
        "SELECT tenant, city, slot, banner, bucket, impressions, clicks, applied FROM {ks}.arm_state"
    ))
    .await?;
    let prior_partitions =
        prepare(format!("SELECT DISTINCT tenant, slot FROM {ks}.priors")).await?;

    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<BTreeMap<i32, i64>>,
    );
    let shards = conn
        .retrying("copy arm_state into arm_counts", || async {
            let mut rows = conn
                .session
                .execute_iter(arm_state.clone(), &[])
                .await?
                .rows_stream::<Row>()?;
            let mut shards: BTreeSet<(String, String)> = BTreeSet::new();
            let mut writes = Vec::new();
            while let Some((tenant, city, slot, banner, bucket, imp, clk, applied)) =
                rows.try_next().await?
            {
                // A partition's rows come together, each carrying its static `applied` map.
                if shards.insert((tenant.clone(), city.clone())) {
                    if let Some(offsets) = applied {
                        writes.push(CopyWrite::Applied {
                            tenant: tenant.clone(),
                            city: city.clone(),
                            offsets,
                        });
                    }
                }
                if let (Some(slot), Some(banner), Some(bucket)) = (slot, banner, bucket) {
                    writes.push(CopyWrite::Row {
                        tenant,
                        city,
                        bucket,
                        slot,
                        banner,
                        impressions: imp.unwrap_or(0),
                        clicks: clk.unwrap_or(0),
                    });
                }
                if writes.len() >= COPY_CHUNK {
                    write_copies(conn, &st, &writes).await?;
                    writes.clear();
                }
            }
            write_copies(conn, &st, &writes).await?;
            Ok(shards)
        })
        .await?;

    let slots: Vec<(String, String)> = conn
        .select_all("list slots", &st.slot_partitions, &[])
        .await?;
    let priors: Vec<(String, String)> = conn
        .select_all("list priors", &prior_partitions, &[])
        .await?;
    let parts = shards
        .into_iter()
        .map(|(tenant, city)| (tenant, Part::Shard, city))
        .chain(slots.into_iter().map(|(t, s)| (t, Part::Slot, s)))
        .chain(priors.into_iter().map(|(t, s)| (t, Part::Priors, s)));
    let mut versions = Vec::new();
    for (tenant, part, name) in parts {
        let version = i64::try_from(next_version())
            .map_err(|_| conn.fail("the version clock passed the range of bigint"))?;
        versions.push((version, tenant, part.as_str(), name));
    }
    conn.execute_each(
        "version every part",
        &st.set_version,
        versions
            .iter()
            .map(|(v, t, p, n)| (*v, t.as_str(), *p, n.as_str())),
    )
    .await
}

/// Writes one chunk of the copy, up to [`IN_FLIGHT`] at once; a failure fails the attempt.
async fn write_copies(
    conn: &Connection,
    st: &Statements,
    writes: &[CopyWrite],
) -> Result<(), scylla::errors::ExecutionError> {
    futures::stream::iter(writes.iter().map(|write| async move {
        match write {
            CopyWrite::Row {
                tenant,
                city,
                bucket,
                slot,
                banner,
                impressions,
                clicks,
            } => {
                let values = (tenant, city, bucket, slot, banner, impressions, clicks);
                conn.session.execute_unpaged(&st.upsert_count, values).await
            }
            CopyWrite::Applied {
                tenant,
                city,
                offsets,
            } => {
                let values = (offsets, tenant, city);
                conn.session.execute_unpaged(&st.add_applied, values).await
            }
        }
        .map(|_| ())
    }))
    .buffer_unordered(IN_FLIGHT)
    .try_collect()
    .await
}
