//! Pausing and resuming sandboxes end to end (`docs/sandboxes.md`, "Pause and resume"): a
//! paused sandbox's processes are frozen (no CPU, memory kept: a context's variables, a loop
//! half-way, a code run under way whose time limit stops counting), its expiry clock stops,
//! whatever would run something in it answers 409 `SANDBOX_PAUSED` while its lifecycle routes
//! work, deleting it leaves no process or frozen cgroup, a server stopped or killed while it
//! is paused leaves nothing frozen behind and reports it terminated, and another tenant can
//! neither pause nor resume it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::commands::{background, call, command, create_as, sb_path};
use crate::server::{
    JAIL_UID_BASE, KEY_A, KEY_B, Opts, Proc, Resp, Server, alive, eventually, execd_error,
    jail_procs, now_ms, proc_info, timestamp_ms as ms,
};

/// A sandbox of A with `body`; its id.
#[track_caller]
fn create(srv: &Server, body: Value) -> String {
    create_as(srv, KEY_A, &body)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `POST /v1/sandboxes/{id}/{action}` (pause or resume) as `key`.
fn lifecycle(srv: &Server, key: &str, sb: &str, action: &str) -> Resp {
    call(
        srv,
        "POST",
        &sb_path(sb, &format!("/{action}")),
        Some(key),
        None,
    )
}

/// `GET /v1/sandboxes/{id}` as A, asserting 200.
#[track_caller]
fn get(srv: &Server, sb: &str) -> Value {
    call(srv, "GET", &sb_path(sb, ""), Some(KEY_A), None)
        .expect(200)
        .json()
}

/// Runs Python `code` in the default context as A, waiting for the end; the finished run.
#[track_caller]
pub(crate) fn py(srv: &Server, sb: &str, code: &str) -> Value {
    call(
        srv,
        "POST",
        &sb_path(sb, "/code/runs?wait=true"),
        Some(KEY_A),
        Some(&json!({ "code": code })),
    )
    .expect(200)
    .json()
}

/// The text of a run's main result.
fn main_text(run: &Value) -> Option<&str> {
    run["execution"]["results"]
        .as_array()?
        .iter()
        .find(|r| r["is_main_result"] == true)?["text"]
        .as_str()
}

#[track_caller]
pub(crate) fn assert_result(run: &Value, text: &str) {
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(main_text(run), Some(text), "{run:#}");
}

/// The sandbox's CPU use over the last sample, percent of its cores (`GET /metrics`).
#[track_caller]
fn cpu_pct(srv: &Server, sb: &str) -> f64 {
    let v = call(srv, "GET", &sb_path(sb, "/metrics"), Some(KEY_A), None)
        .expect(200)
        .json();
    v["cpu_used_pct"]
        .as_f64()
        .unwrap_or_else(|| panic!("metrics without cpu_used_pct: {v}"))
}

/// The processes of the sandbox that runs a process whose command line contains `marker`:
/// every jail process of the server with its agent's or its program's uid.
#[track_caller]
fn sandbox_procs(server: u32, marker: &str) -> Vec<Proc> {
    let with_marker = eventually(
        Duration::from_secs(20),
        &format!("a jail process running {marker:?}"),
        || {
            jail_procs(server).into_iter().find_map(|p| {
                std::fs::read(format!("/proc/{}/cmdline", p.pid))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
                    // Read again: listed, it may still have been the step init's fork before
                    // it took the program's uid and executed the command (a background
                    // command is reported started before that).
                    .then(|| proc_info(p.pid))
                    .flatten()
            })
        },
    );
    // The jail slots' ids: the agent's uid, then the program's (see the jail slots).
    let mut uids = vec![with_marker.uid];
    if (with_marker.uid - JAIL_UID_BASE) % 2 == 1 {
        uids.push(with_marker.uid - 1);
    }
    let procs: Vec<Proc> = jail_procs(server)
        .into_iter()
        .filter(|p| uids.contains(&p.uid))
        .collect();
    assert!(
        procs.len() >= 3,
        "agent, step init and the command: {procs:?}"
    );
    procs
}

/// The freezer of a process's cgroup on the host: (the file that says whether it is frozen,
/// and what it says when frozen).
fn freezer_of(pid: u32) -> (String, &'static str) {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        if controllers.is_some_and(|c| c.split(',').any(|c| c == "freezer"))
            && let Some(path) = path
        {
            return (
                format!("/sys/fs/cgroup/freezer{path}/freezer.state"),
                "FROZEN",
            );
        }
    }
    let path = groups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a freezer (v1) or a unified (v2) cgroup");
    (format!("/sys/fs/cgroup{path}/cgroup.events"), "frozen 1")
}

