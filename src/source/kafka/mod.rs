//! The Kafka event log, `kafka://HOST:PORT[,HOST:PORT…]/TOPIC[?partitions=N&timeout_ms=T]`
//! (rdkafka, librdkafka underneath).
//!
//! Appends go through an idempotent producer (`acks=all`) whose partitioner is librdkafka's
//! `murmur2_random`, the Java clients' rule for keyed messages; `append` returns once every
//! message is acknowledged, or fails within `timeout_ms`. Readers are consumers with a manual
//! assignment and no group commits: the job keeps its offsets in the store. Dead letters go to
//! topic `TOPIC-dlq` with the original key and payload and headers `reason`,
//! `source_partition`, `source_offset` and `source_timestamp_ms`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, TopicPartitionList};

use super::{event_key, DeadLetter, EventLog, LogError, LogReader, LogRecord, RecordRef};
use crate::model::address::option;
use crate::model::{Event, Offset, Partition};

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

/// Delivery reports of one append, counted down by the producer's polling thread.
#[derive(Default)]
struct Batch {
    state: Mutex<BatchState>,
    done: Condvar,
}

#[derive(Default)]
struct BatchState {
    pending: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Batch {
    fn settle(&self, count: usize, error: Option<&KafkaError>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.pending -= count;
        if let Some(e) = error {
            state.failed += count;
            state.first_error.get_or_insert_with(|| e.to_string());
        }
        if state.pending == 0 {
            self.done.notify_all();
        }
    }
}

struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        batch.settle(1, result.as_ref().err().map(|(e, _)| e));
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

/// What a message to send holds.
type Outgoing<'m> = (Option<&'m [u8]>, &'m [u8], Option<OwnedHeaders>);

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
        let producer: ThreadedProducer<DeliveryContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(DeliveryContext)
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
                log.create_topic(topic, want)?;
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

    /// Creates a topic (replication factor 1 on a one-broker cluster, else 3 at most) unless it
    /// exists, and waits until its metadata shows it.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), LogError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .map_err(|e| self.unavailable(format!("cannot create an admin client: {e}")))?;
        let brokers = self
            .meta
            .fetch_metadata(None, self.timeout)
            .map_err(|e| self.unavailable(format!("no metadata within {:?}: {e}", self.timeout)))?
            .brokers()
            .len()
            .clamp(1, 3) as i32;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(brokers));
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

    /// Sends messages to a topic and waits until every one is acknowledged.
    fn send_all(&self, topic: &str, messages: Vec<Outgoing<'_>>) -> Result<(), LogError> {
        if messages.is_empty() {
            return Ok(());
        }
        let total = messages.len();
        let batch = Arc::new(Batch::default());
        batch
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending = total;
        for (i, (key, payload, headers)) in messages.into_iter().enumerate() {
            let mut record = BaseRecord::with_opaque_to(topic, batch.clone()).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(h) = headers {
                record = record.headers(h);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => {
                        // Neither this message nor the rest were queued: settle them here.
                        batch.settle(total - i, Some(&e));
                        return self.wait(topic, &batch, total);
                    }
                }
            }
        }
        self.wait(topic, &batch, total)
    }

    fn wait(&self, topic: &str, batch: &Batch, total: usize) -> Result<(), LogError> {
        // librdkafka fails every message within message.timeout.ms; the margin covers reports
        // still on their way.
        let limit = self.timeout + Duration::from_secs(5);
        let state = batch.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, waited) = batch
            .done
            .wait_timeout_while(state, limit, |s| s.pending > 0)
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            return Err(self.unavailable(format!(
                "{} of {total} messages to topic {topic} were not acknowledged within {limit:?}",
                state.pending
            )));
        }
        if state.failed > 0 {
            return Err(self.unavailable(format!(
                "{} of {total} messages to topic {topic} were not acknowledged: {}",
                state.failed,
                state.first_error.as_deref().unwrap_or("unknown error")
            )));
        }
        Ok(())
    }

    fn dlq_topic(&self) -> String {
        format!("{}-dlq", self.topic)
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

    /// Every dead letter in `TOPIC-dlq`, per partition in offset order.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, LogError> {
        let topic = self.dlq_topic();
        let Some(n) = self.topic_partitions(&topic)? else {
            return Ok(Vec::new());
        };
        let mut start = BTreeMap::new();
        let mut remaining = 0;
        for p in (0..n).map(Partition) {
            let (low, high) = self.watermarks(&topic, p)?;
            start.insert(p, low);
            remaining += high - low;
        }
        let mut reader = self.topic_reader(&topic, &start)?;
        let mut letters = Vec::new();
        let deadline = Instant::now() + self.timeout;
        while remaining > 0 {
            if Instant::now() >= deadline {
                return Err(self.unavailable(format!(
                    "{remaining} dead letters of {topic} not read within {:?}",
                    self.timeout
                )));
            }
            remaining -= reader.poll_with(10_000, Duration::from_millis(200), |m| {
                letters.push(dead_letter_of(m)?);
                Ok(())
            })? as i64;
        }
        Ok(letters)
    }

    fn topic_reader(
        &self,
        topic: &str,
        start: &BTreeMap<Partition, Offset>,
    ) -> Result<KafkaReader, LogError> {
        let consumer = consumer_config(&self.brokers)
            .set("group.id", format!("slotbandit-reader-{topic}"))
            .create::<BaseConsumer>()
            .map_err(|e| self.unavailable(format!("cannot create a consumer: {e}")))?;
        let mut assignment = TopicPartitionList::new();
        for (&p, &offset) in start {
            assignment
                .add_partition_offset(topic, p.0, rdkafka::Offset::Offset(offset.0))
                .map_err(|e| self.unavailable(format!("partition {p} offset {offset}: {e}")))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| self.unavailable(format!("cannot assign partitions: {e}")))?;
        Ok(KafkaReader {
            log: self.name.clone(),
            topic: topic.to_string(),
            brokers: self.brokers.clone(),
            timeout: self.timeout,
            queue: ConsumerQueue::of(&consumer)
                .ok_or_else(|| self.unavailable("the consumer has no queue"))?,
            consumer,
            next: start.clone(),
        })
    }
}

