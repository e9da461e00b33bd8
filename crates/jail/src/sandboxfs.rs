//! Host-side access to a sandbox's whole filesystem view: exactly what a program in the jail
//! sees, with exactly the rights the program has.
//!
//! A [`SandboxFs`] holds an `O_PATH` descriptor of the jail's root directory in the jail's
//! own mount namespace (`/proc/<agent>/root`, see [`crate::Jail::filesystem`]) and never a
//! host path. Every operation:
//!
//! * resolves its path with `openat2(root, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`:
//!   the kernel treats the jail's root as `/` for absolute paths, absolute symlinks and `..`,
//!   so nothing a program plants (or swaps in during a request) can lead outside the view, and
//!   `/proc/<pid>/root`, `/proc/self/cwd` and other "magic" links are never followed;
//! * runs with the calling thread's fsuid/fsgid switched to the sandbox program's host ids
//!   and without supplementary groups, so the kernel checks permissions as for the program
//!   (and files it creates belong to the program);
//! * refuses anything on procfs, sysfs, devpts, cgroupfs and similar kernel file systems
//!   ([`FsError::Forbidden`]): the calling thread keeps `CAP_SYS_PTRACE`, so `/proc` must be
//!   off limits entirely;
//! * acts on a final path component only through the descriptor of its parent directory, with
//!   `*at` calls that never follow that component (`unlinkat`, `renameat2`, `mkdirat`,
//!   `openat2(O_NOFOLLOW)`), or through a descriptor of the very inode that was resolved
//!   (`/proc/self/fd/N` of our own descriptor, for `chmod` and for reopening to read or
//!   write). No call ever resolves a name against the host's root;
//! * opens FIFOs, sockets and devices only with `O_PATH` (no side effect, never blocks) and
//!   refuses to read or write them ([`FsError::NotRegular`]);
//! * walks trees (list, search, remove) by descriptors, never following symlinks, with caps
//!   on the entries scanned and returned, and says when a result was truncated.
//!
//! Relative paths are relative to [`crate::WORKSPACE`]. Paths are normalized lexically first
//! (`.`, `..` and repeated slashes are removed, `..` at `/` stays at `/`), the way HTTP
//! clients and `filepath.Clean` do; `..` inside symlink targets is left to the kernel.
//! Backslashes are ordinary characters in names.
//!
//! Names are bytes: a file may have a name that is not UTF-8. Internally paths are bytes; at
//! the API, paths travel in their text form ([`pathtext`]): as they are when they are UTF-8,
//! otherwise percent-encoded after the marker `/%/` (`/%/workspace/caf%E9.txt`). Every path
//! this module returns ([`FileMeta::path`], error messages, [`Upload::path`]) is in that
//! form, and every path argument is read in it, so each name a listing gives reaches exactly
//! that file again.
//!
//! Hard links: a program can hard-link only files of a file system it can write, and every
//! writable file system in a jail is a tmpfs of the jail's own; host files are on other file
//! systems (read-only binds at best), so a hard link never reaches a host file. Hard-linked
//! files are therefore served like any other file.
//!
//! A `SandboxFs` is meant to be short-lived (one request): it keeps the jail's root file
//! system alive while it exists. Once the jail is destroyed its mounts are detached, so the
//! handle only sees an empty, read-only root.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

mod pathtext;

pub use pathtext::{ENCODED_PATH_PREFIX, decode_path, encode_path, is_encoded_path};

use crate::config::{JAIL_GID, JAIL_UID, WORKSPACE};
use crate::sys::{self, OpenHow};
use crate::workspace::FsIds;

/// Longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest name (path component) accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Most entries [`SandboxFs::remove_all`] removes in one call.
pub const REMOVE_ALL_MAX_ENTRIES: u64 = 1_000_000;
/// Most directory names [`SandboxFs::list`] reads in one call (beyond it the listing is
/// truncated).
pub const LIST_MAX_SCANNED: usize = 1_000_000;
/// Deepest directory nesting walks descend into (one open descriptor per level). Listings
/// and searches deeper than this are truncated; [`SandboxFs::remove_all`] refuses.
pub const MAX_WALK_DEPTH: usize = 256;
/// Uid and gid that ids unknown in the jail show as (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

/// Errors of sandbox filesystem operations. `path` is the normalized absolute path in the
/// sandbox's view.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Nothing has this name (or a directory on the way is missing).
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    /// A component on the way is not a directory, or a directory was required.
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    /// A directory where a non-directory was required.
    #[error("{path}: is a directory")]
    IsADirectory { path: String },
    /// The name exists already.
    #[error("{path}: already exists")]
    AlreadyExists { path: String },
    /// A FIFO, socket or device (or a directory where a file is read): never opened.
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    /// The final component is a symbolic link and the operation does not follow links.
    #[error("{path}: is a symbolic link")]
    IsSymlink { path: String },
    /// The sandbox's user may not do this, or the path is somewhere the files API never goes
    /// (`/proc`, `/sys`, a magic link, a mount point being removed).
    #[error("{path}: forbidden: {reason}")]
    Forbidden { path: String, reason: &'static str },
    /// On a read-only mount (the jail's root, `/usr`, `/dev`, …).
    #[error("{path}: read-only file system")]
    ReadOnly { path: String },
    /// Source and destination are on different mounts.
    #[error("cannot move {src} to {dst}: different file systems")]
    CrossDevice { src: String, dst: String },
    /// The file system (a tmpfs of the jail) is full.
    #[error("{path}: no space left")]
    NoSpace { path: String },
    /// The file is larger than the caller's limit (bytes).
    #[error("{path}: larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    /// A tree has more of something than an operation handles (entries, nesting).
    #[error("{path}: more than {limit} {what}")]
    TooMany {
        path: String,
        what: &'static str,
        limit: u64,
    },
    /// The path is malformed (empty, NUL byte, too long, names the root where a name is
    /// needed).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A malformed glob pattern.
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        pattern: String,
        reason: &'static str,
    },
    /// Another malformed argument (a mode with bits beyond `0o7777`, an empty search string,
    /// moving a directory into itself).
    #[error("{path}: {reason}")]
    InvalidArgument { path: String, reason: &'static str },
    /// The directory is not empty.
    #[error("{path}: directory not empty")]
    NotEmpty { path: String },
    /// Any other failure.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// Maps an OS error of an operation on `path`.
    fn from_io(path: &str, e: io::Error) -> FsError {
        let path = path.to_string();
        match e.raw_os_error() {
            Some(libc::ENOENT) => FsError::NotFound { path },
            Some(libc::ENOTDIR) => FsError::NotADirectory { path },
            Some(libc::EISDIR) => FsError::IsADirectory { path },
            Some(libc::EEXIST) => FsError::AlreadyExists { path },
            Some(libc::EACCES) | Some(libc::EPERM) => FsError::Forbidden {
                path,
                reason: "permission denied",
            },
            Some(libc::EROFS) => FsError::ReadOnly { path },
            // From openat2: a magic link, or `..` / a mount crossing that was refused.
            Some(libc::EXDEV) => FsError::Forbidden {
                path,
                reason: "leads outside the sandbox's view",
            },
            Some(libc::ELOOP) => FsError::Forbidden {
                path,
                reason: "too many levels of symbolic links, or a /proc magic link",
            },
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace { path },
            Some(libc::ENOTEMPTY) => FsError::NotEmpty { path },
            Some(libc::ENAMETOOLONG) => FsError::InvalidPath {
                path,
                reason: "a name or the path is too long",
            },
            Some(libc::EBUSY) => FsError::Forbidden {
                path,
                reason: "busy (a mount point)",
            },
            Some(libc::EAGAIN) => FsError::Forbidden {
                path,
                reason: "the file is leased or the path kept changing",
            },
            _ => FsError::Io { path, source: e },
        }
    }

    /// Like [`FsError::from_io`], but `ELOOP` means the final component (opened without
    /// following) is a symlink.
    fn from_io_nofollow(path: &str, e: io::Error) -> FsError {
        if e.raw_os_error() == Some(libc::ELOOP) {
            FsError::IsSymlink {
                path: path.to_string(),
            }
        } else {
            FsError::from_io(path, e)
        }
    }

    fn invalid(path: &str, reason: &'static str) -> FsError {
        FsError::InvalidPath {
            path: path.to_string(),
            reason,
        }
    }
}