fn is_frozen(freezer: &(String, &'static str)) -> Option<bool> {
    std::fs::read_to_string(&freezer.0)
        .ok()
        .map(|s| s.lines().any(|l| l.trim() == freezer.1))
}

/// Pauses `sb` as A, asserting 200 and the paused object.
#[track_caller]
fn pause(srv: &Server, sb: &str) -> Value {
    let before = now_ms();
    let v = lifecycle(srv, KEY_A, sb, "pause").expect(200).json();
    assert_eq!(v["id"], sb, "{v}");
    assert_eq!(v["status"], "paused", "{v}");
    let at = ms(&v["paused_at"]);
    assert!(
        at >= before - 1 && at <= now_ms() + 1,
        "paused_at is now: {v}"
    );
    v
}

/// Resumes `sb` as A, asserting 200 and the running object.
#[track_caller]
fn resume(srv: &Server, sb: &str) -> Value {
    let v = lifecycle(srv, KEY_A, sb, "resume").expect(200).json();
    assert_eq!(v["status"], "running", "{v}");
    assert!(
        v.get("paused_at").is_none(),
        "no paused_at when running: {v}"
    );
    v
}

/// The test: a context holding `x = 42` and a busy loop; paused, the sandbox uses no
/// CPU for 2 s (its cgroup is frozen on the host) while a code run and a foreground command
/// under way, whose time limits the pause outlasts, wait; resumed, both finish as if nothing
/// happened, `x` is 42 and the loop runs again.
#[test]
fn a_paused_sandbox_keeps_its_memory_and_uses_no_cpu_until_resumed() {
    let srv = Server::start();
    let sb = create(&srv, json!({"limits": {"cpus": 1}}));
    assert_result(&py(&srv, &sb, "x = 42\nx"), "42");
    let marker = "while true; do : busy-loop-4242; done";
    background(&srv, &sb, marker);
    eventually(Duration::from_secs(20), "the loop to use the CPU", || {
        (cpu_pct(&srv, &sb) > 50.0).then_some(())
    });
    let procs = sandbox_procs(srv.pid(), "busy-loop-4242");
    let freezer = freezer_of(procs[0].pid);
    assert_eq!(is_frozen(&freezer), Some(false), "{freezer:?}");

    // A run under way with a 2 s limit: it sleeps 1 s, the pause lasts 2.5 s.
    let run = call(
        &srv,
        "POST",
        &sb_path(&sb, "/code/runs"),
        Some(KEY_A),
        Some(&json!({"code": "import time\ntime.sleep(1)\nx + 0", "timeout_secs": 2})),
    )
    .expect(202)
    .json();
    let run_id = run["id"].as_str().unwrap().to_string();
    let run_path = sb_path(&sb, &format!("/code/runs/{run_id}"));
    eventually(Duration::from_secs(10), "the run to start", || {
        let v = call(&srv, "GET", &run_path, Some(KEY_A), None)
            .expect(200)
            .json();
        (v["status"] == "running").then_some(())
    });

    std::thread::scope(|scope| {
        // A foreground command under way with a 1.5 s limit: it sleeps 1 s.
        let cmd = scope.spawn(|| {
            command(
                &srv,
                &sb,
                &json!({"command": "sleep 1; echo done-after-the-pause", "timeout": 1500}),
            )
        });
        sandbox_procs(srv.pid(), "done-after-the-pause");

        let created = get(&srv, &sb);
        let paused = pause(&srv, &sb);
        let paused_at = Instant::now();
        assert_eq!(
            is_frozen(&freezer),
            Some(true),
            "the jail's cgroup is frozen"
        );
        let left = ms(&created["expires_at"]) - ms(&paused["paused_at"]);
        // While paused: get, list, the run's record and metrics work; the CPU stays flat.
        let v = get(&srv, &sb);
        assert_eq!(v["status"], "paused", "{v}");
        let list = call(&srv, "GET", "/v1/sandboxes", Some(KEY_A), None)
            .expect(200)
            .json();
        let item = list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == sb.as_str())
            .unwrap_or_else(|| panic!("a paused sandbox is listed as running: {list:#}"));
        assert_eq!(item["status"], "paused", "{item}");
        let v = call(&srv, "GET", &run_path, Some(KEY_A), None)
            .expect(200)
            .json();
        assert_eq!(v["status"], "running", "frozen mid-run: {v}");
        let mut samples = Vec::new();
        while paused_at.elapsed() < Duration::from_secs(2) {
            samples.push(cpu_pct(&srv, &sb));
        }
        assert!(samples.len() >= 4, "{samples:?}");
        assert!(
            samples.iter().all(|&p| p == 0.0),
            "a paused sandbox used CPU: {samples:?}"
        );
        for p in &procs {
            assert!(alive(p), "paused, not killed: {p:?}");
        }
        std::thread::sleep(Duration::from_millis(2500).saturating_sub(paused_at.elapsed()));

        let resumed = resume(&srv, &sb);
        assert_eq!(is_frozen(&freezer), Some(false), "thawed");
        // The clock ran again from the resume with the lifetime left at the pause.
        let expires = ms(&resumed["expires_at"]);
        let expected = now_ms() + left;
        assert!(
            (expires - expected).abs() < 1500,
            "expires_at {expires} vs {expected}: {resumed}"
        );
        // The run under way finished within its limit: the pause did not count.
        let done = eventually(Duration::from_secs(20), "the run to finish", || {
            let v = call(&srv, "GET", &run_path, Some(KEY_A), None)
                .expect(200)
                .json();
            (v["status"] != "running" && v["status"] != "queued").then_some(v)
        });
        assert_result(&done, "42");
        let ran = cmd.join().unwrap();
        assert_eq!(
            ran.exit(),
            "0",
            "the command was not stopped for the pause: {ran}"
        );
        assert_eq!(
            ran.output("stdout").trim_end(),
            "done-after-the-pause",
            "{ran}"
        );
    });
    assert_result(&py(&srv, &sb, "x"), "42");
    eventually(Duration::from_secs(20), "the loop to run again", || {
        (cpu_pct(&srv, &sb) > 50.0).then_some(())
    });
    for p in &procs {
        assert!(alive(p), "{p:?}");
    }
}

