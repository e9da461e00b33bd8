//! runcell's application layer: every use case of the product, whatever API asks for it.
//!
//! [`Service`] owns executions (synchronous, queued, batches, cancellation) and their fair
//! scheduler, webhook delivery, session workspaces, sandboxes (lifecycle, expiry, recovery
//! after a restart), code runs and contexts, commands and bash sessions, files, artifacts and
//! their signed links, tenants and rate limits. It speaks to the engine, the sandbox crate and
//! `dyn Store`, and knows nothing of HTTP: every failure is an [`Error`] with a [`Kind`] that
//! each API dialect (crates/server) turns into its own status codes and bodies.
//!
//! The documents it returns (`ExecutionObject`, `SandboxObject`, `CodeRun`, `Artifact`, …) are
//! the product's canonical serializations, stored and sent in webhooks as they are; the native
//! API shows them unchanged and other dialects translate them.
//!
//! Tests: unit tests here (`cargo test -p runcell-service`); the behaviour of every use case
//! over HTTP is tested by starting the real binary, in the CLI's integration tests
//! (`crates/cli/tests/it/api/`, `cargo test -p runcell --test it`).

pub mod cluster;
pub mod config;
pub mod error;
pub mod executions;
pub mod fair;
pub mod languages;
pub mod network;
pub mod operator;
pub mod page;
pub mod sandboxes;
pub mod tenants;
pub mod webhooks;
pub mod workspaces;

use std::sync::Arc;
use std::time::Duration;

use runcell_engine::Engine;
use runcell_jail::Spawner;
use runcell_lang::Registry;
use runcell_store::{PgStore, SqliteStore, Store};

pub use config::Config;
pub use error::{Error, Kind, Result};
pub use executions::{ExecutionList, ExecutionObject, Progress};
pub use languages::LanguageInfo;
pub use page::PageRequest;
pub use runcell_jail::cpus::host_cpus;
pub use tenants::Tenant;

/// The types of requests and results the service takes and gives, for the layers above it
/// (which depend on this crate only).
pub mod model {
    pub use runcell_engine::compare::ComparisonMode;
    pub use runcell_engine::model::{now_ms, rfc3339, signal_number, unix_ms};
    pub use runcell_engine::{
        Cancel, CaseResult, CheckerRequest, CheckerResult, CompileLimitsRequest, CompileResult,
        ExecuteRequest, ExecutionResult, FileSpec, Judging, LimitsRequest, ResultStatus, TestCase,
        Verdict,
    };
    pub use runcell_jail::{
        FileMeta, FsKind, JAIL_GID, JAIL_UID, Stream, decode_path, is_encoded_path,
    };
    pub use runcell_sandbox::model::{
        Artifact, CodeRun, Execution, Logs, ResultItem, RunError, RunEvent, RunStatus,
    };
    pub use runcell_sandbox::{
        Command, CommandEvent, CommandStatus, Context, DEFAULT_CONTEXT_LANGUAGE, Metrics, Run,
    };
    pub use runcell_store::{DeliveryRow, DeliveryState, ExecStatus, SandboxStatus};
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] runcell_store::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// How an API dialect's callbacks are sent (Judge0 PUTs its submission): the method, and the
/// body of a finished execution made through that dialect (its request's `dialect` key). They
/// are signed like every webhook.
pub struct CallbackFormat {
    pub method: &'static str,
    pub body: CallbackBody,
}

/// The body of a dialect's callback for a finished execution and the request it was made from.
pub type CallbackBody =
    Box<dyn Fn(&ExecutionObject, &model::ExecuteRequest) -> String + Send + Sync>;

/// Callback formats by dialect name.
pub type CallbackFormats = std::collections::HashMap<String, CallbackFormat>;

/// Every use case, over one engine, one store and the configuration.
pub struct Service {
    pub config: Config,
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    tenants: tenants::Tenants,
    jobs: executions::Jobs,
    workspaces: workspaces::Workspaces,
    webhooks: Arc<webhooks::Webhooks>,
    languages: Vec<LanguageInfo>,
    sandboxes: Arc<sandboxes::Sandboxes>,
    callbacks: CallbackFormats,
    node: cluster::Node,
    /// What each tenant's runs may reach on the network.
    network: Arc<network::Allowances>,
}

impl Service {
    /// Opens the store, loads the keys, probes the languages, recovers what an earlier process
    /// left (executions it was running fail with a reason, its sandboxes end) and starts the
    /// background work: the queue's dispatcher, webhook delivery, expiry and clean-up.
    pub async fn start(
        config: Config,
        spawner: Spawner,
        registry: Arc<Registry>,
    ) -> Result<Arc<Service>, StartError> {
        Service::start_with(config, spawner, registry, CallbackFormats::new()).await
    }

