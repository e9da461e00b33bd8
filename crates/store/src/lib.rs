//! runcell's durable state behind one trait, [`Store`], with two implementations: an embedded
//! SQLite (WAL) database, [`SqliteStore`] (the default), and a PostgreSQL database,
//! [`PgStore`]. Both pass the same conformance suite (`conformance.rs`). Knows nothing of HTTP or jails: it stores executions (the
//! durable queue of async work and the results), tenants' webhook secrets and API key hashes,
//! webhook deliveries with their attempts, and the records of long-lived sandboxes: the
//! sandboxes themselves (lifecycle, expiry, access token hash), the code runs made in them, and
//! the artifacts (files) those runs produced (the rows only; their blobs live elsewhere).
//!
//! Every read and write of a tenant's objects takes the tenant: a row of another tenant is
//! indistinguishable from a missing one. The few exceptions (`…_by_id`, and the reapers that
//! work across tenants) say so.
//!
//! Times are Unix milliseconds (`i64`). JSON documents (requests, results, webhook payloads,
//! sandbox specs, code run documents, artifact metadata) are stored as text and are opaque here.

#[cfg(test)]
mod conformance;
mod pg;
mod sqlite;

pub use pg::PgStore;

/// The columns of a new execution's row beyond its request: as [`Store::insert_execution`]
/// writes them (`end` = `None`: pending, or running on this node under a lease from its
/// start), or as [`Store::insert_finished_execution`] does (already final, on this node, no
/// lease).
pub(crate) struct NewRow<'a> {
    pub status: &'static str,
    pub node: Option<String>,
    pub lease_until: Option<i64>,
    pub result: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
    pub completed_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl<'a> NewRow<'a> {
    pub(crate) fn of(owner: &Owner, e: &NewExecution, end: Option<&'a Finish>) -> Result<Self> {
        Ok(match end {
            None => {
                let running = e.status == ExecStatus::Running;
                NewRow {
                    status: e.status.as_str(),
                    node: running.then(|| owner.node.clone()),
                    lease_until: running
                        .then(|| e.started_at.unwrap_or(e.created_at) + owner.lease_ms),
                    result: None,
                    failure_reason: None,
                    completed_at: None,
                    expires_at: None,
                }
            }
            Some(f) if !f.status.is_final() => {
                return Err(StoreError::Database(format!(
                    "insert_finished_execution with non-final status {}",
                    f.status.as_str()
                )));
            }
            Some(f) => NewRow {
                status: f.status.as_str(),
                node: Some(owner.node.clone()),
                lease_until: None,
                result: f.result.as_deref(),
                failure_reason: f.failure_reason.as_deref(),
                completed_at: Some(f.completed_at),
                expires_at: Some(f.expires_at),
            },
        })
    }
}

/// The node and advertised address of a row that names its node (rows written before nodes
/// existed are the store's own node's), from a `LEFT JOIN` on `nodes`.
pub(crate) fn node_and_address(
    row: Option<(Option<String>, Option<String>)>,
    owner: &Owner,
) -> Option<(String, String)> {
    row.map(|(node, address)| {
        (
            node.unwrap_or_else(|| owner.node.clone()),
            address.unwrap_or_default(),
        )
    })
}

/// A node row from its columns.
pub(crate) fn node_row(
    (id, address, started_at, heartbeat_at, running, queued, sandboxes): (
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
    ),
) -> NodeRow {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    NodeRow {
        id,
        address,
        started_at,
        heartbeat_at,
        running: n(running),
        queued: n(queued),
        sandboxes: n(sandboxes),
    }
}
pub use sqlite::SqliteStore;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database could not be reached or its address is not understood (a sentence that
    /// names the server, never a password).
    #[error("{0}")]
    Connect(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Lifecycle of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// `POST` (Standard Webhooks) or `PUT` (Judge0's callbacks).
    pub method: String,
    /// The exact body to send (JSON text).
    pub payload: String,
    pub created_at: i64,
    /// When the first attempt is due.
    pub next_attempt_at: i64,
}

/// State of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    pub method: String,
    pub payload: String,
    pub state: DeliveryState,
    pub created_at: i64,
    /// When the next attempt is due (`Pending` only).
    pub next_attempt_at: Option<i64>,
    /// The node holding the delivery's claim (while one of its attempts is under way), if any.
    pub claimed_by: Option<String>,
    /// When that claim's lease ends: after it, another node may claim the delivery.
    pub lease_until: Option<i64>,
    /// Oldest first.
    pub attempts: Vec<Attempt>,
}

