//! Judge0 CE 1.13.1 at `/judge0`: the calls of its Python SDK (`judge0` on PyPI) reproduced
//! from its source (headers, base64 both ways, `wait=false` then polling `fields=*` every
//! 100 ms), the statuses from runcell's verdicts, batches, deletion, auth and tenancy, and
//! polling that never meets the rate limit.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::server::{KEY_A, KEY_B, Opts, Receiver, Resp, Server, sorted_keys};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap_or_else(|e| panic!("not base64 ({e}): {v}"))
}

/// Every key of a submission (`fields=*`), as the SDK's model has them.
const ALL_KEYS: &[&str] = &[
    "token",
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "stderr",
    "compile_output",
    "message",
    "exit_code",
    "exit_signal",
    "status",
    "created_at",
    "finished_at",
    "time",
    "wall_time",
    "memory",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "post_execution_filesystem",
];

/// The keys of a submission without `fields`, sorted.
const DEFAULT_KEYS: &[&str] = &[
    "compile_output",
    "memory",
    "message",
    "status",
    "stderr",
    "stdout",
    "time",
    "token",
];

/// A Judge0 request as the SDK sends it: `X-Auth-Token`, its app headers, JSON.
fn call(srv: &Server, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Resp {
    let mut rb = srv
        .req(method, &format!("/judge0{path}"), None)
        .header("X-Judge0-App", "Judge0 Python SDK")
        .header("X-Judge0-App-Version", "0.0.8");
    if let Some(k) = key {
        rb = rb.header("X-Auth-Token", k);
    }
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    Resp::of(rb.send())
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ`.
fn judge0_time(v: &Value) -> bool {
    crate::server::is_timestamp(v)
}

/// Polls a token like the SDK (every 100 ms, `fields=*`, base64) until it is done.
fn poll(srv: &Server, key: &str, token: &str) -> (Value, usize) {
    let start = Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        let v = call(
            srv,
            "GET",
            &format!("/submissions/{token}?base64_encoded=true&fields=*"),
            Some(key),
            None,
        )
        .expect(200)
        .json();
        let id = v["status"]["id"].as_u64().unwrap();
        if id > 2 {
            return (v, polls);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "never done: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_python_sdks_calls_work_unchanged() {
    // A tight rate limit: the SDK's polls must not meet it.
    let srv = Server::with(Opts::new().env("RUNCELL_RATE_LIMIT", "20"));
    // Client(): languages and config_info; .version is about's.
    let langs = call(&srv, "GET", "/languages", Some(KEY_A), None)
        .expect(200)
        .json();
    let ids: Vec<u64> = langs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l.as_object().unwrap().len(), 2, "{{id, name}}: {l}");
            l["id"].as_u64().unwrap()
        })
        .collect();
    for id in [71, 50, 54, 52, 62, 63, 60, 73, 72, 68, 74, 46] {
        assert!(ids.contains(&id), "language {id} in {langs}");
    }
    let python = call(&srv, "GET", "/languages/71", Some(KEY_A), None)
        .expect(200)
        .json();
    assert!(
        python["name"].as_str().unwrap().starts_with("Python ("),
        "{python}"
    );
    assert_eq!(python["is_archived"], false);
    call(&srv, "GET", "/languages/9999", Some(KEY_A), None).expect(404);
    // The SDK's CPP is 52 (GCC 7.4.0 in Judge0): runcell's C++, shown back as 52.
    let v = call(
        &srv,
        "POST",
        "/submissions?wait=true&fields=language_id,status_id,stdout",
        Some(KEY_A),
        Some(
            &json!({"source_code": "#include <cstdio>\nint main() { std::puts(\"cpp\"); }",
                     "language_id": 52}),
        ),
    )
    .expect(201)
    .json();
    assert_eq!(
        v,
        json!({"language_id": 52, "status_id": 3, "stdout": "cpp\n"})
    );
    let config = call(&srv, "GET", "/config_info", Some(KEY_A), None)
        .expect(200)
        .json();
    let config = config.as_object().unwrap();
    assert_eq!(config.len(), 39, "{config:?}");
    let floats = [
        "callbacks_timeout",
        "cpu_extra_time",
        "cpu_time_limit",
        "max_cpu_extra_time",
        "max_cpu_time_limit",
        "max_wall_time_limit",
        "submission_cache_duration",
        "wall_time_limit",
    ];
    for (k, v) in config {
        if k == "allowed_languages_for_compile_options" {
            assert!(v.is_array(), "{k}: {v}");
        } else if floats.contains(&k.as_str()) {
            assert!(v.is_number(), "{k}: {v}");
        } else if k.starts_with("enable_")
            || k.starts_with("allow_")
            || [
                "maintenance_mode",
                "redirect_stderr_to_stdout",
                "use_docs_as_homepage",
            ]
            .contains(&k.as_str())
        {
            assert!(v.is_boolean(), "{k}: {v}");
        } else {
            assert!(v.is_u64(), "{k} is an integer: {v}");
        }
    }
    let about = call(&srv, "GET", "/about", Some(KEY_A), None)
        .expect(200)
        .json();
    assert_eq!(about["version"], "1.13.1");
    let statuses = call(&srv, "GET", "/statuses", Some(KEY_A), None)
        .expect(200)
        .json();
    assert_eq!(statuses.as_array().unwrap().len(), 14);
    assert_eq!(
        statuses[10],
        json!({"id": 11, "description": "Runtime Error (NZEC)"})
    );
    call(&srv, "GET", "/system_info", Some(KEY_A), None).expect(200);

    // create_submission: base64, wait=false: answered at once with the token only.
    let body = json!({"source_code": b64("import sys\nprint(sys.stdin.read().upper(), end='')"),
                      "language_id": 71, "stdin": b64("hello\n"),
                      "expected_output": b64("HELLO  \n\n")});
    let started = Instant::now();
    let created = call(
        &srv,
        "POST",
        "/submissions?base64_encoded=true&wait=false",
        Some(KEY_A),
        Some(&body),
    )
    .expect(201)
    .json();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(created.as_object().unwrap().len(), 1, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    assert!(crate::server::is_uuid_v4(&token), "{token}");
    let (done, polls) = poll(&srv, KEY_A, &token);
    // Exactly Judge0's keys.
    let mut want = ALL_KEYS.to_vec();
    want.sort();
    assert_eq!(sorted_keys(&done), want);
    assert_eq!(
        done["status"],
        json!({"id": 3, "description": "Accepted"}),
        "trimmed lines: {done:#}"
    );
    assert_eq!(unb64(&done["stdout"]), b"HELLO\n");
    assert_eq!(unb64(&done["source_code"]), unb64(&body["source_code"]));
    assert_eq!(unb64(&done["stdin"]), b"hello\n");
    assert_eq!(done["language_id"], 71);
    assert_eq!(done["exit_code"], 0);
    assert!(done["exit_signal"].is_null());
    assert!(done["stderr"].is_null() && done["compile_output"].is_null());
    assert!(done["post_execution_filesystem"].is_null());
    assert!(
        judge0_time(&done["created_at"]) && judge0_time(&done["finished_at"]),
        "{done}"
    );
    assert!(
        done["time"].as_str().unwrap().parse::<f64>().is_ok(),
        "{done}"
    );
    assert!(done["wall_time"].as_str().unwrap().parse::<f64>().is_ok());
    assert!(done["memory"].as_u64().unwrap() > 0);
    assert_eq!(done["number_of_runs"], 1);
    assert!(done["cpu_time_limit"].is_number());
    // More polls than the whole rate limit of this key allows in a minute, none refused.
    for _ in 0..25 {
        call(
            &srv,
            "GET",
            &format!("/submissions/{token}?base64_encoded=true&fields=*"),
            Some(KEY_A),
            None,
        )
        .expect(200);
    }
    assert!(polls >= 1);

    // Default fields without `fields`.
    let v = call(
        &srv,
        "GET",
        &format!("/submissions/{token}"),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(sorted_keys(&v), DEFAULT_KEYS);
    assert_eq!(v["stdout"], "HELLO\n", "not base64 without base64_encoded");
    let v = call(
        &srv,
        "GET",
        &format!("/submissions/{token}?fields=status_id,language_id"),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(v, json!({"status_id": 3, "language_id": 71}));
    call(
        &srv,
        "GET",
        &format!("/submissions/{token}?fields=token,nope"),
        Some(KEY_A),
        None,
    )
    .expect(400);
}

#[test]
fn auth_and_tenancy() {
    let srv = Server::start();
    for path in ["/languages", "/config_info", "/submissions/batch?tokens=x"] {
        let r = call(&srv, "GET", path, None, None);
        assert_eq!(r.status, 401, "{path}: {}", r.text);
        assert!(r.json()["error"].is_string());
        let r = call(&srv, "GET", path, Some("not-a-key-0123456789"), None);
        assert_eq!(r.status, 401, "{path}: {}", r.text);
    }
    // X-Auth-User works too.
    let r = Resp::of(
        srv.req("GET", "/judge0/about", None)
            .header("X-Auth-User", KEY_A)
            .send(),
    );
    assert_eq!(r.expect(200).json()["version"], "1.13.1");
    let token = call(
        &srv,
        "POST",
        "/submissions?wait=true",
        Some(KEY_A),
        Some(&json!({"source_code": "print(1)", "language_id": 71})),
    )
    .expect(201)
    .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = call(
        &srv,
        "GET",
        &format!("/submissions/{token}"),
        Some(KEY_B),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let r = call(
        &srv,
        "DELETE",
        &format!("/submissions/{token}"),
        Some(KEY_B),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let v = call(
        &srv,
        "GET",
        &format!("/submissions/batch?tokens={token}"),
        Some(KEY_B),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(v, json!({"submissions": [null]}));
}

#[test]
fn statuses_follow_the_verdicts() {
    let srv = Server::start();
    let run = |lang: u32, code: &str, stdin: &str, expected: Option<&str>, extra: Value| {
        let mut body = json!({"source_code": code, "language_id": lang, "stdin": stdin,
                              "expected_output": expected});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        call(
            &srv,
            "POST",
            "/submissions?wait=true&fields=*",
            Some(KEY_A),
            Some(&body),
        )
        .expect(201)
        .json()
    };
    let c = |body: &str| {
        format!(
            "#include <stdio.h>\n#include <stdlib.h>\n#include <signal.h>\nint main(void) {{ {body} }}\n"
        )
    };
    let cases: Vec<(u32, String, Option<&str>, Value, u64)> = vec![
        (
            71,
            "print(int(input()) * 2)".into(),
            Some("8"),
            json!({}),
            3,
        ),
        (
            71,
            "print(int(input()) * 3)".into(),
            Some("8"),
            json!({}),
            4,
        ),
        (
            71,
            "while True: pass".into(),
            None,
            json!({"cpu_time_limit": 0.5}),
            5,
        ),
        (50, c("return nope;"), None, json!({}), 6),
        (50, c("raise(SIGSEGV); return 0;"), None, json!({}), 7),
        (50, c("raise(SIGFPE); return 0;"), None, json!({}), 9),
        (50, c("abort();"), None, json!({}), 10),
        (71, "import sys\nsys.exit(3)".into(), None, json!({}), 11),
        (50, c("raise(SIGUSR1); return 0;"), None, json!({}), 12),
    ];
    for (lang, code, expected, extra, want) in cases {
        let v = run(lang, &code, "4\n", expected, extra);
        assert_eq!(v["status"]["id"], want, "{code}: {v:#}");
        match want {
            6 => assert!(
                v["compile_output"].as_str().unwrap().contains("nope"),
                "{v:#}"
            ),
            7 => {
                assert_eq!(v["exit_signal"], 11, "{v:#}");
                assert!(v["exit_code"].is_null());
            }
            11 => {
                assert_eq!(v["exit_code"], 3, "{v:#}");
                assert_eq!(v["message"], "Exited with error status 3");
            }
            _ => {}
        }
    }
    // Output that is not UTF-8 comes back as valid base64.
    let v = call(
        &srv,
        "POST",
        "/submissions?wait=true&base64_encoded=true",
        Some(KEY_A),
        Some(
            &json!({"source_code": b64("import sys\nsys.stdout.buffer.write(b'\\xff\\xfeok')"),
                     "language_id": 71}),
        ),
    )
    .expect(201)
    .json();
    assert!(unb64(&v["stdout"]).ends_with(b"ok"), "{v}");
    // Bad fields: 422 with Judge0's field errors.
    let r = call(
        &srv,
        "POST",
        "/submissions",
        Some(KEY_A),
        Some(&json!({"language_id": 9999, "enable_network": true})),
    );
    assert_eq!(r.status, 422, "{}", r.text);
    let e = r.json();
    assert!(
        e["source_code"].is_array() && e["language_id"].is_array(),
        "{e}"
    );
    assert!(e["enable_network"].is_array(), "{e}");
}

/// A zip of `files` made by Python's zipfile (deflated), base64.
fn zip_b64(files: &[(&str, &str)]) -> String {
    let script = "import base64, io, json, sys, zipfile\n\
                  buf = io.BytesIO()\n\
                  with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:\n\
                  \x20   z.writestr('lib/', '')\n\
                  \x20   for name, text in json.loads(sys.argv[1]):\n\
                  \x20       z.writestr(name, text)\n\
                  print(base64.b64encode(buf.getvalue()).decode())";
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, &serde_json::to_string(files).unwrap()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn additional_files_are_a_zip_of_files_beside_the_program() {
    let srv = Server::start();
    let zip = zip_b64(&[
        ("lib/helper.py", "def twice(x):\n    return 2 * x\n"),
        ("data.txt", "21"),
    ]);
    let body = json!({"source_code": b64("import sys\nsys.path.insert(0, 'lib')\nfrom helper import twice\nprint(twice(int(open('data.txt').read())))"),
                      "language_id": 71, "additional_files": zip, "expected_output": b64("42")});
    let v = call(
        &srv,
        "POST",
        "/submissions?wait=true&base64_encoded=true&fields=*",
        Some(KEY_A),
        Some(&body),
    )
    .expect(201)
    .json();
    assert_eq!(v["status"]["id"], 3, "{v:#}");
    assert_eq!(v["additional_files"], zip.as_str(), "shown back as sent");
    let config = call(&srv, "GET", "/config_info", Some(KEY_A), None)
        .expect(200)
        .json();
    assert_eq!(config["enable_additional_files"], true);
    // Not a zip; a name that leaves the archive: 422.
    for bad in [b64("not a zip"), zip_b64(&[("../escape.txt", "x")])] {
        let r = call(
            &srv,
            "POST",
            "/submissions",
            Some(KEY_A),
            Some(&json!({"source_code": "print(1)", "language_id": 71, "additional_files": bad})),
        );
        assert_eq!(r.status, 422, "{}", r.text);
        assert!(r.json()["additional_files"].is_array(), "{}", r.text);
    }
}

#[test]
fn callbacks_are_judge0_puts_signed_like_every_webhook() {
    let srv = Server::with(Opts::new().env("RUNCELL_WEBHOOK_ALLOW", "127.0.0.1"));
    let receiver = Receiver::start(&[]);
    let url = receiver.url("/judge0/done");
    let created = call(
        &srv,
        "POST",
        "/submissions",
        Some(KEY_A),
        Some(
            &json!({"source_code": "print(input())", "language_id": 71, "stdin": "hi",
                     "expected_output": "hi", "callback_url": url}),
        ),
    )
    .expect(201)
    .json();
    let token = created["token"].as_str().unwrap().to_string();
    let hooks = receiver.wait_for(1, Duration::from_secs(60));
    let h = &hooks[0];
    assert_eq!(h.method, "PUT");
    assert_eq!(h.path, "/judge0/done");
    // Judge0's body: the submission with its default fields, base64.
    let body: Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(sorted_keys(&body), DEFAULT_KEYS);
    assert_eq!(body["token"], token.as_str());
    assert_eq!(body["status"]["id"], 3, "{body}");
    assert_eq!(unb64(&body["stdout"]), b"hi\n");
    // Signed under the tenant's webhook secret.
    let secret = srv
        .get("/api/v1/webhook-secret", Some(KEY_A))
        .expect(200)
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&h.body, &h.header_map())
        .unwrap_or_else(|e| panic!("the signature does not verify: {e}"));
    // The submission shows its callback; wait=true with a callback waits and calls back too.
    let v = call(
        &srv,
        "GET",
        &format!("/submissions/{token}?fields=callback_url"),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(v["callback_url"], url.as_str());
    let v = call(
        &srv,
        "POST",
        "/submissions?wait=true",
        Some(KEY_A),
        Some(&json!({"source_code": "print(2)", "language_id": 71, "callback_url": url})),
    )
    .expect(201)
    .json();
    assert_eq!(v["status"]["id"], 3, "{v}");
    let hooks = receiver.wait_for(2, Duration::from_secs(60));
    let body: Value = serde_json::from_slice(&hooks[1].body).unwrap();
    assert_eq!(body["token"], v["token"]);
    // A target the SSRF guard refuses is refused at creation.
    let r = call(
        &srv,
        "POST",
        "/submissions",
        Some(KEY_A),
        Some(&json!({"source_code": "print(1)", "language_id": 71,
                     "callback_url": "http://169.254.169.254/latest"})),
    );
    assert_eq!(r.status, 422, "{}", r.text);
}

#[test]
fn batches_and_deletion() {
    let srv = Server::start();
    let good = |n: u32| json!({"source_code": format!("print({n})"), "language_id": 71});
    let v = call(
        &srv,
        "POST",
        "/submissions/batch",
        Some(KEY_A),
        Some(&json!({"submissions": [good(1), {"language_id": 71}, good(3)]})),
    )
    .expect(200)
    .json();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(
        items[0]["token"].is_string() && items[2]["token"].is_string(),
        "{v}"
    );
    assert!(items[1]["source_code"].is_array(), "an error in place: {v}");
    let (t1, t3) = (
        items[0]["token"].as_str().unwrap(),
        items[2]["token"].as_str().unwrap(),
    );
    for t in [t1, t3] {
        poll(&srv, KEY_A, t);
    }
    let v = call(
        &srv,
        "GET",
        &format!("/submissions/batch?tokens={t3},{t1}&fields=token,stdout,status_id"),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(
        v,
        json!({"submissions": [{"token": t3, "stdout": "3\n", "status_id": 3},
                                {"token": t1, "stdout": "1\n", "status_id": 3}]})
    );
    let too_many: Vec<Value> = (0..21).map(good).collect();
    call(
        &srv,
        "POST",
        "/submissions/batch",
        Some(KEY_A),
        Some(&json!({"submissions": too_many})),
    )
    .expect(400);

    // Deleting a finished submission answers it once; then it is gone.
    let v = call(
        &srv,
        "DELETE",
        &format!("/submissions/{t1}?fields=token,stdout"),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json();
    assert_eq!(v, json!({"token": t1, "stdout": "1\n"}));
    call(
        &srv,
        "GET",
        &format!("/submissions/{t1}"),
        Some(KEY_A),
        None,
    )
    .expect(404);
    call(
        &srv,
        "DELETE",
        &format!("/submissions/{t1}"),
        Some(KEY_A),
        None,
    )
    .expect(404);
    // An unfinished one cannot be deleted.
    let slow = call(
        &srv,
        "POST",
        "/submissions",
        Some(KEY_A),
        Some(&json!({"source_code": "import time\ntime.sleep(3)", "language_id": 71})),
    )
    .expect(201)
    .json();
    let t = slow["token"].as_str().unwrap();
    let r = call(
        &srv,
        "DELETE",
        &format!("/submissions/{t}"),
        Some(KEY_A),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.json()["error"].as_str().unwrap().contains("not finished"));
}

#[test]
fn a_native_request_cannot_pass_itself_off_as_a_judge0_submission() {
    let srv = Server::with(Opts::new().env("RUNCELL_WEBHOOK_ALLOW", "127.0.0.1"));
    let receiver = Receiver::start(&[]);
    // `dialect` is the server's: a native request that sends one gets the native webhook.
    let id = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "print(1)", "callback_url": receiver.url("/n"),
                "dialect": {"judge0": {"language_id": 71}}}),
    );
    let hooks = receiver.wait_for(1, Duration::from_secs(60));
    assert_eq!(hooks[0].method, "POST");
    let body: Value = serde_json::from_slice(&hooks[0].body).unwrap();
    assert_eq!(body["type"], "execution.completed", "{body}");
    assert_eq!(body["data"]["execution_id"], id.as_str());
}
