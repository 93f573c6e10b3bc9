//! Parquet history for backfill. The plan reads every footer up front (schema, row groups, the
//! newest timestamp) so that every worker and process agrees on the work; each worker then reads
//! its share of row groups, only the six columns it needs, and pre-aggregates on dictionary
//! indices: strings are looked at (and validated) once per distinct dictionary value. Where the
//! page index shows that every row of a `ts` page falls in one bucket, that page is not read at
//! all (the files of a clickstream are written in time order, so most pages are such).

use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, DictionaryArray, NullBufferBuilder, PrimitiveArray, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit, TimestampMicrosecondType};
use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::model::parquet::{check_type, list_parquet_files, ParquetEventError, REQUIRED};
use crate::model::{validate_name, ArmKey, EventKind, FieldError};
use crate::time::Buckets;

/// The columns counted, `ts` last.
const NEEDED: [&str; 6] = ["tenant", "slot", "city", "banner", "kind", "ts"];
/// Rows per decoded batch. arrow-rs grows a dictionary column's key buffer page by page with
/// exact reservations, so a batch costs copies quadratic in its length; 64k rows (a few pages)
/// keeps that small and the buffers in reused memory.
const BATCH_ROWS: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub rows: u64,
    metadata: ArrowReaderMetadata,
}

/// One row group of one file: the unit of work a worker takes.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    pub file: u32,
    pub row_group: usize,
    pub rows: u64,
}

/// Every file checked, every row group listed, the same in every process.
#[derive(Debug, Clone)]
pub struct ParquetPlan {
    pub files: Vec<PlannedFile>,
    pub units: Vec<Unit>,
    /// Files refused at planning (with `--skip-bad-files`), with the reason.
    pub skipped: Vec<String>,
    /// The newest `ts` by the footers' statistics.
    pub newest: Option<DateTime<Utc>>,
}

impl ParquetPlan {
    /// Reads the footers of every `*.parquet` file under `input`. A file that cannot be read or
    /// has the wrong schema is an error naming it, or, with `skip_bad_files`, is left out and
    /// reported.
    pub fn new(input: &Path, skip_bad_files: bool) -> Result<Self, ParquetEventError> {
        let mut plan = ParquetPlan {
            files: Vec::new(),
            units: Vec::new(),
            skipped: Vec::new(),
            newest: None,
        };
        // Footers and page indexes are read in parallel, then taken in file order so that every
        // process plans the same units and reports the same first bad file.
        let planned: Vec<_> = list_parquet_files(input)?
            .par_iter()
            .map(|path| plan_file(path))
            .collect();
        for planned in planned {
            match planned {
                Ok((file, newest)) => {
                    let index = plan.files.len() as u32;
                    for (rg, meta) in file.metadata.metadata().row_groups().iter().enumerate() {
                        plan.units.push(Unit {
                            file: index,
                            row_group: rg,
                            rows: meta.num_rows().max(0) as u64,
                        });
                    }
                    plan.newest = plan.newest.max(newest);
                    plan.files.push(file);
                }
                Err(e) if skip_bad_files => plan.skipped.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Ok(plan)
    }

    pub fn rows(&self) -> u64 {
        self.units.iter().map(|u| u.rows).sum()
    }

    /// The units of worker `index` of `peers`: a run of consecutive row groups holding about a
    /// `peers`-th of the rows (each row group goes where its middle row falls). History is in
    /// time order, so an hour cut by a row-group boundary stays with one worker and enters the
    /// dataflow as one record per arm, not one per worker.
    pub fn share(&self, index: usize, peers: usize) -> impl Iterator<Item = &Unit> {
        let peers = peers.max(1) as u128;
        let total = u128::from(self.rows()).max(1);
        let mut before = 0u128;
        self.units.iter().filter(move |unit| {
            let middle = before + u128::from(unit.rows) / 2;
            before += u128::from(unit.rows);
            middle * peers / total == index as u128
        })
    }
}

fn plan_file(path: &Path) -> Result<(PlannedFile, Option<DateTime<Utc>>), ParquetEventError> {
    let corrupt = |e: &dyn std::fmt::Display| ParquetEventError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let file = File::open(path).map_err(|source| ParquetEventError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The page index lets a reader skip `ts` pages; a file without one (or with an unreadable
    // one) is read whole.
    let with_index = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let plain = ArrowReaderMetadata::load(&file, with_index)
        .or_else(|_| ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()))
        .map_err(|e| corrupt(&e))?;
    let schema = plain.schema().clone();
    for name in NEEDED {
        let Ok(field) = schema.field_with_name(name) else {
            debug_assert!(REQUIRED.contains(&name));
            return Err(ParquetEventError::Schema {
                path: path.to_path_buf(),
                column: name.to_string(),
                rule: "is required but missing".into(),
            });
        };
        check_type(path, name, field.data_type())?;
    }
    // Ask for the name columns as dictionaries so that aggregation works on their indices.
    let hinted: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                if NEEDED.contains(&f.name().as_str()) =>
            {
                f.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                ))
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let options = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new_with_metadata(
        hinted,
        schema.metadata().clone(),
    )));
    let metadata = ArrowReaderMetadata::try_new(plain.metadata().clone(), options)
        .or_else(|_| {
            ArrowReaderMetadata::try_new(plain.metadata().clone(), ArrowReaderOptions::new())
        })
        .map_err(|e| corrupt(&e))?;
    let newest = newest_ts(
        &metadata,
        schema
            .field_with_name("ts")
            .expect("checked above")
            .data_type(),
    );
    let rows = metadata.metadata().file_metadata().num_rows().max(0) as u64;
    Ok((
        PlannedFile {
            path: path.to_path_buf(),
            rows,
            metadata,
        },
        newest,
    ))
}

