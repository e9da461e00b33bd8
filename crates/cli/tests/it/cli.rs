//! End-to-end tests of the `runcell` command line: every language (hello world with stdin, args and
//! environment; a compile error for compiled languages; a runtime error), and the CLI's own
//! behaviour (exit codes, JSON, limits, errors).
//!
//! Needs root and the toolchains (`runcell runtimes install`, which `.ci/run` runs first);
//! fails loudly without them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn runcell(args: &[&str]) -> Output {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests must run as root (CI runs them as root)"
    );
    Command::new(env!("CARGO_BIN_EXE_runcell"))
        .args(args)
        .output()
        .expect("run the runcell binary")
}

fn write(dir: &Path, name: &str, code: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, code).unwrap();
    p
}

/// Runs `code` as `file_name` with `--json` and returns the parsed result and exit code.
fn run_json(file_name: &str, code: &str, extra: &[&str]) -> (Value, i32) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), file_name, code);
    let mut args = vec!["run", path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = runcell(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{file_name}: not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code().unwrap_or(-1))
}

const HELLO_ARGS: &[&str] = &[
    "--stdin",
    "world\n",
    "--arg",
    "one",
    "--arg",
    "two",
    "--env",
    "GREETING=hi there",
];
const HELLO_OUT: &str = "hello world\nargs one two\nenv hi there\n";

fn check_hello(file: &str, code: &str) {
    let (v, exit) = run_json(file, code, HELLO_ARGS);
    assert_eq!(v["stdout"], HELLO_OUT, "{file}: {v:#}");
    assert_eq!(v["exit_code"], 0, "{file}: {v:#}");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["limit_exceeded"], Value::Null);
    assert_eq!(exit, 0);
    assert!(
        v["version"].as_str().is_some_and(|s| s != "unknown"),
        "{v:#}"
    );
}

fn check_runtime_error(file: &str, code: &str, exit_code: i64, stderr_has: &str) {
    let (v, exit) = run_json(file, code, &[]);
    assert_eq!(v["exit_code"], exit_code, "{file}: {v:#}");
    assert_eq!(
        v["status"], "completed",
        "a failing program still completes: {v:#}"
    );
    assert!(
        v["stderr"].as_str().unwrap().contains(stderr_has),
        "{file}: {v:#}"
    );
    assert_eq!(exit as i64, exit_code.rem_euclid(256));
}

fn check_signal(file: &str, code: &str, signal: &str, number: i32) {
    let (v, exit) = run_json(file, code, &[]);
    assert_eq!(v["exit_code"], -1, "{file}: {v:#}");
    assert_eq!(v["signal"], signal, "{file}: {v:#}");
    assert_eq!(exit, 128 + number);
}

fn check_compile_error(file: &str, code: &str, stderr_has: &str) {
    let (v, exit) = run_json(file, code, &[]);
    assert_eq!(v["exit_code"], -1, "{file}: {v:#}");
    let c = &v["compile"];
    assert!(c["exit_code"].as_i64().unwrap() != 0, "{file}: {v:#}");
    assert!(
        c["stderr"].as_str().unwrap().contains(stderr_has),
        "{file}: {v:#}"
    );
    assert!(v["stderr"].as_str().unwrap().contains(stderr_has), "{v:#}");
    assert_eq!(v["stdout"], "");
    assert_ne!(exit, 0);
}

// ---------------------------------------------------------------------------------------------
// Languages

#[test]
fn python() {
    check_hello(
        "hello.py",
        "import sys, os\nname = sys.stdin.readline().strip()\nprint('hello', name)\n\
         print('args', ' '.join(sys.argv[1:]))\nprint('env', os.environ.get('GREETING'))\n",
    );
    check_runtime_error(
        "err.py",
        "raise ValueError('boom')\n",
        1,
        "ValueError: boom",
    );
    check_runtime_error("syntax.py", "print(\n", 1, "SyntaxError");
}

#[test]
fn javascript() {
    check_hello(
        "hello.js",
        "const lines = require('fs').readFileSync(0, 'utf8').split('\\n');\n\
         console.log('hello', lines[0]);\nconsole.log('args', process.argv.slice(2).join(' '));\n\
         console.log('env', process.env.GREETING);\n",
    );
    check_runtime_error("err.js", "throw new Error('boom');\n", 1, "Error: boom");
}

