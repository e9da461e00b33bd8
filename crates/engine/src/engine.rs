use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use runcell_jail::{
    CgroupLimits, Exit, Jail, JailConfig, JailError, Killer, Limit, Outcome, OutputTarget,
    ProcessSpec, Rlimits, RunLimits, SharedMounts, Spawner, Start, StdinSource, StepMode, Stream,
    TmpfsSize, WORKSPACE,
};
use runcell_lang::{Language, Registry, Vars};

use crate::cache::{CachedFile, CompileCache, Key, KeyInputs};
use crate::limits::{LimitPolicy, Limits};
use crate::model::{
    CompileResult, ExecuteRequest, ExecutionResult, FileSpec, ResultStatus, decode_output, rfc3339,
    signal_name,
};
use crate::pool::JailPool;
use crate::warm::{Warm, WarmPool};
use crate::{EngineError, rootfs};

/// Receives output chunks of a run as they arrive (for streaming).
pub type OutputSink<'a> = &'a mut dyn FnMut(Stream, &[u8]);

/// Engine settings (from the server's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Read-only prefix with runtimes that are not Debian packages.
    pub prefix: PathBuf,
    /// Defaults and maxima of run limits.
    pub limits: LimitPolicy,
    /// Limits of compile steps (not the caller's to choose; languages may raise them).
    pub compile: Limits,
    /// Size of each run's workspace tmpfs, MiB (its pages count against the memory limit).
    pub workspace_mb: u64,
    /// Size of each step's private /tmp, MiB (also counted against the memory limit).
    pub tmp_mb: u64,
    /// Open files per process.
    pub open_files: u64,
    /// Main-thread stack of each process, MiB.
    pub stack_mb: u64,
    /// Extra files of one request together, bytes.
    pub max_files_bytes: u64,
    /// Jails kept prepared ahead of requests (0: prepare each on demand).
    pub pool_size: usize,
    /// Jails kept prepared with a warm interpreter waiting in them, per language that has one
    /// (`[warm]` in its definition; 0: every run starts its interpreter).
    pub warm_pool_size: usize,
    /// Whether warm interpreters of languages with a zygote (`warm.zygote_library`) are forks
    /// of it rather than each started in its jail.
    pub zygotes: bool,
    /// Jails one zygote forks before a new one (a fresh hash seed and address layout) takes
    /// over.
    pub zygote_max_forks: u64,
    /// Seconds one zygote serves before a new one takes over.
    pub zygote_max_age_secs: u64,
    /// Directory of the compile cache (root only; none: no cache). The server puts it in its
    /// data directory.
    pub compile_cache_dir: Option<PathBuf>,
    /// Size of the compile cache, MiB (0: no cache).
    pub compile_cache_mb: u64,
    /// Test cases one judged run may have.
    pub max_test_cases: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            prefix: PathBuf::from("/opt/runcell"),
            limits: LimitPolicy::default(),
            compile: Limits {
                wall_time: 30.0,
                cpu_time: 30.0,
                memory_mb: 1024,
                max_processes: 128,
                max_output_bytes: 1 << 20,
                max_file_size_mb: 256,
            },
            workspace_mb: 256,
            tmp_mb: 256,
            open_files: 1024,
            stack_mb: 64,
            max_files_bytes: 16 << 20,
            pool_size: 0,
            warm_pool_size: 0,
            zygotes: true,
            zygote_max_forks: 1000,
            zygote_max_age_secs: 600,
            compile_cache_dir: None,
            compile_cache_mb: 512,
            max_test_cases: 100,
        }
    }
}

/// A validated request, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Canonical language id.
    pub language: String,
    pub version: String,
    pub limits: Limits,
    /// The compile step's limits (the server's for the language, lowered as asked).
    pub(crate) compile_limits: Limits,
    pub session_id: Option<String>,
    pub(crate) source_name: String,
    code: Vec<u8>,
    pub(crate) files: Vec<(String, Vec<u8>)>,
    pub(crate) args: Vec<String>,
    env: Vec<(String, String)>,
    pub(crate) stdin: Vec<u8>,
    /// Test cases and how to judge them (a judged run).
    pub(crate) judge: Option<Arc<crate::judge::JudgePlan>>,
    /// What the run step may reach on the network (none: offline).
    pub network: Option<runcell_egress::NetworkPlan>,
}

impl Plan {
    /// Whether this is a judged run (with test cases).
    pub fn is_judged(&self) -> bool {
        self.judge.is_some()
    }

    /// The placeholders of this plan's commands: its main source, and its other files with
    /// one of the language's extensions (`{sources}` of compile commands).
    fn vars(&self, lang: &Language, memory_mb: u64, prefix: &std::path::Path) -> Vars {
        let mut sources: Vec<String> = self
            .files
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| lang.is_source(n))
            .collect();
        sources.sort();
        Vars {
            sources,
            ..Vars::new(self.source_name.clone(), memory_mb, prefix)
        }
    }
}

/// A compiled program ready to be written into fresh workspaces: the compiler's output files
/// and the compile step's result.
#[derive(Debug, Clone)]
pub struct Prebuilt {
    files: Vec<CachedFile>,
    compile: CompileResult,
}

/// What compiling a plan once gave ([`Engine::build`]).
#[derive(Debug)]
pub(crate) enum Build {
    /// The language has no compile step.
    Interpreted,
    /// Compiled (now or before: the compile cache).
    Ready(Prebuilt),
    /// It did not compile; the result says why.
    Failed,
    /// It compiled, but its output files could not be read out whole (links, too many, too
    /// large): every run compiles it again.
    Unreadable,
}

impl Build {
    /// The compiled program, when there is one to start runs from.
    pub(crate) fn ready(&self) -> Option<&Prebuilt> {
        match self {
            Build::Ready(p) => Some(p),
            _ => None,
        }
    }
}

/// The loopback port of every sandbox's jail where its agent accepts connections from the
/// start (and closes them): OpenSandbox's code-interpreter SDK probes
/// `127.0.0.1:${JUPYTER_PORT:-44771}` from inside the sandbox before it declares it ready.
/// Its default port, so that the probe passes with or without `JUPYTER_PORT`.
pub const SANDBOX_READY_PORT: u16 = 44771;

/// The resource budget of a sandbox: one jail whose kernel-enforced limits everything running
/// in it shares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SandboxBudget {
    /// Memory of all its processes together, including its workspace and `/tmp` files.
    pub memory_mb: u64,
    /// CPU bandwidth in cores (`None`: no bandwidth limit, only the host's cores).
    pub cpus: Option<f64>,
    /// Processes and threads at once.
    pub max_processes: u64,
    /// Size of the workspace.
    pub disk_mb: u64,
}

