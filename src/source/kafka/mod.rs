//! The Kafka event log, `kafka://HOST:PORT[,HOST:PORT…]/TOPIC[?partitions=N&timeout_ms=T]`
//! (rdkafka, librdkafka underneath).
//!
//! Appends go through an idempotent producer (`acks=all`) whose partitioner is librdkafka's
//! `murmur2_random`, the Java clients' rule for keyed messages; `append` returns once every
//! message is acknowledged, or fails within `timeout_ms`. Readers are consumers with a manual
//! assignment and no group commits: the job keeps its offsets in the store. Dead letters go to
//! topic `TOPIC-dlq` with the original key and payload and headers `reason`,
//! `source_partition`, `source_offset` and `source_timestamp_ms`.
//!
//! A file per role: `produce` (the producer and acknowledged appends), `read` (consumers and
//! the batch queue) and `dlq` (dead letters); this one holds the log, its options, topic
//! metadata and the [`EventLog`] impl.

mod dlq;
mod produce;
mod read;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::ThreadedProducer;
use rdkafka::TopicPartitionList;

use super::{EventLog, LogError, LogReader, LogRecord};
use crate::model::address::option;
use crate::model::{Offset, Partition};
use produce::DeliveryContext;
use read::consumer_config;

const DEFAULT_TIMEOUT_MS: u64 = 15_000;

/// Options of a `kafka://` URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaOptions {
    /// Create the topic with this many partitions if it is missing (else a missing topic is an
    /// error); an existing topic must have this many.
    pub partitions: Option<i32>,
    /// How long an append waits for acknowledgements, and metadata requests for an answer
    /// (default 15 000 ms).
    pub timeout_ms: Option<u64>,
}

