//! Jails prepared ahead of requests, and destroyed after them, off the request's path.
//!
//! A filler thread keeps `target` jails prepared (namespaces, cgroup, root filesystem,
//! workspace): a request takes one and only sets its limits. A reaper thread destroys used
//! jails after their results have been returned. Every pooled jail is fresh: none is ever used
//! for two requests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use runcell_jail::{CgroupLimits, Jail, JailConfig, JailError, Spawner};

struct Inner {
    spawner: Spawner,
    config: JailConfig,
    limits: CgroupLimits,
    target: usize,
    ready: Mutex<VecDeque<Jail>>,
    wake: Condvar,
    stop: AtomicBool,
}

/// How long the reaper gathers released jails before it hands them to the spawner. Their
/// processes are already killed; only the slot and group are freed that much later.
const RELEASE_GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// A pool of prepared jails with a background filler and reaper.
pub struct JailPool {
    inner: Arc<Inner>,
    reaper: Mutex<Option<Sender<Jail>>>,
}

impl JailPool {
    /// Keeps `target` jails prepared with `config` and `limits` (0: prepare on demand only).
    pub fn new(spawner: Spawner, config: JailConfig, limits: CgroupLimits, target: usize) -> Self {
        let inner = Arc::new(Inner {
            spawner,
            config,
            limits,
            target,
            ready: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        if target > 0 {
            let filler = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("runcell-jail-pool".into())
                .spawn(move || fill(&filler))
                .expect("start the jail pool thread");
        }
        let (tx, rx) = channel::<Jail>();
        std::thread::Builder::new()
            .name("runcell-jail-reaper".into())
            .spawn(move || {
                // Everything queued meanwhile is released in one request to the spawner, which
                // frees each slot once the jail's processes are gone, without making this
                // thread (or the callers queued behind it) wait for the teardowns.
                // The thread then waits a moment before it asks, so that under load the jails
                // released meanwhile go in the same request (one round trip to the spawner,
                // and one turn on it taken from the requests' path, per few jails).
                while let Ok(jail) = rx.recv() {
                    std::thread::sleep(RELEASE_GATHER);
                    let mut batch = vec![jail];
                    batch.extend(rx.try_iter());
                    let _ = Jail::release_all(batch);
                }
            })
            .expect("start the jail reaper thread");
        JailPool {
            inner,
            reaper: Mutex::new(Some(tx)),
        }
    }

    /// A prepared jail: from the pool if one is ready, else prepared now.
    pub fn take(&self) -> Result<Jail, JailError> {
        let jail = self
            .inner
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        self.inner.wake.notify_one();
        match jail {
            Some(j) => Ok(j),
            None => self
                .inner
                .spawner
                .prepare(&self.inner.config, &self.inner.limits),
        }
    }

    /// Destroys a used jail in the background: its processes are killed now, its slot is
    /// freed by the reaper.
    pub fn release(&self, jail: Jail) {
        jail.kill();
        let tx = self.reaper.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => {
                if let Err(e) = tx.send(jail) {
                    drop(e.0);
                }
            }
            None => drop(jail),
        }
    }

    /// Jails ready right now.
    pub fn ready(&self) -> usize {
        self.inner
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The spawner behind the pool.
    pub fn spawner(&self) -> &Spawner {
        &self.inner.spawner
    }
}

impl Drop for JailPool {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
        self.inner
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // Closing the channel ends the reaper after it has destroyed what it holds.
        drop(self.reaper.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

fn fill(inner: &Inner) {
    let mut backoff = Duration::from_millis(50);
    loop {
        {
            let mut ready = inner.ready.lock().unwrap_or_else(|p| p.into_inner());
            while !inner.stop.load(Ordering::SeqCst) && ready.len() >= inner.target {
                ready = inner.wake.wait(ready).unwrap_or_else(|p| p.into_inner());
            }
        }
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        match inner.spawner.prepare(&inner.config, &inner.limits) {
            Ok(jail) => {
                backoff = Duration::from_millis(50);
                let mut ready = inner.ready.lock().unwrap_or_else(|p| p.into_inner());
                if inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                ready.push_back(jail);
            }
            Err(e) => {
                // Out of slots or a transient failure: requests still prepare on demand.
                tracing::warn!("preparing a pooled jail failed: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
