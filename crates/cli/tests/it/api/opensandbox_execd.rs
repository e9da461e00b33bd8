//! The per-sandbox daemon routes driven by the real OpenSandbox Python SDKs (`opensandbox` and
//! `opensandbox-code-interpreter` 1.1.1, issue 13 rules 6 and 8–11): the SDKs' own execd
//! adapters, built on the endpoint the lifecycle API hands out (`127.0.0.1:PORT/v1/sandboxes/ID`
//! with the sandbox's `X-EXECD-ACCESS-TOKEN`), parse our answers with their own SSE reader,
//! models and error conversion (`opensandbox_sdk.py` prints what they parsed; the checks are
//! here). Where the SDK silently drops what it cannot parse, the raw shapes are checked too.
//!
//! The SDKs live in a venv that `scripts/test` installs (`scripts/install-sdk-venv`):
//! `$RUNCELL_OPENSANDBOX_SDK_VENV`, else `/opt/runcell-test/opensandbox-sdk`. Without it these
//! tests fail; they never skip.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::commands::{call, sb_path};
use crate::server::{KEY_A, Opts, Server, eventually, execd_error, read_sse};

/// Where the SDK venv is, unless `SDK_VENV_VAR` says.
const SDK_VENV: &str = "/opt/runcell-test/opensandbox-sdk";
const SDK_VENV_VAR: &str = "RUNCELL_OPENSANDBOX_SDK_VENV";
/// The pinned SDK versions.
const SDK_VERSIONS: &str = "opensandbox 1.1.1, opensandbox-code-interpreter 1.1.1";
/// The SDK driver (run with `python -c`).
const DRIVER: &str = include_str!("opensandbox_sdk.py");
/// The port the code-interpreter SDK probes when `JUPYTER_PORT` is not set.
const SDK_DEFAULT_JUPYTER_PORT: &str = "44771";

/// The venv's python, after checking the SDK versions in it. Panics (the test fails) when
/// the venv is missing or holds other versions.
pub(crate) fn sdk_python() -> PathBuf {
    let venv = std::env::var(SDK_VENV_VAR).unwrap_or_else(|_| SDK_VENV.into());
    let python = PathBuf::from(&venv).join("bin/python");
    assert!(
        python.exists(),
        "the OpenSandbox SDK venv is missing at {venv} (set {SDK_VENV_VAR} to another one): \
         run scripts/install-sdk-venv (scripts/test does)"
    );
    let out = Command::new(&python)
        .args([
            "-c",
            "from importlib.metadata import version as v\n\
             print(f\"opensandbox {v('opensandbox')}, opensandbox-code-interpreter {v('opensandbox-code-interpreter')}\")",
        ])
        .output()
        .expect("run the SDK venv's python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        SDK_VERSIONS,
        "the SDK venv at {venv} holds other versions (stderr: {}); run scripts/install-sdk-venv",
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// A sandbox of tenant A for the SDK: its id and the endpoint and token the lifecycle API
/// would hand out.
struct Sb {
    id: String,
    endpoint: String,
    token: String,
}

fn create_sandbox(srv: &Server, body: &Value) -> Sb {
    let v = srv
        .post("/v1/sandboxes", Some(KEY_A), body)
        .expect(201)
        .json();
    let id = v["id"].as_str().expect("id").to_string();
    let token = v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let host = srv.url.strip_prefix("http://").expect("an http URL");
    Sb {
        endpoint: format!("{host}/v1/sandboxes/{id}"),
        id,
        token,
    }
}

/// Runs a scenario of the driver against `sb` with `token`; what the SDK parsed.
fn sdk(scenario: &str, sb: &Sb, token: &str) -> Value {
    let python = sdk_python();
    let out = Command::new("timeout")
        .arg("240")
        .arg(&python)
        .args(["-c", DRIVER, scenario, &sb.endpoint, token])
        .output()
        .expect("run the SDK driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK raised in scenario {scenario} ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the driver printed no JSON ({e}): {stdout}\n{stderr}"))
}

/// An SDK exception as the driver reports it: a `SandboxApiException` of this HTTP status
/// whose `SandboxError` carries our `code` (if given) and a message.
#[track_caller]
fn assert_api_exception(e: &Value, status: u64, code: Option<&str>) {
    assert_eq!(e["class"], "SandboxApiException", "{e}");
    assert_eq!(e["status_code"], status, "{e}");
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{e}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
            "the SDK read no message: {e}"
        );
    }
}

