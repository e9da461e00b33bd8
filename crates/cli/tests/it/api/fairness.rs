//! Fair sharing between tenants: one tenant flooding the server with executions that only
//! sleep does not delay another tenant's work, and neither can take the whole queue.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::server::{KEY_A, KEY_B, Opts, Server, client, eventually};

fn sleeper(secs: u32) -> serde_json::Value {
    json!({"language": "python", "code": format!("import time\ntime.sleep({secs})")})
}

/// Tenant A fills the server with sleeping executions (async ones queued, synchronous ones
/// waiting); tenant B's synchronous hellos still start at once: they finish while A's queue
/// has not moved, and each well within a second or two.
#[test]
fn a_flooding_tenant_does_not_delay_another() {
    let srv = Server::with(
        Opts::new()
            .env("RUNCELL_CONCURRENCY", "4")
            .env("RUNCELL_RATE_LIMIT", "100000"),
    );
    // 24 async and 8 synchronous sleeps of 4 s from A: with 4 slots, B would wait for most
    // of them (about 30 s) behind a first-come-first-served queue.
    for _ in 0..24 {
        srv.submit(KEY_A, &sleeper(4));
    }
    for _ in 0..8 {
        let url = format!("{}/api/v1/execute", srv.url);
        std::thread::spawn(move || {
            let _ = client()
                .post(url)
                .header("Authorization", format!("Bearer {KEY_A}"))
                .json(&sleeper(4))
                .send();
        });
    }
    // A runs as many as it may (3 of the 4 slots by default), the rest waits.
    eventually(Duration::from_secs(30), "A's executions to start", || {
        let running = srv.list_all(KEY_A, "&status=running").len();
        (running >= 3).then_some(())
    });
    let pending_before = srv.list_all(KEY_A, "&status=pending").len();
    assert!(pending_before >= 18, "A's queue is long: {pending_before}");

    let mut worst = Duration::ZERO;
    for i in 0..8 {
        let t = Instant::now();
        let r = srv
            .post(
                "/api/v1/execute",
                Some(KEY_B),
                &json!({"language": "python", "code": format!("print('hello {i}')")}),
            )
            .expect(200)
            .json();
        worst = worst.max(t.elapsed());
        assert_eq!(r["stdout"], format!("hello {i}\n"), "{r}");
        assert_eq!(r["status"], "completed", "{r}");
    }
    // B did not wait behind A's queue: A's executions are still waiting (at most one round
    // of A's 4 s sleeps can have ended meanwhile), and no hello took anywhere near 4 s.
    let pending_after = srv.list_all(KEY_A, "&status=pending").len();
    assert!(
        pending_after + 6 >= pending_before,
        "B's hellos ran ahead of A's queue ({pending_before} pending before, {pending_after} after)"
    );
    assert!(
        worst < Duration::from_millis(2500),
        "B's slowest hello took {worst:?} while A flooded"
    );
    // A never ran more than its share.
    let running = srv.list_all(KEY_A, "&status=running").len();
    assert!(
        running <= 3,
        "A runs {running} at once, more than 3 of 4 slots"
    );
}

/// Each tenant's waiting work is capped (429 `TENANT_QUEUE_FULL` with `Retry-After`), so one
/// tenant cannot fill the whole queue: the other is still accepted; a cancelled pending
/// execution frees its place.
#[test]
fn a_tenant_cannot_take_the_whole_queue() {
    let srv = Server::with(
        Opts::new()
            .env("RUNCELL_CONCURRENCY", "1")
            .env("RUNCELL_TENANT_MAX_QUEUED", "4")
            .env("RUNCELL_MAX_QUEUE", "6"),
    );
    let mut ids = Vec::new();
    // One runs (it leaves the queue), four wait.
    for _ in 0..5 {
        ids.push(srv.submit(KEY_A, &sleeper(30)));
    }
    eventually(Duration::from_secs(30), "the first to run", || {
        (srv.list_all(KEY_A, "&status=running").len() == 1).then_some(())
    });
    let r = srv.post("/api/v1/execute/async", Some(KEY_A), &sleeper(1));
    let v = r.error(429, Some("TENANT_QUEUE_FULL"));
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("4 executions waiting"),
        "{v}"
    );
    assert!(r.header("retry-after").is_some(), "429 says when to retry");
    // Synchronous requests count too.
    srv.post("/api/v1/execute", Some(KEY_A), &sleeper(1))
        .error(429, Some("TENANT_QUEUE_FULL"));
    // B is still accepted, up to the whole queue's limit (6 = A's 4 + B's 2).
    srv.submit(KEY_B, &sleeper(1));
    srv.submit(KEY_B, &sleeper(1));
    srv.post("/api/v1/execute/async", Some(KEY_B), &sleeper(1))
        .error(503, Some("QUEUE_FULL"));
    // A cancelled pending execution gives its place back.
    let last = ids.last().expect("an id");
    srv.post(
        &format!("/api/v1/executions/{last}/cancel"),
        Some(KEY_A),
        &json!({}),
    )
    .expect(200);
    srv.submit(KEY_A, &sleeper(1));
}
