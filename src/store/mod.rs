//! Where posteriors live: one trait, one folder per backend. A store keeps per-arm counts per IST
//! bucket and all-time (bucket −1), the priors per (tenant, slot, banner), and the instant the data
//! is "as of". Posteriors are prior + counts, combined when read.
//!
//! - `embedded`: a redb file, written by one process;
//! - `cassandra`: a Cassandra keyspace, which every process of a job may write;
//! - `url`: the store URL that names one of them;
//! - `prior_rows`, `customer_rows`: the row codecs both backends share.

mod cassandra;
mod customer_rows;
mod embedded;
mod prior_rows;
mod url;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::bandit::{BetaPosterior, PosteriorSummary, SlotPriors};
use crate::model::{
    pool_cities, ArmKey, CityAliases, CountKey, Counts, Event, Offset, Partition, ShardKey,
    SlotConfig, TenantAliases,
};
use crate::time::{Buckets, Retention};

pub use cassandra::{apply_schema, render_schema, CassandraStore, Replication, SCHEMA_VERSION};
pub use embedded::EmbeddedStore;
pub use url::{CassandraUrl, StoreUrl};

/// Failed attempts at a store operation in this process (every Cassandra attempt that failed,
/// whether retried or not), registered in the job's and the service's metrics.
pub fn failed_attempts() -> &'static prometheus::IntCounter {
    static FAILED: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
        prometheus::IntCounter::new(
            "store_errors_total",
            "Failed attempts at a store operation (retried or not)",
        )
        .expect("a valid metric")
    });
    &FAILED
}

pub const META_AS_OF: &str = "as_of";
pub const META_BUCKET_MINUTES: &str = "bucket_minutes";
pub const META_RETENTION_HOURS: &str = "retention_hours";
/// The lifetime of the lookup service's decision tokens, in seconds (the longest any replica
/// signs): how long the stream job must remember a click.
pub const META_TOKEN_TTL_SECS: &str = "token_ttl_secs";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {url:?}: {rule}")]
    Url { url: String, rule: String },
    #[error("store metadata `{key}`: {detail}")]
    Meta { key: &'static str, detail: String },
    #[error("embedded store {path}: {detail}")]
    Embedded { path: PathBuf, detail: String },
    #[error("cassandra store {store}: {detail}")]
    Cassandra { store: String, detail: String },
}

/// One slot's priors to write: (tenant, slot, priors).
pub type SlotPriorsWrite = (String, String, SlotPriors);

/// Every shard's applied offset per partition.
pub type AppliedOffsets = BTreeMap<ShardKey, BTreeMap<Partition, Offset>>;

/// The changed rows of one (tenant, city) shard in one epoch, as absolute values, and the offset
/// per log partition up to which the shard has applied events (empty in a backfill). A row whose
/// counts are both zero is deleted. With `keep_from`, the shard's bucket rows before that bucket
/// are deleted too (retention: the all-time rows already hold them). A store applies a shard's
/// rows, deletions, offsets and new version atomically; the version moves unless the write
/// only expires buckets ([`ShardWrite::moves_version`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardWrite {
    pub shard: ShardKey,
    pub rows: Vec<(CountKey, Counts)>,
    pub applied: BTreeMap<Partition, Offset>,
    pub keep_from: Option<i64>,
}

/// One shard as stored: every row (all buckets) and its applied offsets. The streaming job
/// loads the shards it owns from these on restart.
pub type ShardState = ShardWrite;

impl ShardWrite {
    /// Whether this write gives the shard a new version: when it writes rows or offsets (the
    /// version is also the shard's entry in the store's index of shards, and a shard may have
    /// offsets before it has rows). An expiry alone does not: the buckets `keep_from` deletes
    /// lie before every kept window (a window longer than the retention is refused), so the
    /// lookup service has nothing to read again.
    pub fn moves_version(&self) -> bool {
        !self.rows.is_empty() || !self.applied.is_empty()
    }

    pub fn new(shard: ShardKey) -> Self {
        Self {
            shard,
            rows: Vec::new(),
            applied: BTreeMap::new(),
            keep_from: None,
        }
    }

    /// The write of `shard` in `shards`, added empty when absent.
    pub fn entry<'a>(
        shards: &'a mut BTreeMap<ShardKey, ShardWrite>,
        shard: &ShardKey,
    ) -> &'a mut ShardWrite {
        if !shards.contains_key(shard) {
            shards.insert(shard.clone(), ShardWrite::new(shard.clone()));
        }
        shards.get_mut(shard).expect("inserted")
    }
}

