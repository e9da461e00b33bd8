//! The sandboxes of this server: live ones (their jails, contexts and runs) and the records of
//! all of them in the store; creation with limits checked against the configuration, expiry,
//! deletion, recovery after a restart, access by tenant or by a sandbox's own token, and signed
//! artifact links.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use runcell_engine::Engine;
use runcell_engine::model::{rfc3339, unix_ms};
use runcell_sandbox::model::{Artifact, CodeRun, RunStatus};
use runcell_sandbox::{
    Finished, Run, RunObserver, Sandbox, SandboxBudget, SandboxConfig, SandboxError, WarmPool, ids,
};
use runcell_store::{ArtifactRow, CodeRunRow, NewSandbox, SandboxRow, SandboxStatus, Store};

use crate::auth::hash_key;
use crate::config::{SandboxLimits, SandboxesConfig};
use crate::error::ApiError;
use crate::state::now_ms;

/// Why sandboxes end (stored as the record's `end_reason`).
pub const DELETED: &str = "deleted";
pub const EXPIRED: &str = "expired";
pub const RESTARTED: &str =
    "terminated: the server restarted, and processes in a sandbox do not survive a restart";

/// `POST /v1/sandboxes`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct CreateSandbox {
    /// Lifetime in seconds.
    pub timeout_secs: Option<Value>,
    pub limits: Option<LimitsRequest>,
    /// Environment variables of every process in the sandbox.
    #[schema(value_type = Object)]
    pub env: Option<Value>,
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
    /// Must be false (or absent): sandboxes have no network.
    pub network: Option<Value>,
}

/// Requested limits; absent ones take the server's defaults.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct LimitsRequest {
    pub memory_mb: Option<Value>,
    pub cpus: Option<Value>,
    pub max_processes: Option<Value>,
    pub disk_mb: Option<Value>,
}

/// What is stored as a sandbox record's `spec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub limits: SandboxLimits,
    pub metadata: Map<String, Value>,
    pub timeout_secs: u64,
    /// Names only: values may be secrets.
    pub env_keys: Vec<String>,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SandboxObject {
    pub id: String,
    /// `running` or `terminated`.
    pub status: String,
    /// Only in the answer to the creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub timeout_secs: u64,
    pub limits: SandboxLimits,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub network: bool,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxObject>,
    pub next_cursor: Option<String>,
}

/// A live sandbox.
pub struct Live {
    pub sandbox: Arc<Sandbox>,
    pub tenant: String,
    pub token_hash: String,
    pub created_at: i64,
    pub expires_at: AtomicI64,
    pub spec: Spec,
    /// Runs not finished, and finished ones for a minute (until their record is written).
    pub runs: Mutex<HashMap<String, Arc<Run>>>,
}

impl Live {
    pub fn id(&self) -> &str {
        self.sandbox.id()
    }

    pub fn object(&self) -> SandboxObject {
        SandboxObject {
            id: self.id().to_string(),
            status: "running".into(),
            access_token: None,
            created_at: ms_rfc3339(self.created_at),
            expires_at: ms_rfc3339(self.expires_at.load(Ordering::SeqCst)),
            timeout_secs: self.spec.timeout_secs,
            limits: self.spec.limits,
            metadata: self.spec.metadata.clone(),
            network: false,
            ended_at: None,
            end_reason: None,
        }
    }

