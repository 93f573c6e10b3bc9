//! An arm of the bandit: one banner in one (tenant, slot, city).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Event, EventKind};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArmKey {
    pub tenant: String,
    pub slot: String,
    pub city: String,
    pub banner: String,
}

impl ArmKey {
    pub fn new(tenant: &str, slot: &str, city: &str, banner: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            slot: slot.to_string(),
            city: city.to_string(),
            banner: banner.to_string(),
        }
    }
}

impl fmt::Display for ArmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.tenant, self.slot, self.city, self.banner
        )
    }
}

/// Impression and click totals per arm, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArmCounts(pub BTreeMap<ArmKey, (u64, u64)>);

impl ArmCounts {
    pub fn add(&mut self, event: &Event) {
        let entry = self.0.entry(event.arm()).or_default();
        match event.kind {
            EventKind::Impression => entry.0 += 1,
            EventKind::Click => entry.1 += 1,
        }
    }
}