#[test]
fn typescript() {
    check_hello(
        "hello.ts",
        "const input: string = await new Response(Deno.stdin.readable).text();\n\
         console.log('hello', input.split('\\n')[0]);\nconsole.log('args', Deno.args.join(' '));\n\
         console.log('env', Deno.env.get('GREETING'));\n",
    );
    check_runtime_error("err.ts", "throw new Error('boom');\n", 1, "boom");
    check_runtime_error("syntax.ts", "let x: = 1;\n", 1, "SyntaxError");
}

#[test]
fn bash() {
    check_hello(
        "hello.sh",
        "read name\necho \"hello $name\"\necho \"args $*\"\necho \"env $GREETING\"\n",
    );
    check_runtime_error(
        "err.sh",
        "echo before\nno_such_command_here\n",
        127,
        "not found",
    );
}

#[test]
fn c() {
    check_hello(
        "hello.c",
        "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\
         int main(int argc, char **argv) {\n  char name[100];\n  if (!fgets(name, sizeof name, stdin)) return 2;\n\
           name[strcspn(name, \"\\n\")] = 0;\n  printf(\"hello %s\\n\", name);\n  printf(\"args\");\n\
           for (int i = 1; i < argc; i++) printf(\" %s\", argv[i]);\n  printf(\"\\nenv %s\\n\", getenv(\"GREETING\"));\n\
           return 0;\n}\n",
    );
    check_compile_error(
        "bad.c",
        "int main(void) { return undefined_variable; }\n",
        "error",
    );
    check_signal(
        "segv.c",
        "int main(void) { volatile int *p = 0; return *p; }\n",
        "SIGSEGV",
        libc::SIGSEGV,
    );
}

#[test]
fn cpp() {
    check_hello(
        "hello.cpp",
        "#include <iostream>\n#include <string>\n#include <cstdlib>\n\
         int main(int argc, char** argv) {\n  std::string name; std::getline(std::cin, name);\n\
           std::cout << \"hello \" << name << \"\\n\" << \"args\";\n\
           for (int i = 1; i < argc; i++) std::cout << \" \" << argv[i];\n\
           std::cout << \"\\nenv \" << std::getenv(\"GREETING\") << \"\\n\";\n}\n",
    );
    check_compile_error("bad.cpp", "int main() { std::string s; }\n", "error");
    check_signal(
        "throw.cpp",
        "#include <stdexcept>\nint main() { throw std::runtime_error(\"boom\"); }\n",
        "SIGABRT",
        libc::SIGABRT,
    );
}

#[test]
fn java() {
    check_hello(
        "Main.java",
        "import java.util.Scanner;\npublic class Main {\n  public static void main(String[] args) {\n\
             String name = new Scanner(System.in).nextLine();\n    System.out.println(\"hello \" + name);\n\
             System.out.println(\"args \" + String.join(\" \", args));\n\
             System.out.println(\"env \" + System.getenv(\"GREETING\"));\n  }\n}\n",
    );
    check_compile_error(
        "Bad.java",
        "public class Main { public static void main(String[] a) { int x = \"s\" } }\n",
        "error",
    );
    check_runtime_error(
        "Boom.java",
        "public class Boom { public static void main(String[] a) { throw new RuntimeException(\"boom\"); } }\n",
        1,
        "RuntimeException: boom",
    );
}

#[test]
fn go() {
    check_hello(
        "hello.go",
        "package main\nimport (\n\"bufio\"\n\"fmt\"\n\"os\"\n\"strings\"\n)\n\
         func main() {\n  r := bufio.NewReader(os.Stdin)\n  name, _ := r.ReadString('\\n')\n\
           fmt.Println(\"hello\", strings.TrimSpace(name))\n\
           fmt.Println(\"args\", strings.Join(os.Args[1:], \" \"))\n\
           fmt.Println(\"env\", os.Getenv(\"GREETING\"))\n}\n",
    );
    check_compile_error(
        "bad.go",
        "package main\nfunc main() { x := 1 }\n",
        "declared",
    );
    check_runtime_error(
        "panic.go",
        "package main\nfunc main() { panic(\"boom\") }\n",
        2,
        "panic: boom",
    );
}

