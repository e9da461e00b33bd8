//! The judging test set: 20 small problems in C, C++, Java, Python, JavaScript and Go, each
//! judged with a correct and a wrong submission and one that is slow, crashes or does not
//! compile (in turn), every verdict asserted; and a problem judged by a checker with a
//! floating-point tolerance. Everything goes through the async queue at once (the server runs
//! several judged runs side by side) and is polled like a client would.

use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{KEY_A, Server};

struct Problem {
    name: &'static str,
    language: &'static str,
    /// (stdin, expected output)
    cases: &'static [(&'static str, &'static str)],
    correct: &'static str,
    /// The wrong submission: the correct one with this replacement.
    wrong: (&'static str, &'static str),
}

const PROBLEMS: &[Problem] = &[
    Problem {
        name: "sum",
        language: "c",
        cases: &[
            ("1 2\n", "3\n"),
            ("-5 5\n", "0\n"),
            ("1000000000 1000000000\n", "2000000000\n"),
        ],
        correct: "#include <stdio.h>\nint main(void) { long a, b; if (scanf(\"%ld %ld\", &a, &b) != 2) return 1;\n\
                  printf(\"%ld\\n\", a + b); return 0; }\n",
        wrong: ("a + b", "a - b"),
    },
    Problem {
        name: "max",
        language: "cpp",
        cases: &[
            ("3\n1 5 2\n", "5\n"),
            ("1\n-7\n", "-7\n"),
            ("4\n-1 -2 -3 -4\n", "-1\n"),
        ],
        correct: "#include <iostream>\n#include <climits>\nint main() { int n; std::cin >> n; long m = LONG_MIN;\n\
                  for (int i = 0; i < n; i++) { long x; std::cin >> x; if (x > m) m = x; }\n\
                  std::cout << m << \"\\n\"; }\n",
        wrong: ("x > m", "x < m"),
    },
    Problem {
        name: "reverse",
        language: "python",
        cases: &[
            ("hello\n", "olleh\n"),
            ("a\n", "a\n"),
            ("ab cd\n", "dc ba\n"),
        ],
        correct: "print(input()[::-1])\n",
        wrong: ("[::-1]", ""),
    },
    Problem {
        name: "words",
        language: "javascript",
        cases: &[
            ("one two three\n", "3\n"),
            ("  spaced   out  \n", "2\n"),
            ("x\n", "1\n"),
        ],
        correct: "const s = require('fs').readFileSync(0, 'utf8');\n\
                  console.log(s.split(/\\s+/).filter(Boolean).length);\n",
        wrong: (".filter(Boolean)", ""),
    },
    Problem {
        name: "factorial",
        language: "go",
        cases: &[("5\n", "120\n"), ("1\n", "1\n"), ("20\n", "146326063\n")],
        correct: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tvar n int\n\tfmt.Scan(&n)\n\
                  \tr := int64(1)\n\tfor i := 2; i <= n; i++ {\n\t\tr = r * int64(i) % 1000000007\n\t}\n\
                  \tfmt.Println(r)\n}\n",
        wrong: ("i <= n", "i < n"),
    },
    Problem {
        name: "fizzbuzz",
        language: "java",
        cases: &[
            ("5\n", "1\n2\nFizz\n4\nBuzz\n"),
            (
                "15\n",
                "1\n2\nFizz\n4\nBuzz\nFizz\n7\n8\nFizz\nBuzz\n11\nFizz\n13\n14\nFizzBuzz\n",
            ),
        ],
        correct: "import java.util.*;\npublic class Main { public static void main(String[] a) {\n\
                  Scanner s = new Scanner(System.in); int n = s.nextInt(); StringBuilder b = new StringBuilder();\n\
                  for (int i = 1; i <= n; i++) b.append(i % 15 == 0 ? \"FizzBuzz\" : i % 3 == 0 ? \"Fizz\" \
                  : i % 5 == 0 ? \"Buzz\" : String.valueOf(i)).append('\\n');\n\
                  System.out.print(b); } }\n",
        wrong: ("i % 15 == 0", "i % 10 == 0"),
    },
    Problem {
        name: "prime",
        language: "c",
        cases: &[
            ("7\n", "YES\n"),
            ("9\n", "NO\n"),
            ("1\n", "NO\n"),
            ("25\n", "NO\n"),
        ],
        correct: "#include <stdio.h>\nint main(void) { long n; if (scanf(\"%ld\", &n) != 1) return 1; int p = n > 1;\n\
                  for (long d = 2; d * d <= n; d++) if (n % d == 0) { p = 0; break; }\n\
                  puts(p ? \"YES\" : \"NO\"); return 0; }\n",
        wrong: ("d * d <= n", "d * d < n"),
    },
    Problem {
        name: "gcd",
        language: "cpp",
        cases: &[("12 18\n", "6\n"), ("7 13\n", "1\n"), ("100 10\n", "10\n")],
        correct: "#include <iostream>\nlong g(long a, long b) { return b ? g(b, a % b) : a; }\n\
                  int main() { long a, b; std::cin >> a >> b; std::cout << g(a, b) << std::endl; }\n",
        wrong: ("g(b, a % b) : a", "g(b, a % b) : b"),
    },
    Problem {
        name: "fibonacci",
        language: "python",
        cases: &[("10\n", "55\n"), ("1\n", "1\n"), ("50\n", "12586269025\n")],
        correct: "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)\n",
        wrong: ("range(n)", "range(n - 1)"),
    },
    Problem {
        name: "sort",
        language: "javascript",
        cases: &[
            ("3\n10 2 33\n", "2 10 33\n"),
            ("1\n5\n", "5\n"),
            ("4\n9 100 8 1\n", "1 8 9 100\n"),
        ],
        correct: "const t = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);\n\
                  console.log(t.slice(1, t[0] + 1).sort((x, y) => x - y).join(' '));\n",
        wrong: (".sort((x, y) => x - y)", ".sort()"),
    },
    Problem {
        name: "palindrome",
        language: "go",
        cases: &[("abba\n", "YES\n"), ("abc\n", "NO\n"), ("x\n", "YES\n")],
        correct: "package main\n\nimport (\n\t\"bufio\"\n\t\"fmt\"\n\t\"os\"\n\t\"strings\"\n)\n\n\
                  func main() {\n\ts, _ := bufio.NewReader(os.Stdin).ReadString('\\n')\n\ts = strings.TrimSpace(s)\n\
                  \tok := true\n\tfor i := 0; i < len(s)/2; i++ {\n\t\tif s[i] != s[len(s)-1-i] {\n\t\t\tok = false\n\t\t}\n\t}\n\
                  \tif ok {\n\t\tfmt.Println(\"YES\")\n\t} else {\n\t\tfmt.Println(\"NO\")\n\t}\n}\n",
        wrong: ("ok = false", "ok = true"),
    },
    Problem {
        name: "digits",
        language: "java",
        cases: &[("123\n", "6\n"), ("0\n", "0\n"), ("99999\n", "45\n")],
        correct: "public class Main { public static void main(String[] a) throws Exception {\n\
                  String s = new java.io.BufferedReader(new java.io.InputStreamReader(System.in)).readLine().trim();\n\
                  int t = 0; for (char c : s.toCharArray()) t += c - '0'; System.out.println(t); } }\n",
        wrong: ("t += c - '0'", "t += c"),
    },
    Problem {
        name: "vowels",
        language: "c",
        cases: &[
            ("Hello World\n", "3\n"),
            ("AEIOU\n", "5\n"),
            ("xyz\n", "0\n"),
        ],
        correct: "#include <stdio.h>\n#include <string.h>\nint main(void) { int c, n = 0;\n\
                  while ((c = getchar()) != EOF) if (c && strchr(\"aeiouAEIOU\", c)) n++;\n\
                  printf(\"%d\\n\", n); return 0; }\n",
        wrong: ("aeiouAEIOU", "aeiou"),
    },
    Problem {
        name: "min",
        language: "cpp",
        cases: &[
            ("3\n4 2 8\n", "2\n"),
            ("2\n5 5\n", "5\n"),
            ("1\n9\n", "9\n"),
        ],
        correct: "#include <cstdio>\nint main() { int n; if (scanf(\"%d\", &n) != 1) return 1; long m = 0;\n\
                  for (int i = 0; i < n; i++) { long x; if (scanf(\"%ld\", &x) != 1) return 1; if (i == 0 || x < m) m = x; }\n\
                  printf(\"%ld\\n\", m); }\n",
        wrong: ("i == 0 || x < m", "x < m"),
    },
    Problem {
        name: "upper",
        language: "python",
        cases: &[("hello world\n", "HELLO WORLD\n"), ("MiXeD\n", "MIXED\n")],
        correct: "import sys\nsys.stdout.write(sys.stdin.read().upper())\n",
        wrong: (".upper()", ".title()"),
    },
    Problem {
        name: "greet",
        language: "javascript",
        cases: &[("Ada\n", "Hello, Ada!\n"), ("Bob\n", "Hello, Bob!\n")],
        correct: "const s = require('fs').readFileSync(0, 'utf8').trim();\nconsole.log('Hello, ' + s + '!');\n",
        wrong: ("'!'", "'.'"),
    },
    Problem {
        name: "power",
        language: "javascript",
        cases: &[
            ("10\n", "1024\n"),
            ("0\n", "1\n"),
            ("64\n", "18446744073709551616\n"),
        ],
        correct: "const n = Number(require('fs').readFileSync(0, 'utf8'));\nconsole.log((2n ** BigInt(n)).toString());\n",
        wrong: ("BigInt(n)", "BigInt(n + 1)"),
    },
    Problem {
        name: "binary",
        language: "go",
        cases: &[("5\n", "101\n"), ("8\n", "1000\n"), ("1\n", "1\n")],
        correct: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tvar n int\n\tfmt.Scan(&n)\n\tfmt.Printf(\"%b\\n\", n)\n}\n",
        wrong: ("%b", "%o"),
    },
    Problem {
        name: "lines",
        language: "java",
        cases: &[("a\nb\nc\n", "3\n"), ("one\n", "1\n")],
        correct: "import java.io.*;\npublic class Main { public static void main(String[] a) throws IOException {\n\
                  BufferedReader r = new BufferedReader(new InputStreamReader(System.in)); int n = 0;\n\
                  while (r.readLine() != null) n++; System.out.println(n); } }\n",
        wrong: ("int n = 0", "int n = 1"),
    },
    Problem {
        name: "difference",
        language: "python",
        cases: &[("3 10\n", "7\n"), ("10 3\n", "7\n"), ("4 4\n", "0\n")],
        correct: "a, b = map(int, input().split())\nprint(abs(a - b))\n",
        wrong: ("abs(a - b)", "a - b"),
    },
];