    /// [`Service::start`] with the callback formats of the API dialects that have their own.
    pub async fn start_with(
        config: Config,
        spawner: Spawner,
        registry: Arc<Registry>,
        callbacks: CallbackFormats,
    ) -> Result<Arc<Service>, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StartError::Io {
            what: format!("create {}", config.data_dir.display()),
            source: e,
        })?;
        let node = cluster::Node::of(&config)?;
        let (store, listener) = open_store(&config, node.owner()).await?;
        let tenants = tenants::Tenants::load(&config, &*store).await?;
        let mut engine_config = config.engine.clone();
        if engine_config.compile_cache_dir.is_none() {
            engine_config.compile_cache_dir = Some(config.data_dir.join("compile-cache"));
        }
        let allowances = Arc::new(network::Allowances::of(&config)?);
        let mut engine = Engine::new(spawner, registry, engine_config);
        engine.set_egress(egress(&config, &allowances)?, config.network.max());
        let engine = Arc::new(engine);
        let languages = {
            let e = Arc::clone(&engine);
            tokio::task::spawn_blocking(move || languages::of_engine(&e))
                .await
                .map_err(|e| StartError::Other(format!("probing languages: {e}")))?
        };
        let recovered = executions::recover(&config, &*store).await?;
        // Its claims on webhook deliveries are the node's too.
        let webhooks = Arc::new(
            webhooks::Webhooks::new(config.webhooks.clone(), node.id.clone())
                .map_err(StartError::Other)?,
        );
        let sandboxes = sandboxes::Sandboxes::start(
            config.sandboxes.clone(),
            Arc::clone(&engine),
            Arc::clone(&store),
            Arc::clone(&allowances),
            &config.data_dir,
            &config.state_dir,
            config.result_retention_secs,
        )
        .await
        .map_err(StartError::Other)?;
        let svc = Arc::new(Service {
            jobs: executions::Jobs::new(fair::FairLimits {
                slots: config.concurrency,
                tenant_running: config.tenant_max_running(tenants.len()),
                max_queued: config.max_queue,
                tenant_queued: config.tenant_max_queued(),
            }),
            workspaces: workspaces::Workspaces::new(
                config.sessions.max_sessions,
                Duration::from_secs(config.sessions.idle_timeout_secs),
            ),
            config,
            engine,
            store: Arc::clone(&store),
            tenants,
            webhooks: Arc::clone(&webhooks),
            languages,
            sandboxes,
            callbacks,
            node,
            network: allowances,
        });
        executions::resume(&svc, recovered).await;
        tokio::spawn(cluster::run(Arc::clone(&svc), listener));
        tokio::spawn(webhooks.run(store));
        tokio::spawn(workspaces::reaper(Arc::clone(&svc)));
        Ok(svc)
    }

    /// Ends every sandbox and workspace of this process (at shutdown).
    pub async fn shutdown(&self) {
        self.sandboxes.record_paused_at_shutdown().await;
        let sandboxes = Arc::clone(&self.sandboxes);
        let _ = tokio::task::spawn_blocking(move || sandboxes.shutdown()).await;
    }

    /// Languages, their versions, and whether their toolchains are installed.
    pub fn languages(&self) -> &[LanguageInfo] {
        &self.languages
    }

    /// API keys known to the server.
    pub fn key_count(&self) -> usize {
        self.tenants.len()
    }

    /// Gauges of running work, for operations' metrics.
    pub fn load(&self) -> Load {
        Load {
            queued: self.jobs.queued(),
            jail_pool_ready: self.engine.pool_ready(),
            warm_ready: self.engine.warm_ready(),
            warm_runs: self.engine.warm_runs(),
            zygote_runs: self.engine.zygote_runs(),
            zygotes_started: self.engine.zygotes_started(),
            sessions: self.workspaces.len(),
            sandboxes: self.sandboxes.count(),
            sandbox_pool_ready: self.sandboxes.pool_ready(),
        }
    }
}

/// The store the configuration names: PostgreSQL at `database_url` (and a second handle to
/// listen for queued work on), else the embedded SQLite database in the data directory. Either
/// is migrated to this build's schema and works for `owner`.
async fn open_store(
    config: &Config,
    owner: runcell_store::Owner,
) -> Result<(Arc<dyn Store>, Option<PgStore>), StartError> {
    Ok(match &config.database_url {
        Some(url) => {
            let store = PgStore::connect(url).await?.with_owner(owner);
            tracing::info!("store: PostgreSQL at {}", store.target());
            (Arc::new(store.clone()), Some(store))
        }
        None => {
            let store = SqliteStore::open(&config.data_dir.join("runcell.db"))
                .await?
                .with_owner(owner);
            tracing::info!("store: SQLite at {}", store.path().display());
            (Arc::new(store), None)
        }
    })
}

/// Writes a file only root can read (0600), replacing it.
pub(crate) fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)
}

/// What the server is doing, for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub queued: u64,
    pub jail_pool_ready: usize,
    /// Jails with a warm interpreter waiting in them.
    pub warm_ready: usize,
    /// Runs served by a warm interpreter since start.
    pub warm_runs: u64,
    /// Of those, runs whose interpreter was forked from a zygote.
    pub zygote_runs: u64,
    /// Zygotes started (one per language, renewed after so many forks or minutes).
    pub zygotes_started: u64,
    pub sessions: usize,
    pub sandboxes: usize,
    pub sandbox_pool_ready: usize,
}

/// The egress gateway, when some tenant may reach the network.
fn egress(
    config: &Config,
    allowances: &network::Allowances,
) -> Result<Option<Arc<runcell_egress::Egress>>, StartError> {
    if !allowances.any() {
        return Ok(None);
    }
    let resolver = match &config.network.resolver {
        Some(r) => r.parse().map_err(|_| {
            StartError::Other(format!("network.resolver must be ip:port, got {r:?}"))
        })?,
        None => runcell_egress::system_resolver().ok_or_else(|| {
            StartError::Other(
                "network: egress is allowed but /etc/resolv.conf names no nameserver; set \
                 network.resolver"
                    .into(),
            )
        })?,
    };
    let e = runcell_egress::Egress::new(runcell_egress::EgressConfig::new(resolver))
        .map_err(|e| StartError::Other(format!("starting the egress gateway: {e}")))?;
    tracing::info!(%resolver, "egress gateway on: runs may reach the names their API key allows");
    Ok(Some(Arc::new(e)))
}
