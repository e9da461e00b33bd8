//! Host-side access to a jail's workspace.
//!
//! The workspace is a tmpfs mounted inside the jail; the host holds an `O_PATH` descriptor of
//! its root and never a path. Every operation:
//! * resolves with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//!   RESOLVE_NO_XDEV)` from that descriptor, so `..`, absolute paths, symlinks planted by the
//!   program and mount points cannot lead outside the workspace;
//! * runs with the thread's filesystem uid and gid switched to the jail program's host ids,
//!   so it can do exactly what the sandboxed program could, no more (and files it creates
//!   belong to the program);
//! * refuses anything but regular files and directories (FIFOs, sockets, devices) without
//!   blocking, and files with more than one link.
//!
//! Removal needs no walk at all: the tmpfs disappears with the jail.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::sys::{self, OpenHow};

/// Errors of workspace operations.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error("{path}: has other hard links; refusing to touch it")]
    HardLinked { path: String },
    #[error("{path}: larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl WorkspaceError {
    /// The OS error behind this error, if any (`ELOOP` for a planted symlink, `EXDEV` for an
    /// escape attempt, `ENOENT`, …).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            WorkspaceError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

const RESOLVE: u64 = sys::RESOLVE_BENEATH
    | sys::RESOLVE_NO_SYMLINKS
    | sys::RESOLVE_NO_MAGICLINKS
    | sys::RESOLVE_NO_XDEV;

/// Switches the calling thread's filesystem ids (and, with [`FsIds::sandbox_user`], its
/// supplementary groups) for its lifetime.
///
/// Going from fsuid 0 to another fsuid makes the kernel clear the file-system capabilities
/// (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`, `CAP_FSETID`, `CAP_CHOWN`, …)
/// from the thread's effective set, so permission checks are those of the given user; they
/// come back when the fsuid returns to 0.
pub(crate) struct FsIds {
    uid: u32,
    gid: u32,
    /// Supplementary groups to restore, when they were dropped.
    groups: Option<Vec<libc::gid_t>>,
}

impl FsIds {
    fn become_(uid: u32, gid: u32) -> FsIds {
        let old_gid = sys::setfsgid(gid);
        let old_uid = sys::setfsuid(uid);
        FsIds {
            uid: old_uid,
            gid: old_gid,
            groups: None,
        }
    }

    /// Acts as exactly `uid`:`gid` with no supplementary groups (dropped with a per-thread
    /// `setgroups`, not glibc's process-wide one), and checks that the switch took effect.
    pub(crate) fn sandbox_user(uid: u32, gid: u32) -> io::Result<FsIds> {
        let groups = sys::thread_groups()?;
        let dropped = if groups.is_empty() {
            None
        } else {
            sys::set_thread_groups(&[])?;
            Some(groups)
        };
        let mut ids = FsIds::become_(uid, gid);
        ids.groups = dropped;
        // An invalid id (-1) changes nothing and returns the current one.
        let (now_uid, now_gid) = (sys::setfsuid(u32::MAX), sys::setfsgid(u32::MAX));
        if now_uid != uid || now_gid != gid {
            // Dropping `ids` restores what was there.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "cannot switch to the sandbox's user (setfsuid/setfsgid refused)",
            ));
        }
        Ok(ids)
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        sys::setfsuid(self.uid);
        sys::setfsgid(self.gid);
        if let Some(groups) = self.groups.take() {
            // Cannot fail for a thread that could drop them; if it did, the thread is left
            // with fewer groups, never more.
            let _ = sys::set_thread_groups(&groups);
        }
    }
}

/// The workspace of one jail.
#[derive(Debug)]
pub struct Workspace {
    root: OwnedFd,
    uid: u32,
    gid: u32,
}

/// Splits a relative workspace path into checked components.
fn components(path: &str) -> Result<Vec<CString>, WorkspaceError> {
    let bad = |reason| WorkspaceError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(bad("must be relative to the workspace"));
    }
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" => continue,
            "." | ".." => return Err(bad("'.' and '..' are not allowed")),
            p => out.push(CString::new(p).map_err(|_| bad("contains a NUL byte"))?),
        }
    }
    if out.is_empty() {
        return Err(bad("names no file"));
    }
    Ok(out)
}

