//! API keys, tenants and rate limits.
//!
//! Every key is a tenant. Keys are never stored: the server keeps SHA-256 hashes, and a
//! tenant's id is derived from its key's hash, so objects stay with their tenant across
//! restarts without the key being written anywhere but the config.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

use runcell_engine::model::now_ms;
use runcell_store::Store;

use crate::config::Config;
use crate::{Error, Kind, Result, Service, StartError};

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

    /// Every tenant's id, sorted, each once.
    pub fn tenant_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.by_hash.values().cloned().collect();
        ids.sort();
        ids.dedup();
        ids
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// A token bucket per tenant: `per_minute` tokens, refilled continuously. With several nodes
/// on one database each node allows its share, `per_minute / nodes` (the live nodes, from the
/// heartbeat): behind a load balancer that spreads requests evenly a key gets its whole rate,
/// and never more than it, however requests are spread (docs/cluster.md).
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    nodes: std::sync::atomic::AtomicU32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1) as f64,
            nodes: std::sync::atomic::AtomicU32::new(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The number of live nodes sharing the rate (at least 1).
    pub fn set_nodes(&self, n: u32) {
        self.nodes
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes `n` tokens, or says in how many seconds there will be enough.
    pub fn take(&self, tenant: &str, n: u32) -> Result<(), u64> {
        let now = Instant::now();
        let nodes = self.nodes.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64;
        let per_minute = (self.per_minute / nodes).max(1.0);
        let per_sec = per_minute / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets
            .entry(tenant.to_string())
            .or_insert((per_minute, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(per_minute);
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

/// A tenant: who owns executions, sandboxes and their objects (one per API key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(pub String);

impl Tenant {
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// The keys of the server, and each tenant's rate limit.
pub struct Tenants {
    keys: Keys,
    rate: RateLimiter,
    per_minute: u32,
}

impl Tenants {
    /// Loads or creates the API keys: the configured ones, else those generated earlier
    /// (stored hashed), else a new one, printed once and saved next to the database.
    pub async fn load(config: &Config, store: &dyn Store) -> Result<Tenants, StartError> {
        let keys = if !config.api_keys.is_empty() {
            Keys::new(config.api_keys.iter().map(|k| {
                let h = hash_key(k);
                let t = tenant_of(&h);
                (h, t)
            }))
        } else {
            let stored = store.api_keys().await?;
            if !stored.is_empty() {
                Keys::new(stored)
            } else {
                let key = generate_key();
                let hash = hash_key(&key);
                let tenant = tenant_of(&hash);
                store.insert_api_key(&hash, &tenant, now_ms()).await?;
                let file = config.data_dir.join("initial-api-key");
                crate::write_private(&file, format!("{key}\n").as_bytes()).map_err(|e| {
                    StartError::Io {
                        what: format!("write {}", file.display()),
                        source: e,
                    }
                })?;
                eprintln!(
                    "runcell: created an API key (saved in {}; this is the only time it is \
                     printed):\n  {key}",
                    file.display()
                );
                Keys::new([(hash, tenant)])
            }
        };
        Ok(Tenants {
            keys,
            rate: RateLimiter::new(config.rate_limit_per_minute),
            per_minute: config.rate_limit_per_minute,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Every tenant's id, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.keys.tenant_ids()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant of a presented key (not yet charged to its rate limit).
    pub fn of_key(&self, key: &str) -> Result<Tenant> {
        match self.keys.tenant(key) {
            Some(t) => Ok(Tenant(t.to_string())),
            None => Err(Error::new(
                Kind::Unauthorized,
                "UNAUTHORIZED",
                "invalid API key",
            )),
        }
    }

    /// Spends `n` requests of `tenant`'s rate limit.
    pub fn spend(&self, tenant: &Tenant, n: u32) -> Result<()> {
        self.rate.take(&tenant.0, n).map_err(|retry| {
            Error::limit(
                "RATE_LIMITED",
                format!(
                    "rate limit of {} requests per minute exceeded; retry in {retry} s",
                    self.per_minute
                ),
            )
            .retry_after(retry)
        })
    }
}

impl Service {
    /// The tenant of an API key, charged one request of its rate limit.
    pub fn authenticate(&self, key: &str) -> Result<Tenant> {
        let t = self.tenants.of_key(key)?;
        self.tenants.spend(&t, 1)?;
        Ok(t)
    }

    /// The tenant of an API key, not charged to its rate limit: for reads a dialect's clients
    /// make in a tight loop (Judge0's SDK polls its own submissions every 100 ms).
    pub fn identify(&self, key: &str) -> Result<Tenant> {
        self.tenants.of_key(key)
    }

    /// The number of live nodes that share each key's rate limit.
    pub(crate) fn share_rate_between(&self, nodes: u32) {
        self.tenants.rate.set_nodes(nodes);
    }

    /// Charges `n` more requests to `tenant`'s rate limit (a batch of N counts as N).
    pub fn spend(&self, tenant: &Tenant, n: u32) -> Result<()> {
        self.tenants.spend(tenant, n)
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

    #[test]
    fn nodes_share_a_keys_rate() {
        let r = RateLimiter::new(60);
        r.set_nodes(3);
        // This node's share: 20 a minute.
        assert!(r.take("a", 20).is_ok());
        assert!(r.take("a", 1).is_err());
        // Back to one node: the whole rate, refilled at its pace.
        r.set_nodes(0);
        assert!(r.take("c", 60).is_ok());
        assert!(r.take("c", 1).is_err());
    }
}