/// A part of a tenant's data that carries a version: a shard's counts (named by city), a slot's
/// configuration or a slot's priors (named by slot), the tenant's city aliases (named `""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Shard,
    Slot,
    Priors,
    Aliases,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Shard, Part::Slot, Part::Priors, Part::Aliases];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Shard => "shard",
            Part::Slot => "slot",
            Part::Priors => "priors",
            Part::Aliases => "aliases",
        }
    }

    pub fn parse(s: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// One tenant's versions: (part, city or slot) → version. A store gives a part a new version in
/// the same atomic write that changes it, so a reader that remembers the versions it loaded
/// reloads only the parts whose version differs (docs/architecture.md, "Lookup service"). A part
/// without a version has no data (or was written before versions existed).
pub type Versions = BTreeMap<(Part, String), u64>;

/// Versions that differ from every earlier one this process gave: the wall clock in
/// microseconds, moved past the last one given when the clock stalls or steps back. Readers only
/// compare versions for equality, so two processes' clocks need not agree.
pub fn next_version() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = Utc::now().timestamp_micros().max(0) as u64;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// What an API key may do: decide and click (`serve`) or also configure slots (`admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Serve,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "serve" => Ok(Role::Serve),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role must be serve or admin, not {s:?}")),
        }
    }
}

/// The tenant and role an API key (stored as the hex SHA-256 of the key) belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub tenant: String,
    pub role: Role,
}

/// Which arms to read, and whether all-time or over the buckets from `from_bucket` on.
#[derive(Debug, Clone, Default)]
pub struct CountQuery {
    pub tenant: Option<String>,
    pub slot: Option<String>,
    pub city: Option<String>,
    pub from_bucket: Option<i64>,
}

impl CountQuery {
    pub fn matches(&self, arm: &ArmKey) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == arm.tenant)
            && self.slot.as_ref().is_none_or(|s| *s == arm.slot)
            && self.city.as_ref().is_none_or(|c| *c == arm.city)
    }
}

/// A posterior row as printed and served.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PosteriorRow {
    pub tenant: String,
    pub slot: String,
    pub city: String,
    pub banner: String,
    #[serde(flatten)]
    pub summary: PosteriorSummary,
}

impl PosteriorRow {
    /// The fields in the order they are serialized (the CSV header and table columns).
    pub const COLUMNS: [&str; 11] = [
        "tenant",
        "slot",
        "city",
        "banner",
        "impressions",
        "clicks",
        "alpha",
        "beta",
        "mean",
        "lower95",
        "upper95",
    ];

    pub fn new(arm: ArmKey, counts: Counts, posterior: BetaPosterior) -> Self {
        Self {
            tenant: arm.tenant,
            slot: arm.slot,
            city: arm.city,
            banner: arm.banner,
            summary: PosteriorSummary::new(counts, posterior),
        }
    }
}

