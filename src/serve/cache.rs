//! The posterior cache: every configured slot with its banners, priors and posteriors per city
//! (and pooled over cities). Readers load the current snapshot through an `ArcSwap` (an atomic
//! pointer and a reference count), so the decision path takes no lock and a slow or failing store
//! never blocks it: decisions keep coming from the last good snapshot, whose age is reported.
//!
//! Loading is incremental (docs/architecture.md, "Lookup service"): the first load reads
//! everything; a refresh then reads the store's change marker and, when it moved, each served
//! tenant's versions, and reads again only the shards (tenant, city), slots and priors whose
//! version changed. A snapshot shares every unchanged tenant, slot and city with the one before.
//! Windows move with the clock: when a window's first bucket changes, its tenants load anew.
//!
//! Windows (the seed's `pastmin`): besides the all-time posteriors, a snapshot holds windowed
//! posteriors (counts of the whole buckets that start at or after now − W) for each kept window
//! of a tenant: the service's (`--windows`, every tenant), a fixed set for the seed-compatible
//! routes' tenants, and at most `MAX_TENANT_WINDOWS` more per tenant, which only that tenant's
//! admin keys register (a decision naming a new window then waits for one load). A window is at
//! least one bucket long and at most the store's retention.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};

use crate::bandit::{BetaPosterior, SlotPolicy, SlotPriors};
use crate::model::{ArmKey, CityAliases, Counts, SlotConfig, ALL_CITIES};
use crate::store::{CountQuery, Part, PosteriorStore, StoreError, Versions};
use crate::time::Retention;

/// Counts per arm, as the store answers them.
type ArmRows = Vec<(ArmKey, Counts)>;

/// The name under which the arms of a city without counts are built: no city's (the city rule
/// never gives an empty name), so it gets the slot's prior for a new city.
const NEW_CITY: &str = "";

/// At most this many windows are registered per tenant, besides the service's and the seed
/// routes' fixed ones.
pub const MAX_TENANT_WINDOWS: usize = 4;

/// The windows the cache keeps, per tenant: the service's, kept for every tenant, and each
/// tenant's own (the seed routes' fixed set, and those its admin keys registered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptWindows {
    service: BTreeSet<u32>,
    fixed: BTreeMap<String, BTreeSet<u32>>,
    registered: BTreeMap<String, BTreeSet<u32>>,
}

impl KeptWindows {
    /// The service's windows, kept for every tenant.
    pub fn service(windows: impl IntoIterator<Item = u32>) -> Self {
        Self {
            service: windows.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Keeps `windows` for `tenant` too, outside its registration limit.
    pub fn with_fixed(mut self, tenant: &str, windows: impl IntoIterator<Item = u32>) -> Self {
        self.fixed
            .entry(tenant.to_string())
            .or_default()
            .extend(windows);
        self
    }

    /// The windows kept for `tenant`.
    pub fn of_tenant(&self, tenant: &str) -> BTreeSet<u32> {
        let own = [self.fixed.get(tenant), self.registered.get(tenant)];
        let own = own.into_iter().flatten().flatten();
        self.service.iter().chain(own).copied().collect()
    }

    pub fn keeps(&self, tenant: &str, minutes: u32) -> bool {
        self.service.contains(&minutes)
            || [&self.fixed, &self.registered]
                .iter()
                .any(|m| m.get(tenant).is_some_and(|w| w.contains(&minutes)))
    }

    /// Every window some tenant keeps.
    pub fn all(&self) -> BTreeSet<u32> {
        let own = self
            .fixed
            .values()
            .chain(self.registered.values())
            .flatten();
        self.service.iter().chain(own).copied().collect()
    }

    /// Registers `minutes` for `tenant`; refused past `MAX_TENANT_WINDOWS`.
    fn register(&mut self, tenant: &str, minutes: u32) -> Result<(), CacheError> {
        if self.keeps(tenant, minutes) {
            return Ok(());
        }
        let own = self.registered.entry(tenant.to_string()).or_default();
        if own.len() >= MAX_TENANT_WINDOWS {
            return Err(CacheError::TooManyWindows {
                tenant: tenant.to_string(),
                kept: join_minutes(&self.of_tenant(tenant)),
            });
        }
        own.insert(minutes);
        Ok(())
    }
}

fn join_minutes(windows: &BTreeSet<u32>) -> String {
    let kept: Vec<String> = windows.iter().map(u32::to_string).collect();
    kept.join(", ")
}

/// The tenants a service serves: every tenant in the store, or a list (replicas that split
/// the tenants between them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TenantScope {
    #[default]
    All,
    Only(BTreeSet<String>),
}

impl TenantScope {
    pub fn serves(&self, tenant: &str) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(tenants) => tenants.contains(tenant),
        }
    }

    /// Fails on a listed tenant the store knows nothing of (no counts, slot or priors).
    pub fn check(&self, store: &dyn PosteriorStore) -> Result<(), CacheError> {
        let TenantScope::Only(listed) = self else {
            return Ok(());
        };
        let known: BTreeSet<String> = store.tenants()?.into_iter().collect();
        let unknown: Vec<&str> = listed
            .iter()
            .filter(|t| !known.contains(*t))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(CacheError::UnknownTenants {
            unknown: unknown.join(", "),
            known: known.into_iter().collect::<Vec<_>>().join(", "),
        })
    }
}

/// One city's (or the pooled) arms of a slot: counts per banner in config order, and the
/// prepared Thompson policy over each arm's prior ([`SlotPriors::for_arm`]) plus its counts.
#[derive(Debug, Clone)]
pub struct Arms {
    pub counts: Vec<Counts>,
    pub policy: SlotPolicy,
}

impl Arms {
    fn new(config: &Arc<SlotConfig>, priors: &SlotPriors, city: &str, counts: Vec<Counts>) -> Self {
        let policy = SlotPolicy::of_city(config, priors, city, &counts);
        Self { counts, policy }
    }

