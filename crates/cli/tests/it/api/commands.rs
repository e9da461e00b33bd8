//! The per-sandbox daemon routes for commands, bash sessions and metrics, end to end, against
//! `docs/sandboxes.md` ("Commands", "Bash sessions", "Metrics") and `docs/execd-compat.md`
//! (sections 2, 3, 6, 7 and 9): event streams and their order, exit codes, timeouts,
//! background commands with their logs and status, interrupts, daemons a command leaves
//! behind, session state, metrics against the sandbox's own budget, and tenants.
//!
//! The small helpers marked `pub(crate)` are shared with `files.rs`.

use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::blocking::{RequestBuilder, Response};
use serde_json::{Value, json};

use crate::server::{
    JAIL_UID_BASE, KEY_A, KEY_B, Proc, Resp, Server, SseEvent, alive, all_procs, eventually,
    execd_error, is_timestamp, jail_procs, read_sse,
};

// ---------------------------------------------------------------------------------------------
// Requests and answers

/// `/v1/sandboxes/{id}{rest}`.
pub(crate) fn sb_path(id: &str, rest: &str) -> String {
    format!("/v1/sandboxes/{id}{rest}")
}

/// Sends `rb` (with `body` as JSON, if any) and reads the whole answer.
pub(crate) fn send(rb: RequestBuilder, body: Option<&Value>) -> Resp {
    let rb = match body {
        Some(b) => rb
            .header("Content-Type", "application/json")
            .body(b.to_string()),
        None => rb,
    };
    Resp::of(rb.send())
}

/// `method path` as the tenant of `key` (none: no credentials), answered within 30 s.
pub(crate) fn call(
    srv: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    send(
        srv.req(method, path, key).timeout(Duration::from_secs(30)),
        body,
    )
}

/// `POST /v1/sandboxes` as `key`, asserting 201; the sandbox object.
#[track_caller]
pub(crate) fn create_as(srv: &Server, key: &str, body: &Value) -> Value {
    let r = srv.post("/v1/sandboxes", Some(key), body);
    let v = r.expect(201).json();
    assert!(
        v["id"].as_str().is_some_and(|s| s.starts_with("sb_")),
        "{v:#}"
    );
    v
}

