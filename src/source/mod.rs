//! Where events come from. Backfill reads Parquet history (`parquet`); the streaming job and the
//! lookup service use an event log, one trait ([`EventLog`]) with a backend per file: Kafka
//! (`kafka://HOST:PORT/TOPIC`) and the embedded file log (`file:PATH`).
//!
//! Offsets: a record's offset is its position in its partition (0, 1, 2, …). A shard's `applied`
//! offset is the offset of the last record it has counted; a job's checkpoint is the next offset
//! to read, below which every shard has applied everything.

pub mod parquet;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::Event;
use crate::store::{Offset, Partition};

/// One message read from a log partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub partition: Partition,
    pub offset: Offset,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// When the log appended it, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log URL {url:?}: {rule}")]
    Url { url: String, rule: String },
    #[error("event log {log}: {detail}")]
    Unavailable { log: String, detail: String },
    #[error("event log {log}: {detail}")]
    Corrupt { log: String, detail: String },
}

/// An append-only, partitioned event log. Events are keyed `tenant|city`, so one shard's events
/// stay in one partition, in order.
pub trait EventLog: Send + Sync {
    /// The log's name as given (for messages and metrics).
    fn name(&self) -> &str;
    fn partitions(&self) -> Result<Vec<Partition>, LogError>;
    /// Appends events keyed `tenant|city`; returns once every one is durable (fsynced, or
    /// acknowledged by all in-sync replicas).
    fn append(&self, events: &[Event]) -> Result<(), LogError>;
    /// Appends messages as given (replays, tests that inject malformed messages); durable on
    /// return like [`EventLog::append`].
    fn append_raw(&self, messages: &[(Option<&[u8]>, &[u8])]) -> Result<(), LogError>;
    /// Opens a reader of the given partitions, each from its start offset (inclusive).
    fn reader(&self, start: &BTreeMap<Partition, Offset>) -> Result<Box<dyn LogReader>, LogError>;
    /// Per partition, the first offset appended at or after `ts` (the end offset if none).
    fn offsets_for_time(&self, ts: DateTime<Utc>) -> Result<BTreeMap<Partition, Offset>, LogError>;
    /// Per partition, the offset the next appended record will get.
    fn end_offsets(&self) -> Result<BTreeMap<Partition, Offset>, LogError>;
    /// Sends malformed records to the dead-letter log with the reason (Kafka: topic
    /// `TOPIC-dlq`, reason in the `reason` header).
    fn dead_letter(&self, letters: &[(LogRecord, String)]) -> Result<(), LogError>;
}

pub trait LogReader: Send {
    /// Up to `max` records in offset order per partition, waiting at most `timeout` for the
    /// first; an empty batch means nothing new arrived.
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<LogRecord>, LogError>;
}

/// The key of an event's message: `tenant|city`.
pub fn event_key(event: &Event) -> String {
    format!("{}|{}", event.tenant, event.city)
}
