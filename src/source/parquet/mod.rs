//! Parquet history for backfill and the jobs over history. The plan reads every footer up front (schema, row groups, the
//! newest timestamp) so that every worker and process agrees on the work; each worker then reads
//! its share of row groups, only the six columns it needs, and pre-aggregates on dictionary
//! indices: strings are looked at (and validated) once per distinct dictionary value. Where the
//! page index shows that every row of a `ts` page falls in one bucket, that page is not read at
//! all (the files of a clickstream are written in time order, so most pages are such).
//!
//! A file per role: `plan` (files, footers, page indexes, the units of work), `read` (reading a
//! unit's row group and the `ts` pages it can skip), `dict` (dictionary columns, each distinct
//! value checked once), `tally` (interned names and the per-(arm, bucket) aggregation) and
//! `events` (a unit's rows as checked event columns, for the report: the same loading and
//! dictionaries, every column the file has, every rule of the contract).

mod dict;
mod events;
mod plan;
mod read;
mod tally;

pub use events::{read_event_batches, EventBatch};
pub use plan::{ParquetPlan, PlannedFile, Unit};
pub use read::read_unit;
pub use tally::{ArmIds, Names, UnitReport};

/// The columns counted, `ts` last.
const NEEDED: [&str; 6] = ["tenant", "slot", "city", "banner", "kind", "ts"];

/// The string columns read as dictionaries (few distinct values): the names and kind, and the
/// optional referrer that the event reader checks. Not the policy: where the decision log has
/// none, its plain pages of nulls would be made a dictionary row by row.
const DICTIONARIES: [&str; 6] = ["tenant", "slot", "city", "banner", "kind", "referrer"];
