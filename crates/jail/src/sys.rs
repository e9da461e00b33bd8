//! Thin wrappers over Linux system calls that `nix` does not cover (or covers in a way that
//! allocates or needs a stack): raw `clone`, pidfds, `close_range`, `openat2`, `mount_setattr`.
//!
//! Everything here is a direct system call; nothing allocates.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Result of a raw system call: `-1` becomes the thread's `errno`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `clone(2)` with fork semantics (no new stack: the child continues on a copy of the caller's
/// stack, like `fork`). `flags` are namespace flags; `SIGCHLD` is added so the parent can
/// `waitpid` the child. Returns 0 in the child and the child's pid in the parent.
///
/// # Safety
/// The caller must be single-threaded: the child is a copy of the calling thread only, and it
/// goes on to allocate and take locks.
pub unsafe fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: the raw clone syscall with a null stack pointer behaves like fork(2); the caller
    // guarantees that the process is single-threaded (see the function's safety contract).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    check(ret).map(|pid| pid as libc::pid_t)
}

/// `pidfd_open(2)`: a descriptor that names the process `pid` without the pid-reuse race.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this new descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether `fd` is readable now (`poll` without waiting): for a pidfd, whether its process
/// has exited.
pub fn is_readable(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd for a descriptor the caller holds, without waiting.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// `pidfd_send_signal(2)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; a null siginfo is allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// `close_range(2)` flag: mark the descriptors close-on-exec instead of closing them.
pub const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// `close_range(2)`.
pub fn close_range(first: libc::c_uint, last: libc::c_uint, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments; closing descriptors is the point.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) }).map(drop)
}

/// Closes every descriptor from 3 up except the ones in `keep` (which must be sorted
/// ascending). Used right after `fork` so a child holds only what it needs.
pub fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    let mut next: libc::c_uint = 3;
    for &fd in keep {
        let fd = fd as libc::c_uint;
        if fd < next {
            continue;
        }
        if fd > next {
            close_range(next, fd - 1, 0)?;
        }
        next = fd + 1;
    }
    close_range(next, libc::c_uint::MAX, 0)
}

/// `struct open_how` for `openat2(2)`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenHow {
    pub flags: u64,
    pub mode: u64,
    pub resolve: u64,
}

/// The starting directory is treated as the root for the whole resolution: absolute paths,
/// absolute symlinks and `..` at that directory all stay at it (like a `chroot`).
pub const RESOLVE_IN_ROOT: u64 = 0x10;
/// Resolution stays beneath the starting directory.
pub const RESOLVE_BENEATH: u64 = 0x08;
/// No symbolic link is followed, anywhere in the path.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// No magic link (`/proc/*/fd/*` and the like) is followed.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// Resolution never crosses a mount point.
pub const RESOLVE_NO_XDEV: u64 = 0x01;

/// `openat2(2)`.
pub fn openat2(dir: BorrowedFd<'_>, path: &CStr, how: &OpenHow) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string and `how` a valid struct of the size we
    // pass; both outlive the call.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: a new descriptor that only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `struct mount_attr` for `mount_setattr(2)`.
#[repr(C)]
#[derive(Debug, Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;

/// `mount_setattr(2)` on `path` (absolute), setting the given `MOUNT_ATTR_*` bits; with
/// `recursive` the whole subtree of mounts is changed. Unlike a bind remount this only adds
/// restrictions and needs no knowledge of the mount's existing (possibly locked) flags.
pub fn mount_setattr(path: &CStr, set: u64, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        ..Default::default()
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 } as libc::c_uint;
    // SAFETY: valid path pointer and a struct of the size we pass, both alive for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// A read-only overlay (no upper layer: `nosuid`, `nodev`) of the layers `lower` over
/// `empty`, made with the new mount API and not attached anywhere: a descriptor of the
/// detached mount, which [`clone_mount`] copies and [`move_mount_to`] attaches. Refuses a
/// layer path with a character the `lowerdir` syntax would read specially.
pub fn detached_overlay(lower: &Path, empty: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let mut layers = Vec::new();
    for (i, p) in [lower, empty].iter().enumerate() {
        let b = p.as_os_str().as_bytes();
        if !p.is_absolute() || b.iter().any(|c| matches!(c, b':' | b',' | b'\\' | 0)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} cannot be named as an overlay layer", p.display()),
            ));
        }
        if i > 0 {
            layers.push(b':');
        }
        layers.extend_from_slice(b);
    }
    let layers = std::ffi::CString::new(layers)?;
    detached_mount(
        c"overlay",
        &[(c"lowerdir", &layers)],
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
}

