//! runcell sandboxes: long-lived jails with one resource budget, stateful code contexts on
//! real Jupyter kernels inside them, code runs (queued per context, cancellable, with a
//! timeout), rich results and artifacts. Knows nothing of HTTP or storage: the server keeps
//! the records (through [`RunObserver`]) and serves the routes.

pub mod artifacts;
pub mod command;
pub mod ids;
pub mod model;
mod pool;
mod run;
mod sandbox;

use std::path::PathBuf;
use std::time::Duration;

/// The language of a code context when a request names none (and of the pre-started
/// sandboxes' warm context).
pub const DEFAULT_CONTEXT_LANGUAGE: &str = "python";

pub use artifacts::CaptureLimits;
pub use command::{Command, CommandEvent, CommandSpec, CommandStatus, Session};
pub use pool::WarmPool;
pub use run::{Finished, OutputLimits, Run, RunObserver, new_doc};
pub use runcell_engine::SandboxBudget;
pub use runcell_kernel::GuardLimits;
pub use sandbox::{Context, Metrics, Sandbox};

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Unsupported language: {0}")]
    UnsupportedLanguage(String),
    /// The language has no code contexts, or its kernel is not installed.
    #[error("{0}")]
    ContextsUnavailable(String),
    #[error("this sandbox already has {0} code contexts, the most it may have; delete one first")]
    TooManyContexts(usize),
    /// The sandbox was deleted or expired (the reason says which).
    #[error("the sandbox was {0}")]
    Closed(String),
    #[error("the kernel failed: {0}")]
    Kernel(String),
    /// A request that cannot be carried out as given.
    #[error("{0}")]
    Invalid(String),
    #[error("runcell could not prepare the sandbox: {0}")]
    Jail(#[from] runcell_jail::JailError),
}

impl SandboxError {
    /// True when the request itself is at fault (a 4xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            SandboxError::UnsupportedLanguage(_)
                | SandboxError::ContextsUnavailable(_)
                | SandboxError::TooManyContexts(_)
                | SandboxError::Closed(_)
                | SandboxError::Invalid(_)
        )
    }
}

/// Settings of the sandboxes of one server.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// How long a kernel may take to start.
    pub kernel_start_timeout: Duration,
    /// Code contexts per sandbox.
    pub max_contexts: usize,
    /// Host directory (root only) that keeps artifact contents.
    pub artifact_dir: PathBuf,
    /// How long artifacts stay downloadable.
    pub artifact_ttl: Duration,
    pub capture: CaptureLimits,
    /// Workspace entries looked at when finding a run's artifacts.
    pub scan_entries: usize,
    pub output: OutputLimits,
    /// Host directory (root only) for the kernel clients' local sockets.
    pub sock_dir: PathBuf,
    /// CPU seconds each process in a sandbox may use (its longest possible life).
    pub cpu_secs: u64,
    /// How long an interrupted run may take to stop before its kernel is killed.
    pub interrupt_grace: Duration,
    pub guard: GuardLimits,
}

impl SandboxConfig {
    /// Defaults, with the two host directories under `dir`.
    pub fn with_dirs(artifact_dir: PathBuf, sock_dir: PathBuf) -> SandboxConfig {
        SandboxConfig {
            kernel_start_timeout: Duration::from_secs(60),
            max_contexts: 8,
            artifact_dir,
            artifact_ttl: Duration::from_secs(24 * 3600),
            capture: CaptureLimits {
                max_count: 32,
                max_file_bytes: 64 << 20,
                max_total_bytes: 256 << 20,
            },
            scan_entries: 20_000,
            output: OutputLimits {
                max_log_bytes: 8 << 20,
                max_result_bytes: 64 << 20,
            },
            sock_dir,
            cpu_secs: 7 * 24 * 3600,
            interrupt_grace: Duration::from_secs(2),
            guard: GuardLimits::default(),
        }
    }
}