/// The kind of a file, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    File,
    Dir,
    Symlink,
    /// FIFOs, sockets, devices.
    Other,
}

impl FsKind {
    fn of(mode: libc::mode_t) -> FsKind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FsKind::File,
            libc::S_IFDIR => FsKind::Dir,
            libc::S_IFLNK => FsKind::Symlink,
            _ => FsKind::Other,
        }
    }
}

/// Metadata of one file, as the sandbox sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Absolute, normalized path in the sandbox's view (no `.`, `..` or `//`), in its text
    /// form ([`encode_path`]): percent-encoded after [`ENCODED_PATH_PREFIX`] if it is not
    /// UTF-8. Every method accepts it back as naming exactly this file.
    pub path: String,
    pub kind: FsKind,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Permission bits only (`0o7777`).
    pub mode: u32,
    /// Owner as the sandbox sees it: [`JAIL_UID`] for the program's user, 0 for the jail's
    /// root (its agent), [`OVERFLOW_ID`] for anything else (host files).
    pub uid: u32,
    /// Group as the sandbox sees it, mapped like `uid` ([`JAIL_GID`], 0, [`OVERFLOW_ID`]).
    pub gid: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i128,
    /// Status change time, ns since the Unix epoch.
    pub ctime_ns: i128,
}

/// A sandbox's filesystem view (see the module documentation). Cheap to share between
/// threads; every operation is independent.
#[derive(Debug)]
pub struct SandboxFs {
    /// `O_PATH` descriptor of the jail's root, in the jail's mount namespace.
    root: OwnedFd,
    /// Host uid of the sandbox's program user.
    uid: u32,
    /// Host gid of the sandbox's program user.
    gid: u32,
    /// Host uid (and gid) of the jail's root user (its agent).
    agent: u32,
}

// ---------------------------------------------------------------------------------------------
// Paths

/// A checked, normalized absolute path in the sandbox's view: starts with `/`, has no `.`,
/// `..`, empty components or trailing slash (except the root, `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VPath {
    /// The path's bytes (any bytes but NUL).
    raw: Vec<u8>,
    /// Its text form ([`encode_path`]): what answers and error messages show.
    abs: String,
}

/// Normalizes an API path: relative paths are relative to the workspace; `.`, `..` and
/// repeated slashes are removed lexically (`..` at the root stays at the root).
fn normalize(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.is_empty() {
        return Err("empty path");
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err("longer than 4096 bytes");
    }
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    if !raw.starts_with(b"/") {
        parts.extend(
            WORKSPACE
                .as_bytes()
                .split(|b| *b == b'/')
                .filter(|p| !p.is_empty()),
        );
    }
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p if p.len() > MAX_NAME_BYTES => return Err("a name is longer than 255 bytes"),
            p => parts.push(p),
        }
    }
    let mut abs = Vec::with_capacity(raw.len() + WORKSPACE.len() + 1);
    for p in &parts {
        abs.push(b'/');
        abs.extend_from_slice(p);
    }
    if abs.is_empty() {
        abs.push(b'/');
    }
    if abs.len() > MAX_PATH_BYTES {
        return Err("longer than 4096 bytes");
    }
    Ok(abs)
}

/// The text form of a path's bytes, owned (for messages).
fn shown(raw: &[u8]) -> String {
    encode_path(raw).into_owned()
}

impl VPath {
    /// Parses a path in text form: decoded if it is [encoded](pathtext), then normalized.
    fn parse(text: &str) -> Result<VPath, FsError> {
        // Encoding at most triples the length: no need to decode anything longer.
        if text.len() > 3 * MAX_PATH_BYTES + ENCODED_PATH_PREFIX.len() {
            return Err(FsError::invalid(text, "longer than 4096 bytes"));
        }
        let bytes = decode_path(text).map_err(|reason| FsError::invalid(text, reason))?;
        let raw = normalize(&bytes).map_err(|reason| FsError::invalid(text, reason))?;
        Ok(VPath::of(raw))
    }

    /// A path from bytes that are already normalized.
    fn of(raw: Vec<u8>) -> VPath {
        VPath {
            abs: shown(&raw),
            raw,
        }
    }

    fn is_root(&self) -> bool {
        self.raw == b"/"
    }

    /// The parent directory and the final name; `None` for the root.
    fn split(&self) -> Option<(&[u8], &[u8])> {
        if self.is_root() {
            return None;
        }
        let i = self.raw.iter().rposition(|b| *b == b'/')?;
        let parent = if i == 0 { &b"/"[..] } else { &self.raw[..i] };
        Some((parent, &self.raw[i + 1..]))
    }

    fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.raw.split(|b| *b == b'/').filter(|p| !p.is_empty())
    }
}

fn cstring(path: &str, s: &[u8]) -> Result<CString, FsError> {
    CString::new(s).map_err(|_| FsError::invalid(path, "contains a NUL byte"))
}

