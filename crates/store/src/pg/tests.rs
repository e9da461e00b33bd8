//! The PostgreSQL store's tests: the conformance suite, and what is PostgreSQL's own (the
//! migration lock, claims that skip locked rows, several stores on one database as several
//! processes would be, connection errors).
//!
//! They need a PostgreSQL: `RUNCELL_TEST_DATABASE_URL` names a database in which each test
//! makes a schema of its own (dropped at its end), so tests run in parallel. `scripts/test`
//! starts a throwaway server and sets it (`eval "$(scripts/test-postgres)"`); without it these
//! tests fail, they do not skip.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::conformance::*;

const URL_VAR: &str = "RUNCELL_TEST_DATABASE_URL";

/// The test database's connection options; panics with what to do when there is none.
fn test_options() -> PgConnectOptions {
    let url = std::env::var(URL_VAR).unwrap_or_default();
    assert!(
        !url.trim().is_empty(),
        "{URL_VAR} is not set: the PostgreSQL store's tests need a database. Start the \
         throwaway one with `eval \"$(scripts/test-postgres)\"` (as root; scripts/test does \
         this) or point {URL_VAR} at a database you can create schemas in"
    );
    PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("{URL_VAR}={url:?} is not a PostgreSQL URL: {e}"))
}

async fn admin() -> PgConnection {
    let options = test_options();
    PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test database {} ({URL_VAR}): {e}; is it running? \
             (`eval \"$(scripts/test-postgres)\"` starts it)",
                describe(&options)
            )
        })
}

/// A schema of its own in the test database, dropped (with everything in it) when this is.
struct Schema {
    name: String,
    options: PgConnectOptions,
}

impl Schema {
    async fn new() -> Schema {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "runcell_t{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = admin().await;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test's schema");
        conn.close().await.expect("close");
        let options = test_options().options([("search_path", name.as_str())]);
        Schema { name, options }
    }

    async fn store(&self) -> PgStore {
        PgStore::connect_with(self.options.clone())
            .await
            .expect("connect to the test's schema")
    }

    /// A connection of its own on the schema (another session than the store's).
    async fn conn(&self) -> PgConnection {
        PgConnection::connect_with(&self.options)
            .await
            .expect("connect")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its
        // own with a runtime of its own does it, and this waits for it.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&test_options())
                    .await
                    .map_err(std::io::Error::other)?;
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .map_err(std::io::Error::other)?;
                conn.close().await.map_err(std::io::Error::other)
            })
        })
        .join();
        if !std::thread::panicking() {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("dropping schema {}: {e}", self.name),
                Err(_) => panic!("dropping schema {}: the thread panicked", self.name),
            }
        }
    }
}

/// The PostgreSQL backend of the conformance suite: a store in a schema of its own.
pub(crate) struct Pg {
    store: Arc<PgStore>,
    // Dropped last: the schema goes once the store's connections are gone.
    schema: Schema,
}

impl Backend for Pg {
    async fn fresh() -> Pg {
        let schema = Schema::new().await;
        let store = Arc::new(schema.store().await);
        Pg { store, schema }
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
        // Only this handle is dropped; its pool's connections go with it, unclosed.
        self.store = Arc::new(self.schema.store().await);
    }

    async fn count_rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&self.store.pool)
            .await
            .expect("count rows")
    }
}

crate::conformance_suite!(Pg);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_version_and_a_newer_schema_is_refused() {
    let schema = Schema::new().await;
    let s = schema.store().await;
    let version: i64 = sqlx::query_scalar("SELECT version FROM runcell_schema")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // Opening again migrates nothing and keeps the data.
    s.insert_execution(&new_exec("e", "t", ExecStatus::Pending))
        .await
        .unwrap();
    let again = schema.store().await;
    assert_eq!(again.count_pending().await.unwrap(), 1);

    sqlx::raw_sql("UPDATE runcell_schema SET version = 99")
        .execute(&s.pool)
        .await
        .unwrap();
    s.close().await;
    again.close().await;
    match PgStore::connect_with(schema.options.clone()).await {
        Err(StoreError::Database(msg)) => {
            assert!(
                msg.contains("99") && msg.contains("upgrade runcell"),
                "{msg}"
            )
        }
        other => panic!("expected a version error, got {other:?}"),
    }
}

