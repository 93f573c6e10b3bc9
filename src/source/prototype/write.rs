//! The import's output: Parquet history in time order, the slot CSV and the reject file, each
//! sorted so that the same rows always give the same bytes.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::ImportError;
use crate::model::parquet::{PartitionedWriter, ROWS_PER_FILE};
use crate::model::{Event, EventRef, SlotConfig};

/// Side files start with `_`, like `gen`'s, so readers that take the folder as a Parquet dataset
/// skip them.
pub const SLOTS_FILE: &str = "_slots.csv";
pub const REJECTS_FILE: &str = "_rejects.csv";
const REJECTS_HEADER: [&str; 9] = [
    "table",
    "platform",
    "slotname",
    "operationdate",
    "location",
    "validto",
    "imagekey",
    "reason",
    "detail",
];

/// A refused row: its table, its primary key as stored (the columns of the other table empty),
/// the reason's code and what was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RejectRow {
    pub table: &'static str,
    pub platform: String,
    pub slotname: String,
    pub operationdate: String,
    pub location: String,
    pub validto: String,
    pub imagekey: String,
    pub reason: String,
    pub detail: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes events by time (then event ID) under `out/dt=YYYY-MM-DD/`.
pub fn write_events(out: &Path, mut events: Vec<Event>) -> Result<Vec<PathBuf>, ImportError> {
    events.sort_unstable_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
    let mut writer = PartitionedWriter::create(out, ROWS_PER_FILE)?;
    for e in &events {
        writer.write(&EventRef::from(e))?;
    }
    Ok(writer.finish()?)
}

/// Writes the slots in the CSV `slots import` reads; nothing when there are none.
pub fn write_slots(out: &Path, slots: &[SlotConfig]) -> Result<Option<PathBuf>, ImportError> {
    if slots.is_empty() {
        return Ok(None);
    }
    let path = out.join(SLOTS_FILE);
    let file = File::create(&path).map_err(io(&path))?;
    SlotConfig::write_csv(slots, BufWriter::new(file)).map_err(|source| ImportError::Slots {
        path: path.clone(),
        source,
    })?;
    Ok(Some(path))
}

/// Writes the refused rows, sorted (the header alone when there are none).
pub fn write_rejects(out: &Path, mut rejects: Vec<RejectRow>) -> Result<PathBuf, ImportError> {
    rejects.sort_unstable();
    let path = out.join(REJECTS_FILE);
    let file = File::create(&path).map_err(io(&path))?;
    let mut csv = csv::Writer::from_writer(BufWriter::new(file));
    let csv_err = |e: csv::Error| ImportError::Io {
        path: path.clone(),
        source: e.into(),
    };
    csv.write_record(REJECTS_HEADER).map_err(csv_err)?;
    for r in &rejects {
        csv.write_record([
            r.table,
            &r.platform,
            &r.slotname,
            &r.operationdate,
            &r.location,
            &r.validto,
            &r.imagekey,
            &r.reason,
            &r.detail,
        ])
        .map_err(csv_err)?;
    }
    csv.flush().map_err(io(&path))?;
    Ok(path)
}