    pub fn run(&self, id: &str) -> Option<Arc<Run>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Live runs (unfinished first is not guaranteed).
    pub fn live_runs(&self) -> Vec<Arc<Run>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

pub fn ms_rfc3339(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Cred {
    /// A tenant's API key.
    Tenant(String),
    /// A sandbox's own access token (hashed).
    Token(String),
}

/// A record change to write, in order.
enum Write {
    Run {
        tenant: String,
        doc: Box<CodeRun>,
        /// Told once the change is written (for final documents: the answer waits for it).
        done: Option<oneshot::Sender<()>>,
    },
}

/// Writes run records in the order their changes happened.
struct Observer {
    tenant: String,
    tx: mpsc::UnboundedSender<Write>,
}

impl RunObserver for Observer {
    fn changed(&self, run: &CodeRun) {
        let _ = self.tx.send(Write::Run {
            tenant: self.tenant.clone(),
            doc: Box::new(run.clone()),
            done: None,
        });
    }

    fn finished(&self, run: &CodeRun) -> Finished {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Write::Run {
            tenant: self.tenant.clone(),
            doc: Box::new(run.clone()),
            done: Some(tx),
        });
        // Resolves once the writer has recorded the run and its artifacts (or given up on a
        // broken store, which it logs); an answer that reports the end waits for this.
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

fn status_of(s: RunStatus) -> runcell_store::RunStatus {
    match s {
        RunStatus::Queued => runcell_store::RunStatus::Queued,
        RunStatus::Running => runcell_store::RunStatus::Running,
        RunStatus::Succeeded => runcell_store::RunStatus::Succeeded,
        RunStatus::Failed => runcell_store::RunStatus::Failed,
        RunStatus::Cancelled => runcell_store::RunStatus::Cancelled,
    }
}

/// The sandboxes of the server.
pub struct Sandboxes {
    pub cfg: SandboxesConfig,
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    scfg: Arc<SandboxConfig>,
    pool: Arc<WarmPool>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    signing_key: Vec<u8>,
    retention_ms: i64,
    writes: mpsc::UnboundedSender<Write>,
}

/// Reads the artifact signing key from `path`, creating it (0600) on first start.
fn signing_key(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) | Err(_) => {}
    }
    let mut k = vec![0u8; 32];
    getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(&k)?;
    Ok(k)
}

fn private_dir(p: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

impl Sandboxes {
    /// Sets up the directories and the pool, marks the sandboxes of an earlier process as
    /// terminated and their unfinished runs as failed, and starts the background tasks.
    pub async fn start(
        cfg: SandboxesConfig,
        engine: Arc<Engine>,
        store: Arc<dyn Store>,
        data_dir: &std::path::Path,
        state_dir: &std::path::Path,
        retention_secs: u64,
    ) -> Result<Arc<Sandboxes>, String> {
        let artifact_dir = data_dir.join("artifacts");
        private_dir(&artifact_dir).map_err(|e| format!("{}: {e}", artifact_dir.display()))?;
        let sock_dir = runcell_kernel::socket_dir(state_dir)
            .map_err(|e| format!("kernel socket directory in {}: {e}", state_dir.display()))?;
        let key = signing_key(&data_dir.join("artifact-signing.key"))
            .map_err(|e| format!("artifact signing key: {e}"))?;
        let mut scfg = SandboxConfig::with_dirs(artifact_dir, sock_dir);
        scfg.max_contexts = cfg.max_contexts;
        scfg.artifact_ttl = Duration::from_secs(cfg.artifact_ttl_secs);
        scfg.cpu_secs = cfg.max_timeout_secs.max(3600);
        let scfg = Arc::new(scfg);
        let pool = WarmPool::new(
            Arc::clone(&engine),
            Arc::clone(&scfg),
            budget(&cfg.default_limits),
            runcell_sandbox::DEFAULT_CONTEXT_LANGUAGE,
            cfg.pool_size,
        );

        // What an earlier process left: its sandboxes' processes are gone with it.
        let now = now_ms();
        let ended = store
            .end_all_sandboxes(now, RESTARTED)
            .await
            .map_err(|e| e.to_string())?;
        if !ended.is_empty() {
            tracing::info!(
                "{} sandbox(es) of the previous server process marked terminated",
                ended.len()
            );
        }
        for row in store
            .unfinished_code_runs(None)
            .await
            .map_err(|e| e.to_string())?
        {
            if let Ok(mut doc) = serde_json::from_str::<CodeRun>(&row.doc) {
                doc.status = RunStatus::Failed;
                doc.completed_at = Some(ms_rfc3339(now));
                doc.failure_reason = Some(
                    "the server restarted while this run was queued or running; it was not \
                     re-run"
                        .into(),
                );
                if let Ok(text) = serde_json::to_string(&doc) {
                    let _ = store
                        .update_code_run(&row.id, runcell_store::RunStatus::Failed, &text)
                        .await;
                }
            }
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Sandboxes {
            cfg,
            engine,
            store: Arc::clone(&store),
            scfg,
            pool,
            live: Mutex::new(HashMap::new()),
            signing_key: key,
            retention_ms: retention_secs as i64 * 1000,
            writes: tx,
        });
        tokio::spawn(writer(Arc::clone(&store), rx));
        tokio::spawn(Arc::clone(&me).reaper());
        tokio::spawn(Arc::clone(&me).janitor());
        me.pool.fill();
        Ok(me)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Live sandboxes.
    pub fn count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn pool_ready(&self) -> usize {
        self.pool.ready()
    }

    fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The sandbox `id` as `cred` may see it: live, or an error that says why not (an
    /// ended sandbox's 404 names how it ended; another tenant's is "not found").
    pub async fn resolve(&self, cred: &Cred, id: &str) -> Result<Arc<Live>, ApiError> {
        let allowed = |tenant: &str, token_hash: &str| match cred {
            Cred::Tenant(t) => t == tenant,
            Cred::Token(h) => constant_time_eq(h.as_bytes(), token_hash.as_bytes()),
        };
        if !ids::is_base32_id(id, "sb_") {
            return Err(not_found(id));
        }
        if let Some(l) = self.live(id)
            && allowed(&l.tenant, &l.token_hash)
        {
            return Ok(l);
        }
        match self.store.get_sandbox_by_id(id).await? {
            Some(row) if allowed(&row.tenant, &row.access_token_hash) => Err(gone(&row)),
            _ => Err(not_found(id)),
        }
    }

    /// The tenant that owns `live` (for rate limits of token-authenticated requests).
    pub fn tenant_of(live: &Live) -> &str {
        &live.tenant
    }

    /// Creates a sandbox for `tenant`.
    pub async fn create(
        &self,
        tenant: &str,
        req: CreateSandbox,
    ) -> Result<SandboxObject, ApiError> {
        let (spec, env) = self.validate(req)?;
        {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if live.len() >= self.cfg.max_sandboxes {
                return Err(too_many(format!(
                    "this server runs {} sandboxes, its maximum; delete one or retry later",
                    self.cfg.max_sandboxes
                )));
            }
            if live.values().filter(|l| l.tenant == tenant).count() >= self.cfg.max_per_tenant {
                return Err(too_many(format!(
                    "this API key already has {} running sandboxes, its maximum; delete one first",
                    self.cfg.max_per_tenant
                )));
            }
        }
        let b = budget(&spec.limits);
        let sandbox = match self.pool.take(&b, env.is_empty()) {
            Some(s) => s,
            None => {
                let engine = Arc::clone(&self.engine);
                let scfg = Arc::clone(&self.scfg);
                tokio::task::spawn_blocking(move || {
                    Sandbox::create(engine, ids::sandbox_id(), b, env, scfg)
                })
                .await
                .map_err(ApiError::internal)?
                .map_err(sandbox_error)?
            }
        };
        let token = ids::token();
        let now = now_ms();
        let expires = now + spec.timeout_secs as i64 * 1000;
        let live = Arc::new(Live {
            sandbox,
            tenant: tenant.to_string(),
            token_hash: hash_key(&token),
            created_at: now,
            expires_at: AtomicI64::new(expires),
            spec,
            runs: Mutex::new(HashMap::new()),
        });
        let inserted = self
            .store
            .insert_sandbox(&NewSandbox {
                id: live.id().to_string(),
                tenant: tenant.to_string(),
                access_token_hash: live.token_hash.clone(),
                spec: serde_json::to_string(&live.spec).map_err(ApiError::internal)?,
                created_at: now,
                expires_at: expires,
            })
            .await;
        if let Err(e) = inserted {
            let s = Arc::clone(&live.sandbox);
            tokio::task::spawn_blocking(move || s.destroy(DELETED));
            return Err(e.into());
        }
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(live.id().to_string(), Arc::clone(&live));
        metrics::counter!("runcell_sandboxes_created_total").increment(1);
        let mut o = live.object();
        o.access_token = Some(token);
        Ok(o)
    }

    fn validate(&self, req: CreateSandbox) -> Result<(Spec, Vec<(String, String)>), ApiError> {
        match &req.network {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                return Err(ApiError::bad_request(
                    "INVALID_REQUEST",
                    "network access is not available on this server; sandboxes have no network",
                ));
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "INVALID_REQUEST",
                    "network must be true or false",
                ));
            }
        }
        let timeout_secs = match &req.timeout_secs {
            None | Some(Value::Null) => self.cfg.default_timeout_secs,
            Some(v) => whole(
                v,
                "timeout_secs",
                1,
                self.cfg.max_timeout_secs,
                "INVALID_REQUEST",
            )?,
        };
        let d = self.cfg.default_limits;
        let m = self.cfg.max_limits;
        let l = req.limits.unwrap_or_default();
        let limit = |v: &Option<Value>, name: &str, min: u64, max: u64, def: u64| match v {
            None | Some(Value::Null) => Ok(def),
            Some(v) => whole(v, &format!("limits.{name}"), min, max, "INVALID_LIMIT"),
        };
        let cpus = match &l.cpus {
            None | Some(Value::Null) => d.cpus,
            Some(v) => match v.as_f64() {
                Some(c) if c.is_finite() && c >= 0.01 && c <= m.cpus => c,
                _ => {
                    return Err(ApiError::bad_request(
                        "INVALID_LIMIT",
                        format!(
                            "limits.cpus must be a number from 0.01 to {} (cores), got {v}",
                            m.cpus
                        ),
                    ));
                }
            },
        };
        let limits = SandboxLimits {
            memory_mb: limit(&l.memory_mb, "memory_mb", 64, m.memory_mb, d.memory_mb)?,
            cpus,
            max_processes: limit(
                &l.max_processes,
                "max_processes",
                16,
                m.max_processes,
                d.max_processes,
            )?,
            disk_mb: limit(&l.disk_mb, "disk_mb", 1, m.disk_mb, d.disk_mb)?,
        };
        let metadata = match req.metadata {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => {
                if Value::Object(o.clone()).to_string().len() > 4096 {
                    return Err(ApiError::bad_request(
                        "INVALID_REQUEST",
                        "metadata must be at most 4 KiB of JSON",
                    ));
                }
                o
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "INVALID_REQUEST",
                    "metadata must be a JSON object",
                ));
            }
        };
        let env = parse_env(req.env.as_ref(), "env")?;
        Ok((
            Spec {
                limits,
                metadata,
                timeout_secs,
                env_keys: env.iter().map(|(k, _)| k.clone()).collect(),
            },
            env,
        ))
    }

    /// The caller's sandboxes.
    pub async fn list(
        &self,
        tenant: &str,
        status: Option<SandboxStatus>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<SandboxList, ApiError> {
        let mut rows = self
            .store
            .list_sandboxes(
                tenant,
                &runcell_store::SandboxFilter {
                    status,
                    before_seq,
                    limit: limit + 1,
                },
            )
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = more
            .then(|| rows.last().map(|r| r.seq.to_string()))
            .flatten();
        Ok(SandboxList {
            sandboxes: rows
                .iter()
                .map(|r| match self.live(&r.id) {
                    Some(l) => l.object(),
                    None => object_of_row(r),
                })
                .collect(),
            next_cursor,
        })
    }

    /// Renews a live sandbox's lifetime: it now ends `timeout_secs` from now.
    pub async fn renew(&self, live: &Live, timeout: &Value) -> Result<SandboxObject, ApiError> {
        let secs = whole(
            timeout,
            "timeout_secs",
            1,
            self.cfg.max_timeout_secs,
            "INVALID_REQUEST",
        )?;
        let expires = now_ms() + secs as i64 * 1000;
        if !self
            .store
            .renew_sandbox(&live.tenant, live.id(), expires)
            .await?
        {
            return Err(not_found(live.id()));
        }
        live.expires_at.store(expires, Ordering::SeqCst);
        Ok(live.object())
    }

    /// Ends a sandbox: the record says why, and every process in it is dead and its workspace
    /// removed when this returns.
    pub async fn end(&self, live: &Arc<Live>, reason: &str) -> Result<(), ApiError> {
        let removed = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(live.id())
            .is_some();
        if !removed {
            return Err(not_found(live.id()));
        }
        self.store.end_sandbox(live.id(), now_ms(), reason).await?;
        let s = Arc::clone(&live.sandbox);
        let r = reason.to_string();
        tokio::task::spawn_blocking(move || s.destroy(&r))
            .await
            .map_err(ApiError::internal)?;
        metrics::counter!("runcell_sandboxes_ended_total", "reason" => if reason == DELETED { "deleted" } else { "expired" }).increment(1);
        Ok(())
    }

    /// Ends expired sandboxes (checked twice a second).
    async fn reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = now_ms();
            let expired: Vec<Arc<Live>> = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|l| l.expires_at.load(Ordering::SeqCst) <= now)
                .cloned()
                .collect();
            for l in expired {
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    if let Err(e) = me.end(&l, EXPIRED).await
                        && e.status != StatusCode::NOT_FOUND
                    {
                        tracing::warn!(sandbox = %l.id(), "ending an expired sandbox: {}", e.detail);
                    }
                });
            }
        }
    }

    /// Deletes old records and expired artifact contents (every minute).
    async fn janitor(self: Arc<Self>) {
        loop {
            let now = now_ms();
            let mut blobs = Vec::new();
            match self.store.delete_expired_artifacts(now).await {
                Ok(ids) => blobs.extend(ids),
                Err(e) => tracing::warn!("deleting expired artifacts: {e}"),
            }
            match self.store.purge_sandboxes(now - self.retention_ms).await {
                Ok(ids) => blobs.extend(ids),
                Err(e) => tracing::warn!("purging old sandboxes: {e}"),
            }
            for id in blobs {
                let _ = std::fs::remove_file(runcell_sandbox::artifacts::blob_path(
                    &self.scfg.artifact_dir,
                    &id,
                ));
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }

    /// Stops everything (at shutdown): the pool's sandboxes and the live ones are destroyed;
    /// their records stay running and are marked terminated at the next start.
    pub fn shutdown(&self) {
        self.pool.close();
        let all: Vec<_> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, l)| l)
            .collect();
        for l in all {
            l.sandbox.destroy("terminated: the server stopped");
        }
        let _ = std::fs::remove_dir_all(&self.scfg.sock_dir);
    }

    // --- runs ------------------------------------------------------------------------------

    /// A new run of `ctx` in `live`, recorded as queued, then executed in the background.
    pub async fn start_run(
        &self,
        live: &Arc<Live>,
        ctx: &Arc<runcell_sandbox::Context>,
        code: String,
        env: Vec<(String, String)>,
        timeout_secs: u64,
    ) -> Result<Arc<Run>, ApiError> {
        let unfinished = live.live_runs().iter().filter(|r| !r.is_final()).count();
        if unfinished >= self.cfg.max_queued_runs {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_RUNS",
                format!(
                    "this sandbox has {unfinished} unfinished code runs, its maximum; wait for \
                     some to finish"
                ),
            ));
        }
        let now = SystemTime::now();
        let doc = runcell_sandbox::new_doc(
            ids::run_id(),
            live.id(),
            &ctx.id,
            &ctx.language,
            timeout_secs,
            now,
            now + Duration::from_millis(self.retention_ms as u64),
        );
        self.store
            .insert_code_run(&CodeRunRow {
                id: doc.id.clone(),
                tenant: live.tenant.clone(),
                sandbox_id: live.id().to_string(),
                context_id: ctx.id.clone(),
                status: runcell_store::RunStatus::Queued,
                doc: serde_json::to_string(&doc).map_err(ApiError::internal)?,
                created_at: unix_ms(now),
                seq: 0,
            })
            .await?;
        let observer: Arc<dyn RunObserver> = Arc::new(Observer {
            tenant: live.tenant.clone(),
            tx: self.writes.clone(),
        });
        let run = Run::new(doc, self.scfg.output, Some(observer));
        live.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.id().to_string(), Arc::clone(&run));
        let (ctx, r, l) = (Arc::clone(ctx), Arc::clone(&run), Arc::clone(live));
        tokio::spawn(async move {
            ctx.execute(Arc::clone(&r), code, env, Duration::from_secs(timeout_secs))
                .await;
            metrics::counter!("runcell_code_runs_total", "status" => r.status().as_str())
                .increment(1);
            // The record is written by now (finish waits for it); keep the live run a little
            // for readers of its events.
            tokio::time::sleep(Duration::from_secs(60)).await;
            l.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(r.id());
        });
        Ok(run)
    }

    /// A run of `live` (live or recorded), as the API shows it.
    pub async fn get_run(
        &self,
        live: &Live,
        run_id: &str,
        base: &str,
    ) -> Result<Option<CodeRun>, ApiError> {
        let doc = match live.run(run_id) {
            Some(r) => Some(r.snapshot()),
            None => match self
                .store
                .get_code_run(&live.tenant, live.id(), run_id)
                .await?
            {
                Some(row) => Some(serde_json::from_str(&row.doc).map_err(ApiError::internal)?),
                None => None,
            },
        };
        Ok(doc.map(|d| self.with_links(d, base)))
    }

    /// The sandbox's runs, newest first.
    pub async fn list_runs(
        &self,
        live: &Live,
        before_seq: Option<i64>,
        limit: u32,
        base: &str,
    ) -> Result<(Vec<CodeRun>, Option<String>), ApiError> {
        let mut rows = self
            .store
            .list_code_runs(&live.tenant, live.id(), before_seq, limit + 1)
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = more
            .then(|| rows.last().map(|r| r.seq.to_string()))
            .flatten();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let doc = match live.run(&row.id) {
                Some(r) => r.snapshot(),
                None => serde_json::from_str(&row.doc).map_err(ApiError::internal)?,
            };
            out.push(self.with_links(doc, base));
        }
        Ok((out, next))
    }

    // --- artifacts -------------------------------------------------------------------------

    /// The base of links: the configured public URL, or the request's host.
    pub fn base_url(&self, host: Option<&str>) -> String {
        if !self.cfg.public_url.is_empty() {
            return self.cfg.public_url.trim_end_matches('/').to_string();
        }
        format!("http://{}", host.unwrap_or("localhost"))
    }

    fn signature(&self, id: &str, expires: i64) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.signing_key)
            .expect("HMAC takes keys of any length");
        mac.update(format!("{id}.{expires}").as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Checks a link's signature and expiry.
    pub fn verify(&self, id: &str, expires: i64, signature: &str) -> Result<(), ApiError> {
        let want = self.signature(id, expires);
        if !constant_time_eq(want.as_bytes(), signature.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "INVALID_SIGNATURE",
                "this artifact link is not valid (its signature does not match)",
            ));
        }
        if now_ms() / 1000 >= expires {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "LINK_EXPIRED",
                "this artifact link has expired",
            ));
        }
        Ok(())
    }

    fn link(&self, base: &str, id: &str, kind: &str, expires_at: &str) -> String {
        let expires = parse_rfc3339_secs(expires_at).unwrap_or(0);
        format!(
            "{base}/v1/artifacts/{id}/{kind}?expires={expires}&signature={}",
            self.signature(id, expires)
        )
    }

    /// Fills in the signed links of an artifact.
    pub fn artifact_links(&self, mut a: Artifact, base: &str) -> Artifact {
        a.download_url = self.link(base, &a.id, "download", &a.expires_at);
        a.preview_url = self.link(base, &a.id, "preview", &a.expires_at);
        a
    }

    pub fn with_links(&self, mut doc: CodeRun, base: &str) -> CodeRun {
        doc.execution.artifacts = std::mem::take(&mut doc.execution.artifacts)
            .into_iter()
            .map(|a| self.artifact_links(a, base))
            .collect();
        doc
    }

    /// The path of an artifact's content.
    pub fn blob(&self, id: &str) -> PathBuf {
        runcell_sandbox::artifacts::blob_path(&self.scfg.artifact_dir, id)
    }
}