    pub fn posteriors(&self) -> impl Iterator<Item = BetaPosterior> + '_ {
        self.policy.posteriors()
    }
}

/// A slot's arms for one window: per city with counts, a city without counts (its prior alone:
/// the slot's prior for a new city), and pooled over every city (shown as `*`, never decided
/// from).
#[derive(Debug, Clone)]
pub struct WindowArms {
    pub by_city: HashMap<String, Arc<Arms>>,
    pub new_city: Arms,
    pub all_cities: Arms,
}

impl WindowArms {
    /// The arms to decide with for `city`: its own prior and counts, the prior alone for a city
    /// without counts (every new city starts from the same shrinkage prior).
    pub fn for_city<'a>(&'a self, city: &'a str) -> (&'a Arms, &'a str) {
        match self.by_city.get_key_value(city) {
            Some((c, arms)) => (arms, c.as_str()),
            None => (&self.new_city, city),
        }
    }

    /// From counts per city in config order.
    fn new(
        config: &Arc<SlotConfig>,
        priors: &SlotPriors,
        cities: HashMap<String, Vec<Counts>>,
    ) -> Self {
        let by_city = cities
            .into_iter()
            .map(|(c, counts)| {
                let arms = Arms::new(config, priors, &c, counts);
                (c, Arc::new(arms))
            })
            .collect();
        Self::pooled(config, priors, by_city)
    }

    /// With the pooled arms summed over `by_city`, and the arms of a city without counts.
    fn pooled(
        config: &Arc<SlotConfig>,
        priors: &SlotPriors,
        by_city: HashMap<String, Arc<Arms>>,
    ) -> Self {
        let mut pooled = vec![Counts::ZERO; config.banners.len()];
        for arms in by_city.values() {
            for (sum, &c) in pooled.iter_mut().zip(&arms.counts) {
                *sum += c;
            }
        }
        let none = vec![Counts::ZERO; config.banners.len()];
        WindowArms {
            by_city,
            new_city: Arms::new(config, priors, NEW_CITY, none),
            all_cities: Arms::new(config, priors, ALL_CITIES, pooled),
        }
    }

    /// These arms under other priors (the same counts).
    fn with_priors(&self, config: &Arc<SlotConfig>, priors: &SlotPriors) -> Self {
        let by_city = self
            .by_city
            .iter()
            .map(|(c, arms)| {
                let arms = Arms::new(config, priors, c, arms.counts.clone());
                (c.clone(), Arc::new(arms))
            })
            .collect();
        Self::pooled(config, priors, by_city)
    }

    /// These arms with the cities of `changed` replaced by their new rows (a city without rows
    /// of this slot is dropped), pooled anew.
    fn with_cities<'a>(
        &self,
        config: &Arc<SlotConfig>,
        priors: &SlotPriors,
        changed: impl Iterator<Item = (&'a str, &'a [(ArmKey, Counts)])>,
    ) -> Self {
        let mut by_city = self.by_city.clone();
        for (city, rows) in changed {
            by_city.remove(city);
            for (c, counts) in counts_per_city(config, rows.iter()) {
                let arms = Arms::new(config, priors, &c, counts);
                by_city.insert(c, Arc::new(arms));
            }
        }
        Self::pooled(config, priors, by_city)
    }

    /// Arms per (city, banner).
    fn arm_count(&self) -> usize {
        self.by_city.values().map(|a| a.counts.len()).sum()
    }
}

/// The counts of `config`'s banners per city, in config order, from rows of any slot: counts of
/// other slots, and of banners no longer configured, are not shown.
fn counts_per_city<'a>(
    config: &SlotConfig,
    rows: impl Iterator<Item = &'a (ArmKey, Counts)>,
) -> HashMap<String, Vec<Counts>> {
    let index = config.banner_index();
    let mut cities: HashMap<String, Vec<Counts>> = HashMap::new();
    for (arm, c) in rows {
        if arm.tenant != config.tenant || arm.slot != config.slot {
            continue;
        }
        let Some(&i) = index.get(arm.banner.as_str()) else {
            continue;
        };
        cities
            .entry(arm.city.clone())
            .or_insert_with(|| vec![Counts::ZERO; config.banners.len()])[i] += *c;
    }
    cities
}

#[derive(Debug, Clone)]
pub struct SlotEntry {
    pub config: Arc<SlotConfig>,
    pub priors: SlotPriors,
    pub all_time: WindowArms,
    /// Window minutes → arms over that window.
    pub windows: HashMap<u32, WindowArms>,
}

impl SlotEntry {
    fn build(
        config: SlotConfig,
        priors: SlotPriors,
        all_time: &[(ArmKey, Counts)],
        windows: &[(u32, ArmRows)],
    ) -> Self {
        let config = Arc::new(config);
        let arms = |rows: &[(ArmKey, Counts)]| {
            WindowArms::new(&config, &priors, counts_per_city(&config, rows.iter()))
        };
        let all_time_arms = arms(all_time);
        let windows = windows.iter().map(|(w, rows)| (*w, arms(rows))).collect();
        Self {
            all_time: all_time_arms,
            windows,
            config,
            priors,
        }
    }

    /// This entry with other priors (its counts as they were).
    fn with_priors(&self, priors: SlotPriors) -> Self {
        let config = &self.config;
        Self {
            all_time: self.all_time.with_priors(config, &priors),
            windows: self
                .windows
                .iter()
                .map(|(&w, arms)| (w, arms.with_priors(config, &priors)))
                .collect(),
            config: config.clone(),
            priors,
        }
    }