fn newest_ts(metadata: &ArrowReaderMetadata, ts_type: &DataType) -> Option<DateTime<Utc>> {
    let DataType::Timestamp(unit, _) = ts_type else {
        return None;
    };
    let per_micro = |v: i64| match unit {
        TimeUnit::Second => v.checked_mul(1_000_000),
        TimeUnit::Millisecond => v.checked_mul(1_000),
        TimeUnit::Microsecond => Some(v),
        TimeUnit::Nanosecond => Some(v.div_euclid(1_000)),
    };
    let column = metadata
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == "ts")?;
    metadata
        .metadata()
        .row_groups()
        .iter()
        .filter_map(|rg| match rg.column(column).statistics() {
            Some(Statistics::Int64(s)) => s.max_opt().copied(),
            _ => None,
        })
        .filter_map(per_micro)
        .max()
        .and_then(DateTime::from_timestamp_micros)
}

/// Names interned by the worker that reads them, so that a tally is keyed by four integers and
/// the strings of an arm are built once per distinct key of an epoch, not once per batch.
#[derive(Debug, Default)]
pub struct Names {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
    arms: FxHashMap<ArmIds, Arc<ArmKey>>,
}

/// An arm as interned (tenant, slot, city, banner).
pub type ArmIds = [u32; 4];

impl Names {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The arm of `ids`, built once and shared after.
    pub fn arm(&mut self, ids: ArmIds) -> Arc<ArmKey> {
        let names = &self.names;
        self.arms
            .entry(ids)
            .or_insert_with(|| {
                let [tenant, slot, city, banner] = ids.map(|id| names[id as usize].as_str());
                Arc::new(ArmKey::new(tenant, slot, city, banner))
            })
            .clone()
    }
}

/// The rows of one row group, and what was refused.
#[derive(Debug, Default)]
pub struct UnitReport {
    pub rows: u64,
    pub rejected: u64,
    pub first_rejection: Option<String>,
}

/// Reads one row group and aggregates it per (arm, bucket), the arm's names interned in
/// `names`: once the whole row group is read, `emit` gets its (impressions, clicks) per (arm,
/// bucket), each once. Rows at or after `until` are not counted; rows that break the contract
/// are counted as rejected, never as events.
pub fn read_unit(
    file: &PlannedFile,
    unit: &Unit,
    buckets: Buckets,
    until: Option<DateTime<Utc>>,
    names: &mut Names,
    mut emit: impl FnMut(ArmIds, i64, (i64, i64)),
) -> Result<UnitReport, ParquetEventError> {
    let mut unit_cells = UnitCells::default();
    let corrupt = |e: &dyn std::fmt::Display| ParquetEventError::Corrupt {
        path: file.path.clone(),
        detail: format!("row group {}: {e}", unit.row_group),
    };
    let io = |source| ParquetEventError::Io {
        path: file.path.clone(),
        source,
    };
    let handle = File::open(&file.path).map_err(io)?;
    let until = until.map(|t| t.timestamp_micros()).unwrap_or(i64::MAX);
    let ts_pages = TsPages::of(file, unit.row_group, buckets, until);
    let name_columns: &[&str] = if ts_pages.is_some() {
        &NEEDED[..NEEDED.len() - 1]
    } else {
        &NEEDED
    };
    let bytes =
        RowGroupBytes::read(handle, &file.metadata, unit.row_group, name_columns).map_err(io)?;
    let reader =
        row_group_reader(file, unit, &bytes, name_columns, None).map_err(|e| corrupt(&e))?;
    // A batch's timestamps come from its own `ts` column, or from the page index with only the
    // undecided pages decoded.
    let mut ts_fill = match ts_pages {
        Some(pages) => {
            let selection = pages.undecided_rows();
            let decoded = row_group_reader(file, unit, &bytes, &["ts"], Some(selection))
                .map_err(|e| corrupt(&e))?;
            Some(TsFill::new(pages, decoded))
        }
        None => None,
    };
    let mut out = UnitReport::default();
    let mut first_row = 0;
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(&e))?;
        let ts = match &mut ts_fill {
            None => cast(
                batch.column_by_name("ts").expect("projected"),
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )
            .map(|ts| ts.as_primitive::<TimestampMicrosecondType>().clone()),
            Some(fill) => fill.take(first_row, batch.num_rows()),
        }
        .map_err(|e| corrupt(&e))?;
        first_row += batch.num_rows();
        aggregate_batch(
            &batch,
            &ts,
            buckets,
            until,
            names,
            &mut out,
            &mut unit_cells,
        )
        .map_err(|e| corrupt(&e))?;
    }
    for ((arm, bucket), counts) in unit_cells.cells {
        emit(arm, bucket, counts);
    }
    Ok(out)
}

