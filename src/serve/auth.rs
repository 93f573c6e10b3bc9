//! API keys: `Authorization: Bearer <key>`. A key belongs to one tenant and has a role (`serve`:
//! decide, click, read; `admin`: also configure slots). The store keeps only the key's SHA-256;
//! known keys are cached in memory (a lock-free map replaced on insert), so a request checks its
//! key without a store read once the key has been seen, and keeps working while the store is down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::store::{ApiKey, PosteriorStore, Role, StoreError};

/// How long a key found in the store is trusted without reading it again.
const KEY_TTL: Duration = Duration::from_secs(60);
const KEY_PREFIX: &str = "sbk_";

/// The hex SHA-256 of a key, as stored.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
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
        &key_hash(&key),
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

/// Key hashes seen in the store, with when they were read.
pub struct KeyCache {
    keys: ArcSwap<HashMap<String, (ApiKey, Instant)>>,
}

impl KeyCache {
    pub fn new() -> Self {
        Self {
            keys: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    async fn lookup(
        &self,
        store: &Arc<dyn PosteriorStore>,
        key: &str,
    ) -> Result<Option<ApiKey>, ApiError> {
        let hash = key_hash(key);
        let cached = self.keys.load().get(&hash).cloned();
        if let Some((found, at)) = &cached {
            if at.elapsed() < KEY_TTL {
                return Ok(Some(found.clone()));
            }
        }
        let store = store.clone();
        let h = hash.clone();
        let read = tokio::task::spawn_blocking(move || store.api_key(&h)).await;
        match read {
            Ok(Ok(found)) => {
                self.keys.rcu(|keys| {
                    let mut keys = HashMap::clone(keys);
                    match &found {
                        Some(k) => keys.insert(hash.clone(), (k.clone(), Instant::now())),
                        None => keys.remove(&hash),
                    };
                    keys
                });
                Ok(found)
            }
            // The store is down: a key seen before stays good; an unseen one cannot be checked.
            _ if cached.is_some() => Ok(cached.map(|(k, _)| k)),
            Ok(Err(e)) => Err(ApiError::unavailable(
                "store_unavailable",
                format!("cannot check the API key: {e}"),
                5,
            )),
            Err(e) => Err(ApiError::unavailable("store_unavailable", e.to_string(), 5)),
        }
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
