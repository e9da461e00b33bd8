//! The whole service on PostgreSQL (`runcell serve --database-url`): a synchronous execution,
//! an async one through the queue, a sandbox with a code run, each read back from the database
//! itself; a restart on another data directory finds them (the records live in PostgreSQL, not
//! in the data directory); queued work outlives a node killed with SIGKILL. And a database that
//! cannot be used is a sentence at start.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::pg::TestDatabase;
use crate::server::{KEY_A, Opts, Server, eventually};

#[test]
fn the_service_runs_on_postgresql() {
    let db = TestDatabase::create();
    let mut srv = Server::with(Opts::new().database_url(&db.url));
    assert!(
        srv.log().contains("store: PostgreSQL at "),
        "the server says where its records are: {}",
        srv.log()
    );

    // Synchronous.
    let sync = srv.execute(&json!({"language": "python", "code": "print(6 * 7)"}));
    assert_eq!(sync["status"], "completed", "{sync:#}");
    assert_eq!(sync["stdout"], "42\n", "{sync:#}");
    let sync_id = sync["execution_id"].as_str().expect("an id").to_string();

    // Asynchronous: stored pending, claimed from the queue, run, recorded.
    let async_id = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "print('queued')"}),
    );
    let done = srv.wait_done(KEY_A, &async_id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["result"]["stdout"], "queued\n", "{done:#}");

    let mut rows = db.rows("SELECT id, status FROM executions ORDER BY seq");
    rows.sort();
    let mut want = vec![
        (sync_id.clone(), "completed".to_string()),
        (async_id.clone(), "completed".to_string()),
    ];
    want.sort();
    assert_eq!(rows, want, "the executions are rows of PostgreSQL");

    // A sandbox, a code run in it, and its deletion.
    let sb = srv
        .post("/v1/sandboxes", Some(KEY_A), &json!({}))
        .expect(201)
        .json();
    let sb_id = sb["id"].as_str().expect("a sandbox id").to_string();
    let run: Value = srv
        .post(
            &format!("/v1/sandboxes/{sb_id}/code/runs?wait=true"),
            Some(KEY_A),
            &json!({"code": "21 * 2"}),
        )
        .expect(200)
        .json();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        db.rows("SELECT id, status FROM sandboxes"),
        [(sb_id.clone(), "running".to_string())]
    );
    assert_eq!(
        db.rows("SELECT sandbox_id, status FROM code_runs"),
        [(sb_id.clone(), "succeeded".to_string())]
    );
    let r = srv
        .req("DELETE", &format!("/v1/sandboxes/{sb_id}"), Some(KEY_A))
        .send()
        .expect("DELETE the sandbox");
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        db.rows("SELECT id, status FROM sandboxes"),
        [(sb_id.clone(), "terminated".to_string())]
    );

    // Nothing of it is in the data directory.
    assert!(
        !srv.data_dir.join("runcell.db").exists(),
        "no SQLite database beside PostgreSQL"
    );

    // Another server (another data directory) on the same database has it all.
    srv.kill9();
    let again = Server::with(Opts::new().database_url(&db.url));
    for id in [&sync_id, &async_id] {
        assert_eq!(again.execution(KEY_A, id)["status"], "completed");
    }
    let gone = again.get(&format!("/v1/sandboxes/{sb_id}"), Some(KEY_A));
    gone.error(404, Some("SANDBOX_DELETED"));
}

/// Queued work accepted by a node killed with SIGKILL is run by the next node on the database
/// (with another data directory): none lost, at most the running one failed with a reason.
#[test]
fn queued_work_survives_kill_9_on_postgresql() {
    const JOBS: usize = 12;
    let db = TestDatabase::create();
    let one_slot = || {
        Opts::new()
            .database_url(&db.url)
            .env("RUNCELL_CONCURRENCY", "1")
    };
    let mut first = Server::with(one_slot());
    let mut expected = HashMap::new();
    for i in 0..JOBS {
        let id = first.submit(
            KEY_A,
            &json!({"language": "python",
                    "code": format!("import time\ntime.sleep(0.2)\nprint({i})")}),
        );
        expected.insert(id, format!("{i}\n"));
    }
    eventually(
        Duration::from_secs(60),
        "a first execution to finish",
        || (!first.list_all(KEY_A, "&status=completed").is_empty()).then_some(()),
    );
    first.kill9();
    let pending = db.rows("SELECT id, status FROM executions WHERE status = 'pending'");
    assert!(
        pending.len() >= 5,
        "work is still queued when the node dies ({})",
        pending.len()
    );

    let second = Server::with(one_slot());
    let all = eventually(Duration::from_secs(90), "every execution to finish", || {
        let all = second.list_all(KEY_A, "");
        all.iter()
            .all(|e| matches!(e["status"].as_str(), Some("completed" | "failed")))
            .then_some(all)
    });
    assert_eq!(all.len(), JOBS, "none lost, none added");
    let mut failed = 0;
    for e in &all {
        let id = e["execution_id"].as_str().expect("an id");
        match e["status"].as_str() {
            Some("completed") => {
                assert_eq!(e["result"]["stdout"], expected[id].as_str(), "{e:#}")
            }
            _ => {
                failed += 1;
                assert!(
                    e["failure_reason"].as_str().is_some_and(|s| !s.is_empty()),
                    "a failure says why: {e:#}"
                );
            }
        }
    }
    assert!(failed <= 1, "{failed} executions failed");
}

/// `runcell serve` with a database it cannot use stops at once with a sentence, not a panic.
#[test]
fn an_unusable_database_is_a_sentence_at_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (url, says) in [
        (
            // Nothing listens on port 1.
            "postgres://runcell:s3cret-pw@127.0.0.1:1/runcell",
            "cannot connect to PostgreSQL at 127.0.0.1:1/runcell as runcell",
        ),
        (
            "mysql://127.0.0.1/runcell",
            "database_url must be a postgres:// or postgresql:// URL",
        ),
    ] {
        let stderr = crate::server::serve_refuses(
            dir.path(),
            &["--database-url", url],
            &[("RUNCELL_DATABASE_URL", None)],
            says,
        );
        assert!(
            !stderr.contains("s3cret"),
            "the password is not shown: {stderr}"
        );
    }
}