/// A row group's counts per (arm, bucket), summed over its batches: few cells that stay in
/// cache, so the caller's map, which holds many row groups' cells, is touched once per cell
/// rather than once per batch. And the tally's per-row scratch, kept across batches.
#[derive(Default)]
struct UnitCells {
    cells: FxHashMap<(ArmIds, i64), (i64, i64)>,
    row_cells: Vec<u32>,
}

impl UnitCells {
    fn add(&mut self, arm: ArmIds, bucket: i64, (imp, clk): (i64, i64)) {
        let cell = self.cells.entry((arm, bucket)).or_default();
        cell.0 += imp;
        cell.1 += clk;
    }
}

/// A reader of `columns` of one row group, every row or the `selection`.
fn row_group_reader(
    file: &PlannedFile,
    unit: &Unit,
    bytes: &RowGroupBytes,
    columns: &[&str],
    selection: Option<RowSelection>,
) -> Result<ParquetRecordBatchReader, parquet::errors::ParquetError> {
    let builder =
        ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), file.metadata.clone());
    let roots: Vec<usize> = columns
        .iter()
        .map(|n| builder.schema().index_of(n).expect("checked at planning"))
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let builder = builder
        .with_row_groups(vec![unit.row_group])
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS);
    match selection {
        Some(selection) => builder.with_row_selection(selection),
        None => builder,
    }
    .build()
}

/// One `ts` page of a row group: its rows, and, when the page index shows that they all fall in
/// one bucket on one side of `until`, a timestamp that stands for every one of them.
#[derive(Debug, Clone, PartialEq)]
struct TsPage {
    rows: Range<usize>,
    stands_for_all: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
struct TsPages {
    pages: Vec<TsPage>,
    rows: usize,
}

impl TsPages {
    /// The `ts` pages of `row_group` when the file has a page index for a microsecond `ts` and
    /// at least one page need not be read; otherwise `None` (the column is read whole).
    fn of(file: &PlannedFile, row_group: usize, buckets: Buckets, until: i64) -> Option<Self> {
        let ts_type = file
            .metadata
            .schema()
            .field_with_name("ts")
            .ok()?
            .data_type();
        if !matches!(ts_type, DataType::Timestamp(TimeUnit::Microsecond, _)) {
            return None;
        }
        let meta: &ParquetMetaData = file.metadata.metadata();
        let column = meta
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.name() == "ts")?;
        let page_index = meta.page_index()?;
        let ColumnIndexMetaData::INT64(index) = page_index.column_index(row_group, column)? else {
            return None;
        };
        let locations = page_index.offset_index(row_group, column)?.page_locations();
        let rows = usize::try_from(meta.row_group(row_group).num_rows()).ok()?;
        if index.num_pages() != locations.len() as u64 {
            return None;
        }
        let mut pages = Vec::with_capacity(locations.len());
        for (i, location) in locations.iter().enumerate() {
            let start = usize::try_from(location.first_row_index).ok()?;
            let end = match locations.get(i + 1) {
                Some(next) => usize::try_from(next.first_row_index).ok()?,
                None => rows,
            };
            if start > end
                || end > rows
                || pages.last().is_some_and(|p: &TsPage| p.rows.end != start)
            {
                return None;
            }
            let stands_for_all = match (index.min_value(i), index.max_value(i)) {
                (Some(&lo), Some(&hi))
                    if index.null_count(i) == Some(0)
                        && lo <= hi
                        && buckets.index_of_micros(lo) == buckets.index_of_micros(hi)
                        && (hi < until || lo >= until) =>
                {
                    Some(lo)
                }
                _ => None,
            };
            pages.push(TsPage {
                rows: start..end,
                stands_for_all,
            });
        }
        let starts_at_zero = pages.first().is_none_or(|p| p.rows.start == 0);
        let ends_at_rows = pages.last().map_or(rows == 0, |p| p.rows.end == rows);
        (starts_at_zero && ends_at_rows && pages.iter().any(|p| p.stands_for_all.is_some()))
            .then_some(Self { pages, rows })
    }

