//! What the bandit earned: uplift over the holdout, the report of it per (tenant, slot) (counted
//! by the dataflow job), and off-policy estimates of other configurations from the decision log.

pub mod evaluate;
pub mod ope;
pub mod report;
pub mod uplift;

pub use evaluate::{
    DecisionRecord, EvaluateError, Evaluation, EvaluationEvent, EvaluationParts, EvaluationRow,
    EvaluationTally, PolicyEvaluation, Skipped, Target, TargetPolicy, ThompsonTarget,
};
pub use ope::{OffPolicyEstimate, OffPolicyTally, Term};
pub use report::{report_rows, Groups, Report, ReportError, ReportRange, ReportRow};
pub use uplift::{uplift, Interval, Uplift, UpliftError};
