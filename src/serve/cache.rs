//! The posterior cache: every configured slot with its banners, priors and posteriors per city
//! (and pooled over cities), loaded from the store and replaced whole on every refresh. Readers
//! load the current snapshot through an `ArcSwap` (an atomic pointer and a reference count), so
//! the decision path takes no lock and a slow or failing store never blocks it: decisions keep
//! coming from the last good snapshot, whose age is reported.
//!
//! Windows (the seed's `pastmin`): besides the all-time posteriors, a snapshot holds windowed
//! posteriors (counts of the whole buckets that start at or after now − W) for each window in a
//! small registered set; a request for a new window registers it and waits for one load.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};

use crate::bandit::{BetaPosterior, SlotPolicy, SlotPriors};
use crate::model::{pool_cities, ArmKey, Counts, SlotConfig, ALL_CITIES};
use crate::store::{CountQuery, PosteriorStore, StoreError};

/// Counts per arm, as the store answers them.
type ArmRows = Vec<(ArmKey, Counts)>;

/// At most this many distinct windows are kept per service.
pub const MAX_WINDOWS: usize = 8;

/// One city's (or the pooled) arms of a slot: counts per banner in config order, and the
/// prepared Thompson policy.
#[derive(Debug, Clone)]
pub struct Arms {
    pub counts: Vec<Counts>,
    pub policy: SlotPolicy,
}

impl Arms {
    fn new(config: &SlotConfig, priors: &SlotPriors, counts: Vec<Counts>) -> Self {
        let mut i = 0;
        let policy = SlotPolicy::new(config, |b| {
            let c = counts[i];
            i += 1;
            priors.for_banner(&b.id).posterior(c.impressions, c.clicks)
        });
        Self { counts, policy }
    }

    pub fn posteriors(&self) -> impl Iterator<Item = BetaPosterior> + '_ {
        self.policy.candidates().iter().map(|c| c.posterior)
    }
}

/// A slot's arms for one window: per city with counts, and pooled over every city (the
/// fallback for a city without counts).
#[derive(Debug, Clone)]
pub struct WindowArms {
    pub by_city: HashMap<String, Arms>,
    pub all_cities: Arms,
}