    /// This entry with the rows of the changed shards (cities) in place of the old ones; a window
    /// the shards hold no rows of (one read again whole, [`SlotEntry::with_windows`]) is kept.
    fn with_cities(&self, changed: &[ShardRows]) -> Self {
        let (config, priors) = (&self.config, &self.priors);
        let all_time = self.all_time.with_cities(
            config,
            priors,
            changed
                .iter()
                .map(|s| (s.city.as_str(), s.all_time.as_slice())),
        );
        let windows = self
            .windows
            .iter()
            .map(|(&w, arms)| {
                if changed.iter().all(|s| !s.windows.contains_key(&w)) {
                    return (w, arms.clone());
                }
                let rows = changed.iter().map(move |s| {
                    let rows = s.windows.get(&w).map_or(&[][..], Vec::as_slice);
                    (s.city.as_str(), rows)
                });
                (w, arms.with_cities(config, priors, rows))
            })
            .collect();
        Self {
            config: self.config.clone(),
            priors: self.priors.clone(),
            all_time,
            windows,
        }
    }

    /// This entry with the windows of `rows` built anew from them (every shard's rows of the
    /// window).
    fn with_windows(&self, rows: &[(u32, ArmRows)]) -> Self {
        let mut windows = self.windows.clone();
        for (w, rows) in rows {
            let cities = counts_per_city(&self.config, rows.iter());
            windows.insert(*w, WindowArms::new(&self.config, &self.priors, cities));
        }
        Self {
            config: self.config.clone(),
            priors: self.priors.clone(),
            all_time: self.all_time.clone(),
            windows,
        }
    }

    /// The arms of a window (`None` = all time), if that window is loaded.
    pub fn window(&self, minutes: Option<u32>) -> Option<&WindowArms> {
        match minutes {
            None => Some(&self.all_time),
            Some(m) => self.windows.get(&m),
        }
    }
}

/// One changed shard's rows: all-time and per window.
struct ShardRows {
    city: String,
    all_time: ArmRows,
    windows: HashMap<u32, ArmRows>,
}

/// A tenant's slots by name.
pub type TenantSlots = HashMap<String, Arc<SlotEntry>>;

/// Everything the service decides from, as of one load.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// tenant → slot → entry (nested so that lookups borrow the request's strings).
    pub slots: HashMap<String, Arc<TenantSlots>>,
    /// Arms per (tenant, slot, city, banner) with all-time counts.
    pub arms: usize,
    /// When the store was last found to hold what this snapshot holds.
    pub loaded_at: Instant,
    pub loaded_at_utc: DateTime<Utc>,
    /// When a refresh last found something changed (counts, slots or priors).
    pub changed_at: Instant,
    /// The store's "as of" instant (end of the last backfill), if recorded.
    pub store_as_of: Option<DateTime<Utc>>,
    /// Per tenant, the versions its slots were read at, and its city aliases.
    tenants: HashMap<String, TenantRead>,
    /// Each kept window's first bucket when it was read.
    window_starts: BTreeMap<u32, i64>,
    /// The windows kept per tenant when it was read.
    windows: KeptWindows,
    /// The store's change marker when this snapshot was read.
    marker: Option<u64>,
}

/// What a snapshot read of one tenant besides its slots.
#[derive(Debug, Clone)]
struct TenantRead {
    versions: Arc<Versions>,
    aliases: Arc<CityAliases>,
}

/// What a refresh found.
pub enum Refresh {
    /// Nothing changed in the store since the snapshot before.
    Unchanged,
    /// A new snapshot, and how many shards it read again.
    Changed {
        snapshot: Box<Snapshot>,
        shards: usize,
    },
}

impl Snapshot {
    pub fn slot(&self, tenant: &str, slot: &str) -> Option<&Arc<SlotEntry>> {
        self.slots.get(tenant)?.get(slot)
    }

    /// The city whose arms answer for `city` (normalized) in `tenant`: its canonical city when
    /// it is an alias.
    pub fn resolve_city<'a>(&'a self, tenant: &str, city: &'a str) -> &'a str {
        match self.tenants.get(tenant) {
            Some(t) => t.aliases.resolve(city),
            None => city,
        }
    }

    pub fn slot_count(&self) -> usize {
        self.slots.values().map(|s| s.len()).sum()
    }

    /// Reads every configured slot of the served tenants with its priors and counts.
    pub fn load(
        store: &dyn PosteriorStore,
        windows: &KeptWindows,
        now: DateTime<Utc>,
        scope: &TenantScope,
    ) -> Result<Snapshot, StoreError> {
        match Self::refresh(None, store, windows, now, scope)? {
            Refresh::Changed { snapshot, .. } => Ok(*snapshot),
            Refresh::Unchanged => unreachable!("a first load always reads"),
        }
    }