/// `dir/name` for walk results.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dir.len() + name.len() + 1);
    out.extend_from_slice(dir);
    if dir != b"/" {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

// ---------------------------------------------------------------------------------------------
// Glob patterns

/// One element of a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`
    One,
    /// `*` (and `**`)
    Star,
    /// `[…]`: ranges (a single character is a range of one), negated with `[!…]` or `[^…]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled glob pattern for base names: `*` (any run of characters, `**` is the same),
/// `?` (one character), `[abc]`, `[a-z]`, `[!a]` / `[^a]` (a `]` right after `[` or `[!` is
/// literal), and `\x` for a literal `x`. Dot files are matched like any other name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(Vec<Tok>);

impl Glob {
    fn parse(pattern: &str) -> Result<Glob, &'static str> {
        let mut toks = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                '?' => toks.push(Tok::One),
                '\\' => match chars.next() {
                    Some(e) => toks.push(Tok::Lit(e)),
                    None => return Err("ends with an unescaped backslash"),
                },
                '[' => {
                    let negated = matches!(chars.peek(), Some('!') | Some('^'));
                    if negated {
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(mut lo) = chars.next() else {
                            return Err("unclosed '['");
                        };
                        if lo == ']' && !first {
                            break;
                        }
                        first = false;
                        if lo == '\\' {
                            lo = chars.next().ok_or("unclosed '['")?;
                        }
                        let mut hi = lo;
                        if chars.peek() == Some(&'-') {
                            let mut ahead = chars.clone();
                            ahead.next();
                            match ahead.peek() {
                                // `[a-]`: the dash is literal.
                                Some(']') | None => {}
                                Some(_) => {
                                    chars.next();
                                    hi = chars.next().ok_or("unclosed '['")?;
                                    if hi == '\\' {
                                        hi = chars.next().ok_or("unclosed '['")?;
                                    }
                                    if hi < lo {
                                        return Err("a range in '[…]' is reversed");
                                    }
                                }
                            }
                        }
                        ranges.push((lo, hi));
                    }
                    toks.push(Tok::Class { negated, ranges });
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Glob(toks))
    }

    fn one(tok: &Tok, c: char) -> bool {
        match tok {
            Tok::Lit(l) => *l == c,
            Tok::One => true,
            Tok::Star => false,
            Tok::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }

    /// Whether `name` matches the whole pattern (linear backtracking over the last `*`).
    fn matches(&self, name: &str) -> bool {
        let toks = &self.0;
        let name: Vec<char> = name.chars().collect();
        let (mut p, mut i) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while i < name.len() {
            if let Some(t) = toks.get(p) {
                if *t == Tok::Star {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                if Glob::one(t, name[i]) {
                    p += 1;
                    i += 1;
                    continue;
                }
            }
            match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            }
        }
        toks[p..].iter().all(|t| *t == Tok::Star)
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors

/// Resolution of a whole path inside the view.
const IN_ROOT: u64 = sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS;
/// Resolution of one name in an open directory, following nothing.
const ONE_NAME: u64 = sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS;

/// File system types that are never touched: their files are kernel interfaces, not data.
const PSEUDO_FS: &[u64] = &[
    0x9fa0,      // PROC_SUPER_MAGIC
    0x6265_6572, // SYSFS_MAGIC
    0x1cd1,      // DEVPTS_SUPER_MAGIC
    0x0027_e0eb, // CGROUP_SUPER_MAGIC
    0x6367_7270, // CGROUP2_SUPER_MAGIC
    0x7363_6673, // SECURITYFS_MAGIC
    0x6462_6720, // DEBUGFS_MAGIC
    0x7472_6163, // TRACEFS_MAGIC
    0xcafe_4a11, // BPF_FS_MAGIC
    0x6e73_6673, // NSFS_MAGIC
    0x6165_676c, // PSTOREFS_MAGIC
    0xde5e_81e4, // EFIVARFS_MAGIC
    0x6265_6570, // CONFIGFS_MAGIC
    0x6573_5543, // FUSECTL_SUPER_MAGIC
    0xf97c_ff8c, // SELINUX_MAGIC
    0x4249_4e4d, // BINFMTFS_MAGIC
    0x1980_0202, // MQUEUE_MAGIC
];

/// `openat2` with `O_CLOEXEC`, retrying the `EAGAIN` the kernel returns when it cannot rule
/// out a `..` race during `RESOLVE_IN_ROOT`/`RESOLVE_BENEATH` resolution.
fn open2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    let mut tries = 0;
    loop {
        match sys::openat2(dir, path, &how) {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
                    && tries < 64 =>
            {
                tries += 1;
            }
            r => return r,
        }
    }
}

/// `/proc/self/fd/N` of one of our descriptors: the exact inode it refers to. (`self`, not
/// `thread-self`: `/proc/<tgid>/fd` lets any thread of the process in, whatever its fsuid.)
fn proc_fd(fd: BorrowedFd<'_>) -> io::Result<CString> {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::other("NUL in a /proc path"))
}

/// Opens the inode behind `fd` (typically `O_PATH`) again with real access `flags`; the
/// permission check is that of the calling thread's fsuid. Never follows anything else.
fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<File> {
    let p = proc_fd(fd)?;
    // SAFETY: open of a NUL-terminated path; the result is checked and owned at once.
    let raw = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOCTTY) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that only we own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// `chmod` of exactly the inode behind `fd` (which must not be a symlink).
fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_fd(fd)?;
    // SAFETY: chmod of a NUL-terminated path.
    if unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Refuses descriptors on kernel pseudo-filesystems.
fn check_fs(fd: BorrowedFd<'_>, path: &str) -> Result<(), FsError> {
    let t = sys::fs_type(fd).map_err(|e| FsError::from_io(path, e))?;
    if PSEUDO_FS.contains(&t) {
        return Err(FsError::Forbidden {
            path: path.to_string(),
            reason: "a kernel file system (/proc, /sys, /dev/pts, …) is off limits",
        });
    }
    Ok(())
}

fn fstat(fd: BorrowedFd<'_>, path: &str) -> Result<libc::stat, FsError> {
    sys::fstat(fd).map_err(|e| FsError::from_io(path, e))
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Refuses what may not be read or written as a file.
fn require_regular(st: &libc::stat, path: &str) -> Result<(), FsError> {
    match FsKind::of(st.st_mode) {
        FsKind::File => Ok(()),
        FsKind::Dir => Err(FsError::IsADirectory {
            path: path.to_string(),
        }),
        _ => Err(FsError::NotRegular {
            path: path.to_string(),
        }),
    }
}

/// A mode a caller may set: permission bits without setuid/setgid (which are stripped).
fn checked_mode(path: &str, mode: u32) -> Result<u32, FsError> {
    if mode & !0o7777 != 0 {
        return Err(FsError::InvalidArgument {
            path: path.to_string(),
            reason: "a mode has only permission bits (at most 0o7777)",
        });
    }
    Ok(mode & 0o1777)
}

/// Reads names (without `.` and `..`) from an open directory: at most `max` of them.
fn read_names(
    dir: &mut nix::dir::Dir,
    max: usize,
    path: &str,
) -> Result<Vec<(CString, Option<nix::dir::Type>)>, FsError> {
    let mut out = Vec::new();
    for entry in dir.iter() {
        if out.len() >= max {
            break;
        }
        let entry = entry.map_err(|e| FsError::from_io(path, io::Error::from(e)))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        out.push((name.to_owned(), entry.file_type()));
    }
    Ok(out)
}

fn open_dir_stream(fd: OwnedFd, path: &str) -> Result<nix::dir::Dir, FsError> {
    nix::dir::Dir::from_fd(fd).map_err(|e| FsError::from_io(path, io::Error::from(e)))
}

/// One directory being walked by [`SandboxFs::walk`].
struct Frame {
    dir: nix::dir::Dir,
    /// The directory's path (bytes).
    path: Vec<u8>,
    /// Names in lexical (byte) order, with their `d_type`.
    names: Vec<(CString, Option<nix::dir::Type>)>,
    next: usize,
    /// Depth of the entries of this directory (1 = children of the walk's start).
    depth: u32,
}

/// A file being uploaded by [`SandboxFs::upload`]: written under a temporary name in the
/// target's directory, then renamed over the target by [`Upload::commit`]. Dropping an
/// uncommitted upload removes the temporary file. May be moved between threads: each
/// operation switches the calling thread to the sandbox's user by itself.
#[derive(Debug)]
pub struct Upload {
    parent: OwnedFd,
    tmp: CString,
    name: CString,
    file: File,
    path: String,
    written: u64,
    limit: u64,
    uid: u32,
    gid: u32,
    done: bool,
}

impl Upload {
    /// Normalized path of the target.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes. [`FsError::TooLarge`] past the upload's limit (nothing of `data` is
    /// written then), [`FsError::NoSpace`] when the sandbox's file system is full.
    pub fn write(&mut self, data: &[u8]) -> Result<(), FsError> {
        let total = self.written.saturating_add(data.len() as u64);
        if total > self.limit {
            return Err(FsError::TooLarge {
                path: self.path.clone(),
                limit: self.limit,
            });
        }
        if let Err(e) = self.file.write_all(data) {
            return Err(if e.raw_os_error() == Some(libc::EFBIG) {
                FsError::TooLarge {
                    path: self.path.clone(),
                    limit: self.limit,
                }
            } else {
                FsError::from_io(&self.path, e)
            });
        }
        self.written = total;
        Ok(())
    }

    /// Flushes the file, sets its mode (`Some`: these permission bits, setuid/setgid
    /// stripped; `None`: the mode of the regular file it replaces, else `0o644`) and renames
    /// it over the target name. The rename replaces a file or symlink of that name (never
    /// following it); a directory of that name is refused ([`FsError::IsADirectory`]).
    /// Returns the number of bytes written.
    pub fn commit(mut self, mode: Option<u32>) -> Result<u64, FsError> {
        let _ids =
            FsIds::sandbox_user(self.uid, self.gid).map_err(|e| FsError::from_io(&self.path, e))?;
        let path = self.path.clone();
        let requested = mode.map(|m| checked_mode(&path, m)).transpose()?;
        self.file
            .sync_all()
            .map_err(|e| FsError::from_io(&path, e))?;
        let existing = match sys::lstatat(self.parent.as_fd(), &self.name) {
            Ok(st) if is_dir(&st) => return Err(FsError::IsADirectory { path }),
            Ok(st) if FsKind::of(st.st_mode) == FsKind::File => Some(st.st_mode & 0o1777),
            _ => None,
        };
        let mode = requested.or(existing).unwrap_or(0o644);
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(self.file.as_raw_fd(), mode as libc::mode_t) } < 0 {
            return Err(FsError::from_io(&path, io::Error::last_os_error()));
        }
        let parent = self.parent.as_fd();
        // Plain rename: replaces what is there (a symlink is replaced, not followed).
        sys::renameat2(parent, &self.tmp, parent, &self.name, 0)
            .map_err(|e| FsError::from_io(&path, e))?;
        self.done = true;
        Ok(self.written)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(_ids) = FsIds::sandbox_user(self.uid, self.gid) {
            let _ = sys::unlinkat(self.parent.as_fd(), &self.tmp, 0);
        }
    }
}

impl SandboxFs {
    /// A view rooted at `root` (an `O_PATH` descriptor of the jail's root directory), acting
    /// as host uid/gid `program_id`; `agent_id` is the host id of the jail's root user.
    pub(crate) fn new(root: OwnedFd, program_id: u32, agent_id: u32) -> SandboxFs {
        SandboxFs {
            root,
            uid: program_id,
            gid: program_id,
            agent: agent_id,
        }
    }

    /// Host uid (and gid) the operations act as.
    pub fn host_id(&self) -> u32 {
        self.uid
    }

    fn become_user(&self, path: &str) -> Result<FsIds, FsError> {
        FsIds::sandbox_user(self.uid, self.gid).map_err(|e| FsError::from_io(path, e))
    }

    fn meta(&self, path: String, st: &libc::stat) -> FileMeta {
        let map = |id: u32, own: u32, inside: u32| {
            if id == own {
                inside
            } else if id == self.agent {
                0
            } else {
                OVERFLOW_ID
            }
        };
        FileMeta {
            path,
            kind: FsKind::of(st.st_mode),
            size: st.st_size.max(0) as u64,
            mode: st.st_mode & 0o7777,
            uid: map(st.st_uid, self.uid, JAIL_UID),
            gid: map(st.st_gid, self.gid, JAIL_GID),
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
        }
    }

    /// Resolves a whole path inside the view (following symlinks within it).
    fn resolve(&self, raw: &[u8], flags: libc::c_int) -> Result<OwnedFd, FsError> {
        let c = cstring(&shown(raw), raw)?;
        open2(self.root.as_fd(), &c, flags, 0, IN_ROOT)
            .map_err(|e| FsError::from_io(&shown(raw), e))
    }

    /// The parent directory (`O_PATH`, checked) and final name of a path other than `/`.
    fn parent(&self, p: &VPath) -> Result<Option<(OwnedFd, CString)>, FsError> {
        let Some((parent, name)) = p.split() else {
            return Ok(None);
        };
        let dir = self
            .resolve(parent, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| match e {
                // Report the path the caller asked about.
                FsError::NotFound { .. } => FsError::NotFound {
                    path: p.abs.clone(),
                },
                FsError::NotADirectory { .. } => FsError::NotADirectory {
                    path: p.abs.clone(),
                },
                e => e,
            })?;
        check_fs(dir.as_fd(), &p.abs)?;
        Ok(Some((dir, cstring(&p.abs, name)?)))
    }

    /// Like [`SandboxFs::parent`], for operations that need a final name.
    fn parent_of_name(&self, p: &VPath, root_err: FsError) -> Result<(OwnedFd, CString), FsError> {
        self.parent(p)?.ok_or(root_err)
    }

    /// The file a path names, itself (a final symlink is not followed), as `O_PATH`,
    /// checked.
    fn entry(&self, p: &VPath) -> Result<OwnedFd, FsError> {
        let fd = match self.parent(p)? {
            None => self
                .root
                .try_clone()
                .map_err(|e| FsError::from_io(&p.abs, e))?,
            Some((dir, name)) => open2(
                dir.as_fd(),
                &name,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
                ONE_NAME,
            )
            .map_err(|e| FsError::from_io(&p.abs, e))?,
        };
        check_fs(fd.as_fd(), &p.abs)?;
        Ok(fd)
    }

    /// Refuses a final entry (not followed) that is itself on a kernel file system, such as
    /// the `/proc` mount point; a missing entry passes (the operation reports it).
    fn check_entry(dir: BorrowedFd<'_>, name: &CStr, path: &str) -> Result<(), FsError> {
        match open2(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0, ONE_NAME) {
            Ok(fd) => check_fs(fd.as_fd(), path),
            Err(_) => Ok(()),
        }
    }

    /// The file a path names, following symlinks within the view, as `O_PATH`, checked.
    fn target(&self, p: &VPath) -> Result<OwnedFd, FsError> {
        let fd = self.resolve(&p.raw, libc::O_PATH)?;
        check_fs(fd.as_fd(), &p.abs)?;
        Ok(fd)
    }

    /// A directory a path names, open for reading; a final symlink is refused.
    fn open_dir(&self, p: &VPath) -> Result<OwnedFd, FsError> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let fd = match self.parent(p)? {
            None => self.resolve(b"/", flags)?,
            Some((dir, name)) => match open2(dir.as_fd(), &name, flags, 0, ONE_NAME) {
                Ok(fd) => fd,
                // O_DIRECTORY is checked before O_NOFOLLOW: a symlink gives ENOTDIR.
                Err(e) => {
                    let link = sys::lstatat(dir.as_fd(), &name)
                        .is_ok_and(|st| FsKind::of(st.st_mode) == FsKind::Symlink);
                    return Err(if link {
                        FsError::IsSymlink {
                            path: p.abs.clone(),
                        }
                    } else {
                        FsError::from_io_nofollow(&p.abs, e)
                    });
                }
            },
        };
        check_fs(fd.as_fd(), &p.abs)?;
        Ok(fd)
    }

    /// Metadata of the file a path names; a final symlink is reported as
    /// [`FsKind::Symlink`], not followed (lstat).
    pub fn stat(&self, path: &str) -> Result<FileMeta, FsError> {
        let p = VPath::parse(path)?;
        let _ids = self.become_user(&p.abs)?;
        let fd = self.entry(&p)?;
        let st = fstat(fd.as_fd(), &p.abs)?;
        Ok(self.meta(p.abs, &st))
    }

    /// Lists a directory: at most `max_entries` entries, `depth` levels deep (1 = the
    /// children only, 0 = nothing). Entries of a directory come in lexical (byte) order, each
    /// directory's descendants right after it; the directory itself is not listed. Symlinks
    /// are reported and never followed; the contents of kernel file systems (`/proc`, …) are
    /// not descended into. The flag says whether anything was left out (by `max_entries`,
    /// [`LIST_MAX_SCANNED`] or [`MAX_WALK_DEPTH`]). The path itself must be a directory, not
    /// a symlink ([`FsError::IsSymlink`]).
    pub fn list(
        &self,
        path: &str,
        depth: u32,
        max_entries: usize,
    ) -> Result<(Vec<FileMeta>, bool), FsError> {
        let p = VPath::parse(path)?;
        let _ids = self.become_user(&p.abs)?;
        let dir = self.open_dir(&p)?;
        let mut out = Vec::new();
        if depth == 0 {
            return Ok((out, false));
        }
        let truncated = self.walk(dir, &p.raw, depth, LIST_MAX_SCANNED, &mut |m, _| {
            if out.len() >= max_entries {
                return false;
            }
            out.push(m);
            true
        })?;
        Ok((out, truncated))
    }

    /// Finds non-directories (files, symlinks, others) below a directory whose base name
    /// matches the glob `pattern` (see below), recursively, in the order of
    /// [`SandboxFs::list`]: at most `max_results` results, reading at most `max_scanned`
    /// names; the flag says whether anything was left out. Symlinks are never followed.
    ///
    /// Patterns: `*` any run of characters (`**` is the same), `?` one character, `[abc]`,
    /// `[a-z]`, `[!a]` or `[^a]`, `\x` a literal `x`. An empty pattern matches nothing; a
    /// malformed one is [`FsError::InvalidPattern`]. A name that is not UTF-8 is matched with
    /// each invalid sequence read as U+FFFD (which `?` and `*` match).
    pub fn search(
        &self,
        path: &str,
        pattern: &str,
        max_results: usize,
        max_scanned: usize,
    ) -> Result<(Vec<FileMeta>, bool), FsError> {
        let glob = Glob::parse(pattern).map_err(|reason| FsError::InvalidPattern {
            pattern: pattern.to_string(),
            reason,
        })?;
        let p = VPath::parse(path)?;
        let _ids = self.become_user(&p.abs)?;
        let dir = self.open_dir(&p)?;
        let mut out = Vec::new();
        let truncated = self.walk(dir, &p.raw, u32::MAX, max_scanned, &mut |m, name| {
            if m.kind == FsKind::Dir {
                return true;
            }
            if !glob.matches(&String::from_utf8_lossy(name)) {
                return true;
            }
            if out.len() >= max_results {
                return false;
            }
            out.push(m);
            true
        })?;
        Ok((out, truncated))
    }

    /// Depth-first walk below the open directory `start` (named `path`), never following
    /// symlinks. `visit` gets every entry with its name, and returns `false` to stop (the
    /// walk is then truncated). Returns whether the walk was truncated.
    fn walk(
        &self,
        start: OwnedFd,
        path: &[u8],
        max_depth: u32,
        max_scanned: usize,
        visit: &mut dyn FnMut(FileMeta, &[u8]) -> bool,
    ) -> Result<bool, FsError> {
        let mut scanned = 0usize;
        let mut truncated = false;
        let mut stack: Vec<Frame> = Vec::new();
        let mut push = |fd: OwnedFd,
                        path: Vec<u8>,
                        depth: u32,
                        stack: &mut Vec<Frame>,
                        truncated: &mut bool|
         -> Result<(), FsError> {
            let mut dir = open_dir_stream(fd, &shown(&path))?;
            let budget = max_scanned.saturating_sub(scanned);
            // One more than the budget, to know whether the directory had more.
            let mut names = read_names(&mut dir, budget.saturating_add(1), &shown(&path))?;
            if names.len() > budget {
                names.truncate(budget);
                *truncated = true;
            }
            scanned += names.len();
            names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            stack.push(Frame {
                dir,
                path,
                names,
                next: 0,
                depth,
            });
            Ok(())
        };
        push(start, path.to_vec(), 1, &mut stack, &mut truncated)?;
        while let Some(frame) = stack.last_mut() {
            let Some((name, _)) = frame.names.get(frame.next) else {
                stack.pop();
                continue;
            };
            frame.next += 1;
            let dir_fd = frame.dir.as_fd();
            // Gone since it was listed, or not searchable: skip it.
            let Ok(st) = sys::lstatat(dir_fd, name) else {
                continue;
            };
            let child_path = join(&frame.path, name.to_bytes());
            let child_text = shown(&child_path);
            let depth = frame.depth;
            let descend = is_dir(&st) && depth < max_depth;
            let sub = if descend {
                open2(
                    dir_fd,
                    name,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                    ONE_NAME,
                )
                .ok()
            } else {
                None
            };
            if !visit(self.meta(child_text.clone(), &st), name.to_bytes()) {
                return Ok(true);
            }
            let Some(sub) = sub else { continue };
            // Never list a kernel file system's contents.
            if check_fs(sub.as_fd(), &child_text).is_err() {
                continue;
            }
            if stack.len() >= MAX_WALK_DEPTH {
                truncated = true;
                continue;
            }
            // A directory we may not read is listed but not entered.
            match push(sub, child_path, depth + 1, &mut stack, &mut truncated) {
                Ok(()) => {}
                Err(FsError::Forbidden { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(truncated)
    }

    /// Opens a regular file for reading (following symlinks within the view, as `cat`
    /// would). FIFOs, sockets and devices are [`FsError::NotRegular`] and never opened;
    /// directories are [`FsError::IsADirectory`]. Returns the file and its metadata (under
    /// the path asked for) at opening.
    pub fn open_read(&self, path: &str) -> Result<(File, FileMeta), FsError> {
        let p = VPath::parse(path)?;
        let _ids = self.become_user(&p.abs)?;
        let fd = self.target(&p)?;
        let st = fstat(fd.as_fd(), &p.abs)?;
        require_regular(&st, &p.abs)?;
        // O_NONBLOCK: a lease held by the program makes the open fail instead of waiting.
        let file = reopen(fd.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)
            .map_err(|e| FsError::from_io(&p.abs, e))?;
        Ok((file, self.meta(p.abs, &st)))
    }

    /// Starts writing a file of at most `limit` bytes: creates missing parent directories
    /// (mode `0o755`) and a temporary file (mode `0o600`, random name, `O_EXCL`) next to the
    /// target. Write it with [`Upload::write`] and finish with [`Upload::commit`]; the target
    /// is only replaced at commit.
    pub fn upload(&self, path: &str, limit: u64) -> Result<Upload, FsError> {
        let p = VPath::parse(path)?;
        let (parent_path, name) = p.split().ok_or_else(|| FsError::IsADirectory {
            path: p.abs.clone(),
        })?;
        let name = cstring(&p.abs, name)?;
        let _ids = self.become_user(&p.abs)?;
        let parent_vp = VPath::of(parent_path.to_vec());
        let (parent, _) = self.mkdir_p(&parent_vp, 0o755)?;
        check_fs(parent.as_fd(), &p.abs)?;
        Self::check_entry(parent.as_fd(), &name, &p.abs)?;
        if let Ok(st) = sys::lstatat(parent.as_fd(), &name)
            && is_dir(&st)
        {
            return Err(FsError::IsADirectory { path: p.abs });
        }
        let mut tries = 0;
        let (tmp, fd) = loop {
            let r = sys::random_u64().map_err(|e| FsError::from_io(&p.abs, e))?;
            let tmp = cstring(&p.abs, format!(".runcell-upload-{r:016x}").as_bytes())?;
            match open2(
                parent.as_fd(),
                &tmp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
                ONE_NAME,
            ) {
                Ok(fd) => break (tmp, fd),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 8 => tries += 1,
                Err(e) => return Err(FsError::from_io(&p.abs, e)),
            }
        };
        Ok(Upload {
            parent,
            tmp,
            name,
            file: File::from(fd),
            path: p.abs,
            written: 0,
            limit,
            uid: self.uid,
            gid: self.gid,
            done: false,
        })
    }

    /// `mkdir -p`, resolving each prefix from the root (symlinks to directories are followed
    /// within the view). Directories it creates get `mode` exactly. Returns the final
    /// directory (`O_PATH`) and whether this call created it.
    fn mkdir_p(&self, p: &VPath, mode: u32) -> Result<(OwnedFd, bool), FsError> {
        let mut cur = self
            .resolve(b"/", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| match e {
                FsError::NotFound { .. } => FsError::NotFound {
                    path: p.abs.clone(),
                },
                e => e,
            })?;
        let mut prefix = Vec::new();
        let mut created = false;
        for comp in p.components() {
            prefix.push(b'/');
            prefix.extend_from_slice(comp);
            match self.resolve(&prefix, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => {
                    cur = fd;
                    created = false;
                    continue;
                }
                Err(FsError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let prefix_text = shown(&prefix);
            check_fs(cur.as_fd(), &prefix_text)?;
            let name = cstring(&prefix_text, comp)?;
            created = match sys::mkdirat(cur.as_fd(), &name, mode & 0o700) {
                Ok(()) => true,
                // Made by someone else meanwhile (or a dangling symlink: resolved below).
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
                Err(e) => return Err(FsError::from_io(&prefix_text, e)),
            };
            if created {
                // The umask may have narrowed the mode: set it on exactly what we made (or,
                // if the program swapped it meanwhile, on its own directory of that name).
                let made = open2(
                    cur.as_fd(),
                    &name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                    ONE_NAME,
                )
                .map_err(|e| FsError::from_io(&prefix_text, e))?;
                chmod_fd(made.as_fd(), mode).map_err(|e| FsError::from_io(&prefix_text, e))?;
            }
            cur = self.resolve(&prefix, libc::O_PATH | libc::O_DIRECTORY)?;
        }
        check_fs(cur.as_fd(), &p.abs)?;
        Ok((cur, created))
    }

    /// `mkdir -p` with `mode` (setuid/setgid stripped) for the directories it creates;
    /// existing directories are left as they are (symlinks to directories are followed
    /// within the view). Returns whether the final directory was created by this call.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<bool, FsError> {
        let p = VPath::parse(path)?;
        let mode = checked_mode(&p.abs, mode)?;
        let _ids = self.become_user(&p.abs)?;
        self.mkdir_p(&p, mode).map(|(_, created)| created)
    }

    /// `mkdir -p` of the directory `path` is in (as [`SandboxFs::mkdir_all`]); nothing for
    /// the root. Returns whether that directory was created by this call.
    pub fn mkdir_parent(&self, path: &str, mode: u32) -> Result<bool, FsError> {
        let p = VPath::parse(path)?;
        let mode = checked_mode(&p.abs, mode)?;
        let Some((parent, _)) = p.split() else {
            return Ok(false);
        };
        let parent = VPath::of(parent.to_vec());
        let _ids = self.become_user(&p.abs)?;
        self.mkdir_p(&parent, mode).map(|(_, created)| created)
    }

    /// Removes a non-directory (a symlink is removed, not followed);
    /// [`FsError::IsADirectory`] for a directory.
    pub fn remove_file(&self, path: &str) -> Result<(), FsError> {
        let p = VPath::parse(path)?;
        let _ids = self.become_user(&p.abs)?;
        let (dir, name) = self.parent_of_name(
            &p,
            FsError::IsADirectory {
                path: p.abs.clone(),
            },
        )?;
        Self::check_entry(dir.as_fd(), &name, &p.abs)?;
        sys::unlinkat(dir.as_fd(), &name, 0).map_err(|e| FsError::from_io(&p.abs, e))
    }

    /// `rm -rf` by descriptors: never follows a symlink, never crosses a mount. Refuses `/`
    /// and mount points (such as `/workspace` itself; its contents can be removed one by
    /// one) with [`FsError::Forbidden`]. At most [`REMOVE_ALL_MAX_ENTRIES`] entries
    /// ([`FsError::TooMany`]; what was removed stays removed). Any depth: subtrees deeper
    /// than [`MAX_WALK_DEPTH`] are first moved up into the directory being removed.
    /// [`FsError::NotFound`] if nothing has that name.
    pub fn remove_all(&self, path: &str) -> Result<(), FsError> {
        let p = VPath::parse(path)?;
        let _ids = self.become_user(&p.abs)?;
        let (dir, name) = self.parent_of_name(
            &p,
            FsError::Forbidden {
                path: p.abs.clone(),
                reason: "the root of the sandbox cannot be removed",
            },
        )?;
        Self::check_entry(dir.as_fd(), &name, &p.abs)?;
        let st = sys::lstatat(dir.as_fd(), &name).map_err(|e| FsError::from_io(&p.abs, e))?;
        if !is_dir(&st) {
            return sys::unlinkat(dir.as_fd(), &name, 0).map_err(|e| FsError::from_io(&p.abs, e));
        }
        let mut count = 0u64;
        self.remove_tree(dir.as_fd(), &name, &p.raw, &mut count)
    }

    /// Opens the directory `name` of `dir` for removal: never a symlink, never across a
    /// mount. `Ok(None)` if it turned into a non-directory meanwhile.
    fn open_for_removal(
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &str,
    ) -> Result<Option<OwnedFd>, FsError> {
        match open2(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
            ONE_NAME | sys::RESOLVE_NO_XDEV,
        ) {
            Ok(fd) => {
                check_fs(fd.as_fd(), path)?;
                Ok(Some(fd))
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOTDIR) | Some(libc::ELOOP) => Ok(None),
                Some(libc::EXDEV) => Err(FsError::Forbidden {
                    path: path.to_string(),
                    reason: "a mount point cannot be removed",
                }),
                _ => Err(FsError::from_io(path, e)),
            },
        }
    }

    /// Removes the directory `name` of `parent` and everything in it, iteratively (one
    /// open descriptor per level), counting entries in `count`.
    fn remove_tree(
        &self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
        count: &mut u64,
    ) -> Result<(), FsError> {
        let Some(top) = Self::open_for_removal(parent, name, &shown(path))? else {
            return sys::unlinkat(parent, name, 0).map_err(|e| FsError::from_io(&shown(path), e));
        };
        // Ancestors (directory, and our name in it), below `parent`.
        let mut stack: Vec<(nix::dir::Dir, CString, Vec<u8>)> = Vec::new();
        let mut cur = open_dir_stream(top, &shown(path))?;
        let mut cur_name = name.to_owned();
        let mut cur_path = path.to_vec();
        loop {
            let batch = read_names(&mut cur, 512, &shown(&cur_path))?;
            if batch.is_empty() {
                // `cur` is empty: remove it from its parent and go back up.
                drop(cur);
                let up = stack.pop();
                let up_fd = up.as_ref().map(|(d, _, _)| d.as_fd()).unwrap_or(parent);
                sys::unlinkat(up_fd, &cur_name, libc::AT_REMOVEDIR)
                    .map_err(|e| FsError::from_io(&shown(&cur_path), e))?;
                match up {
                    None => return Ok(()),
                    Some((d, n, pth)) => {
                        cur = d;
                        cur_name = n;
                        cur_path = pth;
                    }
                }
                continue;
            }
            let mut descend: Option<(OwnedFd, CString, Vec<u8>)> = None;
            for (child, kind) in batch {
                *count += 1;
                if *count > REMOVE_ALL_MAX_ENTRIES {
                    return Err(FsError::TooMany {
                        path: shown(path),
                        what: "entries",
                        limit: REMOVE_ALL_MAX_ENTRIES,
                    });
                }
                let child_path = join(&cur_path, child.to_bytes());
                let maybe_dir = matches!(kind, Some(nix::dir::Type::Directory) | None);
                if !maybe_dir {
                    match sys::unlinkat(cur.as_fd(), &child, 0) {
                        Ok(()) => continue,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                        // Became a directory meanwhile: handled below.
                        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
                        Err(e) => return Err(FsError::from_io(&shown(&child_path), e)),
                    }
                }
                match Self::open_for_removal(cur.as_fd(), &child, &shown(&child_path)) {
                    Ok(Some(fd)) => {
                        descend = Some((fd, child, child_path));
                        break;
                    }
                    Ok(None) => match sys::unlinkat(cur.as_fd(), &child, 0) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err(FsError::from_io(&shown(&child_path), e)),
                    },
                    Err(FsError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some((fd, child, child_path)) = descend {
                if stack.len() + 1 >= MAX_WALK_DEPTH
                    && let Some((top, _, top_path)) = stack.first()
                {
                    // Too deep to hold a descriptor per level: move the subdirectory up into
                    // the top directory (same mount, being removed too; never into its own
                    // subtree) and remove it from there later.
                    drop(fd);
                    let child_text = shown(&child_path);
                    let r = sys::random_u64().map_err(|e| FsError::from_io(&child_text, e))?;
                    let hoisted = cstring(&child_text, format!(".runcell-rm-{r:016x}").as_bytes())?;
                    sys::renameat2(
                        cur.as_fd(),
                        &child,
                        top.as_fd(),
                        &hoisted,
                        sys::RENAME_NOREPLACE,
                    )
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::ENOENT) => FsError::NotFound { path: child_text },
                        _ => FsError::from_io(&shown(top_path), e),
                    })
                    .or_else(|e| match e {
                        // Removed meanwhile: nothing to move.
                        FsError::NotFound { .. } => Ok(()),
                        e => Err(e),
                    })?;
                    continue;
                }
                let sub = open_dir_stream(fd, &shown(&child_path))?;
                let prev = std::mem::replace(&mut cur, sub);
                let prev_name = std::mem::replace(&mut cur_name, child);
                let prev_path = std::mem::replace(&mut cur_path, child_path);
                stack.push((prev, prev_name, prev_path));
            }
        }
    }

    /// Renames `src` to `dst` without replacing anything: [`FsError::AlreadyExists`] if
    /// `dst` exists, [`FsError::CrossDevice`] across mounts. Neither final component is
    /// followed (a symlink is moved itself). `dst`'s parent must exist.
    pub fn rename(&self, src: &str, dst: &str) -> Result<(), FsError> {
        let s = VPath::parse(src)?;
        let d = VPath::parse(dst)?;
        let _ids = self.become_user(&s.abs)?;
        let root_err = |p: &VPath| FsError::Forbidden {
            path: p.abs.clone(),
            reason: "the root of the sandbox cannot be moved",
        };
        let (sdir, sname) = self.parent_of_name(&s, root_err(&s))?;
        let (ddir, dname) = self.parent_of_name(&d, root_err(&d))?;
        Self::check_entry(sdir.as_fd(), &sname, &s.abs)?;
        Self::check_entry(ddir.as_fd(), &dname, &d.abs)?;
        sys::renameat2(
            sdir.as_fd(),
            &sname,
            ddir.as_fd(),
            &dname,
            sys::RENAME_NOREPLACE,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => FsError::CrossDevice {
                src: s.abs.clone(),
                dst: d.abs.clone(),
            },
            Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => FsError::AlreadyExists {
                path: d.abs.clone(),
            },
            Some(libc::EINVAL) => FsError::InvalidArgument {
                path: d.abs.clone(),
                reason: "cannot move a directory into itself",
            },
            _ => FsError::from_io(&s.abs, e),
        })
    }

    /// Changes the permission bits of a file or directory. Bits beyond `0o7777` are
    /// refused, setuid/setgid are stripped; symlinks are refused ([`FsError::IsSymlink`]),
    /// FIFOs, sockets and devices too ([`FsError::NotRegular`]). Only the owner (the
    /// sandbox's user) can do it.
    pub fn chmod(&self, path: &str, mode: u32) -> Result<(), FsError> {
        let p = VPath::parse(path)?;
        let mode = checked_mode(&p.abs, mode)?;
        let _ids = self.become_user(&p.abs)?;
        let fd = self.entry(&p)?;
        let st = fstat(fd.as_fd(), &p.abs)?;
        match FsKind::of(st.st_mode) {
            FsKind::File | FsKind::Dir => {}
            FsKind::Symlink => return Err(FsError::IsSymlink { path: p.abs }),
            FsKind::Other => return Err(FsError::NotRegular { path: p.abs }),
        }
        chmod_fd(fd.as_fd(), mode).map_err(|e| FsError::from_io(&p.abs, e))
    }

    /// Replaces every occurrence of `old` (non-empty) by `new` in a regular file of at most
    /// `limit` bytes (following symlinks within the view), in place: the same inode, mode and
    /// owner. Returns the number of replacements (the file is not written when it is 0).
    /// Space for a longer result is reserved first, so a full file system fails before the
    /// file changes.
    pub fn replace(&self, path: &str, old: &str, new: &str, limit: u64) -> Result<usize, FsError> {
        let p = VPath::parse(path)?;
        if old.is_empty() {
            return Err(FsError::InvalidArgument {
                path: p.abs,
                reason: "the text to replace must not be empty",
            });
        }
        let _ids = self.become_user(&p.abs)?;
        let fd = self.target(&p)?;
        let st = fstat(fd.as_fd(), &p.abs)?;
        require_regular(&st, &p.abs)?;
        let too_large = || FsError::TooLarge {
            path: p.abs.clone(),
            limit,
        };
        if st.st_size.max(0) as u64 > limit {
            return Err(too_large());
        }
        let mut file = reopen(fd.as_fd(), libc::O_RDWR | libc::O_NONBLOCK)
            .map_err(|e| FsError::from_io(&p.abs, e))?;
        let mut data = Vec::new();
        (&mut file)
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| FsError::from_io(&p.abs, e))?;
        if data.len() as u64 > limit {
            return Err(too_large());
        }
        let (out, count) = replace_all(&data, old.as_bytes(), new.as_bytes());
        if count == 0 {
            return Ok(0);
        }
        let io_err = |e| FsError::from_io(&p.abs, e);
        if out.len() > data.len() {
            // SAFETY: fallocate on a descriptor we own; KEEP_SIZE only reserves space and
            // leaves the file's size (and contents) as they are.
            let r = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    out.len() as libc::off_t,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(io_err(e));
                }
            }
        }
        use std::os::unix::fs::FileExt;
        file.write_all_at(&out, 0).map_err(io_err)?;
        file.set_len(out.len() as u64).map_err(io_err)?;
        Ok(count)
    }
}

