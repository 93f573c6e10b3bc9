//! The Cassandra store (DESIGN.md §3, §5), on the scylla driver. Each (tenant, city) shard is one
//! partition of `arm_state`; an epoch writes each changed shard as one UNLOGGED single-partition
//! batch carrying its rows and its `applied` offsets, which Cassandra applies atomically and in
//! isolation. Every operation retries with exponential backoff until the URL's deadline, then
//! fails naming the store, the operation and the last error.
//!
//! The trait is synchronous and is called from timely worker threads and from tokio
//! `spawn_blocking` threads of the lookup service. The store owns its tokio runtime (the driver's
//! connections live there) and waits for each operation with a plain executor on the calling
//! thread, with the runtime entered for the driver's timers: unlike `Runtime::block_on`, this
//! works on any thread, including one that already belongs to another runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::value::CqlTimestamp;

use super::{
    validate_keyspace, ApiKey, AppliedOffsets, CassandraUrl, CountQuery, PosteriorStore,
    ShardState, ShardWrite, StoreError,
};
use crate::bandit::{Prior, PriorSource, SlotPriors};
use crate::model::{
    ArmKey, Banner, CountKey, Counts, Event, EventFields, Offset, Partition, ShardKey, SlotConfig,
    ALL_TIME,
};
use crate::retry::RetryPolicy;

/// The schema files, in version order: (version, name, CQL with `{keyspace}` and
/// `{replication}` placeholders).
const MIGRATIONS: [(i32, &str, &str); 1] = [(
    1,
    "001_init",
    include_str!("../../schema/cassandra/001_init.cql"),
)];
/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// A batch holds at most this many statements (the protocol counts them in a u16).
const BATCH_LIMIT: usize = u16::MAX as usize;
/// Shard batches and partition reads in flight at once, per call.
const IN_FLIGHT: usize = 32;
/// The longest a single request may take before it counts as a failed attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// TRUNCATE flushes and waits for every replica.
const TRUNCATE_TIMEOUT: Duration = Duration::from_secs(120);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The shortest time an attempt gets, even at the deadline.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// How the keyspace is replicated: `simple:RF` (SimpleStrategy, one data centre, development)
/// or `DC:RF[,DC:RF...]` (NetworkTopologyStrategy, clusters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    Simple(u8),
    Network(Vec<(String, u8)>),
}

impl Default for Replication {
    fn default() -> Self {
        Replication::Simple(1)
    }
}

impl std::str::FromStr for Replication {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let factor = |dc: &str, rf: &str| -> Result<u8, String> {
            rf.parse::<u8>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                format!(
                    "replication factor of {dc} must be a whole number from 1 to 255 (got {rf:?})"
                )
            })
        };
        if let Some(rf) = s.strip_prefix("simple:") {
            return factor("simple", rf).map(Replication::Simple);
        }
        let mut dcs = Vec::new();
        for part in s.split(',') {
            let Some((dc, rf)) = part.split_once(':') else {
                return Err(format!(
                    "must be simple:RF or DC:RF[,DC:RF...] (got {part:?})"
                ));
            };
            let valid_dc = !dc.is_empty()
                && dc.len() <= 64
                && dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !valid_dc {
                return Err(format!(
                    "data centre name must match [A-Za-z0-9_.-]{{1,64}} (got {dc:?})"
                ));
            }
            if dcs.iter().any(|(seen, _)| seen == dc) {
                return Err(format!("data centre {dc:?} is named twice"));
            }
            dcs.push((dc.to_string(), factor(dc, rf)?));
        }
        Ok(Replication::Network(dcs))
    }
}

impl Replication {
    /// The CQL map of `WITH replication = ...`.
    pub fn cql(&self) -> String {
        match self {
            Replication::Simple(rf) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}")
            }
            Replication::Network(dcs) => {
                let factors: Vec<String> =
                    dcs.iter().map(|(dc, rf)| format!("'{dc}': {rf}")).collect();
                format!(
                    "{{'class': 'NetworkTopologyStrategy', {}}}",
                    factors.join(", ")
                )
            }
        }
    }
}