/// A sandbox of tenant A created with `body`; its id.
#[track_caller]
pub(crate) fn sandbox(srv: &Server, body: &Value) -> String {
    create_as(srv, KEY_A, body)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `DELETE /v1/sandboxes/{id}` as A, asserting 204.
#[track_caller]
pub(crate) fn delete_sandbox(srv: &Server, id: &str) {
    let r = call(srv, "DELETE", &sb_path(id, ""), Some(KEY_A), None);
    assert_eq!(r.status, 204, "DELETE the sandbox: {}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Event streams

/// Every event type of the daemon's streams.
pub(crate) const EVENT_TYPES: &[&str] = &[
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

/// POSTs `body` to `path` as A asking for an event stream that must end within `limit`;
/// asserts 200 and the content type.
#[track_caller]
pub(crate) fn open_stream(srv: &Server, path: &str, body: &Value, limit: Duration) -> Response {
    let resp = srv
        .req("POST", path, Some(KEY_A))
        .timeout(limit)
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

/// What a foreground command (or session run) streamed.
pub(crate) struct Ran {
    pub events: Vec<SseEvent>,
}

impl Ran {
    /// The events without the keep-alive pings.
    pub fn no_pings(&self) -> Vec<&Value> {
        self.events
            .iter()
            .map(|e| &e.v)
            .filter(|v| v["type"] != "ping")
            .collect()
    }

    /// `init`'s text (the command or session id).
    #[track_caller]
    pub fn init(&self) -> String {
        let evs = self.no_pings();
        assert_eq!(
            evs.first().map(|v| &v["type"]),
            Some(&json!("init")),
            "{self}"
        );
        evs[0]["text"].as_str().unwrap_or_default().to_string()
    }

    /// The texts of the events of `kind`, in order.
    pub fn texts(&self, kind: &str) -> Vec<String> {
        self.no_pings()
            .iter()
            .filter(|v| v["type"] == kind)
            .map(|v| v["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The output of `kind` as text: one event per line, `"\n"` for an empty line.
    pub fn output(&self, kind: &str) -> String {
        self.texts(kind)
            .iter()
            .map(|t| if t == "\n" { "" } else { t.as_str() })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last event (pings left out).
    #[track_caller]
    pub fn last(&self) -> &Value {
        self.no_pings()
            .last()
            .copied()
            .unwrap_or_else(|| panic!("no events"))
    }

    /// The exit code the stream reports: 0 for `execution_complete`, else the error's evalue.
    #[track_caller]
    pub fn exit(&self) -> String {
        let last = self.last();
        match last["type"].as_str() {
            Some("execution_complete") => "0".into(),
            Some("error") => {
                assert_eq!(last["error"]["ename"], "CommandExecError", "{self}");
                last["error"]["evalue"].as_str().unwrap_or_default().into()
            }
            _ => panic!("the stream ended without its final event: {self}"),
        }
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.no_pings().iter().map(|v| v.to_string()).collect();
        write!(f, "[{}]", all.join(", "))
    }
}

/// Reads a stream to its end.
pub(crate) fn read_all(resp: &mut Response) -> Ran {
    Ran {
        events: read_sse(resp, EVENT_TYPES, |_| false),
    }
}

/// Runs a foreground `POST /command` with `body` (ended within 60 s).
#[track_caller]
pub(crate) fn command(srv: &Server, sb: &str, body: &Value) -> Ran {
    let mut resp = open_stream(srv, &sb_path(sb, "/command"), body, Duration::from_secs(60));
    read_all(&mut resp)
}

/// Runs the shell command `cmd` in the foreground, asserting it exits 0; its stdout.
#[track_caller]
pub(crate) fn sh(srv: &Server, sb: &str, cmd: &str) -> String {
    let ran = command(srv, sb, &json!({ "command": cmd }));
    assert_eq!(ran.exit(), "0", "`{cmd}` failed: {ran}");
    ran.output("stdout")
}

/// Starts `cmd` in the background; its command id.
#[track_caller]
pub(crate) fn background(srv: &Server, sb: &str, cmd: &str) -> String {
    let ran = command(srv, sb, &json!({ "command": cmd, "background": true }));
    assert_eq!(ran.last()["type"], "execution_complete", "{ran}");
    ran.init()
}

/// `GET /command/status/{cmd}` as A, asserting 200.
#[track_caller]
fn status(srv: &Server, sb: &str, cmd: &str) -> Value {
    call(
        srv,
        "GET",
        &sb_path(sb, &format!("/command/status/{cmd}")),
        Some(KEY_A),
        None,
    )
    .expect(200)
    .json()
}

/// Polls a command's status until it is no longer running.
#[track_caller]
fn wait_finished(srv: &Server, sb: &str, cmd: &str, timeout: Duration) -> Value {
    eventually(timeout, &format!("command {cmd} to finish"), || {
        let v = status(srv, sb, cmd);
        (v["running"] == false).then_some(v)
    })
}

/// `GET /command/{cmd}/logs[?cursor=]` as A, asserting 200.
#[track_caller]
fn logs(srv: &Server, sb: &str, cmd: &str, cursor: Option<&str>) -> Resp {
    let q = cursor.map(|c| format!("?cursor={c}")).unwrap_or_default();
    call(
        srv,
        "GET",
        &sb_path(sb, &format!("/command/{cmd}/logs{q}")),
        Some(KEY_A),
        None,
    )
    .expect(200)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The command line of `pid`, its arguments joined by spaces.
pub(crate) fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// The host uids of a jail slot from its program's uid: the program's and the agent's.
fn slot_uids(program: u32) -> HashSet<u32> {
    let mut uids = HashSet::from([program]);
    if (program - JAIL_UID_BASE) % 2 == 1 {
        uids.insert(program - 1);
    }
    uids
}

// ---------------------------------------------------------------------------------------------
// Tests

/// A foreground command streams `init` (a `cmd_` id), one event per line in order (an empty
/// line as `"\n"`, stderr apart, a last unterminated line at exit), numbered by `eid` from 1,
/// and ends with `error {CommandExecError, "3", ["exit status 3"]}` for exit code 3; a
/// command that exits 0 ends with `execution_complete` and an integer `execution_time`.
#[test]
fn a_foreground_command_streams_lines_and_its_exit_code() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));

    let ran = command(
        &srv,
        &sb,
        &json!({"command": "echo hi; echo; echo err >&2; printf tail; exit 3"}),
    );
    let id = ran.init();
    assert!(
        id.starts_with("cmd_") && id.len() > 10,
        "init carries the command id: {ran}"
    );
    assert_eq!(ran.texts("stdout"), ["hi", "\n", "tail"], "{ran}");
    assert_eq!(ran.texts("stderr"), ["err"], "{ran}");
    let evs = ran.no_pings();
    assert!(
        evs.iter()
            .all(|v| !matches!(v["type"].as_str(), Some("status" | "result"))),
        "{ran}"
    );
    let last = ran.last();
    assert_eq!(last["type"], "error", "{ran}");
    assert_eq!(
        last["error"],
        json!({"ename": "CommandExecError", "evalue": "3", "traceback": ["exit status 3"]}),
        "{ran}"
    );
    // Every event after init is numbered 1, 2, 3, … in order.
    let eids: Vec<u64> = evs[1..]
        .iter()
        .map(|v| {
            v["eid"]
                .as_u64()
                .unwrap_or_else(|| panic!("no eid: {v} in {ran}"))
        })
        .collect();
    assert_eq!(eids[0], 1, "eids count from 1: {ran}");
    assert!(
        eids.windows(2).all(|w| w[1] > w[0]),
        "eids increase: {eids:?} in {ran}"
    );
    let ts: Vec<u64> = evs
        .iter()
        .map(|v| v["timestamp"].as_u64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[1] >= w[0]), "timestamps: {ran}");

    // Exit code 0.
    let ran = command(&srv, &sb, &json!({"command": "echo ok"}));
    assert_eq!(ran.texts("stdout"), ["ok"], "{ran}");
    let last = ran.last();
    assert_eq!(last["type"], "execution_complete", "{ran}");
    assert!(last["execution_time"].is_u64(), "integer ms: {ran}");
    assert!(last["eid"].as_u64().is_some_and(|e| e >= 2), "{ran}");
    assert!(
        !ran.no_pings().iter().any(|v| v["type"] == "error"),
        "{ran}"
    );
}

/// `cwd` (relative to /workspace, or absolute), `envs` and the sandbox's own `env` reach the
/// command; a `cwd` that does not exist fails it with evalue "255"; bad bodies are refused
/// with `400 INVALID_REQUEST_BODY` in the `{"code","message"}` shape before any stream.
#[test]
fn cwd_envs_and_bad_bodies() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({"env": {"SB_VAR": "from-sandbox"}}));

    assert_eq!(sh(&srv, &sb, "pwd; mkdir -p sub/dir"), "/workspace");
    let ran = command(&srv, &sb, &json!({"command": "pwd", "cwd": "sub/dir"}));
    assert_eq!(ran.output("stdout"), "/workspace/sub/dir", "{ran}");
    let ran = command(&srv, &sb, &json!({"command": "pwd", "cwd": "/tmp"}));
    assert_eq!(ran.output("stdout"), "/tmp", "{ran}");
    let ran = command(
        &srv,
        &sb,
        &json!({"command": "echo \"$SB_VAR|$FOO|$(id -un)\"", "envs": {"FOO": "bar baz"}}),
    );
    assert_eq!(ran.exit(), "0", "{ran}");
    assert_eq!(ran.output("stdout"), "from-sandbox|bar baz|runner", "{ran}");
    // `envs` are for that command only.
    assert_eq!(sh(&srv, &sb, "echo \"[$FOO]\""), "[]");

    let ran = command(
        &srv,
        &sb,
        &json!({"command": "echo should-not-run", "cwd": "/workspace/no/such/dir"}),
    );
    assert_eq!(ran.last()["type"], "error", "{ran}");
    assert_eq!(ran.exit(), "255", "a missing cwd: {ran}");
    assert!(ran.texts("stdout").is_empty(), "{ran}");

    let path = sb_path(&sb, "/command");
    for body in [
        json!({}),
        json!({"command": 5}),
        json!({"command": ""}),
        json!({"command": ["echo", "x"]}),
        json!({"command": "true", "timeout": "x"}),
        json!({"command": "true", "timeout": -5}),
        json!({"command": "true", "background": "yes"}),
        json!({"command": "true", "envs": {"1BAD": "x"}}),
        json!({"command": "true", "envs": {"A-B": "x"}}),
        json!({"command": "true", "envs": {"A=B": "x"}}),
        json!({"command": "true", "envs": "A=B"}),
        json!(["true"]),
    ] {
        let r = call(&srv, "POST", &path, Some(KEY_A), Some(&body));
        let v = execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
        assert!(
            !r.text.contains("data:"),
            "refused before the stream: {body} → {v}"
        );
    }
    let r = send(
        srv.req("POST", &path, Some(KEY_A))
            .header("Content-Type", "application/json")
            .body("{not json"),
        None,
    );
    execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
}

/// A background command: the stream is `init` then `execution_complete` at once (no output
/// events); its status goes from running to `running: false, exit_code: 0` with
/// `finished_at`; its log is the combined output with the `EXECD-COMMANDS-TAIL-CURSOR`
/// header, which resumes where it left off (empty at the end, the rest from the middle);
/// unknown ids are `404 COMMAND_NOT_FOUND`.
#[test]
fn a_background_command_has_a_status_and_logs_with_a_cursor() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));

    let cmd = "for i in 1 2 3; do echo line$i; sleep 0.2; done";
    let t = Instant::now();
    let ran = command(&srv, &sb, &json!({"command": cmd, "background": true}));
    let took = t.elapsed();
    let id = ran.init();
    assert!(id.starts_with("cmd_"), "{ran}");
    let kinds: Vec<&str> = ran
        .no_pings()
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["init", "execution_complete"], "{ran}");
    assert!(ran.last()["execution_time"].is_u64(), "{ran}");
    assert!(took < Duration::from_secs(3), "the stream took {took:?}");

    let v = status(&srv, &sb, &id);
    assert_eq!(v["id"], id.as_str(), "{v}");
    assert_eq!(v["content"], cmd, "{v}");
    assert!(is_timestamp(&v["started_at"]), "{v}");

    let v = wait_finished(&srv, &sb, &id, Duration::from_secs(20));
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(is_timestamp(&v["finished_at"]), "{v}");
    assert!(v["finished_at"].as_str() >= v["started_at"].as_str(), "{v}");

    let r = logs(&srv, &sb, &id, None);
    assert_eq!(r.text, "line1\nline2\nline3\n", "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{r:?}"
    );
    let cursor = r
        .header("EXECD-COMMANDS-TAIL-CURSOR")
        .unwrap_or_else(|| panic!("no EXECD-COMMANDS-TAIL-CURSOR: {r:?}"));
    assert_eq!(cursor, "18", "a byte cursor at the end of the log: {r:?}");
    let r = logs(&srv, &sb, &id, Some(&cursor));
    assert_eq!(r.text, "", "nothing new after the cursor: {r:?}");
    assert_eq!(
        r.header("EXECD-COMMANDS-TAIL-CURSOR").as_deref(),
        Some(cursor.as_str()),
        "{r:?}"
    );
    let r = logs(&srv, &sb, &id, Some("6"));
    assert_eq!(r.text, "line2\nline3\n", "from byte 6 on: {r:?}");
    assert_eq!(
        r.header("EXECD-COMMANDS-TAIL-CURSOR").as_deref(),
        Some("18"),
        "{r:?}"
    );

    // A log followed while the command writes: every byte exactly once.
    let id2 = background(
        &srv,
        &sb,
        "for i in $(seq 1 8); do echo out$i; echo err$i >&2; sleep 0.1; done",
    );
    let mut cursor = String::from("0");
    let mut got = String::new();
    eventually(Duration::from_secs(20), "the second log to end", || {
        let done = status(&srv, &sb, &id2)["running"] == false;
        let r = logs(&srv, &sb, &id2, Some(&cursor));
        got.push_str(&r.text);
        cursor = r.header("EXECD-COMMANDS-TAIL-CURSOR").expect("cursor");
        done.then_some(())
    });
    let r = logs(&srv, &sb, &id2, Some(&cursor));
    got.push_str(&r.text);
    let mut lines: Vec<&str> = got.lines().collect();
    lines.sort_unstable();
    let mut want: Vec<String> = (1..=8)
        .flat_map(|i| [format!("out{i}"), format!("err{i}")])
        .collect();
    want.sort_unstable();
    assert_eq!(lines, want, "the combined log, each line once: {got:?}");

    for p in [
        "/command/status/cmd_aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "/command/cmd_aaaaaaaaaaaaaaaaaaaaaaaaaa/logs",
        "/command/status/nope",
    ] {
        let r = call(&srv, "GET", &sb_path(&sb, p), Some(KEY_A), None);
        execd_error(&r, 404, Some("COMMAND_NOT_FOUND"));
    }
}