impl WindowArms {
    /// The arms to decide with for `city`, and the city whose posterior they are (`*` when the
    /// city has no counts).
    pub fn for_city(&self, city: &str) -> (&Arms, &str) {
        match self.by_city.get_key_value(city) {
            Some((c, arms)) => (arms, c.as_str()),
            None => (&self.all_cities, ALL_CITIES),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SlotEntry {
    pub config: SlotConfig,
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
        let arms = |counts: &[(ArmKey, Counts)]| {
            let index: HashMap<&str, usize> = config
                .banners
                .iter()
                .enumerate()
                .map(|(i, b)| (b.id.as_str(), i))
                .collect();
            // Counts of other slots, and of banners no longer configured, are not shown.
            let slot_rows = counts.iter().filter_map(|(arm, c)| {
                let mine = arm.tenant == config.tenant && arm.slot == config.slot;
                let i = *index.get(arm.banner.as_str()).filter(|_| mine)?;
                Some((arm, i, *c))
            });
            let mut cities: HashMap<String, Vec<Counts>> = HashMap::new();
            for (arm, i, c) in slot_rows.clone() {
                cities
                    .entry(arm.city.clone())
                    .or_insert_with(|| vec![Counts::ZERO; config.banners.len()])[i] += c;
            }
            let mut pooled = vec![Counts::ZERO; config.banners.len()];
            for (arm, c) in pool_cities(slot_rows.map(|(arm, _, c)| (arm, c))) {
                pooled[index[arm.banner.as_str()]] = c;
            }
            WindowArms {
                by_city: cities
                    .into_iter()
                    .map(|(c, counts)| (c, Arms::new(&config, &priors, counts)))
                    .collect(),
                all_cities: Arms::new(&config, &priors, pooled),
            }
        };
        let all_time_arms = arms(all_time);
        let windows = windows.iter().map(|(w, c)| (*w, arms(c))).collect();
        Self {
            all_time: all_time_arms,
            windows,
            config,
            priors,
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

/// Everything the service decides from, as of one load.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// tenant → slot → entry (nested so that lookups borrow the request's strings).
    pub slots: HashMap<String, HashMap<String, Arc<SlotEntry>>>,
    pub loaded_at: Instant,
    pub loaded_at_utc: DateTime<Utc>,
    /// The store's "as of" instant (end of the last backfill), if recorded.
    pub store_as_of: Option<DateTime<Utc>>,
}

impl Snapshot {
    pub fn slot(&self, tenant: &str, slot: &str) -> Option<&Arc<SlotEntry>> {
        self.slots.get(tenant)?.get(slot)
    }

    pub fn slot_count(&self) -> usize {
        self.slots.values().map(HashMap::len).sum()
    }

    /// Reads every configured slot with its priors and counts from the store.
    pub fn load(
        store: &dyn PosteriorStore,
        windows: &[u32],
        now: DateTime<Utc>,
    ) -> Result<Snapshot, StoreError> {
        let buckets = store.buckets()?;
        let mut by_tenant: HashMap<String, Vec<String>> = HashMap::new();
        for (tenant, slot) in store.slots(None)? {
            by_tenant.entry(tenant).or_default().push(slot);
        }
        let mut slots: HashMap<String, HashMap<String, Arc<SlotEntry>>> = HashMap::new();
        for (tenant, names) in by_tenant {
            let query = |from_bucket| CountQuery {
                tenant: Some(tenant.clone()),
                from_bucket,
                ..Default::default()
            };
            let all_time = store.counts(&query(None))?;
            let windowed = windows
                .iter()
                .map(|&w| {
                    let from = buckets.first_in_window(now, w);
                    Ok((w, store.counts(&query(Some(from)))?))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let entries = slots.entry(tenant.clone()).or_default();
            for name in names {
                let Some(config) = store.slot(&tenant, &name)? else {
                    continue;
                };
                let priors = store.priors(&tenant, &name)?;
                let entry = SlotEntry::build(config, priors, &all_time, &windowed);
                entries.insert(name, Arc::new(entry));
            }
        }
        Ok(Snapshot {
            slots,
            loaded_at: Instant::now(),
            loaded_at_utc: now,
            store_as_of: store.as_of()?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the store is unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("at most {MAX_WINDOWS} distinct windows are kept (kept: {0})")]
    TooManyWindows(String),
    #[error("the cache load was cancelled")]
    Cancelled,
}

/// The shared cache: the current snapshot and the windows to keep.
pub struct PosteriorCache {
    store: Arc<dyn PosteriorStore>,
    current: ArcSwapOption<Snapshot>,
    windows: Mutex<BTreeSet<u32>>,
    /// Serializes loads, so that a refresh asked for by a request waits for a load that
    /// started after its write.
    loading: tokio::sync::Mutex<()>,
    last_error: Mutex<Option<String>>,
}

impl PosteriorCache {
    pub fn new(store: Arc<dyn PosteriorStore>, windows: impl IntoIterator<Item = u32>) -> Self {
        Self {
            store,
            current: ArcSwapOption::empty(),
            windows: Mutex::new(windows.into_iter().collect()),
            loading: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(None),
        }
    }

    /// The current snapshot (`None` before the first successful load). Lock-free.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn age(&self) -> Option<Duration> {
        self.current.load().as_ref().map(|s| s.loaded_at.elapsed())
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }

    pub fn store(&self) -> &Arc<dyn PosteriorStore> {
        &self.store
    }

    /// Loads a new snapshot from the store (on a blocking thread) and installs it. On failure
    /// the previous snapshot stays.
    pub async fn refresh(&self) -> Result<Arc<Snapshot>, CacheError> {
        let _guard = self.loading.lock().await;
        let windows: Vec<u32> = self
            .windows
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .collect();
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            Snapshot::load(store.as_ref(), &windows, Utc::now())
        })
        .await
        .map_err(|_| CacheError::Cancelled)?;
        match loaded {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                self.current.store(Some(snapshot.clone()));
                *self.last_error.lock().expect("not poisoned") = None;
                Ok(snapshot)
            }
            Err(e) => {
                *self.last_error.lock().expect("not poisoned") = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    /// Makes sure `minutes` is a kept window and a snapshot holding it is installed.
    pub async fn ensure_window(&self, minutes: u32) -> Result<Arc<Snapshot>, CacheError> {
        {
            let mut windows = self.windows.lock().expect("not poisoned");
            if !windows.contains(&minutes) {
                if windows.len() >= MAX_WINDOWS {
                    let kept: Vec<String> = windows.iter().map(u32::to_string).collect();
                    return Err(CacheError::TooManyWindows(kept.join(", ")));
                }
                windows.insert(minutes);
            }
        }
        self.refresh().await
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
        let (pooled, city) = entry.all_time.for_city("agra");
        assert_eq!(city, "*");
        assert_eq!(pooled.counts, [Counts::new(150, 11), Counts::new(40, 4)]);
        assert!(entry.window(Some(60)).is_none());
    }
}
