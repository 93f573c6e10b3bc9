//! Dead letters (docs/filelog.md, "Dead letters"): a one-partition file log in `PATH/dlq` whose
//! records keep the original key and hold a JSON envelope of the message, its place and the
//! reason.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{FileLog, FileLogOptions, DLQ_DIR};
use crate::model::{Offset, Partition};
use crate::source::{DeadLetter, EventLog, LogError, LogRecord};

/// A dead letter in the file log's DLQ: the record's payload is this JSON object (the key is the
/// original key). Bytes that are not UTF-8 go in the `*_base64` field instead.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterEnvelope {
    reason: String,
    partition: Partition,
    offset: Offset,
    timestamp_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

impl DeadLetterEnvelope {
    fn new(record: &LogRecord, reason: &str) -> Self {
        let (payload, payload_base64) = match std::str::from_utf8(&record.payload) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&record.payload)),
            ),
        };
        Self {
            reason: reason.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            payload,
            payload_base64,
        }
    }

    /// The dead letter a DLQ record holds.
    fn parse(record: LogRecord) -> Result<DeadLetter, String> {
        let envelope: Self = serde_json::from_slice(&record.payload).map_err(|e| e.to_string())?;
        let payload = match (envelope.payload, envelope.payload_base64) {
            (Some(s), None) => s.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("payload_base64: {e}"))?,
            _ => return Err("needs exactly one of payload and payload_base64".into()),
        };
        Ok(DeadLetter {
            reason: envelope.reason,
            partition: envelope.partition,
            offset: envelope.offset,
            timestamp_ms: envelope.timestamp_ms,
            key: record.key,
            payload,
        })
    }
}

impl FileLog {
    /// The dead-letter log: a one-partition file log in `PATH/dlq`.
    fn dlq(&self) -> Result<&FileLog, LogError> {
        if let Some(dlq) = self.dlq.get() {
            return Ok(dlq);
        }
        let dir = self.dir.join(DLQ_DIR);
        let log = FileLog::open(
            &format!("file:{}", dir.display()),
            &dir,
            &FileLogOptions {
                partitions: Some(1),
                retention_hours: self.meta.retention_hours,
                segment_mb: Some(self.meta.segment_mb),
            },
        )?;
        Ok(self.dlq.get_or_init(|| Box::new(log)))
    }

    /// Appends the envelopes of `letters` to the dead-letter log, durable on return.
    pub(super) fn append_dead_letters(
        &self,
        letters: &[(LogRecord, String)],
    ) -> Result<(), LogError> {
        let envelopes: Vec<Vec<u8>> = letters
            .iter()
            .map(|(record, reason)| {
                serde_json::to_vec(&DeadLetterEnvelope::new(record, reason))
                    .expect("an envelope serializes")
            })
            .collect();
        let messages: Vec<(Option<&[u8]>, &[u8])> = letters
            .iter()
            .zip(&envelopes)
            .map(|((record, _), env)| (record.key.as_deref(), env.as_slice()))
            .collect();
        let dlq = self.dlq()?;
        let mut groups = BTreeMap::new();
        groups.insert(Partition(0), messages);
        dlq.append_grouped(&groups)
    }

    /// Every dead letter in `PATH/dlq`, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, LogError> {
        let dlq = self.dlq()?;
        let mut reader = dlq.reader(&dlq.offsets_at_start()?)?;
        let mut letters = Vec::new();
        loop {
            let batch = reader.poll(10_000, Duration::ZERO)?;
            if batch.is_empty() {
                return Ok(letters);
            }
            for record in batch {
                let offset = record.offset;
                letters.push(DeadLetterEnvelope::parse(record).map_err(|detail| {
                    LogError::Corrupt {
                        log: dlq.name.clone(),
                        detail: format!("dead letter at offset {offset}: {detail}"),
                    }
                })?);
            }
        }
    }
}
