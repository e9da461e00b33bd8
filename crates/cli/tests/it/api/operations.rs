//! Operations: health, metrics, the OpenAPI document, the docs page, and the languages.

use serde_json::json;

use crate::server::{KEY_A, Opts, Server};

#[test]
fn health_metrics_openapi_and_docs() {
    let srv = Server::start();
    let r = srv.get("/health", None).expect(200);
    assert_eq!(r.json(), json!({"status": "ok"}));

    // Metrics need a key.
    srv.get("/metrics", None).error(401, None);
    let v = srv.execute(&json!({"language": "python", "code": "print(1)"}));
    assert_eq!(v["stdout"], "1\n");
    let r = srv.get("/metrics", Some(KEY_A)).expect(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    for name in [
        "runcell_http_requests_total",
        "runcell_executions_total",
        "runcell_execution_duration_seconds",
        "runcell_queue_depth",
    ] {
        assert!(
            r.text.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{}",
            r.text
        );
    }
    // The run is counted, with its language and status.
    assert!(
        r.text
            .lines()
            .any(|l| l.starts_with("runcell_executions_total")
                && l.contains("language=\"python\"")
                && l.contains("status=\"completed\"")
                && l.trim_end().ends_with(" 1")),
        "{}",
        r.text
    );
    assert!(
        r.text
            .lines()
            .any(|l| l.starts_with("runcell_execution_duration_seconds_count")),
        "a histogram: {}",
        r.text
    );

    // The OpenAPI 3.1 document lists every route.
    let doc = srv.get("/openapi.json", None).expect(200).json();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/v1/execute", "post"),
        ("/api/v1/execute/async", "post"),
        ("/api/v1/execute/batch", "post"),
        ("/api/v1/executions", "get"),
        ("/api/v1/executions/{execution_id}", "get"),
        ("/api/v1/executions/{execution_id}/cancel", "post"),
        ("/api/v1/executions/{execution_id}/deliveries", "get"),
        ("/api/v1/webhook-secret", "get"),
        ("/api/v1/languages", "get"),
        ("/api/submit", "post"),
        ("/api/result/{execution_id}", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    // The request's `network` is described, and what results report of it.
    let schemas = &doc["components"]["schemas"];
    for name in [
        "NetworkRequest",
        "EgressRequest",
        "NetLimitsRequest",
        "NetworkStats",
    ] {
        assert!(
            schemas.get(name).is_some(),
            "{name} missing from the schemas"
        );
    }
    assert!(
        schemas["ExecuteRequest"]["properties"]["network"]
            .to_string()
            .contains("NetworkRequest"),
        "{}",
        schemas["ExecuteRequest"]["properties"]["network"]
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert!(
        schemes.as_object().is_some_and(|s| s.len() >= 2),
        "{schemes}"
    );

    // The docs page is HTML.
    let r = srv.get("/docs", None).expect(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    assert!(r.text.to_ascii_lowercase().contains("<html"), "{}", r.text);
}

#[test]
fn languages_lists_the_eleven_with_versions() {
    let srv = Server::start();
    let v = srv.get("/api/v1/languages", Some(KEY_A)).expect(200).json();
    let list = v.as_array().expect("an array");
    for id in [
        "python",
        "javascript",
        "typescript",
        "bash",
        "c",
        "cpp",
        "java",
        "go",
        "rust",
        "ruby",
        "php",
    ] {
        let l = list
            .iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed: {v:#}"));
        assert_eq!(l["available"], true, "{l}");
        assert!(
            l["version"]
                .as_str()
                .is_some_and(|s| s.chars().next().is_some_and(|c| c.is_ascii_digit())),
            "{l}"
        );
        assert!(l["name"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
        assert!(l["aliases"].is_array(), "{l}");
        assert!(l["compiled"].is_boolean(), "{l}");
    }
    let python = list.iter().find(|l| l["id"] == "python").unwrap();
    assert_eq!(python["compiled"], false);
    assert!(python["aliases"].as_array().unwrap().contains(&json!("py")));
    let c = list.iter().find(|l| l["id"] == "c").unwrap();
    assert_eq!(c["compiled"], true);
    // Default process limits: the server's own, higher for runtimes that start threads.
    let procs = |id: &str| {
        let l = list.iter().find(|l| l["id"] == id).unwrap();
        l["default_max_processes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{l}"))
    };
    assert_eq!(procs("python"), 64);
    assert!(procs("go") > 64 && procs("go") <= 1024, "{v:#}");
    assert!(procs("java") > 64 && procs("java") <= 1024, "{v:#}");
    // The version listed is the one runs report; an alias runs the language.
    let r = srv.execute(&json!({"language": "py", "code": "print(1)"}));
    assert_eq!(r["language"], "python");
    assert_eq!(r["version"], python["version"]);
}

/// A server whose configured process limits are lower than Go's and Java's own defaults.
const TIGHT_PROCESSES: &str = "
[engine.limits.defaults]
wall_time = 10.0
cpu_time = 5.0
memory_mb = 256
max_processes = 32
max_output_bytes = 1048576
max_file_size_mb = 16

[engine.limits.maxima]
wall_time = 60.0
cpu_time = 30.0
memory_mb = 1024
max_processes = 100
max_output_bytes = 1048576
max_file_size_mb = 64
";

#[test]
fn a_languages_process_default_never_passes_the_servers_maximum() {
    let srv = Server::with(Opts::new().config(TIGHT_PROCESSES));
    let v = srv.get("/api/v1/languages", Some(KEY_A)).expect(200).json();
    let procs = |id: &str| {
        let l = v
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == id)
            .unwrap();
        l["default_max_processes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{l}"))
    };
    assert_eq!(procs("python"), 32, "{v:#}");
    assert_eq!(procs("go"), 100, "{v:#}");
    assert_eq!(procs("java"), 100, "{v:#}");
    // Go's default is capped at the maximum: the program that needs ~135 threads hits it,
    // and the reason says there is nothing left to raise.
    let r = srv.execute(&json!({"language": "go", "code": crate::cli::GO_THREADS}));
    assert_eq!(r["limit_exceeded"], "processes", "{r:#}");
    let reason = r["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("limit of 100 processes and threads")
            && reason.contains("100 is this server's maximum"),
        "{reason}"
    );
    // An explicit value above the maximum is refused, whatever the language's default.
    let body = json!({"language": "go", "code": "package main\nfunc main() {}\n",
                      "limits": {"max_processes": 101}});
    srv.post("/api/v1/execute", Some(KEY_A), &body)
        .error(400, Some("INVALID_LIMIT"));
    // A lower explicit value wins, and the hint names this server's maximum.
    let bomb = "import threading, time\nwhile True:\n    \
                threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n";
    let r = srv.execute(&json!({"language": "python", "code": bomb,
                                "limits": {"max_processes": 8}}));
    assert_eq!(r["limit_exceeded"], "processes", "{r:#}");
    let reason = r["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("limit of 8 processes and threads")
            && reason.contains("raise max_processes (up to 100 on this server)"),
        "{reason}"
    );
}

#[test]
fn an_uninstalled_language_is_listed_unavailable_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cobol.toml"),
        r#"
id = "cobol"
name = "COBOL"
aliases = ["cob"]
extensions = ["cob"]
source_file = "main.cob"
requires = ["/nonexistent/runcell-test/cobc"]
[run]
command = ["/nonexistent/runcell-test/cobc", "{source}"]
[version]
command = ["/nonexistent/runcell-test/cobc", "--version"]
regex = 'cobc (\S+)'
"#,
    )
    .unwrap();
    let srv = Server::with(
        crate::server::Opts::new().env("RUNCELL_LANGUAGES_DIR", dir.path().to_str().unwrap()),
    );
    let v = srv.get("/api/v1/languages", Some(KEY_A)).expect(200).json();
    let cobol = v
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == "cobol")
        .unwrap_or_else(|| panic!("cobol is listed: {v:#}"));
    assert_eq!(cobol["available"], false, "{cobol}");
    assert_eq!(cobol["version"], serde_json::Value::Null, "{cobol}");
    for route in ["/api/v1/execute", "/api/v1/execute/async"] {
        let r = srv.post(
            route,
            Some(KEY_A),
            &json!({"language": "cob", "code": "DISPLAY 'HI'."}),
        );
        r.error(400, Some("LANGUAGE_UNAVAILABLE"));
    }
    let r = srv.post(
        "/api/v1/execute/batch",
        Some(KEY_A),
        &json!([{"language": "python", "code": "print(1)"},
                {"language": "cobol", "code": "DISPLAY 'HI'."}]),
    );
    r.error(400, Some("LANGUAGE_UNAVAILABLE"));
    assert!(srv.list_all(KEY_A, "").is_empty());
}

/// The CPUs a process's task may run on (`Cpus_allowed_list` of its status).
fn cpus_of(status: &std::path::Path) -> Vec<usize> {
    let text = std::fs::read_to_string(status).expect("read a status file");
    let list = text
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    runcell_jail::cpus::parse_cpu_list(list.trim()).expect("a CPU list")
}

/// The CPUs of every thread of process `pid`.
fn thread_cpus(pid: u32) -> Vec<Vec<usize>> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the server's threads")
        .map(|t| cpus_of(&t.expect("a thread").path().join("status")))
        .collect()
}