/// A submission that never ends.
fn slow(language: &str) -> &'static str {
    match language {
        "c" => "int main(void) { volatile unsigned long x = 0; for (;;) x++; }\n",
        "cpp" => "int main() { volatile unsigned long x = 0; for (;;) x++; }\n",
        "python" => "while True:\n    pass\n",
        "javascript" => "for (;;) {}\n",
        "go" => "package main\n\nfunc main() {\n\tfor {\n\t}\n}\n",
        "java" => {
            "public class Main { public static void main(String[] a) { long x = 0; while (true) { x++; } } }\n"
        }
        other => panic!("no slow submission in {other}"),
    }
}

/// A submission that crashes: (code, signal or exit code it ends with).
fn crash(language: &str) -> (&'static str, Value) {
    match language {
        "c" => (
            // A null pointer the compiler cannot see (it would turn a visible one into a trap).
            "#include <stdlib.h>\nint main(void) { int *p = (int *)strtol(\"0\", 0, 10); *p = 1; return 0; }\n",
            json!("SIGSEGV"),
        ),
        "cpp" => (
            "#include <cstdlib>\nint main() { std::abort(); }\n",
            json!("SIGABRT"),
        ),
        "python" => ("print(1 // 0)\n", json!(1)),
        "javascript" => ("throw new Error('boom');\n", json!(1)),
        "go" => (
            "package main\n\nfunc main() {\n\tpanic(\"boom\")\n}\n",
            json!(2),
        ),
        "java" => (
            "public class Main { public static void main(String[] a) { throw new RuntimeException(\"boom\"); } }\n",
            json!(1),
        ),
        other => panic!("no crash in {other}"),
    }
}

