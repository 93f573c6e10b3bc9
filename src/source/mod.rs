//! Where events come from. Backfill reads Parquet history (`parquet`), which `prototype` also
//! writes from a prototype installation's Cassandra keyspace; the streaming job and the lookup
//! service use an event log, one trait ([`EventLog`]) with a backend per folder: Kafka
//! (`kafka://HOST:PORT/TOPIC`) and the embedded file log (`file:PATH`). Every backend passes the
//! same conformance suite, tests/it/event_log.rs; a new backend proves itself there.
//!
//! Offsets: a record's offset is its position in its partition (0, 1, 2, …). A shard's `applied`
//! offset is the offset of the last record it has counted; a job's checkpoint is the next offset
//! to read, below which every shard has applied everything.
//!
//! Both backends put a keyed message in partition `positive(murmur2(key)) % partitions`
//! ([`partition_for_key`]), the rule of Kafka's Java clients, so a message keyed `tenant|city`
//! lands in the same partition whoever produced it.

pub mod filelog;
pub mod kafka;
pub mod parquet;
pub mod prototype;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::address::{parse_host_ports, parse_query};
use crate::model::{Event, Offset, Partition};

pub use filelog::{FileLog, FileLogOptions};
pub use kafka::{KafkaLog, KafkaOptions};

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

