//! An arm of the bandit: one banner in one (tenant, slot, city).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::shard_hash;

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

/// An arm's four names in one shared string, `tenant 0 slot 0 city 0 banner`, and its shard's
/// [`shard_hash`]: one allocation instead of four, and the hash computed once, for the many
/// arms a backfill passes between workers. Names are `[a-z0-9_-]+`, so the 0 separators are
/// unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackedArm {
    names: Arc<str>,
    shard_hash: u64,
}

impl PackedArm {
    pub fn new(tenant: &str, slot: &str, city: &str, banner: &str) -> Self {
        Self {
            names: Arc::from([tenant, slot, city, banner].join("\0")),
            shard_hash: shard_hash(tenant, city),
        }
    }

    fn names(&self) -> [&str; 4] {
        let mut names = self.names.splitn(4, '\0');
        [(); 4].map(|()| names.next().unwrap_or_default())
    }

    /// The [`shard_hash`] of the arm's (tenant, city).
    pub fn shard_hash(&self) -> u64 {
        self.shard_hash
    }

    pub fn tenant(&self) -> &str {
        self.names()[0]
    }

    pub fn city(&self) -> &str {
        self.names()[2]
    }

    pub fn unpack(&self) -> ArmKey {
        let [tenant, slot, city, banner] = self.names();
        ArmKey::new(tenant, slot, city, banner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_arm_unpacks_to_its_names() {
        let packed = PackedArm::new("ajio", "hero", "pune-2", "b_01");
        assert_eq!(
            packed.unpack(),
            ArmKey::new("ajio", "hero", "pune-2", "b_01")
        );
        assert_eq!((packed.tenant(), packed.city()), ("ajio", "pune-2"));
        assert_eq!(packed.shard_hash(), shard_hash("ajio", "pune-2"));
    }
}
