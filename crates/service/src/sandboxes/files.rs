//! The files of a sandbox. Every path is resolved by `runcell_jail::SandboxFs` inside the
//! sandbox's own filesystem view, as the sandbox's user, on a blocking thread; paths travel in
//! their text form (`runcell_jail::encode_path`: as they are when UTF-8, otherwise
//! percent-encoded after the marker `/%/`).

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use runcell_jail::{FileMeta, FsError, SandboxFs};

use super::Live;
use crate::{Error, Kind, Result, Service};

/// Entries returned by one listing or search at most.
pub const MAX_LISTED: usize = 10_000;
/// Entries a search looks at, at most.
pub const MAX_SCANNED: usize = 200_000;
/// Largest file `replace` and line reads work on.
pub const MAX_EDIT: u64 = 64 << 20;

/// A file being uploaded: written chunk by chunk to a temporary file of the sandbox, renamed
/// into place by [`FileUpload::commit`] (dropped uncommitted, it leaves nothing behind).
pub struct FileUpload {
    inner: runcell_jail::Upload,
}

impl FileUpload {
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        Ok(self.inner.write(chunk)?)
    }

    /// Puts the file in place with `mode` (default 0644); returns its size.
    pub async fn commit(self, mode: Option<u32>) -> Result<u64> {
        let inner = self.inner;
        Ok(tokio::task::spawn_blocking(move || inner.commit(mode)).await??)
    }
}

/// Runs a filesystem operation of the sandbox on a blocking thread.
async fn with_fs<T: Send + 'static>(
    live: &Live,
    f: impl FnOnce(&SandboxFs) -> Result<T> + Send + 'static,
) -> Result<T> {
    let jail = Arc::clone(live.sandbox.jail());
    tokio::task::spawn_blocking(move || {
        let fs = jail.filesystem().map_err(|e| {
            Error::new(
                Kind::NotFound,
                "SANDBOX_NOT_FOUND",
                format!("the sandbox's filesystem is gone: {e}"),
            )
        })?;
        f(&fs)
    })
    .await?
}

impl Service {
    /// Information on files: all or nothing.
    pub async fn stat_files(
        &self,
        live: &Live,
        paths: Vec<String>,
    ) -> Result<Vec<(String, FileMeta)>> {
        with_fs(live, move |fs| {
            let mut out = Vec::with_capacity(paths.len());
            for p in paths {
                let m = fs.stat(&p)?;
                out.push((p, m));
            }
            Ok(out)
        })
        .await
    }

    /// Deletes files; a missing one is fine, a directory is refused.
    pub async fn delete_files(&self, live: &Live, paths: Vec<String>) -> Result<()> {
        with_fs(live, move |fs| {
            for p in paths {
                match fs.remove_file(&p) {
                    Ok(()) | Err(FsError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await
    }

    /// Creates directories (`mkdir -p`); the mode (default 0755) applies to the ones created.
    pub async fn make_directories(
        &self,
        live: &Live,
        dirs: Vec<(String, Option<u32>)>,
    ) -> Result<()> {
        with_fs(live, move |fs| {
            for (p, mode) in dirs {
                fs.mkdir_all(&p, mode.unwrap_or(0o755))?;
            }
            Ok(())
        })
        .await
    }

    /// Deletes directories with everything in them; a missing one is fine.
    pub async fn delete_directories(&self, live: &Live, paths: Vec<String>) -> Result<()> {
        with_fs(live, move |fs| {
            for p in paths {
                match fs.remove_all(&p) {
                    Ok(()) | Err(FsError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await
    }

    /// Lists a directory to a depth (symlinks shown, never followed); at most [`MAX_LISTED`]
    /// entries, with whether more were left out.
    pub async fn list_directory(
        &self,
        live: &Live,
        path: String,
        depth: u32,
    ) -> Result<(Vec<FileMeta>, bool)> {
        with_fs(live, move |fs| Ok(fs.list(&path, depth, MAX_LISTED)?)).await
    }

    /// Files whose name matches a glob, below a directory (see [`Service::list_directory`]).
    pub async fn search_files(
        &self,
        live: &Live,
        path: String,
        pattern: String,
    ) -> Result<(Vec<FileMeta>, bool)> {
        with_fs(live, move |fs| {
            Ok(fs.search(&path, &pattern, MAX_LISTED, MAX_SCANNED)?)
        })
        .await
    }

    /// Changes permission bits (a path without a mode must exist).
    pub async fn set_permissions(
        &self,
        live: &Live,
        items: Vec<(String, Option<u32>)>,
    ) -> Result<()> {
        with_fs(live, move |fs| {
            for (p, mode) in items {
                match mode {
                    Some(m) => fs.chmod(&p, m)?,
                    None => {
                        fs.stat(&p)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Moves files in order, stopping at the first failure; a destination must not exist, its
    /// parent is created.
    pub async fn move_files(&self, live: &Live, moves: Vec<(String, String)>) -> Result<()> {
        with_fs(live, move |fs| {
            for (src, dest) in moves {
                fs.stat(&src)?;
                fs.mkdir_parent(&dest, 0o755)?;
                fs.rename(&src, &dest)?;
            }
            Ok(())
        })
        .await
    }

    /// Replaces every occurrence of `old` by `new` in each file; the count per file.
    pub async fn replace_in_files(
        &self,
        live: &Live,
        edits: Vec<(String, String, String)>,
    ) -> Result<Vec<(String, usize)>> {
        if edits.iter().any(|(_, old, _)| old.is_empty()) {
            return Err(Error::invalid(
                "INVALID_REQUEST_BODY",
                "old content must not be empty",
            ));
        }
        with_fs(live, move |fs| {
            let mut counts = Vec::with_capacity(edits.len());
            for (path, old, new) in edits {
                let n = fs.replace(&path, &old, &new, MAX_EDIT)?;
                counts.push((path, n));
            }
            Ok(counts)
        })
        .await
    }

    /// The most one uploaded file may hold: the sandbox's disk budget, bytes.
    pub fn upload_limit(&self, live: &Live) -> u64 {
        live.sandbox.budget().disk_mb << 20
    }

    /// Starts uploading a file to `path` (capped by [`Service::upload_limit`]).
    pub async fn begin_upload(&self, live: &Live, path: String) -> Result<FileUpload> {
        let limit = self.upload_limit(live);
        let jail = Arc::clone(live.sandbox.jail());
        let inner = tokio::task::spawn_blocking(move || {
            jail.filesystem()
                .map_err(|e| FsError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
                .and_then(|fs| fs.upload(&path, limit))
        })
        .await??;
        Ok(FileUpload { inner })
    }

    /// Opens a regular file of the sandbox for reading.
    pub async fn open_file(&self, live: &Live, path: String) -> Result<(File, FileMeta)> {
        with_fs(live, move |fs| Ok(fs.open_read(&path)?)).await
    }
}

/// Lines `offset..offset+limit` (counted from 1) of an open file, of its first [`MAX_EDIT`]
/// bytes.
pub async fn read_lines(file: File, path: &str, offset: u64, limit: u64) -> Result<Vec<u8>> {
    let text = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        file.take(MAX_EDIT).read_to_end(&mut buf).map(|_| buf)
    })
    .await?
    .map_err(|e| {
        Error::from(FsError::Io {
            path: path.to_string(),
            source: e,
        })
    })?;
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    let from = (offset - 1).min(lines.len() as u64) as usize;
    let to = (from as u64 + limit).min(lines.len() as u64) as usize;
    Ok(lines[from..to].concat())
}