/// A foreground `timeout` (ms) kills the command within about a second of passing: the stream
/// ends with evalue "-1", and the status agrees.
#[test]
fn a_foreground_timeout_kills_the_command() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));

    let t = Instant::now();
    let ran = command(&srv, &sb, &json!({"command": "sleep 30", "timeout": 1000}));
    let took = t.elapsed();
    assert_eq!(ran.last()["type"], "error", "{ran}");
    assert_eq!(ran.exit(), "-1", "killed by the timeout: {ran}");
    assert!(
        took >= Duration::from_millis(900),
        "ended before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}: {ran}");
    let v = wait_finished(&srv, &sb, &ran.init(), Duration::from_secs(5));
    assert_eq!(v["exit_code"], -1, "{v}");
}

/// THE ISSUE'S ATTACK: a foreground command starts daemons (`setsid`, `nohup`) and then
/// blocks. Its timeout still ends the command within a second (the daemons hold no pipe the
/// server waits on); the daemons may outlive it, but deleting the sandbox leaves no process
/// of it on the host.
#[test]
fn daemons_of_a_command_neither_stall_its_timeout_nor_survive_the_sandbox() {
    let srv = Server::start();
    let server = srv.pid();
    let sb = sandbox(&srv, &json!({}));

    let t = Instant::now();
    let mut resp = open_stream(
        &srv,
        &sb_path(&sb, "/command"),
        &json!({
            "command": "setsid sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 & sleep 30",
            "timeout": 1000,
        }),
        Duration::from_secs(30),
    );
    let mut events = read_sse(&mut resp, EVENT_TYPES, |v| v["type"] == "init");
    // The daemons, seen from the host: their uid is the sandbox's program uid.
    let daemons = eventually(Duration::from_secs(5), "the `sleep 1000` daemons", || {
        let found: Vec<Proc> = jail_procs(server)
            .into_iter()
            .filter(|p| cmdline(p.pid) == "sleep 1000")
            .collect();
        (!found.is_empty()).then_some(found)
    });
    events.extend(read_sse(&mut resp, EVENT_TYPES, |_| false));
    let ran = Ran { events };
    let last = ran.last();
    assert_eq!(last["type"], "error", "{ran}");
    assert_eq!(ran.exit(), "-1", "the timeout killed it: {ran}");
    let ended = ran
        .events
        .iter()
        .find(|e| e.v["type"] == "error")
        .unwrap()
        .at;
    let took = ended - t;
    assert!(
        took < Duration::from_millis(2500),
        "the timeout was reported after {took:?}"
    );
    drop(resp);

    let program = daemons[0].uid;
    assert!(
        daemons.iter().all(|p| p.uid == program),
        "one sandbox, one program uid: {daemons:?}"
    );
    let uids = slot_uids(program);
    let of_sandbox = || -> Vec<Proc> {
        all_procs()
            .into_iter()
            .filter(|p| uids.contains(&p.uid) && p.state != 'Z')
            .collect()
    };
    assert!(
        !of_sandbox().is_empty(),
        "the sandbox has processes before it is deleted"
    );

    delete_sandbox(&srv, &sb);
    eventually(
        Duration::from_secs(2),
        "no process of the deleted sandbox on the host",
        || {
            let left = of_sandbox();
            let old: Vec<&Proc> = daemons.iter().filter(|p| alive(p)).collect();
            (left.is_empty() && old.is_empty()).then_some(())
        },
    );
}

