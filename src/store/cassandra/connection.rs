//! A session to the cluster and the tokio runtime its connections live on, with the ways the
//! store runs statements: each under the retry policy, and many at once up to [`IN_FLIGHT`].
//!
//! The trait is synchronous and is called from timely worker threads and from tokio
//! `spawn_blocking` threads of the lookup service. The store owns its tokio runtime (the driver's
//! connections live there) and waits for each operation with a plain executor on the calling
//! thread, with the runtime entered for the driver's timers: unlike `Runtime::block_on`, this
//! works on any thread, including one that already belongs to another runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::response::query_result::QueryRowsResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

use super::retry::{retrying, Failure};
use crate::store::url::CassandraUrl;
use crate::store::StoreError;

/// Shard batches, statements and partition reads in flight at once, per call.
pub(super) const IN_FLIGHT: usize = 32;
/// The longest a single request may take before it counts as a failed attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The consistency of every request the store makes, reads and writes alike (docs/architecture.md,
/// "Consistency"): a write acknowledged by a quorum of the local data center's replicas meets a
/// read from any quorum of them, so a restarted job reads back the applied offsets and
/// checkpoints it wrote, and the service the versions and counts they name.
pub(super) const CONSISTENCY: Consistency = Consistency::LocalQuorum;

/// A session, the runtime it lives on, and the retry policy.
pub(super) struct Connection {
    name: String,
    pub keyspace: String,
    deadline: Duration,
    pub session: Session,
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
    pub fn connect(url: &CassandraUrl) -> Result<Self, StoreError> {
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
            .consistency(CONSISTENCY)
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

    /// Prepares an idempotent statement (every one the store runs may be sent again) at
    /// [`CONSISTENCY`].
    pub async fn prepare(&self, what: &str, cql: &str) -> Result<PreparedStatement, StoreError> {
        let mut statement = self
            .retrying(what, || async { Ok(self.session.prepare(cql).await?) })
            .await?;
        statement.set_is_idempotent(true);
        statement.set_consistency(CONSISTENCY);
        Ok(statement)
    }

    /// An empty single-partition batch: unlogged, idempotent, at [`CONSISTENCY`].
    pub fn batch() -> Batch {
        Self::batch_of(BatchType::Unlogged)
    }

    /// An empty logged batch (atomic across partitions), idempotent, at [`CONSISTENCY`].
    pub fn logged_batch() -> Batch {
        Self::batch_of(BatchType::Logged)
    }

    fn batch_of(kind: BatchType) -> Batch {
        let mut batch = Batch::new(kind);
        batch.set_is_idempotent(true);
        batch.set_consistency(CONSISTENCY);
        batch
    }

    /// Runs a future to completion on the calling thread (see the module notes).
    pub fn run<T>(&self, future: impl Future<Output = T>) -> T {
        let _entered = self.runtime.as_ref().expect("runtime until drop").enter();
        futures::executor::block_on(future)
    }

    pub async fn retrying<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        retrying(&self.name, self.deadline, what, attempt).await
    }

    pub fn fail(&self, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Cassandra {
            store: self.name.clone(),
            detail: detail.to_string(),
        }
    }

    /// The error of operation `what` that failed for good after its rows were read.
    pub fn failed(&self, what: &str, failure: Failure) -> StoreError {
        failure.into_error(&self.name, what)
    }

    /// Runs one statement, retried, and ignores what it returns.
    pub async fn execute(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<(), StoreError> {
        self.retrying(what, || async {
            self.session.execute_unpaged(statement, &values).await?;
            Ok(())
        })
        .await
    }

    /// Runs one statement per row of values, each retried, up to [`IN_FLIGHT`] at once.
    pub async fn execute_each<V: SerializeRow>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        rows: impl IntoIterator<Item = V>,
    ) -> Result<(), StoreError> {
        futures::stream::iter(
            rows.into_iter()
                .map(|values| async move { self.execute(what, statement, values).await }),
        )
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
    }

    /// The rows of a query small enough for one response (one partition of a small table),
    /// decoded; the whole read is retried.
    pub async fn select_unpaged<T>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        decode: impl Fn(QueryRowsResult) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.retrying(what, || async {
            let rows = self
                .session
                .execute_unpaged(statement, &values)
                .await?
                .into_rows_result()?;
            decode(rows)
        })
        .await
    }

    /// Every row a query returns, read page by page; the whole read is retried.
    pub async fn select_all<R>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow + Clone,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        self.retrying(what, || async {
            let pager = self
                .session
                .execute_iter(statement.clone(), values.clone())
                .await?;
            Ok(pager.rows_stream::<R>()?.try_collect().await?)
        })
        .await
    }
}
