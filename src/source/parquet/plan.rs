//! The plan: every file's footer and page index read up front, checked against the event
//! contract, and its row groups listed as units of work shared among the workers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::statistics::Statistics;
use rayon::prelude::*;

use super::{DICTIONARIES, NEEDED};
use crate::model::parquet::{check_type, list_parquet_files, ParquetEventError, REQUIRED};

#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub rows: u64,
    pub(super) metadata: ArrowReaderMetadata,
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
            // An empty row group after the last row would land one past the last peer.
            (middle * peers / total).min(peers - 1) == index as u128
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
                if DICTIONARIES.contains(&f.name().as_str()) =>
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
    }
}
