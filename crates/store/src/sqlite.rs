//! [`SqliteStore`]: the [`Store`] on an embedded SQLite database in WAL mode.
//!
//! One file (mode 0600), `synchronous=NORMAL` (a commit survives a crash or `kill -9` of the
//! process; only a power loss may undo the last commits), a 5 s busy timeout, foreign keys on.
//! The schema version is kept in `PRAGMA user_version` and migrated forward by [`SqliteStore::open`].
//!
//! SQLite has a single writer. Every write that must be atomic is either one statement
//! (`UPDATE … RETURNING`, `INSERT … ON CONFLICT`) or a `BEGIN IMMEDIATE` transaction, so
//! concurrent callers (on one pool or several processes) never see or make a half-done change.
//! This process writes through one connection of its own and reads through a pool of others.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::{
    ArtifactRow, Attempt, CodeRunRow, DeliveryRow, DeliveryState, ExecStatus, ExecutionRow, Finish,
    ListFilter, NewDelivery, NewExecution, NewRow, NewSandbox, NodeBeat, NodeRow, Owner, Result,
    RunStatus, SandboxFilter, SandboxRow, SandboxStatus, Store, StoreError, node_row,
};

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 7;

// One migration per version step.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the initial schema.
    r#"
    CREATE TABLE executions (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        id             TEXT    NOT NULL UNIQUE,
        tenant         TEXT    NOT NULL,
        status         TEXT    NOT NULL,
        language       TEXT    NOT NULL,
        session_id     TEXT,
        request        TEXT    NOT NULL,
        result         TEXT,
        failure_reason TEXT,
        callback_url   TEXT,
        created_at     INTEGER NOT NULL,
        started_at     INTEGER,
        completed_at   INTEGER,
        expires_at     INTEGER
    );
    CREATE INDEX executions_status_seq ON executions (status, seq);
    CREATE INDEX executions_tenant_seq ON executions (tenant, seq);
    CREATE INDEX executions_tenant_session_seq ON executions (tenant, session_id, seq);
    CREATE INDEX executions_expires_at ON executions (expires_at);

    CREATE TABLE tenants (
        tenant         TEXT    PRIMARY KEY,
        webhook_secret TEXT    NOT NULL,
        created_at     INTEGER NOT NULL
    );

    CREATE TABLE api_keys (
        key_hash   TEXT    PRIMARY KEY,
        tenant     TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    );

    CREATE TABLE deliveries (
        id              TEXT    PRIMARY KEY,
        execution_id    TEXT    NOT NULL,
        tenant          TEXT    NOT NULL,
        url             TEXT    NOT NULL,
        payload         TEXT    NOT NULL,
        state           TEXT    NOT NULL,
        created_at      INTEGER NOT NULL,
        next_attempt_at INTEGER
    );
    CREATE INDEX deliveries_state_next ON deliveries (state, next_attempt_at);
    CREATE INDEX deliveries_tenant_execution ON deliveries (tenant, execution_id);

    CREATE TABLE delivery_attempts (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT    NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        at          INTEGER NOT NULL,
        status_code INTEGER,
        error       TEXT,
        duration_ms INTEGER NOT NULL
    );
    CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, seq);
    "#,
    // 1 -> 2: long-lived sandboxes, their code runs, and artifacts. A code run or artifact
    // belongs to a sandbox of its own tenant (the composite foreign key), and goes with it.
    r#"
    CREATE TABLE sandboxes (
        seq               INTEGER PRIMARY KEY AUTOINCREMENT,
        id                TEXT    NOT NULL UNIQUE,
        tenant            TEXT    NOT NULL,
        status            TEXT    NOT NULL,
        access_token_hash TEXT    NOT NULL,
        spec              TEXT    NOT NULL,
        created_at        INTEGER NOT NULL,
        expires_at        INTEGER NOT NULL,
        ended_at          INTEGER,
        end_reason        TEXT
    );
    CREATE UNIQUE INDEX sandboxes_tenant_id ON sandboxes (tenant, id);
    CREATE INDEX sandboxes_tenant_seq ON sandboxes (tenant, seq);
    CREATE INDEX sandboxes_tenant_status_seq ON sandboxes (tenant, status, seq);
    CREATE INDEX sandboxes_status_expires_at ON sandboxes (status, expires_at);
    CREATE INDEX sandboxes_status_ended_at ON sandboxes (status, ended_at);

    CREATE TABLE code_runs (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT    NOT NULL UNIQUE,
        tenant     TEXT    NOT NULL,
        sandbox_id TEXT    NOT NULL,
        context_id TEXT    NOT NULL,
        status     TEXT    NOT NULL,
        doc        TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        FOREIGN KEY (tenant, sandbox_id) REFERENCES sandboxes (tenant, id) ON DELETE CASCADE
    );
    CREATE INDEX code_runs_tenant_sandbox_seq ON code_runs (tenant, sandbox_id, seq);
    CREATE INDEX code_runs_status_sandbox ON code_runs (status, sandbox_id);

    CREATE TABLE artifacts (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT    NOT NULL UNIQUE,
        tenant          TEXT    NOT NULL,
        sandbox_id      TEXT    NOT NULL,
        run_id          TEXT    NOT NULL,
        context_id      TEXT    NOT NULL,
        name            TEXT    NOT NULL,
        mime_type       TEXT    NOT NULL,
        size_bytes      INTEGER NOT NULL,
        sha256          TEXT    NOT NULL,
        execution_count INTEGER,
        metadata        TEXT    NOT NULL,
        created_at      INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        FOREIGN KEY (tenant, sandbox_id) REFERENCES sandboxes (tenant, id) ON DELETE CASCADE
    );
    CREATE INDEX artifacts_tenant_sandbox_run ON artifacts (tenant, sandbox_id, run_id);
    CREATE INDEX artifacts_expires_at ON artifacts (expires_at);
    "#,
    // 2 -> 3: the queue is claimed per tenant (fair scheduling).
    r#"
    CREATE INDEX executions_status_tenant_seq ON executions (status, tenant, seq);
    "#,
    // 3 -> 4: the HTTP method of a delivery (Judge0's callbacks are PUTs).
    r#"
    ALTER TABLE deliveries ADD COLUMN method TEXT NOT NULL DEFAULT 'POST';
    "#,
    // 4 -> 5: a delivery is claimed by one node for one attempt, with a lease (both NULL
    // when unclaimed).
    r#"
    ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
    ALTER TABLE deliveries ADD COLUMN lease_until INTEGER;
    "#,
    // 5 -> 6: nodes, and which node runs an execution (with its lease) or a sandbox.
    r#"
    ALTER TABLE executions ADD COLUMN node TEXT;
    ALTER TABLE executions ADD COLUMN lease_until INTEGER;
    CREATE INDEX executions_running_lease ON executions (status, lease_until);
    ALTER TABLE sandboxes ADD COLUMN node TEXT;
    CREATE TABLE nodes (
        id           TEXT    PRIMARY KEY,
        address      TEXT    NOT NULL,
        started_at   INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL,
        running      INTEGER NOT NULL,
        queued       INTEGER NOT NULL,
        sandboxes    INTEGER NOT NULL
    );
    "#,
    // 6 -> 7: the queue's and the leases' indexes hold only the rows they serve (pending,
    // running; a session's index only rows of a session). A finished row without a session,
    // nearly every row and the one a synchronous execution inserts, then enters 3 of the
    // table's indexes instead of 7: 5 pages written to the log per insert instead of 10
    // (measured: 50 -> 32 µs of CPU per insert).
    r#"
    DROP INDEX executions_status_seq;
    DROP INDEX executions_status_tenant_seq;
    DROP INDEX executions_running_lease;
    DROP INDEX executions_tenant_session_seq;
    CREATE INDEX executions_pending_seq ON executions (seq) WHERE status = 'pending';
    CREATE INDEX executions_pending_tenant_seq ON executions (tenant, seq)
        WHERE status = 'pending';
    CREATE INDEX executions_running_lease ON executions (lease_until) WHERE status = 'running';
    CREATE INDEX executions_tenant_session_seq ON executions (tenant, session_id, seq)
        WHERE session_id IS NOT NULL;
    "#,
];

