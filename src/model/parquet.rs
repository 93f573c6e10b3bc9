//! The Arrow schema of events and their Parquet codec: a writer partitioned by IST date
//! (`dt=YYYY-MM-DD/part-N.parquet`) and a validating reader that accepts the usual variants
//! other tools write (nullable columns, any timestamp unit, large or dictionary strings).

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::event::{DecisionLogFields, EventFields, EventRef, FIELDS};
use super::{normalize_city, Event, FieldError};
use crate::time;

pub const ROW_GROUP_ROWS: usize = 256 * 1024;
const BATCH_ROWS: usize = 64 * 1024;
pub(crate) const REQUIRED: [&str; 7] =
    ["event_id", "kind", "tenant", "slot", "city", "banner", "ts"];

/// The type of each column other than a string.
pub(crate) fn column_type(name: &str) -> DataType {
    match name {
        "ts" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "holdout" => DataType::Boolean,
        "propensity" | "propensity_error" => DataType::Float64,
        "policy_version" | "rank" => DataType::Int64,
        _ => DataType::Utf8,
    }
}

/// The documented schema: strings, `ts` as Timestamp(µs, UTC), the decision log's holdout a
/// boolean, its propensities doubles and its version and rank 64-bit integers; all but the
/// required seven nullable.
pub fn event_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let fields: Vec<Field> = FIELDS
            .iter()
            .map(|&name| Field::new(name, column_type(name), !REQUIRED.contains(&name)))
            .collect();
        Arc::new(Schema::new(fields))
    });
    SCHEMA.clone()
}

#[derive(Debug, thiserror::Error)]
pub enum ParquetEventError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readable Parquet file: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: column `{column}` {rule}")]
    Schema {
        path: PathBuf,
        column: String,
        rule: String,
    },
    #[error("{path}: row {row}: {error}")]
    Row {
        path: PathBuf,
        row: u64,
        error: FieldError,
    },
}

impl ParquetEventError {
    fn corrupt(path: &Path, e: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    }
}

struct Columns {
    strings: [StringBuilder; 10],
    ts: TimestampMicrosecondBuilder,
    policy_version: Int64Builder,
    holdout: BooleanBuilder,
    propensity: Float64Builder,
    propensity_error: Float64Builder,
    rank: Int64Builder,
    len: usize,
}

impl Columns {
    fn new() -> Self {
        Self {
            strings: std::array::from_fn(|_| {
                StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 8)
            }),
            ts: TimestampMicrosecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            policy_version: Int64Builder::with_capacity(BATCH_ROWS),
            holdout: BooleanBuilder::with_capacity(BATCH_ROWS),
            propensity: Float64Builder::with_capacity(BATCH_ROWS),
            propensity_error: Float64Builder::with_capacity(BATCH_ROWS),
            rank: Int64Builder::with_capacity(BATCH_ROWS),
            len: 0,
        }
    }

    fn push(&mut self, r: &EventRef<'_>) {
        let [event_id, kind, tenant, slot, city, banner, customer_id, referrer, request_id, policy] =
            &mut self.strings;
        event_id.append_value(r.event_id);
        kind.append_value(r.kind.as_str());
        tenant.append_value(r.tenant);
        slot.append_value(r.slot);
        city.append_value(r.city);
        banner.append_value(r.banner);
        customer_id.append_option(r.customer_id);
        referrer.append_option(r.referrer);
        request_id.append_option(r.request_id);
        let d = &r.decision;
        policy.append_option(d.policy.map(|p| p.as_str()));
        self.policy_version
            .append_option(d.policy_version.map(i64::from));
        self.holdout.append_option(d.holdout);
        self.propensity.append_option(d.propensity);
        self.propensity_error.append_option(d.propensity_error);
        self.rank.append_option(d.rank.map(i64::from));
        self.ts.append_value(r.ts.timestamp_micros());
        self.len += 1;
    }

    fn finish(&mut self) -> RecordBatch {
        let mut s: Vec<ArrayRef> = self
            .strings
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let ts: ArrayRef = Arc::new(self.ts.finish());
        // Field order: the six required strings, ts, customer_id, referrer, request_id, policy,
        // then the decision log's typed columns.
        let tail = s.split_off(6);
        s.push(ts);
        s.extend(tail);
        s.extend([
            Arc::new(self.policy_version.finish()) as ArrayRef,
            Arc::new(self.holdout.finish()),
            Arc::new(self.propensity.finish()),
            Arc::new(self.propensity_error.finish()),
            Arc::new(self.rank.finish()),
        ]);
        self.len = 0;
        RecordBatch::try_new(event_schema(), s).expect("columns match the event schema")
    }
}

