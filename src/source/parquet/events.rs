//! Events as columns, for the jobs that read history without making an `Event` of each row
//! (the report): a unit's row group decoded in batches with the backfill's reader, the name
//! columns on dictionary keys, and every row checked against the whole event contract, so that
//! exactly the rows `EventFileReader` refuses are refused. Each rule is applied once per
//! distinct dictionary value where the column is a dictionary, with one pass over a batch's
//! bytes for the free-text identifiers, and per row only where something is off.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, PrimitiveArray, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use chrono::DateTime;

use super::dict::DictColumn;
use super::read::{corrupt_unit, load_columns, row_group_reader};
use super::tally::kind_column;
use super::{PlannedFile, Unit};
use crate::model::parquet::{column_type, event_columns, ParquetEventError};
use crate::model::{
    normalize_city, validate_name, validate_token, DecisionLogFields, EventKind, CUSTOMER_ID_MAX,
    EVENT_ID_MAX, REFERRER_MAX, REQUEST_ID_MAX,
};

/// One decoded batch of a row group: which rows follow the event contract, and, for those, the
/// columns the report reads. Tenant, slot and banner are dictionary keys (a key's name by
/// [`EventBatch::tenant`] and the like); the dictionaries are the batch's own.
pub struct EventBatch {
    valid: Vec<bool>,
    invalid: u64,
    kind: DictColumn<EventKind>,
    tenant: DictColumn<()>,
    slot: DictColumn<()>,
    banner: DictColumn<()>,
    ts: TimestampMicrosecondArray,
    request_id: Option<StringArray>,
    holdout: Option<BooleanArray>,
}

impl EventBatch {
    pub fn rows(&self) -> usize {
        self.valid.len()
    }

    /// The rows that break the event contract.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }

    /// Whether row `i` follows the event contract; the accessors below are for such rows only.
    #[inline]
    pub fn is_valid(&self, i: usize) -> bool {
        self.valid[i]
    }

    #[inline]
    pub fn kind(&self, i: usize) -> EventKind {
        *self.kind.verdict(i).expect("a valid row has a kind")
    }

    #[inline]
    pub fn ts_micros(&self, i: usize) -> i64 {
        self.ts.value(i)
    }

    #[inline]
    pub fn holdout(&self, i: usize) -> Option<bool> {
        let h = self.holdout.as_ref()?;
        h.is_valid(i).then(|| h.value(i))
    }

    /// The request id, `None` when null or empty (as in an `Event`).
    #[inline]
    pub fn request_id(&self, i: usize) -> Option<&str> {
        let r = self.request_id.as_ref()?;
        Some(r.value(i)).filter(|v| r.is_valid(i) && !v.is_empty())
    }

    #[inline]
    pub fn tenant_key(&self, i: usize) -> u32 {
        self.tenant.keys.value(i) as u32
    }

    #[inline]
    pub fn slot_key(&self, i: usize) -> u32 {
        self.slot.keys.value(i) as u32
    }

    #[inline]
    pub fn banner_key(&self, i: usize) -> u32 {
        self.banner.keys.value(i) as u32
    }

    pub fn tenant(&self, key: u32) -> &str {
        self.tenant.values.value(key as usize)
    }

    pub fn slot(&self, key: u32) -> &str {
        self.slot.values.value(key as usize)
    }

    pub fn banner(&self, key: u32) -> &str {
        self.banner.values.value(key as usize)
    }

    /// Decodes `batch` (the event columns of one file) and checks every row.
    fn check(batch: &RecordBatch) -> Result<Self, arrow::error::ArrowError> {
        let n = batch.num_rows();
        let mut valid = vec![true; n];
        let name = |column: &'static str| {
            DictColumn::new(batch, column, |v| {
                v.filter(|v| validate_name(column, v).is_ok()).map(|_| ())
            })
        };
        let kind = kind_column(batch)?;
        let (tenant, slot, banner) = (name("tenant")?, name("slot")?, name("banner")?);
        let city = DictColumn::new(batch, "city", |v| {
            v.filter(|v| normalize_city("city", v).is_ok()).map(|_| ())
        })?;
        required(&kind, &mut valid);
        for column in [&tenant, &slot, &city, &banner] {
            required(column, &mut valid);
        }

        let ts = cast(
            batch.column_by_name("ts").expect("required"),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )?
        .as_primitive::<TimestampMicrosecondType>()
        .clone();
        for (i, ok) in valid.iter_mut().enumerate() {
            *ok &= ts.is_valid(i) && DateTime::from_timestamp_micros(ts.value(i)).is_some();
        }

        let strings = |column: &str| -> Result<Option<StringArray>, arrow::error::ArrowError> {
            batch
                .column_by_name(column)
                .map(|c| Ok(cast(c, &DataType::Utf8)?.as_string::<i32>().clone()))
                .transpose()
        };
        let event_id = strings("event_id")?.expect("required");
        tokens(&event_id, "event_id", EVENT_ID_MAX, true, &mut valid);
        if let Some(customer_id) = strings("customer_id")? {
            tokens(
                &customer_id,
                "customer_id",
                CUSTOMER_ID_MAX,
                false,
                &mut valid,
            );
        }
        let request_id = strings("request_id")?;
        if let Some(request_id) = &request_id {
            tokens(request_id, "request_id", REQUEST_ID_MAX, false, &mut valid);
        }
        if batch.column_by_name("referrer").is_some() {
            let referrer = DictColumn::new(batch, "referrer", |v| match v {
                None | Some("") => Some(()),
                Some(v) => validate_token("referrer", v, REFERRER_MAX).ok(),
            })?;
            optional(&referrer, &mut valid);
        }