impl KafkaOptions {
    pub(crate) fn from_params(params: &[(String, String)]) -> Result<Self, String> {
        const KNOWN: &[&str] = &["partitions", "timeout_ms"];
        Ok(Self {
            partitions: option(
                params,
                KNOWN,
                "partitions",
                "must be a whole number from 1 to 10000",
                |p: &i32| (1..=10_000).contains(p),
            )?,
            timeout_ms: option(
                params,
                KNOWN,
                "timeout_ms",
                "must be a whole number of milliseconds from 100 to 3600000",
                |t: &u64| (100..=3_600_000).contains(t),
            )?,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }
}

/// A Kafka topic as an event log.
pub struct KafkaLog {
    name: String,
    brokers: String,
    topic: String,
    timeout: Duration,
    partitions: Vec<Partition>,
    producer: ThreadedProducer<DeliveryContext>,
    /// For watermarks and offsets by time.
    meta: BaseConsumer,
    dlq_ready: OnceLock<()>,
}

impl KafkaLog {
    /// Connects to the brokers and looks the topic up (creating it when `options.partitions`
    /// is given and it is missing).
    pub fn open(
        name: &str,
        brokers: &[String],
        topic: &str,
        options: &KafkaOptions,
    ) -> Result<Self, LogError> {
        let brokers = brokers.join(",");
        let timeout = options.timeout();
        let unavailable = |detail: String| LogError::Unavailable {
            log: name.to_string(),
            detail,
        };
        let producer = produce::producer(&brokers, timeout)
            .map_err(|e| unavailable(format!("cannot create a producer for {brokers}: {e}")))?;
        let meta = consumer_config(&brokers)
            .create::<BaseConsumer>()
            .map_err(|e| unavailable(format!("cannot create a consumer for {brokers}: {e}")))?;
        let mut log = Self {
            name: name.to_string(),
            brokers,
            topic: topic.to_string(),
            timeout,
            partitions: Vec::new(),
            producer,
            meta,
            dlq_ready: OnceLock::new(),
        };
        log.partitions = match (log.topic_partitions(topic)?, options.partitions) {
            (Some(n), Some(want)) if n != want => {
                return Err(LogError::Url {
                    url: name.to_string(),
                    rule: format!("partitions={want}, but topic {topic} has {n} partitions"),
                })
            }
            (Some(n), _) => (0..n).map(Partition).collect(),
            (None, Some(want)) => {
                let replication = log.cluster_replication()?;
                log.create_topic(topic, want, replication)?;
                log.create_topic(&log.dlq_topic(), 1, replication)?;
                (0..want).map(Partition).collect()
            }
            (None, None) => {
                return Err(LogError::Url {
                    url: name.to_string(),
                    rule: format!(
                        "topic {topic} does not exist on {}; create it, or add ?partitions=N \
                         to the URL to have it created",
                        log.brokers
                    ),
                })
            }
        };
        Ok(log)
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> LogError {
        LogError::Unavailable {
            log: self.name.clone(),
            detail: format!("{detail} (brokers {}, topic {})", self.brokers, self.topic),
        }
    }

    /// The partition count of a topic, or `None` if it does not exist.
    fn topic_partitions(&self, topic: &str) -> Result<Option<i32>, LogError> {
        let metadata = self
            .meta
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| self.unavailable(format!("no metadata within {:?}: {e}", self.timeout)))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error() {
            None if !t.partitions().is_empty() => Ok(Some(t.partitions().len() as i32)),
            None => Ok(None),
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                Ok(None)
            }
            Some(e) => Err(self.unavailable(format!(
                "metadata of topic {topic}: {}",
                RDKafkaErrorCode::from(e)
            ))),
        }
    }

    /// The replication factor of a new events topic: the cluster's broker count, 3 at most.
    fn cluster_replication(&self) -> Result<i32, LogError> {
        Ok(self
            .meta
            .fetch_metadata(None, self.timeout)
            .map_err(|e| self.unavailable(format!("no metadata within {:?}: {e}", self.timeout)))?
            .brokers()
            .len()
            .clamp(1, 3) as i32)
    }

    /// How many replicas each partition of `topic` has by assignment (whether or not they are
    /// alive now), or `None` if it does not exist.
    fn topic_replication(&self, topic: &str) -> Result<Option<i32>, LogError> {
        let metadata = self
            .meta
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| self.unavailable(format!("no metadata within {:?}: {e}", self.timeout)))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .and_then(|t| t.partitions().iter().map(|p| p.replicas().len()).max())
            .map(|n| n as i32))
    }

    /// Creates a topic unless it exists, and waits until its metadata shows it. Of 3 replicas 2
    /// must be in sync for an append (`acks=all`) to succeed, so an acknowledged append outlives
    /// any one broker and appends go on while one is down.
    pub fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i32,
    ) -> Result<(), LogError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .map_err(|e| self.unavailable(format!("cannot create an admin client: {e}")))?;
        let min_in_sync = (replication - 1).max(1).to_string();
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
            .set("min.insync.replicas", &min_in_sync);
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = futures::executor::block_on(admin.create_topics([&new], &opts))
            .map_err(|e| self.unavailable(format!("cannot create topic {topic}: {e}")))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(self.unavailable(format!("cannot create topic {t}: {code}")))
                }
            }
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.topic_partitions(topic)?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.unavailable(format!(
                    "topic {topic} was created but its metadata did not show within {:?}",
                    self.timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn watermarks(&self, topic: &str, partition: Partition) -> Result<(Offset, Offset), LogError> {
        self.meta
            .fetch_watermarks(topic, partition.0, self.timeout)
            .map(|(low, high)| (Offset(low), Offset(high)))
            .map_err(|e| {
                self.unavailable(format!(
                    "watermarks of {topic} partition {partition} not known within {:?}: {e}",
                    self.timeout
                ))
            })
    }
}

impl EventLog for KafkaLog {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<Partition>, LogError> {
        Ok(self.partitions.clone())
    }

    fn append_raw(&self, messages: &[(Option<&[u8]>, &[u8])]) -> Result<(), LogError> {
        self.send_all(
            &self.topic,
            messages.iter().map(|&(k, v)| (k, v, None)).collect(),
        )
    }

    fn reader(&self, start: &BTreeMap<Partition, Offset>) -> Result<Box<dyn LogReader>, LogError> {
        for &p in start.keys() {
            if !self.partitions.contains(&p) {
                return Err(LogError::Url {
                    url: self.name.clone(),
                    rule: format!(
                        "topic {} has partitions 0..{}, not {p}",
                        self.topic,
                        self.partitions.len()
                    ),
                });
            }
        }
        Ok(Box::new(self.topic_reader(&self.topic, start)?))
    }

    fn offsets_for_time(&self, ts: DateTime<Utc>) -> Result<BTreeMap<Partition, Offset>, LogError> {
        let mut query = TopicPartitionList::new();
        for &p in &self.partitions {
            query
                .add_partition_offset(
                    &self.topic,
                    p.0,
                    rdkafka::Offset::Offset(ts.timestamp_millis()),
                )
                .map_err(|e| self.unavailable(e))?;
        }
        let answer = self
            .meta
            .offsets_for_times(query, self.timeout)
            .map_err(|e| self.unavailable(format!("offsets for {ts}: {e}")))?;
        let mut offsets = BTreeMap::new();
        for elem in answer.elements() {
            let offset = match elem.offset() {
                rdkafka::Offset::Offset(o) => Offset(o),
                // No record at or after ts: the end.
                _ => self.watermarks(&self.topic, Partition(elem.partition()))?.1,
            };
            offsets.insert(Partition(elem.partition()), offset);
        }
        Ok(offsets)
    }

    fn end_offsets(&self) -> Result<BTreeMap<Partition, Offset>, LogError> {
        self.partitions
            .iter()
            .map(|&p| Ok((p, self.watermarks(&self.topic, p)?.1)))
            .collect()
    }

    fn dead_letter(&self, letters: &[(LogRecord, String)]) -> Result<(), LogError> {
        self.append_dead_letters(letters)
    }
}
