//! Every example of the three seeds (batch-execution.txt, async-execution.txt,
//! sync-async-webhooks.txt), replayed as written: same paths, bodies, status codes and fields.
//! Where API.md differs from a seed, API.md wins (a JavaScript SyntaxError exits 1, not -1).

use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{KEY_A, KEY_B, Opts, Server, is_timestamp, is_uuid_v4};

/// Posts a batch as the seed's curl does (`X-API-Key`, `Content-Type: application/json`).
fn batch(srv: &Server, key: &str, body: &Value) -> Vec<Value> {
    let r = srv
        .post("/api/v1/execute/batch", Some(key), body)
        .expect(200);
    let v = r.json();
    let items = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(
        items.len(),
        body.as_array().unwrap().len(),
        "one result per request: {v:#}"
    );
    items.clone()
}

/// The fields every item of the seed's response shows.
#[track_caller]
fn check_item(r: &Value, language: &str, stdout: &str, exit_code: i64, session: Value) {
    assert!(
        r["execution_id"].as_str().is_some_and(is_uuid_v4),
        "execution_id: {r:#}"
    );
    assert_eq!(r["language"], language, "{r:#}");
    assert_eq!(r["stdout"], stdout, "{r:#}");
    assert_eq!(r["exit_code"], exit_code, "{r:#}");
    assert!(r["execution_time"].as_f64().is_some(), "{r:#}");
    assert_eq!(r["session_id"], session, "{r:#}");
    assert_eq!(r["status"], "completed", "{r:#}");
}

fn distinct_ids(items: &[Value]) {
    let mut ids: Vec<&str> = items
        .iter()
        .map(|r| r["execution_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), items.len(), "execution ids must differ");
}

#[test]
fn batch_seed_examples_in_several_languages() {
    let srv = Server::start();

    // "Request Body": Python, Node.js and Go, results in request order.
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": "print('Hello from Python')", "language": "python"},
            {"code": "console.log('Hello from Node.js')", "language": "javascript"},
            {"code": "package main\nimport \"fmt\"\nfunc main() { fmt.Println(\"Hello from Go\") }",
             "language": "go"}
        ]),
    );
    check_item(&items[0], "python", "Hello from Python\n", 0, Value::Null);
    check_item(
        &items[1],
        "javascript",
        "Hello from Node.js\n",
        0,
        Value::Null,
    );
    check_item(&items[2], "go", "Hello from Go\n", 0, Value::Null);
    for r in &items {
        assert_eq!(r["stderr"], "", "{r:#}");
    }
    distinct_ids(&items);

    // "Multi-Language Batch".
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": "print(2 + 2)", "language": "python"},
            {"code": "console.log(3 + 3)", "language": "javascript"},
            {"code": "package main\nimport \"fmt\"\nfunc main() { fmt.Println(4 + 4) }",
             "language": "go"}
        ]),
    );
    check_item(&items[0], "python", "4\n", 0, Value::Null);
    check_item(&items[1], "javascript", "6\n", 0, Value::Null);
    check_item(&items[2], "go", "8\n", 0, Value::Null);
    distinct_ids(&items);

    // "Python Client Example" / "JavaScript Client Example": Python, JavaScript, Ruby.
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": "print('Python')", "language": "python"},
            {"code": "console.log('JavaScript')", "language": "javascript"},
            {"code": "puts 'Ruby'", "language": "ruby"}
        ]),
    );
    check_item(&items[0], "python", "Python\n", 0, Value::Null);
    check_item(&items[1], "javascript", "JavaScript\n", 0, Value::Null);
    check_item(&items[2], "ruby", "Ruby\n", 0, Value::Null);

    // Batch items are executions like any other: each one can be fetched by its id.
    let id = items[2]["execution_id"].as_str().unwrap();
    let got = srv.execution(KEY_A, id);
    assert_eq!(got["status"], "completed");
    assert_eq!(got["result"]["stdout"], "Ruby\n");
}