/// `DELETE /command?id=` stops a background command (`200`; status soon `running: false`,
/// `exit_code: -1`); a client that drops a foreground stream interrupts its command; no id is
/// `400 MISSING_QUERY`, an unknown one a 404.
#[test]
fn interrupting_commands() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));

    let id = background(&srv, &sb, "sleep 1000");
    assert_eq!(status(&srv, &sb, &id)["running"], true);
    let t = Instant::now();
    let r = call(
        &srv,
        "DELETE",
        &sb_path(&sb, &format!("/command?id={id}")),
        Some(KEY_A),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = wait_finished(&srv, &sb, &id, Duration::from_secs(10));
    assert_eq!(v["exit_code"], -1, "SIGTERM: {v}");
    assert!(is_timestamp(&v["finished_at"]), "{v}");
    // `sleep` dies of SIGTERM: no need for the SIGKILL 3 s later.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // A foreground stream dropped by its client.
    let mut resp = open_stream(
        &srv,
        &sb_path(&sb, "/command"),
        &json!({"command": "echo started; sleep 1000"}),
        Duration::from_secs(30),
    );
    let events = read_sse(&mut resp, EVENT_TYPES, |v| v["type"] == "stdout");
    let ran = Ran { events };
    let fg = ran.init();
    assert_eq!(ran.texts("stdout"), ["started"], "{ran}");
    assert_eq!(status(&srv, &sb, &fg)["running"], true);
    drop(resp);
    let v = wait_finished(&srv, &sb, &fg, Duration::from_secs(15));
    assert_eq!(v["exit_code"], -1, "{v}");

    let r = call(&srv, "DELETE", &sb_path(&sb, "/command"), Some(KEY_A), None);
    execd_error(&r, 400, Some("MISSING_QUERY"));
    let r = call(
        &srv,
        "DELETE",
        &sb_path(&sb, "/command?id=cmd_aaaaaaaaaaaaaaaaaaaaaaaaaa"),
        Some(KEY_A),
        None,
    );
    execd_error(&r, 404, None);
}

