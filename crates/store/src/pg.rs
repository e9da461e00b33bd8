//! [`PgStore`]: the [`Store`] on a PostgreSQL database, for deployments that keep their state
//! outside the machine (and, later, for several nodes on one database: docs/cluster.md).
//!
//! The schema lives in the connection's current schema (`search_path`, `public` by default)
//! and is migrated forward by [`PgStore::connect`] in one transaction that first takes a
//! transaction-scoped advisory lock ([`MIGRATION_LOCK`]), so nodes that start at once migrate
//! one after the other and the later ones find the work done. The version is the single row of
//! `runcell_schema`.
//!
//! SQLite's store relies on its single writer: a `BEGIN IMMEDIATE` transaction sees and
//! changes the database alone. PostgreSQL has many writers at `READ COMMITTED`, so here every
//! change that must be atomic is one statement whose `WHERE` PostgreSQL re-checks on the
//! latest row version after waiting for a concurrent writer (a conditional `UPDATE`, `INSERT …
//! ON CONFLICT`), one statement with data-modifying `WITH` parts (which share one snapshot and
//! commit together), or a transaction that first locks the rows it works on (`FOR UPDATE`).
//! The queue is claimed with `SELECT … FOR UPDATE SKIP LOCKED`: concurrent claimers, in this
//! process or others, each lock a different pending row and never wait for one another.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::{
    ArtifactRow, Attempt, CodeRunRow, DeliveryRow, DeliveryState, ExecStatus, ExecutionRow, Finish,
    ListFilter, NewDelivery, NewExecution, NewRow, NewSandbox, NodeBeat, NodeRow, Owner, Result,
    RunStatus, SandboxFilter, SandboxRow, SandboxStatus, Store, StoreError, node_row,
};

/// The schema version this build writes (the row of `runcell_schema`).
const SCHEMA_VERSION: i64 = 3;

// One migration per version step.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// The key of the advisory lock held while migrating ("runcell" and 1, as 8 bytes).
pub(crate) const MIGRATION_LOCK: i64 = 0x7275_6e63_656c_6c01;

/// How long [`PgStore::connect`] waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of the pool (every request that touches the store holds one for a statement).
const MAX_CONNECTIONS: u32 = 16;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the schema of SQLite's version 4, in PostgreSQL's types. `seq` columns are
    // identities (never reused, so strictly increasing even after deletes); the order SQLite
    // takes from `rowid` is a `seq` here too. The queue's indexes hold pending rows only.
    r#"
    CREATE TABLE executions (
        seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id             TEXT   NOT NULL UNIQUE,
        tenant         TEXT   NOT NULL,
        status         TEXT   NOT NULL,
        language       TEXT   NOT NULL,
        session_id     TEXT,
        request        TEXT   NOT NULL,
        result         TEXT,
        failure_reason TEXT,
        callback_url   TEXT,
        created_at     BIGINT NOT NULL,
        started_at     BIGINT,
        completed_at   BIGINT,
        expires_at     BIGINT
    );
    CREATE INDEX executions_pending_seq ON executions (seq) WHERE status = 'pending';
    CREATE INDEX executions_pending_tenant_seq ON executions (tenant, seq)
        WHERE status = 'pending';
    CREATE INDEX executions_running_seq ON executions (seq) WHERE status = 'running';
    CREATE INDEX executions_tenant_seq ON executions (tenant, seq);
    CREATE INDEX executions_tenant_session_seq ON executions (tenant, session_id, seq);
    CREATE INDEX executions_expires_at ON executions (expires_at);

    CREATE TABLE tenants (
        tenant         TEXT   PRIMARY KEY,
        webhook_secret TEXT   NOT NULL,
        created_at     BIGINT NOT NULL
    );

    CREATE TABLE api_keys (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY,
        key_hash   TEXT   PRIMARY KEY,
        tenant     TEXT   NOT NULL,
        created_at BIGINT NOT NULL
    );

    CREATE TABLE deliveries (
        seq             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        id              TEXT   PRIMARY KEY,
        execution_id    TEXT   NOT NULL,
        tenant          TEXT   NOT NULL,
        url             TEXT   NOT NULL,
        method          TEXT   NOT NULL DEFAULT 'POST',
        payload         TEXT   NOT NULL,
        state           TEXT   NOT NULL,
        created_at      BIGINT NOT NULL,
        next_attempt_at BIGINT
    );
    CREATE INDEX deliveries_pending_next ON deliveries (next_attempt_at, seq)
        WHERE state = 'pending';
    CREATE INDEX deliveries_tenant_execution ON deliveries (tenant, execution_id);

    CREATE TABLE delivery_attempts (
        seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        delivery_id TEXT   NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        at          BIGINT NOT NULL,
        status_code BIGINT,
        error       TEXT,
        duration_ms BIGINT NOT NULL
    );
    CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, seq);

    CREATE TABLE sandboxes (
        seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id                TEXT   NOT NULL UNIQUE,
        tenant            TEXT   NOT NULL,
        status            TEXT   NOT NULL,
        access_token_hash TEXT   NOT NULL,
        spec              TEXT   NOT NULL,
        created_at        BIGINT NOT NULL,
        expires_at        BIGINT NOT NULL,
        ended_at          BIGINT,
        end_reason        TEXT,
        UNIQUE (tenant, id)
    );
    CREATE INDEX sandboxes_tenant_seq ON sandboxes (tenant, seq);
    CREATE INDEX sandboxes_tenant_status_seq ON sandboxes (tenant, status, seq);
    CREATE INDEX sandboxes_running_expires_at ON sandboxes (expires_at, seq)
        WHERE status = 'running';
    CREATE INDEX sandboxes_terminated_ended_at ON sandboxes (ended_at)
        WHERE status = 'terminated';

    CREATE TABLE code_runs (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id         TEXT   NOT NULL UNIQUE,
        tenant     TEXT   NOT NULL,
        sandbox_id TEXT   NOT NULL,
        context_id TEXT   NOT NULL,
        status     TEXT   NOT NULL,
        doc        TEXT   NOT NULL,
        created_at BIGINT NOT NULL,
        FOREIGN KEY (tenant, sandbox_id) REFERENCES sandboxes (tenant, id) ON DELETE CASCADE
    );
    CREATE INDEX code_runs_tenant_sandbox_seq ON code_runs (tenant, sandbox_id, seq);
    CREATE INDEX code_runs_unfinished ON code_runs (sandbox_id, seq)
        WHERE status IN ('queued', 'running');

    CREATE TABLE artifacts (
        seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id              TEXT   NOT NULL UNIQUE,
        tenant          TEXT   NOT NULL,
        sandbox_id      TEXT   NOT NULL,
        run_id          TEXT   NOT NULL,
        context_id      TEXT   NOT NULL,
        name            TEXT   NOT NULL,
        mime_type       TEXT   NOT NULL,
        size_bytes      BIGINT NOT NULL,
        sha256          TEXT   NOT NULL,
        execution_count BIGINT,
        metadata        TEXT   NOT NULL,
        created_at      BIGINT NOT NULL,
        expires_at      BIGINT NOT NULL,
        FOREIGN KEY (tenant, sandbox_id) REFERENCES sandboxes (tenant, id) ON DELETE CASCADE
    );
    CREATE INDEX artifacts_tenant_sandbox_seq ON artifacts (tenant, sandbox_id, seq);
    CREATE INDEX artifacts_tenant_sandbox_run ON artifacts (tenant, sandbox_id, run_id, seq);
    CREATE INDEX artifacts_expires_at ON artifacts (expires_at);
    "#,
    // 1 -> 2 (SQLite's 4 -> 5): a delivery is claimed by one node for one attempt, with a
    // lease (both NULL when unclaimed).
    r#"
    ALTER TABLE deliveries
        ADD COLUMN claimed_by  TEXT,
        ADD COLUMN lease_until BIGINT,
        ADD CONSTRAINT deliveries_claim_has_lease
            CHECK ((claimed_by IS NULL) = (lease_until IS NULL));
    "#,
    // 2 -> 3 (SQLite's 5 -> 6): nodes, and which node runs an execution (with its lease) or a sandbox.
    r#"
    ALTER TABLE executions ADD COLUMN node TEXT;
    ALTER TABLE executions ADD COLUMN lease_until BIGINT;
    CREATE INDEX executions_running_lease ON executions (lease_until) WHERE status = 'running';
    CREATE INDEX executions_running_node ON executions (node) WHERE status = 'running';
    ALTER TABLE sandboxes ADD COLUMN node TEXT;
    CREATE TABLE nodes (
        id           TEXT   PRIMARY KEY,
        address      TEXT   NOT NULL,
        started_at   BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL,
        running      BIGINT NOT NULL,
        queued       BIGINT NOT NULL,
        sandboxes    BIGINT NOT NULL
    );
    "#,
];

