//! Streaming synchronous executions, the async list, and cancellation.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::{
    KEY_A, KEY_B, Opts, Server, SseEvent, eventually, is_uuid_v4, read_sse, sse_text,
};

type Event = SseEvent;

const EVENT_TYPES: &[&str] = &[
    "init",
    "status",
    "stdout",
    "stderr",
    "execution_complete",
    "ping",
];

fn read_events(
    resp: &mut reqwest::blocking::Response,
    stop: impl FnMut(&Value) -> bool,
) -> Vec<Event> {
    read_sse(resp, EVENT_TYPES, stop)
}
fn text_of(events: &[Event], kind: &str) -> String {
    sse_text(events, kind)
}

/// Checks a whole stream: init first, execution_complete last with the result, and output
/// events that add up to the result's output.
fn check_stream(events: &[Event], stdout: &str, stderr: &str) -> Value {
    let first = &events[0].v;
    assert_eq!(first["type"], "init", "{first}");
    let id = first["text"].as_str().unwrap();
    assert!(is_uuid_v4(id), "{first}");
    let last = &events.last().unwrap().v;
    assert_eq!(last["type"], "execution_complete", "{last}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.v["type"] == "execution_complete")
            .count(),
        1
    );
    assert!(last["execution_time"].is_number(), "{last}");
    let result = &last["result"];
    assert_eq!(result["execution_id"], id, "{last}");
    assert_eq!(result["stdout"], stdout, "{last}");
    assert_eq!(result["stderr"], stderr, "{last}");
    assert_eq!(result["exit_code"], 0, "{last}");
    assert_eq!(result["status"], "completed", "{last}");
    assert_eq!(text_of(events, "stdout"), stdout);
    assert_eq!(text_of(events, "stderr"), stderr);
    for w in events.windows(2) {
        assert!(
            w[0].v["timestamp"].as_u64() <= w[1].v["timestamp"].as_u64(),
            "timestamps go forward"
        );
    }
    result.clone()
}