        // The decision log: the contract's own rule (`DecisionLogFields::check`), on the rows
        // that log anything of a decision.
        let typed = |column: &str| {
            batch
                .column_by_name(column)
                .map(|c| cast(c, &column_type(column)))
                .transpose()
        };
        // Mostly null (a decision log written before the policy was), so read as strings: a
        // dictionary of one plain page of nulls would be built row by row by the reader.
        let policy = strings("policy")?;
        let version = typed("policy_version")?;
        let rank = typed("rank")?;
        let propensity = typed("propensity")?;
        let error = typed("propensity_error")?;
        let holdout = typed("holdout")?.map(|h| h.as_boolean().clone());
        let int = |c: &Option<ArrayRef>| c.as_ref().map(|c| c.as_primitive::<Int64Type>().clone());
        let float =
            |c: &Option<ArrayRef>| c.as_ref().map(|c| c.as_primitive::<Float64Type>().clone());
        let (version, rank) = (int(&version), int(&rank));
        let (propensity, error) = (float(&propensity), float(&error));
        let logged = [
            policy.as_ref().map(|c| c as &dyn Array),
            version.as_ref().map(|c| c as &dyn Array),
            rank.as_ref().map(|c| c as &dyn Array),
            propensity.as_ref().map(|c| c as &dyn Array),
            error.as_ref().map(|c| c as &dyn Array),
            holdout.as_ref().map(|c| c as &dyn Array),
        ];
        let logged: Vec<&dyn Array> = logged
            .into_iter()
            .flatten()
            .filter(|c| c.null_count() < c.len())
            .collect();
        if !logged.is_empty() {
            for (i, ok) in valid.iter_mut().enumerate() {
                if !*ok || logged.iter().all(|c| c.is_null(i)) {
                    continue;
                }
                let fields = DecisionLogFields {
                    policy: policy
                        .as_ref()
                        .and_then(|p| p.is_valid(i).then(|| p.value(i))),
                    policy_version: value_at(&version, i),
                    holdout: holdout
                        .as_ref()
                        .and_then(|h| h.is_valid(i).then(|| h.value(i))),
                    propensity: value_at(&propensity, i),
                    propensity_error: value_at(&error, i),
                    rank: value_at(&rank, i),
                };
                *ok = fields.check().is_ok();
            }
        }

        let invalid = valid.iter().filter(|ok| !**ok).count() as u64;
        Ok(Self {
            valid,
            invalid,
            kind,
            tenant,
            slot,
            banner,
            ts,
            request_id,
            holdout,
        })
    }
}

/// Rows of a required column must have a key to a value its rule accepts.
fn required<T>(column: &DictColumn<T>, valid: &mut [bool]) {
    if !column.all_valid() {
        for (i, ok) in valid.iter_mut().enumerate() {
            *ok &= column.key(i).is_some();
        }
    }
}

/// Rows of an optional column are null, or have a key to a value its rule accepts.
fn optional<T>(column: &DictColumn<T>, valid: &mut [bool]) {
    if column.keys.null_count() == column.keys.len() || column.all_valid() {
        return;
    }
    for (i, ok) in valid.iter_mut().enumerate() {
        *ok &= column.is_null(i) || column.key(i).is_some();
    }
}

/// Row `i`'s value of an optional column, `None` when the column is absent or the row null.
fn value_at<T: ArrowPrimitiveType>(
    column: &Option<PrimitiveArray<T>>,
    i: usize,
) -> Option<T::Native> {
    column
        .as_ref()
        .and_then(|c| c.is_valid(i).then(|| c.value(i)))
}

/// Free-text identifiers: present and non-empty where `required`, else null or empty for none;
/// otherwise [`validate_token`]. When no byte of the batch's values is white space, a control
/// character or non-ASCII (the usual case), only the lengths are left to check.
fn tokens(column: &StringArray, field: &str, max: usize, required: bool, valid: &mut [bool]) {
    let offsets = column.value_offsets();
    let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
        return;
    };
    let bytes = &column.value_data()[first as usize..last as usize];
    let plain = bytes.iter().all(|&b| b > b' ' && b < 0x7f);
    if plain && column.null_count() == 0 {
        // The usual case: only the lengths to check, in a loop without branches.
        for (ok, w) in valid.iter_mut().zip(offsets.windows(2)) {
            let len = (w[1] - w[0]) as usize;
            *ok &= (len > 0 || !required) && len <= max;
        }
        return;
    }
    for (i, ok) in valid.iter_mut().enumerate() {
        if column.is_null(i) {
            *ok &= !required;
            continue;
        }
        let len = (offsets[i + 1] - offsets[i]) as usize;
        *ok &= if len == 0 {
            !required
        } else if plain {
            len <= max
        } else {
            validate_token(field, column.value(i), max).is_ok()
        };
    }
}

/// Reads one unit's row group, every event column the file has, and hands each batch, checked,
/// to `each` until it says to stop. A row group that cannot be decoded is an error naming the
/// file; a row that breaks the contract is only marked.
pub fn read_event_batches(
    file: &PlannedFile,
    unit: &Unit,
    mut each: impl FnMut(&EventBatch) -> bool,
) -> Result<(), ParquetEventError> {
    let columns = event_columns(&file.path, file.metadata.schema())?;
    let bytes = load_columns(file, unit, &columns)?;
    let corrupt = |e: &dyn std::fmt::Display| corrupt_unit(file, unit, e);
    let reader = row_group_reader(file, unit, &bytes, &columns, None).map_err(|e| corrupt(&e))?;
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(&e))?;
        let batch = EventBatch::check(&batch).map_err(|e| corrupt(&e))?;
        if !each(&batch) {
            break;
        }
    }
    Ok(())
}
