//! Artifacts: files a run created or changed in the workspace. The workspace is listed before
//! and after each run (by descriptor, never following a link); files that are new or changed
//! are copied out to the host's artifact directory with their SHA-256, so that they stay
//! downloadable after the sandbox changes them again or is gone.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use runcell_jail::{EntryKind, Workspace};
use sha2::{Digest, Sha256};

/// Directories whose contents are caches or tooling, never results.
const IGNORED: &[&str] = &[
    "__pycache__",
    ".ipynb_checkpoints",
    "node_modules",
    ".git",
    ".cache",
];

/// Deepest directory level looked at.
const MAX_DEPTH: usize = 16;

/// What the workspace held at one moment: regular files by path.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    files: HashMap<String, FileState>,
    /// The listing stopped at its limit (changes beyond it are not seen).
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

fn ignored(path: &str) -> bool {
    path.split('/').any(|c| IGNORED.contains(&c))
}

/// Lists the workspace (at most `max_entries` entries).
pub fn snapshot(ws: &Workspace, max_entries: usize) -> Snapshot {
    match ws.walk(max_entries, MAX_DEPTH) {
        Ok(w) => Snapshot {
            truncated: w.truncated,
            files: w
                .entries
                .into_iter()
                .filter(|e| e.kind == EntryKind::File && !ignored(&e.path))
                .map(|e| {
                    (
                        e.path,
                        FileState {
                            size: e.size,
                            mtime_ns: e.mtime_ns,
                            inode: e.inode,
                        },
                    )
                })
                .collect(),
        },
        Err(e) => {
            tracing::warn!("listing the workspace failed: {e}");
            Snapshot {
                files: HashMap::new(),
                truncated: true,
            }
        }
    }
}

/// Paths of files that are new or changed in `after`, sorted.
pub fn changed(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = after
        .files
        .iter()
        .filter(|(p, st)| before.files.get(*p) != Some(st))
        .map(|(p, _)| p.clone())
        .collect();
    out.sort();
    out
}

/// A file copied out of the workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    pub id: String,
    pub name: String,
    pub mime_type: String,
    pub size: u64,
    pub sha256: String,
}

/// Limits of one run's capture.
#[derive(Debug, Clone, Copy)]
pub struct CaptureLimits {
    /// Files kept per run.
    pub max_count: usize,
    /// Largest file kept.
    pub max_file_bytes: u64,
    /// All files of one run together.
    pub max_total_bytes: u64,
}

/// The blob of an artifact in `dir`.
pub fn blob_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// MIME type from a file name.
pub fn mime_type(name: &str) -> String {
    mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// Copies the files at `paths` out of the workspace into `dir` (each as its new id), within
/// `limits`. A file that vanished, grew past the limit, or is not a plain single-link file is
/// skipped.
pub fn capture(
    ws: &Workspace,
    paths: &[String],
    dir: &Path,
    limits: CaptureLimits,
) -> Vec<Captured> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for name in paths {
        if out.len() >= limits.max_count {
            tracing::debug!("artifact limit reached; {name} and later files are not kept");
            break;
        }
        let id = crate::ids::artifact_id();
        let budget = limits
            .max_file_bytes
            .min(limits.max_total_bytes.saturating_sub(total));
        match copy_out(ws, name, &blob_path(dir, &id), budget) {
            Ok(Some((size, sha256))) => {
                total += size;
                out.push(Captured {
                    id,
                    name: name.clone(),
                    mime_type: mime_type(name),
                    size,
                    sha256,
                });
            }
            Ok(None) => tracing::debug!("{name} is larger than the artifact limit; not kept"),
            Err(e) => tracing::debug!("{name} was not kept as an artifact: {e}"),
        }
    }
    out
}

/// Copies one file; `None` if it is larger than `limit`.
fn copy_out(
    ws: &Workspace,
    name: &str,
    blob: &Path,
    limit: u64,
) -> std::io::Result<Option<(u64, String)>> {
    let (file, size) = ws.open_read(name).map_err(std::io::Error::other)?;
    if size > limit {
        return Ok(None);
    }
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(blob)?;
    let result = (|| {
        let mut src = file.take(limit + 1);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0u64;
        loop {
            let k = src.read(&mut buf)?;
            if k == 0 {
                break;
            }
            n += k as u64;
            if n > limit {
                return Ok(None);
            }
            hash.update(&buf[..k]);
            dst.write_all(&buf[..k])?;
        }
        dst.flush()?;
        let digest = hash.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Some((n, hex)))
    })();
    if !matches!(result, Ok(Some(_))) {
        let _ = std::fs::remove_file(blob);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(files: &[(&str, u64, i128)]) -> Snapshot {
        Snapshot {
            files: files
                .iter()
                .map(|(p, s, m)| {
                    (
                        p.to_string(),
                        FileState {
                            size: *s,
                            mtime_ns: *m,
                            inode: 1,
                        },
                    )
                })
                .collect(),
            truncated: false,
        }
    }

    #[test]
    fn new_and_changed_files_are_found() {
        let before = snap(&[("a.txt", 1, 10), ("b.txt", 2, 10), ("c.txt", 3, 10)]);
        let after = snap(&[
            ("a.txt", 1, 10),
            ("b.txt", 2, 11),
            ("c.txt", 4, 10),
            ("d/e.png", 5, 10),
        ]);
        assert_eq!(changed(&before, &after), vec!["b.txt", "c.txt", "d/e.png"]);
        assert!(changed(&after, &after).is_empty());
    }

    #[test]
    fn caches_are_ignored_and_types_guessed() {
        assert!(ignored("pkg/__pycache__/x.pyc"));
        assert!(ignored("node_modules/a/index.js"));
        assert!(!ignored("plots/figure.png"));
        assert_eq!(mime_type("plots/figure.png"), "image/png");
        assert_eq!(mime_type("data.csv"), "text/csv");
        assert_eq!(mime_type("noext"), "application/octet-stream");
    }
}
