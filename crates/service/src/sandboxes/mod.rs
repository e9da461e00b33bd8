//! The sandboxes of this server: live ones (their jails, contexts and runs) and the records of
//! all of them in the store; creation with limits checked against the configuration, expiry,
//! deletion, recovery after a restart, access by tenant or by a sandbox's own token, and signed
//! artifact links.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use runcell_egress::NetworkPlan;
use runcell_engine::Engine;
use runcell_engine::model::rfc3339;
use runcell_sandbox::model::{CodeRun, RunStatus};
use runcell_sandbox::{Metrics, Run, Sandbox, SandboxBudget, SandboxConfig, WarmPool, ids};
use runcell_store::{NewSandbox, SandboxRow, SandboxStatus, Store};

use runcell_engine::model::now_ms;

use crate::config::{SandboxLimits, SandboxesConfig};
use crate::page::PageRequest;
use crate::tenants::{Tenant, hash_key};
use crate::{Error, Kind, Result, Service};

/// Why sandboxes end (stored as the record's `end_reason`).
pub const DELETED: &str = "deleted";
pub const EXPIRED: &str = "expired";
pub const RESTARTED: &str =
    "terminated: the server restarted, and processes in a sandbox do not survive a restart";
/// Why a sandbox that was paused when the server stopped ended (its frozen processes end with
/// the server like any other).
pub const STOPPED_PAUSED: &str = "terminated: the server stopped while the sandbox was paused, \
     and processes in a sandbox (paused or not) do not survive a restart";

/// `POST /v1/sandboxes`.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateSandbox {
    /// Lifetime in seconds.
    pub timeout_secs: Option<Value>,
    pub limits: Option<LimitsRequest>,
    /// Environment variables of every process in the sandbox.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub env: Option<Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Option<Value>,
    /// What the sandbox may reach (`false` or absent: nothing), within what the server lets the
    /// API key ask for (docs/network.md).
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<runcell_egress::policy::NetworkRequest>)
    )]
    pub network: Option<Value>,
    /// The name of the image the client asked for (OpenSandbox's `image.uri`): recorded and
    /// shown, since every sandbox has the server's one root file system.
    pub image: Option<Value>,
    /// A program and its arguments started as a background command once the sandbox is up,
    /// when the program exists in the sandbox (otherwise only recorded).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    pub entrypoint: Option<Value>,
}

/// Requested limits; absent ones take the server's defaults.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// The names it may reach (empty: offline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
}

/// The state of a sandbox as the API shows it: its record's status, and for a live one whether
/// it is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    /// Every process frozen, the expiry clock stopped (`POST /v1/sandboxes/{id}/resume`).
    Paused,
    Terminated,
}

impl From<SandboxStatus> for SandboxState {
    fn from(s: SandboxStatus) -> SandboxState {
        match s {
            SandboxStatus::Running => SandboxState::Running,
            SandboxStatus::Terminated => SandboxState::Terminated,
        }
    }
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxObject {
    pub id: String,
    /// `running`, `paused` or `terminated`.
    pub status: SandboxState,
    /// Only in the answer to the creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    pub created_at: String,
    /// When it expires; for a paused sandbox (whose clock is stopped), when it would if it
    /// were resumed now.
    pub expires_at: String,
    /// Since when a paused sandbox is paused (only for a paused one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
    pub timeout_secs: u64,
    pub limits: SandboxLimits,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Map<String, Value>,
    pub network: bool,
    /// The names it may reach, when `network` is true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    /// The image name the sandbox was created with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The entrypoint it was created with, if any, and what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<EntrypointObject>,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxObject>,
    pub next_cursor: Option<String>,
}

/// A live sandbox.
pub struct Live {
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) tenant: String,
    token_hash: String,
    created_at: i64,
    lifetime: Lifetime,
    spec: Spec,
    /// Runs not finished, and finished ones for a minute (until their record is written).
    runs: Mutex<HashMap<String, Arc<Run>>>,
    /// What became of the entrypoint, once it was looked for.
    entrypoint: Mutex<Option<entrypoint::Entrypoint>>,
    /// Its metadata as it is now (`spec.metadata` is the one it was created with).
    metadata: Mutex<Map<String, Value>>,
    /// Held by a pause, a resume and a renewal from their change in memory to their record,
    /// so that records are written in the order of the changes.
    ops: tokio::sync::Mutex<()>,
}

