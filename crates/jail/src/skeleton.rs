//! Read-only root skeletons, made once per view by the spawner and shared by its jails.
//!
//! A jail's root used to be a tmpfs of its own, into which the agent made every mount point,
//! link and generated file, and then bound some twenty small `/etc` entries one by one. Mounts
//! are the dearest part of a jail: each is made, then torn down with the jail's mount
//! namespace, with deferred kernel work. Now the spawner makes, once for every jail of the
//! same configuration (and mount table), a directory holding:
//!
//! * the mount points of the remaining binds, `/proc`, `/dev`, `/tmp`, the workspace and the
//!   runtime directory;
//! * the configuration's links and generated files (`/etc/passwd`, the warm loaders, ...);
//! * copies of the binds marked [`Bind::copy`] (small host files such as `/etc`'s), and of
//!   bound files that could not be overlaid (a directory with host mounts beneath it).
//!
//! Each jail's root is then a read-only overlay of it (see `agent::build_root`): one mount,
//! with the jail's own inodes, so locks, watches and timestamps stay in the jail (see
//! `view`).
//!
//! Skeletons live in a tmpfs of the spawner's own mount namespace, which vanishes with it.
//! They are built through descriptors, component by component, refusing symbolic links (the
//! spawner is root on the host; the copies hold links of their own). Copies are kept current:
//! a skeleton last checked more than [`CHECK_INTERVAL`] ago has its sources' metadata compared
//! before another jail uses it, and a change makes a new skeleton. A superseded skeleton is
//! removed when its last jail (or zygote) ends, and at most [`IDLE_MAX`] skeletons that no
//! jail uses are kept.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, fchown, fchownat, symlinkat};

use crate::config::{Bind, JailConfig, JailFile, RUNTIME_DIR, Symlink, WORKSPACE};
use crate::view;

/// How long a skeleton is used without looking at its sources again.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The most bytes of copies in one skeleton; a [`Bind::copy`] beyond it is bound instead.
pub(crate) const COPY_MAX_BYTES: u64 = 32 << 20;
/// The most entries (files, directories, links) of copies in one skeleton.
pub(crate) const COPY_MAX_ENTRIES: usize = 8192;
/// The most skeletons kept that no jail uses (the least recently used go first): a change of
/// the host's mount table, say, makes a new key, and the old key's skeleton may never be
/// asked for again.
pub(crate) const IDLE_MAX: usize = 4;

/// A jail's use of a skeleton, ended with [`Skeletons::release`].
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub id: u64,
    /// The skeleton: the lower layer of the jail's root.
    pub root: PathBuf,
    /// An empty directory, the second layer every read-only overlay needs.
    pub empty: PathBuf,
    /// For each of the configuration's binds, whether the skeleton holds it (a copy): the
    /// agent then mounts nothing for it.
    pub in_root: Vec<bool>,
    /// The mount table the skeleton was chosen for, which the agent's plan must use too.
    pub mount_points: Vec<PathBuf>,
}

/// What a skeleton is made from: the parts of a configuration it shows, and the mount table
/// (which decides what a bound file's copy is). Compared field by field with each prepare's
/// configuration, without copying or encoding it.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    binds: Vec<Bind>,
    symlinks: Vec<Symlink>,
    files: Vec<JailFile>,
    hostname: String,
    shared: bool,
    mount_points: Vec<PathBuf>,
}

impl Key {
    fn of(cfg: &JailConfig, mount_points: &[PathBuf]) -> Key {
        Key {
            binds: cfg.binds.clone(),
            symlinks: cfg.symlinks.clone(),
            files: cfg.files.clone(),
            hostname: cfg.hostname.clone(),
            shared: cfg.shared.is_some(),
            mount_points: mount_points.to_vec(),
        }
    }

