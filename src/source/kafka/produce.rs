//! Appending: an idempotent producer (`acks=all`, librdkafka's `murmur2_random` partitioner,
//! the Java clients' rule for keyed messages) and a wait until every message of an append is
//! acknowledged, or failed within the timeout.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::KafkaLog;
use crate::source::LogError;

/// Delivery reports of one append, counted down by the producer's polling thread.
#[derive(Default)]
pub(super) struct Batch {
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

pub(super) struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        batch.settle(1, result.as_ref().err().map(|(e, _)| e));
    }
}

/// The producer of a log: idempotent, acknowledged by every in-sync replica, failing a message
/// that is not acknowledged within `timeout`.
pub(super) fn producer(
    brokers: &str,
    timeout: Duration,
) -> KafkaResult<ThreadedProducer<DeliveryContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(DeliveryContext)
}

/// What a message to send holds.
pub(super) type Outgoing<'m> = (Option<&'m [u8]>, &'m [u8], Option<OwnedHeaders>);

impl KafkaLog {
    /// Sends messages to a topic and waits until every one is acknowledged.
    pub(super) fn send_all(
        &self,
        topic: &str,
        messages: Vec<Outgoing<'_>>,
    ) -> Result<(), LogError> {
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
}
