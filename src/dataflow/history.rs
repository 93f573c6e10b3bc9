//! What the jobs over history read as events (the evaluation; the report for a log only, as it
//! reads Parquet as columns): Parquet history, its row groups shared among the workers, or an
//! event log, every partition from its start to the end offsets taken when it was opened, read
//! by worker 0 of process 0 (the jobs exchange what they read anyway).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::DataflowError;
use crate::model::parquet::EventFileReader;
use crate::model::{Event, Offset, Partition};
use crate::source::parquet::ParquetPlan;
use crate::source::{EventLog, LogError};

/// Where a job over history reads its events.
pub enum History {
    Parquet(ParquetPlan),
    Log(LogHistory),
}

/// An event log as it was when opened: every partition from its earliest offset to its end.
pub struct LogHistory {
    log: Arc<dyn EventLog>,
    start: BTreeMap<Partition, Offset>,
    ends: BTreeMap<Partition, Offset>,
}

/// Records a log read asks for at a time; each batch is one epoch.
const LOG_BATCH: usize = 10_000;

impl LogHistory {
    /// Takes the log's earliest and end offsets now: records appended later are not read.
    pub fn open(log: Arc<dyn EventLog>) -> Result<Self, LogError> {
        let start = log.offsets_for_time(chrono::DateTime::UNIX_EPOCH)?;
        let ends = log.end_offsets()?;
        Ok(Self { log, start, ends })
    }

    /// The records between the start and end offsets.
    fn records(&self) -> u64 {
        self.ends
            .iter()
            .map(|(p, end)| {
                let start = self.start.get(p).copied().unwrap_or(*end);
                u64::try_from(end.0 - start.0).unwrap_or(0)
            })
            .sum()
    }

    fn read(&self, read: &mut dyn FnMut(Reading) -> bool) -> Result<(), DataflowError> {
        // The partitions with something left to read before their end offsets.
        let mut open: BTreeMap<Partition, Offset> = self
            .ends
            .iter()
            .filter(|&(p, end)| self.start.get(p).is_some_and(|s| s < end))
            .map(|(&p, &end)| (p, end))
            .collect();
        let mut reader = self.log.reader(&self.start)?;
        let mut go_on = true;
        while go_on && !open.is_empty() {
            let mut records = 0;
            reader.poll_each(LOG_BATCH, Duration::from_millis(500), &mut |record| {
                let Some(&end) = open.get(&record.partition) else {
                    return;
                };
                if record.offset >= end {
                    return;
                }
                records += 1;
                go_on &= read(match Event::from_json(record.payload) {
                    Ok(event) => Reading::Event(event),
                    Err(_) => Reading::Invalid,
                });
                if record.offset.next() >= end {
                    open.remove(&record.partition);
                }
            })?;
            if records > 0 {
                go_on &= read(Reading::UnitRead { rows: records });
            }
        }
        Ok(())
    }
}

/// What a worker reads of its share, in order. Handed over by value once per row: boxing the
/// event would allocate once per row for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Reading {
    Event(Event),
    /// A row or record that breaks the event contract.
    Invalid,
    /// The end of a unit (a row group, a batch of log records) of this many rows: an epoch.
    UnitRead {
        rows: u64,
    },
}

impl History {
    /// The rows (or log records) to read, over every worker.
    pub fn rows(&self) -> u64 {
        match self {
            History::Parquet(plan) => plan.rows(),
            History::Log(log) => log.records(),
        }
    }

    /// Hands the share of worker `index` of `peers` to `read`, which says whether to go on.
    pub(super) fn read_share(
        &self,
        index: usize,
        peers: usize,
        read: &mut dyn FnMut(Reading) -> bool,
    ) -> Result<(), DataflowError> {
        match self {
            History::Parquet(plan) => {
                for unit in plan.share(index, peers) {
                    let path = &plan.files[unit.file as usize].path;
                    let mut reader = EventFileReader::open_row_group(path, unit.row_group)?;
                    while let Some(rows) = reader.next_batch() {
                        for row in rows? {
                            let reading = match row {
                                Ok(event) => Reading::Event(event),
                                Err(_) => Reading::Invalid,
                            };
                            if !read(reading) {
                                return Ok(());
                            }
                        }
                    }
                    if !read(Reading::UnitRead { rows: unit.rows }) {
                        return Ok(());
                    }
                }
                Ok(())
            }
            History::Log(log) if index == 0 => log.read(read),
            History::Log(_) => Ok(()),
        }
    }
}