/// PostgreSQL's `text` cannot hold U+0000, so no stored key contains it: a lookup by such a key
/// finds nothing (as on SQLite) without asking the server, which would refuse the parameter.
/// `$absent` is what the method answers for a missing row.
macro_rules! absent_if_nul {
    ($absent:expr; $($key:expr),+) => {
        if $($key.contains('\0'))||+ {
            return Ok($absent);
        }
    };
}

/// Columns of an execution row, read by name by [`exec_row`].
macro_rules! exec_cols {
    () => {
        "seq, id, tenant, status, language, session_id, request, result, failure_reason, \
         callback_url, created_at, started_at, completed_at, expires_at"
    };
}

/// Columns of a sandbox row, read by name by [`sandbox_row`].
macro_rules! sandbox_cols {
    () => {
        "seq, id, tenant, status, access_token_hash, spec, created_at, expires_at, ended_at, \
         end_reason"
    };
}

/// Columns of a code run row, read by name by [`run_row`].
macro_rules! run_cols {
    () => {
        "seq, id, tenant, sandbox_id, context_id, status, doc, created_at"
    };
}

/// Columns of an artifact row, read by name by [`artifact_row`].
macro_rules! artifact_cols {
    () => {
        "id, tenant, sandbox_id, run_id, context_id, name, mime_type, size_bytes, sha256, \
         execution_count, metadata, created_at, expires_at"
    };
}

/// Claims the oldest pending execution matching `$cond` (extra conditions on the pending rows,
/// with `$1` the claim time). The `FOR UPDATE SKIP LOCKED` sub-select locks one pending row
/// that no other claimer holds (re-checking it is still pending once locked), and the `UPDATE`
/// marks that row running in the same statement.
macro_rules! claim {
    ($cond:expr, $node:expr, $lease:expr) => {
        concat!(
            "WITH next AS (SELECT seq FROM executions WHERE status = 'pending'",
            $cond,
            " ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
             UPDATE executions e SET status = 'running', started_at = $1, node = ",
            $node,
            ", lease_until = ",
            $lease,
            " FROM next WHERE e.seq = next.seq RETURNING ",
            "e.seq, e.id, e.tenant, e.status, e.language, e.session_id, e.request, e.result, \
             e.failure_reason, e.callback_url, e.created_at, e.started_at, e.completed_at, \
             e.expires_at"
        )
    };
}

/// Columns of a delivery joined with its attempts (see [`collect_deliveries`]).
macro_rules! delivery_select {
    ($where_order_limit:expr, $order:expr) => {
        concat!(
            "WITH d AS (SELECT seq AS drow, id, execution_id, tenant, url, method, payload, \
             state, created_at, next_attempt_at, claimed_by, lease_until FROM deliveries ",
            $where_order_limit,
            ") SELECT d.drow, d.id, d.execution_id, d.tenant, d.url, d.method, d.payload, \
             d.state, d.created_at, d.next_attempt_at, d.claimed_by, d.lease_until, \
             a.seq AS a_seq, a.at AS a_at, \
             a.status_code AS a_status_code, a.error AS a_error, a.duration_ms AS a_duration_ms \
             FROM d LEFT JOIN delivery_attempts a ON a.delivery_id = d.id ORDER BY ",
            $order,
            ", d.drow, a.seq"
        )
    };
}

/// runcell's [`Store`] on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Where it is connected, without credentials (for messages).
    target: String,
    owner: Owner,
}

/// The channel on which a new pending execution's tenant is announced.
const QUEUE_CHANNEL: &str = "runcell_queue";

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn corrupt(e: sqlx::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(col).map_err(corrupt)
}