/// Columns of an execution row, in the order [`exec_row`] reads them by name.
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

/// The `(tenant, id)` of the terminated sandboxes [`Store::purge_sandboxes`] deletes (`?1` is
/// `before`).
macro_rules! purgeable {
    () => {
        "SELECT tenant, id FROM sandboxes WHERE status = 'terminated' AND ended_at < ?1"
    };
}

/// Columns of a delivery joined with its attempts (see [`collect_deliveries`]).
macro_rules! delivery_select {
    ($where_order_limit:expr, $order:expr) => {
        concat!(
            "WITH d AS (SELECT rowid AS drow, id, execution_id, tenant, url, method, payload, \
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

/// runcell's [`Store`] on an embedded SQLite database (WAL).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads.
    pool: SqlitePool,
    /// Writes: one connection (see [`SqliteStore::open`]).
    writer: SqlitePool,
    path: PathBuf,
    owner: Owner,
}

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

fn get<'r, T>(row: &'r SqliteRow, col: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(col).map_err(corrupt)
}

fn exec_row(row: &SqliteRow) -> Result<ExecutionRow> {
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

fn exec_rows(rows: &[SqliteRow]) -> Result<Vec<ExecutionRow>> {
    rows.iter().map(exec_row).collect()
}

fn sandbox_row(row: &SqliteRow) -> Result<SandboxRow> {
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

fn run_row(row: &SqliteRow) -> Result<CodeRunRow> {
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

fn artifact_row(row: &SqliteRow) -> Result<ArtifactRow> {
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
fn ids(rows: &[SqliteRow]) -> Result<Vec<String>> {
    rows.iter().map(|r| get(r, "id")).collect()
}

/// The `id` column of each row, ordered by the `seq` column (`RETURNING` has no order).
fn ids_by_seq(rows: &[SqliteRow]) -> Result<Vec<String>> {
    let mut out = rows
        .iter()
        .map(|r| Ok((get::<i64>(r, "seq")?, get::<String>(r, "id")?)))
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out.into_iter().map(|(_, id)| id).collect())
}

/// Groups the rows of a [`delivery_select!`] query (one per attempt, or one with NULL attempt
/// columns for a delivery without attempts; a delivery's rows are adjacent) into deliveries.
fn collect_deliveries(rows: &[SqliteRow]) -> Result<Vec<DeliveryRow>> {
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

/// Creates `path` with mode 0600 if it does not exist (SQLite would use 0644; its `-wal` and
/// `-shm` files take the database file's mode).
fn create_private_file(path: &Path) -> Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Database(format!(
            "creating {}: {e}",
            path.display()
        ))),
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one `BEGIN IMMEDIATE` transaction.
async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
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
    for step in MIGRATIONS.iter().skip(version as usize) {
        sqlx::raw_sql(*step).execute(&mut *tx).await.map_err(db)?;
    }
    // PRAGMA takes no bound parameters; the value is our own integer constant.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "PRAGMA user_version = {SCHEMA_VERSION}"
    )))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

impl SqliteStore {
    /// Inserts execution `e` (see [`NewRow`]).
    async fn insert_row(&self, e: &NewExecution, end: Option<&Finish>) -> Result<()> {
        let row = NewRow::of(&self.owner, e, end)?;
        sqlx::query(
            "INSERT INTO executions (id, tenant, status, language, session_id, request, \
             callback_url, created_at, started_at, node, lease_until, result, failure_reason, \
             completed_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Opens (creating if missing, with its parent directory) the database at `path` and
    /// brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| {
                        StoreError::Database(format!("creating {}: {e}", parent.display()))
                    })?;
            }
            _ => {}
        }
        create_private_file(path)?;

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .synchronous(SqliteSynchronous::Normal);

        // Switching to WAL needs an exclusive lock that the busy timeout does not wait for, so
        // it is done once on a single connection (WAL is then a property of the file), together
        // with the migration, before the pool opens its connections.
        let mut conn =
            SqliteConnection::connect_with(&options.clone().journal_mode(SqliteJournalMode::Wal))
                .await
                .map_err(db)?;
        let migrated = migrate(&mut conn).await;
        let closed = conn.close().await.map_err(db);
        migrated?;
        closed?;

        // Every write goes through one connection. SQLite lets one writer in at a time
        // anyway; with several writing connections, each write found the pages the others
        // had changed gone from its cache (read again from the WAL) and a writer that met the
        // lock taken slept in SQLite's busy handler (a millisecond and more) instead of
        // queueing. Reads use the other connections, concurrently with the writer (WAL).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(db)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(db)?;
        Ok(SqliteStore {
            pool,
            writer,
            path: path.to_path_buf(),
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
    pub fn with_owner(mut self, owner: Owner) -> SqliteStore {
        self.owner = owner;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection (waiting for the ones in use to be returned). Dropping the
    /// store without this is safe too: every commit is already in the WAL.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_execution(&self, e: &NewExecution) -> Result<()> {
        self.insert_row(e, None).await
    }

    async fn insert_finished_execution(&self, e: &NewExecution, f: &Finish) -> Result<()> {
        self.insert_row(e, Some(f)).await
    }

    async fn claim_next_pending(&self, now: i64) -> Result<Option<ExecutionRow>> {
        // One statement: SQLite takes the write lock before evaluating the subquery, so two
        // claimers can never take the same row.
        let rows = sqlx::query(concat!(
            "UPDATE executions SET status = 'running', started_at = ?1, node = ?2, \
             lease_until = ?3 WHERE seq = \
             (SELECT seq FROM executions WHERE status = 'pending' ORDER BY seq LIMIT 1) \
             RETURNING ",
            exec_cols!()
        ))
        .bind(now)
        .bind(&self.owner.node)
        .bind(now + self.owner.lease_ms)
        .fetch_all(&self.writer)
        .await
        .map_err(db)?;
        rows.first().map(exec_row).transpose()
    }

    async fn claim_next_pending_of(&self, tenant: &str, now: i64) -> Result<Option<ExecutionRow>> {
        let rows = sqlx::query(concat!(
            "UPDATE executions SET status = 'running', started_at = ?1, node = ?3, \
             lease_until = ?4 WHERE seq = \
             (SELECT seq FROM executions WHERE status = 'pending' AND tenant = ?2 \
              ORDER BY seq LIMIT 1) \
             RETURNING ",
            exec_cols!()
        ))
        .bind(now)
        .bind(tenant)
        .bind(&self.owner.node)
        .bind(now + self.owner.lease_ms)
        .fetch_all(&self.writer)
        .await
        .map_err(db)?;
        rows.first().map(exec_row).transpose()
    }

    async fn finish_execution(&self, id: &str, f: &Finish) -> Result<bool> {
        if !f.status.is_final() {
            return Err(StoreError::Database(format!(
                "finish_execution with non-final status {}",
                f.status.as_str()
            )));
        }
        let done = sqlx::query(
            "UPDATE executions SET status = ?2, result = ?3, failure_reason = ?4, \
             completed_at = ?5, expires_at = ?6 \
             WHERE id = ?1 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(f.status.as_str())
        .bind(&f.result)
        .bind(&f.failure_reason)
        .bind(f.completed_at)
        .bind(f.expires_at)
        .execute(&self.writer)
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
        let row = sqlx::query(concat!(
            "SELECT ",
            exec_cols!(),
            " FROM executions WHERE id = ?1 AND tenant = ?2 \
             AND (expires_at IS NULL OR expires_at > ?3)"
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
        // Only the conditions in use are in the SQL, so the planner can pick the
        // (tenant, session_id, seq) or (tenant, seq) index.
        let mut sql = String::from(concat!(
            "SELECT ",
            exec_cols!(),
            " FROM executions WHERE tenant = ? AND (expires_at IS NULL OR expires_at > ?)"
        ));
        if filter.session_id.is_some() {
            sql.push_str(" AND session_id = ?");
        }
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.before_seq.is_some() {
            sql.push_str(" AND seq < ?");
        }
        sql.push_str(" ORDER BY seq DESC LIMIT ?");
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
        exec_rows(&rows)
    }

    async fn cancel_pending(&self, tenant: &str, id: &str, f: &Finish) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE executions SET status = ?3, result = ?4, failure_reason = ?5, \
             completed_at = ?6, expires_at = ?7 \
             WHERE id = ?1 AND tenant = ?2 AND status = 'pending'",
        )
        .bind(id)
        .bind(tenant)
        .bind(f.status.as_str())
        .bind(&f.result)
        .bind(&f.failure_reason)
        .bind(f.completed_at)
        .bind(f.expires_at)
        .execute(&self.writer)
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
            "UPDATE executions SET status = 'failed', failure_reason = ?1, completed_at = ?2, \
             expires_at = ?3, lease_until = NULL \
             WHERE status = 'running' AND (node = ?4 OR node IS NULL) RETURNING ",
            exec_cols!()
        ))
        .bind(reason)
        .bind(now)
        .bind(expires_at)
        .bind(&self.owner.node)
        .fetch_all(&self.writer)
        .await
        .map_err(db)?;
        let mut rows = exec_rows(&rows)?;
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    }

    async fn fail_expired_leases(
        &self,
        reason: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<ExecutionRow>> {
        let rows = sqlx::query(concat!(
            "UPDATE executions SET status = 'failed', failure_reason = ?1, completed_at = ?2, \
             expires_at = ?3, lease_until = NULL \
             WHERE status = 'running' AND lease_until < ?2 RETURNING ",
            exec_cols!()
        ))
        .bind(reason)
        .bind(now)
        .bind(expires_at)
        .fetch_all(&self.writer)
        .await
        .map_err(db)?;
        let mut rows = exec_rows(&rows)?;
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    }

    async fn count_pending(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")))
    }

    async fn count_pending_by_tenant(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT tenant, COUNT(*) FROM executions WHERE status = 'pending' \
             GROUP BY tenant ORDER BY tenant",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(t, n)| {
                u64::try_from(n)
                    .map(|n| (t, n))
                    .map_err(|_| StoreError::Corrupt(format!("count {n}")))
            })
            .collect()
    }

    async fn delete_expired(&self, now: i64) -> Result<u64> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        // Attempts go with their deliveries (ON DELETE CASCADE).
        sqlx::query(
            "DELETE FROM deliveries WHERE (tenant, execution_id) IN \
             (SELECT tenant, id FROM executions WHERE expires_at <= ?1)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let done = sqlx::query("DELETE FROM executions WHERE expires_at <= ?1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn delete_execution(&self, tenant: &str, id: &str) -> Result<bool> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        let done = sqlx::query(
            "DELETE FROM executions WHERE id = ?1 AND tenant = ?2 \
             AND status IN ('completed', 'failed')",
        )
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() > 0 {
            // Attempts go with their deliveries (ON DELETE CASCADE).
            sqlx::query("DELETE FROM deliveries WHERE tenant = ?1 AND execution_id = ?2")
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn webhook_secret(&self, tenant: &str, generate: String) -> Result<String> {
        const SELECT: &str = "SELECT webhook_secret FROM tenants WHERE tenant = ?1";
        // The common case reads only, without taking the write lock.
        let existing: Option<String> = sqlx::query_scalar(SELECT)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        if let Some(secret) = existing {
            return Ok(secret);
        }
        sqlx::query(
            "INSERT INTO tenants (tenant, webhook_secret, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(tenant)
        .bind(&generate)
        .bind(now_ms())
        .execute(&self.writer)
        .await
        .map_err(db)?;
        // Whoever inserted first, this is the committed secret.
        let secret: Option<String> = sqlx::query_scalar(SELECT)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        secret.ok_or_else(|| StoreError::Database(format!("tenant {tenant:?} vanished")))
    }

    async fn api_keys(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT key_hash, tenant FROM api_keys ORDER BY created_at, rowid")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| Ok((get(r, "key_hash")?, get(r, "tenant")?)))
            .collect()
    }

    async fn insert_api_key(&self, key_hash: &str, tenant: &str, created_at: i64) -> Result<()> {
        sqlx::query("INSERT INTO api_keys (key_hash, tenant, created_at) VALUES (?1, ?2, ?3)")
            .bind(key_hash)
            .bind(tenant)
            .bind(created_at)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn insert_delivery(&self, d: &NewDelivery) -> Result<()> {
        sqlx::query(
            "INSERT INTO deliveries (id, execution_id, tenant, url, payload, state, created_at, \
             next_attempt_at, method) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8) \
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
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(delivery_select!(
            "WHERE state = 'pending' AND next_attempt_at <= ?1 \
             AND (claimed_by IS NULL OR lease_until <= ?1) \
             ORDER BY next_attempt_at, rowid LIMIT ?2",
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
        // One writer: the claim is one UPDATE, and the claimed rows are read back with their
        // attempts in the same transaction.
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        let claimed: Vec<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET claimed_by = ?1, lease_until = ?3 WHERE rowid IN \
             (SELECT rowid FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?2 \
              AND (claimed_by IS NULL OR lease_until <= ?2) \
              ORDER BY next_attempt_at, rowid LIMIT ?4) \
             RETURNING rowid",
        )
        .bind(node)
        .bind(now)
        .bind(lease_until)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if claimed.is_empty() {
            tx.rollback().await.map_err(db)?;
            return Ok(Vec::new());
        }
        let rowids = serde_json::to_string(&claimed)
            .map_err(|e| StoreError::Database(format!("claimed deliveries: {e}")))?;
        let rows = sqlx::query(delivery_select!(
            "WHERE rowid IN (SELECT value FROM json_each(?1))",
            "d.next_attempt_at"
        ))
        .bind(rowids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        collect_deliveries(&rows)
    }

    async fn next_delivery_due(&self) -> Result<Option<i64>> {
        sqlx::query_scalar(
            "SELECT MIN(CASE WHEN claimed_by IS NOT NULL AND lease_until > next_attempt_at \
             THEN lease_until ELSE next_attempt_at END) FROM deliveries WHERE state = 'pending'",
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
        let next = match state {
            DeliveryState::Pending => Some(next_attempt_at.ok_or_else(|| {
                StoreError::Database(
                    "record_attempt: a pending delivery needs next_attempt_at".into(),
                )
            })?),
            DeliveryState::Delivered | DeliveryState::Failed => None,
        };
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        let updated = sqlx::query(
            "UPDATE deliveries SET state = ?3, next_attempt_at = ?4, claimed_by = NULL, \
             lease_until = NULL WHERE id = ?1 AND claimed_by = ?2",
        )
        .bind(delivery_id)
        .bind(node)
        .bind(state.as_str())
        .bind(next)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if updated.rows_affected() == 0 {
            // Deleted meanwhile (its execution expired), or no longer this node's.
            tx.rollback().await.map_err(db)?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, at, status_code, error, duration_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(delivery_id)
        .bind(attempt.at)
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn list_deliveries(&self, tenant: &str, execution_id: &str) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(delivery_select!(
            "WHERE tenant = ?1 AND execution_id = ?2",
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
        sqlx::query(
            "INSERT INTO sandboxes (id, tenant, status, access_token_hash, spec, created_at, \
             expires_at, node) VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.access_token_hash)
        .bind(&s.spec)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(&self.owner.node)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn get_sandbox(&self, tenant: &str, id: &str) -> Result<Option<SandboxRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            sandbox_cols!(),
            " FROM sandboxes WHERE id = ?1 AND tenant = ?2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(sandbox_row).transpose()
    }

    async fn get_sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            sandbox_cols!(),
            " FROM sandboxes WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(sandbox_row).transpose()
    }

    async fn list_sandboxes(&self, tenant: &str, f: &SandboxFilter) -> Result<Vec<SandboxRow>> {
        // Only the conditions in use are in the SQL, so the planner can pick the
        // (tenant, status, seq) or (tenant, seq) index.
        let mut sql = String::from(concat!(
            "SELECT ",
            sandbox_cols!(),
            " FROM sandboxes WHERE tenant = ?"
        ));
        if f.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if f.before_seq.is_some() {
            sql.push_str(" AND seq < ?");
        }
        sql.push_str(" ORDER BY seq DESC LIMIT ?");
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
        let done = sqlx::query(
            "UPDATE sandboxes SET expires_at = ?3 \
             WHERE id = ?1 AND tenant = ?2 AND status = 'running'",
        )
        .bind(id)
        .bind(tenant)
        .bind(expires_at)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_sandbox_spec(&self, tenant: &str, id: &str, spec: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sandboxes SET spec = ?3 WHERE id = ?1 AND tenant = ?2 AND status = 'running'",
        )
        .bind(id)
        .bind(tenant)
        .bind(spec)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn end_sandbox(&self, id: &str, ended_at: i64, reason: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sandboxes SET status = 'terminated', ended_at = ?2, end_reason = ?3 \
             WHERE id = ?1 AND status = 'running'",
        )
        .bind(id)
        .bind(ended_at)
        .bind(reason)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn end_all_sandboxes(&self, ended_at: i64, reason: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE sandboxes SET status = 'terminated', ended_at = ?1, end_reason = ?2 \
             WHERE status = 'running' AND (node = ?3 OR node IS NULL) RETURNING seq, id",
        )
        .bind(ended_at)
        .bind(reason)
        .bind(&self.owner.node)
        .fetch_all(&self.writer)
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
        let rows = sqlx::query(
            "UPDATE sandboxes SET status = 'terminated', ended_at = ?2, end_reason = ?3 \
             WHERE status = 'running' AND node IS NOT NULL AND node != ?4 AND node NOT IN \
             (SELECT id FROM nodes WHERE heartbeat_at >= ?1) RETURNING seq, id",
        )
        .bind(silent_since)
        .bind(ended_at)
        .bind(reason)
        .bind(&self.owner.node)
        .fetch_all(&self.writer)
        .await
        .map_err(db)?;
        ids_by_seq(&rows)
    }

    async fn sandbox_node(&self, id: &str) -> Result<Option<(String, String)>> {
        self.node_of(
            "SELECT s.node, n.address FROM sandboxes s LEFT JOIN nodes n ON n.id = s.node \
             WHERE s.id = ?1 AND s.status = 'running'",
            id,
        )
        .await
    }

    async fn execution_node(&self, id: &str) -> Result<Option<(String, String)>> {
        self.node_of(
            "SELECT e.node, n.address FROM executions e LEFT JOIN nodes n ON n.id = e.node \
             WHERE e.id = ?1 AND e.status = 'running'",
            id,
        )
        .await
    }

    async fn artifact_node(&self, id: &str) -> Result<Option<(String, String)>> {
        self.node_of(
            "SELECT s.node, n.address FROM artifacts a \
             JOIN sandboxes s ON s.tenant = a.tenant AND s.id = a.sandbox_id \
             LEFT JOIN nodes n ON n.id = s.node WHERE a.id = ?1",
            id,
        )
        .await
    }

    fn owner(&self) -> &Owner {
        &self.owner
    }

    async fn heartbeat(&self, now: i64, beat: &NodeBeat) -> Result<u64> {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO nodes (id, address, started_at, heartbeat_at, running, queued, \
             sandboxes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO UPDATE SET \
             address = ?2, started_at = ?3, heartbeat_at = ?4, running = ?5, queued = ?6, \
             sandboxes = ?7",
        )
        .bind(&self.owner.node)
        .bind(&beat.address)
        .bind(beat.started_at)
        .bind(now)
        .bind(count(beat.running))
        .bind(count(beat.queued))
        .bind(count(beat.sandboxes))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        let done = sqlx::query(
            "UPDATE executions SET lease_until = ?2 WHERE status = 'running' AND node = ?1",
        )
        .bind(&self.owner.node)
        .bind(now + self.owner.lease_ms)
        .execute(&self.writer)
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
            "SELECT id FROM sandboxes WHERE status = 'running' AND expires_at <= ?1 \
             ORDER BY expires_at, seq",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        ids(&rows)
    }

    async fn purge_sandboxes(&self, before: i64) -> Result<Vec<String>> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        // The children are deleted explicitly (rather than left to ON DELETE CASCADE) to learn
        // the artifact ids, and so as not to depend on foreign keys being enforced.
        let artifacts = sqlx::query(concat!(
            "DELETE FROM artifacts WHERE (tenant, sandbox_id) IN (",
            purgeable!(),
            ") RETURNING seq, id"
        ))
        .bind(before)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(concat!(
            "DELETE FROM code_runs WHERE (tenant, sandbox_id) IN (",
            purgeable!(),
            ")"
        ))
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("DELETE FROM sandboxes WHERE status = 'terminated' AND ended_at < ?1")
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        ids_by_seq(&artifacts)
    }

    async fn insert_code_run(&self, r: &CodeRunRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO code_runs (id, tenant, sandbox_id, context_id, status, doc, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&r.id)
        .bind(&r.tenant)
        .bind(&r.sandbox_id)
        .bind(&r.context_id)
        .bind(r.status.as_str())
        .bind(&r.doc)
        .bind(r.created_at)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn update_code_run(&self, id: &str, status: RunStatus, doc: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE code_runs SET status = ?2, doc = ?3 \
             WHERE id = ?1 AND status IN ('queued', 'running')",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(doc)
        .execute(&self.writer)
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
        let row = sqlx::query(concat!(
            "SELECT ",
            run_cols!(),
            " FROM code_runs WHERE id = ?1 AND tenant = ?2 AND sandbox_id = ?3"
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
        // Separate statements rather than `(?3 IS NULL OR seq < ?3)`, so that the cursor is a
        // range on the (tenant, sandbox_id, seq) index rather than a filter.
        let rows = match before_seq {
            Some(before) => {
                sqlx::query(concat!(
                    "SELECT ",
                    run_cols!(),
                    " FROM code_runs WHERE tenant = ?1 AND sandbox_id = ?2 AND seq < ?3 \
                     ORDER BY seq DESC LIMIT ?4"
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
                    " FROM code_runs WHERE tenant = ?1 AND sandbox_id = ?2 \
                     ORDER BY seq DESC LIMIT ?3"
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
        let rows = match sandbox_id {
            Some(sandbox_id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    run_cols!(),
                    " FROM code_runs WHERE status IN ('queued', 'running') \
                     AND sandbox_id = ?1 ORDER BY seq"
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
        if a.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        for art in a {
            sqlx::query(concat!(
                "INSERT INTO artifacts (",
                artifact_cols!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
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
        tx.commit().await.map_err(db)
    }

    async fn get_artifact(&self, tenant: &str, id: &str) -> Result<Option<ArtifactRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            artifact_cols!(),
            " FROM artifacts WHERE id = ?1 AND tenant = ?2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(artifact_row).transpose()
    }

    async fn get_artifact_by_id(&self, id: &str) -> Result<Option<ArtifactRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            artifact_cols!(),
            " FROM artifacts WHERE id = ?1"
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
        let rows = match run_id {
            Some(run_id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    artifact_cols!(),
                    " FROM artifacts WHERE tenant = ?1 AND sandbox_id = ?2 AND run_id = ?3 \
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
                    " FROM artifacts WHERE tenant = ?1 AND sandbox_id = ?2 ORDER BY seq"
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
        let rows = sqlx::query("DELETE FROM artifacts WHERE expires_at <= ?1 RETURNING seq, id")
            .bind(now)
            .fetch_all(&self.writer)
            .await
            .map_err(db)?;
        ids_by_seq(&rows)
    }
}

#[cfg(test)]
mod tests;
