//! Jupyter kernels inside runcell jails.
//!
//! A kernel is a long-lived process of a sandbox's jail (a shared step), started from its
//! language's command with a connection file in the jail's runtime directory. It listens on
//! TCP ports of the jail's own loopback; the host reaches them through sockets made inside the
//! jail's network namespace ([`runcell_jail::Jail::connect_tcp`]), and every byte the kernel
//! sends passes a ZMTP guard ([`guard`]) before the ZeroMQ client sees it: code in the sandbox
//! controls its kernel, so the kernel is as untrusted as the code.
//!
//! The client speaks the Jupyter messaging protocol (`jupyter-zmq-client`): execute requests
//! on the shell channel, outputs on IOPub. Interrupts are SIGINT to the kernel's process
//! group. Knows nothing of HTTP.

mod client;
pub mod guard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runcell_jail::{
    Jail, Killer, Outcome, OutputTarget, ProcessSpec, RUNTIME_DIR, Rlimits, RunLimits, StdinSource,
    StepMode, WORKSPACE,
};
use tokio::sync::{Mutex, watch};

pub use client::{Event, ExecuteOutcome, ReplyStatus};
pub use guard::GuardLimits;

use client::KernelConnection;

/// Kernel errors.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the kernel did not start: {0}")]
    Start(String),
    #[error("the kernel died{0}")]
    Dead(String),
    #[error("kernel protocol: {0}")]
    Protocol(String),
    #[error("jail: {0}")]
    Jail(#[from] runcell_jail::JailError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How to start one kernel.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// A name unique within the jail (file names are derived from it).
    pub name: String,
    /// The command; `{connection_file}` already expanded with [`KernelSpec::connection_file`].
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub rlimits: Rlimits,
    /// Five free TCP ports of the jail's loopback: shell, iopub, stdin, control, heartbeat.
    pub ports: [u16; 5],
    /// How long the kernel may take to start listening.
    pub start_timeout: Duration,
    pub limits: GuardLimits,
    /// How long to keep reading a run's outputs after the kernel is idle again, for kernels
    /// that publish late (zero: none).
    pub settle: Duration,
}

impl KernelSpec {
    /// Path of the connection file inside the jail.
    pub fn connection_file(name: &str) -> String {
        format!("{RUNTIME_DIR}/kernel-{name}.json")
    }
}

fn log_name(name: &str) -> String {
    format!("kernel-{name}.log")
}

/// A running kernel.
pub struct Kernel {
    jail: Arc<Jail>,
    name: String,
    conn: Mutex<KernelConnection>,
    settle: Duration,
    killer: Killer,
    alive: watch::Receiver<bool>,
    /// How the kernel's process ended, once its supervisor has seen it end.
    ended: watch::Receiver<Option<Arc<Outcome>>>,
}

