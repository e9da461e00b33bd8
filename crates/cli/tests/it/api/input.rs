//! Bad input is a clear 4xx with `{"detail", "code"}`, never a 5xx, and never runs anything.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::commands::{sandbox, sh};
use crate::server::{KEY_A, Opts, Server};

/// Routes that take an `ExecuteRequest` body.
const EXECUTE_ROUTES: &[&str] = &[
    "/api/v1/execute",
    "/api/v1/execute?stream=true",
    "/api/v1/execute/async",
    "/api/submit",
    "/api/submit?wait=true",
];

fn nested_arrays(depth: usize) -> Vec<u8> {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
}

#[test]
fn malformed_bodies_are_400_and_never_5xx() {
    let srv = Server::start();
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("an empty body", vec![]),
        ("whitespace", b"  \n ".to_vec()),
        ("truncated JSON", br#"{"language":"#.to_vec()),
        ("not JSON", b"print(42)".to_vec()),
        (
            "trailing garbage",
            br#"{"language":"python","code":"print(1)"} x"#.to_vec(),
        ),
        ("100000 nested arrays", nested_arrays(100_000)),
        (
            "100000 nested objects",
            format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000)).into_bytes(),
        ),
        (
            "invalid UTF-8",
            b"{\"language\":\"python\",\"code\":\"print(1)\xff\xfe\"}".to_vec(),
        ),
        (
            "a lone surrogate escape",
            br#"{"language":"python","code":"print('\ud800')"}"#.to_vec(),
        ),
        (
            "a number out of range",
            br#"{"language":"python","code":"x","timeout":1e400}"#.to_vec(),
        ),
    ];
    let typed: Vec<(&str, Value)> = vec![
        ("a string", json!("hello")),
        ("a number", json!(42)),
        ("null", Value::Null),
        ("an array", json!([1, 2])),
        ("no code", json!({"language": "python"})),
        ("no language", json!({"code": "print(1)"})),
        (
            "code of the wrong type",
            json!({"language": "python", "code": 42}),
        ),
        (
            "language of the wrong type",
            json!({"language": ["python"], "code": "x"}),
        ),
        (
            "stdin of the wrong type",
            json!({"language": "python", "code": "x", "stdin": 5}),
        ),
        (
            "args of the wrong type",
            json!({"language": "python", "code": "x", "args": "a"}),
        ),
        (
            "args with a number",
            json!({"language": "python", "code": "x", "args": [1]}),
        ),
        (
            "environment as a list",
            json!({"language": "python", "code": "x", "environment": [1]}),
        ),
        (
            "an environment value of the wrong type",
            json!({"language": "python", "code": "x", "environment": {"A": 1}}),
        ),
        (
            "an invalid environment name",
            json!({"language": "python", "code": "x", "environment": {"1A=": "v"}}),
        ),
        (
            "files as an object",
            json!({"language": "python", "code": "x", "files": {}}),
        ),
        (
            "a file without content",
            json!({"language": "python", "code": "x", "files": [{"name": "a.py"}]}),
        ),
        (
            "a file name escaping the workspace",
            json!({"language": "python", "code": "x",
                   "files": [{"name": "../a.py", "content": ""}]}),
        ),
        (
            "bad base64",
            json!({"language": "python", "code": "x",
                   "files": [{"name": "a.bin", "content": "!!!", "encoding": "base64"}]}),
        ),
        (
            "a file named like the main source",
            json!({"language": "python", "code": "x",
                   "files": [{"name": "main.py", "content": ""}]}),
        ),
        (
            "an unknown file encoding",
            json!({"language": "python", "code": "x",
                   "files": [{"name": "a.txt", "content": "x", "encoding": "rot13"}]}),
        ),
        (
            "300 arguments",
            json!({"language": "python", "code": "x", "args": vec!["a"; 300]}),
        ),
        (
            "a 100 KiB environment",
            json!({"language": "python", "code": "x",
                   "environment": {"BIG": "x".repeat(100 << 10)}}),
        ),
        (
            "limits as a number",
            json!({"language": "python", "code": "x", "limits": 5}),
        ),
        (
            "network on",
            json!({"language": "python", "code": "x", "network": true}),
        ),
        (
            "network as a string",
            json!({"language": "python", "code": "x", "network": "no"}),
        ),
        (
            "session_id of the wrong type",
            json!({"language": "python", "code": "x", "session_id": 7}),
        ),
        (
            "version of the wrong type",
            json!({"language": "python", "code": "x", "version": 3}),
        ),
        (
            "an unavailable version",
            json!({"language": "python", "code": "x", "version": "1.0"}),
        ),
        (
            "callback_url of the wrong type",
            json!({"language": "python", "code": "x", "callback_url": 5}),
        ),
    ];
    for route in EXECUTE_ROUTES {
        for (what, body) in &raw {
            let r = srv.post_raw(route, Some(KEY_A), body.clone());
            assert!(
                r.status < 500,
                "{route} with {what}: {} {}",
                r.status,
                r.text
            );
            r.error(400, None);
        }
        for (what, body) in &typed {
            let r = srv.post(route, Some(KEY_A), body);
            assert_eq!(r.status, 400, "{route} with {what}: {}", r.text);
            r.error(400, None);
        }
    }
    // The deep documents are refused by the JSON parser, not by a size limit.
    let r = srv.post_raw("/api/v1/execute", Some(KEY_A), nested_arrays(100_000));
    r.error(400, Some("INVALID_JSON"));
    let r = srv.post_raw("/api/v1/execute/batch", Some(KEY_A), nested_arrays(100_000));
    r.error(400, Some("INVALID_JSON"));
    // An unknown language: 400 UNSUPPORTED_LANGUAGE on every route.
    for route in EXECUTE_ROUTES {
        let r = srv.post(
            route,
            Some(KEY_A),
            &json!({"language": "cobol-2099", "code": "x"}),
        );
        let v = r.error(400, Some("UNSUPPORTED_LANGUAGE"));
        assert_eq!(v["detail"], "Unsupported language: cobol-2099");
    }
    // Unknown fields are ignored.
    let v = srv.execute(&json!({"language": "python", "code": "print(1)", "colour": "blue"}));
    assert_eq!(v["stdout"], "1\n");
    // Only that one ran.
    assert_eq!(srv.list_all(KEY_A, "").len(), 1);
}