impl Live {
    pub fn id(&self) -> &str {
        self.sandbox.id()
    }

    /// Whether the sandbox is paused: its processes frozen (or being frozen or thawed), its
    /// expiry clock stopped, and everything that would run something in it refused with 409
    /// `SANDBOX_PAUSED`.
    pub fn paused(&self) -> bool {
        self.state() == SandboxState::Paused
    }

    /// `Running` or `Paused` (a live sandbox that has begun to end still shows `Running`; its
    /// requests answer how it ended).
    pub fn state(&self) -> SandboxState {
        match self.lifetime.phase() {
            Phase::Running => SandboxState::Running,
            Phase::Paused(_) => SandboxState::Paused,
        }
    }

    pub fn object(&self) -> SandboxObject {
        let now = now_ms();
        let paused_at = match self.lifetime.phase() {
            Phase::Paused(at) => Some(at),
            Phase::Running => None,
        };
        SandboxObject {
            id: self.id().to_string(),
            status: if paused_at.is_some() {
                SandboxState::Paused
            } else {
                SandboxState::Running
            },
            access_token: None,
            created_at: ms_rfc3339(self.created_at),
            expires_at: ms_rfc3339(self.lifetime.expires_at(now)),
            paused_at: paused_at.map(ms_rfc3339),
            timeout_secs: self.spec.timeout_secs,
            limits: self.spec.limits,
            metadata: self
                .metadata
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            network: !self.spec.egress.is_empty(),
            egress: self.spec.egress.clone(),
            ended_at: None,
            end_reason: None,
            image: self.spec.image.clone(),
            entrypoint: self.entrypoint_object(),
        }
    }

    fn entrypoint_object(&self) -> Option<EntrypointObject> {
        if self.spec.entrypoint.is_empty() {
            return None;
        }
        let e = self
            .entrypoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(EntrypointObject {
            argv: self.spec.entrypoint.clone(),
            state: e.as_ref().map_or(EntrypointState::Starting, |e| e.state),
            command_id: e.and_then(|e| e.command_id),
        })
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
    /// What each tenant's sandboxes may reach on the network.
    network: Arc<crate::network::Allowances>,
}

fn private_dir(p: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

mod commands;
mod entrypoint;
mod files;
mod lifetime;
mod links;
mod metadata;
mod query;
mod records;
mod runs;

pub use commands::CommandRequest;
pub use entrypoint::{EntrypointObject, EntrypointState};
pub use files::{FileUpload, MAX_LISTED, read_lines};
pub use query::{SandboxPage, SandboxQuery, status_name};
pub use runs::{ArtifactContent, CodeRunRequest, RunList};

use lifetime::{Lifetime, Phase};
pub(crate) use links::constant_time_eq;
use links::signing_key;
pub use links::{parse_rfc3339_ms, parse_rfc3339_secs};
use records::{Observer, Write, writer};

impl Sandboxes {
    /// Sets up the directories and the pool, marks the sandboxes of an earlier process as
    /// terminated and their unfinished runs as failed, and starts the background tasks.
    pub async fn start(
        cfg: SandboxesConfig,
        engine: Arc<Engine>,
        store: Arc<dyn Store>,
        network: Arc<crate::network::Allowances>,
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
            network,
        });
        tokio::spawn(writer(Arc::clone(&store), rx));
        tokio::spawn(Arc::clone(&me).reaper());
        tokio::spawn(Arc::clone(&me).janitor());
        me.pool.fill();
        Ok(me)
    }

    /// Live sandboxes.
    pub fn count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn pool_ready(&self) -> usize {
        self.pool.ready()
    }

