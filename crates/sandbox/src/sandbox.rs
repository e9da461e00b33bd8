//! A sandbox (one jail with a shared budget and a persistent workspace) and its code contexts
//! (one Jupyter kernel each, inside the jail).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use runcell_engine::model::rfc3339;
use runcell_engine::{Engine, SANDBOX_READY_PORT, SandboxBudget, base_env};
use runcell_jail::{Exit, Jail, Killer};
use runcell_kernel::{Event, Kernel, KernelError, KernelSpec, ReplyStatus};
use runcell_lang::Language;

use crate::artifacts::{self, Captured};
use crate::model::{Artifact, RunStatus};
use crate::run::Run;
use crate::{SandboxConfig, SandboxError};

/// How often an interrupt is repeated until the run stops.
const INTERRUPT_EVERY: Duration = Duration::from_millis(250);
/// How long a run that lost its kernel waits for the kernel's supervisor to say how it ended
/// (it sees the end within milliseconds; a kernel whose connection broke may still live).
const KERNEL_END_WAIT: Duration = Duration::from_secs(5);

/// Ports of the jail's loopback handed to kernels (five each).
const PORT_FIRST: u32 = 20_000;
const PORT_LAST: u32 = 60_000;

/// A long-lived jail: everything started in it shares its memory, CPU, process and disk
/// budget; its workspace lives as long as it does.
pub struct Sandbox {
    id: String,
    engine: Arc<Engine>,
    jail: Arc<Jail>,
    budget: SandboxBudget,
    env: Vec<(String, String)>,
    cfg: Arc<SandboxConfig>,
    next_port: AtomicU32,
    contexts: Mutex<HashMap<String, Arc<Context>>>,
    /// The default context of each language (created on first use).
    defaults: tokio::sync::Mutex<HashMap<String, String>>,
    closed: Mutex<Option<String>>,
    /// Whether the jail is frozen (paused). Held while it is being frozen or thawed, and by
    /// [`Sandbox::destroy`] before it kills, so that a freeze never lands after the thaw that
    /// lets a frozen jail's processes die (on cgroup v1 a frozen task does not die until
    /// thawed).
    frozen: Mutex<bool>,
    /// The same, for code runs under way: their time limits do not count while paused.
    paused: tokio::sync::watch::Sender<bool>,
    self_ref: Weak<Sandbox>,
    pub(crate) commands: crate::command::Commands,
    pub(crate) sessions: Mutex<HashMap<String, Arc<crate::command::Session>>>,
    /// Its egress gateway, when it may reach the network (dropped when it is destroyed).
    gateway: Mutex<Option<runcell_egress::Gateway>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("id", &self.id).finish()
    }
}

impl Sandbox {
    /// Prepares the sandbox's jail (blocking: a few milliseconds).
    pub fn create(
        engine: Arc<Engine>,
        id: String,
        budget: SandboxBudget,
        env: Vec<(String, String)>,
        cfg: Arc<SandboxConfig>,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let jail = Arc::new(engine.sandbox_jail(&budget)?);
        Ok(Arc::new_cyclic(|me| Sandbox {
            id,
            engine,
            jail,
            budget,
            env: sandbox_env(env),
            cfg,
            next_port: AtomicU32::new(PORT_FIRST),
            contexts: Mutex::new(HashMap::new()),
            defaults: tokio::sync::Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            frozen: Mutex::new(false),
            paused: tokio::sync::watch::Sender::new(false),
            self_ref: me.clone(),
            commands: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            gateway: Mutex::new(None),
        }))
    }

    /// Lets the sandbox reach what `plan` allows, through the engine's egress gateway
    /// (blocking: a few system calls in its namespace).
    pub fn attach_network(&self, plan: &runcell_egress::NetworkPlan) -> Result<(), SandboxError> {
        let g = runcell_engine::network::attach(
            self.engine.egress().map(|e| &**e),
            &self.jail,
            plan,
            &self.id,
        )?;
        *self.gateway.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
        Ok(())
    }

