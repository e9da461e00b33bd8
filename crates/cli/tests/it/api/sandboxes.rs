//! The Sandboxes API end to end, against `docs/sandboxes.md`: the lifecycle (create, get, list,
//! renew, delete, expiry, restart), bad input, code runs (state, rich results, queueing, cancel,
//! timeouts, memory exhaustion), a fork bomb, streaming, the execd-compatible routes, access
//! tokens, tenants and artifacts.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};

use crate::server::{
    JAIL_UID_BASE, KEY_A, KEY_B, Proc, Resp, Server, SseEvent, alive, assert_error_body, client,
    eventually, execd_error, is_timestamp, jail_procs, now_ms, read_sse, sse_text,
    timestamp_ms as ms,
};

/// The header of a sandbox's own access token.
const TOKEN_HEADER: &str = "X-EXECD-ACCESS-TOKEN";
/// Well-formed ids that no server ever made.
const UNKNOWN_SB: &str = "sb_aaaaaaaaaaaaaaaaaaaaaaaaaa";
const UNKNOWN_RUN: &str = "run_aaaaaaaaaaaaaaaaaaaaaaaaaa";
const UNKNOWN_CTX: &str = "0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// Shapes and clocks

/// `prefix` followed by 26 characters of `[a-z2-7]`.
fn is_base32_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|r| {
        r.len() == 26
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    })
}