    /// The rows of the pages that must be decoded.
    fn undecided_rows(&self) -> RowSelection {
        RowSelection::from_consecutive_ranges(
            self.pages
                .iter()
                .filter(|p| p.stands_for_all.is_none())
                .map(|p| p.rows.clone()),
            self.rows,
        )
    }
}

/// Builds each batch's timestamps from the pages that stand for all their rows and, in row
/// order, the decoded rows of the others.
struct TsFill {
    pages: TsPages,
    page: usize,
    decoded: ParquetRecordBatchReader,
    current: Option<TimestampMicrosecondArray>,
    used: usize,
}

impl TsFill {
    fn new(pages: TsPages, decoded: ParquetRecordBatchReader) -> Self {
        Self {
            pages,
            page: 0,
            decoded,
            current: None,
            used: 0,
        }
    }

    /// The timestamps of rows `first..first + n` of the row group.
    fn take(
        &mut self,
        first: usize,
        n: usize,
    ) -> Result<TimestampMicrosecondArray, arrow::error::ArrowError> {
        let mut values = Vec::with_capacity(n);
        let mut nulls = NullBufferBuilder::new(n);
        let (mut row, end) = (first, first + n);
        while row < end {
            let page = loop {
                let page = self.pages.pages.get(self.page).ok_or_else(|| {
                    arrow::error::ArrowError::ParquetError(format!(
                        "row {row} is past the last `ts` page of the page index"
                    ))
                })?;
                if page.rows.end > row {
                    break page;
                }
                self.page += 1;
            };
            let take = page.rows.end.min(end) - row;
            match page.stands_for_all {
                Some(micros) => {
                    values.resize(values.len() + take, micros);
                    nulls.append_n_non_nulls(take);
                }
                None => self.copy_decoded(take, &mut values, &mut nulls)?,
            }
            row += take;
        }
        Ok(TimestampMicrosecondArray::new(
            values.into(),
            nulls.finish(),
        ))
    }

    fn copy_decoded(
        &mut self,
        mut wanted: usize,
        values: &mut Vec<i64>,
        nulls: &mut NullBufferBuilder,
    ) -> Result<(), arrow::error::ArrowError> {
        while wanted > 0 {
            let current = match &self.current {
                Some(current) if self.used < current.len() => current,
                _ => {
                    let batch = self.decoded.next().transpose()?.ok_or_else(|| {
                        arrow::error::ArrowError::ParquetError(
                            "the `ts` column has fewer rows than its page index".into(),
                        )
                    })?;
                    let ts = cast(
                        batch.column(0),
                        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    )?;
                    self.used = 0;
                    self.current.insert(ts.as_primitive().clone())
                }
            };
            let take = wanted.min(current.len() - self.used);
            let slice = current.slice(self.used, take);
            values.extend_from_slice(slice.values());
            match slice.nulls() {
                Some(n) => n.iter().for_each(|valid| nulls.append(valid)),
                None => nulls.append_n_non_nulls(take),
            }
            self.used += take;
            wanted -= take;
        }
        Ok(())
    }
}

/// One row group's column chunks, each read into memory with one positioned read, so that pages
/// are decoded from memory without a read call per page; ranges outside them (the `ts` pages
/// read one by one) are read from the file on demand.
#[derive(Clone)]
struct RowGroupBytes {
    file: Arc<File>,
    len: u64,
    chunks: Vec<(u64, Bytes)>,
}