    /// Whether sandbox `id` lives in this process.
    pub(crate) fn is_live(&self, id: &str) -> bool {
        self.live(id).is_some()
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
    pub async fn resolve(&self, cred: &Cred, id: &str) -> Result<Arc<Live>, Error> {
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
            // Expired (whether or not the reaper has got to it yet) or being ended: the
            // answer says how it ended, as it will once its record says so.
            l.lifetime.check(id, now_ms())?;
            return Ok(l);
        }
        match self.store.get_sandbox_by_id(id).await? {
            Some(row)
                if allowed(&row.tenant, &row.access_token_hash)
                    && row.status == SandboxStatus::Running =>
            {
                // Running, but not here: on another node of the cluster, which this request
                // did not reach (forwarding failed or was refused).
                Err(Error::busy(
                    "SANDBOX_ON_ANOTHER_NODE",
                    format!(
                        "sandbox {id} lives on another node of this cluster, which did not take \
                         this request; retry, or send it to that node"
                    ),
                )
                .retry_after(1))
            }
            Some(row) if allowed(&row.tenant, &row.access_token_hash) => Err(gone(&row)),
            _ => Err(not_found(id)),
        }
    }

    /// Creates a sandbox for `tenant`.
    pub async fn create(&self, tenant: &str, req: CreateSandbox) -> Result<SandboxObject, Error> {
        let (spec, env, net) = self.validate(req)?;
        self.network.check(tenant, net.as_ref())?;
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
                .map_err(Error::internal)?
                .map_err(Error::from)?
            }
        };
        if let Some(plan) = net {
            let s = Arc::clone(&sandbox);
            let attached = tokio::task::spawn_blocking(move || s.attach_network(&plan))
                .await
                .map_err(Error::internal)?;
            if let Err(e) = attached {
                let s = Arc::clone(&sandbox);
                tokio::task::spawn_blocking(move || s.destroy(DELETED));
                return Err(e.into());
            }
        }
        let token = self.access_token(sandbox.id());
        let now = now_ms();
        let expires = now + spec.timeout_secs as i64 * 1000;
        let metadata = spec.metadata.clone();
        let live = Arc::new(Live {
            sandbox,
            tenant: tenant.to_string(),
            token_hash: hash_key(&token),
            created_at: now,
            lifetime: Lifetime::new(expires),
            spec,
            runs: Mutex::new(HashMap::new()),
            entrypoint: Mutex::new(None),
            metadata: Mutex::new(metadata),
            ops: tokio::sync::Mutex::new(()),
        });
        let inserted = self
            .store
            .insert_sandbox(&NewSandbox {
                id: live.id().to_string(),
                tenant: tenant.to_string(),
                access_token_hash: live.token_hash.clone(),
                spec: serde_json::to_string(&live.spec).map_err(Error::internal)?,
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
        if !live.spec.entrypoint.is_empty() {
            let e = entrypoint::start(&live.sandbox, &live.spec.entrypoint).await;
            *live.entrypoint.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        let mut o = live.object();
        o.access_token = Some(token);
        Ok(o)
    }

    #[allow(clippy::type_complexity)]
    fn validate(
        &self,
        req: CreateSandbox,
    ) -> Result<(Spec, Vec<(String, String)>, Option<NetworkPlan>), Error> {
        let net = runcell_egress::parse_network(req.network.as_ref(), self.engine.net_max())
            .map_err(|e| Error::invalid("INVALID_REQUEST", e.0))?;
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
                    return Err(Error::invalid(
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
                    return Err(Error::invalid(
                        "INVALID_REQUEST",
                        "metadata must be at most 4 KiB of JSON",
                    ));
                }
                o
            }
            Some(_) => {
                return Err(Error::invalid(
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
                image: entrypoint::parse_image(req.image.as_ref())?,
                entrypoint: entrypoint::parse(req.entrypoint.as_ref())?,
                egress: net
                    .as_ref()
                    .map(|n| n.allow.rules.iter().map(|r| r.to_string()).collect())
                    .unwrap_or_default(),
            },
            env,
            net,
        ))
    }

    /// The caller's sandboxes.
    pub async fn list(
        &self,
        tenant: &str,
        status: Option<SandboxStatus>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<SandboxList, Error> {
        let rows = self
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
        let (rows, next_cursor) = crate::page::split(rows, limit, |r| r.seq);
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

    /// Renews a live sandbox's lifetime: it now ends `timeout_secs` from now (a paused one,
    /// `timeout_secs` after it is resumed).
    pub async fn renew(&self, live: &Live, timeout: &Value) -> Result<SandboxObject, Error> {
        let secs = whole(
            timeout,
            "timeout_secs",
            1,
            self.cfg.max_timeout_secs,
            "INVALID_REQUEST",
        )?;
        self.renew_to(live, |now| now + secs as i64 * 1000).await?;
        Ok(live.object())
    }

    /// Renews a live sandbox's lifetime to end at `expires_at` (Unix ms; a paused one, the
    /// lifetime that leaves from now once it is resumed), at least a second and at most the
    /// maximum lifetime from now; returns the new expiry.
    pub async fn renew_until(&self, live: &Live, expires_at: i64) -> Result<i64, Error> {
        let now = now_ms();
        let max = self.cfg.max_timeout_secs as i64 * 1000;
        if expires_at < now + 1000 || expires_at > now + max {
            return Err(Error::invalid(
                "INVALID_REQUEST",
                format!(
                    "the new expiry must be between 1 second and {} seconds from now ({}), got \
                     {}",
                    self.cfg.max_timeout_secs,
                    ms_rfc3339(now),
                    ms_rfc3339(expires_at)
                ),
            ));
        }
        self.renew_to(live, |_| expires_at).await
    }

    /// Renews to the expiry `until(now)`, in memory then in the store, in order with pauses
    /// and resumes; returns the expiry recorded.
    async fn renew_to(&self, live: &Live, until: impl Fn(i64) -> i64) -> Result<i64, Error> {
        let _ops = live.ops.lock().await;
        let now = now_ms();
        // First in memory, where the reaper and a deletion claim the end under the same lock:
        // either this renewal comes first and the reaper leaves the sandbox alone, or the
        // sandbox has ended (or expired) and the renewal answers how.
        let expires = live.lifetime.renew(live.id(), now, until(now) - now)?;
        self.store_expiry(live, expires).await?;
        Ok(expires)
    }

    /// Records a live sandbox's new expiry, changed in memory first; if it has ended since (a
    /// deletion that claimed it after that change), says how.
    async fn store_expiry(&self, live: &Live, expires: i64) -> Result<(), Error> {
        if !self
            .store
            .renew_sandbox(&live.tenant, live.id(), expires)
            .await?
        {
            live.lifetime.check(live.id(), now_ms())?;
            return Err(not_found(live.id()));
        }
        Ok(())
    }

    /// Pauses a live sandbox: its expiry clock stops, then every process in it is frozen.
    /// From the first step on, requests that would run something in it answer 409
    /// `SANDBOX_PAUSED`; one admitted just before is frozen with the sandbox and goes on when
    /// it is resumed.
    pub async fn pause(&self, live: &Arc<Live>) -> Result<SandboxObject, Error> {
        let _ops = live.ops.lock().await;
        live.lifetime.pause(live.id(), now_ms())?;
        let s = Arc::clone(&live.sandbox);
        let frozen = tokio::task::spawn_blocking(move || s.pause()).await?;
        if let Err(e) = frozen {
            // Not paused after all (a deletion under way, or the freezer failed and the jail
            // was thawed again): the clock runs again, from where it stopped.
            let _ = live.lifetime.resume(live.id(), now_ms());
            live.lifetime.check(live.id(), now_ms())?;
            return Err(match e {
                runcell_sandbox::SandboxError::Jail(j) => {
                    Error::internal(format!("pausing sandbox {}: {j}", live.id()))
                }
                e => e.into(),
            });
        }
        // Deleted while it froze: the deletion's answer, not a paused sandbox.
        live.lifetime.check(live.id(), now_ms())?;
        metrics::counter!("runcell_sandboxes_paused_total").increment(1);
        Ok(live.object())
    }

    /// Resumes a paused sandbox: its processes are thawed, then its expiry clock runs again
    /// (it expires the lifetime it had left after now) and it accepts work again.
    pub async fn resume(&self, live: &Arc<Live>) -> Result<SandboxObject, Error> {
        let _ops = live.ops.lock().await;
        live.lifetime.check_paused(live.id(), now_ms())?;
        let s = Arc::clone(&live.sandbox);
        match tokio::task::spawn_blocking(move || s.resume()).await? {
            Ok(_) => {}
            Err(runcell_sandbox::SandboxError::Jail(j)) => {
                return Err(Error::internal(format!(
                    "resuming sandbox {}: {j}",
                    live.id()
                )));
            }
            Err(e) => {
                live.lifetime.check(live.id(), now_ms())?;
                return Err(e.into());
            }
        }
        let expires = live.lifetime.resume(live.id(), now_ms())?;
        self.store_expiry(live, expires).await?;
        Ok(live.object())
    }

    /// Ends a sandbox: the record says why, and every process in it is dead and its workspace
    /// removed when this returns. If it is already ending, the error says how; an expiry of a
    /// sandbox renewed in the meantime does nothing.
    ///
    /// The sandbox stays in the live map, marked as ending, until its record says how it
    /// ended: a request in between is answered from the mark, never from a record that still
    /// says running.
    pub async fn end(&self, live: &Arc<Live>, reason: &str) -> Result<(), Error> {
        let now = now_ms();
        if !live.lifetime.claim_end(live.id(), reason, now)? {
            return Ok(());
        }
        let stored = self.store.end_sandbox(live.id(), now, reason).await;
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(live.id());
        let s = Arc::clone(&live.sandbox);
        let r = reason.to_string();
        tokio::task::spawn_blocking(move || s.destroy(&r))
            .await
            .map_err(Error::internal)?;
        metrics::counter!("runcell_sandboxes_ended_total", "reason" => if reason == DELETED { "deleted" } else { "expired" }).increment(1);
        stored?;
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
                .filter(|l| l.lifetime.due(now))
                .cloned()
                .collect();
            for l in expired {
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    if let Err(e) = me.end(&l, EXPIRED).await
                        && e.kind != Kind::NotFound
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

    /// At shutdown, before [`Sandboxes::shutdown`]: the records of paused sandboxes say that
    /// they were paused when the server stopped (the others are marked terminated at the next
    /// start, as after a crash, when a paused one's says only that the server restarted).
    pub async fn record_paused_at_shutdown(&self) {
        let paused: Vec<Arc<Live>> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|l| l.paused())
            .cloned()
            .collect();
        for l in paused {
            if let Err(e) = self
                .store
                .end_sandbox(l.id(), now_ms(), STOPPED_PAUSED)
                .await
            {
                tracing::warn!(sandbox = %l.id(), "recording a paused sandbox at shutdown: {e}");
            }
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
fn whole(v: &Value, name: &str, min: u64, max: u64, code: &'static str) -> Result<u64, Error> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::invalid(
            code,
            format!("{name} must be a whole number from {min} to {max}, got {v}"),
        )),
    }
}

/// Environment variables from a JSON object of strings.
pub fn parse_env(v: Option<&Value>, what: &str) -> Result<Vec<(String, String)>, Error> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(Error::invalid(
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
            return Err(Error::invalid(
                "INVALID_REQUEST",
                format!(
                    "{what}: variable name {k:?} must be letters, digits and underscores, not \
                     starting with a digit"
                ),
            ));
        }
        let Some(v) = v.as_str() else {
            return Err(Error::invalid(
                "INVALID_REQUEST",
                format!("{what}: the value of {k} must be a string"),
            ));
        };
        if v.contains('\0') {
            return Err(Error::invalid(
                "INVALID_REQUEST",
                format!("{what}: the value of {k} must not contain NUL bytes"),
            ));
        }
        bytes += k.len() + v.len() + 2;
        out.push((k.clone(), v.to_string()));
    }
    if bytes > 64 << 10 {
        return Err(Error::invalid(
            "INVALID_REQUEST",
            format!("{what} is larger than 64 KiB"),
        ));
    }
    Ok(out)
}

fn too_many(detail: String) -> Error {
    Error::new(Kind::LimitExceeded, "TOO_MANY_SANDBOXES", detail)
}

pub fn not_found(id: &str) -> Error {
    Error::new(
        Kind::NotFound,
        "SANDBOX_NOT_FOUND",
        format!("sandbox {id} not found"),
    )
}

/// The 404 of a sandbox that ended.
pub fn gone(row: &SandboxRow) -> Error {
    ended(
        &row.id,
        row.end_reason.as_deref().unwrap_or(""),
        row.ended_at.unwrap_or(0),
        row.expires_at,
    )
}

/// The code that says how a sandbox ended, for the reason it ended with.
pub fn ended_code(reason: &str) -> &'static str {
    match reason {
        EXPIRED => "SANDBOX_EXPIRED",
        DELETED => "SANDBOX_DELETED",
        _ => "SANDBOX_TERMINATED",
    }
}

/// The 404 of sandbox `id`, which ended for `reason` at `at` (an expired one at its expiry
/// time, `expires_at`, whenever the reaper got to it).
pub(crate) fn ended(id: &str, reason: &str, at: i64, expires_at: i64) -> Error {
    let detail = match reason {
        EXPIRED => format!(
            "sandbox {id} expired at {}; it and its workspace are gone (renew a sandbox with \
             POST /v1/sandboxes/{{id}}/timeout before it expires)",
            ms_rfc3339(expires_at)
        ),
        DELETED => format!(
            "sandbox {id} was deleted at {}; it and its workspace are gone",
            ms_rfc3339(at)
        ),
        r => format!("sandbox {id} ended at {} ({r})", ms_rfc3339(at)),
    };
    Error::new(Kind::NotFound, ended_code(reason), detail)
}

fn object_of_row(r: &SandboxRow) -> SandboxObject {
    let spec: Option<Spec> = serde_json::from_str(&r.spec).ok();
    SandboxObject {
        id: r.id.clone(),
        status: r.status.into(),
        access_token: None,
        created_at: ms_rfc3339(r.created_at),
        expires_at: ms_rfc3339(r.expires_at),
        paused_at: None,
        timeout_secs: spec.as_ref().map(|s| s.timeout_secs).unwrap_or(0),
        limits: spec.as_ref().map(|s| s.limits).unwrap_or(SandboxLimits {
            memory_mb: 0,
            cpus: 0.0,
            max_processes: 0,
            disk_mb: 0,
        }),
        metadata: spec
            .as_ref()
            .map(|s| s.metadata.clone())
            .unwrap_or_default(),
        network: spec.as_ref().is_some_and(|s| !s.egress.is_empty()),
        egress: spec.as_ref().map(|s| s.egress.clone()).unwrap_or_default(),
        ended_at: r.ended_at.map(ms_rfc3339),
        end_reason: r.end_reason.clone(),
        image: spec.as_ref().and_then(|s| s.image.clone()),
        entrypoint: spec
            .filter(|s| !s.entrypoint.is_empty())
            .map(|s| EntrypointObject {
                argv: s.entrypoint,
                command_id: None,
                state: EntrypointState::Ended,
            }),
    }
}

impl Service {
    /// Creates a sandbox for `tenant`; the answer carries its access token (the only time).
    pub async fn create_sandbox(
        &self,
        tenant: &Tenant,
        req: CreateSandbox,
    ) -> Result<SandboxObject> {
        self.sandboxes.create(&tenant.0, req).await
    }

    /// The tenant's sandboxes (running by default), newest first.
    pub async fn list_sandboxes(
        &self,
        tenant: &Tenant,
        status: Option<SandboxStatus>,
        page: &PageRequest,
    ) -> Result<SandboxList> {
        let (limit, before) = page.check()?;
        self.sandboxes.list(&tenant.0, status, before, limit).await
    }

    /// The sandbox `id` as `cred` may see it, live and able to run something: the one gate of
    /// every per-sandbox route that uses the sandbox (code, contexts, commands, sessions,
    /// files). A paused sandbox answers 409 `SANDBOX_PAUSED`; otherwise as
    /// [`Service::sandbox_lifecycle`].
    pub async fn sandbox(&self, cred: &Cred, id: &str) -> Result<Arc<Live>> {
        let live = self.sandbox_lifecycle(cred, id).await?;
        live.lifetime.check_running(live.id(), now_ms())?;
        Ok(live)
    }

    /// The sandbox `id` as `cred` may see it, live, running or paused: for what applies to a
    /// paused sandbox too (get, delete, renew, metrics, pause, resume). A request with a
    /// sandbox's own token is charged to the rate limit of the tenant that owns it. Another
    /// tenant's sandbox is not found; an ended one is not found with how it ended; a token
    /// that opens nothing is `Unauthorized`.
    pub async fn sandbox_lifecycle(&self, cred: &Cred, id: &str) -> Result<Arc<Live>> {
        let live = match self.sandboxes.resolve(cred, id).await {
            Ok(l) => l,
            Err(e) if matches!(cred, Cred::Token(_)) && e.code == "SANDBOX_NOT_FOUND" => {
                return Err(Error::new(
                    Kind::Unauthorized,
                    "UNAUTHORIZED",
                    "invalid access token: X-EXECD-ACCESS-TOKEN does not grant this sandbox",
                ));
            }
            Err(e) => return Err(e),
        };
        if matches!(cred, Cred::Token(_)) {
            self.spend(&Tenant(live.tenant.clone()), 1)?;
        }
        Ok(live)
    }

    /// Deletes a sandbox: every process in it dies and its workspace is removed.
    pub async fn delete_sandbox(&self, live: &Arc<Live>) -> Result<()> {
        self.sandboxes.end(live, DELETED).await
    }

    /// Pauses a sandbox: every process in it is frozen (keeping its memory: a context's
    /// variables, a command half-way) and its expiry clock stops. Pausing a paused sandbox is
    /// 409 `SANDBOX_PAUSED`.
    pub async fn pause_sandbox(&self, live: &Arc<Live>) -> Result<SandboxObject> {
        // On a task of its own: a client that goes away does not stop it half-way.
        let (me, live) = (Arc::clone(&self.sandboxes), Arc::clone(live));
        tokio::spawn(async move { me.pause(&live).await }).await?
    }

    /// Resumes a paused sandbox: its processes go on where they stopped and it expires the
    /// lifetime it had left after now. Resuming a sandbox that is not paused is 409
    /// `SANDBOX_NOT_PAUSED`.
    pub async fn resume_sandbox(&self, live: &Arc<Live>) -> Result<SandboxObject> {
        let (me, live) = (Arc::clone(&self.sandboxes), Arc::clone(live));
        tokio::spawn(async move { me.resume(&live).await }).await?
    }

    /// Renews a sandbox's lifetime: it now ends `timeout_secs` from now (a paused one,
    /// `timeout_secs` after it is resumed).
    pub async fn renew_sandbox(&self, live: &Live, timeout_secs: &Value) -> Result<SandboxObject> {
        self.sandboxes.renew(live, timeout_secs).await
    }

    /// The sandbox's CPU (sampled over `sample`) and memory use against its own budget.
    pub async fn sandbox_metrics(&self, live: &Live, sample: Duration) -> Result<Metrics> {
        Ok(live.sandbox.metrics(sample).await?)
    }

    /// The base of links in answers: the configured public URL, or `http://<host>` of the
    /// request.
    pub fn base_url(&self, host: Option<&str>) -> String {
        self.sandboxes.base_url(host)
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
