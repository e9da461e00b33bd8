//! `{placeholder}` expansion in commands, environment values and paths.
//!
//! Syntax: `{source}`, `{stem}`, `{memory_mb}`, `{prefix}`; `{{` and `}}` stand for literal braces.
//! In compile commands, `{sources}` (a whole argument) is the main source followed by the
//! program's other files with one of the language's extensions.
//! Templates are checked when a file is loaded ([`check`]), so expansion itself cannot fail.

use std::path::PathBuf;

/// Values for the placeholders of one compile or run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars {
    /// Source file name inside the workspace, e.g. `main.py` or `Foo.java` (`{source}`).
    /// `{stem}` is this name without its last extension.
    pub source: String,
    /// Memory limit of the step in MiB (`{memory_mb}`). For a compile step pass the effective
    /// compile limit (the larger of the user's limit and [`crate::CompileSpec::memory_mb`]).
    pub memory_mb: u64,
    /// Runtime prefix, default `/opt/runcell` (`{prefix}`).
    pub prefix: PathBuf,
    /// The program's other source files (workspace paths, in order): `{sources}` is
    /// `source` followed by these.
    pub sources: Vec<String>,
}

impl Vars {
    pub fn new(source: impl Into<String>, memory_mb: u64, prefix: impl Into<PathBuf>) -> Vars {
        Vars {
            source: source.into(),
            memory_mb,
            prefix: prefix.into(),
            sources: Vec::new(),
        }
    }

    /// `{stem}`: the source file name without its last extension (`Main.java` -> `Main`).
    pub fn stem(&self) -> &str {
        stem_of(&self.source)
    }
}

/// File name without its last extension; a leading dot does not start an extension.
pub(crate) fn stem_of(file: &str) -> &str {
    match file.rfind('.') {
        Some(i) if i > 0 => &file[..i],
        _ => file,
    }
}

/// The placeholders a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    Source,
    /// The main source and the program's other source files, as separate arguments.
    Sources,
    Stem,
    MemoryMb,
    Prefix,
    /// Path (inside the jail) of a kernel's connection file; context commands only.
    ConnectionFile,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "source" => Var::Source,
            "sources" => Var::Sources,
            "stem" => Var::Stem,
            "memory_mb" => Var::MemoryMb,
            "prefix" => Var::Prefix,
            "connection_file" => Var::ConnectionFile,
            _ => return None,
        })
    }
}

/// Every placeholder: for compile and run commands and environment values.
pub(crate) const ALL_VARS: &[Var] = &[Var::Source, Var::Stem, Var::MemoryMb, Var::Prefix];
/// Compile commands: every placeholder and `{sources}`.
pub(crate) const COMPILE_VARS: &[Var] = &[
    Var::Source,
    Var::Sources,
    Var::Stem,
    Var::MemoryMb,
    Var::Prefix,
];
/// The argument that stands for the main source and the program's other source files.
pub(crate) const SOURCES_ARG: &str = "{sources}";
/// Only `{prefix}`: for paths and the version probe, which are expanded at load time.
pub(crate) const PREFIX_ONLY: &[Var] = &[Var::Prefix];
/// Kernel commands of code contexts.
pub(crate) const CONTEXT_VARS: &[Var] = &[Var::Prefix, Var::ConnectionFile];

enum Piece<'a> {
    Text(&'a str),
    Var(Var),
}

/// Splits a template into literal text and placeholders; the error says what is wrong.
fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        if i > 0 {
            pieces.push(Piece::Text(&rest[..i]));
        }
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            pieces.push(Piece::Text("{"));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            pieces.push(Piece::Text("}"));
            rest = after;
        } else if tail.starts_with('}') {
            return Err(format!(
                "unmatched `}}` in {template:?} (write `}}}}` for a literal brace)"
            ));
        } else {
            let Some(end) = tail.find('}') else {
                return Err(format!(
                    "unclosed `{{` in {template:?} (write `{{{{` for a literal brace)"
                ));
            };
            let name = &tail[1..end];
            let Some(var) = Var::parse(name) else {
                return Err(format!(
                    "unknown placeholder `{{{name}}}` in {template:?} \
                     (known: {{source}}, {{sources}}, {{stem}}, {{memory_mb}}, {{prefix}}, \
                     {{connection_file}})"
                ));
            };
            pieces.push(Piece::Var(var));
            rest = &tail[end + 1..];
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// Checks that `template` is well formed and uses only the placeholders in `allowed`.
pub(crate) fn check(template: &str, allowed: &[Var]) -> Result<(), String> {
    for piece in parse(template)? {
        let Piece::Var(var) = piece else { continue };
        if !allowed.contains(&var) {
            let names: Vec<String> = allowed
                .iter()
                .map(|v| format!("{{{}}}", var_name(*v)))
                .collect();
            return Err(format!(
                "placeholder `{{{}}}` cannot be used here in {template:?} (allowed: {})",
                var_name(var),
                names.join(", ")
            ));
        }
    }
    Ok(())
}

fn var_name(var: Var) -> &'static str {
    match var {
        Var::Source => "source",
        Var::Sources => "sources",
        Var::Stem => "stem",
        Var::MemoryMb => "memory_mb",
        Var::Prefix => "prefix",
        Var::ConnectionFile => "connection_file",
    }
}