/// The whole schema as CQL for one keyspace, as `schema apply` runs it.
pub fn render_schema(keyspace: &str, replication: &Replication) -> Result<String, StoreError> {
    validate_keyspace(keyspace).map_err(|rule| StoreError::Url {
        url: keyspace.to_string(),
        rule,
    })?;
    Ok(MIGRATIONS
        .iter()
        .map(|(_, _, cql)| render(cql, keyspace, replication))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn render(cql: &str, keyspace: &str, replication: &Replication) -> String {
    cql.replace("{keyspace}", keyspace)
        .replace("{replication}", &replication.cql())
}

/// The statements of a CQL file: `--` comments dropped, split at `;`.
fn statements(cql: &str) -> Vec<String> {
    let text: String = cql
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Creates the keyspace and tables if missing and records the schema versions; returns the
/// versions this call recorded (empty when the keyspace was already current).
pub fn apply_schema(url: &CassandraUrl, replication: &Replication) -> Result<Vec<i32>, StoreError> {
    let conn = Connection::connect(url)?;
    conn.run(async {
        for (_, name, cql) in MIGRATIONS {
            for statement in statements(&render(cql, &url.keyspace, replication)) {
                conn.retrying(&format!("schema {name}"), || async {
                    conn.session.query_unpaged(statement.as_str(), &[]).await?;
                    Ok(())
                })
                .await?;
            }
        }
        let present = conn.schema_versions().await?.unwrap_or_default();
        let mut recorded = Vec::new();
        for (version, name, _) in MIGRATIONS {
            if present.contains(&version) {
                continue;
            }
            let insert = format!(
                "INSERT INTO {}.schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                url.keyspace
            );
            conn.retrying("record the schema version", || async {
                let now = CqlTimestamp(Utc::now().timestamp_millis());
                conn.session
                    .query_unpaged(insert.as_str(), (version, name, now))
                    .await?;
                Ok(())
            })
            .await?;
            recorded.push(version);
        }
        Ok(recorded)
    })
}

/// Why one attempt failed, and whether trying again can help.
struct Failure {
    detail: String,
    permanent: bool,
}

impl Failure {
    fn permanent(detail: impl std::fmt::Display) -> Self {
        Failure {
            detail: detail.to_string(),
            permanent: true,
        }
    }
}

/// Errors that retrying cannot cure: the statement or the schema is wrong.
fn db_error_is_permanent(e: &RequestAttemptError) -> bool {
    matches!(
        e,
        RequestAttemptError::DbError(
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::AlreadyExists { .. }
                | DbError::FunctionFailure { .. }
                | DbError::AuthenticationError
                | DbError::Unauthorized
                | DbError::ConfigError,
            _
        ) | RequestAttemptError::SerializationError(_)
    )
}

impl From<ExecutionError> for Failure {
    fn from(e: ExecutionError) -> Self {
        let permanent = match &e {
            ExecutionError::BadQuery(_) => true,
            ExecutionError::LastAttemptError(a) => db_error_is_permanent(a),
            ExecutionError::PrepareError(PrepareError::AllAttemptsFailed { first_attempt }) => {
                db_error_is_permanent(first_attempt)
            }
            _ => false,
        };
        Failure {
            detail: e.to_string(),
            permanent,
        }
    }
}

impl From<PrepareError> for Failure {
    fn from(e: PrepareError) -> Self {
        let permanent = matches!(&e, PrepareError::AllAttemptsFailed { first_attempt } if db_error_is_permanent(first_attempt));
        Failure {
            detail: e.to_string(),
            permanent,
        }
    }
}

/// Transient: the pager and session errors are mostly lost connections and timeouts.
macro_rules! transient_failures {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure { detail: e.to_string(), permanent: false }
            }
        }
    )*};
}
transient_failures!(
    scylla::errors::PagerExecutionError,
    scylla::errors::NextRowError,
    scylla::errors::NewSessionError
);

/// Rows that do not have the types of our schema: retrying reads the same rows.
macro_rules! permanent_failures {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure::permanent(e)
            }
        }
    )*};
}
permanent_failures!(
    scylla::errors::IntoRowsResultError,
    scylla::errors::RowsError,
    scylla::errors::TypeCheckError,
    scylla::errors::DeserializationError,
    scylla::errors::MaybeFirstRowError
);

