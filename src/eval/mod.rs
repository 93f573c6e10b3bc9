//! What the bandit earned: uplift over the holdout, the report that tallies it from events, and
//! off-policy estimates of other configurations from the decision log.

pub mod evaluate;
pub mod ope;
pub mod report;
pub mod uplift;

pub use evaluate::{
    DecisionRecord, EvaluateError, Evaluation, EvaluationRow, EvaluationTally, PolicyEvaluation,
    Skipped, Target, TargetPolicy, ThompsonTarget,
};
pub use ope::{OffPolicyEstimate, OffPolicyTally, Term};
pub use report::{Report, ReportError, ReportRange, ReportRow, ReportTally};
pub use uplift::{uplift, Interval, Uplift, UpliftError};
