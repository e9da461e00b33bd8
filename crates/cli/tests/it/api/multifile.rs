//! Multi-file programs: `files` beside `code` in every language, in the ways each language
//! splits a program (C and C++ headers and other translation units, Java packages, Python
//! packages, Go files of package main, JavaScript and TypeScript modules, Ruby, PHP and Bash
//! includes, Rust modules), plain and judged.

use serde_json::{Value, json};

use crate::server::Server;

struct Program {
    language: &'static str,
    code: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const PROGRAMS: &[Program] = &[
    Program {
        language: "c",
        code: "#include <stdio.h>\n#include \"lib/util.h\"\nint main(void) { int n; if (scanf(\"%d\", &n) != 1) return 1;\n\
               printf(\"%d\\n\", twice(n) + LIB_OFFSET); return 0; }\n",
        files: &[
            ("lib/util.h", "#define LIB_OFFSET 0\nint twice(int x);\n"),
            (
                "lib/util.c",
                "#include \"util.h\"\nint twice(int x) { return 2 * x; }\n",
            ),
        ],
    },
    Program {
        language: "cpp",
        code: "#include <iostream>\n#include \"util.hpp\"\nint main() { int n; std::cin >> n; std::cout << util::twice(n) << \"\\n\"; }\n",
        files: &[
            (
                "util.hpp",
                "#pragma once\nnamespace util { int twice(int x); }\n",
            ),
            (
                "util.cpp",
                "#include \"util.hpp\"\nint util::twice(int x) { return 2 * x; }\n",
            ),
        ],
    },
    Program {
        language: "java",
        code: "import com.example.util.Doubler;\npublic class Main { public static void main(String[] a) {\n\
               int n = new java.util.Scanner(System.in).nextInt(); System.out.println(Doubler.twice(n)); } }\n",
        files: &[(
            "com/example/util/Doubler.java",
            "package com.example.util;\npublic class Doubler { public static int twice(int x) { return 2 * x; } }\n",
        )],
    },
    Program {
        language: "python",
        code: "from pkg.util import twice\nprint(twice(int(input())))\n",
        files: &[
            ("pkg/__init__.py", ""),
            ("pkg/util.py", "def twice(x):\n    return 2 * x\n"),
        ],
    },
    Program {
        language: "javascript",
        code: "const { twice } = require('./lib/util');\n\
               console.log(twice(Number(require('fs').readFileSync(0, 'utf8'))));\n",
        files: &[("lib/util.js", "exports.twice = (x) => 2 * x;\n")],
    },
    Program {
        language: "typescript",
        code: "import { twice } from './util.ts';\nconst n = Number(new TextDecoder().decode(await new Response(Deno.stdin.readable).arrayBuffer()));\n\
               console.log(twice(n));\n",
        files: &[(
            "util.ts",
            "export function twice(x: number): number { return 2 * x; }\n",
        )],
    },
    Program {
        language: "go",
        code: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tvar n int\n\tfmt.Scan(&n)\n\tfmt.Println(twice(n))\n}\n",
        files: &[(
            "util.go",
            "package main\n\nfunc twice(x int) int { return 2 * x }\n",
        )],
    },
    Program {
        language: "rust",
        code: "mod util;\nfn main() { let mut s = String::new(); std::io::stdin().read_line(&mut s).unwrap();\n\
               println!(\"{}\", util::twice(s.trim().parse().unwrap())); }\n",
        files: &[("util.rs", "pub fn twice(x: i64) -> i64 { 2 * x }\n")],
    },
    Program {
        language: "ruby",
        code: "require_relative 'lib/util'\nputs Util.twice(gets.to_i)\n",
        files: &[(
            "lib/util.rb",
            "module Util\n  def self.twice(x) = 2 * x\nend\n",
        )],
    },
    Program {
        language: "php",
        code: "<?php\nrequire __DIR__ . '/util.php';\necho twice((int) trim(fgets(STDIN))), \"\\n\";\n",
        files: &[(
            "util.php",
            "<?php\nfunction twice(int $x): int { return 2 * $x; }\n",
        )],
    },
    Program {
        language: "bash",
        code: "source ./util.sh\nread n\ntwice \"$n\"\n",
        files: &[("util.sh", "twice() { echo $(( 2 * $1 )); }\n")],
    },
];

fn files(p: &Program) -> Value {
    p.files
        .iter()
        .map(|(n, c)| json!({"name": n, "content": c}))
        .collect()
}

#[test]
fn multi_file_programs_work_in_every_language() {
    let srv = Server::start();
    let available: Vec<String> = srv
        .get("/api/v1/languages", Some(crate::server::KEY_A))
        .expect(200)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["available"] == true)
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    let mut failed = Vec::new();
    for p in PROGRAMS {
        assert!(
            available.iter().any(|a| a == p.language),
            "{} is not installed on this host",
            p.language
        );
        let r = srv.execute(&json!({"language": p.language, "code": p.code,
                                     "files": files(p), "stdin": "21\n"}));
        if r["stdout"] != "42\n" || r["exit_code"] != 0 {
            failed.push(format!("{}: {r:#}", p.language));
            continue;
        }
        // Judged: every case starts from the program compiled once with its files.
        let r = srv.execute(
            &json!({"language": p.language, "code": p.code, "files": files(p),
                                     "test_cases": [{"stdin": "1\n", "expected_output": "2"},
                                                    {"stdin": "5\n", "expected_output": "10"}]}),
        );
        if r["judging"]["verdict"] != "accepted" {
            failed.push(format!("{} judged: {r:#}", p.language));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
