//! [`CassandraStore`]: the [`PosteriorStore`] over the tables of `schema/cassandra/`. An epoch
//! writes each changed shard as UNLOGGED single-partition batches and gives it a new version in
//! `part_versions`, which also lists the tenants and their shards; reads of several shards or
//! partitions run at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchStatement};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::value::CqlTimestamp;

use super::connection::{Connection, CONSISTENCY, IN_FLIGHT};
use super::retry::Failure;
use super::schema::check_schema_version;
use super::statements::Statements;
use crate::bandit::SlotPriors;
use crate::model::{
    ArmKey, Banner, CityAliases, CountKey, Counts, Event, Offset, Partition, Recency, ShardKey,
    SlotConfig, SlotRules, TenantAliases, ALL_TIME, HOLDOUT_MAX_BP,
};
use crate::store::customer_rows::CustomerEventRow;
use crate::store::prior_rows::{
    city_rows, prior_rows, read_city_row, read_prior_row, CityRow, PriorRow,
};
use crate::store::url::CassandraUrl;
use crate::store::{
    next_version, ApiKey, AppliedOffsets, CountQuery, Part, PosteriorStore, Role, ShardState,
    ShardWrite, SlotPriorsWrite, StoreError, Versions,
};

/// A batch holds at most this many statements (the protocol counts them in a u16).
const BATCH_LIMIT: usize = u16::MAX as usize;