    fn is(&self, cfg: &JailConfig, mount_points: &[PathBuf]) -> bool {
        self.binds == cfg.binds
            && self.symlinks == cfg.symlinks
            && self.files == cfg.files
            && self.hostname == cfg.hostname
            && self.shared == cfg.shared.is_some()
            && self.mount_points == mount_points
    }
}

/// What a skeleton was made from: one line per source entry looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    bind: usize,
    path: PathBuf,
    /// `None`: the source is missing.
    meta: Option<[i64; 10]>,
}

struct Skeleton {
    key: Key,
    /// The skeleton its key's jails get (a superseded one only serves the jails it has).
    current: bool,
    path: PathBuf,
    stamps: Vec<Stamp>,
    checked: Instant,
    users: usize,
    last_used: Instant,
    in_root: Vec<bool>,
}

pub(crate) struct Skeletons {
    dir: PathBuf,
    empty: PathBuf,
    all: HashMap<u64, Skeleton>,
    next: u64,
    /// Skeletons removed since [`Skeletons::take_removed`] last asked.
    removed: Vec<PathBuf>,
}

impl Skeletons {
    /// Skeletons in `dir` (an empty directory of the spawner's own tmpfs).
    pub(crate) fn new(dir: &Path) -> io::Result<Skeletons> {
        let empty = dir.join("empty");
        fs::create_dir(&empty)?;
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o755))?;
        Ok(Skeletons {
            dir: dir.to_path_buf(),
            empty,
            all: HashMap::new(),
            next: 1,
            removed: Vec::new(),
        })
    }

    /// The current skeleton of `cfg` seen from a mount namespace with `mount_points`, made or
    /// made again if needed; counted as used until [`Skeletons::release`].
    pub(crate) fn acquire(
        &mut self,
        cfg: &JailConfig,
        mount_points: &[PathBuf],
    ) -> io::Result<Lease> {
        let current = self
            .all
            .iter_mut()
            .find(|(_, s)| s.current && s.key.is(cfg, mount_points));
        if let Some((&id, s)) = current {
            let fresh = s.checked.elapsed() < CHECK_INTERVAL || {
                let same = stamps(cfg, mount_points)? == s.stamps;
                if same {
                    s.checked = Instant::now();
                }
                same
            };
            if fresh {
                return Ok(self.lease(id, mount_points));
            }
            s.current = false;
            self.collect(id);
        }
        let id = self.next;
        self.next += 1;
        let path = self.dir.join(id.to_string());
        let built = build(&path, cfg, mount_points);
        let (stamps, in_root) = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = fs::remove_dir_all(&path);
                return Err(e);
            }
        };
        self.all.insert(
            id,
            Skeleton {
                key: Key::of(cfg, mount_points),
                current: true,
                path,
                stamps,
                checked: Instant::now(),
                users: 0,
                last_used: Instant::now(),
                in_root,
            },
        );
        let lease = self.lease(id, mount_points);
        self.evict_idle();
        Ok(lease)
    }

    fn lease(&mut self, id: u64, mount_points: &[PathBuf]) -> Lease {
        let s = self
            .all
            .get_mut(&id)
            .expect("a skeleton being leased exists");
        s.users += 1;
        s.last_used = Instant::now();
        Lease {
            id,
            root: s.path.clone(),
            empty: self.empty.clone(),
            in_root: s.in_root.clone(),
            mount_points: mount_points.to_vec(),
        }
    }

    /// Ends a use of skeleton `id` (after the jail's mount namespace is gone).
    pub(crate) fn release(&mut self, id: u64) {
        if let Some(s) = self.all.get_mut(&id) {
            s.users = s.users.saturating_sub(1);
        }
        self.collect(id);
        self.evict_idle();
    }

    /// Removes skeleton `id` if it is superseded and unused.
    fn collect(&mut self, id: u64) {
        let Some(s) = self.all.get(&id) else {
            return;
        };
        if s.users > 0 || s.current {
            return;
        }
        if let Some(s) = self.all.remove(&id) {
            let _ = fs::remove_dir_all(&s.path);
            self.removed.push(s.path);
        }
    }

    /// The skeletons removed since the last call (nothing may keep an overlay of them).
    pub(crate) fn take_removed(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.removed)
    }

    /// Removes the least recently used skeletons no jail uses, beyond [`IDLE_MAX`].
    fn evict_idle(&mut self) {
        let mut idle: Vec<(Instant, u64)> = self
            .all
            .iter()
            .filter(|(_, s)| s.users == 0)
            .map(|(&id, s)| (s.last_used, id))
            .collect();
        if idle.len() <= IDLE_MAX {
            return;
        }
        idle.sort();
        for &(_, id) in &idle[..idle.len() - IDLE_MAX] {
            if let Some(s) = self.all.remove(&id) {
                let _ = fs::remove_dir_all(&s.path);
                self.removed.push(s.path);
            }
        }
    }

    /// Skeletons on disk (for tests of clean-up).
    #[cfg(test)]
    fn count(&self) -> usize {
        self.all.len()
    }
}

