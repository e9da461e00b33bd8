//! Pre-started sandboxes: a jail with the default budget and a warmed default context, so that
//! creating a sandbox and running its first code does not wait for a kernel to start.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runcell_engine::Engine;

use crate::{Sandbox, SandboxBudget, SandboxConfig};

/// A pool of ready sandboxes with one budget and no extra environment.
pub struct WarmPool {
    engine: Arc<Engine>,
    cfg: Arc<SandboxConfig>,
    budget: SandboxBudget,
    language: String,
    size: usize,
    ready: Mutex<VecDeque<Arc<Sandbox>>>,
    filling: AtomicBool,
    closed: AtomicBool,
}

impl WarmPool {
    /// A pool of `size` sandboxes (0: none) of `budget`, each with a started and warmed default
    /// context of `language`. Call [`WarmPool::fill`] to start filling it.
    pub fn new(
        engine: Arc<Engine>,
        cfg: Arc<SandboxConfig>,
        budget: SandboxBudget,
        language: &str,
        size: usize,
    ) -> Arc<WarmPool> {
        Arc::new(WarmPool {
            engine,
            cfg,
            budget,
            language: language.to_string(),
            size,
            ready: Mutex::new(VecDeque::new()),
            filling: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// Sandboxes ready now.
    pub fn ready(&self) -> usize {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A ready sandbox for a request with this budget and environment, if the pool has one.
    /// Refilling starts in the background.
    pub fn take(self: &Arc<Self>, budget: &SandboxBudget, env_empty: bool) -> Option<Arc<Sandbox>> {
        if *budget != self.budget || !env_empty {
            return None;
        }
        let sb = loop {
            let s = self
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()?;
            // A pooled kernel that died (it should not) is not handed out.
            if s.contexts().iter().all(|c| !c.is_deleted()) && s.closed_reason().is_none() {
                break s;
            }
            std::thread::spawn(move || s.destroy("discarded"));
        };
        self.fill();
        Some(sb)
    }

    /// Tops the pool up in the background (one filler at a time).
    pub fn fill(self: &Arc<Self>) {
        if self.size == 0 || self.closed.load(Ordering::SeqCst) {
            return;
        }
        if self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            while me.ready() < me.size && !me.closed.load(Ordering::SeqCst) {
                match me.make().await {
                    Ok(sb) => {
                        failures = 0;
                        if me.closed.load(Ordering::SeqCst) {
                            tokio::task::spawn_blocking(move || sb.destroy("discarded"));
                            break;
                        }
                        me.ready
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push_back(sb);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!("pre-starting a sandbox failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1 << failures.min(6))).await;
                    }
                }
            }
            me.filling.store(false, Ordering::SeqCst);
        });
    }

    async fn make(&self) -> Result<Arc<Sandbox>, crate::SandboxError> {
        let engine = Arc::clone(&self.engine);
        let cfg = Arc::clone(&self.cfg);
        let budget = self.budget;
        let sb = tokio::task::spawn_blocking(move || {
            Sandbox::create(engine, crate::ids::sandbox_id(), budget, Vec::new(), cfg)
        })
        .await
        .map_err(|e| crate::SandboxError::Kernel(e.to_string()))??;
        let warm = async {
            let ctx = sb.default_context(&self.language).await?;
            sb.warm_up(&ctx).await
        };
        if let Err(e) = warm.await {
            let s = Arc::clone(&sb);
            tokio::task::spawn_blocking(move || s.destroy("discarded"));
            return Err(e);
        }
        Ok(sb)
    }

    /// Destroys the ready sandboxes and stops refilling (blocking).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let all: Vec<_> = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for s in all {
            s.destroy("discarded");
        }
    }
}
