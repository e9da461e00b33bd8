//! Piston v2 at `/piston`: the requests of the npm `piston-client` (1.0.2) reproduced from its
//! source (node-fetch, the key in the URL's userinfo, so `Authorization: Basic`; the body a
//! JSON string, so `text/plain;charset=UTF-8`; its default `args` and timeouts), runtimes and
//! Piston's version selectors, files and their encodings, `output` in the order it was
//! written, isolate's statuses for every way a run ends, compile stages, auth and tenancy.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::server::{KEY_A, KEY_B, Opts, Resp, Server, sorted_keys as keys};

/// `Authorization: Basic` of `user:pass`, as node's http sends a URL's userinfo.
fn basic(userinfo: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(userinfo)
    )
}

/// A request as `piston-client` makes it through node-fetch 2: its default headers, the key
/// as the password of the server URL, a body (a JSON string) as `text/plain;charset=UTF-8`.
fn npm(srv: &Server, method: &str, route: &str, key: &str, body: Option<&Value>) -> Resp {
    let mut rb = srv
        .req(method, &format!("/piston/api/v2/{route}"), None)
        .header("Accept", "*/*")
        .header(
            "User-Agent",
            "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
        )
        .header("Accept-Encoding", "gzip,deflate")
        .header("Connection", "close")
        .header("Authorization", basic(&format!("piston:{key}")));
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "text/plain;charset=UTF-8")
            .body(b.to_string());
    }
    Resp::of(rb.send())
}

/// `client.execute(language, code, config)` of `piston-client` as tenant A: `runtimes()`, then
/// its body with its defaults (`or(config.x, default)`), the latest listed version of the
/// language by string order, and the first file `{content: code}` unless `config.files`.
fn client_execute(srv: &Server, language: &str, code: Option<&str>, config: &Value) -> Value {
    let runtimes = npm(srv, "GET", "runtimes", KEY_A, None).expect(200).json();
    let latest = runtimes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["language"] == language)
        .filter_map(|r| r["version"].as_str())
        .max()
        .map(String::from);
    let or = |key: &str, default: Value| config.get(key).cloned().unwrap_or(default);
    let body = json!({
        "language": language,
        "version": config.get("version").cloned().or(latest.map(Value::from)),
        "files": or("files", json!([{"content": code}])),
        "stdin": or("stdin", json!("")),
        "args": or("args", json!(["1", "2", "3"])),
        "compile_timeout": or("compileTimeout", json!(10000)),
        "run_timeout": or("runTimeout", json!(3000)),
        "compile_memory_limit": or("compileMemoryLimit", json!(-1)),
        "run_memory_limit": or("runMemoryLimit", json!(-1)),
    });
    npm(srv, "POST", "execute", KEY_A, Some(&body))
        .expect(200)
        .json()
}

/// `POST /api/v2/execute` as tenant A (plain JSON, the key as `Authorization: <key>`).
fn execute(srv: &Server, body: &Value) -> Resp {
    Resp::of(
        srv.req("POST", "/piston/api/v2/execute", None)
            .header("Authorization", KEY_A)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send(),
    )
}

/// A job's answer, asserting 200.
fn run(srv: &Server, body: &Value) -> Value {
    execute(srv, body).expect(200).json()
}

/// A Piston error: this status and `{"message": <this text>}`, nothing else.
#[track_caller]
fn piston_error(r: Resp, status: u16, message: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.json(), json!({"message": message}));
}

fn py(code: &str) -> Value {
    json!({"language": "python", "version": "*", "files": [{"content": code}]})
}

/// The keys of a stage, as Piston's `safe_call` returns them.
const STAGE_KEYS: &[&str] = &[
    "code",
    "cpu_time",
    "memory",
    "message",
    "output",
    "signal",
    "status",
    "stderr",
    "stdout",
    "wall_time",
];