/// Whether bind `b` (with source metadata `meta`) is a file the agent could not show through
/// an overlay (its directory has host mounts beneath it), which the skeleton then copies.
fn file_to_copy(b: &Bind, meta: &Metadata, mount_points: &[PathBuf]) -> bool {
    if !meta.is_file() || meta.len() > view::FILE_COPY_MAX {
        return false;
    }
    let Ok(real) = fs::canonicalize(&b.source) else {
        return false;
    };
    let dir = real.parent().unwrap_or(Path::new("/"));
    view::overlay_root(dir, mount_points).is_none()
}

fn meta_line(m: &Metadata) -> [i64; 10] {
    [
        m.dev() as i64,
        m.ino() as i64,
        m.mode() as i64,
        m.uid() as i64,
        m.gid() as i64,
        m.size() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ]
}

/// The metadata of `src` and, for a directory, of everything beneath it (not following
/// links), in a stable order.
fn stamp_tree(bind: usize, src: &Path, meta: &Metadata, out: &mut Vec<Stamp>) -> io::Result<()> {
    out.push(Stamp {
        bind,
        path: src.to_path_buf(),
        meta: Some(meta_line(meta)),
    });
    if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(src)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for n in names {
            let p = src.join(n);
            let m = fs::symlink_metadata(&p)?;
            stamp_tree(bind, &p, &m, out)?;
            if out.len() > COPY_MAX_ENTRIES + 1 {
                break;
            }
        }
    }
    Ok(())
}