#[test]
fn stream_true_sends_output_as_the_program_prints_it() {
    let srv = Server::start();
    let code = "import sys, time\nfor i in range(4):\n    print(f'line {i}', flush=True)\n    \
                time.sleep(0.4)\nprint('oops', file=sys.stderr, flush=True)";
    let started = Instant::now();
    let mut resp = srv
        .req("POST", "/api/v1/execute?stream=true", Some(KEY_A))
        .header("Content-Type", "application/json")
        .body(json!({"language": "python", "code": code}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let events = read_events(&mut resp, |_| false);
    let result = check_stream(&events, "line 0\nline 1\nline 2\nline 3\n", "oops\n");

    // The output came in pieces, well before the end: the program sleeps 1.6 s after its
    // first line.
    let outs: Vec<&Event> = events.iter().filter(|e| e.v["type"] == "stdout").collect();
    assert!(outs.len() >= 2, "stdout in several events");
    let end = events.last().unwrap();
    let lead = end.at.duration_since(outs[0].at);
    assert!(
        lead >= Duration::from_millis(800),
        "the first line arrived only {lead:?} before the end (after {:?})",
        outs[0].at.duration_since(started)
    );
    let lead_ts = end.v["timestamp"].as_u64().unwrap() - outs[0].v["timestamp"].as_u64().unwrap();
    assert!(lead_ts >= 800, "event timestamps {lead_ts} ms apart");

    // The streamed run is stored like any other.
    let id = events[0].v["text"].as_str().unwrap();
    let got = srv.execution(KEY_A, id);
    assert_eq!(got["status"], "completed");
    assert_eq!(got["result"], result);
}

#[test]
fn accept_event_stream_streams_too() {
    let srv = Server::start();
    let mut resp = srv
        .req("POST", "/api/v1/execute", Some(KEY_A))
        .header("Content-Type", "application/json")
        .header("Accept", "text/event-stream")
        .body(json!({"language": "python", "code": "print('hi')"}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let events = read_events(&mut resp, |_| false);
    check_stream(&events, "hi\n", "");
    assert!(events.iter().any(|e| e.v["type"] == "status"));

    // Without either, the same request is plain JSON.
    let r = srv.post(
        "/api/v1/execute?stream=false",
        Some(KEY_A),
        &json!({"language": "python", "code": "print('hi')"}),
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(r.expect(200).json()["stdout"], "hi\n");
}

#[test]
fn a_client_that_disconnects_cancels_the_run() {
    let srv = Server::start();
    let programs = [
        // Prints forever.
        "import time\ni = 0\nwhile True:\n    print(i, flush=True)\n    i += 1\n    time.sleep(0.1)",
        // Silent forever.
        "print('start', flush=True)\nwhile True: pass",
    ];
    for code in programs {
        let mut resp = srv
            .req("POST", "/api/v1/execute?stream=true", Some(KEY_A))
            .header("Content-Type", "application/json")
            .body(json!({"language": "python", "code": code, "timeout": 120}).to_string())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let events = read_events(&mut resp, |v| v["type"] == "stdout");
        let id = events[0].v["text"].as_str().unwrap().to_string();
        assert_eq!(srv.execution(KEY_A, &id)["status"], "running");
        let gone = Instant::now();
        drop(resp);
        let v = eventually(Duration::from_secs(15), "the run to be cancelled", || {
            let v = srv.execution(KEY_A, &id);
            (v["status"] != "running").then_some(v)
        });
        assert_eq!(v["status"], "failed", "{v:#}");
        let reason = v["failure_reason"].as_str().unwrap_or_default();
        assert!(reason.to_lowercase().contains("cancel"), "{v:#}");
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "cancelled after {:?}",
            gone.elapsed()
        );
    }
}

#[test]
fn the_list_filters_and_pages_newest_first() {
    let srv = Server::start();
    let mut submitted = Vec::new();
    for i in 0..5 {
        submitted.push(srv.submit(
            KEY_A,
            &json!({"language": "python", "code": format!("print({i})"), "session_id": "alpha"}),
        ));
    }
    for i in 0..2 {
        submitted.push(srv.submit(
            KEY_A,
            &json!({"language": "bash", "code": format!("echo {i}"), "session_id": "beta"}),
        ));
    }
    let failing = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "while True: pass", "timeout": 0.5}),
    );
    submitted.push(failing.clone());
    for id in &submitted {
        srv.wait_done(KEY_A, id, Duration::from_secs(60));
    }
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    let ids = |list: &[Value]| -> Vec<String> {
        list.iter()
            .map(|e| e["execution_id"].as_str().unwrap().to_string())
            .collect()
    };

    let all = srv.list_all(KEY_A, "");
    assert_eq!(ids(&all), newest_first);
    for e in &all {
        for k in [
            "execution_id",
            "status",
            "created_at",
            "started_at",
            "completed_at",
        ] {
            assert!(e.get(k).is_some(), "{k} in {e}");
        }
    }

    let alpha = srv.list_all(KEY_A, "&session_id=alpha");
    assert_eq!(ids(&alpha), newest_first[3..8].to_vec());
    for e in &alpha {
        assert_eq!(e["result"]["session_id"], "alpha");
    }
    let beta = srv.list_all(KEY_A, "&session_id=beta");
    assert_eq!(ids(&beta), newest_first[1..3].to_vec());
    assert!(srv.list_all(KEY_A, "&session_id=gamma").is_empty());

    let failed = srv.list_all(KEY_A, "&status=failed");
    assert_eq!(ids(&failed), vec![failing.clone()]);
    let completed = srv.list_all(KEY_A, "&status=completed");
    assert_eq!(ids(&completed), newest_first[1..].to_vec());
    assert!(srv.list_all(KEY_A, "&status=pending").is_empty());
    assert!(srv.list_all(KEY_A, "&status=running").is_empty());
    let alpha_failed = srv.list_all(KEY_A, "&status=failed&session_id=alpha");
    assert!(alpha_failed.is_empty());

    // Pages of 3 by cursor: every execution once, in order.
    for (query, expected) in [
        ("", newest_first.clone()),
        ("&session_id=alpha", newest_first[3..8].to_vec()),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut path = format!("/api/v1/executions?limit=3{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let v = srv.get(&path, Some(KEY_A)).expect(200).json();
            let page = v["executions"].as_array().unwrap();
            assert!(page.len() <= 3, "{v}");
            // A next_cursor always leads to a non-empty page.
            assert!(!page.is_empty() || cursor.is_none(), "an empty page: {v}");
            seen.extend(ids(page));
            pages += 1;
            assert!(pages <= 10, "pagination does not end");
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, expected, "pages of {query:?}");
    }

    // The default page size is 20.
    for i in 0..15 {
        srv.submit(
            KEY_A,
            &json!({"language": "bash", "code": format!("echo {i}")}),
        );
    }
    let v = srv
        .get("/api/v1/executions", Some(KEY_A))
        .expect(200)
        .json();
    assert_eq!(v["executions"].as_array().unwrap().len(), 20);
    assert!(v["next_cursor"].is_string());
}

/// A synchronous execution is recorded as running once it has run for a moment (listed,
/// fetched and cancellable by id meanwhile); one that ends sooner is recorded once, final,
/// and is then fetched and listed like any other.
#[test]
fn synchronous_executions_are_recorded_running_after_a_moment_and_short_ones_final() {
    let srv = Server::start();
    let url = format!("{}/api/v1/execute", srv.url);
    let slow = std::thread::spawn(move || {
        crate::server::client()
            .post(url)
            .header("Authorization", format!("Bearer {KEY_A}"))
            .json(&json!({"language": "python",
                          "code": "import time\ntime.sleep(3)\nprint('slow')",
                          "timeout": 30}))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    });
    let running = eventually(Duration::from_secs(10), "the slow run to be listed", || {
        srv.list_all(KEY_A, "&status=running").pop()
    });
    let id = running["execution_id"].as_str().unwrap().to_string();
    assert!(running["started_at"].is_string(), "{running:#}");
    assert_eq!(srv.execution(KEY_A, &id)["status"], "running");
    let r = slow.join().unwrap();
    assert_eq!(
        (r["execution_id"].as_str(), r["stdout"].as_str()),
        (Some(&*id), Some("slow\n"))
    );
    let v = srv.execution(KEY_A, &id);
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["result"]["stdout"], "slow\n", "{v:#}");

    let r = srv
        .post(
            "/api/v1/execute",
            Some(KEY_A),
            &json!({"language": "python", "code": "print(7)"}),
        )
        .expect(200)
        .json();
    let quick = r["execution_id"].as_str().unwrap().to_string();
    let v = srv.execution(KEY_A, &quick);
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["result"]["stdout"], "7\n", "{v:#}");
    for k in ["created_at", "started_at", "completed_at", "expires_at"] {
        assert!(v[k].is_string(), "{k} in {v:#}");
    }
    srv.get(&format!("/api/v1/executions/{quick}"), Some(KEY_B))
        .error(404, Some("NOT_FOUND"));
    let listed: Vec<Value> = srv
        .list_all(KEY_A, "&status=completed")
        .iter()
        .map(|e| e["execution_id"].clone())
        .collect();
    assert_eq!(listed, vec![json!(quick), json!(id)]);
    assert!(srv.list_all(KEY_A, "&status=running").is_empty());
}

