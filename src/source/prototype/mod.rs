//! Moving a prototype installation over (issue 19): its Cassandra keyspace (`bannerclickstream`,
//! `slotconfiguration`) into Parquet history for `backfill` and a slot CSV for `slots import`.
//! Rows our contract refuses are counted by reason and written to `_rejects.csv`; nothing is
//! dropped silently. The output is sorted and every event ID derives from its row's key, so an
//! import run twice gives byte-identical files and a backfill of them counts nothing twice.
//!
//! A file per role: `read` (the URL, the schema check, the paged reads), `convert` (a row into
//! an event or a banner: the time rule, the names, the reasons a row is refused) and `write` (the
//! files).

mod convert;
mod read;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

pub use convert::{
    convert_click, convert_slot_row, event_id, merge_slots, unshift_secs, unshift_timeuuid,
    ClickRow, Reject, SlotRow, PROTOTYPE_SHIFT_SECS,
};
pub use read::{PrototypeSource, PrototypeUrl, CLICKSTREAM_TABLE, SLOTS_TABLE};
pub use write::{RejectRow, REJECTS_FILE, SLOTS_FILE};

use crate::model::parquet::ParquetEventError;
use crate::model::{EventKind, SlotConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("prototype URL {url:?}: {rule}")]
    Url { url: String, rule: String },
    #[error("cannot connect to the prototype's Cassandra at {nodes}: {detail}")]
    Connect { nodes: String, detail: String },
    #[error("keyspace {keyspace} has no table {table} (is it the prototype's keyspace?)")]
    MissingTable { keyspace: String, table: String },
    #[error("table {keyspace}.{table} has no column {column}")]
    MissingColumn {
        keyspace: String,
        table: String,
        column: String,
    },
    #[error("table {keyspace}.{table}: column {column} is {found}, expected {expected}")]
    ColumnType {
        keyspace: String,
        table: String,
        column: String,
        found: String,
        expected: String,
    },
    #[error("reading {keyspace}.{table}: {detail}")]
    Read {
        keyspace: String,
        table: String,
        detail: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Slots {
        path: PathBuf,
        source: SlotConfigError,
    },
    #[error(transparent)]
    Parquet(#[from] ParquetEventError),
}

/// Which events to import: `since <= ts < until` in true UTC.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Window {
    fn contains(&self, ts: DateTime<Utc>) -> bool {
        self.since.is_none_or(|s| s <= ts) && self.until.is_none_or(|u| ts < u)
    }
}

/// What an import read and wrote.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub clickstream_rows: u64,
    pub impressions: u64,
    pub clicks: u64,
    /// Clickstream rows outside `--since`/`--until` (not written, not refused).
    pub outside_window: u64,
    pub slot_rows: u64,
    pub slots: usize,
    pub banners: usize,
    /// Refused rows by reason code, of both tables.
    pub rejects: BTreeMap<String, u64>,
    pub parquet_files: Vec<PathBuf>,
    pub slots_file: Option<PathBuf>,
    pub rejects_file: PathBuf,
}

/// Reads both tables and writes the history, the slots and the rejects under `out`;
/// `progress` gets the number of rows read so far.
pub fn import(
    source: &PrototypeSource,
    out: &Path,
    window: Window,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let mut events = Vec::new();
    let mut rejects = Vec::new();
    let mut reject = |report: &mut ImportReport, row: RejectRow| {
        *report.rejects.entry(row.reason.clone()).or_default() += 1;
        rejects.push(row);
    };

    let mut refused = Vec::new();
    source.clickstream(|row| {
        report.clickstream_rows += 1;
        if report.clickstream_rows % 1024 == 0 {
            progress(report.clickstream_rows);
        }
        let converted = unshift_timeuuid(&row.operationdate).and_then(|ts| {
            if window.contains(ts) {
                convert_click(&row, ts).map(Some)
            } else {
                Ok(None)
            }
        });
        match converted {
            Ok(Some(event)) => {
                match event.kind {
                    EventKind::Impression => report.impressions += 1,
                    EventKind::Click => report.clicks += 1,
                }
                events.push(event);
            }
            Ok(None) => report.outside_window += 1,
            Err(r) => refused.push((row, r)),
        }
    })?;
    for (row, r) in refused {
        reject(
            &mut report,
            RejectRow {
                table: CLICKSTREAM_TABLE,
                platform: row.platform,
                slotname: row.slotname,
                operationdate: row.operationdate.to_string(),
                location: row.location,
                validto: String::new(),
                imagekey: String::new(),
                reason: r.code,
                detail: r.detail,
            },
        );
    }

    let mut slot_rows = Vec::new();
    source.slots(|row| {
        slot_rows.push(row);
        progress(report.clickstream_rows + slot_rows.len() as u64);
    })?;
    report.slot_rows = slot_rows.len() as u64;
    let (slots, refused) = merge_slots(slot_rows);
    for (row, r) in refused {
        reject(
            &mut report,
            RejectRow {
                table: SLOTS_TABLE,
                platform: row.platform,
                slotname: row.slotname,
                operationdate: String::new(),
                location: String::new(),
                validto: row.validto.to_string(),
                imagekey: row.imagekey,
                reason: r.code,
                detail: r.detail,
            },
        );
    }
    report.slots = slots.len();
    report.banners = slots.iter().map(|s| s.banners.len()).sum();

    tracing::info!(
        events = events.len(),
        slots = report.slots,
        rejects = rejects.len(),
        "writing the import"
    );
    report.parquet_files = write::write_events(out, events)?;
    report.slots_file = write::write_slots(out, &slots)?;
    report.rejects_file = write::write_rejects(out, rejects)?;
    Ok(report)
}