/// Once the schema is up to date, a role that may read and write the tables but not create
/// anything can run on it (least privilege after the first start or an upgrade).
#[tokio::test]
async fn an_up_to_date_schema_needs_no_create_privilege() {
    let schema = Schema::new().await;
    schema.store().await.close().await;
    let role = format!("{}_dml", schema.name);
    let mut a = admin().await;
    let grants = format!(
        "CREATE ROLE {role} LOGIN; \
         GRANT USAGE ON SCHEMA {s} TO {role}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {role}; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {role};",
        s = schema.name
    );
    sqlx::raw_sql(AssertSqlSafe(grants))
        .execute(&mut a)
        .await
        .unwrap();
    let started = PgStore::connect_with(schema.options.clone().username(&role)).await;
    let used = match &started {
        Ok(s) => {
            let r = s
                .insert_execution(&new_exec("e", "t", ExecStatus::Pending))
                .await
                .and(s.claim_next_pending(1).await);
            s.close().await;
            r.map(|row| row.map(|r| r.id))
        }
        Err(e) => Err(StoreError::Database(e.to_string())),
    };
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP OWNED BY {role}; DROP ROLE {role}"
    )))
    .execute(&mut a)
    .await
    .unwrap();
    assert_eq!(used.expect("a role without CREATE runs"), Some("e".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_at_once_migrate_one_after_the_other() {
    let schema = Schema::new().await;
    // While another session holds the migration lock, a starting store waits for it.
    let mut holder = admin().await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    let options = schema.options.clone();
    let waiting = tokio::spawn(async move { PgStore::connect_with(options).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "the migration did not wait for the advisory lock"
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'executions'",
    )
    .bind(&schema.name)
    .fetch_one(&mut holder)
    .await
    .unwrap();
    assert_eq!(tables, 0, "nothing is created before the lock is granted");
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the migration went on once the lock was released")
        .unwrap()
        .expect("migrated");

    // Many nodes starting together on an empty schema: every one starts, the schema is made
    // once.
    let fresh = Schema::new().await;
    let mut starts = Vec::new();
    for _ in 0..6 {
        let options = fresh.options.clone();
        starts.push(tokio::spawn(
            async move { PgStore::connect_with(options).await },
        ));
    }
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.unwrap().expect("a node started"));
    }
    stores[0]
        .insert_execution(&new_exec("e", "t", ExecStatus::Pending))
        .await
        .unwrap();
    for s in &stores {
        assert_eq!(s.count_pending().await.unwrap(), 1);
    }
    for s in stores.iter().chain([&first]) {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_skips_a_row_another_session_holds_instead_of_waiting() {
    let schema = Schema::new().await;
    let s = schema.store().await;
    for id in ["a", "b"] {
        s.insert_execution(&new_exec(id, "t", ExecStatus::Pending))
            .await
            .unwrap();
    }
    let mut other = schema.conn().await;
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT seq FROM executions WHERE id = 'a' FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let claimed = tokio::time::timeout(Duration::from_secs(5), s.claim_next_pending(7))
        .await
        .expect("a claim waited for a locked row")
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, "b");
    let of_tenant = tokio::time::timeout(Duration::from_secs(5), s.claim_next_pending_of("t", 7))
        .await
        .expect("a tenant's claim waited for a locked row")
        .unwrap();
    assert!(of_tenant.is_none(), "{of_tenant:?}");
    tx.rollback().await.unwrap();
    assert_eq!(s.claim_next_pending(8).await.unwrap().unwrap().id, "a");
    assert!(s.claim_next_pending(9).await.unwrap().is_none());
}

/// Two stores on one database are two processes as far as PostgreSQL knows (their own pools,
/// sessions and transactions): their claimers together take every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claimers_of_two_stores_take_each_row_exactly_once() {
    let schema = Schema::new().await;
    let a = Arc::new(schema.store().await);
    let b = Arc::new(schema.store().await);
    const N: usize = 300;
    let tenants = ["t0", "t1", "t2"];
    for i in 0..N {
        a.insert_execution(&new_exec(
            &format!("e{i:04}"),
            tenants[i % 3],
            ExecStatus::Pending,
        ))
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for (n, store) in [&a, &b, &a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut idle = 0;
            // Half claim across tenants, half a tenant at a time (as the fair dispatcher
            // does); until every tenant's line is empty.
            while idle < tenants.len() {
                let row = if n % 2 == 0 {
                    store.claim_next_pending(1).await.expect("claim")
                } else {
                    let t = tenants[(mine.len() + idle) % tenants.len()];
                    store.claim_next_pending_of(t, 1).await.expect("claim of")
                };
                match row {
                    Some(r) => {
                        assert_eq!(r.status, ExecStatus::Running);
                        idle = 0;
                        mine.push(r.id);
                    }
                    None => idle += 1,
                }
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().collect();
    assert_eq!(unique.len(), claimed.len(), "a row was claimed twice");
    assert_eq!(claimed.len(), N, "every row claimed");
    assert_eq!(b.count_pending().await.unwrap(), 0);
    let running: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE status = 'running'")
            .fetch_one(&a.pool)
            .await
            .unwrap();
    assert_eq!(running, N as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_claim_skips_a_row_another_session_holds_instead_of_waiting() {
    let schema = Schema::new().await;
    let s = schema.store().await;
    for id in ["a", "b"] {
        s.insert_delivery(&new_delivery(id, id, "t", 10))
            .await
            .unwrap();
    }
    let mut other = schema.conn().await;
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT seq FROM deliveries WHERE id = 'a' FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let claimed = tokio::time::timeout(
        Duration::from_secs(5),
        s.claim_due_deliveries("n1", 10, 1_000, 10),
    )
    .await
    .expect("a claim waited for a locked row")
    .unwrap();
    assert_eq!(
        claimed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    tx.rollback().await.unwrap();
    assert_eq!(claim_due(&s, "n2", 20).await, ["a"]);
}

/// Two stores on one database, as two nodes: their delivery claimers together take every due
/// delivery exactly once; when the leases have passed, the old holders' late attempts race
/// new claims and attempts, and every delivery ends with exactly one recorded attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_claimers_of_two_stores_never_overlap() {
    let schema = Schema::new().await;
    let a: Arc<dyn Store> = Arc::new(schema.store().await);
    let b: Arc<dyn Store> = Arc::new(schema.store().await);
    const N: usize = 300;
    for i in 0..N {
        a.insert_delivery(&new_delivery(
            &format!("d{i:04}"),
            &format!("e{i}"),
            "t",
            10,
        ))
        .await
        .unwrap();
    }
    // Round 1: eight claimers (nodes n0..n7, alternately on each store) at time 100, leases
    // until 1000; each remembers what it holds.
    let mut tasks = Vec::new();
    for (n, store) in [&a, &b, &a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let node = format!("n{n}");
            let mut mine = Vec::new();
            // Bounded: claims that never run out fail the test rather than hang it.
            for _ in 0..=N {
                let got = store
                    .claim_due_deliveries(&node, 100, 1_000, 7)
                    .await
                    .expect("claim");
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|d| d.id));
            }
            (node, mine)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    let claimed: Vec<&String> = held.iter().flat_map(|(_, ids)| ids).collect();
    let unique: HashSet<_> = claimed.iter().collect();
    assert_eq!(unique.len(), claimed.len(), "a delivery was claimed twice");
    assert_eq!(claimed.len(), N, "every delivery claimed");

    // Round 2, at 2000: the old holders record their attempts late while new claimers
    // (m0..m3) take the lapsed claims and record attempts of their own.
    let mut tasks = Vec::new();
    for (n, (node, ids)) in held.into_iter().enumerate() {
        let store = Arc::clone(if n % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            let mut recorded = 0;
            for id in ids {
                let done = store
                    .record_attempt(
                        &node,
                        &id,
                        &attempt(2_000, Some(200), None),
                        DeliveryState::Delivered,
                        None,
                    )
                    .await
                    .expect("late record");
                recorded += usize::from(done);
                tokio::task::yield_now().await;
            }
            recorded
        }));
    }
    for (n, store) in [&a, &b, &a, &b].into_iter().enumerate() {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let node = format!("m{n}");
            let mut recorded = 0;
            // Bounded: claims that never run out fail the test rather than hang it.
            for _ in 0..=N {
                let got = store
                    .claim_due_deliveries(&node, 2_000, 3_000, 5)
                    .await
                    .expect("claim");
                if got.is_empty() {
                    break;
                }
                for d in got {
                    assert!(
                        d.attempts.is_empty(),
                        "{} was claimed after its attempt",
                        d.id
                    );
                    let done = store
                        .record_attempt(
                            &node,
                            &d.id,
                            &attempt(2_001, Some(200), None),
                            DeliveryState::Delivered,
                            None,
                        )
                        .await
                        .expect("record");
                    assert!(done, "{node} lost its live claim on {}", d.id);
                    recorded += 1;
                }
            }
            recorded
        }));
    }
    let mut recorded = 0;
    for t in tasks {
        recorded += t.await.unwrap();
    }
    assert_eq!(recorded, N, "one attempt recorded per delivery");
    let mut pg = schema.conn().await;
    let (attempts, delivered, claimed): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM delivery_attempts), \
         (SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'), \
         (SELECT COUNT(*) FROM deliveries WHERE claimed_by IS NOT NULL)",
    )
    .fetch_one(&mut pg)
    .await
    .unwrap();
    assert_eq!((attempts, delivered, claimed), (N as i64, N as i64, 0));
    let per_delivery: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT delivery_id FROM delivery_attempts \
         GROUP BY delivery_id HAVING COUNT(*) <> 1) x",
    )
    .fetch_one(&mut pg)
    .await
    .unwrap();
    assert_eq!(
        per_delivery, 0,
        "a delivery has more or fewer than one attempt"
    );
    pg.close().await.unwrap();
}