#[test]
fn cancel_stops_pending_and_running_executions_and_refuses_finished_ones() {
    let srv = Server::with(Opts::new().env("RUNCELL_CONCURRENCY", "1"));
    let sleeper = srv.submit(
        KEY_A,
        &json!({"language": "python",
                "code": "import time\nprint('A started', flush=True)\ntime.sleep(100)",
                "timeout": 120}),
    );
    srv.wait_status(KEY_A, &sleeper, "running", Duration::from_secs(30));
    let queued = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "print('B ran')"}),
    );
    let ids = |q: &str| -> Vec<Value> {
        srv.list_all(KEY_A, q)
            .iter()
            .map(|e| e["execution_id"].clone())
            .collect()
    };
    assert_eq!(ids("&status=running"), vec![json!(sleeper)]);
    assert_eq!(ids("&status=pending"), vec![json!(queued)]);

    // Pending: it never runs.
    let r = srv
        .post(
            &format!("/api/v1/executions/{queued}/cancel"),
            Some(KEY_A),
            &json!({}),
        )
        .expect(200);
    let v = r.json();
    assert_eq!(v["execution_id"], queued.as_str());
    assert_eq!(v["status"], "failed", "{v:#}");
    assert!(
        v["failure_reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{v:#}"
    );
    assert_eq!(v["started_at"], Value::Null, "{v:#}");
    assert_eq!(v["result"], Value::Null, "{v:#}");
    // Cancelling it again: it is finished.
    let r = srv.post(
        &format!("/api/v1/executions/{queued}/cancel"),
        Some(KEY_A),
        &json!({}),
    );
    r.error(409, None);

    // Running: killed at once.
    let t = Instant::now();
    let r = srv
        .req(
            "POST",
            &format!("/api/v1/executions/{sleeper}/cancel"),
            Some(KEY_A),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v = srv.wait_done(KEY_A, &sleeper, Duration::from_secs(10));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(v["status"], "failed", "{v:#}");
    assert!(
        v["failure_reason"]
            .as_str()
            .is_some_and(|s| s.to_lowercase().contains("cancel")),
        "{v:#}"
    );
    assert_eq!(v["result"]["exit_code"], -1, "{v:#}");

    // The queue goes on without the cancelled one.
    let after = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "print('C ran')"}),
    );
    let v = srv.wait_done(KEY_A, &after, Duration::from_secs(60));
    assert_eq!(v["result"]["stdout"], "C ran\n");
    let v = srv.execution(KEY_A, &queued);
    assert_eq!(v["status"], "failed", "{v:#}");
    assert_eq!(v["started_at"], Value::Null, "never started: {v:#}");
    assert_eq!(v["result"], Value::Null, "never ran: {v:#}");

    // A busy loop is killed quickly too.
    let spinner = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "while True: pass", "timeout": 120}),
    );
    srv.wait_status(KEY_A, &spinner, "running", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let v = srv
        .post(
            &format!("/api/v1/executions/{spinner}/cancel"),
            Some(KEY_A),
            &json!({}),
        )
        .expect(200)
        .json();
    let v = if v["status"] == "running" {
        srv.wait_done(KEY_A, &spinner, Duration::from_secs(10))
    } else {
        v
    };
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(v["status"], "failed", "{v:#}");
    assert!(
        v["failure_reason"]
            .as_str()
            .is_some_and(|s| s.to_lowercase().contains("cancel")),
        "{v:#}"
    );

    // Finished ones: 409.
    for id in [&after, &sleeper, &spinner] {
        let r = srv.post(
            &format!("/api/v1/executions/{id}/cancel"),
            Some(KEY_A),
            &json!({}),
        );
        r.error(409, None);
    }
    let r = srv.post(
        "/api/v1/executions/00000000-0000-4000-8000-000000000000/cancel",
        Some(KEY_A),
        &json!({}),
    );
    assert_eq!(
        r.json(),
        json!({"detail": "Execution not found", "code": "NOT_FOUND"})
    );
}

