//! Server configuration: defaults, then a TOML file, then environment variables, then
//! command-line flags (applied by the caller).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use runcell_engine::EngineConfig;

pub use crate::webhooks::WebhookConfig;

/// Everything `runcell serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the SQLite database (unless `database_url` is set), the generated API key,
    /// the compile cache and the sandboxes' files.
    pub data_dir: PathBuf,
    /// A PostgreSQL database to keep the records in (`postgres://user:password@host:port/db`)
    /// instead of the embedded SQLite database in `data_dir`.
    pub database_url: Option<String>,
    /// API keys; each is a tenant. Empty: a key is generated on first start, stored (hashed)
    /// in the database and printed.
    pub api_keys: Vec<String>,
    /// Requests per minute per key (a batch of N counts as N). 0 is refused, never "off".
    pub rate_limit_per_minute: u32,
    /// Executions running at the same time.
    pub concurrency: usize,
    /// The CPUs the server's own threads run on (the spawner and the jails keep every CPU):
    /// `"auto"` the first CPU per four (none to change on one CPU), `"all"`, or a list such
    /// as `"0"` or `"0-1,4"` (docs/configuration.md).
    pub server_cpus: String,
    /// Accepted executions waiting for a worker (async queue plus waiting sync requests);
    /// beyond it the API answers 503.
    pub max_queue: usize,
    /// How long finished executions are kept, seconds.
    pub result_retention_secs: u64,
    /// Largest request body, bytes (413 above it; a larger declared `Content-Length` is
    /// refused before the body is read). Uploads are limited by the sandbox's disk instead.
    pub max_body_bytes: usize,
    /// A request body that sends nothing for this long is answered 408, seconds.
    pub body_timeout_secs: u64,
    /// Once `body_timeout_secs` have passed, a request body must have arrived at this average
    /// rate at least (bytes a second), else 408: a body that drips cannot hold a connection.
    pub body_min_bytes_per_sec: u64,
    /// Fair sharing of execution slots between API keys.
    pub fairness: FairnessConfig,
    /// Host directory for the jails' staging mount point and device nodes (jail slots are
    /// claimed in the host's one lock file, whatever this is).
    pub state_dir: PathBuf,
    /// Extra language definition directories.
    pub languages_dirs: Vec<PathBuf>,
    pub webhooks: WebhookConfig,
    pub sessions: SessionConfig,
    pub sandboxes: SandboxesConfig,
    /// Limits, runtime prefix, jail pool.
    pub engine: EngineConfig,
    /// Several nodes on one PostgreSQL database (docs/cluster.md).
    pub cluster: ClusterConfig,
    /// `[network]`: what runs and sandboxes may reach (nothing unless listed).
    pub network: NetworkConfig,
}

/// `[network]`: egress allow-lists and the limits of every run's network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Names every API key may let its runs reach (`pypi.org`, `*.pythonhosted.org`,
    /// `github.com:22`, `host:*` for any port, `*` for any name). Empty: every run is offline.
    pub egress_allow: Vec<String>,
    /// More names for some API keys (the key as written in `api_keys`), besides
    /// `egress_allow`.
    pub key_allow: std::collections::BTreeMap<String, Vec<String>>,
    /// The resolver the gateway asks, `ip:port` (default: the host's first nameserver).
    pub resolver: Option<String>,
    /// Bytes one run's (sandbox's) network may move, both ways together, at most.
    pub max_bytes: u64,
    /// Bytes per second, both ways together, at most.
    pub max_bytes_per_sec: u64,
    /// Connections open at once, at most.
    pub max_connections: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        let d = runcell_engine::network::DEFAULT_NET_MAX;
        NetworkConfig {
            egress_allow: Vec::new(),
            key_allow: Default::default(),
            resolver: None,
            max_bytes: d.bytes,
            max_bytes_per_sec: d.bytes_per_sec,
            max_connections: d.connections,
        }
    }
}

impl NetworkConfig {
    /// The most a run's network may use.
    pub fn max(&self) -> runcell_egress::NetLimits {
        runcell_egress::NetLimits {
            bytes: self.max_bytes,
            bytes_per_sec: self.max_bytes_per_sec,
            connections: self.max_connections,
        }
    }
}