fn consumer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A start offset the partition no longer (or not yet) holds is an error, not a reset.
        .set("auto.offset.reset", "error")
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        // librdkafka stops fetching a partition once this many messages wait locally, and then
        // waits fetch.queue.backoff.ms (1 s by default) before fetching again: a reader faster
        // than a few hundred thousand messages a second drained the queue and sat idle.
        .set("queued.min.messages", "1000000")
        .set("fetch.queue.backoff.ms", "10");
    config
}

fn dead_letter_of(message: &FetchedMessage<'_>) -> Result<DeadLetter, String> {
    let text = |name: &str| -> Result<String, String> {
        let value = message
            .header(name)
            .ok_or_else(|| format!("has no {name} header"))?;
        String::from_utf8(value.to_vec()).map_err(|_| format!("header {name} is not UTF-8"))
    };
    let number = |name: &str| -> Result<i64, String> {
        text(name)?
            .parse()
            .map_err(|_| format!("header {name} is not a number"))
    };
    let record = message.record();
    Ok(DeadLetter {
        reason: text("reason")?,
        partition: Partition(number("source_partition")? as i32),
        offset: Offset(number("source_offset")?),
        timestamp_ms: number("source_timestamp_ms")?,
        key: record.key.map(<[u8]>::to_vec),
        payload: record.payload.to_vec(),
    })
}

impl EventLog for KafkaLog {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<Partition>, LogError> {
        Ok(self.partitions.clone())
    }

    fn append(&self, events: &[Event]) -> Result<(), LogError> {
        let encoded: Vec<(String, String)> =
            events.iter().map(|e| (event_key(e), e.to_json())).collect();
        self.send_all(
            &self.topic,
            encoded
                .iter()
                .map(|(k, v)| (Some(k.as_bytes()), v.as_bytes(), None))
                .collect(),
        )
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
        let topic = self.dlq_topic();
        if self.dlq_ready.get().is_none() {
            if self.topic_partitions(&topic)?.is_none() {
                self.create_topic(&topic, 1)?;
            }
            let _ = self.dlq_ready.set(());
        }
        let messages = letters
            .iter()
            .map(|(record, reason)| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "reason",
                        value: Some(reason.as_str()),
                    })
                    .insert(Header {
                        key: "source_partition",
                        value: Some(&record.partition.to_string()),
                    })
                    .insert(Header {
                        key: "source_offset",
                        value: Some(&record.offset.to_string()),
                    })
                    .insert(Header {
                        key: "source_timestamp_ms",
                        value: Some(&record.timestamp_ms.to_string()),
                    });
                (
                    record.key.as_deref(),
                    record.payload.as_slice(),
                    Some(headers),
                )
            })
            .collect();
        self.send_all(&topic, messages)
    }
}