/// Replaces every non-overlapping occurrence of `old` (non-empty) in `data`, left to right.
fn replace_all(data: &[u8], old: &[u8], new: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(data.len());
    let mut count = 0;
    let mut i = 0;
    if old.is_empty() {
        return (data.to_vec(), 0);
    }
    while i < data.len() {
        if data[i..].starts_with(old) {
            out.extend_from_slice(new);
            i += old.len();
            count += 1;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_inside_the_view() {
        let n = |s: &str| String::from_utf8(normalize(s.as_bytes()).unwrap()).unwrap();
        let normalize = |s: &str| normalize(s.as_bytes());
        assert_eq!(n("a.txt"), "/workspace/a.txt");
        assert_eq!(n("./a//b/"), "/workspace/a/b");
        assert_eq!(n("../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/workspace/../../../etc/shadow"), "/etc/shadow");
        assert_eq!(n("/"), "/");
        assert_eq!(n("//"), "/");
        assert_eq!(n(".."), "/");
        assert_eq!(n("."), "/workspace");
        assert_eq!(n("a/b/../../.."), "/");
        assert_eq!(n("..%2f..%2fetc"), "/workspace/..%2f..%2fetc");
        assert_eq!(n("a\\..\\..\\b"), "/workspace/a\\..\\..\\b");
        assert_eq!(n("/a/./b/.../c"), "/a/b/.../c");
        assert!(normalize("").is_err());
        assert!(normalize("a\0b").is_err());
        assert!(normalize(&"a".repeat(4097)).is_err());
        assert!(normalize(&"n".repeat(255)).is_ok());
        assert!(normalize(&format!("/{}/x", "n".repeat(256))).is_err());
        assert!(normalize(&"/a".repeat(2048)).is_ok());
        assert!(normalize(&"/a".repeat(2049)).is_err());
        // Relative paths grow by the workspace prefix.
        assert!(normalize(&"a".repeat(4090)).is_err());
    }

    #[test]
    fn paths_split_into_parent_and_name() {
        let v = |s: &str| VPath::parse(s).unwrap();
        assert_eq!(v("/").split(), None);
        assert_eq!(v("/a").split(), Some((&b"/"[..], &b"a"[..])));
        assert_eq!(v("x/y").split(), Some((&b"/workspace/x"[..], &b"y"[..])));
        assert_eq!(
            v("/a/b/c").components().collect::<Vec<_>>(),
            [b"a", b"b", b"c"]
        );
        assert!(matches!(VPath::parse(""), Err(FsError::InvalidPath { .. })));
    }

    #[test]
    fn encoded_paths_are_decoded_then_checked_like_any_other() {
        let v = |s: &str| VPath::parse(s).unwrap();
        let p = v("/%/workspace/caf%E9.txt");
        assert_eq!(p.raw, b"/workspace/caf\xE9.txt");
        assert_eq!(p.abs, "/%/workspace/caf%E9.txt");
        assert_eq!(p.split(), Some((&b"/workspace"[..], &b"caf\xE9.txt"[..])));
        // The text form is canonical: `.`, `..`, `//` and needless escapes are gone.
        assert_eq!(v("/%/workspace/./d/..//caf%e9.txt").abs, p.abs);
        assert_eq!(v("/%/workspace/%61").abs, "/workspace/a");
        // Literal paths are never decoded; one that looks encoded is shown encoded.
        assert_eq!(v("/workspace/caf%E9.txt").raw, b"/workspace/caf%E9.txt");
        assert_eq!(v("%/x").abs, "/workspace/%/x");
        assert_eq!(v("//%/x").raw, b"/%/x");
        assert_eq!(v("//%/x").abs, "/%/%25/x");
        // Encoded separators and dots are separators and dots: still inside the view.
        assert_eq!(
            v("/%/workspace%2F..%2F..%2F..%2Fetc%2Fshadow").raw,
            b"/etc/shadow"
        );
        assert_eq!(v("/%/%2E%2E/%2e%2e/etc").raw, b"/etc");
        assert_eq!(v("/%/%2F%2F").raw, b"/");
        // NUL, bad escapes, and lengths counted on the decoded bytes.
        for bad in ["/%/a%00b", "/%/%00", "/%/%", "/%/%zz", "/%/a%4"] {
            assert!(
                matches!(VPath::parse(bad), Err(FsError::InvalidPath { .. })),
                "{bad}"
            );
        }
        let name = "%FF".repeat(255);
        assert_eq!(v(&format!("/%/tmp/{name}")).raw.len(), 4 + 1 + 255);
        let long = "%FF".repeat(256);
        assert!(VPath::parse(&format!("/%/tmp/{long}")).is_err());
        let deep = "/%FF".repeat(2048);
        assert_eq!(v(&format!("/%/{}", &deep[1..])).raw.len(), 4096);
        assert!(VPath::parse(&format!("/%/{deep}")).is_err());
    }

    #[test]
    fn globs_match_base_names() {
        let m = |p: &str, n: &str| Glob::parse(p).unwrap().matches(n);
        assert!(m("*.py", "a.py"));
        assert!(m("*.py", ".py"));
        assert!(!m("*.py", "a.pyc"));
        assert!(m("**", "anything"));
        assert!(m("**", ""));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("?.txt", "a.txt"));
        assert!(!m("?.txt", "ab.txt"));
        assert!(m("[abc].rs", "b.rs"));
        assert!(!m("[abc].rs", "d.rs"));
        assert!(m("[!abc].rs", "d.rs"));
        assert!(m("[^abc].rs", "d.rs"));
        assert!(!m("[!abc].rs", "a.rs"));
        assert!(m("f[0-9][0-9]", "f42"));
        assert!(!m("f[0-9]", "fx"));
        assert!(m("[]]", "]"));
        assert!(m("[!]]", "a"));
        assert!(m("[a-]", "-"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("a\\\\b", "a\\b"));
        assert!(m("é*", "été"));
        assert!(!m("", "a"));
        assert!(m("", ""));
        assert!(m("*a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(!m("*a*a*a*a*a*b", &"a".repeat(200)));
        for bad in ["[", "[abc", "[!", "a\\", "[z-a]", "[a-"] {
            assert!(Glob::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn replace_all_counts_non_overlapping_matches() {
        assert_eq!(replace_all(b"aaaa", b"aa", b"b"), (b"bb".to_vec(), 2));
        assert_eq!(replace_all(b"abc", b"x", b"y"), (b"abc".to_vec(), 0));
        assert_eq!(
            replace_all(b"localhost:8080 localhost", b"localhost", b"0.0.0.0"),
            (b"0.0.0.0:8080 0.0.0.0".to_vec(), 2)
        );
        assert_eq!(replace_all(b"ab", b"", b"x"), (b"ab".to_vec(), 0));
        assert_eq!(replace_all(b"", b"a", b"x"), (Vec::new(), 0));
    }

    #[test]
    fn errnos_map_to_kinds() {
        let e = |n| FsError::from_io("/p", io::Error::from_raw_os_error(n));
        assert!(matches!(e(libc::ENOENT), FsError::NotFound { .. }));
        assert!(matches!(e(libc::ENOTDIR), FsError::NotADirectory { .. }));
        assert!(matches!(e(libc::EISDIR), FsError::IsADirectory { .. }));
        assert!(matches!(e(libc::EEXIST), FsError::AlreadyExists { .. }));
        assert!(matches!(e(libc::EACCES), FsError::Forbidden { .. }));
        assert!(matches!(e(libc::EPERM), FsError::Forbidden { .. }));
        assert!(matches!(e(libc::EROFS), FsError::ReadOnly { .. }));
        assert!(matches!(e(libc::EXDEV), FsError::Forbidden { .. }));
        assert!(matches!(e(libc::ELOOP), FsError::Forbidden { .. }));
        assert!(matches!(e(libc::ENOSPC), FsError::NoSpace { .. }));
        assert!(matches!(e(libc::EDQUOT), FsError::NoSpace { .. }));
        assert!(matches!(e(libc::ENOTEMPTY), FsError::NotEmpty { .. }));
        assert!(matches!(e(libc::EIO), FsError::Io { .. }));
        assert!(matches!(
            FsError::from_io_nofollow("/p", io::Error::from_raw_os_error(libc::ELOOP)),
            FsError::IsSymlink { .. }
        ));
    }

    #[test]
    fn modes_are_checked_and_stripped() {
        assert_eq!(checked_mode("/p", 0o755).unwrap(), 0o755);
        assert_eq!(checked_mode("/p", 0o4755).unwrap(), 0o755);
        assert_eq!(checked_mode("/p", 0o2755).unwrap(), 0o755);
        assert_eq!(checked_mode("/p", 0o1777).unwrap(), 0o1777);
        assert!(checked_mode("/p", 0o10000).is_err());
    }
}