#[test]
fn the_npm_piston_client_works_unchanged() {
    let srv = Server::start();
    // client.runtimes()
    // client.execute('python', code)
    let code = "import sys\nprint(sys.argv[1:], repr(sys.stdin.read()))";
    let v = client_execute(&srv, "python", Some(code), &json!({}));
    assert_eq!(v["language"], "python");
    assert_eq!(
        v["version"],
        srv.get("/api/v1/languages", Some(KEY_A))
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == "python")
            .unwrap()["version"]
    );
    assert!(v.get("compile").is_none(), "{v}");
    let r = &v["run"];
    assert_eq!(keys(r), STAGE_KEYS);
    // Piston ends stdin with a newline.
    assert_eq!(r["stdout"], "['1', '2', '3'] '\\n'\n");
    assert_eq!(r["output"], r["stdout"]);
    assert_eq!(r["stderr"], "");
    assert_eq!(r["code"], 0);
    assert_eq!(r["signal"], Value::Null);
    assert_eq!(r["status"], Value::Null);
    assert_eq!(r["message"], Value::Null);
    assert!(r["wall_time"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["cpu_time"].is_number() && r["memory"].as_u64().unwrap() > 0);
    // client.execute({language, files: [{name, content}], stdin, args, compileTimeout, …})
    let v = client_execute(
        &srv,
        "c",
        None,
        &json!({
            "files": [{"name": "main.c", "content":
                "#include <stdio.h>\nint main(int argc, char **argv) {\n  int n; scanf(\"%d\", &n);\n  printf(\"%d %s\\n\", n * 2, argv[argc - 1]);\n  return 0;\n}\n"}],
            "stdin": "21",
            "args": ["x", "y"],
            "compileTimeout": 10000,
            "runTimeout": 3000,
        }),
    );
    assert_eq!(v["run"]["stdout"], "42 y\n", "{v}");
    assert_eq!(keys(&v["compile"]), STAGE_KEYS);
    assert_eq!(v["compile"]["code"], 0);
    assert_eq!(v["compile"]["status"], Value::Null);
    // A wrong key in the URL: 401 with Piston's error shape.
    let r = npm(&srv, "GET", "runtimes", "not-a-key-0123456789", None);
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.json()["message"].is_string());
}

#[test]
fn auth_and_tenancy() {
    let srv = Server::start();
    let get = |path: &str, auth: Option<&str>| {
        let mut rb = srv.req("GET", &format!("/piston/api/v2/{path}"), None);
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        Resp::of(rb.send())
    };
    for route in ["runtimes", "packages"] {
        for auth in [
            None,
            Some("not-a-key-0123456789".to_string()),
            Some(basic(&format!("{KEY_A}:wrong-key-0123456789"))),
            Some(basic("user:")),
            Some("Basic !!!".to_string()),
        ] {
            let r = get(route, auth.as_deref());
            assert_eq!(r.status, 401, "{route} {auth:?}: {}", r.text);
            assert_eq!(keys(&r.json()), ["message"]);
        }
        // The key as the password of the URL, as ?key=, as the bare header, or natively.
        get(route, Some(&basic(&format!("anyone:{KEY_A}")))).expect(200);
        get(&format!("{route}?key={KEY_A}"), None).expect(200);
        get(route, Some(KEY_A)).expect(200);
        get(route, Some(&format!("Bearer {KEY_A}"))).expect(200);
        Resp::of(
            srv.req("GET", &format!("/piston/api/v2/{route}"), Some(KEY_A))
                .send(),
        )
        .expect(200);
    }
    assert_eq!(get("packages", Some(KEY_A)).json(), json!([]));
    // Packages are not installed through the API; other routes are not there: Piston's shape.
    for (method, route, status) in [
        ("POST", "packages", 405),
        ("DELETE", "packages", 405),
        ("GET", "execute", 405),
        ("GET", "connect", 404),
    ] {
        let r = Resp::of(
            srv.req(method, &format!("/piston/api/v2/{route}"), None)
                .header("Authorization", KEY_A)
                .send(),
        );
        assert_eq!(r.status, status, "{method} {route}: {}", r.text);
        assert_eq!(keys(&r.json()), ["message"]);
    }
    let r = execute(&srv, &py("print(1)"));
    assert_eq!(r.expect(200).json()["run"]["stdout"], "1\n");
    let r = Resp::of(
        srv.req("POST", "/piston/api/v2/execute", None)
            .body(py("print(1)").to_string())
            .send(),
    );
    piston_error(
        r,
        401,
        "authentication failed: give your runcell API key as the password of the server URL \
         (http://user:KEY@host/piston), as ?key=KEY, or as Authorization: KEY",
    );
    // Piston has no ids: what a job leaves is the caller's execution, and no other key's.
    let mine = srv.list_all(KEY_A, "");
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert!(srv.list_all(KEY_B, "").is_empty());
}

