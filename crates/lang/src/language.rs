//! One language: its TOML schema, validation, and what the engine asks of it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::error::LangError;
use crate::probe;
use crate::template::{self, ALL_VARS, COMPILE_VARS, CONTEXT_VARS, PREFIX_ONLY, SOURCES_ARG, Vars};

/// Environment the engine starts every step from; a language's `env` is added on top.
/// The version probe runs on the host with exactly this environment.
pub const BASE_ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp"),
    ("TMPDIR", "/tmp"),
    ("LANG", "C.UTF-8"),
];

/// How long [`Language::probe_version`] lets the probe run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A language definition, loaded from one TOML file.
///
/// Command and environment templates are kept unexpanded (see [`Language::compile_argv`],
/// [`Language::run_argv`], [`Language::env`]); `{prefix}` is already expanded in `ro_paths`,
/// `requires`, `version.argv` and `install`.
#[derive(Debug, Clone)]
pub struct Language {
    /// Canonical id, lowercase (`python`, `cpp`).
    pub id: String,
    /// Display name (`C++`).
    pub name: String,
    /// Other names [`crate::Registry::resolve`] accepts, lowercase.
    pub aliases: Vec<String>,
    /// File extensions without the dot, lowercase.
    pub extensions: Vec<String>,
    /// Default name of the program file in the workspace, e.g. `main.py`.
    pub source_file: String,
    /// For languages whose file name depends on the code (Java): the first capture of the first
    /// match is the file stem. See [`Language::source_file_for`].
    pub main_name_pattern: Option<Regex>,
    /// Compile step, for compiled languages.
    pub compile: Option<CompileSpec>,
    pub run: RunSpec,
    /// Added to [`BASE_ENV`] for compile and run; values are templates. Sorted by name.
    pub env: Vec<(String, String)>,
    pub version: VersionProbe,
    pub install: InstallSpec,
    /// Host paths (files or directories) the jail must expose read-only, beyond its base set.
    pub ro_paths: Vec<PathBuf>,
    /// Absolute paths that must all exist for the toolchain to count as installed.
    pub requires: Vec<PathBuf>,
    /// A hello-world program and its exact stdout, for smoke tests and playgrounds.
    pub example: Option<Example>,
    /// The Jupyter kernel of stateful code contexts, if the language has them.
    pub context: Option<ContextSpec>,
    /// A warm interpreter: a command started ahead of a run, in the run's own jail, that
    /// waits for the run's command line and then runs the program as the cold command would
    /// (see [`WarmSpec`]).
    pub warm: Option<WarmSpec>,
    /// Where the definition came from: `builtin:python.toml` or the file's path.
    pub origin: String,
}

/// The compile step: a command and the minimum limits it gets whatever the user asked for
/// (effective limit = max(user's limit, minimum)).
#[derive(Debug, Clone, PartialEq)]
pub struct CompileSpec {
    /// Command template (`{source}`, `{stem}`, `{memory_mb}`, `{prefix}`).
    pub argv: Vec<String>,
    pub memory_mb: Option<u64>,
    pub max_processes: Option<u64>,
    /// Seconds.
    pub wall_time: Option<f64>,
    /// Seconds.
    pub cpu_time: Option<f64>,
}

/// The run step. The user's arguments are appended to `argv`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Command template (`{source}`, `{stem}`, `{memory_mb}`, `{prefix}`).
    pub argv: Vec<String>,
    /// The default process/thread limit of this language's runs, for runtimes that start
    /// threads of their own: a run that does not ask for a `max_processes` gets the larger of
    /// this and the server's default, capped at the server's maximum. A value the run asks for
    /// explicitly always wins (within the maximum).
    pub max_processes: Option<u64>,
}

/// A warm interpreter. Its command starts the runtime and waits on standard input for a
/// header: a 4-byte big-endian length, then NUL-separated fields: the path of a file to take
/// as standard input and remove (empty: `/dev/null`), then the run command's arguments (the
/// cold `run.command` with the user's arguments). It then runs the program as that command
/// would.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmSpec {
    /// Command template (`{prefix}`).
    pub argv: Vec<String>,
    /// The interpreter's shared library, for a zygote: the interpreter is initialized once
    /// and each warm jail is a fork of it that runs `argv`'s `-c` code (Python only).
    pub zygote_library: Option<PathBuf>,
    /// The run's input follows the header in the same pipe (which is then closed), for a
    /// runtime that cannot make a file its standard input (`stdin = "pipe"`; the header's
    /// input field is then empty). Otherwise it is a workspace file named in the header.
    pub stdin_pipe: bool,
    /// A file the warm command needs (its loader), written read-only into every jail's root
    /// (`preload = { path, contents }`; the path must be under `/etc/runcell/`).
    pub preload: Option<(PathBuf, String)>,
}