/// Nodes sharing one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// How long a node's claim on an execution lasts without its heartbeat (which renews it
    /// every third of this); a node silent this long has its running executions failed and
    /// its sandboxes ended by the others. Seconds, 3 to 300.
    pub lease_secs: u64,
    /// Where the other nodes reach this node's HTTP API (`http://10.0.0.5:8002`); default
    /// `http://` and the listening address.
    pub advertise: String,
    /// Keys that may read `GET /cluster` (operators; they need not be tenants' keys).
    pub admin_keys: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            lease_secs: 15,
            advertise: String::new(),
            admin_keys: Vec::new(),
        }
    }
}

/// A sandbox's resource budget (defaults and maxima).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SandboxLimits {
    /// Memory of everything in the sandbox together, including its files, MiB.
    pub memory_mb: u64,
    /// CPU bandwidth, in cores.
    pub cpus: f64,
    /// Processes and threads at once.
    pub max_processes: u64,
    /// Size of `/workspace`, MiB.
    pub disk_mb: u64,
}

/// Long-lived sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxesConfig {
    /// Running sandboxes on this server (all tenants).
    pub max_sandboxes: usize,
    /// Running sandboxes per API key.
    pub max_per_tenant: usize,
    /// Lifetime of a sandbox when the request gives none, seconds.
    pub default_timeout_secs: u64,
    /// Longest lifetime (also for renewals), seconds.
    pub max_timeout_secs: u64,
    pub default_limits: SandboxLimits,
    pub max_limits: SandboxLimits,
    /// Time limit of a code run when the request gives none, seconds.
    pub default_run_timeout_secs: u64,
    pub max_run_timeout_secs: u64,
    /// Unfinished code runs per sandbox (queued ones included).
    pub max_queued_runs: usize,
    /// Code contexts per sandbox.
    pub max_contexts: usize,
    /// Sandboxes with the default limits kept ready, with a warmed Python context (0: none).
    pub pool_size: usize,
    /// How long artifacts stay downloadable, seconds.
    pub artifact_ttl_secs: u64,
    /// The server's address as clients reach it, for artifact URLs (`https://runcell.example`);
    /// empty: taken from each request's `Host` header.
    pub public_url: String,
}

impl Default for SandboxesConfig {
    fn default() -> Self {
        let cpus = runcell_jail::cpus::host_cpus() as f64;
        SandboxesConfig {
            max_sandboxes: 64,
            max_per_tenant: 32,
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 3600,
            default_limits: SandboxLimits {
                memory_mb: 512,
                cpus: 1.0,
                max_processes: 128,
                disk_mb: 1024,
            },
            max_limits: SandboxLimits {
                memory_mb: 8192,
                cpus,
                max_processes: 1024,
                disk_mb: 8192,
            },
            default_run_timeout_secs: 300,
            max_run_timeout_secs: 3600,
            max_queued_runs: 64,
            max_contexts: 8,
            pool_size: 2,
            artifact_ttl_secs: 24 * 3600,
            public_url: String::new(),
        }
    }
}

/// How execution slots are shared between tenants (API keys). Waiting work is served
/// round-robin between tenants; these caps keep one tenant from holding every slot or the
/// whole queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairnessConfig {
    /// Executions one tenant may run at once. Default: `concurrency` less a quarter of it (at
    /// least one slot stays for other tenants when `concurrency` is 2 or more); all of it on a
    /// server with a single API key.
    pub tenant_max_running: Option<usize>,
    /// Executions one tenant may have waiting (async queue plus waiting synchronous
    /// requests); beyond it that tenant is answered 429. Default: half of `max_queue`.
    pub tenant_max_queued: Option<usize>,
}

/// Sessions: runs with the same `session_id` share a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session unused this long is destroyed with its workspace, seconds.
    pub idle_timeout_secs: u64,
    /// Sessions alive at once (all tenants together).
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout_secs: 600,
            max_sessions: 256,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let cpus = runcell_jail::cpus::host_cpus();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8002)),
            data_dir: PathBuf::from("/var/lib/runcell"),
            database_url: None,
            api_keys: Vec::new(),
            rate_limit_per_minute: 6000,
            concurrency: cpus * 2,
            server_cpus: "auto".into(),
            max_queue: 1000,
            result_retention_secs: 24 * 3600,
            max_body_bytes: 10 << 20,
            body_timeout_secs: 10,
            body_min_bytes_per_sec: 1024,
            fairness: FairnessConfig::default(),
            state_dir: PathBuf::from("/run/runcell"),
            languages_dirs: Vec::new(),
            webhooks: WebhookConfig::default(),
            sessions: SessionConfig::default(),
            sandboxes: SandboxesConfig::default(),
            engine: EngineConfig {
                pool_size: 4,
                warm_pool_size: 2,
                ..EngineConfig::default()
            },
            cluster: ClusterConfig::default(),
            network: NetworkConfig::default(),
        }
    }
}

