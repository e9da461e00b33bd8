//! Language definitions for runcell.
//!
//! Each language is one TOML file (see `languages/` in this crate). The built-in files are
//! embedded into the binary at build time; more can be added at run time from a directory.
//! This crate knows nothing about jails or HTTP: it describes how to compile and run a
//! program, how to probe a toolchain's version, and how to install the toolchain.
//!
//! ```
//! use std::path::Path;
//! use runcell_lang::{Registry, Vars};
//!
//! let registry = Registry::builtin(Path::new("/opt/runcell")).unwrap();
//! let java = registry.resolve("Java").unwrap();
//! let code = "public class Hello { public static void main(String[] a) {} }";
//! let source = java.source_file_for(code);
//! assert_eq!(source, "Hello.java");
//! let vars = Vars::new(source, 256, "/opt/runcell");
//! let run = java.run_argv(&vars, &["x".to_string()]);
//! assert_eq!(&run[run.len() - 2..], ["Hello", "x"]);
//! ```
//!
//! # The TOML schema
//!
//! ```toml
//! id = "java"                       # required; lowercase; canonical id
//! name = "Java"                     # required; display name
//! aliases = ["jdk"]                 # other names for Registry::resolve
//! extensions = ["java"]             # without the dot, for Registry::by_extension
//! source_file = "Main.java"         # required; file name of the program in the workspace
//! main_name_pattern = 'public\s+class\s+(\w+)'   # optional; 1st capture = file stem
//! ro_paths = ["/etc/java-17-openjdk"]            # host paths the jail exposes read-only
//! requires = ["/usr/lib/jvm/java-17-openjdk-amd64/bin/java"]  # all must exist: available
//!
//! [compile]                         # optional: present for compiled languages
//! command = ["/usr/bin/javac", "-d", ".", "{source}"]   # required, non-empty
//! memory_mb = 512                   # optional minimum limits for this step
//! max_processes = 64
//! wall_time = 30                    # seconds
//! cpu_time = 30                     # seconds
//!
//! [run]                             # required
//! command = ["/usr/bin/java", "-XX:MaxRAM={memory_mb}m", "-cp", ".", "{stem}"]
//! max_processes = 128               # optional: this language's default process/thread limit
//!                                   # (runs that ask for none get max(this, server default),
//!                                   # capped at the server maximum; an explicit value wins)
//!
//! [env]                             # optional; added to BASE_ENV for compile and run
//! NAME = "value with {placeholders}"
//!
//! [version]                         # required; run on the host with BASE_ENV
//! command = ["/usr/bin/java", "-version"]
//! regex = 'version "([^"]+)"'       # 1st capture = version; stdout is tried, then stderr
//!
//! [install]                         # optional
//! debian = ["openjdk-17-jdk-headless"]
//! pip = []                          # into {prefix}/venv
//!
//! [example]                         # optional: hello world and its exact stdout
//! code = "..."
//! stdout = "hello, world\n"
//! ```
//!
//! Placeholders: `{source}`, `{stem}`, `{memory_mb}`, `{prefix}` in commands and env values;
//! only `{prefix}` in `ro_paths`, `requires` and `version.command` (expanded at load).
//! `{{` and `}}` are literal braces. Unknown keys and placeholders are errors.

mod error;
pub mod install;
mod language;
mod probe;
mod registry;
mod template;

pub use error::LangError;
pub use language::{
    BASE_ENV, CompileSpec, ContextSpec, EnvStyle, Example, InstallSpec, Language, PROBE_TIMEOUT,
    RunSpec, VersionProbe, WarmSpec,
};
pub use registry::{Registry, builtin_files};
pub use template::Vars;

/// Default runtime prefix (holds the pip venv, e.g. Deno for TypeScript).
pub const DEFAULT_PREFIX: &str = "/opt/runcell";

#[cfg(test)]
mod tests;