/// The server's own threads run on the first CPU per four (`server_cpus = "auto"`) or on
/// those listed; the spawner and every run keep all of them (their hand-offs are what the
/// confinement is for, docs/benchmarks.md). A list that names no usable CPU, or is not a
/// list, stops the server at start with a sentence.
#[test]
fn the_servers_threads_keep_to_their_cpus_and_runs_keep_every_cpu() {
    let host = cpus_of(std::path::Path::new("/proc/self/status"));
    let expected = if host.len() >= 2 {
        host[..(host.len() / 4).max(1)].to_vec()
    } else {
        host.clone()
    };
    let srv = Server::start();
    let threads = thread_cpus(srv.pid());
    assert!(threads.len() > 3, "the server has its threads: {threads:?}");
    for t in &threads {
        assert_eq!(t, &expected, "a server thread (host CPUs {host:?})");
    }
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", srv.pid()))
        .expect("the server's children");
    let spawner: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the spawner is the server's child");
    assert_eq!(
        cpus_of(&std::path::PathBuf::from(format!("/proc/{spawner}/status"))),
        host,
        "the spawner"
    );
    let v = srv.execute(&json!({"language": "python",
        "code": "import os\nprint(sorted(os.sched_getaffinity(0)), os.cpu_count())"}));
    let cpus: Vec<String> = host.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        v["stdout"],
        format!(
            "[{}] {}\n",
            cpus.join(", "),
            std::thread::available_parallelism().unwrap()
        ),
        "{v}"
    );
    drop(srv);

    let srv = Server::with(Opts::new().env("RUNCELL_SERVER_CPUS", "all"));
    for t in thread_cpus(srv.pid()) {
        assert_eq!(t, host, "with server_cpus = \"all\"");
    }
    drop(srv);

    let dir = tempfile::tempdir().expect("a temporary directory");
    for (spec, says) in [
        (
            "banana",
            "server_cpus must be \"auto\", \"all\" or a list of CPU numbers",
        ),
        ("1000", "names no CPU this process may use"),
    ] {
        crate::server::serve_refuses(
            dir.path(),
            &[],
            &[("RUNCELL_SERVER_CPUS", Some(spec))],
            says,
        );
    }
}