/// Every output chunk's timestamp as the SDK parsed it: Unix ms, not seconds.
#[track_caller]
fn assert_ms_timestamps(ex: &Value) {
    for t in ex["stdout_ts"].as_array().expect("timestamps") {
        assert!(
            t.as_u64().is_some_and(|t| t > 1_600_000_000_000),
            "timestamps are Unix ms: {ex}"
        );
    }
}

#[test]
fn sdk_commands_stream_exit_codes_background_env_and_the_health_probe() {
    let srv = Server::start();
    let sb = create_sandbox(&srv, &json!({"env": {"SB_ENV": "sbenv"}}));
    let v = sdk("commands", &sb, &sb.token);

    // Rule 8: stdout and stderr lines stream to the handlers, between init and completion;
    // the create-time env and the command's envs reach the command.
    let fg = &v["foreground"];
    assert_eq!(fg["stdout"], json!(["out1", "out2", "sbenv-opt"]), "{fg}");
    assert_eq!(fg["stderr"], json!(["err1"]), "{fg}");
    assert_eq!(fg["exit_code"], 0, "{fg}");
    assert!(fg["error"].is_null(), "{fg}");
    assert!(fg["complete_ms"].is_u64(), "{fg}");
    assert!(
        fg["id"].as_str().is_some_and(|i| i.starts_with("cmd_")),
        "{fg}"
    );
    assert_ms_timestamps(fg);
    let seen: Vec<&str> = v["foreground_seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_str().unwrap())
        .collect();
    assert_eq!(seen.first(), Some(&"init"), "{seen:?}");
    assert_eq!(seen.last(), Some(&"complete"), "{seen:?}");
    assert_eq!(seen.iter().filter(|k| **k == "stdout").count(), 3);
    assert_eq!(seen.iter().filter(|k| **k == "stderr").count(), 1);

    // A non-zero exit ends with error CommandExecError "<code>", which the SDK turns into
    // the exit code.
    let failing = &v["failing"];
    assert_eq!(failing["stdout"], json!(["before"]), "{failing}");
    assert_eq!(failing["error"]["name"], "CommandExecError", "{failing}");
    assert_eq!(failing["error"]["value"], "3", "{failing}");
    assert_eq!(failing["exit_code"], 3, "{failing}");

    // argv (not shell-expanded), cwd, timeout (ms).
    assert_eq!(v["argv"]["stdout"], json!(["a b|c|"]), "{}", v["argv"]);
    assert_eq!(v["argv"]["exit_code"], 0);
    assert_eq!(v["cwd"]["stdout"], json!(["/tmp"]), "{}", v["cwd"]);
    let timeout = &v["timeout"];
    assert_eq!(timeout["error"]["name"], "CommandExecError", "{timeout}");
    assert_ne!(timeout["exit_code"], 0, "{timeout}");
    assert!(
        v["timeout_secs"].as_f64().unwrap() < 10.0,
        "the 500 ms timeout stopped `sleep 30`: {}",
        v["timeout_secs"]
    );

    // Background: the stream ends at once; status and logs by id.
    let bg = &v["background"];
    let bg_id = bg["id"].as_str().expect("a background command id");
    assert!(bg_id.starts_with("cmd_"), "{bg}");
    assert!(bg["error"].is_null(), "{bg}");
    assert_eq!(v["background_status_first"]["running"], true, "{v}");
    assert_eq!(v["background_status_first"]["id"], bg_id);
    let st = &v["background_status"];
    assert_eq!(st["id"], bg_id, "{st}");
    assert_eq!(st["running"], false, "{st}");
    assert_eq!(st["exit_code"], 4, "{st}");
    assert_eq!(
        st["content"],
        "echo bg-start; sleep 1; echo bg-err >&2; echo bg-done; exit 4"
    );
    assert!(
        st["started_at"].is_string() && st["finished_at"].is_string(),
        "{st}"
    );
    let logs = v["background_logs"]["content"].as_str().unwrap();
    for line in ["bg-start\n", "bg-err\n", "bg-done\n"] {
        assert!(logs.contains(line), "{logs:?}");
    }
    assert_eq!(
        v["background_logs"]["cursor"],
        logs.len(),
        "the cursor header is the byte offset"
    );
    assert_eq!(v["background_logs_after"]["content"], "");
    assert_eq!(
        v["background_logs_after"]["cursor"],
        v["background_logs"]["cursor"]
    );

    // Rule 6: a missing command is the SDK's API exception with our code and message.
    assert_api_exception(&v["missing_status"], 404, Some("COMMAND_NOT_FOUND"));

    // Rule 10: the code interpreter's readiness probe passes, and JUPYTER_PORT names the port.
    let health = &v["health"];
    assert_eq!(health["exit_code"], 0, "{health}");
    assert!(health["error"].is_null(), "{health}");
    assert_eq!(
        v["jupyter_port"]["stdout"],
        json!([SDK_DEFAULT_JUPYTER_PORT])
    );
}

#[test]
fn sdk_code_contexts_print_results_errors_counts_and_env() {
    let srv = Server::start();
    let sb = create_sandbox(&srv, &json!({"env": {"SB_ENV": "sbenv"}}));
    let v = sdk("code", &sb, &sb.token);

    // Rule 9: the SDK accepted POST /code/context's {id, language}.
    let ctx = &v["context"];
    let ctx_id = ctx["id"].as_str().expect("a context id");
    assert!(
        ctx_id.len() == 32 && ctx_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ctx}"
    );
    assert_eq!(ctx["language"], "python");

    let print = &v["print"];
    assert_eq!(print["stdout"], json!(["hello\n"]), "{print}");
    assert_eq!(print["execution_count"], 1, "{print}");
    assert!(print["complete_ms"].is_u64(), "{print}");
    assert!(print["error"].is_null(), "{print}");
    assert_ms_timestamps(print);
    let seen: Vec<&str> = v["print_seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["init", "stdout", "complete"], "{seen:?}");

    // An expression's value under results.text; the context keeps its variables.
    let expr = &v["expression"];
    assert_eq!(expr["results"], json!(["42"]), "{expr}");
    assert_eq!(expr["execution_count"], 2, "{expr}");

    let exc = &v["exception"];
    assert_eq!(exc["error"]["name"], "ZeroDivisionError", "{exc}");
    assert_eq!(exc["error"]["value"], "division by zero", "{exc}");
    assert!(
        exc["error"]["traceback"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{exc}"
    );
    assert_eq!(exc["execution_count"], 3, "{exc}");

    // Rule 8: the sandbox's create-time env reaches code contexts.
    assert_eq!(v["env"]["stdout"], json!(["sbenv\n"]), "{}", v["env"]);
    // Without a context: the language's default one.
    assert_eq!(
        v["default_context"]["stdout"],
        json!(["42\n"]),
        "{}",
        v["default_context"]
    );

    assert_eq!(v["get_context"], *ctx);
    assert!(
        v["list_contexts"].as_array().unwrap().contains(ctx),
        "{}",
        v["list_contexts"]
    );
    assert_api_exception(&v["deleted_context"], 404, Some("CONTEXT_NOT_FOUND"));
}

#[test]
fn sdk_sync_clients_read_the_same_streams() {
    let srv = Server::start();
    let sb = create_sandbox(&srv, &json!({}));
    let v = sdk("sync", &sb, &sb.token);
    let cmd = &v["command"];
    assert_eq!(cmd["stdout"], json!(["sync-out"]), "{cmd}");
    assert_eq!(cmd["stderr"], json!(["sync-err"]), "{cmd}");
    assert_eq!(cmd["exit_code"], 5, "{cmd}");
    assert_eq!(cmd["error"]["value"], "5", "{cmd}");
    assert_eq!(v["health"]["exit_code"], 0, "{}", v["health"]);
    assert_eq!(v["file"], "sync file");
    assert_eq!(v["file_mode"], 640);
    assert_eq!(v["context"]["language"], "python");
    let code = &v["code"];
    assert_eq!(code["stdout"], json!(["sync\n"]), "{code}");
    assert_eq!(code["results"], json!(["1024"]), "{code}");
    assert_eq!(code["execution_count"], 1, "{code}");
}

#[test]
fn sdk_files_upload_download_info_list_search_move_delete() {
    let srv = Server::start();
    let sb = create_sandbox(&srv, &json!({}));
    let v = sdk("files", &sb, &sb.token);

    // Rule 11: the SDK's chunked multipart upload (no Content-Length; mode as octal digits
    // in a decimal int; owner and group null) lands with its bytes and modes.
    assert_eq!(v["read_text"], "alpha\n");
    assert_eq!(v["read_bytes_ok"], true, "binary content round-trips");
    let info = &v["info"];
    let a = &info["/workspace/sdk/a.txt"];
    assert_eq!(a["path"], "/workspace/sdk/a.txt", "{info}");
    assert_eq!(a["type"], "file", "{info}");
    assert_eq!(a["mode"], 644, "{info}");
    assert_eq!(a["size"], 6, "{info}");
    assert_eq!(info["/workspace/sdk/bin.dat"]["mode"], 600, "{info}");
    assert_eq!(info["/workspace/sdk/bin.dat"]["size"], 1024, "{info}");
    // The SDK's default mode (755).
    assert_eq!(info["/workspace/sdk/run.sh"]["mode"], 755, "{info}");

    assert_eq!(v["search"], json!(["/workspace/sdk/a.txt"]));
    assert_eq!(
        v["list"],
        json!([
            "/workspace/sdk/a.txt",
            "/workspace/sdk/bin.dat",
            "/workspace/sdk/run.sh"
        ])
    );
    assert_eq!(v["moved"], "alpha\n");

    // Rule 6: a missing file is the SDK's API exception with our code and message.
    assert_api_exception(&v["missing_read"], 404, Some("FILE_NOT_FOUND"));
    assert_api_exception(&v["missing_info"], 404, Some("FILE_NOT_FOUND"));
    assert_api_exception(&v["refused_upload"], 403, Some("READ_ONLY"));

    // What the SDK wrote is what a program in the sandbox sees.
    let r = call(
        &srv,
        "POST",
        &sb_path(&sb.id, "/code/runs?wait=true"),
        Some(KEY_A),
        Some(
            &json!({"language": "bash", "code": "stat -c '%a %s' /workspace/sdk/bin.dat; test -e /workspace/sdk/b.txt || echo gone"}),
        ),
    );
    let run = r.expect(200).json();
    let out: String = run["execution"]["logs"]["stdout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(out, "600 1024\ngone\n", "{run}");
}

#[test]
fn sdk_errors_carry_code_and_message_and_a_bad_token_is_401() {
    let srv = Server::start();
    let sb = create_sandbox(&srv, &json!({}));
    let v = sdk("bad_token", &sb, "not-the-token");
    assert_api_exception(&v["command"], 401, Some("UNAUTHORIZED"));
    assert_api_exception(&v["file"], 401, Some("UNAUTHORIZED"));
    // Refused before a byte of its 4 MiB chunked body was read: still a typed 401.
    assert_api_exception(&v["upload"], 401, Some("UNAUTHORIZED"));
    // The SDK's generated client for POST /code/context parses no 401 body: only the status
    // reaches the exception (the raw body still is {"code", "message"}, checked below).
    assert_api_exception(&v["context"], 401, None);

    // Raw shapes: bad token, unknown sandbox, a route or method that does not exist.
    let bad = srv
        .req("POST", &sb_path(&sb.id, "/code/context"), None)
        .header("X-EXECD-ACCESS-TOKEN", "not-the-token")
        .header("Content-Type", "application/json")
        .body(r#"{"language":"python"}"#);
    execd_error(
        &crate::server::Resp::of(bad.send()),
        401,
        Some("UNAUTHORIZED"),
    );
    let tok = |m: &str, p: &str| {
        crate::server::Resp::of(
            srv.req(m, p, None)
                .header("X-EXECD-ACCESS-TOKEN", &sb.token)
                .send(),
        )
    };
    execd_error(
        &tok("GET", &sb_path(&sb.id, "/v1/isolated/capabilities")),
        404,
        Some("NOT_FOUND"),
    );
    execd_error(
        &tok("PUT", &sb_path(&sb.id, "/command")),
        405,
        Some("METHOD_NOT_ALLOWED"),
    );
    execd_error(
        &call(&srv, "GET", &sb_path("sb_nope", "/ping"), Some(KEY_A), None),
        404,
        None,
    );
    // The native routes keep the native shape.
    call(&srv, "PUT", &sb_path(&sb.id, "/timeout"), Some(KEY_A), None)
        .error(405, Some("METHOD_NOT_ALLOWED"));
}

/// The shapes the SDK would silently drop if they slipped: status 200 and
/// `text/event-stream`, an integer Unix-ms `timestamp` and a `type` on every event, integer
/// `execution_count` and `execution_time`, and `POST /code/context`'s exact answer.
#[test]
fn raw_execd_shapes_the_sdk_depends_on() {
    let srv = Server::start();
    let sb = create_sandbox(&srv, &json!({}));
    let post = |path: &str, body: &Value| {
        srv.req("POST", &sb_path(&sb.id, path), None)
            .header("X-EXECD-ACCESS-TOKEN", &sb.token)
            .header("Content-Type", "application/json")
            .timeout(Duration::from_secs(120))
            .body(body.to_string())
            .send()
            .expect("the request")
    };
    let types = [
        "init",
        "status",
        "stdout",
        "stderr",
        "result",
        "execution_count",
        "error",
        "execution_complete",
        "ping",
    ];

    // Rule 9: exactly 200 {id, language}.
    let r = crate::server::Resp::of(Ok(post("/code/context", &json!({"language": "python"}))));
    let ctx = r.expect(200).json();
    let mut keys: Vec<&String> = ctx.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["id", "language"], "{ctx}");

    for (path, body) in [
        (
            "/command",
            json!({"command": "echo hi; echo oops >&2; exit 2"}),
        ),
        ("/command", json!({"command": "true"})),
        (
            "/code",
            json!({"code": "print('x')\n6 * 7", "context": {"id": ctx["id"], "language": "python"}}),
        ),
        (
            "/code",
            json!({"code": "raise ValueError('v')", "context": {"language": "python"}}),
        ),
    ] {
        let mut resp = post(path, &body);
        assert_eq!(resp.status(), 200, "{path} {body}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{path}: {ct}");
        let events = read_sse(&mut resp, &types, |_| false);
        let what = format!(
            "{path} {body}: {:?}",
            events.iter().map(|e| &e.v).collect::<Vec<_>>()
        );
        assert_eq!(
            events.first().map(|e| &e.v["type"]),
            Some(&json!("init")),
            "{what}"
        );
        for e in &events {
            match e.v["type"].as_str().unwrap() {
                "execution_count" => assert!(e.v["execution_count"].is_u64(), "{what}"),
                "execution_complete" => assert!(e.v["execution_time"].is_u64(), "{what}"),
                "result" => assert!(e.v["results"]["text"].is_string(), "{what}"),
                "error" => {
                    assert!(e.v["error"]["ename"].is_string(), "{what}");
                    assert!(e.v["error"]["evalue"].is_string(), "{what}");
                    assert!(e.v["error"]["traceback"].is_array(), "{what}");
                }
                _ => {}
            }
        }
        let has = |t: &str| events.iter().any(|e| e.v["type"] == t);
        match (path, body["command"].as_str()) {
            ("/command", Some("true")) => assert!(has("execution_complete"), "{what}"),
            ("/command", _) => {
                let err = events.iter().find(|e| e.v["type"] == "error").expect(&what);
                assert_eq!(err.v["error"]["ename"], "CommandExecError", "{what}");
                assert_eq!(err.v["error"]["evalue"], "2", "{what}");
            }
            _ if has("error") => {
                assert!(has("execution_count"), "{what}");
            }
            _ => {
                assert!(
                    has("result") && has("execution_count") && has("execution_complete"),
                    "{what}"
                );
                let res = events.iter().find(|e| e.v["type"] == "result").unwrap();
                assert_eq!(res.v["results"]["text"], "42", "{what}");
            }
        }
    }
}

/// Rule 10 for pre-started sandboxes: one taken from the warm pool passes the probe too.
#[test]
fn pooled_sandboxes_pass_the_code_interpreter_probe() {
    let srv = Server::with(Opts::new().env("RUNCELL_SANDBOX_POOL_SIZE", "1"));
    eventually(Duration::from_secs(60), "a pre-started sandbox", || {
        let m = srv.get("/metrics", Some(KEY_A)).expect(200).text;
        m.lines()
            .any(|l| l.starts_with("runcell_sandbox_pool_ready") && l.ends_with(" 1"))
            .then_some(())
    });
    let sb = create_sandbox(&srv, &json!({}));
    // A pooled sandbox comes with its default context already started.
    let contexts = crate::server::Resp::of(
        srv.req("GET", &sb_path(&sb.id, "/code/contexts"), None)
            .header("X-EXECD-ACCESS-TOKEN", &sb.token)
            .send(),
    )
    .expect(200)
    .json();
    assert_eq!(
        contexts.as_array().map(Vec::len),
        Some(1),
        "the sandbox came from the pool: {contexts}"
    );
    let v = sdk("sync", &sb, &sb.token);
    assert_eq!(v["health"]["exit_code"], 0, "{}", v["health"]);
}

#[test]
fn sdk_sessions_interrupts_health_metrics_and_the_other_file_operations() {
    let srv = Server::start();
    let sb = create_sandbox(&srv, &json!({"env": {"SB_ENV": "sbenv"}}));
    let v = sdk("more", &sb, &sb.token);
    assert_eq!(v["ping"], true);
    assert_eq!(v["code_ping"], true);
    assert_eq!(
        v["metrics"]["memory_total_in_mib"], 512.0,
        "{}",
        v["metrics"]
    );
    assert!(
        v["metrics"]["timestamp"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );

    // commands.set_env persists for later commands and sessions; a command's envs win.
    // (A value with a quote is written double-quoted, where `$NAME` expands.)
    assert_eq!(
        v["set_env"]["stdout"],
        json!(["it's sbenv|p2"]),
        "{}",
        v["set_env"]
    );
    assert_eq!(v["set_env_overridden"]["stdout"], json!(["request"]));
    assert_eq!(v["set_env_session"]["stdout"], json!(["p2"]));

    // A bash session keeps its directory and variables; its exit code reaches the SDK.
    assert_eq!(
        v["session_1"]["stdout"],
        json!(["/tmp"]),
        "{}",
        v["session_1"]
    );
    assert_eq!(
        v["session_2"]["stdout"],
        json!(["/workspace 7"]),
        "{}",
        v["session_2"]
    );
    assert_eq!(v["session_2"]["exit_code"], 2, "{}", v["session_2"]);
    assert_api_exception(&v["deleted_session"], 404, Some("SESSION_NOT_FOUND"));

    // The SDK's interrupts stop what they name, at once.
    let ic = &v["interrupted_command"];
    assert_eq!(ic["error"]["name"], "CommandExecError", "{ic}");
    assert_ne!(ic["exit_code"], 0, "{ic}");
    assert!(v["interrupted_command_secs"].as_f64().unwrap() < 10.0);
    assert!(
        v["interrupted_code"]["error"].is_object(),
        "{}",
        v["interrupted_code"]
    );
    assert!(v["interrupted_code_secs"].as_f64().unwrap() < 10.0);
    assert_eq!(v["after_interrupt"]["stdout"], json!(["still here\n"]));

    assert_eq!(v["dir_info"], json!({"type": "directory", "mode": 700}));
    assert_eq!(v["chmod_mode"], 600);
    assert_eq!(v["replaced"], json!([["/workspace/d1/x.txt", 2]]));
    assert_eq!(v["streamed"], "bye world bye");
    assert_eq!(
        v["listed"],
        json!(["/workspace/d1", "/workspace/d1/d2", "/workspace/d1/x.txt"])
    );
    assert_api_exception(&v["deleted_dir"], 404, Some("FILE_NOT_FOUND"));

    // Other languages' contexts.
    let js = &v["javascript"];
    assert_eq!(js["stdout"], json!(["2\n"]), "{js}");
    assert_eq!(js["results"], json!(["42"]), "{js}");
    assert_eq!(v["javascript_after_delete"], 0);
    assert_eq!(v["bash"]["stdout"], json!(["5\n"]), "{}", v["bash"]);
}