/// A submission that does not compile, and its verdict (interpreted languages find out when
/// they run it).
fn broken(language: &str) -> (&'static str, &'static str) {
    match language {
        "c" => ("int main(void) { return x; }\n", "compilation_error"),
        "cpp" => ("int main() { undefined_call(); }\n", "compilation_error"),
        "python" => ("def f(:\n    pass\n", "runtime_error"),
        "javascript" => ("function (\n", "runtime_error"),
        "go" => (
            "package main\n\nfunc main() {\n\tx := 1\n}\n",
            "compilation_error",
        ),
        "java" => (
            "public class Main { public static void main(String[] a) { int x = \"s\"; } }\n",
            "compilation_error",
        ),
        other => panic!("no broken submission in {other}"),
    }
}

struct Submission {
    what: String,
    body: Value,
    verdict: &'static str,
    /// The deciding case's signal (a string) or exit code (a number), for crashes.
    ended: Option<Value>,
}

fn submissions() -> Vec<Submission> {
    let mut out = Vec::new();
    for (i, p) in PROBLEMS.iter().enumerate() {
        let cases: Vec<Value> = p
            .cases
            .iter()
            .map(|(i, e)| json!({"stdin": i, "expected_output": e}))
            .collect();
        // The wall-clock limit is far above the CPU limit: a slow submission must be stopped
        // for its CPU time even on a machine so busy that it gets a fraction of a core.
        let body = |code: &str, stop: bool| {
            json!({"language": p.language, "code": code, "test_cases": cases,
                   "stop_on_first_failure": stop,
                   "limits": {"cpu_time": 2, "wall_time": 60}})
        };
        assert!(
            p.correct.contains(p.wrong.0),
            "{}: the wrong replacement",
            p.name
        );
        let wrong = p.correct.replacen(p.wrong.0, p.wrong.1, 1);
        out.push(Submission {
            what: format!("{} ({}) correct", p.name, p.language),
            body: body(p.correct, false),
            verdict: "accepted",
            ended: None,
        });
        out.push(Submission {
            what: format!("{} ({}) wrong", p.name, p.language),
            body: body(&wrong, false),
            verdict: "wrong_answer",
            ended: None,
        });
        let third = match i % 3 {
            0 => Submission {
                what: format!("{} ({}) slow", p.name, p.language),
                body: body(slow(p.language), true),
                verdict: "time_limit_exceeded",
                ended: None,
            },
            1 => {
                let (code, ended) = crash(p.language);
                Submission {
                    what: format!("{} ({}) crashing", p.name, p.language),
                    body: body(code, true),
                    verdict: "runtime_error",
                    ended: Some(ended),
                }
            }
            _ => {
                let (code, verdict) = broken(p.language);
                Submission {
                    what: format!("{} ({}) not compiling", p.name, p.language),
                    body: body(code, true),
                    verdict,
                    ended: None,
                }
            }
        };
        out.push(third);
    }
    out
}