#[test]
fn rust() {
    check_hello(
        "hello.rs",
        "use std::io::BufRead;\nfn main() {\n  let mut name = String::new();\n\
           std::io::stdin().lock().read_line(&mut name).unwrap();\n  println!(\"hello {}\", name.trim());\n\
           let args: Vec<String> = std::env::args().skip(1).collect();\n  println!(\"args {}\", args.join(\" \"));\n\
           println!(\"env {}\", std::env::var(\"GREETING\").unwrap());\n}\n",
    );
    check_compile_error(
        "bad.rs",
        "fn main() { let x: u32 = \"s\"; }\n",
        "mismatched types",
    );
    check_runtime_error("panic.rs", "fn main() { panic!(\"boom\"); }\n", 101, "boom");
}

#[test]
fn ruby() {
    check_hello(
        "hello.rb",
        "name = $stdin.gets.strip\nputs \"hello #{name}\"\nputs \"args #{ARGV.join(' ')}\"\n\
         puts \"env #{ENV['GREETING']}\"\n",
    );
    check_runtime_error("err.rb", "raise 'boom'\n", 1, "boom");
}

#[test]
fn php() {
    check_hello(
        "hello.php",
        "<?php\n$name = trim(fgets(STDIN));\necho \"hello $name\\n\";\n\
         echo \"args \" . implode(\" \", array_slice($argv, 1)) . \"\\n\";\n\
         echo \"env \" . getenv(\"GREETING\") . \"\\n\";\n",
    );
    check_runtime_error(
        "err.php",
        "<?php\nthrow new Exception('boom');\n",
        255,
        "boom",
    );
}