/// Rows per Parquet file of the writers' history layout.
pub const ROWS_PER_FILE: usize = 2 * 1024 * 1024;

/// Writes events under `root/dt=YYYY-MM-DD/part-N.parquet` by the IST date of `ts`, starting a
/// new part every `rows_per_file` rows. Rows should come roughly in time order; a date seen again
/// later gets a new part file.
pub struct PartitionedWriter {
    root: PathBuf,
    rows_per_file: usize,
    props: WriterProperties,
    open: Option<OpenPart>,
    next_part: HashMap<NaiveDate, usize>,
    columns: Columns,
    files: Vec<PathBuf>,
    rows: u64,
}

struct OpenPart {
    date: NaiveDate,
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: usize,
}

impl PartitionedWriter {
    pub fn create(root: &Path, rows_per_file: usize) -> Result<Self, ParquetEventError> {
        fs::create_dir_all(root).map_err(|source| ParquetEventError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).expect("level 1 is valid"),
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        Ok(Self {
            root: root.to_path_buf(),
            rows_per_file: rows_per_file.max(1),
            props,
            open: None,
            next_part: HashMap::new(),
            columns: Columns::new(),
            files: Vec::new(),
            rows: 0,
        })
    }

    pub fn write(&mut self, row: &EventRef<'_>) -> Result<(), ParquetEventError> {
        let date = time::ist_date(row.ts);
        let rotate = match &self.open {
            Some(p) => p.date != date || p.rows + self.columns.len >= self.rows_per_file,
            None => true,
        };
        if rotate {
            self.flush_columns()?;
            self.close_part()?;
            self.open_part(date)?;
        }
        self.columns.push(row);
        self.rows += 1;
        if self.columns.len >= BATCH_ROWS {
            self.flush_columns()?;
        }
        Ok(())
    }

    /// Closes the last file; returns the files written in order.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, ParquetEventError> {
        self.flush_columns()?;
        self.close_part()?;
        Ok(self.files)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn open_part(&mut self, date: NaiveDate) -> Result<(), ParquetEventError> {
        let dir = self.root.join(format!("dt={}", date.format("%Y-%m-%d")));
        fs::create_dir_all(&dir).map_err(|source| ParquetEventError::Io {
            path: dir.clone(),
            source,
        })?;
        let n = self.next_part.entry(date).or_insert(0);
        let path = dir.join(format!("part-{n}.parquet"));
        *n += 1;
        let file = File::create(&path).map_err(|source| ParquetEventError::Io {
            path: path.clone(),
            source,
        })?;
        let writer = ArrowWriter::try_new(file, event_schema(), Some(self.props.clone()))
            .map_err(|e| ParquetEventError::corrupt(&path, e))?;
        self.open = Some(OpenPart {
            date,
            path,
            writer,
            rows: 0,
        });
        Ok(())
    }

    fn flush_columns(&mut self) -> Result<(), ParquetEventError> {
        if self.columns.len == 0 {
            return Ok(());
        }
        let part = self
            .open
            .as_mut()
            .expect("rows are only buffered into an open part");
        let batch = self.columns.finish();
        part.rows += batch.num_rows();
        part.writer
            .write(&batch)
            .map_err(|e| ParquetEventError::corrupt(&part.path, e))
    }

    fn close_part(&mut self) -> Result<(), ParquetEventError> {
        if let Some(part) = self.open.take() {
            part.writer
                .close()
                .map_err(|e| ParquetEventError::corrupt(&part.path, e))?;
            self.files.push(part.path);
        }
        Ok(())
    }
}