/// Expands the placeholders of `template`. A malformed template (one that [`check`] would refuse,
/// possible only for a `Language` built by hand) is returned unchanged.
pub(crate) fn expand(template: &str, vars: &Vars) -> String {
    expand_with(template, |var| match var {
        // `{sources}` is expanded by the command (a whole argument); inside a longer one it
        // could only be the main source.
        Var::Source | Var::Sources => vars.source.clone(),
        Var::Stem => vars.stem().to_owned(),
        Var::MemoryMb => vars.memory_mb.to_string(),
        Var::Prefix => vars.prefix.to_string_lossy().into_owned(),
        Var::ConnectionFile => String::new(),
    })
}

/// Expands a context command (`{prefix}`, `{connection_file}`).
pub(crate) fn expand_context(template: &str, prefix: &str, connection_file: &str) -> String {
    expand_with(template, |var| match var {
        Var::Prefix => prefix.to_owned(),
        Var::ConnectionFile => connection_file.to_owned(),
        _ => String::new(),
    })
}

fn expand_with(template: &str, value: impl Fn(Var) -> String) -> String {
    let Ok(pieces) = parse(template) else {
        return template.to_owned();
    };
    let mut out = String::with_capacity(template.len() + 16);
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(v) => out.push_str(&value(v)),
        }
    }
    out
}

/// Expands only `{prefix}` (paths and probes, at load time). The template must have passed
/// [`check`] with [`PREFIX_ONLY`].
pub(crate) fn expand_prefix(template: &str, prefix: &str) -> String {
    let vars = Vars {
        source: String::new(),
        memory_mb: 0,
        prefix: PathBuf::from(prefix),
        sources: Vec::new(),
    };
    expand(template, &vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars::new("Main.java", 256, "/opt/runcell")
    }

    #[test]
    fn expands_every_placeholder() {
        let v = vars();
        assert_eq!(expand("{source}", &v), "Main.java");
        assert_eq!(expand("./{stem}", &v), "./Main");
        assert_eq!(expand("-XX:MaxRAM={memory_mb}m", &v), "-XX:MaxRAM=256m");
        assert_eq!(
            expand("{prefix}/venv/bin/deno", &v),
            "/opt/runcell/venv/bin/deno"
        );
        assert_eq!(expand("{stem}-{stem}.{memory_mb}", &v), "Main-Main.256");
        assert_eq!(expand("plain", &v), "plain");
        assert_eq!(expand("", &v), "");
    }

    #[test]
    fn doubled_braces_are_literal() {
        let v = vars();
        assert_eq!(expand("{{source}}", &v), "{source}");
        assert_eq!(expand("a}}b{{c", &v), "a}b{c");
        assert_eq!(expand("{{{source}}}", &v), "{Main.java}");
        assert!(check("{{x}}", ALL_VARS).is_ok());
    }

    #[test]
    fn check_rejects_bad_templates() {
        assert!(check("{source}", ALL_VARS).is_ok());
        let e = check("{sauce}", ALL_VARS).unwrap_err();
        assert!(e.contains("unknown placeholder `{sauce}`"), "{e}");
        assert!(check("{source", ALL_VARS).unwrap_err().contains("unclosed"));
        assert!(
            check("source}", ALL_VARS)
                .unwrap_err()
                .contains("unmatched")
        );
        let e = check("{source}", PREFIX_ONLY).unwrap_err();
        assert!(e.contains("cannot be used here"), "{e}");
        assert!(check("{prefix}/x", PREFIX_ONLY).is_ok());
    }

    #[test]
    fn stems() {
        assert_eq!(stem_of("main.py"), "main");
        assert_eq!(stem_of("archive.tar.gz"), "archive.tar");
        assert_eq!(stem_of("noext"), "noext");
        assert_eq!(stem_of(".hidden"), ".hidden");
        assert_eq!(Vars::new("Foo.java", 1, "/p").stem(), "Foo");
    }

    #[test]
    fn expand_prefix_only_touches_prefix() {
        assert_eq!(expand_prefix("{prefix}/venv", "/srv/rc"), "/srv/rc/venv");
    }
}
