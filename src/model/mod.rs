//! The domain model, the bottom of the stack above `time`: events, arms, the keys and counts the
//! job, stores and service share, slot configurations, the address parser, and their codecs.

pub mod address;
mod alias;
mod arm;
mod counts;
mod event;
mod keys;
pub mod parquet;
mod slot;
mod validate;

pub use alias::{CityAliases, TenantAliases};
pub use arm::{ArmKey, PackedArm};
pub use counts::{pool_cities, Counts};
pub use event::{
    DecisionLog, DecisionLogFields, Event, EventError, EventFields, EventKind, EventRef, Policy,
    CUSTOMER_ID_MAX, EVENT_ID_MAX, FIELDS as EVENT_FIELDS, RANK_MAX, REFERRER_MAX, REQUEST_ID_MAX,
};
pub use keys::{
    owner_of, shard_hash, CountKey, Offset, PairDigest, Partition, ShardKey, ALL_CITIES, ALL_TIME,
};
pub use slot::{
    Banner, Recency, SlotConfig, SlotConfigError, SlotRules, HOLDOUT_MAX_BP, RECENCY_MINUTES,
    SLOT_CSV_HEADER, SLOT_CSV_RULE_COLUMNS,
};
pub use validate::{normalize_city, normalize_name, validate_name, validate_token, FieldError};