fn random_key() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the kernel's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Kernel {
    /// Starts a kernel in `jail` (which must have shared mounts) and connects to it. The
    /// local sockets of the ZeroMQ client are made in `sock_dir`, a host directory only root
    /// can enter.
    pub async fn start(
        jail: Arc<Jail>,
        spec: KernelSpec,
        sock_dir: &Path,
    ) -> Result<Kernel, KernelError> {
        let rt = jail
            .runtime_dir()
            .ok_or_else(|| KernelError::Start("the jail has no runtime directory".into()))?;
        let key = random_key();
        let conn_file = serde_json::json!({
            "transport": "tcp",
            "ip": "127.0.0.1",
            "shell_port": spec.ports[0],
            "iopub_port": spec.ports[1],
            "stdin_port": spec.ports[2],
            "control_port": spec.ports[3],
            "hb_port": spec.ports[4],
            "key": key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": spec.name,
        });
        let file_name = format!("kernel-{}.json", spec.name);
        rt.write_file(&file_name, conn_file.to_string().as_bytes(), 0o600)
            .map_err(|e| KernelError::Start(format!("write the connection file: {e}")))?;
        let log = rt
            .create(&log_name(&spec.name), 0o600)
            .map_err(|e| KernelError::Start(format!("create the kernel log: {e}")))?;
        let log2 = log.try_clone()?;
        let process = jail.start(
            &ProcessSpec {
                argv: spec.argv.clone(),
                env: spec.env.clone(),
                cwd: WORKSPACE.into(),
                rlimits: spec.rlimits,
                mode: StepMode::Shared,
            },
            StdinSource::Null,
            OutputTarget::Fd(log),
            OutputTarget::Fd(log2),
        )?;
        let killer = process.killer()?;
        let (alive_tx, alive) = watch::channel(true);
        let alive_tx = Arc::new(alive_tx);
        let (ended_tx, ended) = watch::channel(None);
        {
            // The kernel's process, supervised for its whole life.
            let jail = Arc::clone(&jail);
            let alive_tx = Arc::clone(&alive_tx);
            std::thread::Builder::new()
                .name("runcell-kernel".into())
                .spawn(move || {
                    let forever = Duration::from_secs(100 * 365 * 24 * 3600);
                    let limits = RunLimits {
                        wall_time: forever,
                        cpu_time: forever,
                        output_bytes: 1,
                    };
                    let outcome = jail.supervise(process, &limits, &mut |_, _| {});
                    ended_tx.send_replace(outcome.ok().map(Arc::new));
                    alive_tx.send_replace(false);
                })?;
        }
        let connect = KernelConnection::connect(
            &jail,
            spec.ports,
            &key,
            sock_dir,
            spec.limits,
            Arc::clone(&alive_tx),
            alive.clone(),
            Instant::now() + spec.start_timeout,
        )
        .await;
        let conn = match connect {
            Ok(c) => c,
            Err(e) => {
                let _ = killer.kill();
                let log = rt
                    .read_file(&log_name(&spec.name), 1 << 20)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(KernelError::Start(if tail.is_empty() {
                    e.to_string()
                } else {
                    format!("{e}; the kernel said:\n{tail}")
                }));
            }
        };
        Ok(Kernel {
            jail,
            name: spec.name,
            conn: Mutex::new(conn),
            settle: spec.settle,
            killer,
            alive,
            ended,
        })
    }

    /// Runs code; calls `on` for every output as it arrives. Runs of one kernel are serialized
    /// (a second call waits). Ends with an error if the kernel dies meanwhile.
    pub async fn execute(
        &self,
        code: &str,
        on: &mut (dyn FnMut(Event) + Send),
    ) -> Result<ExecuteOutcome, KernelError> {
        let mut conn = self.conn.lock().await;
        if !*self.alive.borrow() {
            return Err(KernelError::Dead(String::new()));
        }
        conn.execute(code, false, self.settle, on).await
    }

    /// Runs code without a trace: no outputs, no history, the execution count unchanged
    /// (for set-up such as environment variables or warming imports).
    pub async fn execute_silent(&self, code: &str) -> Result<ExecuteOutcome, KernelError> {
        let mut conn = self.conn.lock().await;
        if !*self.alive.borrow() {
            return Err(KernelError::Dead(String::new()));
        }
        conn.execute(code, true, Duration::ZERO, &mut |_| {}).await
    }

    /// Interrupts what the kernel is running (SIGINT to its process group).
    pub fn interrupt(&self) -> std::io::Result<()> {
        self.killer.signal(libc::SIGINT)
    }

    /// A handle that interrupts or kills this kernel without waiting for a run to end.
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }

    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// A receiver that turns false when the kernel dies.
    pub fn liveness(&self) -> watch::Receiver<bool> {
        self.alive.clone()
    }

    /// How the kernel's process ended (its exit, whether we killed it, the jail's OOM counter
    /// then), waiting up to `within` for its supervisor to see the end; `None` if it has not
    /// ended by then (say, only its connection broke) or could not be supervised to the end.
    pub async fn ended(&self, within: Duration) -> Option<Arc<Outcome>> {
        let mut rx = self.ended.clone();
        // Timed out, or the supervisor is gone without an outcome (an error): what is there.
        let _ = tokio::time::timeout(within, rx.wait_for(|o| o.is_some())).await;
        rx.borrow().clone()
    }

    /// Kills the kernel (and every process of its group).
    pub fn kill(&self) {
        let _ = self.killer.kill();
    }

    /// The jail the kernel runs in.
    pub fn jail(&self) -> &Arc<Jail> {
        &self.jail
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let _ = self.killer.kill();
    }
}

/// A host directory for the client's local sockets: created 0700, owned by root. Directories
/// that earlier server processes left behind (their pid is gone) are removed.
pub fn socket_dir(base: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("kernels-"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!("kernels-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}