    /// What the sandbox's network did so far (none: it is offline).
    pub fn network_stats(&self) -> Option<runcell_egress::NetworkStats> {
        self.gateway
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(runcell_egress::Gateway::stats)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn budget(&self) -> &SandboxBudget {
        &self.budget
    }

    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The sandbox's jail (its workspace, its processes, its cgroup).
    pub fn jail(&self) -> &Arc<Jail> {
        &self.jail
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn config(&self) -> &Arc<SandboxConfig> {
        &self.cfg
    }

    /// Why the sandbox was closed, if it was.
    pub fn closed_reason(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn check_open(&self) -> Result<(), SandboxError> {
        match self.closed_reason() {
            Some(r) => Err(SandboxError::Closed(r)),
            None => Ok(()),
        }
    }

    fn language(&self, name: &str) -> Result<Language, SandboxError> {
        let lang = self
            .engine
            .registry()
            .resolve(name.trim())
            .ok_or_else(|| SandboxError::UnsupportedLanguage(name.to_string()))?;
        if lang.context.is_none() {
            return Err(SandboxError::ContextsUnavailable(format!(
                "{} has no code contexts; contexts are available for {}",
                lang.name,
                self.context_languages().join(", ")
            )));
        }
        if !lang.contexts_available() {
            return Err(SandboxError::ContextsUnavailable(format!(
                "the {} kernel is not installed on this server (run `runcell runtimes install {}`)",
                lang.name, lang.id
            )));
        }
        Ok(lang.clone())
    }

    /// Ids of the languages that have code contexts.
    pub fn context_languages(&self) -> Vec<String> {
        self.engine
            .registry()
            .all()
            .iter()
            .filter(|l| l.context.is_some())
            .map(|l| l.id.clone())
            .collect()
    }

    fn ports(&self) -> [u16; 5] {
        kernel_ports(&self.next_port)
    }

    /// Starts a kernel for context `ctx_id`.
    async fn start_kernel(&self, lang: &Language, ctx_id: &str) -> Result<Kernel, SandboxError> {
        self.check_open()?;
        let prefix = &self.engine.config().prefix;
        let conn = KernelSpec::connection_file(ctx_id);
        let argv = lang
            .context_argv(prefix, &conn)
            .ok_or_else(|| SandboxError::ContextsUnavailable(lang.name.clone()))?;
        let mut env = base_env();
        merge(&mut env, lang.context_env(prefix, self.budget.memory_mb));
        merge(&mut env, self.env.iter().cloned());
        let process = self
            .engine
            .sandbox_process(argv, env, &self.budget, self.cfg.cpu_secs);
        let spec = KernelSpec {
            name: ctx_id.to_string(),
            argv: process.argv,
            env: process.env,
            rlimits: process.rlimits,
            ports: self.ports(),
            start_timeout: self.cfg.kernel_start_timeout,
            limits: self.cfg.guard,
            settle: lang
                .context
                .as_ref()
                .and_then(|c| c.settle_ms)
                .map_or(Duration::ZERO, Duration::from_millis),
        };
        let started = Instant::now();
        let kernel = Kernel::start(Arc::clone(&self.jail), spec, &self.cfg.sock_dir)
            .await
            .map_err(|e| match e {
                KernelError::Start(s) if self.closed_reason().is_some() => {
                    SandboxError::Closed(self.closed_reason().unwrap_or(s))
                }
                e => SandboxError::Kernel(e.to_string()),
            })?;
        tracing::debug!(
            sandbox = %self.id,
            context = ctx_id,
            language = %lang.id,
            "kernel started in {:?}",
            started.elapsed()
        );
        Ok(kernel)
    }

    /// Creates a code context: starts its kernel and waits until it answers.
    pub async fn create_context(&self, language: &str) -> Result<Arc<Context>, SandboxError> {
        self.check_open()?;
        let lang = self.language(language)?;
        {
            let n = self
                .contexts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len();
            if n >= self.cfg.max_contexts {
                return Err(SandboxError::TooManyContexts(self.cfg.max_contexts));
            }
        }
        let id = crate::ids::context_id();
        let kernel = self.start_kernel(&lang, &id).await?;
        let ctx = Arc::new(Context {
            id: id.clone(),
            language: lang.id.clone(),
            lang,
            created_at: SystemTime::now(),
            sandbox: self.self_ref.clone(),
            killer: Mutex::new(Some(kernel.killer())),
            slot: tokio::sync::Mutex::new(Some(kernel)),
            deleted: AtomicBool::new(false),
        });
        self.contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&ctx));
        if self.closed_reason().is_some() {
            ctx.delete();
            self.check_open()?;
        }
        Ok(ctx)
    }

    /// The default context of `language`, created on first use (concurrent first uses make
    /// one context).
    pub async fn default_context(&self, language: &str) -> Result<Arc<Context>, SandboxError> {
        let lang = self.language(language)?;
        let mut defaults = self.defaults.lock().await;
        if let Some(id) = defaults.get(&lang.id)
            && let Some(ctx) = self.context(id)
        {
            return Ok(ctx);
        }
        let ctx = self.create_context(&lang.id).await?;
        defaults.insert(lang.id.clone(), ctx.id.clone());
        Ok(ctx)
    }

    pub fn context(&self, id: &str) -> Option<Arc<Context>> {
        self.contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every context, oldest first.
    pub fn contexts(&self) -> Vec<Arc<Context>> {
        let mut v: Vec<_> = self
            .contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|c| c.created_at);
        v
    }

    /// Deletes a context: its kernel is killed (a run in it fails). False if there is none.
    pub fn delete_context(&self, id: &str) -> bool {
        let ctx = self
            .contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        match ctx {
            Some(c) => {
                c.delete();
                true
            }
            None => false,
        }
    }

    /// Whether the sandbox is paused (its processes frozen).
    pub fn is_paused(&self) -> bool {
        *self.frozen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses the sandbox: every process in it (its kernels, commands, sessions and whatever
    /// they started) is frozen where it stands, keeps its memory and uses no CPU until
    /// [`Sandbox::resume`]. Code runs under way are frozen with their kernel, and their time
    /// limit stops counting. Returns false when it was already paused. Blocking (the kernel
    /// freezes tasks asynchronously; this waits until all are frozen): call from a blocking
    /// thread.
    pub fn pause(&self) -> Result<bool, SandboxError> {
        let mut frozen = self.frozen.lock().unwrap_or_else(|p| p.into_inner());
        self.check_open()?;
        if *frozen {
            return Ok(false);
        }
        if let Err(e) = self.jail.set_frozen(true) {
            // Part of it may be frozen: leave nothing half-paused.
            let _ = self.jail.set_frozen(false);
            return Err(e.into());
        }
        *frozen = true;
        self.paused.send_replace(true);
        Ok(true)
    }

    /// Resumes a paused sandbox: its processes go on where they stopped. Returns false when it
    /// was not paused. Blocking, like [`Sandbox::pause`].
    pub fn resume(&self) -> Result<bool, SandboxError> {
        let mut frozen = self.frozen.lock().unwrap_or_else(|p| p.into_inner());
        self.check_open()?;
        if !*frozen {
            return Ok(false);
        }
        self.jail.set_frozen(false)?;
        *frozen = false;
        self.paused.send_replace(false);
        Ok(true)
    }

    /// Closes the sandbox: every process in it dies and its workspace and cgroup are removed
    /// before this returns (blocking: call from a blocking thread), paused or not. Idempotent.
    pub fn destroy(&self, reason: &str) {
        {
            let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
            if closed.is_none() {
                *closed = Some(reason.to_string());
            }
        }
        // A pause under way finishes first (and none starts now that the sandbox is closed):
        // the jail's destruction thaws what it kills, so nothing is frozen after it.
        let _frozen = self.frozen.lock().unwrap_or_else(|p| p.into_inner());
        let contexts: Vec<_> = self
            .contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in &contexts {
            c.deleted.store(true, Ordering::SeqCst);
        }
        if let Err(e) = self.jail.shutdown() {
            tracing::warn!(sandbox = %self.id, "destroying the jail: {e}");
        }
        // Its resolver, stand-in listeners and relayed connections go with it.
        drop(
            self.gateway
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        self.paused.send_replace(false);
    }

    /// Runs the language's warm-up code in a context (for pre-started sandboxes).
    pub async fn warm_up(&self, ctx: &Context) -> Result<(), SandboxError> {
        let Some(code) = ctx.lang.context.as_ref().and_then(|c| c.warmup.clone()) else {
            return Ok(());
        };
        let slot = ctx.slot.lock().await;
        if let Some(k) = slot.as_ref() {
            k.execute_silent(&code)
                .await
                .map_err(|e| SandboxError::Kernel(e.to_string()))?;
        }
        Ok(())
    }
}

/// The next five loopback ports for a kernel, never the agent's [`SANDBOX_READY_PORT`].
fn kernel_ports(next: &AtomicU32) -> [u16; 5] {
    loop {
        let mut base = next.fetch_add(5, Ordering::SeqCst);
        if base + 5 > PORT_LAST {
            // Wrap around: contexts that old are long gone (and their ports with them).
            next.store(PORT_FIRST + 5, Ordering::SeqCst);
            base = PORT_FIRST;
        }
        let b = base as u16;
        let ports = [b, b + 1, b + 2, b + 3, b + 4];
        if !ports.contains(&SANDBOX_READY_PORT) {
            return ports;
        }
    }
}

/// The environment of everything started in a sandbox, before a command's own: the
/// caller's, after `JUPYTER_PORT` naming the port where the jail's agent accepts connections
/// (OpenSandbox's code-interpreter SDK probes it to know the sandbox ready) and `EXECD_ENVS`
/// naming the file of persisted variables, unless the caller set them.
fn sandbox_env(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let defaults = [
        ("JUPYTER_PORT", SANDBOX_READY_PORT.to_string()),
        (crate::command::ENV_FILE_VAR, ENV_FILE.to_string()),
    ];
    let mut out: Vec<(String, String)> = defaults
        .into_iter()
        .filter(|(k, _)| !env.iter().any(|(x, _)| x == k))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    out.extend(env);
    out
}

/// Where `commands.set_env` of OpenSandbox's SDKs persists variables for later commands
/// (`EXECD_ENVS`): in the jail's private runtime directory, out of the workspace.
const ENV_FILE: &str = "/run/runcell/execd.env";

fn merge(into: &mut Vec<(String, String)>, more: impl IntoIterator<Item = (String, String)>) {
    for (k, v) in more {
        into.retain(|(x, _)| *x != k);
        into.push((k, v));
    }
}

/// A stateful code context: one kernel in the sandbox's jail. Runs in one context are served
/// one at a time, in the order they arrived.
pub struct Context {
    pub id: String,
    /// Canonical language id.
    pub language: String,
    lang: Language,
    pub created_at: SystemTime,
    sandbox: Weak<Sandbox>,
    /// The kernel; holding this lock is holding the context (runs queue on it, FIFO).
    slot: tokio::sync::Mutex<Option<Kernel>>,
    /// The current kernel's signaller, usable while a run holds the slot.
    killer: Mutex<Option<Killer>>,
    deleted: AtomicBool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("language", &self.language)
            .finish()
    }
}

/// Why a run was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancel,
    Timeout,
}

impl Context {
    fn delete(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        if let Some(k) = self
            .killer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = k.kill();
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// Whether a run holds the context now.
    pub fn is_busy(&self) -> bool {
        self.slot.try_lock().is_err()
    }

    /// Interrupts whatever the kernel runs now (SIGINT).
    pub fn interrupt(&self) {
        if let Some(k) = self
            .killer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = k.signal(libc::SIGINT);
        }
    }

    fn kill_kernel(&self) {
        if let Some(k) = self
            .killer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = k.kill();
        }
    }

    /// Why the context cannot run anything, if it cannot.
    fn gone(&self, sandbox: Option<&Sandbox>) -> Option<String> {
        match sandbox {
            None => Some("the sandbox is gone".into()),
            Some(s) => match s.closed_reason() {
                Some(r) => Some(format!("the sandbox was {r}")),
                None if self.is_deleted() => Some("the context was deleted".into()),
                None => None,
            },
        }
    }

    /// Runs `code` as `run`: waits for the context (runs queue), then executes, streaming
    /// outputs into the run, enforcing `timeout` and cancellation (interrupt, then kill after
    /// the grace period), and collects the workspace files the run created or changed. A
    /// kernel that died is restarted (its state is lost, and the run says so).
    pub async fn execute(
        self: &Arc<Self>,
        run: Arc<Run>,
        code: String,
        env: Vec<(String, String)>,
        timeout: Duration,
    ) {
        let mut slot = tokio::select! {
            biased;
            _ = run.cancelled() => {
                run.finish(RunStatus::Cancelled, Some("the run was cancelled before it started".into())).await;
                return;
            }
            g = self.slot.lock() => g,
        };
        if run.is_cancel_requested() {
            run.finish(
                RunStatus::Cancelled,
                Some("the run was cancelled before it started".into()),
            )
            .await;
            return;
        }
        let sandbox = self.sandbox.upgrade();
        if let Some(why) = self.gone(sandbox.as_deref()) {
            run.finish(RunStatus::Failed, Some(why)).await;
            return;
        }
        let Some(sandbox) = sandbox else { return };
        if !slot.as_ref().is_some_and(Kernel::is_alive) {
            match sandbox.start_kernel(&self.lang, &self.id).await {
                Ok(k) => {
                    *self.killer.lock().unwrap_or_else(|p| p.into_inner()) = Some(k.killer());
                    *slot = Some(k);
                }
                Err(e) => {
                    run.finish(
                        RunStatus::Failed,
                        Some(format!("the context's kernel could not be started: {e}")),
                    )
                    .await;
                    return;
                }
            }
        }
        let Some(kernel) = slot.as_ref() else { return };
        if !env.is_empty() {
            let Some(style) = self.lang.context.as_ref().and_then(|c| c.env_style) else {
                run.finish(
                    RunStatus::Failed,
                    Some(format!(
                        "{} contexts cannot set environment variables per run",
                        self.lang.name
                    )),
                )
                .await;
                return;
            };
            if let Err(e) = kernel.execute_silent(&style.code(&env)).await {
                run.finish(
                    RunStatus::Failed,
                    Some(format!("setting the run's environment failed: {e}")),
                )
                .await;
                return;
            }
        }
        run.set_running();
        let jail = Arc::clone(sandbox.jail());
        let scan = sandbox.cfg.scan_entries;
        let before = {
            let jail = Arc::clone(&jail);
            tokio::task::spawn_blocking(move || artifacts::snapshot(jail.workspace(), scan))
                .await
                .unwrap_or_default()
        };
        let oom_before = jail.stats().map(|s| s.oom_kills).unwrap_or(0);
        let mut deadline = tokio::time::Instant::now() + timeout;
        let grace = sandbox.cfg.interrupt_grace;
        // While the sandbox is paused the run's clock stops: its deadline (and the grace of an
        // interrupt sent before) moves on by the time spent paused.
        let mut pauses = sandbox.paused.subscribe();
        let mut paused_at = pauses.borrow_and_update().then(tokio::time::Instant::now);
        let (result, stop, killed) = {
            let r = &run;
            let mut on = |ev: Event| r.on_kernel_event(ev);
            let exec = kernel.execute(&code, &mut on);
            tokio::pin!(exec);
            let mut stop: Option<(Stop, tokio::time::Instant)> = None;
            let mut killed = false;
            // SIGINT is repeated until the run ends: the kernel ignores it between requests,
            // and one that lands before the code starts is lost. The first is sent once the
            // kernel has announced the code (execute_input), or after a short wait for kernels
            // that do not announce it.
            let mut resend = tokio::time::interval(INTERRUPT_EVERY);
            resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let result = loop {
                tokio::select! {
                    res = &mut exec => break res,
                    Ok(()) = pauses.changed() => {
                        let paused = *pauses.borrow_and_update();
                        match (paused, paused_at) {
                            (true, None) => paused_at = Some(tokio::time::Instant::now()),
                            (false, Some(at)) => {
                                let spent = at.elapsed();
                                deadline += spent;
                                if let Some((_, stopped)) = stop.as_mut() {
                                    *stopped += spent;
                                }
                                paused_at = None;
                            }
                            _ => {}
                        }
                    }
                    _ = run.cancelled(), if stop.is_none() => {
                        stop = Some((Stop::Cancel, tokio::time::Instant::now()));
                        if run.execution_count().is_some() {
                            self.interrupt();
                        }
                        resend.reset();
                    }
                    _ = tokio::time::sleep_until(deadline), if stop.is_none() && paused_at.is_none() => {
                        stop = Some((Stop::Timeout, tokio::time::Instant::now()));
                        self.interrupt();
                        resend.reset();
                    }
                    _ = resend.tick(), if stop.is_some() && !killed && paused_at.is_none() => {
                        self.interrupt();
                    }
                    _ = tokio::time::sleep_until(
                        stop.map(|(_, at)| at + grace).unwrap_or(deadline)
                    ), if stop.is_some() && !killed && paused_at.is_none() => {
                        // The code ignored the interrupts.
                        self.kill_kernel();
                        killed = true;
                    }
                }
            };
            (result, stop.map(|(s, _)| s), killed)
        };
        let alive = kernel.is_alive();
        // How the kernel ended, if it did during the run. Only its own death of an OOM kill
        // makes the run a MemoryError: the sandbox's other processes (a background command, a
        // child of the code) can be the OOM killer's victims while the run goes on.
        let ended = if stop.is_none() && (!alive || result.is_err()) {
            kernel.ended(KERNEL_END_WAIT).await
        } else {
            None
        };
        let oom = ended
            .as_ref()
            .is_some_and(|o| o.oom_killed_after(oom_before));
        let lost = "; the context's kernel was restarted and its state is lost";
        let (status, reason) = match (&result, stop) {
            (_, Some(Stop::Cancel)) => (
                RunStatus::Cancelled,
                Some(format!(
                    "the run was cancelled{}",
                    if alive { "" } else { lost }
                )),
            ),
            (_, Some(Stop::Timeout)) => (
                RunStatus::Failed,
                Some(format!(
                    "timeout: the run exceeded its time limit of {} s and was interrupted{}",
                    timeout.as_secs_f64(),
                    if killed || !alive {
                        "; it did not stop, so the kernel was restarted and its state is lost"
                    } else {
                        ""
                    }
                )),
            ),
            _ if self.is_deleted() || sandbox.closed_reason().is_some() => (
                RunStatus::Failed,
                self.gone(Some(&*sandbox))
                    .or_else(|| Some("the context was deleted".into())),
            ),
            _ if oom => {
                let why = memory_error(&sandbox);
                run.set_error("MemoryError", &why);
                (RunStatus::Failed, Some(format!("memory limit: {why}")))
            }
            // The code ran to its end (a process it started may have been killed for memory,
            // the kernel was not).
            (Ok(o), None) if o.status == ReplyStatus::Ok => (RunStatus::Succeeded, None),
            (Ok(_), None) => match run.error() {
                Some(e) => (
                    RunStatus::Failed,
                    Some(format!("the code raised {}: {}", e.name, e.value)),
                ),
                None => (RunStatus::Failed, Some("the kernel aborted the run".into())),
            },
            (Err(e), None) => {
                run.set_error("KernelDied", &e.to_string());
                let how = match ended.as_ref().map(|o| o.exit) {
                    Some(Exit::Exited(n)) => format!("; it exited with status {n}"),
                    Some(Exit::Signaled(s)) => format!("; it was killed by signal {s}"),
                    _ => String::new(),
                };
                (
                    RunStatus::Failed,
                    Some(format!("the context's kernel died ({e}){how}{lost}")),
                )
            }
        };
        // Files the run created or changed.
        if sandbox.closed_reason().is_none() {
            let cfg = Arc::clone(&sandbox.cfg);
            let jail2 = Arc::clone(&jail);
            let captured: Vec<Captured> = tokio::task::spawn_blocking(move || {
                let after = artifacts::snapshot(jail2.workspace(), cfg.scan_entries);
                let paths = artifacts::changed(&before, &after);
                if paths.is_empty() {
                    return Vec::new();
                }
                artifacts::capture(jail2.workspace(), &paths, &cfg.artifact_dir, cfg.capture)
            })
            .await
            .unwrap_or_default();
            if !captured.is_empty() {
                let now = SystemTime::now();
                let expires = now + sandbox.cfg.artifact_ttl;
                let count = run.execution_count();
                run.set_artifacts(
                    captured
                        .into_iter()
                        .map(|c| Artifact {
                            id: c.id,
                            context_id: self.id.clone(),
                            mime_type: c.mime_type,
                            name: c.name,
                            size_bytes: c.size,
                            sha256: c.sha256,
                            created_at: rfc3339(now),
                            execution_count: count,
                            expires_at: rfc3339(expires),
                            preview_url: String::new(),
                            download_url: String::new(),
                            metadata: serde_json::Map::new(),
                        })
                        .collect(),
                );
            }
        }
        run.finish(status, reason).await;
        // A kernel that died is replaced now, so the next run finds it ready.
        if !kernel.is_alive() && self.gone(Some(&*sandbox)).is_none() {
            *slot = None;
            match sandbox.start_kernel(&self.lang, &self.id).await {
                Ok(k) => {
                    *self.killer.lock().unwrap_or_else(|p| p.into_inner()) = Some(k.killer());
                    *slot = Some(k);
                }
                Err(e) => tracing::warn!(context = %self.id, "restarting the kernel: {e}"),
            }
        }
    }
}

fn memory_error(sandbox: &Sandbox) -> String {
    format!(
        "the sandbox ran out of memory (its limit is {} MiB, shared by everything in it); \
         the process using the most was killed",
        sandbox.budget.memory_mb
    )
}

/// A sample of a sandbox's resource use against its own budget (execd's `Metrics`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Metrics {
    /// CPU cores of the budget (the host's when the budget has no CPU limit).
    pub cpu_count: f64,
    /// CPU used over the sample, as a percentage of `cpu_count` cores.
    pub cpu_used_pct: f64,
    /// The memory budget, MiB.
    pub mem_total_mib: f64,
    /// Memory in use by everything in the sandbox (its files in memory included), MiB.
    pub mem_used_mib: f64,
    /// Processes of the sandbox the kernel's out-of-memory killer has killed since it started
    /// (whichever command, kernel or child they were).
    pub oom_kills: u64,
    /// Unix milliseconds.
    pub timestamp: i64,
    /// What its network did (only a sandbox that may reach the network has it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<runcell_egress::NetworkStats>,
}