#[test]
fn a_body_over_the_limit_is_413() {
    let srv = Server::with(Opts::new().config("max_body_bytes = 4096\n"));
    let big = json!({"language": "python", "code": format!("# {}\nprint(1)", "x".repeat(5000))});
    for route in EXECUTE_ROUTES {
        let r = srv.post(route, Some(KEY_A), &big);
        r.error(413, Some("PAYLOAD_TOO_LARGE"));
    }
    let r = srv.post("/api/v1/execute/batch", Some(KEY_A), &json!([big.clone()]));
    r.error(413, Some("PAYLOAD_TOO_LARGE"));
    let r = srv.post_raw("/api/v1/execute", Some(KEY_A), nested_arrays(100_000));
    r.error(413, Some("PAYLOAD_TOO_LARGE"));
    // Just under the limit is fine.
    let small = json!({"language": "python", "code": format!("# {}\nprint(1)", "x".repeat(3000))});
    assert_eq!(srv.execute(&small)["stdout"], "1\n");
    assert_eq!(srv.list_all(KEY_A, "").len(), 1);
}

#[test]
fn invalid_limits_are_400_and_never_mean_unlimited() {
    let srv = Server::start();
    let bad_for_all: Vec<Value> = vec![
        json!(-1),
        json!(0),
        json!(-0.5),
        json!(1e12),
        json!(1e308),
        json!(18446744073709551615u64),
        json!("5"),
        json!("unlimited"),
        json!([1]),
        json!({}),
        json!(true),
    ];
    let fields = [
        "wall_time",
        "cpu_time",
        "memory_mb",
        "max_processes",
        "max_output_bytes",
        "max_file_size_mb",
    ];
    let mut cases: Vec<(String, Value)> = Vec::new();
    for f in fields {
        for v in &bad_for_all {
            cases.push((
                format!("limits.{f} = {v}"),
                json!({"language": "python", "code": "print(1)", "limits": {f: v}}),
            ));
        }
    }
    for f in [
        "memory_mb",
        "max_processes",
        "max_output_bytes",
        "max_file_size_mb",
    ] {
        cases.push((
            format!("limits.{f} = 1.5"),
            json!({"language": "python", "code": "print(1)", "limits": {f: 1.5}}),
        ));
    }
    cases.push((
        "limits.memory_mb = 1".into(),
        json!({"language": "python", "code": "print(1)", "limits": {"memory_mb": 1}}),
    ));
    for v in &bad_for_all {
        cases.push((
            format!("timeout = {v}"),
            json!({"language": "python", "code": "print(1)", "timeout": v}),
        ));
    }
    for (what, body) in &cases {
        for route in [
            "/api/v1/execute",
            "/api/v1/execute/async",
            "/api/submit?wait=true",
        ] {
            let r = srv.post(route, Some(KEY_A), body);
            assert_eq!(r.status, 400, "{route} with {what}: {}", r.text);
            r.error(400, Some("INVALID_LIMIT"));
        }
        let r = srv.post(
            "/api/v1/execute/batch",
            Some(KEY_A),
            &json!([{"language": "python", "code": "print(1)"}, body]),
        );
        assert_eq!(r.status, 400, "batch with {what}: {}", r.text);
        r.error(400, Some("INVALID_LIMIT"));
    }
    assert!(
        srv.list_all(KEY_A, "").is_empty(),
        "nothing with an invalid limit runs"
    );

    // null is the default, not "unlimited": 600 MiB is over the default memory limit.
    let v = srv.execute(&json!({
        "language": "python",
        "code": "b = bytearray(600 * 1024 * 1024)\nprint(len(b))",
        "limits": {"memory_mb": null, "wall_time": null}
    }));
    assert_eq!(v["limit_exceeded"], "memory", "{v:#}");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["exit_code"], -1);
    // A valid limit is applied.
    let v = srv.execute(&json!({
        "language": "python",
        "code": "b = bytearray(100 * 1024 * 1024)\nprint(len(b))",
        "limits": {"memory_mb": 64}
    }));
    assert_eq!(v["limit_exceeded"], "memory", "{v:#}");
}

