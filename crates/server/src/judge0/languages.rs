//! Judge0 CE 1.13.1's language ids of the languages runcell has, and its statuses. Judge0
//! lists several versions of C and C++ under their own ids (its Python SDK maps `CPP` to 52,
//! GCC 7.4.0): each of them is runcell's C or C++, and a submission shows back the id it was
//! made with.

/// (Judge0 CE 1.13.1 id, runcell language id); a language's first id is its own.
pub const LANGUAGES: &[(u32, &str)] = &[
    (46, "bash"),
    (50, "c"),
    (48, "c"),
    (49, "c"),
    (75, "c"),
    (54, "cpp"),
    (52, "cpp"),
    (53, "cpp"),
    (76, "cpp"),
    (60, "go"),
    (62, "java"),
    (63, "javascript"),
    (68, "php"),
    (71, "python"),
    (72, "ruby"),
    (73, "rust"),
    (74, "typescript"),
];

/// The runcell language of a Judge0 language id.
pub fn language_of(id: u32) -> Option<&'static str> {
    LANGUAGES.iter().find(|(j, _)| *j == id).map(|(_, l)| *l)
}

/// The Judge0 language id of a runcell language (its first).
pub fn id_of(language: &str) -> Option<u32> {
    LANGUAGES
        .iter()
        .find(|(_, l)| *l == language)
        .map(|(j, _)| *j)
}

/// Judge0's statuses, with its wording.
pub const STATUSES: &[(u32, &str)] = &[
    (1, "In Queue"),
    (2, "Processing"),
    (3, "Accepted"),
    (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"),
    (6, "Compilation Error"),
    (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"),
    (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"),
    (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"),
    (13, "Internal Error"),
    (14, "Exec Format Error"),
];

/// A status as Judge0 shows it: `{id, description}`.
pub fn status(id: u32) -> serde_json::Value {
    let description = STATUSES
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, d)| *d)
        .unwrap_or("Internal Error");
    serde_json::json!({"id": id, "description": description})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_languages_and_back_to_their_first() {
        for (id, lang) in LANGUAGES {
            assert_eq!(language_of(*id), Some(*lang));
            assert_eq!(language_of(id_of(lang).unwrap()), Some(*lang));
        }
        assert_eq!(id_of("cpp"), Some(54));
        assert_eq!(language_of(52), Some("cpp"), "the SDK's CPP");
        assert_eq!(language_of(71), Some("python"));
        assert_eq!(language_of(999), None);
        assert_eq!(id_of("cobol"), None);
        assert_eq!(STATUSES.len(), 14);
        assert_eq!(
            status(11),
            serde_json::json!({"id": 11, "description": "Runtime Error (NZEC)"})
        );
    }
}