impl LogRecord {
    pub fn as_record_ref(&self) -> RecordRef<'_> {
        RecordRef {
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            payload: &self.payload,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// One record lent by a reader, valid until the reader hands over the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub partition: Partition,
    pub offset: Offset,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// When the log appended it, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl RecordRef<'_> {
    pub fn to_log_record(&self) -> LogRecord {
        LogRecord {
            partition: self.partition,
            offset: self.offset,
            key: self.key.map(<[u8]>::to_vec),
            payload: self.payload.to_vec(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log URL {url:?}: {rule}")]
    Url { url: String, rule: String },
    #[error("event log {log}: {detail}")]
    Unavailable { log: String, detail: String },
    #[error("event log {log}: {detail}")]
    Corrupt { log: String, detail: String },
    /// A reader was asked to start where the partition holds no record: before its earliest
    /// offset (deleted by retention) or past its end.
    #[error("event log {log}: partition {partition} has no offset {offset} (it holds offsets {earliest}..{end})")]
    OffsetOutOfRange {
        log: String,
        partition: Partition,
        offset: Offset,
        earliest: Offset,
        end: Offset,
    },
    /// A message the log cannot take (too large for the backend).
    #[error("event log {log}: {detail}")]
    Rejected { log: String, detail: String },
}

/// An append-only, partitioned event log. Events are keyed `tenant|city`, so one shard's events
/// stay in one partition, in order.
pub trait EventLog: Send + Sync {
    /// The log's name as given (for messages and metrics).
    fn name(&self) -> &str;
    fn partitions(&self) -> Result<Vec<Partition>, LogError>;
    /// Appends events, each as the message [`event_key`] → [`Event::to_json`]; returns once every
    /// one is durable (fsynced, or acknowledged by all in-sync replicas).
    fn append(&self, events: &[Event]) -> Result<(), LogError> {
        let encoded: Vec<(String, String)> =
            events.iter().map(|e| (event_key(e), e.to_json())).collect();
        let messages: Vec<(Option<&[u8]>, &[u8])> = encoded
            .iter()
            .map(|(k, v)| (Some(k.as_bytes()), v.as_bytes()))
            .collect();
        self.append_raw(&messages)
    }
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
    /// Lends up to `max` records, in offset order per partition, to `take`, waiting at most
    /// `timeout` for the first; returns how many (0: nothing new arrived). The hot path of the
    /// stream job: no copy of a record is made.
    fn poll_each(
        &mut self,
        max: usize,
        timeout: Duration,
        take: &mut dyn FnMut(RecordRef<'_>),
    ) -> Result<usize, LogError>;

    /// The same records, owned.
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<LogRecord>, LogError> {
        let mut out = Vec::new();
        self.poll_each(max, timeout, &mut |record| out.push(record.to_log_record()))?;
        Ok(out)
    }
}

/// The key of an event's message: `tenant|city`.
pub fn event_key(event: &Event) -> String {
    format!("{}|{}", event.tenant, event.city)
}

/// The partition of a keyed message among `partitions`: `positive(murmur2(key)) % partitions`,
/// the rule of Kafka's Java clients' default partitioner (and of librdkafka's `murmur2`
/// partitioners, whose implementation this calls).
pub fn partition_for_key(key: &[u8], partitions: i32) -> Partition {
    assert!(partitions > 0, "a log has at least one partition");
    // SAFETY: librdkafka's murmur2 partitioner reads `keylen` bytes at `key` and touches none of
    // the topic or opaque pointers (rdkafka_msg.c: `rd_murmur2(key, keylen) & 0x7fffffff) % cnt`).
    Partition(unsafe {
        rdkafka::bindings::rd_kafka_msg_partitioner_murmur2(
            std::ptr::null(),
            key.as_ptr().cast(),
            key.len(),
            partitions,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    })
}

/// Where a log URL points: `kafka://HOST:PORT[,HOST:PORT…]/TOPIC[?OPTIONS]` or
/// `file:PATH[?OPTIONS]` (options in [`KafkaOptions`] and [`FileLogOptions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogUrl {
    Kafka {
        brokers: Vec<String>,
        topic: String,
        options: KafkaOptions,
    },
    File {
        path: PathBuf,
        options: FileLogOptions,
    },
}

const URL_RULE: &str =
    "must be kafka://HOST:PORT[,HOST:PORT...]/TOPIC[?options] or file:PATH[?options]";

impl std::str::FromStr for LogUrl {
    type Err = LogError;

    fn from_str(url: &str) -> Result<Self, LogError> {
        let err = |rule: String| LogError::Url {
            url: url.to_string(),
            rule,
        };
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let params = parse_query(query).map_err(&err)?;
        if let Some(rest) = base.strip_prefix("kafka://") {
            let (hosts, topic) = rest
                .split_once('/')
                .ok_or_else(|| err(format!("names no topic: {URL_RULE}")))?;
            let brokers = parse_host_ports(hosts).map_err(|e| err(format!("broker {e}")))?;
            let topic_ok = !topic.is_empty()
                && topic.len() <= 249
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && topic != "."
                && topic != "..";
            if !topic_ok {
                return Err(err(format!(
                    "topic {topic:?} must match [A-Za-z0-9._-]{{1,249}} (and not be . or ..)"
                )));
            }
            let options = KafkaOptions::from_params(&params).map_err(&err)?;
            Ok(LogUrl::Kafka {
                brokers,
                topic: topic.to_string(),
                options,
            })
        } else if let Some(path) = base.strip_prefix("file:") {
            if path.is_empty() {
                return Err(err(format!("names no path: {URL_RULE}")));
            }
            let options = FileLogOptions::from_params(&params).map_err(&err)?;
            Ok(LogUrl::File {
                path: path.into(),
                options,
            })
        } else {
            Err(err(URL_RULE.to_string()))
        }
    }
}

/// Opens the log a URL names (see [`LogUrl`]). A file log is created if missing; a Kafka topic
/// is created if missing only when the URL gives `partitions`.
pub fn open_log(url: &str) -> Result<Arc<dyn EventLog>, LogError> {
    Ok(match url.parse::<LogUrl>()? {
        LogUrl::File { path, options } => Arc::new(FileLog::open(url, &path, &options)?),
        LogUrl::Kafka {
            brokers,
            topic,
            options,
        } => Arc::new(KafkaLog::open(url, &brokers, &topic, &options)?),
    })
}

/// A message the streaming job refused, as kept in the dead-letter log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: String,
    /// Where the message was in the source log.
    pub partition: Partition,
    pub offset: Offset,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Every dead letter currently kept for the log a URL names (tests, tools).
pub fn dead_letters(url: &str) -> Result<Vec<DeadLetter>, LogError> {
    match url.parse::<LogUrl>()? {
        LogUrl::File { path, options } => FileLog::open(url, &path, &options)?.dead_letters(),
        LogUrl::Kafka {
            brokers,
            topic,
            options,
        } => KafkaLog::open(url, &brokers, &topic, &options)?.dead_letters(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Java's `Utils.murmur2` results, from Apache Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafkas_java_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, java) in cases {
            let positive = java & 0x7fff_ffff;
            for partitions in [1, 4, 7, 12, i32::MAX] {
                assert_eq!(
                    partition_for_key(key, partitions),
                    Partition(positive % partitions),
                    "{}",
                    String::from_utf8_lossy(key)
                );
            }
        }
    }

    fn url_err(url: &str) -> String {
        url.parse::<LogUrl>().unwrap_err().to_string()
    }

    #[test]
    fn parses_log_urls() {
        assert_eq!(
            "kafka://127.0.0.1:9092,k2:9093/banner-events?partitions=8"
                .parse::<LogUrl>()
                .unwrap(),
            LogUrl::Kafka {
                brokers: vec!["127.0.0.1:9092".into(), "k2:9093".into()],
                topic: "banner-events".into(),
                options: KafkaOptions {
                    partitions: Some(8),
                    ..KafkaOptions::default()
                },
            }
        );
        assert_eq!(
            "file:/tmp/log?partitions=2&retention_hours=48"
                .parse::<LogUrl>()
                .unwrap(),
            LogUrl::File {
                path: "/tmp/log".into(),
                options: FileLogOptions {
                    partitions: Some(2),
                    retention_hours: Some(48),
                    segment_mb: None,
                },
            }
        );
        assert_eq!(
            "file:rel/dir".parse::<LogUrl>().unwrap(),
            LogUrl::File {
                path: "rel/dir".into(),
                options: FileLogOptions::default(),
            }
        );
    }

    #[test]
    fn url_errors_name_the_rule() {
        assert!(url_err("redis://x").contains("must be kafka://"));
        assert!(url_err("file:").contains("names no path"));
        assert!(url_err("kafka://h:9092").contains("names no topic"));
        assert!(url_err("kafka://h/t").contains("broker \"h\" must be HOST:PORT"));
        assert!(url_err("kafka://h:0/t").contains("port from 1 to 65535"));
        assert!(url_err("kafka://h h:1/t").contains("without spaces"));
        assert!(url_err("kafka://h:9092/bad topic").contains("must match [A-Za-z0-9._-]"));
        assert!(url_err("file:/x?partitions=0").contains("partitions"));
        assert!(url_err("file:/x?size=1").contains("unknown option \"size\""));
        assert!(url_err("file:/x?partitions=2&partitions=3").contains("given twice"));
        assert!(url_err("kafka://h:1/t?partitions=x").contains("partitions"));
    }
}