/// Lifecycle of a sandbox record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// Its processes are (or should be) alive; it can be renewed and run code.
    Running,
    /// Ended (deleted, expired, or lost with a previous process); final.
    Terminated,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Running => "running",
            SandboxStatus::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<SandboxStatus> {
        match s {
            "running" => Some(SandboxStatus::Running),
            "terminated" => Some(SandboxStatus::Terminated),
            _ => None,
        }
    }
}

/// A new sandbox (recorded `Running`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSandbox {
    /// `sb_…`.
    pub id: String,
    pub tenant: String,
    /// Hex SHA-256 of the sandbox's access token (opaque here).
    pub access_token_hash: String,
    /// The sandbox's spec as JSON: limits, env, metadata, network, … (opaque here).
    pub spec: String,
    pub created_at: i64,
    /// When the expiry reaper ends it, unless renewed.
    pub expires_at: i64,
}

/// A stored sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRow {
    pub id: String,
    pub tenant: String,
    pub status: SandboxStatus,
    pub access_token_hash: String,
    pub spec: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// When it was terminated (`Terminated` only).
    pub ended_at: Option<i64>,
    /// Why it was terminated (`Terminated` only).
    pub end_reason: Option<String>,
    /// Insertion order; strictly increasing (used for list cursors).
    pub seq: i64,
}

/// The node a store works for: executions it claims or runs and sandboxes it creates are
/// stamped with `node`, and its claims on running executions (leases) last `lease_ms` unless
/// its heartbeat renews them. A node's id is stable across its restarts (the service keeps it
/// in its data directory), so a restarting node recovers its own work at once, and work of a
/// node that never comes back once its leases run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub lease_ms: i64,
}

impl Default for Owner {
    /// One node alone (an embedded database): `local`, 15 s leases.
    fn default() -> Self {
        Owner {
            node: "local".into(),
            lease_ms: 15_000,
        }
    }
}

/// What a node says of itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBeat {
    /// Where other nodes reach its HTTP API (`http://10.0.0.5:8002`).
    pub address: String,
    pub started_at: i64,
    /// Executions it runs now, and waiting in its scheduler.
    pub running: u64,
    pub queued: u64,
    /// Sandboxes alive on it.
    pub sandboxes: u64,
}

/// A node as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub address: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub running: u64,
    pub queued: u64,
    pub sandboxes: u64,
}

/// Filter of [`Store::list_sandboxes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxFilter {
    pub status: Option<SandboxStatus>,
    /// Only rows with `seq` below this (the cursor of the previous page).
    pub before_seq: Option<i64>,
    /// At most this many rows (newest first).
    pub limit: u32,
}