/// librdkafka's queue of a consumer, served in batches (`rd_kafka_consume_batch_queue`): one
/// lock round and no clock reading or allocation per message, which rdkafka's one-message
/// `poll` pays (about a fifth of the stream job's CPU at catch-up speed).
struct ConsumerQueue(NonNull<rdsys::rd_kafka_queue_t>);

// SAFETY: librdkafka queues are thread-safe; the pointer is only used through &mut self.
unsafe impl Send for ConsumerQueue {}

impl ConsumerQueue {
    fn of(consumer: &BaseConsumer) -> Option<Self> {
        // SAFETY: the client pointer is valid while `consumer` lives; the returned reference
        // is released in Drop, and KafkaReader drops it before the consumer.
        NonNull::new(unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) })
            .map(Self)
    }
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the queue reference was obtained from rd_kafka_queue_get_consumer.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0.as_ptr()) }
    }
}

/// Messages taken from the queue, destroyed together however the batch ends.
struct FetchedBatch(Vec<*mut rdsys::rd_kafka_message_t>);

impl FetchedBatch {
    fn messages(&self) -> impl Iterator<Item = FetchedMessage<'_>> {
        // SAFETY: each pointer came from rd_kafka_consume_batch_queue and lives until Drop.
        self.0.iter().map(|&m| FetchedMessage(unsafe { &*m }))
    }
}

impl Drop for FetchedBatch {
    fn drop(&mut self) {
        for m in self.0.drain(..) {
            // SAFETY: every message of the batch is destroyed exactly once, here.
            unsafe { rdsys::rd_kafka_message_destroy(m) }
        }
    }
}

/// A message (or a consumer error) of a fetched batch.
struct FetchedMessage<'b>(&'b rdsys::rd_kafka_message_t);

impl<'b> FetchedMessage<'b> {
    fn error(&self) -> Option<RDKafkaErrorCode> {
        (self.0.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| RDKafkaErrorCode::from(self.0.err))
    }

    /// The error text librdkafka puts in an error message's payload.
    fn error_text(&self) -> String {
        String::from_utf8_lossy(bytes(self.0.payload, self.0.len)).into_owned()
    }

    fn record(&self) -> RecordRef<'b> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is valid for 'b.
        let timestamp_ms = unsafe { rdsys::rd_kafka_message_timestamp(self.0, &mut kind) };
        RecordRef {
            partition: Partition(self.0.partition),
            offset: Offset(self.0.offset),
            key: (!self.0.key.is_null()).then(|| bytes(self.0.key, self.0.key_len)),
            payload: bytes(self.0.payload, self.0.len),
            timestamp_ms: timestamp_ms.max(0),
        }
    }

    /// The last header called `name`.
    fn header(&self, name: &str) -> Option<&'b [u8]> {
        let name = CString::new(name).ok()?;
        let mut headers = std::ptr::null_mut();
        let (mut value, mut size) = (std::ptr::null(), 0);
        // SAFETY: the headers belong to the message, valid for 'b; librdkafka writes the value
        // pointer and size only on success.
        unsafe {
            if rdsys::rd_kafka_message_headers(self.0, &mut headers)
                != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                || rdsys::rd_kafka_header_get_last(headers, name.as_ptr(), &mut value, &mut size)
                    != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return None;
            }
        }
        Some(bytes(value.cast_mut(), size))
    }
}