#[test]
fn nul_bytes_run_in_code_and_stdin_but_are_refused_in_environment_and_args() {
    let srv = Server::start();
    let v = srv.execute(&json!({
        "language": "javascript",
        "code": "console.log(\"a\u{0}b\".length)"
    }));
    assert_eq!(v["stdout"], "3\n", "{v:#}");
    assert_eq!(v["exit_code"], 0);
    let v = srv.execute(&json!({
        "language": "python",
        "code": "import sys\nd = sys.stdin.buffer.read()\nprint(len(d), d.count(0))",
        "stdin": "x\u{0}y"
    }));
    assert_eq!(v["stdout"], "3 1\n", "{v:#}");

    for body in [
        json!({"language": "python", "code": "print(1)", "environment": {"A": "x\u{0}y"}}),
        json!({"language": "python", "code": "print(1)", "environment": {"A\u{0}B": "x"}}),
        json!({"language": "python", "code": "print(1)", "args": ["x\u{0}y"]}),
    ] {
        for route in [
            "/api/v1/execute",
            "/api/v1/execute/async",
            "/api/v1/execute?stream=true",
        ] {
            let r = srv.post(route, Some(KEY_A), &body);
            assert_eq!(r.status, 400, "{route} {body}: {}", r.text);
            r.error(400, None);
        }
    }
    assert_eq!(srv.list_all(KEY_A, "").len(), 2, "only the two valid runs");
}