/// Every `*.parquet` file below `dir`, sorted by path (so `dt=` partitions come in date order).
pub fn list_parquet_files(dir: &Path) -> Result<Vec<PathBuf>, ParquetEventError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|source| ParquetEventError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ParquetEventError::Io {
                path: d.clone(),
                source,
            })?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and validates the events of one Parquet file, batch by batch.
pub struct EventFileReader {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    columns: Vec<Option<usize>>,
    row: u64,
}

impl EventFileReader {
    pub fn open(path: &Path) -> Result<Self, ParquetEventError> {
        Self::open_rows(path, None)
    }

    /// Reads only row group `row_group` of the file; rows are numbered as in the whole file.
    pub fn open_row_group(path: &Path, row_group: usize) -> Result<Self, ParquetEventError> {
        Self::open_rows(path, Some(row_group))
    }

    fn open_rows(path: &Path, row_group: Option<usize>) -> Result<Self, ParquetEventError> {
        let file = File::open(path).map_err(|source| ParquetEventError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| ParquetEventError::corrupt(path, e))?;
        let schema = builder.schema().clone();
        let mut wanted: Vec<usize> = event_columns(path, &schema)?
            .into_iter()
            .map(|name| schema.index_of(name).expect("present"))
            .collect();
        wanted.sort_unstable();
        // Projected batches hold the wanted columns in file order; map each field to its position.
        let columns = FIELDS
            .iter()
            .map(|name| {
                schema
                    .index_of(name)
                    .ok()
                    .and_then(|i| wanted.iter().position(|&w| w == i))
            })
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
        let builder = builder.with_projection(mask).with_batch_size(BATCH_ROWS);
        let (builder, first_row) = match row_group {
            None => (builder, 0),
            Some(rg) => {
                let groups = builder.metadata().row_groups();
                if rg >= groups.len() {
                    return Err(ParquetEventError::corrupt(
                        path,
                        format!("no row group {rg} (the file has {})", groups.len()),
                    ));
                }
                let before = groups[..rg]
                    .iter()
                    .map(|g| g.num_rows().max(0) as u64)
                    .sum();
                (builder.with_row_groups(vec![rg]), before)
            }
        };
        let reader = builder
            .build()
            .map_err(|e| ParquetEventError::corrupt(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            columns,
            row: first_row,
        })
    }