#[test]
fn the_judging_test_set_gets_every_verdict_right() {
    let srv = Server::start();
    let subs = submissions();
    assert_eq!(PROBLEMS.len(), 20);
    for kind in [
        "accepted",
        "wrong_answer",
        "time_limit_exceeded",
        "runtime_error",
        "compilation_error",
    ] {
        assert!(
            subs.iter().any(|s| s.verdict == kind),
            "no {kind} in the set"
        );
    }
    let ids: Vec<String> = subs.iter().map(|s| srv.submit(KEY_A, &s.body)).collect();
    let mut wrong = Vec::new();
    for (s, id) in subs.iter().zip(&ids) {
        let done = srv.wait_done(KEY_A, id, Duration::from_secs(600));
        let r = &done["result"];
        let got = r["judging"]["verdict"].as_str().unwrap_or("none");
        if got != s.verdict {
            wrong.push(format!(
                "{}: expected {}, got {got}: {:#}",
                s.what, s.verdict, done
            ));
            continue;
        }
        let cases = r["judging"]["cases"].as_array().unwrap();
        match s.verdict {
            "accepted" => {
                assert!(
                    cases.iter().all(|c| c["verdict"] == "accepted"),
                    "{}: {r:#}",
                    s.what
                );
                assert_eq!(r["judging"]["passed"], cases.len());
            }
            "compilation_error" => {
                assert!(cases.iter().all(|c| c["verdict"] == "skipped"), "{r:#}");
                assert_ne!(r["compile"]["exit_code"], 0, "{}: {r:#}", s.what);
            }
            "time_limit_exceeded" => {
                assert_eq!(cases[0]["limit_exceeded"], "cpu_time", "{}: {r:#}", s.what);
                // stop_on_first_failure: the others did not run.
                assert!(cases[1..].iter().all(|c| c["verdict"] == "skipped"));
            }
            _ => {}
        }
        match &s.ended {
            Some(Value::String(sig)) => {
                assert_eq!(&r["signal"], sig, "{}: {r:#}", s.what);
                assert_eq!(cases[0]["signal"], *sig);
            }
            Some(code) => {
                assert_eq!(&r["exit_code"], code, "{}: {r:#}", s.what);
                assert_eq!(cases[0]["exit_code"], *code);
                assert!(cases[0]["signal"].is_null());
            }
            None => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// A Python checker: the answer is a float, accepted within 1e-4 (absolute or relative);
/// anything but one number is a presentation error.
const FLOAT_CHECKER: &str = r#"
import sys
_, out, exp = sys.argv[1:4]
want = float(open(exp).read())
tokens = open(out).read().split()
if len(tokens) != 1:
    print(f"expected one number, got {len(tokens)} tokens", file=sys.stderr)
    sys.exit(2)
try:
    got = float(tokens[0])
except ValueError:
    print(f"not a number: {tokens[0]!r}", file=sys.stderr)
    sys.exit(2)
if abs(got - want) <= 1e-4 or abs(got - want) <= 1e-4 * abs(want):
    sys.exit(0)
print(f"expected {want}, got {got}", file=sys.stderr)
sys.exit(1)
"#;

#[test]
fn a_checker_judges_a_circle_area_problem_with_a_tolerance() {
    let srv = Server::start();
    let cases = json!([
        {"stdin": "1\n", "expected_output": "3.14159265358979\n"},
        {"stdin": "2.5\n", "expected_output": "19.6349540849362\n"},
        {"stdin": "100\n", "expected_output": "31415.9265358979\n"},
    ]);
    let judge = |language: &str, code: &str| -> Value {
        srv.execute(&json!({
            "language": language, "code": code, "test_cases": cases,
            "checker": {"language": "python", "code": FLOAT_CHECKER},
        }))
    };
    // Printed with 5 decimals: within the tolerance, never equal as text.
    let r = judge(
        "cpp",
        "#include <cstdio>\n#include <cmath>\nint main() { double r; if (scanf(\"%lf\", &r) != 1) return 1;\n\
         printf(\"%.5f\\n\", M_PI * r * r); }\n",
    );
    assert_eq!(r["judging"]["verdict"], "accepted", "{r:#}");
    assert_eq!(r["judging"]["passed"], 3);
    assert_eq!(r["judging"]["comparison"], "checker");
    // pi = 3.14: off by more than the tolerance.
    let r = judge("python", "r = float(input())\nprint(3.14 * r * r)\n");
    assert_eq!(r["judging"]["verdict"], "wrong_answer", "{r:#}");
    assert!(
        r["judging"]["cases"][0]["message"]
            .as_str()
            .unwrap()
            .contains("expected 3.14159265358979, got 3.14"),
        "{r:#}"
    );
    // Words around the number: a presentation error.
    let r = judge(
        "go",
        "package main\n\nimport (\n\t\"fmt\"\n\t\"math\"\n)\n\nfunc main() {\n\tvar r float64\n\
         \tfmt.Scan(&r)\n\tfmt.Printf(\"area = %f\\n\", math.Pi*r*r)\n}\n",
    );
    assert_eq!(r["judging"]["verdict"], "presentation_error", "{r:#}");
}
