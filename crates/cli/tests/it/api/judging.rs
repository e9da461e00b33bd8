//! Judging (`test_cases` of an execution request): every comparison rule, every verdict with
//! the case's exit code and signal, `stop_on_first_failure`, checker programs, bad requests,
//! and judged runs through the async queue, webhooks and batches.

use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{KEY_A, KEY_B, Opts, Receiver, Server};

/// A Python program that does what its standard input says.
const DRIVER: &str = r#"
import os, signal, sys
cmd = sys.stdin.read().split()
op = cmd[0] if cmd else ''
if op == 'echo':
    sys.stdout.write(' '.join(cmd[1:]).replace('\\n', '\n'))
elif op == 'args':
    print(' '.join(sys.argv[1:]))
elif op == 'file':
    print(open('data.txt').read().strip())
elif op == 'exit':
    print('partial')
    sys.exit(int(cmd[1]))
elif op == 'segv':
    os.kill(os.getpid(), signal.SIGSEGV)
elif op == 'spin':
    while True:
        pass
elif op == 'mem':
    x = b'x' * (400 << 20)
    print(len(x))
elif op == 'spam':
    sys.stdout.write('y' * (1 << 20))
"#;

fn case(stdin: &str, expected: &str) -> Value {
    json!({"stdin": stdin, "expected_output": expected})
}