fn exec_row(row: &PgRow) -> Result<ExecutionRow> {
    let status: String = get(row, "status")?;
    let status = ExecStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown execution status {status:?}")))?;
    Ok(ExecutionRow {
        id: get(row, "id")?,
        tenant: get(row, "tenant")?,
        status,
        language: get(row, "language")?,
        session_id: get(row, "session_id")?,
        request: get(row, "request")?,
        result: get(row, "result")?,
        failure_reason: get(row, "failure_reason")?,
        callback_url: get(row, "callback_url")?,
        created_at: get(row, "created_at")?,
        started_at: get(row, "started_at")?,
        completed_at: get(row, "completed_at")?,
        expires_at: get(row, "expires_at")?,
        seq: get(row, "seq")?,
    })
}

/// Execution rows ordered by `seq` (`RETURNING` has no order).
fn exec_rows_by_seq(rows: &[PgRow]) -> Result<Vec<ExecutionRow>> {
    let mut out = rows.iter().map(exec_row).collect::<Result<Vec<_>>>()?;
    out.sort_by_key(|r| r.seq);
    Ok(out)
}

fn sandbox_row(row: &PgRow) -> Result<SandboxRow> {
    let status: String = get(row, "status")?;
    let status = SandboxStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown sandbox status {status:?}")))?;
    Ok(SandboxRow {
        id: get(row, "id")?,
        tenant: get(row, "tenant")?,
        status,
        access_token_hash: get(row, "access_token_hash")?,
        spec: get(row, "spec")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        ended_at: get(row, "ended_at")?,
        end_reason: get(row, "end_reason")?,
        seq: get(row, "seq")?,
    })
}

fn run_row(row: &PgRow) -> Result<CodeRunRow> {
    let status: String = get(row, "status")?;
    let status = RunStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown code run status {status:?}")))?;
    Ok(CodeRunRow {
        id: get(row, "id")?,
        tenant: get(row, "tenant")?,
        sandbox_id: get(row, "sandbox_id")?,
        context_id: get(row, "context_id")?,
        status,
        doc: get(row, "doc")?,
        created_at: get(row, "created_at")?,
        seq: get(row, "seq")?,
    })
}

fn artifact_row(row: &PgRow) -> Result<ArtifactRow> {
    Ok(ArtifactRow {
        id: get(row, "id")?,
        tenant: get(row, "tenant")?,
        sandbox_id: get(row, "sandbox_id")?,
        run_id: get(row, "run_id")?,
        context_id: get(row, "context_id")?,
        name: get(row, "name")?,
        mime_type: get(row, "mime_type")?,
        size_bytes: get(row, "size_bytes")?,
        sha256: get(row, "sha256")?,
        execution_count: get(row, "execution_count")?,
        metadata: get(row, "metadata")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
    })
}

/// The `id` column of each row, in order.
fn ids(rows: &[PgRow]) -> Result<Vec<String>> {
    rows.iter().map(|r| get(r, "id")).collect()
}

/// The `id` column of each row, ordered by the `seq` column (`RETURNING` has no order).
fn ids_by_seq(rows: &[PgRow]) -> Result<Vec<String>> {
    let mut out = rows
        .iter()
        .map(|r| Ok((get::<i64>(r, "seq")?, get::<String>(r, "id")?)))
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out.into_iter().map(|(_, id)| id).collect())
}

/// Refuses to store `what` when one of its texts holds U+0000, which PostgreSQL's `text` cannot
/// (SQLite can): a sentence rather than the server's encoding error.
fn storable(what: &str, texts: &[&str]) -> Result<()> {
    if texts.iter().any(|t| t.contains('\0')) {
        return Err(StoreError::Database(format!(
            "cannot store {what}: a text of it contains a NUL character (U+0000), which \
             PostgreSQL cannot hold"
        )));
    }
    Ok(())
}

fn count(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")))
}