/// While paused: code runs, contexts, commands and files answer 409 `SANDBOX_PAUSED` with a
/// sentence saying how to resume (in each route's error shape); pausing again is 409
/// `SANDBOX_PAUSED`, resuming a running sandbox 409 `SANDBOX_NOT_PAUSED`. The expiry clock
/// stops: a sandbox paused past its expiry is still there, a renewal while paused sets the
/// lifetime it has after the resume, and it expires that long after the resume.
#[test]
fn a_paused_sandbox_refuses_work_and_its_expiry_clock_stops() {
    let srv = Server::start();
    let sb = create(&srv, json!({"timeout_secs": 3}));
    let r = lifecycle(&srv, KEY_A, &sb, "resume");
    let v = r.error(409, Some("SANDBOX_NOT_PAUSED"));
    assert!(v["detail"].as_str().unwrap().contains("not paused"), "{v}");
    pause(&srv, &sb);
    let sentence = format!("sandbox {sb} is paused; resume it with POST /v1/sandboxes/{sb}/resume");

    // Native routes: {"detail", "code"}.
    let r = call(
        &srv,
        "POST",
        &sb_path(&sb, "/code/runs?wait=true"),
        Some(KEY_A),
        Some(&json!({"code": "1"})),
    );
    let v = r.error(409, Some("SANDBOX_PAUSED"));
    assert_eq!(v["detail"], sentence.as_str(), "{v}");
    // execd routes: {"code", "message"}.
    for (method, rest, body) in [
        ("POST", "/command", Some(json!({"command": "echo hi"}))),
        ("POST", "/code/context", Some(json!({"language": "python"}))),
        (
            "POST",
            "/code",
            Some(json!({"code": "1", "context": {"language": "python"}})),
        ),
        ("GET", "/files/info?path=/workspace", None),
        ("GET", "/directories/list?path=/workspace", None),
    ] {
        let r = call(
            &srv,
            method,
            &sb_path(&sb, rest),
            Some(KEY_A),
            body.as_ref(),
        );
        let v = execd_error(&r, 409, Some("SANDBOX_PAUSED"));
        assert_eq!(v["message"], sentence.as_str(), "{method} {rest}: {v}");
    }
    let r = lifecycle(&srv, KEY_A, &sb, "pause");
    let v = r.error(409, Some("SANDBOX_PAUSED"));
    assert!(
        v["detail"].as_str().unwrap().contains("already paused"),
        "{v}"
    );

    // Past its 3 s: still there, paused.
    std::thread::sleep(Duration::from_millis(3500));
    let v = get(&srv, &sb);
    assert_eq!(v["status"], "paused", "{v}");
    // Renewed while paused: 4 s after the resume.
    let v = call(
        &srv,
        "POST",
        &sb_path(&sb, "/timeout"),
        Some(KEY_A),
        Some(&json!({"timeout_secs": 4})),
    )
    .expect(200)
    .json();
    assert_eq!(v["status"], "paused", "{v}");
    std::thread::sleep(Duration::from_millis(1500));
    let v = get(&srv, &sb);
    assert_eq!(v["status"], "paused", "{v}");
    // A paused sandbox's expires_at says when it would expire if resumed now.
    let shown = ms(&v["expires_at"]) - now_ms();
    assert!((3000..=4100).contains(&shown), "{shown} ms: {v}");

    let resumed_at = now_ms();
    let v = resume(&srv, &sb);
    let expires = ms(&v["expires_at"]);
    assert!(
        (expires - resumed_at - 4000).abs() < 1000,
        "4 s after the resume: {v}"
    );
    let r = lifecycle(&srv, KEY_A, &sb, "resume");
    r.error(409, Some("SANDBOX_NOT_PAUSED"));
    assert_result(&py(&srv, &sb, "1 + 1"), "2");

    // Then it expires on its renewed clock, not before.
    let gone = eventually(Duration::from_secs(15), "the sandbox to expire", || {
        let r = call(&srv, "GET", &sb_path(&sb, ""), Some(KEY_A), None);
        (r.status == 404).then_some((r, now_ms()))
    });
    gone.0.error(404, Some("SANDBOX_EXPIRED"));
    assert!(
        gone.1 >= expires - 100,
        "expired at {} before its expiry {expires}",
        gone.1
    );
    let r = lifecycle(&srv, KEY_A, &sb, "pause");
    r.error(404, Some("SANDBOX_EXPIRED"));
}