/// `len` bytes at `ptr` (none when null), borrowed for as long as the message holding them.
fn bytes<'b>(ptr: *mut std::ffi::c_void, len: usize) -> &'b [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: librdkafka guarantees `len` readable bytes at a non-null pointer of a message,
    // alive until the message is destroyed, which outlives 'b.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

/// A consumer with a manual assignment.
struct KafkaReader {
    log: String,
    topic: String,
    brokers: String,
    timeout: Duration,
    /// Declared before `consumer`: the queue reference is released first.
    queue: ConsumerQueue,
    consumer: BaseConsumer,
    /// Per assigned partition, the offset of the next record.
    next: BTreeMap<Partition, Offset>,
}

impl KafkaReader {
    /// Hands up to `max` messages to `take`, waiting at most `timeout` for the first; returns
    /// how many it handed over.
    fn poll_with(
        &mut self,
        max: usize,
        timeout: Duration,
        mut take: impl FnMut(&FetchedMessage<'_>) -> Result<(), String>,
    ) -> Result<usize, LogError> {
        let mut batch = self.fetch(max, Duration::ZERO)?;
        if batch.0.is_empty() && max > 0 && !timeout.is_zero() {
            // librdkafka's batch call waits for a full batch, so wait for one message only.
            batch = self.fetch(1, timeout)?;
            if !batch.0.is_empty() {
                let mut rest = self.fetch(max - 1, Duration::ZERO)?;
                batch.0.append(&mut rest.0);
            }
        }
        let mut taken = 0;
        for message in batch.messages() {
            if let Some(code) = message.error() {
                self.on_error(code, message.error_text())?;
                continue;
            }
            let record = message.record();
            take(&message).map_err(|detail| LogError::Corrupt {
                log: self.log.clone(),
                detail: format!(
                    "{} partition {} offset {}: {detail}",
                    self.topic, record.partition, record.offset
                ),
            })?;
            self.next.insert(record.partition, record.offset + 1);
            taken += 1;
        }
        Ok(taken)
    }

    /// Up to `max` messages (and consumer errors) from the queue, waiting up to `wait` for
    /// all of them.
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<FetchedBatch, LogError> {
        let mut batch = FetchedBatch(Vec::with_capacity(max));
        if max == 0 {
            return Ok(batch);
        }
        let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the buffer has room for `max` pointers; librdkafka writes `n` of them.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.0.as_ptr(),
                wait_ms,
                batch.0.as_mut_ptr(),
                max,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            // SAFETY: reads librdkafka's thread-local last error.
            let code = RDKafkaErrorCode::from(unsafe { rdsys::rd_kafka_last_error() });
            return Err(self.unavailable_reading(code));
        };
        // SAFETY: librdkafka initialised the first `n` slots.
        unsafe { batch.0.set_len(n.min(max)) };
        Ok(batch)
    }

    /// An out-of-range start offset or a fatal error ends the reader; librdkafka retries
    /// transient ones (a broker restarting) by itself, so those are only logged.
    fn on_error(&self, code: RDKafkaErrorCode, text: String) -> Result<(), LogError> {
        match code {
            RDKafkaErrorCode::AutoOffsetReset => Err(self.out_of_range()),
            RDKafkaErrorCode::Fatal => Err(self.unavailable_reading(code)),
            _ => {
                tracing::warn!(log = %self.log, "reading {}: {code}: {text}", self.topic);
                Ok(())
            }
        }
    }

    fn unavailable_reading(&self, code: RDKafkaErrorCode) -> LogError {
        LogError::Unavailable {
            log: self.log.clone(),
            detail: format!(
                "consumer error: {code} (brokers {}, topic {})",
                self.brokers, self.topic
            ),
        }
    }

    /// Names the first assigned partition whose next offset lies outside its watermarks.
    fn out_of_range(&self) -> LogError {
        for (&partition, &offset) in &self.next {
            if let Ok((earliest, end)) =
                self.consumer
                    .fetch_watermarks(&self.topic, partition.0, self.timeout)
            {
                let (earliest, end) = (Offset(earliest), Offset(end));
                if offset < earliest || offset > end {
                    return LogError::OffsetOutOfRange {
                        log: self.log.clone(),
                        partition,
                        offset,
                        earliest,
                        end,
                    };
                }
            }
        }
        LogError::Unavailable {
            log: self.log.clone(),
            detail: format!(
                "a start offset is out of range on topic {} (brokers {})",
                self.topic, self.brokers
            ),
        }
    }
}

impl LogReader for KafkaReader {
    fn poll_each(
        &mut self,
        max: usize,
        timeout: Duration,
        take: &mut dyn FnMut(RecordRef<'_>),
    ) -> Result<usize, LogError> {
        self.poll_with(max, timeout, |m| {
            take(m.record());
            Ok(())
        })
    }
}