/// The sandbox's count of out-of-memory kills, from `GET /metrics`.
#[track_caller]
pub(crate) fn oom_kills(srv: &Server, sb: &str) -> u64 {
    let v = call(srv, "GET", &sb_path(sb, "/metrics"), Some(KEY_A), None)
        .expect(200)
        .json();
    v["oom_kills"]
        .as_u64()
        .unwrap_or_else(|| panic!("metrics without an integer oom_kills: {v}"))
}

/// Waits until a background command's log contains `text`.
#[track_caller]
pub(crate) fn wait_log(srv: &Server, sb: &str, cmd: &str, text: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("command {cmd} to log {text:?}"),
        || logs(srv, sb, cmd, None).text.contains(text).then_some(()),
    );
}

/// Python that allocates (and touches) `mib` MiB, then runs `then`; as a shell command.
pub(crate) fn py_alloc(mib: u32, then: &str) -> String {
    format!("python3 -c \"import time; b = b'x' * ({mib} << 20); {then}\"")
}

/// THE REPORT (issue 8): in a 256 MiB sandbox a background command holds 200 MiB and a
/// foreground command allocates 200 MiB more and exits 0. The kernel kills the holder (the
/// larger); the foreground command's result is what happened to it: success, exit 0, no
/// error, in its stream and its status. The holder's status says the memory limit killed it,
/// and the sandbox's metrics (and their stream) count the OOM kill.
#[test]
fn an_oom_kill_is_reported_for_its_victim_not_for_the_command_running_then() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({"limits": {"memory_mb": 256}}));
    assert_eq!(oom_kills(&srv, &sb), 0);

    let holder = background(
        &srv,
        &sb,
        &py_alloc(200, "print('holding', flush=True); time.sleep(600)"),
    );
    wait_log(&srv, &sb, &holder, "holding");
    assert_eq!(status(&srv, &sb, &holder)["running"], true);

    let ran = command(
        &srv,
        &sb,
        &json!({"command": py_alloc(200, "print(len(b) >> 20)")}),
    );
    assert_eq!(ran.texts("stdout"), ["200"], "it ran to its end: {ran}");
    assert_eq!(ran.last()["type"], "execution_complete", "{ran}");
    assert!(
        !ran.no_pings().iter().any(|v| v["type"] == "error"),
        "a command that exited 0 is no error: {ran}"
    );
    let v = status(&srv, &sb, &ran.init());
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(v.get("error").is_none_or(Value::is_null), "{v}");

    let v = wait_finished(&srv, &sb, &holder, Duration::from_secs(30));
    assert_eq!(v["exit_code"], -1, "{v}");
    assert_eq!(v["error"], "signal: killed (memory limit)", "{v}");
    assert!(oom_kills(&srv, &sb) >= 1, "the metrics count the OOM kill");
    let mut resp = srv
        .req("GET", &sb_path(&sb, "/metrics/watch"), Some(KEY_A))
        .timeout(Duration::from_secs(15))
        .send()
        .expect("GET /metrics/watch");
    let got = read_metrics(&mut resp, 1);
    assert!(
        got[0].1["oom_kills"].as_u64().is_some_and(|n| n >= 1),
        "{:?}",
        got[0].1
    );
}

