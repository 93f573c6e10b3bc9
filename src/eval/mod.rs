//! What the bandit earned: uplift over the holdout, and the report that tallies it from events.

pub mod report;
pub mod uplift;

pub use report::{Report, ReportError, ReportRange, ReportRow, ReportTally};
pub use uplift::{uplift, Interval, Uplift, UpliftError};