/// A configuration problem, in a sentence.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Config {
    /// Executions one tenant may run at once, on a server with `tenants` API keys (see
    /// [`FairnessConfig::tenant_max_running`]; with one key there is nobody to keep slots for).
    pub fn tenant_max_running(&self, tenants: usize) -> usize {
        let default = if tenants <= 1 {
            self.concurrency
        } else {
            self.concurrency
                .saturating_sub((self.concurrency / 4).max(1))
        };
        self.fairness
            .tenant_max_running
            .unwrap_or(default)
            .clamp(1, self.concurrency.max(1))
    }

    /// Executions one tenant may have waiting (see [`FairnessConfig::tenant_max_queued`]).
    pub fn tenant_max_queued(&self) -> usize {
        self.fairness
            .tenant_max_queued
            .unwrap_or(self.max_queue / 2)
            .clamp(1, self.max_queue.max(1))
    }

    /// Defaults, overridden by the TOML file (if any), then by environment variables
    /// (`RUNCELL_LISTEN`, `RUNCELL_DATA_DIR`, `RUNCELL_DATABASE_URL`, `RUNCELL_API_KEYS`,
    /// `RUNCELL_EGRESS_ALLOW`, `RUNCELL_EGRESS_RESOLVER`, `RUNCELL_WEBHOOK_ALLOW`, `RUNCELL_RATE_LIMIT`, `RUNCELL_CONCURRENCY`, `RUNCELL_MAX_QUEUE`,
    /// `RUNCELL_TENANT_MAX_RUNNING`, `RUNCELL_TENANT_MAX_QUEUED`, `RUNCELL_BODY_TIMEOUT_SECS`,
    /// `RUNCELL_RETENTION_SECS`, `RUNCELL_POOL_SIZE`, `RUNCELL_WARM_POOL_SIZE`, `RUNCELL_ZYGOTES`, `RUNCELL_ZYGOTE_MAX_FORKS`,
    /// `RUNCELL_SANDBOX_POOL_SIZE`).
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut c = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", p.display())))?
            }
            None => Config::default(),
        };
        let parse = |name: &str, v: String| -> Result<u64, ConfigError> {
            v.trim()
                .parse()
                .map_err(|_| ConfigError(format!("{name} must be a whole number, got {v:?}")))
        };
        if let Some(v) = env("RUNCELL_LISTEN") {
            c.listen = v
                .trim()
                .parse()
                .map_err(|_| ConfigError(format!("RUNCELL_LISTEN must be host:port, got {v:?}")))?;
        }
        if let Some(v) = env("RUNCELL_DATA_DIR") {
            c.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("RUNCELL_DATABASE_URL") {
            // Set but empty: the default (SQLite), as if unset.
            c.database_url = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        }
        if let Some(v) = env("RUNCELL_API_KEYS") {
            c.api_keys = comma_list(&v);
        }
        if let Some(v) = env("RUNCELL_ADMIN_KEYS") {
            c.cluster.admin_keys = comma_list(&v);
        }
        if let Some(v) = env("RUNCELL_ADVERTISE") {
            c.cluster.advertise = v.trim().to_string();
        }
        if let Some(v) = env("RUNCELL_LEASE_SECS") {
            c.cluster.lease_secs = parse("RUNCELL_LEASE_SECS", v)?;
        }
        if let Some(v) = env("RUNCELL_EGRESS_ALLOW") {
            c.network.egress_allow = comma_list(&v);
        }
        if let Some(v) = env("RUNCELL_EGRESS_RESOLVER") {
            c.network.resolver = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        }
        if let Some(v) = env("RUNCELL_WEBHOOK_ALLOW") {
            c.webhooks.allow = comma_list(&v);
        }
        if let Some(v) = env("RUNCELL_RATE_LIMIT") {
            c.rate_limit_per_minute = parse("RUNCELL_RATE_LIMIT", v)? as u32;
        }
        if let Some(v) = env("RUNCELL_CONCURRENCY") {
            c.concurrency = parse("RUNCELL_CONCURRENCY", v)? as usize;
        }
        if let Some(v) = env("RUNCELL_SERVER_CPUS") {
            c.server_cpus = v.trim().to_string();
        }
        if let Some(v) = env("RUNCELL_MAX_QUEUE") {
            c.max_queue = parse("RUNCELL_MAX_QUEUE", v)? as usize;
        }
        if let Some(v) = env("RUNCELL_TENANT_MAX_RUNNING") {
            c.fairness.tenant_max_running = Some(parse("RUNCELL_TENANT_MAX_RUNNING", v)? as usize);
        }
        if let Some(v) = env("RUNCELL_TENANT_MAX_QUEUED") {
            c.fairness.tenant_max_queued = Some(parse("RUNCELL_TENANT_MAX_QUEUED", v)? as usize);
        }
        if let Some(v) = env("RUNCELL_BODY_TIMEOUT_SECS") {
            c.body_timeout_secs = parse("RUNCELL_BODY_TIMEOUT_SECS", v)?;
        }
        if let Some(v) = env("RUNCELL_RETENTION_SECS") {
            c.result_retention_secs = parse("RUNCELL_RETENTION_SECS", v)?;
        }
        if let Some(v) = env("RUNCELL_POOL_SIZE") {
            c.engine.pool_size = parse("RUNCELL_POOL_SIZE", v)? as usize;
        }
        if let Some(v) = env("RUNCELL_WARM_POOL_SIZE") {
            c.engine.warm_pool_size = parse("RUNCELL_WARM_POOL_SIZE", v)? as usize;
        }
        if let Some(v) = env("RUNCELL_ZYGOTES") {
            c.engine.zygotes = parse("RUNCELL_ZYGOTES", v)? != 0;
        }
        if let Some(v) = env("RUNCELL_ZYGOTE_MAX_FORKS") {
            c.engine.zygote_max_forks = parse("RUNCELL_ZYGOTE_MAX_FORKS", v)?.max(1);
        }
        if let Some(v) = env("RUNCELL_SANDBOX_POOL_SIZE") {
            c.sandboxes.pool_size = parse("RUNCELL_SANDBOX_POOL_SIZE", v)? as usize;
        }
        Ok(c)
    }

    /// Refuses settings that would mean "off" or "unlimited" by accident.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| Err(ConfigError(s.to_string()));
        if self.rate_limit_per_minute == 0 {
            return bad("rate_limit_per_minute must be at least 1 (it cannot be turned off)");
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1");
        }
        if !matches!(self.server_cpus.trim(), "auto" | "all") {
            runcell_jail::cpus::parse_cpu_list(&self.server_cpus).map_err(ConfigError)?;
        }
        if !(3..=300).contains(&self.cluster.lease_secs) {
            return bad("cluster.lease_secs must be from 3 to 300 (seconds)");
        }
        let adv = &self.cluster.advertise;
        if !(adv.is_empty() || adv.starts_with("http://") || adv.starts_with("https://")) {
            return bad("cluster.advertise must be an http:// or https:// URL of this node");
        }
        if let Some(url) = &self.database_url {
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
                return bad(
                    "database_url must be a postgres:// or postgresql:// URL (leave it out \
                     for the embedded SQLite database in data_dir)",
                );
            }
        }
        if self.max_queue == 0 {
            return bad("max_queue must be at least 1");
        }
        crate::network::Allowances::of(self)?;
        if let Some(r) = &self.network.resolver
            && r.parse::<SocketAddr>().is_err()
        {
            return bad("network.resolver must be ip:port, like \"10.0.0.2:53\"");
        }
        let n = &self.network;
        if n.max_bytes == 0 || n.max_bytes_per_sec == 0 || n.max_connections == 0 {
            return bad(
                "network.max_bytes, max_bytes_per_sec and max_connections must be at least 1",
            );
        }
        if self.result_retention_secs == 0 {
            return bad("result_retention_secs must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes must be at least 1024");
        }
        if self.body_timeout_secs == 0 || self.body_min_bytes_per_sec == 0 {
            return bad("body_timeout_secs and body_min_bytes_per_sec must be at least 1");
        }
        if self.fairness.tenant_max_running == Some(0) || self.fairness.tenant_max_queued == Some(0)
        {
            return bad("fairness.tenant_max_running and tenant_max_queued must be at least 1");
        }
        if self.webhooks.max_attempts == 0 {
            return bad("webhooks.max_attempts must be at least 1");
        }
        if self.webhooks.backoff_secs.is_empty()
            || self
                .webhooks
                .backoff_secs
                .iter()
                .any(|s| !s.is_finite() || *s < 0.0)
        {
            return bad("webhooks.backoff_secs must be a non-empty list of seconds");
        }
        if !(self.webhooks.timeout_secs.is_finite() && self.webhooks.timeout_secs > 0.0) {
            return bad("webhooks.timeout_secs must be positive");
        }
        for entry in &self.webhooks.allow {
            crate::webhooks::AllowEntry::parse(entry)
                .map_err(|e| ConfigError(format!("webhooks.allow: {e}")))?;
        }
        if self.sessions.max_sessions == 0 || self.sessions.idle_timeout_secs == 0 {
            return bad("sessions.max_sessions and sessions.idle_timeout_secs must be at least 1");
        }
        let sb = &self.sandboxes;
        if sb.max_sandboxes == 0 || sb.max_per_tenant == 0 {
            return bad("sandboxes.max_sandboxes and sandboxes.max_per_tenant must be at least 1");
        }
        if sb.default_timeout_secs == 0 || sb.default_timeout_secs > sb.max_timeout_secs {
            return bad("sandboxes.default_timeout_secs must be between 1 and max_timeout_secs");
        }
        if sb.default_run_timeout_secs == 0 || sb.default_run_timeout_secs > sb.max_run_timeout_secs
        {
            return bad(
                "sandboxes.default_run_timeout_secs must be between 1 and max_run_timeout_secs",
            );
        }
        if sb.max_queued_runs == 0 || sb.max_contexts == 0 || sb.artifact_ttl_secs == 0 {
            return bad(
                "sandboxes.max_queued_runs, max_contexts and artifact_ttl_secs must be at least 1",
            );
        }
        for (name, l) in [
            ("default_limits", &sb.default_limits),
            ("max_limits", &sb.max_limits),
        ] {
            if l.memory_mb < 32
                || l.max_processes < 8
                || l.disk_mb == 0
                || !(l.cpus.is_finite() && l.cpus >= 0.01)
            {
                return Err(ConfigError(format!(
                    "sandboxes.{name}: memory_mb must be at least 32, max_processes at least 8, \
                     disk_mb at least 1 and cpus at least 0.01"
                )));
            }
        }
        let (d, m) = (&sb.default_limits, &sb.max_limits);
        if d.memory_mb > m.memory_mb
            || d.cpus > m.cpus
            || d.max_processes > m.max_processes
            || d.disk_mb > m.disk_mb
        {
            return bad("sandboxes.default_limits must not exceed sandboxes.max_limits");
        }
        for k in &self.api_keys {
            if k.len() < 16 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return bad("API keys must be at least 16 printable characters without spaces");
            }
        }
        self.engine
            .limits
            .validate()
            .map_err(|e| ConfigError(format!("engine.limits: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, no_env).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8002");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("runcell.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:9000\"\nrate_limit_per_minute = 10\n[webhooks]\nmax_attempts = 3\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "RUNCELL_RATE_LIMIT" => Some("20".to_string()),
            "RUNCELL_API_KEYS" => Some("aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb".to_string()),
            _ => None,
        };
        let c = Config::load(Some(&f), env).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.rate_limit_per_minute, 20);
        assert_eq!(c.webhooks.max_attempts, 3);
        assert_eq!(c.api_keys.len(), 2);
        c.validate().unwrap();
    }

    /// The example in docs/configuration.md stays true: every key it shows exists.
    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + 8;
        let end = start + doc[start..].find("```").expect("its end");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("example.toml");
        std::fs::write(&f, &doc[start..end]).unwrap();
        let c = Config::load(Some(&f), no_env).unwrap();
        assert_eq!(c.engine.limits, runcell_engine::LimitPolicy::default());
        assert_eq!(c.webhooks, WebhookConfig::default());
    }

    #[test]
    fn database_url_from_the_file_or_the_environment() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.database_url, None, "SQLite by default");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("runcell.toml");
        std::fs::write(&f, "database_url = \"postgres://a@db1/runcell\"\n").unwrap();
        let c = Config::load(Some(&f), no_env).unwrap();
        assert_eq!(c.database_url.as_deref(), Some("postgres://a@db1/runcell"));
        c.validate().unwrap();
        let env = |k: &str| {
            (k == "RUNCELL_DATABASE_URL").then(|| " postgresql://b@db2/runcell ".to_string())
        };
        let c = Config::load(Some(&f), env).unwrap();
        assert_eq!(
            c.database_url.as_deref(),
            Some("postgresql://b@db2/runcell")
        );
        let empty = |k: &str| (k == "RUNCELL_DATABASE_URL").then(String::new);
        assert_eq!(Config::load(Some(&f), empty).unwrap().database_url, None);
        for bad in [
            "mysql://db/runcell",
            "/var/lib/runcell/runcell.db",
            "sqlite://x.db",
        ] {
            let env = |k: &str| (k == "RUNCELL_DATABASE_URL").then(|| bad.to_string());
            let err = Config::load(None, env).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains("postgres://"), "{bad}: {err}");
        }
    }

    #[test]
    fn server_cpus_are_auto_all_or_a_list() {
        assert_eq!(Config::load(None, no_env).unwrap().server_cpus, "auto");
        for (v, ok) in [
            ("all", true),
            (" 0-1,3 ", true),
            ("0", true),
            ("", false),
            ("first", false),
            ("2-1", false),
        ] {
            let env = |k: &str| (k == "RUNCELL_SERVER_CPUS").then(|| v.to_string());
            let c = Config::load(None, env).unwrap();
            match c.validate() {
                Ok(()) => assert!(ok, "{v:?} accepted"),
                Err(e) => {
                    assert!(!ok, "{v:?} refused: {}", e.0);
                    assert!(e.0.contains("server_cpus must be"), "{}", e.0);
                }
            }
        }
    }

    #[test]
    fn cluster_settings_are_checked() {
        let env = |k: &str| match k {
            "RUNCELL_LEASE_SECS" => Some("30".to_string()),
            "RUNCELL_ADVERTISE" => Some("http://10.0.0.5:8002".to_string()),
            "RUNCELL_ADMIN_KEYS" => Some("op-1,op-2".to_string()),
            _ => None,
        };
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.cluster.lease_secs, 30);
        assert_eq!(c.cluster.advertise, "http://10.0.0.5:8002");
        assert_eq!(c.cluster.admin_keys, ["op-1", "op-2"]);
        c.validate().unwrap();
        for (k, v, word) in [
            ("RUNCELL_LEASE_SECS", "2", "lease_secs"),
            ("RUNCELL_LEASE_SECS", "301", "lease_secs"),
            ("RUNCELL_ADVERTISE", "10.0.0.5:8002", "advertise"),
        ] {
            let env = |key: &str| (key == k).then(|| v.to_string());
            let err = Config::load(None, env).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(word), "{k}={v}: {err}");
        }
    }

    #[test]
    fn a_tenant_leaves_slots_for_others_unless_it_is_alone() {
        let mut c = Config::load(None, no_env).unwrap();
        for (slots, alone, shared) in [(1, 1, 1), (2, 2, 1), (4, 4, 3), (8, 8, 6), (16, 16, 12)] {
            c.concurrency = slots;
            assert_eq!(c.tenant_max_running(1), alone, "{slots} slots, one key");
            assert_eq!(c.tenant_max_running(2), shared, "{slots} slots, two keys");
        }
        c.fairness.tenant_max_running = Some(100);
        assert_eq!(c.tenant_max_running(2), 16, "capped by the slots");
    }

    #[test]
    fn off_switches_are_refused() {
        let env = |k: &str| (k == "RUNCELL_RATE_LIMIT").then(|| "0".to_string());
        let c = Config::load(None, env).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("rate_limit"));
        let env = |k: &str| (k == "RUNCELL_RATE_LIMIT").then(|| "many".to_string());
        assert!(Config::load(None, env).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "no_such_setting = 1\n").unwrap();
        assert!(Config::load(Some(&f), no_env).is_err());
    }
}