/// Groups the rows of a [`delivery_select!`] query (one per attempt, or one with NULL attempt
/// columns for a delivery without attempts; a delivery's rows are adjacent) into deliveries.
fn collect_deliveries(rows: &[PgRow]) -> Result<Vec<DeliveryRow>> {
    let mut out: Vec<(i64, DeliveryRow)> = Vec::new();
    for row in rows {
        let drow: i64 = get(row, "drow")?;
        if out.last().is_none_or(|(last, _)| *last != drow) {
            let state: String = get(row, "state")?;
            let state = DeliveryState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state {state:?}")))?;
            out.push((
                drow,
                DeliveryRow {
                    id: get(row, "id")?,
                    execution_id: get(row, "execution_id")?,
                    tenant: get(row, "tenant")?,
                    url: get(row, "url")?,
                    method: get(row, "method")?,
                    payload: get(row, "payload")?,
                    state,
                    created_at: get(row, "created_at")?,
                    next_attempt_at: get(row, "next_attempt_at")?,
                    claimed_by: get(row, "claimed_by")?,
                    lease_until: get(row, "lease_until")?,
                    attempts: Vec::new(),
                },
            ));
        }
        let attempt_seq: Option<i64> = get(row, "a_seq")?;
        if attempt_seq.is_some() {
            let status_code: Option<i64> = get(row, "a_status_code")?;
            let status_code = status_code
                .map(|c| {
                    u16::try_from(c)
                        .map_err(|_| StoreError::Corrupt(format!("HTTP status {c} out of range")))
                })
                .transpose()?;
            let attempt = Attempt {
                at: get(row, "a_at")?,
                status_code,
                error: get(row, "a_error")?,
                duration_ms: get(row, "a_duration_ms")?,
            };
            if let Some((_, d)) = out.last_mut() {
                d.attempts.push(attempt);
            }
        }
    }
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction, holding the advisory lock
/// [`MIGRATION_LOCK`] (released with the transaction, even if the connection dies): a node
/// starting at the same time waits, then finds the schema up to date.
async fn migrate(conn: &mut PgConnection) -> Result<()> {
    let mut tx = conn.begin().await.map_err(db)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    // Looked up rather than `CREATE TABLE IF NOT EXISTS`, which needs the CREATE privilege
    // even when the table exists: a role without it can run an up-to-date schema.
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('runcell_schema') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let version: Option<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM runcell_schema")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
    } else {
        None
    };
    let version = version.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "the database has schema version {version}, newer than this build's \
             {SCHEMA_VERSION}: upgrade runcell"
        )));
    }
    if version < 0 {
        return Err(StoreError::Corrupt(format!("schema version {version}")));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if !exists {
        sqlx::raw_sql(
            "CREATE TABLE runcell_schema (\
             singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton), \
             version BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    for step in MIGRATIONS.iter().skip(version as usize) {
        sqlx::raw_sql(*step).execute(&mut *tx).await.map_err(db)?;
    }
    sqlx::query(
        "INSERT INTO runcell_schema (singleton, version) VALUES (TRUE, $1) \
         ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
    )
    .bind(SCHEMA_VERSION)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

/// `host:port/database as user`, for messages (never the password).
fn describe(o: &PgConnectOptions) -> String {
    let place = match o.get_socket() {
        Some(dir) => format!("{}:{}", dir.display(), o.get_port()),
        None => format!("{}:{}", o.get_host(), o.get_port()),
    };
    format!(
        "{place}/{} as {}",
        o.get_database().unwrap_or(o.get_username()),
        o.get_username()
    )
}

impl PgStore {
    /// Inserts execution `e` (see [`NewRow`]).
    async fn insert_row(&self, e: &NewExecution, end: Option<&Finish>) -> Result<()> {
        storable(
            "an execution",
            &[
                &e.id,
                &e.tenant,
                &e.language,
                e.session_id.as_deref().unwrap_or(""),
                &e.request,
                e.callback_url.as_deref().unwrap_or(""),
                end.and_then(|f| f.result.as_deref()).unwrap_or(""),
                end.and_then(|f| f.failure_reason.as_deref()).unwrap_or(""),
            ],
        )?;
        let row = NewRow::of(&self.owner, e, end)?;
        sqlx::query(
            "INSERT INTO executions (id, tenant, status, language, session_id, request, \
             callback_url, created_at, started_at, node, lease_until, result, failure_reason, \
             completed_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&e.id)
        .bind(&e.tenant)
        .bind(row.status)
        .bind(&e.language)
        .bind(&e.session_id)
        .bind(&e.request)
        .bind(&e.callback_url)
        .bind(e.created_at)
        .bind(e.started_at)
        .bind(row.node)
        .bind(row.lease_until)
        .bind(row.result)
        .bind(row.failure_reason)
        .bind(row.completed_at)
        .bind(row.expires_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:password@host:port/db`,
    /// with the query parameters of libpq's URLs that sqlx knows, such as `sslmode` or
    /// `options`), brings its schema up to date and opens a pool of connections. An invalid
    /// URL, a server that does not answer within 10 s or refuses the credentials is an error
    /// that says so, naming the server but never the password.
    pub async fn connect(url: &str) -> Result<PgStore> {
        // sqlx reads any scheme as PostgreSQL's: refuse the others (a `mysql://` or `sqlite:`
        // URL is a mistake, not a PostgreSQL server on the default port).
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
            return Err(StoreError::Connect(
                "the database URL is not a PostgreSQL URL: it must start with postgres:// or \
                 postgresql://"
                    .into(),
            ));
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Connect(format!("the database URL is not a PostgreSQL URL: {e}"))
        })?;
        PgStore::connect_with(options).await
    }

    pub(crate) async fn connect_with(options: PgConnectOptions) -> Result<PgStore> {
        let options = options.application_name("runcell");
        let target = describe(&options);
        let unreachable = |e: String| {
            StoreError::Connect(format!("cannot connect to PostgreSQL at {target}: {e}"))
        };
        // The migration runs on a connection of its own, before the pool opens any: that
        // connection is also the check that the database is there.
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| unreachable(e.to_string()))?;
        let migrated = migrate(&mut conn).await;
        let closed = conn.close().await.map_err(db);
        migrated.map_err(|e| match e {
            StoreError::Database(m) => {
                StoreError::Database(format!("migrating the schema at {target}: {m}"))
            }
            other => other,
        })?;
        closed?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(PgStore {
            pool,
            target,
            owner: Owner::default(),
        })
    }

    /// The node (and its advertised address) that `sql`, a `SELECT node, address … LEFT JOIN
    /// nodes` of one row by its id, finds.
    async fn node_of(&self, sql: &'static str, id: &str) -> Result<Option<(String, String)>> {
        let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(crate::node_and_address(row, &self.owner))
    }

    /// The store working for `owner` (see [`Owner`]); [`Owner::default`] until then.
    pub fn with_owner(mut self, owner: Owner) -> PgStore {
        self.owner = owner;
        self
    }

    /// The tenants of executions queued from now on by any node (PostgreSQL's
    /// `LISTEN`/`NOTIFY`), so that an idle node claims them at once instead of polling. The
    /// listener reconnects by itself; a notification may be lost while it does, so the
    /// receiver must also look at the queue now and then.
    pub async fn listen_queue(&self) -> Result<tokio::sync::mpsc::UnboundedReceiver<String>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(db)?;
        listener.listen(QUEUE_CHANNEL).await.map_err(db)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            return;
                        }
                    }
                    // The connection was lost and is re-established: say so with an empty
                    // tenant (look at the whole queue).
                    Ok(None) => {
                        if tx.send(String::new()).is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        // Not connected (the listener retries on the next call).
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Where the store is connected (`host:port/database as user`).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Closes every connection (waiting for the ones in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn insert_execution(&self, e: &NewExecution) -> Result<()> {
        self.insert_row(e, None).await?;
        if e.status == ExecStatus::Pending {
            // Wakes the dispatchers of the other nodes (`listen_queue`); delivered on commit.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(QUEUE_CHANNEL)
                .bind(&e.tenant)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    async fn insert_finished_execution(&self, e: &NewExecution, f: &Finish) -> Result<()> {
        self.insert_row(e, Some(f)).await
    }

    async fn claim_next_pending(&self, now: i64) -> Result<Option<ExecutionRow>> {
        let row = sqlx::query(claim!("", "$2", "$3"))
            .bind(now)
            .bind(&self.owner.node)
            .bind(now + self.owner.lease_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(exec_row).transpose()
    }

    async fn claim_next_pending_of(&self, tenant: &str, now: i64) -> Result<Option<ExecutionRow>> {
        absent_if_nul!(None; tenant);
        let row = sqlx::query(claim!(" AND tenant = $2", "$3", "$4"))
            .bind(now)
            .bind(tenant)
            .bind(&self.owner.node)
            .bind(now + self.owner.lease_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(exec_row).transpose()
    }

    async fn finish_execution(&self, id: &str, f: &Finish) -> Result<bool> {
        absent_if_nul!(false; id);
        storable(
            "an execution's end",
            &[
                f.result.as_deref().unwrap_or(""),
                f.failure_reason.as_deref().unwrap_or(""),
            ],
        )?;
        if !f.status.is_final() {
            return Err(StoreError::Database(format!(
                "finish_execution with non-final status {}",
                f.status.as_str()
            )));
        }
        // A concurrent finish or cancel of the same row waits for this one's row lock, then
        // re-checks the status and changes nothing.
        let done = sqlx::query(
            "UPDATE executions SET status = $2, result = $3, failure_reason = $4, \
             completed_at = $5, expires_at = $6 \
             WHERE id = $1 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(f.status.as_str())
        .bind(&f.result)
        .bind(&f.failure_reason)
        .bind(f.completed_at)
        .bind(f.expires_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_execution(
        &self,
        tenant: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<ExecutionRow>> {
        absent_if_nul!(None; tenant, id);
        let row = sqlx::query(concat!(
            "SELECT ",
            exec_cols!(),
            " FROM executions WHERE id = $1 AND tenant = $2 \
             AND (expires_at IS NULL OR expires_at > $3)"
        ))
        .bind(id)
        .bind(tenant)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(exec_row).transpose()
    }

    async fn list_executions(
        &self,
        tenant: &str,
        filter: &ListFilter,
        now: i64,
    ) -> Result<Vec<ExecutionRow>> {
        absent_if_nul!(Vec::new(); tenant, filter.session_id.as_deref().unwrap_or(""));
        // Only the conditions in use are in the SQL, so the planner can pick the
        // (tenant, session_id, seq) or (tenant, seq) index.
        let mut sql = String::from(concat!(
            "SELECT ",
            exec_cols!(),
            " FROM executions WHERE tenant = $1 AND (expires_at IS NULL OR expires_at > $2)"
        ));
        let mut n = 2;
        let mut param = |sql: &mut String, cond: &str| {
            n += 1;
            sql.push_str(&format!(" AND {cond} ${n}"));
        };
        if filter.session_id.is_some() {
            param(&mut sql, "session_id =");
        }
        if filter.status.is_some() {
            param(&mut sql, "status =");
        }
        if filter.before_seq.is_some() {
            param(&mut sql, "seq <");
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", n + 1));
        // Built only from the constant fragments above; every value is bound.
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(tenant).bind(now);
        if let Some(session) = &filter.session_id {
            q = q.bind(session);
        }
        if let Some(status) = filter.status {
            q = q.bind(status.as_str());
        }
        if let Some(before) = filter.before_seq {
            q = q.bind(before);
        }
        let rows = q
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(exec_row).collect()
    }

    async fn cancel_pending(&self, tenant: &str, id: &str, f: &Finish) -> Result<bool> {
        absent_if_nul!(false; tenant, id);
        storable(
            "an execution's end",
            &[
                f.result.as_deref().unwrap_or(""),
                f.failure_reason.as_deref().unwrap_or(""),
            ],
        )?;
        // A claimer that holds the row (FOR UPDATE) makes this wait; once it has marked the
        // row running, the re-checked condition fails and nothing changes.
        let done = sqlx::query(
            "UPDATE executions SET status = $3, result = $4, failure_reason = $5, \
             completed_at = $6, expires_at = $7 \
             WHERE id = $1 AND tenant = $2 AND status = 'pending'",
        )
        .bind(id)
        .bind(tenant)
        .bind(f.status.as_str())
        .bind(&f.result)
        .bind(&f.failure_reason)
        .bind(f.completed_at)
        .bind(f.expires_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn fail_interrupted(
        &self,
        reason: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<ExecutionRow>> {
        let rows = sqlx::query(concat!(
            "UPDATE executions SET status = 'failed', failure_reason = $1, completed_at = $2, \
             expires_at = $3, lease_until = NULL \
             WHERE status = 'running' AND (node = $4 OR node IS NULL) RETURNING ",
            exec_cols!()
        ))
        .bind(reason)
        .bind(now)
        .bind(expires_at)
        .bind(&self.owner.node)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        exec_rows_by_seq(&rows)
    }

    async fn fail_expired_leases(
        &self,
        reason: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<ExecutionRow>> {
        storable("a failure reason", &[reason])?;
        let rows = sqlx::query(concat!(
            "UPDATE executions SET status = 'failed', failure_reason = $1, completed_at = $2, \
             expires_at = $3, lease_until = NULL \
             WHERE status = 'running' AND lease_until < $2 RETURNING ",
            exec_cols!()
        ))
        .bind(reason)
        .bind(now)
        .bind(expires_at)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        exec_rows_by_seq(&rows)
    }

    async fn count_pending(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        count(n)
    }

    async fn count_pending_by_tenant(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            // Byte order, as SQLite sorts, whatever the database's collation.
            "SELECT tenant, COUNT(*) FROM executions WHERE status = 'pending' \
             GROUP BY tenant ORDER BY tenant COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(t, n)| count(n).map(|n| (t, n)))
            .collect()
    }

    async fn delete_expired(&self, now: i64) -> Result<u64> {
        // One statement: the executions and their deliveries go together (attempts with their
        // deliveries, ON DELETE CASCADE).
        let n: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM executions WHERE expires_at <= $1 RETURNING tenant, id), \
             d AS (DELETE FROM deliveries WHERE (tenant, execution_id) IN \
                   (SELECT tenant, id FROM gone)) \
             SELECT COUNT(*) FROM gone",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        count(n)
    }

    async fn delete_execution(&self, tenant: &str, id: &str) -> Result<bool> {
        absent_if_nul!(false; tenant, id);
        let n: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM executions WHERE id = $1 AND tenant = $2 \
                           AND status IN ('completed', 'failed') RETURNING tenant, id), \
             d AS (DELETE FROM deliveries WHERE (tenant, execution_id) IN \
                   (SELECT tenant, id FROM gone)) \
             SELECT COUNT(*) FROM gone",
        )
        .bind(id)
        .bind(tenant)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(n > 0)
    }

    async fn webhook_secret(&self, tenant: &str, generate: String) -> Result<String> {
        storable("a tenant", &[tenant, &generate])?;
        const SELECT: &str = "SELECT webhook_secret FROM tenants WHERE tenant = $1";
        // The common case reads only.
        let existing: Option<String> = sqlx::query_scalar(SELECT)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        if let Some(secret) = existing {
            return Ok(secret);
        }
        // A concurrent insert of the same tenant makes this one wait for its commit, then do
        // nothing; the next statement's snapshot sees whichever secret was committed first.
        sqlx::query(
            "INSERT INTO tenants (tenant, webhook_secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(tenant)
        .bind(&generate)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let secret: Option<String> = sqlx::query_scalar(SELECT)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        secret.ok_or_else(|| StoreError::Database(format!("tenant {tenant:?} vanished")))
    }

    async fn api_keys(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT key_hash, tenant FROM api_keys ORDER BY created_at, seq")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| Ok((get(r, "key_hash")?, get(r, "tenant")?)))
            .collect()
    }

    async fn insert_api_key(&self, key_hash: &str, tenant: &str, created_at: i64) -> Result<()> {
        storable("an API key", &[key_hash, tenant])?;
        sqlx::query("INSERT INTO api_keys (key_hash, tenant, created_at) VALUES ($1, $2, $3)")
            .bind(key_hash)
            .bind(tenant)
            .bind(created_at)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn insert_delivery(&self, d: &NewDelivery) -> Result<()> {
        storable(
            "a delivery",
            &[
                &d.id,
                &d.execution_id,
                &d.tenant,
                &d.url,
                &d.method,
                &d.payload,
            ],
        )?;
        sqlx::query(
            "INSERT INTO deliveries (id, execution_id, tenant, url, payload, state, created_at, \
             next_attempt_at, method) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&d.id)
        .bind(&d.execution_id)
        .bind(&d.tenant)
        .bind(&d.url)
        .bind(&d.payload)
        .bind(d.created_at)
        .bind(d.next_attempt_at)
        .bind(&d.method)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(delivery_select!(
            "WHERE state = 'pending' AND next_attempt_at <= $1 \
             AND (claimed_by IS NULL OR lease_until <= $1) \
             ORDER BY next_attempt_at, seq LIMIT $2",
            "d.next_attempt_at"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        collect_deliveries(&rows)
    }

    async fn claim_due_deliveries(
        &self,
        node: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>> {
        storable("a delivery's claim", &[node])?;
        // One statement: the due rows are locked, skipping the ones another claimer has
        // locked (it is claiming them), their condition re-checked on their newest version,
        // then claimed and returned with their attempts. MATERIALIZED keeps the locking
        // SELECT from being folded into the UPDATE.
        let rows = sqlx::query(
            "WITH next AS MATERIALIZED (SELECT seq FROM deliveries \
                 WHERE state = 'pending' AND next_attempt_at <= $2 \
                 AND (claimed_by IS NULL OR lease_until <= $2) \
                 ORDER BY next_attempt_at, seq LIMIT $4 FOR UPDATE SKIP LOCKED), \
             d AS (UPDATE deliveries SET claimed_by = $1, lease_until = $3 FROM next \
                 WHERE deliveries.seq = next.seq \
                 RETURNING deliveries.seq AS drow, id, execution_id, tenant, url, method, \
                 payload, state, created_at, next_attempt_at, claimed_by, lease_until) \
             SELECT d.drow, d.id, d.execution_id, d.tenant, d.url, d.method, d.payload, \
             d.state, d.created_at, d.next_attempt_at, d.claimed_by, d.lease_until, \
             a.seq AS a_seq, a.at AS a_at, a.status_code AS a_status_code, a.error AS a_error, \
             a.duration_ms AS a_duration_ms \
             FROM d LEFT JOIN delivery_attempts a ON a.delivery_id = d.id \
             ORDER BY d.next_attempt_at, d.drow, a.seq",
        )
        .bind(node)
        .bind(now)
        .bind(lease_until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        collect_deliveries(&rows)
    }

    async fn next_delivery_due(&self) -> Result<Option<i64>> {
        sqlx::query_scalar(
            "SELECT MIN(CASE WHEN claimed_by IS NULL THEN next_attempt_at \
             ELSE GREATEST(next_attempt_at, lease_until) END) \
             FROM deliveries WHERE state = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    async fn record_attempt(
        &self,
        node: &str,
        delivery_id: &str,
        attempt: &Attempt,
        state: DeliveryState,
        next_attempt_at: Option<i64>,
    ) -> Result<bool> {
        absent_if_nul!(false; node, delivery_id);
        storable(
            "a delivery attempt",
            &[attempt.error.as_deref().unwrap_or("")],
        )?;
        let next = match state {
            DeliveryState::Pending => Some(next_attempt_at.ok_or_else(|| {
                StoreError::Database(
                    "record_attempt: a pending delivery needs next_attempt_at".into(),
                )
            })?),
            DeliveryState::Delivered | DeliveryState::Failed => None,
        };
        // One statement: the attempt is recorded only if the delivery still exists (it is
        // deleted with its expired execution) and is still `node`'s (a concurrent claim by
        // another node is waited for and the condition re-checked), together with its new
        // state and the claim's release.
        let recorded = sqlx::query(
            "WITH d AS (UPDATE deliveries SET state = $3, next_attempt_at = $4, \
                        claimed_by = NULL, lease_until = NULL \
                        WHERE id = $1 AND claimed_by = $2 RETURNING id) \
             INSERT INTO delivery_attempts (delivery_id, at, status_code, error, duration_ms) \
             SELECT id, $5, $6, $7, $8 FROM d",
        )
        .bind(delivery_id)
        .bind(node)
        .bind(state.as_str())
        .bind(next)
        .bind(attempt.at)
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(recorded.rows_affected() == 1)
    }

    async fn list_deliveries(&self, tenant: &str, execution_id: &str) -> Result<Vec<DeliveryRow>> {
        absent_if_nul!(Vec::new(); tenant, execution_id);
        let rows = sqlx::query(delivery_select!(
            "WHERE tenant = $1 AND execution_id = $2",
            "d.created_at"
        ))
        .bind(tenant)
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        collect_deliveries(&rows)
    }

    async fn insert_sandbox(&self, s: &NewSandbox) -> Result<()> {
        storable(
            "a sandbox",
            &[&s.id, &s.tenant, &s.access_token_hash, &s.spec],
        )?;
        sqlx::query(
            "INSERT INTO sandboxes (id, tenant, status, access_token_hash, spec, created_at, \
             expires_at, node) VALUES ($1, $2, 'running', $3, $4, $5, $6, $7)",
        )
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.access_token_hash)
        .bind(&s.spec)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(&self.owner.node)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn get_sandbox(&self, tenant: &str, id: &str) -> Result<Option<SandboxRow>> {
        absent_if_nul!(None; tenant, id);
        let row = sqlx::query(concat!(
            "SELECT ",
            sandbox_cols!(),
            " FROM sandboxes WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(sandbox_row).transpose()
    }

    async fn get_sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRow>> {
        absent_if_nul!(None; id);
        let row = sqlx::query(concat!(
            "SELECT ",
            sandbox_cols!(),
            " FROM sandboxes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(sandbox_row).transpose()
    }

    async fn list_sandboxes(&self, tenant: &str, f: &SandboxFilter) -> Result<Vec<SandboxRow>> {
        absent_if_nul!(Vec::new(); tenant);
        let mut sql = String::from(concat!(
            "SELECT ",
            sandbox_cols!(),
            " FROM sandboxes WHERE tenant = $1"
        ));
        let mut n = 1;
        if f.status.is_some() {
            n += 1;
            sql.push_str(&format!(" AND status = ${n}"));
        }
        if f.before_seq.is_some() {
            n += 1;
            sql.push_str(&format!(" AND seq < ${n}"));
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", n + 1));
        // Built only from the constant fragments above; every value is bound.
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(tenant);
        if let Some(status) = f.status {
            q = q.bind(status.as_str());
        }
        if let Some(before) = f.before_seq {
            q = q.bind(before);
        }
        let rows = q
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(sandbox_row).collect()
    }

    async fn renew_sandbox(&self, tenant: &str, id: &str, expires_at: i64) -> Result<bool> {
        absent_if_nul!(false; tenant, id);
        let done = sqlx::query(
            "UPDATE sandboxes SET expires_at = $3 \
             WHERE id = $1 AND tenant = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(tenant)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_sandbox_spec(&self, tenant: &str, id: &str, spec: &str) -> Result<bool> {
        absent_if_nul!(false; tenant, id);
        let done = sqlx::query(
            "UPDATE sandboxes SET spec = $3 WHERE id = $1 AND tenant = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(tenant)
        .bind(spec)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn end_sandbox(&self, id: &str, ended_at: i64, reason: &str) -> Result<bool> {
        absent_if_nul!(false; id);
        storable("a sandbox's end", &[reason])?;
        let done = sqlx::query(
            "UPDATE sandboxes SET status = 'terminated', ended_at = $2, end_reason = $3 \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .bind(ended_at)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn end_all_sandboxes(&self, ended_at: i64, reason: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE sandboxes SET status = 'terminated', ended_at = $1, end_reason = $2 \
             WHERE status = 'running' AND (node = $3 OR node IS NULL) RETURNING seq, id",
        )
        .bind(ended_at)
        .bind(reason)
        .bind(&self.owner.node)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        ids_by_seq(&rows)
    }

    async fn end_sandboxes_of_silent_nodes(
        &self,
        silent_since: i64,
        ended_at: i64,
        reason: &str,
    ) -> Result<Vec<String>> {
        storable("an end reason", &[reason])?;
        let rows = sqlx::query(
            "UPDATE sandboxes SET status = 'terminated', ended_at = $2, end_reason = $3 \
             WHERE status = 'running' AND node IS NOT NULL AND node <> $4 AND node NOT IN \
             (SELECT id FROM nodes WHERE heartbeat_at >= $1) RETURNING seq, id",
        )
        .bind(silent_since)
        .bind(ended_at)
        .bind(reason)
        .bind(&self.owner.node)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        ids_by_seq(&rows)
    }

    async fn sandbox_node(&self, id: &str) -> Result<Option<(String, String)>> {
        absent_if_nul!(None; id);
        self.node_of(
            "SELECT s.node, n.address FROM sandboxes s LEFT JOIN nodes n ON n.id = s.node \
             WHERE s.id = $1 AND s.status = 'running'",
            id,
        )
        .await
    }

    async fn execution_node(&self, id: &str) -> Result<Option<(String, String)>> {
        absent_if_nul!(None; id);
        self.node_of(
            "SELECT e.node, n.address FROM executions e LEFT JOIN nodes n ON n.id = e.node \
             WHERE e.id = $1 AND e.status = 'running'",
            id,
        )
        .await
    }

    async fn artifact_node(&self, id: &str) -> Result<Option<(String, String)>> {
        absent_if_nul!(None; id);
        self.node_of(
            "SELECT s.node, n.address FROM artifacts a \
             JOIN sandboxes s ON s.tenant = a.tenant AND s.id = a.sandbox_id \
             LEFT JOIN nodes n ON n.id = s.node WHERE a.id = $1",
            id,
        )
        .await
    }

    fn owner(&self) -> &Owner {
        &self.owner
    }

    async fn heartbeat(&self, now: i64, beat: &NodeBeat) -> Result<u64> {
        storable("a node's address", &[&beat.address])?;
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO nodes (id, address, started_at, heartbeat_at, running, queued, \
             sandboxes) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET \
             address = $2, started_at = $3, heartbeat_at = $4, running = $5, queued = $6, \
             sandboxes = $7",
        )
        .bind(&self.owner.node)
        .bind(&beat.address)
        .bind(beat.started_at)
        .bind(now)
        .bind(count(beat.running))
        .bind(count(beat.queued))
        .bind(count(beat.sandboxes))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let done = sqlx::query(
            "UPDATE executions SET lease_until = $2 WHERE status = 'running' AND node = $1",
        )
        .bind(&self.owner.node)
        .bind(now + self.owner.lease_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, address, started_at, heartbeat_at, running, queued, sandboxes \
             FROM nodes ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.into_iter().map(node_row).collect())
    }

    async fn expired_sandboxes(&self, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM sandboxes WHERE status = 'running' AND expires_at <= $1 \
             ORDER BY expires_at, seq",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        ids(&rows)
    }

    async fn purge_sandboxes(&self, before: i64) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Lock the sandboxes first: a code run or artifact inserted meanwhile needs a share
        // lock on its sandbox (the foreign key's check), so none can appear under them while
        // their children are deleted, and every deleted artifact's id is returned.
        let doomed: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant, id FROM sandboxes WHERE status = 'terminated' AND ended_at < $1 \
             FOR UPDATE",
        )
        .bind(before)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if doomed.is_empty() {
            tx.rollback().await.map_err(db)?;
            return Ok(Vec::new());
        }
        let (tenants, ids): (Vec<String>, Vec<String>) = doomed.into_iter().unzip();
        // The children are deleted explicitly (rather than left to ON DELETE CASCADE) to learn
        // the artifact ids.
        let artifacts = sqlx::query(
            "DELETE FROM artifacts WHERE (tenant, sandbox_id) IN \
             (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) RETURNING seq, id",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "DELETE FROM code_runs WHERE (tenant, sandbox_id) IN \
             (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]))",
        )
        .bind(&tenants)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "DELETE FROM sandboxes WHERE (tenant, id) IN \
             (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]))",
        )
        .bind(&tenants)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        ids_by_seq(&artifacts)
    }

    async fn insert_code_run(&self, r: &CodeRunRow) -> Result<()> {
        storable(
            "a code run",
            &[&r.id, &r.tenant, &r.sandbox_id, &r.context_id, &r.doc],
        )?;
        sqlx::query(
            "INSERT INTO code_runs (id, tenant, sandbox_id, context_id, status, doc, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&r.id)
        .bind(&r.tenant)
        .bind(&r.sandbox_id)
        .bind(&r.context_id)
        .bind(r.status.as_str())
        .bind(&r.doc)
        .bind(r.created_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn update_code_run(&self, id: &str, status: RunStatus, doc: &str) -> Result<bool> {
        absent_if_nul!(false; id);
        storable("a code run", &[doc])?;
        // Concurrent updates of one run are serialized by its row lock; each re-checks that
        // the status is not final yet.
        let done = sqlx::query(
            "UPDATE code_runs SET status = $2, doc = $3 \
             WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(doc)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_code_run(
        &self,
        tenant: &str,
        sandbox_id: &str,
        id: &str,
    ) -> Result<Option<CodeRunRow>> {
        absent_if_nul!(None; tenant, sandbox_id, id);
        let row = sqlx::query(concat!(
            "SELECT ",
            run_cols!(),
            " FROM code_runs WHERE id = $1 AND tenant = $2 AND sandbox_id = $3"
        ))
        .bind(id)
        .bind(tenant)
        .bind(sandbox_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(run_row).transpose()
    }

    async fn list_code_runs(
        &self,
        tenant: &str,
        sandbox_id: &str,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<CodeRunRow>> {
        absent_if_nul!(Vec::new(); tenant, sandbox_id);
        // Separate statements rather than `($3 IS NULL OR seq < $3)`, so that the cursor is a
        // range on the (tenant, sandbox_id, seq) index rather than a filter.
        let rows = match before_seq {
            Some(before) => {
                sqlx::query(concat!(
                    "SELECT ",
                    run_cols!(),
                    " FROM code_runs WHERE tenant = $1 AND sandbox_id = $2 AND seq < $3 \
                     ORDER BY seq DESC LIMIT $4"
                ))
                .bind(tenant)
                .bind(sandbox_id)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    run_cols!(),
                    " FROM code_runs WHERE tenant = $1 AND sandbox_id = $2 \
                     ORDER BY seq DESC LIMIT $3"
                ))
                .bind(tenant)
                .bind(sandbox_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db)?;
        rows.iter().map(run_row).collect()
    }

    async fn unfinished_code_runs(&self, sandbox_id: Option<&str>) -> Result<Vec<CodeRunRow>> {
        absent_if_nul!(Vec::new(); sandbox_id.unwrap_or(""));
        let rows = match sandbox_id {
            Some(sandbox_id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    run_cols!(),
                    " FROM code_runs WHERE status IN ('queued', 'running') \
                     AND sandbox_id = $1 ORDER BY seq"
                ))
                .bind(sandbox_id)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    run_cols!(),
                    " FROM code_runs WHERE status IN ('queued', 'running') ORDER BY seq"
                ))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db)?;
        rows.iter().map(run_row).collect()
    }

    async fn insert_artifacts(&self, a: &[ArtifactRow]) -> Result<()> {
        for art in a {
            storable(
                "an artifact",
                &[
                    &art.id,
                    &art.tenant,
                    &art.sandbox_id,
                    &art.run_id,
                    &art.context_id,
                    &art.name,
                    &art.mime_type,
                    &art.sha256,
                    &art.metadata,
                ],
            )?;
        }
        if a.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        for art in a {
            sqlx::query(concat!(
                "INSERT INTO artifacts (",
                artifact_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ))
            .bind(&art.id)
            .bind(&art.tenant)
            .bind(&art.sandbox_id)
            .bind(&art.run_id)
            .bind(&art.context_id)
            .bind(&art.name)
            .bind(&art.mime_type)
            .bind(art.size_bytes)
            .bind(&art.sha256)
            .bind(art.execution_count)
            .bind(&art.metadata)
            .bind(art.created_at)
            .bind(art.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        // A failed insert returns early: dropping the transaction rolls it back.
        tx.commit().await.map_err(db)
    }

    async fn get_artifact(&self, tenant: &str, id: &str) -> Result<Option<ArtifactRow>> {
        absent_if_nul!(None; tenant, id);
        let row = sqlx::query(concat!(
            "SELECT ",
            artifact_cols!(),
            " FROM artifacts WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(artifact_row).transpose()
    }

    async fn get_artifact_by_id(&self, id: &str) -> Result<Option<ArtifactRow>> {
        absent_if_nul!(None; id);
        let row = sqlx::query(concat!(
            "SELECT ",
            artifact_cols!(),
            " FROM artifacts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(artifact_row).transpose()
    }

    async fn list_artifacts(
        &self,
        tenant: &str,
        sandbox_id: &str,
        run_id: Option<&str>,
    ) -> Result<Vec<ArtifactRow>> {
        absent_if_nul!(Vec::new(); tenant, sandbox_id, run_id.unwrap_or(""));
        let rows = match run_id {
            Some(run_id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    artifact_cols!(),
                    " FROM artifacts WHERE tenant = $1 AND sandbox_id = $2 AND run_id = $3 \
                     ORDER BY seq"
                ))
                .bind(tenant)
                .bind(sandbox_id)
                .bind(run_id)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    artifact_cols!(),
                    " FROM artifacts WHERE tenant = $1 AND sandbox_id = $2 ORDER BY seq"
                ))
                .bind(tenant)
                .bind(sandbox_id)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db)?;
        rows.iter().map(artifact_row).collect()
    }

    async fn delete_expired_artifacts(&self, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("DELETE FROM artifacts WHERE expires_at <= $1 RETURNING seq, id")
            .bind(now)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        ids_by_seq(&rows)
    }
}

#[cfg(test)]
mod tests;
