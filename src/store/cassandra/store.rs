//! [`CassandraStore`]: the [`PosteriorStore`] over the tables of `schema/cassandra/`. An epoch
//! writes each changed shard as UNLOGGED single-partition batches; reads of several shards or
//! partitions run at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::unprepared::Statement;
use scylla::value::CqlTimestamp;

use super::connection::{Connection, IN_FLIGHT};
use super::retry::Failure;
use super::schema::check_schema_version;
use super::statements::Statements;
use crate::bandit::SlotPriors;
use crate::model::{
    ArmKey, Banner, CountKey, Counts, Event, Offset, Partition, ShardKey, SlotConfig, ALL_TIME,
};
use crate::store::customer_rows::CustomerEventRow;
use crate::store::prior_rows::{prior_rows, read_prior_row, PriorRow};
use crate::store::url::CassandraUrl;
use crate::store::{
    ApiKey, AppliedOffsets, CountQuery, PosteriorStore, Role, ShardState, ShardWrite, StoreError,
    Versions,
};

/// A batch holds at most this many statements (the protocol counts them in a u16).
const BATCH_LIMIT: usize = u16::MAX as usize;
/// TRUNCATE flushes and waits for every replica.
const TRUNCATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Offsets as the `map<int, bigint>` columns hold them.
fn offsets_to_cql(offsets: &BTreeMap<Partition, Offset>) -> BTreeMap<i32, i64> {
    offsets.iter().map(|(p, o)| (p.0, o.0)).collect()
}

fn offsets_from_cql(offsets: BTreeMap<i32, i64>) -> BTreeMap<Partition, Offset> {
    offsets
        .into_iter()
        .map(|(p, o)| (Partition(p), Offset(o)))
        .collect()
}

pub struct CassandraStore {
    conn: Connection,
    st: Statements,
}

/// One statement's values in a batch of mixed statements.
type BatchValues<'a> = Vec<Box<dyn SerializeRow + 'a>>;

impl CassandraStore {
    /// Connects (retrying until the deadline), checks that the keyspace holds this build's
    /// schema version, and prepares the statements.
    pub fn open(url: &CassandraUrl) -> Result<Self, StoreError> {
        let conn = Connection::connect(url)?;
        let st = conn.run(async {
            check_schema_version(&conn, url).await?;
            Statements::prepare(&conn).await
        })?;
        Ok(Self { conn, st })
    }