/// The reverse: the foreground command is the OOM killer's victim, and says so (evalue "-1",
/// `signal: killed (memory limit)`, in its stream and status) while a small background command
/// lives on. Kills that are not the OOM killer's are not reported as the memory limit even
/// with an OOM kill in the sandbox during the command's life: a background command that
/// ignores SIGTERM and is killed by `DELETE /command` (SIGKILL after the grace period), and a
/// command that SIGKILLs itself after the OOM kill.
#[test]
fn a_command_killed_for_memory_says_so_and_other_kills_do_not() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({"limits": {"memory_mb": 256}}));

    let stubborn = background(
        &srv,
        &sb,
        "trap '' TERM; echo up; while :; do sleep 0.1; done",
    );
    wait_log(&srv, &sb, &stubborn, "up");

    let ran = command(
        &srv,
        &sb,
        &json!({"command": py_alloc(400, "print('survived')")}),
    );
    assert_eq!(ran.exit(), "-1", "{ran}");
    assert_eq!(
        ran.last()["error"]["traceback"],
        json!(["signal: killed (memory limit)"]),
        "{ran}"
    );
    assert!(ran.texts("stdout").is_empty(), "{ran}");
    let v = status(&srv, &sb, &ran.init());
    assert_eq!(v["exit_code"], -1, "{v}");
    assert_eq!(v["error"], "signal: killed (memory limit)", "{v}");
    assert!(oom_kills(&srv, &sb) >= 1);
    assert_eq!(
        status(&srv, &sb, &stubborn)["running"],
        true,
        "the bystander lives"
    );

    // Our kill, with the OOM kill above in its life.
    let r = call(
        &srv,
        "DELETE",
        &sb_path(&sb, &format!("/command?id={stubborn}")),
        Some(KEY_A),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = wait_finished(&srv, &sb, &stubborn, Duration::from_secs(30));
    assert_eq!(v["exit_code"], -1, "{v}");
    assert_eq!(
        v["error"], "signal: killed",
        "killed by us, not for memory: {v}"
    );

    // A self-inflicted SIGKILL after the sandbox's OOM kill.
    let ran = command(&srv, &sb, &json!({"command": "kill -9 $$"}));
    assert_eq!(ran.exit(), "-1", "{ran}");
    assert_eq!(
        ran.last()["error"]["traceback"],
        json!(["signal: killed"]),
        "{ran}"
    );
}

