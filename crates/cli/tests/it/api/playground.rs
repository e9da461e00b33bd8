//! The playground's page and assets (served without credentials, with a strict
//! Content-Security-Policy) and the operator's overview behind it
//! (`GET /api/v1/operator/overview`, operator keys only). The page itself is driven in a
//! browser by `crate::browser`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{KEY_A, KEY_B, Opts, Server, eventually};

const OPERATOR: &str = "it-operator-key-0123456789abcdef";

#[test]
fn the_page_and_its_assets_are_served_with_a_strict_csp() {
    let srv = Server::start();
    for path in ["/", "/playground"] {
        let r = srv.get(path, None).expect(200);
        assert!(
            r.header("content-type")
                .unwrap_or_default()
                .starts_with("text/html"),
            "{path}"
        );
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
        assert!(r.text.contains("/playground/app.js"), "{}", r.text);
    }
    for (path, ctype) in [
        ("/playground/app.js", "text/javascript"),
        ("/playground/app.css", "text/css"),
        (
            "/playground/vendor/codemirror-5.65.18.js",
            "text/javascript",
        ),
        ("/playground/vendor/CODEMIRROR-LICENSE", "text/plain"),
    ] {
        let r = srv.get(path, None).expect(200);
        assert!(
            r.header("content-type")
                .unwrap_or_default()
                .starts_with(ctype),
            "{path}"
        );
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
    let lic = srv
        .get("/playground/vendor/CODEMIRROR-LICENSE", None)
        .expect(200);
    assert!(lic.text.starts_with("MIT License"), "{}", lic.text);
    srv.get("/playground/nope.js", None)
        .error(404, Some("NOT_FOUND"));
    srv.get("/playground/../Cargo.toml", None)
        .error(404, Some("NOT_FOUND"));
}

fn overview(srv: &Server, key: Option<&str>, query: &str) -> crate::server::Resp {
    srv.get(&format!("/api/v1/operator/overview{query}"), key)
}

#[test]
fn the_operator_overview_lists_every_tenants_work_for_operators_only() {
    let srv = Server::with(Opts::new().env("RUNCELL_ADMIN_KEYS", OPERATOR));
    let a = srv.execute(&json!({"language": "python", "code": "print(1)"}));
    let a_id = a["execution_id"].as_str().unwrap().to_string();
    let b: Value = srv
        .post(
            "/api/v1/execute",
            Some(KEY_B),
            &json!({"language": "bash", "code": "exit 3"}),
        )
        .expect(200)
        .json();
    let b_id = b["execution_id"].as_str().unwrap().to_string();
    let sb: Value = srv
        .post("/v1/sandboxes", Some(KEY_B), &json!({}))
        .expect(201)
        .json();
    let sb_id = sb["id"].as_str().unwrap().to_string();

    overview(&srv, None, "").error(401, Some("UNAUTHORIZED"));
    overview(&srv, Some(KEY_A), "").error(403, Some("ADMIN_KEY_REQUIRED"));
    overview(&srv, Some(OPERATOR), "?status=done").error(400, Some("INVALID_QUERY"));
    overview(&srv, Some(OPERATOR), "?limit=0").error(400, Some("INVALID_QUERY"));
    overview(&srv, Some(OPERATOR), "?limit=x").error(400, Some("INVALID_QUERY"));
    overview(&srv, Some(OPERATOR), "?tenant=nobody").error(400, Some("INVALID_QUERY"));

    let o = overview(&srv, Some(OPERATOR), "").expect(200).json();
    assert_eq!(o["load"]["queued"], 0, "{o:#}");
    assert_eq!(o["load"]["running"], 0, "{o:#}");
    assert!(o["load"]["concurrency"].as_u64().unwrap() >= 1, "{o:#}");
    assert_eq!(o["cluster"]["nodes"][0]["this"], true, "{o:#}");
    let tenants = o["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 2, "{o:#}");
    let ids: Vec<&str> = o["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["execution_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b_id.as_str(), a_id.as_str()], "newest first: {o:#}");
    let eb = &o["executions"][0];
    assert_eq!(eb["language"], "bash", "{o:#}");
    assert_eq!(eb["result"]["exit_code"], 3, "{o:#}");
    let tenant_b = eb["tenant"].as_str().unwrap().to_string();
    assert!(tenants.iter().any(|t| t == tenant_b.as_str()), "{o:#}");
    let sbs = o["sandboxes"].as_array().unwrap();
    assert_eq!(sbs.len(), 1, "{o:#}");
    assert_eq!(sbs[0]["id"], sb_id.as_str(), "{o:#}");
    assert_eq!(sbs[0]["tenant"], tenant_b.as_str(), "{o:#}");
    assert!(
        sbs[0]["metrics"]["mem_total_mib"].as_f64().unwrap() > 0.0,
        "{o:#}"
    );
    assert!(sbs[0].get("access_token").is_none(), "{o:#}");

    // The route is in the OpenAPI document.
    let doc = srv.get("/openapi.json", None).expect(200).json();
    assert!(
        doc["paths"]["/api/v1/operator/overview"]["get"].is_object(),
        "{:?}",
        doc["paths"]
            .as_object()
            .map(|p| p.keys().collect::<Vec<_>>())
    );

    // Filters.
    let only = |q: &str| -> Vec<String> {
        overview(&srv, Some(OPERATOR), q).expect(200).json()["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["execution_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(only("?language=python"), [a_id.as_str()]);
    assert_eq!(only(&format!("?tenant={tenant_b}")), [b_id.as_str()]);
    assert_eq!(only("?status=completed&limit=1"), [b_id.as_str()]);
    assert!(only("?status=failed").is_empty());

    // A running execution shows in the load and under `status=running`.
    let slow = srv
        .post(
            "/api/v1/execute/async",
            Some(KEY_A),
            &json!({"language": "bash", "code": "sleep 2"}),
        )
        .expect(202)
        .json();
    let slow_id = slow["execution_id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(30),
        "the execution to be listed as running",
        || {
            let o = overview(&srv, Some(OPERATOR), "?status=running")
                .expect(200)
                .json();
            (o["load"]["running"] == 1 && o["executions"][0]["execution_id"] == slow_id.as_str())
                .then_some(())
        },
    );
}
