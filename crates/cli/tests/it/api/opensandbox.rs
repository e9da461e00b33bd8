//! OpenSandbox's lifecycle API at `/opensandbox/v1`, end to end, against
//! `docs/opensandbox-compat.md` and the expectations of the official 1.1.x SDKs (issue 13's
//! numbered rules): the `OPEN-SANDBOX-API-KEY` header and tenants (1), creation with an image
//! and an entrypoint answering exactly 202 (2), listing with state and metadata filters and
//! numbered pages, get, delete, renewal to an absolute time (3), endpoints without a scheme
//! with the sandbox's token, and the proxy to a port served inside the sandbox (4), ping (5),
//! `{"code", "message"}` errors (6), and the SDKs' telemetry (7).

use std::time::Duration;

use serde_json::{Value, json};

use super::commands::{background, call, sb_path, sh};
use crate::server::{KEY_A, KEY_B, Resp, Server, execd_error, now_ms, timestamp_ms as ms};

const KEY_HEADER: &str = "OPEN-SANDBOX-API-KEY";
const BASE: &str = "/opensandbox/v1";

/// `method BASE+path` with `key` in OpenSandbox's header (none: no credentials).
fn os(srv: &Server, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Resp {
    let mut rb = srv
        .req(method, &format!("{BASE}{path}"), None)
        .timeout(Duration::from_secs(60));
    if let Some(k) = key {
        rb = rb.header(KEY_HEADER, k);
    }
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    Resp::of(rb.send())
}

/// What the SDK sends by default, with `extra` merged in.
fn create_body(extra: Value) -> Value {
    let mut b = json!({
        "image": {"uri": "python:3.11"},
        "entrypoint": ["tail", "-f", "/dev/null"],
        "timeout": 600,
        "resourceLimits": {"cpu": "1", "memory": "2Gi"},
        "env": {},
        "metadata": {},
        "secureAccess": false,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Creates a sandbox through the lifecycle API as `key`, asserting exactly 202; the document.
#[track_caller]
fn create(srv: &Server, key: &str, extra: Value) -> Value {
    os(
        srv,
        "POST",
        "/sandboxes",
        Some(key),
        Some(&create_body(extra)),
    )
    .expect(202)
    .json()
}

#[track_caller]
fn error(r: &Resp, status: u16, code: Option<&str>) -> Value {
    let v = execd_error(r, status, code);
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "OpenSandbox errors are exactly {{code, message}}: {v}"
    );
    v
}

#[test]
fn creation_answers_202_with_the_documents_the_sdk_parses() {
    let srv = Server::start();
    let r = os(
        &srv,
        "POST",
        "/sandboxes?unknown=1",
        Some(KEY_A),
        Some(&create_body(json!({
            "timeout": 600,
            "resourceLimits": {"cpu": "500m", "memory": "512Mi"},
            "env": {"GREETING": "hello from env"},
            "metadata": {"project": "apollo", "name": "first"},
            "someFutureField": {"x": 1},
        }))),
    );
    let location = r.header("location");
    let v = r.expect(202).json();
    let id = v["id"].as_str().expect("an id").to_string();
    assert_eq!(
        location.as_deref(),
        Some(format!("{BASE}/sandboxes/{id}").as_str())
    );
    for key in [
        "id",
        "status",
        "createdAt",
        "expiresAt",
        "entrypoint",
        "metadata",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert!(
        v.get("image").is_none(),
        "the create answer has no image: {v}"
    );
    assert_eq!(v["status"]["state"], "Running", "{v}");
    assert_eq!(v["entrypoint"], json!(["tail", "-f", "/dev/null"]));
    assert_eq!(v["metadata"], json!({"project": "apollo", "name": "first"}));
    let lifetime = ms(&v["expiresAt"]) - ms(&v["createdAt"]);
    assert!((599_000..=601_000).contains(&lifetime), "{lifetime} ms");

    // The entrypoint exists in the sandbox: it runs as a background command.
    let message = v["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("background command cmd_"), "{v}");
    let native = srv
        .get(&format!("/v1/sandboxes/{id}"), Some(KEY_A))
        .expect(200)
        .json();
    assert_eq!(native["entrypoint"]["state"], "started", "{native}");
    let cmd = native["entrypoint"]["command_id"].as_str().unwrap();
    let status = call(
        &srv,
        "GET",
        &sb_path(&id, &format!("/command/status/{cmd}")),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(status["running"], true, "{status}");
    // The command's shell execs the program: `ps` shows it once the exec is done.
    crate::server::eventually(
        Duration::from_secs(10),
        "the entrypoint process runs",
        || {
            sh(&srv, &id, "ps -eo args")
                .lines()
                .any(|l| l.trim() == "tail -f /dev/null")
                .then_some(())
        },
    );
    // Limits as Kubernetes quantities, and the environment.
    assert_eq!(native["limits"]["memory_mb"], 512, "{native}");
    assert_eq!(native["limits"]["cpus"], 0.5, "{native}");
    assert_eq!(native["image"], "python:3.11");
    assert_eq!(sh(&srv, &id, "echo \"$GREETING\""), "hello from env");

    // GET: the same keys, and the image.
    let g = os(
        &srv,
        "GET",
        &format!("/sandboxes/{id}?x=y"),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(g["image"], json!({"uri": "python:3.11"}));
    assert_eq!(g["id"], v["id"]);
    assert_eq!(g["status"]["state"], "Running");
    assert_eq!(g["createdAt"], v["createdAt"]);
    assert_eq!(g["entrypoint"], v["entrypoint"]);

    // An entrypoint that is not in the sandbox is recorded, not run, and does not fail.
    let code = create(
        &srv,
        KEY_A,
        json!({"entrypoint": ["/opt/opensandbox/code-interpreter.sh", "--x"], "timeout": null}),
    );
    let message = code["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("recorded, not run"), "{code}");
    assert_eq!(
        code["entrypoint"][0],
        "/opt/opensandbox/code-interpreter.sh"
    );
    // No timeout: the longest lifetime the server allows (24 h by default).
    let lifetime = ms(&code["expiresAt"]) - ms(&code["createdAt"]);
    assert!(
        (24 * 3600 * 1000 - 2000..=24 * 3600 * 1000 + 2000).contains(&lifetime),
        "{lifetime} ms"
    );
    let native = srv
        .get(
            &format!("/v1/sandboxes/{}", code["id"].as_str().unwrap()),
            Some(KEY_A),
        )
        .expect(200)
        .json();
    assert_eq!(native["entrypoint"]["state"], "not_found", "{native}");

    // The SDKs' telemetry after each creation is accepted and dropped.
    let r = os(
        &srv,
        "POST",
        "/metrics/events",
        Some(KEY_A),
        Some(&json!({"eventType": "sandbox.create", "createDurationMs": 12, "success": true})),
    );
    assert_eq!(r.status, 204, "{}", r.text);
    let r = os(&srv, "POST", "/metrics/events", None, Some(&json!({})));
    error(&r, 401, None);
}

#[test]
fn bad_creations_are_4xx_with_code_and_message() {
    let srv = Server::start();
    let cases = [
        (
            json!({"resourceLimits": {"cpu": "1", "memory": "64Ti"}}),
            "INVALID_LIMIT",
            "memory",
        ),
        (
            json!({"resourceLimits": {"cpu": "many", "memory": "1Gi"}}),
            "INVALID_LIMIT",
            "cpu",
        ),
        (
            json!({"resourceLimits": {"nvidia.com/gpu": "1"}}),
            "INVALID_LIMIT",
            "gpu",
        ),
        (json!({"timeout": 0}), "INVALID_REQUEST", "timeout"),
        (json!({"timeout": "ten"}), "INVALID_REQUEST", "timeout"),
        (json!({"image": {"uri": 3}}), "INVALID_REQUEST", "image"),
        (
            json!({"entrypoint": "tail -f /dev/null"}),
            "INVALID_REQUEST",
            "entrypoint",
        ),
        (
            json!({"snapshotId": "snap_1"}),
            "SNAPSHOTS_NOT_SUPPORTED",
            "snapshot",
        ),
        (
            json!({"networkPolicy": {"defaultAction": "allow"}}),
            "INVALID_NETWORK_POLICY",
            "deny",
        ),
        (
            json!({"networkPolicy": {"defaultAction": "deny", "egress": [
                {"action": "allow", "target": "10.0.0.1"}]}}),
            "INVALID_NETWORK_POLICY",
            "address",
        ),
        (
            json!({"platform": {"os": "windows", "arch": "amd64"}}),
            "PLATFORM_NOT_AVAILABLE",
            "linux",
        ),
        (json!({"env": {"1BAD": "x"}}), "INVALID_REQUEST", "env"),
    ];
    for (extra, code, word) in cases {
        let r = os(
            &srv,
            "POST",
            "/sandboxes",
            Some(KEY_A),
            Some(&create_body(extra.clone())),
        );
        let v = error(&r, 400, Some(code));
        assert!(
            v["message"].as_str().unwrap().contains(word),
            "{extra}: {v}"
        );
    }
    // Allowing a name this server's operator does not allow (none here) is a 403.
    let r = os(
        &srv,
        "POST",
        "/sandboxes",
        Some(KEY_A),
        Some(&create_body(
            json!({"networkPolicy": {"defaultAction": "deny", "egress": [
            {"action": "allow", "target": "pypi.org"}]}}),
        )),
    );
    let v = error(&r, 403, Some("NETWORK_NOT_ALLOWED"));
    assert!(v["message"].as_str().unwrap().contains("network"), "{v}");
    // Not JSON, and not an object.
    let r = Resp::of(
        srv.req("POST", &format!("{BASE}/sandboxes"), None)
            .header(KEY_HEADER, KEY_A)
            .body("{nope")
            .send(),
    );
    error(&r, 400, None);
    let r = os(&srv, "POST", "/sandboxes", Some(KEY_A), Some(&json!([1])));
    error(&r, 400, Some("INVALID_REQUEST"));
    // A policy that only denies keeps the sandbox offline: accepted.
    create(
        &srv,
        KEY_A,
        json!({"networkPolicy": {"defaultAction": "deny"}}),
    );
    // Nothing was left half-made.
    let list = os(&srv, "GET", "/sandboxes", Some(KEY_A), None)
        .expect(200)
        .json();
    assert_eq!(list["pagination"]["totalItems"], 1, "{list}");
}

#[test]
fn keys_tenants_and_errors_are_opensandbox_shaped() {
    let srv = Server::start();
    let sb = create(&srv, KEY_A, json!({}));
    let id = sb["id"].as_str().unwrap();
    // No key, a wrong key: 401.
    error(&os(&srv, "GET", "/sandboxes", None, None), 401, None);
    error(
        &os(&srv, "GET", "/sandboxes", Some("not-a-key"), None),
        401,
        None,
    );
    error(
        &os(
            &srv,
            "POST",
            "/sandboxes",
            Some("not-a-key"),
            Some(&create_body(json!({}))),
        ),
        401,
        None,
    );
    // Another key's sandbox does not exist for it, whatever the route.
    for (method, path) in [
        ("GET", format!("/sandboxes/{id}")),
        ("DELETE", format!("/sandboxes/{id}")),
        ("GET", format!("/sandboxes/{id}/endpoints/44772")),
        ("POST", format!("/sandboxes/{id}/renew-expiration")),
    ] {
        let body = json!({"expiresAt": "2099-01-01T00:00:00Z"});
        let r = os(&srv, method, &path, Some(KEY_B), Some(&body));
        error(&r, 404, None);
    }
    let b_list = os(&srv, "GET", "/sandboxes", Some(KEY_B), None)
        .expect(200)
        .json();
    assert_eq!(b_list["items"], json!([]), "{b_list}");
    // Unknown sandboxes, routes and methods.
    error(
        &os(
            &srv,
            "GET",
            "/sandboxes/sb_aaaaaaaaaaaaaaaaaaaaaaaaaa",
            Some(KEY_A),
            None,
        ),
        404,
        None,
    );
    error(
        &os(&srv, "GET", "/nothing/here", Some(KEY_A), None),
        404,
        None,
    );
    error(&os(&srv, "PUT", "/sandboxes", Some(KEY_A), None), 405, None);
    // The native headers open the same routes.
    let r = Resp::of(
        srv.req("GET", &format!("{BASE}/sandboxes/{id}"), Some(KEY_A))
            .send(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // Sandbox still A's, untouched.
    os(&srv, "GET", &format!("/sandboxes/{id}"), Some(KEY_A), None).expect(200);
}

#[test]
fn listing_filters_by_state_and_metadata_in_numbered_pages_and_renewal_and_deletion() {
    let srv = Server::start();
    let mut ids = Vec::new();
    for (i, team) in ["red", "blue", "red"].iter().enumerate() {
        let v = create(
            &srv,
            KEY_A,
            json!({"metadata": {"team": team, "note": format!("n {i}")}}),
        );
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let list = |q: &str| {
        os(&srv, "GET", &format!("/sandboxes{q}"), Some(KEY_A), None)
            .expect(200)
            .json()
    };
    let ids_of = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = list("");
    assert_eq!(
        all["pagination"],
        json!({"page": 1, "pageSize": 20, "totalItems": 3, "totalPages": 1, "hasNextPage": false})
    );
    // Newest first.
    assert_eq!(
        ids_of(&all),
        [ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    for item in all["items"].as_array().unwrap() {
        for key in [
            "id",
            "status",
            "createdAt",
            "expiresAt",
            "entrypoint",
            "metadata",
            "image",
        ] {
            assert!(item.get(key).is_some(), "{key}: {item}");
        }
    }
    // Metadata as the SDK encodes it: `k=v&k2=v2`, each part encoded, the whole encoded again.
    let red = list("?metadata=team%3Dred");
    assert_eq!(ids_of(&red), [ids[2].clone(), ids[0].clone()]);
    let one = list("?metadata=team%3Dred%26note%3Dn%25200");
    assert_eq!(ids_of(&one), [ids[0].clone()]);
    // Pages.
    let p2 = list("?pageSize=2&page=2");
    assert_eq!(ids_of(&p2), [ids[0].clone()]);
    assert_eq!(
        p2["pagination"],
        json!({"page": 2, "pageSize": 2, "totalItems": 3, "totalPages": 2, "hasNextPage": false})
    );
    assert_eq!(list("?pageSize=2")["pagination"]["hasNextPage"], true);
    error(
        &os(&srv, "GET", "/sandboxes?page=0", Some(KEY_A), None),
        400,
        Some("INVALID_QUERY"),
    );
    // States: Running and Paused are OR-ed; a state runcell never reports matches nothing.
    assert_eq!(ids_of(&list("?state=Running&state=Paused")).len(), 3);
    assert_eq!(ids_of(&list("?state=Pending")).len(), 0);

    // Renewal to an absolute time, in the SDK's format (`isoformat()`: microseconds, offset).
    let want = now_ms() + 3_600_000;
    let secs = want / 1000;
    let micros = (want % 1000) * 1000;
    let t = {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Civil from days (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    };
    let r = os(
        &srv,
        "POST",
        &format!("/sandboxes/{}/renew-expiration", ids[0]),
        Some(KEY_A),
        Some(&json!({"expiresAt": t})),
    );
    let v = r.expect(200).json();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    assert_eq!(ms(&v["expiresAt"]), want, "{t} → {v}");
    let g = os(
        &srv,
        "GET",
        &format!("/sandboxes/{}", ids[0]),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(g["expiresAt"], v["expiresAt"]);
    for bad in [
        json!({"expiresAt": "2000-01-01T00:00:00Z"}),
        json!({"expiresAt": "soon"}),
        json!({}),
    ] {
        let r = os(
            &srv,
            "POST",
            &format!("/sandboxes/{}/renew-expiration", ids[0]),
            Some(KEY_A),
            Some(&bad),
        );
        error(&r, 400, Some("INVALID_REQUEST"));
    }

    // Metadata changed with a JSON merge patch (OpenSandbox's PATCH, the native one alike).
    let r = os(
        &srv,
        "PATCH",
        &format!("/sandboxes/{}/metadata", ids[2]),
        Some(KEY_A),
        Some(&json!({"team": "green", "note": null, "stage": "b"})),
    );
    let v = r.expect(200).json();
    assert_eq!(v["metadata"], json!({"team": "green", "stage": "b"}), "{v}");
    assert_eq!(ids_of(&list("?metadata=team%3Dgreen")), [ids[2].clone()]);
    assert_eq!(ids_of(&list("?metadata=team%3Dred")), [ids[0].clone()]);
    let r = Resp::of(
        srv.req(
            "PATCH",
            &format!("/v1/sandboxes/{}/metadata", ids[2]),
            Some(KEY_A),
        )
        .body(json!({"stage": null}).to_string())
        .send(),
    );
    assert_eq!(r.expect(200).json()["metadata"], json!({"team": "green"}));
    for bad in [
        json!({"n": 1}),
        json!({"opensandbox.io/x": "y"}),
        json!([1]),
    ] {
        let r = os(
            &srv,
            "PATCH",
            &format!("/sandboxes/{}/metadata", ids[2]),
            Some(KEY_A),
            Some(&bad),
        );
        error(&r, 400, Some("INVALID_REQUEST"));
    }
    error(
        &os(
            &srv,
            "PATCH",
            &format!("/sandboxes/{}/metadata", ids[2]),
            Some(KEY_B),
            Some(&json!({"team": "b"})),
        ),
        404,
        None,
    );

    // Deletion: 204, then 404 everywhere; the ended sandbox is listed under Terminated.
    let r = os(
        &srv,
        "DELETE",
        &format!("/sandboxes/{}", ids[1]),
        Some(KEY_A),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty());
    error(
        &os(
            &srv,
            "GET",
            &format!("/sandboxes/{}", ids[1]),
            Some(KEY_A),
            None,
        ),
        404,
        None,
    );
    error(
        &os(
            &srv,
            "DELETE",
            &format!("/sandboxes/{}", ids[1]),
            Some(KEY_A),
            None,
        ),
        404,
        None,
    );
    assert_eq!(ids_of(&list("")).len(), 2);
    let ended = list("?state=Terminated");
    assert_eq!(ids_of(&ended), [ids[1].clone()]);
    assert_eq!(ended["items"][0]["status"]["state"], "Terminated");
    assert_eq!(ended["items"][0]["status"]["reason"], "user_delete");
}

#[test]
fn endpoints_lead_to_execd_and_to_ports_served_in_the_sandbox() {
    let srv = Server::start();
    let sb = create(&srv, KEY_A, json!({}));
    let id = sb["id"].as_str().unwrap();
    let endpoint = |port: &str, query: &str| {
        os(
            &srv,
            "GET",
            &format!("/sandboxes/{id}/endpoints/{port}{query}"),
            Some(KEY_A),
            None,
        )
        .expect(200)
        .json()
    };
    let host = srv.url.strip_prefix("http://").unwrap();
    // execd's port: this server's routes of the sandbox, no scheme, the token in headers.
    let e = endpoint("44772", "?use_server_proxy=false");
    assert_eq!(e["endpoint"], format!("{host}/v1/sandboxes/{id}"), "{e}");
    let token = e["headers"]["X-EXECD-ACCESS-TOKEN"]
        .as_str()
        .expect("a token");
    assert_eq!(e["headers"].as_object().unwrap().len(), 1, "{e}");
    // The same token every time; it opens the sandbox's routes without an API key.
    assert_eq!(
        endpoint("44772", "")["headers"]["X-EXECD-ACCESS-TOKEN"],
        token
    );
    let ping = |headers: &[(&str, &str)]| {
        let mut rb =
            crate::server::client().get(format!("http://{}/ping", e["endpoint"].as_str().unwrap()));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        Resp::of(rb.send()).status
    };
    assert_eq!(ping(&[("X-EXECD-ACCESS-TOKEN", token)]), 200);
    assert_eq!(ping(&[]), 401);
    // Server-proxy mode: no token handed out; the SDK sends its API key to execd instead.
    let p = endpoint("44772", "?use_server_proxy=true");
    assert_eq!(p["endpoint"], e["endpoint"]);
    assert_eq!(p["headers"], json!({}));
    assert_eq!(ping(&[(KEY_HEADER, KEY_A)]), 200);
    assert_eq!(ping(&[(KEY_HEADER, KEY_B)]), 404);
    // The Host the client used is the one handed back.
    let r = Resp::of(
        srv.req(
            "GET",
            &format!("{BASE}/sandboxes/{id}/endpoints/44772"),
            None,
        )
        .header(KEY_HEADER, KEY_A)
        .header("Host", "sandboxes.example.test:8443")
        .send(),
    );
    assert_eq!(
        r.expect(200).json()["endpoint"],
        format!("sandboxes.example.test:8443/v1/sandboxes/{id}")
    );
    // Bad ports.
    for bad in ["0", "65536", "http"] {
        let r = os(
            &srv,
            "GET",
            &format!("/sandboxes/{id}/endpoints/{bad}"),
            Some(KEY_A),
            None,
        );
        error(&r, 400, Some("INVALID_PORT"));
    }

    // Any other port: the proxy to a server in the sandbox, which never sees our credentials.
    let server = r#"
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-From-App", "yes")
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", 8000), H).serve_forever()
"#;
    sh(
        &srv,
        id,
        &format!("cat > /workspace/app.py <<'EOF'\n{server}\nEOF"),
    );
    background(&srv, id, "python3 /workspace/app.py");
    let app = endpoint("8000", "");
    let url = format!("http://{}", app["endpoint"].as_str().unwrap());
    assert_eq!(url, format!("http://{host}/v1/sandboxes/{id}/ports/8000"));
    let app_token = app["headers"]["X-EXECD-ACCESS-TOKEN"].as_str().unwrap();
    let got = crate::server::eventually(Duration::from_secs(20), "the app answers", || {
        let r = Resp::of(
            crate::server::client()
                .get(format!("{url}/some/path?a=1&b=two"))
                .header("X-EXECD-ACCESS-TOKEN", app_token)
                .header("X-Custom", "kept")
                .send(),
        );
        (r.status == 200).then_some(r)
    });
    assert_eq!(got.header("x-from-app").as_deref(), Some("yes"));
    let seen = got.json();
    assert_eq!(seen["path"], "/some/path?a=1&b=two", "{seen}");
    assert_eq!(seen["headers"]["x-custom"], "kept", "{seen}");
    assert_eq!(seen["headers"]["host"], "127.0.0.1:8000", "{seen}");
    for secret in [
        "x-execd-access-token",
        "x-api-key",
        "open-sandbox-api-key",
        "authorization",
    ] {
        assert!(
            seen["headers"].get(secret).is_none(),
            "{secret} reached the app: {seen}"
        );
    }
    // With the API key as a bearer token: not passed on either.
    let r = Resp::of(
        crate::server::client()
            .post(format!("{url}/"))
            .header("Authorization", format!("Bearer {KEY_A}"))
            .body("payload")
            .send(),
    );
    let seen = r.expect(200).json();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert_eq!(seen["headers"]["content-length"], "7", "{seen}");
    // Nothing listening: 502; another tenant: 404; no credentials: 401.
    let r = Resp::of(
        crate::server::client()
            .get(format!("http://{host}/v1/sandboxes/{id}/ports/8001/"))
            .header("X-EXECD-ACCESS-TOKEN", app_token)
            .send(),
    );
    error(&r, 502, Some("BAD_GATEWAY"));
    let r = Resp::of(
        crate::server::client()
            .get(format!("{url}/"))
            .header("X-API-Key", KEY_B)
            .send(),
    );
    error(&r, 404, None);
    let r = Resp::of(crate::server::client().get(format!("{url}/")).send());
    error(&r, 401, None);
}

/// Pause and resume through the lifecycle API: `202` each, the states the SDK polls for, the
/// listing's `Paused` filter, `409` for a second pause, execd's routes refusing work while
/// frozen, and the context's variables kept.
#[test]
fn pause_and_resume_answer_202_and_keep_the_sandbox_as_it_was() {
    use super::sandboxes_pause::{assert_result, py};
    let srv = Server::start();
    let sb = create(&srv, KEY_A, json!({}));
    let id = sb["id"].as_str().unwrap();
    assert_result(&py(&srv, id, "x = 42\nx"), "42");
    let state = |srv: &Server| {
        os(srv, "GET", &format!("/sandboxes/{id}"), Some(KEY_A), None)
            .expect(200)
            .json()["status"]
            .clone()
    };
    let r = os(
        &srv,
        "POST",
        &format!("/sandboxes/{id}/pause"),
        Some(KEY_A),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let st = state(&srv);
    assert_eq!(st["state"], "Paused", "{st}");
    assert_eq!(st["reason"], "user_pause", "{st}");
    let paused = os(&srv, "GET", "/sandboxes?state=Paused", Some(KEY_A), None)
        .expect(200)
        .json();
    assert_eq!(paused["items"][0]["id"], id, "{paused}");
    let running = os(&srv, "GET", "/sandboxes?state=Running", Some(KEY_A), None)
        .expect(200)
        .json();
    assert_eq!(running["items"], json!([]), "{running}");
    // A second pause, and work on the frozen sandbox: 409 with code and message.
    error(
        &os(
            &srv,
            "POST",
            &format!("/sandboxes/{id}/pause"),
            Some(KEY_A),
            None,
        ),
        409,
        Some("SANDBOX_PAUSED"),
    );
    let r = call(
        &srv,
        "POST",
        &sb_path(id, "/command"),
        Some(KEY_A),
        Some(&json!({"command": "true"})),
    );
    execd_error(&r, 409, Some("SANDBOX_PAUSED"));
    // Another key cannot resume it.
    error(
        &os(
            &srv,
            "POST",
            &format!("/sandboxes/{id}/resume"),
            Some(KEY_B),
            None,
        ),
        404,
        None,
    );
    let r = os(
        &srv,
        "POST",
        &format!("/sandboxes/{id}/resume"),
        Some(KEY_A),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(state(&srv)["state"], "Running");
    error(
        &os(
            &srv,
            "POST",
            &format!("/sandboxes/{id}/resume"),
            Some(KEY_A),
            None,
        ),
        409,
        Some("SANDBOX_NOT_PAUSED"),
    );
    assert_result(&py(&srv, id, "x"), "42");
}

/// Issue 13's flow, exactly as the official Python SDKs run it (`sdk/opensandbox_flow.py`):
/// create with an image and an entrypoint (both endpoint lookups, ping, telemetry), commands
/// with the sandbox's environment and a failing exit, files, a code context, renewal, a
/// listing by metadata, pause and resume keeping the context's variables, kill.
#[test]
fn the_official_python_sdk_drives_a_sandbox_end_to_end() {
    let srv = Server::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/sdk/opensandbox_flow.py"
    );
    let domain = format!("{}/opensandbox", srv.url.strip_prefix("http://").unwrap());
    let out = std::process::Command::new(super::opensandbox_execd::sdk_python())
        .args([script, &domain, KEY_A])
        .env("OPENSANDBOX_DISABLE_METRICS", "0")
        .output()
        .expect("run the SDK's flow");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK's flow failed:\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let id = seen["id"].as_str().unwrap();
    assert_eq!(seen["state"], "Running", "{seen}");
    assert_eq!(seen["image"], "opensandbox/code-interpreter:v1.1.0");
    assert_eq!(
        seen["entrypoint"],
        json!(["/opt/code-interpreter/code-interpreter.sh"])
    );
    assert_eq!(seen["metadata"], json!({"suite": "sdk-flow"}));
    assert_eq!(
        seen["stdout"],
        json!(["hello", "hello from the sdk"]),
        "{seen}"
    );
    assert_eq!(seen["stderr"], json!(["oops"]), "{seen}");
    assert_eq!(
        seen["exit_error"],
        json!(["CommandExecError", "3"]),
        "{seen}"
    );
    assert_eq!(seen["read"], "first line\nsecond line\n");
    assert_eq!(seen["size"], 23);
    assert_eq!(seen["context_language"], "python");
    assert_eq!(seen["code_result"], json!(["42"]), "{seen}");
    assert_eq!(seen["code_stdout"], json!(["printed\n"]), "{seen}");
    assert_eq!(seen["code_env"], json!(["'hello from the sdk'"]), "{seen}");
    assert_eq!(seen["code_error"], "ZeroDivisionError", "{seen}");
    assert_eq!(
        seen["patched"],
        json!({"suite": "sdk-flow", "stage": "patched"}),
        "{seen}"
    );
    assert_eq!(seen["listed"], json!([id]), "{seen}");
    assert_eq!(seen["paused_state"], "Paused", "{seen}");
    assert_eq!(seen["resumed_state"], "Running", "{seen}");
    assert_eq!(seen["x_after_resume"], json!(["42"]), "{seen}");
    assert!(
        seen["after_kill"]
            .as_str()
            .is_some_and(|c| c != "still there"),
        "{seen}"
    );
    // Nothing of it is left.
    let list = os(&srv, "GET", "/sandboxes", Some(KEY_A), None)
        .expect(200)
        .json();
    assert_eq!(list["items"], json!([]), "{list}");
}
