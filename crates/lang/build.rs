//! Embeds every `languages/*.toml` file into the library.
//!
//! Generates `$OUT_DIR/builtin_languages.rs` holding
//! `static BUILTIN: &[(&str, &str)] = &[("python.toml", include_str!("…/python.toml")), …];`
//! sorted by file name, so adding a language is adding a TOML file: no Rust change.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::{env, fs};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dir = manifest.join("languages");
    // The directory's own mtime changes when a file is added, removed or renamed; each file is
    // watched too so that an edit re-embeds it.
    println!("cargo:rerun-if-changed={}", dir.display());

    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();

    let mut out = String::from("static BUILTIN: &[(&str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let abs = path
            .to_str()
            .unwrap_or_else(|| panic!("non-UTF-8 path {}", path.display()));
        writeln!(out, "    ({name:?}, include_str!({abs:?})),").expect("write to String");
    }
    out.push_str("];\n");

    let dest = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("builtin_languages.rs");
    fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