/// The verdicts of a judged result's cases, in order.
fn verdicts(r: &Value) -> Vec<String> {
    r["judging"]["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("no judging cases: {r:#}"))
        .iter()
        .map(|c| c["verdict"].as_str().unwrap().to_string())
        .collect()
}

fn judge(srv: &Server, body: Value) -> Value {
    srv.execute(&body)
}

#[test]
fn each_comparison_mode_judges_by_its_rule() {
    let srv = Server::start();
    let run = |comparison: Option<&str>, extra: Value, cases: Vec<Value>| {
        let mut body = json!({"language": "python", "code": DRIVER, "test_cases": cases});
        if let Some(c) = comparison {
            body["comparison"] = json!(c);
        }
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        judge(&srv, body)
    };

    // The default is Judge0's trimmed lines: trailing spaces and blank lines do not count,
    // leading spaces and inner blank lines do.
    let r = run(
        None,
        json!({}),
        vec![
            case("echo 1 2", "1 2"),
            case("echo 1 2   \\n\\n", "1 2\n"),
            case("echo 1 2", " 1 2"),
            case("echo 1\\n\\n2", "1\n2"),
        ],
    );
    assert_eq!(r["judging"]["comparison"], "trimmed_lines", "{r:#}");
    assert_eq!(
        verdicts(&r),
        ["accepted", "accepted", "wrong_answer", "wrong_answer"]
    );
    assert_eq!(r["judging"]["verdict"], "wrong_answer");
    assert_eq!(r["judging"]["passed"], 2);
    assert_eq!(r["judging"]["total"], 4);
    let msg = r["judging"]["cases"][2]["message"].as_str().unwrap();
    assert!(msg.contains("line 1 differs"), "{msg}");
    assert!(
        r["judging"]["message"]
            .as_str()
            .unwrap()
            .starts_with("test case 2: line 1 differs"),
        "{r:#}"
    );
    // The rest of the result is the deciding case's (the first not accepted).
    assert_eq!(r["stdout"], "1 2", "{r:#}");
    assert_eq!(r["status"], "completed");

    let r = run(
        Some("exact"),
        json!({}),
        vec![case("echo 7\\n", "7\n"), case("echo 7", "7\n")],
    );
    assert_eq!(verdicts(&r), ["accepted", "wrong_answer"], "{r:#}");

    let r = run(
        Some("tokens"),
        json!({}),
        vec![
            case("echo 1 2\\n3", "1\n2 3\n"),
            case("echo 1 2", "1 2 3"),
            case("echo 1.0", "1"),
        ],
    );
    assert_eq!(
        verdicts(&r),
        ["accepted", "wrong_answer", "wrong_answer"],
        "{r:#}"
    );
    assert!(
        r["judging"]["cases"][1]["message"]
            .as_str()
            .unwrap()
            .contains("2 tokens"),
        "{r:#}"
    );

    let r = run(
        Some("float"),
        json!({"absolute_tolerance": 0.001, "relative_tolerance": 0}),
        vec![
            case("echo 3.1416 ok", "3.14159 ok"),
            case("echo 3.15 ok", "3.14159 ok"),
            case("echo 3.1416 OK", "3.14159 ok"),
        ],
    );
    assert_eq!(
        verdicts(&r),
        ["accepted", "wrong_answer", "wrong_answer"],
        "{r:#}"
    );
    // The default tolerances are 1e-6.
    let r = run(
        Some("float"),
        json!({}),
        vec![
            case("echo 1000000.5", "1000000"),
            case("echo 0.0000005", "0"),
            case("echo 0.01", "0"),
        ],
    );
    assert_eq!(
        verdicts(&r),
        ["accepted", "accepted", "wrong_answer"],
        "{r:#}"
    );

    // A case without expected output is accepted when the program succeeds.
    let r = run(None, json!({}), vec![json!({"stdin": "echo x"})]);
    assert_eq!(verdicts(&r), ["accepted"]);
    assert_eq!(r["judging"]["verdict"], "accepted");
    assert!(r["judging"]["message"].is_null());
}

#[test]
fn every_verdict_keeps_the_cases_exit_code_and_signal() {
    let srv = Server::start();
    let r = judge(
        &srv,
        json!({
            "language": "python", "code": DRIVER,
            "limits": {"cpu_time": 1, "wall_time": 5, "memory_mb": 128, "max_output_bytes": 65536},
            "args": ["default", "args"],
            "test_cases": [
                case("echo hi", "hi"),
                case("exit 3", "partial"),
                case("segv", ""),
                case("spin", ""),
                case("mem", ""),
                case("spam", ""),
                {"stdin": "args", "args": ["own", "args"], "expected_output": "own args"},
                {"stdin": "args", "expected_output": "default args"},
                {"stdin": "file", "files": [{"name": "data.txt", "content": "from a file"}],
                 "expected_output": "from a file"},
            ]
        }),
    );
    assert_eq!(
        verdicts(&r),
        [
            "accepted",
            "runtime_error",
            "runtime_error",
            "time_limit_exceeded",
            "memory_limit_exceeded",
            "output_limit_exceeded",
            "accepted",
            "accepted",
            "accepted",
        ],
        "{r:#}"
    );
    let cases = &r["judging"]["cases"];
    for (i, c) in cases.as_array().unwrap().iter().enumerate() {
        assert_eq!(c["index"], i, "{c}");
    }
    assert_eq!(cases[0]["exit_code"], 0);
    assert_eq!(cases[0]["stdout"], "hi");
    assert_eq!(cases[1]["exit_code"], 3, "{:#}", cases[1]);
    assert!(cases[1]["signal"].is_null());
    assert_eq!(cases[1]["stdout"], "partial\n");
    assert!(
        cases[1]["message"].as_str().unwrap().contains("code 3"),
        "{:#}",
        cases[1]
    );
    assert_eq!(cases[2]["signal"], "SIGSEGV", "{:#}", cases[2]);
    assert_eq!(cases[2]["exit_code"], -1);
    assert_eq!(cases[3]["limit_exceeded"], "cpu_time", "{:#}", cases[3]);
    assert_eq!(cases[4]["limit_exceeded"], "memory", "{:#}", cases[4]);
    assert_eq!(cases[5]["limit_exceeded"], "output", "{:#}", cases[5]);
    assert_eq!(cases[5]["stdout_truncated"], true);
    // The run's verdict and its top-level fields are the first failing case's.
    assert_eq!(r["judging"]["verdict"], "runtime_error");
    assert_eq!(r["judging"]["passed"], 4);
    assert_eq!(r["exit_code"], 3, "{r:#}");
    assert_eq!(r["stdout"], "partial\n");
    assert!(r["judging"]["max_execution_time"].as_f64().unwrap() >= 0.9);
    assert!(r["judging"]["max_memory_peak_kb"].as_u64().unwrap() > 100 << 10);

    // A limit decides the status as for one run: the deciding case here is the slow one.
    let r = judge(
        &srv,
        json!({"language": "python", "code": DRIVER, "limits": {"cpu_time": 0.5},
               "test_cases": [case("echo a", "a"), case("spin", "")]}),
    );
    assert_eq!(r["judging"]["verdict"], "time_limit_exceeded", "{r:#}");
    assert_eq!(r["status"], "failed");
    assert_eq!(r["limit_exceeded"], "cpu_time");
}

#[test]
fn stop_on_first_failure_skips_the_remaining_cases() {
    let srv = Server::start();
    let cases = json!([
        case("echo 1", "1"),
        case("echo 2", "3"),
        case("echo 3", "3")
    ]);
    let r = judge(
        &srv,
        json!({"language": "python", "code": DRIVER, "test_cases": cases,
               "stop_on_first_failure": true}),
    );
    assert_eq!(
        verdicts(&r),
        ["accepted", "wrong_answer", "skipped"],
        "{r:#}"
    );
    assert_eq!(r["judging"]["cases"][2]["exit_code"], -1);
    assert_eq!(r["judging"]["passed"], 1);
    let r = judge(
        &srv,
        json!({"language": "python", "code": DRIVER, "test_cases": cases}),
    );
    assert_eq!(
        verdicts(&r),
        ["accepted", "wrong_answer", "accepted"],
        "{r:#}"
    );
}

/// A checker in Python: its expected output says what to answer; it also reports what it
/// was given.
const CHECKER: &str = r#"
import os, sys
inp, out, exp = sys.argv[1:4]
want = open(exp).read().strip()
got = open(out).read()
sys.stderr.write(f"args={sys.argv[1:]} input={open(inp).read()!r} output={got!r} "
                 f"files={sorted(os.listdir('.'))}\n")
if want == 'SAME':
    sys.exit(0 if got.strip() == open(inp).read().split(' ', 1)[1].strip() else 1)
if want == 'PE':
    sys.exit(2)
if want == 'FAIL':
    sys.exit(3)
if want == 'CRASH':
    os.abort()
if want == 'SPIN':
    while True:
        pass
sys.exit(1)
"#;

#[test]
fn a_checker_program_decides_in_a_jail_of_its_own() {
    let srv = Server::start();
    let r = judge(
        &srv,
        json!({
            "language": "python", "code": DRIVER,
            "files": [{"name": "secret.txt", "content": "the program's own file"}],
            "checker": {"language": "python", "code": CHECKER, "limits": {"cpu_time": 0.5}},
            "test_cases": [
                case("echo 42", "SAME"),
                case("echo 41", "WA"),
                case("echo 42", "PE"),
                case("echo 42", "FAIL"),
                case("echo 42", "CRASH"),
                case("echo 42", "SPIN"),
                case("exit 1", "SAME"),
            ]
        }),
    );
    assert_eq!(r["judging"]["comparison"], "checker", "{r:#}");
    assert_eq!(
        verdicts(&r),
        [
            "accepted",
            "wrong_answer",
            "presentation_error",
            "checker_error",
            "checker_error",
            "checker_error",
            "runtime_error",
        ],
        "{r:#}"
    );
    let cases = &r["judging"]["cases"];
    let ch = &cases[0]["checker"];
    assert_eq!(ch["exit_code"], 0, "{ch:#}");
    let said = ch["stderr"].as_str().unwrap();
    // testlib's order of arguments; the three files and the checker's own source only.
    assert!(
        said.contains("args=['input.txt', 'output.txt', 'expected_output.txt']"),
        "{said}"
    );
    assert!(said.contains("input='echo 42'"), "{said}");
    assert!(said.contains("output='42'"), "{said}");
    assert!(
        said.contains("files=['expected_output.txt', 'input.txt', 'main.py', 'output.txt']"),
        "the checker sees its own files only: {said}"
    );
    assert!(!said.contains("secret"), "{said}");
    // The checker's comment explains a wrong answer.
    assert!(
        cases[1]["message"]
            .as_str()
            .unwrap()
            .contains("output='41'"),
        "{:#}",
        cases[1]
    );
    assert_eq!(cases[3]["checker"]["exit_code"], 3);
    assert!(
        cases[3]["message"]
            .as_str()
            .unwrap()
            .starts_with("the checker failed: it exited with code 3"),
        "{:#}",
        cases[3]
    );
    assert_eq!(cases[4]["checker"]["signal"], "SIGABRT", "{:#}", cases[4]);
    assert_eq!(cases[5]["checker"]["limit_exceeded"], "cpu_time");
    // The checker does not run when the program failed.
    assert!(cases[6]["checker"].is_null(), "{:#}", cases[6]);
    assert_eq!(r["judging"]["verdict"], "wrong_answer");

    // A compiled checker (C, with a header of its own) is compiled once, shown apart.
    let c_checker = r#"
#include <stdio.h>
#include <stdlib.h>
#include "verdicts.h"
int main(int argc, char **argv) {
    FILE *o = fopen(argv[2], "r"), *e = fopen(argv[3], "r");
    double got, want;
    if (!o || !e || fscanf(e, "%lf", &want) != 1) return CHECKER_FAIL;
    if (fscanf(o, "%lf", &got) != 1) return PRESENTATION;
    return (got - want < 0.01 && want - got < 0.01) ? OK : WRONG;
}
"#;
    let header = "enum { OK = 0, WRONG = 1, PRESENTATION = 2, CHECKER_FAIL = 3 };\n";
    let r = judge(
        &srv,
        json!({
            "language": "python", "code": DRIVER,
            "checker": {"language": "c", "code": c_checker,
                        "files": [{"name": "verdicts.h", "content": header}]},
            "test_cases": [case("echo 2.001", "2"), case("echo 2.1", "2"),
                           case("echo two", "2")]
        }),
    );
    assert_eq!(
        verdicts(&r),
        ["accepted", "wrong_answer", "presentation_error"],
        "{r:#}"
    );
    let cc = &r["judging"]["checker_compile"];
    assert_eq!(cc["exit_code"], 0, "{r:#}");

    // A checker that does not compile fails the judging, and says so.
    let r = judge(
        &srv,
        json!({
            "language": "python", "code": DRIVER,
            "checker": {"language": "c", "code": "int main(void) { return nope; }"},
            "test_cases": [case("echo 1", "1")]
        }),
    );
    assert_eq!(r["judging"]["verdict"], "checker_error", "{r:#}");
    assert_eq!(r["status"], "failed");
    assert!(
        r["judging"]["checker_compile"]["stderr"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{r:#}"
    );
    assert_eq!(verdicts(&r), ["skipped"]);
}

#[test]
fn a_program_that_does_not_compile_is_a_compilation_error() {
    let srv = Server::start();
    let r = judge(
        &srv,
        json!({"language": "c", "code": "int main(void) { return missing; }",
               "test_cases": [case("", ""), case("", "")]}),
    );
    assert_eq!(r["judging"]["verdict"], "compilation_error", "{r:#}");
    assert_eq!(verdicts(&r), ["skipped", "skipped"]);
    assert_ne!(r["compile"]["exit_code"], 0);
    assert!(
        r["compile"]["stderr"].as_str().unwrap().contains("missing"),
        "{r:#}"
    );

    // A program that compiles: compiled once, then the compile cache serves the same source.
    let code = "#include <stdio.h>\nint main(void) { int a, b; scanf(\"%d %d\", &a, &b); \
                printf(\"%d\\n\", a * b); return 0; }\n";
    let body = json!({"language": "c", "code": code,
                      "test_cases": [case("2 3", "6"), case("4 5", "20"), case("1 1", "2")]});
    let r = judge(&srv, body.clone());
    assert_eq!(
        verdicts(&r),
        ["accepted", "accepted", "wrong_answer"],
        "{r:#}"
    );
    assert_eq!(r["compile"]["exit_code"], 0);
    assert!(r["compile"].get("cached").is_none(), "{r:#}");
    assert!(r["compile"]["execution_time"].as_f64().unwrap() > 0.0);
    let again = judge(&srv, body);
    assert_eq!(again["compile"]["cached"], true, "{again:#}");
    assert_eq!(verdicts(&again), verdicts(&r));
}

#[test]
fn bad_judging_requests_are_400_with_a_sentence() {
    let srv = Server::with(Opts::new().config("[engine]\nmax_test_cases = 3\n"));
    let post = |body: Value| srv.post("/api/v1/execute", Some(KEY_A), &body);
    let base = |extra: Value| {
        let mut b = json!({"language": "python", "code": "print(1)"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let one = json!([{"stdin": "", "expected_output": "1"}]);
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            base(json!({"test_cases": [{}, {}, {}, {}]})),
            "TOO_MANY_TEST_CASES",
            "maximum of 3",
        ),
        (
            base(json!({"test_cases": []})),
            "INVALID_REQUEST",
            "at least one",
        ),
        (
            base(json!({"test_cases": one, "comparison": "fuzzy"})),
            "INVALID_REQUEST",
            "unknown comparison mode \"fuzzy\"",
        ),
        (
            base(json!({"test_cases": one, "checker": {"language": "cobol", "code": "x"}})),
            "UNSUPPORTED_LANGUAGE",
            "cobol (the checker)",
        ),
        (
            base(json!({"test_cases": one, "comparison": "checker"})),
            "INVALID_REQUEST",
            "needs a checker program",
        ),
        (
            base(json!({"test_cases": one, "comparison": "tokens",
                        "checker": {"language": "python", "code": "x"}})),
            "INVALID_REQUEST",
            "a checker is given",
        ),
        (
            base(json!({"comparison": "exact"})),
            "INVALID_REQUEST",
            "apply to test_cases",
        ),
        (
            base(json!({"test_cases": one, "absolute_tolerance": 0.1})),
            "INVALID_REQUEST",
            "\"float\" only",
        ),
        (
            base(json!({"test_cases": one, "comparison": "float", "relative_tolerance": -1})),
            "INVALID_REQUEST",
            "at least 0",
        ),
        (
            base(json!({"test_cases": one, "session_id": "s1"})),
            "INVALID_REQUEST",
            "session_id",
        ),
        (
            base(json!({"test_cases": [{"files": [{"name": "main.py", "content": ""}]}]})),
            "INVALID_REQUEST",
            "test case 0: file name \"main.py\" is used twice",
        ),
        (
            base(json!({"test_cases": [{"args": ["a\u{0}b"]}]})),
            "INVALID_REQUEST",
            "test case 0: arguments must not contain NUL",
        ),
        (
            base(
                json!({"test_cases": one, "checker": {"language": "python", "code": "x",
                        "files": [{"name": "output.txt", "content": ""}]}}),
            ),
            "INVALID_REQUEST",
            "the checker: file name \"output.txt\"",
        ),
        (
            base(
                json!({"test_cases": one, "checker": {"language": "python", "code": "x",
                        "limits": {"memory_mb": 0}}}),
            ),
            "INVALID_LIMIT",
            "the checker",
        ),
        (
            base(json!({"test_cases": "all of them"})),
            "INVALID_REQUEST",
            "test_cases: invalid type",
        ),
        (
            base(json!({"test_cases": [{"stdin": "1"}, {"stdin": 2}]})),
            "INVALID_REQUEST",
            "test_cases[1].stdin: invalid type",
        ),
    ];
    for (body, code, words) in cases {
        let r = post(body.clone());
        let v = r.error(400, Some(code));
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains(words), "{body}: {detail}");
    }
    // Streaming a judged run is refused; so is a bad judged item of a batch, as a whole.
    let r = srv.post(
        "/api/v1/execute?stream=true",
        Some(KEY_A),
        &base(json!({"test_cases": one})),
    );
    let v = r.error(400, Some("INVALID_REQUEST"));
    assert!(v["detail"].as_str().unwrap().contains("streamed"), "{v}");
    let r = srv.post(
        "/api/v1/execute/batch",
        Some(KEY_A),
        &json!([
            base(json!({"test_cases": one})),
            base(json!({"test_cases": []}))
        ]),
    );
    let v = r.error(400, Some("INVALID_REQUEST"));
    assert!(v["detail"].as_str().unwrap().starts_with("item 1:"), "{v}");
    // Nothing was recorded.
    assert!(srv.list_all(KEY_A, "").is_empty());
}

#[test]
fn judged_runs_work_async_with_webhooks_and_in_batches() {
    let srv = Server::with(Opts::new().env("RUNCELL_WEBHOOK_ALLOW", "127.0.0.1"));
    let hooks = Receiver::start(&[]);
    let body = json!({
        "language": "python", "code": DRIVER,
        "test_cases": [case("echo a", "a"), case("echo b", "c")],
        "callback_url": hooks.url("/judged"),
    });
    let id = srv.submit(KEY_A, &body);
    let done = srv.wait_done(KEY_A, &id, Duration::from_secs(60));
    let result = &done["result"];
    assert_eq!(result["judging"]["verdict"], "wrong_answer", "{done:#}");
    assert_eq!(verdicts(result), ["accepted", "wrong_answer"]);
    // Stored: the list shows it too, and another tenant does not see it.
    let listed = srv.list_all(KEY_A, "");
    assert_eq!(listed[0]["result"]["judging"], result["judging"]);
    srv.get(&format!("/api/v1/executions/{id}"), Some(KEY_B))
        .error(404, Some("NOT_FOUND"));
    let got = hooks.wait_for(1, Duration::from_secs(30));
    let payload: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(payload["type"], "execution.completed");
    assert_eq!(payload["data"]["result"]["judging"], result["judging"]);

    // submit?wait=true and batches judge too.
    let mut sync = body.clone();
    sync.as_object_mut().unwrap().remove("callback_url");
    let r = srv
        .post("/api/submit?wait=true", Some(KEY_A), &sync)
        .expect(200)
        .json();
    assert_eq!(verdicts(&r), ["accepted", "wrong_answer"], "{r:#}");
    let plain = json!({"language": "python", "code": "print(5)"});
    let r = srv
        .post("/api/v1/execute/batch", Some(KEY_A), &json!([sync, plain]))
        .expect(200)
        .json();
    assert_eq!(verdicts(&r[0]), ["accepted", "wrong_answer"], "{r:#}");
    assert!(r[1].get("judging").is_none(), "{r:#}");
    assert_eq!(r[1]["stdout"], "5\n");
}

#[test]
fn the_openapi_document_describes_judging() {
    let srv = Server::start();
    let doc = srv.get("/openapi.json", None).expect(200).json();
    let schemas = &doc["components"]["schemas"];
    for name in [
        "TestCase",
        "CheckerRequest",
        "ComparisonMode",
        "Judging",
        "CaseResult",
        "CheckerResult",
        "Verdict",
    ] {
        assert!(schemas[name].is_object(), "{name} is described");
    }
    let request = &schemas["ExecuteRequest"]["properties"];
    for field in [
        "test_cases",
        "comparison",
        "absolute_tolerance",
        "relative_tolerance",
        "checker",
        "stop_on_first_failure",
    ] {
        assert!(request[field].is_object(), "ExecuteRequest.{field}");
    }
    assert!(
        request.get("dialect").is_none(),
        "the server-set field is not part of the API"
    );
    assert!(schemas["ExecutionResult"]["properties"]["judging"].is_object());
    let verdicts = schemas["Verdict"].to_string();
    for v in ["time_limit_exceeded", "checker_error", "skipped"] {
        assert!(verdicts.contains(v), "{v} in {verdicts}");
    }
}