#[test]
fn runtimes_and_version_selectors() {
    let srv = Server::start();
    let runtimes = npm(&srv, "GET", "runtimes", KEY_A, None).expect(200).json();
    let languages = srv.get("/api/v1/languages", Some(KEY_A)).expect(200).json();
    let available: Vec<&Value> = languages
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["available"] == true)
        .collect();
    assert_eq!(runtimes.as_array().unwrap().len(), available.len());
    for (rt, lang) in runtimes.as_array().unwrap().iter().zip(&available) {
        assert_eq!(keys(rt), ["aliases", "language", "version"], "{rt}");
        assert_eq!(rt["language"], lang["id"]);
        assert_eq!(rt["version"], lang["version"]);
        assert_eq!(rt["aliases"], lang["aliases"]);
    }
    let version = available.iter().find(|l| l["id"] == "python").unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let major = version.split('.').next().unwrap();
    let minor: Vec<&str> = version.split('.').take(2).collect();
    let next = major.parse::<u32>().unwrap() + 1;
    for selector in [
        version.clone(),
        "*".into(),
        major.to_string(),
        format!("{major}.x"),
        minor.join("."),
        format!("^{major}"),
        format!("~{}", minor.join(".")),
        format!(">={major} <{next}"),
        format!("<{next} || 1.0.0"),
    ] {
        for language in ["python", "py", "python3"] {
            let v = run(
                &srv,
                &json!({"language": language, "version": selector,
                        "files": [{"content": "print('ok')"}]}),
            );
            assert_eq!(v["language"], "python", "{selector}");
            assert_eq!(v["version"], version.as_str(), "{selector}");
            assert_eq!(v["run"]["stdout"], "ok\n", "{selector}");
        }
    }
    for (language, selector) in [
        ("python", format!("{next}")),
        ("python", format!(">{version}")),
        ("python", "2.7".to_string()),
        ("python", "latest".to_string()),
        ("cobol", "*".to_string()),
    ] {
        piston_error(
            execute(
                &srv,
                &json!({"language": language, "version": selector,
                        "files": [{"content": "x"}]}),
            ),
            400,
            &format!("{language}-{selector} runtime is unknown"),
        );
    }
}