impl RowGroupBytes {
    fn read(
        file: File,
        metadata: &ArrowReaderMetadata,
        row_group: usize,
        columns: &[&str],
    ) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let meta = metadata.metadata().row_group(row_group);
        let mut chunks = Vec::with_capacity(columns.len());
        for column in meta.columns() {
            if !columns.contains(&column.column_descr().name()) {
                continue;
            }
            let (start, length) = column.byte_range();
            let length = usize::try_from(length).map_err(std::io::Error::other)?;
            let mut buffer = vec![0; length];
            file.read_exact_at(&mut buffer, start)?;
            chunks.push((start, Bytes::from(buffer)));
        }
        Ok(Self {
            file: Arc::new(file),
            len,
            chunks,
        })
    }

    /// The loaded chunk holding `start..start + length`, sliced.
    fn loaded(&self, start: u64, length: usize) -> Option<Bytes> {
        self.chunks.iter().find_map(|(at, chunk)| {
            let from = usize::try_from(start.checked_sub(*at)?).ok()?;
            (from + length <= chunk.len()).then(|| chunk.slice(from..from + length))
        })
    }
}

impl Length for RowGroupBytes {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for RowGroupBytes {
    type T = ChunkRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<ChunkRead> {
        let in_memory = self
            .chunks
            .iter()
            .find(|(at, chunk)| (*at..*at + chunk.len() as u64).contains(&start));
        Ok(match in_memory {
            Some((at, chunk)) => ChunkRead::Memory(chunk.slice((start - at) as usize..).reader()),
            None => ChunkRead::File(BufReader::new(FileAt {
                file: self.file.clone(),
                position: start,
            })),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        if let Some(bytes) = self.loaded(start, length) {
            return Ok(bytes);
        }
        let mut buffer = vec![0; length];
        self.file.read_exact_at(&mut buffer, start)?;
        Ok(Bytes::from(buffer))
    }
}

enum ChunkRead {
    Memory(bytes::buf::Reader<Bytes>),
    File(BufReader<FileAt>),
}

impl Read for ChunkRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ChunkRead::Memory(r) => r.read(buf),
            ChunkRead::File(r) => r.read(buf),
        }
    }
}

/// Reads a shared file from a position of its own.
struct FileAt {
    file: Arc<File>,
    position: u64,
}

impl Read for FileAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

/// A dictionary column with each distinct value validated and interned once.
struct NameColumn {
    name: &'static str,
    keys: PrimitiveArray<Int32Type>,
    values: StringArray,
    /// The interned id of each dictionary value, `None` where it breaks the contract.
    ids: Vec<Option<u32>>,
}

impl NameColumn {
    fn new(
        batch: &RecordBatch,
        name: &'static str,
        names: &mut Names,
    ) -> Result<Self, arrow::error::ArrowError> {
        let column = batch.column_by_name(name).expect("projected");
        let dict_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let column = if column.data_type() == &dict_type {
            column.clone()
        } else {
            cast(column, &dict_type)?
        };
        let dict: &DictionaryArray<Int32Type> = column.as_dictionary();
        let values = dict.values().as_string::<i32>().clone();
        let ids = (0..values.len())
            .map(|i| {
                (values.is_valid(i) && validate_name(name, values.value(i)).is_ok())
                    .then(|| names.intern(values.value(i)))
            })
            .collect();
        Ok(Self {
            name,
            keys: dict.keys().clone(),
            values,
            ids,
        })
    }

    /// Whether every row has a key to a dictionary value that follows the contract, so that
    /// rows need no checks.
    fn all_valid(&self) -> bool {
        self.keys.null_count() == 0
            && self.ids.iter().all(Option::is_some)
            && keys_below(&self.keys, self.ids.len())
    }

    /// The dictionary index of row `i` when its value follows the contract.
    #[inline]
    fn key(&self, i: usize) -> Option<u32> {
        if self.keys.is_null(i) {
            return None;
        }
        let k = self.keys.value(i);
        self.ids
            .get(usize::try_from(k).ok()?)
            .copied()
            .flatten()
            .map(|_| k as u32)
    }

    /// Why row `i` has no valid key (the slow path, for rejected rows only).
    fn error(&self, i: usize) -> FieldError {
        if self.keys.is_null(i) {
            return FieldError::new(self.name, "is required");
        }
        let k = self.keys.value(i) as usize;
        if k >= self.values.len() || self.values.is_null(k) {
            return FieldError::new(self.name, "is required");
        }
        validate_name(self.name, self.values.value(k))
            .err()
            .unwrap_or_else(|| FieldError::new(self.name, "is invalid"))
    }
}