impl Workspace {
    pub(crate) fn new(root: OwnedFd, uid: u32, gid: u32) -> Workspace {
        Workspace { root, uid, gid }
    }

    fn io(path: &str) -> impl FnOnce(io::Error) -> WorkspaceError + '_ {
        move |source| WorkspaceError::Io {
            path: path.to_string(),
            source,
        }
    }

    /// Opens (creating when `create`) each directory of `parts`, beneath the root.
    fn walk_dirs(
        &self,
        path: &str,
        parts: &[CString],
        create: bool,
    ) -> Result<OwnedFd, WorkspaceError> {
        let how = OpenHow {
            flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: RESOLVE,
        };
        let mut dir = self.root.try_clone().map_err(Self::io(path))?;
        for part in parts {
            let next = match sys::openat2(dir.as_fd(), part, &how) {
                Ok(fd) => fd,
                Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                    // SAFETY: mkdirat relative to a directory descriptor we hold, with a
                    // single NUL-terminated component (no slashes).
                    if unsafe { libc::mkdirat(dir.as_raw_fd(), part.as_ptr(), 0o755) } < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(Self::io(path)(e));
                        }
                    }
                    sys::openat2(dir.as_fd(), part, &how).map_err(Self::io(path))?
                }
                Err(e) => return Err(Self::io(path)(e)),
            };
            dir = next;
        }
        Ok(dir)
    }

    /// Writes a file (creating parent directories), replacing an existing file or symlink of
    /// that name without following it.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), WorkspaceError> {
        let fd = self.create(path, mode)?;
        let mut f = File::from(fd);
        f.write_all(data).map_err(Self::io(path))
    }

    /// Creates a file (creating parent directories, replacing an existing file or symlink of
    /// that name without following it) and returns it open for writing.
    pub fn create(&self, path: &str, mode: u32) -> Result<OwnedFd, WorkspaceError> {
        let parts = components(path)?;
        let (name, dirs) = parts.split_last().expect("components() is never empty");
        let _ids = FsIds::become_(self.uid, self.gid);
        let dir = self.walk_dirs(path, dirs, true)?;
        // Remove whatever has this name (a symlink is removed, never followed); a directory
        // of that name makes the create fail below.
        // SAFETY: unlinkat relative to a directory descriptor, single component.
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        let how = OpenHow {
            flags: (libc::O_WRONLY
                | libc::O_CREAT
                | libc::O_EXCL
                | libc::O_NOFOLLOW
                | libc::O_CLOEXEC) as u64,
            mode: (mode & 0o777) as u64,
            resolve: RESOLVE,
        };
        let fd = sys::openat2(dir.as_fd(), name, &how).map_err(Self::io(path))?;
        // The umask may have narrowed the mode.
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o777) } < 0 {
            return Err(Self::io(path)(io::Error::last_os_error()));
        }
        Ok(fd)
    }

    /// Opens a regular file for reading, by descriptor and without following any link; a
    /// file with several hard links is refused (it could be a link to something else the
    /// sandbox's user can write). Returns the file and its size at opening.
    pub fn open_read(&self, path: &str) -> Result<(File, u64), WorkspaceError> {
        let parts = components(path)?;
        let (name, dirs) = parts.split_last().expect("components() is never empty");
        let _ids = FsIds::become_(self.uid, self.gid);
        let dir = self.walk_dirs(path, dirs, false)?;
        let how = OpenHow {
            flags: (libc::O_RDONLY
                | libc::O_NOFOLLOW
                | libc::O_NONBLOCK
                | libc::O_NOCTTY
                | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: RESOLVE,
        };
        let fd = sys::openat2(dir.as_fd(), name, &how).map_err(Self::io(path))?;
        let st = fstat(fd.as_fd()).map_err(Self::io(path))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(WorkspaceError::NotRegular {
                path: path.to_string(),
            });
        }
        if st.st_nlink != 1 {
            return Err(WorkspaceError::HardLinked {
                path: path.to_string(),
            });
        }
        Ok((File::from(fd), st.st_size as u64))
    }

    /// Reads a regular file of at most `limit` bytes.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>, WorkspaceError> {
        let (file, size) = self.open_read(path)?;
        if size > limit {
            return Err(WorkspaceError::TooLarge {
                path: path.to_string(),
                limit,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        file.take(limit + 1)
            .read_to_end(&mut out)
            .map_err(Self::io(path))?;
        if out.len() as u64 > limit {
            return Err(WorkspaceError::TooLarge {
                path: path.to_string(),
                limit,
            });
        }
        Ok(out)
    }

    /// The workspace root descriptor (`O_PATH`).
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Every entry below the root, breadth first, without following any link or crossing a
    /// mount: at most `max_entries` entries and `max_depth` directory levels (`truncated`
    /// says whether anything was left out: entries beyond those, or names that are not UTF-8).
    pub fn walk(&self, max_entries: usize, max_depth: usize) -> Result<Walk, WorkspaceError> {
        let _ids = FsIds::become_(self.uid, self.gid);
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: RESOLVE,
        };
        let root = sys::openat2(self.root.as_fd(), c".", &how).map_err(Self::io("."))?;
        let mut out = Walk {
            entries: Vec::new(),
            truncated: false,
        };
        let mut queue: std::collections::VecDeque<(OwnedFd, String, usize)> =
            std::collections::VecDeque::new();
        queue.push_back((root, String::new(), 0));
        while let Some((dir_fd, prefix, depth)) = queue.pop_front() {
            let raw = dir_fd.as_raw_fd();
            let dir = nix::dir::Dir::from_fd(dir_fd)
                .map_err(|e| Self::io(&prefix)(io::Error::from(e)))?;
            let dir_raw = BorrowedFdCopy(raw);
            for item in dir {
                let Ok(item) = item else { continue };
                let name = item.file_name();
                let name_bytes = name.to_bytes();
                if name_bytes == b"." || name_bytes == b".." {
                    continue;
                }
                if out.entries.len() >= max_entries {
                    out.truncated = true;
                    return Ok(out);
                }
                // A name that is not UTF-8 cannot be given as a path here: it is left out,
                // and the walk says something was.
                let Ok(name_str) = std::str::from_utf8(name_bytes) else {
                    out.truncated = true;
                    continue;
                };
                let path = if prefix.is_empty() {
                    name_str.to_string()
                } else {
                    format!("{prefix}/{name_str}")
                };
                // SAFETY: stat is plain old data; fstatat fills it.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: fstatat relative to an open directory, not following links.
                if unsafe {
                    libc::fstatat(dir_raw.0, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
                } < 0
                {
                    continue;
                }
                let kind = match st.st_mode & libc::S_IFMT {
                    libc::S_IFREG => EntryKind::File,
                    libc::S_IFDIR => EntryKind::Dir,
                    libc::S_IFLNK => EntryKind::Symlink,
                    _ => EntryKind::Other,
                };
                if kind == EntryKind::Dir {
                    if depth + 1 < max_depth {
                        let sub = sys::openat2(
                            // SAFETY: the directory stays open while we iterate over it.
                            unsafe { BorrowedFd::borrow_raw(dir_raw.0) },
                            name,
                            &how,
                        );
                        if let Ok(sub) = sub {
                            queue.push_back((sub, path.clone(), depth + 1));
                        }
                    } else {
                        out.truncated = true;
                    }
                }
                out.entries.push(Entry {
                    path,
                    kind,
                    size: st.st_size as u64,
                    mode: st.st_mode & 0o7777,
                    mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
                    inode: st.st_ino,
                    links: st.st_nlink as u64,
                    uid: st.st_uid,
                });
            }
        }
        Ok(out)
    }
}

/// A raw descriptor number kept next to the `Dir` that owns it.
#[derive(Clone, Copy)]
struct BorrowedFdCopy(std::os::fd::RawFd);

/// What [`Workspace::walk`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    pub entries: Vec<Entry>,
    pub truncated: bool,
}

