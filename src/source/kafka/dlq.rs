//! Dead letters: topic `TOPIC-dlq` (one partition, as many replicas as `TOPIC`; created with
//! `TOPIC`, or at the first dead letter when `TOPIC` was made by hand) with the original key and
//! payload and headers `reason`, `source_partition`, `source_offset` and
//! `source_timestamp_ms`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};

use super::read::FetchedMessage;
use super::KafkaLog;
use crate::model::{Offset, Partition};
use crate::source::{DeadLetter, LogError, LogRecord};

impl KafkaLog {
    pub(super) fn dlq_topic(&self) -> String {
        format!("{}-dlq", self.topic)
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

    /// Sends `letters` to `TOPIC-dlq`, durable on return.
    pub(super) fn append_dead_letters(
        &self,
        letters: &[(LogRecord, String)],
    ) -> Result<(), LogError> {
        let topic = self.dlq_topic();
        if self.dlq_ready.get().is_none() {
            if self.topic_partitions(&topic)?.is_none() {
                // Created with the events topic's replication, never fewer replicas because a
                // broker happens to be down at the first dead letter.
                let replication = match self.topic_replication(&self.topic)? {
                    Some(n) => n,
                    None => self.cluster_replication()?,
                };
                self.create_topic(&topic, 1, replication)?;
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