/// A Jupyter kernel for stateful code contexts (sandboxes).
#[derive(Debug, Clone, PartialEq)]
pub struct ContextSpec {
    /// Command template (`{prefix}`, `{connection_file}`).
    pub argv: Vec<String>,
    /// Added to the language's environment; values may use `{prefix}`.
    pub env: Vec<(String, String)>,
    /// Absolute paths that must exist for contexts to be available (the kernel's package).
    pub requires: Vec<PathBuf>,
    /// How code in the kernel's language sets environment variables (for a run's `env`).
    pub env_style: Option<EnvStyle>,
    /// Code run silently in pre-started kernels so that the first user code is fast (for
    /// example importing heavy packages); it must leave no names behind.
    pub warmup: Option<String>,
    /// For kernels that publish a run's result after saying they are idle (Deno's): how long
    /// to keep listening for it, milliseconds.
    pub settle_ms: Option<u64>,
}

/// The language a context's kernel speaks, for setting environment variables in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvStyle {
    /// `os.environ.update({...})`
    Python,
    /// `export K='v'`
    Bash,
    /// `Deno.env.set(k, v)`
    Deno,
}

impl EnvStyle {
    /// Code that sets `vars` in the kernel's process (names are assumed valid; values are
    /// quoted for the language).
    pub fn code(self, vars: &[(String, String)]) -> String {
        let json = || {
            let map: serde_json::Map<String, serde_json::Value> = vars
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::Value::Object(map).to_string()
        };
        match self {
            EnvStyle::Python => format!("__import__('os').environ.update({})", json()),
            EnvStyle::Deno => format!(
                "for (const [k, v] of Object.entries({})) Deno.env.set(k, v);",
                json()
            ),
            EnvStyle::Bash => vars
                .iter()
                .map(|(k, v)| format!("export {k}='{}'", v.replace('\'', "'\\''")))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// How to ask the toolchain for its version: run `argv` on the host, match `regex` against
/// stdout, then stderr; the first capture group is the version.
#[derive(Debug, Clone)]
pub struct VersionProbe {
    pub argv: Vec<String>,
    pub regex: Regex,
}

/// What `runtimes install` installs for this language.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallSpec {
    /// Debian package names (apt-get).
    pub debian: Vec<String>,
    /// pip requirement specifiers, installed into `{prefix}/venv`.
    pub pip: Vec<String>,
}

/// A program and the exact stdout it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub code: String,
    pub stdout: String,
}

impl Language {
    /// Whether there is a compile step.
    pub fn is_compiled(&self) -> bool {
        self.compile.is_some()
    }

    /// The file name the code must be saved under: `source_file`, or for a language with a
    /// `main_name_pattern` whose first capture matches (Java's `public class Foo`),
    /// that name plus the extension of `source_file` (`Foo.java`).
    pub fn source_file_for(&self, code: &str) -> String {
        let Some(re) = &self.main_name_pattern else {
            return self.source_file.clone();
        };
        let Some(name) = re.captures(code).and_then(|c| c.get(1)).map(|m| m.as_str()) else {
            return self.source_file.clone();
        };
        if !is_safe_file_name(name) {
            return self.source_file.clone();
        }
        match Path::new(&self.source_file).extension() {
            Some(ext) => format!("{name}.{}", ext.to_string_lossy()),
            None => name.to_owned(),
        }
    }

    /// The compile command with placeholders expanded (`{sources}` into several arguments),
    /// or `None` for interpreted languages.
    pub fn compile_argv(&self, vars: &Vars) -> Option<Vec<String>> {
        let c = self.compile.as_ref()?;
        let mut argv = Vec::with_capacity(c.argv.len() + vars.sources.len());
        for t in &c.argv {
            if t == SOURCES_ARG {
                argv.push(vars.source.clone());
                argv.extend(vars.sources.iter().cloned());
            } else {
                argv.push(template::expand(t, vars));
            }
        }
        Some(argv)
    }