    /// The snapshot after `previous`, reading again only what changed in the store since it
    /// (everything when there is none), and the windows whose first bucket moved.
    pub fn refresh(
        previous: Option<&Snapshot>,
        store: &dyn PosteriorStore,
        windows: &KeptWindows,
        now: DateTime<Utc>,
        scope: &TenantScope,
    ) -> Result<Refresh, StoreError> {
        let buckets = store.buckets()?;
        let window_starts: BTreeMap<u32, i64> = windows
            .all()
            .into_iter()
            .map(|w| (w, buckets.first_in_window(now, w)))
            .collect();
        // Read before the versions: a write after this read moves the marker again.
        let marker = store.change_marker()?;
        // A tenant whose kept windows changed is read whole.
        let same_windows =
            |p: &Snapshot, tenant: &str| p.windows.of_tenant(tenant) == windows.of_tenant(tenant);
        if let Some(p) = previous {
            if marker.is_some()
                && marker == p.marker
                && p.windows == *windows
                && p.window_starts == window_starts
            {
                return Ok(Refresh::Unchanged);
            }
        }
        let tenants = match scope {
            TenantScope::All => store.tenants()?,
            TenantScope::Only(listed) => listed.iter().cloned().collect(),
        };
        let mut slots = HashMap::new();
        let mut read = HashMap::new();
        let mut shards = 0;
        for tenant in tenants {
            let current = Arc::new(store.versions(&tenant)?);
            let previous = previous.filter(|p| same_windows(p, &tenant));
            let tenant_starts: BTreeMap<u32, i64> = windows
                .of_tenant(&tenant)
                .into_iter()
                .map(|w| (w, window_starts[&w]))
                .collect();
            // The tenant's windows whose first bucket moved since `previous`.
            let moved: BTreeSet<u32> = previous.map_or_else(BTreeSet::new, |p| {
                tenant_starts
                    .iter()
                    .filter(|&(w, from)| p.window_starts.get(w) != Some(from))
                    .map(|(&w, _)| w)
                    .collect()
            });
            let read_before = previous.and_then(|p| p.tenants.get(&tenant));
            let before = read_before.map(|r| &r.versions);
            let alias_version = |v: &Versions| v.get(&(Part::Aliases, String::new())).copied();
            let kept_aliases = read_before
                .filter(|r| alias_version(&r.versions) == alias_version(&current))
                .map(|r| r.aliases.clone());
            let aliases = match (kept_aliases, alias_version(&current)) {
                (Some(kept), _) => kept,
                (None, Some(_)) => Arc::new(store.city_aliases(&tenant)?),
                (None, None) => Arc::default(),
            };
            let loaded = match before {
                Some(before) if **before == *current && moved.is_empty() => {
                    previous.and_then(|p| p.slots.get(&tenant)).cloned()
                }
                Some(before) => {
                    let diff = VersionDiff::new(before, &current);
                    shards += diff.cities.len();
                    let old = previous.and_then(|p| p.slots.get(&tenant));
                    Some(Arc::new(update_tenant(
                        store,
                        &tenant,
                        old.map(Arc::as_ref),
                        &diff,
                        &current,
                        &tenant_starts,
                        &moved,
                    )?))
                }
                None => {
                    shards += names_of(&current, Part::Shard).count();
                    Some(Arc::new(load_tenant(
                        store,
                        &tenant,
                        &current,
                        &tenant_starts,
                    )?))
                }
            };
            if let Some(loaded) = loaded.filter(|l| !l.is_empty()) {
                slots.insert(tenant.clone(), loaded);
            }
            read.insert(
                tenant,
                TenantRead {
                    versions: current,
                    aliases,
                },
            );
        }
        let arms = slots
            .values()
            .flat_map(|s| s.values())
            .map(|e| e.all_time.arm_count())
            .sum();
        Ok(Refresh::Changed {
            snapshot: Box::new(Snapshot {
                slots,
                arms,
                loaded_at: Instant::now(),
                loaded_at_utc: now,
                changed_at: Instant::now(),
                store_as_of: store.as_of()?,
                tenants: read,
                window_starts,
                windows: windows.clone(),
                marker,
            }),
            shards,
        })
    }

    /// This snapshot, found current at `now` again.
    fn confirmed(&self, now: DateTime<Utc>) -> Snapshot {
        Snapshot {
            loaded_at: Instant::now(),
            loaded_at_utc: now,
            ..self.clone()
        }
    }
}

/// The names of one part in a tenant's versions.
fn names_of(versions: &Versions, part: Part) -> impl Iterator<Item = &str> {
    versions
        .keys()
        .filter(move |(p, _)| *p == part)
        .map(|(_, name)| name.as_str())
}

/// What changed in one tenant's versions: the shards (cities), the slots whose configuration
/// changed, and those whose priors changed.
struct VersionDiff {
    cities: BTreeSet<String>,
    slots: BTreeSet<String>,
    priors: BTreeSet<String>,
}

impl VersionDiff {
    fn new(before: &Versions, now: &Versions) -> Self {
        let mut diff = VersionDiff {
            cities: BTreeSet::new(),
            slots: BTreeSet::new(),
            priors: BTreeSet::new(),
        };
        let keys: BTreeSet<&(Part, String)> = before.keys().chain(now.keys()).collect();
        for key in keys {
            if before.get(key) == now.get(key) {
                continue;
            }
            let (part, name) = key;
            match part {
                Part::Shard => diff.cities.insert(name.clone()),
                Part::Slot => diff.slots.insert(name.clone()),
                Part::Priors => diff.priors.insert(name.clone()),
                // Read by the refresh itself; they change no slot or shard.
                Part::Aliases => false,
            };
        }
        diff
    }
}

/// Every configured slot of a tenant, read whole.
fn load_tenant(
    store: &dyn PosteriorStore,
    tenant: &str,
    versions: &Versions,
    window_starts: &BTreeMap<u32, i64>,
) -> Result<TenantSlots, StoreError> {
    let query = CountQuery {
        tenant: Some(tenant.to_string()),
        ..Default::default()
    };
    let (all_time, windows) = read_counts(store, &query, window_starts)?;
    let mut entries = TenantSlots::new();
    for name in names_of(versions, Part::Slot) {
        if let Some(entry) = read_slot(store, tenant, name, &all_time, &windows)? {
            entries.insert(name.to_string(), Arc::new(entry));
        }
    }
    Ok(entries)
}