    /// The next batch: each row an event or the rule it breaks.
    #[allow(clippy::type_complexity)]
    pub fn next_batch(
        &mut self,
    ) -> Option<Result<Vec<Result<Event, ParquetEventError>>, ParquetEventError>> {
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(ParquetEventError::corrupt(&self.path, e))),
        };
        Some(self.decode(&batch))
    }

    fn decode(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<Vec<Result<Event, ParquetEventError>>, ParquetEventError> {
        let typed = |field: &str| -> Result<Option<ArrayRef>, ParquetEventError> {
            let pos = FIELDS
                .iter()
                .position(|f| *f == field)
                .expect("known field");
            self.columns[pos]
                .map(|c| {
                    cast(batch.column(c), &column_type(field))
                        .map_err(|e| ParquetEventError::corrupt(&self.path, e))
                })
                .transpose()
        };
        let strings = |field: &str| -> Result<Option<StringArray>, ParquetEventError> {
            Ok(typed(field)?.map(|a| {
                a.as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8")
                    .clone()
            }))
        };
        let [event_id, kind, tenant, slot, city, banner] =
            ["event_id", "kind", "tenant", "slot", "city", "banner"].map(&strings);
        let (event_id, kind, tenant, slot, city, banner) =
            (event_id?, kind?, tenant?, slot?, city?, banner?);
        let (customer_id, referrer, request_id, policy) = (
            strings("customer_id")?,
            strings("referrer")?,
            strings("request_id")?,
            strings("policy")?,
        );
        let (policy_version, holdout, propensity, propensity_error, rank) = (
            typed("policy_version")?,
            typed("holdout")?,
            typed("propensity")?,
            typed("propensity_error")?,
            typed("rank")?,
        );
        fn typed_value<A: Array + 'static, T>(
            a: &Option<ArrayRef>,
            i: usize,
            value: impl Fn(&A, usize) -> T,
        ) -> Option<T> {
            let a = a.as_ref().filter(|a| a.is_valid(i))?;
            Some(value(
                a.as_any()
                    .downcast_ref::<A>()
                    .expect("cast to the column's type"),
                i,
            ))
        }
        let ts_pos = self.columns[6].expect("ts is required");
        let ts = cast(
            batch.column(ts_pos),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )
        .map_err(|e| ParquetEventError::corrupt(&self.path, e))?;
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("cast to Timestamp(µs)");
        fn get(a: &Option<StringArray>, i: usize) -> Option<&str> {
            a.as_ref().filter(|a| a.is_valid(i)).map(|a| a.value(i))
        }
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let row = self.row + i as u64;
            let ts = if ts.is_valid(i) {
                match DateTime::from_timestamp_micros(ts.value(i)) {
                    Some(t) => Some(t),
                    None => {
                        out.push(Err(
                            self.row_error(row, FieldError::new("ts", "is out of range"))
                        ));
                        continue;
                    }
                }
            } else {
                None
            };
            let normal_city = match get(&city, i).map(|c| normalize_city("city", c)).transpose() {
                Ok(c) => c,
                Err(e) => {
                    out.push(Err(self.row_error(row, e)));
                    continue;
                }
            };
            let fields = EventFields {
                event_id: get(&event_id, i),
                kind: get(&kind, i),
                tenant: get(&tenant, i),
                slot: get(&slot, i),
                city: normal_city.as_deref(),
                banner: get(&banner, i),
                ts,
                customer_id: get(&customer_id, i),
                referrer: get(&referrer, i),
                request_id: get(&request_id, i),
                decision: DecisionLogFields {
                    policy: get(&policy, i),
                    policy_version: typed_value(&policy_version, i, Int64Array::value),
                    holdout: typed_value(&holdout, i, BooleanArray::value),
                    propensity: typed_value(&propensity, i, Float64Array::value),
                    propensity_error: typed_value(&propensity_error, i, Float64Array::value),
                    rank: typed_value(&rank, i, Int64Array::value),
                },
            };
            out.push(fields.validate().map_err(|e| self.row_error(row, e)));
        }
        self.row += batch.num_rows() as u64;
        Ok(out)
    }

    fn row_error(&self, row: u64, error: FieldError) -> ParquetEventError {
        ParquetEventError::Row {
            path: self.path.clone(),
            row,
            error,
        }
    }
}

/// The event fields that `schema` has as columns, each checked to be of its type; a missing
/// required one is an error naming it.
pub(crate) fn event_columns(
    path: &Path,
    schema: &Schema,
) -> Result<Vec<&'static str>, ParquetEventError> {
    let mut present = Vec::with_capacity(FIELDS.len());
    for name in FIELDS {
        match schema.field_with_name(name) {
            Ok(field) => {
                check_type(path, name, field.data_type())?;
                present.push(name);
            }
            Err(_) if REQUIRED.contains(&name) => {
                return Err(ParquetEventError::Schema {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    rule: "is required but missing".into(),
                })
            }
            Err(_) => {}
        }
    }
    Ok(present)
}