#[test]
fn batch_seed_error_handling_gives_each_failure_its_own_result() {
    let srv = Server::start();

    // "Error Handling": a JavaScript syntax error is that item's result; the batch goes on.
    // API.md: exit_code is the program's own, and node exits 1 on a SyntaxError.
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": "print('Success')", "language": "python"},
            {"code": "let x = ;", "language": "javascript"},
            {"code": "print('After')", "language": "python"}
        ]),
    );
    check_item(&items[0], "python", "Success\n", 0, Value::Null);
    let js = &items[1];
    assert_eq!(js["language"], "javascript");
    assert_eq!(js["stdout"], "");
    assert!(
        js["stderr"]
            .as_str()
            .unwrap()
            .contains("SyntaxError: Unexpected token"),
        "{js:#}"
    );
    assert_eq!(js["exit_code"], 1, "node's own exit code: {js:#}");
    assert_eq!(js["session_id"], Value::Null);
    check_item(&items[2], "python", "After\n", 0, Value::Null);

    // "Individual Execution Failure": an item that produces no exit code (killed by its
    // time limit) has exit_code -1, and the items after it still run.
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": "print('Success')", "language": "python"},
            {"code": "while True: pass", "language": "python", "timeout": 1},
            {"code": "print('Success')", "language": "python"}
        ]),
    );
    check_item(&items[0], "python", "Success\n", 0, Value::Null);
    let killed = &items[1];
    assert_eq!(killed["exit_code"], -1, "{killed:#}");
    assert_eq!(killed["status"], "failed", "{killed:#}");
    assert!(
        matches!(
            killed["limit_exceeded"].as_str(),
            Some("wall_time" | "cpu_time")
        ),
        "{killed:#}"
    );
    check_item(&items[2], "python", "Success\n", 0, Value::Null);
}

#[test]
fn batch_seed_test_cases_share_a_session_workspace() {
    let srv = Server::start();

    // "Test Cases Batch", as written.
    let add = "def add(a, b):\n    return a + b\n";
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": format!("{add}print(add(2, 3))"), "language": "python",
             "session_id": "test-session-1"},
            {"code": format!("{add}print(add(-1, 1))"), "language": "python",
             "session_id": "test-session-1"},
            {"code": format!("{add}print(add(0, 0))"), "language": "python",
             "session_id": "test-session-1"}
        ]),
    );
    let sid = json!("test-session-1");
    check_item(&items[0], "python", "5\n", 0, sid.clone());
    check_item(&items[1], "python", "0\n", 0, sid.clone());
    check_item(&items[2], "python", "0\n", 0, sid.clone());

    // Runs of one session share a workspace: a file written by one run is there for the next
    // run of the same session (in the batch and after it), and nowhere else.
    let exists = "import os\nprint(os.path.exists('state.txt'))";
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": "open('state.txt', 'w').write('from run 1')\nprint('wrote')",
             "language": "python", "session_id": "test-session-1"},
            {"code": "print(open('state.txt').read())", "language": "python",
             "session_id": "test-session-1"},
            {"code": exists, "language": "python", "session_id": "another-session"},
            {"code": exists, "language": "python"}
        ]),
    );
    check_item(&items[0], "python", "wrote\n", 0, sid.clone());
    check_item(&items[1], "python", "from run 1\n", 0, sid.clone());
    check_item(&items[2], "python", "False\n", 0, json!("another-session"));
    check_item(&items[3], "python", "False\n", 0, Value::Null);

    let later = srv.execute(&json!({"code": "print(open('state.txt').read())",
        "language": "python", "session_id": "test-session-1"}));
    assert_eq!(later["stdout"], "from run 1\n", "{later:#}");

    // The same session id under another key is another tenant's session.
    let other = srv
        .post(
            "/api/v1/execute",
            Some(KEY_B),
            &json!({"code": exists, "language": "python", "session_id": "test-session-1"}),
        )
        .expect(200)
        .json();
    assert_eq!(other["stdout"], "False\n", "{other:#}");
}

