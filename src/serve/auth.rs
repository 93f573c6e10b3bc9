//! API keys: `Authorization: Bearer <key>`. A key belongs to one tenant and has a role (`serve`:
//! decide, click, read; `admin`: also configure slots). The store keeps only the key's SHA-256;
//! known keys are cached in memory (a lock-free map replaced on insert), so a request checks its
//! key without a store read once the key has been seen, and keeps working while the store is down
//! or slow (a key is re-read in the background once it is a minute old).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::future::{BoxFuture, FutureExt, Shared};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::store::{ApiKey, PosteriorStore, Role, StoreError};

/// How long a key found in the store is trusted without reading it again.
const KEY_TTL: Duration = Duration::from_secs(60);
const KEY_PREFIX: &str = "sbk_";

/// The SHA-256 of a key; the store keeps it in hex ([`stored_hash`]).
type KeyDigest = [u8; 32];

fn key_digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// The hex SHA-256 of a key, as stored.
fn stored_hash(digest: &KeyDigest) -> String {
    hex::encode(digest)
}

/// Makes a new random key for a tenant and role, stores its hash, and returns the key (the only
/// time it is seen).
pub fn create_key(
    store: &dyn PosteriorStore,
    tenant: &str,
    role: Role,
) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    store.put_api_key(
        &stored_hash(&key_digest(&key)),
        &ApiKey {
            tenant: tenant.to_string(),
            role,
        },
    )?;
    Ok(key)
}

/// The caller of a request, from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub role: Role,
}

impl Caller {
    /// Refuses (403) a key of another tenant or a role below `role`.
    pub fn require(&self, tenant: &str, role: Role) -> Result<(), ApiError> {
        if self.tenant != tenant {
            return Err(ApiError::forbidden(format!(
                "this API key belongs to tenant {:?}, not {tenant:?}",
                self.tenant
            )));
        }
        if self.role < role {
            return Err(ApiError::forbidden(format!(
                "this needs an API key with role {}; this key has role {}",
                role.as_str(),
                self.role.as_str()
            )));
        }
        Ok(())
    }
}

/// Key hashes seen in the store, with when they were read. A key older than [`KEY_TTL`] is
/// still answered from memory while one background read per key refreshes it (a revoked key
/// stops working once that read returns), so requests never wait on a slow or quorum-less store
/// for a key they have seen. Requests with a key not seen before share one read of it and wait
/// for it at most [`FIRST_READ_WAIT`].
pub struct KeyCache {
    keys: Arc<ArcSwap<HashMap<KeyDigest, (ApiKey, Instant)>>>,
    /// The reads under way, by hash.
    reading: Arc<Mutex<HashMap<KeyDigest, KeyRead>>>,
}

/// One read of a key from the store, which every request waiting for that key awaits.
type KeyRead = Shared<BoxFuture<'static, Result<Option<ApiKey>, String>>>;

/// How long a request with a key not seen before waits for the store to say whose it is.
const FIRST_READ_WAIT: Duration = Duration::from_secs(5);

impl KeyCache {
    pub fn new() -> Self {
        Self {
            keys: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            reading: Arc::default(),
        }
    }

    async fn lookup(
        &self,
        store: &Arc<dyn PosteriorStore>,
        key: &str,
    ) -> Result<Option<ApiKey>, ApiError> {
        let hash = key_digest(key);
        if let Some((found, at)) = self.keys.load().get(&hash) {
            if at.elapsed() >= KEY_TTL {
                // Not awaited: the read goes on and updates the cache when it returns.
                drop(self.read(store, hash));
            }
            return Ok(Some(found.clone()));
        }
        match tokio::time::timeout(FIRST_READ_WAIT, self.read(store, hash)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(Self::unchecked(&e)),
            Err(_) => Err(Self::unchecked(&format!(
                "the store did not answer within {FIRST_READ_WAIT:?}"
            ))),
        }
    }

    fn unchecked(detail: &str) -> ApiError {
        ApiError::unavailable(
            "store_unavailable",
            format!("cannot check the API key: {detail}"),
            5,
        )
    }

    /// The read of `hash` under way, or a new one; the cache takes what the store says (a key
    /// removed from the store leaves the cache).
    fn read(&self, store: &Arc<dyn PosteriorStore>, hash: KeyDigest) -> KeyRead {
        let mut reading = self
            .reading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(read) = reading.get(&hash) {
            return read.clone();
        }
        let (store, keys) = (store.clone(), self.keys.clone());
        // The mark is dropped by the task, which takes the lock first: the read is in the map
        // before the task can take it out.
        let mark = ReadMark {
            reading: self.reading.clone(),
            hash,
        };
        let task = tokio::task::spawn_blocking(move || {
            let _unmarked_when_done = mark;
            let found = store.api_key(&stored_hash(&hash));
            if let Ok(found) = &found {
                keys.rcu(|keys| {
                    let mut keys = HashMap::clone(keys);
                    match found {
                        Some(k) => keys.insert(hash, (k.clone(), Instant::now())),
                        None => keys.remove(&hash),
                    };
                    keys
                });
            }
            found
        });
        let read = async move {
            match task.await {
                Ok(found) => found.map_err(|e: StoreError| e.to_string()),
                Err(join) => Err(join.to_string()),
            }
        }
        .boxed()
        .shared();
        reading.insert(hash, read.clone());
        read
    }
}
/// A read's place in the map of reads under way; it goes when the read ends, however it ends (a
/// store call that panicked must not leave its key never read again).
struct ReadMark {
    reading: Arc<Mutex<HashMap<KeyDigest, KeyRead>>>,
    hash: KeyDigest,
}

impl Drop for ReadMark {
    fn drop(&mut self) {
        self.reading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.hash);
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let result = authenticate(parts, state).await;
        if result.is_err() {
            state.metrics.auth_failures.inc();
        }
        result
    }
}

async fn authenticate(parts: &Parts, state: &Arc<AppState>) -> Result<Caller, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized("an API key is required: Authorization: Bearer <key>")
        })?;
    let key = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
    match state.keys.lookup(state.cache.store(), key).await? {
        Some(k) => Ok(Caller {
            tenant: k.tenant,
            role: k.role,
        }),
        None => Err(ApiError::unauthorized("unknown API key")),
    }
}