fn aggregate_batch(
    batch: &RecordBatch,
    ts: &TimestampMicrosecondArray,
    buckets: Buckets,
    until: i64,
    interned: &mut Names,
    out: &mut UnitReport,
    unit: &mut UnitCells,
) -> Result<(), arrow::error::ArrowError> {
    let names = [
        NameColumn::new(batch, "tenant", interned)?,
        NameColumn::new(batch, "slot", interned)?,
        NameColumn::new(batch, "city", interned)?,
        NameColumn::new(batch, "banner", interned)?,
    ];
    let kind = batch.column_by_name("kind").expect("projected");
    let dict_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let kind = if kind.data_type() == &dict_type {
        kind.clone()
    } else {
        cast(kind, &dict_type)?
    };
    let kind: &DictionaryArray<Int32Type> = kind.as_dictionary();
    let kind_values = kind.values().as_string::<i32>();
    let kinds: Vec<Option<EventKind>> = (0..kind_values.len())
        .map(|i| EventKind::parse("kind", kind_values.value(i)).ok())
        .collect();
    let kind_keys = kind.keys();

    let dims = names.each_ref().map(|c| c.values.len());
    let mut tally = Tally::new(dims, ts, buckets, until);
    out.rows += batch.num_rows() as u64;
    let clean = names.iter().all(NameColumn::all_valid)
        && kind_keys.null_count() == 0
        && kinds.iter().all(Option::is_some)
        && keys_below(kind_keys, kinds.len())
        && ts.null_count() == 0;
    if clean {
        // Every row follows the contract: read the keys straight from the buffers.
        let increments: Vec<u64> = kinds
            .iter()
            .map(|k| increment(*k == Some(EventKind::Click)))
            .collect();
        let n = batch.num_rows();
        let keys = names.each_ref().map(|c| &c.keys.values()[..n]);
        let (kind_keys, ts) = (&kind_keys.values()[..n], &ts.values()[..n]);
        match &mut tally {
            Tally::Dense(dense) => {
                dense.add_clean(keys, ts, kind_keys, &increments, until, &mut unit.row_cells)
            }
            sparse => {
                for (i, &micros) in ts.iter().enumerate().filter(|(_, &m)| m < until) {
                    let key = keys.map(|k| k[i] as u32);
                    sparse.add(key, micros, increments[kind_keys[i] as usize]);
                }
            }
        }
    } else {
        'rows: for i in 0..batch.num_rows() {
            let mut key = [0u32; 4];
            for (slot, col) in key.iter_mut().zip(&names) {
                match col.key(i) {
                    Some(k) => *slot = k,
                    None => {
                        reject(out, col.error(i));
                        continue 'rows;
                    }
                }
            }
            let kind_key = (!kind_keys.is_null(i))
                .then(|| kind_keys.value(i))
                .and_then(|k| usize::try_from(k).ok())
                .filter(|&k| k < kinds.len());
            let event_kind = match kind_key.and_then(|k| kinds[k]) {
                Some(k) => k,
                None => {
                    let got = kind_key.map(|k| kind_values.value(k).to_string());
                    reject(
                        out,
                        FieldError::new(
                            "kind",
                            match got {
                                None => "is required".to_string(),
                                Some(v) => {
                                    format!("must be \"impression\" or \"click\" (got {v:?})")
                                }
                            },
                        ),
                    );
                    continue;
                }
            };
            if ts.is_null(i) {
                reject(out, FieldError::new("ts", "is required"));
                continue;
            }
            let micros = ts.value(i);
            if micros >= until {
                continue;
            }
            tally.add(key, micros, increment(event_kind == EventKind::Click));
        }
    }
    tally.drain(|keys, bucket, counts| {
        let mut arm = [0u32; 4];
        for ((id, key), col) in arm.iter_mut().zip(keys).zip(&names) {
            *id = col.ids[key as usize].expect("only valid keys are tallied");
        }
        unit.add(arm, bucket, counts);
    });
    Ok(())
}

/// Whether every key slot indexes a dictionary of `len` values: one pass, where a negative key
/// wraps to a huge unsigned one.
fn keys_below(keys: &PrimitiveArray<Int32Type>, len: usize) -> bool {
    let max = keys.values().iter().fold(0u32, |m, &k| m.max(k as u32));
    keys.is_empty() || (max as usize) < len
}

/// The smallest and largest valid timestamp, in one pass.
fn min_max(ts: &TimestampMicrosecondArray) -> Option<(i64, i64)> {
    if ts.null_count() > 0 {
        return arrow::compute::min(ts).zip(arrow::compute::max(ts));
    }
    let values = ts.values();
    let first = *values.first()?;
    Some(
        values
            .iter()
            .fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v))),
    )
}

/// Cells of a dense grid beyond which a batch is tallied in a hash map instead.
const DENSE_CELLS: usize = 1 << 18;