/// Runs execution requests in jails.
pub struct Engine {
    pool: JailPool,
    warm: Option<WarmPool>,
    /// Runs served by a warm interpreter since start.
    warm_runs: std::sync::atomic::AtomicU64,
    /// Of those, runs whose interpreter was forked from a zygote.
    zygote_runs: std::sync::atomic::AtomicU64,
    jail_config: JailConfig,
    registry: Arc<Registry>,
    config: EngineConfig,
    versions: Mutex<HashMap<String, Option<String>>>,
    cache: Option<CompileCache>,
    /// The egress gateway (none: every run is offline).
    egress: Option<Arc<runcell_egress::Egress>>,
    /// The most any run's network may use.
    net_max: runcell_egress::NetLimits,
}

/// Cancels an execution from another thread: before it starts (it will not), or while it
/// runs (its program and everything it started are killed).
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    inner: Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    current: Mutex<Option<Killer>>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels: kills the running step, if any, and prevents further steps.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        if let Some(k) = self
            .inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = k.kill();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Registers the running step (killing it at once if cancellation came first).
    fn running(&self, killer: Option<Killer>) {
        let mut cur = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = &killer
            && self.is_cancelled()
        {
            let _ = k.kill();
        }
        *cur = killer;
    }
}

/// How to run one plan.
#[derive(Default)]
pub struct RunContext<'a> {
    /// Receives the run step's output as it arrives (for streaming). Only a run without one
    /// may be run again when its warm jail dies under it (nothing of it was shown yet).
    pub on_output: Option<OutputSink<'a>>,
    /// Cancellation from another thread.
    pub cancel: Option<&'a Cancel>,
    /// A session's jail to run in (its workspace persists); otherwise a fresh jail.
    pub jail: Option<&'a Jail>,
    /// Who may share compiled programs with this run through the compile cache (the server
    /// passes the tenant); none: the cache is not used.
    pub cache_scope: Option<&'a str>,
    /// The program compiled already ([`Engine::build`]): its files are written instead of
    /// running the compiler.
    pub prebuilt: Option<&'a Prebuilt>,
}

const MAX_ARGS: usize = 256;
const MAX_ENV_BYTES: usize = 64 << 10;
const MAX_ARG_BYTES: usize = 64 << 10;

fn invalid(s: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest(s.into())
}