/// Deleting a paused sandbox kills everything in it (a frozen task on cgroup v1 does not die
/// until thawed): no process is left, and its cgroup is gone or thawed and empty; so too when
/// the server stops (its record then says the sandbox was paused) and when it is killed.
#[test]
fn a_paused_sandbox_dies_whole_when_deleted_or_when_its_server_ends() {
    let mut srv = Server::start();
    let server = srv.pid();
    let data_dir = srv.data_dir.clone();

    // Deleted while paused.
    let sb = create(&srv, json!({}));
    assert_result(&py(&srv, &sb, "x = 1\nx"), "1");
    background(&srv, &sb, "sleep 987654");
    let procs = sandbox_procs(server, "987654");
    let freezer = freezer_of(procs[0].pid);
    pause(&srv, &sb);
    assert_eq!(is_frozen(&freezer), Some(true), "{freezer:?}");
    let t = Instant::now();
    let r = call(&srv, "DELETE", &sb_path(&sb, ""), Some(KEY_A), None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_dead(&procs, &freezer);
    call(&srv, "GET", &sb_path(&sb, ""), Some(KEY_A), None).error(404, Some("SANDBOX_DELETED"));
    lifecycle(&srv, KEY_A, &sb, "resume").error(404, Some("SANDBOX_DELETED"));

    // The server stops (SIGTERM) while a sandbox is paused.
    let sb = create(&srv, json!({}));
    background(&srv, &sb, "sleep 876543");
    let procs = sandbox_procs(server, "876543");
    let freezer = freezer_of(procs[0].pid);
    pause(&srv, &sb);
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGTERM) }, 0);
    eventually(Duration::from_secs(30), "the server to exit", || {
        proc_info(server)
            .is_none_or(|p| p.state == 'Z')
            .then_some(())
    });
    srv.kill9();
    assert_dead(&procs, &freezer);
    let mut second = Server::with(Opts::new().data_dir(&data_dir));
    let r = call(&second, "GET", &sb_path(&sb, ""), Some(KEY_A), None);
    let v = r.error(404, Some("SANDBOX_TERMINATED"));
    assert!(
        v["detail"].as_str().unwrap().contains("paused"),
        "the reason says it was paused: {v}"
    );

    // The server is killed (SIGKILL) while a sandbox is paused: its spawner ends the jails.
    let server = second.pid();
    let sb = create(&second, json!({}));
    background(&second, &sb, "sleep 765432");
    let procs = sandbox_procs(server, "765432");
    let freezer = freezer_of(procs[0].pid);
    pause(&second, &sb);
    second.kill9();
    assert_dead(&procs, &freezer);
}