/// A batch's counts per (dictionary keys, bucket): a dense grid over the batch's dictionaries and
/// bucket range when it is small (an index computation per row instead of a hash lookup), else a
/// hash map. A cell holds impressions in its low 32 bits and clicks in its high 32 bits, so that
/// a row adds its [`increment`] without a branch (a batch has far fewer than 2^32 rows).
enum Tally {
    Dense(DenseTally),
    Sparse {
        buckets: Buckets,
        map: FxHashMap<([u32; 4], i64), u64>,
    },
}

struct DenseTally {
    dims: [usize; 4],
    range: BucketRange,
    cells: Vec<u64>,
    touched: Vec<u32>,
}

/// The cell of a row at or after `until`, which is not counted.
const PAST_UNTIL: u32 = u32::MAX;

impl DenseTally {
    /// Counts rows whose keys all lie within their dictionaries: first every row's cell (into
    /// `row_cells`, or [`PAST_UNTIL`]), a sum of strided keys that the compiler vectorizes, then
    /// one add per row.
    fn add_clean(
        &mut self,
        [t, s, c, b]: [&[i32]; 4],
        ts: &[i64],
        kind: &[i32],
        increments: &[u64],
        until: i64,
        row_cells: &mut Vec<u32>,
    ) {
        let len = self.range.len;
        let [_, ds, dc, db] = self.dims;
        // The grid has at most DENSE_CELLS cells, so every index fits in a u32.
        let strides = [ds * dc * db * len, dc * db * len, db * len, len].map(|x| x as u32);
        let n = ts.len();
        let (t, s, c, b, kind) = (&t[..n], &s[..n], &c[..n], &b[..n], &kind[..n]);
        row_cells.clear();
        row_cells.extend((0..n).map(|i| {
            (t[i] as u32) * strides[0]
                + (s[i] as u32) * strides[1]
                + (c[i] as u32) * strides[2]
                + (b[i] as u32) * strides[3]
        }));
        // Runs of one timestamp are common (a page that stands for all its rows), so the bucket
        // of the previous row is kept.
        let (mut last_micros, mut last_offset) = (i64::MIN, 0);
        for (cell, &micros) in row_cells.iter_mut().zip(ts) {
            if micros >= until {
                *cell = PAST_UNTIL;
                continue;
            }
            if micros != last_micros {
                (last_micros, last_offset) = (micros, self.range.offset(micros) as u32);
            }
            *cell += last_offset;
        }
        for (&index, &kind) in row_cells.iter().zip(kind) {
            if index == PAST_UNTIL {
                continue;
            }
            let cell = &mut self.cells[index as usize];
            if *cell == 0 {
                self.touched.push(index);
            }
            *cell += increments[kind as usize];
        }
    }

    #[inline(always)]
    fn add(&mut self, key: [u32; 4], micros: i64, increment: u64) {
        let mut index = 0usize;
        for (k, d) in key.iter().zip(self.dims.iter()) {
            index = index * d + *k as usize;
        }
        let index = index * self.range.len + self.range.offset(micros);
        let cell = &mut self.cells[index];
        if *cell == 0 {
            self.touched.push(index as u32);
        }
        *cell += increment;
    }
}

impl Tally {
    fn new(dims: [usize; 4], ts: &TimestampMicrosecondArray, buckets: Buckets, until: i64) -> Self {
        let range = min_max(ts)
            .map(|(lo, hi)| BucketRange::new(buckets, lo, hi.min(until.saturating_sub(1)).max(lo)));
        let cells = range.as_ref().and_then(|r| {
            dims.iter()
                .try_fold(r.len, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= DENSE_CELLS)
        });
        match (range, cells) {
            (Some(range), Some(cells)) => Tally::Dense(DenseTally {
                dims,
                range,
                cells: vec![0; cells],
                touched: Vec::new(),
            }),
            _ => Tally::Sparse {
                buckets,
                map: FxHashMap::default(),
            },
        }
    }

    #[inline]
    fn add(&mut self, key: [u32; 4], micros: i64, increment: u64) {
        match self {
            Tally::Dense(dense) => dense.add(key, micros, increment),
            Tally::Sparse { buckets, map } => {
                *map.entry((key, buckets.index_of_micros(micros)))
                    .or_default() += increment;
            }
        }
    }

