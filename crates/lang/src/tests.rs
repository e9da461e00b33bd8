//! Tests of the built-in definitions and the registry.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::*;

const REQUIRED: &[&str] = &[
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
];

fn prefix() -> PathBuf {
    PathBuf::from(DEFAULT_PREFIX)
}

fn builtin() -> Registry {
    Registry::builtin(&prefix()).expect("built-in definitions load")
}

#[test]
fn every_builtin_file_parses_and_is_complete() {
    assert!(builtin_files().len() >= REQUIRED.len());
    for (file, text) in builtin_files() {
        let lang = Language::from_toml(text, file, &prefix()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            format!("{}.toml", lang.id),
            *file,
            "file name must be the id"
        );
        assert!(!lang.requires.is_empty(), "{file}: requires is empty");
        assert!(
            !lang.install.debian.is_empty(),
            "{file}: nothing to install"
        );
        assert!(!lang.extensions.is_empty(), "{file}: no extension");
        let example = lang
            .example
            .as_ref()
            .unwrap_or_else(|| panic!("{file}: no example"));
        assert_eq!(example.stdout, "hello, world\n", "{file}");
        // Commands name their programs by absolute path (or ./ for the compiled binary), so the
        // host's PATH (pyenv, rustup under /root) never decides which toolchain runs.
        let mut programs = vec![&lang.run.argv[0], &lang.version.argv[0]];
        if let Some(c) = &lang.compile {
            programs.push(&c.argv[0]);
        }
        for p in programs {
            assert!(
                p.starts_with('/') || p.starts_with("{prefix}/") || p.starts_with("./"),
                "{file}: {p}"
            );
        }
        for p in lang.requires.iter().chain(&lang.ro_paths) {
            assert!(
                !p.starts_with("/root") && !p.starts_with("/home"),
                "{file}: {}",
                p.display()
            );
        }
    }
    let registry = builtin();
    let ids: Vec<&str> = registry.all().iter().map(|l| l.id.as_str()).collect();
    for id in REQUIRED {
        assert!(ids.contains(id), "missing built-in {id}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "all() is sorted by id");
}

#[test]
fn names_and_aliases_resolve() {
    let r = builtin();
    let cases = [
        ("python", "python"),
        ("py", "python"),
        ("python3", "python"),
        ("javascript", "javascript"),
        ("js", "javascript"),
        ("node", "javascript"),
        ("nodejs", "javascript"),
        ("typescript", "typescript"),
        ("ts", "typescript"),
        ("bash", "bash"),
        ("sh", "bash"),
        ("c", "c"),
        ("cpp", "cpp"),
        ("c++", "cpp"),
        ("cc", "cpp"),
        ("java", "java"),
        ("go", "go"),
        ("golang", "go"),
        ("rust", "rust"),
        ("rs", "rust"),
        ("ruby", "ruby"),
        ("rb", "ruby"),
        ("php", "php"),
        ("  PyThOn ", "python"),
        ("C++", "cpp"),
        ("GoLang", "go"),
    ];
    for (name, id) in cases {
        assert_eq!(
            r.resolve(name).map(|l| l.id.as_str()),
            Some(id),
            "resolve({name:?})"
        );
    }
    for unknown in ["", "cobol", "pythonn", "main.py", ".py"] {
        assert!(
            r.resolve(unknown).is_none(),
            "{unknown:?} should not resolve"
        );
    }
}

#[test]
fn extensions_resolve() {
    let r = builtin();
    let cases = [
        ("py", "python"),
        (".py", "python"),
        ("js", "javascript"),
        ("mjs", "javascript"),
        ("ts", "typescript"),
        ("sh", "bash"),
        ("c", "c"),
        ("cpp", "cpp"),
        ("cc", "cpp"),
        ("CXX", "cpp"),
        ("java", "java"),
        ("go", "go"),
        ("rs", "rust"),
        ("rb", "ruby"),
        ("php", "php"),
    ];
    for (ext, id) in cases {
        assert_eq!(
            r.by_extension(ext).map(|l| l.id.as_str()),
            Some(id),
            "by_extension({ext:?})"
        );
    }
    assert!(r.by_extension("txt").is_none());
    assert_eq!(
        r.by_path(Path::new("/x/prog.RS")).map(|l| l.id.as_str()),
        Some("rust")
    );
    assert!(r.by_path(Path::new("Makefile")).is_none());
}

#[test]
fn placeholders_expand_in_builtin_commands() {
    let r = builtin();
    let vars = Vars::new("main.c", 256, "/opt/runcell");
    let c = r.resolve("c").unwrap();
    let compile = c.compile_argv(&vars).unwrap();
    assert_eq!(
        compile,
        [
            "/usr/bin/gcc",
            "-O2",
            "-pipe",
            "-o",
            "main",
            "main.c",
            "-lm"
        ]
    );
    assert_eq!(
        c.run_argv(&vars, &["1".into(), "2".into()]),
        ["./main", "1", "2"]
    );
    // `{sources}`: the main source, then the program's other sources, one argument each.
    let more = Vars {
        sources: vec!["lib/a.c".into(), "z.c".into()],
        ..vars.clone()
    };
    assert_eq!(
        c.compile_argv(&more).unwrap()[4..],
        ["main", "main.c", "lib/a.c", "z.c", "-lm"]
    );
    assert!(c.is_source("lib/a.c"));
    assert!(!c.is_source("lib/a.h"));
    assert!(!c.is_source("Makefile"));
    let go = r.resolve("go").unwrap();
    let gv = Vars {
        sources: vec!["util.go".into()],
        ..Vars::new("main.go", 256, "/opt/runcell")
    };
    assert_eq!(
        go.compile_argv(&gv).unwrap(),
        ["/usr/bin/go", "build", "-o", "main", "main.go", "util.go"]
    );

    let py = r.resolve("python").unwrap();
    assert!(!py.is_compiled());
    assert_eq!(py.compile_argv(&vars), None);
    let vars = Vars::new("main.py", 128, "/opt/runcell");
    assert_eq!(py.run_argv(&vars, &[]), ["/usr/bin/python3", "main.py"]);

    let ts = r.resolve("ts").unwrap();
    let vars = Vars::new("main.ts", 128, "/srv/rc");
    let argv = ts.run_argv(&vars, &[]);
    assert_eq!(argv[0], "/srv/rc/venv/bin/deno");
    assert_eq!(argv.last().unwrap(), "main.ts");
    assert_eq!(
        ts.requires,
        [PathBuf::from("/opt/runcell/venv/bin/deno")],
        "registry prefix"
    );

    let go = r.resolve("go").unwrap();
    let env = go.env(&Vars::new("main.go", 300, "/opt/runcell"));
    assert!(
        env.contains(&("GOMEMLIMIT".into(), "300MiB".into())),
        "{env:?}"
    );
    assert!(
        env.iter()
            .all(|(k, v)| k != "GOCACHE" || v.starts_with("/tmp/")),
        "{env:?}"
    );

    let java = r.resolve("java").unwrap();
    let vars = Vars::new("Main.java", 512, "/opt/runcell");
    assert!(
        java.run_argv(&vars, &[])
            .contains(&"-XX:MaxRAM=512m".to_owned())
    );
    assert!(
        java.compile_argv(&vars)
            .unwrap()
            .contains(&"-J-XX:MaxRAM=512m".to_owned())
    );
}

#[test]
fn java_main_class_decides_the_file_name() {
    let r = builtin();
    let java = r.resolve("java").unwrap();
    let cases = [
        ("public class Main { }", "Main.java"),
        (
            "public class Solution {\n public static void main(String[] a) {} }",
            "Solution.java",
        ),
        (
            "import java.util.*;\n\npublic final class Foo_1 {}",
            "Foo_1.java",
        ),
        ("  public  class\tBar extends Baz {", "Bar.java"),
        (
            "class Helper {}\npublic class App {\n  public static class Inner {}\n}",
            "App.java",
        ),
        (
            "class Hidden { public static void main(String[] a) {} }",
            "Main.java",
        ),
        ("", "Main.java"),
        ("// no class at all", "Main.java"),
    ];
    for (code, file) in cases {
        assert_eq!(java.source_file_for(code), file, "{code:?}");
    }
    // Other languages ignore the code.
    assert_eq!(
        r.resolve("python")
            .unwrap()
            .source_file_for("public class X {}"),
        "main.py"
    );
    let vars = Vars::new(
        java.source_file_for("public class Foo {}"),
        256,
        "/opt/runcell",
    );
    assert_eq!(vars.stem(), "Foo");
    assert_eq!(
        java.compile_argv(&vars).unwrap().last().unwrap(),
        "Foo.java"
    );
    assert_eq!(
        java.run_argv(&vars, &["a".into()])
            .iter()
            .rev()
            .take(2)
            .collect::<Vec<_>>(),
        ["a", "Foo"]
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

const TOY: &str = r#"
id = "toy"
name = "Toy"
aliases = ["toylang"]
extensions = ["toy"]
source_file = "main.toy"
requires = ["{prefix}/bin/toy"]
[run]
command = ["{prefix}/bin/toy", "{source}"]
[version]
command = ["{prefix}/bin/toy", "--version"]
regex = 'toy (\S+)'
"#;

#[test]
fn extra_directory_adds_languages() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "toy.toml", TOY);
    write(dir.path(), "notes.txt", "not a language");
    write(dir.path(), ".hidden.toml", "garbage");
    let r = Registry::load(Path::new("/srv/rc"), &[dir.path().to_path_buf()]).unwrap();
    let toy = r.resolve("TOYLANG").unwrap();
    assert_eq!(toy.id, "toy");
    assert_eq!(toy.requires, [PathBuf::from("/srv/rc/bin/toy")]);
    assert_eq!(
        toy.origin,
        dir.path().join("toy.toml").display().to_string()
    );
    assert_eq!(r.by_extension("toy").unwrap().id, "toy");
    assert!(r.resolve("python").is_some(), "built-ins are still there");
    assert_eq!(r.all().len(), builtin().all().len() + 1);
}

#[test]
fn override_directory_replaces_a_builtin() {
    let dir = tempfile::tempdir().unwrap();
    let custom = r#"
id = "python"
name = "Python (custom)"
aliases = ["snake"]
extensions = ["py", "pyw"]
source_file = "prog.py"
[run]
command = ["/usr/local/bin/python3.12", "-I", "{source}"]
[version]
command = ["/usr/local/bin/python3.12", "--version"]
regex = 'Python (\S+)'
"#;
    let path = write(dir.path(), "my-python.toml", custom);
    let r = Registry::load(&prefix(), &[dir.path().to_path_buf()]).unwrap();
    let py = r.resolve("python").unwrap();
    assert_eq!(py.name, "Python (custom)");
    assert_eq!(py.source_file, "prog.py");
    assert_eq!(py.origin, path.display().to_string());
    assert_eq!(r.resolve("snake").unwrap().id, "python");
    assert!(
        r.resolve("py").is_none(),
        "the built-in's aliases are gone with it"
    );
    assert_eq!(r.by_extension("pyw").unwrap().id, "python");
    assert_eq!(r.all().len(), builtin().all().len());
    assert_eq!(r.all().iter().filter(|l| l.id == "python").count(), 1);
}

#[test]
fn bad_file_in_extra_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "broken.toml",
        &format!("{TOY}\nunexpected_key = true\n"),
    );
    let e = Registry::load(&prefix(), &[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(e, LangError::Toml { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
    assert!(msg.contains("unexpected_key"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "empty.toml",
        &TOY.replace(r#"["{prefix}/bin/toy", "{source}"]"#, "[]"),
    );
    let msg = Registry::load(&prefix(), &[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with(&path.display().to_string()) && msg.contains("run.command"),
        "{msg}"
    );

    let msg = Registry::load(&prefix(), &[PathBuf::from("/nonexistent/runcell-langs")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("/nonexistent/runcell-langs"), "{msg}");
}

#[test]
fn duplicates_across_files_are_reported_with_both_names() {
    // Same id twice among run-time files.
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", TOY);
    let b = write(
        dir.path(),
        "b.toml",
        &TOY.replace("toylang", "other")
            .replace("\"toy\"]", "\"toy2\"]"),
    );
    let e = Registry::load(&prefix(), &[dir.path().to_path_buf()]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, LangError::Duplicate { what: "id", .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&a.display().to_string()) && msg.contains(&b.display().to_string()),
        "{msg}"
    );

    // The same id in two directories is ambiguous too.
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    write(d1.path(), "toy.toml", TOY);
    write(d2.path(), "toy.toml", TOY);
    let e = Registry::load(&prefix(), &[d1.path().into(), d2.path().into()]).unwrap_err();
    assert!(matches!(e, LangError::Duplicate { what: "id", .. }), "{e}");

    // An alias that is a built-in's alias.
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "toy.toml",
        &TOY.replace("\"toylang\"", "\"py\""),
    );
    let msg = Registry::load(&prefix(), &[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("alias \"py\"") && msg.contains("builtin:python.toml"),
        "{msg}"
    );
    assert!(msg.contains(&p.display().to_string()), "{msg}");

    // An alias that is another language's id, and a shared extension.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "toy.toml",
        &TOY.replace("\"toylang\"", "\"ruby\""),
    );
    let msg = Registry::load(&prefix(), &[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"ruby\"") && msg.contains("builtin:ruby.toml"),
        "{msg}"
    );
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "toy.toml",
        &TOY.replace("extensions = [\"toy\"]", "extensions = [\"rb\"]"),
    );
    let msg = Registry::load(&prefix(), &[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("extension \"rb\"") && msg.contains("builtin:ruby.toml"),
        "{msg}"
    );
}

#[test]
fn available_follows_requires() {
    let r = builtin();
    for lang in r.all() {
        assert_eq!(
            lang.available(),
            lang.requires.iter().all(|p| p.exists()),
            "{}",
            lang.id
        );
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "toy.toml", TOY);
    let r = Registry::load(dir.path(), &[dir.path().to_path_buf()]).unwrap();
    assert!(!r.resolve("toy").unwrap().available());
    fs::create_dir(dir.path().join("bin")).unwrap();
    write(&dir.path().join("bin"), "toy", "");
    assert!(r.resolve("toy").unwrap().available());
}

#[test]
fn probe_version_of_every_available_builtin() {
    // Host facts: the toolchains are installed on the development machines and by `.ci/run`.
    let r = builtin();
    let mut probed = 0;
    for lang in r.all().iter().filter(|l| l.available()) {
        let start = Instant::now();
        let version = lang.probe_version();
        let v = version.unwrap_or_else(|| {
            panic!("{}: probe {:?} gave no version", lang.id, lang.version.argv)
        });
        assert!(
            v.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{}: {v:?}",
            lang.id
        );
        eprintln!(
            "{:<11} {v:<10} ({} ms)",
            lang.id,
            start.elapsed().as_millis()
        );
        probed += 1;
    }
    eprintln!("probed {probed} of {} languages", r.all().len());

    let start = Instant::now();
    let all = r.probe_all();
    eprintln!("probe_all: {} ms", start.elapsed().as_millis());
    assert_eq!(all.len(), r.all().len());
    for ((id, version), lang) in all.iter().zip(r.all()) {
        assert_eq!(id, &lang.id);
        assert_eq!(version.is_some(), lang.available(), "{id}: {version:?}");
    }
}

#[test]
fn probe_of_a_missing_toolchain_is_none() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "toy.toml", TOY);
    let r = Registry::load(dir.path(), &[dir.path().to_path_buf()]).unwrap();
    assert_eq!(r.resolve("toy").unwrap().probe_version(), None);
}

/// Compiles and runs every available built-in's example on the host (no jail) in a fresh
/// directory with the base environment, as the engine will inside the jail: the program must
/// print exactly the example's stdout.
#[test]
fn examples_compile_and_run_on_the_host() {
    let r = builtin();
    for lang in r.all().iter().filter(|l| l.available()) {
        let Some(example) = &lang.example else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let source = lang.source_file_for(&example.code);
        fs::write(dir.path().join(&source), &example.code).unwrap();
        let vars = Vars::new(source, 512, prefix());
        // The jail's private /tmp is played by a directory of our own, so that caches such as
        // /tmp/go-cache never collide with other users of the host's /tmp.
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let private = |v: &str| match v.strip_prefix("/tmp") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                format!("{}{rest}", tmp.display())
            }
            _ => v.to_owned(),
        };
        let mut env: Vec<(String, String)> = BASE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), private(v)))
            .collect();
        env.extend(lang.env(&vars).into_iter().map(|(k, v)| (k, private(&v))));
        let run = |argv: &[String]| {
            let start = Instant::now();
            let out = Command::new(&argv[0])
                .args(&argv[1..])
                .current_dir(dir.path())
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", lang.id));
            (out, start.elapsed().as_millis())
        };
        let mut timing = String::new();
        if let Some(argv) = lang.compile_argv(&vars) {
            let (out, ms) = run(&argv);
            assert!(
                out.status.success(),
                "{}: compile {argv:?} failed: {}",
                lang.id,
                String::from_utf8_lossy(&out.stderr)
            );
            timing = format!("compile {ms} ms, ");
        }
        let argv = lang.run_argv(&vars, &[]);
        let (out, ms) = run(&argv);
        assert!(
            out.status.success(),
            "{}: run {argv:?} failed: {}",
            lang.id,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            example.stdout,
            "{}",
            lang.id
        );
        eprintln!("{:<11} {timing}run {ms} ms", lang.id);
    }
}
