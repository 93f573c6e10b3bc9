//! What the bandit earned: uplift over the holdout.

pub mod uplift;

pub use uplift::{uplift, Interval, Uplift, UpliftError};