/// Lifecycle of a code run in a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Accepted, waiting for its context to be free.
    Queued,
    /// The kernel is running it.
    Running,
    /// It ran to the end without an error.
    Succeeded,
    /// It raised an error, a limit killed it, or the system could not run it.
    Failed,
    /// Cancelled before or while running.
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        match s {
            "queued" => Some(RunStatus::Queued),
            "running" => Some(RunStatus::Running),
            "succeeded" => Some(RunStatus::Succeeded),
            "failed" => Some(RunStatus::Failed),
            "cancelled" => Some(RunStatus::Cancelled),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// A code run in a sandbox (new or stored).
#[derive(Debug, Clone, PartialEq)]
pub struct CodeRunRow {
    /// `run_…`.
    pub id: String,
    pub tenant: String,
    /// The sandbox it runs in (of the same tenant).
    pub sandbox_id: String,
    /// The execution context (kernel) within the sandbox.
    pub context_id: String,
    pub status: RunStatus,
    /// The whole run object as JSON (opaque here).
    pub doc: String,
    pub created_at: i64,
    /// Insertion order; strictly increasing (used for list cursors). Ignored on insert.
    pub seq: i64,
}

/// An artifact (a file a code run produced); its content is stored elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRow {
    /// `art_…`.
    pub id: String,
    pub tenant: String,
    /// The sandbox it came from (of the same tenant).
    pub sandbox_id: String,
    /// The code run that produced it.
    pub run_id: String,
    pub context_id: String,
    /// Path relative to the sandbox's workspace.
    pub name: String,
    pub mime_type: String,
    pub size_bytes: i64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// The kernel's execution count of the producing run, if it had one.
    pub execution_count: Option<i64>,
    /// A JSON object (opaque here).
    pub metadata: String,
    pub created_at: i64,
    /// When the row is deleted by [`Store::delete_expired_artifacts`].
    pub expires_at: i64,
}