#[test]
fn bad_batches_are_400_and_run_nothing() {
    let srv = Server::start();
    let ok = json!({"language": "python", "code": "print(1)"});
    let bodies = [
        ("11 items", Value::Array(vec![ok.clone(); 11])),
        ("100 items", Value::Array(vec![ok.clone(); 100])),
        ("no items", json!([])),
        ("an object", ok.clone()),
        ("a string", json!("x")),
        ("a non-object item", json!([ok.clone(), 1])),
        (
            "an item without code",
            json!([ok.clone(), {"language": "python"}]),
        ),
        (
            "an item with a bad limit",
            json!([ok.clone(), {"language": "python", "code": "x", "timeout": -1}]),
        ),
        (
            "an item with a NUL argument",
            json!([ok.clone(), {"language": "python", "code": "x", "args": ["\u{0}"]}]),
        ),
        (
            "an unknown language last",
            json!([ok.clone(), ok.clone(), {"language": "invalid", "code": "x"}]),
        ),
    ];
    for (what, body) in &bodies {
        let r = srv.post("/api/v1/execute/batch", Some(KEY_A), body);
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        r.error(400, None);
    }
    for (what, body) in [
        ("empty", Vec::new()),
        ("malformed", b"[{".to_vec()),
        ("invalid UTF-8", b"[\"\xff\"]".to_vec()),
    ] {
        let r = srv.post_raw("/api/v1/execute/batch", Some(KEY_A), body);
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        r.error(400, None);
    }
    assert!(
        srv.list_all(KEY_A, "").is_empty(),
        "a refused batch runs nothing"
    );
}

#[test]
fn bad_query_parameters_are_400() {
    let srv = Server::start();
    for q in [
        "limit=abc",
        "limit=0",
        "limit=-1",
        "limit=101",
        "limit=1.5",
        "limit=99999999999999999999",
        "status=bogus",
        "status=COMPLETED%20",
        "cursor=xyz",
        "cursor=1e3",
    ] {
        let r = srv.get(&format!("/api/v1/executions?{q}"), Some(KEY_A));
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        r.error(400, None);
    }
    let body = json!({"language": "python", "code": "print(1)"});
    for path in [
        "/api/v1/execute?stream=maybe",
        "/api/v1/execute?stream=2",
        "/api/submit?wait=maybe",
        "/api/submit?wait=",
    ] {
        let r = srv.post(path, Some(KEY_A), &body);
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        r.error(400, None);
    }
    assert!(srv.list_all(KEY_A, "").is_empty());
    // Good values still work.
    srv.get(
        "/api/v1/executions?limit=100&status=completed&session_id=x",
        Some(KEY_A),
    )
    .expect(200);
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_405_in_json() {
    let srv = Server::start();
    // `/` is the playground (api::playground).
    for (key, path) in [
        (None, "/nope"),
        (None, "/playground/nope"),
        (Some(KEY_A), "/api/v1/nope"),
        (Some(KEY_A), "/api/v2/execute"),
        (
            Some(KEY_A),
            "/api/v1/executions/00000000-0000-4000-8000-000000000000/nope",
        ),
    ] {
        let r = srv.get(path, key);
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        r.error(404, None);
    }
    let id = "00000000-0000-4000-8000-000000000000";
    for (method, path) in [
        ("GET", "/api/v1/execute".to_string()),
        ("PUT", "/api/v1/execute/batch".to_string()),
        ("GET", "/api/v1/execute/async".to_string()),
        ("DELETE", format!("/api/v1/executions/{id}")),
        ("GET", format!("/api/v1/executions/{id}/cancel")),
        ("POST", "/api/v1/languages".to_string()),
        ("POST", "/health".to_string()),
        ("DELETE", "/api/submit".to_string()),
    ] {
        let r = crate::server::Resp::of(srv.req(method, &path, Some(KEY_A)).send());
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text);
        r.error(405, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies that never arrive

/// Opens a connection and sends a request head (`POST path` with `headers`) and `body`.
fn send_head(srv: &Server, path: &str, headers: &[(&str, String)], body: &[u8]) -> TcpStream {
    let addr = srv.url.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).expect("connect");
    let mut head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY_A}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send the head");
    s.write_all(body).expect("send the body");
    s
}

/// The status and JSON body of the answer on `s`, read within `within`; `Err` if none came.
fn answer(s: &mut TcpStream, within: Duration) -> Result<(u16, Value), String> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("a status line: {head}"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = &buf[end + 4..end + 4 + len];
                let v = serde_json::from_slice(body).unwrap_or(Value::Null);
                return Ok((status, v));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no answer within {within:?} (got {:?})",
                String::from_utf8_lossy(&buf)
            ));
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "closed without an answer: {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
}