/// Bash sessions keep the working directory and exported variables from one run to the next
/// (also after a failing run); `init` carries the session id; stderr joins stdout; a failure
/// ends with evalue "2" and `["command exited with code 2"]`; unknown and deleted sessions are
/// `404 SESSION_NOT_FOUND`.
#[test]
fn bash_sessions_keep_their_directory_and_exports() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));

    let r = call(
        &srv,
        "POST",
        &sb_path(&sb, "/session"),
        Some(KEY_A),
        Some(&json!({"cwd": "/tmp"})),
    );
    let v = r.expect(200).json();
    let sid = v["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no session_id: {v}"))
        .to_string();
    assert!(!sid.is_empty(), "{v}");
    let run_path = sb_path(&sb, &format!("/session/{sid}/run"));
    let run = |cmd: &str| {
        let mut resp = open_stream(
            &srv,
            &run_path,
            &json!({ "command": cmd }),
            Duration::from_secs(60),
        );
        read_all(&mut resp)
    };

    let ran = run("pwd; export A=5; mkdir -p /tmp/d; cd /tmp/d");
    assert_eq!(ran.init(), sid, "init carries the session id: {ran}");
    assert_eq!(ran.texts("stdout"), ["/tmp"], "{ran}");
    assert_eq!(ran.last()["type"], "execution_complete", "{ran}");

    let ran = run("echo $A $PWD");
    assert_eq!(ran.texts("stdout"), ["5 /tmp/d"], "{ran}");

    let ran = run("echo out; echo oops >&2; export B=7; cd /; exit 2");
    let mut out = ran.texts("stdout");
    out.sort();
    assert_eq!(out, ["oops", "out"], "stderr merged into stdout: {ran}");
    assert!(ran.texts("stderr").is_empty(), "{ran}");
    assert_eq!(
        ran.last()["error"],
        json!({"ename": "CommandExecError", "evalue": "2",
               "traceback": ["command exited with code 2"]}),
        "{ran}"
    );
    // Saved however the command ended.
    let ran = run("echo $A $B $PWD");
    assert_eq!(ran.texts("stdout"), ["5 7 /"], "{ran}");

    let r = call(
        &srv,
        "POST",
        &sb_path(&sb, "/session/no-such-session/run"),
        Some(KEY_A),
        Some(&json!({"command": "true"})),
    );
    execd_error(&r, 404, Some("SESSION_NOT_FOUND"));
    let r = call(
        &srv,
        "POST",
        &run_path,
        Some(KEY_A),
        Some(&json!({"nocommand": "true"})),
    );
    execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));

    let del = sb_path(&sb, &format!("/session/{sid}"));
    let r = call(&srv, "DELETE", &del, Some(KEY_A), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(&srv, "DELETE", &del, Some(KEY_A), None);
    execd_error(&r, 404, Some("SESSION_NOT_FOUND"));
    let r = call(
        &srv,
        "POST",
        &run_path,
        Some(KEY_A),
        Some(&json!({"command": "true"})),
    );
    execd_error(&r, 404, Some("SESSION_NOT_FOUND"));
}

/// Reads `data: {json}` events of `/metrics/watch` until `n` arrived; each with when it came.
fn read_metrics(resp: &mut Response, n: usize) -> Vec<(Instant, Value)> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    while out.len() < n {
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(buf[..end].to_vec()).expect("UTF-8 events");
            buf.drain(..end + 2);
            if block.starts_with(':') {
                continue;
            }
            let line = block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a `data: ` event: {block:?}"));
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("event is not JSON ({e}): {line:?}"));
            out.push((Instant::now(), v));
        }
        let k = resp.read(&mut chunk).expect("read the metrics stream");
        assert!(k > 0, "the metrics stream ended after {out:?}");
        buf.extend_from_slice(&chunk[..k]);
    }
    out
}

