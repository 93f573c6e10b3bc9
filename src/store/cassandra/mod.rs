//! The Cassandra store (docs/architecture.md, "Store layouts" and "Exactly once"), on the scylla
//! driver. Each (tenant, city) shard is one partition of `arm_counts`; an epoch writes each changed
//! shard as one UNLOGGED single-partition batch carrying its rows and its `applied` offsets, which
//! Cassandra applies atomically and in isolation, and then a new version of the shard in its
//! tenant's partition of `part_versions`. Every operation retries with exponential backoff until
//! the URL's deadline, then fails naming the store, the operation and the last error.
//!
//! - `schema`: the versioned CQL files, [`Replication`], `schema apply` and the version check;
//! - `migrate`: what `schema apply` does beyond the CQL when it moves a keyspace to a version;
//! - `connection`: the session, the runtime it lives on, and how statements are run;
//! - `retry`: the one retry rule for every operation, and which driver errors are worth retrying;
//! - `statements`: the prepared statements;
//! - `store`: [`CassandraStore`], the [`crate::store::PosteriorStore`] over those tables.

mod connection;
mod migrate;
mod retry;
mod schema;
mod statements;
mod store;

pub use schema::{apply_schema, render_schema, Replication, SCHEMA_VERSION};
pub use store::CassandraStore;
