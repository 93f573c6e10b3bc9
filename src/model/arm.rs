//! An arm of the bandit: one banner in one (tenant, slot, city).

use std::fmt;

use serde::{Deserialize, Serialize};

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