/// A cancel racing claims (from another store): each pending row is either claimed or
/// cancelled, never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancels_and_claims_racing_never_both_win() {
    let schema = Schema::new().await;
    let claimer = Arc::new(schema.store().await);
    let canceller = Arc::new(schema.store().await);
    const N: usize = 200;
    for i in 0..N {
        claimer
            .insert_execution(&new_exec(&format!("e{i:04}"), "t", ExecStatus::Pending))
            .await
            .unwrap();
    }
    let mut claims = Vec::new();
    for _ in 0..3 {
        let s = Arc::clone(&claimer);
        claims.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(r) = s.claim_next_pending(1).await.expect("claim") {
                mine.push(r.id);
            }
            mine
        }));
    }
    let s = Arc::clone(&canceller);
    let cancels = tokio::spawn(async move {
        let mut mine = Vec::new();
        // Newest first, to meet the claimers in the middle.
        for i in (0..N).rev() {
            let id = format!("e{i:04}");
            let f = finish(ExecStatus::Failed, 2, 100);
            if s.cancel_pending("t", &id, &f).await.expect("cancel") {
                mine.push(id);
            }
        }
        mine
    });
    let mut claimed = HashSet::new();
    for c in claims {
        for id in c.await.unwrap() {
            assert!(claimed.insert(id), "claimed twice");
        }
    }
    let cancelled: HashSet<String> = cancels.await.unwrap().into_iter().collect();
    assert!(
        claimed.is_disjoint(&cancelled),
        "{:?}",
        claimed.intersection(&cancelled).collect::<Vec<_>>()
    );
    assert_eq!(claimed.len() + cancelled.len(), N);
    for id in &cancelled {
        let row = canceller.get_execution("t", id, 0).await.unwrap().unwrap();
        assert_eq!(row.status, ExecStatus::Failed);
    }
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_server_is_a_sentence_without_the_password() {
    match PgStore::connect("mysql://root@localhost/db").await {
        Err(StoreError::Connect(msg)) => {
            assert!(msg.contains("not a PostgreSQL URL"), "{msg}")
        }
        other => panic!("expected a URL error, got {other:?}"),
    }
    // Nothing listens on port 1.
    match PgStore::connect("postgres://runcell:s3cret-pw@127.0.0.1:1/runcell").await {
        Err(e @ StoreError::Connect(_)) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("cannot connect to PostgreSQL at 127.0.0.1:1/runcell as runcell: "),
                "{msg}"
            );
            assert!(!msg.contains("s3cret"), "{msg}");
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
}

