//! Authentication, tenant isolation and rate limits.

use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{KEY_A, KEY_B, Opts, Server};

const SOME_ID: &str = "00000000-0000-4000-8000-000000000000";

/// Every route that needs a key, with a body that would be valid.
fn protected_routes() -> Vec<(&'static str, String, Option<Value>)> {
    let exec = json!({"language": "python", "code": "print(1)"});
    vec![
        ("POST", "/api/v1/execute".into(), Some(exec.clone())),
        (
            "POST",
            "/api/v1/execute?stream=true".into(),
            Some(exec.clone()),
        ),
        ("POST", "/api/v1/execute/async".into(), Some(exec.clone())),
        (
            "POST",
            "/api/v1/execute/batch".into(),
            Some(json!([exec.clone()])),
        ),
        ("GET", "/api/v1/executions".into(), None),
        ("GET", format!("/api/v1/executions/{SOME_ID}"), None),
        ("POST", format!("/api/v1/executions/{SOME_ID}/cancel"), None),
        (
            "GET",
            format!("/api/v1/executions/{SOME_ID}/deliveries"),
            None,
        ),
        ("GET", "/api/v1/webhook-secret".into(), None),
        ("GET", "/api/v1/languages".into(), None),
        ("POST", "/api/submit".into(), Some(exec.clone())),
        ("POST", "/api/submit?wait=true".into(), Some(exec)),
        ("GET", format!("/api/result/{SOME_ID}"), None),
        ("GET", "/metrics".into(), None),
    ]
}

#[test]
fn every_route_but_health_docs_and_openapi_needs_a_key() {
    let srv = Server::start();
    for (method, path, body) in protected_routes() {
        let send = |rb: reqwest::blocking::RequestBuilder| {
            let rb = match &body {
                Some(b) => rb
                    .header("Content-Type", "application/json")
                    .body(b.to_string()),
                None => rb,
            };
            let r = rb.send().expect("request");
            let status = r.status().as_u16();
            let text = r.text().unwrap();
            (status, text)
        };
        let cases = [
            ("no key", srv.req(method, &path, None)),
            (
                "wrong X-API-Key",
                srv.req(method, &path, Some("wrong-key-0123456789abcdef")),
            ),
            ("empty X-API-Key", srv.req(method, &path, Some(""))),
            (
                "wrong bearer",
                srv.req(method, &path, None)
                    .header("Authorization", "Bearer wrong-key-0123456789abcdef"),
            ),
            (
                "a valid key in the wrong scheme",
                srv.req(method, &path, None)
                    .header("Authorization", format!("Basic {KEY_A}")),
            ),
        ];
        for (what, rb) in cases {
            let (status, text) = send(rb);
            assert_eq!(status, 401, "{method} {path} with {what}: {text}");
            let v: Value = serde_json::from_str(&text).expect("JSON error body");
            crate::server::assert_error_body(&v);
        }
    }
    // Nothing ran.
    assert!(srv.list_all(KEY_A, "").is_empty());

    // The open routes.
    let r = srv.get("/health", None).expect(200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = srv.get("/openapi.json", None).expect(200);
    assert!(r.json()["openapi"].is_string());
    let r = srv.get("/docs", None).expect(200);
    assert!(r.text.to_ascii_lowercase().contains("<html"), "{}", r.text);
}

#[test]
fn both_key_headers_are_accepted() {
    let srv = Server::start();
    let body = json!({"language": "python", "code": "print('hi')"});
    for key in [KEY_A, KEY_B] {
        let r = srv.post("/api/v1/execute", Some(key), &body).expect(200);
        assert_eq!(r.json()["stdout"], "hi\n");
        let r = srv
            .req("POST", "/api/v1/execute", None)
            .header("Authorization", format!("Bearer {key}"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Value>().unwrap()["stdout"], "hi\n");
        let r = srv
            .req("GET", "/api/v1/languages", None)
            .header("Authorization", format!("bearer {key}"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "the scheme is case-insensitive");
    }
    // Each key is its own tenant: each sees its own two runs.
    assert_eq!(srv.list_all(KEY_A, "").len(), 2);
    assert_eq!(srv.list_all(KEY_B, "").len(), 2);
}

#[test]
fn another_tenant_gets_the_same_404_as_a_missing_id() {
    let srv = Server::start();
    let id = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "print('mine')", "session_id": "s"}),
    );
    let done = srv.wait_done(KEY_A, &id, Duration::from_secs(60));
    assert_eq!(done["result"]["stdout"], "mine\n");
    // A pending one too (cancel must not leak or act across tenants).
    let slow = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "import time\ntime.sleep(2)\nprint('ok')"}),
    );

    let not_found = json!({"detail": "Execution not found", "code": "NOT_FOUND"});
    for target in [id.as_str(), slow.as_str(), SOME_ID] {
        for (method, path) in [
            ("GET", format!("/api/v1/executions/{target}")),
            ("GET", format!("/api/result/{target}")),
            ("POST", format!("/api/v1/executions/{target}/cancel")),
            ("GET", format!("/api/v1/executions/{target}/deliveries")),
        ] {
            let r = srv.req(method, &path, Some(KEY_B)).send().unwrap();
            assert_eq!(r.status().as_u16(), 404, "{method} {path}");
            assert_eq!(r.json::<Value>().unwrap(), not_found, "{method} {path}");
        }
    }
    // B's attempt to cancel did nothing.
    let v = srv.wait_done(KEY_A, &slow, Duration::from_secs(60));
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["result"]["stdout"], "ok\n");

    // Lists show only the caller's executions, with or without filters.
    assert!(srv.list_all(KEY_B, "").is_empty());
    assert!(srv.list_all(KEY_B, "&session_id=s").is_empty());
    assert!(srv.list_all(KEY_B, "&status=completed").is_empty());
    let b_id = srv.submit(KEY_B, &json!({"language": "python", "code": "print(2)"}));
    let b_list = srv.list_all(KEY_B, "");
    assert_eq!(b_list.len(), 1);
    assert_eq!(b_list[0]["execution_id"], b_id.as_str());
    let a_ids: Vec<Value> = srv
        .list_all(KEY_A, "")
        .iter()
        .map(|e| e["execution_id"].clone())
        .collect();
    assert_eq!(a_ids, vec![json!(slow), json!(id)]);
}

