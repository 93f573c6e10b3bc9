//! Aggregation: names interned once per distinct dictionary value, rows checked against the
//! event contract, and counts per (arm, bucket) in a dense grid or a hash map.

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray};
use rustc_hash::FxHashMap;

use std::borrow::Cow;

use std::sync::Arc;

use super::dict::DictColumn;
use crate::model::{
    normalize_city, validate_name, EventKind, FieldError, PackedArm, TenantAliases,
};
use crate::time::Buckets;

/// Names interned by the worker that reads them, so that a tally is keyed by four integers and
/// the strings of an arm are built once per distinct key of an epoch, not once per batch. Cities
/// are interned normalized; an arm's city is resolved through its tenant's aliases when the arm
/// is built.
#[derive(Debug, Default)]
pub struct Names {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
    aliases: Arc<TenantAliases>,
}

/// An arm as interned (tenant, slot, city, banner).
pub type ArmIds = [u32; 4];

impl Names {
    pub fn new(aliases: Arc<TenantAliases>) -> Self {
        Self {
            aliases,
            ..Self::default()
        }
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The arm of `ids`, built anew for each call: at a million arms, a cache of built arms cost
    /// more in lookups that miss the CPU cache than building them does (bench/backfill/README.md,
    /// session 8).
    pub fn arm(&self, ids: ArmIds) -> PackedArm {
        let [tenant, slot, city, banner] = ids.map(|id| self.names[id as usize].as_str());
        PackedArm::new(tenant, slot, self.aliases.resolve(tenant, city), banner)
    }
}

/// The rows of one row group, and what was refused.
#[derive(Debug, Default)]
pub struct UnitReport {
    pub rows: u64,
    pub rejected: u64,
    pub first_rejection: Option<String>,
}

/// A row group's counts per (arm, bucket), summed over the batches tallied in a dense grid: few
/// cells that stay in cache, so the caller's map, which holds many row groups' cells, is touched
/// once per cell rather than once per batch. And the tally's per-row scratch, kept across batches.
#[derive(Default)]
pub(super) struct UnitCells {
    pub(super) cells: FxHashMap<(ArmIds, i64), (i64, i64)>,
    row_cells: Vec<u32>,
    /// The unit's rows, and what was refused.
    pub(super) report: UnitReport,
}

impl UnitCells {
    fn add(&mut self, arm: ArmIds, bucket: i64, (imp, clk): (i64, i64)) {
        let cell = self.cells.entry((arm, bucket)).or_default();
        cell.0 += imp;
        cell.1 += clk;
    }
}

/// A name column: each distinct value validated and interned once (its verdict the interned
/// id).
type NameColumn = DictColumn<u32>;

fn name_column(
    batch: &RecordBatch,
    name: &'static str,
    names: &mut Names,
) -> Result<NameColumn, arrow::error::ArrowError> {
    DictColumn::new(batch, name, |value| {
        value
            .and_then(|v| column_name(name, v).ok())
            .map(|n| names.intern(&n))
    })
}

/// Why row `i` of a required name column has no valid key (the slow path, for rejected rows
/// only).
pub(super) fn name_error<T>(column: &DictColumn<T>, i: usize) -> FieldError {
    match column.value(i) {
        None => FieldError::new(column.name, "is required"),
        Some(value) => column_name(column.name, value)
            .err()
            .unwrap_or_else(|| FieldError::new(column.name, "is invalid")),
    }
}

/// A column's value as a name: a city by the city rule, any other name as it is.
fn column_name<'v>(column: &str, value: &'v str) -> Result<Cow<'v, str>, FieldError> {
    if column == "city" {
        normalize_city(column, value)
    } else {
        validate_name(column, value).map(|()| Cow::Borrowed(value))
    }
}

/// The `kind` column, each distinct value parsed once.
pub(super) fn kind_column(
    batch: &RecordBatch,
) -> Result<DictColumn<EventKind>, arrow::error::ArrowError> {
    DictColumn::new(batch, "kind", |value| {
        EventKind::parse("kind", value.unwrap_or_default()).ok()
    })
}

