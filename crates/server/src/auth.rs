//! API keys, tenants and rate limits.
//!
//! Every key is a tenant. Keys are never stored: the server keeps SHA-256 hashes, and a
//! tenant's id is derived from its key's hash, so objects stay with their tenant across
//! restarts without the key being written anywhere but the config.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// SHA-256 of a key, hex.
pub fn hash_key(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tenant id of a key hash.
pub fn tenant_of(key_hash: &str) -> String {
    format!("t_{}", &key_hash[..24.min(key_hash.len())])
}

/// A new random API key.
pub fn generate_key() -> String {
    format!("rc_{}", random_token(32))
}

/// `n` random bytes, base64url without padding.
pub fn random_token(n: usize) -> String {
    use base64::Engine as _;
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the kernel's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Known key hashes and their tenants.
#[derive(Debug, Default)]
pub struct Keys {
    by_hash: HashMap<String, String>,
}

impl Keys {
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Keys {
        Keys {
            by_hash: pairs.into_iter().collect(),
        }
    }

    /// The tenant of a presented key.
    pub fn tenant(&self, key: &str) -> Option<&str> {
        self.by_hash.get(&hash_key(key)).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// A token bucket per tenant: `per_minute` tokens, refilled continuously.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` tokens, or says in how many seconds there will be enough.
    pub fn take(&self, tenant: &str, n: u32) -> Result<(), u64> {
        let now = Instant::now();
        let per_sec = self.per_minute / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets
            .entry(tenant.to_string())
            .or_insert((self.per_minute, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(self.per_minute);
        *at = now;
        let need = n as f64;
        if *tokens >= need {
            *tokens -= need;
            Ok(())
        } else {
            Err(((need - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// The caller's tenant, from `X-API-Key: K` or `Authorization: Bearer K`. Taking it also
/// spends one request of the tenant's rate limit.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

pub fn presented_key(parts: &Parts) -> Option<&str> {
    if let Some(v) = parts.headers.get("x-api-key") {
        return v.to_str().ok().map(str::trim);
    }
    let auth = parts.headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Tenant {
    /// Spends `n` more requests of this tenant's rate limit.
    pub fn spend(&self, state: &AppState, n: u32) -> Result<(), ApiError> {
        state.rate.take(&self.0, n).map_err(|retry| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!(
                    "rate limit of {} requests per minute exceeded; retry in {retry} s",
                    state.config.rate_limit_per_minute
                ),
            );
            e.retry_after = Some(retry);
            e
        })
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(key) = presented_key(parts) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "missing API key: send it as `X-API-Key: <key>` or `Authorization: Bearer <key>`",
            ));
        };
        let Some(tenant) = state.keys.tenant(key) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "invalid API key",
            ));
        };
        let t = Tenant(tenant.to_string());
        t.spend(state, 1)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_stable_tenants() {
        let h = hash_key("secret-key-123456");
        assert_eq!(h.len(), 64);
        let keys = Keys::new([(h.clone(), tenant_of(&h))]);
        assert_eq!(
            keys.tenant("secret-key-123456"),
            Some(tenant_of(&h).as_str())
        );
        assert_eq!(keys.tenant("other"), None);
        assert!(generate_key().starts_with("rc_"));
        assert_ne!(generate_key(), generate_key());
    }

    #[test]
    fn buckets_refuse_then_refill() {
        let r = RateLimiter::new(60);
        assert!(r.take("a", 60).is_ok());
        let retry = r.take("a", 1).unwrap_err();
        assert!((1..=2).contains(&retry), "{retry}");
        assert!(r.take("b", 10).is_ok(), "tenants are separate");
        assert_eq!(r.take("b", 100).unwrap_err(), 50);
    }
}