#[test]
fn output_is_utf8_and_truncation_never_splits_a_character() {
    let srv = Server::start();
    let v = srv.execute(&json!({
        "language": "python",
        "code": "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')"
    }));
    assert_eq!(v["stdout"], "ok \u{fffd}\u{fffd} end\n", "{v:#}");
    assert_eq!(v["stdout_truncated"], false);

    // 1 + 2 × 20 bytes cut at 10: "a" and four "é", never half of the fifth.
    let v = srv.execute(&json!({
        "language": "python",
        "code": "import sys\nsys.stdout.write('a' + 'é' * 20)\nsys.stdout.flush()",
        "limits": {"max_output_bytes": 10}
    }));
    assert_eq!(v["stdout_truncated"], true, "{v:#}");
    assert_eq!(v["stdout"], "aéééé", "{v:#}");
}

/// The compile cache: the same C program compiles once per tenant (the second run says
/// `compile.cached` and gives the same output); another tenant compiles its own; a run that
/// replaces its own binary cannot change what the next run gets; failed compilations and
/// sources that use `__TIME__` are never cached; Java's class files come back whole.
#[test]
fn compiled_programs_are_cached_per_tenant_and_runs_cannot_poison_the_cache() {
    let srv = Server::start();
    let run = |key: &str, language: &str, code: &str| -> Value {
        srv.post(
            "/api/v1/execute",
            Some(key),
            &json!({"language": language, "code": code}),
        )
        .expect(200)
        .json()
    };
    let cached = |r: &Value| r["compile"]["cached"] == true;
    // The program prints, then replaces its own binary with a script that would print "pwned".
    let c = r##"#include <stdio.h>
int main(void) {
    printf("cached %d\n", 6 * 7);
    fflush(stdout);
    FILE *f = fopen("evil", "w");
    fputs("#!/bin/sh\necho pwned\n", f);
    fclose(f);
    rename("evil", "main");
    return 0;
}
"##;
    let first = run(KEY_A, "c", c);
    assert_eq!(first["stdout"], "cached 42\n", "{first:#}");
    assert!(!cached(&first), "the first run compiles: {first:#}");
    for _ in 0..2 {
        let again = run(KEY_A, "c", c);
        assert_eq!(again["stdout"], "cached 42\n", "{again:#}");
        assert!(
            cached(&again),
            "the same program is not compiled again: {again:#}"
        );
        assert_eq!(again["compile"]["exit_code"], 0, "{again:#}");
        assert_eq!(again["compile"]["execution_time"], 0.0, "{again:#}");
    }
    // Another tenant does not share A's compiled programs.
    let other = run(KEY_B, "c", c);
    assert_eq!(other["stdout"], "cached 42\n", "{other:#}");
    assert!(!cached(&other), "{other:#}");

    // A compile error is compiled (and reported) every time.
    for _ in 0..2 {
        let bad = run(KEY_A, "c", "int main(void) { return x; }\n");
        assert_ne!(bad["compile"]["exit_code"], 0, "{bad:#}");
        assert!(!cached(&bad), "{bad:#}");
    }
    // __TIME__ makes the output depend on when it was compiled: never cached.
    let timed = "#include <stdio.h>\nint main(void) { puts(__TIME__); return 0; }\n";
    run(KEY_A, "c", timed);
    assert!(!cached(&run(KEY_A, "c", timed)));

    // Java: the compiler's class files (an inner class too) come back whole.
    let java = r#"public class Main {
    static class Inner { int v() { return 7; } }
    public static void main(String[] a) { System.out.println("java " + new Inner().v()); }
}
"#;
    let j1 = run(KEY_A, "java", java);
    assert_eq!(j1["stdout"], "java 7\n", "{j1:#}");
    let j2 = run(KEY_A, "java", java);
    assert_eq!(j2["stdout"], "java 7\n", "{j2:#}");
    assert!(cached(&j2), "{j2:#}");
}