/// runcell's storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // --- executions -------------------------------------------------------------------------

    /// Inserts a new execution (a duplicate id is an error).
    async fn insert_execution(&self, e: &NewExecution) -> Result<()>;

    /// Inserts an execution that is already over, as [`Store::insert_execution`] then
    /// [`Store::finish_execution`] would leave it, in one write: a synchronous execution that
    /// ended before it was recorded as running. It names this store's node, like a running
    /// row, and has no lease. A duplicate id or a status that is not final is an error.
    async fn insert_finished_execution(&self, e: &NewExecution, f: &Finish) -> Result<()>;

    /// Atomically takes the oldest `Pending` execution, marks it `Running` with `started_at =
    /// now`, and returns it. `None` when nothing is pending.
    async fn claim_next_pending(&self, now: i64) -> Result<Option<ExecutionRow>>;

    /// [`Store::claim_next_pending`] among `tenant`'s executions only (fair scheduling picks
    /// the tenant).
    async fn claim_next_pending_of(&self, tenant: &str, now: i64) -> Result<Option<ExecutionRow>>;

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

    /// At start-up: every execution of this store's node (or of no node: rows written before
    /// nodes existed) still `Running` (its worker died with the node's previous process)
    /// becomes `Failed` with `reason`. Returns them, oldest first.
    async fn fail_interrupted(
        &self,
        reason: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<ExecutionRow>>;

    /// Running executions of any node whose lease ran out before `now` (their node died, or
    /// lost the database, and stopped renewing it) become `Failed` with `reason`. Returns
    /// them, oldest first.
    async fn fail_expired_leases(
        &self,
        reason: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<ExecutionRow>>;

    /// Number of `Pending` executions.
    async fn count_pending(&self) -> Result<u64>;

    /// Number of `Pending` executions of each tenant that has any, by tenant.
    async fn count_pending_by_tenant(&self) -> Result<Vec<(String, u64)>>;

    /// Deletes executions (and their deliveries) whose `expires_at` has passed. Returns how
    /// many executions were deleted.
    async fn delete_expired(&self, now: i64) -> Result<u64>;

    /// Deletes a finished (`Completed` or `Failed`) execution of `tenant` and its deliveries.
    /// Returns false (and deletes nothing) when it is not finished, not the tenant's, or
    /// missing.
    async fn delete_execution(&self, tenant: &str, id: &str) -> Result<bool>;

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

    /// `Pending` deliveries due at `now` that no node holds a live claim on, oldest due first.
    /// A read: nothing is claimed (the delivery loop uses [`Store::claim_due_deliveries`]).
    async fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<DeliveryRow>>;

    /// Claims for `node`, until `lease_until`, at most `limit` `Pending` deliveries due at
    /// `now` that no node holds a live claim on (never claimed, released by
    /// [`Store::record_attempt`], or whose lease has passed: `lease_until <= now`), oldest due
    /// first, and returns them with their attempts. Atomic: concurrent claimers, in this
    /// process or in others on the same database, never take the same delivery while its
    /// claim is live, and never wait for each other's claims.
    async fn claim_due_deliveries(
        &self,
        node: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>>;

    /// The earliest time a pending delivery can be claimed: its `next_attempt_at`, or the end
    /// of a claim's lease if that is later.
    async fn next_delivery_due(&self) -> Result<Option<i64>>;

    /// Records an attempt made under `node`'s claim, the delivery's new state, and releases
    /// the claim, in one step; `next_attempt_at` is the next try for `Pending`, ignored
    /// otherwise. Returns false, recording nothing, when the delivery is gone (deleted with its
    /// execution) or `node` no longer holds its claim (the lease passed and another node
    /// claimed it, or released it with an attempt of its own). A claim whose lease passed is
    /// still `node`'s until another node takes it, and its attempt is then recorded.
    async fn record_attempt(
        &self,
        node: &str,
        delivery_id: &str,
        attempt: &Attempt,
        state: DeliveryState,
        next_attempt_at: Option<i64>,
    ) -> Result<bool>;

    /// The deliveries of one of `tenant`'s executions, with attempts.
    async fn list_deliveries(&self, tenant: &str, execution_id: &str) -> Result<Vec<DeliveryRow>>;

    // --- sandboxes ----------------------------------------------------------------------------

    /// Inserts a new sandbox, `Running` (a duplicate id is an error).
    async fn insert_sandbox(&self, s: &NewSandbox) -> Result<()>;

    /// A sandbox of `tenant` (whatever its status); `None` for a missing or other tenant's id.
    async fn get_sandbox(&self, tenant: &str, id: &str) -> Result<Option<SandboxRow>>;

    /// A sandbox by id alone, of any tenant (for a request authenticated by the sandbox's own
    /// access token, which the caller checks against `access_token_hash`).
    async fn get_sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRow>>;

    /// `tenant`'s sandboxes, newest first (highest `seq` first).
    async fn list_sandboxes(&self, tenant: &str, f: &SandboxFilter) -> Result<Vec<SandboxRow>>;

    /// Sets a `Running` sandbox's `expires_at`. Returns false (and changes nothing) when it is
    /// not running (or not the tenant's).
    async fn renew_sandbox(&self, tenant: &str, id: &str, expires_at: i64) -> Result<bool>;

    /// Replaces a `Running` sandbox's `spec` (its metadata was changed). Returns false (and
    /// changes nothing) when it is not running (or not the tenant's).
    async fn set_sandbox_spec(&self, tenant: &str, id: &str, spec: &str) -> Result<bool>;

    /// Moves a `Running` sandbox to `Terminated` with `ended_at` and `reason`. Returns false
    /// (and changes nothing) when it was not running or does not exist, so a second call is a
    /// harmless no-op. Any tenant's (the caller has already authorized it).
    async fn end_sandbox(&self, id: &str, ended_at: i64, reason: &str) -> Result<bool>;

    /// At start-up, when sandbox processes could not survive the previous process: every
    /// `Running` sandbox of this store's node (or of no node) becomes `Terminated` with
    /// `reason`. Returns their ids, oldest first.
    async fn end_all_sandboxes(&self, ended_at: i64, reason: &str) -> Result<Vec<String>>;

    /// `Running` sandboxes of other nodes that have not heart-beat since `silent_since` (or
    /// never did) become `Terminated` with `reason`: their processes died with their node.
    /// Returns their ids, oldest first.
    async fn end_sandboxes_of_silent_nodes(
        &self,
        silent_since: i64,
        ended_at: i64,
        reason: &str,
    ) -> Result<Vec<String>>;

    /// The node a `Running` sandbox lives on, and the address it last advertised (empty when
    /// it never heart-beat); `None` when the sandbox is not running.
    async fn sandbox_node(&self, id: &str) -> Result<Option<(String, String)>>;

    /// The node running execution `id` and the address it last advertised (empty when it
    /// never heart-beat); `None` when the execution is not running.
    async fn execution_node(&self, id: &str) -> Result<Option<(String, String)>>;

    /// The node whose sandbox produced artifact `id` (its content is in that node's data
    /// directory) and the address it last advertised; `None` for an unknown artifact.
    async fn artifact_node(&self, id: &str) -> Result<Option<(String, String)>>;

    // --- nodes --------------------------------------------------------------------------------

    /// The node this store works for.
    fn owner(&self) -> &Owner;

    /// Records this store's node's heartbeat at `now` and renews the lease of every
    /// execution it runs to `now + lease`. Returns how many leases were renewed.
    async fn heartbeat(&self, now: i64, beat: &NodeBeat) -> Result<u64>;

    /// Every node that has heart-beat, by id.
    async fn list_nodes(&self) -> Result<Vec<NodeRow>>;

    /// Ids of the `Running` sandboxes (of every tenant) whose `expires_at <= now`, for the
    /// expiry reaper; soonest expired first.
    async fn expired_sandboxes(&self, now: i64) -> Result<Vec<String>>;

    /// Deletes the `Terminated` sandboxes that ended before `before`, with their code runs and
    /// artifact rows. Returns the ids of the artifacts deleted (the caller removes their
    /// blobs).
    async fn purge_sandboxes(&self, before: i64) -> Result<Vec<String>>;

    // --- code runs ----------------------------------------------------------------------------

    /// Inserts a code run (`seq` is ignored). A duplicate id, or a sandbox that does not exist
    /// for `r.tenant`, is an error.
    async fn insert_code_run(&self, r: &CodeRunRow) -> Result<()>;

    /// Replaces a code run's status and doc. Returns false (and changes nothing) when its
    /// status is already final (a final status is never overwritten) or it does not exist.
    async fn update_code_run(&self, id: &str, status: RunStatus, doc: &str) -> Result<bool>;

    /// A code run of `tenant` in `sandbox_id`; `None` for a missing, other sandbox's or other
    /// tenant's id.
    async fn get_code_run(
        &self,
        tenant: &str,
        sandbox_id: &str,
        id: &str,
    ) -> Result<Option<CodeRunRow>>;

    /// The code runs of one of `tenant`'s sandboxes, newest first (highest `seq` first): at
    /// most `limit`, with `seq` below `before_seq` when given (the cursor of the previous page).
    async fn list_code_runs(
        &self,
        tenant: &str,
        sandbox_id: &str,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<CodeRunRow>>;

    /// The `Queued` and `Running` code runs of one sandbox, or of every sandbox (and tenant)
    /// when `None`, oldest first. Changes nothing: the caller rewrites their docs and records
    /// them with [`Store::update_code_run`].
    async fn unfinished_code_runs(&self, sandbox_id: Option<&str>) -> Result<Vec<CodeRunRow>>;

    // --- artifacts ----------------------------------------------------------------------------

    /// Inserts artifact rows, all or none (one transaction). A duplicate id, or a sandbox that
    /// does not exist for the row's tenant, is an error.
    async fn insert_artifacts(&self, a: &[ArtifactRow]) -> Result<()>;

    /// An artifact of `tenant`; `None` for a missing or other tenant's id. Rows past their
    /// `expires_at` are returned until deleted: the caller compares.
    async fn get_artifact(&self, tenant: &str, id: &str) -> Result<Option<ArtifactRow>>;

    /// An artifact by id alone, of any tenant (for a signed download URL, already verified by
    /// the caller).
    async fn get_artifact_by_id(&self, id: &str) -> Result<Option<ArtifactRow>>;

    /// The artifacts of one of `tenant`'s sandboxes (only those of `run_id` when given), in
    /// insertion order.
    async fn list_artifacts(
        &self,
        tenant: &str,
        sandbox_id: &str,
        run_id: Option<&str>,
    ) -> Result<Vec<ArtifactRow>>;

    /// Deletes the artifact rows (of every tenant) whose `expires_at <= now`. Returns their
    /// ids (the caller removes their blobs).
    async fn delete_expired_artifacts(&self, now: i64) -> Result<Vec<String>>;
}