pub trait PosteriorStore: Send + Sync {
    /// Applies one epoch's shard writes atomically.
    fn apply_epoch(&self, shards: &[ShardWrite]) -> Result<(), StoreError>;
    /// Applies one epoch of a job that starts over after a crash (a backfill, which clears the
    /// counts first) atomically, but may leave it off the disk until [`PosteriorStore::sync`]:
    /// a crash before then leaves the store as after an earlier whole epoch.
    fn apply_epoch_unsynced(&self, shards: &[ShardWrite]) -> Result<(), StoreError> {
        self.apply_epoch(shards)
    }
    /// Makes every epoch applied so far durable.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Merges shard `writes[0]` (every row at (0, 0)) into shard `writes[1]` (the sums, the
    /// applied offsets) so that a merge cut short is never applied twice nor half: atomically,
    /// or in steps that [`PosteriorStore::finish_merges`] or this call again complete
    /// (docs/architecture.md, "City names").
    fn merge_shards(&self, writes: &[ShardWrite; 2]) -> Result<(), StoreError>;
    /// Completes the merges of these aliases that were cut short (a store whose merge is one
    /// atomic write has none).
    fn finish_merges(&self, _aliases: &TenantAliases) -> Result<(), StoreError> {
        Ok(())
    }
    /// Removes every count (a backfill rebuilds them from history).
    fn clear_counts(&self) -> Result<(), StoreError>;
    /// Counts per arm: all-time, or summed over the buckets from `from_bucket` on. A query of
    /// one tenant and city reads that shard only.
    fn counts(&self, query: &CountQuery) -> Result<Vec<(ArmKey, Counts)>, StoreError>;
    /// One tenant's versions (see [`Versions`]).
    fn versions(&self, tenant: &str) -> Result<Versions, StoreError>;
    /// A value that changes whenever any version of any tenant does, when the store can tell
    /// it cheaply (else `None`, and a reader reads each tenant's versions).
    fn change_marker(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Every tenant with counts, a slot, priors or an API key.
    fn tenants(&self) -> Result<Vec<String>, StoreError>;
    /// Replaces each slot's priors (its slot, banner and city rows) and gives them a new version
    /// (`Part::Priors`), each slot atomically (the embedded store writes them all in one
    /// transaction).
    fn write_all_priors(&self, slots: &[SlotPriorsWrite]) -> Result<(), StoreError>;
    /// [`PosteriorStore::write_all_priors`] of one slot.
    fn write_priors(
        &self,
        tenant: &str,
        slot: &str,
        priors: &SlotPriors,
    ) -> Result<(), StoreError> {
        self.write_all_priors(&[(tenant.to_string(), slot.to_string(), priors.clone())])
    }
    /// The priors of a slot; Beta(1, 1) when none were computed.
    fn priors(&self, tenant: &str, slot: &str) -> Result<SlotPriors, StoreError>;
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Stores `value` under `key` unless the key holds a value already, atomically; returns
    /// what the key holds afterwards: the first writer's value, whichever process that was.
    fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError>;
    /// Stores `value` under `key` if the key holds `expected`, atomically; returns what the key
    /// holds afterwards (`value` if this write won, or whatever another writer put there).
    fn replace_meta(&self, key: &str, expected: &str, value: &str) -> Result<String, StoreError>;
    /// Whether several processes may write to it at once (else process 0 writes for all).
    fn shared_across_processes(&self) -> bool;

    /// Every stored shard for which `owns(tenant, city)` holds, with all its rows and applied
    /// offsets (the streaming job's recovery).
    fn shards(&self, owns: &dyn Fn(&str, &str) -> bool) -> Result<Vec<ShardState>, StoreError>;
    /// Every shard's applied offsets (what a stream reader skips on restart).
    fn applied_offsets(&self) -> Result<AppliedOffsets, StoreError> {
        Ok(self
            .shards(&|_, _| true)?
            .into_iter()
            .map(|s| (s.shard, s.applied))
            .collect())
    }
    /// The resume low-watermark per partition of a job: every event below it is applied by
    /// every shard.
    fn checkpoints(&self, job: &str) -> Result<BTreeMap<Partition, Offset>, StoreError>;
    fn set_checkpoints(
        &self,
        job: &str,
        offsets: &BTreeMap<Partition, Offset>,
    ) -> Result<(), StoreError>;

    /// Stores a slot's configuration, replacing the previous one (banners left out are removed).
    fn put_slot(&self, config: &SlotConfig) -> Result<(), StoreError>;
    fn slot(&self, tenant: &str, slot: &str) -> Result<Option<SlotConfig>, StoreError>;
    /// Every configured (tenant, slot), of one tenant or of all.
    fn slots(&self, tenant: Option<&str>) -> Result<Vec<(String, String)>, StoreError>;

    /// A tenant's city aliases (empty when it declared none).
    fn city_aliases(&self, tenant: &str) -> Result<CityAliases, StoreError>;
    /// Replaces a tenant's city aliases (checked by [`CityAliases::declare`]) and gives them a
    /// new version (`Part::Aliases`), atomically.
    fn put_city_aliases(&self, tenant: &str, aliases: &CityAliases) -> Result<(), StoreError>;
    /// Every tenant's city aliases, as the jobs apply them.
    fn all_city_aliases(&self) -> Result<TenantAliases, StoreError> {
        let mut all = TenantAliases::default();
        for tenant in self.tenants()? {
            all.insert(&tenant, self.city_aliases(&tenant)?);
        }
        Ok(all)
    }

    fn put_api_key(&self, key_sha256: &str, key: &ApiKey) -> Result<(), StoreError>;
    fn api_key(&self, key_sha256: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Records events with a customer ID in the customer's history (idempotent per event_id);
    /// events without one are ignored.
    fn append_customer_events(&self, events: &[Event]) -> Result<(), StoreError>;
    /// A customer's most recent events, newest first.
    fn customer_events(
        &self,
        tenant: &str,
        customer_id: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The instant the counts are current to (the end of a backfill), if recorded.
    fn as_of(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.meta(META_AS_OF)? {
            None => Ok(None),
            Some(s) => crate::time::parse_rfc3339(&s)
                .map(Some)
                .map_err(|e| StoreError::Meta {
                    key: META_AS_OF,
                    detail: e.to_string(),
                }),
        }
    }

    /// The bucket width the counts were written with (60 minutes if not recorded).
    fn buckets(&self) -> Result<Buckets, StoreError> {
        match self.meta(META_BUCKET_MINUTES)? {
            None => Ok(Buckets::hourly()),
            Some(s) => s
                .parse::<u32>()
                .map_err(|e| e.to_string())
                .and_then(Buckets::of_minutes)
                .map_err(|detail| StoreError::Meta {
                    key: META_BUCKET_MINUTES,
                    detail,
                }),
        }
    }

    /// How long the jobs keep bucket rows (recorded by the backfill and the stream job; `None`
    /// for a store written before retention existed, which kept every bucket). A window longer
    /// than this cannot be answered whole.
    fn retention(&self) -> Result<Option<Retention>, StoreError> {
        self.meta(META_RETENTION_HOURS)?
            .map(|s| {
                s.parse::<u32>()
                    .map_err(|e| e.to_string())
                    .and_then(Retention::of_hours)
                    .map_err(|detail| StoreError::Meta {
                        key: META_RETENTION_HOURS,
                        detail,
                    })
            })
            .transpose()
    }

    /// Posteriors (prior + counts) per arm, in key order, each arm from its own prior
    /// ([`SlotPriors::for_arm`]). A city without counts gets a row per banner the slot has
    /// counts for anywhere, with no counts of its own: its prior, a new city's.
    fn posteriors(&self, query: &CountQuery) -> Result<Vec<PosteriorRow>, StoreError> {
        let mut counts = self.counts(query)?;
        if let (true, Some(city)) = (counts.is_empty(), &query.city) {
            let all_cities = CountQuery {
                city: None,
                ..query.clone()
            };
            let all = self.counts(&all_cities)?;
            counts = pool_cities(all.iter().map(|(arm, c)| (arm, *c)))
                .into_keys()
                .map(|arm| {
                    (
                        ArmKey {
                            city: city.clone(),
                            ..arm
                        },
                        Counts::ZERO,
                    )
                })
                .collect();
        }
        let mut priors: std::collections::BTreeMap<(String, String), SlotPriors> =
            Default::default();
        let mut rows = Vec::new();
        for (arm, c) in counts {
            let key = (arm.tenant.clone(), arm.slot.clone());
            if !priors.contains_key(&key) {
                let p = self.priors(&arm.tenant, &arm.slot)?;
                priors.insert(key.clone(), p);
            }
            let prior = priors[&key].for_arm(&arm.city, &arm.banner);
            rows.push(PosteriorRow::new(
                arm,
                c,
                prior.posterior(c.impressions, c.clicks),
            ));
        }
        Ok(rows)
    }
}

/// What a process mostly does with the store it opens, which sizes what the store caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreUse {
    /// Jobs and commands: bulk writes and whole scans.
    Batch,
    /// The lookup service: it reads changed shards into a snapshot of its own.
    Lookup,
}

/// Opens a store named by URL (see [`StoreUrl`]) for [`StoreUse::Batch`]. `writable` matters to
/// the embedded store, which is created when it is opened for writing.
pub fn open_store(url: &str, writable: bool) -> Result<Box<dyn PosteriorStore>, StoreError> {
    open_store_for(url, writable, StoreUse::Batch)
}

/// [`open_store`] for `store_use`.
pub fn open_store_for(
    url: &str,
    writable: bool,
    store_use: StoreUse,
) -> Result<Box<dyn PosteriorStore>, StoreError> {
    match url.parse::<StoreUrl>()? {
        StoreUrl::Embedded(path) => Ok(Box::new(EmbeddedStore::open_for(
            &path, writable, store_use,
        )?)),
        StoreUrl::Cassandra(url) => Ok(Box::new(CassandraStore::open(&url)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posterior_rows_serialize_flat_in_the_csv_order() {
        let arm = ArmKey::new("ajio", "hero", "pune", "b01");
        let posterior = BetaPosterior::uniform().updated(10, 1);
        let json =
            serde_json::to_string(&PosteriorRow::new(arm, Counts::new(10, 1), posterior)).unwrap();
        let at = |key: &str| json.find(&format!("\"{key}\":")).expect(key);
        let keys = PosteriorRow::COLUMNS;
        assert!(keys.windows(2).all(|k| at(k[0]) < at(k[1])), "{json}");
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).unwrap();
        assert_eq!(object.len(), keys.len(), "{json}");
        assert!(
            json.contains("\"clicks\":1,\"alpha\":2.0,\"beta\":10.0"),
            "{json}"
        );
    }
}
