//! The embedded store: one redb file. Each epoch is one write transaction, so a crash leaves the
//! file at the end of the last whole epoch.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{CountQuery, PosteriorStore, ShardWrite, StoreError, ALL_TIME};
use crate::bandit::{Prior, PriorSource, SlotPriors};
use crate::model::ArmKey;

/// (tenant, city, slot, banner, bucket) → (impressions, clicks)
type ArmStateKey = (&'static str, &'static str, &'static str, &'static str, i64);
const ARM_STATE: TableDefinition<ArmStateKey, (u64, u64)> = TableDefinition::new("arm_state");
/// (tenant, slot, banner) → (alpha0, beta0, source); banner "" is the slot prior.
const PRIORS: TableDefinition<(&str, &str, &str), (f64, f64, &str)> =
    TableDefinition::new("priors");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

pub struct EmbeddedStore {
    path: PathBuf,
    db: Database,
}

impl EmbeddedStore {
    pub fn open(path: &Path, writable: bool) -> Result<Self, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Embedded {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        if !writable && !path.exists() {
            return Err(err(&"does not exist (run a backfill first)"));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = Database::create(path).map_err(|e| err(&e))?;
        let store = Self {
            path: path.to_path_buf(),
            db,
        };
        store.write(|tx| {
            tx.open_table(ARM_STATE)?;
            tx.open_table(PRIORS)?;
            tx.open_table(META)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Embedded {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        f(&tx).map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        f(&tx).map_err(|e| self.fail(e))
    }
}

fn source_name(s: PriorSource) -> &'static str {
    match s {
        PriorSource::EmpiricalBayes => "empirical_bayes",
        PriorSource::SlotMean => "slot_mean",
        PriorSource::Uniform => "uniform",
    }
}

fn source_of(s: &str) -> PriorSource {
    match s {
        "empirical_bayes" => PriorSource::EmpiricalBayes,
        "slot_mean" => PriorSource::SlotMean,
        _ => PriorSource::Uniform,
    }
}

impl PosteriorStore for EmbeddedStore {
    fn apply_epoch(&self, shards: &[ShardWrite]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(ARM_STATE)?;
            for shard in shards {
                for (k, imp, clk) in &shard.rows {
                    let key = (
                        k.arm.tenant.as_str(),
                        k.arm.city.as_str(),
                        k.arm.slot.as_str(),
                        k.arm.banner.as_str(),
                        k.bucket,
                    );
                    if *imp == 0 && *clk == 0 {
                        t.remove(key)?;
                    } else {
                        t.insert(key, (*imp, *clk))?;
                    }
                }
            }
            Ok(())
        })
    }

    fn clear_counts(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.delete_table(ARM_STATE)?;
            tx.open_table(ARM_STATE)?;
            Ok(())
        })
    }

    fn counts(&self, q: &CountQuery) -> Result<Vec<(ArmKey, u64, u64)>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(ARM_STATE)?;
            let mut sums: std::collections::BTreeMap<ArmKey, (u64, u64)> = Default::default();
            let range = match &q.tenant {
                Some(tenant) => t.range((tenant.as_str(), "", "", "", i64::MIN)..)?,
                None => t.range::<(&str, &str, &str, &str, i64)>(..)?,
            };
            for entry in range {
                let (k, v) = entry?;
                let (tenant, city, slot, banner, bucket) = k.value();
                if q.tenant.as_deref().is_some_and(|x| x != tenant) {
                    break;
                }
                let wanted = match q.from_bucket {
                    None => bucket == ALL_TIME,
                    Some(from) => bucket != ALL_TIME && bucket >= from,
                };
                let arm = ArmKey::new(tenant, slot, city, banner);
                if wanted && q.matches(&arm) {
                    let (imp, clk) = v.value();
                    let s = sums.entry(arm).or_default();
                    s.0 += imp;
                    s.1 += clk;
                }
            }
            Ok(sums.into_iter().map(|(k, (i, c))| (k, i, c)).collect())
        })
    }

    fn write_priors(
        &self,
        tenant: &str,
        slot: &str,
        priors: &SlotPriors,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(PRIORS)?;
            let s = priors.slot;
            t.insert(
                (tenant, slot, ""),
                (s.alpha0, s.beta0, source_name(s.source)),
            )?;
            for (banner, p) in &priors.banners {
                t.insert(
                    (tenant, slot, banner.as_str()),
                    (p.alpha0, p.beta0, source_name(p.source)),
                )?;
            }
            Ok(())
        })
    }

    fn priors(&self, tenant: &str, slot: &str) -> Result<SlotPriors, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(PRIORS)?;
            let mut priors = SlotPriors::uniform();
            for entry in t.range((tenant, slot, "")..)? {
                let (k, v) = entry?;
                let (kt, ks, banner) = k.value();
                if kt != tenant || ks != slot {
                    break;
                }
                let (alpha0, beta0, source) = v.value();
                let prior = Prior {
                    alpha0,
                    beta0,
                    source: source_of(source),
                };
                if banner.is_empty() {
                    priors.slot = prior;
                } else {
                    priors.banners.insert(banner.to_string(), prior);
                }
            }
            Ok(priors)
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(META)?.insert(key, value)?;
            Ok(())
        })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(META)?;
            Ok(t.get(key)?.map(|v| v.value().to_string()))
        })
    }

    fn shared_across_processes(&self) -> bool {
        false
    }
}
