//! runcell's durable state behind one trait, [`Store`], with an embedded SQLite (WAL)
//! implementation, [`SqliteStore`]. Knows nothing of HTTP or jails: it stores executions (the
//! durable queue of async work and the results), tenants' webhook secrets and API key hashes,
//! and webhook deliveries with their attempts.
//!
//! Every read and write of a tenant's objects takes the tenant: a row of another tenant is
//! indistinguishable from a missing one.
//!
//! Times are Unix milliseconds (`i64`). JSON documents (requests, results, webhook payloads)
//! are stored as text and are opaque here.

mod sqlite;

pub use sqlite::SqliteStore;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Lifecycle of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecStatus {
    /// Accepted, waiting for a worker.
    Pending,
    /// A worker is running it.
    Running,
    /// The program ran (whatever its exit code).
    Completed,
    /// A limit killed it, it was cancelled, or the system could not run it.
    Failed,
}

impl ExecStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::Pending => "pending",
            ExecStatus::Running => "running",
            ExecStatus::Completed => "completed",
            ExecStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ExecStatus> {
        match s {
            "pending" => Some(ExecStatus::Pending),
            "running" => Some(ExecStatus::Running),
            "completed" => Some(ExecStatus::Completed),
            "failed" => Some(ExecStatus::Failed),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, ExecStatus::Completed | ExecStatus::Failed)
    }
}

/// A new execution.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    /// UUID v4 string.
    pub id: String,
    pub tenant: String,
    /// `Pending` for queued (async) work; `Running` for a synchronous execution that is
    /// recorded when it starts.
    pub status: ExecStatus,
    pub language: String,
    pub session_id: Option<String>,
    /// The request as JSON (async work is run from it, also after a restart).
    pub request: String,
    pub callback_url: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
}

/// A stored execution.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRow {
    pub id: String,
    pub tenant: String,
    pub status: ExecStatus,
    pub language: String,
    pub session_id: Option<String>,
    pub request: String,
    /// The `ExecutionResult` as JSON, once there is one.
    pub result: Option<String>,
    pub failure_reason: Option<String>,
    pub callback_url: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// When the row will be deleted (set when it finishes).
    pub expires_at: Option<i64>,
    /// Insertion order; strictly increasing (used for FIFO claiming and list cursors).
    pub seq: i64,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// `Completed` or `Failed`.
    pub status: ExecStatus,
    pub result: Option<String>,
    pub failure_reason: Option<String>,
    pub completed_at: i64,
    pub expires_at: i64,
}

/// Filter of [`Store::list_executions`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    pub session_id: Option<String>,
    pub status: Option<ExecStatus>,
    /// Only rows with `seq` below this (the cursor of the previous page).
    pub before_seq: Option<i64>,
    /// At most this many rows (newest first).
    pub limit: u32,
}

/// A webhook message to deliver (one per finished execution with a callback).
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The Standard Webhooks message id (`msg_…`), stable across retries.
    pub id: String,
    pub execution_id: String,
    pub tenant: String,
    pub url: String,
    /// The exact body to POST (JSON text).
    pub payload: String,
    pub created_at: i64,
    /// When the first attempt is due.
    pub next_attempt_at: i64,
}

/// State of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// More attempts will be made (at `next_attempt_at`).
    Pending,
    /// A 2xx answer ended it.
    Delivered,
    /// Attempts are exhausted, or the target refused permanently (410, or a forbidden
    /// address).
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub at: i64,
    /// HTTP status, if the target answered.
    pub status_code: Option<u16>,
    /// What went wrong, if anything (connect error, timeout, refused target).
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// A delivery and its attempts so far.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub id: String,
    pub execution_id: String,
    pub tenant: String,
    pub url: String,
    pub payload: String,
    pub state: DeliveryState,
    pub created_at: i64,
    /// When the next attempt is due (`Pending` only).
    pub next_attempt_at: Option<i64>,
    /// Oldest first.
    pub attempts: Vec<Attempt>,
}

/// runcell's storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // --- executions -------------------------------------------------------------------------

    /// Inserts a new execution (a duplicate id is an error).
    async fn insert_execution(&self, e: &NewExecution) -> Result<()>;

    /// Atomically takes the oldest `Pending` execution, marks it `Running` with `started_at =
    /// now`, and returns it. `None` when nothing is pending.
    async fn claim_next_pending(&self, now: i64) -> Result<Option<ExecutionRow>>;

    /// Records the end of a `Running` (or `Pending`) execution. Returns false (and changes
    /// nothing) when the execution is already final or does not exist.
    async fn finish_execution(&self, id: &str, f: &Finish) -> Result<bool>;

    /// An execution of `tenant`; `None` for a missing, expired or other tenant's id.
    async fn get_execution(&self, tenant: &str, id: &str, now: i64)
    -> Result<Option<ExecutionRow>>;

    /// `tenant`'s executions, newest first (highest `seq` first), without expired ones.
    async fn list_executions(
        &self,
        tenant: &str,
        filter: &ListFilter,
        now: i64,
    ) -> Result<Vec<ExecutionRow>>;

    /// Atomically moves a `Pending` execution of `tenant` to `Failed` with `reason` (it will
    /// never run). Returns false when it is not pending (or not the tenant's).
    async fn cancel_pending(&self, tenant: &str, id: &str, f: &Finish) -> Result<bool>;

    /// At start-up: every execution still `Running` (its worker died with the previous
    /// process) becomes `Failed` with `reason`. Returns their ids and tenants.
    async fn fail_interrupted(
        &self,
        reason: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<ExecutionRow>>;

    /// Number of `Pending` executions.
    async fn count_pending(&self) -> Result<u64>;

    /// Deletes executions (and their deliveries) whose `expires_at` has passed. Returns how
    /// many executions were deleted.
    async fn delete_expired(&self, now: i64) -> Result<u64>;

    // --- tenants ------------------------------------------------------------------------------

    /// The tenant's webhook secret, creating it from `generate` on first use (atomically: two
    /// concurrent callers get the same secret).
    async fn webhook_secret(&self, tenant: &str, generate: String) -> Result<String>;

    /// Stored API key hashes with their tenant ids (keys generated by the server itself).
    async fn api_keys(&self) -> Result<Vec<(String, String)>>;

    /// Stores a generated API key's hash and tenant.
    async fn insert_api_key(&self, key_hash: &str, tenant: &str, created_at: i64) -> Result<()>;

    // --- webhook deliveries -------------------------------------------------------------------

    /// Inserts a delivery (a duplicate id is ignored: one message per execution).
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<()>;

    /// `Pending` deliveries due at `now`, oldest due first.
    async fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<DeliveryRow>>;

    /// The earliest `next_attempt_at` of any pending delivery.
    async fn next_delivery_due(&self) -> Result<Option<i64>>;

    /// Records an attempt and the delivery's new state; `next_attempt_at` is the next try for
    /// `Pending`, ignored otherwise.
    async fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &Attempt,
        state: DeliveryState,
        next_attempt_at: Option<i64>,
    ) -> Result<()>;

    /// The deliveries of one of `tenant`'s executions, with attempts.
    async fn list_deliveries(&self, tenant: &str, execution_id: &str) -> Result<Vec<DeliveryRow>>;
}