    fn drain(self, mut emit: impl FnMut([u32; 4], i64, (i64, i64))) {
        match self {
            Tally::Dense(DenseTally {
                dims,
                range,
                cells,
                touched,
                ..
            }) => {
                for index in touched {
                    let mut rest = index as usize / range.len;
                    let bucket = range.first + (index as usize % range.len) as i64;
                    let mut key = [0u32; 4];
                    for (k, d) in key.iter_mut().zip(dims).rev() {
                        *k = (rest % d) as u32;
                        rest /= d;
                    }
                    emit(key, bucket, counts_of(cells[index as usize]));
                }
            }
            Tally::Sparse { map, .. } => {
                for ((key, bucket), cell) in map {
                    emit(key, bucket, counts_of(cell));
                }
            }
        }
    }
}

/// What one row adds to its cell: an impression in the low half, a click in the high half.
#[inline]
fn increment(click: bool) -> u64 {
    1 << (32 * u64::from(click))
}

/// A cell's (impressions, clicks).
fn counts_of(cell: u64) -> (i64, i64) {
    ((cell & u64::from(u32::MAX)) as i64, (cell >> 32) as i64)
}

/// The buckets from the one of `lo` to the one of `hi`, with a bucket lookup by a float
/// multiplication and an exact integer correction instead of a division per row.
struct BucketRange {
    first: i64,
    len: usize,
    base_micros: i64,
    width_micros: i64,
    per_micro: f64,
}

impl BucketRange {
    fn new(buckets: Buckets, lo: i64, hi: i64) -> Self {
        let first = buckets.index_of_micros(lo);
        let last = buckets.index_of_micros(hi);
        let width_micros = i64::from(buckets.minutes()) * 60_000_000;
        Self {
            first,
            len: usize::try_from(last - first + 1).unwrap_or(usize::MAX),
            base_micros: buckets.start(first).timestamp_micros(),
            width_micros,
            per_micro: 1.0 / width_micros as f64,
        }
    }

    /// The bucket of `micros` (within the range) counted from `first`.
    #[inline]
    fn offset(&self, micros: i64) -> usize {
        let since = micros - self.base_micros;
        let mut q = (since as f64 * self.per_micro) as i64;
        if q * self.width_micros > since {
            q -= 1;
        } else if (q + 1) * self.width_micros <= since {
            q += 1;
        }
        q as usize
    }
}

fn reject(out: &mut UnitReport, e: FieldError) {
    out.rejected += 1;
    if out.first_rejection.is_none() {
        out.first_rejection = Some(e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shares_split_the_row_groups_into_balanced_runs(
            rows in prop::collection::vec(0u64..5_000, 0..60),
            peers in 1usize..7,
        ) {
            let plan = ParquetPlan {
                files: Vec::new(),
                units: rows
                    .iter()
                    .enumerate()
                    .map(|(i, &rows)| Unit { file: 0, row_group: i, rows })
                    .collect(),
                skipped: Vec::new(),
                newest: None,
            };
            let biggest = rows.iter().copied().max().unwrap_or(0);
            let mut taken = Vec::new();
            for index in 0..peers {
                let share: Vec<usize> = plan.share(index, peers).map(|u| u.row_group).collect();
                prop_assert!(share.windows(2).all(|w| w[1] == w[0] + 1), "not a run: {:?}", share);
                let share_rows: u64 = share.iter().map(|&i| rows[i]).sum();
                let fair = plan.rows() as f64 / peers as f64;
                prop_assert!((share_rows as f64 - fair).abs() <= biggest as f64, "{} rows against {}", share_rows, fair);
                taken.extend(share);
            }
            prop_assert_eq!(taken, (0..rows.len()).collect::<Vec<_>>());
        }

        #[test]
        fn bucket_range_agrees_with_the_bucket_index(
            minutes in prop::sample::select(vec![1u32, 5, 15, 60, 90, 720, 1440]),
            lo in -10_000_000_000_000i64..4_000_000_000_000_000,
            span in 0i64..5_000_000_000_000,
            picks in prop::collection::vec(0.0f64..=1.0, 1..50),
        ) {
            let buckets = Buckets::of_minutes(minutes).unwrap();
            let hi = lo + span;
            let range = BucketRange::new(buckets, lo, hi);
            for p in picks {
                let micros = lo + (span as f64 * p) as i64;
                let micros = micros.min(hi);
                prop_assert_eq!(
                    range.first + range.offset(micros) as i64,
                    buckets.index_of_micros(micros)
                );
            }
            let starts = (range.first..range.first + range.len.min(6) as i64)
                .map(|b| buckets.start(b).timestamp_micros());
            for edge in starts.flat_map(|s| [s - 1, s]).chain([lo, hi]) {
                if (lo..=hi).contains(&edge) {
                    prop_assert_eq!(
                        range.first + range.offset(edge) as i64,
                        buckets.index_of_micros(edge)
                    );
                }
            }
        }
    }
}