    /// The batches that write one shard: one, unless a backfill (no applied offsets to keep in
    /// step) changed more rows than a batch holds.
    fn shard_batches<'a>(
        &self,
        shard: &'a ShardWrite,
    ) -> Result<Vec<(Batch, BatchValues<'a>)>, StoreError> {
        let (t, c) = (shard.shard.tenant.as_str(), shard.shard.city.as_str());
        let statements = shard.rows.len() + usize::from(!shard.applied.is_empty());
        if statements > BATCH_LIMIT && !shard.applied.is_empty() {
            return Err(self.conn.fail(format!(
                "shard ({t}, {c}) changed {} rows in one epoch; one batch holds at most {BATCH_LIMIT} \
                 statements (use shorter epochs)",
                shard.rows.len()
            )));
        }
        let mut batches = Vec::new();
        for chunk in shard.rows.chunks(BATCH_LIMIT - 1) {
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_is_idempotent(true);
            let mut values: BatchValues<'a> = Vec::with_capacity(chunk.len() + 1);
            for (key, counts) in chunk {
                let a = &key.arm;
                if counts.is_zero() {
                    batch.append_statement(BatchStatement::from(self.st.delete_count.clone()));
                    values.push(Box::new((
                        t,
                        c,
                        a.slot.as_str(),
                        a.banner.as_str(),
                        key.bucket,
                    )));
                } else {
                    let count = |n: u64| {
                        i64::try_from(n)
                            .map_err(|_| self.conn.fail(format!("count {n} of {a} exceeds bigint")))
                    };
                    batch.append_statement(BatchStatement::from(self.st.upsert_count.clone()));
                    values.push(Box::new((
                        t,
                        c,
                        a.slot.as_str(),
                        a.banner.as_str(),
                        key.bucket,
                        count(counts.impressions)?,
                        count(counts.clicks)?,
                    )));
                }
            }
            batches.push((batch, values));
        }
        if !shard.applied.is_empty() {
            if batches.is_empty() {
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_is_idempotent(true);
                batches.push((batch, Vec::new()));
            }
            let (batch, values) = batches.last_mut().expect("one batch");
            batch.append_statement(BatchStatement::from(self.st.add_applied.clone()));
            values.push(Box::new((offsets_to_cql(&shard.applied), t, c)));
        }
        Ok(batches)
    }

    /// Every (tenant, city) partition of `arm_state`.
    async fn shard_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.conn
            .select_all("list shards", &self.st.shard_partitions, &[])
            .await
    }

    /// The shards a query touches.
    async fn shards_of(&self, q: &CountQuery) -> Result<Vec<(String, String)>, StoreError> {
        if let (Some(t), Some(c)) = (&q.tenant, &q.city) {
            return Ok(vec![(t.clone(), c.clone())]);
        }
        let mut keys = self.shard_keys().await?;
        keys.retain(|(t, c)| {
            q.tenant.as_ref().is_none_or(|want| want == t)
                && q.city.as_ref().is_none_or(|want| want == c)
        });
        Ok(keys)
    }

    /// The wanted buckets' rows of one shard: (slot, banner, bucket, impressions, clicks).
    async fn shard_counts(
        &self,
        tenant: &str,
        city: &str,
        slot: Option<&str>,
        buckets: (i64, i64),
    ) -> Result<Vec<(String, String, i64, i64, i64)>, StoreError> {
        let what = format!("read shard ({tenant}, {city})");
        let (from, to) = buckets;
        match slot {
            Some(s) => {
                let values = (tenant, city, s, from, to);
                let statement = &self.st.counts_of_slot_in_shard;
                self.conn.select_all(&what, statement, values).await
            }
            None => {
                let values = (tenant, city, from, to);
                let statement = &self.st.counts_in_shard;
                self.conn.select_all(&what, statement, values).await
            }
        }
    }

    /// One shard's rows and applied offsets, read in one request so that they come from one
    /// isolated view of the partition.
    async fn shard_state(&self, tenant: &str, city: &str) -> Result<ShardState, StoreError> {
        type Row = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<BTreeMap<i32, i64>>,
        );
        let what = format!("read shard ({tenant}, {city})");
        self.conn
            .select_unpaged(&what, &self.st.shard, (tenant, city), |result| {
                let mut state = ShardState::new(ShardKey::new(tenant, city));
                for row in result.rows::<Row>()? {
                    let (slot, banner, bucket, imp, clk, applied) = row?;
                    if let Some(applied) = applied {
                        state.applied = offsets_from_cql(applied);
                    }
                    // A partition with offsets but no rows reads as one row of nulls.
                    let (Some(slot), Some(banner), Some(bucket)) = (slot, banner, bucket) else {
                        continue;
                    };
                    let arm = ArmKey::new(tenant, &slot, city, &banner);
                    let counts = counts_of(&arm, imp, clk)?;
                    state
                        .rows
                        .push((CountKey::new(Arc::new(arm), bucket), counts));
                }
                Ok(state)
            })
            .await
    }
}

/// A row's counts, which the schema keeps as bigint: a missing one is 0, a negative one is corrupt.
fn counts_of(arm: &ArmKey, imp: Option<i64>, clk: Option<i64>) -> Result<Counts, Failure> {
    let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).ok();
    match (count(imp), count(clk)) {
        (Some(i), Some(c)) => Ok(Counts::new(i, c)),
        _ => Err(Failure::corrupt(format!("negative count for {arm}"))),
    }
}

