use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::conformance::*;

/// The SQLite backend of the conformance suite: a store in a temporary directory.
pub(crate) struct Sqlite {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
}

impl Backend for Sqlite {
    async fn fresh() -> Sqlite {
        let (dir, store) = open_temp().await;
        Sqlite {
            dir,
            store: Arc::new(store),
        }
    }

    fn shared(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    fn as_node(&self, owner: Owner) -> Arc<dyn Store> {
        Arc::new((*self.store).clone().with_owner(owner))
    }

    async fn reopen(&mut self) {
        let path = self.dir.path().join("state/runcell.db");
        // Only this handle is dropped; the pool's connections go with it, unclosed.
        self.store = Arc::new(SqliteStore::open(&path).await.expect("reopen"));
    }

    async fn count_rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&self.store.pool)
            .await
            .expect("count rows")
    }
}

crate::conformance_suite!(Sqlite);

async fn open_temp() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("state/runcell.db"))
        .await
        .expect("open");
    (dir, store)
}

#[tokio::test]
async fn file_mode_wal_and_schema_version() {
    let (dir, s) = open_temp().await;
    // A write, so that -wal and -shm exist.
    s.insert_execution(&new_exec("e", "t", ExecStatus::Pending))
        .await
        .unwrap();
    let db = dir.path().join("state/runcell.db");
    for file in [db.clone(), dir.path().join("state/runcell.db-wal")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let dir_mode = std::fs::metadata(dir.path().join("state"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(sync, 1, "NORMAL");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(busy, 5_000);
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(s.path(), db.as_path());

    // A database from a newer build is refused rather than misread.
    sqlx::raw_sql("PRAGMA user_version = 99")
        .execute(&s.pool)
        .await
        .unwrap();
    s.close().await;
    drop(s);
    match SqliteStore::open(&db).await {
        Err(StoreError::Database(msg)) => assert!(msg.contains("99"), "{msg}"),
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_status_or_state_is_corrupt() {
    let (_dir, s) = open_temp().await;
    s.insert_execution(&new_exec("e", "t", ExecStatus::Pending))
        .await
        .unwrap();
    sqlx::raw_sql("UPDATE executions SET status = 'exploded'")
        .execute(&s.pool)
        .await
        .unwrap();
    assert!(matches!(
        s.get_execution("t", "e", 0).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        s.list_executions("t", &all(10), 0).await,
        Err(StoreError::Corrupt(_))
    ));
    s.insert_delivery(&new_delivery("msg", "e", "t", 1))
        .await
        .unwrap();
    sqlx::raw_sql("UPDATE deliveries SET state = 'lost'")
        .execute(&s.pool)
        .await
        .unwrap();
    assert!(matches!(
        s.list_deliveries("t", "e").await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn queries_use_the_indexes() {
    let (_dir, s) = open_temp().await;
    let plan = |sql: &'static str| {
        let pool = s.pool.clone();
        async move {
            let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
            rows.iter()
                .map(|r| r.try_get::<String, _>("detail").unwrap())
                .collect::<Vec<_>>()
                .join(" | ")
        }
    };
    let p = plan(
        "EXPLAIN QUERY PLAN UPDATE executions SET status = 'running' WHERE seq = \
         (SELECT seq FROM executions WHERE status = 'pending' ORDER BY seq LIMIT 1)",
    )
    .await;
    assert!(p.contains("executions_pending_seq"), "{p}");
    // The queue's, the leases' and the sessions' indexes hold only the rows they serve, and
    // the statements that use them say so (SQLite uses a partial index only then).
    for (sql, index) in [
        (
            "EXPLAIN QUERY PLAN SELECT seq FROM executions WHERE status = 'pending' \
             AND tenant = 't' ORDER BY seq LIMIT 1",
            "executions_pending_tenant_seq (tenant=?)",
        ),
        (
            "EXPLAIN QUERY PLAN SELECT tenant, COUNT(*) FROM executions \
             WHERE status = 'pending' GROUP BY tenant ORDER BY tenant",
            "executions_pending_tenant_seq",
        ),
        (
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM executions WHERE status = 'pending'",
            "executions_pending_seq",
        ),
        (
            "EXPLAIN QUERY PLAN UPDATE executions SET status = 'failed' \
             WHERE status = 'running' AND lease_until < 5",
            "executions_running_lease (lease_until<?)",
        ),
        (
            "EXPLAIN QUERY PLAN UPDATE executions SET lease_until = 9 \
             WHERE status = 'running' AND node = 'n'",
            "executions_running_lease",
        ),
        (
            "EXPLAIN QUERY PLAN UPDATE executions SET status = 'failed' \
             WHERE status = 'running' AND (node = 'n' OR node IS NULL)",
            "executions_running_lease",
        ),
    ] {
        let p = plan(sql).await;
        assert!(p.contains(index), "{sql}: {p}");
        assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
    }
    let p = plan(
        "EXPLAIN QUERY PLAN SELECT * FROM executions WHERE tenant = 't' AND session_id = 's' \
         AND (expires_at IS NULL OR expires_at > 0) AND seq < 5 ORDER BY seq DESC LIMIT 5",
    )
    .await;
    assert!(p.contains("executions_tenant_session_seq"), "{p}");
    assert!(!p.contains("TEMP B-TREE"), "{p}");
    let p = plan(
        "EXPLAIN QUERY PLAN DELETE FROM deliveries WHERE (tenant, execution_id) IN \
         (SELECT tenant, id FROM executions WHERE expires_at <= 5)",
    )
    .await;
    assert!(p.contains("deliveries_tenant_execution"), "{p}");
    assert!(p.contains("executions_expires_at"), "{p}");
    let p = plan(
        "EXPLAIN QUERY PLAN SELECT * FROM deliveries WHERE state = 'pending' \
         AND next_attempt_at <= 5 ORDER BY next_attempt_at LIMIT 5",
    )
    .await;
    assert!(p.contains("deliveries_state_next"), "{p}");
}

/// `cargo test -p runcell-store --release -- --ignored --nocapture cost`
#[tokio::test]
#[ignore = "timing, run by hand"]
async fn cost_of_insert_and_finish() {
    let (_dir, s) = open_temp().await;
    let n: u32 = 2_000;
    let (mut insert, mut fin) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let id = format!("{i:08x}-0000-4000-8000-000000000000");
        let t = Instant::now();
        s.insert_execution(&new_exec(&id, "tenant", ExecStatus::Running))
            .await
            .unwrap();
        insert += t.elapsed();
        let t = Instant::now();
        assert!(
            s.finish_execution(&id, &finish(ExecStatus::Completed, 2, 3))
                .await
                .unwrap()
        );
        fin += t.elapsed();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "insert_execution {:.0} µs + finish_execution {:.0} µs = {:.0} µs per pair ({n} pairs)",
        us(insert),
        us(fin),
        us(insert + fin)
    );
    // A synchronous execution's one write: its row inserted already finished.
    let started = Instant::now();
    for i in 0..n {
        let id = format!(
            "{:08x}-0000-4000-8000-00000000000f",
            i.wrapping_mul(2_654_435_761_u32)
        );
        let e = new_exec(&id, "tenant", ExecStatus::Running);
        s.insert_finished_execution(&e, &finish(ExecStatus::Completed, 2, 3))
            .await
            .unwrap();
    }
    let per_insert = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("insert_finished_execution: {per_insert:.0} µs per call");
    let started = Instant::now();
    for i in 0..n {
        let id = format!("{i:08x}-0000-4000-8000-000000000000");
        s.get_execution("tenant", &id, 0).await.unwrap().unwrap();
    }
    let per_get = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("get_execution: {per_get:.0} µs per call");
}

// --- sandboxes, code runs, artifacts ---------------------------------------------------------

#[test]
fn status_strings_round_trip() {
    for st in [SandboxStatus::Running, SandboxStatus::Terminated] {
        assert_eq!(SandboxStatus::parse(st.as_str()), Some(st));
    }
    assert_eq!(SandboxStatus::parse("Running"), None);
    let all = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];
    for st in all {
        assert_eq!(RunStatus::parse(st.as_str()), Some(st));
        assert_eq!(st.as_str(), st.as_str().to_lowercase());
    }
    let finals: Vec<_> = all.into_iter().filter(|s| s.is_final()).collect();
    assert_eq!(
        finals,
        [
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled
        ]
    );
    assert_eq!(RunStatus::parse("done"), None);
}

#[tokio::test]
async fn unknown_sandbox_or_run_status_is_corrupt() {
    let (_dir, s) = open_temp().await;
    s.insert_sandbox(&new_sandbox("sb", "t", 1_000))
        .await
        .unwrap();
    s.insert_code_run(&new_run("run", "t", "sb", RunStatus::Queued))
        .await
        .unwrap();
    sqlx::raw_sql("UPDATE sandboxes SET status = 'zombie'; UPDATE code_runs SET status = 'odd'")
        .execute(&s.pool)
        .await
        .unwrap();
    assert!(matches!(
        s.get_sandbox("t", "sb").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        s.list_sandboxes("t", &sandboxes(10)).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        s.get_code_run("t", "sb", "run").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        s.list_code_runs("t", "sb", None, 10).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// A database at `path` as a build of schema `version` left it (its migrations only).
async fn old_database(path: &std::path::Path, version: usize) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    for step in &MIGRATIONS[..version] {
        sqlx::raw_sql(*step).execute(&mut conn).await.unwrap();
    }
    sqlx::raw_sql(AssertSqlSafe(format!("PRAGMA user_version = {version}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn version_1_database_migrates_to_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runcell.db");
    // A database as a version-1 build left it: the first migration only, with data.
    {
        let mut conn = old_database(&path, 1).await;
        sqlx::query(
            "INSERT INTO executions (id, tenant, status, language, request, created_at) \
             VALUES ('e1', 't', 'pending', 'python', '{}', 5)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query("INSERT INTO api_keys (key_hash, tenant, created_at) VALUES ('h', 't', 1)")
            .execute(&mut conn)
            .await
            .unwrap();
        let tables: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sandboxes'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables, 0);
        conn.close().await.unwrap();
    }

    let s = SqliteStore::open(&path).await.unwrap();
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // The old data is intact.
    let e = s.get_execution("t", "e1", 0).await.unwrap().unwrap();
    assert_eq!((e.status, e.created_at), (ExecStatus::Pending, 5));
    assert_eq!(s.api_keys().await.unwrap(), [("h".into(), "t".into())]);
    // The new tables work.
    s.insert_sandbox(&new_sandbox("sb", "t", 1_000))
        .await
        .unwrap();
    s.insert_code_run(&new_run("run", "t", "sb", RunStatus::Running))
        .await
        .unwrap();
    s.insert_artifacts(&[new_artifact("art", "t", "sb", "run")])
        .await
        .unwrap();
    assert_eq!(s.expired_sandboxes(1_000).await.unwrap(), ["sb"]);
    s.close().await;
    drop(s);

    // Reopening a version-2 database changes nothing.
    let s = SqliteStore::open(&path).await.unwrap();
    assert!(s.get_sandbox("t", "sb").await.unwrap().is_some());
    assert_eq!(s.unfinished_code_runs(None).await.unwrap().len(), 1);
    assert!(s.get_artifact("t", "art").await.unwrap().is_some());
    s.close().await;
}

#[tokio::test]
async fn sandbox_queries_use_the_indexes() {
    let (_dir, s) = open_temp().await;
    let plan = |sql: String| {
        let pool = s.pool.clone();
        async move {
            let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(&pool)
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.try_get::<String, _>("detail").unwrap())
                .collect::<Vec<_>>()
                .join(" | ")
        }
    };
    let cases: &[(&str, &[&str])] = &[
        (
            "SELECT * FROM sandboxes WHERE tenant = 't' AND seq < 5 ORDER BY seq DESC LIMIT 5",
            &["sandboxes_tenant_seq"],
        ),
        (
            "SELECT * FROM sandboxes WHERE tenant = 't' AND status = 'running' AND seq < 5 \
             ORDER BY seq DESC LIMIT 5",
            &["sandboxes_tenant_status_seq"],
        ),
        (
            "SELECT id FROM sandboxes WHERE status = 'running' AND expires_at <= 5 \
             ORDER BY expires_at, seq",
            &["sandboxes_status_expires_at"],
        ),
        (
            // Either (status, …) index will do.
            "UPDATE sandboxes SET status = 'terminated' WHERE status = 'running'",
            &["USING INDEX sandboxes_status_"],
        ),
        (
            concat!(
                "DELETE FROM artifacts WHERE (tenant, sandbox_id) IN (",
                purgeable!(),
                ")"
            ),
            &["artifacts_tenant_sandbox_run", "sandboxes_status_ended_at"],
        ),
        (
            concat!(
                "DELETE FROM code_runs WHERE (tenant, sandbox_id) IN (",
                purgeable!(),
                ")"
            ),
            &["code_runs_tenant_sandbox_seq", "sandboxes_status_ended_at"],
        ),
        (
            "SELECT * FROM code_runs WHERE tenant = 't' AND sandbox_id = 's' AND seq < 5 \
             ORDER BY seq DESC LIMIT 5",
            &["code_runs_tenant_sandbox_seq"],
        ),
        (
            "SELECT * FROM code_runs WHERE status IN ('queued', 'running') AND sandbox_id = 's' \
             ORDER BY seq",
            &["code_runs_status_sandbox"],
        ),
        (
            "SELECT * FROM artifacts WHERE tenant = 't' AND sandbox_id = 's' AND run_id = 'r' \
             ORDER BY seq",
            &["artifacts_tenant_sandbox_run"],
        ),
        (
            "SELECT * FROM artifacts WHERE tenant = 't' AND sandbox_id = 's' ORDER BY seq",
            &["artifacts_tenant_sandbox_run"],
        ),
        (
            "DELETE FROM artifacts WHERE expires_at <= 5",
            &["artifacts_expires_at"],
        ),
    ];
    for (sql, indexes) in cases {
        let p = plan(sql.replace("?1", "5")).await;
        for index in *indexes {
            assert!(p.contains(index), "{sql}: {p}");
        }
        assert!(!p.contains("SCAN"), "{sql}: {p}");
    }
    // Paging needs no sort.
    let p = plan(
        "SELECT * FROM code_runs WHERE tenant = 't' AND sandbox_id = 's' ORDER BY seq DESC \
         LIMIT 5"
            .into(),
    )
    .await;
    assert!(!p.contains("TEMP B-TREE"), "{p}");
}

#[tokio::test]
async fn version_3_deliveries_migrate_to_4_as_posts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runcell.db");
    // A database as a version-3 build left it, with a delivery.
    {
        let mut conn = old_database(&path, 3).await;
        sqlx::query(
            "INSERT INTO deliveries (id, execution_id, tenant, url, payload, state, created_at, \
             next_attempt_at) VALUES ('msg', 'e', 't', 'https://x', '{}', 'pending', 1, 5)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let s = SqliteStore::open(&path).await.unwrap();
    let due = s.due_deliveries(10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].method, "POST");
    // Version 5 adds the claim: an old delivery is unclaimed, and claimable.
    assert_eq!(
        (due[0].claimed_by.as_deref(), due[0].lease_until),
        (None, None)
    );
    let claimed = s.claim_due_deliveries("n1", 10, 20, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].claimed_by.as_deref(), Some("n1"));
}

#[tokio::test]
async fn version_6_executions_migrate_to_7_and_stay_claimable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runcell.db");
    // A database as a version-6 build left it: one execution of each kind the queue, the
    // leases and the sessions' listing look for, and a finished one.
    {
        let mut conn = old_database(&path, 6).await;
        sqlx::raw_sql(
            "INSERT INTO executions (id, tenant, status, language, request, created_at, \
             session_id, node, lease_until, expires_at) VALUES \
             ('p', 't', 'pending', 'python', '{}', 1, NULL, NULL, NULL, NULL), \
             ('r', 't', 'running', 'python', '{}', 2, NULL, 'gone', 3, NULL), \
             ('s', 't', 'completed', 'python', '{}', 3, 'sess', NULL, NULL, 1000000), \
             ('c', 't', 'completed', 'python', '{}', 4, NULL, NULL, NULL, 1000000)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let s = SqliteStore::open(&path).await.unwrap();
    let partial: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name IN \
         ('executions_pending_seq', 'executions_pending_tenant_seq', \
          'executions_running_lease', 'executions_tenant_session_seq') ORDER BY name",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(partial.len(), 4, "{partial:?}");
    assert!(
        partial.iter().all(|(_, sql)| sql.contains("WHERE")),
        "{partial:?}"
    );
    assert_eq!(s.count_pending().await.unwrap(), 1);
    let claimed = s.claim_next_pending_of("t", 10).await.unwrap().unwrap();
    assert_eq!(claimed.id, "p");
    assert!(s.claim_next_pending(10).await.unwrap().is_none());
    // The running row whose lease ran out is found through the partial index; the one just
    // claimed, whose lease runs on, is not failed.
    let failed = s.fail_expired_leases("lost", 10, 100).await.unwrap();
    assert_eq!(
        failed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["r"]
    );
    let filter = ListFilter {
        session_id: Some("sess".into()),
        limit: 10,
        ..ListFilter::default()
    };
    let listed = s.list_executions("t", &filter, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["s"]
    );
}
