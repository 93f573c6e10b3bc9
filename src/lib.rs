//! slotbandit: Thompson-sampling banner selection per (tenant, slot, city), learned from a
//! clickstream. The library holds the domain model, the bandit math, IST time handling and the
//! synthetic clickstream generator; the binary (`src/main.rs`) is a thin CLI over it.

pub mod bandit;
pub mod dataflow;
pub mod eval;
pub mod model;
pub mod retry;
pub mod serve;
pub mod sim;
pub mod source;
pub mod store;
pub mod synth;
pub mod time;