impl PosteriorStore for CassandraStore {
    fn apply_epoch(&self, shards: &[ShardWrite]) -> Result<(), StoreError> {
        let mut batches = Vec::new();
        for shard in shards {
            let what = format!("write shard ({}, {})", shard.shard.tenant, shard.shard.city);
            for batch in self.shard_batches(shard)? {
                batches.push((what.clone(), batch));
            }
        }
        self.conn.run(
            futures::stream::iter(batches.iter().map(|(what, (batch, values))| {
                self.conn.retrying(what, move || async move {
                    self.conn.session.batch(batch, values).await?;
                    Ok(())
                })
            }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>(),
        )
    }

    fn clear_counts(&self) -> Result<(), StoreError> {
        let mut truncate = Statement::new(format!("TRUNCATE {}.arm_state", self.conn.keyspace));
        truncate.set_request_timeout(Some(TRUNCATE_TIMEOUT));
        truncate.set_is_idempotent(true);
        self.conn
            .run(self.conn.retrying("truncate arm_state", || async {
                self.conn
                    .session
                    .query_unpaged(truncate.clone(), &[])
                    .await?;
                Ok(())
            }))
    }

    fn counts(&self, q: &CountQuery) -> Result<Vec<(ArmKey, Counts)>, StoreError> {
        let buckets = match q.from_bucket {
            None => (ALL_TIME, ALL_TIME),
            Some(from) => (from, i64::MAX),
        };
        self.conn.run(async {
            let shards = self.shards_of(q).await?;
            let per_shard: Vec<_> = futures::stream::iter(shards.iter().map(|(t, c)| async move {
                let rows = self.shard_counts(t, c, q.slot.as_deref(), buckets).await?;
                Ok::<_, StoreError>((t, c, rows))
            }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
            let mut sums: BTreeMap<ArmKey, Counts> = BTreeMap::new();
            for (tenant, city, rows) in per_shard {
                for (slot, banner, bucket, imp, clk) in rows {
                    if q.from_bucket.is_some() && bucket == ALL_TIME {
                        continue;
                    }
                    let arm = ArmKey::new(tenant, &slot, city, &banner);
                    let counts = counts_of(&arm, Some(imp), Some(clk))
                        .map_err(|f| self.conn.fail(f.detail))?;
                    *sums.entry(arm).or_default() += counts;
                }
            }
            Ok(sums.into_iter().collect())
        })
    }

    fn versions(&self, _tenant: &str) -> Result<Versions, StoreError> {
        Ok(Versions::new())
    }

    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut tenants: std::collections::BTreeSet<String> =
            self.slots(None)?.into_iter().map(|(t, _)| t).collect();
        tenants.extend(
            self.conn
                .run(self.shard_keys())?
                .into_iter()
                .map(|(t, _)| t),
        );
        Ok(tenants.into_iter().collect())
    }

    fn write_priors(
        &self,
        tenant: &str,
        slot: &str,
        priors: &SlotPriors,
    ) -> Result<(), StoreError> {
        let rows = prior_rows(priors).map(|row| {
            let PriorRow {
                banner,
                alpha0,
                beta0,
                source,
            } = row;
            (tenant, slot, banner, alpha0, beta0, source)
        });
        self.conn.run(
            self.conn
                .execute_each("write priors", &self.st.write_prior, rows),
        )
    }

    fn priors(&self, tenant: &str, slot: &str) -> Result<SlotPriors, StoreError> {
        self.conn.run(self.conn.select_unpaged(
            "read priors",
            &self.st.priors_of_slot,
            (tenant, slot),
            |rows| {
                let mut priors = SlotPriors::uniform();
                for row in rows.rows::<(&str, f64, f64, &str)>()? {
                    let (banner, alpha0, beta0, source) = row?;
                    let row = PriorRow {
                        banner,
                        alpha0,
                        beta0,
                        source,
                    };
                    read_prior_row(&mut priors, row).map_err(Failure::corrupt)?;
                }
                Ok(priors)
            },
        ))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.run(
            self.conn
                .execute("write meta", &self.st.set_meta, (key, value)),
        )
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn.run(
            self.conn
                .select_unpaged("read meta", &self.st.meta, (key,), |rows| {
                    Ok(rows
                        .maybe_first_row::<(Option<String>,)>()?
                        .and_then(|(v,)| v))
                }),
        )
    }

    fn shared_across_processes(&self) -> bool {
        true
    }

    fn shards(&self, owns: &dyn Fn(&str, &str) -> bool) -> Result<Vec<ShardState>, StoreError> {
        self.conn.run(async {
            let mut keys = self.shard_keys().await?;
            keys.retain(|(t, c)| owns(t, c));
            keys.sort();
            let mut states: Vec<ShardState> =
                futures::stream::iter(keys.iter().map(|(t, c)| self.shard_state(t, c)))
                    .buffered(IN_FLIGHT)
                    .try_collect()
                    .await?;
            for state in &mut states {
                state.rows.sort();
            }
            Ok(states)
        })
    }

    fn applied_offsets(&self) -> Result<AppliedOffsets, StoreError> {
        type Row = (String, String, Option<BTreeMap<i32, i64>>);
        let rows: Vec<Row> = self.conn.run(self.conn.select_all(
            "read applied offsets",
            &self.st.applied_offsets,
            &[],
        ))?;
        Ok(rows
            .into_iter()
            .filter_map(|(t, c, applied)| {
                Some((ShardKey { tenant: t, city: c }, offsets_from_cql(applied?)))
            })
            .collect())
    }

    fn checkpoints(&self, job: &str) -> Result<BTreeMap<Partition, Offset>, StoreError> {
        self.conn.run(self.conn.select_unpaged(
            "read checkpoints",
            &self.st.checkpoints,
            (job,),
            |rows| {
                Ok(offsets_from_cql(
                    rows.rows::<(i32, i64)>()?
                        .collect::<Result<BTreeMap<_, _>, _>>()?,
                ))
            },
        ))
    }

    fn set_checkpoints(
        &self,
        job: &str,
        offsets: &BTreeMap<Partition, Offset>,
    ) -> Result<(), StoreError> {
        let now = CqlTimestamp(Utc::now().timestamp_millis());
        let rows = offsets
            .iter()
            .map(|(partition, offset)| (job, partition.0, offset.0, now));
        self.conn.run(
            self.conn
                .execute_each("write checkpoints", &self.st.set_checkpoint, rows),
        )
    }

    fn put_slot(&self, config: &SlotConfig) -> Result<(), StoreError> {
        // The old banners are deleted one microsecond before the new ones are written, in one
        // batch: a delete and an insert with the same timestamp would leave the delete winning.
        let now = Utc::now();
        let written = now.timestamp_micros();
        let updated_at = CqlTimestamp(now.timestamp_millis());
        let (t, s) = (config.tenant.as_str(), config.slot.as_str());
        if config.banners.len() + 1 > BATCH_LIMIT {
            return Err(self.conn.fail(format!(
                "slot ({t}, {s}) has {} banners; at most {} fit in one batch",
                config.banners.len(),
                BATCH_LIMIT - 1
            )));
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let mut values: BatchValues = Vec::new();
        batch.append_statement(BatchStatement::from(self.st.delete_slot.clone()));
        values.push(Box::new((written - 1, t, s)));
        for b in &config.banners {
            batch.append_statement(BatchStatement::from(self.st.insert_banner.clone()));
            values.push(Box::new((
                t,
                s,
                b.id.as_str(),
                b.image.as_str(),
                CqlTimestamp(b.valid_from.timestamp_millis()),
                CqlTimestamp(b.valid_to.timestamp_millis()),
                updated_at,
                written,
            )));
        }
        self.conn.run(self.conn.retrying("write slot", || async {
            self.conn.session.batch(&batch, &values).await?;
            Ok(())
        }))
    }

    fn slot(&self, tenant: &str, slot: &str) -> Result<Option<SlotConfig>, StoreError> {
        self.conn.run(self.conn.select_unpaged(
            "read slot",
            &self.st.slot_banners,
            (tenant, slot),
            |rows| {
                let mut banners = Vec::new();
                for row in rows.rows::<(String, String, CqlTimestamp, CqlTimestamp)>()? {
                    let (id, image, from, to) = row?;
                    let instant = |t: CqlTimestamp| {
                        DateTime::from_timestamp_millis(t.0)
                            .ok_or_else(|| Failure::corrupt(format!("banner {id} time {}", t.0)))
                    };
                    banners.push(Banner {
                        valid_from: instant(from)?,
                        valid_to: instant(to)?,
                        image,
                        id,
                    });
                }
                Ok((!banners.is_empty()).then(|| SlotConfig {
                    tenant: tenant.to_string(),
                    slot: slot.to_string(),
                    banners,
                }))
            },
        ))
    }

    fn slots(&self, tenant: Option<&str>) -> Result<Vec<(String, String)>, StoreError> {
        let mut slots: Vec<(String, String)> = self.conn.run(self.conn.select_all(
            "list slots",
            &self.st.slot_partitions,
            &[],
        ))?;
        slots.retain(|(t, _)| tenant.is_none_or(|want| want == t));
        slots.sort();
        Ok(slots)
    }

    fn put_api_key(&self, key_sha256: &str, key: &ApiKey) -> Result<(), StoreError> {
        let values = (key_sha256, key.tenant.as_str(), key.role.as_str());
        self.conn.run(
            self.conn
                .execute("write api key", &self.st.put_api_key, values),
        )
    }

    fn api_key(&self, key_sha256: &str) -> Result<Option<ApiKey>, StoreError> {
        self.conn.run(self.conn.select_unpaged(
            "read api key",
            &self.st.api_key,
            (key_sha256,),
            |rows| match rows.maybe_first_row::<(String, String)>()? {
                None => Ok(None),
                Some((tenant, role)) => Ok(Some(ApiKey {
                    tenant,
                    role: role.parse::<Role>().map_err(Failure::corrupt)?,
                })),
            },
        ))
    }

    fn append_customer_events(&self, events: &[Event]) -> Result<(), StoreError> {
        let rows = events.iter().filter_map(|e| {
            let (customer, row) = CustomerEventRow::of(e)?;
            Some((
                e.tenant.as_str(),
                customer,
                CqlTimestamp(row.ts_us.div_euclid(1000)),
                row.ts_us,
                row.event_id,
                row.kind,
                row.slot,
                row.city,
                row.banner,
                row.referrer,
                row.request_id,
            ))
        });
        self.conn.run(self.conn.execute_each(
            "write customer events",
            &self.st.insert_customer_event,
            rows,
        ))
    }

    fn customer_events(
        &self,
        tenant: &str,
        customer_id: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        type Row = (
            String,
            i64,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = self.conn.run(self.conn.select_all(
            "read customer events",
            &self.st.customer_events,
            (tenant, customer_id, limit),
        ))?;
        rows.iter()
            .map(
                |(event_id, ts_us, kind, slot, city, banner, referrer, request_id)| {
                    CustomerEventRow {
                        event_id,
                        ts_us: *ts_us,
                        kind,
                        slot,
                        city,
                        banner,
                        referrer: referrer.as_deref(),
                        request_id: request_id.as_deref(),
                    }
                    .into_event(tenant, customer_id)
                    .map_err(|e| {
                        self.conn
                            .failed("read customer events", Failure::corrupt(e))
                    })
                },
            )
            .collect()
    }
}
