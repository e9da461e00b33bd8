//! The one error type of every use case: a kind that each API dialect maps to its own status
//! codes and bodies (in one place per dialect), a stable machine code (`SANDBOX_NOT_FOUND`,
//! `INVALID_LIMIT`, …) and a sentence a person understands.

use std::fmt;

/// What kind of failure an [`Error`] is; dialects choose their status codes by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The request is wrong (a field, a limit, a language, a path).
    Invalid,
    /// No credentials, or credentials that open nothing.
    Unauthorized,
    /// Credentials that are valid but not for this (an artifact link's signature, a read-only
    /// file).
    Forbidden,
    /// The object does not exist for this caller (another tenant's objects do not exist).
    NotFound,
    /// The object is in a state that refuses this (already finished, not empty, exists).
    Conflict,
    /// More than this server accepts in one request (a body, a file, a listing).
    TooLarge,
    /// A limit of the caller was reached (rate, its share of the queue, its sandboxes).
    LimitExceeded,
    /// The server is out of capacity for now (the whole queue, sessions, a kernel).
    Busy,
    /// The server failed; not the caller's fault.
    Internal,
}

/// A failed use case.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Error {
    pub kind: Kind,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, in a sentence.
    pub detail: String,
    /// When retrying makes sense, in how many seconds.
    pub retry_after: Option<u64>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, code: &'static str, detail: impl Into<String>) -> Error {
        Error {
            kind,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Error {
        Error::new(Kind::Invalid, code, detail)
    }

    /// `NOT_FOUND`: "<what> not found".
    pub fn not_found(what: &str) -> Error {
        Error::new(Kind::NotFound, "NOT_FOUND", format!("{what} not found"))
    }

    pub fn busy(code: &'static str, detail: impl Into<String>) -> Error {
        Error::new(Kind::Busy, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, code, detail)
    }

    pub fn limit(code: &'static str, detail: impl Into<String>) -> Error {
        Error::new(Kind::LimitExceeded, code, detail)
    }

    /// A failure of the server itself (logged here, once).
    pub fn internal(detail: impl fmt::Display) -> Error {
        tracing::error!("internal error: {detail}");
        Error::new(
            Kind::Internal,
            "INTERNAL_ERROR",
            format!("internal error: {detail}"),
        )
    }

    pub fn retry_after(mut self, secs: u64) -> Error {
        self.retry_after = Some(secs);
        self
    }

    /// The same error with `prefix: ` before its sentence (for items of a batch).
    pub fn within(mut self, prefix: &str) -> Error {
        self.detail = format!("{prefix}: {}", self.detail);
        self
    }
}

impl From<runcell_engine::EngineError> for Error {
    fn from(e: runcell_engine::EngineError) -> Error {
        match &e {
            runcell_engine::EngineError::System(_) => Error::internal(&e),
            _ => Error::invalid(e.code(), e.to_string()),
        }
    }
}

impl From<runcell_store::StoreError> for Error {
    fn from(e: runcell_store::StoreError) -> Error {
        Error::internal(e)
    }
}

impl From<runcell_sandbox::SandboxError> for Error {
    fn from(e: runcell_sandbox::SandboxError) -> Error {
        use runcell_sandbox::SandboxError as S;
        let detail = e.to_string();
        match e {
            S::UnsupportedLanguage(_) => Error::invalid("UNSUPPORTED_LANGUAGE", detail),
            S::ContextsUnavailable(_) => Error::invalid("CONTEXTS_UNAVAILABLE", detail),
            S::TooManyContexts(_) => Error::conflict("TOO_MANY_CONTEXTS", detail),
            // Closed while a request that had found it live was under way: the code says how
            // it ended, as for a request that comes after.
            S::Closed(reason) => Error::new(
                Kind::NotFound,
                crate::sandboxes::ended_code(&reason),
                detail,
            ),
            S::Invalid(_) => Error::invalid("INVALID_REQUEST", detail),
            S::Kernel(_) | S::Jail(_) => Error::busy("KERNEL_UNAVAILABLE", detail),
        }
    }
}

impl From<runcell_jail::FsError> for Error {
    /// A filesystem error: a 4xx kind for everything the request or the sandbox's contents
    /// explain, `Internal` only for what the server itself failed at.
    fn from(e: runcell_jail::FsError) -> Error {
        use runcell_jail::FsError as E;
        let m = e.to_string();
        let (kind, code) = match e {
            E::NotFound { .. } => (Kind::NotFound, "FILE_NOT_FOUND"),
            E::InvalidPath { .. } => (Kind::Invalid, "INVALID_PATH"),
            E::InvalidPattern { .. } => (Kind::Invalid, "INVALID_PATTERN"),
            E::InvalidArgument { .. } => (Kind::Invalid, "INVALID_REQUEST_BODY"),
            E::TooMany { .. } => (Kind::TooLarge, "TOO_MANY_ENTRIES"),
            E::NotADirectory { .. } => (Kind::Invalid, "NOT_A_DIRECTORY"),
            E::IsADirectory { .. } => (Kind::Invalid, "IS_A_DIRECTORY"),
            E::NotRegular { .. } => (Kind::Invalid, "NOT_A_REGULAR_FILE"),
            E::IsSymlink { .. } => (Kind::Invalid, "IS_A_SYMLINK"),
            E::CrossDevice { .. } => (Kind::Invalid, "CROSS_DEVICE"),
            E::NotEmpty { .. } => (Kind::Conflict, "DIRECTORY_NOT_EMPTY"),
            E::AlreadyExists { .. } => (Kind::Conflict, "FILE_EXISTS"),
            E::Forbidden { .. } => (Kind::Forbidden, "PERMISSION_DENIED"),
            E::ReadOnly { .. } => (Kind::Forbidden, "READ_ONLY"),
            E::NoSpace { .. } => (Kind::TooLarge, "NO_SPACE"),
            E::TooLarge { .. } => (Kind::TooLarge, "FILE_TOO_LARGE"),
            E::Io { .. } => {
                tracing::warn!("files: {m}");
                (Kind::Internal, "RUNTIME_ERROR")
            }
        };
        Error::new(kind, code, m)
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::internal(e)
    }
}