/// The kind of a workspace entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// FIFOs, sockets, devices.
    Other,
}

/// One entry of a workspace walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the workspace root.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub mtime_ns: i128,
    pub inode: u64,
    pub links: u64,
    /// Owner as the host sees it.
    pub uid: u32,
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    sys::fstat(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_reject_escapes() {
        assert!(components("a/b.txt").is_ok());
        assert_eq!(components("a//b").unwrap().len(), 2);
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a\0b", "/"] {
            assert!(components(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        std::fs::write(&canary, b"host").unwrap();
        let ws_dir = dir.path().join("ws");
        std::fs::create_dir(&ws_dir).unwrap();
        std::os::unix::fs::symlink(&canary, ws_dir.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), ws_dir.join("dirlink")).unwrap();
        let root: OwnedFd = File::open(&ws_dir).unwrap().into();
        // SAFETY: geteuid has no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let ws = Workspace::new(root, uid, gid);
        assert_eq!(
            ws.read_file("link", 100).unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        let e = ws.read_file("dirlink/canary", 100).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{e}"
        );
        assert!(ws.write_file("dirlink/canary", b"pwned", 0o644).is_err());
        // Writing over the link replaces the link, never the target.
        ws.write_file("link", b"mine", 0o644).unwrap();
        assert_eq!(std::fs::read(&canary).unwrap(), b"host");
        assert_eq!(ws.read_file("link", 100).unwrap(), b"mine");
        ws.write_file("sub/dir/f", b"x", 0o600).unwrap();
        assert_eq!(ws.read_file("sub/dir/f", 1).unwrap(), b"x");
        assert!(matches!(
            ws.read_file("sub/dir/f", 0),
            Err(WorkspaceError::TooLarge { .. })
        ));
    }

    #[test]
    fn walks_list_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::write(dir.path().join("a/f.txt"), b"12345").unwrap();
        std::fs::write(dir.path().join("a/b/c/deep"), b"").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        let root: OwnedFd = File::open(dir.path()).unwrap().into();
        // SAFETY: geteuid has no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let ws = Workspace::new(root, uid, gid);
        let w = ws.walk(100, 10).unwrap();
        let mut paths: Vec<_> = w.entries.iter().map(|e| e.path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["a", "a/b", "a/b/c", "a/b/c/deep", "a/f.txt", "etc"]);
        assert!(!w.truncated);
        let f = w.entries.iter().find(|e| e.path == "a/f.txt").unwrap();
        assert_eq!((f.kind, f.size), (EntryKind::File, 5));
        let l = w.entries.iter().find(|e| e.path == "etc").unwrap();
        assert_eq!(l.kind, EntryKind::Symlink);
        let w = ws.walk(3, 10).unwrap();
        assert_eq!(w.entries.len(), 3);
        assert!(w.truncated);
        let w = ws.walk(100, 2).unwrap();
        assert!(w.entries.iter().all(|e| e.path.matches('/').count() < 2));
        assert!(w.truncated);
        // A name that is not UTF-8 is left out, and the walk says so.
        use std::os::unix::ffi::OsStrExt;
        std::fs::write(
            dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
            b"x",
        )
        .unwrap();
        let w = ws.walk(100, 10).unwrap();
        assert_eq!(w.entries.len(), 6);
        assert!(w.truncated);
    }

    #[test]
    fn fifos_and_hard_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = CString::new(dir.path().join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let root: OwnedFd = File::open(dir.path()).unwrap().into();
        // SAFETY: geteuid has no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let ws = Workspace::new(root, uid, gid);
        assert!(matches!(
            ws.read_file("fifo", 10),
            Err(WorkspaceError::NotRegular { .. })
        ));
        assert!(matches!(
            ws.read_file("a", 10),
            Err(WorkspaceError::HardLinked { .. })
        ));
    }
}