/// `sslmode` in the URL is obeyed: TLS when asked for (the test server has a self-signed
/// certificate), and a certificate no known authority signed is refused by `verify-full`.
#[tokio::test]
async fn tls_as_the_url_asks() {
    use sqlx::postgres::PgSslMode;
    let schema = Schema::new().await;
    let s = PgStore::connect_with(schema.options.clone().ssl_mode(PgSslMode::Require))
        .await
        .expect("connect with TLS");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert!(ssl, "sslmode=require: the connection is encrypted");
    s.insert_execution(&new_exec("e", "t", ExecStatus::Pending))
        .await
        .unwrap();
    s.close().await;
    let plain = PgStore::connect_with(schema.options.clone().ssl_mode(PgSslMode::Disable))
        .await
        .expect("connect without TLS");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&plain.pool)
        .await
        .unwrap();
    assert!(!ssl, "sslmode=disable: plain");
    plain.close().await;
    match PgStore::connect_with(schema.options.clone().ssl_mode(PgSslMode::VerifyFull)).await {
        Err(e @ StoreError::Connect(_)) => {
            assert!(
                e.to_string().contains("cannot connect to PostgreSQL"),
                "{e}"
            )
        }
        other => panic!("a self-signed certificate passed verify-full: {other:?}"),
    }
}

