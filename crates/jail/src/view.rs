//! Each jail's own inodes for the host paths it shows.
//!
//! File locks (`flock`, POSIX and OFD `fcntl` locks, leases), inotify and dnotify watches and
//! timestamps belong to an inode. A bind mount shows the host's inode itself, so a lock taken
//! on `/usr/bin/env` in one jail would be seen (and waited for) in every other jail and on the
//! host: a channel between tenants. So the agent binds no host path directly:
//!
//! * directories are shown through read-only overlayfs mounts of the jail's own (a host
//!   directory as the only real layer, over an empty one: overlayfs wants two layers when it
//!   has no upper one). An overlay has its own superblock and inodes: locks and watches taken
//!   in the jail stay on them, while the data and page cache are the host's. A bound directory
//!   is an overlay mounted where the jail sees it; bound files are bound from an overlay of
//!   the highest directory above them without mounts beneath it, mounted out of sight;
//! * the root itself is an overlay of the skeleton the spawner made (see `skeleton`), which
//!   holds copies of small host paths (`/etc`'s) instead of mounts for them;
//! * from a user namespace the kernel takes no directory with host mounts beneath it as a
//!   layer (they are locked to it): such a directory is still bound as it is, and a file in it
//!   is copied into the skeleton (up to [`FILE_COPY_MAX`]);
//! * the device nodes of `/dev` are made per jail by the spawner (see `spawner.rs`), and each
//!   jail has a time namespace of its own (see `agent.rs`).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Largest file copied into a jail's root (see above).
pub(crate) const FILE_COPY_MAX: u64 = 1 << 20;

/// The mount points of the calling process's mount namespace (the spawner's, which each jail's
/// agent starts from), read again only when the kernel reports a change: reading mountinfo on
/// every prepare would cost more than the overlays.
pub(crate) struct MountTable {
    file: File,
    points: Vec<PathBuf>,
}

impl MountTable {
    pub(crate) fn open() -> io::Result<MountTable> {
        let mut t = MountTable {
            file: File::open("/proc/self/mountinfo")?,
            points: Vec::new(),
        };
        t.read()?;
        Ok(t)
    }

    fn read(&mut self) -> io::Result<()> {
        self.file.rewind()?;
        let mut info = String::new();
        self.file.read_to_string(&mut info)?;
        self.points = crate::cgroup::parse_mountinfo(&info)
            .into_iter()
            .map(|(_, m, _)| m)
            .collect();
        Ok(())
    }

    /// The mount points now. A poll on mountinfo reports (once) every change of the mount
    /// namespace since the file was opened or last polled.
    pub(crate) fn current(&mut self) -> io::Result<&[PathBuf]> {
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, without waiting.
        if unsafe { libc::poll(&mut p, 1, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if p.revents & (libc::POLLERR | libc::POLLPRI) != 0 {
            self.read()?;
        }
        Ok(&self.points)
    }
}

/// Whether a mount table's mount points include one strictly beneath `dir` (an absolute,
/// canonical path).
pub(crate) fn has_mounts_beneath(dir: &Path, mount_points: &[PathBuf]) -> bool {
    mount_points
        .iter()
        .any(|m| m.starts_with(dir) && m.as_path() != dir)
}

/// The host directory to overlay to show `dir` (an absolute, canonical directory, or the
/// directory of a file to show): its highest ancestor below `/` with no mount beneath it, so
/// that a jail needs few overlays (one for `/usr`, one for `/etc`, …; an overlay costs an RCU
/// grace period when the jail ends). `None` when `dir` itself has mounts beneath it.
pub(crate) fn overlay_root(dir: &Path, mount_points: &[PathBuf]) -> Option<PathBuf> {
    if has_mounts_beneath(dir, mount_points) {
        return None;
    }
    let mut root = dir;
    while let Some(parent) = root.parent() {
        if parent.parent().is_none() || has_mounts_beneath(parent, mount_points) {
            break;
        }
        root = parent;
    }
    Some(root.to_path_buf())
}

/// Escapes a layer path for overlayfs's mount options, where `,` separates options, `:`
/// separates layers and `\` escapes.
fn escape_layer(p: &Path, out: &mut Vec<u8>) {
    for &b in p.as_os_str().as_bytes() {
        if matches!(b, b'\\' | b',' | b':') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// Mount options of a read-only overlay of `lower` (over the empty directory `empty`).
pub(crate) fn overlay_options(lower: &Path, empty: &Path) -> OsString {
    let mut o = b"lowerdir=".to_vec();
    escape_layer(lower, &mut o);
    o.push(b':');
    escape_layer(empty, &mut o);
    OsString::from_vec(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn mounts_beneath_are_found_by_path_components() {
        let table = paths(&[
            "/",
            "/usr",
            "/usr/local/share",
            "/usrx",
            "/proc",
            "/opt/runcell",
        ]);
        assert!(has_mounts_beneath(Path::new("/usr"), &table));
        assert!(has_mounts_beneath(Path::new("/usr/local"), &table));
        assert!(!has_mounts_beneath(Path::new("/usr/local/share"), &table));
        assert!(!has_mounts_beneath(Path::new("/opt/runcell"), &table));
        assert!(!has_mounts_beneath(Path::new("/etc/ssl/certs"), &table));
        assert!(!has_mounts_beneath(Path::new("/us"), &table));
    }

    #[test]
    fn overlays_cover_the_highest_directory_without_mounts_beneath() {
        let table = paths(&["/", "/proc", "/usr/local", "/opt/runcell", "/etc/hosts"]);
        let root = |p: &str| overlay_root(Path::new(p), &table).map(|r| r.display().to_string());
        assert_eq!(root("/usr/lib/python3"), Some("/usr/lib".into()));
        assert_eq!(root("/usr/local"), Some("/usr/local".into()));
        assert_eq!(root("/usr"), None);
        assert_eq!(root("/opt/runcell/venv/bin"), Some("/opt/runcell".into()));
        assert_eq!(root("/etc/ssl/certs"), Some("/etc/ssl".into()));
        assert_eq!(root("/etc"), None);
        assert_eq!(root("/srv/a/b"), Some("/srv".into()));
        assert_eq!(root("/srv"), Some("/srv".into()));
        // A mount table without the usual mounts still never overlays the root itself.
        assert_eq!(
            overlay_root(Path::new("/usr/bin"), &paths(&["/"])),
            Some(PathBuf::from("/usr"))
        );
    }

    #[test]
    fn layer_paths_cannot_inject_options_or_layers() {
        assert_eq!(
            overlay_options(Path::new("/usr"), Path::new("/proc")),
            OsString::from("lowerdir=/usr:/proc")
        );
        assert_eq!(
            overlay_options(Path::new("/a,upperdir=/x:/b\\c"), Path::new("/e")),
            OsString::from("lowerdir=/a\\,upperdir=/x\\:/b\\\\c:/e")
        );
    }
}
