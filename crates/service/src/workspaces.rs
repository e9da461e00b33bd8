//! Session workspaces: the jail that executions naming the same `session_id` share (its files
//! stay between runs). Owned here, not by any API: a workspace lives while runs use it and
//! is destroyed after an idle timeout, or oldest-idle-first when the server is at capacity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runcell_engine::Engine;
use runcell_engine::model::now_ms;
use runcell_jail::Jail;

use crate::{Error, Service};

/// A workspace: a jail kept between runs so that they share files.
pub struct Workspace {
    /// The jail; locked for the duration of a run (runs of one session are serialized).
    pub jail: Mutex<Option<Jail>>,
    pub last_used: AtomicI64,
}

/// Live workspaces by (tenant, session id).
pub struct Workspaces {
    map: Mutex<HashMap<(String, String), Arc<Workspace>>>,
    max: usize,
    idle: Duration,
}

impl Workspaces {
    pub fn new(max: usize, idle: Duration) -> Workspaces {
        Workspaces {
            map: Mutex::new(HashMap::new()),
            max,
            idle,
        }
    }

    /// The session, created (without a jail yet) if new. At capacity, idle sessions are
    /// evicted oldest first; if none is idle the caller gets a 503.
    pub fn get(&self, engine: &Engine, tenant: &str, id: &str) -> Result<Arc<Workspace>, Error> {
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
                    return Err(Error::busy(
                        "TOO_MANY_SESSIONS",
                        format!(
                            "all {} sessions are busy; retry later or run without session_id",
                            self.max
                        ),
                    ));
                }
            }
        }
        let s = Arc::new(Workspace {
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

fn release(engine: &Engine, s: &Workspace) {
    if let Some(j) = s.jail.lock().unwrap_or_else(|p| p.into_inner()).take() {
        engine.release(j);
    }
}

/// Destroys idle workspaces, every 5 seconds.
pub(crate) async fn reaper(svc: Arc<Service>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = Arc::clone(&svc);
        let _ = tokio::task::spawn_blocking(move || s.workspaces.reap(&s.engine)).await;
    }
}