/// Applies record changes in order; a final run's artifacts are recorded with it.
async fn writer(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(w) = rx.recv().await {
        match w {
            Write::Run { tenant, doc, done } => {
                // A final record is retried for a while: a client is waiting for it.
                let attempts = if done.is_some() { 5 } else { 1 };
                let mut artifacts_written = false;
                for attempt in 1..=attempts {
                    match write_run(&*store, &tenant, &doc, &mut artifacts_written).await {
                        Ok(()) => break,
                        Err(e) if attempt < attempts => {
                            tracing::warn!(run = %doc.id, "recording a run (attempt {attempt}): {e}");
                            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        }
                        Err(e) => tracing::error!(run = %doc.id, "recording a run: {e}"),
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Records a run's document, and a final run's artifacts before it.
async fn write_run(
    store: &dyn Store,
    tenant: &str,
    doc: &CodeRun,
    artifacts_written: &mut bool,
) -> Result<(), String> {
    if doc.status.is_final() && !doc.execution.artifacts.is_empty() && !*artifacts_written {
        let rows: Vec<ArtifactRow> = doc
            .execution
            .artifacts
            .iter()
            .map(|a| ArtifactRow {
                id: a.id.clone(),
                tenant: tenant.to_string(),
                sandbox_id: doc.sandbox_id.clone(),
                run_id: doc.id.clone(),
                context_id: a.context_id.clone(),
                name: a.name.clone(),
                mime_type: a.mime_type.clone(),
                size_bytes: a.size_bytes as i64,
                sha256: a.sha256.clone(),
                execution_count: a.execution_count.map(|c| c as i64),
                metadata: Value::Object(a.metadata.clone()).to_string(),
                created_at: parse_rfc3339_secs(&a.created_at).unwrap_or(0) * 1000,
                expires_at: parse_rfc3339_secs(&a.expires_at).unwrap_or(0) * 1000,
            })
            .collect();
        store
            .insert_artifacts(&rows)
            .await
            .map_err(|e| format!("artifacts: {e}"))?;
        *artifacts_written = true;
    }
    let text = serde_json::to_string(doc).map_err(|e| format!("serializing: {e}"))?;
    store
        .update_code_run(&doc.id, status_of(doc.status), &text)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 UTC time as written by `rfc3339`.
pub fn parse_rfc3339_secs(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The budget of a sandbox's jail.
pub fn budget(l: &SandboxLimits) -> SandboxBudget {
    SandboxBudget {
        memory_mb: l.memory_mb,
        cpus: Some(l.cpus),
        max_processes: l.max_processes,
        disk_mb: l.disk_mb,
    }
}

/// A whole number from JSON within `min..=max`.
fn whole(v: &Value, name: &str, min: u64, max: u64, code: &'static str) -> Result<u64, ApiError> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            code,
            format!("{name} must be a whole number from {min} to {max}, got {v}"),
        )),
    }
}

/// Environment variables from a JSON object of strings.
pub fn parse_env(v: Option<&Value>, what: &str) -> Result<Vec<(String, String)>, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::bad_request(
                "INVALID_REQUEST",
                format!("{what} must be an object of strings"),
            ));
        }
    };
    let mut out = Vec::with_capacity(obj.len());
    let mut bytes = 0;
    for (k, v) in obj {
        let valid = {
            let mut b = k.bytes();
            matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
                && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        };
        if !valid {
            return Err(ApiError::bad_request(
                "INVALID_REQUEST",
                format!(
                    "{what}: variable name {k:?} must be letters, digits and underscores, not \
                     starting with a digit"
                ),
            ));
        }
        let Some(v) = v.as_str() else {
            return Err(ApiError::bad_request(
                "INVALID_REQUEST",
                format!("{what}: the value of {k} must be a string"),
            ));
        };
        if v.contains('\0') {
            return Err(ApiError::bad_request(
                "INVALID_REQUEST",
                format!("{what}: the value of {k} must not contain NUL bytes"),
            ));
        }
        bytes += k.len() + v.len() + 2;
        out.push((k.clone(), v.to_string()));
    }
    if bytes > 64 << 10 {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            format!("{what} is larger than 64 KiB"),
        ));
    }
    Ok(out)
}