impl Sandbox {
    /// Measures CPU use over `window` and memory use at its end.
    pub async fn metrics(&self, window: Duration) -> Result<Metrics, SandboxError> {
        self.check_open()?;
        let cpu_count = self
            .budget
            .cpus
            .unwrap_or_else(|| runcell_jail::cpus::host_cpus() as f64);
        let t0 = Instant::now();
        let a = self.jail.stats()?;
        tokio::time::sleep(window).await;
        let b = self.jail.stats()?;
        let elapsed = t0.elapsed().as_nanos().max(1) as f64;
        let used = b.cpu_ns.saturating_sub(a.cpu_ns) as f64;
        let pct = (used / elapsed / cpu_count * 100.0).clamp(0.0, 100.0);
        let round = |x: f64| (x * 100.0).round() / 100.0;
        Ok(Metrics {
            cpu_count,
            cpu_used_pct: round(pct),
            mem_total_mib: self.budget.memory_mb as f64,
            mem_used_mib: round(b.memory_current as f64 / (1024.0 * 1024.0)),
            oom_kills: b.oom_kills,
            timestamp: SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            network: self.network_stats(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_ports_skip_the_ready_port_and_wrap() {
        let next = AtomicU32::new(PORT_FIRST);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..((PORT_LAST - PORT_FIRST) / 5 + 3) {
            let ports = kernel_ports(&next);
            assert!(!ports.contains(&SANDBOX_READY_PORT), "{ports:?}");
            assert!(
                ports
                    .iter()
                    .all(|&p| (PORT_FIRST..PORT_LAST).contains(&(p as u32)))
            );
            seen.insert(ports[0]);
        }
        // Every block but the one holding the ready port was handed out, then it wrapped.
        assert_eq!(seen.len() as u32, (PORT_LAST - PORT_FIRST) / 5 - 1);
    }

    #[test]
    fn sandboxes_name_the_ready_port_unless_the_caller_did() {
        let env = sandbox_env(vec![("A".into(), "1".into())]);
        assert_eq!(
            env,
            vec![
                ("JUPYTER_PORT".into(), SANDBOX_READY_PORT.to_string()),
                ("EXECD_ENVS".into(), ENV_FILE.into()),
                ("A".into(), "1".into())
            ]
        );
        let own = vec![
            ("EXECD_ENVS".to_string(), "/tmp/e".to_string()),
            ("JUPYTER_PORT".to_string(), "8888".to_string()),
        ];
        assert_eq!(sandbox_env(own.clone()), own);
        assert!(ENV_FILE.starts_with(runcell_jail::RUNTIME_DIR));
    }
}
