//! Dictionary columns: a string column read as Int32 keys into its distinct values, with what a
//! rule makes of each distinct value worked out once, so that rows are checked by their key.
//! The backfill's tally and the event-column reader both work on these.

use arrow::array::StringArray;
use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, PrimitiveArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type};

/// Column `name` of a batch as an Int32-keyed dictionary of strings: the type the plan asks the
/// reader for, cast where the reader could not give it.
pub(super) fn string_dictionary(
    batch: &RecordBatch,
    name: &str,
) -> Result<ArrayRef, arrow::error::ArrowError> {
    let column = batch.column_by_name(name).expect("projected");
    let dict_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    if column.data_type() == &dict_type {
        Ok(column.clone())
    } else {
        cast(column, &dict_type)
    }
}

/// A dictionary column with each distinct value checked once: `verdicts[k]` is what the rule
/// makes of value `k` (`None` where it breaks the rule; a null value is handed to the rule as
/// `None`).
pub(super) struct DictColumn<T> {
    pub(super) name: &'static str,
    pub(super) keys: PrimitiveArray<Int32Type>,
    pub(super) values: StringArray,
    pub(super) verdicts: Vec<Option<T>>,
}

impl<T> DictColumn<T> {
    pub(super) fn new(
        batch: &RecordBatch,
        name: &'static str,
        mut rule: impl FnMut(Option<&str>) -> Option<T>,
    ) -> Result<Self, arrow::error::ArrowError> {
        let column = string_dictionary(batch, name)?;
        let dict: &DictionaryArray<Int32Type> = column.as_dictionary();
        let values = dict.values().as_string::<i32>().clone();
        let verdicts = (0..values.len())
            .map(|i| rule(values.is_valid(i).then(|| values.value(i))))
            .collect();
        Ok(Self {
            name,
            keys: dict.keys().clone(),
            values,
            verdicts,
        })
    }

    /// Whether every row has a key to a value the rule accepts, so that rows need no checks.
    pub(super) fn all_valid(&self) -> bool {
        self.keys.null_count() == 0
            && self.verdicts.iter().all(Option::is_some)
            && keys_below(&self.keys, self.verdicts.len())
    }

    /// Whether row `i` has no key (a null).
    #[inline]
    pub(super) fn is_null(&self, i: usize) -> bool {
        self.keys.is_null(i)
    }

    /// The dictionary index of row `i` when its value is one the rule accepts.
    #[inline]
    pub(super) fn key(&self, i: usize) -> Option<u32> {
        if self.keys.is_null(i) {
            return None;
        }
        let k = self.keys.value(i);
        self.verdicts
            .get(usize::try_from(k).ok()?)?
            .as_ref()
            .map(|_| k as u32)
    }

    /// What the rule made of row `i`'s value, when it accepts it.
    #[inline]
    pub(super) fn verdict(&self, i: usize) -> Option<&T> {
        if self.keys.is_null(i) {
            return None;
        }
        let k = usize::try_from(self.keys.value(i)).ok()?;
        self.verdicts.get(k)?.as_ref()
    }

    /// Row `i`'s value (its key is in the dictionary and not null).
    pub(super) fn value(&self, i: usize) -> Option<&str> {
        let k = usize::try_from(self.keys.value(i)).ok()?;
        (!self.keys.is_null(i) && k < self.values.len() && self.values.is_valid(k))
            .then(|| self.values.value(k))
    }
}

/// Whether every key slot indexes a dictionary of `len` values: one pass, where a negative key
/// wraps to a huge unsigned one.
pub(super) fn keys_below(keys: &PrimitiveArray<Int32Type>, len: usize) -> bool {
    let max = keys.values().iter().fold(0u32, |m, &k| m.max(k as u32));
    keys.is_empty() || (max as usize) < len
}