const BOUNDARY: &str = "runcell-input-test-boundary";

/// A multipart upload's start: the metadata part for `path` and the head of its file part.
fn upload_start(path: &str) -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n\
         {{\"path\": \"{path}\"}}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; \
         name=\"file\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes()
}

/// A body declared far larger than a route accepts is answered 413 at once, before any of it
/// arrives: every JSON route against `max_body_bytes`, the upload against the sandbox's disk.
#[test]
fn declared_bodies_over_the_limit_are_413_before_they_arrive() {
    let srv = Server::start();
    let json_ct = ("Content-Type", "application/json".to_string());
    let huge = ("Content-Length", "1000000000000".to_string());
    for route in EXECUTE_ROUTES
        .iter()
        .chain(&["/api/v1/execute/batch", "/v1/sandboxes"])
    {
        let mut s = send_head(&srv, route, &[json_ct.clone(), huge.clone()], b"{");
        let (status, v) =
            answer(&mut s, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{route}: {e}"));
        assert_eq!(status, 413, "{route}: {v}");
        assert_eq!(v["code"], "PAYLOAD_TOO_LARGE", "{route}: {v}");
        assert!(
            v["detail"].as_str().unwrap_or("").contains("at most"),
            "{v}"
        );
    }
    // An unreadable length is a 400, not a hang.
    let mut s = send_head(
        &srv,
        "/api/v1/execute",
        &[json_ct.clone(), ("Content-Length", "lots".to_string())],
        b"",
    );
    match answer(&mut s, Duration::from_secs(10)) {
        Ok((status, _)) => assert_eq!(status, 400),
        Err(e) => assert!(e.contains("closed"), "{e}"),
    }

    // The upload's limit is the sandbox's disk budget.
    let sb = sandbox(&srv, &json!({"limits": {"disk_mb": 8}}));
    let route = format!("/v1/sandboxes/{sb}/files/upload");
    let ct = (
        "Content-Type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    );
    for len in ["1000000000000", &(20u64 << 20).to_string()] {
        let mut s = send_head(
            &srv,
            &route,
            &[ct.clone(), ("Content-Length", len.to_string())],
            &upload_start("/workspace/big.bin"),
        );
        let (status, v) =
            answer(&mut s, Duration::from_secs(10)).unwrap_or_else(|e| panic!("upload {len}: {e}"));
        assert_eq!(status, 413, "upload of {len}: {v}");
        assert_eq!(v["code"], "PAYLOAD_TOO_LARGE", "{v}");
    }
    assert_eq!(sh(&srv, &sb, "ls -A /workspace"), "", "nothing was written");
    // A body that fits is still taken, on a fresh connection.
    let r = srv.execute(&json!({"language": "python", "code": "print(6 * 7)"}));
    assert_eq!(r["stdout"], "42\n", "{r}");
}

/// A body that stalls or drips is cut off with 408 after the configured timeout; it holds no
/// worker (with one execution slot and several stalled bodies, an execution still runs at
/// once) and an upload cut off this way leaves no temporary file.
#[test]
fn stalled_and_dripping_bodies_time_out_and_hold_nothing() {
    let srv = Server::with(
        Opts::new()
            .env("RUNCELL_BODY_TIMEOUT_SECS", "2")
            .env("RUNCELL_CONCURRENCY", "1"),
    );
    let json_ct = ("Content-Type", "application/json".to_string());

    // Stalled: 10 of 100 bytes, then nothing.
    let mut stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            send_head(
                &srv,
                "/api/v1/execute",
                &[json_ct.clone(), ("Content-Length", "100".to_string())],
                br#"{"language""#,
            )
        })
        .collect();
    // They hold nothing: an execution runs while they wait.
    let r = srv.execute(&json!({"language": "python", "code": "print('free')"}));
    assert_eq!(r["stdout"], "free\n", "{r}");
    for s in &mut stalled {
        let (status, v) = answer(s, Duration::from_secs(20)).expect("408 for a stalled body");
        assert_eq!(status, 408, "{v}");
        assert_eq!(v["code"], "BODY_TIMEOUT", "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap_or("")
                .contains("nothing for 2 s"),
            "{v}"
        );
    }

    // Dripping: one byte every 300 ms, never stalling for 2 s.
    let mut s = send_head(
        &srv,
        "/api/v1/execute/async",
        &[json_ct.clone(), ("Content-Length", "5000".to_string())],
        b"{",
    );
    let mut writer = s.try_clone().expect("clone the socket");
    let dripper = std::thread::spawn(move || {
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(300));
            if writer.write_all(b" ").is_err() {
                return;
            }
        }
    });
    let (status, v) = answer(&mut s, Duration::from_secs(20)).expect("408 for a dripping body");
    assert_eq!(status, 408, "{v}");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("too slowly"),
        "{v}"
    );
    drop(s);
    dripper.join().expect("the dripper");
    assert!(
        srv.list_all(KEY_A, "").len() == 1,
        "only the one execution exists"
    );

    // A stalled upload: the file part has begun, then nothing. No temporary file remains.
    let sb = sandbox(&srv, &json!({}));
    let mut body = upload_start("/workspace/up.bin");
    body.extend_from_slice(&[b'x'; 5000]);
    let mut s = send_head(
        &srv,
        &format!("/v1/sandboxes/{sb}/files/upload"),
        &[
            (
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            ),
            ("Content-Length", "100000".to_string()),
        ],
        &body,
    );
    let (status, v) = answer(&mut s, Duration::from_secs(20)).expect("408 for a stalled upload");
    assert_eq!(status, 408, "{v}");
    assert_eq!(v["code"], "BODY_TIMEOUT", "{v}");
    assert_eq!(
        sh(&srv, &sb, "ls -A /workspace"),
        "",
        "no partial or temporary file"
    );
}