/// PostgreSQL's text cannot hold U+0000: storing one is a sentence, not the server's encoding
/// error (lookups by such keys find nothing, as the conformance suite checks).
#[tokio::test]
async fn a_nul_character_cannot_be_stored() {
    let schema = Schema::new().await;
    let s = schema.store().await;
    let mut e = new_exec("e", "t", ExecStatus::Pending);
    e.session_id = Some("a\0b".into());
    match s.insert_execution(&e).await {
        Err(StoreError::Database(msg)) => {
            assert!(msg.contains("NUL character"), "{msg}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(s.count_pending().await.unwrap(), 0);
    s.close().await;
}

#[tokio::test]
async fn unknown_status_or_state_is_corrupt() {
    let schema = Schema::new().await;
    let s = schema.store().await;
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
    s.close().await;
}

/// The same measurement as SQLite's `cost_of_insert_and_finish`, plus the queue's claim, on
/// the test server (loopback; with its durability off, so a commit costs no fsync here).
#[tokio::test]
#[ignore = "timing, run by hand"]
async fn cost_of_insert_claim_and_finish() {
    let schema = Schema::new().await;
    let s = schema.store().await;
    let n = 2_000;
    let (mut insert, mut claim, mut fin) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut claims = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{i:08x}-0000-4000-8000-000000000000");
        let t = std::time::Instant::now();
        s.insert_execution(&new_exec(&id, "tenant", ExecStatus::Pending))
            .await
            .unwrap();
        insert += t.elapsed();
        let t = std::time::Instant::now();
        let row = s.claim_next_pending_of("tenant", 2).await.unwrap().unwrap();
        let took = t.elapsed();
        claim += took;
        claims.push(took);
        assert_eq!(row.id, id);
        let t = std::time::Instant::now();
        assert!(
            s.finish_execution(&id, &finish(ExecStatus::Completed, 2, 3))
                .await
                .unwrap()
        );
        fin += t.elapsed();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    claims.sort();
    println!(
        "insert_execution {:.0} µs + claim_next_pending_of {:.0} µs (p50 {:.0} µs, p99 {:.0} µs) \
         + finish_execution {:.0} µs per execution ({n})",
        us(insert),
        us(claim),
        claims[n / 2].as_secs_f64() * 1e6,
        claims[n * 99 / 100].as_secs_f64() * 1e6,
        us(fin),
    );
    s.close().await;
}
