//! The domain model: events, arms, slot configurations, and their codecs.

mod arm;
mod event;
pub mod parquet;
mod slot;
mod validate;

pub use arm::{ArmCounts, ArmKey};
pub use event::{
    Event, EventError, EventFields, EventKind, EventRef, CUSTOMER_ID_MAX, FIELDS as EVENT_FIELDS,
    REFERRER_MAX, REQUEST_ID_MAX,
};
pub use slot::{Banner, SlotConfig, SlotConfigError, SLOT_CSV_HEADER};
pub use validate::{validate_name, validate_token, FieldError};