/// A new filesystem of type `fstype` with the string parameters `params`, mounted nowhere
/// (`fsopen`, `fsconfig`, `fsmount` with the `MOUNT_ATTR_*` bits `attrs`): a descriptor of
/// the detached mount.
fn detached_mount(fstype: &CStr, params: &[(&CStr, &CStr)], attrs: u64) -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: a NUL-terminated name; the kernel returns a new descriptor or -1.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    for (key, value) in params {
        // SAFETY: NUL-terminated key and value, alive for the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })?;
    }
    // SAFETY: a command without key or value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: integer arguments; a new descriptor or -1.
    let m =
        check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(m as RawFd) })
}

/// Whether this kernel copies a detached mount (`open_tree(OPEN_TREE_CLONE)` of a mount made
/// by `fsmount` and attached nowhere): Linux 6.1 refuses it (`EINVAL`), later kernels do it.
/// Probed once with a tiny tmpfs.
pub fn clones_detached_mounts() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        use std::os::fd::AsFd;
        detached_mount(c"tmpfs", &[], 0)
            .and_then(|m| clone_mount(m.as_fd()))
            .is_ok()
    })
}

/// A detached copy of the mount `mount` names (`open_tree(OPEN_TREE_CLONE)`): the same
/// filesystem, a mount of its own that can be attached once.
pub fn clone_mount(mount: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: an empty NUL-terminated path relative to a descriptor we hold (AT_EMPTY_PATH).
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            mount.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches the detached mount `mount` names on `target` (`move_mount(2)`).
pub fn move_mount_to(mount: RawFd, target: &CStr) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    // SAFETY: NUL-terminated paths alive for the call; `mount` is a descriptor of a mount.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `setfsuid(2)` on the calling thread. Returns the previous fsuid.
pub fn setfsuid(uid: u32) -> u32 {
    // SAFETY: plain syscall; it cannot fail in a way that harms memory safety.
    (unsafe { libc::syscall(libc::SYS_setfsuid, uid) }) as u32
}

/// `setfsgid(2)` on the calling thread. Returns the previous fsgid.
pub fn setfsgid(gid: u32) -> u32 {
    // SAFETY: plain syscall.
    (unsafe { libc::syscall(libc::SYS_setfsgid, gid) }) as u32
}

/// `getgroups(2)` as a raw system call: the calling thread's supplementary groups.
pub fn thread_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: with a size of 0 the kernel only returns the number of groups.
    let n = check(unsafe {
        libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>())
    })?;
    let mut groups: Vec<libc::gid_t> = vec![0; n as usize];
    // SAFETY: the buffer has room for `groups.len()` entries, the size we pass.
    let got = check(unsafe {
        libc::syscall(
            libc::SYS_getgroups,
            groups.len() as libc::c_int,
            groups.as_mut_ptr(),
        )
    })?;
    groups.truncate(got as usize);
    Ok(groups)
}

/// `setgroups(2)` as a raw system call: changes the supplementary groups of the calling
/// thread only. (glibc's `setgroups` changes every thread of the process.)
pub fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a valid slice that outlives the call.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }).map(drop)
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a valid descriptor into a struct we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `fstatat(2)` of one name in `dir`, without following a final symlink.
pub fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory descriptor, a NUL-terminated name and a struct we own.
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The file system type (`f_type` of `fstatfs(2)`, a `*_MAGIC` number) of an open file.
pub fn fs_type(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a valid descriptor (O_PATH descriptors are allowed) into a struct
    // we own.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is a signed word; magic numbers are 32-bit.
    Ok(st.f_type as u64 & 0xffff_ffff)
}

/// `renameat2(2)` flag: fail with `EEXIST` instead of replacing the destination.
pub const RENAME_NOREPLACE: libc::c_uint = 1;