/// Within a few seconds, none of `procs` is alive and their cgroup is gone, or thawed with
/// none of them in it.
#[track_caller]
fn assert_dead(procs: &[Proc], freezer: &(String, &'static str)) {
    eventually(
        Duration::from_secs(15),
        "the sandbox's processes to be gone",
        || (!procs.iter().any(alive)).then_some(()),
    );
    if is_frozen(freezer) == Some(true) {
        // The slot may have been reused by a new jail since; a frozen one is not ours.
        let procs_file = std::path::Path::new(&freezer.0).with_file_name("cgroup.procs");
        let pids = std::fs::read_to_string(&procs_file).unwrap_or_default();
        for p in procs {
            assert!(
                !pids.lines().any(|l| l.trim() == p.pid.to_string()),
                "{p:?} is still in the frozen {}",
                procs_file.display()
            );
        }
    }
}

/// Another tenant's pause and resume (and a well-formed unknown id) are 404
/// `SANDBOX_NOT_FOUND`, and change nothing; the sandbox's own access token may pause and
/// resume it.
#[test]
fn another_tenant_cannot_pause_or_resume_a_sandbox() {
    let srv = Server::start();
    let created = create_as(&srv, KEY_A, &json!({}));
    let sb = created["id"].as_str().unwrap().to_string();
    let token = created["access_token"].as_str().unwrap().to_string();
    for action in ["pause", "resume"] {
        lifecycle(&srv, KEY_B, &sb, action).error(404, Some("SANDBOX_NOT_FOUND"));
        lifecycle(&srv, KEY_A, "sb_aaaaaaaaaaaaaaaaaaaaaaaaaa", action)
            .error(404, Some("SANDBOX_NOT_FOUND"));
        lifecycle(&srv, KEY_A, "nope", action).error(404, Some("SANDBOX_NOT_FOUND"));
    }
    assert_eq!(get(&srv, &sb)["status"], "running");
    pause(&srv, &sb);
    lifecycle(&srv, KEY_B, &sb, "resume").error(404, Some("SANDBOX_NOT_FOUND"));
    call(&srv, "DELETE", &sb_path(&sb, ""), Some(KEY_B), None)
        .error(404, Some("SANDBOX_NOT_FOUND"));
    assert_eq!(get(&srv, &sb)["status"], "paused");
    let list = call(&srv, "GET", "/v1/sandboxes", Some(KEY_B), None)
        .expect(200)
        .json();
    assert!(
        !list.to_string().contains(&sb),
        "B lists nothing of A's: {list}"
    );

    // The sandbox's own token.
    let r = srv
        .req("POST", &sb_path(&sb, "/resume"), None)
        .header("X-EXECD-ACCESS-TOKEN", &token)
        .send();
    let r = Resp::of(r).expect(200).json();
    assert_eq!(r["status"], "running", "{r}");
    assert_result(&py(&srv, &sb, "2 + 2"), "4");
}