/// `len` lowercase hex digits.
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Hex SHA-256 of `data` (with coreutils' `sha256sum`).
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data)
        .expect("feed sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Sends `rb` (with `body` as JSON, if any) and reads the whole answer.
fn send(rb: RequestBuilder, body: Option<&Value>) -> Resp {
    let rb = match body {
        Some(b) => rb
            .header("Content-Type", "application/json")
            .body(b.to_string()),
        None => rb,
    };
    Resp::of(rb.send())
}

/// `method path` as the tenant of `key` (none: no credentials).
fn call(srv: &Server, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Resp {
    send(srv.req(method, path, key), body)
}

/// `method path` with only a sandbox access token.
fn with_token(srv: &Server, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
    send(
        srv.req(method, path, None).header(TOKEN_HEADER, token),
        body,
    )
}

/// Like [`call`], but the answer must come within 5 s (never a hang); also returns how long it
/// took.
fn quick(srv: &Server, method: &str, path: &str, body: Option<&Value>) -> (Resp, Duration) {
    let t = Instant::now();
    let r = send(
        srv.req(method, path, Some(KEY_A))
            .timeout(Duration::from_secs(5)),
        body,
    );
    (r, t.elapsed())
}

/// `/v1/sandboxes/{id}{rest}`.
fn sb_path(id: &str, rest: &str) -> String {
    format!("/v1/sandboxes/{id}{rest}")
}

/// Asserts a 4xx that is not a success, in either error shape: the status is one of `allowed`.
#[track_caller]
fn refused(r: &Resp, allowed: &[u16], what: &str) {
    assert!(
        allowed.contains(&r.status),
        "{what}: expected one of {allowed:?}, got {}: {}",
        r.status,
        r.text
    );
}

// ---------------------------------------------------------------------------------------------
// Sandboxes, runs, contexts

/// `POST /v1/sandboxes` as `key`, asserting 201, the id and the token; the sandbox.
#[track_caller]
fn create(srv: &Server, key: &str, body: &Value) -> Value {
    let r = srv.post("/v1/sandboxes", Some(key), body);
    let v = r.expect(201).json();
    let id = v["id"].as_str().unwrap_or_default();
    assert!(is_base32_id(id, "sb_"), "id is sb_ + 26 base32: {v:#}");
    let token = v["access_token"].as_str().unwrap_or_default();
    assert!(is_hex(token, 64), "access_token is 64 hex: {v:#}");
    v
}

/// A sandbox with the default settings (one of the pre-started ones) of tenant A: (id, token).
fn default_sandbox(srv: &Server) -> (String, String) {
    let v = create(srv, KEY_A, &json!({}));
    (
        v["id"].as_str().unwrap().to_string(),
        v["access_token"].as_str().unwrap().to_string(),
    )
}

/// `POST /code/runs?wait=true` as A, asserting 200; the finished run.
#[track_caller]
fn run(srv: &Server, sb: &str, body: Value) -> Value {
    let v = srv
        .post(&sb_path(sb, "/code/runs?wait=true"), Some(KEY_A), &body)
        .expect(200)
        .json();
    assert!(
        matches!(
            v["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ),
        "?wait=true answers the finished run: {v:#}"
    );
    v
}

/// Runs Python `code` in the default context, waiting for the end.
#[track_caller]
fn py(srv: &Server, sb: &str, code: &str) -> Value {
    run(srv, sb, json!({ "code": code }))
}

/// `POST /code/runs` (async) as A, asserting 202; the run.
#[track_caller]
fn submit(srv: &Server, sb: &str, body: Value) -> Value {
    let v = srv
        .post(&sb_path(sb, "/code/runs"), Some(KEY_A), &body)
        .expect(202)
        .json();
    assert!(is_base32_id(id_of(&v), "run_"), "{v:#}");
    v
}

#[track_caller]
fn id_of(v: &Value) -> &str {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v:#}"))
}

/// `GET /code/runs/{run}` as A, asserting 200.
#[track_caller]
fn get_run(srv: &Server, sb: &str, run: &str) -> Value {
    srv.get(&sb_path(sb, &format!("/code/runs/{run}")), Some(KEY_A))
        .expect(200)
        .json()
}

/// Polls a run until it has `status`.
#[track_caller]
fn wait_status(srv: &Server, sb: &str, run: &str, status: &str, timeout: Duration) -> Value {
    eventually(timeout, &format!("run {run} to be {status}"), || {
        let v = get_run(srv, sb, run);
        (v["status"] == status).then_some(v)
    })
}

/// Polls a run until it has ended.
#[track_caller]
fn wait_done(srv: &Server, sb: &str, run: &str, timeout: Duration) -> Value {
    eventually(timeout, &format!("run {run} to finish"), || {
        let v = get_run(srv, sb, run);
        matches!(
            v["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
        .then_some(v)
    })
}

/// `POST /code/runs/{run}/cancel` as `key` (no body).
fn cancel(srv: &Server, key: &str, sb: &str, run: &str) -> Resp {
    call(
        srv,
        "POST",
        &sb_path(sb, &format!("/code/runs/{run}/cancel")),
        Some(key),
        None,
    )
}

/// The text of a run's main result (the value of its last expression).
fn main_text(run: &Value) -> Option<&str> {
    run["execution"]["results"]
        .as_array()?
        .iter()
        .find(|r| r["is_main_result"] == true)?["text"]
        .as_str()
}

/// A run's stdout, its chunks joined.
fn stdout_of(run: &Value) -> String {
    run["execution"]["logs"]["stdout"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Asserts a run succeeded with `text` as its main result.
#[track_caller]
fn assert_result(run: &Value, text: &str) {
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(main_text(run), Some(text), "{run:#}");
}

/// `POST /code/context` (execd) as A: a new context of `language`; its id.
#[track_caller]
fn new_context(srv: &Server, sb: &str, language: &str) -> String {
    let v = srv
        .post(
            &sb_path(sb, "/code/context"),
            Some(KEY_A),
            &json!({ "language": language }),
        )
        .expect(200)
        .json();
    let id = v["id"].as_str().unwrap_or_default().to_string();
    assert!(is_hex(&id, 32), "context ids are 32 lowercase hex: {v}");
    assert_eq!(v["language"], language, "{v}");
    id
}

/// The sandboxes of a list answer, by id.
fn listed<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list["sandboxes"]
        .as_array()
        .unwrap_or_else(|| panic!("no sandboxes array: {list}"))
        .iter()
        .find(|s| s["id"] == id)
}

// ---------------------------------------------------------------------------------------------
// Server-sent events

type Event = SseEvent;

const EVENT_TYPES: &[&str] = &[
    "init",
    "status",
    "stdout",
    "stderr",
    "result",
    "error",
    "execution_count",
    "execution_complete",
    "ping",
];

/// POSTs `body` to `path` as A asking for an event stream; asserts 200 and the content type.
#[track_caller]
fn open_stream(srv: &Server, path: &str, body: &Value) -> reqwest::blocking::Response {
    let resp = srv
        .req("POST", path, Some(KEY_A))
        .header("Content-Type", "application/json")
        .header("Accept", "text/event-stream")
        .body(body.to_string())
        .send()
        .expect("the HTTP request failed");
    let status = resp.status().as_u16();
    if status != 200 {
        panic!(
            "a stream of {path} answered {status}: {}",
            resp.text().unwrap_or_default()
        );
    }
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    resp
}

fn read_events(
    resp: &mut reqwest::blocking::Response,
    stop: impl FnMut(&Value) -> bool,
) -> Vec<Event> {
    read_sse(resp, EVENT_TYPES, stop)
}

/// The events without the keep-alive pings.
fn no_pings(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| e.v["type"] != "ping").collect()
}

fn text_of(events: &[Event], kind: &str) -> String {
    sse_text(events, kind)
}

/// The types of the events (pings left out), for assertion messages.
fn kinds(events: &[Event]) -> Vec<String> {
    no_pings(events)
        .iter()
        .map(|e| match e.v["text"].as_str() {
            Some(t) => format!("{}({t:?})", e.v["type"].as_str().unwrap()),
            None => e.v["type"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// The first event where the `stdout` text received so far contains `needle`.
fn stdout_arrival<'a>(events: &'a [Event], needle: &str) -> Option<&'a Event> {
    let mut so_far = String::new();
    for e in events.iter().filter(|e| e.v["type"] == "stdout") {
        so_far.push_str(e.v["text"].as_str().unwrap_or_default());
        if so_far.contains(needle) {
            return Some(e);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The number of jail processes of the server once it has not changed for a second (its pool
/// of pre-started sandboxes is then ready).
fn settled_jail_count(pid: u32) -> usize {
    let mut last = (usize::MAX, 0u32);
    eventually(
        Duration::from_secs(120),
        "the server's jail processes to settle",
        || {
            let n = jail_procs(pid).len();
            if n == last.0 {
                last.1 += 1;
            } else {
                last = (n, 1);
            }
            // 20 equal samples 50 ms apart.
            (last.1 >= 20).then_some(n)
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The lifecycle and its shapes: create with limits, env and metadata (201, `sb_` id, token,
/// `expires_at = created_at + timeout_secs`), get (no token), list, env reaching the code,
/// renew, delete (204), and the 404 codes of a deleted and of an unknown sandbox on the sandbox
/// and its sub-routes.
#[test]
fn lifecycle_create_get_list_renew_delete() {
    let srv = Server::start();
    let limits = json!({"memory_mb": 256, "cpus": 0.5, "max_processes": 64, "disk_mb": 100});
    let meta = json!({"owner": "alice", "n": 1, "tags": ["x", "y"]});
    let before = now_ms();
    let sb = create(
        &srv,
        KEY_A,
        &json!({"timeout_secs": 120, "limits": limits, "env": {"MY_VAR": "x"},
                "metadata": meta, "network": false}),
    );
    let after = now_ms();
    let id = id_of(&sb).to_string();
    assert_eq!(sb["status"], "running", "{sb:#}");
    let created = ms(&sb["created_at"]);
    assert!(
        created >= before - 1000 && created <= after + 1000,
        "created_at is now: {sb:#}"
    );
    let life = ms(&sb["expires_at"]) - created;
    assert!(
        (life - 120_000).abs() <= 1000,
        "expires_at = created_at + 120 s, got {life} ms: {sb:#}"
    );
    assert_eq!(sb["timeout_secs"], 120, "{sb:#}");
    assert_eq!(sb["limits"], limits, "{sb:#}");
    assert_eq!(sb["metadata"], meta, "{sb:#}");
    assert_eq!(sb["network"], false, "{sb:#}");
    assert_eq!(sb.get("ended_at"), Some(&Value::Null), "{sb:#}");
    assert_eq!(sb.get("end_reason"), Some(&Value::Null), "{sb:#}");

    // GET: the same object, without the token; both key headers work.
    let got = srv.get(&sb_path(&id, ""), Some(KEY_A)).expect(200).json();
    assert!(got.get("access_token").is_none(), "{got:#}");
    for k in [
        "id",
        "status",
        "created_at",
        "expires_at",
        "timeout_secs",
        "limits",
        "metadata",
        "network",
    ] {
        assert_eq!(got[k], sb[k], "{k}: {got:#}");
    }
    let r = send(
        srv.req("GET", &sb_path(&id, ""), None)
            .header("Authorization", format!("Bearer {KEY_A}")),
        None,
    );
    assert_eq!(r.expect(200).json()["id"], id.as_str());

    // The sandbox's env reaches its processes; a run's env stays set in its context.
    let r = py(&srv, &id, "import os\nos.environ['MY_VAR']");
    assert_result(&r, "'x'");
    let r = run(
        &srv,
        &id,
        json!({"code": "os.environ['RUN_VAR']", "env": {"RUN_VAR": "y"}}),
    );
    assert_result(&r, "'y'");
    let r = py(&srv, &id, "os.environ.get('RUN_VAR')");
    assert_result(&r, "'y'");
    let run_id = id_of(&r).to_string();

    // The list: running ones by default, without tokens.
    let list = srv.get("/v1/sandboxes", Some(KEY_A)).expect(200).json();
    let item = listed(&list, &id).unwrap_or_else(|| panic!("{id} not listed: {list:#}"));
    assert!(item.get("access_token").is_none(), "{item:#}");
    assert_eq!(item["status"], "running", "{item:#}");
    assert!(list.get("next_cursor").is_some(), "{list:#}");

    // Renew: expires_at = now + N.
    let t0 = now_ms();
    let renewed = srv
        .post(
            &sb_path(&id, "/timeout"),
            Some(KEY_A),
            &json!({"timeout_secs": 600}),
        )
        .expect(200)
        .json();
    let t1 = now_ms();
    let exp = ms(&renewed["expires_at"]);
    assert!(
        exp >= t0 + 600_000 - 1000 && exp <= t1 + 600_000 + 1000,
        "expires_at = now + 600 s: {renewed:#}"
    );
    assert!(exp > ms(&sb["expires_at"]), "{renewed:#}");
    assert_eq!(renewed["id"], id.as_str(), "{renewed:#}");
    assert!(renewed.get("access_token").is_none(), "{renewed:#}");
    let got = srv.get(&sb_path(&id, ""), Some(KEY_A)).expect(200).json();
    assert_eq!(got["expires_at"], renewed["expires_at"], "{got:#}");

    // Delete: 204 and an empty body.
    let r = call(&srv, "DELETE", &sb_path(&id, ""), Some(KEY_A), None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty(), "{}", r.text);

    // Gone: 404 SANDBOX_DELETED everywhere, in the shape of each route.
    let code = json!({"code": "1"});
    let renew = json!({"timeout_secs": 60});
    for (method, rest, body) in [
        ("GET", String::new(), None),
        ("DELETE", String::new(), None),
        ("POST", "/timeout".to_string(), Some(&renew)),
        ("POST", "/code/runs".to_string(), Some(&code)),
        ("POST", "/code/runs?wait=true".to_string(), Some(&code)),
        ("GET", "/code/runs".to_string(), None),
        ("GET", format!("/code/runs/{run_id}"), None),
    ] {
        let r = call(&srv, method, &sb_path(&id, &rest), Some(KEY_A), body);
        let v = r.error(404, Some("SANDBOX_DELETED"));
        assert!(!v["detail"].as_str().unwrap().is_empty());
    }
    let r = srv.get(&sb_path(&id, "/ping"), Some(KEY_A));
    execd_error(&r, 404, Some("SANDBOX_DELETED"));

    // No longer running; still listed among the ended ones, with when and why.
    let list = srv.get("/v1/sandboxes", Some(KEY_A)).expect(200).json();
    assert!(listed(&list, &id).is_none(), "{list:#}");
    for status in ["terminated", "all"] {
        let list = srv
            .get(&format!("/v1/sandboxes?status={status}"), Some(KEY_A))
            .expect(200)
            .json();
        let item =
            listed(&list, &id).unwrap_or_else(|| panic!("{id} not in ?status={status}: {list:#}"));
        assert_ne!(item["status"], "running", "{item:#}");
        assert!(is_timestamp(&item["ended_at"]), "{item:#}");
        assert!(
            item["end_reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{item:#}"
        );
    }

    // Never existed (well-formed or not): SANDBOX_NOT_FOUND.
    for bad in [UNKNOWN_SB, "not-a-sandbox"] {
        for (method, rest, body) in [
            ("GET", "", None),
            ("DELETE", "", None),
            ("POST", "/timeout", Some(&renew)),
            ("POST", "/code/runs", Some(&code)),
        ] {
            let r = call(&srv, method, &sb_path(bad, rest), Some(KEY_A), body);
            r.error(404, Some("SANDBOX_NOT_FOUND"));
        }
        let r = srv.get(&sb_path(bad, "/ping"), Some(KEY_A));
        execd_error(&r, 404, Some("SANDBOX_NOT_FOUND"));
    }
}

/// Expiry: a sandbox renewed to `timeout_secs: 1` (with a run going in it) answers
/// `404 SANDBOX_EXPIRED` within a few seconds, not before its `expires_at`, and every request
/// answers at once (never a hang or a 502), with SANDBOX_EXPIRED whether the server has ended
/// the sandbox yet or not. The run is submitted while the sandbox has a minute to live, and
/// only then is its lifetime shortened, so that a slow host (an emulated CPU) cannot let it
/// expire before the run is submitted.
#[test]
fn an_expired_sandbox_answers_404_sandbox_expired_at_once() {
    let srv = Server::start();
    let sb = create(&srv, KEY_A, &json!({"timeout_secs": 60}));
    let id = id_of(&sb).to_string();
    let life = ms(&sb["expires_at"]) - ms(&sb["created_at"]);
    assert!((life - 60_000).abs() <= 1000, "{sb:#}");
    quick(&srv, "GET", &sb_path(&id, ""), None).0.expect(200);
    let sleeper = submit(&srv, &id, json!({"code": "import time\ntime.sleep(60)"}));
    let sleeper = id_of(&sleeper).to_string();
    let renewed = srv
        .post(
            &sb_path(&id, "/timeout"),
            Some(KEY_A),
            &json!({"timeout_secs": 1}),
        )
        .expect(200)
        .json();
    let started = Instant::now();
    let expires = ms(&renewed["expires_at"]);
    assert!(expires < ms(&sb["expires_at"]), "{renewed:#}");

    let gone = eventually(Duration::from_secs(6), "the sandbox to expire", || {
        let (r, took) = quick(&srv, "GET", &sb_path(&id, ""), None);
        assert!(
            took < Duration::from_secs(2),
            "a GET took {took:?} (after {:?})",
            started.elapsed()
        );
        (r.status != 200).then_some(r)
    });
    let seen = now_ms();
    let v = gone.error(404, Some("SANDBOX_EXPIRED"));
    assert!(
        seen >= expires - 250,
        "gone {} ms before its expires_at: {v}",
        expires - seen
    );

    let code = json!({"code": "1"});
    for (method, rest, body) in [
        ("POST", "/code/runs".to_string(), Some(&code)),
        ("POST", "/code/runs?wait=true".to_string(), Some(&code)),
        ("GET", format!("/code/runs/{sleeper}"), None),
        ("POST", format!("/code/runs/{sleeper}/cancel"), None),
        (
            "POST",
            "/timeout".to_string(),
            Some(&json!({"timeout_secs": 60})),
        ),
        ("DELETE", String::new(), None),
    ] {
        let (r, took) = quick(&srv, method, &sb_path(&id, &rest), body);
        assert!(took < Duration::from_secs(2), "{method} {rest}: {took:?}");
        r.error(404, Some("SANDBOX_EXPIRED"));
    }
    let (r, took) = quick(&srv, "GET", &sb_path(&id, "/ping"), None);
    assert!(took < Duration::from_secs(2), "ping: {took:?}");
    execd_error(&r, 404, Some("SANDBOX_EXPIRED"));
}

/// Bad input on creation and on code runs: each gets a 4xx with `detail` and `code` (the codes
/// the reference names where it names one), and nothing is created or run.
#[test]
fn bad_input_is_refused_with_a_4xx_and_a_code() {
    let srv = Server::start();
    let big = "x".repeat(5000);
    let creates = [
        (json!({"network": true}), Some("INVALID_REQUEST"), None),
        (
            json!({"limits": {"memory_mb": 1_000_000_000u64}}),
            Some("INVALID_LIMIT"),
            Some("memory"),
        ),
        (
            json!({"limits": {"cpus": 1000.0}}),
            Some("INVALID_LIMIT"),
            Some("cpu"),
        ),
        (
            json!({"limits": {"max_processes": 100_000_000u64}}),
            Some("INVALID_LIMIT"),
            Some("process"),
        ),
        (
            json!({"limits": {"disk_mb": 1_000_000_000u64}}),
            Some("INVALID_LIMIT"),
            Some("disk"),
        ),
        (json!({"limits": {"memory_mb": -1}}), None, None),
        (json!({"limits": {"memory_mb": 0}}), None, None),
        (json!({"limits": {"memory_mb": "lots"}}), None, None),
        (json!({"timeout_secs": 0}), None, None),
        (json!({"timeout_secs": -5}), None, None),
        (json!({"timeout_secs": 86_401}), None, None),
        (json!({"timeout_secs": "ten"}), None, None),
        (json!({"metadata": {"big": big}}), None, None),
        (json!({"metadata": "not an object"}), None, None),
    ];
    for (body, code, names) in &creates {
        let r = srv.post("/v1/sandboxes", Some(KEY_A), body);
        let v = r.error(400, *code);
        if let Some(n) = names {
            let detail = v["detail"].as_str().unwrap().to_lowercase();
            assert!(
                detail.contains(n),
                "the detail names the limit: {v} for {body}"
            );
        }
    }
    for raw in [&b"{not json"[..], b"[1, 2]", b"\"text\""] {
        let r = srv.post_raw("/v1/sandboxes", Some(KEY_A), raw.to_vec());
        r.error(400, None);
    }
    let all = srv
        .get("/v1/sandboxes?status=all", Some(KEY_A))
        .expect(200)
        .json();
    assert_eq!(
        all["sandboxes"].as_array().map(Vec::len),
        Some(0),
        "nothing created: {all:#}"
    );

    // Code runs.
    let (id, _) = default_sandbox(&srv);
    let first = py(&srv, &id, "1");
    assert_result(&first, "1");
    let ctx = first["context_id"].as_str().unwrap().to_string();
    let runs = sb_path(&id, "/code/runs");
    for (body, status, code) in [
        (json!({}), 400, Some("INVALID_REQUEST")),
        (json!({"language": "python"}), 400, Some("INVALID_REQUEST")),
        (json!({"code": 5}), 400, Some("INVALID_REQUEST")),
        (
            json!({"code": "1", "language": "cobol"}),
            400,
            Some("UNSUPPORTED_LANGUAGE"),
        ),
        (
            json!({"code": "1", "language": "c"}),
            400,
            Some("CONTEXTS_UNAVAILABLE"),
        ),
        (
            json!({"code": "1", "context_id": UNKNOWN_CTX}),
            404,
            Some("CONTEXT_NOT_FOUND"),
        ),
        // The language must match the context's.
        (
            json!({"code": "1", "context_id": ctx, "language": "bash"}),
            400,
            None,
        ),
        (json!({"code": "1", "timeout_secs": 0}), 400, None),
        (json!({"code": "1", "timeout_secs": 3601}), 400, None),
        (json!({"code": "1", "timeout_secs": "soon"}), 400, None),
    ] {
        for query in ["", "?wait=true"] {
            let r = srv.post(&format!("{runs}{query}"), Some(KEY_A), &body);
            let v = r.error(status, code);
            assert!(!v["detail"].as_str().unwrap().is_empty(), "{body}");
        }
    }
    let r = srv.post_raw(&runs, Some(KEY_A), b"{\"code\": ".to_vec());
    r.error(400, None);
    let list = srv.get(&runs, Some(KEY_A)).expect(200).json();
    let listed_runs = list["runs"].as_array().expect("runs");
    assert_eq!(listed_runs.len(), 1, "only the good run exists: {list:#}");
    assert_eq!(listed_runs[0]["id"], first["id"]);

    // Unknown runs; bad renewals.
    let r = srv.get(
        &sb_path(&id, &format!("/code/runs/{UNKNOWN_RUN}")),
        Some(KEY_A),
    );
    r.error(404, None);
    cancel(&srv, KEY_A, &id, UNKNOWN_RUN).error(404, None);
    for body in [
        json!({"timeout_secs": 0}),
        json!({"timeout_secs": 86_401}),
        json!({}),
    ] {
        let r = srv.post(&sb_path(&id, "/timeout"), Some(KEY_A), &body);
        r.error(400, None);
    }
    srv.get(&sb_path(&id, ""), Some(KEY_A)).expect(200);
}

/// A Python context keeps its state between runs and returns rich results: the last
/// expression's text, a matplotlib PNG, a DataFrame's HTML, a raised exception, stdout, and
/// the async mode (202, then polling).
#[test]
fn python_context_keeps_state_and_returns_rich_results() {
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);

    let r1 = py(&srv, &id, "x = 1");
    assert_eq!(r1["status"], "succeeded", "{r1:#}");
    assert_eq!(main_text(&r1), None, "an assignment has no value: {r1:#}");
    let r2 = py(&srv, &id, "x + 1");
    assert_result(&r2, "2");
    let results = r2["execution"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{r2:#}");
    assert_eq!(results[0]["is_main_result"], true, "{r2:#}");
    let (c1, c2) = (
        r1["execution"]["execution_count"].as_u64(),
        r2["execution"]["execution_count"].as_u64(),
    );
    assert!(
        c1.is_some() && c2 > c1,
        "execution_count goes up: {c1:?} then {c2:?}"
    );
    assert_eq!(r1["context_id"], r2["context_id"], "the default context");

    // The whole run object.
    let ctx = r2["context_id"].as_str().unwrap_or_default();
    assert!(is_hex(ctx, 32), "{r2:#}");
    assert!(is_base32_id(id_of(&r2), "run_"), "{r2:#}");
    assert_eq!(r2["sandbox_id"], id.as_str(), "{r2:#}");
    assert_eq!(r2["language"], "python", "{r2:#}");
    assert_eq!(r2["timeout_secs"], 300, "the default run timeout: {r2:#}");
    for k in ["created_at", "expires_at", "started_at", "completed_at"] {
        assert!(is_timestamp(&r2[k]), "{k}: {r2:#}");
    }
    assert!(ms(&r2["started_at"]) <= ms(&r2["completed_at"]), "{r2:#}");
    assert!(ms(&r2["expires_at"]) > ms(&r2["created_at"]), "{r2:#}");
    assert_eq!(r2.get("cancel_requested_at"), Some(&Value::Null), "{r2:#}");
    assert_eq!(r2.get("failure_reason"), Some(&Value::Null), "{r2:#}");
    let ex = &r2["execution"];
    assert_eq!(ex["artifacts"], json!([]), "{r2:#}");
    assert_eq!(ex.get("error"), Some(&Value::Null), "{r2:#}");
    assert!(ex["logs"]["stdout"].is_array() && ex["logs"]["stderr"].is_array());
    assert_eq!(get_run(&srv, &id, id_of(&r2)), r2, "GET gives the same run");

    // stdout and stderr, in chunks.
    let r = py(
        &srv,
        &id,
        "import sys\nprint('hi')\nprint('oops', file=sys.stderr)",
    );
    assert_eq!(stdout_of(&r), "hi\n", "{r:#}");
    let err: String = r["execution"]["logs"]["stderr"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(err, "oops\n", "{r:#}");

    // A matplotlib figure: a display result with a PNG.
    let r = py(
        &srv,
        &id,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
    );
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let png = r["execution"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|x| x["png"].as_str())
        .unwrap_or_else(|| panic!("no PNG result: {r:#}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png)
        .expect("png is base64");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &bytes[..bytes.len().min(16)]
    );

    // A DataFrame as the last expression: HTML and text.
    let r = py(
        &srv,
        &id,
        "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})",
    );
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let main = r["execution"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["is_main_result"] == true)
        .unwrap_or_else(|| panic!("no main result: {r:#}"));
    assert!(
        main["html"].as_str().is_some_and(|h| h.contains("<table")),
        "{main:#}"
    );
    assert!(
        main["text"].as_str().is_some_and(|t| t.contains('a')),
        "{main:#}"
    );

    // An exception: failed, with its name, value and a colourless traceback.
    let r = py(&srv, &id, "1/0");
    assert_eq!(r["status"], "failed", "{r:#}");
    let e = &r["execution"]["error"];
    assert_eq!(e["name"], "ZeroDivisionError", "{r:#}");
    assert!(
        e["value"].as_str().is_some_and(|v| v.contains("division")),
        "{r:#}"
    );
    let tb = e["traceback"].as_str().unwrap_or_default();
    assert!(tb.contains("ZeroDivisionError"), "{r:#}");
    assert!(!tb.contains('\u{1b}'), "no terminal colours: {tb:?}");
    // The state survives an exception.
    assert_result(&py(&srv, &id, "x"), "1");

    // Async: 202 at once, then the run is polled to its end.
    let t = Instant::now();
    let r = submit(
        &srv,
        &id,
        json!({"code": "import time\ntime.sleep(0.5)\n6 * 7"}),
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(r["status"].as_str(), Some("queued" | "running")),
        "{r:#}"
    );
    let done = wait_done(&srv, &id, id_of(&r), Duration::from_secs(30));
    assert_result(&done, "42");

    // The list has every run.
    let list = srv
        .get(&sb_path(&id, "/code/runs?limit=100"), Some(KEY_A))
        .expect(200)
        .json();
    let ids: HashSet<&str> = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    for r in [&r1, &r2, &done] {
        assert!(ids.contains(id_of(r)), "{} not listed: {list:#}", id_of(r));
    }
    assert!(list.get("next_cursor").is_some(), "{list:#}");
}

/// Queueing: runs of one context run one at a time in arrival order (the second starts after
/// the first completed); runs of two contexts run at the same time.
#[test]
fn one_context_runs_in_order_and_two_contexts_run_in_parallel() {
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);
    assert_result(&py(&srv, &id, "1"), "1");

    let a = submit(
        &srv,
        &id,
        json!({"code": "import time\ntime.sleep(1)\n'a'"}),
    );
    let b = submit(&srv, &id, json!({"code": "'b'"}));
    assert_eq!(a["context_id"], b["context_id"], "both in the default one");
    let b_now = get_run(&srv, &id, id_of(&b));
    assert_eq!(
        b_now["status"], "queued",
        "waits behind the first: {b_now:#}"
    );
    let a = wait_done(&srv, &id, id_of(&a), Duration::from_secs(30));
    let b = wait_done(&srv, &id, id_of(&b), Duration::from_secs(30));
    assert_result(&a, "'a'");
    assert_result(&b, "'b'");
    assert!(
        ms(&b["started_at"]) >= ms(&a["completed_at"]),
        "the second started before the first completed: {a:#} {b:#}"
    );

    // Two contexts, their kernels started first so that only the runs are timed.
    let c1 = new_context(&srv, &id, "python");
    let c2 = new_context(&srv, &id, "python");
    assert_ne!(c1, c2);
    for c in [&c1, &c2] {
        let r = run(&srv, &id, json!({"code": "1", "context_id": c}));
        assert_result(&r, "1");
        assert_eq!(r["context_id"], c.as_str(), "{r:#}");
    }
    let code = "import time\ntime.sleep(1.5)\n'slept'";
    let t = Instant::now();
    let r1 = submit(&srv, &id, json!({"code": code, "context_id": c1}));
    let r2 = submit(&srv, &id, json!({"code": code, "context_id": c2}));
    let (r1, r2) = eventually(Duration::from_secs(30), "both sleeps to finish", || {
        let (x, y) = (
            get_run(&srv, &id, id_of(&r1)),
            get_run(&srv, &id, id_of(&r2)),
        );
        let done = |v: &Value| !matches!(v["status"].as_str(), Some("queued" | "running"));
        (done(&x) && done(&y)).then_some((x, y))
    });
    let took = t.elapsed();
    assert_result(&r1, "'slept'");
    assert_result(&r2, "'slept'");
    assert!(
        took < Duration::from_millis(2800),
        "two 1.5 s runs in two contexts took {took:?}: not in parallel"
    );
    assert!(
        ms(&r1["started_at"]) < ms(&r2["completed_at"])
            && ms(&r2["started_at"]) < ms(&r1["completed_at"]),
        "the runs overlap: {r1:#} {r2:#}"
    );
}

/// Cancel: a busy loop is interrupted within a second (`cancelled`), the context stays usable
/// with its state, also when the cancel comes the moment the run says `running`; a queued run
/// never starts; a finished run answers `409 ALREADY_FINISHED`.
#[test]
fn cancel_interrupts_a_running_run_and_drops_a_queued_one() {
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);
    let r = py(&srv, &id, "state = 41");
    assert_eq!(r["status"], "succeeded", "{r:#}");

    // A loop that is surely spinning (it has printed).
    let spin = submit(
        &srv,
        &id,
        json!({"code": "print('spinning', flush=True)\nwhile True: pass"}),
    );
    let spin = id_of(&spin).to_string();
    eventually(Duration::from_secs(30), "the loop to spin", || {
        let v = get_run(&srv, &id, &spin);
        (v["status"] == "running" && stdout_of(&v) == "spinning\n").then_some(())
    });
    let t = Instant::now();
    let r = cancel(&srv, KEY_A, &id, &spin);
    let took = t.elapsed();
    let v = r.expect(200).json();
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    assert_eq!(v["status"], "cancelled", "{v:#}");
    assert!(is_timestamp(&v["cancel_requested_at"]), "{v:#}");
    assert!(is_timestamp(&v["completed_at"]), "{v:#}");
    assert_eq!(get_run(&srv, &id, &spin)["status"], "cancelled");
    assert_result(&py(&srv, &id, "1 + 1"), "2");
    assert_result(&py(&srv, &id, "state + 1"), "42");

    // Cancelled the moment it says `running` (a few times, to meet the kernel at any point
    // of starting the code): still within a second, and the state survives.
    for _ in 0..5 {
        let r = submit(&srv, &id, json!({"code": "while True: pass"}));
        wait_status(&srv, &id, id_of(&r), "running", Duration::from_secs(30));
        let t = Instant::now();
        let v = cancel(&srv, KEY_A, &id, id_of(&r)).expect(200).json();
        let took = t.elapsed();
        assert_eq!(v["status"], "cancelled", "{v:#}");
        assert!(
            took < Duration::from_secs(1),
            "cancel right after `running` took {took:?}: {v:#}"
        );
        assert_result(&py(&srv, &id, "state + 1"), "42");
    }

    // Queued: it never starts.
    let slow = submit(
        &srv,
        &id,
        json!({"code": "import time\ntime.sleep(1.5)\n'slow'"}),
    );
    let queued = submit(&srv, &id, json!({"code": "print('ran')\n'should not run'"}));
    let v = cancel(&srv, KEY_A, &id, id_of(&queued)).expect(200).json();
    assert_eq!(v["status"], "cancelled", "{v:#}");
    let slow = wait_done(&srv, &id, id_of(&slow), Duration::from_secs(30));
    assert_result(&slow, "'slow'");
    let v = get_run(&srv, &id, id_of(&queued));
    assert_eq!(v["status"], "cancelled", "{v:#}");
    assert_eq!(
        v.get("started_at"),
        Some(&Value::Null),
        "never started: {v:#}"
    );
    assert_eq!(main_text(&v), None, "never ran: {v:#}");
    assert_eq!(stdout_of(&v), "", "never ran: {v:#}");

    // Finished ones: 409.
    for run_id in [spin.as_str(), id_of(&slow), id_of(&queued)] {
        cancel(&srv, KEY_A, &id, run_id).error(409, Some("ALREADY_FINISHED"));
    }
    cancel(&srv, KEY_A, &id, UNKNOWN_RUN).error(404, None);
}

/// A run's timeout: the kernel is interrupted, the run fails with `timeout:` and the context
/// keeps its state; code that ignores the interrupt gets its kernel restarted (the run says the
/// state is lost) and the context works again.
#[test]
fn a_run_timeout_interrupts_and_keeps_state_or_restarts_the_kernel() {
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);
    py(&srv, &id, "keep = 'kept'");

    let t = Instant::now();
    let r = run(
        &srv,
        &id,
        json!({"code": "import time\ntime.sleep(30)", "timeout_secs": 1}),
    );
    let took = t.elapsed();
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["timeout_secs"], 1, "{r:#}");
    assert!(
        r["failure_reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("timeout:")),
        "{r:#}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "a 1 s timeout took {took:?}"
    );
    assert_result(&py(&srv, &id, "keep"), "'kept'");

    // Ignoring SIGINT: killed 2 s later and restarted.
    let t = Instant::now();
    let r = run(
        &srv,
        &id,
        json!({"code": "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n\
                        time.sleep(30)",
               "timeout_secs": 1}),
    );
    let took = t.elapsed();
    assert_eq!(r["status"], "failed", "{r:#}");
    let reason = r["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("timeout:"), "{r:#}");
    assert!(reason.contains("lost"), "says the state is lost: {r:#}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_result(&py(&srv, &id, "1 + 1"), "2");
    let r = py(&srv, &id, "keep");
    assert_eq!(r["status"], "failed", "the state is gone: {r:#}");
    assert_eq!(r["execution"]["error"]["name"], "NameError", "{r:#}");
}

/// Memory: a run that allocates more than the sandbox's `memory_mb` fails with `MemoryError`
/// and `memory limit:`; the sandbox, its other contexts (with their state) and the restarted
/// context live on.
#[test]
fn exhausting_the_memory_fails_the_run_and_the_sandbox_lives_on() {
    let srv = Server::start();
    let sb = create(&srv, KEY_A, &json!({"limits": {"memory_mb": 256}}));
    let id = id_of(&sb).to_string();
    let other = new_context(&srv, &id, "python");
    let r = run(&srv, &id, json!({"code": "z = 7", "context_id": other}));
    assert_eq!(r["status"], "succeeded", "{r:#}");

    let r = run(
        &srv,
        &id,
        json!({"code": "x = bytearray(400 * 1024 * 1024)", "timeout_secs": 120}),
    );
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["execution"]["error"]["name"], "MemoryError", "{r:#}");
    assert!(
        r["failure_reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("memory limit:")),
        "{r:#}"
    );

    let v = srv.get(&sb_path(&id, ""), Some(KEY_A)).expect(200).json();
    assert_eq!(v["status"], "running", "{v:#}");
    assert_result(&py(&srv, &id, "1 + 1"), "2");
    let r = run(&srv, &id, json!({"code": "z", "context_id": other}));
    assert_result(&r, "7");
}

/// Issue 8: an OOM kill in the sandbox belongs to its victim. In a 256 MiB sandbox a
/// background command holds 150 MiB while a run allocates 100 MiB more: the holder is killed.
/// A run that then completes succeeds; a run whose kernel then exits on its own (`os._exit(3)`)
/// failed because its kernel died, not with a `MemoryError`; a run whose kernel is itself the
/// victim is still a `MemoryError`. The holders' statuses and the metrics show the OOM kills.
#[test]
fn an_oom_kill_of_another_process_is_not_the_runs_memory_error() {
    use super::commands::{background, oom_kills, py_alloc, wait_log};
    let srv = Server::start();
    let sb = create(&srv, KEY_A, &json!({"limits": {"memory_mb": 256}}));
    let id = id_of(&sb).to_string();
    assert_result(&py(&srv, &id, "1 + 1"), "2");
    let holder_killed = |holder: &str| {
        let path = sb_path(&id, &format!("/command/status/{holder}"));
        let v = eventually(Duration::from_secs(30), "the holder to end", || {
            let v = srv.get(&path, Some(KEY_A)).expect(200).json();
            (v["running"] == false).then_some(v)
        });
        assert_eq!(v["error"], "signal: killed (memory limit)", "{v}");
    };
    let hold = || {
        let h = background(
            &srv,
            &id,
            &py_alloc(150, "print('holding', flush=True); time.sleep(600)"),
        );
        wait_log(&srv, &id, &h, "holding");
        h
    };

    let holder = hold();
    let r = run(
        &srv,
        &id,
        json!({"code": "x = b'x' * (100 << 20)\nn = len(x) >> 20\ndel x\nn", "timeout_secs": 120}),
    );
    assert_result(&r, "100");
    holder_killed(&holder);
    assert_eq!(oom_kills(&srv, &id), 1);

    let holder = hold();
    let r = run(
        &srv,
        &id,
        json!({"code": "import os\nx = b'x' * (100 << 20)\nos._exit(3)", "timeout_secs": 120}),
    );
    holder_killed(&holder);
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["execution"]["error"]["name"], "KernelDied", "{r:#}");
    let why = r["failure_reason"].as_str().unwrap_or_default();
    assert!(!why.starts_with("memory limit"), "{r:#}");
    assert!(why.contains("exited with status 3"), "{r:#}");
    assert_eq!(oom_kills(&srv, &id), 2);

    // The kernel is the victim.
    let r = run(
        &srv,
        &id,
        json!({"code": "x = bytearray(400 << 20)", "timeout_secs": 120}),
    );
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["execution"]["error"]["name"], "MemoryError", "{r:#}");
    assert!(
        r["failure_reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("memory limit:")),
        "{r:#}"
    );
    assert_eq!(oom_kills(&srv, &id), 3);
    assert_result(&py(&srv, &id, "2 + 2"), "4");
}

/// A fork bomb (bash, in a sandbox of 64 processes): `DELETE` still answers 204 within 5 s,
/// the sandbox is gone at once, and none of its processes is left (the server's jail processes
/// come back to what they were before the sandbox).
#[test]
fn delete_during_a_fork_bomb_is_fast_and_leaves_no_process() {
    let srv = Server::start();
    let server = srv.pid();
    let baseline = settled_jail_count(server);
    let baseline_uids: HashSet<u32> = jail_procs(server).iter().map(|p| p.uid).collect();

    let sb = create(&srv, KEY_A, &json!({"limits": {"max_processes": 64}}));
    let id = id_of(&sb).to_string();
    let r = submit(
        &srv,
        &id,
        json!({"code": ":(){ :|:& };:", "language": "bash", "timeout_secs": 120}),
    );
    let run_id = id_of(&r).to_string();

    // The bomb is going: one uid new to this server has many processes.
    let (bomb_uid, n) = eventually(Duration::from_secs(60), "the fork bomb to grow", || {
        let mut by_uid: HashMap<u32, usize> = HashMap::new();
        for p in jail_procs(server) {
            if !baseline_uids.contains(&p.uid) {
                *by_uid.entry(p.uid).or_default() += 1;
            }
        }
        by_uid.into_iter().find(|&(_, n)| n >= 30)
    });
    // The sandbox's own uids: its agent's and its program's (see the jail slots).
    let mut uids = vec![bomb_uid];
    if (bomb_uid - JAIL_UID_BASE) % 2 == 1 {
        uids.push(bomb_uid - 1);
    }
    let bomb: Vec<Proc> = jail_procs(server)
        .into_iter()
        .filter(|p| uids.contains(&p.uid))
        .collect();
    assert!(n <= 64 + 2, "{n} processes in a sandbox of 64");

    let t = Instant::now();
    let r = send(
        srv.req("DELETE", &sb_path(&id, ""), Some(KEY_A))
            .timeout(Duration::from_secs(30)),
        None,
    );
    let took = t.elapsed();
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(took < Duration::from_secs(5), "DELETE took {took:?}");

    let (r, took) = quick(&srv, "GET", &sb_path(&id, ""), None);
    assert!(took < Duration::from_secs(2), "GET took {took:?}");
    r.error(404, Some("SANDBOX_DELETED"));
    let (r, _) = quick(
        &srv,
        "GET",
        &sb_path(&id, &format!("/code/runs/{run_id}")),
        None,
    );
    r.error(404, Some("SANDBOX_DELETED"));

    // Killed before the answer; a moment's grace for /proc.
    eventually(
        Duration::from_secs(2),
        "the bomb's processes to be gone",
        || {
            let left: Vec<Proc> = jail_procs(server)
                .into_iter()
                .filter(|p| uids.contains(&p.uid))
                .collect();
            let old: Vec<&Proc> = bomb.iter().filter(|p| alive(p)).collect();
            (left.is_empty() && old.is_empty()).then_some(())
        },
    );
    // Only the pre-started sandboxes are left (they may have finished starting meanwhile).
    let now = eventually(
        Duration::from_secs(10),
        "the jail processes to be back to the baseline",
        || {
            let n = jail_procs(server).len();
            (n <= baseline + 8).then_some(n)
        },
    );
    assert!(now <= baseline + 8, "{now} vs {baseline}");
    // The server still works.
    let (id2, _) = default_sandbox(&srv);
    assert_result(&py(&srv, &id2, "1 + 1"), "2");
}

/// Streaming (`?stream=true`): init (the run id), status, stdout as it is printed, the
/// execution count, the result, then execution_complete with the finished run; a failing run
/// streams its error; `Accept: text/event-stream` streams too; a client that disconnects
/// cancels its run and the context stays usable.
#[test]
fn streaming_sends_events_as_they_happen_and_disconnecting_cancels() {
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);
    assert_result(&py(&srv, &id, "1"), "1");

    let code = "print('a', flush=True)\nimport time\ntime.sleep(0.5)\nprint('b')\n42";
    let mut resp = open_stream(
        &srv,
        &sb_path(&id, "/code/runs?stream=true"),
        &json!({ "code": code }),
    );
    let events = read_events(&mut resp, |_| false);
    let seq = kinds(&events);
    let evs = no_pings(&events);
    let first = &evs[0].v;
    assert_eq!(first["type"], "init", "{seq:?}");
    let run_id = first["text"].as_str().unwrap_or_default().to_string();
    assert!(is_base32_id(&run_id, "run_"), "{first}");
    let statuses: Vec<&str> = evs
        .iter()
        .filter(|e| e.v["type"] == "status")
        .map(|e| e.v["text"].as_str().unwrap_or_default())
        .collect();
    assert!(statuses.contains(&"running"), "{seq:?}");
    assert_eq!(statuses.last(), Some(&"succeeded"), "{seq:?}");
    let order = ["queued", "running", "succeeded"];
    let pos: Vec<usize> = statuses
        .iter()
        .map(|s| {
            order
                .iter()
                .position(|o| o == s)
                .unwrap_or_else(|| panic!("status {s}: {seq:?}"))
        })
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{seq:?}");

    assert_eq!(text_of(&events, "stdout"), "a\nb\n", "{seq:?}");
    let a = stdout_arrival(&events, "a\n").unwrap();
    let b = stdout_arrival(&events, "b\n").unwrap();
    let gap = b.at.duration_since(a.at);
    assert!(
        gap >= Duration::from_millis(200),
        "'a' arrived only {gap:?} before 'b': {seq:?}"
    );
    let ts_gap = b.v["timestamp"].as_u64().unwrap() - a.v["timestamp"].as_u64().unwrap();
    assert!(ts_gap >= 200, "event timestamps {ts_gap} ms apart");

    let pos_of = |kind: &str| evs.iter().position(|e| e.v["type"] == kind);
    let count = pos_of("execution_count").unwrap_or_else(|| panic!("{seq:?}"));
    let result = pos_of("result").unwrap_or_else(|| panic!("{seq:?}"));
    assert!(
        count < result,
        "execution_count comes before the result: {seq:?}"
    );
    assert!(evs[count].v["execution_count"].is_u64(), "{}", evs[count].v);
    let res = &evs[result].v;
    assert_eq!(res["results"]["text"], "42", "{res}");
    assert_eq!(res["is_main_result"], true, "{res}");
    let last = &evs.last().unwrap().v;
    assert_eq!(last["type"], "execution_complete", "{seq:?}");
    assert_eq!(
        evs.iter()
            .filter(|e| e.v["type"] == "execution_complete")
            .count(),
        1,
        "{seq:?}"
    );
    assert!(last["execution_time"].is_u64(), "{last}");
    assert_eq!(last["run"]["id"], run_id.as_str(), "{last}");
    assert_eq!(last["run"]["status"], "succeeded", "{last}");
    assert_eq!(main_text(&last["run"]), Some("42"), "{last}");
    for w in events.windows(2) {
        assert!(
            w[0].v["timestamp"].as_u64() <= w[1].v["timestamp"].as_u64(),
            "timestamps go forward: {seq:?}"
        );
    }
    // The streamed run is stored like any other.
    let stored = get_run(&srv, &id, &run_id);
    assert_result(&stored, "42");
    assert_eq!(stdout_of(&stored), "a\nb\n", "{stored:#}");

    // A failing run streams its error.
    let mut resp = open_stream(
        &srv,
        &sb_path(&id, "/code/runs?stream=true"),
        &json!({"code": "1/0"}),
    );
    let events = read_events(&mut resp, |_| false);
    let seq = kinds(&events);
    let err = events
        .iter()
        .find(|e| e.v["type"] == "error")
        .unwrap_or_else(|| panic!("no error event: {seq:?}"));
    assert_eq!(err.v["error"]["ename"], "ZeroDivisionError", "{}", err.v);
    assert!(
        err.v["error"]["evalue"]
            .as_str()
            .is_some_and(|s| s.contains("division")),
        "{}",
        err.v
    );
    assert!(err.v["error"]["traceback"].is_array(), "{}", err.v);
    if let Some(c) = events.iter().find(|e| e.v["type"] == "execution_complete") {
        assert_eq!(c.v["run"]["status"], "failed", "{}", c.v);
    }
    let failed_id = events[0].v["text"].as_str().unwrap();
    assert_eq!(get_run(&srv, &id, failed_id)["status"], "failed");

    // Accept: text/event-stream without ?stream=true.
    let mut resp = open_stream(&srv, &sb_path(&id, "/code/runs"), &json!({"code": "2 + 3"}));
    let events = read_events(&mut resp, |_| false);
    let evs = no_pings(&events);
    assert_eq!(evs[0].v["type"], "init", "{:?}", kinds(&events));
    let last = &evs.last().unwrap().v;
    assert_eq!(last["type"], "execution_complete", "{:?}", kinds(&events));
    assert_eq!(main_text(&last["run"]), Some("5"), "{last}");

    // Disconnecting cancels.
    let mut resp = open_stream(
        &srv,
        &sb_path(&id, "/code/runs?stream=true"),
        &json!({"code": "while True: pass"}),
    );
    let events = read_events(&mut resp, |v| {
        v["type"] == "status" && v["text"] == "running"
    });
    let spin = events[0].v["text"].as_str().unwrap().to_string();
    assert_eq!(events.last().unwrap().v["text"], "running");
    assert_eq!(get_run(&srv, &id, &spin)["status"], "running");
    let gone = Instant::now();
    drop(resp);
    let v = wait_done(&srv, &id, &spin, Duration::from_secs(15));
    assert_eq!(v["status"], "cancelled", "{v:#}");
    assert!(
        gone.elapsed() < Duration::from_secs(10),
        "cancelled after {:?}",
        gone.elapsed()
    );
    assert_result(&py(&srv, &id, "1 + 1"), "2");
}

/// The execd-compatible routes (errors `{"code", "message"}`): ping, contexts (create, list,
/// get, delete, bulk delete), `POST /code` as a stream (success, error, default bash context),
/// interrupting with `DELETE /code?id=` by run id and by context id, and their bad input.
#[test]
fn execd_routes_contexts_code_and_interrupts() {
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);
    let r = srv.get(&sb_path(&id, "/ping"), Some(KEY_A)).expect(200);
    assert!(
        r.text.is_empty(),
        "ping answers an empty body: {:?}",
        r.text
    );

    let ctx = new_context(&srv, &id, "python");
    let list = srv
        .get(&sb_path(&id, "/code/contexts"), Some(KEY_A))
        .expect(200)
        .json();
    let entry = json!({"id": ctx, "language": "python"});
    assert!(
        list.as_array().expect("an array").contains(&entry),
        "{list:#}"
    );
    let list = srv
        .get(&sb_path(&id, "/code/contexts?language=python"), Some(KEY_A))
        .expect(200)
        .json();
    assert!(list.as_array().unwrap().contains(&entry), "{list:#}");
    let list = srv
        .get(&sb_path(&id, "/code/contexts?language=bash"), Some(KEY_A))
        .expect(200)
        .json();
    assert!(!list.as_array().unwrap().contains(&entry), "{list:#}");
    let v = srv
        .get(&sb_path(&id, &format!("/code/contexts/{ctx}")), Some(KEY_A))
        .expect(200)
        .json();
    assert_eq!(v["id"], ctx.as_str(), "{v}");
    assert_eq!(v["language"], "python", "{v}");

    // POST /code: success.
    let code_path = sb_path(&id, "/code");
    let mut resp = open_stream(
        &srv,
        &code_path,
        &json!({"code": "print(1)\n2+3", "context": {"id": ctx, "language": "python"}}),
    );
    let events = read_events(&mut resp, |_| false);
    let seq = kinds(&events);
    let evs = no_pings(&events);
    assert_eq!(evs[0].v["type"], "init", "{seq:?}");
    let init = evs[0].v["text"].as_str().unwrap_or_default();
    assert!(
        is_base32_id(init, "run_"),
        "init carries the run id: {seq:?}"
    );
    assert_eq!(text_of(&events, "stdout"), "1\n", "{seq:?}");
    let result = evs
        .iter()
        .position(|e| e.v["type"] == "result")
        .unwrap_or_else(|| panic!("no result: {seq:?}"));
    assert_eq!(evs[result].v["results"]["text"], "5", "{seq:?}");
    let count = evs
        .iter()
        .position(|e| e.v["type"] == "execution_count")
        .unwrap_or_else(|| panic!("no execution_count: {seq:?}"));
    assert!(count < result, "{seq:?}");
    let last = &evs.last().unwrap().v;
    assert_eq!(last["type"], "execution_complete", "{seq:?}");
    assert!(last["execution_time"].is_u64(), "{last}");
    assert!(!evs.iter().any(|e| e.v["type"] == "error"), "{seq:?}");

    // POST /code: failure ends with the error event.
    let mut resp = open_stream(
        &srv,
        &code_path,
        &json!({"code": "1/0", "context": {"id": ctx, "language": "python"}}),
    );
    let events = read_events(&mut resp, |_| false);
    let seq = kinds(&events);
    let evs = no_pings(&events);
    let last = &evs.last().unwrap().v;
    assert_eq!(last["type"], "error", "{seq:?}");
    assert_eq!(last["error"]["ename"], "ZeroDivisionError", "{last}");
    assert!(last["error"]["evalue"].is_string(), "{last}");
    assert!(last["error"]["traceback"].is_array(), "{last}");
    assert!(
        evs.iter()
            .any(|e| e.v["type"] == "status" && e.v["text"] == "error"),
        "{seq:?}"
    );
    assert!(
        !evs.iter().any(|e| e.v["type"] == "execution_complete"),
        "{seq:?}"
    );

    // The state of the context is there; the default python context is another one.
    let mut resp = open_stream(
        &srv,
        &code_path,
        &json!({"code": "x = 10\nx * 2", "context": {"language": "python"}}),
    );
    let events = read_events(&mut resp, |_| false);
    let r = events.iter().find(|e| e.v["type"] == "result");
    assert_eq!(
        r.map(|e| e.v["results"]["text"].clone()),
        Some(json!("20")),
        "{:?}",
        kinds(&events)
    );

    // Without a language: the default bash context.
    let mut resp = open_stream(&srv, &code_path, &json!({"code": "echo hi"}));
    let events = read_events(&mut resp, |_| false);
    let seq = kinds(&events);
    assert_eq!(text_of(&events, "stdout"), "hi\n", "{seq:?}");
    assert_eq!(
        no_pings(&events).last().unwrap().v["type"],
        "execution_complete",
        "{seq:?}"
    );

    // DELETE /code?id= interrupts, by run id (init.text) then by context id; the context
    // stays usable.
    for by_context in [false, true] {
        let mut resp = open_stream(
            &srv,
            &code_path,
            &json!({"code": "print('started', flush=True)\nimport time\ntime.sleep(30)",
                    "context": {"id": ctx, "language": "python"}}),
        );
        let events = read_events(&mut resp, |v| v["type"] == "stdout");
        let target = if by_context {
            ctx.clone()
        } else {
            events[0].v["text"].as_str().unwrap().to_string()
        };
        let t = Instant::now();
        let r = call(
            &srv,
            "DELETE",
            &format!("{code_path}?id={target}"),
            Some(KEY_A),
            None,
        );
        assert_eq!(r.status, 200, "DELETE /code?id={target}: {}", r.text);
        let rest = read_events(&mut resp, |_| false);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the stream ended {:?} after the interrupt",
            t.elapsed()
        );
        let seq = kinds(&rest);
        let last = &no_pings(&rest)
            .last()
            .unwrap_or_else(|| panic!("nothing after the interrupt"))
            .v;
        assert_eq!(last["type"], "error", "{seq:?}");
        assert_eq!(last["error"]["ename"], "ContextCancelled", "{last}");
        let mut resp = open_stream(
            &srv,
            &code_path,
            &json!({"code": "1 + 1", "context": {"id": ctx, "language": "python"}}),
        );
        let events = read_events(&mut resp, |_| false);
        let r = events.iter().find(|e| e.v["type"] == "result");
        assert_eq!(
            r.map(|e| e.v["results"]["text"].clone()),
            Some(json!("2")),
            "{:?}",
            kinds(&events)
        );
    }

    // Bad input, before any stream.
    for (body, status, code) in [
        (json!({}), 400, Some("INVALID_REQUEST_BODY")),
        (json!({"code": ""}), 400, Some("INVALID_REQUEST_BODY")),
        (
            json!({"code": "1", "context": {"id": UNKNOWN_CTX, "language": "python"}}),
            404,
            Some("CONTEXT_NOT_FOUND"),
        ),
        (
            json!({"code": "1", "context": {"language": "cobol"}}),
            400,
            None,
        ),
    ] {
        let r = srv.post(&code_path, Some(KEY_A), &body);
        execd_error(&r, status, code);
    }
    let r = srv.post_raw(&code_path, Some(KEY_A), b"{nope".to_vec());
    execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
    for body in [json!({"language": "cobol"}), json!({"language": "c"})] {
        let r = srv.post(&sb_path(&id, "/code/context"), Some(KEY_A), &body);
        execd_error(&r, 400, None);
    }
    let r = srv.post_raw(&sb_path(&id, "/code/context"), Some(KEY_A), b"{".to_vec());
    execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
    let r = call(&srv, "DELETE", &code_path, Some(KEY_A), None);
    execd_error(&r, 400, Some("MISSING_QUERY"));
    let r = call(
        &srv,
        "DELETE",
        &format!("{code_path}?id={UNKNOWN_CTX}"),
        Some(KEY_A),
        None,
    );
    execd_error(&r, 404, None);
    let r = call(
        &srv,
        "DELETE",
        &format!("{code_path}?id={UNKNOWN_RUN}"),
        Some(KEY_A),
        None,
    );
    execd_error(&r, 404, None);
    let r = srv.get(
        &sb_path(&id, &format!("/code/contexts/{UNKNOWN_CTX}")),
        Some(KEY_A),
    );
    execd_error(&r, 404, Some("CONTEXT_NOT_FOUND"));

    // Deleting a context.
    let one = sb_path(&id, &format!("/code/contexts/{ctx}"));
    let r = call(&srv, "DELETE", &one, Some(KEY_A), None);
    assert_eq!(r.status, 200, "{}", r.text);
    execd_error(&srv.get(&one, Some(KEY_A)), 404, Some("CONTEXT_NOT_FOUND"));
    execd_error(
        &call(&srv, "DELETE", &one, Some(KEY_A), None),
        404,
        Some("CONTEXT_NOT_FOUND"),
    );
    let r = srv.post(
        &code_path,
        Some(KEY_A),
        &json!({"code": "1", "context": {"id": ctx, "language": "python"}}),
    );
    execd_error(&r, 404, Some("CONTEXT_NOT_FOUND"));
    let r = srv.post(
        &sb_path(&id, "/code/runs"),
        Some(KEY_A),
        &json!({"code": "1", "context_id": ctx}),
    );
    r.error(404, Some("CONTEXT_NOT_FOUND"));
    let list = srv
        .get(&sb_path(&id, "/code/contexts"), Some(KEY_A))
        .expect(200)
        .json();
    assert!(
        !list.as_array().unwrap().iter().any(|c| c["id"] == ctx),
        "{list:#}"
    );

    // Bulk delete: the language is required.
    let all = sb_path(&id, "/code/contexts");
    let r = call(&srv, "DELETE", &all, Some(KEY_A), None);
    execd_error(&r, 400, Some("MISSING_QUERY"));
    let r = call(
        &srv,
        "DELETE",
        &format!("{all}?language=bash"),
        Some(KEY_A),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let list = srv
        .get(&format!("{all}?language=bash"), Some(KEY_A))
        .expect(200)
        .json();
    assert_eq!(list, json!([]), "the bash contexts are gone");

    // Sandbox-level errors and credentials in the execd shape.
    let r = srv.get(&sb_path(UNKNOWN_SB, "/ping"), Some(KEY_A));
    execd_error(&r, 404, Some("SANDBOX_NOT_FOUND"));
    let r = srv.get(&sb_path(&id, "/code/contexts"), None);
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json()["code"], "UNAUTHORIZED", "{}", r.text);
}

/// The access token: alone, it opens its own sandbox's sub-routes (native and execd); it opens
/// no other sandbox of the same tenant and nothing else; it is no API key; missing or wrong
/// credentials give 401.
#[test]
fn the_access_token_opens_its_own_sandbox_only() {
    let srv = Server::start();
    let (one, token) = default_sandbox(&srv);
    let (two, token_two) = default_sandbox(&srv);
    assert_ne!(token, token_two);

    let r = with_token(
        &srv,
        "POST",
        &sb_path(&one, "/code/runs?wait=true"),
        &token,
        Some(&json!({"code": "6 * 7"})),
    );
    let v = r.expect(200).json();
    assert_result(&v, "42");
    let run_id = id_of(&v).to_string();
    let v = with_token(
        &srv,
        "GET",
        &sb_path(&one, &format!("/code/runs/{run_id}")),
        &token,
        None,
    )
    .expect(200)
    .json();
    assert_result(&v, "42");
    with_token(&srv, "GET", &sb_path(&one, "/code/runs"), &token, None).expect(200);
    with_token(&srv, "GET", &sb_path(&one, "/ping"), &token, None).expect(200);
    with_token(&srv, "GET", &sb_path(&one, "/code/contexts"), &token, None).expect(200);
    let resp = send(
        srv.req("POST", &sb_path(&one, "/code"), None)
            .header(TOKEN_HEADER, &token)
            .header("Accept", "text/event-stream"),
        Some(&json!({"code": "7", "context": {"language": "python"}})),
    )
    .expect(200);
    assert!(
        resp.text.contains("\"execution_complete\""),
        "{}",
        resp.text
    );

    // Not on the other sandbox of the same tenant.
    let code = json!({"code": "1"});
    for (method, rest, body) in [
        ("POST", "/code/runs?wait=true", Some(&code)),
        ("POST", "/code/runs", Some(&code)),
        ("GET", "/code/runs", None),
        ("GET", "/ping", None),
        ("GET", "/code/contexts", None),
    ] {
        let r = with_token(&srv, method, &sb_path(&two, rest), &token, body);
        refused(
            &r,
            &[401, 404],
            &format!("{method} {rest} of another sandbox"),
        );
    }
    let v = srv
        .get(&sb_path(&two, "/code/runs"), Some(KEY_A))
        .expect(200)
        .json();
    assert_eq!(v["runs"], json!([]), "nothing ran in the other one: {v:#}");

    // Nothing else: no list, no creation, no executions; and it is no API key.
    for (method, path, body) in [
        ("GET", "/v1/sandboxes".to_string(), None),
        ("POST", "/v1/sandboxes".to_string(), Some(json!({}))),
        ("GET", "/api/v1/executions".to_string(), None),
        (
            "POST",
            "/api/v1/execute".to_string(),
            Some(json!({"language": "python", "code": "print(1)"})),
        ),
    ] {
        let r = with_token(&srv, method, &path, &token, body.as_ref());
        assert_eq!(
            r.status, 401,
            "{method} {path} with a sandbox token: {}",
            r.text
        );
    }
    let r = call(
        &srv,
        "POST",
        &sb_path(&one, "/code/runs?wait=true"),
        Some(&token),
        Some(&code),
    );
    assert_eq!(r.status, 401, "the token as X-API-Key: {}", r.text);
    let r = send(
        srv.req("GET", &sb_path(&one, "/code/runs"), None)
            .header("Authorization", format!("Bearer {token}")),
        None,
    );
    assert_eq!(r.status, 401, "the token as a bearer key: {}", r.text);

    // Missing or wrong credentials.
    let wrong = "0".repeat(64);
    for (what, r) in [
        (
            "no credentials",
            call(&srv, "GET", &sb_path(&one, "/code/runs"), None, None),
        ),
        (
            "a wrong token",
            with_token(&srv, "GET", &sb_path(&one, "/code/runs"), &wrong, None),
        ),
        (
            "no credentials",
            call(
                &srv,
                "POST",
                &sb_path(&one, "/code/runs?wait=true"),
                None,
                Some(&code),
            ),
        ),
    ] {
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_error_body(&r.json());
    }
    for r in [
        call(&srv, "GET", &sb_path(&one, "/ping"), None, None),
        with_token(&srv, "GET", &sb_path(&one, "/ping"), &wrong, None),
    ] {
        assert_eq!(r.status, 401, "{}", r.text);
        assert_eq!(r.json()["code"], "UNAUTHORIZED", "{}", r.text);
    }

    // A deleted sandbox's token opens nothing.
    let r = call(&srv, "DELETE", &sb_path(&one, ""), Some(KEY_A), None);
    assert_eq!(r.status, 204, "{}", r.text);
    let r = with_token(&srv, "GET", &sb_path(&one, "/code/runs"), &token, None);
    refused(&r, &[401, 404], "the token of a deleted sandbox");
}

/// Tenants: tenant B gets exactly the 404 of a sandbox that never existed for A's sandbox, its
/// runs, its contexts and its artifacts, on native and execd routes; B's lists do not show it;
/// B cannot cancel, interrupt, renew or delete anything of A's.
#[test]
fn another_tenant_sees_nothing_of_a_sandbox() {
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);
    let done = py(&srv, &id, "'mine'");
    assert_result(&done, "'mine'");
    let done = id_of(&done).to_string();
    let ctx = get_run(&srv, &id, &done)["context_id"]
        .as_str()
        .unwrap()
        .to_string();
    let long = submit(&srv, &id, json!({"code": "import time\ntime.sleep(60)"}));
    let long = id_of(&long).to_string();
    wait_status(&srv, &id, &long, "running", Duration::from_secs(30));
    let before = srv.get(&sb_path(&id, ""), Some(KEY_A)).expect(200).json();

    // Exactly the answer for an id that never existed (but for the id itself).
    let unknown = srv.get(&sb_path(UNKNOWN_SB, ""), Some(KEY_B));
    let unknown = unknown.error(404, Some("SANDBOX_NOT_FOUND"));
    let theirs = srv.get(&sb_path(&id, ""), Some(KEY_B));
    let theirs = theirs.error(404, Some("SANDBOX_NOT_FOUND"));
    assert_eq!(
        theirs["detail"].as_str().unwrap().replace(&id, "<id>"),
        unknown["detail"]
            .as_str()
            .unwrap()
            .replace(UNKNOWN_SB, "<id>"),
        "another tenant's sandbox answers like a missing one"
    );

    let code = json!({"code": "1"});
    let renew = json!({"timeout_secs": 5});
    for (method, rest, body) in [
        ("GET", String::new(), None),
        ("POST", "/timeout".to_string(), Some(&renew)),
        ("DELETE", String::new(), None),
        ("GET", "/code/runs".to_string(), None),
        ("GET", format!("/code/runs/{done}"), None),
        ("GET", format!("/code/runs/{long}"), None),
        ("POST", "/code/runs".to_string(), Some(&code)),
        ("POST", "/code/runs?wait=true".to_string(), Some(&code)),
        ("POST", format!("/code/runs/{long}/cancel"), None),
        ("GET", format!("/artifacts?run_id={done}"), None),
    ] {
        let r = call(&srv, method, &sb_path(&id, &rest), Some(KEY_B), body);
        r.error(404, Some("SANDBOX_NOT_FOUND"));
    }
    let py_ctx = json!({"language": "python"});
    let in_ctx = json!({"code": "1", "context": {"id": ctx, "language": "python"}});
    for (method, rest, body) in [
        ("GET", "/ping".to_string(), None),
        ("GET", "/code/contexts".to_string(), None),
        ("GET", format!("/code/contexts/{ctx}"), None),
        ("DELETE", format!("/code/contexts/{ctx}"), None),
        ("DELETE", "/code/contexts?language=python".to_string(), None),
        ("POST", "/code/context".to_string(), Some(&py_ctx)),
        ("POST", "/code".to_string(), Some(&in_ctx)),
        ("DELETE", format!("/code?id={long}"), None),
        ("DELETE", format!("/code?id={ctx}"), None),
    ] {
        let r = call(&srv, method, &sb_path(&id, &rest), Some(KEY_B), body);
        execd_error(&r, 404, Some("SANDBOX_NOT_FOUND"));
    }

    // B's lists.
    for q in ["", "?status=all", "?status=running", "?status=terminated"] {
        let list = srv
            .get(&format!("/v1/sandboxes{q}"), Some(KEY_B))
            .expect(200)
            .json();
        assert!(listed(&list, &id).is_none(), "{q}: {list:#}");
    }

    // B's own sandbox token does not open A's sandbox.
    let b = create(&srv, KEY_B, &json!({}));
    let b_token = b["access_token"].as_str().unwrap();
    let r = with_token(&srv, "GET", &sb_path(&id, "/code/runs"), b_token, None);
    refused(&r, &[401, 404], "B's sandbox token on A's sandbox");
    // A does not see B's either.
    let r = srv.get(&sb_path(id_of(&b), ""), Some(KEY_A));
    r.error(404, Some("SANDBOX_NOT_FOUND"));

    // Nothing of A's changed.
    let v = get_run(&srv, &id, &long);
    assert_eq!(
        v["status"], "running",
        "B's cancel and interrupt did nothing: {v:#}"
    );
    let after = srv.get(&sb_path(&id, ""), Some(KEY_A)).expect(200).json();
    assert_eq!(
        after["expires_at"], before["expires_at"],
        "B's renewal did nothing"
    );
    srv.get(&sb_path(&id, &format!("/code/contexts/{ctx}")), Some(KEY_A))
        .expect(200);
    let list = srv.get("/v1/sandboxes", Some(KEY_A)).expect(200).json();
    assert!(listed(&list, &id).is_some(), "{list:#}");
    let v = cancel(&srv, KEY_A, &id, &long).expect(200).json();
    assert_eq!(v["status"], "cancelled", "{v:#}");
}

/// Artifacts: a file a run writes comes back with its name, size, SHA-256 and MIME type, and
/// signed URLs that need no credentials (download: exact bytes, attachment; preview: inline
/// with a `sandbox` CSP); a changed URL is refused; changed files and subdirectories count;
/// a symlink to a host file never leaks that file.
#[test]
fn artifacts_are_signed_exact_and_never_follow_links() {
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);
    let content = b"a,b\n1,2\n";
    let r = py(&srv, &id, "open('out.csv', 'w').write('a,b\\n1,2\\n')");
    assert_result(&r, "8");
    let arts = r["execution"]["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 1, "{r:#}");
    let art = &arts[0];
    assert!(is_base32_id(id_of(art), "art_"), "{art:#}");
    assert_eq!(art["name"], "out.csv", "{art:#}");
    assert_eq!(art["size_bytes"], 8, "{art:#}");
    assert_eq!(art["sha256"], sha256_hex(content).as_str(), "{art:#}");
    assert_eq!(art["mime_type"], "text/csv", "{art:#}");
    assert_eq!(art["context_id"], r["context_id"], "{art:#}");
    assert_eq!(
        art["execution_count"], r["execution"]["execution_count"],
        "{art:#}"
    );
    assert!(is_timestamp(&art["created_at"]), "{art:#}");
    assert!(ms(&art["expires_at"]) > now_ms(), "{art:#}");
    assert_eq!(art["metadata"], json!({}), "{art:#}");

    // The signed URLs, without credentials.
    let http = client();
    let fetch = |url: &str| {
        let r = http
            .get(url)
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().expect("read the body").to_vec();
        (status, headers, bytes)
    };
    let header = |h: &reqwest::header::HeaderMap, name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let download = art["download_url"].as_str().unwrap().to_string();
    let preview = art["preview_url"].as_str().unwrap().to_string();
    let art_id = id_of(art);
    assert!(
        download.contains(&format!("/v1/artifacts/{art_id}/download?")),
        "{download}"
    );
    assert!(
        preview.contains(&format!("/v1/artifacts/{art_id}/preview?")),
        "{preview}"
    );
    let (status, headers, bytes) = fetch(&download);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(bytes, content);
    assert!(
        header(&headers, "content-disposition").starts_with("attachment"),
        "{headers:?}"
    );
    let (status, headers, bytes) = fetch(&preview);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(bytes, content);
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("sandbox"), "preview CSP: {headers:?}");
    assert!(
        !header(&headers, "content-disposition").starts_with("attachment"),
        "the preview is inline: {headers:?}"
    );

    // A changed URL: 403 INVALID_SIGNATURE.
    let change = |url: &str, param: &str, f: &dyn Fn(&str) -> String| -> String {
        let key = format!("{param}=");
        let start = url.find(&key).unwrap_or_else(|| panic!("{param} in {url}")) + key.len();
        let end = url[start..].find('&').map_or(url.len(), |e| start + e);
        format!("{}{}{}", &url[..start], f(&url[start..end]), &url[end..])
    };
    let flip = |s: &str| {
        let mut c: Vec<char> = s.chars().collect();
        c[0] = if c[0] == 'a' { 'b' } else { 'a' };
        c.into_iter().collect::<String>()
    };
    let later = |s: &str| (s.parse::<u64>().expect("numeric expires") + 1).to_string();
    for url in [&download, &preview] {
        for bad in [
            change(url, "signature", &flip),
            change(url, "expires", &later),
        ] {
            let (status, _, bytes) = fetch(&bad);
            assert_eq!(status, 403, "{bad}: {}", String::from_utf8_lossy(&bytes));
            let v: Value = serde_json::from_slice(&bytes).expect("a JSON error");
            assert_error_body(&v);
            assert_eq!(v["code"], "INVALID_SIGNATURE", "{v}");
        }
    }

    // The sandbox's list, with fresh URLs.
    let v = srv
        .get(
            &sb_path(&id, &format!("/artifacts?run_id={}", id_of(&r))),
            Some(KEY_A),
        )
        .expect(200)
        .json();
    let items = v
        .as_array()
        .or_else(|| v["artifacts"].as_array())
        .unwrap_or_else(|| panic!("an artifact list: {v:#}"));
    assert_eq!(items.len(), 1, "{v:#}");
    assert_eq!(items[0]["id"], art_id, "{v:#}");
    let (status, _, bytes) = fetch(items[0]["download_url"].as_str().unwrap());
    assert_eq!((status, bytes.as_slice()), (200, &content[..]));

    // A run that writes nothing has none; a changed file and a file in a subdirectory count.
    let r = py(&srv, &id, "1 + 1");
    assert_eq!(r["execution"]["artifacts"], json!([]), "{r:#}");
    let r = py(
        &srv,
        &id,
        "import os\nopen('out.csv', 'a').write('3,4\\n')\nos.makedirs('plots', exist_ok=True)\n\
         open('plots/fig.txt', 'w').write('x')",
    );
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let mut names: Vec<(String, u64)> = r["execution"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["size_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("out.csv".to_string(), 12),
            ("plots/fig.txt".to_string(), 1)
        ],
        "{r:#}"
    );

    // A planted link to a host file never brings that file out.
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    let r = py(
        &srv,
        &id,
        "import os\nos.symlink('/etc/passwd', 'link.txt')\nos.symlink('/etc', 'etc')",
    );
    assert_eq!(r["status"], "succeeded", "{r:#}");
    for a in r["execution"]["artifacts"].as_array().unwrap() {
        let (status, _, bytes) = fetch(a["download_url"].as_str().unwrap());
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            status != 200 || (bytes != passwd && !text.contains("root:x:0:0")),
            "an artifact leaks /etc/passwd: {a:#}"
        );
        assert_ne!(a["size_bytes"].as_u64(), Some(passwd.len() as u64), "{a:#}");
    }
}

/// Restart: a sandbox does not survive its server; on a new server over the same data it
/// answers `404 SANDBOX_TERMINATED` saying so, the old jail processes are gone, and new
/// sandboxes work.
#[test]
fn sandboxes_of_a_restarted_server_are_terminated() {
    let mut first = Server::start();
    let data_dir = first.data_dir.clone();
    let (id, _) = default_sandbox(&first);
    let done = py(&first, &id, "1 + 1");
    assert_result(&done, "2");
    let done = id_of(&done).to_string();

    // Freeze the server so that it starts no new jail, note its jails, and kill it.
    let pid = first.pid();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    let jails = jail_procs(pid);
    first.kill9();
    assert!(!jails.is_empty(), "the server had jails");
    eventually(
        Duration::from_secs(15),
        "the jails of the killed server to be gone",
        || (!jails.iter().any(alive)).then_some(()),
    );

    // A new server on the same data (kept by `first`).
    let second = Server::with(crate::server::Opts::new().data_dir(&data_dir));
    let (r, took) = quick(&second, "GET", &sb_path(&id, ""), None);
    assert!(took < Duration::from_secs(2), "{took:?}");
    let v = r.error(404, Some("SANDBOX_TERMINATED"));
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("restart"),
        "the detail says the server restarted: {v}"
    );
    let code = json!({"code": "1"});
    for (method, rest, body) in [
        ("POST", "/code/runs".to_string(), Some(&code)),
        ("GET", format!("/code/runs/{done}"), None),
        (
            "POST",
            "/timeout".to_string(),
            Some(&json!({"timeout_secs": 60})),
        ),
    ] {
        let (r, _) = quick(&second, method, &sb_path(&id, &rest), body);
        r.error(404, Some("SANDBOX_TERMINATED"));
    }
    let (r, _) = quick(&second, "GET", &sb_path(&id, "/ping"), None);
    execd_error(&r, 404, Some("SANDBOX_TERMINATED"));
    let list = second.get("/v1/sandboxes", Some(KEY_A)).expect(200).json();
    assert!(listed(&list, &id).is_none(), "not running: {list:#}");
    let list = second
        .get("/v1/sandboxes?status=all", Some(KEY_A))
        .expect(200)
        .json();
    let item = listed(&list, &id).unwrap_or_else(|| panic!("the record is kept: {list:#}"));
    assert_ne!(item["status"], "running", "{item:#}");
    assert!(is_timestamp(&item["ended_at"]), "{item:#}");

    let (id2, _) = default_sandbox(&second);
    assert_result(&py(&second, &id2, "1 + 1"), "2");
}

/// Read-your-writes: a run's answer (`?wait=true`) comes only after its record and its
/// artifacts are in the store, so every artifact link in the answer works at once — tried
/// many times in a row while other clients keep the server and its store busy.
#[test]
fn artifacts_download_right_after_the_answer_under_load() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let srv = Server::start();
    let (id, _) = default_sandbox(&srv);
    let stop = AtomicBool::new(false);
    let executed = AtomicUsize::new(0);
    // Sets `stop` when the main loop ends, also when one of its assertions fails: the scope
    // joins the loader threads before it lets a panic through, so without this a failure
    // would leave the test waiting for them forever instead of failing.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let _stop_loaders = StopOnDrop(&stop);
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let r = srv.post(
                        "/api/v1/execute",
                        Some(KEY_B),
                        &json!({"language": "python", "code": "print(sum(range(1000)))"}),
                    );
                    assert_eq!(r.status, 200, "{}", r.text);
                    executed.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let http = client();
        for i in 0..40 {
            let content = format!("run {i}\n");
            let r = py(
                &srv,
                &id,
                &format!("open('out-{i}.txt', 'w').write({content:?})"),
            );
            assert_eq!(r["status"], "succeeded", "{r:#}");
            let arts = r["execution"]["artifacts"].as_array().unwrap();
            assert_eq!(arts.len(), 1, "{r:#}");
            let url = arts[0]["download_url"].as_str().unwrap();
            for attempt in 0..3 {
                let resp = http.get(url).send().expect("download");
                let status = resp.status().as_u16();
                let body = resp.bytes().expect("body").to_vec();
                assert_eq!(
                    status,
                    200,
                    "run {i}, download {attempt} right after the answer: {}",
                    String::from_utf8_lossy(&body)
                );
                assert_eq!(body, content.as_bytes(), "run {i}");
            }
            // The stored record says what the answer said.
            let stored = srv
                .get(
                    &sb_path(&id, &format!("/artifacts?run_id={}", id_of(&r))),
                    Some(KEY_A),
                )
                .expect(200)
                .json();
            let items = stored
                .as_array()
                .or_else(|| stored["artifacts"].as_array())
                .cloned()
                .unwrap_or_default();
            assert_eq!(items.len(), 1, "run {i}: {stored:#}");
        }
    });
    assert!(
        executed.load(Ordering::SeqCst) > 0,
        "the concurrent one-shot executions ran"
    );
}
