//! runcell's execution engine: turns an execution request into jailed compile and run steps
//! and an `ExecutionResult`. Knows languages (through `runcell-lang`) and the jail's interface
//! (through `runcell-jail`); knows nothing of HTTP or storage.

pub mod cache;
pub mod compare;
mod engine;
pub mod judge;
pub mod limits;
pub mod model;
pub mod network;
mod pool;
pub mod rootfs;
mod warm;

pub use engine::{
    Cancel, Engine, EngineConfig, OutputSink, Plan, Prebuilt, RunContext, SANDBOX_READY_PORT,
    SandboxBudget, base_env,
};
pub use judge::{CaseResult, CheckerResult, Judging, Verdict};
pub use limits::{LimitPolicy, Limits};
pub use model::{
    CheckerRequest, CompileLimitsRequest, CompileResult, ExecuteRequest, ExecutionResult, FileSpec,
    LimitsRequest, ResultStatus, TestCase,
};

/// Why a request cannot be run. Every variant is the caller's mistake (a 4xx), except
/// `System`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("Unsupported language: {0}")]
    UnsupportedLanguage(String),
    #[error("{0}")]
    LanguageUnavailable(String),
    #[error("{0}")]
    InvalidLimit(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    TooManyTestCases(String),
    #[error("runcell could not run the program: {0}")]
    System(#[from] runcell_jail::JailError),
}

impl EngineError {
    /// The API error code (`UNSUPPORTED_LANGUAGE`, …).
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::UnsupportedLanguage(_) => "UNSUPPORTED_LANGUAGE",
            EngineError::LanguageUnavailable(_) => "LANGUAGE_UNAVAILABLE",
            EngineError::InvalidLimit(_) => "INVALID_LIMIT",
            EngineError::InvalidRequest(_) => "INVALID_REQUEST",
            EngineError::TooManyTestCases(_) => "TOO_MANY_TEST_CASES",
            EngineError::System(_) => "INTERNAL_ERROR",
        }
    }

    /// True when the request itself is at fault.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, EngineError::System(_))
    }
}
