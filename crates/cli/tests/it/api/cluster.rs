//! Several nodes on one PostgreSQL database (docs/cluster.md): queued work spread over three
//! nodes all completes, and a node killed with SIGKILL while it runs work loses none of it
//! (what it was running fails with a reason once its lease runs out, what it had queued runs
//! elsewhere); a sandbox is used through a node it does not live on (forwarded), and reads as
//! terminated, with the reason, once its node is gone; a running execution is cancelled
//! through any node; `GET /cluster` for operators.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::pg::TestDatabase;
use crate::server::{KEY_A, Opts, Server, eventually};

const ADMIN: &str = "it-operator-key-0123456789abcdef";

fn node(db: &TestDatabase) -> Server {
    Server::with(
        Opts::new()
            .database_url(&db.url)
            .env("RUNCELL_LEASE_SECS", "3")
            .env("RUNCELL_ADMIN_KEYS", ADMIN)
            .env("RUNCELL_CONCURRENCY", "4"),
    )
}

fn node_id(srv: &Server) -> String {
    std::fs::read_to_string(srv.data_dir.join("node-id"))
        .expect("the node's id in its data directory")
        .trim()
        .to_string()
}

#[test]
fn three_nodes_share_the_queue_and_a_killed_node_loses_nothing() {
    let db = TestDatabase::create();
    let a = node(&db);
    let b = node(&db);
    let mut c = node(&db);
    let c_id = node_id(&c);
    assert_ne!(node_id(&a), node_id(&b));

    // 300 executions queued through the three nodes in turn.
    let nodes = [&a, &b, &c];
    let ids: Vec<String> = (0..300)
        .map(|i| {
            nodes[i % 3].submit(
                KEY_A,
                &json!({"language": "python",
                        "code": format!("import time\ntime.sleep(0.2)\nprint({i})")}),
            )
        })
        .collect();

    // Kill C while it runs some of them.
    eventually(Duration::from_secs(60), "node C runs queued work", || {
        db.rows(
            "SELECT node, count(*)::text FROM executions WHERE status = 'running' GROUP BY node",
        )
        .into_iter()
        .any(|(n, count)| n == c_id && count != "0")
        .then_some(())
    });
    c.kill9();
    let killed = Instant::now();

    // Every one ends, through any node: run, or failed with the reason if C was running it.
    let mut lost = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let done = a.wait_done(KEY_A, id, Duration::from_secs(300));
        match done["status"].as_str() {
            Some("completed") => {
                assert_eq!(done["result"]["stdout"], format!("{i}\n"), "{done:#}");
            }
            Some("failed") => {
                let why = done["failure_reason"].as_str().unwrap_or_default();
                assert!(
                    why.contains("node running this execution stopped"),
                    "{i}: {done:#}"
                );
                lost.push(id.clone());
            }
            other => panic!("{i} ended {other:?}: {done:#}"),
        }
    }
    assert!(!lost.is_empty(), "C was running work when it was killed");
    assert!(lost.len() <= 4, "C ran at most its 4 slots: {lost:?}");
    let ran = db.rows(
        "SELECT node, status FROM executions WHERE status = 'failed' \
         AND failure_reason LIKE '%node running%'",
    );
    assert!(ran.iter().all(|(n, _)| *n == c_id), "{ran:?}");
    assert!(
        killed.elapsed() < Duration::from_secs(120),
        "the lost work was failed within its lease, not left running"
    );
    let left = db.rows(
        "SELECT status, count(*)::text FROM executions \
         WHERE status IN ('pending', 'running') GROUP BY status",
    );
    assert!(left.is_empty(), "nothing stuck: {left:?}");

    // The operators' view: three nodes, C silent.
    let r = a.get("/cluster", Some(ADMIN)).expect(200).json();
    assert_eq!(r["database"], "postgresql", "{r:#}");
    let listed = r["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{r:#}");
    for n in listed {
        let alive = n["id"] != c_id.as_str();
        assert_eq!(n["alive"], alive, "{r:#}");
        assert_eq!(n["this"], n["id"] == node_id(&a).as_str(), "{r:#}");
        assert!(
            n["address"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
    }
    a.get("/cluster", Some(KEY_A))
        .error(403, Some("ADMIN_KEY_REQUIRED"));
    a.get("/cluster", None).error(401, None);
    assert_eq!(
        a.get("/health", None).expect(200).json(),
        json!({"status": "ok"})
    );
}

/// A running execution is cancelled through a node that does not run it (the cancel goes to
/// the node whose process it is).
#[test]
fn an_execution_is_cancelled_through_any_node() {
    let db = TestDatabase::create();
    let a = node(&db);
    let b = node(&db);
    let id = a.submit(KEY_A, &json!({"language": "bash", "code": "sleep 60"}));
    let runner = eventually(Duration::from_secs(30), "the execution runs", || {
        db.rows("SELECT id, node FROM executions WHERE status = 'running'")
            .into_iter()
            .find(|(e, _)| *e == id)
            .map(|(_, n)| n)
    });
    // Through the node that does not run it.
    let other = if runner == node_id(&a) { &b } else { &a };
    let t = Instant::now();
    let v = other
        .post(
            &format!("/api/v1/executions/{id}/cancel"),
            Some(KEY_A),
            &json!({}),
        )
        .expect(200)
        .json();
    assert_ne!(v["status"], "running", "{v:#}");
    let done = other.wait_done(KEY_A, &id, Duration::from_secs(30));
    assert_eq!(done["status"], "failed", "{done:#}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "cancelled, not run to its end"
    );
}

#[test]
fn a_sandbox_is_used_through_any_node_and_ends_with_its_own() {
    let db = TestDatabase::create();
    let mut a = node(&db);
    let b = node(&db);
    let sb = a
        .post("/v1/sandboxes", Some(KEY_A), &json!({}))
        .expect(201)
        .json();
    let id = sb["id"].as_str().unwrap().to_string();
    let token = sb["access_token"].as_str().unwrap().to_string();

    // Through B, which forwards to A: state, code, a command's stream, OpenSandbox's routes.
    let run = b
        .post(
            &format!("/v1/sandboxes/{id}/code/runs?wait=true"),
            Some(KEY_A),
            &json!({"code": "x = 6 * 7\nx"}),
        )
        .expect(200)
        .json();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let text = crate::server::client()
        .post(format!("{}/v1/sandboxes/{id}/command", b.url))
        .header("X-EXECD-ACCESS-TOKEN", &token)
        .body(json!({"command": "echo forwarded"}).to_string())
        .send()
        .expect("a command through B")
        .text()
        .unwrap();
    assert!(text.contains("forwarded"), "{text}");
    let r = b
        .req("GET", &format!("/opensandbox/v1/sandboxes/{id}"), None)
        .header("OPEN-SANDBOX-API-KEY", KEY_A)
        .send()
        .expect("OpenSandbox's get through B");
    assert_eq!(r.status().as_u16(), 200);
    // A file the code wrote is an artifact on A; its signed link works through B.
    let run = b
        .post(
            &format!("/v1/sandboxes/{id}/code/runs?wait=true"),
            Some(KEY_A),
            &json!({"code": "open('out.txt', 'w').write('made on A')"}),
        )
        .expect(200)
        .json();
    let link = run["execution"]["artifacts"][0]["download_url"]
        .as_str()
        .unwrap_or_else(|| panic!("an artifact: {run:#}"))
        .to_string();
    assert!(
        link.starts_with(&b.url),
        "the link names the node asked: {link}"
    );
    let got = crate::server::client().get(&link).send().unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.text().unwrap(), "made on A");
    // Another tenant learns nothing through B either.
    b.get(&format!("/v1/sandboxes/{id}"), Some(crate::server::KEY_B))
        .error(404, Some("SANDBOX_NOT_FOUND"));

    // A dies: within a lease or two, B says the sandbox ended, and why.
    a.kill9();
    let gone = eventually(Duration::from_secs(30), "B ends A's sandbox", || {
        let r = b.get(&format!("/v1/sandboxes/{id}"), Some(KEY_A));
        (r.status == 404).then_some(r)
    });
    let v = gone.error(404, Some("SANDBOX_TERMINATED"));
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("the node this sandbox lived on stopped"),
        "{v}"
    );
}

/// A node that loses its database says so in `/health` (503 `degraded`, for the load
/// balancer) and comes back when the database does not: here the database is dropped.
#[test]
fn a_node_without_its_database_says_so_in_health() {
    let db = TestDatabase::create();
    let srv = node(&db);
    assert_eq!(
        srv.get("/health", None).expect(200).json(),
        json!({"status": "ok"})
    );
    drop(db);
    let r = eventually(Duration::from_secs(30), "/health says degraded", || {
        let r = srv.get("/health", None);
        (r.status == 503).then_some(r)
    });
    let v = r.json();
    assert_eq!(v["status"], "degraded", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("claims no queued work")),
        "{v}"
    );
}