/// Why row `i` has no valid kind (the slow path, for rejected rows only).
pub(super) fn kind_error(kind: &DictColumn<EventKind>, i: usize) -> FieldError {
    FieldError::new(
        "kind",
        match kind.value(i) {
            None => "is required".to_string(),
            Some(v) => format!("must be \"impression\" or \"click\" (got {v:?})"),
        },
    )
}

/// Counts a batch's rows: a batch whose keys and buckets fit a dense grid into `unit`, any other
/// (many distinct arms, whose cells rarely meet within a row group) straight into `emit`, with
/// no map of its own in between.
pub(super) fn aggregate_batch(
    batch: &RecordBatch,
    ts: &TimestampMicrosecondArray,
    buckets: Buckets,
    until: i64,
    interned: &mut Names,
    unit: &mut UnitCells,
    emit: &mut impl FnMut(ArmIds, i64, (i64, i64)),
) -> Result<(), arrow::error::ArrowError> {
    let names = [
        name_column(batch, "tenant", interned)?,
        name_column(batch, "slot", interned)?,
        name_column(batch, "city", interned)?,
        name_column(batch, "banner", interned)?,
    ];
    let kind = kind_column(batch)?;

    let dims = names.each_ref().map(|c| c.values.len());
    let arm_ids = |keys: [u32; 4]| -> ArmIds {
        let mut arm = [0u32; 4];
        for ((id, key), col) in arm.iter_mut().zip(keys).zip(&names) {
            *id = col.verdicts[key as usize].expect("only valid keys are tallied");
        }
        arm
    };
    let mut direct = |keys: [u32; 4], micros: i64, increment: u64| {
        emit(
            arm_ids(keys),
            buckets.index_of_micros(micros),
            counts_of(increment),
        );
    };
    let mut tally = Tally::new(dims, ts, buckets, until);
    unit.report.rows += batch.num_rows() as u64;
    let clean = names.iter().all(NameColumn::all_valid) && kind.all_valid() && ts.null_count() == 0;
    if clean {
        // Every row follows the contract: read the keys straight from the buffers.
        let increments: Vec<u64> = kind
            .verdicts
            .iter()
            .map(|k| increment(*k == Some(EventKind::Click)))
            .collect();
        let n = batch.num_rows();
        let keys = names.each_ref().map(|c| &c.keys.values()[..n]);
        let (kind_keys, ts) = (&kind.keys.values()[..n], &ts.values()[..n]);
        match &mut tally {
            Tally::Dense(dense) => {
                dense.add_clean(keys, ts, kind_keys, &increments, until, &mut unit.row_cells)
            }
            Tally::Sparse => {
                for (i, &micros) in ts.iter().enumerate().filter(|(_, &m)| m < until) {
                    let key = keys.map(|k| k[i] as u32);
                    direct(key, micros, increments[kind_keys[i] as usize]);
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
                        reject(&mut unit.report, name_error(col, i));
                        continue 'rows;
                    }
                }
            }
            let Some(&event_kind) = kind.verdict(i) else {
                reject(&mut unit.report, kind_error(&kind, i));
                continue;
            };
            if ts.is_null(i) {
                reject(&mut unit.report, FieldError::new("ts", "is required"));
                continue;
            }
            let micros = ts.value(i);
            if micros >= until {
                continue;
            }
            let increment = increment(event_kind == EventKind::Click);
            match &mut tally {
                Tally::Dense(dense) => dense.add(key, micros, increment),
                Tally::Sparse => direct(key, micros, increment),
            }
        }
    }
    if let Tally::Dense(dense) = tally {
        dense.drain(|keys, bucket, counts| unit.add(arm_ids(keys), bucket, counts));
    }
    Ok(())
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

/// How a batch is counted: per (dictionary keys, bucket) in a dense grid over the batch's
/// dictionaries and bucket range when it is small (an index computation per row instead of a
/// hash lookup), else row by row into the caller's map. A cell holds impressions in its low 32
/// bits and clicks in its high 32 bits, so that a row adds its [`increment`] without a branch (a
/// batch has far fewer than 2^32 rows).
enum Tally {
    Dense(DenseTally),
    Sparse,
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
            _ => Tally::Sparse,
        }
    }
}

impl DenseTally {
    fn drain(self, mut emit: impl FnMut([u32; 4], i64, (i64, i64))) {
        let DenseTally {
            dims,
            range,
            cells,
            touched,
        } = self;
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
