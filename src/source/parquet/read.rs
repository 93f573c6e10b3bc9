//! Reading one unit: its row group's needed column chunks loaded with one read each, decoded
//! in batches, with the `ts` pages that the page index settles left undecoded.

use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, NullBufferBuilder, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::reader::{ChunkReader, Length};

use super::tally::{aggregate_batch, ArmIds, Names, UnitCells, UnitReport};
use super::{PlannedFile, Unit, NEEDED};
use crate::model::parquet::ParquetEventError;
use crate::time::Buckets;

/// Rows per decoded batch. arrow-rs grows a dictionary column's key buffer page by page with
/// exact reservations, so a batch costs copies quadratic in its length; 64k rows (a few pages)
/// keeps that small and the buffers in reused memory.
const BATCH_ROWS: usize = 64 * 1024;

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
    let corrupt = |e: &dyn std::fmt::Display| corrupt_unit(file, unit, e);
    let until = until.map(|t| t.timestamp_micros()).unwrap_or(i64::MAX);
    let ts_pages = TsPages::of(file, unit.row_group, buckets, until);
    let name_columns: &[&str] = if ts_pages.is_some() {
        &NEEDED[..NEEDED.len() - 1]
    } else {
        &NEEDED
    };
    let bytes = load_columns(file, unit, name_columns)?;
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
            &mut unit_cells,
            &mut emit,
        )
        .map_err(|e| corrupt(&e))?;
    }
    for ((arm, bucket), counts) in unit_cells.cells {
        emit(arm, bucket, counts);
    }
    Ok(unit_cells.report)
}

/// The error for a unit whose row group cannot be decoded, naming the file and the row group.
pub(super) fn corrupt_unit(
    file: &PlannedFile,
    unit: &Unit,
    e: &dyn std::fmt::Display,
) -> ParquetEventError {
    ParquetEventError::Corrupt {
        path: file.path.clone(),
        detail: format!("row group {}: {e}", unit.row_group),
    }
}

/// The chunks of `columns` of a unit's row group, each loaded with one read.
pub(super) fn load_columns(
    file: &PlannedFile,
    unit: &Unit,
    columns: &[&str],
) -> Result<RowGroupBytes, ParquetEventError> {
    let io = |source| ParquetEventError::Io {
        path: file.path.clone(),
        source,
    };
    let handle = File::open(&file.path).map_err(io)?;
    RowGroupBytes::read(handle, &file.metadata, unit.row_group, columns).map_err(io)
}

/// A reader of `columns` of one row group, every row or the `selection`, in batches of
/// [`BATCH_ROWS`].
pub(super) fn row_group_reader(
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
pub(super) struct RowGroupBytes {
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

pub(super) enum ChunkRead {
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
pub(super) struct FileAt {
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