/// Asserts the five metrics fields of the sandbox's budget.
#[track_caller]
fn assert_metrics(v: &Value, cpus: f64, memory_mb: f64) {
    for k in ["cpu_count", "cpu_used_pct", "mem_total_mib", "mem_used_mib"] {
        assert!(v[k].is_number(), "{k} is a number: {v}");
    }
    assert_eq!(v["cpu_count"].as_f64(), Some(cpus), "the cpus limit: {v}");
    assert_eq!(
        v["mem_total_mib"].as_f64(),
        Some(memory_mb),
        "the memory limit: {v}"
    );
    let used = v["mem_used_mib"].as_f64().unwrap();
    assert!(used > 0.0 && used <= memory_mb, "{v}");
    let pct = v["cpu_used_pct"].as_f64().unwrap();
    assert!((0.0..=110.0).contains(&pct), "{v}");
    let ts = v["timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("integer timestamp: {v}"));
    assert!((ts - now_ms()).abs() < 60_000, "Unix ms: {v}");
}

/// `GET /metrics` reports the sandbox's own budget (its `cpus` and `memory_mb`) and use; a
/// busy loop in the sandbox shows as more than half of its CPU; `/metrics/watch` streams one
/// sample about every second.
#[test]
fn metrics_report_the_sandboxs_own_budget() {
    let srv = Server::start();
    let sbv = create_as(
        &srv,
        KEY_A,
        &json!({"limits": {"cpus": 0.5, "memory_mb": 320}}),
    );
    let sb = sbv["id"].as_str().unwrap().to_string();
    let cpus = sbv["limits"]["cpus"].as_f64().unwrap();
    let memory_mb = sbv["limits"]["memory_mb"].as_f64().unwrap();
    assert_eq!((cpus, memory_mb), (0.5, 320.0), "{sbv}");

    let path = sb_path(&sb, "/metrics");
    let v = call(&srv, "GET", &path, Some(KEY_A), None)
        .expect(200)
        .json();
    let obj = v.as_object().unwrap_or_else(|| panic!("an object: {v}"));
    for k in [
        "cpu_count",
        "cpu_used_pct",
        "mem_total_mib",
        "mem_used_mib",
        "timestamp",
        "oom_kills",
    ] {
        assert!(obj.contains_key(k), "{k} missing: {v}");
    }
    assert_metrics(&v, cpus, memory_mb);
    assert_eq!(v["oom_kills"], 0, "nothing was killed yet: {v}");

    let busy = background(&srv, &sb, "while true; do :; done");
    eventually(Duration::from_secs(20), "cpu_used_pct above 50", || {
        let v = call(&srv, "GET", &path, Some(KEY_A), None)
            .expect(200)
            .json();
        assert_metrics(&v, cpus, memory_mb);
        (v["cpu_used_pct"].as_f64().unwrap() > 50.0).then_some(())
    });

    let mut resp = srv
        .req("GET", &sb_path(&sb, "/metrics/watch"), Some(KEY_A))
        .timeout(Duration::from_secs(15))
        .send()
        .expect("GET /metrics/watch");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    let got = read_metrics(&mut resp, 3);
    drop(resp);
    for (_, v) in &got {
        assert_metrics(v, cpus, memory_mb);
    }
    for w in got.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= Duration::from_millis(500) && gap <= Duration::from_millis(2500),
            "one sample about every second, got a gap of {gap:?}"
        );
        let dt = w[1].1["timestamp"].as_i64().unwrap() - w[0].1["timestamp"].as_i64().unwrap();
        assert!((500..=2500).contains(&dt), "timestamps {dt} ms apart");
    }

    let r = call(
        &srv,
        "DELETE",
        &sb_path(&sb, &format!("/command?id={busy}")),
        Some(KEY_A),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Another tenant gets `404 SANDBOX_NOT_FOUND` (execd shape) on A's command, session and
/// metrics routes, and nothing runs; no or wrong credentials are `401 UNAUTHORIZED` in the
/// `{"code","message"}` shape; the sandbox's own access token opens them.
#[test]
fn other_tenants_and_strangers_get_nothing() {
    let srv = Server::start();
    let sbv = create_as(&srv, KEY_A, &json!({}));
    let sb = sbv["id"].as_str().unwrap().to_string();
    let token = sbv["access_token"].as_str().unwrap().to_string();
    let cmd = background(&srv, &sb, "echo a-only");

    let touch = json!({"command": "touch /workspace/b-was-here"});
    let cases: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", sb_path(&sb, "/command"), Some(touch.clone())),
        ("GET", sb_path(&sb, &format!("/command/status/{cmd}")), None),
        ("GET", sb_path(&sb, &format!("/command/{cmd}/logs")), None),
        ("DELETE", sb_path(&sb, &format!("/command?id={cmd}")), None),
        ("POST", sb_path(&sb, "/session"), Some(json!({}))),
        ("GET", sb_path(&sb, "/metrics"), None),
        ("GET", sb_path(&sb, "/metrics/watch"), None),
    ];
    for (method, path, body) in &cases {
        let r = call(&srv, method, path, Some(KEY_B), body.as_ref());
        execd_error(&r, 404, Some("SANDBOX_NOT_FOUND"));
        let r = call(&srv, method, path, None, body.as_ref());
        execd_error(&r, 401, Some("UNAUTHORIZED"));
        let r = call(&srv, method, path, Some("not-a-key"), body.as_ref());
        execd_error(&r, 401, Some("UNAUTHORIZED"));
    }
    assert_eq!(
        sh(
            &srv,
            &sb,
            "test -e /workspace/b-was-here && echo yes || echo no"
        ),
        "no",
        "nothing ran for the others"
    );

    let r = send(
        srv.req("GET", &sb_path(&sb, "/metrics"), None)
            .header("X-EXECD-ACCESS-TOKEN", &token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send(
        srv.req("GET", &sb_path(&sb, &format!("/command/{cmd}/logs")), None)
            .header("X-EXECD-ACCESS-TOKEN", &token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
}
