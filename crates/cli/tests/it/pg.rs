//! A PostgreSQL database of its own for a test of `runcell serve --database-url`, in the
//! server that `RUNCELL_TEST_DATABASE_URL` names (`scripts/test` starts a throwaway one with
//! `scripts/test-postgres` and sets it). Without it the tests that need one fail, they do not
//! skip.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};

const URL_VAR: &str = "RUNCELL_TEST_DATABASE_URL";

/// A database created for one test and dropped (with its connections) when this is.
pub struct TestDatabase {
    /// Its URL, for `--database-url`.
    pub url: String,
    name: String,
}

/// Runs `f` on a runtime of its own (the tests are synchronous).
fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

fn base_url() -> String {
    let url = std::env::var(URL_VAR).unwrap_or_default();
    assert!(
        !url.trim().is_empty(),
        "{URL_VAR} is not set: this test runs runcell on PostgreSQL. Start the throwaway \
         server with `eval \"$(scripts/test-postgres)\"` (scripts/test does this)"
    );
    url
}

/// `url` with its database (the URL's path) replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let query = url.find('?').unwrap_or(url.len());
    let path = url[after_scheme..query]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(query);
    format!("{}/{db}{}", &url[..path], &url[query..])
}

async fn connect(url: &str) -> PgConnection {
    let options = PgConnectOptions::from_str(url)
        .unwrap_or_else(|e| panic!("{URL_VAR} is not a PostgreSQL URL: {e}"));
    PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test PostgreSQL ({URL_VAR}={url}): {e}; \
             `eval \"$(scripts/test-postgres)\"` starts it"
            )
        })
}

async fn admin(sql: String) {
    let mut conn = connect(&base_url()).await;
    sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

impl TestDatabase {
    pub fn create() -> TestDatabase {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "runcell_it_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        block_on(admin(format!("CREATE DATABASE {name}")));
        TestDatabase {
            url: with_database(&base_url(), &name),
            name,
        }
    }

    /// The rows of `sql` (two text columns each), read in the database itself.
    pub fn rows(&self, sql: &'static str) -> Vec<(String, String)> {
        block_on(async {
            let mut conn = connect(&self.url).await;
            let rows = sqlx::query_as(sql)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let _ = conn.close().await;
            rows
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if std::thread::panicking() {
            // Keep it for a look; a later run of scripts/test-postgres does not mind it.
            eprintln!("the test's database {} is kept", self.url);
            return;
        }
        block_on(admin(sql));
    }
}

#[test]
fn a_database_url_with_another_database() {
    assert_eq!(
        with_database("postgres://u@h:1/base", "x"),
        "postgres://u@h:1/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/base?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}