/// Statements with their values, to be batched.
type ShardStatements<'s, 'a> = Vec<(&'s PreparedStatement, Box<dyn SerializeRow + 'a>)>;
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
    /// What a meta key holds after a lightweight transaction on it: a read at LOCAL_SERIAL, so
    /// whether this attempt or an earlier retried one applied, it says who won.
    async fn meta_after_transaction(&self, key: &str, what: &str) -> Result<String, StoreError> {
        self.conn
            .select_unpaged(what, &self.st.meta_serial, (key,), |rows| {
                Ok(rows
                    .maybe_first_row::<(Option<String>,)>()?
                    .and_then(|(v,)| v))
            })
            .await?
            .ok_or_else(|| {
                self.conn.failed(
                    what,
                    Failure::corrupt(format!("meta {key:?} is empty after a transaction on it")),
                )
            })
    }

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
    /// step) changed more rows than a batch holds. Rows in buckets that `keep_from` expires are
    /// left out, so the range delete and the rows never meet in one batch or across two.
    fn shard_batches<'a>(
        &self,
        shard: &'a ShardWrite,
    ) -> Result<Vec<(Batch, BatchValues<'a>)>, StoreError> {
        let statements = self.shard_statements(shard)?;
        let (t, c) = (shard.shard.tenant.as_str(), shard.shard.city.as_str());
        if statements.len() > BATCH_LIMIT && !shard.applied.is_empty() {
            return Err(self.conn.fail(format!(
                "shard ({t}, {c}) changed {} rows in one epoch; one batch holds at most {BATCH_LIMIT} \
                 statements (use shorter epochs)",
                shard.rows.len()
            )));
        }
        let mut batches = Vec::new();
        let mut statements = statements.into_iter().peekable();
        while statements.peek().is_some() {
            let mut batch = Connection::batch();
            let mut values: BatchValues<'a> = Vec::new();
            for (statement, value) in statements.by_ref().take(BATCH_LIMIT) {
                batch.append_statement(BatchStatement::from(statement.clone()));
                values.push(value);
            }
            batches.push((batch, values));
        }
        Ok(batches)
    }

    /// The statements that write one shard, in order.
    fn shard_statements<'s, 'a>(
        &'s self,
        shard: &'a ShardWrite,
    ) -> Result<ShardStatements<'s, 'a>, StoreError> {
        let (t, c) = (shard.shard.tenant.as_str(), shard.shard.city.as_str());
        let expired = |bucket: i64| shard.keep_from.is_some_and(|k| (0..k).contains(&bucket));
        let mut statements: Vec<(&PreparedStatement, Box<dyn SerializeRow + 'a>)> = Vec::new();
        if let Some(keep_from) = shard.keep_from.filter(|&k| k > 0) {
            statements.push((&self.st.expire_buckets, Box::new((t, c, keep_from))));
        }
        for (key, counts) in shard.rows.iter().filter(|(key, _)| !expired(key.bucket)) {
            let a = &key.arm;
            let (slot, banner) = (a.slot.as_str(), a.banner.as_str());
            if counts.is_zero() {
                let values = (t, c, key.bucket, slot, banner);
                statements.push((&self.st.delete_count, Box::new(values)));
            } else {
                let count = |n: u64| {
                    i64::try_from(n)
                        .map_err(|_| self.conn.fail(format!("count {n} of {a} exceeds bigint")))
                };
                let (imp, clk) = (count(counts.impressions)?, count(counts.clicks)?);
                let values = (t, c, key.bucket, slot, banner, imp, clk);
                statements.push((&self.st.upsert_count, Box::new(values)));
            }
        }
        if !shard.applied.is_empty() {
            let values = (offsets_to_cql(&shard.applied), t, c);
            statements.push((&self.st.add_applied, Box::new(values)));
        }
        Ok(statements)
    }

    /// Runs `statement` once per (tenant, values), as one single-partition batch of
    /// `part_versions` per tenant, the tenants' batches at once.
    async fn for_each_part<V: SerializeRow>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        rows: impl IntoIterator<Item = (&str, V)>,
    ) -> Result<(), StoreError> {
        let mut per_tenant: BTreeMap<&str, Vec<V>> = BTreeMap::new();
        for (tenant, values) in rows {
            per_tenant.entry(tenant).or_default().push(values);
        }
        let mut batches = Vec::new();
        for values in per_tenant.into_values() {
            let mut values = values.into_iter().peekable();
            while values.peek().is_some() {
                let chunk: Vec<V> = values.by_ref().take(BATCH_LIMIT).collect();
                let mut batch = Connection::batch();
                for _ in &chunk {
                    batch.append_statement(BatchStatement::from(statement.clone()));
                }
                batches.push((batch, chunk));
            }
        }
        futures::stream::iter(batches.iter().map(|(batch, values)| {
            self.conn.retrying(what, move || async move {
                self.conn.session.batch(batch, values).await?;
                Ok(())
            })
        }))
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
    }

    /// Runs `write`, which changes `parts` ((tenant, part, name)), so that a reader that reads
    /// the versions first and the data after never misses the change (docs/architecture.md,
    /// "Store layouts"): the parts are marked `writing` first, then written, and only once the
    /// write has succeeded given new versions. A writer that stops in between leaves its parts
    /// marked, and a marked part reads as changed on every read until it is written again.
    async fn versioned<T>(
        &self,
        parts: &[(&str, Part, &str)],
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let each_part = || {
            parts
                .iter()
                .map(|&(tenant, part, name)| (tenant, part.as_str(), name))
        };
        let marks = each_part().map(|(tenant, part, name)| (tenant, (tenant, part, name)));
        self.for_each_part("mark parts as being written", &self.st.mark_writing, marks)
            .await?;
        let written = write.await?;
        let mut versions = Vec::new();
        for (tenant, part, name) in each_part() {
            let version = i64::try_from(next_version()).map_err(|_| {
                self.conn
                    .fail("the version clock passed the range of bigint")
            })?;
            versions.push((tenant, (version, tenant, part, name)));
        }
        self.for_each_part("record versions", &self.st.set_version, versions)
            .await?;
        Ok(written)
    }

    /// Every tenant with a part in `part_versions`.
    async fn tenant_names(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self
            .conn
            .select_all("list tenants", &self.st.tenants, &[])
            .await?;
        let mut tenants: Vec<String> = rows.into_iter().map(|(t,)| t).collect();
        tenants.sort();
        Ok(tenants)
    }

    /// The cities of one tenant's shards, from its `part_versions` partition.
    async fn cities_of(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self
            .conn
            .select_all(
                "list shards",
                &self.st.part_names,
                (tenant, Part::Shard.as_str()),
            )
            .await?;
        Ok(rows.into_iter().map(|(city,)| city).collect())
    }

    /// The shards a query touches: the one named, or those `part_versions` lists.
    async fn shards_of(&self, q: &CountQuery) -> Result<Vec<(String, String)>, StoreError> {
        if let (Some(t), Some(c)) = (&q.tenant, &q.city) {
            return Ok(vec![(t.clone(), c.clone())]);
        }
        let tenants = match &q.tenant {
            Some(t) => vec![t.clone()],
            None => self.tenant_names().await?,
        };
        let mut keys = Vec::new();
        for tenant in tenants {
            for city in self.cities_of(&tenant).await? {
                if q.city.as_ref().is_none_or(|want| *want == city) {
                    keys.push((tenant.clone(), city));
                }
            }
        }
        Ok(keys)
    }

    /// The rows of one shard a query wants: (slot, banner, impressions, clicks), read as one
    /// clustering slice (the all-time rows, or a window's buckets).
    async fn shard_counts(
        &self,
        tenant: &str,
        city: &str,
        q: &CountQuery,
    ) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let what = format!("read shard ({tenant}, {city})");
        let Some(from) = q.from_bucket else {
            return match &q.slot {
                Some(s) => {
                    let statement = &self.st.all_time_counts_of_slot;
                    let values = (tenant, city, s.as_str());
                    self.conn.select_all(&what, statement, values).await
                }
                None => {
                    let statement = &self.st.all_time_counts;
                    self.conn.select_all(&what, statement, (tenant, city)).await
                }
            };
        };
        let mut rows = Vec::new();
        for (first, last) in window_ranges(from) {
            let values = (tenant, city, first, last);
            let window: Vec<(i64, String, String, i64, i64)> = self
                .conn
                .select_all(&what, &self.st.bucket_counts, values)
                .await?;
            // The slot follows the bucket in the key, so a window of one slot is filtered here.
            rows.extend(
                window
                    .into_iter()
                    .filter(|(_, slot, ..)| q.slot.as_ref().is_none_or(|want| want == slot))
                    .map(|(_, slot, banner, imp, clk)| (slot, banner, imp, clk)),
            );
        }
        Ok(rows)
    }

    /// Every shard `part_versions` lists.
    async fn all_shards(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.shards_of(&CountQuery::default()).await
    }

    /// One shard's rows and applied offsets, read in one request so that they come from one
    /// isolated view of the partition.
    async fn shard_state(&self, tenant: &str, city: &str) -> Result<ShardState, StoreError> {
        type Row = (
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<BTreeMap<i32, i64>>,
        );
        let what = format!("read shard ({tenant}, {city})");
        self.conn
            .select_unpaged(&what, &self.st.shard, (tenant, city), |result| {
                let mut state = ShardState::new(ShardKey::new(tenant, city));
                for row in result.rows::<Row>()? {
                    let (bucket, slot, banner, imp, clk, applied) = row?;
                    if let Some(applied) = applied {
                        state.applied = offsets_from_cql(applied);
                    }
                    // A partition with offsets but no rows reads as one row of nulls.
                    let (Some(bucket), Some(slot), Some(banner)) = (bucket, slot, banner) else {
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

    /// Whether a merge of `alias` into `city` has written its rows and not yet deleted the
    /// alias's shard.
    async fn merge_recorded(
        &self,
        tenant: &str,
        alias: &str,
        city: &str,
    ) -> Result<bool, StoreError> {
        let what = format!("read the merge record of ({tenant}, {alias})");
        let values = (tenant, city, alias);
        self.conn
            .select_unpaged(&what, &self.st.merge_record, values, |rows| {
                Ok(rows.maybe_first_row::<(String,)>()?.is_some())
            })
            .await
    }

    /// The second step of a merge: the alias's shard and the merge's record, together.
    async fn delete_merged(&self, tenant: &str, alias: &str, city: &str) -> Result<(), StoreError> {
        let mut batch = Connection::logged_batch();
        batch.append_statement(BatchStatement::from(self.st.delete_shard.clone()));
        batch.append_statement(BatchStatement::from(self.st.delete_merge_record.clone()));
        let values = ((tenant, alias), (tenant, city, alias));
        self.conn
            .retrying("delete a merged shard", || async {
                self.conn.session.batch(&batch, &values).await?;
                Ok(())
            })
            .await
    }

    /// One shard's applied offsets (its static column only).
    async fn shard_applied(
        &self,
        tenant: &str,
        city: &str,
    ) -> Result<BTreeMap<Partition, Offset>, StoreError> {
        let what = format!("read applied offsets of ({tenant}, {city})");
        self.conn
            .select_unpaged(&what, &self.st.shard_applied, (tenant, city), |rows| {
                let applied = rows.maybe_first_row::<(Option<BTreeMap<i32, i64>>,)>()?;
                Ok(offsets_from_cql(
                    applied.and_then(|(a,)| a).unwrap_or_default(),
                ))
            })
            .await
    }
}

/// The inclusive bucket ranges of a window from bucket `from` on: every bucket but the
/// all-time rows' (one range, unless the window reaches back past it).
fn window_ranges(from: i64) -> Vec<(i64, i64)> {
    let mut ranges = Vec::new();
    if from < ALL_TIME {
        ranges.push((from, ALL_TIME - 1));
    }
    ranges.push((from.max(ALL_TIME + 1), i64::MAX));
    ranges
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
        let parts: Vec<(&str, Part, &str)> = shards
            .iter()
            .filter(|s| s.moves_version())
            .map(|s| (s.shard.tenant.as_str(), Part::Shard, s.shard.city.as_str()))
            .collect();
        let write_shards = futures::stream::iter(batches.iter().map(|(what, (batch, values))| {
            self.conn.retrying(what, move || async move {
                self.conn.session.batch(batch, values).await?;
                Ok(())
            })
        }))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>();
        self.conn.run(self.versioned(&parts, write_shards))
    }

    /// In two steps, as no batch over two partitions may be large (Cassandra fails one over
    /// `batch_size_fail_threshold`, 50 KiB by default): first the city's merged rows and offsets
    /// with a record of the merge in `city_merges`, one mutation of the city's partition key;
    /// then the alias's shard and the record, deleted in one small LOGGED batch. A merge cut
    /// between the steps is finished by [`PosteriorStore::finish_merges`], or by this call
    /// again, which finds the record and does not add the rows twice.
    fn merge_shards(&self, writes: &[ShardWrite; 2]) -> Result<(), StoreError> {
        let [from, into] = writes;
        let tenant = into.shard.tenant.as_str();
        let (alias, city) = (from.shard.city.as_str(), into.shard.city.as_str());
        let mut rows = Connection::batch();
        let mut values: BatchValues = Vec::new();
        for (statement, value) in self.shard_statements(into)? {
            rows.append_statement(BatchStatement::from(statement.clone()));
            values.push(value);
        }
        rows.append_statement(BatchStatement::from(self.st.record_merge.clone()));
        let now = CqlTimestamp(Utc::now().timestamp_millis());
        values.push(Box::new((tenant, city, alias, now)));
        if values.len() > BATCH_LIMIT {
            return Err(self.conn.fail(format!(
                "merging shard ({tenant}, {alias}) into ({tenant}, {city}) writes {} rows; one \
                 batch holds at most {BATCH_LIMIT}",
                into.rows.len()
            )));
        }
        let parts = [(tenant, Part::Shard, alias), (tenant, Part::Shard, city)];
        let merge = async {
            if !self.merge_recorded(tenant, alias, city).await? {
                self.conn
                    .retrying("merge shard rows", || async {
                        self.conn.session.batch(&rows, &values).await?;
                        Ok(())
                    })
                    .await?;
            }
            self.delete_merged(tenant, alias, city).await
        };
        self.conn.run(self.versioned(&parts, merge))
    }

    fn finish_merges(&self, aliases: &TenantAliases) -> Result<(), StoreError> {
        self.conn.run(async {
            for (tenant, alias, city) in aliases.iter() {
                if self.merge_recorded(tenant, alias, city).await? {
                    let parts = [(tenant, Part::Shard, alias), (tenant, Part::Shard, city)];
                    self.versioned(&parts, self.delete_merged(tenant, alias, city))
                        .await?;
                }
            }
            Ok(())
        })
    }

    fn clear_counts(&self) -> Result<(), StoreError> {
        let mut truncate = Statement::new(format!("TRUNCATE {}.arm_counts", self.conn.keyspace));
        truncate.set_request_timeout(Some(TRUNCATE_TIMEOUT));
        truncate.set_is_idempotent(true);
        truncate.set_consistency(CONSISTENCY);
        self.conn.run(async {
            // The counts go first: a reader that meanwhile reads the old versions reads either
            // the old counts or none, and sees every shard change once the versions go.
            self.conn
                .retrying("truncate arm_counts", || async {
                    self.conn
                        .session
                        .query_unpaged(truncate.clone(), &[])
                        .await?;
                    Ok(())
                })
                .await?;
            let tenants = self.tenant_names().await?;
            let shard_parts = tenants.iter().map(|t| (t.as_str(), Part::Shard.as_str()));
            self.conn
                .execute_each(
                    "delete shard versions",
                    &self.st.delete_part_versions,
                    shard_parts,
                )
                .await
        })
    }

    fn counts(&self, q: &CountQuery) -> Result<Vec<(ArmKey, Counts)>, StoreError> {
        self.conn.run(async {
            let shards = self.shards_of(q).await?;
            let per_shard: Vec<_> = futures::stream::iter(shards.iter().map(|(t, c)| async move {
                let rows = self.shard_counts(t, c, q).await?;
                Ok::<_, StoreError>((t, c, rows))
            }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
            let mut sums: BTreeMap<ArmKey, Counts> = BTreeMap::new();
            for (tenant, city, rows) in per_shard {
                for (slot, banner, imp, clk) in rows {
                    let arm = ArmKey::new(tenant, &slot, city, &banner);
                    let counts = counts_of(&arm, Some(imp), Some(clk))
                        .map_err(|f| self.conn.fail(f.detail))?;
                    *sums.entry(arm).or_default() += counts;
                }
            }
            Ok(sums.into_iter().collect())
        })
    }

    fn versions(&self, tenant: &str) -> Result<Versions, StoreError> {
        type Row = (String, String, Option<i64>, Option<bool>);
        let rows: Vec<Row> = self.conn.run(self.conn.select_all(
            "read versions",
            &self.st.versions,
            (tenant,),
        ))?;
        let mut versions = Versions::new();
        for (part, name, version, writing) in rows {
            let corrupt =
                |detail: String| self.conn.failed("read versions", Failure::corrupt(detail));
            let part =
                Part::parse(&part).ok_or_else(|| corrupt(format!("unknown part {part:?}")))?;
            let version = match (version, writing) {
                (Some(v), Some(false) | None) => u64::try_from(v)
                    .map_err(|_| corrupt(format!("negative version of {part:?} {name}")))?,
                // Being written, or left so by a writer that stopped: changed on every read.
                _ => next_version(),
            };
            versions.insert((part, name), version);
        }
        Ok(versions)
    }

    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        self.conn.run(async {
            let mut tenants: std::collections::BTreeSet<String> =
                self.tenant_names().await?.into_iter().collect();
            let keys: Vec<(Option<String>,)> = self
                .conn
                .select_all("list api key tenants", &self.st.api_key_tenants, &[])
                .await?;
            tenants.extend(keys.into_iter().filter_map(|(t,)| t));
            Ok(tenants.into_iter().collect())
        })
    }

    fn write_all_priors(&self, slots: &[SlotPriorsWrite]) -> Result<(), StoreError> {
        // A slot's old rows are deleted one microsecond before the new ones are written, in one
        // batch of its partition key (both tables): one mutation, atomic and isolated.
        let written = Utc::now().timestamp_micros();
        let mut batches = Vec::with_capacity(slots.len());
        for (tenant, slot, priors) in slots {
            let (t, s) = (tenant.as_str(), slot.as_str());
            let mut batch = Connection::batch();
            let mut values: BatchValues = Vec::new();
            batch.append_statement(BatchStatement::from(self.st.delete_priors.clone()));
            values.push(Box::new((written - 1, t, s)));
            batch.append_statement(BatchStatement::from(self.st.delete_prior_cities.clone()));
            values.push(Box::new((written - 1, t, s)));
            for row in prior_rows(priors) {
                let PriorRow {
                    banner,
                    alpha0,
                    beta0,
                    source,
                } = row;
                batch.append_statement(BatchStatement::from(self.st.write_prior.clone()));
                values.push(Box::new((t, s, banner, alpha0, beta0, source, written)));
            }
            for row in city_rows(priors) {
                batch.append_statement(BatchStatement::from(self.st.write_prior_city.clone()));
                values.push(Box::new((t, s, row.city, row.level, row.clicks, written)));
            }
            if values.len() > BATCH_LIMIT {
                return Err(self.conn.fail(format!(
                    "the priors of slot ({t}, {s}) have {} rows; one batch holds at most \
                     {BATCH_LIMIT}",
                    values.len() - 2
                )));
            }
            batches.push((batch, values));
        }
        let parts: Vec<(&str, Part, &str)> = slots
            .iter()
            .map(|(t, s, _)| (t.as_str(), Part::Priors, s.as_str()))
            .collect();
        let write = async {
            futures::stream::iter(batches.iter().map(|(batch, values)| {
                self.conn.retrying("write priors", move || async move {
                    self.conn.session.batch(batch, values).await?;
                    Ok(())
                })
            }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
        };
        self.conn.run(self.versioned(&parts, write)).map(|_| ())
    }

    fn priors(&self, tenant: &str, slot: &str) -> Result<SlotPriors, StoreError> {
        self.conn.run(async {
            let mut priors = self
                .conn
                .select_unpaged(
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
                )
                .await?;
            let cities: Vec<(String, f64, f64)> = self
                .conn
                .select_all(
                    "read prior cities",
                    &self.st.prior_cities_of_slot,
                    (tenant, slot),
                )
                .await?;
            for (city, level, clicks) in cities {
                let row = CityRow {
                    city: &city,
                    level,
                    clicks,
                };
                read_city_row(&mut priors, row)
                    .map_err(|e| self.conn.failed("read prior cities", Failure::corrupt(e)))?;
            }
            Ok(priors)
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.run(
            self.conn
                .execute("write meta", &self.st.set_meta, (key, value)),
        )
    }

    fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.conn.run(async {
            self.conn
                .execute("claim meta", &self.st.claim_meta, (key, value))
                .await?;
            self.meta_after_transaction(key, "read claimed meta").await
        })
    }

    fn replace_meta(&self, key: &str, expected: &str, value: &str) -> Result<String, StoreError> {
        self.conn.run(async {
            self.conn
                .execute(
                    "replace meta",
                    &self.st.replace_meta,
                    (value, key, expected),
                )
                .await?;
            self.meta_after_transaction(key, "read replaced meta").await
        })
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
            let mut keys = self.all_shards().await?;
            keys.retain(|(t, c)| owns(t, c));
            keys.sort();
            let mut states: Vec<ShardState> =
                futures::stream::iter(keys.iter().map(|(t, c)| self.shard_state(t, c)))
                    .buffered(IN_FLIGHT)
                    .try_collect()
                    .await?;
            states.retain(|s| !s.rows.is_empty() || !s.applied.is_empty());
            for state in &mut states {
                state.rows.sort();
            }
            Ok(states)
        })
    }

    fn applied_offsets(&self) -> Result<AppliedOffsets, StoreError> {
        self.conn.run(async {
            let keys = self.all_shards().await?;
            let offsets: Vec<_> =
                futures::stream::iter(keys.into_iter().map(|(t, c)| async move {
                    let applied = self.shard_applied(&t, &c).await?;
                    Ok::<_, StoreError>((ShardKey { tenant: t, city: c }, applied))
                }))
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
            Ok(offsets
                .into_iter()
                .filter(|(_, applied): &(ShardKey, BTreeMap<_, _>)| !applied.is_empty())
                .collect())
        })
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
        if config.banners.len() + 2 > BATCH_LIMIT {
            return Err(self.conn.fail(format!(
                "slot ({t}, {s}) has {} banners; at most {} fit in one batch",
                config.banners.len(),
                BATCH_LIMIT - 2
            )));
        }
        let mut batch = Connection::batch();
        let mut values: BatchValues = Vec::new();
        batch.append_statement(BatchStatement::from(self.st.delete_slot.clone()));
        values.push(Box::new((written - 1, t, s)));
        let rules = &config.rules;
        batch.append_statement(BatchStatement::from(self.st.insert_slot_rules.clone()));
        values.push(Box::new((
            t,
            s,
            rules.recency.map(|r| r.minutes() as i32),
            i32::from(rules.holdout_bp),
            written,
        )));
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
        let write = self.conn.retrying("write slot", || async {
            self.conn.session.batch(&batch, &values).await?;
            Ok(())
        });
        self.conn.run(self.versioned(&[(t, Part::Slot, s)], write))
    }

    fn slot(&self, tenant: &str, slot: &str) -> Result<Option<SlotConfig>, StoreError> {
        self.conn.run(self.conn.select_unpaged(
            "read slot",
            &self.st.slot_banners,
            (tenant, slot),
            |rows| {
                let mut banners = Vec::new();
                let mut rules = SlotRules::default();
                type Row = (
                    Option<String>,
                    Option<String>,
                    Option<CqlTimestamp>,
                    Option<CqlTimestamp>,
                    Option<i32>,
                    Option<i32>,
                );
                for row in rows.rows::<Row>()? {
                    let (id, image, from, to, recency, holdout_bp) = row?;
                    rules = slot_rules(recency, holdout_bp)?;
                    let (Some(id), Some(image), Some(from), Some(to)) = (id, image, from, to)
                    else {
                        continue;
                    };
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
                    rules,
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

    fn city_aliases(&self, tenant: &str) -> Result<CityAliases, StoreError> {
        let rows: Vec<(String, String)> = self.conn.run(self.conn.select_all(
            "read city aliases",
            &self.st.city_aliases,
            (tenant,),
        ))?;
        Ok(rows.into_iter().collect())
    }

    fn put_city_aliases(&self, tenant: &str, aliases: &CityAliases) -> Result<(), StoreError> {
        // As in put_slot: the old aliases are deleted one microsecond before the new ones are
        // written, in one single-partition batch.
        let written = Utc::now().timestamp_micros();
        if aliases.len() + 1 > BATCH_LIMIT {
            return Err(self.conn.fail(format!(
                "tenant {tenant} has {} city aliases; at most {} fit in one batch",
                aliases.len(),
                BATCH_LIMIT - 1
            )));
        }
        let mut batch = Connection::batch();
        let mut values: BatchValues = Vec::new();
        batch.append_statement(BatchStatement::from(self.st.delete_city_aliases.clone()));
        values.push(Box::new((written - 1, tenant)));
        for (alias, city) in aliases.iter() {
            batch.append_statement(BatchStatement::from(self.st.insert_city_alias.clone()));
            values.push(Box::new((tenant, alias, city, written)));
        }
        let write = self.conn.retrying("write city aliases", || async {
            self.conn.session.batch(&batch, &values).await?;
            Ok(())
        });
        self.conn
            .run(self.versioned(&[(tenant, Part::Aliases, "")], write))
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

/// A slot's rules from their static columns (null: not set).
fn slot_rules(recency: Option<i32>, holdout_bp: Option<i32>) -> Result<SlotRules, Failure> {
    let recency = recency
        .map(|m| {
            u32::try_from(m)
                .ok()
                .and_then(|m| Recency::from_minutes("recency_minutes", m).ok())
                .ok_or_else(|| Failure::corrupt(format!("slot recency_minutes {m}")))
        })
        .transpose()?;
    let holdout_bp = holdout_bp.unwrap_or(0);
    let holdout_bp = u16::try_from(holdout_bp)
        .ok()
        .filter(|&bp| bp <= HOLDOUT_MAX_BP)
        .ok_or_else(|| Failure::corrupt(format!("slot holdout_bp {holdout_bp}")))?;
    Ok(SlotRules {
        recency,
        holdout_bp,
    })
}