#[test]
fn every_language_runs_its_own_example() {
    // The examples shipped in the language files, so a new language file is tested too.
    let out = runcell(&["languages", "--json"]);
    let langs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let registry = runcell_lang::Registry::builtin(Path::new("/opt/runcell")).unwrap();
    for l in langs.as_array().unwrap() {
        let id = l["id"].as_str().unwrap();
        assert_eq!(l["available"], true, "{id} is not installed: {l}");
        let lang = registry.resolve(id).unwrap();
        let Some(ex) = &lang.example else { continue };
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &lang.source_file_for(&ex.code), &ex.code);
        let out = runcell(&["run", path.to_str().unwrap(), "--language", id]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            ex.stdout,
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI itself

#[test]
fn the_exit_code_mirrors_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "x.sh", "echo out; echo err >&2; exit 3\n");
    let out = runcell(&["run", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let p = write(dir.path(), "k.sh", "kill -TERM $$\n");
    let out = runcell(&["run", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn json_results_have_every_api_field() {
    let (v, _) = run_json("j.py", "print(42)", &[]);
    for field in [
        "execution_id",
        "status",
        "language",
        "version",
        "stdout",
        "stderr",
        "exit_code",
        "signal",
        "execution_time",
        "cpu_time",
        "memory_peak_kb",
        "limit_exceeded",
        "stdout_truncated",
        "stderr_truncated",
        "compile",
        "session_id",
        "created_at",
        "started_at",
        "completed_at",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v:#}");
    }
    assert_eq!(v["stdout"], "42\n");
    assert_eq!(v["language"], "python");
    assert!(v["execution_time"].as_f64().unwrap() > 0.0);
    assert!(v["memory_peak_kb"].as_u64().unwrap() > 0);
    let id = v["execution_id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4", "UUID v4: {id}");
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn limits_are_enforced_and_named() {
    let (v, exit) = run_json("t.py", "import time\ntime.sleep(30)\n", &["--time", "0.5"]);
    assert_eq!(v["limit_exceeded"], "wall_time", "{v:#}");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["signal"], "SIGKILL");
    assert_eq!(exit, 137);
    assert!(
        v["failure_reason"].as_str().unwrap().contains("time"),
        "{v:#}"
    );
    let (v, _) = run_json("m.py", "b = b'x' * (200 << 20)\n", &["--memory", "64"]);
    assert_eq!(v["limit_exceeded"], "memory", "{v:#}");
    assert!(v["memory_peak_kb"].as_u64().unwrap() <= 64 * 1024, "{v:#}");
    let (v, _) = run_json("c.py", "while True: pass\n", &["--cpu-time", "0.5"]);
    assert_eq!(v["limit_exceeded"], "cpu_time", "{v:#}");
    let c = v["cpu_time"].as_f64().unwrap();
    assert!((0.5..1.0).contains(&c), "{v:#}");
    let (v, _) = run_json(
        "p.py",
        "import os\nfor _ in range(50): os.fork() or os._exit(0)\n",
        &["--max-processes", "4"],
    );
    assert_eq!(v["limit_exceeded"], "processes", "{v:#}");
}

#[test]
fn bad_input_gets_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "x.unknown", "x");
    let out = runcell(&["run", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--language"));
    let out = runcell(&["run", p.to_str().unwrap(), "--language", "cobol"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unsupported language: cobol"));
    let p = write(dir.path(), "x.py", "print(1)");
    let out = runcell(&["run", p.to_str().unwrap(), "--memory", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memory_mb") && err.contains("at least"),
        "{err}"
    );
    let out = runcell(&["run", p.to_str().unwrap(), "--time", "100000"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("maximum"));
    let out = runcell(&["run", "/no/such/file.py"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.py"));
}

#[test]
fn languages_are_listed_with_versions() {
    let out = runcell(&["languages", "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
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
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    for l in v.as_array().unwrap() {
        assert!(l["version"].is_string(), "{l}");
    }
    let table = runcell(&["languages"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("python"));
}

// ---------------------------------------------------------------------------------------------
// Threads and the process limit

/// GOMAXPROCS(64), 64 busy goroutines and 128 goroutines blocked in a `read(2)` of a pipe at the
/// same time: each blocked goroutine holds an OS thread, so the program cannot get past its
/// barrier with fewer than ~130 threads. It prints how many threads it had at the barrier.
pub(crate) const GO_THREADS: &str = r#"package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	runtime.GOMAXPROCS(64)
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		panic(err)
	}
	const blocked = 128
	var entered int32
	var wg sync.WaitGroup
	for i := 0; i < blocked; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 1)
			atomic.AddInt32(&entered, 1)
			syscall.Read(p[0], b) // a blocking pipe: the goroutine keeps its thread
		}()
	}
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := 0
			for j := 0; j < 1000000; j++ {
				x += j
			}
			_ = x
		}()
	}
	for atomic.LoadInt32(&entered) < blocked {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	tasks, _ := os.ReadDir("/proc/self/task")
	syscall.Write(p[1], make([]byte, blocked))
	wg.Wait()
	fmt.Println("threads", len(tasks))
}
"#;

#[test]
fn go_with_gomaxprocs_64_and_blocked_goroutines_runs_under_default_limits() {
    let (v, exit) = run_json("threads.go", GO_THREADS, &[]);
    assert_eq!(v["exit_code"], 0, "{v:#}");
    assert_eq!(v["limit_exceeded"], Value::Null, "{v:#}");
    assert_eq!(exit, 0);
    let threads: u64 = v["stdout"]
        .as_str()
        .and_then(|s| s.strip_prefix("threads "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{v:#}"));
    // More than the server's general default: Go's own default is what let it run.
    assert!(threads > 64, "{threads} threads: {v:#}");
}

#[test]
fn an_explicit_process_limit_wins_over_the_language_default_and_is_reported_with_a_hint() {
    // Go's default is higher, but a limit the run asks for wins, lower too.
    let (v, exit) = run_json("threads.go", GO_THREADS, &["--max-processes", "64"]);
    assert_eq!(v["limit_exceeded"], "processes", "{v:#}");
    assert_eq!(v["status"], "failed", "{v:#}");
    assert_ne!(exit, 0);
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("failed to create new OS thread"),
        "{v:#}"
    );
    let reason = v["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("limit of 64 processes and threads")
            && reason.contains("raise max_processes (up to 1024"),
        "{reason}"
    );
}

#[test]
fn a_thread_bomb_is_reported_as_the_process_limit_with_a_hint() {
    let bomb = "import threading, time\n\
                while True:\n\
                \x20   threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n";
    let (v, exit) = run_json("bomb.py", bomb, &[]);
    assert_eq!(v["limit_exceeded"], "processes", "{v:#}");
    assert_eq!(v["status"], "failed", "{v:#}");
    assert_eq!(exit, 1, "{v:#}");
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("can't start new thread"),
        "{v:#}"
    );
    let reason = v["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("limit of 64 processes and threads")
            && reason.contains("raise max_processes (up to 1024"),
        "{reason}"
    );
    // At the server's maximum there is nothing left to raise; the same bomb is contained.
    let (v, _) = run_json("bomb.py", bomb, &["--max-processes", "1024"]);
    assert_eq!(v["limit_exceeded"], "processes", "{v:#}");
    let reason = v["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("limit of 1024 processes and threads")
            && reason.contains("this server's maximum"),
        "{reason}"
    );
    // Without --json the reason goes to standard error.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bomb.py", bomb);
    let out = runcell(&["run", p.to_str().unwrap(), "--max-processes", "16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runcell: the program hit its limit of 16 processes and threads"),
        "{err}"
    );
}

#[test]
fn a_program_waiting_for_a_thread_that_never_started_is_reported_as_the_process_limit() {
    // The threads that did start wait on a barrier that can never fill: after the
    // RuntimeError the interpreter waits for them until the wall-clock limit. The cause is
    // the process limit, and that is what is reported.
    let code = "import threading
b = threading.Barrier(41)
for _ in range(40):
                    threading.Thread(target=b.wait).start()
b.wait()
print('all started')
";
    let (v, _) = run_json("wait.py", code, &["--max-processes", "16", "--time", "2"]);
    assert_eq!(v["limit_exceeded"], "processes", "{v:#}");
    assert_eq!(v["signal"], "SIGKILL", "{v:#}");
    let reason = v["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("limit of 16 processes and threads")
            && reason.contains("raise max_processes"),
        "{reason}"
    );
    // With room for its threads the same program finishes.
    let (v, exit) = run_json("wait.py", code, &[]);
    assert_eq!(
        v["stdout"],
        "all started
",
        "{v:#}"
    );
    assert_eq!(exit, 0);
}

#[test]
fn java_with_a_few_threads_runs_under_default_limits() {
    let code = "import java.util.*;\nimport java.util.concurrent.*;\n\
        public class Main {\n  public static void main(String[] a) throws Exception {\n\
            List<Thread> ts = new ArrayList<>();\n\
            int[] sums = new int[8];\n\
            for (int i = 0; i < 8; i++) {\n      final int k = i;\n\
              Thread t = new Thread(() -> { for (int j = 0; j <= 1000; j++) sums[k] += j; });\n\
              t.start(); ts.add(t);\n    }\n\
            for (Thread t : ts) t.join();\n\
            ExecutorService pool = Executors.newFixedThreadPool(4);\n\
            Future<Integer> f = pool.submit(() -> Arrays.stream(sums).sum());\n\
            System.out.println(\"hello \" + f.get());\n\
            pool.shutdown();\n\
            System.out.println(java.util.stream.IntStream.range(0, 1000).parallel().sum());\n  }\n}\n";
    let (v, exit) = run_json("Main.java", code, &[]);
    assert_eq!(v["stdout"], "hello 4004000\n499500\n", "{v:#}");
    assert_eq!(v["limit_exceeded"], Value::Null, "{v:#}");
    assert_eq!(exit, 0);
}

#[test]
fn languages_list_their_default_process_limits() {
    let out = runcell(&["languages", "--json"]);
    let langs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let registry = runcell_lang::Registry::builtin(Path::new("/opt/runcell")).unwrap();
    let policy = runcell_engine::LimitPolicy::default();
    let listed = |id: &str| {
        langs
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == id)
            .and_then(|l| l["default_max_processes"].as_u64())
            .unwrap_or_else(|| panic!("{id}: {langs:#}"))
    };
    for l in registry.all() {
        let n = listed(&l.id);
        assert_eq!(n, policy.default_processes(l.run.max_processes), "{}", l.id);
        assert!(
            (policy.defaults.max_processes..=policy.maxima.max_processes).contains(&n),
            "{}: {n}",
            l.id
        );
    }
    // The thread-hungry runtimes get more than the general default.
    assert!(listed("go") > policy.defaults.max_processes);
    assert!(listed("java") > policy.defaults.max_processes);
    let table = String::from_utf8_lossy(&runcell(&["languages"]).stdout).into_owned();
    assert!(table.contains("PROCESSES"), "{table}");
    let go = table.lines().find(|l| l.starts_with("go ")).unwrap();
    assert!(
        go.split_whitespace().any(|w| w == listed("go").to_string()),
        "{table}"
    );
}