/// A chunked upload whose closing chunk arrives after the multipart body's closing boundary
/// (as the OpenSandbox SDK sends it: one chunk per piece, the empty last chunk on its own)
/// keeps its connection, whether it is taken or refused: the next request on the same
/// connection is answered, rather than finding it closed.
#[test]
fn a_chunked_upload_whose_last_chunk_comes_late_keeps_its_connection() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));
    let addr = srv.url.trim_start_matches("http://").to_string();
    let route = format!("/v1/sandboxes/{sb}/files/upload");
    let mut good = upload_start("/workspace/late.txt");
    good.extend_from_slice(format!("late\r\n--{BOUNDARY}--\r\n").as_bytes());
    // A file part without its metadata part: refused.
    let bad = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n\
         x\r\n--{BOUNDARY}--\r\n"
    )
    .into_bytes();
    let mut s = TcpStream::connect(&addr).expect("connect");
    for (body, status) in [(good, 200), (bad, 400)] {
        let mut req = format!(
            "POST {route} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY_A}\r\n\
             Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        req.extend_from_slice(b"\r\n");
        s.write_all(&req).expect("send the upload");
        std::thread::sleep(Duration::from_millis(500));
        s.write_all(b"0\r\n\r\n").expect("send the last chunk");
        let (got, v) = answer(&mut s, Duration::from_secs(10)).expect("the upload's answer");
        assert_eq!(got, status, "{v}");
    }
    let info = format!(
        "GET /v1/sandboxes/{sb}/files/info?path=/workspace/late.txt HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {KEY_A}\r\n\r\n"
    );
    s.write_all(info.as_bytes())
        .expect("send a third request on the connection");
    let (status, v) = answer(&mut s, Duration::from_secs(10))
        .expect("the third request on the same connection is answered");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["/workspace/late.txt"]["size"], 4, "{v}");
}