/// A session, the runtime it lives on, and the retry policy.
struct Connection {
    name: String,
    keyspace: String,
    deadline: Duration,
    session: Session,
    /// `Some` until drop, which shuts it down without waiting (it may be dropped on a thread of
    /// another runtime, where a blocking shutdown would panic).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Connection {
    fn connect(url: &CassandraUrl) -> Result<Self, StoreError> {
        let name = url.name();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cassandra-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Cassandra {
                store: name.clone(),
                detail: format!("cannot start the driver's runtime: {e}"),
            })?;
        let profile = ExecutionProfile::builder()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .build();
        let builder = SessionBuilder::new()
            .known_nodes(&url.nodes)
            .keyspaces_to_fetch([url.keyspace.clone()])
            .default_execution_profile_handle(profile.into_handle())
            // One process writes each shard: its own monotonic clock orders the shard's writes,
            // whichever coordinator takes them.
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
        let deadline = url.deadline;
        let session = {
            let _entered = runtime.enter();
            futures::executor::block_on(retrying(&name, deadline, "connect", || async {
                Ok(builder.build().await?)
            }))?
        };
        Ok(Connection {
            name,
            keyspace: url.keyspace.clone(),
            deadline,
            session,
            runtime: Some(runtime),
        })
    }

    /// Runs a future to completion on the calling thread (see the module notes).
    fn run<T>(&self, future: impl Future<Output = T>) -> T {
        let _entered = self.runtime.as_ref().expect("runtime until drop").enter();
        futures::executor::block_on(future)
    }

    async fn retrying<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        retrying(&self.name, self.deadline, what, attempt).await
    }

    fn fail(&self, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Cassandra {
            store: self.name.clone(),
            detail: detail.to_string(),
        }
    }

    /// The schema versions recorded in the keyspace, or `None` when it has no schema table.
    async fn schema_versions(&self) -> Result<Option<BTreeSet<i32>>, StoreError> {
        let found = self
            .retrying("read the schema", || async {
                let rows = self
                    .session
                    .query_unpaged(
                        "SELECT table_name FROM system_schema.tables \
                         WHERE keyspace_name = ? AND table_name = 'schema_version'",
                        (&self.keyspace,),
                    )
                    .await?
                    .into_rows_result()?;
                Ok(rows.maybe_first_row::<(String,)>()?.is_some())
            })
            .await?;
        if !found {
            return Ok(None);
        }
        let select = format!("SELECT version FROM {}.schema_version", self.keyspace);
        self.retrying("read the schema version", || async {
            let rows = self
                .session
                .query_unpaged(select.as_str(), &[])
                .await?
                .into_rows_result()?;
            let versions = rows
                .rows::<(i32,)>()?
                .map(|r| r.map(|(v,)| v))
                .collect::<Result<BTreeSet<i32>, _>>()?;
            Ok(Some(versions))
        })
        .await
    }
}

/// Calls `attempt` under the store's [`RetryPolicy`] until it succeeds, fails for good, or the
/// deadline passes: waits 0.1 s, 0.2 s, … up to 5 s between attempts; an attempt that gets no
/// answer within its budget counts as failed.
async fn retrying<T, F, Fut>(
    store: &str,
    deadline: Duration,
    what: &str,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut retry = RetryPolicy {
        first_backoff: FIRST_BACKOFF,
        max_backoff: MAX_BACKOFF,
        deadline: Some(deadline),
        min_attempt: MIN_ATTEMPT,
    }
    .start();
    loop {
        let allowed = retry.attempt_budget();
        let failure = match tokio::time::timeout(allowed, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(failure)) => failure,
            Err(_) => Failure {
                detail: format!("no answer within {:.1} s", allowed.as_secs_f64()),
                permanent: false,
            },
        };
        let fail = |detail: String| StoreError::Cassandra {
            store: store.to_string(),
            detail,
        };
        if failure.permanent {
            return Err(fail(format!("{what}: {}", failure.detail)));
        }
        let Some(wait) = retry.next_wait() else {
            return Err(fail(format!(
                "{what}: gave up after {} attempt(s) in {:.1} s (deadline_s={}); last error: {}",
                retry.attempts(),
                retry.elapsed().as_secs_f64(),
                deadline.as_secs(),
                failure.detail
            )));
        };
        tracing::warn!(
            "cassandra store {store}: {what} failed (attempt {}), retrying in {:.1} s: {}",
            retry.attempts(),
            wait.as_secs_f64(),
            failure.detail
        );
        tokio::time::sleep(wait).await;
    }
}

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