#[test]
fn requests_beyond_the_rate_limit_get_429_with_retry_after() {
    let srv = Server::with(Opts::new().env("RUNCELL_RATE_LIMIT", "5"));
    for _ in 0..5 {
        srv.get("/api/v1/languages", Some(KEY_A)).expect(200);
    }
    for path in ["/api/v1/languages", "/api/v1/executions"] {
        let r = srv.get(path, Some(KEY_A));
        r.error(429, Some("RATE_LIMITED"));
        let retry: u64 = r
            .header("retry-after")
            .expect("a Retry-After header")
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    // Limits are per key; routes without a key are not limited.
    srv.get("/api/v1/languages", Some(KEY_B)).expect(200);
    srv.get("/health", None).expect(200);
}

#[test]
fn a_batch_of_n_counts_as_n_requests() {
    let srv = Server::with(Opts::new().env("RUNCELL_RATE_LIMIT", "6"));
    let item = json!({"language": "bash", "code": "echo ok"});

    // Six items take all six requests of the minute: the next request is refused (had the
    // batch counted as one, five would be left).
    let r = srv
        .post(
            "/api/v1/execute/batch",
            Some(KEY_A),
            &Value::Array(vec![item.clone(); 6]),
        )
        .expect(200);
    assert_eq!(r.json().as_array().unwrap().len(), 6);
    let r = srv.get("/api/v1/languages", Some(KEY_A));
    r.error(429, Some("RATE_LIMITED"));
    assert!(r.header("retry-after").is_some());

    // Seven items are more than a minute's worth: refused, and nothing runs.
    let r = srv.post(
        "/api/v1/execute/batch",
        Some(KEY_B),
        &Value::Array(vec![item; 7]),
    );
    r.error(429, Some("RATE_LIMITED"));
    assert!(r.header("retry-after").is_some());
    assert!(srv.list_all(KEY_B, "").is_empty());
}
