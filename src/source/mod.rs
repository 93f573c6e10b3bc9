//! Where events come from. Backfill reads Parquet history (`parquet`); the live event logs
//! (Kafka, the embedded file log) come with the streaming job.

pub mod parquet;