/// A tenant's slots after `diff` and the `moved` windows (those whose first bucket moved since
/// `old` was read): slots whose configuration changed read whole, new priors applied to the
/// counts held (the job writes priors often; they change no count), changed shards patched in,
/// moved windows read again over every shard (their all-time counts and other windows kept), the
/// rest shared with `old`.
fn update_tenant(
    store: &dyn PosteriorStore,
    tenant: &str,
    old: Option<&TenantSlots>,
    diff: &VersionDiff,
    versions: &Versions,
    window_starts: &BTreeMap<u32, i64>,
    moved: &BTreeSet<u32>,
) -> Result<TenantSlots, StoreError> {
    // A moved window is read whole below: a changed shard reads only the others.
    let unmoved: BTreeMap<u32, i64> = window_starts
        .iter()
        .filter(|(w, _)| !moved.contains(w))
        .map(|(&w, &from)| (w, from))
        .collect();
    let mut changed = Vec::with_capacity(diff.cities.len());
    for city in &diff.cities {
        let query = CountQuery {
            tenant: Some(tenant.to_string()),
            city: Some(city.clone()),
            ..Default::default()
        };
        let (all_time, windows) = read_counts(store, &query, &unmoved)?;
        changed.push(ShardRows {
            city: city.clone(),
            all_time,
            windows: windows.into_iter().collect(),
        });
    }
    let tenant_query = CountQuery {
        tenant: Some(tenant.to_string()),
        ..Default::default()
    };
    let moved_rows = moved
        .iter()
        .map(|&w| Ok((w, window_counts(store, &tenant_query, window_starts[&w])?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut entries = TenantSlots::new();
    for name in names_of(versions, Part::Slot) {
        let kept = old
            .and_then(|o| o.get(name))
            .filter(|_| !diff.slots.contains(name));
        let reprior = |entry: &Arc<SlotEntry>| -> Result<Arc<SlotEntry>, StoreError> {
            match diff.priors.contains(name) {
                true => Ok(Arc::new(entry.with_priors(store.priors(tenant, name)?))),
                false => Ok(entry.clone()),
            }
        };
        let entry = match kept {
            Some(entry) => {
                let mut entry = reprior(entry)?;
                if !changed.is_empty() {
                    entry = Arc::new(entry.with_cities(&changed));
                }
                if !moved_rows.is_empty() {
                    entry = Arc::new(entry.with_windows(&moved_rows));
                }
                Some(entry)
            }
            None => {
                let query = CountQuery {
                    tenant: Some(tenant.to_string()),
                    slot: Some(name.to_string()),
                    ..Default::default()
                };
                let (all_time, windows) = read_counts(store, &query, window_starts)?;
                read_slot(store, tenant, name, &all_time, &windows)?.map(Arc::new)
            }
        };
        if let Some(entry) = entry {
            entries.insert(name.to_string(), entry);
        }
    }
    Ok(entries)
}

/// The counts `query` names: all-time, and over each window.
fn read_counts(
    store: &dyn PosteriorStore,
    query: &CountQuery,
    window_starts: &BTreeMap<u32, i64>,
) -> Result<(ArmRows, Vec<(u32, ArmRows)>), StoreError> {
    let all_time = store.counts(query)?;
    let windows = window_starts
        .iter()
        .map(|(&w, &from)| Ok((w, window_counts(store, query, from)?)))
        .collect::<Result<_, StoreError>>()?;
    Ok((all_time, windows))
}

/// The counts `query` names over the buckets from `from` on.
fn window_counts(
    store: &dyn PosteriorStore,
    query: &CountQuery,
    from: i64,
) -> Result<ArmRows, StoreError> {
    store.counts(&CountQuery {
        from_bucket: Some(from),
        ..query.clone()
    })
}

/// A slot's configuration and priors with its arms from `all_time` and `windows`; `None` when
/// the slot has no configuration.
fn read_slot(
    store: &dyn PosteriorStore,
    tenant: &str,
    slot: &str,
    all_time: &[(ArmKey, Counts)],
    windows: &[(u32, ArmRows)],
) -> Result<Option<SlotEntry>, StoreError> {
    let Some(config) = store.slot(tenant, slot)? else {
        return Ok(None);
    };
    let priors = store.priors(tenant, slot)?;
    Ok(Some(SlotEntry::build(config, priors, all_time, windows)))
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the store is unavailable: {0}")]
    Store(#[from] StoreError),
    #[error(
        "tenant {tenant} keeps at most {MAX_TENANT_WINDOWS} windows of its own besides the \
         service's (kept: {kept})"
    )]
    TooManyWindows { tenant: String, kept: String },
    #[error(
        "a window of {minutes} minutes is not kept for tenant {tenant} (kept: {kept}); a \
         decision with an admin key registers it"
    )]
    WindowNotKept {
        tenant: String,
        minutes: u32,
        kept: String,
    },
    #[error("a window must be at least one bucket ({bucket} minutes) long (got {minutes})")]
    WindowBelowBucket { minutes: u32, bucket: u32 },
    #[error("the cache load was cancelled")]
    Cancelled,
    #[error("--tenants names tenants the store does not know: {unknown} (known: {known})")]
    UnknownTenants { unknown: String, known: String },
    #[error(
        "a window of {minutes} minutes is longer than the store keeps hourly buckets \
         ({hours} hours: the jobs' --retention-hours)"
    )]
    WindowBeyondRetention { minutes: u32, hours: u32 },
}

/// Fails when a window of `minutes` reaches further back than the store keeps buckets.
fn within_retention(minutes: u32, retention: Option<Retention>) -> Result<(), CacheError> {
    match retention.map(|r| r.hours()) {
        Some(hours) if u64::from(minutes) > u64::from(hours) * 60 => {
            Err(CacheError::WindowBeyondRetention { minutes, hours })
        }
        _ => Ok(()),
    }
}

/// What one refresh did.
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub snapshot: Arc<Snapshot>,
    /// Shards read again (every shard on a full load); 0 when nothing changed.
    pub shards: usize,
    pub seconds: f64,
}

/// The shared cache: the current snapshot and the windows to keep.
pub struct PosteriorCache {
    store: Arc<dyn PosteriorStore>,
    scope: TenantScope,
    current: ArcSwapOption<Snapshot>,
    windows: Mutex<KeptWindows>,
    /// Serializes loads, so that a refresh asked for by a request waits for a load that
    /// started after its write.
    loading: tokio::sync::Mutex<()>,
    last_error: Mutex<Option<String>>,
}

impl PosteriorCache {
    pub fn new(store: Arc<dyn PosteriorStore>, windows: KeptWindows, scope: TenantScope) -> Self {
        Self {
            store,
            scope,
            current: ArcSwapOption::empty(),
            windows: Mutex::new(windows),
            loading: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(None),
        }
    }

    /// The current snapshot (`None` before the first successful load). Lock-free.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }

    pub fn store(&self) -> &Arc<dyn PosteriorStore> {
        &self.store
    }

    /// Reads what changed in the store (on a blocking thread) and installs the snapshot. On
    /// failure the previous snapshot stays.
    pub async fn refresh(&self) -> Result<Refreshed, CacheError> {
        let _guard = self.loading.lock().await;
        let started = Instant::now();
        let windows = self.windows.lock().expect("not poisoned").clone();
        let store = self.store.clone();
        let scope = self.scope.clone();
        let previous = self.snapshot();
        let loaded = tokio::task::spawn_blocking(move || {
            let now = Utc::now();
            let refresh =
                Snapshot::refresh(previous.as_deref(), store.as_ref(), &windows, now, &scope);
            refresh.map(|r| match (r, previous) {
                (Refresh::Changed { snapshot, shards }, _) => (*snapshot, shards),
                (Refresh::Unchanged, Some(previous)) => (previous.confirmed(now), 0),
                (Refresh::Unchanged, None) => unreachable!("a first load always reads"),
            })
        })
        .await
        .map_err(|_| CacheError::Cancelled)?;
        match loaded {
            Ok((snapshot, shards)) => {
                let snapshot = Arc::new(snapshot);
                self.current.store(Some(snapshot.clone()));
                *self.last_error.lock().expect("not poisoned") = None;
                Ok(Refreshed {
                    snapshot,
                    shards,
                    seconds: started.elapsed().as_secs_f64(),
                })
            }
            Err(e) => {
                *self.last_error.lock().expect("not poisoned") = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    /// Fails on a kept window shorter than a bucket or longer than the store keeps bucket
    /// counts (blocking: at start).
    pub fn check_windows(&self) -> Result<(), CacheError> {
        let bounds = WindowBounds::of(self.store.as_ref())?;
        let windows = self.windows.lock().expect("not poisoned").all();
        windows.into_iter().try_for_each(|w| bounds.check(w))
    }

    /// Keeps those of `windows` a window may be (see `WindowBounds`) for `tenant`, outside its
    /// registration limit (blocking: at start).
    pub fn keep_fixed(&self, tenant: &str, windows: &[u32]) -> Result<(), CacheError> {
        let bounds = WindowBounds::of(self.store.as_ref())?;
        let fixed = windows.iter().copied().filter(|&w| bounds.check(w).is_ok());
        let mut kept = self.windows.lock().expect("not poisoned");
        *kept = std::mem::take(&mut *kept).with_fixed(tenant, fixed);
        Ok(())
    }

    async fn window_bounds(&self) -> Result<WindowBounds, CacheError> {
        let store = self.store.clone();
        let bounds = tokio::task::spawn_blocking(move || WindowBounds::of(store.as_ref()))
            .await
            .map_err(|_| CacheError::Cancelled)??;
        Ok(bounds)
    }

    /// Keeps a slot's recency window for `tenant`, outside its registration limit (slots are
    /// written by admins), once it passes the bounds (see `WindowBounds`).
    pub async fn keep_slot_window(&self, tenant: &str, minutes: u32) -> Result<(), CacheError> {
        self.window_bounds().await?.check(minutes)?;
        let mut kept = self.windows.lock().expect("not poisoned");
        *kept = std::mem::take(&mut *kept).with_fixed(tenant, [minutes]);
        Ok(())
    }

    /// The windows kept for `tenant`.
    pub fn kept_windows(&self, tenant: &str) -> BTreeSet<u32> {
        self.windows.lock().expect("not poisoned").of_tenant(tenant)
    }

    /// A snapshot holding `minutes` for `tenant`. A window not kept yet is registered when
    /// `may_register` (an admin caller), else refused.
    pub async fn ensure_window(
        &self,
        tenant: &str,
        minutes: u32,
        may_register: bool,
    ) -> Result<Arc<Snapshot>, CacheError> {
        self.window_bounds().await?.check(minutes)?;
        {
            let mut windows = self.windows.lock().expect("not poisoned");
            if may_register {
                windows.register(tenant, minutes)?;
            } else if !windows.keeps(tenant, minutes) {
                return Err(CacheError::WindowNotKept {
                    tenant: tenant.to_string(),
                    minutes,
                    kept: join_minutes(&windows.of_tenant(tenant)),
                });
            }
        }
        Ok(self.refresh().await?.snapshot)
    }
}

/// What a window may be: at least a bucket, at most the store's retention.
struct WindowBounds {
    bucket_minutes: u32,
    retention: Option<Retention>,
}

impl WindowBounds {
    fn of(store: &dyn PosteriorStore) -> Result<Self, StoreError> {
        Ok(Self {
            bucket_minutes: store.buckets()?.minutes(),
            retention: store.retention()?,
        })
    }

    fn check(&self, minutes: u32) -> Result<(), CacheError> {
        if minutes < self.bucket_minutes {
            return Err(CacheError::WindowBelowBucket {
                minutes,
                bucket: self.bucket_minutes,
            });
        }
        within_retention(minutes, self.retention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::{Prior, PriorSource};

    fn config() -> SlotConfig {
        let from = crate::time::parse_rfc3339("2026-11-01T00:00:00Z").unwrap();
        SlotConfig::with_banners(
            "ajio",
            "hero",
            ["b1", "b2"],
            from,
            from + chrono::Duration::days(30),
        )
    }

    #[test]
    fn arms_sum_counts_per_city_and_pool_the_rest() {
        let mut priors = SlotPriors::uniform();
        priors.banners.insert(
            "b2".into(),
            Prior {
                alpha0: 2.0,
                beta0: 8.0,
                source: PriorSource::EmpiricalBayes,
            },
        );
        let counts = vec![
            (
                ArmKey::new("ajio", "hero", "pune", "b1"),
                Counts::new(100, 10),
            ),
            (
                ArmKey::new("ajio", "hero", "delhi", "b1"),
                Counts::new(50, 1),
            ),
            (
                ArmKey::new("ajio", "hero", "delhi", "b2"),
                Counts::new(40, 4),
            ),
            (
                ArmKey::new("ajio", "hero", "delhi", "retired"),
                Counts::new(1000, 900),
            ),
            (
                ArmKey::new("ajio", "footer", "delhi", "b1"),
                Counts::new(1000, 900),
            ),
        ];
        let entry = SlotEntry::build(config(), priors, &counts, &[]);
        let (pune, city) = entry.all_time.for_city("pune");
        assert_eq!(city, "pune");
        assert_eq!(pune.counts, [Counts::new(100, 10), Counts::ZERO]);
        let post: Vec<_> = pune.posteriors().collect();
        assert_eq!((post[0].alpha, post[0].beta), (11.0, 91.0));
        assert_eq!((post[1].alpha, post[1].beta), (2.0, 8.0), "prior only");
        // A city without counts decides from its prior alone, never from the pooled counts.
        let (agra, city) = entry.all_time.for_city("agra");
        assert_eq!(city, "agra");
        assert_eq!(agra.counts, [Counts::ZERO, Counts::ZERO]);
        let post: Vec<_> = agra.posteriors().collect();
        assert_eq!((post[0].alpha, post[0].beta), (1.0, 1.0));
        assert_eq!((post[1].alpha, post[1].beta), (2.0, 8.0));
        let pooled = &entry.all_time.all_cities;
        assert_eq!(pooled.counts, [Counts::new(150, 11), Counts::new(40, 4)]);
        assert!(entry.window(Some(60)).is_none());
    }

    #[test]
    fn kept_windows_are_the_services_and_each_tenants_own_up_to_its_limit() {
        let mut kept = KeptWindows::service([720]).with_fixed("ajio", [60, 1440]);
        assert_eq!(kept.of_tenant("ajio"), BTreeSet::from([60, 720, 1440]));
        assert_eq!(kept.of_tenant("zara"), BTreeSet::from([720]));
        for w in 0..MAX_TENANT_WINDOWS as u32 {
            kept.register("zara", 100 + w).unwrap();
        }
        kept.register("zara", 720).unwrap();
        kept.register("zara", 100).unwrap();
        let refused = kept.register("zara", 999).unwrap_err();
        assert!(matches!(refused, CacheError::TooManyWindows { .. }));
        // The fixed windows are outside the limit, and another tenant's registrations too.
        for w in 0..MAX_TENANT_WINDOWS as u32 {
            kept.register("ajio", 200 + w).unwrap();
        }
        assert!(kept.keeps("zara", 100) && !kept.keeps("ajio", 100));
        assert_eq!(kept.all().len(), 3 + 2 * MAX_TENANT_WINDOWS);
    }

    mod incremental {
        use super::*;
        use crate::bandit::{Prior, PriorSource};
        use crate::model::{CountKey, ShardKey, ALL_TIME};
        use crate::store::{EmbeddedStore, ShardWrite};
        use proptest::prelude::*;

        const TENANTS: [&str; 2] = ["ajio", "zara"];
        const SLOTS: [&str; 2] = ["hero", "side"];
        const CITIES: [&str; 3] = ["pune", "goa", "agra"];
        const BANNERS: [&str; 3] = ["b1", "b2", "b3"];
        /// The clock of every load: windows of 120 and 600 minutes start at fixed buckets.
        const NOW: &str = "2026-12-01T12:30:00Z";

        #[derive(Debug, Clone)]
        enum Op {
            /// Rows of one shard: (slot, banner, bucket offset from now's bucket, or all
            /// time, impressions, clicks), and whether buckets before now − 10 h expire (the
            /// retention the job keeps: before the longest window, which starts at now − 10 h).
            /// An expiry without rows leaves the shard's version and the cache as they were.
            Epoch {
                tenant: usize,
                city: usize,
                rows: Vec<(usize, usize, Option<i64>, u64, u64)>,
                expire: bool,
            },
            PutSlot {
                tenant: usize,
                slot: usize,
                banners: Vec<usize>,
            },
            Priors {
                tenant: usize,
                slot: usize,
                alpha0: f64,
                /// A city effect, on one of the cities.
                level: Option<(usize, f64)>,
            },
            /// An admin key of the tenant registers a window.
            Window { tenant: usize, minutes: u32 },
            /// Time passes: the windows' first buckets move when an hour starts. Unless `alone`,
            /// the next op is refreshed with it (a shard change and a window move in one refresh).
            Clock { minutes: i64, alone: bool },
        }

        fn op() -> impl Strategy<Value = Op> {
            let row = (
                0..SLOTS.len(),
                0..BANNERS.len(),
                prop::option::of(-12i64..1),
                0u64..50,
                0u64..5,
            );
            prop_oneof![
                4 => (0..TENANTS.len(), 0..CITIES.len(), prop::collection::vec(row, 0..6), any::<bool>())
                    .prop_map(|(tenant, city, rows, expire)| Op::Epoch { tenant, city, rows, expire }),
                1 => (0..TENANTS.len(), 0..SLOTS.len(), prop::collection::vec(0..BANNERS.len(), 1..4))
                    .prop_map(|(tenant, slot, banners)| Op::PutSlot { tenant, slot, banners }),
                1 => (0..TENANTS.len(), 0..SLOTS.len(), 0.5f64..20.0, prop::option::of((0..CITIES.len(), 0.2f64..5.0)))
                    .prop_map(|(tenant, slot, alpha0, level)| Op::Priors { tenant, slot, alpha0, level }),
                1 => (0..TENANTS.len(), prop::sample::select(vec![120u32, 180, 600]))
                    .prop_map(|(tenant, minutes)| Op::Window { tenant, minutes }),
                1 => (1i64..150, any::<bool>())
                    .prop_map(|(minutes, alone)| Op::Clock { minutes, alone }),
            ]
        }

        fn apply(store: &EmbeddedStore, windows: &mut KeptWindows, op: &Op, now_bucket: i64) {
            match op {
                Op::Clock { .. } => {}
                Op::Window { tenant, minutes } => {
                    windows.register(TENANTS[*tenant], *minutes).unwrap();
                }
                Op::Epoch {
                    tenant,
                    city,
                    rows,
                    expire,
                } => {
                    let (tenant, city) = (TENANTS[*tenant], CITIES[*city]);
                    let rows = rows
                        .iter()
                        .map(|&(slot, banner, bucket, imp, clk)| {
                            let arm = ArmKey::new(tenant, SLOTS[slot], city, BANNERS[banner]);
                            let bucket = bucket.map_or(ALL_TIME, |b| now_bucket + b);
                            (CountKey::new(Arc::new(arm), bucket), Counts::new(imp, clk))
                        })
                        .collect();
                    let write = ShardWrite {
                        rows,
                        keep_from: expire.then_some(now_bucket - 10),
                        ..ShardWrite::new(ShardKey::new(tenant, city))
                    };
                    store.apply_epoch(&[write]).unwrap();
                }
                Op::PutSlot {
                    tenant,
                    slot,
                    banners,
                } => {
                    let from = crate::time::parse_rfc3339("2026-11-01T00:00:00Z").unwrap();
                    let ids: BTreeSet<&str> = banners.iter().map(|&b| BANNERS[b]).collect();
                    let config = SlotConfig::with_banners(
                        TENANTS[*tenant],
                        SLOTS[*slot],
                        ids,
                        from,
                        from + chrono::Duration::days(60),
                    );
                    store.put_slot(&config).unwrap();
                }
                Op::Priors {
                    tenant,
                    slot,
                    alpha0,
                    level,
                } => {
                    let mut priors = SlotPriors::uniform();
                    priors.banners.insert(
                        "b2".into(),
                        Prior {
                            alpha0: *alpha0,
                            beta0: 10.0,
                            source: PriorSource::EmpiricalBayes,
                        },
                    );
                    if let Some((city, level)) = level {
                        let effect = crate::bandit::CityEffect {
                            level: *level,
                            clicks: 20.0,
                        };
                        priors.cities.insert(CITIES[*city].into(), effect);
                    }
                    store
                        .write_priors(TENANTS[*tenant], SLOTS[*slot], &priors)
                        .unwrap();
                }
            }
        }

        /// Per (tenant, slot): the configuration, priors, and each window's counts and
        /// posteriors per city and pooled.
        type Digest = BTreeMap<
            (String, String),
            (
                SlotConfig,
                SlotPriors,
                BTreeMap<(Option<u32>, String), Vec<(Counts, f64, f64)>>,
            ),
        >;

        fn digest(snapshot: &Snapshot) -> Digest {
            let mut out = Digest::new();
            for (tenant, slots) in &snapshot.slots {
                for (slot, entry) in slots.iter() {
                    let mut arms = BTreeMap::new();
                    let windows = std::iter::once((None, &entry.all_time))
                        .chain(entry.windows.iter().map(|(w, a)| (Some(*w), a)));
                    for (window, window_arms) in windows {
                        let cities = window_arms
                            .by_city
                            .iter()
                            .map(|(c, a)| (c.clone(), a.as_ref()))
                            .chain([
                                (ALL_CITIES.to_string(), &window_arms.all_cities),
                                (NEW_CITY.to_string(), &window_arms.new_city),
                            ]);
                        for (city, a) in cities {
                            let row = a
                                .counts
                                .iter()
                                .zip(a.posteriors())
                                .map(|(c, p)| (*c, p.alpha, p.beta))
                                .collect();
                            arms.insert((window, city), row);
                        }
                    }
                    out.insert(
                        (tenant.clone(), slot.clone()),
                        ((*entry.config).clone(), entry.priors.clone(), arms),
                    );
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

            #[test]
            fn an_incremental_refresh_equals_a_full_load(
                ops in prop::collection::vec(op(), 1..25),
                only_ajio in any::<bool>(),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let store = EmbeddedStore::open(&dir.path().join("s.redb"), true).unwrap();
                let mut now = crate::time::parse_rfc3339(NOW).unwrap();
                let mut windows = KeptWindows::service([600]);
                let scope = if only_ajio {
                    TenantScope::Only(BTreeSet::from(["ajio".to_string()]))
                } else {
                    TenantScope::All
                };
                let mut current = Snapshot::load(&store, &windows, now, &scope).unwrap();
                for (i, op) in ops.iter().enumerate() {
                    if let Op::Clock { minutes, .. } = op {
                        now += chrono::Duration::minutes(*minutes);
                    }
                    let now_bucket = store.buckets().unwrap().index(now);
                    apply(&store, &mut windows, op, now_bucket);
                    if matches!(op, Op::Clock { alone: false, .. }) && i + 1 < ops.len() {
                        continue;
                    }
                    let refreshed = Snapshot::refresh(Some(&current), &store, &windows, now, &scope)
                        .unwrap();
                    if let Refresh::Changed { snapshot, shards } = refreshed {
                        let written = usize::from(matches!(op, Op::Epoch { tenant, rows, .. }
                            if scope.serves(TENANTS[*tenant]) && !rows.is_empty()));
                        // A tenant with a new window is read whole.
                        if !matches!(op, Op::Window { .. }) {
                            prop_assert_eq!(shards, written, "{:?}", op);
                        }
                        current = *snapshot;
                    }
                    let full = Snapshot::load(&store, &windows, now, &scope).unwrap();
                    prop_assert_eq!(digest(&current), digest(&full), "after {:?}", op);
                    prop_assert_eq!(current.arms, full.arms);
                }
                // Nothing written: the marker has not moved and nothing is read.
                let again = Snapshot::refresh(Some(&current), &store, &windows, now, &scope).unwrap();
                prop_assert!(matches!(again, Refresh::Unchanged));
            }
        }
    }
}