/// The prepared statements, named by what they do.
struct Statements {
    upsert_count: PreparedStatement,
    delete_count: PreparedStatement,
    add_applied: PreparedStatement,
    shard_partitions: PreparedStatement,
    applied_offsets: PreparedStatement,
    shard: PreparedStatement,
    counts_in_shard: PreparedStatement,
    counts_of_slot_in_shard: PreparedStatement,
    write_prior: PreparedStatement,
    priors_of_slot: PreparedStatement,
    set_meta: PreparedStatement,
    meta: PreparedStatement,
    set_checkpoint: PreparedStatement,
    checkpoints: PreparedStatement,
    delete_slot: PreparedStatement,
    insert_banner: PreparedStatement,
    slot_banners: PreparedStatement,
    slot_partitions: PreparedStatement,
    put_api_key: PreparedStatement,
    api_key: PreparedStatement,
    insert_customer_event: PreparedStatement,
    customer_events: PreparedStatement,
}

impl Statements {
    async fn prepare(conn: &Connection) -> Result<Self, StoreError> {
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
            let apply = format!(
                "run `slotbandit schema apply --store cassandra://{}`",
                url.name()
            );
            match conn.schema_versions().await?.and_then(|v| v.last().copied()) {
                None => {
                    return Err(conn.fail(format!(
                        "keyspace `{}` has no slotbandit schema ({apply})",
                        url.keyspace
                    )))
                }
                Some(v) if v < SCHEMA_VERSION => {
                    return Err(conn.fail(format!(
                        "schema version {v} is older than this build's {SCHEMA_VERSION} ({apply})"
                    )))
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(conn.fail(format!(
                        "schema version {v} is newer than this build's {SCHEMA_VERSION} (upgrade slotbandit)"
                    )))
                }
                Some(_) => {}
            }
            Statements::prepare(&conn).await
        })?;
        Ok(Self { conn, st })
    }

    fn corrupt(&self, detail: impl std::fmt::Display) -> Failure {
        Failure::permanent(format!("stored data breaks the schema's rules: {detail}"))
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
            .retrying("list shards", || async {
                let rows = self
                    .conn
                    .session
                    .execute_iter(self.st.shard_partitions.clone(), &[])
                    .await?
                    .rows_stream::<(String, String)>()?;
                Ok(rows.try_collect().await?)
            })
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
        type Row = (String, String, i64, i64, i64);
        self.conn
            .retrying(&format!("read shard ({tenant}, {city})"), || async {
                let pager = match slot {
                    Some(s) => {
                        self.conn
                            .session
                            .execute_iter(
                                self.st.counts_of_slot_in_shard.clone(),
                                (tenant, city, s, buckets.0, buckets.1),
                            )
                            .await?
                    }
                    None => {
                        self.conn
                            .session
                            .execute_iter(
                                self.st.counts_in_shard.clone(),
                                (tenant, city, buckets.0, buckets.1),
                            )
                            .await?
                    }
                };
                Ok(pager.rows_stream::<Row>()?.try_collect().await?)
            })
            .await
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
        self.conn
            .retrying(&format!("read shard ({tenant}, {city})"), || async {
                let result = self
                    .conn
                    .session
                    .execute_unpaged(&self.st.shard, (tenant, city))
                    .await?
                    .into_rows_result()?;
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
                    let counts = self.counts_of(&arm, imp, clk)?;
                    state
                        .rows
                        .push((CountKey::new(Arc::new(arm), bucket), counts));
                }
                Ok(state)
            })
            .await
    }

    fn counts_of(
        &self,
        arm: &ArmKey,
        imp: Option<i64>,
        clk: Option<i64>,
    ) -> Result<Counts, Failure> {
        let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).ok();
        match (count(imp), count(clk)) {
            (Some(i), Some(c)) => Ok(Counts::new(i, c)),
            _ => Err(self.corrupt(format!("negative count for {arm}"))),
        }
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
                    let counts = self
                        .counts_of(&arm, Some(imp), Some(clk))
                        .map_err(|f| self.conn.fail(f.detail))?;
                    *sums.entry(arm).or_default() += counts;
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
        let rows: Vec<(&str, Prior)> = std::iter::once(("", priors.slot))
            .chain(priors.banners.iter().map(|(b, p)| (b.as_str(), *p)))
            .collect();
        self.conn.run(
            futures::stream::iter(rows.iter().map(|(banner, p)| {
                self.conn.retrying("write priors", move || async move {
                    self.conn
                        .session
                        .execute_unpaged(
                            &self.st.write_prior,
                            (tenant, slot, *banner, p.alpha0, p.beta0, p.source.as_str()),
                        )
                        .await?;
                    Ok(())
                })
            }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>(),
        )
    }

    fn priors(&self, tenant: &str, slot: &str) -> Result<SlotPriors, StoreError> {
        self.conn.run(self.conn.retrying("read priors", || async {
            let rows = self
                .conn
                .session
                .execute_unpaged(&self.st.priors_of_slot, (tenant, slot))
                .await?
                .into_rows_result()?;
            let mut priors = SlotPriors::uniform();
            for row in rows.rows::<(String, f64, f64, String)>()? {
                let (banner, alpha0, beta0, source) = row?;
                let prior = Prior {
                    alpha0,
                    beta0,
                    source: PriorSource::parse(&source)
                        .ok_or_else(|| self.corrupt(format!("prior source {source:?}")))?,
                };
                if banner.is_empty() {
                    priors.slot = prior;
                } else {
                    priors.banners.insert(banner, prior);
                }
            }
            Ok(priors)
        }))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.run(self.conn.retrying("write meta", || async {
            self.conn
                .session
                .execute_unpaged(&self.st.set_meta, (key, value))
                .await?;
            Ok(())
        }))
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn.run(self.conn.retrying("read meta", || async {
            let rows = self
                .conn
                .session
                .execute_unpaged(&self.st.meta, (key,))
                .await?
                .into_rows_result()?;
            Ok(rows
                .maybe_first_row::<(Option<String>,)>()?
                .and_then(|(v,)| v))
        }))
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
        self.conn
            .run(self.conn.retrying("read applied offsets", || async {
                let rows = self
                    .conn
                    .session
                    .execute_iter(self.st.applied_offsets.clone(), &[])
                    .await?
                    .rows_stream::<Row>()?;
                Ok(rows
                    .try_filter_map(|(t, c, applied)| async move {
                        Ok(applied.map(|a| (ShardKey { tenant: t, city: c }, offsets_from_cql(a))))
                    })
                    .try_collect()
                    .await?)
            }))
    }

    fn checkpoints(&self, job: &str) -> Result<BTreeMap<Partition, Offset>, StoreError> {
        self.conn
            .run(self.conn.retrying("read checkpoints", || async {
                let rows = self
                    .conn
                    .session
                    .execute_unpaged(&self.st.checkpoints, (job,))
                    .await?
                    .into_rows_result()?;
                Ok(offsets_from_cql(
                    rows.rows::<(i32, i64)>()?
                        .collect::<Result<BTreeMap<_, _>, _>>()?,
                ))
            }))
    }

    fn set_checkpoints(
        &self,
        job: &str,
        offsets: &BTreeMap<Partition, Offset>,
    ) -> Result<(), StoreError> {
        let now = CqlTimestamp(Utc::now().timestamp_millis());
        self.conn.run(
            futures::stream::iter(offsets.iter().map(|(&partition, &offset)| {
                self.conn.retrying("write checkpoints", move || async move {
                    self.conn
                        .session
                        .execute_unpaged(&self.st.set_checkpoint, (job, partition.0, offset.0, now))
                        .await?;
                    Ok(())
                })
            }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>(),
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
        self.conn.run(self.conn.retrying("read slot", || async {
            let rows = self
                .conn
                .session
                .execute_unpaged(&self.st.slot_banners, (tenant, slot))
                .await?
                .into_rows_result()?;
            let mut banners = Vec::new();
            for row in rows.rows::<(String, String, CqlTimestamp, CqlTimestamp)>()? {
                let (id, image, from, to) = row?;
                let instant = |t: CqlTimestamp| {
                    DateTime::from_timestamp_millis(t.0)
                        .ok_or_else(|| self.corrupt(format!("banner {id} time {}", t.0)))
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
        }))
    }

    fn slots(&self, tenant: Option<&str>) -> Result<Vec<(String, String)>, StoreError> {
        let mut slots: Vec<(String, String)> =
            self.conn.run(self.conn.retrying("list slots", || async {
                let rows = self
                    .conn
                    .session
                    .execute_iter(self.st.slot_partitions.clone(), &[])
                    .await?
                    .rows_stream::<(String, String)>()?;
                Ok(rows.try_collect().await?)
            }))?;
        slots.retain(|(t, _)| tenant.is_none_or(|want| want == t));
        slots.sort();
        Ok(slots)
    }

    fn put_api_key(&self, key_sha256: &str, key: &ApiKey) -> Result<(), StoreError> {
        self.conn.run(self.conn.retrying("write api key", || async {
            self.conn
                .session
                .execute_unpaged(
                    &self.st.put_api_key,
                    (key_sha256, key.tenant.as_str(), key.role.as_str()),
                )
                .await?;
            Ok(())
        }))
    }

    fn api_key(&self, key_sha256: &str) -> Result<Option<ApiKey>, StoreError> {
        self.conn.run(self.conn.retrying("read api key", || async {
            let rows = self
                .conn
                .session
                .execute_unpaged(&self.st.api_key, (key_sha256,))
                .await?
                .into_rows_result()?;
            match rows.maybe_first_row::<(String, String)>()? {
                None => Ok(None),
                Some((tenant, role)) => Ok(Some(ApiKey {
                    tenant,
                    role: role.parse().map_err(|e: String| self.corrupt(e))?,
                })),
            }
        }))
    }

    fn append_customer_events(&self, events: &[Event]) -> Result<(), StoreError> {
        let with_customer = events
            .iter()
            .filter_map(|e| Some((e, e.customer_id.as_deref()?)));
        self.conn.run(
            futures::stream::iter(with_customer.map(|(e, customer)| {
                self.conn
                    .retrying("write customer events", move || async move {
                        let micros = e.ts.timestamp_micros();
                        self.conn
                            .session
                            .execute_unpaged(
                                &self.st.insert_customer_event,
                                (
                                    e.tenant.as_str(),
                                    customer,
                                    CqlTimestamp(micros.div_euclid(1000)),
                                    micros,
                                    e.event_id.as_str(),
                                    e.kind.as_str(),
                                    e.slot.as_str(),
                                    e.city.as_str(),
                                    e.banner.as_str(),
                                    e.referrer.as_deref(),
                                    e.request_id.as_deref(),
                                ),
                            )
                            .await?;
                        Ok(())
                    })
            }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>(),
        )
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
        self.conn
            .run(self.conn.retrying("read customer events", || async {
                let rows = self
                    .conn
                    .session
                    .execute_iter(
                        self.st.customer_events.clone(),
                        (tenant, customer_id, limit),
                    )
                    .await?
                    .rows_stream::<Row>()?;
                let rows: Vec<Row> = rows.try_collect().await?;
                rows.into_iter()
                    .map(
                        |(event_id, ts_us, kind, slot, city, banner, referrer, request_id)| {
                            let ts = DateTime::from_timestamp_micros(ts_us).ok_or_else(|| {
                                self.corrupt(format!("event {event_id} ts_us {ts_us}"))
                            })?;
                            EventFields {
                                event_id: Some(&event_id),
                                kind: Some(&kind),
                                tenant: Some(tenant),
                                slot: Some(&slot),
                                city: Some(&city),
                                banner: Some(&banner),
                                ts: Some(ts),
                                customer_id: Some(customer_id),
                                referrer: referrer.as_deref(),
                                request_id: request_id.as_deref(),
                            }
                            .validate()
                            .map_err(|e| self.corrupt(format!("event {event_id}: {e}")))
                        },
                    )
                    .collect()
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_parses_both_strategies_and_names_the_rule() {
        assert_eq!("simple:3".parse(), Ok(Replication::Simple(3)));
        assert_eq!(
            "dc1:3,us-east.2:2".parse(),
            Ok(Replication::Network(vec![
                ("dc1".into(), 3),
                ("us-east.2".into(), 2)
            ]))
        );
        assert_eq!(
            Replication::Simple(1).cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            "dc1:3,dc2:1".parse::<Replication>().unwrap().cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 1}"
        );
        for (bad, rule) in [
            ("simple:0", "from 1 to 255"),
            ("simple:x", "from 1 to 255"),
            ("dc1", "simple:RF or DC:RF"),
            ("dc'1:3", "[A-Za-z0-9_.-]"),
            ("dc1:3,dc1:2", "named twice"),
            ("", "simple:RF or DC:RF"),
        ] {
            let err = bad.parse::<Replication>().unwrap_err();
            assert!(err.contains(rule), "{bad}: {err}");
        }
    }

    fn run<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn transient(detail: &str) -> Failure {
        Failure {
            detail: detail.into(),
            permanent: false,
        }
    }

    #[test]
    fn an_attempt_that_never_answers_is_sent_again_within_the_deadline() {
        let mut calls = 0;
        let value = run(retrying(
            "n:1/ks",
            Duration::from_secs(2),
            "truncate",
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n == 1 {
                        std::future::pending::<()>().await;
                    }
                    Ok(n)
                }
            },
        ));
        assert_eq!(value.unwrap(), 2);
    }

    #[test]
    fn retries_until_success_stop_at_a_permanent_failure_and_give_up_at_the_deadline() {
        let deadline = Duration::from_secs(1);
        let mut calls = 0;
        let value = run(retrying("n:1/ks", deadline, "read", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(transient("refused"))
                } else {
                    Ok(n)
                }
            }
        }));
        assert_eq!(value.unwrap(), 3);

        let mut calls = 0;
        let err = run(retrying("n:1/ks", deadline, "write", || {
            calls += 1;
            async { Err::<(), _>(Failure::permanent("syntax error")) }
        }))
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(
            err.to_string(),
            "cassandra store n:1/ks: write: syntax error"
        );

        let mut calls = 0;
        let err = run(retrying("n:1/ks", deadline, "write shard (t, c)", || {
            calls += 1;
            async { Err::<(), _>(transient("connection refused")) }
        }))
        .unwrap_err()
        .to_string();
        assert!(calls > 2, "{calls} attempts");
        assert!(
            err.starts_with(&format!(
                "cassandra store n:1/ks: write shard (t, c): gave up after {calls} attempt(s) in "
            )) && err.ends_with("s (deadline_s=1); last error: connection refused"),
            "{err}"
        );
    }

    #[test]
    fn the_schema_renders_every_table_for_the_keyspace() {
        let cql = render_schema("sb_test", &Replication::Simple(1)).unwrap();
        assert!(!cql.contains("{keyspace}") && !cql.contains("{replication}"));
        let all = statements(&cql);
        assert!(all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS sb_test"));
        for table in [
            "arm_state",
            "priors",
            "slot_banners",
            "customer_events",
            "checkpoints",
            "api_keys",
            "meta",
            "schema_version",
        ] {
            let create = format!("CREATE TABLE IF NOT EXISTS sb_test.{table} (");
            assert_eq!(
                all.iter().filter(|s| s.starts_with(&create)).count(),
                1,
                "{table}"
            );
        }
        assert!(all.iter().all(|s| !s.contains("--") && !s.contains(';')));
        assert!(render_schema("Bad", &Replication::Simple(1)).is_err());
    }
}
