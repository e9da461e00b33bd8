use std::path::PathBuf;

/// Why a set of language definitions could not be loaded. Every variant names the file(s).
#[derive(Debug, thiserror::Error)]
pub enum LangError {
    /// The file is not valid TOML, or does not match the schema (unknown key, wrong type,
    /// missing field). `message` is the parser's, with line and column.
    #[error("{file}: {message}")]
    Toml { file: String, message: String },
    /// The file parsed but a value is not acceptable (empty command, relative path, bad regex…).
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    /// Two files claim the same id, alias or extension.
    #[error("{file}: {what} {name:?} is already defined by {other}")]
    Duplicate {
        what: &'static str,
        name: String,
        file: String,
        other: String,
    },
    /// A directory or file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