/// `renameat2(2)`. Neither name's final component is followed.
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: valid descriptors and NUL-terminated names that outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `unlinkat(2)` of one name in `dir` (`flags`: 0 or `AT_REMOVEDIR`); never follows it.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `mkdirat(2)` of one name in `dir` (an existing name, symlink or not, gives `EEXIST`).
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The pid of the process `pidfd` names, as this process sees it: `None` once it has been
/// reaped (or has no pid in this pid namespace). Asks the kernel with `PIDFD_GET_INFO` (one
/// call, Linux 6.13 and later), else reads the descriptor's `fdinfo`.
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> io::Result<Option<libc::pid_t>> {
    /// `struct pidfd_info` as Linux 6.13 defines it (`PIDFD_INFO_SIZE_VER0`, 64 bytes).
    #[repr(C)]
    #[derive(Default)]
    struct PidfdInfo {
        mask: u64,
        cgroupid: u64,
        pid: u32,
        tgid: u32,
        ppid: u32,
        ids: [u32; 8],
        spare: u32,
    }
    const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);
    /// `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)`.
    const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;
    const PIDFD_INFO_PID: u64 = 1;
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_PID,
        ..PidfdInfo::default()
    };
    // SAFETY: the ioctl fills at most the 64-byte struct we pass, alive for the call.
    let r = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO,
            &mut info as *mut PidfdInfo,
        )
    };
    if r == 0 && info.mask & PIDFD_INFO_PID != 0 {
        return Ok((info.pid > 0).then_some(info.pid as libc::pid_t));
    }
    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return Ok(None);
    }
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<libc::pid_t>().ok())
        .ok_or_else(|| io::Error::other("no Pid: line in the pidfd's fdinfo"))?;
    Ok((pid > 0).then_some(pid))
}

/// Eight random bytes from `getrandom(2)`.
pub fn random_u64() -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        got += n as usize;
    }
    Ok(u64::from_ne_bytes(buf))
}

/// Number of threads in the calling process, from `/proc/self/stat` (field 20).
pub fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last ')'
    // are space-separated.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unparsable /proc/self/stat"))?;
    rest.split_whitespace()
        .nth(17)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("unparsable /proc/self/stat"))
}

/// Writes all of `buf` to `fd`, retrying on `EINTR` and short writes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice for its length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads into `buf` until it is full or end of file; returns the number of bytes read.
pub fn read_full(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_names_its_process_until_it_is_reaped() {
        use std::os::fd::AsFd;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let pidfd = pidfd_open(pid).unwrap();
        assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), Some(pid));
        pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
        // Dead and not reaped: a zombie still has its pid.
        while !is_readable(pidfd.as_fd()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), Some(pid));
        child.wait().unwrap();
        assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), None);
    }

    #[test]
    fn thread_count_is_positive() {
        assert!(thread_count().unwrap() >= 1);
    }

    #[test]
    fn small_wrappers_work() {
        use std::os::fd::AsFd;
        let proc_dir = std::fs::File::open("/proc").unwrap();
        assert_eq!(fs_type(proc_dir.as_fd()).unwrap(), 0x9fa0);
        let me = pidfd_open(std::process::id() as libc::pid_t).unwrap();
        assert_eq!(
            pidfd_pid(me.as_fd()).unwrap(),
            Some(std::process::id() as libc::pid_t)
        );
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
        assert!(thread_groups().is_ok());
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let d = d.as_fd();
        mkdirat(d, c"a", 0o755).unwrap();
        mkdirat(d, c"b", 0o755).unwrap();
        assert_eq!(
            mkdirat(d, c"a", 0o755).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert_eq!(
            renameat2(d, c"a", d, c"b", RENAME_NOREPLACE)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EEXIST)
        );
        renameat2(d, c"a", d, c"c", RENAME_NOREPLACE).unwrap();
        assert_eq!(
            lstatat(d, c"c").unwrap().st_mode & libc::S_IFMT,
            libc::S_IFDIR
        );
        unlinkat(d, c"c", libc::AT_REMOVEDIR).unwrap();
        assert!(lstatat(d, c"c").is_err());
    }

    #[test]
    fn in_root_resolution_stays_in_the_root() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hostname"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/hostname", dir.path().join("rel")).unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        for p in [c"abs", c"rel", c"/etc/hostname", c"../../etc/hostname"] {
            let fd = openat2(d.as_fd(), p, &how).unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
            assert_eq!(s, "inside", "{p:?}");
        }
    }

    #[test]
    fn openat2_refuses_symlinks_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        use std::os::fd::AsFd;
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        };
        let fd = d.as_fd();
        assert!(openat2(fd, c"f", &how).is_ok());
        assert_eq!(
            openat2(fd, c"link", &how).unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert_eq!(
            openat2(fd, c"../etc/hostname", &how)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EXDEV)
        );
    }
}