/// `compile_limits` lowers the compile step's limits for one request (a C++ compiler given
/// 50 ms is stopped by the wall-clock limit, and says so; it needs several hundred), never
/// raises them (400 with a sentence), and a compile that failed under lowered limits is not
/// cached: the same source with the server's limits compiles and runs. (Not a memory limit:
/// a compiler held just under one may page its own binary in and out until the wall limit.)
#[test]
fn compile_limits_lower_the_compile_step_only() {
    let srv = Server::start();
    let code = "#include <iostream>\n#include <map>\n#include <string>\nint main() { std::map<std::string, int> m{{\"a\", 41}}; std::cout << m[\"a\"] + 1 << std::endl; }\n";
    let r: Value = srv
        .post(
            "/api/v1/execute",
            Some(KEY_A),
            &json!({"language": "cpp", "code": code, "compile_limits": {"wall_time": 0.05}}),
        )
        .expect(200)
        .json();
    assert_eq!(r["compile"]["limit_exceeded"], "wall_time", "{r:#}");
    assert_eq!(r["status"], "failed", "{r:#}");
    let ok: Value = srv
        .post(
            "/api/v1/execute",
            Some(KEY_A),
            &json!({"language": "cpp", "code": code}),
        )
        .expect(200)
        .json();
    assert_eq!(ok["stdout"], "42\n", "{ok:#}");
    assert_ne!(ok["compile"]["cached"], true, "{ok:#}");
    let too_much = srv.post(
        "/api/v1/execute",
        Some(KEY_A),
        &json!({"language": "cpp", "code": code, "compile_limits": {"wall_time": 100000}}),
    );
    let body = too_much.expect(400).text;
    assert!(body.contains("compile_limits.wall_time"), "{body}");
    let unknown = srv.post(
        "/api/v1/execute",
        Some(KEY_A),
        &json!({"language": "cpp", "code": code, "compile_limits": {"max_processes": 1}}),
    );
    unknown.expect(400);
}