fn too_many(detail: String) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_SANDBOXES", detail)
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "SANDBOX_NOT_FOUND",
        format!("sandbox {id} not found"),
    )
}

/// The 404 of a sandbox that ended.
pub fn gone(row: &SandboxRow) -> ApiError {
    let at = row.ended_at.map(ms_rfc3339).unwrap_or_default();
    let reason = row.end_reason.as_deref().unwrap_or("");
    let (code, detail) = match reason {
        EXPIRED => (
            "SANDBOX_EXPIRED",
            format!(
                "sandbox {} expired at {at}; it and its workspace are gone (renew a sandbox with \
                 POST /v1/sandboxes/{{id}}/timeout before it expires)",
                row.id
            ),
        ),
        DELETED => (
            "SANDBOX_DELETED",
            format!(
                "sandbox {} was deleted at {at}; it and its workspace are gone",
                row.id
            ),
        ),
        r => (
            "SANDBOX_TERMINATED",
            format!("sandbox {} ended at {at} ({r})", row.id),
        ),
    };
    ApiError::new(StatusCode::NOT_FOUND, code, detail)
}

fn object_of_row(r: &SandboxRow) -> SandboxObject {
    let spec: Option<Spec> = serde_json::from_str(&r.spec).ok();
    SandboxObject {
        id: r.id.clone(),
        status: r.status.as_str().to_string(),
        access_token: None,
        created_at: ms_rfc3339(r.created_at),
        expires_at: ms_rfc3339(r.expires_at),
        timeout_secs: spec.as_ref().map(|s| s.timeout_secs).unwrap_or(0),
        limits: spec.as_ref().map(|s| s.limits).unwrap_or(SandboxLimits {
            memory_mb: 0,
            cpus: 0.0,
            max_processes: 0,
            disk_mb: 0,
        }),
        metadata: spec.map(|s| s.metadata).unwrap_or_default(),
        network: false,
        ended_at: r.ended_at.map(ms_rfc3339),
        end_reason: r.end_reason.clone(),
    }
}