#[test]
fn batch_seed_different_configurations() {
    let srv = Server::start();
    // "With Different Configurations": per-item environment and timeout.
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": "import os\nprint(os.environ[\"ENV\"])", "language": "python",
             "environment": {"ENV": "development"}, "timeout": 10},
            {"code": "import os\nprint(os.environ[\"ENV\"])", "language": "python",
             "environment": {"ENV": "production"}, "timeout": 5}
        ]),
    );
    check_item(&items[0], "python", "development\n", 0, Value::Null);
    check_item(&items[1], "python", "production\n", 0, Value::Null);

    // The per-item timeout is that item's own limit.
    let items = batch(
        &srv,
        KEY_A,
        &json!([
            {"code": "import time\ntime.sleep(1.5)\nprint('done')", "language": "python",
             "timeout": 10},
            {"code": "import time\ntime.sleep(1.5)\nprint('done')", "language": "python",
             "timeout": 0.5}
        ]),
    );
    check_item(&items[0], "python", "done\n", 0, Value::Null);
    assert_eq!(items[1]["limit_exceeded"], "wall_time", "{:#}", items[1]);
    assert_eq!(items[1]["exit_code"], -1);
}

#[test]
fn batch_seed_limitations_refuse_the_whole_batch() {
    let srv = Server::start();
    let item = json!({"code": "print(1)", "language": "python"});

    // "Batch Size Exceeded".
    let eleven = Value::Array(vec![item.clone(); 11]);
    let r = srv.post("/api/v1/execute/batch", Some(KEY_A), &eleven);
    let v = r.error(400, None);
    assert_eq!(v["detail"], "Maximum 10 executions allowed in a batch");

    // Ten is allowed.
    let ten = Value::Array(vec![item.clone(); 10]);
    assert_eq!(batch(&srv, KEY_A, &ten).len(), 10);

    // "Invalid Language": the entire batch fails, wherever the bad item is.
    let bad = json!([item.clone(), {"code": "print(1)", "language": "invalid"}, item.clone()]);
    let r = srv.post("/api/v1/execute/batch", Some(KEY_B), &bad);
    let v = r.error(400, Some("UNSUPPORTED_LANGUAGE"));
    assert_eq!(v["detail"], "Unsupported language: invalid");
    assert!(
        srv.list_all(KEY_B, "").is_empty(),
        "nothing of a refused batch runs"
    );
    // Only the ten of the accepted batch ran for tenant A.
    assert_eq!(srv.list_all(KEY_A, "").len(), 10);
}