#[test]
fn bodies_files_and_validation() {
    let srv = Server::start();
    // JSON whatever the content type, or none.
    for ct in [
        None,
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut rb = srv
            .req("POST", "/piston/api/v2/execute", None)
            .header("Authorization", KEY_A)
            .body(py("print(7)").to_string());
        if let Some(ct) = ct {
            rb = rb.header("Content-Type", ct);
        }
        assert_eq!(
            Resp::of(rb.send()).expect(200).json()["run"]["stdout"],
            "7\n"
        );
    }
    let raw = |body: &str| {
        Resp::of(
            srv.req("POST", "/piston/api/v2/execute", None)
                .header("Authorization", KEY_A)
                .body(body.to_string())
                .send(),
        )
    };
    let r = raw("");
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("empty"));
    for bad in ["{\"language\": ", "language=python"] {
        let r = raw(bad);
        assert_eq!(r.status, 400);
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .starts_with("the request body"),
            "{}",
            r.text
        );
    }
    // Files: the first utf8 one is the program (a name is optional); the others, of any
    // encoding, beside it under their names (nameless: file<i>.code, as Piston names them).
    let v = run(
        &srv,
        &json!({"language": "python", "version": "3", "stdin": "in\n", "args": [],
                "files": [
                    {"name": "data.bin", "content": "AAEC/w==", "encoding": "base64"},
                    {"content": "import util, sys\nprint(util.twice(21), open('data.bin','rb').read().hex(), open('h.txt').read(), open('file3.code').read(), sys.stdin.read().encode())"},
                    {"name": "util.py", "content": "def twice(x):\n    return 2 * x\n", "encoding": "utf8"},
                    {"content": "plain", "encoding": "latin1"},
                    {"name": "h.txt", "content": "6869", "encoding": "hex"}]}),
    );
    assert_eq!(v["run"]["stdout"], "42 000102ff hi plain b'in\\n'\n", "{v}");
    let f = json!([{"content": "print(1)"}]);
    for (body, message) in [
        (
            json!({"version": "*", "files": f}),
            "language is required as a string",
        ),
        (
            json!({"language": 3, "version": "*", "files": f}),
            "language is required as a string",
        ),
        (
            json!({"language": "python", "files": f}),
            "version is required as a string",
        ),
        (
            json!({"language": "python", "version": "*"}),
            "files is required as an array",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"name": "a.py"}]}),
            "files[0].content is required as a string",
        ),
        (
            json!({"language": "python", "version": "*",
                   "files": [{"content": "eA==", "encoding": "base64"}]}),
            "files must include at least one utf8 encoded file",
        ),
        (
            json!({"language": "python", "version": "*", "files": f, "run_timeout": "3000"}),
            "If specified, run_timeout must be a number",
        ),
        (
            json!({"language": "python", "version": "*", "files": f, "run_timeout": 301000}),
            "run_timeout cannot exceed the configured limit of 300000",
        ),
        (
            json!({"language": "python", "version": "*", "files": f, "compile_timeout": 31000}),
            "compile_timeout cannot exceed the configured limit of 30000",
        ),
        (
            json!({"language": "python", "version": "*", "files": f, "run_memory_limit": 1e13}),
            "run_memory_limit cannot exceed the configured limit of 4294967296",
        ),
        (
            json!({"language": "python", "version": "*", "files": f, "run_cpu_time": -5}),
            "run_cpu_time must be non-negative",
        ),
        (
            json!({"language": "python", "version": "*", "files": f, "args": "1 2"}),
            "args must be an array of strings",
        ),
        (
            json!({"language": "python", "version": "*", "files": f, "stdin": 5}),
            "stdin must be a string",
        ),
        (
            json!({"language": "python", "version": "*", "files": f, "run_memory_limit": -2}),
            "run_memory_limit must be non-negative",
        ),
        (
            json!({"language": "python", "version": "*",
                   "files": [{"content": "x"}, {"content": "zz", "encoding": "hex"}]}),
            "files[1].content is not valid hex",
        ),
    ] {
        piston_error(execute(&srv, &body), 400, message);
    }
    // A limit the engine refuses is told with Piston's names.
    let r = execute(
        &srv,
        &json!({"language": "python", "version": "*", "files": f, "run_memory_limit": 1000}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("memory_mb") && message.contains("run_memory_limit"),
        "{message}"
    );
    // A file name that leaves the workspace is refused by the engine, in Piston's shape.
    let r = execute(
        &srv,
        &json!({"language": "python", "version": "*",
                "files": [{"content": "x"}, {"name": "../x", "content": "y"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(keys(&r.json()), ["message"]);
}

#[test]
fn output_is_interleaved_as_produced() {
    let srv = Server::start();
    let code = "import sys, time\nfor i, s in enumerate([sys.stdout, sys.stderr, sys.stdout, sys.stderr]):\n    s.write(f'{i}\\n'); s.flush(); time.sleep(0.05)\n";
    let r = &run(&srv, &py(code))["run"];
    assert_eq!(r["stdout"], "0\n2\n");
    assert_eq!(r["stderr"], "1\n3\n");
    assert_eq!(r["output"], "0\n1\n2\n3\n");
    assert_eq!(r["code"], 0);
}

#[test]
fn every_ending_has_pistons_status_and_limits_hold() {
    let srv = Server::start();
    let ending = |v: &Value| {
        let r = &v["run"];
        assert_eq!(keys(r), STAGE_KEYS, "{r}");
        ["code", "signal", "status", "message"].map(|k| r[k].clone())
    };
    let with = |code: &str, field: &str, value: u64| {
        let mut job = py(code);
        job[field] = json!(value);
        job
    };
    let sleeper = with("import time; time.sleep(10)", "run_timeout", 500);
    for (job, want) in [
        (
            py("import sys; print('x'); sys.exit(3)"),
            [
                json!(3),
                json!(null),
                json!("RE"),
                json!("Exited with error status 3"),
            ],
        ),
        (
            py("import os; os.kill(os.getpid(), 11)"),
            [
                json!(null),
                json!("SIGSEGV"),
                json!("SG"),
                json!("Caught fatal signal 11"),
            ],
        ),
        // run_timeout is the wall-clock limit, in ms.
        (
            sleeper.clone(),
            [
                json!(null),
                json!("SIGKILL"),
                json!("TO"),
                json!("Time limit exceeded (wall clock)"),
            ],
        ),
        // run_cpu_time is the CPU limit, in ms.
        (
            with("while True: pass", "run_cpu_time", 300),
            [
                json!(null),
                json!("SIGKILL"),
                json!("TO"),
                json!("Time limit exceeded"),
            ],
        ),
    ] {
        let r = run(&srv, &job);
        assert_eq!(ending(&r), want, "{job}");
    }
    // A limit isolate has no status for: SG, SIGKILL, and runcell's sentence naming it.
    let killed_at = |r: &Value, limit: &str| {
        let [code, signal, status, message] = ending(r);
        let want = [json!(null), json!("SIGKILL"), json!("SG")];
        assert_eq!([code, signal, status], want, "{r}");
        assert!(message.as_str().unwrap().contains(limit), "{message}");
    };
    let wall = run(&srv, &sleeper)["run"]["wall_time"].as_f64().unwrap();
    assert!((500.0..3000.0).contains(&wall), "{wall}");
    // A memory bomb: killed at run_memory_limit (bytes), and at the server's default with -1.
    for limit in [json!(64 << 20), json!(-1)] {
        let mut job = py("a = []\nwhile True: a.append(bytearray(1 << 20))");
        job["run_memory_limit"] = limit.clone();
        let r = run(&srv, &job);
        killed_at(&r, "memory");
        let max: u64 = if limit == -1 { 256 << 20 } else { 64 << 20 };
        assert!(
            r["run"]["memory"].as_u64().unwrap() <= max + (1 << 20),
            "{r}"
        );
    }
    // A fork bomb: killed at the process limit.
    let r = run(
        &srv,
        &json!({"language": "c", "version": "*", "run_timeout": 10000, "files": [{"content":
            "#include <unistd.h>\nint main(void) { for (;;) fork(); }\n"}]}),
    );
    killed_at(&r, "processes");
    // Output beyond the limit: OL for stdout, EL for stderr.
    for (stream, status, message) in [
        ("stdout", "OL", "stdout length exceeded"),
        ("stderr", "EL", "stderr length exceeded"),
    ] {
        let r = run(
            &srv,
            &py(&format!(
                "import sys\nwhile True: sys.{stream}.write('x' * 4096)"
            )),
        );
        assert_eq!(
            ending(&r),
            [json!(null), json!("SIGKILL"), json!(status), json!(message)]
        );
        assert_eq!(r["run"][stream].as_str().unwrap().len(), 1 << 20);
    }
}

#[test]
fn compiled_languages_have_a_compile_stage() {
    let srv = Server::start();
    let c = |code: &str| json!({"language": "c", "version": "*", "files": [{"content": code}]});
    // A compile error: compile.stderr and compile.code, and the program never runs (Piston
    // answers its failed compile stage as `run` too).
    let v = run(&srv, &c("int main(void) { return missing; }\n"));
    let compile = &v["compile"];
    assert_eq!(keys(compile), STAGE_KEYS);
    assert_eq!(compile["code"], 1, "{v}");
    assert_eq!(compile["status"], "RE");
    assert_eq!(compile["message"], "Exited with error status 1");
    assert!(
        compile["stderr"].as_str().unwrap().contains("missing"),
        "{v}"
    );
    assert_eq!(compile["output"], compile["stderr"]);
    assert_eq!(v["run"], v["compile"], "no run stage of its own");
    // A program that compiles: both stages, the run's own.
    let v = run(
        &srv,
        &c("#include <stdio.h>\nint main(void) { puts(\"hi\"); return 4; }\n"),
    );
    assert_eq!(v["compile"]["code"], 0);
    assert_eq!(v["compile"]["signal"], Value::Null);
    assert_eq!(v["run"]["stdout"], "hi\n");
    assert_eq!(v["run"]["code"], 4);
    assert_eq!(v["run"]["status"], "RE");
    // Headers and other sources beside the program are compiled with it.
    let v = run(
        &srv,
        &json!({"language": "c", "version": "*", "files": [
            {"name": "main.c", "content": "#include <stdio.h>\n#include \"add.h\"\nint main(void) { printf(\"%d\\n\", add(40, 2)); }\n"},
            {"name": "add.h", "content": "int add(int a, int b);\n"},
            {"name": "add.c", "content": "int add(int a, int b) { return a + b; }\n"}]}),
    );
    assert_eq!(v["run"]["stdout"], "42\n", "{v}");
    // The compile stage's own limits lower the server's: a C++ compiler given 50 ms (it
    // needs several hundred) is stopped (TO), and the program never runs; no timeout and `-1`
    // memory are the server's limits. (Not a memory limit: a compiler held just under one may
    // page its own binary in and out until the wall limit.)
    let mut cpp = json!({"language": "cpp", "version": "*", "compile_timeout": 50,
        "files": [{"content": "#include <iostream>\nint main() { std::cout << 1; }\n"}]});
    let v = run(&srv, &cpp);
    assert_eq!(v["compile"]["status"], "TO", "{v}");
    assert_eq!(v["compile"]["signal"], "SIGKILL", "{v}");
    assert_eq!(v["run"], v["compile"], "{v}");
    cpp["compile_timeout"] = json!(0);
    cpp["compile_memory_limit"] = json!(-1);
    assert_eq!(run(&srv, &cpp)["run"]["stdout"], "1", "the server's limits");
    // An interpreted language has no compile stage.
    assert!(run(&srv, &py("print(1)")).get("compile").is_none());
}

#[test]
fn a_body_over_the_limit_is_refused_in_the_dialects_shape() {
    let srv = Server::with(Opts::new().config("max_body_bytes = 2048\n"));
    let big = py(&format!("print('{}')", "x".repeat(4096)));
    let post = |path: &str, header: &str| {
        Resp::of(
            srv.req("POST", path, None)
                .header(header, KEY_A)
                .body(big.to_string())
                .send(),
        )
    };
    let r = post("/piston/api/v2/execute", "Authorization");
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(keys(&r.json()), ["message"]);
    let r = post("/judge0/submissions", "X-Auth-Token");
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(keys(&r.json()), ["error"]);
    post("/api/v1/execute", "X-API-Key").error(413, Some("PAYLOAD_TOO_LARGE"));
}