/// Maps sandbox errors to API errors.
pub fn sandbox_error(e: SandboxError) -> ApiError {
    match &e {
        SandboxError::UnsupportedLanguage(_) => {
            ApiError::bad_request("UNSUPPORTED_LANGUAGE", e.to_string())
        }
        SandboxError::ContextsUnavailable(_) => {
            ApiError::bad_request("CONTEXTS_UNAVAILABLE", e.to_string())
        }
        SandboxError::TooManyContexts(_) => {
            ApiError::new(StatusCode::CONFLICT, "TOO_MANY_CONTEXTS", e.to_string())
        }
        SandboxError::Closed(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "SANDBOX_DELETED", e.to_string())
        }
        SandboxError::Invalid(_) => ApiError::bad_request("INVALID_REQUEST", e.to_string()),
        SandboxError::Kernel(_) | SandboxError::Jail(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "KERNEL_UNAVAILABLE",
            e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(parse_rfc3339_secs(&rfc3339(t)), Some(1_795_000_000));
        assert_eq!(
            parse_rfc3339_secs("2000-02-29T12:00:00.000Z"),
            Some(951_825_600)
        );
        assert_eq!(parse_rfc3339_secs("garbage"), None);
    }

    #[test]
    fn env_objects_are_checked() {
        let v = serde_json::json!({"A_1": "x", "_b": ""});
        assert_eq!(parse_env(Some(&v), "env").unwrap().len(), 2);
        for bad in [
            serde_json::json!({"1A": "x"}),
            serde_json::json!({"A": 1}),
            serde_json::json!({"A=B": "x"}),
            serde_json::json!(["A"]),
        ] {
            assert_eq!(
                parse_env(Some(&bad), "env").unwrap_err().code,
                "INVALID_REQUEST"
            );
        }
    }

    #[test]
    fn equal_compares_everything() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