/// What each bind of `cfg` is made from now. A bind's own line holds its source's metadata
/// (following links); a copied directory adds one line per entry beneath it.
fn stamps(cfg: &JailConfig, mount_points: &[PathBuf]) -> io::Result<Vec<Stamp>> {
    let mut out = Vec::new();
    for (i, b) in cfg.binds.iter().enumerate() {
        let Ok(meta) = fs::metadata(&b.source) else {
            out.push(Stamp {
                bind: i,
                path: b.source.clone(),
                meta: None,
            });
            continue;
        };
        if b.copy || file_to_copy(b, &meta, mount_points) {
            stamp_tree(i, &b.source, &meta, &mut out)?;
        } else {
            // A mount point: only its kind matters.
            out.push(Stamp {
                bind: i,
                path: b.source.clone(),
                meta: Some([i64::from(meta.is_dir()), 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            });
        }
    }
    Ok(out)
}

/// Builds the skeleton of `cfg` at `path`; returns its stamps and which binds it holds.
fn build(
    path: &Path,
    cfg: &JailConfig,
    mount_points: &[PathBuf],
) -> io::Result<(Vec<Stamp>, Vec<bool>)> {
    fs::create_dir(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    let tree = Tree(openat(
        nix::fcntl::AT_FDCWD,
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    let all = stamps(cfg, mount_points)?;
    let mut in_root = vec![false; cfg.binds.len()];
    let (mut bytes, mut entries) = (0u64, 0usize);
    for (i, b) in cfg.binds.iter().enumerate() {
        let mine: Vec<&Stamp> = all.iter().filter(|s| s.bind == i).collect();
        let Ok(meta) = fs::metadata(&b.source) else {
            // Missing: an optional bind is skipped by the agent, a required one fails there.
            continue;
        };
        let copy = b.copy || file_to_copy(b, &meta, mount_points);
        if copy {
            let size: u64 = mine
                .iter()
                .filter_map(|s| s.meta)
                // Regular files' sizes (mode's type bits).
                .filter(|m| (m[2] as u32) & libc::S_IFMT == libc::S_IFREG)
                .map(|m| m[5] as u64)
                .sum();
            if bytes + size <= COPY_MAX_BYTES && entries + mine.len() <= COPY_MAX_ENTRIES {
                tree.copy(&b.source, &meta, &b.target)?;
                bytes += size;
                entries += mine.len();
                in_root[i] = true;
                continue;
            }
            // Too large to copy: bound like any other.
        }
        if meta.is_dir() {
            tree.dir(&b.target, 0o755)?;
        } else if let Some(parent) = b.target.parent() {
            tree.dir(parent, 0o755)?;
            tree.file(&b.target, 0o644)?;
        }
    }
    for (p, contents, mode) in crate::agent::generated_files(cfg) {
        use std::io::Write;
        if let Some(parent) = p.parent() {
            tree.dir(parent, 0o755)?;
        }
        let mut f = tree.file(&p, mode)?;
        f.write_all(contents.as_bytes())?;
    }
    for (dir, mode) in [
        ("/proc", 0o555),
        ("/dev", 0o755),
        ("/tmp", 0o1777),
        (WORKSPACE, 0o755),
    ] {
        tree.dir(Path::new(dir), mode)?;
    }
    if cfg.shared.is_some() {
        tree.dir(Path::new(RUNTIME_DIR), 0o755)?;
    }
    // Links last: nothing is made through them.
    for s in &cfg.symlinks {
        if let Some(parent) = s.link.parent() {
            tree.dir(parent, 0o755)?;
        }
        tree.symlink(&s.link, Path::new(&s.target))?;
    }
    Ok((all, in_root))
}

/// A directory being filled through descriptors: every path is walked component by component
/// from it, and a symbolic link on the way is an error, never followed.
struct Tree(OwnedFd);

fn name_of(rel: &Path) -> io::Result<&std::ffi::OsStr> {
    rel.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", rel.display()),
        )
    })
}

impl Tree {
    /// Opens (making what is missing, with `mode`) the directory `rel` (absolute paths are
    /// taken from the tree's top).
    fn dir(&self, rel: &Path, mode: u32) -> io::Result<OwnedFd> {
        let mut fd = self.0.try_clone()?;
        for c in rel.components() {
            let name = match c {
                Component::RootDir => continue,
                Component::Normal(n) => n,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} is not a plain path", rel.display()),
                    ));
                }
            };
            let made = match mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(mode)) {
                Ok(()) => true,
                Err(Errno::EEXIST) => false,
                Err(e) => return Err(e.into()),
            };
            fd = openat(
                fd.as_fd(),
                name,
                OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::ENOTDIR | Errno::ELOOP => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} goes through a link or a file, which a skeleton never follows",
                        rel.display()
                    ),
                ),
                e => e.into(),
            })?;
            if made {
                // (mkdir applies the umask.)
                fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
            }
        }
        Ok(fd)
    }

    /// Creates the file `rel` (which must not exist) in an existing directory.
    fn file(&self, rel: &Path, mode: u32) -> io::Result<File> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("/")), 0o755)?;
        let fd = openat(
            parent.as_fd(),
            name_of(rel)?,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
        Ok(File::from(fd))
    }

    fn symlink(&self, rel: &Path, target: &Path) -> io::Result<()> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("/")), 0o755)?;
        symlinkat(target, parent.as_fd(), name_of(rel)?)?;
        Ok(())
    }

    /// Copies the host entry `src` (with metadata `meta`; a directory with everything beneath
    /// it, links as links) to `rel`, with its owner and permission bits. Entries other than
    /// files, directories and links (devices, FIFOs, sockets) are left out.
    fn copy(&self, src: &Path, meta: &Metadata, rel: &Path) -> io::Result<()> {
        let (uid, gid) = (
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
        );
        let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
        if meta.is_dir() {
            // Directories on the way are searchable, as the host's are; this one gets its
            // mode once filled.
            self.dir(rel.parent().unwrap_or(Path::new("/")), 0o755)?;
            let fd = self.dir(rel, 0o700)?;
            let mut names: Vec<_> = fs::read_dir(src)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            names.sort();
            for n in names {
                let p = src.join(&n);
                let m = fs::symlink_metadata(&p)?;
                self.copy(&p, &m, &rel.join(&n))?;
            }
            fchown(fd.as_fd(), uid, gid)?;
            fchmod(fd.as_fd(), mode)?;
        } else if meta.file_type().is_symlink() {
            self.symlink(rel, &fs::read_link(src)?)?;
            let parent = self.dir(rel.parent().unwrap_or(Path::new("/")), 0o755)?;
            fchownat(
                parent.as_fd(),
                name_of(rel)?,
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        } else if meta.is_file() {
            let mut out = self.file(rel, 0o600)?;
            // Non-blocking and without a controlling terminal, in case it changed kind.
            let input = fs::File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(src)?;
            io::copy(&mut input.take(meta.len()), &mut out)?;
            fchown(out.as_fd(), uid, gid)?;
            // After the owner: a change of owner clears set-id bits.
            fchmod(out.as_fd(), mode)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Symlink, TmpfsSize};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("runcell-skel-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn config(binds: Vec<Bind>) -> JailConfig {
        JailConfig {
            binds,
            symlinks: vec![Symlink {
                target: "/tmp".into(),
                link: "/var/tmp".into(),
            }],
            files: Vec::new(),
            workspace: TmpfsSize::mib(8),
            hostname: "runcell".into(),
            shared: None,
            loopback_listener: None,
        }
    }

    #[test]
    fn copies_mount_points_links_and_generated_files_are_in_the_skeleton() {
        let d = scratch("build");
        let host = d.join("host");
        fs::create_dir_all(host.join("conf.d")).unwrap();
        fs::write(host.join("a.conf"), "a\n").unwrap();
        fs::write(host.join("conf.d/b.conf"), "b\n").unwrap();
        fs::set_permissions(host.join("a.conf"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("/usr/share/x", host.join("conf.d/link")).unwrap();
        fs::create_dir_all(d.join("views")).unwrap();
        let mut skels = Skeletons::new(&d.join("views")).unwrap();
        let cfg = config(vec![
            Bind::same("/usr"),
            Bind {
                source: host.join("a.conf"),
                target: "/etc/a.conf".into(),
                optional: false,
                copy: true,
            },
            Bind {
                source: host.join("conf.d"),
                target: "/etc/conf.d".into(),
                optional: false,
                copy: true,
            },
            Bind {
                source: host.join("missing"),
                target: "/srv/missing".into(),
                optional: true,
                copy: false,
            },
        ]);
        let lease = skels.acquire(&cfg, &[PathBuf::from("/")]).unwrap();
        assert_eq!(lease.in_root, vec![false, true, true, false]);
        let r = &lease.root;
        assert!(r.join("usr").is_dir());
        let a = r.join("etc/a.conf");
        assert_eq!(fs::read_to_string(&a).unwrap(), "a\n");
        assert_eq!(fs::metadata(&a).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_to_string(r.join("etc/conf.d/b.conf")).unwrap(),
            "b\n"
        );
        assert_eq!(fs::metadata(r.join("etc")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(r.join("etc/conf.d/link")).unwrap(),
            Path::new("/usr/share/x")
        );
        assert_eq!(fs::read_link(r.join("var/tmp")).unwrap(), Path::new("/tmp"));
        assert!(r.join("etc/passwd").is_file());
        assert_eq!(fs::metadata(r.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        for p in ["proc", "dev", "workspace"] {
            assert!(r.join(p).is_dir(), "{p}");
        }
        // The same view again: the same skeleton.
        let again = skels.acquire(&cfg, &[PathBuf::from("/")]).unwrap();
        assert_eq!(again.id, lease.id);
        // A changed source, once the interval has passed: a new skeleton, the old one kept
        // until its users are gone.
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(50));
        fs::write(host.join("conf.d/b.conf"), "changed\n").unwrap();
        let next = skels.acquire(&cfg, &[PathBuf::from("/")]).unwrap();
        assert_ne!(next.id, lease.id);
        assert_eq!(
            fs::read_to_string(next.root.join("etc/conf.d/b.conf")).unwrap(),
            "changed\n"
        );
        assert!(lease.root.exists());
        skels.release(lease.id);
        assert!(lease.root.exists(), "one user is left");
        skels.release(again.id);
        assert!(!lease.root.exists(), "superseded and unused: removed");
        assert_eq!(skels.count(), 1);
        skels.release(next.id);
        assert!(next.root.exists(), "the current skeleton stays");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn skeletons_no_jail_uses_are_bounded() {
        let d = scratch("idle");
        fs::create_dir_all(d.join("views")).unwrap();
        let mut skels = Skeletons::new(&d.join("views")).unwrap();
        let held = skels.acquire(&config(vec![]), &[]).unwrap();
        for i in 0..3 * IDLE_MAX {
            let mut cfg = config(vec![]);
            cfg.hostname = format!("host{i}");
            let l = skels.acquire(&cfg, &[]).unwrap();
            skels.release(l.id);
        }
        assert_eq!(
            skels.count(),
            IDLE_MAX + 1,
            "the idle ones, and the one in use"
        );
        assert!(held.root.exists(), "a skeleton in use is never removed");
        // Only `empty` and the skeletons kept are on disk.
        assert_eq!(fs::read_dir(d.join("views")).unwrap().count(), IDLE_MAX + 2);
        // An evicted view is made again when asked for.
        let mut cfg = config(vec![]);
        cfg.hostname = "host0".into();
        let again = skels.acquire(&cfg, &[]).unwrap();
        assert!(again.root.join("etc/hostname").is_file());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn nothing_is_made_through_a_link() {
        let d = scratch("links");
        let host = d.join("host");
        fs::create_dir_all(host.join("conf")).unwrap();
        let outside = d.join("outside");
        fs::create_dir_all(&outside).unwrap();
        // A copied directory holding a link to a host directory, and a mount point beneath
        // that link: the spawner must not make it on the host.
        std::os::unix::fs::symlink(&outside, host.join("conf/escape")).unwrap();
        fs::create_dir_all(d.join("views")).unwrap();
        let mut skels = Skeletons::new(&d.join("views")).unwrap();
        let cfg = config(vec![
            Bind {
                source: host.join("conf"),
                target: "/etc/conf".into(),
                optional: false,
                copy: true,
            },
            Bind {
                source: "/usr".into(),
                target: "/etc/conf/escape/usr".into(),
                optional: false,
                copy: false,
            },
        ]);
        let err = skels.acquire(&cfg, &[PathBuf::from("/")]).unwrap_err();
        assert!(err.to_string().contains("never follows"), "{err}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(skels.count(), 0);
        assert_eq!(
            fs::read_dir(d.join("views")).unwrap().count(),
            1,
            "only `empty`"
        );
        let _ = fs::remove_dir_all(&d);
    }
}