    /// Whether a file of the program is one of its sources (by the language's extensions),
    /// for `{sources}`.
    pub fn is_source(&self, name: &str) -> bool {
        Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| self.extensions.iter().any(|x| x == e))
    }

    /// The run command with placeholders expanded, followed by the user's `args` verbatim.
    pub fn run_argv(&self, vars: &Vars, args: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = self
            .run
            .argv
            .iter()
            .map(|t| template::expand(t, vars))
            .collect();
        argv.extend(args.iter().cloned());
        argv
    }

    /// The language's environment with placeholders expanded (to add on top of [`BASE_ENV`]).
    pub fn env(&self, vars: &Vars) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), template::expand(v, vars)))
            .collect()
    }

    /// Whether every path in `requires` exists on this host.
    pub fn available(&self) -> bool {
        self.requires.iter().all(|p| p.exists())
    }

    /// Whether code contexts (a Jupyter kernel) are defined and installed.
    pub fn contexts_available(&self) -> bool {
        self.context
            .as_ref()
            .is_some_and(|c| c.requires.iter().all(|p| p.exists()))
    }

    /// The kernel command of a code context, placeholders expanded.
    pub fn context_argv(&self, prefix: &Path, connection_file: &str) -> Option<Vec<String>> {
        let prefix = prefix.to_string_lossy();
        self.context.as_ref().map(|c| {
            c.argv
                .iter()
                .map(|t| template::expand_context(t, &prefix, connection_file))
                .collect()
        })
    }

    /// The environment of a code context's kernel: the language's, then the context's.
    pub fn context_env(&self, prefix: &Path, memory_mb: u64) -> Vec<(String, String)> {
        let vars = Vars::new("", memory_mb, prefix);
        let mut env = self.env(&vars);
        if let Some(c) = &self.context {
            let p = prefix.to_string_lossy();
            for (k, v) in &c.env {
                env.retain(|(x, _)| x != k);
                env.push((k.clone(), template::expand_context(v, &p, "")));
            }
        }
        env
    }

    /// Runs the version probe on the host (clean [`BASE_ENV`], stdin closed, killed after
    /// [`PROBE_TIMEOUT`]) and returns the first capture of `version.regex` in its stdout, else in
    /// its stderr. `None` if the probe cannot run, times out, or nothing matches.
    /// The exit status is not checked: some tools print their version and exit non-zero.
    pub fn probe_version(&self) -> Option<String> {
        let (stdout, stderr) = probe::run_capture(&self.version.argv, BASE_ENV, PROBE_TIMEOUT)?;
        [stdout, stderr].iter().find_map(|bytes| {
            let text = String::from_utf8_lossy(bytes);
            let caps = self.version.regex.captures(&text)?;
            let v = caps.get(1)?.as_str().trim();
            (!v.is_empty()).then(|| v.to_owned())
        })
    }

    /// Parses and validates one definition. `origin` names the file in errors;
    /// `prefix` replaces `{prefix}` in paths, the version probe and pip specifiers.
    pub fn from_toml(text: &str, origin: &str, prefix: &Path) -> Result<Language, LangError> {
        let raw: RawLanguage = toml::from_str(text).map_err(|e| LangError::Toml {
            file: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |message: String| LangError::Invalid {
            file: origin.to_owned(),
            message,
        };
        let prefix = prefix
            .to_str()
            .ok_or_else(|| invalid(format!("runtime prefix {} is not UTF-8", prefix.display())))?;
        raw.validate(origin, prefix).map_err(invalid)
    }
}

/// A plain file name: no directory part, not hidden, no control characters.
fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

// ---------------------------------------------------------------------------------------------
// The TOML schema.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLanguage {
    id: String,
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    extensions: Vec<String>,
    source_file: String,
    #[serde(default)]
    main_name_pattern: Option<String>,
    #[serde(default)]
    compile: Option<RawCompile>,
    run: RawRun,
    #[serde(default)]
    env: BTreeMap<String, String>,
    version: RawVersion,
    #[serde(default)]
    install: RawInstall,
    #[serde(default)]
    ro_paths: Vec<String>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    example: Option<RawExample>,
    #[serde(default)]
    context: Option<RawContext>,
    #[serde(default)]
    warm: Option<RawWarm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarm {
    command: Vec<String>,
    #[serde(default)]
    zygote_library: Option<PathBuf>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    preload: Option<RawPreload>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreload {
    path: PathBuf,
    contents: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    requires: Vec<String>,
    env_style: Option<EnvStyle>,
    warmup: Option<String>,
    settle_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompile {
    command: Vec<String>,
    memory_mb: Option<u64>,
    max_processes: Option<u64>,
    wall_time: Option<f64>,
    cpu_time: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    command: Vec<String>,
    /// `min_processes` is its old name (it was a floor even over explicit limits).
    #[serde(alias = "min_processes")]
    max_processes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    command: Vec<String>,
    regex: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInstall {
    #[serde(default)]
    debian: Vec<String>,
    #[serde(default)]
    pip: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExample {
    code: String,
    stdout: String,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-._#".contains(c))
}

fn check_command(what: &str, argv: &[String], allowed: &[template::Var]) -> Result<(), String> {
    let Some(first) = argv.first() else {
        return Err(format!("{what}: the command is empty"));
    };
    if first.trim().is_empty() {
        return Err(format!("{what}: the program (first element) is empty"));
    }
    for arg in argv {
        if arg.contains('\0') {
            return Err(format!("{what}: {arg:?} contains a NUL byte"));
        }
        template::check(arg, allowed).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

fn check_positive(what: &str, v: Option<u64>) -> Result<(), String> {
    match v {
        Some(0) => Err(format!("{what} must be at least 1")),
        _ => Ok(()),
    }
}

fn check_seconds(what: &str, v: Option<f64>) -> Result<(), String> {
    match v {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            Err(format!("{what} must be a positive number of seconds"))
        }
        _ => Ok(()),
    }
}

/// Expands `{prefix}` in a path template and checks that the result is absolute and normal.
fn host_path(what: &str, template_: &str, prefix: &str) -> Result<PathBuf, String> {
    template::check(template_, PREFIX_ONLY).map_err(|e| format!("{what}: {e}"))?;
    let path = PathBuf::from(template::expand_prefix(template_, prefix));
    if !path.is_absolute() {
        return Err(format!(
            "{what}: {} is not an absolute path",
            path.display()
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "{what}: {} must not contain `.` or `..`",
            path.display()
        ));
    }
    if path.to_str().is_some_and(|s| s.contains('\0')) {
        return Err(format!("{what}: path contains a NUL byte"));
    }
    Ok(path)
}

/// Debian package names: lowercase alphanumerics and `+-.`, starting alphanumeric, optionally
/// `:arch`. Never starts with `-`, so it cannot be taken for an apt-get option.
fn is_debian_package(s: &str) -> bool {
    let (name, arch) = match s.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (s, None),
    };
    let ok_name = name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    ok_name
        && arch.is_none_or(|a| {
            !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A pip requirement specifier such as `deno`, `deno>=2.9,<3` or `ipykernel[extra]==6.0`.
/// Starts with a letter or digit (never an option) and has no whitespace or shell/URL syntax.
fn is_pip_requirement(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-[],<>=!~*".contains(c))
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl RawLanguage {
    fn validate(self, origin: &str, prefix: &str) -> Result<Language, String> {
        let id = self.id.trim().to_owned();
        if !is_name(&id) {
            return Err(format!(
                "id {id:?} must be lowercase letters, digits and `+-._#`, starting with a letter or digit"
            ));
        }
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }

        let mut aliases: Vec<String> = Vec::new();
        for alias in &self.aliases {
            let a = alias.trim().to_lowercase();
            if !is_name(&a) {
                return Err(format!(
                    "alias {alias:?} must be letters, digits and `+-._#`"
                ));
            }
            if a != id && !aliases.contains(&a) {
                aliases.push(a);
            }
        }

        let mut extensions: Vec<String> = Vec::new();
        for ext in &self.extensions {
            let e = ext.trim().trim_start_matches('.').to_lowercase();
            if e.is_empty() || e.contains(['/', '.', '\0']) || e.chars().any(char::is_whitespace) {
                return Err(format!("extension {ext:?} is not a single file extension"));
            }
            if !extensions.contains(&e) {
                extensions.push(e);
            }
        }

        if !is_safe_file_name(&self.source_file) || template::check(&self.source_file, &[]).is_err()
        {
            return Err(format!(
                "source_file {:?} must be a plain file name (no directory, no placeholder)",
                self.source_file
            ));
        }

        let main_name_pattern = match &self.main_name_pattern {
            None => None,
            Some(p) => {
                let re = Regex::new(p).map_err(|e| format!("main_name_pattern: {e}"))?;
                if re.captures_len() < 2 {
                    return Err("main_name_pattern needs a capture group (the file stem)".into());
                }
                Some(re)
            }
        };

        let compile = match self.compile {
            None => None,
            Some(c) => {
                check_command("compile.command", &c.command, COMPILE_VARS)?;
                if c.command
                    .iter()
                    .any(|a| a.contains(SOURCES_ARG) && a != SOURCES_ARG)
                {
                    return Err(format!(
                        "compile.command: {SOURCES_ARG} must be a whole argument"
                    ));
                }
                check_positive("compile.memory_mb", c.memory_mb)?;
                check_positive("compile.max_processes", c.max_processes)?;
                check_seconds("compile.wall_time", c.wall_time)?;
                check_seconds("compile.cpu_time", c.cpu_time)?;
                Some(CompileSpec {
                    argv: c.command,
                    memory_mb: c.memory_mb,
                    max_processes: c.max_processes,
                    wall_time: c.wall_time,
                    cpu_time: c.cpu_time,
                })
            }
        };

        check_command("run.command", &self.run.command, ALL_VARS)?;
        check_positive("run.max_processes", self.run.max_processes)?;
        let run = RunSpec {
            argv: self.run.command,
            max_processes: self.run.max_processes,
        };

        let mut env = Vec::with_capacity(self.env.len());
        for (k, v) in self.env {
            if !is_env_name(&k) {
                return Err(format!("env: {k:?} is not a valid variable name"));
            }
            if v.contains('\0') {
                return Err(format!("env.{k}: value contains a NUL byte"));
            }
            template::check(&v, ALL_VARS).map_err(|e| format!("env.{k}: {e}"))?;
            env.push((k, v));
        }

        check_command("version.command", &self.version.command, PREFIX_ONLY)?;
        let version_regex =
            Regex::new(&self.version.regex).map_err(|e| format!("version.regex: {e}"))?;
        if version_regex.captures_len() < 2 {
            return Err("version.regex needs a capture group (the version)".into());
        }
        let version = VersionProbe {
            argv: self
                .version
                .command
                .iter()
                .map(|t| template::expand_prefix(t, prefix))
                .collect(),
            regex: version_regex,
        };

        for p in &self.install.debian {
            if !is_debian_package(p) {
                return Err(format!(
                    "install.debian: {p:?} is not a Debian package name"
                ));
            }
        }
        for p in &self.install.pip {
            if !is_pip_requirement(p) {
                return Err(format!(
                    "install.pip: {p:?} is not a plain pip requirement (name[extras]<op>version)"
                ));
            }
        }
        let install = InstallSpec {
            debian: self.install.debian,
            pip: self.install.pip,
        };

        let ro_paths = self
            .ro_paths
            .iter()
            .map(|p| host_path("ro_paths", p, prefix))
            .collect::<Result<Vec<_>, _>>()?;
        let requires = self
            .requires
            .iter()
            .map(|p| host_path("requires", p, prefix))
            .collect::<Result<Vec<_>, _>>()?;

        let example = self.example.map(|e| Example {
            code: e.code,
            stdout: e.stdout,
        });

        let context = match self.context {
            None => None,
            Some(c) => {
                check_command("context.command", &c.command, CONTEXT_VARS)?;
                let mut env = Vec::with_capacity(c.env.len());
                for (k, v) in c.env {
                    if !is_env_name(&k) {
                        return Err(format!("context.env: {k:?} is not a valid variable name"));
                    }
                    if v.contains('\0') {
                        return Err(format!("context.env.{k}: value contains a NUL byte"));
                    }
                    template::check(&v, PREFIX_ONLY)
                        .map_err(|e| format!("context.env.{k}: {e}"))?;
                    env.push((k, v));
                }
                let requires = c
                    .requires
                    .iter()
                    .map(|p| host_path("context.requires", p, prefix))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(ContextSpec {
                    argv: c.command,
                    env,
                    requires,
                    env_style: c.env_style,
                    warmup: c.warmup,
                    settle_ms: c.settle_ms,
                })
            }
        };

        let warm = match self.warm {
            None => None,
            Some(w) => {
                check_command("warm.command", &w.command, PREFIX_ONLY)?;
                if let Some(lib) = &w.zygote_library
                    && (!lib.is_absolute() || w.command.len() != 3 || w.command[1] != "-c")
                {
                    return Err(format!(
                        "warm.zygote_library ({}) must be an absolute path, for a command \
                         [interpreter, \"-c\", code]",
                        lib.display()
                    ));
                }
                let stdin_pipe = match w.stdin.as_deref() {
                    None | Some("file") => false,
                    Some("pipe") => true,
                    Some(other) => {
                        return Err(format!(
                            "warm.stdin must be \"file\" or \"pipe\", not {other:?}"
                        ));
                    }
                };
                if let Some(p) = &w.preload
                    && (!p.path.starts_with("/etc/runcell/")
                        || p.path
                            .components()
                            .any(|c| c == std::path::Component::ParentDir))
                {
                    return Err(format!(
                        "warm.preload.path ({}) must be a path under /etc/runcell/",
                        p.path.display()
                    ));
                }
                Some(WarmSpec {
                    zygote_library: w.zygote_library,
                    stdin_pipe,
                    preload: w.preload.map(|p| (p.path, p.contents)),
                    argv: w
                        .command
                        .iter()
                        .map(|t| template::expand_prefix(t, prefix))
                        .collect(),
                })
            }
        };

        Ok(Language {
            id,
            name: self.name.trim().to_owned(),
            aliases,
            extensions,
            source_file: self.source_file,
            main_name_pattern,
            compile,
            run,
            env,
            version,
            install,
            ro_paths,
            requires,
            example,
            context,
            warm,
            origin: origin.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
id = "toy"
name = "Toy"
source_file = "main.toy"
[run]
command = ["/usr/bin/toy", "{source}"]
[version]
command = ["/usr/bin/toy", "--version"]
regex = 'toy (\S+)'
"#;

    fn parse(text: &str) -> Result<Language, LangError> {
        Language::from_toml(text, "test.toml", Path::new("/opt/runcell"))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    #[test]
    fn minimal_file_parses_with_defaults() {
        let l = parse(MINIMAL).unwrap();
        assert_eq!(l.id, "toy");
        assert!(l.aliases.is_empty() && l.extensions.is_empty() && l.env.is_empty());
        assert!(!l.is_compiled());
        assert!(l.available(), "no requires: available");
        assert_eq!(l.install, InstallSpec::default());
        assert_eq!(l.origin, "test.toml");
        assert_eq!(l.source_file_for("anything"), "main.toy");
    }

    #[test]
    fn unknown_keys_are_refused_everywhere() {
        let e = err(&format!("{MINIMAL}\nbogus = 1\n"));
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = err(&MINIMAL.replace("[run]\n", "[run]\nmin_process = 3\n"));
        assert!(e.contains("min_process"), "{e}");
        let e = err(&format!("{MINIMAL}\n[install]\napt = [\"x\"]\n"));
        assert!(e.contains("apt"), "{e}");
    }

    #[test]
    fn schema_errors_name_the_file_and_line() {
        let e = err("id = \"x\"\nname = 3\n");
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = err("this is not toml");
        assert!(e.starts_with("test.toml: "), "{e}");
        let e = err(&MINIMAL.replace("[run]\ncommand = [\"/usr/bin/toy\", \"{source}\"]\n", ""));
        assert!(e.contains("run"), "{e}");
    }

    #[test]
    fn empty_commands_are_refused() {
        let e = err(&MINIMAL.replace(r#"command = ["/usr/bin/toy", "{source}"]"#, "command = []"));
        assert!(e.contains("run.command: the command is empty"), "{e}");
        let e = err(&MINIMAL.replace(
            r#"command = ["/usr/bin/toy", "{source}"]"#,
            r#"command = [" ", "x"]"#,
        ));
        assert!(e.contains("run.command"), "{e}");
        let e = err(&format!("{MINIMAL}\n[compile]\ncommand = []\n"));
        assert!(e.contains("compile.command: the command is empty"), "{e}");
        let e = err(&MINIMAL.replace(r#"command = ["/usr/bin/toy", "--version"]"#, "command = []"));
        assert!(e.contains("version.command"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: &[(&str, &str, &str)] = &[
            (r#"id = "toy""#, r#"id = "Bad Id""#, "id"),
            (r#"id = "toy""#, r#"id = """#, "id"),
            (r#"name = "Toy""#, r#"name = " ""#, "name is empty"),
            (
                r#"source_file = "main.toy""#,
                r#"source_file = "../x.toy""#,
                "source_file",
            ),
            (
                r#"source_file = "main.toy""#,
                r#"source_file = "{stem}.toy""#,
                "source_file",
            ),
            (
                r#"regex = 'toy (\S+)'"#,
                r#"regex = 'toy \S+'"#,
                "capture group",
            ),
            (
                r#"regex = 'toy (\S+)'"#,
                r#"regex = 'toy ((\S+)'"#,
                "version.regex",
            ),
            ("{source}\"]", "{sauce}\"]", "unknown placeholder `{sauce}`"),
            ("\"--version\"]", "\"{source}\"]", "cannot be used here"),
        ];
        for (from, to, needle) in cases {
            let text = MINIMAL.replacen(from, to, 1);
            assert_ne!(text, MINIMAL, "replacement {from:?} did not apply");
            let e = err(&text);
            assert!(e.contains(needle), "{to}: {e}");
        }
        let more: &[(&str, &str)] = &[
            ("requires = [\"usr/bin/toy\"]", "not an absolute path"),
            ("requires = [\"/usr/../etc\"]", "must not contain"),
            ("ro_paths = [\"{source}\"]", "cannot be used here"),
            ("aliases = [\"two words\"]", "alias"),
            ("extensions = [\"a/b\"]", "extension"),
            ("main_name_pattern = 'class \\w+'", "capture group"),
            ("main_name_pattern = '('", "main_name_pattern"),
            ("[env]\n\"A-B\" = \"x\"", "not a valid variable name"),
            ("[env]\nA = \"{nope}\"", "env.A"),
            ("[install]\ndebian = [\"-o=evil\"]", "Debian package"),
            ("[install]\ndebian = [\"Python3\"]", "Debian package"),
            ("[install]\npip = [\"--index-url=http://x\"]", "pip"),
            ("[install]\npip = [\"deno; sys_platform\"]", "pip"),
            (
                "[compile]\ncommand = [\"cc\"]\nmemory_mb = 0",
                "compile.memory_mb",
            ),
            (
                "[compile]\ncommand = [\"cc\"]\nwall_time = -1",
                "compile.wall_time",
            ),
            ("[compile]\ncommand = [\"cc\"]\nmemory_mb = -5", "memory_mb"),
            (
                "[compile]\ncommand = [\"cc\", \"-I{sources}\"]",
                "{sources} must be a whole argument",
            ),
            ("[env]\nA = \"{sources}\"", "cannot be used here"),
            ("[example]\ncode = \"x\"", "stdout"),
        ];
        for (extra, needle) in more {
            // Top-level keys must come before the first table.
            let text = if extra.starts_with('[') {
                format!("{MINIMAL}\n{extra}\n")
            } else {
                format!("{extra}\n{MINIMAL}")
            };
            let e = err(&text);
            assert!(e.contains(needle), "{extra}: {e}");
            assert!(e.starts_with("test.toml: "), "{e}");
        }
        let e = err(&MINIMAL.replace("[run]\n", "[run]\nmax_processes = 0\n"));
        assert!(e.contains("run.max_processes"), "{e}");
    }

    #[test]
    fn run_max_processes_is_read_under_its_old_name_too() {
        assert_eq!(parse(MINIMAL).unwrap().run.max_processes, None);
        for key in ["max_processes", "min_processes"] {
            let l = parse(&MINIMAL.replace("[run]\n", &format!("[run]\n{key} = 200\n"))).unwrap();
            assert_eq!(l.run.max_processes, Some(200), "{key}");
        }
        let both = "[run]\nmax_processes = 1\nmin_processes = 2\n";
        assert!(err(&MINIMAL.replace("[run]\n", both)).contains("max_processes"));
    }

    #[test]
    fn names_are_normalised() {
        let text = format!(
            "aliases = [\"TOY\", \"Toy2\", \"toy2\"]\nextensions = [\".TY\", \"ty\"]\n{MINIMAL}"
        );
        let l = parse(&text).unwrap();
        assert_eq!(
            l.aliases,
            vec!["toy2"],
            "own id and duplicates dropped, lowercased"
        );
        assert_eq!(l.extensions, vec!["ty"]);
    }

    #[test]
    fn prefix_is_expanded_in_paths_and_probe_not_in_commands() {
        let text = MINIMAL
            .replace(
                "/usr/bin/toy\", \"--version",
                "{prefix}/bin/toy\", \"--version",
            )
            .replace(
                "[run]\ncommand = [\"/usr/bin/toy\"",
                "[run]\ncommand = [\"{prefix}/bin/toy\"",
            );
        let text = format!(
            "ro_paths = [\"{{prefix}}/lib\"]\nrequires = [\"{{prefix}}/bin/toy\"]\n{text}\n[env]\nTOYHOME = \"{{prefix}}/home\"\n"
        );
        let l = Language::from_toml(&text, "t.toml", Path::new("/srv/rc")).unwrap();
        assert_eq!(l.version.argv, vec!["/srv/rc/bin/toy", "--version"]);
        assert_eq!(l.ro_paths, vec![PathBuf::from("/srv/rc/lib")]);
        assert_eq!(l.requires, vec![PathBuf::from("/srv/rc/bin/toy")]);
        assert!(!l.available());
        assert_eq!(
            l.run.argv[0], "{prefix}/bin/toy",
            "templates stay unexpanded"
        );
        let vars = Vars::new("main.toy", 64, "/srv/rc");
        assert_eq!(l.run_argv(&vars, &[]), vec!["/srv/rc/bin/toy", "main.toy"]);
        assert_eq!(
            l.env(&vars),
            vec![("TOYHOME".to_owned(), "/srv/rc/home".to_owned())]
        );
    }

    #[test]
    fn compile_and_run_argv_expand_and_append_args() {
        let text = format!(
            "{MINIMAL}\n[compile]\ncommand = [\"/usr/bin/toyc\", \"-m{{memory_mb}}\", \"-o\", \"{{stem}}\", \"{{source}}\"]\nmemory_mb = 512\nmax_processes = 8\nwall_time = 30\ncpu_time = 10.5\n"
        )
        .replace(r#"command = ["/usr/bin/toy", "{source}"]"#, r#"command = ["./{stem}"]"#);
        let l = parse(&text).unwrap();
        assert!(l.is_compiled());
        let c = l.compile.as_ref().unwrap();
        assert_eq!(
            (c.memory_mb, c.max_processes, c.wall_time, c.cpu_time),
            (Some(512), Some(8), Some(30.0), Some(10.5))
        );
        let vars = Vars::new("prog.toy", 300, "/opt/runcell");
        assert_eq!(
            l.compile_argv(&vars).unwrap(),
            vec!["/usr/bin/toyc", "-m300", "-o", "prog", "prog.toy"]
        );
        let args = vec!["a b".to_owned(), "{source}".to_owned()];
        assert_eq!(
            l.run_argv(&vars, &args),
            vec!["./prog", "a b", "{source}"],
            "user args are not expanded"
        );
        assert_eq!(parse(MINIMAL).unwrap().compile_argv(&vars), None);
    }

    #[test]
    fn main_name_pattern_picks_the_file_name() {
        let text = format!("main_name_pattern = 'public class (\\w+)'\n{MINIMAL}")
            .replace(r#"source_file = "main.toy""#, r#"source_file = "Main.toy""#);
        let l = parse(&text).unwrap();
        assert_eq!(l.source_file_for("public class Foo {}"), "Foo.toy");
        assert_eq!(l.source_file_for("class Foo {}"), "Main.toy");
        assert_eq!(l.source_file_for(""), "Main.toy");
    }

    #[test]
    fn env_code_quotes_values_for_each_language() {
        let vars = vec![("A".to_string(), "it's \"x\" $HOME".to_string())];
        assert_eq!(
            EnvStyle::Bash.code(&vars),
            "export A='it'\\''s \"x\" $HOME'"
        );
        assert_eq!(
            EnvStyle::Python.code(&vars),
            r#"__import__('os').environ.update({"A":"it's \"x\" $HOME"})"#
        );
        assert!(
            EnvStyle::Deno
                .code(&vars)
                .contains(r#"{"A":"it's \"x\" $HOME"}"#)
        );
    }
}
