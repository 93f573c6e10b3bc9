//! The bandit lab: Bernoulli environments, the policies under test (Thompson sampling exactly as
//! the service runs it, UCB1, ε-greedy, uniform A/B), regret curves against the Lai–Robbins
//! bound, off-policy replay on logged data (the Open Bandit Dataset), and the demo's simulated
//! audience (visitors who ask a running service for banners over HTTP and click with true CTRs).

pub mod audience;
pub mod env;
pub mod plot;
pub mod policy;
pub mod replay;
pub mod run;

pub use env::{ChangeSpec, EnvSpec, Environment};
pub use policy::{Policy, PolicySpec, PriorMode, Service, Thompson};
pub use run::{log_spaced_checkpoints, simulate, simulate_run, Experiment, RegretCurve};