pub(crate) fn check_type(path: &Path, column: &str, t: &DataType) -> Result<(), ParquetEventError> {
    let (ok, rule) = match column_type(column) {
        DataType::Timestamp(_, _) => (matches!(t, DataType::Timestamp(_, _)), "a timestamp (UTC)"),
        DataType::Boolean => (matches!(t, DataType::Boolean), "a boolean"),
        DataType::Float64 => (
            matches!(t, DataType::Float64 | DataType::Float32),
            "a floating-point number",
        ),
        DataType::Int64 => (t.is_integer(), "an integer"),
        _ => (
            match t {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
                DataType::Dictionary(_, v) => matches!(**v, DataType::Utf8 | DataType::LargeUtf8),
                _ => false,
            },
            "a string",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(ParquetEventError::Schema {
            path: path.to_path_buf(),
            column: column.to_string(),
            rule: format!("must be {rule} (found {t})"),
        })
    }
}

/// Reads every valid event of one file; the first invalid row or unreadable batch is an error.
pub fn read_events(path: &Path) -> Result<Vec<Event>, ParquetEventError> {
    let mut reader = EventFileReader::open(path)?;
    let mut events = Vec::new();
    while let Some(batch) = reader.next_batch() {
        for row in batch? {
            events.push(row?);
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DecisionLog, EventKind, Policy};

    fn event(i: u32, ts: &str) -> Event {
        Event {
            event_id: format!("e{i}"),
            kind: if i.is_multiple_of(3) {
                EventKind::Click
            } else {
                EventKind::Impression
            },
            tenant: "ajio".into(),
            slot: "hero".into(),
            city: "pune".into(),
            banner: format!("b{}", i % 4),
            ts: time::parse_rfc3339(ts).unwrap(),
            customer_id: i.is_multiple_of(2).then(|| format!("c{i}")),
            referrer: Some("ads".into()),
            request_id: None,
            decision: DecisionLog {
                policy: Some(if i.is_multiple_of(5) {
                    Policy::Uniform
                } else {
                    Policy::Thompson
                }),
                holdout: Some(i.is_multiple_of(5)),
                propensity: (i > 0).then(|| 1.0 / f64::from(i)),
                rank: Some(1 + (i % 3) as u8),
                ..DecisionLog::default()
            },
        }
    }

    #[test]
    fn a_row_group_is_read_alone_with_its_rows_numbered_as_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.parquet");
        let events: Vec<Event> = (0..7).map(|i| event(i, "2026-11-28T10:00:00Z")).collect();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(3))
            .build();
        let mut writer =
            ArrowWriter::try_new(File::create(&path).unwrap(), event_schema(), Some(props))
                .unwrap();
        let mut columns = Columns::new();
        for e in &events {
            columns.push(&e.into());
        }
        writer.write(&columns.finish()).unwrap();
        writer.close().unwrap();

        let mut reader = EventFileReader::open_row_group(&path, 1).unwrap();
        let rows = reader.next_batch().unwrap().unwrap();
        let read: Vec<Event> = rows.into_iter().map(Result::unwrap).collect();
        assert_eq!(read, events[3..6]);
        assert!(reader.next_batch().is_none());
        assert_eq!(reader.row, 6);
        let missing = EventFileReader::open_row_group(&path, 3).err().unwrap();
        assert!(missing.to_string().contains("no row group 3"), "{missing}");
    }

    #[test]
    fn writes_ist_partitions_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<Event> = (0..10)
            .map(|i| {
                event(
                    i,
                    if i < 5 {
                        "2026-11-28T18:29:59Z"
                    } else {
                        "2026-11-28T18:30:00Z"
                    },
                )
            })
            .collect();
        let mut w = PartitionedWriter::create(dir.path(), 3).unwrap();
        for e in &events {
            w.write(&e.into()).unwrap();
        }
        let files = w.finish().unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "dt=2026-11-28/part-0.parquet",
                "dt=2026-11-28/part-1.parquet",
                "dt=2026-11-29/part-0.parquet",
                "dt=2026-11-29/part-1.parquet"
            ]
        );
        assert_eq!(list_parquet_files(dir.path()).unwrap(), files);
        let back: Vec<Event> = files.iter().flat_map(|f| read_events(f).unwrap()).collect();
        assert_eq!(back, events);
    }

    #[test]
    fn truncated_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartitionedWriter::create(dir.path(), 100).unwrap();
        for i in 0..50 {
            w.write(&(&event(i, "2026-11-28T10:00:00Z")).into())
                .unwrap();
        }
        let file = w.finish().unwrap().remove(0);
        let bytes = fs::read(&file).unwrap();
        for cut in [0, 4, bytes.len() / 2, bytes.len() - 3] {
            fs::write(&file, &bytes[..cut]).unwrap();
            let err = read_events(&file).unwrap_err().to_string();
            assert!(err.contains("part-0.parquet"), "{err}");
        }
    }
}
