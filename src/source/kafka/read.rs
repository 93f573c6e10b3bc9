//! Reading: consumers with a manual assignment and no group commits (the job keeps its offsets
//! in the store), served in batches straight from librdkafka's queue.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::KafkaLog;
use crate::model::{Offset, Partition};
use crate::source::{LogError, LogReader, RecordRef};

impl KafkaLog {
    pub(super) fn topic_reader(
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

/// The settings every consumer of the log shares: no group commits, no offset resets, large
/// fetches.
pub(super) fn consumer_config(brokers: &str) -> ClientConfig {
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
pub(super) struct FetchedMessage<'b>(&'b rdsys::rd_kafka_message_t);

impl<'b> FetchedMessage<'b> {
    fn error(&self) -> Option<RDKafkaErrorCode> {
        (self.0.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| RDKafkaErrorCode::from(self.0.err))
    }

    /// The error text librdkafka puts in an error message's payload.
    fn error_text(&self) -> String {
        String::from_utf8_lossy(bytes(self.0.payload, self.0.len)).into_owned()
    }

    pub(super) fn record(&self) -> RecordRef<'b> {
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
    pub(super) fn header(&self, name: &str) -> Option<&'b [u8]> {
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
pub(super) struct KafkaReader {
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
    pub(super) fn poll_with(
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