#[test]
fn async_seed_lifecycle_pending_running_completed_failed() {
    // One worker: the second submission waits behind the first.
    let srv = Server::with(Opts::new().env("RUNCELL_CONCURRENCY", "1"));

    // "Submit Async Execution": 202 with the response fields of the seed.
    let r = srv
        .post(
            "/api/v1/execute/async",
            Some(KEY_A),
            &json!({"language": "python",
                    "code": "import time\ntime.sleep(3)\nprint('slow')"}),
        )
        .expect(202);
    let v = r.json();
    let slow = v["execution_id"].as_str().unwrap().to_string();
    assert!(is_uuid_v4(&slow), "{v}");
    assert_eq!(v["status"], "pending", "{v}");
    assert!(is_timestamp(&v["created_at"]), "{v}");
    assert_eq!(v["started_at"], Value::Null, "{v}");
    assert_eq!(v["completed_at"], Value::Null, "{v}");
    assert_eq!(v["result"], Value::Null, "{v}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );

    let quick = srv.submit(KEY_A, &json!({"language": "python", "code": "print(42)"}));

    // "Running Status".
    let running = srv.wait_status(KEY_A, &slow, "running", Duration::from_secs(30));
    assert!(is_timestamp(&running["started_at"]), "{running}");
    assert_eq!(running["completed_at"], Value::Null, "{running}");
    assert_eq!(running["result"], Value::Null, "{running}");
    // "Pending Status": queued behind the running one.
    let pending = srv.execution(KEY_A, &quick);
    assert_eq!(pending["status"], "pending", "{pending}");
    assert_eq!(pending["started_at"], Value::Null, "{pending}");
    assert_eq!(pending["result"], Value::Null, "{pending}");

    // "Completed Status".
    let done = srv.wait_done(KEY_A, &quick, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["execution_id"], quick.as_str());
    for k in ["created_at", "started_at", "completed_at", "expires_at"] {
        assert!(is_timestamp(&done[k]), "{k}: {done:#}");
    }
    assert_eq!(done["result"]["stdout"], "42\n", "{done:#}");
    assert_eq!(done["result"]["exit_code"], 0, "{done:#}");
    assert_eq!(done["result"]["execution_id"], quick.as_str());
    let done = srv.wait_done(KEY_A, &slow, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["result"]["stdout"], "slow\n");

    // "completed: Execution finished successfully (exit code may still indicate error)".
    let id = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "import sys\nsys.exit(3)"}),
    );
    let v = srv.wait_done(KEY_A, &id, Duration::from_secs(60));
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["result"]["exit_code"], 3, "{v:#}");

    // "Failed Status": failed due to a timeout, with the result still filled in.
    let id = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "print('start', flush=True)\nwhile True: pass",
                "timeout": 1}),
    );
    let v = srv.wait_done(KEY_A, &id, Duration::from_secs(60));
    assert_eq!(v["status"], "failed", "{v:#}");
    assert_eq!(v["result"]["exit_code"], -1, "{v:#}");
    assert_eq!(v["result"]["stdout"], "start\n", "{v:#}");
    assert!(
        matches!(
            v["result"]["limit_exceeded"].as_str(),
            Some("wall_time" | "cpu_time")
        ),
        "{v:#}"
    );

    // "404 Not Found".
    for missing in ["00000000-0000-4000-8000-000000000000", "not-an-id"] {
        let r = srv.get(&format!("/api/v1/executions/{missing}"), Some(KEY_A));
        assert_eq!(r.status, 404);
        assert_eq!(
            r.json(),
            json!({"detail": "Execution not found", "code": "NOT_FOUND"})
        );
    }
}

#[test]
fn submit_and_result_seed_block_poll_and_match_v1() {
    let srv = Server::start();
    let body = json!({"language": "python", "code": "print(42)"});

    // Block & Wait: POST /api/submit?wait=true.
    let sync = srv
        .post("/api/submit?wait=true", Some(KEY_A), &body)
        .expect(200)
        .json();
    assert_eq!(sync["stdout"], "42\n", "{sync:#}");
    assert_eq!(sync["exit_code"], 0);
    assert_eq!(sync["status"], "completed");
    let sync_id = sync["execution_id"].as_str().unwrap();
    assert!(is_uuid_v4(sync_id));

    // Submit & Poll: POST /api/submit, then GET /api/result/<id>.
    let v = srv
        .post("/api/submit", Some(KEY_A), &body)
        .expect(202)
        .json();
    assert_eq!(v["status"], "pending", "{v}");
    let id = v["execution_id"].as_str().unwrap().to_string();
    let done = crate::server::eventually(Duration::from_secs(60), "the result", || {
        let v = srv
            .get(&format!("/api/result/{id}"), Some(KEY_A))
            .expect(200)
            .json();
        (v["status"] == "completed").then_some(v)
    });
    assert_eq!(done["result"]["stdout"], "42\n", "{done:#}");
    // The same object as GET /api/v1/executions/{id}.
    assert_eq!(done, srv.execution(KEY_A, &id));

    // The synchronous run is stored too.
    let v = srv
        .get(&format!("/api/result/{sync_id}"), Some(KEY_A))
        .expect(200)
        .json();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], sync, "the stored result is the one returned");

    let r = srv.get(
        "/api/result/00000000-0000-4000-8000-000000000000",
        Some(KEY_A),
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"detail": "Execution not found", "code": "NOT_FOUND"})
    );
}
