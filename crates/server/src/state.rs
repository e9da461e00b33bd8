//! Shared server state.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc::UnboundedReceiver;

use runcell_engine::{Cancel, Engine};
use runcell_jail::Jail;
use runcell_store::Store;

use crate::api::LanguageInfo;
use crate::auth::{Keys, RateLimiter};
use crate::config::Config;
use crate::error::ApiError;
use crate::fair::{Fair, FairLimits, Slot};
use crate::webhook::Webhooks;

/// The state every handler sees (cheap to clone).
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    pub config: Config,
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub rate: RateLimiter,
    pub jobs: Jobs,
    pub sessions: Sessions,
    pub webhooks: Arc<Webhooks>,
    pub metrics: PrometheusHandle,
    pub languages: Vec<LanguageInfo>,
    pub sandboxes: Arc<crate::sandboxes::Sandboxes>,
}

/// Coordination of running work.
pub struct Jobs {
    /// Execution slots, shared fairly between tenants.
    pub fair: Arc<Fair>,
    /// Slots granted to queued async executions, taken by the dispatcher.
    pub grants: Mutex<Option<UnboundedReceiver<(String, Slot)>>>,
    /// Cancellation handles of running executions.
    pub running: Mutex<HashMap<String, Cancel>>,
}

impl Jobs {
    pub fn new(limits: FairLimits) -> Jobs {
        let (fair, grants) = Fair::new(limits);
        Jobs {
            fair,
            grants: Mutex::new(Some(grants)),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Work accepted but not running.
    pub fn queued(&self) -> u64 {
        self.fair.queued() as u64
    }

    pub fn register(&self, id: &str, cancel: Cancel) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), cancel);
    }

    pub fn unregister(&self, id: &str) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Cancels a running execution; false if it is not running here.
    pub fn cancel(&self, id: &str) -> bool {
        match self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }
}

/// A session: a jail kept between runs so that they share a workspace.
pub struct Session {
    /// The jail; locked for the duration of a run (runs of one session are serialized).
    pub jail: Mutex<Option<Jail>>,
    pub last_used: AtomicI64,
}

/// Live sessions by (tenant, session id).
pub struct Sessions {
    map: Mutex<HashMap<(String, String), Arc<Session>>>,
    max: usize,
    idle: Duration,
}

pub use runcell_engine::model::now_ms;

impl Sessions {
    pub fn new(max: usize, idle: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            max,
            idle,
        }
    }

    /// The session, created (without a jail yet) if new. At capacity, idle sessions are
    /// evicted oldest first; if none is idle the caller gets a 503.
    pub fn get(&self, engine: &Engine, tenant: &str, id: &str) -> Result<Arc<Session>, ApiError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_string(), id.to_string());
        if let Some(s) = map.get(&key) {
            s.last_used.store(now_ms(), Ordering::SeqCst);
            return Ok(Arc::clone(s));
        }
        if map.len() >= self.max {
            let mut idle: Vec<((String, String), i64)> = map
                .iter()
                .filter(|(_, s)| Arc::strong_count(s) == 1)
                .map(|(k, s)| (k.clone(), s.last_used.load(Ordering::SeqCst)))
                .collect();
            idle.sort_by_key(|(_, t)| *t);
            match idle.first() {
                Some((k, _)) => {
                    if let Some(s) = map.remove(k) {
                        release(engine, &s);
                    }
                }
                None => {
                    return Err(ApiError::unavailable(
                        "TOO_MANY_SESSIONS",
                        format!(
                            "all {} sessions are busy; retry later or run without session_id",
                            self.max
                        ),
                    ));
                }
            }
        }
        let s = Arc::new(Session {
            jail: Mutex::new(None),
            last_used: AtomicI64::new(now_ms()),
        });
        map.insert(key, Arc::clone(&s));
        Ok(s)
    }

    /// Destroys sessions idle for longer than the idle timeout.
    pub fn reap(&self, engine: &Engine) {
        let cutoff = now_ms() - self.idle.as_millis() as i64;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let expired: Vec<(String, String)> = map
            .iter()
            .filter(|(_, s)| {
                Arc::strong_count(s) == 1 && s.last_used.load(Ordering::SeqCst) < cutoff
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(s) = map.remove(&k) {
                release(engine, &s);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn release(engine: &Engine, s: &Session) {
    if let Some(j) = s.jail.lock().unwrap_or_else(|p| p.into_inner()).take() {
        engine.release(j);
    }
}