/// The environment every program starts from (nothing comes from the host).
pub fn base_env() -> Vec<(String, String)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/tmp"),
        ("TMPDIR", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("USER", "runner"),
        ("LOGNAME", "runner"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn merge_env(into: &mut Vec<(String, String)>, more: impl IntoIterator<Item = (String, String)>) {
    for (k, v) in more {
        into.retain(|(x, _)| *x != k);
        into.push((k, v));
    }
}

fn valid_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Checks command-line arguments.
pub(crate) fn check_args(args: &[String]) -> Result<(), EngineError> {
    if args.len() > MAX_ARGS {
        return Err(invalid(format!("at most {MAX_ARGS} arguments are allowed")));
    }
    for a in args {
        if a.contains('\0') {
            return Err(invalid("arguments must not contain NUL bytes"));
        }
        if a.len() > MAX_ARG_BYTES {
            return Err(invalid(format!(
                "an argument is longer than {MAX_ARG_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// Decodes the extra files of a request: names checked, unique and none of `taken` (the
/// main source's, whose description is `taken_what`), contents decoded.
pub(crate) fn decode_files(
    specs: &[FileSpec],
    taken: &[&str],
    taken_what: &str,
) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(specs.len());
    for f in specs {
        valid_file_name(&f.name)?;
        if taken.contains(&f.name.as_str()) || files.iter().any(|(n, _)| *n == f.name) {
            return Err(invalid(format!(
                "file name {:?} is used twice ({taken_what})",
                f.name
            )));
        }
        let data = match f.encoding.as_deref().unwrap_or("utf8") {
            "utf8" | "utf-8" | "text" => f.content.clone().into_bytes(),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(f.content.trim())
                .map_err(|e| invalid(format!("file {:?} is not valid base64: {e}", f.name)))?,
            other => {
                return Err(invalid(format!(
                    "file encoding {other:?} is not supported (use utf8 or base64)"
                )));
            }
        };
        files.push((f.name.clone(), data));
    }
    Ok(files)
}

/// Checks a relative file name for the workspace (the jail's workspace API checks again).
fn valid_file_name(name: &str) -> Result<(), EngineError> {
    let bad = |why: &str| invalid(format!("file name {name:?} {why}"));
    if name.is_empty() || name.len() > 1024 {
        return Err(bad("must be 1 to 1024 bytes long"));
    }
    if name.starts_with('/') || name.contains('\0') || name.contains('\\') {
        return Err(bad(
            "must be a relative path without NUL bytes or backslashes",
        ));
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.len() > 255 {
            return Err(bad("must not contain empty, '.' or '..' components"));
        }
    }
    Ok(())
}

fn version_matches(installed: &str, wanted: &str) -> bool {
    let w = wanted.trim();
    w.is_empty()
        || w == "*"
        || w.eq_ignore_ascii_case("latest")
        || installed == w
        || installed.starts_with(&format!("{w}."))
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e6
}

impl Engine {
    /// An engine over a running spawner and a language registry.
    pub fn new(spawner: Spawner, registry: Arc<Registry>, config: EngineConfig) -> Engine {
        let jail = rootfs::jail_config(registry.all(), &config.prefix, config.workspace_mb);
        let pool = JailPool::new(
            spawner,
            jail.clone(),
            Self::cgroup(&config.limits.defaults),
            config.pool_size,
        );
        let warm = Self::warm_pool(&pool, &jail, &registry, &config);
        let cache = match &config.compile_cache_dir {
            Some(dir) if config.compile_cache_mb > 0 => {
                match CompileCache::open(dir, config.compile_cache_mb << 20) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(
                            "compile cache in {}: {e}; compiling every time",
                            dir.display()
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        Engine {
            pool,
            warm,
            warm_runs: std::sync::atomic::AtomicU64::new(0),
            zygote_runs: std::sync::atomic::AtomicU64::new(0),
            jail_config: jail,
            registry,
            config,
            versions: Mutex::new(HashMap::new()),
            cache,
            egress: None,
            net_max: crate::network::DEFAULT_NET_MAX,
        }
    }

    /// Lets runs that ask for it reach the network through `egress`, within `max`.
    pub fn set_egress(
        &mut self,
        egress: Option<Arc<runcell_egress::Egress>>,
        max: runcell_egress::NetLimits,
    ) {
        self.egress = egress;
        self.net_max = max;
    }

    /// The egress gateway, if this engine has one.
    pub fn egress(&self) -> Option<&Arc<runcell_egress::Egress>> {
        self.egress.as_ref()
    }

    /// The most any run's (or sandbox's) network may use.
    pub fn net_max(&self) -> runcell_egress::NetLimits {
        self.net_max
    }

    /// The warm interpreters of languages that have one: each started in the step a run with
    /// the default limits and no environment of its own gets.
    fn warm_pool(
        pool: &JailPool,
        jail: &JailConfig,
        registry: &Registry,
        config: &EngineConfig,
    ) -> Option<WarmPool> {
        if config.warm_pool_size == 0 {
            return None;
        }
        let mut specs = Vec::new();
        for lang in registry.all() {
            let (Some(w), None, true) = (&lang.warm, &lang.compile, lang.available()) else {
                continue;
            };
            let req = ExecuteRequest {
                language: lang.id.clone(),
                ..ExecuteRequest::default()
            };
            let Ok(limits) = config.limits.resolve_for(&req, lang.run.max_processes) else {
                continue;
            };
            let vars = Vars::new(
                lang.source_file.clone(),
                limits.memory_mb,
                config.prefix.clone(),
            );
            let mut env = base_env();
            merge_env(&mut env, lang.env(&vars));
            let zygote = w
                .zygote_library
                .as_ref()
                .filter(|_| config.zygotes)
                .and_then(|lib| Self::zygote(pool, jail, lang, lib, &w.argv, &env))
                .map(|(spec, id)| {
                    crate::warm::Zygote::new(
                        spec,
                        id,
                        config.zygote_max_forks,
                        Duration::from_secs(config.zygote_max_age_secs),
                    )
                });
            specs.push(crate::warm::WarmLang {
                lang: lang.id.clone(),
                spec: step_spec(config, w.argv.clone(), env, &limits),
                zygote,
            });
        }
        WarmPool::new(
            pool.spawner().clone(),
            jail.clone(),
            Self::cgroup(&config.limits.defaults),
            config.warm_pool_size,
            specs,
        )
    }

    /// Starts a zygote for a language's warm interpreter; `None` (logged) if it cannot start
    /// or its interpreter is not the version the cold command runs: runs then start their
    /// interpreter in their jail.
    fn zygote(
        pool: &JailPool,
        jail: &JailConfig,
        lang: &Language,
        library: &std::path::Path,
        argv: &[String],
        env: &[(String, String)],
    ) -> Option<(runcell_jail::ZygoteSpec, u64)> {
        let spec = runcell_jail::ZygoteSpec {
            kind: runcell_jail::ZygoteKind::Python,
            library: library.to_path_buf(),
            argv: argv.to_vec(),
            env: env.to_vec(),
            config: jail.clone(),
        };
        let cold = lang.probe_version();
        match pool.spawner().start_zygote(&spec) {
            Ok((id, version)) if cold.as_deref() == Some(version.as_str()) => {
                tracing::info!("{} zygote {version} ready", lang.id);
                Some((spec, id))
            }
            Ok((id, version)) => {
                let _ = pool.spawner().stop_zygote(id);
                tracing::warn!(
                    "{}'s zygote library is version {version}, its command {}: no zygote",
                    lang.id,
                    cold.as_deref().unwrap_or("unknown")
                );
                None
            }
            Err(e) => {
                tracing::warn!("{}'s zygote did not start: {e}; no zygote", lang.id);
                None
            }
        }
    }

    /// Warm interpreters ready right now.
    pub fn warm_ready(&self) -> usize {
        self.warm.as_ref().map_or(0, WarmPool::ready)
    }

    /// Runs served by a warm interpreter since this engine started.
    pub fn warm_runs(&self) -> u64 {
        self.warm_runs.load(Ordering::Relaxed)
    }

    /// Zygotes started since this engine started (a new one takes over after
    /// `zygote_max_forks` forks or `zygote_max_age_secs`, or when one dies).
    pub fn zygotes_started(&self) -> u64 {
        self.warm.as_ref().map_or(0, WarmPool::zygotes_started)
    }

    /// Of [`Engine::warm_runs`], those whose interpreter was a zygote's fork.
    pub fn zygote_runs(&self) -> u64 {
        self.zygote_runs.load(Ordering::Relaxed)
    }

    /// A fresh jail for a session (runs of one session share its workspace); give it back
    /// with [`Engine::release`].
    pub fn session_jail(&self) -> Result<Jail, JailError> {
        self.pool.take()
    }

    /// A jail for a sandbox: shared `/tmp`, `/dev/shm` and runtime directory, a workspace of
    /// `disk_mb`, and the budget's cgroup limits, which everything started in it shares.
    pub fn sandbox_jail(&self, b: &SandboxBudget) -> Result<Jail, JailError> {
        let mut cfg = self.jail_config.clone();
        cfg.workspace = TmpfsSize::mib(b.disk_mb);
        cfg.shared = Some(SharedMounts {
            tmp: TmpfsSize::mib(self.config.tmp_mb),
            shm: TmpfsSize::mib(self.config.tmp_mb.min(64)),
            runtime: TmpfsSize::mib(16),
        });
        cfg.loopback_listener = Some(SANDBOX_READY_PORT);
        self.pool.spawner().prepare(
            &cfg,
            &CgroupLimits {
                memory_bytes: b.memory_mb << 20,
                // The jail's agent and each shared step's init are tasks of the group too.
                max_tasks: (b.max_processes + 2).min(u32::MAX as u64) as u32,
                cpus: b.cpus,
                background: false,
            },
        )
    }

    /// How to start a long-lived program (a kernel, a command) in a sandbox's jail: a shared
    /// step with per-process rlimits derived from the budget. CPU time per process is bounded
    /// by `cpu_secs` (the sandbox's longest possible life); the cgroup bounds the rate.
    pub fn sandbox_process(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        b: &SandboxBudget,
        cpu_secs: u64,
    ) -> ProcessSpec {
        ProcessSpec {
            argv,
            env,
            cwd: WORKSPACE.into(),
            rlimits: Rlimits {
                cpu_secs,
                file_size_bytes: b.disk_mb.max(1) << 20,
                open_files: self.config.open_files,
                stack_bytes: self.config.stack_mb << 20,
                processes: b.max_processes + 2,
                locked_memory_bytes: 64 << 10,
            },
            mode: StepMode::Shared,
        }
    }

    /// Destroys a jail in the background.
    pub fn release(&self, jail: Jail) {
        self.pool.release(jail);
    }

    /// Jails prepared and waiting.
    pub fn pool_ready(&self) -> usize {
        self.pool.ready()
    }

    /// The spawner behind this engine.
    pub fn spawner(&self) -> &Spawner {
        self.pool.spawner()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The installed version of a language (probed once, then cached).
    pub fn version_of(&self, lang: &Language) -> Option<String> {
        let mut cache = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(lang.id.clone())
            .or_insert_with(|| lang.probe_version())
            .clone()
    }

    /// Validates a request against the languages and limits of this engine.
    pub fn plan(&self, req: &ExecuteRequest) -> Result<Plan, EngineError> {
        let lang = self
            .registry
            .resolve(req.language.trim())
            .ok_or_else(|| EngineError::UnsupportedLanguage(req.language.clone()))?;
        if !lang.available() {
            return Err(EngineError::LanguageUnavailable(format!(
                "{} is not installed on this server (run `runcell runtimes install {}`)",
                lang.name, lang.id
            )));
        }
        let version = self.version_of(lang).unwrap_or_else(|| "unknown".into());
        if let Some(wanted) = &req.version
            && !version_matches(&version, wanted)
        {
            return Err(EngineError::LanguageUnavailable(format!(
                "{} version {wanted:?} is not available; this server has {version}",
                lang.name
            )));
        }
        // Runtimes that start threads of their own (Go, Java) have a higher default process
        // limit; a limit the request gives explicitly wins, within the server's maximum.
        let limits = self
            .config
            .limits
            .resolve_for(req, lang.run.max_processes)?;
        let network = runcell_egress::parse_network(req.network.as_ref(), self.net_max)
            .map_err(|e| invalid(e.0))?;
        if network.is_some() && req.test_cases.is_some() {
            return Err(invalid(
                "a run with test_cases has no network; leave network out of it",
            ));
        }
        check_args(&req.args)?;
        let mut env_bytes = 0;
        for (k, v) in &req.environment {
            if !valid_env_name(k) {
                return Err(invalid(format!(
                    "environment variable name {k:?} must be letters, digits and underscores, \
                     not starting with a digit"
                )));
            }
            if v.contains('\0') {
                return Err(invalid(format!(
                    "environment variable {k} must not contain NUL bytes"
                )));
            }
            env_bytes += k.len() + v.len() + 2;
        }
        if env_bytes > MAX_ENV_BYTES {
            return Err(invalid(format!(
                "the environment is larger than {MAX_ENV_BYTES} bytes"
            )));
        }
        let source_name = lang.source_file_for(&req.code);
        let files = decode_files(
            &req.files,
            &[source_name.as_str()],
            &format!("the main source is {source_name}"),
        )?;
        let total = req.code.len() + files.iter().map(|(_, d)| d.len()).sum::<usize>();
        if total as u64 > self.config.max_files_bytes {
            return Err(invalid(format!(
                "code and files together exceed {} bytes",
                self.config.max_files_bytes
            )));
        }
        let compile_limits = match &req.compile_limits {
            Some(c) => crate::limits::lower_compile(&self.compile_limits(lang), c)?,
            None => self.compile_limits(lang),
        };
        let mut plan = Plan {
            language: lang.id.clone(),
            version,
            limits,
            compile_limits,
            session_id: req.session_id.clone(),
            source_name,
            code: req.code.clone().into_bytes(),
            files,
            args: req.args.clone(),
            env: req
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            stdin: req.stdin.clone().unwrap_or_default().into_bytes(),
            judge: None,
            network,
        };
        if let Some(judge) = crate::judge::plan(self, req, &plan)? {
            plan.judge = Some(Arc::new(judge));
        }
        Ok(plan)
    }

    /// Validates and runs a request.
    pub fn execute(&self, req: &ExecuteRequest) -> Result<ExecutionResult, EngineError> {
        let plan = self.plan(req)?;
        Ok(self.run(
            &plan,
            &uuid::Uuid::new_v4().to_string(),
            SystemTime::now(),
            RunContext::default(),
        ))
    }

    /// A `failed` result for a plan that could not be run at all.
    pub fn failure(
        &self,
        plan: &Plan,
        execution_id: &str,
        created_at: SystemTime,
        reason: impl Into<String>,
    ) -> ExecutionResult {
        let now = rfc3339(SystemTime::now());
        ExecutionResult {
            execution_id: execution_id.to_string(),
            status: ResultStatus::Failed,
            language: plan.language.clone(),
            version: plan.version.clone(),
            stdout: String::new(),
            stderr: String::new(),
            exit_code: -1,
            signal: None,
            execution_time: 0.0,
            cpu_time: 0.0,
            memory_peak_kb: 0,
            limit_exceeded: None,
            stdout_truncated: false,
            stderr_truncated: false,
            compile: None,
            session_id: plan.session_id.clone(),
            failure_reason: Some(reason.into()),
            judging: None,
            network: None,
            created_at: rfc3339(created_at),
            started_at: now.clone(),
            completed_at: now,
        }
    }

    /// Runs a plan to its end. Never fails: a system error yields a `failed` result with a
    /// `failure_reason`. Output chunks of the run step go to `on_output` as they arrive.
    pub fn run(
        &self,
        plan: &Plan,
        execution_id: &str,
        created_at: SystemTime,
        ctx: RunContext<'_>,
    ) -> ExecutionResult {
        let started_at = SystemTime::now();
        let mut r = ExecutionResult {
            execution_id: execution_id.to_string(),
            status: ResultStatus::Completed,
            language: plan.language.clone(),
            version: plan.version.clone(),
            stdout: String::new(),
            stderr: String::new(),
            exit_code: -1,
            signal: None,
            execution_time: 0.0,
            cpu_time: 0.0,
            memory_peak_kb: 0,
            limit_exceeded: None,
            stdout_truncated: false,
            stderr_truncated: false,
            compile: None,
            session_id: plan.session_id.clone(),
            failure_reason: None,
            judging: None,
            network: None,
            created_at: rfc3339(created_at),
            started_at: rfc3339(started_at),
            completed_at: String::new(),
        };
        let cancel = ctx.cancel;
        let done = match &plan.judge {
            Some(judge) => crate::judge::run(self, plan, judge, &mut r, ctx),
            None => self.run_steps(plan, &mut r, ctx),
        };
        if let Err(e) = done {
            r.status = ResultStatus::Failed;
            r.exit_code = -1;
            r.failure_reason = Some(format!("runcell could not run the program: {e}"));
        }
        if cancel.is_some_and(Cancel::is_cancelled) {
            r.status = ResultStatus::Failed;
            r.limit_exceeded = None;
            r.failure_reason = Some("the execution was cancelled".into());
        }
        r.completed_at = rfc3339(SystemTime::now());
        r
    }

    fn lang(&self, id: &str) -> Result<&Language, JailError> {
        self.registry
            .resolve(id)
            .ok_or_else(|| JailError::InvalidConfig(format!("language {id} disappeared")))
    }

    fn spec(&self, argv: Vec<String>, env: Vec<(String, String)>, l: &Limits) -> ProcessSpec {
        step_spec(&self.config, argv, env, l)
    }

    fn run_limits(l: &Limits) -> RunLimits {
        RunLimits {
            wall_time: Duration::from_secs_f64(l.wall_time),
            cpu_time: Duration::from_secs_f64(l.cpu_time),
            output_bytes: l.max_output_bytes,
        }
    }

    fn cgroup(l: &Limits) -> CgroupLimits {
        CgroupLimits {
            memory_bytes: l.memory_mb << 20,
            // The jail's agent and the step's init are tasks of the group too.
            max_tasks: (l.max_processes + 2).min(u32::MAX as u64) as u32,
            cpus: None,
            background: false,
        }
    }

    /// Compile limits: the server's, raised to what the language needs.
    fn compile_limits(&self, lang: &Language) -> Limits {
        let mut l = self.config.compile;
        if let Some(c) = &lang.compile {
            if let Some(m) = c.memory_mb {
                l.memory_mb = l.memory_mb.max(m);
            }
            if let Some(p) = c.max_processes {
                l.max_processes = l.max_processes.max(p);
            }
            if let Some(w) = c.wall_time {
                l.wall_time = l.wall_time.max(w);
            }
            if let Some(t) = c.cpu_time {
                l.cpu_time = l.cpu_time.max(t);
            }
        }
        l
    }

    fn run_steps(
        &self,
        plan: &Plan,
        r: &mut ExecutionResult,
        ctx: RunContext<'_>,
    ) -> Result<(), JailError> {
        let lang = self.lang(&plan.language)?;
        let run = plan.limits;
        let compile = plan.compile_limits;
        let vars = |memory_mb| plan.vars(lang, memory_mb, &self.config.prefix);
        let compile_argv = lang.compile_argv(&vars(compile.memory_mb));
        let first = if compile_argv.is_some() {
            &compile
        } else {
            &run
        };
        if ctx.cancel.is_some_and(Cancel::is_cancelled) {
            return Ok(());
        }
        let mut ctx = ctx;
        if ctx.jail.is_none()
            && compile_argv.is_none()
            && plan.network.is_none()
            && let Some((warm, argv)) = self.take_warm(plan, lang, &vars(run.memory_mb))
            && self.run_warm(plan, r, &mut ctx, warm, &argv)?
        {
            return Ok(());
        }
        let owned;
        let jail = match ctx.jail {
            Some(j) => j,
            None => {
                owned = Owned {
                    jail: Some(self.pool.take()?),
                    pool: &self.pool,
                };
                owned.jail.as_ref().expect("just set")
            }
        };
        jail.set_limits(&Self::cgroup(first))?;
        let ws = jail.workspace();
        write_plan_files(ws, plan)?;
        if let Some(argv) = compile_argv {
            let env = compile_env(lang, &vars(compile.memory_mb));
            // The compile cache serves fresh workspaces only: a session's earlier files could
            // change what the compiler does.
            let key = match ctx.jail {
                None => self.cache_key(plan, &argv, &env, ctx.cache_scope),
                Some(_) => None,
            };
            let cached = match ctx.prebuilt {
                Some(p) => Some(std::borrow::Cow::Borrowed(p)),
                None => key
                    .as_ref()
                    .and_then(|k| self.cached(k))
                    .map(std::borrow::Cow::Owned),
            };
            if let Some(p) = cached {
                write_prebuilt(ws, &p)?;
                r.compile = Some(p.compile.clone());
                jail.set_limits(&Self::cgroup(&run))?;
                return self.run_step(plan, r, ctx, lang, jail, &vars(run.memory_mb));
            }
            let (out, _) =
                self.compile_step(jail, argv, env, &compile, key.as_ref(), false, ctx.cancel)?;
            r.compile = Some(compile_result(&out));
            if !compiled(&out) {
                compile_failed(r, &out);
                return Ok(());
            }
            if ctx.cancel.is_some_and(Cancel::is_cancelled) {
                return Ok(());
            }
            jail.set_limits(&Self::cgroup(&run))?;
        }
        self.run_step(plan, r, ctx, lang, jail, &vars(run.memory_mb))
    }

    /// The compile cache's key of a plan's compile step (none: no cache, no scope, or a
    /// source whose output depends on the time).
    fn cache_key(
        &self,
        plan: &Plan,
        argv: &[String],
        env: &[(String, String)],
        scope: Option<&str>,
    ) -> Option<Key> {
        let (Some(_), Some(scope)) = (&self.cache, scope) else {
            return None;
        };
        let mut files: Vec<(&str, &[u8])> = vec![(plan.source_name.as_str(), plan.code.as_slice())];
        files.extend(plan.files.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
        Key::of(&KeyInputs {
            scope,
            language: &plan.language,
            version: &plan.version,
            argv,
            env,
            files: &files,
        })
    }

    /// The compile cache's entry for `key`, as a program ready to be written.
    fn cached(&self, key: &Key) -> Option<Prebuilt> {
        let entry = self.cache.as_ref()?.get(key)?;
        Some(Prebuilt {
            files: entry.files,
            compile: CompileResult {
                execution_time: 0.0,
                cpu_time: 0.0,
                memory_peak_kb: 0,
                cached: true,
                ..entry.compile
            },
        })
    }

    /// Runs a compile step in a jail whose workspace holds the plan's files. When it
    /// succeeds, the files it made are read out if `collect` (or a cache key) asks for them,
    /// and stored in the cache under `key`.
    #[allow(clippy::too_many_arguments)]
    fn compile_step(
        &self,
        jail: &Jail,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        limits: &Limits,
        key: Option<&Key>,
        collect: bool,
        cancel: Option<&Cancel>,
    ) -> Result<(Outcome, Option<Vec<CachedFile>>), JailError> {
        let ws = jail.workspace();
        let before =
            (key.is_some() || collect).then(|| ws.walk(CACHE_WALK_ENTRIES, CACHE_WALK_DEPTH));
        let out = run_program(
            jail,
            Start::default(),
            &self.spec(argv, env, limits),
            &[],
            &Self::run_limits(limits),
            None,
            cancel,
        )?;
        let files = match before {
            Some(Ok(before)) if compiled(&out) => compiled_files(ws, &before),
            _ => None,
        };
        let (Some(key), Some(cache)) = (key, &self.cache) else {
            return Ok((out, files.filter(|_| collect)));
        };
        let Some(files) = files else {
            return Ok((out, None));
        };
        let entry = crate::cache::Entry {
            files,
            compile: compile_result(&out),
        };
        if let Err(e) = cache.put(key, &entry) {
            tracing::warn!("compile cache: {e}");
        }
        Ok((out, collect.then_some(entry.files)))
    }

    /// Compiles a plan once, in a fresh jail of its own, so that several runs can start from
    /// the result ([`RunContext::prebuilt`]); through the compile cache when `scope` is given.
    /// Sets `r.compile`, and on failure what [`Engine::run`] says of a program that did not
    /// compile.
    pub(crate) fn build(
        &self,
        plan: &Plan,
        r: &mut ExecutionResult,
        scope: Option<&str>,
        cancel: Option<&Cancel>,
    ) -> Result<Build, JailError> {
        let lang = self.lang(&plan.language)?;
        let compile = plan.compile_limits;
        let vars = plan.vars(lang, compile.memory_mb, &self.config.prefix);
        let Some(argv) = lang.compile_argv(&vars) else {
            return Ok(Build::Interpreted);
        };
        let env = compile_env(lang, &vars);
        let key = self.cache_key(plan, &argv, &env, scope);
        if let Some(p) = key.as_ref().and_then(|k| self.cached(k)) {
            r.compile = Some(p.compile.clone());
            return Ok(Build::Ready(p));
        }
        let owned = Owned {
            jail: Some(self.pool.take()?),
            pool: &self.pool,
        };
        let jail = owned.jail.as_ref().expect("just set");
        jail.set_limits(&Self::cgroup(&compile))?;
        write_plan_files(jail.workspace(), plan)?;
        let (out, files) =
            self.compile_step(jail, argv, env, &compile, key.as_ref(), true, cancel)?;
        r.compile = Some(compile_result(&out));
        if !compiled(&out) {
            compile_failed(r, &out);
            return Ok(Build::Failed);
        }
        Ok(match files {
            Some(files) => Build::Ready(Prebuilt {
                files,
                compile: compile_result(&out),
            }),
            None => Build::Unreadable,
        })
    }

    /// A warm interpreter for this run, if one is ready and its step is exactly the one the
    /// cold run would get (limits, environment, mounts; only the command differs); with the
    /// cold command line it is to run.
    fn take_warm(&self, plan: &Plan, lang: &Language, vars: &Vars) -> Option<(Warm, Vec<String>)> {
        let pool = self.warm.as_ref()?;
        let warm_spec = pool.spec(&lang.id)?;
        // The run's input becomes a workspace file for a moment (charged to the run's memory)
        // or follows the header in the pipe: a large one takes the cold path, as does a run
        // with a file of the input file's name.
        let pipe = lang.warm.as_ref().is_some_and(|w| w.stdin_pipe);
        if plan.stdin.len() > WARM_STDIN_MAX
            || (!pipe
                && (plan.source_name == WARM_STDIN_FILE
                    || plan.files.iter().any(|(n, _)| n == WARM_STDIN_FILE)))
        {
            return None;
        }
        let (argv, env) = run_command(plan, lang, vars);
        let mut cold = self.spec(warm_spec.argv.clone(), env, &plan.limits);
        cold.argv = warm_spec.argv.clone();
        if cold != *warm_spec {
            return None;
        }
        pool.take(&lang.id).map(|mut w| {
            w.stdin_pipe = pipe;
            (w, argv)
        })
    }

    /// Runs a plan in a warm interpreter's jail: the files are written, the waiting process is
    /// handed off to the run (its measurements start now) and receives the command line and
    /// the run's standard input.
    ///
    /// Returns false, with nothing recorded, when the jail died under the run before the
    /// program said anything (its zygote died, which kills every jail it forked): the caller
    /// then runs the plan the cold way. The program is not at fault, and nothing it did can be
    /// seen, so running it again is what a user would expect.
    fn run_warm(
        &self,
        plan: &Plan,
        r: &mut ExecutionResult,
        ctx: &mut RunContext<'_>,
        warm: Warm,
        argv: &[String],
    ) -> Result<bool, JailError> {
        let run = plan.limits;
        self.warm_runs.fetch_add(1, Ordering::Relaxed);
        if warm.preloaded {
            self.zygote_runs.fetch_add(1, Ordering::Relaxed);
        }
        let Warm {
            jail,
            mut process,
            mut input,
            stdin_pipe,
            ..
        } = warm;
        let owned = Owned {
            jail: Some(jail),
            pool: &self.pool,
        };
        let jail = owned.jail.as_ref().expect("just set");
        jail.set_limits(&Self::cgroup(&run))?;
        let ws = jail.workspace();
        write_plan_files(ws, plan)?;
        let stdin = if plan.stdin.is_empty() || stdin_pipe {
            String::new()
        } else {
            ws.write_file(WARM_STDIN_FILE, &plan.stdin, 0o400)
                .map_err(|e| JailError::InvalidConfig(format!("write the input: {e}")))?;
            format!("{WORKSPACE}/{WARM_STDIN_FILE}")
        };
        let mut fields = Vec::with_capacity(argv.len() + 1);
        fields.push(stdin);
        fields.extend(argv.iter().cloned());
        let mut bytes = crate::warm::header(&fields);
        if stdin_pipe {
            bytes.extend_from_slice(&plan.stdin);
        }
        jail.hand_off(&mut process)?;
        // The header goes into the pipe at once if it fits (it nearly always does); what does
        // not is written by a thread of its own, so that nothing here can block on the
        // program (it ends when the header is written or the program is gone).
        // Closing the pipe then is the end of the input (for a piped one).
        let sent = write_without_waiting(&mut input, &bytes);
        if sent == bytes.len() {
            drop(input);
        } else {
            std::thread::Builder::new()
                .name("runcell-warm-input".into())
                .spawn(move || {
                    use std::io::Write;
                    let _ = set_nonblocking(&input, false);
                    let _ = input.write_all(&bytes[sent..]);
                })
                .map_err(|e| JailError::Io {
                    what: "start the input writer".into(),
                    source: e,
                })?;
        }
        let out = supervise_program(
            jail,
            process,
            &Self::run_limits(&run),
            ctx.on_output
                .as_mut()
                .map(|s| &mut **s as &mut dyn FnMut(Stream, &[u8])),
            ctx.cancel,
        )?;
        // A zygote's death kills its jails' processes in no particular order: the program may
        // be seen dead a moment before its jail's agent. (Only a SIGKILL nobody here sent can
        // be that; a program cannot kill its agent.)
        let lost = !out.killed_by_us
            && out.limit.is_none()
            && out.exit == runcell_jail::Exit::Signaled(libc::SIGKILL)
            && jail.ends_within(Duration::from_millis(200));
        if lost {
            // Nothing of the run has left runcell unless its output is streamed: then only
            // a run that printed nothing yet can start again.
            if ctx.on_output.is_none() || (out.stdout.is_empty() && out.stderr.is_empty()) {
                tracing::warn!(
                    "a warm {} jail died under its run; running it cold",
                    plan.language
                );
                return Ok(false);
            }
            return Err(JailError::Spawner(
                "the run's jail ended under it (its interpreter's zygote died); run it again"
                    .into(),
            ));
        }
        fill_result(r, &out, &run, &self.config.limits.maxima);
        Ok(true)
    }

    /// The run step of a plan, in a jail whose workspace is ready.
    fn run_step(
        &self,
        plan: &Plan,
        r: &mut ExecutionResult,
        ctx: RunContext<'_>,
        lang: &Language,
        jail: &Jail,
        vars: &Vars,
    ) -> Result<(), JailError> {
        let run = plan.limits;
        let (argv, env) = run_command(plan, lang, vars);
        let spec = self.spec(argv, env, &run);
        // A jail taken for this execution runs nothing after its run step; a session's
        // serves its later runs.
        let how = Start {
            last: ctx.jail.is_none(),
            ..Start::default()
        };
        // Only the run step reaches the network: compiling stays offline.
        let gateway = match &plan.network {
            Some(n) => Some(crate::network::attach(
                self.egress.as_deref(),
                jail,
                n,
                &r.execution_id,
            )?),
            None => None,
        };
        let out = run_program(
            jail,
            how,
            &spec,
            &plan.stdin,
            &Self::run_limits(&run),
            ctx.on_output,
            ctx.cancel,
        );
        r.network = gateway.map(runcell_egress::Gateway::close);
        fill_result(r, &out?, &run, &self.config.limits.maxima);
        Ok(())
    }
}

/// Writes what the pipe `f` takes now of `bytes` (non-blocking); returns how much that was.
fn write_without_waiting(f: &mut File, bytes: &[u8]) -> usize {
    use std::io::Write;
    if set_nonblocking(f, true).is_err() {
        return 0;
    }
    let mut sent = 0;
    while sent < bytes.len() {
        match f.write(&bytes[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sent
}

/// Sets or clears `O_NONBLOCK` on `f`.
fn set_nonblocking(f: &File, on: bool) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; only its status flags change.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The run step's command line and environment (the same cold or warm).
fn run_command(plan: &Plan, lang: &Language, vars: &Vars) -> (Vec<String>, Vec<(String, String)>) {
    let mut env = base_env();
    merge_env(&mut env, lang.env(vars));
    merge_env(&mut env, plan.env.iter().cloned());
    (lang.run_argv(vars, &plan.args), env)
}

/// Writes the plan's source and extra files into a fresh workspace.
fn write_plan_files(ws: &runcell_jail::Workspace, plan: &Plan) -> Result<(), JailError> {
    let files = plan.files.iter().map(|(n, d)| (n, d));
    for (name, data) in std::iter::once((&plan.source_name, &plan.code)).chain(files) {
        ws.write_file(name, data, 0o644)
            .map_err(|e| JailError::InvalidConfig(format!("write {name}: {e}")))?;
    }
    Ok(())
}

/// The environment of a language's compile step.
fn compile_env(lang: &Language, vars: &Vars) -> Vec<(String, String)> {
    let mut env = base_env();
    merge_env(&mut env, lang.env(vars));
    env
}

/// Writes a compiled program's files into a fresh workspace.
fn write_prebuilt(ws: &runcell_jail::Workspace, p: &Prebuilt) -> Result<(), JailError> {
    for f in &p.files {
        ws.write_file(&f.path, &f.data, f.mode)
            .map_err(|e| JailError::InvalidConfig(format!("write the compiled {}: {e}", f.path)))?;
    }
    Ok(())
}

/// Whether a compile step succeeded.
fn compiled(out: &Outcome) -> bool {
    out.exit.success() && out.limit.is_none()
}

/// What a result says of a program that did not compile: the compiler's output, and why
/// when the compiler itself failed (a limit, or it could not start).
fn compile_failed(r: &mut ExecutionResult, out: &Outcome) {
    r.stderr = decode_output(&out.stderr, out.stderr_truncated);
    r.stdout = decode_output(&out.stdout, out.stdout_truncated);
    if let Some(l) = out.limit {
        r.status = ResultStatus::Failed;
        r.failure_reason = Some(format!("compilation exceeded its {} limit", limit_words(l)));
    } else if let Exit::NotStarted { stage, errno } = out.exit {
        r.status = ResultStatus::Failed;
        r.failure_reason = Some(not_started(stage, errno, "the compiler"));
    }
}

/// The workspace file a warm run's input is passed in (removed before the program runs).
const WARM_STDIN_FILE: &str = ".runcell-stdin";
/// The largest input a warm run takes (larger ones take the cold path).
const WARM_STDIN_MAX: usize = 1 << 20;

/// The step of a program with limits `l`.
fn step_spec(
    config: &EngineConfig,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    l: &Limits,
) -> ProcessSpec {
    ProcessSpec {
        argv,
        env,
        cwd: WORKSPACE.into(),
        rlimits: Rlimits {
            cpu_secs: l.cpu_time.ceil() as u64 + 1,
            file_size_bytes: l.max_file_size_mb << 20,
            open_files: config.open_files,
            stack_bytes: config.stack_mb << 20,
            // A backstop only: the cgroup's task limit (which counts the jail's two helper
            // processes too) must be the one that trips, so that it is reported. Twice it,
            // because the two count differently (the rlimit counts the user's processes in
            // the jail's user namespace, exiting ones included until reaped; under load an
            // exponential fork bomb once hit it first and went unreported).
            processes: (l.max_processes + 2).saturating_mul(2),
            locked_memory_bytes: 64 << 10,
        },
        mode: StepMode::Private {
            tmp: TmpfsSize::mib(config.tmp_mb),
            shm: TmpfsSize::mib(config.tmp_mb.min(64)),
        },
    }
}

/// How far the compile cache looks for a compiler's output files.
const CACHE_WALK_ENTRIES: usize = 10_000;
const CACHE_WALK_DEPTH: usize = 16;

/// The regular files a compile step created or changed in the workspace, read out by
/// descriptor as the program's user; `None` (do not cache) when the workspace cannot be read
/// whole, something other than a regular file appeared, or the files are too large.
fn compiled_files(
    ws: &runcell_jail::Workspace,
    before: &runcell_jail::Walk,
) -> Option<Vec<CachedFile>> {
    use runcell_jail::EntryKind;
    let after = ws.walk(CACHE_WALK_ENTRIES, CACHE_WALK_DEPTH).ok()?;
    if before.truncated || after.truncated {
        return None;
    }
    let old: HashMap<&str, (u64, u64, i128)> = before
        .entries
        .iter()
        .map(|e| (e.path.as_str(), (e.inode, e.size, e.mtime_ns)))
        .collect();
    let mut files = Vec::new();
    let mut total = 0u64;
    for e in &after.entries {
        if old.get(e.path.as_str()) == Some(&(e.inode, e.size, e.mtime_ns)) {
            continue;
        }
        match e.kind {
            EntryKind::Dir => continue,
            EntryKind::File if e.links == 1 => {}
            _ => return None,
        }
        total += e.size;
        if total > crate::cache::MAX_ENTRY_BYTES || files.len() >= crate::cache::MAX_ENTRY_FILES {
            return None;
        }
        let data = ws.read_file(&e.path, crate::cache::MAX_ENTRY_BYTES).ok()?;
        files.push(CachedFile {
            path: e.path.clone(),
            mode: e.mode & 0o777,
            data,
        });
    }
    Some(files)
}

/// A jail taken from the pool for one execution, destroyed in the background afterwards.
struct Owned<'a> {
    jail: Option<Jail>,
    pool: &'a JailPool,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        if let Some(j) = self.jail.take() {
            self.pool.release(j);
        }
    }
}

fn run_program(
    jail: &Jail,
    how: Start,
    spec: &ProcessSpec,
    stdin: &[u8],
    limits: &RunLimits,
    on_output: Option<OutputSink<'_>>,
    cancel: Option<&Cancel>,
) -> Result<Outcome, JailError> {
    let stdin = if stdin.is_empty() {
        StdinSource::Null
    } else {
        StdinSource::Bytes(stdin.to_vec())
    };
    let p = jail.start_with(how, spec, stdin, OutputTarget::Pipe, OutputTarget::Pipe)?;
    supervise_program(jail, p, limits, on_output, cancel)
}

/// Supervises a started program to its end, collecting its output.
fn supervise_program(
    jail: &Jail,
    p: runcell_jail::Process,
    limits: &RunLimits,
    mut on_output: Option<OutputSink<'_>>,
    cancel: Option<&Cancel>,
) -> Result<Outcome, JailError> {
    if let Some(c) = cancel {
        c.running(p.killer().ok());
    }
    let mut out = Vec::new();
    let mut err = Vec::new();
    let outcome = jail.supervise(p, limits, &mut |s, chunk| {
        match s {
            Stream::Stdout => out.extend_from_slice(chunk),
            Stream::Stderr => err.extend_from_slice(chunk),
        }
        if let Some(sink) = on_output.as_mut() {
            sink(s, chunk);
        }
    });
    if let Some(c) = cancel {
        c.running(None);
    }
    let mut outcome = outcome?;
    outcome.stdout = out;
    outcome.stderr = err;
    Ok(outcome)
}

fn limit_words(l: Limit) -> &'static str {
    match l {
        Limit::WallTime => "wall-clock time",
        Limit::CpuTime => "CPU time",
        Limit::Memory => "memory",
        Limit::Output => "output size",
        Limit::FileSize => "file size",
        Limit::Processes => "process",
    }
}

fn not_started(stage: runcell_jail::Stage, errno: i32, what: &str) -> String {
    format!(
        "{what} could not be started ({}: {})",
        stage.describe(),
        std::io::Error::from_raw_os_error(errno)
    )
}

fn compile_result(out: &Outcome) -> CompileResult {
    CompileResult {
        stdout: decode_output(&out.stdout, out.stdout_truncated),
        stderr: decode_output(&out.stderr, out.stderr_truncated),
        exit_code: match out.exit {
            Exit::Exited(c) => c,
            _ => -1,
        },
        execution_time: secs(out.wall_time),
        cpu_time: secs(out.cpu_time),
        memory_peak_kb: out.memory_peak_bytes / 1024,
        limit_exceeded: out.limit.map(|l| l.as_str().to_string()),
        cached: false,
    }
}

/// Why a run failed at a limit, with what to do about it where the caller can do something.
fn limit_reason(l: Limit, limits: &Limits, maxima: &Limits) -> String {
    match l {
        Limit::Processes => {
            let (n, max) = (limits.max_processes, maxima.max_processes);
            let hint = if n < max {
                format!("raise max_processes (up to {max} on this server)")
            } else {
                format!("{n} is this server's maximum")
            };
            format!(
                "the program hit its limit of {n} processes and threads (creating another \
                 process or thread failed); {hint}"
            )
        }
        l => format!("the program exceeded its {} limit", limit_words(l)),
    }
}

fn fill_result(r: &mut ExecutionResult, out: &Outcome, limits: &Limits, maxima: &Limits) {
    r.stdout = decode_output(&out.stdout, out.stdout_truncated);
    r.stderr = decode_output(&out.stderr, out.stderr_truncated);
    r.stdout_truncated = out.stdout_truncated;
    r.stderr_truncated = out.stderr_truncated;
    r.execution_time = secs(out.wall_time);
    r.cpu_time = secs(out.cpu_time);
    r.memory_peak_kb = out.memory_peak_bytes / 1024;
    r.limit_exceeded = out.limit.map(|l| l.as_str().to_string());
    match out.exit {
        Exit::Exited(c) => r.exit_code = c,
        Exit::Signaled(s) => {
            r.exit_code = -1;
            r.signal = Some(signal_name(s));
        }
        Exit::NotStarted { stage, errno } => {
            r.exit_code = -1;
            r.status = ResultStatus::Failed;
            r.failure_reason = Some(not_started(stage, errno, "the program"));
        }
    }
    if let Some(l) = out.limit {
        r.status = ResultStatus::Failed;
        r.failure_reason = Some(limit_reason(l, limits, maxima));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_match_by_prefix() {
        assert!(version_matches("3.11.2", "3"));
        assert!(version_matches("3.11.2", "3.11"));
        assert!(version_matches("3.11.2", "3.11.2"));
        assert!(version_matches("3.11.2", "latest"));
        assert!(version_matches("3.11.2", "*"));
        assert!(!version_matches("3.11.2", "3.1"));
        assert!(!version_matches("3.11.2", "2"));
    }

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env_name("FOO_1"));
        assert!(valid_env_name("_x"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A=B"));
        assert!(!valid_env_name(""));
        assert!(!valid_env_name("A-B"));
    }

    #[test]
    fn file_names_are_checked() {
        assert!(valid_file_name("util.py").is_ok());
        assert!(valid_file_name("pkg/mod.py").is_ok());
        for bad in ["", "/etc/x", "../x", "a/../b", "a//b", "a\0", "a\\b", "."] {
            assert!(valid_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_process_limit_reason_says_what_to_raise() {
        let p = LimitPolicy::default();
        let mut l = p.defaults;
        let r = limit_reason(Limit::Processes, &l, &p.maxima);
        assert!(r.contains("limit of 64 processes and threads"), "{r}");
        assert!(r.contains("raise max_processes (up to 1024"), "{r}");
        l.max_processes = 1024;
        let r = limit_reason(Limit::Processes, &l, &p.maxima);
        assert!(r.contains("1024 is this server's maximum"), "{r}");
        assert!(!r.contains("raise"), "{r}");
        let r = limit_reason(Limit::Memory, &l, &p.maxima);
        assert_eq!(r, "the program exceeded its memory limit");
    }

    #[test]
    fn later_env_entries_override_earlier_ones() {
        let mut env = base_env();
        merge_env(&mut env, [("HOME".to_string(), "/w".to_string())]);
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert_eq!(env.last().unwrap(), &("HOME".to_string(), "/w".to_string()));
    }
}
